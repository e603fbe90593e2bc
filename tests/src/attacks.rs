//! The attacks of the hostile-client suite, each a loop a process runs until
//! told to stop. The tests run one at a time in the `hreg-attack` process
//! (under another uid where that matters) and assert the daemon's bounds
//! while it runs; the bench runs them all at once and measures an honest
//! client meanwhile. Each attack reproduces one hole of the "nine holes"
//! review; none needs anything but the wire protocol.

use crate::raise_fd_limit;
use crate::raw::{completed, submit_raw, RawConn, RawSession};
use hreg_proto::control::{ControlRequest, Reply};
use hreg_proto::entry::{Sqe, ENTRY_SIZE};
use hreg_proto::ring::ClientCounters;
use hreg_proto::{Opcode, Status};
use rustix::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// One attack.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attack {
    /// Hole 1: rings closed (RING_CLOSE, then the session's end) while the
    /// client keeps their doorbells, which it then rings forever.
    Doorbell,
    /// Hole 2: INSERT then REMOVE in a loop, growing the session's
    /// reference table.
    RemoveLoop,
    /// Hole 3: staging buffers filled on every ring of several sessions and
    /// never used.
    Staging,
    /// Hole 5: LIST requests pipelined without pause, each scanning every
    /// slot for an object that is not there.
    ListFlood,
    /// Hole 6: connections, sessions and rings until the daemon has no
    /// descriptor left.
    Descriptors,
    /// Hole 7: a ring whose CQ is full, with a published submission behind
    /// it, never read.
    DeafRing,
    /// Hole 9: as many sessions as the daemon lets one uid attach, then
    /// thousands of silent connections.
    Hog,
    /// Issue 17, row 3: one borrowed value of its own held for good, then
    /// 64-byte replaces without pause (under epochs, every block retired
    /// after the borrow waited, and every pass walked them all).
    PinChurn,
}

/// Rings a session may open in the attacks that open many.
const RINGS: usize = 64;

/// Silent connections [`Attack::Hog`] holds.
pub const HOG_SILENT: usize = 2000;

impl Attack {
    pub const ALL: [Attack; 8] = [
        Attack::Doorbell,
        Attack::RemoveLoop,
        Attack::Staging,
        Attack::ListFlood,
        Attack::Descriptors,
        Attack::DeafRing,
        Attack::Hog,
        Attack::PinChurn,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Attack::Doorbell => "doorbell",
            Attack::RemoveLoop => "remove-loop",
            Attack::Staging => "staging",
            Attack::ListFlood => "list-flood",
            Attack::Descriptors => "descriptors",
            Attack::DeafRing => "deaf-ring",
            Attack::Hog => "hog",
            Attack::PinChurn => "pin-churn",
        }
    }

    pub fn from_name(name: &str) -> Option<Attack> {
        Attack::ALL.into_iter().find(|a| a.name() == name)
    }

    /// Sets the attack up, calls `ready` with a one-line report of what it
    /// holds, then keeps it going until `stop` is set.
    pub fn run(self, socket: &Path, ready: &mut dyn FnMut(String), stop: &AtomicBool) {
        match self {
            Attack::Doorbell => doorbell(socket, ready, stop),
            Attack::RemoveLoop => remove_loop(socket, ready, stop),
            Attack::Staging => staging(socket, ready, stop),
            Attack::ListFlood => list_flood(socket, ready, stop),
            Attack::Descriptors => descriptors(socket, ready, stop),
            Attack::DeafRing => deaf_ring(socket, ready, stop),
            Attack::Hog => hog(socket, ready, stop),
            Attack::PinChurn => pin_churn(socket, ready, stop),
        }
    }
}

fn pause() {
    std::thread::sleep(Duration::from_millis(1));
}

fn ring_bell(bell: &OwnedFd) {
    let _ = rustix::io::write(bell.as_fd(), &1u64.to_ne_bytes());
}

