//! The client's side of shared memory: mappings it owns (left alone in a
//! forked child), the session's memory (rings and pin table), values
//! borrowed from the registry's read-only chunks, waiting on a ring's
//! CQ-tail futex, and the fork hook that keeps a cheap "which process am I"
//! answer correct. The client's `unsafe` is here: registering the fork hook,
//! unmapping, and handing out a pinned value block as a slice.

#![allow(unsafe_code)]

use crate::error::{Error, Result};
use hreg_proto::pins::{self, ClientPins, Pin};
use hreg_proto::ring::{ClientRing, Layout, ReadyWord};
use hreg_proto::shm::{Access, Mapping, ReadOnly, ReadWrite};
use hreg_proto::sync::AtomicU32;
use rustix::fd::OwnedFd;
use rustix::thread::futex;
use std::mem::ManuallyDrop;
use std::sync::atomic::Ordering;
use std::sync::Once;
use std::time::Duration;

/// A mapping this process made; a forked child leaves it mapped (its
/// parent's threads may be reading it through copies the child inherited).
#[derive(Debug)]
pub(crate) struct OwnedMapping<A: Access> {
    map: ManuallyDrop<Mapping<A>>,
    /// The process that mapped it.
    owner: u32,
}

impl<A: Access> OwnedMapping<A> {
    /// Maps all of `fd`, of `len` bytes when given. Memory this client
    /// writes (the session's) must be a memfd the daemon sealed against
    /// shrinking and growing (checked: otherwise it could be shrunk under
    /// the mapping, and SIGBUS). Memory it only reads may also be a file of
    /// the daemon's state directory, which cannot be sealed: a read-only
    /// descriptor of a file only the daemon's uid can resize, and the
    /// daemon never resizes its chunks.
    pub(crate) fn sealed(fd: &OwnedFd, len: Option<usize>) -> Result<OwnedMapping<A>> {
        let sealed = rustix::fs::fcntl_get_seals(fd).is_ok_and(|seals| {
            seals.contains(rustix::fs::SealFlags::SHRINK | rustix::fs::SealFlags::GROW)
        });
        let read_only = rustix::fs::fcntl_getfl(fd)
            .is_ok_and(|flags| flags & rustix::fs::OFlags::RWMODE == rustix::fs::OFlags::RDONLY);
        if !(sealed || (!A::WRITABLE && read_only)) {
            return Err(Error::Protocol(
                "shared memory is not sealed against shrinking and growing".into(),
            ));
        }
        let size = usize::try_from(rustix::fs::fstat(fd)?.st_size)
            .map_err(|_| Error::Protocol("shared memory of a negative size".into()))?;
        if len.is_some_and(|len| len != size) || size == 0 {
            return Err(Error::Protocol(format!(
                "shared memory is {size} bytes, expected {}",
                len.unwrap_or(1)
            )));
        }
        Ok(OwnedMapping {
            map: ManuallyDrop::new(Mapping::map(fd, size)?),
            owner: current_pid(),
        })
    }
}

impl<A: Access> std::ops::Deref for OwnedMapping<A> {
    type Target = Mapping<A>;
    fn deref(&self) -> &Mapping<A> {
        &self.map
    }
}

impl<A: Access> Drop for OwnedMapping<A> {
    fn drop(&mut self) {
        if self.owner == current_pid() {
            // SAFETY: dropped once, here; nothing uses the mapping after
            // its owner is dropped (every view borrows it).
            unsafe { ManuallyDrop::drop(&mut self.map) };
        }
    }
}

/// The session's shared memory: its rings, then its pin table; mapped
/// read/write.
#[derive(Debug)]
pub(crate) struct SessionMapping {
    map: OwnedMapping<ReadWrite>,
    layout: Layout,
    pin_entries: usize,
    /// Bytes of values the session may hold borrowed at once.
    pin_bytes: u64,
}

impl SessionMapping {
    /// Maps `memfd`, the session memory WELCOME sent: `layout`'s rings
    /// `stride` bytes apart (the layout's own stride), then a pin table of
    /// `pin_entries` entries at `pins_offset` (where the protocol puts it),
    /// through which the session may hold `pin_bytes` bytes borrowed.
    pub(crate) fn new(
        memfd: &OwnedFd,
        layout: Layout,
        stride: u64,
        pins_offset: u64,
        pin_entries: u32,
        pin_bytes: u64,
    ) -> Result<SessionMapping> {
        layout
            .validate()
            .map_err(|e| Error::Protocol(format!("unusable ring layout: {e}")))?;
        if stride != layout.ring_stride() as u64 {
            return Err(Error::Protocol(format!(
                "ring stride {stride}, expected {} for this layout",
                layout.ring_stride()
            )));
        }
        let pin_entries = pin_entries as usize;
        if pins_offset != pins::pins_offset(&layout) as u64 || !(1..=1 << 16).contains(&pin_entries)
        {
            return Err(Error::Protocol(format!(
                "pin table of {pin_entries} entries at {pins_offset}, not where the protocol puts one"
            )));
        }
        // With its ready area, or without (a daemon that predates it).
        let len = hreg_proto::ring::session_len(&layout, pin_entries);
        let size = rustix::fs::fstat(memfd)
            .map(|stat| stat.st_size)
            .unwrap_or(0);
        let without = hreg_proto::ring::ready_area_offset(&layout, pin_entries);
        let len = if size == without as i64 { without } else { len };
        Ok(SessionMapping {
            map: OwnedMapping::sealed(memfd, Some(len))?,
            layout,
            pin_entries,
            pin_bytes,
        })
    }

