//! A mapping of shared memory: the one place where a memfd (or anonymous
//! shared memory) is mapped and unmapped, for the daemon and the clients
//! alike.
//!
//! A [`Mapping`] owns its address range for its whole life, and everything
//! that reads or writes the memory borrows the mapping ([`crate::ring`]'s
//! views), so safe code cannot touch memory that was unmapped. The bytes
//! are shared with another process that may write them at any moment, so
//! they are only ever accessed through atomics or
//! [`crate::atomic_copy`]; no Rust reference to plain bytes points into a
//! mapping.
//!
//! Who may write is in the type: a `Mapping<ReadOnly>` (a client's view of
//! the registry's chunks) can only be loaded from; stores, discards and
//! writable words exist only on a `Mapping<ReadWrite>` (the daemon's
//! mappings, a client's session memory). Inside this crate the read side
//! gets words as [`LoadOnly`], so a reader's code cannot store either.
//!
//! Under `--cfg hreg_loom` a mapping is a set of loom atomics made for one
//! ring (`Mapping::for_ring`), so the ring protocol runs unchanged in
//! the model; it takes the same access parameter.

#![allow(unsafe_code)]

use crate::sync::{AtomicU32, AtomicU64, Ordering};
use std::marker::PhantomData;

mod sealed {
    pub trait Sealed {}
}

/// What this process may do with a mapping: [`ReadOnly`] or [`ReadWrite`]
/// (sealed: there is no third).
pub trait Access: sealed::Sealed + Send + Sync + 'static {
    /// Whether the memory is mapped writable.
    const WRITABLE: bool;
}

/// Loads only: a client's view of the registry's chunks and header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadOnly {}

/// Loads and stores: the daemon's mappings, and a client's session memory
/// (its rings and pin table).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadWrite {}

impl sealed::Sealed for ReadOnly {}
impl sealed::Sealed for ReadWrite {}
impl Access for ReadOnly {
    const WRITABLE: bool = false;
}
impl Access for ReadWrite {
    const WRITABLE: bool = true;
}

/// A `u64` of shared memory that this side may only load (the read side's
/// view of a word: no `store`, no read-modify-write).
#[repr(transparent)]
pub struct LoadOnly(AtomicU64);

impl LoadOnly {
    /// The word's value.
    #[inline(always)]
    pub fn load(&self, order: Ordering) -> u64 {
        self.0.load(order)
    }
}

/// The load-only view of eight words.
#[inline(always)]
fn load_only(words: &[AtomicU64; 8]) -> &[LoadOnly; 8] {
    // SAFETY: LoadOnly is repr(transparent) over AtomicU64, so the arrays
    // have one layout; the lifetime is kept.
    unsafe { &*(words as *const [AtomicU64; 8]).cast::<[LoadOnly; 8]>() }
}

#[cfg(hreg_loom)]
pub use model::Mapping;
#[cfg(not(hreg_loom))]
pub use real::Mapping;

#[cfg(not(hreg_loom))]
mod real {
    use super::*;
    use rustix::fd::AsFd;
    use rustix::mm::{MapFlags, ProtFlags};
    use std::io;

    /// A `MAP_SHARED` mapping of `len` bytes, readable, and writable when
    /// `A` is [`ReadWrite`].
    ///
    /// Invariant: `base .. base + len` is mapped (with the protection `A`
    /// names) from creation until `Drop`, and page-aligned. Whoever made it
    /// keeps the memory backed for that long (a memfd sealed against
    /// shrinking, or anonymous memory).
    #[derive(Debug)]
    pub struct Mapping<A: Access> {
        base: *mut u8,
        len: usize,
        access: PhantomData<A>,
    }

    // SAFETY: the mapping is plain shared memory, only accessed through
    // atomics and atomic copies; the pointer may move between threads and be
    // shared by them.
    unsafe impl<A: Access> Send for Mapping<A> {}
    // SAFETY: as above.
    unsafe impl<A: Access> Sync for Mapping<A> {}

    impl<A: Access> Mapping<A> {
        /// Maps `len` bytes of `fd` from offset 0, `MAP_SHARED`, with the
        /// protection `A` names. The caller has checked that the file holds
        /// `len` bytes and cannot shrink (sealed), or pages past its end
        /// would raise SIGBUS.
        pub fn map(fd: impl AsFd, len: usize) -> io::Result<Mapping<A>> {
            if len == 0 {
                return Err(io::Error::new(io::ErrorKind::InvalidInput, "empty mapping"));
            }
            let prot = if A::WRITABLE {
                ProtFlags::READ | ProtFlags::WRITE
            } else {
                ProtFlags::READ
            };
            // SAFETY: a fresh mapping placed by the kernel (null hint); no
            // Rust reference points into it.
            let base = unsafe {
                rustix::mm::mmap(std::ptr::null_mut(), len, prot, MapFlags::SHARED, fd, 0)?
            };
            Ok(Mapping {
                base: base.cast(),
                len,
                access: PhantomData,
            })
        }

        /// Bytes mapped.
        pub fn len(&self) -> usize {
            self.len
        }

