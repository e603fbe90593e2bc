//! [`Client`]: the public face of a session. It connects
//! ([`crate::session`]), runs operations on this thread's ring
//! ([`crate::rings`] picks it, [`crate::engine`] runs the batch) and sends
//! the slow requests (stats, listing) over the control socket.

use crate::borrow::{OwnedValueRef, ValueRef};
use crate::engine::{self, Context, RingState};
use crate::error::{Error, Result};
use crate::posted::{Claim, Write};
use crate::reads::{Output, Probe, Resolved};
use crate::rings::{RingCell, Rings};
use crate::session::ClientSession;
use crate::{Completion, Op, Stats};
use hreg_proto::control::{
    ControlRequest, ListFilter, ObjectInfo, Reply, SessionInfo, UsageReply, Welcome,
};
use hreg_proto::entry::{sqe_flags, Sqe, INLINE_CAPACITY};
use hreg_proto::handle::Handle;
use hreg_proto::{Limit, Opcode};
use std::path::Path;
use std::sync::Arc;

/// A connection to `hregd`: one session, usable from many threads.
///
/// Cloning is cheap and shares the session. Dropping the last clone ends the
/// session (GOODBYE): the daemon then drops every reference it held. A client
/// made before a `fork` is not usable in the child (every call there returns
/// [`Error::Disconnected`] and touches nothing the parent uses); the child
/// connects anew.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    session: Arc<ClientSession>,
    rings: Rings,
}

