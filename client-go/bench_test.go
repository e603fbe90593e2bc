// hreg side by side with runtime/cgo.Handle, the in-process answer to the
// same cgo rule: resolving a handle (cgo.Handle.Value; hreg Get of a
// 16-byte value, and GetInto) and a handle's whole life (New+Value+Delete;
// Insert+Get+Release), each on 1 goroutine, GOMAXPROCS goroutines and 8×
// GOMAXPROCS goroutines (the contention cgo.Handle's sync.Map is known
// for). Run (bench/langs/go-handles makes the README's table of medians):
//
//	go test -run '^$' -bench Handles -benchtime 1s
//
// hreg's writes cross to the daemon and back on every call; its reads stay
// in this process (a read of shared memory, no cgo call). The ratios say
// what that costs.

package hreg

import (
	"runtime/cgo"
	"testing"
)

var benchValue = []byte("0123456789abcdef") // 16 bytes

// benchGoroutines are the sub-benchmarks' goroutine counts, as multiples
// of GOMAXPROCS (0: one goroutine).
var benchGoroutines = []struct {
	name     string
	parallel int
}{{"goroutines=1", 0}, {"goroutines=GOMAXPROCS", 1}, {"goroutines=8xGOMAXPROCS", 8}}

func BenchmarkHandles(b *testing.B) {
	d := startDaemon(b)
	c := d.client(b)
	kept, err := c.Insert(benchValue, 0)
	if err != nil {
		b.Fatal(err)
	}
	keptCgo := cgo.NewHandle(benchValue)
	defer keptCgo.Delete()

	cases := []struct {
		name string
		op   func(buf []byte) error
	}{
		{"value/cgo.Handle", func([]byte) error {
			_ = keptCgo.Value().([]byte)
			return nil
		}},
		{"value/hreg-get", func([]byte) error {
			_, err := c.Get(kept)
			return err
		}},
		{"value/hreg-getinto", func(buf []byte) error {
			_, err := c.GetInto(kept, buf)
			return err
		}},
		{"life/cgo.Handle", func([]byte) error {
			h := cgo.NewHandle(benchValue)
			_ = h.Value().([]byte)
			h.Delete()
			return nil
		}},
		{"life/hreg", func([]byte) error {
			h, err := c.Insert(benchValue, 0)
			if err == nil {
				_, err = c.Get(h)
			}
			if err == nil {
				err = c.Release(h)
			}
			return err
		}},
	}
	for _, bc := range cases {
		bc := bc
		for _, g := range benchGoroutines {
			g := g
			b.Run(bc.name+"/"+g.name, func(b *testing.B) {
				if g.parallel == 0 {
					buf := make([]byte, 64)
					for i := 0; i < b.N; i++ {
						if err := bc.op(buf); err != nil {
							b.Fatal(err)
						}
					}
					return
				}
				b.SetParallelism(g.parallel)
				b.RunParallel(func(pb *testing.PB) {
					buf := make([]byte, 64)
					for pb.Next() {
						if err := bc.op(buf); err != nil {
							b.Error(err)
							return
						}
					}
				})
			})
		}
	}
}
