//! The data path: one batch run on one ring. It plans the batch
//! ([`crate::plan`]), writes each round's entries and values, publishes the
//! SQ tail and, only when the ring's worker has parked it, names the ring in
//! the session's ready word and rings the doorbell; it waits for the
//! round's completions (spin briefly, then futex with a 100 ms timeout that
//! checks the control socket), and turns completions into results, fetching
//! STAGED values piece by piece.
//!
//! The engine sees only what a batch needs ([`Context`]): the client's side
//! of one ring, its doorbell, the limits, and a way to ask whether the
//! daemon is still there ([`Liveness`]).
//!
//! Posted writes ([`post`]) share the ring: the client publishes them and
//! goes on; their completions are read later, in order, before those of
//! anything after them (the daemon serves a ring in order), and a failed
//! one is kept as a *late failure* for the next flush ([`settle`]). An op
//! on a handle granted ahead whose insert is not applied yet is answered
//! STALE with RESERVED: it is asked again, for up to [`RESERVED_WAIT`].

use crate::error::{Error, Result};
use crate::mapped::{self, WaitEnded};
use crate::plan::{self, Shape, Step, StepKind};
use crate::{Completion, Op};
use hreg_proto::entry::{cqe_flags, sqe_flags, Cqe, Sqe};
use hreg_proto::handle::Handle;
use hreg_proto::locks::lock;
use hreg_proto::ring::{ClientCounters, ClientRing, Park, ReadyWord};
use hreg_proto::sync::AtomicU32;
use hreg_proto::Opcode;
use rustix::fd::{AsFd, BorrowedFd};
use rustix::io::Errno;
use std::time::{Duration, Instant};

/// How long a waiter polls the CQ tail before it sleeps on the futex.
const SPIN_TIME: Duration = Duration::from_micros(50);
/// Checks of the CQ tail between yields while spinning (about a
/// microsecond). On a busy 2-core machine the waiter and the daemon worker
/// often share a core; every check between yields is time the worker cannot
/// run, and a round trip cost ~3x more at 256 (measured with Go and C
/// clients, the worker at its defaults). With a core of its own, a yield
/// with nothing else to run returns in a fraction of a microsecond.
const YIELD_EVERY: u32 = 16;
/// Checks of the CQ tail between reads of the clock while spinning.
const CLOCK_EVERY: u32 = 64;
/// Entries published at a time within a long round, so the daemon starts on
/// the first ones while the rest are written.
const PUBLISH_EVERY: usize = 16;
/// How long one futex sleep lasts before the control socket is checked.
const SLEEP_TIME: Duration = Duration::from_millis(100);
/// How long a GET waits for the insert of a handle granted ahead (it is
/// applied as soon as its ring is served: this bounds a made-up handle).
pub(crate) const RESERVED_WAIT: Duration = Duration::from_secs(1);
/// user_data of posted entries: this bit and a sequence number.
const POSTED_TAG: u64 = 1 << 63;
/// user_data bit of a posted RELEASE of a last reference (its handle is
/// next in the ring's `drops`).
const DROP_TAG: u64 = 1 << 62;
/// How long a ring that breaks the protocol waits for the control socket to
/// explain it (EOF or SHUTDOWN) before the error is called PROTOCOL.
const PROTOCOL_GRACE: Duration = Duration::from_millis(200);

impl Op<'_> {
    fn opcode(&self) -> Opcode {
        match self {
            Op::Insert { .. } => Opcode::Insert,
            Op::Get { .. } | Op::GetOwned { .. } => Opcode::Get,
            Op::Replace { .. } => Opcode::Replace,
            Op::Retain(_) => Opcode::Retain,
            Op::Release(_) => Opcode::Release,
            Op::Remove(_) => Opcode::Remove,
        }
    }

    fn handle(&self) -> u64 {
        match self {
            Op::Insert { .. } => 0,
            Op::Get { handle, .. } | Op::GetOwned { handle } | Op::Replace { handle, .. } => {
                handle.get()
            }
            Op::Retain(h) | Op::Release(h) | Op::Remove(h) => h.get(),
        }
    }

    fn obj_flags(&self) -> u32 {
        match self {
            Op::Insert { flags, .. } => *flags,
            _ => 0,
        }
    }

    fn value(&self) -> &[u8] {
        match self {
            Op::Insert { value, .. } | Op::Replace { value, .. } => value,
            _ => &[],
        }
    }

    /// What the op needs from the ring, or the error a local check finds.
    /// INVALID is checked before TOO_BIG, as the daemon orders them.
    fn shape(&self, max_value_size: u64) -> std::result::Result<Shape, Error> {
        match self {
            Op::Insert { flags: f, .. } if Opcode::Insert.check_flags(*f).is_err() => {
                Err(Error::Invalid)
            }
            Op::Insert { value, .. } | Op::Replace { value, .. } => {
                let len = value.len() as u64;
                let too_big = || Error::too_big(len, max_value_size);
                if len > max_value_size {
                    return Err(too_big());
                }
                let len = u32::try_from(len).map_err(|_| too_big())?;
                Ok(Shape::Write { len })
            }
            Op::Get { buf, .. } => Ok(Shape::Read {
                cap: buf.len() as u64,
            }),
            Op::GetOwned { .. } => Ok(Shape::Read {
                cap: max_value_size,
            }),
            Op::Retain(_) | Op::Release(_) | Op::Remove(_) => Ok(Shape::Entry),
        }
    }
}

