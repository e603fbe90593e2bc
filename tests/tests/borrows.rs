//! A borrow holds back only what it borrowed (issue 17's reclamation rows):
//! real daemons, clients of different uids (`hreg-borrower`, run as other
//! users; the tests need root), and what one uid's borrowed references and
//! churn may cost another.
//!
//! - 1: another uid's replaces never close a session that borrows;
//! - 1b: a borrow never fills the registry for the others;
//! - 1c: a borrowed value keeps its bytes, whatever another uid does, and
//!   also after the daemon closed its session while its process lives;
//! - a session that ended with a borrow keeps its session slot until the
//!   borrow goes;
//! - 1d: a kept session that never resumes holds back only the adopted
//!   heap, and blocks nobody's inserts;
//! - 3: one borrow held for good does not slow another uid's replaces;
//! - 10: sessions that come and go leave no reader behind;
//! - race: a session registered while its uid makes its private domain
//!   has its pins on that domain honoured;
//! - 17: an attach that fails after its session's record is made releases
//!   its references and removes the record.
//!
//! Each prints its figure; the report of issue 17 has them against the code
//! before.

use hreg::Handle;
use hreg_proto::control::{ControlRequest, Reply};
use hreg_proto::handle::HandleParts;
use hreg_proto::pins::{Borrow, ClientPins};
use hreg_proto::shm::{Mapping, ReadOnly, ReadWrite};
use hreg_proto::table::{slot_chunk_len, slot_place, SlotView};
use hreg_tests::raw::RawConn;
use hreg_tests::{
    checked_value, is_root, required_in_ci, wait_until, Daemon, Helper, NOBODY, OTHER_USER,
};
use rustix::process::Signal;
use std::time::{Duration, Instant};

/// The uid whose borrowed values are attacked.
const VICTIM: u32 = OTHER_USER;
/// The uid that attacks.
const ATTACKER: u32 = NOBODY;
/// A uid that only wants to work.
const BYSTANDER: u32 = 65532;

const MIB: u64 = 1 << 20;

/// Whether clients can run as other uids here.
fn other_uids() -> bool {
    required_in_ci("root (clients of other uids)", is_root())
}

/// An `hreg-borrower` process: a client of `uid` driven line by line.
struct Borrower(Helper);

impl Borrower {
    fn start(daemon: &Daemon, uid: u32) -> Borrower {
        Borrower(Helper::spawn_program(
            "hreg-borrower",
            &daemon.socket,
            &[],
            Some(uid),
        ))
    }

    fn ask(&mut self, line: &str) -> String {
        self.0.ask(line)
    }

    fn insert(&mut self, len: u64, seed: u64, shared: bool) -> Handle {
        let shared = if shared { " shared" } else { "" };
        let answer = self.ask(&format!("insert {len} {seed}{shared}"));
        answer
            .parse()
            .unwrap_or_else(|_| panic!("insert: {answer}"))
    }
}

/// Bytes waiting for reclamation (a root client sees every uid's).
fn pending(daemon: &Daemon) -> u64 {
    daemon.client().usage().expect("usage").reclaim_pending
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / MIB as f64)
}

#[test]
fn row1_another_uids_replaces_never_close_a_borrowing_session() {
    if !other_uids() {
        return;
    }
    let daemon = Daemon::start_reachable(&["--uid-max-bytes", &(64 * MIB).to_string()]);
    let mut victim = Borrower::start(&daemon, VICTIM);
    let mut attacker = Borrower::start(&daemon, ATTACKER);
    let hv = victim.insert(200, 1, true);
    assert_eq!(victim.ask(&format!("borrow {hv}")), "ok 200");
    let ha = attacker.insert(MIB, 2, true);
    // 100 MiB retired after the victim's borrow: more than its uid may own.
    assert_eq!(attacker.ask(&format!("replace {ha} {MIB} 3 100")), "ok");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(victim.ask("check"), "intact 1");
    assert_eq!(
        victim.ask(&format!("get {hv}")),
        "ok 200",
        "the victim's session was closed"
    );
    assert_eq!(victim.ask("inserts 1000 10"), "ok=10 quota=0 other=0");
    // Nothing of the attacker's waits: the victim borrowed none of it.
    wait_until("the attacker's blocks to be reclaimed", || {
        pending(&daemon) == 0
    });
    println!("row 1: victim served after 100 MiB of another uid's replaces; 0 bytes held back");
}

