//! The state directory is hregd's alone (issue 17 item 7): `--state-dir`
//! must be owned by hregd's uid with mode 0700 (made so when missing), or
//! hregd refuses to start and says what to fix; the lock is a file inside
//! it; every kept file is checked before it is mapped (a regular file of
//! hregd's uid, mode 0600, one link) and every heap chunk carries its
//! domain's label, so a file another uid could have changed is never
//! adopted.
//!
//! Each test plays one row of the issue with real daemons and a real
//! attacker process under another uid (65534), after an admin's mistake
//! let it into the directory:
//! - row 6: two domains' heap chunks swapped across a restart: refused,
//!   never a cross-uid read;
//! - row 6b: a heap chunk planted and then cut short: refused, no SIGBUS;
//! - row 6c: a directory others may enter (0755) or owned by someone else:
//!   hregd refuses to start, naming the problem; another uid cannot
//!   `flock` hregd out.

use hreg_proto::entry::Sqe;
use hreg_proto::ring::ClientCounters;
use hreg_proto::{Opcode, Status};
use hreg_tests::raw::{submit_raw, RawSession};
use hreg_tests::{binary, is_root, required_in_ci, wait_until, Daemon, Helper, NOBODY, OTHER_USER};
use rustix::process::Signal;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A daemon keeping its state in `<dir>/state`, on a socket every uid can
/// reach, in a directory other uids may enter (so that the attacker can
/// reach the state directory once an admin opens it).
struct Kept {
    daemon: Daemon,
    state: PathBuf,
    args: Vec<String>,
}

impl Kept {
    fn start() -> Kept {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let state = dir.path().join("state");
        let socket = dir.path().join("hreg.sock");
        let args: Vec<String> = [
            "--socket-mode",
            "666",
            "--state-dir",
            state.to_str().unwrap(),
            "--resume-grace",
            "2",
        ]
        .map(String::from)
        .to_vec();
        let daemon = Daemon::start_at(dir, socket, &strs(&args));
        Kept {
            daemon,
            state,
            args,
        }
    }

    fn stop(&mut self) {
        self.daemon.signal(Signal::TERM);
        let _ = self.daemon.child.wait();
    }

    fn restart(&mut self) {
        self.daemon.restart(&strs(&self.args));
    }

    /// Starts hregd on the state and expects it to refuse: returns what it
    /// said on stderr.
    fn refused_start(&self) -> String {
        self.refused_start_at(&self.daemon.socket)
    }

