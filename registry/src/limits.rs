//! What the registry may hold, and what each uid holds: the limits (global
//! and per uid, changeable while serving), the counters kept against them,
//! and reservations that are given back unless kept.

use hreg_proto::Limit;
use std::sync::atomic::{AtomicU64, Ordering};

/// Bytes of ring staging one session may hold at once: four values of the
/// largest size (several threads may move large values at the same time),
/// and never less than 4 MiB.
pub fn session_staging_cap(max_value_size: usize) -> u64 {
    (max_value_size as u64).saturating_mul(4).max(4 << 20)
}

/// Limits on what the registry holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Longest value, in bytes; a longer one is TOO_BIG.
    pub max_value_size: usize,
    /// Live objects, all uids together.
    pub max_objects: u64,
    /// Value bytes, all uids together; ring staging counts against it too.
    pub max_bytes: u64,
    /// Objects one uid may own.
    pub uid_max_objects: u64,
    /// Value bytes one uid may own.
    pub uid_max_bytes: u64,
    /// Reference-table entries one uid's sessions may hold together: one
    /// per session and object referenced, whatever the count (each costs
    /// the daemon at most [`REFERENCE_BYTES`]).
    pub uid_max_references: u64,
}

/// The daemon memory one reference-table entry may take at most: 16 bytes
/// in a table kept between 1/4 and 3/4 full (64), and its share of the
/// record of which other uids reference an object (64).
pub const REFERENCE_BYTES: u64 = 128;

impl Limits {
    /// `uid_max_references` when not set: twice `uid_max_objects`, so that
    /// a uid may reference every object it may own from two sessions (or
    /// as many objects of others), and its reference tables take at most
    /// `2 × 128 = 256` bytes per object it may own — the same order as the
    /// 76 bytes of slot and daemon record each of those objects costs, and
    /// never more than its object quota's share of the daemon.
    pub fn default_uid_max_references(uid_max_objects: u64) -> u64 {
        uid_max_objects.saturating_mul(2)
    }
}

/// The daemon's defaults: 1 MiB values, 2^24 objects and 4 GiB of values
/// in all, no tighter cap per uid on objects and bytes, and references for
/// twice the objects a uid may own.
impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_value_size: 1 << 20,
            max_objects: 1 << 24,
            max_bytes: 1 << 32,
            uid_max_objects: 1 << 24,
            uid_max_bytes: 1 << 32,
            uid_max_references: Limits::default_uid_max_references(1 << 24),
        }
    }
}

/// The limits in force, changeable while the registry serves (SIGHUP).
#[derive(Debug)]
pub(crate) struct LimitCell {
    max_value_size: AtomicU64,
    max_objects: AtomicU64,
    max_bytes: AtomicU64,
    uid_max_objects: AtomicU64,
    uid_max_bytes: AtomicU64,
    uid_max_references: AtomicU64,
}

impl LimitCell {
    pub(crate) fn new(limits: Limits) -> LimitCell {
        let cell = LimitCell {
            max_value_size: AtomicU64::new(0),
            max_objects: AtomicU64::new(0),
            max_bytes: AtomicU64::new(0),
            uid_max_objects: AtomicU64::new(0),
            uid_max_bytes: AtomicU64::new(0),
            uid_max_references: AtomicU64::new(0),
        };
        cell.set(limits);
        cell
    }

    pub(crate) fn set(&self, limits: Limits) {
        self.max_value_size
            .store(limits.max_value_size as u64, Ordering::Relaxed);
        self.max_objects
            .store(limits.max_objects, Ordering::Relaxed);
        self.max_bytes.store(limits.max_bytes, Ordering::Relaxed);
        self.uid_max_objects
            .store(limits.uid_max_objects, Ordering::Relaxed);
        self.uid_max_bytes
            .store(limits.uid_max_bytes, Ordering::Relaxed);
        self.uid_max_references
            .store(limits.uid_max_references, Ordering::Relaxed);
    }

    pub(crate) fn get(&self) -> Limits {
        Limits {
            max_value_size: self.max_value_size.load(Ordering::Relaxed) as usize,
            max_objects: self.max_objects.load(Ordering::Relaxed),
            max_bytes: self.max_bytes.load(Ordering::Relaxed),
            uid_max_objects: self.uid_max_objects.load(Ordering::Relaxed),
            uid_max_bytes: self.uid_max_bytes.load(Ordering::Relaxed),
            uid_max_references: self.uid_max_references.load(Ordering::Relaxed),
        }
    }

