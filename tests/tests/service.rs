//! hregd as a service, piece by piece (systemd is not PID 1 here): the units
//! verify, socket activation serves a real client, the notify protocol says
//! READY then STOPPING, and SIGTERM ends everything cleanly and quickly.

use hreg::Error;
use hreg_tests::{binary, wait_until, Daemon, PATIENCE};
use rustix::process::Signal;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn have(tool: &str) -> bool {
    let found = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    hreg_tests::required_in_ci(tool, found)
}

#[test]
fn units_pass_systemd_analyze_verify() {
    if !have("systemd-analyze") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let dist = Path::new(env!("CARGO_MANIFEST_DIR")).join("../dist");
    let socket_unit = std::fs::read_to_string(dist.join("hregd.socket")).unwrap();
    let service = std::fs::read_to_string(dist.join("hregd.service")).unwrap();
    assert!(service.contains("ExecStart=/usr/local/bin/hregd"));
    let service = service.replace("/usr/local/bin/hregd", binary("hregd").to_str().unwrap());
    std::fs::write(dir.path().join("hregd.socket"), socket_unit).unwrap();
    std::fs::write(dir.path().join("hregd.service"), &service).unwrap();
    let out = Command::new("systemd-analyze")
        .args(["verify", "hregd.socket", "hregd.service"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "systemd-analyze verify failed:\n{stderr}"
    );
    // FileDescriptorStorePreserve= came with systemd 254; older ones ignore
    // it, with a warning (and keep no state for hregd: they set no $FDSTORE).
    let before_254 = systemd_version() < Some(254);
    let warnings: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("hregd."))
        .filter(|l| !(before_254 && l.contains("Unknown key 'FileDescriptorStorePreserve'")))
        .collect();
    assert!(warnings.is_empty(), "warnings about our units:\n{stderr}");
    assert!(service.contains("FileDescriptorStoreMax=16384"));
    assert!(service.contains("FileDescriptorStorePreserve=restart"));
    assert!(
        !service.contains("--state-dir"),
        "under systemd the state is kept in its descriptor store"
    );
}

/// The version `systemd-analyze --version` reports (`systemd 252 (...)`).
fn systemd_version() -> Option<u32> {
    let out = Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

#[test]
fn socket_activation_serves_a_real_client() {
    if !have("systemd-socket-activate") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("activated.sock");
    let mut activator = Command::new("systemd-socket-activate")
        .args(["--seqpacket", "-l"])
        .arg(&socket)
        .arg(binary("hregd"))
        .arg("--socket")
        .arg(dir.path().join("unused.sock"))
        .env("RUST_LOG", "warn")
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_until("the activation socket", || socket.exists());
    let client = hreg::Client::connect(&socket).expect("attach through the activated socket");
    let h = client.insert(b"activated", 0).unwrap();
    assert_eq!(client.get(h).unwrap(), b"activated");
    assert!(
        !dir.path().join("unused.sock").exists(),
        "hregd bound its own socket despite activation"
    );
    let _ = activator.kill();
    let _ = activator.wait();
}

/// Reads notify datagrams until one has the line `wanted`.
fn expect_notify(listener: &UnixDatagram, wanted: &str) {
    let line = expect_notify_prefix(listener, wanted);
    assert_eq!(line, wanted);
}

/// Reads notify datagrams until a line starts with `prefix`; returns it.
fn expect_notify_prefix(listener: &UnixDatagram, prefix: &str) -> String {
    let start = Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        assert!(start.elapsed() < PATIENCE, "no {prefix}… on NOTIFY_SOCKET");
        if let Ok(n) = listener.recv(&mut buf) {
            let text = String::from_utf8_lossy(&buf[..n]).to_string();
            if let Some(line) = text.lines().find(|l| l.starts_with(prefix)) {
                return line.to_string();
            }
        }
    }
}

#[test]
fn notify_socket_hears_ready_then_stopping_and_sigterm_is_clean() {
    let dir = tempfile::tempdir().unwrap();
    let notify_path = dir.path().join("notify");
    let listener = UnixDatagram::bind(&notify_path).unwrap();
    listener
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let socket = dir.path().join("hreg.sock");
    let mut daemon = Command::new(binary("hregd"))
        .arg("--socket")
        .arg(&socket)
        .env("NOTIFY_SOCKET", &notify_path)
        .env("WATCHDOG_USEC", "400000")
        .env("RUST_LOG", "warn")
        .spawn()
        .unwrap();
    expect_notify(&listener, "READY=1");
    let status = expect_notify_prefix(&listener, "STATUS=");
    assert!(
        status.contains("sessions") && status.contains("objects"),
        "{status}"
    );
    expect_notify(&listener, "WATCHDOG=1");
    let client = hreg::Client::connect(&socket).unwrap();
    let h = client.insert(b"x", 0).unwrap();

    let pid = rustix::process::Pid::from_raw(daemon.id() as i32).unwrap();
    let stopped = Instant::now();
    rustix::process::kill_process(pid, Signal::TERM).unwrap();
    expect_notify(&listener, "STOPPING=1");
    let status = loop {
        if let Some(status) = daemon.try_wait().unwrap() {
            break status;
        }
        assert!(
            stopped.elapsed() < PATIENCE,
            "hregd did not exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(status.success(), "{status}");
    assert!(
        stopped.elapsed() < Duration::from_secs(2),
        "took {:?}",
        stopped.elapsed()
    );
    assert!(!socket.exists(), "socket file left behind");
    assert!(matches!(client.get(h), Err(Error::Disconnected)));
}

#[test]
fn sigint_also_stops_the_daemon() {
    let mut daemon = Daemon::start(&[]);
    daemon.signal(Signal::INT);
    wait_until("hregd to exit on SIGINT", || !daemon.is_running());
    assert!(!daemon.socket.exists());
}
