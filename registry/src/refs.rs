//! A session's record: who it is (id, uid, resume token) and the
//! references it holds, by full handle, in memory that only the daemon maps
//! and that its [`Store`] keeps, so that a restarted daemon gives every
//! session back its references.
//!
//! ```text
//! offset 0    magic "HREGSES1"
//! offset 8    session id (u64)
//! offset 16   uid (u32), 1 once the record is complete (u32)
//! offset 24   resume token (16 bytes)
//! offset 40   capacity: entries (u64, a power of two)
//! offset 64   entries: handle (u64), then count (bits 0..32) and state
//!             (bits 32..64: 0 empty, 1 used, 2 deleted) (u64)
//! ```
//!
//! An open-addressing table, written only by the daemon under the
//! session's table lock. An entry's handle is stored before the word that
//! marks it used (release), so a daemon killed between the two leaves an
//! entry that does not count. When the table must grow (past 3/4 full with
//! more than 5/8 in use) or shrink (below 1/4 full), or deleted entries
//! fill it (past 3/4 full, at most 5/8 in use: rebuilt at its size), the
//! next generation of the record is written whole and marked complete
//! before the old one is removed; an adopting daemon takes the newest
//! complete generation. A record made when the
//! store keeps nothing lives in anonymous memory.
//!
//! Every entry counts against the session's uid (`uid_max_references`):
//! the table takes it from the uid's counters when an entry is made and
//! gives it back when the entry goes, so no path can forget either. Kept
//! between 1/4 and 3/4 full (but for its first 256 entries), a table takes
//! at most 64 bytes per entry.

use crate::limits::Counters;
use crate::store::{names, Store};
use crate::Chunk;
use hreg_proto::shm::{Mapping, ReadWrite};
use hreg_proto::Limit;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

const MAGIC: u64 = u64::from_le_bytes(*b"HREGSES1");
pub(crate) const ENTRIES_AT: usize = 64;
pub(crate) const ENTRY: usize = 16;
pub(crate) const FIRST_CAPACITY: usize = 256;

const EMPTY: u64 = 0;
const USED: u64 = 1;
const DELETED: u64 = 2;

/// Who a session is, as its record says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SessionKey {
    /// The session's id.
    pub id: u64,
    /// The uid it acts as.
    pub uid: u32,
    /// The secret a client presents to take the session back.
    pub token: [u8; 16],
}

/// A session's record and reference table (see the module's text).
pub(crate) struct RefTable {
    key: SessionKey,
    /// The counters of the uid the entries count against.
    counters: Arc<Counters>,
    map: Arc<Mapping<ReadWrite>>,
    /// Where the record is kept, and its name there.
    kept: Option<(Arc<dyn Store>, String, u32)>,
    capacity: usize,
    /// Entries used, and used or deleted (probing stops only at empty).
    used: usize,
    filled: usize,
    /// The sum of the counts.
    pub(crate) total: u64,
    /// The table size that triggers the next purge.
    pub(crate) purge_at: usize,
    /// The registry's count of objects that died referenced, at the last
    /// purge (`crate::Registry`'s `orphaned`).
    pub(crate) purged_upto: u64,
}

/// Smallest table size at which a purge runs.
pub(crate) const PURGE_FLOOR: usize = 1024;

impl RefTable {
    /// A new, empty record for `key`, kept by `store` if it keeps state,
    /// whose entries count against `counters` (those of `key`'s uid).
    pub(crate) fn new(
        store: &Arc<dyn Store>,
        key: SessionKey,
        counters: Arc<Counters>,
    ) -> io::Result<RefTable> {
        let table = RefTable::make(store, key, counters, FIRST_CAPACITY, 0)?;
        table.complete();
        Ok(table)
    }

