//! Borrowed references and what they hold back: the pin table of a
//! session, and the protocol by which a client pins a value block and the
//! daemon learns which retired blocks it may not reuse yet (hazard
//! pointers across processes, after Michael 2004, folly's `hazptr` and the
//! `haphazard` crate).
//!
//! The table lies in the session's memory (which the client writes), at the
//! offset WELCOME names:
//!
//! ```text
//! offset 0          entries used so far (u64): a high-water mark the
//!                   client raises when it first uses an entry past it (a
//!                   hint: the daemon reads entries below it, clamped to the
//!                   table)
//! offset 64         bytes of the values longer than [`UNTALLIED`] the client
//!                   holds pinned (u64): the client's own tally against its
//!                   byte budget (WELCOME's `pin bytes`); the daemon never
//!                   reads it
//! offset 128        PIN_ENTRIES × u64: 0 free, else the name of one pinned
//!                   block and how many borrows share it ([`PinName`])
//! offset 128 + 8 N  PIN_ENTRIES × u64: the bytes entry i was charged to the
//!                   tally when it was claimed (the client's; never read by
//!                   the daemon)
//! ```
//!
//! A pin names one block (domain, heap chunk, offset), never an epoch, so
//! what a session holds back is the blocks its pins name and nothing else.
//! Borrows of one block share its entry (a count in the entry): a session
//! may hold [`PIN_ENTRIES`] distinct blocks, each borrowed many times, and
//! its tally counts each block once. To borrow a value
//! ([`ClientPins::borrow`]) the client finds the block in its slot, claims
//! the block's entry (looking from a place the name hashes to: an entry
//! naming the block gets one more borrow; a free one is claimed for it),
//! issues a `SeqCst` fence, and reads the slot again: if the slot still
//! names the block, the block keeps its bytes until the entry is cleared
//! (its last borrow's [`Pin`] guard drops: a release compare-and-swap to
//! 0). The daemon, when a block leaves its slot, writes the slot's new
//! version, fences ([`retired`]), and puts the block on a retired list; a
//! reclamation pass fences ([`begin_scan`]), reads the tables of the
//! sessions that may map the block's domain ([`PinScan`]) and frees every
//! retired block that no entry names. Either the client's second read sees
//! the block gone, or the daemon's scan sees the pin: never neither. A
//! client can only harm itself by lying in its table (its own borrowed
//! bytes may change): the daemon honours at most [`honoured_bytes`] of
//! held-back blocks per session and ignores domains the session cannot
//! map.
//!
//! Each side gets only its own operations: a client claims entries through
//! [`ClientPins`] and holds each as a [`Pin`] guard that unpins when it
//! drops; the daemon only reads, through [`PinScan`].
//!
//! ```compile_fail
//! // A pin cannot be dropped without unpinning: discarding the guard
//! // unpins at once, and the compiler refuses to let that pass unseen.
//! #![deny(unused_must_use)]
//! use hreg_proto::pins::{pin_table_len, ClientPins, PinName};
//! use hreg_proto::shm::Mapping;
//! use hreg_proto::table::HeapAddress;
//! let map = Mapping::anonymous(pin_table_len(8)).unwrap();
//! let pins = ClientPins::new(&map, 0, 8, 1 << 20).unwrap();
//! let name = PinName::new(0, HeapAddress { chunk: 0, offset: 64 }).unwrap();
//! pins.pin(name, 100);
//! ```
//!
//! ```compile_fail
//! // A pin is not a token to copy and clear by hand: it is released once,
//! // by its guard.
//! use hreg_proto::pins::{pin_table_len, ClientPins, PinName};
//! use hreg_proto::shm::Mapping;
//! use hreg_proto::table::HeapAddress;
//! let map = Mapping::anonymous(pin_table_len(8)).unwrap();
//! let pins = ClientPins::new(&map, 0, 8, 1 << 20).unwrap();
//! let name = PinName::new(0, HeapAddress { chunk: 0, offset: 64 }).unwrap();
//! let pin = pins.pin(name, 100).unwrap();
//! let kept = pin;
//! drop(pin);
//! ```
//!
//! ```compile_fail
//! // A pin cannot outlive the mapping of its table.
//! use hreg_proto::pins::{pin_table_len, ClientPins, PinName};
//! use hreg_proto::shm::Mapping;
//! use hreg_proto::table::HeapAddress;
//! let name = PinName::new(0, HeapAddress { chunk: 0, offset: 64 }).unwrap();
//! let pin = {
//!     let map = Mapping::anonymous(pin_table_len(8)).unwrap();
//!     ClientPins::new(&map, 0, 8, 1 << 20).unwrap().pin(name, 100).unwrap()
//! };
//! ```
//!
//! ```compile_fail
//! // A client cannot pin through a read-only mapping: pins are stores.
//! use hreg_proto::pins::ClientPins;
//! use hreg_proto::shm::{Mapping, ReadOnly};
//! fn pins(map: &Mapping<ReadOnly>) {
//!     let _pins = ClientPins::new(map, 0, 8, 1 << 20);
//! }
//! ```
//!
//! ```compile_fail
//! // The daemon's side only reads: it cannot pin.
//! use hreg_proto::pins::{pin_table_len, PinName, PinScan};
//! use hreg_proto::shm::Mapping;
//! use hreg_proto::table::HeapAddress;
//! let map = Mapping::anonymous(pin_table_len(8)).unwrap();
//! let scan = PinScan::new(&map, 0, 8).unwrap();
//! let name = PinName::new(0, HeapAddress { chunk: 0, offset: 64 }).unwrap();
//! let _pin = scan.pin(name, 100);
//! ```
//!
//! The `loom` model `tests/loom_table.rs` checks this protocol on these
//! functions.

