//! `systemctl restart hregd` as far as this machine allows (systemd is not
//! PID 1 here): the test plays the service manager. It binds the notify
//! socket and starts hregd with `NOTIFY_SOCKET` and `FDSTORE=4096` (as
//! systemd ≥ 254 does for a unit with `FileDescriptorStoreMax=`), no
//! `--state-dir`; it keeps the descriptors hregd sends with `FDSTORE=1` and
//! `FDNAME=` and drops those named by `FDSTOREREMOVE=1`, applying systemd's
//! rules (one entry per file, a name valid for `LISTEN_FDNAMES`, at most
//! `FDSTORE` entries); then, after SIGTERM or SIGKILL, it starts hregd again
//! with the kept descriptors as fds 3.. (socket-activation sockets first,
//! as systemd orders them) and `LISTEN_FDS`, `LISTEN_FDNAMES` and
//! `LISTEN_PID` set for the new process.
//!
//! Exercised: hregd's side of the protocol (what it stores, names and
//! removes; what it takes back, adopts and keeps storing after an adoption;
//! `--check-state` on a passed store; setting an unusable store aside as
//! `aside.*`), with real clients resuming by themselves, and a
//! socket-activated listener kept across the restart. Not exercised:
//! systemd itself (whether PID 1 accepts the messages under
//! `NotifyAccess=main`, how long it keeps the store under
//! `FileDescriptorStorePreserve=`, its `EPOLLHUP` pruning, serialization
//! across `daemon-reload`), nor the unit's sandboxing.

use hreg::{Client, Error, Handle, DETACHED};
use hreg_proto::fd_passing;
use hreg_tests::{binary, checked_value, wait_until, PATIENCE};
use rustix::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use rustix::net::RecvFlags;
use std::os::unix::net::UnixDatagram;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// What the test's "systemd" announces in `$FDSTORE`.
const FDSTORE_MAX: usize = 4096;

/// The service manager's part: the notify socket and the descriptor store.
struct Manager {
    notify: UnixDatagram,
    path: PathBuf,
    /// The store, in the order the descriptors came.
    store: Vec<(String, OwnedFd)>,
    /// Every notify line other than the store's.
    heard: Vec<String>,
}

/// Whether systemd accepts `name` as an `FDNAME=` (and so in
/// `LISTEN_FDNAMES`): 1 to 255 printable ASCII characters, no `:`.
fn valid_fdname(name: &str) -> bool {
    (1..=255).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_graphic() && b != b':')
}

/// systemd's `same_fd()`, by which it keeps a file description once:
/// `kcmp(KCMP_FILE)` where it can, else the same inode and file flags.
fn same_fd(a: BorrowedFd<'_>, b: BorrowedFd<'_>) -> bool {
    const KCMP_FILE: libc::c_long = 0;
    let pid = libc::c_long::from(rustix::process::getpid().as_raw_nonzero().get());
    // SAFETY: kcmp(2) only compares two descriptors of this process.
    let compared = unsafe {
        libc::syscall(
            libc::SYS_kcmp,
            pid,
            pid,
            KCMP_FILE,
            libc::c_long::from(a.as_raw_fd()),
            libc::c_long::from(b.as_raw_fd()),
        )
    };
    if compared >= 0 {
        return compared == 0;
    }
    let (sa, sb) = (rustix::fs::fstat(a).unwrap(), rustix::fs::fstat(b).unwrap());
    let flags = |fd| rustix::fs::fcntl_getfl(fd).unwrap();
    (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino) && flags(a) == flags(b)
}

impl Manager {
    fn new(dir: &Path) -> Manager {
        let path = dir.join("notify");
        let notify = UnixDatagram::bind(&path).expect("bind the notify socket");
        notify.set_nonblocking(true).unwrap();
        Manager {
            notify,
            path,
            store: Vec::new(),
            heard: Vec::new(),
        }
    }

