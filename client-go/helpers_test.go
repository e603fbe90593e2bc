// Test helpers: real hregd processes on private sockets (from
// $HREG_BIN_DIR, else the repository's target/debug), and TestMain, which
// also serves as the conformance runner's child process.

package hreg

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

// patience bounds every wait, only so that a broken build fails instead of
// hanging.
const patience = 20 * time.Second

func TestMain(m *testing.M) {
	if socket := os.Getenv(childEnv); socket != "" {
		os.Exit(conformanceChild(socket))
	}
	if socket := os.Getenv(replacerSocketEnv); socket != "" {
		os.Exit(replacerChild(socket))
	}
	os.Exit(m.Run())
}

func repoDir() string {
	dir, err := filepath.Abs("..")
	if err != nil {
		panic(err)
	}
	return dir
}

// daemonBinary is a built binary of the workspace: from $HREG_BIN_DIR if
// set, else target/debug; benchmarks take target/release when it has one
// (figures of a debug daemon would measure the debug build).
func daemonBinary(tb testing.TB, name string) string {
	dir := os.Getenv("HREG_BIN_DIR")
	if dir == "" {
		dir = filepath.Join(repoDir(), "target", "debug")
		release := filepath.Join(repoDir(), "target", "release")
		if _, err := os.Stat(filepath.Join(release, name)); err == nil {
			if _, bench := tb.(*testing.B); bench {
				dir = release
			}
		}
	}
	path := filepath.Join(dir, name)
	if _, err := os.Stat(path); err != nil {
		tb.Fatalf("%s is not built; run `cargo build --workspace` (or set HREG_BIN_DIR)", path)
	}
	return path
}

// daemon is a running hregd on a socket in a 0755 directory with socket
// mode 666 (so that another uid may attach too).
type daemon struct {
	socket string
	cmd    *exec.Cmd
	dir    string
}

func startDaemon(tb testing.TB, args ...string) *daemon {
	tb.Helper()
	dir, err := os.MkdirTemp("", "hreg-go-")
	if err != nil {
		tb.Fatal(err)
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		tb.Fatal(err)
	}
	d := &daemon{socket: filepath.Join(dir, "hreg.sock"), dir: dir}
	all := append([]string{"--socket", d.socket, "--socket-mode", "666"}, args...)
	d.cmd = exec.Command(daemonBinary(tb, "hregd"), all...)
	d.cmd.Env = append(os.Environ(), "RUST_LOG=error")
	d.cmd.Stderr = os.Stderr
	if err := d.cmd.Start(); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(d.stop)
	deadline := time.Now().Add(patience)
	for {
		c, err := Connect(d.socket)
		if err == nil {
			c.Close()
			return d
		}
		if time.Now().After(deadline) {
			tb.Fatalf("hregd %v did not start: %v", args, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func (d *daemon) stop() {
	if d.cmd.ProcessState == nil {
		_ = d.cmd.Process.Kill()
		_ = d.cmd.Wait()
	}
	os.RemoveAll(d.dir)
}

func (d *daemon) client(tb testing.TB) *Client {
	tb.Helper()
	c, err := Connect(d.socket)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { c.Close() })
	return c
}

// inGoroutines runs body(0) ... body(n-1) each on its own goroutine and
// reports every error they return.
func inGoroutines(tb testing.TB, n int, body func(g int) error) {
	tb.Helper()
	errs := make(chan error, n)
	for g := 0; g < n; g++ {
		go func(g int) { errs <- body(g) }(g)
	}
	for g := 0; g < n; g++ {
		if err := <-errs; err != nil {
			tb.Error(err)
		}
	}
}

func waitUntil(tb testing.TB, what string, done func() bool) {
	tb.Helper()
	deadline := time.Now().Add(patience)
	for !done() {
		if time.Now().After(deadline) {
			tb.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
