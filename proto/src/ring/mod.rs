//! The layout of a session's rings and the two sides of the ring protocol.
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
//! After the pin table (see [`crate::pins`]) the session memory ends with
//! its *ready area* ([`READY_AREA`] bytes): one 64-byte line per daemon
//! worker, whose first 8 bytes are a `u64` *ready word*. A worker serves
//! only the rings it knows to be *active*; a ring with nothing to do for a
//! while is *parked* (NEED_WAKEUP set). A client that finds its ring parked
//! after publishing sets the ring's bit (`1 << (index % 64)`) in the ready
//! word of the ring's worker ([`ReadyWord::mark`]), then rings the session's
//! doorbell for that worker; the worker takes the word
//! ([`ReadyMask::take`]) and activates the rings it names. So a worker's
//! work follows the rings that have work, never the rings that exist.
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
//! CQ tail futex. The wake-up flags are ordered against the entries with
//! `SeqCst` fences on both sides (a Dekker pattern, see [`crate::handoff`]).
//!
//! Each side gets its own type, with only its own operations: a client holds
//! a [`ClientRing`] (write submissions, read completions, wait), the daemon a
//! [`ServerRing`] (read submissions, write completions, serve, sleep). Both
//! borrow the [`Mapping`] that holds the ring, so neither can outlive it; the
//! daemon's long-lived rings hold their mapping in an `Arc` and borrow a view
//! per use ([`SharedRing`]). The positions each side owns live in its own
//! counters ([`ClientCounters`], [`ServerCounters`]), never read back from
//! shared memory, where a hostile peer may write anything at any time.
//!
//! ```compile_fail
//! // A view cannot outlive its mapping.
//! use hreg_proto::{ring::Layout, shm::Mapping};
//! let layout = Layout { entries: 2, data_size: 64, max_rings: 1 };
//! let ring = {
//!     let map = Mapping::anonymous(layout.total_size()).unwrap();
//!     map.client_ring(layout, 0).unwrap()
//! };
//! let _ = ring.entries();
//! ```
//!
//! ```compile_fail
//! // A client's view has no server operations.
//! use hreg_proto::{ring::Layout, shm::Mapping};
//! let layout = Layout { entries: 2, data_size: 64, max_rings: 1 };
//! let map = Mapping::anonymous(layout.total_size()).unwrap();
//! let ring = map.client_ring(layout, 0).unwrap();
//! ring.reset();
//! ```
//!
//! ```compile_fail
//! // Rings live only in writable memory: no ring over a read-only mapping.
//! use hreg_proto::ring::Layout;
//! use hreg_proto::shm::{Mapping, ReadOnly};
//! fn ring(map: &Mapping<ReadOnly>) {
//!     let layout = Layout { entries: 2, data_size: 64, max_rings: 1 };
//!     let _ = map.client_ring(layout, 0);
//! }
//! ```

use crate::entry::ENTRY_SIZE;
use crate::handoff::{self, Words};
use crate::shm::{Mapping, ReadWrite};
use crate::sync::{AtomicU32, AtomicU64};
#[cfg(not(hreg_loom))]
use std::sync::Arc;

pub use crate::handoff::{CQ_WAITING, SQ_NEED_WAKEUP};

const SQ_HEAD: usize = 0;
const SQ_TAIL: usize = 64;
const CQ_HEAD: usize = 128;
const CQ_TAIL: usize = 192;
const SQ_FLAGS: usize = 256;
const CQ_FLAGS: usize = 320;
/// Header words (each on its own 64-byte line).
#[cfg(hreg_loom)]
pub(crate) const HEADER_WORDS: usize = 6;
/// Byte of an SQ entry where its stamp lies (`u16`, little-endian).
const SQE_STAMP_AT: usize = 10;
/// Byte of a CQ entry where its stamp lies.
const CQE_STAMP_AT: usize = 14;
/// Bytes before the SQ entries: one page, so the entries are page-aligned.
pub const HEADER_SIZE: usize = 4096;
const PAGE: usize = 4096;

/// Smallest data area a ring may have: room for a value larger than an
/// entry's inline area.
pub const MIN_DATA_SIZE: u32 = 64;

/// Completions a server publishes at a time within a long batch, so the
/// client reads the first ones while the rest are served.
pub const PUBLISH_EVERY: u32 = 16;

/// Bytes of a session memory's ready area, after its pin table: one 64-byte
/// line per worker ([`MAX_READY_WORDS`]), the ready word in its first 8
/// bytes.
pub const READY_AREA: usize = 4096;

/// Ready words in the ready area: the most workers a daemon may run.
pub const MAX_READY_WORDS: usize = READY_AREA / 64;

