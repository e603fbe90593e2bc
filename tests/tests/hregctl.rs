//! hregctl against a real daemon: two processes sharing a handle through the
//! command line, handles in decimal and hex, flags before or after the
//! command, errors on stderr with a non-zero exit.

use hreg_tests::{binary, Daemon};
use std::io::Write;
use std::process::{Command, Output, Stdio};

fn hregctl(args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut child = Command::new(binary("hregctl"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    if let Some(bytes) = stdin {
        input.write_all(bytes).unwrap();
    }
    drop(input);
    child.wait_with_output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).trim().to_string()
}

#[test]
fn put_get_rm_across_processes() {
    let daemon = Daemon::start(&[]);
    let socket = daemon.socket.to_str().unwrap();
    let put = hregctl(&["--socket", socket, "put", "hello world"], None);
    assert!(put.status.success(), "{}", text(&put.stderr));
    let handle: u64 = text(&put.stdout)
        .parse()
        .expect("put prints only the handle");

    // The putting process has exited; the object is DETACHED and lives on.
    let get = hregctl(&["get", &handle.to_string(), "--socket", socket], None);
    assert!(get.status.success(), "{}", text(&get.stderr));
    assert_eq!(get.stdout, b"hello world");

    let hex = format!("{handle:#x}");
    let get = hregctl(&["get", &hex, "--socket", socket], None);
    assert_eq!(get.stdout, b"hello world");

    let rm = hregctl(&["--socket", socket, "rm", &hex], None);
    assert!(rm.status.success(), "{}", text(&rm.stderr));
    let gone = hregctl(&["--socket", socket, "get", &handle.to_string()], None);
    assert!(!gone.status.success());
    assert!(gone.stdout.is_empty());
    assert!(
        text(&gone.stderr).contains("stale"),
        "{}",
        text(&gone.stderr)
    );
}

#[test]
fn put_reads_stdin_and_stats_speaks_json() {
    let daemon = Daemon::start(&[]);
    let socket = daemon.socket.to_str().unwrap();
    let binary_value: Vec<u8> = (0..=255u8).collect();
    let put = hregctl(&["--socket", socket, "put"], Some(&binary_value));
    assert!(put.status.success(), "{}", text(&put.stderr));
    let handle = text(&put.stdout);
    let get = hregctl(&["--socket", socket, "get", &handle], None);
    assert_eq!(get.stdout, binary_value);

    let stats = hregctl(&["stats", "--json", "--socket", socket], None);
    assert!(stats.status.success(), "{}", text(&stats.stderr));
    let json = text(&stats.stdout);
    assert!(
        json.contains("\"objects\": 1") || json.contains("\"objects\":1"),
        "{json}"
    );
}

#[test]
fn errors_go_to_stderr_with_a_nonzero_exit() {
    let daemon = Daemon::start(&[]);
    let socket = daemon.socket.to_str().unwrap();
    let bad = hregctl(&["--socket", socket, "get", "not-a-handle"], None);
    assert!(!bad.status.success());
    assert!(bad.stdout.is_empty());
    assert!(!bad.stderr.is_empty());
    let nowhere = hregctl(&["--socket", "/nonexistent/hreg.sock", "stats"], None);
    assert!(!nowhere.status.success());
    assert!(
        text(&nowhere.stderr).contains("/nonexistent/hreg.sock"),
        "{}",
        text(&nowhere.stderr)
    );
}
