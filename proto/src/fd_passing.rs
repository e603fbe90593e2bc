//! Packets with descriptors attached (`SCM_RIGHTS`): how the control
//! messages and the memfds they name cross a Unix socket, the same for the
//! daemon, the clients and the tests. Received descriptors are owned at
//! once (`MSG_CMSG_CLOEXEC`), so any a caller does not take are closed;
//! sends never raise SIGPIPE (`MSG_NOSIGNAL`).

use rustix::fd::{AsFd, BorrowedFd, OwnedFd};
use rustix::io::Errno;
use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags, SocketAddrUnix,
};
use std::io::{IoSlice, IoSliceMut};
use std::mem::MaybeUninit;

/// Most descriptors one packet may carry (the kernel's `SCM_MAX_FD`).
pub const MAX_FDS: usize = 253;

/// One packet received.
#[derive(Debug)]
pub struct Packet {
    /// Bytes of the packet in the buffer (0: end of file on a stream or
    /// seqpacket socket).
    pub len: usize,
    /// The packet was longer than the buffer (`MSG_TRUNC`).
    pub truncated: bool,
    /// More descriptors came than there was room for; the kernel closed
    /// the rest (`MSG_CTRUNC`).
    pub fds_truncated: bool,
    /// The descriptors that came with it, owned.
    pub fds: Vec<OwnedFd>,
}

/// Receives one packet into `buf`, with room for up to `max_fds`
/// descriptors (at most [`MAX_FDS`]), `MSG_CMSG_CLOEXEC` added to `flags`.
pub fn recv(
    sock: impl AsFd,
    buf: &mut [u8],
    max_fds: usize,
    flags: RecvFlags,
) -> rustix::io::Result<Packet> {
    if max_fds > MAX_FDS {
        return Err(Errno::INVAL);
    }
    let mut space = vec![MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(max_fds))];
    let mut ancillary = RecvAncillaryBuffer::new(&mut space);
    let received = rustix::net::recvmsg(
        sock.as_fd(),
        &mut [IoSliceMut::new(buf)],
        &mut ancillary,
        flags | RecvFlags::CMSG_CLOEXEC,
    );
    // Owned before anything else, so that each one is closed whatever the
    // caller does next.
    let fds: Vec<OwnedFd> = ancillary
        .drain()
        .filter_map(|message| match message {
            RecvAncillaryMessage::ScmRights(fds) => Some(fds),
            _ => None,
        })
        .flatten()
        .collect();
    let received = received?;
    Ok(Packet {
        len: received.bytes,
        truncated: received.flags.contains(ReturnFlags::TRUNC),
        fds_truncated: received.flags.contains(ReturnFlags::CTRUNC),
        fds,
    })
}

/// Sends `bytes` as one packet with `fds` attached (at most [`MAX_FDS`]),
/// `MSG_NOSIGNAL` added to `flags`; the bytes sent.
pub fn send(
    sock: impl AsFd,
    bytes: &[u8],
    fds: &[BorrowedFd<'_>],
    flags: SendFlags,
) -> rustix::io::Result<usize> {
    send_packet(sock.as_fd(), None, bytes, fds, flags)
}

/// Like [`send`], to the datagram socket at `addr` (a notify socket).
pub fn send_to(
    sock: impl AsFd,
    addr: &SocketAddrUnix,
    bytes: &[u8],
    fds: &[BorrowedFd<'_>],
    flags: SendFlags,
) -> rustix::io::Result<usize> {
    send_packet(sock.as_fd(), Some(addr), bytes, fds, flags)
}

fn send_packet(
    sock: BorrowedFd<'_>,
    addr: Option<&SocketAddrUnix>,
    bytes: &[u8],
    fds: &[BorrowedFd<'_>],
    flags: SendFlags,
) -> rustix::io::Result<usize> {
    if fds.len() > MAX_FDS {
        return Err(Errno::INVAL);
    }
    // Room for a few descriptors on the stack (every message of hreg's);
    // more on the heap.
    let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(4))];
    let mut large = Vec::new();
    let space: &mut [MaybeUninit<u8>] = if fds.len() <= 4 {
        &mut space
    } else {
        large.resize(
            rustix::cmsg_space!(ScmRights(fds.len())),
            MaybeUninit::uninit(),
        );
        &mut large
    };
    let mut ancillary = SendAncillaryBuffer::new(space);
    if !fds.is_empty() && !ancillary.push(SendAncillaryMessage::ScmRights(fds)) {
        return Err(Errno::NOBUFS);
    }
    let iov = [IoSlice::new(bytes)];
    let flags = flags | SendFlags::NOSIGNAL;
    match addr {
        None => rustix::net::sendmsg(sock, &iov, &mut ancillary, flags),
        Some(addr) => rustix::net::sendmsg_addr(sock, addr, &iov, &mut ancillary, flags),
    }
}

#[cfg(all(test, not(hreg_loom)))]
mod tests {
    use super::*;
    use rustix::fd::AsFd;
    use rustix::net::{AddressFamily, SocketFlags, SocketType};

    #[test]
    fn packets_carry_their_descriptors_and_say_what_did_not_fit() {
        let (a, b) = rustix::net::socketpair(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            SocketFlags::CLOEXEC,
            None,
        )
        .unwrap();
        let memfds: Vec<OwnedFd> = (0..8)
            .map(|_| rustix::fs::memfd_create("fd", rustix::fs::MemfdFlags::CLOEXEC).unwrap())
            .collect();
        let borrowed: Vec<BorrowedFd<'_>> = memfds.iter().map(|fd| fd.as_fd()).collect();
        assert_eq!(send(&a, b"eight", &borrowed, SendFlags::empty()), Ok(5));
        let mut buf = [0u8; 16];
        let packet = recv(&b, &mut buf, 8, RecvFlags::empty()).unwrap();
        assert_eq!((packet.len, &buf[..5]), (5, &b"eight"[..]));
        assert!(!packet.truncated && !packet.fds_truncated);
        assert_eq!(packet.fds.len(), 8);
        // Room for about one descriptor and two bytes: the rest is cut,
        // and said.
        assert_eq!(send(&a, b"eight", &borrowed, SendFlags::empty()), Ok(5));
        let mut small = [0u8; 2];
        let packet = recv(&b, &mut small, 1, RecvFlags::empty()).unwrap();
        assert!(packet.truncated && packet.fds_truncated, "{packet:?}");
        assert!((1..8).contains(&packet.fds.len()), "{packet:?}");
        // Nothing waiting, without blocking; bad counts refused.
        assert_eq!(
            recv(&b, &mut buf, 1, RecvFlags::DONTWAIT).unwrap_err(),
            Errno::AGAIN
        );
        assert_eq!(
            recv(&b, &mut buf, MAX_FDS + 1, RecvFlags::empty()).unwrap_err(),
            Errno::INVAL
        );
        drop(b);
        assert_eq!(
            send(&a, b"x", &[], SendFlags::empty()).unwrap_err(),
            Errno::PIPE,
            "no SIGPIPE"
        );
    }
}
