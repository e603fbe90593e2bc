//! The registry's read side in shared memory: the slot tables and value
//! heaps the daemon writes and clients read without a round trip.
//!
//! Objects live in *domains*: one per uid for its private objects, and one
//! for every SHARED object (domain [`SHARED_DOMAIN`]). A domain has a slot
//! table and a heap, each a list of memfds ("chunks") that only the daemon
//! writes; a client maps read-only the chunks of the domains its uid may
//! read. Chunks grow geometrically and are never resized or unmapped.
//!
//! A slot is 64 bytes (one cache line), eight little-endian words:
//!
//! ```text
//! word 0   bits 0..32 sequence (odd while the daemon writes the slot)
//!          bits 32..48 generation, bits 48..56 object flags,
//!          bits 56..64 state: 0 free, 1 value inline, 2 value in the heap,
//!          3 reserved (a handle granted ahead to a session, no object yet)
//! word 1   bits 0..32 value length, bits 32..64 owner uid
//! word 2   heap address (state 2): chunk << 48 | offset; the session id
//!          the slot is reserved for (state 3)
//! 2..8     the value itself (state 1): up to 48 bytes
//! ```
//!
//! A reserved slot is neither free nor stale: its generation is that of a
//! handle the daemon granted a session ahead of its insert (issue 19's
//! posted writes). A reader that finds one learns which session will fill
//! it ([`Read::Reserved`]) and waits for that session's insert, which may
//! already have returned in another process.
//!
//! A read is a seqlock read ([`SlotView::read`]): load word 0 (acquire;
//! an odd sequence is a write under way), check the generation, copy the
//! rest and the value bytes with relaxed atomic loads, fence (acquire), and
//! load word 0 again: if it changed, the copy may be torn, so retry. The
//! daemon writes a slot only by [`SlotView::write`]: word 0 with the next
//! (odd) sequence, a release fence, the other words, then word 0 with the
//! next (even) sequence and the new generation and state, with release
//! ordering. A value block is written before the slot that points at it.
//!
//! The `loom` model `tests/loom_table.rs` checks this protocol on these
//! functions.

use crate::shm::{Access, LoadOnly, Mapping, ReadWrite};
use crate::sync::{fence, Ordering};

/// The domain of SHARED objects.
pub const SHARED_DOMAIN: u16 = 0;

/// Bytes of one slot.
pub const SLOT_SIZE: usize = 64;

/// Longest value kept inside its slot.
pub const INLINE_VALUE: usize = 48;

/// Slots in a domain's first slot chunk; chunk `k` holds this many `<< k`.
pub const FIRST_SLOT_CHUNK: u32 = 1024;

/// Slot chunks a domain may have: enough for every slot a handle can name.
pub const MAX_SLOT_CHUNKS: usize = 15;

/// Bytes of a domain's first heap chunk; chunk `k` has this many `<< k`
/// (up to [`MAX_HEAP_CHUNK`]), or more when one value needs more.
pub const FIRST_HEAP_CHUNK: u64 = 1 << 20;

/// Largest heap chunk made for ordinary growth.
pub const MAX_HEAP_CHUNK: u64 = 1 << 30;

/// Heap chunks a domain may have.
pub const MAX_HEAP_CHUNKS: usize = 1024;

/// Bits of a heap address that hold the offset in its chunk.
pub const OFFSET_BITS: u32 = 48;

/// Where slot `index` of a domain lives: the chunk, and the slot's place
/// in it.
#[inline]
pub fn slot_place(index: u32) -> (usize, usize) {
    let n = u64::from(index) / u64::from(FIRST_SLOT_CHUNK) + 1;
    let chunk = (63 - n.leading_zeros()) as usize;
    let first = u64::from(FIRST_SLOT_CHUNK) * ((1 << chunk) - 1);
    (chunk, (u64::from(index) - first) as usize)
}