#[test]
fn row1b_a_borrow_never_fills_the_registry_for_the_others() {
    if !other_uids() {
        return;
    }
    let max_bytes = 128 * MIB;
    let daemon = Daemon::start_reachable(&["--max-bytes", &max_bytes.to_string()]);
    let mut victim = Borrower::start(&daemon, VICTIM);
    let mut attacker = Borrower::start(&daemon, ATTACKER);
    let mut bystander = Borrower::start(&daemon, BYSTANDER);
    let rss_before = daemon.status_bytes("VmRSS");
    let hv = victim.insert(200, 1, true);
    assert_eq!(victim.ask(&format!("borrow {hv}")), "ok 200");
    let ha = attacker.insert(MIB, 2, true);
    // Twice the registry's bytes, retired while the victim's borrow lives.
    let churned = attacker.ask(&format!("replace {ha} {MIB} 3 256"));
    let answer = bystander.ask("inserts 65536 200");
    println!("row 1b: 256 MiB of churn: {churned}; then bystander's inserts: {answer}");
    assert_eq!(churned, "ok");
    assert_eq!(answer, "ok=200 quota=0 other=0");
    let grew = daemon.status_bytes("VmRSS").saturating_sub(rss_before);
    println!("row 1b: daemon RSS grew by {}", mib(grew));
    assert!(grew < 48 * MIB, "the daemon's RSS grew by {}", mib(grew));
    assert_eq!(victim.ask("check"), "intact 1");
}

#[test]
fn row1c_a_borrowed_value_keeps_its_bytes_whatever_another_uid_does() {
    if !other_uids() {
        return;
    }
    let daemon = Daemon::start_reachable(&["--uid-max-bytes", &(64 * MIB).to_string()]);
    let mut victim = Borrower::start(&daemon, VICTIM);
    let mut attacker = Borrower::start(&daemon, ATTACKER);
    let hv = victim.insert(4096, 1, true);
    assert_eq!(victim.ask(&format!("borrow {hv}")), "ok 4096");
    let ha = attacker.insert(MIB, 2, true);
    assert_eq!(attacker.ask(&format!("replace {ha} {MIB} 3 100")), "ok");
    // The borrowed block leaves its slot; blocks of its size come and go
    // around it, another uid's most of all.
    assert_eq!(victim.ask(&format!("replace {hv} 4096 50 1")), "ok");
    for round in 0..5 {
        assert_eq!(attacker.ask("inserts 4096 200"), "ok=200 quota=0 other=0");
        assert_eq!(
            victim.ask(&format!("replace {hv} 4096 {} 20", 100 + 20 * round)),
            "ok"
        );
    }
    std::thread::sleep(Duration::from_millis(1200));
    assert_eq!(attacker.ask("inserts 4096 200"), "ok=200 quota=0 other=0");
    let check = victim.ask("check");
    println!("row 1c: the victim's borrowed 4 KiB value after the attack: {check}");
    assert_eq!(check, "intact 1");
    assert!(
        pending(&daemon) >= 4096,
        "the borrowed block no longer waits"
    );
    assert_eq!(victim.ask("drop"), "ok 1");
    wait_until("the borrowed block to be reclaimed", || {
        pending(&daemon) == 0
    });
}

/// A session attached by hand (the wire protocol, in this process), with
/// its memory and the shared domain's first chunks mapped.
struct HandSession {
    conn: RawConn,
    memory: Mapping<ReadWrite>,
    pins_at: usize,
    pin_entries: usize,
    pin_bytes: u64,
    slots: Vec<Mapping<ReadOnly>>,
    heap: Vec<Mapping<ReadOnly>>,
}

