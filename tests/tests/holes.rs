//! The hostile-client suite, part two: one regression test per hole of the
//! "nine holes" review, each reproducing the attack with a real attacker
//! process (`hreg-attack`, see `hreg_tests::attacks`) against a real hregd,
//! and asserting the bound with margins a noisy 2-core machine keeps:
//! daemon CPU back to idle (< 5% of a core over 3 s) while the attacker
//! stays connected, memory within the configured limits plus a stated
//! overhead, another client served within 2 s during the attack.
//!
//! Hole 4 (a RETAIN refused at a count of `u32::MAX` left an entry that a
//! later RELEASE wrapped) takes 2^32 retains to reach with a real client;
//! it is tested in the registry's unit tests
//! (`a_refused_retain_leaves_no_entry_and_release_never_wraps`).
//!
//! The tests that drop to another uid need root; they say so and return
//! when not run as root.

use hreg_proto::control::{ControlRequest, Reply};
use hreg_proto::Status;
use hreg_tests::raw::RawConn;
use hreg_tests::{
    is_root, required_in_ci, serve_time, wait_until, Daemon, Helper, NOBODY, OTHER_USER,
};
use std::time::{Duration, Instant};

/// The share of a core an idle daemon stays under.
const IDLE: f64 = 0.05;
const WINDOW: Duration = Duration::from_secs(3);
/// How soon an honest client must be served during an attack: seconds,
/// for a loaded machine running tests in parallel; the daemons these holes
/// were found in never served it while the attack went on.
const SERVED_WITHIN: Duration = Duration::from_secs(5);

fn assert_idle(daemon: &Daemon, during: &str) {
    let share = daemon.cpu_share(WINDOW);
    assert!(
        share < IDLE,
        "{during}: the daemon used {:.1}% of a core over {WINDOW:?}",
        share * 100.0
    );
}

fn assert_serves(daemon: &Daemon, during: &str) {
    let took = serve_time(&daemon.socket, SERVED_WITHIN);
    eprintln!("{during}: served in {took:?}");
    assert!(
        took.is_some(),
        "{during}: an honest client was not served within {SERVED_WITHIN:?}"
    );
}

/// Hole 1: before, the worker kept closed rings' doorbells in its epoll set;
/// one ring of a kept copy made `epoll_wait` return forever (0.997 of a
/// core, idle daemon), and the entries leaked against `max_user_watches`.
#[test]
fn closed_rings_rung_forever_leave_the_daemon_idle() {
    let daemon = Daemon::start(&[]);
    let observer = daemon.client();
    let alone = || observer.stats().unwrap().sessions == 1;
    wait_until("the observer to be alone", alone);
    let watches = daemon.epoll_watches();
    let (attacker, ready) = Helper::attack(&daemon.socket, "doorbell", None);
    let bells: usize = ready.trim_start_matches("ready bells=").parse().unwrap();
    assert!(bells > 64, "{ready}");
    wait_until("the attacker's session to end", alone);
    wait_until("every closed ring to leave the epoll sets", || {
        daemon.epoll_watches() == watches
    });
    drop(observer);
    assert_idle(&daemon, "doorbells of closed rings rung");
    assert_serves(&daemon, "doorbells of closed rings rung");
    attacker.finish();
}

/// Hole 2: before, REMOVE left the handle in the remover's reference table:
/// with `--uid-max-objects 64`, 18.4 M stale references and +545 MiB in
/// 20 s. Now the table keeps at most twice its live entries plus 1024.
#[test]
fn insert_remove_loops_keep_the_reference_table_small() {
    let daemon = Daemon::start(&["--uid-max-objects", "64"]);
    let observer = daemon.client();
    let rss = daemon.status_bytes("RssAnon");
    let (attacker, _) = Helper::attack(&daemon.socket, "remove-loop", None);
    let ops_before = observer.stats().unwrap().ops;
    std::thread::sleep(WINDOW);
    let ops = observer.stats().unwrap().ops - ops_before;
    assert!(ops > 20_000, "the attack ran only {ops} operations");
    let references = observer
        .sessions()
        .unwrap()
        .iter()
        .find(|s| s.name == "hreg-attack")
        .expect("the attacker's session")
        .references;
    assert!(
        references <= 64 + 2048,
        "{references} references after {ops} ops"
    );
    let grown = daemon.status_bytes("RssAnon").saturating_sub(rss);
    assert!(grown < 16 << 20, "anonymous memory grew by {grown} bytes");
    assert_serves(&daemon, "insert/remove loop");
    attacker.finish();
}

