//! Issue 17 rule 4's bound, checked: every attack of the issue at once,
//! each by its own real uid under small quotas, while the daemon's memory
//! is sampled; it stays under the bound the README states, computed from
//! the daemon's own settings by `hregd::bound` (one source for the README's
//! formula, the code and this test).
//!
//! The attacks (their helpers are the rows' own):
//! - 1/1b: a victim (uid 1234) borrows its own SHARED value and the
//!   attacker's (uid 65534) 1 MiB SHARED value, which the attacker replaces
//!   in a loop (`hreg-borrower`);
//! - 2: uid 65533 walks the size classes, filling its byte quota with one
//!   size, emptying it, and on to the next (`hreg-heap-client class-walk`);
//! - 3: uid 65532 holds one borrow and churns 64-byte replaces
//!   (`hreg-attack pin-churn`);
//! - 7: uid 4321 inserts its quota of empty SHARED objects and three more of
//!   its sessions retain them all (`hreg-tenant`);
//! - 16: uid 65531 fragments the SHARED heap over large sizes
//!   (`hreg-heap-client fragment`).
//!
//! Memory is what `hreg_tests::memory::footprint` reads: the daemon's
//! private pages plus every page of every memfd it holds or maps (heaps,
//! slot tables, session memory), sampled every 20 ms; the test asserts
//! both that and RSS stay under the bound, and prints each term.
//!
//! To watch it fail, `HREG_BOUND_RAISE=K` runs the daemon with its byte and
//! object quotas K times higher than the bound is computed for.

use hreg_tests::memory::{footprint, Footprint};
use hreg_tests::{is_root, required_in_ci, Daemon, Helper, NOBODY, OTHER_USER};
use hregd::bound::{sum, MemoryBound, Term, UidShape};
use std::os::unix::fs::PermissionsExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

const MIB: u64 = 1 << 20;

/// The uids, one per attack (row 1 has two).
const VICTIM: u32 = 1234;
const ATTACKER: u32 = NOBODY;
const WALKER: u32 = OTHER_USER;
const CHURNER: u32 = 65532;
const RETAINER: u32 = 4321;
const FRAGMENTER: u32 = 65531;
const UIDS: [u32; 6] = [VICTIM, ATTACKER, WALKER, CHURNER, RETAINER, FRAGMENTER];

/// The quotas the bound is computed for.
const UID_MAX_BYTES: u64 = 8 * MIB;
const MAX_BYTES: u64 = 64 * MIB;
const UID_MAX_OBJECTS: u64 = 4096;

/// How long every attack runs at once while memory is sampled.
const ATTACK_TIME: Duration = Duration::from_secs(8);

/// The daemon's flags, its quotas multiplied by `raise`.
fn flags(raise: u64) -> Vec<String> {
    [
        ("--max-bytes", MAX_BYTES * raise),
        ("--uid-max-bytes", UID_MAX_BYTES * raise),
        ("--max-objects", 1 << 20),
        ("--uid-max-objects", UID_MAX_OBJECTS * raise),
        ("--uid-max-references", 2 * UID_MAX_OBJECTS * raise),
        ("--max-value-size", MIB),
        ("--max-sessions", 64),
        ("--uid-max-sessions", 4),
        ("--uid-max-rings", 8),
        ("--max-rings", 8),
        ("--ring-entries", 64),
        ("--data-size", 64 << 10),
        ("--workers", 2),
        ("--shards", 8),
    ]
    .iter()
    .flat_map(|(flag, value)| [flag.to_string(), value.to_string()])
    .collect()
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / MIB as f64)
}

/// The number after `key=` in a helper's line.
fn count(line: &str, key: &str) -> u64 {
    line.split_whitespace()
        .find_map(|word| word.strip_prefix(key)?.strip_prefix('='))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no {key}= in {line:?}"))
}

