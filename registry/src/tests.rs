//! The registry against a plain model (a map of live objects plus the set of
//! handles ever issued) over random operation sequences; its shared memory
//! as a client maps it (read-only, by domain); reclamation with borrowed
//! references; the heap under churn.

use super::*;
use hreg_proto::pins::{pin_table_len, Borrow, ClientPins, Pin, PIN_ENTRIES};
use hreg_proto::shm::{ReadOnly, ReadWrite};
use hreg_proto::table::{slot_place, Read, SlotView};
use proptest::prelude::*;
use std::collections::{HashMap, HashSet};

const LIMITS: Limits = Limits {
    max_value_size: 64,
    max_objects: 40,
    max_bytes: 1200,
    uid_max_objects: 30,
    uid_max_bytes: 1000,
    uid_max_references: 60,
};

#[derive(Clone, Debug)]
struct ModelObject {
    owner: u32,
    /// The uid charged for it.
    payer: u32,
    flags: u32,
    value: Vec<u8>,
    refs: HashMap<usize, u32>,
}

#[derive(Default)]
struct Model {
    live: HashMap<u64, ModelObject>,
    bytes: u64,
    /// Each session's reference-table entries (dead objects' too, until
    /// the session drops them).
    tables: [HashSet<u64>; 3],
}

impl Model {
    /// Objects and bytes `uid` is charged for.
    fn charged(&self, uid: u32) -> (u64, u64) {
        self.live
            .values()
            .filter(|o| o.payer == uid)
            .fold((0, 0), |(n, b), o| (n + 1, b + o.value.len() as u64))
    }

    /// Drops session `who`'s entries of dead objects.
    fn purge(&mut self, who: usize) {
        let live = &self.live;
        self.tables[who].retain(|h| live.contains_key(h));
    }

    /// Before session `who` takes a reference: its dead entries go when
    /// its uid has no entry left.
    fn make_room(&mut self, who: usize) {
        if self.tables[who].len() as u64 >= LIMITS.uid_max_references {
            self.purge(who);
        }
    }

    /// Session `who` dropped references to `h` (live): it dies with its
    /// last one unless DETACHED; when its payer holds none any more, the
    /// charge moves to the uid holding most (then the lowest uid) with
    /// room, or the object dies.
    fn dropped(&mut self, h: u64) {
        let o = &self.live[&h];
        if o.flags & flags::DETACHED != 0 {
            return;
        }
        let held = |uid: u32| -> u32 {
            o.refs
                .iter()
                .filter(|(&who, _)| UIDS[who] == uid)
                .map(|(_, &n)| n)
                .sum()
        };
        if o.refs.values().all(|&n| n == 0) {
            return self.kill(h);
        }
        if held(o.payer) > 0 {
            return;
        }
        let mut others: Vec<(u32, u32)> = UIDS
            .iter()
            .map(|&uid| (uid, held(uid)))
            .filter(|&(_, n)| n > 0)
            .collect();
        others.sort_by_key(|&(uid, n)| (std::cmp::Reverse(n), uid));
        let len = o.value.len() as u64;
        for (uid, _) in others {
            let (objects, bytes) = self.charged(uid);
            if objects < LIMITS.uid_max_objects && bytes + len <= LIMITS.uid_max_bytes {
                self.live.get_mut(&h).unwrap().payer = uid;
                return;
            }
        }
        self.kill(h);
    }

    fn readable(o: &ModelObject, uid: u32) -> bool {
        uid == 0 || uid == o.owner || o.flags & flags::SHARED != 0
    }
    fn writable(o: &ModelObject, uid: u32) -> bool {
        uid == 0 || uid == o.owner
    }
    fn kill(&mut self, h: u64) {
        if let Some(o) = self.live.remove(&h) {
            self.bytes -= o.value.len() as u64;
        }
    }
}

#[derive(Clone, Debug)]
enum Action {
    Insert { who: usize, len: usize, flags: u32 },
    Get { who: usize, pick: usize },
    Replace { who: usize, pick: usize, len: usize },
    Retain { who: usize, pick: usize },
    Release { who: usize, pick: usize },
    Remove { who: usize, pick: usize },
    EndSession { who: usize },
}

fn action() -> impl Strategy<Value = Action> {
    let who = 0usize..3;
    let pick = any::<usize>();
    prop_oneof![
        3 => (who.clone(), 0usize..80, 0u32..5).prop_map(|(who, len, flags)| Action::Insert { who, len, flags }),
        2 => (who.clone(), pick).prop_map(|(who, pick)| Action::Get { who, pick }),
        1 => (who.clone(), pick, 0usize..80).prop_map(|(who, pick, len)| Action::Replace { who, pick, len }),
        2 => (who.clone(), pick).prop_map(|(who, pick)| Action::Retain { who, pick }),
        3 => (who.clone(), pick).prop_map(|(who, pick)| Action::Release { who, pick }),
        1 => (who.clone(), pick).prop_map(|(who, pick)| Action::Remove { who, pick }),
        1 => who.prop_map(|who| Action::EndSession { who }),
    ]
}

