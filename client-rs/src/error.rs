//! The client's one error type, mapping one-to-one onto
//! [`hreg_proto::Status`] codes 1 to 12, and the crate's `Result` alias.

use hreg_proto::{Limit, Status};
use std::path::PathBuf;

/// Result of every fallible client call.
pub type Result<T> = std::result::Result<T, Error>;

/// Everything that can go wrong, one variant per non-OK [`Status`].
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A bad argument: handle 0, unknown flags, unknown opcode.
    #[error("{}", Status::Invalid.message())]
    Invalid,
    /// The handle names no live object: removed, released by its last
    /// holder, or never issued by this daemon.
    #[error("{}", Status::Stale.message())]
    Stale,
    /// Another user's object that is not shared, or not yours to change.
    #[error("{}", Status::Denied.message())]
    Denied,
    /// The value is longer than the daemon's maximum (`max_value_size`).
    #[error("{}", display_too_big(*.size, *.limit))]
    TooBig {
        /// The value's length, when known.
        size: Option<u64>,
        /// The daemon's `max_value_size` the value was checked against,
        /// when known.
        limit: Option<u64>,
    },
    /// The caller's buffer is too small; `needed` bytes would do.
    #[error("{}: {needed} bytes needed", Status::Buffer.message())]
    Buffer {
        /// The value's length: the room it needs.
        needed: usize,
    },
    /// A limit on objects, bytes, sessions or rings would be passed.
    #[error("{}", display_quota(.limit, .message))]
    Quota {
        /// The limit, when the daemon (or this client) said which.
        limit: Option<Limit>,
        /// The daemon's text, when it refused on the control socket.
        message: Option<String>,
    },
    /// RELEASE without a reference held.
    #[error("{}", Status::NotHeld.message())]
    NotHeld,
    /// No daemon accepted a connection at any of the paths tried.
    #[error("{}", display_connect(.tried, .reason))]
    Connect {
        /// Socket paths tried, in order.
        tried: Vec<PathBuf>,
        /// What went wrong, in full (it names the paths), if known.
        reason: Option<String>,
    },
    /// The daemon went away (EOF or SHUTDOWN on the control socket), or is
    /// away: every call fails this way at once until the session is back.
    /// When the daemon keeps its state (`--state-dir`, systemd's descriptor
    /// store), the client takes the session back from the restarted daemon
    /// by itself within the grace period, and calls work again; otherwise
    /// (or once the grace has passed) this is for good.
    ///
    /// An operation that got this error may or may not have been applied:
    /// a GET applied nothing; a REPLACE left the old or the new value (retry
    /// it: it is idempotent); a REMOVE may have removed the object (a retry
    /// says STALE); a RETAIN or RELEASE may have been counted; an INSERT may
    /// have made an object whose handle was never returned: it is this
    /// session's, and goes when the session ends (unless DETACHED).
    #[error("{}", Status::Disconnected.message())]
    Disconnected,
    /// The daemon speaks another protocol version.
    #[error("{}: {message}", Status::Version.message())]
    Version {
        /// What the daemon said, or which versions differ.
        message: String,
    },
    /// The peer broke the protocol.
    #[error("{}: {}", Status::Protocol.message(), .0)]
    Protocol(String),
    /// An operating-system error.
    #[error("{}: {}", Status::Io.message(), plain_io(.0))]
    Io(#[from] std::io::Error),
}

fn display_quota(limit: &Option<Limit>, message: &Option<String>) -> String {
    match (limit, message) {
        (_, Some(message)) => format!("a limit would be passed: {message}"),
        (Some(limit), None) => {
            format!("a limit would be passed: {limit} ({})", limit.description())
        }
        (None, None) => Status::Quota.message().to_owned(),
    }
}

fn display_too_big(size: Option<u64>, limit: Option<u64>) -> String {
    match (size, limit) {
        (Some(size), Some(limit)) => {
            format!("value too big: {size} bytes, over the daemon's max_value_size of {limit}")
        }
        (Some(size), None) => {
            format!("value too big: {size} bytes, over the daemon's max_value_size")
        }
        (None, _) => Status::TooBig.message().to_owned(),
    }
}

