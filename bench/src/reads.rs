//! Section 7, reads without a round trip (issue 11): in one run, side by
//! side, a get from an in-process `dashmap`, from hreg's in-process
//! `Registry`, and from another process through hregd — by the ring path
//! (a client process started with `HREG_READ_PATH=ring`) and by the local
//! path (a seqlock read of the registry's shared memory); 16 B and 4 KiB
//! values, `get` (into the caller's buffer), `get` into a new `Vec` and
//! `get_ref`; a hot key and random keys; 1 and 2 reading threads; unpinned
//! and pinned. Besides: the seqlock floor ([`crate::floor::seqlock`]), the
//! daemon's CPU time under read-only load against the clients', and
//! `hreg_get` and a handle's whole life (insert + get + release) from C
//! against the origin's 64-shard map in C (`bench/langs/read_ratio.c`).
//! Then the targets of issues 11 and 19 (a life).
//!
//! Every contender reads the same objects (object `i` of a size holds
//! `stats::value(size, i)`, checked once by each client process before it
//! is timed) through the same loop ([`crate::readloop`]); repetitions are
//! interleaved across contenders, so a noisy stretch hits all alike.

use crate::floor::{self, SlotReader};
use crate::outproc::Kind;
use crate::procs::{self, Lines, Proc, WorkDir};
use crate::readloop::{self, Keys, Placement, Shape};
use crate::reads_worker::{self, Answer, Job, SetFile};
use crate::report::{ratio, Other, Report, Row, Target, MOPS, P50};
use crate::stats::{value, Measured, Rep, Summary};
use crate::worker::Worker;
use anyhow::Context;
use dashmap::DashMap;
use hreg::{Client, Handle, Op};
use hreg_proto::flags;
use hreg_registry::{Limits, Registry, DEFAULT_SHARDS};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{ChildStdin, Command, Stdio};
use std::time::Duration;

/// The section's name in the table.
const SECTION: &str = "7 reads";

/// Objects of each size the ring-path client checks before it is timed.
const RING_CHECKS: usize = 4096;

/// Value sizes read.
pub const SIZES: [usize; 2] = [16, 4096];

/// How a value is read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReadOp {
    /// Copied into the caller's buffer (`Client::get_into`, `hreg_get`;
    /// the maps: a copy out of the entry).
    Get,
    /// Copied into a new `Vec` (`Client::get`).
    GetVec,
    /// Borrowed in place (`Client::get_ref`; values short enough to live in
    /// their slot come as a copy).
    GetRef,
}

impl ReadOp {
    fn name(self) -> &'static str {
        match self {
            ReadOp::Get => "get",
            ReadOp::GetVec => "get (new Vec)",
            ReadOp::GetRef => "get_ref",
        }
    }

    fn key(self) -> &'static str {
        match self {
            ReadOp::Get => "get",
            ReadOp::GetVec => "getvec",
            ReadOp::GetRef => "getref",
        }
    }
}

/// Who answers a read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reader {
    Dashmap,
    Registry,
    Ring,
    Local,
}

impl Reader {
    const ALL: [Reader; 4] = [
        Reader::Dashmap,
        Reader::Registry,
        Reader::Ring,
        Reader::Local,
    ];

    fn name(self) -> &'static str {
        match self {
            Reader::Dashmap => "dashmap, in process",
            Reader::Registry => "hreg Registry, in process",
            Reader::Ring => "hregd, ring path",
            Reader::Local => "hregd, local path",
        }
    }

    fn key(self) -> &'static str {
        match self {
            Reader::Dashmap => "dashmap",
            Reader::Registry => "registry",
            Reader::Ring => "ring",
            Reader::Local => "local",
        }
    }

    /// What this reader offers. `HREG_READ_PATH=ring` leaves `get_ref`
    /// borrowing in place, so the ring path has only the copies.
    fn ops(self) -> &'static [ReadOp] {
        match self {
            Reader::Dashmap | Reader::Registry => &[ReadOp::Get],
            Reader::Ring => &[ReadOp::Get, ReadOp::GetVec],
            Reader::Local => &[ReadOp::Get, ReadOp::GetVec, ReadOp::GetRef],
        }
    }
}

