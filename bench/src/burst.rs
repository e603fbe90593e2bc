//! `hreg-bench --burst N [--silent M]`: N client processes attach at once,
//! and the sequential attach probe.
//!
//! The burst: N processes (this executable as a worker, [`client`]) start,
//! say they are ready and block on a pipe; when the bench closes it they
//! all connect at once, do one insert or get, report their attach latency
//! (connect + HELLO) and first-op latency on a shared pipe, and keep their
//! session until the bench lets them go, so the daemon holds all N at
//! once. With `--silent M`, another uid holds M connections that never say
//! HELLO (`hreg-attack SOCKET silent M`) for the whole burst.
//!
//! The probe: connect + first get, one after another, against a plain Unix
//! `SOCK_SEQPACKET` connect + one request/reply of the sizes of HELLO and
//! WELCOME with a trivial echo thread, alternated in the same run.

use crate::procs::{self, Lines, Proc, HREGD_NOFILE, OTHER_UIDS};
use crate::report::{verdict, ModeReport};
use crate::stats::{micros, number, Latency};
use crate::worker::Worker;
use anyhow::{bail, Context};
use hreg::{Client, Handle};
use hreg_proto::control::{ControlRequest, Reply};
use hreg_tests::attacks::Held;
use hreg_tests::checked_value;
use rustix::fd::{AsFd, AsRawFd, OwnedFd};
use rustix::net::{AddressFamily, RecvFlags, SendFlags, SocketAddrUnix, SocketFlags, SocketType};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Sequential attaches the probe times (and as many plain round trips).
pub const PROBE_ROUNDS: usize = 300;
/// Issue 14's target for connect + first get, p50.
const PROBE_TARGET_NS: f64 = 100_000.0;
/// The uid holding the silent connections.
const SILENT_UID: u32 = OTHER_UIDS[0];
/// Size of the values burst processes insert and get.
const VALUE_LEN: usize = 16;
/// Failures quoted in full in the report.
const QUOTED: usize = 10;

/// What one burst process is to do.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ClientPlan {
    pub socket: PathBuf,
    pub index: usize,
    /// Get this object (and check it); `None`: insert one.
    pub get: Option<Target>,
}

/// An object burst processes read: `checked_value(seed, VALUE_LEN)`.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub struct Target {
    pub handle: u64,
    pub seed: u64,
}

/// What one burst process reports.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ClientResult {
    pub index: usize,
    pub attach_ns: Option<u64>,
    pub first_op_ns: Option<u64>,
    pub error: Option<String>,
}

/// Writes one line to stdout in one `write`: lines of many processes
/// share the pipe, and a write of less than `PIPE_BUF` bytes is atomic.
fn say(line: &str) -> anyhow::Result<()> {
    let line = format!("{line}\n");
    anyhow::ensure!(line.len() < libc::PIPE_BUF, "line too long for one write");
    let written = rustix::io::write(std::io::stdout(), line.as_bytes())?;
    anyhow::ensure!(written == line.len(), "short write");
    Ok(())
}

/// Blocks until `fd` reaches its end (the bench closed the other side).
fn wait_for_end(fd: impl AsFd) {
    let mut buf = [0u8; 64];
    loop {
        match rustix::io::read(&fd, &mut buf) {
            Ok(0) => return,
            Ok(_) | Err(rustix::io::Errno::INTR) => continue,
            Err(_) => return,
        }
    }
}

/// The descriptor a burst process waits on before it exits (the end of
/// its hold), set up by the bench.
const HOLD_FD: i32 = 3;

/// One burst process: ready, go, attach, one op, report, hold, exit.
pub fn client(plan: &ClientPlan) -> anyhow::Result<()> {
    say(&format!("ready {}", plan.index))?;
    wait_for_end(std::io::stdin());
    let began = Instant::now();
    let mut result = ClientResult {
        index: plan.index,
        attach_ns: None,
        first_op_ns: None,
        error: None,
    };
    let client = match Client::connect_named(Some(&plan.socket), "hreg-burst") {
        Ok(client) => client,
        Err(e) => {
            result.error = Some(format!("attach: {e}"));
            return say(&format!("done {}", serde_json::to_string(&result)?));
        }
    };
    result.attach_ns = Some(began.elapsed().as_nanos() as u64);
    let began = Instant::now();
    let outcome = match plan.get {
        Some(target) => first_get(&client, target),
        None => client
            .insert(&checked_value(plan.index as u64 * 2, VALUE_LEN), 0)
            .map(drop)
            .map_err(|e| format!("insert: {e}")),
    };
    result.first_op_ns = Some(began.elapsed().as_nanos() as u64);
    result.error = outcome.err();
    say(&format!("done {}", serde_json::to_string(&result)?))?;
    // SAFETY: the bench opens HOLD_FD in every burst process and nothing
    // here closes it; if it is not open, read fails and we exit at once.
    wait_for_end(unsafe { rustix::fd::BorrowedFd::borrow_raw(HOLD_FD) });
    drop(client);
    Ok(())
}