    /// The client's side of ring `index`, or `None` when there is no such
    /// ring.
    pub(crate) fn ring(&self, index: u32) -> Option<ClientRing<'_>> {
        self.map.client_ring(self.layout, index)
    }

    /// The client's side of the ready word at `offset`, if it lies in the
    /// session's ready area.
    pub(crate) fn ready_word(&self, offset: usize) -> Option<ReadyWord<'_>> {
        let area = hreg_proto::ring::ready_area_offset(&self.layout, self.pin_entries);
        (offset >= area).then(|| self.map.client_ready(offset))?
    }

    /// The client's side of the session's pin table.
    pub(crate) fn pins(&self) -> ClientPins<'_> {
        ClientPins::new(
            &self.map,
            pins::pins_offset(&self.layout),
            self.pin_entries,
            self.pin_bytes,
        )
        .expect("checked in new")
    }
}

/// A value block of a heap chunk, pinned: `len` bytes at `start`, with the
/// pin that holds them (cleared when this drops).
///
/// Invariants (made by [`PinnedBlock::new`]'s caller): the block was in its
/// slot after `pin` was taken in the session's pin table, so the daemon does
/// not reuse it until the pin is cleared; and it lies in a chunk mapping of
/// the session's reads, which stays mapped as long as the session does.
/// Whoever holds one keeps the session (whose memory holds the pin table)
/// alive for longer than the block, and drops the block first
/// (`crate::borrow`).
pub(crate) struct PinnedBlock {
    start: std::ptr::NonNull<u8>,
    len: usize,
    /// Unpins on drop. Its lifetime is the session's (see the invariants),
    /// which the type cannot name.
    _pin: Pin<'static>,
}

// SAFETY: the block is read-only shared memory that nobody in this process
// writes and that stays mapped while the session lives (the invariants
// above); reading it from any thread is sound.
unsafe impl Send for PinnedBlock {}
// SAFETY: as for Send: shared access only reads.
unsafe impl Sync for PinnedBlock {}

impl PinnedBlock {
    /// The block at `offset .. offset + len` of `map`, or `None` when that
    /// range is not inside the mapping.
    ///
    /// # Safety
    /// `map` is a heap chunk mapping of the session whose pin table holds
    /// `pin`, and the block was found in its slot after `pin` was taken
    /// (`hreg_proto::pins`); the caller keeps that session alive for longer
    /// than the block it gets.
    pub(crate) unsafe fn new(
        map: &Mapping<ReadOnly>,
        offset: usize,
        len: usize,
        pin: Pin<'_>,
    ) -> Option<PinnedBlock> {
        let end = offset.checked_add(len)?;
        map.address_of(end)?;
        let start = std::ptr::NonNull::new(map.address_of(offset)?.cast_mut())?;
        // SAFETY: the pin borrows the session's memory, which the caller
        // keeps mapped for longer than this block (the contract above);
        // only the lifetime changes.
        let pin = unsafe { std::mem::transmute::<Pin<'_>, Pin<'static>>(pin) };
        Some(PinnedBlock {
            start,
            len,
            _pin: pin,
        })
    }

    /// The bytes.
    ///
    /// # Safety
    /// The session the block belongs to is alive, and its pin not cleared,
    /// for as long as the returned slice is used.
    pub(crate) unsafe fn bytes(&self) -> &[u8] {
        // SAFETY: `start .. start + len` lies inside the mapping (both ends
        // checked in new), which is mapped while the session lives; the bytes
        // do not change while the pin holds (the caller's contract), and no
        // one in this process writes a read-only mapping.
        unsafe { std::slice::from_raw_parts(self.start.as_ptr(), self.len) }
    }
}

/// How a futex wait ended.
pub(crate) enum WaitEnded {
    /// Woken, interrupted, or the word no longer held the value.
    Changed,
    TimedOut,
}

