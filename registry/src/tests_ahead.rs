//! Handles granted ahead (issue 19): a reserved slot is neither free nor
//! stale, only its session's insert fills it, reservations and credit count
//! against the quotas as the objects and bytes they stand for, and what a
//! session did not use goes back when it ends.

use super::*;
use hreg_proto::table::Read;

const LIMITS: Limits = Limits {
    max_value_size: 64,
    max_objects: 1000,
    max_bytes: 1 << 20,
    uid_max_objects: 10,
    uid_max_bytes: 1 << 20,
    uid_max_references: 100,
};

fn grant(registry: &Registry, holder: &Holder, shared: bool, want: usize) -> (Vec<Handle>, u64) {
    let mut handles = Vec::new();
    let credit = registry
        .reserve(holder, shared, want, |h| handles.push(h))
        .unwrap();
    (handles, credit)
}

#[test]
fn a_granted_handle_is_filled_by_its_session_alone() {
    let registry = Registry::with_instance(4, LIMITS, 3, 1).unwrap();
    let alice = registry.holder(1000).unwrap();
    let bob = registry.holder(1001).unwrap();
    let (handles, credit) = grant(&registry, &alice, true, 4);
    assert_eq!(handles.len(), 4);
    assert_eq!(credit, CREDIT);
    assert_eq!(alice.ahead(), (4, CREDIT));
    let h = handles[0];
    // Reserved: not an object yet, for anyone.
    assert_eq!(registry.reserved_for(h), Some(alice.id()));
    assert_eq!(
        registry.get_with(&bob, h, |v| v.to_vec()),
        Err(Status::Stale)
    );
    assert_eq!(
        registry.release(&bob, h),
        Err(Status::Stale),
        "not bob's to give back"
    );
    // Only alice's session may fill it, with the flags of its domain.
    assert_eq!(
        registry.insert_into(&bob, h, b"x", flags::SHARED),
        Err(Status::Invalid.into())
    );
    assert_eq!(
        registry.insert_into(&alice, h, b"x", 0),
        Err(Status::Invalid.into()),
        "a SHARED handle filled as private"
    );
    registry
        .insert_into(&alice, h, b"sixteen bytes ok", flags::SHARED)
        .unwrap();
    assert_eq!(registry.reserved_for(h), None);
    assert_eq!(
        registry.get_with(&bob, h, |v| v.to_vec()),
        Ok(b"sixteen bytes ok".to_vec())
    );
    assert_eq!(alice.ahead(), (3, CREDIT - 16));
    assert_eq!(alice.reference_count(), 1);
    // Once filled, never again.
    assert_eq!(
        registry.insert_into(&alice, h, b"y", flags::SHARED),
        Err(Status::Invalid.into())
    );
    assert_eq!(registry.usage().objects, 1);
    assert_eq!(registry.usage().value_bytes, 16);
    // A private grant lands in the uid's own domain.
    let (own, _) = grant(&registry, &alice, false, 1);
    assert_eq!(own.len(), 1);
    registry.insert_into(&alice, own[0], b"mine", 0).unwrap();
    assert_eq!(
        registry.get_with(&bob, own[0], |v| v.to_vec()),
        Err(Status::Denied)
    );
}

#[test]
fn reservations_count_against_the_object_quota() {
    let registry = Registry::with_instance(4, LIMITS, 3, 1).unwrap();
    let alice = registry.holder(1000).unwrap();
    registry.insert(&alice, b"a", 0).unwrap();
    let (handles, _) = grant(&registry, &alice, false, 64);
    // Half the room left at most per grant, so that one session's pool
    // leaves room for the uid's other sessions and synchronous inserts.
    assert_eq!(handles.len(), 5, "10 objects at most, one made: half of 9");
    let (more, _) = grant(&registry, &alice, false, 64);
    assert_eq!(more.len(), 2);
    let handles: Vec<Handle> = handles
        .into_iter()
        .chain(more)
        .chain(grant(&registry, &alice, false, 64).0)
        .chain(grant(&registry, &alice, false, 64).0)
        .collect();
    assert_eq!(
        handles.len(),
        9,
        "at least one per grant while room is left"
    );
    assert_eq!(
        registry.insert(&alice, b"b", 0),
        Err(Refusal::quota(Limit::UidMaxObjects))
    );
    // Each reservation becomes an object without passing the cap.
    for (i, &h) in handles.iter().enumerate() {
        registry.insert_into(&alice, h, &[i as u8], 0).unwrap();
    }
    assert_eq!(registry.usage().objects, 10);
    assert_eq!(grant(&registry, &alice, false, 4).0.len(), 0);
    registry.release(&alice, handles[0]).unwrap();
    assert_eq!(grant(&registry, &alice, false, 4).0.len(), 1);
}

