//! The first hour of a new user, under test: README.md run as written (the
//! quickstart's daemon with its defaults, every `console` walk-through
//! compared with what it prints, every Rust, C, Python and Go program built
//! and run against that daemon), the facts the README states (the minimum
//! Rust version, the test command CI runs, the one description of the
//! socket lookup), and every error a newcomer met, asserting its words.
//!
//! `newcomer_readme_runs_as_written` needs the Python package and the
//! installed libhreg that `./test` builds before it runs it, in its last
//! stage (`HREG_PYTHON`, `HREG_PREFIX`); the first stage skips it.

use hreg_tests::readme::{self, Block};
use hreg_tests::{binary, is_root, required_in_ci, wait_until, Daemon, NOBODY};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .unwrap()
}

fn readme_text() -> String {
    std::fs::read_to_string(repo().join("README.md")).unwrap()
}

/// The part of `text` under the `## heading`, up to the next `## `.
fn section<'a>(text: &'a str, heading: &str) -> &'a str {
    let start = text
        .find(&format!("\n## {heading}\n"))
        .unwrap_or_else(|| panic!("README.md has no \"## {heading}\""));
    let rest = &text[start + 1..];
    &rest[..rest[3..].find("\n## ").map_or(rest.len(), |end| end + 3)]
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The quickstart's two commands, comments dropped.
fn quickstart_commands() -> Vec<String> {
    let text = readme_text();
    let quickstart = section(&text, "Quickstart");
    let block = readme::blocks(quickstart)
        .into_iter()
        .find(|b| b.lang == "sh")
        .expect("the quickstart has a sh block");
    block
        .code
        .lines()
        .map(|l| l.split(" #").next().unwrap().trim().to_owned())
        .filter(|l| !l.is_empty())
        .collect()
}

#[test]
fn the_quickstart_is_two_commands_and_ci_runs_the_second() {
    let commands = quickstart_commands();
    assert_eq!(commands.len(), 2, "{commands:?}");
    assert!(
        commands[0].starts_with("cargo run --release --bin hregd"),
        "{commands:?}"
    );
    assert_eq!(commands[1], "./test");
    let ci = std::fs::read_to_string(repo().join(".ci/run")).unwrap();
    assert!(
        ci.lines()
            .any(|l| !l.trim_start().starts_with('#') && l.contains("./test")),
        ".ci/run must run the README's test command"
    );
}

#[test]
fn the_readme_states_the_minimum_rust_version_and_the_registries() {
    let manifest = std::fs::read_to_string(repo().join("Cargo.toml")).unwrap();
    let version = manifest
        .lines()
        .find_map(|l| l.strip_prefix("rust-version = "))
        .expect("rust-version in Cargo.toml")
        .trim_matches('"');
    let text = readme::one_spaced(&readme_text());
    assert!(
        text.contains(&format!("Rust {version} or later")),
        "README.md must state the minimum Rust version, {version}"
    );
    assert!(text.contains("needs the package registries"));
}

/// `program --help`'s standard output.
fn help(program: &str) -> String {
    let out = Command::new(binary(program))
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success());
    text(&out.stdout)
}

