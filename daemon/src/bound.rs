//! The memory hregd may take, stated from its settings: a fixed overhead
//! plus, for every uid, what that uid's quotas let it make the daemon keep
//! (README "Memory", docs/DESIGN.md "What memory a uid may cost"). Each
//! term is computed here from the constants the code is built with, so the
//! statement, the code and the test that checks it (`tests/memory_bound.rs`)
//! have one source.
//!
//! "Memory" is the daemon's private pages (allocator, stacks, the slots'
//! daemon-side facts, reference tables) plus every page of every memfd it
//! holds or maps (heaps, slot tables, session memory, whoever touched the
//! page). The terms are upper bounds, several of them loose by design: a
//! heap block is counted with the two pages it may straddle, and a slot
//! table with the highest slot any one shard reached.

use crate::admission::{PARKED_CAP, WAITING_SHARE};
use crate::config::Config;
use crate::worker::{QUANTUM, QUANTUM_ALONE};
use hreg_proto::pins::{honoured_bytes, pin_table_len, PIN_ENTRIES};
use hreg_proto::ring::READY_AREA;
use hreg_proto::table::{FIRST_SLOT_CHUNK, INLINE_VALUE, MAX_HEAP_CHUNKS, SLOT_SIZE};
use hreg_registry::memory_facts::{
    FIRST_REFERENCE_TABLE, HEAP_IDLE_MAX, PAGE, RECLAIM_PASS_BYTES, SLOTS_AHEAD, SLOT_META_BYTES,
};
use hreg_registry::{Registry, REFERENCE_BYTES};

/// The daemon's own structures for one session and its connection (the
/// session, its connection's state, holder, reader and index entries: a
/// few hundred bytes each), with their allocations' rounding.
pub const SESSION_STRUCTS: u64 = 4096;

/// The daemon's structures for one open ring (a worker's view of it and
/// its place in the uid's turn).
pub const RING_STRUCTS: u64 = 1024;

/// The daemon's structures for one connection that has not attached yet.
pub const CONN_STRUCTS: u64 = 512;

/// What a thread keeps to copy one value out of the heap
/// (`Registry::get_with`'s buffer, given back above this size).
const COPY_KEPT: u64 = 1 << 20;

/// The stack a worker thread may use (Rust's default for spawned
/// threads) and the main thread's (the usual `RLIMIT_STACK`).
const WORKER_STACK: u64 = 2 << 20;
const MAIN_STACK: u64 = 8 << 20;

/// glibc's `M_TRIM_THRESHOLD` before it adapts: free memory at the top of
/// an arena below this is kept.
const TRIM_THRESHOLD: u64 = 128 << 10;

/// Heap blocks are multiples of this.
const BLOCK_ALIGN: u64 = 16;

/// One term of the bound: its name, its bytes, and where it comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Term {
    pub name: &'static str,
    pub bytes: u64,
    pub why: &'static str,
}

/// How much of the daemon one uid uses at most: its sessions and their
/// open rings (for a uid held to the caps, the caps; root is exempt and
/// counts with what it has).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UidShape {
    pub sessions: u64,
    pub rings: u64,
    /// Whether the uid is held to the per-uid connection shares (every
    /// uid but root).
    pub connection_shares: bool,
}

impl UidShape {
    /// Any uid but root: as many sessions and rings as the caps allow.
    pub fn capped(config: &Config) -> UidShape {
        let sessions = config.limits.uid_max_sessions as u64;
        let rings = (config.limits.uid_max_rings as u64)
            .min(sessions.saturating_mul(u64::from(config.layout.max_rings)));
        UidShape {
            sessions,
            rings,
            connection_shares: true,
        }
    }
}

/// The memory bound of a daemon with given settings.
#[derive(Clone, Debug)]
pub struct MemoryBound {
    /// What the daemon may take beyond its idle footprint whatever uids
    /// attach.
    pub fixed: Vec<Term>,
    /// What one uid held to the caps may make it keep.
    pub per_uid: Vec<Term>,
}

/// The sum of some terms.
pub fn sum(terms: &[Term]) -> u64 {
    terms.iter().fold(0u64, |n, t| n.saturating_add(t.bytes))
}

impl MemoryBound {
    /// The bound for `config`.
    pub fn of(config: &Config) -> MemoryBound {
        MemoryBound {
            fixed: fixed_terms(config),
            per_uid: uid_terms(config, UidShape::capped(config)),
        }
    }

    /// The bound on the whole daemon: its idle footprint (`idle`: what it
    /// took serving nothing, measured), the fixed terms, `uids` uids held
    /// to the caps, and root with `root` (if it attaches).
    pub fn total(&self, config: &Config, idle: u64, uids: u64, root: Option<UidShape>) -> u64 {
        let root = root.map_or(0, |shape| sum(&uid_terms(config, shape)));
        idle.saturating_add(sum(&self.fixed))
            .saturating_add(sum(&self.per_uid).saturating_mul(uids))
            .saturating_add(root)
    }
}