/// Hole 3: before, staging buffers were charged to no quota: with
/// `--uid-max-bytes 1`, 4 sessions × 64 rings took 257 MiB. Now staging
/// counts against the uid's bytes and is capped per session (4 × the
/// largest value, at least 4 MiB).
#[test]
fn staging_is_charged_to_its_uid_and_capped_per_session() {
    // The honest client must be another uid: the attacker's own uid is
    // rightly out of bytes.
    if !is_root() {
        eprintln!("skipped: the attacker runs as another uid");
        return;
    }
    for (args, bound) in [
        (vec!["--uid-max-bytes", "8388608"], 8u64 << 20),
        (vec![], 4 * (4u64 << 20)),
    ] {
        let daemon = Daemon::start_reachable(&args);
        let rss = daemon.status_bytes("RssAnon");
        let (attacker, ready) = Helper::attack(&daemon.socket, "staging", Some(NOBODY));
        assert!(!ready.ends_with("quota=0"), "{args:?}: {ready}");
        let grown = daemon.status_bytes("RssAnon").saturating_sub(rss);
        assert!(
            grown < bound + (8 << 20),
            "{args:?}: anonymous memory grew by {grown} bytes ({ready})"
        );
        assert_serves(&daemon, "staging held on every ring");
        attacker.finish();
    }
}

/// Hole 5: before, one pipelining client held the control thread (LIST
/// scanned every slot, and one connection was read until EAGAIN): with
/// 300k objects a new attach had not completed after 15 s. Now a
/// connection gets a bounded number of messages per wakeup and a LIST a
/// bounded scan, and each uid its share of the control thread's work per
/// wakeup: the flooder is another uid, as an attacker would be (one of the
/// same uid only delays its own uid's attaches).
#[test]
fn a_list_flood_does_not_starve_attach() {
    if !required_in_ci("root (the flooder is another uid)", is_root()) {
        return;
    }
    let daemon = Daemon::start_reachable(&[]);
    // SHARED, so that the flooder's LISTs have them all to scan.
    let filler = daemon.client();
    let value = [1u8; 8];
    for _ in 0..100_000 / 512 {
        let mut ops: Vec<hreg::Op<'_>> = (0..512)
            .map(|_| hreg::Op::Insert {
                value: &value,
                flags: hreg::SHARED,
            })
            .collect();
        for result in filler.submit(&mut ops).unwrap() {
            result.unwrap();
        }
    }
    let (attacker, _) = Helper::attack(&daemon.socket, "list-flood", Some(NOBODY));
    for _ in 0..5 {
        assert_serves(&daemon, "LIST flood");
    }
    // And the flood takes a bounded share of a core, not all of it: before
    // the per-uid share across wakeups the control thread answered it at
    // 0.9 of a core, leaving the host's other processes one core less.
    let share = daemon.cpu_share(Duration::from_secs(2));
    println!("a LIST flood: hregd at {share:.2} of a core");
    assert!(
        share < 0.5,
        "a LIST flood kept hregd at {share:.2} of a core"
    );
    attacker.finish();
}

