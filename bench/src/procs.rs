//! The processes the bench starts and how they end: its temporary
//! directory, `hregd`, `redis-server` and soak client children (which die
//! with the bench, by `PR_SET_PDEATHSIG`), cleanup on SIGINT/SIGTERM, and
//! what `/proc` says about a child (resident memory, descriptors, CPU time).

use anyhow::{bail, Context};
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

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
    LIVE.lock().unwrap_or_else(|e| e.into_inner())
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
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))?;
        let kib = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .context("no VmRSS")?;
        Ok(kib * 1024)
    }

    /// Open descriptors (entries of `/proc/PID/fd`).
    pub fn fd_count(&self) -> anyhow::Result<usize> {
        Ok(std::fs::read_dir(format!("/proc/{}/fd", self.pid()))?.count())
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
/// Under `cargo run` (which sets `$CARGO`) it is first brought up to date
/// with `cargo build -p hregd` in this executable's profile, since cargo
/// does not build a dependency's binaries by itself.
pub fn find_hregd(explicit: Option<&Path>) -> Option<PathBuf> {
    if let Some(path) = explicit {
        return Some(path.to_path_buf());
    }
    let path = std::env::current_exe().ok()?.parent()?.join("hregd");
    if let (Some(cargo), Some(manifest)) = (
        std::env::var_os("CARGO"),
        std::env::var_os("CARGO_MANIFEST_DIR"),
    ) {
        let mut build = Command::new(cargo);
        build
            .args(["build", "--quiet", "-p", "hregd", "--manifest-path"])
            .arg(Path::new(&manifest).join("../Cargo.toml"));
        if !cfg!(debug_assertions) {
            build.arg("--release");
        }
        if !build.status().is_ok_and(|s| s.success()) {
            eprintln!("hreg-bench: building hregd failed");
        }
    }
    path.is_file().then_some(path)
}

/// The command that builds the hregd this executable looks for.
pub fn hregd_build_command() -> &'static str {
    if cfg!(debug_assertions) {
        "cargo build -p hregd"
    } else {
        "cargo build --release -p hregd"
    }
}

/// Starts hregd with default flags (only the socket path is given) and
/// waits until it accepts connections.
pub fn start_hregd(binary: &Path, dir: &Path) -> anyhow::Result<(Proc, PathBuf)> {
    start_hregd_with(binary, dir, &[])
}

/// Starts hregd with `flags` besides the socket path (its log is
/// `DIR/hregd.log`) and waits until it accepts connections.
pub fn start_hregd_with(
    binary: &Path,
    dir: &Path,
    flags: &[&str],
) -> anyhow::Result<(Proc, PathBuf)> {
    let socket = dir.join("hregd.sock");
    let mut command = Command::new(binary);
    command.arg("--socket").arg(&socket).args(flags);
    let mut proc = Proc::spawn("hregd", command, &dir.join("hregd.log"))?;
    wait_for(&mut proc, || hreg::Client::connect(&socket).is_ok())?;
    Ok((proc, socket))
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