impl Inner {
    /// Runs `body` on this thread's ring, its state locked.
    fn with_ring<T>(
        &self,
        body: impl FnOnce(&Context<'_>, &mut RingState) -> Result<T>,
    ) -> Result<T> {
        let cell = self.ring()?;
        self.on_ring(&cell, body)
    }

    /// This thread's ring (or one of the pool).
    fn ring(&self) -> Result<Arc<RingCell>> {
        let session = &self.session;
        session.check_usable()?;
        self.rings.pick(session)
    }

    /// Runs `body` on ring `cell`, its state locked.
    fn on_ring<T>(
        &self,
        cell: &RingCell,
        body: impl FnOnce(&Context<'_>, &mut RingState) -> Result<T>,
    ) -> Result<T> {
        let mut state = cell.lock()?;
        cell.run(&self.session, &mut state, body)
    }

    /// Inserts without waiting when it can: a handle granted ahead of the
    /// kind (the pool refilled first when empty: the only wait), credit for
    /// the value's bytes, a value that fits in the entry. `None`: insert
    /// synchronously (what any insert the daemon could refuse does, so
    /// QUOTA and TOO_BIG come back exactly as before).
    fn post_insert(&self, value: &[u8], flags: u32) -> Result<Option<Handle>> {
        let posting = &self.session.posting;
        if value.len() > INLINE_CAPACITY
            || value.len() as u64 > self.session.welcome().max_value_size
            || Opcode::Insert.check_flags(flags).is_err()
            || !posting.may_post()
        {
            return Ok(None);
        }
        let generation = self.session.generation();
        let shared = flags & crate::SHARED != 0;
        let handle = match posting.take(generation, shared) {
            Some(handle) => handle,
            None => {
                let want = posting.next_batch(generation, shared);
                let mut fresh = Vec::new();
                let grant = self
                    .with_ring(|cx, state| engine::reserve(cx, state, shared, want, &mut fresh))?;
                posting.granted(generation, shared, &fresh, grant.credit, grant.posting);
                if grant.posting && self.session.may_read_here().is_ok() {
                    for &handle in &fresh {
                        self.session.reads().map_slot_of(&*self.session, handle);
                    }
                }
                match posting.take(generation, shared) {
                    Some(handle) if grant.posting => handle,
                    _ => return Ok(None),
                }
            }
        };
        let len = value.len() as u64;
        if !posting.spend(len) {
            posting.put_back(generation, shared, handle);
            return Ok(None);
        }
        let mut sqe = Sqe {
            opcode: Opcode::Insert as u8,
            entry_flags: sqe_flags::POSTED | sqe_flags::INLINE,
            obj_flags: flags,
            handle: handle.get(),
            data_len: value.len() as u32,
            ..Sqe::default()
        };
        sqe.inline[..value.len()].copy_from_slice(value);
        let ring = self.ring()?;
        self.on_ring(&ring, |cx, state| engine::post(cx, state, sqe, None))?;
        posting.values.keep(handle, value);
        if flags & crate::DETACHED == 0 {
            // No one else knows the handle yet: its later writes follow the
            // insert on this ring.
            posting.refs.add(handle, Some(&ring));
        }
        Ok(Some(handle))
    }

    /// Posts a RETAIN or RELEASE when the daemon applies posted writes and
    /// the answer is known here: from this session's own count of its
    /// references (NOT_HELD) and a read of the slot (STALE). `None`: do it
    /// synchronously (a slot not readable here, a first reference to an
    /// object, which may pass `uid_max_references`, a daemon that does not
    /// take posted writes).
    fn post_reference(&self, handle: Handle, retain: bool) -> Result<Option<Result<()>>> {
        let posting = &self.session.posting;
        let session = &self.session;
        if !posting.posting() || session.may_read_here().is_err() {
            return Ok(None);
        }
        // A release of its last reference posted before: applied first, so
        // that this write finds the object as the daemon will.
        self.own_release_applied(handle)?;
        match session.reads().probe(&**session, handle) {
            Probe::Live => {}
            // This client's own insert, not applied yet: the write goes on
            // the handle's ring, which the insert went on (a DETACHED
            // insert gave no reference: NOT_HELD, or a retain that waits).
            Probe::Reserved { session: owner } if owner == session.own_id() => {}
            Probe::Stale => {
                posting.refs.forget(handle);
                return Ok(Some(Err(Error::Stale)));
            }
            Probe::Reserved { .. } | Probe::Unknown => return Ok(None),
        }
        let sqe = Sqe {
            opcode: if retain {
                Opcode::Retain
            } else {
                Opcode::Release
            } as u8,
            entry_flags: sqe_flags::POSTED,
            handle: handle.get(),
            ..Sqe::default()
        };
        let generation = session.generation();
        // First the ring this call would use (a thread's own, which is the
        // handle's ring unless another thread posted its first write).
        let mut handles_ring = None;
        let mut waits = 0u32;
        loop {
            let ring = match handles_ring.take() {
                Some(ring) => ring,
                None => self.ring()?,
            };
            // Counted and posted under the ring's lock: the handle's writes
            // reach the ring in the order they were counted.
            let claim = self.on_ring(&ring, |cx, state| {
                let claim = posting.refs.claim(handle, &ring, generation, retain);
                if let Claim::Posted { last } = claim {
                    engine::post(cx, state, sqe, last.then_some(handle))?;
                }
                Ok(claim)
            })?;
            match claim {
                Claim::Posted { .. } => return Ok(Some(Ok(()))),
                Claim::NotHeld => return Ok(Some(Err(Error::NotHeld))),
                Claim::Synchronous => return Ok(None),
                Claim::Elsewhere(ring) => handles_ring = Some(ring),
                // The drop waits for the daemon: so may this, without
                // spinning for long.
                Claim::Wait => {
                    waits += 1;
                    if waits < 64 {
                        std::thread::yield_now();
                    } else {
                        std::thread::sleep(std::time::Duration::from_micros(50));
                    }
                }
            }
        }
    }

    /// Before a synchronous write: every write this client posted, on any
    /// of its rings, is applied first (a ring keeps its own order; this
    /// keeps the client's, across rings: a Go goroutine's calls, or a
    /// thread's after another's, may use different rings).
    #[inline]
    fn after_posted(&self) -> Result<()> {
        if self
            .session
            .posting
            .in_flight
            .load(std::sync::atomic::Ordering::Acquire)
            > 0
        {
            self.settle_all()?;
        }
        Ok(())
    }

    /// Read-your-writes for posted releases: a read of a handle whose last
    /// reference this client released, by a RELEASE not applied yet, waits
    /// until it is (then the read finds it STALE, as after a synchronous
    /// release).
    #[inline(always)]
    fn own_release_applied(&self, handle: Handle) -> Result<()> {
        // One load on the read path; the rest only while a release of a
        // last reference in the handle's bucket is in flight.
        if self.session.posting.dropping.maybe_pending(handle) {
            return self.wait_for_own_release(handle);
        }
        Ok(())
    }

    #[cold]
    #[inline(never)]
    fn wait_for_own_release(&self, handle: Handle) -> Result<()> {
        if self.session.posting.dropping.pending(handle) {
            self.settle_all()?;
        }
        Ok(())
    }

    /// After a byte limit: gives back the credit this client holds, and
    /// says whether it held any (then the write is worth trying again).
    fn give_back_credit(&self) -> Result<bool> {
        let credit = self.session.posting.take_credit();
        if credit == 0 {
            return Ok(false);
        }
        let mut sqe = Sqe {
            opcode: Opcode::Sync as u8,
            ..Sqe::default()
        };
        sqe.set_inline_u64(credit);
        self.with_ring(|cx, state| engine::exchange_one(cx, state, sqe))?;
        Ok(true)
    }

    /// What this client holds ahead that counts against `limit` is given
    /// back (handles, or byte credit); whether there was any.
    fn give_back_for(&self, limit: Option<Limit>) -> Result<bool> {
        match limit {
            Some(Limit::UidMaxObjects | Limit::MaxObjects | Limit::UidMaxReferences) => {
                self.give_back_handles()
            }
            Some(Limit::UidMaxBytes | Limit::MaxBytes) => self.give_back_credit(),
            _ => Ok(false),
        }
    }

    /// Gives back every handle granted ahead this client has not used (a
    /// RELEASE of each); false when it held none.
    fn give_back_handles(&self) -> Result<bool> {
        let handles = self.session.posting.drain(self.session.generation());
        if handles.is_empty() {
            return Ok(false);
        }
        let mut ops: Vec<Op<'_>> = handles.into_iter().map(Op::Release).collect();
        for chunk in ops.chunks_mut(256) {
            // Each is given back, or already gone with its session.
            self.with_ring(|cx, state| engine::run(cx, state, chunk))?;
        }
        Ok(true)
    }

    /// Waits until every write posted on any of this client's rings is
    /// applied (before a flush, and before requests whose figures must
    /// count this client's writes: STATS, USAGE, SESSIONS, LIST).
    fn settle_all(&self) -> Result<()> {
        for cell in self.rings.cells(&self.session) {
            self.on_ring(&cell, engine::settle)?;
        }
        Ok(())
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        Rings::forget_local(self.session.key());
    }
}

/// This program's name, as HELLO carries it by default.
fn program_name() -> String {
    std::env::args_os()
        .next()
        .and_then(|arg0| {
            Path::new(&arg0)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
        })
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "hreg-client".to_owned())
}

impl Client {
    /// Connects to the daemon at `path`.
    pub fn connect(path: impl AsRef<Path>) -> Result<Client> {
        Client::connect_named(Some(path.as_ref()), &program_name())
    }