fn display_connect(tried: &[PathBuf], reason: &Option<String>) -> String {
    match (reason, tried) {
        (Some(reason), _) => reason.clone(),
        (None, []) => format!("{}: no socket path to try", Status::Connect.message()),
        (None, paths) => format!(
            "{} at {}",
            Status::Connect.message(),
            paths
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(" or ")
        ),
    }
}

/// An operating-system error as words, without Rust's " (os error N)".
pub(crate) fn plain_io(error: &std::io::Error) -> String {
    hreg_proto::os_error_words(&error.to_string())
}

/// The error for a failed connection to every path of `attempts` (in the
/// order tried); `defaulted`: the paths came from the default lookup, not
/// from the caller. Permission denied wins: a daemon is there.
pub(crate) fn connect_failed(attempts: Vec<(PathBuf, std::io::Error)>, defaulted: bool) -> Error {
    use std::io::ErrorKind;
    let tried: Vec<PathBuf> = attempts.iter().map(|(p, _)| p.clone()).collect();
    if let Some((path, _)) = attempts
        .iter()
        .find(|(_, e)| e.kind() == ErrorKind::PermissionDenied)
    {
        let reason = format!(
            "hregd is running at {} but you may not connect: {}",
            path.display(),
            why_denied(path)
        );
        return Error::Connect {
            tried,
            reason: Some(reason),
        };
    }
    let why = |e: &std::io::Error| match e.kind() {
        ErrorKind::NotFound => "no socket there".to_owned(),
        ErrorKind::ConnectionRefused => {
            "a socket file but no daemon listening (hregd stopped without removing it)".to_owned()
        }
        _ => plain_io(e),
    };
    let hint = match (defaulted, std::env::var_os("HREG_SOCKET")) {
        (true, Some(set)) if !set.is_empty() => "is hregd running, and serving $HREG_SOCKET?",
        (true, _) => "start hregd, or set HREG_SOCKET to the socket it serves",
        (false, _) => "is hregd running, and serving this path?",
    };
    let reason = match attempts.as_slice() {
        [] => {
            return Error::Connect {
                tried,
                reason: None,
            }
        }
        [(path, e)] => format!(
            "{} at {}: {} ({hint})",
            Status::Connect.message(),
            path.display(),
            why(e)
        ),
        many => format!(
            "{}: tried {} ({hint})",
            Status::Connect.message(),
            many.iter()
                .map(|(p, e)| format!("{}: {}", p.display(), why(e)))
                .collect::<Vec<_>>()
                .join("; ")
        ),
    };
    Error::Connect {
        tried,
        reason: Some(reason),
    }
}

/// What to do about a socket one may not connect to, from its owner,
/// group and mode.
fn why_denied(path: &std::path::Path) -> String {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = std::fs::metadata(path) else {
        return "permission denied on a directory of its path".to_owned();
    };
    let mode = meta.mode() & 0o777;
    let group = group_name(meta.gid()).unwrap_or_else(|| format!("gid {}", meta.gid()));
    if mode & 0o020 != 0 && meta.gid() == 0 {
        format!(
            "the socket is for group {group} (mode {mode:03o}): start hregd with \
             --socket-group hreg (or another group) and join that group"
        )
    } else if mode & 0o020 != 0 {
        format!(
            "the socket is for group {group} (mode {mode:03o}): join that group \
             (`sudo usermod -aG {group} $USER`, then log in again)"
        )
    } else {
        format!(
            "the socket is for its owner only (uid {}, mode {mode:03o}); run as that user, \
             or start hregd with --socket-mode 660 --socket-group GROUP and join GROUP",
            meta.uid()
        )
    }
}

/// The name of group `gid` in /etc/group.
fn group_name(gid: u32) -> Option<String> {
    let table = std::fs::read_to_string("/etc/group").ok()?;
    table.lines().find_map(|line| {
        let mut fields = line.split(':');
        let name = fields.next()?;
        (fields.nth(1)?.parse::<u32>().ok()? == gid).then(|| name.to_owned())
    })
}

