//! The operator's side: hregctl's sessions, ls, stats and watch against a
//! daemon with attached clients; configuration files, --check-config and
//! SIGHUP reloading limits.

use hreg::{Error, DETACHED, SHARED};
use hreg_tests::{binary, wait_until, Daemon};
use rustix::process::Signal;
use std::process::{Command, Output};

fn hregctl(daemon: &Daemon, args: &[&str]) -> Output {
    let out = Command::new(binary("hregctl"))
        .arg("--socket")
        .arg(&daemon.socket)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "hregctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `--json` output: one object per line.
fn json(out: &Output) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).expect("hregctl --json prints JSON lines"))
        .collect()
}

#[test]
fn sessions_lists_attached_clients_with_their_references() {
    let daemon = Daemon::start(&[]);
    let first = hreg::Client::connect_named(Some(&daemon.socket), "first-app").unwrap();
    let second = hreg::Client::connect_named(Some(&daemon.socket), "second-app").unwrap();
    for i in 0..3u8 {
        first.insert(&[i], 0).unwrap();
    }
    second.insert(b"x", 0).unwrap();
    // Posted inserts: another process (hregctl) counts their references
    // once they are applied.
    first.flush().unwrap();
    second.flush().unwrap();

    let list = json(&hregctl(&daemon, &["sessions", "--json"]));
    let named = |name: &str| {
        list.iter()
            .find(|s| s["name"] == name)
            .unwrap_or_else(|| panic!("{name} missing"))
    };
    assert_eq!(named("first-app")["references"], 3);
    assert_eq!(named("second-app")["references"], 1);
    assert_eq!(named("first-app")["pid"], std::process::id());
    assert_eq!(
        named("first-app")["uid"],
        rustix::process::getuid().as_raw()
    );
    assert!(named("first-app")["rings"].as_u64().unwrap() >= 1);

    let table = String::from_utf8(hregctl(&daemon, &["sessions"]).stdout).unwrap();
    let header = table.lines().next().unwrap();
    assert!(
        header.starts_with("ID") && header.contains("NAME") && header.contains("REFS"),
        "{table}"
    );
    let row = table.lines().find(|l| l.contains("first-app")).unwrap();
    // Columns are aligned: the NAME column starts at the same offset.
    assert_eq!(row.find("first-app"), header.find("NAME"));
}

#[test]
fn ls_filters_and_pages() {
    let daemon = Daemon::start(&[]);
    let client = daemon.client();
    let mut detached = Vec::new();
    for i in 0..5u8 {
        detached.push(client.insert(&[i; 10], DETACHED).unwrap().get());
        client.insert(&[i; 3], SHARED).unwrap();
    }
    let all = json(&hregctl(&daemon, &["ls", "--json"]));
    assert_eq!(all.len(), 10);
    let orphans = json(&hregctl(&daemon, &["--json", "ls", "--detached"]));
    let mut found: Vec<u64> = orphans
        .iter()
        .map(|o| o["handle"].as_u64().unwrap())
        .collect();
    found.sort();
    detached.sort();
    assert_eq!(found, detached);
    assert!(orphans
        .iter()
        .all(|o| o["size"] == 10 && o["flags"] == serde_json::json!(["detached"])));
    let uid = rustix::process::getuid().as_raw().to_string();
    let mine = json(&hregctl(&daemon, &["ls", "--owner", &uid, "--json"]));
    assert_eq!(mine.len(), 10);
    let nobody = json(&hregctl(&daemon, &["ls", "--owner", "4242", "--json"]));
    assert!(nobody.is_empty());

    // Paging: three, then the rest from the cursor.
    let page = hregctl(&daemon, &["ls", "--limit", "3"]);
    let rows = String::from_utf8(page.stdout).unwrap();
    assert_eq!(rows.lines().count(), 4, "{rows}");
    let note = String::from_utf8(page.stderr).unwrap();
    let cursor = note.split_whitespace().last().unwrap().to_string();
    let rest = json(&hregctl(&daemon, &["ls", "--cursor", &cursor, "--json"]));
    assert_eq!(rest.len(), 7);

    // The orphans go with rm.
    for h in detached {
        hregctl(&daemon, &["rm", &h.to_string()]);
    }
    let left = json(&hregctl(&daemon, &["ls", "--detached", "--json"]));
    assert!(left.is_empty());
}