    /// Takes every waiting notify message, as systemd would: `FDSTORE=1`
    /// adds its descriptors under `FDNAME=` (a file description already
    /// kept is not kept again, whatever its name), `FDSTOREREMOVE=1` drops
    /// every entry of that name.
    fn drain(&mut self) {
        loop {
            let mut buf = [0u8; 4096];
            let received = fd_passing::recv(&self.notify, &mut buf, 16, RecvFlags::DONTWAIT);
            let Ok(received) = received else {
                return;
            };
            let fds = received.fds;
            let text = String::from_utf8_lossy(&buf[..received.len]).into_owned();
            let lines: Vec<&str> = text.lines().collect();
            let name = lines
                .iter()
                .find_map(|l| l.strip_prefix("FDNAME="))
                .unwrap_or("stored")
                .to_owned();
            if lines.contains(&"FDSTORE=1") {
                assert!(valid_fdname(&name), "systemd refuses FDNAME={name:?}");
                assert!(!fds.is_empty(), "FDSTORE=1 without a descriptor: {text:?}");
                for fd in fds {
                    if self
                        .store
                        .iter()
                        .any(|(_, kept)| same_fd(kept.as_fd(), fd.as_fd()))
                    {
                        continue;
                    }
                    assert!(
                        self.store.len() < FDSTORE_MAX,
                        "more than FDSTORE={FDSTORE_MAX} descriptors"
                    );
                    self.store.push((name.clone(), fd));
                }
            } else if lines.contains(&"FDSTOREREMOVE=1") {
                self.store.retain(|(kept, _)| *kept != name);
            } else {
                assert!(fds.is_empty(), "descriptors with {text:?}");
                self.heard.extend(lines.iter().map(|l| (*l).to_owned()));
            }
        }
    }

