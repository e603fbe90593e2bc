//! The registry against a plain model (a map of live objects plus the set of
//! handles ever issued), over random operation sequences.

use super::*;
use proptest::prelude::*;
use std::collections::HashSet;

const LIMITS: Limits = Limits {
    max_value_size: 64,
    max_objects: 40,
    max_bytes: 1200,
    uid_max_objects: 30,
    uid_max_bytes: 1000,
};

#[derive(Clone, Debug)]
struct ModelObject {
    owner: u32,
    flags: u32,
    value: Vec<u8>,
    refs: HashMap<usize, u32>,
}

#[derive(Default)]
struct Model {
    live: HashMap<u64, ModelObject>,
    bytes: u64,
}

impl Model {
    /// Objects and bytes `uid` owns.
    fn owned(&self, uid: u32) -> (u64, u64) {
        self.live
            .values()
            .filter(|o| o.owner == uid)
            .fold((0, 0), |(n, b), o| (n + 1, b + o.value.len() as u64))
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
    fn drop_if_unreferenced(&mut self, h: u64) {
        let o = &self.live[&h];
        if o.flags & flags::DETACHED == 0 && o.refs.values().all(|&n| n == 0) {
            self.kill(h);
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
        let registry = Registry::with_epoch(2, LIMITS, 5, 77);
        let mut holders: Vec<Holder> = UIDS.iter().map(|&uid| registry.holder(uid)).collect();
        let mut model = Model::default();
        // Every handle issued, plus a few that never were.
        let mut known: Vec<u64> = vec![1, HandleParts { epoch: 6, generation: 1, slot: 0 }.encode()];
        let mut issued = HashSet::new();
        for (step, action) in actions.into_iter().enumerate() {
            let pick = |p: usize| known[p % known.len()];
            let handle = |h: u64| Handle::new(h).expect("never 0");
            match action {
                Action::Insert { who, len, flags: f } => {
                    let value = value_of(len, step as u64);
                    let got = registry.insert(&holders[who], &value, f);
                    let expected = if f & !flags::ALL != 0 {
                        Err(Status::Invalid)
                    } else if len > LIMITS.max_value_size {
                        Err(Status::TooBig)
                    } else if model.live.len() as u64 >= LIMITS.max_objects
                        || model.bytes + len as u64 > LIMITS.max_bytes
                        || model.owned(UIDS[who]).0 >= LIMITS.uid_max_objects
                        || model.owned(UIDS[who]).1 + len as u64 > LIMITS.uid_max_bytes {
                        Err(Status::Quota)
                    } else {
                        Ok(())
                    };
                    match (got, expected) {
                        (Ok(h), Ok(())) => {
                            let h = h.get();
                            prop_assert!(issued.insert(h), "handle {h:#x} issued twice");
                            let mut refs = HashMap::new();
                            if f & flags::DETACHED == 0 {
                                refs.insert(who, 1);
                            }
                            model.bytes += len as u64;
                            model.live.insert(h, ModelObject { owner: UIDS[who], flags: f, value, refs });
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
                    let expected = match model.live.get(&h) {
                        _ if len > LIMITS.max_value_size => Err(Status::TooBig),
                        None => Err(Status::Stale),
                        Some(o) if !Model::writable(o, UIDS[who]) => Err(Status::Denied),
                        Some(o) if len > o.value.len()
                            && (model.bytes - o.value.len() as u64 + len as u64 > LIMITS.max_bytes
                                || model.owned(o.owner).1 - o.value.len() as u64 + len as u64
                                    > LIMITS.uid_max_bytes) => Err(Status::Quota),
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
                    let expected = match model.live.get_mut(&h) {
                        None => Err(Status::Stale),
                        Some(o) if !Model::readable(o, UIDS[who]) => Err(Status::Denied),
                        Some(o) => {
                            *o.refs.entry(who).or_insert(0) += 1;
                            Ok(())
                        }
                    };
                    prop_assert_eq!(got, expected);
                }
                Action::Release { who, pick: p } => {
                    let h = pick(p);
                    let got = registry.release(&holders[who], handle(h));
                    let expected = match model.live.get_mut(&h) {
                        None => Err(Status::Stale),
                        Some(o) => match o.refs.get_mut(&who) {
                            Some(n) if *n > 0 => {
                                *n -= 1;
                                model.drop_if_unreferenced(h);
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
                            Ok(())
                        }
                    };
                    prop_assert_eq!(got, expected);
                }
                Action::EndSession { who } => {
                    registry.release_all(&holders[who]);
                    holders[who] = registry.holder(UIDS[who]);
                    let handles: Vec<u64> = model.live.keys().copied().collect();
                    for h in handles {
                        model.live.get_mut(&h).unwrap().refs.remove(&who);
                        model.drop_if_unreferenced(h);
                    }
                }
            }
            let usage = registry.usage();
            prop_assert_eq!(usage.objects, model.live.len() as u64);
            prop_assert_eq!(usage.value_bytes, model.bytes);
            for (uid, usage) in registry.usage_by_uid() {
                prop_assert_eq!((usage.objects, usage.value_bytes), model.owned(uid));
            }
            prop_assert_eq!(registry.shard_occupancy().iter().sum::<u64>(), model.live.len() as u64);
            let (listed, _) = registry.list(0, usize::MAX, ListFilter::default());
            prop_assert_eq!(listed.len(), model.live.len());
        }
    }
}

#[test]
fn reused_slot_gets_a_new_generation() {
    let registry = Registry::with_epoch(1, LIMITS, 3, 1);
    let holder = registry.holder(1000);
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
    let registry = Registry::with_epoch(1, LIMITS, 3, 1);
    let holder = registry.holder(1000);
    let first = registry.insert(&holder, b"a", 0).unwrap();
    // Push the slot to its last generation directly; walking there takes 2^23 inserts.
    {
        let mut shard = write(&registry.shards[0]);
        shard.slot_mut(0).unwrap().generation = LAST_GENERATION;
    }
    let last = HandleParts {
        generation: LAST_GENERATION,
        ..HandleParts::decode(first.get())
    }
    .encode();
    let last_handle = Handle::new(last).unwrap();
    registry.release(&holder, last_handle).unwrap_err();
    lock(&holder.refs).add(last);
    registry.release(&holder, last_handle).unwrap();
    let next = registry.insert(&holder, b"b", 0).unwrap();
    assert_ne!(
        HandleParts::decode(next.get()).slot,
        0,
        "retired slot was reused"
    );
}

#[test]
fn handles_of_another_epoch_are_stale() {
    let a = Registry::with_epoch(4, LIMITS, 1, 9);
    let b = Registry::with_epoch(4, LIMITS, 2, 9);
    let holder = a.holder(0);
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
    let registry = Registry::with_epoch(4, limits, 3, 1);
    let alice = registry.holder(1000);
    let bob = registry.holder(1001);
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
    let registry = Registry::with_epoch(2, LIMITS, 3, 1);
    let alice = registry.holder(1000);
    let bob = registry.holder(1001);
    for i in 0..LIMITS.uid_max_objects {
        registry.insert(&alice, &[i as u8], 0).unwrap();
    }
    assert_eq!(registry.insert(&alice, b"x", 0), Err(Status::Quota));
    registry.insert(&bob, b"x", 0).unwrap();
    registry.set_limits(Limits {
        max_value_size: 2,
        ..LIMITS
    });
    assert_eq!(registry.insert(&bob, b"xyz", 0), Err(Status::TooBig));
    assert_eq!(
        registry.usage_by_uid(),
        vec![
            (
                1000,
                Usage {
                    objects: 30,
                    value_bytes: 30
                }
            ),
            (
                1001,
                Usage {
                    objects: 1,
                    value_bytes: 1
                }
            ),
        ]
    );
}

#[test]
fn a_refused_retain_leaves_no_entry_and_release_never_wraps() {
    let registry = Registry::with_epoch(1, LIMITS, 3, 1);
    let owner = registry.holder(1000);
    let other = registry.holder(1000);
    let h = registry.insert(&owner, b"kept", 0).unwrap();
    // The slot's count at its ceiling (walking there takes 2^32 retains).
    write(&registry.shards[0]).slot_mut(0).unwrap().refs = u32::MAX;
    assert_eq!(registry.retain(&other, h), Err(Status::Quota));
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
fn removed_objects_leave_no_references_behind() {
    let limits = Limits {
        max_objects: 1 << 20,
        max_bytes: 1 << 30,
        uid_max_objects: 64,
        uid_max_bytes: 1 << 30,
        ..LIMITS
    };
    let registry = Registry::with_epoch(4, limits, 3, 1);
    let owner = registry.holder(1000);
    let reader = registry.holder(2000);
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
    assert!(!lock(&reader.refs).counts.contains_key(&h.get()));
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
