//! Replays the fuzz corpora (`fuzz/corpus/control_decode/` and
//! `fuzz/corpus/ring_entry/`) through the same checks the nightly fuzz
//! targets run (`fuzz/src/checks.rs`), on stable, in ordinary `cargo test`:
//! no input may panic a decoder, and every decoded value must hold the
//! targets' invariants (round trips, data ranges inside the data area).
//!
//! The seed files come from the real encoders below. To write them again:
//! `HREG_WRITE_CORPUS=1 cargo test -p hreg-proto --test fuzz_corpus`.
//! Files the fuzzers found (crashes, new coverage) sit beside them and are
//! replayed the same way.

#![cfg(not(hreg_loom))]

#[path = "../../fuzz/src/checks.rs"]
mod checks;

use hreg_proto::control::{
    ControlRequest, MapDomain, ObjectInfo, Reply, SessionInfo, StatsReply, UidUsage, UsageReply,
    Welcome, WorkerUsage,
};
use hreg_proto::entry::{sqe_flags, Sqe, ENTRY_SIZE};
use hreg_proto::{flags, Opcode, PROTOCOL_VERSION};
use std::path::PathBuf;

fn corpus_dir(target: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target)
}

/// Named seeds for `control_decode`: every message kind from the real
/// encoders, then edge cases.
fn control_seeds() -> Vec<(String, Vec<u8>)> {
    let requests = [
        ControlRequest::Hello {
            version: PROTOCOL_VERSION,
            name: "seed".into(),
        },
        ControlRequest::Hello {
            version: 999,
            name: "n".repeat(hreg_proto::MAX_CLIENT_NAME),
        },
        ControlRequest::Hello {
            version: 1,
            name: String::new(),
        },
        ControlRequest::RingOpen,
        ControlRequest::RingClose { index: 3 },
        ControlRequest::RingClose { index: u32::MAX },
        ControlRequest::Stats,
        ControlRequest::Goodbye,
        ControlRequest::Sessions { cursor: 0 },
        ControlRequest::List {
            cursor: 5,
            limit: 512,
            filter: hreg_proto::control::ListFilter {
                detached_only: true,
                owner: Some(1000),
            },
        },
        ControlRequest::List {
            cursor: 0,
            limit: u32::MAX,
            filter: hreg_proto::control::ListFilter {
                detached_only: false,
                owner: None,
            },
        },
        ControlRequest::Usage,
        ControlRequest::MapDomain {
            domain: 16383,
            slot_chunk: MapDomain::NONE,
            heap_chunk: 7,
        },
        ControlRequest::Resume {
            version: 1,
            session_id: 12,
            token: *b"0123456789abcdef",
        },
    ];
    let replies = [
        Reply::Welcome(Welcome {
            version: 1,
            session_id: 7,
            max_value_size: 1 << 20,
            max_objects: 1 << 24,
            max_bytes: 1 << 32,
            ring_entries: 256,
            data_size: 65536,
            max_rings: 64,
            ring_stride: 4096 + 128 * 256 + 65536,
            instance: 513,
            pins_offset: 64 * (4096 + 128 * 256 + 65536),
            pin_entries: 1024,
            pin_bytes: 8 << 20,
            resume_token: [0x5a; 16],
            resume_grace_ms: 30_000,
        }),
        Reply::Refused {
            status: 10,
            message: "version 999 is not 1".into(),
        },
        Reply::RingOpened {
            index: 2,
            ready_at: Some(8),
        },
        Reply::Ack,
        Reply::Stats(StatsReply {
            objects: 1,
            value_bytes: 2,
            sessions: 3,
            ops: 4,
        }),
        Reply::Error {
            status: 6,
            message: "é".repeat(300),
        },
        Reply::Shutdown,
        Reply::Sessions {
            sessions: vec![
                SessionInfo {
                    id: 1,
                    pid: 100,
                    uid: 0,
                    gid: 0,
                    rings: 2,
                    references: 9,
                    name: "hregctl".into(),
                },
                SessionInfo::default(),
            ],
            next: 0,
        },
        Reply::Objects {
            objects: vec![
                ObjectInfo {
                    handle: 0xfff0_0000_1000_0001,
                    size: 40,
                    owner: 1000,
                    refs: 1,
                    flags: flags::SHARED,
                },
                ObjectInfo::default(),
            ],
            next: 77,
        },
        Reply::Usage(UsageReply {
            uptime_secs: 10,
            ops_per_sec: 1000,
            max_objects: 1,
            max_bytes: 2,
            uid_max_objects: 3,
            uid_max_bytes: 4,
            uid_max_references: 12,
            shards: vec![1, 0, 5],
            uids: vec![UidUsage {
                uid: 0,
                objects: 6,
                value_bytes: 60,
                references: 4,
                reserved: 2,
                credit: 64,
            }],
            workers: vec![WorkerUsage { rings: 3, ops: 99 }],
            reclaim_pending: 4096,
            ..UsageReply::default()
        }),
        Reply::DomainChunks {
            domain: 1,
            slots_from: 0,
            slots: 3,
            heap_from: 0,
            heap: 2,
        },
    ];
    let mut seeds: Vec<(String, Vec<u8>)> = Vec::new();
    for (i, r) in requests.iter().enumerate() {
        seeds.push((format!("request-{i:02}"), r.encode()));
    }
    for (i, r) in replies.iter().enumerate() {
        seeds.push((format!("reply-{i:02}"), r.encode()));
    }
    let hello = requests[0].encode();
    let le = |v: u32| v.to_le_bytes().to_vec();
    let cat = |parts: &[&[u8]]| parts.concat();
    let edge: Vec<(&str, Vec<u8>)> = vec![
        ("empty", vec![]),
        ("three-bytes", vec![1, 0, 0]),
        ("unknown-kind", le(99)),
        ("kind-max", le(u32::MAX)),
        ("hello-bad-magic", cat(&[&le(1), b"HREX", &le(1), &[0, 0]])),
        ("hello-short-name", hello[..hello.len() - 1].to_vec()),
        ("hello-trailing", cat(&[&hello, &[0]])),
        (
            "hello-name-65",
            cat(&[&le(1), b"HREG", &le(1), &65u16.to_le_bytes(), &[b'x'; 65]]),
        ),
        (
            "hello-not-utf8",
            cat(&[&le(1), b"HREG", &le(1), &2u16.to_le_bytes(), &[0xc3, 0x28]]),
        ),
        (
            "list-bad-bits",
            cat(&[&le(7), &0u64.to_le_bytes(), &le(1), &le(4), &le(0)]),
        ),
        (
            "sessions-reply-lying-count",
            cat(&[&le(108), &0u64.to_le_bytes(), &le(u32::MAX)]),
        ),
        (
            "objects-reply-lying-count",
            cat(&[&le(109), &0u64.to_le_bytes(), &le(1 << 28), &[0; 28]]),
        ),
        (
            "usage-reply-lying-shards",
            cat(&[&le(110), &[0; 56], &le(u32::MAX), &le(0)]),
        ),
        (
            "usage-reply-lying-workers",
            cat(&[&le(110), &[0; 56], &le(0), &le(0), &le(1 << 20), &[0; 12]]),
        ),
        (
            "error-text-too-long",
            cat(&[&le(106), &le(1), &u16::MAX.to_le_bytes(), &[b'a'; 64]]),
        ),
        ("welcome-short", cat(&[&le(101), &le(1), &[0; 10]])),
        ("ring-close-short", cat(&[&le(3), &[1, 2]])),
    ];
    seeds.extend(edge.into_iter().map(|(n, b)| (n.to_string(), b)));
    seeds
}

