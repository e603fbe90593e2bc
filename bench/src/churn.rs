//! Memory under churn (`hreg-bench --churn SECONDS`, issue 11 item 6): for
//! that long, client threads insert, replace and remove values of mixed
//! sizes against one fresh hregd with its defaults, keeping about a set
//! number of live value bytes; every second the daemon's resident memory
//! and the registry's live value bytes (STATS) and bytes awaiting
//! reclamation (USAGE) are sampled.
//!
//! Sizes are log-uniform (as many of 1–2 B as of 512 KiB–1 MiB), and their
//! range moves in phases of a quarter of the run (at least 2 s): 0 B–1 MiB,
//! then small values only (0 B–4 KiB), then large ones only (64 KiB–1 MiB),
//! then 0 B–1 MiB again — so that memory freed in one size class must serve
//! another, which an allocator that keeps its classes apart cannot do.
//!
//! The figure judged is, over all samples, the largest
//! `RSS / (live value bytes + fixed overhead)`, the fixed overhead being
//! the RSS of the same daemon before the first value, with the sessions
//! attached and their rings open; issue 11 bounds it by 1.5. It is also
//! given per phase (issue 17 names phase 0, mixed sizes, and phase 2, the
//! shift from small values to large ones), with the value heaps' own
//! memory (their memfds' allocated pages, read through `/proc/PID/fd`)
//! over the live value bytes. A few gets check that values are whole and
//! the right ones. At the end every object is removed and the daemon
//! sampled once more, idle.

use crate::procs::{self, Proc};
use crate::report::{verdict, ModeReport};
use crate::stats::{number, Rng};
use anyhow::Context;
use hreg::{Client, Handle};
use hreg_proto::locks::lock;
use serde::Serialize;
use std::fmt::Write as _;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Barrier, Mutex};
use std::time::{Duration, Instant};

/// The bound issue 11 sets on the ratio.
pub const BOUND: f64 = 1.5;

/// Largest value written.
const MAX_SIZE: usize = 1 << 20;

/// Client threads, each with its own ring and its own objects.
const THREADS: usize = 2;

/// How long the daemon is left idle after everything is removed.
const SETTLE: Duration = Duration::from_secs(2);

/// One per-second sample of the daemon.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Sample {
    /// Seconds since the churn started.
    pub t: f64,
    /// The phase of sizes then (0 B–1 MiB, 0 B–4 KiB, 64 KiB–1 MiB,
    /// 0 B–1 MiB).
    pub phase: usize,
    pub rss_bytes: u64,
    /// Of which anonymous memory (the daemon's own heap) ...
    pub rss_anon_bytes: u64,
    /// ... and shared memory (the registry's slot tables and value heaps).
    pub rss_shmem_bytes: u64,
    /// Pages allocated in the value heaps' memfds (mapped or not).
    pub heap_bytes: u64,
    pub objects: u64,
    pub value_bytes: u64,
    /// Replaced or removed values not yet given back.
    pub reclaim_pending_bytes: u64,
    /// `rss / (value_bytes + fixed overhead)`.
    pub ratio: f64,
}

/// What the churn found.
#[derive(Debug, Serialize)]
pub struct ChurnReport {
    pub seconds: f64,
    pub threads: usize,
    pub live_target_bytes: u64,
    /// RSS of the empty daemon, sessions attached and rings open.
    pub fixed_overhead_bytes: u64,
    pub inserts: u64,
    pub replaces: u64,
    pub removes: u64,
    /// Gets whose value was checked.
    pub checked_gets: u64,
    pub wrong_values: u64,
    pub errors: Vec<String>,
    pub samples: Vec<Sample>,
    /// The largest ratio of a sample, and when.
    pub max_ratio: f64,
    pub max_ratio_at: f64,
    /// The largest ratio of a sample in each phase.
    pub phase_max_ratio: [f64; 4],
    /// The largest `heap bytes / live value bytes` of a sample in each
    /// phase (samples with at least 16 MiB live).
    pub phase_max_heap_ratio: [f64; 4],
    /// The daemon's peak RSS (`VmHWM`) over (the most live value bytes of a
    /// sample + fixed overhead): catches a peak between samples.
    pub peak_ratio: f64,
    pub peak_rss_bytes: u64,
    /// RSS after every object was removed and the daemon left idle.
    pub idle_after_rss_bytes: u64,
    /// Heap pages allocated then.
    pub idle_after_heap_bytes: u64,
    pub failures: Vec<String>,
}

