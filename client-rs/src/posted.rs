//! Posted writes (issue 19): what the client keeps so that an insert need
//! not wait for the daemon. The daemon grants the session handles ahead
//! (RESERVE: slots reserved for it, counted against its uid's quotas) and a
//! byte credit; an insert of a value that fits in a ring entry takes a
//! handle from the pool of its kind (SHARED or the uid's own), spends its
//! length of credit, posts the entry and returns the handle. The pool is
//! refilled by a RESERVE when it is empty (the only wait), in batches that
//! grow with use; without a handle or credit an insert goes through the
//! ring synchronously, as before. Late failures of posted writes are kept
//! for the next flush ([`crate::engine::LateFailures`]).
//!
//! Until the daemon applies a posted insert, its slot reads as reserved:
//! the client answers its own reads of it from a copy of the value
//! ([`PostedValues`]), and posts a RETAIN or RELEASE of it on the ring the
//! insert went on (a ring is applied in order), so a handle's whole life
//! waits for nothing.
//!
//! RETAIN and RELEASE are posted too once the daemon said it applies posted
//! writes: they are answered here from the client's own count of its
//! references ([`RefCounts`], kept for every write, posted or not) and a
//! read of the slot (STALE).

use crate::engine::LateFailures;
use crate::error::{Error, Result};
use crate::reads::{Output, Resolved};
use crate::rings::RingCell;
use crate::{Completion, Op};
use hreg_proto::entry::INLINE_CAPACITY;
use hreg_proto::handle::Handle;
use hreg_proto::locks::lock;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, Weak};

/// Handles asked for by the first RESERVE of a kind.
const FIRST_BATCH: usize = 16;
/// Handles asked for at most by one RESERVE.
const LAST_BATCH: usize = hreg_proto::entry::MAX_GRANT;

/// Whether the session may post, as its daemon said.
const UNKNOWN: u8 = 0;
const POSTING: u8 = 1;
const SYNCHRONOUS: u8 = 2;

/// A client's posting state, shared by all its rings.
#[derive(Debug, Default)]
pub(crate) struct Posting {
    pub late: LateFailures,
    pub refs: RefCounts,
    pub dropping: Dropping,
    pub values: PostedValues,
    /// Posted entries whose completions no ring has read yet.
    pub in_flight: std::sync::atomic::AtomicUsize,
    pools: Mutex<Pools>,
    /// Byte credit left (never more than the daemon counts for the session:
    /// spent here before the daemon spends it, added here after it granted).
    credit: AtomicU64,
    mode: AtomicU8,
}

/// Handles granted ahead and not used yet, by kind, for one session
/// generation (a resumed session's daemon knows none of them).
#[derive(Debug, Default)]
struct Pools {
    generation: u64,
    /// [private, SHARED]
    handles: [Vec<Handle>; 2],
    /// The next RESERVE's size, per kind.
    batch: [usize; 2],
}

impl Posting {
    /// Whether inserts should try the posted path (the daemon did not say
    /// it applies none).
    pub fn may_post(&self) -> bool {
        self.mode.load(Ordering::Relaxed) != SYNCHRONOUS
    }

    /// Whether the daemon said it applies posted writes.
    pub fn posting(&self) -> bool {
        self.mode.load(Ordering::Relaxed) == POSTING
    }

    /// A handle granted ahead of the kind, for session generation
    /// `generation`; `None` when the pool is empty.
    pub fn take(&self, generation: u64, shared: bool) -> Option<Handle> {
        let mut pools = self.lock(generation);
        pools.handles[usize::from(shared)].pop()
    }

    /// Puts back a handle not used.
    pub fn put_back(&self, generation: u64, shared: bool, handle: Handle) {
        let mut pools = self.lock(generation);
        pools.handles[usize::from(shared)].push(handle);
    }

    /// Takes every handle of the pools (to give them back).
    pub fn drain(&self, generation: u64) -> Vec<Handle> {
        let mut pools = self.lock(generation);
        let [own, shared] = &mut pools.handles;
        own.drain(..).chain(shared.drain(..)).collect()
    }

