//! The descriptors the registry keeps its read side in ("chunks"): made by
//! its [`Store`] (memfds sealed against growing and shrinking, or files of
//! a state directory), owned by the daemon's uid with mode 0600, mapped
//! read/write in the daemon, and handed to clients only as read-only
//! reopens (so a client of another uid can neither map them writable,
//! `mprotect` them, `write()` or `ftruncate` them, nor reopen them
//! read/write through `/proc`).
//!
//! A chunk is never resized and never unmapped while the registry lives.
//! Its pages are allocated (`fallocate`) before the daemon writes them, so
//! running out of memory is an error the registry reports (QUOTA), never a
//! SIGBUS; free pages are given back (punched) again (`crate::heap`).

use crate::store::Store;
use hreg_proto::shm::{Mapping, ReadWrite};
use rustix::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use rustix::fs::{FallocateFlags, Mode, OFlags};
use std::io;
use std::sync::Arc;

/// One descriptor of the registry's state and the daemon's mapping of it.
#[derive(Debug)]
pub struct Chunk {
    fd: OwnedFd,
    map: Arc<Mapping<ReadWrite>>,
    /// The read-only reopen clients get, made once: every client is sent
    /// the same open file (read-only, so sharing it shares nothing a client
    /// could change).
    read_only: std::sync::OnceLock<OwnedFd>,
}

impl Chunk {
    /// A new chunk of `len` bytes, which `store` makes (and keeps, if it
    /// keeps state) under `name`. Nothing of it is allocated yet.
    pub fn create(store: &dyn Store, name: &str, len: usize) -> io::Result<Chunk> {
        Chunk::adopt(store.create(name, len as u64)?)
    }

    /// The chunk in `fd` (made by a [`Store`], in this process or by an
    /// earlier daemon), mapped read/write: fails for an empty or
    /// read-only descriptor.
    pub fn adopt(fd: OwnedFd) -> io::Result<Chunk> {
        let len = usize::try_from(rustix::fs::fstat(&fd)?.st_size)
            .ok()
            .filter(|&len| len > 0)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "empty chunk"))?;
        let map = Arc::new(Mapping::<ReadWrite>::map(&fd, len)?);
        Ok(Chunk {
            fd,
            map,
            read_only: std::sync::OnceLock::new(),
        })
    }

    /// Bytes of the chunk.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether the chunk is empty (never: chunks have at least a page).
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// The daemon's mapping.
    pub fn mapping(&self) -> &Arc<Mapping<ReadWrite>> {
        &self.map
    }

    /// The memfd itself (to keep it across a restart).
    pub fn fd(&self) -> &OwnedFd {
        &self.fd
    }

    /// A read-only descriptor of the chunk for a client: a reopen of the
    /// descriptor through `/proc/self/fd` with `O_RDONLY`, made on first
    /// need and kept.
    pub fn read_only(&self) -> io::Result<BorrowedFd<'_>> {
        if let Some(fd) = self.read_only.get() {
            return Ok(fd.as_fd());
        }
        let path = format!("/proc/self/fd/{}", self.fd.as_fd().as_raw_fd());
        let fd = rustix::fs::open(
            path.as_str(),
            OFlags::RDONLY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        // Another thread may have made one meanwhile: either serves.
        Ok(self.read_only.get_or_init(|| fd).as_fd())
    }

    /// Allocates the pages of `offset .. offset + len` before the daemon
    /// writes them.
    pub fn allocate(&self, offset: u64, len: u64) -> io::Result<()> {
        Ok(rustix::fs::fallocate(
            &self.fd,
            FallocateFlags::empty(),
            offset,
            len,
        )?)
    }

    /// The ranges of the chunk that hold data (pages written since they
    /// were last given back), in order; the rest reads as holes: pages
    /// never written, or allocated and untouched, which no reader can have
    /// been given. When the kernel cannot say, everything from there on
    /// counts as data.
    pub fn data_extents(&self) -> Vec<(u64, u64)> {
        use rustix::fs::{seek, SeekFrom};
        let len = self.map.len() as u64;
        let mut extents = Vec::new();
        let mut at = 0;
        while at < len {
            let data = match seek(&self.fd, SeekFrom::Data(at)) {
                Ok(data) => data.min(len),
                // No data from here on.
                Err(rustix::io::Errno::NXIO) => break,
                Err(_) => at,
            };
            let end = seek(&self.fd, SeekFrom::Hole(data)).map_or(len, |end| end.min(len));
            if end <= data {
                extents.push((data, len));
                break;
            }
            extents.push((data, end));
            at = end;
        }
        extents
    }

    /// Gives the pages of `offset .. offset + len` back (they read as zeroes
    /// until allocated again).
    pub fn punch(&self, offset: u64, len: u64) {
        let _ = rustix::fs::fallocate(
            &self.fd,
            FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE,
            offset,
            len,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_are_sealed_private_and_read_only_for_clients() {
        let chunk = Chunk::create(&crate::MemoryStore, "d0-s0", 1 << 16).unwrap();
        assert_eq!(chunk.len(), 1 << 16);
        chunk.allocate(0, 4096).unwrap();
        assert!(chunk.mapping().store(100, b"bytes"));
        let stat = rustix::fs::fstat(chunk.fd()).unwrap();
        assert_eq!(stat.st_mode & 0o777, 0o600);
        assert!(rustix::fs::ftruncate(chunk.fd(), 1).is_err(), "sealed");
        let ro = chunk.read_only().unwrap();
        assert!(rustix::io::write(ro, b"x").is_err());
        assert!(Mapping::<ReadWrite>::map(ro, 1 << 16).is_err());
        let view = Mapping::<hreg_proto::shm::ReadOnly>::map(ro, 1 << 16).unwrap();
        let mut out = [0u8; 5];
        assert!(view.load(100, &mut out));
        assert_eq!(&out, b"bytes");
        chunk.punch(0, 4096);
        assert!(view.load(100, &mut out));
        assert_eq!(out, [0; 5], "punched out");
        // Reading the punched page through a mapping brought it back.
        assert_eq!(chunk.data_extents(), [(0, 4096)]);
        assert!(
            Chunk::adopt(chunk.read_only().unwrap().try_clone_to_owned().unwrap()).is_err(),
            "adopting needs a writable descriptor"
        );
    }

    #[test]
    fn data_extents_are_the_pages_written() {
        let chunk = Chunk::create(&crate::MemoryStore, "d0-h0", 1 << 16).unwrap();
        assert!(chunk.data_extents().is_empty());
        chunk.allocate(8192, 3 * 4096).unwrap();
        assert!(chunk.data_extents().is_empty(), "allocated, never written");
        assert!(chunk.mapping().store(12288 + 5, b"x"));
        assert!(chunk.mapping().store(40960, b"y"));
        assert!(chunk.mapping().store(45056, b"z"));
        assert_eq!(chunk.data_extents(), [(12288, 16384), (40960, 49152)]);
        chunk.punch(40960, 4096);
        assert_eq!(chunk.data_extents(), [(12288, 16384), (45056, 49152)]);
    }
}