#[test]
fn credit_counts_against_the_byte_quota_and_past_it_inserts_are_charged() {
    let limits = Limits {
        uid_max_bytes: 100,
        ..LIMITS
    };
    let registry = Registry::with_instance(4, limits, 3, 1).unwrap();
    let alice = registry.holder(1000).unwrap();
    let (handles, credit) = grant(&registry, &alice, false, 3);
    assert_eq!(credit, 50, "half the room left");
    // The credit is counted: a synchronous insert finds the bytes taken.
    assert_eq!(
        registry.insert(&alice, &[0; 64], 0),
        Err(Refusal::quota(Limit::UidMaxBytes))
    );
    registry
        .insert_into(&alice, handles[0], &[1; 40], 0)
        .unwrap();
    assert_eq!(alice.ahead().1, 10);
    // Past the credit left, the bytes are charged as any insert's.
    assert_eq!(
        registry.insert_into(&alice, handles[1], &[2; 60], 0),
        Err(Refusal::quota(Limit::UidMaxBytes))
    );
    // A refused insert leaves the reservation; a release gives it back.
    assert_eq!(registry.reserved_for(handles[2]), Some(alice.id()));
    registry.release(&alice, handles[2]).unwrap();
    assert_eq!(registry.reserved_for(handles[2]), None);
    assert_eq!(registry.release(&alice, handles[2]), Err(Status::Stale));
    assert_eq!(
        registry.insert_into(&alice, handles[2], b"z", 0),
        Err(Status::Invalid.into())
    );
    assert_eq!(registry.reserved_for(handles[1]), Some(alice.id()));
    registry
        .insert_into(&alice, handles[1], &[2; 12], 0)
        .unwrap();
    assert_eq!(alice.ahead().1, 10, "charged, the credit untouched");
}

#[test]
fn what_a_session_did_not_use_goes_back_when_it_ends() {
    let registry = Registry::with_instance(4, LIMITS, 3, 1).unwrap();
    let alice = registry.holder(1000).unwrap();
    let (handles, _) = grant(&registry, &alice, true, 5);
    registry
        .insert_into(&alice, handles[0], b"kept", flags::SHARED | flags::DETACHED)
        .unwrap();
    registry.release_all(&alice);
    assert_eq!(alice.ahead(), (0, 0));
    assert_eq!(
        registry.get_with(&alice, handles[0], |v| v.to_vec()),
        Ok(b"kept".to_vec())
    );
    for &h in &handles[1..] {
        assert_eq!(registry.reserved_for(h), None);
        assert_eq!(
            registry.get_with(&alice, h, |v| v.len()),
            Err(Status::Stale)
        );
    }
    // Everything given back: the uid may own its whole quota again.
    let bob = registry.holder(1000).unwrap();
    let (more, credit) = grant(&registry, &bob, true, 64);
    assert_eq!(more.len(), 5, "half of the room left");
    assert_eq!(credit, CREDIT);
    // A freed reservation's handle never names the slot's next object.
    for &h in &handles[1..] {
        assert!(!more.contains(&h));
    }
}

#[test]
fn readers_see_a_reserved_slot_as_reserved() {
    let registry = Registry::with_instance(4, LIMITS, 3, 1).unwrap();
    let alice = registry.holder(1000).unwrap();
    let (handles, _) = grant(&registry, &alice, true, 1);
    let parts = HandleParts::decode(handles[0].get());
    let domain = registry.domain(parts.domain).unwrap();
    let (view, _) = domain.slot(parts.slot).unwrap();
    let mut out = [0u8; 64];
    assert_eq!(
        view.read(parts.generation, |n| out.get_mut(..n), |_| None),
        Read::Reserved {
            session: alice.id() as u32
        }
    );
    registry
        .insert_into(&alice, handles[0], b"now", flags::SHARED)
        .unwrap();
    assert_eq!(
        view.read(parts.generation, |n| out.get_mut(..n), |_| None),
        Read::Value { len: 3 }
    );
}

