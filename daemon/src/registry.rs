//! The sharded registry: objects addressed by generational handles, the object
//! model (references, DETACHED, access by uid) and the global limits.
//!
//! Each shard is a slab of slots behind its own `RwLock`; a handle names its
//! shard and slot directly, so a lookup hashes nothing and takes one shard
//! lock. Global counters are atomics. No lock spans shards, and the only
//! nested lock is a session's reference table inside a shard's lock (always
//! in that order).

use crate::store::Value;
use crossbeam_utils::CachePadded;
use hreg_proto::handle::{HandleParts, GENERATION_MASK, SLOT_BITS};
use hreg_proto::{flags, Status};
use std::collections::hash_map::{Entry, RandomState};
use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, RwLock};

/// Slots per slab chunk: the slab grows a chunk at a time, so it never holds
/// more than one partly used chunk per shard and never moves slots.
const CHUNK: usize = 1024;

/// Highest generation a slot may carry while live; a slot that reaches it is
/// retired, so an old handle can never match again.
const LAST_GENERATION: u32 = GENERATION_MASK - 1;

/// The uid allowed everything.
const ROOT: u32 = 0;

/// Limits on what the registry holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub max_value_size: usize,
    pub max_objects: u64,
    pub max_bytes: u64,
}

/// Who asks, and the references they hold: one per session.
#[derive(Debug, Default)]
pub struct Holder {
    pub uid: u32,
    /// References this holder owns, by full handle (never by slot, so a reused
    /// slot can't inherit them).
    refs: Mutex<HashMap<u64, u32>>,
}

impl Holder {
    pub fn new(uid: u32) -> Holder {
        Holder {
            uid,
            refs: Mutex::default(),
        }
    }

