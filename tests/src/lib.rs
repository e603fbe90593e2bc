//! Test harness for hreg's multi-process tests: starts real `hregd`
//! processes on sockets in temporary directories, finds the built binaries,
//! and offers small helpers (waiting with a deadline, reproducible
//! randomness, checksummed values, values stamped with their handle for the
//! read-side tests in [`readside`], a strict parser of the Prometheus text
//! format in [`prometheus`], the restart stress test's load client in
//! [`restart_load`] and the test's side of it in [`load_clients`], C
//! programs compiled against the built libhreg in [`c_programs`], README.md's
//! code blocks in [`readme`]).
//!
//! Nothing here imitates the daemon: every test talks to a real `hregd`
//! through the real client library.

use std::path::{Path, PathBuf};
pub mod attacks;
pub mod c_programs;
pub mod load_clients;
pub mod memory;
pub mod prometheus;
pub mod raw;
pub mod readme;
pub mod readside;
pub mod restart_load;

use hreg_proto::locks::lock;
use std::io::{BufRead, BufReader};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

/// Generous upper bound for anything a test waits for; only there so a
/// broken build fails instead of hanging.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// The directory holding the workspace's built binaries (`target/debug`).
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let mut dir = exe.parent().expect("exe dir").to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir
}

/// A built binary of the workspace: `$HREG_BIN_DIR/NAME` when set, else next
/// to the test executable.
pub fn binary(name: &str) -> PathBuf {
    let dir = std::env::var_os("HREG_BIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(bin_dir);
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} not built; run `cargo build --workspace` first",
        path.display()
    );
    path
}

/// A running `hregd`, killed when dropped.
///
/// Its stderr (logs, and errors a negative test provokes on purpose) is
/// captured unless the test's own setup sends it elsewhere, and printed
/// only if the test fails: when the `Daemon` is dropped during a panic.
pub struct Daemon {
    pub child: Child,
    pub socket: PathBuf,
    _dir: tempfile::TempDir,
    log: StderrLog,
}

/// What a child process (or each of a series, as a daemon across restarts)
/// wrote on a piped stderr: kept, and printed only if the test fails.
#[derive(Clone, Default)]
pub struct StderrLog {
    text: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
    readers: std::sync::Arc<std::sync::Mutex<Vec<std::thread::JoinHandle<()>>>>,
}

impl StderrLog {
    /// Starts keeping what `child` writes to a piped stderr (nothing when
    /// its stderr went somewhere else).
    pub fn capture(&self, child: &mut Child) {
        let Some(mut stderr) = child.stderr.take() else {
            return;
        };
        let text = std::sync::Arc::clone(&self.text);
        let reader = std::thread::spawn(move || {
            let mut chunk = [0u8; 4096];
            while let Ok(n @ 1..) = std::io::Read::read(&mut stderr, &mut chunk) {
                lock(&text).extend_from_slice(&chunk[..n]);
            }
        });
        lock(&self.readers).push(reader);
    }

    /// Everything written so far.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&lock(&self.text)).into_owned()
    }

    /// When the test is failing (panicking), prints all of it under `what`;
    /// call once the writers have exited.
    pub fn show_if_failing(&self, what: &str) {
        if !std::thread::panicking() {
            return;
        }
        for reader in lock(&self.readers).drain(..) {
            let _ = reader.join();
        }
        let text = self.text();
        if !text.is_empty() {
            eprintln!("--- {what}:\n{text}--- end of {what}");
        }
    }
}

impl Daemon {
    /// Starts `hregd` with `args` on a fresh socket and waits until it
    /// accepts connections.
    pub fn start(args: &[&str]) -> Daemon {
        let dir = tempfile::tempdir().expect("temp dir");
        let socket = dir.path().join("hreg.sock");
        Daemon::start_at(dir, socket, args)
    }

    pub fn start_at(dir: tempfile::TempDir, socket: PathBuf, args: &[&str]) -> Daemon {
        Daemon::launch(dir, socket, &[], args, |_| {})
    }