/// Bytes of a session's memory: its rings, its pin table of `pin_entries`
/// entries, then its ready area.
pub fn session_len(layout: &Layout, pin_entries: usize) -> usize {
    ready_area_offset(layout, pin_entries) + READY_AREA
}

/// Where a session memory's ready area starts (after the pin table).
pub fn ready_area_offset(layout: &Layout, pin_entries: usize) -> usize {
    crate::pins::session_len(layout, pin_entries)
}

/// The offset of worker `worker`'s ready word in a session's memory.
pub fn ready_word_offset(layout: &Layout, pin_entries: usize, worker: usize) -> usize {
    ready_area_offset(layout, pin_entries) + 64 * (worker % MAX_READY_WORDS)
}

/// The bit that names ring `index` in a ready word (rings 64 apart share a
/// bit: the worker then looks at each of them).
#[inline]
pub fn ready_bit(index: u32) -> u64 {
    1 << (index % 64)
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

/// Why a layout is unusable (its `Display` says what the field must be).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LayoutError {
    /// `entries` is not a power of two from 2 to 32768.
    #[error("a power of two from 2 to 32768")]
    Entries,
    /// `data_size` is not a multiple of 8 from [`MIN_DATA_SIZE`] to 1 GiB.
    #[error("a multiple of 8 from 64 to 1073741824")]
    DataSize,
    /// `max_rings` is not from 1 to 4096.
    #[error("1 to 4096")]
    Rings,
}

impl LayoutError {
    /// The setting this error is about, as the daemon's config names it.
    pub fn key(self) -> &'static str {
        match self {
            LayoutError::Entries => "ring_entries",
            LayoutError::DataSize => "data_size",
            LayoutError::Rings => "max_rings",
        }
    }
}

impl Layout {
    /// Checks every field against the protocol's ranges.
    pub fn validate(&self) -> Result<(), LayoutError> {
        if !self.entries.is_power_of_two() || !(2..=32768).contains(&self.entries) {
            return Err(LayoutError::Entries);
        }
        if !self.data_size.is_multiple_of(8) || !(MIN_DATA_SIZE..=1 << 30).contains(&self.data_size)
        {
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

/// The stamp that publishes the entry at `counter` in a ring of `entries`.
#[inline]
fn stamp(counter: u32, entries: u32) -> u16 {
    handoff::stamp(counter, entries)
}

/// One ring's memory, borrowed from its mapping. Every offset it computes
/// lies inside the ring (the mapping was checked to hold the whole ring
/// when the view was made).
#[derive(Clone, Copy)]
struct RingMem<'a> {
    map: &'a Mapping<ReadWrite>,
    /// Offset of the ring in the mapping.
    at: usize,
    layout: Layout,
}

impl<'a> RingMem<'a> {
    /// The view of ring `index` of `map`, if the layout is valid and the
    /// ring inside the mapping.
    fn new(map: &'a Mapping<ReadWrite>, layout: Layout, index: u32) -> Option<RingMem<'a>> {
        layout.validate().ok()?;
        if index >= layout.max_rings {
            return None;
        }
        let at = index as usize * layout.ring_stride();
        map.holds(at, layout.ring_stride())
            .then_some(RingMem { map, at, layout })
    }

    #[inline]
    fn word(&self, offset: usize) -> &'a AtomicU32 {
        self.map.u32_at(self.at + offset)
    }

    #[inline]
    fn words(&self) -> Words<'a> {
        Words {
            sq_head: self.word(SQ_HEAD),
            sq_tail: self.word(SQ_TAIL),
            cq_head: self.word(CQ_HEAD),
            cq_tail: self.word(CQ_TAIL),
            sq_flags: self.word(SQ_FLAGS),
            cq_flags: self.word(CQ_FLAGS),
        }
    }

    #[inline]
    fn slot(&self, counter: u32) -> usize {
        (counter & (self.layout.entries - 1)) as usize * ENTRY_SIZE
    }

    #[inline]
    fn sq_at(&self, counter: u32) -> usize {
        self.at + self.layout.sq_offset() + self.slot(counter)
    }

    #[inline]
    fn cq_at(&self, counter: u32) -> usize {
        self.at + self.layout.cq_offset() + self.slot(counter)
    }

    /// A copy of the entry at `offset`; its second word (which carries the
    /// stamp) is read first, with acquire ordering, so the rest is at least
    /// as new as the stamp seen.
    #[inline]
    fn read_entry(&self, offset: usize) -> [u8; ENTRY_SIZE] {
        let words = self.map.entry_at(offset);
        let mut out = [0u8; ENTRY_SIZE];
        out[8..16].copy_from_slice(&words[1].load(crate::sync::Ordering::Acquire).to_ne_bytes());
        for (i, word) in words.iter().enumerate().filter(|&(i, _)| i != 1) {
            out[i * 8..i * 8 + 8]
                .copy_from_slice(&word.load(crate::sync::Ordering::Relaxed).to_ne_bytes());
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
        let word = |i: usize| u64::from_ne_bytes(bytes[i * 8..i * 8 + 8].try_into().expect("8"));
        let words = self.map.entry_at(offset);
        for (i, cell) in words.iter().enumerate().filter(|&(i, _)| i != 1) {
            cell.store(word(i), crate::sync::Ordering::Relaxed);
        }
        words[1].store(word(1), crate::sync::Ordering::Release);
    }

    /// Whether the entry at `offset` carries `stamp` at byte `stamp_at`
    /// (acquire: if so, everything written before it is visible).
    #[inline]
    fn is_published(&self, offset: usize, stamp_at: usize, stamp: u16) -> bool {
        let word = self.map.entry_at(offset)[1]
            .load(crate::sync::Ordering::Acquire)
            .to_ne_bytes();
        u16::from_le_bytes([word[stamp_at - 8], word[stamp_at - 7]]) == stamp
    }

    #[inline]
    fn stamp(&self, counter: u32) -> u16 {
        stamp(counter, self.layout.entries)
    }

    /// Whether `[off, off + len)` lies inside the data area.
    #[inline]
    fn data_range_ok(&self, off: u32, len: usize) -> bool {
        (off as usize)
            .checked_add(len)
            .is_some_and(|end| end <= self.layout.data_size as usize)
    }

    #[cfg(not(hreg_loom))]
    #[inline]
    fn copy_from_data(&self, off: u32, out: &mut [u8]) -> bool {
        self.data_range_ok(off, out.len())
            && self
                .map
                .load(self.at + self.layout.data_offset() + off as usize, out)
    }

    #[cfg(not(hreg_loom))]
    #[inline]
    fn copy_to_data(&self, off: u32, bytes: &[u8]) -> bool {
        self.data_range_ok(off, bytes.len())
            && self
                .map
                .store(self.at + self.layout.data_offset() + off as usize, bytes)
    }
}

/// Rings and ready words exist only in writable memory (a session's).
impl Mapping<ReadWrite> {
    /// The client's side of a ready word at `offset` (RING_OPENED names
    /// it): `None` unless it lies 8-aligned inside this mapping.
    pub fn client_ready(&self, offset: usize) -> Option<ReadyWord<'_>> {
        self.ready_word_ok(offset)
            .then(|| ReadyWord(self.u64_at(offset)))
    }

    /// The daemon's side of a ready word at `offset`.
    pub fn server_ready(&self, offset: usize) -> Option<ReadyMask<'_>> {
        self.ready_word_ok(offset)
            .then(|| ReadyMask(self.u64_at(offset)))
    }

