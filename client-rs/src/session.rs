//! One attached session, as the client keeps it: the control socket (one
//! request and its reply at a time; never on the data path), the mapping of
//! the session's memory, the limits WELCOME announced, and whether the
//! session is usable: attached; away (the daemon went away, and a thread
//! of ours is taking the session back from its successor: RESUME, with
//! backoff, within the grace period WELCOME gave); or gone for good (the
//! daemon kept no state, the grace passed, the session was refused, or
//! this is a forked child of the process that connected).

use crate::control_socket::{self, Peek};
use crate::engine::Liveness;
use crate::error::{Error, Result};
use crate::mapped::{self, SessionMapping};
use crate::posted::Posting;
use crate::reads::{Chunk, ChunkSource, RegistryView};
use hreg_proto::control::{clip, ControlRequest, MapDomain, Reply, Welcome};
use hreg_proto::locks::{lock, read, write};
use hreg_proto::ring::{ClientRing, Layout, ReadyWord};
use hreg_proto::{Limit, Status, MAX_CLIENT_NAME, MAX_VALUE_SIZE_LIMIT, PROTOCOL_VERSION};
use rustix::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, TryLockError, Weak};
use std::time::{Duration, Instant};

/// The session serves.
const ATTACHED: u8 = 0;
/// The daemon went away; a resume is under way.
const AWAY: u8 = 1;
/// Gone for good: every call is DISCONNECTED.
const GONE: u8 = 2;

/// Longest a resume attempt waits for its answer (a daemon that is still
/// stopping may hold the connection unanswered).
const RESUME_ATTEMPT: Duration = Duration::from_secs(5);

/// Source of session keys, which tell one client's rings from another's in
/// a thread's ring list.
static NEXT_KEY: AtomicU64 = AtomicU64::new(1);

pub(crate) struct ClientSession {
    /// Unique in this process (unlike the daemon's session id, which a
    /// restarted daemon may give again).
    key: u64,
    pid: u32,
    /// Where the session was made; a resume goes there.
    path: PathBuf,
    /// The control socket, replaced when the session resumes.
    sock: RwLock<Arc<OwnedFd>>,
    /// Serializes control requests: one request and its reply at a time.
    control: Mutex<()>,
    /// The session memory's memfd, which RESUME brings back (kept only when
    /// the daemon keeps sessions across restarts).
    memfd: Option<OwnedFd>,
    map: SessionMapping,
    /// Shared with bindings that read the mappings themselves
    /// ([`crate::MappedReads`]): they stay mapped while either holds them.
    reads: Arc<RegistryView>,
    welcome: Welcome,
    /// [`ATTACHED`], [`AWAY`] or [`GONE`].
    state: AtomicU8,
    /// How many times the session resumed: rings opened before are dead.
    generation: AtomicU64,
    /// This session, for the thread that resumes it.
    me: Weak<ClientSession>,
    /// Posted writes: handles ahead, credit, references, late failures
    /// (the client's, over all its rings).
    pub(crate) posting: Posting,
}

impl ClientSession {
    /// Connects to `path` (or the default place: the first of
    /// [`default_socket_paths`] that accepts) and says HELLO as `name`
    /// (cut to 64 bytes).
    pub(crate) fn connect(path: Option<&Path>, name: &str) -> Result<Arc<ClientSession>> {
        mapped::install_fork_hook();
        let paths = match path {
            Some(p) => vec![p.to_path_buf()],
            None => default_socket_paths(),
        };
        let mut failed = Vec::new();
        for p in paths {
            match control_socket::connect(&p) {
                Ok(sock) => return ClientSession::handshake(sock, &p, clip(name, MAX_CLIENT_NAME)),
                Err(e) => failed.push((p, e)),
            }
        }
        Err(crate::error::connect_failed(failed, path.is_none()))
    }

