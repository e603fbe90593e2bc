//! One attached session, as the client keeps it: the control socket (one
//! request and its reply at a time; never on the data path), the mapping of
//! the session's memory, the limits WELCOME announced, and whether the
//! session is known to be unusable (the daemon went away, which is sticky,
//! or this is a forked child of the process that connected).

use crate::control::{self, Peek};
use crate::engine::Liveness;
use crate::error::{Error, Result};
use crate::reads::{ChunkSource, Reads};
use crate::shm::{self, SessionMapping};
use hreg_proto::control::{clip, ControlRequest, Reply, Welcome};
use hreg_proto::ring::{ClientRing, Layout};
use hreg_proto::{Status, MAX_CLIENT_NAME, MAX_VALUE_SIZE_LIMIT, PROTOCOL_VERSION};
use rustix::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError, TryLockError};
use std::time::Duration;

/// Source of session keys, which tell one client's rings from another's in
/// a thread's ring list.
static NEXT_KEY: AtomicU64 = AtomicU64::new(1);

pub(crate) struct Session {
    /// Unique in this process (unlike the daemon's session id, which a
    /// restarted daemon may give again).
    key: u64,
    pid: u32,
    sock: OwnedFd,
    /// Serializes control requests: one request and its reply at a time.
    control: Mutex<()>,
    map: SessionMapping,
    reads: Reads,
    welcome: Welcome,
    disconnected: AtomicBool,
}

impl Session {
    /// Connects to `path` (or the default place: the first of
    /// [`default_socket_paths`] that accepts) and says HELLO as `name`
    /// (cut to 64 bytes).
    pub(crate) fn connect(path: Option<&Path>, name: &str) -> Result<Session> {
        shm::install_fork_hook();
        let paths = match path {
            Some(p) => vec![p.to_path_buf()],
            None => default_socket_paths(),
        };
        let mut reason = None;
        for p in &paths {
            match control::connect(p) {
                Ok(sock) => return Session::handshake(sock, p, clip(name, MAX_CLIENT_NAME)),
                Err(e) => reason = Some(format!("{}: {e}", p.display())),
            }
        }
        Err(Error::Connect {
            tried: paths,
            reason,
        })
    }

    fn handshake(sock: OwnedFd, path: &Path, name: &str) -> Result<Session> {
        let hello = ControlRequest::Hello {
            version: PROTOCOL_VERSION,
            name: name.to_owned(),
        };
        let (reply, fds) = match control::call(&sock, &hello) {
            // A daemon that is going away (killed with connections still in
            // its backlog) closes them unanswered: nobody is there to reach.
            Err(Error::Disconnected) => {
                return Err(Error::Connect {
                    tried: vec![path.to_path_buf()],
                    reason: Some(format!(
                        "{}: the daemon closed the connection before answering HELLO",
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
        let [memfd, header] = control::fds::<2>(fds, "WELCOME")?;
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
        )?;
        let reads = Reads::new(&header, welcome.instance)?;
        Ok(Session {
            key: NEXT_KEY.fetch_add(1, Ordering::Relaxed),
            pid: shm::current_pid(),
            sock,
            control: Mutex::new(()),
            map,
            reads,
            welcome,
            disconnected: AtomicBool::new(false),
        })
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

    /// The client's side of ring `index` of this session.
    pub(crate) fn ring(&self, index: u32) -> Result<ClientRing<'_>> {
        self.map.ring(index).ok_or_else(|| {
            Error::Protocol(format!(
                "ring index {index} beyond the session's {} rings",
                self.welcome.max_rings
            ))
        })
    }

    /// The registry's read side, as this session maps it.
    pub(crate) fn reads(&self) -> &Reads {
        &self.reads
    }

    /// The session's memory (rings and pin table).
    pub(crate) fn memory(&self) -> &SessionMapping {
        &self.map
    }

    /// Whether a read may resolve in this process now: DISCONNECTED when the
    /// daemon is known gone, said it stopped, or (looked at on a thread's
    /// first read and every 1024th after) closed the control socket. A read
    /// makes no system call otherwise.
    pub(crate) fn may_read_here(&self) -> Result<()> {
        self.check_usable()?;
        if self.reads.stopped() {
            self.disconnected.store(true, Ordering::Relaxed);
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

    /// Fails when the daemon is known gone or we are a forked child.
    pub(crate) fn check_usable(&self) -> Result<()> {
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
    pub(crate) fn call(&self, request: &ControlRequest) -> Result<(Reply, Vec<OwnedFd>)> {
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

impl ChunkSource for Session {
    fn map_domain(
        &self,
        domain: u16,
        slots_from: usize,
        heap_from: usize,
    ) -> Result<(Vec<OwnedFd>, Vec<OwnedFd>)> {
        let request = ControlRequest::MapDomain {
            domain: u32::from(domain),
            slots_from: slots_from as u32,
            heap_from: heap_from as u32,
        };
        let (reply, mut fds) = self.call(&request)?;
        match reply {
            Reply::DomainChunks {
                domain: answered,
                slots_from: from_slots,
                slots,
                heap_from: from_heap,
                heap,
            } if answered == u32::from(domain)
                && from_slots as usize == slots_from
                && from_heap as usize == heap_from
                && fds.len() == slots as usize + heap as usize =>
            {
                let heap_fds = fds.split_off(slots as usize);
                Ok((fds, heap_fds))
            }
            Reply::Error { status, message } => Err(refusal(status, message)),
            other => Err(Error::Protocol(format!(
                "unexpected reply to MAP_DOMAIN: {other:?} with {} descriptors",
                fds.len()
            ))),
        }
    }
}

impl Liveness for Session {
    /// Waits up to `grace` for the socket to show EOF or SHUTDOWN (zero: just
    /// a look); DISCONNECTED (sticky) if it does.
    fn check_alive_within(&self, grace: Duration) -> Result<()> {
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
}

impl Drop for Session {
    fn drop(&mut self) {
        if self.pid != shm::current_pid() {
            // A forked child: the session is the parent's. Send nothing; the
            // mapping leaks (SessionMapping::drop skips it) and our copy of
            // the socket closes without ending the parent's session.
            return;
        }
        if !self.disconnected.load(Ordering::Relaxed) {
            let _guard = self.lock_control();
            let _ = control::send(&self.sock, &ControlRequest::Goodbye);
        }
    }
}

/// Maps a status and message from REFUSED or ERROR to an error.
pub(crate) fn refusal(status: u32, message: String) -> Error {
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
        assert!(matches!(refusal(6, "no ring".into()), Error::Quota));
        assert!(matches!(refusal(10, "v".into()), Error::Version { .. }));
        assert!(matches!(refusal(11, "p".into()), Error::Protocol(_)));
        assert!(matches!(refusal(99, "?".into()), Error::Protocol(_)));
        assert!(matches!(refusal(0, "?".into()), Error::Protocol(_)));
    }
}
