//! [`Client`]: connecting (HELLO/WELCOME, mapping the session memory), the
//! control-socket requests (serialized by one mutex; never on the data
//! path), and the per-thread rings: each OS thread gets its own ring on its
//! first request, kept in a thread-local keyed by client and closed when the
//! thread exits; past the daemon's ring cap, threads share one ring under a
//! lock. Also fork safety and disconnection (sticky).

use crate::control::{self, Peek};
use crate::engine;
use crate::error::{Error, Result};
use crate::handle::Handle;
use crate::shm::{self, Mapping};
use crate::{Completion, Op, Stats};
use hreg_proto::control::{ObjectInfo, Reply, Request, SessionInfo, UsageReply, Welcome};
use hreg_proto::ring::Layout;
use hreg_proto::{Status, MAX_CLIENT_NAME, MAX_VALUE_SIZE_LIMIT, PROTOCOL_VERSION};
use rustix::fd::{BorrowedFd, OwnedFd};
use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, TryLockError, Weak};
use std::time::Duration;

/// Smallest data area the client works with (the daemon's own minimum).
const MIN_DATA_SIZE: u32 = 64;

/// Source of client ids, the keys of the per-thread ring table.
static NEXT_CLIENT_ID: AtomicU64 = AtomicU64::new(1);

/// A connection to `hregd`: one session, usable from many threads.
///
/// Cloning is cheap and shares the session. Dropping the last clone ends the
/// session (GOODBYE): the daemon then drops every reference it held. A client
/// made before a `fork` is not usable in the child (every call there returns
/// [`Error::Disconnected`] and touches nothing the parent uses); the child
/// connects anew.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    id: u64,
    pid: u32,
    sock: OwnedFd,
    /// Serializes control requests: one request and its reply at a time.
    control: Mutex<()>,
    map: Mapping,
    welcome: Welcome,
    disconnected: AtomicBool,
    rings: Mutex<RingTable>,
}

#[derive(Default)]
struct RingTable {
    /// Every ring this client opened that may still be alive.
    open: Vec<Weak<RingCell>>,
    /// The ring threads share once the daemon has no more rings for us.
    overflow: Option<Arc<RingCell>>,
}

/// One open ring: its doorbell, and the client-side counters behind a lock
/// that only its own thread takes (or the sharing threads, past the cap).
pub(crate) struct RingCell {
    client: Weak<Inner>,
    pid: u32,
    index: u32,
    doorbell: OwnedFd,
    state: Mutex<RingState>,
}

/// What the client keeps for one ring: its counters, and the buffers its
/// batches reuse so that a call allocates nothing once they have grown.
#[derive(Debug, Default)]
pub(crate) struct RingState {
    pub counters: RingCounters,
    pub scratch: engine::Scratch,
}

/// The counters the client owns for one ring.
#[derive(Debug, Default)]
pub(crate) struct RingCounters {
    pub sq_tail: u32,
    pub cq_head: u32,
    pub next_user_data: u64,
    /// Set after a protocol error left the ring in an unknown state.
    pub broken: bool,
}

impl RingCell {
    pub(crate) fn index(&self) -> u32 {
        self.index
    }

    pub(crate) fn doorbell(&self) -> BorrowedFd<'_> {
        use rustix::fd::AsFd;
        self.doorbell.as_fd()
    }

    pub(crate) fn lock(&self) -> Result<MutexGuard<'_, RingState>> {
        self.state
            .lock()
            .map_err(|_| Error::Protocol("ring state poisoned by a panic".into()))
    }
}

impl Drop for RingCell {
    fn drop(&mut self) {
        // Only the process that opened the ring closes it, and only while
        // the session lives (otherwise the daemon frees it with the session).
        if self.pid != shm::current_pid() {
            return;
        }
        if let Some(inner) = self.client.upgrade() {
            let _ = inner.call(&Request::RingClose { index: self.index });
        }
    }
}

/// This thread's rings, one per client it has used.
struct LocalRing {
    client_id: u64,
    client: Weak<Inner>,
    ring: Arc<RingCell>,
}

thread_local! {
    static LOCAL_RINGS: RefCell<Vec<LocalRing>> = const { RefCell::new(Vec::new()) };
}

impl Inner {
    pub(crate) fn welcome(&self) -> &Welcome {
        &self.welcome
    }

