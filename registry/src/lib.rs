//! hreg-registry: the objects of hreg and everything about them — the
//! object model (references per session, DETACHED, access by uid),
//! generational handles, the limits (global and per uid), and the values,
//! kept in shared memory that clients read without a round trip.
//!
//! Objects live in domains ([`hreg_proto::table`]): each uid's private
//! objects in its own, every SHARED object in the shared one, each a slot
//! table and a heap in memfds only the daemon writes ([`Chunk`]). A
//! handle names its domain, slot and generation; a lookup hashes nothing.
//! Writers take the lock of the slot's shard (one per slot-index residue,
//! per domain); readers in other processes take none (the seqlock of
//! [`hreg_proto::table::SlotView`]). A replaced or removed value's block
//! is reused only once no borrowed reference can reach it (`reclaim`).
//!
//! Every object is charged to one uid (`SlotMeta::payer`): its creator
//! while the creator references it, else a uid that keeps it alive (see
//! `Registry::move_charge`); every reference-table entry counts against its
//! session's uid (`uid_max_references`). A uid other than root gets figures
//! only over what it may read ([`Registry::usage_visible_to`]).
//!
//! No sockets, threads or signals: the daemon serves the registry and the
//! bench measures it alone. The only nested locks are a shard's, then the
//! session's reference table, the uids' counters, its domain's heap or a
//! retired list (always in that order); a reclamation pass takes no shard
//! lock.

#![deny(unsafe_code)]
#![warn(missing_docs)]

mod adopt;
mod domain;
mod heap;
mod holder;
mod idhash;
mod limits;
mod memory;
mod reclaim;
mod refs;
mod refusal;
mod store;

pub use adopt::{AdoptError, Adopted, KeptSession, StateReport};
pub use holder::Holder;
pub use hreg_proto::control::ListFilter;
pub use idhash::{IdBuildHasher, IdHashMap, IdHashSet, IdHasher};
pub use limits::{session_staging_cap, Counters, Limits, Usage, REFERENCE_BYTES};
pub use memory::Chunk;
pub use reclaim::ReaderRegistration;
pub use refs::SessionKey;
pub use refusal::Refusal;
pub use store::{
    check_kept, check_private_file, names, sealed_memfd, DirStore, Keeper, KeptStore, MemoryStore,
    Store,
};

/// What the registry keeps in memory per unit of what it holds: the
/// constants its parts are built with, for the daemon's stated memory
/// bound (`hregd::bound`), so that the bound and the code have one source.
pub mod memory_facts {
    /// Pages: the unit in which heaps and slot tables are allocated and
    /// given back.
    pub const PAGE: u64 = crate::heap::PAGE;
    /// Bytes of whole free pages a domain's heap keeps allocated at most.
    pub const HEAP_IDLE_MAX: u64 = crate::heap::IDLE_MAX;
    /// Bytes of slot-table pages allocated ahead of the last slot made.
    pub const SLOTS_AHEAD: u64 = crate::domain::SLOTS_AHEAD;
    /// Daemon-private bytes per slot (reference counts, payer), kept for
    /// every slot of every slot chunk made.
    pub const SLOT_META_BYTES: u64 = std::mem::size_of::<crate::domain::SlotMeta>() as u64;
    /// Bytes retired without a reclamation pass being due, at most.
    pub const RECLAIM_PASS_BYTES: u64 = crate::reclaim::PASS_BYTES;
    /// Bytes of the smallest reference table a session has (every session
    /// has one, empty or not).
    pub const FIRST_REFERENCE_TABLE: u64 =
        (crate::refs::ENTRIES_AT + crate::refs::FIRST_CAPACITY * crate::refs::ENTRY) as u64;
}

use crate::domain::{Domain, Shard, SlotMeta};
use crate::limits::{Charge, LimitCell};
use crate::reclaim::{Reclaimer, Retired};
use crate::refs::{RefTable, PURGE_FLOOR};
use crossbeam_utils::CachePadded;
use hreg_proto::control::ObjectInfo;
use hreg_proto::handle::{Handle, HandleParts, INSTANCE_MASK, MAX_DOMAINS};
use hreg_proto::locks::{self, lock};
use hreg_proto::pins;
use hreg_proto::shm::{Mapping, ReadWrite};
use hreg_proto::table::{header, Payload, Slot, SHARED_DOMAIN};
use hreg_proto::{flags, Limit, Opcode, Status};
use rustix::fd::BorrowedFd;
use std::cell::RefCell;
use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};

/// The uid allowed everything.
pub const ROOT: u32 = 0;

/// Shards a registry has unless told otherwise (a power of two).
pub const DEFAULT_SHARDS: usize = 64;

/// Slots one LIST request looks at, at most: a few hundred microseconds of
/// the control thread, so that a uid listing in a loop delays another
/// uid's requests by little (the daemon serves uids in turn).
pub const LIST_SCAN_BUDGET: usize = 4096;

/// Byte credit a session may hold for posted inserts ([`Registry::reserve`]):
/// enough for a few thousand small values between grants, little against
/// any byte quota.
pub const CREDIT: u64 = 64 << 10;

/// Handles one grant takes from one shard before it moves to the next.
const PER_SHARD_GRANT: usize = 8;

/// The highest generation a slot may carry; a slot killed at it is retired,
/// so an old handle can never match again.
const LAST_GENERATION: u16 = u16::MAX;

/// The objects of one daemon, with their handles, references, owners and
/// the limits on them; shared by every thread that serves.
pub struct Registry {
    store: Arc<dyn Store>,
    instance: u16,
    shard_bits: u32,
    header: Chunk,
    domains: Box<[OnceLock<Arc<Domain>>]>,
    /// Each uid's private domain, and the next domain id to give. Keyed by
    /// uid, which the kernel gives (`SO_PEERCRED`), not the client: a fast
    /// hash.
    by_uid: Mutex<(IdHashMap<u32, u16>, u16)>,
    seed: u64,
    limits: LimitCell,
    total: CachePadded<Counters>,
    /// What each uid owns. Written only when a uid is seen for the first time.
    /// Keyed by uid, which the kernel gives, not the client: a fast hash.
    uids: RwLock<IdHashMap<u32, Arc<Counters>>>,
    /// Retired blocks and the sessions whose pins hold them back.
    reclaim: Reclaimer,
    /// Live objects, by shard index over every domain.
    live: Box<[AtomicUsize]>,
    /// The id the next session gets.
    next_session: AtomicU64,
    /// Objects that died while references to them were held (by sessions
    /// that keep those entries until they purge them): a session at its
    /// uid's reference limit purges only when this moved since it last did.
    orphaned: AtomicU64,
}

/// What a [`Registry::reclaim`] pass did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Reclaimed {
    /// Blocks freed.
    pub blocks: usize,
    /// Their bytes.
    pub bytes: u64,
    /// Bytes still waiting: borrowed references hold them back.
    pub waiting: u64,
}

impl Registry {
    /// A registry of `shards` shards (rounded up to a power of two, at most
    /// 1024) in memory that ends with it, whose handles carry fresh random
    /// instance bits. Fails only when its first memfds cannot be made.
    pub fn new(shards: usize, limits: Limits) -> std::io::Result<Registry> {
        Registry::create(Arc::new(MemoryStore), shards, limits)
    }

    /// A new, empty registry in `store` (which keeps it for the next daemon,
    /// if it keeps state), with fresh random instance bits.
    pub fn create(
        store: Arc<dyn Store>,
        shards: usize,
        limits: Limits,
    ) -> std::io::Result<Registry> {
        let random = random_u64();
        let instance = ((random >> 48) as u16 & INSTANCE_MASK).max(1);
        Registry::build(store, shards, limits, instance, random)
    }

