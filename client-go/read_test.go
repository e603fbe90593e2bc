// Reads in Go: the layout the reader assumes is the one libhreg (proto)
// defines; values of every size read back whole; a value being replaced by
// another process at full speed is never seen torn, nor is another
// object's value ever seen through a handle (a slot reused by a newer
// object); a Get racing Close is safe; and the rings a Client opens stay
// bounded however many OS threads call it.

package hreg

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"os"
	"os/exec"
	"reflect"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

func TestLayoutIsProtos(t *testing.T) {
	got, want := libhregLayout(), goLayout
	if got == want {
		return
	}
	g, w := reflect.ValueOf(got), reflect.ValueOf(want)
	for i := 0; i < g.NumField(); i++ {
		// Sprint, not Interface: the fields are unexported.
		if fmt.Sprint(g.Field(i)) != fmt.Sprint(w.Field(i)) {
			t.Errorf("%s: libhreg (proto) says %v, read.go %v", g.Type().Field(i).Name, g.Field(i), w.Field(i))
		}
	}
}

// pattern is n bytes that depend on seed.
func pattern(n int, seed byte) []byte {
	v := make([]byte, n)
	for i := range v {
		v[i] = seed + byte(i*7)
	}
	return v
}

func TestReadsInGoGiveEverySizeWhole(t *testing.T) {
	d := startDaemon(t)
	c := d.client(t)
	if c.local == nil {
		t.Fatal("this client does not read in Go")
	}
	for _, n := range []int{0, 1, 7, 8, 9, 47, 48, 49, 100, 1000, localMax, localMax + 1, 1 << 20} {
		want := pattern(n, byte(n))
		h, err := c.Insert(want, 0)
		if err != nil {
			t.Fatal(err)
		}
		// Applied (a posted insert reads as reserved until then, which
		// libhreg answers), and the first read of a domain may need
		// libhreg to map it.
		if err := c.Flush(); err != nil {
			t.Fatal(err)
		}
		_, _ = c.Get(h)
		value, _, got := c.local.read(h, nil, true)
		switch {
		case n > localMax && got != readCgo:
			t.Errorf("%d bytes: read in Go (%d), not by libhreg", n, got)
		case n <= localMax && (got != readValue || !bytes.Equal(value, want)):
			t.Errorf("%d bytes: outcome %d, %d bytes read", n, got, len(value))
		}
		if v, err := c.Get(h); err != nil || !bytes.Equal(v, want) || v == nil {
			t.Errorf("Get of %d bytes: %d bytes, %v", n, len(v), err)
		}
		short := make([]byte, n/2)
		if m, err := c.GetInto(h, short); n > 0 && (!errors.Is(err, ErrBuffer) || m != n) {
			t.Errorf("GetInto %d bytes into %d: %d, %v", n, len(short), m, err)
		}
		room := make([]byte, n+3)
		if m, err := c.GetInto(h, room); err != nil || m != n || !bytes.Equal(room[:m], want) {
			t.Errorf("GetInto %d bytes: %d, %v", n, m, err)
		}
		ops := []Op{{Kind: OpGet, Handle: h, Value: make([]byte, 0, n)}, {Kind: OpRelease, Handle: h}, {Kind: OpGet, Handle: h}}
		if err := c.Submit(ops); !errors.Is(err, ErrStale) || !bytes.Equal(ops[0].Value, want) ||
			ops[1].Err != nil || !errors.Is(ops[2].Err, ErrStale) {
			t.Errorf("Submit of %d bytes: %v / %d bytes, %v, %v", n, err, len(ops[0].Value), ops[1].Err, ops[2].Err)
		}
		if _, _, got := c.local.read(h, nil, true); got != readStale {
			t.Errorf("%d bytes, released: outcome %d", n, got)
		}
	}
	// A handle of another registry instance is stale, here as in libhreg.
	h, _ := c.Insert([]byte("x"), 0)
	other := Handle(uint64(h) ^ 1<<(slotBits+generationBits+domainBits))
	if _, err := c.Get(other); !errors.Is(err, ErrStale) {
		t.Errorf("another instance's handle: %v", err)
	}
	if _, err := c.Get(0); !errors.Is(err, ErrInvalid) {
		t.Errorf("handle 0: %v", err)
	}
}

