//! Reads without a round trip: a handle is resolved in this process, by a
//! seqlock read of its slot in the registry's shared memory
//! (`hreg_proto::table`), with no system call, no daemon CPU and no lock
//! shared between threads.
//!
//! The session maps what it reads, read-only: a chunk of a domain its uid
//! may read is mapped when a read first resolves into it (a slot chunk for
//! the handle's slot, a heap chunk for the value the slot names), one
//! control request each, so the process's address space grows with what it
//! reads, never with the registry. Mappings are only ever added, never
//! removed, while the session lives, so a lookup is a couple of `OnceLock`
//! reads. When a read cannot be done here — a domain this uid may not map
//! (the daemon then says DENIED), a chunk this process cannot map (its
//! address space is limited: tried again a second later, not on every
//! read), a slot the daemon keeps changing, or the environment asks for it
//! (`HREG_READ_PATH=ring`, for comparisons) — the caller goes through the
//! ring instead, with the same results.

#![allow(unsafe_code)]

use crate::error::{Error, Result};
use crate::mapped::{OwnedMapping, PinnedBlock};
use hreg_proto::handle::{Handle, HandleParts, MAX_DOMAINS};
use hreg_proto::locks::lock;
use hreg_proto::pins::{Borrow, ClientPins};
use hreg_proto::shm::{Mapping, ReadOnly};
use hreg_proto::table::{
    header::Header, slot_chunk_len, slot_place, Located, Read, SlotView, MAX_HEAP_CHUNKS,
    MAX_SLOT_CHUNKS,
};
use hreg_proto::Limit;
use rustix::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

/// Reads of a slot that raced a write before giving up on this path.
const TORN_RETRIES: usize = 64;

/// Domains per group of the domain table (allocated a group at a time).
const GROUP: usize = 128;

/// How long a chunk this process could not map is left to the ring before
/// mapping it is tried again, in milliseconds.
const RETRY_MAP_MS: u64 = 1000;

/// One chunk of a domain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Chunk {
    /// Slot chunk `k`.
    Slots(usize),
    /// Heap chunk `k`.
    Heap(usize),
}

/// Where the daemon sends a domain's chunks from: the control socket.
pub(crate) trait ChunkSource {
    /// A read-only descriptor of `chunk` of `domain`; `Ok(None)` when the
    /// domain has no such chunk. DENIED or STALE from the daemon are errors
    /// of that status.
    fn map_chunk(&self, domain: u16, chunk: Chunk) -> Result<Option<OwnedFd>>;
}

/// What asking for a chunk came to.
enum Mapped {
    /// It is mapped.
    Yes,
    /// The domain has no such chunk.
    Missing,
    /// Not readable here (the domain is not this uid's to map, or this
    /// process cannot map the chunk now): the ring answers instead.
    No,
}

/// One domain's chunks, as far as this session has mapped them.
struct DomainMaps {
    slots: [OnceLock<OwnedMapping<ReadOnly>>; MAX_SLOT_CHUNKS],
    heap: Box<[OnceLock<OwnedMapping<ReadOnly>>]>,
    /// When mapping each chunk last failed, in milliseconds since the
    /// session's reads began, plus one (0: never).
    slots_failed: [AtomicU64; MAX_SLOT_CHUNKS],
    heap_failed: Box<[AtomicU64]>,
    /// This uid may not map the domain: always go through the ring.
    denied: AtomicBool,
}

impl DomainMaps {
    fn new() -> DomainMaps {
        DomainMaps {
            slots: std::array::from_fn(|_| OnceLock::new()),
            heap: (0..MAX_HEAP_CHUNKS).map(|_| OnceLock::new()).collect(),
            slots_failed: std::array::from_fn(|_| AtomicU64::new(0)),
            heap_failed: (0..MAX_HEAP_CHUNKS).map(|_| AtomicU64::new(0)).collect(),
            denied: AtomicBool::new(false),
        }
    }

    #[inline]
    fn heap_chunk(&self, chunk: u16) -> Option<&Mapping<ReadOnly>> {
        self.heap.get(usize::from(chunk))?.get().map(|m| &**m)
    }

    /// Where `chunk`'s mapping goes, and its failure time; `None` for a
    /// chunk no domain has.
    fn place(&self, chunk: Chunk) -> Option<(&OnceLock<OwnedMapping<ReadOnly>>, &AtomicU64)> {
        match chunk {
            Chunk::Slots(k) => Some((self.slots.get(k)?, self.slots_failed.get(k)?)),
            Chunk::Heap(k) => Some((self.heap.get(k)?, self.heap_failed.get(k)?)),
        }
    }
}

