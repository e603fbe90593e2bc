//! The Rust runner of the conformance suite: reads
//! `tests/conformance/cases.txt` (its format is described at the top of that
//! file), runs every case with the `hreg` crate against a fresh `hregd`, and
//! fails on any case that does not behave as written, or on any line it does
//! not understand. Cases for other languages only are acknowledged by name;
//! cases that need uid 65534 are reported as NOT RUN when not root.
//!
//! Processes (`process P [nobody]`) are forked children that connect after
//! the fork (after dropping to uid 65534 for `nobody`) and run one op per
//! line they read from a pipe, answering `STATUS NUMBER HEX` per op.
//!
//! Where Rust's types rule an input out, the runner does what libhreg does
//! with it: handle 0 cannot be a `Handle`, so an op on it is INVALID without
//! reaching the daemon.
//!
//! One test on purpose: the children are forked from the test process, and
//! fewer threads around a fork means fewer surprises.

use hreg::{Client, Completion, Error, Handle, Op, DETACHED, SHARED};
use hreg_tests::{Daemon, PATIENCE};
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::FromRawFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const LANGUAGE: &str = "rust";
const NOBODY: u32 = 65534;
/// How long `eventually` retries.
const EVENTUALLY: Duration = Duration::from_secs(10);

fn cases_file() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("conformance/cases.txt")
}

// ---- The file's model ----

#[derive(Debug, Default)]
struct Case {
    name: String,
    line: usize,
    languages: Option<Vec<String>>,
    daemon: Vec<String>,
    steps: Vec<Step>,
}

/// One operation with its expected outcome, as written (handles unresolved).
#[derive(Debug, Clone)]
struct OpLine {
    line: usize,
    op: String,
    args: Vec<String>,
    expect: Vec<String>,
}

#[derive(Debug)]
enum Step {
    Session(String),
    Process {
        name: String,
        nobody: bool,
    },
    Op {
        actor: String,
        eventually: bool,
        op: OpLine,
    },
    Batch {
        actor: String,
        line: usize,
        ops: Vec<OpLine>,
        result: String,
    },
    Close(String),
    Kill(String),
}

impl Case {
    fn needs_root(&self) -> bool {
        self.steps
            .iter()
            .any(|s| matches!(s, Step::Process { nobody: true, .. }))
    }
}

/// `TOKENS -> EXPECT...` split at the arrow.
fn split_arrow(tokens: &[&str], line: usize) -> Result<(Vec<String>, Vec<String>), String> {
    let at = tokens
        .iter()
        .position(|t| *t == "->")
        .ok_or_else(|| format!("line {line}: no `->` in an op line"))?;
    let own = |t: &[&str]| t.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let expect = own(&tokens[at + 1..]);
    if expect.is_empty() || expect.len() > 2 {
        return Err(format!("line {line}: expected `-> STATUS [ARG]`"));
    }
    Ok((own(&tokens[..at]), expect))
}

fn op_line(tokens: &[&str], line: usize) -> Result<OpLine, String> {
    let (left, expect) = split_arrow(tokens, line)?;
    let (op, args) = left
        .split_first()
        .ok_or_else(|| format!("line {line}: no op before `->`"))?;
    Ok(OpLine {
        line,
        op: op.clone(),
        args: args.to_vec(),
        expect,
    })
}

