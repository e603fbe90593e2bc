//! The operator's requests on the control socket: STATS, SESSIONS, LIST and
//! USAGE, as pure functions of the registry and the attached sessions, so
//! they are tested without a socket. Who may see what: root sees every
//! session and object; any other uid only its own.

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

/// The registry's figures (STATS).
pub fn stats(registry: &Registry, sessions: u64, ops: u64) -> StatsReply {
    let usage = registry.usage();
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

/// Occupancy, usage per uid (only the caller's own unless root), the
/// workers' loads and the limits in force.
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
        shards: registry.shard_occupancy(),
        uids: registry
            .usage_by_uid()
            .into_iter()
            .filter(|&(uid, _)| caller_uid == ROOT || uid == caller_uid)
            .map(|(uid, usage)| UidUsage {
                uid,
                objects: usage.objects,
                value_bytes: usage.value_bytes,
            })
            .collect(),
        workers,
        reclaim_pending: registry.reclaim_pending(),
        ..UsageReply::default()
    }
}
