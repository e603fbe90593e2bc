//! The control thread: the listening socket, HELLO/WELCOME, the slow requests
//! (rings, stats, goodbye), end of sessions on EOF, and shutdown on signals.
//!
//! Everything here is non-blocking and driven by one `epoll`: a peer that is
//! slow, silent or hostile can only lose its own connection, never hold up
//! the accept loop.

use crate::config::{Args, Config};
use crate::ratelimit::warn_limited;
use crate::registry::{ListFilter, Registry};
use crate::session::{Doorbell, Peer, Session};
use crate::shm::SessionMemory;
use crate::worker::Worker;
use anyhow::{bail, Context};
use hreg_proto::control::{
    Reply, Request, SessionInfo, StatsReply, UidUsage, UsageReply, Welcome, WorkerUsage,
    MAX_MESSAGE, MAX_PAGE,
};
use hreg_proto::{Status, PROTOCOL_VERSION};
use rustix::event::epoll;
use rustix::fd::{AsFd, BorrowedFd, OwnedFd};
use rustix::io::Errno;
use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvFlags, SendAncillaryBuffer, SendAncillaryMessage,
    SendFlags, SocketAddrUnix, SocketFlags, SocketType,
};
use std::collections::HashMap;
use std::io::{IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A connection must say HELLO within this time or it is dropped.
const HELLO_TIMEOUT: Duration = Duration::from_secs(5);

/// Connections waiting for HELLO at most; more are refused at accept.
const MAX_PENDING: usize = 256;

const LISTENER_KEY: u64 = 0;
const BELL_KEY: u64 = 1;
const STOP_KEY: u64 = 2;
const RELOAD_KEY: u64 = 3;

/// Where the daemon learns of signals: each descriptor becomes readable when
/// its signal arrives (signal-hook's self-pipe).
pub struct Signals<'a> {
    /// SIGTERM, SIGINT: shut down.
    pub stop: BorrowedFd<'a>,
    /// SIGHUP: re-read the limits from the config file.
    pub reload: BorrowedFd<'a>,
    /// The command line the daemon was started with.
    pub args: &'a Args,
}
const FIRST_CONN_KEY: u64 = 16;

/// The uid allowed to see everything.
const ROOT: u32 = 0;

/// Requests per second, measured over the last whole second or more.
#[derive(Default)]
struct OpsRate {
    since: Option<(Instant, u64)>,
    per_sec: u64,
}

impl OpsRate {
    fn sample(&mut self, ops: u64) {
        let now = Instant::now();
        match self.since {
            Some((at, before)) if now.duration_since(at) >= Duration::from_secs(1) => {
                let secs = now.duration_since(at).as_secs_f64();
                self.per_sec = (ops.saturating_sub(before) as f64 / secs) as u64;
                self.since = Some((now, ops));
            }
            Some(_) => {}
            None => self.since = Some((now, ops)),
        }
    }
}

/// A connection, before and after HELLO.
struct Conn {
    fd: OwnedFd,
    accepted: Instant,
    session: Option<Arc<Session>>,
}

/// The running daemon as the control thread sees it.
pub struct Daemon {
    config: Config,
    registry: Arc<Registry>,
    workers: Vec<Arc<Worker>>,
    bell: Arc<Doorbell>,
    conns: HashMap<u64, Conn>,
    next_key: u64,
    next_session: u64,
    /// The command line, to re-read the config file on SIGHUP.
    args: Args,
    reload_fd: OwnedFd,
    started: Instant,
    ops_rate: OpsRate,
    /// Sessions attached or still releasing their references (what STATS
    /// reports: once a session stops counting, its references are gone).
    live_sessions: Arc<AtomicUsize>,
    poll: OwnedFd,
    listener: OwnedFd,
    /// The socket file we created, removed at shutdown.
    socket_file: Option<PathBuf>,
}