    fn ready_word_ok(&self, offset: usize) -> bool {
        offset.is_multiple_of(8) && self.holds(offset, 8)
    }

    /// The client's side of ring `index`: `None` if this mapping cannot
    /// hold it (too small, bad layout).
    pub fn client_ring(&self, layout: Layout, index: u32) -> Option<ClientRing<'_>> {
        RingMem::new(self, layout, index).map(|mem| ClientRing(Ring(mem)))
    }

    /// The daemon's side of ring `index`: `None` if this mapping cannot
    /// hold it.
    pub fn server_ring(&self, layout: Layout, index: u32) -> Option<ServerRing<'_>> {
        RingMem::new(self, layout, index).map(|mem| ServerRing(Ring(mem)))
    }
}

/// How a waiting side spins and sleeps: the caller's policy (a futex and a
/// clock in the client, loom's primitives in the model).
pub trait Park {
    /// Why a sleep failed and the wait must stop (for the client: the
    /// daemon went away, or an operating-system error).
    type Error;
    /// Called after each look that found nothing; true: stop spinning and
    /// sleep.
    fn spin(&mut self) -> bool;
    /// Sleeps while `word` still holds `seen` (a futex wait: a spurious or
    /// early return is fine).
    fn sleep(&mut self, word: &AtomicU32, seen: u32) -> Result<(), Self::Error>;
}

/// How a server wakes a client that sleeps on a ring's futex word.
pub trait Wake {
    /// Wakes whoever sleeps on `word`, the CQ tail (a futex wake that
    /// crosses processes).
    fn wake(&self, word: &AtomicU32);
}

/// The client's side of a session's ready word for one worker: it can only
/// name rings.
#[derive(Clone, Copy)]
pub struct ReadyWord<'a>(&'a AtomicU64);

