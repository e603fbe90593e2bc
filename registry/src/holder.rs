//! A session's identity and references, as the registry sees it: who it is
//! (id, uid, resume token), that uid's counters, the references the session
//! holds (by full handle, in its kept record: `crate::refs`), its ring
//! staging, its private domain once known, and what it was granted ahead
//! for posted inserts (reserved handles, byte credit).

use crate::idhash::IdHashSet;
use crate::limits::Counters;
use crate::refs::{RefTable, SessionKey};
use hreg_proto::locks::lock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

/// Who asks, and the references they hold: one per session. Made by
/// [`crate::Registry::holder`], or given back by an adopted state
/// ([`crate::KeptSession`]).
pub struct Holder {
    /// The uid the holder acts as (the daemon gives a session its peer's,
    /// from `SO_PEERCRED`): it owns what it inserts, and access is judged
    /// by it.
    pub uid: u32,
    pub(crate) key: SessionKey,
    /// What this uid owns, shared by all its sessions.
    pub(crate) usage: Arc<Counters>,
    /// References this holder owns, by full handle (never by slot, so a
    /// reused slot can't inherit them). Entries of objects that died while
    /// referenced are dropped by a purge that runs whenever the table has
    /// doubled since the last one, so it stays within twice the live
    /// objects it references plus a floor, however a client loops.
    pub(crate) refs: Mutex<RefTable>,
    /// Bytes of this session's ring staging buffers.
    pub(crate) staged: AtomicU64,
    /// The uid's private domain, once the registry has looked it up.
    pub(crate) own_domain: OnceLock<u16>,
    /// Handles granted ahead to this session whose insert has not come
    /// (slots in the reserved state), and its byte credit left: what goes
    /// back when the session ends.
    pub(crate) ahead: Mutex<Ahead>,
}

/// What a session was granted ahead and has not used.
#[derive(Debug, Default)]
pub(crate) struct Ahead {
    /// A fast hash: only handles the daemon granted enter the set (a
    /// client's handle is only looked up, after its slot was found
    /// reserved for the session), so no client chooses its keys.
    pub handles: IdHashSet<u64>,
    pub credit: u64,
}

impl Holder {
    pub(crate) fn new(refs: RefTable, usage: Arc<Counters>) -> Holder {
        let key = refs.key();
        Holder {
            uid: key.uid,
            key,
            usage,
            refs: Mutex::new(refs),
            staged: AtomicU64::new(0),
            own_domain: OnceLock::new(),
            ahead: Mutex::default(),
        }
    }

    /// The session's id (unique in the registry, kept across restarts).
    pub fn id(&self) -> u64 {
        self.key.id
    }

    /// The secret that takes the session back after a restart.
    pub fn resume_token(&self) -> [u8; 16] {
        self.key.token
    }

    /// Total references this holder owns (references to objects removed
    /// meanwhile included, until the next purge drops them).
    pub fn reference_count(&self) -> u64 {
        lock(&self.refs).total
    }

    /// Entries in the reference table (distinct handles, live or not yet
    /// purged).
    pub fn reference_entries(&self) -> usize {
        lock(&self.refs).len()
    }

    /// Handles granted ahead to this session and not used yet, and its
    /// byte credit left.
    pub fn ahead(&self) -> (usize, u64) {
        let ahead = lock(&self.ahead);
        (ahead.handles.len(), ahead.credit)
    }

    /// Bytes of this session's staging buffers.
    pub fn staged_bytes(&self) -> u64 {
        self.staged.load(Ordering::Relaxed)
    }
}