/// Values are slices of one random pattern, starting at a random place
/// below 1 MiB: different objects hold different bytes.
struct Pattern(Vec<u8>);

impl Pattern {
    fn new() -> Pattern {
        let mut rng = Rng::new(0xC4u64);
        Pattern((0..2 * MAX_SIZE).map(|_| rng.next() as u8).collect())
    }

    fn value(&self, at: usize, len: usize) -> &[u8] {
        &self.0[at..at + len]
    }
}

/// Size classes: 0 is 0 B, class `c` > 0 is [2^(c-1), 2^c), capped at
/// 1 MiB (class 21 is 1 MiB exactly).
const CLASSES: std::ops::RangeInclusive<usize> = 0..=21;

/// The classes a phase of the run draws sizes from: 0 B–1 MiB, 0 B–4 KiB,
/// 64 KiB–1 MiB, 0 B–1 MiB.
const PHASES: [std::ops::RangeInclusive<usize>; 4] = [CLASSES, 0..=13, 17..=21, CLASSES];

/// A size from `classes`, each class as likely.
fn size(rng: &mut Rng, classes: &std::ops::RangeInclusive<usize>) -> usize {
    match classes.start() + rng.below(classes.end() - classes.start() + 1) {
        0 => 0,
        class => {
            let low = 1usize << (class - 1);
            (low + rng.below(low)).min(MAX_SIZE)
        }
    }
}

/// The phase of the run at `elapsed`.
fn phase(elapsed: Duration, phase_len: Duration) -> usize {
    ((elapsed.as_secs_f64() / phase_len.as_secs_f64()) as usize).min(PHASES.len() - 1)
}

/// An object of a thread and where its bytes come from.
#[derive(Clone, Copy)]
struct Object {
    handle: Handle,
    at: usize,
    len: usize,
}

/// What the client threads counted.
#[derive(Default)]
struct Counts {
    inserts: AtomicU64,
    replaces: AtomicU64,
    removes: AtomicU64,
    checked_gets: AtomicU64,
    wrong_values: AtomicU64,
    errors: Mutex<Vec<String>>,
}

impl Counts {
    fn error(&self, what: String) {
        let mut errors = lock(&self.errors);
        if errors.len() < 20 {
            errors.push(what);
        }
    }
}

/// Runs the churn for `seconds` against a fresh hregd in `dir`, keeping
/// about `live_bytes` of values live.
pub fn run(hregd: &Path, dir: &Path, seconds: u64, live_bytes: u64) -> anyhow::Result<ChurnReport> {
    let (mut daemon, socket) = procs::start_hregd(hregd, dir)?;
    let client = Client::connect(&socket).context("connecting to hregd")?;
    let sampler = Client::connect(&socket).context("connecting to hregd")?;
    let pattern = Pattern::new();
    let counts = Counts::default();
    let stop = AtomicBool::new(false);
    let opened = Barrier::new(THREADS + 1);
    let go = Barrier::new(THREADS + 1);
    let per_thread = live_bytes / THREADS as u64;
    let window = Duration::from_secs(seconds);
    let phase_len = (window / PHASES.len() as u32).max(Duration::from_secs(2));
    let started = std::sync::OnceLock::new();
    let (fixed, samples, started) = std::thread::scope(|scope| {
        let threads: Vec<_> = (0..THREADS)
            .map(|t| {
                let (client, pattern, counts, stop) = (&client, &pattern, &counts, &stop);
                let (opened, go, started) = (&opened, &go, &started);
                scope.spawn(move || {
                    // Opens this thread's ring with an object that does not
                    // stay: the daemon is empty when measured.
                    let ring = client
                        .insert(b"x", 0)
                        .and_then(|h| client.remove(h))
                        .map_err(|e| counts.error(format!("opening a ring: {e}")));
                    opened.wait();
                    go.wait();
                    let clock = Clock {
                        started: *started.get().expect("set before go"),
                        phase_len,
                    };
                    if ring.is_ok() {
                        churn(
                            client,
                            pattern,
                            counts,
                            stop,
                            &clock,
                            per_thread,
                            t as u64 + 1,
                        );
                    }
                })
            })
            .collect();
        opened.wait();
        // Whatever the openings left running settles first.
        std::thread::sleep(Duration::from_millis(300));
        let fixed = daemon.rss_bytes();
        let started = *started.get_or_init(Instant::now);
        go.wait();
        let mut samples = Vec::new();
        let clock = Clock { started, phase_len };
        let mut sampled = sample_every_second(&daemon, &sampler, &clock, window, &mut samples);
        stop.store(true, Ordering::Relaxed);
        for t in threads {
            if t.join().is_err() {
                sampled = Err(anyhow::anyhow!("a churn thread panicked"));
            }
        }
        sampled.and(fixed).map(|fixed| (fixed, samples, started))
    })?;
    let seconds = started.elapsed().as_secs_f64();
    let stats = sampler.stats()?;
    let mut failures = Vec::new();
    if stats.objects != 0 {
        failures.push(format!(
            "{} objects left after every thread removed its own",
            stats.objects
        ));
    }
    std::thread::sleep(SETTLE);
    let idle_after = daemon.rss_bytes()?;
    let idle_after_heap = hreg_tests::memory::heap_bytes(daemon.pid());
    let peak_rss = daemon.peak_rss_bytes()?;
    daemon.check_alive()?;
    let mut report = ChurnReport {
        seconds,
        threads: THREADS,
        live_target_bytes: live_bytes,
        fixed_overhead_bytes: fixed,
        inserts: counts.inserts.into_inner(),
        replaces: counts.replaces.into_inner(),
        removes: counts.removes.into_inner(),
        checked_gets: counts.checked_gets.into_inner(),
        wrong_values: counts.wrong_values.into_inner(),
        errors: counts
            .errors
            .into_inner()
            .unwrap_or_else(|e| e.into_inner()),
        max_ratio: 0.0,
        max_ratio_at: 0.0,
        phase_max_ratio: [0.0; 4],
        phase_max_heap_ratio: [0.0; 4],
        peak_ratio: 0.0,
        peak_rss_bytes: peak_rss,
        idle_after_rss_bytes: idle_after,
        idle_after_heap_bytes: idle_after_heap,
        samples,
        failures,
    };
    report.judge();
    Ok(report)
}

