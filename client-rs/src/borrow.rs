//! Values borrowed from the registry's shared memory ([`crate::Client::get_ref`]):
//! [`ValueRef`], which borrows its client, and [`OwnedValueRef`], which
//! keeps the session alive by itself (for bindings that cannot express a
//! borrow, such as C's `hreg_get_ref`). Both hold their pin's guard, which
//! clears it when they drop; a short value (kept inside its slot, which a
//! replace rewrites) comes as a copy and pins nothing.

#![allow(unsafe_code)]

use crate::error::Result;
use crate::mapped::PinnedBlock;
use crate::reads::Borrowed;
use crate::session::ClientSession;
use hreg_proto::handle::Handle;
use std::ops::Deref;
use std::sync::Arc;

/// A borrowed value, with what keeps its session alive: `K` is `&ClientSession`
/// or `Arc<ClientSession>`.
///
/// Invariant: a `Pinned` block belongs to `session` (its pin is in that
/// session's table, its chunk in that session's reads); only
/// [`borrow`] makes one, from the session it is given. The block is
/// declared first: it drops (and unpins) before the session can.
enum Value<K: Deref<Target = ClientSession>> {
    Pinned { block: PinnedBlock, _session: K },
    Copied(Vec<u8>),
}

/// Borrows the value of `handle` from `session`'s shared memory, or takes
/// the copy `fallback` fetches (through the ring) when it cannot be read
/// here.
fn borrow<K: Deref<Target = ClientSession>>(
    session: K,
    handle: Handle,
    fallback: impl FnOnce() -> Result<Vec<u8>>,
) -> Result<Value<K>> {
    session.may_read_here()?;
    let found = session
        .reads()
        .borrow(&*session, session.memory().pins(), handle)?;
    Ok(match found {
        Some(Borrowed::Pinned(block)) => Value::Pinned {
            block,
            _session: session,
        },
        Some(Borrowed::Copied(bytes)) => Value::Copied(bytes),
        None => Value::Copied(fallback()?),
    })
}

impl<K: Deref<Target = ClientSession>> Value<K> {
    fn bytes(&self) -> &[u8] {
        match self {
            // SAFETY: the block is this session's (the type's invariant),
            // which `session` keeps alive as long as `self`; the pin is
            // cleared only when the block drops, after the last borrow of
            // `self`.
            Value::Pinned { block, .. } => unsafe { block.bytes() },
            Value::Copied(bytes) => bytes,
        }
    }
}

impl<K: Deref<Target = ClientSession>> std::fmt::Debug for Value<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ValueRef")
            .field("len", &self.bytes().len())
            .field("in_place", &matches!(self, Value::Pinned { .. }))
            .finish()
    }
}

/// A value borrowed by [`crate::Client::get_ref`]: the bytes in place,
/// unchanged until this is dropped.
#[derive(Debug)]
pub struct ValueRef<'c>(Value<&'c ClientSession>);

/// A value borrowed by [`crate::Client::get_ref_owned`]: like
/// [`ValueRef`], but it keeps the session (not the client) alive itself, so
/// it may outlive the [`crate::Client`] it came from and move between
/// threads freely. The session's mappings stay until the last one is
/// dropped.
#[derive(Debug)]
pub struct OwnedValueRef(Value<Arc<ClientSession>>);

impl<'c> ValueRef<'c> {
    pub(crate) fn new(
        session: &'c ClientSession,
        handle: Handle,
        fallback: impl FnOnce() -> Result<Vec<u8>>,
    ) -> Result<ValueRef<'c>> {
        borrow(session, handle, fallback).map(ValueRef)
    }
}

impl OwnedValueRef {
    pub(crate) fn new(
        session: Arc<ClientSession>,
        handle: Handle,
        fallback: impl FnOnce() -> Result<Vec<u8>>,
    ) -> Result<OwnedValueRef> {
        borrow(session, handle, fallback).map(OwnedValueRef)
    }
}

impl Deref for ValueRef<'_> {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.0.bytes()
    }
}

impl Deref for OwnedValueRef {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.0.bytes()
    }
}

impl AsRef<[u8]> for ValueRef<'_> {
    fn as_ref(&self) -> &[u8] {
        self
    }
}

impl AsRef<[u8]> for OwnedValueRef {
    fn as_ref(&self) -> &[u8] {
        self
    }
}