    pub(crate) fn max_value_size(&self) -> usize {
        self.max_value_size.load(Ordering::Relaxed) as usize
    }

    pub(crate) fn uid_max_references(&self) -> u64 {
        self.uid_max_references.load(Ordering::Relaxed)
    }
}

/// Objects and bytes counted against a limit: the bytes of live values, and
/// two kinds of bytes that are no object's but count against the same byte
/// limit, so that nothing passes it: large values in transit (ring staging
/// buffers), and replaced values that borrowed references still hold back
/// from reuse. A uid's counters also count its sessions' reference-table
/// entries, and what was granted ahead for posted inserts (handles
/// reserved, and the byte credit not spent yet): they count against the
/// same maximums as the objects and bytes they stand for, so that objects
/// and reservations together never pass them.
#[derive(Debug, Default)]
pub struct Counters {
    objects: AtomicU64,
    bytes: AtomicU64,
    staged: AtomicU64,
    held: AtomicU64,
    references: AtomicU64,
    /// Handles granted ahead whose insert has not come yet.
    reserved: AtomicU64,
    /// Byte credit granted ahead and not spent yet.
    credit: AtomicU64,
}

impl Counters {
    /// Adds to the counts unless one would pass its maximum (value and
    /// staged bytes together against `max_bytes`); says which otherwise.
    pub(crate) fn reserve(
        &self,
        objects: u64,
        bytes: u64,
        max_objects: u64,
        max_bytes: u64,
    ) -> Result<(), Exceeded> {
        self.objects.fetch_add(objects, Ordering::Relaxed);
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
        self.within(max_objects, max_bytes)
            .inspect_err(|_| self.give_back(objects, bytes))
    }

    /// Grants ahead `handles` reserved slots and `credit` bytes, unless
    /// objects and reservations, or bytes and credit, would pass their
    /// maximum; says which otherwise.
    pub(crate) fn reserve_ahead(
        &self,
        handles: u64,
        credit: u64,
        max_objects: u64,
        max_bytes: u64,
    ) -> Result<(), Exceeded> {
        self.reserved.fetch_add(handles, Ordering::Relaxed);
        self.credit.fetch_add(credit, Ordering::Relaxed);
        self.within(max_objects, max_bytes)
            .inspect_err(|_| self.give_back_ahead(handles, credit))
    }

    /// Whether what is counted (after an addition) is within the maximums.
    fn within(&self, max_objects: u64, max_bytes: u64) -> Result<(), Exceeded> {
        let (objects, bytes) = self.committed();
        if objects > max_objects {
            Err(Exceeded::Objects)
        } else if bytes > max_bytes {
            Err(Exceeded::Bytes)
        } else {
            Ok(())
        }
    }