/// Where a value read locally goes.
pub(crate) enum Output<'a> {
    /// The caller's buffer (BUFFER when the value is longer).
    Buffer(&'a mut [u8]),
    /// A vector made exactly as long as the value.
    Vec(&'a mut Vec<u8>),
}

impl Output<'_> {
    /// Room for exactly `len` bytes (`None`: the caller's buffer is shorter).
    #[inline]
    pub(crate) fn take(&mut self, len: usize) -> Option<&mut [u8]> {
        match self {
            Output::Buffer(buf) => buf.get_mut(..len),
            Output::Vec(vec) => {
                vec.clear();
                vec.try_reserve_exact(len).ok()?;
                vec.resize(len, 0);
                Some(&mut vec[..])
            }
        }
    }
}

/// What a handle's slot holds, as [`Reads::probe`] found it here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Probe {
    /// A live object.
    Live,
    /// No object of this handle.
    Stale,
    /// Granted ahead to the session whose id's low 32 bits these are; its
    /// insert is not applied yet.
    Reserved { session: u32 },
    /// Not readable here.
    Unknown,
}

/// What a local read came to (small, so the hot path moves little).
pub(crate) enum Resolved {
    /// The value's length (the bytes are in the output).
    Value(usize),
    /// No object of this handle.
    Stale,
    /// The output is too small for the value, of this length.
    Buffer(usize),
    /// Another error (rare: a broken mapping or reply).
    Failed(Box<Error>),
    /// Not answerable here: ask the daemon through the ring.
    Ring,
    /// Granted ahead to the session whose id's low 32 bits these are, its
    /// insert not applied yet: that session may answer from its own copy
    /// of the value, anyone else asks the daemon.
    Reserved { session: u32 },
}

impl Resolved {
    /// The caller's answer: `None` to ask the daemon instead.
    #[inline]
    pub(crate) fn answer(self) -> Option<Result<usize>> {
        match self {
            Resolved::Value(len) => Some(Ok(len)),
            Resolved::Ring | Resolved::Reserved { .. } => None,
            failed => Some(Err(failed.error())),
        }
    }

    /// The error of a read that failed (a bug to ask of another outcome).
    #[cold]
    pub(crate) fn error(self) -> Error {
        match self {
            Resolved::Stale => Error::Stale,
            Resolved::Buffer(needed) => Error::Buffer { needed },
            Resolved::Failed(e) => *e,
            Resolved::Value(_) | Resolved::Ring | Resolved::Reserved { .. } => {
                Error::Protocol("a read that did not fail taken for one".into())
            }
        }
    }
}

/// This thread's number, which spreads threads over a pin table (and
/// waiting threads over a ring pool).
pub(crate) fn thread_number() -> usize {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    thread_local! {
        static MINE: usize = NEXT.fetch_add(1, Ordering::Relaxed);
    }
    MINE.try_with(|n| *n).unwrap_or(0)
}

/// A value borrowed from shared memory: a pinned block, valid and
/// unchanged while its pin holds; or, for a value kept inside its slot
/// (which a replace rewrites), a copy.
pub(crate) enum Borrowed {
    /// A pinned block of a heap chunk.
    Pinned(PinnedBlock),
    /// A short value, copied out of its slot.
    Copied(Vec<u8>),
}

/// The maps of [`GROUP`] consecutive domains, each made on first use.
type DomainGroup = Box<[OnceLock<DomainMaps>]>;

/// The registry's read side as this session sees it.
pub(crate) struct RegistryView {
    instance: u16,
    header: OwnedMapping<ReadOnly>,
    /// Domains in groups, a group made when one of its domains is first
    /// read (2^14 domains; most sessions read two).
    groups: Box<[OnceLock<DomainGroup>]>,
    /// One chunk request at a time.
    fetching: Mutex<()>,
    /// When the reads began (failed mappings are timed from it).
    began: Instant,
    ring_only: bool,
    /// Moves on after chunks are mapped (for bindings that cache the
    /// chunks' addresses: [`RegistryView::mapped_chunks`]).
    mapped: AtomicU64,
}