use crate::handle::MAX_DOMAINS;
use crate::shm::{Access, LoadOnly, Mapping, ReadWrite};
use crate::sync::{fence, AtomicU64, Ordering};
use crate::table::{HeapAddress, Located, SlotView, MAX_HEAP_CHUNK, MAX_HEAP_CHUNKS};

/// Distinct blocks one session may hold borrowed at once.
pub const PIN_ENTRIES: usize = 1024;

/// Values of at most this many bytes are not tallied against a session's
/// byte budget: its entries bound what such borrows hold (4 MiB for a
/// table of [`PIN_ENTRIES`]), so the daemon honours a session's pins for
/// up to [`honoured_bytes`] of held-back blocks.
pub const UNTALLIED: u64 = 4096;

/// Bytes of held-back blocks the daemon honours a session's pins for: its
/// byte budget for tallied values (WELCOME's `pin bytes`), and what its
/// entries may hold of the values not tallied.
pub const fn honoured_bytes(budget: u64, entries: usize) -> u64 {
    budget.saturating_add(entries as u64 * UNTALLIED)
}

/// Bytes of a pin table of `entries` entries.
pub const fn pin_table_len(entries: usize) -> usize {
    ENTRIES_AT + entries * 16
}

/// Where a session's pin table lies in its memory: after its rings.
pub fn pins_offset(layout: &crate::ring::Layout) -> usize {
    layout.total_size()
}

/// Bytes of a session's memory: its rings, then a pin table of `entries`
/// entries, padded to whole pages.
pub fn session_len(layout: &crate::ring::Layout, entries: usize) -> usize {
    pins_offset(layout) + pin_table_len(entries).next_multiple_of(4096)
}

const USED_AT: usize = 0;
const TALLY_AT: usize = 64;
const ENTRIES_AT: usize = 128;

/// The name of a heap block, as a pin entry holds it, with the number of
/// borrows that share the entry:
///
/// ```text
/// bit 63       1 (an entry in use; 0 is a free entry)
/// bits 49..63  domain
/// bits 39..49  heap chunk
/// bits 13..39  offset in the chunk ÷ 16 (blocks are 16-byte aligned)
/// bit 12       the entry's charge is noted beside the table (the client's)
/// bits 0..12   borrows sharing the entry (≥ 1; the client's count)
/// ```
///
/// Names sort by (domain, chunk, offset), so the names of the blocks inside
/// one range of a chunk are one range of numbers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PinName(u64);

