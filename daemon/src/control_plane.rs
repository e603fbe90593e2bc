//! The control thread's connections: accepting them (with fair shares per
//! uid, see [`crate::admission`]), HELLO and WELCOME, RESUME (a session an
//! adopted state kept, taken back by its client within the grace period),
//! the slow requests (rings, admin requests, goodbye), end of sessions on
//! EOF, and telling clients at shutdown.
//!
//! Everything here is non-blocking and driven by one `epoll` (the event
//! loop is [`crate::daemon`]'s): a peer that is slow, silent or hostile can
//! only lose its own connection, never hold up the accept loop. Work per
//! wakeup is bounded per uid, not per connection ([`CONTROL_BUDGET`]: a uid
//! with thousands of connections gets the same control work per wake as a
//! uid with one), SESSIONS pages come from per-uid indexes, and so one busy
//! uid cannot starve the others, the watchdog or the cleanup of closed
//! sessions. Across wakeups each uid gets at most [`CONTROL_SHARE`] of the
//! thread's time per [`SHARE_WINDOW`] (its connections are held past it),
//! so that no uid's requests keep a core busy for the daemon: the control
//! thread's work is the rare kind (attach, rings, admin requests).
//!
//! What the daemon holds for a uid is counted ([`UidHold`]): its rings
//! (`uid_max_rings`), and the descriptors it costs (connections, the
//! doorbells of its sessions, descriptors sent and not yet read), which
//! may take at most a share of the descriptor budget ([`FdBudget`]). A
//! descriptor-carrying reply is sent only when the peer has read the
//! connection's earlier ones (`SIOCOUTQ`) and its uid has fewer than
//! [`FdBudget::inflight_cap`] in flight; until then the connection is not
//! read (it is *held*). Descriptors in flight are charged by the kernel to
//! hregd's user, and past its RLIMIT_NOFILE every `sendmsg` with
//! descriptors fails (ETOOMANYREFS): no uid can bring that about alone.
//!
//! How a packet comes in and goes out on one connection, and the budget
//! itself, are [`transport`]'s; what is here is the routing of requests
//! and the connections' lifecycle. A handler says whether the connection
//! is still there ([`Connection`]).

use crate::admin::{self, OpsRate};
use crate::admission::{Admission, Arrival, PARKED_CAP, WAITING_SHARE};
use crate::config::{Config, Limits};
use crate::doorbell::Doorbell;
use crate::listener::{Accepted, Listener};
use crate::peer::{peer_process, unread_bytes, Peer, Process};
use crate::ratelimit::warn_limited;
use crate::session::Session;
use crate::session_memory::SessionMemory;
use crate::worker::Worker;
use anyhow::Context;
use hreg_proto::control::{
    ControlRequest, MapDomain, Reply, UidHolds, UsageReply, Welcome, WorkerUsage, MAX_MESSAGE,
};
use hreg_proto::pins::PIN_ENTRIES;
use hreg_proto::{Limit, Status, PROTOCOL_VERSION};
use hreg_registry::{Holder, KeptSession, Registry, ROOT};
use rustix::event::epoll;
use rustix::fd::{AsFd, BorrowedFd, OwnedFd};
use rustix::io::Errno;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use transport::{has_bytes_waiting, os_refusal, refuse, send, FdBudget};

mod transport;

/// A connection must say HELLO within this time of being read, or it is
/// refused.
const HELLO_TIMEOUT: Duration = Duration::from_secs(5);

/// Connections accepted per wakeup; more wait for the next one (the
/// listener stays readable), so a flood of connects cannot starve the rest.
const ACCEPT_BATCH: usize = 64;

/// Messages read from one connection per wakeup; the rest wait for the
/// next one (epoll is level-triggered).
const MESSAGES_PER_WAKEUP: usize = 8;

/// Control work one uid gets per wakeup, over all its connections, in
/// microseconds of the control thread: a request costs the time it took,
/// at least [`MIN_REQUEST_COST`] (a LIST page that scans many slots costs
/// what it scanned). The rest waits for the next wakeup (epoll is
/// level-triggered), so another uid's request waits for at most one such
/// share per uid.
const CONTROL_BUDGET: u32 = 250;

/// The least a request costs of its uid's [`CONTROL_BUDGET`].
const MIN_REQUEST_COST: u32 = 5;

/// Control work one uid gets per [`SHARE_WINDOW`] across wakeups, in
/// microseconds: a fifth of a core. Past it the uid's connections are held
/// (not read) until the window ends. The per-wakeup budget alone lets a
/// uid that floods the control thread keep it busy, wakeup after wakeup,
/// and so take a core from every other process on the host (a LIST flood
/// kept hregd at a whole core, and with every attack at once an honest
/// client of another uid kept 13% of its ops); a share bounds what any
/// uid's requests take of the machine.
const CONTROL_SHARE: u64 = 20_000;

/// The window [`CONTROL_SHARE`] is counted over.
const SHARE_WINDOW: Duration = Duration::from_millis(100);

/// How often the connections are looked over (silent ones, hoarders).
const SCAN_EVERY: Duration = Duration::from_millis(100);

/// How often held connections are looked at again while there are some.
const HELD_RECHECK: Duration = Duration::from_millis(5);

/// epoll keys below this are the daemon's own (listener, signals, bell).
pub const FIRST_CONN_KEY: u64 = 16;
pub const LISTENER_KEY: u64 = 0;
pub const BELL_KEY: u64 = 1;

/// The first message of a connection, past its version: HELLO (a new
/// session) or RESUME (a kept one taken back, with its memory).
enum Handshake {
    Hello {
        name: String,
    },
    Resume {
        id: u64,
        token: [u8; 16],
        fds: Vec<OwnedFd>,
    },
}

/// A session HELLO or RESUME admitted, to be welcomed.
struct Admitted {
    peer: Peer,
    name: String,
    holder: Holder,
    memory: SessionMemory,
    memfd: OwnedFd,
    resumed: bool,
}

/// Why a HELLO or RESUME is refused: the status and text the client gets
/// (a message naming the limit, for QUOTA), and the reason for the log.
struct Refusal {
    status: Status,
    message: String,
    why: &'static str,
}

impl Refusal {
    fn new(status: Status, message: String, why: &'static str) -> Refusal {
        Refusal {
            status,
            message,
            why,
        }
    }
}

/// Whether a connection is still there after handling what it sent: a
/// handler that closed it says so, and its caller stops using its key.
#[must_use]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Connection {
    /// Still there: more may be read from it and sent to it.
    Open,
    /// Closed (refused, gone, or it could not take a reply).
    Closed,
}

/// A connection and where it stands.
struct Conn {
    fd: OwnedFd,
    peer: Peer,
    state: ConnState,
    /// The session's doorbell for each worker that serves one of its rings
    /// (made with the first such ring).
    bells: Vec<Option<Arc<Doorbell>>>,
    /// The rings this connection opened and has not closed: each one's
    /// index and the worker serving it (what USAGE counts per worker, since
    /// a worker's own count changes only when it wakes).
    rings: Vec<(u32, usize)>,
    /// Descriptors sent on this connection that the peer may not have read
    /// yet (cleared once `SIOCOUTQ` says it read everything).
    unread_fds: usize,
    /// Not read (out of the epoll set) until its descriptors in flight are
    /// read.
    held: bool,
}

impl Conn {
    fn new(fd: OwnedFd, peer: Peer) -> Conn {
        Conn {
            fd,
            peer,
            state: ConnState::Parked,
            bells: Vec::new(),
            rings: Vec::new(),
            unread_fds: 0,
            held: false,
        }
    }

    fn bell_count(&self) -> usize {
        self.bells.iter().flatten().count()
    }
}