    /// Starts `hregd` with `args` on a socket every uid can reach (mode
    /// 666 in a 0755 directory), for tests that run clients as other uids.
    pub fn start_reachable(args: &[&str]) -> Daemon {
        Daemon::start_reachable_with(args, |_| {})
    }

    /// [`Daemon::start_reachable`] under `WRAPPER...` (e.g. `prlimit`).
    pub fn start_reachable_wrapped(wrapper: &[&str], args: &[&str]) -> Daemon {
        Daemon::launch_reachable(wrapper, args, |_| {})
    }

    /// [`Daemon::start_reachable`], letting `setup` adjust the command
    /// first (environment: the test hooks of debug builds).
    pub fn start_reachable_with(args: &[&str], setup: impl FnOnce(&mut Command)) -> Daemon {
        Daemon::launch_reachable(&[], args, setup)
    }

    fn launch_reachable(
        wrapper: &[&str],
        args: &[&str],
        setup: impl FnOnce(&mut Command),
    ) -> Daemon {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod 755 the socket directory");
        let socket = dir.path().join("hreg.sock");
        let mut all = vec!["--socket-mode", "666"];
        all.extend_from_slice(args);
        Daemon::launch(dir, socket, wrapper, &all, setup)
    }

    /// Starts `hregd` with `args`, letting `setup` adjust the command first
    /// (limits set in `pre_exec`, environment).
    pub fn start_with(args: &[&str], setup: impl FnOnce(&mut Command)) -> Daemon {
        let dir = tempfile::tempdir().expect("temp dir");
        let socket = dir.path().join("hreg.sock");
        Daemon::launch(dir, socket, &[], args, setup)
    }

    /// Starts `WRAPPER... hregd --socket S ARGS...` (e.g. under `unshare`).
    pub fn start_wrapped(wrapper: &[&str], args: &[&str]) -> Daemon {
        let dir = tempfile::tempdir().expect("temp dir");
        let socket = dir.path().join("hreg.sock");
        Daemon::launch(dir, socket, wrapper, args, |_| {})
    }

    fn launch(
        dir: tempfile::TempDir,
        socket: PathBuf,
        wrapper: &[&str],
        args: &[&str],
        setup: impl FnOnce(&mut Command),
    ) -> Daemon {
        let hregd = binary("hregd");
        let mut command = match wrapper.split_first() {
            Some((program, rest)) => {
                let mut command = Command::new(program);
                command.args(rest).arg(&hregd);
                command
            }
            None => Command::new(&hregd),
        };
        command
            .arg("--socket")
            .arg(&socket)
            .args(args)
            .env("RUST_LOG", "error")
            .stdin(Stdio::null())
            .stderr(Stdio::piped());
        setup(&mut command);
        let mut child = command.spawn().expect("spawn hregd");
        let log = StderrLog::default();
        log.capture(&mut child);
        let daemon = Daemon {
            child,
            socket,
            _dir: dir,
            log,
        };
        daemon.wait_ready();
        daemon
    }

    /// What the daemon has written on stderr so far (empty when the test
    /// sent its stderr elsewhere).
    pub fn stderr(&self) -> String {
        self.log.text()
    }

    /// The daemon's private directory (its socket's), where a test may keep
    /// a state directory that outlives one daemon.
    pub fn dir(&self) -> &Path {
        self._dir.path()
    }

    /// Waits for the daemon to exit (the caller signalled it), then starts
    /// `hregd` again on the same socket with `args`; returns how long the
    /// new one took from its start to accepting connections.
    pub fn restart(&mut self, args: &[&str]) -> Duration {
        self.restart_with(args, |_| {})
    }

    /// [`Daemon::restart`], letting `setup` adjust the command first.
    pub fn restart_with(&mut self, args: &[&str], setup: impl FnOnce(&mut Command)) -> Duration {
        let _ = self.child.wait();
        let started = Instant::now();
        let mut command = Command::new(binary("hregd"));
        command
            .arg("--socket")
            .arg(&self.socket)
            .args(args)
            .env("RUST_LOG", "error")
            .stdin(Stdio::null())
            .stderr(Stdio::piped());
        setup(&mut command);
        self.child = command.spawn().expect("spawn hregd");
        self.log.capture(&mut self.child);
        self.wait_ready();
        started.elapsed()
    }

