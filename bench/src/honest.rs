//! The honest client of `--attacks` (a worker process, [`crate::worker`]):
//! for a set time it attaches, runs a few hundred to two thousand round
//! trips on its own objects, releases them and detaches, over and over.
//! Round trips are single inserts, gets, replaces and releases, and small
//! batches (2–8 inserts, gets and replaces); values are checksummed
//! ([`hreg_tests::checked_value`], 8 B to 2 KiB) and every read is checked
//! against what was last written. It times every attach (connect + HELLO),
//! single op and batch, and prints one JSON line ([`Outcome`]) at the end.

use crate::soak_worker::wrong_value;
use crate::stats::{Latency, Rng};
use hreg::{Client, Completion, Handle, Op};
use hreg_tests::checked_value;
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// What the honest client is to do.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Plan {
    pub socket: PathBuf,
    pub seconds: f64,
    pub seed: u64,
}

/// What it saw.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Outcome {
    pub seconds: f64,
    /// Operations (each of a batch counts).
    pub ops: u64,
    pub ops_per_sec: f64,
    /// Sessions it attached.
    pub sessions: u64,
    /// Single operations, each one round trip.
    pub single: Latency,
    /// Batches of 2–8 operations, each one round trip.
    pub batch: Latency,
    /// Connect + HELLO + WELCOME (the session memory mapped).
    pub attach: Latency,
    pub wrong_values: u64,
    pub errors: u64,
    /// The first wrong values and errors, in words.
    pub incidents: Vec<String>,
}

/// Incidents described in words; the rest are only counted.
const MAX_INCIDENTS: usize = 20;
/// Objects a session keeps at most before it releases some.
const MAX_LIVE: usize = 64;
/// Latency samples kept per series.
const MAX_SAMPLES: usize = 1 << 22;

/// Runs the plan and prints the outcome.
pub fn run(plan: &Plan) -> anyhow::Result<()> {
    let outcome = Honest::new(plan.seed).drive(plan);
    let line = serde_json::to_string(&outcome)?;
    writeln!(std::io::stdout().lock(), "{line}")?;
    Ok(())
}

/// An object of the current session and what it must hold.
#[derive(Clone, Copy)]
struct Object {
    handle: Handle,
    seed: u64,
    len: usize,
}

/// One operation of a batch, planned before the batch is built.
#[derive(Clone, Copy)]
enum Planned {
    Insert { seed: u64, len: usize },
    Get { at: usize, seed: u64, len: usize },
    Replace { at: usize, seed: u64, len: usize },
}

struct Honest {
    rng: Rng,
    /// Seeds step by 2: `checked_value` ignores the lowest bit.
    next_seed: u64,
    single: Vec<u64>,
    batch: Vec<u64>,
    attach: Vec<u64>,
    out: Outcome,
}

fn record(samples: &mut Vec<u64>, took: Duration) {
    if samples.len() < MAX_SAMPLES {
        samples.push(took.as_nanos() as u64);
    }
}

impl Honest {
    fn new(seed: u64) -> Honest {
        Honest {
            rng: Rng::new(seed),
            next_seed: seed << 20,
            single: Vec::new(),
            batch: Vec::new(),
            attach: Vec::new(),
            out: Outcome::default(),
        }
    }