impl HandSession {
    fn attach(daemon: &Daemon) -> HandSession {
        let conn = RawConn::connect(&daemon.socket);
        conn.send(&ControlRequest::Hello {
            version: hreg_proto::PROTOCOL_VERSION,
            name: "by hand".into(),
        });
        let Ok(Some((Some(Reply::Welcome(welcome)), fds))) = conn.try_recv_all() else {
            panic!("no WELCOME");
        };
        let mut fds = fds.into_iter();
        let memfd = fds.next().expect("session memory");
        let _header = fds.next().expect("header");
        let len = rustix::fs::fstat(&memfd).unwrap().st_size as usize;
        let memory = Mapping::map(&memfd, len).unwrap();
        // The shared domain's first slot chunk and first heap chunk, as a
        // client asks for them when a read needs them.
        conn.send(&ControlRequest::MapDomain {
            domain: u32::from(hreg_proto::table::SHARED_DOMAIN),
            slot_chunk: 0,
            heap_chunk: 0,
        });
        let Ok(Some((Some(Reply::DomainChunks { slots, heap, .. }), chunks))) = conn.try_recv_all()
        else {
            panic!("no DOMAIN_CHUNKS");
        };
        assert_eq!((slots, heap), (1, 1), "one chunk of each kind");
        let mut chunks = chunks.into_iter();
        let slots = vec![Mapping::map(chunks.next().unwrap(), slot_chunk_len(0)).unwrap()];
        let heap = chunks
            .map(|fd| {
                let len = rustix::fs::fstat(&fd).unwrap().st_size as usize;
                Mapping::map(fd, len).unwrap()
            })
            .collect();
        HandSession {
            conn,
            memory,
            pins_at: welcome.pins_offset as usize,
            pin_entries: welcome.pin_entries as usize,
            pin_bytes: welcome.pin_bytes,
            slots,
            heap,
        }
    }

    fn pins(&self) -> ClientPins<'_> {
        ClientPins::new(&self.memory, self.pins_at, self.pin_entries, self.pin_bytes).unwrap()
    }

    /// The slot of `h`, a handle of the shared domain's first slot chunk,
    /// and its parts.
    fn slot_of(&self, h: Handle) -> (SlotView<'_, ReadOnly>, HandleParts) {
        let parts = HandleParts::decode(h.get());
        let (chunk, index) = slot_place(parts.slot);
        (SlotView::new(&self.slots[chunk], index).unwrap(), parts)
    }

    /// Makes the daemon close the session (a message it cannot read),
    /// while this process lives on with what it borrowed.
    fn get_closed(&self) {
        self.conn.send_bytes(b"not a request");
        assert!(
            matches!(
                self.conn.try_recv(),
                Ok(None) | Ok(Some((Some(Reply::Refused { .. }), _)))
            ),
            "the session is closed"
        );
    }
}

#[test]
fn row1c_a_borrow_keeps_its_bytes_after_the_daemon_closed_its_session() {
    let daemon = Daemon::start(&["--shards", "1"]);
    let owner = daemon.client();
    let value = checked_value(5, 4096);
    let h = owner.insert(&value, hreg::SHARED).unwrap();
    let hand = HandSession::attach(&daemon);
    let (slot, parts) = hand.slot_of(h);
    let pins = hand.pins();
    let (pin, at, len) = match pins.borrow(&slot, parts.domain, parts.generation) {
        Borrow::Pinned { pin, at, len } => (pin, at, len as usize),
        other => panic!("{other:?}"),
    };
    let read = |out: &mut Vec<u8>| {
        out.resize(len, 0);
        assert!(hand.heap[usize::from(at.chunk)].load(at.offset as usize, out));
    };
    let mut seen = Vec::new();
    read(&mut seen);
    assert_eq!(seen, value);
    // The daemon closes the session; this process lives on, still reading
    // what it borrowed.
    hand.get_closed();
    owner.remove(h).unwrap();
    for round in 0..400u64 {
        let other = owner
            .insert(&checked_value(100 + round, 4096), hreg::SHARED)
            .unwrap();
        owner.remove(other).unwrap();
    }
    std::thread::sleep(Duration::from_millis(1200));
    read(&mut seen);
    println!(
        "row 1c (session closed): the borrowed block {}",
        if seen == value {
            "kept its bytes"
        } else {
            "was reused"
        }
    );
    assert_eq!(
        seen, value,
        "a borrowed block was reused after its session closed"
    );
    assert!(pending(&daemon) >= 4096);
    drop(pin);
    wait_until("the unpinned block to be reclaimed", || {
        pending(&daemon) == 0
    });
}