impl RegistryView {
    /// The read side of a registry whose header `header` (read-only) is,
    /// and whose handles carry `instance`.
    pub(crate) fn new(header: &OwnedFd, instance: u32) -> Result<RegistryView> {
        let header = OwnedMapping::sealed(header, None)?;
        let found = Header::new(&header)
            .ok_or_else(|| {
                Error::Protocol("the registry header is not one this client reads".into())
            })?
            .instance();
        if u32::from(found) != instance {
            return Err(Error::Protocol(format!(
                "WELCOME names instance {instance}, the registry header {found}"
            )));
        }
        Ok(RegistryView {
            instance: found,
            header,
            groups: (0..MAX_DOMAINS / GROUP).map(|_| OnceLock::new()).collect(),
            fetching: Mutex::new(()),
            began: Instant::now(),
            ring_only: std::env::var_os("HREG_READ_PATH").is_some_and(|v| v == "ring"),
            mapped: AtomicU64::new(0),
        })
    }

    /// Whether the daemon said it stopped serving this registry.
    #[inline]
    pub(crate) fn stopped(&self) -> bool {
        Header::accepted(&self.header).stopped()
    }

    #[inline]
    fn maps(&self, domain: u16) -> Option<&DomainMaps> {
        let group = self.groups.get(usize::from(domain) / GROUP)?.get()?;
        group[usize::from(domain) % GROUP].get()
    }

    fn maps_or_new(&self, domain: u16) -> &DomainMaps {
        let group = self.groups[usize::from(domain) / GROUP]
            .get_or_init(|| (0..GROUP).map(|_| OnceLock::new()).collect());
        group[usize::from(domain) % GROUP].get_or_init(DomainMaps::new)
    }

    /// Maps `chunk` of `domain` (`maps`), once: a chunk mapped stays
    /// mapped. A chunk this process cannot map (or whose descriptor cannot
    /// be had) is left to the ring, and tried again [`RETRY_MAP_MS`] later.
    /// An error only for STALE (root asked for a domain that is not).
    fn map_chunk(
        &self,
        source: &dyn ChunkSource,
        maps: &DomainMaps,
        domain: u16,
        chunk: Chunk,
    ) -> Result<Mapped> {
        let Some((place, failed)) = maps.place(chunk) else {
            return Ok(Mapped::Missing);
        };
        if place.get().is_some() {
            return Ok(Mapped::Yes);
        }
        let now = u64::try_from(self.began.elapsed().as_millis()).unwrap_or(u64::MAX - 1) + 1;
        let last = failed.load(Ordering::Relaxed);
        if maps.denied.load(Ordering::Relaxed) || (last != 0 && now < last + RETRY_MAP_MS) {
            return Ok(Mapped::No);
        }
        let _one = lock(&self.fetching);
        if place.get().is_some() {
            return Ok(Mapped::Yes);
        }
        let fd = match source.map_chunk(domain, chunk) {
            Ok(Some(fd)) => fd,
            Ok(None) => return Ok(Mapped::Missing),
            Err(Error::Denied) => {
                maps.denied.store(true, Ordering::Relaxed);
                return Ok(Mapped::No);
            }
            Err(Error::Stale) => return Err(Error::Stale),
            Err(_) => {
                failed.store(now, Ordering::Relaxed);
                return Ok(Mapped::No);
            }
        };
        let len = match chunk {
            Chunk::Slots(k) => Some(slot_chunk_len(k)),
            Chunk::Heap(_) => None,
        };
        match OwnedMapping::sealed(&fd, len) {
            Ok(map) => {
                let _ = place.set(map);
                self.mapped.fetch_add(1, Ordering::Release);
                Ok(Mapped::Yes)
            }
            Err(_) => {
                failed.store(now, Ordering::Relaxed);
                Ok(Mapped::No)
            }
        }
    }

    /// For bindings that read slots themselves (libhreg's Go support): the
    /// registry header, and a counter that moves on after chunks are mapped
    /// (a binding re-asks [`RegistryView::mapped_chunks`] when it changed).
    pub(crate) fn header_and_counter(&self) -> (&Mapping<ReadOnly>, &AtomicU64) {
        (&self.header, &self.mapped)
    }

