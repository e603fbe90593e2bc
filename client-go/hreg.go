// Package hreg is the Go client of hregd, the cross-process handle
// registry: a daemon owns objects (byte values) named by 64-bit handles,
// and processes in any language insert, read, replace, share and release
// them. It is cgo over libhreg (the C library, found through
// `pkg-config hreg`). The module is hreg.dev/go/hreg (see the README's Go
// section for using it from another module).
//
// This is the origin's own problem solved out of process: cgo forbids C
// from keeping Go pointers, so Go hands C an integer. With hreg the integer
// names an object in the daemon, which any C program (or Python, or Rust)
// on the host resolves by itself:
//
//	c, err := hreg.Connect("")                 // $HREG_SOCKET or the default
//	h, err := c.Insert([]byte("hello"), hreg.Shared)
//	v, err := c.Get(h)                          // []byte("hello")
//	err = c.Release(h)                          // the last reference: it dies
//	c.Close()
//
// A *Client is safe for concurrent use by many goroutines. Errors wrap one
// sentinel per status (ErrStale, ErrDenied, ...) for errors.Is, and carry
// the operation and handle in their message (see Error).
//
// # Reads without cgo
//
// Get, GetInto and the OpGets of Submit resolve a handle in Go when they
// can: a seqlock read, with sync/atomic loads, of the handle's slot in the
// registry's read-only shared memory that libhreg has mapped into this
// process. No cgo call, no system call, no daemon. A read that cannot be
// done so (a value longer than 4 KiB, a part of the registry libhreg has
// not mapped yet, another user's domain, a daemon that stopped or looks
// gone) is a cgo call, with the same results. The mappings stay mapped
// until the Client is garbage collected, so a Get racing Close is safe.
//
// # Goroutines and rings
//
// Writes go to the daemon through shared-memory rings. libhreg gives each
// OS thread its own ring, but Go runs goroutines on whatever thread is
// free and starts threads for blocking calls, so a Client puts libhreg in
// ring pool mode instead: all calls share at most GOMAXPROCS rings (as
// GOMAXPROCS was at Connect, at most 64), opened as they are first needed;
// a call that finds every ring busy waits for one. The number of rings a Go
// program opens is therefore bounded by its Clients' pools, whatever the
// number of goroutines or threads. And at most maxCallsInC goroutines are in
// libhreg at once, per Client; more wait parked by Go's scheduler, so that
// a stalled daemon cannot make each of thousands of goroutines hold an OS
// thread.
//
// # Writes without waiting
//
// Insert (of a value of up to 32 bytes), Retain and Release are posted
// when the daemon allows it, as from C: one cgo call that queues the write
// on a ring and returns without waiting for the daemon. This client sees
// its own writes at once (a Get right after its Insert is the value, right
// after the Release of its last reference ErrStale); other processes see
// an Insert at once and a Release once the daemon applied it, at the
// latest when Flush returns.
//
// Go memory handed to libhreg is only used for the length of the call and
// never holds Go pointers; Submit builds its op array and buffers in
// C-allocated memory, as cgo's pointer rules require.
package hreg

/*
#cgo pkg-config: hreg
#include <hreg.h>
#include <stdlib.h>
#include <string.h>

// A call's status, its handle (insert), and for QUOTA, TOO_BIG and CONNECT
// what libhreg said (the limit, the size, the paths tried), copied within the same C call (the text is the calling
// thread's, and a goroutine may move threads between two calls) into
// malloc'd memory the caller frees; NULL otherwise, so that a call that
// succeeds allocates nothing.
typedef struct { hreg_handle handle; int status; char *why; } go_result;
static go_result go_done(int status, hreg_handle h) {
	go_result r = { h, status, NULL };
	if (status == HREG_ERR_QUOTA || status == HREG_ERR_TOO_BIG || status == HREG_ERR_CONNECT)
		r.why = strdup(hreg_last_error());
	return r;
}
static go_result go_connect(const char *path, hreg_client **out) {
	return go_done(hreg_connect(path, out), 0);
}
static go_result go_replace(hreg_client *c, hreg_handle h, const void *d, size_t n) {
	return go_done(hreg_replace(c, h, d, n), 0);
}

// The calls of a handle's life and of a get take the client as an
// integer (Client.raw): cgo checks a pointer argument on every call, and
// boxes a pointer to an incomplete type such as hreg_client into a new
// allocation to do so (one per call; a fifth of a Release's time in Go).
static go_result go_insert(uintptr_t c, const void *d, size_t n, uint32_t f) {
	hreg_handle h = 0;
	int s = hreg_insert((hreg_client *)c, d, n, f, &h);
	return go_done(s, h);
}
static go_result go_retain(uintptr_t c, hreg_handle h) {
	return go_done(hreg_retain((hreg_client *)c, h), 0);
}
static int go_release(uintptr_t c, hreg_handle h) {
	return hreg_release((hreg_client *)c, h);
}
static int go_get(uintptr_t c, hreg_handle h, void *buf, size_t cap, size_t *len) {
	return hreg_get((hreg_client *)c, h, buf, cap, len);
}
*/
import "C"