/// A session that ended while its process still reads what it borrowed
/// keeps its session slot until the borrow goes: the memory it keeps (its
/// pin table, the blocks it holds back) stays within the session caps,
/// however many sessions a process opens, borrows in and lets close.
#[test]
fn a_session_ended_with_a_borrow_keeps_its_slot_until_the_borrow_goes() {
    let daemon = Daemon::start(&["--shards", "1", "--max-sessions", "3"]);
    let owner = daemon.client();
    let value = checked_value(7, 4096);
    let h = owner.insert(&value, hreg::SHARED).unwrap();
    let hand = HandSession::attach(&daemon);
    let (slot, parts) = hand.slot_of(h);
    let pins = hand.pins();
    let Borrow::Pinned { pin, .. } = pins.borrow(&slot, parts.domain, parts.generation) else {
        panic!("not pinned");
    };
    hand.get_closed();
    // Owner, the ended session that still borrows, and one more.
    let third = daemon.client();
    std::thread::sleep(Duration::from_millis(300));
    let refused = hreg::Client::connect(&daemon.socket);
    println!(
        "a session ended with a borrow: a fourth session is {}",
        if refused.is_err() {
            "refused"
        } else {
            "admitted"
        }
    );
    assert!(
        matches!(refused, Err(hreg::Error::Quota { .. })),
        "the ended session's slot was given back while its borrow lives: {:?}",
        refused.err()
    );
    drop(pin);
    wait_until("the slot to come back once the borrow is gone", || {
        hreg::Client::connect(&daemon.socket).is_ok()
    });
    drop(third);
}

#[test]
fn row1d_a_kept_session_that_never_resumes_blocks_nobody() {
    if !other_uids() {
        return;
    }
    let state = tempfile::tempdir().expect("temp dir");
    let state_dir = state.path().join("state");
    let args = [
        "--state-dir",
        state_dir.to_str().unwrap(),
        "--max-bytes",
        &(64 * MIB).to_string(),
    ];
    let mut daemon = Daemon::start_reachable(&args);
    // The session kept from resuming: its process stopped across the
    // restart.
    let mut kept = Borrower::start(&daemon, ATTACKER);
    let handles: Vec<Handle> = (0..8).map(|i| kept.insert(MIB, i, true)).collect();
    let kept_pid = rustix::process::Pid::from_raw(kept.0.child.id() as i32).unwrap();
    rustix::process::kill_process(kept_pid, Signal::STOP).unwrap();
    daemon.signal(Signal::TERM);
    let mut all = vec!["--socket-mode", "666"];
    all.extend_from_slice(&args);
    daemon.restart(&all);
    // Another session of the same uid churns the objects the stopped one
    // made: 160 MiB retired while that session is out.
    let mut churner = Borrower::start(&daemon, ATTACKER);
    let churned: Vec<String> = handles
        .iter()
        .enumerate()
        .map(|(i, h)| churner.ask(&format!("replace {h} {MIB} {} 20", 1000 + 100 * i)))
        .collect();
    let mut bystander = Borrower::start(&daemon, BYSTANDER);
    let answer = bystander.ask("inserts 262144 100");
    let waiting = pending(&daemon);
    println!(
        "row 1d: churn while a kept session is out: {churned:?}; bystander's inserts: {answer}; \
         {} waiting",
        mib(waiting)
    );
    assert!(churned.iter().all(|c| c == "ok"), "{churned:?}");
    assert_eq!(answer, "ok=100 quota=0 other=0");
    assert!(
        waiting <= 16 * MIB,
        "{} wait: more than the adopted heap",
        mib(waiting)
    );
    rustix::process::kill_process(kept_pid, Signal::CONT).unwrap();
}

#[test]
fn row3_one_held_borrow_does_not_slow_another_uids_replaces() {
    if !other_uids() {
        return;
    }
    let daemon = Daemon::start_reachable(&[]);
    let mut honest = Borrower::start(&daemon, BYSTANDER);
    let h = honest.insert(64, 1, false);
    let rate = |honest: &mut Borrower| -> f64 {
        let answer = honest.ask(&format!("replace-rate {h} 64 2000"));
        let replaces: f64 = answer
            .strip_prefix("replaces=")
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("replace-rate: {answer}"));
        assert!(answer.ends_with("errors=0"), "{answer}");
        replaces / 2.0
    };
    let alone = rate(&mut honest);
    let (attack, ready) = Helper::attack(&daemon.socket, "pin-churn", Some(ATTACKER));
    // Time for the attacker's retired blocks to pile up (they did, behind
    // its one borrow, when pins were epochs).
    std::thread::sleep(Duration::from_secs(2));
    let attacked = rate(&mut honest);
    attack.finish();
    println!(
        "row 3: honest replaces {alone:.0}/s alone, {attacked:.0}/s while another uid holds a \
         borrow and churns ({ready}): {:.0}%",
        100.0 * attacked / alone
    );
    assert!(
        attacked >= alone / 10.0,
        "{attacked:.0}/s under attack, {alone:.0}/s alone"
    );
}

