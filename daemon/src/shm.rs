//! A session's shared memory: a sealed memfd holding its rings and its pin
//! table (the borrowed references it holds, see `hreg_proto::pins`),
//! mapped into the daemon.
//!
//! The memfd is sealed against growing and shrinking before any client sees
//! it, so a client cannot `ftruncate` it and kill the daemon with SIGBUS.
//! The daemon keeps no descriptor of it: the mapping is enough, and a
//! session costs one descriptor fewer. The mapping is shared (`Arc`) by the
//! session and every worker that serves one of its rings, so a ring's view
//! can never outlive it.

use hreg_proto::pins::{self, PIN_ENTRIES};
use hreg_proto::ring::{Layout, ServerRing, SharedRing};
use hreg_proto::shm::{Access, Mapping};
use rustix::fd::OwnedFd;
use rustix::fs::{MemfdFlags, SealFlags};
use std::io;
use std::sync::Arc;

/// The mapped memory of one session.
pub struct SessionMemory {
    map: Arc<Mapping>,
    layout: Layout,
}

impl SessionMemory {
    /// New session memory, and the memfd to send the client.
    pub fn create(layout: Layout) -> io::Result<(SessionMemory, OwnedFd)> {
        let len = SessionMemory::len(layout);
        let fd = rustix::fs::memfd_create(
            "hreg-session",
            MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING,
        )?;
        rustix::fs::ftruncate(&fd, len as u64)?;
        rustix::fs::fcntl_add_seals(&fd, SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL)?;
        let map = Mapping::map(&fd, len, Access::ReadWrite)?;
        Ok((
            SessionMemory {
                map: Arc::new(map),
                layout,
            },
            fd,
        ))
    }

    /// Session memory that no client maps (rings served in process, for
    /// tests).
    pub fn anonymous(layout: Layout) -> io::Result<SessionMemory> {
        Ok(SessionMemory {
            map: Arc::new(Mapping::anonymous(SessionMemory::len(layout))?),
            layout,
        })
    }

    /// Bytes of a session's memory: its rings, then its pin table.
    pub fn len(layout: Layout) -> usize {
        pins::session_len(&layout, PIN_ENTRIES)
    }

    /// Where the pin table lies: after the rings.
    pub fn pins_offset(layout: Layout) -> usize {
        pins::pins_offset(&layout)
    }

    /// The mapping, shared (the registry reads the pin table through it).
    pub fn shared_mapping(&self) -> Arc<Mapping> {
        Arc::clone(&self.map)
    }

    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// Ring `index` for a worker to keep: it holds the mapping alive.
    pub fn shared_ring(&self, index: u32) -> Option<SharedRing> {
        SharedRing::new(Arc::clone(&self.map), self.layout, index)
    }

    /// The daemon's view of ring `index`.
    pub fn ring(&self, index: u32) -> Option<ServerRing<'_>> {
        self.map.server_ring(self.layout, index)
    }

    /// The mapping itself (tests play the client's side over it).
    pub fn mapping(&self) -> &Mapping {
        &self.map
    }

    /// Gives a closed ring's pages back to the system; the ring reads as
    /// zeroes afterwards.
    pub fn discard_ring(&self, index: u32) {
        if index < self.layout.max_rings {
            let stride = self.layout.ring_stride();
            self.map.discard(index as usize * stride, stride);
        }
    }
}