import (
	"runtime"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"
)

// Handle names an object in the registry. 0 is never valid.
type Handle uint64

// Flags of Insert.
type Flags uint32

const (
	// Shared lets other users read the object.
	Shared Flags = C.HREG_SHARED
	// Detached makes the object live until Remove, not tied to a session;
	// Insert then gives the session no reference.
	Detached Flags = C.HREG_DETACHED
)

// OpKind is the operation of an Op in a batch.
type OpKind uint32

const (
	OpInsert  OpKind = C.HREG_OP_INSERT
	OpGet     OpKind = C.HREG_OP_GET
	OpReplace OpKind = C.HREG_OP_REPLACE
	OpRetain  OpKind = C.HREG_OP_RETAIN
	OpRelease OpKind = C.HREG_OP_RELEASE
	OpRemove  OpKind = C.HREG_OP_REMOVE
)

var opNames = map[OpKind]string{
	OpInsert: "insert", OpGet: "get", OpReplace: "replace",
	OpRetain: "retain", OpRelease: "release", OpRemove: "remove",
}

func (k OpKind) String() string {
	if name, ok := opNames[k]; ok {
		return name
	}
	return "unknown op"
}

// Op is one operation of a batch (Submit). Each op carries its own result.
type Op struct {
	Kind   OpKind // OpInsert, OpGet, OpReplace, OpRetain, OpRelease, OpRemove
	Flags  Flags  // OpInsert only; must be 0 on the others
	Handle Handle // the target; for OpInsert, set to the new handle
	Value  []byte // OpInsert/OpReplace: the value in; OpGet: set to a new slice with the value
	Err    error  // this op's error, nil on success
}

// Stats are the registry's figures.
type Stats struct {
	Objects    uint64 // live objects
	ValueBytes uint64 // bytes of live values
	Sessions   uint64 // attached sessions
	Ops        uint64 // data-path requests served since the daemon started
}

// Client is a session with hregd, safe for concurrent use.
type Client struct {
	// c is the C client, freed by Close once no cgo call is inside the
	// gate (calls): a call enters the gate, then looks at closed, so Close,
	// which sets closed and then waits for the gate to empty, never frees
	// it under a call.
	c *C.hreg_client
	// raw is c as an integer, for the calls that take it so (see go_insert).
	raw C.uintptr_t
	// closed is set by Close before anything is freed; reads in Go look at
	// it too.
	closed atomic.Bool
	// closing makes a second Close wait for the first.
	closing sync.Mutex
	// local reads slots in Go; nil when it cannot (then every get is a
	// cgo call).
	local *localReads
	// away is set while the daemon looks gone (a daemon killed says
	// nothing in shared memory): reads then go through libhreg, which
	// answers DISCONNECTED, or resumes the session. Reads in Go keep it
	// fresh through a look at the control socket at most every
	// aliveEvery while they run (watching).
	away     atomic.Bool
	watching atomic.Bool
	// calls admits up to maxCallsInC cgo calls, so that goroutines beyond
	// wait here, parked by Go's scheduler, rather than each blocking an OS
	// thread in C; and counts the calls Close waits for.
	calls gate
}

// gate admits up to a limit of goroutines at once and parks the others
// (a counting semaphore that costs one atomic add on each side while under
// its limit; a channel of tokens costs a lock each side, a third of a
// posted write's time).
type gate struct {
	// inside counts the goroutines admitted plus those waiting.
	inside atomic.Int32
	limit  int32
	// wake passes one admission from a leaving goroutine to a waiting one.
	wake chan struct{}
}