    fn refused_start_at(&self, socket: &Path) -> String {
        let mut child = Command::new(binary("hregd"))
            .arg("--socket")
            .arg(socket)
            .args(&self.args)
            .env("RUST_LOG", "error")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn hregd");
        let started = Instant::now();
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                let mut said = String::new();
                std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut said).unwrap();
                assert!(!status.success(), "hregd exited cleanly: {said}");
                return said;
            }
            if started.elapsed() > hreg_tests::PATIENCE {
                let _ = child.kill();
                panic!("hregd started on a state directory it should refuse");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `hregd --check-state` on the state: its exit code and what it said.
    fn check_state(&self) -> (Option<i32>, String) {
        let out = Command::new(binary("hregd"))
            .args([
                "--socket",
                "/nonexistent/x.sock",
                "--check-state",
                "--state-dir",
            ])
            .arg(&self.state)
            .output()
            .expect("hregd --check-state");
        let mut said = String::from_utf8_lossy(&out.stdout).into_owned();
        said.push_str(&String::from_utf8_lossy(&out.stderr));
        (out.status.code(), said)
    }

    /// The heap chunk file `k` of the private domain of `uid`.
    fn heap_chunk(&self, uid: u32, k: usize) -> PathBuf {
        let suffix = format!("-u{uid}");
        let record = std::fs::read_dir(&self.state)
            .unwrap()
            .filter_map(Result::ok)
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .find(|name| name.starts_with('d') && name.ends_with(&suffix))
            .unwrap_or_else(|| panic!("no domain of uid {uid}"));
        let domain = record.strip_suffix(&suffix).unwrap();
        self.state.join(format!("{domain}-h{k}"))
    }

    fn chmod(&self, mode: u32) {
        std::fs::set_permissions(&self.state, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    /// Set-aside states (subdirectories of the state directory).
    fn set_aside(&self) -> usize {
        std::fs::read_dir(&self.state)
            .unwrap()
            .filter_map(Result::ok)
            .filter(|e| e.path().is_dir())
            .count()
    }
}

fn strs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

/// Runs `hreg-heap-client SOCKET ARGS` as `uid` and returns its line.
fn as_uid(uid: u32, socket: &Path, args: &[&str]) -> String {
    let mut helper = Helper::spawn_program("hreg-heap-client", socket, args, Some(uid));
    let line = helper.line();
    helper.finish();
    line
}

fn needs_root() -> bool {
    required_in_ci("root (to run the attacker as another uid)", is_root())
}

#[test]
fn swapped_chunk_files_are_refused_never_read_across_uids() {
    if !needs_root() {
        return;
    }
    let mut kept = Kept::start();
    let socket = kept.daemon.socket.clone();
    let secret = as_uid(OTHER_USER, &socket, &["put", "1048576", "VICTIM-SECRET-"]);
    let own = as_uid(NOBODY, &socket, &["put", "1048576", "ATTACKER-OWN-"]);
    assert!(as_uid(NOBODY, &socket, &["get", &own]).starts_with("value ATTACKER-OWN-"));
    assert!(as_uid(NOBODY, &socket, &["get", &secret]).starts_with("error"));
    kept.stop();
    // An admin opens the directory; the attacker swaps its heap chunk with
    // the victim's (both files stay hregd's, mode 0600, one link).
    kept.chmod(0o777);
    let (victims, attackers) = (kept.heap_chunk(OTHER_USER, 0), kept.heap_chunk(NOBODY, 0));
    let swapped = as_uid(
        NOBODY,
        &socket,
        &[
            "swap",
            victims.to_str().unwrap(),
            attackers.to_str().unwrap(),
        ],
    );
    assert_eq!(swapped, "swapped");
    // Refused while others may write the directory, and said so.
    let said = kept.refused_start();
    assert!(
        said.contains("its mode is 0777, not 0700") && said.contains("chmod 700"),
        "{said}"
    );
    let (code, checked) = kept.check_state();
    assert_eq!(code, Some(2), "{checked}");
    assert!(checked.contains("its mode is 0777, not 0700"), "{checked}");
    // The admin closes it again without looking: the swap is still
    // caught (each heap chunk carries its domain's label).
    kept.chmod(0o700);
    let (code, checked) = kept.check_state();
    assert_eq!(code, Some(1), "{checked}");
    assert!(checked.contains("label"), "{checked}");
    kept.restart();
    assert_eq!(kept.set_aside(), 1, "the state is set aside whole");
    let read = as_uid(NOBODY, &socket, &["get", &own]);
    assert!(!read.contains("VICTIM"), "a cross-uid read: {read}");
    assert!(read.starts_with("error"), "{read}");
    assert_eq!(kept.daemon.client().stats().unwrap().objects, 0);
}

#[test]
fn a_planted_file_is_refused_and_cutting_it_short_cannot_kill_the_daemon() {
    if !needs_root() {
        return;
    }
    let mut kept = Kept::start();
    let socket = kept.daemon.socket.clone();
    let own = as_uid(NOBODY, &socket, &["put", "1000", "PLANTED-"]);
    kept.stop();
    kept.chmod(0o777);
    let chunk = kept.heap_chunk(NOBODY, 0);
    let len = std::fs::metadata(&chunk).unwrap().len().to_string();
    let mut planter = Helper::spawn_program(
        "hreg-heap-client",
        &socket,
        &["plant", chunk.to_str().unwrap(), &len],
        Some(NOBODY),
    );
    assert_eq!(planter.line(), "planted");
    assert!(kept.refused_start().contains("its mode is 0777"));
    kept.chmod(0o700);
    let (code, checked) = kept.check_state();
    assert_eq!(code, Some(1), "{checked}");
    assert!(
        checked.contains("owned by uid 65534, not by hregd's uid 0"),
        "{checked}"
    );
    kept.restart();
    assert_eq!(kept.set_aside(), 1);
    // The attacker cuts its file short, then asks for its value through
    // the daemon: nothing of that file is mapped, so nothing faults.
    writeln(&mut planter, "truncate");
    assert_eq!(planter.line(), "truncated");
    assert!(as_uid(NOBODY, &socket, &["get", &own]).starts_with("error"));
    // And through a ring, as root (who may read it), where the daemon
    // itself copies the value out of its own mapping.
    assert_eq!(
        ring_get(&socket, own.parse().unwrap()),
        Status::Stale as u32
    );
    let client = kept.daemon.client();
    let h = client.insert(&[7u8; 100_000], 0).unwrap();
    assert_eq!(client.get(h).unwrap(), vec![7u8; 100_000]);
    assert!(kept.daemon.is_running(), "hregd died");
}

/// A GET of `handle` through a raw ring (no chunk mapped by the client):
/// the completion's status.
fn ring_get(socket: &Path, handle: u64) -> u32 {
    let session = RawSession::attach(socket);
    let (ring, bell) = session.open_ring();
    let mut get = Sqe {
        user_data: 1,
        opcode: Opcode::Get as u8,
        handle,
        data_off: 0,
        data_len: 4096,
        ..Sqe::default()
    };
    get.set_inline_u64(4096);
    let mut counters = ClientCounters::default();
    let done = submit_raw(&ring, &bell, &mut counters, &[get.encode()]);
    done[0].status
}

fn writeln(helper: &mut Helper, line: &str) {
    use std::io::Write;
    let stdin = helper.child.stdin.as_mut().expect("piped stdin");
    writeln!(stdin, "{line}").unwrap();
    stdin.flush().unwrap();
}

#[test]
fn another_uid_cannot_lock_hregd_out_and_a_loose_directory_is_refused() {
    if !needs_root() {
        return;
    }
    let mut kept = Kept::start();
    let socket = kept.daemon.socket.clone();
    let h = kept
        .daemon
        .client()
        .insert(b"kept across restarts", hreg::DETACHED)
        .unwrap();
    // Made by hregd: its uid's, 0700, a private lock file inside.
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode(&kept.state), 0o700);
    assert_eq!(mode(&kept.state.join("lock")), 0o600);
    // An admin makes it 0755; the attacker locks the directory (as the
    // old hregd did) and cannot open the lock file.
    kept.chmod(0o755);
    let mut dir_lock = Helper::spawn_program(
        "hreg-heap-client",
        &socket,
        &["hold-lock", kept.state.to_str().unwrap()],
        Some(NOBODY),
    );
    assert_eq!(dir_lock.line(), "locked");
    let lock_file = kept.state.join("lock");
    let said = as_uid(NOBODY, &socket, &["hold-lock", lock_file.to_str().unwrap()]);
    assert!(said.contains("Permission denied"), "{said}");
    kept.stop();
    // Others may enter it: refused, with the fix.
    let said = kept.refused_start();
    assert!(
        said.contains("its mode is 0755, not 0700") && said.contains("chmod 700"),
        "{said}"
    );
    // Owned by someone else: refused, with the fix.
    kept.chmod(0o700);
    let nobody = Some(rustix::process::Uid::from_raw(NOBODY));
    rustix::fs::chown(kept.state.as_path(), nobody, None).unwrap();
    let said = kept.refused_start();
    assert!(
        said.contains("owned by uid 65534, not by hregd's uid 0") && said.contains("chown 0"),
        "{said}"
    );
    rustix::fs::chown(kept.state.as_path(), Some(rustix::process::Uid::ROOT), None).unwrap();
    // Fixed, it starts and adopts, though the attacker still holds its
    // lock on the directory (it can no longer enter it).
    kept.restart();
    let client = kept.daemon.client();
    assert_eq!(client.get(h).unwrap(), b"kept across restarts");
    let said = as_uid(NOBODY, &socket, &["hold-lock", lock_file.to_str().unwrap()]);
    assert!(said.contains("Permission denied"), "{said}");
    // A second daemon on the same state is refused by the lock file.
    let second = kept.refused_start_at(&kept.daemon.dir().join("second.sock"));
    assert!(second.contains("locked by another hregd"), "{second}");
    dir_lock.finish();
    // A symbolic link to the directory is refused too.
    let link = kept.state.with_file_name("link");
    std::os::unix::fs::symlink(&kept.state, &link).unwrap();
    let out = Command::new(binary("hregd"))
        .args([
            "--socket",
            "/nonexistent/x.sock",
            "--check-state",
            "--state-dir",
        ])
        .arg(&link)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{said}");
    assert!(said.contains("symbolic link"), "{said}");
    wait_until("the daemon to serve on", || client.stats().is_ok());
}
