//! Adopting the state an earlier daemon kept (`crate::store`): checked
//! whole first, then rebuilt from what can be trusted.
//!
//! What is checked (else the state is refused, [`AdoptError::Unusable`], and
//! the caller sets it aside whole): before anything is mapped, that every
//! piece is one no other uid could have changed (a regular file of the
//! daemon's uid, mode 0600, one link; or a sealed memfd of its uid:
//! [`crate::check_kept`]); every name is one of the state's; the
//! header's magic and layout version; each domain's record (magic, id,
//! owner, shards) and its chunks (the header, records and slot chunks of
//! the right sizes, every heap chunk labelled as its domain's and of the
//! length its label says, every chunk from the first to the last
//! present); every live slot (its owner matches a private domain's, it is
//! SHARED exactly in the shared domain, its value lies inside a heap
//! chunk, no two values overlap).
//!
//! What is rebuilt, never read from a header that may be half written:
//!
//! - slots: a slot whose sequence was left odd (the daemon died while
//!   writing it) gets back the version its shard's journal entry holds,
//!   which is the version before the write (a write's completion is posted
//!   only after the slot is whole, so no client saw the new one); an odd
//!   slot with no journal entry for it is dropped (freed, its generation
//!   moved on, so its handle is STALE);
//! - each shard's free slots and next new index, and its live count;
//! - the heap's free space: everything between live values;
//! - the counters per uid and in all, from the live slots;
//! - reference counts, from the kept session records (the newest complete
//!   generation of each); a handle a record names that is not live is
//!   dropped from it, and a live object that no record references and that
//!   is not DETACHED is dropped (its last reference was being released, or
//!   its insert never completed).
//!
//! The adopted registry continues the same instance bits and generations,
//! so every handle of a live object resolves as before. Until every kept
//! session has come back ([`crate::Registry::resumed`]) or been given up
//! ([`crate::Registry::give_up`]), no block of the adopted heap is reused
//! (the gaps between its values, and the blocks of values live at adoption
//! that are freed meanwhile): their clients may still hold borrowed
//! references that the daemon cannot see. Blocks made since follow the
//! ordinary rule (`crate::reclaim`).

use crate::domain::Domain;
use crate::holder::Holder;
use crate::memory::Chunk;
use crate::reclaim::Retired;
use crate::refs::{RefTable, SessionKey};
use crate::store::names::{self, Piece};
use crate::store::{check_kept, Store};
use crate::{lock, random_u64, Limits, Registry};
use hreg_proto::handle::{Handle, MAX_DOMAINS};
use hreg_proto::table::{header, HeapAddress, Payload, Slot, INLINE_VALUE, SHARED_DOMAIN};
use hreg_proto::{flags, MAX_VALUE_SIZE_LIMIT};
use rustix::fd::{AsFd, OwnedFd};
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// Why a kept state was not adopted.
#[derive(Debug)]
pub enum AdoptError {
    /// There is no state (nothing was kept): start empty.
    Nothing,
    /// The state cannot be used: set it aside whole and start empty.
    Unusable(String),
}

impl fmt::Display for AdoptError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AdoptError::Nothing => write!(f, "no state was kept"),
            AdoptError::Unusable(why) => write!(f, "the kept state cannot be used: {why}"),
        }
    }
}

impl std::error::Error for AdoptError {}

/// What a kept state holds, and what adopting it did (or would do).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StateReport {
    /// The instance bits its handles carry.
    pub instance: u16,
    /// Whether its daemon stopped cleanly.
    pub clean: bool,
    /// Domains (the shared one included).
    pub domains: usize,
    /// Live objects (after the drops below).
    pub objects: u64,
    /// Bytes of their values.
    pub value_bytes: u64,
    /// Kept sessions.
    pub sessions: usize,
    /// References those sessions hold.
    pub references: u64,
    /// Slots put back to their version before a write that did not finish.
    pub rolled_back: usize,
    /// Slots dropped because a write did not finish and nothing recorded
    /// their earlier version.
    pub dropped_torn: usize,
    /// Objects dropped because no kept session referenced them and they
    /// were not DETACHED.
    pub dropped_unreferenced: usize,
}

impl fmt::Display for StateReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "instance {}, stopped {}, {} domains, {} objects ({} value bytes), {} sessions \
             holding {} references; {} slots rolled back, {} dropped mid-write, {} objects \
             dropped unreferenced",
            self.instance,
            if self.clean {
                "cleanly"
            } else {
                "without a clean stop"
            },
            self.domains,
            self.objects,
            self.value_bytes,
            self.sessions,
            self.references,
            self.rolled_back,
            self.dropped_torn,
            self.dropped_unreferenced
        )
    }
}

