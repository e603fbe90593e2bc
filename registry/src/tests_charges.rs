//! Who pays for what: an object is charged to its creator while the
//! creator references it, then to a uid that keeps it alive (or it dies
//! when none of them has room); reference-table entries count against
//! `uid_max_references`; a non-root uid's figures leave out other uids'
//! private objects.

use super::*;

const ALICE: u32 = 1000;
const BOB: u32 = 1001;

fn limits() -> Limits {
    Limits {
        max_value_size: 1 << 10,
        max_objects: 1000,
        max_bytes: 1 << 20,
        uid_max_objects: 10,
        uid_max_bytes: 1 << 16,
        uid_max_references: 20,
    }
}

/// (objects, bytes, references) `uid` is charged for.
fn charged(registry: &Registry, uid: u32) -> (u64, u64, u64) {
    registry
        .usage_by_uid()
        .into_iter()
        .find(|&(u, _)| u == uid)
        .map_or((0, 0, 0), |(_, u)| (u.objects, u.value_bytes, u.references))
}

#[test]
fn an_object_kept_only_by_another_uid_is_charged_to_it() {
    let registry = Registry::with_instance(4, limits(), 3, 1).unwrap();
    let alice = registry.holder(ALICE).unwrap();
    let bob = registry.holder(BOB).unwrap();
    let shared: Vec<Handle> = (0..10)
        .map(|i| registry.insert(&alice, &[i; 100], flags::SHARED).unwrap())
        .collect();
    assert_eq!(
        registry.insert(&alice, b"one more", 0),
        Err(Refusal::quota(Limit::UidMaxObjects))
    );
    // Bob keeps five of them; while Alice holds hers, she pays.
    for &h in &shared[..5] {
        registry.retain(&bob, h).unwrap();
        registry.retain(&bob, h).unwrap();
    }
    assert_eq!(charged(&registry, ALICE), (10, 1000, 10));
    assert_eq!(charged(&registry, BOB), (0, 0, 5));
    // Alice lets go of all: the five Bob keeps are his now, the rest die.
    for &h in &shared {
        registry.release(&alice, h).unwrap();
    }
    assert_eq!(charged(&registry, ALICE), (0, 0, 0));
    assert_eq!(charged(&registry, BOB), (5, 500, 5));
    assert_eq!(registry.usage().objects, 5);
    for &h in &shared[..5] {
        assert_eq!(registry.get_with(&bob, h, <[u8]>::len), Ok(100));
    }
    // So Alice's next inserts succeed, up to her whole quota.
    for i in 0..10u8 {
        registry.insert(&alice, &[i], 0).unwrap();
    }
    // Alice may still change her object; Bob, who pays, pays for growth.
    registry.replace(&alice, shared[0], &[9; 300]).unwrap();
    assert_eq!(charged(&registry, BOB), (5, 700, 5));
    // Bob's last reference goes: the object dies, his charge with it.
    registry.release(&bob, shared[0]).unwrap();
    registry.release(&bob, shared[0]).unwrap();
    assert_eq!(
        registry.get_with(&alice, shared[0], <[u8]>::len),
        Err(Status::Stale)
    );
    assert_eq!(charged(&registry, BOB), (4, 400, 4));
    // A session's end moves nothing when its uid holds on elsewhere.
    let bob_again = registry.holder(BOB).unwrap();
    registry.retain(&bob_again, shared[1]).unwrap();
    registry.release_all(&bob);
    assert_eq!(charged(&registry, BOB), (1, 100, 1));
    assert_eq!(registry.usage().objects, 11);
    // The owner may still remove it; the payer gets its charge back.
    registry.remove(&alice, shared[1]).unwrap();
    assert_eq!(charged(&registry, BOB).0, 0);
}

#[test]
fn the_charge_goes_to_whoever_has_room_or_the_object_dies() {
    let registry = Registry::with_instance(4, limits(), 3, 1).unwrap();
    let alice = registry.holder(ALICE).unwrap();
    let bob = registry.holder(BOB).unwrap();
    let carol = registry.holder(1002).unwrap();
    let a = registry.insert(&alice, b"a", flags::SHARED).unwrap();
    let b = registry.insert(&alice, b"b", flags::SHARED).unwrap();
    for h in [a, b] {
        registry.retain(&bob, h).unwrap();
        registry.retain(&bob, h).unwrap();
        registry.retain(&carol, h).unwrap();
    }
    // Bob, holding most, has no room: his quota is full of his own.
    for i in 0..10u8 {
        registry.insert(&bob, &[i], 0).unwrap();
    }
    registry.release(&alice, a).unwrap();
    assert_eq!(charged(&registry, 1002).0, 1, "Carol has room: she pays");
    // Carol full too: nobody who keeps `b` can pay for it, so it dies.
    for i in 0..9u8 {
        registry.insert(&carol, &[i], 0).unwrap();
    }
    registry.release(&alice, b).unwrap();
    assert_eq!(registry.get_with(&bob, b, <[u8]>::len), Err(Status::Stale));
    assert_eq!(registry.release(&bob, b), Err(Status::Stale));
    assert_eq!(charged(&registry, ALICE), (0, 0, 0));
    assert_eq!(charged(&registry, BOB).0, 10);
    // A DETACHED object stays its creator's whoever holds it.
    let kept = registry.insert(&alice, b"kept", flags::SHARED | flags::DETACHED);
    let kept = kept.unwrap();
    registry.retain(&carol, kept).unwrap();
    registry.retain(&alice, kept).unwrap();
    registry.release(&alice, kept).unwrap();
    assert_eq!(charged(&registry, ALICE).0, 1);
}