    fn handshake(sock: OwnedFd, path: &Path, name: &str) -> Result<Arc<ClientSession>> {
        // Names are text: the daemon refuses control characters.
        if name.chars().any(char::is_control) {
            return Err(Error::Invalid);
        }
        let hello = ControlRequest::Hello {
            version: PROTOCOL_VERSION,
            name: name.to_owned(),
        };
        let (reply, fds) = match control_socket::call(&sock, &hello) {
            // A daemon that is going away (killed with connections still in
            // its backlog) closes them unanswered: nobody is there to reach.
            Err(Error::Disconnected) => {
                return Err(Error::Connect {
                    tried: vec![path.to_path_buf()],
                    reason: Some(format!(
                        "{} at {}: the daemon closed the connection before answering HELLO \
                         (it is stopping)",
                        Status::Connect.message(),
                        path.display()
                    )),
                })
            }
            other => other?,
        };
        let welcome = match reply {
            Reply::Welcome(w) => w,
            Reply::Refused { status, message } => return Err(refusal(status, message)),
            other => {
                return Err(Error::Protocol(format!(
                    "unexpected reply to HELLO: {other:?}"
                )))
            }
        };
        let Ok([memfd, header]) = <[OwnedFd; 2]>::try_from(fds) else {
            return Err(Error::Protocol(
                "WELCOME came without the session memory and the registry header".into(),
            ));
        };
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
        let layout = Layout {
            entries: welcome.ring_entries,
            data_size: welcome.data_size,
            max_rings: welcome.max_rings,
        };
        let map = SessionMapping::new(
            &memfd,
            layout,
            welcome.ring_stride,
            welcome.pins_offset,
            welcome.pin_entries,
            welcome.pin_bytes,
        )?;
        let reads = Arc::new(RegistryView::new(&header, welcome.instance)?);
        let resumable = welcome.resume_grace_ms > 0 && welcome.resume_token != [0; 16];
        Ok(Arc::new_cyclic(|me| ClientSession {
            key: NEXT_KEY.fetch_add(1, Ordering::Relaxed),
            pid: mapped::current_pid(),
            path: path.to_path_buf(),
            sock: RwLock::new(Arc::new(sock)),
            control: Mutex::new(()),
            memfd: resumable.then_some(memfd),
            map,
            reads,
            welcome,
            state: AtomicU8::new(ATTACHED),
            generation: AtomicU64::new(0),
            me: me.clone(),
            posting: Posting::default(),
        }))
    }

    /// The control socket now.
    fn sock(&self) -> Arc<OwnedFd> {
        Arc::clone(&read(&self.sock))
    }

    /// How many times the session resumed (rings of an earlier generation
    /// are the old daemon's, and dead).
    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The daemon is gone: the session is given up, or (when the daemon
    /// keeps sessions) a thread starts taking it back from the next daemon.
    fn lost(&self) {
        if self.memfd.is_none() {
            self.state.store(GONE, Ordering::Release);
            return;
        }
        if self
            .state
            .compare_exchange(ATTACHED, AWAY, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return;
        }
        let me = self.me.clone();
        let deadline =
            Instant::now() + Duration::from_millis(u64::from(self.welcome.resume_grace_ms));
        let spawned = std::thread::Builder::new()
            .name("hreg-resume".into())
            .spawn(move || resume(me, deadline));
        if spawned.is_err() {
            self.state.store(GONE, Ordering::Release);
        }
    }

    /// One attempt to take the session back (RESUME): `Ok(true)` done,
    /// `Ok(false)` no daemon to answer yet (try again), an error when the
    /// daemon refused (the session is gone for good).
    fn try_resume(&self, deadline: Instant) -> Result<bool> {
        let Some(memfd) = &self.memfd else {
            return Err(Error::Disconnected);
        };
        let Ok(sock) = control_socket::connect(&self.path) else {
            return Ok(false);
        };
        let request = ControlRequest::Resume {
            version: PROTOCOL_VERSION,
            session_id: self.welcome.session_id,
            token: self.welcome.resume_token,
        };
        let wait = deadline
            .saturating_duration_since(Instant::now())
            .min(RESUME_ATTEMPT);
        let answer = control_socket::send_with_fds(&sock, &request, &[memfd.as_fd()])
            .and_then(|()| control_socket::recv_within(&sock, wait));
        let reply = match answer {
            Ok((reply, _fds)) => reply,
            Err(Error::Disconnected | Error::Io(_)) => return Ok(false),
            Err(e) => return Err(e),
        };
        match reply {
            Reply::Welcome(w)
                if w.session_id == self.welcome.session_id
                    && w.instance == self.welcome.instance
                    && (w.ring_entries, w.data_size, w.max_rings, w.pins_offset)
                        == (
                            self.welcome.ring_entries,
                            self.welcome.data_size,
                            self.welcome.max_rings,
                            self.welcome.pins_offset,
                        ) =>
            {
                let _guard = self.lock_control();
                *write(&self.sock) = Arc::new(sock);
                self.generation.fetch_add(1, Ordering::AcqRel);
                Ok(true)
            }
            Reply::Refused { status, message } => Err(refusal(status, message)),
            other => Err(Error::Protocol(format!(
                "unexpected reply to RESUME: {other:?}"
            ))),
        }
    }

    pub(crate) fn key(&self) -> u64 {
        self.key
    }

    /// The process that connected.
    pub(crate) fn pid(&self) -> u32 {
        self.pid
    }

    pub(crate) fn welcome(&self) -> &Welcome {
        &self.welcome
    }

    /// The low 32 bits of the session's id, as a slot reserved for it
    /// names it.
    pub(crate) fn own_id(&self) -> u32 {
        self.welcome.session_id as u32
    }

    /// The client's side of ring `index` of this session.
    pub(crate) fn ring(&self, index: u32) -> Result<ClientRing<'_>> {
        self.map.ring(index).ok_or_else(|| {
            Error::Protocol(format!(
                "ring index {index} beyond the session's {} rings",
                self.welcome.max_rings
            ))
        })
    }

