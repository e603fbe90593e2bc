// The Go client against a real hregd: every call, its errors (sentinels for
// errors.Is, messages with the operation and handle), batches, Close, and
// many goroutines sharing one client.

package hreg

import (
	"bytes"
	"errors"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
)

func TestEveryCall(t *testing.T) {
	d := startDaemon(t)
	c := d.client(t)
	h, err := c.Insert([]byte("hello"), Shared)
	if err != nil || h == 0 {
		t.Fatalf("Insert: %v %v", h, err)
	}
	if v, err := c.Get(h); err != nil || string(v) != "hello" {
		t.Fatalf("Get: %q %v", v, err)
	}
	buf := make([]byte, 16)
	if n, err := c.GetInto(h, buf); err != nil || string(buf[:n]) != "hello" {
		t.Fatalf("GetInto: %d %v", n, err)
	}
	if err := c.Replace(h, []byte("replaced")); err != nil {
		t.Fatal(err)
	}
	if err := c.Retain(h); err != nil {
		t.Fatal(err)
	}
	if err := c.Release(h); err != nil {
		t.Fatal(err)
	}
	s, err := c.Stats()
	if err != nil || s.Objects != 1 || s.ValueBytes != 8 || s.Sessions < 1 || s.Ops == 0 {
		t.Fatalf("Stats: %+v %v", s, err)
	}
	if err := c.Release(h); err != nil {
		t.Fatal(err)
	}
	_, err = c.Get(h)
	if !errors.Is(err, ErrStale) {
		t.Fatalf("Get after the last Release: %v", err)
	}
	if msg := err.Error(); !strings.Contains(msg, "get") || !strings.Contains(msg, fmt.Sprint(uint64(h))) {
		t.Fatalf("the message names neither the op nor the handle: %q", msg)
	}
	var e *Error
	if !errors.As(err, &e) || e.Status != 2 || e.Handle != h || e.Op != "get" {
		t.Fatalf("not an *Error with status 2: %#v", err)
	}
}

