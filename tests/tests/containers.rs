//! The container topology of a Kubernetes node (issue 23,
//! `dist/kubernetes/`), played on one machine with the namespaces `unshare`
//! makes:
//!
//! - the node: a directory with the socket directory (`run`, the hostPath
//!   `/run/hreg`: 0750, owned by hreg's uid and group 64000, as the
//!   DaemonSet's init container leaves it) and the state directory's parent
//!   (`state`, the hostPath `/run/hreg-state`, 0700);
//! - hregd's pod: its own mount and pid namespaces (hregd is pid 1 there),
//!   a private tmpfs as its filesystem with the node's two directories
//!   bind-mounted into it at other paths, and hregd running as uid 64000
//!   with no capability (`setpriv`), as the image and the DaemonSet run it;
//! - workload pods: load clients (`hreg_tests::restart_load`), each in its
//!   own pid and mount namespaces with the socket directory bind-mounted
//!   read-only at a path of their own: one as uid 65532 with supplementary
//!   group 64000 (`runAsUser` + `supplementalGroups`), and, where the kernel
//!   allows unprivileged user namespaces, one "rootless" pod that is root in
//!   its own user namespace and host uid 65533 outside;
//! - a rolling update: hregd's pod stopped (SIGTERM, as the kubelet does;
//!   then SIGKILL, as after the grace period) and a new pod started on the
//!   same node directories while the clients run.
//!
//! Checked: the pods' namespaces are real (hregd is pid 1 of its own pid
//! namespace, in its own mount namespace, uid 64000 without capabilities;
//! its mounts are invisible outside); hregd sees each client with its host
//! uid and pid 0 (not in its pid namespace); a second hregd started on the
//! same node while the first runs is refused (why the DaemonSet's
//! `maxSurge` is 0); after each update every client's session is back with
//! the same id, by itself, having seen nothing wrong, and every object its
//! client knows is there with its bytes and exactly its references.
//!
//! And: a hregd in a user namespace that maps only its own uid refuses
//! clients whose uid it does not map (they all show as the overflow uid)
//! unless `--allow-overflow-uid`, which makes them one identity.
//!
//! The tests need root and `unshare`; they say so and skip elsewhere
//! (`required_in_ci`: not in CI). The user-namespace parts skip, with the
//! kernel's refusal printed, where unprivileged user namespaces are off.

use hreg::Client;
use hreg_tests::load_clients::{check_registry, pause_all, LoadClient};
use hreg_tests::{binary, is_root, required_in_ci, wait_until, Rng, NOBODY, OTHER_USER, PATIENCE};
use rustix::process::{Pid, Signal};
use std::collections::HashMap;
use std::os::unix::fs::{chown, MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// hreg's uid and group in the image (dist/container/), which the
/// DaemonSet runs hregd as; the socket's group.
const HREG_UID: u32 = 64000;
/// hregd's settings in the DaemonSet that matter here (its ConfigMap sets
/// `socket_mode = "660"`: the socket's group, hreg, may attach).
const DAEMONSET_ARGS: &[&str] = &["--socket-mode", "660"];
/// A workload pod's `runAsUser` (with `supplementalGroups: [64000]`).
const WORKLOAD_UID: u32 = 65532;
/// The host uid a rootless pod's root is mapped to.
const ROOTLESS_UID: u32 = OTHER_USER;

/// A pod's filesystem: a private tmpfs on `$1` holding `run` and `state`,
/// bind mounts of the node's `$2` and `$3`; then `exec` the rest.
const DAEMON_POD: &str = r#"set -e
pod=$1 node_run=$2 node_state=$3
shift 3
mount -t tmpfs -o mode=0755 hreg-pod "$pod"
mkdir "$pod/run" "$pod/state"
mount --bind "$node_run" "$pod/run"
mount --bind "$node_state" "$pod/state"
exec "$@""#;

/// A workload pod's mount of the node's socket directory `$1` at `$2`,
/// read-only; then `exec` the rest.
const WORKLOAD_POD: &str = r#"set -e
mount --bind "$1" "$2"
mount -o remount,bind,ro "$2"
shift 2
exec "$@""#;

/// Whether `command` runs and exits 0; else what it said.
fn runs(command: &mut Command) -> Result<(), String> {
    let out = command
        .stdin(Stdio::null())
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
    }
}

