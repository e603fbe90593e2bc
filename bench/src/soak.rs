//! The soak (`hreg-bench --soak SECONDS`): for that long, several client
//! processes at a time ([`crate::soak_worker`], this executable in its
//! hidden worker mode, [`crate::worker`]) attach to one hregd, run checked mixed operations,
//! and detach after a random lifetime or get SIGKILLed at a random moment,
//! over and over. DETACHED objects pass from client to client and are
//! checked by each, those of killed clients included (they must survive
//! their creator). Every second the daemon's resident memory, descriptors,
//! objects, sessions and ops/s are sampled.
//!
//! At the end every object must be accounted for (the ones passed on are
//! checked and removed, the orphans of killed clients swept) and the
//! daemon must be back to its idle descriptors. The run fails on a wrong
//! value, an unexpected client error, a client that crashed, a warning or
//! error in the daemon's log, a leak, or the daemon's death.

use crate::procs::{self, Proc};
use crate::report::{escape, verdict, ModeReport};
use crate::soak_worker::{Kept, Plan, Report};
use crate::stats::{number, Rng};
use crate::worker::Worker;
use anyhow::Context;
use hreg::{Client, Handle};
use serde::Serialize;
use std::collections::{HashMap, VecDeque};
use std::fmt::Write as _;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// hregd's flags: a 16 KiB data area (the default is 256 KiB), so values
/// from 16 KiB to the soak's 64 KiB take the staged path too.
pub const HREGD_FLAGS: &[&str] = &["--data-size", "16384"];

/// Lifetimes of clients, in milliseconds.
const LIFETIME_MS: std::ops::Range<u64> = 300..3000;
/// How long clients may take to end after the last was started.
const GRACE: Duration = Duration::from_secs(10);
/// How long the daemon may take to settle back to idle at the end.
const SETTLE: Duration = Duration::from_secs(10);
/// Lines of the daemon's log and client incidents quoted in the report.
const QUOTED: usize = 10;

/// One per-second sample of the daemon.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Sample {
    /// Seconds since the first client started.
    pub t: f64,
    pub rss_bytes: u64,
    pub fds: usize,
    pub objects: u64,
    /// Attached sessions, the sampler's own included.
    pub sessions: u64,
    /// Requests the daemon served per second since the previous sample.
    pub ops_per_sec: f64,
    /// Client processes running.
    pub clients: usize,
}

/// What the soak found.
#[derive(Debug, Default, Serialize)]
pub struct Outcome {
    pub seconds: f64,
    pub warm_up_seconds: f64,
    pub clients_started: u64,
    pub clients_detached: u64,
    pub clients_killed: u64,
    /// Operations the clients counted (each op of a batch is one).
    pub client_ops: u64,
    /// Requests the daemon counted.
    pub daemon_ops: u64,
    pub wrong_values: u64,
    /// Unexpected client errors, clients that crashed, and end checks that
    /// failed.
    pub errors: u64,
    pub daemon_warnings: u64,
    pub daemon_errors: u64,
    pub daemon_died: bool,
    /// Objects passed between clients, checked and removed at the end.
    pub passed_on: u64,
    /// DETACHED objects a kill left unannounced (made but not yet
    /// announced, or announced as being removed), removed at the end.
    pub orphans_swept: u64,
    pub rss_idle_before: u64,
    pub rss_after_warm_up: u64,
    pub rss_end: u64,
    pub rss_peak: u64,
    pub rss_idle_after: u64,
    pub fds_idle_before: usize,
    pub fds_after_warm_up: usize,
    pub fds_end: usize,
    pub fds_idle_after: usize,
    /// Client incidents and daemon log lines, the first few of each.
    pub quoted: Vec<String>,
    /// Why the soak failed; empty when it passed.
    pub failures: Vec<String>,
}