        /// Whether no bytes are mapped; never true, as a mapping is made
        /// with at least one.
        pub fn is_empty(&self) -> bool {
            self.len == 0
        }

        /// Whether `offset .. offset + len` lies inside the mapping.
        #[inline]
        pub(crate) fn holds(&self, offset: usize, len: usize) -> bool {
            offset.checked_add(len).is_some_and(|end| end <= self.len)
        }

        /// The eight words of the 64-byte entry at `offset` (inside the
        /// mapping, 64-byte aligned: checked), to load.
        #[inline]
        pub(crate) fn entry_loads(&self, offset: usize) -> &[LoadOnly; 8] {
            assert!(self.holds(offset, 64) && offset.is_multiple_of(64));
            // SAFETY: inside the mapping and aligned (asserted), mapped while
            // `self` is borrowed; [AtomicU64; 8] has the layout of [u64; 8].
            load_only(unsafe { &*self.base.add(offset).cast::<[AtomicU64; 8]>() })
        }

        /// Copies `out.len()` bytes from `offset`; false (nothing copied)
        /// when the range is not inside the mapping.
        #[inline]
        pub fn load(&self, offset: usize, out: &mut [u8]) -> bool {
            if !self.holds(offset, out.len()) {
                return false;
            }
            // SAFETY: inside the mapping (checked), mapped while borrowed.
            unsafe { crate::atomic_copy::load(self.base.add(offset), out) };
            true
        }

        /// The address of `offset`, for zero-copy readers that hand out a
        /// pointer (the C API's borrowed values).
        #[inline]
        pub fn address_of(&self, offset: usize) -> Option<*const u8> {
            // SAFETY: in bounds (checked), so the add stays in the mapping.
            self.holds(offset, 0)
                .then(|| unsafe { self.base.add(offset).cast_const() })
        }
    }

    impl Mapping<ReadWrite> {
        /// `len` bytes of zeroed anonymous shared memory (tests, and rings
        /// served in process).
        pub fn anonymous(len: usize) -> io::Result<Mapping<ReadWrite>> {
            // SAFETY: a fresh anonymous mapping placed by the kernel.
            let base = unsafe {
                rustix::mm::mmap_anonymous(
                    std::ptr::null_mut(),
                    len.max(1),
                    ProtFlags::READ | ProtFlags::WRITE,
                    MapFlags::SHARED,
                )?
            };
            Ok(Mapping {
                base: base.cast(),
                len: len.max(1),
                access: PhantomData,
            })
        }

        /// Gives the pages of `offset .. offset + len` back to the system
        /// (they read as zeroes afterwards). False when the range is not
        /// page-aligned and inside the mapping.
        pub fn discard(&self, offset: usize, len: usize) -> bool {
            if !self.holds(offset, len) || !offset.is_multiple_of(4096) {
                return false;
            }
            // SAFETY: the range is inside the mapping (checked); MADV_REMOVE
            // frees the file's pages behind it; no Rust reference points into
            // shared memory.
            unsafe {
                rustix::mm::madvise(
                    self.base.add(offset).cast(),
                    len,
                    rustix::mm::Advice::LinuxRemove,
                )
                .is_ok()
            }
        }

        /// The `u32` at `offset` (inside the mapping, 4-byte aligned:
        /// checked).
        #[inline]
        pub(crate) fn u32_at(&self, offset: usize) -> &AtomicU32 {
            assert!(self.holds(offset, 4) && offset.is_multiple_of(4));
            // SAFETY: inside the mapping and aligned (asserted), which stays
            // mapped while `self` is borrowed; AtomicU32 has the layout of a
            // u32 and tolerates writers in other processes.
            unsafe { &*self.base.add(offset).cast::<AtomicU32>() }
        }

        /// The `u64` at `offset` (inside the mapping, 8-byte aligned:
        /// checked).
        #[inline]
        pub(crate) fn u64_at(&self, offset: usize) -> &AtomicU64 {
            assert!(self.holds(offset, 8) && offset.is_multiple_of(8));
            // SAFETY: inside the mapping and aligned (asserted), mapped while
            // `self` is borrowed; AtomicU64 has the layout of a u64 and
            // tolerates writers in other processes.
            unsafe { &*self.base.add(offset).cast::<AtomicU64>() }
        }

        /// The eight words of the 64-byte entry at `offset` (inside the
        /// mapping, 64-byte aligned: checked), to load and store.
        #[inline]
        pub(crate) fn entry_at(&self, offset: usize) -> &[AtomicU64; 8] {
            assert!(self.holds(offset, 64) && offset.is_multiple_of(64));
            // SAFETY: inside the mapping and aligned (asserted), mapped while
            // `self` is borrowed; [AtomicU64; 8] has the layout of [u64; 8].
            unsafe { &*self.base.add(offset).cast::<[AtomicU64; 8]>() }
        }

        /// The word at `offset`, if it lies inside the mapping and `offset`
        /// is 8-byte aligned: for records that only the daemon writes
        /// (a session's reference table, a domain's write journal).
        #[inline]
        pub fn word(&self, offset: usize) -> Option<&AtomicU64> {
            (self.holds(offset, 8) && offset.is_multiple_of(8)).then(|| self.u64_at(offset))
        }