/// Uids of the three sessions: two users and root.
const UIDS: [u32; 3] = [1000, 1001, 0];

fn value_of(len: usize, salt: u64) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u64).wrapping_mul(31).wrapping_add(salt) as u8)
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]
    #[test]
    fn registry_matches_model(actions in proptest::collection::vec(action(), 1..300)) {
        // Two shards so slots are reused often.
        let registry = Registry::with_instance(2, LIMITS, 5, 77).unwrap();
        let mut holders: Vec<Holder> = UIDS.iter().map(|&uid| registry.holder(uid).unwrap()).collect();
        let mut model = Model::default();
        // Every handle issued, plus a few that never were.
        let mut known: Vec<u64> = vec![1, HandleParts { instance: 6, domain: 0, generation: 1, slot: 0 }.encode()];
        let mut issued = HashSet::new();
        for (step, action) in actions.into_iter().enumerate() {
            let pick = |p: usize| known[p % known.len()];
            let handle = |h: u64| Handle::new(h).expect("never 0");
            match action {
                Action::Insert { who, len, flags: f } => {
                    let value = value_of(len, step as u64);
                    let got = registry.insert(&holders[who], &value, f);
                    // The limits in the order the registry checks them.
                    let detached = f & flags::DETACHED != 0;
                    let valid = f & !flags::ALL == 0 && len <= LIMITS.max_value_size;
                    if valid && !detached {
                        model.make_room(who);
                    }
                    let owned = model.charged(UIDS[who]);
                    let expected = if f & !flags::ALL != 0 {
                        Err(Status::Invalid.into())
                    } else if len > LIMITS.max_value_size {
                        Err(Status::TooBig.into())
                    } else if model.live.len() as u64 >= LIMITS.max_objects {
                        Err(Refusal::quota(Limit::MaxObjects))
                    } else if model.bytes + len as u64 > LIMITS.max_bytes {
                        Err(Refusal::quota(Limit::MaxBytes))
                    } else if owned.0 >= LIMITS.uid_max_objects {
                        Err(Refusal::quota(Limit::UidMaxObjects))
                    } else if owned.1 + len as u64 > LIMITS.uid_max_bytes {
                        Err(Refusal::quota(Limit::UidMaxBytes))
                    } else if !detached
                        && model.tables[who].len() as u64 >= LIMITS.uid_max_references
                    {
                        Err(Refusal::quota(Limit::UidMaxReferences))
                    } else {
                        Ok(())
                    };
                    match (got, expected) {
                        (Ok(h), Ok(())) => {
                            let h = h.get();
                            prop_assert!(issued.insert(h), "handle {h:#x} issued twice");
                            let mut refs = HashMap::new();
                            if !detached {
                                refs.insert(who, 1);
                                model.tables[who].insert(h);
                            }
                            model.bytes += len as u64;
                            let payer = UIDS[who];
                            model.live.insert(h, ModelObject { owner: UIDS[who], payer, flags: f, value, refs });
                            known.push(h);
                        }
                        (got, expected) => prop_assert_eq!(got.map(|_| ()), expected),
                    }
                }
                Action::Get { who, pick: p } => {
                    let h = pick(p);
                    let got = registry.get_with(&holders[who], handle(h), |v| v.to_vec());
                    let expected = match model.live.get(&h) {
                        None => Err(Status::Stale),
                        Some(o) if !Model::readable(o, UIDS[who]) => Err(Status::Denied),
                        Some(o) => Ok(o.value.clone()),
                    };
                    prop_assert_eq!(got, expected);
                }
                Action::Replace { who, pick: p, len } => {
                    let h = pick(p);
                    let value = value_of(len, step as u64);
                    let got = registry.replace(&holders[who], handle(h), &value);
                    let grown = |o: &ModelObject, bytes: u64| bytes - o.value.len() as u64 + len as u64;
                    let expected = match model.live.get(&h) {
                        _ if len > LIMITS.max_value_size => Err(Status::TooBig.into()),
                        None => Err(Status::Stale.into()),
                        Some(o) if !Model::writable(o, UIDS[who]) => Err(Status::Denied.into()),
                        Some(o) if len > o.value.len() && grown(o, model.bytes) > LIMITS.max_bytes =>
                            Err(Refusal::quota(Limit::MaxBytes)),
                        Some(o) if len > o.value.len()
                            && grown(o, model.charged(o.payer).1) > LIMITS.uid_max_bytes =>
                            Err(Refusal::quota(Limit::UidMaxBytes)),
                        Some(_) => Ok(()),
                    };
                    if expected.is_ok() {
                        let o = model.live.get_mut(&h).unwrap();
                        model.bytes = model.bytes - o.value.len() as u64 + len as u64;
                        o.value = value;
                    }
                    prop_assert_eq!(got, expected);
                }
                Action::Retain { who, pick: p } => {
                    let h = pick(p);
                    let got = registry.retain(&holders[who], handle(h));
                    model.make_room(who);
                    let entries = model.tables[who].len() as u64;
                    let expected = match model.live.get_mut(&h) {
                        None => Err(Status::Stale.into()),
                        Some(o) if !Model::readable(o, UIDS[who]) => Err(Status::Denied.into()),
                        Some(_) if !model.tables[who].contains(&h)
                            && entries >= LIMITS.uid_max_references =>
                            Err(Refusal::quota(Limit::UidMaxReferences)),
                        Some(o) => {
                            *o.refs.entry(who).or_insert(0) += 1;
                            model.tables[who].insert(h);
                            Ok(())
                        }
                    };
                    prop_assert_eq!(got, expected);
                }
                Action::Release { who, pick: p } => {
                    let h = pick(p);
                    let got = registry.release(&holders[who], handle(h));
                    let expected = match model.live.get_mut(&h) {
                        None => {
                            model.tables[who].remove(&h);
                            Err(Status::Stale)
                        }
                        Some(o) => match o.refs.get_mut(&who) {
                            Some(n) if *n > 0 => {
                                *n -= 1;
                                if *n == 0 {
                                    model.tables[who].remove(&h);
                                }
                                model.dropped(h);
                                Ok(())
                            }
                            _ => Err(Status::NotHeld),
                        },
                    };
                    prop_assert_eq!(got, expected);
                }
                Action::Remove { who, pick: p } => {
                    let h = pick(p);
                    let got = registry.remove(&holders[who], handle(h));
                    let expected = match model.live.get(&h) {
                        None => Err(Status::Stale),
                        Some(o) if !Model::writable(o, UIDS[who]) => Err(Status::Denied),
                        Some(_) => {
                            model.kill(h);
                            model.tables[who].remove(&h);
                            Ok(())
                        }
                    };
                    prop_assert_eq!(got, expected);
                }
                Action::EndSession { who } => {
                    // In the order the session's table holds them (moving
                    // charges depends on it).
                    let held = lock(&holders[who].refs).entries();
                    registry.release_all(&holders[who]);
                    holders[who] = registry.holder(UIDS[who]).unwrap();
                    model.tables[who].clear();
                    for (h, _) in held {
                        if let Some(o) = model.live.get_mut(&h) {
                            o.refs.remove(&who);
                            model.dropped(h);
                        }
                    }
                }
            }
            // The daemon runs reclamation passes often; with no borrowed
            // reference, a pass frees every replaced or removed block.
            registry.reclaim();
            prop_assert_eq!(registry.reclaim_pending(), 0);
            let usage = registry.usage();
            prop_assert_eq!(usage.objects, model.live.len() as u64);
            prop_assert_eq!(usage.value_bytes, model.bytes);
            for (uid, usage) in registry.usage_by_uid() {
                prop_assert_eq!((usage.objects, usage.value_bytes), model.charged(uid));
                let who = UIDS.iter().position(|&u| u == uid).unwrap();
                prop_assert_eq!(usage.references, model.tables[who].len() as u64);
            }
            for (who, &uid) in UIDS.iter().enumerate() {
                let own = registry.own_domain(uid);
                let visible: Vec<&ModelObject> = model.live.iter()
                    .filter(|(&h, o)| uid == 0 || o.flags & flags::SHARED != 0
                        || Some(HandleParts::decode(h).domain) == own)
                    .map(|(_, o)| o)
                    .collect();
                let seen = registry.usage_visible_to(uid);
                prop_assert_eq!(seen.objects, visible.len() as u64, "{} sees", who);
                prop_assert_eq!(seen.value_bytes, visible.iter().map(|o| o.value.len() as u64).sum::<u64>());
                prop_assert_eq!(registry.shard_occupancy_visible_to(uid).iter().sum::<u64>(), visible.len() as u64);
            }
            prop_assert_eq!(registry.shard_occupancy().iter().sum::<u64>(), model.live.len() as u64);
            let (listed, _) = registry.list(0, usize::MAX, ListFilter::default());
            prop_assert_eq!(listed.len(), model.live.len());
        }
    }
}

