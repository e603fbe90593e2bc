//! A domain: the slot table and value heap of one uid's private objects, or
//! of every SHARED object (the layout is `hreg_proto::table`'s), its shards
//! and the references counted on its slots.
//!
//! The slot table grows a chunk at a time (chunk `k` holds `1024 << k`
//! slots) and its pages are allocated just ahead of the slots handed out.
//! Slot indices interleave the shards (the shard is an index's low bits),
//! and each shard hands out its own indices under its own lock; that lock
//! is held whenever one of its slots is written, so a slot has one writer
//! at a time. Reference counts, and which uid each object is charged to,
//! live beside the table in daemon memory, never in memory a client maps
//! (a client may not learn who keeps another's object alive).
//!
//! When the registry's store keeps state, the domain also has a record
//! (daemon-only) that names its owner and holds its write journal: before
//! a slot is written, its old version goes to its shard's journal entry,
//! and the entry is cleared once the slot is whole again. A daemon killed
//! mid-write leaves the slot's sequence odd; the next one puts the old
//! version back from the journal (`crate::adopt`).
//!
//! ```text
//! record offset 0    magic "HREGDOM1"
//!        offset 8    domain id (u64), offset 16 owner: uid | 1 << 32, or 0
//!                    for SHARED (u64), offset 24 shards (u64)
//!        offset 32   slot chunks made (u64), offset 40 heap chunks made
//!                    (u64): a chunk counts once it exists, before any slot
//!                    names it, so an adopting daemon knows that none is
//!                    missing
//!        offset 48   the heap's label (u64, random): every heap chunk
//!                    starts with it (`crate::heap`), so a chunk of another
//!                    domain or state is refused
//!        offset 64   per shard, 128 bytes: slot index | 1 << 32 while the
//!                    entry is valid (u64), at +8 the old slot's eight words
//! ```

use crate::heap::Heap;
use crate::memory::Chunk;
use crate::store::{names, Store};
use crossbeam_utils::CachePadded;
use hreg_proto::locks::lock;
use hreg_proto::shm::ReadWrite;
use hreg_proto::table::{
    slot_chunk_len, slot_chunk_slots, slot_place, HeapAddress, Payload, Slot, SlotView,
    INLINE_VALUE, MAX_HEAP_CHUNKS, MAX_SLOT_CHUNKS,
};
use hreg_proto::Limit;
use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

const RECORD_MAGIC: u64 = u64::from_le_bytes(*b"HREGDOM1");
const SLOT_CHUNKS_AT: usize = 32;
const HEAP_CHUNKS_AT: usize = 40;
const HEAP_LABEL_AT: usize = 48;
const JOURNAL_AT: usize = 64;
const JOURNAL_ENTRY: usize = 128;
const JOURNAL_VALID: u64 = 1 << 32;

/// Bytes of the record of a domain of `shards` shards.
pub(crate) fn record_len(shards: usize) -> usize {
    (JOURNAL_AT + shards * JOURNAL_ENTRY).next_multiple_of(4096)
}

/// Slot-table pages allocated ahead of the last slot handed out.
pub(crate) const SLOTS_AHEAD: u64 = 256 << 10;

/// The daemon's own facts about a slot, changed only under its shard's
/// lock (atomics so that LIST may read them without it).
#[derive(Debug, Default)]
pub(crate) struct SlotMeta {
    /// References held by all sessions together.
    pub refs: AtomicU32,
    /// The uid charged for the object (its objects and value bytes count
    /// against that uid's quota): its creator, until the charge moves to
    /// another uid that references it (`crate::Registry`'s charge rules).
    pub payer: AtomicU32,
    /// References the payer's sessions hold on it; those of other uids are
    /// in [`Shard::others`].
    pub payer_refs: AtomicU32,
}

