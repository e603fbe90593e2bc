//! One client process of the soak (`hreg-bench --worker '{"soak":PLAN}'`, started
//! by [`crate::soak`]): it attaches, checks the objects earlier clients left
//! it, then runs mixed operations on its own objects from one or two
//! threads until its lifetime is up (unless it is SIGKILLed first), and
//! detaches.
//!
//! Every value is checksummed ([`hreg_tests::checked_value`]) and every
//! object's expected value is known, so a read that returns anything else is
//! a wrong value; every outcome is predictable, so any other error is
//! unexpected. What it finds goes to stdout as JSON lines ([`Report`]):
//! cumulative tallies every 100 ms (so a kill loses at most that much), the
//! first incidents in words, and its DETACHED objects as they come and go
//! (those a kill leaves behind are passed on to later clients).

use crate::stats::Rng;
use hreg::{Client, Completion, Error, Handle, Op};
use hreg_tests::{checked_value, value_is_intact};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// What one client is to do, passed as JSON on its command line.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Plan {
    pub socket: PathBuf,
    pub seed: u64,
    pub lifetime_ms: u64,
    pub threads: usize,
    /// DETACHED objects earlier clients left: check each, then remove it or
    /// pass it on.
    pub inherited: Vec<Kept>,
}

/// A DETACHED object passed from client to client, untouched in between.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Kept {
    pub handle: u64,
    /// Its value is `checked_value(seed, len)`.
    pub seed: u64,
    pub len: usize,
}

/// One line of a client's stdout. Its DETACHED objects are announced as
/// they come and go, so that those of a killed client can be passed on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Report {
    /// Counts so far (cumulative).
    Tally { ops: u64, wrong: u64, errors: u64 },
    /// A DETACHED object it made (it never replaces those).
    Detached(Kept),
    /// A DETACHED object (its own or inherited) it is about to remove.
    Removing { handle: u64 },
    /// A DETACHED object passed on to later clients: it will not touch it
    /// again.
    Kept(Kept),
    /// A wrong value or an unexpected error, in words.
    Incident { wrong: bool, detail: String },
    /// Detached cleanly after its lifetime.
    Done,
}

/// Incidents described in words per process; the rest are only counted.
const MAX_INCIDENTS: u64 = 20;
/// Objects one thread keeps at most before it removes some.
const MAX_OWN: usize = 128;
/// DETACHED objects one thread leaves for later clients.
const LEAVE: usize = 2;

/// Counters shared by the client's threads.
#[derive(Default)]
struct Tally {
    ops: AtomicU64,
    wrong: AtomicU64,
    errors: AtomicU64,
}

impl Tally {
    fn report(&self) -> Report {
        Report::Tally {
            ops: self.ops.load(Ordering::Relaxed),
            wrong: self.wrong.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
        }
    }

    fn incident(&self, wrong: bool, detail: String) {
        let counter = if wrong { &self.wrong } else { &self.errors };
        let n = counter.fetch_add(1, Ordering::Relaxed) + 1;
        if n <= MAX_INCIDENTS {
            emit(&Report::Incident { wrong, detail });
        }
    }

    fn ops(&self, n: u64) {
        self.ops.fetch_add(n, Ordering::Relaxed);
    }
}

/// Writes one report line (stdout is line-buffered; a line is whole).
fn emit(report: &Report) {
    let line = serde_json::to_string(report).expect("reports serialize");
    let _ = writeln!(std::io::stdout().lock(), "{line}");
}

/// Runs the client; `Ok` also when it found wrong values (they are
/// reported, not fatal), `Err` when it could not attach.
pub fn run(plan: &Plan) -> anyhow::Result<()> {
    let tally = Tally::default();
    let client = match Client::connect_named(Some(&plan.socket), "hreg-soak") {
        Ok(client) => client,
        Err(e) => {
            tally.incident(false, format!("attach: {e}"));
            emit(&tally.report());
            return Err(e.into());
        }
    };
    let deadline = Instant::now() + Duration::from_millis(plan.lifetime_ms);
    let mut rng = Rng::new(plan.seed);
    for kept in &plan.inherited {
        if check_inherited(&client, kept, &tally) && rng.below(2) == 0 {
            emit(&Report::Kept(*kept));
        } else if let Some(handle) = Handle::new(kept.handle) {
            remove_detached(&client, handle, &tally);
        }
    }
    let finished = AtomicBool::new(false);
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..plan.threads.max(1))
            .map(|t| {
                let seed = plan.seed.wrapping_mul(31).wrapping_add(t as u64 + 1);
                let (client, tally) = (&client, &tally);
                scope.spawn(move || Thread::new(client, tally, seed).run(deadline))
            })
            .collect();
        scope.spawn(|| {
            while !finished.load(Ordering::Relaxed) {
                emit(&tally.report());
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        for worker in workers {
            worker.join().expect("soak thread panicked");
        }
        finished.store(true, Ordering::Relaxed);
    });
    emit(&tally.report());
    drop(client);
    emit(&Report::Done);
    Ok(())
}

