//! The processes the bench starts and how they end: its temporary
//! directory, `hregd`, `redis-server`, `hreg-attack` and its own worker
//! children (which die with the bench, by `PR_SET_PDEATHSIG`), cleanup on
//! SIGINT/SIGTERM, their descriptor limits and uids, the lines they print,
//! and what `/proc` says about a child (memory, descriptors, CPU time).

use anyhow::{bail, Context};
use hreg_proto::locks::lock;
use std::io::{BufRead, Read, Write};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::{mpsc, Mutex};
use std::time::{Duration, Instant};

/// The descriptor limit hregd gets: the shipped unit's `LimitNOFILE`
/// (`dist/hregd.service`), or the bench's hard limit if that is lower.
pub const HREGD_NOFILE: u64 = 65536;

/// The descriptor limit the bench raises itself to (children inherit it):
/// room for attackers holding tens of thousands of connections and rings.
pub const BENCH_NOFILE: u64 = 1 << 17;

/// Uids the bench runs other users' processes under when it runs as root:
/// nobody (65534) and the ids just below it, unused on a usual system.
pub const OTHER_UIDS: [u32; 4] = [65534, 65533, 65532, 65531];

/// Whether the bench runs as root (and may start processes as other uids).
pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// Makes `command` run as `uid` (its gid the same number, no
/// supplementary groups).
pub fn as_uid(command: &mut Command, uid: u32) {
    command.uid(uid).gid(uid);
}
/// What a signal must clean up: the work directory and the live children.
static LIVE: Mutex<Live> = Mutex::new(Live {
    dir: None,
    children: Vec::new(),
});

struct Live {
    dir: Option<PathBuf>,
    children: Vec<i32>,
}

fn live() -> std::sync::MutexGuard<'static, Live> {
    lock(&LIVE)
}

/// On SIGINT or SIGTERM: kill the children, remove the directory, exit 130.
pub fn install_signal_cleanup() -> anyhow::Result<()> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])?;
    std::thread::Builder::new()
        .name("cleanup".into())
        .spawn(move || {
            if signals.forever().next().is_some() {
                let live = live();
                for &pid in &live.children {
                    // SAFETY: kill(2) with a pid this process spawned and has
                    // not reaped yet; no memory is involved.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
                if let Some(dir) = &live.dir {
                    let _ = std::fs::remove_dir_all(dir);
                }
                eprintln!(
                    "hreg-bench: interrupted; children stopped, {:?} removed",
                    live.dir
                );
                std::process::exit(130);
            }
        })?;
    Ok(())
}

/// The bench's temporary directory; removed on drop (and on a signal)
/// unless kept.
pub struct WorkDir {
    path: PathBuf,
    keep: bool,
}

