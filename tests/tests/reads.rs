//! Reads without a round trip (issue 11), end to end: real `hregd`
//! processes, client processes of real uids, the real Rust client.
//!
//! - Another uid maps only what it may read: it finds none of root's
//!   private bytes anywhere in its memory (a SHARED control marker, it
//!   does), and can write none of the registry's memory by any means.
//! - Readers in several processes race a writer that replaces and removes
//!   values of random sizes, and never see a torn, foreign or
//!   stale-generation value.
//! - Old handles stay STALE while their slot is reused thousands of times,
//!   on the local read path and on the ring path.
//! - A borrowed value (`get_ref`) outlives its object; a killed client
//!   stops holding memory back; a client that never releases meets its cap
//!   alone.
//!
//! The other uid's client is a separate program (`hreg-reader`) started
//! as uid 65534 (fork, setgid/setuid, exec), not a fork of this test
//! process: the scan must see a process holding nothing but what the
//! client library gave it, and this file's tests run in parallel threads.

use hreg::{Client, Error, Handle, SHARED};
use hreg_proto::handle::HandleParts;
use hreg_tests::readside::{self, directory_body, stamp, stamped_value};
use hreg_tests::{checked_value, fnv, is_root, required_in_ci, Daemon, Helper, Rng, NOBODY};
use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, Hasher};
use std::time::{Duration, Instant};

/// Randomness that differs per run (markers must not be guessable from the
/// test's source) but whose seed a failure message prints.
fn run_seed() -> u64 {
    std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish()
}

fn parts(h: Handle) -> HandleParts {
    HandleParts::decode(h.get())
}

/// The `key=value` words of a helper's report line.
fn fields(line: &str) -> HashMap<String, String> {
    line.split_whitespace()
        .filter_map(|word| word.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Field `key` of a report, which must be there.
fn field<'a>(report: &'a HashMap<String, String>, key: &str, line: &str) -> &'a str {
    report
        .get(key)
        .unwrap_or_else(|| panic!("no {key} in the report: {line}"))
}

fn number(report: &HashMap<String, String>, key: &str, line: &str) -> u64 {
    let text = field(report, key, line);
    text.parse()
        .unwrap_or_else(|_| panic!("{key}={text} is not a number: {line}"))
}

/// Each of `keys` in a report is 0; else the message says which one was
/// not, how often it happened `what`, and the whole report.
fn assert_zero(report: &HashMap<String, String>, keys: &[&str], line: &str, what: &str) {
    for key in keys {
        let n = number(report, key, line);
        assert_eq!(n, 0, "{key} happened {n} {what}: {line}");
    }
}

/// The reclamation backlog: bytes of replaced or removed values whose
/// blocks wait (borrowed references may hold them back).
fn reclaim_pending(client: &Client) -> u64 {
    client.usage().expect("usage").reclaim_pending
}

/// `len` bytes of `marker` over and over.
fn filled(marker: &[u8], len: usize) -> Vec<u8> {
    marker.iter().copied().cycle().take(len).collect()
}

