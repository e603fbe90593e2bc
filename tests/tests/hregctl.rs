//! hregctl against a real daemon: two processes sharing a handle through the
//! command line, handles in decimal and hex, flags before or after the
//! command, errors on stderr with a non-zero exit, JSON as one compact
//! object per line, and the figures of `stats` in every format (table,
//! JSON, Prometheus) agreeing, every metric in the README's table. (The
//! words of each error are asserted in `newcomer.rs`.)

use hreg_tests::{binary, wait_until, Daemon};
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
    assert_eq!(
        text(&gone.stderr),
        format!(
            "hregctl: get: handle {handle}: {}",
            hreg::Status::Stale.message()
        )
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
    let json = json_lines(&stats.stdout);
    assert_eq!(json.len(), 1);
    assert_eq!(json[0]["objects"], 1);
    // The per-shard counts only with --details; their range always.
    assert!(json[0].get("shards").is_none(), "{}", json[0]);
    assert_eq!(json[0]["shard_count"], 64);
    assert_eq!(json[0]["shard_objects_max"], 1);
    let detailed = stats_json(socket);
    assert_eq!(detailed["shards"].as_array().unwrap().len(), 64);
    let plain = text(&hregctl(&["stats", "--details", "--socket", socket], None).stdout);
    assert!(
        plain
            .lines()
            .any(|l| l.split_whitespace().eq(["SHARD", "OBJECTS"])),
        "{plain}"
    );
}

#[test]
fn json_is_one_compact_object_per_line() {
    let daemon = Daemon::start(&[]);
    let socket = daemon.socket.to_str().unwrap();
    let mut handles = Vec::new();
    for value in ["one", "two", "three"] {
        let put = hregctl(
            &["--socket", socket, "--json", "put", "--shared", value],
            None,
        );
        let line = json_lines(&put.stdout);
        handles.push(line[0]["handle"].as_u64().unwrap());
    }
    let ls = json_lines(&hregctl(&["--socket", socket, "ls", "--json"], None).stdout);
    assert_eq!(ls.len(), 3);
    let mut listed: Vec<u64> = ls.iter().map(|o| o["handle"].as_u64().unwrap()).collect();
    listed.sort_unstable();
    handles.sort_unstable();
    assert_eq!(listed, handles);
    assert_eq!(ls[0]["flags"], serde_json::json!(["shared", "detached"]));
    let client = daemon.client();
    client.stats().unwrap();
    let sessions = json_lines(&hregctl(&["--socket", socket, "sessions", "--json"], None).stdout);
    assert_eq!(sessions.len(), 2, "this client and hregctl's own");
    let get = json_lines(
        &hregctl(
            &["--socket", socket, "get", "--json", &handles[0].to_string()],
            None,
        )
        .stdout,
    );
    assert_eq!(get.len(), 1);
    let watch = json_lines(
        &hregctl(
            &[
                "--socket",
                socket,
                "watch",
                "--json",
                "--count",
                "2",
                "--interval",
                "0.01",
            ],
            None,
        )
        .stdout,
    );
    assert_eq!(watch.len(), 2);
    // A page: the cursor to go on from is on stderr, the objects on stdout.
    let page = hregctl(&["--socket", socket, "ls", "--json", "--limit", "2"], None);
    assert_eq!(json_lines(&page.stdout).len(), 2);
    assert!(text(&page.stderr).starts_with("more objects: continue with --cursor "));
}

