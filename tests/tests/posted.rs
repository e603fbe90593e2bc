//! Posted writes (issue 19): an insert returns without waiting for the
//! daemon, into a handle granted ahead, and still keeps every promise of a
//! synchronous one. Real daemons, real processes:
//!
//! - handoff: each handle, written to another process (another uid) the
//!   moment its insert returned, resolves there at once to its bytes;
//! - death: a client SIGKILLed right after its last insert returned loses
//!   none of them;
//! - quota: inserts up to `--uid-max-objects` all resolve, the next is
//!   QUOTA, and after k releases k inserts succeed;
//! - flush: after a release of the last reference and a flush, another
//!   client's get is STALE; read-your-writes from every thread.

use hreg::{Error, Handle, Limit, DETACHED, SHARED};
use hreg_tests::{numbered, Daemon, Helper};
use std::io::Write;

/// A uid other than the test's (root's).
const OTHER_UID: u32 = 4242;

/// `key=N` of a helper's report line.
fn field(line: &str, key: &str) -> u64 {
    line.split_whitespace()
        .find_map(|word| word.strip_prefix(key)?.strip_prefix('='))
        .unwrap_or_else(|| panic!("no {key} in {line:?}"))
        .parse()
        .unwrap()
}

#[test]
fn a_handle_handed_over_at_once_resolves_in_another_process() {
    const N: u64 = 100_000;
    let daemon = Daemon::start_reachable(&[]);
    assert!(
        rustix::process::geteuid().is_root(),
        "this test runs as root (CI does): the reader runs as another uid"
    );
    let mut reader = Helper::spawn_program(
        "hreg-test-client",
        &daemon.socket,
        &["get-each"],
        Some(OTHER_UID),
    );
    let client = daemon.client();
    {
        let stdin = reader.child.stdin.as_mut().expect("piped stdin");
        for i in 0..N {
            let h = client.insert(&numbered(i), SHARED).expect("insert");
            writeln!(stdin, "{h} {i}").expect("hand the handle over");
            stdin.flush().expect("at once");
        }
    }
    reader.close_input();
    let report = reader.line();
    assert_eq!(field(&report, "ok"), N, "{report}");
    assert_eq!(field(&report, "stale"), 0, "{report}");
    assert_eq!(field(&report, "wrong"), 0, "{report}");
    assert_eq!(field(&report, "other"), 0, "{report}");
    client.flush().expect("no late failure");
}

#[test]
fn inserts_of_a_client_killed_right_after_they_returned_are_all_applied() {
    const N: usize = 10_000;
    let daemon = Daemon::start(&[]);
    let mut child = Helper::spawn(
        &daemon.socket,
        &["insert-die", &N.to_string(), &DETACHED.to_string()],
    );
    let mut handed: Vec<(Handle, u64)> = Vec::with_capacity(N);
    loop {
        let line = child.line();
        if line.is_empty() {
            break;
        }
        let (handle, index) = line.split_once(' ').expect("HANDLE INDEX");
        handed.push((handle.parse().unwrap(), index.parse().unwrap()));
    }
    let status = child.child.wait().unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(libc::SIGKILL), "it killed itself");
    assert_eq!(handed.len(), N, "every insert returned before the kill");
    let client = daemon.client();
    for &(handle, index) in &handed {
        match client.get(handle) {
            Ok(value) => assert_eq!(value, numbered(index), "handle {handle}"),
            Err(e) => panic!("handle {handle} (insert {index}): {e}"),
        }
    }
    assert_eq!(
        daemon.objects(),
        N as u64,
        "DETACHED: they outlive their client"
    );
}

#[test]
fn inserts_up_to_the_quota_all_resolve_and_releases_make_room() {
    const CAP: usize = 300;
    const K: usize = 37;
    let daemon = Daemon::start(&["--uid-max-objects", &CAP.to_string()]);
    let client = daemon.client();
    let other = daemon.client();
    let mut made = Vec::new();
    let refused = loop {
        match client.insert(&numbered(made.len() as u64), 0) {
            Ok(h) => made.push(h),
            Err(e) => break e,
        }
        assert!(made.len() <= CAP, "past the cap");
    };
    assert!(
        matches!(
            refused,
            Error::Quota {
                limit: Some(Limit::UidMaxObjects),
                ..
            }
        ),
        "{refused:?}"
    );
    assert_eq!(made.len(), CAP);
    for (i, &h) in made.iter().enumerate() {
        assert_eq!(client.get(h).unwrap(), numbered(i as u64));
        // Private, but of the same uid: another session reads it too.
        assert_eq!(other.get(h).unwrap(), numbered(i as u64));
    }
    for &h in &made[..K] {
        client.release(h).unwrap();
    }
    for i in 0..K {
        let h = client
            .insert(&numbered(1_000_000 + i as u64), 0)
            .unwrap_or_else(|e| panic!("insert {i} of {K} after {K} releases: {e}"));
        assert_eq!(other.get(h).unwrap(), numbered(1_000_000 + i as u64));
    }
    assert!(matches!(
        client.insert(b"one too many", 0),
        Err(Error::Quota { .. })
    ));
    client.flush().expect("no late failure");
    assert_eq!(daemon.objects(), CAP as u64);
}

