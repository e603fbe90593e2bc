//! The C tests of libhreg: compiles the C programs in `tests/c/` and
//! `client-c/examples/` with the system `cc` against the freshly built
//! library, runs them against real `hregd` processes (and fake daemons for
//! VERSION and PROTOCOL), checks what they did from Rust with the `hreg`
//! crate, installs the library with `make install` and builds against the
//! installed copy through `pkg-config` (shared and static), and runs the C
//! tests under valgrind.
//!
//! Needs `target/debug/hregd`, which `cargo test --workspace` builds (run
//! `cargo build -p hregd` first when testing this package alone), and `cc`,
//! `make`, `pkg-config`; valgrind too when `CI` is set.

use hreg_rs::{Error, Handle, DETACHED, SHARED};
use hreg_tests::c_programs::{built_dir, c_tests_dir, client_c_dir, program};
use hreg_tests::{bin_dir, binary, wait_until, Daemon, PATIENCE};
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

/// Iterations per thread of `examples/threads.c` (8 threads), natively and
/// under valgrind.
const THREAD_ITERATIONS: u32 = 10_000;
const VALGRIND_THREAD_ITERATIONS: u32 = 200;

/// Exit status of a C test that cannot run here (e.g. not root).
const SKIPPED: i32 = 77;

fn c_test(name: &str) -> PathBuf {
    program(&c_tests_dir().join(format!("{name}.c")))
}

fn example(name: &str) -> PathBuf {
    program(&client_c_dir().join(format!("examples/{name}.c")))
}

/// Runs `cmd` to completion with a deadline, capturing its output.
fn run(cmd: &mut Command) -> Output {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    wait_output(child, PATIENCE * 9)
}

/// Waits for `child` and collects its output; kills it after `limit`.
fn wait_output(mut child: Child, limit: Duration) -> Output {
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut v = Vec::new();
        stdout.read_to_end(&mut v).map(|_| v)
    });
    let err = std::thread::spawn(move || {
        let mut v = Vec::new();
        stderr.read_to_end(&mut v).map(|_| v)
    });
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("a C test ran longer than {limit:?} and was killed");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Output {
        status,
        stdout: out.join().unwrap().unwrap_or_default(),
        stderr: err.join().unwrap().unwrap_or_default(),
    }
}

fn check_output(what: &str, output: Output) -> String {
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "{what} failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        output.status
    );
    print!("{stdout}");
    stdout
}

/// Runs a C program and expects success (or prints its skip note).
fn run_c(exe: &Path, args: &[&str]) -> String {
    let output = run(Command::new(exe).args(args));
    if output.status.code() == Some(SKIPPED) {
        println!("{}", String::from_utf8_lossy(&output.stdout).trim());
        return String::new();
    }
    check_output(&format!("{} {}", exe.display(), args.join(" ")), output)
}

fn s(path: &Path) -> &str {
    path.to_str().expect("UTF-8 path")
}

fn handle(text: &str) -> Handle {
    text.trim()
        .parse()
        .unwrap_or_else(|_| panic!("not a handle: {text:?}"))
}

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// A daemon whose socket other users can reach (mode 666 in a 755 dir).
fn open_daemon(args: &[&str]) -> Daemon {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
        .expect("chmod temp dir");
    let socket = dir.path().join("hreg.sock");
    let mut all = vec!["--socket-mode", "666"];
    all.extend_from_slice(args);
    Daemon::start_at(dir, socket, &all)
}

#[test]
fn every_function_from_c() {
    let daemon = Daemon::start(&[]);
    run_c(
        &c_test("api"),
        &["all", s(&daemon.socket), env!("CARGO_PKG_VERSION")],
    );
    assert_eq!(daemon.objects(), 0);
}

/// The conformance suite's C runner (tests/c/conformance.c) over every case
/// of tests/conformance/cases.txt; it starts its own daemons.
#[test]
fn conformance_cases_from_c() {
    let cases = client_c_dir().join("../tests/conformance/cases.txt");
    let out = run_c(&c_test("conformance"), &[s(&binary("hregd")), s(&cases)]);
    assert!(
        out.contains(" passed, 0 failed,"),
        "no summary line:\n{out}"
    );
}

