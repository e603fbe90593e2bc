//! A domain's value heap: an allocator of blocks over its heap chunks.
//!
//! Blocks come in size classes (16-byte steps up to 256 bytes, then four
//! classes per power of two), so a block is at most a quarter larger than
//! what it holds and a freed block serves any later value of its class.
//! New blocks are cut from the end of the newest chunk; when it has no room
//! left, what remains is cut into smaller blocks for the free lists and a
//! new chunk is made, each larger than the last (few descriptors), or as
//! large as one value needs. Pages are allocated just ahead of the cut, and
//! freed blocks of [`PUNCH_MIN`] bytes or more give their pages back, so
//! memory follows the live values under churn.
//!
//! Blocks are only freed through reclamation (a reader may still be copying
//! a replaced value, or hold it borrowed): see `crate::reclaim`.

use crate::memory::Chunk;
use crate::store::{names, Store};
use hreg_proto::table::{heap_chunk_len, HeapAddress};
use std::io;
use std::sync::{Arc, OnceLock};

/// Freed blocks at least this large give their pages back.
pub const PUNCH_MIN: u64 = 64 << 10;

/// Pages allocated ahead of the cut at a time.
const ALLOCATE_AHEAD: u64 = 256 << 10;

/// Block sizes are multiples of this (and so are block offsets).
const ALIGN: u64 = 16;

/// The size class of a block that holds `len` bytes, and the class's block
/// size.
pub fn class_of(len: u64) -> (usize, u64) {
    let len = len.max(1);
    if len <= 256 {
        let size = len.div_ceil(ALIGN) * ALIGN;
        return ((size / ALIGN - 1) as usize, size);
    }
    // 2^n < len <= 2^(n+1): quarter steps of 2^n.
    let n = 63 - (len - 1).leading_zeros() as u64;
    let quarter = 1u64 << (n - 2);
    let steps = (len - (1 << n)).div_ceil(quarter);
    let class = 16 + 4 * (n as usize - 8) + steps as usize - 1;
    (class, (1 << n) + steps * quarter)
}

/// The block size of `class`.
/// Chunk `index` of `chunks`, which the heap made.
fn made(chunks: &[OnceLock<Chunk>], index: u16) -> &Chunk {
    chunks[usize::from(index)]
        .get()
        .expect("the heap made every chunk it names")
}

fn class_size(class: usize) -> u64 {
    if class < 16 {
        return (class as u64 + 1) * ALIGN;
    }
    let n = (class - 16) / 4 + 8;
    let steps = (class - 16) % 4 + 1;
    (1u64 << n) + steps as u64 * (1 << (n - 2))
}

/// A free block.
#[derive(Clone, Copy, Debug)]
struct Free {
    at: HeapAddress,
    /// Its pages were given back (allocate them before reuse).
    punched: bool,
}

/// One domain's heap: its free lists and where new blocks are cut. The
/// chunks themselves live in the domain (readers find them without a
/// lock); the heap fills that list in order.
pub struct Heap {
    /// Where chunks are made, and the domain whose heap this is (chunk
    /// names say it).
    store: Arc<dyn Store>,
    domain: u16,
    /// Chunks made so far.
    chunks: usize,
    /// Where the next new block is cut from the newest chunk.
    cut: u64,
    /// How far the newest chunk's pages are allocated.
    allocated: u64,
    free: Vec<Vec<Free>>,
    /// Bytes in blocks handed out (block sizes, not value lengths).
    in_use: u64,
}

impl Heap {
    /// An empty heap of `domain`, whose chunks `store` makes.
    pub fn new(store: Arc<dyn Store>, domain: u16) -> Heap {
        Heap {
            store,
            domain,
            chunks: 0,
            cut: 0,
            allocated: 0,
            free: Vec::new(),
            in_use: 0,
        }
    }

    /// Bytes in blocks handed out.
    pub fn in_use(&self) -> u64 {
        self.in_use
    }

    /// Chunks made so far.
    pub fn chunk_count(&self) -> usize {
        self.chunks
    }

    /// A block for `len` bytes (allocated, ready to be written) in the
    /// chunks `chunks` (made here as needed), or an error when memory or
    /// chunks run out.
    pub fn alloc(&mut self, chunks: &[OnceLock<Chunk>], len: u64) -> io::Result<HeapAddress> {
        let (class, size) = class_of(len);
        if let Some(block) = self.free.get_mut(class).and_then(Vec::pop) {
            if block.punched {
                let chunk = made(chunks, block.at.chunk);
                if let Err(e) = chunk.allocate(block.at.offset, size) {
                    self.free[class].push(block);
                    return Err(e);
                }
            }
            self.in_use += size;
            return Ok(block.at);
        }
        let room = match self.chunks.checked_sub(1) {
            Some(last) => made(chunks, last as u16).len() as u64 - self.cut,
            None => 0,
        };
        if room < size {
            self.new_chunk(chunks, size)?;
        }
        let newest = made(chunks, (self.chunks - 1) as u16);
        let at = HeapAddress {
            chunk: (self.chunks - 1) as u16,
            offset: self.cut,
        };
        if self.cut + size > self.allocated {
            let until = (self.cut + size + ALLOCATE_AHEAD).min(newest.len() as u64);
            newest.allocate(self.allocated, until - self.allocated)?;
            self.allocated = until;
        }
        self.cut += size;
        self.in_use += size;
        Ok(at)
    }