func TestValuesOfEverySize(t *testing.T) {
	d := startDaemon(t, "--max-value-size", "100000")
	c := d.client(t)
	for _, n := range []int{0, 1, 511, 512, 513, 4096, 4097, 100000} {
		v := bytes.Repeat([]byte{byte(n)}, n)
		h, err := c.Insert(v, 0)
		if err != nil {
			t.Fatalf("Insert %d bytes: %v", n, err)
		}
		got, err := c.Get(h)
		if err != nil || !bytes.Equal(got, v) || got == nil {
			t.Fatalf("Get %d bytes: %d bytes, %v", n, len(got), err)
		}
		ops := []Op{{Kind: OpGet, Handle: h}, {Kind: OpGet, Handle: h, Value: make([]byte, 0, n)}}
		if err := c.Submit(ops); err != nil || !bytes.Equal(ops[0].Value, v) || !bytes.Equal(ops[1].Value, v) {
			t.Fatalf("Submit GET %d bytes: %v", n, err)
		}
		if err := c.Remove(h); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := c.Insert(make([]byte, 100001), 0); !errors.Is(err, ErrTooBig) {
		t.Fatalf("too big: %v", err)
	}
}

func TestGetIntoSaysWhatItNeeds(t *testing.T) {
	d := startDaemon(t)
	c := d.client(t)
	h, _ := c.Insert([]byte("12345678"), 0)
	n, err := c.GetInto(h, make([]byte, 3))
	if !errors.Is(err, ErrBuffer) || n != 8 || !strings.Contains(err.Error(), "8 bytes needed") {
		t.Fatalf("GetInto a short buffer: %d %v", n, err)
	}
	if n, err := c.GetInto(h, nil); !errors.Is(err, ErrBuffer) || n != 8 {
		t.Fatalf("size probe: %d %v", n, err)
	}
	empty, _ := c.Insert(nil, 0)
	if n, err := c.GetInto(empty, nil); err != nil || n != 0 {
		t.Fatalf("probe of an empty value: %d %v", n, err)
	}
	if v, err := c.Get(empty); err != nil || v == nil || len(v) != 0 {
		t.Fatalf("Get of an empty value: %v %v", v, err)
	}
}

func TestErrorsAreSentinels(t *testing.T) {
	d := startDaemon(t, "--max-objects", "1")
	c := d.client(t)
	for name, check := range map[string]struct {
		err  error
		want error
	}{
		"handle 0":      {c.Retain(0), ErrInvalid},
		"unknown flags": {func() error { _, err := c.Insert(nil, 0x80); return err }(), ErrInvalid},
		"made up":       {c.Remove(123456), ErrStale},
	} {
		if !errors.Is(check.err, check.want) {
			t.Errorf("%s: %v, want %v", name, check.err, check.want)
		}
	}
	h, _ := c.Insert([]byte("x"), Detached)
	if err := c.Release(h); !errors.Is(err, ErrNotHeld) {
		t.Errorf("Release of a DETACHED object: %v", err)
	}
	if _, err := c.Insert([]byte("y"), 0); !errors.Is(err, ErrQuota) {
		t.Errorf("past --max-objects: %v", err)
	}
	if _, err := Connect(d.dir + "/nothing.sock"); !errors.Is(err, ErrConnect) || !strings.Contains(err.Error(), "nothing.sock") {
		t.Errorf("Connect to nothing: %v", err)
	}
	sentinels := []error{ErrInvalid, ErrStale, ErrDenied, ErrTooBig, ErrBuffer, ErrQuota,
		ErrNotHeld, ErrConnect, ErrDisconnected, ErrVersion, ErrProtocol, ErrIO}
	for i, s := range sentinels {
		if !errors.Is(&Error{Op: "x", Status: i + 1}, s) {
			t.Errorf("status %d does not wrap %v", i+1, s)
		}
	}
}

// A session past the daemon's cap is refused with QUOTA. (Which limit
// refused is not told to Go: libhreg's C API returns statuses only.)
func TestARefusedSessionIsErrQuota(t *testing.T) {
	d := startDaemon(t, "--max-sessions", "1")
	var first *Client
	// The readiness probe's session may still be closing: retry a little.
	waitUntil(t, "the one session to attach", func() bool {
		c, err := Connect(d.socket)
		first = c
		return err == nil
	})
	defer first.Close()
	_, err := Connect(d.socket)
	var e *Error
	if !errors.Is(err, ErrQuota) || !errors.As(err, &e) || e.Op != "connect" {
		t.Fatalf("a second session past --max-sessions 1: %v", err)
	}
	if !strings.Contains(err.Error(), "max_sessions") {
		t.Fatalf("the error does not name the limit: %v", err)
	}
}

func TestQuotaNamesTheLimit(t *testing.T) {
	d := startDaemon(t, "--max-objects", "2")
	c := d.client(t)
	for i := 0; i < 2; i++ {
		if _, err := c.Insert([]byte("x"), 0); err != nil {
			t.Fatal(err)
		}
	}
	_, err := c.Insert([]byte("one too many"), 0)
	if !errors.Is(err, ErrQuota) || !strings.Contains(err.Error(), "max_objects") {
		t.Fatalf("insert past --max-objects 2: %v", err)
	}
}

func TestSubmitGivesEachOpItsResult(t *testing.T) {
	d := startDaemon(t)
	c := d.client(t)
	h, _ := c.Insert([]byte("one"), 0)
	ops := []Op{
		{Kind: OpInsert, Value: []byte("x"), Flags: Shared},
		{Kind: OpGet, Handle: h},
		{Kind: OpReplace, Handle: h, Value: []byte("two")},
		{Kind: OpGet, Handle: h},
		{Kind: OpGet, Handle: 0},
		{Kind: OpRetain, Handle: h, Flags: Shared},
		{Kind: OpRelease, Handle: 777},
		{Kind: OpKind(42), Handle: h},
		{Kind: OpRemove, Handle: h},
	}
	err := c.Submit(ops)
	if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "submit op 4") {
		t.Fatalf("Submit: %v", err)
	}
	if ops[0].Err != nil || ops[0].Handle == 0 {
		t.Fatalf("insert: %+v", ops[0])
	}
	if string(ops[1].Value) != "one" || ops[2].Err != nil || string(ops[3].Value) != "two" {
		t.Fatalf("get/replace/get: %+v", ops[1:4])
	}
	for i, want := range map[int]error{4: ErrInvalid, 5: ErrInvalid, 6: ErrStale, 7: ErrInvalid} {
		if !errors.Is(ops[i].Err, want) {
			t.Errorf("op %d: %v, want %v", i, ops[i].Err, want)
		}
	}
	if ops[8].Err != nil {
		t.Fatalf("remove: %v", ops[8].Err)
	}
	if err := c.Submit(nil); err != nil {
		t.Fatalf("an empty batch: %v", err)
	}
}

