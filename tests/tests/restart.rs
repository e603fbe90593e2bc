//! A restart keeps every object: hregd with `--state-dir` stopped (SIGTERM)
//! or killed (SIGKILL) and started again on the same socket; its clients
//! take their sessions back by themselves, with their references, handles
//! and borrowed values intact. A client that does not come back within the
//! grace period has its references dropped; a daemon that kept nothing
//! leaves its clients DISCONNECTED for good.

use hreg::{Client, Error, DETACHED};
use hreg_tests::{wait_until, Daemon, Helper};
use rustix::process::Signal;
use std::time::{Duration, Instant};

/// A daemon keeping its state in its private directory.
fn kept_daemon(grace: &str) -> (Daemon, Vec<String>) {
    let dir = tempfile::tempdir().expect("temp dir").keep();
    let args: Vec<String> = vec![
        "--state-dir".into(),
        dir.join("state").to_string_lossy().into_owned(),
        "--resume-grace".into(),
        grace.into(),
        "--workers".into(),
        "2".into(),
    ];
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    (Daemon::start(&refs), args)
}

fn restart(daemon: &mut Daemon, signal: Signal, args: &[String]) -> Duration {
    daemon.signal(signal);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    daemon.restart(&refs)
}

/// Waits until `client` works again (its session resumed).
fn wait_resumed(client: &Client) {
    wait_until("the session to resume", || !client.is_disconnected());
}

fn value(len: usize, salt: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(13).wrapping_add(salt))
        .collect()
}

#[test]
fn objects_sessions_and_borrowed_values_survive_stop_and_kill() {
    let (mut daemon, args) = kept_daemon("20");
    let client = daemon.client();
    let mut objects = Vec::new();
    for (i, len) in [0usize, 16, 200, 4096, 300_000].into_iter().enumerate() {
        let flags = if i % 2 == 0 { DETACHED } else { 0 };
        let v = value(len, i as u8);
        objects.push((client.insert(&v, flags).unwrap(), v));
    }
    let big = objects[4].0;
    let borrowed = client.get_ref(big).unwrap();
    let removed = client.insert(b"removed before the restart", 0).unwrap();
    client.remove(removed).unwrap();

    for (round, signal) in [Signal::TERM, Signal::KILL, Signal::TERM, Signal::KILL]
        .into_iter()
        .enumerate()
    {
        daemon.signal(signal);
        // While the daemon is away, every call says so at once.
        wait_until("the client to notice", || client.is_disconnected());
        let asked = Instant::now();
        assert!(matches!(client.insert(b"x", 0), Err(Error::Disconnected)));
        assert!(matches!(client.get(big), Err(Error::Disconnected)));
        assert!(
            asked.elapsed() < Duration::from_secs(1),
            "calls return at once"
        );
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        daemon.restart(&refs);
        wait_resumed(&client);
        for (h, v) in &objects {
            assert_eq!(&client.get(*h).unwrap(), v, "round {round}: {h}");
        }
        assert_eq!(
            &*borrowed,
            &objects[4].1[..],
            "a borrowed value outlives restarts"
        );
        assert!(matches!(client.get(removed), Err(Error::Stale)));
        // The session works on: writes, its references, new objects.
        client.replace(objects[1].0, b"replaced").unwrap();
        objects[1].1 = b"replaced".to_vec();
        let new = client.insert(b"after a restart", 0).unwrap();
        assert!(objects.iter().all(|(h, _)| *h != new));
        objects.push((new, b"after a restart".to_vec()));
        let stats = client.stats().unwrap();
        assert_eq!(stats.objects, objects.len() as u64, "round {round}");
    }
    drop(borrowed);
    // The session's references end with it; DETACHED objects stay.
    drop(client);
    let other = daemon.client();
    wait_until("the session's objects to go", || {
        other.stats().unwrap().objects == 3
    });
    let _ = restart(&mut daemon, Signal::TERM, &args);
}