    /// Takes back a block of a `len`-byte value: it serves the next value of
    /// its class.
    pub fn free(&mut self, chunks: &[OnceLock<Chunk>], at: HeapAddress, len: u64) {
        let (class, size) = class_of(len);
        self.in_use -= size;
        let punched = size >= PUNCH_MIN;
        if punched {
            made(chunks, at.chunk).punch(at.offset, size);
        }
        if self.free.len() <= class {
            self.free.resize_with(class + 1, Vec::new);
        }
        self.free[class].push(Free { at, punched });
    }

    /// Starts a new chunk with room for a block of `size` bytes; what is left
    /// of the newest one goes to the free lists.
    fn new_chunk(&mut self, chunks: &[OnceLock<Chunk>], size: u64) -> io::Result<()> {
        let Some(place) = chunks.get(self.chunks) else {
            return Err(io::Error::new(
                io::ErrorKind::OutOfMemory,
                "the domain has no heap chunk left",
            ));
        };
        let len = heap_chunk_len(self.chunks).max(size.div_ceil(1 << 20) << 20);
        let chunk = Chunk::create(
            &*self.store,
            &names::heap(self.domain, self.chunks),
            len as usize,
        )?;
        if let Some(last) = self.chunks.checked_sub(1) {
            let end = made(chunks, last as u16).len() as u64;
            let allocated = self.allocated;
            self.scatter(last as u16, self.cut, end, allocated);
        }
        // Only this heap (under its domain's lock) fills the list.
        let _ = place.set(chunk);
        self.chunks += 1;
        self.cut = 0;
        self.allocated = 0;
        Ok(())
    }

    /// Cuts `from .. end` of `chunk` into free blocks, largest first;
    /// those reaching past `allocated` have no pages yet.
    fn scatter(&mut self, chunk: u16, mut from: u64, end: u64, allocated: u64) {
        while end - from >= ALIGN {
            let rest = end - from;
            let (mut class, _) = class_of(rest);
            while class_size(class) > rest {
                class -= 1;
            }
            let size = class_size(class);
            let at = HeapAddress {
                chunk,
                offset: from,
            };
            from += size;
            let punched = at.offset + size > allocated;
            if self.free.len() <= class {
                self.free.resize_with(class + 1, Vec::new);
            }
            self.free[class].push(Free { at, punched });
        }
    }

    /// Takes the chunks an earlier daemon made (`chunks`, in order) with
    /// the blocks its live values occupy (`live`: address and value
    /// length); returns the rest, the gaps between them, which the caller
    /// hands back with [`Heap::free_gap`] once no borrowed reference of the
    /// earlier daemon's sessions can reach them. An error for blocks that
    /// overlap or lie outside their chunk.
    pub fn adopt(
        &mut self,
        chunks: &[OnceLock<Chunk>],
        mut live: Vec<(HeapAddress, u64)>,
    ) -> Result<Vec<(HeapAddress, u64)>, String> {
        let count = chunks.iter().take_while(|c| c.get().is_some()).count();
        live.sort_unstable_by_key(|&(at, _)| (at.chunk, at.offset));
        let mut gaps = Vec::new();
        let mut next = HeapAddress {
            chunk: 0,
            offset: 0,
        };
        self.in_use = 0;
        let close = |gaps: &mut Vec<(HeapAddress, u64)>, upto: u64, next: HeapAddress| {
            if upto > next.offset {
                gaps.push((next, upto - next.offset));
            }
        };
        for (at, len) in live {
            let size = class_of(len).1;
            if usize::from(at.chunk) >= count {
                return Err(format!(
                    "a value in heap chunk {}, which is missing",
                    at.chunk
                ));
            }
            let chunk_len = made(chunks, at.chunk).len() as u64;
            if at.offset % ALIGN != 0
                || at
                    .offset
                    .checked_add(size)
                    .is_none_or(|end| end > chunk_len)
            {
                return Err(format!("a value outside heap chunk {}", at.chunk));
            }
            while next.chunk < at.chunk {
                close(&mut gaps, made(chunks, next.chunk).len() as u64, next);
                next = HeapAddress {
                    chunk: next.chunk + 1,
                    offset: 0,
                };
            }
            if at.offset < next.offset {
                return Err(format!("two values overlap in heap chunk {}", at.chunk));
            }
            close(&mut gaps, at.offset, next);
            next.offset = at.offset + size;
            self.in_use += size;
        }
        // Whole chunks after the last value, but the newest, are gaps too.
        while usize::from(next.chunk) + 1 < count {
            close(&mut gaps, made(chunks, next.chunk).len() as u64, next);
            next = HeapAddress {
                chunk: next.chunk + 1,
                offset: 0,
            };
        }
        // So is what the earlier daemon wrote in the newest chunk after its
        // last value (freed blocks a borrowed reference may still read);
        // new blocks are cut only beyond what it ever wrote.
        self.cut = 0;
        if count > 0 {
            let written = made(chunks, next.chunk).written_end(next.offset);
            let end = written.div_ceil(ALIGN) * ALIGN;
            close(&mut gaps, end, next);
            self.cut = end.max(next.offset);
        }
        self.chunks = count;
        self.allocated = self.cut;
        Ok(gaps)
    }