// A posted insert's slot reads as reserved until the daemon applies it:
// the client that inserted answers its own reads of it in Go, from the copy
// it kept, without a cgo call. The daemon is stopped meanwhile, so that the
// slots stay reserved.
func TestOwnInsertsNotAppliedYetReadInGo(t *testing.T) {
	d := startDaemon(t)
	c := d.client(t)
	if c.local == nil {
		t.Fatal("this client does not read in Go")
	}
	// Handles of both kinds granted ahead and their chunks mapped, before
	// the stop (a grant waits for the daemon).
	for _, flags := range []Flags{0, Shared} {
		warm, err := c.Insert([]byte("warm"), flags)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c.Get(warm); err != nil {
			t.Fatal(err)
		}
	}
	if err := d.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	defer d.cmd.Process.Signal(syscall.SIGCONT)
	values := map[Handle][]byte{}
	for n := 0; n <= postedMax; n += 4 {
		want := pattern(n, byte(n+1))
		h, err := c.Insert(want, Flags(n/4%2)*Shared)
		if err != nil {
			t.Fatal(err)
		}
		values[h] = want
	}
	for h, want := range values {
		value, n, got := c.local.read(h, nil, true)
		if got != readValue || n != len(want) || !bytes.Equal(value, want) || value == nil {
			t.Fatalf("%d bytes not applied yet: outcome %d, %q, want %q in Go", len(want), got, value, want)
		}
		if len(want) > 0 {
			if _, n, got := c.local.read(h, make([]byte, len(want)-1), false); got != readBuffer || n != len(want) {
				t.Fatalf("%d bytes into one less: outcome %d, %d", len(want), got, n)
			}
		}
		if v, err := c.Get(h); err != nil || !bytes.Equal(v, want) {
			t.Fatalf("Get of %d bytes not applied yet: %q, %v", len(want), v, err)
		}
	}
	if err := d.cmd.Process.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	if err := c.Flush(); err != nil {
		t.Fatal(err)
	}
	for h, want := range values {
		// Applied: now read from the slot.
		if value, _, got := c.local.read(h, nil, true); got != readValue || !bytes.Equal(value, want) {
			t.Fatalf("%d bytes applied: outcome %d, %q", len(want), got, value)
		}
	}
}

// The replacer child: replaces the values of the handles in $replacerEnv
// (comma-separated) with framed values of varying lengths, and inserts and
// releases SHARED objects of its own meanwhile, until its stdin closes.
const (
	replacerEnv       = "HREG_TEST_REPLACER"
	replacerSocketEnv = "HREG_TEST_REPLACER_SOCKET"
)

// framed is a value for object `object`, version `seq`, n >= 16 bytes: the
// object, the version, a pattern, and a CRC of everything before it.
func framed(object, seq uint32, n int) []byte {
	v := pattern(n, byte(object*31+seq))
	binary.LittleEndian.PutUint32(v[0:], object)
	binary.LittleEndian.PutUint32(v[4:], seq)
	binary.LittleEndian.PutUint32(v[n-4:], crc32.ChecksumIEEE(v[:n-4]))
	return v
}

// checkFramed says what is wrong with v as a value of object `object`.
func checkFramed(v []byte, object uint32) error {
	if len(v) < 16 {
		return fmt.Errorf("%d bytes", len(v))
	}
	if crc32.ChecksumIEEE(v[:len(v)-4]) != binary.LittleEndian.Uint32(v[len(v)-4:]) {
		return fmt.Errorf("torn: %d bytes, checksum wrong", len(v))
	}
	if got := binary.LittleEndian.Uint32(v); got != object {
		return fmt.Errorf("foreign: object %d's value", got)
	}
	seq := binary.LittleEndian.Uint32(v[4:])
	if !bytes.Equal(v, framed(object, seq, len(v))) {
		return fmt.Errorf("torn: %d bytes, not version %d", len(v), seq)
	}
	return nil
}

// replacedLengths go from inline to the heap to beyond localMax.
var replacedLengths = []int{16, 24, 40, 48, 49, 64, 200, 1000, localMax, localMax + 8}

func replacerChild(socket string) int {
	c, err := Connect(socket)
	if err != nil {
		fmt.Println(err)
		return 1
	}
	defer c.Close()
	var handles []Handle
	for _, f := range strings.Split(os.Getenv(replacerEnv), ",") {
		n, err := strconv.ParseUint(f, 10, 64)
		if err != nil {
			fmt.Println(err)
			return 1
		}
		handles = append(handles, Handle(n))
	}
	var stop atomic.Bool
	go func() {
		_, _ = bufio.NewReader(os.Stdin).ReadString('\n')
		stop.Store(true)
	}()
	fmt.Println("ready")
	replaces := 0
	for seq := uint32(1); !stop.Load(); seq++ {
		for i, h := range handles {
			n := replacedLengths[(int(seq)+i)%len(replacedLengths)]
			if err := c.Replace(h, framed(uint32(i), seq, n)); err != nil {
				fmt.Println(err)
				return 1
			}
			replaces++
		}
		// Churn: slots freed and used again by newer objects.
		churn, err := c.Insert(framed(1000+seq%7, seq, 32), Shared)
		if err == nil {
			err = c.Release(churn)
		}
		if err != nil {
			fmt.Println(err)
			return 1
		}
	}
	fmt.Println("replaced", replaces)
	return 0
}