impl Daemon {
    /// Binds the socket and starts the workers. `stop` becomes readable when
    /// the daemon must shut down.
    pub fn start(
        config: Config,
        signals: Signals<'_>,
    ) -> anyhow::Result<(Daemon, Vec<std::thread::JoinHandle<()>>)> {
        let (listener, socket_file) = match activated_listener()? {
            Some(listener) => (listener, None),
            None => (
                bind_listener(&config.socket, config.socket_mode, config.socket_group)?,
                Some(config.socket.clone()),
            ),
        };
        let registry = Arc::new(Registry::new(config.shards, config.limits()));
        let mut workers = Vec::new();
        let mut threads = Vec::new();
        for id in 0..config.workers {
            let worker = Arc::new(Worker::new()?);
            let runner = Arc::clone(&worker);
            threads.push(
                std::thread::Builder::new()
                    .name(format!("hreg-worker-{id}"))
                    .spawn(move || {
                        if let Err(e) = runner.run() {
                            tracing::error!(worker = id, error = %e, "worker failed");
                        }
                    })?,
            );
            workers.push(worker);
        }
        let poll = epoll::create(epoll::CreateFlags::CLOEXEC)?;
        let bell = Arc::new(Doorbell::new()?);
        epoll::add(
            &poll,
            &listener,
            epoll::EventData::new_u64(LISTENER_KEY),
            epoll::EventFlags::IN,
        )?;
        epoll::add(
            &poll,
            bell.fd(),
            epoll::EventData::new_u64(BELL_KEY),
            epoll::EventFlags::IN,
        )?;
        epoll::add(
            &poll,
            signals.stop,
            epoll::EventData::new_u64(STOP_KEY),
            epoll::EventFlags::IN,
        )?;
        epoll::add(
            &poll,
            signals.reload,
            epoll::EventData::new_u64(RELOAD_KEY),
            epoll::EventFlags::IN,
        )?;
        Ok((
            Daemon {
                socket_file,
                config,
                args: signals.args.clone(),
                reload_fd: signals.reload.try_clone_to_owned()?,
                registry,
                workers,
                bell,
                conns: HashMap::new(),
                next_key: FIRST_CONN_KEY,
                next_session: 1,
                started: Instant::now(),
                ops_rate: OpsRate::default(),
                live_sessions: Arc::default(),
                poll,
                listener,
            },
            threads,
        ))
    }