fn show(what: &str, terms: &[Term], times: u64) {
    println!("  {what} (× {times}): {}", mib(sum(terms)));
    for term in terms {
        println!("    {:<22} {:>10}", term.name, mib(term.bytes));
    }
}

#[test]
fn every_attack_at_once_stays_under_the_stated_bound() {
    if !required_in_ci("root (clients of other uids)", is_root()) {
        return;
    }
    let raise: u64 = std::env::var("HREG_BOUND_RAISE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1)
        .max(1);
    let stated = flags(1);
    let stated: Vec<&str> = stated.iter().map(String::as_str).collect();
    let mut with_socket = vec!["--socket", "/unused"];
    with_socket.extend_from_slice(&stated);
    let config = hregd::bound::settings_of(&with_socket).expect("the test's flags");
    let bound = MemoryBound::of(&config);
    let running = flags(raise);
    let running: Vec<&str> = running.iter().map(String::as_str).collect();
    let daemon = Daemon::start_reachable(&running);
    let pid = daemon.pid();
    let idle = footprint(pid);
    // Root: the harness's first session (gone) and this monitor, a ring
    // each.
    let root = UidShape {
        sessions: 2,
        rings: 2,
        connection_shares: false,
    };
    let monitor = daemon.client();
    let limit = bound.total(&config, idle.total(), UIDS.len() as u64, Some(root));
    let socket = daemon.socket.clone();
    let spawn = |program: &str, args: &[&str], uid: u32| {
        Helper::spawn_program(program, &socket, args, Some(uid))
    };

    // Row 1/1b: the victim borrows its own value and the attacker's.
    let mut victim = spawn("hreg-borrower", &[], VICTIM);
    let mut attacker = spawn("hreg-borrower", &[], ATTACKER);
    let own = victim.ask("insert 200 1 shared");
    assert_eq!(victim.ask(&format!("borrow {own}")), "ok 200");
    let churned = attacker.ask(&format!("insert {MIB} 2 shared"));
    assert!(churned.parse::<u64>().is_ok(), "insert: {churned}");
    assert_eq!(
        victim.ask(&format!("borrow {churned}")),
        format!("ok {MIB}")
    );
    // Row 7: the quota's worth of empty SHARED objects, and three more
    // sessions of the uid retaining them all.
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let handles = dir.path().join("empty").to_str().unwrap().to_string();
    let tenant = || {
        let mut t = spawn("hreg-tenant", &[], RETAINER);
        assert_eq!(t.line(), "ready");
        t
    };
    let mut inserter = tenant();
    let out = inserter.ask(&format!("insert {UID_MAX_OBJECTS} 0 shared {handles}"));
    assert_eq!(count(&out, "inserted"), UID_MAX_OBJECTS, "{out}");
    let mut retainers: Vec<Helper> = (0..3).map(|_| tenant()).collect();

    let stop = AtomicBool::new(false);
    let began = Instant::now();
    let (peak, samples, replaces, retained, said) = std::thread::scope(|scope| {
        let sampler = scope.spawn(|| {
            let (mut peak, mut samples) = (idle, 0u32);
            while !stop.load(Ordering::Relaxed) {
                peak = peak.max(footprint(pid));
                samples += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
            (peak, samples)
        });
        let replacer = scope.spawn(|| {
            let mut replaces = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let answer = attacker.ask(&format!("replace {churned} {MIB} {} 8", 3 + replaces));
                assert_eq!(answer, "ok", "the attacker's replaces");
                replaces += 8;
            }
            replaces
        });
        let retainer = scope.spawn(|| {
            retainers
                .iter_mut()
                .map(|r| r.ask(&format!("retain {handles}")))
                .collect::<Vec<String>>()
        });
        let walker = spawn(
            "hreg-heap-client",
            &["class-walk", &UID_MAX_BYTES.to_string(), "loop"],
            WALKER,
        );
        let (churner, ready) = Helper::attack(&socket, "pin-churn", Some(CHURNER));
        let fragmenter = spawn(
            "hreg-heap-client",
            &["fragment", &UID_MAX_BYTES.to_string()],
            FRAGMENTER,
        );
        let retained = retainer.join().expect("the retainers");
        std::thread::sleep(ATTACK_TIME.saturating_sub(began.elapsed()));
        // What each uid is charged for while every attack runs.
        let charged: Vec<String> = monitor
            .usage()
            .expect("usage")
            .uids
            .iter()
            .map(|u| {
                format!(
                    "{}: {} objects, {} value bytes, {} references",
                    u.uid, u.objects, u.value_bytes, u.references
                )
            })
            .collect();
        println!("charged while the attacks run: {}", charged.join("; "));
        let mut said = Vec::new();
        for mut helper in [walker, fragmenter] {
            helper.close_input();
            said.push(helper.line());
            helper.finish();
        }
        churner.finish();
        stop.store(true, Ordering::Relaxed);
        let replaces = replacer.join().expect("the attacker");
        let (peak, samples) = sampler.join().expect("the sampler");
        println!(
            "row 3: pin churn {ready}; row 2: {}; row 16: {}",
            said[0], said[1]
        );
        (peak, samples, replaces, retained, said)
    });
    let taken: u64 = retained.iter().map(|line| count(line, "done")).sum();
    println!(
        "row 7: {UID_MAX_OBJECTS} empty SHARED objects; retains by 3 more sessions: {retained:?}"
    );
    let intact = victim.ask("check");
    println!(
        "row 1: the attacker replaced its 1 MiB SHARED value {replaces} times; borrows {intact}"
    );
    let after = footprint(pid);
    let usage = monitor.usage().expect("usage");
    drop(monitor);

    println!(
        "memory bound ({} uids under the caps and root; the daemon's quotas × {raise}):",
        UIDS.len()
    );
    println!("  idle daemon: {}", mib(idle.total()));
    show("fixed", &bound.fixed, 1);
    show("per uid", &bound.per_uid, UIDS.len() as u64);
    println!("  bound: {}", mib(limit));
    println!(
        "measured over {samples} samples in {:.1} s: peak footprint {} (private {}, memfds {}, \
         of which heaps {}), peak RSS {}; idle {}; at the end {} with {} waiting reclamation",
        began.elapsed().as_secs_f64(),
        mib(peak.total()),
        mib(peak.private),
        mib(peak.memfds),
        mib(peak.heap),
        mib(peak.rss),
        mib(idle.total()),
        mib(after.total()),
        mib(usage.reclaim_pending),
    );
    check(peak, idle, limit);
    // Each attack did what it does. Row 2: from one size to the next at
    // least (the first size's freed space offered to the second); row 16:
    // values kept across sizes; row 7: the uid's references stop at
    // uid_max_references; row 1: the victim's borrows kept their bytes.
    assert!(count(&said[0], "classes") >= 2, "{}", said[0]);
    assert!(count(&said[1], "kept") >= 8, "{}", said[1]);
    assert_eq!(
        taken,
        UID_MAX_OBJECTS * (2 * raise - 1).min(3),
        "{retained:?}"
    );
    assert_eq!(intact, "intact 2");
}

/// The assertions on the samples: under the bound, and above the idle
/// daemon by at least one uid's byte quota (the attacks did make it keep
/// memory, so the check is not vacuous).
fn check(peak: Footprint, idle: Footprint, limit: u64) {
    assert!(
        peak.total() <= limit,
        "the daemon's footprint reached {}, over the bound of {}",
        mib(peak.total()),
        mib(limit)
    );
    assert!(
        peak.rss <= limit,
        "the daemon's RSS reached {}, over the bound of {}",
        mib(peak.rss),
        mib(limit)
    );
    assert!(
        peak.total() >= idle.total() + UID_MAX_BYTES,
        "the attacks made the daemon keep less than one uid's quota: {} → {}",
        mib(idle.total()),
        mib(peak.total())
    );
}
