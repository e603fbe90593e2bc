// hreg side by side with runtime/cgo.Handle, the in-process answer to the
// same cgo rule: New+Value+Delete (hreg: Insert+Get+Release of a 16-byte
// value) and Value alone (hreg: Get), on 1 goroutine and on GOMAXPROCS
// goroutines (b.RunParallel). Run:
//
//	go test -run '^$' -bench Handles -benchtime 2s
//
// hreg crosses to another process and back on every call; cgo.Handle stays
// in this one. The ratios say what that costs.

package hreg

import (
	"runtime/cgo"
	"testing"
)

var benchValue = []byte("0123456789abcdef") // 16 bytes

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
		op   func() error
	}{
		{"cgo.Handle/new-value-delete", func() error {
			h := cgo.NewHandle(benchValue)
			_ = h.Value().([]byte)
			h.Delete()
			return nil
		}},
		{"cgo.Handle/value", func() error {
			_ = keptCgo.Value().([]byte)
			return nil
		}},
		{"hreg/insert-get-release", func() error {
			h, err := c.Insert(benchValue, 0)
			if err == nil {
				_, err = c.Get(h)
			}
			if err == nil {
				err = c.Release(h)
			}
			return err
		}},
		{"hreg/get", func() error {
			_, err := c.Get(kept)
			return err
		}},
	}
	for _, bc := range cases {
		bc := bc
		b.Run(bc.name+"/1", func(b *testing.B) {
			for i := 0; i < b.N; i++ {
				if err := bc.op(); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(bc.name+"/parallel", func(b *testing.B) {
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if err := bc.op(); err != nil {
						b.Error(err)
						return
					}
				}
			})
		})
	}
}