/// When the churn started, and how long its phases are.
struct Clock {
    started: Instant,
    phase_len: Duration,
}

/// One client thread: until `stop`, a mix of inserts, replaces, removes
/// and checked gets on its own objects, keeping about `target` value bytes
/// live; then it removes what it has.
fn churn(
    client: &Client,
    pattern: &Pattern,
    counts: &Counts,
    stop: &AtomicBool,
    clock: &Clock,
    target: u64,
    seed: u64,
) {
    let mut rng = Rng::new(seed);
    let mut objects: Vec<Object> = Vec::new();
    let mut live = 0u64;
    let fresh = |rng: &mut Rng| {
        let classes = &PHASES[phase(clock.started.elapsed(), clock.phase_len)];
        (rng.below(MAX_SIZE), size(rng, classes))
    };
    while !stop.load(Ordering::Relaxed) {
        let roll = rng.below(100);
        let pick = (!objects.is_empty()).then(|| rng.below(objects.len()));
        let outcome = match pick {
            Some(i) if roll < 5 => {
                let o = objects[i];
                client.get(o.handle).map(|v| {
                    counts.checked_gets.fetch_add(1, Ordering::Relaxed);
                    if v != pattern.value(o.at, o.len) {
                        counts.wrong_values.fetch_add(1, Ordering::Relaxed);
                        counts.error(format!(
                            "{}: {} bytes, not the {} written",
                            o.handle,
                            v.len(),
                            o.len
                        ));
                    }
                })
            }
            // Over the target (a replace by a larger value may take it
            // there): only removes until under it again.
            Some(i) if live >= target => {
                let o = objects.swap_remove(i);
                live -= o.len as u64;
                client.remove(o.handle).map(|()| {
                    counts.removes.fetch_add(1, Ordering::Relaxed);
                })
            }
            Some(i) if roll < 40 => {
                let (at, len) = fresh(&mut rng);
                let o = &mut objects[i];
                client.replace(o.handle, pattern.value(at, len)).map(|()| {
                    counts.replaces.fetch_add(1, Ordering::Relaxed);
                    live = live - o.len as u64 + len as u64;
                    *o = Object { at, len, ..*o };
                })
            }
            _ => {
                let (at, len) = fresh(&mut rng);
                client.insert(pattern.value(at, len), 0).map(|handle| {
                    counts.inserts.fetch_add(1, Ordering::Relaxed);
                    live += len as u64;
                    objects.push(Object { handle, at, len });
                })
            }
        };
        if let Err(e) = outcome {
            counts.error(format!("{e}"));
            break;
        }
    }
    for o in objects {
        if let Err(e) = client.remove(o.handle) {
            counts.error(format!("removing {} at the end: {e}", o.handle));
        }
    }
}