    /// Connects to the daemon at the default place (see
    /// [`crate::default_socket_paths`]): the first path that accepts.
    pub fn connect_default() -> Result<Client> {
        Client::connect_named(None, &program_name())
    }

    /// Connects to `path` (or the default place) and introduces the client
    /// as `name` (cut to 64 bytes).
    pub fn connect_named(path: Option<&Path>, name: &str) -> Result<Client> {
        Ok(Client {
            inner: Arc::new(Inner {
                session: ClientSession::connect(path, name)?,
                rings: Rings::default(),
            }),
        })
    }

    pub(crate) fn session(&self) -> &Arc<ClientSession> {
        &self.inner.session
    }

    /// Makes this client's calls share a pool of at most `rings` rings
    /// (opened as needed; 1 to 64) instead of opening one ring per thread.
    /// For runtimes that move work between many OS threads (Go's
    /// goroutines, thread pools that grow): the rings a client opens then
    /// stay bounded whatever the number of threads. A call takes a free
    /// ring of the pool, or waits for one. Set it once, before the first
    /// call that uses a ring; false (and no change) if it was set already
    /// or `rings` is out of range.
    pub fn use_ring_pool(&self, rings: usize) -> bool {
        self.inner.rings.use_pool(rings)
    }

    /// The session's id, as the daemon numbers sessions.
    pub fn session_id(&self) -> u64 {
        self.inner.session.welcome().session_id
    }