/// Whether root may make mount and pid namespaces here (required in CI).
fn namespaces_allowed() -> bool {
    if !is_root() {
        eprintln!("skipping: the container topology needs root (namespaces, other uids)");
        return false;
    }
    let made = runs(Command::new("unshare").args(["--mount", "--pid", "--fork", "true"]));
    if let Err(e) = &made {
        eprintln!("the kernel refused `unshare --mount --pid --fork`: {e}");
    }
    let setpriv = runs(Command::new("setpriv").arg("--version"));
    required_in_ci(
        "`unshare --mount --pid` and `setpriv` (util-linux, root)",
        made.is_ok() && setpriv.is_ok(),
    )
}

/// Whether an unprivileged user may make its own user namespace (with pid
/// and mount namespaces in it), as a rootless container runtime does.
fn user_namespaces_allowed() -> bool {
    let made = runs(Command::new("setpriv").args([
        &format!("--reuid={ROOTLESS_UID}"),
        &format!("--regid={ROOTLESS_UID}"),
        "--clear-groups",
        "unshare",
        "--user",
        "--map-root-user",
        "--mount",
        "--pid",
        "--fork",
        "true",
    ]));
    match made {
        Ok(()) => true,
        Err(e) => {
            eprintln!(
                "skipping the user-namespace parts: the kernel refused \
                 `unshare --user --map-root-user` to uid {ROOTLESS_UID}: {e}"
            );
            false
        }
    }
}

/// A node's directories, as the DaemonSet's hostPath volumes and its init
/// container leave them, and empty mount points for the pods.
struct Node {
    dir: tempfile::TempDir,
}

impl Node {
    /// `owner`: who the init container gave the two directories to (hreg:
    /// the socket directory 0750, its group may attach), or root when
    /// there is none (the kubelet's hostPath defaults: 0755, root's).
    fn new(owner: u32) -> Node {
        let dir = tempfile::tempdir().expect("temp dir");
        set_mode(dir.path(), 0o755);
        let node = Node { dir };
        let run_mode = if owner == 0 { 0o755 } else { 0o750 };
        for (sub, mode) in [("run", run_mode), ("state", 0o700), ("pods", 0o755)] {
            let path = node.dir.path().join(sub);
            std::fs::create_dir(&path).expect("make a node directory");
            set_mode(&path, mode);
        }
        for sub in ["run", "state"] {
            chown(node.dir.path().join(sub), Some(owner), Some(owner)).expect("chown");
        }
        node
    }

    fn run(&self) -> PathBuf {
        self.dir.path().join("run")
    }

    fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// The node's socket, as seen from the node itself.
    fn socket(&self) -> PathBuf {
        self.run().join("hreg.sock")
    }

    /// A new, empty mount point for a pod's filesystem.
    fn pod_dir(&self, name: &str) -> PathBuf {
        let dir = self.dir.path().join("pods").join(name);
        std::fs::create_dir(&dir).expect("make a pod's mount point");
        set_mode(&dir, 0o755);
        dir
    }

    /// A client on the node itself (root, the host's namespaces): what
    /// `kubectl exec` into a privileged pod, or the operator, would use.
    fn client(&self) -> Client {
        Client::connect(self.socket()).expect("connect from the node")
    }
}