#[test]
fn reused_slot_gets_a_new_generation() {
    let registry = Registry::with_instance(1, LIMITS, 3, 1).unwrap();
    let holder = registry.holder(1000).unwrap();
    let first = registry.insert(&holder, b"a", 0).unwrap();
    registry.release(&holder, first).unwrap();
    let second = registry.insert(&holder, b"b", 0).unwrap();
    assert_eq!(
        HandleParts::decode(first.get()).slot,
        HandleParts::decode(second.get()).slot
    );
    assert_ne!(first, second);
    assert_eq!(
        registry.get_with(&holder, first, |v| v.to_vec()),
        Err(Status::Stale)
    );
    assert_eq!(
        registry.get_with(&holder, second, |v| v.to_vec()),
        Ok(b"b".to_vec())
    );
}

#[test]
fn slot_is_retired_before_its_generation_wraps() {
    let registry = Registry::with_instance(1, LIMITS, 3, 1).unwrap();
    let holder = registry.holder(1000).unwrap();
    let first = registry.insert(&holder, b"a", 0).unwrap();
    let parts = HandleParts::decode(first.get());
    // Push the slot to its last live generation directly; walking there
    // takes 2^16 inserts.
    let domain = registry.domain(parts.domain).unwrap();
    let (view, _) = domain.slot(parts.slot).unwrap();
    let last = LAST_GENERATION - 1;
    view.write(&Slot {
        generation: last,
        ..view.current()
    });
    let last_handle = HandleParts {
        generation: last,
        ..parts
    }
    .handle()
    .unwrap();
    registry.release(&holder, last_handle).unwrap_err();
    lock(&holder.refs).add(last_handle.get(), u64::MAX).unwrap();
    registry.release(&holder, last_handle).unwrap();
    let next = registry.insert(&holder, b"b", 0).unwrap();
    assert_ne!(
        HandleParts::decode(next.get()).slot,
        parts.slot,
        "retired slot was reused"
    );
}