    /// Largest value the daemon accepts, in bytes.
    pub fn max_value_size(&self) -> usize {
        usize::try_from(self.inner.session.welcome().max_value_size).unwrap_or(usize::MAX)
    }

    /// The limits and geometry the daemon announced.
    pub fn welcome(&self) -> Welcome {
        *self.inner.session.welcome()
    }

    /// Whether this client cannot be used now: the daemon went away (looked
    /// at now, without waiting), or this is a forked child of the process
    /// that connected. While a daemon that keeps its state restarts, this
    /// is true until the session is back.
    pub fn is_disconnected(&self) -> bool {
        use crate::engine::Liveness;
        self.inner
            .session
            .check_alive_within(std::time::Duration::ZERO)
            .is_err()
    }

    /// Runs `ops` in order, each to its own result; a failed op does not
    /// stop the rest. The outer `Err` (DISCONNECTED, IO, PROTOCOL) means the
    /// batch stopped as a whole. Results come in the order of `ops`.
    ///
    /// GET ops resolve in this process when they can; the other ops go
    /// through the ring in runs, each run completed before the GETs after
    /// it are read, so a GET always sees the writes before it.
    pub fn submit(&self, ops: &mut [Op<'_>]) -> Result<Vec<Result<Completion>>> {
        self.inner.session.check_usable()?;
        let mut results = Vec::with_capacity(ops.len());
        let mut at = 0;
        while at < ops.len() {
            // GETs read here, until one is not readable here.
            while let Some(op) = ops.get_mut(at) {
                match self.local(op) {
                    Some(result) => {
                        results.push(result);
                        at += 1;
                    }
                    None => break,
                }
            }
            if at == ops.len() {
                break;
            }
            // Through the ring: up to the next GET (the first of the run may
            // be a GET not readable here).
            let end = (at + 1..ops.len())
                .find(|&k| matches!(ops[k], Op::Get { .. } | Op::GetOwned { .. }))
                .unwrap_or(ops.len());
            let run = &mut ops[at..end];
            self.inner.after_posted()?;
            let done = self
                .inner
                .with_ring(|cx, state| engine::run(cx, state, run))?;
            for (op, result) in run.iter().zip(&done) {
                if let Some(write) = Write::of(op) {
                    self.inner.session.posting.refs.note(write, result);
                }
            }
            results.extend(done);
            at = end;
        }
        Ok(results)
    }

    /// A GET op resolved in this process, or `None` for any other op and a
    /// GET to send through the ring.
    fn local(&self, op: &mut Op<'_>) -> Option<Result<Completion>> {
        let resolved = match op {
            Op::Get { handle, buf } => {
                let resolved = self.read_here(*handle, &mut Output::Buffer(buf)).answer()?;
                resolved.map(Completion::Length)
            }
            Op::GetOwned { handle } => {
                let mut value = Vec::new();
                let resolved = self
                    .read_here(*handle, &mut Output::Vec(&mut value))
                    .answer()?;
                resolved.map(|_| Completion::Value(value))
            }
            _ => return None,
        };
        Some(resolved)
    }

    /// Reads `handle` in this process ([`Resolved::Ring`]: it must go
    /// through the ring; never [`Resolved::Reserved`], which it answers). Small, so that it comes back in registers.
    #[inline]
    fn read_here(&self, handle: Handle, out: &mut Output<'_>) -> Resolved {
        let session = &self.inner.session;
        if let Err(e) = self.inner.own_release_applied(handle) {
            return Resolved::Failed(Box::new(e));
        }
        if let Err(e) = session.may_read_here() {
            return Resolved::Failed(Box::new(e));
        }
        match session.reads().get(&**session, handle, out) {
            Resolved::Reserved { session: owner } => self.read_reserved(owner, handle, out),
            resolved => resolved,
        }
    }

    /// A read of a slot granted ahead whose insert is not applied yet: this
    /// client's own insert answers from its copy of the value
    /// (read-your-writes); another session's goes to the daemon.
    #[cold]
    #[inline(never)]
    fn read_reserved(&self, owner: u32, handle: Handle, out: &mut Output<'_>) -> Resolved {
        let session = &self.inner.session;
        if owner != session.own_id() {
            return Resolved::Ring;
        }
        session
            .posting
            .values
            .read(handle, out)
            .unwrap_or(Resolved::Ring)
    }

    /// One operation through the same engine as [`Client::submit`], without
    /// the result vector: nothing is allocated unless the op returns a value
    /// (GET owned) or fails.
    fn one(&self, op: Op<'_>) -> Result<Completion> {
        let write = Write::of(&op);
        if write.is_some() || matches!(op, Op::Replace { .. }) {
            self.inner.after_posted()?;
        }
        let result = self
            .inner
            .with_ring(|cx, state| engine::run_one(cx, state, op));
        if let Some(write) = write {
            self.inner.session.posting.refs.note(write, &result);
        }
        result
    }

    /// Creates an object holding `value`. `flags`: [`crate::SHARED`],
    /// [`crate::DETACHED`]. Without DETACHED the session holds one reference.
    ///
    /// A value of up to 32 bytes is usually inserted without waiting for
    /// the daemon (a *posted* insert, into a handle the daemon granted this
    /// session ahead): the handle returned resolves at once, in this
    /// process and in any other that receives it, and the insert is
    /// applied even if this process dies right after. Failures a posted
    /// insert could meet are ruled out before it returns (quota, size,
    /// flags), so they come back here, as from any insert.
    pub fn insert(&self, value: &[u8], flags: u32) -> Result<Handle> {
        if let Some(handle) = self.inner.post_insert(value, flags)? {
            return Ok(handle);
        }
        let inserted = match self.one(Op::Insert { value, flags }) {
            // What this client holds ahead counts as objects, references
            // and bytes: given back, the insert is tried again, so that
            // QUOTA comes only when the uid's own (and other sessions'
            // handles ahead) are at the limit.
            Err(Error::Quota { limit, .. }) if self.inner.give_back_for(limit)? => {
                self.one(Op::Insert { value, flags })
            }
            other => other,
        };
        match inserted? {
            Completion::Inserted(h) => Ok(h),
            other => Err(unexpected(other)),
        }
    }

    /// The value of `handle`.
    pub fn get(&self, handle: Handle) -> Result<Vec<u8>> {
        let mut value = Vec::new();
        match self.read_here(handle, &mut Output::Vec(&mut value)) {
            Resolved::Value(_) => Ok(value),
            Resolved::Ring => self.get_through_ring(handle),
            failed => Err(failed.error()),
        }
    }

    /// Borrows the value of `handle` without copying it: the bytes are read
    /// in place, in read-only shared memory, and stay valid and unchanged
    /// until the [`ValueRef`] is dropped, even if the object is replaced or
    /// removed meanwhile. A session holds at most 1024 at once
    /// ([`Error::Quota`] past that). Short values, and values this session
    /// cannot map, come as a copy.
    pub fn get_ref(&self, handle: Handle) -> Result<ValueRef<'_>> {
        self.inner.own_release_applied(handle)?;
        ValueRef::new(&self.inner.session, handle, || {
            self.get_through_ring(handle)
        })
    }