impl ReadyWord<'_> {
    /// Names ring `index` as having new entries (call after
    /// [`ClientRing::flush`] said the ring is parked, then ring the
    /// doorbell if this returns true: false means an earlier mark's wake
    /// is still to be taken, and covers these entries).
    #[inline]
    pub fn mark(&self, index: u32) -> bool {
        handoff::mark_ready(self.0, ready_bit(index))
    }
}

/// The daemon's side of a session's ready word for one worker: it can only
/// take what clients named.
#[derive(Clone, Copy)]
pub struct ReadyMask<'a>(&'a AtomicU64);

impl ReadyMask<'_> {
    /// The bits set since the last take (the word is left 0). Take after
    /// draining the doorbell.
    #[inline]
    pub fn take(&self) -> u64 {
        handoff::take_ready(self.0)
    }
}

/// The client's positions in one ring: where its next submission goes and
/// which completion it reads next.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClientCounters {
    sq_tail: u32,
    cq_head: u32,
}

impl ClientCounters {
    /// Counters at these positions (a client that resumes, or a test that
    /// looks at a given position).
    pub fn at(sq_tail: u32, cq_head: u32) -> ClientCounters {
        ClientCounters { sq_tail, cq_head }
    }

    /// Where the next submission goes.
    pub fn sq_tail(&self) -> u32 {
        self.sq_tail
    }

    /// Which completion is read next.
    pub fn cq_head(&self) -> u32 {
        self.cq_head
    }

    /// Submissions written whose completions are not read yet.
    pub fn in_flight(&self) -> u32 {
        self.sq_tail.wrapping_sub(self.cq_head)
    }
}

/// What both sides of a ring may do: know its geometry and move bytes
/// through its data area. [`ClientRing`] and [`ServerRing`] dereference to
/// it.
#[derive(Clone, Copy)]
pub struct Ring<'a>(RingMem<'a>);

impl Ring<'_> {
    /// The geometry of the session's rings.
    pub fn layout(&self) -> Layout {
        self.0.layout
    }

    /// Entries in the SQ and in the CQ: the most requests in flight.
    pub fn entries(&self) -> u32 {
        self.0.layout.entries
    }

    /// Bytes of the ring's data area.
    pub fn data_size(&self) -> u32 {
        self.0.layout.data_size
    }

    /// Whether `[off, off + len)` lies inside the data area.
    pub fn data_range_ok(&self, off: u32, len: usize) -> bool {
        self.0.data_range_ok(off, len)
    }

    /// Copies `out.len()` bytes from the data area at `off`; false (nothing
    /// copied) when the range is outside it.
    #[cfg(not(hreg_loom))]
    pub fn copy_from_data(&self, off: u32, out: &mut [u8]) -> bool {
        self.0.copy_from_data(off, out)
    }

    /// Copies `bytes` into the data area at `off`; false (nothing copied)
    /// when the range is outside it.
    #[cfg(not(hreg_loom))]
    pub fn copy_to_data(&self, off: u32, bytes: &[u8]) -> bool {
        self.0.copy_to_data(off, bytes)
    }
}

/// The client's side of one ring.
#[derive(Clone, Copy)]
pub struct ClientRing<'a>(Ring<'a>);

impl<'a> std::ops::Deref for ClientRing<'a> {
    type Target = Ring<'a>;
    fn deref(&self) -> &Ring<'a> {
        &self.0
    }
}

impl<'a> ClientRing<'a> {
    /// Writes and publishes a submission (its stamp bytes are set here) at
    /// the next position. The caller keeps at most `entries` in flight.
    #[inline]
    pub fn push(&self, counters: &mut ClientCounters, bytes: &[u8; ENTRY_SIZE]) {
        let at = counters.sq_tail;
        self.0 .0.publish_entry(
            self.0 .0.sq_at(at),
            bytes,
            SQE_STAMP_AT,
            self.0 .0.stamp(at),
        );
        counters.sq_tail = at.wrapping_add(1);
    }

    /// Publishes the SQ tail after the submissions pushed so far; true when
    /// the daemon sleeps and its doorbell must be rung.
    #[inline]
    pub fn flush(&self, counters: &ClientCounters) -> bool {
        handoff::after_submissions(self.0 .0.words(), counters.sq_tail)
    }

    /// Whether the next completion is published.
    #[inline]
    pub fn ready(&self, counters: &ClientCounters) -> bool {
        let at = counters.cq_head;
        self.0
             .0
            .is_published(self.0 .0.cq_at(at), CQE_STAMP_AT, self.0 .0.stamp(at))
    }