    fn wait_ready(&self) {
        wait_until("hregd to accept connections", || {
            hreg::Client::connect(&self.socket).is_ok()
        });
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn client(&self) -> hreg::Client {
        hreg::Client::connect(&self.socket).expect("connect to hregd")
    }

    /// Live objects right now, asked through a fresh client.
    pub fn objects(&self) -> u64 {
        self.client().stats().expect("stats").objects
    }

    pub fn signal(&self, signal: rustix::process::Signal) {
        let pid = rustix::process::Pid::from_raw(self.pid()).expect("pid");
        rustix::process::kill_process(pid, signal).expect("signal hregd");
    }

    /// Open descriptors of the daemon (entries of `/proc/PID/fd`).
    ///
    /// The registry's own memfds (its slot tables and heaps, which grow with
    /// the registry and stay for its life) are not counted: what is left is
    /// what sessions, rings and connections hold.
    pub fn fd_count(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .expect("read /proc/PID/fd")
            .filter_map(Result::ok)
            .filter(|entry| {
                std::fs::read_link(entry.path()).map_or(true, |target| {
                    !is_registry_memory(&target.to_string_lossy())
                })
            })
            .count()
    }

    /// Memory mappings of files and memfds by the daemon (lines of
    /// `/proc/PID/maps` that name one), the registry's own left out (see
    /// [`Daemon::fd_count`]): session memory and anything else mapped per
    /// client. Anonymous memory (the allocator's, the registry's reference
    /// counts) is left to the RSS checks.
    pub fn maps_count(&self) -> usize {
        std::fs::read_to_string(format!("/proc/{}/maps", self.pid()))
            .expect("read /proc/PID/maps")
            .lines()
            .filter(|line| line.split_whitespace().nth(5).is_some())
            .filter(|line| !is_registry_memory(line))
            .count()
    }

    /// A `kB` field of `/proc/PID/status` (`VmRSS`, `VmHWM`, ...), in bytes.
    pub fn status_bytes(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("read /proc/PID/status");
        memory::kb_field(&status, field).unwrap_or_else(|| panic!("no {field} in /proc/PID/status"))
    }

    /// CPU time the daemon has used so far (user and system).
    pub fn cpu_time(&self) -> Duration {
        cpu_time_of(self.pid())
    }

    /// The share of one core the daemon used over the next `window`.
    pub fn cpu_share(&self, window: Duration) -> f64 {
        let before = self.cpu_time();
        std::thread::sleep(window);
        (self.cpu_time() - before).as_secs_f64() / window.as_secs_f64()
    }

    /// Descriptors watched by all of the daemon's epoll sets (`tfd:` lines
    /// of `/proc/PID/fdinfo`).
    pub fn epoll_watches(&self) -> usize {
        let dir = format!("/proc/{}/fdinfo", self.pid());
        std::fs::read_dir(&dir)
            .expect("read fdinfo")
            .filter_map(|entry| std::fs::read_to_string(entry.ok()?.path()).ok())
            .map(|info| info.lines().filter(|l| l.starts_with("tfd:")).count())
            .sum()
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_none()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let what = format!("hregd's stderr ({})", self.socket.display());
        self.log.show_if_failing(&what);
    }
}

/// Uids tests run other users' processes under (they need root): nobody,
/// and the id below it.
pub const NOBODY: u32 = 65534;
pub const OTHER_USER: u32 = 65533;

/// Whether the tests run as root (and may run processes as other uids).
pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// Whether a test's outside requirement (`what`: a tool, a privilege) is
/// `met`; when it is not, the test should return early, which is allowed
/// outside CI only (CI installs and runs as root).
pub fn required_in_ci(what: &str, met: bool) -> bool {
    if !met {
        assert!(
            std::env::var_os("CI").is_none(),
            "{what} is required in CI (.ci/run installs it and runs as root)"
        );
        eprintln!("skipping: {what} is not available here");
    }
    met
}

/// Raises this process's descriptor limit to `wanted`, the hard limit too
/// when privileged, else as far as the hard limit allows (`u64::MAX`: as
/// far as allowed). Returns the limit now in force. Children inherit it.
pub fn raise_fd_limit(wanted: u64) -> u64 {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let limit = getrlimit(Resource::Nofile);
    let hard = limit.maximum.unwrap_or(u64::MAX);
    if wanted > hard {
        let raised = Rlimit {
            current: Some(wanted),
            maximum: Some(wanted),
        };
        if setrlimit(Resource::Nofile, raised).is_ok() {
            return wanted;
        }
    }
    let _ = setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(wanted.min(hard)),
            maximum: limit.maximum,
        },
    );
    getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX)
}