        /// Copies `bytes` to `offset`; false (nothing copied) when the
        /// range is not inside the mapping.
        #[inline]
        pub fn store(&self, offset: usize, bytes: &[u8]) -> bool {
            if !self.holds(offset, bytes.len()) {
                return false;
            }
            // SAFETY: inside a writable mapping (checked); no Rust reference
            // points into it.
            unsafe { crate::atomic_copy::store(self.base.add(offset), bytes) };
            true
        }
    }

    impl<A: Access> Drop for Mapping<A> {
        fn drop(&mut self) {
            // SAFETY: `base`/`len` are exactly what mmap returned, unmapped
            // once; every view borrows `self`, so none outlives this.
            let _ = unsafe { rustix::mm::munmap(self.base.cast(), self.len) };
        }
    }
}

#[cfg(hreg_loom)]
mod model {
    use super::*;
    use crate::ring::Layout;

    /// Words of shared memory, as loom atomics: the six header words of a
    /// ring and its entries ([`Mapping::for_ring`]), or plain 8-byte words
    /// from offset 0 ([`Mapping::words`]).
    pub struct Mapping<A: Access> {
        header: Vec<AtomicU32>,
        entries: Vec<AtomicU64>,
        entries_at: usize,
        /// One ready word (see `crate::ring::ReadyMask`), right after the
        /// ring.
        ready: AtomicU64,
        ready_at: usize,
        len: usize,
        access: PhantomData<A>,
    }

    impl Mapping<ReadWrite> {
        /// Zeroed words for one ring of `layout` (no data area), as ring 0
        /// of a mapping.
        pub fn for_ring(layout: Layout) -> Mapping<ReadWrite> {
            let header = (0..crate::ring::HEADER_WORDS)
                .map(|_| AtomicU32::new(0))
                .collect();
            let words = 2 * layout.entries as usize * crate::entry::ENTRY_SIZE / 8;
            Mapping {
                header,
                entries: (0..words).map(|_| AtomicU64::new(0)).collect(),
                entries_at: crate::ring::HEADER_SIZE,
                ready: AtomicU64::new(0),
                ready_at: layout.ring_stride(),
                len: layout.ring_stride() + 64,
                access: PhantomData,
            }
        }

        /// `len` bytes (a multiple of 64) of zeroed 8-byte words.
        pub fn words(len: usize) -> Mapping<ReadWrite> {
            Mapping {
                header: Vec::new(),
                entries: (0..len / 8).map(|_| AtomicU64::new(0)).collect(),
                entries_at: 0,
                ready: AtomicU64::new(0),
                ready_at: usize::MAX,
                len,
                access: PhantomData,
            }
        }

        pub(crate) fn u32_at(&self, offset: usize) -> &AtomicU32 {
            &self.header[offset / 64]
        }

        /// The ready word (the one `u64` the model holds outside entries).
        pub(crate) fn u64_at(&self, offset: usize) -> &AtomicU64 {
            assert_eq!(offset, self.ready_at, "the model's one ready word");
            &self.ready
        }

        pub(crate) fn entry_at(&self, offset: usize) -> &[AtomicU64; 8] {
            let first = (offset - self.entries_at) / 8;
            self.entries[first..first + 8]
                .try_into()
                .expect("eight words")
        }

        /// Writes whole words, as [`Mapping::load`] reads them.
        pub fn store(&self, offset: usize, bytes: &[u8]) -> bool {
            if !self.holds(offset, bytes.len()) {
                return false;
            }
            for (i, chunk) in bytes.chunks(8).enumerate() {
                let mut word = [0u8; 8];
                word[..chunk.len()].copy_from_slice(chunk);
                self.entries[(offset - self.entries_at) / 8 + i]
                    .store(u64::from_le_bytes(word), Ordering::Relaxed);
            }
            true
        }
    }

    impl<A: Access> Mapping<A> {
        /// Bytes the model holds, as a real mapping would.
        pub fn len(&self) -> usize {
            self.len
        }

        pub(crate) fn holds(&self, offset: usize, len: usize) -> bool {
            offset.checked_add(len).is_some_and(|end| end <= self.len)
        }

        pub(crate) fn entry_loads(&self, offset: usize) -> &[LoadOnly; 8] {
            let first = (offset - self.entries_at) / 8;
            load_only(
                self.entries[first..first + 8]
                    .try_into()
                    .expect("eight words"),
            )
        }

        /// Copies whole words (the model's values are multiples of 8 bytes
        /// at 8-byte offsets).
        pub fn load(&self, offset: usize, out: &mut [u8]) -> bool {
            if !self.holds(offset, out.len()) {
                return false;
            }
            for (i, chunk) in out.chunks_mut(8).enumerate() {
                let word = self.entries[(offset - self.entries_at) / 8 + i].load(Ordering::Relaxed);
                chunk.copy_from_slice(&word.to_le_bytes()[..chunk.len()]);
            }
            true
        }
    }
}