/// Slots in slot chunk `chunk`.
#[inline]
pub fn slot_chunk_slots(chunk: usize) -> usize {
    (FIRST_SLOT_CHUNK as usize) << chunk
}

/// Bytes of slot chunk `chunk`.
#[inline]
pub fn slot_chunk_len(chunk: usize) -> usize {
    slot_chunk_slots(chunk) * SLOT_SIZE
}

/// The bytes of a heap chunk made for ordinary growth, the `chunk`th of
/// its domain.
#[inline]
pub fn heap_chunk_len(chunk: usize) -> u64 {
    FIRST_HEAP_CHUNK << chunk.min((MAX_HEAP_CHUNK / FIRST_HEAP_CHUNK).trailing_zeros() as usize)
}

/// A place in a domain's heap.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct HeapAddress {
    /// The heap chunk.
    pub chunk: u16,
    /// Bytes from the chunk's start.
    pub offset: u64,
}

impl HeapAddress {
    /// The address as slot word 2 carries it.
    #[inline]
    pub fn encode(self) -> u64 {
        (u64::from(self.chunk) << OFFSET_BITS) | (self.offset & ((1 << OFFSET_BITS) - 1))
    }

    /// The address in slot word 2.
    #[inline]
    pub fn decode(word: u64) -> HeapAddress {
        HeapAddress {
            chunk: (word >> OFFSET_BITS) as u16,
            offset: word & ((1 << OFFSET_BITS) - 1),
        }
    }
}

/// What a slot holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Payload {
    /// Nothing: the slot is free (or retired).
    Free,
    /// A value of at most [`INLINE_VALUE`] bytes, in the slot.
    Inline([u8; INLINE_VALUE]),
    /// A value in the domain's heap.
    Heap(HeapAddress),
    /// No object yet: the slot's handle was granted ahead to a session,
    /// whose insert will fill it.
    Reserved {
        /// The session the handle was granted to.
        session: u64,
    },
}

impl Payload {
    /// Whether the slot holds an object (a value inline or in the heap).
    #[inline]
    pub fn is_object(&self) -> bool {
        matches!(self, Payload::Inline(_) | Payload::Heap(_))
    }
}

/// One version of a slot, as the daemon writes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Slot {
    /// Moves on when the object dies; a handle carries it.
    pub generation: u16,
    /// The object's flags (SHARED, DETACHED).
    pub flags: u8,
    /// The value's length in bytes.
    pub len: u32,
    /// The uid that owns the object.
    pub owner: u32,
    /// Where the value is.
    pub payload: Payload,
}

/// Word 0: where the generation starts (16 bits; the sequence is bits 0..32).
pub const GENERATION_SHIFT: u32 = 32;
/// Word 0: where the object flags start (8 bits).
pub const FLAGS_SHIFT: u32 = 48;
/// Word 0: where the state starts (8 bits: [`STATE_FREE`], [`STATE_INLINE`],
/// [`STATE_HEAP`], [`STATE_RESERVED`]).
pub const STATE_SHIFT: u32 = 56;
/// The word of the value's length (bits 0..32) and owner uid (bits 32..64).
pub const LEN_WORD: usize = 1;
/// The word of the heap address (state 2), or the first word of the value
/// (state 1).
pub const VALUE_WORD: usize = 2;

/// Slot state (word 0, bits 56..64): no object.
pub const STATE_FREE: u64 = 0;
/// Slot state: the value is inside the slot, from word 2.
pub const STATE_INLINE: u64 = 1;
/// Slot state: the value is in the domain's heap, at word 2's address.
pub const STATE_HEAP: u64 = 2;
/// Slot state: no object yet; reserved for the session whose id is in
/// word 2 (a handle granted ahead, issue 19).
pub const STATE_RESERVED: u64 = 3;

impl Slot {
    /// A free slot of generation `generation` (no object, no value).
    pub fn free(generation: u16) -> Slot {
        Slot {
            generation,
            flags: 0,
            len: 0,
            owner: 0,
            payload: Payload::Free,
        }
    }

