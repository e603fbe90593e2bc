//! A deliberately minimal client that speaks the wire protocol by hand, so
//! tests can send what the real client library never would: handle 0,
//! unknown opcodes, garbage HELLOs, corrupt ring counters.

use hreg_proto::control::{Reply, Request, Welcome, MAX_MESSAGE};
use hreg_proto::entry::{Cqe, Sqe, ENTRY_SIZE};
use hreg_proto::ring::{Layout, RingView, Word};
use rustix::fd::{AsFd, BorrowedFd, OwnedFd};
use rustix::mm::{MapFlags, ProtFlags};
use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendFlags, SocketAddrUnix, SocketFlags, SocketType,
};
use std::io::{IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::path::Path;
use std::sync::atomic::{fence, Ordering};
use std::time::Instant;

/// What a receive got: `None` at EOF, else the reply (`None` if it does
/// not decode) and the descriptor that came with it.
pub type Received = Option<(Option<Reply>, Option<OwnedFd>)>;

/// A raw control connection.
pub struct RawConn {
    pub fd: OwnedFd,
}

impl RawConn {
    pub fn connect(socket: &Path) -> RawConn {
        RawConn::try_connect(socket).expect("connect")
    }

    /// Connects, or says why not (out of descriptors, nobody listening).
    pub fn try_connect(socket: &Path) -> rustix::io::Result<RawConn> {
        let fd = rustix::net::socket_with(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            SocketFlags::CLOEXEC,
            None,
        )?;
        rustix::net::connect(&fd, &SocketAddrUnix::new(socket)?)?;
        // A daemon that never answers fails the test instead of hanging it.
        rustix::net::sockopt::set_socket_timeout(
            &fd,
            rustix::net::sockopt::Timeout::Recv,
            Some(crate::PATIENCE),
        )?;
        Ok(RawConn { fd })
    }

    /// Sends raw bytes as one packet.
    pub fn send_bytes(&self, bytes: &[u8]) {
        let mut control = SendAncillaryBuffer::default();
        rustix::net::sendmsg(
            &self.fd,
            &[IoSlice::new(bytes)],
            &mut control,
            SendFlags::NOSIGNAL,
        )
        .expect("send");
    }

    pub fn send(&self, request: &Request) {
        self.send_bytes(&request.encode());
    }

    /// Sends raw bytes as one packet with `fds` attached by `SCM_RIGHTS`;
    /// errors (a daemon that closed the connection) are returned, not
    /// panicked on.
    pub fn try_send_with_fds(
        &self,
        bytes: &[u8],
        fds: &[BorrowedFd<'_>],
    ) -> rustix::io::Result<usize> {
        let mut space =
            vec![MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(fds.len().max(1)))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        if !fds.is_empty() {
            assert!(control.push(rustix::net::SendAncillaryMessage::ScmRights(fds)));
        }
        rustix::net::sendmsg(
            &self.fd,
            &[IoSlice::new(bytes)],
            &mut control,
            SendFlags::NOSIGNAL,
        )
    }

    /// Like [`RawConn::recv`] but never panics: `Ok(None)` at EOF, an error
    /// for a receive error or timeout, `Ok(Some(None, ..))` for a reply that
    /// does not decode.
    pub fn try_recv(&self) -> rustix::io::Result<Received> {
        self.recv_with(RecvFlags::empty())
    }

    /// Like [`RawConn::try_recv`] without waiting: `EAGAIN` when nothing
    /// has come.
    pub fn try_recv_now(&self) -> rustix::io::Result<Received> {
        self.recv_with(RecvFlags::DONTWAIT)
    }

    fn recv_with(&self, flags: RecvFlags) -> rustix::io::Result<Received> {
        let mut buf = vec![0u8; MAX_MESSAGE];
        let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(2))];
        let mut ancillary = RecvAncillaryBuffer::new(&mut space);
        let msg = rustix::net::recvmsg(
            &self.fd,
            &mut [IoSliceMut::new(&mut buf)],
            &mut ancillary,
            RecvFlags::CMSG_CLOEXEC | flags,
        )?;
        if msg.bytes == 0 {
            return Ok(None);
        }
        let mut fd = None;
        for message in ancillary.drain() {
            if let RecvAncillaryMessage::ScmRights(fds) = message {
                fd = fds.into_iter().next();
            }
        }
        Ok(Some((Reply::decode(&buf[..msg.bytes]).ok(), fd)))
    }

    /// Sets how long a receive waits before failing with `EAGAIN`.
    pub fn set_recv_timeout(&self, timeout: std::time::Duration) {
        rustix::net::sockopt::set_socket_timeout(
            &self.fd,
            rustix::net::sockopt::Timeout::Recv,
            Some(timeout),
        )
        .expect("SO_RCVTIMEO");
    }

    /// The next reply and the descriptor attached to it, if any; `None` at
    /// EOF. Panics on a receive error or a reply that does not decode.
    pub fn recv(&self) -> Option<(Reply, Option<OwnedFd>)> {
        let (reply, fd) = self.try_recv().expect("recv")?;
        Some((reply.expect("decodable reply"), fd))
    }
}

/// An attached raw session with its memory mapped.
pub struct RawSession {
    pub conn: RawConn,
    pub welcome: Welcome,
    base: *mut u8,
    len: usize,
    _memfd: OwnedFd,
}

impl RawSession {
    pub fn attach(socket: &Path) -> RawSession {
        match RawSession::try_attach(socket) {
            Ok(session) => session,
            Err(reply) => panic!("no WELCOME: {reply:?}"),
        }
    }

