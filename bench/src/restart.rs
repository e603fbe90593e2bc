//! `--restart N`: how long hregd takes from stop to serving again with N
//! objects kept (issue 12's figure). One hregd keeps its state in a
//! `--state-dir` of the work directory (on tmpfs when `$TMPDIR` is); a
//! holder client inserts N small objects, half DETACHED and half held by
//! its session (whose reference table, N/2 entries, is kept too); then,
//! [`ROUNDS`] times per signal, hregd gets SIGTERM or SIGKILL and is started
//! again at once, and the bench times:
//!
//! - stop to exit (SIGTERM finishes what is in flight and marks the state
//!   clean; SIGKILL: the kernel's teardown);
//! - start to accepting (adoption: checking the state, rebuilding the free
//!   lists and counters from every slot, the references from the kept
//!   records);
//! - stop to serving: a new client's connect and get of a kept handle;
//! - stop to the holder's first call that works again (its session resumes
//!   by itself, with backoff: up to 250 ms between attempts).
//!
//! Every round checks that the N objects are still there (count, and the
//! bytes of a sample); the run fails otherwise.

use crate::procs::Proc;
use crate::report::{verdict, ModeReport};
use crate::stats::number;
use anyhow::{bail, Context};
use hreg::{Client, Error, Handle, Op, DETACHED};
use hreg_tests::{checked_value, Rng};
use serde::Serialize;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// Restarts per signal.
pub const ROUNDS: usize = 3;
/// Objects whose bytes each round reads back.
const SAMPLE: usize = 1000;
/// Inserts per batch while filling.
const BATCH: usize = 512;
/// Longest any step may take before the run fails.
const PATIENCE: Duration = Duration::from_secs(120);

/// One restart.
#[derive(Clone, Debug, Serialize)]
pub struct Round {
    pub signal: &'static str,
    pub stop_to_exit_ms: f64,
    pub start_to_accepting_ms: f64,
    pub stop_to_serving_ms: f64,
    pub stop_to_holder_back_ms: f64,
    pub objects: u64,
}

