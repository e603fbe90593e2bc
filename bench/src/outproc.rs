//! Sections 3 and 4: the same operations, value sizes and key distribution
//! through hreg's rings and through Redis over a Unix socket.
//!
//! Both sides first store [`KEYS`] objects of the case's size; every
//! operation then picks one of them uniformly with the same seeded
//! generator. GET reads it, REPLACE (Redis: SET) overwrites it, INSERT
//! creates a new object (removed again outside the timed part, in batches,
//! so the registry does not grow), REMOVE (hreg only) kills an object
//! inserted for it outside the timed part. A timed step is one round trip:
//! one request, or one batch of `batch` requests.

use crate::redis::Redis;
use crate::stats::{value, Recorder, Rep, Rng};
use hreg::{Client, Handle, Op};
use serde::Serialize;
use std::time::{Duration, Instant};

/// Live objects every case picks from.
pub const KEYS: usize = 1000;

/// At most this many latency samples per thread and repetition.
const MAX_SAMPLES: usize = 1 << 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Kind {
    Get,
    Insert,
    Replace,
    Remove,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Get => "get",
            Kind::Insert => "insert",
            Kind::Replace => "replace",
            Kind::Remove => "remove",
        }
    }
}

/// One measured configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Case {
    pub kind: Kind,
    pub size: usize,
    pub threads: usize,
    pub batch: usize,
}

/// How long and how often each case runs.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    pub per_rep: Duration,
    pub reps: usize,
}

/// The hreg cases of section 3, in table order.
pub fn hreg_cases() -> Vec<Case> {
    let mut cases = Vec::new();
    for kind in [Kind::Get, Kind::Insert, Kind::Replace, Kind::Remove] {
        for size in [16, 4096] {
            for threads in [1, 2] {
                for batch in [1, 64] {
                    cases.push(Case {
                        kind,
                        size,
                        threads,
                        batch,
                    });
                }
            }
        }
    }
    cases
}

/// The Redis cases of section 4: one connection, GET and SET (overwriting,
/// like REPLACE), unpipelined and pipelined by 64.
pub fn redis_cases() -> Vec<Case> {
    let mut cases = Vec::new();
    for kind in [Kind::Get, Kind::Replace] {
        for size in [16, 4096] {
            for batch in [1, 64] {
                cases.push(Case {
                    kind,
                    size,
                    threads: 1,
                    batch,
                });
            }
        }
    }
    cases
}

/// Stores the [`KEYS`] objects a case of `size` bytes works on.
pub fn hreg_keys(client: &Client, size: usize) -> hreg::Result<Vec<Handle>> {
    (0..KEYS)
        .map(|i| client.insert(&value(size, i as u64), 0))
        .collect()
}

/// Runs one hreg case for `timing.reps` repetitions.
pub fn hreg_case(
    client: &Client,
    keys: &[Handle],
    case: Case,
    timing: Timing,
) -> anyhow::Result<Vec<Rep>> {
    (0..timing.reps)
        .map(|rep| {
            let recorders = std::thread::scope(|scope| {
                let workers: Vec<_> = (0..case.threads)
                    .map(|t| {
                        let seed = (rep * 16 + t) as u64 + 1;
                        scope.spawn(move || hreg_thread(client, keys, case, timing.per_rep, seed))
                    })
                    .collect();
                workers
                    .into_iter()
                    .map(|w| w.join().expect("bench thread panicked"))
                    .collect::<anyhow::Result<Vec<Recorder>>>()
            })?;
            Ok(Recorder::merge(recorders))
        })
        .collect()
}