#[test]
fn handles_of_another_instance_are_stale() {
    let a = Registry::with_instance(4, LIMITS, 1, 9).unwrap();
    let b = Registry::with_instance(4, LIMITS, 2, 9).unwrap();
    let holder = a.holder(0).unwrap();
    let h = a.insert(&holder, b"x", flags::DETACHED).unwrap();
    b.insert(&holder, b"y", flags::DETACHED).unwrap();
    assert_eq!(b.get_with(&holder, h, |v| v.to_vec()), Err(Status::Stale));
}

#[test]
fn listing_pages_through_every_object_once() {
    let limits = Limits {
        max_objects: 1000,
        max_bytes: 1 << 20,
        uid_max_objects: 1000,
        uid_max_bytes: 1 << 20,
        ..LIMITS
    };
    let registry = Registry::with_instance(4, limits, 3, 1).unwrap();
    let alice = registry.holder(1000).unwrap();
    let bob = registry.holder(1001).unwrap();
    let mut expected = HashSet::new();
    for i in 0..100u32 {
        let who = if i % 3 == 0 { &bob } else { &alice };
        let flags = if i % 2 == 0 { flags::DETACHED } else { 0 };
        expected.insert(registry.insert(who, &i.to_le_bytes(), flags).unwrap().get());
    }
    let mut seen = HashSet::new();
    let mut cursor = 0;
    loop {
        let (page, next) = registry.list(cursor, 7, ListFilter::default());
        assert!(page.len() <= 7);
        for info in page {
            assert!(seen.insert(info.handle), "listed twice");
            assert_eq!(info.size, 4);
        }
        if next == 0 {
            break;
        }
        cursor = next;
    }
    assert_eq!(seen, expected);
    let (bobs, _) = registry.list(
        0,
        1000,
        ListFilter {
            detached_only: true,
            owner: Some(1001),
        },
    );
    assert_eq!(bobs.len(), 17);
    assert!(bobs
        .iter()
        .all(|o| o.owner == 1001 && o.flags == flags::DETACHED));
}

#[test]
fn per_uid_caps_and_new_limits_apply() {
    let registry = Registry::with_instance(2, LIMITS, 3, 1).unwrap();
    let alice = registry.holder(1000).unwrap();
    let bob = registry.holder(1001).unwrap();
    for i in 0..LIMITS.uid_max_objects {
        registry.insert(&alice, &[i as u8], 0).unwrap();
    }
    assert_eq!(
        registry.insert(&alice, b"x", 0),
        Err(Refusal::quota(Limit::UidMaxObjects))
    );
    registry.insert(&bob, b"x", 0).unwrap();
    registry.set_limits(Limits {
        max_value_size: 2,
        ..LIMITS
    });
    assert_eq!(registry.insert(&bob, b"xyz", 0), Err(Status::TooBig.into()));
    assert_eq!(
        registry.usage_by_uid(),
        vec![
            (
                1000,
                Usage {
                    objects: 30,
                    value_bytes: 30,
                    references: 30,
                    ..Usage::default()
                }
            ),
            (
                1001,
                Usage {
                    objects: 1,
                    value_bytes: 1,
                    references: 1,
                    ..Usage::default()
                }
            ),
        ]
    );
}