/// Sizes of the section.
#[derive(Clone, Copy, Debug)]
pub struct Plan {
    /// Objects of 16 B (the issue: 10^6).
    pub objects_16: usize,
    /// Objects of 4 KiB (fewer: 10^6 of them would be 4 GiB per contender).
    pub objects_4k: usize,
    /// Slots of the seqlock floor (the issue: 2^20).
    pub floor_slots: usize,
    pub per_rep: Duration,
    pub reps: usize,
    /// Read-only load while the daemon's CPU time is measured.
    pub cpu_window: Duration,
    /// Also measure the daemon's CPU time under ring-path reads.
    pub ring_cpu: bool,
}

impl Plan {
    fn objects(&self, size: usize) -> usize {
        if size == 16 {
            self.objects_16
        } else {
            self.objects_4k
        }
    }
}

/// One configuration of one contender in the read matrix.
#[derive(Clone, Copy, Debug)]
pub struct Cell {
    pub reader: Reader,
    pub op: ReadOp,
    pub size: usize,
    pub keys: Keys,
    pub threads: usize,
    pub placement: Placement,
}

impl Cell {
    /// Its row's key.
    pub fn key(&self) -> String {
        format!(
            "reads/{}/{}/{}/{}/{}/{}",
            self.reader.key(),
            self.op.key(),
            self.size,
            self.keys.name(),
            self.threads,
            self.placement.name()
        )
    }

    /// Its row; a 2-thread row also gives its throughput over the
    /// 1-thread row's (already in `report`).
    fn row(&self, report: &Report, reps: &[Rep]) -> Row {
        let measured = Measured::from_reps(reps);
        let one_thread = Cell {
            threads: 1,
            ..*self
        };
        let other = (self.threads == 2)
            .then(|| {
                let one = report.median(&one_thread.key(), MOPS)?;
                let two = measured.mops?.median;
                Some(Other {
                    label: "2 thr / 1 thr throughput",
                    value: crate::single(two / one),
                })
            })
            .flatten();
        Row {
            section: SECTION,
            case: format!(
                "{} {} B, {} key{}, {} thr, {}: {}",
                self.op.name(),
                self.size,
                self.keys.name(),
                if self.keys == Keys::Hot { "" } else { "s" },
                self.threads,
                self.placement.name(),
                self.reader.name()
            ),
            key: self.key(),
            measured,
            other,
        }
    }
}

fn floor_key(reader: SlotReader, keys: Keys, placement: Placement) -> String {
    format!(
        "readfloor/{}/{}/{}",
        reader.key(),
        keys.name(),
        placement.name()
    )
}

fn c_key(what: &str, placement: Placement) -> String {
    format!("c/{what}/{}", placement.name())
}

fn cpu_key(reader: Reader) -> String {
    format!("readcpu/{}", reader.key())
}

/// Runs the section against `daemon` (fresh or not: its objects are
/// added, then removed) and adds its rows, and notes, to `report`.
pub fn run(
    plan: &Plan,
    daemon: &Proc,
    socket: &Path,
    dir: &WorkDir,
    report: &mut Report,
) -> anyhow::Result<()> {
    let began = std::time::Instant::now();
    let say = |what: String| {
        eprintln!(
            "[7/7] reads ({:.1} s): {what}",
            began.elapsed().as_secs_f64()
        )
    };
    say(format!("the seqlock floor over {} slots", plan.floor_slots));
    for case in floor::seqlock(plan.floor_slots, plan.per_rep, plan.reps)? {
        report.rows.push(Row {
            section: SECTION,
            case: format!(
                "floor: {} of 16 B another process wrote, {} of 2^{} slots, {}",
                case.reader.name(),
                case.keys.name(),
                plan.floor_slots.trailing_zeros(),
                case.placement.name()
            ),
            key: floor_key(case.reader, case.keys, case.placement),
            measured: Measured::from_reps(&case.reps),
            other: None,
        });
    }

    say(format!(
        "storing {} × 16 B and {} × 4 KiB in hregd",
        plan.objects_16, plan.objects_4k
    ));
    let client = Client::connect(socket).context("connecting to hregd")?;
    let mut sets = Vec::new();
    let mut stored = Vec::new();
    for size in SIZES {
        let handles = store(&client, size, plan.objects(size))?;
        sets.push(SetFile::write(
            size,
            &dir.path().join(format!("handles-{size}")),
            &handles,
        )?);
        stored.push(handles);
    }
    say("the same in process".into());
    let in_process = InProcess::new(plan)?;
    say("starting the client processes (they check the objects)".into());
    let worker_plan = reads_worker::Plan {
        socket: socket.to_path_buf(),
        sets,
        checks: usize::MAX,
    };
    let mut ring = ReadClient::start(Reader::Ring, &worker_plan)?;
    let mut local = ReadClient::start(Reader::Local, &worker_plan)?;

    say("the matrix".into());
    matrix(plan, &in_process, &mut ring, &mut local, report)?;
    drop(in_process);

    let mut loaded = vec![&mut local];
    if plan.ring_cpu {
        loaded.push(&mut ring);
    }
    for client in loaded {
        say(format!(
            "hregd's CPU under {:?} of {} reads",
            plan.cpu_window,
            client.reader.key()
        ));
        report.rows.push(cpu_under_load(plan, daemon, client)?);
    }
    ring.finish()?;
    local.finish()?;
    for handles in &mut stored {
        remove_all(&client, handles)?;
    }

    say("hreg_get and a handle's life from C against a 64-shard map in C".into());
    match read_ratio_program(dir.path())? {
        Ok(program) => {
            for placement in [Placement::Unpinned, Placement::Pinned] {
                report
                    .rows
                    .extend(c_rows(&program, socket, plan, placement)?);
            }
        }
        Err(why) => report
            .notes
            .push(format!("section 7, C ratio skipped: {why}")),
    }
    say("done".into());
    Ok(())
}

