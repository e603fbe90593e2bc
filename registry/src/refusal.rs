//! Why the registry refused a request: a status, and for QUOTA the limit
//! that would have been passed, so the daemon can log it and tell the
//! client (in the completion's `value_len`).

use hreg_proto::{Limit, Status};

/// A refused request: a non-OK status, with the limit when it is QUOTA.
/// `?` turns a plain [`Status`] (QUOTA naming no limit) or a [`Limit`]
/// (QUOTA naming it) into one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Refusal {
    status: Status,
    limit: Option<Limit>,
}

impl Refusal {
    /// QUOTA: `limit` would be passed.
    pub const fn quota(limit: Limit) -> Refusal {
        Refusal {
            status: Status::Quota,
            limit: Some(limit),
        }
    }

    /// The status to report.
    pub fn status(self) -> Status {
        self.status
    }

    /// The limit that would have been passed (QUOTA only, when known).
    pub fn limit(self) -> Option<Limit> {
        self.limit
    }
}

impl From<Status> for Refusal {
    #[inline]
    fn from(status: Status) -> Refusal {
        Refusal {
            status,
            limit: None,
        }
    }
}

impl From<Limit> for Refusal {
    #[inline]
    fn from(limit: Limit) -> Refusal {
        Refusal::quota(limit)
    }
}