    fn state(&self) -> u64 {
        match self.payload {
            Payload::Free => STATE_FREE,
            Payload::Inline(_) => STATE_INLINE,
            Payload::Heap(_) => STATE_HEAP,
            Payload::Reserved { .. } => STATE_RESERVED,
        }
    }

    /// Word 0 with sequence `seq`.
    fn head(&self, seq: u32) -> u64 {
        u64::from(seq)
            | (u64::from(self.generation) << 32)
            | (u64::from(self.flags) << 48)
            | (self.state() << 56)
    }

    /// Words 1 to 7.
    fn body(&self) -> [u64; 7] {
        let mut words = [0u64; 7];
        words[0] = u64::from(self.len) | (u64::from(self.owner) << 32);
        match self.payload {
            Payload::Free => {}
            Payload::Heap(at) => words[1] = at.encode(),
            Payload::Reserved { session } => words[1] = session,
            Payload::Inline(bytes) => {
                for (i, chunk) in bytes.chunks_exact(8).enumerate() {
                    words[1 + i] = u64::from_le_bytes(chunk.try_into().expect("8 bytes"));
                }
            }
        }
        words
    }

    /// The slot's eight words, sequence 0 (for a record of it elsewhere:
    /// the daemon's write journal).
    pub fn encode(&self) -> [u64; 8] {
        let mut words = [0u64; 8];
        words[0] = self.head(0);
        words[1..].copy_from_slice(&self.body());
        words
    }

    /// The slot eight words describe (the sequence is ignored).
    pub fn decode(words: &[u64; 8]) -> Slot {
        let body: &[u64; 7] = words[1..].try_into().expect("seven words");
        Slot::from_words(words[0], body)
    }

    /// The slot a head and body describe.
    fn from_words(head: u64, body: &[u64; 7]) -> Slot {
        let payload = match head >> 56 {
            STATE_INLINE => {
                let mut bytes = [0u8; INLINE_VALUE];
                for (i, chunk) in bytes.chunks_exact_mut(8).enumerate() {
                    chunk.copy_from_slice(&body[1 + i].to_le_bytes());
                }
                Payload::Inline(bytes)
            }
            STATE_HEAP => Payload::Heap(HeapAddress::decode(body[1])),
            STATE_RESERVED => Payload::Reserved { session: body[1] },
            _ => Payload::Free,
        };
        Slot {
            generation: (head >> 32) as u16,
            flags: (head >> 48) as u8,
            len: body[0] as u32,
            owner: (body[0] >> 32) as u32,
            payload,
        }
    }
}

/// What one read of a slot found (eight bytes: it stays in registers).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Read {
    /// The value, `len` bytes long, is in the output.
    Value {
        /// The value's length.
        len: u32,
    },
    /// The output offered was too small; the value has `len` bytes.
    Buffer {
        /// The value's length.
        len: u32,
    },
    /// The slot holds no object of this generation.
    Stale,
    /// The handle was granted ahead to a session whose insert has not been
    /// applied yet (the low 32 bits of its id: enough to tell "mine" from
    /// "another's" for a wait, never trusted for more).
    Reserved {
        /// The low 32 bits of the session id.
        session: u32,
    },
    /// The value is in a heap chunk this reader has not mapped (or its
    /// address lies outside it): map the chunk and read again, or ask the
    /// daemon.
    Unmapped {
        /// The heap chunk named.
        chunk: u16,
    },
    /// The daemon changed the slot during the read: read again.
    Torn,
}

/// Where a value is, as [`SlotView::locate`] found it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Located {
    /// The slot holds no object of this generation.
    Stale,
    /// The handle was granted ahead to a session whose insert has not been
    /// applied yet (see [`Read::Reserved`]).
    Reserved {
        /// The low 32 bits of the session id.
        session: u32,
    },
    /// The value, `len` bytes, is inside the slot (read it with
    /// [`SlotView::read`]).
    Inline {
        /// The value's length.
        len: u32,
    },
    /// The value, `len` bytes, is at `at` in the domain's heap.
    Heap {
        /// Where.
        at: HeapAddress,
        /// The value's length.
        len: u32,
    },
    /// The daemon changed the slot during the look: look again.
    Torn,
}

