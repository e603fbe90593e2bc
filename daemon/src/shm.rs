//! A session's shared memory: a sealed memfd mapped into the daemon.
//!
//! This module owns the mapping's lifetime, which is what makes the
//! [`RingView`]s handed out over it valid. The memfd is sealed against growing
//! and shrinking before any client sees it, so a client cannot `ftruncate` it
//! and kill the daemon with SIGBUS.

use hreg_proto::ring::{Layout, RingView};
use rustix::fd::{AsFd, BorrowedFd, OwnedFd};
use rustix::fs::{FallocateFlags, MemfdFlags, SealFlags};
use rustix::mm::{MapFlags, ProtFlags};
use std::io;

/// The mapped memory of one session.
///
/// Invariant: `base` is a live `MAP_SHARED` read/write mapping of `len` bytes
/// of `fd`, unmapped only in `Drop`. Views handed out by [`Self::ring`] must
/// not outlive this value; the session keeps it alive for as long as any
/// worker serves one of its rings.
pub struct SessionMemory {
    fd: OwnedFd,
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
    pub fn create(layout: Layout) -> io::Result<SessionMemory> {
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
        Ok(SessionMemory {
            fd,
            base: base.cast(),
            len,
            layout,
        })
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
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
        let stride = self.layout.ring_stride() as u64;
        let _ = rustix::fs::fallocate(
            &self.fd,
            FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE,
            u64::from(index) * stride,
            stride,
        );
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