/// Sleeps while the ring's CQ tail word (`word`) still equals `seen`, at most
/// `timeout`. A shared futex: the daemon wakes it from another process.
pub(crate) fn futex_wait(word: &AtomicU32, seen: u32, timeout: Duration) -> Result<WaitEnded> {
    let ts = rustix::time::Timespec::try_from(timeout)
        .map_err(|_| Error::Io(std::io::Error::other("futex timeout out of range")))?;
    match futex::wait(word, futex::Flags::empty(), seen, Some(&ts)) {
        Ok(()) => Ok(WaitEnded::Changed),
        Err(rustix::io::Errno::AGAIN) | Err(rustix::io::Errno::INTR) => Ok(WaitEnded::Changed),
        Err(rustix::io::Errno::TIMEDOUT) => Ok(WaitEnded::TimedOut),
        Err(e) => Err(e.into()),
    }
}

/// Our process id, cached; 0 means "not known yet". The fork hook resets
/// it in the child so the next call asks the kernel again.
static PID: AtomicU32 = AtomicU32::new(0);
static FORK_HOOK: Once = Once::new();

extern "C" fn forget_pid_in_child() {
    PID.store(0, Ordering::Relaxed);
}

/// Installs the fork hook once. Called before any client exists, so no
/// cached pid can outlive a fork unnoticed.
pub(crate) fn install_fork_hook() {
    FORK_HOOK.call_once(|| {
        // SAFETY: registers a plain function that only does an atomic store,
        // which is async-signal-safe and valid in a just-forked child.
        let rc = unsafe { libc::pthread_atfork(None, None, Some(forget_pid_in_child)) };
        if rc != 0 {
            // Without the hook, never trust the cache: u32::MAX marks "ask
            // the kernel every time".
            PID.store(u32::MAX, Ordering::Relaxed);
        }
    });
}

/// The current process id, cheaply (one atomic load after the first call).
#[inline]
pub(crate) fn current_pid() -> u32 {
    match PID.load(Ordering::Relaxed) {
        0 => {
            let pid = rustix::process::getpid().as_raw_nonzero().get() as u32;
            // Keep "ask every time" if the hook could not be installed.
            let _ = PID.compare_exchange(0, pid, Ordering::Relaxed, Ordering::Relaxed);
            pid
        }
        u32::MAX => rustix::process::getpid().as_raw_nonzero().get() as u32,
        pid => pid,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn pid_is_ours() {
        install_fork_hook();
        let pid = rustix::process::getpid().as_raw_nonzero().get() as u32;
        assert_eq!(current_pid(), pid);
        assert_eq!(current_pid(), pid);
    }

    #[test]
    fn maps_a_sealed_memfd_of_the_right_size_only() {
        let layout = Layout {
            entries: 4,
            data_size: 64,
            max_rings: 2,
        };
        let stride = layout.ring_stride() as u64;
        let len = pins::session_len(&layout, 8) as u64;
        let at = pins::pins_offset(&layout) as u64;
        let fd = sealed_memfd(len);
        let map = SessionMapping::new(&fd, layout, stride, at, 8, 1 << 20).unwrap();
        let ring = map.ring(1).unwrap();
        assert!(map.ring(2).is_none());
        assert!(ring.copy_to_data(0, b"hello"));
        let mut out = [0u8; 5];
        assert!(map.ring(1).unwrap().copy_from_data(0, &mut out));
        assert_eq!(&out, b"hello");
        drop(map);

        assert!(matches!(
            SessionMapping::new(&sealed_memfd(stride), layout, stride, at, 8, 1 << 20),
            Err(Error::Protocol(_))
        ));
        assert!(matches!(
            SessionMapping::new(&fd, layout, 100, at, 8, 1 << 20),
            Err(Error::Protocol(_))
        ));
        assert!(matches!(
            SessionMapping::new(&fd, layout, stride, at + 64, 8, 1 << 20),
            Err(Error::Protocol(_))
        ));
        // Right size, but it could be shrunk under the mapping.
        let unsealed =
            rustix::fs::memfd_create("hreg-test", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
        rustix::fs::ftruncate(&unsealed, len).unwrap();
        assert!(matches!(
            SessionMapping::new(&unsealed, layout, stride, at, 8, 1 << 20),
            Err(Error::Protocol(_))
        ));
    }

    /// A memfd of `len` bytes, sealed as the daemon seals session memory.
    pub(crate) fn sealed_memfd(len: u64) -> OwnedFd {
        use rustix::fs::{MemfdFlags, SealFlags};
        let fd =
            rustix::fs::memfd_create("hreg-test", MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)
                .unwrap();
        rustix::fs::ftruncate(&fd, len).unwrap();
        rustix::fs::fcntl_add_seals(&fd, SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL)
            .unwrap();
        fd
    }

    #[test]
    fn futex_wait_times_out_or_sees_change() {
        let word = AtomicU32::new(5);
        assert!(matches!(
            futex_wait(&word, 4, Duration::from_millis(1)),
            Ok(WaitEnded::Changed)
        ));
        assert!(matches!(
            futex_wait(&word, 5, Duration::from_millis(1)),
            Ok(WaitEnded::TimedOut)
        ));
    }
}