/// Parses the whole file; any line it does not know is an error.
fn parse(text: &str) -> Result<(Vec<String>, Vec<Case>), String> {
    let mut global = Vec::new();
    let mut cases = Vec::new();
    let mut case: Option<Case> = None;
    let mut batch: Option<(String, usize, Vec<OpLine>)> = None;
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let tokens: Vec<&str> = raw.split_whitespace().collect();
        let Some(&first) = tokens.first() else {
            continue;
        };
        if first.starts_with('#') {
            continue;
        }
        if let Some((_, _, ops)) = &mut batch {
            if first == "submit" {
                let (_, expect) = split_arrow(&tokens, line)?;
                let (actor, at, ops) = batch.take().unwrap();
                case.as_mut().unwrap().steps.push(Step::Batch {
                    actor,
                    line: at,
                    ops,
                    result: expect[0].clone(),
                });
            } else {
                ops.push(op_line(&tokens, line)?);
            }
            continue;
        }
        let Some(current) = &mut case else {
            match first {
                "daemon" => global.extend(tokens[1..].iter().map(|s| s.to_string())),
                "case" if tokens.len() == 2 => {
                    case = Some(Case {
                        name: tokens[1].to_string(),
                        line,
                        ..Case::default()
                    })
                }
                _ => {
                    return Err(format!(
                        "line {line}: unknown statement outside a case: {raw}"
                    ))
                }
            }
            continue;
        };
        match (first, tokens.len()) {
            ("end", 1) => cases.push(case.take().unwrap()),
            ("languages", n) if n > 1 => {
                current.languages = Some(tokens[1..].iter().map(|s| s.to_string()).collect())
            }
            ("daemon", _) => current
                .daemon
                .extend(tokens[1..].iter().map(|s| s.to_string())),
            ("session", 2) => current.steps.push(Step::Session(tokens[1].to_string())),
            ("process", 2 | 3) => {
                let nobody = match tokens.get(2) {
                    None => false,
                    Some(&"nobody") => true,
                    Some(other) => {
                        return Err(format!("line {line}: unknown process kind {other}"))
                    }
                };
                current.steps.push(Step::Process {
                    name: tokens[1].to_string(),
                    nobody,
                })
            }
            ("close", 2) => current.steps.push(Step::Close(tokens[1].to_string())),
            ("kill", 2) => current.steps.push(Step::Kill(tokens[1].to_string())),
            ("eventually", _) => {
                let op = op_line(&tokens[2..], line)?;
                current.steps.push(Step::Op {
                    actor: tokens.get(1).unwrap_or(&"").to_string(),
                    eventually: true,
                    op,
                })
            }
            (_, 2) if tokens[1] == "batch" => batch = Some((first.to_string(), line, Vec::new())),
            (_, n) if n >= 3 => current.steps.push(Step::Op {
                actor: first.to_string(),
                eventually: false,
                op: op_line(&tokens[1..], line)?,
            }),
            _ => return Err(format!("line {line}: unknown statement: {raw}")),
        }
    }
    if case.is_some() || batch.is_some() {
        return Err("the file ends inside a case or a batch".into());
    }
    Ok((global, cases))
}

// ---- Values, handles and outcomes ----

/// The bytes a value token stands for.
fn value(token: &str) -> Result<Vec<u8>, String> {
    if token == "empty" {
        return Ok(Vec::new());
    }
    if let Some(text) = token.strip_prefix("v:") {
        return Ok(text.as_bytes().to_vec());
    }
    if let Some(n) = token.strip_prefix("fill:") {
        let n: usize = n.parse().map_err(|_| format!("bad fill length {n}"))?;
        return Ok((0..n).map(|i| b'a' + (i % 26) as u8).collect());
    }
    Err(format!("unknown value token {token}"))
}

fn flags(token: &str) -> Result<u32, String> {
    Ok(match token {
        "none" => 0,
        "shared" => SHARED,
        "detached" => DETACHED,
        "shared+detached" => SHARED | DETACHED,
        "unknown" => 0x4,
        _ => return Err(format!("unknown flags token {token}")),
    })
}

/// What an op did: a status name, a number (handle, length or count) and
/// the bytes read, if any. This is also the line a child process answers.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Outcome {
    status: String,
    number: u64,
    bytes: Option<Vec<u8>>,
}

impl Outcome {
    fn ok(number: u64, bytes: Option<Vec<u8>>) -> Outcome {
        Outcome {
            status: "OK".into(),
            number,
            bytes,
        }
    }

