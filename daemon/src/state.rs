//! Where the registry is kept across restarts, and taking it back at start.
//!
//! - `--state-dir DIR`: files in DIR ([`DirStore`], locked for one daemon);
//! - else, under systemd with a descriptor store (`$NOTIFY_SOCKET` and
//!   `$FDSTORE` set): memfds handed to the service manager with
//!   `FDSTORE=1`/`FDNAME=` and given back at the next start through
//!   `LISTEN_FDS`/`LISTEN_FDNAMES`;
//! - else nothing is kept ([`MemoryStore`]).
//!
//! At start the daemon adopts what it finds; a state it cannot use is set
//! aside whole (renamed, named in the log) and the daemon starts empty with
//! new instance bits.

#![allow(unsafe_code)]

use anyhow::Context;
use hreg_registry::{
    names, AdoptError, Adopted, DirStore, Keeper, KeptStore, MemoryStore, Registry, Store,
};
use rustix::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use rustix::fs::{Mode, OFlags};
use rustix::net::{AddressFamily, SendFlags, SocketAddrUnix, SocketType};
use std::path::Path;
use std::sync::Arc;

/// Prefix of the names of descriptors set aside in systemd's store.
const ASIDE: &str = "aside.";

/// The service manager's descriptor store, reached through
/// `$NOTIFY_SOCKET`.
pub struct SystemdKeeper {
    socket: SocketAddrUnix,
}

impl SystemdKeeper {
    /// The keeper, when the service manager offers a descriptor store:
    /// `$NOTIFY_SOCKET` names its socket and `$FDSTORE` (systemd ≥ 254;
    /// `FileDescriptorStoreMax=`) is above zero.
    pub fn from_env() -> anyhow::Result<Option<SystemdKeeper>> {
        let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
            return Ok(None);
        };
        let store_max = std::env::var("FDSTORE")
            .ok()
            .and_then(|n| n.parse::<u64>().ok());
        if store_max.is_none_or(|n| n == 0) {
            return Ok(None);
        }
        let bytes = std::os::unix::ffi::OsStrExt::as_bytes(path.as_os_str());
        let socket = match bytes.strip_prefix(b"@") {
            Some(name) => SocketAddrUnix::new_abstract_name(name),
            None => SocketAddrUnix::new(Path::new(&path)),
        }
        .context("bad NOTIFY_SOCKET")?;
        Ok(Some(SystemdKeeper { socket }))
    }

    fn send(&self, message: &str, fd: Option<BorrowedFd<'_>>) -> std::io::Result<()> {
        let sock = rustix::net::socket_with(
            AddressFamily::UNIX,
            SocketType::DGRAM,
            rustix::net::SocketFlags::CLOEXEC,
            None,
        )?;
        let fds: Vec<BorrowedFd<'_>> = fd.into_iter().collect();
        let sent = hreg_proto::fd_passing::send_to(
            &sock,
            &self.socket,
            message.as_bytes(),
            &fds,
            SendFlags::empty(),
        )?;
        if sent != message.len() {
            return Err(std::io::Error::other("short notify message"));
        }
        Ok(())
    }
}

impl Keeper for SystemdKeeper {
    fn keep(&self, name: &str, fd: BorrowedFd<'_>) -> std::io::Result<()> {
        self.send(&format!("FDSTORE=1\nFDNAME={name}\nFDPOLL=0\n"), Some(fd))
    }

    fn forget(&self, name: &str) {
        let _ = self.send(&format!("FDSTOREREMOVE=1\nFDNAME={name}\n"), None);
    }
}

/// The descriptors the service manager passed: the listening socket (if
/// socket-activated) and the kept state.
#[derive(Default)]
pub struct Passed {
    /// Candidates for the listening socket: every passed descriptor whose
    /// name is not a state piece's.
    pub sockets: Vec<OwnedFd>,
    /// Pieces of the kept state, by name.
    pub state: Vec<(String, OwnedFd)>,
}

impl Passed {
    /// Takes every descriptor of `LISTEN_FDS` (for this process, as
    /// `LISTEN_PID` says), sorted by `LISTEN_FDNAMES`; the variables are
    /// read once, at start.
    pub fn take() -> anyhow::Result<Passed> {
        let fds = sd_notify::listen_fds_with_names()
            .context("bad LISTEN_FDS from the service manager")?;
        let mut passed = Passed::default();
        for (raw, name) in fds {
            // SAFETY: LISTEN_FDS/LISTEN_PID name this process, so descriptor
            // `raw` was opened for us by the service manager and nothing else
            // owns it; we take ownership exactly once.
            let fd = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw) };
            if name.starts_with(ASIDE) {
                // A state set aside earlier: left where it is, in the store.
                continue;
            }
            if names::is_valid(&name) {
                passed.state.push((name, fd));
            } else {
                passed.sockets.push(fd);
            }
        }
        Ok(passed)
    }
}