    /// Serves until `stop` is readable, then tells every client and stops the
    /// workers.
    pub fn run(mut self, threads: Vec<std::thread::JoinHandle<()>>) -> anyhow::Result<()> {
        let mut events = Vec::with_capacity(256);
        // Pet the watchdog twice per period; look at the world at least once
        // a second.
        let watchdog = sd_notify::watchdog_enabled();
        let period = watchdog.map_or(Duration::from_secs(1), |w| {
            (w / 2).min(Duration::from_secs(1))
        });
        let tick = rustix::time::Timespec {
            tv_sec: period.as_secs() as i64,
            tv_nsec: i64::from(period.subsec_nanos()),
        };
        let mut last_status = String::new();
        'serve: loop {
            events.clear();
            match epoll::wait(
                &self.poll,
                rustix::buffer::spare_capacity(&mut events),
                Some(&tick),
            ) {
                Ok(_) | Err(Errno::INTR) => {}
                Err(e) => return Err(e).context("epoll_wait"),
            }
            for event in &events {
                match event.data.u64() {
                    LISTENER_KEY => self.accept_all(),
                    BELL_KEY => {
                        self.bell.drain();
                        self.drop_closed_sessions();
                    }
                    STOP_KEY => break 'serve,
                    RELOAD_KEY => self.reload(),
                    key => self.readable(key),
                }
            }
            self.drop_silent_connections();
            let ops = self.ops();
            self.ops_rate.sample(ops);
            if watchdog.is_some() {
                let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]);
            }
            let status = self.status_line();
            if status != last_status {
                let _ = sd_notify::notify(&[sd_notify::NotifyState::Status(&status)]);
                last_status = status;
            }
        }
        self.shutdown(threads);
        Ok(())
    }

    fn shutdown(mut self, threads: Vec<std::thread::JoinHandle<()>>) {
        tracing::info!(sessions = self.attached(), "shutting down");
        let keys: Vec<u64> = self.conns.keys().copied().collect();
        for key in keys {
            if let Some(conn) = self.conns.get(&key) {
                if conn.session.is_some() {
                    let _ = send(conn.fd.as_fd(), &Reply::Shutdown, None);
                }
            }
            self.close(key, "daemon stopping");
        }
        for worker in &self.workers {
            worker.stop();
        }
        for thread in threads {
            let _ = thread.join();
        }
        if let Some(path) = self.socket_file.take() {
            let _ = std::fs::remove_file(path);
        }
    }

    /// SIGHUP: re-reads the config file (flags still win) and applies what
    /// can change while serving: the limits on values, objects, bytes and
    /// sessions. The rest needs a restart, and the log says so.
    fn reload(&mut self) {
        let mut buf = [0u8; 64];
        while matches!(rustix::io::read(&self.reload_fd, &mut buf), Ok(n) if n > 0) {}
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Reloading]);
        match Config::from_args(&self.args) {
            Ok(new) => {
                let fixed = Config {
                    max_value_size: self.config.max_value_size,
                    max_objects: self.config.max_objects,
                    max_bytes: self.config.max_bytes,
                    uid_max_objects: self.config.uid_max_objects,
                    uid_max_bytes: self.config.uid_max_bytes,
                    max_sessions: self.config.max_sessions,
                    log_level: self.config.log_level.clone(),
                    ..new.clone()
                };
                if fixed != self.config {
                    tracing::warn!(
                        "config changes other than limits take effect at the next start"
                    );
                }
                self.registry.set_limits(new.limits());
                self.config.max_value_size = new.max_value_size;
                self.config.max_objects = new.max_objects;
                self.config.max_bytes = new.max_bytes;
                self.config.uid_max_objects = new.uid_max_objects;
                self.config.uid_max_bytes = new.uid_max_bytes;
                self.config.max_sessions = new.max_sessions;
                tracing::info!(limits = ?new.limits(), max_sessions = new.max_sessions, "reloaded limits");
            }
            Err(e) => tracing::error!("reload refused, keeping the old limits: {e}"),
        }
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
    }

    /// The one-line summary systemd shows as the service's status.
    fn status_line(&self) -> String {
        let usage = self.registry.usage();
        format!(
            "{} sessions, {} objects, {} value bytes",
            self.attached(),
            usage.objects,
            usage.value_bytes
        )
    }

    fn attached(&self) -> usize {
        self.conns.values().filter(|c| c.session.is_some()).count()
    }

    fn accept_all(&mut self) {
        loop {
            match rustix::net::accept_with(
                &self.listener,
                SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
            ) {
                Ok(fd) => {
                    let pending = self.conns.len() - self.attached();
                    if pending >= MAX_PENDING {
                        warn_limited(|| {
                            tracing::warn!("too many connections without HELLO; refusing one")
                        });
                        continue;
                    }
                    let key = self.next_key;
                    self.next_key += 1;
                    if epoll::add(
                        &self.poll,
                        &fd,
                        epoll::EventData::new_u64(key),
                        epoll::EventFlags::IN,
                    )
                    .is_ok()
                    {
                        self.conns.insert(
                            key,
                            Conn {
                                fd,
                                accepted: Instant::now(),
                                session: None,
                            },
                        );
                    }
                }
                Err(Errno::AGAIN) => return,
                Err(Errno::INTR | Errno::CONNABORTED) => continue,
                Err(e) => {
                    warn_limited(|| tracing::warn!(error = %e, "accept failed"));
                    return;
                }
            }
        }
    }

    /// Reads every message waiting on a connection.
    fn readable(&mut self, key: u64) {
        let mut buf = [0u8; MAX_MESSAGE];
        loop {
            let Some(conn) = self.conns.get(&key) else {
                return;
            };
            let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(8))];
            let mut ancillary = RecvAncillaryBuffer::new(&mut space);
            let received = rustix::net::recvmsg(
                &conn.fd,
                &mut [IoSliceMut::new(&mut buf)],
                &mut ancillary,
                RecvFlags::DONTWAIT | RecvFlags::CMSG_CLOEXEC,
            );
            // Descriptors we did not ask for are closed here, unread.
            drop(ancillary);
            match received {
                Ok(msg) if msg.bytes == 0 => return self.close(key, "end of file"),
                Ok(msg) if msg.flags.contains(rustix::net::ReturnFlags::TRUNC) => {
                    return self.refuse_or_close(key, "message too long");
                }
                Ok(msg) => {
                    if !self.request(key, &buf[..msg.bytes]) {
                        return;
                    }
                }
                Err(Errno::AGAIN) => return,
                Err(Errno::INTR) => continue,
                Err(_) => return self.close(key, "socket error"),
            }
        }
    }

    /// Handles one request; returns false when the connection is gone.
    fn request(&mut self, key: u64, bytes: &[u8]) -> bool {
        let attached = self.conns.get(&key).and_then(|c| c.session.clone());
        let request = match Request::decode(bytes) {
            Ok(request) => request,
            Err(e) => {
                self.refuse_or_close(key, &format!("bad message: {e}"));
                return false;
            }
        };
        match (request, attached) {
            (Request::Hello { version, name }, None) => self.hello(key, version, name),
            (Request::Hello { .. }, Some(_)) => {
                self.close(key, "second HELLO");
                false
            }
            (_, None) => {
                self.refuse_or_close(key, "first message must be HELLO");
                false
            }
            (Request::RingOpen, Some(session)) => self.ring_open(key, &session),
            (Request::RingClose { index }, Some(session)) => {
                for worker in &self.workers {
                    worker.close_ring(session.id, index);
                }
                self.reply(key, &Reply::Ack, None)
            }
            (Request::Stats, Some(_)) => {
                let usage = self.registry.usage();
                let stats = StatsReply {
                    objects: usage.objects,
                    value_bytes: usage.value_bytes,
                    sessions: self.live_sessions.load(Ordering::Acquire) as u64,
                    ops: self.ops(),
                };
                self.reply(key, &Reply::Stats(stats), None)
            }
            (Request::Goodbye, Some(_)) => {
                self.close(key, "goodbye");
                false
            }
            (Request::Sessions { cursor }, Some(caller)) => {
                let reply = self.sessions_page(cursor, caller.peer.uid);
                self.reply(key, &reply, None)
            }
            (
                Request::List {
                    cursor,
                    limit,
                    detached_only,
                    owner,
                },
                Some(caller),
            ) => {
                let reply = self.objects_page(cursor, limit, detached_only, owner, caller.peer.uid);
                self.reply(key, &reply, None)
            }
            (Request::Usage, Some(caller)) => {
                let reply = Reply::Usage(self.usage(caller.peer.uid));
                self.reply(key, &reply, None)
            }
        }
    }

    /// Attached sessions with ids from `cursor` on; all of them for root,
    /// the caller's own uid's otherwise.
    fn sessions_page(&self, cursor: u64, caller_uid: u32) -> Reply {
        let mut visible: Vec<&Arc<Session>> = self
            .conns
            .values()
            .filter_map(|c| c.session.as_ref())
            .filter(|s| s.id >= cursor && (caller_uid == ROOT || s.peer.uid == caller_uid))
            .collect();
        visible.sort_by_key(|s| s.id);
        let page = MAX_PAGE as usize;
        let next = visible.get(page).map_or(0, |s| s.id);
        let sessions = visible
            .into_iter()
            .take(page)
            .map(|s| SessionInfo {
                id: s.id,
                pid: s.peer.pid as u32,
                uid: s.peer.uid,
                gid: s.peer.gid,
                rings: s.open_ring_count() as u32,
                references: s.holder.reference_count(),
                name: s.name.clone(),
            })
            .collect();
        Reply::Sessions { sessions, next }
    }

    /// A page of objects; only root may look at other users' objects.
    fn objects_page(
        &self,
        cursor: u64,
        limit: u32,
        detached_only: bool,
        owner: Option<u32>,
        caller_uid: u32,
    ) -> Reply {
        let owner = match owner {
            Some(uid) if caller_uid != ROOT && uid != caller_uid => {
                return Reply::Error {
                    status: Status::Denied as u32,
                    message: "only root may list other users' objects".into(),
                };
            }
            None if caller_uid != ROOT => Some(caller_uid),
            owner => owner,
        };
        let limit = if limit == 0 {
            MAX_PAGE
        } else {
            limit.min(MAX_PAGE)
        };
        let filter = ListFilter {
            detached_only,
            owner,
        };
        let (objects, next) = self.registry.list(cursor, limit as usize, filter);
        Reply::Objects { objects, next }
    }

    fn usage(&self, caller_uid: u32) -> UsageReply {
        let limits = self.registry.limits();
        UsageReply {
            uptime_secs: self.started.elapsed().as_secs(),
            ops_per_sec: self.ops_rate.per_sec,
            max_objects: limits.max_objects,
            max_bytes: limits.max_bytes,
            uid_max_objects: limits.uid_max_objects,
            uid_max_bytes: limits.uid_max_bytes,
            shards: self.registry.shard_occupancy(),
            uids: self
                .registry
                .usage_by_uid()
                .into_iter()
                .filter(|&(uid, _)| caller_uid == ROOT || uid == caller_uid)
                .map(|(uid, usage)| UidUsage {
                    uid,
                    objects: usage.objects,
                    value_bytes: usage.value_bytes,
                })
                .collect(),
            workers: self
                .workers
                .iter()
                .map(|w| WorkerUsage {
                    rings: u32::try_from(w.load()).unwrap_or(u32::MAX),
                    ops: w.ops(),
                })
                .collect(),
        }
    }

    fn ops(&self) -> u64 {
        self.workers.iter().map(|w| w.ops()).sum()
    }

    fn hello(&mut self, key: u64, version: u32, name: String) -> bool {
        if version != PROTOCOL_VERSION {
            let message =
                format!("daemon speaks protocol {PROTOCOL_VERSION}, client sent {version}");
            warn_limited(|| tracing::warn!(version, "refused attach: {message}"));
            let _ = self.reply(
                key,
                &Reply::Refused {
                    status: Status::Version as u32,
                    message,
                },
                None,
            );
            self.close(key, "version mismatch");
            return false;
        }
        if self.attached() >= self.config.max_sessions {
            let message = format!("session cap ({}) reached", self.config.max_sessions);
            warn_limited(|| tracing::warn!("refused attach: {message}"));
            let _ = self.reply(
                key,
                &Reply::Refused {
                    status: Status::Quota as u32,
                    message,
                },
                None,
            );
            self.close(key, "session cap");
            return false;
        }
        let Some(conn) = self.conns.get(&key) else {
            return false;
        };
        let peer = match rustix::net::sockopt::socket_peercred(&conn.fd) {
            Ok(cred) => Peer {
                pid: cred.pid.as_raw_nonzero().get(),
                uid: cred.uid.as_raw(),
                gid: cred.gid.as_raw(),
            },
            Err(_) => {
                self.close(key, "no peer credentials");
                return false;
            }
        };
        let memory = match SessionMemory::create(self.config.layout()) {
            Ok(memory) => memory,
            Err(e) => {
                warn_limited(|| tracing::warn!(error = %e, "cannot create session memory"));
                let message = format!("cannot create session memory: {e}");
                let _ = self.reply(
                    key,
                    &Reply::Refused {
                        status: Status::Io as u32,
                        message,
                    },
                    None,
                );
                self.close(key, "no memory");
                return false;
            }
        };
        let id = self.next_session;
        self.next_session += 1;
        let layout = self.config.layout();
        let welcome = Welcome {
            version: PROTOCOL_VERSION,
            session_id: id,
            max_value_size: self.config.max_value_size,
            max_objects: self.config.max_objects,
            max_bytes: self.config.max_bytes,
            ring_entries: layout.entries,
            data_size: layout.data_size,
            max_rings: layout.max_rings,
            ring_stride: layout.ring_stride() as u64,
        };
        let session = Arc::new(Session::new(
            id,
            peer,
            name,
            memory,
            Arc::clone(&self.registry),
            Arc::clone(&self.bell),
            Arc::clone(&self.live_sessions),
        ));
        if !self.reply(key, &Reply::Welcome(welcome), Some(session.memory.fd())) {
            return false;
        }
        tracing::info!(session = id, pid = peer.pid, uid = peer.uid, name = %session.name, "session attached");
        if let Some(conn) = self.conns.get_mut(&key) {
            conn.session = Some(session);
        }
        true
    }

    fn ring_open(&mut self, key: u64, session: &Arc<Session>) -> bool {
        let Some(index) = session.claim_ring() else {
            let message = format!("ring cap ({}) reached", session.memory.layout().max_rings);
            return self.reply(
                key,
                &Reply::Error {
                    status: Status::Quota as u32,
                    message,
                },
                None,
            );
        };
        let doorbell = match rustix::event::eventfd(
            0,
            rustix::event::EventfdFlags::CLOEXEC | rustix::event::EventfdFlags::NONBLOCK,
        ) {
            Ok(fd) => fd,
            Err(e) => {
                session.free_ring(index);
                let message = format!("cannot create doorbell: {e}");
                return self.reply(
                    key,
                    &Reply::Error {
                        status: Status::Io as u32,
                        message,
                    },
                    None,
                );
            }
        };
        if let Some(view) = session.memory.ring(index) {
            view.reset();
        }
        if !self.reply(key, &Reply::RingOpened { index }, Some(doorbell.as_fd())) {
            session.free_ring(index);
            return false;
        }
        let worker = self
            .workers
            .iter()
            .min_by_key(|w| w.load())
            .expect("at least one worker");
        worker.serve(Arc::clone(session), index, doorbell);
        true
    }

    /// Sends a reply; a peer that cannot take it loses its connection.
    fn reply(&mut self, key: u64, reply: &Reply, fd: Option<BorrowedFd<'_>>) -> bool {
        let Some(conn) = self.conns.get(&key) else {
            return false;
        };
        match send(conn.fd.as_fd(), reply, fd) {
            Ok(()) => true,
            Err(_) => {
                self.close(key, "cannot send reply");
                false
            }
        }
    }

    /// Refuses a connection that has not said HELLO yet, or closes an
    /// attached one.
    fn refuse_or_close(&mut self, key: u64, why: &str) {
        let attached = self.conns.get(&key).is_some_and(|c| c.session.is_some());
        if !attached {
            let message = why.to_string();
            let _ = self.reply(
                key,
                &Reply::Refused {
                    status: Status::Protocol as u32,
                    message,
                },
                None,
            );
        }
        warn_limited(|| tracing::warn!(reason = why, "protocol error"));
        self.close(key, why);
    }

    fn close(&mut self, key: u64, why: &str) {
        let Some(conn) = self.conns.remove(&key) else {
            return;
        };
        if let Some(session) = conn.session {
            tracing::info!(
                session = session.id,
                pid = session.peer.pid,
                uid = session.peer.uid,
                name = %session.name,
                reason = why,
                "session detached"
            );
            session.close();
            for worker in &self.workers {
                worker.nudge();
            }
        }
        // Dropping the fd removes it from the epoll set.
    }

    fn drop_closed_sessions(&mut self) {
        let closed: Vec<u64> = self
            .conns
            .iter()
            .filter(|(_, c)| c.session.as_ref().is_some_and(|s| s.is_closed()))
            .map(|(k, _)| *k)
            .collect();
        for key in closed {
            self.close(key, "closed by worker");
        }
    }

    fn drop_silent_connections(&mut self) {
        let silent: Vec<u64> = self
            .conns
            .iter()
            .filter(|(_, c)| c.session.is_none() && c.accepted.elapsed() > HELLO_TIMEOUT)
            .map(|(k, _)| *k)
            .collect();
        for key in silent {
            self.close(key, "no HELLO in time");
        }
    }
}

