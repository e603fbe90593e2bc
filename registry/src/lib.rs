//! hreg-registry: the objects of hreg and everything about them — the
//! object model (references per session, DETACHED, access by uid),
//! generational handles, the limits (global and per uid) and the value
//! storage (`store`). No sockets, threads or signals: the daemon serves it,
//! and the bench measures it alone.
//!
//! Each shard is a slab of slots behind its own `RwLock`; a handle names its
//! shard and slot directly, so a lookup hashes nothing and takes one shard
//! lock. Global counters are atomics. No lock spans shards, and the only
//! nested lock is a session's reference table inside a shard's lock (always
//! in that order).

#![deny(unsafe_code)]
#![warn(missing_docs)]

mod store;

use crate::store::Value;
use crossbeam_utils::CachePadded;
pub use hreg_proto::control::ListFilter;
use hreg_proto::control::ObjectInfo;
use hreg_proto::handle::{Handle, HandleParts, GENERATION_MASK, SLOT_BITS};
use hreg_proto::{flags, Opcode, Status};
use std::collections::hash_map::{Entry, RandomState};
use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

/// Slots per slab chunk: the slab grows a chunk at a time, so it never holds
/// more than one partly used chunk per shard and never moves slots.
const CHUNK: usize = 1024;

/// Highest generation a slot may carry while live; a slot that reaches it is
/// retired, so an old handle can never match again.
const LAST_GENERATION: u32 = GENERATION_MASK - 1;

/// The uid allowed everything.
pub const ROOT: u32 = 0;

/// Shards a registry has unless told otherwise (a power of two).
pub const DEFAULT_SHARDS: usize = 64;

/// Slots one LIST request looks at, at most.
pub const LIST_SCAN_BUDGET: usize = 65_536;

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
}

/// The daemon's defaults: 1 MiB values, 2^24 objects and 4 GiB of values
/// in all, and no tighter cap per uid.
impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_value_size: 1 << 20,
            max_objects: 1 << 24,
            max_bytes: 1 << 32,
            uid_max_objects: 1 << 24,
            uid_max_bytes: 1 << 32,
        }
    }
}

/// The limits in force, changeable while the registry serves (SIGHUP).
#[derive(Debug)]
struct LimitCell {
    max_value_size: AtomicU64,
    max_objects: AtomicU64,
    max_bytes: AtomicU64,
    uid_max_objects: AtomicU64,
    uid_max_bytes: AtomicU64,
}

impl LimitCell {
    fn new(limits: Limits) -> LimitCell {
        let cell = LimitCell {
            max_value_size: AtomicU64::new(0),
            max_objects: AtomicU64::new(0),
            max_bytes: AtomicU64::new(0),
            uid_max_objects: AtomicU64::new(0),
            uid_max_bytes: AtomicU64::new(0),
        };
        cell.set(limits);
        cell
    }

    fn set(&self, limits: Limits) {
        self.max_value_size
            .store(limits.max_value_size as u64, Ordering::Relaxed);
        self.max_objects
            .store(limits.max_objects, Ordering::Relaxed);
        self.max_bytes.store(limits.max_bytes, Ordering::Relaxed);
        self.uid_max_objects
            .store(limits.uid_max_objects, Ordering::Relaxed);
        self.uid_max_bytes
            .store(limits.uid_max_bytes, Ordering::Relaxed);
    }

    fn get(&self) -> Limits {
        Limits {
            max_value_size: self.max_value_size.load(Ordering::Relaxed) as usize,
            max_objects: self.max_objects.load(Ordering::Relaxed),
            max_bytes: self.max_bytes.load(Ordering::Relaxed),
            uid_max_objects: self.uid_max_objects.load(Ordering::Relaxed),
            uid_max_bytes: self.uid_max_bytes.load(Ordering::Relaxed),
        }
    }

    fn max_value_size(&self) -> usize {
        self.max_value_size.load(Ordering::Relaxed) as usize
    }
}

/// Objects and bytes counted against a limit: the bytes of live values, and
/// the bytes of large values in transit (ring staging buffers), which count
/// against the same byte limit so that staging cannot pass it.
#[derive(Debug, Default)]
pub struct Counters {
    objects: AtomicU64,
    bytes: AtomicU64,
    staged: AtomicU64,
}