impl Error {
    /// The status code of this error, as the C API numbers it.
    pub fn status(&self) -> Status {
        match self {
            Error::Invalid => Status::Invalid,
            Error::Stale => Status::Stale,
            Error::Denied => Status::Denied,
            Error::TooBig { .. } => Status::TooBig,
            Error::Buffer { .. } => Status::Buffer,
            Error::Quota { .. } => Status::Quota,
            Error::NotHeld => Status::NotHeld,
            Error::Connect { .. } => Status::Connect,
            Error::Disconnected => Status::Disconnected,
            Error::Version { .. } => Status::Version,
            Error::Protocol(_) => Status::Protocol,
            Error::Io(_) => Status::Io,
        }
    }

    /// The error for a status, `None` for [`Status::Ok`]. `needed` fills
    /// [`Error::Buffer`]; the variants with details get generic ones
    /// ([`Error::Quota`] names no limit).
    pub fn from_status(status: Status, needed: usize) -> Option<Error> {
        Some(match status {
            Status::Ok => return None,
            Status::Invalid => Error::Invalid,
            Status::Stale => Error::Stale,
            Status::Denied => Error::Denied,
            Status::TooBig => Error::TooBig {
                size: None,
                limit: None,
            },
            Status::Buffer => Error::Buffer { needed },
            Status::Quota => Error::Quota {
                limit: None,
                message: None,
            },
            Status::NotHeld => Error::NotHeld,
            Status::Connect => Error::Connect {
                tried: Vec::new(),
                reason: None,
            },
            Status::Disconnected => Error::Disconnected,
            Status::Version => Error::Version {
                message: Status::Version.message().to_owned(),
            },
            Status::Protocol => Error::Protocol(Status::Protocol.message().to_owned()),
            Status::Io => Error::Io(std::io::Error::other(Status::Io.message())),
        })
    }

    /// TOO_BIG: a value of `size` bytes, over `limit` (`max_value_size`).
    pub fn too_big(size: u64, limit: u64) -> Error {
        Error::TooBig {
            size: Some(size),
            limit: Some(limit),
        }
    }

    /// QUOTA: `limit` would be passed.
    pub fn quota(limit: Limit) -> Error {
        Error::Quota {
            limit: Some(limit),
            message: None,
        }
    }

    /// The error for a status the daemon put in a completion entry: only
    /// the registry statuses (1 to 7) are legal there; anything else is a
    /// protocol error. `value_len` is BUFFER's length needed, or QUOTA's
    /// [`Limit`] code (an unknown one, or 0, names no limit).
    pub(crate) fn from_completion(status: u32, value_len: u32) -> Option<Error> {
        match Status::from_u32(status) {
            Some(Status::Ok) => None,
            Some(Status::Quota) => Some(Error::Quota {
                limit: Limit::from_code(value_len),
                message: None,
            }),
            Some(s) if (s as u32) <= Status::NotHeld as u32 => {
                Error::from_status(s, value_len as usize)
            }
            Some(Status::Protocol) => Some(Error::Protocol(
                "the daemon rejected an entry as malformed".to_owned(),
            )),
            _ => Some(Error::Protocol(format!(
                "completion carries status {status}, which the data path never uses"
            ))),
        }
    }
}

