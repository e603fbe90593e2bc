// origin: the scene hreg comes from. cgo forbids C from keeping Go
// pointers, so Go hands C an integer; with hreg that integer names an
// object in hregd, and a separate C program resolves it by itself. And the
// reverse: a C program inserts, Go resolves.
//
//	make -C client-c install PREFIX=$HOME/.local
//	export PKG_CONFIG_PATH=$HOME/.local/lib/pkgconfig LD_LIBRARY_PATH=$HOME/.local/lib
//	cc client-c/examples/producer.c $(pkg-config --cflags --libs hreg) -o producer
//	cc client-c/examples/consumer.c $(pkg-config --cflags --libs hreg) -o consumer
//	HREG_SOCKET=/tmp/hreg.sock go run ./examples/origin -producer ./producer -consumer ./consumer
package main

import (
	"flag"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"

	"hreg.dev/go/hreg"
)

func main() {
	producer := flag.String("producer", "producer", "the C program that inserts a value and prints its handle")
	consumer := flag.String("consumer", "consumer", "the C program that prints the value of a handle and removes it")
	socket := flag.String("socket", "", "hregd's socket (default: $HREG_SOCKET, else the default path)")
	flag.Parse()
	if err := run(*socket, *producer, *consumer); err != nil {
		fmt.Fprintln(os.Stderr, "origin:", err)
		os.Exit(1)
	}
}

func run(socket, producer, consumer string) error {
	c, err := hreg.Connect(socket)
	if err != nil {
		return err
	}
	defer c.Close()

	// Go inserts and hands C only the integer. DETACHED: the object must
	// outlive this session's reference rules while C holds the number.
	h, err := c.Insert([]byte("hello from Go"), hreg.Detached)
	if err != nil {
		return err
	}
	out, err := command(socket, consumer, strconv.FormatUint(uint64(h), 10)).Output()
	if err != nil {
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
		return err
	}
	fmt.Printf("Go resolved C's handle %d: %s\n", n, value)
	return c.Remove(hreg.Handle(n))
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
