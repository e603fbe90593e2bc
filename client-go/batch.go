// Submit: a batch of ops. GETs are read in Go where they can be; the other
// ops go to libhreg in runs with one wait each, the op array and every
// buffer of a run in one C allocation (cgo forbids C from holding Go
// memory that holds Go pointers, and an hreg_op's buf is a pointer).

package hreg

/*
#include <hreg.h>
#include <stdlib.h>
#include <string.h>
*/
import "C"

import (
	"fmt"
	"unsafe"
)

// batchGetCap is the buffer a batch GET gets when its Op.Value has a
// smaller capacity; a longer value is read again after the batch.
const batchGetCap = 4096

// Submit runs ops in order; a failed op does not stop the rest. Each op
// gets its own result: OpInsert sets Handle, OpGet sets Value to a new
// slice, and every op sets Err (nil on success). Returns the first failed
// op's error, or nil.
//
// OpGets are read in Go where they can be (see the package doc); the other
// ops go to the daemon in runs with one wait each, a run ending before the
// next OpGet, so an OpGet sees every write before it. An OpGet sent to the
// daemon reads into a buffer of max(cap(Value), 4096) bytes; a longer
// value is read again right after its run, unless a later op of that run
// replaces, releases or removes that handle: then that op's Err wraps
// ErrBuffer (give Value enough capacity to avoid it).
func (c *Client) Submit(ops []Op) error {
	if len(ops) == 0 {
		return nil
	}
	if c.closed.Load() {
		err := closedError("submit", 0)
		for i := range ops {
			ops[i].Err = err
		}
		return err
	}
	at := 0
	for at < len(ops) {
		for at < len(ops) && c.getHere(&ops[at], at) {
			at++
		}
		if at == len(ops) {
			break
		}
		end := at + 1
		for end < len(ops) && ops[end].Kind != OpGet {
			end++
		}
		c.submitRun(ops[at:end], at)
		at = end
	}
	for i := range ops {
		if ops[i].Err != nil {
			return ops[i].Err
		}
	}
	return nil
}

// getHere answers op i in Go if it is an OpGet readable here.
func (c *Client) getHere(op *Op, i int) bool {
	if op.Kind != OpGet || op.Flags != 0 || op.Handle == 0 {
		return false
	}
	lr := c.reader()
	if lr == nil {
		return false
	}
	value, _, got := lr.read(op.Handle, nil, true)
	switch got {
	case readValue:
		if value == nil {
			value = []byte{}
		}
		op.Value, op.Err = value, nil
	case readStale:
		op.Err = &Error{Op: opName(i, op.Kind), Handle: op.Handle, Status: int(C.HREG_ERR_STALE)}
	default:
		return false
	}
	return true
}

func opName(i int, kind OpKind) string {
	return fmt.Sprintf("submit op %d (%s)", i, kind)
}

// submitRun runs ops (ops[0] is op `first` of the batch) through libhreg
// with one wait, its op array and buffers in one C allocation.
func (c *Client) submitRun(ops []Op, first int) {
	cc, err := c.acquire("submit", 0)
	if err != nil {
		for i := range ops {
			ops[i].Err = err
		}
		return
	}
	defer c.done()

	opSize := C.size_t(unsafe.Sizeof(C.hreg_op{}))
	total := opSize * C.size_t(len(ops))
	for i := range ops {
		total += C.size_t(bufferSize(&ops[i]))
	}
	block := C.calloc(1, total)
	if block == nil {
		err := &Error{Op: "submit", Status: int(C.HREG_ERR_IO), Detail: "out of memory"}
		for i := range ops {
			ops[i].Err = err
		}
		return
	}
	defer C.free(block)
	cops := unsafe.Slice((*C.hreg_op)(block), len(ops))
	next := unsafe.Add(block, opSize*C.size_t(len(ops)))
	for i := range ops {
		op := &ops[i]
		size := bufferSize(op)
		cops[i] = C.hreg_op{
			opcode: C.uint32_t(op.Kind),
			flags:  C.uint32_t(op.Flags),
			handle: C.hreg_handle(op.Handle),
			len:    C.size_t(size),
		}
		if size > 0 {
			cops[i].buf = next
			if op.Kind != OpGet {
				C.memcpy(next, unsafe.Pointer(&op.Value[0]), C.size_t(size))
			}
			next = unsafe.Add(next, size)
		}
	}
	c.called(C.hreg_submit(cc, &cops[0], C.size_t(len(ops))))

	for i := range ops {
		op := &ops[i]
		cop := &cops[i]
		what := opName(first+i, op.Kind)
		op.Err = statusError(C.int(cop.status), what, op.Handle)
		switch {
		case op.Err == nil && op.Kind == OpInsert:
			op.Handle = Handle(cop.handle)
		case op.Err == nil && op.Kind == OpGet:
			op.Value = C.GoBytes(cop.buf, C.int(cop.len))
		case cop.status == C.HREG_ERR_BUFFER && op.Kind == OpGet:
			op.Value, op.Err = c.reread(cc, ops, i, int(cop.len), what)
		}
	}
}

// bufferSize is the C memory op i needs: its value, or its GET buffer.
func bufferSize(op *Op) int {
	switch op.Kind {
	case OpInsert, OpReplace:
		return len(op.Value)
	case OpGet:
		if cap(op.Value) > batchGetCap {
			return cap(op.Value)
		}
		return batchGetCap
	}
	return 0
}

// reread reads the value of GET op i, too long for its batch buffer, after
// its run, if no later op of the run may have changed it.
func (c *Client) reread(cc *C.hreg_client, ops []Op, i int, needed int, what string) ([]byte, error) {
	h := ops[i].Handle
	for _, later := range ops[i+1:] {
		if later.Handle == h && (later.Kind == OpReplace || later.Kind == OpRelease || later.Kind == OpRemove) {
			return nil, &Error{Op: what, Handle: h, Status: int(C.HREG_ERR_BUFFER), Needed: needed,
				Detail: "a later op of the batch changes it; give Value that capacity"}
		}
	}
	for {
		value := make([]byte, needed)
		var n C.size_t
		status := C.hreg_get(cc, C.hreg_handle(h), bytesPtr(value), C.size_t(len(value)), &n)
		if status == C.HREG_OK {
			return value[:n:n], nil
		}
		if status != C.HREG_ERR_BUFFER {
			return nil, statusError(status, what, h)
		}
		needed = int(n)
	}
}
