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
// package returns wraps exactly one of them: test with errors.Is. Their
// texts are hreg_strerror's, so every client words a failure alike.
var (
	ErrInvalid      = errors.New("hreg: invalid argument")
	ErrStale        = errors.New("hreg: no such object (removed, or never issued by this daemon)")
	ErrDenied       = errors.New("hreg: access denied (another user's object: not shared, or not yours to change)")
	ErrTooBig       = errors.New("hreg: value too big (over the daemon's max_value_size)")
	ErrBuffer       = errors.New("hreg: buffer too small")
	ErrQuota        = errors.New("hreg: a limit on objects, bytes or sessions would be passed")
	ErrNotHeld      = errors.New("hreg: no reference held on this handle")
	ErrConnect      = errors.New("hreg: cannot connect to hregd")
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

// strerror is libhreg's text for a status (the sentinels carry it).
func strerror(status int) string {
	return C.GoString(C.hreg_strerror(C.int(status)))
}

// Error is what every failed call returns: the operation, the handle it
// was about (0 if none), the C status, and for ErrBuffer the length needed.
type Error struct {
	Op     string // "get", "insert", "submit op 3 (get)", ...
	Handle Handle
	Status int // the C status number, 1 to 12
	Needed int // ErrBuffer: the value's length
	// What libhreg said (hreg_last_error) for the statuses it describes in
	// full (TOO_BIG with the size and the limit, QUOTA with the limit,
	// CONNECT with the paths, ...), which the message then gives instead of
	// the sentinel's text; else a detail added in parentheses.
	Detail string
}

// described: statuses whose libhreg text (Detail) is the whole reason.
var described = map[int]bool{
	int(C.HREG_ERR_TOO_BIG): true, int(C.HREG_ERR_QUOTA): true, int(C.HREG_ERR_CONNECT): true,
	int(C.HREG_ERR_VERSION): true, int(C.HREG_ERR_PROTOCOL): true, int(C.HREG_ERR_IO): true,
}

func (e *Error) Error() string {
	msg := fmt.Sprintf("hreg: %s", e.Op)
	if e.Handle != 0 {
		msg += fmt.Sprintf(" %d", uint64(e.Handle))
	}
	why := e.Unwrap().Error()[len("hreg: "):]
	if e.Detail != "" && described[e.Status] {
		why = e.Detail
	}
	msg += ": " + why
	if e.Status == int(C.HREG_ERR_BUFFER) {
		msg += fmt.Sprintf(" (%d bytes needed)", e.Needed)
	}
	if e.Detail != "" && !described[e.Status] {
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