#[test]
fn another_uid_finds_no_private_bytes_and_cannot_write_the_registry() {
    if !required_in_ci("root (to run a client as another uid)", is_root()) {
        return;
    }
    let seed = run_seed();
    let mut rng = Rng::new(seed);
    let mut marker = || -> Vec<u8> { (0..2).flat_map(|_| rng.next_u64().to_le_bytes()).collect() };
    let (secret, control) = (marker(), marker());
    let mut daemon = Daemon::start_reachable(&[]);
    let root = daemon.client();

    // Root's private objects, every size the read side stores differently:
    // inside the slot, small heap blocks, a page, 64 KiB, the maximum.
    let mut private: Vec<(Handle, Vec<u8>)> = [16, 40, 48, 49, 100, 1000, 4096, 65_536, 1 << 20]
        .iter()
        .map(|&len| {
            let value = filled(&secret, len);
            (root.insert(&value, 0).expect("insert private"), value)
        })
        .collect();
    let detached = filled(&secret, 5000);
    private.push((
        root.insert(&detached, hreg::DETACHED)
            .expect("insert detached"),
        detached,
    ));
    // Old versions and dead objects leave their bytes in root's heap too.
    let replaced = root.insert(&filled(&secret, 7000), 0).unwrap();
    let now = filled(&secret, 300);
    root.replace(replaced, &now).unwrap();
    private.push((replaced, now));
    let dead = root.insert(&filled(&secret, 9000), 0).unwrap();
    root.remove(dead).unwrap();
    // The control: SHARED, inside its slot and in the heap.
    let shared: Vec<(Handle, Vec<u8>)> = [32, 5000]
        .iter()
        .map(|&len| {
            let value = filled(&control, len);
            (root.insert(&value, SHARED).expect("insert shared"), value)
        })
        .collect();

    let list = |objects: &[(Handle, Vec<u8>)]| {
        objects
            .iter()
            .map(|(h, _)| h.to_string())
            .collect::<Vec<_>>()
            .join(",")
    };
    let args = [
        "probe".to_string(),
        readside::masked_hex(&secret),
        readside::masked_hex(&control),
        list(&shared),
        list(&private),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut probe = Helper::spawn_program("hreg-reader", &daemon.socket, &args, Some(NOBODY));
    let line = probe.line();
    println!("probe (seed {seed:#x}): {line}");
    let report = fields(&line);
    let get = |key: &str| field(&report, key, &line);

    assert_eq!(get("shared"), "OK,OK", "SHARED objects of root: {line}");
    assert_eq!(
        get("private"),
        "Denied",
        "every way of reading root's private objects must be DENIED: {line}"
    );
    assert_eq!(get("own"), "OK,OK", "its own objects: {line}");
    let own_domain = get("own_domain");
    assert_eq!(
        get("mapped_domains"),
        format!("0,{own_domain}"),
        "MAP_DOMAIN may hand out the shared domain and the caller's own, nothing else: {line}"
    );
    assert_eq!(
        get("private_domain"),
        "Denied+0fds",
        "root's private domain: {line}"
    );
    assert_ne!(
        own_domain,
        parts(private[0].0).domain.to_string(),
        "two uids share a private domain: {line}"
    );

    // The scan: it read the process (the control is found where the
    // registry's shared memory is mapped), and no private byte is anywhere.
    assert!(number(&report, "scanned_mib", &line) > 0, "{line}");
    assert!(
        number(&report, "control_in_registry", &line) >= 2,
        "the SHARED control marker must be found in the registry's mappings \
         (inline and heap), or the scan proves nothing: {line}"
    );
    assert_eq!(
        number(&report, "secret_hits", &line),
        0,
        "root's private bytes found in another uid's memory, in {}: {line}",
        get("secret_where")
    );

    // The writes: each one tried on every registry memfd and mapping held
    // (WELCOME's header, the chunks of every domain handed out, the
    // client's mappings), and not one of them worked.
    assert!(
        number(&report, "registry_fds", &line) >= 5,
        "the probe holds the header and the slot and heap chunks of two domains: {line}"
    );
    assert!(
        number(&report, "registry_maps", &line) >= 5,
        "the client maps the header and the slot and heap chunks of two domains: {line}"
    );
    assert_zero(
        &report,
        &[
            "fd_not_read_only",
            "mmap_read_failed",
            "mmap_write",
            "mprotect_write",
            "ftruncate",
            "write",
            "reopen_rdwr",
            "fchmod",
            "punch_hole",
            "add_seal",
            "writable_map",
            "mprotect_map",
            "madvise_remove",
            "procmem_write",
            "daemon_fds_opened",
        ],
        &line,
        "times for another uid",
    );
    assert!(!report.contains_key("fstat_failed"), "{line}");
    probe.finish();

    // The daemon is unharmed: every value as root stored it.
    assert!(daemon.is_running(), "hregd died");
    for (h, value) in private.iter().chain(&shared) {
        assert_eq!(
            fnv(&root.get(*h).expect("root's get")),
            fnv(value),
            "{h} changed"
        );
        assert_eq!(
            fnv(&root.get_ref(*h).expect("root's get_ref")),
            fnv(value),
            "{h} changed (borrowed)"
        );
    }
    assert!(matches!(root.get(dead), Err(Error::Stale)));
    let fresh = daemon.client();
    let h = fresh.insert(b"still served", 0).unwrap();
    assert_eq!(fresh.get(h).unwrap(), b"still served");
}

/// The writer's side of the race: objects whose values carry their handle,
/// a sequence number and a checksum, and a SHARED directory listing them.
struct Writer {
    client: Client,
    rng: Rng,
    seq: u64,
    live: Vec<Handle>,
    removed: HashSet<u64>,
    directory: Handle,
}

impl Writer {
    /// Largest value the writer writes, and the sizes' distribution:
    /// log-uniform, so empty, inline, small and large values all come.
    const MAX_LEN_BITS: u64 = 18;

    fn new(client: Client, objects: usize, seed: u64) -> Writer {
        let directory = client.insert(b"placeholder!", SHARED).unwrap();
        let mut writer = Writer {
            client,
            rng: Rng::new(seed),
            seq: 0,
            live: Vec::new(),
            removed: HashSet::new(),
            directory,
        };
        for i in 0..objects {
            let h = writer.create(if i % 2 == 0 { SHARED } else { 0 });
            writer.live.push(h);
        }
        writer.publish();
        writer
    }

    fn random_len(&mut self) -> usize {
        let bits = self.rng.below(Self::MAX_LEN_BITS + 1);
        self.rng.below(1 << bits) as usize
    }

    /// A new object holding its first stamped value (a placeholder first:
    /// the stamp needs the handle). Readers learn of it only from the next
    /// directory, after the stamped value is in place.
    fn create(&mut self, flags: u32) -> Handle {
        let h = self.client.insert(b"placeholder!", flags).unwrap();
        self.replace(h);
        h
    }

    fn replace(&mut self, h: Handle) {
        self.seq += 1;
        let len = self.random_len();
        self.client
            .replace(h, &stamped_value(h, self.seq, len))
            .unwrap();
    }

    fn publish(&mut self) {
        self.seq += 1;
        let listing = stamp(self.directory, self.seq, &directory_body(&self.live));
        self.client.replace(self.directory, &listing).unwrap();
    }

    /// One step: most often a replace, else a remove and a new object in
    /// its place (and a new directory).
    fn step(&mut self) -> bool {
        let i = self.rng.below(self.live.len() as u64) as usize;
        if self.rng.below(100) < 70 {
            self.replace(self.live[i]);
            return false;
        }
        let old = self.live[i];
        self.client.remove(old).unwrap();
        self.removed.insert(old.get());
        let flags = if parts(old).domain == 0 { SHARED } else { 0 };
        self.live[i] = self.create(flags);
        self.publish();
        true
    }
}

#[test]
fn readers_racing_replace_and_remove_see_whole_values_of_their_own_handle() {
    const RACE: Duration = Duration::from_secs(3);
    let seed = run_seed();
    // One shard: a removed object's slot is the next one filled, while
    // readers may still hold the old handle.
    let daemon = Daemon::start(&["--shards", "1"]);
    let mut writer = Writer::new(daemon.client(), 32, seed);
    let directory = writer.directory.to_string();
    // Two processes of two threads on the local path, one on the ring path.
    let mut readers: Vec<(&str, Helper)> = [("local", "2"), ("local", "2"), ("ring", "1")]
        .iter()
        .enumerate()
        .map(|(i, &(path, threads))| {
            let reader_seed = (seed.wrapping_add(i as u64) % 1_000_000).to_string();
            let args = ["race", directory.as_str(), threads, reader_seed.as_str()];
            let helper = Helper::spawn_with("hreg-reader", &daemon.socket, &args, |command| {
                if path == "ring" {
                    command.env("HREG_READ_PATH", "ring");
                }
            });
            (path, helper)
        })
        .collect();
    for (path, reader) in &mut readers {
        assert_eq!(reader.line(), "ready", "{path} reader");
    }

    // For RACE, and at least a few hundred changes however slow the machine.
    let began = Instant::now();
    let (mut replaces, mut removes) = (0u64, 0u64);
    while began.elapsed() < RACE || replaces < 200 || removes < 50 {
        assert!(
            began.elapsed() < hreg_tests::PATIENCE,
            "the writer barely ran: {replaces} replaces, {removes} removes"
        );
        if writer.step() {
            removes += 1;
        } else {
            replaces += 1;
        }
    }
    println!("writer (seed {seed:#x}): {replaces} replaces, {removes} removes and new objects");

    for (path, mut reader) in readers {
        reader.close_input();
        let line = reader.line();
        let stale_line = reader.line();
        println!("{path} reader: {line}");
        let report = fields(&line);
        assert!(
            number(&report, "good", &line) >= 100,
            "the {path} reader barely read: {line}"
        );
        assert_zero(
            &report,
            &[
                "torn",
                "foreign",
                "stale_generation",
                "short_mismatch",
                "went_back",
                "ref_changed",
                "errors",
            ],
            &line,
            &format!("times in the {path} reader (seed {seed:#x})"),
        );
        // STALE only for handles the writer removed.
        let stale: Vec<&str> = stale_line
            .strip_prefix("stale")
            .unwrap_or_else(|| panic!("no stale line: {stale_line:?}"))
            .split_whitespace()
            .collect();
        let wrongly_stale: Vec<&&str> = stale
            .iter()
            .filter(|h| !h.parse::<u64>().is_ok_and(|h| writer.removed.contains(&h)))
            .collect();
        assert!(
            wrongly_stale.is_empty(),
            "the {path} reader got STALE for handles never removed: {wrongly_stale:?}"
        );
        reader.finish();
    }
    // And every live object still holds a whole value of its own.
    for &h in &writer.live {
        let value = writer.client.get(h).unwrap();
        assert!(
            matches!(readside::inspect(h, &value), readside::Seen::Good(_)),
            "{h} after the race: {:?}",
            readside::inspect(h, &value)
        );
    }
}

/// Data-path requests the daemon has served (a local read is none).
fn served(daemon: &Daemon) -> u64 {
    daemon.client().stats().unwrap().ops
}

/// The outcome words `hreg-reader outcomes` prints for these handles.
fn outcomes_from_another_process(
    daemon: &Daemon,
    handles: &[Handle],
    ring_path: bool,
) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("handles");
    let list: String = handles.iter().map(|h| format!("{h}\n")).collect();
    std::fs::write(&path, list).unwrap();
    let path = path.to_str().unwrap();
    let mut reader = Helper::spawn_with(
        "hreg-reader",
        &daemon.socket,
        &["outcomes", path],
        |command| {
            if ring_path {
                command.env("HREG_READ_PATH", "ring");
            } else {
                command.env_remove("HREG_READ_PATH");
            }
        },
    );
    let line = reader.line();
    reader.finish();
    let words: Vec<String> = line.split(' ').map(str::to_string).collect();
    assert_eq!(
        words.len(),
        handles.len(),
        "one outcome per handle: {line:.200}"
    );
    words
}