/// One slot of a slot chunk, borrowed from the mapping that holds it. Any
/// view reads the slot; only a view over a [`ReadWrite`] mapping (the
/// daemon's) writes it.
///
/// ```compile_fail
/// // A client cannot write a slot: its chunks are mapped read-only.
/// use hreg_proto::shm::{Mapping, ReadOnly};
/// use hreg_proto::table::{Slot, SlotView};
/// fn write(chunk: &Mapping<ReadOnly>) {
///     SlotView::new(chunk, 0).unwrap().write(&Slot::free(1));
/// }
/// ```
pub struct SlotView<'a, A: Access> {
    map: &'a Mapping<A>,
    at: usize,
}

impl<A: Access> Clone for SlotView<'_, A> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<A: Access> Copy for SlotView<'_, A> {}

impl<'a, A: Access> SlotView<'a, A> {
    /// Slot `index` of the slot chunk mapped by `map` (the chunk's own
    /// numbering), if the mapping holds it.
    #[inline]
    pub fn new(map: &'a Mapping<A>, index: usize) -> Option<SlotView<'a, A>> {
        let at = index.checked_mul(SLOT_SIZE)?;
        map.holds(at, SLOT_SIZE).then_some(SlotView { map, at })
    }

    #[inline]
    fn words(&self) -> &'a [LoadOnly; 8] {
        self.map.entry_loads(self.at)
    }

    /// The slot's current version, read by the seqlock protocol; `None`
    /// when a write was under way or overlapped the read (read again).
    pub fn snapshot(&self) -> Option<Slot> {
        let words = self.words();
        let head = words[0].load(Ordering::Acquire);
        if head & 1 != 0 {
            return None;
        }
        let mut body = [0u64; 7];
        for (out, word) in body.iter_mut().zip(&words[1..]) {
            *out = word.load(Ordering::Relaxed);
        }
        fence(Ordering::Acquire);
        (words[0].load(Ordering::Relaxed) == head).then(|| Slot::from_words(head, &body))
    }

    /// Where the value of generation `generation` is, by the seqlock
    /// protocol, without copying it (small, for borrowing in place).
    #[inline]
    pub fn locate(&self, generation: u16) -> Located {
        let words = self.words();
        let head = words[0].load(Ordering::Acquire);
        if head & 1 != 0 {
            return Located::Torn;
        }
        let state = head >> 56;
        let len = words[1].load(Ordering::Relaxed) as u32;
        let at = words[2].load(Ordering::Relaxed);
        fence(Ordering::Acquire);
        if words[0].load(Ordering::Relaxed) != head {
            return Located::Torn;
        }
        if (head >> 32) as u16 != generation || state == STATE_FREE {
            return Located::Stale;
        }
        if state == STATE_RESERVED {
            return Located::Reserved { session: at as u32 };
        }
        if state == STATE_HEAP {
            Located::Heap {
                at: HeapAddress::decode(at),
                len,
            }
        } else {
            Located::Inline { len }
        }
    }