/// A `ring_entry` input: data-area size, then the 64-byte entry.
fn ring_input(data_size: u32, entry: [u8; ENTRY_SIZE]) -> Vec<u8> {
    [&data_size.to_le_bytes()[..], &entry[..]].concat()
}

/// Named seeds for `ring_entry`: each opcode in each value form, then
/// malformed entries and extreme data-area sizes.
fn ring_seeds() -> Vec<(String, Vec<u8>)> {
    const DATA: u32 = 65536;
    let base = |opcode: Opcode| Sqe {
        user_data: 0x1122_3344_5566_7788,
        opcode: opcode as u8,
        handle: 0xfff0_0000_1000_0001,
        ..Sqe::default()
    };
    let mut inline = base(Opcode::Insert);
    inline.entry_flags = sqe_flags::INLINE;
    inline.data_len = 32;
    inline.inline = [0xab; 32];
    inline.handle = 0;
    let mut get = base(Opcode::Get);
    get.data_off = 1024;
    get.data_len = 4096;
    get.set_inline_u64(1 << 20);
    let mut stage_write = base(Opcode::StageWrite);
    stage_write.data_len = DATA;
    stage_write.set_inline_u64(65536);
    let mut stage_read = base(Opcode::StageRead);
    stage_read.data_off = 8;
    stage_read.data_len = 100;
    stage_read.set_inline_u64(u64::MAX);
    let mut entries: Vec<(&str, u32, Sqe)> = vec![
        ("insert-inline", DATA, inline),
        (
            "insert-data-shared",
            DATA,
            Sqe {
                obj_flags: flags::SHARED,
                data_off: 100,
                data_len: 5000,
                handle: 0,
                ..base(Opcode::Insert)
            },
        ),
        (
            "insert-staged-detached",
            DATA,
            Sqe {
                obj_flags: flags::DETACHED,
                entry_flags: sqe_flags::STAGED,
                data_len: 1 << 20,
                handle: 0,
                ..base(Opcode::Insert)
            },
        ),
        (
            "insert-empty",
            DATA,
            Sqe {
                handle: 0,
                ..base(Opcode::Insert)
            },
        ),
        ("get", DATA, get),
        (
            "replace-inline",
            DATA,
            Sqe {
                entry_flags: sqe_flags::INLINE,
                data_len: 3,
                ..base(Opcode::Replace)
            },
        ),
        (
            "replace-data-at-end",
            DATA,
            Sqe {
                data_off: DATA - 10,
                data_len: 10,
                ..base(Opcode::Replace)
            },
        ),
        ("retain", DATA, base(Opcode::Retain)),
        ("release", DATA, base(Opcode::Release)),
        ("remove", DATA, base(Opcode::Remove)),
        ("stage-write", DATA, stage_write),
        ("stage-read", DATA, stage_read),
        // Malformed.
        (
            "get-handle-0",
            DATA,
            Sqe {
                handle: 0,
                ..base(Opcode::Get)
            },
        ),
        (
            "insert-unknown-flags",
            DATA,
            Sqe {
                obj_flags: 0x100,
                ..base(Opcode::Insert)
            },
        ),
        (
            "get-obj-flags",
            DATA,
            Sqe {
                obj_flags: flags::SHARED,
                ..base(Opcode::Get)
            },
        ),
        (
            "insert-inline-33",
            DATA,
            Sqe {
                entry_flags: sqe_flags::INLINE,
                data_len: 33,
                ..base(Opcode::Insert)
            },
        ),
        (
            "insert-both-forms",
            DATA,
            Sqe {
                entry_flags: sqe_flags::INLINE | sqe_flags::STAGED,
                ..base(Opcode::Insert)
            },
        ),
        (
            "insert-entry-flag-80",
            DATA,
            Sqe {
                entry_flags: 0x80,
                ..base(Opcode::Insert)
            },
        ),
        (
            "replace-data-one-past",
            DATA,
            Sqe {
                data_off: DATA - 10,
                data_len: 11,
                ..base(Opcode::Replace)
            },
        ),
        (
            "insert-offset-overflow",
            DATA,
            Sqe {
                data_off: u32::MAX,
                data_len: u32::MAX,
                ..base(Opcode::Insert)
            },
        ),
        (
            "get-inline-flag",
            DATA,
            Sqe {
                entry_flags: sqe_flags::INLINE,
                ..base(Opcode::Get)
            },
        ),
        (
            "stage-read-staged-flag",
            DATA,
            Sqe {
                entry_flags: sqe_flags::STAGED,
                ..base(Opcode::StageRead)
            },
        ),
        (
            "opcode-0",
            DATA,
            Sqe {
                opcode: 0,
                ..base(Opcode::Get)
            },
        ),
        (
            "opcode-7",
            DATA,
            Sqe {
                opcode: 7,
                ..base(Opcode::Get)
            },
        ),
        (
            "opcode-15",
            DATA,
            Sqe {
                opcode: 15,
                ..base(Opcode::Get)
            },
        ),
        (
            "opcode-18",
            DATA,
            Sqe {
                opcode: 18,
                ..base(Opcode::Get)
            },
        ),
        (
            "opcode-255",
            DATA,
            Sqe {
                opcode: 255,
                ..base(Opcode::Get)
            },
        ),
        // Extreme data areas.
        (
            "data-size-0-insert",
            0,
            Sqe {
                data_len: 1,
                ..base(Opcode::Insert)
            },
        ),
        (
            "data-size-max-range",
            u32::MAX,
            Sqe {
                data_off: 1,
                data_len: u32::MAX - 1,
                ..base(Opcode::Replace)
            },
        ),
    ];
    let mut seeds: Vec<(String, Vec<u8>)> = entries
        .drain(..)
        .map(|(name, size, sqe)| (name.to_string(), ring_input(size, sqe.encode())))
        .collect();
    // The stamp bytes belong to the ring; parsing ignores them.
    let mut stamped = base(Opcode::Retain).encode();
    stamped[10] = 0xab;
    stamped[11] = 0xcd;
    seeds.push(("stamp-bytes".into(), ring_input(DATA, stamped)));
    seeds.push(("all-ff".into(), vec![0xff; 4 + ENTRY_SIZE]));
    seeds.push(("empty".into(), vec![]));
    seeds.push(("size-only".into(), DATA.to_le_bytes().to_vec()));
    seeds.push((
        "truncated-entry".into(),
        ring_input(DATA, base(Opcode::Get).encode())[..20].to_vec(),
    ));
    seeds
}