/// One shard of a domain: its free slots, what it holds live, and who
/// besides each object's payer references it.
#[derive(Debug)]
pub(crate) struct Shard {
    /// Slots ready for reuse, longest-dead first (reusing the longest-dead
    /// slot spreads generations over all free slots).
    pub free: VecDeque<u32>,
    /// The next new local index (the slot index without the shard bits).
    pub next_local: u32,
    /// Live objects in this shard.
    pub live: u64,
    /// Bytes of their values.
    pub bytes: u64,
    /// References to this shard's objects held by uids other than the
    /// object's payer: (slot index, uid) → references. Only objects that
    /// several uids reference have entries; each entry stands for at least
    /// one reference-table entry of its uid (so `uid_max_references`
    /// bounds them), and a B-tree gives its memory back as entries go.
    others: BTreeMap<(u32, u32), u32>,
    /// State of the generator of new slots' first generations.
    seed: u64,
}

impl Shard {
    /// A first generation for a new slot: random, never 0.
    pub fn first_generation(&mut self) -> u16 {
        self.seed ^= self.seed << 13;
        self.seed ^= self.seed >> 7;
        self.seed ^= self.seed << 17;
        ((self.seed as u16) & 0x7fff).max(1)
    }

    /// A new object in slot `index` (`meta`'s), charged to `payer`, which
    /// holds `refs` references to it.
    pub fn made(&mut self, meta: &SlotMeta, payer: u32, refs: u32, bytes: u64) {
        meta.refs.store(refs, Ordering::Relaxed);
        meta.payer.store(payer, Ordering::Relaxed);
        meta.payer_refs.store(refs, Ordering::Relaxed);
        self.live += 1;
        self.bytes += bytes;
    }

    /// The object in slot `index` died: its counts and holders go.
    pub fn ended(&mut self, meta: &SlotMeta, index: u32, bytes: u64) {
        meta.refs.store(0, Ordering::Relaxed);
        meta.payer_refs.store(0, Ordering::Relaxed);
        // Most shards have no object that several uids reference: no
        // search then (this runs on every remove).
        if !self.others.is_empty() {
            let holders: Vec<(u32, u32)> = self.others_of(index).map(|(key, _)| key).collect();
            for key in holders {
                self.others.remove(&key);
            }
        }
        self.live -= 1;
        self.bytes -= bytes;
    }

    /// `uid`'s sessions took `n` more references to the object in slot
    /// `index` (the caller checked that the counts fit).
    pub fn hold(&mut self, meta: &SlotMeta, index: u32, uid: u32, n: u32) {
        let add = |count: &AtomicU32| {
            let total = count.load(Ordering::Relaxed).saturating_add(n);
            count.store(total, Ordering::Relaxed);
        };
        add(&meta.refs);
        if meta.payer.load(Ordering::Relaxed) == uid {
            add(&meta.payer_refs);
        } else {
            let count = self.others.entry((index, uid)).or_default();
            *count = count.saturating_add(n);
        }
    }

    /// `uid`'s sessions dropped `n` references to the object in slot
    /// `index`. Returns the references left in all, and whether `uid` was
    /// the payer and now holds none.
    pub fn unhold(&mut self, meta: &SlotMeta, index: u32, uid: u32, n: u32) -> (u32, bool) {
        let left = meta.refs.load(Ordering::Relaxed).saturating_sub(n);
        meta.refs.store(left, Ordering::Relaxed);
        if meta.payer.load(Ordering::Relaxed) == uid {
            let own = meta.payer_refs.load(Ordering::Relaxed).saturating_sub(n);
            meta.payer_refs.store(own, Ordering::Relaxed);
            return (left, own == 0);
        }
        if let Some(count) = self.others.get_mut(&(index, uid)) {
            *count = count.saturating_sub(n);
            if *count == 0 {
                self.others.remove(&(index, uid));
            }
        }
        (left, false)
    }

    /// The uids other than the payer that reference the object in slot
    /// `index`, most references first (then lowest uid).
    pub fn other_holders(&self, index: u32) -> Vec<(u32, u32)> {
        let mut holders: Vec<(u32, u32)> = self
            .others_of(index)
            .map(|((_, uid), count)| (uid, count))
            .collect();
        holders.sort_by_key(|&(uid, count)| (std::cmp::Reverse(count), uid));
        holders
    }