/// Buffers a ring's batches reuse (kept in its [`RingState`], cleared before
/// each use), so a call allocates nothing once they have grown.
#[derive(Debug, Default)]
pub(crate) struct Scratch {
    /// Per op: `None` until answered.
    results: Vec<Option<Result<Completion>>>,
    shapes: Vec<Option<Shape>>,
    plan: plan::Plan,
    sqes: Vec<Sqe>,
    sent: Vec<Step>,
    staged: Vec<(usize, u32)>,
    /// GETs answered "granted ahead, not filled yet", to ask again.
    reserved: Vec<Step>,
}

/// Ops' worth of capacity a ring keeps between calls; a larger batch's
/// buffers are freed after it, so one huge batch does not pin memory.
const SCRATCH_KEEP: usize = 1024;

impl Scratch {
    fn trim(&mut self) {
        if self.results.capacity() > SCRATCH_KEEP || self.plan.steps.capacity() > SCRATCH_KEEP {
            *self = Scratch::default();
        }
    }
}

/// Whether the daemon is still there, asked of the control socket (never
/// of a timeout on completions: slow is not dead).
pub(crate) trait Liveness {
    /// Waits up to `grace` for the socket to say the daemon is gone (zero:
    /// just a look); DISCONNECTED if it is.
    fn check_alive_within(&self, grace: Duration) -> Result<()>;
}

/// What the engine needs for one batch.
pub(crate) struct Context<'a> {
    pub ring: ClientRing<'a>,
    /// The ring's index (its bit in the ready word).
    pub index: u32,
    /// The ready word of the ring's worker (`None`: a daemon without
    /// ready words, which looks at the ring when its doorbell rings).
    pub ready: Option<ReadyWord<'a>>,
    pub doorbell: BorrowedFd<'a>,
    pub liveness: &'a dyn Liveness,
    pub max_value_size: u64,
    /// The client's posted writes: where late failures go, which releases
    /// of last references are not applied yet, how many are in flight.
    pub posting: &'a crate::posted::Posting,
}

/// The first late failure of a posted write since the last flush (the
/// client's, over all its rings).
#[derive(Debug, Default)]
pub(crate) struct LateFailures(std::sync::Mutex<Option<Error>>);

impl LateFailures {
    fn record(&self, error: Error) {
        let mut first = lock(&self.0);
        first.get_or_insert(error);
    }

    /// The first late failure since the last take, if any.
    pub(crate) fn take(&self) -> Option<Error> {
        lock(&self.0).take()
    }
}

/// What the client keeps for one ring between batches: its positions, and
/// the buffers its batches reuse so that a call allocates nothing once they
/// have grown.
#[derive(Debug, Default)]
pub(crate) struct RingState {
    counters: ClientCounters,
    next_user_data: u64,
    /// Set after a protocol error left the ring in an unknown state.
    broken: bool,
    /// Posted entries whose completions are not read yet (they come before
    /// any later entry's).
    posted: u32,
    next_posted: u64,
    /// The handles of posted releases of last references, in order.
    drops: std::collections::VecDeque<Handle>,
    scratch: Scratch,
}

impl RingState {
    /// The ring side of this ring's state, for one use.
    fn io<'a, 'c>(&'a mut self, cx: &'a Context<'c>) -> RingIo<'a, 'c> {
        RingIo {
            cx,
            counters: &mut self.counters,
            next_user_data: &mut self.next_user_data,
            posted: &mut self.posted,
            drops: &mut self.drops,
        }
    }

    /// PROTOCOL once an earlier protocol error left the ring unusable.
    fn check_usable(&self) -> Result<()> {
        if self.broken {
            return Err(unusable());
        }
        Ok(())
    }
}

fn unusable() -> Error {
    Error::Protocol("ring unusable after an earlier protocol error".into())
}

