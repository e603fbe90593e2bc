// The origin's scene, tested: Go hands C a handle and C resolves it, and
// the reverse, with client-c/examples/producer.c and consumer.c compiled
// against the libhreg that pkg-config finds; and the example program
// examples/origin built and run against the same daemon.

package hreg

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// cPrograms compiles producer and consumer with cc and pkg-config.
func cPrograms(t *testing.T) (producer, consumer string) {
	t.Helper()
	flags, err := exec.Command("pkg-config", "--cflags", "--libs", "hreg").Output()
	if err != nil {
		t.Fatalf("pkg-config hreg: %v (set PKG_CONFIG_PATH to an installed libhreg)", err)
	}
	dir := t.TempDir()
	for _, name := range []string{"producer", "consumer"} {
		src := filepath.Join(repoDir(), "client-c", "examples", name+".c")
		args := append([]string{src, "-o", filepath.Join(dir, name)}, strings.Fields(string(flags))...)
		if out, err := exec.Command("cc", args...).CombinedOutput(); err != nil {
			t.Fatalf("cc %s: %v\n%s", name, err, out)
		}
	}
	return filepath.Join(dir, "producer"), filepath.Join(dir, "consumer")
}

func runC(t *testing.T, socket string, program string, args ...string) string {
	t.Helper()
	cmd := exec.Command(program, args...)
	cmd.Env = append(os.Environ(), "HREG_SOCKET="+socket)
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s %v: %v", program, args, err)
	}
	return strings.TrimSpace(string(out))
}

func TestGoHandsCAHandleAndBack(t *testing.T) {
	producer, consumer := cPrograms(t)
	d := startDaemon(t)
	c := d.client(t)

	h, err := c.Insert([]byte("made in Go"), Detached)
	if err != nil {
		t.Fatal(err)
	}
	if got := runC(t, d.socket, consumer, strconv.FormatUint(uint64(h), 10)); got != "made in Go" {
		t.Fatalf("C resolved %q", got)
	}
	if _, err := c.Get(h); !errors.Is(err, ErrStale) {
		t.Fatalf("the consumer removes what it read: %v", err)
	}

	n, err := strconv.ParseUint(runC(t, d.socket, producer, "made in C"), 10, 64)
	if err != nil {
		t.Fatal(err)
	}
	if v, err := c.Get(Handle(n)); err != nil || string(v) != "made in C" {
		t.Fatalf("Go resolved %q, %v", v, err)
	}
	if err := c.Remove(Handle(n)); err != nil {
		t.Fatal(err)
	}
}

func TestTheOriginExample(t *testing.T) {
	producer, consumer := cPrograms(t)
	d := startDaemon(t)
	exe := filepath.Join(t.TempDir(), "origin")
	if out, err := exec.Command("go", "build", "-o", exe, "./examples/origin").CombinedOutput(); err != nil {
		t.Fatalf("go build ./examples/origin: %v\n%s", err, out)
	}
	out, err := exec.Command(exe, "-socket", d.socket, "-producer", producer, "-consumer", consumer).CombinedOutput()
	if err != nil {
		t.Fatalf("origin: %v\n%s", err, out)
	}
	text := string(out)
	if !strings.Contains(text, "C resolved Go's handle") || !strings.Contains(text, ": hello from Go") ||
		!strings.Contains(text, "Go resolved C's handle") || !strings.Contains(text, ": hello from C") {
		t.Fatalf("origin printed:\n%s", text)
	}
	if s, err := d.client(t).Stats(); err != nil || s.Objects != 0 {
		t.Fatalf("objects left: %+v %v", s, err)
	}
}

// Without -producer and -consumer the example builds them itself, in a
// temporary directory it removes whether it succeeds or fails.
func TestTheOriginExampleBuildsWhatItNeedsAndLeavesNothing(t *testing.T) {
	d := startDaemon(t)
	exe := filepath.Join(t.TempDir(), "origin")
	if out, err := exec.Command("go", "build", "-o", exe, "./examples/origin").CombinedOutput(); err != nil {
		t.Fatalf("go build ./examples/origin: %v\n%s", err, out)
	}
	for _, socket := range []string{d.socket, filepath.Join(t.TempDir(), "nothing-here.sock")} {
		tmp := t.TempDir()
		cmd := exec.Command(exe, "-socket", socket)
		cmd.Env = append(os.Environ(), "TMPDIR="+tmp)
		out, err := cmd.CombinedOutput()
		if ok := socket == d.socket; ok != (err == nil) || (ok && !strings.Contains(string(out), ": hello from C")) {
			t.Fatalf("origin -socket %s: %v\n%s", socket, err, out)
		}
		if left, _ := os.ReadDir(tmp); len(left) != 0 {
			t.Fatalf("origin -socket %s left %v behind", socket, left)
		}
	}
}