#[test]
fn references_count_against_the_uid_and_come_back() {
    let registry = Registry::with_instance(4, limits(), 3, 1).unwrap();
    let alice = registry.holder(ALICE).unwrap();
    let bob = registry.holder(BOB).unwrap();
    let bob2 = registry.holder(BOB).unwrap();
    let carol = registry.holder(1002).unwrap();
    let shared: Vec<Handle> = (0..10)
        .map(|i| registry.insert(&alice, &[i], flags::SHARED).unwrap())
        .collect();
    let detached = registry
        .insert(&carol, b"d", flags::SHARED | flags::DETACHED)
        .unwrap();
    // Twenty entries for Bob's uid, over two sessions; counts are free.
    for &h in &shared {
        registry.retain(&bob, h).unwrap();
        registry.retain(&bob, h).unwrap();
        registry.retain(&bob2, h).unwrap();
    }
    assert_eq!(charged(&registry, BOB).2, 20);
    assert_eq!(
        registry.retain(&bob, detached),
        Err(Refusal::quota(Limit::UidMaxReferences))
    );
    assert_eq!(
        registry.insert(&bob, b"mine", 0),
        Err(Refusal::quota(Limit::UidMaxReferences))
    );
    // Nothing was charged or left behind by the refusals.
    assert_eq!(charged(&registry, BOB), (0, 0, 20));
    assert_eq!(bob.reference_entries(), 10);
    // A DETACHED insert takes no entry.
    registry.insert(&bob, b"mine", flags::DETACHED).unwrap();
    // Entries come back as they go: by release, by a session's end.
    registry.release(&bob, shared[0]).unwrap();
    registry.release(&bob, shared[0]).unwrap();
    assert_eq!(charged(&registry, BOB).2, 19);
    registry.release_all(&bob2);
    assert_eq!(charged(&registry, BOB).2, 9);
    // Entries of objects another uid removed count until they are
    // dropped; a session at the limit drops its own first.
    for &h in &shared[1..] {
        registry.retain(&bob2, h).unwrap();
    }
    registry.retain(&bob, detached).unwrap();
    assert_eq!(charged(&registry, BOB).2, 19);
    for &h in &shared[1..] {
        registry.remove(&alice, h).unwrap();
    }
    registry.retain(&bob2, shared[0]).unwrap();
    assert_eq!(charged(&registry, BOB).2, 20);
    let fresh = registry.insert(&alice, b"f", flags::SHARED).unwrap();
    registry.retain(&bob2, fresh).unwrap();
    assert_eq!(
        charged(&registry, BOB).2,
        12,
        "bob2's nine dead entries dropped"
    );
    // Limits change while serving; Bob's own dead entries go first.
    registry.set_limits(Limits {
        uid_max_references: 12,
        ..limits()
    });
    registry.insert(&bob, b"x", 0).unwrap();
    assert_eq!(charged(&registry, BOB).2, 4);
    registry.set_limits(Limits {
        uid_max_references: 4,
        ..limits()
    });
    assert_eq!(
        registry.insert(&bob, b"y", 0),
        Err(Refusal::quota(Limit::UidMaxReferences))
    );
    registry.retain(&alice, detached).unwrap();
}

#[test]
fn a_non_root_uid_sees_no_other_uids_private_objects() {
    let limits = Limits {
        max_value_size: 2048,
        ..limits()
    };
    let registry = Registry::with_instance(4, limits, 3, 1).unwrap();
    let alice = registry.holder(ALICE).unwrap();
    let bob = registry.holder(BOB).unwrap();
    registry.insert(&alice, &[1; 7], flags::SHARED).unwrap();
    registry.insert(&bob, &[2; 11], 0).unwrap();
    let seen = |uid| {
        let usage = registry.usage_visible_to(uid);
        let shards: u64 = registry.shard_occupancy_visible_to(uid).iter().sum();
        (usage.objects, usage.value_bytes, shards)
    };
    let before = seen(ALICE);
    assert_eq!(before, (1, 7, 1));
    let private = registry.insert(&bob, &[3; 1337], 0).unwrap();
    assert_eq!(seen(ALICE), before, "Bob's private insert shows nowhere");
    registry.replace(&bob, private, &[3; 13]).unwrap();
    registry.remove(&bob, private).unwrap();
    assert_eq!(seen(ALICE), before);
    assert_eq!(seen(BOB), (2, 18, 2));
    assert_eq!(seen(ROOT), (2, 18, 2));
    assert_eq!(registry.usage_visible_to(ROOT), registry.usage());
}

#[test]
fn reference_tables_shrink_as_entries_go() {
    let registry = Registry::with_instance(4, limits(), 3, 1).unwrap();
    let alice = registry.holder(ALICE).unwrap();
    registry.set_limits(Limits {
        max_objects: 1 << 20,
        uid_max_objects: 1 << 20,
        uid_max_bytes: 1 << 20,
        uid_max_references: 1 << 20,
        ..limits()
    });
    let handles: Vec<Handle> = (0..20_000u32)
        .map(|i| registry.insert(&alice, &i.to_le_bytes(), 0).unwrap())
        .collect();
    let grown = lock(&alice.refs).capacity();
    assert!(grown >= 20_000 * 4 / 3, "{grown}");
    for &h in &handles[..19_990] {
        registry.release(&alice, h).unwrap();
    }
    let shrunk = lock(&alice.refs).capacity();
    assert!(
        shrunk <= 1024,
        "10 entries left in a table of {shrunk} (it held {grown})"
    );
    for &h in &handles[19_990..] {
        assert_eq!(registry.get_with(&alice, h, <[u8]>::len), Ok(4));
        registry.release(&alice, h).unwrap();
    }
    assert_eq!(registry.usage().objects, 0);
}