    fn others_of(&self, index: u32) -> impl Iterator<Item = ((u32, u32), u32)> + '_ {
        self.others
            .range((index, 0)..=(index, u32::MAX))
            .map(|(&key, &count)| (key, count))
    }

    /// Makes `uid` the payer of the object in slot `index`: its references
    /// move out of the others' record, the old payer's (if any) into it.
    pub fn set_payer(&mut self, meta: &SlotMeta, index: u32, uid: u32) {
        let old = meta.payer.load(Ordering::Relaxed);
        if old == uid {
            return;
        }
        let old_refs = meta.payer_refs.load(Ordering::Relaxed);
        if old_refs > 0 {
            self.others.insert((index, old), old_refs);
        }
        let refs = self.others.remove(&(index, uid)).unwrap_or(0);
        meta.payer.store(uid, Ordering::Relaxed);
        meta.payer_refs.store(refs, Ordering::Relaxed);
    }
}

/// One domain of the registry.
pub(crate) struct Domain {
    pub id: u16,
    /// The uid whose private objects these are; `None` for SHARED ones.
    pub owner: Option<u32>,
    store: Arc<dyn Store>,
    /// The owner and write journal, when the store keeps state.
    record: Option<Chunk>,
    slot_chunks: Box<[OnceLock<Chunk>]>,
    meta: Box<[OnceLock<Box<[SlotMeta]>>]>,
    /// Bytes allocated at the start of each slot chunk.
    allocated: Box<[AtomicU64]>,
    grow: Mutex<()>,
    /// One past the highest slot index ever handed out.
    slots_made: AtomicU32,
    pub shards: Box<[CachePadded<Mutex<Shard>>]>,
    heap: Mutex<Heap>,
    heap_chunks: Box<[OnceLock<Chunk>]>,
}

impl Domain {
    /// An empty domain with `shards` shards (a power of two), made in
    /// `store`; `seed` varies the first generations.
    pub fn new(
        store: &Arc<dyn Store>,
        id: u16,
        owner: Option<u32>,
        shards: usize,
        seed: u64,
    ) -> std::io::Result<Domain> {
        let label = crate::random_u64();
        let record = if store.keeps_state() {
            let len = record_len(shards);
            let record = Chunk::create(&**store, &names::domain(id, owner), len)?;
            record.allocate(0, len as u64)?;
            let word = |at: usize| record.mapping().word(at).expect("inside the record");
            word(8).store(u64::from(id), Ordering::Relaxed);
            word(16).store(
                owner.map_or(0, |uid| u64::from(uid) | (1 << 32)),
                Ordering::Relaxed,
            );
            word(24).store(shards as u64, Ordering::Relaxed);
            word(HEAP_LABEL_AT).store(label, Ordering::Relaxed);
            word(0).store(RECORD_MAGIC, Ordering::Release);
            Some(record)
        } else {
            None
        };
        Ok(Domain::with_parts(
            store, id, owner, shards, seed, record, label,
        ))
    }

    fn with_parts(
        store: &Arc<dyn Store>,
        id: u16,
        owner: Option<u32>,
        shards: usize,
        seed: u64,
        record: Option<Chunk>,
        heap_label: u64,
    ) -> Domain {
        Domain {
            id,
            owner,
            store: Arc::clone(store),
            record,
            slot_chunks: (0..MAX_SLOT_CHUNKS).map(|_| OnceLock::new()).collect(),
            meta: (0..MAX_SLOT_CHUNKS).map(|_| OnceLock::new()).collect(),
            allocated: (0..MAX_SLOT_CHUNKS).map(|_| AtomicU64::new(0)).collect(),
            grow: Mutex::new(()),
            slots_made: AtomicU32::new(0),
            shards: (0..shards)
                .map(|i| {
                    CachePadded::new(Mutex::new(Shard {
                        free: VecDeque::new(),
                        next_local: 0,
                        live: 0,
                        bytes: 0,
                        others: BTreeMap::new(),
                        seed: (seed ^ (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15)) | 1,
                    }))
                })
                .collect(),
            heap: Mutex::new(Heap::new(Arc::clone(store), id, heap_label)),
            heap_chunks: (0..MAX_HEAP_CHUNKS).map(|_| OnceLock::new()).collect(),
        }
    }

