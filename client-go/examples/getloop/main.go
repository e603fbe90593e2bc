// getloop: one goroutine reading one 16-byte value in a loop: median
// latency of a Get (each timed alone) and throughput (an untimed loop). The
// Go line of bench/langs/run.
//
//	getloop SOCKET ITERATIONS
package main

import (
	"fmt"
	"os"
	"sort"
	"strconv"
	"time"

	"hreg.dev/go/hreg"
)

func main() {
	if len(os.Args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: getloop SOCKET ITERATIONS")
		os.Exit(2)
	}
	n, err := strconv.Atoi(os.Args[2])
	check(err)
	c, err := hreg.Connect(os.Args[1])
	check(err)
	defer c.Close()
	h, err := c.Insert([]byte("0123456789abcdef"), 0)
	check(err)
	for i := 0; i < n/10; i++ {
		_, err = c.Get(h)
		check(err)
	}
	samples := make([]int64, n)
	for i := range samples {
		start := time.Now()
		_, err = c.Get(h)
		samples[i] = int64(time.Since(start))
		check(err)
	}
	sort.Slice(samples, func(i, j int) bool { return samples[i] < samples[j] })
	start := time.Now()
	for i := 0; i < n; i++ {
		_, err = c.Get(h)
		check(err)
	}
	rate := float64(n) / time.Since(start).Seconds()
	check(c.Release(h))
	fmt.Printf("go get 16 B, 1 thread: p50 %d ns, %.0f ops/s\n", samples[n/2], rate)
}

func check(err error) {
	if err != nil {
		fmt.Fprintln(os.Stderr, "getloop:", err)
		os.Exit(1)
	}
}