fn hreg_thread(
    client: &Client,
    keys: &[Handle],
    case: Case,
    run_for: Duration,
    seed: u64,
) -> anyhow::Result<Recorder> {
    let mut rng = Rng::new(seed);
    let payload = value(case.size, seed);
    let mut bufs = vec![vec![0u8; case.size]; case.batch];
    let mut created: Vec<Handle> = Vec::with_capacity(64 + case.batch);
    // What REMOVE removes, inserted outside the timed steps.
    let mut doomed: Vec<Handle> = Vec::new();
    let mut rec = Recorder::new(MAX_SAMPLES);
    // Warm up: opens this thread's ring.
    client.get_into(keys[0], &mut bufs[0])?;
    let deadline = Instant::now() + run_for;
    while Instant::now() < deadline {
        let batch = case.batch as u64;
        if case.kind == Kind::Remove && doomed.len() < case.batch {
            insert_batch(client, &payload, 64.max(case.batch), &mut doomed)?;
        }
        match (case.kind, case.batch) {
            (Kind::Get, 1) => {
                let h = keys[rng.below(keys.len())];
                rec.time(1, || client.get_into(h, &mut bufs[0]))?;
            }
            (Kind::Replace, 1) => {
                let h = keys[rng.below(keys.len())];
                rec.time(1, || client.replace(h, &payload))?;
            }
            (Kind::Insert, 1) => {
                created.push(rec.time(1, || client.insert(&payload, 0))?);
            }
            (Kind::Remove, 1) => {
                let h = doomed.pop().expect("stocked above");
                rec.time(1, || client.remove(h))?;
            }
            (Kind::Remove, _) => {
                let at = doomed.len() - case.batch;
                let mut ops: Vec<Op<'_>> = doomed.drain(at..).map(Op::Remove).collect();
                for result in rec.time(batch, || client.submit(&mut ops))? {
                    result?;
                }
            }
            (kind, _) => {
                let results = rec.time(batch, || {
                    let mut ops: Vec<Op<'_>> = bufs
                        .iter_mut()
                        .map(|buf| {
                            let handle = keys[rng.below(keys.len())];
                            match kind {
                                Kind::Get => Op::Get { handle, buf },
                                Kind::Replace => Op::Replace {
                                    handle,
                                    value: &payload,
                                },
                                Kind::Insert => Op::Insert {
                                    value: &payload,
                                    flags: 0,
                                },
                                Kind::Remove => unreachable!("REMOVE is timed above"),
                            }
                        })
                        .collect();
                    client.submit(&mut ops)
                })?;
                for result in results {
                    if let hreg::Completion::Inserted(h) = result? {
                        created.push(h);
                    }
                }
            }
        }
        if created.len() >= 64 {
            remove_all(client, &mut created)?;
        }
    }
    remove_all(client, &mut created)?;
    remove_all(client, &mut doomed)?;
    Ok(rec)
}

/// Inserts `n` objects holding `payload` in one batch (outside any timed
/// step), adding their handles to `handles`.
fn insert_batch(
    client: &Client,
    payload: &[u8],
    n: usize,
    handles: &mut Vec<Handle>,
) -> anyhow::Result<()> {
    let mut ops: Vec<Op<'_>> = (0..n)
        .map(|_| Op::Insert {
            value: payload,
            flags: 0,
        })
        .collect();
    for result in client.submit(&mut ops)? {
        if let hreg::Completion::Inserted(h) = result? {
            handles.push(h);
        }
    }
    Ok(())
}

/// Removes `handles` in one batch (outside any timed step).
pub fn remove_all(client: &Client, handles: &mut Vec<Handle>) -> anyhow::Result<()> {
    let mut ops: Vec<Op<'_>> = handles.drain(..).map(Op::Remove).collect();
    for result in client.submit(&mut ops)? {
        result?;
    }
    Ok(())
}

/// The Redis key of object `i`.
fn redis_key(i: usize) -> Vec<u8> {
    format!("bench:{i}").into_bytes()
}

/// Stores the [`KEYS`] values a case of `size` bytes works on.
pub fn redis_keys(redis: &mut Redis, size: usize) -> anyhow::Result<Vec<Vec<u8>>> {
    let keys: Vec<Vec<u8>> = (0..KEYS).map(redis_key).collect();
    for (i, key) in keys.iter().enumerate() {
        redis.queue_set(key, &value(size, i as u64));
    }
    redis.flush(keys.len(), &mut Vec::new())?;
    Ok(keys)
}

/// Runs one Redis case on one connection for `timing.reps` repetitions.
pub fn redis_case(
    redis: &mut Redis,
    keys: &[Vec<u8>],
    case: Case,
    timing: Timing,
) -> anyhow::Result<Vec<Rep>> {
    let mut reply = Vec::with_capacity(case.size + 2);
    (0..timing.reps)
        .map(|rep| {
            let seed = (rep * 16) as u64 + 1;
            let mut rng = Rng::new(seed);
            let payload = value(case.size, seed);
            let mut rec = Recorder::new(MAX_SAMPLES);
            let deadline = Instant::now() + timing.per_rep;
            while Instant::now() < deadline {
                rec.time(case.batch as u64, || {
                    for _ in 0..case.batch {
                        let key = &keys[rng.below(keys.len())];
                        match case.kind {
                            Kind::Get => redis.queue_get(key),
                            // Section 4 has GET and SET cases only.
                            _ => redis.queue_set(key, &payload),
                        }
                    }
                    redis.flush(case.batch, &mut reply)
                })?;
            }
            Ok(rec.finish())
        })
        .collect()
}