    /// A domain an earlier daemon kept: its record (checked: magic, id,
    /// owner, shards) and its chunks, in order. Its slots are read as they
    /// are; the caller rebuilds the rest (`crate::adopt`).
    pub fn adopt(
        store: &Arc<dyn Store>,
        id: u16,
        owner: Option<u32>,
        seed: u64,
        record: Chunk,
        slot_chunks: Vec<Chunk>,
        mut heap_chunks: Vec<Chunk>,
    ) -> Result<Domain, String> {
        let word = |at: usize| record.mapping().word(at).map(|w| w.load(Ordering::Acquire));
        let shards = word(24).and_then(|n| usize::try_from(n).ok()).unwrap_or(0);
        if word(0) != Some(RECORD_MAGIC)
            || word(8) != Some(u64::from(id))
            || word(16) != Some(owner.map_or(0, |uid| u64::from(uid) | (1 << 32)))
            || !shards.is_power_of_two()
            || shards > 1024
            || record.len() != record_len(shards)
        {
            return Err(format!(
                "the record of domain {id} is not one this daemon wrote"
            ));
        }
        if slot_chunks.len() > MAX_SLOT_CHUNKS || heap_chunks.len() > MAX_HEAP_CHUNKS {
            return Err(format!("domain {id} has more chunks than a domain may"));
        }
        // More than counted is fine: made, not counted yet, so not used yet.
        for (what, at, found) in [
            ("slot", SLOT_CHUNKS_AT, slot_chunks.len()),
            ("heap", HEAP_CHUNKS_AT, heap_chunks.len()),
        ] {
            let counted = word(at).unwrap_or(u64::MAX);
            if (found as u64) < counted {
                return Err(format!(
                    "{what} chunk {found} of domain {id} is missing ({counted} were made)"
                ));
            }
        }
        // A heap chunk not counted yet may not carry its label yet either:
        // it is made again when needed.
        heap_chunks.truncate(word(HEAP_CHUNKS_AT).unwrap_or(0) as usize);
        let label = word(HEAP_LABEL_AT).unwrap_or(0);
        let domain = Domain::with_parts(store, id, owner, shards, seed, Some(record), label);
        let mut made = 0u32;
        for (k, chunk) in slot_chunks.into_iter().enumerate() {
            if chunk.len() != slot_chunk_len(k) {
                return Err(format!(
                    "slot chunk {k} of domain {id} is {} bytes, not {}",
                    chunk.len(),
                    slot_chunk_len(k)
                ));
            }
            let meta: Box<[SlotMeta]> = (0..slot_chunk_slots(k))
                .map(|_| SlotMeta::default())
                .collect();
            let _ = domain.meta[k].set(meta);
            let _ = domain.slot_chunks[k].set(chunk);
            made += slot_chunk_slots(k) as u32;
        }
        domain.slots_made.store(made, Ordering::Release);
        for (k, chunk) in heap_chunks.into_iter().enumerate() {
            let _ = domain.heap_chunks[k].set(chunk);
        }
        Ok(domain)
    }

    /// Notes in the record that `count` chunks of a kind exist.
    fn count_chunks(&self, at: usize, count: usize) {
        if let Some(record) = &self.record {
            if let Some(word) = record.mapping().word(at) {
                word.fetch_max(count as u64, Ordering::AcqRel);
            }
        }
    }

    /// Shards of the domain.
    pub fn shard_count(&self) -> usize {
        self.shards.len()
    }

    /// Writes slot `index` (the caller holds its shard's lock): its old
    /// version goes to the journal first, when there is one.
    pub fn write_slot(&self, index: u32, new: &Slot) {
        let (view, _) = self.slot(index).expect("a slot the caller found");
        // The old version is read only for a journal (a 64-byte read per
        // write saved otherwise).
        let entry = self
            .record
            .as_ref()
            .and_then(|_| self.journal(index, &view.current()));
        view.write(new);
        if let Some(entry) = entry {
            entry.store(0, Ordering::Release);
        }
    }