    fn drive(mut self, plan: &Plan) -> Outcome {
        let start = Instant::now();
        let end = start + Duration::from_secs_f64(plan.seconds);
        while Instant::now() < end {
            let began = Instant::now();
            match Client::connect_named(Some(&plan.socket), "hreg-honest") {
                Ok(client) => {
                    record(&mut self.attach, began.elapsed());
                    self.out.sessions += 1;
                    self.session(&client, end);
                }
                Err(e) => {
                    self.incident(false, format!("attach: {e}"));
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
        }
        let seconds = start.elapsed().as_secs_f64();
        let mut out = self.out;
        out.seconds = seconds;
        out.ops_per_sec = out.ops as f64 / seconds.max(1e-9);
        out.single = Latency::of(&mut self.single);
        out.batch = Latency::of(&mut self.batch);
        out.attach = Latency::of(&mut self.attach);
        out
    }

    fn incident(&mut self, wrong: bool, detail: String) {
        if wrong {
            self.out.wrong_values += 1;
        } else {
            self.out.errors += 1;
        }
        if self.out.incidents.len() < MAX_INCIDENTS {
            self.out.incidents.push(detail);
        }
    }

    fn value(&mut self) -> (u64, usize) {
        let seed = self.next_seed;
        self.next_seed += 2;
        (seed, 8 + self.rng.below(2041))
    }

    /// One session's round trips, then its objects released.
    fn session(&mut self, client: &Client, end: Instant) {
        let mut live: Vec<Object> = Vec::new();
        let round_trips = 200 + self.rng.below(1800);
        for _ in 0..round_trips {
            if Instant::now() >= end {
                break;
            }
            let roll = self.rng.below(100);
            if live.is_empty() || (roll < 20 && live.len() < MAX_LIVE) {
                self.insert(client, &mut live);
            } else if roll < 50 {
                let at = self.rng.below(live.len());
                self.get(client, live[at]);
            } else if roll < 65 {
                let at = self.rng.below(live.len());
                self.replace(client, &mut live[at]);
            } else if roll < 75 || live.len() >= MAX_LIVE {
                let at = self.rng.below(live.len());
                self.release(client, live.swap_remove(at));
            } else {
                self.batch(client, &mut live);
            }
        }
        for object in live {
            self.release(client, object);
        }
    }

    fn insert(&mut self, client: &Client, live: &mut Vec<Object>) {
        let (seed, len) = self.value();
        let value = checked_value(seed, len);
        let began = Instant::now();
        let result = client.insert(&value, 0);
        record(&mut self.single, began.elapsed());
        self.out.ops += 1;
        match result {
            Ok(handle) => live.push(Object { handle, seed, len }),
            Err(e) => self.incident(false, format!("insert: {e}")),
        }
    }

    fn get(&mut self, client: &Client, object: Object) {
        let began = Instant::now();
        let result = client.get(object.handle);
        record(&mut self.single, began.elapsed());
        self.out.ops += 1;
        match result {
            Ok(value) => self.check(object.handle, &value, object.seed, object.len),
            Err(e) => self.incident(false, format!("get {}: {e}", object.handle)),
        }
    }

    fn check(&mut self, handle: Handle, value: &[u8], seed: u64, len: usize) {
        if let Some(detail) = wrong_value(handle, value, seed, len) {
            self.incident(true, detail);
        }
    }

    fn replace(&mut self, client: &Client, object: &mut Object) {
        let (seed, len) = self.value();
        let value = checked_value(seed, len);
        let began = Instant::now();
        let result = client.replace(object.handle, &value);
        record(&mut self.single, began.elapsed());
        self.out.ops += 1;
        match result {
            Ok(()) => (object.seed, object.len) = (seed, len),
            Err(e) => self.incident(false, format!("replace {}: {e}", object.handle)),
        }
    }

    fn release(&mut self, client: &Client, object: Object) {
        let began = Instant::now();
        let result = client.release(object.handle);
        record(&mut self.single, began.elapsed());
        self.out.ops += 1;
        if let Err(e) = result {
            self.incident(false, format!("release {}: {e}", object.handle));
        }
    }

    /// 2–8 inserts, gets and replaces in one round trip; gets expect what
    /// the replaces before them in the batch wrote.
    fn batch(&mut self, client: &Client, live: &mut Vec<Object>) {
        let mut expected: Vec<(u64, usize)> = live.iter().map(|o| (o.seed, o.len)).collect();
        let planned: Vec<Planned> = (0..2 + self.rng.below(7))
            .map(|_| {
                let roll = self.rng.below(100);
                if expected.is_empty() || roll < 30 {
                    let (seed, len) = self.value();
                    Planned::Insert { seed, len }
                } else if roll < 70 {
                    let at = self.rng.below(expected.len());
                    let (seed, len) = expected[at];
                    Planned::Get { at, seed, len }
                } else {
                    let at = self.rng.below(expected.len());
                    let (seed, len) = self.value();
                    expected[at] = (seed, len);
                    Planned::Replace { at, seed, len }
                }
            })
            .collect();
        let values: Vec<Vec<u8>> = planned
            .iter()
            .map(|p| match *p {
                Planned::Insert { seed, len } | Planned::Replace { seed, len, .. } => {
                    checked_value(seed, len)
                }
                Planned::Get { .. } => Vec::new(),
            })
            .collect();
        let mut ops: Vec<Op<'_>> = planned
            .iter()
            .zip(&values)
            .map(|(p, value)| match *p {
                Planned::Insert { .. } => Op::Insert { value, flags: 0 },
                Planned::Get { at, .. } => Op::GetOwned {
                    handle: live[at].handle,
                },
                Planned::Replace { at, .. } => Op::Replace {
                    handle: live[at].handle,
                    value,
                },
            })
            .collect();
        let began = Instant::now();
        let results = client.submit(&mut ops);
        record(&mut self.batch, began.elapsed());
        self.out.ops += planned.len() as u64;
        let results = match results {
            Ok(results) => results,
            Err(e) => return self.incident(false, format!("batch: {e}")),
        };
        for (p, result) in planned.iter().zip(results) {
            match (*p, result) {
                (Planned::Insert { seed, len }, Ok(Completion::Inserted(handle))) => {
                    live.push(Object { handle, seed, len });
                }
                (Planned::Get { at, seed, len }, Ok(Completion::Value(value))) => {
                    self.check(live[at].handle, &value, seed, len);
                }
                (Planned::Replace { at, seed, len }, Ok(Completion::Done)) => {
                    (live[at].seed, live[at].len) = (seed, len);
                }
                (_, Ok(other)) => self.incident(false, format!("batch: unexpected {other:?}")),
                (_, Err(e)) => self.incident(false, format!("batch op: {e}")),
            }
        }
    }
}