    /// Attaches, or returns what the daemon answered instead of WELCOME
    /// (`None`: nothing, the connection closed).
    pub fn try_attach(socket: &Path) -> Result<RawSession, Option<Reply>> {
        let conn = RawConn::connect(socket);
        conn.send(&Request::Hello {
            version: hreg_proto::PROTOCOL_VERSION,
            name: "raw".into(),
        });
        let (welcome, memfd) = match conn.try_recv() {
            Ok(Some((Some(Reply::Welcome(welcome)), Some(memfd)))) => (welcome, memfd),
            Ok(Some((reply, _))) => return Err(reply),
            _ => return Err(None),
        };
        let len = (welcome.ring_stride * u64::from(welcome.max_rings)) as usize;
        // SAFETY: mapping the session memfd the daemon sent, of the size it
        // announced; unmapped in Drop, and only accessed through RingView.
        let base = unsafe {
            rustix::mm::mmap(
                std::ptr::null_mut(),
                len,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::SHARED,
                &memfd,
                0,
            )
            .expect("mmap")
        };
        Ok(RawSession {
            conn,
            welcome,
            base: base.cast(),
            len,
            _memfd: memfd,
        })
    }

    pub fn layout(&self) -> Layout {
        Layout {
            entries: self.welcome.ring_entries,
            data_size: self.welcome.data_size,
            max_rings: self.welcome.max_rings,
        }
    }

    /// Opens a ring; returns its view and doorbell.
    pub fn open_ring(&self) -> (RingView, OwnedFd) {
        let (_, view, doorbell) = self.try_open_ring_at().expect("RING_OPENED");
        (view, doorbell)
    }

    /// Opens a ring, or `None` when the daemon answers otherwise (QUOTA at
    /// the ring cap) or the connection is gone.
    pub fn try_open_ring(&self) -> Option<(RingView, OwnedFd)> {
        self.try_open_ring_at()
            .map(|(_, view, doorbell)| (view, doorbell))
    }

    /// [`RawSession::try_open_ring`], with the ring's index.
    pub fn try_open_ring_at(&self) -> Option<(u32, RingView, OwnedFd)> {
        self.conn
            .try_send_with_fds(&Request::RingOpen.encode(), &[])
            .ok()?;
        let Ok(Some((Some(Reply::RingOpened { index }), Some(doorbell)))) = self.conn.try_recv()
        else {
            return None;
        };
        if index >= self.welcome.max_rings {
            return None;
        }
        let offset = index as usize * self.welcome.ring_stride as usize;
        // SAFETY: the index is below max_rings, so the ring lies inside the
        // mapping, which stays mapped while the session lives; callers drop
        // their views before the session.
        let view = unsafe { RingView::new(self.base.add(offset), self.layout()) };
        Some((index, view, doorbell))
    }

    /// Bytes of the session mapping.
    pub fn mapping_len(&self) -> usize {
        self.len
    }

    /// Random bytes over `[offset, offset + len)` of the mapping (clipped
    /// to it, rounded to 8-byte words).
    pub fn scribble_range(&self, seed: u64, offset: usize, len: usize) {
        let mut state = seed | 1;
        let end = offset.saturating_add(len).min(self.len);
        for at in (offset & !7..end & !7).step_by(8) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            // SAFETY: inside our own mapping; 8-byte aligned offsets below
            // its length.
            unsafe { (self.base.add(at) as *mut u64).write_volatile(state) };
        }
    }

    /// Every byte of the mapping, for scribbling.
    pub fn scribble(&self, seed: u64) {
        let mut state = seed | 1;
        for offset in (0..self.len).step_by(8) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            // SAFETY: inside our own mapping; 8-byte aligned offsets.
            unsafe { (self.base.add(offset) as *mut u64).write_volatile(state) };
        }
    }
}

impl Drop for RawSession {
    fn drop(&mut self) {
        // SAFETY: the mapping made in attach, unmapped once.
        unsafe {
            let _ = rustix::mm::munmap(self.base.cast(), self.len);
        }
    }
}

/// Submits raw entry bytes at the ring's current tail and waits for their
/// completions. `tail` is the client's SQ tail, updated.
pub fn submit_raw(
    view: &RingView,
    doorbell: &OwnedFd,
    tail: &mut u32,
    entries: &[[u8; ENTRY_SIZE]],
) -> Vec<Cqe> {
    let start = *tail;
    for entry in entries {
        view.write_sqe(*tail, entry);
        *tail = tail.wrapping_add(1);
    }
    // Each entry is published by its stamp as it is written; the tail too.
    view.word(Word::SqTail).store(*tail, Ordering::Release);
    fence(Ordering::SeqCst);
    let _ = rustix::io::write(doorbell.as_fd(), &1u64.to_ne_bytes());
    let began = Instant::now();
    while view.word(Word::CqTail).load(Ordering::Acquire) != *tail {
        assert!(began.elapsed() < crate::PATIENCE, "no completion");
        std::thread::yield_now();
    }
    let completions = (0..entries.len() as u32)
        .map(|i| Cqe::decode(&view.read_cqe(start.wrapping_add(i))))
        .collect();
    view.word(Word::CqHead).store(*tail, Ordering::Release);
    completions
}

/// A submission entry for `opcode` on `handle`, otherwise zero.
pub fn sqe(opcode: u8, handle: u64) -> [u8; ENTRY_SIZE] {
    Sqe {
        user_data: 99,
        opcode,
        handle,
        ..Sqe::default()
    }
    .encode()
}