impl Counters {
    /// Adds to the counts unless one would pass its maximum (value and
    /// staged bytes together against `max_bytes`).
    fn reserve(&self, objects: u64, bytes: u64, max_objects: u64, max_bytes: u64) -> bool {
        let total_objects = self
            .objects
            .fetch_add(objects, Ordering::Relaxed)
            .saturating_add(objects);
        let total_bytes = self
            .bytes
            .fetch_add(bytes, Ordering::Relaxed)
            .saturating_add(bytes)
            .saturating_add(self.staged.load(Ordering::Relaxed));
        if total_objects > max_objects || total_bytes > max_bytes {
            self.give_back(objects, bytes);
            return false;
        }
        true
    }

    fn give_back(&self, objects: u64, bytes: u64) {
        self.objects.fetch_sub(objects, Ordering::Relaxed);
        self.bytes.fetch_sub(bytes, Ordering::Relaxed);
    }

    /// Adds `bytes` of staging unless values and staging together would
    /// pass `max_bytes`.
    fn reserve_staged(&self, bytes: u64, max_bytes: u64) -> bool {
        let staged = self
            .staged
            .fetch_add(bytes, Ordering::Relaxed)
            .saturating_add(bytes);
        if staged.saturating_add(self.bytes.load(Ordering::Relaxed)) > max_bytes {
            self.staged.fetch_sub(bytes, Ordering::Relaxed);
            return false;
        }
        true
    }

    fn give_back_staged(&self, bytes: u64) {
        self.staged.fetch_sub(bytes, Ordering::Relaxed);
    }

    fn usage(&self) -> Usage {
        Usage {
            objects: self.objects.load(Ordering::Relaxed),
            value_bytes: self.bytes.load(Ordering::Relaxed),
        }
    }
}

/// Who asks, and the references they hold: one per session. Made by
/// [`Registry::holder`].
#[derive(Debug)]
pub struct Holder {
    /// The uid the holder acts as (the daemon gives a session its peer's,
    /// from `SO_PEERCRED`): it owns what it inserts, and access is judged
    /// by it.
    pub uid: u32,
    /// What this uid owns, shared by all its sessions.
    usage: Arc<Counters>,
    /// References this holder owns, by full handle (never by slot, so a reused
    /// slot can't inherit them).
    refs: Mutex<RefTable>,
    /// Bytes of this session's ring staging buffers.
    staged: AtomicU64,
}

/// A session's references by handle.
///
/// Entries of objects that died while referenced (removed by someone, or a
/// session's reference left behind by REMOVE) are dropped by a purge that
/// runs whenever the table has doubled since the last one, so the table
/// stays within twice the live objects it references plus
/// [`PURGE_FLOOR`], however a client loops.
#[derive(Debug)]
struct RefTable {
    counts: HashMap<u64, u32, BuildHasherDefault<HandleHasher>>,
    /// The sum of `counts`.
    total: u64,
    /// The table size that triggers the next purge.
    purge_at: usize,
}

