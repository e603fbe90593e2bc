// Resolving handles in Go, without a cgo call: a seqlock read of the
// handle's slot in the registry's read-only shared memory, which libhreg
// has already mapped (hreg_bind_reads_open gives the addresses and keeps
// the mappings alive until hreg_bind_reads_free). The protocol is
// SlotView::read of proto/src/table.rs, done with sync/atomic loads of
// 8-byte words of that C memory; no Go pointer ever goes to C for it.
//
// Anything this reader cannot answer goes through the cgo call as before:
// a chunk libhreg has not mapped, a domain this uid may not map, a slot the
// daemon kept changing for the whole retry budget, a daemon that said it
// stopped or that looks gone, a layout other than the one below, a handle
// whose last reference this client may have released by a posted release
// the daemon has not applied yet (libhreg's filter of them says so in one
// load; its get waits for the release, so the client reads its own
// release at once).

package hreg

/*
#include <hreg.h>
*/
import "C"

import (
	"encoding/binary"
	"math/bits"
	"runtime"
	"sync"
	"sync/atomic"
	"unsafe"
)

// The registry's layout, as proto/src/table.rs and proto/src/handle.rs
// define it. Connect compares these with what libhreg reads
// (hreg_bind_layout_get) and reads in Go only when they agree; the tests
// compare them too.
const (
	layoutVersion   = 2
	headerLen       = 4096
	headerStoppedAt = 128
	slotSize        = 64
	inlineValue     = 48
	firstSlotChunk  = 1024
	maxSlotChunks   = 15
	maxHeapChunks   = 1024
	generationShift = 32
	stateShift      = 56
	lenWord         = 1
	valueWord       = 2
	heapOffsetBits  = 48
	stateFree       = 0
	stateInline     = 1
	stateHeap       = 2
	stateReserved   = 3
	slotBits        = 24
	generationBits  = 16
	domainBits      = 14
	instanceBits    = 10
)

// The layout above as libhreg spells it.
var goLayout = C.hreg_bind_layout{
	version: layoutVersion, header_len: headerLen, header_stopped_at: headerStoppedAt,
	slot_size: slotSize, inline_value: inlineValue, first_slot_chunk: firstSlotChunk,
	max_slot_chunks: maxSlotChunks, max_heap_chunks: maxHeapChunks,
	generation_shift: generationShift, state_shift: stateShift, len_word: lenWord,
	value_word: valueWord, heap_offset_bits: heapOffsetBits, state_free: stateFree,
	state_inline: stateInline, state_heap: stateHeap, state_reserved: stateReserved, slot_bits: slotBits,
	generation_bits: generationBits, domain_bits: domainBits, instance_bits: instanceBits,
}

const (
	// tornRetries bounds the reads of a slot that raced a write, as the
	// Rust client's.
	tornRetries = 64
	// localMax is the longest value copied here; a longer one is copied
	// by libhreg (one string move), for which a cgo call is cheap.
	localMax = 1 << 12
	// domainGroup is how many domains a group of the domain table holds.
	domainGroup = 128
)

// libhregLayout is the layout the linked libhreg reads.
func libhregLayout() C.hreg_bind_layout {
	var l C.hreg_bind_layout
	C.hreg_bind_layout_get(&l)
	return l
}

// chunk is one mapped chunk of C memory.
type chunk struct {
	base unsafe.Pointer
	len  uintptr
}

// domainView is what libhreg had mapped of one domain when counter read
// as `counter`.
type domainView struct {
	counter uint64
	slots   [maxSlotChunks]chunk
	heap    []chunk
}

type domainTable [domainGroup]atomic.Pointer[domainView]

// localReads is a client's view of the registry mappings. It keeps them
// mapped until it is finalized: a reader holds the Client, which holds
// this, so no read can outlive the memory (runtime.KeepAlive marks the end
// of each read).
type localReads struct {
	r        *C.hreg_bind_reads
	header   unsafe.Pointer // the registry header
	counter  *uint64        // C memory: moves on when libhreg maps chunks
	instance uint64
	// releasesPending is libhreg's filter of posted releases not applied
	// yet (C memory, pendingMask+1 uint32 counters).
	releasesPending unsafe.Pointer
	pendingMask     uint64
	groups          [1 << domainBits / domainGroup]atomic.Pointer[domainTable]
	refresh         sync.Mutex // one refresh at a time
	// posted keeps copies of this client's latest small inserts.
	posted postedCopies
	// results gives Get its slices of small values.
	results resultBlocks
}

