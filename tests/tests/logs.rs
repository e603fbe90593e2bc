//! Where a real hregd's logs go: plain lines without escape bytes when
//! stderr is a file (also when `$JOURNAL_STREAM` names something else),
//! colour on a terminal, and, when `$JOURNAL_STREAM` names stderr, native
//! journal entries whose fields are the event's (`SESSION`, `PID`, `UID`,
//! `NAME`, `REASON`), falling back to plain lines without a journal.
//!
//! tracing-journald writes to the fixed path `/run/systemd/journal/socket`,
//! so the journal tests run hregd in a private mount namespace (`unshare
//! --mount`, root only) where `/run` is a directory of the test's holding a
//! datagram socket the test reads: a stand-in for journald's socket only,
//! the daemon and its logging are the real ones.

use hreg_tests::{binary, wait_until, PATIENCE};
use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Instant;

/// Runs hregd (with `flags`, `$RUST_LOG=info`) with stderr on `stderr`
/// until a client has attached and detached, then stops it with SIGTERM.
/// `journal_dir`: run it in a private mount namespace with that directory
/// as `/run`.
fn run_hregd(stderr: Stdio, flags: &[&str], env: &[(&str, String)], journal_dir: Option<&Path>) {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("hreg.sock");
    let mut command = match journal_dir {
        Some(run) => {
            let mut c = Command::new("unshare");
            c.args([
                "--mount",
                "sh",
                "-c",
                r#"mount --bind "$0" /run && exec "$@""#,
            ])
            .arg(run)
            .arg(binary("hregd"));
            c
        }
        None => Command::new(binary("hregd")),
    };
    command
        .arg("--socket")
        .arg(&socket)
        .args(flags)
        .env("RUST_LOG", "info")
        .env_remove("JOURNAL_STREAM")
        .env_remove("NO_COLOR")
        .envs(env.iter().map(|(k, v)| (*k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr);
    let mut daemon = command.spawn().expect("spawn hregd");
    // The socket file exists from bind(), a moment before listen(): wait
    // for an attach, not for the file.
    let mut client = None;
    wait_until("hregd to accept connections", || {
        assert!(daemon.try_wait().unwrap().is_none(), "hregd exited early");
        client = hreg::Client::connect_named(Some(&socket), "log-probe").ok();
        client.is_some()
    });
    drop(client);
    stop(&mut daemon);
}

fn stop(daemon: &mut Child) {
    let pid = rustix::process::Pid::from_raw(daemon.id() as i32).unwrap();
    // Let the detach be logged before the signal.
    std::thread::sleep(std::time::Duration::from_millis(100));
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    let start = Instant::now();
    while daemon.try_wait().unwrap().is_none() {
        assert!(start.elapsed() < PATIENCE, "hregd did not stop");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// `DEVICE:INODE` of a file, as systemd writes `$JOURNAL_STREAM`.
fn stream_id(path: &Path) -> String {
    let meta = std::fs::metadata(path).unwrap();
    format!("{}:{}", meta.dev(), meta.ino())
}

#[test]
fn logs_to_a_file_are_plain_lines_without_escapes() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("stderr");
    let other = dir.path().join("other");
    File::create(&other).unwrap();
    // Without JOURNAL_STREAM, and with one that names another file (what a
    // child of a service inherits after redirecting its stderr).
    for env in [vec![], vec![("JOURNAL_STREAM", stream_id(&other))]] {
        run_hregd(Stdio::from(File::create(&log).unwrap()), &[], &env, None);
        let text = std::fs::read(&log).unwrap();
        let lines = String::from_utf8_lossy(&text);
        assert!(!text.contains(&0x1b), "escape bytes in a file:\n{lines}");
        assert!(lines.contains("session attached"), "{lines}");
        assert!(lines.contains("name=log-probe"), "{lines}");
        assert!(lines.contains("reason=\"goodbye\""), "{lines}");
    }
    // --log-level still filters, over $RUST_LOG.
    run_hregd(
        Stdio::from(File::create(&log).unwrap()),
        &["--log-level", "warn"],
        &[],
        None,
    );
    let lines = std::fs::read_to_string(&log).unwrap();
    assert!(!lines.contains("session attached"), "{lines}");
}

#[test]
fn logs_on_a_terminal_are_coloured() {
    let (master, slave) = open_pty();
    run_hregd(Stdio::from(slave), &[], &[], None);
    let text = read_pty(master);
    assert!(
        String::from_utf8_lossy(&text).contains("session attached"),
        "{}",
        String::from_utf8_lossy(&text)
    );
    assert!(text.windows(2).any(|w| w == b"\x1b["), "no colour on a tty");
}

/// A pseudo-terminal: (master, slave).
fn open_pty() -> (File, File) {
    use std::os::fd::FromRawFd;
    // SAFETY: plain libc calls on a descriptor this function owns; ptsname
    // is read at once, before any other pty call in this thread.
    unsafe {
        let master = libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC);
        assert!(master >= 0, "posix_openpt");
        assert_eq!(libc::grantpt(master), 0);
        assert_eq!(libc::unlockpt(master), 0);
        let mut name = [0 as libc::c_char; 128];
        assert_eq!(libc::ptsname_r(master, name.as_mut_ptr(), name.len()), 0);
        let path = std::ffi::CStr::from_ptr(name.as_ptr()).to_str().unwrap();
        let slave = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .unwrap();
        (File::from_raw_fd(master), slave)
    }
}

/// Everything written to the pty so far (the writer has exited).
fn read_pty(master: File) -> Vec<u8> {
    use std::io::Read;
    rustix::io::ioctl_fionbio(&master, true).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let mut master = master;
    // EIO once the slave side is closed and drained; WouldBlock when empty.
    while let Ok(n) = master.read(&mut buf) {
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    out
}

/// Whether hregd can be run in a private mount namespace here (root with
/// `unshare`); required in CI.
fn can_unshare() -> bool {
    let ok = Command::new("unshare")
        .args(["--mount", "true"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    hreg_tests::required_in_ci("`unshare --mount` (root)", ok)
}

/// One journal entry: field name to value.
type Entry = HashMap<String, String>;

/// Parses a datagram of the journal's native protocol: fields as
/// `NAME=value\n`, or `NAME\n` + little-endian u64 length + value + `\n`.
fn parse_entry(mut bytes: &[u8]) -> Entry {
    let mut entry = Entry::new();
    while !bytes.is_empty() {
        let line_end = bytes.iter().position(|&b| b == b'\n').expect("field end");
        let line = &bytes[..line_end];
        if let Some(eq) = line.iter().position(|&b| b == b'=') {
            let name = String::from_utf8(line[..eq].to_vec()).unwrap();
            entry.insert(name, String::from_utf8_lossy(&line[eq + 1..]).into());
            bytes = &bytes[line_end + 1..];
        } else {
            let name = String::from_utf8(line.to_vec()).unwrap();
            let rest = &bytes[line_end + 1..];
            let len = u64::from_le_bytes(rest[..8].try_into().unwrap()) as usize;
            let value = &rest[8..8 + len];
            assert_eq!(rest[8 + len], b'\n', "field {name} not terminated");
            entry.insert(name, String::from_utf8_lossy(value).into());
            bytes = &rest[9 + len..];
        }
    }
    entry
}

#[test]
fn under_journal_stream_entries_go_to_the_journal_with_fields() {
    if !can_unshare() {
        return;
    }
    let run = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(run.path().join("systemd/journal")).unwrap();
    let journal = UnixDatagram::bind(run.path().join("systemd/journal/socket")).unwrap();
    journal.set_nonblocking(true).unwrap();
    let log = run.path().join("stderr");
    let stderr = File::create(&log).unwrap();
    let env = [("JOURNAL_STREAM", stream_id(&log))];
    run_hregd(Stdio::from(stderr), &[], &env, Some(run.path()));

    let mut entries = Vec::new();
    let mut buf = vec![0u8; 65536];
    while let Ok(n) = journal.recv(&mut buf) {
        if n > 0 {
            entries.push(parse_entry(&buf[..n]));
        }
    }
    let find = |message: &str| {
        entries
            .iter()
            .find(|e| e.get("MESSAGE").map(String::as_str) == Some(message))
            .unwrap_or_else(|| panic!("no {message:?} entry in {entries:#?}"))
    };
    let attached = find("session attached");
    assert_eq!(attached["SYSLOG_IDENTIFIER"], "hregd");
    assert_eq!(attached["NAME"], "log-probe");
    assert_eq!(attached["PID"], std::process::id().to_string());
    assert_eq!(
        attached["UID"],
        rustix::process::getuid().as_raw().to_string()
    );
    assert_eq!(
        attached["PRIORITY"], "5",
        "info is NOTICE by tracing-journald's map"
    );
    let session: u64 = attached["SESSION"].parse().expect("SESSION is the id");
    let detached = find("session detached");
    assert_eq!(detached["SESSION"], session.to_string());
    assert_eq!(detached["REASON"], "goodbye");
    assert!(find("hregd serving").contains_key("SOCKET"));
    // Fields are not prefixed (tracing-journald's default would be F_).
    assert!(entries
        .iter()
        .all(|e| e.keys().all(|k| !k.starts_with("F_"))));
    // Nothing went to stderr as well.
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(!text.contains("session attached"), "{text}");
}

#[test]
fn without_a_journal_socket_it_falls_back_to_plain_lines() {
    if !can_unshare() {
        return;
    }
    // A /run with no journal in it.
    let run = tempfile::tempdir().unwrap();
    let log = run.path().join("stderr");
    let stderr = File::create(&log).unwrap();
    let env = [("JOURNAL_STREAM", stream_id(&log))];
    run_hregd(Stdio::from(stderr), &[], &env, Some(run.path()));
    let text = std::fs::read(&log).unwrap();
    let lines = String::from_utf8_lossy(&text);
    assert!(!text.contains(&0x1b), "escape bytes:\n{lines}");
    assert!(
        lines.contains("journal socket cannot be reached"),
        "{lines}"
    );
    assert!(lines.contains("session attached"), "{lines}");
}
