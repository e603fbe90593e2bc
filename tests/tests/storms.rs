//! Crashes and floods: 200 client processes SIGKILLed at random points
//! (many in the middle of a batch) leave nothing behind but their DETACHED
//! objects, and the daemon's descriptors and mappings return to their
//! baseline; a client flooding inserts hits QUOTA while the daemon's resident
//! memory stays under the configured byte limit plus a stated overhead; the
//! session cap refuses the next session with QUOTA, and threads beyond the
//! ring cap share rings and still work.

use hreg::{Client, Error, ListFilter, Op, DETACHED};
use hreg_tests::{checked_value, wait_until, Daemon, Helper};
use std::time::{Duration, Instant};

/// xorshift64: reproducible randomness without a dependency.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

/// Every live object, through LIST pages: (all, detached).
fn census(client: &Client) -> (u64, u64) {
    let all = client.list_all(ListFilter::default()).unwrap();
    let detached = all.iter().filter(|o| o.flags & DETACHED != 0).count();
    (all.len() as u64, detached as u64)
}

#[test]
fn a_storm_of_killed_clients_leaves_only_detached_objects() {
    let daemon = Daemon::start(&[]);
    let observer = daemon.client();
    // Warm-up: a few storm sessions that run to the end and leave cleanly.
    let warm: Vec<Helper> = (0..4)
        .map(|i| Helper::spawn(&daemon.socket, &["storm", "20", &i.to_string()]))
        .collect();
    for mut helper in warm {
        assert_eq!(helper.line(), "ready");
        assert_eq!(helper.line(), "done");
        helper.finish();
    }
    wait_until("warm-up sessions gone", || {
        observer.stats().unwrap().sessions == 1
    });
    std::thread::sleep(Duration::from_millis(100));
    let base_objects = observer.stats().unwrap().objects;
    let (all, detached) = census(&observer);
    assert_eq!((all, detached), (base_objects, base_objects));
    let base_fds = daemon.fd_count();
    let base_maps = daemon.maps_count();

    let mut rng = Rng(0x5eed_cafe);
    let (mut killed, mut after_ready) = (0u32, 0u32);
    let began = Instant::now();
    for wave in 0..25 {
        let mut helpers: Vec<(Helper, bool)> = (0..8)
            .map(|i| {
                let seed = (100 + wave * 8 + i).to_string();
                let helper = Helper::spawn(&daemon.socket, &["storm", "0", &seed]);
                (helper, rng.below(4) != 0)
            })
            .collect();
        for (helper, wait_ready) in &mut helpers {
            if *wait_ready {
                assert_eq!(helper.line(), "ready");
            }
        }
        std::thread::sleep(Duration::from_millis(rng.below(30)));
        for (helper, wait_ready) in helpers {
            std::thread::sleep(Duration::from_micros(rng.below(5000)));
            helper.kill9();
            killed += 1;
            after_ready += u32::from(wait_ready);
        }
    }
    let storm_time = began.elapsed();
    wait_until("every killed session gone", || {
        observer.stats().unwrap().sessions == 1
    });
    // The session count drops before the worker has let go of the last
    // killed session's in-flight batch; its references follow shortly.
    let at_last_session = census(&observer);
    wait_until("only DETACHED objects left", || {
        let (all, detached) = census(&observer);
        all == detached
    });
    let stats = observer.stats().unwrap();
    let (all, detached) = census(&observer);
    wait_until("descriptors and mappings back at their baseline", || {
        daemon.fd_count() == base_fds && daemon.maps_count() == base_maps
    });
    println!(
        "crash storm: {killed} clients SIGKILLed ({after_ready} after attaching, mostly mid-batch) \
         in {storm_time:?}; {} requests served; objects {} -> {} (all {all} DETACHED: {detached}); \
         fds {base_fds} -> {}; maps {base_maps} -> {}; (all, detached) when the session count \
         first showed 1: {at_last_session:?}",
        stats.ops,
        base_objects,
        stats.objects,
        daemon.fd_count(),
        daemon.maps_count()
    );
    assert_eq!(killed, 200);
    assert_eq!(all, stats.objects);
    assert_eq!(
        all, detached,
        "only DETACHED objects may outlive a killed client"
    );
    assert!(
        stats.ops > 200 * 64,
        "the killed clients were actually working"
    );
    let mut daemon = daemon;
    assert!(daemon.is_running());
}

/// Per-object bookkeeping allowed on top of the value bytes. Measured: the
/// flood's peak RSS minus value bytes minus the idle RSS is about 70 bytes
/// per object (slot, table entries, the owner's reference, allocator
/// headers); the bound allows 256.
const PER_OBJECT_OVERHEAD: u64 = 256;

/// Allocator slack on top of the idle daemon's resident memory.
const FIXED_SLACK: u64 = 8 << 20;

