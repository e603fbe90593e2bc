//! The daemon's heap memory follows the live values (issue 17 row 2): a
//! uid that fills its byte quota with one value size, removes it all and
//! goes on with the next size (24 sizes from 49 B to 56 KiB) leaves the
//! daemon's heaps no larger than one quota's worth of blocks while it runs,
//! and back near where they started once it is gone. Before the heap
//! coalesced and gave free pages back, each size kept its own free blocks:
//! 4 kB → 197 MB of heap with an 8 MiB quota, kept after the attacker left.
//!
//! The heap's memory is read from the daemon's heap memfds themselves
//! (their allocated blocks, through `/proc/PID/fd`), not from its RSS.

use hreg_tests::{is_root, required_in_ci, wait_until, Daemon, Helper, NOBODY};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

/// The attacker's byte quota.
const QUOTA: u64 = 8 << 20;

fn heap_bytes(daemon: &Daemon) -> u64 {
    hreg_tests::memory::heap_bytes(daemon.pid())
}

#[test]
fn walking_size_classes_leaves_the_heap_where_it_was() {
    if !required_in_ci("root (to run the attacker as another uid)", is_root()) {
        return;
    }
    let quota = QUOTA.to_string();
    let daemon = Daemon::start_reachable(&["--uid-max-bytes", &quota]);
    let watch = daemon.client();
    // Some values of the daemon's own uid, before and after: a baseline
    // that is not empty.
    let kept = watch.insert(&[1u8; 5000], 0).unwrap();
    let base = heap_bytes(&daemon);
    let most = AtomicU64::new(base);
    let done = AtomicBool::new(false);
    let said = std::thread::scope(|scope| {
        scope.spawn(|| {
            while !done.load(Ordering::Relaxed) {
                most.fetch_max(heap_bytes(&daemon), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        let mut attacker = Helper::spawn_program(
            "hreg-heap-client",
            &daemon.socket,
            &["class-walk", &quota],
            Some(NOBODY),
        );
        let said = attacker.line();
        attacker.finish();
        done.store(true, Ordering::Relaxed);
        said
    });
    assert!(said.starts_with("walked sizes=24"), "{said}");
    let inserted: u64 = said
        .split("inserted=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .expect("a count");
    assert!(
        inserted > 24 * 100,
        "the quota took values of every size: {said}"
    );
    wait_until("the removed values to be reclaimed", || {
        watch.usage().unwrap().reclaim_pending == 0
    });
    let most = most.load(Ordering::Relaxed);
    // While it runs: the blocks of one quota of the smallest values (49 B
    // in 64-byte blocks), chunk labels and what a domain may keep idle; the
    // old heap reached 197 MB here.
    let idle = hreg_registry::memory_facts::HEAP_IDLE_MAX;
    let bound = QUOTA * 64 / 49 + (2 << 20) + idle;
    // After: the pages it kept idle, a page per chunk.
    let after_bound = base + idle + (256 << 10);
    let mut after = heap_bytes(&daemon);
    let settled = std::time::Instant::now();
    while after > after_bound && settled.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(50));
        after = heap_bytes(&daemon);
    }
    println!(
        "class walk ({said}, quota {} KiB): heap {} KiB before, at most {} KiB while it ran \
         (bound {} KiB), {} KiB after (bound {} KiB)",
        QUOTA >> 10,
        base >> 10,
        most >> 10,
        bound >> 10,
        after >> 10,
        after_bound >> 10
    );
    assert!(most <= bound, "the heap grew to {most} bytes");
    assert!(
        after <= after_bound,
        "the heap kept {after} bytes after the attacker left (baseline {base})"
    );
    assert_eq!(watch.get(kept).unwrap(), vec![1u8; 5000]);
    // The space serves the daemon's other uids: a root value of each size
    // fits without the heap growing past the bound again.
    for len in [100usize, 3000, 40_000, 900_000] {
        watch.insert(&vec![2u8; len], 0).unwrap();
    }
    assert!(heap_bytes(&daemon) <= bound);
}