impl WorkDir {
    pub fn create() -> anyhow::Result<WorkDir> {
        let path = std::env::temp_dir().join(format!("hreg-bench-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir(&path).with_context(|| format!("creating {}", path.display()))?;
        live().dir = Some(path.clone());
        Ok(WorkDir { path, keep: false })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Lets other uids reach what is inside (the socket; 0755).
    pub fn open_to_others(&self) -> anyhow::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&self.path, std::fs::Permissions::from_mode(0o755))
            .with_context(|| format!("chmod 755 {}", self.path.display()))
    }

    /// Leaves the directory (its logs) in place when dropped.
    pub fn keep(&mut self) {
        self.keep = true;
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        live().dir = None;
        if !self.keep {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// A child process that dies with the bench and is stopped on drop.
pub struct Proc {
    child: Child,
    name: &'static str,
    /// Set once reaped: its pid may then belong to another process.
    exited: Option<ExitStatus>,
}

impl Proc {
    /// Starts `command` with stdout and stderr in `log`. Call from the main
    /// thread: the death signal follows the thread that forked.
    pub fn spawn(name: &'static str, mut command: Command, log: &Path) -> anyhow::Result<Proc> {
        let log = std::fs::File::create(log)?;
        command
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        Proc::start(name, command)
    }

    /// Starts `command` with the standard streams it was given; it gets
    /// SIGKILL if the bench dies. Call from the main thread.
    pub fn start(name: &'static str, mut command: Command) -> anyhow::Result<Proc> {
        // SAFETY: the closure runs in the forked child before exec and only
        // calls prctl(2), which is async-signal-safe.
        unsafe {
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command
            .spawn()
            .with_context(|| format!("starting {name} ({command:?})"))?;
        live().children.push(child.id() as i32);
        Ok(Proc {
            child,
            name,
            exited: None,
        })
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// The child's standard output, if it was piped and not taken yet.
    pub fn take_stdout(&mut self) -> Option<std::process::ChildStdout> {
        self.child.stdout.take()
    }

    /// The child's standard input, if it was piped and not taken yet
    /// (dropping it closes the pipe).
    pub fn take_stdin(&mut self) -> Option<ChildStdin> {
        self.child.stdin.take()
    }

    /// Waits up to `patience` for the child to end, then kills it.
    pub fn wait_or_kill(&mut self, patience: Duration) -> anyhow::Result<ExitStatus> {
        let deadline = Instant::now() + patience;
        while Instant::now() < deadline {
            if let Some(status) = self.try_wait()? {
                return Ok(status);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.kill()
    }

    /// How the child ended, if it has (reaping it).
    pub fn try_wait(&mut self) -> anyhow::Result<Option<ExitStatus>> {
        if self.exited.is_none() {
            if let Some(status) = self.child.try_wait()? {
                self.reaped(status);
            }
        }
        Ok(self.exited)
    }

    /// SIGKILL now, and reap.
    pub fn kill(&mut self) -> anyhow::Result<ExitStatus> {
        if let Some(status) = self.exited {
            return Ok(status);
        }
        let _ = self.child.kill();
        let status = self.child.wait()?;
        self.reaped(status);
        Ok(status)
    }

    /// Records the exit; the pid is no longer ours to signal.
    fn reaped(&mut self, status: ExitStatus) {
        self.exited = Some(status);
        let pid = self.pid();
        live().children.retain(|&p| p != pid);
    }

    /// Fails if the child has exited.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.try_wait()? {
            bail!("{} exited early: {status}", self.name);
        }
        Ok(())
    }

    /// Resident memory in bytes (`VmRSS`).
    pub fn rss_bytes(&self) -> anyhow::Result<u64> {
        self.status_bytes("VmRSS")
    }

    /// Peak resident memory in bytes (`VmHWM`).
    pub fn peak_rss_bytes(&self) -> anyhow::Result<u64> {
        self.status_bytes("VmHWM")
    }

    /// A `kB` field of `/proc/PID/status` (`VmRSS`, `RssAnon`, …), in
    /// bytes.
    pub fn status_bytes(&self, field: &str) -> anyhow::Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))?;
        let kib = status
            .lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .with_context(|| format!("no {field}"))?;
        Ok(kib * 1024)
    }

    /// Open descriptors (entries of `/proc/PID/fd`), but the registry's own
    /// memory (its header and each domain's chunks and records, `memfd:hreg-
    /// header` and `memfd:hreg-d*`, and the read-only reopen clients get of
    /// each): it grows with the registry and is never given back, so it is
    /// not what a leak looks like.
    pub fn fd_count(&self) -> anyhow::Result<usize> {
        let dir = format!("/proc/{}/fd", self.pid());
        let mut count = 0;
        for entry in std::fs::read_dir(&dir)? {
            let target = std::fs::read_link(entry?.path()).unwrap_or_default();
            let name = target.to_string_lossy();
            if !(name.contains("memfd:hreg-d") || name.contains("memfd:hreg-header")) {
                count += 1;
            }
        }
        Ok(count)
    }

    /// User plus system CPU time so far.
    pub fn cpu_time(&self) -> anyhow::Result<Duration> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid()))?;
        // Fields after the command name, which ends with the last ')'.
        let rest = &stat[stat.rfind(')').context("bad stat")? + 2..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks: u64 = fields[11].parse::<u64>()? + fields[12].parse::<u64>()?;
        // SAFETY: sysconf(3) has no memory effects.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
        Ok(Duration::from_nanos(ticks * 1_000_000_000 / hz))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let pid = self.pid();
        live().children.retain(|&p| p != pid);
        if self.exited.is_some() {
            return;
        }
        // SAFETY: kill(2) on our own unreaped child.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The hregd binary: `explicit`, else the one next to this executable.
pub fn find_hregd(explicit: Option<&Path>) -> Option<PathBuf> {
    find_binary(explicit, "hregd", "hregd")
}

/// The `hreg-attack` binary (of the `hreg-tests` package), like hregd.
pub fn find_hreg_attack(explicit: Option<&Path>) -> Option<PathBuf> {
    find_binary(explicit, "hreg-tests", "hreg-attack")
}

/// Binary `bin` of workspace package `package`: `explicit`, else the one
/// next to this executable, brought up to date first ([`cargo_build`]).
fn find_binary(explicit: Option<&Path>, package: &str, bin: &str) -> Option<PathBuf> {
    if let Some(path) = explicit {
        return Some(path.to_path_buf());
    }
    let path = std::env::current_exe().ok()?.parent()?.join(bin);
    cargo_build(package, Some(bin));
    path.is_file().then_some(path)
}

/// libhreg as cargo builds it (`libhreg_c.so`, next to this executable),
/// brought up to date first ([`cargo_build`]).
pub fn find_libhreg() -> Option<PathBuf> {
    let path = std::env::current_exe().ok()?.parent()?.join("libhreg_c.so");
    cargo_build("hreg-c", None);
    path.is_file().then_some(path)
}

/// Under `cargo run` (which sets `$CARGO`), brings binary `bin` (or, with
/// `None`, the library) of workspace package `package` up to date with
/// `cargo build -p PACKAGE --bin BIN` (`--lib`) in this executable's
/// profile, since cargo does not build a dependency's binaries, nor a C
/// library, by itself. Run directly, the bench builds nothing.
fn cargo_build(package: &str, bin: Option<&str>) {
    let (Some(cargo), Some(manifest)) = (
        std::env::var_os("CARGO"),
        std::env::var_os("CARGO_MANIFEST_DIR"),
    ) else {
        return;
    };
    let mut build = Command::new(cargo);
    build.args(["build", "--quiet", "-p", package]);
    match bin {
        Some(bin) => build.args(["--bin", bin]),
        None => build.arg("--lib"),
    };
    build
        .arg("--manifest-path")
        .arg(Path::new(&manifest).join("../Cargo.toml"));
    if !cfg!(debug_assertions) {
        build.arg("--release");
    }
    if !build.status().is_ok_and(|s| s.success()) {
        eprintln!("hreg-bench: building {package} failed");
    }
}

/// The command that builds `bin` of `package` (with `None`, its library)
/// where this executable looks for it.
pub fn build_command(package: &str, bin: Option<&str>) -> String {
    let profile = if cfg!(debug_assertions) {
        ""
    } else {
        " --release"
    };
    match bin {
        Some(bin) => format!("cargo build{profile} -p {package} --bin {bin}"),
        None => format!("cargo build{profile} -p {package} --lib"),
    }
}

/// Starts hregd with default flags (only the socket path is given) and
/// waits until it accepts connections.
pub fn start_hregd(binary: &Path, dir: &Path) -> anyhow::Result<(Proc, PathBuf)> {
    start_hregd_with(binary, dir, &[], None)
}

/// The descriptor limit a child can be given: `wanted`, or the bench's
/// hard limit if that is lower (raising it needs `CAP_SYS_RESOURCE`).
pub fn nofile_within_reach(wanted: u64) -> u64 {
    let hard = rustix::process::getrlimit(rustix::process::Resource::Nofile).maximum;
    hard.map_or(wanted, |hard| wanted.min(hard))
}

/// Starts hregd with `flags` besides the socket path (its log is
/// `DIR/hregd.log`), with descriptor limit `nofile` when given (else the
/// bench's; see [`nofile_within_reach`]), and waits until it accepts
/// connections.
pub fn start_hregd_with(
    binary: &Path,
    dir: &Path,
    flags: &[&str],
    nofile: Option<u64>,
) -> anyhow::Result<(Proc, PathBuf)> {
    let socket = dir.join("hregd.sock");
    let mut command = Command::new(binary);
    command.arg("--socket").arg(&socket).args(flags);
    if let Some(limit) = nofile {
        let limit = nofile_within_reach(limit) as libc::rlim_t;
        // SAFETY: setrlimit(2) is async-signal-safe and touches only the
        // struct on this closure's stack.
        unsafe {
            command.pre_exec(move || {
                let both = libc::rlimit {
                    rlim_cur: limit,
                    rlim_max: limit,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &both) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    let mut proc = Proc::spawn("hregd", command, &dir.join("hregd.log"))?;
    wait_for(&mut proc, || hreg::Client::connect(&socket).is_ok())?;
    Ok((proc, socket))
}

/// A setting of hregd with `flags`, as `hregd --check-config` prints it
/// (`key: value,`); `None` if it cannot tell.
pub fn hregd_setting(binary: &Path, flags: &[&str], key: &str) -> Option<u64> {
    let output = Command::new(binary)
        .args(["--socket", "/nonexistent/check.sock", "--check-config"])
        .args(flags)
        .stderr(Stdio::null())
        .output()
        .ok()?;
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .find_map(|line| {
            let value = line.strip_prefix(key)?.trim_start().strip_prefix('=')?;
            value.trim().parse().ok()
        })
}

/// Starts `redis-server` on a Unix socket only, without persistence, and
/// waits until it answers PING.
pub fn start_redis(binary: &Path, dir: &Path) -> anyhow::Result<(Proc, PathBuf)> {
    let socket = dir.join("redis.sock");
    let mut command = Command::new(binary);
    command
        .args(["--port", "0", "--unixsocket"])
        .arg(&socket)
        .args(["--save", "", "--appendonly", "no"]);
    let mut proc = Proc::spawn("redis-server", command, &dir.join("redis.log"))?;
    wait_for(&mut proc, || {
        let Ok(mut s) = UnixStream::connect(&socket) else {
            return false;
        };
        let mut reply = [0u8; 7];
        s.write_all(b"PING\r\n").is_ok()
            && s.read_exact(&mut reply).is_ok()
            && &reply == b"+PONG\r\n"
    })?;
    Ok((proc, socket))
}

fn wait_for(proc: &mut Proc, mut ready: impl FnMut() -> bool) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        proc.check_alive()?;
        if ready() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    bail!("{} did not become ready in 10 s", proc.name)
}

/// `name` if it is an executable file on `$PATH` (or a path that exists).
pub fn which(name: &str) -> Option<PathBuf> {
    if name.contains('/') {
        return Path::new(name).is_file().then(|| PathBuf::from(name));
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// The lines a child prints, read by a thread of their own so that waiting
/// for one can time out.
pub struct Lines {
    lines: mpsc::Receiver<String>,
}

impl Lines {
    /// Reads `from` (a child's stdout) line by line until it ends.
    pub fn read(from: impl Read + Send + 'static, name: &str) -> anyhow::Result<Lines> {
        let (tx, lines) = mpsc::channel();
        std::thread::Builder::new()
            .name(format!("lines-{name}"))
            .spawn(move || {
                for line in std::io::BufReader::new(from).lines() {
                    let Ok(line) = line else { break };
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            })?;
        Ok(Lines { lines })
    }

    /// The next line, or `None` if none came within `patience` or the
    /// output ended.
    pub fn next(&self, patience: Duration) -> Option<String> {
        self.lines.recv_timeout(patience).ok()
    }
}