fn doorbell(socket: &Path, ready: &mut dyn FnMut(String), stop: &AtomicBool) {
    let mut kept = Vec::new();
    let session = RawSession::attach(socket);
    for _ in 0..4 * RINGS {
        let Some((index, _, bell)) = session.try_open_ring_at() else {
            break;
        };
        session.conn.send(&ControlRequest::RingClose { index });
        let _ = session.conn.recv();
        kept.push(bell);
    }
    // And rings that go with their session's end. A closed ring's index is
    // free once its worker lets go of it, a moment after the ACK.
    let (_, _, bell) = (0..100)
        .find_map(|_| {
            session.try_open_ring_at().or_else(|| {
                std::thread::sleep(Duration::from_millis(20));
                None
            })
        })
        .expect("RING_OPENED");
    kept.push(bell);
    drop(session);
    ready(format!("ready bells={}", kept.len()));
    while !stop.load(Ordering::Relaxed) {
        kept.iter().for_each(ring_bell);
        pause();
    }
}

fn remove_loop(socket: &Path, ready: &mut dyn FnMut(String), stop: &AtomicBool) {
    let client = hreg::Client::connect(socket).expect("connect");
    ready("ready".into());
    let value = [7u8; 8];
    while !stop.load(Ordering::Relaxed) {
        let mut inserts: Vec<hreg::Op<'_>> = (0..32)
            .map(|_| hreg::Op::Insert {
                value: &value,
                flags: 0,
            })
            .collect();
        let Ok(results) = client.submit(&mut inserts) else {
            return;
        };
        let mut removes: Vec<hreg::Op<'_>> = results
            .into_iter()
            .filter_map(|r| match r {
                Ok(hreg::Completion::Inserted(h)) => Some(hreg::Op::Remove(h)),
                _ => None,
            })
            .collect();
        if client.submit(&mut removes).is_err() {
            return;
        }
    }
}

fn pin_churn(socket: &Path, ready: &mut dyn FnMut(String), stop: &AtomicBool) {
    let client = hreg::Client::connect(socket).expect("connect");
    let value = [9u8; 64];
    let handles: Vec<hreg::Handle> = (0..64)
        .map(|_| client.insert(&value, 0).expect("insert"))
        .collect();
    let borrowed = client.get_ref(handles[0]).expect("get_ref");
    ready(format!("ready borrowed={}", borrowed.len()));
    let mut round = 0u8;
    while !stop.load(Ordering::Relaxed) {
        round = round.wrapping_add(1);
        let value = [round; 64];
        let mut replaces: Vec<hreg::Op<'_>> = handles
            .iter()
            .map(|&handle| hreg::Op::Replace {
                handle,
                value: &value,
            })
            .collect();
        if client.submit(&mut replaces).is_err() {
            return;
        }
    }
    assert_eq!(&borrowed[..], &[9u8; 64], "a borrowed value changed");
}

fn staging(socket: &Path, ready: &mut dyn FnMut(String), stop: &AtomicBool) {
    let (mut ok, mut quota) = (0usize, 0usize);
    let mut held = Vec::new();
    for _ in 0..4 {
        let session = RawSession::attach(socket);
        let data_size = session.welcome.data_size;
        let value_size = session.welcome.max_value_size;
        let mut bells = Vec::new();
        for _ in 0..RINGS {
            let Some((view, bell)) = session.try_open_ring() else {
                break;
            };
            let mut counters = ClientCounters::default();
            let mut offset = 0u64;
            while offset < value_size {
                let piece = (value_size - offset).min(u64::from(data_size)) as u32;
                let mut sqe = Sqe {
                    opcode: Opcode::StageWrite as u8,
                    data_len: piece,
                    ..Sqe::default()
                };
                sqe.set_inline_u64(offset);
                let cqe = submit_raw(&view, &bell, &mut counters, &[sqe.encode()])[0];
                if cqe.status == Status::Ok as u32 {
                    ok += 1;
                } else {
                    quota += usize::from(cqe.status == Status::Quota as u32);
                    break;
                }
                offset += u64::from(piece);
            }
            bells.push(bell);
        }
        held.push((session, bells));
    }
    ready(format!("ready pieces={ok} quota={quota}"));
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn list_flood(socket: &Path, ready: &mut dyn FnMut(String), stop: &AtomicBool) {
    let session = RawSession::attach(socket);
    let list = ControlRequest::List {
        cursor: 0,
        limit: 512,
        filter: hreg_proto::control::ListFilter {
            detached_only: true,
            owner: None,
        },
    }
    .encode();
    ready("ready".into());
    while !stop.load(Ordering::Relaxed) {
        let mut sent = 0;
        for _ in 0..32 {
            if session.conn.try_send_with_fds(&list, &[]).is_err() {
                return;
            }
            sent += 1;
        }
        for _ in 0..sent {
            if !matches!(session.conn.try_recv(), Ok(Some(_))) {
                return;
            }
        }
    }
}

/// Up to `count` connections that never say HELLO; fewer if connecting
/// fails first (out of descriptors).
pub fn silent_connections(socket: &Path, count: usize) -> Vec<RawConn> {
    (0..count)
        .map_while(|_| RawConn::try_connect(socket).ok())
        .collect()
}

/// Holds `count` silent connections (what `hreg-attack SOCKET silent
/// COUNT` runs): says `ready silent=N` once connected and, once `stop` is
/// set, `held ...` with what the daemon did with them (see [`Held`]).
pub fn hold_silent(socket: &Path, count: usize, say: &mut dyn FnMut(String), stop: &AtomicBool) {
    raise_fd_limit(u64::MAX);
    let silent = silent_connections(socket, count);
    say(format!("ready silent={}", silent.len()));
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(20));
    }
    say(Held::tally(&silent).line());
}