    /// Frees a gap [`Heap::adopt`] returned: cut into blocks, each
    /// allocated again before use (the earlier daemon may have given its
    /// pages back).
    pub fn free_gap(&mut self, chunks: &[OnceLock<Chunk>], at: HeapAddress, len: u64) {
        let chunk = made(chunks, at.chunk);
        if len >= PUNCH_MIN {
            chunk.punch(at.offset, len);
        }
        self.scatter(at.chunk, at.offset, at.offset + len, 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_are_tight_and_consistent() {
        let mut last = (0, 0);
        for len in 1..=(1u64 << 21) {
            let (class, size) = class_of(len);
            assert!(size >= len && size.is_multiple_of(ALIGN), "{len}");
            assert!(len <= 256 || size <= len + len / 4, "{len}: {size}");
            assert_eq!(class_size(class), size, "{len}");
            assert!(class >= last.0 && size >= last.1);
            last = (class, size);
        }
        assert_eq!(class_of(0), (0, 16));
        assert_eq!(class_of(257), (16, 320));
        assert_eq!(class_of(1 << 30).1, 1 << 30);
    }

    #[test]
    fn blocks_are_reused_by_class_and_chunks_grow() {
        let chunks: Vec<OnceLock<Chunk>> = (0..4).map(|_| OnceLock::new()).collect();
        let mut heap = Heap::new(Arc::new(crate::MemoryStore), 0);
        let a = heap.alloc(&chunks, 100).unwrap();
        let b = heap.alloc(&chunks, 100).unwrap();
        assert_ne!(a, b);
        assert_eq!(heap.in_use(), 2 * 112);
        heap.free(&chunks, a, 100);
        assert_eq!(heap.alloc(&chunks, 97).unwrap(), a, "same class, reused");
        // A value larger than the first chunk gets a chunk of its own size.
        let big = heap.alloc(&chunks, 3 << 20).unwrap();
        assert_eq!(big.chunk, 1);
        assert!(made(&chunks, 1).len() as u64 >= 3 << 20);
        // The first chunk's rest went to the free lists, in large blocks.
        let carved = heap.alloc(&chunks, 900_000).unwrap();
        assert_eq!(carved.chunk, 0);
        // Big blocks give their pages back and get them again when reused.
        heap.free(&chunks, big, 3 << 20);
        let again = heap.alloc(&chunks, 3 << 20).unwrap();
        assert_eq!(again, big);
        assert!(made(&chunks, 1)
            .mapping()
            .store(again.offset as usize, b"written"));
        // Out of chunks: an error, not a panic.
        for _ in 0..3 {
            let _ = heap.alloc(&chunks, 900 << 20);
        }
        assert!(heap.alloc(&chunks, 900 << 20).is_err());
    }

    #[test]
    fn an_adopted_heap_cuts_new_blocks_only_beyond_what_was_written() {
        let chunks: Vec<OnceLock<Chunk>> = (0..4).map(|_| OnceLock::new()).collect();
        let mut heap = Heap::new(Arc::new(crate::MemoryStore), 0);
        let live = heap.alloc(&chunks, 1000).unwrap();
        let freed = heap.alloc(&chunks, 100_000).unwrap();
        assert!(made(&chunks, freed.chunk)
            .mapping()
            .store(freed.offset as usize, b"borrowed"));
        // The daemon stops with `freed` out of its slot but still borrowed:
        // the next one adopts the chunks with `live` the only value.
        let mut adopted = Heap::new(Arc::new(crate::MemoryStore), 0);
        let gaps = adopted.adopt(&chunks, vec![(live, 1000)]).unwrap();
        assert!(
            gaps.iter().any(|(at, len)| at.chunk == freed.chunk
                && at.offset <= freed.offset
                && at.offset + len >= freed.offset + 8),
            "the written tail is a gap (held back until the sessions resume): {gaps:?}"
        );
        let next = adopted.alloc(&chunks, 100_000).unwrap();
        assert!(
            next.chunk != freed.chunk || next.offset >= freed.offset + 8,
            "a new block over the borrowed bytes: {next:?}"
        );
        let gaps = Heap::new(Arc::new(crate::MemoryStore), 0)
            .adopt(&chunks, vec![(live, 1000), (next, 100_000)])
            .unwrap();
        assert!(gaps.iter().all(|(at, len)| at.offset + len <= next.offset
            || at.offset >= next.offset + class_of(100_000).1));
    }
}