/// Stores `n` objects of `size` bytes (object `i` holds `value(size, i)`),
/// 64 to a batch.
fn store(client: &Client, size: usize, n: usize) -> anyhow::Result<Vec<Handle>> {
    let mut handles = Vec::with_capacity(n);
    while handles.len() < n {
        let values: Vec<Vec<u8>> = (handles.len()..n.min(handles.len() + 64))
            .map(|i| value(size, i as u64))
            .collect();
        let mut ops: Vec<Op<'_>> = values
            .iter()
            .map(|v| Op::Insert { value: v, flags: 0 })
            .collect();
        for result in client.submit(&mut ops)? {
            if let hreg::Completion::Inserted(h) = result? {
                handles.push(h);
            }
        }
    }
    Ok(handles)
}

/// Removes `handles`, 64 to a batch.
fn remove_all(client: &Client, handles: &mut Vec<Handle>) -> anyhow::Result<()> {
    for chunk in handles.chunks(64) {
        let mut ops: Vec<Op<'_>> = chunk.iter().map(|&h| Op::Remove(h)).collect();
        for result in client.submit(&mut ops)? {
            result?;
        }
    }
    handles.clear();
    Ok(())
}

/// The in-process contenders, holding the same values as the daemon.
struct InProcess {
    /// Per size: key `i` holds `value(size, i)`.
    dashmaps: Vec<DashMap<u64, Box<[u8]>>>,
    registry: Registry,
    holder: hreg_registry::Holder,
    /// Per size: handle `i` holds `value(size, i)`.
    registry_handles: Vec<Vec<Handle>>,
}

impl InProcess {
    fn new(plan: &Plan) -> anyhow::Result<InProcess> {
        let registry = Registry::new(DEFAULT_SHARDS, Limits::default())
            .context("the in-process registry's memory")?;
        let holder = registry.holder(1000).context("a session's record")?;
        let mut dashmaps = Vec::new();
        let mut registry_handles = Vec::new();
        for size in SIZES {
            let n = plan.objects(size);
            let map = DashMap::new();
            let mut handles = Vec::with_capacity(n);
            for i in 0..n {
                let v = value(size, i as u64);
                handles.push(
                    registry
                        .insert(&holder, &v, flags::DETACHED)
                        .map_err(|s| anyhow::anyhow!("registry insert: {s:?}"))?,
                );
                map.insert(i as u64, v.into_boxed_slice());
            }
            dashmaps.push(map);
            registry_handles.push(handles);
        }
        Ok(InProcess {
            dashmaps,
            registry,
            holder,
            registry_handles,
        })
    }

    fn at(size: usize) -> usize {
        SIZES.iter().position(|&s| s == size).expect("a size read")
    }