fn set_mode(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

/// A pod running hregd.
struct DaemonPod {
    /// `unshare`, outside the pod's pid namespace; it exits with hregd.
    unshare: Child,
    /// hregd's pid in the host's pid namespace (it is pid 1 in its own).
    hregd: Pid,
    /// The pod's filesystem's mount point (empty when seen from outside).
    pod: PathBuf,
    /// hregd's standard error.
    log: PathBuf,
}

impl DaemonPod {
    /// Starts hregd's pod `name` on `node`, in its own user namespace too
    /// when `user_namespace` (root mapped to root, nothing else), with
    /// hregd's `args` after the socket and state directory; returns once
    /// it serves, or what it said when it exits instead.
    fn start(
        node: &Node,
        name: &str,
        user_namespace: bool,
        args: &[&str],
    ) -> Result<DaemonPod, String> {
        let mut pod = DaemonPod::spawn(node, name, user_namespace, args);
        let started = Instant::now();
        loop {
            if let Some(status) = pod.unshare.try_wait().expect("try_wait") {
                return Err(format!("{name} exited ({status}): {}", pod.said()));
            }
            // The socket file belongs to the new hregd once it answers
            // (the old one removed its file, or its file is stale).
            if Client::connect(node.socket()).is_ok() {
                return Ok(pod);
            }
            assert!(
                started.elapsed() < PATIENCE,
                "{name} did not serve: {}",
                pod.said()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn spawn(node: &Node, name: &str, user_namespace: bool, args: &[&str]) -> DaemonPod {
        let pod = node.pod_dir(name);
        let log = node.dir.path().join(format!("{name}.log"));
        let mut command = Command::new("unshare");
        if user_namespace {
            command.args(["--user", "--map-root-user"]);
        }
        command
            .args(["--mount", "--pid", "--fork", "--propagation", "private"])
            .args(["sh", "-c", DAEMON_POD, "sh"])
            .arg(&pod)
            .arg(node.run())
            .arg(node.state());
        if !user_namespace {
            // As the image runs it: hreg's uid and group, no capability,
            // no way to gain one.
            command.args([
                "setpriv",
                &format!("--reuid={HREG_UID}"),
                &format!("--regid={HREG_UID}"),
                "--clear-groups",
                "--bounding-set=-all",
                "--no-new-privs",
            ]);
        }
        command
            .arg(binary("hregd"))
            .arg("--socket")
            .arg(pod.join("run/hreg.sock"))
            .arg("--state-dir")
            .arg(pod.join("state/registry"))
            .args(["--log-level", "info"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("hregd's log file"));
        let mut unshare = command.spawn().expect("spawn unshare");
        // `unshare --fork` has one child: the shell that execs hregd.
        let children = format!("/proc/{0}/task/{0}/children", unshare.id());
        let mut hregd = None;
        wait_until("the pod's first process", || {
            hregd = std::fs::read_to_string(&children)
                .ok()
                .and_then(|list| list.split_whitespace().next()?.parse().ok());
            hregd.is_some() || unshare.try_wait().ok().flatten().is_some()
        });
        let Some(hregd) = hregd.filter(|&pid| pid > 0).and_then(Pid::from_raw) else {
            let _ = unshare.wait();
            panic!(
                "{name} ended at once: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            )
        };
        DaemonPod {
            unshare,
            hregd,
            pod,
            log,
        }
    }

    /// Starts hregd's pod `name` on `node` while another serves there, and
    /// returns what it said when it gave up.
    fn refused(node: &Node, name: &str) -> String {
        let mut pod = DaemonPod::spawn(node, name, false, DAEMONSET_ARGS);
        let started = Instant::now();
        while pod.unshare.try_wait().expect("try_wait").is_none() {
            assert!(
                started.elapsed() < PATIENCE,
                "{name} did not give up: {}",
                pod.said()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        pod.said()
    }

    /// What hregd wrote to its standard error so far.
    fn said(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// A line of hregd's `/proc/PID/status` (`Uid`, `CapEff`, `NSpid`...).
    fn status(&self, field: &str) -> String {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.hregd.as_raw_nonzero()))
                .expect("hregd's status");
        status
            .lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .unwrap_or_else(|| panic!("no {field} in hregd's status"))
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// The kubelet's part of a rolling update: `signal` to hregd (SIGTERM,
    /// or SIGKILL after the grace period), then wait until the pod is gone.
    fn stop(mut self, signal: Signal) -> ExitStatus {
        rustix::process::kill_process(self.hregd, signal).expect("signal hregd");
        let started = Instant::now();
        loop {
            if let Some(status) = self.unshare.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                started.elapsed() < PATIENCE,
                "hregd did not stop: {}",
                self.said()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for DaemonPod {
    fn drop(&mut self) {
        if self.unshare.try_wait().ok().flatten().is_none() {
            // hregd changed uid, which clears `--kill-child`'s death signal:
            // kill it, not only its parent.
            let _ = rustix::process::kill_process(self.hregd, Signal::KILL);
            let _ = self.unshare.kill();
            let _ = self.unshare.wait();
        }
    }
}

/// The namespaces of process `pid` and of this process differ (`kind`:
/// `mnt`, `pid`, `user`...).
fn own_namespace(pid: Pid, kind: &str) -> bool {
    let of = |who: String| std::fs::read_link(format!("/proc/{who}/ns/{kind}")).expect("ns link");
    of(pid.as_raw_nonzero().to_string()) != of("self".to_owned())
}

/// A workload pod running a load client: its own pid and mount namespaces
/// (and user namespace, when `rootless`), the node's socket directory
/// mounted read-only at a path of its own.
fn workload_pod(node: &Node, name: &str, rootless: bool, seed: u64) -> LoadClient {
    let pod = node.pod_dir(name);
    let client = [
        binary("hreg-test-client").into_os_string(),
        pod.join("hreg.sock").into_os_string(),
        "restart-load".into(),
        seed.to_string().into(),
    ];
    let groups = format!("--groups={HREG_UID}");
    let mut command;
    if rootless {
        // An unprivileged user (with the socket's group) makes the pod's
        // namespaces itself: root inside, ROOTLESS_UID outside.
        command = Command::new("setpriv");
        command.args([
            &format!("--reuid={ROOTLESS_UID}"),
            &format!("--regid={ROOTLESS_UID}"),
            &groups,
            "unshare",
            "--user",
            "--map-root-user",
        ]);
    } else {
        command = Command::new("unshare");
    }
    command
        .args([
            "--mount",
            "--pid",
            "--fork",
            "--kill-child",
            "--propagation",
            "private",
        ])
        .args(["sh", "-c", WORKLOAD_POD, "sh"])
        .arg(node.run())
        .arg(&pod);
    if !rootless {
        command.args([
            "setpriv",
            &format!("--reuid={WORKLOAD_UID}"),
            &format!("--regid={WORKLOAD_UID}"),
            &groups,
        ]);
    }
    command.args(client);
    LoadClient::start(name, command)
}

/// Session id of each uid's one session, as hregd lists them, with their
/// pids as hregd sees them.
fn sessions_by_uid(watch: &Client) -> HashMap<u32, (u64, u32)> {
    let mut by_uid = HashMap::new();
    for s in watch.sessions().expect("SESSIONS") {
        if s.id != watch.session_id() {
            assert!(
                by_uid.insert(s.uid, (s.id, s.pid)).is_none(),
                "uid {} twice",
                s.uid
            );
        }
    }
    by_uid
}

#[test]
fn a_rolling_update_of_the_node_daemon_loses_nothing() {
    if !namespaces_allowed() {
        return;
    }
    let seed = hreg_tests::seed_from_env("HREG_CONTAINERS_SEED");
    eprintln!("containers: HREG_CONTAINERS_SEED={seed}");
    let mut rng = Rng::new(seed);
    let node = Node::new(HREG_UID);
    let mut daemon =
        DaemonPod::start(&node, "hregd-1", false, DAEMONSET_ARGS).expect("hregd's pod");

    // hregd's pod is what the DaemonSet makes.
    assert_eq!(
        daemon.status("Uid"),
        format!("{HREG_UID} {HREG_UID} {HREG_UID} {HREG_UID}")
    );
    assert_eq!(daemon.status("CapEff"), "0000000000000000", "no capability");
    assert_eq!(daemon.status("CapBnd"), "0000000000000000", "none to gain");
    assert!(
        daemon.status("NSpid").ends_with(" 1"),
        "pid 1 of its own pid namespace"
    );
    assert!(own_namespace(daemon.hregd, "mnt") && own_namespace(daemon.hregd, "pid"));
    assert_eq!(
        std::fs::read_dir(&daemon.pod)
            .expect("read the pod's mount point")
            .count(),
        0,
        "the pod's mounts are its own"
    );
    let socket = std::fs::metadata(node.socket()).expect("the socket on the node");
    assert_eq!(
        (socket.uid(), socket.gid(), socket.mode() & 0o777),
        (HREG_UID, HREG_UID, 0o660)
    );

    let mut clients = vec![workload_pod(&node, "workload", false, rng.next_u64())];
    let mut uids = vec![WORKLOAD_UID];
    if user_namespaces_allowed() {
        clients.push(workload_pod(&node, "rootless", true, rng.next_u64()));
        uids.push(ROOTLESS_UID);
    }
    let names: Vec<String> = clients.iter().map(|c| c.name.clone()).collect();
    let watch = node.client();
    // hregd sees each pod's host uid, and no pid: they are not in its pid
    // namespace.
    let sessions = sessions_by_uid(&watch);
    assert_eq!(sessions.len(), clients.len(), "{sessions:?}");
    for uid in &uids {
        let (_, pid) = sessions
            .get(uid)
            .unwrap_or_else(|| panic!("no session of uid {uid}: {sessions:?}"));
        assert_eq!(*pid, 0, "uid {uid}'s pid, from hregd's pid namespace");
    }
    std::thread::sleep(Duration::from_millis(200));

    // A second hregd on the same node directories while the first serves
    // (a surge) is refused: two daemons never share a state or a socket.
    let surge = DaemonPod::refused(&node, "hregd-surge");
    assert!(
        surge.contains("another hregd") || surge.contains("locked by another hregd"),
        "{surge}"
    );
    assert!(watch.stats().is_ok(), "the first hregd serves on");

    let mut stalls = 0;
    for (round, signal) in [Signal::TERM, Signal::KILL].into_iter().enumerate() {
        let when = format!("after update {} ({signal:?})", round + 1);
        std::thread::sleep(Duration::from_millis(200 + rng.below(400)));
        let status = daemon.stop(signal);
        if signal == Signal::TERM {
            assert!(status.success(), "hregd's exit on SIGTERM: {status}");
        }
        daemon = DaemonPod::start(
            &node,
            &format!("hregd-{}", round + 2),
            false,
            DAEMONSET_ARGS,
        )
        .unwrap_or_else(|e| panic!("{when}: {e}"));
        wait_until("the node's own session to come back", || {
            watch.stats().is_ok()
        });
        let reports = pause_all(&mut clients, &when);
        stalls += 1;
        for (name, report) in names.iter().zip(&reports) {
            let c = &report.counts;
            assert!(
                c.disconnected > 0,
                "{name} {when}: never saw the daemon go: {c:?}"
            );
            assert!(
                c.stalls >= stalls,
                "{name} {when}: did not resume by itself: {c:?}"
            );
        }
        let named: Vec<(&str, _)> = names.iter().map(String::as_str).zip(&reports).collect();
        check_registry(&watch, &named, &when);
        let now = sessions_by_uid(&watch);
        for uid in &uids {
            assert_eq!(
                now.get(uid).map(|s| s.0),
                sessions.get(uid).map(|s| s.0),
                "{when}: uid {uid}'s session"
            );
        }
        for client in &mut clients {
            client.send("go");
        }
    }
    let reports = pause_all(&mut clients, "at the end");
    for (name, report) in names.iter().zip(&reports) {
        let c = &report.counts;
        eprintln!(
            "containers: {name}: {} ops, {} DISCONNECTED in {} stalls, the longest {} ms",
            c.ops,
            c.disconnected,
            c.stalls,
            c.longest_stall_us / 1000
        );
    }
    for client in clients {
        client.quit();
    }
    assert!(daemon.stop(Signal::TERM).success());
}

#[test]
fn a_daemon_in_a_user_namespace_refuses_the_uids_it_cannot_tell_apart() {
    if !namespaces_allowed() || !user_namespaces_allowed() {
        return;
    }
    for allow in [false, true] {
        // Root mapped to root, nothing else: every other uid is unmapped
        // in hregd's namespace. The node's directories are root's (the
        // kubelet's hostPath defaults), the socket open to all.
        let node = Node::new(0);
        let args: &[&str] = if allow {
            &["--socket-mode", "666", "--allow-overflow-uid"]
        } else {
            &["--socket-mode", "666"]
        };
        let daemon = DaemonPod::start(&node, "hregd", true, args).expect("hregd's pod");
        assert!(own_namespace(daemon.hregd, "user"));
        let hregctl = |uid: u32, words: &[&str]| {
            let out = Command::new(binary("hregctl"))
                .arg("--socket")
                .arg(node.socket())
                .args(words)
                .uid(uid)
                .gid(uid)
                .output()
                .expect("run hregctl");
            let text = |b: &[u8]| String::from_utf8_lossy(b).trim().to_owned();
            (out.status.success(), text(&out.stdout), text(&out.stderr))
        };
        // Root is mapped: it is root.
        let (ok, said, err) = hregctl(0, &["ping"]);
        assert!(ok && said.starts_with("hregd answers"), "{said} {err}");
        let (ok, handle, err) = hregctl(OTHER_USER, &["put", "private to uid 65533?"]);
        if !allow {
            assert!(
                !ok && err.contains("denied"),
                "an unmapped uid attached: {handle} {err}"
            );
            assert!(
                daemon.said().contains("allow_overflow_uid"),
                "{}",
                daemon.said()
            );
            continue;
        }
        assert!(ok, "allowed, yet refused: {err}");
        // Allowed, every unmapped uid is one identity: the overflow uid's.
        let watch = node.client();
        let handle: u64 = handle.parse().expect("a handle");
        let listed = hreg_tests::load_clients::list_all(&watch);
        assert_eq!(listed[&handle].owner, NOBODY, "owned by the overflow uid");
        let (ok, value, err) = hregctl(NOBODY, &["get", &handle.to_string()]);
        assert!(
            ok && value == "private to uid 65533?",
            "another unmapped uid reads the private object: {err}"
        );
    }
}
