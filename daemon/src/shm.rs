//! A session's shared memory: a sealed memfd mapped into the daemon.
//!
//! This module owns the mapping's lifetime, which is what makes the
//! [`RingView`]s handed out over it valid. The memfd is sealed against growing
//! and shrinking before any client sees it, so a client cannot `ftruncate` it
//! and kill the daemon with SIGBUS. The daemon keeps no descriptor of it:
//! the mapping is enough, and a session costs one descriptor fewer.

use hreg_proto::ring::{Layout, RingView};
use rustix::fd::OwnedFd;
use rustix::fs::{MemfdFlags, SealFlags};
use rustix::mm::{MapFlags, ProtFlags};
use std::io;

/// The mapped memory of one session.
///
/// Invariant: `base` is a live `MAP_SHARED` read/write mapping of `len` bytes
/// of a sealed memfd, unmapped only in `Drop`. Views handed out by
/// [`Self::ring`] must not outlive this value; the session keeps it alive
/// for as long as any worker serves one of its rings.
pub struct SessionMemory {
    base: *mut u8,
    len: usize,
    layout: Layout,
}

// SAFETY: the mapping is process-wide; the pointer is only used for atomic
// accesses and bounds-checked copies through RingView.
unsafe impl Send for SessionMemory {}
// SAFETY: as above.
unsafe impl Sync for SessionMemory {}

impl SessionMemory {
    /// New session memory, and the memfd to send the client (the daemon
    /// needs no descriptor of its own once it is mapped).
    pub fn create(layout: Layout) -> io::Result<(SessionMemory, OwnedFd)> {
        let len = layout.total_size();
        let fd = rustix::fs::memfd_create(
            "hreg-session",
            MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING,
        )?;
        rustix::fs::ftruncate(&fd, len as u64)?;
        rustix::fs::fcntl_add_seals(&fd, SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL)?;
        // SAFETY: mapping a fresh memfd of exactly `len` bytes that cannot
        // shrink (sealed above); no Rust reference points into it.
        let base = unsafe {
            rustix::mm::mmap(
                std::ptr::null_mut(),
                len,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::SHARED,
                &fd,
                0,
            )?
        };
        Ok((
            SessionMemory {
                base: base.cast(),
                len,
                layout,
            },
            fd,
        ))
    }

    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// The view of ring `index`. The caller keeps `self` alive (through the
    /// session's `Arc`) for as long as it uses the view.
    pub fn ring(&self, index: u32) -> Option<RingView> {
        if index >= self.layout.max_rings {
            return None;
        }
        let offset = index as usize * self.layout.ring_stride();
        // SAFETY: index < max_rings, so [offset, offset + stride) is inside
        // the mapping (len = stride × max_rings) and page-aligned; the
        // mapping lives as long as `self`, which the caller keeps alive.
        Some(unsafe { RingView::new(self.base.add(offset), self.layout) })
    }

    /// Gives a closed ring's pages back to the system; the ring reads as
    /// zeroes afterwards.
    pub fn discard_ring(&self, index: u32) {
        if index >= self.layout.max_rings {
            return;
        }
        let stride = self.layout.ring_stride();
        // SAFETY: the range is one whole ring inside the mapping (index <
        // max_rings); MADV_REMOVE frees the memfd's pages behind it, which
        // then read as zeroes. No Rust reference points into ring memory.
        let _ = unsafe {
            rustix::mm::madvise(
                self.base.add(index as usize * stride).cast(),
                stride,
                rustix::mm::Advice::LinuxRemove,
            )
        };
    }
}

impl Drop for SessionMemory {
    fn drop(&mut self) {
        // SAFETY: `base`/`len` are the mapping made in `create`, unmapped
        // exactly once here; no view outlives `self` (type invariant).
        unsafe {
            let _ = rustix::mm::munmap(self.base.cast(), self.len);
        }
    }
}