    fn error(e: &Error) -> Outcome {
        let number = match e {
            Error::Buffer { needed } => *needed as u64,
            _ => 0,
        };
        Outcome {
            status: status_name(e).into(),
            number,
            bytes: None,
        }
    }

    fn of<T>(result: hreg::Result<T>, ok: impl FnOnce(T) -> Outcome) -> Outcome {
        match result {
            Ok(v) => ok(v),
            Err(e) => Outcome::error(&e),
        }
    }

    fn to_line(&self) -> String {
        let hex = match &self.bytes {
            None => "-".to_string(),
            Some(b) => format!(
                "x{}",
                b.iter().map(|b| format!("{b:02x}")).collect::<String>()
            ),
        };
        format!("{} {} {hex}", self.status, self.number)
    }

    fn from_line(line: &str) -> Result<Outcome, String> {
        let parts: Vec<&str> = line.split_whitespace().collect();
        let [status, number, hex] = parts[..] else {
            return Err(format!("bad answer from a child: {line:?}"));
        };
        let bytes = match hex.strip_prefix('x') {
            None => None,
            Some(hex) => Some(
                (0..hex.len())
                    .step_by(2)
                    .map(|i| u8::from_str_radix(&hex[i..i + 2], 16))
                    .collect::<Result<Vec<u8>, _>>()
                    .map_err(|_| format!("bad hex from a child: {line:?}"))?,
            ),
        };
        Ok(Outcome {
            status: status.to_string(),
            number: number
                .parse()
                .map_err(|_| format!("bad number: {line:?}"))?,
            bytes,
        })
    }
}

fn status_name(e: &Error) -> &'static str {
    match e {
        Error::Invalid => "INVALID",
        Error::Stale => "STALE",
        Error::Denied => "DENIED",
        Error::TooBig { .. } => "TOO_BIG",
        Error::Buffer { .. } => "BUFFER",
        Error::Quota { .. } => "QUOTA",
        Error::NotHeld => "NOT_HELD",
        Error::Connect { .. } => "CONNECT",
        Error::Disconnected => "DISCONNECTED",
        Error::Version { .. } => "VERSION",
        Error::Protocol(_) => "PROTOCOL",
        Error::Io(_) => "IO",
    }
}

/// A handle argument, after `$name`s were replaced by numbers.
fn number(token: &str) -> Result<u64, String> {
    token
        .parse()
        .map_err(|_| format!("not a handle or number: {token}"))
}

/// Handle 0 is not a `Handle`: INVALID, as libhreg answers it.
fn handle(token: &str) -> Result<Result<Handle, Error>, String> {
    Ok(Handle::new(number(token)?).ok_or(Error::Invalid))
}

fn arg<'a>(args: &'a [String], i: usize, op: &str) -> Result<&'a str, String> {
    args.get(i)
        .map(String::as_str)
        .ok_or_else(|| format!("{op}: missing argument {}", i + 1))
}

