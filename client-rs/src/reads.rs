//! Reads without a round trip: a handle is resolved in this process, by a
//! seqlock read of its slot in the registry's shared memory
//! (`hreg_proto::table`), with no system call, no daemon CPU and no lock
//! shared between threads.
//!
//! The session maps, read-only and on first need, the chunks of the domains
//! its uid may read (one control request brings a domain's chunks; another
//! the chunks it grew since). Mappings are only ever added, never removed,
//! while the session lives, so a lookup is a couple of `OnceLock` reads.
//! When a read cannot be done here — a domain this uid may not map (the
//! daemon then says DENIED or STALE), a slot the daemon keeps changing, or
//! the environment asks for it (`HREG_READ_PATH=ring`, for comparisons) —
//! the caller goes through the ring instead, with the same results.

#![allow(unsafe_code)]

use crate::error::{Error, Result};
use crate::shm::{OwnedMapping, PinnedBlock};
use hreg_proto::control::Preload;
use hreg_proto::handle::{Handle, HandleParts, MAX_DOMAINS};
use hreg_proto::pins::{Borrow, ClientPins};
use hreg_proto::shm::{Access, Mapping};
use hreg_proto::table::{
    header::Header, slot_chunk_len, slot_place, Read, SlotView, MAX_HEAP_CHUNKS, MAX_SLOT_CHUNKS,
};
use hreg_proto::Limit;
use rustix::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};

/// Reads of a slot that raced a write before giving up on this path.
const TORN_RETRIES: usize = 64;

/// Domains per group of the domain table (allocated a group at a time).
const GROUP: usize = 128;

/// Where the daemon sends a domain's chunks from: the control socket.
pub(crate) trait ChunkSource {
    /// Read-only descriptors of `domain`'s slot chunks from `slots_from` on
    /// and heap chunks from `heap_from` on (maybe not all: ask again);
    /// DENIED or STALE from the daemon are errors of that status.
    fn map_domain(
        &self,
        domain: u16,
        slots_from: usize,
        heap_from: usize,
    ) -> Result<(Vec<OwnedFd>, Vec<OwnedFd>)>;
}

/// One domain's chunks, as far as this session has mapped them.
struct DomainMaps {
    slots: [OnceLock<OwnedMapping>; MAX_SLOT_CHUNKS],
    heap: Box<[OnceLock<OwnedMapping>]>,
    /// This uid may not map the domain: always go through the ring.
    denied: AtomicBool,
}

impl DomainMaps {
    fn new() -> DomainMaps {
        DomainMaps {
            slots: std::array::from_fn(|_| OnceLock::new()),
            heap: (0..MAX_HEAP_CHUNKS).map(|_| OnceLock::new()).collect(),
            denied: AtomicBool::new(false),
        }
    }

    #[inline]
    fn heap_chunk(&self, chunk: u16) -> Option<&Mapping> {
        self.heap.get(usize::from(chunk))?.get().map(|m| &**m)
    }