/// The settings `hregd FLAGS...` runs with (defaults, a `--config` file
/// if the flags name one, then the flags), or why it would refuse them.
pub fn settings_of(flags: &[&str]) -> Result<Config, String> {
    use clap::Parser;
    let args =
        crate::config::Args::try_parse_from(std::iter::once("hregd").chain(flags.iter().copied()))
            .map_err(|e| e.to_string())?;
    Config::from_args(&args).map_err(|e| e.to_string())
}

/// The terms whatever the uids: thread buffers, stacks, what malloc keeps,
/// the shared domain's idle heap pages and labels, and the reclamation a
/// pass has not looked at yet.
pub fn fixed_terms(config: &Config) -> Vec<Term> {
    let threads = config.workers as u64 + 1;
    let max_value = config.limits.registry.max_value_size as u64;
    let data = u64::from(config.layout.data_size);
    vec![
        Term {
            name: "thread buffers",
            bytes: threads * (data + max_value.max(COPY_KEPT)),
            why: "each worker's copy of a value from a ring's data area (data_size), and \
                  each serving thread's copy of a value read (the largest value while \
                  in use, 1 MiB kept)",
        },
        Term {
            name: "stacks",
            bytes: config.workers as u64 * WORKER_STACK + MAIN_STACK,
            why: "stack pages the threads touch beyond the idle daemon's: at most their \
                  stacks (2 MiB per worker, 8 MiB for the main thread)",
        },
        Term {
            name: "allocator",
            bytes: threads * 2 * max_value.max(TRIM_THRESHOLD),
            why: "freed memory malloc keeps at the top of each thread's arena: below its \
                  trim threshold, which glibc raises to twice the largest freed mmapped \
                  block (a value's copy: max_value_size); fragmentation inside an arena is \
                  bounded by no formula and is not counted",
        },
        Term {
            name: "shared heap overhead",
            bytes: HEAP_IDLE_MAX + MAX_HEAP_CHUNKS as u64 * PAGE,
            why: "the shared domain's heap keeps up to 4 MiB of free pages, and a label \
                  page per heap chunk (at most 1024 chunks)",
        },
        Term {
            name: "reclamation lag",
            bytes: RECLAIM_PASS_BYTES + lag_entries(config, QUANTUM_ALONE) * data,
            why: "retired blocks no pass has looked at: below 4 MiB no pass is due; past \
                  it a pass runs after the round, and meanwhile (a skipped pass, another \
                  worker's round) each worker serves a uid alone in its round up to twice \
                  its quantum of 64 entries, each bringing at most data_size new bytes",
        },
    ]
}

/// Entries each worker may serve one uid between two reclamation passes
/// (two rounds, as a pass may be skipped while another runs, of up to
/// twice the quantum: a turn's deficit carries one quantum), over all
/// workers.
fn lag_entries(config: &Config, quantum: i64) -> u64 {
    2 * config.workers as u64 * 2 * quantum as u64
}

