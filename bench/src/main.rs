//! hreg-bench: the benchmark harness of issues 4 and 11. It runs the origin
//! experiment in process, the shared-memory floor, hreg through its rings,
//! Redis on the same operations, the scale and idle checks, and reads
//! without a round trip side by side with the in-process maps ([`reads`]),
//! all in one run, then prints a Markdown table and the targets with their
//! verdicts, and writes JSON and an SVG plot on request. Instead of the
//! sections, `--soak SECONDS` runs the soak ([`soak`]), `--attacks SECONDS`
//! every attack of the hostile-client suite at once against an honest
//! client ([`attacks`]), `--burst N` N client processes attaching at once
//! after the sequential attach probe ([`burst`]), `--churn SECONDS` the
//! daemon's memory under churn ([`churn`]), and `--restart N` the time from
//! stop to serving again with N objects kept ([`restart`]).
//!
//! This file owns the command line, the order of the sections, their sizes
//! (quick or full) and the targets; each section lives in its own module.

mod attacks;
mod burst;
mod churn;
mod floor;
mod honest;
mod inproc;
mod outproc;
mod procs;
mod readloop;
mod reads;
mod reads_worker;
mod redis;
mod report;
mod restart;
mod rings;
mod scale;
mod soak;
mod soak_worker;
mod stats;
mod worker;

use anyhow::Context;
use clap::Parser;
use outproc::{Case, Kind, Timing};
use procs::WorkDir;
use readloop::Placement;
use report::{ratio, ModeReport, Other, Report, Row, Target, MOPS, P50};
use stats::{Measured, Summary};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;
use worker::Worker;