/// What the daemon holds for one uid, and the control work it had this
/// wakeup.
#[derive(Debug, Default)]
struct UidHold {
    /// Connections (waiting, parked, attached).
    conns: usize,
    /// Session doorbells (one per session and worker serving it).
    bells: usize,
    /// Open rings.
    rings: usize,
    /// Descriptors sent and maybe not read yet.
    inflight: usize,
    /// Control work done this wakeup.
    work: u32,
    /// Control work done in the share window that began at `window`
    /// (microseconds).
    recent: u64,
    window: Option<Instant>,
}

impl UidHold {
    /// Whether the uid had its [`CONTROL_SHARE`] of the current window.
    fn over_share(&mut self, now: Instant) -> bool {
        match self.window {
            Some(began) if now.duration_since(began) < SHARE_WINDOW => self.recent >= CONTROL_SHARE,
            _ => {
                self.window = Some(now);
                self.recent = 0;
                false
            }
        }
    }

    /// Counts `micros` of control work.
    fn worked(&mut self, micros: u32) {
        self.work = self.work.saturating_add(micros);
        self.recent = self.recent.saturating_add(u64::from(micros));
    }

    /// Descriptors the daemon holds or has in flight for the uid.
    fn fds(&self) -> usize {
        self.conns + self.bells + self.inflight
    }

    fn is_empty(&self) -> bool {
        self.conns == 0 && self.bells == 0 && self.rings == 0 && self.inflight == 0
    }
}

enum ConnState {
    /// Accepted, not read yet (its uid has its share waiting already).
    Parked,
    /// Read, waiting for HELLO since then.
    Waiting {
        since: Instant,
    },
    Attached(Arc<Session>),
}

/// What the control thread owns: the listener, every connection, and the
/// handles it needs to open sessions and rings.
pub struct Control {
    config: Config,
    registry: Arc<Registry>,
    workers: Vec<Arc<Worker>>,
    bell: Arc<Doorbell>,
    poll: OwnedFd,
    listener: Listener,
    /// Whether the listener is in the epoll set (it leaves it while no
    /// descriptor is left even to refuse a connection).
    listening: bool,
    conns: HashMap<u64, Conn>,
    /// Attached sessions by id, all of them and per uid (SESSIONS pages).
    sessions: BTreeMap<u64, Arc<Session>>,
    sessions_by_uid: HashMap<u32, BTreeMap<u64, Arc<Session>>>,
    /// What the daemon holds for each uid.
    holds: HashMap<u32, UidHold>,
    /// Connections not read until their descriptors in flight are read.
    held: Vec<u64>,
    /// Connections closed with descriptors still unread in the peer's
    /// queue: kept open (and charged to their uid) until the peer takes or
    /// drops them, since they stay charged to hregd's user until then.
    draining: Vec<(OwnedFd, u32, usize)>,
    last_scan: Instant,
    admission: Admission,
    next_key: u64,
    /// Sessions of the adopted state waiting for their clients, by id, with
    /// the time they are given up.
    kept: HashMap<u64, (KeptSession, Instant)>,
    /// Sessions attached or still releasing their references (what STATS
    /// reports: once a session stops counting, its references are gone).
    live_sessions: Arc<AtomicUsize>,
    started: Instant,
    ops_rate: OpsRate,
    fds: FdBudget,
}

impl Control {
    pub fn new(
        config: Config,
        registry: Arc<Registry>,
        workers: Vec<Arc<Worker>>,
        listener: Listener,
        kept: Vec<KeptSession>,
    ) -> anyhow::Result<Control> {
        let until = Instant::now() + config.resume_grace;
        let kept = kept
            .into_iter()
            .map(|session| (session.key().id, (session, until)))
            .collect();
        let poll = epoll::create(epoll::CreateFlags::CLOEXEC)?;
        let bell = Arc::new(Doorbell::new()?);
        watch(&poll, &listener.fd, LISTENER_KEY)?;
        watch(&poll, bell.fd(), BELL_KEY)?;
        Ok(Control {
            config,
            registry,
            workers,
            bell,
            poll,
            listener,
            listening: true,
            conns: HashMap::new(),
            sessions: BTreeMap::new(),
            sessions_by_uid: HashMap::new(),
            holds: HashMap::new(),
            held: Vec::new(),
            draining: Vec::new(),
            last_scan: Instant::now(),
            admission: Admission::default(),
            next_key: FIRST_CONN_KEY,
            kept,
            live_sessions: Arc::default(),
            started: Instant::now(),
            ops_rate: OpsRate::default(),
            fds: FdBudget::measure(),
        })
    }

    /// Adds a descriptor of the daemon's own (a signal pipe) to the epoll
    /// set under `key` (below [`FIRST_CONN_KEY`]).
    pub fn watch(&self, fd: BorrowedFd<'_>, key: u64) -> anyhow::Result<()> {
        Ok(watch(&self.poll, fd, key)?)
    }

    /// Waits up to `timeout` for events (less while connections are held);
    /// returns their keys. A new wakeup: every uid's control budget is
    /// whole again.
    pub fn wait(&mut self, timeout: Duration, keys: &mut Vec<u64>) -> anyhow::Result<()> {
        let mut events = Vec::with_capacity(1024);
        let timeout = if self.held.is_empty() && self.draining.is_empty() {
            timeout
        } else {
            timeout.min(HELD_RECHECK)
        };
        let tick = rustix::time::Timespec::try_from(timeout).unwrap_or(rustix::time::Timespec {
            tv_sec: 1,
            tv_nsec: 0,
        });
        match epoll::wait(
            &self.poll,
            rustix::buffer::spare_capacity(&mut events),
            Some(&tick),
        ) {
            Ok(_) | Err(Errno::INTR) => {}
            Err(e) => return Err(e).context("epoll_wait"),
        }
        keys.clear();
        keys.extend(events.iter().map(|e| e.data.u64()));
        self.new_wakeup();
        Ok(())
    }

    /// A new wakeup: every uid's control work starts from nothing again.
    fn new_wakeup(&mut self) {
        self.holds.retain(|_, hold| {
            hold.work = 0;
            !hold.is_empty()
        });
    }

    /// Handles the events of one wakeup: the daemon's own first, then the
    /// connections in passes (see [`Control::read_round_robin`]).
    pub fn dispatch_all(&mut self, keys: &[u64]) {
        let mut conns = Vec::new();
        for &key in keys {
            if key >= FIRST_CONN_KEY {
                conns.push(key);
            } else {
                self.dispatch(key);
            }
        }
        self.read_round_robin(conns);
    }

    /// Handles an event of the listener, the bell or a connection.
    pub fn dispatch(&mut self, key: u64) {
        match key {
            LISTENER_KEY => self.accept_some(),
            BELL_KEY => {
                self.bell.drain();
                self.drop_closed_sessions();
            }
            key if key >= FIRST_CONN_KEY => self.readable(key),
            _ => {}
        }
    }

    /// Once per loop: expire silent connections, resume listening, sample
    /// the ops rate, let go of readers that outlived their session and
    /// need not any more, and run a reclamation pass (the workers run most
    /// of them, once enough is retired; this one catches the rest).
    pub fn tick(&mut self) {
        self.release_held();
        if self.last_scan.elapsed() >= SCAN_EVERY {
            self.last_scan = Instant::now();
            self.drop_silent_connections();
            self.give_up_kept_sessions();
        }
        self.resume_listening();
        let ops = self.ops();
        self.ops_rate.sample(ops);
        // A session that ended with a borrow held its uid's slot until now.
        for uid in self.registry.prune_readers() {
            self.admission.detached(uid);
        }
        self.registry.reclaim_lagging();
    }