/// What one uid of shape `shape` may make the daemon keep under `config`.
pub fn uid_terms(config: &Config, shape: UidShape) -> Vec<Term> {
    let limits = &config.limits.registry;
    let layout = &config.layout;
    let shards = config.shards as u64;
    let objects = limits.uid_max_objects;
    // A block touches at most two pages beyond its bytes (a 64-byte block
    // can straddle two pages that hold nothing else) and rounds its value
    // up to 16 bytes.
    let block_overhead = BLOCK_ALIGN + 2 * PAGE;
    let blocks = objects.min(limits.uid_max_bytes / (INLINE_VALUE as u64 + 1));
    let pin_budget = Registry::pin_budget(limits, config.limits.uid_max_sessions);
    let pinned_blocks = shape.sessions.saturating_mul(PIN_ENTRIES as u64);
    let session_memory = (pin_table_len(PIN_ENTRIES) as u64).next_multiple_of(PAGE)
        + READY_AREA as u64
        + FIRST_REFERENCE_TABLE.next_multiple_of(PAGE)
        + SESSION_STRUCTS;
    let ring_memory = layout.ring_stride() as u64 + RING_STRUCTS;
    // Slot facts are kept for whole chunks (chunk k holds 1024 << k slots):
    // at most twice the slots up to the highest, and the first chunk.
    let slot_bytes = SLOT_SIZE as u64 + 2 * SLOT_META_BYTES;
    let first_chunk_facts = u64::from(FIRST_SLOT_CHUNK) * SLOT_META_BYTES;
    vec![
        Term {
            name: "values",
            bytes: limits.uid_max_bytes,
            why: "the bytes of the values charged to the uid and of its ring staging, \
                  counted together against uid_max_bytes",
        },
        Term {
            name: "value blocks' pages",
            bytes: blocks.saturating_mul(block_overhead),
            why: "each value over 48 bytes has a heap block, its length rounded up to 16 \
                  bytes, touching at most two pages beyond its bytes: min(uid_max_objects, \
                  uid_max_bytes / 49) blocks",
        },
        Term {
            name: "pins",
            bytes: shape
                .sessions
                .saturating_mul(honoured_bytes(pin_budget, PIN_ENTRIES)),
            why: "retired blocks its sessions' borrowed references hold back, charged to \
                  the uid: each session is honoured for its pin budget (uid_max_bytes / \
                  uid_max_sessions, at least max_value_size) and 4 KiB per pin entry",
        },
        Term {
            name: "pinned blocks' pages",
            bytes: pinned_blocks.saturating_mul(block_overhead),
            why: "each of a session's 1024 pin entries may hold one block, touching at \
                  most two pages beyond its bytes",
        },
        Term {
            name: "own heap overhead",
            bytes: HEAP_IDLE_MAX + MAX_HEAP_CHUNKS as u64 * PAGE,
            why: "the uid's private domain's heap keeps up to 4 MiB of free pages and a \
                  label page per chunk (at most 1024)",
        },
        Term {
            name: "slots",
            bytes: (2 * shards)
                .saturating_mul(objects)
                .saturating_mul(slot_bytes)
                .saturating_add(2 * (SLOTS_AHEAD + first_chunk_facts)),
            why: "64 bytes of slot table and the daemon's facts per slot, never given back: \
                  a table is allocated up to its highest slot, and slot indices interleave \
                  the shards, so the uid's objects can raise its own domain's table and \
                  the shared one's to shards × uid_max_objects slots each",
        },
        Term {
            name: "references",
            bytes: limits.uid_max_references.saturating_mul(REFERENCE_BYTES),
            why: "reference-table entries of its sessions (uid_max_references), each at \
                  most 128 bytes with its share of who-else-holds records",
        },
        Term {
            name: "sessions",
            bytes: shape.sessions.saturating_mul(session_memory),
            why: "each session's pin table and ready area (its memory past the rings), its \
                  first reference table and the daemon's structures for it",
        },
        Term {
            name: "rings",
            bytes: shape.rings.saturating_mul(ring_memory),
            why: "each open ring's memory (header, queues, data area: ring_stride), \
                  whoever touched it, and its worker's structures",
        },
        Term {
            name: "connections",
            bytes: if shape.connection_shares {
                (WAITING_SHARE + PARKED_CAP) as u64 * CONN_STRUCTS
            } else {
                0
            },
            why: "connections not attached yet: 32 waiting for HELLO and 4096 parked per \
                  uid (root is exempt and trusted)",
        },
        Term {
            name: "reclamation lag",
            bytes: lag_entries(config, QUANTUM).saturating_mul(u64::from(layout.data_size)),
            why: "blocks retired between two passes while other uids take turns: twice \
                  the quantum of 4 entries per worker round, two rounds per worker, each \
                  entry bringing at most data_size new bytes",
        },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(flags: &[&str]) -> Config {
        let mut all = vec!["--socket", "/s"];
        all.extend_from_slice(flags);
        settings_of(&all).unwrap()
    }

    #[test]
    fn every_quota_raises_its_terms() {
        let small = config(&["--uid-max-bytes", "8388608", "--uid-max-objects", "1000"]);
        let bound = MemoryBound::of(&small);
        let term = |bound: &MemoryBound, name: &str| {
            bound
                .per_uid
                .iter()
                .find(|t| t.name == name)
                .unwrap_or_else(|| panic!("no term {name}"))
                .bytes
        };
        assert_eq!(term(&bound, "values"), 8 << 20);
        assert_eq!(term(&bound, "references"), 2000 * REFERENCE_BYTES);
        for (flag, value, name) in [
            ("--uid-max-bytes", "16777216", "values"),
            ("--uid-max-objects", "2000", "slots"),
            ("--uid-max-references", "9000", "references"),
            ("--uid-max-sessions", "1000", "sessions"),
            ("--ring-entries", "1024", "rings"),
        ] {
            let mut flags = vec![flag, value];
            for (base, base_value) in [
                ("--uid-max-bytes", "8388608"),
                ("--uid-max-objects", "1000"),
            ] {
                if base != flag {
                    flags.extend([base, base_value]);
                }
            }
            let raised = MemoryBound::of(&config(&flags));
            assert!(
                term(&raised, name) > term(&bound, name),
                "{flag} {value} does not raise {name}"
            );
        }
        let total = bound.total(&small, 10 << 20, 3, None);
        assert_eq!(
            total,
            (10 << 20) + sum(&bound.fixed) + 3 * sum(&bound.per_uid)
        );
        assert!(bound.per_uid.iter().all(|t| !t.why.is_empty()));
    }
}
