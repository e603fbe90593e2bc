//! What the Rust client offers language bindings (libhreg's Go support),
//! against a real daemon: ring pool mode bounds the rings a client opens
//! whatever the number of threads calling it, and `MappedReads` reports the
//! chunks the client mapped and keeps them mapped after the client is gone.

use hreg::{Client, Handle};
use hreg_proto::handle::HandleParts;
use hreg_proto::table::{header, slot_chunk_len};
use hreg_tests::Daemon;
use std::sync::atomic::{AtomicU64, Ordering};

/// Rings the daemon says this process's sessions hold.
fn my_rings(client: &Client) -> u32 {
    client
        .sessions()
        .unwrap()
        .iter()
        .filter(|s| s.pid == std::process::id())
        .map(|s| s.rings)
        .sum()
}

/// `threads` threads, each inserting and releasing on `client`; the rings
/// this process holds once they all wrote, while they are all alive.
fn rings_of_threads(client: &Client, threads: usize) -> u32 {
    let all = std::sync::Barrier::new(threads + 1);
    std::thread::scope(|scope| {
        for t in 0..threads {
            let (client, all) = (client, &all);
            scope.spawn(move || {
                for i in 0..20 {
                    let h = client.insert(format!("{t}:{i}").as_bytes(), 0).unwrap();
                    client.release(h).unwrap();
                }
                all.wait();
                all.wait();
            });
        }
        all.wait();
        let rings = my_rings(client);
        all.wait();
        rings
    })
}

#[test]
fn a_ring_pool_bounds_the_rings_whatever_the_threads() {
    let daemon = Daemon::start(&[]);
    let pooled = daemon.client();
    assert!(!pooled.use_ring_pool(0) && !pooled.use_ring_pool(65));
    assert!(pooled.use_ring_pool(2));
    assert!(!pooled.use_ring_pool(3), "the pool is set once");
    let rings = rings_of_threads(&pooled, 8);
    assert!(
        (1..=2).contains(&rings),
        "8 threads, a pool of 2: {rings} rings"
    );
    drop(pooled);

    // Without the pool each thread opens its own.
    let daemon = Daemon::start(&[]);
    let plain = daemon.client();
    assert_eq!(rings_of_threads(&plain, 8), 8);
}

#[test]
fn a_pooled_client_waits_for_a_ring_rather_than_failing() {
    let daemon = Daemon::start(&[]);
    let client = daemon.client();
    assert!(client.use_ring_pool(1));
    assert_eq!(rings_of_threads(&client, 6), 1);
}

/// The first word of `chunk`, read as the seqlock readers do.
fn first_word(base: *const u8) -> u64 {
    // SAFETY: `base` is the start of a live read-only mapping of at least
    // 8 bytes, 8-aligned (page-aligned), that MappedReads keeps mapped;
    // the daemon writes it only through atomics.
    unsafe { AtomicU64::from_ptr(base.cast_mut().cast()) }.load(Ordering::Acquire)
}

#[test]
fn mapped_reads_report_the_chunks_and_keep_them_mapped() {
    let daemon = Daemon::start(&[]);
    let client = daemon.client();
    let h: Handle = client.insert(&[7u8; 100], 0).unwrap();
    assert_eq!(client.get(h).unwrap(), vec![7u8; 100]);
    let reads = client.mapped_reads();
    assert!(reads.counter().load(Ordering::Acquire) >= 1);
    let head = reads.header().expect("a header");
    assert_eq!(head.len, header::LEN);
    assert_eq!(first_word(head.base), header::MAGIC);

    let parts = HandleParts::decode(h.get());
    let mut slots = [None; 15];
    let mut heap = [None; 1];
    let (ns, nh) = reads.domain(parts.domain, &mut slots, &mut heap);
    assert!(ns >= 1 && nh >= 1, "{ns} slot chunks, {nh} heap chunks");
    let first = slots[0].expect("slot chunk 0");
    assert_eq!(first.len, slot_chunk_len(0));
    assert!(heap[0].is_some());
    // Too little room: the count says how much is needed.
    let (_, needed) = reads.domain(parts.domain, &mut slots, &mut []);
    assert_eq!(needed, nh);
    // A domain nobody has mapped: nothing.
    assert_eq!(reads.domain(9999, &mut slots, &mut heap), (0, 0));
    assert!(slots.iter().all(Option::is_none));

    // The session ends with the client; the memory stays readable.
    drop(client);
    assert_eq!(first_word(head.base), header::MAGIC);
    assert_ne!(first_word(first.base), u64::MAX);
}
