//! QUOTA names the limit (issue 14): a real hregd with tight limits refuses
//! an insert through the ring, a value in pieces and a HELLO, and both the
//! Rust client's error and the daemon's log say which limit would have been
//! passed.

use hreg::{Client, Error, Limit};
use hreg_tests::{wait_until, Daemon};
use std::process::Stdio;

/// The limit a QUOTA error names, and its text; panics on anything else.
fn quota(result: Result<impl std::fmt::Debug, Error>) -> (Option<Limit>, String) {
    match result {
        Err(error @ Error::Quota { limit, .. }) => (limit, error.to_string()),
        other => panic!("expected QUOTA, got {other:?}"),
    }
}

/// hregd with `args`, logging warnings to a file the test reads.
fn logging_daemon(args: &[&str]) -> (Daemon, tempfile::NamedTempFile) {
    let log = tempfile::NamedTempFile::new().expect("log file");
    let stderr = log.reopen().expect("reopen the log");
    let daemon = Daemon::start_with(args, |command| {
        command.env("RUST_LOG", "warn").stderr(Stdio::from(stderr));
    });
    (daemon, log)
}

fn log_text(log: &tempfile::NamedTempFile) -> String {
    std::fs::read_to_string(log.path()).expect("read the daemon's log")
}

#[test]
fn ring_refusals_name_the_limit_in_the_error_and_the_log() {
    let (daemon, log) = logging_daemon(&["--max-objects", "3", "--uid-max-bytes", "100000"]);
    let client = daemon.client();
    let kept: Vec<_> = (0..3u8)
        .map(|i| client.insert(&[i], 0).expect("under the limit"))
        .collect();

    let (limit, text) = quota(client.insert(b"fourth", 0));
    assert_eq!(limit, Some(Limit::MaxObjects));
    assert!(text.contains("max_objects"), "{text}");
    // A batch's op says the same.
    let mut ops = [hreg::Op::Insert {
        value: b"in a batch",
        flags: 0,
    }];
    let results = client.submit(&mut ops).expect("the batch runs");
    assert_eq!(
        quota(results.into_iter().next().unwrap()).0,
        Some(Limit::MaxObjects)
    );

    // Bytes: a replace that grows past the uid's bytes, then a value too
    // large for the ring's data area (256 KiB), which travels in pieces
    // through the staging buffer (charged to the uid as it grows).
    let (limit, text) = quota(client.replace(kept[0], &vec![1u8; 100_001]));
    assert_eq!(limit, Some(Limit::UidMaxBytes));
    assert!(text.contains("uid_max_bytes"), "{text}");
    client.remove(kept[1]).unwrap();
    let (limit, _) = quota(client.insert(&vec![2u8; 300_000], 0));
    assert_eq!(limit, Some(Limit::UidMaxBytes));
    // Nothing refused was kept: the room left is all there.
    let fits = client
        .insert(&vec![3u8; 99_000], 0)
        .expect("fits the uid's bytes");
    assert_eq!(client.get(fits).unwrap().len(), 99_000);

    wait_until("the daemon to log both limits", || {
        let text = log_text(&log);
        let hits: Vec<&str> = text.lines().filter(|l| l.contains("quota hit")).collect();
        hits.iter().any(|l| l.contains("max_objects"))
            && hits.iter().any(|l| l.contains("uid_max_bytes"))
    });
}

#[test]
fn a_refused_hello_names_the_session_cap() {
    let (daemon, log) = logging_daemon(&["--max-sessions", "1"]);
    // The readiness probe's session may still be closing: retry a little.
    let mut first = None;
    wait_until("the one session to attach", || {
        first = Client::connect(&daemon.socket).ok();
        first.is_some()
    });
    let (limit, text) = quota(Client::connect(&daemon.socket));
    assert_eq!(limit, Some(Limit::MaxSessions));
    assert!(text.contains("max_sessions"), "{text}");
    assert!(
        text.contains("1 sessions attached"),
        "the daemon's own text: {text}"
    );
    wait_until("the daemon to log the refusal", || {
        log_text(&log)
            .lines()
            .any(|l| l.contains("refused attach") && l.contains("max_sessions"))
    });
    drop(first);
}