    /// The next completion, if it is published (its slot is then the
    /// client's to release).
    #[inline]
    pub fn pop(&self, counters: &mut ClientCounters) -> Option<[u8; ENTRY_SIZE]> {
        if !self.ready(counters) {
            return None;
        }
        let entry = self.0 .0.read_entry(self.0 .0.cq_at(counters.cq_head));
        counters.cq_head = counters.cq_head.wrapping_add(1);
        Some(entry)
    }

    /// Hands the completion slots read so far back to the daemon.
    #[inline]
    pub fn release(&self, counters: &ClientCounters) {
        handoff::release_completions(self.0 .0.words(), counters.cq_head);
    }

    /// Waits until the next completion is published: polls while
    /// `park.spin()` says so, then announces that it sleeps and sleeps on
    /// the CQ tail, until it is.
    pub fn wait<P: Park>(&self, counters: &ClientCounters, park: &mut P) -> Result<(), P::Error> {
        loop {
            if self.ready(counters) {
                return Ok(());
            }
            if !park.spin() {
                continue;
            }
            let words = self.0 .0.words();
            let seen = handoff::completion_tail(words);
            let slept = if handoff::begin_completion_wait(words, || !self.ready(counters)) {
                park.sleep(words.cq_tail, seen)
            } else {
                Ok(())
            };
            handoff::end_completion_wait(words);
            slept?;
        }
    }
}

/// The daemon's positions in one ring: the next submission to serve, the
/// next completion to write, and the client's CQ head as last read (read
/// again only when the CQ looks full, so its line stays with the client).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServerCounters {
    sq_head: u32,
    cq_tail: u32,
    cq_head_seen: u32,
}

/// A ring whose counters make no sense: its session must close.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RingError {
    /// The client's CQ head is not within `entries` of the daemon's CQ
    /// tail, which no well-behaved client writes.
    #[error("CQ head outside the ring")]
    CqHead,
}

/// The daemon's side of one ring.
#[derive(Clone, Copy)]
pub struct ServerRing<'a>(Ring<'a>);

impl<'a> std::ops::Deref for ServerRing<'a> {
    type Target = Ring<'a>;
    fn deref(&self) -> &Ring<'a> {
        &self.0
    }
}

/// What [`ServerRing::serve`]'s caller did with a submission and the one
/// behind it.
#[derive(Debug, PartialEq, Eq)]
pub enum Answer<'r> {
    /// This submission's completion; the one behind is served on its own.
    One([u8; ENTRY_SIZE]),
    /// Both answered together: this one's completion, then the one
    /// behind's (which only that one's [`Behind`] gives, in the same call).
    Both([u8; ENTRY_SIZE], BehindAnswered<'r>),
}

/// The submission behind the one [`ServerRing::serve`] asks about (a copy,
/// already out of shared memory), offered to be answered with it.
#[derive(Debug)]
pub struct Behind<'r>(&'r [u8; ENTRY_SIZE]);

impl<'r> Behind<'r> {
    /// Its bytes.
    pub fn request(&self) -> &'r [u8; ENTRY_SIZE] {
        self.0
    }

    /// Answers it with the one in front ([`Answer::Both`]).
    pub fn answer(self, completion: [u8; ENTRY_SIZE]) -> BehindAnswered<'r> {
        BehindAnswered {
            completion,
            _behind: std::marker::PhantomData,
        }
    }
}

/// The completion of the submission behind, made from its [`Behind`]: an
/// answer of both exists only when there is a second submission.
#[derive(Debug, PartialEq, Eq)]
pub struct BehindAnswered<'r> {
    completion: [u8; ENTRY_SIZE],
    _behind: std::marker::PhantomData<&'r ()>,
}

impl<'a> ServerRing<'a> {
    /// Resets every counter, flag and entry to zero (before the ring is
    /// handed out, so no stamp of an earlier user looks published).
    pub fn reset(&self) {
        for offset in [SQ_HEAD, SQ_TAIL, CQ_HEAD, CQ_TAIL, SQ_FLAGS, CQ_FLAGS] {
            self.0
                 .0
                .word(offset)
                .store(0, crate::sync::Ordering::Relaxed);
        }
        for counter in 0..self.0 .0.layout.entries {
            for offset in [self.0 .0.sq_at(counter), self.0 .0.cq_at(counter)] {
                for word in self.0 .0.map.entry_at(offset) {
                    word.store(0, crate::sync::Ordering::Relaxed);
                }
            }
        }
    }

    /// Whether the next submission is published.
    #[inline]
    pub fn has_work(&self, counters: &ServerCounters) -> bool {
        let at = counters.sq_head;
        self.0
             .0
            .is_published(self.0 .0.sq_at(at), SQE_STAMP_AT, self.0 .0.stamp(at))
    }