/// Runs one single op (handles already numbers). `Err` is a runner error:
/// an op or argument this runner does not know.
fn execute(client: &Client, op: &str, args: &[String]) -> Result<Outcome, String> {
    let expect_args = |n: usize| {
        if args.len() == n {
            Ok(())
        } else {
            Err(format!("{op} takes {n} arguments, got {}", args.len()))
        }
    };
    let done = |r: hreg::Result<()>| Outcome::of(r, |_| Outcome::ok(0, None));
    Ok(match op {
        "insert" => {
            expect_args(2)?;
            let v = value(&args[0])?;
            Outcome::of(client.insert(&v, flags(&args[1])?), |h| {
                Outcome::ok(h.get(), None)
            })
        }
        "get" => {
            expect_args(1)?;
            Outcome::of(handle(&args[0])?.and_then(|h| client.get(h)), |v| {
                Outcome::ok(v.len() as u64, Some(v))
            })
        }
        "get_into" => {
            expect_args(2)?;
            let cap: usize = arg(args, 1, op)?.parse().map_err(|_| "bad capacity")?;
            let mut buf = vec![0u8; cap];
            let result = handle(&args[0])?.and_then(|h| client.get_into(h, &mut buf));
            Outcome::of(result, |n| Outcome::ok(n as u64, Some(buf[..n].to_vec())))
        }
        "replace" => {
            expect_args(2)?;
            let v = value(&args[1])?;
            done(handle(&args[0])?.and_then(|h| client.replace(h, &v)))
        }
        "retain" => {
            expect_args(1)?;
            done(handle(&args[0])?.and_then(|h| client.retain(h)))
        }
        "release" => {
            expect_args(1)?;
            done(handle(&args[0])?.and_then(|h| client.release(h)))
        }
        "remove" => {
            expect_args(1)?;
            done(handle(&args[0])?.and_then(|h| client.remove(h)))
        }
        "objects" => {
            expect_args(0)?;
            Outcome::of(client.stats(), |s| Outcome::ok(s.objects, None))
        }
        "flush" => {
            expect_args(0)?;
            done(client.flush())
        }
        other => {
            return Err(format!(
                "the {LANGUAGE} runner does not know the op `{other}`"
            ))
        }
    })
}

/// An op of a batch, owning what the Rust op borrows.
enum Planned {
    Run {
        value: Vec<u8>,
        buf: Option<Vec<u8>>,
        kind: PlannedKind,
    },
    Fail(Error),
}

enum PlannedKind {
    Insert(u32),
    Get(Handle),
    GetInto(Handle),
    Replace(Handle),
    Retain(Handle),
    Release(Handle),
    Remove(Handle),
}

fn plan(op: &str, args: &[String]) -> Result<Planned, String> {
    let h = |i: usize| handle(arg(args, i, op)?);
    let run = |kind, value, buf| Planned::Run { value, buf, kind };
    let with = |h: Result<Handle, Error>, f: fn(Handle) -> PlannedKind| match h {
        Ok(h) => run(f(h), Vec::new(), None),
        Err(e) => Planned::Fail(e),
    };
    Ok(match op {
        "insert" => run(
            PlannedKind::Insert(flags(arg(args, 1, op)?)?),
            value(arg(args, 0, op)?)?,
            None,
        ),
        "get" => with(h(0)?, PlannedKind::Get),
        "get_into" => {
            let cap: usize = arg(args, 1, op)?.parse().map_err(|_| "bad capacity")?;
            match h(0)? {
                Ok(h) => run(PlannedKind::GetInto(h), Vec::new(), Some(vec![0; cap])),
                Err(e) => Planned::Fail(e),
            }
        }
        "replace" => match h(0)? {
            Ok(h) => run(PlannedKind::Replace(h), value(arg(args, 1, op)?)?, None),
            Err(e) => Planned::Fail(e),
        },
        "retain" => with(h(0)?, PlannedKind::Retain),
        "release" => with(h(0)?, PlannedKind::Release),
        "remove" => with(h(0)?, PlannedKind::Remove),
        other => {
            return Err(format!(
                "the {LANGUAGE} runner cannot express the batch op `{other}`"
            ))
        }
    })
}