#[test]
fn a_flood_hits_quota_and_memory_stays_bounded() {
    const MAX_BYTES: u64 = 64 << 20;
    const MAX_OBJECTS: u64 = 100_000;
    let daemon = Daemon::start(&[
        "--max-bytes",
        &MAX_BYTES.to_string(),
        "--max-objects",
        &MAX_OBJECTS.to_string(),
        "--uid-max-bytes",
        &MAX_BYTES.to_string(),
        "--uid-max-objects",
        &MAX_OBJECTS.to_string(),
        "--workers",
        "2",
    ]);
    let client = daemon.client();
    client.stats().unwrap();
    let idle = daemon.status_bytes("VmRSS");

    // Bytes first: 16 KiB values in batches of 64, until QUOTA.
    let value = checked_value(7, 16 << 10);
    let mut inserted = 0u64;
    let mut quota = false;
    while !quota {
        let mut ops: Vec<Op<'_>> = (0..64)
            .map(|_| Op::Insert {
                value: &value,
                flags: 0,
            })
            .collect();
        for result in client.submit(&mut ops).unwrap() {
            match result {
                Ok(_) => inserted += 1,
                Err(Error::Quota { .. }) => quota = true,
                Err(e) => panic!("{e}"),
            }
        }
        assert!(inserted < MAX_OBJECTS, "no QUOTA on bytes");
    }
    let after_bytes = client.stats().unwrap();
    assert!(after_bytes.value_bytes <= MAX_BYTES);
    assert!(after_bytes.value_bytes > MAX_BYTES - (16 << 10));

    // Then objects: empty values until QUOTA on the count.
    let mut empties = 0u64;
    'flood: loop {
        let mut ops: Vec<Op<'_>> = (0..64)
            .map(|_| Op::Insert {
                value: b"",
                flags: 0,
            })
            .collect();
        for result in client.submit(&mut ops).unwrap() {
            match result {
                Ok(_) => empties += 1,
                Err(Error::Quota { .. }) => break 'flood,
                Err(e) => panic!("{e}"),
            }
        }
    }
    let full = client.stats().unwrap();
    assert_eq!(full.objects, MAX_OBJECTS);
    // A full registry still answers, and refuses one more of anything.
    assert!(matches!(client.insert(b"x", 0), Err(Error::Quota { .. })));
    assert!(matches!(
        client.insert(b"", DETACHED),
        Err(Error::Quota { .. })
    ));
    let peak = daemon.status_bytes("VmHWM");
    let rss = daemon.status_bytes("VmRSS");
    let bound = MAX_BYTES + idle + FIXED_SLACK + PER_OBJECT_OVERHEAD * MAX_OBJECTS;
    println!(
        "flood: {inserted} x 16 KiB + {empties} empty inserts until QUOTA; value bytes {} of {MAX_BYTES}; \
         objects {}; idle RSS {} KiB; RSS {} KiB; peak RSS {} KiB; bound {} KiB \
         (limit + idle + {} KiB + {PER_OBJECT_OVERHEAD} B x {MAX_OBJECTS}); \
         peak minus value bytes and idle: {} B/object",
        full.value_bytes,
        full.objects,
        idle >> 10,
        rss >> 10,
        peak >> 10,
        bound >> 10,
        FIXED_SLACK >> 10,
        peak.saturating_sub(full.value_bytes + idle) / MAX_OBJECTS
    );
    assert!(peak <= bound, "peak RSS {peak} over the bound {bound}");

    // Dropping the session frees it all; the memory can be had again.
    drop(client);
    wait_until("the flood's objects gone", || daemon.objects() == 0);
    let again = daemon.client();
    again.insert(&value, 0).unwrap();
}

#[test]
fn the_session_cap_refuses_with_quota() {
    let daemon = Daemon::start(&["--max-sessions", "4"]);
    let mut clients: Vec<Client> = Vec::new();
    // The readiness probe's session may still be closing: retry a little.
    wait_until("four sessions attached", || {
        while clients.len() < 4 {
            match Client::connect(&daemon.socket) {
                Ok(c) => clients.push(c),
                Err(Error::Quota { .. }) => return false,
                Err(e) => panic!("{e}"),
            }
        }
        true
    });
    assert_eq!(clients[0].stats().unwrap().sessions, 4);
    for _ in 0..3 {
        assert!(matches!(
            Client::connect(&daemon.socket),
            Err(Error::Quota { .. })
        ));
    }
    // The sessions that are in keep working.
    let h = clients[3].insert(b"in", 0).unwrap();
    assert_eq!(clients[0].get(h).unwrap(), b"in");
    // One leaves; one more may come.
    clients.pop();
    wait_until("a free session slot", || {
        Client::connect(&daemon.socket).is_ok()
    });
    // That newcomer has left again too (it was dropped at once).
    wait_until("three sessions", || {
        clients[0].stats().unwrap().sessions == 3
    });
}

#[test]
fn threads_beyond_the_ring_cap_share_rings() {
    let daemon = Daemon::start(&["--max-rings", "2"]);
    let client = daemon.client();
    let all_busy = std::sync::Barrier::new(9);
    let counted = std::sync::Barrier::new(9);
    let rings_while_busy = std::thread::scope(|scope| {
        for t in 0..8u64 {
            let (client, all_busy, counted) = (&client, &all_busy, &counted);
            scope.spawn(move || {
                for i in 0..200u64 {
                    if i == 100 {
                        // Every thread has done requests and is still alive.
                        all_busy.wait();
                        counted.wait();
                    }
                    let value = checked_value(t * 1000 + i, 40);
                    let h = client.insert(&value, 0).unwrap();
                    assert_eq!(client.get(h).unwrap(), value);
                    client.release(h).unwrap();
                }
            });
        }
        all_busy.wait();
        let sessions = client.sessions().unwrap();
        counted.wait();
        sessions
            .iter()
            .find(|s| s.id == client.session_id())
            .unwrap()
            .rings
    });
    println!(
        "rings cap: 8 live threads on a session with --max-rings 2 held {rings_while_busy} rings"
    );
    assert_eq!(rings_while_busy, 2, "8 busy threads, a cap of 2");
    assert_eq!(client.welcome().max_rings, 2);
    assert_eq!(client.stats().unwrap().objects, 0);
}