/// Smallest table size at which a purge runs.
const PURGE_FLOOR: usize = 1024;

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
    fn held(&self, handle: u64) -> u32 {
        self.counts.get(&handle).copied().unwrap_or(0)
    }

    /// One more reference; the caller checked that it fits in a `u32`.
    fn add(&mut self, handle: u64) {
        *self.counts.entry(handle).or_insert(0) += 1;
        self.total += 1;
    }

    /// One reference fewer; false when none is held.
    fn take(&mut self, handle: u64) -> bool {
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
    fn forget(&mut self, handle: u64) {
        if let Some(count) = self.counts.remove(&handle) {
            self.total -= u64::from(count);
        }
    }

    fn wants_purge(&self) -> bool {
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

#[derive(Debug, Default)]
struct Slot {
    generation: u32,
    owner: u32,
    /// References held by all sessions together.
    refs: u32,
    flags: u8,
    live: bool,
    value: Value,
}

impl Slot {
    #[inline]
    fn readable_by(&self, uid: u32) -> bool {
        uid == ROOT || uid == self.owner || u32::from(self.flags) & flags::SHARED != 0
    }

    #[inline]
    fn writable_by(&self, uid: u32) -> bool {
        uid == ROOT || uid == self.owner
    }
}

#[derive(Debug)]
struct Shard {
    chunks: Vec<Vec<Slot>>,
    /// Live objects in this shard.
    live: usize,
    /// Dead slots ready for reuse, oldest first: reusing the longest-dead slot
    /// spreads generations over all free slots.
    free: VecDeque<u32>,
    /// State of the generator that picks a new slot's first generation.
    seed: u64,
}

impl Shard {
    #[inline]
    fn slot(&self, local: u32) -> Option<&Slot> {
        let local = local as usize;
        self.chunks.get(local / CHUNK)?.get(local % CHUNK)
    }

    #[inline]
    fn slot_mut(&mut self, local: u32) -> Option<&mut Slot> {
        let local = local as usize;
        self.chunks.get_mut(local / CHUNK)?.get_mut(local % CHUNK)
    }

    fn len(&self) -> usize {
        self.chunks.iter().map(Vec::len).sum()
    }

    /// A dead slot to fill: a reused one, or a new one with a random first
    /// generation (so handles of an earlier daemon rarely line up).
    fn vacant(&mut self, max_local: usize) -> Option<u32> {
        if let Some(local) = self.free.pop_front() {
            return Some(local);
        }
        let local = self.len();
        if local >= max_local {
            return None;
        }
        if self.chunks.last().is_none_or(|c| c.len() == CHUNK) {
            let mut chunk = Vec::new();
            chunk.try_reserve_exact(CHUNK).ok()?;
            self.chunks.push(chunk);
        }
        self.seed ^= self.seed << 13;
        self.seed ^= self.seed >> 7;
        self.seed ^= self.seed << 17;
        let generation = (self.seed as u32 & (LAST_GENERATION >> 1)).max(1);
        self.chunks.last_mut()?.push(Slot {
            generation,
            ..Slot::default()
        });
        Some(local as u32)
    }

    /// Ends the object in `local`: its generation moves on and the slot is
    /// freed, or retired once its generations are used up.
    fn kill(&mut self, local: u32) -> Option<Value> {
        let slot = self.slot_mut(local)?;
        slot.live = false;
        slot.refs = 0;
        slot.generation += 1;
        let value = std::mem::take(&mut slot.value);
        if slot.generation <= LAST_GENERATION {
            self.free.push_back(local);
        }
        Some(value)
    }
}

/// Figures about the registry's content.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    /// Live objects.
    pub objects: u64,
    /// Bytes of their values (ring staging not included).
    pub value_bytes: u64,
}

/// The objects, in shards, with their handles, references, owners and the
/// limits on them. One per daemon, shared by every thread that serves.
pub struct Registry {
    shards: Box<[CachePadded<RwLock<Shard>>]>,
    shard_bits: u32,
    epoch: u16,
    limits: LimitCell,
    total: CachePadded<Counters>,
    /// What each uid owns. Written only when a uid is seen for the first time.
    uids: RwLock<HashMap<u32, Arc<Counters>>>,
}

impl Registry {
    /// A registry of `shards` shards (rounded up to a power of two, at most
    /// 1024), whose handles carry a fresh random epoch.
    pub fn new(shards: usize, limits: Limits) -> Registry {
        let shards = shards.clamp(1, 1024).next_power_of_two();
        let random = RandomState::new().build_hasher().finish();
        let epoch = ((random >> 48) as u16 & hreg_proto::handle::EPOCH_MASK).max(1);
        Registry::with_epoch(shards, limits, epoch, random)
    }

    fn with_epoch(shards: usize, limits: Limits, epoch: u16, seed: u64) -> Registry {
        let shards = (0..shards)
            .map(|i| {
                CachePadded::new(RwLock::new(Shard {
                    chunks: Vec::new(),
                    free: VecDeque::new(),
                    live: 0,
                    seed: (seed ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)) | 1,
                }))
            })
            .collect::<Box<[_]>>();
        Registry {
            shard_bits: shards.len().trailing_zeros(),
            shards,
            epoch,
            limits: LimitCell::new(limits),
            total: CachePadded::new(Counters::default()),
            uids: RwLock::default(),
        }
    }

    /// A new holder (session identity) for `uid`.
    pub fn holder(&self, uid: u32) -> Holder {
        Holder {
            uid,
            usage: self.uid_counters(uid),
            refs: Mutex::default(),
            staged: AtomicU64::new(0),
        }
    }

    fn uid_counters(&self, uid: u32) -> Arc<Counters> {
        if let Some(counters) = read_lock(&self.uids).get(&uid) {
            return Arc::clone(counters);
        }
        Arc::clone(write(&self.uids).entry(uid).or_default())
    }

    /// The limits in force.
    pub fn limits(&self) -> Limits {
        self.limits.get()
    }

    /// New limits for what comes next; what exists already stays.
    pub fn set_limits(&self, limits: Limits) {
        self.limits.set(limits);
    }

    /// What the registry holds now, all uids together.
    pub fn usage(&self) -> Usage {
        self.total.usage()
    }

    /// What each uid owns now (uids that own nothing are left out).
    pub fn usage_by_uid(&self) -> Vec<(u32, Usage)> {
        let mut list: Vec<(u32, Usage)> = read_lock(&self.uids)
            .iter()
            .map(|(&uid, counters)| (uid, counters.usage()))
            .filter(|(_, usage)| usage.objects > 0 || usage.value_bytes > 0)
            .collect();
        list.sort_by_key(|&(uid, _)| uid);
        list
    }

    /// Live objects in each shard.
    pub fn shard_occupancy(&self) -> Vec<u64> {
        self.shards
            .iter()
            .map(|shard| read_lock(shard).live as u64)
            .collect()
    }

    /// Creates an object, in the next shard of the calling thread's round:
    /// each thread spreads its inserts over every shard, and threads start
    /// at different shards, with no shared counter.
    pub fn insert(&self, holder: &Holder, value: &[u8], obj_flags: u32) -> Result<Handle, Status> {
        Opcode::Insert.check_flags(obj_flags)?;
        if value.len() > self.limits.max_value_size() {
            return Err(Status::TooBig);
        }
        let charge = self.charge(&holder.usage, 1, value.len() as u64)?;
        let stored = Value::new(value).map_err(|_| Status::Quota)?;
        let detached = obj_flags & flags::DETACHED != 0;
        let max_local = 1usize << (SLOT_BITS - self.shard_bits);
        let first = next_insert_shard();
        for step in 0..self.shards.len() {
            let shard_index = first.wrapping_add(step) & (self.shards.len() - 1);
            let mut shard = write(&self.shards[shard_index]);
            let Some(local) = shard.vacant(max_local) else {
                continue;
            };
            shard.live += 1;
            let slot = shard.slot_mut(local).expect("vacant slot exists");
            slot.live = true;
            slot.owner = holder.uid;
            slot.flags = obj_flags as u8;
            slot.refs = u32::from(!detached);
            slot.value = stored;
            let handle = HandleParts {
                epoch: self.epoch,
                generation: slot.generation,
                slot: (local << self.shard_bits) | shard_index as u32,
            }
            .encode();
            let purge = !detached && {
                let mut refs = lock(&holder.refs);
                refs.add(handle);
                refs.wants_purge()
            };
            charge.keep();
            drop(shard);
            if purge {
                self.purge_dead_references(holder);
            }
            return Ok(Handle::new(handle).expect("the epoch is never 0"));
        }
        Err(Status::Quota)
    }

    /// Calls `read` with the value, under the shard's read lock: the value is
    /// whole (a concurrent replace waits).
    #[inline]
    pub fn get_with<R>(
        &self,
        holder: &Holder,
        handle: Handle,
        read: impl FnOnce(&[u8]) -> R,
    ) -> Result<R, Status> {
        let handle = handle.get();
        let (shard_index, local) = self.locate(handle)?;
        let shard = read_lock(&self.shards[shard_index]);
        let slot = live_slot(&shard, local, handle)?;
        if !slot.readable_by(holder.uid) {
            return Err(Status::Denied);
        }
        Ok(read(slot.value.as_bytes()))
    }

    /// Replaces the value of `handle` (the owner's uid or root); readers see
    /// the old value or the new one, whole. The owner pays for a longer
    /// value, whoever replaces it.
    pub fn replace(&self, holder: &Holder, handle: Handle, value: &[u8]) -> Result<(), Status> {
        let handle = handle.get();
        if value.len() > self.limits.max_value_size() {
            return Err(Status::TooBig);
        }
        let (shard_index, local) = self.locate(handle)?;
        let mut shard = write(&self.shards[shard_index]);
        let slot = live_slot_mut(&mut shard, local, handle)?;
        if !slot.writable_by(holder.uid) {
            return Err(Status::Denied);
        }
        let old_len = slot.value.len() as u64;
        let new_len = value.len() as u64;
        // The owner pays for the value, whoever replaces it.
        let owner = if slot.owner == holder.uid {
            Arc::clone(&holder.usage)
        } else {
            self.uid_counters(slot.owner)
        };
        let charge = self.charge(&owner, 0, new_len.saturating_sub(old_len))?;
        slot.value = Value::new(value).map_err(|_| Status::Quota)?;
        charge.keep();
        let shrink = old_len.saturating_sub(new_len);
        self.total.give_back(0, shrink);
        owner.give_back(0, shrink);
        Ok(())
    }

    /// One more reference to `handle` for `holder`; needs read access.
    pub fn retain(&self, holder: &Holder, handle: Handle) -> Result<(), Status> {
        let handle = handle.get();
        let (shard_index, local) = self.locate(handle)?;
        let mut shard = write(&self.shards[shard_index]);
        let slot = live_slot_mut(&mut shard, local, handle)?;
        if !slot.readable_by(holder.uid) {
            return Err(Status::Denied);
        }
        let purge = {
            let mut refs = lock(&holder.refs);
            // Checked before the table is touched: a refused RETAIN leaves
            // no entry behind.
            if refs.held(handle) == u32::MAX || slot.refs == u32::MAX {
                return Err(Status::Quota);
            }
            refs.add(handle);
            slot.refs += 1;
            refs.wants_purge()
        };
        drop(shard);
        if purge {
            self.purge_dead_references(holder);
        }
        Ok(())
    }

    /// Drops one of `holder`'s references to `handle` (NOT_HELD when it
    /// holds none); the object dies with its last reference unless it is
    /// DETACHED.
    pub fn release(&self, holder: &Holder, handle: Handle) -> Result<(), Status> {
        let handle = handle.get();
        let (shard_index, local) = self.locate(handle)?;
        let mut shard = write(&self.shards[shard_index]);
        let slot = match live_slot_mut(&mut shard, local, handle) {
            Ok(slot) => slot,
            Err(status) => {
                // The object died under this reference: the entry goes too.
                lock(&holder.refs).forget(handle);
                return Err(status);
            }
        };
        if !lock(&holder.refs).take(handle) {
            return Err(Status::NotHeld);
        }
        slot.refs = slot.refs.saturating_sub(1);
        if slot.refs == 0 && u32::from(slot.flags) & flags::DETACHED == 0 {
            self.kill(&mut shard, local, holder);
        }
        Ok(())
    }

    /// Kills the object now, whoever holds references to it. The remover's
    /// own references go with it; other holders' are purged lazily.
    pub fn remove(&self, holder: &Holder, handle: Handle) -> Result<(), Status> {
        let handle = handle.get();
        let (shard_index, local) = self.locate(handle)?;
        let mut shard = write(&self.shards[shard_index]);
        let slot = live_slot_mut(&mut shard, local, handle)?;
        if !slot.writable_by(holder.uid) {
            return Err(Status::Denied);
        }
        self.kill(&mut shard, local, holder);
        lock(&holder.refs).forget(handle);
        Ok(())
    }

    /// Drops `holder`'s entries for objects that have died, and sets the
    /// size of its table that triggers the next purge. Takes no shard lock
    /// while it holds the table, nor the table while it holds a shard lock.
    fn purge_dead_references(&self, holder: &Holder) {
        let handles: Vec<u64> = lock(&holder.refs).counts.keys().copied().collect();
        let dead: Vec<u64> = handles
            .into_iter()
            .filter(|&handle| !self.is_live(handle))
            .collect();
        let mut refs = lock(&holder.refs);
        // A dead handle never lives again, so forgetting it now is right
        // whatever happened to the table meanwhile.
        for handle in dead {
            refs.forget(handle);
        }
        refs.purge_at = (refs.counts.len() * 2).max(PURGE_FLOOR);
    }

    /// Whether `handle` names a live object.
    fn is_live(&self, handle: u64) -> bool {
        let Ok((shard_index, local)) = self.locate(handle) else {
            return false;
        };
        live_slot(&read_lock(&self.shards[shard_index]), local, handle).is_ok()
    }

    /// Reserves `bytes` more of ring staging for `holder`'s session,
    /// against its session cap ([`session_staging_cap`]) and
    /// the byte limits of its uid and of the registry.
    pub fn charge_staging(&self, holder: &Holder, bytes: u64) -> Result<(), Status> {
        let limits = self.limits.get();
        let staged = holder
            .staged
            .fetch_add(bytes, Ordering::Relaxed)
            .saturating_add(bytes);
        if staged > session_staging_cap(limits.max_value_size) {
            holder.staged.fetch_sub(bytes, Ordering::Relaxed);
            return Err(Status::Quota);
        }
        if !self.total.reserve_staged(bytes, limits.max_bytes) {
            holder.staged.fetch_sub(bytes, Ordering::Relaxed);
            return Err(Status::Quota);
        }
        if !holder.usage.reserve_staged(bytes, limits.uid_max_bytes) {
            self.total.give_back_staged(bytes);
            holder.staged.fetch_sub(bytes, Ordering::Relaxed);
            return Err(Status::Quota);
        }
        Ok(())
    }

    /// Gives back staging reserved by [`Registry::charge_staging`].
    pub fn release_staging(&self, holder: &Holder, bytes: u64) {
        holder.staged.fetch_sub(bytes, Ordering::Relaxed);
        self.total.give_back_staged(bytes);
        holder.usage.give_back_staged(bytes);
    }

    /// Drops every reference `holder` owns (its session ended).
    pub fn release_all(&self, holder: &Holder) {
        let refs = std::mem::take(&mut *lock(&holder.refs));
        for (handle, count) in refs.counts {
            let Ok((shard_index, local)) = self.locate(handle) else {
                continue;
            };
            let mut shard = write(&self.shards[shard_index]);
            let Ok(slot) = live_slot_mut(&mut shard, local, handle) else {
                continue;
            };
            slot.refs = slot.refs.saturating_sub(count);
            if slot.refs == 0 && u32::from(slot.flags) & flags::DETACHED == 0 {
                self.kill(&mut shard, local, holder);
            }
        }
    }

    /// Up to `limit` live objects after position `cursor` (0 to start) that
    /// pass `filter`, and the cursor to continue from (0 when done). At most
    /// [`LIST_SCAN_BUDGET`] slots are looked at per call, matching or not,
    /// so a page may hold fewer than `limit` objects (even none) with a
    /// non-zero cursor: a listing costs the control thread bounded work per
    /// request, whatever the filter.
    pub fn list(&self, cursor: u64, limit: usize, filter: ListFilter) -> (Vec<ObjectInfo>, u64) {
        let mut found = Vec::new();
        let mut budget = LIST_SCAN_BUDGET;
        // A cursor is 1 + the position of the next slot to look at, where a
        // position is (shard << 32) | local slot; 0 means the beginning.
        let start = cursor.saturating_sub(1);
        let first_shard = (start >> 32) as usize;
        for shard_index in first_shard..self.shards.len() {
            let shard = read_lock(&self.shards[shard_index]);
            let first_local = if shard_index == first_shard {
                start & 0xffff_ffff
            } else {
                0
            };
            for local in first_local as usize..shard.len() {
                if found.len() == limit || budget == 0 {
                    return (found, ((shard_index as u64) << 32 | local as u64) + 1);
                }
                budget -= 1;
                let slot = shard.slot(local as u32).expect("local < len");
                let wanted = slot.live
                    && (!filter.detached_only || u32::from(slot.flags) & flags::DETACHED != 0)
                    && filter.owner.is_none_or(|uid| uid == slot.owner);
                if !wanted {
                    continue;
                }
                found.push(ObjectInfo {
                    handle: HandleParts {
                        epoch: self.epoch,
                        generation: slot.generation,
                        slot: ((local as u32) << self.shard_bits) | shard_index as u32,
                    }
                    .encode(),
                    size: slot.value.len() as u64,
                    owner: slot.owner,
                    refs: slot.refs,
                    flags: u32::from(slot.flags),
                });
            }
        }
        (found, 0)
    }

    /// Ends an object; `by` is who ends it, whose uid is most often the
    /// owner's (then the owner's counters are at hand, no lookup needed).
    fn kill(&self, shard: &mut Shard, local: u32, by: &Holder) {
        let owner = shard.slot(local).map(|slot| slot.owner);
        if let (Some(value), Some(owner)) = (shard.kill(local), owner) {
            shard.live -= 1;
            let bytes = value.len() as u64;
            self.total.give_back(1, bytes);
            if owner == by.uid {
                by.usage.give_back(1, bytes);
            } else {
                self.uid_counters(owner).give_back(1, bytes);
            }
        }
    }

    /// Reserves room for `objects` more objects and `bytes` more value bytes
    /// against the global limits and `owner`'s; the reservation is returned
    /// when the guard drops unless it is kept.
    fn charge<'a>(
        &'a self,
        owner: &'a Counters,
        objects: u64,
        bytes: u64,
    ) -> Result<Charge<'a>, Status> {
        let limits = self.limits.get();
        if !self
            .total
            .reserve(objects, bytes, limits.max_objects, limits.max_bytes)
        {
            return Err(Status::Quota);
        }
        if !owner.reserve(objects, bytes, limits.uid_max_objects, limits.uid_max_bytes) {
            self.total.give_back(objects, bytes);
            return Err(Status::Quota);
        }
        Ok(Charge {
            counters: [&self.total, owner],
            objects,
            bytes,
        })
    }

    /// The shard and local slot a handle names, or STALE when it cannot name
    /// anything of this registry.
    #[inline]
    fn locate(&self, handle: u64) -> Result<(usize, u32), Status> {
        let parts = HandleParts::decode(handle);
        if parts.epoch != self.epoch {
            return Err(Status::Stale);
        }
        let shard_index = (parts.slot as usize) & (self.shards.len() - 1);
        Ok((shard_index, parts.slot >> self.shard_bits))
    }
}