    /// The ready word at `offset` of the session memory (RING_OPENED names
    /// it).
    pub(crate) fn ready_word(&self, offset: u64) -> Result<ReadyWord<'_>> {
        usize::try_from(offset)
            .ok()
            .and_then(|offset| self.map.ready_word(offset))
            .ok_or_else(|| {
                Error::Protocol(format!(
                    "ready word at {offset}, outside the session's ready area"
                ))
            })
    }

    /// The registry's read side, as this session maps it.
    pub(crate) fn reads(&self) -> &RegistryView {
        &self.reads
    }

    /// The read side, shared (for [`crate::MappedReads`]).
    pub(crate) fn reads_shared(&self) -> Arc<RegistryView> {
        Arc::clone(&self.reads)
    }

    /// The session's memory (rings and pin table).
    pub(crate) fn memory(&self) -> &SessionMapping {
        &self.map
    }

    /// Whether a read may resolve in this process now: DISCONNECTED when the
    /// daemon is known gone, said it stopped, or (looked at on a thread's
    /// first read and every 1024th after) closed the control socket. A read
    /// makes no system call otherwise.
    #[inline]
    pub(crate) fn may_read_here(&self) -> Result<()> {
        self.check_usable()?;
        if self.reads.stopped() {
            self.lost();
            return Err(Error::Disconnected);
        }
        thread_local! {
            static READS: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
        }
        let n = READS.with(|reads| {
            let n = reads.get().wrapping_add(1);
            reads.set(n);
            n
        });
        if n % 1024 == 1 {
            self.check_alive_within(Duration::ZERO)?;
        }
        Ok(())
    }

    /// Fails when the daemon is away or gone, or we are a forked child.
    #[inline]
    pub(crate) fn check_usable(&self) -> Result<()> {
        if self.pid != mapped::current_pid() || self.state.load(Ordering::Acquire) != ATTACHED {
            return Err(Error::Disconnected);
        }
        Ok(())
    }

    fn lock_control(&self) -> MutexGuard<'_, ()> {
        // The guarded value is `()`: a panic elsewhere leaves nothing broken.
        lock(&self.control)
    }

    /// One control request and its reply.
    pub(crate) fn call(&self, request: &ControlRequest) -> Result<(Reply, Vec<OwnedFd>)> {
        self.check_usable()?;
        let _guard = self.lock_control();
        self.check_usable()?;
        match control_socket::call(&*self.sock(), request) {
            Err(Error::Disconnected) => {
                self.lost();
                Err(Error::Disconnected)
            }
            // A reply may still come, out of step with the next request:
            // this session's control socket is unusable from now on.
            Err(Error::Io(e)) if e.kind() == std::io::ErrorKind::TimedOut => {
                self.state.store(GONE, Ordering::Release);
                Err(Error::Disconnected)
            }
            other => other,
        }
    }

    /// A control request whose reply is picked out by `pick`; ERROR becomes
    /// its status, anything else a protocol error.
    pub(crate) fn request<T>(
        &self,
        request: &ControlRequest,
        what: &str,
        pick: impl FnOnce(Reply) -> Option<T>,
    ) -> Result<T> {
        let (reply, _) = self.call(request)?;
        if let Reply::Error { status, message } = reply {
            return Err(refusal(status, message));
        }
        let text = format!("{reply:?}");
        pick(reply).ok_or_else(|| Error::Protocol(format!("unexpected reply to {what}: {text}")))
    }
}