    /// Records `old` as slot `index`'s version before a write, in its
    /// shard's journal entry; returns the entry's first word, which the
    /// writer clears once the slot is whole again (`None`: no journal).
    pub(crate) fn journal(&self, index: u32, old: &Slot) -> Option<&AtomicU64> {
        let record = self.record.as_ref()?;
        let entry = JOURNAL_AT + (index as usize & (self.shards.len() - 1)) * JOURNAL_ENTRY;
        let word = |at: usize| record.mapping().word(at).expect("inside the record");
        for (k, value) in old.encode().into_iter().enumerate() {
            word(entry + 8 + 8 * k).store(value, Ordering::Relaxed);
        }
        word(entry).store(u64::from(index) | JOURNAL_VALID, Ordering::Release);
        Some(word(entry))
    }

    /// The version of slot `index` its shard's journal entry holds, if the
    /// entry is valid and for that slot (a write the daemon did not finish).
    pub fn journaled(&self, index: u32) -> Option<Slot> {
        let record = self.record.as_ref()?;
        let entry = JOURNAL_AT + (index as usize & (self.shards.len() - 1)) * JOURNAL_ENTRY;
        let word = |at: usize| record.mapping().word(at).map(|w| w.load(Ordering::Acquire));
        if word(entry)? != u64::from(index) | JOURNAL_VALID {
            return None;
        }
        let mut words = [0u64; 8];
        for (k, out) in words.iter_mut().enumerate() {
            *out = word(entry + 8 + 8 * k)?;
        }
        Some(Slot::decode(&words))
    }

    /// Rebuilds the heap of an adopted domain from the blocks of its live
    /// values (address, value length); returns the gaps between them.
    pub fn adopt_heap(
        &self,
        live: Vec<(HeapAddress, u64)>,
    ) -> Result<Vec<(HeapAddress, u64)>, String> {
        lock(&self.heap).adopt(&self.heap_chunks, live)
    }

    /// Frees a gap [`Domain::adopt_heap`] returned.
    pub fn free_gap(&self, at: HeapAddress, len: u64) {
        lock(&self.heap).free_gap(&self.heap_chunks, at, len);
    }

    /// Slot `index` and its facts, if its chunk exists.
    #[inline]
    pub fn slot(&self, index: u32) -> Option<(SlotView<'_, ReadWrite>, &SlotMeta)> {
        let (chunk, at) = slot_place(index);
        let view = SlotView::new(self.slot_chunks.get(chunk)?.get()?.mapping(), at)?;
        Some((view, &self.meta[chunk].get()?[at]))
    }

    /// One past the highest slot index handed out.
    pub fn slots_made(&self) -> u32 {
        self.slots_made.load(Ordering::Acquire)
    }

    /// The slot chunks made so far, in order.
    pub fn slot_chunks(&self) -> impl Iterator<Item = &Chunk> {
        self.slot_chunks.iter().map_while(OnceLock::get)
    }

    /// The heap chunks made so far, in order.
    pub fn heap_chunks(&self) -> impl Iterator<Item = &Chunk> {
        self.heap_chunks.iter().map_while(OnceLock::get)
    }

    /// A free slot of shard `shard_index`: a reused one, or a new one (with
    /// a random first generation, so handles of an earlier daemon rarely
    /// line up); `Ok(None)` when the shard has no index left, QUOTA
    /// ([`Limit::SlotMemory`]) when memory for the table runs out. The
    /// caller holds the shard's lock.
    pub fn vacant(
        &self,
        shard: &mut Shard,
        shard_index: usize,
        shard_bits: u32,
    ) -> Result<Option<u32>, Limit> {
        if let Some(index) = shard.free.pop_front() {
            return Ok(Some(index));
        }
        let max_local = 1u32 << (hreg_proto::handle::SLOT_BITS - shard_bits);
        if shard.next_local >= max_local {
            return Ok(None);
        }
        let index = (shard.next_local << shard_bits) | shard_index as u32;
        self.prepare(index).map_err(|_| Limit::SlotMemory)?;
        shard.next_local += 1;
        let generation = shard.first_generation();
        self.write_slot(index, &Slot::free(generation));
        self.slots_made.fetch_max(index + 1, Ordering::AcqRel);
        Ok(Some(index))
    }