/// Writes the seeds when asked, else checks they are all there unchanged.
fn sync_seeds(target: &str, seeds: &[(String, Vec<u8>)]) {
    let dir = corpus_dir(target);
    let write = std::env::var_os("HREG_WRITE_CORPUS").is_some();
    if write {
        std::fs::create_dir_all(&dir).unwrap();
    }
    for (name, bytes) in seeds {
        let path = dir.join(format!("seed-{name}"));
        if write {
            std::fs::write(&path, bytes).unwrap();
        } else {
            let stored = std::fs::read(&path).unwrap_or_else(|e| {
                panic!(
                    "{}: {e}; run HREG_WRITE_CORPUS=1 cargo test -p hreg-proto --test fuzz_corpus",
                    path.display()
                )
            });
            assert_eq!(&stored, bytes, "{} is out of date", path.display());
        }
    }
}

/// Every file of a corpus directory, sorted by name.
fn corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let mut files: Vec<_> = std::fs::read_dir(corpus_dir(target))
        .unwrap_or_else(|e| panic!("corpus of {target}: {e}"))
        .map(|entry| entry.unwrap().path())
        .filter(|p| p.is_file())
        .map(|p| {
            let bytes = std::fs::read(&p).unwrap();
            (p, bytes)
        })
        .collect();
    files.sort();
    files
}