    fn make(
        store: &Arc<dyn Store>,
        key: SessionKey,
        counters: Arc<Counters>,
        capacity: usize,
        generation: u32,
    ) -> io::Result<RefTable> {
        let len = ENTRIES_AT + capacity * ENTRY;
        let (map, kept) = if store.keeps_state() {
            let name = names::session(key.id, generation);
            let chunk = Chunk::create(&**store, &name, len)?;
            chunk.allocate(0, len as u64)?;
            (
                Arc::clone(chunk.mapping()),
                Some((Arc::clone(store), name, generation)),
            )
        } else {
            (Arc::new(Mapping::anonymous(len)?), None)
        };
        let table = RefTable {
            key,
            counters,
            map,
            kept,
            capacity,
            used: 0,
            filled: 0,
            total: 0,
            purge_at: PURGE_FLOOR,
            purged_upto: u64::MAX,
        };
        table.word(8).store(key.id, Ordering::Relaxed);
        table.word(16).store(u64::from(key.uid), Ordering::Relaxed);
        table.word(24).store(
            u64::from_le_bytes(key.token[..8].try_into().expect("8")),
            Ordering::Relaxed,
        );
        table.word(32).store(
            u64::from_le_bytes(key.token[8..].try_into().expect("8")),
            Ordering::Relaxed,
        );
        table.word(40).store(capacity as u64, Ordering::Relaxed);
        table.word(0).store(MAGIC, Ordering::Release);
        Ok(table)
    }

    /// The record a daemon kept in `chunk` (generation `generation`, named
    /// `name` in `store`), if it is one: complete and of a sane capacity.
    /// With `repair`, an entry marked used with a count of zero (a daemon
    /// killed mid-update) is marked deleted; without, nothing is written.
    /// Its entries count against counters of its own until
    /// [`RefTable::count_against`] names its uid's.
    pub(crate) fn adopt(
        chunk: &Chunk,
        store: &Arc<dyn Store>,
        name: String,
        generation: u32,
        repair: bool,
    ) -> Option<RefTable> {
        let map = Arc::clone(chunk.mapping());
        let word = |at: usize| map.word(at).map(|w| w.load(Ordering::Acquire));
        if word(0)? != MAGIC || word(16)? >> 32 != 1 {
            return None;
        }
        let capacity = usize::try_from(word(40)?).ok()?;
        if !capacity.is_power_of_two() || map.len() < ENTRIES_AT + capacity.checked_mul(ENTRY)? {
            return None;
        }
        let mut token = [0u8; 16];
        token[..8].copy_from_slice(&word(24)?.to_le_bytes());
        token[8..].copy_from_slice(&word(32)?.to_le_bytes());
        let key = SessionKey {
            id: word(8)?,
            uid: word(16)? as u32,
            token,
        };
        let mut table = RefTable {
            key,
            counters: Arc::default(),
            map,
            kept: Some((Arc::clone(store), name, generation)),
            capacity,
            used: 0,
            filled: 0,
            total: 0,
            purge_at: PURGE_FLOOR,
            purged_upto: u64::MAX,
        };
        for i in 0..capacity {
            let (_, count, state) = table.entry(i);
            match state {
                USED if count > 0 => {
                    table.used += 1;
                    table.filled += 1;
                    table.total += u64::from(count);
                }
                // A daemon killed mid-way through an update: not a
                // reference.
                USED => {
                    if repair {
                        table.set_state(i, 0, DELETED);
                    }
                    table.filled += 1;
                }
                DELETED => table.filled += 1,
                _ => {}
            }
        }
        table.purge_at = (table.used * 2).max(PURGE_FLOOR);
        table.counters.adopt_references(table.used as u64);
        Some(table)
    }

    /// Counts the entries against `counters` from now on (an adopted
    /// record's, once its uid's counters are known), whatever the limit.
    pub(crate) fn count_against(&mut self, counters: Arc<Counters>) {
        counters.adopt_references(self.used as u64);
        self.counters.give_back_references(self.used as u64);
        self.counters = counters;
    }

    /// Marks the record complete (a new session's, once made; a grown
    /// generation's, once every entry is in).
    fn complete(&self) {
        self.word(16)
            .store(u64::from(self.key.uid) | (1 << 32), Ordering::Release);
    }

    /// Who the session is.
    pub(crate) fn key(&self) -> SessionKey {
        self.key
    }

    fn word(&self, at: usize) -> &AtomicU64 {
        self.map.word(at).expect("inside the record")
    }

