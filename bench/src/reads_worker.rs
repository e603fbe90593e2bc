//! A client process of section 7 (`hreg-bench --worker`, [`crate::worker`]):
//! one hreg session that reads the objects the bench stored, through the
//! local path or, started with `HREG_READ_PATH=ring`, through its rings.
//!
//! It first reads objects once and checks their bytes — every one on the
//! local path (which also maps the memory and warms it as a long-lived
//! reader's would be), a sample through the ring — prints `ready`, then
//! runs one [`Job`] per line of its standard input, answering
//! each with one JSON line ([`Answer`]), until its input ends.

use crate::readloop::{self, Shape};
use crate::reads::ReadOp;
use crate::stats::{value, Rep};
use anyhow::Context;
use hreg::{Client, Handle};
use serde::{Deserialize, Serialize};
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

/// What the worker reads.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Plan {
    pub socket: PathBuf,
    /// One file of handles per value size.
    pub sets: Vec<SetFile>,
    /// Objects of each set checked before the first job, evenly spread.
    pub checks: usize,
}

/// The handles of objects of one size, object `i` holding
/// `stats::value(size, i)`, as little-endian u64s.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SetFile {
    pub size: usize,
    pub path: PathBuf,
}

impl SetFile {
    /// Writes `handles` to `path`.
    pub fn write(size: usize, path: &Path, handles: &[Handle]) -> anyhow::Result<SetFile> {
        let bytes: Vec<u8> = handles.iter().flat_map(|h| h.get().to_le_bytes()).collect();
        std::fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))?;
        Ok(SetFile {
            size,
            path: path.to_path_buf(),
        })
    }

    fn read(&self) -> anyhow::Result<Vec<Handle>> {
        let bytes = std::fs::read(&self.path)
            .with_context(|| format!("reading {}", self.path.display()))?;
        bytes
            .chunks_exact(8)
            .map(|w| {
                let raw = u64::from_le_bytes(w.try_into().expect("8 bytes"));
                Handle::new(raw).context("handle 0 in the set")
            })
            .collect()
    }
}

/// One timed run.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub struct Job {
    pub op: ReadOp,
    pub size: usize,
    pub shape: Shape,
}

/// What a job measured, or why it failed.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Answer {
    Measured {
        ops_per_sec: f64,
        p50_ns: f64,
        p99_ns: f64,
        p999_ns: f64,
    },
    Failed(String),
}

impl Answer {
    fn of(result: anyhow::Result<Rep>) -> Answer {
        match result {
            Ok(Rep {
                ops_per_sec,
                latency: Some(p),
            }) => Answer::Measured {
                ops_per_sec,
                p50_ns: p.p50,
                p99_ns: p.p99,
                p999_ns: p.p999,
            },
            Ok(_) => Answer::Failed("no block was timed".into()),
            Err(e) => Answer::Failed(format!("{e:#}")),
        }
    }

    /// The repetition this answer reports.
    pub fn rep(self) -> anyhow::Result<Rep> {
        match self {
            Answer::Measured {
                ops_per_sec,
                p50_ns,
                p99_ns,
                p999_ns,
            } => Ok(Rep {
                ops_per_sec,
                latency: Some(crate::stats::Percentiles {
                    p50: p50_ns,
                    p99: p99_ns,
                    p999: p999_ns,
                }),
            }),
            Answer::Failed(why) => anyhow::bail!("{why}"),
        }
    }
}

/// Runs the plan: checks every object, says `ready`, answers jobs.
pub fn run(plan: &Plan) -> anyhow::Result<()> {
    let client = Client::connect(&plan.socket).context("connecting to hregd")?;
    let mut sets = Vec::new();
    for set in &plan.sets {
        let handles = set.read()?;
        check(&client, set.size, &handles, plan.checks)?;
        sets.push((set.size, handles));
    }
    let mut out = std::io::stdout().lock();
    writeln!(out, "ready")?;
    out.flush()?;
    for line in std::io::stdin().lock().lines() {
        let job: Job = serde_json::from_str(&line?).context("bad job")?;
        let answer = Answer::of(
            sets.iter()
                .find(|(size, _)| *size == job.size)
                .with_context(|| format!("no objects of {} B", job.size))
                .and_then(|(_, handles)| read(&client, handles, &job)),
        );
        writeln!(out, "{}", serde_json::to_string(&answer)?)?;
        out.flush()?;
    }
    Ok(())
}

/// Reads `checks` objects (all, if there are no more), evenly spread, and
/// checks they hold what the bench stored.
fn check(client: &Client, size: usize, handles: &[Handle], checks: usize) -> anyhow::Result<()> {
    let mut buf = vec![0u8; size];
    let stride = handles.len().div_ceil(checks.max(1)).max(1);
    for (i, &h) in handles.iter().enumerate().step_by(stride) {
        let len = client.get_into(h, &mut buf)?;
        anyhow::ensure!(
            len == size && buf == value(size, i as u64),
            "object {i} ({h}) does not hold what was stored"
        );
    }
    Ok(())
}

/// One job's timed reads.
fn read(client: &Client, handles: &[Handle], job: &Job) -> anyhow::Result<Rep> {
    let shape = Shape {
        objects: job.shape.objects.min(handles.len()),
        ..job.shape
    };
    let ends = |v: &[u8]| v[0] ^ v[v.len() - 1];
    match job.op {
        ReadOp::Get => readloop::drive(&shape, job.size, |i, buf| {
            client.get_into(handles[i], buf).map(|n| ends(&buf[..n]))
        }),
        ReadOp::GetVec => {
            readloop::drive(&shape, 0, |i, _| client.get(handles[i]).map(|v| ends(&v)))
        }
        // The borrow and its first byte: the bytes stay where they are.
        ReadOp::GetRef => {
            readloop::drive(&shape, 0, |i, _| client.get_ref(handles[i]).map(|v| v[0]))
        }
    }
}