/// Runs `ops` in order on the context's ring. Per-op failures land in the
/// returned vector; an `Err` means the batch as a whole stopped.
pub(crate) fn run(
    cx: &Context<'_>,
    state: &mut RingState,
    ops: &mut [Op<'_>],
) -> Result<Vec<Result<Completion>>> {
    let outcome = run_locked(cx, ops, state)
        .and_then(|()| state.scratch.results.drain(..).map(answered).collect());
    state.scratch.trim();
    outcome
}

/// Runs one op: [`run`] without the result vector.
pub(crate) fn run_one(cx: &Context<'_>, state: &mut RingState, op: Op<'_>) -> Result<Completion> {
    let mut ops = [op];
    run_locked(cx, &mut ops, state)?;
    let result = state.scratch.results.pop().and_then(|r| r);
    answered(result)?
}

/// An op's result, or the protocol error of an op left unanswered.
fn answered(result: Option<Result<Completion>>) -> Result<Result<Completion>> {
    result.ok_or_else(|| Error::Protocol("an operation got no completion".into()))
}

/// The body of [`run`]; leaves one result per op in
/// `state.scratch.results`.
fn run_locked(cx: &Context<'_>, ops: &mut [Op<'_>], state: &mut RingState) -> Result<()> {
    let max_value_size = cx.max_value_size;
    let RingState {
        counters,
        next_user_data,
        broken,
        posted,
        drops,
        scratch,
        ..
    } = state;
    scratch.results.clear();
    scratch.shapes.clear();
    for op in ops.iter() {
        match op.shape(max_value_size) {
            Ok(shape) => {
                scratch.shapes.push(Some(shape));
                scratch.results.push(None);
            }
            Err(e) => {
                scratch.shapes.push(None);
                scratch.results.push(Some(Err(e)));
            }
        }
    }
    let layout = cx.ring.layout();
    plan::plan_into(
        &mut scratch.plan,
        &scratch.shapes,
        layout.entries,
        layout.data_size,
    );
    if scratch.plan.steps.is_empty() {
        return Ok(());
    }
    if *broken {
        return Err(unusable());
    }
    let mut io = RingIo {
        cx,
        counters,
        next_user_data,
        posted,
        drops,
    };
    let mut batch = Batch {
        ops,
        results: &mut scratch.results,
        max_value_size,
    };
    let bufs = RoundBufs {
        sqes: &mut scratch.sqes,
        sent: &mut scratch.sent,
        staged: &mut scratch.staged,
        reserved: &mut scratch.reserved,
    };
    if let Err(e) = batch.run(&mut io, &scratch.plan, bufs) {
        if let Error::Protocol(_) = e {
            // A daemon that is going away may scribble on (or discard)
            // the ring before its socket says so: prefer DISCONNECTED.
            cx.liveness.check_alive_within(PROTOCOL_GRACE)?;
            *broken = true;
        }
        return Err(e);
    }
    Ok(())
}

/// Posts one write (INSERT into a granted handle, RETAIN, RELEASE: `sqe`
/// carries POSTED): publishes it, rings the doorbell only if the ring's
/// worker has parked it, and returns without waiting. Waits only when the
/// ring is full of posted writes not completed yet. `drop`: the handle of
/// a RELEASE of the last reference, which this client's reads wait for
/// until it is applied.
pub(crate) fn post(
    cx: &Context<'_>,
    state: &mut RingState,
    mut sqe: Sqe,
    drop: Option<Handle>,
) -> Result<()> {
    state.check_usable()?;
    sqe.user_data = POSTED_TAG | (state.next_posted & !DROP_TAG);
    if drop.is_some() {
        sqe.user_data |= DROP_TAG;
    }
    state.next_posted = state.next_posted.wrapping_add(1);
    let outcome = state.io(cx).post(&sqe, drop);
    broken_by(cx, &mut state.broken, outcome)
}

/// Waits until every write posted on this ring is applied, its late
/// failures recorded in the context's [`LateFailures`].
pub(crate) fn settle(cx: &Context<'_>, state: &mut RingState) -> Result<()> {
    if state.broken || state.posted == 0 {
        return Ok(());
    }
    let outcome = state.io(cx).reap_posted(0);
    broken_by(cx, &mut state.broken, outcome)
}

/// Runs one entry of the ring's own (SYNC) and waits for it; its failure
/// as an error.
pub(crate) fn exchange_one(cx: &Context<'_>, state: &mut RingState, sqe: Sqe) -> Result<Cqe> {
    state.check_usable()?;
    let mut sqe = [sqe];
    let mut done = None;
    let outcome = state.io(cx).exchange(&mut sqe, |_, cqe| {
        done = Some(*cqe);
        Ok(())
    });
    broken_by(cx, &mut state.broken, outcome)?;
    let cqe = done.ok_or_else(|| Error::Protocol("an entry got no completion".into()))?;
    match Error::from_completion(cqe.status, cqe.value_len) {
        Some(e) => Err(e),
        None => Ok(cqe),
    }
}

