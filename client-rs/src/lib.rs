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
mod control;
mod engine;
mod error;
mod plan;
mod posted;
mod reads;
mod rings;
mod session;
mod shm;

#[doc(hidden)]
pub use binding::{MappedChunk, MappedReads};
pub use borrow::{OwnedValueRef, ValueRef};
pub use client::Client;
pub use error::{Error, Result};
pub use hreg_proto::control::{
    ListFilter, ObjectInfo, SessionInfo, UidHolds, UidUsage, UsageReply, Welcome, WorkerUsage,
};
pub use hreg_proto::handle::{Handle, ParseHandleError};
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

/// The registry's figures, from [`Client::stats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Live objects: all for root; for another uid, its own private objects
    /// and every SHARED one (never another uid's private ones).
    pub objects: u64,
    /// Bytes of the values of those objects.
    pub value_bytes: u64,
    /// Attached sessions.
    pub sessions: u64,
    /// Data-path requests served since the daemon started.
    pub ops: u64,
}