    pub(crate) fn map(&self) -> &Mapping {
        &self.map
    }

    /// Fails when the daemon is known gone or we are a forked child.
    fn check_usable(&self) -> Result<()> {
        if self.pid != shm::current_pid() || self.disconnected.load(Ordering::Relaxed) {
            return Err(Error::Disconnected);
        }
        Ok(())
    }

    fn lock_control(&self) -> MutexGuard<'_, ()> {
        // The guarded value is `()`: a panic elsewhere leaves nothing broken.
        self.control.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// One control request and its reply.
    pub(crate) fn call(&self, request: &Request) -> Result<(Reply, Vec<OwnedFd>)> {
        self.check_usable()?;
        let _guard = self.lock_control();
        self.check_usable()?;
        match control::call(&self.sock, request) {
            Err(Error::Disconnected) => {
                self.disconnected.store(true, Ordering::Relaxed);
                Err(Error::Disconnected)
            }
            // A reply may still come, out of step with the next request:
            // this session's control socket is unusable from now on.
            Err(Error::Io(e)) if e.kind() == std::io::ErrorKind::TimedOut => {
                self.disconnected.store(true, Ordering::Relaxed);
                Err(Error::Disconnected)
            }
            other => other,
        }
    }

    /// Called while waiting for completions: is the daemon still there?
    pub(crate) fn check_alive(&self) -> Result<()> {
        self.check_alive_within(Duration::ZERO)
    }

    /// Like [`Inner::check_alive`], waiting up to `grace` for the socket to
    /// show EOF or SHUTDOWN: used when the ring looks wrong, which a daemon
    /// tearing the session down can cause just before it closes the socket.
    pub(crate) fn check_alive_within(&self, grace: Duration) -> Result<()> {
        self.check_usable()?;
        let guard = match self.control.try_lock() {
            Ok(guard) => Some(guard),
            Err(TryLockError::Poisoned(p)) => Some(p.into_inner()),
            Err(TryLockError::WouldBlock) => None,
        };
        match control::peek(&self.sock, guard.is_some(), grace)? {
            Peek::Gone => {
                self.disconnected.store(true, Ordering::Relaxed);
                Err(Error::Disconnected)
            }
            Peek::Quiet | Peek::Busy => Ok(()),
        }
    }

    /// This thread's ring for this client, opening one on first use.
    fn ring(self: &Arc<Inner>) -> Result<Arc<RingCell>> {
        let found = LOCAL_RINGS.try_with(|rings| {
            rings
                .borrow()
                .iter()
                .find(|r| r.client_id == self.id)
                .map(|r| r.ring.clone())
        });
        match found {
            Ok(Some(ring)) => Ok(ring),
            Ok(None) => {
                let ring = self.open_ring()?;
                let stale = LOCAL_RINGS.try_with(|rings| {
                    let mut rings = rings.borrow_mut();
                    // Forget rings of clients that are gone; drop them after
                    // the borrow ends.
                    let (keep, stale): (Vec<_>, Vec<_>) = std::mem::take(&mut *rings)
                        .into_iter()
                        .partition(|r| r.client.strong_count() > 0);
                    *rings = keep;
                    rings.push(LocalRing {
                        client_id: self.id,
                        client: Arc::downgrade(self),
                        ring: ring.clone(),
                    });
                    stale
                });
                drop(stale);
                Ok(ring)
            }
            // The thread is exiting and its locals are gone: share.
            Err(_) => self.shared_ring(),
        }
    }