/// What a RESERVE granted.
pub(crate) struct Grant {
    /// Byte credit granted now.
    pub credit: u64,
    /// Whether the daemon applies posted writes.
    pub posting: bool,
}

/// Asks the daemon for up to `want` handles ahead (of the SHARED domain or
/// the uid's own), appended to `out`, and waits for them.
pub(crate) fn reserve(
    cx: &Context<'_>,
    state: &mut RingState,
    shared: bool,
    want: usize,
    out: &mut Vec<Handle>,
) -> Result<Grant> {
    state.check_usable()?;
    let want = want
        .min(hreg_proto::entry::MAX_GRANT)
        .min(cx.ring.data_size() as usize / 8)
        .max(1);
    let sqe = Sqe {
        opcode: Opcode::Reserve as u8,
        obj_flags: if shared { hreg_proto::flags::SHARED } else { 0 },
        data_off: 0,
        data_len: 8 * want as u32,
        ..Sqe::default()
    };
    let cqe = exchange_one(cx, state, sqe)?;
    let granted = cqe.value_len as usize;
    if granted > want {
        return Err(Error::Protocol(format!(
            "RESERVE of {want} handles granted {granted}"
        )));
    }
    let mut bytes = [0u8; 8];
    for k in 0..granted {
        get_data(&cx.ring, 8 * k as u32, &mut bytes)?;
        let handle = Handle::new(u64::from_le_bytes(bytes))
            .ok_or_else(|| Error::Protocol("RESERVE granted handle 0".into()))?;
        out.push(handle);
    }
    Ok(Grant {
        credit: cqe.handle,
        posting: cqe.entry_flags & cqe_flags::POSTING != 0,
    })
}

/// Marks the ring broken after a protocol error (preferring DISCONNECTED
/// when the daemon is going away), as [`run`] does.
fn broken_by(cx: &Context<'_>, broken: &mut bool, outcome: Result<()>) -> Result<()> {
    if let Err(Error::Protocol(_)) = &outcome {
        cx.liveness.check_alive_within(PROTOCOL_GRACE)?;
        *broken = true;
    }
    outcome
}

/// The ring side of a batch: entries out, completions in, waiting.
struct RingIo<'a, 'c> {
    cx: &'a Context<'c>,
    counters: &'a mut ClientCounters,
    next_user_data: &'a mut u64,
    /// Posted entries whose completions are not read yet.
    posted: &'a mut u32,
    /// Handles of posted releases of last references, in order.
    drops: &'a mut std::collections::VecDeque<Handle>,
}

impl RingIo<'_, '_> {
    /// Publishes posted entry `sqe` (its user_data set) once the ring has
    /// room, ringing the doorbell if the ring is parked; `drop`: the handle
    /// of a RELEASE of a last reference.
    fn post(&mut self, sqe: &Sqe, drop: Option<Handle>) -> Result<()> {
        let ring = self.cx.ring;
        // Completions are read in batches, once half the ring is in
        // flight: read as each lands, every one would bring its cache line
        // over from the daemon's core on its own, between two pushes.
        if *self.posted >= ring.entries() / 2 {
            self.reap_posted(ring.entries() - 1)?;
        }
        if let Some(handle) = drop {
            self.drops.push_back(handle);
            self.cx.posting.dropping.add(handle);
        }
        self.cx
            .posting
            .in_flight
            .fetch_add(1, std::sync::atomic::Ordering::Release);
        ring.push(self.counters, &sqe.encode());
        *self.posted += 1;
        if ring.flush(self.counters) {
            self.ring_doorbell()?;
        }
        Ok(())
    }

    /// Reads the completions of posted entries until at most `left` are
    /// not read (waiting for them when needed); records late failures.
    fn reap_posted(&mut self, left: u32) -> Result<()> {
        let ring = self.cx.ring;
        let mut park = Waiting::new(self.cx.liveness);
        let mut popped = false;
        loop {
            while *self.posted > 0 {
                let Some(raw) = ring.pop(self.counters) else {
                    break;
                };
                self.take_posted(&Cqe::decode(&raw))?;
                popped = true;
            }
            if *self.posted <= left {
                break;
            }
            ring.wait(self.counters, &mut park)?;
        }
        if popped {
            ring.release(self.counters);
        }
        Ok(())
    }

