//! Issue 18: service proportional to work, a fair share per uid, a control
//! plane no uid can jam, names that are text, and session slots kept across
//! a restart. One test per row of the second table, each with real
//! processes and uids (an attacker as `nobody` through `hreg-attack`), and
//! one where a uid holds thousands of idle (then busy) rings while another
//! uid's writes are measured against their own rate in the same run. The
//! bounds are generous (debug builds, a shared machine); the real figures
//! are the bench's (`hreg-bench --rings`, `--attacks`).
//!
//! Every test needs root (other uids, or a daemon without
//! CAP_SYS_RESOURCE); outside CI they say so and return.

use hreg::{Client, Error};
use hreg_proto::control::{ControlRequest, Reply};
use hreg_proto::{Status, PROTOCOL_VERSION};
use hreg_tests::raw::{RawConn, RawSession};
use hreg_tests::{
    cpu_time_of, is_root, raise_fd_limit, required_in_ci, serve_time, wait_until, Daemon, Helper,
    NOBODY, OTHER_USER, PATIENCE,
};
use rustix::process::Signal;
use std::time::{Duration, Instant};

/// Insert + release pairs per second of `client` over `window`, applied by
/// the daemon.
fn pairs_per_sec(client: &Client, window: Duration) -> f64 {
    let start = Instant::now();
    let mut pairs = 0u64;
    while start.elapsed() < window {
        for _ in 0..32 {
            let h = client.insert(b"honest", 0).expect("honest insert");
            client.release(h).expect("honest release");
        }
        // Counted once applied (posted writes return before).
        client.flush().expect("honest flush");
        pairs += 32;
    }
    pairs as f64 / start.elapsed().as_secs_f64()
}

/// The better of a few measurements (the machine is shared: a pause of the
/// writer is not the daemon's doing).
fn best_rate(client: &Client) -> f64 {
    (0..3)
        .map(|_| pairs_per_sec(client, Duration::from_millis(700)))
        .fold(0.0, f64::max)
}

/// `hreg-attack SOCKET ARGS...` as `uid`, once it said `ready ...`; the
/// words after `ready`.
fn attacker(daemon: &Daemon, args: &[&str], uid: Option<u32>) -> (Helper, String) {
    let mut helper = Helper::spawn_program("hreg-attack", &daemon.socket, args, uid);
    let line = helper.line();
    let said = line
        .strip_prefix("ready")
        .unwrap_or_else(|| panic!("{args:?}: {line:?}"))
        .trim()
        .to_string();
    (helper, said)
}

/// Another uid holds thousands of idle rings, then makes each send a
/// request every 20 ms; the honest writer (root here) keeps a good part of
/// its rate alone, measured in the same run. Before issue 18 every worker
/// loop looked at every ring: 0.03 of the rate alone with 4096 idle rings,
/// 0.003 with them busy (release build). The bounds here are generous
/// (a debug build among other tests on 2 shared cores; ten times the
/// figures before); the real ratios are `hreg-bench --rings SECONDS`'s.
#[test]
fn thousands_of_another_uids_rings_cost_an_honest_writer_little() {
    if !required_in_ci("root (the rings are another uid's)", is_root()) {
        return;
    }
    let daemon = Daemon::start_reachable(&[]);
    let honest = daemon.client();
    let alone = best_rate(&honest);
    let (idle, held) = attacker(&daemon, &["rings", "4096"], Some(NOBODY));
    assert_eq!(held, "4096", "the holder got its rings");
    let with_idle = best_rate(&honest);
    drop(idle);
    let (busy, _) = attacker(&daemon, &["rings", "4096", "busy"], Some(NOBODY));
    std::thread::sleep(Duration::from_millis(200));
    let with_busy = best_rate(&honest);
    drop(busy);
    let (own, _) = attacker(&daemon, &["rings", "4096"], None);
    let with_own = best_rate(&honest);
    drop(own);
    let ratios = (with_idle / alone, with_busy / alone, with_own / alone);
    eprintln!(
        "alone {alone:.0} pairs/s; ÷ alone: idle {:.3}, busy {:.3}, own uid's idle {:.3}",
        ratios.0, ratios.1, ratios.2
    );
    assert!(ratios.0 >= 0.2, "another uid's idle rings: {ratios:?}");
    assert!(ratios.1 >= 0.05, "another uid's busy rings: {ratios:?}");
    assert!(ratios.2 >= 0.2, "its own uid's idle rings: {ratios:?}");
}