    /// How many handles the next RESERVE of the kind asks for (each asks
    /// for twice the last, up to [`LAST_BATCH`]).
    pub fn next_batch(&self, generation: u64, shared: bool) -> usize {
        let mut pools = self.lock(generation);
        let batch = &mut pools.batch[usize::from(shared)];
        let now = (*batch).max(FIRST_BATCH);
        *batch = (now * 2).min(LAST_BATCH);
        now
    }

    /// Adds what a RESERVE granted.
    pub fn granted(
        &self,
        generation: u64,
        shared: bool,
        handles: &[Handle],
        credit: u64,
        posting: bool,
    ) {
        self.mode.store(
            if posting { POSTING } else { SYNCHRONOUS },
            Ordering::Relaxed,
        );
        if !posting {
            return;
        }
        self.lock(generation).handles[usize::from(shared)].extend_from_slice(handles);
        self.credit.fetch_add(credit, Ordering::Relaxed);
    }

    /// Takes all the credit left (to give it back).
    pub fn take_credit(&self) -> u64 {
        self.credit.swap(0, Ordering::Relaxed)
    }

    /// Spends `bytes` of credit; false (nothing spent) when less is left.
    pub fn spend(&self, bytes: u64) -> bool {
        self.credit
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| {
                left.checked_sub(bytes)
            })
            .is_ok()
    }

    fn lock(&self, generation: u64) -> std::sync::MutexGuard<'_, Pools> {
        let mut pools = lock(&self.pools);
        if pools.generation != generation {
            // Handles of a daemon before a resume: not this one's.
            *pools = Pools {
                generation,
                ..Pools::default()
            };
            self.credit.store(0, Ordering::Relaxed);
            self.mode.store(UNKNOWN, Ordering::Relaxed);
        }
        pools
    }
}

/// Shards of [`RefCounts`] (threads releasing different handles rarely
/// meet on one lock).
const REF_SHARDS: usize = 16;

/// The references this client's session holds, by handle, as the daemon
/// counts them once every write this client made is applied: what a posted
/// RETAIN or RELEASE is answered from (NOT_HELD without the daemon).
#[derive(Debug, Default)]
pub(crate) struct RefCounts {
    shards: [Mutex<HashMap<u64, u32>>; REF_SHARDS],
}

impl RefCounts {
    fn shard(&self, handle: Handle) -> std::sync::MutexGuard<'_, HashMap<u64, u32>> {
        lock(&self.shards[spread(handle) % REF_SHARDS])
    }

    /// References held on `handle`.
    pub fn held(&self, handle: Handle) -> u32 {
        self.shard(handle).get(&handle.get()).copied().unwrap_or(0)
    }

    /// One more reference (an insert, a retain).
    pub fn add(&self, handle: Handle) {
        let mut shard = self.shard(handle);
        let count = shard.entry(handle.get()).or_insert(0);
        *count = count.saturating_add(1);
    }

    /// Takes one reference if one is held: `Some(true)` when it was the
    /// last, `None` when none was held.
    pub fn take(&self, handle: Handle) -> Option<bool> {
        let mut shard = self.shard(handle);
        match shard.get_mut(&handle.get()) {
            Some(count) if *count > 1 => {
                *count -= 1;
                Some(false)
            }
            Some(_) => {
                shard.remove(&handle.get());
                Some(true)
            }
            None => None,
        }
    }

    /// The object is gone: its references with it.
    pub fn forget(&self, handle: Handle) {
        self.shard(handle).remove(&handle.get());
    }

    /// Counts what a write through the ring did (synchronous, alone or in
    /// a batch), from what it was and its result.
    pub fn note(&self, write: Write, result: &Result<Completion>) {
        match (write, result) {
            (Write::Insert { detached: false }, Ok(Completion::Inserted(h))) => self.add(*h),
            (Write::Retain(h), Ok(_)) => self.add(h),
            (Write::Release(h), Ok(_)) => {
                self.take(h);
            }
            (
                Write::Release(h) | Write::Retain(h) | Write::Remove(h),
                Err(Error::Stale | Error::NotHeld),
            )
            | (Write::Remove(h), Ok(_)) => self.forget(h),
            _ => {}
        }
    }
}