    /// Drops the references of kept sessions whose clients did not come
    /// back within the grace period, as if their clients had died.
    fn give_up_kept_sessions(&mut self) {
        let now = Instant::now();
        let late: Vec<u64> = self
            .kept
            .iter()
            .filter(|(_, (_, until))| *until <= now)
            .map(|(&id, _)| id)
            .collect();
        for id in late {
            if let Some((session, _)) = self.kept.remove(&id) {
                tracing::info!(
                    session = id,
                    uid = session.key().uid,
                    references = session.holder.reference_count(),
                    "kept session not resumed in time: its references are dropped"
                );
                self.registry.give_up(session);
            }
        }
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Applies new limits (SIGHUP); the rest of a new config waits for a
    /// restart.
    pub fn apply_limits(&mut self, limits: Limits) {
        self.registry.set_limits(limits.registry);
        self.config.limits = limits;
    }

    /// The one-line summary systemd shows as the service's status. Any
    /// local user may read it (`systemctl status`), so its figures are
    /// global and coarse: objects in thousands, no bytes — nothing shows
    /// another uid's private object or its length (`hregctl stats` gives
    /// each uid the exact figures it may see).
    pub fn status_line(&self) -> String {
        let objects = self.registry.usage().objects;
        let objects = if objects < 1000 {
            "under 1k objects".to_string()
        } else {
            format!("{}k objects", objects / 1000)
        };
        format!("{} sessions, {objects}", self.attached())
    }

    /// Tells every attached client that the daemon stops, and closes every
    /// connection; then stops the workers.
    pub fn shutdown(&mut self) {
        let keep = self.registry.keeps_state();
        tracing::info!(sessions = self.attached(), kept = keep, "shutting down");
        // First, so that a client resuming at once finds the next daemon's
        // socket, never this one's backlog.
        self.listener.remove_socket_file();
        self.registry.set_serving(false);
        let keys: Vec<u64> = self.conns.keys().copied().collect();
        for key in keys {
            if let Some(Conn {
                fd,
                state: ConnState::Attached(session),
                ..
            }) = self.conns.get(&key)
            {
                if keep {
                    session.keep();
                }
                let _ = send(fd.as_fd(), &Reply::Shutdown, &[]);
            }
            self.close(key, "daemon stopping");
        }
        for worker in &self.workers {
            worker.stop();
        }
        self.listener.remove_socket_file();
    }

    /// After the workers have stopped (nothing in flight): marks a kept
    /// state as cleanly stopped.
    pub fn finish(&self) {
        if self.registry.keeps_state() {
            self.registry.mark_clean();
            tracing::info!("state kept for the next start");
        }
    }

    fn attached(&self) -> usize {
        self.sessions.len()
    }

    /// Descriptors the daemon holds for clients: connections, session
    /// doorbells, connections draining their last descriptors.
    fn client_fds(&self) -> usize {
        self.conns.len() + self.holds.values().map(|h| h.bells).sum::<usize>() + self.draining.len()
    }

    /// USAGE's caps per uid and what the daemon holds for each uid (the
    /// caller's own unless root).
    fn usage_holds(&self, usage: &mut UsageReply, caller_uid: u32) {
        let narrow = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        usage.uid_max_rings = self.config.limits.uid_max_rings as u64;
        usage.uid_max_fds = self.fds.uid_share() as u64;
        let mut holds: Vec<UidHolds> = self
            .holds
            .iter()
            .filter(|&(&uid, _)| caller_uid == ROOT || uid == caller_uid)
            .map(|(&uid, hold)| UidHolds {
                uid,
                rings: narrow(hold.rings),
                fds: narrow(hold.fds()),
                fds_in_flight: narrow(hold.inflight),
            })
            .collect();
        holds.sort_by_key(|h| h.uid);
        usage.holds = holds;
    }

    fn hold(&mut self, uid: u32) -> &mut UidHold {
        self.holds.entry(uid).or_default()
    }

    fn forget_hold_if_empty(&mut self, uid: u32) {
        if self.holds.get(&uid).is_some_and(UidHold::is_empty) {
            self.holds.remove(&uid);
        }
    }

    /// Whether `uid` may hold `more` descriptors beyond what it holds
    /// (root is exempt): a refusal text naming the limit otherwise.
    fn uid_fds_allow(&self, uid: u32, more: usize) -> Result<(), String> {
        let held = self.holds.get(&uid).map_or(0, UidHold::fds);
        if uid == ROOT || held + more <= self.fds.uid_share() {
            return Ok(());
        }
        Err(Limit::UidFileDescriptors.refusal_text(format_args!(
            "uid {uid} holds {held} of hregd's descriptors, its share is {}",
            self.fds.uid_share()
        )))
    }

    fn ops(&self) -> u64 {
        self.workers.iter().map(|w| w.ops()).sum()
    }

    fn accept_some(&mut self) {
        for _ in 0..ACCEPT_BATCH {
            match self.listener.accept() {
                Accepted::None => return,
                Accepted::Exhausted => {
                    // Not even the reserve: stop listening until a
                    // descriptor frees (see resume_listening).
                    self.pause_listening();
                    return;
                }
                Accepted::OutOfDescriptors(fd) => {
                    refuse(&fd, Status::Quota, &self.fd_limit_message());
                    drop(fd);
                    self.listener.take_spare();
                }
                Accepted::Conn(fd, peer) => self.arrive(fd, peer),
            }
        }
    }

    fn fd_limit_message(&self) -> String {
        Limit::FileDescriptors.refusal_text(format_args!(
            "hregd is at its file descriptor limit ({}); try again later",
            self.fds.limit
        ))
    }

    /// A connection just accepted: read it now, park it, or refuse it.
    fn arrive(&mut self, fd: OwnedFd, peer: Peer) {
        if let Err(message) = self.uid_fds_allow(peer.uid, 1) {
            warn_limited(|| {
                tracing::warn!(
                    uid = peer.uid,
                    "refused a connection: the uid's descriptor share is used"
                )
            });
            refuse(&fd, Status::Quota, &message);
            return;
        }
        if !self.fds.allows(self.client_fds() + 1, 2) {
            warn_limited(|| {
                tracing::warn!(
                    uid = peer.uid,
                    "refused a connection: descriptor reserve reached"
                )
            });
            refuse(&fd, Status::Quota, &self.fd_limit_message());
            return;
        }
        let key = self.next_key;
        self.next_key += 1;
        let arrival = self.admission.arrive(key, peer.uid);
        self.conns.insert(key, Conn::new(fd, peer));
        self.hold(peer.uid).conns += 1;
        match arrival {
            Arrival::Wait => self.start_waiting(key),
            Arrival::Park => {}
            Arrival::ParkEvicting(oldest) => {
                if let Some(conn) = self.conns.remove(&oldest) {
                    self.hold(conn.peer.uid).conns -= 1;
                    warn_limited(|| {
                        tracing::warn!(
                            uid = peer.uid,
                            "refused the oldest of too many waiting connections"
                        )
                    });
                    refuse(
                        &conn.fd,
                        Status::Quota,
                        &Limit::UidWaitingConnections.refusal_text(format_args!(
                            "uid {} has more than {} connections waiting to attach ({} read at once)",
                            peer.uid, PARKED_CAP, WAITING_SHARE
                        )),
                    );
                }
            }
        }
    }

    /// Whether a reply with descriptors may go to connection `key` now: the
    /// peer has read the ones sent before (checked with `SIOCOUTQ` and
    /// forgotten once read), and its uid has fewer than the cap in flight.
    fn may_send_fds(&mut self, key: u64) -> bool {
        let Some(conn) = self.conns.get_mut(&key) else {
            return true;
        };
        let uid = conn.peer.uid;
        if conn.unread_fds > 0 {
            if matches!(unread_bytes(&conn.fd), Ok(n) if n > 0) {
                return false;
            }
            let read = std::mem::take(&mut conn.unread_fds);
            self.hold(uid).inflight -= read;
        }
        self.holds.get(&uid).map_or(0, |h| h.inflight) < self.fds.inflight_cap()
    }

    /// Whether `uid` had its [`CONTROL_SHARE`] of the current window.
    fn over_share(&mut self, uid: u32) -> bool {
        let now = Instant::now();
        self.holds.get_mut(&uid).is_some_and(|h| h.over_share(now))
    }

    /// Stops reading connection `key` until [`Control::may_send_fds`] and
    /// its uid's share let it go on (see [`Control::release_held`]).
    fn hold_conn(&mut self, key: u64) {
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        if conn.held || matches!(conn.state, ConnState::Parked) {
            return;
        }
        let _ = epoll::delete(&self.poll, &conn.fd);
        conn.held = true;
        self.held.push(key);
    }

    /// Reads held connections again once their descriptors in flight
    /// allow, and closes draining connections whose peers took (or
    /// dropped) the descriptors left in their queues.
    fn release_held(&mut self) {
        let held = std::mem::take(&mut self.held);
        for key in held {
            if !self.conns.contains_key(&key) {
                continue;
            }
            let uid = self.conns[&key].peer.uid;
            if !self.may_send_fds(key) || self.over_share(uid) {
                self.held.push(key);
                continue;
            }
            let conn = self.conns.get_mut(&key).expect("looked up");
            conn.held = false;
            if watch(&self.poll, conn.fd.as_fd(), key).is_err() {
                self.close(key, "cannot watch the connection");
            }
        }
        let draining = std::mem::take(&mut self.draining);
        for (fd, uid, fds) in draining {
            if matches!(unread_bytes(&fd), Ok(n) if n > 0) {
                self.draining.push((fd, uid, fds));
            } else {
                self.hold(uid).inflight -= fds;
                self.forget_hold_if_empty(uid);
            }
        }
    }

    /// Starts reading a parked connection; its HELLO deadline starts now.
    fn start_waiting(&mut self, key: u64) {
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        conn.state = ConnState::Waiting {
            since: Instant::now(),
        };
        if watch(&self.poll, conn.fd.as_fd(), key).is_err() {
            self.close(key, "cannot watch the connection");
        }
    }

    fn pause_listening(&mut self) {
        if self.listening {
            let _ = epoll::delete(&self.poll, &self.listener.fd);
            self.listening = false;
            warn_limited(|| tracing::warn!("out of file descriptors; accepting paused"));
        }
    }

    fn resume_listening(&mut self) {
        if !self.listening {
            self.listener.take_spare();
            if self.listener.has_spare()
                && watch(&self.poll, &self.listener.fd, LISTENER_KEY).is_ok()
            {
                self.listening = true;
            }
        }
    }

    /// Reads up to [`MESSAGES_PER_WAKEUP`] messages waiting on a connection,
    /// as far as its uid's control budget for this wakeup goes, and while
    /// its descriptors in flight allow.
    fn readable(&mut self, key: u64) {
        self.read_round_robin(vec![key]);
    }

    /// Reads the connections `keys` (readable this wakeup) one message each
    /// per pass, up to [`MESSAGES_PER_WAKEUP`] passes: connections of one
    /// uid share its budget in turn, whichever epoll named first.
    fn read_round_robin(&mut self, mut keys: Vec<u64>) {
        let mut buf = vec![0u8; MAX_MESSAGE];
        for _ in 0..MESSAGES_PER_WAKEUP {
            keys.retain(|&key| self.read_one(key, &mut buf));
            if keys.is_empty() {
                return;
            }
        }
    }

    /// Reads and handles one message of connection `key`; false when
    /// nothing more is to be read from it this wakeup (nothing waits, its
    /// uid's budget is spent, it is held or gone).
    fn read_one(&mut self, key: u64, buf: &mut [u8]) -> bool {
        loop {
            let Some(uid) = self.conns.get(&key).map(|c| c.peer.uid) else {
                return false;
            };
            if self
                .holds
                .get(&uid)
                .is_some_and(|h| h.work >= CONTROL_BUDGET)
            {
                // The uid had its share of this wakeup; level-triggered
                // epoll brings the connection back at the next one.
                return false;
            }
            if !self.may_send_fds(key) || self.over_share(uid) {
                self.hold_conn(key);
                return false;
            }
            let Some(conn) = self.conns.get(&key) else {
                return false;
            };
            return match transport::receive(&conn.fd, buf) {
                Ok(packet) if packet.len == 0 => {
                    self.close(key, "end of file");
                    false
                }
                Ok(packet) if packet.truncated => {
                    self.refuse_or_close(key, "message too long");
                    false
                }
                Ok(packet) => {
                    let began = Instant::now();
                    let connection = self.request(key, &buf[..packet.len], packet.fds);
                    let took = u32::try_from(began.elapsed().as_micros()).unwrap_or(u32::MAX);
                    self.hold(uid).worked(took.max(MIN_REQUEST_COST));
                    connection == Connection::Open
                }
                Err(Errno::AGAIN) => false,
                Err(Errno::INTR) => continue,
                Err(_) => {
                    self.close(key, "socket error");
                    false
                }
            };
        }
    }

    /// Handles one request (`fds`: the descriptors it came with; only
    /// RESUME takes one); whether the connection is still there.
    fn request(&mut self, key: u64, bytes: &[u8], fds: Vec<OwnedFd>) -> Connection {
        let (attached, uid) = match self.conns.get(&key) {
            Some(Conn {
                state: ConnState::Attached(session),
                peer,
                ..
            }) => (Some(Arc::clone(session)), peer.uid),
            Some(conn) => (None, conn.peer.uid),
            None => return Connection::Closed,
        };
        let request = match ControlRequest::decode(bytes) {
            Ok(request) => request,
            Err(e) => {
                self.refuse_or_close(key, &format!("bad message: {e}"));
                return Connection::Closed;
            }
        };
        match (request, attached) {
            (ControlRequest::Hello { version, name }, None) => {
                self.handshake(key, version, Handshake::Hello { name })
            }
            (
                ControlRequest::Resume {
                    version,
                    session_id,
                    token,
                },
                None,
            ) => {
                let how = Handshake::Resume {
                    id: session_id,
                    token,
                    fds,
                };
                self.handshake(key, version, how)
            }
            (ControlRequest::Hello { .. } | ControlRequest::Resume { .. }, Some(_)) => {
                self.close(key, "second HELLO");
                Connection::Closed
            }
            (_, None) => {
                self.refuse_or_close(key, "first message must be HELLO or RESUME");
                Connection::Closed
            }
            (ControlRequest::RingOpen, Some(session)) => self.ring_open(key, &session),
            (ControlRequest::RingClose { index }, Some(session)) => {
                let opened = self.conns.get_mut(&key).and_then(|conn| {
                    let at = conn.rings.iter().position(|&(i, _)| i == index)?;
                    conn.rings.swap_remove(at);
                    Some(())
                });
                if opened.is_some() {
                    self.hold(uid).rings -= 1;
                    for worker in &self.workers {
                        worker.close_ring(session.id, index);
                    }
                }
                self.reply(key, &Reply::Ack, &[])
            }
            (ControlRequest::Stats, Some(caller)) => {
                let stats = admin::stats(
                    &self.registry,
                    self.live_sessions.load(Ordering::Acquire) as u64,
                    self.ops(),
                    caller.peer.uid,
                );
                self.reply(key, &Reply::Stats(stats), &[])
            }
            (ControlRequest::Goodbye, Some(_)) => {
                self.close(key, "goodbye");
                Connection::Closed
            }
            (ControlRequest::Sessions { cursor }, Some(caller)) => {
                let reply = match caller.peer.uid {
                    ROOT => admin::sessions_page(&self.sessions, cursor),
                    uid => admin::sessions_page(
                        self.sessions_by_uid.get(&uid).unwrap_or(&BTreeMap::new()),
                        cursor,
                    ),
                };
                self.reply(key, &reply, &[])
            }
            (
                ControlRequest::List {
                    cursor,
                    limit,
                    filter,
                },
                Some(caller),
            ) => {
                let reply =
                    admin::objects_page(&self.registry, cursor, limit, filter, caller.peer.uid);
                self.reply(key, &reply, &[])
            }
            (
                ControlRequest::MapDomain {
                    domain,
                    slot_chunk,
                    heap_chunk,
                },
                Some(caller),
            ) => self.map_domain(key, &caller, domain, slot_chunk, heap_chunk),
            (ControlRequest::Usage, Some(caller)) => {
                let serving = self
                    .conns
                    .values()
                    .filter(|c| matches!(&c.state, ConnState::Attached(s) if !s.is_closed()))
                    .flat_map(|c| c.rings.iter().map(|&(_, worker)| worker));
                let rings = admin::rings_per_worker(serving, self.workers.len());
                let workers = self
                    .workers
                    .iter()
                    .zip(rings)
                    .map(|(w, rings)| WorkerUsage {
                        rings,
                        ops: w.ops(),
                    })
                    .collect();
                let mut usage = admin::usage(
                    &self.registry,
                    self.started.elapsed(),
                    self.ops_rate.per_sec(),
                    workers,
                    caller.peer.uid,
                );
                self.usage_holds(&mut usage, caller.peer.uid);
                self.reply(key, &Reply::Usage(usage), &[])
            }
        }
    }

    /// HELLO or RESUME from connection `key`: the session admitted and
    /// welcomed, or the connection refused and closed, here and nowhere
    /// else.
    fn handshake(&mut self, key: u64, version: u32, how: Handshake) -> Connection {
        let Some(peer) = self.conns.get(&key).map(|c| c.peer) else {
            return Connection::Closed;
        };
        let admitted = match how {
            Handshake::Hello { name } => self.hello(peer, version, name),
            Handshake::Resume { id, token, fds } => self.resume(peer, version, id, token, fds),
        };
        match admitted.and_then(|admitted| self.attach(key, admitted)) {
            Ok(connection) => connection,
            Err(Refusal {
                status,
                message,
                why,
            }) => {
                warn_limited(|| tracing::warn!(reason = why, "refused attach: {message}"));
                let _ = self.reply(
                    key,
                    &Reply::Refused {
                        status: status as u32,
                        message,
                    },
                    &[],
                );
                self.close(key, why);
                Connection::Closed
            }
        }
    }

    /// Whether `peer` may attach one more session (`resuming`: the kept
    /// session it takes back, whose slot it has already): a refusal
    /// (status, message naming the limit, reason for the log) otherwise.
    /// Kept sessions hold their slots until they resume or their grace
    /// ends, so a restart does not hand them to others.
    fn admits(&self, peer: &Peer, version: u32, resuming: Option<u64>) -> Result<(), Refusal> {
        if version != PROTOCOL_VERSION {
            let message =
                format!("daemon speaks protocol {PROTOCOL_VERSION}, client sent {version}");
            return Err(Refusal::new(Status::Version, message, "version mismatch"));
        }
        if !self.config.allow_overflow_uid && crate::peer::is_unmapped(peer.uid) {
            let message = format!(
                "uid {} is the overflow uid: the client's uid is not mapped in hregd's user \
                 namespace and cannot be told from other unmapped users; run hregd in the \
                 host's user namespace, or set allow_overflow_uid to let them share one domain",
                peer.uid
            );
            return Err(Refusal::new(Status::Denied, message, "unmapped uid"));
        }
        let limits = self.config.limits;
        let others_kept = |of_uid: Option<u32>| {
            self.kept
                .iter()
                .filter(|(&id, (kept, _))| {
                    Some(id) != resuming && of_uid.is_none_or(|uid| kept.key().uid == uid)
                })
                .count()
        };
        // Sessions that ended while their process still reads values it
        // borrowed keep their slots until the registry lets their readers
        // go, so the memory they keep stays within the session caps.
        let held = self.attached() + others_kept(None) + self.registry.outliving_readers();
        if held >= limits.max_sessions {
            let message = Limit::MaxSessions.refusal_text(format_args!(
                "{} sessions attached, kept for a resume or ended with borrowed values still \
                 read, the daemon's cap",
                limits.max_sessions
            ));
            return Err(Refusal::new(Status::Quota, message, "session cap"));
        }
        let uid_held = self.admission.sessions(peer.uid) + others_kept(Some(peer.uid));
        if peer.uid != ROOT && uid_held >= limits.uid_max_sessions {
            let message = Limit::UidMaxSessions.refusal_text(format_args!(
                "uid {} has {uid_held} sessions attached, kept for a resume or ended with \
                 borrowed values still read, the cap per uid is {}",
                peer.uid, limits.uid_max_sessions
            ));
            return Err(Refusal::new(Status::Quota, message, "uid session cap"));
        }
        Ok(())
    }

    /// HELLO: a new session for `peer`, if it may have one.
    fn hello(&mut self, peer: Peer, version: u32, name: String) -> Result<Admitted, Refusal> {
        self.admits(&peer, version, None)?;
        if name.chars().any(char::is_control) {
            let message = "the client name must be text: control characters are refused".into();
            return Err(Refusal::new(
                Status::Invalid,
                message,
                "control characters in name",
            ));
        }
        let (memory, memfd) = match SessionMemory::create(self.config.layout) {
            Ok(made) => made,
            Err(e) => {
                let (status, message) = os_refusal(&e, "cannot create session memory");
                return Err(Refusal::new(status, message, "no memory"));
            }
        };
        let holder = match self.registry.holder(peer.uid) {
            Ok(holder) => holder,
            Err(e) => {
                let (status, message) = os_refusal(&e, "cannot create the session's record");
                return Err(Refusal::new(status, message, "no memory"));
            }
        };
        Ok(Admitted {
            peer,
            name,
            holder,
            memory,
            memfd,
            resumed: false,
        })
    }

    /// RESUME: gives a kept session back to its client, with the session
    /// memory the client brought (its pin table as it left it, fresh rings).
    fn resume(
        &mut self,
        peer: Peer,
        version: u32,
        id: u64,
        token: [u8; 16],
        fds: Vec<OwnedFd>,
    ) -> Result<Admitted, Refusal> {
        self.admits(&peer, version, Some(id))?;
        let Some((kept, _)) = self.kept.get(&id) else {
            let message = format!(
                "no session {id} to resume: the daemon did not keep its state, or the grace period passed"
            );
            return Err(Refusal::new(Status::Stale, message, "unknown session"));
        };
        let owner = kept.key();
        if owner.uid != peer.uid || !same_secret(&owner.token, &token) {
            let message = format!("session {id} is not this client's to resume");
            return Err(Refusal::new(Status::Denied, message, "resume denied"));
        }
        let Some(memfd) = fds.into_iter().next() else {
            let message = "RESUME must carry the session's memory".to_owned();
            return Err(Refusal::new(
                Status::Protocol,
                message,
                "resume without memory",
            ));
        };
        let memory = match SessionMemory::adopt(&memfd, self.config.layout) {
            Ok(memory) => memory,
            Err(e) => {
                let message = format!("the session memory brought back does not fit: {e}");
                return Err(Refusal::new(
                    Status::Protocol,
                    message,
                    "resume with bad memory",
                ));
            }
        };
        let (kept, _) = self.kept.remove(&id).expect("found above");
        self.registry.resumed(&kept.holder);
        tracing::info!(
            session = id,
            pid = peer.pid,
            uid = peer.uid,
            "kept session resumed"
        );
        Ok(Admitted {
            peer,
            name: format!("resumed #{id}"),
            holder: kept.holder,
            memory,
            memfd,
            resumed: true,
        })
    }

    /// Sends WELCOME with the session's memory and the registry header, and
    /// marks the connection attached. A session that cannot attach ends
    /// here (its references released, its record removed), whether it was
    /// new or resumed.
    fn attach(&mut self, key: u64, admitted: Admitted) -> Result<Connection, Refusal> {
        let Admitted {
            peer,
            name,
            holder,
            memory,
            memfd,
            resumed,
        } = admitted;
        let registry = Arc::clone(&self.registry);
        let header =
            match injected_attach_failure(resumed).and_then(|()| registry.header_for_client()) {
                Ok(header) => header,
                Err(e) => {
                    // The holder goes as a session that ends does: its
                    // references released, its record removed.
                    self.registry.release_all(&holder);
                    let (status, message) = os_refusal(&e, "cannot open the registry header");
                    return Err(Refusal::new(status, message, "no descriptor"));
                }
            };
        let limits = self.config.limits;
        let pin_bytes = Registry::pin_budget(&limits.registry, limits.uid_max_sessions);
        let layout = self.config.layout;
        let keeps = self.registry.keeps_state();
        let welcome = Welcome {
            version: PROTOCOL_VERSION,
            session_id: holder.id(),
            max_value_size: limits.registry.max_value_size as u64,
            max_objects: limits.registry.max_objects,
            max_bytes: limits.registry.max_bytes,
            ring_entries: layout.entries,
            data_size: layout.data_size,
            max_rings: layout.max_rings,
            ring_stride: layout.ring_stride() as u64,
            instance: u32::from(self.registry.instance()),
            pins_offset: SessionMemory::pins_offset(layout) as u64,
            pin_entries: PIN_ENTRIES as u32,
            pin_bytes,
            resume_token: if keeps {
                holder.resume_token()
            } else {
                [0; 16]
            },
            resume_grace_ms: if keeps {
                u32::try_from(self.config.resume_grace.as_millis()).unwrap_or(u32::MAX)
            } else {
                0
            },
        };
        // No chunk comes along: a client maps the chunks its reads need,
        // one MAP_DOMAIN each, so its address space grows with what it
        // reads, not with the registry.
        let fds = [memfd.as_fd(), header];
        let id = holder.id();
        let session = Arc::new(Session::new(
            holder,
            peer,
            name,
            memory,
            pin_bytes,
            Arc::clone(&self.registry),
            Arc::clone(&self.bell),
            Arc::clone(&self.live_sessions),
        ));
        if let Connection::Closed = self.reply(key, &Reply::Welcome(welcome), &fds) {
            return Ok(Connection::Closed);
        }
        drop(memfd);
        tracing::info!(session = id, pid = peer.pid, uid = peer.uid, name = %session.name, "session attached");
        self.sessions.insert(id, Arc::clone(&session));
        self.sessions_by_uid
            .entry(peer.uid)
            .or_default()
            .insert(id, Arc::clone(&session));
        if let Some(conn) = self.conns.get_mut(&key) {
            conn.state = ConnState::Attached(session);
        }
        if let Some(next) = self.admission.done_waiting(peer.uid, true) {
            self.start_waiting(next);
        }
        Ok(Connection::Open)
    }

    /// MAP_DOMAIN: a read-only descriptor of the slot chunk and of the heap
    /// chunk asked for, of a domain the session's uid may read (ERROR with
    /// DENIED or STALE otherwise).
    fn map_domain(
        &mut self,
        key: u64,
        session: &Session,
        domain: u32,
        slot_chunk: u32,
        heap_chunk: u32,
    ) -> Connection {
        let wanted = |chunk: u32| (chunk != MapDomain::NONE).then_some(chunk as usize);
        let registry = Arc::clone(&self.registry);
        let uid = session.peer.uid;
        // No such domain: said as the registry says it of one not made.
        let chunks = u16::try_from(domain)
            .map_err(|_| {
                if uid == ROOT {
                    Status::Stale
                } else {
                    Status::Denied
                }
            })
            .and_then(|domain| {
                registry.chunks_for(uid, domain, wanted(slot_chunk), wanted(heap_chunk))
            });
        let (slots, heap) = match chunks {
            Ok(chunks) => chunks,
            Err(status) => {
                let message = format!("domain {domain}: {}", status.message());
                return self.reply(
                    key,
                    &Reply::Error {
                        status: status as u32,
                        message,
                    },
                    &[],
                );
            }
        };
        let reply = Reply::DomainChunks {
            domain,
            slots_from: slot_chunk,
            slots: u32::from(slots.is_some()),
            heap_from: heap_chunk,
            heap: u32::from(heap.is_some()),
        };
        let fds: Vec<BorrowedFd<'_>> = slots.into_iter().chain(heap).collect();
        self.reply(key, &reply, &fds)
    }

    /// RING_OPEN: a ring of the session, served by the least loaded
    /// worker and woken through the session's doorbell for that worker
    /// (made with the session's first ring there). Refused with QUOTA (the
    /// client's thread then shares a ring) at the session's or the uid's
    /// ring cap, or when a new doorbell would pass the uid's descriptor
    /// share or the daemon's reserve.
    fn ring_open(&mut self, key: u64, session: &Arc<Session>) -> Connection {
        let error = |status: Status, message: String| Reply::Error {
            status: status as u32,
            message,
        };
        let uid = session.peer.uid;
        let uid_rings = self.holds.get(&uid).map_or(0, |h| h.rings);
        let cap = self.config.limits.uid_max_rings;
        if uid != ROOT && uid_rings >= cap {
            let message = Limit::UidMaxRings.refusal_text(format_args!(
                "uid {uid} has {uid_rings} rings open, the cap per uid is {cap}; share a ring"
            ));
            return self.reply(key, &error(Status::Quota, message), &[]);
        }
        let (worker_at, worker) = self
            .workers
            .iter()
            .enumerate()
            .min_by_key(|(_, w)| w.load())
            .map(|(at, w)| (at, Arc::clone(w)))
            .expect("at least one worker");
        let has_bell = self
            .conns
            .get(&key)
            .is_some_and(|c| c.bells.get(worker_at).is_some_and(Option::is_some));
        if !has_bell {
            if let Err(message) = self.uid_fds_allow(uid, 1) {
                return self.reply(key, &error(Status::Quota, message), &[]);
            }
            if !self.fds.allows(self.client_fds() + 1, 1) {
                let message = Limit::FileDescriptors.refusal_text(format_args!(
                    "descriptor reserve reached (limit {}); share a ring",
                    self.fds.limit
                ));
                return self.reply(key, &error(Status::Quota, message), &[]);
            }
        }
        let Some(index) = session.claim_ring() else {
            let message = Limit::MaxRings.refusal_text(format_args!(
                "{} rings open, the cap per session",
                session.memory.layout().max_rings
            ));
            return self.reply(key, &error(Status::Quota, message), &[]);
        };
        let bell = match self.session_bell(key, worker_at) {
            Ok(bell) => bell,
            Err(e) => {
                session.free_ring(index);
                let (status, message) = os_refusal(&e, "cannot create doorbell");
                return self.reply(key, &error(status, message), &[]);
            }
        };
        if let Some(view) = session.memory.ring(index) {
            view.reset();
        }
        let ready_at = SessionMemory::ready_at(self.config.layout, worker.index());
        let opened = Reply::RingOpened {
            index,
            ready_at: Some(ready_at as u64),
        };
        if let Connection::Closed = self.reply(key, &opened, &[bell.fd()]) {
            session.free_ring(index);
            return Connection::Closed;
        }
        if let Some(conn) = self.conns.get_mut(&key) {
            conn.rings.push((index, worker_at));
        }
        self.hold(uid).rings += 1;
        worker.serve(Arc::clone(session), index, bell, ready_at);
        Connection::Open
    }

    /// The session's doorbell for worker `worker_at`, made (and counted
    /// against its uid) on first use.
    fn session_bell(&mut self, key: u64, worker_at: usize) -> std::io::Result<Arc<Doorbell>> {
        let workers = self.workers.len();
        let conn = self
            .conns
            .get_mut(&key)
            .ok_or_else(|| std::io::Error::other("connection gone"))?;
        conn.bells.resize(workers, None);
        if let Some(bell) = &conn.bells[worker_at] {
            return Ok(Arc::clone(bell));
        }
        let bell = Arc::new(Doorbell::new()?);
        conn.bells[worker_at] = Some(Arc::clone(&bell));
        let uid = conn.peer.uid;
        self.hold(uid).bells += 1;
        Ok(bell)
    }

    /// Sends a reply; a peer that cannot take it loses its connection.
    fn reply(&mut self, key: u64, reply: &Reply, fds: &[BorrowedFd<'_>]) -> Connection {
        let Some(conn) = self.conns.get(&key) else {
            return Connection::Closed;
        };
        match send(conn.fd.as_fd(), reply, fds) {
            Ok(()) => {
                if !fds.is_empty() {
                    let uid = conn.peer.uid;
                    if let Some(conn) = self.conns.get_mut(&key) {
                        conn.unread_fds += fds.len();
                    }
                    self.hold(uid).inflight += fds.len();
                }
                Connection::Open
            }
            Err(_) => {
                self.close(key, "cannot send reply");
                Connection::Closed
            }
        }
    }

    /// Refuses a connection that has not said HELLO yet, or closes an
    /// attached one.
    fn refuse_or_close(&mut self, key: u64, why: &str) {
        if let Some(Conn {
            fd,
            state: ConnState::Waiting { .. },
            ..
        }) = self.conns.get(&key)
        {
            refuse(fd, Status::Protocol, why);
        }
        warn_limited(|| tracing::warn!(reason = why, "protocol error"));
        self.close(key, why);
    }

    fn close(&mut self, key: u64, why: &str) {
        let Some(conn) = self.conns.remove(&key) else {
            return;
        };
        if !matches!(conn.state, ConnState::Parked) && !conn.held {
            let _ = epoll::delete(&self.poll, &conn.fd);
        }
        // Its process may still read what it borrowed: its pins stay
        // honoured until that process is gone (asked before the descriptor
        // may move to the draining list).
        let process = match &conn.state {
            ConnState::Attached(session) if session.reader.holds_pins() => {
                Some(peer_process(&conn.fd, conn.peer.pid))
            }
            _ => None,
        };
        let uid = conn.peer.uid;
        let bells = conn.bell_count();
        let hold = self.hold(uid);
        hold.conns -= 1;
        hold.bells -= bells;
        hold.rings -= conn.rings.len();
        if conn.unread_fds > 0 {
            if matches!(unread_bytes(&conn.fd), Ok(n) if n > 0) {
                // Still charged to hregd's user while the peer holds them.
                self.draining.push((conn.fd, uid, conn.unread_fds));
            } else {
                self.hold(uid).inflight -= conn.unread_fds;
            }
        }
        self.forget_hold_if_empty(uid);
        match conn.state {
            ConnState::Parked => {
                self.admission.unpark(key, conn.peer.uid);
            }
            ConnState::Waiting { .. } => {
                if let Some(next) = self.admission.done_waiting(conn.peer.uid, false) {
                    self.start_waiting(next);
                }
            }
            ConnState::Attached(session) => {
                match process {
                    Some(Process::Running(pidfd)) => session.reader.outlive(Some(pidfd)),
                    Some(Process::Unknown) => session.reader.outlive(None),
                    Some(Process::Gone) | None => {}
                }
                // One that outlives keeps its uid's slot (see `tick`).
                if !session.reader.outlives() {
                    self.admission.detached(conn.peer.uid);
                }
                self.sessions.remove(&session.id);
                if let Some(own) = self.sessions_by_uid.get_mut(&uid) {
                    own.remove(&session.id);
                    if own.is_empty() {
                        self.sessions_by_uid.remove(&uid);
                    }
                }
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
                    worker.close_session(session.id);
                }
            }
        }
    }

    fn drop_closed_sessions(&mut self) {
        let closed: Vec<u64> = self
            .conns
            .iter()
            .filter(|(_, c)| matches!(&c.state, ConnState::Attached(s) if s.is_closed()))
            .map(|(k, _)| *k)
            .collect();
        for key in closed {
            self.close(key, "closed by worker");
        }
    }

    /// Refuses connections that sent nothing within [`HELLO_TIMEOUT`] of
    /// being read. One whose HELLO waits unread (the daemon's own backlog,
    /// or its uid's turn) is not silent.
    fn drop_silent_connections(&mut self) {
        let silent: Vec<u64> = self
            .conns
            .iter()
            .filter(|(_, c)| {
                matches!(c.state, ConnState::Waiting { since } if since.elapsed() > HELLO_TIMEOUT)
                    && !has_bytes_waiting(&c.fd)
            })
            .map(|(k, _)| *k)
            .collect();
        for key in silent {
            if let Some(conn) = self.conns.get(&key) {
                refuse(&conn.fd, Status::Protocol, "no HELLO within 5 seconds");
            }
            self.close(key, "no HELLO in time");
        }
    }
}

fn watch(poll: &OwnedFd, fd: impl AsFd, key: u64) -> rustix::io::Result<()> {
    epoll::add(
        poll,
        fd,
        epoll::EventData::new_u64(key),
        epoll::EventFlags::IN,
    )
}

/// A test hook of debug builds: `HREG_TEST_FAIL_ATTACH=hello:N` (or
/// `resume:N`) makes the next N attaches of that kind fail after their
/// holder is made, as if the registry header could not be reopened.
fn injected_attach_failure(resumed: bool) -> std::io::Result<()> {
    #[cfg(debug_assertions)]
    {
        static LEFT: std::sync::OnceLock<(bool, AtomicUsize)> = std::sync::OnceLock::new();
        let (on_resume, left) = LEFT.get_or_init(|| {
            let value = std::env::var("HREG_TEST_FAIL_ATTACH").unwrap_or_default();
            let (kind, n) = value.split_once(':').unwrap_or(("", "0"));
            (kind == "resume", AtomicUsize::new(n.parse().unwrap_or(0)))
        });
        if *on_resume == resumed
            && left
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                .is_ok()
        {
            return Err(std::io::Error::other("injected by HREG_TEST_FAIL_ATTACH"));
        }
    }
    #[cfg(not(debug_assertions))]
    let _ = resumed;
    Ok(())
}

/// Whether two tokens are equal, in time that does not depend on where they
/// differ.
fn same_secret(a: &[u8; 16], b: &[u8; 16]) -> bool {
    a.iter().zip(b).fold(0u8, |diff, (x, y)| diff | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    //! The control thread's decisions with socket pairs for connections
    //! (so a test can claim any uid) and workers that are never started.

    use super::*;
    use crate::config::Args;
    use hreg_proto::control::{ListFilter, StatsReply};
    use rustix::net::{AddressFamily, RecvFlags, SendFlags, SocketType};

    struct Harness {
        control: Control,
        _dir: tempfile::TempDir,
    }

    /// A peer's end of a connection the control thread holds.
    struct TestPeer {
        fd: OwnedFd,
        key: u64,
    }

    impl Harness {
        fn new(flags: &[&str]) -> Harness {
            let dir = tempfile::tempdir().unwrap();
            let socket = dir.path().join("hreg.sock");
            let mut argv = vec!["hregd", "--socket", socket.to_str().unwrap()];
            argv.extend_from_slice(flags);
            let config = Config::from_args(&<Args as clap::Parser>::parse_from(argv)).unwrap();
            let listener = Listener::open(
                &config.socket,
                config.socket_mode,
                config.socket_group,
                Vec::new(),
            )
            .unwrap();
            let registry = Arc::new(Registry::new(config.shards, config.limits.registry).unwrap());
            let workers = vec![Arc::new(Worker::new(Arc::clone(&registry), 0).unwrap())];
            Harness {
                control: Control::new(config, registry, workers, listener, Vec::new()).unwrap(),
                _dir: dir,
            }
        }

        /// A new connection from `uid`, as if just accepted.
        fn connect(&mut self, uid: u32) -> TestPeer {
            let (ours, theirs) = rustix::net::socketpair(
                AddressFamily::UNIX,
                SocketType::SEQPACKET,
                rustix::net::SocketFlags::CLOEXEC | rustix::net::SocketFlags::NONBLOCK,
                None,
            )
            .unwrap();
            let key = self.control.next_key;
            self.control.arrive(
                ours,
                Peer {
                    pid: 42,
                    uid,
                    gid: uid,
                },
            );
            TestPeer { fd: theirs, key }
        }

        /// Sends `request` from `peer` and lets the control thread read it;
        /// returns the reply, if one came.
        fn ask(&mut self, peer: &TestPeer, request: &ControlRequest) -> Option<Reply> {
            rustix::net::send(&peer.fd, &request.encode(), SendFlags::empty()).unwrap();
            self.dispatch(peer.key);
            reply(peer)
        }

        /// Lets the control thread handle an event of `key` in a wakeup
        /// of its own, as the event loop would (each uid's work budget
        /// starts afresh; otherwise a slow WELCOME on a loaded machine
        /// would leave the next request of its uid unread).
        fn dispatch(&mut self, key: u64) {
            self.control.new_wakeup();
            self.control.dispatch(key);
        }

        fn hello(&mut self, peer: &TestPeer, version: u32) -> Option<Reply> {
            self.ask(
                peer,
                &ControlRequest::Hello {
                    version,
                    name: "test".into(),
                },
            )
        }
    }

    fn reply(peer: &TestPeer) -> Option<Reply> {
        let mut buf = vec![0u8; MAX_MESSAGE];
        match rustix::net::recv(&peer.fd, &mut buf, RecvFlags::DONTWAIT) {
            Ok((_, n)) if n > 0 => Some(Reply::decode(&buf[..n]).unwrap()),
            _ => None,
        }
    }

    fn refused(reply: Option<Reply>) -> (u32, String) {
        match reply {
            Some(Reply::Refused { status, message }) => (status, message),
            other => panic!("expected REFUSED, got {other:?}"),
        }
    }

    #[test]
    fn hello_is_checked() {
        let mut h = Harness::new(&[]);
        let peer = h.connect(1000);
        let (status, message) = refused(h.hello(&peer, PROTOCOL_VERSION + 1));
        assert_eq!(status, Status::Version as u32);
        assert!(message.contains("protocol"), "{message}");
        let peer = h.connect(1000);
        let (status, _) = refused(h.ask(&peer, &ControlRequest::Stats));
        assert_eq!(status, Status::Protocol as u32);
        let peer = h.connect(1000);
        rustix::net::send(&peer.fd, b"garbage", SendFlags::empty()).unwrap();
        h.dispatch(peer.key);
        assert_eq!(refused(reply(&peer)).0, Status::Protocol as u32);
        let peer = h.connect(1000);
        assert!(matches!(
            h.hello(&peer, PROTOCOL_VERSION),
            Some(Reply::Welcome(_))
        ));
        // A second HELLO ends the session.
        assert_eq!(h.hello(&peer, PROTOCOL_VERSION), None);
        assert!(!h.control.conns.contains_key(&peer.key));
    }

    #[test]
    fn session_caps_name_their_limit_and_spare_root() {
        let mut h = Harness::new(&["--max-sessions", "3", "--uid-max-sessions", "1"]);
        let first = h.connect(1000);
        assert!(matches!(
            h.hello(&first, PROTOCOL_VERSION),
            Some(Reply::Welcome(_))
        ));
        let second = h.connect(1000);
        let (status, message) = refused(h.hello(&second, PROTOCOL_VERSION));
        assert_eq!(status, Status::Quota as u32);
        assert_eq!(
            Limit::named_in(&message),
            Some(Limit::UidMaxSessions),
            "{message}"
        );
        let root = [h.connect(0), h.connect(0)];
        for peer in &root {
            assert!(matches!(
                h.hello(peer, PROTOCOL_VERSION),
                Some(Reply::Welcome(_))
            ));
        }
        let fourth = h.connect(0);
        let (status, message) = refused(h.hello(&fourth, PROTOCOL_VERSION));
        assert_eq!(status, Status::Quota as u32);
        assert_eq!(
            Limit::named_in(&message),
            Some(Limit::MaxSessions),
            "{message}"
        );
        assert!(message.contains("3 sessions attached"), "{message}");
    }

    #[test]
    fn a_uid_past_its_share_waits_its_turn() {
        let mut h = Harness::new(&[]);
        let waiting: Vec<TestPeer> = (0..WAITING_SHARE).map(|_| h.connect(1000)).collect();
        let parked = h.connect(1000);
        let other = h.connect(1001);
        assert!(matches!(
            h.control.conns[&parked.key].state,
            ConnState::Parked
        ));
        // Its HELLO is not read while it is parked...
        rustix::net::send(
            &parked.fd,
            &ControlRequest::Hello {
                version: PROTOCOL_VERSION,
                name: "parked".into(),
            }
            .encode(),
            SendFlags::empty(),
        )
        .unwrap();
        // ...another uid is not held up...
        assert!(matches!(
            h.hello(&other, PROTOCOL_VERSION),
            Some(Reply::Welcome(_))
        ));
        // ...and its turn comes when one of its uid's is done.
        assert!(matches!(
            h.hello(&waiting[0], PROTOCOL_VERSION),
            Some(Reply::Welcome(_))
        ));
        assert!(matches!(
            h.control.conns[&parked.key].state,
            ConnState::Waiting { .. }
        ));
        h.dispatch(parked.key);
        assert!(matches!(reply(&parked), Some(Reply::Welcome(_))));
    }

    #[test]
    fn admin_replies_show_each_uid_its_own() {
        let mut h = Harness::new(&[]);
        let alice = h.connect(1000);
        let bob = h.connect(1001);
        let root = h.connect(0);
        for peer in [&alice, &bob, &root] {
            assert!(matches!(
                h.hello(peer, PROTOCOL_VERSION),
                Some(Reply::Welcome(_))
            ));
        }
        assert_eq!(
            h.ask(&alice, &ControlRequest::Stats),
            Some(Reply::Stats(StatsReply {
                objects: 0,
                value_bytes: 0,
                sessions: 3,
                ops: 0,
            }))
        );
        let Some(Reply::Sessions { sessions, next }) =
            h.ask(&alice, &ControlRequest::Sessions { cursor: 0 })
        else {
            panic!("no SESSIONS reply");
        };
        assert_eq!((sessions.len(), sessions[0].uid, next), (1, 1000, 0));
        let Some(Reply::Sessions { sessions, .. }) =
            h.ask(&root, &ControlRequest::Sessions { cursor: 0 })
        else {
            panic!("no SESSIONS reply");
        };
        assert_eq!(sessions.len(), 3);
        let list_bobs = ControlRequest::List {
            cursor: 0,
            limit: 0,
            filter: ListFilter {
                detached_only: false,
                owner: Some(1001),
            },
        };
        assert!(matches!(
            h.ask(&alice, &list_bobs),
            Some(Reply::Error { status, .. }) if status == Status::Denied as u32
        ));
        assert!(matches!(
            h.ask(&root, &list_bobs),
            Some(Reply::Objects { .. })
        ));
        let Some(Reply::Usage(usage)) = h.ask(&bob, &ControlRequest::Usage) else {
            panic!("no USAGE reply");
        };
        assert_eq!(usage.workers.len(), 1);
        assert!(usage.uids.iter().all(|u| u.uid == 1001));
    }
}