const NAME_USED: u64 = 1 << 63;
const DOMAIN_SHIFT: u32 = 49;
const CHUNK_SHIFT: u32 = 39;
const OFFSET_SHIFT: u32 = 13;
/// Block offsets are multiples of this.
pub const BLOCK_ALIGN: u64 = 16;
const OFFSET_UNITS: u64 = (1 << (CHUNK_SHIFT - OFFSET_SHIFT)) - 1;
const CHUNK_MASK: u64 = (1 << (DOMAIN_SHIFT - CHUNK_SHIFT)) - 1;
const DOMAIN_MASK: u64 = (1 << (63 - DOMAIN_SHIFT)) - 1;
/// The client's bits of an entry: its count and whether it is tallied.
const CLIENT_BITS: u64 = (1 << OFFSET_SHIFT) - 1;
const COUNT_MASK: u64 = (1 << 12) - 1;
const TALLIED: u64 = 1 << 12;
/// Offsets a name can carry: up to the end of the largest chunk.
const OFFSET_LIMIT: u64 = (OFFSET_UNITS + 1) * BLOCK_ALIGN;

// Every block the daemon makes has a name: every domain, every chunk, and
// every offset inside the largest chunk (one of ordinary growth, or one
// made for a single value).
const _: () = assert!(MAX_DOMAINS as u64 <= DOMAIN_MASK + 1);
const _: () = assert!(MAX_HEAP_CHUNKS as u64 <= CHUNK_MASK + 1);
const _: () =
    assert!(MAX_HEAP_CHUNK <= OFFSET_LIMIT && crate::MAX_VALUE_SIZE_LIMIT <= OFFSET_LIMIT);

impl PinName {
    /// The name of the block at `at` in `domain`'s heap; `None` for an
    /// address no block of the daemon can have (past the largest chunk, or
    /// not 16-byte aligned).
    #[inline]
    pub fn new(domain: u16, at: HeapAddress) -> Option<PinName> {
        (u64::from(domain) <= DOMAIN_MASK
            && u64::from(at.chunk) <= CHUNK_MASK
            && at.offset < OFFSET_LIMIT
            && at.offset.is_multiple_of(BLOCK_ALIGN))
        .then(|| {
            PinName(
                NAME_USED
                    | u64::from(domain) << DOMAIN_SHIFT
                    | u64::from(at.chunk) << CHUNK_SHIFT
                    | (at.offset / BLOCK_ALIGN) << OFFSET_SHIFT,
            )
        })
    }

    /// The first name past `len` bytes from this one, in the same chunk
    /// (the end of a range of blocks; clamped to the chunk's last offset).
    #[inline]
    pub fn plus(self, len: u64) -> PinName {
        let units = ((self.0 >> OFFSET_SHIFT) & OFFSET_UNITS)
            .saturating_add(len.div_ceil(BLOCK_ALIGN))
            .min(OFFSET_UNITS);
        PinName(self.0 & !(OFFSET_UNITS << OFFSET_SHIFT) | units << OFFSET_SHIFT)
    }

    /// The domain the block is in.
    #[inline]
    pub fn domain(self) -> u16 {
        ((self.0 >> DOMAIN_SHIFT) & DOMAIN_MASK) as u16
    }

    /// Where the block is in its domain's heap.
    #[inline]
    pub fn at(self) -> HeapAddress {
        HeapAddress {
            chunk: ((self.0 >> CHUNK_SHIFT) & CHUNK_MASK) as u16,
            offset: ((self.0 >> OFFSET_SHIFT) & OFFSET_UNITS) * BLOCK_ALIGN,
        }
    }

    /// The entry word of one borrow of the block (its count 0).
    #[inline]
    pub fn word(self) -> u64 {
        self.0
    }

    /// The name an entry word holds (`None` for a free entry), its count
    /// left out. Any other word names some block: the daemon reads entries
    /// as the client's word, not as proof.
    #[inline]
    pub fn from_word(word: u64) -> Option<PinName> {
        (word & NAME_USED != 0).then_some(PinName(word & !CLIENT_BITS))
    }

    /// Where a search for this name's entry starts in a table of `entries`
    /// (a multiply and a shift: no division on the hot path).
    #[inline]
    fn home(self, entries: usize) -> usize {
        let hash = (self.0 >> OFFSET_SHIFT).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        ((u128::from(hash) * entries as u128) >> 64) as usize
    }
}

/// The words of a session's pin table, borrowed from the session's mapping.
struct Table<'a, A: Access> {
    map: &'a Mapping<A>,
    at: usize,
    entries: usize,
}

impl<A: Access> Clone for Table<'_, A> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<A: Access> Copy for Table<'_, A> {}