/// Inserts through a batch of one, which the client never posts: the
/// daemon picks the slot.
fn insert_now(client: &Client, value: &[u8]) -> Handle {
    let mut ops = [hreg::Op::Insert { value, flags: 0 }];
    match client.submit(&mut ops).unwrap().pop() {
        Some(Ok(hreg::Completion::Inserted(h))) => h,
        other => panic!("insert: {other:?}"),
    }
}

#[test]
fn old_handles_stay_stale_while_their_slot_is_reused_thousands_of_times() {
    const REUSES: usize = 3000;
    // One shard: a freed slot is the next one handed out.
    let daemon = Daemon::start(&["--shards", "1"]);
    let client = daemon.client();
    // Empty, inline, at the inline limit, just past it, heap blocks.
    let sizes = [0usize, 7, 48, 49, 300, 5000];
    let value = |i: usize| checked_value(i as u64 + 1, sizes[i % sizes.len()]);
    let first = insert_now(&client, &value(0));
    let (mut current, mut current_value) = (first, value(0));
    let mut old: Vec<Handle> = Vec::with_capacity(REUSES);
    let stale = |client: &Client, h: Handle, what: &str| {
        for (way, outcome) in [
            ("get", client.get(h).map(|v| fnv(&v))),
            ("get_into", {
                let mut buf = [0u8; 8192];
                client.get_into(h, &mut buf).map(|n| fnv(&buf[..n]))
            }),
            ("get_ref", client.get_ref(h).map(|v| fnv(&v))),
        ] {
            assert!(
                matches!(outcome, Err(Error::Stale)),
                "{what}: {way} of {h} gave {outcome:x?}, not STALE"
            );
        }
    };
    for i in 1..=REUSES {
        // Both ways an object dies: removed, or its last reference released.
        if i % 2 == 0 {
            client.remove(current).unwrap();
        } else {
            client.release(current).unwrap();
        }
        old.push(current);
        let next_value = value(i);
        // Synchronous (a batch): a posted insert fills a handle granted
        // ahead, not the slot just freed.
        current = insert_now(&client, &next_value);
        current_value = next_value;
        assert_eq!(
            (parts(current).domain, parts(current).slot),
            (parts(first).domain, parts(first).slot),
            "round {i}: the freed slot was not the one reused"
        );
        assert_eq!(client.get(current).unwrap(), current_value, "round {i}");
        stale(&client, old[i - 1], &format!("round {i}"));
        if i % 500 == 0 {
            let mut gets: Vec<hreg::Op<'_>> = old
                .iter()
                .map(|&handle| hreg::Op::GetOwned { handle })
                .collect();
            for (result, h) in client.submit(&mut gets).unwrap().into_iter().zip(&old) {
                assert!(
                    matches!(result, Err(Error::Stale)),
                    "round {i}: a batched get of {h} gave {result:?}"
                );
            }
        }
    }
    let unique: HashSet<Handle> = old.iter().chain([&current]).copied().collect();
    assert_eq!(unique.len(), REUSES + 1, "a handle came back");
    for &h in &old {
        stale(&client, h, "at the end");
    }

    // From another process, on each path: the same outcomes, and the ring
    // path really goes through the daemon while the local one does not.
    let mut handles = old.clone();
    handles.push(current);
    let expected: Vec<String> = old
        .iter()
        .map(|_| "Stale".to_string())
        .chain([format!("OK:{:016x}", fnv(&current_value))])
        .collect();
    let n = handles.len() as u64;
    let before = served(&daemon);
    let ring = outcomes_from_another_process(&daemon, &handles, true);
    // A worker counts what it served just after answering: wait for it.
    let began = Instant::now();
    while served(&daemon) - before < 3 * n && began.elapsed() < Duration::from_secs(2) {
        std::thread::sleep(Duration::from_millis(10));
    }
    let ring_ops = served(&daemon) - before;
    let before = served(&daemon);
    let local = outcomes_from_another_process(&daemon, &handles, false);
    let local_ops = served(&daemon) - before;
    for (path, outcomes) in [("ring", &ring), ("local", &local)] {
        let wrong: Vec<(Handle, &String)> = handles
            .iter()
            .zip(outcomes.iter())
            .zip(&expected)
            .filter(|((_, got), want)| got != want)
            .map(|((h, got), _)| (*h, got))
            .take(5)
            .collect();
        assert!(
            wrong.is_empty(),
            "{path} path, first wrong outcomes: {wrong:?}"
        );
    }
    assert!(
        ring_ops >= 3 * n,
        "HREG_READ_PATH=ring: {ring_ops} requests for {n} handles read three ways"
    );
    assert!(
        local_ops < n / 10,
        "local path: {local_ops} requests for {n} handles read three ways"
    );
}