/// The soak's result: settings, samples and outcome.
#[derive(Debug, Serialize)]
pub struct SoakReport {
    pub hardware: String,
    pub mode: &'static str,
    pub hregd_flags: Vec<String>,
    pub clients_at_a_time: usize,
    pub outcome: Outcome,
    pub samples: Vec<Sample>,
}

/// A client process and what it has said.
struct Running {
    proc: Proc,
    kill_at: Option<Instant>,
    killed: bool,
    exit: Option<ExitStatus>,
    /// The reader of its stdout has seen the end.
    eof: bool,
    done: bool,
    /// Its last tally: ops, wrong values, errors.
    tally: (u64, u64, u64),
    /// Its DETACHED objects (inherited or made, not yet removed or passed
    /// on): passed on to later clients if it is killed.
    detached: HashMap<u64, Kept>,
}

/// A line from client `id`, or the end of its stdout.
enum Heard {
    Report(u64, Report),
    Eof(u64),
}

/// Runs the soak for `duration` with `clients` processes at a time against
/// a fresh hregd (`hregd` binary) in `dir`.
pub fn run(
    hregd: &Path,
    dir: &Path,
    duration: Duration,
    clients: usize,
) -> anyhow::Result<SoakReport> {
    let (mut daemon, socket) = procs::start_hregd_with(hregd, dir, HREGD_FLAGS, None)?;
    let sampler = Client::connect_named(Some(&socket), "hreg-soak-stats")?;
    // One data-path round trip first, so anything the daemon sets up on
    // first use is in the idle baseline.
    let probe = sampler.insert(b"probe", 0)?;
    sampler.remove(probe)?;
    let mut out = Outcome {
        rss_idle_before: daemon.rss_bytes()?,
        fds_idle_before: daemon.fd_count()?,
        warm_up_seconds: (duration / 4)
            .clamp(Duration::from_secs(5), Duration::from_secs(60))
            .min(duration)
            .as_secs_f64(),
        ..Outcome::default()
    };
    let mut soak = Soak {
        socket,
        log: std::fs::File::create(dir.join("soak-clients.log"))?,
        rng: Rng::new(0x50a6),
        running: HashMap::new(),
        next_id: 0,
        pool: VecDeque::new(),
        heard: mpsc::channel(),
    };
    let samples = soak.drive(&mut daemon, &sampler, duration, clients, &mut out)?;
    if !out.daemon_died {
        soak.finish(&mut daemon, &sampler, &mut out)?;
    }
    scan_log(&dir.join("hregd.log"), &mut out);
    summarise(&samples, &mut out);
    Ok(SoakReport {
        hardware: crate::report::hardware(),
        mode: "soak",
        hregd_flags: HREGD_FLAGS.iter().map(|f| f.to_string()).collect(),
        clients_at_a_time: clients,
        outcome: out,
        samples,
    })
}

/// The soak's moving parts.
struct Soak {
    socket: PathBuf,
    /// The clients' stderr (panics), shared.
    log: std::fs::File,
    rng: Rng,
    running: HashMap<u64, Running>,
    next_id: u64,
    /// Objects clients passed on, oldest first.
    pool: VecDeque<Kept>,
    heard: (mpsc::Sender<Heard>, mpsc::Receiver<Heard>),
}