    /// Waits until hregd has said `line` (READY=1, STOPPING=1).
    fn wait_for(&mut self, line: &str) {
        let started = Instant::now();
        loop {
            self.drain();
            if let Some(at) = self.heard.iter().position(|l| l == line) {
                self.heard.drain(..=at);
                return;
            }
            assert!(started.elapsed() < PATIENCE, "hregd never said {line}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn names(&self) -> Vec<&str> {
        self.store.iter().map(|(n, _)| n.as_str()).collect()
    }

    /// `hregd --socket SOCKET EXTRA...` as systemd would start it: the
    /// sockets in `listeners` (name, descriptor), then the store, as fds 3..
    /// with `LISTEN_FDS`, `LISTEN_FDNAMES` and `LISTEN_PID`.
    fn command(
        &self,
        socket: &Path,
        listeners: &[(&str, BorrowedFd<'_>)],
        extra: &[&str],
    ) -> Command {
        let passed: Vec<(&str, BorrowedFd<'_>)> = listeners
            .iter()
            .copied()
            .chain(self.store.iter().map(|(n, fd)| (n.as_str(), fd.as_fd())))
            .collect();
        let raw: Vec<i32> = passed.iter().map(|(_, fd)| fd.as_raw_fd()).collect();
        let names: Vec<&str> = passed.iter().map(|(n, _)| *n).collect();
        let mut command = Command::new("sh");
        // LISTEN_PID names the process that will run hregd: this shell,
        // which execs it.
        command
            .arg("-c")
            .arg(r#"export LISTEN_PID=$$; exec "$0" "$@""#)
            .arg(binary("hregd"))
            .arg("--socket")
            .arg(socket)
            .args(["--workers", "2"])
            .args(extra)
            .env("NOTIFY_SOCKET", &self.path)
            .env("FDSTORE", FDSTORE_MAX.to_string())
            .env("RUST_LOG", "error")
            .env_remove("LISTEN_FDS")
            .env_remove("LISTEN_FDNAMES")
            .stdin(Stdio::null());
        if !raw.is_empty() {
            command
                .env("LISTEN_FDS", raw.len().to_string())
                .env("LISTEN_FDNAMES", names.join(":"));
        }
        let mut moved = vec![0i32; raw.len()];
        let first_free = 3 + raw.len() as i32;
        // SAFETY: runs in the forked child before exec; it only calls
        // fcntl(2) and dup2(2), which are async-signal-safe, and writes into
        // a vector allocated before the fork.
        unsafe {
            command.pre_exec(move || {
                // Every descriptor above the range first, then down into
                // 3.. (dup2 leaves the copy without FD_CLOEXEC).
                for (i, &fd) in raw.iter().enumerate() {
                    moved[i] = libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, first_free);
                    if moved[i] < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                for (i, &fd) in moved.iter().enumerate() {
                    if libc::dup2(fd, 3 + i as i32) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        command
    }

    /// Starts hregd (see [`Manager::command`]) and waits for READY=1.
    fn start(&mut self, socket: &Path, listeners: &[(&str, BorrowedFd<'_>)]) -> Hregd {
        let mut child = self
            .command(socket, listeners, &[])
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn hregd");
        let log = hreg_tests::StderrLog::default();
        log.capture(&mut child);
        let daemon = Hregd(child, log);
        self.wait_for("READY=1");
        daemon
    }
}

/// A running hregd, killed when dropped (a failed test leaves none); its
/// stderr is shown only if the test fails.
struct Hregd(Child, hreg_tests::StderrLog);

impl Drop for Hregd {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
        self.1.show_if_failing("hregd's stderr");
    }
}

fn signal(daemon: &Hregd, signal: rustix::process::Signal) {
    let pid = rustix::process::Pid::from_raw(daemon.0.id() as i32).unwrap();
    rustix::process::kill_process(pid, signal).unwrap();
}

fn wait_exit(daemon: &mut Hregd) {
    let started = Instant::now();
    while daemon.0.try_wait().unwrap().is_none() {
        assert!(started.elapsed() < PATIENCE, "hregd did not exit");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// What a client put in, to check after each restart.
struct Put {
    handle: Handle,
    value: Vec<u8>,
}

fn put(client: &Client, seed: u64, len: usize, flags: u32) -> Put {
    let value = checked_value(seed, len);
    Put {
        handle: client.insert(&value, flags).unwrap(),
        value,
    }
}

fn assert_there(client: &Client, objects: &[Put], when: &str) {
    for o in objects {
        let got = client.get(o.handle);
        assert!(
            got.as_ref().is_ok_and(|v| *v == o.value),
            "{when}: {}: {:?}",
            o.handle,
            got.map(|v| v.len())
        );
    }
}

fn session_record(manager: &Manager, id: u64) -> bool {
    let prefix = format!("session-{id}.");
    manager.names().iter().any(|n| n.starts_with(&prefix))
}

fn stop_and_start(
    manager: &mut Manager,
    daemon: &mut Hregd,
    how: rustix::process::Signal,
    socket: &Path,
    listeners: &[(&str, BorrowedFd<'_>)],
) {
    signal(daemon, how);
    wait_exit(daemon);
    manager.drain();
    if how == rustix::process::Signal::TERM {
        manager.wait_for("STOPPING=1");
    }
    *daemon = manager.start(socket, listeners);
}

fn kept_across(how: rustix::process::Signal) {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("hreg.sock");
    let mut manager = Manager::new(dir.path());
    let mut daemon = manager.start(&socket, &[]);
    assert!(manager.names().contains(&"header"), "{:?}", manager.names());
    assert!(manager.names().contains(&"d0-shared"));

    let a = Client::connect(&socket).unwrap();
    let mut objects = vec![
        put(&a, 1, 20, DETACHED),
        put(&a, 2, 100, 0),
        put(&a, 3, 70_000, DETACHED),
        put(&a, 4, 300_000, 0),
    ];
    a.retain(objects[0].handle).unwrap();
    let borrowed = a.get_ref(objects[3].handle).unwrap();
    let b = Client::connect(&socket).unwrap();
    let gone_with_b = put(&b, 5, 50, 0);
    let (a_id, b_id) = (a.session_id(), b.session_id());
    manager.drain();
    assert!(session_record(&manager, a_id) && session_record(&manager, b_id));
    drop(b);
    wait_until("B's record to leave the store", || {
        manager.drain();
        !session_record(&manager, b_id)
    });
    let names = manager.names();
    for chunk in ["-s0", "-h0"] {
        assert!(
            names
                .iter()
                .any(|n| n.starts_with('d') && n.ends_with(chunk)),
            "{chunk}: {names:?}"
        );
    }
    let mut unique = names.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(
        unique.len(),
        names.len(),
        "one descriptor per name: {names:?}"
    );

    // `hregd --check-state` on the store systemd would pass.
    manager.drain();
    let check = manager
        .command(&dir.path().join("check.sock"), &[], &["--check-state"])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&check.stdout);
    assert!(check.status.success(), "{said}");
    assert!(
        said.contains("would adopt") && said.contains("4 objects"),
        "{said}"
    );

    stop_and_start(&mut manager, &mut daemon, how, &socket, &[]);
    wait_until("A to resume", || a.stats().is_ok());
    assert_eq!(a.session_id(), a_id);
    assert_there(&a, &objects, "after the first restart");
    assert!(*borrowed == objects[3].value[..], "a borrowed value");
    assert!(matches!(a.get(gone_with_b.handle), Err(Error::Stale)));
    assert_eq!(a.stats().unwrap().objects, 4);

    // The adopted daemon keeps the store up to date: a new session and new
    // chunks are stored, and come back after a second restart.
    let c = Client::connect(&socket).unwrap();
    let c_id = c.session_id();
    let from_c = put(&c, 6, 900_000, 0);
    objects.push(put(&a, 7, 1_000_000, DETACHED));
    manager.drain();
    assert!(session_record(&manager, c_id), "{:?}", manager.names());
    stop_and_start(&mut manager, &mut daemon, how, &socket, &[]);
    wait_until("A and C to resume", || {
        a.stats().is_ok() && c.stats().is_ok()
    });
    assert_there(&a, &objects, "after the second restart");
    assert_there(
        &c,
        std::slice::from_ref(&from_c),
        "C after the second restart",
    );
    let sessions: Vec<u64> = a.sessions().unwrap().iter().map(|s| s.id).collect();
    assert!(
        sessions.contains(&a_id) && sessions.contains(&c_id),
        "{sessions:?}"
    );
    // A's references came back: its retain of a DETACHED object is held.
    a.release(objects[0].handle).unwrap();
    assert!(matches!(a.release(objects[0].handle), Err(Error::NotHeld)));
    drop(borrowed);
    drop(c);
    wait_until("C's object to go with its session", || {
        a.stats().unwrap().objects == 5
    });
    signal(&daemon, rustix::process::Signal::TERM);
    wait_exit(&mut daemon);
}

#[test]
fn the_descriptor_store_keeps_the_registry_across_a_stop() {
    kept_across(rustix::process::Signal::TERM);
}

#[test]
fn the_descriptor_store_keeps_the_registry_across_a_kill() {
    kept_across(rustix::process::Signal::KILL);
}

/// A SEQPACKET listener at `path`, as hregd.socket makes it.
fn listener(path: &Path) -> OwnedFd {
    use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType};
    let fd = rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )
    .unwrap();
    rustix::net::bind(&fd, &SocketAddrUnix::new(path).unwrap()).unwrap();
    rustix::net::listen(&fd, 128).unwrap();
    fd
}

#[test]
fn a_socket_activated_daemon_comes_back_with_its_listener_and_its_store() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("activated.sock");
    let listening = listener(&socket);
    let listeners = [("hregd.socket", listening.as_fd())];
    let unused = dir.path().join("unused.sock");
    let mut manager = Manager::new(dir.path());
    let mut daemon = manager.start(&unused, &listeners);
    let a = Client::connect(&socket).unwrap();
    let objects = vec![put(&a, 1, 64, DETACHED), put(&a, 2, 100_000, 0)];
    signal(&daemon, rustix::process::Signal::KILL);
    wait_exit(&mut daemon);
    // While hregd is down, connections wait in the listener's backlog.
    let socket_for_late = socket.clone();
    let late = std::thread::spawn(move || {
        let late = Client::connect(&socket_for_late).expect("served once hregd is back");
        late.insert(b"late", 0).expect("insert")
    });
    std::thread::sleep(Duration::from_millis(100));
    manager.drain();
    daemon = manager.start(&unused, &listeners);
    let inserted = late.join().expect("the late client");
    wait_until("A to resume", || a.stats().is_ok());
    assert_there(&a, &objects, "after the restart");
    wait_until("the late session's object to go with it", || {
        matches!(a.get(inserted), Err(Error::Stale))
    });
    assert!(
        !unused.exists(),
        "hregd bound its own socket despite activation"
    );
    signal(&daemon, rustix::process::Signal::TERM);
    wait_exit(&mut daemon);
    assert!(
        socket.exists(),
        "the socket is the manager's, not hregd's to remove"
    );
}

#[test]
fn an_unusable_store_is_set_aside_in_the_store_and_the_daemon_starts_empty() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("hreg.sock");
    let mut manager = Manager::new(dir.path());
    let mut daemon = manager.start(&socket, &[]);
    let a = Client::connect(&socket).unwrap();
    let lost = put(&a, 1, 30, DETACHED);
    drop(a);
    signal(&daemon, rustix::process::Signal::TERM);
    wait_exit(&mut daemon);
    manager.drain();
    // A slot chunk goes missing from the store.
    let before = manager.names().len();
    manager
        .store
        .retain(|(name, _)| !name.ends_with("-s0") || name == "d0-s0");
    assert_eq!(manager.store.len(), before - 1, "{:?}", manager.names());
    let kept: Vec<String> = manager.names().iter().map(|n| (*n).to_owned()).collect();
    daemon = manager.start(&socket, &[]);
    let names = manager.names();
    for name in &kept {
        assert!(
            names.contains(&format!("aside.{name}").as_str()),
            "{name} set aside: {names:?}"
        );
    }
    assert!(names.contains(&"header"), "a new state: {names:?}");
    let b = Client::connect(&socket).unwrap();
    assert!(matches!(b.get(lost.handle), Err(Error::Stale)));
    assert_eq!(b.stats().unwrap().objects, 0);
    // What was set aside stays aside: the next start ignores it.
    drop(b);
    stop_and_start(
        &mut manager,
        &mut daemon,
        rustix::process::Signal::TERM,
        &socket,
        &[],
    );
    let c = Client::connect(&socket).unwrap();
    assert_eq!(c.stats().unwrap().objects, 0);
    assert!(manager.names().iter().any(|n| n.starts_with("aside.")));
    signal(&daemon, rustix::process::Signal::TERM);
    wait_exit(&mut daemon);
}