#[derive(Debug, Parser)]
#[command(
    name = "hreg-bench",
    about = "hreg benchmark harness (issues 4 and 11)"
)]
struct Args {
    /// Small sizes for a smoke test (well under 60 s; no 10^7 level).
    #[arg(long)]
    quick: bool,
    /// Write every figure as JSON to FILE.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Write an SVG plot to FILE (the sections and the soak).
    #[arg(long, value_name = "FILE", conflicts_with_all = ["attacks", "burst", "churn"])]
    plot: Option<PathBuf>,
    /// The hregd binary [default: `hregd` next to this executable].
    #[arg(long, value_name = "PATH")]
    hregd: Option<PathBuf>,
    /// The redis-server binary [default: `redis-server` on $PATH; skipped if absent].
    #[arg(long, value_name = "PATH", default_value = "redis-server")]
    redis_server: String,
    /// Run only these sections (1 in-process, 2 floor, 3 rings, 4 redis,
    /// 5 scale, 6 idle, 7 reads), e.g. `--only 2,3`; targets need their
    /// sections.
    #[arg(long, value_delimiter = ',', value_name = "N,..")]
    only: Vec<u8>,
    /// Judge this run's writes (section 3: insert, replace and remove p50
    /// and batch-64 throughput) against FILE, the `--json` of an earlier
    /// run (e.g. of the version before); with several files, against the
    /// median of theirs.
    #[arg(long, value_delimiter = ',', value_name = "FILE,..")]
    baseline: Vec<PathBuf>,
    /// Memory under churn instead: for SECONDS, inserts, replaces and
    /// removes of 0 B to 1 MiB values against one hregd, its RSS sampled
    /// every second against the live value bytes. Exits non-zero when RSS
    /// passes 1.5 × (live value bytes + fixed overhead), on a wrong value
    /// or an error.
    #[arg(long, value_name = "SECONDS",
          conflicts_with_all = ["quick", "only", "soak", "attacks", "burst", "baseline"],
          value_parser = clap::value_parser!(u64).range(1..))]
    churn: Option<u64>,
    /// With --churn: live value bytes to keep, in MiB.
    #[arg(long, value_name = "MIB", default_value_t = 256, requires = "churn",
          value_parser = clap::value_parser!(u64).range(1..=3072))]
    churn_live_mib: u64,
    /// Soak instead: for SECONDS, client processes attach, run checked mixed
    /// operations, detach or get SIGKILLed, over and over, while the daemon
    /// is sampled every second. Exits non-zero on a wrong value, an
    /// unexpected error, a warning or error in the daemon's log, a leak, or
    /// the daemon's death.
    #[arg(long, value_name = "SECONDS", conflicts_with_all = ["quick", "only"],
          value_parser = clap::value_parser!(u64).range(1..))]
    soak: Option<u64>,
    /// Soak client processes running at a time.
    #[arg(long, value_name = "N", default_value_t = 4, requires = "soak",
          value_parser = clap::value_parser!(u64).range(1..=256))]
    soak_clients: u64,
    /// All attacks at once instead: every attack of the hostile-client
    /// suite, each in its own `hreg-attack` process, for SECONDS against one
    /// hregd while an honest client works, after a baseline without them.
    /// Exits non-zero if the honest client sees a wrong value or an error,
    /// an attack does not get going, or the daemon dies.
    #[arg(long, value_name = "SECONDS", conflicts_with_all = ["quick", "only", "soak"],
          value_parser = clap::value_parser!(u64).range(1..))]
    attacks: Option<u64>,
    /// With --attacks: run only these attacks (e.g. `--attack
    /// list-flood,hog`, to see what one costs) [default: all].
    #[arg(long, value_delimiter = ',', value_name = "NAME,..", requires = "attacks",
          value_parser = attack_name)]
    attack: Vec<hreg_tests::attacks::Attack>,
    /// With --attacks: exit non-zero when issue 18's bounds (the honest
    /// client keeps half its baseline ops/s, attach p99 within 10 ms) are
    /// missed, not only on a wrong value, an error or the daemon's death.
    #[arg(long, requires = "attacks")]
    fail_on_targets: bool,
    /// The hreg-attack binary [default: `hreg-attack` next to this executable].
    #[arg(long, value_name = "PATH")]
    hreg_attack: Option<PathBuf>,
    /// A burst instead: the sequential attach probe, then N client processes
    /// attach at once, each doing one insert or get. Exits non-zero if any
    /// of them gets no session or fails its operation.
    #[arg(long, value_name = "N", conflicts_with_all = ["quick", "only", "soak", "attacks"],
          value_parser = clap::value_parser!(u64).range(1..=100_000))]
    burst: Option<u64>,
    /// With --burst: another uid (65534; the bench must be root) holds M
    /// connections that never say HELLO for the whole burst.
    #[arg(long, value_name = "M", requires = "burst",
          value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    silent: Option<u64>,
    /// With --burst: hregd's `--max-sessions` (its default, 1024, is too
    /// few for a burst of 1024 or more).
    #[arg(long, value_name = "N", requires = "burst",
          value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    max_sessions: Option<u64>,
    /// Restarts instead: N objects kept in a --state-dir, hregd stopped
    /// (SIGTERM) and killed (SIGKILL) and started again, 3 times each;
    /// times stop to serving again. Exits non-zero if an object is lost.
    #[arg(long, value_name = "N", conflicts_with_all = ["quick", "only", "soak", "attacks", "burst"],
          value_parser = clap::value_parser!(u64).range(1..=100_000_000))]
    restart: Option<u64>,
    /// What others' rings cost a writer instead: an honest client's
    /// insert+release pairs/s alone, while another uid holds as many rings
    /// as the daemon lets it (idle, then each sending a request every 20
    /// ms), and while its own uid holds 4096 idle rings; SECONDS per phase,
    /// three rounds. Exits non-zero below issue 18's targets.
    #[arg(long, value_name = "SECONDS", conflicts_with_all = ["quick", "only", "soak", "attacks", "burst", "restart", "churn"],
          value_parser = clap::value_parser!(u64).range(1..))]
    rings: Option<u64>,
    /// (internal) Run as a worker process of a section (JSON).
    #[arg(long, hide = true, value_name = "JSON")]
    worker: Option<String>,
}

/// An attack of the hostile-client suite, by name.
fn attack_name(name: &str) -> Result<hreg_tests::attacks::Attack, String> {
    hreg_tests::attacks::Attack::from_name(name).ok_or_else(|| {
        let known: Vec<&str> = hreg_tests::attacks::Attack::ALL
            .iter()
            .map(|a| a.name())
            .collect();
        format!("unknown attack `{name}` (known: {})", known.join(", "))
    })
}

impl Args {
    fn runs(&self, section: u8) -> bool {
        self.only.is_empty() || self.only.contains(&section)
    }
}