    /// [`Registry::new`] with given instance bits (non-zero) and seed.
    pub fn with_instance(
        shards: usize,
        limits: Limits,
        instance: u16,
        seed: u64,
    ) -> std::io::Result<Registry> {
        Registry::build(Arc::new(MemoryStore), shards, limits, instance, seed)
    }

    fn build(
        store: Arc<dyn Store>,
        shards: usize,
        limits: Limits,
        instance: u16,
        seed: u64,
    ) -> std::io::Result<Registry> {
        let shards = shards.clamp(1, 1024).next_power_of_two();
        let header = Chunk::create(&*store, names::HEADER, header::LEN)?;
        header.allocate(0, header::LEN as u64)?;
        header::HeaderWriter::init(header.mapping(), instance).expect("the header fits its chunk");
        let shared = Domain::new(&store, SHARED_DOMAIN, None, shards, seed)?;
        let registry = Registry::assemble(store, instance, shards, header, limits, seed);
        let _ = registry.domains[usize::from(SHARED_DOMAIN)].set(Arc::new(shared));
        Ok(registry)
    }

    /// A registry with no domain yet (the caller sets them).
    fn assemble(
        store: Arc<dyn Store>,
        instance: u16,
        shards: usize,
        header: Chunk,
        limits: Limits,
        seed: u64,
    ) -> Registry {
        Registry {
            store,
            instance,
            shard_bits: shards.trailing_zeros(),
            header,
            domains: (0..MAX_DOMAINS).map(|_| OnceLock::new()).collect(),
            by_uid: Mutex::new((IdHashMap::default(), SHARED_DOMAIN + 1)),
            seed,
            limits: LimitCell::new(limits),
            total: CachePadded::new(Counters::default()),
            uids: RwLock::default(),
            reclaim: Reclaimer::default(),
            live: (0..shards).map(|_| AtomicUsize::new(0)).collect(),
            next_session: AtomicU64::new(1),
            orphaned: AtomicU64::new(0),
        }
    }

    /// Whether the registry's store keeps it for the next daemon.
    pub fn keeps_state(&self) -> bool {
        self.store.keeps_state()
    }

    /// The instance bits every handle of this registry carries.
    pub fn instance(&self) -> u16 {
        self.instance
    }

    /// Tells clients whether the daemon serves this registry (readers in
    /// other processes stop resolving handles locally when it does not).
    pub fn set_serving(&self, serving: bool) {
        if let Some(header) = header::HeaderWriter::new(self.header.mapping()) {
            header.set_stopped(!serving);
        }
    }