    /// One repetition of a get of `size` bytes.
    fn rep(&self, reader: Reader, size: usize, shape: &Shape) -> anyhow::Result<Rep> {
        let ends = |v: &[u8]| v[0] ^ v[v.len() - 1];
        match reader {
            Reader::Dashmap => {
                let map = &self.dashmaps[Self::at(size)];
                readloop::drive(shape, size, |i, buf| {
                    let entry = map.get(&(i as u64)).ok_or("no such key")?;
                    buf.copy_from_slice(&entry);
                    Ok::<u8, &str>(ends(buf))
                })
            }
            Reader::Registry => {
                let handles = &self.registry_handles[Self::at(size)];
                readloop::drive(shape, size, |i, buf| {
                    self.registry
                        .get_with(&self.holder, handles[i], |v| {
                            buf.copy_from_slice(v);
                            ends(buf)
                        })
                        .map_err(|s| format!("{s:?}"))
                })
            }
            Reader::Ring | Reader::Local => {
                anyhow::bail!("{} reads in a client process", reader.key())
            }
        }
    }
}

/// A client process of the section ([`reads_worker`]).
struct ReadClient {
    reader: Reader,
    proc: Proc,
    stdin: Option<ChildStdin>,
    lines: Lines,
}

impl ReadClient {
    /// Starts it (ring path or local path) and waits until it has checked
    /// the objects. Call from the main thread.
    fn start(reader: Reader, plan: &reads_worker::Plan) -> anyhow::Result<ReadClient> {
        let plan = reads_worker::Plan {
            checks: match reader {
                // A round trip each: a sample is enough.
                Reader::Ring => RING_CHECKS,
                _ => plan.checks,
            },
            ..plan.clone()
        };
        let mut command: Command = Worker::Reads(plan).command()?;
        match reader {
            Reader::Ring => command.env("HREG_READ_PATH", "ring"),
            _ => command.env_remove("HREG_READ_PATH"),
        };
        command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut proc = Proc::start("read client", command)?;
        let stdin = proc.take_stdin();
        let lines = Lines::read(proc.take_stdout().context("piped stdout")?, reader.key())?;
        match lines.next(Duration::from_secs(300)) {
            Some(line) if line == "ready" => {}
            other => anyhow::bail!(
                "the {} read client did not get ready ({other:?}; its errors are above)",
                reader.key()
            ),
        }
        Ok(ReadClient {
            reader,
            proc,
            stdin,
            lines,
        })
    }

    /// Runs one job in the client process.
    fn job(&mut self, job: &Job) -> anyhow::Result<Rep> {
        let stdin = self.stdin.as_mut().context("the read client is finished")?;
        writeln!(stdin, "{}", serde_json::to_string(job)?)?;
        stdin.flush()?;
        let patience = job.shape.run_for + Duration::from_secs(60);
        let line = self.lines.next(patience).with_context(|| {
            format!(
                "the {} read client did not answer (its errors are above)",
                self.reader.key()
            )
        })?;
        let answer: Answer = serde_json::from_str(&line).context("the read client's answer")?;
        answer
            .rep()
            .with_context(|| format!("{} read client", self.reader.key()))
    }

    /// Ends its input and waits for it to exit.
    fn finish(&mut self) -> anyhow::Result<()> {
        self.stdin = None;
        let status = self.proc.wait_or_kill(Duration::from_secs(10))?;
        anyhow::ensure!(
            status.success(),
            "the {} read client ended with {status}",
            self.reader.key()
        );
        Ok(())
    }
}

/// Every (reader, op) pair, for one configuration.
fn contenders() -> Vec<(Reader, ReadOp)> {
    Reader::ALL
        .iter()
        .flat_map(|&r| r.ops().iter().map(move |&op| (r, op)))
        .collect()
}