/// Sends one message, with at most one descriptor, never blocking and never
/// raising SIGPIPE.
fn send(socket: BorrowedFd<'_>, reply: &Reply, fd: Option<BorrowedFd<'_>>) -> std::io::Result<()> {
    let bytes = reply.encode();
    let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut ancillary = SendAncillaryBuffer::new(&mut space);
    let fds;
    if let Some(fd) = fd {
        fds = [fd];
        ancillary.push(SendAncillaryMessage::ScmRights(&fds));
    }
    rustix::net::sendmsg(
        socket,
        &[IoSlice::new(&bytes)],
        &mut ancillary,
        SendFlags::NOSIGNAL | SendFlags::DONTWAIT,
    )?;
    Ok(())
}

/// The listening socket systemd passed (socket activation), if any.
fn activated_listener() -> anyhow::Result<Option<OwnedFd>> {
    let mut fds = sd_notify::listen_fds().context("bad LISTEN_FDS from the service manager")?;
    let Some(raw) = fds.next() else {
        return Ok(None);
    };
    if fds.len() > 0 {
        bail!("socket activation passed more than one socket; hregd listens on one");
    }
    // SAFETY: LISTEN_FDS/LISTEN_PID name this process, so descriptor `raw`
    // was opened for us by the service manager and nothing else owns it; we
    // take ownership exactly once.
    let listener = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw) };
    let kind = rustix::net::sockopt::socket_type(&listener)
        .context("activated descriptor is not a socket")?;
    if kind != SocketType::SEQPACKET {
        bail!("the activated socket must be SOCK_SEQPACKET (ListenSequentialPacket=)");
    }
    rustix::fs::fcntl_setfl(&listener, rustix::fs::OFlags::NONBLOCK)?;
    tracing::info!("listening on the socket passed by the service manager");
    Ok(Some(listener))
}