#[test]
fn a_borrowed_value_outlives_its_object_until_dropped() {
    // One shard: the removed object's slot is the next one used.
    let daemon = Daemon::start(&["--shards", "1"]);
    let client = daemon.client();
    let removed_value = checked_value(1, 4096);
    let removed = client.insert(&removed_value, 0).unwrap();
    let replaced_value = checked_value(2, 100_000);
    let replaced = client.insert(&replaced_value, SHARED).unwrap();
    let removed_ref = client.get_ref(removed).unwrap();
    let replaced_ref = client.get_ref(replaced).unwrap();
    client.remove(removed).unwrap();
    assert!(matches!(client.get(removed), Err(Error::Stale)));
    assert!(matches!(client.get_ref(removed), Err(Error::Stale)));

    // The slot reused many times over by values of the same size, the
    // replaced object's value replaced by ones of its size: blocks come
    // and go around the borrowed ones, which must stay as they were.
    for i in 0..2000u64 {
        let value = checked_value(100 + i, 4096);
        let h = client.insert(&value, 0).unwrap();
        assert_eq!(
            parts(h).slot,
            parts(removed).slot,
            "round {i}: slot not reused"
        );
        assert_eq!(client.get(h).unwrap(), value);
        client.remove(h).unwrap();
        if i % 10 == 0 {
            client
                .replace(replaced, &checked_value(10_000 + i, 100_000))
                .unwrap();
        }
    }
    assert!(
        *removed_ref == removed_value[..],
        "a borrowed value changed after its object was removed"
    );
    assert!(
        *replaced_ref == replaced_value[..],
        "a borrowed value changed after its object was replaced"
    );
    // The borrowed blocks wait (with whatever else of their domains the
    // references' epochs hold back: reclamation is by epoch, per domain).
    let held = (removed_value.len() + replaced_value.len()) as u64;
    std::thread::sleep(Duration::from_millis(300));
    let pending = reclaim_pending(&client);
    println!("held back by two references: {pending} bytes");
    assert!(
        pending >= held,
        "{pending} bytes wait for reclamation, less than the {held} borrowed"
    );
    assert!(*removed_ref == removed_value[..] && *replaced_ref == replaced_value[..]);

    // Released, the private domain's blocks go; the shared one's wait on
    // the other reference (at most every 100 000-byte value it replaced).
    drop(removed_ref);
    let shared_retired = 200 * replaced_value.len() as u64;
    let pending = wait_for_pending(&client, "the released block to be reclaimed", |n| {
        n <= shared_retired
    });
    assert!(
        pending >= replaced_value.len() as u64,
        "{pending} bytes wait, less than the one value still borrowed"
    );
    assert!(*replaced_ref == replaced_value[..]);
    drop(replaced_ref);
    wait_for_pending(&client, "every block to be reclaimed", |n| n == 0);
}