/// The read matrix: every contender on every configuration, repetitions
/// interleaved (each repetition starts with another contender).
fn matrix(
    plan: &Plan,
    in_process: &InProcess,
    ring: &mut ReadClient,
    local: &mut ReadClient,
    report: &mut Report,
) -> anyhow::Result<()> {
    let contenders = contenders();
    for size in SIZES {
        for keys in [Keys::Hot, Keys::Random] {
            for placement in [Placement::Unpinned, Placement::Pinned] {
                for threads in [1, 2] {
                    let mut reps: Vec<Vec<Rep>> = vec![Vec::new(); contenders.len()];
                    for rep in 0..plan.reps {
                        let shape = Shape {
                            keys,
                            objects: plan.objects(size),
                            threads,
                            placement,
                            run_for: plan.per_rep,
                            seed: rep as u64,
                        };
                        for k in 0..contenders.len() {
                            let at = (k + rep) % contenders.len();
                            let (reader, op) = contenders[at];
                            let job = Job { op, size, shape };
                            reps[at].push(match reader {
                                Reader::Ring => ring.job(&job)?,
                                Reader::Local => local.job(&job)?,
                                _ => in_process.rep(reader, size, &shape)?,
                            });
                        }
                    }
                    for (&(reader, op), reps) in contenders.iter().zip(&reps) {
                        let cell = Cell {
                            reader,
                            op,
                            size,
                            keys,
                            threads,
                            placement,
                        };
                        report.rows.push(cell.row(report, reps));
                    }
                }
            }
        }
    }
    Ok(())
}

/// hregd's CPU time while `client` reads 16-byte values on random keys
/// with 2 threads for the plan's window, as a share of the client's.
fn cpu_under_load(plan: &Plan, daemon: &Proc, client: &mut ReadClient) -> anyhow::Result<Row> {
    let job = Job {
        op: ReadOp::Get,
        size: 16,
        shape: Shape {
            keys: Keys::Random,
            objects: plan.objects_16,
            threads: 2,
            placement: Placement::Unpinned,
            run_for: plan.cpu_window,
            seed: 99,
        },
    };
    let (daemon_before, client_before) = (daemon.cpu_time()?, client.proc.cpu_time()?);
    let rep = client.job(&job)?;
    let daemon_used = daemon.cpu_time()? - daemon_before;
    let client_used = client.proc.cpu_time()? - client_before;
    let share = daemon_used.as_secs_f64() / client_used.as_secs_f64().max(1e-9) * 100.0;
    eprintln!(
        "      hregd {:.3} s, the client {:.3} s of CPU",
        daemon_used.as_secs_f64(),
        client_used.as_secs_f64()
    );
    Ok(Row {
        section: SECTION,
        case: format!(
            "read-only load, {:?}: get 16 B, random keys, 2 thr, {}",
            plan.cpu_window,
            client.reader.name()
        ),
        key: cpu_key(client.reader),
        measured: Measured::from_reps(&[rep]),
        other: Some(Other {
            label: "hregd CPU, % of the client's CPU",
            value: crate::single(share),
        }),
    })
}

/// `bench/langs/read_ratio.c` compiled against libhreg (built by cargo),
/// or why it cannot be: no C compiler, no libhreg.
fn read_ratio_program(dir: &Path) -> anyhow::Result<Result<PathBuf, String>> {
    let Some(cc) = procs::which("cc") else {
        return Ok(Err("no C compiler (`cc`) on $PATH".into()));
    };
    let Some(built) = procs::find_libhreg() else {
        return Ok(Err(format!(
            "libhreg is not built; build it first: {}",
            procs::build_command("hreg-c", None)
        )));
    };
    // The library under its SONAME, as the dynamic linker looks for it.
    let lib = dir.join("lib");
    std::fs::create_dir_all(&lib)?;
    for name in ["libhreg.so", "libhreg.so.0"] {
        let link = lib.join(name);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&built, &link)?;
    }
    let sources = Path::new(env!("CARGO_MANIFEST_DIR"));
    let program = dir.join("read_ratio");
    let output = Command::new(cc)
        .args(["-std=c11", "-O2", "-Wall", "-Wextra", "-Werror", "-I"])
        .arg(sources.join("../client-c/include"))
        .arg(sources.join("langs/read_ratio.c"))
        .arg("-o")
        .arg(&program)
        .arg(format!("-L{}", lib.display()))
        .arg(format!("-Wl,-rpath,{}", lib.display()))
        .args(["-lhreg", "-pthread"])
        .output()
        .context("running cc")?;
    anyhow::ensure!(
        output.status.success(),
        "compiling read_ratio.c failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(Ok(program))
}

/// What `read_ratio` prints.
#[derive(Deserialize)]
struct CFigures {
    hreg_get: CSeries,
    map_get: CSeries,
    hreg_life: CSeries,
    map_life: CSeries,
}

/// One contender's repetitions.
#[derive(Deserialize)]
struct CSeries {
    p50_ns: Vec<f64>,
    mops: Vec<f64>,
}

