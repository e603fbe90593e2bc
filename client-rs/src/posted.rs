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
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};
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
///
/// Each handle also keeps the ring its posted writes go on: a ring is
/// applied in order, two rings in any order, so a RELEASE posted on one
/// ring could be applied before a RETAIN (or the insert) posted earlier on
/// another, and kill the object while the client counts a reference (a
/// thread that hands a handle to another, or a Go goroutine that moved
/// rings). Every posted write of a handle goes on its ring, its count
/// changed under that ring's lock ([`RefCounts::claim`]).
#[derive(Debug, Default)]
pub(crate) struct RefCounts {
    shards: [Mutex<HashMap<u64, Held>>; REF_SHARDS],
}

/// One handle's references, and the ring its posted writes go on.
#[derive(Debug)]
struct Held {
    count: u32,
    /// Empty until a write of the handle is posted.
    ring: Weak<RingCell>,
    /// That ring's [`RingCell::gone`], once there is a ring.
    ring_gone: Option<Arc<AtomicBool>>,
}

impl Held {
    fn new() -> Held {
        Held {
            count: 0,
            ring: Weak::new(),
            ring_gone: None,
        }
    }

    fn follow(&mut self, ring: &Arc<RingCell>) {
        self.ring = Arc::downgrade(ring);
        self.ring_gone = Some(ring.gone());
    }
}

/// What [`RefCounts::claim`] did.
pub(crate) enum Claim {
    /// Counted: post the write on the ring (`last`: a RELEASE of the last
    /// reference).
    Posted { last: bool },
    /// A RELEASE of a handle this session holds no reference to.
    NotHeld,
    /// A RETAIN that must go to the daemon (a first reference, which may
    /// pass a limit, or a count at its top).
    Synchronous,
    /// The handle's posted writes go on this other ring: post there.
    Elsewhere(Arc<RingCell>),
    /// The handle's ring is being dropped, its posted writes not all
    /// applied yet: try again in a moment.
    Wait,
}