/// What became of silent connections: still open and unanswered, refused
/// with QUOTA (the message of the first quoted), refused otherwise, or
/// closed without a word.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Held {
    pub open: usize,
    pub quota: usize,
    pub other_refusals: usize,
    pub closed: usize,
    pub quota_message: String,
}

impl Held {
    fn tally(conns: &[RawConn]) -> Held {
        let mut held = Held::default();
        for conn in conns {
            match conn.try_recv_now() {
                Ok(Some((Some(Reply::Refused { status, message }), _))) => {
                    if status == Status::Quota as u32 {
                        held.quota += 1;
                        if held.quota_message.is_empty() {
                            held.quota_message = message;
                        }
                    } else {
                        held.other_refusals += 1;
                    }
                }
                Err(rustix::io::Errno::AGAIN) => held.open += 1,
                _ => held.closed += 1,
            }
        }
        held
    }

    /// `held open=.. quota=.. other=.. closed=.. message=...` (the message
    /// last, as it has spaces).
    pub fn line(&self) -> String {
        format!(
            "held open={} quota={} other={} closed={} message={}",
            self.open, self.quota, self.other_refusals, self.closed, self.quota_message
        )
    }

    /// Reads a [`Held::line`] back.
    pub fn parse(line: &str) -> Option<Held> {
        let rest = line.strip_prefix("held ")?;
        let (counts, message) = rest.split_once(" message=")?;
        let mut numbers = counts.split(' ').map(|field| {
            let (_, n) = field.split_once('=')?;
            n.parse::<usize>().ok()
        });
        let mut next = || numbers.next().flatten();
        Some(Held {
            open: next()?,
            quota: next()?,
            other_refusals: next()?,
            closed: next()?,
            quota_message: message.to_string(),
        })
    }
}

