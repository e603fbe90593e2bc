//! hreg: the Rust client for `hregd`, the cross-process handle registry.
//!
//! A [`Client`] attaches to the daemon over its control socket and then talks
//! to it through shared-memory rings, one per thread. Objects are byte
//! values named by [`Handle`]s; every operation is available alone
//! ([`Client::insert`], [`Client::get`], …) and in batches
//! ([`Client::submit`] with [`Op`]s). Errors are one enum, [`Error`], that
//! maps one-to-one onto the protocol's status codes.
//!
//! ```no_run
//! let client = hreg::Client::connect_default()?;
//! let h = client.insert(b"hello", hreg::SHARED)?;
//! assert_eq!(client.get(h)?, b"hello");
//! client.release(h)?;
//! # Ok::<(), hreg::Error>(())
//! ```

#![deny(unsafe_code)]
#![warn(missing_docs)]

mod binding;
mod borrow;
mod client;
mod control_socket;
mod engine;
mod error;
mod mapped;
mod plan;
mod posted;
mod reads;
mod rings;
mod session;

#[doc(hidden)]
pub use binding::{release_bucket, MappedChunk, MappedReads};
pub use borrow::{OwnedValueRef, ValueRef};
pub use client::Client;
pub use error::{Error, Result};
pub use hreg_proto::control::{
    ListFilter, ObjectInfo, SessionInfo, UidHolds, UidUsage, UsageReply, Welcome, WorkerUsage,
};
pub use hreg_proto::handle::{Handle, ParseHandleError};
/// The workspace's one rule for locks (a poisoned lock is still used: its
/// data stays consistent), for the bindings built on this crate.
#[doc(hidden)]
pub use hreg_proto::locks;
pub use hreg_proto::{Limit, Status, PROTOCOL_VERSION};
pub use session::default_socket_paths;

/// INSERT flag: other users may read the object.
pub const SHARED: u32 = hreg_proto::flags::SHARED;
/// INSERT flag: the object belongs to the registry, not to the session; it
/// lives until removed, and the session gets no reference.
pub const DETACHED: u32 = hreg_proto::flags::DETACHED;

/// One operation of a batch (see [`Client::submit`]).
#[derive(Debug)]
pub enum Op<'a> {
    /// Create an object; completes with [`Completion::Inserted`].
    Insert {
        /// The value.
        value: &'a [u8],
        /// [`SHARED`], [`DETACHED`], both, or 0.
        flags: u32,
    },
    /// Read a value into `buf`; completes with [`Completion::Length`], or
    /// fails with [`Error::Buffer`] saying how much room is needed.
    Get {
        /// The object to read.
        handle: Handle,
        /// Where the value goes; its length is the capacity (empty: a
        /// size probe).
        buf: &'a mut [u8],
    },
    /// Read a value into a new vector; completes with [`Completion::Value`].
    GetOwned {
        /// The object to read.
        handle: Handle,
    },
    /// Replace a value; completes with [`Completion::Done`].
    Replace {
        /// The object whose value changes.
        handle: Handle,
        /// The new value.
        value: &'a [u8],
    },
    /// One more reference for the session; [`Completion::Done`].
    Retain(Handle),
    /// Drop one of the session's references; [`Completion::Done`].
    Release(Handle),
    /// Kill the object now; [`Completion::Done`].
    Remove(Handle),
}

/// What a successful operation produced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Completion {
    /// INSERT: the new object's handle.
    Inserted(Handle),
    /// GET into a buffer: the value's length (the bytes are in the buffer).
    Length(usize),
    /// GET owned: the value.
    Value(Vec<u8>),
    /// REPLACE, RETAIN, RELEASE, REMOVE.
    Done,
}

/// The registry's figures, from [`Client::stats`]: the daemon's
/// STATS_REPLY as the protocol defines it.
pub use hreg_proto::control::StatsReply as Stats;