/// Reads an inherited object; whether it is whole and what it should be.
fn check_inherited(client: &Client, kept: &Kept, tally: &Tally) -> bool {
    let Some(handle) = Handle::new(kept.handle) else {
        tally.incident(false, "inherited handle 0".into());
        return false;
    };
    tally.ops(1);
    match client.get(handle) {
        Ok(value) => check_value(handle, &value, kept.seed, kept.len, tally),
        Err(e) => {
            tally.incident(false, format!("get inherited {handle}: {e}"));
            false
        }
    }
}

/// Whether `value` is what `handle` should hold; a wrong value is counted
/// and described (torn or foreign: another object's intact value).
fn check_value(handle: Handle, value: &[u8], seed: u64, len: usize, tally: &Tally) -> bool {
    match wrong_value(handle, value, seed, len) {
        None => true,
        Some(detail) => {
            tally.incident(true, detail);
            false
        }
    }
}

/// `None` if `value` is `checked_value(seed, len)`, else what is wrong with
/// it in words (torn, or another object's intact value).
pub fn wrong_value(handle: Handle, value: &[u8], seed: u64, len: usize) -> Option<String> {
    if value.len() == len && value == checked_value(seed, len) {
        return None;
    }
    let what = if value.len() >= 8 && value_is_intact(value) {
        "another object's value"
    } else {
        "a torn or corrupt value"
    };
    Some(format!(
        "{handle}: {what}: {} bytes, expected {len} bytes of seed {seed}",
        value.len()
    ))
}

/// Removes a DETACHED object, announced first: a kill in between leaves an
/// orphan for the final sweep, never a handle passed on to a dead object.
fn remove_detached(client: &Client, handle: Handle, tally: &Tally) {
    emit(&Report::Removing {
        handle: handle.get(),
    });
    expect_done(client.remove(handle), tally, || format!("remove {handle}"));
}

/// Counts an operation that must succeed; describes it when it did not.
fn expect_done<T>(result: hreg::Result<T>, tally: &Tally, what: impl FnOnce() -> String) {
    tally.ops(1);
    if let Err(e) = result {
        tally.incident(false, format!("{}: {e}", what()));
    }
}

/// An object a thread made, and what it expects of it.
#[derive(Clone, Copy, Debug)]
struct Own {
    seed: u64,
    len: usize,
    /// DETACHED: the session holds no reference; else it holds one.
    detached: bool,
}

/// One client thread: its objects and its generator.
struct Thread<'a> {
    client: &'a Client,
    tally: &'a Tally,
    rng: Rng,
    own: HashMap<Handle, Own>,
    handles: Vec<Handle>,
    next_seed: u64,
}

