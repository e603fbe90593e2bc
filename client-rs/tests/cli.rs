//! hregctl's command line without a daemon: help, usage errors (exit 2) and
//! connection errors (exit 1, naming the path). Being an integration test of
//! this package also makes `cargo test` build the hregctl binary that the
//! multi-process tests in `tests/` run.

use std::process::Command;

fn hregctl(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_hregctl"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn help_lists_commands_and_exit_codes() {
    let out = hregctl(&["--help"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for word in [
        "put",
        "get",
        "rm",
        "stats",
        "sessions",
        "ls",
        "watch",
        "Exit status",
    ] {
        assert!(text.contains(word), "--help lacks {word}");
    }
}

#[test]
fn usage_errors_exit_2_and_hreg_errors_exit_1() {
    let bad_handle = hregctl(&["get", "zz"]);
    assert_eq!(bad_handle.status.code(), Some(2));
    let zero = hregctl(&["rm", "0"]);
    assert_eq!(zero.status.code(), Some(2));
    let nowhere = hregctl(&["--socket", "/nonexistent/dir/hreg.sock", "stats"]);
    assert_eq!(nowhere.status.code(), Some(1));
    assert!(nowhere.stdout.is_empty());
    assert!(String::from_utf8_lossy(&nowhere.stderr).contains("/nonexistent/dir/hreg.sock"));
}

#[test]
fn prometheus_and_json_together_are_a_usage_error() {
    for args in [
        ["stats", "--prometheus", "--json"],
        ["--json", "stats", "--prometheus"],
    ] {
        let out = hregctl(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(out.stdout.is_empty());
        assert!(String::from_utf8_lossy(&out.stderr).contains("--prometheus"));
    }
    let help = hregctl(&["stats", "--help"]);
    assert!(String::from_utf8_lossy(&help.stdout).contains("--prometheus"));
}