/// Runs `check` on every file, naming the file that fails.
fn replay(target: &str, check: fn(&[u8])) -> usize {
    let files = corpus(target);
    for (path, bytes) in &files {
        if std::panic::catch_unwind(|| check(bytes)).is_err() {
            panic!("{} fails the {target} checks", path.display());
        }
    }
    files.len()
}

#[test]
fn control_decode_corpus_replays_cleanly() {
    let seeds = control_seeds();
    sync_seeds("control_decode", &seeds);
    let replayed = replay("control_decode", checks::control_decode);
    assert!(replayed >= seeds.len(), "{replayed} files");
    // The seeds made by the encoders decode to what made them.
    for (name, bytes) in seeds.iter().filter(|(n, _)| n.starts_with("request-")) {
        let request = ControlRequest::decode(bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(request.encode(), *bytes, "{name}");
    }
    for (name, bytes) in seeds.iter().filter(|(n, _)| n.starts_with("reply-")) {
        let reply = Reply::decode(bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(reply.encode(), *bytes, "{name}");
    }
}

#[test]
fn ring_entry_corpus_replays_cleanly() {
    let seeds = ring_seeds();
    sync_seeds("ring_entry", &seeds);
    let replayed = replay("ring_entry", checks::ring_entry);
    assert!(replayed >= seeds.len(), "{replayed} files");
    // The well-formed seeds parse, the malformed ones do not.
    let valid = [
        "insert-inline",
        "insert-data-shared",
        "insert-staged-detached",
        "insert-empty",
        "get",
        "replace-inline",
        "replace-data-at-end",
        "retain",
        "release",
        "remove",
        "stage-write",
        "stage-read",
        "data-size-max-range",
        "stamp-bytes",
    ];
    for (name, bytes) in &seeds {
        let (size, raw) = checks::split_ring_input(bytes);
        let parsed = hreg_proto::entry::RingRequest::parse(&raw, size);
        assert_eq!(
            parsed.is_ok(),
            valid.contains(&name.as_str()),
            "{name}: {parsed:?}"
        );
    }
}