    fn entry(&self, i: usize) -> (u64, u32, u64) {
        let at = ENTRIES_AT + i * ENTRY;
        let handle = self.word(at).load(Ordering::Relaxed);
        let meta = self.word(at + 8).load(Ordering::Acquire);
        (handle, meta as u32, meta >> 32)
    }

    fn set_state(&self, i: usize, count: u32, state: u64) {
        self.word(ENTRIES_AT + i * ENTRY + 8)
            .store(u64::from(count) | (state << 32), Ordering::Release);
    }

    /// The entry of `handle`, or the empty entry where it would go (probing
    /// from its hash).
    fn find(&self, handle: u64) -> Result<usize, usize> {
        let mask = self.capacity - 1;
        let mut i = hash(handle) as usize & mask;
        let mut reuse = None;
        loop {
            let (found, _, state) = self.entry(i);
            match state {
                USED if found == handle => return Ok(i),
                DELETED if reuse.is_none() => reuse = Some(i),
                EMPTY => return Err(reuse.unwrap_or(i)),
                _ => {}
            }
            i = (i + 1) & mask;
        }
    }

    /// References held on `handle`.
    pub(crate) fn held(&self, handle: u64) -> u32 {
        self.find(handle).map_or(0, |i| self.entry(i).1)
    }

    /// One more reference; the caller checked that it fits in a `u32`. A
    /// new entry counts against the uid, at most `max_entries` in all
    /// ([`Limit::UidMaxReferences`]). Fails (nothing changed) then, or when
    /// a grown table cannot be made ([`Limit::ReferenceTableMemory`]).
    pub(crate) fn add(&mut self, handle: u64, max_entries: u64) -> Result<(), Limit> {
        match self.find(handle) {
            Ok(i) => {
                let count = self.entry(i).1;
                self.set_state(i, count + 1, USED);
            }
            Err(mut i) => {
                if !self.counters.reserve_reference(max_entries) {
                    return Err(Limit::UidMaxReferences);
                }
                if (self.filled + 1) * 4 > self.capacity * 3 {
                    // Doubled only past 5/8 full, so that the grown table
                    // is over 5/16 full, clear of the 1/4 at which `delete`
                    // halves it: a session whose count of entries hovers
                    // near a boundary (1000 objects held, 64 made and
                    // removed at a time) would otherwise rebuild its table
                    // on every few dozen requests, growing and shrinking
                    // it in turn. Below that, deleted entries fill it:
                    // rebuilt at its size, it is at most 5/8 full again.
                    let capacity = if (self.used + 1) * 8 > self.capacity * 5 {
                        self.capacity * 2
                    } else {
                        self.capacity
                    };
                    if self.rebuild(capacity).is_err() {
                        self.counters.give_back_references(1);
                        return Err(Limit::ReferenceTableMemory);
                    }
                    // Its place in the rebuilt table (else the one found).
                    i = self.find(handle).expect_err("not in the table");
                }
                if self.entry(i).2 == EMPTY {
                    self.filled += 1;
                }
                self.word(ENTRIES_AT + i * ENTRY)
                    .store(handle, Ordering::Relaxed);
                self.set_state(i, 1, USED);
                self.used += 1;
            }
        }
        self.total += 1;
        Ok(())
    }

    /// One reference fewer; false when none is held.
    pub(crate) fn take(&mut self, handle: u64) -> bool {
        let Ok(i) = self.find(handle) else {
            return false;
        };
        let count = self.entry(i).1 - 1;
        self.total -= 1;
        if count == 0 {
            self.delete(i);
        } else {
            self.set_state(i, count, USED);
        }
        true
    }

    /// Drops every reference to `handle` (its object is dead); returns how
    /// many there were.
    pub(crate) fn forget(&mut self, handle: u64) -> u32 {
        let Ok(i) = self.find(handle) else {
            return 0;
        };
        let count = self.entry(i).1;
        self.total -= u64::from(count);
        self.delete(i);
        count
    }