/// A session the adopted state kept: its client may take it back
/// ([`crate::Registry::resumed`]) within the daemon's grace period, else
/// the daemon gives it up ([`crate::Registry::give_up`]).
pub struct KeptSession {
    /// The session's references and identity.
    pub holder: Holder,
}

impl KeptSession {
    /// Who the session is.
    pub fn key(&self) -> SessionKey {
        self.holder.key
    }
}

/// An adopted registry, the sessions it kept, and what adopting did.
pub struct Adopted {
    /// The registry, serving the kept objects.
    pub registry: Registry,
    /// Sessions waiting for their clients.
    pub sessions: Vec<KeptSession>,
    /// What was found and done.
    pub report: StateReport,
}

/// What the adopted heaps held, for the quarantine: the end of what each
/// (domain, chunk) held (live values and gaps), and the gaps.
#[derive(Default)]
struct AdoptedHeap {
    marks: HashMap<(u16, u16), u64>,
    gaps: Vec<Retired>,
}

/// The pieces of a state, sorted by what they are.
#[derive(Default)]
struct Pieces {
    header: Option<OwnedFd>,
    domains: BTreeMap<u16, (Option<u32>, OwnedFd)>,
    slots: BTreeMap<u16, BTreeMap<usize, OwnedFd>>,
    heaps: BTreeMap<u16, BTreeMap<usize, OwnedFd>>,
    sessions: BTreeMap<u64, BTreeMap<u32, (String, OwnedFd)>>,
}

fn unusable(why: impl Into<String>) -> AdoptError {
    AdoptError::Unusable(why.into())
}

fn sort(pieces: Vec<(String, OwnedFd)>) -> Result<Pieces, AdoptError> {
    if pieces.is_empty() {
        return Err(AdoptError::Nothing);
    }
    // Before anything is mapped: a file another uid could have changed
    // (swapped, cut short, linked) is never adopted.
    for (name, fd) in &pieces {
        check_kept(fd.as_fd()).map_err(|why| {
            unusable(format!("{name}: {why}, so another uid may have changed it"))
        })?;
    }
    let mut sorted = Pieces::default();
    for (name, fd) in pieces {
        match names::parse(&name)
            .ok_or_else(|| unusable(format!("{name:?} is not part of a state")))?
        {
            Piece::Header => sorted.header = Some(fd),
            Piece::Domain { domain, owner } => {
                if sorted.domains.insert(domain, (owner, fd)).is_some() {
                    return Err(unusable(format!("domain {domain} has two records")));
                }
            }
            Piece::Slots { domain, chunk } => {
                sorted.slots.entry(domain).or_default().insert(chunk, fd);
            }
            Piece::Heap { domain, chunk } => {
                sorted.heaps.entry(domain).or_default().insert(chunk, fd);
            }
            Piece::Session { id, generation } => {
                sorted
                    .sessions
                    .entry(id)
                    .or_default()
                    .insert(generation, (name, fd));
            }
        }
    }
    Ok(sorted)
}

/// Chunks `0..n` of a domain, in order; an error when one is missing.
fn in_order(
    domain: u16,
    what: &str,
    chunks: BTreeMap<usize, OwnedFd>,
) -> Result<Vec<Chunk>, AdoptError> {
    let mut out = Vec::with_capacity(chunks.len());
    for (expected, (k, fd)) in chunks.into_iter().enumerate() {
        if k != expected {
            return Err(unusable(format!(
                "{what} chunk {expected} of domain {domain} is missing"
            )));
        }
        out.push(
            Chunk::adopt(fd)
                .map_err(|e| unusable(format!("{what} chunk {k} of domain {domain}: {e}")))?,
        );
    }
    Ok(out)
}

impl Registry {
    /// Adopts the state in `pieces` (every named descriptor a [`Store`]
    /// kept), which `store` keeps from now on, under `limits`.
    pub fn adopt(
        store: Arc<dyn Store>,
        pieces: Vec<(String, OwnedFd)>,
        limits: Limits,
    ) -> Result<Adopted, AdoptError> {
        Registry::take(store, pieces, limits, true)
    }

    /// What adopting `pieces` would find, without changing them.
    pub fn survey(pieces: Vec<(String, OwnedFd)>) -> Result<StateReport, AdoptError> {
        Registry::take(
            Arc::new(crate::MemoryStore),
            pieces,
            Limits::default(),
            false,
        )
        .map(|a| a.report)
    }

