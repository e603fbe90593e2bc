//! A deliberately minimal client that speaks the wire protocol by hand, so
//! tests can send what the real client library never would: handle 0,
//! unknown opcodes, garbage HELLOs, corrupt ring counters.

use hreg_proto::control::{ControlRequest, Reply, Welcome, MAX_CHUNKS_PER_REPLY, MAX_MESSAGE};
use hreg_proto::entry::{Cqe, Sqe, ENTRY_SIZE};
use hreg_proto::fd_passing;
use hreg_proto::ring::{ClientCounters, ClientRing, Layout};
use hreg_proto::shm::{Mapping, ReadWrite};
use rustix::fd::{AsFd, BorrowedFd, OwnedFd};
use rustix::net::{AddressFamily, RecvFlags, SendFlags, SocketAddrUnix, SocketFlags, SocketType};
use std::path::Path;
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
        fd_passing::send(&self.fd, bytes, &[], SendFlags::empty()).expect("send");
    }

    pub fn send(&self, request: &ControlRequest) {
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
        fd_passing::send(&self.fd, bytes, fds, SendFlags::empty())
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
        Ok(self
            .recv_all_with(flags)?
            .map(|(reply, fds)| (reply, fds.into_iter().next())))
    }

    /// The next reply (`None` inside if it does not decode) and every
    /// descriptor attached to it (MAP_DOMAIN's chunks, WELCOME's session
    /// memory and registry header); `Ok(None)` at EOF.
    pub fn try_recv_all(&self) -> rustix::io::Result<Option<(Option<Reply>, Vec<OwnedFd>)>> {
        self.recv_all_with(RecvFlags::empty())
    }

    fn recv_all_with(
        &self,
        flags: RecvFlags,
    ) -> rustix::io::Result<Option<(Option<Reply>, Vec<OwnedFd>)>> {
        let mut buf = vec![0u8; MAX_MESSAGE];
        let packet =
            fd_passing::recv(&self.fd, &mut buf, MAX_CHUNKS_PER_REPLY as usize + 2, flags)?;
        if packet.len == 0 {
            return Ok(None);
        }
        Ok(Some((Reply::decode(&buf[..packet.len]).ok(), packet.fds)))
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

/// An attached raw session with its memory mapped. It keeps the
/// memfd too, as a client in another language might.
pub struct RawSession {
    pub conn: RawConn,
    pub welcome: Welcome,
    map: Mapping<ReadWrite>,
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
    /// (`None`: nothing, the connection closed), boxed: a reply is large.
    pub fn try_attach(socket: &Path) -> Result<RawSession, Box<Option<Reply>>> {
        let conn = RawConn::connect(socket);
        conn.send(&ControlRequest::Hello {
            version: hreg_proto::PROTOCOL_VERSION,
            name: "raw".into(),
        });
        let (welcome, memfd) = match conn.try_recv() {
            Ok(Some((Some(Reply::Welcome(welcome)), Some(memfd)))) => (welcome, memfd),
            Ok(Some((reply, _))) => return Err(Box::new(reply)),
            _ => return Err(Box::new(None)),
        };
        let len = rustix::fs::fstat(&memfd).expect("fstat").st_size as usize;
        let map = Mapping::map(&memfd, len).expect("mmap");
        Ok(RawSession {
            conn,
            welcome,
            map,
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

    /// Opens a ring; returns the client's side of it and its doorbell.
    pub fn open_ring(&self) -> (ClientRing<'_>, OwnedFd) {
        let (_, ring, doorbell) = self.try_open_ring_at().expect("RING_OPENED");
        (ring, doorbell)
    }

    /// Opens a ring, or `None` when the daemon answers otherwise (QUOTA at
    /// the ring cap) or the connection is gone.
    pub fn try_open_ring(&self) -> Option<(ClientRing<'_>, OwnedFd)> {
        self.try_open_ring_at()
            .map(|(_, ring, doorbell)| (ring, doorbell))
    }

    /// [`RawSession::try_open_ring`], with the ring's index.
    pub fn try_open_ring_at(&self) -> Option<(u32, ClientRing<'_>, OwnedFd)> {
        self.conn
            .try_send_with_fds(&ControlRequest::RingOpen.encode(), &[])
            .ok()?;
        let Ok(Some((Some(Reply::RingOpened { index, .. }), Some(doorbell)))) =
            self.conn.try_recv()
        else {
            return None;
        };
        let ring = self.map.client_ring(self.layout(), index)?;
        Some((index, ring, doorbell))
    }

    /// Opens a ring as a client that follows the ready word does; returns
    /// the ring, its doorbell and where its ready word lies.
    /// (`None` for the ready word: a daemon without ready words.)
    pub fn try_open_ring_ready(&self) -> Option<(u32, ClientRing<'_>, OwnedFd, Option<usize>)> {
        self.conn
            .try_send_with_fds(&ControlRequest::RingOpen.encode(), &[])
            .ok()?;
        let Ok(Some((Some(Reply::RingOpened { index, ready_at }), Some(doorbell)))) =
            self.conn.try_recv()
        else {
            return None;
        };
        let ring = self.map.client_ring(self.layout(), index)?;
        let ready_at = ready_at.and_then(|at| usize::try_from(at).ok());
        Some((index, ring, doorbell, ready_at))
    }

    /// The client's side of ring `index` (opened before).
    pub fn ring(&self, index: u32) -> Option<ClientRing<'_>> {
        self.map.client_ring(self.layout(), index)
    }

    /// The client's side of the ready word at `offset` (see
    /// [`RawSession::try_open_ring_ready`]).
    pub fn ready_word(&self, offset: usize) -> Option<hreg_proto::ring::ReadyWord<'_>> {
        self.map.client_ready(offset)
    }

    /// Bytes of the session mapping.
    pub fn mapping_len(&self) -> usize {
        self.map.len()
    }

    /// The CQ tail word of ring `index`, read by its offset (PROTOCOL.md
    /// §2), as a client in another language would.
    pub fn cq_tail(&self, index: u32) -> u32 {
        const CQ_TAIL_AT: usize = 192;
        let mut word = [0u8; 4];
        let at = index as usize * self.welcome.ring_stride as usize + CQ_TAIL_AT;
        assert!(
            self.map.load(at, &mut word),
            "ring {index} outside the mapping"
        );
        u32::from_le_bytes(word)
    }

    /// Random bytes over `[offset, offset + len)` of the mapping (clipped
    /// to it).
    pub fn scribble_range(&self, seed: u64, offset: usize, len: usize) {
        let end = offset.saturating_add(len).min(self.map.len());
        let noise = crate::Rng::new(seed).bytes(end.saturating_sub(offset));
        self.map.store(offset, &noise);
    }

    /// Every byte of the mapping, for scribbling.
    pub fn scribble(&self, seed: u64) {
        self.scribble_range(seed, 0, self.map.len());
    }
}

/// Submits raw entry bytes at the ring's current tail, rings the doorbell
/// and waits for their completions, which it reads and releases.
pub fn submit_raw(
    ring: &ClientRing<'_>,
    doorbell: &OwnedFd,
    counters: &mut ClientCounters,
    entries: &[[u8; ENTRY_SIZE]],
) -> Vec<Cqe> {
    for entry in entries {
        ring.push(counters, entry);
    }
    ring.flush(counters);
    let _ = rustix::io::write(doorbell.as_fd(), &1u64.to_ne_bytes());
    let began = Instant::now();
    let mut completions = Vec::new();
    while completions.len() < entries.len() {
        match ring.pop(counters) {
            Some(raw) => completions.push(Cqe::decode(&raw)),
            None => {
                assert!(began.elapsed() < crate::PATIENCE, "no completion");
                std::thread::yield_now();
            }
        }
    }
    ring.release(counters);
    completions
}

/// Whether the daemon has published `n` completions on `ring` (the `n`th
/// carries its stamp), whatever the client read of them.
pub fn completed(ring: &ClientRing<'_>, n: u32) -> bool {
    n == 0 || ring.ready(&ClientCounters::at(n, n - 1))
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