impl From<rustix::io::Errno> for Error {
    fn from(errno: rustix::io::Errno) -> Error {
        Error::Io(errno.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_status_maps_both_ways() {
        assert!(Error::from_status(Status::Ok, 0).is_none());
        for status in Status::ALL.into_iter().skip(1) {
            let error = Error::from_status(status, 7).expect("non-OK status");
            assert_eq!(error.status(), status);
            assert_eq!(error.status() as u32, status as u32);
        }
        assert!(matches!(
            Error::from_status(Status::Buffer, 42),
            Some(Error::Buffer { needed: 42 })
        ));
    }

    #[test]
    fn completion_statuses_are_checked() {
        assert!(Error::from_completion(0, 0).is_none());
        assert!(matches!(Error::from_completion(2, 0), Some(Error::Stale)));
        assert!(matches!(
            Error::from_completion(5, 99),
            Some(Error::Buffer { needed: 99 })
        ));
        let quota = Error::from_completion(6, Limit::UidMaxObjects.code()).unwrap();
        assert!(matches!(
            quota,
            Error::Quota {
                limit: Some(Limit::UidMaxObjects),
                message: None
            }
        ));
        assert!(quota.to_string().contains("uid_max_objects"), "{quota}");
        for unknown in [0, 999, u32::MAX] {
            assert!(matches!(
                Error::from_completion(6, unknown),
                Some(Error::Quota { limit: None, .. })
            ));
        }
        for odd in [8, 9, 10, 12, 13, u32::MAX] {
            assert!(matches!(
                Error::from_completion(odd, 0),
                Some(Error::Protocol(_))
            ));
        }
    }

    #[test]
    fn connect_error_names_each_path_once_in_words() {
        let missing = || std::io::Error::from_raw_os_error(2);
        let error = connect_failed(
            vec![
                ("/a/hreg.sock".into(), missing()),
                ("/run/hreg/hreg.sock".into(), missing()),
            ],
            true,
        );
        let hint = match std::env::var_os("HREG_SOCKET") {
            Some(set) if !set.is_empty() => "is hregd running, and serving $HREG_SOCKET?",
            _ => "start hregd, or set HREG_SOCKET to the socket it serves",
        };
        assert_eq!(
            error.to_string(),
            format!(
                "cannot connect to hregd: tried /a/hreg.sock: no socket there; \
                 /run/hreg/hreg.sock: no socket there ({hint})"
            )
        );
        let error = connect_failed(vec![("/x/s".into(), missing())], false);
        assert_eq!(
            error.to_string(),
            "cannot connect to hregd at /x/s: no socket there \
             (is hregd running, and serving this path?)"
        );
        assert!(
            matches!(error, Error::Connect { tried, .. } if tried == [std::path::Path::new("/x/s")])
        );
        let refused = std::io::Error::from_raw_os_error(111);
        let text = connect_failed(vec![("/x/s".into(), refused)], false).to_string();
        assert!(text.contains("no daemon listening"), "{text}");
        let long = std::io::Error::from_raw_os_error(36);
        let text = connect_failed(vec![("/x/s".into(), long)], false).to_string();
        assert!(text.contains("/x/s: file name too long"), "{text}");
        assert!(!text.contains("os error"), "{text}");
    }

    #[test]
    fn permission_denied_says_a_daemon_is_there_and_what_to_do() {
        let path = std::env::temp_dir().join(format!("hreg-denied-{}.sock", std::process::id()));
        std::fs::write(&path, b"").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o660)).unwrap();
        let denied = std::io::Error::from_raw_os_error(13);
        let missing = std::io::Error::from_raw_os_error(2);
        let error = connect_failed(
            vec![("/a/hreg.sock".into(), missing), (path.clone(), denied)],
            true,
        );
        let text = error.to_string();
        let start = format!(
            "hregd is running at {} but you may not connect: the socket is for group ",
            path.display()
        );
        assert!(text.starts_with(&start), "{text}");
        assert!(text.contains(" (mode 660): "), "{text}");
        assert!(text.contains("join that group"), "{text}");
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn too_big_names_the_size_and_the_limit() {
        assert_eq!(
            Error::too_big(2_000_000, 1_048_576).to_string(),
            "value too big: 2000000 bytes, over the daemon's max_value_size of 1048576"
        );
        assert_eq!(
            Error::from_status(Status::TooBig, 0).unwrap().to_string(),
            Status::TooBig.message()
        );
    }

    #[test]
    fn io_errors_carry_no_rust_internals() {
        let error = Error::Io(std::io::Error::from_raw_os_error(2));
        assert_eq!(
            error.to_string(),
            "operating-system error: no such file or directory"
        );
        assert_eq!(
            plain_io(&std::io::Error::other("EOF while reading")),
            "EOF while reading"
        );
    }
}