#[test]
fn the_socket_lookup_is_told_in_the_same_words_everywhere_and_is_true() {
    let words = hreg_proto::SOCKET_LOOKUP;
    assert!(help("hregd").contains(words), "hregd --help");
    assert!(help("hregctl").contains(words), "hregctl --help");
    assert!(
        readme::one_spaced(&readme_text()).contains(&readme::one_spaced(words)),
        "README.md must say: {words}"
    );
    // What the daemon does, as those words say.
    let socket_of = |setup: &dyn Fn(&mut Command)| {
        let mut command = Command::new(binary("hregd"));
        command
            .arg("--check-config")
            .env_remove("HREG_SOCKET")
            .env("XDG_RUNTIME_DIR", "/run/user/4242");
        setup(&mut command);
        let out = command.output().unwrap();
        assert!(out.status.success(), "{}", text(&out.stderr));
        let config = text(&out.stdout);
        config
            .lines()
            .find_map(|l| l.strip_prefix("socket = "))
            .expect("socket in --check-config")
            .trim_matches('"')
            .to_owned()
    };
    let default = if is_root() {
        "/run/hreg/hreg.sock"
    } else {
        "/run/user/4242/hreg.sock"
    };
    assert_eq!(socket_of(&|_| {}), default);
    let with_env = |c: &mut Command| {
        c.env("HREG_SOCKET", "/x/h.sock");
    };
    assert_eq!(socket_of(&with_env), "/x/h.sock");
    let with_flag = |c: &mut Command| {
        c.env("HREG_SOCKET", "/x/h.sock").args(["--socket", "/y/s"]);
    };
    assert_eq!(socket_of(&with_flag), "/y/s");
    // And the clients: $HREG_SOCKET alone if set, else XDG, then /run/hreg.
    let tried = |setup: &dyn Fn(&mut Command)| {
        let mut command = Command::new(binary("hregctl"));
        command
            .arg("stats")
            .env_remove("HREG_SOCKET")
            .env("XDG_RUNTIME_DIR", "/nonexistent-xdg");
        setup(&mut command);
        text(&command.output().unwrap().stderr)
    };
    let defaulted = tried(&|_| {});
    let xdg = defaulted
        .find("/nonexistent-xdg/hreg.sock")
        .expect(&defaulted);
    let run = defaulted.find("/run/hreg/hreg.sock").expect(&defaulted);
    assert!(xdg < run, "{defaulted}");
    let set = tried(&|c: &mut Command| {
        c.env("HREG_SOCKET", "/nonexistent-x/h.sock");
    });
    assert!(
        set.contains("/nonexistent-x/h.sock") && !set.contains("/run/hreg"),
        "{set}"
    );
}

/// `program args` with stdin closed: (exit code, stdout, stderr).
fn run(program: &str, args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(binary(program))
        .args(args)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (out.status.code(), text(&out.stdout), text(&out.stderr))
}

#[test]
fn a_bad_log_level_is_refused_naming_the_key_and_the_accepted_forms() {
    let (code, out, err) = run(
        "hregd",
        &[
            "--socket",
            "/tmp/unused.sock",
            "--log-level",
            "loud",
            "--check-config",
        ],
    );
    assert_eq!(code, Some(2));
    assert_eq!(out, "");
    assert_eq!(
        err,
        "hregd: `log_level` = \"loud\": expected a level (off, error, warn, info, debug, \
         trace) or directives as in RUST_LOG, such as \"info,hregd::control=debug\"\n"
    );
}

#[test]
fn check_config_prints_a_config_file_that_gives_the_same_settings_back() {
    let dir = tempfile::tempdir().unwrap();
    let (code, first, err) = run(
        "hregd",
        &[
            "--socket",
            "/tmp/unused.sock",
            "--max-objects",
            "77",
            "--socket-mode",
            "640",
            "--check-config",
        ],
    );
    assert_eq!(code, Some(0), "{err}");
    assert!(first.contains("\nmax_objects = 77\n"), "{first}");
    assert!(
        !first.contains("Limits {") && !first.contains("Some("),
        "{first}"
    );
    let file = dir.path().join("hregd.toml");
    std::fs::write(&file, &first).unwrap();
    let (code, again, err) = run(
        "hregd",
        &["--config", file.to_str().unwrap(), "--check-config"],
    );
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(again, first);
    // Cross-key checks.
    let (code, _, err) = run(
        "hregd",
        &[
            "--socket",
            "/tmp/unused.sock",
            "--max-sessions",
            "10",
            "--uid-max-sessions",
            "20",
            "--check-config",
        ],
    );
    assert_eq!(code, Some(2));
    assert_eq!(
        err,
        "hregd: `uid_max_sessions` = 20 is more than `max_sessions` = 10: one uid could \
         never reach it; lower `uid_max_sessions` or raise `max_sessions`\n"
    );
}

#[test]
fn a_second_daemon_on_a_used_socket_says_so_once() {
    let first = Daemon::start(&[]);
    let socket = first.socket.to_str().unwrap();
    let (code, out, err) = run("hregd", &["--socket", socket]);
    assert_eq!(code, Some(1));
    assert_eq!(out, "");
    assert_eq!(
        err,
        format!(
            "hregd: another hregd is serving at {socket}: stop it first, or give this one \
             another --socket\n"
        )
    );
    first.client().stats().unwrap();
}

