//! Where the registry's memory lives, and how it outlives the daemon.
//!
//! Every piece of the registry's state (the header, each domain's slot and
//! heap chunks and write journal, each session's record) is one descriptor
//! with a name ([`names`]). A [`Store`] makes them and, when it keeps
//! state, keeps them for the next daemon:
//!
//! - [`MemoryStore`]: memfds, kept by nobody (the default; a daemon started
//!   without a state keeps nothing);
//! - [`DirStore`]: files in a directory on tmpfs (`--state-dir`), with an
//!   exclusive `flock` on the directory so two daemons never share a state;
//! - under systemd, memfds handed to the service manager's descriptor store
//!   (the daemon's `FDSTORE=1` store, built on [`Keeper`]).
//!
//! One format, whichever keeps it: the names and the bytes are the same, and
//! a daemon adopts what it is given (`crate::adopt`).

use rustix::fd::{AsFd, BorrowedFd, OwnedFd};
use rustix::fs::{FlockOperation, MemfdFlags, Mode, OFlags, SealFlags};
use std::io;
use std::path::{Path, PathBuf};

/// Makes the registry's descriptors and keeps them (or not) for the next
/// daemon.
pub trait Store: Send + Sync {
    /// A new descriptor named `name`, `len` bytes of zeroes (no pages
    /// allocated yet), mode 0600, read/write; kept under `name` when the
    /// store keeps state. Sealed against shrinking and growing where the
    /// kernel allows it (memfds).
    fn create(&self, name: &str, len: u64) -> io::Result<OwnedFd>;

    /// `name` is no longer part of the state (a session that ended, a
    /// record that was replaced).
    fn remove(&self, name: &str);

    /// Whether what this store makes outlives the daemon.
    fn keeps_state(&self) -> bool;
}

/// A memfd of `len` bytes named `name`, mode 0600, sealed against
/// shrinking, growing and further seals.
pub fn sealed_memfd(name: &str, len: u64) -> io::Result<OwnedFd> {
    let fd = rustix::fs::memfd_create(name, MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)?;
    rustix::fs::fchmod(&fd, Mode::from_raw_mode(0o600))?;
    rustix::fs::ftruncate(&fd, len)?;
    rustix::fs::fcntl_add_seals(&fd, SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL)?;
    Ok(fd)
}

/// Memfds that end with the daemon.
#[derive(Debug, Default)]
pub struct MemoryStore;

impl Store for MemoryStore {
    fn create(&self, name: &str, len: u64) -> io::Result<OwnedFd> {
        sealed_memfd(&format!("hreg-{name}"), len)
    }

    fn remove(&self, _name: &str) {}

    fn keeps_state(&self) -> bool {
        false
    }
}

/// Memfds handed to someone who keeps them across restarts (the service
/// manager's descriptor store): `keep` is called with each new one,
/// `forget` when one leaves the state.
pub trait Keeper: Send + Sync {
    /// Keep `fd` under `name` (replacing anything of that name).
    fn keep(&self, name: &str, fd: BorrowedFd<'_>) -> io::Result<()>;
    /// Drop what is kept under `name`.
    fn forget(&self, name: &str);
}

/// Memfds kept by a [`Keeper`].
pub struct KeptStore<K: Keeper>(pub K);

impl<K: Keeper> Store for KeptStore<K> {
    fn create(&self, name: &str, len: u64) -> io::Result<OwnedFd> {
        let fd = sealed_memfd(&format!("hreg-{name}"), len)?;
        self.0.keep(name, fd.as_fd())?;
        Ok(fd)
    }

    fn remove(&self, name: &str) {
        self.0.forget(name);
    }