impl<'a, A: Access> Table<'a, A> {
    fn new(map: &'a Mapping<A>, at: usize, entries: usize) -> Option<Table<'a, A>> {
        (at.is_multiple_of(64) && map.holds(at, pin_table_len(entries))).then_some(Table {
            map,
            at,
            entries,
        })
    }

    /// The word at `offset` of the table, to load.
    fn loads(&self, offset: usize) -> &'a LoadOnly {
        let offset = self.at + offset;
        &self.map.entry_loads(offset / 64 * 64)[offset % 64 / 8]
    }
}

impl<'a> Table<'a, ReadWrite> {
    fn word(&self, offset: usize) -> &'a AtomicU64 {
        let offset = self.at + offset;
        &self.map.entry_at(offset / 64 * 64)[offset % 64 / 8]
    }

    fn entry(&self, index: usize) -> &'a AtomicU64 {
        self.word(ENTRIES_AT + index * 8)
    }

    fn charged(&self, index: usize) -> &'a AtomicU64 {
        self.word(ENTRIES_AT + (self.entries + index) * 8)
    }
}

/// The client's side of a session's pin table: it claims entries and holds
/// each as a [`Pin`].
#[derive(Clone, Copy)]
pub struct ClientPins<'a> {
    table: Table<'a, ReadWrite>,
    /// Bytes of values this client may hold pinned at once (WELCOME's
    /// `pin bytes`).
    budget: u64,
}

/// A borrow of a pinned block: the block's entry stays claimed, and the
/// daemon does not reuse the block, until this guard (and every other
/// borrow sharing the entry) drops.
#[must_use = "a pin unpins its block when dropped: keep it while the block is read"]
#[derive(Debug)]
pub struct Pin<'a> {
    entry: &'a AtomicU64,
    charged: &'a AtomicU64,
    tally: &'a AtomicU64,
    /// The entry's word when this is its only borrow.
    alone: u64,
}

impl Drop for Pin<'_> {
    #[inline]
    fn drop(&mut self) {
        // Most often the entry's only borrow: tried first. Acquire: the
        // claimer's charge is seen by whoever frees the entry.
        let mut word = self.alone;
        loop {
            let last = word & COUNT_MASK <= 1;
            let next = if last { 0 } else { word - 1 };
            // The charge is read while this borrow still holds the entry
            // (nobody rewrites it before the entry is free).
            let charged = if last && word & TALLIED != 0 {
                self.charged.load(Ordering::Relaxed)
            } else {
                0
            };
            // Release: every read of the block happens before the daemon,
            // having seen the entry free (acquire), reuses it.
            match self
                .entry
                .compare_exchange(word, next, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => {
                    if charged > 0 {
                        self.tally.fetch_sub(charged, Ordering::Relaxed);
                    }
                    return;
                }
                Err(now) => word = now,
            }
        }
    }
}

/// What [`ClientPins::borrow`] found.
#[derive(Debug)]
pub enum Borrow<'a> {
    /// The value's block, pinned: `len` bytes at `at` in the domain's heap,
    /// unchanged while `pin` lives.
    Pinned {
        /// The pin; the block is the caller's until it drops.
        pin: Pin<'a>,
        /// Where the block is.
        at: HeapAddress,
        /// The value's length.
        len: u32,
    },
    /// The value is kept inside its slot (which a replace rewrites): copy
    /// it; nothing is pinned.
    Inline,
    /// The slot holds no object of this generation.
    Stale,
    /// The handle was granted ahead to a session whose insert is not
    /// applied yet: nothing to borrow now (ask the daemon, which says when
    /// it is).
    Reserved,
    /// The daemon changed the slot meanwhile: try again.
    Torn,
    /// Every entry is taken, or the value would take the pinned bytes past
    /// the budget: QUOTA.
    Refused,
}

