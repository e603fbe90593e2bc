//! The listening socket: binding it (or taking the one systemd passed),
//! accepting connections with their peer's credentials, and never spinning
//! when descriptors run out.
//!
//! One descriptor is kept in reserve (`/dev/null`). When `accept` fails for
//! lack of descriptors, the reserve is closed, one connection is accepted,
//! told why it is refused, and closed, and the reserve is taken again: a
//! newcomer hears a REFUSED naming the limit instead of silence, and each
//! wakeup consumes a waiting connection, so a full descriptor table never
//! makes the loop spin.

use crate::peer::{peer_credentials, Peer};
use anyhow::{bail, Context};
use rustix::fd::OwnedFd;
use rustix::io::Errno;
use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt};
use std::path::{Path, PathBuf};

/// The daemon's listening socket.
pub struct Listener {
    pub fd: OwnedFd,
    /// The socket file we created (removed at shutdown); `None` under
    /// socket activation.
    socket_file: Option<PathBuf>,
    /// The reserve descriptor, `None` while it is lent out.
    spare: Option<OwnedFd>,
}

/// What one call to [`Listener::accept`] gave.
pub enum Accepted {
    /// A new connection and who made it.
    Conn(OwnedFd, Peer),
    /// A connection arrived while descriptors ran out; here it is, to be
    /// refused and closed at once (the reserve is taken back when it is
    /// dropped, see [`Listener::take_spare`]).
    OutOfDescriptors(OwnedFd),
    /// Nothing more to accept now.
    None,
    /// Descriptors ran out and the reserve is gone too: stop accepting
    /// until one frees.
    Exhausted,
}

impl Listener {
    /// Takes the socket systemd passed (`passed`: the descriptors of
    /// `LISTEN_FDS` that are not kept state), else binds `path`.
    pub fn open(
        path: &Path,
        mode: u32,
        group: Option<u32>,
        passed: Vec<OwnedFd>,
    ) -> anyhow::Result<Listener> {
        let (fd, socket_file) = match activated_listener(passed)? {
            Some(fd) => (fd, None),
            None => (bind_listener(path, mode, group)?, Some(path.to_path_buf())),
        };
        Ok(Listener {
            fd,
            socket_file,
            spare: open_spare(),
        })
    }

    /// Accepts one connection (non-blocking).
    pub fn accept(&mut self) -> Accepted {
        loop {
            match rustix::net::accept_with(&self.fd, SocketFlags::CLOEXEC | SocketFlags::NONBLOCK) {
                Ok(fd) => match peer_credentials(&fd) {
                    Ok(peer) => return Accepted::Conn(fd, peer),
                    // Gone already, or not a peer we can name: drop it.
                    Err(_) => continue,
                },
                Err(Errno::AGAIN) => return Accepted::None,
                Err(Errno::INTR | Errno::CONNABORTED) => continue,
                Err(Errno::MFILE | Errno::NFILE) => {
                    if self.spare.take().is_none() {
                        return Accepted::Exhausted;
                    }
                    match rustix::net::accept_with(
                        &self.fd,
                        SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
                    ) {
                        Ok(fd) => return Accepted::OutOfDescriptors(fd),
                        Err(_) => {
                            self.spare = open_spare();
                            return Accepted::Exhausted;
                        }
                    }
                }
                Err(e) => {
                    crate::ratelimit::warn_limited(|| tracing::warn!(error = %e, "accept failed"));
                    return Accepted::None;
                }
            }
        }
    }

    /// Takes the reserve descriptor back after an
    /// [`Accepted::OutOfDescriptors`] connection was closed.
    pub fn take_spare(&mut self) {
        if self.spare.is_none() {
            self.spare = open_spare();
        }
    }

    /// Whether the reserve is in hand (accepting when descriptors run out
    /// can still answer).
    pub fn has_spare(&self) -> bool {
        self.spare.is_some()
    }

    /// Removes the socket file we created.
    pub fn remove_socket_file(&mut self) {
        if let Some(path) = self.socket_file.take() {
            let _ = std::fs::remove_file(path);
        }
    }
}

fn open_spare() -> Option<OwnedFd> {
    rustix::fs::open(
        "/dev/null",
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .ok()
}

/// The listening socket systemd passed (socket activation), if any.
fn activated_listener(passed: Vec<OwnedFd>) -> anyhow::Result<Option<OwnedFd>> {
    let mut fds = passed.into_iter();
    let Some(listener) = fds.next() else {
        return Ok(None);
    };
    if fds.len() > 0 {
        bail!("socket activation passed more than one socket; hregd listens on one");
    }
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
                    "another hregd is serving at {}: stop it first, or give this one \
                     another --socket",
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