/// Runs a batch; returns each op's outcome and the batch's own status.
fn execute_batch(client: &Client, ops: &[(String, Vec<String>)]) -> Result<Vec<Outcome>, String> {
    let mut planned = ops
        .iter()
        .map(|(op, args)| plan(op, args))
        .collect::<Result<Vec<_>, _>>()?;
    let mut batch = Vec::new();
    for p in planned.iter_mut() {
        if let Planned::Run { value, buf, kind } = p {
            batch.push(match kind {
                PlannedKind::Insert(flags) => Op::Insert {
                    value,
                    flags: *flags,
                },
                PlannedKind::Get(handle) => Op::GetOwned { handle: *handle },
                PlannedKind::GetInto(handle) => Op::Get {
                    handle: *handle,
                    buf: buf.as_mut().unwrap(),
                },
                PlannedKind::Replace(handle) => Op::Replace {
                    handle: *handle,
                    value,
                },
                PlannedKind::Retain(h) => Op::Retain(*h),
                PlannedKind::Release(h) => Op::Release(*h),
                PlannedKind::Remove(h) => Op::Remove(*h),
            });
        }
    }
    let results = client
        .submit(&mut batch)
        .map_err(|e| format!("the batch failed as a whole: {e}"))?;
    drop(batch);
    let mut results = results.into_iter();
    planned
        .iter()
        .map(|p| match p {
            Planned::Fail(e) => Ok(Outcome::error(e)),
            Planned::Run { buf, .. } => {
                let result = results.next().ok_or("fewer results than ops")?;
                Ok(Outcome::of(result, |c| match c {
                    Completion::Inserted(h) => Outcome::ok(h.get(), None),
                    Completion::Value(v) => Outcome::ok(v.len() as u64, Some(v)),
                    Completion::Length(n) => {
                        let bytes = buf.as_ref().map(|b| b[..n].to_vec());
                        Outcome::ok(n as u64, bytes)
                    }
                    Completion::Done => Outcome::ok(0, None),
                }))
            }
        })
        .collect()
}

// ---- Checking ----

/// Checks `got` against the expectation of `op`, binding `$name`s.
fn check(op: &OpLine, got: &Outcome, vars: &mut HashMap<String, u64>) -> Result<(), String> {
    let want = &op.expect[0];
    if *want != got.status {
        return Err(format!(
            "expected {}, got {} ({got:?})",
            op.expect.join(" "),
            got.status
        ));
    }
    let Some(extra) = op.expect.get(1) else {
        return Ok(());
    };
    if let Some(name) = extra.strip_prefix('$') {
        if op.op != "insert" && op.op != "insert_null" {
            return Err(format!("only an insert binds a handle, not {}", op.op));
        }
        vars.insert(name.to_string(), got.number);
        return Ok(());
    }
    if want == "BUFFER" || op.op == "objects" {
        let n = number(extra)?;
        return if n == got.number {
            Ok(())
        } else {
            Err(format!("expected {want} {n}, got {}", got.number))
        };
    }
    let expected = value(extra)?;
    match &got.bytes {
        Some(b) if *b == expected => Ok(()),
        other => Err(format!(
            "expected the value {extra}, got {:?}",
            other
                .as_ref()
                .map(|b| String::from_utf8_lossy(b).into_owned())
        )),
    }
}

/// `args` with every `$name` replaced by its number.
fn resolve(args: &[String], vars: &HashMap<String, u64>) -> Result<Vec<String>, String> {
    args.iter()
        .map(|a| match a.strip_prefix('$') {
            Some(name) => vars
                .get(name)
                .map(|h| h.to_string())
                .ok_or_else(|| format!("${name} is not bound")),
            None => Ok(a.clone()),
        })
        .collect()
}

// ---- Child processes ----

/// A forked child with its own client, driven through two pipes.
struct Child {
    pid: libc::pid_t,
    to: Option<std::fs::File>,
    from: BufReader<std::fs::File>,
}

impl Child {
    fn spawn(socket: &Path, nobody: bool) -> Result<Child, String> {
        let (mut down, mut up) = ([0; 2], [0; 2]);
        // SAFETY: pipe writes two descriptors into arrays we own.
        unsafe {
            assert_eq!(libc::pipe2(down.as_mut_ptr(), libc::O_CLOEXEC), 0);
            assert_eq!(libc::pipe2(up.as_mut_ptr(), libc::O_CLOEXEC), 0);
        }
        // SAFETY: the child only makes system calls and uses its own new
        // client, then leaves with _exit; it never returns into the harness.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork failed");
        if pid == 0 {
            child_main(socket, nobody, down[0], up[1]);
        }
        // SAFETY: the parent's ends; the child's ends are closed here.
        unsafe {
            libc::close(down[0]);
            libc::close(up[1]);
        }
        // SAFETY: descriptors we own from here on.
        let (to, from) = unsafe {
            (
                std::fs::File::from_raw_fd(down[1]),
                std::fs::File::from_raw_fd(up[0]),
            )
        };
        let mut child = Child {
            pid,
            to: Some(to),
            from: BufReader::new(from),
        };
        match child.read_line()?.as_str() {
            "ready" => Ok(child),
            other => Err(format!("the child process did not start: {other}")),
        }
    }