#[test]
fn a_refused_retain_leaves_no_entry_and_release_never_wraps() {
    let registry = Registry::with_instance(1, LIMITS, 3, 1).unwrap();
    let owner = registry.holder(1000).unwrap();
    let other = registry.holder(1000).unwrap();
    let h = registry.insert(&owner, b"kept", 0).unwrap();
    // The slot's count at its ceiling (walking there takes 2^32 retains).
    let parts = HandleParts::decode(h.get());
    let domain = registry.domain(parts.domain).unwrap();
    domain
        .slot(parts.slot)
        .unwrap()
        .1
        .refs
        .store(u32::MAX, Ordering::Relaxed);
    assert_eq!(
        registry.retain(&other, h),
        Err(Refusal::quota(Limit::ReferencesPerObject))
    );
    assert_eq!(
        other.reference_entries(),
        0,
        "a refused retain left an entry"
    );
    // The refused holder holds nothing, so it cannot release anything, and
    // its session's end takes nothing away.
    assert_eq!(registry.release(&other, h), Err(Status::NotHeld));
    registry.release_all(&other);
    assert_eq!(
        registry.get_with(&owner, h, |v| v.to_vec()),
        Ok(b"kept".to_vec())
    );
    assert_eq!(owner.reference_count(), 1);
}

#[test]
fn staging_names_the_limit_it_would_pass() {
    let registry = Registry::with_instance(1, LIMITS, 3, 1).unwrap();
    let holder = registry.holder(1000).unwrap();
    let cap = session_staging_cap(LIMITS.max_value_size);
    assert_eq!(
        registry.charge_staging(&holder, cap + 1),
        Err(Limit::SessionStaging)
    );
    assert_eq!(
        registry.charge_staging(&holder, LIMITS.max_bytes + 1),
        Err(Limit::MaxBytes)
    );
    assert_eq!(
        registry.charge_staging(&holder, LIMITS.uid_max_bytes + 1),
        Err(Limit::UidMaxBytes)
    );
    // Refusals kept nothing: the whole allowance is still there.
    registry
        .charge_staging(&holder, LIMITS.uid_max_bytes)
        .unwrap();
    registry.release_staging(&holder, LIMITS.uid_max_bytes);
}

#[test]
fn removed_objects_leave_no_references_behind() {
    let limits = Limits {
        max_objects: 1 << 20,
        max_bytes: 1 << 30,
        uid_max_objects: 64,
        uid_max_bytes: 1 << 30,
        ..LIMITS
    };
    let registry = Registry::with_instance(4, limits, 3, 1).unwrap();
    let owner = registry.holder(1000).unwrap();
    let reader = registry.holder(2000).unwrap();
    for _ in 0..20_000 {
        // The remover's own reference goes with the object.
        let h = registry.insert(&owner, b"x", flags::SHARED).unwrap();
        // Another session's reference is purged lazily.
        registry.retain(&reader, h).unwrap();
        registry.remove(&owner, h).unwrap();
    }
    assert_eq!(owner.reference_entries(), 0);
    assert!(
        reader.reference_entries() <= PURGE_FLOOR,
        "{} entries left for 0 live objects",
        reader.reference_entries()
    );
    // Releasing a dead object's reference drops the entry too.
    let h = registry.insert(&owner, b"y", flags::SHARED).unwrap();
    registry.retain(&reader, h).unwrap();
    registry.remove(&owner, h).unwrap();
    assert_eq!(registry.release(&reader, h), Err(Status::Stale));
    assert_eq!(lock(&reader.refs).held(h.get()), 0);
    // Live references survive every purge.
    let kept: Vec<Handle> = (0..50)
        .map(|_| registry.insert(&owner, b"z", flags::SHARED).unwrap())
        .collect();
    for &h in &kept {
        registry.retain(&reader, h).unwrap();
    }
    for _ in 0..5_000 {
        let h = registry.insert(&owner, b"w", flags::SHARED).unwrap();
        registry.retain(&reader, h).unwrap();
        registry.remove(&owner, h).unwrap();
    }
    for &h in &kept {
        registry.release(&reader, h).unwrap();
    }
    assert!(reader.reference_entries() <= PURGE_FLOOR);
    // The owner's own references keep them alive.
    for &h in &kept {
        assert_eq!(
            registry.get_with(&reader, h, |v| v.to_vec()),
            Ok(b"z".to_vec())
        );
    }
}

/// A client's view of one domain: its chunks, mapped read-only from the
/// descriptors the registry hands out.
struct ClientView {
    slots: Vec<Mapping<ReadOnly>>,
    heap: Vec<Mapping<ReadOnly>>,
}

impl ClientView {
    fn map(registry: &Registry, uid: u32, domain: u16) -> Result<ClientView, Status> {
        let map = |fd: rustix::fd::BorrowedFd<'_>| {
            let len = rustix::fs::fstat(fd).unwrap().st_size as usize;
            Mapping::<ReadOnly>::map(fd, len).unwrap()
        };
        let mut view = ClientView {
            slots: Vec::new(),
            heap: Vec::new(),
        };
        // One chunk of each kind at a time, as a client asks for them.
        for k in 0.. {
            let (slot, heap) = registry.chunks_for(uid, domain, Some(k), Some(k))?;
            if slot.is_none() && heap.is_none() {
                break;
            }
            view.slots.extend(slot.map(map));
            view.heap.extend(heap.map(map));
        }
        Ok(view)
    }

    /// What a read of `handle` found, and the bytes it copied.
    fn read(&self, handle: Handle) -> (Read, Vec<u8>) {
        let parts = HandleParts::decode(handle.get());
        let (chunk, at) = slot_place(parts.slot);
        let view = SlotView::new(&self.slots[chunk], at).unwrap();
        let mut out = Vec::new();
        let read = view.read(
            parts.generation,
            |len| {
                out.resize(len, 0);
                Some(&mut out[..])
            },
            |chunk| self.heap.get(usize::from(chunk)),
        );
        (read, out)
    }
}

