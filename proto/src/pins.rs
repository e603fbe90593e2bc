//! Borrowed references and what they hold back: the pin table of a
//! session, and the protocol by which a client pins a value block and the
//! daemon learns which blocks it may not reuse yet (epoch-based
//! reclamation across processes).
//!
//! The table lies in the session's memory (which the client writes), at the
//! offset WELCOME names:
//!
//! ```text
//! offset 0     entries used so far (u64): a high-water mark the client
//!              raises when it first uses an entry past it (a hint: the
//!              daemon reads entries below it, clamped to the table)
//! offset 64    PIN_ENTRIES × u64: 0 free, else epoch << 16 | domain
//! ```
//!
//! To pin, a client reads the registry's epoch (acquire), claims a free
//! entry with `epoch << 16 | domain` (a `SeqCst` compare-and-swap; each
//! thread starts looking at its own place, so threads do not share lines),
//! issues a `SeqCst` fence, and only then reads the slot (the seqlock read
//! of [`crate::table`]): if the slot still names the block, the block stays
//! as it is until the entry is cleared (a release store of 0).
//! The daemon, when a block leaves a slot (replace, remove), fences
//! (`SeqCst`) and notes the epoch; a reclamation pass advances the epoch,
//! fences, reads every pin table of a session that maps the block's domain
//! and frees the block only if no entry of that domain has an epoch at or
//! below the one noted. Either the reader's slot check sees the block gone,
//! or the daemon's scan sees the pin: never neither. A client can only
//! harm itself by lying in its table (its own borrowed bytes may change);
//! the daemon clamps every entry to its own epoch and ignores domains the
//! session cannot map.
//!
//! The `loom` model `tests/loom_table.rs` checks this protocol on these
//! functions.

use crate::shm::Mapping;
use crate::sync::{fence, AtomicU64, Ordering};

/// Borrowed references one session may hold at once.
pub const PIN_ENTRIES: usize = 1024;

/// Bytes of a pin table of `entries` entries.
pub const fn pin_table_len(entries: usize) -> usize {
    64 + entries * 8
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

const ENTRIES_AT: usize = 64;

/// A session's pin table, borrowed from the session's mapping.
#[derive(Clone, Copy)]
pub struct PinTable<'a> {
    map: &'a Mapping,
    at: usize,
    entries: usize,
}

/// One pinned entry: which entry, and what it holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pin {
    /// The entry's index in the table.
    pub entry: usize,
    /// The epoch the pin was taken in.
    pub epoch: u64,
}

impl<'a> PinTable<'a> {
    /// The table of `entries` entries at `at` in `map`, if the mapping
    /// holds it (64-byte aligned). Sessions have [`PIN_ENTRIES`].
    pub fn new(map: &'a Mapping, at: usize, entries: usize) -> Option<PinTable<'a>> {
        (at.is_multiple_of(64) && map.holds(at, pin_table_len(entries))).then_some(PinTable {
            map,
            at,
            entries,
        })
    }

    fn used(&self) -> &'a AtomicU64 {
        &self.map.entry_at(self.at)[0]
    }

    fn entry(&self, index: usize) -> &'a AtomicU64 {
        let offset = self.at + ENTRIES_AT + index * 8;
        &self.map.entry_at(offset / 64 * 64)[offset % 64 / 8]
    }

    // The client's side.

    /// Claims a free entry for `domain` in the current epoch (read from
    /// `epoch`, the registry header's word), looking from entry `start` on
    /// (wrapping; a thread's own place, see [`PinTable::start_of`]), and
    /// fences: read the slot after this. `None` when every entry is taken.
    #[inline]
    pub fn pin(&self, domain: u16, epoch: &AtomicU64, start: usize) -> Option<Pin> {
        let now = epoch.load(Ordering::Acquire).max(1);
        let value = (now << 16) | u64::from(domain);
        for step in 0..self.entries {
            let index = (start + step) % self.entries;
            let entry = self.entry(index);
            if entry.load(Ordering::Relaxed) == 0
                && entry
                    .compare_exchange(0, value, Ordering::SeqCst, Ordering::Relaxed)
                    .is_ok()
            {
                let used = self.used();
                if used.load(Ordering::Relaxed) <= index as u64 {
                    used.fetch_max(index as u64 + 1, Ordering::SeqCst);
                }
                fence(Ordering::SeqCst);
                return Some(Pin {
                    entry: index,
                    epoch: now,
                });
            }
        }
        None
    }

    /// Where a thread numbered `thread` starts looking for a free entry:
    /// threads a line (eight entries) apart.
    pub fn start_of(&self, thread: usize) -> usize {
        thread.wrapping_mul(8) % self.entries.max(1)
    }

    /// Clears an entry this client pinned: the block may be reused from now
    /// on.
    #[inline]
    pub fn unpin(&self, pin: Pin) {
        self.entry(pin.entry).store(0, Ordering::Release);
    }

    // The daemon's side: everything read here is the client's word.

    /// Entries the client says it has used (a hint, clamped to the table:
    /// a client that lies only makes its own borrowed bytes unsafe).
    fn used_entries(&self) -> usize {
        usize::try_from(self.used().load(Ordering::Acquire))
            .map_or(self.entries, |n| n.min(self.entries))
    }

    /// Whether the client says it ever pinned anything.
    pub fn any(&self) -> bool {
        self.used_entries() != 0
    }

    /// Calls `each(domain, epoch)` for every entry in use, with the epoch
    /// clamped to `now` (the caller has fenced after advancing the epoch).
    pub fn scan(&self, now: u64, mut each: impl FnMut(u16, u64)) {
        for index in 0..self.used_entries() {
            let value = self.entry(index).load(Ordering::Acquire);
            if value != 0 {
                each(value as u16, (value >> 16).min(now));
            }
        }
    }
}