/// Gets `target` and checks its value.
fn first_get(client: &Client, target: Target) -> Result<(), String> {
    let handle = Handle::new(target.handle).ok_or("target handle 0")?;
    let value = client.get(handle).map_err(|e| format!("get: {e}"))?;
    if value != checked_value(target.seed, VALUE_LEN) {
        return Err(format!("get: wrong value ({} bytes)", value.len()));
    }
    Ok(())
}

/// The sequential probe's figures.
#[derive(Debug, Default, Serialize)]
pub struct Probe {
    pub rounds: usize,
    /// `Client::connect` + the first `get` (which opens the thread's ring).
    pub connect_and_get: Latency,
    pub attach: Latency,
    pub first_get: Latency,
    /// A plain Unix connect + one request/reply of the same sizes.
    pub plain: Latency,
    pub request_bytes: usize,
    pub reply_bytes: usize,
    pub ratio_p50: f64,
    pub ratio_p99: f64,
}

/// The burst's figures.
#[derive(Debug, Default, Serialize)]
pub struct Burst {
    pub processes: usize,
    pub served: usize,
    pub failures: usize,
    /// Failure messages and how many processes got each.
    pub failure_kinds: BTreeMap<String, usize>,
    /// Processes that ended without a result, or not cleanly.
    pub crashed: Vec<String>,
    pub attach: Latency,
    pub first_op: Latency,
    /// From the release to the last result.
    pub wall_seconds: f64,
    /// How long starting the processes took (not part of the burst).
    pub spawn_seconds: f64,
    /// Sessions the daemon held once every process had reported.
    pub sessions_at_once: u64,
}

/// What the silent connections' holder saw.
#[derive(Debug, Default, Serialize)]
pub struct Silent {
    pub uid: u32,
    pub asked: usize,
    pub connected: usize,
    /// At the end of the burst.
    pub open: usize,
    pub refused_quota: usize,
    pub refused_otherwise: usize,
    pub closed_silently: usize,
    pub quota_message: String,
}

/// The whole run.
#[derive(Debug, Serialize)]
pub struct BurstReport {
    pub hardware: String,
    pub mode: &'static str,
    pub hregd_flags: Vec<String>,
    pub hregd_nofile: u64,
    pub max_sessions: Option<u64>,
    pub as_root: bool,
    pub probe: Probe,
    pub burst: Burst,
    pub silent: Option<Silent>,
    pub notes: Vec<String>,
    pub failures: Vec<String>,
}