/// What a write op does to the session's references (see
/// [`RefCounts::note`]).
#[derive(Clone, Copy, Debug)]
pub(crate) enum Write {
    Insert { detached: bool },
    Retain(Handle),
    Release(Handle),
    Remove(Handle),
}

impl Write {
    /// The write `op` is, if it changes references.
    pub fn of(op: &Op<'_>) -> Option<Write> {
        Some(match op {
            Op::Insert { flags, .. } => Write::Insert {
                detached: flags & crate::DETACHED != 0,
            },
            Op::Retain(h) => Write::Retain(*h),
            Op::Release(h) => Write::Release(*h),
            Op::Remove(h) => Write::Remove(*h),
            _ => return None,
        })
    }
}

/// Where a handle falls among shards or buckets: its slot's low bits
/// mixed with its generation's (handles in use together are mostly
/// different slots).
#[inline(always)]
fn spread(handle: Handle) -> usize {
    let h = handle.get();
    (h ^ (h >> 24)) as usize
}

/// Buckets of [`Dropping`]'s filter (a power of two).
const DROP_BUCKETS: usize = 1024;

/// Handles whose last reference this client released by a posted RELEASE
/// the daemon has not applied yet: a read of one by this client waits for
/// its writes first (read-your-writes: its own release makes it STALE at
/// once). Completions are read in batches, so some releases are in flight
/// most of the time; a read looks at one counter of a filter (the
/// releases pending in its handle's bucket, usually none) and at the list
/// only on a hit.
#[derive(Debug)]
pub(crate) struct Dropping {
    buckets: Box<[AtomicU32]>,
    shards: [Mutex<Vec<u64>>; REF_SHARDS],
}

impl Default for Dropping {
    fn default() -> Dropping {
        Dropping {
            buckets: (0..DROP_BUCKETS).map(|_| AtomicU32::new(0)).collect(),
            shards: Default::default(),
        }
    }
}

impl Dropping {
    fn shard(&self, handle: Handle) -> std::sync::MutexGuard<'_, Vec<u64>> {
        lock(&self.shards[spread(handle) % REF_SHARDS])
    }

    #[inline(always)]
    fn bucket(&self, handle: Handle) -> &AtomicU32 {
        &self.buckets[spread(handle) & (DROP_BUCKETS - 1)]
    }

    /// A posted RELEASE of the last reference to `handle`, before it is
    /// published.
    pub fn add(&self, handle: Handle) {
        self.shard(handle).push(handle.get());
        self.bucket(handle).fetch_add(1, Ordering::Release);
    }

    /// That RELEASE was applied.
    pub fn applied(&self, handle: Handle) {
        let mut shard = self.shard(handle);
        if let Some(at) = shard.iter().position(|&h| h == handle.get()) {
            shard.swap_remove(at);
            self.bucket(handle).fetch_sub(1, Ordering::Release);
        }
    }

    /// Whether a RELEASE of `handle`'s last reference may wait to be
    /// applied (one load; false means surely not).
    #[inline(always)]
    pub fn maybe_pending(&self, handle: Handle) -> bool {
        self.bucket(handle).load(Ordering::Acquire) != 0
    }

    /// Whether a RELEASE of `handle`'s last reference waits to be applied.
    #[inline]
    pub fn pending(&self, handle: Handle) -> bool {
        self.maybe_pending(handle) && self.shard(handle).contains(&handle.get())
    }
}

/// Places of [`PostedValues`] (a power of two).
const VALUE_PLACES: usize = 256;

/// Copies of the values of this client's latest posted inserts, one per
/// place (a later insert whose slot falls on the same place takes it): a
/// read by this client of a handle whose slot still reads as reserved for
/// it answers from here, without waiting. A copy is only ever used while
/// the slot says the insert is not applied, so it is never older than the
/// object: nothing else can have changed it yet.
#[derive(Debug)]
pub(crate) struct PostedValues {
    places: Box<[Mutex<Option<PostedValue>>]>,
}

#[derive(Debug)]
struct PostedValue {
    handle: u64,
    /// The ring the insert was posted on.
    ring: Weak<RingCell>,
    len: u8,
    bytes: [u8; INLINE_CAPACITY],
}

