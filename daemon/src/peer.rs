//! Who is on the other end of a connection: `SO_PEERCRED`, read with libc
//! into a plain `ucred`; and how much of what we sent it has not read yet
//! (`SIOCOUTQ`).
//!
//! Not rustix's `socket_peercred`: its `UCred` holds a non-zero `Pid`, and
//! the kernel reports pid 0 for a peer outside the daemon's pid namespace
//! (a client in another container), which that type cannot hold. Here pid 0
//! is a valid answer meaning "not visible from here"; such a peer is served
//! like any other (its uid and gid are still the kernel's word).

#![allow(unsafe_code)]

use rustix::fd::{AsFd, AsRawFd};
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
    fn a_file_is_not_a_socket() {
        let file = std::fs::File::open("/dev/null").unwrap();
        assert!(peer_credentials(&file).is_err());
    }
}
