//! Who is on the other end of a connection: `SO_PEERCRED`, read with libc
//! into a plain `ucred`; the peer's process as a pidfd (`SO_PEERPIDFD`),
//! to know when it has exited; and how much of what we sent it has not read
//! yet (`SIOCOUTQ`).
//!
//! Not rustix's `socket_peercred`: its `UCred` holds a non-zero `Pid`, and
//! the kernel reports pid 0 for a peer outside the daemon's pid namespace
//! (a client in another container), which that type cannot hold. Here pid 0
//! is a valid answer meaning "not visible from here"; such a peer is served
//! like any other (its uid and gid are still the kernel's word).
//!
//! The uid is the peer's as mapped into hregd's user namespace. When hregd
//! runs in a user namespace that leaves uids unmapped (a container with its
//! own user namespace), every peer whose uid is unmapped there shows as the
//! kernel's overflow uid (65534): one identity for many users.
//! [`is_unmapped`] tells those peers apart so that they can be refused.

#![allow(unsafe_code)]

use rustix::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::io;

/// A peer's identity at `connect()` time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Peer {
    /// 0 when the peer's process is not visible in the daemon's pid
    /// namespace.
    pub pid: i32,
    pub uid: u32,
    pub gid: u32,
}

/// Bytes sent on a connected Unix socket that its peer has not read yet
/// (`SIOCOUTQ`: for `AF_UNIX`, what still sits in the peer's receive
/// queue). 0 means every message sent, and the descriptors attached to
/// them, has been taken.
pub fn unread_bytes(socket: impl AsFd) -> io::Result<usize> {
    let mut queued: libc::c_int = 0;
    // SAFETY: SIOCOUTQ writes one int through the pointer, which points at
    // a live, writable c_int; the descriptor is borrowed for the call.
    let rc = unsafe {
        libc::ioctl(
            socket.as_fd().as_raw_fd(),
            libc::TIOCOUTQ,
            &mut queued as *mut libc::c_int,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(usize::try_from(queued).unwrap_or(0))
}

/// The credentials of the peer of a connected Unix socket.
pub fn peer_credentials(socket: impl AsFd) -> io::Result<Peer> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `cred` is a valid, writable ucred of `len` bytes; every bit
    // pattern is a valid ucred (three integers), so whatever the kernel
    // writes is initialised; the descriptor is borrowed for the call.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_fd().as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    if len as usize != std::mem::size_of::<libc::ucred>() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "SO_PEERCRED returned a short answer",
        ));
    }
    Ok(Peer {
        pid: cred.pid,
        uid: cred.uid,
        gid: cred.gid,
    })
}

/// Whether `uid`, as `SO_PEERCRED` reported it, may stand for a uid that
/// hregd's user namespace does not map: it is the kernel's overflow uid
/// (`/proc/sys/kernel/overflowuid`) and this namespace leaves some uids
/// unmapped. In the host's user namespace every uid is mapped, so there the
/// overflow uid is a real user (`nobody`) and this is false.
pub fn is_unmapped(uid: u32) -> bool {
    static OVERFLOW: std::sync::OnceLock<Option<u32>> = std::sync::OnceLock::new();
    *OVERFLOW.get_or_init(|| {
        let read = |path: &str| std::fs::read_to_string(path).unwrap_or_default();
        let overflow = read("/proc/sys/kernel/overflowuid")
            .trim()
            .parse()
            .unwrap_or(65534);
        (!maps_every_uid(&read("/proc/self/uid_map"))).then_some(overflow)
    }) == Some(uid)
}

/// Whether a `uid_map` (lines of: first uid inside, first uid outside,
/// count) maps every uid from 0 to 2^32 - 2 (`u32::MAX` is never a uid).
/// An unreadable map counts as partial.
fn maps_every_uid(uid_map: &str) -> bool {
    let mut ranges: Vec<(u64, u64)> = uid_map
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace().map(|f| f.parse::<u64>().ok());
            let inside = fields.next()??;
            let _outside = fields.next()??;
            let count = fields.next()??;
            Some((inside, inside + count))
        })
        .collect();
    ranges.sort_unstable();
    let mut covered = 0u64;
    for (start, end) in ranges {
        if start > covered {
            return false;
        }
        covered = covered.max(end);
    }
    covered >= u64::from(u32::MAX)
}