// openLocalReads gives the mappings of cc, or nil when this libhreg reads
// another layout (then every get is a cgo call).
func openLocalReads(cc *C.hreg_client) *localReads {
	if libhregLayout() != goLayout {
		return nil
	}
	var r *C.hreg_bind_reads
	var info C.hreg_bind_reads_info
	if C.hreg_bind_reads_open(cc, &r, &info) != C.HREG_OK {
		return nil
	}
	buckets := uint64(info.releases_pending_len)
	if info.releases_pending == nil || buckets == 0 || buckets&(buckets-1) != 0 {
		C.hreg_bind_reads_free(r)
		return nil
	}
	lr := &localReads{
		r:               r,
		header:          unsafe.Pointer(info.header),
		counter:         (*uint64)(unsafe.Pointer(info.counter)),
		instance:        uint64(info.instance),
		releasesPending: unsafe.Pointer(info.releases_pending),
		pendingMask:     buckets - 1,
	}
	runtime.SetFinalizer(lr, func(lr *localReads) { C.hreg_bind_reads_free(lr.r) })
	return lr
}

// releasePending is whether this client may have posted a release of its
// last reference to h that the daemon has not applied (libhreg's filter,
// as hreg_bind_reads_info spells it).
func (lr *localReads) releasePending(raw uint64) bool {
	bucket := (raw ^ raw>>24) & lr.pendingMask
	return atomic.LoadUint32((*uint32)(unsafe.Add(lr.releasesPending, bucket*4))) != 0
}

// stopped is whether the daemon said it stopped serving this registry.
func (lr *localReads) stopped() bool {
	return atomic.LoadUint64((*uint64)(unsafe.Add(lr.header, headerStoppedAt))) != 0
}

func (lr *localReads) view(domain uint64) *domainView {
	table := lr.groups[domain/domainGroup].Load()
	if table == nil {
		return nil
	}
	return table[domain%domainGroup].Load()
}

// refreshed is the view of domain after asking libhreg again, or nil
// when nothing was mapped since `seen` (then the caller asks the daemon).
func (lr *localReads) refreshed(domain uint64, seen *domainView) *domainView {
	now := atomic.LoadUint64(lr.counter)
	if seen != nil && seen.counter == now {
		return nil
	}
	lr.refresh.Lock()
	defer lr.refresh.Unlock()
	if v := lr.view(domain); v != nil && v != seen {
		return v // refreshed by another reader meanwhile
	}
	v := &domainView{counter: atomic.LoadUint64(lr.counter)}
	var slots [maxSlotChunks]C.hreg_bind_chunk
	heap := make([]C.hreg_bind_chunk, 8)
	for {
		var ns, nh C.size_t
		if C.hreg_bind_reads_domain(lr.r, C.uint32_t(domain), &slots[0], C.size_t(len(slots)), &ns,
			&heap[0], C.size_t(len(heap)), &nh) != C.HREG_OK {
			return nil
		}
		if int(nh) <= len(heap) {
			heap = heap[:nh]
			break
		}
		heap = make([]C.hreg_bind_chunk, nh)
	}
	for k, c := range slots {
		v.slots[k] = chunk{unsafe.Pointer(c.base), uintptr(c.len)}
	}
	v.heap = make([]chunk, len(heap))
	for k, c := range heap {
		v.heap[k] = chunk{unsafe.Pointer(c.base), uintptr(c.len)}
	}
	group := &lr.groups[domain/domainGroup]
	table := group.Load()
	if table == nil {
		table = new(domainTable)
		group.Store(table)
	}
	table[domain%domainGroup].Store(v)
	return v
}

// readOutcome is what a read in Go came to.
type readOutcome uint8

const (
	readValue  readOutcome = iota // the value is in the output
	readBuffer                    // the buffer is too short; n is the length
	readStale                     // no object of this handle
	readCgo                       // not answerable here: ask libhreg
)

// read resolves h in Go. With buf nil it returns a new slice holding the
// value; else it copies into buf (readBuffer and the length when buf is
// too short).
func (lr *localReads) read(h Handle, buf []byte, alloc bool) ([]byte, int, readOutcome) {
	value, n, got := lr.readSlot(h, buf, alloc)
	// The mappings stay until the read is done (a defer here cost a
	// third of a read once the function had too many returns for Go to
	// open-code it).
	runtime.KeepAlive(lr)
	return value, n, got
}