/// Row 4: one uid opens as many rings as it can. A ring costs the daemon
/// no descriptor (a doorbell is per session and worker), so its
/// descriptors stay few and another uid still attaches and writes. Before,
/// each ring was an eventfd: a daemon with 4096 descriptors ran out and
/// refused everyone with QUOTA `file_descriptors`.
#[test]
fn rings_cost_no_descriptor_each_and_one_uid_cannot_exhaust_them() {
    if !required_in_ci("root (the rings are another uid's)", is_root()) {
        return;
    }
    let daemon = Daemon::start_reachable_wrapped(&["prlimit", "--nofile=4096:4096"], &[]);
    let (_hog, held) = attacker(&daemon, &["rings", "8192"], Some(NOBODY));
    let held: usize = held.parse().expect("a count");
    assert!(held >= 4096, "the uid holds thousands of rings: {held}");
    let fds = daemon.fd_count();
    assert!(
        fds < 1000,
        "{held} rings hold {fds} of the daemon's descriptors"
    );
    let mut honest = Helper::spawn_program(
        "hreg-test-client",
        &daemon.socket,
        &["insert", "still served"],
        Some(OTHER_USER),
    );
    let line = honest.line();
    assert!(line.parse::<u64>().is_ok(), "the other uid got {line:?}");
    honest.finish();
}

/// Row 14: a client rings its own doorbells in a loop, naming rings with
/// nothing new. No wake finds work, so none starts a spin, and a session
/// that keeps ringing for nothing is muted for a while: the daemon's CPU
/// stays under half of what the attacker spends (0.1–0.3 of it here; the
/// bound is generous because both are a few % of a core on a shared
/// machine). Before, each wake cost a worker a 50 µs spin (the attacker at
/// 18% of a core made the daemon use 57%: 3.2 times).
#[test]
fn ringing_doorbells_for_nothing_costs_the_daemon_little() {
    if !required_in_ci("root (the attacker is another uid)", is_root()) {
        return;
    }
    let daemon = Daemon::start_reachable(&[]);
    let (bells, said) = attacker(&daemon, &["own-doorbells"], Some(NOBODY));
    assert!(said.starts_with("rings="), "{said}");
    std::thread::sleep(Duration::from_millis(500));
    let window = Duration::from_secs(2);
    let pid = bells.child.id() as i32;
    let attacker_before = cpu_time_of(pid);
    let share = daemon.cpu_share(window);
    let attacker = (cpu_time_of(pid) - attacker_before).as_secs_f64() / window.as_secs_f64();
    eprintln!(
        "the daemon used {:.1}% of a core, the attacker {:.1}%",
        share * 100.0,
        attacker * 100.0
    );
    assert!(
        attacker > 0.05,
        "the attacker hardly ran ({:.1}%)",
        attacker * 100.0
    );
    assert!(
        share < 0.5 * attacker,
        "the daemon used {:.1}% of a core for the attacker's {:.1}%",
        share * 100.0,
        attacker * 100.0
    );
    assert!(
        serve_time(&daemon.socket, PATIENCE).is_some(),
        "root was not served"
    );
}

/// Row 15: 40 sessions of one uid send MAP_DOMAIN requests by the hundred
/// and never read the replies, which carry descriptors. The daemon sends a
/// connection no descriptors while it has not read the earlier ones, and
/// caps those in flight per uid, so the kernel never refuses its sendmsg
/// (ETOOMANYREFS): another uid attaches (WELCOME carries descriptors) and
/// opens rings. Before, with no CAP_SYS_RESOURCE (as the shipped unit), no
/// HELLO or RING_OPEN succeeded for anyone. (The daemon runs without
/// CAP_SYS_RESOURCE and CAP_SYS_ADMIN, which exempt from the kernel's
/// check, and with 256
/// descriptors here, so that the kernel's per-peer queue of 10 messages is
/// enough to pass it.)
#[test]
fn unread_descriptor_replies_of_one_uid_block_no_one_else() {
    if !required_in_ci("root (to drop CAP_SYS_RESOURCE; other uids)", is_root()) {
        return;
    }
    let daemon = Daemon::start_reachable_wrapped(
        &[
            "prlimit",
            "--nofile=256:256",
            "setpriv",
            "--bounding-set=-sys_resource,-sys_admin",
        ],
        &[],
    );
    // The SHARED domain gets chunks to send.
    let filler = daemon.client();
    filler.insert(b"shared", hreg::SHARED).unwrap();
    let (_flood, said) = attacker(&daemon, &["unread-fds", "40", "200"], Some(NOBODY));
    let sent: usize = said
        .strip_prefix("sent=")
        .and_then(|n| n.parse().ok())
        .expect("a count");
    // A peer's queue holds 10 messages (net.unix.max_dgram_qlen): about
    // 10 replies of 2 descriptors wait unread per connection, 800 in all,
    // past the daemon's 256.
    assert!(sent >= 40 * 5, "the flood went out: {said}");
    std::thread::sleep(Duration::from_millis(500));
    for i in 0..3 {
        let mut honest = Helper::spawn_program(
            "hreg-test-client",
            &daemon.socket,
            &["insert", "served"],
            Some(OTHER_USER),
        );
        let line = honest.line();
        assert!(
            line.parse::<u64>().is_ok(),
            "attach {i} of the other uid got {line:?}"
        );
        honest.finish();
    }
}