    /// [`Client::get_ref`], for a reference that must not borrow the client
    /// (bindings, reference tables, other threads): it keeps the session
    /// alive itself and counts against the same 1024.
    pub fn get_ref_owned(&self, handle: Handle) -> Result<OwnedValueRef> {
        self.inner.own_release_applied(handle)?;
        OwnedValueRef::new(Arc::clone(&self.inner.session), handle, || {
            self.get_through_ring(handle)
        })
    }

    fn get_through_ring(&self, handle: Handle) -> Result<Vec<u8>> {
        match self.one(Op::GetOwned { handle })? {
            Completion::Value(v) => Ok(v),
            other => Err(unexpected(other)),
        }
    }

    /// Copies the value of `handle` into `buf` and returns its length.
    /// [`Error::Buffer`] says how long `buf` must be; an empty `buf` probes
    /// the size (OK with 0 for an empty value).
    pub fn get_into(&self, handle: Handle, buf: &mut [u8]) -> Result<usize> {
        match self.read_here(handle, &mut Output::Buffer(buf)) {
            Resolved::Value(n) => Ok(n),
            Resolved::Ring => match self.one(Op::Get { handle, buf })? {
                Completion::Length(n) => Ok(n),
                other => Err(unexpected(other)),
            },
            failed => Err(failed.error()),
        }
    }

