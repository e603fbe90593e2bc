//! `hreg-bench --rings SECONDS`: what rings held by others cost an honest
//! writer (issue 18's targets). An honest client (this process, the bench's
//! uid) times insert + release pairs, one round trip each, for SECONDS
//! alone, then while another uid holds as many rings as the daemon lets it
//! (idle, then each sending one cheap request every 20 ms), then while its
//! own uid holds 4096 idle rings; its rate in each phase over its rate
//! alone, measured just before, is the figure. Three rounds; the medians
//! are judged against the targets (≥ 0.8 idle, ≥ 0.5 busy, ≥ 0.8 own
//! uid's idle rings) and the run fails below them.
//!
//! The rings are held by a ring-holder worker process ([`holder`], over
//! `hreg_tests::attacks::hold_rings`) that speaks the wire protocol the way
//! libhreg does (a parked ring is named in its ready word before the
//! doorbell rings), from one thread: the daemon sees what 128 processes of
//! 64 threads would make it see, without 8192 client threads competing for
//! the machine's cores.

use crate::procs::{self, Lines, Proc, OTHER_UIDS};
use crate::report::{verdict, ModeReport};
use crate::stats::number;
use crate::worker::Worker;
use anyhow::Context;
use hreg_tests::attacks::{hold_rings, BUSY_PERIOD};
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Rings the other uid tries to hold: the 128 sessions × 64.
const OTHER_RINGS: usize = 8192;
/// Idle rings of the honest client's own uid.
const OWN_RINGS: usize = 4096;
/// Rounds of the phases; the figures are their medians.
const ROUNDS: usize = 3;
/// Pause after a holder got ready or went away, before the next phase (the
/// daemon tears down a departed holder's sessions meanwhile).
const SETTLE: Duration = Duration::from_secs(1);

/// hregd's flags: other uids reach the socket; 128 sessions of one uid.
const HREGD_FLAGS: &[&str] = &["--socket-mode", "666", "--max-sessions", "1024"];

/// What a ring holder is to do.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct HolderPlan {
    pub socket: PathBuf,
    pub rings: usize,
}

/// One phase's figure.
#[derive(Debug, Serialize)]
pub struct Phase {
    pub name: &'static str,
    /// Rings the holder got.
    pub rings: usize,
    pub pairs_per_sec: f64,
    /// Over the rate alone just before.
    pub ratio: f64,
}

#[derive(Debug, Serialize)]
pub struct RingsReport {
    pub hardware: String,
    pub mode: &'static str,
    pub seconds: u64,
    pub rounds: Vec<Vec<Phase>>,
    /// Per phase kind: the median ratio and its target.
    pub medians: Vec<(String, f64, f64)>,
    pub notes: Vec<String>,
    pub failures: Vec<String>,
}

/// Runs the phases against a fresh hregd in `dir`.
pub fn run(hregd: &Path, dir: &procs::WorkDir, seconds: u64) -> anyhow::Result<RingsReport> {
    dir.open_to_others()?;
    let (mut daemon, socket) =
        procs::start_hregd_with(hregd, dir.path(), HREGD_FLAGS, Some(procs::HREGD_NOFILE))?;
    let root = procs::is_root();
    let mut report = RingsReport {
        hardware: crate::report::hardware(),
        mode: "rings",
        seconds,
        rounds: Vec::new(),
        medians: Vec::new(),
        notes: Vec::new(),
        failures: Vec::new(),
    };
    if !root {
        report
            .notes
            .push("not root: the other uid's rings are held by the bench's own uid".into());
    }
    let other = root.then_some(OTHER_UIDS[0]);
    let honest = hreg::Client::connect_named(Some(&socket), "hreg-bench-honest")?;
    let window = Duration::from_secs(seconds);
    for round in 0..ROUNDS {
        eprintln!("[rings] round {}/{ROUNDS}", round + 1);
        let mut phases = Vec::new();
        let alone = pairs_per_sec(&honest, window)?;
        phases.push(Phase {
            name: "alone",
            rings: 0,
            pairs_per_sec: alone,
            ratio: 1.0,
        });
        let mut holder = Holder::start(&socket, OTHER_RINGS, other)?;
        let rate = pairs_per_sec(&honest, window)?;
        phases.push(Phase {
            name: "another uid's idle rings",
            rings: holder.rings,
            pairs_per_sec: rate,
            ratio: rate / alone,
        });
        holder.busy()?;
        let rate = pairs_per_sec(&honest, window)?;
        phases.push(Phase {
            name: "the same rings, each a request every 20 ms",
            rings: holder.rings,
            pairs_per_sec: rate,
            ratio: rate / alone,
        });
        holder.stop()?;
        let alone = pairs_per_sec(&honest, window)?;
        let own = Holder::start(&socket, OWN_RINGS, None)?;
        let rate = pairs_per_sec(&honest, window)?;
        phases.push(Phase {
            name: "its own uid's idle rings",
            rings: own.rings,
            pairs_per_sec: rate,
            ratio: rate / alone,
        });
        own.stop()?;
        daemon.check_alive()?;
        report.rounds.push(phases);
    }
    for (at, target) in [(1, 0.8), (2, 0.5), (3, 0.8)] {
        let mut ratios: Vec<f64> = report.rounds.iter().map(|r| r[at].ratio).collect();
        ratios.sort_by(f64::total_cmp);
        let median = ratios[ratios.len() / 2];
        let name = report.rounds[0][at].name.to_string();
        if median < target {
            report.failures.push(format!(
                "{name}: {median:.3} of the rate alone, target ≥ {target}"
            ));
        }
        report.medians.push((name, median, target));
    }
    Ok(report)
}

