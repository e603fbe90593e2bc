//! What language bindings that resolve handles in their own runtime need
//! from the Rust client (libhreg's Go support): the addresses of the
//! registry mappings this client already made, kept mapped for as long as
//! the binding holds them. The layout of what lies there is `hreg_proto`'s
//! (`table`, `handle`); the binding does the seqlock read itself, and asks
//! the client (a normal get) whenever it cannot.

pub use crate::posted::release_bucket;
use crate::reads::RegistryView;
use crate::Client;
use hreg_proto::shm::{Mapping, ReadOnly};
use hreg_proto::table::{MAX_HEAP_CHUNKS, MAX_SLOT_CHUNKS};
use std::sync::atomic::{AtomicU32, AtomicU64};
use std::sync::Arc;

/// One mapped chunk: its first byte and its length. Read-only memory that
/// the daemon writes; read it only with atomic loads (it changes under the
/// reader).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MappedChunk {
    /// The chunk's first byte.
    pub base: *const u8,
    /// Bytes mapped.
    pub len: usize,
}

impl MappedChunk {
    fn of(map: &Mapping<ReadOnly>) -> Option<MappedChunk> {
        Some(MappedChunk {
            base: map.address_of(0)?,
            len: map.len(),
        })
    }
}

/// The registry's read side as a client has mapped it, for a binding that
/// reads slots itself. Holding it keeps every mapping the client made or
/// will make mapped, even after the client is dropped (the session ends
/// with the client; the memory stays readable until this is dropped).
pub struct MappedReads {
    reads: Arc<RegistryView>,
    releases_pending: Arc<[AtomicU32]>,
}

impl MappedReads {
    /// The registry header (the daemon's stopped word is at
    /// `hreg_proto::table::header::STOPPED_AT`).
    pub fn header(&self) -> Option<MappedChunk> {
        MappedChunk::of(self.reads.header_and_counter().0)
    }

    /// A counter that moves on after the client maps chunks: read it
    /// (acquire) before [`MappedReads::domain`], and ask again when it
    /// changed.
    pub fn counter(&self) -> &AtomicU64 {
        self.reads.header_and_counter().1
    }

    /// The client's filter of posted releases not applied yet: a handle's
    /// counter ([`release_bucket`]) is nonzero while this client may have
    /// posted a release of its last reference that the daemon has not
    /// applied. Read it (acquire) before the slot: when it is nonzero, ask
    /// the client (whose get waits for its own release); when zero, the
    /// slot already shows every release of it the client made.
    pub fn releases_pending(&self) -> &[AtomicU32] {
        &self.releases_pending
    }

    /// The chunks of `domain` mapped now: slot chunk `k` in `slots[k]`,
    /// heap chunk `k` in `heap[k]` (`None`: not mapped). Returns how many
    /// entries of each hold every mapped chunk; a count beyond the slice's
    /// length means: ask again with more room. None at all for a domain
    /// this client has not mapped (yet) or may not map.
    pub fn domain(
        &self,
        domain: u16,
        slots: &mut [Option<MappedChunk>],
        heap: &mut [Option<MappedChunk>],
    ) -> (usize, usize) {
        let mut slot_maps: [Option<&Mapping<ReadOnly>>; MAX_SLOT_CHUNKS] = [None; MAX_SLOT_CHUNKS];
        let mut heap_maps: Vec<Option<&Mapping<ReadOnly>>> =
            vec![None; heap.len().min(MAX_HEAP_CHUNKS)];
        let counts = self
            .reads
            .mapped_chunks(domain, &mut slot_maps, &mut heap_maps);
        for (out, map) in slots
            .iter_mut()
            .zip(slot_maps.iter().chain(std::iter::repeat(&None)))
        {
            *out = map.and_then(MappedChunk::of);
        }
        for (out, map) in heap
            .iter_mut()
            .zip(heap_maps.iter().chain(std::iter::repeat(&None)))
        {
            *out = map.and_then(MappedChunk::of);
        }
        counts
    }
}

impl Client {
    /// The registry mappings this client made, for a binding that reads
    /// slots itself (see [`MappedReads`]); not needed from Rust.
    #[doc(hidden)]
    pub fn mapped_reads(&self) -> MappedReads {
        MappedReads {
            reads: self.session().reads_shared(),
            releases_pending: self.session().posting.dropping.filter(),
        }
    }
}
