// The Go runner of the conformance suite: parses
// ../tests/conformance/cases.txt (its format is described at the top of
// that file) and runs every case, as a subtest, with this package against a
// fresh hregd. Any line or op it does not know fails; cases for other
// languages are acknowledged by name (t.Skip with the reason); cases that
// need uid 65534 say NOT RUN when not root.
//
// Processes (`process P [nobody]`) are this test binary run again with
// $HREG_CONFORMANCE_CHILD set (under uid 65534 through
// SysProcAttr.Credential for `nobody`): it connects, then runs one op per
// line of its stdin, answering `STATUS NUMBER HEX` per op.

package hreg

import (
	"bufio"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

const (
	language   = "go"
	nobodyID   = 65534
	childEnv   = "HREG_CONFORMANCE_CHILD"
	eventually = 10 * time.Second
)

type opLine struct {
	line   int
	op     string
	args   []string
	expect []string
}

type step struct {
	kind       string // session, process, op, batch, close, kill
	actor      string
	line       int
	nobody     bool
	eventually bool
	op         opLine
	ops        []opLine
	result     string
}

type confCase struct {
	name      string
	line      int
	languages []string
	daemon    []string
	steps     []step
}

func (c *confCase) runsHere() bool {
	if c.languages == nil {
		return true
	}
	for _, l := range c.languages {
		if l == language {
			return true
		}
	}
	return false
}

func (c *confCase) needsRoot() bool {
	for _, s := range c.steps {
		if s.kind == "process" && s.nobody {
			return true
		}
	}
	return false
}

func parseOpLine(tokens []string, line int) (opLine, error) {
	at := -1
	for i, t := range tokens {
		if t == "->" {
			at = i
			break
		}
	}
	if at < 1 || len(tokens)-at-1 < 1 || len(tokens)-at-1 > 2 {
		return opLine{}, fmt.Errorf("line %d: expected `OP ARG... -> STATUS [ARG]`", line)
	}
	return opLine{line: line, op: tokens[0], args: tokens[1:at], expect: tokens[at+1:]}, nil
}

// parseCases reads the whole file; any line it does not know is an error.
func parseCases(text string) ([]string, []*confCase, error) {
	var global []string
	var cases []*confCase
	var cur *confCase
	var batch *step
	for i, raw := range strings.Split(text, "\n") {
		line := i + 1
		tokens := strings.Fields(raw)
		if len(tokens) == 0 || strings.HasPrefix(tokens[0], "#") {
			continue
		}
		first := tokens[0]
		if batch != nil {
			if first == "submit" {
				op, err := parseOpLine(tokens, line)
				if err != nil {
					return nil, nil, err
				}
				batch.result = op.expect[0]
				cur.steps = append(cur.steps, *batch)
				batch = nil
			} else {
				op, err := parseOpLine(tokens, line)
				if err != nil {
					return nil, nil, err
				}
				batch.ops = append(batch.ops, op)
			}
			continue
		}
		if cur == nil {
			switch {
			case first == "daemon":
				global = append(global, tokens[1:]...)
			case first == "case" && len(tokens) == 2:
				cur = &confCase{name: tokens[1], line: line}
			default:
				return nil, nil, fmt.Errorf("line %d: unknown statement outside a case: %s", line, raw)
			}
			continue
		}
		n := len(tokens)
		switch {
		case first == "end" && n == 1:
			cases = append(cases, cur)
			cur = nil
		case first == "languages" && n > 1:
			cur.languages = tokens[1:]
		case first == "daemon":
			cur.daemon = append(cur.daemon, tokens[1:]...)
		case first == "session" && n == 2:
			cur.steps = append(cur.steps, step{kind: "session", actor: tokens[1], line: line})
		case first == "process" && (n == 2 || n == 3 && tokens[2] == "nobody"):
			cur.steps = append(cur.steps, step{kind: "process", actor: tokens[1], line: line, nobody: n == 3})
		case (first == "close" || first == "kill") && n == 2:
			cur.steps = append(cur.steps, step{kind: first, actor: tokens[1], line: line})
		case first == "eventually" && n >= 3:
			op, err := parseOpLine(tokens[2:], line)
			if err != nil {
				return nil, nil, err
			}
			cur.steps = append(cur.steps, step{kind: "op", actor: tokens[1], line: line, eventually: true, op: op})
		case n == 2 && tokens[1] == "batch":
			batch = &step{kind: "batch", actor: first, line: line}
		case n >= 3:
			op, err := parseOpLine(tokens[1:], line)
			if err != nil {
				return nil, nil, err
			}
			cur.steps = append(cur.steps, step{kind: "op", actor: first, line: line, op: op})
		default:
			return nil, nil, fmt.Errorf("line %d: unknown statement: %s", line, raw)
		}
	}
	if cur != nil || batch != nil {
		return nil, nil, errors.New("the file ends inside a case or a batch")
	}
	return global, cases, nil
}

// The single ops and batch ops this runner can express.
var (
	knownOps      = map[string]bool{"insert": true, "get": true, "get_into": true, "replace": true, "retain": true, "release": true, "remove": true, "objects": true, "flush": true}
	knownBatchOps = map[string]bool{"insert": true, "get": true, "replace": true, "retain": true, "release": true, "remove": true, "raw": true}
)

func (c *confCase) validate() error {
	for _, s := range c.steps {
		known, ops := knownOps, []opLine{s.op}
		switch s.kind {
		case "op":
		case "batch":
			known, ops = knownBatchOps, s.ops
		default:
			continue
		}
		for _, op := range ops {
			if !known[op.op] {
				return fmt.Errorf("line %d: the %s runner cannot run `%s` here; mark the case with `languages` if %s cannot express it",
					op.line, language, op.op, language)
			}
		}
	}
	return nil
}

func value(token string) ([]byte, error) {
	switch {
	case token == "empty":
		return []byte{}, nil
	case strings.HasPrefix(token, "v:"):
		return []byte(token[2:]), nil
	case strings.HasPrefix(token, "fill:"):
		n, err := strconv.Atoi(token[5:])
		if err != nil {
			return nil, fmt.Errorf("bad fill length %s", token)
		}
		v := make([]byte, n)
		for i := range v {
			v[i] = byte('a' + i%26)
		}
		return v, nil
	}
	return nil, fmt.Errorf("unknown value token %s", token)
}

func flagsOf(token string) (Flags, error) {
	switch token {
	case "none":
		return 0, nil
	case "shared":
		return Shared, nil
	case "detached":
		return Detached, nil
	case "shared+detached":
		return Shared | Detached, nil
	case "unknown":
		return 0x4, nil
	}
	return 0, fmt.Errorf("unknown flags token %s", token)
}

var statusNames = []string{"OK", "INVALID", "STALE", "DENIED", "TOO_BIG", "BUFFER", "QUOTA",
	"NOT_HELD", "CONNECT", "DISCONNECTED", "VERSION", "PROTOCOL", "IO"}

// outcome is what an op did; also the line a child process answers.
type outcome struct {
	status string
	number uint64
	data   []byte // nil: no bytes read
}

func okOutcome(number uint64, data []byte) outcome { return outcome{"OK", number, data} }

// errOutcome names the sentinel err wraps (through errors.Is, as a user
// would test it).
func errOutcome(err error) outcome {
	for status := 1; status < len(byStatus); status++ {
		if errors.Is(err, byStatus[status]) {
			var needed uint64
			var e *Error
			if errors.As(err, &e) {
				needed = uint64(e.Needed)
			}
			return outcome{statusNames[status], needed, nil}
		}
	}
	return outcome{"UNKNOWN(" + err.Error() + ")", 0, nil}
}

func (o outcome) String() string {
	data := "-"
	if o.data != nil {
		data = "x" + hex.EncodeToString(o.data)
	}
	return fmt.Sprintf("%s %d %s", o.status, o.number, data)
}

func parseOutcome(line string) (outcome, error) {
	parts := strings.Fields(line)
	if len(parts) != 3 {
		return outcome{}, fmt.Errorf("bad answer from a child: %q", line)
	}
	n, err := strconv.ParseUint(parts[1], 10, 64)
	if err != nil {
		return outcome{}, fmt.Errorf("bad answer from a child: %q", line)
	}
	o := outcome{status: parts[0], number: n}
	if parts[2] != "-" {
		if o.data, err = hex.DecodeString(parts[2][1:]); err != nil {
			return outcome{}, fmt.Errorf("bad answer from a child: %q", line)
		}
	}
	return o, nil
}

func handleArg(args []string, i int) (Handle, error) {
	if i >= len(args) {
		return 0, fmt.Errorf("missing argument %d", i+1)
	}
	n, err := strconv.ParseUint(args[i], 10, 64)
	return Handle(n), err
}

// execute runs one single op; handles are numbers by now.
func execute(c *Client, op string, args []string) (outcome, error) {
	want := map[string]int{"insert": 2, "get": 1, "get_into": 2, "replace": 2, "retain": 1, "release": 1, "remove": 1, "objects": 0, "flush": 0}
	n, known := want[op]
	if !known {
		return outcome{}, fmt.Errorf("the %s runner does not know the op `%s`", language, op)
	}
	if len(args) != n {
		return outcome{}, fmt.Errorf("%s takes %d arguments, got %d", op, n, len(args))
	}
	var h Handle
	var err error
	if op != "insert" && op != "objects" && op != "flush" {
		if h, err = handleArg(args, 0); err != nil {
			return outcome{}, err
		}
	}
	done := func(err error) (outcome, error) {
		if err != nil {
			return errOutcome(err), nil
		}
		return okOutcome(0, nil), nil
	}
	switch op {
	case "insert":
		v, err := value(args[0])
		if err != nil {
			return outcome{}, err
		}
		f, err := flagsOf(args[1])
		if err != nil {
			return outcome{}, err
		}
		h, err := c.Insert(v, f)
		if err != nil {
			return errOutcome(err), nil
		}
		return okOutcome(uint64(h), nil), nil
	case "get":
		v, err := c.Get(h)
		if err != nil {
			return errOutcome(err), nil
		}
		return okOutcome(uint64(len(v)), v), nil
	case "get_into":
		capacity, err := strconv.Atoi(args[1])
		if err != nil {
			return outcome{}, err
		}
		buf := make([]byte, capacity)
		n, err := c.GetInto(h, buf)
		if err != nil {
			o := errOutcome(err)
			if o.status == "BUFFER" && uint64(n) != o.number {
				return outcome{}, fmt.Errorf("GetInto returned %d with ErrBuffer needing %d", n, o.number)
			}
			return o, nil
		}
		return okOutcome(uint64(n), buf[:n]), nil
	case "replace":
		v, err := value(args[1])
		if err != nil {
			return outcome{}, err
		}
		return done(c.Replace(h, v))
	case "retain":
		return done(c.Retain(h))
	case "release":
		return done(c.Release(h))
	case "remove":
		return done(c.Remove(h))
	case "flush":
		return done(c.Flush())
	default: // objects
		s, err := c.Stats()
		if err != nil {
			return errOutcome(err), nil
		}
		return okOutcome(s.Objects, nil), nil
	}
}

func batchOp(op string, args []string) (Op, error) {
	kinds := map[string]OpKind{"get": OpGet, "retain": OpRetain, "release": OpRelease, "remove": OpRemove}
	switch op {
	case "insert":
		if len(args) != 2 {
			return Op{}, errors.New("insert takes 2 arguments")
		}
		v, err := value(args[0])
		if err != nil {
			return Op{}, err
		}
		f, err := flagsOf(args[1])
		return Op{Kind: OpInsert, Value: v, Flags: f}, err
	case "replace":
		h, err := handleArg(args, 0)
		if err != nil || len(args) != 2 {
			return Op{}, fmt.Errorf("replace takes a handle and a value")
		}
		v, err := value(args[1])
		return Op{Kind: OpReplace, Handle: h, Value: v}, err
	case "raw":
		if len(args) != 3 {
			return Op{}, errors.New("raw takes OPCODE FLAGS HANDLE")
		}
		kind, err := strconv.ParseUint(args[0], 10, 32)
		if err != nil {
			return Op{}, err
		}
		f, err := flagsOf(args[1])
		if err != nil {
			return Op{}, err
		}
		h, err := handleArg(args, 2)
		return Op{Kind: OpKind(kind), Flags: f, Handle: h}, err
	}
	kind, ok := kinds[op]
	if !ok {
		return Op{}, fmt.Errorf("the %s runner cannot express the batch op `%s`", language, op)
	}
	h, err := handleArg(args, 0)
	return Op{Kind: kind, Handle: h}, err
}

func checkOutcome(op opLine, got outcome, names map[string]uint64) error {
	want := op.expect[0]
	if want != got.status {
		return fmt.Errorf("expected %s, got %s", strings.Join(op.expect, " "), got)
	}
	if len(op.expect) < 2 {
		return nil
	}
	extra := op.expect[1]
	switch {
	case strings.HasPrefix(extra, "$"):
		if op.op != "insert" {
			return fmt.Errorf("only an insert binds a handle, not %s", op.op)
		}
		names[extra[1:]] = got.number
	case want == "BUFFER" || op.op == "objects":
		n, err := strconv.ParseUint(extra, 10, 64)
		if err != nil || n != got.number {
			return fmt.Errorf("expected %s %s, got %d", want, extra, got.number)
		}
	default:
		v, err := value(extra)
		if err != nil {
			return err
		}
		if got.data == nil || string(got.data) != string(v) {
			return fmt.Errorf("expected the value %s, got %q", extra, got.data)
		}
	}
	return nil
}

func resolve(args []string, names map[string]uint64) ([]string, error) {
	out := make([]string, len(args))
	for i, a := range args {
		if strings.HasPrefix(a, "$") {
			h, ok := names[a[1:]]
			if !ok {
				return nil, fmt.Errorf("%s is not bound", a)
			}
			a = strconv.FormatUint(h, 10)
		}
		out[i] = a
	}
	return out, nil
}

// child is this test binary run again as a conformance child process.
type child struct {
	cmd *exec.Cmd
	to  io.WriteCloser
	frm *bufio.Reader
}

var (
	nobodyBinaryOnce sync.Once
	nobodyBinary     string
	nobodyBinaryErr  error
)

// executableFor is this test binary, or for uid 65534 a copy of it in a
// directory that uid can reach (go test builds it in a private one).
func executableFor(nobody bool) (string, error) {
	self, err := os.Executable()
	if err != nil || !nobody {
		return self, err
	}
	nobodyBinaryOnce.Do(func() {
		dir, err := os.MkdirTemp("", "hreg-go-child-")
		if err == nil {
			err = os.Chmod(dir, 0o755)
		}
		if err != nil {
			nobodyBinaryErr = err
			return
		}
		data, err := os.ReadFile(self)
		if err == nil {
			nobodyBinary = filepath.Join(dir, "hreg.test")
			err = os.WriteFile(nobodyBinary, data, 0o755)
		}
		nobodyBinaryErr = err
	})
	return nobodyBinary, nobodyBinaryErr
}

func spawnChild(socket string, nobody bool) (*child, error) {
	exe, err := executableFor(nobody)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(exe)
	cmd.Env = append(os.Environ(), childEnv+"="+socket)
	cmd.Stderr = os.Stderr
	if nobody {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: nobodyID, Gid: nobodyID, Groups: []uint32{}}}
	}
	to, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	ch := &child{cmd: cmd, to: to, frm: bufio.NewReader(out)}
	line, _ := ch.frm.ReadString('\n')
	if strings.TrimSpace(line) != "ready" {
		ch.kill()
		return nil, fmt.Errorf("the child process did not start: %q", line)
	}
	return ch, nil
}