impl Default for PostedValues {
    fn default() -> PostedValues {
        PostedValues {
            places: (0..VALUE_PLACES).map(|_| Mutex::new(None)).collect(),
        }
    }
}

impl PostedValues {
    fn place(&self, handle: Handle) -> std::sync::MutexGuard<'_, Option<PostedValue>> {
        // The slot index is in the low bits: consecutive grants spread.
        lock(&self.places[handle.get() as usize % VALUE_PLACES])
    }

    /// Keeps `value` (at most [`INLINE_CAPACITY`] bytes) of the insert
    /// into `handle` posted on `ring`.
    pub fn keep(&self, handle: Handle, ring: Weak<RingCell>, value: &[u8]) {
        if value.len() > INLINE_CAPACITY {
            return;
        }
        let mut bytes = [0; INLINE_CAPACITY];
        bytes[..value.len()].copy_from_slice(value);
        *self.place(handle) = Some(PostedValue {
            handle: handle.get(),
            ring,
            len: value.len() as u8,
            bytes,
        });
    }

    /// `handle`'s value into `out`, if a copy is kept (`None`: ask the
    /// daemon). Only for a handle whose slot reads as reserved for this
    /// client.
    pub fn read(&self, handle: Handle, out: &mut Output<'_>) -> Option<Resolved> {
        let place = self.place(handle);
        let kept = place.as_ref().filter(|k| k.handle == handle.get())?;
        let len = usize::from(kept.len);
        Some(match out.take(len) {
            Some(buf) => {
                buf.copy_from_slice(&kept.bytes[..len]);
                Resolved::Value(len)
            }
            None => Resolved::Buffer(len),
        })
    }

    /// The ring `handle`'s insert was posted on, if it is known and still
    /// open.
    pub fn ring_of(&self, handle: Handle) -> Option<Arc<RingCell>> {
        let place = self.place(handle);
        place
            .as_ref()
            .filter(|k| k.handle == handle.get())?
            .ring
            .upgrade()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn handle(raw: u64) -> Handle {
        Handle::new(raw).expect("non-zero")
    }

    fn read_vec(values: &PostedValues, h: Handle) -> Option<Vec<u8>> {
        let mut vec = Vec::new();
        match values.read(h, &mut Output::Vec(&mut vec))? {
            Resolved::Value(len) => {
                assert_eq!(len, vec.len());
                Some(vec)
            }
            _ => panic!("a copy into a vector is the value"),
        }
    }

    #[test]
    fn posted_values_answer_for_their_own_handle_only() {
        let values = PostedValues::default();
        let (a, b) = (handle(0x1_0000_0001), handle(0x1_0000_0002));
        values.keep(a, Weak::new(), b"alpha");
        values.keep(b, Weak::new(), b"");
        assert_eq!(read_vec(&values, a).as_deref(), Some(&b"alpha"[..]));
        assert_eq!(read_vec(&values, b).as_deref(), Some(&b""[..]));
        // Same place, another generation: not this handle's value.
        assert_eq!(read_vec(&values, handle(0x2_0000_0001)), None);
        let mut short = [0u8; 3];
        assert!(matches!(
            values.read(a, &mut Output::Buffer(&mut short)),
            Some(Resolved::Buffer(5))
        ));
        let mut exact = [0u8; 5];
        assert!(matches!(
            values.read(a, &mut Output::Buffer(&mut exact)),
            Some(Resolved::Value(5))
        ));
        assert_eq!(&exact, b"alpha");
        // A later insert on the same place takes it.
        let c = handle(0x1_0000_0001 + VALUE_PLACES as u64);
        values.keep(c, Weak::new(), b"gamma");
        assert_eq!(read_vec(&values, a), None);
        assert_eq!(read_vec(&values, c).as_deref(), Some(&b"gamma"[..]));
        // A dropped ring is no ring.
        assert!(values.ring_of(c).is_none());
        // Longer than an entry: never posted, never kept.
        let d = handle(0x1_0000_0003);
        values.keep(d, Weak::new(), &[7; INLINE_CAPACITY + 1]);
        assert_eq!(read_vec(&values, d), None);
    }
}