/// Samples the daemon every second until `window` has passed since
/// `started`.
fn sample_every_second(
    daemon: &Proc,
    sampler: &Client,
    clock: &Clock,
    window: Duration,
    samples: &mut Vec<Sample>,
) -> anyhow::Result<()> {
    let started = clock.started;
    let mut next = started;
    loop {
        next += Duration::from_secs(1);
        let now = Instant::now();
        if next > started + window {
            std::thread::sleep((started + window).saturating_duration_since(now));
            return Ok(());
        }
        std::thread::sleep(next.saturating_duration_since(now));
        let stats = sampler.stats()?;
        let usage = sampler.usage()?;
        samples.push(Sample {
            t: started.elapsed().as_secs_f64(),
            phase: phase(started.elapsed(), clock.phase_len),
            rss_bytes: daemon.rss_bytes()?,
            rss_anon_bytes: daemon.status_bytes("RssAnon")?,
            rss_shmem_bytes: daemon.status_bytes("RssShmem")?,
            heap_bytes: hreg_tests::memory::heap_bytes(daemon.pid()),
            objects: stats.objects,
            value_bytes: stats.value_bytes,
            reclaim_pending_bytes: usage.reclaim_pending,
            ratio: 0.0,
        });
    }
}

impl ChurnReport {
    /// Works out the ratios and what failed.
    fn judge(&mut self) {
        let fixed = self.fixed_overhead_bytes as f64;
        for s in &mut self.samples {
            s.ratio = s.rss_bytes as f64 / (s.value_bytes as f64 + fixed);
            if s.ratio > self.max_ratio {
                self.max_ratio = s.ratio;
                self.max_ratio_at = s.t;
            }
            let phase = s.phase.min(3);
            self.phase_max_ratio[phase] = self.phase_max_ratio[phase].max(s.ratio);
            if s.value_bytes >= 16 << 20 {
                let heap = s.heap_bytes as f64 / s.value_bytes as f64;
                self.phase_max_heap_ratio[phase] = self.phase_max_heap_ratio[phase].max(heap);
            }
        }
        let most_live = self.samples.iter().map(|s| s.value_bytes).max();
        self.peak_ratio = self.peak_rss_bytes as f64 / (most_live.unwrap_or(0) as f64 + fixed);
        if self.samples.is_empty() {
            self.failures
                .push("no sample: run for at least 1 s".to_string());
        }
        if self.max_ratio > BOUND {
            self.failures.push(format!(
                "RSS reached {} × (live value bytes + fixed overhead) at {:.0} s, over {BOUND}",
                number(self.max_ratio),
                self.max_ratio_at
            ));
        }
        if self.wrong_values > 0 {
            self.failures
                .push(format!("{} wrong values", self.wrong_values));
        }
        if !self.errors.is_empty() {
            self.failures
                .push(format!("client errors: {}", self.errors.join("; ")));
        }
    }
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1 << 20) as f64)
}

impl ModeReport for ChurnReport {
    fn passed(&self) -> bool {
        self.failures.is_empty()
    }

