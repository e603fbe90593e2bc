//! The layout of a session's shared memory and safe access to one ring in it.
//!
//! A session's memfd holds `max_rings` rings, `ring_stride` bytes apart. Each
//! ring is:
//!
//! ```text
//! offset  0      SQ head   u32  written by the daemon
//! offset  64     SQ tail   u32  written by the client
//! offset  128    CQ head   u32  written by the client
//! offset  192    CQ tail   u32  written by the daemon; the client's futex word
//! offset  256    SQ flags  u32  written by the daemon (NEED_WAKEUP)
//! offset  320    CQ flags  u32  written by the client (WAITING)
//! offset  4096   SQ: entries × 64 bytes
//!         ...    CQ: entries × 64 bytes
//!         ...    data area: data_size bytes
//! ```
//!
//! Positions are free-running `u32` counters; an entry lives at
//! `counter % entries`. An entry is published by its *stamp* (the lap
//! `counter / entries`, plus one, as a `u16`), stored last with release
//! ordering in the entry's own second word; the consumer polls that word with
//! acquire loads. So a request or a completion crosses between the processes
//! in the one cache line that carries it, with no separate tail to fetch on
//! the way. Heads and tails are still kept, io_uring style, each on its own
//! cache line and owned by one side (the client: SQ tail, CQ head; the
//! daemon: SQ head, CQ tail), published with release stores: the daemon reads
//! the CQ head when its copy says the CQ is full, and the client sleeps on the
//! CQ tail futex. The wake-up flags are ordered against the entries with `SeqCst`
//! fences on both sides (a Dekker pattern, see [`crate::handoff`]).
//!
//! This module is the only place where ring memory is touched. Everything read
//! from it may have been written by a hostile process at any moment, so it is
//! read with atomic loads (never as a Rust reference to plain bytes) and the
//! callers validate what they get.

use crate::entry::ENTRY_SIZE;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

pub use crate::handoff::{CQ_WAITING, SQ_NEED_WAKEUP};

const SQ_HEAD: usize = 0;
const SQ_TAIL: usize = 64;
const CQ_HEAD: usize = 128;
const CQ_TAIL: usize = 192;
const SQ_FLAGS: usize = 256;
const CQ_FLAGS: usize = 320;
/// Byte of an SQ entry where its stamp lies (`u16`, little-endian).
const SQE_STAMP_AT: usize = 10;
/// Byte of a CQ entry where its stamp lies.
const CQE_STAMP_AT: usize = 14;
/// Bytes before the SQ entries: one page, so the entries are page-aligned.
pub const HEADER_SIZE: usize = 4096;
const PAGE: usize = 4096;

/// Which counter or flag word of a ring.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Word {
    SqHead,
    SqTail,
    CqHead,
    CqTail,
    SqFlags,
    CqFlags,
}

impl Word {
    #[inline]
    fn offset(self) -> usize {
        match self {
            Word::SqHead => SQ_HEAD,
            Word::SqTail => SQ_TAIL,
            Word::CqHead => CQ_HEAD,
            Word::CqTail => CQ_TAIL,
            Word::SqFlags => SQ_FLAGS,
            Word::CqFlags => CQ_FLAGS,
        }
    }
}

/// The geometry of a session's rings, as WELCOME announces it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    /// Entries per SQ and per CQ; a power of two.
    pub entries: u32,
    /// Bytes of each ring's data area; a multiple of 8.
    pub data_size: u32,
    /// Rings in the session's memory.
    pub max_rings: u32,
}

/// Why a layout is unusable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LayoutError {
    #[error("ring entries must be a power of two between 2 and 32768")]
    Entries,
    #[error("data area must be a multiple of 8 bytes, at most 1 GiB")]
    DataSize,
    #[error("rings per session must be between 1 and 4096")]
    Rings,
}

impl Layout {
    pub fn validate(&self) -> Result<(), LayoutError> {
        if !self.entries.is_power_of_two() || !(2..=32768).contains(&self.entries) {
            return Err(LayoutError::Entries);
        }
        if !self.data_size.is_multiple_of(8) || self.data_size > 1 << 30 {
            return Err(LayoutError::DataSize);
        }
        if !(1..=4096).contains(&self.max_rings) {
            return Err(LayoutError::Rings);
        }
        Ok(())
    }