    /// The completion of a posted entry: a late failure when it failed.
    fn take_posted(&mut self, cqe: &Cqe) -> Result<()> {
        if cqe.user_data & POSTED_TAG == 0 {
            return Err(Error::Protocol(format!(
                "completion for entry {} where a posted one was due",
                cqe.user_data
            )));
        }
        *self.posted -= 1;
        self.cx
            .posting
            .in_flight
            .fetch_sub(1, std::sync::atomic::Ordering::Release);
        if cqe.user_data & DROP_TAG != 0 {
            let handle = self
                .drops
                .pop_front()
                .ok_or_else(|| Error::Protocol("a completion for a release never posted".into()))?;
            self.cx.posting.dropping.applied(handle);
        }
        if let Some(e) = Error::from_completion(cqe.status, cqe.value_len) {
            self.cx.posting.late.record(e);
        }
        Ok(())
    }

    /// Writes `sqes` (at most `entries`), publishes them, and hands each
    /// completion, in order, to `on_cqe` with its position.
    fn exchange(
        &mut self,
        sqes: &mut [Sqe],
        mut on_cqe: impl FnMut(usize, &Cqe) -> Result<()>,
    ) -> Result<()> {
        let ring = self.cx.ring;
        let n = sqes.len();
        debug_assert!(n <= ring.entries() as usize);
        // Room for the round beside the posted entries in flight.
        self.reap_posted(ring.entries().saturating_sub(n as u32))?;
        let base = *self.next_user_data;
        // A doorbell failure is reported once every entry is published.
        let mut bell = Ok(());
        for (k, sqe) in sqes.iter_mut().enumerate() {
            sqe.user_data = base.wrapping_add(k as u64);
            ring.push(self.counters, &sqe.encode());
            if ((k + 1).is_multiple_of(PUBLISH_EVERY) || k + 1 == n)
                && ring.flush(self.counters)
                && bell.is_ok()
            {
                bell = self.ring_doorbell();
            }
        }
        *self.next_user_data = base.wrapping_add(n as u64);
        bell?;

        let mut park = Waiting::new(self.cx.liveness);
        let mut done = 0;
        while done < n {
            ring.wait(self.counters, &mut park)?;
            while done < n {
                let Some(raw) = ring.pop(self.counters) else {
                    break;
                };
                let cqe = Cqe::decode(&raw);
                // Posted entries published before the round come first.
                if *self.posted > 0 {
                    self.take_posted(&cqe)?;
                    continue;
                }
                let expected = base.wrapping_add(done as u64);
                if cqe.user_data != expected {
                    return Err(Error::Protocol(format!(
                        "completion for entry {} where {expected} was due",
                        cqe.user_data
                    )));
                }
                on_cqe(done, &cqe)?;
                done += 1;
            }
            ring.release(self.counters);
        }
        Ok(())
    }

    /// Names the parked ring in the ready word, then rings the doorbell.
    fn ring_doorbell(&self) -> Result<()> {
        if let Some(ready) = &self.cx.ready {
            if !ready.mark(self.cx.index) {
                // A wake for this ring is on its way already.
                return Ok(());
            }
        }
        loop {
            match rustix::io::write(self.cx.doorbell.as_fd(), &1u64.to_ne_bytes()) {
                Ok(_) => return Ok(()),
                Err(Errno::INTR) => continue,
                // The counter is already huge: the daemon will wake anyway.
                Err(Errno::AGAIN) => return Ok(()),
                Err(e) => return Err(e.into()),
            }
        }
    }
}

/// How the client waits for a completion: polls for [`SPIN_TIME`] (one
/// pause per check so it is seen as soon as it lands; a yield now and then
/// for a worker sharing this core; the clock read sparingly, and not at all
/// when the answer comes within the first [`CLOCK_EVERY`] checks), then
/// sleeps on the CQ tail futex in slices of [`SLEEP_TIME`], asking the
/// control socket after each whether the daemon is still there.
struct Waiting<'a> {
    liveness: &'a dyn Liveness,
    checks: u32,
    deadline: Option<Instant>,
}

impl<'a> Waiting<'a> {
    fn new(liveness: &'a dyn Liveness) -> Waiting<'a> {
        Waiting {
            liveness,
            checks: 0,
            deadline: None,
        }
    }
}

impl Park for Waiting<'_> {
    type Error = Error;

    fn spin(&mut self) -> bool {
        self.checks = self.checks.wrapping_add(1);
        if self.checks.is_multiple_of(YIELD_EVERY) {
            std::thread::yield_now();
        } else {
            std::hint::spin_loop();
        }
        if !self.checks.is_multiple_of(CLOCK_EVERY) {
            return false;
        }
        let now = Instant::now();
        match self.deadline {
            None => {
                self.deadline = Some(now + SPIN_TIME);
                false
            }
            Some(d) if now >= d => {
                // Spin again after the sleep.
                self.deadline = None;
                true
            }
            Some(_) => false,
        }
    }

