//! Where the registry's memory lives, and how it outlives the daemon.
//!
//! Every piece of the registry's state (the header, each domain's slot and
//! heap chunks and write journal, each session's record) is one descriptor
//! with a name ([`names`]). A [`Store`] makes them and, when it keeps
//! state, keeps them for the next daemon:
//!
//! - [`MemoryStore`]: memfds, kept by nobody (the default; a daemon started
//!   without a state keeps nothing);
//! - [`DirStore`]: files in a directory on tmpfs (`--state-dir`) that is
//!   the daemon's alone (its uid's, mode 0700), with an exclusive `flock`
//!   on a lock file inside it so two daemons never share a state;
//! - under systemd, memfds handed to the service manager's descriptor store
//!   (the daemon's `FDSTORE=1` store, built on [`Keeper`]).
//!
//! One format, whichever keeps it: the names and the bytes are the same, and
//! a daemon adopts what it is given (`crate::adopt`).

use rustix::fd::{AsFd, BorrowedFd, OwnedFd};
use rustix::fs::{AtFlags, FileType, FlockOperation, MemfdFlags, Mode, OFlags, SealFlags};
use rustix::io::Errno;
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

/// Files in a directory (meant to be on tmpfs) that only the daemon's uid
/// can reach, locked for one daemon.
///
/// The directory must be the daemon's (owned by its effective uid, mode
/// 0700, not a symbolic link): another uid that could write, link or lock
/// anything in it could swap or cut short the files the next daemon
/// adopts (`crate::adopt` checks each file too). Every file is reached
/// through the directory's descriptor, never by a path, with `O_NOFOLLOW`.
/// The lock is an exclusive `flock` on the file [`DirStore::LOCK`] inside
/// it, which no other uid can open.
#[derive(Debug)]
pub struct DirStore {
    dir: PathBuf,
    /// The directory, open and checked.
    fd: OwnedFd,
    /// The lock file, holding the exclusive `flock`.
    _lock: OwnedFd,
}

/// A refusal that names the directory, the problem and its fix.
fn refused(dir: &Path, problem: String, fix: String) -> io::Error {
    io::Error::new(
        io::ErrorKind::PermissionDenied,
        format!(
            "state directory {}: {problem}; only hregd's uid may own, read or write it \
             (fix: {fix})",
            dir.display()
        ),
    )
}

/// Whether an open file is a regular file of the daemon's effective uid,
/// mode 0600, with one link: one that no other uid could have changed.
/// `Err` says what is wrong.
pub fn check_private_file(fd: BorrowedFd<'_>) -> Result<(), String> {
    check_owned(fd, 1)
}

/// Whether a piece of a kept state is one no other uid could have
/// changed: a file of a state directory as [`check_private_file`] says, or
/// a memfd (the service manager's store: no link) of the daemon's uid,
/// mode 0600, sealed against shrinking and growing. `Err` says what is
/// wrong.
pub fn check_kept(fd: BorrowedFd<'_>) -> Result<(), String> {
    // Only memfds take these seals.
    let memfd = rustix::fs::fcntl_get_seals(fd)
        .is_ok_and(|seals| seals.contains(SealFlags::SHRINK | SealFlags::GROW));
    check_owned(fd, if memfd { 0 } else { 1 })
}

/// A regular file of the daemon's effective uid, mode 0600, with `links`
/// links.
fn check_owned(fd: BorrowedFd<'_>, links: u64) -> Result<(), String> {
    let stat = rustix::fs::fstat(fd).map_err(|e| format!("cannot stat it: {e}"))?;
    let euid = rustix::process::geteuid().as_raw();
    let file_type = FileType::from_raw_mode(stat.st_mode);
    if file_type != FileType::RegularFile {
        return Err(format!("it is not a regular file ({file_type:?})"));
    }
    if stat.st_uid != euid {
        return Err(format!(
            "it is owned by uid {}, not by hregd's uid {euid}",
            stat.st_uid
        ));
    }
    if stat.st_mode & 0o7777 != 0o600 {
        return Err(format!(
            "its mode is {:04o}, not 0600",
            stat.st_mode & 0o7777
        ));
    }
    if stat.st_nlink != links {
        return Err(format!("it has {} links, not {links}", stat.st_nlink));
    }
    Ok(())
}

impl DirStore {
    /// The lock file's name (no piece of a state has it).
    pub const LOCK: &'static str = "lock";