#[derive(Debug, Serialize)]
pub struct RestartReport {
    pub hardware: String,
    pub mode: &'static str,
    pub objects: usize,
    pub state_dir_fs: String,
    pub fill_seconds: f64,
    pub rounds: Vec<Round>,
    pub failures: Vec<String>,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// The filesystem type of `dir` (tmpfs is what `--state-dir` wants).
fn fs_type(dir: &Path) -> String {
    Command::new("stat")
        .args(["-f", "-c", "%T"])
        .arg(dir)
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".into())
}

/// Polls `f` until it works; an error after [`PATIENCE`].
fn until<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> anyhow::Result<T> {
    let started = Instant::now();
    loop {
        if let Some(v) = f() {
            return Ok(v);
        }
        if started.elapsed() > PATIENCE {
            bail!("{what}: not within {PATIENCE:?}");
        }
        std::thread::sleep(Duration::from_micros(200));
    }
}

fn start(hregd: &Path, dir: &Path, flags: &[String], n: usize) -> anyhow::Result<Proc> {
    let mut command = Command::new(hregd);
    command
        .arg("--socket")
        .arg(dir.join("hregd.sock"))
        .args(flags);
    Proc::spawn("hregd", command, &dir.join(format!("hregd-{n}.log")))
}

/// Inserts `n` objects (even ones DETACHED, odd ones held by `holder`);
/// returns their handles.
fn fill(holder: &Client, n: usize) -> anyhow::Result<Vec<Handle>> {
    let mut handles = Vec::with_capacity(n);
    let values: Vec<Vec<u8>> = (0..BATCH as u64).map(|i| checked_value(i, 24)).collect();
    while handles.len() < n {
        let first = handles.len();
        let count = BATCH.min(n - first);
        let mut ops: Vec<Op<'_>> = (0..count)
            .map(|i| Op::Insert {
                value: &values[(first + i) % BATCH],
                flags: if (first + i) % 2 == 0 { DETACHED } else { 0 },
            })
            .collect();
        for result in holder.submit(&mut ops)? {
            match result? {
                hreg::Completion::Inserted(h) => handles.push(h),
                other => bail!("insert: {other:?}"),
            }
        }
    }
    Ok(handles)
}

/// The N objects are all there, and a sample has its bytes.
fn check(client: &Client, handles: &[Handle], rng: &mut Rng) -> anyhow::Result<u64> {
    let objects = client.stats()?.objects;
    if objects != handles.len() as u64 {
        bail!("{objects} objects, not {}", handles.len());
    }
    for _ in 0..SAMPLE {
        let at = rng.below(handles.len() as u64) as usize;
        if client.get(handles[at])? != checked_value((at % BATCH) as u64, 24) {
            bail!("object {} has other bytes", handles[at]);
        }
    }
    Ok(objects)
}

/// `--restart N`.
pub fn run(hregd: &Path, dir: &Path, n: usize) -> anyhow::Result<RestartReport> {
    let state: PathBuf = dir.join("state");
    let flags: Vec<String> = vec![
        "--state-dir".into(),
        state.to_string_lossy().into_owned(),
        "--resume-grace".into(),
        "60".into(),
    ];
    let socket = dir.join("hregd.sock");
    let mut starts = 0;
    let mut daemon = start(hregd, dir, &flags, starts)?;
    until("hregd to accept", || Client::connect(&socket).ok())?;
    let holder = Client::connect(&socket)?;
    eprintln!("[restart] filling {n} objects");
    let filling = Instant::now();
    let handles = fill(&holder, n)?;
    let fill_seconds = filling.elapsed().as_secs_f64();
    let mut rng = Rng::new(n as u64);
    check(&holder, &handles, &mut rng)?;
    let mut report = RestartReport {
        hardware: crate::report::hardware(),
        mode: "restart",
        objects: n,
        state_dir_fs: fs_type(dir),
        fill_seconds,
        rounds: Vec::new(),
        failures: Vec::new(),
    };
    for (signal, name) in [
        (rustix::process::Signal::TERM, "SIGTERM"),
        (rustix::process::Signal::KILL, "SIGKILL"),
    ] {
        for round in 0..ROUNDS {
            eprintln!("[restart] {name} {}/{ROUNDS}", round + 1);
            let pid = rustix::process::Pid::from_raw(daemon.pid()).context("pid")?;
            let stopped = Instant::now();
            rustix::process::kill_process(pid, signal)?;
            until("hregd to exit", || daemon.try_wait().ok().flatten())?;
            let exited = stopped.elapsed();
            starts += 1;
            let started = Instant::now();
            daemon = start(hregd, dir, &flags, starts)?;
            let fresh = until("a new client to be served", || {
                let client = Client::connect(&socket).ok()?;
                client.get(handles[0]).ok().map(|_| client)
            })?;
            let serving = stopped.elapsed();
            let accepting = started.elapsed();
            until("the holder to be back", || match holder.get(handles[1]) {
                Err(Error::Disconnected) => None,
                other => Some(other),
            })?
            .context("the holder's first call after the restart")?;
            let holder_back = stopped.elapsed();
            let objects = match check(&fresh, &handles, &mut rng) {
                Ok(objects) => objects,
                Err(e) => {
                    report.failures.push(format!("{name} round {round}: {e:#}"));
                    fresh.stats().map_or(0, |s| s.objects)
                }
            };
            report.rounds.push(Round {
                signal: name,
                stop_to_exit_ms: ms(exited),
                start_to_accepting_ms: ms(accepting),
                stop_to_serving_ms: ms(serving),
                stop_to_holder_back_ms: ms(holder_back),
                objects,
            });
        }
    }
    let pid = rustix::process::Pid::from_raw(daemon.pid()).context("pid")?;
    rustix::process::kill_process(pid, rustix::process::Signal::TERM)?;
    daemon.wait_or_kill(PATIENCE)?;
    Ok(report)
}

impl ModeReport for RestartReport {
    fn passed(&self) -> bool {
        self.failures.is_empty()
    }

    fn markdown(&self) -> String {
        let mut out = format!(
            "hardware: {}  \nmode: restart; {} objects kept (half DETACHED, half held by one \
             session) in a --state-dir on {}; filled in {} s\n\n",
            self.hardware,
            self.objects,
            self.state_dir_fs,
            number(self.fill_seconds)
        );
        out.push_str(
            "| signal | stop → exit ms | start → accepting ms | stop → serving ms | \
             stop → holder back ms | objects |\n|---|---:|---:|---:|---:|---:|\n",
        );
        for r in &self.rounds {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} |",
                r.signal,
                number(r.stop_to_exit_ms),
                number(r.start_to_accepting_ms),
                number(r.stop_to_serving_ms),
                number(r.stop_to_holder_back_ms),
                r.objects
            );
        }
        out.push_str(&verdict("restart", &self.failures));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_report_shows_every_round_and_the_verdict() {
        let report = RestartReport {
            hardware: "test".into(),
            mode: "restart",
            objects: 10,
            state_dir_fs: "tmpfs".into(),
            fill_seconds: 0.5,
            rounds: vec![Round {
                signal: "SIGKILL",
                stop_to_exit_ms: 1.0,
                start_to_accepting_ms: 2.0,
                stop_to_serving_ms: 3.5,
                stop_to_holder_back_ms: 9.0,
                objects: 10,
            }],
            failures: vec!["lost one".into()],
        };
        let text = report.markdown();
        assert!(
            text.contains("| SIGKILL |") && text.contains("| 10 |"),
            "{text}"
        );
        assert!(text.contains("restart: FAIL: lost one"), "{text}");
        assert!(!report.passed());
    }
}