#[test]
fn a_flushed_release_of_the_last_reference_is_seen_by_others() {
    let daemon = Daemon::start(&[]);
    let client = daemon.client();
    let other = daemon.client();
    for round in 0..200u64 {
        let h = client.insert(&numbered(round), SHARED).unwrap();
        assert_eq!(other.get(h).unwrap(), numbered(round));
        client.release(h).unwrap();
        client.flush().unwrap();
        assert!(matches!(other.get(h), Err(Error::Stale)), "round {round}");
    }
    assert_eq!(daemon.objects(), 0);
}

#[test]
fn a_client_reads_its_own_inserts_from_any_thread_at_once() {
    let daemon = Daemon::start(&[]);
    let client = daemon.client();
    let (tx, rx) = std::sync::mpsc::channel::<(Handle, u64)>();
    let reader = {
        let client = client.clone();
        std::thread::spawn(move || {
            let mut seen = 0;
            for (h, i) in rx {
                assert_eq!(client.get(h).unwrap(), numbered(i), "handle {h}");
                seen += 1;
            }
            seen
        })
    };
    for i in 0..20_000u64 {
        let h = client.insert(&numbered(i), i as u32 & SHARED).unwrap();
        assert_eq!(client.get(h).unwrap(), numbered(i), "same thread");
        tx.send((h, i)).unwrap();
    }
    drop(tx);
    assert_eq!(reader.join().unwrap(), 20_000);
    client.flush().unwrap();
}

#[test]
fn an_insert_returns_while_the_daemon_is_stopped() {
    let daemon = Daemon::start(&[]);
    let client = daemon.client();
    let (warm_tx, warm_rx) = std::sync::mpsc::channel();
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    let (tx, rx) = std::sync::mpsc::channel();
    let inserting = {
        let client = client.clone();
        std::thread::spawn(move || {
            // The first insert of a kind on a thread opens its ring and
            // waits for handles ahead.
            warm_tx.send(client.insert(b"warm", 0).unwrap()).unwrap();
            go_rx.recv().unwrap();
            for i in 0..8u64 {
                tx.send(client.insert(&numbered(i), 0)).unwrap();
            }
        })
    };
    let first = warm_rx.recv().unwrap();
    daemon.signal(rustix::process::Signal::STOP);
    go_tx.send(()).unwrap();
    // Posted: each returns without the daemon (a synchronous insert would
    // wait for it until SIGCONT).
    let returned: Vec<_> = (0..8)
        .map(|_| rx.recv_timeout(std::time::Duration::from_secs(20)))
        .collect();
    daemon.signal(rustix::process::Signal::CONT);
    inserting.join().unwrap();
    for (i, h) in returned.into_iter().enumerate() {
        let h = h
            .expect("a posted insert returns without the daemon")
            .expect("insert");
        assert_eq!(client.get(h).unwrap(), numbered(i as u64));
    }
    assert_eq!(client.get(first).unwrap(), b"warm");
    client.flush().unwrap();
    assert_eq!(daemon.objects(), 9);
}

#[test]
fn a_handles_whole_life_returns_while_the_daemon_is_stopped() {
    let daemon = Daemon::start(&[]);
    let client = daemon.client();
    let (warm_tx, warm_rx) = std::sync::mpsc::channel();
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    let (tx, rx) = std::sync::mpsc::channel();
    let living = {
        let client = client.clone();
        std::thread::spawn(move || {
            // Opens this thread's ring and fills the pool of handles ahead.
            warm_tx.send(client.insert(b"warm", 0).unwrap()).unwrap();
            go_rx.recv().unwrap();
            for i in 0..8u64 {
                let life = client.insert(&numbered(i), 0).and_then(|h| {
                    // Read-your-writes from the client's copy, and a
                    // release posted behind the insert on its ring.
                    let value = client.get(h)?;
                    let mut buf = [0u8; 64];
                    let len = client.get_into(h, &mut buf)?;
                    assert_eq!(&buf[..len], &value[..]);
                    client.release(h)?;
                    Ok((h, value))
                });
                tx.send(life).unwrap();
            }
        })
    };
    let warm = warm_rx.recv().unwrap();
    daemon.signal(rustix::process::Signal::STOP);
    go_tx.send(()).unwrap();
    let lives: Vec<_> = (0..8)
        .map(|_| rx.recv_timeout(std::time::Duration::from_secs(20)))
        .collect();
    daemon.signal(rustix::process::Signal::CONT);
    living.join().unwrap();
    let mut handles = Vec::new();
    for (i, life) in lives.into_iter().enumerate() {
        let (h, value) = life
            .expect("insert, get and release return without the daemon")
            .expect("a handle's life");
        assert_eq!(value, numbered(i as u64));
        handles.push(h);
    }
    client.flush().unwrap();
    for h in handles {
        assert!(matches!(client.get(h), Err(Error::Stale)), "{h}: released");
    }
    assert_eq!(client.get(warm).unwrap(), b"warm");
    assert_eq!(daemon.objects(), 1);
}