/// Insert + release pairs per second for `window`, one round trip each.
fn pairs_per_sec(client: &hreg::Client, window: Duration) -> anyhow::Result<f64> {
    let start = Instant::now();
    let mut pairs = 0u64;
    while start.elapsed() < window {
        for _ in 0..64 {
            let h = client.insert(b"honest-8", 0).context("honest insert")?;
            client.release(h).context("honest release")?;
        }
        pairs += 64;
    }
    Ok(pairs as f64 / start.elapsed().as_secs_f64())
}

/// A ring-holder process: ready once it holds its rings; `busy` on stdin
/// makes each ring send a request every [`BUSY_PERIOD`]; EOF ends it.
struct Holder {
    proc: Proc,
    stdin: Option<std::process::ChildStdin>,
    rings: usize,
}

impl Holder {
    fn start(socket: &Path, rings: usize, uid: Option<u32>) -> anyhow::Result<Holder> {
        let plan = HolderPlan {
            socket: socket.to_path_buf(),
            rings,
        };
        let mut command = Worker::RingHolder(plan).command()?;
        command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if let Some(uid) = uid {
            procs::as_uid(&mut command, uid);
        }
        let mut proc = Proc::start("ring holder", command)?;
        let stdin = proc.take_stdin();
        let lines = Lines::read(proc.take_stdout().context("piped stdout")?, "holder")?;
        let line = lines
            .next(Duration::from_secs(120))
            .context("the ring holder never got ready")?;
        let rings = line
            .strip_prefix("ready ")
            .and_then(|n| n.trim().parse().ok())
            .with_context(|| format!("the ring holder said {line:?}"))?;
        eprintln!("[rings] a holder has {rings} rings");
        std::thread::sleep(SETTLE);
        Ok(Holder { proc, stdin, rings })
    }

    fn busy(&mut self) -> anyhow::Result<()> {
        let stdin = self.stdin.as_mut().context("holder stdin")?;
        writeln!(stdin, "busy")?;
        stdin.flush()?;
        // Let every ring get going.
        std::thread::sleep(BUSY_PERIOD * 5);
        Ok(())
    }

    fn stop(mut self) -> anyhow::Result<()> {
        drop(self.stdin.take());
        self.proc.wait_or_kill(Duration::from_secs(30))?;
        std::thread::sleep(SETTLE);
        Ok(())
    }
}

/// The ring holder's body (a worker process): `hreg_tests`' ring holder,
/// made busy by `busy` on stdin and stopped by its end.
pub fn holder(plan: &HolderPlan) -> anyhow::Result<()> {
    let busy = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicBool::new(false));
    {
        let (busy, done) = (Arc::clone(&busy), Arc::clone(&done));
        std::thread::spawn(move || {
            for line in std::io::stdin().lock().lines() {
                match line {
                    Ok(l) if l.trim() == "busy" => busy.store(true, Ordering::Relaxed),
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
            done.store(true, Ordering::Relaxed);
        });
    }
    hold_rings(
        &plan.socket,
        plan.rings,
        &busy,
        &mut |line| {
            println!("{line}");
            let _ = std::io::stdout().flush();
        },
        &done,
    );
    Ok(())
}

impl ModeReport for RingsReport {
    fn passed(&self) -> bool {
        self.failures.is_empty()
    }

    fn markdown(&self) -> String {
        let mut out = format!(
            "hardware: {}  \nmode: rings; an honest writer's insert+release pairs/s over its rate alone, {} s per phase, {} rounds\n\n",
            self.hardware,
            self.seconds,
            self.rounds.len()
        );
        out.push_str(
            "| round | phase | rings held | pairs/s | ÷ alone |\n|---|---|---:|---:|---:|\n",
        );
        for (i, round) in self.rounds.iter().enumerate() {
            for p in round {
                let _ = writeln!(
                    out,
                    "| {} | {} | {} | {} | {:.3} |",
                    i + 1,
                    p.name,
                    p.rings,
                    number(p.pairs_per_sec),
                    p.ratio
                );
            }
        }
        out.push_str("\n| figure (median) | ÷ alone | target |\n|---|---:|---:|\n");
        for (name, median, target) in &self.medians {
            let _ = writeln!(out, "| {name} | {median:.3} | ≥ {target} |");
        }
        for note in &self.notes {
            let _ = writeln!(out, "note: {note}");
        }
        out.push_str(&verdict("rings", &self.failures));
        out
    }
}