impl Soak {
    /// Keeps `clients` clients running for `duration`, kills the doomed
    /// ones on time, samples the daemon every second; then lets the last
    /// clients end.
    fn drive(
        &mut self,
        daemon: &mut Proc,
        sampler: &Client,
        duration: Duration,
        clients: usize,
        out: &mut Outcome,
    ) -> anyhow::Result<Vec<Sample>> {
        let start = Instant::now();
        let end = start + duration;
        let mut samples = Vec::new();
        let mut next_sample = start;
        let mut last_ops = (start, sampler.stats()?.ops);
        loop {
            let now = Instant::now();
            if now < end {
                while self.running.len() < clients {
                    self.spawn(out)?;
                }
            } else if self.running.is_empty() {
                break;
            } else if now > end + GRACE {
                for r in self.running.values_mut() {
                    if r.exit.is_none() {
                        out.errors += 1;
                        out.quoted
                            .push(format!("client {} did not end", r.proc.pid()));
                        r.killed = true;
                        r.exit = Some(r.proc.kill()?);
                    }
                }
            }
            self.step(now, out)?;
            if now >= next_sample {
                next_sample += Duration::from_secs(1);
                if let Some(status) = daemon.try_wait()? {
                    out.daemon_died = true;
                    out.failures.push(format!("hregd died: {status}"));
                    break;
                }
                let stats = sampler.stats()?;
                let per_sec = (stats.ops - last_ops.1) as f64
                    / now.duration_since(last_ops.0).as_secs_f64().max(1e-3);
                last_ops = (now, stats.ops);
                samples.push(Sample {
                    t: now.duration_since(start).as_secs_f64(),
                    rss_bytes: daemon.rss_bytes()?,
                    fds: daemon.fd_count()?,
                    objects: stats.objects,
                    sessions: stats.sessions,
                    ops_per_sec: per_sec,
                    clients: self.running.len(),
                });
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        out.seconds = start.elapsed().as_secs_f64();
        if !out.daemon_died {
            out.daemon_ops = sampler.stats()?.ops;
        }
        Ok(samples)
    }

    /// Starts one client with a random lifetime, a third of them doomed to
    /// SIGKILL before it ends, each given some of the objects passed on.
    fn spawn(&mut self, out: &mut Outcome) -> anyhow::Result<()> {
        let lifetime_ms = LIFETIME_MS.start
            + self
                .rng
                .below((LIFETIME_MS.end - LIFETIME_MS.start) as usize) as u64;
        let take = self.pool.len().min(4 + self.pool.len() / 8);
        let plan = Plan {
            socket: self.socket.clone(),
            seed: self.rng.next(),
            lifetime_ms,
            threads: 1 + self.rng.below(2),
            inherited: self.pool.drain(..take).collect(),
        };
        let detached = plan.inherited.iter().map(|k| (k.handle, *k)).collect();
        let mut command = Worker::Soak(plan).command()?;
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(self.log.try_clone()?);
        let mut proc = Proc::start("soak client", command)?;
        let stdout = proc.take_stdout().context("piped stdout")?;
        let id = self.next_id;
        self.next_id += 1;
        let tx = self.heard.0.clone();
        std::thread::Builder::new()
            .name(format!("soak-reader-{id}"))
            .spawn(move || {
                // A killed client may leave half a line: it does not parse.
                for line in std::io::BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    if let Ok(report) = serde_json::from_str(&line) {
                        let _ = tx.send(Heard::Report(id, report));
                    }
                }
                let _ = tx.send(Heard::Eof(id));
            })?;
        let now = Instant::now();
        let kill_at = (self.rng.below(3) == 0)
            .then(|| now + Duration::from_millis(self.rng.below(lifetime_ms as usize) as u64));
        self.running.insert(
            id,
            Running {
                proc,
                kill_at,
                killed: false,
                exit: None,
                eof: false,
                done: false,
                tally: (0, 0, 0),
                detached,
            },
        );
        out.clients_started += 1;
        Ok(())
    }

    /// Kills the clients due, reaps the ended, takes in what they said, and
    /// settles the accounts of those fully over.
    fn step(&mut self, now: Instant, out: &mut Outcome) -> anyhow::Result<()> {
        for r in self.running.values_mut() {
            if r.exit.is_none() && r.kill_at.is_some_and(|at| now >= at) {
                r.killed = true;
                r.exit = Some(r.proc.kill()?);
            } else if r.exit.is_none() {
                r.exit = r.proc.try_wait()?;
            }
        }
        while let Ok(heard) = self.heard.1.try_recv() {
            match heard {
                Heard::Eof(id) => {
                    if let Some(r) = self.running.get_mut(&id) {
                        r.eof = true;
                    }
                }
                Heard::Report(id, report) => {
                    let Some(r) = self.running.get_mut(&id) else {
                        continue;
                    };
                    match report {
                        Report::Tally { ops, wrong, errors } => r.tally = (ops, wrong, errors),
                        Report::Detached(kept) => {
                            r.detached.insert(kept.handle, kept);
                        }
                        Report::Removing { handle } => {
                            r.detached.remove(&handle);
                        }
                        Report::Kept(kept) => {
                            r.detached.remove(&kept.handle);
                            self.pool.push_back(kept);
                        }
                        Report::Incident { wrong, detail } => {
                            let what = if wrong { "wrong value" } else { "error" };
                            out.quoted
                                .push(format!("client {}: {what}: {detail}", r.proc.pid()));
                        }
                        Report::Done => r.done = true,
                    }
                }
            }
        }
        let over: Vec<u64> = self
            .running
            .iter()
            .filter(|(_, r)| r.eof && r.exit.is_some())
            .map(|(&id, _)| id)
            .collect();
        for id in over {
            let r = self.running.remove(&id).expect("listed");
            // What a killed client held DETACHED must have survived it.
            self.pool.extend(r.detached.values());
            let (ops, wrong, errors) = r.tally;
            out.client_ops += ops;
            out.wrong_values += wrong;
            out.errors += errors;
            let status = r.exit.expect("reaped");
            if r.done && status.success() {
                out.clients_detached += 1;
            } else if r.killed {
                out.clients_killed += 1;
            } else {
                out.errors += 1;
                out.quoted
                    .push(format!("client {} ended badly: {status}", r.proc.pid()));
            }
        }
        Ok(())
    }

    /// The end checks: the objects passed on are intact, and once they and
    /// the orphans are removed the daemon holds no object, only the
    /// sampler's session, and its idle descriptors.
    fn finish(
        &mut self,
        daemon: &mut Proc,
        sampler: &Client,
        out: &mut Outcome,
    ) -> anyhow::Result<()> {
        for kept in self.pool.drain(..) {
            let handle = Handle::new(kept.handle).context("kept handle 0")?;
            out.passed_on += 1;
            match sampler.get(handle) {
                Ok(v) if v == hreg_tests::checked_value(kept.seed, kept.len) => {}
                Ok(v) => {
                    out.wrong_values += 1;
                    out.quoted.push(format!(
                        "passed-on {handle}: wrong value ({} bytes, expected {})",
                        v.len(),
                        kept.len
                    ));
                }
                Err(e) => {
                    out.errors += 1;
                    out.quoted.push(format!("passed-on {handle}: {e}"));
                }
            }
            sampler.remove(handle)?;
        }
        // DETACHED objects whose clients were killed before removing them.
        let orphans = sampler.list_all(hreg::ListFilter {
            detached_only: true,
            owner: None,
        })?;
        for orphan in orphans {
            if let Some(handle) = Handle::new(orphan.handle) {
                if sampler.remove(handle).is_ok() {
                    out.orphans_swept += 1;
                }
            }
        }
        let deadline = Instant::now() + SETTLE;
        let idle = loop {
            let stats = sampler.stats()?;
            let fds = daemon.fd_count()?;
            let idle = stats.objects == 0 && stats.sessions == 1 && fds == out.fds_idle_before;
            if idle || Instant::now() > deadline {
                out.fds_idle_after = fds;
                break (idle, stats);
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        out.rss_idle_after = daemon.rss_bytes()?;
        if !idle.0 {
            out.failures.push(format!(
                "not back to idle after {SETTLE:?}: {} objects, {} sessions, {} fds (idle before: {})",
                idle.1.objects, idle.1.sessions, out.fds_idle_after, out.fds_idle_before
            ));
            // What is left says which path leaked it.
            let left = sampler.list_all(hreg::ListFilter::default())?;
            for object in left.iter().take(8) {
                out.quoted.push(format!("left behind: {object:?}"));
            }
            out.quoted.push(format!("stats at the end: {:?}", idle.1));
        }
        daemon.check_alive()?;
        Ok(())
    }
}

/// Counts the WARN and ERROR lines of the daemon's log, quoting the first.
fn scan_log(path: &Path, out: &mut Outcome) {
    let Ok(text) = std::fs::read_to_string(path) else {
        out.failures.push(format!("cannot read {}", path.display()));
        return;
    };
    let mut quoted = 0;
    for line in text.lines() {
        let level = line.split_whitespace().nth(1).unwrap_or("");
        let counter = match level {
            "WARN" => &mut out.daemon_warnings,
            "ERROR" => &mut out.daemon_errors,
            _ => continue,
        };
        *counter += 1;
        if quoted < QUOTED {
            quoted += 1;
            out.quoted.push(format!("hregd: {line}"));
        }
    }
}

/// The memory and descriptor figures from the samples, and the verdict.
fn summarise(samples: &[Sample], out: &mut Outcome) {
    let after_warm_up = samples
        .iter()
        .find(|s| s.t >= out.warm_up_seconds)
        .or(samples.last());
    if let (Some(w), Some(last)) = (after_warm_up, samples.last()) {
        out.rss_after_warm_up = w.rss_bytes;
        out.fds_after_warm_up = w.fds;
        out.rss_end = last.rss_bytes;
        out.fds_end = last.fds;
    }
    out.rss_peak = samples.iter().map(|s| s.rss_bytes).max().unwrap_or(0);
    out.quoted.truncate(2 * QUOTED);
    for (count, what) in [
        (out.wrong_values, "wrong values"),
        (out.errors, "unexpected errors"),
        (out.daemon_warnings, "warnings in the daemon's log"),
        (out.daemon_errors, "errors in the daemon's log"),
    ] {
        if count > 0 {
            out.failures.push(format!("{count} {what}"));
        }
    }
    if out.clients_detached == 0 || out.clients_killed == 0 {
        out.failures.push(format!(
            "too short to soak: {} clients detached, {} killed",
            out.clients_detached, out.clients_killed
        ));
    }
}

impl ModeReport for SoakReport {
    fn passed(&self) -> bool {
        self.outcome.failures.is_empty()
    }

    /// The summary as a Markdown table, the quoted lines and the verdict.
    fn markdown(&self) -> String {
        let o = &self.outcome;
        let mib = |b: u64| format!("{:.1}", b as f64 / (1 << 20) as f64);
        let rows = [
            (
                "duration".to_string(),
                format!(
                    "{:.0} s ({} clients at a time; warm-up {:.0} s)",
                    o.seconds, self.clients_at_a_time, o.warm_up_seconds
                ),
            ),
            (
                "clients started / detached / SIGKILLed".into(),
                format!(
                    "{} / {} / {}",
                    o.clients_started, o.clients_detached, o.clients_killed
                ),
            ),
            (
                "client operations (per second)".into(),
                format!(
                    "{} ({})",
                    o.client_ops,
                    number(o.client_ops as f64 / o.seconds.max(1e-9))
                ),
            ),
            ("daemon requests".into(), o.daemon_ops.to_string()),
            ("wrong values".into(), o.wrong_values.to_string()),
            ("unexpected errors".into(), o.errors.to_string()),
            (
                "daemon log: warnings / errors".into(),
                format!("{} / {}", o.daemon_warnings, o.daemon_errors),
            ),
            (
                "objects passed on and checked / orphans swept".into(),
                format!("{} / {}", o.passed_on, o.orphans_swept),
            ),
            (
                "daemon RSS MiB: idle before, after warm-up, end, peak, idle after".into(),
                format!(
                    "{}, {}, {}, {}, {}",
                    mib(o.rss_idle_before),
                    mib(o.rss_after_warm_up),
                    mib(o.rss_end),
                    mib(o.rss_peak),
                    mib(o.rss_idle_after)
                ),
            ),
            (
                "daemon fds: idle before, after warm-up, end, idle after".into(),
                format!(
                    "{}, {}, {}, {}",
                    o.fds_idle_before, o.fds_after_warm_up, o.fds_end, o.fds_idle_after
                ),
            ),
        ];
        let mut text = format!(
            "hardware: {}  \nmode: soak, hregd {}\n\n| figure | value |\n|---|---|\n",
            self.hardware,
            self.hregd_flags.join(" ")
        );
        for (figure, value) in rows {
            let _ = writeln!(text, "| {figure} | {value} |");
        }
        if !o.quoted.is_empty() {
            text.push('\n');
        }
        for line in &o.quoted {
            let _ = writeln!(text, "    {line}");
        }
        text.push_str(&verdict("soak", &o.failures));
        text
    }

    /// One panel per figure over time (RSS, fds, objects, sessions, ops/s),
    /// the end of the warm-up marked.
    fn svg(&self) -> Option<String> {
        type Figure = fn(&Sample) -> f64;
        let panels: [(&str, Figure); 5] = [
            ("daemon RSS, MiB", |s| s.rss_bytes as f64 / (1 << 20) as f64),
            ("daemon open descriptors", |s| s.fds as f64),
            ("live objects", |s| s.objects as f64),
            ("attached sessions", |s| s.sessions as f64),
            ("daemon requests per second", |s| s.ops_per_sec),
        ];
        const WIDTH: f64 = 760.0;
        const LEFT: f64 = 70.0;
        const PLOT_W: f64 = WIDTH - LEFT - 20.0;
        const PANEL_H: f64 = 110.0;
        const PLOT_H: f64 = 80.0;
        const TOP: f64 = 36.0;
        let height = TOP + PANEL_H * panels.len() as f64 + 20.0;
        let t_max = self.samples.last().map_or(1.0, |s| s.t).max(1.0);
        let x = |t: f64| LEFT + t / t_max * PLOT_W;
        let mut svg = String::new();
        let _ = writeln!(
            svg,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" font-family="sans-serif" font-size="10">"#
        );
        let _ = writeln!(svg, r#"<rect width="100%" height="100%" fill="white"/>"#);
        let verdict = if self.passed() { "PASS" } else { "FAIL" };
        let o = &self.outcome;
        let _ = writeln!(
            svg,
            r#"<text x="4" y="16" font-size="12" font-weight="bold">{}</text>"#,
            escape(&format!(
                "hreg soak: {:.0} s, {} clients at a time, {} started, {} SIGKILLed; {} wrong values, {} errors: {verdict}",
                o.seconds, self.clients_at_a_time, o.clients_started, o.clients_killed, o.wrong_values, o.errors
            ))
        );
        for (i, (title, figure)) in panels.iter().enumerate() {
            let top = TOP + i as f64 * PANEL_H;
            let bottom = top + PLOT_H;
            let hi = self
                .samples
                .iter()
                .map(figure)
                .fold(0.0, f64::max)
                .max(1e-9);
            let y = |v: f64| bottom - v / hi * PLOT_H;
            let _ = writeln!(
                svg,
                r##"<text x="{LEFT}" y="{:.1}" font-weight="bold">{}</text><line x1="{LEFT}" y1="{bottom:.1}" x2="{:.1}" y2="{bottom:.1}" stroke="#888"/><line x1="{LEFT}" y1="{top:.1}" x2="{LEFT}" y2="{bottom:.1}" stroke="#888"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text><text x="{:.1}" y="{bottom:.1}" text-anchor="end">0</text>"##,
                top - 4.0,
                escape(title),
                LEFT + PLOT_W,
                LEFT - 4.0,
                top + 8.0,
                if hi.fract() == 0.0 {
                    format!("{hi:.0}")
                } else {
                    number(hi)
                },
                LEFT - 4.0,
            );
            let wx = x(o.warm_up_seconds);
            let _ = writeln!(
                svg,
                r##"<line x1="{wx:.1}" y1="{top:.1}" x2="{wx:.1}" y2="{bottom:.1}" stroke="#c33" stroke-dasharray="3,3"/>"##
            );
            let points: Vec<String> = self
                .samples
                .iter()
                .map(|s| format!("{:.1},{:.1}", x(s.t), y(figure(s))))
                .collect();
            let _ = writeln!(
                svg,
                r##"<polyline fill="none" stroke="#1f77b4" stroke-width="1.5" points="{}"/>"##,
                points.join(" ")
            );
        }
        let _ = writeln!(
            svg,
            r##"<text x="{LEFT}" y="{:.1}">0 s</text><text x="{:.1}" y="{:.1}" text-anchor="end">{} s (dashed: end of warm-up)</text>"##,
            height - 6.0,
            LEFT + PLOT_W,
            height - 6.0,
            number(t_max)
        );
        svg.push_str("</svg>\n");
        Some(svg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(t: f64, rss_bytes: u64, fds: usize) -> Sample {
        Sample {
            t,
            rss_bytes,
            fds,
            objects: 1,
            sessions: 2,
            ops_per_sec: 10.0,
            clients: 1,
        }
    }

    #[test]
    fn summary_takes_warm_up_end_and_peak_and_fails_on_any_finding() {
        let samples = [sample(1.0, 10, 5), sample(5.0, 30, 9), sample(9.0, 20, 7)];
        let mut out = Outcome {
            warm_up_seconds: 5.0,
            clients_detached: 3,
            clients_killed: 1,
            ..Outcome::default()
        };
        summarise(&samples, &mut out);
        assert_eq!((out.rss_after_warm_up, out.fds_after_warm_up), (30, 9));
        assert_eq!((out.rss_end, out.fds_end, out.rss_peak), (20, 7, 30));
        assert!(out.failures.is_empty(), "{:?}", out.failures);

        for finding in 0..4 {
            let mut out = Outcome {
                clients_detached: 1,
                clients_killed: 1,
                ..Outcome::default()
            };
            match finding {
                0 => out.wrong_values = 1,
                1 => out.errors = 2,
                2 => out.daemon_warnings = 1,
                _ => out.daemon_errors = 1,
            }
            summarise(&samples, &mut out);
            assert_eq!(out.failures.len(), 1, "{finding}");
        }
        let mut idle = Outcome::default();
        summarise(&samples, &mut idle);
        assert!(idle.failures[0].contains("too short"));
    }

    #[test]
    fn log_scan_counts_warnings_and_errors_only() {
        let dir = std::env::temp_dir().join(format!("hreg-soak-log-{}", std::process::id()));
        std::fs::write(
            &dir,
            "2026-01-01T00:00:00Z  INFO hregd: serving\n\
             2026-01-01T00:00:01Z  WARN hregd::control: quota hit\n\
             2026-01-01T00:00:02Z ERROR hregd: worker failed\n\
             2026-01-01T00:00:03Z  INFO hregd::control: session detached reason=\"WARN\"\n",
        )
        .unwrap();
        let mut out = Outcome::default();
        scan_log(&dir, &mut out);
        std::fs::remove_file(&dir).unwrap();
        assert_eq!((out.daemon_warnings, out.daemon_errors), (1, 1));
        assert_eq!(out.quoted.len(), 2);
    }

    #[test]
    fn the_plot_has_a_line_per_figure() {
        let report = SoakReport {
            hardware: "test".into(),
            mode: "soak",
            hregd_flags: vec![],
            clients_at_a_time: 2,
            outcome: Outcome::default(),
            samples: vec![sample(0.0, 1 << 20, 5), sample(1.0, 2 << 20, 6)],
        };
        let svg = report.svg().expect("the soak draws a plot");
        assert_eq!(svg.matches("<polyline").count(), 5);
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>\n"));
    }
}