    /// Replaces the value of `handle`; readers see the old or the new one.
    pub fn replace(&self, handle: Handle, value: &[u8]) -> Result<()> {
        match self.one(Op::Replace { handle, value }) {
            // Byte credit held ahead, given back: tried again.
            Err(Error::Quota { limit, .. }) if self.inner.give_back_for(limit)? => {
                self.one(Op::Replace { handle, value }).map(drop)
            }
            other => other.map(drop),
        }
    }

    /// Takes one more reference to `handle` for this session.
    ///
    /// When the session holds one already, this is usually posted: answered
    /// here (STALE when the object is gone) and applied later. An object
    /// removed by another session meanwhile makes it a late failure, which
    /// the next [`Client::flush`] returns.
    pub fn retain(&self, handle: Handle) -> Result<()> {
        if let Some(done) = self.inner.post_reference(handle, true)? {
            return done;
        }
        self.one(Op::Retain(handle)).map(drop)
    }

    /// Drops one of this session's references ([`Error::NotHeld`] if none).
    ///
    /// Usually posted: answered here (NOT_HELD from the session's own count
    /// of its references, STALE when the object is gone) and applied before
    /// any later write of this thread and before the next
    /// [`Client::flush`] returns; until then other processes may still see
    /// the object. An object removed meanwhile makes it a no-op (the
    /// reference died with the object).
    pub fn release(&self, handle: Handle) -> Result<()> {
        if let Some(done) = self.inner.post_reference(handle, false)? {
            return done;
        }
        self.one(Op::Release(handle)).map(drop)
    }

    /// Kills the object now, whoever references it.
    pub fn remove(&self, handle: Handle) -> Result<()> {
        self.one(Op::Remove(handle)).map(drop)
    }

    /// Waits until every write this client posted has been applied by the
    /// daemon, so that other processes see their effects; returns the first
    /// late failure of a posted write since the last flush, else `Ok`.
    /// DISCONNECTED when the daemon is gone.
    pub fn flush(&self) -> Result<()> {
        use crate::engine::Liveness;
        let inner = &self.inner;
        let session = &inner.session;
        session.check_usable()?;
        inner.settle_all()?;
        if let Some(late) = session.posting.late.take() {
            return Err(late);
        }
        session.check_alive_within(std::time::Duration::ZERO)
    }

    /// The registry's figures.
    pub fn stats(&self) -> Result<Stats> {
        self.inner.settle_all()?;
        self.inner
            .session
            .request(&ControlRequest::Stats, "STATS", |reply| match reply {
                Reply::Stats(stats) => Some(stats),
                _ => None,
            })
    }

    /// Every attached session this client may see (all for root, its own
    /// uid's otherwise).
    pub fn sessions(&self) -> Result<Vec<SessionInfo>> {
        self.inner.settle_all()?;
        let mut all = Vec::new();
        let mut cursor = 0;
        loop {
            let (page, next) = self.inner.session.request(
                &ControlRequest::Sessions { cursor },
                "SESSIONS",
                |reply| match reply {
                    Reply::Sessions { sessions, next } => Some((sessions, next)),
                    _ => None,
                },
            )?;
            all.extend(page);
            if next == 0 {
                return Ok(all);
            }
            cursor = next;
        }
    }