/// Runs the probe, then a burst of `processes` (with `silent` connections
/// held by another uid) against a fresh hregd in `dir`.
pub fn run(
    hregd: &Path,
    attack_bin: Option<&Path>,
    dir: &procs::WorkDir,
    processes: usize,
    silent: Option<usize>,
    max_sessions: Option<usize>,
) -> anyhow::Result<BurstReport> {
    let as_root = procs::is_root();
    let mut flags: Vec<String> = Vec::new();
    if let Some(max) = max_sessions {
        flags.extend(["--max-sessions".into(), max.to_string()]);
    }
    if silent.is_some() {
        dir.open_to_others()?;
        flags.extend(["--socket-mode".into(), "666".into()]);
    }
    let flag_refs: Vec<&str> = flags.iter().map(String::as_str).collect();
    let mut report = BurstReport {
        hardware: crate::report::hardware(),
        mode: "burst",
        hregd_flags: flags.clone(),
        hregd_nofile: procs::nofile_within_reach(HREGD_NOFILE),
        max_sessions: procs::hregd_setting(hregd, &flag_refs, "max_sessions"),
        as_root,
        probe: Probe::default(),
        burst: Burst::default(),
        silent: None,
        notes: Vec::new(),
        failures: Vec::new(),
    };
    if !as_root {
        report.notes.push(
            "not root: the burst is subject to the per-uid shares (connections read at \
             once, uid_max_sessions)"
                .into(),
        );
    }
    if let Some(max) = report.max_sessions {
        if processes as u64 >= max {
            report.notes.push(format!(
                "max_sessions = {max} < {} (the burst and the bench's own session): raise it \
                 with --max-sessions",
                processes + 1
            ));
        }
    }
    let (mut daemon, socket) =
        procs::start_hregd_with(hregd, dir.path(), &flag_refs, Some(HREGD_NOFILE))?;
    let bench = Client::connect_named(Some(&socket), "hreg-bench")?;
    let seed = 0x7a96_e700;
    let target = Target {
        handle: bench.insert(&checked_value(seed, VALUE_LEN), 0)?.get(),
        seed,
    };

    eprintln!("[burst] sequential probe, {PROBE_ROUNDS} rounds");
    report.probe = probe(&socket, dir.path(), &bench, target)?;

    let holder = match silent {
        Some(count) => {
            let binary = attack_bin.context("no hreg-attack binary for --silent")?;
            eprintln!("[burst] uid {SILENT_UID} holds {count} silent connections");
            Some(SilentHolder::start(binary, &socket, dir.path(), count)?)
        }
        None => None,
    };
    eprintln!("[burst] {processes} processes at once");
    report.burst = burst(&socket, dir.path(), processes, target, &bench)?;
    if let Some(holder) = holder {
        report.silent = Some(holder.stop()?);
    }
    if let Some(status) = daemon.try_wait()? {
        report.failures.push(format!("hregd died: {status}"));
    }
    let b = &report.burst;
    if b.failures > 0 || !b.crashed.is_empty() {
        report.failures.push(format!(
            "{} of {} processes got no session or failed their first op; {} ended badly",
            b.failures,
            b.processes,
            b.crashed.len()
        ));
    }
    Ok(report)
}

/// The sequential probe: hreg's connect + first get and the plain
/// baseline, alternated round by round.
fn probe(socket: &Path, dir: &Path, bench: &Client, target: Target) -> anyhow::Result<Probe> {
    // The name `Client::connect` sends: this program's file name.
    let name = std::env::current_exe()?
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let request_bytes = ControlRequest::Hello {
        version: hreg::PROTOCOL_VERSION,
        name,
    }
    .encode()
    .len();
    let reply_bytes = Reply::Welcome(bench.welcome()).encode().len();
    let echo = EchoServer::start(&dir.join("echo.sock"), reply_bytes, PROBE_ROUNDS)?;
    let handle = Handle::new(target.handle).context("target handle 0")?;
    let expected = checked_value(target.seed, VALUE_LEN);
    let request = vec![7u8; request_bytes];
    let (mut total, mut attach, mut first_get, mut plain) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..PROBE_ROUNDS {
        let began = Instant::now();
        let client = Client::connect(socket)?;
        let attached = began.elapsed();
        let value = client.get(handle)?;
        let took = began.elapsed();
        anyhow::ensure!(value == expected, "the probe read a wrong value");
        drop(client);
        total.push(took.as_nanos() as u64);
        attach.push(attached.as_nanos() as u64);
        first_get.push((took - attached).as_nanos() as u64);
        plain.push(echo.round_trip(&request)?.as_nanos() as u64);
    }
    echo.finish()?;
    let connect_and_get = Latency::of(&mut total);
    let plain = Latency::of(&mut plain);
    Ok(Probe {
        rounds: PROBE_ROUNDS,
        connect_and_get,
        attach: Latency::of(&mut attach),
        first_get: Latency::of(&mut first_get),
        plain,
        request_bytes,
        reply_bytes,
        ratio_p50: connect_and_get.p50_ns / plain.p50_ns.max(1.0),
        ratio_p99: connect_and_get.p99_ns / plain.p99_ns.max(1.0),
    })
}

/// A trivial `SOCK_SEQPACKET` server: per connection, one request in, one
/// reply of a fixed size out, then close.
struct EchoServer {
    path: PathBuf,
    thread: std::thread::JoinHandle<anyhow::Result<()>>,
}

fn seqpacket() -> rustix::io::Result<OwnedFd> {
    rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )
}