    fn take(
        store: Arc<dyn Store>,
        pieces: Vec<(String, OwnedFd)>,
        limits: Limits,
        apply: bool,
    ) -> Result<Adopted, AdoptError> {
        let mut pieces = sort(pieces)?;
        let header = pieces
            .header
            .take()
            .ok_or_else(|| unusable("the header is missing"))?;
        let header = Chunk::adopt(header).map_err(|e| unusable(format!("header: {e}")))?;
        if header.len() != header::LEN {
            return Err(unusable(format!(
                "the header is {} bytes, not {}",
                header.len(),
                header::LEN
            )));
        }
        let (instance, clean) = {
            let view = header::Header::new(header.mapping())
                .ok_or_else(|| unusable("the header is not one of this layout version"))?;
            (view.instance(), view.clean())
        };
        if instance == 0 {
            return Err(unusable("the header names instance 0"));
        }
        if !pieces.domains.contains_key(&SHARED_DOMAIN) {
            return Err(unusable("the shared domain is missing"));
        }
        let stray = pieces
            .slots
            .keys()
            .chain(pieces.heaps.keys())
            .find(|d| !pieces.domains.contains_key(d));
        if let Some(domain) = stray {
            return Err(unusable(format!(
                "chunks of domain {domain}, which has no record"
            )));
        }
        let seed = random_u64();
        let mut domains = Vec::new();
        let mut shards = None;
        for (id, (owner, record)) in std::mem::take(&mut pieces.domains) {
            if usize::from(id) >= MAX_DOMAINS || (id == SHARED_DOMAIN) != owner.is_none() {
                return Err(unusable(format!(
                    "domain {id} cannot be owned as its name says"
                )));
            }
            let record = Chunk::adopt(record)
                .map_err(|e| unusable(format!("record of domain {id}: {e}")))?;
            let slots = in_order(id, "slot", pieces.slots.remove(&id).unwrap_or_default())?;
            let heap = in_order(id, "heap", pieces.heaps.remove(&id).unwrap_or_default())?;
            let domain =
                Domain::adopt(&store, id, owner, seed ^ u64::from(id), record, slots, heap)
                    .map_err(AdoptError::Unusable)?;
            if *shards.get_or_insert(domain.shard_count()) != domain.shard_count() {
                return Err(unusable("domains of different shard counts"));
            }
            domains.push(Arc::new(domain));
        }
        let shards = shards.expect("the shared domain is there");
        let registry =
            Registry::assemble(Arc::clone(&store), instance, shards, header, limits, seed);
        let mut report = StateReport {
            instance,
            clean,
            domains: domains.len(),
            ..StateReport::default()
        };
        let mut next_domain = SHARED_DOMAIN + 1;
        let mut adopted_heap = AdoptedHeap::default();
        for domain in &domains {
            registry.rebuild_domain(domain, apply, &mut report, &mut adopted_heap)?;
            if let Some(uid) = domain.owner {
                lock(&registry.by_uid).0.insert(uid, domain.id);
            }
            next_domain = next_domain.max(domain.id + 1);
            let _ = registry.domains[usize::from(domain.id)].set(Arc::clone(domain));
        }
        lock(&registry.by_uid).1 = next_domain;
        let sessions = registry.rebuild_references(&store, pieces.sessions, apply, &mut report)?;
        if apply {
            registry.drop_unreferenced(&domains, &mut report);
            let view = header::HeaderWriter::new(registry.header.mapping()).expect("checked above");
            view.set_clean(false);
            // The adopted heap's blocks wait until the kept sessions are
            // back: the gaps (values retired before the restart, which a
            // kept client may still have pinned) and the blocks of values
            // live at adoption that are freed meanwhile (a kept client may
            // have borrowed any of them). What is made after follows the
            // ordinary rule.
            registry
                .reclaim
                .adopt(sessions.len(), adopted_heap.marks, adopted_heap.gaps);
        }
        let usage = registry.usage();
        report.objects = usage.objects;
        report.value_bytes = usage.value_bytes;
        report.sessions = sessions.len();
        Ok(Adopted {
            registry,
            sessions,
            report,
        })
    }