    fn sleep(&mut self, word: &AtomicU32, seen: u32) -> Result<()> {
        if matches!(
            mapped::futex_wait(word, seen, SLEEP_TIME)?,
            WaitEnded::TimedOut
        ) {
            self.liveness.check_alive_within(Duration::ZERO)?;
        }
        Ok(())
    }
}

/// The caller's side of a batch: the ops and their results.
struct Batch<'b, 'o> {
    ops: &'b mut [Op<'o>],
    results: &'b mut [Option<Result<Completion>>],
    max_value_size: u64,
}

/// The per-round buffers of [`Batch::run`], from the ring's [`Scratch`].
struct RoundBufs<'s> {
    sqes: &'s mut Vec<Sqe>,
    sent: &'s mut Vec<Step>,
    staged: &'s mut Vec<(usize, u32)>,
    reserved: &'s mut Vec<Step>,
}

impl Batch<'_, '_> {
    fn run(
        &mut self,
        io: &mut RingIo<'_, '_>,
        plan: &plan::Plan,
        bufs: RoundBufs<'_>,
    ) -> Result<()> {
        let RoundBufs {
            sqes,
            sent,
            staged,
            reserved,
        } = bufs;
        for round in &plan.rounds {
            sqes.clear();
            sent.clear();
            for step in &plan.steps[round.clone()] {
                // An op whose earlier piece failed is already answered.
                if self.results[step.op].is_some() {
                    continue;
                }
                sqes.push(self.build(io, step)?);
                sent.push(*step);
            }
            if sqes.is_empty() {
                continue;
            }
            staged.clear();
            reserved.clear();
            let ring = io.cx.ring;
            io.exchange(sqes, |k, cqe| {
                self.complete(&ring, &sent[k], cqe, staged, reserved)
            })?;
            for &(op, total) in staged.iter() {
                self.fetch_staged(io, op, total)?;
            }
            for &step in reserved.iter() {
                self.wait_reserved(io, step)?;
            }
        }
        Ok(())
    }