impl EchoServer {
    fn start(path: &Path, reply_bytes: usize, connections: usize) -> anyhow::Result<EchoServer> {
        let listener = seqpacket()?;
        rustix::net::bind(&listener, &SocketAddrUnix::new(path)?)?;
        rustix::net::listen(&listener, 128)?;
        let thread = std::thread::Builder::new().name("echo".into()).spawn(
            move || -> anyhow::Result<()> {
                let reply = vec![9u8; reply_bytes];
                let mut buf = vec![0u8; 4096];
                for _ in 0..connections {
                    let conn = rustix::net::accept(&listener)?;
                    rustix::net::recv(&conn, &mut buf, RecvFlags::empty())?;
                    rustix::net::send(&conn, &reply, SendFlags::NOSIGNAL)?;
                }
                Ok(())
            },
        )?;
        Ok(EchoServer {
            path: path.to_path_buf(),
            thread,
        })
    }

    /// Connect, send `request`, receive the reply: how long it took.
    fn round_trip(&self, request: &[u8]) -> anyhow::Result<Duration> {
        let mut buf = vec![0u8; 4096];
        let began = Instant::now();
        let conn = seqpacket()?;
        rustix::net::connect(&conn, &SocketAddrUnix::new(&self.path)?)?;
        rustix::net::send(&conn, request, SendFlags::NOSIGNAL)?;
        let (_, got) = rustix::net::recv(&conn, &mut buf, RecvFlags::empty())?;
        let took = began.elapsed();
        anyhow::ensure!(got > 0, "the echo server closed without a reply");
        Ok(took)
    }

    fn finish(self) -> anyhow::Result<()> {
        self.thread
            .join()
            .map_err(|_| anyhow::anyhow!("echo thread panicked"))?
    }
}

/// Starts `processes` burst processes, lets them go at once, collects
/// their results, then lets them exit.
fn burst(
    socket: &Path,
    dir: &Path,
    processes: usize,
    target: Target,
    bench: &Client,
) -> anyhow::Result<Burst> {
    use rustix::pipe::{pipe_with, PipeFlags};
    let (go_r, go_w) = pipe_with(PipeFlags::CLOEXEC)?;
    let (hold_r, hold_w) = pipe_with(PipeFlags::CLOEXEC)?;
    let (results_r, results_w) = pipe_with(PipeFlags::CLOEXEC)?;
    let log = std::fs::File::create(dir.join("burst-clients.log"))?;
    let lines = Lines::read(std::fs::File::from(results_r), "burst")?;
    let spawning = Instant::now();
    let mut children = Vec::with_capacity(processes);
    for index in 0..processes {
        let plan = ClientPlan {
            socket: socket.to_path_buf(),
            index,
            get: (index % 2 == 1).then_some(target),
        };
        let mut command = Worker::Burst(plan).command()?;
        command
            .stdin(Stdio::from(go_r.try_clone()?))
            .stdout(Stdio::from(results_w.try_clone()?))
            .stderr(log.try_clone()?);
        hand_down(&mut command, &hold_r, HOLD_FD);
        children.push(Proc::start("burst process", command)?);
    }
    drop((go_r, hold_r, results_w));
    let mut ready = 0;
    let patience = Duration::from_secs(60) + Duration::from_millis(50) * processes as u32;
    while ready < processes {
        match lines.next(patience) {
            Some(line) if line.starts_with("ready ") => ready += 1,
            Some(line) => bail!("a burst process said {line:?} before the release"),
            None => bail!("only {ready} of {processes} burst processes got ready"),
        }
    }
    let spawn_seconds = spawning.elapsed().as_secs_f64();

    let released = Instant::now();
    drop(go_w);
    let mut results = Vec::with_capacity(processes);
    let mut last = released;
    while results.len() < processes {
        let Some(line) = lines.next(Duration::from_secs(120)) else {
            break;
        };
        if let Some(json) = line.strip_prefix("done ") {
            results.push(serde_json::from_str::<ClientResult>(json)?);
            last = Instant::now();
        }
    }
    let sessions_at_once = bench.stats()?.sessions.saturating_sub(1);
    drop(hold_w);
    let mut crashed = Vec::new();
    for mut child in children {
        let status = child.wait_or_kill(Duration::from_secs(30))?;
        if !status.success() {
            crashed.push(format!("pid {}: {status}", child.pid()));
        }
    }
    if results.len() < processes {
        crashed.push(format!(
            "{} processes reported nothing",
            processes - results.len()
        ));
    }
    Ok(summarise(
        processes,
        &results,
        crashed,
        last.duration_since(released).as_secs_f64(),
        spawn_seconds,
        sessions_at_once,
    ))
}