func TestReadersNeverSeeTornOrForeignValues(t *testing.T) {
	d := startDaemon(t)
	c := d.client(t)
	const objects = 4
	var handles []Handle
	var names []string
	for i := 0; i < objects; i++ {
		h, err := c.Insert(framed(uint32(i), 0, 16), Shared|Detached)
		if err != nil {
			t.Fatal(err)
		}
		handles = append(handles, h)
		names = append(names, strconv.FormatUint(uint64(h), 10))
	}
	// Stale handles whose slots the child's churn takes again.
	var stale []Handle
	for i := 0; i < 64; i++ {
		h, err := c.Insert(framed(999, 0, 16), Shared)
		if err == nil {
			err = c.Release(h)
		}
		if err != nil {
			t.Fatal(err)
		}
		stale = append(stale, h)
	}

	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	child := exec.Command(exe)
	child.Env = append(os.Environ(), replacerEnv+"="+strings.Join(names, ","), replacerSocketEnv+"="+d.socket)
	child.Stderr = os.Stderr
	to, _ := child.StdinPipe()
	from, _ := child.StdoutPipe()
	if err := child.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = child.Process.Kill(); _ = child.Wait() }()
	out := bufio.NewReader(from)
	if line, _ := out.ReadString('\n'); strings.TrimSpace(line) != "ready" {
		t.Fatalf("the replacer did not start: %q", line)
	}

	var inGo, byLibhreg, checked atomic.Int64
	var wg sync.WaitGroup
	failures := make(chan error, 16)
	deadline := time.Now().Add(3 * time.Second)
	for g := 0; g < 2*runtime.GOMAXPROCS(0); g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			buf := make([]byte, localMax+64)
			fail := func(err error) { failures <- err }
			for k := 0; time.Now().Before(deadline); k++ {
				i := (g + k) % objects
				h := handles[i]
				var v []byte
				var err error
				switch k % 4 {
				case 0:
					v, err = c.Get(h)
				case 1:
					var n int
					n, err = c.GetInto(h, buf)
					v = buf[:n]
				case 2:
					ops := []Op{{Kind: OpGet, Handle: h}}
					err = c.Submit(ops)
					v = ops[0].Value
				default:
					var got readOutcome
					v, _, got = c.local.read(h, nil, true)
					if got == readCgo {
						byLibhreg.Add(1)
						continue
					}
					if got != readValue {
						fail(fmt.Errorf("object %d: outcome %d", i, got))
						return
					}
					inGo.Add(1)
				}
				if err != nil {
					fail(fmt.Errorf("object %d: %v", i, err))
					return
				}
				if err := checkFramed(v, uint32(i)); err != nil {
					fail(fmt.Errorf("object %d: %v", i, err))
					return
				}
				checked.Add(1)
				if s := stale[k%len(stale)]; k%8 == 0 {
					if v, err := c.Get(s); !errors.Is(err, ErrStale) {
						fail(fmt.Errorf("stale handle %d: %d bytes, %v", s, len(v), err))
						return
					}
				}
			}
		}(g)
	}
	wg.Wait()
	close(failures)
	for err := range failures {
		t.Error(err)
	}
	to.Close()
	line, _ := out.ReadString('\n')
	if err := child.Wait(); err != nil || !strings.HasPrefix(line, "replaced ") {
		t.Fatalf("the replacer: %v, %q", err, line)
	}
	replaced, _ := strconv.Atoi(strings.TrimSpace(strings.TrimPrefix(line, "replaced ")))
	t.Logf("%d values checked (%d read in Go by the reader itself, %d left to libhreg) against %d replaces",
		checked.Load(), inGo.Load(), byLibhreg.Load(), replaced)
	if replaced < 100 || inGo.Load() < 100 {
		t.Fatalf("too little happened to tell: %d replaces, %d reads in Go", replaced, inGo.Load())
	}
}

