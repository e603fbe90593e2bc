//! The restart stress test of issue 12: four client processes (two Rust,
//! `hreg-test-client SOCKET restart-load SEED`; two C, `tests/c/restart_load.c`)
//! run a mixed load of checksummed values (insert, get, replace, retain,
//! release, remove; DETACHED and not; 8 B to 300 KiB) while hregd, keeping
//! its state in a `--state-dir`, is stopped with SIGTERM and started again,
//! then killed with SIGKILL and started again, each at a random moment of
//! the load. The clients take their sessions back by themselves.
//!
//! After each restart every client settles what DISCONNECTED left
//! uncertain and reports what it holds (`hreg_tests::restart_load`), and
//! the test checks, through its own client: every object a client knows is
//! there with its exact bytes and flags, its handle resolves, and it has
//! exactly the references its client holds (the sessions got theirs back);
//! every other object is one a client's DISCONNECTED insert may have made
//! (it is removed), and nothing else exists; each client keeps its session
//! (same id, same pid); no client ever saw a wrong value, a lost object or
//! an unexpected status. Twice (once per signal) a fifth client is killed
//! while the daemon is away, and the daemon comes back with a short
//! `--resume-grace`: its references are still held right after the
//! restart, and dropped once the grace has passed (its non-DETACHED
//! objects go, its DETACHED ones stay, unreferenced). At the end, once the
//! clients have ended, the registry holds what they left DETACHED and
//! nothing else, and the daemon's objects, descriptors, mappings, session
//! records and memory are back at their baseline.
//!
//! Rounds: `HREG_RESTART_ROUNDS` (`N` for N of each signal, or `T+K`),
//! else 20+20 in an optimized build and 5+5 in a debug one (`cargo test`).
//! The random moments come from `HREG_RESTART_SEED` (else the clock); the
//! seed is printed, with the restart times and the longest stall a client
//! saw (from its first DISCONNECTED to its next call that worked).

use hreg::{Client, Error, DETACHED};
use hreg_tests::load_clients::{
    check_object, check_registry, handle, list_all, pause_all, LoadClient,
};
use hreg_tests::restart_load::{ObjectLine, Report};
use hreg_tests::{wait_until, Daemon, Rng, PATIENCE};
use rustix::process::Signal;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The grace period of the ordinary rounds: the clients come back well
/// within it.
const GRACE: Duration = Duration::from_secs(10);
/// The grace period of the rounds where a client is killed while the
/// daemon is away.
const SHORT_GRACE: Duration = Duration::from_secs(3);
/// How far the daemon's private memory may stay above its baseline after
/// the load (allocator caches, the reference counts of slots made).
const ANON_SLACK: u64 = 2 << 20;
/// Free pages a heap may keep allocated beyond its blocks
/// (`hreg_registry`'s heap).
const ALLOCATED_AHEAD: u64 = hreg_registry::memory_facts::HEAP_IDLE_MAX;

/// How many rounds of each signal: `HREG_RESTART_ROUNDS`, or the default
/// of the build.
fn rounds() -> (usize, usize) {
    let default = if cfg!(debug_assertions) { 5 } else { 20 };
    let Ok(text) = std::env::var("HREG_RESTART_ROUNDS") else {
        return (default, default);
    };
    let number = |s: &str| -> usize {
        s.trim()
            .parse()
            .unwrap_or_else(|_| panic!("HREG_RESTART_ROUNDS={text:?}: N or T+K"))
    };
    match text.split_once('+') {
        Some((term, kill)) => (number(term), number(kill)),
        None => (number(&text), number(&text)),
    }
}

fn seed() -> u64 {
    hreg_tests::seed_from_env("HREG_RESTART_SEED")
}

/// Session id of each client's process, as SESSIONS lists them.
fn session_ids(watch: &Client, clients: &[LoadClient]) -> Vec<Option<u64>> {
    let sessions = watch.sessions().expect("SESSIONS");
    clients
        .iter()
        .map(|c| sessions.iter().find(|s| s.pid == c.pid()).map(|s| s.id))
        .collect()
}