#[test]
fn the_readme_lists_every_metric_and_limits_are_named_after_their_keys() {
    let daemon = Daemon::start(&[]);
    let socket = daemon.socket.to_str().unwrap();
    daemon.client().insert(b"x", 0).unwrap();
    let out = hregctl(&["--socket", socket, "stats", "--prometheus"], None);
    let exposition = String::from_utf8(out.stdout).unwrap();
    let parsed = hreg_tests::prometheus::parse(&exposition).unwrap();
    let printed: Vec<&str> = parsed.families.iter().map(|f| f.name.as_str()).collect();
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    let table: Vec<&str> = readme
        .lines()
        .skip_while(|l| !l.starts_with("| metric | type | what |"))
        .skip(2)
        .take_while(|l| l.starts_with('|'))
        .collect();
    let mut documented = Vec::new();
    for row in &table {
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        let name = cells[1].trim_matches('`');
        let name = name.split('{').next().unwrap();
        let family = parsed
            .family(name)
            .unwrap_or_else(|| panic!("README lists {name}, not printed"));
        assert_eq!(cells[2], family.kind, "{name}");
        documented.push(name);
    }
    for name in &printed {
        assert!(
            documented.contains(name),
            "{name} is printed but not in the README's table"
        );
    }
    // A limit's metric is its config key with `hreg_` before it.
    let config = text(
        &std::process::Command::new(binary("hregd"))
            .args(["--socket", "/tmp/unused.sock", "--check-config"])
            .output()
            .unwrap()
            .stdout,
    );
    for name in printed.iter().filter(|n| n.contains("_max_")) {
        let key = name.trim_start_matches("hreg_");
        assert!(
            config.lines().any(|l| l.starts_with(&format!("{key} = "))),
            "{name}: no config key {key}"
        );
    }
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

/// `stats --json --details` parsed (one line).
fn stats_json(socket: &str) -> serde_json::Value {
    let out = hregctl(&["--socket", socket, "stats", "--json", "--details"], None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    json_lines(&out.stdout).pop().expect("one line")
}

/// Output that must be JSON objects, one per line.
fn json_lines(stdout: &[u8]) -> Vec<serde_json::Value> {
    let out = String::from_utf8(stdout.to_vec()).unwrap();
    assert!(out.ends_with('\n') || out.is_empty(), "{out:?}");
    out.lines()
        .map(|line| {
            let value: serde_json::Value =
                serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line:?}"));
            assert!(value.is_object(), "{line}");
            value
        })
        .collect()
}

/// A series: metric name, labels, value.
type Series = (String, Vec<(&'static str, String)>, f64);

/// Every series `stats --prometheus` must print, with its value, as the
/// JSON figures give it.
fn expected_series(json: &serde_json::Value) -> Vec<Series> {
    let num = |v: &serde_json::Value| v.as_f64().expect("a number");
    let mut series = vec![];
    let mut single = |name: &str, v: &serde_json::Value| {
        series.push((name.to_string(), vec![], num(v)));
    };
    single("hreg_objects", &json["objects"]);
    single("hreg_value_bytes", &json["value_bytes"]);
    single("hreg_sessions", &json["sessions"]);
    single("hreg_ops_total", &json["ops"]);
    single("hreg_ops_per_second", &json["ops_per_sec"]);
    single("hreg_reclaim_pending_bytes", &json["reclaim_pending_bytes"]);
    single("hreg_uptime_seconds", &json["uptime_secs"]);
    single("hreg_max_objects", &json["limits"]["max_objects"]);
    single("hreg_max_bytes", &json["limits"]["max_bytes"]);
    single("hreg_uid_max_rings", &json["limits"]["uid_max_rings"]);
    single("hreg_uid_descriptor_share", &json["limits"]["uid_max_fds"]);
    for hold in json["holds"].as_array().unwrap() {
        let label = vec![("uid", hold["uid"].to_string())];
        for (name, v) in [
            ("hreg_uid_rings", &hold["rings"]),
            ("hreg_uid_descriptors", &hold["fds"]),
            ("hreg_uid_descriptors_in_flight", &hold["fds_in_flight"]),
        ] {
            series.push((name.to_string(), label.clone(), num(v)));
        }
    }
    for uid in json["uids"].as_array().unwrap() {
        let label = vec![("uid", uid["uid"].to_string())];
        for (name, v) in [
            ("hreg_uid_objects", &uid["objects"]),
            ("hreg_uid_value_bytes", &uid["value_bytes"]),
            ("hreg_uid_max_objects", &json["limits"]["uid_max_objects"]),
            ("hreg_uid_max_bytes", &json["limits"]["uid_max_bytes"]),
            ("hreg_uid_references", &uid["references"]),
            ("hreg_uid_reserved", &uid["reserved"]),
            ("hreg_uid_credit_bytes", &uid["credit"]),
            (
                "hreg_uid_max_references",
                &json["limits"]["uid_max_references"],
            ),
        ] {
            series.push((name.to_string(), label.clone(), num(v)));
        }
    }
    for (i, n) in json["shards"].as_array().unwrap().iter().enumerate() {
        series.push((
            "hreg_shard_objects".into(),
            vec![("shard", i.to_string())],
            num(n),
        ));
    }
    for worker in json["workers"].as_array().unwrap() {
        let label = vec![("worker", worker["worker"].to_string())];
        series.push((
            "hreg_worker_rings".into(),
            label.clone(),
            num(&worker["rings"]),
        ));
        series.push(("hreg_worker_ops_total".into(), label, num(&worker["ops"])));
    }
    series
}

#[test]
fn stats_prometheus_is_well_formed_and_says_what_json_says() {
    let daemon = Daemon::start(&[
        "--workers",
        "2",
        "--max-objects",
        "1000",
        "--max-bytes",
        "1000000",
        "--uid-max-objects",
        "500",
        "--uid-max-bytes",
        "400000",
    ]);
    let socket = daemon.socket.to_str().unwrap();
    // Two sessions, a ring each, three objects.
    let a = daemon.client();
    let b = daemon.client();
    a.insert(b"one", 0).unwrap();
    a.insert(b"two22", hreg::SHARED).unwrap();
    b.insert(&[7u8; 100], 0).unwrap();
    // Quiet, so the rate reads the same in both snapshots.
    hreg_tests::wait_until("ops/s to settle at 0", || {
        stats_json(socket)["ops_per_sec"] == 0
    });

    let mut compared = false;
    for _ in 0..5 {
        let before = stats_json(socket);
        let out = hregctl(&["--socket", socket, "stats", "--prometheus"], None);
        let after = stats_json(socket);
        assert!(out.status.success(), "{}", text(&out.stderr));
        let exposition = String::from_utf8(out.stdout).unwrap();
        let parsed = hreg_tests::prometheus::parse(&exposition)
            .unwrap_or_else(|e| panic!("{e}\n{exposition}"));
        for family in &parsed.families {
            assert!(family.name.starts_with("hreg_"), "{}", family.name);
            assert!(!family.help.is_empty(), "{} has no help", family.name);
        }
        // The daemon's own figures, as the test made them.
        assert_eq!(parsed.value("hreg_objects", &[]), Some(3.0));
        assert_eq!(parsed.value("hreg_value_bytes", &[]), Some(108.0));
        assert_eq!(parsed.value("hreg_max_objects", &[]), Some(1000.0));
        assert_eq!(parsed.value("hreg_max_bytes", &[]), Some(1e6));
        let uid = rustix::process::getuid().as_raw().to_string();
        assert_eq!(
            parsed.value("hreg_uid_objects", &[("uid", &uid)]),
            Some(3.0)
        );
        assert_eq!(
            parsed.value("hreg_uid_max_objects", &[("uid", &uid)]),
            Some(500.0)
        );
        assert_eq!(
            parsed.value("hreg_uid_max_bytes", &[("uid", &uid)]),
            Some(400000.0)
        );
        // The two sessions reference their three objects; the default cap
        // on references is twice the one on objects.
        assert_eq!(
            parsed.value("hreg_uid_references", &[("uid", &uid)]),
            Some(3.0)
        );
        assert_eq!(
            parsed.value("hreg_uid_max_references", &[("uid", &uid)]),
            Some(1000.0)
        );
        assert_eq!(parsed.family("hreg_worker_rings").unwrap().samples.len(), 2);
        assert_eq!(parsed.sum("hreg_worker_rings"), Some(2.0));
        assert_eq!(
            parsed.sum("hreg_worker_ops_total"),
            parsed.value("hreg_ops_total", &[])
        );
        assert_eq!(parsed.sum("hreg_shard_objects"), Some(3.0));

        // Everything JSON says, Prometheus says, and nothing else; the
        // uptime may tick between the two. Retried when the daemon changed
        // between the snapshots (a session ending late).
        let strip = |mut v: serde_json::Value| {
            v["uptime_secs"] = serde_json::Value::Null;
            v
        };
        if strip(before.clone()) != strip(after) {
            continue;
        }
        let expected = expected_series(&before);
        assert_eq!(parsed.series().len(), expected.len(), "{exposition}");
        for (name, labels, value) in expected {
            let labels: Vec<(&str, &str)> = labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
            let got = parsed
                .value(&name, &labels)
                .unwrap_or_else(|| panic!("no {name}{labels:?} in\n{exposition}"));
            if name == "hreg_uptime_seconds" {
                assert!((got - value).abs() <= 2.0, "{name}: {got} vs {value}");
            } else {
                assert_eq!(got, value, "{name}{labels:?}");
            }
        }
        compared = true;
        break;
    }
    assert!(compared, "the daemon's figures never held still");
}

#[test]
fn stats_shows_workers_in_the_table_and_json() {
    let daemon = Daemon::start(&["--workers", "3"]);
    let socket = daemon.socket.to_str().unwrap();
    let client = daemon.client();
    client.insert(b"x", 0).unwrap();
    let json = stats_json(socket);
    let workers = json["workers"].as_array().unwrap();
    assert_eq!(workers.len(), 3);
    let rings: u64 = workers.iter().map(|w| w["rings"].as_u64().unwrap()).sum();
    let ops: u64 = workers.iter().map(|w| w["ops"].as_u64().unwrap()).sum();
    assert_eq!(rings, 1);
    assert_eq!(ops, json["ops"].as_u64().unwrap());
    let plain = hregctl(&["--socket", socket, "stats"], None);
    let table = text(&plain.stdout);
    let header = table
        .lines()
        .position(|l| l.split_whitespace().eq(["WORKER", "RINGS", "OPS"]))
        .unwrap_or_else(|| panic!("no worker table in\n{table}"));
    let rows: Vec<Vec<&str>> = table
        .lines()
        .skip(header + 1)
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(rows.len(), 3, "{table}");
    for (i, row) in rows.iter().enumerate() {
        assert_eq!(row[0], i.to_string());
        assert_eq!(row[1], workers[i]["rings"].to_string());
    }
}

/// Handles granted ahead for posted inserts show apart from objects, in
/// the JSON and the table: after one posted insert, the rest of the first
/// grant is reserved, with byte credit; once the session ends, nothing.
#[test]
fn stats_shows_what_is_granted_ahead_apart_from_objects() {
    let daemon = Daemon::start(&[]);
    let socket = daemon.socket.to_str().unwrap();
    let client = daemon.client();
    client.insert(b"posted", 0).unwrap();
    client.flush().unwrap();
    let json = stats_json(socket);
    let me = rustix::process::getuid().as_raw();
    let uid = json["uids"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["uid"] == me)
        .unwrap_or_else(|| panic!("no row for uid {me}: {json}"));
    assert_eq!(uid["objects"], 1, "{uid}");
    let reserved = uid["reserved"].as_u64().unwrap();
    assert!(reserved >= 1, "the rest of the grant is reserved: {uid}");
    assert!(uid["credit"].as_u64().unwrap() > 0, "{uid}");
    let table = text(&hregctl(&["--socket", socket, "stats"], None).stdout);
    assert!(
        table.contains(&format!("{reserved} handles")),
        "no reserved column in\n{table}"
    );
    drop(client);
    wait_until("the session's grant to go back", || {
        stats_json(socket)["uids"]
            .as_array()
            .unwrap()
            .iter()
            .all(|u| u["reserved"] == 0 && u["credit"] == 0)
    });
}