    fn read_line(&mut self) -> Result<String, String> {
        let mut line = String::new();
        self.from
            .read_line(&mut line)
            .map_err(|e| format!("reading from a child: {e}"))?;
        if line.is_empty() {
            return Err("the child process exited".into());
        }
        Ok(line.trim_end().to_string())
    }

    fn run(&mut self, op: &str, args: &[String]) -> Result<Outcome, String> {
        let to = self.to.as_mut().ok_or("the child process was closed")?;
        writeln!(to, "{op} {}", args.join(" ")).map_err(|e| format!("writing to a child: {e}"))?;
        let line = self.read_line()?;
        match line.strip_prefix("ERROR ") {
            Some(message) => Err(message.to_string()),
            None => Outcome::from_line(&line),
        }
    }

    /// Closes its input: it disconnects and exits 0.
    fn close(mut self) -> Result<(), String> {
        drop(self.to.take());
        match self.wait() {
            0 => Ok(()),
            status => Err(format!("the child process exited with status {status}")),
        }
    }

    fn kill(mut self) {
        // SAFETY: signalling and reaping our own child.
        unsafe { libc::kill(self.pid, libc::SIGKILL) };
        self.wait();
    }

    fn wait(&mut self) -> i32 {
        let mut status = 0;
        // SAFETY: reaping our own child.
        unsafe { libc::waitpid(self.pid, &mut status, 0) };
        self.pid = 0;
        status
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        if self.pid > 0 {
            // SAFETY: as in `kill`.
            unsafe { libc::kill(self.pid, libc::SIGKILL) };
            self.wait();
        }
    }
}

/// The child's whole life: close every inherited descriptor but its pipes
/// (it must not keep the parent's sessions alive), drop to uid 65534 if
/// asked, connect, then one op per line until its input closes.
fn child_main(socket: &Path, nobody: bool, input: i32, output: i32) -> ! {
    // SAFETY: plain system calls on descriptors this process owns.
    unsafe {
        for fd in 3..4096 {
            if fd != input && fd != output {
                libc::close(fd);
            }
        }
    }
    // SAFETY: as above; the order matters (groups and gid before uid).
    let dropped = !nobody
        || unsafe {
            libc::setgroups(0, std::ptr::null()) == 0
                && libc::setgid(NOBODY) == 0
                && libc::setuid(NOBODY) == 0
                && libc::setuid(0) != 0
        };
    // SAFETY: descriptors this process owns.
    let (reader, mut writer) = unsafe {
        (
            BufReader::new(std::fs::File::from_raw_fd(input)),
            std::fs::File::from_raw_fd(output),
        )
    };
    let client = match (dropped, Client::connect(socket)) {
        (false, _) => Err("could not drop to uid 65534".to_string()),
        (true, Err(e)) => Err(format!("connect: {e}")),
        (true, Ok(c)) => Ok(c),
    };
    let code = match client {
        Err(e) => {
            let _ = writeln!(writer, "{e}");
            1
        }
        Ok(client) => {
            let _ = writeln!(writer, "ready");
            for line in reader.lines() {
                let Ok(line) = line else { break };
                let mut parts = line.split_whitespace().map(str::to_string);
                let op = parts.next().unwrap_or_default();
                let args: Vec<String> = parts.collect();
                let answer = match execute(&client, &op, &args) {
                    Ok(outcome) => outcome.to_line(),
                    Err(e) => format!("ERROR {e}"),
                };
                if writeln!(writer, "{answer}").is_err() {
                    break;
                }
            }
            drop(client);
            0
        }
    };
    // SAFETY: leaving without running the parent's destructors.
    unsafe { libc::_exit(code) }
}