/// Hole 6: before, at the descriptor limit `accept` failed with EMFILE and
/// the loop spun (0.98 of a core under `prlimit --nofile=64`) answering
/// nobody. Now a reserve is kept: rings are refused first, then
/// connections get a REFUSED naming the limit.
#[test]
fn out_of_descriptors_the_daemon_answers_and_stays_idle() {
    let daemon = Daemon::start_with(&["--workers", "1"], |command| {
        use std::os::unix::process::CommandExt;
        // SAFETY: setrlimit is async-signal-safe; nothing else runs in the
        // child between fork and exec.
        unsafe {
            command.pre_exec(|| {
                let limit = libc::rlimit {
                    rlim_cur: 64,
                    rlim_max: 64,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    });
    let (attacker, ready) = Helper::attack(&daemon.socket, "descriptors", None);
    assert!(!ready.contains("sessions=0 "), "{ready}");
    assert_idle(&daemon, "descriptors exhausted");
    let began = Instant::now();
    let conn = RawConn::connect(&daemon.socket);
    conn.set_recv_timeout(SERVED_WITHIN);
    // The daemon may refuse and close before HELLO is sent: the REFUSED
    // waits in the socket all the same.
    let hello = ControlRequest::Hello {
        version: hreg_proto::PROTOCOL_VERSION,
        name: "newcomer".into(),
    };
    let _ = conn.try_send_with_fds(&hello.encode(), &[]);
    // Closed with our HELLO unread, the connection reports a reset before
    // the REFUSED it holds.
    let reply = match conn.try_recv() {
        Err(rustix::io::Errno::CONNRESET) => conn.try_recv(),
        other => other,
    };
    match reply {
        Ok(Some((Some(Reply::Welcome(_)), _))) => {}
        Ok(Some((Some(Reply::Refused { status, message }), _))) => {
            assert_eq!(status, Status::Quota as u32, "{message}");
            assert!(message.contains("descriptor"), "{message}");
        }
        other => panic!("newcomer got {other:?} after {:?}", began.elapsed()),
    }
    assert!(began.elapsed() < SERVED_WITHIN);
    attacker.finish();
}

/// Hole 7: before, a full CQ with a published submission behind it counted
/// as work, so the worker never slept (0.953 of a core for the life of the
/// deaf session).
#[test]
fn a_deaf_ring_lets_the_worker_sleep() {
    let daemon = Daemon::start(&["--ring-entries", "16"]);
    let (attacker, _) = Helper::attack(&daemon.socket, "deaf-ring", None);
    assert_idle(&daemon, "a deaf ring with a full CQ");
    assert_serves(&daemon, "a deaf ring with a full CQ");
    attacker.finish();
}

/// Hole 8: before, a peer outside the daemon's pid namespace (pid 0 in
/// `SO_PEERCRED`) hit undefined behaviour and was dropped without a word.
/// Now it is served, and listed with pid 0.
#[test]
fn a_peer_outside_the_pid_namespace_is_served() {
    if !is_root() {
        eprintln!("skipped: unshare --pid needs root");
        return;
    }
    let daemon = Daemon::start_wrapped(&["unshare", "--pid", "--fork", "--kill-child"], &[]);
    let client = daemon.client();
    let h = client.insert(b"from outside", 0).unwrap();
    assert_eq!(client.get(h).unwrap(), b"from outside");
    let me = client
        .sessions()
        .unwrap()
        .into_iter()
        .find(|s| s.id == client.session_id())
        .expect("own session listed");
    assert_eq!(me.pid, 0, "a peer outside the namespace has no pid there");
}

/// Hole 9: before, `max_sessions` and the connections waiting for HELLO
/// were global, so one uid could lock every other out. Now each uid has
/// `--uid-max-sessions` (default half of `max_sessions`) and a share of the
/// connections read at once; root is exempt from both.
#[test]
fn one_uid_cannot_lock_the_others_out() {
    if !is_root() {
        eprintln!("skipped: the attacker and the honest user need two other uids");
        return;
    }
    let daemon = Daemon::start_reachable(&["--max-sessions", "16"]);
    let (attacker, ready) = Helper::attack(&daemon.socket, "hog", Some(NOBODY));
    assert!(ready.starts_with("ready sessions=8 "), "{ready}");
    assert!(ready.contains("uid_max_sessions"), "{ready}");
    // Another (non-root) user attaches while the hog holds its sessions
    // and 2000 silent connections.
    let began = Instant::now();
    let mut honest = Helper::spawn_program(
        "hreg-test-client",
        &daemon.socket,
        &["insert", "honest"],
        Some(OTHER_USER),
    );
    let line = honest.line();
    assert!(line.parse::<u64>().is_ok(), "the honest user got {line:?}");
    assert!(
        began.elapsed() < SERVED_WITHIN,
        "the honest user waited {:?}",
        began.elapsed()
    );
    honest.finish();
    assert_serves(&daemon, "one uid hogging sessions and connections");
    attacker.finish();
}