/// The peer's process, as far as the daemon can know it.
#[derive(Debug)]
pub enum Process {
    /// A pidfd of it: readable once it has exited.
    Running(OwnedFd),
    /// It has exited.
    Gone,
    /// Not knowable from here (no `SO_PEERPIDFD`, and its pid is not
    /// visible in the daemon's pid namespace).
    Unknown,
}

/// `SO_PEERPIDFD` (Linux 6.5), which libc does not name on every target.
const SO_PEERPIDFD: libc::c_int = 77;

/// The process at the other end of `socket`, which connected as `pid` (0:
/// not visible here): its pidfd from `SO_PEERPIDFD`, which names the very
/// process that connected and works across pid namespaces; else, on older
/// kernels, `pidfd_open` of its pid (a pid reused meanwhile can only make
/// the daemon wait for the wrong process to exit).
pub fn peer_process(socket: impl AsFd, pid: i32) -> Process {
    let mut raw: libc::c_int = -1;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `raw` is a writable c_int of `len` bytes; the descriptor is
    // borrowed for the call.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_fd().as_raw_fd(),
            libc::SOL_SOCKET,
            SO_PEERPIDFD,
            (&mut raw as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if rc == 0 && raw >= 0 && len as usize == std::mem::size_of::<libc::c_int>() {
        // SAFETY: the kernel just gave us this new descriptor; nothing
        // else owns it.
        return Process::Running(unsafe { OwnedFd::from_raw_fd(raw) });
    }
    match io::Error::last_os_error().raw_os_error() {
        Some(libc::ESRCH) if rc != 0 => return Process::Gone,
        _ => {}
    }
    let Some(pid) = rustix::process::Pid::from_raw(pid) else {
        return Process::Unknown;
    };
    match rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()) {
        Ok(fd) => Process::Running(fd),
        Err(rustix::io::Errno::SRCH) => Process::Gone,
        Err(_) => Process::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_socket_pair_names_this_process() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let peer = peer_credentials(&a).unwrap();
        assert_eq!(peer.pid, std::process::id() as i32);
        assert_eq!(peer.uid, rustix::process::getuid().as_raw());
        assert_eq!(peer.gid, rustix::process::getgid().as_raw());
    }

    #[test]
    fn a_peer_process_is_known_until_it_exits() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        assert!(matches!(
            peer_process(&a, std::process::id() as i32),
            Process::Running(_)
        ));
        // A peer that has exited: a child that connected, then died.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let mut child = std::process::Command::new("python3")
            .args([
                "-c",
                "import socket,sys; s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])",
            ])
            .arg(&path)
            .spawn()
            .unwrap();
        let (conn, _) = listener.accept().unwrap();
        let pid = child.id() as i32;
        child.wait().unwrap();
        // Gone, or (kernels that give pidfds of reaped processes) a pidfd
        // that already says it has exited.
        match peer_process(&conn, pid) {
            Process::Gone => {}
            Process::Running(pidfd) => {
                let mut poll = [rustix::event::PollFd::new(
                    &pidfd,
                    rustix::event::PollFlags::IN,
                )];
                assert_eq!(rustix::event::poll(&mut poll, None).unwrap(), 1);
                assert!(poll[0].revents().contains(rustix::event::PollFlags::IN));
            }
            Process::Unknown => panic!("a peer that exited is not known as such"),
        }
    }

    #[test]
    fn a_file_is_not_a_socket() {
        let file = std::fs::File::open("/dev/null").unwrap();
        assert!(peer_credentials(&file).is_err());
    }

    #[test]
    fn only_a_whole_uid_map_maps_every_uid() {
        assert!(maps_every_uid("         0          0 4294967295\n"));
        assert!(maps_every_uid("0 0 1000\n1000 5000 4294966295\n"));
        assert!(!maps_every_uid("0 0 1\n"), "--map-root-user");
        assert!(!maps_every_uid("0 100000 65536\n"), "a container's range");
        assert!(
            !maps_every_uid("0 0 1000\n2000 2000 4294965295\n"),
            "a hole"
        );
        assert!(!maps_every_uid(""), "unreadable");
    }

    #[test]
    fn in_the_host_namespace_no_uid_is_unmapped() {
        if std::fs::read_to_string("/proc/self/uid_map").is_ok_and(|m| maps_every_uid(&m)) {
            assert!(!is_unmapped(65534), "nobody is a real user here");
        }
    }
}