#[test]
fn stats_and_watch_show_usage_against_caps() {
    let daemon = Daemon::start(&["--uid-max-objects", "1000", "--shards", "8"]);
    let client = daemon.client();
    for i in 0..20u8 {
        client.insert(&[i; 4], 0).unwrap();
    }
    let stats = json(&hregctl(&daemon, &["stats", "--json", "--details"])).remove(0);
    assert_eq!(stats["objects"], 20);
    assert_eq!(stats["value_bytes"], 80);
    assert_eq!(stats["limits"]["uid_max_objects"], 1000);
    assert_eq!(stats["shards"].as_array().unwrap().len(), 8);
    let shard_total: u64 = stats["shards"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_u64().unwrap())
        .sum();
    assert_eq!(shard_total, 20);
    let uid = rustix::process::getuid().as_raw();
    let mine = stats["uids"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["uid"] == uid)
        .unwrap();
    assert_eq!(mine["objects"], 20);

    let text = String::from_utf8(hregctl(&daemon, &["stats"]).stdout).unwrap();
    assert!(text.contains("20 / 1000"), "{text}");
    assert!(text.contains("ops/s"), "{text}");

    let watch =
        String::from_utf8(hregctl(&daemon, &["watch", "--count", "2", "--interval", "0.1"]).stdout)
            .unwrap();
    assert_eq!(watch.matches("\x1b[H\x1b[2J").count(), 2, "{watch:?}");
    assert_eq!(watch.matches("sessions").count(), 2);
}

#[test]
fn every_subcommand_has_help() {
    for command in ["put", "get", "rm", "stats", "sessions", "ls", "watch"] {
        let out = Command::new(binary("hregctl"))
            .args([command, "--help"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{command} --help");
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("Usage"),
            "{command}"
        );
    }
    let out = Command::new(binary("hregctl"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("Exit status"));
}

#[test]
fn check_config_names_bad_keys_and_ranges() {
    let dir = tempfile::tempdir().unwrap();
    let check = |text: &str| {
        let path = dir.path().join("hregd.toml");
        std::fs::write(&path, text).unwrap();
        Command::new(binary("hregd"))
            .arg("--config")
            .arg(&path)
            .args(["--socket", "/tmp/unused-hreg.sock", "--check-config"])
            .output()
            .unwrap()
    };
    let good = check("max_objects = 100\nshards = 16\nsocket_mode = \"640\"\n");
    assert!(
        good.status.success(),
        "{}",
        String::from_utf8_lossy(&good.stderr)
    );
    assert!(String::from_utf8_lossy(&good.stdout).contains("\nmax_objects = 100\n"));
    for (text, words) in [
        ("bogus_key = 1\n", &["bogus_key"][..]),
        ("shards = 3\n", &["shards", "power of two"]),
        ("workers = 0\n", &["workers", "1 to 64"]),
        ("socket_mode = \"999\"\n", &["socket_mode", "octal"]),
        ("max_value_size = \"big\"\n", &["max_value_size"]),
    ] {
        let out = check(text);
        assert_eq!(out.status.code(), Some(2), "{text}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        for word in words {
            assert!(stderr.contains(word), "{text}: {stderr}");
        }
    }
    // Flags override the file.
    let path = dir.path().join("hregd.toml");
    std::fs::write(&path, "max_objects = 100\n").unwrap();
    let out = Command::new(binary("hregd"))
        .arg("--config")
        .arg(&path)
        .args([
            "--socket",
            "/tmp/unused-hreg.sock",
            "--max-objects",
            "7",
            "--check-config",
        ])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("\nmax_objects = 7\n"));
}

#[test]
fn sighup_rereads_limits_from_the_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("hregd.toml");
    std::fs::write(&config, "max_objects = 3\n").unwrap();
    let socket = dir.path().join("hreg.sock");
    let daemon = Daemon::start_at(
        tempfile::tempdir().unwrap(),
        socket,
        &["--config", config.to_str().unwrap()],
    );
    let client = daemon.client();
    for i in 0..3u8 {
        client.insert(&[i], 0).unwrap();
    }
    assert!(matches!(client.insert(b"4", 0), Err(Error::Quota { .. })));
    std::fs::write(&config, "max_objects = 5\n").unwrap();
    daemon.signal(Signal::HUP);
    wait_until("the new limit", || client.insert(b"4", 0).is_ok());
    client.insert(b"5", 0).unwrap();
    assert!(matches!(client.insert(b"6", 0), Err(Error::Quota { .. })));
    // A broken file keeps the old limits.
    std::fs::write(&config, "max_objects = \"many\"\n").unwrap();
    daemon.signal(Signal::HUP);
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert!(matches!(client.insert(b"6", 0), Err(Error::Quota { .. })));
    assert_eq!(client.stats().unwrap().objects, 5);
    drop(dir);
}