    /// For bindings: the chunks of `domain` this session has mapped, slot
    /// chunks into `slots[k]` and heap chunks into `heap[k]` (`None` where
    /// chunk `k` is not mapped). Returns how many entries of each would
    /// hold every mapped chunk (more than `heap.len()`: ask again with
    /// room). Mappings are never removed while `self` lives.
    pub(crate) fn mapped_chunks<'a>(
        &'a self,
        domain: u16,
        slots: &mut [Option<&'a Mapping<ReadOnly>>],
        heap: &mut [Option<&'a Mapping<ReadOnly>>],
    ) -> (usize, usize) {
        fn report<'a>(
            list: &'a [OnceLock<OwnedMapping<ReadOnly>>],
            out: &mut [Option<&'a Mapping<ReadOnly>>],
        ) -> usize {
            out.fill(None);
            let mut needed = 0;
            for (k, chunk) in list.iter().enumerate() {
                if let Some(map) = chunk.get() {
                    needed = k + 1;
                    if let Some(place) = out.get_mut(k) {
                        *place = Some(&**map);
                    }
                }
            }
            needed
        }
        match self.maps(domain) {
            Some(maps) if !maps.denied.load(Ordering::Relaxed) => {
                (report(&maps.slots, slots), report(&maps.heap, heap))
            }
            _ => (report(&[], slots), report(&[], heap)),
        }
    }

    /// Maps heap chunk `chunk` of `domain`, which a slot named: true when
    /// it is mapped now, false when the read must go through the ring.
    fn fetch(&self, source: &dyn ChunkSource, domain: u16, chunk: u16) -> Result<bool> {
        let maps = self.maps_or_new(domain);
        let mapped = self.map_chunk(source, maps, domain, Chunk::Heap(usize::from(chunk)))?;
        Ok(matches!(mapped, Mapped::Yes))
    }

    /// Maps the chunk of `handle`'s slot now, if this reader can: before a
    /// handle granted ahead is used, so that reading it then asks nothing
    /// of the daemon.
    pub(crate) fn map_slot_of(&self, source: &dyn ChunkSource, handle: Handle) {
        if !self.ring_only {
            // A chunk not mappable here leaves reads to the ring, as ever.
            let _ = self.slot(source, &HandleParts::decode(handle.get()));
        }
    }

    /// The slot `parts` names, mapping its chunk on first need; `Ok(None)`:
    /// not readable here.
    #[inline]
    fn slot<'a>(
        &'a self,
        source: &dyn ChunkSource,
        parts: &HandleParts,
    ) -> Result<Option<(&'a DomainMaps, SlotView<'a, ReadOnly>)>> {
        if parts.instance != self.instance {
            return Err(Error::Stale);
        }
        let (chunk, at) = slot_place(parts.slot);
        let maps = match self.maps(parts.domain) {
            Some(maps) => maps,
            None => self.maps_or_new(parts.domain),
        };
        if maps.denied.load(Ordering::Relaxed) {
            return Ok(None);
        }
        let map = match maps.slots.get(chunk).and_then(OnceLock::get) {
            Some(map) => map,
            None => match self.map_chunk(source, maps, parts.domain, Chunk::Slots(chunk))? {
                Mapped::Yes => maps.slots[chunk].get().expect("just mapped"),
                // The domain has no chunk for this slot: no such object.
                Mapped::Missing => return Err(Error::Stale),
                Mapped::No => return Ok(None),
            },
        };
        let view = SlotView::new(map, at)
            .ok_or_else(|| Error::Protocol("slot outside its chunk".into()))?;
        Ok(Some((maps, view)))
    }

    /// Reads the value of `handle` into `out`.
    #[inline]
    pub(crate) fn get(
        &self,
        source: &dyn ChunkSource,
        handle: Handle,
        out: &mut Output<'_>,
    ) -> Resolved {
        if self.ring_only {
            return Resolved::Ring;
        }
        let parts = HandleParts::decode(handle.get());
        let (maps, view) = match self.slot(source, &parts) {
            Ok(Some(found)) => found,
            Ok(None) => return Resolved::Ring,
            Err(Error::Stale) => return Resolved::Stale,
            Err(e) => return Resolved::Failed(Box::new(e)),
        };
        let mut fetched = false;
        for _ in 0..TORN_RETRIES {
            match view.read(
                parts.generation,
                |len| out.take(len),
                |c| maps.heap_chunk(c),
            ) {
                Read::Value { len } => return Resolved::Value(len as usize),
                Read::Buffer { len } => return Resolved::Buffer(len as usize),
                Read::Stale => return Resolved::Stale,
                // Granted ahead, its insert not applied yet: the daemon
                // says when it is (`crate::engine` asks again), unless the
                // session it was granted to kept the value.
                Read::Reserved { session } => return Resolved::Reserved { session },
                Read::Unmapped { chunk } if !fetched => {
                    fetched = true;
                    if !matches!(self.fetch(source, parts.domain, chunk), Ok(true)) {
                        return Resolved::Ring;
                    }
                }
                Read::Unmapped { .. } => return Resolved::Ring,
                Read::Torn => std::hint::spin_loop(),
            }
        }
        Resolved::Ring
    }