#[test]
fn hregctl_errors_say_command_what_and_why_in_words() {
    let daemon = Daemon::start(&["--max-value-size", "1000"]);
    let socket = daemon.socket.to_str().unwrap();
    let ctl = |args: &[&str]| {
        let mut all = vec!["--socket", socket];
        all.extend_from_slice(args);
        run("hregctl", &all)
    };
    let cases: &[(&[&str], i32, String)] = &[
        (
            &["get", "12345"],
            1,
            "hregctl: get: handle 12345: no such object (removed, or never issued by this \
             daemon)\n"
                .into(),
        ),
        (
            &["put", &"x".repeat(1001)],
            1,
            "hregctl: put: value too big: 1001 bytes, over the daemon's max_value_size of \
             1000\n"
                .into(),
        ),
        (
            &["ls", "--owner", "abc"],
            2,
            "hregctl: ls: --owner abc: not a uid (a number such as 1000; `id -u` prints \
             yours)\nTry 'hregctl ls --help'.\n"
                .into(),
        ),
        (
            &["get", "zz"],
            2,
            "hregctl: get: zz: not a handle (a decimal or 0x hex number)\n\
             Try 'hregctl get --help'.\n"
                .into(),
        ),
        (
            &["rm", "0"],
            2,
            "hregctl: rm: 0: not a handle (no handle is 0)\nTry 'hregctl rm --help'.\n".into(),
        ),
        (
            &["bogus"],
            2,
            "hregctl: unrecognized subcommand 'bogus'\nTry 'hregctl --help'.\n".into(),
        ),
        (
            &["stats", "--json", "--prometheus"],
            2,
            "hregctl: stats: --prometheus and --json ask for different formats; give one\n".into(),
        ),
    ];
    for (args, want_code, want) in cases {
        let (code, out, err) = ctl(args);
        assert_eq!(code, Some(*want_code), "{args:?}: {err}");
        assert_eq!(out, "", "{args:?}");
        assert_eq!(&err, want, "{args:?}");
    }
    let (code, _, err) = run("hregctl", &["--socket", "/nonexistent/hreg.sock", "stats"]);
    assert_eq!(code, Some(1));
    assert_eq!(
        err,
        "hregctl: stats: cannot connect to hregd at /nonexistent/hreg.sock: no socket there \
         (is hregd running, and serving this path?)\n"
    );
}

#[test]
fn no_rust_internals_in_any_error() {
    let daemon = Daemon::start(&[]);
    let socket = daemon.socket.to_str().unwrap();
    for args in [
        &["--socket", "/nonexistent/hreg.sock", "stats"][..],
        &["--socket", "/", "stats"],
        &["--socket", socket, "ls", "--limit", "-1"],
        &["--socket", socket, "watch", "--interval", "0"],
        &["--socket", socket, "get", "99999999999999999999"],
        &["--socket", socket, "put", "--bogus"],
    ] {
        let (code, _, err) = run("hregctl", args);
        assert_ne!(code, Some(0), "{args:?}");
        assert!(err.starts_with("hregctl: "), "{args:?}: {err}");
        for internal in [
            "os error",
            "error: ",
            "invalid digit",
            "ParseIntError",
            "Os {",
        ] {
            assert!(!err.contains(internal), "{args:?}: {err}");
        }
    }
}

/// Whether the group `name` exists with a gid that uid 65534 is not in.
fn a_group_nobody_is_not_in() -> Option<(String, u32)> {
    let table = std::fs::read_to_string("/etc/group").ok()?;
    table.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        let gid: u32 = fields.get(2)?.parse().ok()?;
        let members = fields.get(3).copied().unwrap_or("");
        (gid != 0 && gid != NOBODY && !members.split(',').any(|m| m == "nobody"))
            .then(|| (fields[0].to_owned(), gid))
    })
}

#[test]
fn a_user_who_may_not_connect_is_told_that_hregd_is_there_and_what_to_do() {
    if !required_in_ci("root (to run hregctl as another uid)", is_root()) {
        return;
    }
    let (group, _) = a_group_nobody_is_not_in().expect("a group in /etc/group");
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let socket = dir.path().join("hreg.sock");
    let daemon = Daemon::start_at(
        dir,
        socket.clone(),
        &["--socket-mode", "660", "--socket-group", &group],
    );
    let out = Command::new(binary("hregctl"))
        .args(["--socket", socket.to_str().unwrap(), "stats"])
        .uid(NOBODY)
        .gid(NOBODY)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        text(&out.stderr),
        format!(
            "hregctl: stats: hregd is running at {} but you may not connect: the socket is for \
             group {group} (mode 660): join that group (`sudo usermod -aG {group} $USER`, then \
             log in again)\n",
            socket.display()
        )
    );
    daemon.client().stats().unwrap();
}

