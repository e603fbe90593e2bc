//! Which connections the control thread reads, and in what order: fair
//! shares per uid, so that one user cannot keep others from attaching.
//!
//! A connection's uid is known the moment it is accepted (`SO_PEERCRED`).
//! Each uid may have [`WAITING_SHARE`] connections *waiting* for their
//! HELLO at once (read, with a deadline); further ones are *parked*: kept,
//! unread, and made waiting in the order they came as the uid's earlier ones
//! finish (attach, or fail). Past [`PARKED_CAP`] parked connections the
//! uid's oldest parked one is refused. Root is exempt from the shares: its
//! connections wait at once. Sessions are counted per uid for
//! `uid_max_sessions`.
//!
//! This module keeps only the bookkeeping (keys and counts); the control
//! thread owns the sockets and does what the answers say.

use hreg_registry::ROOT;
use std::collections::{HashMap, VecDeque};

/// Connections of one uid read at once before they say HELLO.
pub const WAITING_SHARE: usize = 32;

/// Connections of one uid kept parked, at most.
pub const PARKED_CAP: usize = 4096;

/// What to do with a connection just accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arrival {
    /// Read it now; it must say HELLO in time.
    Wait,
    /// Keep it unread for now.
    Park,
    /// Keep it unread, and refuse the uid's oldest parked connection
    /// (this key), which leaves the queue.
    ParkEvicting(u64),
}

#[derive(Debug, Default)]
struct UidConns {
    waiting: usize,
    parked: VecDeque<u64>,
    sessions: usize,
}

impl UidConns {
    fn is_empty(&self) -> bool {
        self.waiting == 0 && self.parked.is_empty() && self.sessions == 0
    }
}

/// Per-uid counts of waiting, parked and attached connections.
#[derive(Debug, Default)]
pub struct Admission {
    uids: HashMap<u32, UidConns>,
}

impl Admission {
    /// A connection `key` of `uid` was accepted.
    pub fn arrive(&mut self, key: u64, uid: u32) -> Arrival {
        let conns = self.uids.entry(uid).or_default();
        if uid == ROOT || (conns.waiting < WAITING_SHARE && conns.parked.is_empty()) {
            conns.waiting += 1;
            return Arrival::Wait;
        }
        conns.parked.push_back(key);
        if conns.parked.len() > PARKED_CAP {
            let oldest = conns.parked.pop_front().expect("over the cap, not empty");
            return Arrival::ParkEvicting(oldest);
        }
        Arrival::Park
    }

    /// A waiting connection of `uid` is done waiting: it attached
    /// (`attached`) or went away. Returns the parked connection that waits
    /// in its place, if any.
    pub fn done_waiting(&mut self, uid: u32, attached: bool) -> Option<u64> {
        let conns = self.uids.entry(uid).or_default();
        conns.waiting = conns.waiting.saturating_sub(1);
        if attached {
            conns.sessions += 1;
        }
        let next = if conns.waiting < WAITING_SHARE {
            conns.parked.pop_front()
        } else {
            None
        };
        if next.is_some() {
            conns.waiting += 1;
        }
        self.forget_if_idle(uid);
        next
    }

    /// A session of `uid` ended.
    pub fn detached(&mut self, uid: u32) {
        if let Some(conns) = self.uids.get_mut(&uid) {
            conns.sessions = conns.sessions.saturating_sub(1);
        }
        self.forget_if_idle(uid);
    }

    /// Forgets a parked connection that is closed without being read (at
    /// shutdown). Returns whether it was parked.
    pub fn unpark(&mut self, key: u64, uid: u32) -> bool {
        let Some(conns) = self.uids.get_mut(&uid) else {
            return false;
        };
        let found = conns.parked.iter().position(|&k| k == key);
        if let Some(at) = found {
            conns.parked.remove(at);
        }
        self.forget_if_idle(uid);
        found.is_some()
    }

    /// Sessions `uid` has attached.
    pub fn sessions(&self, uid: u32) -> usize {
        self.uids.get(&uid).map_or(0, |c| c.sessions)
    }

    /// Connections waiting for HELLO and parked, over all uids.
    pub fn pending(&self) -> (usize, usize) {
        self.uids
            .values()
            .fold((0, 0), |(w, p), c| (w + c.waiting, p + c.parked.len()))
    }

    fn forget_if_idle(&mut self, uid: u32) {
        if self.uids.get(&uid).is_some_and(UidConns::is_empty) {
            self.uids.remove(&uid);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_uid_waits_up_to_its_share_then_parks_in_order() {
        let mut a = Admission::default();
        for key in 0..WAITING_SHARE as u64 {
            assert_eq!(a.arrive(key, 1000), Arrival::Wait);
        }
        assert_eq!(a.arrive(100, 1000), Arrival::Park);
        assert_eq!(a.arrive(101, 1000), Arrival::Park);
        // Another uid is not held up.
        assert_eq!(a.arrive(200, 1001), Arrival::Wait);
        assert_eq!(a.pending(), (WAITING_SHARE + 1, 2));
        // Parked connections go in the order they came.
        assert_eq!(a.done_waiting(1000, true), Some(100));
        assert_eq!(a.done_waiting(1000, false), Some(101));
        assert_eq!(a.done_waiting(1000, true), None);
        assert_eq!(a.sessions(1000), 2);
        assert_eq!(a.pending(), (WAITING_SHARE - 1 + 1, 0));
    }

    #[test]
    fn a_newcomer_queues_behind_parked_ones() {
        let mut a = Admission::default();
        for key in 0..=WAITING_SHARE as u64 {
            a.arrive(key, 7);
        }
        // One waiting slot frees with nobody parked behind... but one is.
        assert_eq!(a.done_waiting(7, false), Some(WAITING_SHARE as u64));
        // With a slot free and nobody parked, a newcomer waits at once.
        assert_eq!(a.done_waiting(7, false), None);
        assert_eq!(a.arrive(999, 7), Arrival::Wait);
    }

    #[test]
    fn past_the_cap_the_oldest_parked_is_evicted() {
        let mut a = Admission::default();
        for key in 0..WAITING_SHARE as u64 {
            a.arrive(key, 5);
        }
        let first_parked = 1000;
        for key in first_parked..first_parked + PARKED_CAP as u64 {
            assert_eq!(a.arrive(key, 5), Arrival::Park);
        }
        assert_eq!(a.arrive(50_000, 5), Arrival::ParkEvicting(first_parked));
        assert_eq!(a.pending(), (WAITING_SHARE, PARKED_CAP));
        assert!(a.unpark(50_000, 5));
        assert!(!a.unpark(first_parked, 5));
    }

    #[test]
    fn root_is_exempt_and_sessions_are_counted() {
        let mut a = Admission::default();
        for key in 0..10 * WAITING_SHARE as u64 {
            assert_eq!(a.arrive(key, 0), Arrival::Wait);
        }
        for _ in 0..10 * WAITING_SHARE {
            assert_eq!(a.done_waiting(0, true), None);
        }
        assert_eq!(a.sessions(0), 10 * WAITING_SHARE);
        for _ in 0..10 * WAITING_SHARE {
            a.detached(0);
        }
        assert_eq!(a.sessions(0), 0);
        assert!(a.uids.is_empty());
    }
}