impl<'a> ClientPins<'a> {
    /// The table of `entries` entries at `at` in `map` (the session's
    /// memory, which this process writes), if the mapping holds it
    /// (64-byte aligned), for a client that may hold `budget` bytes pinned.
    pub fn new(
        map: &'a Mapping<ReadWrite>,
        at: usize,
        entries: usize,
        budget: u64,
    ) -> Option<ClientPins<'a>> {
        Some(ClientPins {
            table: Table::new(map, at, entries)?,
            budget,
        })
    }

    /// Borrows the value of generation `generation` in `slot` (of domain
    /// `domain`): finds its block, pins it, fences, and checks that the
    /// slot still names the block.
    #[inline]
    #[must_use = "a pinned borrow unpins when dropped: keep it while the block is read"]
    pub fn borrow<S: Access>(
        &self,
        slot: &SlotView<'_, S>,
        domain: u16,
        generation: u16,
    ) -> Borrow<'a> {
        let (at, len) = match slot.locate(generation) {
            Located::Heap { at, len } => (at, len),
            Located::Inline { .. } => return Borrow::Inline,
            Located::Stale => return Borrow::Stale,
            Located::Reserved { .. } => return Borrow::Reserved,
            Located::Torn => return Borrow::Torn,
        };
        let Some(name) = PinName::new(domain, at) else {
            // No block of the daemon's lies there: a slot being rewritten.
            return Borrow::Torn;
        };
        let Some(pin) = self.pin(name, u64::from(len)) else {
            return Borrow::Refused;
        };
        // The pin is published (its fence) before this read: either the
        // slot still names the block, and the daemon's scan will see the
        // pin, or the block is gone and the pin goes with this guard.
        match slot.locate(generation) {
            Located::Heap {
                at: now,
                len: now_len,
            } if now == at && now_len == len => Borrow::Pinned { pin, at, len },
            Located::Stale => Borrow::Stale,
            Located::Reserved { .. } => Borrow::Reserved,
            Located::Inline { .. } => Borrow::Inline,
            Located::Heap { .. } | Located::Torn => Borrow::Torn,
        }
    }

    /// Pins the block `name` of a value of `bytes` bytes: one more borrow of
    /// the entry that names it, or a free entry claimed for it (charged
    /// `bytes` against the budget), looking from the place the name hashes
    /// to; then fences, so a read of the slot after this sees the block
    /// gone or is seen by the daemon's scan. `None` when no entry is left
    /// or the budget would be passed.
    #[inline]
    #[must_use = "a pin unpins its block when dropped: keep it while the block is read"]
    pub fn pin(&self, name: PinName, bytes: u64) -> Option<Pin<'a>> {
        let entries = self.table.entries;
        let mut index = name.home(entries);
        for _ in 0..entries {
            let entry = self.table.entry(index);
            let mut word = entry.load(Ordering::Relaxed);
            loop {
                if word == 0 {
                    // A free entry ends the search: claim it for the block.
                    return self.claim(index, name, bytes);
                }
                if PinName::from_word(word) != Some(name) || word & COUNT_MASK == COUNT_MASK {
                    break;
                }
                match entry.compare_exchange_weak(
                    word,
                    word + 1,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                ) {
                    Ok(_) => return Some(self.pinned(index, word & !COUNT_MASK | 1)),
                    Err(now) => word = now,
                }
            }
            index += 1;
            if index == entries {
                index = 0;
            }
        }
        None
    }

    /// Claims free entry `index` for `name`, charging `bytes`; `None` when
    /// the budget would be passed or another borrow took the entry first
    /// (the caller's search then goes on from there).
    fn claim(&self, index: usize, name: PinName, bytes: u64) -> Option<Pin<'a>> {
        let tally = self.table.word(TALLY_AT);
        // A short value is not tallied: the entries bound what such
        // borrows hold ([`UNTALLIED`]).
        let charge = if bytes > UNTALLIED { bytes } else { 0 };
        if charge > 0 {
            let before = tally.fetch_add(charge, Ordering::Relaxed);
            if before.saturating_add(charge) > self.budget {
                tally.fetch_sub(charge, Ordering::Relaxed);
                return None;
            }
        }
        let entry = self.table.entry(index);
        let word = name.word() | if charge > 0 { TALLIED } else { 0 } | 1;
        if entry
            .compare_exchange(0, word, Ordering::Relaxed, Ordering::Relaxed)
            .is_err()
        {
            if charge > 0 {
                tally.fetch_sub(charge, Ordering::Relaxed);
            }
            // Taken meanwhile (maybe for this very block): search again.
            return self.pin(name, bytes);
        }
        if charge > 0 {
            self.table.charged(index).store(charge, Ordering::Relaxed);
        }
        Some(self.pinned(index, word))
    }

    /// The guard of a borrow just counted in entry `index`, once the pin is
    /// published: the high-water mark covers the entry (raised by this
    /// thread, so its fence orders it), then the fence.
    #[inline]
    fn pinned(&self, index: usize, alone: u64) -> Pin<'a> {
        let used = self.table.word(USED_AT);
        if used.load(Ordering::Relaxed) <= index as u64 {
            used.fetch_max(index as u64 + 1, Ordering::Relaxed);
        }
        fence(Ordering::SeqCst);
        Pin {
            entry: self.table.entry(index),
            charged: self.table.charged(index),
            tally: self.table.word(TALLY_AT),
            alone,
        }
    }
}