/// Many threads living handles at full speed, each on its own ring and
/// then all on a small shared ring pool (as Go's goroutines are): a get
/// right after the insert returned never says STALE, though the insert may
/// be applied by one worker while the get is answered by the other. Before,
/// an op that found the slot reserved, and the insert applied meanwhile,
/// could come back STALE.
#[test]
fn lives_of_many_threads_never_see_their_own_insert_stale() {
    let daemon = Daemon::start(&[]);
    for pooled in [false, true] {
        let client = daemon.client();
        if pooled {
            assert!(client.use_ring_pool(2));
        }
        let threads: Vec<_> = (0..16u64)
            .map(|t| {
                let client = client.clone();
                std::thread::spawn(move || {
                    for i in 0..2_000u64 {
                        let value = numbered(t << 32 | i);
                        let h = client.insert(&value, 0).expect("insert");
                        assert_eq!(client.get(h).expect("a get right after"), value);
                        client.release(h).expect("release");
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        client.flush().unwrap();
        assert_eq!(daemon.objects(), 0, "pooled: {pooled}");
    }
}

/// A thread that gets each handle sent to it, checks its value and
/// releases it; ends when the sender is dropped.
fn taker(
    client: &hreg::Client,
) -> (
    std::sync::mpsc::SyncSender<(Handle, [u8; 16])>,
    std::thread::JoinHandle<()>,
) {
    let (to_taker, handed) = std::sync::mpsc::sync_channel::<(Handle, [u8; 16])>(64);
    let client = client.clone();
    let taker = std::thread::spawn(move || {
        for (h, value) in handed {
            assert_eq!(client.get(h).expect("a handed-over handle"), value);
            client.release(h).expect("the taker's release");
        }
    });
    (to_taker, taker)
}

/// A handle retained on one thread's ring and released on another's (it
/// was handed over, or a Go goroutine moved rings): the daemon applies two
/// rings in any order, so the release must follow the retain on the
/// handle's ring, never overtake it and kill the object while the client
/// counts a reference. Before, about one handoff in a hundred came back as
/// a late STALE at the flush, its object dead early.
#[test]
fn a_release_on_another_thread_never_overtakes_the_retain_it_follows() {
    const HANDOFFS: u64 = 20_000;
    let daemon = Daemon::start(&[]);
    for pooled in [false, true] {
        let client = daemon.client();
        if pooled {
            assert!(client.use_ring_pool(2));
        }
        let (to_taker, taker) = taker(&client);
        for i in 0..HANDOFFS {
            let value = numbered(i);
            let h = client.insert(&value, 0).expect("insert");
            if i % 2 == 0 {
                // The insert applied: the retain below may go on any ring.
                client.flush().expect("flush");
            }
            client.retain(h).expect("retain for the taker");
            to_taker.send((h, value)).unwrap();
            client.release(h).expect("the giver's release");
        }
        drop(to_taker);
        taker.join().unwrap();
        client
            .flush()
            .expect("no late failure: every retain came before its release");
        assert_eq!(daemon.objects(), 0, "pooled: {pooled}");
    }
}

/// Threads that retain a handle, hand it over and exit at once: their
/// rings go with them (RING_CLOSE), and the taker's release must still
/// come after everything they posted. A release that finds the handle's
/// ring gone while its drop is still applying what it holds waits for
/// that; before, it went on its own ring at once, and about one handoff
/// in a hundred came back as a late INVALID (a release of a handle whose
/// posted insert was not applied yet gives the handle back) and STALE.
#[test]
fn handles_retained_by_threads_that_exit_at_once_keep_their_counts() {
    let daemon = Daemon::start(&[]);
    let client = daemon.client();
    let (to_taker, taker) = taker(&client);
    for t in 0..200u64 {
        let client = client.clone();
        let to_taker = to_taker.clone();
        std::thread::spawn(move || {
            for i in 0..20u64 {
                let value = numbered(t << 32 | i);
                let h = client.insert(&value, 0).expect("insert");
                client.retain(h).expect("retain for the taker");
                client.release(h).expect("the giver's release");
                to_taker.send((h, value)).unwrap();
            }
            // The thread exits with its last writes posted.
        })
        .join()
        .unwrap();
    }
    drop(to_taker);
    taker.join().unwrap();
    client
        .flush()
        .expect("no late failure: every retain came before its release");
    assert_eq!(daemon.objects(), 0);
}
