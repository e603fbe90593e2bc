//! The operator's requests on the control socket: STATS, SESSIONS, LIST and
//! USAGE, as pure functions of the registry and the attached sessions, so
//! they are tested without a socket. Who may see what: root sees every
//! session and object. Any other uid sees its own sessions, its own
//! objects and what it is charged for, and figures of objects counted over
//! what it may read (its private objects and every SHARED one, which anyone
//! may enumerate from the shared slot table): nothing it learns depends on
//! another uid's private objects. The figures that stay global count
//! sessions, rings and requests, never objects or bytes.

use crate::session::Session;
use hreg_proto::control::{
    Reply, SessionInfo, StatsReply, UidUsage, UsageReply, WorkerUsage, MAX_PAGE,
};
use hreg_proto::Status;
use hreg_registry::{ListFilter, Registry, ROOT};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Requests per second, measured over the last whole second or more.
#[derive(Default)]
pub struct OpsRate {
    since: Option<(Instant, u64)>,
    per_sec: u64,
}

impl OpsRate {
    /// Takes a sample of the ops counter.
    pub fn sample(&mut self, ops: u64) {
        let now = Instant::now();
        match self.since {
            Some((at, before)) if now.duration_since(at) >= Duration::from_secs(1) => {
                let secs = now.duration_since(at).as_secs_f64();
                self.per_sec = (ops.saturating_sub(before) as f64 / secs) as u64;
                self.since = Some((now, ops));
            }
            Some(_) => {}
            None => self.since = Some((now, ops)),
        }
    }

    pub fn per_sec(&self) -> u64 {
        self.per_sec
    }
}

/// The registry's figures (STATS): objects and bytes over what the caller
/// may read (everything for root); sessions and requests of all uids.
pub fn stats(registry: &Registry, sessions: u64, ops: u64, caller_uid: u32) -> StatsReply {
    let usage = registry.usage_visible_to(caller_uid);
    StatsReply {
        objects: usage.objects,
        value_bytes: usage.value_bytes,
        sessions,
        ops,
    }
}

/// Attached sessions with ids from `cursor` on, from `index` (the
/// caller's view: every session for root, the caller's own uid's
/// otherwise); one page, found without looking at the rest.
pub fn sessions_page(index: &BTreeMap<u64, Arc<Session>>, cursor: u64) -> Reply {
    let page = MAX_PAGE as usize;
    let mut visible = index.range(cursor..).map(|(_, s)| s);
    let sessions = visible
        .by_ref()
        .take(page)
        .map(|s| SessionInfo {
            id: s.id,
            pid: s.peer.pid as u32,
            uid: s.peer.uid,
            gid: s.peer.gid,
            rings: s.open_ring_count() as u32,
            references: s.holder.reference_count(),
            name: s.name.clone(),
        })
        .collect();
    let next = visible.next().map_or(0, |s| s.id);
    Reply::Sessions { sessions, next }
}

/// A page of objects; only root may look at other users' objects.
pub fn objects_page(
    registry: &Registry,
    cursor: u64,
    limit: u32,
    filter: ListFilter,
    caller_uid: u32,
) -> Reply {
    let owner = match filter.owner {
        Some(uid) if caller_uid != ROOT && uid != caller_uid => {
            return Reply::Error {
                status: Status::Denied as u32,
                message: "only root may list other users' objects".into(),
            };
        }
        None if caller_uid != ROOT => Some(caller_uid),
        owner => owner,
    };
    let limit = if limit == 0 {
        MAX_PAGE
    } else {
        limit.min(MAX_PAGE)
    };
    let filter = ListFilter { owner, ..filter };
    let (objects, next) = registry.list(cursor, limit as usize, filter);
    Reply::Objects { objects, next }
}

/// Rings per worker, from the worker each open ring of an attached session
/// was given to (`assigned`: worker indexes, one per ring).
pub fn rings_per_worker(assigned: impl Iterator<Item = usize>, workers: usize) -> Vec<u32> {
    let mut rings = vec![0u32; workers];
    for worker in assigned {
        if let Some(count) = rings.get_mut(worker) {
            *count = count.saturating_add(1);
        }
    }
    rings
}

/// Occupancy (over what the caller may read), usage per uid (only the
/// caller's own unless root), the workers' loads, the limits in force, and
/// for root the bytes waiting for reclamation.
pub fn usage(
    registry: &Registry,
    uptime: Duration,
    ops_per_sec: u64,
    workers: Vec<WorkerUsage>,
    caller_uid: u32,
) -> UsageReply {
    let limits = registry.limits();
    UsageReply {
        uptime_secs: uptime.as_secs(),
        ops_per_sec,
        max_objects: limits.max_objects,
        max_bytes: limits.max_bytes,
        uid_max_objects: limits.uid_max_objects,
        uid_max_bytes: limits.uid_max_bytes,
        uid_max_references: limits.uid_max_references,
        shards: registry.shard_occupancy_visible_to(caller_uid),
        uids: registry
            .usage_by_uid()
            .into_iter()
            .filter(|&(uid, _)| caller_uid == ROOT || uid == caller_uid)
            .map(|(uid, usage)| UidUsage {
                uid,
                objects: usage.objects,
                value_bytes: usage.value_bytes,
                references: usage.references,
                reserved: usage.reserved,
                credit: usage.credit,
            })
            .collect(),
        workers,
        // Blocks of every domain wait together: another uid's removed
        // private value would show in it.
        reclaim_pending: if caller_uid == ROOT {
            registry.reclaim_pending()
        } else {
            0
        },
        ..UsageReply::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rings_are_counted_per_worker() {
        assert_eq!(rings_per_worker([1, 0, 1].into_iter(), 3), [1, 2, 0]);
        assert_eq!(rings_per_worker(std::iter::empty(), 2), [0, 0]);
        // An index past the workers (none is made) counts nowhere.
        assert_eq!(rings_per_worker([5].into_iter(), 1), [0]);
    }
}