    /// Deletes entry `i` (its count is taken off `total` already), gives
    /// it back to the uid, and halves the table when it is less than a
    /// quarter full (a record that cannot be made smaller stays as it is).
    ///
    /// An entry followed by an empty one ends every probe that reaches
    /// it, so it becomes empty rather than deleted, and so do the deleted
    /// entries just before it: deleted entries then pile up only inside
    /// runs, and a table whose entries come and go (objects made and
    /// removed) is rebuilt at its size far less often. Empty or deleted,
    /// neither is a reference to an adopting daemon.
    fn delete(&mut self, i: usize) {
        let mask = self.capacity - 1;
        if self.entry((i + 1) & mask).2 == EMPTY {
            let mut at = i;
            loop {
                self.set_state(at, 0, EMPTY);
                self.filled -= 1;
                at = at.wrapping_sub(1) & mask;
                if at == i || self.entry(at).2 != DELETED {
                    break;
                }
            }
        } else {
            self.set_state(i, 0, DELETED);
        }
        self.used -= 1;
        self.counters.give_back_references(1);
        if self.capacity > FIRST_CAPACITY && self.used * 4 < self.capacity {
            let _ = self.rebuild(self.capacity / 2);
        }
    }

    /// Every (handle, count) held.
    pub(crate) fn entries(&self) -> Vec<(u64, u32)> {
        (0..self.capacity)
            .map(|i| self.entry(i))
            .filter(|&(_, count, state)| state == USED && count > 0)
            .map(|(handle, count, _)| (handle, count))
            .collect()
    }

    /// Distinct handles held.
    pub(crate) fn len(&self) -> usize {
        self.used
    }

    /// Entries the table has room for (its memory).
    #[cfg(test)]
    pub(crate) fn capacity(&self) -> usize {
        self.capacity
    }

    pub(crate) fn wants_purge(&self) -> bool {
        self.used >= self.purge_at
    }

    /// Moves the entries to a table of `capacity` entries (twice as large,
    /// as large when deleted entries fill it, or half as large), written
    /// whole before the old one goes.
    fn rebuild(&mut self, capacity: usize) -> io::Result<()> {
        let store: Arc<dyn Store> = match &self.kept {
            Some((store, _, _)) => Arc::clone(store),
            None => Arc::new(crate::MemoryStore),
        };
        let generation = self.kept.as_ref().map_or(0, |(_, _, g)| g + 1);
        let counters = Arc::clone(&self.counters);
        let mut next = RefTable::make(&store, self.key, counters, capacity, generation)?;
        for (handle, count) in self.entries() {
            let i = next.find(handle).expect_err("each handle once");
            next.word(ENTRIES_AT + i * ENTRY)
                .store(handle, Ordering::Relaxed);
            next.set_state(i, count, USED);
            next.used += 1;
            next.filled += 1;
        }
        next.total = self.total;
        next.purge_at = self.purge_at;
        next.purged_upto = self.purged_upto;
        next.complete();
        let old = std::mem::replace(self, next);
        if let Some((store, name, _)) = old.kept {
            store.remove(&name);
        }
        Ok(())
    }

    /// Removes the record from the store: the session is over.
    pub(crate) fn discard(&mut self) {
        if let Some((store, name, _)) = self.kept.take() {
            store.remove(&name);
        }
        for i in 0..self.capacity {
            self.set_state(i, 0, EMPTY);
        }
        self.counters.give_back_references(self.used as u64);
        self.used = 0;
        self.filled = 0;
        self.total = 0;
    }
}