#[test]
fn clients_read_their_domains_without_the_daemon() {
    let limits = Limits {
        max_value_size: 1 << 20,
        ..Limits::default()
    };
    let registry = Registry::with_instance(4, limits, 9, 3).unwrap();
    let alice = registry.holder(1000).unwrap();
    let bob = registry.holder(1001).unwrap();
    let small = registry.insert(&alice, b"alice's", 0).unwrap();
    let big_value: Vec<u8> = (0..100_000u32).map(|i| i as u8).collect();
    let big = registry.insert(&alice, &big_value, 0).unwrap();
    let shared = registry
        .insert(&alice, b"everyone's", flags::SHARED)
        .unwrap();
    let private_domain = HandleParts::decode(small.get()).domain;
    assert_ne!(private_domain, SHARED_DOMAIN);
    assert_eq!(HandleParts::decode(shared.get()).domain, SHARED_DOMAIN);
    // Alice maps her domain and reads both values, inline and in the heap.
    let view = ClientView::map(&registry, 1000, private_domain).unwrap();
    assert_eq!(
        view.read(small),
        (Read::Value { len: 7 }, b"alice's".to_vec())
    );
    assert_eq!(view.read(big), (Read::Value { len: 100_000 }, big_value));
    // Bob may not map it; he maps the shared one.
    assert!(matches!(
        ClientView::map(&registry, 1001, private_domain),
        Err(Status::Denied)
    ));
    // A domain that does not exist is DENIED too (nobody but root learns
    // which exist); root hears STALE.
    assert!(matches!(
        ClientView::map(&registry, 1001, 77),
        Err(Status::Denied)
    ));
    assert!(matches!(
        ClientView::map(&registry, ROOT, 77),
        Err(Status::Stale)
    ));
    let view = ClientView::map(&registry, 1001, SHARED_DOMAIN).unwrap();
    assert_eq!(view.read(shared).0, Read::Value { len: 10 });
    // A replace is seen, whole; a remove makes the handle stale.
    registry.replace(&alice, shared, b"replaced").unwrap();
    assert_eq!(
        view.read(shared),
        (Read::Value { len: 8 }, b"replaced".to_vec())
    );
    registry.remove(&alice, shared).unwrap();
    assert_eq!(view.read(shared).0, Read::Stale);
    assert_eq!(
        registry.get_with(&bob, shared, |v| v.len()),
        Err(Status::Stale)
    );
}

/// A session's memory for a test: its pin table at offset 0.
fn session_memory() -> Arc<Mapping<ReadWrite>> {
    Arc::new(Mapping::anonymous(pin_table_len(PIN_ENTRIES)).unwrap())
}

/// Borrows the value of `h` as a client does (`ClientPins::borrow` over
/// the registry's own slot): the pin on its block.
fn borrow<'a>(registry: &Registry, pins: &ClientPins<'a>, h: Handle) -> Pin<'a> {
    let parts = HandleParts::decode(h.get());
    let domain = registry.domain(parts.domain).unwrap();
    let (view, _) = domain.slot(parts.slot).unwrap();
    match pins.borrow(&view, parts.domain, parts.generation) {
        Borrow::Pinned { pin, .. } => pin,
        other => panic!("{h}: {other:?}"),
    }
}

