//! The memory-ordering protocol of a ring: how each side publishes entries and
//! how it goes to sleep without missing a wake-up.
//!
//! Both the daemon and the clients call these functions and nothing else to
//! move counters and flags, so the `loom` model in `tests/loom.rs` checks the
//! code that runs. Under `--cfg hreg_loom` the atomics are loom's.
//!
//! The rule for sleeping is a Dekker handshake: the side that wants to sleep
//! stores its flag, issues a `SeqCst` fence, then re-reads the counter it
//! waits on; the side that publishes stores its counter, issues a `SeqCst`
//! fence, then reads the flag. At least one of the two sees the other's
//! store, so either the sleeper does not sleep or the publisher wakes it.

#[cfg(hreg_loom)]
use loom::sync::atomic::{fence, AtomicU32, Ordering};
#[cfg(not(hreg_loom))]
use std::sync::atomic::{fence, AtomicU32, Ordering};

/// `sq_flags`: the daemon's worker sleeps; ring the doorbell after publishing.
pub const SQ_NEED_WAKEUP: u32 = 0x1;
/// `cq_flags`: the client sleeps on the CQ tail futex; wake it after
/// publishing completions.
pub const CQ_WAITING: u32 = 0x1;

/// The six shared words of one ring.
#[derive(Clone, Copy)]
pub struct Words<'a> {
    pub sq_head: &'a AtomicU32,
    pub sq_tail: &'a AtomicU32,
    pub cq_head: &'a AtomicU32,
    pub cq_tail: &'a AtomicU32,
    pub sq_flags: &'a AtomicU32,
    pub cq_flags: &'a AtomicU32,
}

// Client side: producer of submissions, consumer of completions.

/// Publishes submissions up to `tail` (entries already written). Returns
/// whether the daemon must be woken through the doorbell.
#[inline]
pub fn publish_submissions(words: Words<'_>, tail: u32) -> bool {
    words.sq_tail.store(tail, Ordering::Release);
    fence(Ordering::SeqCst);
    words.sq_flags.load(Ordering::Relaxed) & SQ_NEED_WAKEUP != 0
}

/// How far the daemon has consumed submissions (for free SQ space).
#[inline]
pub fn submissions_consumed(words: Words<'_>) -> u32 {
    words.sq_head.load(Ordering::Acquire)
}

/// The CQ tail: completions up to it may be read.
#[inline]
pub fn completions_ready(words: Words<'_>) -> u32 {
    words.cq_tail.load(Ordering::Acquire)
}

/// Hands completion slots up to `head` back to the daemon.
#[inline]
pub fn release_completions(words: Words<'_>, head: u32) {
    words.cq_head.store(head, Ordering::Release);
}

/// Announces that the client will sleep until the CQ tail moves from `seen`.
/// Returns false when it already moved (don't sleep). Call
/// [`end_completion_wait`] when done waiting either way.
#[inline]
pub fn begin_completion_wait(words: Words<'_>, seen: u32) -> bool {
    words.cq_flags.store(CQ_WAITING, Ordering::Relaxed);
    fence(Ordering::SeqCst);
    words.cq_tail.load(Ordering::Acquire) == seen
}

#[inline]
pub fn end_completion_wait(words: Words<'_>) {
    words.cq_flags.store(0, Ordering::Relaxed);
}

// Daemon side: consumer of submissions, producer of completions.

/// The SQ tail the client published.
#[inline]
pub fn submissions_ready(words: Words<'_>) -> u32 {
    words.sq_tail.load(Ordering::Acquire)
}

/// How far the client has read completions (for free CQ space).
#[inline]
pub fn completions_consumed(words: Words<'_>) -> u32 {
    words.cq_head.load(Ordering::Acquire)
}

/// Publishes the daemon's SQ head and CQ tail (completions already written).
/// Returns whether the client sleeps and must be woken on the CQ tail futex.
#[inline]
pub fn publish_completions(words: Words<'_>, sq_head: u32, cq_tail: u32) -> bool {
    words.sq_head.store(sq_head, Ordering::Release);
    words.cq_tail.store(cq_tail, Ordering::Release);
    fence(Ordering::SeqCst);
    words.cq_flags.load(Ordering::Relaxed) & CQ_WAITING != 0
}

/// Announces that the worker will sleep; returns false when the client has
/// published past `sq_head` meanwhile (don't sleep). Call
/// [`end_submission_wait`] when done waiting either way.
#[inline]
pub fn begin_submission_wait(words: Words<'_>, sq_head: u32) -> bool {
    words.sq_flags.store(SQ_NEED_WAKEUP, Ordering::Relaxed);
    fence(Ordering::SeqCst);
    words.sq_tail.load(Ordering::Acquire) == sq_head
}

#[inline]
pub fn end_submission_wait(words: Words<'_>) {
    words.sq_flags.store(0, Ordering::Relaxed);
}