/// Creates the listening socket at `path`: replaces a stale socket file of a
/// dead daemon, refuses to steal a live one or to touch anything else.
fn bind_listener(path: &Path, mode: u32, group: Option<u32>) -> anyhow::Result<OwnedFd> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.exists() {
            let dir_mode = if mode & 0o070 != 0 { 0o755 } else { 0o700 };
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(dir_mode)
                .create(dir)
                .with_context(|| format!("cannot create socket directory {}", dir.display()))?;
        }
    }
    let address =
        SocketAddrUnix::new(path).with_context(|| format!("bad socket path {}", path.display()))?;
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            let probe = rustix::net::socket_with(
                AddressFamily::UNIX,
                SocketType::SEQPACKET,
                SocketFlags::CLOEXEC,
                None,
            )?;
            match rustix::net::connect(&probe, &address) {
                Ok(()) => bail!(
                    "another hregd is serving at {}; not taking its socket",
                    path.display()
                ),
                Err(Errno::CONNREFUSED) => {
                    tracing::info!(path = %path.display(), "replacing stale socket of a dead daemon");
                    std::fs::remove_file(path).with_context(|| {
                        format!("cannot remove stale socket {}", path.display())
                    })?;
                }
                Err(e) => bail!("cannot tell whether {} is in use: {e}", path.display()),
            }
        }
        Ok(_) => bail!(
            "{} exists and is not a socket; not replacing it",
            path.display()
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("cannot inspect {}", path.display())),
    }
    let listener = rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
        None,
    )?;
    // The socket file is created with the umask applied, so it is never
    // reachable by more users than `mode` allows, even for an instant.
    let old_umask = rustix::process::umask(rustix::fs::Mode::from_raw_mode(!mode & 0o777));
    let bound = rustix::net::bind(&listener, &address);
    rustix::process::umask(old_umask);
    bound.with_context(|| format!("cannot bind {}", path.display()))?;
    if let Some(gid) = group {
        rustix::fs::chown(path, None, Some(rustix::process::Gid::from_raw(gid)))
            .with_context(|| format!("cannot give {} to group {gid}", path.display()))?;
    }
    rustix::net::listen(&listener, 128)?;
    Ok(listener)
}
