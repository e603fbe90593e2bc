//! The control socket: connecting (`SOCK_SEQPACKET | SOCK_CLOEXEC`), sending
//! requests (`MSG_NOSIGNAL`), receiving replies with at most the one file
//! descriptor we expect (`MSG_CMSG_CLOEXEC`; any other is closed), and a
//! non-blocking look for EOF or SHUTDOWN.

use crate::error::{Error, Result};
use hreg_proto::control::{ControlRequest, Reply, MAX_MESSAGE};
use hreg_proto::fd_passing;
use rustix::event::{PollFd, PollFlags};
use rustix::fd::{AsFd, BorrowedFd, OwnedFd};
use rustix::io::Errno;
use rustix::net::{AddressFamily, RecvFlags, SendFlags, SocketAddrUnix, SocketFlags, SocketType};
use std::path::Path;
use std::time::Duration;

/// Connects a fresh control socket to `path`.
pub(crate) fn connect(path: &Path) -> std::io::Result<OwnedFd> {
    let addr = SocketAddrUnix::new(path)?;
    let sock = rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )?;
    rustix::net::connect(&sock, &addr)?;
    Ok(sock)
}

/// Sends one request. A peer that is gone gives [`Error::Disconnected`].
pub(crate) fn send(sock: impl AsFd, request: &ControlRequest) -> Result<()> {
    send_with_fds(sock, request, &[])
}

