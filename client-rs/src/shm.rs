//! The client's side of shared memory: the session's mapping (left alone
//! in a forked child), waiting on a ring's CQ-tail futex, and the fork hook
//! that keeps a cheap "which process am I" answer correct. The only
//! `unsafe` of the client is here: registering the fork hook.

#![allow(unsafe_code)]

use crate::error::{Error, Result};
use hreg_proto::ring::{ClientRing, Layout};
use hreg_proto::shm::{Access, Mapping};
use hreg_proto::sync::AtomicU32;
use rustix::fd::OwnedFd;
use rustix::thread::futex;
use std::mem::ManuallyDrop;
use std::sync::atomic::Ordering;
use std::sync::Once;
use std::time::Duration;

/// The session's shared memory, mapped read/write and `MAP_SHARED`.
#[derive(Debug)]
pub(crate) struct SessionMapping {
    map: ManuallyDrop<Mapping>,
    layout: Layout,
    /// The process that mapped it; a forked child leaves it mapped.
    owner: u32,
}

impl SessionMapping {
    /// Maps `memfd`, which must be sealed against shrinking and growing and
    /// exactly `layout.max_rings × stride` bytes long, where `stride` is the
    /// layout's own.
    pub(crate) fn new(memfd: &OwnedFd, layout: Layout, stride: u64) -> Result<SessionMapping> {
        layout
            .validate()
            .map_err(|e| Error::Protocol(format!("unusable ring layout: {e}")))?;
        if stride != layout.ring_stride() as u64 {
            return Err(Error::Protocol(format!(
                "ring stride {stride}, expected {} for this layout",
                layout.ring_stride()
            )));
        }
        let len = layout.total_size();
        // Without these seals the daemon (or whatever answered at the
        // socket) could shrink the memfd under our mapping: SIGBUS.
        let seals = rustix::fs::fcntl_get_seals(memfd)
            .map_err(|e| Error::Protocol(format!("session memory cannot be sealed: {e}")))?;
        if !seals.contains(rustix::fs::SealFlags::SHRINK | rustix::fs::SealFlags::GROW) {
            return Err(Error::Protocol(
                "session memory is not sealed against shrinking and growing".into(),
            ));
        }
        let stat = rustix::fs::fstat(memfd)?;
        if u64::try_from(stat.st_size).ok() != Some(len as u64) {
            return Err(Error::Protocol(format!(
                "session memory is {} bytes, expected {len}",
                stat.st_size
            )));
        }
        Ok(SessionMapping {
            map: ManuallyDrop::new(Mapping::map(memfd, len, Access::ReadWrite)?),
            layout,
            owner: current_pid(),
        })
    }

    /// The client's side of ring `index`, or `None` when there is no such
    /// ring.
    pub(crate) fn ring(&self, index: u32) -> Option<ClientRing<'_>> {
        self.map.client_ring(self.layout, index)
    }
}

impl Drop for SessionMapping {
    fn drop(&mut self) {
        if self.owner == current_pid() {
            // SAFETY: dropped once, here; nothing uses the mapping after
            // its owner is dropped (every view borrows it).
            unsafe { ManuallyDrop::drop(&mut self.map) };
        }
        // A forked child leaves the inherited mapping alone (leaks it).
    }
}

/// How a futex wait ended.
pub(crate) enum Wake {
    /// Woken, interrupted, or the word no longer held the value.
    Changed,
    TimedOut,
}

/// Sleeps while the ring's CQ tail word (`word`) still equals `seen`, at most
/// `timeout`. A shared futex: the daemon wakes it from another process.
pub(crate) fn futex_wait(word: &AtomicU32, seen: u32, timeout: Duration) -> Result<Wake> {
    let ts = rustix::time::Timespec::try_from(timeout)
        .map_err(|_| Error::Io(std::io::Error::other("futex timeout out of range")))?;
    match futex::wait(word, futex::Flags::empty(), seen, Some(&ts)) {
        Ok(()) => Ok(Wake::Changed),
        Err(rustix::io::Errno::AGAIN) | Err(rustix::io::Errno::INTR) => Ok(Wake::Changed),
        Err(rustix::io::Errno::TIMEDOUT) => Ok(Wake::TimedOut),
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
        let fd = sealed_memfd(stride * 2);
        let map = SessionMapping::new(&fd, layout, stride).unwrap();
        let ring = map.ring(1).unwrap();
        assert!(map.ring(2).is_none());
        assert!(ring.copy_to_data(0, b"hello"));
        let mut out = [0u8; 5];
        assert!(map.ring(1).unwrap().copy_from_data(0, &mut out));
        assert_eq!(&out, b"hello");
        drop(map);

        assert!(matches!(
            SessionMapping::new(&sealed_memfd(stride), layout, stride),
            Err(Error::Protocol(_))
        ));
        assert!(matches!(
            SessionMapping::new(&fd, layout, 100),
            Err(Error::Protocol(_))
        ));
        // Right size, but it could be shrunk under the mapping.
        let unsealed =
            rustix::fs::memfd_create("hreg-test", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
        rustix::fs::ftruncate(&unsealed, stride * 2).unwrap();
        assert!(matches!(
            SessionMapping::new(&unsealed, layout, stride),
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
            Ok(Wake::Changed)
        ));
        assert!(matches!(
            futex_wait(&word, 5, Duration::from_millis(1)),
            Ok(Wake::TimedOut)
        ));
    }
}