#[test]
fn get_ends_with_a_newline_on_a_terminal_and_not_in_a_pipe() {
    let daemon = Daemon::start(&[]);
    let socket = daemon.socket.to_str().unwrap();
    let (_, handle, _) = run("hregctl", &["--socket", socket, "put", "hello"]);
    let handle = handle.trim();
    let (_, piped, _) = run("hregctl", &["--socket", socket, "get", handle]);
    assert_eq!(piped, "hello");
    let (_, piped, _) = run("hregctl", &["--socket", socket, "--json", "get", handle]);
    assert_eq!(piped.lines().count(), 1, "{piped}");
    // On a terminal: a pseudo-terminal as standard output.
    let (mut master, mut slave) = (-1, -1);
    // SAFETY: openpty writes two descriptors into the given ints; the name,
    // termios and window size may be NULL.
    let opened = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    assert_eq!(opened, 0, "openpty");
    use std::os::fd::FromRawFd;
    // SAFETY: openpty succeeded: both descriptors are open and ours alone.
    let (master, slave) = unsafe {
        (
            std::fs::File::from_raw_fd(master),
            std::os::fd::OwnedFd::from_raw_fd(slave),
        )
    };
    let status = Command::new(binary("hregctl"))
        .args(["--socket", socket, "get", handle])
        .stdout(Stdio::from(slave))
        .status()
        .unwrap();
    assert!(status.success());
    let mut seen = vec![0u8; 64];
    let n = std::io::Read::read(&mut &master, &mut seen).unwrap();
    // The terminal turns "\n" into "\r\n".
    assert_eq!(&seen[..n], b"hello\r\n");
}