/// Row 8: 500 sessions and 3000 idle connections of one uid ask SESSIONS
/// without pause. Control work is shared per uid per wakeup and SESSIONS
/// pages come from per-uid indexes, so another uid's connect + insert
/// stays quick: under 250 ms more than alone (a debug build: about 70 ms;
/// release: a few ms). Before: 3.1 s here (release; the issue measured
/// 123–666 ms with a slower flood), the control thread at half a core.
#[test]
fn a_sessions_flood_of_one_uid_keeps_others_attaching_quickly() {
    if !required_in_ci("root (the attacker is another uid)", is_root()) {
        return;
    }
    raise_fd_limit(8192);
    let daemon = Daemon::start_reachable(&[]);
    let median_serve = || {
        let mut times: Vec<Duration> = (0..7)
            .map(|_| serve_time(&daemon.socket, PATIENCE).expect("served"))
            .collect();
        times.sort();
        times[3]
    };
    let alone = median_serve();
    let (_flood, said) = attacker(&daemon, &["sessions-flood", "500", "3000"], Some(NOBODY));
    assert!(said.starts_with("sessions=500"), "{said}");
    std::thread::sleep(Duration::from_millis(300));
    let flooded = median_serve();
    eprintln!("connect + insert + get: median {alone:?} alone, {flooded:?} under the flood");
    assert!(
        flooded < alone * 3 + Duration::from_millis(250),
        "connect + insert + get: median {alone:?} alone, {flooded:?} under the flood"
    );
}

/// Row 5: a HELLO whose name holds control characters is refused, with a
/// message that says why; no line of it reaches the log or `hregctl
/// sessions`. The Rust client refuses such a name itself (INVALID).
#[test]
fn a_name_with_control_characters_is_refused() {
    let daemon = Daemon::start(&[]);
    for name in ["evil\nFAKE LOG LINE", "\x1b[31mred", "tab\there", "nul\0"] {
        let conn = RawConn::connect(&daemon.socket);
        conn.send(&ControlRequest::Hello {
            version: PROTOCOL_VERSION,
            name: name.into(),
        });
        match conn.recv() {
            Some((Reply::Refused { status, message }, _)) => {
                assert_eq!(status, Status::Invalid as u32, "{name:?}: {message}");
                assert!(message.contains("control characters"), "{message}");
            }
            other => panic!("{name:?}: {other:?}"),
        }
    }
    assert!(matches!(
        Client::connect_named(Some(&daemon.socket), "a\nb"),
        Err(Error::Invalid)
    ));
    // Text with no control characters, any script, is a name.
    let client = Client::connect_named(Some(&daemon.socket), "名前 ok").unwrap();
    let sessions = client.sessions().unwrap();
    assert!(sessions.iter().any(|s| s.name == "名前 ok"));
    // A raw session still attaches (the raw client says "raw").
    drop(RawSession::attach(&daemon.socket));
}

/// Row 9: during a restart another uid takes every session slot it can.
/// The sessions the new daemon kept hold theirs until they resume (or their
/// grace ends), so the client that comes back late still resumes, with its
/// objects. Before, the other uid took the slot, the resume was refused
/// with QUOTA (final), and after the grace the client's objects died.
#[test]
fn kept_sessions_hold_their_slots_through_a_restart() {
    if !required_in_ci("root (the other clients are another uid)", is_root()) {
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir").keep();
    let state = dir.join("state").to_string_lossy().into_owned();
    let args = [
        "--state-dir",
        &state,
        "--resume-grace",
        "6",
        "--max-sessions",
        "2",
        "--uid-max-sessions",
        "2",
    ];
    let mut daemon = Daemon::start_reachable(&args);
    let client = daemon.client();
    let h = client.insert(b"kept across the restart", 0).unwrap();
    daemon.signal(Signal::KILL);
    let mut restart_args = vec!["--socket-mode", "666"];
    restart_args.extend_from_slice(&args);
    daemon.restart(&restart_args);
    // The client has not noticed yet (it notices when used); another uid
    // attaches as many sessions as it may.
    let others: Vec<Helper> = (0..2)
        .map(|i| {
            let mut other = Helper::spawn_program(
                "hreg-test-client",
                &daemon.socket,
                &["insert", &format!("other {i}")],
                Some(OTHER_USER),
            );
            let _ = other.line();
            other
        })
        .collect();
    wait_until("the session to resume", || !client.is_disconnected());
    assert_eq!(client.get(h).unwrap(), b"kept across the restart");
    std::thread::sleep(Duration::from_secs(7));
    assert_eq!(
        client.get(h).unwrap(),
        b"kept across the restart",
        "resumed, so nothing was given up after the grace"
    );
    drop(others);
}