    fn lock_rings(&self) -> MutexGuard<'_, RingTable> {
        // The table holds only weak and strong pointers; a panic while it
        // was locked leaves it consistent.
        self.rings.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Asks the daemon for a ring; past the cap, shares one we already have.
    fn open_ring(self: &Arc<Inner>) -> Result<Arc<RingCell>> {
        match self.call(&Request::RingOpen)? {
            (Reply::RingOpened { index }, fds) => {
                let doorbell = control::one_fd(fds, "RING_OPENED")?;
                if self.map.ring(index).is_none() {
                    return Err(Error::Protocol(format!(
                        "ring index {index} beyond the session's {} rings",
                        self.welcome.max_rings
                    )));
                }
                let cell = Arc::new(RingCell {
                    client: Arc::downgrade(self),
                    pid: self.pid,
                    index,
                    doorbell,
                    state: Mutex::new(RingState::default()),
                });
                let mut table = self.lock_rings();
                table.open.retain(|r| r.strong_count() > 0);
                table.open.push(Arc::downgrade(&cell));
                Ok(cell)
            }
            (Reply::Error { status, .. }, _) if status == Status::Quota as u32 => {
                let mut table = self.lock_rings();
                if let Some(ring) = &table.overflow {
                    return Ok(ring.clone());
                }
                let ring = table
                    .open
                    .iter()
                    .find_map(Weak::upgrade)
                    .ok_or(Error::Quota)?;
                table.overflow = Some(ring.clone());
                Ok(ring)
            }
            (Reply::Error { status, message }, _) => Err(control_error(status, message)),
            (other, _) => Err(Error::Protocol(format!(
                "unexpected reply to RING_OPEN: {other:?}"
            ))),
        }
    }

    /// A ring for a thread that cannot keep one of its own.
    fn shared_ring(self: &Arc<Inner>) -> Result<Arc<RingCell>> {
        {
            let mut table = self.lock_rings();
            if let Some(ring) = &table.overflow {
                return Ok(ring.clone());
            }
            if let Some(ring) = table.open.iter().find_map(Weak::upgrade) {
                table.overflow = Some(ring.clone());
                return Ok(ring);
            }
        }
        // No ring at all yet: open one (without holding the table, which
        // open_ring locks after the control socket) and make it the shared
        // one. A ring opened meanwhile by another thread is dropped, and
        // so closed, outside the lock.
        let ring = self.open_ring()?;
        let mut table = self.lock_rings();
        let shared = table.overflow.get_or_insert_with(|| ring.clone()).clone();
        drop(table);
        drop(ring);
        Ok(shared)
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Forget this thread's ring of ours now (other threads do it lazily);
        // the session's end frees it in the daemon, so no RING_CLOSE is sent.
        let mine = LOCAL_RINGS.try_with(|rings| {
            rings.try_borrow_mut().ok().map(|mut rings| {
                let (gone, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut *rings)
                    .into_iter()
                    .partition(|r| r.client_id == self.id);
                *rings = keep;
                gone
            })
        });
        drop(mine);
        if self.pid != shm::current_pid() {
            // A forked child: the session is the parent's. Send nothing; the
            // mapping leaks (Mapping::drop skips it) and our copy of the
            // socket closes without ending the parent's session.
            return;
        }
        if !self.disconnected.load(Ordering::Relaxed) {
            let _guard = self.lock_control();
            let _ = control::send(&self.sock, &Request::Goodbye);
        }
    }
}

/// Maps a status and message from REFUSED or ERROR to an error.
fn control_error(status: u32, message: String) -> Error {
    match Status::from_u32(status) {
        Some(Status::Version) => Error::Version { message },
        Some(Status::Protocol) | None | Some(Status::Ok) => {
            Error::Protocol(format!("daemon: {message} (status {status})"))
        }
        Some(s) => Error::from_status(s, 0).unwrap_or(Error::Protocol(message)),
    }
}

/// The socket paths tried when none is given: `$HREG_SOCKET` alone if set;
/// else `$XDG_RUNTIME_DIR/hreg.sock` (when that variable is set), then
/// `/run/hreg/hreg.sock`.
pub fn default_socket_paths() -> Vec<PathBuf> {
    socket_paths(
        std::env::var_os("HREG_SOCKET"),
        std::env::var_os("XDG_RUNTIME_DIR"),
    )
}

fn socket_paths(
    hreg_socket: Option<std::ffi::OsString>,
    runtime_dir: Option<std::ffi::OsString>,
) -> Vec<PathBuf> {
    if let Some(path) = hreg_socket.filter(|v| !v.is_empty()) {
        return vec![PathBuf::from(path)];
    }
    let mut paths = Vec::new();
    if let Some(dir) = runtime_dir.filter(|v| !v.is_empty()) {
        paths.push(PathBuf::from(dir).join("hreg.sock"));
    }
    paths.push(PathBuf::from("/run/hreg/hreg.sock"));
    paths
}

/// This program's name, as HELLO carries it by default.
fn program_name() -> String {
    std::env::args_os()
        .next()
        .and_then(|arg0| {
            Path::new(&arg0)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
        })
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "hreg-client".to_owned())
}