/// Makes `fd` descriptor `at` of the child `command` starts (without
/// close-on-exec).
fn hand_down(command: &mut Command, fd: &OwnedFd, at: i32) {
    let raw = fd.as_raw_fd();
    // SAFETY: dup2(2) and fcntl(2) are async-signal-safe; `raw` stays open
    // in the parent until the child is spawned.
    unsafe {
        command.pre_exec(move || {
            let done = if raw == at {
                libc::fcntl(at, libc::F_SETFD, 0)
            } else {
                libc::dup2(raw, at)
            };
            if done < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

fn summarise(
    processes: usize,
    results: &[ClientResult],
    crashed: Vec<String>,
    wall_seconds: f64,
    spawn_seconds: f64,
    sessions_at_once: u64,
) -> Burst {
    let mut attach: Vec<u64> = results.iter().filter_map(|r| r.attach_ns).collect();
    let mut first_op: Vec<u64> = results.iter().filter_map(|r| r.first_op_ns).collect();
    let mut failure_kinds = BTreeMap::new();
    for error in results.iter().filter_map(|r| r.error.as_ref()) {
        *failure_kinds.entry(error.clone()).or_insert(0) += 1;
    }
    let failures = failure_kinds.values().sum();
    Burst {
        processes,
        served: results.len() - failures,
        failures,
        failure_kinds,
        crashed,
        attach: Latency::of(&mut attach),
        first_op: Latency::of(&mut first_op),
        wall_seconds,
        spawn_seconds,
        sessions_at_once,
    }
}

/// The `hreg-attack SOCKET silent M` process of another uid.
struct SilentHolder {
    proc: Proc,
    stdin: Option<std::process::ChildStdin>,
    lines: Lines,
    asked: usize,
    connected: usize,
}

impl SilentHolder {
    fn start(binary: &Path, socket: &Path, dir: &Path, count: usize) -> anyhow::Result<Self> {
        let mut command = Command::new(binary);
        command
            .arg(socket)
            .args(["silent", &count.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(dir.join("silent.log"))?);
        procs::as_uid(&mut command, SILENT_UID);
        let mut proc = Proc::start("silent holder", command)?;
        let stdin = proc.take_stdin();
        let lines = Lines::read(proc.take_stdout().context("piped stdout")?, "silent")?;
        let ready = lines
            .next(Duration::from_secs(120))
            .context("the silent holder did not get ready")?;
        let connected = ready
            .strip_prefix("ready silent=")
            .and_then(|n| n.parse().ok())
            .with_context(|| format!("the silent holder said {ready:?}"))?;
        Ok(SilentHolder {
            proc,
            stdin,
            lines,
            asked: count,
            connected,
        })
    }

    fn stop(mut self) -> anyhow::Result<Silent> {
        drop(self.stdin.take());
        let line = self
            .lines
            .next(Duration::from_secs(60))
            .context("the silent holder said nothing when stopped")?;
        let held =
            Held::parse(&line).with_context(|| format!("the silent holder said {line:?}"))?;
        self.proc.wait_or_kill(Duration::from_secs(10))?;
        Ok(Silent {
            uid: SILENT_UID,
            asked: self.asked,
            connected: self.connected,
            open: held.open,
            refused_quota: held.quota,
            refused_otherwise: held.other_refusals,
            closed_silently: held.closed,
            quota_message: held.quota_message,
        })
    }
}

impl ModeReport for BurstReport {
    fn passed(&self) -> bool {
        self.failures.is_empty()
    }

    fn markdown(&self) -> String {
        let ms = |ns: f64| number(ns / 1e6);
        let trio = |l: &Latency| format!("{} / {} / {}", ms(l.p50_ns), ms(l.p99_ns), ms(l.max_ns));
        let b = &self.burst;
        let mut out = format!(
            "hardware: {}  \nmode: burst; hregd {}(LimitNOFILE {}, max_sessions {})\n\n",
            self.hardware,
            self.hregd_flags
                .iter()
                .map(|f| format!("{f} "))
                .collect::<String>(),
            self.hregd_nofile,
            self.max_sessions
                .map_or("unknown".to_string(), |m| m.to_string())
        );
        let p = &self.probe;
        let _ = writeln!(
            out,
            "| sequential, {} rounds | p50 µs | p99 µs |\n|---|---:|---:|",
            p.rounds
        );
        let plain = format!(
            "Unix SEQPACKET connect + one request/reply ({} B / {} B)",
            p.request_bytes, p.reply_bytes
        );
        for (what, p50, p99) in [
            (
                "hreg: connect + first get",
                p.connect_and_get.p50_ns,
                p.connect_and_get.p99_ns,
            ),
            (
                "  of which attach (connect + HELLO)",
                p.attach.p50_ns,
                p.attach.p99_ns,
            ),
            (
                "  of which first get (ring open + get)",
                p.first_get.p50_ns,
                p.first_get.p99_ns,
            ),
            (&plain, p.plain.p50_ns, p.plain.p99_ns),
        ] {
            let _ = writeln!(out, "| {what} | {} | {} |", micros(p50), micros(p99));
        }
        let _ = writeln!(
            out,
            "| ratio hreg / Unix | {} | {} |",
            number(p.ratio_p50),
            number(p.ratio_p99)
        );
        let _ = writeln!(
            out,
            "\ntarget (issue 14): connect + first get p50 ≤ {} µs: {} µs, {}\n",
            micros(PROBE_TARGET_NS),
            micros(p.connect_and_get.p50_ns),
            if p.connect_and_get.p50_ns <= PROBE_TARGET_NS {
                "PASS"
            } else {
                "MISS (measured, not enforced)"
            }
        );
        let who = if self.as_root {
            "root (exempt from the per-uid shares)"
        } else {
            "the bench's uid (not root)"
        };
        let rows = [
            (
                "processes at once".to_string(),
                format!("{} as {who}", b.processes),
            ),
            (
                "served / failed / ended badly".into(),
                format!("{} / {} / {}", b.served, b.failures, b.crashed.len()),
            ),
            (
                "attach (connect + HELLO) p50 / p99 / max ms".into(),
                trio(&b.attach),
            ),
            (
                "first op (insert or get) p50 / p99 / max ms".into(),
                trio(&b.first_op),
            ),
            (
                "wall time, release to last result".into(),
                format!("{} s", number(b.wall_seconds)),
            ),
            (
                "sessions held at once".into(),
                b.sessions_at_once.to_string(),
            ),
            (
                "starting the processes (not timed)".into(),
                format!("{} s", number(b.spawn_seconds)),
            ),
        ];
        out.push_str("| burst | value |\n|---|---|\n");
        for (figure, value) in rows {
            let _ = writeln!(out, "| {figure} | {value} |");
        }
        if let Some(s) = &self.silent {
            let _ = writeln!(
                out,
                "| silent connections of uid {} | {} asked, {} connected; at the end {} still open, {} refused with QUOTA, {} refused otherwise, {} closed without a word |",
                s.uid, s.asked, s.connected, s.open, s.refused_quota, s.refused_otherwise, s.closed_silently
            );
            if !s.quota_message.is_empty() {
                let _ = writeln!(
                    out,
                    "\nQUOTA refusal of a silent connection: {}",
                    s.quota_message
                );
            }
        }
        for (message, count) in b.failure_kinds.iter().take(QUOTED) {
            let _ = writeln!(out, "    {count} × {message}");
        }
        for crash in b.crashed.iter().take(QUOTED) {
            let _ = writeln!(out, "    {crash}");
        }
        for note in &self.notes {
            let _ = writeln!(out, "note: {note}");
        }
        out.push_str(&verdict("burst", &self.failures));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(index: usize, attach: Option<u64>, error: Option<&str>) -> ClientResult {
        ClientResult {
            index,
            attach_ns: attach,
            first_op_ns: attach.map(|a| a / 2),
            error: error.map(str::to_string),
        }
    }

    #[test]
    fn the_summary_counts_failures_by_message() {
        let results = [
            result(0, Some(100), None),
            result(1, None, Some("attach: quota")),
            result(2, None, Some("attach: quota")),
            result(3, Some(300), Some("get: wrong value (3 bytes)")),
        ];
        let burst = summarise(5, &results, vec!["pid 9: signal 9".into()], 0.5, 1.0, 2);
        assert_eq!((burst.processes, burst.served, burst.failures), (5, 1, 3));
        assert_eq!(burst.failure_kinds["attach: quota"], 2);
        assert_eq!((burst.attach.count, burst.attach.max_ns), (2, 300.0));
        assert_eq!(burst.first_op.count, 2);
    }
}