    /// Reads the value of generation `generation`: `output(len)` is asked
    /// for a buffer of exactly `len` bytes (`None`: the caller has no room,
    /// and gets [`Read::Buffer`]); `heap(chunk)` gives the mapping of a
    /// heap chunk, if this reader has it. The bytes are copied with relaxed
    /// atomic loads and kept only if the slot did not change meanwhile.
    #[inline]
    pub fn read<'o>(
        &self,
        generation: u16,
        output: impl FnOnce(usize) -> Option<&'o mut [u8]>,
        heap: impl FnOnce(u16) -> Option<&'a Mapping<A>>,
    ) -> Read {
        let words = self.words();
        let head = words[0].load(Ordering::Acquire);
        if head & 1 != 0 {
            return Read::Torn;
        }
        let state = head >> 56;
        if (head >> 32) as u16 != generation || state == STATE_FREE {
            return self.confirmed(head, Read::Stale);
        }
        if state == STATE_RESERVED {
            let session = words[2].load(Ordering::Relaxed) as u32;
            return self.confirmed(head, Read::Reserved { session });
        }
        let len32 = words[1].load(Ordering::Relaxed) as u32;
        let len = len32 as usize;
        let Some(out) = output(len) else {
            return self.confirmed(head, Read::Buffer { len: len32 });
        };
        if out.len() != len {
            return self.confirmed(head, Read::Buffer { len: len32 });
        }
        if state == STATE_INLINE {
            if len > INLINE_VALUE {
                return self.confirmed(head, Read::Torn);
            }
            // Whole words as fixed 8-byte stores; the last partial word
            // byte by byte (no call to memcpy for a few bytes).
            let full = len / 8;
            for (chunk, word) in out.chunks_exact_mut(8).zip(&words[2..2 + full]) {
                chunk.copy_from_slice(&word.load(Ordering::Relaxed).to_le_bytes());
            }
            let tail = &mut out[8 * full..];
            if !tail.is_empty() {
                let last = words[2 + full].load(Ordering::Relaxed).to_le_bytes();
                for (byte, value) in tail.iter_mut().zip(last) {
                    *byte = value;
                }
            }
        } else {
            let at = HeapAddress::decode(words[2].load(Ordering::Relaxed));
            let copied = heap(at.chunk).is_some_and(|chunk| {
                usize::try_from(at.offset).is_ok_and(|offset| chunk.load(offset, out))
            });
            if !copied {
                return self.confirmed(head, Read::Unmapped { chunk: at.chunk });
            }
        }
        self.confirmed(head, Read::Value { len: len32 })
    }

    /// `outcome` if the slot still carries `head` (after an acquire fence,
    /// so every load before it is ordered before this check), else TORN.
    #[inline(always)]
    fn confirmed(&self, head: u64, outcome: Read) -> Read {
        fence(Ordering::Acquire);
        if self.words()[0].load(Ordering::Relaxed) == head {
            outcome
        } else {
            Read::Torn
        }
    }
}

/// The writer's side: only over the daemon's [`ReadWrite`] mapping.
impl SlotView<'_, ReadWrite> {
    /// Writes a new version of the slot (the daemon's side; the caller is
    /// the slot's only writer). Readers see the old version or the new one,
    /// whole: the sequence is odd while the words change.
    pub fn write(&self, slot: &Slot) {
        let words = self.map.entry_at(self.at);
        let head = words[0].load(Ordering::Relaxed);
        let seq = head as u32;
        words[0].store(
            (head & !0xffff_ffff) | u64::from(seq.wrapping_add(1) | 1),
            Ordering::Relaxed,
        );
        fence(Ordering::Release);
        for (word, value) in words[1..].iter().zip(slot.body()) {
            word.store(value, Ordering::Relaxed);
        }
        let even = (seq | 1).wrapping_add(1);
        words[0].store(slot.head(even), Ordering::Release);
    }

    /// The slot as the daemon last wrote it (the daemon's side: no write can
    /// overlap, so no retry is needed).
    pub fn current(&self) -> Slot {
        let words = self.words();
        let mut body = [0u64; 7];
        for (out, word) in body.iter_mut().zip(&words[1..]) {
            *out = word.load(Ordering::Relaxed);
        }
        Slot::from_words(words[0].load(Ordering::Relaxed), &body)
    }

    /// Whether the slot was never written (all of its first word zero): a
    /// slot the daemon prepared but never handed out.
    pub fn is_untouched(&self) -> bool {
        self.words()[0].load(Ordering::Relaxed) == 0
    }

    /// Whether a write was under way when the slot was last written (the
    /// sequence is odd): a slot left so by a daemon that died mid-write.
    pub fn is_mid_write(&self) -> bool {
        self.words()[0].load(Ordering::Relaxed) & 1 != 0
    }
}