    /// Opens `dir` (making it, mode 0700, if missing), checks that it is
    /// the daemon's alone, and locks it; fails, naming the problem and the
    /// fix, when it is not the daemon's, or another daemon holds it.
    pub fn open(dir: &Path) -> io::Result<DirStore> {
        let made = match rustix::fs::mkdir(dir, Mode::from_raw_mode(0o700)) {
            Ok(()) => true,
            Err(Errno::EXIST) => false,
            Err(e) => {
                return Err(io::Error::new(
                    io::Error::from(e).kind(),
                    format!("cannot make state directory {}: {e}", dir.display()),
                ))
            }
        };
        let fd = rustix::fs::open(
            dir,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| match e {
            Errno::LOOP | Errno::NOTDIR => refused(
                dir,
                "it is a symbolic link or not a directory".into(),
                "name the real directory, owned by hregd's uid with mode 0700".into(),
            ),
            e => io::Error::new(
                io::Error::from(e).kind(),
                format!("cannot open state directory {}: {e}", dir.display()),
            ),
        })?;
        if made {
            // The umask may have taken bits away.
            rustix::fs::fchmod(&fd, Mode::from_raw_mode(0o700))?;
        }
        let stat = rustix::fs::fstat(&fd)?;
        let euid = rustix::process::geteuid().as_raw();
        if stat.st_uid != euid {
            return Err(refused(
                dir,
                format!(
                    "it is owned by uid {}, not by hregd's uid {euid}",
                    stat.st_uid
                ),
                format!(
                    "`chown {euid} {0}` if nobody else could write in it, else move it away \
                     and let hregd make {0} again",
                    dir.display()
                ),
            ));
        }
        let mode = stat.st_mode & 0o7777;
        if mode != 0o700 {
            return Err(refused(
                dir,
                format!("its mode is {mode:04o}, not 0700"),
                format!(
                    "`chmod 700 {0}` if nobody else could write in it, else move it away and \
                     let hregd make {0} again",
                    dir.display()
                ),
            ));
        }
        let lock = rustix::fs::openat(
            &fd,
            Self::LOCK,
            OFlags::RDWR | OFlags::CREATE | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )?;
        rustix::fs::fchmod(&lock, Mode::from_raw_mode(0o600))?;
        check_private_file(lock.as_fd()).map_err(|why| {
            refused(
                dir,
                format!("its lock file {}: {why}", Self::LOCK),
                format!("remove {}", dir.join(Self::LOCK).display()),
            )
        })?;
        rustix::fs::flock(&lock, FlockOperation::NonBlockingLockExclusive).map_err(|e| {
            if e == Errno::WOULDBLOCK {
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
            fd,
            _lock: lock,
        })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The names in the directory, but the lock file and subdirectories
    /// (such as states set aside).
    fn names(&self) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in rustix::fs::Dir::read_from(&self.fd)? {
            let entry = entry?;
            let Ok(name) = entry.file_name().to_str() else {
                continue;
            };
            if name == "." || name == ".." || name == Self::LOCK {
                continue;
            }
            match rustix::fs::statat(&self.fd, name, AtFlags::SYMLINK_NOFOLLOW) {
                Ok(stat) if FileType::from_raw_mode(stat.st_mode) == FileType::Directory => {}
                Ok(_) => names.push(name.to_string()),
                // Gone meanwhile.
                Err(Errno::NOENT) => {}
                Err(e) => return Err(e.into()),
            }
        }
        names.sort();
        Ok(names)
    }

    /// Every file of the state, by name: a regular file open read/write
    /// (without following a link, without blocking), anything else open
    /// only as a path, which adopting refuses
    /// ([`check_private_file`] runs on each before anything is mapped).
    pub fn list(&self) -> io::Result<Vec<(String, OwnedFd)>> {
        let mut found = Vec::new();
        for name in self.names()? {
            let stat = rustix::fs::statat(&self.fd, name.as_str(), AtFlags::SYMLINK_NOFOLLOW)?;
            let flags = if FileType::from_raw_mode(stat.st_mode) == FileType::RegularFile {
                OFlags::RDWR | OFlags::NONBLOCK | OFlags::NOCTTY
            } else {
                OFlags::PATH
            };
            let fd = rustix::fs::openat(
                &self.fd,
                name.as_str(),
                flags | OFlags::CLOEXEC | OFlags::NOFOLLOW,
                Mode::empty(),
            )?;
            found.push((name, fd));
        }
        Ok(found)
    }

    /// Moves every file of the state into a new subdirectory (mode 0700)
    /// named after `why` and the time, and returns its path: a state that
    /// cannot be adopted is kept whole for inspection, never deleted.
    pub fn set_aside(&self, why: &str) -> io::Result<PathBuf> {
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let mut name = format!("{why}-{stamp}");
        let mut n = 1;
        loop {
            match rustix::fs::mkdirat(&self.fd, name.as_str(), Mode::from_raw_mode(0o700)) {
                Ok(()) => break,
                Err(Errno::EXIST) => {
                    name = format!("{why}-{stamp}.{n}");
                    n += 1;
                }
                Err(e) => return Err(e.into()),
            }
        }
        let aside = rustix::fs::openat(
            &self.fd,
            name.as_str(),
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        for file in self.names()? {
            rustix::fs::renameat(&self.fd, file.as_str(), &aside, file.as_str())?;
        }
        Ok(self.dir.join(name))
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
        let _ = rustix::fs::unlinkat(&self.fd, name, AtFlags::empty());
        let fd = rustix::fs::openat(
            &self.fd,
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
            let _ = rustix::fs::unlinkat(&self.fd, name, AtFlags::empty());
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

    fn mode_of(path: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt;
        std::fs::symlink_metadata(path)
            .unwrap()
            .permissions()
            .mode()
            & 0o7777
    }

    #[test]
    fn a_dir_store_is_the_daemons_alone_or_refused() {
        use std::os::unix::fs::PermissionsExt;
        let base = std::env::temp_dir().join(format!("hreg-store-own-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        std::fs::create_dir(&base).unwrap();
        // Made 0700 whatever the umask, with a private lock file inside.
        let dir = base.join("state");
        let old = rustix::process::umask(Mode::from_raw_mode(0o277));
        let store = DirStore::open(&dir);
        rustix::process::umask(old);
        let store = store.unwrap();
        assert_eq!(mode_of(&dir), 0o700);
        assert_eq!(mode_of(&dir.join(DirStore::LOCK)), 0o600);
        drop(store);
        // Opened to others: refused, naming the problem and the fix.
        for mode in [0o755, 0o711, 0o770, 0o1777] {
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(mode)).unwrap();
            let err = DirStore::open(&dir).unwrap_err().to_string();
            assert!(
                err.contains(&format!("{mode:04o}, not 0700")) && err.contains("chmod 700"),
                "{err}"
            );
        }
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        // A symbolic link to it: refused (no path is followed).
        let link = base.join("link");
        std::os::unix::fs::symlink(&dir, &link).unwrap();
        let err = DirStore::open(&link).unwrap_err().to_string();
        assert!(err.contains("symbolic link"), "{err}");
        // A lock file someone else could open: refused.
        std::fs::set_permissions(
            dir.join(DirStore::LOCK),
            std::fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        let store = DirStore::open(&dir).unwrap();
        assert_eq!(
            mode_of(&dir.join(DirStore::LOCK)),
            0o600,
            "made private again"
        );
        drop(store);
        std::fs::hard_link(dir.join(DirStore::LOCK), base.join("lock-link")).unwrap();
        let err = DirStore::open(&dir).unwrap_err().to_string();
        assert!(err.contains("2 links"), "{err}");
        std::fs::remove_file(base.join("lock-link")).unwrap();
        // Pieces: a link, a linked file, a file of another mode are listed,
        // and refused by the check adopting runs.
        let store = DirStore::open(&dir).unwrap();
        drop(store.create("d0-h0", 4096).unwrap());
        drop(store.create("d0-h1", 4096).unwrap());
        drop(store.create("d0-h2", 4096).unwrap());
        std::os::unix::fs::symlink(dir.join("d0-h0"), dir.join("d0-s0")).unwrap();
        std::fs::hard_link(dir.join("d0-h1"), base.join("linked")).unwrap();
        std::fs::set_permissions(dir.join("d0-h2"), std::fs::Permissions::from_mode(0o640))
            .unwrap();
        let found: Vec<(String, Result<(), String>)> = store
            .list()
            .unwrap()
            .into_iter()
            .map(|(name, fd)| {
                let checked = check_kept(fd.as_fd());
                (name, checked)
            })
            .collect();
        let verdict = |name: &str| {
            found
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, c)| c.clone())
                .unwrap_or_else(|| panic!("{name} not listed: {found:?}"))
        };
        assert_eq!(verdict("d0-h0"), Ok(()));
        assert!(verdict("d0-s0").unwrap_err().contains("not a regular file"));
        assert!(verdict("d0-h1").unwrap_err().contains("2 links"));
        assert!(verdict("d0-h2").unwrap_err().contains("0640"));
        // Sealed memfds of the daemon's uid pass, whatever their links.
        assert_eq!(check_kept(sealed_memfd("x", 4096).unwrap().as_fd()), Ok(()));
        if rustix::process::geteuid().is_root() {
            // Owned by someone else: refused, for the directory and a file.
            let nobody = Some(rustix::process::Uid::from_raw(65534));
            rustix::fs::chown(dir.join("d0-h0").as_path(), nobody, None).unwrap();
            let fd = store
                .list()
                .unwrap()
                .into_iter()
                .find(|(n, _)| n == "d0-h0")
                .unwrap()
                .1;
            assert!(check_kept(fd.as_fd())
                .unwrap_err()
                .contains("owned by uid 65534"));
            drop(store);
            rustix::fs::chown(dir.as_path(), nobody, None).unwrap();
            let err = DirStore::open(&dir).unwrap_err().to_string();
            assert!(
                err.contains("owned by uid 65534") && err.contains("chown 0"),
                "{err}"
            );
        }
        std::fs::remove_dir_all(&base).unwrap();
    }
}
