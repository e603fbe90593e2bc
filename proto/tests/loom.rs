//! A loom model of one SQ/CQ pair: a ring of 2 entries, 3 requests, the real
//! ordering functions of `hreg_proto::handoff`, and wait/wake behind a trait
//! (a futex for the client, an eventfd-like doorbell for the daemon). loom
//! explores the interleavings and fails on a lost or doubled message, or on a
//! sleeper that is never woken (a deadlock).
//!
//! Run: `RUSTFLAGS="--cfg hreg_loom" cargo test -p hreg-proto --release
//! --test loom --target-dir target-loom`

#![cfg(hreg_loom)]

use hreg_proto::handoff::{self, Words};
use loom::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use loom::sync::{Arc, Condvar, Mutex};

const ENTRIES: u32 = 2;
const MESSAGES: u64 = 3;

/// How a side sleeps until the other side wakes it.
trait Sleeper {
    /// Sleeps unless `word` no longer holds `expected` (checked atomically
    /// with going to sleep, as a futex does); spurious returns are allowed.
    fn wait(&self, word: &AtomicU32, expected: u32);
    fn wake(&self);
}

/// FUTEX_WAIT / FUTEX_WAKE: the value check and the sleep are atomic with
/// respect to wake.
#[derive(Default)]
struct Futex {
    generation: Mutex<u64>,
    changed: Condvar,
}

impl Sleeper for Futex {
    fn wait(&self, word: &AtomicU32, expected: u32) {
        let mut generation = self.generation.lock().unwrap();
        if word.load(Ordering::SeqCst) != expected {
            return;
        }
        let start = *generation;
        while *generation == start {
            generation = self.changed.wait(generation).unwrap();
        }
    }
    fn wake(&self) {
        *self.generation.lock().unwrap() += 1;
        self.changed.notify_all();
    }
}

/// An eventfd: wake adds to a counter, wait blocks until it is non-zero and
/// resets it. The word is not consulted (the daemon re-checks after).
#[derive(Default)]
struct Doorbell {
    count: Mutex<u64>,
    rung: Condvar,
}

impl Sleeper for Doorbell {
    fn wait(&self, _word: &AtomicU32, _expected: u32) {
        let mut count = self.count.lock().unwrap();
        while *count == 0 {
            count = self.rung.wait(count).unwrap();
        }
        *count = 0;
    }
    fn wake(&self) {
        *self.count.lock().unwrap() += 1;
        self.rung.notify_all();
    }
}

/// Each entry is one word: its stamp above, the message below, published
/// with release and polled with acquire, as `hreg_proto::ring` does with an
/// entry's second word.
#[derive(Default)]
struct Ring {
    sq_head: AtomicU32,
    sq_tail: AtomicU32,
    cq_head: AtomicU32,
    cq_tail: AtomicU32,
    sq_flags: AtomicU32,
    cq_flags: AtomicU32,
    sq: [AtomicU64; ENTRIES as usize],
    cq: [AtomicU64; ENTRIES as usize],
    futex: Futex,
    doorbell: Doorbell,
}

impl Ring {
    fn words(&self) -> Words<'_> {
        Words {
            sq_head: &self.sq_head,
            sq_tail: &self.sq_tail,
            cq_head: &self.cq_head,
            cq_tail: &self.cq_tail,
            sq_flags: &self.sq_flags,
            cq_flags: &self.cq_flags,
        }
    }
}

fn slot(counter: u32) -> usize {
    (counter % ENTRIES) as usize
}

fn publish(entry: &AtomicU64, counter: u32, message: u64) {
    let stamp = u64::from(handoff::stamp(counter, ENTRIES));
    entry.store((stamp << 48) | message, Ordering::Release);
}

/// The message at `counter` if its entry is published.
fn published(entry: &AtomicU64, counter: u32) -> Option<u64> {
    let word = entry.load(Ordering::Acquire);
    ((word >> 48) as u16 == handoff::stamp(counter, ENTRIES)).then_some(word & ((1 << 48) - 1))
}

/// The client: submits at most ENTRIES at a time, then waits for all of
/// their completions. Returns what it received, in order.
fn client(ring: &Ring) -> Vec<u64> {
    let words = ring.words();
    let (mut tail, mut head) = (0u32, 0u32);
    let mut received = Vec::new();
    let mut next = 1;
    while next <= MESSAGES {
        let batch_end = (next + u64::from(ENTRIES) - 1).min(MESSAGES);
        for message in next..=batch_end {
            publish(&ring.sq[slot(tail)], tail, message);
            tail = tail.wrapping_add(1);
        }
        next = batch_end + 1;
        if handoff::after_submissions(words, tail) {
            ring.doorbell.wake();
        }
        while head != tail {
            if let Some(message) = published(&ring.cq[slot(head)], head) {
                received.push(message);
                head = head.wrapping_add(1);
                handoff::release_completions(words, head);
                continue;
            }
            let seen = handoff::completion_tail(words);
            let next = head;
            if handoff::begin_completion_wait(words, || {
                published(&ring.cq[slot(next)], next).is_none()
            }) {
                ring.futex.wait(&ring.cq_tail, seen);
            }
            handoff::end_completion_wait(words);
        }
    }
    received
}

/// The daemon's worker: serves until it has answered every message.
fn worker(ring: &Ring) {
    let words = ring.words();
    let (mut sq_head, mut cq_tail) = (0u32, 0u32);
    let mut served = 0;
    while served < MESSAGES {
        let room = ENTRIES - cq_tail.wrapping_sub(handoff::completions_consumed(words));
        let mut batch = 0;
        while batch < room {
            let Some(message) = published(&ring.sq[slot(sq_head)], sq_head) else {
                break;
            };
            publish(&ring.cq[slot(cq_tail)], cq_tail, message * 10);
            sq_head = sq_head.wrapping_add(1);
            cq_tail = cq_tail.wrapping_add(1);
            served += 1;
            batch += 1;
        }
        if batch > 0 {
            if handoff::publish_completions(words, sq_head, cq_tail) {
                ring.futex.wake();
            }
            continue;
        }
        let next = sq_head;
        if handoff::begin_submission_wait(words, || published(&ring.sq[slot(next)], next).is_none())
        {
            ring.doorbell.wait(&ring.cq_tail, 0);
        }
        handoff::end_submission_wait(words);
    }
}

#[test]
fn no_message_is_lost_doubled_or_left_sleeping() {
    let mut builder = loom::model::Builder::new();
    builder.preemption_bound = Some(3);
    builder.check(|| {
        let ring = Arc::new(Ring::default());
        let daemon_ring = Arc::clone(&ring);
        let daemon = loom::thread::spawn(move || worker(&daemon_ring));
        let received = client(&ring);
        daemon.join().unwrap();
        assert_eq!(received, (1..=MESSAGES).map(|m| m * 10).collect::<Vec<_>>());
    });
}
