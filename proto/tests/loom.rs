//! A loom model of one ring: 2 entries, 3 requests, the real client and
//! server sides of `hreg_proto::ring` (stamp publication, the client's wait
//! loop, the server's serve step and its parking of the ring, the session's
//! ready word that names a parked ring to its worker, the `handoff` ordering
//! functions) over a mapping of loom atomics, with the sleeping behind
//! loom's primitives (a futex for the client, an eventfd-like doorbell for
//! the daemon). loom explores the interleavings and fails on a lost,
//! doubled or torn message, or on a sleeper that is never woken (a
//! deadlock).
//!
//! Run: `RUSTFLAGS="--cfg hreg_loom" cargo test -p hreg-proto --release
//! --test loom --target-dir target-loom`

#![cfg(hreg_loom)]

use hreg_proto::entry::ENTRY_SIZE;
use hreg_proto::ring::{ready_bit, Answer, ClientCounters, Layout, Park, ServerCounters, Wake};
use hreg_proto::shm::{Mapping, ReadWrite};
use loom::sync::atomic::{AtomicU32, Ordering};
use loom::sync::{Arc, Condvar, Mutex};
use std::convert::Infallible;

const LAYOUT: Layout = Layout {
    entries: 2,
    data_size: 64,
    max_rings: 1,
};
const MESSAGES: u64 = 3;

/// FUTEX_WAIT / FUTEX_WAKE: the value check and the sleep are atomic with
/// respect to wake.
#[derive(Default)]
struct Futex {
    generation: Mutex<u64>,
    changed: Condvar,
}

impl Futex {
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
}

impl Wake for Futex {
    fn wake(&self, _word: &AtomicU32) {
        *self.generation.lock().unwrap() += 1;
        self.changed.notify_all();
    }
}

/// The client's policy: no spinning (go to sleep at once), sleep on the
/// futex.
struct Sleep<'a>(&'a Futex);

impl Park for Sleep<'_> {
    type Error = Infallible;
    fn spin(&mut self) -> bool {
        true
    }
    fn sleep(&mut self, word: &AtomicU32, seen: u32) -> Result<(), Infallible> {
        self.0.wait(word, seen);
        Ok(())
    }
}

/// An eventfd: ring adds to a counter, wait blocks until it is non-zero and
/// resets it.
#[derive(Default)]
struct Doorbell {
    count: Mutex<u64>,
    rung: Condvar,
}

impl Doorbell {
    fn wait(&self) {
        let mut count = self.count.lock().unwrap();
        while *count == 0 {
            count = self.rung.wait(count).unwrap();
        }
        *count = 0;
    }
    fn ring(&self) {
        *self.count.lock().unwrap() += 1;
        self.rung.notify_all();
    }
}

struct Shared {
    map: Mapping<ReadWrite>,
    futex: Futex,
    doorbell: Doorbell,
}

/// An entry carrying `message` in its first word and its complement in
/// the last, so a torn read shows.
fn entry(message: u64) -> [u8; ENTRY_SIZE] {
    let mut bytes = [0u8; ENTRY_SIZE];
    bytes[..8].copy_from_slice(&message.to_le_bytes());
    bytes[56..].copy_from_slice(&(!message).to_le_bytes());
    bytes
}

fn message(bytes: &[u8; ENTRY_SIZE]) -> u64 {
    let message = u64::from_le_bytes(bytes[..8].try_into().unwrap());
    let check = u64::from_le_bytes(bytes[56..].try_into().unwrap());
    assert_eq!(check, !message, "a torn entry");
    message
}

/// Where the model keeps the ready word: right after the ring.
fn ready_at() -> usize {
    LAYOUT.ring_stride()
}

fn ready(shared: &Shared) -> hreg_proto::ring::ReadyWord<'_> {
    shared.map.client_ready(ready_at()).unwrap()
}

fn server_ready(shared: &Shared) -> hreg_proto::ring::ReadyMask<'_> {
    shared.map.server_ready(ready_at()).unwrap()
}

/// The client: submits at most `entries` at a time, then waits for each
/// completion. Returns what it received, in order.
fn client(shared: &Shared) -> Vec<u64> {
    let ring = shared.map.client_ring(LAYOUT, 0).unwrap();
    let mut counters = ClientCounters::default();
    let mut park = Sleep(&shared.futex);
    let mut received = Vec::new();
    let mut next = 1;
    while next <= MESSAGES {
        let last = (next + u64::from(LAYOUT.entries) - 1).min(MESSAGES);
        for m in next..=last {
            ring.push(&mut counters, &entry(m));
        }
        // Parked: name the ring in the ready word, then ring, unless a
        // wake named it already and the worker has not taken it (the
        // shipped client's rule).
        if ring.flush(&counters) && ready(shared).mark(0) {
            shared.doorbell.ring();
        }
        for _ in next..=last {
            let Ok(()) = ring.wait(&counters, &mut park);
            received.push(message(&ring.pop(&mut counters).unwrap()));
        }
        ring.release(&counters);
        next = last + 1;
    }
    received
}

/// The daemon's worker: serves until it has answered every message,
/// sleeping on the doorbell when there is nothing to do.
fn worker(shared: &Shared) {
    let ring = shared.map.server_ring(LAYOUT, 0).unwrap();
    let mut counters = ServerCounters::default();
    let mut served = 0;
    while served < MESSAGES {
        let n = ring
            .serve(&mut counters, &shared.futex, u32::MAX, |request, behind| {
                // The one behind, when read ahead, is answered with an
                // odd one, or served on its own next (from the copy read
                // ahead): both paths are checked.
                match behind {
                    Some(behind) if message(request) % 2 == 1 => {
                        let second = entry(message(behind.request()) * 10);
                        Answer::Both(entry(message(request) * 10), behind.answer(second))
                    }
                    _ => Answer::One(entry(message(request) * 10)),
                }
            })
            .unwrap();
        served += u64::from(n);
        if n > 0 {
            continue;
        }
        // Park the ring; it is served again only once a wake names it in
        // the ready word (a wake that names nothing keeps it parked).
        if ring.prepare_sleep(&counters) {
            loop {
                shared.doorbell.wait();
                // A named ring is activated only if a new entry is there
                // (a bit left from an entry served already names nothing):
                // the mark's release and the take's acquire make sure a
                // new one is seen, or the worker would sleep for good.
                if server_ready(shared).take() & ready_bit(0) != 0 && ring.has_work(&counters) {
                    break;
                }
            }
        }
        ring.end_sleep();
    }
}

#[test]
fn no_message_is_lost_doubled_torn_or_left_sleeping() {
    let mut builder = loom::model::Builder::new();
    builder.preemption_bound = Some(3);
    builder.check(|| {
        let shared = Arc::new(Shared {
            map: Mapping::for_ring(LAYOUT),
            futex: Futex::default(),
            doorbell: Doorbell::default(),
        });
        let daemon = {
            let shared = Arc::clone(&shared);
            loom::thread::spawn(move || worker(&shared))
        };
        let received = client(&shared);
        daemon.join().unwrap();
        assert_eq!(received, (1..=MESSAGES).map(|m| m * 10).collect::<Vec<_>>());
    });
}