    #[inline]
    fn sq_offset(&self) -> usize {
        HEADER_SIZE
    }

    #[inline]
    fn cq_offset(&self) -> usize {
        HEADER_SIZE + self.entries as usize * ENTRY_SIZE
    }

    #[inline]
    fn data_offset(&self) -> usize {
        HEADER_SIZE + 2 * self.entries as usize * ENTRY_SIZE
    }

    /// Bytes from one ring's start to the next (page-aligned).
    pub fn ring_stride(&self) -> usize {
        (self.data_offset() + self.data_size as usize).div_ceil(PAGE) * PAGE
    }

    /// Size of the whole session memory.
    pub fn total_size(&self) -> usize {
        self.ring_stride() * self.max_rings as usize
    }
}

/// Access to one ring inside a mapped session memory.
///
/// Invariant (kept by [`RingView::new`]'s caller): `base` points to
/// `layout.ring_stride()` bytes that stay mapped, readable and writable, and
/// page-aligned, for as long as the view exists. Another process may write any
/// of those bytes at any time; the view never forms a Rust reference to them
/// except through atomics.
#[derive(Clone, Copy, Debug)]
pub struct RingView {
    base: *mut u8,
    layout: Layout,
}

// SAFETY: a RingView is a pointer into shared memory accessed only through
// atomic operations and bounds-checked raw copies; moving it between threads
// is no different from sharing it between processes.
unsafe impl Send for RingView {}
// SAFETY: as above; every access is atomic or a raw copy of racy bytes.
unsafe impl Sync for RingView {}

impl RingView {
    /// # Safety
    /// `base` must point to `layout.ring_stride()` bytes, page-aligned, that
    /// remain mapped read/write for the lifetime of the view and of every copy
    /// of it.
    pub unsafe fn new(base: *mut u8, layout: Layout) -> RingView {
        RingView { base, layout }
    }

    #[inline]
    pub fn layout(&self) -> Layout {
        self.layout
    }

    #[inline]
    pub fn entries(&self) -> u32 {
        self.layout.entries
    }

    #[inline]
    pub fn data_size(&self) -> u32 {
        self.layout.data_size
    }

    /// One of the ring's counter or flag words.
    #[inline]
    pub fn word(&self, which: Word) -> &AtomicU32 {
        // SAFETY: the offset is inside the header page, 4-byte aligned, and
        // the memory stays mapped for the view's lifetime (type invariant).
        // AtomicU32 has the same layout as u32 and tolerates concurrent
        // writers in other processes.
        unsafe { &*(self.base.add(which.offset()) as *const AtomicU32) }
    }