    /// Total references this holder owns.
    pub fn reference_count(&self) -> u64 {
        lock(&self.refs).values().map(|&n| u64::from(n)).sum()
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
    fn readable_by(&self, uid: u32) -> bool {
        uid == ROOT || uid == self.owner || u32::from(self.flags) & flags::SHARED != 0
    }

    fn writable_by(&self, uid: u32) -> bool {
        uid == ROOT || uid == self.owner
    }
}

#[derive(Debug)]
struct Shard {
    chunks: Vec<Vec<Slot>>,
    /// Dead slots ready for reuse, oldest first: reusing the longest-dead slot
    /// spreads generations over all free slots.
    free: VecDeque<u32>,
    /// State of the generator that picks a new slot's first generation.
    seed: u64,
}

impl Shard {
    fn slot(&self, local: u32) -> Option<&Slot> {
        let local = local as usize;
        self.chunks.get(local / CHUNK)?.get(local % CHUNK)
    }

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
    pub objects: u64,
    pub value_bytes: u64,
}

pub struct Registry {
    shards: Box<[CachePadded<RwLock<Shard>>]>,
    shard_bits: u32,
    epoch: u16,
    limits: Limits,
    objects: CachePadded<AtomicU64>,
    value_bytes: CachePadded<AtomicU64>,
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
                    seed: (seed ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)) | 1,
                }))
            })
            .collect::<Box<[_]>>();
        Registry {
            shard_bits: shards.len().trailing_zeros(),
            shards,
            epoch,
            limits,
            objects: CachePadded::new(AtomicU64::new(0)),
            value_bytes: CachePadded::new(AtomicU64::new(0)),
        }
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    pub fn shard_count(&self) -> usize {
        self.shards.len()
    }

    pub fn usage(&self) -> Usage {
        Usage {
            objects: self.objects.load(Ordering::Relaxed),
            value_bytes: self.value_bytes.load(Ordering::Relaxed),
        }
    }

    /// Creates an object. `shard_hint` spreads inserts over shards (callers
    /// pass something that differs between threads).
    pub fn insert(
        &self,
        holder: &Holder,
        value: &[u8],
        obj_flags: u32,
        shard_hint: usize,
    ) -> Result<u64, Status> {
        if obj_flags & !flags::ALL != 0 {
            return Err(Status::Invalid);
        }
        if value.len() > self.limits.max_value_size {
            return Err(Status::TooBig);
        }
        let charge = self.charge(1, value.len() as u64)?;
        let stored = Value::new(value).map_err(|_| Status::Quota)?;
        let detached = obj_flags & flags::DETACHED != 0;
        let max_local = 1usize << (SLOT_BITS - self.shard_bits);
        for step in 0..self.shards.len() {
            let shard_index = (shard_hint + step) & (self.shards.len() - 1);
            let mut shard = write(&self.shards[shard_index]);
            let Some(local) = shard.vacant(max_local) else {
                continue;
            };
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
            if !detached {
                *lock(&holder.refs).entry(handle).or_insert(0) += 1;
            }
            std::mem::forget(charge);
            return Ok(handle);
        }
        Err(Status::Quota)
    }

    /// Calls `read` with the value, under the shard's read lock: the value is
    /// whole (a concurrent replace waits).
    pub fn get_with<R>(
        &self,
        holder: &Holder,
        handle: u64,
        read: impl FnOnce(&[u8]) -> R,
    ) -> Result<R, Status> {
        let (shard_index, local) = self.locate(handle)?;
        let shard = read_lock(&self.shards[shard_index]);
        let slot = live_slot(&shard, local, handle)?;
        if !slot.readable_by(holder.uid) {
            return Err(Status::Denied);
        }
        Ok(read(slot.value.as_bytes()))
    }

    pub fn replace(&self, holder: &Holder, handle: u64, value: &[u8]) -> Result<(), Status> {
        if handle == 0 {
            return Err(Status::Invalid);
        }
        if value.len() > self.limits.max_value_size {
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
        let charge = self.charge(0, new_len.saturating_sub(old_len))?;
        slot.value = Value::new(value).map_err(|_| Status::Quota)?;
        std::mem::forget(charge);
        self.value_bytes
            .fetch_sub(old_len.saturating_sub(new_len), Ordering::Relaxed);
        Ok(())
    }

    pub fn retain(&self, holder: &Holder, handle: u64) -> Result<(), Status> {
        let (shard_index, local) = self.locate(handle)?;
        let mut shard = write(&self.shards[shard_index]);
        let slot = live_slot_mut(&mut shard, local, handle)?;
        if !slot.readable_by(holder.uid) {
            return Err(Status::Denied);
        }
        let mut refs = lock(&holder.refs);
        let held = refs.entry(handle).or_insert(0);
        if *held == u32::MAX || slot.refs == u32::MAX {
            return Err(Status::Quota);
        }
        *held += 1;
        slot.refs += 1;
        Ok(())
    }

    pub fn release(&self, holder: &Holder, handle: u64) -> Result<(), Status> {
        let (shard_index, local) = self.locate(handle)?;
        let mut shard = write(&self.shards[shard_index]);
        let slot = live_slot_mut(&mut shard, local, handle)?;
        {
            let mut refs = lock(&holder.refs);
            let Entry::Occupied(mut held) = refs.entry(handle) else {
                return Err(Status::NotHeld);
            };
            *held.get_mut() -= 1;
            if *held.get() == 0 {
                held.remove();
            }
        }
        slot.refs = slot.refs.saturating_sub(1);
        if slot.refs == 0 && u32::from(slot.flags) & flags::DETACHED == 0 {
            self.kill(&mut shard, local);
        }
        Ok(())
    }

    /// Kills the object now, whoever holds references to it.
    pub fn remove(&self, holder: &Holder, handle: u64) -> Result<(), Status> {
        let (shard_index, local) = self.locate(handle)?;
        let mut shard = write(&self.shards[shard_index]);
        let slot = live_slot_mut(&mut shard, local, handle)?;
        if !slot.writable_by(holder.uid) {
            return Err(Status::Denied);
        }
        self.kill(&mut shard, local);
        Ok(())
    }

    /// Drops every reference `holder` owns (its session ended).
    pub fn release_all(&self, holder: &Holder) {
        let refs = std::mem::take(&mut *lock(&holder.refs));
        for (handle, count) in refs {
            let Ok((shard_index, local)) = self.locate(handle) else {
                continue;
            };
            let mut shard = write(&self.shards[shard_index]);
            let Ok(slot) = live_slot_mut(&mut shard, local, handle) else {
                continue;
            };
            slot.refs = slot.refs.saturating_sub(count);
            if slot.refs == 0 && u32::from(slot.flags) & flags::DETACHED == 0 {
                self.kill(&mut shard, local);
            }
        }
    }

    fn kill(&self, shard: &mut Shard, local: u32) {
        if let Some(value) = shard.kill(local) {
            self.objects.fetch_sub(1, Ordering::Relaxed);
            self.value_bytes
                .fetch_sub(value.len() as u64, Ordering::Relaxed);
        }
    }

    /// Reserves room for `objects` more objects and `bytes` more value bytes;
    /// the reservation is returned when the guard drops (forget it to keep it).
    fn charge(&self, objects: u64, bytes: u64) -> Result<Charge<'_>, Status> {
        let charge = Charge {
            registry: self,
            objects,
            bytes,
        };
        let total_objects = self.objects.fetch_add(objects, Ordering::Relaxed) + objects;
        let total_bytes = self.value_bytes.fetch_add(bytes, Ordering::Relaxed) + bytes;
        if total_objects > self.limits.max_objects || total_bytes > self.limits.max_bytes {
            return Err(Status::Quota);
        }
        Ok(charge)
    }

    /// The shard and local slot a handle names, or STALE when it cannot name
    /// anything of this registry.
    fn locate(&self, handle: u64) -> Result<(usize, u32), Status> {
        if handle == 0 {
            return Err(Status::Invalid);
        }
        let parts = HandleParts::decode(handle);
        if parts.epoch != self.epoch {
            return Err(Status::Stale);
        }
        let shard_index = (parts.slot as usize) & (self.shards.len() - 1);
        Ok((shard_index, parts.slot >> self.shard_bits))
    }
}

/// A reservation against the global limits, undone on drop.
struct Charge<'a> {
    registry: &'a Registry,
    objects: u64,
    bytes: u64,
}

impl Drop for Charge<'_> {
    fn drop(&mut self) {
        self.registry
            .objects
            .fetch_sub(self.objects, Ordering::Relaxed);
        self.registry
            .value_bytes
            .fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

fn live_slot(shard: &Shard, local: u32, handle: u64) -> Result<&Slot, Status> {
    let generation = HandleParts::decode(handle).generation;
    match shard.slot(local) {
        Some(slot) if slot.live && slot.generation == generation => Ok(slot),
        _ => Err(Status::Stale),
    }
}

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

pub(crate) fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests;