/// The daemon's side of a session's pin table: it only reads, and what it
/// reads is the client's word.
pub struct PinScan<'a, A: Access> {
    table: Table<'a, A>,
}

impl<A: Access> Clone for PinScan<'_, A> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<A: Access> Copy for PinScan<'_, A> {}

impl<'a, A: Access> PinScan<'a, A> {
    /// The table of `entries` entries at `at` in `map`, if the mapping
    /// holds it (64-byte aligned).
    pub fn new(map: &'a Mapping<A>, at: usize, entries: usize) -> Option<PinScan<'a, A>> {
        Table::new(map, at, entries).map(|table| PinScan { table })
    }

    /// Entries the client says it has used (a hint, clamped to the table:
    /// a client that lies only makes its own borrowed bytes unsafe).
    fn used_entries(&self) -> usize {
        usize::try_from(self.table.loads(USED_AT).load(Ordering::Acquire))
            .map_or(self.table.entries, |n| n.min(self.table.entries))
    }

    /// Calls `each` with the name in every entry in use. Call
    /// [`begin_scan`] first.
    pub fn scan(&self, mut each: impl FnMut(PinName)) {
        for index in 0..self.used_entries() {
            // Acquire: a client's reads of a block it unpinned happen before
            // whatever the daemon does with the block after seeing it free.
            let word = self.table.loads(ENTRIES_AT + index * 8);
            if let Some(name) = PinName::from_word(word.load(Ordering::Acquire)) {
                each(name);
            }
        }
    }

    /// Whether any entry is in use now.
    pub fn any(&self) -> bool {
        let mut any = false;
        self.scan(|_| any = true);
        any
    }
}

/// The daemon's side, when a block leaves its slot: called after the slot's
/// new version is written and before the block is put on a retired list.
#[inline]
pub fn retired() {
    fence(Ordering::SeqCst);
}

/// The daemon's side, at the start of a reclamation pass: called before
/// any pin table is read. Every block retired before this (its [`retired`]
/// fence sequenced before this one) is either named by a pin the scan
/// reads, or gone from every slot for any client that pins it later.
#[inline]
pub fn begin_scan() {
    fence(Ordering::SeqCst);
}

#[cfg(all(test, not(hreg_loom)))]
mod tests {
    use super::*;
    use crate::table::{Payload, Slot, SLOT_SIZE};

    fn at(offset: u64) -> HeapAddress {
        HeapAddress { chunk: 2, offset }
    }

    #[test]
    fn names_pack_and_sort_by_place() {
        let name = PinName::new(300, at(4096)).unwrap();
        assert_eq!((name.domain(), name.at()), (300, at(4096)));
        assert_eq!(PinName::from_word(name.word()), Some(name));
        assert_eq!(
            PinName::from_word(name.word() | 5),
            Some(name),
            "count left out"
        );
        assert_eq!(PinName::from_word(0), None);
        assert!(PinName::new(300, at(4096)) < PinName::new(300, at(4112)));
        assert!(PinName::new(300, at((1 << 30) - 16)) < PinName::new(301, at(0)));
        assert_eq!(name.plus(16), PinName::new(300, at(4112)).unwrap());
        assert_eq!(name.plus(20), PinName::new(300, at(4128)).unwrap());
        assert_eq!(name.plus(u64::MAX).domain(), 300, "clamped to the chunk");
        assert!(PinName::new(0, at(1 << 30)).is_none());
        assert!(PinName::new(0, at(4100)).is_none(), "not aligned");
        assert!(PinName::new(
            0,
            HeapAddress {
                chunk: 1024,
                offset: 0
            }
        )
        .is_none());
    }

    fn names<A: Access>(scan: &PinScan<'_, A>) -> Vec<PinName> {
        let mut seen = Vec::new();
        scan.scan(|name| seen.push(name));
        seen.sort();
        seen
    }