/// The pieces of a state, by name.
type Pieces = [(String, OwnedFd)];

/// Sets an unusable state aside; says where it went.
type SetAside = Box<dyn Fn(&Pieces) -> std::io::Result<String>>;

/// How the state is kept, and what was found at start.
pub struct Keeping {
    pub store: Arc<dyn Store>,
    /// The state found, to adopt.
    pub found: Vec<(String, OwnedFd)>,
    /// Set aside an unusable state: returns where it went.
    set_aside: SetAside,
}

impl Keeping {
    /// The store `state_dir` or the environment asks for, with what it
    /// holds.
    pub fn open(state_dir: Option<&Path>, passed: &mut Passed) -> anyhow::Result<Keeping> {
        if let Some(dir) = state_dir {
            let store = Arc::new(
                DirStore::open(dir)
                    .with_context(|| format!("cannot use state directory {}", dir.display()))?,
            );
            let found = store.list().context("cannot read the state directory")?;
            let aside = Arc::clone(&store);
            return Ok(Keeping {
                store,
                found,
                set_aside: Box::new(move |_| {
                    aside.set_aside("unusable").map(|p| p.display().to_string())
                }),
            });
        }
        if let Some(keeper) = SystemdKeeper::from_env()? {
            let keeper = Arc::new(KeptStore(keeper));
            let aside = Arc::clone(&keeper);
            return Ok(Keeping {
                store: keeper,
                found: std::mem::take(&mut passed.state),
                set_aside: Box::new(move |pieces| {
                    for (name, fd) in pieces {
                        // A new open file description of the same file: the
                        // service manager keeps a description once, under
                        // its first name, and the removal of that name below
                        // would take it along.
                        let reopened = rustix::fs::open(
                            format!("/proc/self/fd/{}", fd.as_raw_fd()),
                            OFlags::RDWR | OFlags::CLOEXEC,
                            Mode::empty(),
                        )?;
                        aside.0.keep(&format!("{ASIDE}{name}"), reopened.as_fd())?;
                        aside.0.forget(name);
                    }
                    Ok(format!("the descriptor store, as {ASIDE}*"))
                }),
            });
        }
        Ok(Keeping {
            store: Arc::new(MemoryStore),
            found: Vec::new(),
            set_aside: Box::new(|_| Ok(String::new())),
        })
    }

    /// Adopts what was found, or starts empty (setting an unusable state
    /// aside first).
    pub fn registry(self, shards: usize, limits: hreg_registry::Limits) -> anyhow::Result<Adopted> {
        let Keeping {
            store,
            found,
            set_aside,
        } = self;
        let keeps = store.keeps_state();
        let duplicates: Vec<(String, OwnedFd)> = found
            .iter()
            .filter_map(|(name, fd)| Some((name.clone(), fd.try_clone().ok()?)))
            .collect();
        match Registry::adopt(Arc::clone(&store), found, limits) {
            Ok(adopted) => {
                tracing::info!(state = %adopted.report, "adopted the kept registry");
                return Ok(adopted);
            }
            Err(AdoptError::Nothing) => {}
            Err(AdoptError::Unusable(why)) => {
                let place =
                    set_aside(&duplicates).context("cannot set the unusable state aside")?;
                tracing::error!(reason = %why, aside = %place, "the kept state cannot be used: set aside, starting empty");
            }
        }
        if keeps {
            tracing::info!("starting with an empty registry, kept across restarts");
        }
        let registry = Registry::create(store, shards, limits)
            .context("cannot make the registry's shared memory")?;
        Ok(Adopted {
            registry,
            sessions: Vec::new(),
            report: hreg_registry::StateReport::default(),
        })
    }
}

/// `--check-state`: what a start would adopt; the exit code says whether
/// it can.
pub fn check(state_dir: Option<&Path>) -> anyhow::Result<bool> {
    let mut passed = Passed::take()?;
    let keeping = Keeping::open(state_dir, &mut passed)?;
    if !keeping.store.keeps_state() {
        println!("no state is kept: pass --state-dir DIR, or run under systemd with FileDescriptorStoreMax=");
        return Ok(true);
    }
    match Registry::survey(keeping.found) {
        Ok(report) => {
            println!("would adopt: {report}");
            Ok(true)
        }
        Err(AdoptError::Nothing) => {
            println!("nothing kept yet: a start begins with an empty registry");
            Ok(true)
        }
        Err(e) => {
            println!("{e}; a start would set it aside and begin empty");
            Ok(false)
        }
    }
}