    /// A read-only descriptor of the registry's header, for a client.
    pub fn header_for_client(&self) -> std::io::Result<BorrowedFd<'_>> {
        self.header.read_only()
    }

    /// A new session of `uid`: a fresh id and resume token, and a record
    /// for its references (kept with the state, if the store keeps it).
    pub fn holder(&self, uid: u32) -> std::io::Result<Holder> {
        let mut token = [0u8; 16];
        token[..8].copy_from_slice(&random_u64().to_le_bytes());
        token[8..].copy_from_slice(&random_u64().to_le_bytes());
        let key = SessionKey {
            id: self.next_session.fetch_add(1, Ordering::Relaxed),
            uid,
            token,
        };
        let usage = self.uid_counters(uid);
        let refs = RefTable::new(&self.store, key, Arc::clone(&usage))?;
        Ok(Holder::new(refs, usage))
    }

    /// Registers a session of `holder`'s uid whose pin table lies at
    /// `pins_at` in `map`: reclamation honours its borrowed references, up
    /// to `budget` bytes of blocks they hold back, for as long as the
    /// returned reader lives (or its process, [`ReaderRegistration::outlive`]). Which
    /// domains the session may map is asked of the registry at each pass,
    /// so a domain made meanwhile counts at once.
    pub fn reader(
        &self,
        holder: &Holder,
        map: Arc<Mapping<ReadWrite>>,
        pins_at: usize,
        budget: u64,
    ) -> ReaderRegistration {
        reclaim::test_pause(holder.uid);
        self.reclaim.register(holder.uid, map, pins_at, budget)
    }

    /// Deregisters readers that outlived their session and need not any
    /// more (their process exited, or they hold no pin); the uid of each.
    pub fn prune_readers(&self) -> Vec<u32> {
        self.reclaim.prune()
    }

    /// Registered readers (sessions, and those that outlive theirs).
    pub fn readers(&self) -> usize {
        self.reclaim.readers()
    }

    /// Readers that outlive their session (its process still reads what
    /// it borrowed), until [`Registry::prune_readers`] lets them go.
    pub fn outliving_readers(&self) -> usize {
        self.reclaim.outliving()
    }

    /// The byte budget of a session's borrowed references under `limits`:
    /// its uid's byte quota shared by as many sessions as a uid may have
    /// (`sessions_per_uid`), and never less than one value of the largest
    /// size. What one uid's pins hold back stays within
    /// `sessions_per_uid` × this.
    pub fn pin_budget(limits: &Limits, sessions_per_uid: usize) -> u64 {
        (limits.uid_max_bytes / sessions_per_uid.max(1) as u64).max(limits.max_value_size as u64)
    }

    fn uid_counters(&self, uid: u32) -> Arc<Counters> {
        if let Some(counters) = locks::read(&self.uids).get(&uid) {
            return Arc::clone(counters);
        }
        Arc::clone(locks::write(&self.uids).entry(uid).or_default())
    }

    /// The limits in force.
    pub fn limits(&self) -> Limits {
        self.limits.get()
    }

    /// New limits for what comes next; what exists already stays.
    pub fn set_limits(&self, limits: Limits) {
        self.limits.set(limits);
    }

    /// Live objects and the bytes of their values.
    pub fn usage(&self) -> Usage {
        self.total.usage()
    }

    /// What each uid is charged for now (uids charged for nothing and
    /// holding no reference are left out).
    pub fn usage_by_uid(&self) -> Vec<(u32, Usage)> {
        let mut list: Vec<(u32, Usage)> = locks::read(&self.uids)
            .iter()
            .map(|(&uid, counters)| (uid, counters.usage()))
            .filter(|(_, usage)| *usage != Usage::default())
            .collect();
        list.sort_by_key(|&(uid, _)| uid);
        list
    }

    /// Live objects, and the bytes of their values, that a session of
    /// `uid` may read: every one for root; for any other uid its own
    /// private objects and every SHARED object (which anyone may enumerate
    /// from the shared slot table), never another uid's private ones.
    pub fn usage_visible_to(&self, uid: u32) -> Usage {
        if uid == ROOT {
            return self.usage();
        }
        let mut usage = Usage::default();
        for domain in self.visible_domains(uid) {
            for shard in domain.shards.iter() {
                let shard = lock(shard);
                usage.objects += shard.live;
                usage.value_bytes += shard.bytes;
            }
        }
        usage
    }

    /// Live objects in each shard that a session of `uid` may read (as
    /// [`Registry::usage_visible_to`] counts them).
    pub fn shard_occupancy_visible_to(&self, uid: u32) -> Vec<u64> {
        if uid == ROOT {
            return self.shard_occupancy();
        }
        let mut occupancy = vec![0; self.live.len()];
        for domain in self.visible_domains(uid) {
            for (n, shard) in occupancy.iter_mut().zip(domain.shards.iter()) {
                *n += lock(shard).live;
            }
        }
        occupancy
    }

    /// The domains a session of `uid` (not root) may read: the shared one
    /// and its uid's own, once made.
    fn visible_domains(&self, uid: u32) -> impl Iterator<Item = &Arc<Domain>> {
        [Some(SHARED_DOMAIN), self.own_domain(uid)]
            .into_iter()
            .flatten()
            .filter_map(|id| self.domain(id))
    }

    /// Live objects in each shard (over every domain).
    pub fn shard_occupancy(&self) -> Vec<u64> {
        self.live
            .iter()
            .map(|n| n.load(Ordering::Relaxed) as u64)
            .collect()
    }

    /// Bytes of the heap blocks values occupy now, over every domain (block
    /// sizes: a value's length rounded up to 16 bytes).
    pub fn heap_in_use(&self) -> u64 {
        self.sum_over_domains(Domain::heap_in_use)
    }

    /// Bytes of heap pages allocated now, over every domain: at most the
    /// pages live blocks touch, a page per heap chunk and 4 MiB per
    /// domain (`heap::IDLE_MAX`).
    pub fn heap_resident(&self) -> u64 {
        self.sum_over_domains(Domain::heap_resident)
    }

    /// `figure` summed over the domains made so far.
    fn sum_over_domains(&self, figure: impl Fn(&Domain) -> u64) -> u64 {
        self.domains
            .iter()
            .filter_map(OnceLock::get)
            .map(|d| figure(d))
            .sum()
    }

    /// Bytes of replaced or removed values whose blocks wait to be reused
    /// (for the next pass, held back by borrowed references, or
    /// quarantined after a restart).
    pub fn reclaim_pending(&self) -> u64 {
        self.reclaim.waiting()
    }

    /// The domain a new object of `uid` goes to (made on first use); QUOTA
    /// when no domain or memory is left for it.
    fn domain_for(&self, holder: &Holder, shared: bool) -> Result<&Domain, Limit> {
        let known = if shared {
            Some(SHARED_DOMAIN)
        } else {
            holder.own_domain.get().copied()
        };
        // A holder of another registry knows no domain of this one.
        if let Some(domain) = known.and_then(|id| self.domain(id)) {
            return Ok(domain);
        }
        let mut by_uid = lock(&self.by_uid);
        let id = match by_uid.0.get(&holder.uid) {
            Some(&id) => id,
            None => {
                let id = by_uid.1;
                if usize::from(id) >= MAX_DOMAINS {
                    return Err(Limit::Domains);
                }
                let domain = Domain::new(
                    &self.store,
                    id,
                    Some(holder.uid),
                    self.live.len(),
                    self.seed ^ u64::from(id),
                )
                .map_err(|_| Limit::SlotMemory)?;
                let _ = self.domains[usize::from(id)].set(Arc::new(domain));
                by_uid.0.insert(holder.uid, id);
                by_uid.1 = id + 1;
                id
            }
        };
        drop(by_uid);
        let _ = holder.own_domain.set(id);
        Ok(self.domain(id).expect("made above"))
    }

    /// Domain `id`, if made (borrowed: the hot paths take no reference
    /// count).
    fn domain(&self, id: u16) -> Option<&Arc<Domain>> {
        self.domains.get(usize::from(id))?.get()
    }

    /// The domain of `uid`'s private objects, if it has one yet.
    pub fn own_domain(&self, uid: u32) -> Option<u16> {
        lock(&self.by_uid).0.get(&uid).copied()
    }

    /// Whether a session of `uid` may map `domain`: root every one, others
    /// the shared one and their own.
    pub fn may_map(&self, uid: u32, domain: u16) -> bool {
        uid == ROOT
            || domain == SHARED_DOMAIN
            || self.domain(domain).is_some_and(|d| d.owner == Some(uid))
    }

    /// A read-only descriptor of `domain`'s slot chunk `slot_chunk` and of
    /// its heap chunk `heap_chunk` (each when asked for and made), for a
    /// session of `uid`: DENIED when it may not map the domain — for any
    /// uid but root also when there is no such domain, so that nobody
    /// learns which domains (uids with private objects) exist — and STALE
    /// for root when there is no such domain.
    pub fn chunks_for(
        &self,
        uid: u32,
        domain: u16,
        slot_chunk: Option<usize>,
        heap_chunk: Option<usize>,
    ) -> Result<(Option<BorrowedFd<'_>>, Option<BorrowedFd<'_>>), Status> {
        if !self.may_map(uid, domain) {
            return Err(Status::Denied);
        }
        let found = self.domain(domain).ok_or(Status::Stale)?;
        fn reopen(chunk: Option<&Chunk>) -> Result<Option<BorrowedFd<'_>>, Status> {
            chunk
                .map(|chunk| chunk.read_only().map_err(|_| Status::Io))
                .transpose()
        }
        let slots = reopen(slot_chunk.and_then(|k| found.slot_chunks().nth(k)))?;
        let heap = reopen(heap_chunk.and_then(|k| found.heap_chunks().nth(k)))?;
        Ok((slots, heap))
    }

    /// Creates an object, in the next shard of the calling thread's round:
    /// each thread spreads its inserts over every shard, and threads start
    /// at different shards, with no shared counter.
    pub fn insert(&self, holder: &Holder, value: &[u8], obj_flags: u32) -> Result<Handle, Refusal> {
        Opcode::Insert.check_flags(obj_flags)?;
        if value.len() > self.limits.max_value_size() {
            return Err(Status::TooBig.into());
        }
        let detached = obj_flags & flags::DETACHED != 0;
        if !detached {
            self.make_room_for_a_reference(holder);
        }
        let charge = self.charge(&holder.usage, 1, value.len() as u64)?;
        let domain = self.domain_for(holder, obj_flags & flags::SHARED != 0)?;
        let payload = domain.place(value)?;
        let first = next_insert_shard();
        let shards = domain.shards.len();
        for step in 0..shards {
            let shard_index = first.wrapping_add(step) & (shards - 1);
            let mut shard = lock(&domain.shards[shard_index]);
            let index = match domain.vacant(&mut shard, shard_index, self.shard_bits) {
                Ok(Some(index)) => index,
                Ok(None) => continue,
                Err(limit) => {
                    release_payload(domain, payload, value.len());
                    return Err(limit.into());
                }
            };
            let (handle, _, meta) = self.next_handle_at(domain, index);
            let made = NewObject {
                handle,
                meta,
                obj_flags,
                value,
                payload,
            };
            let purge = match self.make_object(
                domain,
                &mut shard,
                holder,
                made,
                self.limits.uid_max_references(),
            ) {
                Ok(purge) => purge,
                Err(limit) => {
                    shard.free.push_front(index);
                    return Err(limit.into());
                }
            };
            charge.keep();
            drop(shard);
            if purge {
                self.purge_dead_references(holder);
            }
            return Ok(handle);
        }
        release_payload(domain, payload, value.len());
        Err(Limit::Slots.into())
    }

    /// Grants `holder`'s session up to `want` handles ahead (at most
    /// [`hreg_proto::entry::MAX_GRANT`]), in the SHARED domain or its uid's
    /// own, each passed to `grant`, and tops its byte credit up to
    /// [`CREDIT`]; returns the credit granted now. Each handle's slot is
    /// *reserved* for the session: readers see it neither free nor stale,
    /// and only this session's insert into it ([`Registry::insert_into`])
    /// fills it. Reservations and credit count against the uid's and the
    /// registry's limits as the objects and bytes they stand for, so that
    /// fewer (even none) are granted near a limit; what the session does not
    /// use goes back when it ends ([`Registry::release_all`]).
    ///
    /// A registry whose store keeps state for the next daemon grants
    /// nothing: posted writes are not yet kept exactly once across a
    /// restart, so its clients write synchronously.
    pub fn reserve(
        &self,
        holder: &Holder,
        shared: bool,
        want: usize,
        mut grant: impl FnMut(Handle),
    ) -> Result<u64, Refusal> {
        if !self.posting_allowed() {
            return Ok(0);
        }
        let limits = self.limits.get();
        // At most half the room left (at least one while there is room), so
        // that one session's handles ahead leave room for the uid's other
        // sessions and its synchronous inserts.
        let (objects_room, bytes_room) = self.room_ahead(holder, &limits);
        let want = want
            .min(hreg_proto::entry::MAX_GRANT)
            .min(usize::try_from(objects_room.div_ceil(2)).unwrap_or(usize::MAX));
        let domain = self.domain_for(holder, shared)?;
        let shards = domain.shards.len();
        // The whole batch counted at once when the limits have room for it
        // (they mostly do), else handle by handle, up to the limit.
        let counted = self.charge_handles_ahead(holder, &limits, want as u64, true);
        let mut granted = 0;
        let first = next_insert_shard();
        'shards: for step in 0..shards {
            if granted == want {
                break;
            }
            let shard_index = first.wrapping_add(step) & (shards - 1);
            let mut shard = lock(&domain.shards[shard_index]);
            // Noted first: a session that ends gives back what it holds
            // ahead, these included. Lock order: shard, then ahead.
            let mut ahead = lock(&holder.ahead);
            // A few per shard, so that the session's inserts spread.
            for _ in 0..PER_SHARD_GRANT {
                if granted == want {
                    break 'shards;
                }
                if !counted && !self.charge_handles_ahead(holder, &limits, 1, false) {
                    break 'shards;
                }
                let index = match domain.vacant(&mut shard, shard_index, self.shard_bits) {
                    Ok(Some(index)) => index,
                    Ok(None) | Err(_) => {
                        if !counted {
                            self.give_back_ahead(&holder.usage, 1, 0);
                        }
                        continue 'shards;
                    }
                };
                let (handle, generation, _) = self.next_handle_at(domain, index);
                ahead.handles.insert(handle.get());
                domain.write_slot(
                    index,
                    &Slot {
                        generation,
                        flags: 0,
                        len: 0,
                        owner: holder.uid,
                        payload: Payload::Reserved {
                            session: holder.id(),
                        },
                    },
                );
                granted += 1;
                grant(handle);
            }
        }
        if counted {
            self.give_back_ahead(&holder.usage, (want - granted) as u64, 0);
        } else {
            // At a limit: dead references go now, off the shard locks, so
            // that the next grant finds their room.
            self.make_room_for_a_reference(holder);
        }
        // The credit: up to CREDIT unspent, as far as the byte limits let.
        let mut ahead = lock(&holder.ahead);
        let mut top_up = CREDIT.saturating_sub(ahead.credit).min(bytes_room / 2);
        while top_up > 0
            && self
                .charge_ahead(&holder.usage, &limits, 0, top_up)
                .is_err()
        {
            top_up /= 2;
        }
        ahead.credit += top_up;
        Ok(top_up)
    }

    /// The handle of the next object in vacant slot `index` of `domain`
    /// (the slot's current generation, which freeing moved on), that
    /// generation, and the slot's daemon-side counts.
    fn next_handle_at<'d>(&self, domain: &'d Domain, index: u32) -> (Handle, u16, &'d SlotMeta) {
        let (view, meta) = domain.slot(index).expect("a vacant slot exists");
        let generation = view.current().generation;
        let handle = HandleParts {
            instance: self.instance,
            domain: domain.id,
            generation,
            slot: index,
        }
        .handle()
        .expect("the instance bits are never 0");
        (handle, generation, meta)
    }

    /// Objects and bytes `holder`'s uid may still be granted, by its own
    /// limits and the registry's.
    fn room_ahead(&self, holder: &Holder, limits: &Limits) -> (u64, u64) {
        let room = |counters: &Counters, max_objects: u64, max_bytes: u64| {
            let (objects, bytes) = counters.committed();
            (
                max_objects.saturating_sub(objects),
                max_bytes.saturating_sub(bytes),
            )
        };
        let mine = room(&holder.usage, limits.uid_max_objects, limits.uid_max_bytes);
        let all = room(&self.total, limits.max_objects, limits.max_bytes);
        (mine.0.min(all.0), mine.1.min(all.1))
    }

    /// Counts `handles` handles ahead for `holder`, each with the
    /// reference-table entry its insert will take (unless DETACHED, so that
    /// a posted insert never meets `uid_max_references`); false, nothing
    /// counted, past a limit. With `may_purge`, dead references are purged
    /// first when the entries are short; a purge takes shard locks, so a
    /// caller holding one passes false.
    fn charge_handles_ahead(
        &self,
        holder: &Holder,
        limits: &Limits,
        handles: u64,
        may_purge: bool,
    ) -> bool {
        if self
            .charge_ahead(&holder.usage, limits, handles, 0)
            .is_err()
        {
            return false;
        }
        let within = || holder.usage.references_committed() <= limits.uid_max_references;
        if may_purge && !within() {
            self.make_room_for_a_reference(holder);
        }
        if within() {
            return true;
        }
        self.give_back_ahead(&holder.usage, handles, 0);
        false
    }

    /// Gives back up to `bytes` of `holder`'s byte credit (its client
    /// will not spend them: it met a byte limit); what was given back.
    pub fn give_back_credit(&self, holder: &Holder, bytes: u64) -> u64 {
        let mut ahead = lock(&holder.ahead);
        let back = bytes.min(ahead.credit);
        ahead.credit -= back;
        self.give_back_ahead(&holder.usage, 0, back);
        back
    }

    /// Whether this registry grants handles ahead (see
    /// [`Registry::reserve`]).
    pub fn posting_allowed(&self) -> bool {
        !self.store.keeps_state()
    }

    /// Counts `handles` reservations and `credit` bytes ahead against the
    /// registry's limits and `owner`'s.
    fn charge_ahead(
        &self,
        owner: &Counters,
        limits: &Limits,
        handles: u64,
        credit: u64,
    ) -> Result<(), Limit> {
        self.total
            .reserve_ahead(handles, credit, limits.max_objects, limits.max_bytes)
            .map_err(|over| over.limit(Limit::MaxObjects, Limit::MaxBytes))?;
        if let Err(over) = owner.reserve_ahead(
            handles,
            credit,
            limits.uid_max_objects,
            limits.uid_max_bytes,
        ) {
            self.total.give_back_ahead(handles, credit);
            return Err(over.limit(Limit::UidMaxObjects, Limit::UidMaxBytes));
        }
        Ok(())
    }

    fn give_back_ahead(&self, owner: &Counters, handles: u64, credit: u64) {
        self.total.give_back_ahead(handles, credit);
        owner.give_back_ahead(handles, credit);
    }

    /// Makes `made` an object in its slot (vacant, or reserved for
    /// `holder`'s session; the caller holds the slot's shard lock): the
    /// holder's reference first, within `max_references` (none for a
    /// DETACHED object), then the slot, then the shard's counts. A daemon
    /// killed before the slot is written leaves an entry for a dead handle,
    /// which the next one drops, never a live object that nobody holds. On
    /// a refusal the payload is freed and nothing else changed. Returns
    /// whether the holder's reference table wants a purge (to run once the
    /// shard lock is let go).
    fn make_object(
        &self,
        domain: &Domain,
        shard: &mut Shard,
        holder: &Holder,
        made: NewObject<'_>,
        max_references: u64,
    ) -> Result<bool, Limit> {
        let NewObject {
            handle,
            meta,
            obj_flags,
            value,
            payload,
        } = made;
        let detached = obj_flags & flags::DETACHED != 0;
        let purge = !detached && {
            let mut refs = lock(&holder.refs);
            if let Err(limit) = refs.add(handle.get(), max_references) {
                drop(refs);
                release_payload(domain, payload, value.len());
                return Err(limit);
            }
            refs.wants_purge()
        };
        let parts = HandleParts::decode(handle.get());
        domain.write_slot(
            parts.slot,
            &Slot {
                generation: parts.generation,
                flags: obj_flags as u8,
                len: value.len() as u32,
                owner: holder.uid,
                payload,
            },
        );
        shard.made(meta, holder.uid, u32::from(!detached), value.len() as u64);
        self.live[self.shard_of(parts.slot)].fetch_add(1, Ordering::Relaxed);
        Ok(purge)
    }

    /// Creates an object in `into`, a handle granted ahead to `holder`'s
    /// session ([`Registry::reserve`]) and not used yet (INVALID
    /// otherwise). The object was counted when the handle was granted; its
    /// value's bytes come out of the session's credit, or, past it, are
    /// charged as any insert's (QUOTA). Once this returns, `into` names the
    /// object, as if [`Registry::insert`] had returned it.
    pub fn insert_into(
        &self,
        holder: &Holder,
        into: Handle,
        value: &[u8],
        obj_flags: u32,
    ) -> Result<(), Refusal> {
        Opcode::Insert.check_flags(obj_flags)?;
        if value.len() > self.limits.max_value_size() {
            return Err(Status::TooBig.into());
        }
        let (domain, index, generation) = self.locate(into).map_err(|_| Status::Invalid)?;
        // The handle's domain must be the one the flags ask for.
        let shared = obj_flags & flags::SHARED != 0;
        if (domain.id == SHARED_DOMAIN) != shared {
            return Err(Status::Invalid.into());
        }
        let shard_index = self.shard_of(index);
        let mut shard = lock(&domain.shards[shard_index]);
        let Some((view, meta)) = domain.slot(index) else {
            return Err(Status::Invalid.into());
        };
        let reserved = view.current();
        if reserved.generation != generation
            || reserved.payload
                != (Payload::Reserved {
                    session: holder.id(),
                })
        {
            return Err(Status::Invalid.into());
        }
        // One lock of what the session holds ahead, for the whole insert:
        // the handle is checked, the credit spent and the handle taken out
        // under it. Held to the end so that, with the shard lock, the
        // handle leaves the set only with the insert done; a session
        // ending meanwhile (`give_back_unused`) sees it either still
        // reserved, or an object. Lock order: shard, ahead, then refs or
        // the heap (nothing takes `ahead` after those).
        let mut ahead = lock(&holder.ahead);
        if !ahead.handles.contains(&into.get()) {
            return Err(Status::Invalid.into());
        }
        let len = value.len() as u64;
        // The bytes: from the credit, else charged now (QUOTA).
        let from_credit = ahead.credit >= len;
        let charge = if from_credit {
            None
        } else {
            Some(self.charge(&holder.usage, 0, len)?)
        };
        let payload = domain.place(value)?;
        let made = NewObject {
            handle: into,
            meta,
            obj_flags,
            value,
            payload,
        };
        // The reference-table entry the handle held ahead becomes the
        // object's reference (no limit: it was counted), or goes with the
        // reservation, for a DETACHED one.
        let purge = self.make_object(domain, &mut shard, holder, made, u64::MAX)?;
        ahead.handles.remove(&into.get());
        if from_credit {
            ahead.credit -= len;
        }
        drop(ahead);
        // The reservation becomes the object; the credit spent, its bytes.
        let spent = if from_credit { len } else { 0 };
        self.total.spend_ahead(spent);
        holder.usage.spend_ahead(spent);
        if let Some(charge) = charge {
            charge.keep();
        }
        drop(shard);
        if purge {
            self.purge_dead_references(holder);
        }
        Ok(())
    }

    /// Whether an op on `handle` that found no object is worth asking
    /// again: its slot is granted ahead and its insert not applied, or the
    /// insert was applied since (on another worker, between the op's look
    /// and this one). A handle once live and then gone never is: its slot's
    /// generation moved on.
    pub fn ask_again(&self, handle: Handle) -> bool {
        let Ok((domain, index, generation)) = self.locate(handle) else {
            return false;
        };
        // Under the shard lock: a worker applying the insert right now
        // would make a lock-free read torn, and the answer a wrong STALE.
        let _shard = lock(&domain.shards[self.shard_of(index)]);
        let Some((view, _)) = domain.slot(index) else {
            return false;
        };
        let slot = view.current();
        slot.generation == generation
            && (slot.payload.is_object() || matches!(slot.payload, Payload::Reserved { .. }))
    }

    /// The session a handle's slot is reserved for, if it names a slot
    /// granted ahead whose insert has not been applied (what the tests
    /// look at; the daemon asks [`Registry::ask_again`]).
    #[cfg(test)]
    pub(crate) fn reserved_for(&self, handle: Handle) -> Option<u64> {
        let (domain, index, generation) = self.locate(handle).ok()?;
        let _shard = lock(&domain.shards[self.shard_of(index)]);
        let slot = domain.slot(index)?.0.current();
        match slot.payload {
            Payload::Reserved { session } if slot.generation == generation => Some(session),
            _ => None,
        }
    }

    /// Gives back what `holder`'s session was granted ahead and did not
    /// use: each reserved slot is freed with its generation moved on (its
    /// handle is STALE from now on), and the credit is returned.
    fn give_back_unused(&self, holder: &Holder) {
        let (handles, credit) = {
            let mut ahead = lock(&holder.ahead);
            let credit = std::mem::take(&mut ahead.credit);
            (ahead.handles.iter().copied().collect::<Vec<u64>>(), credit)
        };
        self.give_back_ahead(&holder.usage, 0, credit);
        for handle in handles {
            let Some(handle) = Handle::new(handle) else {
                continue;
            };
            let Ok((domain, index, _)) = self.locate(handle) else {
                continue;
            };
            let mut shard = lock(&domain.shards[self.shard_of(index)]);
            self.give_back_reserved(holder, domain, &mut shard, index, handle, 0);
        }
    }

    /// Gives back `handle`, granted ahead to `holder`'s session and not
    /// used (a RELEASE of it: its client returns what it will not use),
    /// with `spent` bytes of the session's credit: its slot is freed with
    /// its generation moved on, so the handle stays STALE, and the
    /// reservation and those bytes are no longer counted. False, and
    /// nothing changed, when the handle is no such thing or the credit is
    /// short. The caller holds the slot's shard lock.
    fn give_back_reserved(
        &self,
        holder: &Holder,
        domain: &Domain,
        shard: &mut Shard,
        index: u32,
        handle: Handle,
        spent: u64,
    ) -> bool {
        let generation = HandleParts::decode(handle.get()).generation;
        let Some((view, _)) = domain.slot(index) else {
            return false;
        };
        let slot = view.current();
        if slot.generation != generation
            || slot.payload
                != (Payload::Reserved {
                    session: holder.id(),
                })
        {
            return false;
        }
        {
            let mut ahead = lock(&holder.ahead);
            if ahead.credit < spent || !ahead.handles.remove(&handle.get()) {
                return false;
            }
            ahead.credit -= spent;
        }
        domain.write_slot(index, &Slot::free(generation.wrapping_add(1)));
        if generation.wrapping_add(1) != LAST_GENERATION {
            shard.free.push_back(index);
        }
        self.give_back_ahead(&holder.usage, 1, spent);
        true
    }

    /// A posted insert of `len` bytes into `into` (granted ahead to
    /// `holder`'s session) and the release of its one reference right
    /// behind it, applied together: the object would live between two
    /// entries of one ring, where nobody can see it, so it is never made.
    /// What is left is what the two leave: the handle STALE, the
    /// reservation used, the credit spent and the object's charge gone.
    /// False, and nothing changed, when the insert would not be a plain
    /// success from the session's credit (DETACHED, invalid flags or
    /// domain, too big, not granted, credit short): the caller applies the
    /// two one by one.
    pub fn insert_released(
        &self,
        holder: &Holder,
        into: Handle,
        len: usize,
        obj_flags: u32,
    ) -> bool {
        if Opcode::Insert.check_flags(obj_flags).is_err()
            || obj_flags & flags::DETACHED != 0
            || len > self.limits.max_value_size()
        {
            return false;
        }
        let Ok((domain, index, _)) = self.locate(into) else {
            return false;
        };
        if (domain.id == SHARED_DOMAIN) != (obj_flags & flags::SHARED != 0) {
            return false;
        }
        let mut shard = lock(&domain.shards[self.shard_of(index)]);
        self.give_back_reserved(holder, domain, &mut shard, index, into, len as u64)
    }

    /// Calls `read` with a copy of the value, taken under its shard's lock:
    /// the value is whole (a concurrent replace waits).
    pub fn get_with<R>(
        &self,
        holder: &Holder,
        handle: Handle,
        read: impl FnOnce(&[u8]) -> R,
    ) -> Result<R, Status> {
        thread_local! {
            static COPY: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
        }
        let (domain, index, generation) = self.locate(handle)?;
        let shard = lock(&domain.shards[self.shard_of(index)]);
        let slot = live_slot(domain, index, generation)?;
        if !readable_by(&slot, holder.uid) {
            return Err(Status::Denied);
        }
        COPY.with(|copy| {
            let mut copy = copy.borrow_mut();
            if !domain.copy_value(&slot, &mut copy) {
                return Err(Status::Stale);
            }
            drop(shard);
            let result = read(&copy);
            if copy.capacity() > 1 << 20 {
                *copy = Vec::new();
            }
            Ok(result)
        })
    }

    /// Replaces the value of `handle`; readers see the old value or the new
    /// one, whole. The uid charged for the object pays for the value,
    /// whoever replaces it.
    pub fn replace(&self, holder: &Holder, handle: Handle, value: &[u8]) -> Result<(), Refusal> {
        if value.len() > self.limits.max_value_size() {
            return Err(Status::TooBig.into());
        }
        let (domain, index, generation) = self.locate(handle)?;
        let mut shard = lock(&domain.shards[self.shard_of(index)]);
        let old = live_slot(domain, index, generation)?;
        if !writable_by(&old, holder.uid) {
            return Err(Status::Denied.into());
        }
        let old_len = u64::from(old.len);
        let new_len = value.len() as u64;
        let (_, meta) = domain.slot(index).expect("live");
        let owner = self.counters_of(meta.payer.load(Ordering::Relaxed), Some(holder));
        let charge = self.charge(&owner, 0, new_len.saturating_sub(old_len))?;
        let payload = domain.place(value)?;
        domain.write_slot(
            index,
            &Slot {
                len: value.len() as u32,
                payload,
                ..old
            },
        );
        charge.keep();
        shard.bytes = shard.bytes + new_len - old_len;
        let shrink = old_len.saturating_sub(new_len);
        self.total.give_back(0, shrink);
        owner.give_back(0, shrink);
        self.retire(domain, &old);
        Ok(())
    }

    /// Takes one more reference to `handle` for `holder`'s session (a new
    /// entry in its table counts against its uid's `uid_max_references`).
    pub fn retain(&self, holder: &Holder, handle: Handle) -> Result<(), Refusal> {
        self.make_room_for_a_reference(holder);
        let (domain, index, generation) = self.locate(handle)?;
        let mut shard = lock(&domain.shards[self.shard_of(index)]);
        let slot = live_slot(domain, index, generation)?;
        if !readable_by(&slot, holder.uid) {
            return Err(Status::Denied.into());
        }
        let (_, meta) = domain.slot(index).expect("live");
        let purge = {
            let mut refs = lock(&holder.refs);
            // Checked before the table is touched: a refused RETAIN leaves
            // no entry behind.
            let count = meta.refs.load(Ordering::Relaxed);
            if refs.held(handle.get()) == u32::MAX || count == u32::MAX {
                return Err(Limit::ReferencesPerObject.into());
            }
            refs.add(handle.get(), self.limits.uid_max_references())?;
            shard.hold(meta, index, holder.uid, 1);
            refs.wants_purge()
        };
        drop(shard);
        if purge {
            self.purge_dead_references(holder);
        }
        Ok(())
    }

    /// Drops one of `holder`'s references; the object dies with its last
    /// reference unless DETACHED.
    pub fn release(&self, holder: &Holder, handle: Handle) -> Result<(), Status> {
        let (domain, index, generation) = self.locate(handle)?;
        let mut shard = lock(&domain.shards[self.shard_of(index)]);
        let slot = match live_slot(domain, index, generation) {
            Ok(slot) => slot,
            Err(_) if self.give_back_reserved(holder, domain, &mut shard, index, handle, 0) => {
                return Ok(());
            }
            Err(status) => {
                // The object died under this reference: the entry goes too.
                lock(&holder.refs).forget(handle.get());
                return Err(status);
            }
        };
        if !lock(&holder.refs).take(handle.get()) {
            return Err(Status::NotHeld);
        }
        self.drop_references(domain, &mut shard, index, &slot, holder, 1);
        Ok(())
    }

    /// Kills the object now, whoever holds references to it. The remover's
    /// own references go with it; other holders' are purged lazily.
    pub fn remove(&self, holder: &Holder, handle: Handle) -> Result<(), Status> {
        let (domain, index, generation) = self.locate(handle)?;
        let mut shard = lock(&domain.shards[self.shard_of(index)]);
        let slot = live_slot(domain, index, generation)?;
        if !writable_by(&slot, holder.uid) {
            return Err(Status::Denied);
        }
        self.kill(domain, &mut shard, index, &slot, Some(holder));
        lock(&holder.refs).forget(handle.get());
        Ok(())
    }

    /// Drops every reference `holder` owns, and gives back what it was
    /// granted ahead and did not use (its session ended).
    pub fn release_all(&self, holder: &Holder) {
        self.give_back_unused(holder);
        let held = {
            let mut refs = lock(&holder.refs);
            let held = refs.entries();
            // The record goes first: a daemon killed from here on finds no
            // references of this session, as if all were released.
            refs.discard();
            held
        };
        for (handle, count) in held {
            let Some(handle) = Handle::new(handle) else {
                continue;
            };
            let Ok((domain, index, generation)) = self.locate(handle) else {
                continue;
            };
            let mut shard = lock(&domain.shards[self.shard_of(index)]);
            let Ok(slot) = live_slot(domain, index, generation) else {
                continue;
            };
            self.drop_references(domain, &mut shard, index, &slot, holder, count);
        }
    }

    /// `holder`'s session dropped `count` references to the live object in
    /// slot `index` (the caller holds its shard's lock): the object dies
    /// with its last reference unless DETACHED, and when its payer's last
    /// reference went while other uids' remain, the charge moves to them.
    fn drop_references(
        &self,
        domain: &Domain,
        shard: &mut Shard,
        index: u32,
        slot: &Slot,
        holder: &Holder,
        count: u32,
    ) {
        let (_, meta) = domain.slot(index).expect("live");
        let (left, payer_gone) = shard.unhold(meta, index, holder.uid, count);
        // A DETACHED object lives until removed, charged to its creator.
        if u32::from(slot.flags) & flags::DETACHED != 0 {
            return;
        }
        if left == 0 {
            self.kill(domain, shard, index, slot, Some(holder));
        } else if payer_gone {
            self.move_charge(domain, shard, index, slot, Some(holder), true);
        }
    }

    /// The object in slot `index` is kept alive only by uids other than
    /// the one it is charged to (the caller holds its shard's lock): the
    /// charge — the object and its value's bytes — moves to the one among
    /// them holding the most references whose quota has room for it
    /// (`uid_max_objects`, `uid_max_bytes`), or, with `enforce` false (an
    /// adopted state), to that one whatever its quota. When none has room
    /// the object dies, as if removed (its references become STALE): what
    /// the daemon keeps stays within the quotas of the uids it keeps it
    /// for. `by` is the session whose release moved it, if any.
    fn move_charge(
        &self,
        domain: &Domain,
        shard: &mut Shard,
        index: u32,
        slot: &Slot,
        by: Option<&Holder>,
        enforce: bool,
    ) {
        let (_, meta) = domain.slot(index).expect("live");
        let bytes = u64::from(slot.len);
        let limits = self.limits.get();
        let payer = meta.payer.load(Ordering::Relaxed);
        for (uid, _) in shard.other_holders(index) {
            let counters = self.counters_of(uid, by);
            if !enforce {
                counters.adopt(1, bytes);
            } else if counters
                .reserve(1, bytes, limits.uid_max_objects, limits.uid_max_bytes)
                .is_err()
            {
                continue;
            }
            self.counters_of(payer, by).give_back(1, bytes);
            shard.set_payer(meta, index, uid);
            return;
        }
        self.kill(domain, shard, index, slot, by);
    }

    /// The counters of `uid`: `holder`'s own when it is of that uid (no
    /// lookup), else from the registry's table.
    fn counters_of(&self, uid: u32, holder: Option<&Holder>) -> Arc<Counters> {
        match holder {
            Some(holder) if holder.uid == uid => Arc::clone(&holder.usage),
            _ => self.uid_counters(uid),
        }
    }

    /// Before `holder` takes a reference that may need a new table entry:
    /// when its uid has none left, its session's entries of objects that
    /// died are dropped first (they count until then) — if any object died
    /// referenced since the session last looked, so that a session kept at
    /// its limit does not walk its table on every refused request.
    fn make_room_for_a_reference(&self, holder: &Holder) {
        if holder.usage.references_committed() >= self.limits.uid_max_references()
            && lock(&holder.refs).purged_upto != self.orphaned.load(Ordering::Relaxed)
        {
            self.purge_dead_references(holder);
        }
    }

    /// Drops `holder`'s entries for objects that have died, and sets the
    /// size of its table that triggers the next purge. Takes no shard lock
    /// while it holds the table, nor the table while it holds a shard lock.
    fn purge_dead_references(&self, holder: &Holder) {
        let orphaned = self.orphaned.load(Ordering::Relaxed);
        let handles: Vec<u64> = lock(&holder.refs)
            .entries()
            .into_iter()
            .map(|(handle, _)| handle)
            .collect();
        let dead: Vec<u64> = handles
            .into_iter()
            .filter(|&handle| !self.is_live(handle))
            .collect();
        let mut refs = lock(&holder.refs);
        // A dead handle never lives again, so forgetting it now is right
        // whatever happened to the table meanwhile.
        for handle in dead {
            refs.forget(handle);
        }
        refs.purge_at = (refs.len() * 2).max(PURGE_FLOOR);
        refs.purged_upto = orphaned;
    }

    /// Whether `handle` names a live object.
    fn is_live(&self, handle: u64) -> bool {
        let Some(handle) = Handle::new(handle) else {
            return false;
        };
        let Ok((domain, index, generation)) = self.locate(handle) else {
            return false;
        };
        let _shard = lock(&domain.shards[self.shard_of(index)]);
        live_slot(domain, index, generation).is_ok()
    }

    /// Reserves `bytes` more of ring staging for `holder`'s session,
    /// against its session cap ([`session_staging_cap`]) and the byte limits
    /// of its uid and of the registry.
    pub fn charge_staging(&self, holder: &Holder, bytes: u64) -> Result<(), Limit> {
        let limits = self.limits.get();
        let staged = holder
            .staged
            .fetch_add(bytes, Ordering::Relaxed)
            .saturating_add(bytes);
        if staged > session_staging_cap(limits.max_value_size) {
            holder.staged.fetch_sub(bytes, Ordering::Relaxed);
            return Err(Limit::SessionStaging);
        }
        if !self.total.reserve_staged(bytes, limits.max_bytes) {
            holder.staged.fetch_sub(bytes, Ordering::Relaxed);
            return Err(Limit::MaxBytes);
        }
        if !holder.usage.reserve_staged(bytes, limits.uid_max_bytes) {
            self.total.give_back_staged(bytes);
            holder.staged.fetch_sub(bytes, Ordering::Relaxed);
            return Err(Limit::UidMaxBytes);
        }
        Ok(())
    }

    /// Gives back staging reserved by [`Registry::charge_staging`].
    pub fn release_staging(&self, holder: &Holder, bytes: u64) {
        holder.staged.fetch_sub(bytes, Ordering::Relaxed);
        self.total.give_back_staged(bytes);
        holder.usage.give_back_staged(bytes);
    }

    /// Up to `limit` live objects after position `cursor` (0 to start) that
    /// pass `filter`, and the cursor to continue from (0 when done). At most
    /// [`LIST_SCAN_BUDGET`] slots are looked at per call, matching or not,
    /// so a page may hold fewer than `limit` objects (even none) with a
    /// non-zero cursor: a listing costs the control thread bounded work per
    /// request, whatever the filter.
    pub fn list(&self, cursor: u64, limit: usize, filter: ListFilter) -> (Vec<ObjectInfo>, u64) {
        let mut found = Vec::new();
        let mut budget = LIST_SCAN_BUDGET;
        // A cursor is 1 + the position of the next slot to look at, where a
        // position is (domain << 32) | slot index; 0 means the beginning.
        let start = cursor.saturating_sub(1);
        for id in (start >> 32) as usize..MAX_DOMAINS {
            let Some(domain) = self.domain(id as u16) else {
                continue;
            };
            // A uid's private objects are all in its domain.
            if let (Some(uid), Some(owner)) = (filter.owner, domain.owner) {
                if uid != owner {
                    continue;
                }
            }
            let first = if id == (start >> 32) as usize {
                start as u32
            } else {
                0
            };
            for index in first..domain.slots_made() {
                if found.len() == limit || budget == 0 {
                    return (found, ((id as u64) << 32 | u64::from(index)) + 1);
                }
                budget -= 1;
                let Some((view, meta)) = domain.slot(index) else {
                    continue;
                };
                let Some(slot) = view.snapshot() else {
                    continue;
                };
                let wanted = slot.payload.is_object()
                    && (!filter.detached_only || u32::from(slot.flags) & flags::DETACHED != 0)
                    && filter.owner.is_none_or(|uid| uid == slot.owner);
                if !wanted {
                    continue;
                }
                found.push(ObjectInfo {
                    handle: HandleParts {
                        instance: self.instance,
                        domain: domain.id,
                        generation: slot.generation,
                        slot: index,
                    }
                    .encode(),
                    size: u64::from(slot.len),
                    owner: slot.owner,
                    refs: meta.refs.load(Ordering::Relaxed),
                    flags: u32::from(slot.flags),
                });
            }
        }
        (found, 0)
    }

    /// Runs a reclamation pass if blocks wait (only one thread at a time:
    /// another one's pass is as good), off every shard lock: frees what no
    /// borrowed reference holds back, and charges what is held back to the
    /// uids whose sessions hold it.
    pub fn reclaim(&self) -> Reclaimed {
        if !self.reclaim.pending() {
            return Reclaimed {
                waiting: self.reclaim.waiting(),
                ..Reclaimed::default()
            };
        }
        let max_value = self.limits.max_value_size() as u64;
        let Some(pass) = self
            .reclaim
            .pass(|uid, domain| self.may_map(uid, domain), max_value)
        else {
            return Reclaimed::default();
        };
        for (uid, bytes) in pass.charges {
            self.uid_counters(uid).set_held(bytes);
        }
        let mut done = Reclaimed::default();
        for block in pass.free {
            match self.domain(block.domain) {
                Some(domain) if block.gap => domain.free_gap(block.at, block.len),
                Some(domain) => domain.free_block(block.at, block.len),
                None => {}
            }
            if !block.gap {
                self.reclaim.freed(block.len);
            }
            done.blocks += 1;
            done.bytes += block.len;
        }
        done.waiting = self.reclaim.waiting();
        done
    }

    /// Whether enough was retired for a reclamation pass to be worth it.
    pub fn reclaim_due(&self) -> bool {
        self.reclaim.due()
    }

    /// Runs a reclamation pass if any block was retired since the last one,
    /// however few, or blocks held back were last looked at a while ago:
    /// what a periodic caller runs, so nothing waits for a pass that the
    /// amount retired would not trigger.
    pub fn reclaim_lagging(&self) -> Reclaimed {
        if self.reclaim.lagging() {
            self.reclaim()
        } else {
            Reclaimed {
                waiting: self.reclaim.waiting(),
                ..Reclaimed::default()
            }
        }
    }

    /// Notes the heap block of a value that left its slot (its new version
    /// written): a later reclamation pass frees it, once no borrowed
    /// reference names it.
    fn retire(&self, domain: &Domain, old: &Slot) {
        let Payload::Heap(at) = old.payload else {
            return;
        };
        pins::retired();
        self.reclaim.retire(Retired {
            domain: domain.id,
            at,
            len: u64::from(old.len),
            gap: false,
        });
    }

    /// Ends the object in slot `index`: its generation moves on and the slot
    /// is freed, or retired once its generations are used up; its block
    /// goes to reclamation, its charge back to its payer. `by` is who ends
    /// it, most often of the payer's uid (then its counters are at hand).
    fn kill(
        &self,
        domain: &Domain,
        shard: &mut Shard,
        index: u32,
        slot: &Slot,
        by: Option<&Holder>,
    ) {
        let (_, meta) = domain.slot(index).expect("live");
        domain.write_slot(index, &Slot::free(slot.generation.wrapping_add(1)));
        if slot.generation.wrapping_add(1) != LAST_GENERATION {
            shard.free.push_back(index);
        }
        let bytes = u64::from(slot.len);
        let payer = meta.payer.load(Ordering::Relaxed);
        if meta.refs.load(Ordering::Relaxed) > 0 {
            self.orphaned.fetch_add(1, Ordering::Relaxed);
        }
        shard.ended(meta, index, bytes);
        self.live[self.shard_of(index)].fetch_sub(1, Ordering::Relaxed);
        self.total.give_back(1, bytes);
        match by {
            Some(by) if by.uid == payer => by.usage.give_back(1, bytes),
            _ => self.uid_counters(payer).give_back(1, bytes),
        }
        self.retire(domain, slot);
    }

    /// Reserves room for `objects` more objects and `bytes` more value bytes
    /// against the global limits and `owner`'s (which count what its
    /// sessions' borrowed references hold back); the reservation is returned when the guard drops
    /// unless it is kept.
    fn charge<'a>(
        &'a self,
        owner: &'a Counters,
        objects: u64,
        bytes: u64,
    ) -> Result<Charge<'a>, Limit> {
        let limits = self.limits.get();
        self.total
            .reserve(objects, bytes, limits.max_objects, limits.max_bytes)
            .map_err(|over| over.limit(Limit::MaxObjects, Limit::MaxBytes))?;
        if let Err(over) =
            owner.reserve(objects, bytes, limits.uid_max_objects, limits.uid_max_bytes)
        {
            self.total.give_back(objects, bytes);
            return Err(over.limit(Limit::UidMaxObjects, Limit::UidMaxBytes));
        }
        Ok(Charge {
            counters: [&self.total, owner],
            objects,
            bytes,
        })
    }

    #[inline]
    fn shard_of(&self, index: u32) -> usize {
        index as usize & (self.live.len() - 1)
    }

    /// The domain, slot index and generation a handle names, or STALE when
    /// it cannot name anything of this registry.
    #[inline]
    fn locate(&self, handle: Handle) -> Result<(&Domain, u32, u16), Status> {
        let parts = HandleParts::decode(handle.get());
        if parts.instance != self.instance {
            return Err(Status::Stale);
        }
        let domain = self.domain(parts.domain).ok_or(Status::Stale)?;
        Ok((domain, parts.slot, parts.generation))
    }
}