#[test]
fn row10_sessions_that_come_and_go_leave_no_reader_behind() {
    let daemon = Daemon::start(&[]);
    let churn = |n: usize| {
        std::thread::scope(|scope| {
            for _ in 0..4 {
                scope.spawn(|| {
                    for _ in 0..n / 4 {
                        drop(daemon.client());
                    }
                });
            }
        });
    };
    churn(2000);
    let before = daemon.status_bytes("VmRSS");
    let began = Instant::now();
    churn(20_000);
    let grew = daemon.status_bytes("VmRSS").saturating_sub(before);
    println!(
        "row 10: 20000 sessions attached and gone in {:.1} s; daemon RSS grew by {} KiB",
        began.elapsed().as_secs_f64(),
        grew >> 10
    );
    assert!(
        grew < 1 << 20,
        "the daemon's RSS grew by {} KiB",
        grew >> 10
    );
}

#[test]
fn race_a_reader_registered_while_its_uid_makes_its_domain_keeps_its_pins() {
    if !other_uids() {
        return;
    }
    // Every attach of uid VICTIM waits 3 s just before its session is
    // registered as a reader.
    let daemon = Daemon::start_reachable_with(&[], |command| {
        command.env("HREG_TEST_READER_PAUSE", format!("{VICTIM}:3000"));
    });
    let mut maker = Borrower::start(&daemon, VICTIM);
    // Its ring open (a control request) before the other one's attach
    // holds the control thread.
    maker.insert(100, 1, true);
    let mut reader = Borrower(Helper::spawn_program(
        "hreg-borrower",
        &daemon.socket,
        &[],
        Some(VICTIM),
    ));
    std::thread::sleep(Duration::from_millis(1000));
    // The uid's first private object (and so its domain), made while the
    // reader's registration waits.
    let h = maker.insert(4096, 2, false);
    assert_eq!(reader.ask(&format!("borrow {h}")), "ok 4096");
    for round in 0..20 {
        assert_eq!(
            maker.ask(&format!("replace {h} 4096 {} 20", 10 + 20 * round)),
            "ok"
        );
    }
    std::thread::sleep(Duration::from_millis(1200));
    assert_eq!(maker.ask(&format!("replace {h} 4096 900 20")), "ok");
    let check = reader.ask("check");
    println!("race: a value borrowed on a domain made during the reader's registration: {check}");
    assert_eq!(check, "intact 1");
}

/// The session records a state directory holds.
fn session_records(dir: &std::path::Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|name| name.starts_with("session-"))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn row17_a_failed_attach_leaves_no_record_and_no_reference() {
    let state = tempfile::tempdir().expect("temp dir");
    let state_dir = state.path().join("state");
    let args = ["--state-dir", state_dir.to_str().unwrap()];
    // HELLO: the first attach fails after its record is made (the harness's
    // own first connection meets it, and tries again).
    let mut daemon = Daemon::start_with(&args, |command| {
        command.env("HREG_TEST_FAIL_ATTACH", "hello:1");
    });
    wait_until("the sessions of the start to end", || {
        session_records(&state_dir).is_empty()
    });
    // RESUME: a session with a reference, kept across a restart, whose
    // resume fails after its holder is taken back.
    let client = daemon.client();
    let h = client
        .insert(b"held by the session that fails to resume", 0)
        .unwrap();
    assert_eq!(session_records(&state_dir).len(), 1);
    daemon.signal(Signal::TERM);
    daemon.restart_with(&args, |command| {
        command.env("HREG_TEST_FAIL_ATTACH", "resume:1");
    });
    let watcher = daemon.client();
    let began = Instant::now();
    wait_until("the failed session's reference to be released", || {
        // A call makes the client try to resume, which fails.
        let _ = client.get(h);
        matches!(watcher.get(h), Err(hreg::Error::Stale))
    });
    println!(
        "row 17: the failed resume's reference released after {:.2} s",
        began.elapsed().as_secs_f64()
    );
    drop(watcher);
    wait_until("no session record left", || {
        session_records(&state_dir).is_empty()
    });
    drop(client);
}