    /// The six shared words, for the ordering protocol in [`crate::handoff`].
    #[inline]
    pub fn words(&self) -> crate::handoff::Words<'_> {
        crate::handoff::Words {
            sq_head: self.word(Word::SqHead),
            sq_tail: self.word(Word::SqTail),
            cq_head: self.word(Word::CqHead),
            cq_tail: self.word(Word::CqTail),
            sq_flags: self.word(Word::SqFlags),
            cq_flags: self.word(Word::CqFlags),
        }
    }

    #[inline]
    fn entry_words(&self, offset: usize) -> &[AtomicU64; ENTRY_SIZE / 8] {
        // SAFETY: callers pass the offset of an entry inside the SQ or CQ
        // array, which is 64-byte aligned within the mapping (type invariant).
        unsafe { &*(self.base.add(offset) as *const [AtomicU64; ENTRY_SIZE / 8]) }
    }

    /// A copy of the entry at `offset`; its second word (which carries the
    /// stamp) is read first, with acquire ordering, so the rest is at least
    /// as new as the stamp seen.
    #[inline]
    fn read_entry(&self, offset: usize) -> [u8; ENTRY_SIZE] {
        let words = self.entry_words(offset);
        let mut out = [0u8; ENTRY_SIZE];
        out[8..16].copy_from_slice(&words[1].load(Ordering::Acquire).to_ne_bytes());
        for (i, word) in words.iter().enumerate().filter(|&(i, _)| i != 1) {
            out[i * 8..i * 8 + 8].copy_from_slice(&word.load(Ordering::Relaxed).to_ne_bytes());
        }
        out
    }

    /// Writes the entry at `offset` with `stamp` at byte `stamp_at`, the
    /// second word (which holds it) last, with release ordering: the entry
    /// is published whole.
    #[inline]
    fn publish_entry(&self, offset: usize, bytes: &[u8; ENTRY_SIZE], stamp_at: usize, stamp: u16) {
        let mut bytes = *bytes;
        bytes[stamp_at..stamp_at + 2].copy_from_slice(&stamp.to_le_bytes());
        let words = self.entry_words(offset);
        for (i, word) in words.iter().enumerate().filter(|&(i, _)| i != 1) {
            word.store(
                u64::from_ne_bytes(bytes[i * 8..i * 8 + 8].try_into().expect("8")),
                Ordering::Relaxed,
            );
        }
        words[1].store(
            u64::from_ne_bytes(bytes[8..16].try_into().expect("8")),
            Ordering::Release,
        );
    }

    /// Whether the entry at `offset` carries `stamp` at byte `stamp_at`
    /// (acquire: if so, everything written before it is visible).
    #[inline]
    fn is_published(&self, offset: usize, stamp_at: usize, stamp: u16) -> bool {
        let word = self.entry_words(offset)[1]
            .load(Ordering::Acquire)
            .to_ne_bytes();
        u16::from_le_bytes([word[stamp_at - 8], word[stamp_at - 7]]) == stamp
    }

    #[inline]
    fn slot(&self, counter: u32) -> usize {
        (counter & (self.layout.entries - 1)) as usize * ENTRY_SIZE
    }

    #[inline]
    fn sq_at(&self, counter: u32) -> usize {
        self.layout.sq_offset() + self.slot(counter)
    }

    #[inline]
    fn cq_at(&self, counter: u32) -> usize {
        self.layout.cq_offset() + self.slot(counter)
    }

    /// The stamp that publishes the entry at `counter`.
    #[inline]
    pub fn stamp(&self, counter: u32) -> u16 {
        crate::handoff::stamp(counter, self.layout.entries)
    }

    /// Whether the client has published the SQ entry at `counter`.
    #[inline]
    pub fn sqe_published(&self, counter: u32) -> bool {
        self.is_published(self.sq_at(counter), SQE_STAMP_AT, self.stamp(counter))
    }

    /// A copy of the SQ entry at free-running position `counter`.
    #[inline]
    pub fn read_sqe(&self, counter: u32) -> [u8; ENTRY_SIZE] {
        self.read_entry(self.sq_at(counter))
    }

    /// Writes and publishes the SQ entry at `counter` (its stamp bytes are
    /// set here, whatever `bytes` holds there).
    #[inline]
    pub fn write_sqe(&self, counter: u32, bytes: &[u8; ENTRY_SIZE]) {
        self.publish_entry(
            self.sq_at(counter),
            bytes,
            SQE_STAMP_AT,
            self.stamp(counter),
        )
    }

    /// Whether the daemon has published the CQ entry at `counter`.
    #[inline]
    pub fn cqe_published(&self, counter: u32) -> bool {
        self.is_published(self.cq_at(counter), CQE_STAMP_AT, self.stamp(counter))
    }

    #[inline]
    pub fn read_cqe(&self, counter: u32) -> [u8; ENTRY_SIZE] {
        self.read_entry(self.cq_at(counter))
    }

    /// Writes and publishes the CQ entry at `counter`.
    #[inline]
    pub fn write_cqe(&self, counter: u32, bytes: &[u8; ENTRY_SIZE]) {
        self.publish_entry(
            self.cq_at(counter),
            bytes,
            CQE_STAMP_AT,
            self.stamp(counter),
        )
    }

    /// Whether `[off, off + len)` lies inside the data area.
    #[inline]
    pub fn data_range_ok(&self, off: u32, len: usize) -> bool {
        (off as usize)
            .checked_add(len)
            .is_some_and(|end| end <= self.layout.data_size as usize)
    }

    /// Copies `out.len()` bytes from the data area at `off`. Returns false,
    /// copying nothing, when the range is outside the data area.
    #[inline]
    pub fn copy_from_data(&self, off: u32, out: &mut [u8]) -> bool {
        if !self.data_range_ok(off, out.len()) {
            return false;
        }
        // SAFETY: the range is inside the data area (checked above), which is
        // inside the mapping (type invariant). The bytes may change while we
        // copy; the copy is then garbage that the reader validates, never a
        // reference into shared memory.
        unsafe {
            let src = self.base.add(self.layout.data_offset() + off as usize);
            crate::atomic_copy::load(src, out);
        }
        true
    }

    /// Copies `bytes` into the data area at `off`. Returns false, copying
    /// nothing, when the range is outside the data area.
    #[inline]
    pub fn copy_to_data(&self, off: u32, bytes: &[u8]) -> bool {
        if !self.data_range_ok(off, bytes.len()) {
            return false;
        }
        // SAFETY: bounds checked above; the destination is shared memory that
        // no Rust reference points into.
        unsafe {
            let dst = self.base.add(self.layout.data_offset() + off as usize);
            crate::atomic_copy::store(dst, bytes);
        }
        true
    }

    /// Resets every counter, flag and entry to zero (the daemon does this
    /// before it hands a ring out, so no stamp of an earlier user of the ring
    /// looks published).
    pub fn reset(&self) {
        for word in [
            Word::SqHead,
            Word::SqTail,
            Word::CqHead,
            Word::CqTail,
            Word::SqFlags,
            Word::CqFlags,
        ] {
            self.word(word).store(0, Ordering::Relaxed);
        }
        for counter in 0..self.layout.entries {
            for offset in [self.sq_at(counter), self.cq_at(counter)] {
                for word in self.entry_words(offset) {
                    word.store(0, Ordering::Relaxed);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_is_page_aligned_and_checked() {
        let layout = Layout {
            entries: 256,
            data_size: 256 * 1024,
            max_rings: 64,
        };
        layout.validate().unwrap();
        assert_eq!(layout.ring_stride() % PAGE, 0);
        assert!(layout.ring_stride() >= HEADER_SIZE + 2 * 256 * 64 + 256 * 1024);
        assert_eq!(
            Layout {
                entries: 3,
                ..layout
            }
            .validate(),
            Err(LayoutError::Entries)
        );
        assert_eq!(
            Layout {
                data_size: 7,
                ..layout
            }
            .validate(),
            Err(LayoutError::DataSize)
        );
        assert_eq!(
            Layout {
                max_rings: 0,
                ..layout
            }
            .validate(),
            Err(LayoutError::Rings)
        );
    }

    #[test]
    fn entries_and_data_round_trip_in_memory() {
        let layout = Layout {
            entries: 4,
            data_size: 64,
            max_rings: 1,
        };
        let mut memory = vec![0u64; layout.ring_stride() / 8];
        // SAFETY: the Vec outlives the view and is large enough; u64 alignment
        // suffices for the atomics used.
        let view = unsafe { RingView::new(memory.as_mut_ptr().cast(), layout) };
        let entry = [7u8; ENTRY_SIZE];
        // Position 5 is slot 1 on the second lap: stamp 2.
        assert!(!view.sqe_published(5));
        view.write_sqe(5, &entry);
        assert!(view.sqe_published(5));
        assert!(!view.sqe_published(1), "the first lap's stamp differs");
        let mut stamped = entry;
        stamped[10..12].copy_from_slice(&2u16.to_le_bytes());
        assert_eq!(view.read_sqe(1), stamped);
        view.write_cqe(0, &entry);
        assert!(view.cqe_published(0) && !view.cqe_published(4));
        view.reset();
        assert!(!view.sqe_published(5) && !view.cqe_published(0));
        assert!(view.copy_to_data(60, &[1, 2, 3, 4]));
        assert!(!view.copy_to_data(61, &[1, 2, 3, 4]));
        let mut out = [0u8; 4];
        assert!(view.copy_from_data(60, &mut out));
        assert_eq!(out, [1, 2, 3, 4]);
        assert!(!view.copy_from_data(u32::MAX, &mut out));
    }
}