#[test]
fn a_client_that_does_not_come_back_loses_its_references_after_the_grace() {
    let (mut daemon, args) = kept_daemon("1");
    let keeper = daemon.client();
    let kept = keeper.insert(b"held by a client that stays", 0).unwrap();
    let mut helper = Helper::spawn(&daemon.socket, &["insert", "held by a client that dies"]);
    let held: u64 = helper.line().parse().expect("a handle");
    daemon.signal(Signal::KILL);
    helper.kill9();
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    daemon.restart(&refs);
    wait_resumed(&keeper);
    let stats = keeper.stats().unwrap();
    assert_eq!(stats.objects, 2, "kept until the grace passes");
    wait_until("the dead client's references to be dropped", || {
        keeper.stats().unwrap().objects == 1
    });
    let held = hreg::Handle::new(held).unwrap();
    assert!(matches!(keeper.get(held), Err(Error::Stale)));
    assert_eq!(keeper.get(kept).unwrap(), b"held by a client that stays");
}

#[test]
fn without_a_kept_state_clients_stay_disconnected() {
    let mut daemon = Daemon::start(&[]);
    let client = daemon.client();
    let h = client.insert(b"lost with its daemon", DETACHED).unwrap();
    daemon.signal(Signal::TERM);
    daemon.restart(&[]);
    std::thread::sleep(Duration::from_millis(300));
    assert!(client.is_disconnected(), "sticky");
    assert!(matches!(client.get(h), Err(Error::Disconnected)));
    let fresh = daemon.client();
    assert!(matches!(fresh.get(h), Err(Error::Stale)), "a new instance");
}

#[test]
fn an_unusable_state_is_set_aside_whole_and_the_daemon_starts_empty() {
    let (mut daemon, args) = kept_daemon("5");
    let client = daemon.client();
    let h = client
        .insert(b"in a state that will be damaged", DETACHED)
        .unwrap();
    drop(client);
    daemon.signal(Signal::TERM);
    let _ = daemon.child.wait();
    let state = std::path::PathBuf::from(&args[1]);
    // A slot chunk goes missing.
    let slot_chunk = std::fs::read_dir(&state)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.file_name().unwrap().to_string_lossy().ends_with("-s0"))
        .expect("a slot chunk");
    std::fs::remove_file(&slot_chunk).unwrap();
    let check = std::process::Command::new(hreg_tests::binary("hregd"))
        .args([
            "--socket",
            "/nonexistent/x.sock",
            "--check-state",
            "--state-dir",
        ])
        .arg(&state)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&check.stdout).into_owned();
    assert_eq!(check.status.code(), Some(1), "{said}");
    assert!(said.contains("missing"), "{said}");
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    daemon.restart(&refs);
    let client = daemon.client();
    assert!(matches!(client.get(h), Err(Error::Stale)));
    assert_eq!(client.stats().unwrap().objects, 0);
    let aside: Vec<_> = std::fs::read_dir(&state)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    assert_eq!(aside.len(), 1, "set aside, not deleted");
    assert!(std::fs::read_dir(&aside[0]).unwrap().count() > 2);
}

#[test]
fn values_borrowed_before_the_restart_keep_their_bytes_while_their_blocks_are_reused() {
    let (mut daemon, args) = kept_daemon("20");
    let holder = daemon.client();
    let removed_before = value(300_000, 7);
    let h = holder.insert(&removed_before, DETACHED).unwrap();
    let borrowed_before = holder.get_ref(h).unwrap();
    holder.remove(h).unwrap();
    let removed_after = value(200_000, 9);
    let live = holder.insert(&removed_after, DETACHED).unwrap();
    let borrowed_after = holder.get_ref(live).unwrap();
    let _ = restart(&mut daemon, Signal::TERM, &args);
    // While the holder is still away another client removes the second
    // value and writes: no block the holder borrowed may be reused (the
    // first was free when the state was adopted, the second is freed
    // after; the daemon sees neither pin until the holder is back).
    let other = daemon.client();
    other.remove(live).unwrap();
    let overwrite = vec![0xee; 300_000];
    for _ in 0..4 {
        other.insert(&overwrite, DETACHED).unwrap();
    }
    let intact = |what: &str| {
        assert!(
            *borrowed_before == removed_before[..],
            "{what}: removed before"
        );
        assert!(
            *borrowed_after == removed_after[..],
            "{what}: removed after"
        );
    };
    intact("before the holder came back");
    wait_resumed(&holder);
    for _ in 0..4 {
        other.insert(&overwrite, DETACHED).unwrap();
    }
    intact("after the holder came back");
    drop((borrowed_before, borrowed_after));
    // Unpinned, the blocks are reused at last: the heap does not grow
    // without bound.
    wait_until("the borrowed blocks to be reclaimed", || {
        other.usage().unwrap().reclaim_pending == 0
    });
}