func newGate(limit int) gate {
	return gate{limit: int32(limit), wake: make(chan struct{}, limit)}
}

func (g *gate) enter() {
	if g.inside.Add(1) > g.limit {
		<-g.wake
	}
}

func (g *gate) leave() {
	// More inside than the limit before this one left: one of them waits
	// (or is about to) for this admission.
	if g.inside.Add(-1) >= g.limit {
		g.wake <- struct{}{}
	}
}

// maxCallsInC bounds the goroutines in libhreg at once, per Client. Not
// the ring pool's size: a write is posted in well under a microsecond, and
// parking goroutines at as many as there are rings made a life at 8×
// GOMAXPROCS goroutines take twice as long (2.1 µs against 1.2–1.3 µs at
// GOMAXPROCS=2, BenchmarkHandles); the calls beyond the pool wait for a
// ring's lock in C instead, briefly.
const maxCallsInC = 256

// aliveEvery is how often, at most, reads in Go have libhreg look whether
// the daemon is still there (a poll of the control socket).
const aliveEvery = 10 * time.Millisecond

// Connect attaches to hregd at socket, or, for "", at $HREG_SOCKET if set,
// else $XDG_RUNTIME_DIR/hreg.sock, then /run/hreg/hreg.sock (the first that
// accepts). Errors: ErrConnect, ErrVersion, ErrQuota (the daemon refuses
// more sessions), ErrProtocol, ErrIO.
func Connect(socket string) (*Client, error) {
	var path *C.char
	if socket != "" {
		path = C.CString(socket)
		defer C.free(unsafe.Pointer(path))
	}
	var c *C.hreg_client
	if r := C.go_connect(path, &c); r.status != C.HREG_OK {
		return nil, resultError(r, "connect", 0) // the paths tried, the limit, ...
	}
	C.hreg_bind_ring_pool(c, C.size_t(ringPool()))
	client := &Client{
		c:     c,
		raw:   C.uintptr_t(uintptr(unsafe.Pointer(c))),
		local: openLocalReads(c),
		calls: newGate(maxCallsInC),
	}
	runtime.SetFinalizer(client, (*Client).Close)
	return client, nil
}

// ringPool is how many rings a Client's calls share: GOMAXPROCS, within
// libhreg's bounds.
func ringPool() int {
	n := runtime.GOMAXPROCS(0)
	if n > 64 {
		n = 64
	}
	return n
}

// Close ends the session: the daemon drops every reference it held
// (Detached objects stay). Calls after Close fail with ErrDisconnected;
// Close itself may be called again and does nothing.
func (c *Client) Close() error {
	c.closing.Lock()
	defer c.closing.Unlock()
	c.closed.Store(true)
	if c.c == nil {
		return nil
	}
	// The calls that entered before closed was set end first; those after
	// see it and leave.
	for c.calls.inside.Load() != 0 {
		time.Sleep(20 * time.Microsecond)
	}
	C.hreg_disconnect(c.c)
	c.c = nil
	return nil
}

// closedError is what every call after Close returns.
func closedError(op string, h Handle) error {
	return &Error{Op: op, Handle: h, Status: int(C.HREG_ERR_DISCONNECTED), Detail: "the client is closed"}
}

// acquire gives the C client for one cgo call, once the gate admits it;
// end the call with c.done().
func (c *Client) acquire(op string, h Handle) (*C.hreg_client, error) {
	c.calls.enter()
	if c.closed.Load() {
		c.done()
		return nil, closedError(op, h)
	}
	return c.c, nil
}

// done ends a call that acquire began.
func (c *Client) done() {
	c.calls.leave()
}

// called notes what a cgo call's status says about the daemon.
func (c *Client) called(status C.int) {
	if status == C.HREG_ERR_DISCONNECTED {
		c.away.Store(true)
	}
}

// reader is the Go reader when a read may be done in Go now, else nil.
func (c *Client) reader() *localReads {
	if c.local == nil {
		return nil
	}
	if !c.watching.Load() && c.watching.CompareAndSwap(false, true) {
		time.AfterFunc(aliveEvery, c.lookAlive)
	}
	if c.away.Load() {
		return nil
	}
	return c.local
}

// lookAlive has libhreg look whether the daemon is still there.
func (c *Client) lookAlive() {
	if cc, err := c.acquire("alive", 0); err == nil {
		c.away.Store(C.hreg_bind_alive(cc) != C.HREG_OK)
		c.done()
	}
	c.watching.Store(false)
}