/// `name` cut to at most [`MAX_CLIENT_NAME`] bytes at a character boundary.
fn clip_name(name: &str) -> &str {
    let mut end = name.len().min(MAX_CLIENT_NAME);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    &name[..end]
}

impl Client {
    /// Connects to the daemon at `path`.
    pub fn connect(path: impl AsRef<Path>) -> Result<Client> {
        Client::connect_named(Some(path.as_ref()), &program_name())
    }

    /// Connects to the daemon at the default place (see
    /// [`default_socket_paths`]): the first path that accepts.
    pub fn connect_default() -> Result<Client> {
        Client::connect_named(None, &program_name())
    }

    /// Connects to `path` (or the default place) and introduces the client
    /// as `name` (cut to 64 bytes).
    pub fn connect_named(path: Option<&Path>, name: &str) -> Result<Client> {
        shm::install_fork_hook();
        let paths = match path {
            Some(p) => vec![p.to_path_buf()],
            None => default_socket_paths(),
        };
        let mut reason = None;
        let mut sock = None;
        for p in &paths {
            match control::connect(p) {
                Ok(s) => {
                    sock = Some(s);
                    break;
                }
                Err(e) => reason = Some(format!("{}: {e}", p.display())),
            }
        }
        let Some(sock) = sock else {
            return Err(Error::Connect {
                tried: paths,
                reason,
            });
        };
        Client::handshake(sock, clip_name(name))
    }

    fn handshake(sock: OwnedFd, name: &str) -> Result<Client> {
        let hello = Request::Hello {
            version: PROTOCOL_VERSION,
            name: name.to_owned(),
        };
        let (reply, fds) = match control::call(&sock, &hello) {
            Err(Error::Disconnected) => {
                return Err(Error::Protocol(
                    "the daemon closed the connection before answering HELLO".into(),
                ))
            }
            other => other?,
        };
        let welcome = match reply {
            Reply::Welcome(w) => w,
            Reply::Refused { status, message } => {
                return Err(match Status::from_u32(status) {
                    Some(Status::Version) => Error::Version { message },
                    Some(Status::Quota) => Error::Quota,
                    _ => Error::Protocol(format!("daemon refused the session: {message}")),
                })
            }
            other => {
                return Err(Error::Protocol(format!(
                    "unexpected reply to HELLO: {other:?}"
                )))
            }
        };
        let memfd = control::one_fd(fds, "WELCOME")?;
        if welcome.version != PROTOCOL_VERSION {
            return Err(Error::Version {
                message: format!(
                    "daemon speaks version {}, this client {PROTOCOL_VERSION}",
                    welcome.version
                ),
            });
        }
        if welcome.max_value_size > MAX_VALUE_SIZE_LIMIT {
            return Err(Error::Protocol(format!(
                "max value size {} beyond the protocol's limit",
                welcome.max_value_size
            )));
        }
        if welcome.data_size < MIN_DATA_SIZE {
            return Err(Error::Protocol(format!(
                "data area of {} bytes is too small",
                welcome.data_size
            )));
        }
        let layout = Layout {
            entries: welcome.ring_entries,
            data_size: welcome.data_size,
            max_rings: welcome.max_rings,
        };
        let map = Mapping::new(&memfd, layout, welcome.ring_stride)?;
        drop(memfd);
        Ok(Client {
            inner: Arc::new(Inner {
                id: NEXT_CLIENT_ID.fetch_add(1, Ordering::Relaxed),
                pid: shm::current_pid(),
                sock,
                control: Mutex::new(()),
                map,
                welcome,
                disconnected: AtomicBool::new(false),
                rings: Mutex::new(RingTable::default()),
            }),
        })
    }

    /// The session's id, as the daemon numbers sessions.
    pub fn session_id(&self) -> u64 {
        self.inner.welcome.session_id
    }

    /// Largest value the daemon accepts, in bytes.
    pub fn max_value_size(&self) -> usize {
        usize::try_from(self.inner.welcome.max_value_size).unwrap_or(usize::MAX)
    }

    /// The limits and geometry the daemon announced.
    pub fn welcome(&self) -> Welcome {
        self.inner.welcome
    }

    /// Whether this client is known to be unusable: the daemon went away, or
    /// this is a forked child of the process that connected.
    pub fn is_disconnected(&self) -> bool {
        self.inner.check_usable().is_err()
    }