    fn mapped(list: &[OnceLock<OwnedMapping>]) -> usize {
        list.iter().take_while(|m| m.get().is_some()).count()
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
    #[inline]
    fn take(&mut self, len: usize) -> Option<&mut [u8]> {
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
}

impl Resolved {
    /// The caller's answer: `None` to ask the daemon instead.
    #[inline]
    pub(crate) fn answer(self) -> Option<Result<usize>> {
        match self {
            Resolved::Value(len) => Some(Ok(len)),
            Resolved::Ring => None,
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
            Resolved::Value(_) | Resolved::Ring => {
                Error::Protocol("a read that did not fail taken for one".into())
            }
        }
    }
}

/// Maps chunks of `domain` into `maps`: slot chunks from `slots.0` on,
/// heap chunks from `heap.0` on (a chunk already mapped is kept).
fn map_chunks(
    maps: &DomainMaps,
    domain: u16,
    slots: (usize, &[OwnedFd]),
    heap: (usize, &[OwnedFd]),
) -> Result<()> {
    for (k, fd) in slots.1.iter().enumerate() {
        let chunk = slots.0 + k;
        let place = maps
            .slots
            .get(chunk)
            .ok_or_else(|| Error::Protocol(format!("slot chunk {chunk} of domain {domain}")))?;
        if place.get().is_none() {
            let map = OwnedMapping::sealed(fd, Some(slot_chunk_len(chunk)), Access::ReadOnly)?;
            let _ = place.set(map);
        }
    }
    for (k, fd) in heap.1.iter().enumerate() {
        let chunk = heap.0 + k;
        let place = maps
            .heap
            .get(chunk)
            .ok_or_else(|| Error::Protocol(format!("heap chunk {chunk} of domain {domain}")))?;
        if place.get().is_none() {
            let _ = place.set(OwnedMapping::sealed(fd, None, Access::ReadOnly)?);
        }
    }
    Ok(())
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
pub(crate) struct Reads {
    instance: u16,
    header: OwnedMapping,
    /// Domains in groups, a group made when one of its domains is first
    /// read (2^14 domains; most sessions read two).
    groups: Box<[OnceLock<DomainGroup>]>,
    /// One chunk request at a time.
    fetching: Mutex<()>,
    ring_only: bool,
}

impl Reads {
    /// The read side of a registry whose header `header` (read-only) is,
    /// and whose handles carry `instance`.
    pub(crate) fn new(header: &OwnedFd, instance: u32) -> Result<Reads> {
        let header = OwnedMapping::sealed(header, None, Access::ReadOnly)?;
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
        Ok(Reads {
            instance: found,
            header,
            groups: (0..MAX_DOMAINS / GROUP).map(|_| OnceLock::new()).collect(),
            fetching: Mutex::new(()),
            ring_only: std::env::var_os("HREG_READ_PATH").is_some_and(|v| v == "ring"),
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

    /// Maps the chunks of `domain` this session does not have yet. False
    /// when the domain is not this uid's to map; an error for STALE (no such
    /// domain) or a broken reply.
    fn fetch(&self, source: &dyn ChunkSource, domain: u16) -> Result<bool> {
        let maps = self.maps_or_new(domain);
        if maps.denied.load(Ordering::Relaxed) {
            return Ok(false);
        }
        let _one = self.fetching.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            let slots_from = DomainMaps::mapped(&maps.slots);
            let heap_from = DomainMaps::mapped(&maps.heap);
            let (slots, heap) = match source.map_domain(domain, slots_from, heap_from) {
                Ok(chunks) => chunks,
                Err(Error::Denied) => {
                    maps.denied.store(true, Ordering::Relaxed);
                    return Ok(false);
                }
                Err(e) => return Err(e),
            };
            let more = !slots.is_empty() || !heap.is_empty();
            map_chunks(maps, domain, (slots_from, &slots), (heap_from, &heap))?;
            if !more {
                return Ok(true);
            }
        }
    }

    /// Maps the chunks WELCOME brought: `fds` holds each preloaded domain's
    /// slot chunks then heap chunks, in `preload`'s order.
    pub(crate) fn preload(&self, preload: &[Preload], fds: Vec<OwnedFd>) -> Result<()> {
        let used = preload.iter().filter(|p| p.domain != Preload::NONE);
        let expected: usize = used
            .clone()
            .map(|p| p.slots as usize + p.heap as usize)
            .sum();
        if fds.len() != expected {
            return Err(Error::Protocol(format!(
                "WELCOME came with {} chunk descriptors, expected {expected}",
                fds.len()
            )));
        }
        let mut fds = fds.into_iter();
        for p in used {
            let domain = u16::try_from(p.domain)
                .ok()
                .filter(|&d| usize::from(d) < MAX_DOMAINS)
                .ok_or_else(|| Error::Protocol(format!("WELCOME preloads domain {}", p.domain)))?;
            let slots: Vec<OwnedFd> = fds.by_ref().take(p.slots as usize).collect();
            let heap: Vec<OwnedFd> = fds.by_ref().take(p.heap as usize).collect();
            map_chunks(self.maps_or_new(domain), domain, (0, &slots), (0, &heap))?;
        }
        Ok(())
    }

    /// The slot `parts` names, mapping what is missing once; `Ok(None)`:
    /// not readable here.
    #[inline]
    fn slot<'a>(
        &'a self,
        source: &dyn ChunkSource,
        parts: &HandleParts,
    ) -> Result<Option<(&'a DomainMaps, SlotView<'a>)>> {
        if parts.instance != self.instance {
            return Err(Error::Stale);
        }
        let (chunk, at) = slot_place(parts.slot);
        for fetched in [false, true] {
            if let Some(maps) = self.maps(parts.domain) {
                if maps.denied.load(Ordering::Relaxed) {
                    return Ok(None);
                }
                if let Some(map) = maps.slots.get(chunk).and_then(OnceLock::get) {
                    let view = SlotView::new(map, at)
                        .ok_or_else(|| Error::Protocol("slot outside its chunk".into()))?;
                    return Ok(Some((maps, view)));
                }
            }
            if fetched || !self.fetch(source, parts.domain)? {
                break;
            }
        }
        // Mapped, and the domain has no chunk for this slot: no such object.
        match self.maps(parts.domain) {
            Some(maps) if !maps.denied.load(Ordering::Relaxed) => Err(Error::Stale),
            _ => Ok(None),
        }
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
                Read::Unmapped { .. } if !fetched => {
                    fetched = true;
                    if !matches!(self.fetch(source, parts.domain), Ok(true)) {
                        return Resolved::Ring;
                    }
                }
                Read::Unmapped { .. } => return Resolved::Ring,
                Read::Torn => std::hint::spin_loop(),
            }
        }
        Resolved::Ring
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
            match self.fetch(source, parts.domain) {
                Ok(true) => {}
                other => return other.map(|_| None),
            }
        }
        Ok(None)
    }

    /// A copy of the value kept in `view`'s slot.
    fn copy_inline(&self, view: &SlotView<'_>, parts: &HandleParts) -> Result<Option<Borrowed>> {
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
                // Moved to the heap meanwhile: the caller's ring fallback.
                Read::Buffer { .. } | Read::Unmapped { .. } => return Ok(None),
            }
        }
        Ok(None)
    }
}