// bytesPtr is the address of a Go slice's bytes for the length of a call,
// nil for an empty one.
func bytesPtr(b []byte) unsafe.Pointer {
	if len(b) == 0 {
		return nil
	}
	return unsafe.Pointer(&b[0])
}

// Insert creates an object holding a copy of value and returns its handle.
// flags: 0, Shared, Detached. Without Detached the session holds one
// reference. Errors: ErrInvalid (unknown flags), ErrTooBig, ErrQuota,
// ErrDisconnected.
func (c *Client) Insert(value []byte, flags Flags) (Handle, error) {
	if _, err := c.acquire("insert", 0); err != nil {
		return 0, err
	}
	r := C.go_insert(c.raw, bytesPtr(value), C.size_t(len(value)), C.uint32_t(flags))
	c.done()
	if err := c.result(r, "insert", 0); err != nil {
		return 0, err
	}
	h := Handle(r.handle)
	if c.local != nil {
		c.local.posted.keep(h, value)
	}
	return h, nil
}

// getScratch holds buffers Get reads small values into first (cgo path).
var getScratch = sync.Pool{New: func() interface{} { return new([512]byte) }}

// Get returns a new slice with the value of h. Errors: ErrInvalid (h 0),
// ErrStale, ErrDenied, ErrDisconnected.
//
// A value of up to 32 bytes read in Go comes in a slice carved from a
// 256-byte block that other Gets of this Client share (its capacity is its
// length, so an append copies it): a slice kept keeps its block alive.
// GetInto reads into memory the caller owns.
func (c *Client) Get(h Handle) ([]byte, error) {
	if c.closed.Load() {
		return nil, closedError("get", h)
	}
	if lr := c.reader(); lr != nil && h != 0 {
		switch value, _, got := lr.read(h, nil, true); got {
		case readValue:
			if value == nil {
				value = []byte{}
			}
			return value, nil
		case readStale:
			return nil, &Error{Op: "get", Handle: h, Status: int(C.HREG_ERR_STALE)}
		}
	}
	return c.getCgo(h)
}

// getCgo is Get through libhreg.
func (c *Client) getCgo(h Handle) ([]byte, error) {
	if _, err := c.acquire("get", h); err != nil {
		return nil, err
	}
	defer c.done()
	scratch := getScratch.Get().(*[512]byte)
	defer getScratch.Put(scratch)
	buf := scratch[:]
	for {
		var n C.size_t
		status := C.go_get(c.raw, C.hreg_handle(h), bytesPtr(buf), C.size_t(len(buf)), &n)
		c.called(status)
		switch status {
		case C.HREG_OK:
			if len(buf) > 0 && &buf[0] == &scratch[0] {
				value := make([]byte, int(n))
				copy(value, buf[:n])
				return value, nil
			}
			return buf[:n:n], nil
		case C.HREG_ERR_BUFFER:
			// Larger than the scratch buffer: read it into its own slice
			// (again if it grew meanwhile).
			buf = make([]byte, int(n))
		default:
			return nil, statusError(status, "get", h)
		}
	}
}

// GetInto copies the value of h into buf and returns its length. When buf
// is too short the error wraps ErrBuffer and the int is the length needed
// (an empty buf probes the size). Errors: ErrInvalid, ErrStale, ErrDenied,
// ErrBuffer, ErrDisconnected.
func (c *Client) GetInto(h Handle, buf []byte) (int, error) {
	if c.closed.Load() {
		return 0, closedError("get", h)
	}
	if lr := c.reader(); lr != nil && h != 0 {
		switch _, n, got := lr.read(h, buf, false); got {
		case readValue:
			return n, nil
		case readBuffer:
			return n, &Error{Op: "get", Handle: h, Status: int(C.HREG_ERR_BUFFER), Needed: n}
		case readStale:
			return 0, &Error{Op: "get", Handle: h, Status: int(C.HREG_ERR_STALE)}
		}
	}
	if _, err := c.acquire("get", h); err != nil {
		return 0, err
	}
	defer c.done()
	var n C.size_t
	status := C.go_get(c.raw, C.hreg_handle(h), bytesPtr(buf), C.size_t(len(buf)), &n)
	c.called(status)
	switch status {
	case C.HREG_OK:
		return int(n), nil
	case C.HREG_ERR_BUFFER:
		return int(n), &Error{Op: "get", Handle: h, Status: int(status), Needed: int(n)}
	default:
		return 0, statusError(status, "get", h)
	}
}