    /// Runs `ops` in order, each to its own result; a failed op does not
    /// stop the rest. The outer `Err` (DISCONNECTED, IO, PROTOCOL) means the
    /// batch stopped as a whole. Results come in the order of `ops`.
    pub fn submit(&self, ops: &mut [Op<'_>]) -> Result<Vec<Result<Completion>>> {
        self.inner.check_usable()?;
        if ops.is_empty() {
            return Ok(Vec::new());
        }
        let ring = self.inner.ring()?;
        engine::run(&self.inner, &ring, ops)
    }

    /// One operation through the same engine as [`Client::submit`], without
    /// the result vector: nothing is allocated unless the op returns a value
    /// (GET owned) or fails.
    fn one(&self, op: Op<'_>) -> Result<Completion> {
        self.inner.check_usable()?;
        let ring = self.inner.ring()?;
        engine::run_one(&self.inner, &ring, op)
    }

    /// Creates an object holding `value`. `flags`: [`crate::SHARED`],
    /// [`crate::DETACHED`]. Without DETACHED the session holds one reference.
    pub fn insert(&self, value: &[u8], flags: u32) -> Result<Handle> {
        match self.one(Op::Insert { value, flags })? {
            Completion::Inserted(h) => Ok(h),
            other => Err(unexpected(other)),
        }
    }

    /// The value of `handle`.
    pub fn get(&self, handle: Handle) -> Result<Vec<u8>> {
        match self.one(Op::GetOwned { handle })? {
            Completion::Value(v) => Ok(v),
            other => Err(unexpected(other)),
        }
    }

    /// Copies the value of `handle` into `buf` and returns its length.
    /// [`Error::Buffer`] says how long `buf` must be; an empty `buf` probes
    /// the size (OK with 0 for an empty value).
    pub fn get_into(&self, handle: Handle, buf: &mut [u8]) -> Result<usize> {
        match self.one(Op::Get { handle, buf })? {
            Completion::Length(n) => Ok(n),
            other => Err(unexpected(other)),
        }
    }

    /// Replaces the value of `handle`; readers see the old or the new one.
    pub fn replace(&self, handle: Handle, value: &[u8]) -> Result<()> {
        self.one(Op::Replace { handle, value }).map(drop)
    }

    /// Takes one more reference to `handle` for this session.
    pub fn retain(&self, handle: Handle) -> Result<()> {
        self.one(Op::Retain(handle)).map(drop)
    }

    /// Drops one of this session's references ([`Error::NotHeld`] if none).
    pub fn release(&self, handle: Handle) -> Result<()> {
        self.one(Op::Release(handle)).map(drop)
    }

    /// Kills the object now, whoever references it.
    pub fn remove(&self, handle: Handle) -> Result<()> {
        self.one(Op::Remove(handle)).map(drop)
    }

    /// The registry's figures.
    pub fn stats(&self) -> Result<Stats> {
        self.control(&Request::Stats, "STATS", |reply| match reply {
            Reply::Stats(s) => Some(Stats {
                objects: s.objects,
                value_bytes: s.value_bytes,
                sessions: s.sessions,
                ops: s.ops,
            }),
            _ => None,
        })
    }

    /// Every attached session this client may see (all for root, its own
    /// uid's otherwise).
    pub fn sessions(&self) -> Result<Vec<SessionInfo>> {
        let mut all = Vec::new();
        let mut cursor = 0;
        loop {
            let (page, next) = self.control(
                &Request::Sessions { cursor },
                "SESSIONS",
                |reply| match reply {
                    Reply::Sessions { sessions, next } => Some((sessions, next)),
                    _ => None,
                },
            )?;
            all.extend(page);
            if next == 0 {
                return Ok(all);
            }
            cursor = next;
        }
    }

    /// One page of live objects from `cursor` (0 for the first page), at
    /// most `limit` of them, and the cursor of the next page (0: no more).
    /// Only root may list other users' objects.
    pub fn list(
        &self,
        cursor: u64,
        limit: u32,
        filter: ListFilter,
    ) -> Result<(Vec<ObjectInfo>, u64)> {
        let request = Request::List {
            cursor,
            limit,
            detached_only: filter.detached_only,
            owner: filter.owner,
        };
        self.control(&request, "LIST", |reply| match reply {
            Reply::Objects { objects, next } => Some((objects, next)),
            _ => None,
        })
    }

    /// Shard occupancy, usage per uid against its caps, and requests per
    /// second.
    pub fn usage(&self) -> Result<UsageReply> {
        self.control(&Request::Usage, "USAGE", |reply| match reply {
            Reply::Usage(usage) => Some(usage),
            _ => None,
        })
    }

    /// Sends a control request and picks the expected reply out; ERROR
    /// becomes its status, anything else a protocol error.
    fn control<T>(
        &self,
        request: &Request,
        what: &str,
        pick: impl FnOnce(Reply) -> Option<T>,
    ) -> Result<T> {
        let (reply, _) = self.inner.call(request)?;
        if let Reply::Error { status, message } = reply {
            return Err(control_error(status, message));
        }
        let text = format!("{reply:?}");
        pick(reply).ok_or_else(|| Error::Protocol(format!("unexpected reply to {what}: {text}")))
    }
}

/// Which objects [`Client::list`] shows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ListFilter {
    /// Only DETACHED objects (to find orphans).
    pub detached_only: bool,
    /// Only objects of this uid.
    pub owner: Option<u32>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("session_id", &self.inner.welcome.session_id)
            .field("disconnected", &self.is_disconnected())
            .finish_non_exhaustive()
    }
}