func (ch *child) run(op string, args []string) (outcome, error) {
	if _, err := fmt.Fprintln(ch.to, strings.Join(append([]string{op}, args...), " ")); err != nil {
		return outcome{}, err
	}
	line, err := ch.frm.ReadString('\n')
	if err != nil {
		return outcome{}, errors.New("the child process exited")
	}
	line = strings.TrimSpace(line)
	if strings.HasPrefix(line, "ERROR ") {
		return outcome{}, errors.New(line[6:])
	}
	return parseOutcome(line)
}

func (ch *child) close() error {
	ch.to.Close()
	return ch.cmd.Wait()
}

func (ch *child) kill() {
	_ = ch.cmd.Process.Kill()
	_ = ch.cmd.Wait()
}

// conformanceChild is the child's whole life (from TestMain).
func conformanceChild(socket string) int {
	c, err := Connect(socket)
	if err != nil {
		fmt.Println(err)
		return 1
	}
	defer c.Close()
	fmt.Println("ready")
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		fields := strings.Fields(in.Text())
		if len(fields) == 0 {
			fmt.Println("ERROR empty line")
			continue
		}
		o, err := execute(c, fields[0], fields[1:])
		if err != nil {
			fmt.Println("ERROR " + err.Error())
		} else {
			fmt.Println(o)
		}
	}
	return 0
}