impl ChunkSource for ClientSession {
    fn map_chunk(&self, domain: u16, chunk: Chunk) -> Result<Option<OwnedFd>> {
        // Chunk indexes are below MAX_HEAP_CHUNKS: they fit.
        let (slot_chunk, heap_chunk) = match chunk {
            Chunk::Slots(k) => (k as u32, MapDomain::NONE),
            Chunk::Heap(k) => (MapDomain::NONE, k as u32),
        };
        let request = ControlRequest::MapDomain {
            domain: u32::from(domain),
            slot_chunk,
            heap_chunk,
        };
        let (reply, mut fds) = self.call(&request)?;
        match reply {
            Reply::DomainChunks {
                domain: answered,
                slots_from,
                slots,
                heap_from,
                heap,
            } if answered == u32::from(domain)
                && (slots_from, heap_from) == (slot_chunk, heap_chunk)
                && slots + heap <= 1
                && fds.len() == (slots + heap) as usize =>
            {
                Ok(fds.pop())
            }
            Reply::Error { status, message } => Err(refusal(status, message)),
            other => Err(Error::Protocol(format!(
                "unexpected reply to MAP_DOMAIN: {other:?} with {} descriptors",
                fds.len()
            ))),
        }
    }
}

impl Liveness for ClientSession {
    /// Waits up to `grace` for the socket to show EOF or SHUTDOWN (zero: just
    /// a look); DISCONNECTED (sticky) if it does.
    fn check_alive_within(&self, grace: Duration) -> Result<()> {
        self.check_usable()?;
        let guard = match self.control.try_lock() {
            Ok(guard) => Some(guard),
            Err(TryLockError::Poisoned(p)) => Some(p.into_inner()),
            Err(TryLockError::WouldBlock) => None,
        };
        match control_socket::peek(&*self.sock(), guard.is_some(), grace)? {
            Peek::Gone => {
                drop(guard);
                self.lost();
                Err(Error::Disconnected)
            }
            Peek::Quiet | Peek::Busy => Ok(()),
        }
    }
}

impl Drop for ClientSession {
    fn drop(&mut self) {
        if self.pid != mapped::current_pid() {
            // A forked child: the session is the parent's. Send nothing; the
            // mapping leaks (SessionMapping::drop skips it) and our copy of
            // the socket closes without ending the parent's session.
            return;
        }
        if self.state.load(Ordering::Acquire) == ATTACHED {
            let _guard = self.lock_control();
            let _ = control_socket::send(&*self.sock(), &ControlRequest::Goodbye);
        }
    }
}

/// The resuming thread: tries RESUME with backoff until it succeeds, the
/// daemon refuses, `deadline` passes or the client is dropped. QUOTA is not
/// a final refusal: the daemon holds a kept session's slot, but one of its
/// caps may still be full for a moment (others detaching after the
/// restart), so it is tried again until the grace ends.
fn resume(me: Weak<ClientSession>, deadline: Instant) {
    let mut pause = Duration::from_millis(5);
    loop {
        let Some(session) = me.upgrade() else {
            return;
        };
        let outcome = session.try_resume(deadline);
        let state = match outcome {
            Ok(true) => ATTACHED,
            Ok(false) | Err(Error::Quota { .. }) if Instant::now() + pause < deadline => AWAY,
            Ok(false) => GONE,
            Err(_) => GONE,
        };
        if state != AWAY {
            session.state.store(state, Ordering::Release);
            return;
        }
        drop(session);
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(250));
    }
}

/// Maps a status and message from REFUSED or ERROR to an error; QUOTA
/// keeps the daemon's text and the limit it names.
pub(crate) fn refusal(status: u32, message: String) -> Error {
    match Status::from_u32(status) {
        Some(Status::Version) => Error::Version { message },
        Some(Status::Quota) => Error::Quota {
            limit: Limit::named_in(&message),
            message: Some(message),
        },
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

#[cfg(test)]
mod tests {
    use super::*;

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
        let quota = refusal(6, "max_sessions: 3 sessions attached".into());
        assert!(matches!(
            &quota,
            Error::Quota {
                limit: Some(Limit::MaxSessions),
                message: Some(m),
            } if m == "max_sessions: 3 sessions attached"
        ));
        assert!(quota
            .to_string()
            .contains("max_sessions: 3 sessions attached"));
        assert!(matches!(
            refusal(6, "no ring".into()),
            Error::Quota {
                limit: None,
                message: Some(_)
            }
        ));
        assert!(matches!(refusal(10, "v".into()), Error::Version { .. }));
        assert!(matches!(refusal(11, "p".into()), Error::Protocol(_)));
        assert!(matches!(refusal(99, "?".into()), Error::Protocol(_)));
        assert!(matches!(refusal(0, "?".into()), Error::Protocol(_)));
    }
}