#[test]
fn a_pin_holds_back_its_block_alone_charged_to_the_pinner() {
    let limits = Limits {
        max_value_size: 1 << 20,
        ..Limits::default()
    };
    let registry = Registry::with_instance(4, limits, 9, 3).unwrap();
    let owner = registry.holder(1000).unwrap();
    let value = vec![7u8; 4096];
    let h = registry.insert(&owner, &value, flags::SHARED).unwrap();
    // A session of another uid, with its pin table, borrows the value.
    let session = session_memory();
    let borrower = registry.holder(1001).unwrap();
    let reader = registry.reader(&borrower, Arc::clone(&session), 0, 1 << 20);
    let pins = ClientPins::new(&session, 0, PIN_ENTRIES, 1 << 20).unwrap();
    let pin = borrow(&registry, &pins, h);
    // The owner replaces it, then churns: everything but the borrowed
    // block goes back (an epoch would hold back all of it).
    registry.replace(&owner, h, &vec![8u8; 4096]).unwrap();
    for round in 0..100u8 {
        registry.replace(&owner, h, &vec![round; 100_000]).unwrap();
    }
    let pass = registry.reclaim();
    assert_eq!(
        (pass.blocks, pass.waiting),
        (100, 4096),
        "only the pinned one"
    );
    assert_eq!(reader.held_back(), 4096);
    // What the borrower holds back counts against its uid's bytes, not the
    // owner's, whose replaces gave back everything they retired.
    registry.set_limits(Limits {
        uid_max_bytes: 105_000,
        ..limits
    });
    assert_eq!(
        registry.insert(&borrower, &[0u8; 101_000], 0),
        Err(Refusal::quota(Limit::UidMaxBytes))
    );
    registry.insert(&owner, &[0u8; 4000], 0).unwrap();
    drop(pin);
    let pass = registry.reclaim();
    assert_eq!((pass.blocks, pass.bytes, pass.waiting), (1, 4096, 0));
    assert_eq!(reader.held_back(), 0);
    registry.insert(&borrower, &[0u8; 101_000], 0).unwrap();
    // A session that ended holds nothing back, its pins or not.
    let pin = borrow(&registry, &pins, h);
    registry.replace(&owner, h, b"again").unwrap();
    assert_eq!(registry.reclaim().waiting, 100_000);
    drop(reader);
    assert_eq!(registry.reclaim().waiting, 0);
    drop(pin);
}

#[test]
fn pins_past_the_budget_are_not_honoured() {
    let registry = Registry::with_instance(4, Limits::default(), 9, 3).unwrap();
    let owner = registry.holder(1000).unwrap();
    let handles: Vec<Handle> = (0..3)
        .map(|i| registry.insert(&owner, &[i; 1000], flags::SHARED).unwrap())
        .collect();
    // A client that lies about its budget: the daemon honours 2000 bytes.
    let session = session_memory();
    let liar = registry.holder(1001).unwrap();
    let reader = registry.reader(&liar, Arc::clone(&session), 0, 2000);
    let pins = ClientPins::new(&session, 0, PIN_ENTRIES, u64::MAX).unwrap();
    let held: Vec<Pin<'_>> = handles
        .iter()
        .map(|&h| borrow(&registry, &pins, h))
        .collect();
    for &h in &handles {
        registry.replace(&owner, h, b"short").unwrap();
    }
    let pass = registry.reclaim();
    assert_eq!(
        (pass.blocks, pass.waiting),
        (1, 2000),
        "two honoured, one freed"
    );
    assert_eq!(reader.held_back(), 2000);
    drop(held);
}

#[test]
fn a_reader_goes_with_its_session_unless_it_outlives_it() {
    let registry = Registry::with_instance(4, Limits::default(), 9, 3).unwrap();
    let owner = registry.holder(1000).unwrap();
    let h = registry.insert(&owner, &[5u8; 500], flags::SHARED).unwrap();
    // Sessions come and go: no reader is left behind, nothing retired.
    for _ in 0..1000 {
        let session = session_memory();
        drop(registry.reader(&owner, session, 0, 1 << 20));
    }
    assert_eq!(registry.readers(), 0);
    // A session that ends with a pin, its process alive (pidfd unknown
    // here): its pins hold until its table is empty.
    let session = session_memory();
    let reader = registry.reader(&owner, Arc::clone(&session), 0, 1 << 20);
    let pins = ClientPins::new(&session, 0, PIN_ENTRIES, 1 << 20).unwrap();
    let pin = borrow(&registry, &pins, h);
    assert!(reader.holds_pins());
    assert!(!reader.outlives());
    reader.outlive(None);
    assert!(reader.outlives());
    drop(reader);
    assert_eq!(registry.readers(), 1);
    registry.replace(&owner, h, &[6u8; 500]).unwrap();
    assert_eq!(registry.prune_readers(), []);
    assert_eq!(registry.reclaim().waiting, 500, "still borrowed");
    drop(pin);
    assert_eq!(registry.prune_readers(), [1000], "its uid, told once");
    assert_eq!(registry.readers(), 0);
    assert_eq!(registry.reclaim().waiting, 0);
    // With a pidfd: it goes when its process exits.
    let mut child = std::process::Command::new("sleep")
        .arg("60")
        .spawn()
        .unwrap();
    let pid = rustix::process::Pid::from_raw(child.id() as i32).unwrap();
    let pidfd = rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()).unwrap();
    let session = session_memory();
    let reader = registry.reader(&owner, Arc::clone(&session), 0, 1 << 20);
    let pins = ClientPins::new(&session, 0, PIN_ENTRIES, 1 << 20).unwrap();
    let pin = borrow(&registry, &pins, h);
    reader.outlive(Some(pidfd));
    drop(reader);
    assert_eq!(registry.prune_readers(), []);
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(registry.prune_readers(), [1000]);
    drop(pin);
}

