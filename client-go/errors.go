// Errors of the hreg Go client: one sentinel per C status, for errors.Is,
// and *Error, which wraps a sentinel with the operation and the handle.

package hreg

/*
#include <hreg.h>
*/
import "C"

import (
	"errors"
	"fmt"
)

// The sentinel errors, one per status of the C API. Every error this
// package returns wraps exactly one of them: test with errors.Is.
var (
	ErrInvalid      = errors.New("hreg: invalid argument")
	ErrStale        = errors.New("hreg: stale handle: the object is gone")
	ErrDenied       = errors.New("hreg: access denied")
	ErrTooBig       = errors.New("hreg: value larger than the daemon's maximum")
	ErrBuffer       = errors.New("hreg: buffer too small")
	ErrQuota        = errors.New("hreg: a limit on objects, bytes or sessions would be passed")
	ErrNotHeld      = errors.New("hreg: no reference held on this handle")
	ErrConnect      = errors.New("hreg: no daemon at the socket path")
	ErrDisconnected = errors.New("hreg: the daemon went away")
	ErrVersion      = errors.New("hreg: protocol versions differ")
	ErrProtocol     = errors.New("hreg: the peer broke the protocol")
	ErrIO           = errors.New("hreg: operating-system error")
)

// byStatus is indexed by the C status number (1 to 12).
var byStatus = [...]error{
	nil, ErrInvalid, ErrStale, ErrDenied, ErrTooBig, ErrBuffer, ErrQuota,
	ErrNotHeld, ErrConnect, ErrDisconnected, ErrVersion, ErrProtocol, ErrIO,
}

// Error is what every failed call returns: the operation, the handle it
// was about (0 if none), the C status, and for ErrBuffer the length needed.
type Error struct {
	Op     string // "get", "insert", "submit op 3 (get)", ...
	Handle Handle
	Status int // the C status number, 1 to 12
	Needed int // ErrBuffer: the value's length
	Detail string
}

func (e *Error) Error() string {
	msg := fmt.Sprintf("hreg: %s", e.Op)
	if e.Handle != 0 {
		msg += fmt.Sprintf(" %d", uint64(e.Handle))
	}
	msg += ": " + e.Unwrap().Error()[len("hreg: "):]
	if e.Status == int(C.HREG_ERR_BUFFER) {
		msg += fmt.Sprintf(" (%d bytes needed)", e.Needed)
	}
	if e.Detail != "" {
		msg += " (" + e.Detail + ")"
	}
	return msg
}

// Unwrap gives the sentinel for errors.Is.
func (e *Error) Unwrap() error {
	if e.Status > 0 && e.Status < len(byStatus) {
		return byStatus[e.Status]
	}
	return ErrProtocol
}

// statusError is nil for HREG_OK, else an *Error for the status.
func statusError(status C.int, op string, h Handle) error {
	if status == C.HREG_OK {
		return nil
	}
	return &Error{Op: op, Handle: h, Status: int(status)}
}