// Replace replaces the value of h with a copy of value; readers see the old
// value or the new one, whole. Errors: ErrInvalid, ErrTooBig, ErrStale,
// ErrDenied (not the owner's uid), ErrQuota, ErrDisconnected.
func (c *Client) Replace(h Handle, value []byte) error {
	cc, err := c.acquire("replace", h)
	if err != nil {
		return err
	}
	r := C.go_replace(cc, C.hreg_handle(h), bytesPtr(value), C.size_t(len(value)))
	c.done()
	return c.result(r, "replace", h)
}

// Retain takes one more reference to h for this session (needs read
// access). Errors: ErrInvalid, ErrStale, ErrDenied, ErrQuota, ErrDisconnected.
func (c *Client) Retain(h Handle) error {
	if _, err := c.acquire("retain", h); err != nil {
		return err
	}
	r := C.go_retain(c.raw, C.hreg_handle(h))
	c.done()
	return c.result(r, "retain", h)
}

// Release drops one of this session's references to h; the object dies
// with its last reference (unless Detached). Errors: ErrInvalid, ErrStale,
// ErrNotHeld, ErrDisconnected.
//
// Like Insert and Retain, Release is posted when the daemon allows it: it
// is answered from what this client knows (its own count of its
// references, a read of the slot) and returns without waiting for the
// daemon. This client's next Get of h is ErrStale at once when the
// reference was its last; other processes may still read the object until
// the daemon applies the release, which is before this client's next
// write and before its Flush returns.
func (c *Client) Release(h Handle) error {
	if _, err := c.acquire("release", h); err != nil {
		return err
	}
	status := C.go_release(c.raw, C.hreg_handle(h))
	c.done()
	c.called(status)
	return statusError(status, "release", h)
}

// Remove kills the object now, whoever references it (its creator's uid,
// or root). Errors: ErrInvalid, ErrStale, ErrDenied, ErrDisconnected.
func (c *Client) Remove(h Handle) error {
	cc, err := c.acquire("remove", h)
	if err != nil {
		return err
	}
	status := C.hreg_remove(cc, C.hreg_handle(h))
	c.done()
	c.called(status)
	return statusError(status, "remove", h)
}

// result is the error of a call that may pass a limit (nil for OK), with
// what libhreg said about it (see resultError).
func (c *Client) result(r C.go_result, op string, h Handle) error {
	c.called(r.status)
	return resultError(r, op, h)
}

// Flush waits until every write this client posted (Insert, Retain,
// Release) has been applied by the daemon, so that other processes see
// their effects. It returns the first late failure of a posted write since
// the last Flush (e.g. ErrStale for a Retain of an object removed
// meanwhile), ErrDisconnected when the daemon is gone, else nil.
func (c *Client) Flush() error {
	cc, err := c.acquire("flush", 0)
	if err != nil {
		return err
	}
	status := C.hreg_flush(cc)
	c.done()
	c.called(status)
	return statusError(status, "flush", 0)
}

// Stats returns the registry's figures.
func (c *Client) Stats() (Stats, error) {
	cc, err := c.acquire("stats", 0)
	if err != nil {
		return Stats{}, err
	}
	defer c.done()
	var s C.hreg_stats
	if err := statusError(C.hreg_stats_get(cc, &s), "stats", 0); err != nil {
		return Stats{}, err
	}
	return Stats{
		Objects:    uint64(s.objects),
		ValueBytes: uint64(s.value_bytes),
		Sessions:   uint64(s.sessions),
		Ops:        uint64(s.ops),
	}, nil
}

// resultError is statusError for a call that may pass a limit: the Detail
// is what libhreg said for ErrQuota (the limit), ErrTooBig (the size and
// the limit) and ErrConnect (the paths and why), and the text libhreg
// copied is freed.
func resultError(r C.go_result, op string, h Handle) error {
	if r.why != nil {
		defer C.free(unsafe.Pointer(r.why))
	}
	err := statusError(r.status, op, h)
	if r.why != nil {
		err.(*Error).Detail = C.GoString(r.why)
	}
	return err
}