fn unexpected(c: Completion) -> Error {
    Error::Protocol(format!("unexpected completion {c:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_clipped_at_char_boundaries() {
        assert_eq!(clip_name("abc"), "abc");
        let long = "é".repeat(40);
        let clipped = clip_name(&long);
        assert!(clipped.len() <= MAX_CLIENT_NAME);
        assert_eq!(clipped.len(), 64);
        let odd = format!("a{}", "é".repeat(40));
        assert_eq!(clip_name(&odd).len(), 63);
    }

    #[test]
    fn default_paths_follow_the_environment() {
        let run = PathBuf::from("/run/hreg/hreg.sock");
        assert_eq!(socket_paths(None, None), vec![run.clone()]);
        assert_eq!(
            socket_paths(Some("".into()), Some("/run/user/7".into())),
            vec![PathBuf::from("/run/user/7/hreg.sock"), run.clone()]
        );
        assert_eq!(
            socket_paths(Some("/tmp/x.sock".into()), Some("/run/user/7".into())),
            vec![PathBuf::from("/tmp/x.sock")]
        );
        assert_eq!(socket_paths(None, Some("".into())), vec![run]);
    }

    #[test]
    fn control_errors_map_to_statuses() {
        assert!(matches!(control_error(6, "no ring".into()), Error::Quota));
        assert!(matches!(
            control_error(10, "v".into()),
            Error::Version { .. }
        ));
        assert!(matches!(control_error(11, "p".into()), Error::Protocol(_)));
        assert!(matches!(control_error(99, "?".into()), Error::Protocol(_)));
        assert!(matches!(control_error(0, "?".into()), Error::Protocol(_)));
    }

    #[test]
    fn connect_to_nothing_names_the_path() {
        let path = std::env::temp_dir().join(format!("hreg-none-{}.sock", std::process::id()));
        match Client::connect(&path) {
            Err(Error::Connect { tried, reason }) => {
                assert_eq!(tried, vec![path]);
                assert!(reason.is_some());
            }
            other => panic!("expected a connect error, got {other:?}"),
        }
    }

    /// A one-shot fake daemon at a fresh path: accepts one connection,
    /// reads HELLO, answers `reply` (with `fd` attached, if any).
    fn fake_daemon(
        tag: &str,
        reply: Reply,
        fd: Option<OwnedFd>,
    ) -> (PathBuf, std::thread::JoinHandle<Request>) {
        use rustix::net::{
            AddressFamily, RecvFlags, SendAncillaryBuffer, SendAncillaryMessage, SendFlags,
            SocketAddrUnix, SocketFlags, SocketType,
        };
        let path =
            std::env::temp_dir().join(format!("hreg-fake-{tag}-{}.sock", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let listener = rustix::net::socket_with(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            SocketFlags::CLOEXEC,
            None,
        )
        .unwrap();
        rustix::net::bind(&listener, &SocketAddrUnix::new(&path).unwrap()).unwrap();
        rustix::net::listen(&listener, 1).unwrap();
        let bound = path.clone();
        let thread = std::thread::spawn(move || {
            let conn = rustix::net::accept(&listener).unwrap();
            let _ = std::fs::remove_file(bound);
            let mut buf = [0u8; 4096];
            let (_, n) = rustix::net::recv(&conn, &mut buf, RecvFlags::empty()).unwrap();
            let hello = Request::decode(&buf[..n]).unwrap();
            let bytes = reply.encode();
            let fds: Vec<_> = fd.iter().map(rustix::fd::AsFd::as_fd).collect();
            let mut space =
                [std::mem::MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(1))];
            let mut cmsg = SendAncillaryBuffer::new(&mut space);
            if !fds.is_empty() {
                assert!(cmsg.push(SendAncillaryMessage::ScmRights(&fds)));
            }
            rustix::net::sendmsg(
                &conn,
                &[std::io::IoSlice::new(&bytes)],
                &mut cmsg,
                SendFlags::empty(),
            )
            .unwrap();
            // Wait for the client to hang up.
            let _ = rustix::net::recv(&conn, &mut buf, RecvFlags::empty());
            hello
        });
        (path, thread)
    }

    #[test]
    fn refusals_map_to_errors() {
        for (tag, status, check) in [
            (
                "version",
                Status::Version,
                (|e: &Error| matches!(e, Error::Version { .. })) as fn(&Error) -> bool,
            ),
            ("quota", Status::Quota, |e: &Error| {
                matches!(e, Error::Quota)
            }),
            ("proto", Status::Protocol, |e: &Error| {
                matches!(e, Error::Protocol(_))
            }),
        ] {
            let reply = Reply::Refused {
                status: status as u32,
                message: "no".into(),
            };
            let (path, thread) = fake_daemon(tag, reply, None);
            let error = Client::connect_named(Some(&path), "fake-test").unwrap_err();
            assert!(check(&error), "{tag}: {error:?}");
            let hello = thread.join().unwrap();
            assert_eq!(
                hello,
                Request::Hello {
                    version: PROTOCOL_VERSION,
                    name: "fake-test".into()
                }
            );
        }
    }

    #[test]
    fn welcome_is_checked() {
        let welcome = Welcome {
            version: PROTOCOL_VERSION,
            session_id: 3,
            max_value_size: 1 << 20,
            max_objects: 10,
            max_bytes: 10,
            ring_entries: 4,
            data_size: 64,
            max_rings: 2,
            ring_stride: 0,
        };
        let layout = Layout {
            entries: 4,
            data_size: 64,
            max_rings: 2,
        };
        let stride = layout.ring_stride() as u64;
        let memfd = || crate::shm::tests::sealed_memfd(stride * 2);

        // No memfd attached.
        let (path, thread) = fake_daemon(
            "nofd",
            Reply::Welcome(Welcome {
                ring_stride: stride,
                ..welcome
            }),
            None,
        );
        assert!(matches!(Client::connect(&path), Err(Error::Protocol(_))));
        thread.join().unwrap();

        // A stride that does not match the memfd.
        let (path, thread) = fake_daemon(
            "stride",
            Reply::Welcome(Welcome {
                ring_stride: stride * 2,
                ..welcome
            }),
            Some(memfd()),
        );
        assert!(matches!(Client::connect(&path), Err(Error::Protocol(_))));
        thread.join().unwrap();

        // Another version.
        let (path, thread) = fake_daemon(
            "ver",
            Reply::Welcome(Welcome {
                version: 2,
                ring_stride: stride,
                ..welcome
            }),
            Some(memfd()),
        );
        assert!(matches!(Client::connect(&path), Err(Error::Version { .. })));
        thread.join().unwrap();

        // A good one.
        let (path, thread) = fake_daemon(
            "good",
            Reply::Welcome(Welcome {
                ring_stride: stride,
                ..welcome
            }),
            Some(memfd()),
        );
        let client = Client::connect(&path).unwrap();
        assert_eq!(client.session_id(), 3);
        assert_eq!(client.max_value_size(), 1 << 20);
        drop(client);
        thread.join().unwrap();
    }

    #[test]
    fn client_is_send_and_sync() {
        fn check<T: Send + Sync + Clone>() {}
        check::<Client>();
    }
}
