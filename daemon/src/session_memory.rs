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
use hreg_proto::shm::{Mapping, ReadWrite};
use rustix::fd::OwnedFd;
use rustix::fs::SealFlags;
use std::io;
use std::sync::Arc;

/// The mapped memory of one session.
pub struct SessionMemory {
    map: Arc<Mapping<ReadWrite>>,
    layout: Layout,
}

impl SessionMemory {
    /// New session memory, and the memfd to send the client.
    pub fn create(layout: Layout) -> io::Result<(SessionMemory, OwnedFd)> {
        let len = SessionMemory::len(layout);
        let fd = hreg_registry::sealed_memfd("hreg-session", len as u64)?;
        let map = Mapping::map(&fd, len)?;
        Ok((
            SessionMemory {
                map: Arc::new(map),
                layout,
            },
            fd,
        ))
    }

    /// The memory of a session an earlier daemon made, brought back by its
    /// client (RESUME): checked to be sealed against resizing and of this
    /// layout's size, then mapped with every ring cleared (the session gets
    /// fresh rings); its pin table stays as the client left it.
    pub fn adopt(fd: &OwnedFd, layout: Layout) -> io::Result<SessionMemory> {
        let seals = rustix::fs::fcntl_get_seals(fd)?;
        if !seals.contains(SealFlags::SHRINK | SealFlags::GROW) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "the session memory is not sealed against resizing",
            ));
        }
        let len = SessionMemory::len(layout);
        if rustix::fs::fstat(fd)?.st_size != len as i64 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("the session memory is not {len} bytes (the ring layout changed?)"),
            ));
        }
        let memory = SessionMemory {
            map: Arc::new(Mapping::map(fd, len)?),
            layout,
        };
        memory.map.discard(0, SessionMemory::pins_offset(layout));
        Ok(memory)
    }

    /// Session memory that no client maps (rings served in process, for
    /// tests).
    pub fn anonymous(layout: Layout) -> io::Result<SessionMemory> {
        Ok(SessionMemory {
            map: Arc::new(Mapping::anonymous(SessionMemory::len(layout))?),
            layout,
        })
    }

    /// Bytes of a session's memory: its rings, its pin table, then its
    /// ready area (see `hreg_proto::ring`).
    pub fn len(layout: Layout) -> usize {
        hreg_proto::ring::session_len(&layout, PIN_ENTRIES)
    }

    /// Where worker `worker`'s ready word lies in a session's memory.
    pub fn ready_at(layout: Layout, worker: usize) -> usize {
        hreg_proto::ring::ready_word_offset(&layout, PIN_ENTRIES, worker)
    }

    /// Where the pin table lies: after the rings.
    pub fn pins_offset(layout: Layout) -> usize {
        pins::pins_offset(&layout)
    }

    /// The mapping, shared (the registry reads the pin table through it).
    pub fn shared_mapping(&self) -> Arc<Mapping<ReadWrite>> {
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
    pub fn mapping(&self) -> &Mapping<ReadWrite> {
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

    /// Gives back the pages of every ring (the session is gone; only its
    /// pin table is still read).
    pub fn discard_rings(&self) {
        self.map.discard(0, SessionMemory::pins_offset(self.layout));
    }
}