    /// Whether the CQ has no room, by a fresh read of the client's CQ head.
    fn cq_full_now(&self, counters: &ServerCounters) -> bool {
        let cq_head = handoff::completions_consumed(self.0 .0.words());
        counters.cq_tail.wrapping_sub(cq_head) >= self.entries()
    }

    /// Serves what the ring holds, as far as the CQ has room and at most
    /// `max` entries (at least one is served when there is work): `answer` gets
    /// a copy of each submission (already out of shared memory) and, when
    /// the one behind it is published and there is room for both, a copy
    /// of that one too (read once: if not answered with this one, it is the
    /// next call's submission); it answers this one alone or both
    /// ([`Answer`]). Completions are published every [`PUBLISH_EVERY`]
    /// and at the end, waking the client through `waker` when it sleeps.
    /// Returns how many were served, or why the session must close.
    pub fn serve(
        &self,
        counters: &mut ServerCounters,
        waker: &impl Wake,
        max: u32,
        mut answer: impl for<'r> FnMut(&'r [u8; ENTRY_SIZE], Option<Behind<'r>>) -> Answer<'r>,
    ) -> Result<u32, RingError> {
        if !self.has_work(counters) {
            return Ok(0);
        }
        let entries = self.entries();
        // A fresh look at the client's CQ head when the last one leaves
        // room for less than a pair (a submission and the one behind).
        if counters.cq_tail.wrapping_sub(counters.cq_head_seen) + 2 > entries {
            let cq_head = handoff::completions_consumed(self.0 .0.words());
            if counters.cq_tail.wrapping_sub(cq_head) > entries {
                return Err(RingError::CqHead);
            }
            counters.cq_head_seen = cq_head;
        }
        let room = (entries - counters.cq_tail.wrapping_sub(counters.cq_head_seen)).min(max.max(1));
        let ring = &self.0 .0;
        let (mut served, mut unpublished) = (0, 0);
        // The submission at sq_head, when it was read as the one behind.
        let mut read_ahead = None;
        while served < room {
            let request = match read_ahead.take() {
                Some(request) => request,
                None if self.has_work(counters) => ring.read_entry(ring.sq_at(counters.sq_head)),
                None => break,
            };
            let behind = counters.sq_head.wrapping_add(1);
            let next = (served + 1 < room
                && ring.is_published(ring.sq_at(behind), SQE_STAMP_AT, ring.stamp(behind)))
            .then(|| ring.read_entry(ring.sq_at(behind)));
            let completions = match answer(&request, next.as_ref().map(Behind)) {
                Answer::One(completion) => {
                    read_ahead = next;
                    [Some(completion), None]
                }
                Answer::Both(first, second) => [Some(first), Some(second.completion)],
            };
            for completion in completions.iter().flatten() {
                let at = counters.cq_tail;
                ring.publish_entry(ring.cq_at(at), completion, CQE_STAMP_AT, ring.stamp(at));
                counters.sq_head = counters.sq_head.wrapping_add(1);
                counters.cq_tail = at.wrapping_add(1);
                served += 1;
                unpublished += 1;
            }
            if unpublished >= PUBLISH_EVERY {
                self.publish(counters, waker);
                unpublished = 0;
            }
        }
        if unpublished > 0 {
            self.publish(counters, waker);
        }
        Ok(served)
    }

    /// Takes up to `max` published submissions without completing them:
    /// `apply` gets a copy of each. For a ring whose session ends: what its
    /// client posted is applied before the daemon cleans up after it, and
    /// no completion is written (nobody reads them; the CQ may be full).
    /// A well-behaved client has at most `entries` unserved.
    pub fn drain(
        &self,
        counters: &mut ServerCounters,
        max: u32,
        mut apply: impl FnMut(&[u8; ENTRY_SIZE]),
    ) -> u32 {
        let mut taken = 0;
        while taken < max && self.has_work(counters) {
            let request = self.0 .0.read_entry(self.0 .0.sq_at(counters.sq_head));
            apply(&request);
            counters.sq_head = counters.sq_head.wrapping_add(1);
            taken += 1;
        }
        taken
    }

    fn publish(&self, counters: &ServerCounters, waker: &impl Wake) {
        let words = self.0 .0.words();
        if handoff::publish_completions(words, counters.sq_head, counters.cq_tail) {
            waker.wake(words.cq_tail);
        }
    }