impl<'a> Thread<'a> {
    fn new(client: &'a Client, tally: &'a Tally, seed: u64) -> Thread<'a> {
        Thread {
            client,
            tally,
            rng: Rng::new(seed),
            own: HashMap::new(),
            handles: Vec::new(),
            next_seed: seed << 20,
        }
    }

    fn run(mut self, deadline: Instant) {
        while Instant::now() < deadline {
            self.step();
        }
        self.leave();
    }

    /// A value length from 0 B to 64 KiB: inline, small, and large enough
    /// to be staged through a small data area.
    fn value_len(&mut self) -> usize {
        match self.rng.below(10) {
            0..=3 => self.rng.below(33),
            4..=7 => 33 + self.rng.below(4064),
            _ => 4097 + self.rng.below(65536 - 4096),
        }
    }

    /// A fresh seed and length for a new value. Seeds step by 2:
    /// `checked_value` ignores a seed's lowest bit.
    fn new_value(&mut self) -> (u64, usize) {
        self.next_seed += 2;
        (self.next_seed, self.value_len())
    }

    fn flags(&mut self) -> u32 {
        let mut flags = 0;
        if self.rng.below(10) < 3 {
            flags |= hreg::SHARED;
        }
        if self.rng.below(10) < 2 {
            flags |= hreg::DETACHED;
        }
        flags
    }

    fn pick(&mut self) -> Option<Handle> {
        (!self.handles.is_empty()).then(|| self.handles[self.rng.below(self.handles.len())])
    }

    fn forget(&mut self, handle: Handle) {
        self.own.remove(&handle);
        self.handles.retain(|&h| h != handle);
    }

    fn step(&mut self) {
        let roll = if self.own.len() >= MAX_OWN {
            70
        } else {
            self.rng.below(100)
        };
        let Some(handle) = self.pick().filter(|_| roll >= 20) else {
            return self.insert();
        };
        match roll {
            20..=49 => self.get(handle),
            50..=59 => self.replace(handle),
            60..=64 => self.retain_release(handle),
            65..=69 => self.release_last(handle),
            70..=74 => self.remove(handle),
            _ => self.batch(),
        }
    }

    fn insert(&mut self) {
        let (seed, len) = self.new_value();
        let flags = self.flags();
        self.tally.ops(1);
        match self.client.insert(&checked_value(seed, len), flags) {
            Ok(handle) => self.adopt(handle, seed, len, flags),
            Err(e) => self.tally.incident(false, format!("insert {len} B: {e}")),
        }
    }

    fn adopt(&mut self, handle: Handle, seed: u64, len: usize, flags: u32) {
        let own = Own {
            seed,
            len,
            detached: flags & hreg::DETACHED != 0,
        };
        if self.own.insert(handle, own).is_some() {
            self.tally
                .incident(true, format!("{handle} handed out while still live"));
            return;
        }
        self.handles.push(handle);
        if own.detached {
            emit(&Report::Detached(Kept {
                handle: handle.get(),
                seed,
                len,
            }));
        }
    }

    /// Reads `handle` whole, or now and then into a buffer of a random size
    /// (too small must say how much is needed).
    fn get(&mut self, handle: Handle) {
        let own = self.own[&handle];
        self.tally.ops(1);
        if self.rng.below(10) == 0 {
            let mut buf = vec![0u8; self.rng.below(own.len + 2)];
            match self.client.get_into(handle, &mut buf) {
                Ok(n) => {
                    self.check(handle, &buf[..n.min(buf.len())], own);
                }
                Err(Error::Buffer { needed }) if buf.len() < own.len && needed == own.len => {}
                Err(e) => self.tally.incident(
                    false,
                    format!(
                        "get {handle} into {} B ({} B value): {e}",
                        buf.len(),
                        own.len
                    ),
                ),
            }
            return;
        }
        match self.client.get(handle) {
            Ok(value) => self.check(handle, &value, own),
            Err(e) => self.tally.incident(false, format!("get {handle}: {e}")),
        }
    }

    fn check(&self, handle: Handle, value: &[u8], own: Own) {
        check_value(handle, value, own.seed, own.len, self.tally);
    }

    /// Replaces an attached object's value (a DETACHED one is read instead:
    /// its value stays what was announced).
    fn replace(&mut self, handle: Handle) {
        if self.own[&handle].detached {
            return self.get(handle);
        }
        let (seed, len) = self.new_value();
        self.tally.ops(1);
        match self.client.replace(handle, &checked_value(seed, len)) {
            Ok(()) => {
                let own = self.own.get_mut(&handle).expect("own handle");
                own.seed = seed;
                own.len = len;
            }
            Err(e) => self.tally.incident(false, format!("replace {handle}: {e}")),
        }
    }

    /// One more reference and back, as a batch of two or one at a time.
    fn retain_release(&mut self, handle: Handle) {
        if self.rng.below(2) == 0 {
            let mut ops = [Op::Retain(handle), Op::Release(handle)];
            self.tally.ops(2);
            match self.client.submit(&mut ops) {
                Ok(results) => {
                    for result in results {
                        if let Err(e) = result {
                            self.tally
                                .incident(false, format!("retain/release {handle}: {e}"));
                        }
                    }
                }
                Err(e) => self.tally.incident(false, format!("submit: {e}")),
            }
        } else {
            expect_done(self.client.retain(handle), self.tally, || {
                format!("retain {handle}")
            });
            expect_done(self.client.release(handle), self.tally, || {
                format!("release {handle}")
            });
        }
    }

    /// Drops the session's last reference to an attached object, which must
    /// then be gone; a DETACHED one holds none to drop (NOT_HELD).
    fn release_last(&mut self, handle: Handle) {
        let own = self.own[&handle];
        self.tally.ops(1);
        match (self.client.release(handle), own.detached) {
            (Ok(()), false) => {
                self.forget(handle);
                self.expect_stale(handle, "released");
            }
            (Err(Error::NotHeld), true) => {}
            (result, _) => self.tally.incident(
                false,
                format!("release {handle} (detached: {}): {result:?}", own.detached),
            ),
        }
    }

    fn remove(&mut self, handle: Handle) {
        if self.own[&handle].detached {
            remove_detached(self.client, handle, self.tally);
            self.forget(handle);
            return self.expect_stale(handle, "removed");
        }
        self.tally.ops(1);
        match self.client.remove(handle) {
            Ok(()) => {
                self.forget(handle);
                self.expect_stale(handle, "removed");
            }
            Err(e) => self.tally.incident(false, format!("remove {handle}: {e}")),
        }
    }

    /// After the last reference went or a remove, the object must be gone.
    fn expect_stale(&mut self, handle: Handle, how: &str) {
        self.tally.ops(1);
        match self.client.get(handle) {
            Err(Error::Stale) => {}
            Ok(value) => self.tally.incident(
                true,
                format!("{handle} {how} but still readable ({} bytes)", value.len()),
            ),
            Err(e) => self
                .tally
                .incident(false, format!("get {handle} after it was {how}: {e}")),
        }
    }

    /// 2 to 16 operations in one submission: inserts, gets and replaces (of
    /// attached objects), each on a different object.
    fn batch(&mut self) {
        enum Slot {
            Insert {
                seed: u64,
                len: usize,
                flags: u32,
            },
            Get(Handle),
            Replace {
                handle: Handle,
                seed: u64,
                len: usize,
            },
        }
        let n = 2 + self.rng.below(15);
        let mut picked: Vec<Handle> = Vec::new();
        let mut slots = Vec::with_capacity(n);
        for _ in 0..n {
            let handle = self.pick().filter(|h| !picked.contains(h));
            let detached = handle.is_some_and(|h| self.own[&h].detached);
            let slot = match (handle, self.rng.below(3)) {
                (Some(h), 0) => Slot::Get(h),
                (Some(h), 1) if detached => Slot::Get(h),
                (Some(handle), 1) => {
                    let (seed, len) = self.new_value();
                    Slot::Replace { handle, seed, len }
                }
                _ => {
                    let (seed, len) = self.new_value();
                    let flags = self.flags();
                    slots.push(Slot::Insert { seed, len, flags });
                    continue;
                }
            };
            picked.extend(handle);
            slots.push(slot);
        }
        let values: Vec<Vec<u8>> = slots
            .iter()
            .map(|slot| match slot {
                Slot::Insert { seed, len, .. } | Slot::Replace { seed, len, .. } => {
                    checked_value(*seed, *len)
                }
                Slot::Get(_) => Vec::new(),
            })
            .collect();
        let mut ops: Vec<Op<'_>> = slots
            .iter()
            .zip(&values)
            .map(|(slot, value)| match *slot {
                Slot::Insert { flags, .. } => Op::Insert { value, flags },
                Slot::Get(handle) => Op::GetOwned { handle },
                Slot::Replace { handle, .. } => Op::Replace { handle, value },
            })
            .collect();
        self.tally.ops(ops.len() as u64);
        let results = match self.client.submit(&mut ops) {
            Ok(results) => results,
            Err(e) => return self.tally.incident(false, format!("submit {n}: {e}")),
        };
        drop(ops);
        for (slot, result) in slots.into_iter().zip(results) {
            match (slot, result) {
                (Slot::Insert { seed, len, flags }, Ok(Completion::Inserted(h))) => {
                    self.adopt(h, seed, len, flags)
                }
                (Slot::Get(h), Ok(Completion::Value(v))) => self.check(h, &v, self.own[&h]),
                (Slot::Replace { handle, seed, len }, Ok(Completion::Done)) => {
                    let own = self.own.get_mut(&handle).expect("own handle");
                    own.seed = seed;
                    own.len = len;
                }
                (_, result) => self
                    .tally
                    .incident(false, format!("batch of {n}: {result:?}")),
            }
        }
    }

    /// At the end of a clean life: leave a few DETACHED objects for later
    /// clients, remove the other DETACHED ones (attached ones end with the
    /// session).
    fn leave(&mut self) {
        let detached: Vec<(Handle, Own)> = self
            .own
            .iter()
            .filter(|(_, own)| own.detached)
            .map(|(&h, &own)| (h, own))
            .collect();
        for (i, (handle, own)) in detached.into_iter().enumerate() {
            if i < LEAVE {
                emit(&Report::Kept(Kept {
                    handle: handle.get(),
                    seed: own.seed,
                    len: own.len,
                }));
            } else {
                remove_detached(self.client, handle, self.tally);
            }
        }
    }
}