    /// Reads every slot of an adopted domain: puts back or drops slots left
    /// mid-write, rebuilds its shards and heap and counts what is live.
    fn rebuild_domain(
        &self,
        domain: &Domain,
        apply: bool,
        report: &mut StateReport,
        adopted_heap: &mut AdoptedHeap,
    ) -> Result<(), AdoptError> {
        let shard_bits = self.shard_bits;
        let mask = (1usize << shard_bits) - 1;
        let mut next_local = vec![0u32; domain.shard_count()];
        let mut untouched: Vec<u32> = Vec::new();
        let mut blocks = Vec::new();
        let made = domain.slots_made();
        let mut index = 0u32;
        while index < made {
            let (view, _) = domain.slot(index).expect("inside an adopted chunk");
            let shard = index as usize & mask;
            if view.is_untouched() {
                untouched.push(index);
                index += 1;
                continue;
            }
            next_local[shard] = next_local[shard].max((index >> shard_bits) + 1);
            let mut slot = view.current();
            if view.is_mid_write() {
                match domain.journaled(index) {
                    Some(old) => {
                        report.rolled_back += 1;
                        slot = old;
                    }
                    None => {
                        report.dropped_torn += 1;
                        slot = Slot::free(slot.generation.wrapping_add(1));
                    }
                }
                if apply {
                    view.write(&slot);
                }
            }
            if let Payload::Reserved { .. } = slot.payload {
                // A handle granted ahead to a session of the daemon that
                // went away and never filled: freed with its generation
                // moved on, so that the handle stays STALE.
                slot = Slot::free(slot.generation.wrapping_add(1));
                if apply {
                    domain.write_slot(index, &slot);
                }
            }
            self.adopt_slot(domain, index, &slot, &mut blocks)?;
            index += 1;
        }
        // Slots prepared but never handed out below a shard's next index
        // (a daemon killed between the two) are free slots like the others.
        for index in untouched {
            let shard = index as usize & mask;
            if index >> shard_bits >= next_local[shard] {
                continue;
            }
            let mut locked = lock(&domain.shards[shard]);
            let generation = locked.first_generation();
            if apply {
                domain.write_slot(index, &Slot::free(generation));
            }
            locked.free.push_back(index);
        }
        for (shard, next) in next_local.into_iter().enumerate() {
            lock(&domain.shards[shard]).next_local = next;
        }
        let live: Vec<(HeapAddress, u64)> = blocks.clone();
        let gaps = domain
            .adopt_heap(blocks)
            .map_err(|e| unusable(format!("domain {}: {e}", domain.id)))?;
        for &(at, len) in live.iter().chain(&gaps) {
            let end = adopted_heap.marks.entry((domain.id, at.chunk)).or_default();
            *end = (*end).max(at.offset + len.max(1));
        }
        adopted_heap
            .gaps
            .extend(gaps.into_iter().map(|(at, len)| Retired {
                domain: domain.id,
                at,
                len,
                gap: true,
            }));
        Ok(())
    }

    /// Counts one slot of an adopted domain: a free slot joins its shard's
    /// free list, a live one its counters (its heap block into `blocks`).
    fn adopt_slot(
        &self,
        domain: &Domain,
        index: u32,
        slot: &Slot,
        blocks: &mut Vec<(HeapAddress, u64)>,
    ) -> Result<(), AdoptError> {
        let shard = index as usize & (domain.shard_count() - 1);
        let mut locked = lock(&domain.shards[shard]);
        match slot.payload {
            Payload::Free => {
                // Generation 0 after a kill: retired, never handed out again.
                if slot.generation != 0 {
                    locked.free.push_back(index);
                }
                return Ok(());
            }
            // Made free by `rebuild_domain` before it gets here.
            Payload::Reserved { .. } => return Ok(()),
            Payload::Inline(_) if slot.len as usize > INLINE_VALUE => {
                return Err(unusable(format!(
                    "slot {index} of domain {}: inline value too long",
                    domain.id
                )));
            }
            Payload::Heap(at) => {
                if u64::from(slot.len) > MAX_VALUE_SIZE_LIMIT {
                    return Err(unusable(format!(
                        "slot {index} of domain {}: value too long",
                        domain.id
                    )));
                }
                blocks.push((at, u64::from(slot.len)));
            }
            Payload::Inline(_) => {}
        }
        if domain.owner.is_some_and(|uid| uid != slot.owner) {
            return Err(unusable(format!(
                "slot {index} of domain {}: owned by uid {}, not the domain's",
                domain.id, slot.owner
            )));
        }
        // A slot chunk of the shared domain where a private one should be,
        // or the other way round.
        if (u32::from(slot.flags) & flags::SHARED != 0) != domain.owner.is_none() {
            return Err(unusable(format!(
                "slot {index} of domain {}: a{} object in a{} domain",
                domain.id,
                if domain.owner.is_none() {
                    " private"
                } else {
                    " SHARED"
                },
                if domain.owner.is_none() {
                    " shared"
                } else {
                    " private"
                },
            )));
        }
        let bytes = u64::from(slot.len);
        let (_, meta) = domain.slot(index).expect("inside an adopted chunk");
        // Charged to its creator until the references are counted.
        locked.made(meta, slot.owner, 0, bytes);
        self.live[shard].fetch_add(1, Ordering::Relaxed);
        self.total.adopt(1, bytes);
        self.uid_counters(slot.owner).adopt(1, bytes);
        Ok(())
    }