/// Whether a descriptor's target or a mapping's line names one of the
/// registry's memfds (`hreg-header`, a domain's `hreg-d*`: see
/// `hreg_registry::names`), or the same piece kept as a file of a
/// `--state-dir`, not a session's own memory (session records included).
pub fn is_registry_memory(name: &str) -> bool {
    ["memfd:hreg-d", "memfd:hreg-header"]
        .iter()
        .any(|prefix| name.contains(prefix))
        || is_kept_registry_file(name)
}

/// Whether `name` (a path, or a mapping's line ending in one) is a file of
/// a state directory holding the header or a domain's record or chunk:
/// `header`, `d<D>-shared`, `d<D>-u<UID>`, `d<D>-s<K>`, `d<D>-h<K>`.
fn is_kept_registry_file(name: &str) -> bool {
    let path = name.trim_end().trim_end_matches("(deleted)").trim_end();
    let Some((_, file)) = path.rsplit_once('/') else {
        return false;
    };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    file == "header"
        || file
            .strip_prefix('d')
            .and_then(|rest| rest.split_once('-'))
            .is_some_and(|(domain, piece)| {
                digits(domain)
                    && (piece == "shared"
                        || ["u", "s", "h"]
                            .iter()
                            .any(|kind| piece.strip_prefix(kind).is_some_and(digits)))
            })
}

/// Polls `done` until it is true; panics after [`PATIENCE`].
pub fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < PATIENCE, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A seed for [`Rng`]: `$var` when it holds a number (to replay a run),
/// else the clock.
pub fn seed_from_env(var: &str) -> u64 {
    std::env::var(var)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        })
}

/// xorshift64: reproducible randomness without a dependency.
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed` (any value; 0 is made non-zero).
    pub fn new(seed: u64) -> Rng {
        Rng(seed | 1)
    }

    /// The next number of the sequence.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A number below `n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// `len` bytes, the low byte of each next number.
    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next_u64() as u8).collect()
    }
}

/// A value that carries its own checksum: `len` bytes derived from `seed`,
/// the last 8 of which are an FNV-1a hash of the rest (values shorter than 8
/// bytes are checked against their seed instead).
pub fn checked_value(seed: u64, len: usize) -> Vec<u8> {
    let mut value = Rng::new(seed).bytes(len);
    if len >= 8 {
        let sum = fnv(&value[..len - 8]);
        value[len - 8..].copy_from_slice(&sum.to_le_bytes());
    }
    value
}

/// Whether `value` is intact: its embedded checksum matches.
pub fn value_is_intact(value: &[u8]) -> bool {
    value.len() >= 8 && fnv(&value[..value.len() - 8]).to_le_bytes() == value[value.len() - 8..]
}

/// The 16-byte value of the `i`th object of the posted-write tests (a
/// handle's life: 16 bytes, each value its own).
pub fn numbered(i: u64) -> [u8; 16] {
    let mut value = [0u8; 16];
    value[..8].copy_from_slice(&i.to_le_bytes());
    value[8..].copy_from_slice(&(i ^ 0x5eed_5eed_5eed_5eed).to_le_bytes());
    value
}

/// The FNV-1a hash of `bytes` (the checksum of [`checked_value`] and of
/// [`readside::stamp`]; tests also print it to name a value briefly).
pub fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

/// A running `hreg-test-client` process: one line of output per step, and
/// it exits when its stdin closes.
pub struct Helper {
    pub child: Child,
    out: BufReader<ChildStdout>,
}