func TestSubmitRereadsLongValuesOnlyWhenItMay(t *testing.T) {
	d := startDaemon(t)
	c := d.client(t)
	long := bytes.Repeat([]byte("L"), 10000)
	h, _ := c.Insert(long, 0)
	ops := []Op{{Kind: OpGet, Handle: h}, {Kind: OpGet, Handle: h}, {Kind: OpReplace, Handle: h, Value: []byte("s")}}
	err := c.Submit(ops[:2])
	if err != nil || !bytes.Equal(ops[0].Value, long) || !bytes.Equal(ops[1].Value, long) {
		t.Fatalf("long values in a batch: %v", err)
	}
	ops[0].Value, ops[1].Value = nil, nil
	err = c.Submit(ops)
	if !errors.Is(err, ErrBuffer) || !errors.Is(ops[1].Err, ErrBuffer) || ops[2].Err != nil {
		t.Fatalf("a GET a later op changes must not be read again: %v", err)
	}
	if v, _ := c.Get(h); string(v) != "s" {
		t.Fatalf("the replace did not run: %q", v)
	}
}

func TestClose(t *testing.T) {
	d := startDaemon(t)
	c, err := Connect(d.socket)
	if err != nil {
		t.Fatal(err)
	}
	h, _ := c.Insert([]byte("held"), 0)
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if err := c.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	checks := []error{
		func() error { _, err := c.Get(h); return err }(),
		func() error { _, err := c.Insert(nil, 0); return err }(),
		c.Retain(h), c.Release(h), c.Remove(h), c.Replace(h, nil), c.Flush(),
		func() error { _, err := c.Stats(); return err }(),
		c.Submit([]Op{{Kind: OpGet, Handle: h}}),
	}
	for i, err := range checks {
		if !errors.Is(err, ErrDisconnected) {
			t.Errorf("call %d after Close: %v", i, err)
		}
	}
	other := d.client(t)
	waitUntil(t, "the closed session's reference to drop", func() bool {
		_, err := other.Get(h)
		return errors.Is(err, ErrStale)
	})
}

func TestDisconnectedWhenTheDaemonDies(t *testing.T) {
	d := startDaemon(t)
	c := d.client(t)
	h, _ := c.Insert([]byte("x"), 0)
	if err := c.Flush(); err != nil {
		t.Fatalf("Flush with the daemon there: %v", err)
	}
	_ = d.cmd.Process.Signal(syscall.SIGKILL)
	_ = d.cmd.Wait()
	waitUntil(t, "ErrDisconnected", func() bool {
		_, err := c.Get(h)
		return errors.Is(err, ErrDisconnected)
	})
	if err := c.Flush(); !errors.Is(err, ErrDisconnected) {
		t.Fatalf("Flush with the daemon gone: %v", err)
	}
}

func TestFlushMakesAReleaseVisible(t *testing.T) {
	d := startDaemon(t)
	c := d.client(t)
	other := d.client(t)
	h, err := c.Insert([]byte("short-lived"), Shared)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Flush(); err != nil {
		t.Fatal(err)
	}
	if v, err := other.Get(h); err != nil || string(v) != "short-lived" {
		t.Fatalf("after Insert+Flush another client gets %q, %v", v, err)
	}
	if err := c.Release(h); err != nil {
		t.Fatal(err)
	}
	if err := c.Flush(); err != nil {
		t.Fatal(err)
	}
	if _, err := other.Get(h); !errors.Is(err, ErrStale) {
		t.Fatalf("after Release+Flush another client's Get: %v, want ErrStale", err)
	}
}