    fn keeps_state(&self) -> bool {
        true
    }
}

/// Files in a directory (meant to be on tmpfs), locked for one daemon.
#[derive(Debug)]
pub struct DirStore {
    dir: PathBuf,
    /// The directory itself, open, holding the exclusive `flock`.
    lock: OwnedFd,
}

impl DirStore {
    /// Opens (making it, mode 0700, if missing) and locks `dir`; fails when
    /// another daemon holds it.
    pub fn open(dir: &Path) -> io::Result<DirStore> {
        match std::fs::create_dir(dir) {
            Ok(()) => rustix::fs::chmod(dir, Mode::from_raw_mode(0o700))?,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
        let lock = rustix::fs::open(
            dir,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        rustix::fs::flock(&lock, FlockOperation::NonBlockingLockExclusive).map_err(|e| {
            if e == rustix::io::Errno::WOULDBLOCK {
                io::Error::new(
                    io::ErrorKind::WouldBlock,
                    format!(
                        "{} is locked by another hregd: two daemons never share a state",
                        dir.display()
                    ),
                )
            } else {
                e.into()
            }
        })?;
        Ok(DirStore {
            dir: dir.to_path_buf(),
            lock,
        })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Every file of the state, by name, open read/write (subdirectories,
    /// such as states set aside, are left alone).
    pub fn list(&self) -> io::Result<Vec<(String, OwnedFd)>> {
        let mut found = Vec::new();
        for entry in std::fs::read_dir(&self.dir)? {
            let entry = entry?;
            if !entry.file_type()?.is_file() {
                continue;
            }
            let Ok(name) = entry.file_name().into_string() else {
                continue;
            };
            let fd = rustix::fs::openat(
                &self.lock,
                name.as_str(),
                OFlags::RDWR | OFlags::CLOEXEC | OFlags::NOFOLLOW,
                Mode::empty(),
            )?;
            found.push((name, fd));
        }
        found.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(found)
    }

    /// Moves every file of the state into a new subdirectory named after
    /// `why` and the time, and returns its path: a state that cannot be
    /// adopted is kept whole for inspection, never deleted.
    pub fn set_aside(&self, why: &str) -> io::Result<PathBuf> {
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let mut aside = self.dir.join(format!("{why}-{stamp}"));
        let mut n = 1;
        while aside.exists() {
            aside = self.dir.join(format!("{why}-{stamp}.{n}"));
            n += 1;
        }
        std::fs::create_dir(&aside)?;
        for (name, _) in self.list()? {
            std::fs::rename(self.dir.join(&name), aside.join(&name))?;
        }
        Ok(aside)
    }
}

impl Store for DirStore {
    fn create(&self, name: &str, len: u64) -> io::Result<OwnedFd> {
        if !names::is_valid(name) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("not a state file name: {name:?}"),
            ));
        }
        // A leftover of a state that was not adopted goes first.
        let _ = rustix::fs::unlinkat(&self.lock, name, rustix::fs::AtFlags::empty());
        let fd = rustix::fs::openat(
            &self.lock,
            name,
            OFlags::RDWR | OFlags::CREATE | OFlags::EXCL | OFlags::CLOEXEC | OFlags::NOFOLLOW,
            Mode::from_raw_mode(0o600),
        )?;
        rustix::fs::fchmod(&fd, Mode::from_raw_mode(0o600))?;
        rustix::fs::ftruncate(&fd, len)?;
        Ok(fd)
    }

    fn remove(&self, name: &str) {
        if names::is_valid(name) {
            let _ = rustix::fs::unlinkat(&self.lock, name, rustix::fs::AtFlags::empty());
        }
    }

    fn keeps_state(&self) -> bool {
        true
    }
}

/// The names of the state's pieces: short, made of `[a-z0-9.-]`, each
/// saying what the piece is.
///
/// | name | piece |
/// |------|-------|
/// | `header` | the registry header (`hreg_proto::table::header`) |
/// | `d<D>-u<UID>` / `d<D>-shared` | domain D's record: its owner, its write journal |
/// | `d<D>-s<K>` | slot chunk K of domain D |
/// | `d<D>-h<K>` | heap chunk K of domain D |
/// | `session-<ID>.<G>` | session ID's record (token, uid, references), generation G |
pub mod names {
    /// The registry header.
    pub const HEADER: &str = "header";

    /// Domain `domain`'s record, owned by `owner` (`None`: SHARED).
    pub fn domain(domain: u16, owner: Option<u32>) -> String {
        match owner {
            Some(uid) => format!("d{domain}-u{uid}"),
            None => format!("d{domain}-shared"),
        }
    }

    /// Slot chunk `chunk` of `domain`.
    pub fn slots(domain: u16, chunk: usize) -> String {
        format!("d{domain}-s{chunk}")
    }

    /// Heap chunk `chunk` of `domain`.
    pub fn heap(domain: u16, chunk: usize) -> String {
        format!("d{domain}-h{chunk}")
    }

    /// Generation `generation` of session `id`'s record.
    pub fn session(id: u64, generation: u32) -> String {
        format!("session-{id}.{generation}")
    }