    /// Announces that the server will sleep (NEED_WAKEUP), then looks once
    /// more: false when there is work after all (don't sleep). A ring whose
    /// CQ is full has none: it cannot be served until its client frees
    /// completions, and a client that wants service rings the doorbell (a
    /// well-behaved one never has more in flight than its CQ holds). Call
    /// [`ServerRing::end_sleep`] when done waiting either way.
    pub fn prepare_sleep(&self, counters: &ServerCounters) -> bool {
        handoff::begin_submission_wait(self.0 .0.words(), || {
            !self.has_work(counters) || self.cq_full_now(counters)
        })
    }

    /// Clears NEED_WAKEUP after [`ServerRing::prepare_sleep`], whether the
    /// server slept or not.
    pub fn end_sleep(&self) {
        handoff::end_submission_wait(self.0 .0.words());
    }
}

/// A ring the daemon serves for a long time: its mapping held alive by an
/// `Arc`, its server counters, and a view borrowed per use.
#[cfg(not(hreg_loom))]
pub struct SharedRing {
    map: Arc<Mapping<ReadWrite>>,
    layout: Layout,
    index: u32,
    counters: ServerCounters,
}

#[cfg(not(hreg_loom))]
impl SharedRing {
    /// Ring `index` of `map`, if the mapping holds it.
    pub fn new(map: Arc<Mapping<ReadWrite>>, layout: Layout, index: u32) -> Option<SharedRing> {
        map.server_ring(layout, index)?;
        Some(SharedRing {
            map,
            layout,
            index,
            counters: ServerCounters::default(),
        })
    }

    /// The ring's index in its session's memory.
    pub fn index(&self) -> u32 {
        self.index
    }

    /// The view and the counters, for one use.
    pub fn get(&mut self) -> (ServerRing<'_>, &mut ServerCounters) {
        let ring = self
            .map
            .server_ring(self.layout, self.index)
            .expect("checked in new");
        (ring, &mut self.counters)
    }

    /// The view alone.
    pub fn view(&self) -> ServerRing<'_> {
        self.map
            .server_ring(self.layout, self.index)
            .expect("checked in new")
    }

    /// The server's positions in the ring, to look at without serving.
    pub fn counters(&self) -> &ServerCounters {
        &self.counters
    }
}

#[cfg(all(test, not(hreg_loom)))]
mod tests {
    use super::*;