    /// One page of live objects from `cursor` (0 for the first page), at
    /// most `limit` of them, and the cursor of the next page (0: no more).
    /// Only root may list other users' objects.
    pub fn list(
        &self,
        cursor: u64,
        limit: u32,
        filter: ListFilter,
    ) -> Result<(Vec<ObjectInfo>, u64)> {
        self.inner.settle_all()?;
        let request = ControlRequest::List {
            cursor,
            limit,
            filter,
        };
        self.inner
            .session
            .request(&request, "LIST", |reply| match reply {
                Reply::Objects { objects, next } => Some((objects, next)),
                _ => None,
            })
    }

    /// Every live object that passes `filter`, following [`Client::list`]'s
    /// pages to the end (a page may be short, even empty, before the end:
    /// the daemon looks at a bounded number of slots per request).
    pub fn list_all(&self, filter: ListFilter) -> Result<Vec<ObjectInfo>> {
        let mut all = Vec::new();
        let mut cursor = 0;
        loop {
            let (page, next) = self.list(cursor, hreg_proto::control::MAX_PAGE, filter)?;
            all.extend(page);
            if next == 0 {
                return Ok(all);
            }
            cursor = next;
        }
    }

    /// Shard occupancy, usage per uid against its caps, and requests per
    /// second.
    pub fn usage(&self) -> Result<UsageReply> {
        self.inner.settle_all()?;
        self.inner
            .session
            .request(&ControlRequest::Usage, "USAGE", |reply| match reply {
                Reply::Usage(usage) => Some(usage),
                _ => None,
            })
    }
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("session_id", &self.inner.session.welcome().session_id)
            .field("disconnected", &self.is_disconnected())
            .finish_non_exhaustive()
    }
}