/// Polls the reclamation backlog until `done` says so; panics with the last
/// figure after [`hreg_tests::PATIENCE`].
fn wait_for_pending(client: &Client, what: &str, done: impl Fn(u64) -> bool) -> u64 {
    let began = Instant::now();
    loop {
        let pending = reclaim_pending(client);
        if done(pending) {
            return pending;
        }
        assert!(
            began.elapsed() < hreg_tests::PATIENCE,
            "timed out waiting for {what}: {pending} bytes still wait for reclamation"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn a_killed_client_stops_holding_memory_back() {
    let daemon = Daemon::start(&[]);
    let client = daemon.client();
    let values: Vec<Vec<u8>> = [1000, 50_000, 300_000]
        .iter()
        .enumerate()
        .map(|(i, &len)| checked_value(i as u64 + 1, len))
        .collect();
    let handles: Vec<Handle> = values
        .iter()
        .map(|v| client.insert(v, 0).unwrap())
        .collect();
    let total: usize = values.iter().map(Vec::len).sum();
    let mut args = vec!["hold-refs".to_string()];
    args.extend(handles.iter().map(Handle::to_string));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut holder = Helper::spawn_program("hreg-reader", &daemon.socket, &args, None);
    assert_eq!(holder.line(), format!("held={total}"));

    for (i, &h) in handles.iter().enumerate() {
        client
            .replace(h, &checked_value(i as u64 + 100, values[i].len()))
            .unwrap();
    }
    wait_for_pending(
        &client,
        "the replaced values' blocks to be held back",
        |n| n == total as u64,
    );
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        reclaim_pending(&client),
        total as u64,
        "blocks a live client borrowed were freed"
    );

    holder.kill9();
    wait_for_pending(
        &client,
        "a killed client's borrowed blocks to be reclaimed",
        |n| n == 0,
    );
    for (i, &h) in handles.iter().enumerate() {
        assert_eq!(
            client.get(h).unwrap(),
            checked_value(i as u64 + 100, values[i].len())
        );
    }
}

#[test]
fn a_client_that_never_releases_meets_its_cap_alone() {
    let daemon = Daemon::start(&[]);
    let hoarder = daemon.client();
    let other = daemon.client();
    let cap = hoarder.welcome().pin_entries as usize;
    assert_eq!(
        cap, 1024,
        "the cap the issue names: values borrowed at once"
    );
    // Past the inline limit: a borrowed value is a pinned block.
    let values: Vec<(Handle, Vec<u8>)> = (0..=cap as u64)
        .map(|i| {
            let value = checked_value(5 + i, 200);
            (hoarder.insert(&value, SHARED).unwrap(), value)
        })
        .collect();
    let mut refs = Vec::with_capacity(cap);
    for (i, (h, _)) in values[..cap].iter().enumerate() {
        match hoarder.get_ref(*h) {
            Ok(borrowed) => refs.push(borrowed),
            Err(e) => panic!("reference {i} of {cap}: {e}"),
        }
    }
    let (last, last_value) = &values[cap];
    match hoarder.get_ref(*last) {
        Err(Error::Quota { .. }) => {}
        other => panic!("a value past the cap gave {other:?}, not QUOTA"),
    }
    // A plain get pins nothing: it still works; and a value borrowed
    // already may be borrowed again (its pin is shared).
    assert_eq!(hoarder.get(*last).unwrap(), *last_value);
    let again: Vec<hreg::ValueRef<'_>> = (0..2000)
        .map(|_| hoarder.get_ref(values[0].0).unwrap())
        .collect();
    assert!(again.iter().all(|r| **r == values[0].1[..]));
    drop(again);

    // Another session is not affected, in references or anything else.
    let theirs: Vec<hreg::ValueRef<'_>> = values[..64]
        .iter()
        .map(|(h, _)| other.get_ref(*h).unwrap())
        .collect();
    assert!(theirs.iter().zip(&values).all(|(r, (_, v))| **r == v[..]));
    let mine = other.insert(&checked_value(6, 300), 0).unwrap();
    assert_eq!(other.get(mine).unwrap(), checked_value(6, 300));
    drop(theirs);

    // One released, one more fits; every one held is intact.
    refs.pop();
    refs.push(
        hoarder
            .get_ref(*last)
            .expect("room for one after a release"),
    );
    assert!(refs
        .iter()
        .zip(
            values[..cap - 1]
                .iter()
                .chain(std::iter::once(&values[cap]))
        )
        .all(|(r, (_, v))| **r == v[..]));
}
