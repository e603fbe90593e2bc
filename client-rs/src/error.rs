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
    #[error("invalid argument")]
    Invalid,
    /// The handle names no live object.
    #[error("stale handle: the object is gone")]
    Stale,
    /// Another user's object that is not shared, or not yours to change.
    #[error("access denied")]
    Denied,
    /// The value is longer than the daemon's maximum.
    #[error("value larger than the daemon's maximum")]
    TooBig,
    /// The caller's buffer is too small; `needed` bytes would do.
    #[error("buffer too small: {needed} bytes needed")]
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
    #[error("no reference held on this handle")]
    NotHeld,
    /// No daemon accepted a connection at any of the paths tried.
    #[error("no daemon at {}{}", display_paths(.tried), display_reason(.reason))]
    Connect {
        /// Socket paths tried, in order.
        tried: Vec<PathBuf>,
        /// Why the last one failed, if known.
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
    #[error("the daemon went away")]
    Disconnected,
    /// The daemon speaks another protocol version.
    #[error("protocol versions differ: {message}")]
    Version {
        /// What the daemon said, or which versions differ.
        message: String,
    },
    /// The peer broke the protocol.
    #[error("the peer broke the protocol: {0}")]
    Protocol(String),
    /// An operating-system error.
    #[error("operating-system error: {0}")]
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

fn display_paths(paths: &[PathBuf]) -> String {
    if paths.is_empty() {
        return "any socket path (none configured)".to_owned();
    }
    paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

fn display_reason(reason: &Option<String>) -> String {
    match reason {
        Some(r) => format!(" ({r})"),
        None => String::new(),
    }
}

impl Error {
    /// The status code of this error, as the C API numbers it.
    pub fn status(&self) -> Status {
        match self {
            Error::Invalid => Status::Invalid,
            Error::Stale => Status::Stale,
            Error::Denied => Status::Denied,
            Error::TooBig => Status::TooBig,
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
            Status::TooBig => Error::TooBig,
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
    fn connect_error_names_paths() {
        let error = Error::Connect {
            tried: vec!["/a/hreg.sock".into(), "/run/hreg/hreg.sock".into()],
            reason: Some("No such file or directory".into()),
        };
        let text = error.to_string();
        assert!(text.contains("/a/hreg.sock") && text.contains("/run/hreg/hreg.sock"));
    }
}
