// origin: the scene hreg comes from. cgo forbids C from keeping Go
// pointers, so Go hands C an integer; with hreg that integer names an
// object in hregd, and a separate C program resolves it by itself. And the
// reverse: a C program inserts, Go resolves.
//
// One command, from the repository's root, builds what it needs, starts a
// private hregd, runs this, and removes everything again:
//
//	client-go/examples/origin/run
//
// With libhreg installed (pkg-config finds it) and hregd serving:
//
//	cd client-go && go run ./examples/origin [-socket PATH]
//
// Without -producer and -consumer it compiles client-c/examples/producer.c
// and consumer.c with cc and pkg-config into a temporary directory, which
// it removes when it exits, whether it succeeded or not.
package main

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"

	"hreg.dev/go/hreg"
)

func main() {
	producer := flag.String("producer", "", "the C program that inserts a value and prints its handle (default: build client-c/examples/producer.c)")
	consumer := flag.String("consumer", "", "the C program that prints the value of a handle and removes it (default: build client-c/examples/consumer.c)")
	socket := flag.String("socket", "", "hregd's socket (default: $HREG_SOCKET, else the default path)")
	flag.Parse()
	if err := run(*socket, *producer, *consumer); err != nil {
		fmt.Fprintln(os.Stderr, "origin:", err)
		os.Exit(1)
	}
}

func run(socket, producer, consumer string) error {
	if producer == "" || consumer == "" {
		dir, err := os.MkdirTemp("", "hreg-origin-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(dir)
		if producer == "" {
			if producer, err = buildC(dir, "producer"); err != nil {
				return err
			}
		}
		if consumer == "" {
			if consumer, err = buildC(dir, "consumer"); err != nil {
				return err
			}
		}
	}

	c, err := hreg.Connect(socket)
	if err != nil {
		return fmt.Errorf("%w (start one: cargo run --release --bin hregd)", err)
	}
	defer c.Close()

	// Go inserts and hands C only the integer. Detached: the object must
	// outlive this session's reference rules while C holds the number.
	h, err := c.Insert([]byte("hello from Go"), hreg.Detached)
	if err != nil {
		return err
	}
	out, err := command(socket, consumer, strconv.FormatUint(uint64(h), 10)).Output()
	if err != nil {
		_ = c.Remove(h)
		return fmt.Errorf("%s %d: %v", consumer, h, err)
	}
	fmt.Printf("C resolved Go's handle %d: %s\n", h, strings.TrimSpace(string(out)))

	// The reverse: C inserts and prints the handle; Go resolves it.
	out, err = command(socket, producer, "hello from C").Output()
	if err != nil {
		return fmt.Errorf("%s: %v", producer, err)
	}
	n, err := strconv.ParseUint(strings.TrimSpace(string(out)), 10, 64)
	if err != nil {
		return fmt.Errorf("%s printed %q, not a handle", producer, out)
	}
	value, err := c.Get(hreg.Handle(n))
	if err != nil {
		_ = c.Remove(hreg.Handle(n))
		return err
	}
	fmt.Printf("Go resolved C's handle %d: %s\n", n, value)
	return c.Remove(hreg.Handle(n))
}

// buildC compiles client-c/examples/NAME.c against the libhreg pkg-config
// finds, into dir.
func buildC(dir, name string) (string, error) {
	_, here, _, ok := runtime.Caller(0)
	if !ok {
		return "", errors.New("cannot tell where the sources are: give -producer and -consumer")
	}
	src := filepath.Join(filepath.Dir(here), "..", "..", "..", "client-c", "examples", name+".c")
	if _, err := os.Stat(src); err != nil {
		return "", fmt.Errorf("%v: give -producer and -consumer", err)
	}
	flags, err := exec.Command("pkg-config", "--cflags", "--libs", "hreg").Output()
	if err != nil {
		return "", fmt.Errorf("pkg-config hreg: %v (install libhreg: make -C client-c install, and set PKG_CONFIG_PATH)", err)
	}
	exe := filepath.Join(dir, name)
	args := append([]string{src, "-o", exe}, strings.Fields(string(flags))...)
	if out, err := exec.Command("cc", args...).CombinedOutput(); err != nil {
		return "", fmt.Errorf("cc %s: %v\n%s", name, err, out)
	}
	return exe, nil
}

// command runs a C program against the same daemon.
func command(socket, program string, args ...string) *exec.Cmd {
	cmd := exec.Command(program, args...)
	cmd.Stderr = os.Stderr
	if socket != "" {
		cmd.Env = append(os.Environ(), "HREG_SOCKET="+socket)
	}
	return cmd
}