/// The daemon's side, when a block leaves its slot (after the slot's new
/// version is written): fences, and returns the epoch to note the block
/// under.
pub fn retire_epoch(epoch: &AtomicU64) -> u64 {
    fence(Ordering::SeqCst);
    epoch.load(Ordering::SeqCst)
}

/// The daemon's side, at the start of a reclamation pass: advances the
/// epoch and fences; returns the new epoch, to clamp entries to. Pin tables
/// are read after this.
pub fn begin_pass(epoch: &AtomicU64) -> u64 {
    let now = epoch.fetch_add(1, Ordering::SeqCst) + 1;
    fence(Ordering::SeqCst);
    now
}

/// Whether a block of `domain` noted in epoch `retired` may be reused,
/// given the oldest pin of that domain found by a pass (`None`: none).
pub fn reusable(retired: u64, oldest_pin: Option<u64>) -> bool {
    oldest_pin.is_none_or(|pinned| pinned > retired)
}

#[cfg(all(test, not(hreg_loom)))]
mod tests {
    use super::*;

    #[test]
    fn pins_are_claimed_scanned_and_cleared() {
        let map = Mapping::anonymous(8192 + pin_table_len(PIN_ENTRIES)).unwrap();
        assert!(PinTable::new(&map, 8, PIN_ENTRIES).is_none());
        assert!(PinTable::new(&map, 8192 + 64, PIN_ENTRIES).is_none());
        let table = PinTable::new(&map, 8192, PIN_ENTRIES).unwrap();
        let epoch = AtomicU64::new(5);
        assert!(!table.any());
        let a = table.pin(3, &epoch, 0).unwrap();
        epoch.store(9, Ordering::Relaxed);
        let b = table.pin(0, &epoch, 0).unwrap();
        assert_ne!(a.entry, b.entry);
        assert!(table.any());
        let mut seen = Vec::new();
        table.scan(7, |domain, epoch| seen.push((domain, epoch)));
        seen.sort();
        assert_eq!(seen, [(0, 7), (3, 5)], "clamped to the daemon's epoch");
        table.unpin(a);
        table.unpin(b);
        let mut none = 0;
        table.scan(9, |_, _| none += 1);
        assert_eq!(none, 0);
        // Threads start apart, and the search wraps around.
        let start = table.start_of(127);
        assert_eq!(start, 127 * 8 % PIN_ENTRIES);
        let late = table.pin(2, &epoch, PIN_ENTRIES - 1).unwrap();
        assert_eq!(late.entry, PIN_ENTRIES - 1);
        let wrapped = table.pin(2, &epoch, PIN_ENTRIES - 1).unwrap();
        assert_eq!(wrapped.entry, 0);
        let mut seen = 0;
        table.scan(9, |_, _| seen += 1);
        assert_eq!(seen, 2, "the high-water mark covers the last entry");
        table.unpin(late);
        table.unpin(wrapped);
        // A full table refuses.
        let pins: Vec<Pin> = (0..PIN_ENTRIES)
            .map(|i| table.pin(1, &epoch, i).unwrap())
            .collect();
        assert!(table.pin(1, &epoch, 5).is_none());
        for pin in pins {
            table.unpin(pin);
        }
    }
}