/// Sends one request with the descriptors `fds` attached (RESUME brings
/// the session's memory back).
pub(crate) fn send_with_fds(
    sock: impl AsFd,
    request: &ControlRequest,
    fds: &[BorrowedFd<'_>],
) -> Result<()> {
    let bytes = request.encode();
    loop {
        match fd_passing::send(sock.as_fd(), &bytes, fds, SendFlags::empty()) {
            Ok(n) if n == bytes.len() => return Ok(()),
            Ok(n) => {
                return Err(Error::Protocol(format!(
                    "sent {n} of {} bytes of a packet",
                    bytes.len()
                )))
            }
            Err(Errno::INTR) => continue,
            Err(Errno::PIPE | Errno::CONNRESET | Errno::NOTCONN) => {
                return Err(Error::Disconnected)
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// How long a control request waits for its reply. Long: a busy daemon may
/// be slow and a burst of attaches waits its turn, but a daemon that never
/// answers must not hang a caller (or a thread-exit destructor) for ever.
pub(crate) const REPLY_DEADLINE: Duration = Duration::from_secs(60);

/// Receives one reply, waiting at most `deadline` for it, with the
/// descriptors that came with it. EOF and SHUTDOWN give
/// [`Error::Disconnected`]; no reply in time gives an [`Error::Io`] of kind
/// `TimedOut`.
pub(crate) fn recv_within(sock: impl AsFd, deadline: Duration) -> Result<(Reply, Vec<OwnedFd>)> {
    let started = std::time::Instant::now();
    loop {
        let left = deadline.saturating_sub(started.elapsed());
        let timeout = rustix::time::Timespec::try_from(left)
            .map_err(|_| Error::Io(std::io::Error::other("reply deadline out of range")))?;
        let mut fds = [PollFd::new(&sock, PollFlags::IN)];
        match rustix::event::poll(&mut fds, Some(&timeout)) {
            Ok(0) if left.is_zero() => {
                return Err(Error::Io(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("hregd did not answer within {} s", deadline.as_secs()),
                )))
            }
            Ok(0) | Err(Errno::INTR) => continue,
            Ok(_) => return recv(sock),
            Err(e) => return Err(e.into()),
        }
    }
}

/// Receives one reply, blocking, with the descriptors that came with it.
/// EOF and SHUTDOWN give [`Error::Disconnected`].
pub(crate) fn recv(sock: impl AsFd) -> Result<(Reply, Vec<OwnedFd>)> {
    let mut buf = vec![0u8; MAX_MESSAGE];
    let max_fds = hreg_proto::control::MAX_CHUNKS_PER_REPLY as usize;
    let mut flags = RecvFlags::empty();
    // Every descriptor that came is owned by the packet, so each one we do
    // not want is closed whatever happens next.
    let packet = loop {
        match fd_passing::recv(sock.as_fd(), &mut buf, max_fds, flags) {
            Err(Errno::INTR) => continue,
            // A peer that closed with our request unread resets the
            // connection, and the error comes before what it sent us (a
            // REFUSED saying why): look once more, without waiting.
            Err(Errno::CONNRESET) if !flags.contains(RecvFlags::DONTWAIT) => {
                flags |= RecvFlags::DONTWAIT;
            }
            Err(Errno::CONNRESET | Errno::AGAIN) => return Err(Error::Disconnected),
            other => break other?,
        }
    };
    if packet.len == 0 {
        return Err(Error::Disconnected);
    }
    if packet.truncated {
        return Err(Error::Protocol(format!(
            "control packet longer than {MAX_MESSAGE} bytes"
        )));
    }
    if packet.fds_truncated {
        return Err(Error::Protocol(
            "too many descriptors attached to a reply".into(),
        ));
    }
    let reply = Reply::decode(&buf[..packet.len.min(buf.len())])
        .map_err(|e| Error::Protocol(format!("bad control reply: {e}")))?;
    if reply == Reply::Shutdown {
        return Err(Error::Disconnected);
    }
    Ok((reply, packet.fds))
}

/// Sends `request` and receives its reply (within [`REPLY_DEADLINE`]). The
/// caller serializes requests.
pub(crate) fn call(sock: impl AsFd, request: &ControlRequest) -> Result<(Reply, Vec<OwnedFd>)> {
    send(sock.as_fd(), request)?;
    recv_within(sock, REPLY_DEADLINE)
}

/// Takes exactly `N` descriptors out of `fds` (any other count is a
/// protocol error, and every descriptor is closed).
pub(crate) fn fds<const N: usize>(fds: Vec<OwnedFd>, what: &str) -> Result<[OwnedFd; N]> {
    let count = fds.len();
    fds.try_into().map_err(|_| {
        Error::Protocol(format!(
            "{what} came with {count} descriptors, expected {N}"
        ))
    })
}

/// Takes exactly one descriptor out of `fds`; the rest are closed.
pub(crate) fn one_fd(fds: Vec<OwnedFd>, what: &str) -> Result<OwnedFd> {
    let [fd] = self::fds::<1>(fds, what)?;
    Ok(fd)
}

/// What a look at an idle control socket found.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Peek {
    /// Nothing to read: the daemon is (as far as we can tell) alive.
    Quiet,
    /// EOF, hang-up, or SHUTDOWN waiting: the daemon is gone.
    Gone,
    /// A packet is waiting but we may not read it now (another thread owns
    /// the socket); ask again later.
    Busy,
}

/// Looks at the control socket, waiting at most `timeout` for something to
/// happen (zero: not at all). `may_read` says whether
/// the caller holds the socket (no request outstanding), so that a waiting
/// packet can be inspected: only SHUTDOWN may arrive unasked, anything else
/// is consumed and dropped.
pub(crate) fn peek(sock: impl AsFd, may_read: bool, timeout: Duration) -> Result<Peek> {
    let sock = sock.as_fd();
    let timeout = rustix::time::Timespec::try_from(timeout)
        .map_err(|_| Error::Io(std::io::Error::other("timeout out of range")))?;
    let revents = {
        let mut fds = [PollFd::new(&sock, PollFlags::IN | PollFlags::RDHUP)];
        match rustix::event::poll(&mut fds, Some(&timeout)) {
            Ok(_) => fds[0].revents(),
            Err(Errno::INTR) => return Ok(Peek::Quiet),
            Err(e) => return Err(e.into()),
        }
    };
    if revents.intersects(PollFlags::HUP | PollFlags::RDHUP | PollFlags::ERR | PollFlags::NVAL) {
        return Ok(Peek::Gone);
    }
    if !revents.contains(PollFlags::IN) {
        return Ok(Peek::Quiet);
    }
    if !may_read {
        return Ok(Peek::Busy);
    }
    let mut head = [0u8; MAX_MESSAGE];
    match rustix::net::recv(sock, &mut head, RecvFlags::PEEK | RecvFlags::DONTWAIT) {
        Ok((_, 0)) => Ok(Peek::Gone),
        Ok((_, n)) => {
            if Reply::decode(&head[..n.min(MAX_MESSAGE)]) == Ok(Reply::Shutdown) {
                return Ok(Peek::Gone);
            }
            // An unasked-for packet that is not SHUTDOWN: drop it (closing
            // any descriptor it carried) so that replies stay in step.
            match recv(sock) {
                Err(Error::Disconnected) => Ok(Peek::Gone),
                _ => Ok(Peek::Quiet),
            }
        }
        Err(Errno::AGAIN | Errno::INTR) => Ok(Peek::Quiet),
        Err(Errno::CONNRESET) => Ok(Peek::Gone),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hreg_proto::control::StatsReply;

    fn pair() -> (OwnedFd, OwnedFd) {
        rustix::net::socketpair(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            SocketFlags::CLOEXEC,
            None,
        )
        .unwrap()
    }

    #[test]
    fn request_and_reply_travel() {
        let (a, b) = pair();
        send(&a, &ControlRequest::Stats).unwrap();
        let mut buf = [0u8; 64];
        let (_, n) = rustix::net::recv(&b, &mut buf, RecvFlags::empty()).unwrap();
        assert_eq!(ControlRequest::decode(&buf[..n]), Ok(ControlRequest::Stats));
        let stats = Reply::Stats(StatsReply {
            objects: 1,
            value_bytes: 2,
            sessions: 3,
            ops: 4,
        });
        rustix::net::send(&b, &stats.encode(), SendFlags::empty()).unwrap();
        let (reply, fds) = recv(&a).unwrap();
        assert_eq!(reply, stats);
        assert!(fds.is_empty());
    }

    #[test]
    fn peek_tells_quiet_from_gone() {
        let (a, b) = pair();
        assert_eq!(peek(&a, true, Duration::ZERO).unwrap(), Peek::Quiet);
        rustix::net::send(&b, &Reply::Ack.encode(), SendFlags::empty()).unwrap();
        assert_eq!(peek(&a, false, Duration::ZERO).unwrap(), Peek::Busy);
        // An unasked-for ACK is dropped.
        assert_eq!(peek(&a, true, Duration::ZERO).unwrap(), Peek::Quiet);
        assert_eq!(peek(&a, true, Duration::ZERO).unwrap(), Peek::Quiet);
        rustix::net::send(&b, &Reply::Shutdown.encode(), SendFlags::empty()).unwrap();
        assert_eq!(peek(&a, true, Duration::ZERO).unwrap(), Peek::Gone);
        assert!(matches!(recv(&a), Err(Error::Disconnected)));
        drop(b);
        assert_eq!(peek(&a, false, Duration::ZERO).unwrap(), Peek::Gone);
        assert!(matches!(recv(&a), Err(Error::Disconnected)));
        assert!(matches!(
            send(&a, &ControlRequest::Stats),
            Err(Error::Disconnected)
        ));
    }

    #[test]
    fn a_silent_peer_times_out() {
        let (a, _b) = pair();
        let started = std::time::Instant::now();
        match recv_within(&a, Duration::from_millis(100)) {
            Err(Error::Io(e)) => assert_eq!(e.kind(), std::io::ErrorKind::TimedOut),
            other => panic!("expected a timeout, got {other:?}"),
        }
        assert!(started.elapsed() >= Duration::from_millis(100));
    }

    #[test]
    fn garbage_reply_is_a_protocol_error() {
        let (a, b) = pair();
        rustix::net::send(&b, &[1, 2, 3], SendFlags::empty()).unwrap();
        assert!(matches!(recv(&a), Err(Error::Protocol(_))));
    }

    #[test]
    fn one_fd_wants_exactly_one() {
        assert!(one_fd(Vec::new(), "x").is_err());
        let (a, b) = pair();
        assert!(one_fd(vec![a, b], "x").is_err());
        let (a, _b) = pair();
        assert!(one_fd(vec![a], "x").is_ok());
    }
}