impl CSeries {
    fn measured(&self) -> Measured {
        let reps: Vec<Rep> = self
            .p50_ns
            .iter()
            .zip(&self.mops)
            .map(|(&p50, &mops)| Rep {
                ops_per_sec: mops * 1e6,
                latency: Some(crate::stats::Percentiles {
                    p50,
                    p99: f64::NAN,
                    p999: f64::NAN,
                }),
            })
            .collect();
        Measured::from_reps(&reps)
    }
}

/// Runs `read_ratio` once: its two rows.
fn c_rows(
    program: &Path,
    socket: &Path,
    plan: &Plan,
    placement: Placement,
) -> anyhow::Result<Vec<Row>> {
    let mut command = Command::new(program);
    command
        .arg(socket)
        .arg(plan.per_rep.as_millis().max(1).to_string())
        .arg(plan.reps.to_string())
        .arg(placement.name())
        .env_remove("HREG_READ_PATH")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let mut proc = Proc::start("read_ratio", command)?;
    let lines = Lines::read(proc.take_stdout().context("piped stdout")?, "read_ratio")?;
    let patience = plan.per_rep * 2 * plan.reps as u32 + Duration::from_secs(60);
    let line = lines.next(patience);
    let status = proc.wait_or_kill(Duration::from_secs(10))?;
    let line = line
        .filter(|_| status.success())
        .with_context(|| format!("read_ratio failed ({status}; its errors are above)"))?;
    let figures: CFigures = serde_json::from_str(&line).context("read_ratio's figures")?;
    Ok(vec![
        Row {
            section: SECTION,
            case: format!(
                "C: hreg_get 16 B, hot key, 1 thr, {}: hregd, local path",
                placement.name()
            ),
            key: c_key("hreg_get", placement),
            measured: figures.hreg_get.measured(),
            other: None,
        },
        Row {
            section: SECTION,
            case: format!(
                "C: get 16 B, hot key, 1 thr, {}: 64-shard map (rwlock + lookup + copy), in process",
                placement.name()
            ),
            key: c_key("map_get", placement),
            measured: figures.map_get.measured(),
            other: None,
        },
        Row {
            section: SECTION,
            case: format!(
                "C: a handle's life (hreg_insert + hreg_get + hreg_release 16 B), 1 thr, {}: hregd",
                placement.name()
            ),
            key: c_key("hreg_life", placement),
            measured: figures.hreg_life.measured(),
            other: None,
        },
        Row {
            section: SECTION,
            case: format!(
                "C: a life (insert + get + delete 16 B), 1 thr, {}: 64-shard map, in process",
                placement.name()
            ),
            key: c_key("map_life", placement),
            measured: figures.map_life.measured(),
            other: None,
        },
    ])
}

/// The figures of earlier runs (`--json` of any version with section 3),
/// against which this run's writes are judged.
pub struct Baseline {
    files: Vec<PathBuf>,
    /// Each file's rows.
    runs: Vec<Vec<serde_json::Value>>,
}

