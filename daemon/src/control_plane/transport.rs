//! The transport of the control plane's connections: how a packet and
//! its descriptors come in and go out on one connection (never blocking,
//! never raising SIGPIPE, a refusal sent before a close), and the
//! descriptor budget that decides how many connections, doorbells and
//! descriptors in flight the daemon can afford.

use hreg_proto::control::{Reply, MAX_CHUNKS_PER_REPLY};
use hreg_proto::fd_passing::{self, Packet};
use hreg_proto::{Limit, Status};
use rustix::fd::{AsFd, BorrowedFd, OwnedFd};
use rustix::net::{RecvFlags, SendFlags};

/// Most descriptors one request may bring (RESUME brings one; more are
/// closed unread).
const MAX_FDS_PER_REQUEST: usize = 8;

/// Reads one packet of `fd` into `buf` without waiting, owning the
/// descriptors that came with it at once (any a request does not take are
/// closed unread).
pub(super) fn receive(fd: &OwnedFd, buf: &mut [u8]) -> rustix::io::Result<Packet> {
    fd_passing::recv(fd, buf, MAX_FDS_PER_REQUEST, RecvFlags::DONTWAIT)
}

/// How many descriptors the daemon may hold, and how many it keeps back.
///
/// Every connection holds one descriptor and every ring one (its
/// doorbell). When few are left, new rings are refused (the client's
/// thread shares one of its session's rings) and new connections are
/// refused with a reply that names the limit, so a newcomer always hears
/// an answer and the daemon keeps room to work.
pub(super) struct FdBudget {
    pub(super) limit: usize,
    /// Descriptors the daemon holds for itself (measured at start).
    base: usize,
    reserve: usize,
}

impl FdBudget {
    pub(super) fn measure() -> FdBudget {
        let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile)
            .current
            .map_or(usize::MAX, |n| n as usize);
        let base = std::fs::read_dir("/proc/self/fd").map_or(64, |dir| dir.count());
        FdBudget {
            limit,
            base,
            reserve: (limit / 8).clamp(4, 64),
        }
    }

    /// Whether `held` more descriptors leave the reserve intact.
    pub(super) fn allows(&self, held: usize, reserve_share: usize) -> bool {
        self.base + held + self.reserve / reserve_share < self.limit
    }

    /// Descriptors one uid may hold (root is exempt): half of what is left
    /// after the daemon's own and the reserve, so one uid never takes
    /// everything.
    pub(super) fn uid_share(&self) -> usize {
        (self.limit.saturating_sub(self.base + self.reserve) / 2).max(16)
    }

    /// Descriptors one uid may have in flight (sent in replies, not yet
    /// read). The kernel charges them to hregd's user up to RLIMIT_NOFILE;
    /// an eighth each leaves room for several uids and the daemon.
    pub(super) fn inflight_cap(&self) -> usize {
        (self.limit / 8).clamp(2 * MAX_CHUNKS_PER_REPLY as usize, 65_536)
    }
}

/// Sends one message, with the descriptors `fds` (at most
/// [`MAX_CHUNKS_PER_REPLY`]), never blocking and never raising SIGPIPE.
pub(super) fn send(
    socket: BorrowedFd<'_>,
    reply: &Reply,
    fds: &[BorrowedFd<'_>],
) -> std::io::Result<()> {
    if fds.len() > MAX_CHUNKS_PER_REPLY as usize {
        return Err(std::io::Error::other(
            "too many descriptors for one message",
        ));
    }
    fd_passing::send(socket, &reply.encode(), fds, SendFlags::DONTWAIT)?;
    Ok(())
}

/// Whether the peer sent something we have not read yet.
pub(super) fn has_bytes_waiting(fd: &OwnedFd) -> bool {
    let mut probe = [0u8; 1];
    matches!(
        rustix::net::recv(fd, &mut probe, RecvFlags::DONTWAIT | RecvFlags::PEEK),
        Ok((_, n)) if n > 0
    )
}

/// Sends REFUSED on a connection that is about to be closed (best effort).
/// What the peer sent is read away first: closing a socket with unread
/// data resets the connection, and the peer then sees the reset before our
/// reply.
pub(super) fn refuse(fd: &OwnedFd, status: Status, message: &str) {
    let mut sink = [0u8; 256];
    while matches!(
        rustix::net::recv(fd, &mut sink, RecvFlags::DONTWAIT),
        Ok((_, n)) if n > 0
    ) {}
    let reply = Reply::Refused {
        status: status as u32,
        message: message.to_string(),
    };
    let _ = send(fd.as_fd(), &reply, &[]);
}

/// The status and text for `what` failing with `e`: QUOTA naming
/// [`Limit::FileDescriptors`] when descriptors ran out, else IO.
pub(super) fn os_refusal(e: &std::io::Error, what: &str) -> (Status, String) {
    if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) {
        let message = Limit::FileDescriptors.refusal_text(format_args!("{what}: {e}"));
        (Status::Quota, message)
    } else {
        (Status::Io, format!("{what}: {e}"))
    }
}