/// The shard where this thread's next insert starts looking.
fn next_insert_shard() -> usize {
    thread_local! {
        // Seeded from the thread-local's address, so threads start apart.
        static NEXT: std::cell::Cell<usize> = const { std::cell::Cell::new(usize::MAX) };
    }
    NEXT.with(|next| {
        let mut shard = next.get();
        if shard == usize::MAX {
            shard = (next as *const _ as usize >> 6).wrapping_mul(0x9E37_79B9);
        }
        next.set(shard.wrapping_add(1));
        shard
    })
}

/// A reservation against the global and one uid's limits, undone on drop
/// unless kept.
struct Charge<'a> {
    counters: [&'a Counters; 2],
    objects: u64,
    bytes: u64,
}

impl Charge<'_> {
    fn keep(self) {
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

#[inline]
fn live_slot(shard: &Shard, local: u32, handle: u64) -> Result<&Slot, Status> {
    let generation = HandleParts::decode(handle).generation;
    match shard.slot(local) {
        Some(slot) if slot.live && slot.generation == generation => Ok(slot),
        _ => Err(Status::Stale),
    }
}

#[inline]
fn live_slot_mut(shard: &mut Shard, local: u32, handle: u64) -> Result<&mut Slot, Status> {
    let generation = HandleParts::decode(handle).generation;
    match shard.slot_mut(local) {
        Some(slot) if slot.live && slot.generation == generation => Ok(slot),
        _ => Err(Status::Stale),
    }
}

// A panic while a lock is held leaves data that is still consistent at every
// await point of this module, so poisoning is ignored rather than spread.
fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|e| e.into_inner())
}

fn read_lock<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|e| e.into_inner())
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests;