    fn markdown(&self) -> String {
        let mut out = String::new();
        let ops = self.inserts + self.replaces + self.removes;
        let _ = writeln!(
            out,
            "churn: {:.0} s, {} threads, sizes log-uniform in phases (0: 0 B–1 MiB, 1: 0 B–4 KiB, 2: 64 KiB–1 MiB, 3: 0 B–1 MiB), about {} live\n",
            self.seconds,
            self.threads,
            mib(self.live_target_bytes)
        );
        let _ = writeln!(out, "| figure | value |\n|---|---:|");
        let rows = [
            (
                "inserts / replaces / removes (per second)",
                format!(
                    "{} / {} / {} ({})",
                    self.inserts,
                    self.replaces,
                    self.removes,
                    number(ops as f64 / self.seconds.max(1e-9))
                ),
            ),
            (
                "checked gets / wrong values",
                format!("{} / {}", self.checked_gets, self.wrong_values),
            ),
            (
                "fixed overhead (empty daemon's RSS)",
                mib(self.fixed_overhead_bytes),
            ),
            (
                "max over samples of RSS / (live value bytes + fixed)",
                format!(
                    "{} (at {:.0} s; bound {BOUND})",
                    number(self.max_ratio),
                    self.max_ratio_at
                ),
            ),
            (
                "max RSS / (live + fixed) per phase: 0 mixed / 1 small / 2 small → large / 3 mixed",
                self.phase_max_ratio.map(number).join(" / "),
            ),
            (
                "max heap pages / live value bytes per phase (samples ≥ 16 MiB live)",
                self.phase_max_heap_ratio.map(number).join(" / "),
            ),
            (
                "peak RSS (VmHWM) / (most live value bytes + fixed)",
                format!("{} ({})", number(self.peak_ratio), mib(self.peak_rss_bytes)),
            ),
            (
                "RSS / heap pages idle after everything was removed",
                format!(
                    "{} / {}",
                    mib(self.idle_after_rss_bytes),
                    mib(self.idle_after_heap_bytes)
                ),
            ),
        ];
        for (figure, value) in rows {
            let _ = writeln!(out, "| {figure} | {value} |");
        }
        let _ = writeln!(
            out,
            "\n| t s | phase | RSS | anon | shmem | heap | objects | live values | awaiting reclamation | ratio |\n|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
        );
        for s in &self.samples {
            let _ = writeln!(
                out,
                "| {:.0} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                s.t,
                s.phase,
                mib(s.rss_bytes),
                mib(s.rss_anon_bytes),
                mib(s.rss_shmem_bytes),
                mib(s.heap_bytes),
                s.objects,
                mib(s.value_bytes),
                mib(s.reclaim_pending_bytes),
                number(s.ratio)
            );
        }
        out.push_str(&verdict("churn", &self.failures));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_cover_zero_to_one_mib() {
        let mut rng = Rng::new(3);
        let sizes: Vec<usize> = (0..100_000).map(|_| size(&mut rng, &CLASSES)).collect();
        assert!(sizes.iter().all(|&s| s <= MAX_SIZE));
        assert!(sizes.contains(&0) && sizes.contains(&MAX_SIZE));
        assert!(sizes.iter().any(|&s| (1..16).contains(&s)));
        assert!(sizes.iter().any(|&s| (4096..8192).contains(&s)));
        let small: Vec<usize> = (0..10_000).map(|_| size(&mut rng, &PHASES[1])).collect();
        assert!(small.iter().all(|&s| s < 8192) && small.contains(&0));
        let large: Vec<usize> = (0..10_000).map(|_| size(&mut rng, &PHASES[2])).collect();
        assert!(large.iter().all(|&s| (65536..=MAX_SIZE).contains(&s)));
    }

    #[test]
    fn phases_follow_the_clock() {
        let len = Duration::from_secs(2);
        assert_eq!(phase(Duration::ZERO, len), 0);
        assert_eq!(phase(Duration::from_millis(2500), len), 1);
        assert_eq!(phase(Duration::from_secs(5), len), 2);
        assert_eq!(phase(Duration::from_secs(60), len), 3);
    }

    #[test]
    fn judge_takes_the_worst_sample() {
        let sample = |t: f64, rss: u64, live: u64| Sample {
            t,
            phase: 0,
            rss_bytes: rss,
            rss_anon_bytes: 0,
            rss_shmem_bytes: 0,
            heap_bytes: 0,
            objects: 1,
            value_bytes: live,
            reclaim_pending_bytes: 0,
            ratio: 0.0,
        };
        let mut report = ChurnReport {
            seconds: 2.0,
            threads: 2,
            live_target_bytes: 100,
            fixed_overhead_bytes: 100,
            inserts: 1,
            replaces: 0,
            removes: 0,
            checked_gets: 0,
            wrong_values: 0,
            errors: Vec::new(),
            samples: vec![sample(1.0, 200, 100), sample(2.0, 400, 100)],
            max_ratio: 0.0,
            max_ratio_at: 0.0,
            phase_max_ratio: [0.0; 4],
            phase_max_heap_ratio: [0.0; 4],
            peak_ratio: 0.0,
            peak_rss_bytes: 400,
            idle_after_rss_bytes: 100,
            idle_after_heap_bytes: 0,
            failures: Vec::new(),
        };
        report.judge();
        assert_eq!((report.max_ratio, report.max_ratio_at), (2.0, 2.0));
        assert!(!report.passed());
        report.samples.truncate(1);
        report.failures.clear();
        report.max_ratio = 0.0;
        report.judge();
        assert!(report.passed(), "{:?}", report.failures);
    }
}