    /// An insert into a reserved handle: the reservation becomes an
    /// object, and `bytes` of credit its value's bytes (no maximum is
    /// checked: they were counted already).
    pub(crate) fn spend_ahead(&self, bytes: u64) {
        self.reserved.fetch_sub(1, Ordering::Relaxed);
        self.objects.fetch_add(1, Ordering::Relaxed);
        self.credit.fetch_sub(bytes, Ordering::Relaxed);
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Gives back reservations and credit not used.
    pub(crate) fn give_back_ahead(&self, handles: u64, credit: u64) {
        self.reserved.fetch_sub(handles, Ordering::Relaxed);
        self.credit.fetch_sub(credit, Ordering::Relaxed);
    }

    /// Objects and bytes counted against the maximums: live objects and
    /// reservations; value, staged, held-back bytes and credit.
    pub(crate) fn committed(&self) -> (u64, u64) {
        let load = |n: &AtomicU64| n.load(Ordering::Relaxed);
        (
            load(&self.objects).saturating_add(load(&self.reserved)),
            load(&self.bytes)
                .saturating_add(load(&self.staged))
                .saturating_add(load(&self.held))
                .saturating_add(load(&self.credit)),
        )
    }

    /// Handles granted ahead and not used yet, and byte credit not spent.
    pub fn ahead(&self) -> (u64, u64) {
        (
            self.reserved.load(Ordering::Relaxed),
            self.credit.load(Ordering::Relaxed),
        )
    }

    /// Counts what an adopted state holds (no limit applies: it is there).
    pub(crate) fn adopt(&self, objects: u64, bytes: u64) {
        self.objects.fetch_add(objects, Ordering::Relaxed);
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    pub(crate) fn give_back(&self, objects: u64, bytes: u64) {
        self.objects.fetch_sub(objects, Ordering::Relaxed);
        self.bytes.fetch_sub(bytes, Ordering::Relaxed);
    }

    /// Adds `bytes` of staging unless values and staging together would
    /// pass `max_bytes`.
    pub(crate) fn reserve_staged(&self, bytes: u64, max_bytes: u64) -> bool {
        let staged = self
            .staged
            .fetch_add(bytes, Ordering::Relaxed)
            .saturating_add(bytes);
        let others = self.bytes.load(Ordering::Relaxed)
            + self.held.load(Ordering::Relaxed)
            + self.credit.load(Ordering::Relaxed);
        if staged.saturating_add(others) > max_bytes {
            self.staged.fetch_sub(bytes, Ordering::Relaxed);
            return false;
        }
        true
    }

    pub(crate) fn give_back_staged(&self, bytes: u64) {
        self.staged.fetch_sub(bytes, Ordering::Relaxed);
    }

    /// Sets the bytes held back from reuse on this count's behalf.
    pub(crate) fn set_held(&self, bytes: u64) {
        self.held.store(bytes, Ordering::Relaxed);
    }

    /// Counts one more reference-table entry unless that passes `max`.
    pub(crate) fn reserve_reference(&self, max: u64) -> bool {
        // Each handle granted ahead holds the entry its insert will take.
        let entries = self
            .references
            .fetch_add(1, Ordering::Relaxed)
            .saturating_add(self.reserved.load(Ordering::Relaxed));
        if entries >= max {
            self.references.fetch_sub(1, Ordering::Relaxed);
            return false;
        }
        true
    }

    /// Counts `entries` reference-table entries whatever the limit (an
    /// adopted state's: they are there).
    pub(crate) fn adopt_references(&self, entries: u64) {
        self.references.fetch_add(entries, Ordering::Relaxed);
    }

    pub(crate) fn give_back_references(&self, entries: u64) {
        self.references.fetch_sub(entries, Ordering::Relaxed);
    }

    /// Reference-table entries counted now and held by handles granted
    /// ahead (each holds the entry its insert will take): what
    /// `uid_max_references` is held against.
    pub(crate) fn references_committed(&self) -> u64 {
        self.references
            .load(Ordering::Relaxed)
            .saturating_add(self.reserved.load(Ordering::Relaxed))
    }

    pub(crate) fn usage(&self) -> Usage {
        Usage {
            objects: self.objects.load(Ordering::Relaxed),
            value_bytes: self.bytes.load(Ordering::Relaxed),
            references: self.references.load(Ordering::Relaxed),
            reserved: self.reserved.load(Ordering::Relaxed),
            credit: self.credit.load(Ordering::Relaxed),
        }
    }
}

/// Which maximum a [`Counters::reserve`] would have passed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Exceeded {
    Objects,
    Bytes,
}

impl Exceeded {
    /// The limit this is, given the limits the counts were held against.
    pub(crate) fn limit(self, objects: Limit, bytes: Limit) -> Limit {
        match self {
            Exceeded::Objects => objects,
            Exceeded::Bytes => bytes,
        }
    }
}

/// Figures about the registry's content, or what one uid is charged for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    /// Live objects.
    pub objects: u64,
    /// Bytes of their values (ring staging not included).
    pub value_bytes: u64,
    /// Reference-table entries (a uid's sessions' together; 0 in the
    /// registry's totals, which do not count them).
    pub references: u64,
    /// Handles granted ahead for posted inserts and not used yet (each
    /// counts as an object against the limits, apart from `objects`).
    pub reserved: u64,
    /// Byte credit granted ahead and not spent yet (counts as bytes
    /// against the limits, apart from `value_bytes`).
    pub credit: u64,
}

/// A reservation against the global and one uid's limits, undone on drop
/// unless kept.
pub(crate) struct Charge<'a> {
    pub(crate) counters: [&'a Counters; 2],
    pub(crate) objects: u64,
    pub(crate) bytes: u64,
}

impl Charge<'_> {
    pub(crate) fn keep(self) {
        std::mem::forget(self);
    }
}

impl Drop for Charge<'_> {
    fn drop(&mut self) {
        for counters in self.counters {
            counters.give_back(self.objects, self.bytes);
        }
    }
}