impl Baseline {
    pub fn load(files: &[PathBuf]) -> anyhow::Result<Baseline> {
        let runs = files
            .iter()
            .map(|file| {
                let text = std::fs::read_to_string(file)
                    .with_context(|| format!("reading {}", file.display()))?;
                let json: serde_json::Value = serde_json::from_str(&text)
                    .with_context(|| format!("parsing {}", file.display()))?;
                json.get("rows")
                    .and_then(|r| r.as_array())
                    .cloned()
                    .with_context(|| format!("{} has no rows", file.display()))
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(Baseline {
            files: files.to_vec(),
            runs,
        })
    }

    /// The median over the files of the median of figure `field` (`mops`,
    /// `p50_ns`) of row `key`.
    fn median(&self, key: &str, field: &str) -> Option<f64> {
        let medians: Vec<f64> = self
            .runs
            .iter()
            .filter_map(|rows| {
                rows.iter()
                    .find(|r| r.get("key").and_then(|k| k.as_str()) == Some(key))?
                    .get(field)?
                    .get("median")?
                    .as_f64()
            })
            .collect();
        Summary::of(&medians).map(|s| s.median)
    }

    fn describe(&self) -> String {
        match self.files.as_slice() {
            [one] => format!("baseline: {}", one.display()),
            many => format!(
                "baseline: median of {} runs ({}, …)",
                many.len(),
                many[0].display()
            ),
        }
    }
}

/// Every target of issue 11 against this run's figures (and, for writes,
/// against `baseline`).
pub fn targets(report: &Report, baseline: Option<&Baseline>) -> Vec<Target> {
    let get = |key: &str, pick| report.median(key, pick);
    let mut out = Vec::new();
    for placement in [Placement::Pinned, Placement::Unpinned] {
        let how = placement.name();
        let figure = |reader, op, size, keys, threads, pick| {
            let cell = Cell {
                reader,
                op,
                size,
                keys,
                threads,
                placement,
            };
            get(&cell.key(), pick)
        };
        let dash = |keys| figure(Reader::Dashmap, ReadOp::Get, 16, keys, 1, P50);
        let local =
            |op, size, keys, threads, pick| figure(Reader::Local, op, size, keys, threads, pick);
        for keys in [Keys::Hot, Keys::Random] {
            let k = keys.name();
            // Name, numerator, denominator, bound, whether at most.
            let ratios = [
                (
                    format!(
                        "floor: seqlock read 16 B, {k} / dashmap get 16 B, {k}, 1 thr ({how}; ns)"
                    ),
                    get(&floor_key(SlotReader::Least, keys, placement), P50),
                    dash(keys),
                    1.0,
                    true,
                ),
                (
                    format!("cross-process get 16 B / dashmap get 16 B, {k}, 1 thr ({how}; ns)"),
                    local(ReadOp::Get, 16, keys, 1, P50),
                    dash(keys),
                    1.0,
                    true,
                ),
                (
                    format!("cross-process get 16 B, {k}: 2 thr / 1 thr ({how}; throughput)"),
                    local(ReadOp::Get, 16, keys, 2, MOPS),
                    local(ReadOp::Get, 16, keys, 1, MOPS),
                    1.8,
                    false,
                ),
                (
                    format!("get_ref 4 KiB / get 16 B, {k}, 1 thr ({how}; ns)"),
                    local(ReadOp::GetRef, 4096, keys, 1, P50),
                    local(ReadOp::Get, 16, keys, 1, P50),
                    1.5,
                    true,
                ),
            ];
            for (name, a, b, bound, at_most) in ratios {
                out.push(Target::new(name, ratio(a, b), bound, at_most, ""));
            }
        }
        out.push(Target::new(
            format!("C: hreg_get 16 B hot / 64-shard map get 16 B hot ({how}; ns)"),
            ratio(
                get(&c_key("hreg_get", placement), P50),
                get(&c_key("map_get", placement), P50),
            ),
            1.5,
            true,
            "",
        ));
        out.push(Target::new(
            format!("C: a handle's life, hreg / 64-shard map ({how}; ns)"),
            ratio(
                get(&c_key("hreg_life", placement), P50),
                get(&c_key("map_life", placement), P50),
            ),
            2.0,
            true,
            "",
        ));
    }
    out.push(Target::new(
        "hregd CPU during read-only load, % of the clients' CPU",
        report.other_median(&cpu_key(Reader::Local)),
        1.0,
        true,
        "",
    ));
    out.extend(write_targets(report, baseline));
    out
}

/// Writes no slower than the baseline: p50 of single inserts, replaces and
/// removes within 10 %, and their batch-64 throughput, 1 thread.
fn write_targets(report: &Report, baseline: Option<&Baseline>) -> Vec<Target> {
    let note = match baseline {
        Some(b) => b.describe(),
        None => "no --baseline FILE given".into(),
    };
    let mut out = Vec::new();
    for kind in [Kind::Insert, Kind::Replace, Kind::Remove] {
        for size in [16, 4096] {
            // Batch, figure, its name in the baseline, what it is, bound,
            // whether at most.
            let figures = [
                (1, P50, "p50_ns", "p50", 1.1, true),
                (64, MOPS, "mops", "batch 64 throughput", 0.9, false),
            ];
            for (batch, pick, field, what, bound, at_most) in figures {
                let key = crate::case_key("hreg", kind, size, 1, batch);
                out.push(Target::new(
                    format!("{} {size} B {what}, 1 thr / baseline", kind.name()),
                    ratio(
                        report.median(&key, pick),
                        baseline.and_then(|b| b.median(&key, field)),
                    ),
                    bound,
                    at_most,
                    &note,
                ));
            }
        }
    }
    out
}