type actor struct {
	session *Client
	process *child
}

func runCase(t *testing.T, cc *confCase, global []string) error {
	if err := cc.validate(); err != nil {
		return err
	}
	d := startDaemon(t, append(append([]string{}, global...), cc.daemon...)...)
	actors := map[string]*actor{}
	names := map[string]uint64{}
	defer func() {
		for _, a := range actors {
			if a.process != nil {
				a.process.kill()
			} else {
				a.session.Close()
			}
		}
	}()
	for _, s := range cc.steps {
		switch s.kind {
		case "session":
			c, err := Connect(d.socket)
			if err != nil {
				return err
			}
			actors[s.actor] = &actor{session: c}
		case "process":
			ch, err := spawnChild(d.socket, s.nobody)
			if err != nil {
				return err
			}
			actors[s.actor] = &actor{process: ch}
		case "close", "kill":
			a, ok := actors[s.actor]
			if !ok || (s.kind == "kill" && a.process == nil) {
				return fmt.Errorf("line %d: cannot %s %s", s.line, s.kind, s.actor)
			}
			delete(actors, s.actor)
			switch {
			case s.kind == "kill":
				a.process.kill()
			case a.process != nil:
				if err := a.process.close(); err != nil {
					return fmt.Errorf("line %d: the child process: %v", s.line, err)
				}
			default:
				a.session.Close()
			}
		case "op":
			if err := runOp(s, actors, names); err != nil {
				return err
			}
		case "batch":
			if err := runBatch(s, actors, names); err != nil {
				return err
			}
		}
	}
	return nil
}

