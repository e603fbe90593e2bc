//! Admission under a crowd (issue 14, item 1): a burst of a thousand
//! attaches from one uid is served in full, and thousands of silent
//! connections of one uid, past its parked cap, keep no other uid out.
//! The per-uid session cap with a hog holding sessions and 2000 silent
//! connections is hole 9's test in `holes.rs`; the timed burst of real
//! processes is the bench's `--burst`.
//!
//! Both need root (root is exempt from the per-uid shares; other uids need
//! root to switch to); outside CI they say so and return.

use hreg_tests::attacks::Held;
use hreg_tests::{
    checked_value, is_root, raise_fd_limit, required_in_ci, serve_time, Daemon, Helper, NOBODY,
    OTHER_USER, PATIENCE,
};
use std::sync::Barrier;

/// Attaches in the burst, under the default `max_sessions` (1024).
const BURST: usize = 1000;

/// A thousand clients attach at once, each inserts and reads back a value,
/// and all keep their sessions: every one is served (none refused or
/// dropped for waiting its turn) and the daemon holds them all.
///
/// Threads of this process, released by a barrier, rather than 1000
/// processes: the daemon sees the same thing (1000 connections of one uid
/// at once), while spawning 1000 debug processes takes about 4 s on a
/// 2-core machine, so they would trickle in rather than arrive at once
/// (and use 300 MiB). The bench's `--burst 1000` is the process version.
#[test]
fn a_burst_of_1000_attaches_from_one_uid_is_served_in_full() {
    if !required_in_ci("root (exempt from the per-uid shares)", is_root()) {
        return;
    }
    // A socket and a doorbell per client in this process.
    raise_fd_limit(4 * BURST as u64);
    let daemon = Daemon::start(&[]);
    let barrier = Barrier::new(BURST);
    let outcomes: Vec<Result<hreg::Client, String>> = std::thread::scope(|scope| {
        let threads: Vec<_> = (0..BURST)
            .map(|i| {
                let (barrier, socket) = (&barrier, &daemon.socket);
                scope.spawn(move || {
                    barrier.wait();
                    let client =
                        hreg::Client::connect(socket).map_err(|e| format!("attach: {e}"))?;
                    let value = checked_value(2 * i as u64, 24);
                    let handle = client
                        .insert(&value, 0)
                        .map_err(|e| format!("insert: {e}"))?;
                    match client.get(handle) {
                        Ok(read) if read == value => Ok(client),
                        Ok(read) => Err(format!("wrong value: {read:?}")),
                        Err(e) => Err(format!("get: {e}")),
                    }
                })
            })
            .collect();
        threads
            .into_iter()
            .map(|t| t.join().expect("a burst thread panicked"))
            .collect()
    });
    let failures: Vec<&String> = outcomes.iter().filter_map(|o| o.as_ref().err()).collect();
    assert!(
        failures.is_empty(),
        "{} of {BURST} attaches failed, e.g. {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    let sessions = daemon.client().stats().unwrap().sessions;
    assert_eq!(sessions, BURST as u64 + 1, "the burst and the asker");
}

/// Silent connections held by uid A, beyond what the daemon reads at once
/// and beyond its parked cap.
const SILENT: usize = 5000;
/// Clients of uid B, more than a uid's share read at once (32).
const OTHERS: usize = 40;

/// Uid A holds 5000 connections that never say HELLO: the daemon keeps
/// thousands of them parked, refuses A's oldest past its parked cap with
/// QUOTA naming the limit, and meanwhile 40 clients of uid B and a root
/// client attach and are served.
#[test]
fn thousands_of_silent_connections_of_one_uid_keep_no_other_uid_out() {
    if !required_in_ci("root (to run clients as two other uids)", is_root()) {
        return;
    }
    let daemon = Daemon::start_reachable(&[]);
    let silent = SILENT.to_string();
    let mut holder = Helper::spawn_program(
        "hreg-attack",
        &daemon.socket,
        &["silent", &silent],
        Some(NOBODY),
    );
    assert_eq!(holder.line(), format!("ready silent={SILENT}"));

    let mut others: Vec<Helper> = (0..OTHERS)
        .map(|i| {
            Helper::spawn_program(
                "hreg-test-client",
                &daemon.socket,
                &["insert", &format!("uid B, client {i}")],
                Some(OTHER_USER),
            )
        })
        .collect();
    for (i, other) in others.iter_mut().enumerate() {
        let line = other.line();
        assert!(
            line.parse::<u64>().is_ok(),
            "uid B's client {i} got {line:?}"
        );
    }
    assert!(
        serve_time(&daemon.socket, PATIENCE).is_some(),
        "root was not served"
    );
    for other in others {
        other.finish();
    }

    drop(holder.child.stdin.take());
    let line = holder.line();
    let held = Held::parse(&line).unwrap_or_else(|| panic!("the holder said {line:?}"));
    assert_eq!(
        held.open + held.quota + held.other_refusals + held.closed,
        SILENT,
        "{held:?}"
    );
    assert!(held.open > 4000, "thousands stay parked, unread: {held:?}");
    assert!(held.quota > 0, "none refused past the parked cap: {held:?}");
    assert!(
        held.quota_message.contains(&format!("uid {NOBODY}"))
            && held.quota_message.contains("waiting to attach"),
        "the refusal names neither the uid nor the limit: {held:?}"
    );
    assert_eq!(held.closed, 0, "closed without a word: {held:?}");
    holder.finish();
}