#[test]
fn denied_for_another_user() {
    if !is_root() {
        println!("denied_for_another_user: skipped, needs root to setuid a child");
        return;
    }
    let daemon = open_daemon(&[]);
    run_c(&c_test("statuses"), &["denied", s(&daemon.socket)]);
}

#[test]
fn quota_on_objects_and_sessions() {
    let daemon = Daemon::start(&["--max-objects", "5"]);
    run_c(&c_test("statuses"), &["quota", s(&daemon.socket), "5"]);
    let daemon = Daemon::start(&["--max-sessions", "1"]);
    run_c(&c_test("statuses"), &["sessions", s(&daemon.socket)]);
}

#[test]
fn quota_on_references_names_the_limit() {
    let daemon = Daemon::start(&["--uid-max-references", "3"]);
    run_c(&c_test("statuses"), &["references", s(&daemon.socket)]);
}

/// A fake daemon that answers one HELLO with `reply` and closes.
fn fake_daemon(dir: &Path, reply: Vec<u8>) -> (PathBuf, std::thread::JoinHandle<()>) {
    use rustix::net::{
        AddressFamily, RecvFlags, SendFlags, SocketAddrUnix, SocketFlags, SocketType,
    };
    let path = dir.join("fake.sock");
    let listener = rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )
    .expect("socket");
    rustix::net::bind(&listener, &SocketAddrUnix::new(&path).unwrap()).expect("bind");
    rustix::net::listen(&listener, 1).expect("listen");
    let server = std::thread::spawn(move || {
        let conn = rustix::net::accept(&listener).expect("accept");
        let mut hello = [0u8; 4096];
        rustix::net::recv(&conn, &mut hello, RecvFlags::empty()).expect("recv HELLO");
        rustix::net::send(&conn, &reply, SendFlags::NOSIGNAL).expect("send");
    });
    (path, server)
}

#[test]
fn version_and_protocol_errors_from_fake_daemons() {
    use hreg_proto::control::Reply;
    use hreg_proto::Status;
    let exe = c_test("statuses");
    let cases = [
        (
            Reply::Refused {
                status: Status::Version as u32,
                message: "this daemon speaks version 99".into(),
            }
            .encode(),
            Status::Version,
        ),
        (vec![0xde, 0xad, 0xbe], Status::Protocol),
    ];
    for (reply, status) in cases {
        let dir = tempfile::tempdir().unwrap();
        let (path, server) = fake_daemon(dir.path(), reply);
        run_c(&exe, &["connect", s(&path), &(status as u32).to_string()]);
        server.join().expect("fake daemon");
    }
}

#[test]
fn disconnected_when_the_daemon_dies() {
    let daemon = Daemon::start(&[]);
    run_c(
        &c_test("statuses"),
        &["disconnect", s(&daemon.socket), &daemon.pid().to_string()],
    );
}

#[test]
fn c_and_rust_share_objects() {
    let daemon = Daemon::start(&[]);
    let rust = daemon.client();
    let exe = c_test("cross");

    // C inserts, Rust reads.
    let out = run_c(&exe, &["put", s(&daemon.socket), "made in C"]);
    let h = handle(&out);
    assert_eq!(rust.get(h).unwrap(), b"made in C");
    rust.remove(h).unwrap();

    // Rust inserts, C reads (and replaces: Rust sees that too).
    let value = "made in Rust \u{e9}";
    let h = rust.insert(value.as_bytes(), SHARED).unwrap();
    run_c(&exe, &["get", s(&daemon.socket), &h.to_string(), value]);
    assert_eq!(rust.get(h).unwrap(), b"seen by C");
    let empty = rust.insert(b"", DETACHED).unwrap();
    run_c(
        &exe,
        &["get", s(&daemon.socket), &format!("{empty:#x}"), ""],
    );
    rust.remove(empty).unwrap();
    rust.release(h).unwrap();
    assert_eq!(rust.stats().unwrap().objects, 0);
}