/// Sizes of one run.
struct Sizes {
    mode: &'static str,
    inproc: inproc::Plan,
    floor_trips: usize,
    reps: usize,
    timing: Timing,
    scale_levels: Vec<usize>,
    idle_window: Duration,
    reads: reads::Plan,
}

impl Sizes {
    fn new(quick: bool) -> Sizes {
        if quick {
            Sizes {
                mode: "quick",
                inproc: inproc::Plan {
                    live_keys: 100_000,
                    ops_per_thread: 200_000,
                    reps: 3,
                },
                floor_trips: 100_000,
                reps: 3,
                timing: Timing {
                    per_rep: Duration::from_millis(60),
                    reps: 3,
                },
                scale_levels: vec![1_000, 1_000_000],
                idle_window: Duration::from_secs(1),
                reads: reads::Plan {
                    objects_16: 1_000_000,
                    objects_4k: 1 << 15,
                    floor_slots: 1 << 20,
                    per_rep: Duration::from_millis(20),
                    reps: 3,
                    cpu_window: Duration::from_secs(2),
                    ring_cpu: false,
                },
            }
        } else {
            Sizes {
                mode: "full",
                inproc: inproc::Plan {
                    live_keys: 1_000_000,
                    ops_per_thread: 2_000_000,
                    reps: 5,
                },
                floor_trips: 1_000_000,
                reps: 5,
                timing: Timing {
                    per_rep: Duration::from_millis(400),
                    reps: 5,
                },
                scale_levels: vec![1_000, 1_000_000, 10_000_000],
                idle_window: Duration::from_secs(5),
                reads: reads::Plan {
                    objects_16: 1_000_000,
                    objects_4k: 1 << 17,
                    floor_slots: 1 << 20,
                    per_rep: Duration::from_millis(100),
                    reps: 5,
                    cpu_window: Duration::from_secs(10),
                    ring_cpu: true,
                },
            }
        }
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Some(json) = &args.worker {
        return Worker::run(json);
    }
    let Some(hregd) = procs::find_hregd(args.hregd.as_deref()) else {
        eprintln!(
            "hreg-bench: no hregd binary next to this executable; build it first:\n    {}\n\
             (or pass --hregd PATH)",
            procs::build_command("hregd", Some("hregd"))
        );
        return ExitCode::from(2);
    };
    let attack_bin = || {
        let found = procs::find_hreg_attack(args.hreg_attack.as_deref());
        if found.is_none() {
            eprintln!(
                "hreg-bench: no hreg-attack binary next to this executable; build it first:\n    {}\n\
                 (or pass --hreg-attack PATH)",
                procs::build_command("hreg-tests", Some("hreg-attack"))
            );
        }
        found
    };
    let result = if let Some(seconds) = args.soak {
        run_soak(&args, &hregd, seconds)
    } else if let Some(seconds) = args.churn {
        let live = args.churn_live_mib << 20;
        eprintln!(
            "hreg-bench: churn for {seconds} s, about {} MiB live ({})",
            args.churn_live_mib,
            hregd.display()
        );
        run_mode(&args, "churn", |dir| {
            churn::run(&hregd, dir.path(), seconds, live)
        })
    } else if let Some(seconds) = args.attacks {
        let Some(attack_bin) = attack_bin() else {
            return ExitCode::from(2);
        };
        run_attacks(&args, &hregd, &attack_bin, seconds)
    } else if let Some(processes) = args.burst {
        if args.silent.is_some() && !procs::is_root() {
            eprintln!("hreg-bench: --silent needs root: another uid (65534) holds the connections");
            return ExitCode::from(2);
        }
        let attack_bin = match args.silent {
            Some(_) => match attack_bin() {
                Some(path) => Some(path),
                None => return ExitCode::from(2),
            },
            None => None,
        };
        run_burst(&args, &hregd, attack_bin.as_deref(), processes as usize)
    } else if let Some(seconds) = args.rings {
        run_mode(&args, "rings run", |dir| {
            hreg_tests::raise_fd_limit(procs::BENCH_NOFILE);
            rings::run(&hregd, dir, seconds)
        })
    } else if let Some(objects) = args.restart {
        run_mode(&args, "restart run", |dir| {
            restart::run(&hregd, dir.path(), objects as usize)
        })
    } else {
        run(&args, hregd).map(|()| true)
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("hreg-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `--attacks SECONDS`; whether the run passed.
fn run_attacks(args: &Args, hregd: &Path, attack_bin: &Path, seconds: u64) -> anyhow::Result<bool> {
    eprintln!(
        "hreg-bench: every attack at once for {seconds} s ({}, {})",
        hregd.display(),
        attack_bin.display()
    );
    run_mode(args, "attacks run", |dir| {
        hreg_tests::raise_fd_limit(procs::BENCH_NOFILE);
        let chosen = match args.attack.as_slice() {
            [] => hreg_tests::attacks::Attack::ALL.to_vec(),
            some => some.to_vec(),
        };
        attacks::run(
            hregd,
            attack_bin,
            dir,
            seconds,
            &chosen,
            args.fail_on_targets,
        )
    })
}

/// `--burst N`; whether every process was served.
fn run_burst(
    args: &Args,
    hregd: &Path,
    attack_bin: Option<&Path>,
    processes: usize,
) -> anyhow::Result<bool> {
    run_mode(args, "burst", |dir| {
        hreg_tests::raise_fd_limit(procs::BENCH_NOFILE);
        burst::run(
            hregd,
            attack_bin,
            dir,
            processes,
            args.silent.map(|m| m as usize),
            args.max_sessions.map(|m| m as usize),
        )
    })
}

/// `--soak SECONDS`; whether the soak passed.
fn run_soak(args: &Args, hregd: &Path, seconds: u64) -> anyhow::Result<bool> {
    eprintln!(
        "hreg-bench: soak for {seconds} s, {} clients at a time ({})",
        args.soak_clients,
        hregd.display()
    );
    run_mode(args, "soak", |dir| {
        soak::run(
            hregd,
            dir.path(),
            Duration::from_secs(seconds),
            args.soak_clients as usize,
        )
    })
}

/// Runs a mode other than the sections in a fresh work directory, prints
/// its report, writes its JSON (and plot), and keeps the directory (the
/// daemon's and the children's logs) when the mode failed; whether it
/// passed.
fn run_mode<R: ModeReport>(
    args: &Args,
    what: &str,
    mode: impl FnOnce(&WorkDir) -> anyhow::Result<R>,
) -> anyhow::Result<bool> {
    procs::install_signal_cleanup()?;
    let mut dir = WorkDir::create()?;
    let report = mode(&dir)
        .inspect_err(|_| dir.keep())
        .with_context(|| format!("{what} (logs kept in {})", dir.path().display()))?;
    print!("{}", report.markdown());
    write_outputs(args, &serde_json::to_string_pretty(&report)?, || {
        report.svg()
    })?;
    if !report.passed() {
        dir.keep();
        eprintln!(
            "hreg-bench: the {what} failed; hregd.log and the children's logs are in {}",
            dir.path().display()
        );
    }
    Ok(report.passed())
}

/// Writes `--json` and `--plot` when asked (the plot if there is one).
fn write_outputs(
    args: &Args,
    json: &str,
    svg: impl FnOnce() -> Option<String>,
) -> anyhow::Result<()> {
    if let Some(path) = &args.json {
        std::fs::write(path, json).with_context(|| format!("writing {}", path.display()))?;
    }
    if let (Some(path), Some(svg)) = (&args.plot, svg()) {
        std::fs::write(path, svg).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

fn run(args: &Args, hregd: PathBuf) -> anyhow::Result<()> {
    procs::install_signal_cleanup()?;
    let sizes = Sizes::new(args.quick);
    let baseline = if args.baseline.is_empty() {
        None
    } else {
        Some(reads::Baseline::load(&args.baseline)?)
    };
    let mut report = Report {
        hardware: report::hardware(),
        mode: sizes.mode,
        rows: Vec::new(),
        targets: Vec::new(),
        notes: Vec::new(),
    };
    eprintln!("hreg-bench ({} run) on {}", sizes.mode, report.hardware);

    let inproc = if args.runs(1) {
        eprintln!("[1/7] in process");
        inproc::run(sizes.inproc)
    } else {
        Vec::new()
    };
    for outcome in inproc {
        for (threads, measured) in outcome.by_threads {
            report.rows.push(Row {
                section: "1 in-process",
                case: format!("{}, {threads} thr", outcome.name),
                key: format!("inproc/{}/{threads}", outcome.name),
                measured,
                other: None,
            });
        }
    }

    if args.runs(2) {
        eprintln!("[2/7] floor");
        for (placement, key) in [
            (Placement::Unpinned, "floor"),
            (Placement::Pinned, "floor/pinned"),
        ] {
            let floor = floor::run(sizes.floor_trips, sizes.reps, placement)?;
            report.rows.push(Row {
                section: "2 floor",
                case: format!("shm ping-pong round trip, {}", placement.name()),
                key: key.into(),
                measured: Measured::from_reps(&floor),
                other: None,
            });
        }
    }

    let dir = WorkDir::create()?;
    if args.runs(3) || args.runs(6) {
        rings_and_idle(args, &sizes, &hregd, &dir, &mut report)?;
    }
    if args.runs(4) {
        redis_section(args, &sizes, &dir, &mut report)?;
    }
    if args.runs(5) {
        scale_section(&sizes, &hregd, &dir, &mut report)?;
    }
    if args.runs(7) {
        let (daemon, socket) = procs::start_hregd(&hregd, dir.path())?;
        reads::run(&sizes.reads, &daemon, &socket, &dir, &mut report)?;
    }
    drop(dir);

    report.targets = targets(&report, &sizes);
    report
        .targets
        .extend(reads::targets(&report, baseline.as_ref()));
    print!("{}", report.markdown());
    write_outputs(args, &serde_json::to_string_pretty(&report)?, || {
        Some(report.svg())
    })
}

/// Sections 3 and 6 on one daemon: the ring cases, then the idle check
/// with fresh sessions.
fn rings_and_idle(
    args: &Args,
    sizes: &Sizes,
    hregd: &Path,
    dir: &WorkDir,
    report: &mut Report,
) -> anyhow::Result<()> {
    let (daemon, socket) = procs::start_hregd(hregd, dir.path())?;
    if args.runs(3) {
        eprintln!("[3/7] hreg through the rings ({})", hregd.display());
        let client = hreg::Client::connect(&socket).context("connecting to hregd")?;
        for size in [16, 4096] {
            let keys = outproc::hreg_keys(&client, size)?;
            for case in outproc::hreg_cases().into_iter().filter(|c| c.size == size) {
                let reps = outproc::hreg_case(&client, &keys, case, sizes.timing)?;
                report
                    .rows
                    .push(case_row("3 hreg rings", "hreg", case, &reps));
            }
            outproc::remove_all(&client, &mut keys.clone())?;
        }
    }
    if args.runs(6) {
        eprintln!("[6/7] idle ({:?})", sizes.idle_window);
        let share = scale::idle(&daemon, &socket, 2, sizes.idle_window)?;
        report.rows.push(Row {
            section: "6 idle",
            case: "hregd CPU, 2 sessions × 2 threads attached, quiet".into(),
            key: "idle".into(),
            measured: Measured::default(),
            other: Some(Other {
                label: "% of one core",
                value: single(share * 100.0),
            }),
        });
    }
    Ok(())
}

/// Section 4, skipped with a note when redis-server is not installed.
fn redis_section(
    args: &Args,
    sizes: &Sizes,
    dir: &WorkDir,
    report: &mut Report,
) -> anyhow::Result<()> {
    let Some(binary) = procs::which(&args.redis_server) else {
        report.notes.push(format!(
            "section 4 skipped: `{}` not found (install redis-server to compare)",
            args.redis_server
        ));
        return Ok(());
    };
    eprintln!("[4/7] redis ({})", binary.display());
    let (_redis, socket) = procs::start_redis(&binary, dir.path())?;
    let mut conn = redis::Redis::connect(&socket)?;
    for size in [16, 4096] {
        let keys = outproc::redis_keys(&mut conn, size)?;
        for case in outproc::redis_cases()
            .into_iter()
            .filter(|c| c.size == size)
        {
            let reps = outproc::redis_case(&mut conn, &keys, case, sizes.timing)?;
            report.rows.push(case_row("4 redis", "redis", case, &reps));
        }
    }
    Ok(())
}

/// Section 5 on a fresh daemon, so its memory growth is the objects' alone.
fn scale_section(
    sizes: &Sizes,
    hregd: &Path,
    dir: &WorkDir,
    report: &mut Report,
) -> anyhow::Result<()> {
    eprintln!("[5/7] scale {:?}", sizes.scale_levels);
    let (daemon, socket) = procs::start_hregd(hregd, dir.path())?;
    let client = hreg::Client::connect(&socket)?;
    let levels = scale::run(
        &daemon,
        &client,
        &sizes.scale_levels,
        sizes.timing.per_rep,
        sizes.timing.reps,
    )?;
    for level in levels {
        report.rows.push(Row {
            section: "5 scale",
            case: format!("get 16 B, {} live objects", level.objects),
            key: format!("scale/{}", level.objects),
            measured: level.get,
            other: Some(Other {
                label: "daemon bytes/object beyond value",
                value: single(level.bytes_per_object),
            }),
        });
    }
    Ok(())
}

pub fn single(value: f64) -> Summary {
    Summary {
        median: value,
        min: value,
        max: value,
    }
}

pub fn case_key(product: &str, kind: Kind, size: usize, threads: usize, batch: usize) -> String {
    format!("{product}/{}/{size}/{threads}/{batch}", kind.name())
}

fn case_row(section: &'static str, product: &str, case: Case, reps: &[stats::Rep]) -> Row {
    let op = match (product, case.kind) {
        ("redis", Kind::Get) => "GET",
        ("redis", _) => "SET",
        (_, kind) => kind.name(),
    };
    let grouping = if product == "redis" {
        "pipeline"
    } else {
        "batch"
    };
    Row {
        section,
        case: format!(
            "{op} {} B, {} thr, {grouping} {}",
            case.size, case.threads, case.batch
        ),
        key: case_key(product, case.kind, case.size, case.threads, case.batch),
        measured: Measured::from_reps(reps),
        other: None,
    }
}

/// Every target of issue 4 against this run's figures.
fn targets(report: &Report, sizes: &Sizes) -> Vec<Target> {
    let get = |key: &str, pick| report.median(key, pick);
    let mut out = Vec::new();
    for (floor, how) in [("floor", ""), ("floor/pinned", ", pinned")] {
        for size in [16, 4096] {
            out.push(Target::new(
                format!("get {size} B unbatched p50 / shm ping-pong p50{how}"),
                ratio(
                    get(&case_key("hreg", Kind::Get, size, 1, 1), P50),
                    get(floor, P50),
                ),
                2.0,
                true,
                "",
            ));
        }
    }
    let redis_missing = report
        .row(&case_key("redis", Kind::Get, 16, 1, 1))
        .is_none();
    let redis_note = if redis_missing {
        "redis-server not installed"
    } else {
        ""
    };
    for size in [16, 4096] {
        for (batch, bound) in [(1, 30.0), (64, 10.0)] {
            out.push(Target::new(
                format!("hreg get {size} B 1 thr batch {batch} / redis GET pipeline {batch} (throughput)"),
                ratio(
                    get(&case_key("hreg", Kind::Get, size, 1, batch), MOPS),
                    get(&case_key("redis", Kind::Get, size, 1, batch), MOPS),
                ),
                bound,
                false,
                redis_note,
            ));
        }
    }
    let reg = get("inproc/hreg Registry/2", MOPS);
    out.push(Target::new(
        "registry 2 thr / dashmap 2 thr (in process)",
        ratio(reg, get("inproc/dashmap/2", MOPS)),
        1.5,
        false,
        "",
    ));
    out.push(Target::new(
        "registry 2 thr / 64-shard map 2 thr (in process)",
        ratio(reg, get("inproc/64-shard map/2", MOPS)),
        2.0,
        false,
        "",
    ));
    let top = sizes.scale_levels.last().copied().unwrap_or(0);
    let at = if top == 10_000_000 {
        String::new()
    } else {
        format!("quick run: measured at {top} objects, not 10^7")
    };
    out.push(Target::new(
        "get p50 at 10^7 objects / at 10^3",
        ratio(get(&format!("scale/{top}"), P50), get("scale/1000", P50)),
        2.0,
        true,
        &at,
    ));
    out.push(Target::new(
        "daemon bytes per object beyond the value, at 10^7",
        report.other_median(&format!("scale/{top}")),
        48.0,
        true,
        &at,
    ));
    out.push(Target::new(
        "idle daemon CPU, % of one core",
        report.other_median("idle"),
        1.0,
        true,
        "",
    ));
    out
}