impl RefCounts {
    fn shard(&self, handle: Handle) -> std::sync::MutexGuard<'_, HashMap<u64, Held>> {
        lock(&self.shards[spread(handle) % REF_SHARDS])
    }

    /// One more reference (an insert, a retain), and for a posted insert
    /// the ring it went on.
    pub fn add(&self, handle: Handle, posted_on: Option<&Arc<RingCell>>) {
        let mut shard = self.shard(handle);
        let held = shard.entry(handle.get()).or_insert_with(Held::new);
        held.count = held.count.saturating_add(1);
        if let Some(ring) = posted_on {
            held.follow(ring);
        }
    }

    /// Counts a posted RETAIN (`retain`) or RELEASE of `handle` to go on
    /// `ring`, whose lock the caller holds, if `ring` is the handle's ring
    /// (or it has none that is open in `generation`: then `ring` becomes
    /// its ring).
    pub fn claim(
        &self,
        handle: Handle,
        ring: &Arc<RingCell>,
        generation: u64,
        retain: bool,
    ) -> Claim {
        let mut shard = self.shard(handle);
        let Some(held) = shard.get_mut(&handle.get()) else {
            return if retain {
                Claim::Synchronous
            } else {
                Claim::NotHeld
            };
        };
        match held.ring.upgrade() {
            Some(own) if own.generation() == generation && !Arc::ptr_eq(&own, ring) => {
                return Claim::Elsewhere(own)
            }
            Some(own) if Arc::ptr_eq(&own, ring) => {}
            // Its last reference went, and its drop may still be applying
            // what it holds (a write here now could overtake it).
            None if held
                .ring_gone
                .as_ref()
                .is_some_and(|gone| !gone.load(Ordering::Acquire)) =>
            {
                return Claim::Wait
            }
            _ => held.follow(ring),
        }
        if retain {
            if held.count == 0 || held.count >= u32::MAX - 1 {
                return Claim::Synchronous;
            }
            held.count += 1;
            return Claim::Posted { last: false };
        }
        match take_from(&mut shard, handle) {
            Some(last) => Claim::Posted { last },
            None => Claim::NotHeld,
        }
    }

    /// Takes one reference if one is held: `Some(true)` when it was the
    /// last, `None` when none was held.
    fn take(&self, handle: Handle) -> Option<bool> {
        take_from(&mut self.shard(handle), handle)
    }

    /// The object is gone: its references with it.
    pub fn forget(&self, handle: Handle) {
        self.shard(handle).remove(&handle.get());
    }

    /// Counts what a write through the ring did (synchronous, alone or in
    /// a batch), from what it was and its result.
    pub fn note(&self, write: Write, result: &Result<Completion>) {
        match (write, result) {
            (Write::Insert { detached: false }, Ok(Completion::Inserted(h))) => self.add(*h, None),
            (Write::Retain(h), Ok(_)) => self.add(h, None),
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

/// Takes one of `handle`'s references from its shard of [`RefCounts`]:
/// `Some(true)` when it was the last (the entry goes), `None` when none was
/// held.
fn take_from(shard: &mut HashMap<u64, Held>, handle: Handle) -> Option<bool> {
    let held = shard.get_mut(&handle.get())?;
    if held.count > 1 {
        held.count -= 1;
        return Some(false);
    }
    shard.remove(&handle.get());
    Some(true)
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
/// different slots). Bindings that read [`Dropping`]'s filter themselves
/// repeat it (libhreg's `hreg_bind_reads_info` documents it).
#[inline(always)]
fn spread(handle: Handle) -> usize {
    let h = handle.get();
    (h ^ (h >> 24)) as usize
}

/// Buckets of [`Dropping`]'s filter (a power of two).
const DROP_BUCKETS: usize = 1024;

/// Which counter of [`Dropping`]'s filter is `handle`'s (for bindings:
/// [`crate::MappedReads::releases_pending`]).
#[inline(always)]
pub fn release_bucket(handle: Handle) -> usize {
    spread(handle) & (DROP_BUCKETS - 1)
}

/// Handles whose last reference this client released by a posted RELEASE
/// the daemon has not applied yet: a read of one by this client waits for
/// its writes first (read-your-writes: its own release makes it STALE at
/// once). Completions are read in batches, so some releases are in flight
/// most of the time; a read looks at one counter of a filter (the
/// releases pending in its handle's bucket, usually none) and at the list
/// only on a hit. A binding that reads slots in its own runtime (Go) reads
/// the filter too ([`crate::MappedReads::releases_pending`]), and on a hit
/// asks the client.
#[derive(Debug)]
pub(crate) struct Dropping {
    /// Shared with bindings, which only read it.
    buckets: Arc<[AtomicU32]>,
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

    /// The filter, for a binding that reads it itself.
    pub fn filter(&self) -> Arc<[AtomicU32]> {
        Arc::clone(&self.buckets)
    }

    #[inline(always)]
    fn bucket(&self, handle: Handle) -> &AtomicU32 {
        &self.buckets[release_bucket(handle)]
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
/// Copies one place keeps.
const VALUE_WAYS: usize = 4;

/// Copies of the values of this client's latest posted inserts, a few per
/// place (a later insert whose handle falls on a full place takes the
/// place's oldest copy): a read by this client of a handle whose slot
/// still reads as reserved for it answers from here, without waiting. A
/// copy is only ever used while the slot says the insert is not applied,
/// so it is never older than the object: nothing else can have changed it
/// yet.
///
/// Handles are placed by a multiplicative hash: a grant's slots are a few
/// per registry shard, so their low bits repeat with the shard count, and
/// placed by those bits the inserts of many threads (or Go's goroutines,
/// 16 at a time) took each other's places, and half their reads waited for
/// the daemon.
#[derive(Debug)]
pub(crate) struct PostedValues {
    places: Box<[Mutex<Place>]>,
}

/// One place's copies, and which one the next insert takes.
#[derive(Debug, Default)]
struct Place {
    copies: [Option<PostedValue>; VALUE_WAYS],
    oldest: usize,
}

impl Place {
    fn find(&self, handle: Handle) -> Option<&PostedValue> {
        self.copies
            .iter()
            .flatten()
            .find(|copy| copy.handle == handle.get())
    }
}

#[derive(Debug)]
struct PostedValue {
    handle: u64,
    len: u8,
    bytes: [u8; INLINE_CAPACITY],
}

impl Default for PostedValues {
    fn default() -> PostedValues {
        PostedValues {
            places: (0..VALUE_PLACES).map(|_| Mutex::default()).collect(),
        }
    }
}

/// Which place of [`PostedValues`] is `handle`'s (Fibonacci hashing).
fn value_place(handle: Handle) -> usize {
    (handle.get().wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - VALUE_PLACES.trailing_zeros()))
        as usize
}

impl PostedValues {
    fn place(&self, handle: Handle) -> std::sync::MutexGuard<'_, Place> {
        lock(&self.places[value_place(handle)])
    }

    /// Keeps `value` (at most [`INLINE_CAPACITY`] bytes) of the insert
    /// into `handle`.
    pub fn keep(&self, handle: Handle, value: &[u8]) {
        if value.len() > INLINE_CAPACITY {
            return;
        }
        let mut bytes = [0; INLINE_CAPACITY];
        bytes[..value.len()].copy_from_slice(value);
        let copy = PostedValue {
            handle: handle.get(),
            len: value.len() as u8,
            bytes,
        };
        let mut place = self.place(handle);
        let way = place.oldest;
        place.oldest = (way + 1) % VALUE_WAYS;
        place.copies[way] = Some(copy);
    }

    /// `handle`'s value into `out`, if a copy is kept (`None`: ask the
    /// daemon). Only for a handle whose slot reads as reserved for this
    /// client.
    pub fn read(&self, handle: Handle, out: &mut Output<'_>) -> Option<Resolved> {
        let place = self.place(handle);
        let kept = place.find(handle)?;
        let len = usize::from(kept.len);
        Some(match out.take(len) {
            Some(buf) => {
                buf.copy_from_slice(&kept.bytes[..len]);
                Resolved::Value(len)
            }
            None => Resolved::Buffer(len),
        })
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
        values.keep(a, b"alpha");
        values.keep(b, b"");
        assert_eq!(read_vec(&values, a).as_deref(), Some(&b"alpha"[..]));
        assert_eq!(read_vec(&values, b).as_deref(), Some(&b""[..]));
        // Another generation of the same slot: not this handle's value.
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
        // Later inserts on the same place take it once it is full.
        let same_place: Vec<Handle> = (0x1_0000_0003..)
            .map(handle)
            .filter(|&h| value_place(h) == value_place(a))
            .take(VALUE_WAYS)
            .collect();
        for (k, &h) in same_place.iter().enumerate() {
            assert_eq!(read_vec(&values, a).as_deref(), Some(&b"alpha"[..]));
            values.keep(h, &[k as u8]);
        }
        assert_eq!(read_vec(&values, a), None);
        for (k, &h) in same_place.iter().enumerate() {
            assert_eq!(read_vec(&values, h), Some(vec![k as u8]));
        }
        // Longer than an entry: never posted, never kept.
        let d = handle(0x1_0000_0002_0000);
        values.keep(d, &[7; INLINE_CAPACITY + 1]);
        assert_eq!(read_vec(&values, d), None);
    }

    #[test]
    fn inserts_in_flight_at_once_keep_their_copies() {
        // A grant takes a few vacant slots per registry shard (slot =
        // shard + 64 * k for a shard's k-th slot), and after some churn a
        // shard's vacant slots may be any k: 16 threads' inserts from such
        // a grant must not take each other's places.
        let values = PostedValues::default();
        let in_flight: Vec<Handle> = (0..4u64)
            .flat_map(|shard| (0..4u64).map(move |k| 0x3_0000_0000 + shard + 64 * 4 * k))
            .map(handle)
            .collect();
        for (k, &h) in in_flight.iter().enumerate() {
            values.keep(h, &[k as u8; 16]);
        }
        for (k, &h) in in_flight.iter().enumerate() {
            assert_eq!(read_vec(&values, h), Some(vec![k as u8; 16]), "{h:?}");
        }
    }

    #[test]
    fn the_filter_is_read_where_bindings_are_told_to_read_it() {
        // libhreg's hreg_bind_reads_info spells the bucket out for
        // bindings (Go reads the filter itself): keep the two the same.
        let dropping = Dropping::default();
        let filter = dropping.filter();
        assert_eq!(filter.len(), DROP_BUCKETS);
        assert!(DROP_BUCKETS.is_power_of_two());
        for raw in [
            1u64,
            0x1_0000_0001,
            0xdead_beef_1234,
            u64::MAX,
            0x0123_4567_89ab_cdef,
        ] {
            let h = handle(raw);
            let documented = ((raw ^ (raw >> 24)) & (filter.len() as u64 - 1)) as usize;
            assert_eq!(release_bucket(h), documented);
            dropping.add(h);
            assert_eq!(filter[documented].load(Ordering::Acquire), 1);
            assert!(dropping.pending(h));
            dropping.applied(h);
            assert_eq!(filter[documented].load(Ordering::Acquire), 0);
        }
    }
}