#[test]
fn killed_c_process_drops_its_references() {
    let daemon = Daemon::start(&[]);
    let rust = daemon.client();
    let h = rust.insert(b"shared with C", 0).unwrap();
    let mut child = Command::new(c_test("cross"))
        .args(["hold", s(&daemon.socket), "50", &h.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn cross hold");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "ready");
    assert_eq!(rust.stats().unwrap().objects, 51);
    // Our reference goes; the C process's keeps the object alive.
    rust.release(h).unwrap();
    assert_eq!(rust.get(h).unwrap(), b"shared with C");

    child.kill().unwrap(); // SIGKILL
    let status: ExitStatus = child.wait().unwrap();
    assert!(!status.success());
    wait_until("the killed session's references to drop", || {
        rust.stats().unwrap().objects == 0
    });
    assert!(matches!(rust.get(h), Err(Error::Stale)));
    assert_eq!(rust.stats().unwrap().sessions, 1);
}

#[test]
fn eight_threads_share_one_client() {
    let daemon = Daemon::start(&[]);
    run_c(
        &example("threads"),
        &[&THREAD_ITERATIONS.to_string(), s(&daemon.socket)],
    );
    assert_eq!(daemon.objects(), 0);
}

fn sh(script: &str, envs: &[(&str, PathBuf)]) -> String {
    let mut cmd = Command::new("sh");
    cmd.args(["-ec", script]);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    check_output(script, run(&mut cmd))
}

/// `make install` of the libraries this test run built (PROFILE, TARGET_DIR
/// and BUILD_DIR of this build, so no cargo runs) into `prefix`.
fn make_install(target: &str, prefix: &Path) {
    let bins = bin_dir();
    let profile = bins.file_name().unwrap().to_str().unwrap();
    let target_dir = bins.parent().unwrap();
    let mut make = Command::new("make");
    make.arg("-C")
        .arg(client_c_dir())
        .arg(target)
        .arg(format!("PREFIX={}", prefix.display()))
        .arg(format!("PROFILE={profile}"))
        .arg(format!("TARGET_DIR={}", target_dir.display()))
        .arg(format!("BUILD_DIR={}", built_dir().display()))
        // Fail rather than build if the artifacts were missing.
        .arg("CARGO=false");
    check_output("make install", run(&mut make));
}

#[test]
fn installed_copy_builds_with_pkg_config() {
    let daemon = Daemon::start(&[]);
    let tmp = tempfile::tempdir().unwrap();
    let prefix = tmp.path().join("prefix");
    make_install("install", &prefix);
    let lib = prefix.join("lib");
    for file in [
        "include/hreg.h",
        "lib/libhreg.so.0.1.0",
        "lib/libhreg.a",
        "lib/pkgconfig/hreg.pc",
    ] {
        assert!(prefix.join(file).is_file(), "{file} not installed");
    }
    assert_eq!(
        std::fs::read_link(lib.join("libhreg.so")).unwrap(),
        Path::new("libhreg.so.0")
    );
    assert_eq!(
        std::fs::read_link(lib.join("libhreg.so.0")).unwrap(),
        Path::new(&format!("libhreg.so.{}", env!("CARGO_PKG_VERSION")))
    );

    let examples = client_c_dir().join("examples");
    let common = [
        ("EX", examples),
        ("OUT", tmp.path().to_path_buf()),
        ("HREG_SOCKET", daemon.socket.clone()),
    ];

    // Shared: exactly what a C user types, then run with the library found
    // through LD_LIBRARY_PATH, by its SONAME.
    let mut envs = common.to_vec();
    envs.push(("PKG_CONFIG_PATH", lib.join("pkgconfig")));
    envs.push(("LD_LIBRARY_PATH", lib.clone()));
    sh(
        r#"
        test "$(pkg-config --modversion hreg)" = "$(sed -n 's/^version *= *"\(.*\)"/\1/p' "$EX/../../Cargo.toml" | head -n 1)"
        for p in producer consumer threads; do
            cc "$EX/$p.c" $(pkg-config --cflags --libs hreg) -pthread -o "$OUT/$p"
        done
        readelf -d "$OUT/consumer" | grep -q 'NEEDED.*\[libhreg.so.0\]'
        readelf -d "$LD_LIBRARY_PATH/libhreg.so.0.1.0" | grep -q 'SONAME.*\[libhreg.so.0\]'
        h=$("$OUT/producer" 'hello from C')
        test "$("$OUT/consumer" "$h")" = 'hello from C'
        if "$OUT/consumer" "$h" 2>/dev/null; then echo "consumed twice"; exit 1; fi
        "$OUT/threads" 100
        "#,
        &envs,
    );

    // Static: a prefix with only libhreg.a, linked through `--static`.
    let static_prefix = tmp.path().join("static");
    make_install("install-static", &static_prefix);
    let mut envs = common.to_vec();
    envs.push(("PKG_CONFIG_PATH", static_prefix.join("lib/pkgconfig")));
    let printed = sh(
        r#"
        for p in producer consumer; do
            cc "$EX/$p.c" $(pkg-config --static --cflags --libs hreg) -o "$OUT/static-$p"
        done
        if readelf -d "$OUT/static-consumer" | grep -q 'libhreg'; then
            echo "static-consumer needs libhreg dynamically"; exit 1
        fi
        h=$("$OUT/static-producer" 'hello, statically')
        "$OUT/static-consumer" "$h"
        "#,
        &envs,
    );
    assert_eq!(printed.trim(), "hello, statically");
    assert_eq!(daemon.objects(), 0);
}

/// valgrind, or None (with a note) when it is missing outside CI.
fn valgrind() -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("valgrind"))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "valgrind is not installed, and CI is set: the valgrind tests must run"
        );
        println!("NOTE: valgrind not installed; skipping the valgrind run of the C tests");
    }
    found
}

