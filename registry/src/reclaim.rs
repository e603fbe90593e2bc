//! When a replaced or removed value's heap block may be used again:
//! epoch-based reclamation across processes (the protocol is
//! `hreg_proto::pins`').
//!
//! A block that leaves its slot is noted here with the epoch it left in
//! ("limbo"). A pass advances the epoch, reads the pin table of every
//! session that says it holds pins, and frees each noted block whose
//! domain no such session pinned at or before the block's epoch. A plain
//! get pins nothing (the seqlock catches a block reused under it), so with
//! no borrowed references every block is freed by the next pass. What a
//! session holds back is counted ([`Reader::held_back`]) so the daemon can
//! charge it to the session's uid and close a session that holds back more
//! than its uid may own.
//!
//! A daemon that adopts a kept state cannot see the pin tables of the
//! sessions it kept until their clients come back (each brings its
//! session memory back): everything that was free when it adopted, and
//! everything it frees before, stays in limbo until every kept session has
//! resumed or given up ([`Quarantine`]).

use hreg_proto::pins::{self, PinTable, PIN_ENTRIES};
use hreg_proto::shm::Mapping;
use hreg_proto::table::{HeapAddress, SHARED_DOMAIN};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};

/// A session whose borrowed references hold blocks back.
#[derive(Debug)]
pub struct Reader {
    uid: u32,
    /// The private domain of the reader's uid, if it has one (it may read
    /// that one and the shared one; root reads every domain).
    own_domain: AtomicU64,
    map: Arc<Mapping>,
    pins_at: usize,
    held_back: AtomicU64,
}

/// "No private domain yet."
const NO_DOMAIN: u64 = u64::MAX;

impl Reader {
    /// A reader for a session of `uid` whose pin table lies at `pins_at` in
    /// `map` (the session's memory).
    pub(crate) fn new(
        uid: u32,
        own_domain: Option<u16>,
        map: Arc<Mapping>,
        pins_at: usize,
    ) -> Reader {
        Reader {
            uid,
            own_domain: AtomicU64::new(own_domain.map_or(NO_DOMAIN, u64::from)),
            map,
            pins_at,
            held_back: AtomicU64::new(0),
        }
    }

    /// Bytes this session held back at the last pass.
    pub fn held_back(&self) -> u64 {
        self.held_back.load(Ordering::Relaxed)
    }

    /// The uid of the session.
    pub fn uid(&self) -> u32 {
        self.uid
    }

    pub(crate) fn set_own_domain(&self, domain: u16) {
        self.own_domain.store(u64::from(domain), Ordering::Relaxed);
    }

    /// Whether this session may map `domain`.
    fn maps(&self, domain: u16) -> bool {
        self.uid == crate::ROOT
            || domain == SHARED_DOMAIN
            || self.own_domain.load(Ordering::Relaxed) == u64::from(domain)
    }

    fn table(&self) -> Option<PinTable<'_>> {
        PinTable::new(&self.map, self.pins_at, PIN_ENTRIES)
    }
}

/// A block waiting to be freed.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Retired {
    pub domain: u16,
    pub at: HeapAddress,
    /// The length of the value it held (its size class follows).
    pub len: u64,
    pub epoch: u64,
    /// A gap between an adopted heap's values (`len` bytes of it), not one
    /// value's block.
    pub gap: bool,
}

/// Blocks of an adopted state held back for the sessions it kept: every
/// block waits while `outstanding` sessions have not come back (their
/// clients may still read, and pin, any block the daemon cannot see).
#[derive(Debug, Default)]
pub(crate) struct Quarantine {
    pub outstanding: usize,
}

/// The blocks waiting, and the readers to ask.
#[derive(Default)]
pub(crate) struct Limbo {
    pub retired: Vec<Retired>,
    pub readers: Vec<Weak<Reader>>,
    pub quarantine: Quarantine,
}

impl Limbo {
    /// One pass: the blocks that may be freed now (the rest stay), with the
    /// bytes each live reader holds back recorded on it.
    pub fn pass(&mut self, epoch: &AtomicU64) -> Vec<Retired> {
        self.readers.retain(|r| r.strong_count() > 0);
        if self.retired.is_empty() {
            return Vec::new();
        }
        let now = pins::begin_pass(epoch);
        // The oldest pin of each domain, per reader that holds any.
        let readers: Vec<Arc<Reader>> = self.readers.iter().filter_map(Weak::upgrade).collect();
        let mut oldest: Vec<(&Reader, HashMap<u16, u64>)> = Vec::new();
        for reader in &readers {
            let Some(table) = reader.table() else {
                continue;
            };
            reader.held_back.store(0, Ordering::Relaxed);
            if !table.any() {
                continue;
            }
            let mut pinned = HashMap::new();
            table.scan(now, |domain, epoch| {
                if reader.maps(domain) {
                    let e = pinned.entry(domain).or_insert(epoch);
                    *e = (*e).min(epoch);
                }
            });
            if !pinned.is_empty() {
                oldest.push((reader, pinned));
            }
        }
        let mut free = Vec::new();
        let quarantine = &self.quarantine;
        self.retired.retain(|block| {
            if quarantine.outstanding > 0 {
                return true;
            }
            let mut reusable = true;
            for (reader, pinned) in &oldest {
                let pin = pinned.get(&block.domain).copied();
                if !pins::reusable(block.epoch, pin) {
                    reusable = false;
                    reader.held_back.fetch_add(block.len, Ordering::Relaxed);
                }
            }
            if reusable {
                free.push(*block);
            }
            !reusable
        });
        free
    }
}