func TestGetRacingCloseIsSafe(t *testing.T) {
	d := startDaemon(t)
	for round := 0; round < 20; round++ {
		c := d.client(t)
		h, err := c.Insert(pattern(100, 1), Detached)
		if err != nil {
			t.Fatal(err)
		}
		var wg sync.WaitGroup
		var closed atomic.Bool
		errs := make(chan error, 8)
		for g := 0; g < 4; g++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for {
					wasClosed := closed.Load()
					v, err := c.Get(h)
					switch {
					case err == nil && bytes.Equal(v, pattern(100, 1)):
					case errors.Is(err, ErrDisconnected):
						return
					default:
						errs <- fmt.Errorf("%d bytes, %v", len(v), err)
						return
					}
					if wasClosed {
						errs <- errors.New("a Get that started after Close succeeded")
						return
					}
				}
			}()
		}
		time.Sleep(time.Millisecond)
		c.Close()
		closed.Store(true)
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatal(err)
		}
	}
}

// sessionRings is how many rings the daemon says session pid holds.
func sessionRings(t *testing.T, d *daemon) int {
	t.Helper()
	out, err := exec.Command(daemonBinary(t, "hregctl"), "--socket", d.socket, "sessions", "--json").Output()
	if err != nil {
		t.Fatalf("hregctl sessions: %v", err)
	}
	// One JSON object per line, one per session.
	rings := 0
	dec := json.NewDecoder(bytes.NewReader(out))
	for dec.More() {
		var s struct {
			Pid   int `json:"pid"`
			Rings int `json:"rings"`
		}
		if err := dec.Decode(&s); err != nil {
			t.Fatalf("hregctl sessions --json: %v\n%s", err, out)
		}
		if s.Pid == os.Getpid() {
			rings += s.Rings
		}
	}
	return rings
}

func TestRingsStayBoundedWhateverTheThreads(t *testing.T) {
	d := startDaemon(t)
	c := d.client(t)
	const threads = 24
	var wg sync.WaitGroup
	var release sync.WaitGroup
	release.Add(1)
	errs := make(chan error, threads)
	for g := 0; g < threads; g++ {
		wg.Add(1)
		go func(g int) {
			// Each on an OS thread of its own, kept until all are done.
			runtime.LockOSThread()
			defer wg.Done()
			for i := 0; i < 20; i++ {
				h, err := c.Insert([]byte(fmt.Sprint(g, i)), 0)
				if err == nil {
					err = c.Release(h)
				}
				if err != nil {
					errs <- err
					return
				}
			}
			release.Wait()
		}(g)
	}
	waitUntil(t, "the goroutines' writes", func() bool {
		return len(errs) > 0 || allWritten(c, threads)
	})
	rings := sessionRings(t, d)
	release.Done()
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if rings < 1 || rings > ringPool() {
		t.Fatalf("%d OS threads opened %d rings; the pool is %d", threads, rings, ringPool())
	}
	t.Logf("%d OS threads, %d rings (GOMAXPROCS %d)", threads, rings, runtime.GOMAXPROCS(0))
}

// allWritten is whether the threads' 2*20 ops each reached the daemon.
func allWritten(c *Client, threads int) bool {
	s, err := c.Stats()
	return err == nil && s.Ops >= uint64(threads*40)
}

// Get's small results share blocks: each is its own bytes (no two overlap,
// whichever goroutines took them), capped at its length, so that writing
// or appending to one never changes another.
func TestResultsCarvedFromBlocksAreEachTheirOwn(t *testing.T) {
	var blocks resultBlocks
	const goroutines, each = 8, 2000
	results := make([][][]byte, goroutines)
	var wg sync.WaitGroup
	for g := 0; g < goroutines; g++ {
		g := g
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < each; i++ {
				n := i % (carvedMax + 1)
				r := blocks.take(n)
				if len(r) != n || cap(r) != n {
					t.Errorf("take(%d): len %d cap %d", n, len(r), cap(r))
					return
				}
				for k := range r {
					r[k] = byte(g*31 + i + k)
				}
				results[g] = append(results[g], r)
			}
		}()
	}
	wg.Wait()
	for g, rs := range results {
		for i, r := range rs {
			for k, b := range r {
				if b != byte(g*31+i+k) {
					t.Fatalf("goroutine %d's result %d changed at byte %d", g, i, k)
				}
			}
		}
	}
	// An append copies, leaving the block's next result alone.
	first, second := blocks.take(4), blocks.take(4)
	copy(second, "keep")
	_ = append(first, "overwrite"...)
	if string(second) != "keep" {
		t.Fatalf("an append to one result wrote into the next: %q", second)
	}
	if r := blocks.take(carvedMax + 1); len(r) != carvedMax+1 {
		t.Fatalf("a longer result has length %d", len(r))
	}
}