/// Runs a C program under valgrind's memcheck: no errors and no bytes
/// definitely lost, in it and in the children it forks.
fn under_valgrind(valgrind: &Path, exe: &Path, args: &[&str]) {
    let output = run(Command::new(valgrind)
        .args([
            "--error-exitcode=1",
            "--leak-check=full",
            "--errors-for-leak-kinds=definite",
            "--show-leak-kinds=definite,possible",
            "--child-silent-after-fork=no",
            "--fair-sched=yes",
        ])
        .arg(format!(
            "--suppressions={}",
            c_tests_dir().join("valgrind.supp").display()
        ))
        .arg(exe)
        .args(args));
    let stderr = String::from_utf8_lossy(&output.stderr);
    for line in stderr.lines() {
        if line.contains("ERROR SUMMARY") || line.contains("definitely lost") {
            println!("{}: {line}", exe.file_name().unwrap().to_string_lossy());
        }
    }
    let skipped = output.status.code() == Some(SKIPPED);
    assert!(
        output.status.success() || skipped,
        "{} {args:?} failed under valgrind ({}):\n{stderr}",
        exe.display(),
        output.status
    );
    for line in stderr.lines().filter(|l| l.contains("ERROR SUMMARY")) {
        assert!(line.contains("ERROR SUMMARY: 0 errors"), "{line}");
    }
    for line in stderr.lines().filter(|l| l.contains("definitely lost:")) {
        assert!(line.contains("definitely lost: 0 bytes"), "{line}");
    }
}

#[test]
fn valgrind_api() {
    let Some(valgrind) = valgrind() else { return };
    let daemon = Daemon::start(&[]);
    let exe = c_test("api");
    under_valgrind(
        &valgrind,
        &exe,
        &["all", s(&daemon.socket), env!("CARGO_PKG_VERSION")],
    );
    assert_eq!(daemon.objects(), 0);
}

#[test]
fn valgrind_statuses() {
    let Some(valgrind) = valgrind() else { return };
    let exe = c_test("statuses");
    let daemon = Daemon::start(&["--max-objects", "5"]);
    under_valgrind(&valgrind, &exe, &["quota", s(&daemon.socket), "5"]);
    if is_root() {
        let daemon = open_daemon(&[]);
        under_valgrind(&valgrind, &exe, &["denied", s(&daemon.socket)]);
    }
    let daemon = Daemon::start(&[]);
    under_valgrind(
        &valgrind,
        &exe,
        &["disconnect", s(&daemon.socket), &daemon.pid().to_string()],
    );
}

#[test]
fn valgrind_threads() {
    let Some(valgrind) = valgrind() else { return };
    let daemon = Daemon::start(&[]);
    under_valgrind(
        &valgrind,
        &example("threads"),
        &[&VALGRIND_THREAD_ITERATIONS.to_string(), s(&daemon.socket)],
    );
}
