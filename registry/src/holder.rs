//! A session's identity and references, as the registry sees it: the uid
//! that asks, its counters, the references the session holds (by full
//! handle), its ring staging, and its private domain once known.

use crate::domain::Domain;
use crate::limits::Counters;
use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

/// Who asks, and the references they hold: one per session. Made by
/// [`Registry::holder`].
pub struct Holder {
    /// The uid the holder acts as (the daemon gives a session its peer's,
    /// from `SO_PEERCRED`): it owns what it inserts, and access is judged
    /// by it.
    pub uid: u32,
    /// What this uid owns, shared by all its sessions.
    pub(crate) usage: Arc<Counters>,
    /// References this holder owns, by full handle (never by slot, so a reused
    /// slot can't inherit them).
    pub(crate) refs: Mutex<RefTable>,
    /// Bytes of this session's ring staging buffers.
    pub(crate) staged: AtomicU64,
    /// The uid's private domain, once the registry has looked it up.
    pub(crate) own_domain: OnceLock<Arc<Domain>>,
}

/// A session's references by handle.
///
/// Entries of objects that died while referenced (removed by someone, or a
/// session's reference left behind by REMOVE) are dropped by a purge that
/// runs whenever the table has doubled since the last one, so the table
/// stays within twice the live objects it references plus
/// [`PURGE_FLOOR`], however a client loops.
pub(crate) struct RefTable {
    pub(crate) counts: HashMap<u64, u32, BuildHasherDefault<HandleHasher>>,
    /// The sum of `counts`.
    pub(crate) total: u64,
    /// The table size that triggers the next purge.
    pub(crate) purge_at: usize,
}

/// Smallest table size at which a purge runs.
pub(crate) const PURGE_FLOOR: usize = 1024;

impl Default for RefTable {
    fn default() -> RefTable {
        RefTable {
            counts: HashMap::default(),
            total: 0,
            purge_at: PURGE_FLOOR,
        }
    }
}

impl RefTable {
    pub(crate) fn held(&self, handle: u64) -> u32 {
        self.counts.get(&handle).copied().unwrap_or(0)
    }

    /// One more reference; the caller checked that it fits in a `u32`.
    pub(crate) fn add(&mut self, handle: u64) {
        *self.counts.entry(handle).or_insert(0) += 1;
        self.total += 1;
    }

    /// One reference fewer; false when none is held.
    pub(crate) fn take(&mut self, handle: u64) -> bool {
        let Entry::Occupied(mut held) = self.counts.entry(handle) else {
            return false;
        };
        *held.get_mut() -= 1;
        if *held.get() == 0 {
            held.remove();
        }
        self.total -= 1;
        true
    }

    /// Drops every reference to `handle` (its object is dead).
    pub(crate) fn forget(&mut self, handle: u64) {
        if let Some(count) = self.counts.remove(&handle) {
            self.total -= u64::from(count);
        }
    }

    pub(crate) fn wants_purge(&self) -> bool {
        self.counts.len() >= self.purge_at
    }
}

/// An FxHash-style hasher (one multiply, then the high bits folded down) for
/// handles. A keyed hash is not needed here: a key only enters a table
/// after the registry found a live object under it (RETAIN) or made it
/// (INSERT), so every key is a handle the daemon issued, built from a slot
/// index, a generation the daemon chose at random and the daemon's random
/// epoch. A client cannot pick keys that collide; at worst it fills its own
/// table (bounded by the purge, see [`RefTable`]) and slows only its own
/// session.
#[derive(Clone, Copy, Default)]
pub(crate) struct HandleHasher(u64);

impl Hasher for HandleHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }

    #[inline]
    fn write_u64(&mut self, n: u64) {
        const K: u64 = 0xf135_7aea_2e62_a9c5;
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(K);
    }

    #[inline]
    fn finish(&self) -> u64 {
        // hashbrown takes its control byte from the top 7 bits and its
        // bucket from the low bits: fold the well-mixed high half down so
        // both see the handle's slot and generation bits.
        self.0 ^ (self.0 >> 32)
    }
}

impl Holder {
    /// Total references this holder owns (references to objects removed
    /// meanwhile included, until the next purge drops them).
    pub fn reference_count(&self) -> u64 {
        lock(&self.refs).total
    }

    /// Entries in the reference table (distinct handles, live or not yet
    /// purged).
    pub fn reference_entries(&self) -> usize {
        lock(&self.refs).counts.len()
    }

    /// Bytes of this session's staging buffers.
    pub fn staged_bytes(&self) -> u64 {
        self.staged.load(Ordering::Relaxed)
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}