/// Bytes the files of the state directory take (tmpfs: memory), slot
/// chunks (`d<D>-s<K>`, which never shrink) left out.
fn state_bytes(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let is_slots = |name: &str| {
        name.strip_prefix('d')
            .and_then(|rest| rest.split_once("-s"))
            .is_some_and(|(d, k)| d.parse::<u16>().is_ok() && k.parse::<u32>().is_ok())
    };
    std::fs::read_dir(dir)
        .expect("read the state directory")
        .filter_map(Result::ok)
        .filter(|e| !is_slots(&e.file_name().to_string_lossy()))
        .filter_map(|e| e.metadata().ok())
        .filter(|m| m.is_file())
        .map(|m| m.blocks() * 512)
        .sum()
}

fn session_records(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .expect("read the state directory")
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with("session-"))
        .count()
}

fn as_strs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

fn daemon_args(state: &Path, grace: Duration) -> Vec<String> {
    vec![
        "--state-dir".into(),
        state.to_string_lossy().into_owned(),
        "--resume-grace".into(),
        grace.as_secs().to_string(),
        "--workers".into(),
        "2".into(),
    ]
}

/// Waits until the daemon's descriptors stop changing (the connections of
/// its start, made to see it accept, are closed).
fn settle_descriptors(daemon: &Daemon) {
    let mut last = (daemon.fd_count(), 0);
    wait_until("the daemon's descriptors to settle", || {
        std::thread::sleep(Duration::from_millis(100));
        let now = daemon.fd_count();
        last = if now == last.0 {
            (now, last.1 + 1)
        } else {
            (now, 0)
        };
        last.1 >= 3
    });
}

/// Waits until the test's own client works again after a restart.
fn wait_back(watch: &Client) {
    wait_until("the test's own session to come back", || {
        watch.stats().is_ok()
    });
}

/// A client killed while the daemon is away: what it held (its last
/// report, made paused, so exact).
struct Victim {
    report: Report,
}

impl Victim {
    /// Starts a fifth client, lets it load for a moment and pauses it: what
    /// it holds is then exactly its report.
    fn start(client: LoadClient) -> (LoadClient, Victim) {
        let mut client = client;
        std::thread::sleep(Duration::from_millis(150));
        client.send("pause");
        let report = client.report();
        assert!(
            report.counts.wrong == 0 && report.counts.unexpected == 0 && report.counts.lost == 0,
            "the victim: {:?}",
            report.counts
        );
        (client, Victim { report })
    }

    /// Right after the restart: its session is kept, with its references.
    fn check_kept(&self, watch: &Client) {
        let listed = list_all(watch);
        for o in &self.report.objects {
            check_object(
                watch,
                &listed,
                o,
                "the killed client, before its grace ended",
            );
        }
    }

    /// Once the grace has passed: its references are dropped as if it had
    /// died (its non-DETACHED objects go; its DETACHED ones stay, with no
    /// reference), and no earlier. Then its DETACHED objects are removed.
    fn check_given_up(&self, watch: &Client, restarted: Instant) {
        let attached: Vec<&ObjectLine> = self
            .report
            .objects
            .iter()
            .filter(|o| o.flags & DETACHED == 0)
            .collect();
        wait_until("the killed client's references to be dropped", || {
            let listed = list_all(watch);
            attached.iter().all(|o| !listed.contains_key(&o.handle))
        });
        assert!(
            attached.is_empty() || restarted.elapsed() >= SHORT_GRACE,
            "references dropped after {:?}, before the grace of {SHORT_GRACE:?}",
            restarted.elapsed()
        );
        for o in &attached {
            assert!(matches!(watch.get(handle(o.handle)), Err(Error::Stale)));
        }
        let listed = list_all(watch);
        for o in self
            .report
            .objects
            .iter()
            .filter(|o| o.flags & DETACHED != 0)
        {
            let mut unreferenced = o.clone();
            unreferenced.refs = 0;
            check_object(
                watch,
                &listed,
                &unreferenced,
                "the killed client's DETACHED",
            );
            watch.remove(handle(o.handle)).expect("remove");
        }
    }
}