func (lr *localReads) readSlot(h Handle, buf []byte, alloc bool) ([]byte, int, readOutcome) {
	raw := uint64(h)
	if raw>>(slotBits+generationBits+domainBits) != lr.instance {
		return nil, 0, readStale
	}
	if lr.releasePending(raw) || lr.stopped() {
		return nil, 0, readCgo
	}
	domain := raw >> (slotBits + generationBits) & (1<<domainBits - 1)
	generation := uint16(raw >> slotBits)
	slot := raw & (1<<slotBits - 1)
	// Slot chunk k holds firstSlotChunk << k slots (proto's slot_place).
	n := slot/firstSlotChunk + 1
	k := bits.Len64(n) - 1
	index := slot - firstSlotChunk*(1<<k-1)

	v := lr.view(domain)
	refreshed := false
	for {
		if v != nil && v.slots[k].base != nil {
			break
		}
		if refreshed {
			return nil, 0, readCgo
		}
		if v = lr.refreshed(domain, v); v == nil {
			return nil, 0, readCgo
		}
		refreshed = true
	}
	slots := v.slots[k]
	if (index+1)*slotSize > uint64(slots.len) {
		return nil, 0, readCgo
	}
	words := unsafe.Add(slots.base, index*slotSize)
	word := func(i uintptr) *uint64 { return (*uint64)(unsafe.Add(words, i*8)) }

	var out []byte
	for try := 0; try < tornRetries; try++ {
		head := atomic.LoadUint64(word(0))
		if head&1 != 0 {
			continue // a write under way
		}
		state := head >> stateShift
		if uint16(head>>generationShift) != generation || state == stateFree {
			if atomic.LoadUint64(word(0)) == head {
				return nil, 0, readStale
			}
			continue
		}
		if state == stateReserved {
			// A posted insert not applied yet: this client's own, if it
			// kept a copy of the handle's value (the handle was granted to
			// this session alone, and nothing can change the object
			// before the insert is applied); else libhreg answers.
			return lr.posted.read(h, buf, alloc, &lr.results)
		}
		if state != stateInline && state != stateHeap {
			return nil, 0, readCgo
		}
		length := uintptr(uint32(atomic.LoadUint64(word(lenWord))))
		if length > localMax {
			return nil, 0, readCgo
		}
		if !alloc && length > uintptr(len(buf)) {
			if atomic.LoadUint64(word(0)) == head {
				return nil, int(length), readBuffer
			}
			continue
		}
		var src unsafe.Pointer
		switch state {
		case stateInline:
			if length > inlineValue {
				continue // torn
			}
			src = unsafe.Add(words, valueWord*8)
		case stateHeap:
			at := atomic.LoadUint64(word(valueWord))
			c, offset := at>>heapOffsetBits, uintptr(at&(1<<heapOffsetBits-1))
			if c >= uint64(len(v.heap)) || v.heap[c].base == nil {
				if atomic.LoadUint64(word(0)) != head {
					continue
				}
				if refreshed {
					return nil, 0, readCgo
				}
				refreshed = true
				if v = lr.refreshed(domain, v); v == nil {
					return nil, 0, readCgo
				}
				continue
			}
			// Whole words only: the daemon's blocks are 16-byte aligned
			// and sized, so the last word stays inside the block.
			if offset%8 != 0 || offset+(length+7)&^7 > v.heap[c].len {
				return nil, 0, readCgo
			}
			src = unsafe.Add(v.heap[c].base, offset)
		default:
			return nil, 0, readCgo
		}
		dst := buf
		if alloc {
			if out == nil || len(out) != int(length) {
				out = lr.results.take(int(length))
			}
			dst = out
		}
		loadWords(src, dst[:length])
		if atomic.LoadUint64(word(0)) == head {
			return out, int(length), readValue
		}
	}
	return nil, 0, readCgo
}

// Copies of the values of a client's latest inserts that may have been
// posted (up to postedMax bytes), a few per place, as libhreg keeps them
// (client-rs's PostedValues): a Get of a handle whose slot still reads as
// reserved answers from here, in Go, instead of a cgo call to libhreg's
// copy. A Get right after Insert finds its slot reserved most of the time.
const (
	postedMax    = 32 // libhreg posts inserts of up to a ring entry's 32 bytes
	postedPlaces = 256
	postedWays   = 4
)