    #[test]
    fn pins_are_claimed_shared_scanned_and_cleared() {
        let map = Mapping::anonymous(8192 + pin_table_len(PIN_ENTRIES)).unwrap();
        assert!(ClientPins::new(&map, 8, PIN_ENTRIES, 1000).is_none());
        assert!(PinScan::new(&map, 8192 + 64, PIN_ENTRIES).is_none());
        let pins = ClientPins::new(&map, 8192, PIN_ENTRIES, 100_000).unwrap();
        let scan = PinScan::new(&map, 8192, PIN_ENTRIES).unwrap();
        assert!(!scan.any());
        let a = PinName::new(3, at(64)).unwrap();
        let b = PinName::new(0, at(128)).unwrap();
        let pin_a = pins.pin(a, 100).unwrap();
        let pin_b = pins.pin(b, 100).unwrap();
        assert_eq!(names(&scan), [b, a]);
        // Borrows of one block share its entry, and its charge.
        let again: Vec<Pin<'_>> = (0..4000).map(|_| pins.pin(a, 100).unwrap()).collect();
        assert_eq!(names(&scan), [b, a]);
        drop(pin_a);
        assert_eq!(names(&scan), [b, a], "still borrowed");
        drop(again);
        assert_eq!(names(&scan), [b]);
        drop(pin_b);
        assert!(!scan.any());
        // More borrows of one block than an entry counts: another entry.
        let many: Vec<Pin<'_>> = (0..6000).map(|_| pins.pin(a, 1).unwrap()).collect();
        assert_eq!(names(&scan), [a, a]);
        drop(many);
        // A full table refuses, and so does a pin past the byte budget.
        let all: Vec<Pin<'_>> = (0..PIN_ENTRIES as u64)
            .map(|i| pins.pin(PinName::new(1, at(16 * i)).unwrap(), 0).unwrap())
            .collect();
        let mut seen = 0;
        scan.scan(|_| seen += 1);
        assert_eq!(seen, PIN_ENTRIES, "the high-water mark covers every entry");
        assert!(pins.pin(a, 0).is_none());
        drop(all);
        let big = pins.pin(a, 90_000).unwrap();
        assert!(pins.pin(b, 10_001).is_none(), "past the budget");
        let shared = pins.pin(a, 90_000).unwrap();
        let fits = pins.pin(b, 10_000).unwrap();
        let short = pins
            .pin(PinName::new(1, at(0)).unwrap(), UNTALLIED)
            .unwrap();
        drop((big, shared, fits, short));
        assert!(pins.pin(b, 100_000).is_some(), "the budget given back");
        // A read-only mapping has no client's side (a compile_fail
        // doctest above), but can be scanned.
        let fd = rustix::fs::memfd_create("pins", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
        rustix::fs::ftruncate(&fd, pin_table_len(8) as u64).unwrap();
        let map = Mapping::<crate::shm::ReadOnly>::map(&fd, pin_table_len(8)).unwrap();
        assert!(PinScan::new(&map, 0, 8).is_some());
    }

    #[test]
    fn a_borrow_checks_the_slot_after_pinning() {
        let slots = Mapping::anonymous(SLOT_SIZE).unwrap();
        let map = Mapping::anonymous(pin_table_len(8)).unwrap();
        let pins = ClientPins::new(&map, 0, 8, 1 << 20).unwrap();
        let scan = PinScan::new(&map, 0, 8).unwrap();
        let view = SlotView::new(&slots, 0).unwrap();
        let slot = Slot {
            generation: 7,
            flags: 0,
            len: 500,
            owner: 1000,
            payload: Payload::Heap(at(4096)),
        };
        view.write(&slot);
        match pins.borrow(&view, 5, 7) {
            Borrow::Pinned {
                pin,
                at: found,
                len,
            } => {
                assert_eq!((found, len), (at(4096), 500));
                assert_eq!(names(&scan), [PinName::new(5, at(4096)).unwrap()]);
                drop(pin);
            }
            other => panic!("{other:?}"),
        }
        assert!(!scan.any());
        assert!(matches!(pins.borrow(&view, 5, 8), Borrow::Stale));
        view.write(&Slot {
            len: 10,
            payload: Payload::Inline([0; crate::table::INLINE_VALUE]),
            ..slot
        });
        assert!(matches!(pins.borrow(&view, 5, 7), Borrow::Inline));
        view.write(&Slot {
            len: 2 << 20,
            ..slot
        });
        assert!(matches!(pins.borrow(&view, 5, 7), Borrow::Refused));
        assert!(!scan.any(), "a refused borrow leaves no pin");
    }
}