#[cfg(all(test, not(hreg_loom)))]
mod tests {
    use super::*;

    #[test]
    fn slot_places_cover_every_index_once() {
        assert_eq!(slot_place(0), (0, 0));
        assert_eq!(slot_place(1023), (0, 1023));
        assert_eq!(slot_place(1024), (1, 0));
        assert_eq!(slot_place(3071), (1, 2047));
        assert_eq!(slot_place(3072), (2, 0));
        let last = (1u32 << 24) - 1;
        let (chunk, at) = slot_place(last);
        assert!(chunk < MAX_SLOT_CHUNKS && at < slot_chunk_slots(chunk));
        let mut expected = (0, 0);
        for index in 0..200_000u32 {
            assert_eq!(slot_place(index), expected, "{index}");
            expected.1 += 1;
            if expected.1 == slot_chunk_slots(expected.0) {
                expected = (expected.0 + 1, 0);
            }
        }
        assert_eq!(heap_chunk_len(0), 1 << 20);
        assert_eq!(heap_chunk_len(10), 1 << 30);
        assert_eq!(heap_chunk_len(50), 1 << 30);
    }

    fn inline(value: &[u8]) -> Payload {
        let mut bytes = [0u8; INLINE_VALUE];
        bytes[..value.len()].copy_from_slice(value);
        Payload::Inline(bytes)
    }

    #[test]
    fn word_constants_are_the_encoding() {
        let at = HeapAddress {
            chunk: 0x2a,
            offset: 0x1234,
        };
        let slot = Slot {
            generation: 0xabcd,
            flags: 0x5a,
            len: 0x0102_0304,
            owner: 0x0506_0708,
            payload: Payload::Heap(at),
        };
        let words = slot.encode();
        assert_eq!((words[0] >> GENERATION_SHIFT) as u16, 0xabcd);
        assert_eq!((words[0] >> FLAGS_SHIFT) as u8, 0x5a);
        assert_eq!(words[0] >> STATE_SHIFT, STATE_HEAP);
        assert_eq!(words[LEN_WORD] as u32, 0x0102_0304);
        assert_eq!((words[LEN_WORD] >> 32) as u32, 0x0506_0708);
        assert_eq!(words[VALUE_WORD] >> OFFSET_BITS, 0x2a);
        assert_eq!(words[VALUE_WORD] & ((1 << OFFSET_BITS) - 1), 0x1234);
        let words = Slot {
            payload: inline(b"abcdefgh"),
            ..slot
        }
        .encode();
        assert_eq!(words[0] >> STATE_SHIFT, STATE_INLINE);
        assert_eq!(words[VALUE_WORD].to_le_bytes(), *b"abcdefgh");
        assert_eq!(Slot::free(3).encode()[0] >> STATE_SHIFT, STATE_FREE);
    }