type postedCopies struct {
	places [postedPlaces]postedPlace
}

type postedPlace struct {
	mu     sync.Mutex
	oldest uint8
	copies [postedWays]postedCopy
}

type postedCopy struct {
	handle Handle // 0: none
	len    uint8
	bytes  [postedMax]byte
}

// place is h's place (Fibonacci hashing, as libhreg's).
func (p *postedCopies) place(h Handle) *postedPlace {
	return &p.places[uint64(h)*0x9E3779B97F4A7C15>>(64-8)]
}

// keep copies value (at most postedMax bytes) of the insert of h.
func (p *postedCopies) keep(h Handle, value []byte) {
	if len(value) > postedMax {
		return
	}
	place := p.place(h)
	place.mu.Lock()
	c := &place.copies[place.oldest]
	place.oldest = (place.oldest + 1) % postedWays
	c.handle, c.len = h, uint8(len(value))
	copy(c.bytes[:], value)
	place.mu.Unlock()
}

// read answers for h, whose slot reads as reserved, as localReads.read
// does (a new slice from results): from a copy, or readCgo.
func (p *postedCopies) read(h Handle, buf []byte, alloc bool, results *resultBlocks) ([]byte, int, readOutcome) {
	place := p.place(h)
	place.mu.Lock()
	defer place.mu.Unlock()
	for k := range place.copies {
		c := &place.copies[k]
		if c.handle != h {
			continue
		}
		n := int(c.len)
		if alloc {
			out := results.take(n)
			copy(out, c.bytes[:n])
			return out, n, readValue
		}
		if n > len(buf) {
			return nil, n, readBuffer
		}
		copy(buf, c.bytes[:n])
		return nil, n, readValue
	}
	return nil, 0, readCgo
}

// Get's results of up to carvedMax bytes are carved out of blocks of
// blockBytes: one allocation for several results (a make of 16 bytes took
// half of a Get). Goroutines carve from one of resultStripes blocks, picked
// by the address of their stack, so that two running goroutines seldom
// share a block's counter (sharing one block cost a parallel Get more than
// the make; a sync.Pool as much as the make). Each result is capped at its
// length, so an append to it copies it first; a result kept keeps its
// block, 256 bytes, alive.
const (
	carvedMax     = 32
	blockBytes    = 256 - 8 // a block is 256 bytes: Go's size class, cache-line aligned
	resultStripes = 32
)

type resultBlock struct {
	used  atomic.Uint64 // bytes handed out (may run past blockBytes)
	bytes [blockBytes]byte
}

type resultBlocks struct {
	stripes [resultStripes]struct {
		current atomic.Pointer[resultBlock]
		_       [56]byte // a cache line each
	}
}

// take gives a new slice of n bytes that nothing else refers to.
func (rb *resultBlocks) take(n int) []byte {
	if n > carvedMax {
		return make([]byte, n)
	}
	if n == 0 {
		return []byte{}
	}
	var onStack byte
	stack := uint64(uintptr(unsafe.Pointer(&onStack)))
	stripe := &rb.stripes[stack*0x9E3779B97F4A7C15>>(64-5)].current
	for {
		b := stripe.Load()
		if b != nil {
			if end := b.used.Add(uint64(n)); end <= blockBytes {
				return b.bytes[end-uint64(n) : end : end]
			}
		}
		next := new(resultBlock)
		next.used.Store(uint64(n))
		if stripe.CompareAndSwap(b, next) {
			return next.bytes[:n:n]
		}
	}
}

// loadWords fills out from C memory at src (8-byte aligned, readable up
// to out's length rounded up to 8) with atomic 8-byte loads.
func loadWords(src unsafe.Pointer, out []byte) {
	i := 0
	for ; i+8 <= len(out); i += 8 {
		binary.LittleEndian.PutUint64(out[i:], atomic.LoadUint64((*uint64)(unsafe.Add(src, i))))
	}
	if i < len(out) {
		last := atomic.LoadUint64((*uint64)(unsafe.Add(src, i)))
		for ; i < len(out); i++ {
			out[i] = byte(last)
			last >>= 8
		}
	}
}