fn descriptors(socket: &Path, ready: &mut dyn FnMut(String), stop: &AtomicBool) {
    raise_fd_limit(u64::MAX);
    let mut sessions = Vec::new();
    let mut rings = 0usize;
    'sessions: for _ in 0..10_000 {
        let Ok(session) = RawSession::try_attach(socket) else {
            break;
        };
        let mut bells = Vec::new();
        for _ in 0..RINGS {
            match session.try_open_ring() {
                Some((_, bell)) => bells.push(bell),
                None => {
                    rings += bells.len();
                    sessions.push((session, bells));
                    break 'sessions;
                }
            }
        }
        rings += bells.len();
        sessions.push((session, bells));
    }
    let silent = silent_connections(socket, 10_000);
    ready(format!(
        "ready sessions={} rings={rings} silent={}",
        sessions.len(),
        silent.len()
    ));
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn deaf_ring(socket: &Path, ready: &mut dyn FnMut(String), stop: &AtomicBool) {
    let session = RawSession::attach(socket);
    let (view, bell) = session.open_ring();
    let entries = view.entries();
    let get = |counter: u32| -> [u8; ENTRY_SIZE] {
        Sqe {
            user_data: u64::from(counter),
            opcode: Opcode::Get as u8,
            handle: 1,
            ..Sqe::default()
        }
        .encode()
    };
    let mut counters = ClientCounters::default();
    // A full SQ, answered into the CQ, which then stays full...
    for counter in 0..entries {
        view.push(&mut counters, &get(counter));
    }
    view.flush(&counters);
    ring_bell(&bell);
    while !completed(&view, entries) {
        pause();
    }
    // ...and more published behind it, never to be served.
    for counter in entries..2 * entries {
        view.push(&mut counters, &get(counter));
    }
    view.flush(&counters);
    ring_bell(&bell);
    ready("ready".into());
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn hog(socket: &Path, ready: &mut dyn FnMut(String), stop: &AtomicBool) {
    raise_fd_limit(u64::MAX);
    let mut sessions = Vec::new();
    let refused = loop {
        match RawSession::try_attach(socket) {
            Ok(session) => sessions.push(session),
            Err(reply) => break format!("{reply:?}"),
        }
        if sessions.len() >= 100_000 {
            break "none".into();
        }
    };
    let silent = silent_connections(socket, HOG_SILENT);
    ready(format!(
        "ready sessions={} silent={} refused={refused}",
        sessions.len(),
        silent.len()
    ));
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// How often each ring of a busy [`hold_rings`] sends a request.
pub const BUSY_PERIOD: Duration = Duration::from_millis(20);

/// One ring [`hold_rings`] keeps, and its positions.
struct HeldRing {
    session: usize,
    index: u32,
    bell: OwnedFd,
    ready_at: Option<usize>,
    counters: ClientCounters,
}

/// Holds up to `count` rings over as many sessions as it takes (64 rings
/// each by default), as many as the daemon lets this uid open; says `ready
/// N` with how many it got. Then, until `stop`, while `busy` is set, each
/// ring sends one cheap request (a GET of a handle that names nothing)
/// every [`BUSY_PERIOD`], the way libhreg does it (a parked ring is named
/// in its ready word before the doorbell rings), from this one thread: the
/// daemon sees what `count / 64` processes of 64 threads would make it see.
pub fn hold_rings(
    socket: &Path,
    count: usize,
    busy: &AtomicBool,
    say: &mut dyn FnMut(String),
    stop: &AtomicBool,
) {
    raise_fd_limit(u64::MAX);
    let mut sessions: Vec<RawSession> = Vec::new();
    let mut held: Vec<HeldRing> = Vec::new();
    'attach: while held.len() < count {
        let Ok(session) = RawSession::try_attach(socket) else {
            break;
        };
        sessions.push(session);
        let at = sessions.len() - 1;
        let before = held.len();
        while held.len() < count {
            let Some((index, _, bell, ready_at)) = sessions[at].try_open_ring_ready() else {
                if held.len() == before {
                    break 'attach;
                }
                break;
            };
            held.push(HeldRing {
                session: at,
                index,
                bell,
                ready_at,
                counters: ClientCounters::default(),
            });
        }
    }
    say(format!("ready {}", held.len()));
    let request = Sqe {
        opcode: Opcode::Get as u8,
        handle: 1,
        ..Sqe::default()
    }
    .encode();
    while !stop.load(Ordering::Relaxed) {
        let tick = std::time::Instant::now();
        if busy.load(Ordering::Relaxed) {
            for ring in &mut held {
                let session = &sessions[ring.session];
                let Some(view) = session.ring(ring.index) else {
                    continue;
                };
                while view.pop(&mut ring.counters).is_some() {}
                view.release(&ring.counters);
                if ring.counters.in_flight() > 0 {
                    continue;
                }
                view.push(&mut ring.counters, &request);
                if view.flush(&ring.counters) {
                    if let Some(word) = ring.ready_at.and_then(|at| session.ready_word(at)) {
                        word.mark(ring.index);
                    }
                    ring_bell(&ring.bell);
                }
            }
        }
        std::thread::sleep(BUSY_PERIOD.saturating_sub(tick.elapsed()));
    }
}

/// Issue 18, row 14: 64 rings of one session, idle, whose doorbells (and
/// ready word, naming each ring) the client rings in a loop. Says `ready
/// rings=N`.
pub fn ring_own_doorbells(socket: &Path, say: &mut dyn FnMut(String), stop: &AtomicBool) {
    let session = RawSession::attach(socket);
    let mut rings = Vec::new();
    while let Some((index, _, bell, ready_at)) = session.try_open_ring_ready() {
        rings.push((index, bell, ready_at));
    }
    // Let every ring park first.
    std::thread::sleep(Duration::from_millis(50));
    say(format!("ready rings={}", rings.len()));
    // One ring every 50 µs or so: each wakes a worker that went back to
    // sleep meanwhile, the most wakes for the least of the attacker's CPU.
    while !stop.load(Ordering::Relaxed) {
        for (index, bell, ready_at) in &rings {
            if let Some(word) = ready_at.and_then(|at| session.ready_word(at)) {
                word.mark(*index);
            }
            ring_bell(bell);
            std::thread::sleep(Duration::from_micros(50));
        }
    }
}

/// Issue 18, row 15: `conns` sessions each send `requests` MAP_DOMAIN
/// requests (each answered with descriptors) and never read a reply. Says
/// `ready sent=N` with the requests that went out.
pub fn unread_descriptors(
    socket: &Path,
    conns: usize,
    requests: usize,
    say: &mut dyn FnMut(String),
    stop: &AtomicBool,
) {
    raise_fd_limit(u64::MAX);
    let map = ControlRequest::MapDomain {
        domain: u32::from(hreg_proto::table::SHARED_DOMAIN),
        slot_chunk: 0,
        heap_chunk: 0,
    }
    .encode();
    let mut sessions = Vec::new();
    let mut sent = 0;
    for _ in 0..conns {
        let Ok(session) = RawSession::try_attach(socket) else {
            break;
        };
        for _ in 0..requests {
            // Never blocking: a daemon that stops reading us is the point.
            let flags = rustix::net::SendFlags::NOSIGNAL | rustix::net::SendFlags::DONTWAIT;
            if rustix::net::send(&session.conn.fd, &map, flags).is_err() {
                break;
            }
            sent += 1;
        }
        sessions.push(session);
    }
    say(format!("ready sent={sent}"));
    while !stop.load(Ordering::Relaxed) {
        pause();
    }
}

/// Issue 18, row 8: `sessions` sessions (and `idle` connections that say
/// nothing) of one uid, each session asking SESSIONS over and over,
/// pipelined, never waiting. Says `ready sessions=N idle=M`.
pub fn sessions_flood(
    socket: &Path,
    sessions: usize,
    idle: usize,
    say: &mut dyn FnMut(String),
    stop: &AtomicBool,
) {
    raise_fd_limit(u64::MAX);
    let attached: Vec<RawSession> = (0..sessions)
        .map_while(|_| RawSession::try_attach(socket).ok())
        .collect();
    let silent = silent_connections(socket, idle);
    say(format!(
        "ready sessions={} idle={}",
        attached.len(),
        silent.len()
    ));
    let ask = ControlRequest::Sessions { cursor: 0 }.encode();
    while !stop.load(Ordering::Relaxed) {
        for session in &attached {
            // Read what came (never blocking), then ask again.
            while matches!(session.conn.try_recv_now(), Ok(Some(_))) {}
            let flags = rustix::net::SendFlags::NOSIGNAL | rustix::net::SendFlags::DONTWAIT;
            let _ = rustix::net::send(&session.conn.fd, &ask, flags);
        }
        pause();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_held_line_reads_back() {
        let held = Held {
            open: 4128,
            quota: 872,
            other_refusals: 3,
            closed: 1,
            quota_message: "uid 65534 has more than 4096 connections waiting".into(),
        };
        assert_eq!(Held::parse(&held.line()), Some(held));
        assert_eq!(Held::parse("ready silent=5"), None);
        assert_eq!(
            Held::parse("held open=x quota=1 other=0 closed=0 message="),
            None
        );
    }
}