    /// Asks again for an op on a handle granted ahead whose insert was not
    /// applied yet, backing off, until it is (or is gone), or
    /// [`RESERVED_WAIT`] has passed: then it is STALE (no insert returned
    /// it, or its session is gone without making it).
    fn wait_reserved(&mut self, io: &mut RingIo<'_, '_>, step: Step) -> Result<()> {
        let deadline = Instant::now() + RESERVED_WAIT;
        let mut pause = Duration::from_micros(2);
        for tries in 0u32.. {
            if tries < 16 {
                std::thread::yield_now();
            } else {
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(1));
            }
            let mut sqe = [self.build(io, &step)?];
            let mut again = Vec::new();
            let mut staged = Vec::new();
            let ring = io.cx.ring;
            io.exchange(&mut sqe, |_, cqe| {
                self.complete(&ring, &step, cqe, &mut staged, &mut again)
            })?;
            for &(op, total) in staged.iter() {
                self.fetch_staged(io, op, total)?;
            }
            if again.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                self.results[step.op] = Some(Err(Error::Stale));
                return Ok(());
            }
        }
        Ok(())
    }

    /// The entry for `step`, with its value copied into the data area.
    fn build(&self, io: &RingIo<'_, '_>, step: &Step) -> Result<Sqe> {
        let op = &self.ops[step.op];
        let mut sqe = Sqe {
            opcode: op.opcode() as u8,
            obj_flags: op.obj_flags(),
            handle: op.handle(),
            ..Sqe::default()
        };
        let value = op.value();
        match step.kind {
            StepKind::Plain => {}
            StepKind::WriteInline => {
                sqe.entry_flags = sqe_flags::INLINE;
                sqe.data_len = value.len() as u32;
                sqe.inline[..value.len()].copy_from_slice(value);
            }
            StepKind::WriteData => {
                put_data(&io.cx.ring, step.off, value)?;
                sqe.data_off = step.off;
                sqe.data_len = step.len;
            }
            StepKind::StagePiece { value_off } => {
                let start = value_off as usize;
                let piece = value
                    .get(start..start + step.len as usize)
                    .ok_or_else(|| Error::Protocol("staging piece outside the value".into()))?;
                put_data(&io.cx.ring, step.off, piece)?;
                sqe.opcode = Opcode::StageWrite as u8;
                sqe.obj_flags = 0;
                sqe.handle = 0;
                sqe.data_off = step.off;
                sqe.data_len = step.len;
                sqe.set_inline_u64(u64::from(value_off));
            }
            StepKind::WriteStaged => {
                sqe.entry_flags = sqe_flags::STAGED;
                sqe.data_len = value.len() as u32;
            }
            StepKind::Read { .. } => {
                sqe.data_off = step.off;
                sqe.data_len = step.len;
                sqe.set_inline_u64(self.capacity(step.op));
            }
        }
        Ok(sqe)
    }

    fn capacity(&self, op: usize) -> u64 {
        match &self.ops[op] {
            Op::Get { buf, .. } => buf.len() as u64,
            _ => self.max_value_size,
        }
    }

    /// Turns the completion of `step` into its op's result, or notes a
    /// STAGED value to fetch once the round is over.
    fn complete(
        &mut self,
        ring: &ClientRing<'_>,
        step: &Step,
        cqe: &Cqe,
        staged: &mut Vec<(usize, u32)>,
        reserved: &mut Vec<Step>,
    ) -> Result<()> {
        let op = step.op;
        let granted_ahead = cqe.status == hreg_proto::Status::Stale as u32
            && cqe.entry_flags & cqe_flags::RESERVED != 0;
        // Any op on it: asked again (a piece of a value is never on a
        // handle).
        if granted_ahead && !matches!(step.kind, StepKind::StagePiece { .. }) {
            reserved.push(*step);
            return Ok(());
        }
        if let Some(mut e) = Error::from_completion(cqe.status, cqe.value_len) {
            if let Error::TooBig { size, .. } = &mut e {
                *size = Some(self.ops[op].value().len() as u64);
            }
            self.results[op] = Some(Err(e));
            return Ok(());
        }
        let done = match step.kind {
            StepKind::StagePiece { .. } => return Ok(()),
            StepKind::Plain
            | StepKind::WriteInline
            | StepKind::WriteData
            | StepKind::WriteStaged => match self.ops[op] {
                Op::Insert { .. } => Completion::Inserted(
                    Handle::new(cqe.handle)
                        .ok_or_else(|| Error::Protocol("INSERT completed with handle 0".into()))?,
                ),
                _ => Completion::Done,
            },
            StepKind::Read { may_stage } => {
                let len = cqe.value_len;
                if u64::from(len) > self.capacity(op) {
                    return Err(Error::Protocol(format!(
                        "GET returned {len} bytes for a capacity of {}",
                        self.capacity(op)
                    )));
                }
                let where_ =
                    cqe.entry_flags & (cqe_flags::INLINE | cqe_flags::IN_DATA | cqe_flags::STAGED);
                match where_ {
                    0 if len == 0 => self.deliver_len(op, 0, |_| Ok(()))?,
                    cqe_flags::INLINE => {
                        let bytes = cqe.inline.get(..len as usize).ok_or_else(|| {
                            Error::Protocol(format!("{len} bytes claimed inline"))
                        })?;
                        self.deliver_len(op, len, |out| {
                            out.copy_from_slice(bytes);
                            Ok(())
                        })?
                    }
                    cqe_flags::IN_DATA => {
                        let inside = u64::from(cqe.data_off) >= u64::from(step.off)
                            && u64::from(cqe.data_off) + u64::from(len)
                                <= u64::from(step.off) + u64::from(step.len);
                        if !inside {
                            return Err(Error::Protocol(
                                "GET wrote outside the region it was given".into(),
                            ));
                        }
                        self.deliver_len(op, len, |out| get_data(ring, cqe.data_off, out))?
                    }
                    cqe_flags::STAGED if may_stage => {
                        staged.push((op, len));
                        return Ok(());
                    }
                    _ => {
                        return Err(Error::Protocol(format!(
                            "GET completed with flags {:#x} for {len} bytes",
                            cqe.entry_flags
                        )))
                    }
                }
            }
        };
        self.results[op] = Some(Ok(done));
        Ok(())
    }

    /// Places a `len`-byte value: into the caller's buffer (GET) or a new
    /// vector (GET owned); `fill` writes the bytes.
    fn deliver_len(
        &mut self,
        op: usize,
        len: u32,
        fill: impl FnOnce(&mut [u8]) -> Result<()>,
    ) -> Result<Completion> {
        let len = len as usize;
        match &mut self.ops[op] {
            Op::Get { buf, .. } => {
                let out = buf
                    .get_mut(..len)
                    .ok_or_else(|| Error::Protocol("value longer than the buffer".into()))?;
                fill(out)?;
                Ok(Completion::Length(len))
            }
            _ => {
                let mut value = alloc_value(len)?;
                fill(&mut value)?;
                Ok(Completion::Value(value))
            }
        }
    }

    /// Copies a STAGED value of `total` bytes out of the staging buffer with
    /// STAGE_READ pieces through the data area, into the op's output.
    fn fetch_staged(&mut self, io: &mut RingIo<'_, '_>, op: usize, total: u32) -> Result<()> {
        let mut owned = match self.ops[op] {
            Op::Get { .. } => None,
            _ => Some(alloc_value(total as usize)?),
        };
        let data_size = io.cx.ring.data_size();
        let mut at = 0u32;
        while at < total {
            let want = (total - at).min(data_size);
            let mut sqe = [Sqe {
                opcode: Opcode::StageRead as u8,
                data_off: 0,
                data_len: want,
                ..Sqe::default()
            }];
            sqe[0].set_inline_u64(u64::from(at));
            let mut result = None;
            io.exchange(&mut sqe, |_, cqe| {
                result = Some(*cqe);
                Ok(())
            })?;
            let cqe =
                result.ok_or_else(|| Error::Protocol("STAGE_READ got no completion".into()))?;
            if let Some(e) = Error::from_completion(cqe.status, cqe.value_len) {
                self.results[op] = Some(Err(e));
                return Ok(());
            }
            let got = cqe.value_len;
            if got == 0 || got > want {
                return Err(Error::Protocol(format!(
                    "STAGE_READ of {want} bytes copied {got}"
                )));
            }
            let range = at as usize..(at + got) as usize;
            let out = match (&mut owned, &mut self.ops[op]) {
                (Some(v), _) => v.get_mut(range),
                (None, Op::Get { buf, .. }) => buf.get_mut(range),
                (None, _) => None,
            }
            .ok_or_else(|| Error::Protocol("staged value longer than the buffer".into()))?;
            get_data(&io.cx.ring, 0, out)?;
            at += got;
        }
        self.results[op] = Some(Ok(match owned {
            Some(v) => Completion::Value(v),
            None => Completion::Length(total as usize),
        }));
        Ok(())
    }
}