/// What the run measured, for its closing lines.
struct Figures {
    /// Per restart: the signal, and the time from it to a new client being
    /// served (the old daemon's exit, then the new one's start).
    stop_to_serving: Vec<(Signal, Duration)>,
    /// Objects made by inserts that returned DISCONNECTED, found and removed.
    orphans: usize,
}

#[test]
fn four_clients_keep_everything_through_stops_and_kills() {
    let (term_rounds, kill_rounds) = rounds();
    let seed = seed();
    println!("restart load: {term_rounds} SIGTERM + {kill_rounds} SIGKILL rounds, HREG_RESTART_SEED={seed}");
    let mut rng = Rng::new(seed);
    let dir = tempfile::tempdir().expect("temp dir");
    let state: PathBuf = dir.path().join("state");
    let socket = dir.path().join("hreg.sock");
    let args = daemon_args(&state, GRACE);
    let short_args = daemon_args(&state, SHORT_GRACE);
    let mut daemon = Daemon::start_at(dir, socket.clone(), &as_strs(&args));
    let watch = daemon.client();
    // The baseline: the test's own session with a ring (as at the end, when
    // it removes what the clients left), once the daemon's start is over.
    let warm_up = watch.insert(b"warm-up", 0).expect("insert");
    watch.remove(warm_up).expect("remove");
    settle_descriptors(&daemon);

    let base_fds = daemon.fd_count();
    let base_maps = daemon.maps_count();
    let base_anon = daemon.status_bytes("RssAnon");
    let base_state = state_bytes(&state);

    let mut clients = vec![
        LoadClient::rust("rust-1", &socket, rng.next_u64()),
        LoadClient::rust("rust-2", &socket, rng.next_u64()),
        LoadClient::c("c-1", &socket, rng.next_u64()),
        LoadClient::c("c-2", &socket, rng.next_u64()),
    ];
    let sessions = session_ids(&watch, &clients);
    assert!(sessions.iter().all(Option::is_some), "{sessions:?}");

    let mut figures = Figures {
        stop_to_serving: Vec::new(),
        orphans: 0,
    };
    let total = term_rounds + kill_rounds;
    for round in 0..total {
        let signal = if round < term_rounds {
            Signal::TERM
        } else {
            Signal::KILL
        };
        let when = format!("after round {round} ({signal:?})");
        let victim_round = round == term_rounds / 2 || round == term_rounds + kill_rounds / 2;
        let victim = victim_round.then(|| {
            let client = if signal == Signal::TERM {
                LoadClient::rust("victim (Rust)", &socket, rng.next_u64())
            } else {
                LoadClient::c("victim (C)", &socket, rng.next_u64())
            };
            Victim::start(client)
        });

        // A random moment of the load.
        std::thread::sleep(Duration::from_millis(20 + rng.below(280)));
        daemon.signal(signal);
        let stopped = Instant::now();
        let _ = daemon.child.wait();
        let exited = stopped.elapsed();
        let victim = victim.map(|(client, victim)| {
            client.kill9();
            victim
        });
        std::thread::sleep(Duration::from_millis(rng.below(50)));
        let restart_args = if victim.is_some() { &short_args } else { &args };
        let restarted = Instant::now();
        let starting = daemon.restart(&as_strs(restart_args));
        figures.stop_to_serving.push((signal, exited + starting));
        wait_back(&watch);
        if let Some(victim) = &victim {
            victim.check_kept(&watch);
        }

        let reports = pause_all(&mut clients, &when);
        let mut named: Vec<(&str, &Report)> = clients
            .iter()
            .map(|c| c.name.as_str())
            .zip(reports.iter())
            .collect();
        if let Some(victim) = &victim {
            named.push(("the killed client", &victim.report));
        }
        figures.orphans += check_registry(&watch, &named, &when);
        assert_eq!(
            session_ids(&watch, &clients),
            sessions,
            "{when}: every client keeps its session"
        );
        if let Some(victim) = &victim {
            victim.check_given_up(&watch, restarted);
        }
        for client in &mut clients {
            client.send("go");
        }
    }

    // The end: every client ends its session; what it held goes, what it
    // left DETACHED stays, and nothing else.
    let reports = pause_all(&mut clients, "at the end");
    let named: Vec<(&str, &Report)> = clients
        .iter()
        .map(|c| c.name.as_str())
        .zip(reports.iter())
        .collect();
    figures.orphans += check_registry(&watch, &named, "at the end");
    let longest_stall = reports
        .iter()
        .map(|r| Duration::from_micros(r.counts.longest_stall_us))
        .max()
        .unwrap_or_default();
    let ops: u64 = reports.iter().map(|r| r.counts.ops).sum();
    let disconnected: u64 = reports.iter().map(|r| r.counts.disconnected).sum();
    for client in clients {
        client.quit();
    }
    wait_until("the clients' sessions to end", || {
        watch.stats().expect("stats").sessions == 1
    });
    let listed = list_all(&watch);
    let mut left = 0;
    for o in reports.iter().flat_map(|r| &r.objects) {
        if o.flags & DETACHED != 0 {
            let mut unreferenced = o.clone();
            unreferenced.refs = 0;
            check_object(
                &watch,
                &listed,
                &unreferenced,
                "a DETACHED object at the end",
            );
            watch.remove(handle(o.handle)).expect("remove");
            left += 1;
        } else {
            assert!(matches!(watch.get(handle(o.handle)), Err(Error::Stale)));
        }
    }
    assert_eq!(
        listed.len(),
        left,
        "only the DETACHED objects outlive their clients"
    );
    let stats = watch.stats().expect("stats");
    assert_eq!((stats.objects, stats.value_bytes), (0, 0));
    wait_until("the memory of removed values to be reclaimed", || {
        watch.usage().expect("usage").reclaim_pending == 0
    });
    let back = Instant::now();
    while daemon.fd_count() != base_fds || daemon.maps_count() != base_maps {
        assert!(
            back.elapsed() < PATIENCE,
            "descriptors {} and mappings {} not back at their baseline {base_fds} and {base_maps}",
            daemon.fd_count(),
            daemon.maps_count()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(
        session_records(&state),
        1,
        "one session record: the test's own"
    );
    let anon = daemon.status_bytes("RssAnon");
    assert!(
        anon <= base_anon + ANON_SLACK,
        "the daemon's private memory: {anon} bytes, baseline {base_anon}"
    );
    // Heap pages of freed values come back when the blocks are reused, or
    // (all at once, for an empty registry) when a daemon adopts the state:
    // after one more restart the state takes what it took at the start
    // (slot tables, which never shrink, aside; the heap may hold pages it
    // allocated ahead of its next block and never wrote).
    daemon.signal(Signal::TERM);
    daemon.restart(&as_strs(&args));
    wait_back(&watch);
    wait_until("the heap's pages to be given back", || {
        state_bytes(&state) <= base_state + ALLOCATED_AHEAD
    });
    println!(
        "restart load: {ops} operations ({disconnected} DISCONNECTED); {} orphans of \
         DISCONNECTED inserts removed; daemon RssAnon {} KiB after the load (baseline {} KiB); \
         state {} KiB after one more restart (baseline {} KiB)",
        figures.orphans,
        anon >> 10,
        base_anon >> 10,
        state_bytes(&state) >> 10,
        base_state >> 10,
    );
    for (signal, name) in [(Signal::TERM, "SIGTERM"), (Signal::KILL, "SIGKILL")] {
        let mut times: Vec<Duration> = figures
            .stop_to_serving
            .iter()
            .filter(|(s, _)| *s == signal)
            .map(|(_, d)| *d)
            .collect();
        times.sort();
        if let (Some(first), Some(last)) = (times.first(), times.last()) {
            println!(
                "restart load: {name}: stop to serving again: median {:?}, min {first:?}, max {last:?} ({} rounds)",
                times[times.len() / 2],
                times.len()
            );
        }
    }
    println!("restart load: longest stall a client saw: {longest_stall:?}");
}