#[test]
fn pins_on_a_domain_made_after_the_reader_registered_are_honoured() {
    // The registration race of issue 17: a session registers before its
    // uid has a private domain, another session of the uid makes it; the
    // first one's pins on it must count.
    let registry = Registry::with_instance(4, Limits::default(), 9, 3).unwrap();
    let first = registry.holder(1000).unwrap();
    let session = session_memory();
    let reader = registry.reader(&first, Arc::clone(&session), 0, 1 << 20);
    let second = registry.holder(1000).unwrap();
    let h = registry.insert(&second, &[1u8; 4096], 0).unwrap();
    let pins = ClientPins::new(&session, 0, PIN_ENTRIES, 1 << 20).unwrap();
    let pin = borrow(&registry, &pins, h);
    registry.replace(&second, h, &[2u8; 4096]).unwrap();
    assert_eq!(registry.reclaim().waiting, 4096);
    assert_eq!(reader.held_back(), 4096);
    // A uid that may not map the domain pins in vain.
    let stranger = registry.holder(1001).unwrap();
    let theirs = session_memory();
    let _their_reader = registry.reader(&stranger, Arc::clone(&theirs), 0, 1 << 20);
    let their_pins = ClientPins::new(&theirs, 0, PIN_ENTRIES, 1 << 20).unwrap();
    let _vain = borrow(&registry, &their_pins, h);
    drop(pin);
    registry.replace(&second, h, &[3u8; 4096]).unwrap();
    assert_eq!(registry.reclaim().waiting, 0);
}

#[test]
fn the_heap_follows_the_live_values_under_churn() {
    let limits = Limits {
        max_value_size: 1 << 20,
        ..Limits::default()
    };
    let registry = Registry::with_instance(8, limits, 9, 3).unwrap();
    let holder = registry.holder(1000).unwrap();
    let mut live: Vec<(Handle, usize)> = Vec::new();
    let mut state = 99u64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for step in 0..20_000 {
        let len = match next() % 10 {
            0..=5 => (next() % 512) as usize,
            6..=8 => (next() % 16384) as usize,
            _ => (next() % (256 << 10)) as usize,
        };
        let value = vec![step as u8; len];
        match next() % 3 {
            0 if live.len() > 100 => {
                let (h, _) = live.swap_remove((next() % live.len() as u64) as usize);
                registry.remove(&holder, h).unwrap();
            }
            1 if !live.is_empty() => {
                let at = (next() % live.len() as u64) as usize;
                registry.replace(&holder, live[at].0, &value).unwrap();
                live[at].1 = len;
            }
            _ => live.push((registry.insert(&holder, &value, 0).unwrap(), len)),
        }
        if step % 64 == 0 {
            registry.reclaim();
        }
    }
    registry.reclaim();
    let live_bytes: u64 = live.iter().map(|&(_, len)| len as u64).sum();
    let domain = registry
        .domain(HandleParts::decode(live[0].0.get()).domain)
        .unwrap();
    let in_use = registry.heap_in_use();
    assert_eq!(in_use, domain.heap_in_use(), "one domain");
    assert!(
        in_use <= live_bytes + live_bytes / 4 + live.len() as u64 * 16,
        "{in_use} bytes of blocks for {live_bytes} bytes of values"
    );
    assert_eq!(registry.usage().value_bytes, live_bytes);
    assert_eq!(registry.reclaim_pending(), 0);
    // Pages: at most those the live blocks touch, a label page per chunk
    // (fewer than 16 here) and what a heap keeps idle.
    let slack = 16 * 4096 + crate::heap::IDLE_MAX;
    let resident = registry.heap_resident();
    assert!(
        resident <= in_use + 2 * 4096 * live.len() as u64 + slack,
        "{resident} bytes of pages for {in_use} bytes of blocks"
    );
    for (h, _) in live {
        registry.remove(&holder, h).unwrap();
    }
    registry.reclaim();
    let resident = registry.heap_resident();
    assert!(resident <= slack, "{resident} bytes of pages left");
}

#[test]
fn the_bytes_waiting_never_dip_below_zero_while_a_pass_runs() {
    // Retiring on one thread and reclaiming on another, while a third
    // watches: the count of bytes waiting must never wrap (for as long as
    // it did, no insert of anyone would find room).
    let registry = Registry::with_instance(4, Limits::default(), 9, 3).unwrap();
    let holder = registry.holder(1000).unwrap();
    let h = registry.insert(&holder, &[1u8; 200], 0).unwrap();
    let stop = std::sync::atomic::AtomicBool::new(false);
    let most = std::thread::scope(|scope| {
        scope.spawn(|| {
            for round in 0..200_000u32 {
                registry.replace(&holder, h, &[round as u8; 200]).unwrap();
            }
            stop.store(true, Ordering::Relaxed);
        });
        scope.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                registry.reclaim();
            }
        });
        let mut most = 0;
        while !stop.load(Ordering::Relaxed) {
            most = most.max(registry.reclaim_pending());
        }
        most
    });
    assert!(most <= 200_000 * 200, "{most} bytes waiting at one point");
    registry.reclaim();
    assert_eq!(registry.reclaim_pending(), 0);
}