fn put_data(ring: &ClientRing<'_>, off: u32, bytes: &[u8]) -> Result<()> {
    if ring.copy_to_data(off, bytes) {
        Ok(())
    } else {
        Err(Error::Protocol("value outside the data area".into()))
    }
}

fn get_data(ring: &ClientRing<'_>, off: u32, out: &mut [u8]) -> Result<()> {
    if ring.copy_from_data(off, out) {
        Ok(())
    } else {
        Err(Error::Protocol("value outside the data area".into()))
    }
}

/// A zeroed vector of `len` bytes, without aborting when memory is short.
fn alloc_value(len: usize) -> Result<Vec<u8>> {
    let mut value = Vec::new();
    value
        .try_reserve_exact(len)
        .map_err(|_| Error::Io(std::io::ErrorKind::OutOfMemory.into()))?;
    value.resize(len, 0);
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_checks_order_invalid_before_too_big() {
        let big = vec![0u8; 10];
        let op = Op::Insert {
            value: &big,
            flags: 0x80,
        };
        assert!(matches!(op.shape(4), Err(Error::Invalid)));
        let op = Op::Insert {
            value: &big,
            flags: hreg_proto::flags::SHARED | hreg_proto::flags::DETACHED,
        };
        assert!(matches!(op.shape(4), Err(Error::TooBig { .. })));
        assert_eq!(op.shape(10).unwrap(), Shape::Write { len: 10 });
        let op = Op::Replace {
            handle: Handle::new(1).unwrap(),
            value: &big,
        };
        assert!(matches!(op.shape(9), Err(Error::TooBig { .. })));
        assert_eq!(op.obj_flags(), 0);
    }

    #[test]
    fn ops_name_their_opcodes() {
        let h = Handle::new(7).unwrap();
        let mut buf = [0u8; 3];
        assert_eq!(Op::Retain(h).opcode(), Opcode::Retain);
        assert_eq!(Op::Release(h).opcode(), Opcode::Release);
        assert_eq!(Op::Remove(h).handle(), 7);
        assert_eq!(
            Op::GetOwned { handle: h }.shape(99).unwrap(),
            Shape::Read { cap: 99 }
        );
        assert_eq!(
            Op::Get {
                handle: h,
                buf: &mut buf
            }
            .shape(99)
            .unwrap(),
            Shape::Read { cap: 3 }
        );
    }

    #[test]
    fn allocation_is_fallible() {
        assert_eq!(alloc_value(5).unwrap(), vec![0u8; 5]);
        assert!(alloc_value(usize::MAX).is_err());
    }
}