/// An object about to be made: its handle and slot, flags and value, the
/// value already placed (`payload`).
struct NewObject<'v> {
    handle: Handle,
    /// The slot's daemon-side counts.
    meta: &'v SlotMeta,
    obj_flags: u32,
    value: &'v [u8],
    payload: Payload,
}

/// Frees the block of a value that never reached a slot.
fn release_payload(domain: &Domain, payload: Payload, len: usize) {
    if let Payload::Heap(at) = payload {
        domain.free_block(at, len as u64);
    }
}

/// The slot, if it holds a live object of `generation`; STALE otherwise.
/// The caller holds the slot's shard lock.
#[inline]
fn live_slot(domain: &Domain, index: u32, generation: u16) -> Result<Slot, Status> {
    match domain.slot(index) {
        Some((view, _)) => {
            let slot = view.current();
            if slot.generation == generation && slot.payload.is_object() {
                Ok(slot)
            } else {
                Err(Status::Stale)
            }
        }
        None => Err(Status::Stale),
    }
}

#[inline]
fn readable_by(slot: &Slot, uid: u32) -> bool {
    uid == ROOT || uid == slot.owner || u32::from(slot.flags) & flags::SHARED != 0
}

#[inline]
fn writable_by(slot: &Slot, uid: u32) -> bool {
    uid == ROOT || uid == slot.owner
}

/// The shard where this thread's next insert starts looking.
fn next_insert_shard() -> usize {
    thread_local! {
        // Seeded from the thread-local's address, so threads start apart.
        static NEXT: std::cell::Cell<usize> = const { std::cell::Cell::new(usize::MAX) };
    }
    NEXT.with(|next| {
        let mut shard = next.get();
        if shard == usize::MAX {
            shard = (next as *const _ as usize >> 6).wrapping_mul(0x9E37_79B9);
        }
        next.set(shard.wrapping_add(1));
        shard
    })
}

/// 64 random bits from the kernel (instance bits, resume tokens, seeds).
fn random_u64() -> u64 {
    let mut bytes = [0u8; 8];
    match rustix::rand::getrandom(&mut bytes, rustix::rand::GetRandomFlags::empty()) {
        Ok(8) => u64::from_le_bytes(bytes),
        // Never short for 8 bytes; std's hasher keys are random too.
        _ => RandomState::new().build_hasher().finish(),
    }
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_adopt;
#[cfg(test)]
mod tests_ahead;
#[cfg(test)]
mod tests_charges;