    /// What a name says it is.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum Piece {
        /// The header.
        Header,
        /// A domain's record.
        Domain {
            /// The domain.
            domain: u16,
            /// Its owner (`None`: SHARED).
            owner: Option<u32>,
        },
        /// A slot chunk.
        Slots {
            /// The domain.
            domain: u16,
            /// The chunk's index.
            chunk: usize,
        },
        /// A heap chunk.
        Heap {
            /// The domain.
            domain: u16,
            /// The chunk's index.
            chunk: usize,
        },
        /// A session's record.
        Session {
            /// The session's id.
            id: u64,
            /// The record's generation.
            generation: u32,
        },
    }

    /// The piece `name` names, if it is one.
    pub fn parse(name: &str) -> Option<Piece> {
        if name == HEADER {
            return Some(Piece::Header);
        }
        if let Some(rest) = name.strip_prefix("session-") {
            let (id, generation) = rest.split_once('.')?;
            return Some(Piece::Session {
                id: number(id)?,
                generation: number(generation)?,
            });
        }
        let (domain, what) = name.strip_prefix('d')?.split_once('-')?;
        let domain = number(domain)?;
        if what == "shared" {
            return Some(Piece::Domain {
                domain,
                owner: None,
            });
        }
        let (kind, value) = what.split_at_checked(1)?;
        match kind {
            "u" => Some(Piece::Domain {
                domain,
                owner: Some(number(value)?),
            }),
            "s" => Some(Piece::Slots {
                domain,
                chunk: number(value)?,
            }),
            "h" => Some(Piece::Heap {
                domain,
                chunk: number(value)?,
            }),
            _ => None,
        }
    }

    /// Whether `name` is one of the state's names.
    pub fn is_valid(name: &str) -> bool {
        parse(name).is_some()
    }

    /// A decimal number written the one way it is written here.
    fn number<T: std::str::FromStr + ToString>(text: &str) -> Option<T> {
        let n: T = text.parse().ok()?;
        (n.to_string() == text).then_some(n)
    }
}

#[cfg(test)]
mod tests {
    use super::names::{parse, Piece};
    use super::*;

    #[test]
    fn names_say_what_they_are_and_nothing_else_parses() {
        assert_eq!(parse(names::HEADER), Some(Piece::Header));
        assert_eq!(
            parse(&names::domain(3, Some(1000))),
            Some(Piece::Domain {
                domain: 3,
                owner: Some(1000)
            })
        );
        assert_eq!(
            parse(&names::domain(0, None)),
            Some(Piece::Domain {
                domain: 0,
                owner: None
            })
        );
        assert_eq!(
            parse(&names::slots(7, 14)),
            Some(Piece::Slots {
                domain: 7,
                chunk: 14
            })
        );
        assert_eq!(
            parse(&names::heap(16383, 1023)),
            Some(Piece::Heap {
                domain: 16383,
                chunk: 1023
            })
        );
        assert_eq!(
            parse(&names::session(u64::MAX, 2)),
            Some(Piece::Session {
                id: u64::MAX,
                generation: 2
            })
        );
        for odd in [
            "",
            "d",
            "d1",
            "d1-",
            "d1-x2",
            "d01-s1",
            "d1-s01",
            "d1-s",
            "d70000-s1",
            "session-1",
            "session-1.x",
            "session-+1.0",
            "../header",
            "header2",
            "d1-u-1",
        ] {
            assert_eq!(parse(odd), None, "{odd:?}");
        }
    }

    #[test]
    fn a_dir_store_is_locked_kept_and_set_aside_whole() {
        let base = std::env::temp_dir().join(format!("hreg-store-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let store = DirStore::open(&base).unwrap();
        let err = DirStore::open(&base).unwrap_err();
        assert!(err.to_string().contains("locked"), "{err}");
        let fd = store.create("d0-s0", 8192).unwrap();
        assert_eq!(rustix::fs::fstat(&fd).unwrap().st_size, 8192);
        assert_eq!(rustix::fs::fstat(&fd).unwrap().st_mode & 0o777, 0o600);
        assert!(store.create("../evil", 10).is_err());
        store.create(names::HEADER, 4096).unwrap();
        let found: Vec<String> = store.list().unwrap().into_iter().map(|(n, _)| n).collect();
        assert_eq!(found, ["d0-s0", "header"]);
        store.remove("d0-s0");
        let aside = store.set_aside("rejected").unwrap();
        assert!(aside.join("header").exists());
        assert!(store.list().unwrap().is_empty());
        drop(store);
        let again = DirStore::open(&base).unwrap();
        assert!(
            again.list().unwrap().is_empty(),
            "set-aside states are not adopted"
        );
        std::fs::remove_dir_all(&base).unwrap();
    }
}
