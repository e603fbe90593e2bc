//! The memory-ordering protocol of a ring: how each side publishes entries and
//! how it goes to sleep without missing a wake-up.
//!
//! The two sides of [`crate::ring`] call these functions and nothing else to
//! move counters and flags, so the `loom` model in `tests/loom.rs` checks the
//! code that runs. Under `--cfg hreg_loom` the atomics are loom's.
//!
//! Entries are published by their stamps (see [`crate::ring`]); the CQ tail
//! is published after the completions it covers, for the sleeping client.
//! The rule for sleeping is a Dekker handshake: the side that wants to sleep
//! stores its flag, issues a `SeqCst` fence, then re-reads what it waits on
//! (the next entry's stamp, or the CQ tail); the side that publishes stores
//! it, issues a `SeqCst` fence, then reads the flag. At least one of the two
//! sees the other's store, so either the sleeper does not sleep or the
//! publisher wakes it.

use crate::sync::{fence, AtomicU32, AtomicU64, Ordering};

/// `sq_flags`: the daemon's worker sleeps; ring the doorbell after publishing.
pub const SQ_NEED_WAKEUP: u32 = 0x1;
/// `cq_flags`: the client sleeps on the CQ tail futex; wake it after
/// publishing completions.
pub const CQ_WAITING: u32 = 0x1;

/// The shared words of one ring besides its entries.
#[derive(Clone, Copy)]
pub struct Words<'a> {
    /// Submissions the daemon has consumed; written by the daemon.
    pub sq_head: &'a AtomicU32,
    /// Submissions the client has published; written by the client.
    pub sq_tail: &'a AtomicU32,
    /// Completions the client has consumed; written by the client.
    pub cq_head: &'a AtomicU32,
    /// Completions the daemon has published; written by the daemon. The
    /// client sleeps on it as a futex word.
    pub cq_tail: &'a AtomicU32,
    /// [`SQ_NEED_WAKEUP`] or 0; written by the daemon.
    pub sq_flags: &'a AtomicU32,
    /// [`CQ_WAITING`] or 0; written by the client.
    pub cq_flags: &'a AtomicU32,
}

/// The stamp that publishes the entry at free-running position `counter` in
/// a ring of `entries` (a power of two): its lap plus one, so that zeroed
/// memory does not look published and the previous lap's stamp always
/// differs.
#[inline]
pub fn stamp(counter: u32, entries: u32) -> u16 {
    ((counter >> entries.trailing_zeros()) as u16).wrapping_add(1)
}

// Client side: producer of submissions, consumer of completions.

/// Names a parked ring to its worker: sets `bit` in the session's ready word
/// for that worker (release: the ring's published entries are visible to
/// whoever takes the bit). Called after [`after_submissions`] returned true,
/// before the doorbell is rung. Returns whether the bit was clear: when it
/// was set already, the worker has not taken the word since the doorbell
/// rang for it, and will see these entries when it does, so the doorbell
/// need not ring again (a client posting many writes to a parked ring
/// rings once, and its wakes never look useless to the worker).
#[inline]
pub fn mark_ready(ready: &AtomicU64, bit: u64) -> bool {
    ready.fetch_or(bit, Ordering::Release) & bit == 0
}

/// Called after the submissions before `tail` were published (each by its
/// stamp, with release ordering): stores the SQ tail, then fences. Returns
/// whether the daemon must be woken through the doorbell.
#[inline]
pub fn after_submissions(words: Words<'_>, tail: u32) -> bool {
    words.sq_tail.store(tail, Ordering::Release);
    fence(Ordering::SeqCst);
    words.sq_flags.load(Ordering::Relaxed) & SQ_NEED_WAKEUP != 0
}

/// Hands completion slots up to `head` back to the daemon.
#[inline]
pub fn release_completions(words: Words<'_>, head: u32) {
    words.cq_head.store(head, Ordering::Release);
}

/// The CQ tail now: the value to sleep on (the futex word) once
/// [`begin_completion_wait`] says to sleep. Read it first.
#[inline]
pub fn completion_tail(words: Words<'_>) -> u32 {
    words.cq_tail.load(Ordering::Acquire)
}

/// Announces that the client will sleep until the CQ tail moves; `empty`
/// then re-checks (after a fence) that the next completion is still
/// unpublished. Returns false when it is published after all (don't sleep).
/// Call [`end_completion_wait`] when done waiting either way.
#[inline]
pub fn begin_completion_wait(words: Words<'_>, empty: impl FnOnce() -> bool) -> bool {
    words.cq_flags.store(CQ_WAITING, Ordering::Relaxed);
    fence(Ordering::SeqCst);
    empty()
}

/// Clears the client's WAITING flag: it no longer sleeps on the CQ tail.
#[inline]
pub fn end_completion_wait(words: Words<'_>) {
    words.cq_flags.store(0, Ordering::Relaxed);
}

// Daemon side: consumer of submissions, producer of completions.

/// How far the client has read completions (for free CQ space).
#[inline]
pub fn completions_consumed(words: Words<'_>) -> u32 {
    words.cq_head.load(Ordering::Acquire)
}

/// Publishes the SQ head and the CQ tail after completions were published by
/// their stamps. Returns whether the client sleeps and must be woken on the
/// CQ tail futex.
#[inline]
pub fn publish_completions(words: Words<'_>, sq_head: u32, cq_tail: u32) -> bool {
    words.sq_head.store(sq_head, Ordering::Release);
    words.cq_tail.store(cq_tail, Ordering::Release);
    fence(Ordering::SeqCst);
    words.cq_flags.load(Ordering::Relaxed) & CQ_WAITING != 0
}

/// Announces that the worker will sleep; `idle` then re-checks (after a
/// fence) that the next submission is still unpublished. Returns false when
/// it is published after all (don't sleep). Call [`end_submission_wait`]
/// when done waiting either way.
#[inline]
pub fn begin_submission_wait(words: Words<'_>, idle: impl FnOnce() -> bool) -> bool {
    words.sq_flags.store(SQ_NEED_WAKEUP, Ordering::Relaxed);
    fence(Ordering::SeqCst);
    idle()
}

/// Takes the rings named ready since the last take (the worker, after it
/// drained the doorbell: a bit set after this take comes with a ring of the
/// doorbell after the drain, so it is seen at the next wake).
#[inline]
pub fn take_ready(ready: &AtomicU64) -> u64 {
    ready.swap(0, Ordering::Acquire)
}

/// Clears NEED_WAKEUP: the worker is awake and looks at the ring again.
#[inline]
pub fn end_submission_wait(words: Words<'_>) {
    words.sq_flags.store(0, Ordering::Relaxed);
}
