//! The test's side of the restart-load clients ([`crate::restart_load`]):
//! starting them (as they are, or under a wrapper such as `unshare`),
//! pausing them for their reports, and checking the registry against what
//! they report. Used by the restart stress test (`tests/restart_load.rs`)
//! and the container topology test (`tests/containers.rs`).

use crate::c_programs::{c_tests_dir, program};
use crate::restart_load::{ObjectLine, Report};
use crate::{binary, fnv, value_is_intact, PATIENCE};
use hreg::{Client, Handle, ListFilter, ObjectInfo, DETACHED};
use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

/// One load client process (see `hreg_tests::restart_load`).
pub struct LoadClient {
    /// What the test calls it in its messages.
    pub name: String,
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
}

impl LoadClient {
    /// The Rust load client, `hreg-test-client SOCKET restart-load SEED`.
    pub fn rust(name: &str, socket: &Path, seed: u64) -> LoadClient {
        let mut command = Command::new(binary("hreg-test-client"));
        command
            .arg(socket)
            .arg("restart-load")
            .arg(seed.to_string());
        LoadClient::start(name, command)
    }

    /// The C load client, `tests/c/restart_load.c`.
    pub fn c(name: &str, socket: &Path, seed: u64) -> LoadClient {
        let mut command = Command::new(program(&c_tests_dir().join("restart_load.c")));
        command.arg(socket).arg(seed.to_string());
        LoadClient::start(name, command)
    }

    /// Starts `command` (a load client, or a wrapper such as `unshare`
    /// that runs one with the same stdin and stdout) and waits for its
    /// `ready`.
    pub fn start(name: &str, mut command: Command) -> LoadClient {
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        let stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        let (send, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in stdout.lines() {
                let Ok(line) = line else { return };
                if send.send(line).is_err() {
                    return;
                }
            }
        });
        let stdin = child.stdin.take();
        let client = LoadClient {
            name: name.to_owned(),
            child,
            stdin,
            lines,
        };
        assert_eq!(client.line(), "ready", "{name}");
        client
    }

    /// The pid of the process [`LoadClient::start`] ran.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The client's next line; panics if none comes in time (a client that
    /// hangs fails the test instead of hanging it).
    pub fn line(&self) -> String {
        self.lines
            .recv_timeout(PATIENCE * 3)
            .unwrap_or_else(|_| panic!("{}: no line in {:?}", self.name, PATIENCE * 3))
    }

    pub fn send(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        writeln!(stdin, "{line}")
            .and_then(|()| stdin.flush())
            .unwrap_or_else(|e| panic!("{}: {line}: {e}", self.name));
    }

    /// The report that answers an earlier `pause`.
    pub fn report(&self) -> Report {
        Report::read(|| self.line()).unwrap_or_else(|e| panic!("{}: {e}", self.name))
    }

    /// `quit` (after a pause): the client ends its session and exits 0.
    pub fn quit(mut self) {
        self.send("quit");
        assert_eq!(self.line(), "bye", "{}", self.name);
        drop(self.stdin.take());
        let started = Instant::now();
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                break status;
            }
            assert!(started.elapsed() < PATIENCE, "{} did not exit", self.name);
            std::thread::sleep(Duration::from_millis(10));
        };
        assert!(status.success(), "{} exited with {status}", self.name);
    }

    /// Kills the client with SIGKILL and reaps it.
    pub fn kill9(mut self) {
        self.child.kill().expect("kill a client");
        let _ = self.child.wait();
    }
}

impl Drop for LoadClient {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Pauses every client and collects their reports (they settle at once,
/// in parallel); each must have seen nothing wrong.
pub fn pause_all(clients: &mut [LoadClient], when: &str) -> Vec<Report> {
    for client in clients.iter_mut() {
        client.send("pause");
    }
    clients
        .iter()
        .map(|client| {
            let report = client.report();
            let c = &report.counts;
            assert!(
                c.wrong == 0 && c.lost == 0 && c.unexpected == 0,
                "{} {when}: {c:?} (see its stderr)",
                client.name
            );
            report
        })
        .collect()
}

/// Every live object, by handle.
pub fn list_all(watch: &Client) -> HashMap<u64, ObjectInfo> {
    let all = watch.list_all(ListFilter::default()).expect("LIST");
    all.into_iter().map(|o| (o.handle, o)).collect()
}

pub fn handle(raw: u64) -> Handle {
    Handle::new(raw).expect("a handle is never 0")
}

/// Checks one known object: listed with its flags, length and `refs`
/// references, and its handle resolves to its exact bytes.
pub fn check_object(watch: &Client, listed: &HashMap<u64, ObjectInfo>, o: &ObjectLine, who: &str) {
    let info = listed
        .get(&o.handle)
        .unwrap_or_else(|| panic!("{who}: object {} is gone", o.handle));
    assert_eq!(info.flags & DETACHED, o.flags & DETACHED, "{who}: flags");
    assert_eq!(info.size, o.len, "{who}: {} size", o.handle);
    assert_eq!(
        info.refs, o.refs,
        "{who}: object {} holds other references than its client's",
        o.handle
    );
    let value = watch
        .get(handle(o.handle))
        .unwrap_or_else(|e| panic!("{who}: object {} does not resolve: {e}", o.handle));
    assert!(
        value.len() as u64 == o.len && fnv(&value) == o.fnv && value_is_intact(&value),
        "{who}: object {} has other bytes than its client wrote",
        o.handle
    );
}

/// The whole registry against the clients' reports (`who` names each):
/// every known object is there, exact; every other object is one of their
/// DISCONNECTED inserts, and is removed. Returns how many were removed.
pub fn check_registry(watch: &Client, reports: &[(&str, &Report)], when: &str) -> usize {
    let listed = list_all(watch);
    let mut known = HashSet::new();
    for (who, report) in reports {
        for o in &report.objects {
            check_object(watch, &listed, o, &format!("{who} {when}"));
            assert!(known.insert(o.handle), "{who}: {} twice", o.handle);
        }
    }
    let mut maybes: Vec<_> = reports.iter().flat_map(|(_, r)| &r.maybes).collect();
    let mut removed = 0;
    for (&raw, info) in &listed {
        if known.contains(&raw) {
            continue;
        }
        let value = watch.get(handle(raw)).expect("a listed object resolves");
        let made = maybes.iter().position(|m| {
            m.len == value.len() as u64
                && m.fnv == fnv(&value)
                && m.flags & DETACHED == info.flags & DETACHED
        });
        let Some(made) = made else {
            panic!("{when}: object {raw} ({info:?}) was made by nobody");
        };
        maybes.swap_remove(made);
        watch.remove(handle(raw)).expect("remove an orphan");
        removed += 1;
    }
    assert_eq!(
        watch.stats().expect("stats").objects,
        known.len() as u64,
        "{when}: STATS and LIST differ"
    );
    removed
}