#[test]
fn stats_counts_only_the_rings_of_attached_sessions() {
    let daemon = Daemon::start(&["--workers", "2"]);
    let socket = daemon.socket.to_str().unwrap();
    let stats = || {
        let (code, out, err) = run("hregctl", &["--socket", socket, "stats", "--json"]);
        assert_eq!(code, Some(0), "{err}");
        serde_json::from_str::<serde_json::Value>(&out).unwrap()
    };
    let rings = |v: &serde_json::Value| -> u64 {
        v["workers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| w["rings"].as_u64().unwrap())
            .sum()
    };
    {
        // Three threads, a ring each, held open while the figures are read.
        let client = daemon.client();
        let (inserted, held) = (std::sync::Barrier::new(4), std::sync::Barrier::new(4));
        std::thread::scope(|s| {
            for _ in 0..3 {
                s.spawn(|| {
                    client.insert(b"x", 0).unwrap();
                    inserted.wait();
                    held.wait();
                });
            }
            inserted.wait();
            assert_eq!(rings(&stats()), 3);
            held.wait();
        });
    }
    // Every client gone: no ring is served, whatever the workers last saw.
    let mut last = serde_json::Value::Null;
    wait_until("the client's session to end", || {
        last = stats();
        last["sessions"] == 1
    });
    for worker in last["workers"].as_array().unwrap() {
        assert_eq!(worker["rings"], 0, "{last}");
    }
}

#[test]
fn the_c_examples_refuse_bad_arguments() {
    let threads = hreg_tests::c_programs::program(
        &hreg_tests::c_programs::client_c_dir().join("examples/threads.c"),
    );
    for (args, why) in [
        (
            &["abc"][..],
            "threads: ITERATIONS must be a positive number, not 'abc'\n",
        ),
        (
            &["0"],
            "threads: ITERATIONS must be a positive number, not '0'\n",
        ),
        (
            &["10x"],
            "threads: ITERATIONS must be a positive number, not '10x'\n",
        ),
        (&["1", "/s", "extra"], ""),
    ] {
        let out = Command::new(&threads).args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = text(&out.stderr);
        assert!(err.starts_with(why), "{args:?}: {err}");
        assert!(
            err.ends_with(&format!(
                "usage: {} [ITERATIONS [SOCKET]]\n",
                threads.display()
            )),
            "{args:?}: {err}"
        );
    }
}

#[test]
fn the_daemon_harness_keeps_daemon_stderr_for_a_failing_test_only() {
    let daemon = Daemon::start_with(&[], |command| {
        command.env("RUST_LOG", "info");
    });
    wait_until("hregd to log that it serves", || {
        daemon.stderr().contains("hregd serving")
    });
}

/// The quickstart's daemon, run by a newcomer: no `$HREG_SOCKET`, a private
/// `$XDG_RUNTIME_DIR`, default settings (as uid 65534 when the test is
/// root, so that the default socket is `$XDG_RUNTIME_DIR/hreg.sock` and
/// not the machine's `/run/hreg`).
struct Quickstart {
    daemon: Child,
    runtime_dir: tempfile::TempDir,
    log: PathBuf,
}

impl Quickstart {
    fn start() -> Quickstart {
        let command = &quickstart_commands()[0];
        let args = command
            .strip_prefix("cargo run --release --bin hregd")
            .expect("the quickstart runs hregd through cargo")
            .trim()
            .strip_prefix("--")
            .unwrap_or("")
            .split_whitespace()
            .map(str::to_owned)
            .collect::<Vec<_>>();
        let runtime_dir = tempfile::tempdir().unwrap();
        let log = runtime_dir.path().join("hregd.log");
        let mut hregd = Command::new(binary("hregd"));
        hregd
            .args(&args)
            .env_remove("HREG_SOCKET")
            .env_remove("RUST_LOG")
            .env("XDG_RUNTIME_DIR", runtime_dir.path())
            .stdin(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        if is_root() {
            std::os::unix::fs::chown(runtime_dir.path(), Some(NOBODY), Some(NOBODY)).unwrap();
            hregd.uid(NOBODY).gid(NOBODY);
        }
        let daemon = hregd.spawn().unwrap();
        let socket = runtime_dir.path().join("hreg.sock");
        wait_until("the quickstart's hregd to serve", || {
            hreg::Client::connect(&socket).is_ok()
        });
        Quickstart {
            daemon,
            runtime_dir,
            log,
        }
    }

    /// A command run as the newcomer runs it: the workspace's binaries on
    /// `PATH`, the daemon found by the default lookup.
    fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut command = Command::new(program);
        let path = std::env::var_os("PATH").unwrap_or_default();
        let mut paths = vec![hreg_tests::bin_dir()];
        paths.extend(std::env::split_paths(&path));
        command
            .env("PATH", std::env::join_paths(paths).unwrap())
            .env_remove("HREG_SOCKET")
            .env("XDG_RUNTIME_DIR", self.runtime_dir.path())
            .env("NO_COLOR", "1")
            .current_dir(repo())
            .stdin(Stdio::null());
        command
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Quickstart {
    fn drop(&mut self) {
        let _ = self.daemon.kill();
        let _ = self.daemon.wait();
        if std::thread::panicking() {
            eprintln!("--- the quickstart's hregd said:\n{}---", self.log());
        }
    }
}

/// Runs `out`'s check: success, and `hello` first when `hello`.
fn check_ran(block: &Block, out: &Output, hello: bool) {
    assert!(
        out.status.success(),
        "README.md line {} ({}) failed: {}\n{}{}",
        block.line,
        block.lang,
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    if hello {
        assert_eq!(
            text(&out.stdout).lines().next(),
            Some("hello"),
            "README.md line {}",
            block.line
        );
    }
}

/// Where `./test` installed libhreg and the Python that has `hreg`, if
/// there (else, outside CI, the languages needing them are not run).
fn built_for_other_languages() -> Option<(PathBuf, PathBuf)> {
    let prefix = std::env::var_os("HREG_PREFIX")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("target/hreg-prefix"));
    let python = std::env::var_os("HREG_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("target/py-venv/bin/python"));
    let ready = prefix.join("lib/pkgconfig/hreg.pc").exists() && python.exists();
    required_in_ci(
        "libhreg installed and the Python package built (./test does both before this test)",
        ready,
    )
    .then_some((prefix, python))
}

#[test]
fn newcomer_readme_runs_as_written() {
    let Some((prefix, python)) = built_for_other_languages() else {
        return;
    };
    let text = readme_text();
    let blocks = readme::blocks(&text);
    let quickstart = Quickstart::start();
    let pkg_config = prefix.join("lib/pkgconfig");
    let lib = prefix.join("lib");

    // The walk-throughs, in one shell, in order, each command's output
    // compared with the README's.
    let consoles: Vec<&Block> = blocks.iter().filter(|b| b.lang == "console").collect();
    assert!(consoles.len() >= 2, "README.md has its walk-throughs");
    let mut script = String::new();
    let mut steps = Vec::new();
    for block in &consoles {
        for step in readme::console_steps(&block.code) {
            // Installing libhreg is ./test's second stage: not done twice.
            if step.command.starts_with("make ") {
                continue;
            }
            script.push_str(&format!(
                "printf '\\n@@@ {}\\n'\n{{\n{}\n}} 2>&1\n",
                steps.len(),
                step.command
            ));
            steps.push((block.line, step));
        }
    }
    script.push_str(&format!("printf '\\n@@@ {}\\n'\n", steps.len()));
    let dir = tempfile::tempdir().unwrap();
    let script_path = dir.path().join("walk-through.sh");
    std::fs::write(&script_path, &script).unwrap();
    let out = quickstart
        .command("bash")
        .arg(&script_path)
        .env("PKG_CONFIG_PATH", &pkg_config)
        .output()
        .unwrap();
    let output = self::text(&out.stdout);
    for (i, (line, step)) in steps.iter().enumerate() {
        let start = output.find(&format!("\n@@@ {i}\n")).unwrap_or_else(|| {
            panic!(
                "the walk-through stopped before {}:\n{output}",
                step.command
            )
        }) + format!("\n@@@ {i}\n").len();
        let end = start + output[start..].find(&format!("\n@@@ {}\n", i + 1)).unwrap();
        let got = output[start..end].trim_end_matches('\n');
        let want = step.expected.join("\n");
        assert!(
            readme::matches(&want, got),
            "README.md line {line}: `{}` printed\n{got}\ninstead of\n{want}",
            step.command
        );
    }

    let examples = "One example per language";
    let mut ran = std::collections::BTreeMap::<&str, usize>::new();
    for block in &blocks {
        let hello = block.section == examples;
        match block.lang.as_str() {
            "rust" => {
                let out = quickstart
                    .command(binary("hreg-readme"))
                    .arg(block.line.to_string())
                    .output()
                    .unwrap();
                check_ran(block, &out, hello);
            }
            "c" => {
                let source = dir.path().join(format!("readme_{}.c", block.line));
                std::fs::write(&source, &block.code).unwrap();
                let exe = hreg_tests::c_programs::program(&source);
                check_ran(block, &quickstart.command(exe).output().unwrap(), hello);
            }
            "python" => {
                let source = dir.path().join(format!("readme_{}.py", block.line));
                std::fs::write(&source, &block.code).unwrap();
                let out = quickstart.command(&python).arg(&source).output().unwrap();
                check_ran(block, &out, hello);
            }
            "go" => {
                let module = dir.path().join(format!("go_{}", block.line));
                std::fs::create_dir(&module).unwrap();
                std::fs::write(
                    module.join("go.mod"),
                    format!(
                        "module readme\n\ngo 1.19\n\nrequire hreg.dev/go/hreg v0.0.0\n\nreplace hreg.dev/go/hreg => {}\n",
                        repo().join("client-go").display()
                    ),
                )
                .unwrap();
                std::fs::write(module.join("main.go"), &block.code).unwrap();
                for args in [&["vet", "."][..], &["build", "-o", "readme", "."]] {
                    let built = Command::new("go")
                        .args(args)
                        .current_dir(&module)
                        .env("PKG_CONFIG_PATH", &pkg_config)
                        .env("GOFLAGS", "-mod=mod")
                        .output()
                        .unwrap();
                    check_ran(block, &built, false);
                }
                let out = quickstart
                    .command(module.join("readme"))
                    .env("LD_LIBRARY_PATH", &lib)
                    .output()
                    .unwrap();
                check_ran(block, &out, hello);
            }
            _ => continue,
        }
        *ran.entry(block.lang.as_str()).or_default() += 1;
    }
    for lang in ["rust", "c", "python", "go"] {
        assert!(
            ran.get(lang) >= Some(&1),
            "README.md has no {lang} example: {ran:?}"
        );
    }
    let per_language = blocks
        .iter()
        .filter(|b| {
            b.section == examples && ["rust", "c", "python", "go"].contains(&b.lang.as_str())
        })
        .count();
    assert_eq!(per_language, 4, "one example per language");
}