impl Helper {
    pub fn spawn(socket: &Path, args: &[&str]) -> Helper {
        Helper::spawn_program("hreg-test-client", socket, args, None)
    }

    /// Starts `hreg-attack SOCKET ATTACK` (as `uid`, when given, with the
    /// same gid) and waits for its `ready` line, which it returns.
    pub fn attack(socket: &Path, attack: &str, uid: Option<u32>) -> (Helper, String) {
        let mut helper = Helper::spawn_program("hreg-attack", socket, &[attack], uid);
        let ready = helper.line();
        assert!(ready.starts_with("ready"), "{attack}: {ready:?}");
        (helper, ready)
    }

    /// Starts a workspace binary `program SOCKET ARGS...`, as `uid` (and
    /// that gid, with no supplementary groups) when given.
    pub fn spawn_program(program: &str, socket: &Path, args: &[&str], uid: Option<u32>) -> Helper {
        use std::os::unix::process::CommandExt;
        Helper::spawn_with(program, socket, args, |command| {
            if let Some(uid) = uid {
                command.gid(uid).uid(uid);
            }
        })
    }

    /// Starts a workspace binary `program SOCKET ARGS...`, letting `setup`
    /// adjust the command first (environment, uid).
    pub fn spawn_with(
        program: &str,
        socket: &Path,
        args: &[&str],
        setup: impl FnOnce(&mut Command),
    ) -> Helper {
        let mut command = Command::new(binary(program));
        command
            .arg(socket)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped());
        setup(&mut command);
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {program}: {e}"));
        let out = BufReader::new(child.stdout.take().expect("piped stdout"));
        Helper { child, out }
    }

    /// The next line the helper prints (without the newline).
    pub fn line(&mut self) -> String {
        let mut line = String::new();
        self.out.read_line(&mut line).expect("read helper output");
        line.trim_end().to_string()
    }

    /// Sends one line (a command) to the helper's stdin and returns the
    /// line it answers.
    pub fn ask(&mut self, command: &str) -> String {
        use std::io::Write;
        let stdin = self.child.stdin.as_mut().expect("piped stdin");
        writeln!(stdin, "{command}").expect("write to the helper");
        stdin.flush().expect("flush the helper's stdin");
        self.line()
    }

    /// Closes the helper's stdin and waits for it to exit successfully.
    pub fn finish(mut self) {
        drop(self.child.stdin.take());
        let status = self.child.wait().expect("wait for helper");
        assert!(status.success(), "helper failed: {status}");
    }

    /// Closes the helper's stdin: a helper that works until then stops and
    /// reports (its output stays readable by [`Helper::line`]).
    pub fn close_input(&mut self) {
        drop(self.child.stdin.take());
    }

    /// Kills the helper with SIGKILL and reaps it.
    pub fn kill9(mut self) {
        self.child.kill().expect("kill helper");
        let _ = self.child.wait();
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The CPU time (user + system) process `pid` has used.
pub fn cpu_time_of(pid: i32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read /proc/PID/stat");
    // Fields after the command name, which is in parentheses and may
    // hold spaces: utime and stime are the 12th and 13th of them.
    let after = &stat[stat.rfind(')').expect("comm") + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: u64 =
        fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime");
    // SAFETY: sysconf has no preconditions.
    let per_sec = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Duration::from_millis(ticks * 1000 / per_sec)
}

/// How long a fresh client took to attach, insert and get a value back, or
/// `None` if that took longer than `limit` (the attempt is left to finish
/// in the background).
pub fn serve_time(socket: &Path, limit: Duration) -> Option<Duration> {
    let socket = socket.to_path_buf();
    let (done, outcome) = std::sync::mpsc::channel();
    let began = Instant::now();
    std::thread::spawn(move || {
        let served = hreg::Client::connect(&socket).and_then(|client| {
            let h = client.insert(b"still served", 0)?;
            client.get(h)
        });
        let _ = done.send(served);
    });
    match outcome.recv_timeout(limit) {
        Ok(Ok(value)) => {
            assert_eq!(value, b"still served");
            Some(began.elapsed())
        }
        Ok(Err(e)) => panic!("the honest client failed: {e}"),
        Err(_) => None,
    }
}