    const LAYOUT: Layout = Layout {
        entries: 4,
        data_size: 64,
        max_rings: 2,
    };

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
        let bad = |l: Layout| l.validate().unwrap_err();
        assert_eq!(
            bad(Layout {
                entries: 3,
                ..layout
            }),
            LayoutError::Entries
        );
        assert_eq!(
            bad(Layout {
                data_size: 7,
                ..layout
            }),
            LayoutError::DataSize
        );
        assert_eq!(
            bad(Layout {
                data_size: 56,
                ..layout
            }),
            LayoutError::DataSize
        );
        assert_eq!(
            bad(Layout {
                max_rings: 0,
                ..layout
            }),
            LayoutError::Rings
        );
        assert_eq!(LayoutError::Rings.key(), "max_rings");
    }

    struct Counted(std::cell::Cell<u32>);
    impl Wake for Counted {
        fn wake(&self, _: &AtomicU32) {
            self.0.set(self.0.get() + 1);
        }
    }

    fn entry(tag: u8) -> [u8; ENTRY_SIZE] {
        let mut e = [0u8; ENTRY_SIZE];
        e[0] = tag;
        e[20] = tag;
        e
    }

    #[test]
    fn requests_and_completions_travel_and_laps_are_told_apart() {
        let map = Mapping::anonymous(LAYOUT.total_size()).unwrap();
        let client = map.client_ring(LAYOUT, 1).unwrap();
        let server = map.server_ring(LAYOUT, 1).unwrap();
        let (mut c, mut s) = (ClientCounters::default(), ServerCounters::default());
        let waker = Counted(std::cell::Cell::new(0));
        for round in 0..3u8 {
            for k in 0..4 {
                client.push(&mut c, &entry(round * 4 + k));
            }
            assert!(!client.flush(&c), "nobody sleeps");
            let served = server
                .serve(&mut s, &waker, u32::MAX, |req, _| {
                    let mut done = *req;
                    done[1] = 0xAA;
                    Answer::One(done)
                })
                .unwrap();
            assert_eq!(served, 4);
            for k in 0..4 {
                let got = client.pop(&mut c).expect("published");
                assert_eq!(
                    (got[0], got[1], got[20]),
                    (round * 4 + k, 0xAA, round * 4 + k)
                );
            }
            assert!(
                client.pop(&mut c).is_none(),
                "the next lap is not published"
            );
            client.release(&c);
        }
        assert_eq!(waker.0.get(), 0);
        // A full CQ stops the server until the client frees completions.
        for k in 0..4 {
            client.push(&mut c, &entry(k));
        }
        assert_eq!(
            server
                .serve(&mut s, &waker, u32::MAX, |r, _| Answer::One(*r))
                .unwrap(),
            4
        );
        assert!(!server.has_work(&s));
        assert!(server.prepare_sleep(&s));
        server.end_sleep();
        server.reset();
        assert!(!server.has_work(&ServerCounters::default()));
    }

    #[test]
    fn a_submission_answered_with_the_one_behind_completes_both_in_order() {
        let map = Mapping::anonymous(LAYOUT.total_size()).unwrap();
        let client = map.client_ring(LAYOUT, 0).unwrap();
        let server = map.server_ring(LAYOUT, 0).unwrap();
        let (mut c, mut s) = (ClientCounters::default(), ServerCounters::default());
        let waker = Counted(std::cell::Cell::new(0));
        for k in 1..=3 {
            client.push(&mut c, &entry(k));
        }
        client.flush(&c);
        // 1 and 2 together; 3 has nothing behind it.
        let mut seen = Vec::new();
        let served = server
            .serve(&mut s, &waker, u32::MAX, |req, behind| {
                seen.push((req[0], behind.as_ref().map(|b| b.request()[0])));
                match behind {
                    Some(b) if req[0] == 1 => {
                        let second = *b.request();
                        Answer::Both(*req, b.answer(second))
                    }
                    _ => Answer::One(*req),
                }
            })
            .unwrap();
        assert_eq!(served, 3);
        assert_eq!(seen, [(1, Some(2)), (3, None)]);
        for k in 1..=3 {
            assert_eq!(client.pop(&mut c).expect("completed")[0], k);
        }
        client.release(&c);
        // Room for one: the one behind is not read ahead.
        for k in 4..=5 {
            client.push(&mut c, &entry(k));
        }
        client.flush(&c);
        let mut seen = Vec::new();
        let once = |seen: &mut Vec<_>, s: &mut ServerCounters| {
            server
                .serve(s, &waker, 1, |req, behind| {
                    seen.push((req[0], behind.is_some()));
                    Answer::One(*req)
                })
                .unwrap()
        };
        assert_eq!(once(&mut seen, &mut s), 1);
        assert_eq!(once(&mut seen, &mut s), 1);
        assert_eq!(seen, [(4, false), (5, false)]);
    }

    #[test]
    fn a_server_asleep_is_woken_and_a_lying_cq_head_closes() {
        let map = Mapping::anonymous(LAYOUT.total_size()).unwrap();
        let client = map.client_ring(LAYOUT, 0).unwrap();
        let server = map.server_ring(LAYOUT, 0).unwrap();
        let (mut c, mut s) = (ClientCounters::default(), ServerCounters::default());
        assert!(server.prepare_sleep(&s), "idle");
        client.push(&mut c, &entry(1));
        assert!(client.flush(&c), "the server announced its sleep");
        server.end_sleep();
        let waker = Counted(std::cell::Cell::new(0));
        assert_eq!(
            server
                .serve(&mut s, &waker, u32::MAX, |r, _| Answer::One(*r))
                .unwrap(),
            1
        );
        // The client claims to have read completions it never got.
        map.u32_at(CQ_HEAD)
            .store(1000, crate::sync::Ordering::Relaxed);
        for k in 0..4 {
            client.push(&mut c, &entry(k));
        }
        s.cq_head_seen = s.cq_tail.wrapping_sub(4);
        assert_eq!(
            server.serve(&mut s, &waker, u32::MAX, |r, _| Answer::One(*r)),
            Err(RingError::CqHead)
        );
    }

    #[test]
    fn data_areas_are_bounded_and_views_need_a_writable_mapping() {
        let map = Mapping::anonymous(LAYOUT.total_size()).unwrap();
        let client = map.client_ring(LAYOUT, 0).unwrap();
        let server = map.server_ring(LAYOUT, 0).unwrap();
        assert!(client.copy_to_data(60, &[1, 2, 3, 4]));
        assert!(!client.copy_to_data(61, &[1, 2, 3, 4]));
        let mut out = [0u8; 4];
        assert!(server.copy_from_data(60, &mut out));
        assert_eq!(out, [1, 2, 3, 4]);
        assert!(!server.copy_from_data(u32::MAX, &mut out));
        assert!(map.client_ring(LAYOUT, 2).is_none());
        let small = Mapping::anonymous(LAYOUT.ring_stride() - 1).unwrap();
        assert!(small.server_ring(LAYOUT, 0).is_none());
        let shared = SharedRing::new(Arc::new(map), LAYOUT, 1).unwrap();
        assert_eq!(shared.index(), 1);
    }
}