func runOp(s step, actors map[string]*actor, names map[string]uint64) error {
	op := s.op
	a, ok := actors[s.actor]
	if !ok {
		return fmt.Errorf("line %d: no session or process %s", op.line, s.actor)
	}
	args, err := resolve(op.args, names)
	if err != nil {
		return fmt.Errorf("line %d: %v", op.line, err)
	}
	deadline := time.Now().Add(eventually)
	for {
		var got outcome
		if a.process != nil {
			got, err = a.process.run(op.op, args)
		} else {
			got, err = execute(a.session, op.op, args)
		}
		if err != nil {
			return fmt.Errorf("line %d: %v", op.line, err)
		}
		err = checkOutcome(op, got, names)
		if err == nil {
			return nil
		}
		if !s.eventually || time.Now().After(deadline) {
			return fmt.Errorf("line %d: %s %s: %v", op.line, op.op, strings.Join(op.args, " "), err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func runBatch(s step, actors map[string]*actor, names map[string]uint64) error {
	a, ok := actors[s.actor]
	if !ok || a.session == nil {
		return fmt.Errorf("line %d: a batch needs a session, not %s", s.line, s.actor)
	}
	ops := make([]Op, len(s.ops))
	for i, o := range s.ops {
		args, err := resolve(o.args, names)
		if err != nil {
			return fmt.Errorf("line %d: %v", o.line, err)
		}
		if ops[i], err = batchOp(o.op, args); err != nil {
			return fmt.Errorf("line %d: %v", o.line, err)
		}
	}
	batchErr := a.session.Submit(ops)
	first := "OK"
	for i, o := range s.ops {
		got := okOutcome(0, nil)
		switch {
		case ops[i].Err != nil:
			got = errOutcome(ops[i].Err)
		case ops[i].Kind == OpInsert:
			got = okOutcome(uint64(ops[i].Handle), nil)
		case ops[i].Kind == OpGet:
			got = okOutcome(uint64(len(ops[i].Value)), ops[i].Value)
		}
		if first == "OK" && got.status != "OK" {
			first = got.status
		}
		if err := checkOutcome(o, got, names); err != nil {
			return fmt.Errorf("line %d (in the batch): %s %s: %v", o.line, o.op, strings.Join(o.args, " "), err)
		}
	}
	batchStatus := "OK"
	if batchErr != nil {
		batchStatus = errOutcome(batchErr).status
	}
	if first != s.result || batchStatus != s.result {
		return fmt.Errorf("line %d: the batch's status is %s (Submit returned %v), expected %s", s.line, first, batchErr, s.result)
	}
	return nil
}

func loadCases(t *testing.T) ([]string, []*confCase) {
	text, err := os.ReadFile(filepath.Join(repoDir(), "tests", "conformance", "cases.txt"))
	if err != nil {
		t.Fatal(err)
	}
	global, cases, err := parseCases(string(text))
	if err != nil {
		t.Fatalf("cases.txt: %v", err)
	}
	return global, cases
}

func TestConformance(t *testing.T) {
	global, cases := loadCases(t)
	if len(cases) < 20 {
		t.Fatalf("cases.txt has only %d cases", len(cases))
	}
	root := os.Geteuid() == 0
	for _, cc := range cases {
		cc := cc
		t.Run(cc.name, func(t *testing.T) {
			if !cc.runsHere() {
				t.Skipf("%s: acknowledged, for %s only", cc.name, strings.Join(cc.languages, " "))
			}
			if cc.needsRoot() && !root {
				t.Skipf("%s: NOT RUN, needs root to run a process as uid 65534", cc.name)
			}
			if err := runCase(t, cc, global); err != nil {
				t.Fatalf("%s (line %d): %v", cc.name, cc.line, err)
			}
		})
	}
}

func TestConformanceRunnerRefusesWhatItDoesNotKnow(t *testing.T) {
	for _, bad := range []string{
		"case x\nsession a\na frobnicate 1 -> OK\nend\n",
		"case x\nsession a\na batch\nget_into 1 0 -> OK\nsubmit -> OK\nend\n",
		"case x\nwhatever\nend\n",
		"case x\nsession a\na get 1\nend\n",
		"bogus\n",
		"case x\nsession a\na batch\nget 1 -> OK\n",
		"case x\nprocess p root\nend\n",
	} {
		_, cases, err := parseCases(bad)
		refused := err != nil
		for _, c := range cases {
			refused = refused || c.validate() != nil
		}
		if !refused {
			t.Errorf("accepted: %q", bad)
		}
	}
}