    /// Takes each kept session's newest complete record and counts its
    /// references on their objects (entries of objects that are gone are
    /// dropped from it).
    fn rebuild_references(
        &self,
        store: &Arc<dyn Store>,
        sessions: BTreeMap<u64, BTreeMap<u32, (String, OwnedFd)>>,
        apply: bool,
        report: &mut StateReport,
    ) -> Result<Vec<KeptSession>, AdoptError> {
        let mut kept = Vec::new();
        let mut last_id = 0;
        for (id, generations) in sessions {
            let mut record = None;
            for (generation, (name, fd)) in generations.into_iter().rev() {
                let adopted = Chunk::adopt(fd).ok().and_then(|chunk| {
                    RefTable::adopt(&chunk, store, name.clone(), generation, apply)
                });
                match adopted {
                    Some(table) if record.is_none() && table.key().id == id => record = Some(table),
                    // Older generations (a growth the daemon did not finish
                    // cleaning up), and records that are not whole.
                    _ if apply => store.remove(&name),
                    _ => {}
                }
            }
            let Some(mut table) = record else {
                continue;
            };
            last_id = last_id.max(id);
            let uid = table.key().uid;
            for (handle, count) in table.entries() {
                let counted = Handle::new(handle)
                    .and_then(|h| self.locate(h).ok())
                    .is_some_and(|(domain, index, generation)| {
                        let Some((view, meta)) = domain.slot(index) else {
                            return false;
                        };
                        let slot = view.current();
                        if slot.generation != generation || !slot.payload.is_object() {
                            return false;
                        }
                        lock(&domain.shards[self.shard_of(index)]).hold(meta, index, uid, count);
                        true
                    });
                if counted {
                    report.references += u64::from(count);
                } else if apply {
                    table.forget(handle);
                }
            }
            let usage = self.uid_counters(uid);
            table.count_against(Arc::clone(&usage));
            kept.push(KeptSession {
                holder: Holder::new(table, usage),
            });
        }
        self.next_session.store(last_id + 1, Ordering::Relaxed);
        Ok(kept)
    }

    /// Drops the live objects that no kept session references and that
    /// are not DETACHED, and charges each object that its creator no longer
    /// references to the uid referencing it most (whatever its quota: the
    /// object is there).
    fn drop_unreferenced(&self, domains: &[Arc<Domain>], report: &mut StateReport) {
        for domain in domains {
            for index in 0..domain.slots_made() {
                let Some((view, meta)) = domain.slot(index) else {
                    continue;
                };
                let slot = view.current();
                if !slot.payload.is_object() || u32::from(slot.flags) & flags::DETACHED != 0 {
                    continue;
                }
                let mut shard = lock(&domain.shards[index as usize & (domain.shard_count() - 1)]);
                if meta.refs.load(Ordering::Relaxed) == 0 {
                    self.kill(domain, &mut shard, index, &slot, None);
                    report.dropped_unreferenced += 1;
                } else if meta.payer_refs.load(Ordering::Relaxed) == 0 {
                    self.move_charge(domain, &mut shard, index, &slot, None, false);
                }
            }
        }
    }

    /// A kept session's client took it back: its session memory (brought
    /// back by the client) is read for borrowed references from now on.
    pub fn resumed(&self, _session: &Holder) {
        self.one_kept_session_less();
    }

    /// A kept session's client did not come back in time: its references
    /// are dropped as if its client had died, and its record goes.
    pub fn give_up(&self, kept: KeptSession) {
        self.release_all(&kept.holder);
        self.one_kept_session_less();
    }

    fn one_kept_session_less(&self) {
        self.reclaim.one_kept_session_less();
    }

    /// Marks the kept state cleanly stopped: the daemon's last word, once
    /// nothing is in flight.
    pub fn mark_clean(&self) {
        if let Some(view) = header::HeaderWriter::new(self.header.mapping()) {
            view.set_clean(true);
        }
    }
}