    #[test]
    fn slots_round_trip_and_reads_check_the_generation() {
        let map = Mapping::anonymous(4 * SLOT_SIZE).unwrap();
        let heap = Mapping::anonymous(4096).unwrap();
        assert!(heap.store(100, b"from the heap"));
        let view = SlotView::new(&map, 2).unwrap();
        assert!(SlotView::new(&map, 4).is_none());
        let slot = Slot {
            generation: 7,
            flags: 1,
            len: 5,
            owner: 1000,
            payload: inline(b"hello"),
        };
        view.write(&slot);
        assert_eq!(view.snapshot(), Some(slot));
        assert_eq!(view.current(), slot);
        assert!(!view.is_mid_write());
        let mut out = [0u8; 5];
        let got = view.read(7, |n| out.get_mut(..n), |_| None);
        assert_eq!((got, &out), (Read::Value { len: 5 }, b"hello"));
        assert_eq!(view.read(8, |n| out.get_mut(..n), |_| None), Read::Stale);
        let mut small = [0u8; 2];
        assert_eq!(
            view.read(7, |n| small.get_mut(..n), |_| None),
            Read::Buffer { len: 5 }
        );
        // A value in the heap, then the slot freed.
        let at = HeapAddress {
            chunk: 3,
            offset: 100,
        };
        view.write(&Slot {
            len: 13,
            payload: Payload::Heap(at),
            ..slot
        });
        let mut out = [0u8; 13];
        assert_eq!(
            view.read(7, |n| out.get_mut(..n), |_| None),
            Read::Unmapped { chunk: 3 }
        );
        let got = view.read(7, |n| out.get_mut(..n), |c| (c == 3).then_some(&heap));
        assert_eq!((got, &out), (Read::Value { len: 13 }, b"from the heap"));
        view.write(&Slot {
            generation: 8,
            len: 0,
            payload: Payload::Free,
            ..slot
        });
        assert_eq!(view.read(8, |n| out.get_mut(..n), |_| None), Read::Stale);
        assert_eq!(HeapAddress::decode(at.encode()), at);
        // Reserved for a session: neither a value nor stale, at its
        // generation only.
        let reserved = Slot {
            generation: 9,
            flags: 0,
            len: 0,
            owner: 1000,
            payload: Payload::Reserved {
                session: (7 << 32) | 42,
            },
        };
        view.write(&reserved);
        assert_eq!(view.snapshot(), Some(reserved));
        assert!(!reserved.payload.is_object() && slot.payload.is_object());
        assert_eq!(
            view.read(9, |n| out.get_mut(..n), |_| None),
            Read::Reserved { session: 42 }
        );
        assert_eq!(view.locate(9), Located::Reserved { session: 42 });
        assert_eq!(view.read(8, |n| out.get_mut(..n), |_| None), Read::Stale);
        assert_eq!(view.locate(10), Located::Stale);
    }
}

/// The registry's header: one page, written only by the daemon and mapped
/// read-only by every session.
///
/// ```text
/// offset 0    magic "HREGTBL1" (u64)
/// offset 8    layout version (u32), instance bits (u16), 2 bytes zero
/// offset 64   zero (the reclamation epoch of layout version 1: pins now
///             name blocks, see `crate::pins`)
/// offset 128  1 once the daemon has stopped serving (u64)
/// offset 192  1 if the daemon that wrote it stopped cleanly (u64)
/// ```
pub mod header {
    use crate::shm::{Access, LoadOnly, Mapping, ReadWrite};
    use crate::sync::{AtomicU64, Ordering};

    /// Bytes of the header.
    pub const LEN: usize = 4096;
    /// The header's first word.
    pub const MAGIC: u64 = u64::from_le_bytes(*b"HREGTBL1");
    /// The version of this layout (slots, heaps, header, pins). Version 2:
    /// pins name blocks (hazard pointers), and the header has no epoch.
    pub const VERSION: u32 = 2;
    /// Offset of the word that is non-zero once the daemon stopped serving.
    pub const STOPPED_AT: usize = 128;
    const CLEAN_AT: usize = 192;