    /// Makes slot `index`'s chunk if needed and allocates its page.
    fn prepare(&self, index: u32) -> std::io::Result<()> {
        let (chunk, at) = slot_place(index);
        let needed = ((at + 1) * hreg_proto::table::SLOT_SIZE) as u64;
        if self.slot_chunks[chunk].get().is_some()
            && self.allocated[chunk].load(Ordering::Acquire) >= needed
        {
            return Ok(());
        }
        let _grow = lock(&self.grow);
        let made = match self.slot_chunks[chunk].get() {
            Some(made) => made,
            None => {
                let made = Chunk::create(
                    &*self.store,
                    &names::slots(self.id, chunk),
                    slot_chunk_len(chunk),
                )?;
                let meta: Box<[SlotMeta]> = (0..slot_chunk_slots(chunk))
                    .map(|_| SlotMeta::default())
                    .collect();
                let _ = self.meta[chunk].set(meta);
                let _ = self.slot_chunks[chunk].set(made);
                self.count_chunks(SLOT_CHUNKS_AT, chunk + 1);
                self.slot_chunks[chunk].get().expect("just set")
            }
        };
        let allocated = self.allocated[chunk].load(Ordering::Acquire);
        if allocated < needed {
            let until = (needed + SLOTS_AHEAD).min(made.len() as u64);
            made.allocate(allocated, until - allocated)?;
            self.allocated[chunk].store(until, Ordering::Release);
        }
        Ok(())
    }

    /// Where a value goes: inside its slot, or in a new heap block (written
    /// here, before any slot names it). QUOTA ([`Limit::HeapMemory`]) when
    /// memory runs out.
    pub fn place(&self, value: &[u8]) -> Result<Payload, Limit> {
        if value.len() <= INLINE_VALUE {
            let mut bytes = [0u8; INLINE_VALUE];
            bytes[..value.len()].copy_from_slice(value);
            return Ok(Payload::Inline(bytes));
        }
        let (at, chunks) = {
            let mut heap = lock(&self.heap);
            let at = heap
                .alloc(&self.heap_chunks, value.len() as u64)
                .map_err(|_| Limit::HeapMemory)?;
            (at, heap.chunk_count())
        };
        self.count_chunks(HEAP_CHUNKS_AT, chunks);
        let written = self.heap_chunk(at.chunk).is_some_and(|chunk| {
            usize::try_from(at.offset).is_ok_and(|offset| chunk.mapping().store(offset, value))
        });
        if !written {
            self.free_block(at, value.len() as u64);
            return Err(Limit::HeapMemory);
        }
        Ok(Payload::Heap(at))
    }

    /// Frees the block of a `len`-byte value that no reader can reach any
    /// more (never published, or reclaimed).
    pub fn free_block(&self, at: HeapAddress, len: u64) {
        lock(&self.heap).free(&self.heap_chunks, at, len);
    }

    fn heap_chunk(&self, index: u16) -> Option<&Chunk> {
        self.heap_chunks.get(usize::from(index))?.get()
    }

    /// Copies the value `slot` names into `out` (resized to it); false when
    /// its block is not where the slot says (never, for the daemon's own
    /// slots).
    pub fn copy_value(&self, slot: &Slot, out: &mut Vec<u8>) -> bool {
        out.clear();
        out.resize(slot.len as usize, 0);
        match slot.payload {
            Payload::Free | Payload::Reserved { .. } => slot.len == 0,
            Payload::Inline(bytes) => match bytes.get(..out.len()) {
                Some(value) => {
                    out.copy_from_slice(value);
                    true
                }
                None => false,
            },
            Payload::Heap(at) => self.heap_chunk(at.chunk).is_some_and(|chunk| {
                usize::try_from(at.offset).is_ok_and(|offset| chunk.mapping().load(offset, out))
            }),
        }
    }

    /// Bytes of heap blocks in use (block sizes).
    pub fn heap_in_use(&self) -> u64 {
        lock(&self.heap).in_use()
    }

    /// Bytes of heap pages allocated (what the heap takes in memory).
    pub fn heap_resident(&self) -> u64 {
        lock(&self.heap).resident()
    }
}