#[test]
fn a_registry_that_keeps_state_grants_nothing() {
    let dir = std::env::temp_dir().join(format!("hreg-ahead-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let store = Arc::new(DirStore::open(&dir).unwrap());
    let registry = Registry::create(store, 4, LIMITS).unwrap();
    let alice = registry.holder(1000).unwrap();
    assert!(!registry.posting_allowed());
    assert_eq!(grant(&registry, &alice, true, 4), (Vec::new(), 0));
    drop(registry);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_granted_handle_holds_the_reference_its_insert_takes() {
    let limits = Limits {
        uid_max_references: 3,
        ..LIMITS
    };
    let registry = Registry::with_instance(4, limits, 3, 1).unwrap();
    let alice = registry.holder(1000).unwrap();
    let (handles, _) = grant(&registry, &alice, false, 8);
    assert_eq!(handles.len(), 3, "one reference each, 3 at most");
    assert_eq!(
        registry.insert(&alice, b"sync", 0),
        Err(Refusal::quota(Limit::UidMaxReferences))
    );
    registry.insert_into(&alice, handles[0], b"a", 0).unwrap();
    registry
        .insert_into(&alice, handles[1], b"b", flags::DETACHED)
        .unwrap();
    // The DETACHED one took none: room for one synchronous insert.
    registry.insert(&alice, b"sync", 0).unwrap();
    registry.insert_into(&alice, handles[2], b"c", 0).unwrap();
    assert_eq!(alice.reference_count(), 3);
    // Given back, a granted handle's reference goes too.
    registry.release(&alice, handles[0]).unwrap();
    let (more, _) = grant(&registry, &alice, false, 8);
    assert_eq!(more.len(), 1);
    registry.release(&alice, more[0]).unwrap();
    registry.insert(&alice, b"again", 0).unwrap();
}

/// At `uid_max_references`, a grant first drops the session's entries for
/// objects another session removed, then grants. The purge looks at slots
/// under their shard locks, so it runs before the grant takes any (it ran
/// under one, and a dead handle in that shard would have hung the worker).
#[test]
fn a_grant_at_the_reference_limit_makes_room_from_dead_references() {
    let limits = Limits {
        uid_max_references: 4,
        ..LIMITS
    };
    let registry = Registry::with_instance(1, limits, 3, 1).unwrap();
    let alice = registry.holder(1000).unwrap();
    let other = registry.holder(1000).unwrap();
    let held: Vec<Handle> = (0..4)
        .map(|k| registry.insert(&alice, &[k], 0).unwrap())
        .collect();
    // Removed by another session of the uid: alice's entries are dead.
    for &h in &held {
        registry.remove(&other, h).unwrap();
    }
    let (handles, _) = grant(&registry, &alice, false, 2);
    assert_eq!(handles.len(), 2, "room made from the dead entries");
    for (k, &h) in handles.iter().enumerate() {
        registry.insert_into(&alice, h, &[k as u8], 0).unwrap();
    }
}

#[test]
fn credit_is_given_back_on_request() {
    let registry = Registry::with_instance(4, LIMITS, 3, 1).unwrap();
    let alice = registry.holder(1000).unwrap();
    let (_, credit) = grant(&registry, &alice, false, 1);
    assert_eq!(registry.give_back_credit(&alice, 100), 100);
    assert_eq!(alice.ahead().1, credit - 100);
    assert_eq!(registry.give_back_credit(&alice, u64::MAX), credit - 100);
    assert_eq!(alice.ahead().1, 0);
    // All of the uid's bytes are its own again.
    registry.insert(&alice, &[0; 64], 0).unwrap();
}

#[test]
fn an_op_that_found_no_object_is_asked_again_only_while_one_may_come() {
    let registry = Registry::with_instance(4, LIMITS, 3, 1).unwrap();
    let alice = registry.holder(1000).unwrap();
    let (handles, _) = grant(&registry, &alice, false, 2);
    let (filled, unused) = (handles[0], handles[1]);
    // Reserved: its insert may come.
    assert!(registry.ask_again(filled));
    // Applied since (by another worker, say): asking again finds it.
    registry.insert_into(&alice, filled, b"made", 0).unwrap();
    assert!(registry.ask_again(filled));
    // Gone: its generation moved on, nothing will come.
    registry.release(&alice, filled).unwrap();
    assert!(!registry.ask_again(filled));
    // Given back unused: the same.
    registry.release(&alice, unused).unwrap();
    assert!(!registry.ask_again(unused));
    // Made up.
    assert!(!registry.ask_again(Handle::new(filled.get() ^ (1 << 20)).unwrap()));
}
