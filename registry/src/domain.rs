//! A domain: the slot table and value heap of one uid's private objects, or
//! of every SHARED object (the layout is `hreg_proto::table`'s), its shards
//! and the references counted on its slots.
//!
//! The slot table grows a chunk at a time (chunk `k` holds `1024 << k`
//! slots) and its pages are allocated just ahead of the slots handed out.
//! Slot indices interleave the shards (the shard is an index's low bits),
//! and each shard hands out its own indices under its own lock; that lock
//! is held whenever one of its slots is written, so a slot has one writer
//! at a time. Reference counts live beside the table in daemon memory,
//! never in memory a client maps.

use crate::heap::Heap;
use crate::memory::Chunk;
use crossbeam_utils::CachePadded;
use hreg_proto::table::{
    slot_chunk_len, slot_chunk_slots, slot_place, HeapAddress, Payload, Slot, SlotView,
    INLINE_VALUE, MAX_HEAP_CHUNKS, MAX_SLOT_CHUNKS,
};
use hreg_proto::Status;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

/// Slot-table pages allocated ahead of the last slot handed out.
const SLOTS_AHEAD: u64 = 256 << 10;

/// The daemon's own facts about a slot.
#[derive(Debug, Default)]
pub(crate) struct SlotMeta {
    /// References held by all sessions together.
    pub refs: AtomicU32,
}

/// One shard of a domain: its free slots and how many it holds live.
#[derive(Debug)]
pub(crate) struct Shard {
    /// Slots ready for reuse, longest-dead first (reusing the longest-dead
    /// slot spreads generations over all free slots).
    pub free: VecDeque<u32>,
    /// The next new local index (the slot index without the shard bits).
    next_local: u32,
    /// Live objects in this shard.
    pub live: u64,
    /// State of the generator of new slots' first generations.
    seed: u64,
}

/// One domain of the registry.
pub(crate) struct Domain {
    pub id: u16,
    /// The uid whose private objects these are; `None` for SHARED ones.
    pub owner: Option<u32>,
    name: String,
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
    /// An empty domain with `shards` shards (a power of two); `seed` varies
    /// the first generations.
    pub fn new(id: u16, owner: Option<u32>, shards: usize, seed: u64) -> Domain {
        let name = match owner {
            Some(uid) => format!("hreg-uid-{uid}"),
            None => "hreg-shared".to_owned(),
        };
        Domain {
            id,
            owner,
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
                        seed: (seed ^ (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15)) | 1,
                    }))
                })
                .collect(),
            heap: Mutex::new(Heap::new(format!("{name}-heap"))),
            heap_chunks: (0..MAX_HEAP_CHUNKS).map(|_| OnceLock::new()).collect(),
            name,
        }
    }

    /// Slot `index` and its facts, if its chunk exists.
    #[inline]
    pub fn slot(&self, index: u32) -> Option<(SlotView<'_>, &SlotMeta)> {
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
    /// line up); `Ok(None)` when the shard has no index left, QUOTA when
    /// memory for the table runs out. The caller holds the shard's lock.
    pub fn vacant(
        &self,
        shard: &mut Shard,
        shard_index: usize,
        shard_bits: u32,
    ) -> Result<Option<u32>, Status> {
        if let Some(index) = shard.free.pop_front() {
            return Ok(Some(index));
        }
        let max_local = 1u32 << (hreg_proto::handle::SLOT_BITS - shard_bits);
        if shard.next_local >= max_local {
            return Ok(None);
        }
        let index = (shard.next_local << shard_bits) | shard_index as u32;
        self.prepare(index).map_err(|_| Status::Quota)?;
        shard.next_local += 1;
        shard.seed ^= shard.seed << 13;
        shard.seed ^= shard.seed >> 7;
        shard.seed ^= shard.seed << 17;
        let generation = ((shard.seed as u16) & 0x7fff).max(1);
        let (view, _) = self.slot(index).expect("prepared");
        view.write(&Slot {
            generation,
            flags: 0,
            len: 0,
            owner: 0,
            payload: Payload::Free,
        });
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
        let _grow = self.grow.lock().unwrap_or_else(|e| e.into_inner());
        let made = match self.slot_chunks[chunk].get() {
            Some(made) => made,
            None => {
                let made = Chunk::create(&format!("{}-slots", self.name), slot_chunk_len(chunk))?;
                let meta: Box<[SlotMeta]> = (0..slot_chunk_slots(chunk))
                    .map(|_| SlotMeta::default())
                    .collect();
                let _ = self.meta[chunk].set(meta);
                let _ = self.slot_chunks[chunk].set(made);
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
    /// here, before any slot names it). QUOTA when memory runs out.
    pub fn place(&self, value: &[u8]) -> Result<Payload, Status> {
        if value.len() <= INLINE_VALUE {
            let mut bytes = [0u8; INLINE_VALUE];
            bytes[..value.len()].copy_from_slice(value);
            return Ok(Payload::Inline(bytes));
        }
        let at = self
            .heap
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .alloc(&self.heap_chunks, value.len() as u64)
            .map_err(|_| Status::Quota)?;
        let written = self.heap_chunk(at.chunk).is_some_and(|chunk| {
            usize::try_from(at.offset).is_ok_and(|offset| chunk.mapping().store(offset, value))
        });
        if !written {
            self.free_block(at, value.len() as u64);
            return Err(Status::Quota);
        }
        Ok(Payload::Heap(at))
    }

    /// Frees the block of a `len`-byte value that no reader can reach any
    /// more (never published, or reclaimed).
    pub fn free_block(&self, at: HeapAddress, len: u64) {
        self.heap
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .free(&self.heap_chunks, at, len);
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
            Payload::Free => slot.len == 0,
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
        self.heap.lock().unwrap_or_else(|e| e.into_inner()).in_use()
    }
}