/// Spreads a handle's bits over the table's index (one multiply, high
/// bits folded down). A keyed hash is not needed: a key only enters a
/// table after the registry found a live object under it (RETAIN) or made
/// it (INSERT), so every key is a handle the daemon issued; a client
/// cannot choose keys that collide, and at worst fills its own table
/// (bounded by the purge) and slows its own session.
fn hash(handle: u64) -> u64 {
    let h = handle.wrapping_mul(0xf135_7aea_2e62_a9c5);
    h ^ (h >> 29)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn key() -> SessionKey {
        SessionKey {
            id: 42,
            uid: 1000,
            token: *b"0123456789abcdef",
        }
    }

    #[test]
    fn counts_like_a_map_through_growth_and_deletions() {
        let store: Arc<dyn Store> = Arc::new(crate::MemoryStore);
        let mut table = RefTable::new(&store, key(), Arc::default()).unwrap();
        let mut model: HashMap<u64, u32> = HashMap::new();
        let mut state = 7u64;
        for _ in 0..20_000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let handle = (state % 3000) + 1;
            match state % 5 {
                0..=2 => {
                    table.add(handle, u64::MAX).unwrap();
                    *model.entry(handle).or_default() += 1;
                }
                3 => {
                    let held = model.get(&handle).copied().unwrap_or(0);
                    assert_eq!(table.take(handle), held > 0);
                    if held == 1 {
                        model.remove(&handle);
                    } else if held > 1 {
                        model.insert(handle, held - 1);
                    }
                }
                _ => {
                    assert_eq!(table.forget(handle), model.remove(&handle).unwrap_or(0));
                }
            }
        }
        let mut entries = table.entries();
        entries.sort_unstable();
        let mut expected: Vec<(u64, u32)> = model.into_iter().collect();
        expected.sort_unstable();
        assert_eq!(entries, expected);
        assert_eq!(table.len(), expected.len());
        assert_eq!(
            table.total,
            expected.iter().map(|e| u64::from(e.1)).sum::<u64>()
        );
        for (handle, count) in expected {
            assert_eq!(table.held(handle), count);
        }
    }

    #[test]
    fn a_table_near_a_boundary_keeps_its_size() {
        // 1000 objects held, 64 made and removed at a time (hreg-bench's
        // writes): the table once grew and shrank every few batches.
        let store: Arc<dyn Store> = Arc::new(crate::MemoryStore);
        let mut table = RefTable::new(&store, key(), Arc::default()).unwrap();
        for handle in 1..=1000u64 {
            table.add(handle, u64::MAX).unwrap();
        }
        let mut sizes = vec![table.capacity()];
        let mut next = 1_000_000u64;
        for _ in 0..1000 {
            for handle in next..next + 64 {
                table.add(handle, u64::MAX).unwrap();
                sizes.push(table.capacity());
            }
            for handle in next..next + 64 {
                assert_eq!(table.forget(handle), 1);
                sizes.push(table.capacity());
            }
            next += 64;
        }
        sizes.dedup();
        assert!(sizes.len() <= 2, "capacities in turn: {sizes:?}");
        assert_eq!(table.len(), 1000);
        assert!(table.capacity() * 3 >= 4 * 1064 && table.capacity() <= 4 * 1000);
    }

    #[test]
    fn a_kept_record_is_adopted_with_its_references() {
        let dir = std::env::temp_dir().join(format!("hreg-refs-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store: Arc<dyn Store> = Arc::new(crate::DirStore::open(&dir).unwrap());
        let mut table = RefTable::new(&store, key(), Arc::default()).unwrap();
        for handle in 1..=1000u64 {
            table.add(handle, u64::MAX).unwrap();
        }
        table.add(5, u64::MAX).unwrap();
        assert!(table.take(7));
        // A daemon killed between storing a handle and marking it used.
        let i = table.find(5000).unwrap_err();
        table
            .word(ENTRIES_AT + i * ENTRY)
            .store(5000, Ordering::Relaxed);
        table.set_state(i, 0, USED);
        let names: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|name| name != crate::DirStore::LOCK)
            .collect();
        assert_eq!(
            names.len(),
            1,
            "grown generations replace the old: {names:?}"
        );
        let (name, generation) = (names[0].clone(), table.kept.as_ref().unwrap().2);
        assert!(generation > 0, "grew");
        let fd = rustix::fs::open(
            dir.join(&name).as_path(),
            rustix::fs::OFlags::RDWR,
            rustix::fs::Mode::empty(),
        )
        .unwrap();
        let adopted =
            RefTable::adopt(&Chunk::adopt(fd).unwrap(), &store, name, generation, true).unwrap();
        assert_eq!(adopted.key(), key());
        assert_eq!(adopted.held(5), 2);
        assert_eq!(adopted.held(7), 0);
        assert_eq!(adopted.held(5000), 0);
        assert_eq!(adopted.len(), 999);
        assert_eq!(adopted.total, 1000);
        drop(store);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
