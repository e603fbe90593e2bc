// Package hreg is the Go client of hregd, the cross-process handle
// registry: a daemon owns objects (byte values) named by 64-bit handles,
// and processes in any language insert, read, replace, share and release
// them. It is cgo over libhreg (the C library, found through
// `pkg-config hreg`).
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
// Go memory handed to libhreg is only used for the length of the call and
// never holds Go pointers; Submit builds its op array and buffers in
// C-allocated memory, as cgo's pointer rules require.
package hreg

/*
#cgo pkg-config: hreg
#include <hreg.h>
#include <stdlib.h>
#include <string.h>

// The calls that may pass a limit, each with what libhreg said about a
// failure copied into why[0..cap) within the same C call (the text is the
// calling thread's, and a goroutine may move threads between two calls).
static void go_why(int status, char *why, size_t cap) {
	if (cap == 0) return;
	why[0] = 0;
	if (status != HREG_OK) {
		strncpy(why, hreg_last_error(), cap - 1);
		why[cap - 1] = 0;
	}
}
static int go_connect(const char *path, hreg_client **out, char *why, size_t cap) {
	int s = hreg_connect(path, out);
	go_why(s, why, cap);
	return s;
}
static int go_insert(hreg_client *c, const void *d, size_t n, uint32_t f, hreg_handle *h, char *why, size_t cap) {
	int s = hreg_insert(c, d, n, f, h);
	go_why(s, why, cap);
	return s;
}
static int go_replace(hreg_client *c, hreg_handle h, const void *d, size_t n, char *why, size_t cap) {
	int s = hreg_replace(c, h, d, n);
	go_why(s, why, cap);
	return s;
}
static int go_retain(hreg_client *c, hreg_handle h, char *why, size_t cap) {
	int s = hreg_retain(c, h);
	go_why(s, why, cap);
	return s;
}
*/
import "C"

import (
	"runtime"
	"sync"
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
	// mu guards c: calls hold it shared, Close exclusively, so the C client
	// is never freed under a call.
	mu sync.RWMutex
	c  *C.hreg_client
}

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
	var why reason
	if status := C.go_connect(path, &c, &why[0], C.size_t(len(why))); status != C.HREG_OK {
		err := statusError(status, "connect", 0).(*Error)
		err.Detail = why.String() // the paths tried, the limit, ...
		return nil, err
	}
	client := &Client{c: c}
	runtime.SetFinalizer(client, (*Client).Close)
	return client, nil
}

// Close ends the session: the daemon drops every reference it held
// (Detached objects stay). Calls after Close fail with ErrDisconnected;
// Close itself may be called again and does nothing.
func (c *Client) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.c != nil {
		C.hreg_disconnect(c.c)
		c.c = nil
	}
	return nil
}

// acquire gives the C client for one call; release with c.mu.RUnlock.
func (c *Client) acquire(op string, h Handle) (*C.hreg_client, error) {
	c.mu.RLock()
	if c.c == nil {
		c.mu.RUnlock()
		return nil, &Error{Op: op, Handle: h, Status: int(C.HREG_ERR_DISCONNECTED), Detail: "the client is closed"}
	}
	return c.c, nil
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
	cc, err := c.acquire("insert", 0)
	if err != nil {
		return 0, err
	}
	defer c.mu.RUnlock()
	var h C.hreg_handle
	var why reason
	status := C.go_insert(cc, bytesPtr(value), C.size_t(len(value)), C.uint32_t(flags), &h, &why[0], C.size_t(len(why)))
	if err := limitError(status, "insert", 0, &why); err != nil {
		return 0, err
	}
	return Handle(h), nil
}

// getScratch holds buffers Get reads small values into first.
var getScratch = sync.Pool{New: func() interface{} { return new([512]byte) }}

// Get returns a new slice with the value of h. Errors: ErrInvalid (h 0),
// ErrStale, ErrDenied, ErrDisconnected.
func (c *Client) Get(h Handle) ([]byte, error) {
	cc, err := c.acquire("get", h)
	if err != nil {
		return nil, err
	}
	defer c.mu.RUnlock()
	scratch := getScratch.Get().(*[512]byte)
	defer getScratch.Put(scratch)
	buf := scratch[:]
	for {
		var n C.size_t
		status := C.hreg_get(cc, C.hreg_handle(h), bytesPtr(buf), C.size_t(len(buf)), &n)
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
	cc, err := c.acquire("get", h)
	if err != nil {
		return 0, err
	}
	defer c.mu.RUnlock()
	var n C.size_t
	status := C.hreg_get(cc, C.hreg_handle(h), bytesPtr(buf), C.size_t(len(buf)), &n)
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
	defer c.mu.RUnlock()
	var why reason
	status := C.go_replace(cc, C.hreg_handle(h), bytesPtr(value), C.size_t(len(value)), &why[0], C.size_t(len(why)))
	return limitError(status, "replace", h, &why)
}

// Retain takes one more reference to h for this session (needs read
// access). Errors: ErrInvalid, ErrStale, ErrDenied, ErrQuota, ErrDisconnected.
func (c *Client) Retain(h Handle) error {
	cc, err := c.acquire("retain", h)
	if err != nil {
		return err
	}
	defer c.mu.RUnlock()
	var why reason
	status := C.go_retain(cc, C.hreg_handle(h), &why[0], C.size_t(len(why)))
	return limitError(status, "retain", h, &why)
}

// Release drops one of this session's references to h; the object dies
// with its last reference (unless Detached). Errors: ErrInvalid, ErrStale,
// ErrNotHeld, ErrDisconnected.
func (c *Client) Release(h Handle) error {
	return c.onHandle("release", h, func(cc *C.hreg_client) C.int { return C.hreg_release(cc, C.hreg_handle(h)) })
}

// Remove kills the object now, whoever references it (its creator's uid,
// or root). Errors: ErrInvalid, ErrStale, ErrDenied, ErrDisconnected.
func (c *Client) Remove(h Handle) error {
	return c.onHandle("remove", h, func(cc *C.hreg_client) C.int { return C.hreg_remove(cc, C.hreg_handle(h)) })
}

// onHandle runs one call that takes only a handle and returns a status.
func (c *Client) onHandle(op string, h Handle, call func(*C.hreg_client) C.int) error {
	cc, err := c.acquire(op, h)
	if err != nil {
		return err
	}
	defer c.mu.RUnlock()
	return statusError(call(cc), op, h)
}

// Flush waits until every write this client posted (Insert, Release,
// Retain) has been applied by the daemon, so that other processes see their
// effects. It returns the first late failure of a posted write since the
// last Flush (e.g. ErrStale for a Retain of an object removed meanwhile),
// ErrDisconnected when the daemon is gone, else nil.
func (c *Client) Flush() error {
	cc, err := c.acquire("flush", 0)
	if err != nil {
		return err
	}
	defer c.mu.RUnlock()
	return statusError(C.hreg_flush(cc), "flush", 0)
}

// Stats returns the registry's figures.
func (c *Client) Stats() (Stats, error) {
	cc, err := c.acquire("stats", 0)
	if err != nil {
		return Stats{}, err
	}
	defer c.mu.RUnlock()
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