// Release is posted, and Get reads slots in Go: a client's own release of
// its last reference must still be STALE for it at once (Go reads
// libhreg's filter of releases not applied yet), while the references it
// keeps and the objects of its other goroutines stay readable.
func TestAClientSeesItsOwnReleaseAtOnce(t *testing.T) {
	d := startDaemon(t)
	c := d.client(t)
	inGoroutines(t, 4, func(g int) error {
		for i := 0; i < 2500; i++ {
			v := []byte(fmt.Sprintf("%d:%d", g, i))
			h, err := c.Insert(v, Flags(i%2)*Shared)
			if err != nil {
				return fmt.Errorf("Insert: %v", err)
			}
			twice := i%3 == 0
			if twice {
				if err := c.Retain(h); err != nil {
					return fmt.Errorf("Retain: %v", err)
				}
			}
			if got, err := c.Get(h); err != nil || !bytes.Equal(got, v) {
				return fmt.Errorf("Get before Release: %q, %v; want %q", got, err, v)
			}
			if i%2 == 0 {
				// The insert applied: Go reads the live slot from here
				// on, until the release is applied too.
				if err := c.Flush(); err != nil {
					return fmt.Errorf("Flush: %v", err)
				}
			}
			if err := c.Release(h); err != nil {
				return fmt.Errorf("Release: %v", err)
			}
			if twice {
				// One reference left: still there.
				if got, err := c.Get(h); err != nil || !bytes.Equal(got, v) {
					return fmt.Errorf("Get with a reference left: %q, %v", got, err)
				}
				if err := c.Release(h); err != nil {
					return fmt.Errorf("second Release: %v", err)
				}
			}
			if got, err := c.Get(h); !errors.Is(err, ErrStale) {
				return fmt.Errorf("Get right after the last Release: %q, %v; want ErrStale", got, err)
			}
			if n, err := c.GetInto(h, make([]byte, 16)); !errors.Is(err, ErrStale) {
				return fmt.Errorf("GetInto right after the last Release: %d, %v; want ErrStale", n, err)
			}
			if err := c.Release(h); !errors.Is(err, ErrStale) && !errors.Is(err, ErrNotHeld) {
				return fmt.Errorf("Release once more: %v; want ErrStale or ErrNotHeld", err)
			}
		}
		return nil
	})
	if err := c.Flush(); err != nil {
		t.Fatal(err)
	}
	if s, _ := c.Stats(); s.Objects != 0 {
		t.Fatalf("%d objects left", s.Objects)
	}
}

func TestGoroutinesShareOneClient(t *testing.T) {
	d := startDaemon(t)
	c := d.client(t)
	inGoroutines(t, 16, func(g int) error {
		for i := 0; i < 200; i++ {
			v := []byte(fmt.Sprintf("%d:%d", g, i))
			h, err := c.Insert(v, 0)
			if err != nil {
				return err
			}
			if got, err := c.Get(h); err != nil || !bytes.Equal(got, v) {
				return fmt.Errorf("got %q, %v; want %q", got, err, v)
			}
			ops := []Op{{Kind: OpReplace, Handle: h, Value: append(v, '!')}, {Kind: OpGet, Handle: h}, {Kind: OpRelease, Handle: h}}
			if err := c.Submit(ops); err != nil {
				return err
			}
			if string(ops[1].Value) != string(v)+"!" {
				return fmt.Errorf("batch got %q", ops[1].Value)
			}
		}
		return nil
	})
	if s, _ := c.Stats(); s.Objects != 0 {
		t.Fatalf("%d objects left", s.Objects)
	}
}

// The gate in front of libhreg admits up to its limit at once, parks the
// rest, and lets every one through in the end.
func TestGateAdmitsUpToItsLimit(t *testing.T) {
	const limit, goroutines, rounds = 3, 24, 200
	g := newGate(limit)
	var inside, most, done atomic.Int32
	var wg sync.WaitGroup
	for k := 0; k < goroutines; k++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for r := 0; r < rounds; r++ {
				g.enter()
				now := inside.Add(1)
				for {
					seen := most.Load()
					if now <= seen || most.CompareAndSwap(seen, now) {
						break
					}
				}
				runtime.Gosched()
				inside.Add(-1)
				g.leave()
				done.Add(1)
			}
		}()
	}
	wg.Wait()
	if got := done.Load(); got != goroutines*rounds {
		t.Fatalf("%d calls got through, want %d", got, goroutines*rounds)
	}
	if m := most.Load(); m > limit || m < 2 {
		t.Fatalf("at most %d inside at once, want 2..%d", m, limit)
	}
	if n := g.inside.Load(); n != 0 {
		t.Fatalf("the gate still counts %d inside", n)
	}
}
