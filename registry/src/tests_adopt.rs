//! Adopting a kept state: what a daemon killed at a bad moment leaves, and
//! what the next one makes of it.

use super::*;
use hreg_proto::table::slot_place;

fn value(len: usize, salt: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(salt))
        .collect()
}

struct Dir(std::path::PathBuf);

impl Dir {
    fn new(name: &str) -> Dir {
        let dir = std::env::temp_dir().join(format!("hreg-adopt-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        Dir(dir)
    }

    fn store(&self) -> Arc<DirStore> {
        Arc::new(DirStore::open(&self.0).unwrap())
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn read(registry: &Registry, as_holder: &Holder, h: Handle) -> Result<Vec<u8>, Status> {
    registry.get_with(as_holder, h, <[u8]>::to_vec)
}

#[test]
fn a_killed_daemons_state_is_adopted_whole() {
    let dir = Dir::new("whole");
    let limits = Limits {
        max_value_size: 1 << 20,
        ..Limits::default()
    };
    let mut expected: Vec<(Handle, Vec<u8>)> = Vec::new();
    let mut bobs = Vec::new();
    let (instance, removed, torn, interrupted_old, unreferenced, ended);
    {
        let store = dir.store();
        let registry = Registry::create(store.clone(), 4, limits).unwrap();
        instance = registry.instance();
        let alice = registry.holder(1000).unwrap();
        let bob = registry.holder(1001).unwrap();
        let carol = registry.holder(1002).unwrap();
        for (i, len) in [0usize, 10, 48, 49, 300, 5000, 70_000, 300_000]
            .into_iter()
            .enumerate()
        {
            let v = value(len, i as u8);
            expected.push((registry.insert(&alice, &v, 0).unwrap(), v));
            let v = value(len, 100 + i as u8);
            let h = registry.insert(&bob, &v, flags::SHARED).unwrap();
            bobs.push(h);
            expected.push((h, v));
            let v = value(len, 200 + i as u8);
            expected.push((registry.insert(&carol, &v, flags::DETACHED).unwrap(), v));
        }
        // Replaced values leave gaps; a removed object is STALE for good.
        let owners = [&alice, &bob, &carol];
        for i in (0..expected.len()).step_by(4) {
            let (h, v) = &mut expected[i];
            *v = value(v.len() / 2 + 7, 77);
            registry.replace(owners[i % 3], *h, v).unwrap();
        }
        let (h, _) = expected.remove(1);
        registry.remove(&bob, h).unwrap();
        removed = h;
        // Alice also holds one of Bob's shared objects.
        let shared = expected[3].0;
        registry.retain(&alice, shared).unwrap();
        // A session that ended: its objects are gone.
        let gone = registry.holder(1003).unwrap();
        ended = registry
            .insert(&gone, b"ended with its session", 0)
            .unwrap();
        registry.release_all(&gone);
        // An object whose only reference was being released when the
        // daemon died: its record says no reference, the slot is live.
        unreferenced = registry.insert(&carol, b"nobody holds me", 0).unwrap();
        lock(&carol.refs).forget(unreferenced.get());
        // A write cut short, with its journal entry; and a slot left odd
        // with no journal entry (dropped).
        let (h, old) = expected[2].clone();
        interrupted_old = (h, old);
        let parts = HandleParts::decode(h.get());
        let domain = registry.domain(parts.domain).unwrap();
        let (view, _) = domain.slot(parts.slot).unwrap();
        domain.journal(parts.slot, &view.current());
        scribble_mid_write(domain, parts.slot);
        let (t, _) = expected.remove(5);
        let parts = HandleParts::decode(t.get());
        let domain = registry.domain(parts.domain).unwrap();
        scribble_mid_write(domain, parts.slot);
        torn = t;
        // The daemon dies here: nothing is released, nothing is cleaned.
    }
    let store = dir.store();
    let pieces = store.list().unwrap();
    let survey = Registry::survey(store.list().unwrap()).unwrap();
    let adopted = Registry::adopt(store.clone(), pieces, limits).unwrap();
    let report = adopted.report.clone();
    assert_eq!(survey.rolled_back, 1);
    assert_eq!(survey.dropped_torn, 1);
    assert_eq!(report.instance, instance);
    assert!(!report.clean);
    assert_eq!(
        (
            report.rolled_back,
            report.dropped_torn,
            report.dropped_unreferenced
        ),
        (1, 1, 1),
        "{report}"
    );
    assert_eq!(report.sessions, 3, "{report}");
    let registry = adopted.registry;
    let root = registry.holder(ROOT).unwrap();
    for (h, v) in &expected {
        assert_eq!(read(&registry, &root, *h).as_deref(), Ok(&v[..]), "{h:?}");
    }
    let (h, old) = &interrupted_old;
    assert_eq!(
        read(&registry, &root, *h).as_deref(),
        Ok(&old[..]),
        "rolled back"
    );
    for gone in [removed, torn, unreferenced, ended] {
        assert_eq!(read(&registry, &root, gone), Err(Status::Stale), "{gone:?}");
    }
    assert_eq!(registry.usage().objects, expected.len() as u64);
    let bytes: u64 = expected.iter().map(|(_, v)| v.len() as u64).sum();
    assert_eq!(registry.usage().value_bytes, bytes);
    // The sessions come back with their references and uids.
    let mut sessions = adopted.sessions;
    sessions.sort_by_key(|s| s.key().uid);
    let uids: Vec<u32> = sessions.iter().map(|s| s.key().uid).collect();
    assert_eq!(uids, [1000, 1001, 1002]);
    // Eight inserts and a retain, less the object dropped mid-write.
    assert_eq!(sessions[0].holder.reference_count(), 8);
    // New objects get new handles; ids go on.
    let new = registry.insert(&sessions[0].holder, b"after", 0).unwrap();
    assert!(expected.iter().all(|(h, _)| *h != new));
    assert!(registry.holder(5).unwrap().id() > sessions.iter().map(|s| s.key().id).max().unwrap());
    // Nothing freed is reused while kept sessions are out; giving Bob up
    // drops what only he held (his private ones are SHARED here, none
    // DETACHED), and Alice's reference keeps one of his alive.
    let bob = sessions.remove(1);
    registry.give_up(bob);
    let left = bobs
        .iter()
        .filter(|h| read(&registry, &root, **h).is_ok())
        .count();
    assert_eq!(left, 1, "only the one Alice holds");
    for session in &sessions {
        registry.resumed(&session.holder);
    }
    let pass = registry.reclaim();
    assert!(
        pass.blocks > 0,
        "gaps free once every kept session is back: {pass:?}"
    );
}

/// Leaves slot `index` as a daemon killed mid-write does: sequence odd,
/// other words half changed.
fn scribble_mid_write(domain: &Domain, index: u32) {
    let (chunk, at) = slot_place(index);
    let map = domain.slot_chunks().nth(chunk).unwrap().mapping();
    let offset = at * hreg_proto::table::SLOT_SIZE;
    let mut head = [0u8; 8];
    assert!(map.load(offset, &mut head));
    let head = u64::from_le_bytes(head) + 1;
    assert!(map.store(offset, &head.to_le_bytes()));
    assert!(map.store(offset + 8, &[0xee; 24]));
}

#[test]
fn the_quarantine_holds_only_what_the_adopted_heap_held() {
    const LEN: usize = 256 << 10;
    let dir = Dir::new("quarantine");
    let limits = Limits {
        max_value_size: 1 << 20,
        max_bytes: 2 << 20,
        ..Limits::default()
    };
    let handles: Vec<Handle>;
    {
        let registry = Registry::create(dir.store(), 4, limits).unwrap();
        let owner = registry.holder(1000).unwrap();
        handles = (0..4u8)
            .map(|i| {
                registry
                    .insert(&owner, &value(LEN, i), flags::SHARED)
                    .unwrap()
            })
            .collect();
        // A replaced value leaves a gap.
        registry
            .replace(&owner, handles[0], &value(LEN, 9))
            .unwrap();
    }
    let store = dir.store();
    let adopted = Registry::adopt(store.clone(), store.list().unwrap(), limits).unwrap();
    let registry = adopted.registry;
    let mut kept = adopted.sessions;
    assert_eq!(kept.len(), 1);
    let owner = &kept[0].holder;
    // While the kept session is out, the values live at adoption that are
    // replaced wait (its client may have borrowed them); what is made after
    // the restart is replaced and reused as usual, and nobody's inserts
    // are refused for what waits.
    for round in 0..10u8 {
        for &h in &handles {
            registry.replace(owner, h, &value(LEN, round)).unwrap();
        }
        registry.reclaim();
    }
    let quarantined = registry.reclaim.quarantined();
    assert!(
        (4 * LEN as u64..=6 * LEN as u64).contains(&quarantined),
        "{quarantined} bytes quarantined: the four adopted values and the gap"
    );
    let other = registry.holder(1001).unwrap();
    registry.insert(&other, &value(LEN, 1), 0).unwrap();
    // Back, and every block goes.
    registry.resumed(owner);
    registry.reclaim();
    assert_eq!(registry.reclaim.quarantined(), 0);
    assert_eq!(registry.reclaim_pending(), 0);
    drop(kept.pop());
}