// ---- Running cases ----

/// The single ops and batch ops this runner can express.
const OPS: &[&str] = &[
    "insert", "get", "get_into", "replace", "retain", "release", "remove", "objects", "flush",
];
const BATCH_OPS: &[&str] = &[
    "insert", "get", "get_into", "replace", "retain", "release", "remove",
];

fn runs_here(case: &Case) -> bool {
    case.languages
        .as_ref()
        .is_none_or(|langs| langs.iter().any(|l| l == LANGUAGE))
}

/// Fails on any op of the case this runner cannot run, before running it.
fn validate(case: &Case) -> Result<(), String> {
    for step in &case.steps {
        let (known, ops): (&[&str], Vec<&OpLine>) = match step {
            Step::Op { op, .. } => (OPS, vec![op]),
            Step::Batch { ops, .. } => (BATCH_OPS, ops.iter().collect()),
            _ => continue,
        };
        for op in ops {
            if !known.contains(&op.op.as_str()) {
                return Err(format!(
                    "line {}: the {LANGUAGE} runner cannot run `{}` here; mark the case with \
                     `languages` if {LANGUAGE} cannot express it",
                    op.line, op.op
                ));
            }
        }
    }
    Ok(())
}

enum Actor {
    Session(Client),
    Process(Child),
}

fn run_case(case: &Case, global: &[String]) -> Result<(), String> {
    validate(case)?;
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
        .map_err(|e| e.to_string())?;
    let socket = dir.path().join("hreg.sock");
    let mut args: Vec<&str> = vec!["--socket-mode", "666"];
    args.extend(global.iter().map(String::as_str));
    args.extend(case.daemon.iter().map(String::as_str));
    let daemon = Daemon::start_at(dir, socket, &args);

    let mut actors: HashMap<String, Actor> = HashMap::new();
    let mut vars: HashMap<String, u64> = HashMap::new();
    for step in &case.steps {
        match step {
            Step::Session(name) => {
                let client =
                    Client::connect(&daemon.socket).map_err(|e| format!("connect: {e}"))?;
                actors.insert(name.clone(), Actor::Session(client));
            }
            Step::Process { name, nobody } => {
                let child = Child::spawn(&daemon.socket, *nobody)?;
                actors.insert(name.clone(), Actor::Process(child));
            }
            Step::Close(name) => match actors.remove(name) {
                Some(Actor::Session(client)) => drop(client),
                Some(Actor::Process(child)) => child.close()?,
                None => return Err(format!("close: no session or process {name}")),
            },
            Step::Kill(name) => match actors.remove(name) {
                Some(Actor::Process(child)) => child.kill(),
                _ => return Err(format!("kill: {name} is not a process")),
            },
            Step::Op {
                actor,
                eventually,
                op,
            } => {
                let actor = actors
                    .get_mut(actor)
                    .ok_or_else(|| format!("line {}: no session or process {actor}", op.line))?;
                let args = resolve(&op.args, &vars)?;
                let start = Instant::now();
                loop {
                    let got = match actor {
                        Actor::Session(client) => execute(client, &op.op, &args),
                        Actor::Process(child) => child.run(&op.op, &args),
                    }
                    .map_err(|e| format!("line {}: {e}", op.line))?;
                    match check(op, &got, &mut vars) {
                        Ok(()) => break,
                        Err(e) if !*eventually || start.elapsed() > EVENTUALLY => {
                            return Err(format!(
                                "line {}: {} {}: {e}",
                                op.line,
                                op.op,
                                op.args.join(" ")
                            ))
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(10)),
                    }
                }
            }
            Step::Batch {
                actor,
                line,
                ops,
                result,
            } => {
                let Some(Actor::Session(client)) = actors.get(actor) else {
                    return Err(format!("line {line}: a batch needs a session, not {actor}"));
                };
                let resolved = ops
                    .iter()
                    .map(|op| Ok((op.op.clone(), resolve(&op.args, &vars)?)))
                    .collect::<Result<Vec<_>, String>>()?;
                let outcomes =
                    execute_batch(client, &resolved).map_err(|e| format!("line {line}: {e}"))?;
                for (op, got) in ops.iter().zip(&outcomes) {
                    check(op, got, &mut vars).map_err(|e| {
                        format!(
                            "line {} (in the batch): {} {}: {e}",
                            op.line,
                            op.op,
                            op.args.join(" ")
                        )
                    })?;
                }
                let first = outcomes
                    .iter()
                    .map(|o| o.status.as_str())
                    .find(|s| *s != "OK")
                    .unwrap_or("OK");
                if first != result {
                    return Err(format!(
                        "line {line}: the batch's status is {first}, expected {result}"
                    ));
                }
            }
        }
    }
    Ok(())
}