    /// What `handle`'s slot holds now, read here without copying the
    /// value (for writes answered without the daemon).
    pub(crate) fn probe(&self, source: &dyn ChunkSource, handle: Handle) -> Probe {
        if self.ring_only {
            return Probe::Unknown;
        }
        let parts = HandleParts::decode(handle.get());
        let view = match self.slot(source, &parts) {
            Ok(Some((_, view))) => view,
            Err(Error::Stale) => return Probe::Stale,
            Ok(None) | Err(_) => return Probe::Unknown,
        };
        for _ in 0..TORN_RETRIES {
            match view.locate(parts.generation) {
                Located::Stale => return Probe::Stale,
                Located::Reserved { session } => return Probe::Reserved { session },
                Located::Inline { .. } | Located::Heap { .. } => return Probe::Live,
                Located::Torn => std::hint::spin_loop(),
            }
        }
        Probe::Unknown
    }

    /// Borrows the value of `handle`: pins its block in `pins` (the pin
    /// goes with the block handed out, or is cleared at once). `Ok(None)`:
    /// not readable here.
    pub(crate) fn borrow(
        &self,
        source: &dyn ChunkSource,
        pins: ClientPins<'_>,
        handle: Handle,
    ) -> Result<Option<Borrowed>> {
        if self.ring_only {
            return Ok(None);
        }
        let parts = HandleParts::decode(handle.get());
        let Some((maps, view)) = self.slot(source, &parts)? else {
            return Ok(None);
        };
        let mut fetched = false;
        for _ in 0..TORN_RETRIES {
            let (pin, at, len) = match pins.borrow(&view, parts.domain, parts.generation) {
                Borrow::Pinned { pin, at, len } => (pin, at, len),
                Borrow::Torn => {
                    std::hint::spin_loop();
                    continue;
                }
                // A handle already gone is STALE, and a value kept in its
                // slot needs no pin (it is copied), before any QUOTA.
                Borrow::Stale => return Err(Error::Stale),
                // Not filled yet: through the ring, which waits for it.
                Borrow::Reserved => return Ok(None),
                Borrow::Inline => return self.copy_inline(&view, &parts),
                Borrow::Refused => return Err(Error::quota(Limit::BorrowedReferences)),
            };
            if let Some(chunk) = maps.heap_chunk(at.chunk) {
                let Ok(offset) = usize::try_from(at.offset) else {
                    return Err(Error::Protocol("a value outside its heap chunk".into()));
                };
                // SAFETY: a heap chunk of this session's reads; the block
                // was in its slot after `pin` was taken in this session's
                // table; the caller keeps the session alive for longer
                // than the block (`crate::borrow`).
                return match unsafe { PinnedBlock::new(chunk, offset, len as usize, pin) } {
                    Some(block) => Ok(Some(Borrowed::Pinned(block))),
                    None => Err(Error::Protocol("a value outside its heap chunk".into())),
                };
            }
            // A chunk made since this session mapped its domain: unpinned
            // (the guard drops), mapped, and tried again.
            drop(pin);
            if fetched {
                return Ok(None);
            }
            fetched = true;
            match self.fetch(source, parts.domain, at.chunk) {
                Ok(true) => {}
                other => return other.map(|_| None),
            }
        }
        Ok(None)
    }

    /// A copy of the value kept in `view`'s slot.
    fn copy_inline(
        &self,
        view: &SlotView<'_, ReadOnly>,
        parts: &HandleParts,
    ) -> Result<Option<Borrowed>> {
        let mut value = Vec::new();
        for _ in 0..TORN_RETRIES {
            let read = {
                let mut out = Output::Vec(&mut value);
                view.read(parts.generation, |len| out.take(len), |_| None)
            };
            match read {
                Read::Value { .. } => return Ok(Some(Borrowed::Copied(value))),
                Read::Stale => return Err(Error::Stale),
                Read::Torn => std::hint::spin_loop(),
                // Moved to the heap meanwhile, or reserved: the caller's
                // ring fallback.
                Read::Buffer { .. } | Read::Unmapped { .. } | Read::Reserved { .. } => {
                    return Ok(None)
                }
            }
        }
        Ok(None)
    }
}