fn unexpected(c: Completion) -> Error {
    Error::Protocol(format!("unexpected completion {c:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use hreg_proto::ring::Layout;
    use hreg_proto::{Status, PROTOCOL_VERSION};
    use rustix::fd::OwnedFd;
    use std::path::PathBuf;

    #[test]
    fn connect_to_nothing_names_the_path() {
        let path = std::env::temp_dir().join(format!("hreg-none-{}.sock", std::process::id()));
        match Client::connect(&path) {
            Err(Error::Connect { tried, reason }) => {
                assert_eq!(tried, vec![path]);
                assert!(reason.is_some());
            }
            other => panic!("expected a connect error, got {other:?}"),
        }
    }

    /// A one-shot fake daemon at a fresh path: accepts one connection,
    /// reads HELLO, answers `reply` (with `fds` attached).
    fn fake_daemon(
        tag: &str,
        reply: Reply,
        fds: Vec<OwnedFd>,
    ) -> (PathBuf, std::thread::JoinHandle<ControlRequest>) {
        use rustix::net::{
            AddressFamily, RecvFlags, SendFlags, SocketAddrUnix, SocketFlags, SocketType,
        };
        let path =
            std::env::temp_dir().join(format!("hreg-fake-{tag}-{}.sock", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let listener = rustix::net::socket_with(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            SocketFlags::CLOEXEC,
            None,
        )
        .unwrap();
        rustix::net::bind(&listener, &SocketAddrUnix::new(&path).unwrap()).unwrap();
        rustix::net::listen(&listener, 1).unwrap();
        let bound = path.clone();
        let thread = std::thread::spawn(move || {
            let conn = rustix::net::accept(&listener).unwrap();
            let _ = std::fs::remove_file(bound);
            let mut buf = [0u8; 4096];
            let (_, n) = rustix::net::recv(&conn, &mut buf, RecvFlags::empty()).unwrap();
            let hello = ControlRequest::decode(&buf[..n]).unwrap();
            let bytes = reply.encode();
            let fds: Vec<_> = fds.iter().map(rustix::fd::AsFd::as_fd).collect();
            hreg_proto::fd_passing::send(&conn, &bytes, &fds, SendFlags::empty()).unwrap();
            // Wait for the client to hang up.
            let _ = rustix::net::recv(&conn, &mut buf, RecvFlags::empty());
            hello
        });
        (path, thread)
    }

    #[test]
    fn refusals_map_to_errors() {
        for (tag, status, check) in [
            (
                "version",
                Status::Version,
                (|e: &Error| matches!(e, Error::Version { .. })) as fn(&Error) -> bool,
            ),
            (
                "quota",
                Status::Quota,
                |e: &Error| matches!(e, Error::Quota { message: Some(m), .. } if m == "no"),
            ),
            ("proto", Status::Protocol, |e: &Error| {
                matches!(e, Error::Protocol(_))
            }),
        ] {
            let reply = Reply::Refused {
                status: status as u32,
                message: "no".into(),
            };
            let (path, thread) = fake_daemon(tag, reply, Vec::new());
            let error = Client::connect_named(Some(&path), "fake-test").unwrap_err();
            assert!(check(&error), "{tag}: {error:?}");
            let hello = thread.join().unwrap();
            assert_eq!(
                hello,
                ControlRequest::Hello {
                    version: PROTOCOL_VERSION,
                    name: "fake-test".into()
                }
            );
        }
    }

    #[test]
    fn welcome_is_checked() {
        let layout = Layout {
            entries: 4,
            data_size: 64,
            max_rings: 2,
        };
        let stride = layout.ring_stride() as u64;
        let welcome = Welcome {
            version: PROTOCOL_VERSION,
            session_id: 3,
            max_value_size: 1 << 20,
            max_objects: 10,
            max_bytes: 10,
            ring_entries: 4,
            data_size: 64,
            max_rings: 2,
            ring_stride: stride,
            instance: 5,
            pins_offset: hreg_proto::pins::pins_offset(&layout) as u64,
            pin_entries: 8,
            pin_bytes: 1 << 20,
            resume_token: [0; 16],
            resume_grace_ms: 0,
        };
        let memfd =
            || crate::mapped::tests::sealed_memfd(hreg_proto::pins::session_len(&layout, 8) as u64);
        // A header of instance 5, as the daemon's.
        let header = || {
            let fd = crate::mapped::tests::sealed_memfd(hreg_proto::table::header::LEN as u64);
            let map = hreg_proto::shm::Mapping::<hreg_proto::shm::ReadWrite>::map(
                &fd,
                hreg_proto::table::header::LEN,
            )
            .unwrap();
            hreg_proto::table::header::HeaderWriter::init(&map, 5).unwrap();
            fd
        };
        let refused = |tag: &str, welcome: Welcome, fds: Vec<OwnedFd>| {
            let (path, thread) = fake_daemon(tag, Reply::Welcome(welcome), fds);
            let error = Client::connect(&path).unwrap_err();
            thread.join().unwrap();
            error
        };

        // No descriptors, or only the session memory.
        assert!(matches!(
            refused("nofd", welcome, vec![]),
            Error::Protocol(_)
        ));
        assert!(matches!(
            refused("onefd", welcome, vec![memfd()]),
            Error::Protocol(_)
        ));
        // A stride that does not match the memfd.
        let bad_stride = Welcome {
            ring_stride: stride * 2,
            ..welcome
        };
        assert!(matches!(
            refused("stride", bad_stride, vec![memfd(), header()]),
            Error::Protocol(_)
        ));
        // An instance the header does not carry.
        let other = Welcome {
            instance: 6,
            ..welcome
        };
        assert!(matches!(
            refused("instance", other, vec![memfd(), header()]),
            Error::Protocol(_)
        ));
        // Another version.
        let other_version = Welcome {
            version: PROTOCOL_VERSION + 1,
            ..welcome
        };
        assert!(matches!(
            refused("ver", other_version, vec![memfd(), header()]),
            Error::Version { .. }
        ));

        // A good one.
        let (path, thread) = fake_daemon("good", Reply::Welcome(welcome), vec![memfd(), header()]);
        let client = Client::connect(&path).unwrap();
        assert_eq!(client.session_id(), 3);
        assert_eq!(client.max_value_size(), 1 << 20);
        drop(client);
        thread.join().unwrap();
    }

    #[test]
    fn client_is_send_and_sync() {
        fn check<T: Send + Sync + Clone>() {}
        check::<Client>();
        check_owned::<crate::OwnedValueRef>();
        fn check_owned<T: Send + Sync>() {}
    }
}