#[test]
fn every_conformance_case() {
    let text = std::fs::read_to_string(cases_file()).expect("read cases.txt");
    let (global, cases) = parse(&text).unwrap_or_else(|e| panic!("cases.txt: {e}"));
    assert!(
        cases.len() >= 20,
        "cases.txt has only {} cases",
        cases.len()
    );
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let (mut passed, mut other, mut not_run) = (0, 0, 0);
    let mut failures = Vec::new();
    let deadline = Instant::now() + PATIENCE * 15;
    for case in &cases {
        if !runs_here(case) {
            let langs = case.languages.as_deref().unwrap_or_default().join(" ");
            println!(
                "conformance {LANGUAGE}: {} ... n/a (languages: {langs})",
                case.name
            );
            other += 1;
            continue;
        }
        if case.needs_root() && !root {
            println!(
                "conformance {LANGUAGE}: {} ... NOT RUN: needs root to run a process as uid 65534",
                case.name
            );
            not_run += 1;
            continue;
        }
        assert!(
            Instant::now() < deadline,
            "the conformance cases took too long"
        );
        match run_case(case, &global) {
            Ok(()) => {
                println!("conformance {LANGUAGE}: {} ... ok", case.name);
                passed += 1;
            }
            Err(e) => {
                println!("conformance {LANGUAGE}: {} ... FAILED: {e}", case.name);
                failures.push(format!("{} (line {}): {e}", case.name, case.line));
            }
        }
    }
    println!(
        "conformance {LANGUAGE}: {passed} passed, {} failed, {other} for other languages, {not_run} not run (need root)",
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "failed cases:\n{}",
        failures.join("\n")
    );
}

#[test]
fn the_runner_refuses_what_it_does_not_know() {
    for bad in [
        "case x\nsession a\na frobnicate 1 -> OK\nend\n",
        "case x\nsession a\na batch\nget_null 1 0 -> OK\nsubmit -> OK\nend\n",
        "case x\nwhatever\nend\n",
        "case x\nsession a\na get 1\nend\n",
        "bogus\n",
        "case x\nsession a\na batch\nget 1 -> OK\n",
        "case x\nprocess p root\nend\n",
    ] {
        let refused = match parse(bad) {
            Err(_) => true,
            Ok((_, cases)) => cases.iter().any(|c| validate(c).is_err()),
        };
        assert!(refused, "accepted: {bad:?}");
    }
    let text = std::fs::read_to_string(cases_file()).expect("read cases.txt");
    let (_, cases) = parse(&text).expect("cases.txt parses");
    for case in cases.iter().filter(|c| runs_here(c)) {
        validate(case).unwrap_or_else(|e| panic!("{}: {e}", case.name));
    }
}
