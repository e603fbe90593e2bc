//! A session: one attached client connection, its identity, its shared
//! memory, which of its rings are open, and the references it holds.
//!
//! A `Session` is shared (`Arc`) by the control thread and every worker that
//! serves one of its rings. When the last of them lets go, `Drop` releases
//! all of its references, so a session's references outlive every request it
//! can still make, and no help from the client is needed; unless the daemon
//! is stopping with its state kept ([`Session::keep`]): then the references
//! stay in the session's record for the next daemon.

use crate::doorbell::Doorbell;
use crate::peer::Peer;
use crate::session_memory::SessionMemory;
use hreg_proto::locks::lock;
use hreg_proto::pins::{self, PIN_ENTRIES};
use hreg_registry::{Holder, ReaderRegistration, Registry};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

pub struct Session {
    pub id: u64,
    pub peer: Peer,
    pub name: String,
    pub holder: Holder,
    pub memory: SessionMemory,
    /// The session as a reader whose borrowed references hold blocks back
    /// (registered while the session lives; longer when told to outlive
    /// it, see `crate::control_plane`'s close).
    pub reader: ReaderRegistration,
    registry: Arc<Registry>,
    open_rings: Mutex<Vec<bool>>,
    closed: AtomicBool,
    /// The daemon stops and keeps its state: the references stay.
    kept: AtomicBool,
    /// Rung when a worker closes the session, so the control thread drops
    /// the connection.
    control_bell: Arc<Doorbell>,
    /// Sessions whose references are not yet released, this one included
    /// until it drops.
    live: Arc<AtomicUsize>,
}

impl Session {
    /// A session of `holder` (new, or kept by an adopted state) attached
    /// by `peer`, with `memory`, told it may hold `pin_bytes` of values
    /// borrowed (its pins are honoured for that, and what its entries may
    /// hold of short values, of blocks they hold back).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        holder: Holder,
        peer: Peer,
        name: String,
        memory: SessionMemory,
        pin_bytes: u64,
        registry: Arc<Registry>,
        control_bell: Arc<Doorbell>,
        live: Arc<AtomicUsize>,
    ) -> Session {
        let rings = memory.layout().max_rings as usize;
        live.fetch_add(1, Ordering::AcqRel);
        let id = holder.id();
        let reader = registry.reader(
            &holder,
            memory.shared_mapping(),
            SessionMemory::pins_offset(memory.layout()),
            pins::honoured_bytes(pin_bytes, PIN_ENTRIES),
        );
        Session {
            live,
            id,
            peer,
            name,
            holder,
            reader,
            memory,
            registry,
            open_rings: Mutex::new(vec![false; rings]),
            closed: AtomicBool::new(false),
            kept: AtomicBool::new(false),
            control_bell,
        }
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Marks a free ring as open and returns its index; `None` at the cap.
    pub fn claim_ring(&self) -> Option<u32> {
        let mut open = lock(&self.open_rings);
        let index = open.iter().position(|in_use| !in_use)?;
        open[index] = true;
        Some(index as u32)
    }

    /// Frees a ring's index (its worker has stopped serving it) and, while
    /// the session lives on, its pages. A closed session's rings stay as they
    /// are: its client may still be reading them until it sees EOF.
    pub fn free_ring(&self, index: u32) {
        if !self.is_closed() {
            self.memory.discard_ring(index);
        }
        if let Some(slot) = lock(&self.open_rings).get_mut(index as usize) {
            *slot = false;
        }
    }

    pub fn open_ring_count(&self) -> usize {
        lock(&self.open_rings).iter().filter(|&&open| open).count()
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Keeps the session's references when it ends (the daemon stops and
    /// its state is kept for the next one).
    pub fn keep(&self) {
        self.kept.store(true, Ordering::Release);
    }

    /// Ends the session from any thread: workers stop serving it and the
    /// control thread drops its connection.
    pub fn close(&self) {
        if !self.closed.swap(true, Ordering::AcqRel) {
            self.control_bell.ring();
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        if !self.kept.load(Ordering::Acquire) {
            self.registry.release_all(&self.holder);
            // Its process still reads what it borrowed: the pin table stays
            // mapped (and its session slot taken, see `crate::control_plane`),
            // but no ring is served any more.
            if self.reader.outlives() {
                self.memory.discard_rings();
            }
        }
        // Counted out only now, so a session that no longer counts has
        // released everything it held.
        self.live.fetch_sub(1, Ordering::AcqRel);
    }
}