    /// The header as readers see it (every session, and the daemon when it
    /// only looks), borrowed from its mapping.
    ///
    /// ```compile_fail
    /// // A client cannot write the header: a reader's view has no stores.
    /// use hreg_proto::shm::{Mapping, ReadOnly};
    /// use hreg_proto::table::header::Header;
    /// fn stop(map: &Mapping<ReadOnly>) {
    ///     Header::new(map).unwrap().set_stopped(true);
    /// }
    /// ```
    ///
    /// ```compile_fail
    /// // Nor make itself the writer: that takes a read/write mapping.
    /// use hreg_proto::shm::{Mapping, ReadOnly};
    /// use hreg_proto::table::header::HeaderWriter;
    /// fn stop(map: &Mapping<ReadOnly>) {
    ///     HeaderWriter::new(map).unwrap().set_stopped(true);
    /// }
    /// ```
    pub struct Header<'a, A: Access> {
        map: &'a Mapping<A>,
    }

    impl<A: Access> Clone for Header<'_, A> {
        fn clone(&self) -> Self {
            *self
        }
    }
    impl<A: Access> Copy for Header<'_, A> {}

    impl<'a, A: Access> Header<'a, A> {
        /// The header in `map`, if it holds one of this version.
        pub fn new(map: &'a Mapping<A>) -> Option<Header<'a, A>> {
            if !map.holds(0, LEN) {
                return None;
            }
            let header = Header { map };
            (header.word(0).load(Ordering::Relaxed) == MAGIC
                && header.word(8).load(Ordering::Relaxed) as u32 == VERSION)
                .then_some(header)
        }

        fn word(&self, offset: usize) -> &'a LoadOnly {
            &self.map.entry_loads(offset / 64 * 64)[offset % 64 / 8]
        }

        /// The instance bits every handle of this registry carries.
        pub fn instance(&self) -> u16 {
            (self.word(8).load(Ordering::Relaxed) >> 32) as u16
        }

        /// The header in `map`, which [`Header::new`] accepted before (the
        /// daemon never rewrites a header's magic or version): no check
        /// again, for hot paths.
        #[inline]
        pub fn accepted(map: &'a Mapping<A>) -> Header<'a, A> {
            Header { map }
        }

        /// Whether the daemon has said it stopped serving this registry.
        #[inline]
        pub fn stopped(&self) -> bool {
            self.word(STOPPED_AT).load(Ordering::Acquire) != 0
        }

        /// Whether the daemon that wrote the registry stopped cleanly (with
        /// nothing in flight) rather than dying.
        pub fn clean(&self) -> bool {
            self.word(CLEAN_AT).load(Ordering::Acquire) != 0
        }
    }

    /// The daemon's side of the header: it writes the header in its own
    /// read/write mapping, and reads it as any [`Header`] does.
    #[derive(Clone, Copy)]
    pub struct HeaderWriter<'a> {
        reader: Header<'a, ReadWrite>,
    }

    impl<'a> HeaderWriter<'a> {
        /// The header in `map`, if it holds one of this version.
        pub fn new(map: &'a Mapping<ReadWrite>) -> Option<HeaderWriter<'a>> {
            Header::new(map).map(|reader| HeaderWriter { reader })
        }

        /// Writes a fresh header for `instance`.
        pub fn init(map: &'a Mapping<ReadWrite>, instance: u16) -> Option<HeaderWriter<'a>> {
            if !map.holds(0, LEN) {
                return None;
            }
            let header = HeaderWriter {
                reader: Header { map },
            };
            header.word(8).store(
                u64::from(VERSION) | (u64::from(instance) << 32),
                Ordering::Relaxed,
            );
            header.word(STOPPED_AT).store(0, Ordering::Relaxed);
            header.word(0).store(MAGIC, Ordering::Release);
            Some(header)
        }

        fn word(&self, offset: usize) -> &'a AtomicU64 {
            &self.reader.map.entry_at(offset / 64 * 64)[offset % 64 / 8]
        }

        /// Marks the registry cleanly stopped (the daemon's last word), or
        /// in use again (a daemon that adopted it).
        pub fn set_clean(&self, clean: bool) {
            self.word(CLEAN_AT)
                .store(u64::from(clean), Ordering::Release);
        }

        /// Says the daemon stops serving (the daemon's side, at shutdown),
        /// or serves again (a restarted daemon that keeps the registry).
        pub fn set_stopped(&self, stopped: bool) {
            self.word(STOPPED_AT)
                .store(u64::from(stopped), Ordering::Release);
        }
    }

    impl<'a> std::ops::Deref for HeaderWriter<'a> {
        type Target = Header<'a, ReadWrite>;
        fn deref(&self) -> &Header<'a, ReadWrite> {
            &self.reader
        }
    }
}
