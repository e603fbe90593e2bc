//! Ring workers: threads that serve the rings assigned to them.
//!
//! A worker's work follows the rings that have work, never the rings that
//! exist. Each ring it serves is *active* (in its uid's queue, polled) or
//! *parked* (NEED_WAKEUP set, never looked at). A ring with nothing to do
//! for [`SPIN`] is parked: NEED_WAKEUP, a fence, and a last look at its SQ
//! (see `hreg_proto::handoff`). A client that finds its ring parked after
//! publishing names it in its session's ready word for this worker and rings
//! the session's doorbell for this worker (one eventfd per session and
//! worker, in this worker's `epoll` set, keyed by the session). The worker
//! takes the ready word and activates the rings it names; a wake that names
//! none of the session's rings costs a look at that session's parked rings
//! here (a client that knows no ready word still gets served) and no spin.
//! While busy, the worker looks at `epoll` without blocking every
//! [`EVENTS_EVERY`]; with nothing active, it blocks there.
//!
//! Active rings are served in deficit round robin over uids ([`Share`]):
//! each turn a uid gets a quantum of cost, which counts ring visits and
//! entries served, spread round robin over its active rings; a uid with no
//! active ring leaves the round, so its share goes to the others. A uid's
//! share of a busy worker is the same with one ring or thousands. Root is in
//! the round like everyone.
//!
//! A uid's share is one across all workers, not one per worker ([`Spread`]):
//! as in Linux CFS group scheduling, where a group's weight is split over
//! the CPUs it runs on, a uid with active rings on `k` workers gets
//! `1/k` of the quantum on each of them while other uids wait there. So a
//! uid whose rings keep both workers busy does not take half of the worker
//! that another uid's single ring needs on top of the whole other worker.
//! A uid alone in a worker's round still gets the whole worker (the split
//! only weighs uids against each other; no worker idles while it has work).
//!
//! A ring whose completion queue is full is skipped, so one slow client
//! cannot stall the others; a ring whose counters make no sense closes its
//! session.

use crate::doorbell::Doorbell;
use crate::ratelimit::warn_limited;
use crate::session::Session;
use crossbeam_utils::CachePadded;
use hreg_proto::entry::{
    cqe_flags, Cqe, RingRequest, Sqe, ValueSource, ENTRY_SIZE, INLINE_CAPACITY,
};
use hreg_proto::handle::Handle;
use hreg_proto::locks::lock;
use hreg_proto::ring::{ready_bit, Answer, ServerRing, SharedRing, Wake};
use hreg_proto::sync::AtomicU32;
use hreg_proto::{Limit, Status};
use hreg_registry::{Holder, IdHashMap, Refusal, Registry};
use rustix::event::epoll;
use rustix::fd::OwnedFd;
use std::collections::VecDeque;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU32 as StdAtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a ring stays active after its last piece of work.
const SPIN: Duration = Duration::from_micros(50);

/// How often a busy worker looks for wakes of parked rings.
const EVENTS_EVERY: Duration = Duration::from_micros(20);

/// Empty rounds between yields while spinning.
const YIELD_EVERY: u32 = 256;

/// Empty rounds between reads of the clock while spinning (a clock read
/// costs more than a poll of an idle ring).
const CLOCK_EVERY: u32 = 32;

/// epoll key of the worker's own command doorbell (session ids key the
/// sessions' doorbells).
const COMMAND_KEY: u64 = u64::MAX;

/// A uid's quantum per turn when other uids wait: small, so that a client
/// with one request in flight waits for a few of another uid's requests at
/// most. It is split over the workers where the uid has active rings
/// ([`shared_quantum`]).
pub(crate) const QUANTUM: i64 = 4;

/// A uid's quantum per turn when it is alone in the round (batches are
/// served in long runs; a newcomer is seen at the next look at `epoll`).
pub(crate) const QUANTUM_ALONE: i64 = 64;

/// Wakes in a row that find no new entry before a session's doorbell is
/// muted.
const USELESS_WAKES: u32 = 4;

/// The longest a session's doorbell stays muted.
const MAX_MUTE: Duration = Duration::from_millis(16);

/// What a uid may owe (wakes of its sessions charged between its turns)
/// before the rest is forgiven.
const MAX_DEBT: i64 = 64;

/// The side of a worker that other threads see.
pub struct Worker {
    /// Which ready word of a session's ready area is this worker's.
    index: usize,
    /// Reclamation passes run on workers, after the requests that retire
    /// blocks.
    registry: Arc<Registry>,
    commands: Mutex<Vec<Command>>,
    /// Set after a command is queued, so the polling loop only takes the
    /// lock when there is something to take.
    has_commands: AtomicBool,
    bell: Doorbell,
    rings: AtomicUsize,
    ops: CachePadded<AtomicU64>,
    stop: AtomicBool,
    /// On how many workers each uid has active rings (shared by all the
    /// daemon's workers).
    spread: Arc<Spread>,
}

enum Command {
    Serve(Box<ServedRing>, Arc<Doorbell>, usize),
    Close { session: u64, index: u32 },
    CloseSession(u64),
}

impl Worker {
    /// Worker number `index` (its ready word in every session's ready area),
    /// the only one to weigh uids.
    pub fn new(registry: Arc<Registry>, index: usize) -> io::Result<Worker> {
        Worker::sharing(registry, index, Arc::default())
    }

    /// Worker number `index`, one of the workers that share `spread`: a
    /// uid's share is one over all of them.
    pub fn sharing(
        registry: Arc<Registry>,
        index: usize,
        spread: Arc<Spread>,
    ) -> io::Result<Worker> {
        Ok(Worker {
            index,
            registry,
            commands: Mutex::default(),
            has_commands: AtomicBool::new(false),
            bell: Doorbell::new()?,
            rings: AtomicUsize::new(0),
            ops: CachePadded::new(AtomicU64::new(0)),
            stop: AtomicBool::new(false),
            spread,
        })
    }

    /// Which ready word of a session's ready area is this worker's.
    pub fn index(&self) -> usize {
        self.index
    }

    /// Rings this worker serves (for picking the least loaded).
    pub fn load(&self) -> usize {
        self.rings.load(Ordering::Relaxed)
    }

    /// Requests served so far.
    pub fn ops(&self) -> u64 {
        self.ops.load(Ordering::Relaxed)
    }

    /// Starts serving ring `index` of `session` (reset by the caller before
    /// the client learnt of it), woken by `doorbell` (the session's for
    /// this worker) with the ready word at `ready_at` in its memory.
    pub fn serve(
        &self,
        session: Arc<Session>,
        index: u32,
        doorbell: Arc<Doorbell>,
        ready_at: usize,
    ) {
        let Some(ring) = ServedRing::new(session, index) else {
            return;
        };
        self.rings.fetch_add(1, Ordering::Relaxed);
        self.send(Command::Serve(Box::new(ring), doorbell, ready_at));
    }

    /// Stops serving a ring; its index is freed once the worker lets go.
    pub fn close_ring(&self, session: u64, index: u32) {
        self.send(Command::Close { session, index });
    }

    /// Stops serving every ring of a closed session and lets go of its
    /// doorbell.
    pub fn close_session(&self, session: u64) {
        self.send(Command::CloseSession(session));
    }

    pub fn stop(&self) {
        self.stop.store(true, Ordering::Release);
        self.bell.ring();
    }

    fn send(&self, command: Command) {
        lock(&self.commands).push(command);
        // After the push: a worker that sees the flag finds the command.
        self.has_commands.store(true, Ordering::Release);
        self.bell.ring();
    }

    /// The worker thread's body; returns when [`Worker::stop`] is called.
    pub fn run(&self) -> io::Result<()> {
        let poll = epoll::create(epoll::CreateFlags::CLOEXEC)?;
        epoll::add(
            &poll,
            self.bell.fd(),
            epoll::EventData::new_u64(COMMAND_KEY),
            epoll::EventFlags::IN,
        )?;
        let mut state = WorkerState::new(poll, Arc::clone(&self.spread));
        let mut now = Instant::now();
        let mut looked = now;
        let mut idle_rounds = 0u32;
        while !self.stop.load(Ordering::Acquire) {
            self.take_commands(&mut state);
            let next_unmute = if state.muted.is_empty() {
                None
            } else {
                state.unmute_due(Instant::now())
            };
            if state.active == 0 {
                // Every ring is parked: sleep until a doorbell, a command,
                // or a muted doorbell's turn.
                state.wait_events(next_unmute, &self.bell)?;
                now = Instant::now();
                looked = now;
                continue;
            }
            if now.duration_since(looked) >= EVENTS_EVERY {
                state.wait_events(Some(Duration::ZERO), &self.bell)?;
                looked = now;
            }
            let (entries, public) = state.round(now);
            if self.registry.reclaim_due() {
                self.registry.reclaim();
            }
            if entries > 0 {
                self.ops.fetch_add(public, Ordering::Relaxed);
                idle_rounds = 0;
                now = Instant::now();
                continue;
            }
            idle_rounds = idle_rounds.wrapping_add(1);
            if idle_rounds.is_multiple_of(CLOCK_EVERY) {
                now = Instant::now();
            }
            // Mostly a CPU pause (a syscall per empty round would delay
            // noticing work); a yield now and then lets a client that shares
            // this core run.
            if idle_rounds.is_multiple_of(YIELD_EVERY) {
                std::thread::yield_now();
            } else {
                std::hint::spin_loop();
            }
        }
        Ok(())
    }

    fn take_commands(&self, state: &mut WorkerState) {
        // Cleared before the take: a command queued meanwhile sets it again.
        if !self.has_commands.swap(false, Ordering::Acquire) {
            return;
        }
        let commands = std::mem::take(&mut *lock(&self.commands));
        for command in commands {
            match command {
                Command::Serve(ring, bell, ready_at) => state.add(*ring, bell, ready_at),
                Command::Close { session, index } => state.remove_ring(session, index),
                Command::CloseSession(session) => state.remove_session(session),
            }
        }
        self.rings.store(state.ring_count, Ordering::Relaxed);
    }
}

/// What a uid may still spend in its turn: the one place where the cost of
/// serving is counted (a ring visit, an entry served; work of any other kind
/// a worker does for a uid must be charged here too).
#[derive(Debug, Default)]
struct Share {
    deficit: i64,
}

impl Share {
    /// A new turn: `quantum` more to spend (what was left of the last one
    /// carries over, up to one quantum; a debt, up to [`MAX_DEBT`], is paid
    /// first).
    fn new_turn(&mut self, quantum: i64) {
        self.deficit = self.deficit.clamp(-MAX_DEBT, quantum) + quantum;
    }

    /// Entries the next visit may serve.
    fn entries_allowed(&self) -> u32 {
        u32::try_from(self.deficit - 1).unwrap_or(0).max(1)
    }

    /// Charges a wake of one of the uid's sessions (its doorbell rang).
    fn charge_wake(&mut self) {
        self.deficit -= 1;
    }

    /// Charges one ring visit that served `entries`.
    fn charge_visit(&mut self, entries: u32) {
        self.deficit -= 1 + i64::from(entries);
    }

    fn spent(&self) -> bool {
        self.deficit <= 0
    }

    /// The uid left the round: nothing carries over but a debt.
    fn forget(&mut self) {
        self.deficit = self.deficit.min(0);
    }
}

/// Per uid, on how many of the daemon's workers it has active rings: what
/// splits its quantum among them ([`shared_quantum`]). A worker counts a
/// uid in when the uid joins its round and out when it leaves, so the
/// figure moves with rings becoming active or parked, never per entry; it
/// is read once per turn. Only a weight: a stale read costs a turn's
/// proportion, never service.
#[derive(Default)]
pub struct Spread {
    /// Keyed by uid, which the kernel gives (`SO_PEERCRED`), not the
    /// client: a fast hash.
    uids: Mutex<IdHashMap<u32, Arc<StdAtomicU32>>>,
}

impl Spread {
    /// The counter of `uid` (made on first use).
    fn counter(&self, uid: u32) -> Arc<StdAtomicU32> {
        Arc::clone(lock(&self.uids).entry(uid).or_default())
    }

    /// A worker lets go of `uid`'s counter; the entry goes with the last
    /// worker's.
    fn let_go(&self, uid: u32, counter: Arc<StdAtomicU32>) {
        let mut uids = lock(&self.uids);
        drop(counter);
        if uids.get(&uid).is_some_and(|c| Arc::strong_count(c) == 1) {
            uids.remove(&uid);
        }
    }
}

/// A uid's quantum on a worker where other uids wait, when it has active
/// rings on `workers` workers: [`QUANTUM`] split evenly among them (at
/// least 1, so every uid in the round is served every turn or two).
fn shared_quantum(workers: u32) -> i64 {
    (QUANTUM / i64::from(workers.max(1))).max(1)
}

/// One uid on this worker: its active rings in the order they are visited,
/// and its share.
struct UidTurn {
    active: VecDeque<RingRef>,
    share: Share,
    in_round: bool,
    /// Rings of the uid on this worker (the entry goes when it is 0).
    rings: usize,
    /// Workers where the uid is in the round, this one included while
    /// `in_round` ([`Spread`]).
    spread: Arc<StdAtomicU32>,
}

impl UidTurn {
    fn new(spread: Arc<StdAtomicU32>) -> UidTurn {
        UidTurn {
            active: VecDeque::new(),
            share: Share::default(),
            in_round: false,
            rings: 0,
            spread,
        }
    }

    /// Joins this worker's round (counted in the uid's spread).
    fn join(&mut self) {
        self.in_round = true;
        self.spread.fetch_add(1, Ordering::Relaxed);
    }

    /// Leaves this worker's round: nothing carries over but a debt.
    fn leave(&mut self) {
        self.in_round = false;
        self.share.forget();
        self.spread.fetch_sub(1, Ordering::Relaxed);
    }

    /// Its quantum for a turn: the whole [`QUANTUM_ALONE`] when no other
    /// uid waits on this worker, else its part of [`QUANTUM`].
    fn quantum(&self, others_wait: bool) -> i64 {
        if others_wait {
            shared_quantum(self.spread.load(Ordering::Relaxed))
        } else {
            QUANTUM_ALONE
        }
    }
}

/// A ring in a queue: its slot and the slot's generation then (a slot
/// reused since makes the reference stale).
#[derive(Clone, Copy, PartialEq, Eq)]
struct RingRef {
    slot: usize,
    generation: u64,
}

/// A session with rings on this worker: its doorbell (in the epoll set,
/// keyed by the session id) and its rings here.
struct Watched {
    session: Arc<Session>,
    bell: Arc<Doorbell>,
    ready_at: usize,
    rings: Vec<RingRef>,
    /// Wakes in a row that found no new entry.
    useless: u32,
    /// The last back-off; 0 after a useful wake.
    mute: Duration,
    /// Out of the epoll set until its back-off ends.
    muted: bool,
}

struct WorkerState {
    /// The epoll set of the worker's doorbell and its sessions' doorbells.
    /// A doorbell leaves it before it is dropped (see
    /// [`WorkerState::remove_session`]), because the client keeps a copy
    /// and epoll forgets a file only when every copy is closed.
    poll: OwnedFd,
    slots: Vec<Option<ServedRing>>,
    free_slots: Vec<usize>,
    next_generation: u64,
    /// Keyed by session id, which the daemon gives: a fast hash (so are
    /// `uids`, by uid, which the kernel gives), looked up per round and
    /// per wake.
    sessions: IdHashMap<u64, Watched>,
    /// Muted sessions and when their back-off ends, in that order.
    muted: VecDeque<(Instant, u64)>,
    uids: IdHashMap<u32, UidTurn>,
    /// Shared with the other workers: on how many each uid is in the round.
    spread: Arc<Spread>,
    /// Uids with active rings, in turn order.
    round: VecDeque<u32>,
    active: usize,
    ring_count: usize,
    events: Vec<epoll::Event>,
    /// Where a value from a client's data area is copied before use.
    scratch: Vec<u8>,
}

impl WorkerState {
    fn new(poll: OwnedFd, spread: Arc<Spread>) -> WorkerState {
        WorkerState {
            poll,
            slots: Vec::new(),
            free_slots: Vec::new(),
            next_generation: 0,
            sessions: IdHashMap::default(),
            muted: VecDeque::new(),
            uids: IdHashMap::default(),
            spread,
            round: VecDeque::new(),
            active: 0,
            ring_count: 0,
            events: Vec::with_capacity(256),
            scratch: Vec::new(),
        }
    }

    fn ring(&mut self, at: RingRef) -> Option<&mut ServedRing> {
        self.slots
            .get_mut(at.slot)?
            .as_mut()
            .filter(|r| r.generation == at.generation)
    }

    /// Starts serving `ring`, active (a new ring's flags are clear, so its
    /// client will not ring for it); the session's doorbell joins the epoll
    /// set with its first ring here. A doorbell that cannot be watched
    /// closes the session.
    fn add(&mut self, mut ring: ServedRing, bell: Arc<Doorbell>, ready_at: usize) {
        let id = ring.session.id;
        if !self.sessions.contains_key(&id) {
            // Edge-triggered: each ring of the doorbell is one event, and
            // the counter is never read (a wake costs no system call of
            // its own; the counter cannot reach its 2^64 - 1 cap).
            if epoll::add(
                &self.poll,
                bell.fd(),
                epoll::EventData::new_u64(id),
                epoll::EventFlags::IN | epoll::EventFlags::ET,
            )
            .is_err()
            {
                ring.session.close();
                return;
            }
            // Bits already in the session's ready word for this worker name
            // no ring it serves (a daemon before a restart left them, or
            // rings of the session here that went): cleared, since a client
            // does not ring again for a bit still set.
            if let Some(ready) = ring.session.memory.mapping().server_ready(ready_at) {
                ready.take();
            }
            self.sessions.insert(
                id,
                Watched {
                    session: Arc::clone(&ring.session),
                    bell,
                    ready_at,
                    rings: Vec::new(),
                    useless: 0,
                    mute: Duration::ZERO,
                    muted: false,
                },
            );
        }
        self.next_generation += 1;
        ring.generation = self.next_generation;
        let slot = self.free_slots.pop().unwrap_or_else(|| {
            self.slots.push(None);
            self.slots.len() - 1
        });
        let at = RingRef {
            slot,
            generation: ring.generation,
        };
        let uid = ring.session.peer.uid;
        self.slots[slot] = Some(ring);
        self.sessions.get_mut(&id).expect("added").rings.push(at);
        self.turn(uid).rings += 1;
        self.ring_count += 1;
        self.activate(at, Instant::now());
    }

    /// Makes a parked ring active: NEED_WAKEUP cleared, in its uid's queue.
    fn activate(&mut self, at: RingRef, now: Instant) {
        let Some(ring) = self.ring(at) else {
            return;
        };
        if ring.active {
            return;
        }
        ring.ring.view().end_sleep();
        ring.active = true;
        ring.last_work = now;
        let uid = ring.session.peer.uid;
        self.active += 1;
        let turn = self.turn(uid);
        turn.active.push_back(at);
        if !turn.in_round {
            turn.join();
            self.round.push_back(uid);
        }
    }

    /// `uid`'s entry here (made on first use).
    fn turn(&mut self, uid: u32) -> &mut UidTurn {
        let spread = &self.spread;
        self.uids
            .entry(uid)
            .or_insert_with(|| UidTurn::new(spread.counter(uid)))
    }

    /// `uid` has no ring here any more and is out of the round: its entry
    /// goes.
    fn forget_uid(&mut self, uid: u32) {
        if let Some(turn) = self.uids.remove(&uid) {
            self.spread.let_go(uid, turn.spread);
        }
    }

    /// Stops serving ring `index` of `session` (dropping a ServedRing frees
    /// its index).
    fn remove_ring(&mut self, session: u64, index: u32) {
        let Some(watched) = self.sessions.get_mut(&session) else {
            return;
        };
        let found = watched.rings.iter().position(|&at| {
            self.slots[at.slot]
                .as_ref()
                .is_some_and(|r| r.generation == at.generation && r.ring.index() == index)
        });
        let Some(pos) = found else {
            return;
        };
        let at = watched.rings.swap_remove(pos);
        let last = watched.rings.is_empty();
        self.drop_ring(at);
        if last {
            self.remove_session(session);
        }
    }

    /// Stops serving every ring of `session` here and lets go of its
    /// doorbell (out of the epoll set first).
    fn remove_session(&mut self, session: u64) {
        let Some(watched) = self.sessions.remove(&session) else {
            return;
        };
        if !watched.muted {
            let _ = epoll::delete(&self.poll, watched.bell.fd());
        }
        for at in watched.rings {
            self.drop_ring(at);
        }
    }

    /// Stops serving a ring, once what its client posted there is applied
    /// (its session is ending, or its thread let it go: a posted write
    /// that returned is never lost).
    fn drop_ring(&mut self, at: RingRef) {
        let Some(mut ring) = self.slots.get_mut(at.slot).and_then(Option::take) else {
            return;
        };
        ring.drain_posted(&mut self.scratch);
        self.free_slots.push(at.slot);
        self.ring_count -= 1;
        if ring.active {
            // Its queue entry goes stale and is skipped.
            self.active -= 1;
        }
        let uid = ring.session.peer.uid;
        if let Some(turn) = self.uids.get_mut(&uid) {
            turn.rings -= 1;
            if turn.rings == 0 && !turn.in_round {
                self.forget_uid(uid);
            }
        }
    }

    /// Waits for doorbells up to `timeout` (`None`: until one rings) and
    /// activates the rings they name.
    fn wait_events(&mut self, timeout: Option<Duration>, commands: &Doorbell) -> io::Result<()> {
        self.events.clear();
        let timeout = timeout.map(|t| rustix::time::Timespec {
            tv_sec: t.as_secs() as i64,
            tv_nsec: i64::from(t.subsec_nanos()),
        });
        match epoll::wait(
            &self.poll,
            rustix::buffer::spare_capacity(&mut self.events),
            timeout.as_ref(),
        ) {
            Ok(_) | Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
        let now = Instant::now();
        // By index, not a copy of the keys: no allocation per look.
        // `woken` leaves `events` alone.
        for at in 0..self.events.len() {
            let key = self.events[at].data.u64();
            if key == COMMAND_KEY {
                commands.drain();
            } else {
                self.woken(key, now);
            }
        }
        Ok(())
    }

    /// `session`'s doorbell rang: activates the rings its ready word names
    /// that have new entries (all its parked rings here with new entries
    /// when it names none: a client that knows no ready word). Only the
    /// session's own rings are looked at, and a wake that finds no new
    /// entry starts no spin. A session whose doorbell keeps ringing for
    /// nothing ([`USELESS_WAKES`] in a row) is muted: its doorbell leaves
    /// the epoll set for a back-off (1 ms, doubling to [`MAX_MUTE`]), after
    /// which its rings are looked at once and the doorbell watched again.
    fn woken(&mut self, session: u64, now: Instant) {
        let Some(watched) = self.sessions.get(&session) else {
            return;
        };
        // The event was taken before the word: a bit set after the take
        // comes with a ring after the event, which is another event (the
        // doorbell is edge-triggered).
        let uid = watched.session.peer.uid;
        if let Some(turn) = self.uids.get_mut(&uid) {
            turn.share.charge_wake();
        }
        if self.look_at(session, now) {
            if let Some(watched) = self.sessions.get_mut(&session) {
                watched.useless = 0;
                watched.mute = Duration::ZERO;
            }
            return;
        }
        let Some(watched) = self.sessions.get_mut(&session) else {
            return;
        };
        watched.useless += 1;
        if watched.useless < USELESS_WAKES {
            return;
        }
        watched.useless = 0;
        watched.mute = (watched.mute * 2).clamp(Duration::from_millis(1), MAX_MUTE);
        watched.muted = true;
        let _ = epoll::delete(&self.poll, watched.bell.fd());
        self.muted.push_back((now + watched.mute, session));
    }

    /// Activates the rings of `session` named in its ready word (or, when
    /// it names none, all of its parked rings here) that have new entries;
    /// whether the wake was for something: a ring with new entries, or one
    /// served since the last look (its entries taken before the event).
    fn look_at(&mut self, session: u64, now: Instant) -> bool {
        let Some(watched) = self.sessions.get(&session) else {
            return false;
        };
        let mask = watched
            .session
            .memory
            .mapping()
            .server_ready(watched.ready_at)
            .map_or(0, |ready| ready.take());
        let mut served_already = false;
        let mut named = Vec::new();
        for &at in &watched.rings {
            let Some(r) = self.slots[at.slot].as_mut() else {
                continue;
            };
            if mask != 0 && mask & ready_bit(r.ring.index()) == 0 {
                continue;
            }
            served_already |= r.active || std::mem::take(&mut r.worked);
            if !r.active && r.has_work() {
                named.push(at);
            }
        }
        let found = served_already || !named.is_empty();
        for at in named {
            self.activate(at, now);
        }
        found
    }

    /// Watches the doorbells of muted sessions whose back-off is over
    /// again, after a look at their rings (their rings may have work that
    /// rang while they were muted). Returns how long until the next one is
    /// due.
    fn unmute_due(&mut self, now: Instant) -> Option<Duration> {
        while let Some(&(due, session)) = self.muted.front() {
            if due > now {
                return Some(due - now);
            }
            self.muted.pop_front();
            let Some(watched) = self.sessions.get_mut(&session) else {
                continue;
            };
            watched.muted = false;
            if epoll::add(
                &self.poll,
                watched.bell.fd(),
                epoll::EventData::new_u64(session),
                epoll::EventFlags::IN | epoll::EventFlags::ET,
            )
            .is_err()
            {
                watched.session.close();
                continue;
            }
            self.look_at(session, now);
        }
        None
    }

    /// One round of deficit round robin over the uids with active rings;
    /// returns the entries and the public requests served.
    fn round(&mut self, now: Instant) -> (u64, u64) {
        let mut served = (0, 0);
        let others_wait = self.round.len() > 1;
        let mut closing = Vec::new();
        for _ in 0..self.round.len() {
            let Some(uid) = self.round.pop_front() else {
                break;
            };
            let Some(turn) = self.uids.get_mut(&uid) else {
                continue;
            };
            turn.share.new_turn(turn.quantum(others_wait));
            // Each active ring is visited at most once per turn.
            for _ in 0..turn.active.len() {
                if turn.share.spent() {
                    break;
                }
                let Some(at) = turn.active.pop_front() else {
                    break;
                };
                let Some(ring) = self.slots[at.slot]
                    .as_mut()
                    .filter(|r| r.generation == at.generation && r.active)
                else {
                    continue;
                };
                if ring.session.is_closed() {
                    closing.push(ring.session.id);
                    turn.active.push_back(at);
                    continue;
                }
                match ring.serve(&mut self.scratch, turn.share.entries_allowed()) {
                    Ok((entries, public)) => {
                        turn.share.charge_visit(entries);
                        served.0 += u64::from(entries);
                        served.1 += public;
                        if entries > 0 {
                            ring.last_work = now;
                            ring.worked = true;
                        } else if now.duration_since(ring.last_work) >= SPIN && ring.park() {
                            ring.active = false;
                            self.active -= 1;
                            continue;
                        }
                        turn.active.push_back(at);
                    }
                    Err(reason) => {
                        let session = &ring.session;
                        warn_limited(|| {
                            tracing::warn!(
                                session = session.id,
                                pid = session.peer.pid,
                                uid = session.peer.uid,
                                reason,
                                "closing hostile session"
                            )
                        });
                        session.close();
                        closing.push(session.id);
                        turn.active.push_back(at);
                    }
                }
            }
            if turn.active.is_empty() {
                turn.leave();
                if turn.rings == 0 {
                    self.forget_uid(uid);
                }
            } else {
                self.round.push_back(uid);
            }
        }
        for session in closing {
            self.remove_session(session);
        }
        served
    }
}

/// One ring as its worker sees it: the ring (its mapping held alive, the
/// daemon's own positions), whether it is active, and what its requests
/// leave behind between entries (a large value in pieces).
struct ServedRing {
    session: Arc<Session>,
    ring: SharedRing,
    staging: Staging,
    /// Tells this ring from a later one in the same slot.
    generation: u64,
    active: bool,
    last_work: Instant,
    /// Whether the ring had entries since its session's doorbell was last
    /// looked at: a wake that finds the ring served already (the worker
    /// saw the entries while parking it, or took them before the event)
    /// was not for nothing.
    worked: bool,
}

impl Drop for ServedRing {
    fn drop(&mut self) {
        self.staging.free(&self.session);
        self.session.free_ring(self.ring.index());
    }
}

/// Wakes a client sleeping on its ring's CQ tail: a shared (not private)
/// futex, since the waiter is another process.
struct FutexWake;

impl Wake for FutexWake {
    fn wake(&self, word: &AtomicU32) {
        let _ = rustix::thread::futex::wake(word, rustix::thread::futex::Flags::empty(), u32::MAX);
    }
}

impl ServedRing {
    fn new(session: Arc<Session>, index: u32) -> Option<ServedRing> {
        let ring = session.memory.shared_ring(index)?;
        Some(ServedRing {
            session,
            ring,
            staging: Staging::default(),
            generation: 0,
            active: false,
            last_work: Instant::now(),
            worked: false,
        })
    }

    /// Whether the next submission is published.
    fn has_work(&self) -> bool {
        self.ring.view().has_work(self.ring.counters())
    }

    /// Parks the ring (NEED_WAKEUP, fence, a last look): false, and the
    /// ring stays active, when it has work after all. A ring whose CQ is
    /// full counts as idle: it cannot be served until its client frees
    /// completions, and a client that wants service names it and rings.
    fn park(&self) -> bool {
        let view = self.ring.view();
        if view.prepare_sleep(self.ring.counters()) {
            true
        } else {
            view.end_sleep();
            false
        }
    }

    /// Applies the posted writes the ring still holds, completing nothing
    /// (see `ServerRing::drain`); other entries are skipped: their client
    /// never got an answer, and is gone or has let the ring go.
    fn drain_posted(&mut self, scratch: &mut Vec<u8>) {
        let (view, counters) = self.ring.get();
        let session = &*self.session;
        let staging = &mut self.staging;
        view.drain(counters, view.entries(), |raw| {
            if RingRequest::is_posted(&Sqe::decode(raw)) {
                let _ = execute(raw, view, session, staging, scratch);
            }
        });
    }

    /// Serves what the ring holds, as far as the CQ has room and at most
    /// `max` entries. Returns the entries and the public requests served,
    /// or why the session must close.
    fn serve(&mut self, scratch: &mut Vec<u8>, max: u32) -> Result<(u32, u64), &'static str> {
        let (view, counters) = self.ring.get();
        let session = &*self.session;
        let staging = &mut self.staging;
        let mut public = 0;
        let served = view
            .serve(counters, &FutexWake, max, |raw, behind| {
                if let Some(behind) = behind {
                    if let Some((insert, release)) =
                        insert_and_release(raw, behind.request(), view, session)
                    {
                        public += 2;
                        return Answer::Both(insert.encode(), behind.answer(release.encode()));
                    }
                }
                let (cqe, is_public) = execute(raw, view, session, staging, scratch);
                public += u64::from(is_public);
                Answer::One(cqe.encode())
            })
            .map_err(|_| "CQ head outside the ring")?;
        Ok((served, public))
    }
}

/// An insert into a handle granted ahead with the release of that handle
/// right behind it (copies, already out of shared memory; what a client
/// posts for an object that lives while it is handed to C and back):
/// applied together, the object never made ([`Registry::insert_released`]),
/// their completions as if applied one by one. `None` when the two are not
/// such a pair or the insert would not simply succeed: each is run on its
/// own.
fn insert_and_release(
    raw: &[u8; ENTRY_SIZE],
    behind: &[u8; ENTRY_SIZE],
    view: ServerRing<'_>,
    session: &Session,
) -> Option<(Cqe, Cqe)> {
    // Most pairs are not: one compare before any decode or parse.
    let handle = Sqe::handle_of(raw);
    if handle == 0 || Sqe::handle_of(behind) != handle {
        return None;
    }
    let (insert, release) = (Sqe::decode(raw), Sqe::decode(behind));
    let Ok(RingRequest::Insert {
        flags,
        value: ValueSource::Inline { len } | ValueSource::Data { len, .. },
        into: Some(into),
    }) = RingRequest::from_sqe(&insert, view.data_size())
    else {
        return None;
    };
    let Ok(RingRequest::Release { handle }) = RingRequest::from_sqe(&release, view.data_size())
    else {
        return None;
    };
    if handle != into
        || !session
            .registry()
            .insert_released(&session.holder, into, len, flags)
    {
        return None;
    }
    let ok = |user_data| Cqe {
        user_data,
        status: Status::Ok as u32,
        ..Cqe::default()
    };
    Some((
        Cqe {
            handle: into.get(),
            ..ok(insert.user_data)
        },
        ok(release.user_data),
    ))
}

/// Runs one entry (a copy, already out of shared memory). Returns the
/// completion and whether it was a public request.
fn execute(
    raw: &[u8; ENTRY_SIZE],
    view: ServerRing<'_>,
    session: &Session,
    staging: &mut Staging,
    scratch: &mut Vec<u8>,
) -> (Cqe, bool) {
    // Decoded once: the parse and the inline value both read this copy.
    let sqe = Sqe::decode(raw);
    let mut cqe = Cqe {
        user_data: sqe.user_data,
        ..Cqe::default()
    };
    let request = RingRequest::from_sqe(&sqe, view.data_size());
    let public = !matches!(
        request,
        Ok(RingRequest::StageWrite { .. }
            | RingRequest::StageRead { .. }
            | RingRequest::Reserve { .. }
            | RingRequest::Sync { .. })
    );
    // A posted release of an object that died meanwhile is done: the
    // reference died with the object.
    let posted_release =
        RingRequest::is_posted(&sqe) && matches!(request, Ok(RingRequest::Release { .. }));
    let mut run = Run {
        view,
        session,
        staging,
        inline: &sqe.inline,
        cqe: &mut cqe,
    };
    let result = request
        .map_err(Refusal::from)
        .and_then(|request| run.request(request, scratch));
    let refusal = match result {
        Err(refusal) if !(posted_release && refusal.status() == Status::Stale) => refusal,
        _ => {
            cqe.status = Status::Ok as u32;
            return (cqe, public);
        }
    };
    if refusal.status() == Status::Stale
        && sqe.handle != 0
        && Handle::new(sqe.handle).is_some_and(|h| session.registry().ask_again(h))
    {
        // Granted ahead, its insert not applied yet (it may have returned
        // in another process), or applied since this op looked (by another
        // worker): the client asks again.
        cqe.entry_flags |= cqe_flags::RESERVED;
    }
    cqe.status = refusal.status() as u32;
    if refusal.status() == Status::Quota {
        // The client learns which limit from the completion, the operator
        // from the log.
        cqe.value_len = Limit::completion_code(refusal.limit());
        let limit = refusal.limit().map_or("unknown", Limit::name);
        warn_limited(|| {
            tracing::warn!(
                session = session.id,
                pid = session.peer.pid,
                uid = session.peer.uid,
                limit,
                "quota hit: {limit} would be passed"
            )
        });
    }
    (cqe, public)
}

/// The staging buffer of one ring: a large value in pieces, built by
/// STAGE_WRITE, or a GET snapshot read back by STAGE_READ. Its length is
/// charged to the session's uid ([`Registry::charge_staging`]) for as long
/// as it is held.
#[derive(Default)]
struct Staging {
    bytes: Vec<u8>,
}

impl Staging {
    /// Makes the buffer `len` bytes long (new bytes zero), charging growth to
    /// the session's uid first; the limit it would pass otherwise, and the
    /// buffer is left as it was.
    fn resize(&mut self, session: &Session, len: usize) -> Result<(), Limit> {
        let registry = session.registry();
        let old = self.bytes.len();
        if len > old {
            let grow = (len - old) as u64;
            registry.charge_staging(&session.holder, grow)?;
            if self.bytes.try_reserve(len - old).is_err() {
                registry.release_staging(&session.holder, grow);
                return Err(Limit::DaemonMemory);
            }
        } else {
            registry.release_staging(&session.holder, (old - len) as u64);
        }
        self.bytes.resize(len, 0);
        Ok(())
    }

    /// Frees the buffer and gives its charge back.
    fn free(&mut self, session: &Session) {
        let held = self.bytes.len() as u64;
        self.bytes = Vec::new();
        session.registry().release_staging(&session.holder, held);
    }

    /// Replaces the buffer with a copy of `value` (a GET snapshot), charge
    /// included.
    fn snapshot(
        &mut self,
        registry: &Registry,
        holder: &Holder,
        value: &[u8],
    ) -> Result<(), Limit> {
        registry.release_staging(holder, self.bytes.len() as u64);
        self.bytes = Vec::new();
        registry.charge_staging(holder, value.len() as u64)?;
        if self.bytes.try_reserve(value.len()).is_err() {
            registry.release_staging(holder, value.len() as u64);
            return Err(Limit::DaemonMemory);
        }
        self.bytes.extend_from_slice(value);
        Ok(())
    }
}

/// One request being run: where its bytes come from and go to.
struct Run<'r, 'a> {
    view: ServerRing<'a>,
    session: &'r Session,
    staging: &'r mut Staging,
    /// The entry's inline bytes (a copy).
    inline: &'r [u8],
    cqe: &'r mut Cqe,
}

impl Run<'_, '_> {
    fn request(&mut self, request: RingRequest, scratch: &mut Vec<u8>) -> Result<(), Refusal> {
        let session = self.session;
        let registry: &Registry = session.registry();
        let holder = &session.holder;
        match request {
            RingRequest::Insert {
                flags,
                value,
                into: None,
            } => {
                let bytes = self.value_in(value, registry, scratch)?;
                self.cqe.handle = registry.insert(holder, bytes, flags)?.get();
                self.consumed(value);
                Ok(())
            }
            RingRequest::Insert {
                flags,
                value,
                into: Some(into),
            } => {
                let bytes = self.value_in(value, registry, scratch)?;
                registry.insert_into(holder, into, bytes, flags)?;
                self.cqe.handle = into.get();
                self.consumed(value);
                Ok(())
            }
            RingRequest::Reserve {
                shared,
                region_off,
                want,
            } => self.reserve(shared, region_off, want),
            // Entries are applied in order: every earlier one is.
            RingRequest::Sync { give_back } => {
                self.cqe.handle = registry.give_back_credit(holder, give_back);
                Ok(())
            }
            RingRequest::Replace { handle, value } => {
                let bytes = self.value_in(value, registry, scratch)?;
                registry.replace(holder, handle, bytes)?;
                self.consumed(value);
                Ok(())
            }
            RingRequest::Get {
                handle,
                region_off,
                region_len,
                capacity,
            } => self.get(handle, region_off, region_len, capacity),
            RingRequest::Retain { handle } => registry.retain(holder, handle),
            RingRequest::Release { handle } => Ok(registry.release(holder, handle)?),
            RingRequest::Remove { handle } => Ok(registry.remove(holder, handle)?),
            RingRequest::StageWrite {
                offset,
                data_off,
                len,
            } => self.stage_write(offset, data_off, len),
            RingRequest::StageRead {
                offset,
                data_off,
                len,
            } => Ok(self.stage_read(offset, data_off, len)?),
        }
    }

    /// The bytes of an INSERT's or REPLACE's value, copied out of shared
    /// memory once (inline bytes are already part of the entry's copy).
    fn value_in<'v>(
        &'v self,
        source: ValueSource,
        registry: &Registry,
        scratch: &'v mut Vec<u8>,
    ) -> Result<&'v [u8], Refusal> {
        match source {
            ValueSource::Inline { len } => Ok(&self.inline[..len]),
            ValueSource::Staged { len } if len == self.staging.bytes.len() => {
                Ok(&self.staging.bytes)
            }
            ValueSource::Staged { .. } => Err(Status::Invalid.into()),
            ValueSource::Data { off, len } => {
                if len > registry.limits().max_value_size {
                    return Err(Status::TooBig.into());
                }
                scratch.clear();
                scratch.try_reserve(len).map_err(|_| Limit::DaemonMemory)?;
                scratch.resize(len, 0);
                self.view.copy_from_data(off, scratch);
                Ok(scratch)
            }
        }
    }

    /// A staged value was used up by its INSERT or REPLACE.
    fn consumed(&mut self, source: ValueSource) {
        if matches!(source, ValueSource::Staged { .. }) {
            self.staging.free(self.session);
        }
    }

    fn get(
        &mut self,
        handle: Handle,
        region_off: u32,
        region_len: usize,
        capacity: u64,
    ) -> Result<(), Refusal> {
        let Run {
            view,
            session,
            staging,
            cqe,
            ..
        } = self;
        let registry = session.registry();
        let holder = &session.holder;
        registry.get_with(holder, handle, |value| {
            cqe.value_len = value.len() as u32;
            if value.len() as u64 > capacity {
                return Err(Status::Buffer.into());
            }
            if value.len() <= INLINE_CAPACITY {
                cqe.inline[..value.len()].copy_from_slice(value);
                cqe.entry_flags = cqe_flags::INLINE;
            } else if value.len() <= region_len {
                view.copy_to_data(region_off, value);
                cqe.entry_flags = cqe_flags::IN_DATA;
                cqe.data_off = region_off;
            } else {
                // Too large for the region: keep a snapshot for STAGE_READ,
                // so the pieces all come from one version of the value.
                staging.snapshot(registry, holder, value)?;
                cqe.entry_flags = cqe_flags::STAGED;
            }
            Ok(())
        })?
    }

    /// RESERVE: handles granted ahead written into the data area at
    /// `region_off`, their count in `value_len`, the byte credit granted in
    /// `handle`, and POSTING when the daemon applies posted writes.
    fn reserve(&mut self, shared: bool, region_off: u32, want: usize) -> Result<(), Refusal> {
        let registry = self.session.registry();
        let mut granted = 0u32;
        let view = self.view;
        let credit = registry.reserve(&self.session.holder, shared, want, |handle| {
            let at = region_off + 8 * granted;
            // Inside the region: `want` handles of 8 bytes were checked to fit.
            if view.copy_to_data(at, &handle.get().to_le_bytes()) {
                granted += 1;
            }
        })?;
        self.cqe.value_len = granted;
        self.cqe.handle = credit;
        if registry.posting_allowed() {
            self.cqe.entry_flags = cqe_flags::POSTING;
        }
        Ok(())
    }

    fn stage_write(&mut self, offset: u64, data_off: u32, len: usize) -> Result<(), Refusal> {
        if offset > self.staging.bytes.len() as u64 {
            return Err(Status::Invalid.into());
        }
        let offset = offset as usize;
        let end = offset + len;
        if end > self.session.registry().limits().max_value_size {
            return Err(Status::TooBig.into());
        }
        self.staging.resize(self.session, offset)?;
        self.staging.resize(self.session, end)?;
        self.view
            .copy_from_data(data_off, &mut self.staging.bytes[offset..]);
        Ok(())
    }

    fn stage_read(&mut self, offset: u64, data_off: u32, len: usize) -> Result<(), Status> {
        let staged = self.staging.bytes.len();
        if offset > staged as u64 {
            return Err(Status::Invalid);
        }
        let offset = offset as usize;
        let n = (staged - offset).min(len);
        self.view
            .copy_to_data(data_off, &self.staging.bytes[offset..offset + n]);
        self.cqe.value_len = n as u32;
        self.cqe.data_off = data_off;
        self.cqe.entry_flags = cqe_flags::IN_DATA;
        if offset + n == staged {
            self.staging.free(self.session);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    //! The serve step against a ring in anonymous shared memory (the test
    //! plays the client's side over the same mapping) and a real registry.

    use super::*;
    use crate::peer::Peer;
    use crate::session_memory::SessionMemory;
    use hreg_proto::entry::{sqe_flags, Cqe};
    use hreg_proto::ring::{ClientCounters, Layout};
    use hreg_proto::{flags, Opcode};
    use hreg_registry::Limits;
    use std::sync::atomic::AtomicUsize;

    const LAYOUT: Layout = Layout {
        entries: 8,
        data_size: 64,
        max_rings: 2,
    };

    struct RingHarness {
        ring: ServedRing,
        counters: ClientCounters,
        scratch: Vec<u8>,
    }

    impl RingHarness {
        fn new(limits: Limits) -> RingHarness {
            let registry = Arc::new(Registry::new(4, limits).unwrap());
            let session = Arc::new(Session::new(
                registry.holder(1000).unwrap(),
                Peer {
                    pid: 1,
                    uid: 1000,
                    gid: 1000,
                },
                "test".into(),
                SessionMemory::anonymous(LAYOUT).unwrap(),
                1 << 20,
                registry,
                Arc::new(Doorbell::new().unwrap()),
                Arc::new(AtomicUsize::new(0)),
            ));
            let index = session.claim_ring().unwrap();
            let ring = ServedRing::new(session, index).unwrap();
            RingHarness {
                ring,
                counters: ClientCounters::default(),
                scratch: Vec::new(),
            }
        }

        fn session(&self) -> &Session {
            &self.ring.session
        }

        /// Submits `sqes` (data bytes placed first by `data`) and serves
        /// them; returns their completions.
        fn run(&mut self, data: &[u8], sqes: &[Sqe]) -> Vec<Cqe> {
            let session = Arc::clone(&self.ring.session);
            let client = session
                .memory
                .mapping()
                .client_ring(LAYOUT, self.ring.ring.index())
                .unwrap();
            assert!(client.copy_to_data(0, data));
            for sqe in sqes {
                client.push(&mut self.counters, &sqe.encode());
            }
            let (served, _) = self.ring.serve(&mut self.scratch, u32::MAX).unwrap();
            assert_eq!(served as usize, sqes.len());
            let cqes = (0..sqes.len())
                .map(|_| Cqe::decode(&client.pop(&mut self.counters).unwrap()))
                .collect();
            client.release(&self.counters);
            cqes
        }

        fn data(&self, off: u32, len: usize) -> Vec<u8> {
            let client = self
                .session()
                .memory
                .mapping()
                .client_ring(LAYOUT, self.ring.ring.index())
                .unwrap();
            let mut out = vec![0; len];
            assert!(client.copy_from_data(off, &mut out));
            out
        }
    }

    fn inline_insert(value: &[u8], obj_flags: u32) -> Sqe {
        let mut sqe = Sqe {
            opcode: Opcode::Insert as u8,
            entry_flags: sqe_flags::INLINE,
            obj_flags,
            data_len: value.len() as u32,
            ..Sqe::default()
        };
        sqe.inline[..value.len()].copy_from_slice(value);
        sqe
    }

    fn on(opcode: Opcode, handle: u64) -> Sqe {
        Sqe {
            opcode: opcode as u8,
            handle,
            ..Sqe::default()
        }
    }

    fn get(handle: u64, region: u32, capacity: u64) -> Sqe {
        let mut sqe = Sqe {
            data_len: region,
            ..on(Opcode::Get, handle)
        };
        sqe.set_inline_u64(capacity);
        sqe
    }

    fn stage(opcode: Opcode, offset: u64, len: u32) -> Sqe {
        let mut sqe = Sqe {
            opcode: opcode as u8,
            data_len: len,
            ..Sqe::default()
        };
        sqe.set_inline_u64(offset);
        sqe
    }

    const OK: u32 = Status::Ok as u32;

    #[test]
    fn inline_values_travel_both_ways_in_one_batch() {
        let mut harness = RingHarness::new(Limits::default());
        let done = harness.run(&[], &[inline_insert(b"hello", 0)]);
        assert_eq!(done[0].status, OK);
        let h = done[0].handle;
        let done = harness.run(
            &[],
            &[get(h, 0, 64), on(Opcode::Retain, h), on(Opcode::Release, h)],
        );
        assert!(done.iter().all(|c| c.status == OK));
        assert_eq!(done[0].entry_flags, cqe_flags::INLINE);
        assert_eq!(&done[0].inline[..done[0].value_len as usize], b"hello");
        assert_eq!(harness.session().holder.reference_count(), 1);
        // Bad entries are answered, each on its own, and the ring goes on.
        let done = harness.run(
            &[],
            &[
                on(Opcode::Get, 0),
                Sqe {
                    opcode: 99,
                    ..Sqe::default()
                },
                inline_insert(b"x", 0x80),
                get(h, 0, 2),
            ],
        );
        let statuses: Vec<u32> = done.iter().map(|c| c.status).collect();
        let invalid = Status::Invalid as u32;
        assert_eq!(statuses, [invalid, invalid, invalid, Status::Buffer as u32]);
        assert_eq!(done[3].value_len, 5, "BUFFER says how much is needed");
        assert_eq!(
            harness.ring.serve(&mut Vec::new(), u32::MAX).unwrap(),
            (0, 0)
        );
    }

    #[test]
    fn values_in_the_data_area_and_in_pieces() {
        let mut harness = RingHarness::new(Limits::default());
        // 48 bytes through the data area.
        let value: Vec<u8> = (0..48).collect();
        let insert = Sqe {
            opcode: Opcode::Insert as u8,
            data_len: 48,
            ..Sqe::default()
        };
        let h = harness.run(&value, &[insert])[0].handle;
        let done = harness.run(&[], &[get(h, 64, 64)]);
        assert_eq!(done[0].entry_flags, cqe_flags::IN_DATA);
        assert_eq!(harness.data(done[0].data_off, 48), value);
        // 100 bytes in pieces: staged in, then a GET whose region is too
        // small is answered STAGED and read back in pieces.
        let big: Vec<u8> = (0..100).map(|i| i as u8 ^ 0x5a).collect();
        harness.run(&big[..64], &[stage(Opcode::StageWrite, 0, 64)]);
        harness.run(&big[64..], &[stage(Opcode::StageWrite, 64, 36)]);
        assert_eq!(harness.session().holder.staged_bytes(), 100);
        let insert = Sqe {
            entry_flags: sqe_flags::STAGED,
            data_len: 100,
            ..inline_insert(b"", flags::SHARED)
        };
        let done = harness.run(&[], &[insert]);
        assert_eq!(done[0].status, OK);
        assert_eq!(harness.session().holder.staged_bytes(), 0, "used up");
        let big_h = done[0].handle;
        let done = harness.run(&[], &[get(big_h, 32, 1000)]);
        assert_eq!(done[0].entry_flags, cqe_flags::STAGED);
        assert_eq!(done[0].value_len, 100);
        assert_eq!(harness.session().holder.staged_bytes(), 100, "a snapshot");
        let mut read = Vec::new();
        while read.len() < 100 {
            let done = harness.run(&[], &[stage(Opcode::StageRead, read.len() as u64, 64)]);
            read.extend(harness.data(0, done[0].value_len as usize));
        }
        assert_eq!(read, big);
        assert_eq!(harness.session().holder.staged_bytes(), 0, "read back");
        // A STAGED insert whose length is not the staged one is INVALID.
        let insert = Sqe {
            entry_flags: sqe_flags::STAGED,
            data_len: 7,
            ..inline_insert(b"", 0)
        };
        assert_eq!(
            harness.run(&[], &[insert])[0].status,
            Status::Invalid as u32
        );
    }

    fn reserve(region: u32, want: u32, shared: bool) -> Sqe {
        Sqe {
            opcode: Opcode::Reserve as u8,
            obj_flags: if shared { flags::SHARED } else { 0 },
            data_off: region,
            data_len: 8 * want,
            ..Sqe::default()
        }
    }

    fn posted(sqe: Sqe) -> Sqe {
        Sqe {
            entry_flags: sqe.entry_flags | sqe_flags::POSTED,
            ..sqe
        }
    }

    #[test]
    fn granted_handles_take_posted_inserts_and_their_late_failures() {
        let mut harness = RingHarness::new(Limits::default());
        let done = harness.run(&[], &[reserve(0, 4, true)]);
        assert_eq!(done[0].status, OK);
        assert_eq!(done[0].value_len, 4);
        assert_eq!(done[0].handle, hreg_registry::CREDIT);
        assert_eq!(done[0].entry_flags, cqe_flags::POSTING);
        let granted: Vec<u64> = harness
            .data(0, 32)
            .chunks_exact(8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap()))
            .collect();
        // Before its insert, a GET is STALE with RESERVED: ask again.
        let done = harness.run(&[], &[get(granted[0], 0, 64)]);
        assert_eq!(done[0].status, Status::Stale as u32);
        assert_eq!(done[0].entry_flags, cqe_flags::RESERVED);
        let insert = |h: u64, value: &[u8]| {
            posted(Sqe {
                handle: h,
                ..inline_insert(value, flags::SHARED)
            })
        };
        let done = harness.run(
            &[],
            &[
                insert(granted[0], b"first"),
                insert(granted[0], b"again"),
                posted(on(Opcode::Release, granted[0])),
                on(Opcode::Sync, 0),
                get(granted[0], 0, 64),
            ],
        );
        assert_eq!(done[0].status, OK);
        assert_eq!(done[0].handle, granted[0]);
        assert_eq!(
            done[1].status,
            Status::Invalid as u32,
            "used up: a late failure"
        );
        assert_eq!(done[2].status, OK);
        assert_eq!(done[3].status, OK);
        // Released its last reference: gone, and a posted release of a
        // dead object is done, not a failure.
        assert_eq!(done[4].status, Status::Stale as u32);
        assert_eq!(done[4].entry_flags, 0);
        let done = harness.run(&[], &[posted(on(Opcode::Release, granted[0]))]);
        assert_eq!(done[0].status, OK);
        let done = harness.run(&[], &[posted(on(Opcode::Retain, granted[0]))]);
        assert_eq!(done[0].status, Status::Stale as u32);
        // Posted entries that end the ring unserved are applied.
        let session = Arc::clone(&harness.ring.session);
        let client = session
            .memory
            .mapping()
            .client_ring(LAYOUT, harness.ring.ring.index())
            .unwrap();
        client.push(
            &mut harness.counters,
            &Sqe {
                entry_flags: sqe_flags::POSTED | sqe_flags::INLINE,
                ..insert(granted[1], b"last")
            }
            .encode(),
        );
        client.push(&mut harness.counters, &inline_insert(b"never", 0).encode());
        client.flush(&harness.counters);
        let mut scratch = Vec::new();
        harness.ring.drain_posted(&mut scratch);
        let registry = session.registry();
        let h = Handle::new(granted[1]).unwrap();
        assert_eq!(
            registry.get_with(&session.holder, h, |v| v.to_vec()),
            Ok(b"last".to_vec())
        );
        assert_eq!(registry.usage().objects, 1, "the synchronous one skipped");
    }

    /// A posted insert with the release of its handle right behind it: both
    /// OK and the object never made, the counts as if both were applied
    /// one by one. With anything between them that names the handle, or a
    /// DETACHED insert (which gives no reference), each runs on its own.
    #[test]
    fn an_insert_released_right_behind_it_is_never_made() {
        let mut harness = RingHarness::new(Limits::default());
        let done = harness.run(&[], &[reserve(0, 4, false)]);
        assert_eq!(done[0].value_len, 4);
        let granted: Vec<u64> = harness
            .data(0, 32)
            .chunks_exact(8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap()))
            .collect();
        let session = Arc::clone(&harness.ring.session);
        let registry = session.registry();
        let insert = |h: u64, flags: u32| {
            posted(Sqe {
                handle: h,
                user_data: 1,
                ..inline_insert(&[5u8; 16], flags)
            })
        };
        let release = |h: u64| {
            posted(Sqe {
                user_data: 2,
                ..on(Opcode::Release, h)
            })
        };
        let before = registry.usage();
        let done = harness.run(&[], &[insert(granted[0], 0), release(granted[0])]);
        assert_eq!(
            (done[0].status, done[0].handle, done[0].user_data),
            (OK, granted[0], 1)
        );
        assert_eq!((done[1].status, done[1].user_data), (OK, 2));
        let after = registry.usage();
        assert_eq!((after.objects, after.value_bytes), (0, 0));
        assert_eq!(after.reserved, before.reserved - 1, "the grant is used");
        assert_eq!(after.credit, before.credit - 16, "its credit spent");
        // Gone for good: STALE, not "ask again".
        let done = harness.run(&[], &[get(granted[0], 0, 64)]);
        assert_eq!(done[0].status, Status::Stale as u32);
        assert_eq!(done[0].entry_flags, 0);
        // A retain between: the object lives on with that reference.
        let retain = posted(on(Opcode::Retain, granted[1]));
        let done = harness.run(&[], &[insert(granted[1], 0), retain, release(granted[1])]);
        assert!(done.iter().all(|d| d.status == OK), "{done:?}");
        let h = Handle::new(granted[1]).unwrap();
        assert_eq!(
            registry.get_with(&session.holder, h, |v| v.to_vec()),
            Ok(vec![5u8; 16])
        );
        // DETACHED: no reference to release.
        let done = harness.run(
            &[],
            &[insert(granted[2], flags::DETACHED), release(granted[2])],
        );
        assert_eq!(done[0].status, OK);
        assert_eq!(done[1].status, Status::NotHeld as u32);
        assert_eq!(registry.usage().objects, 2);
    }

    #[test]
    fn a_uids_quantum_is_split_over_the_workers_that_serve_it() {
        assert_eq!(shared_quantum(1), QUANTUM);
        assert_eq!(shared_quantum(2), QUANTUM / 2);
        assert_eq!(shared_quantum(64), 1, "never nothing");
        assert_eq!(shared_quantum(0), QUANTUM, "a stale read");
        // Two workers' entries of one uid share its counter: it counts the
        // rounds the uid is in, and goes with the last entry.
        let spread = Spread::default();
        let mut on_one = UidTurn::new(spread.counter(7));
        let mut on_two = UidTurn::new(spread.counter(7));
        let other = UidTurn::new(spread.counter(8));
        on_one.join();
        assert_eq!(on_one.quantum(true), QUANTUM);
        assert_eq!(on_one.quantum(false), QUANTUM_ALONE);
        on_two.join();
        assert_eq!(on_one.quantum(true), QUANTUM / 2);
        assert_eq!(on_two.quantum(false), QUANTUM_ALONE, "alone: all of it");
        assert_eq!(other.quantum(true), QUANTUM, "another uid's own");
        on_two.leave();
        assert_eq!(on_one.quantum(true), QUANTUM);
        on_one.leave();
        spread.let_go(7, on_one.spread);
        assert_eq!(lock(&spread.uids).len(), 2);
        spread.let_go(7, on_two.spread);
        spread.let_go(8, other.spread);
        assert!(lock(&spread.uids).is_empty());
    }

    #[test]
    fn a_quota_completion_names_its_limit() {
        let mut harness = RingHarness::new(Limits {
            max_objects: 1,
            ..Limits::default()
        });
        let done = harness.run(&[], &[inline_insert(b"a", 0), inline_insert(b"b", 0)]);
        assert_eq!(done[0].status, OK);
        assert_eq!(done[1].status, Status::Quota as u32);
        assert_eq!(done[1].value_len, Limit::MaxObjects.code());
    }

    #[test]
    fn staging_is_charged_and_given_back() {
        let limits = Limits {
            max_value_size: 1000,
            uid_max_bytes: 100,
            ..Limits::default()
        };
        let mut harness = RingHarness::new(limits);
        let chunk = [1u8; 64];
        let done = harness.run(&chunk, &[stage(Opcode::StageWrite, 0, 64)]);
        assert_eq!(done[0].status, OK);
        // 128 staged bytes would pass the uid's 100.
        let done = harness.run(&chunk, &[stage(Opcode::StageWrite, 64, 64)]);
        assert_eq!(done[0].status, Status::Quota as u32);
        assert_eq!(done[0].value_len, Limit::UidMaxBytes.code());
        assert_eq!(harness.session().holder.staged_bytes(), 64);
        // Past the value size: TOO_BIG, and nothing more is charged.
        let done = harness.run(&chunk, &[stage(Opcode::StageWrite, 64, 64 * 16)]);
        assert_ne!(done[0].status, OK);
        // The ring's end gives the charge back.
        let session = Arc::clone(&harness.ring.session);
        drop(harness);
        assert_eq!(session.holder.staged_bytes(), 0);
    }

    /// Lives of handles granted ahead, applied in process: handles granted
    /// 256 at a time, then posted inserts of 16 B and posted releases of
    /// all of them, served 8 entries a visit, then as many lives each
    /// posted as an insert with its release behind; every entry is OK and
    /// nothing is left. It also prints what each costs the worker, reproducibly (no
    /// other core's cache misses): for figures, run it in release with
    /// `HREG_APPLY_ROUNDS=2000 cargo test --release -p hregd
    /// posted_lives -- --nocapture`.
    #[test]
    fn posted_lives_apply_and_leave_nothing() {
        let mut harness = RingHarness::new(Limits::default());
        let session = Arc::clone(&harness.ring.session);
        let registry = session.registry();
        let client = session
            .memory
            .mapping()
            .client_ring(LAYOUT, harness.ring.ring.index())
            .unwrap();
        // Serves `sqes` (8 at most), every one OK; the time serving took.
        let serve = |harness: &mut RingHarness, sqes: &[Sqe]| {
            for sqe in sqes {
                client.push(&mut harness.counters, &sqe.encode());
            }
            let start = Instant::now();
            let (served, _) = harness.ring.serve(&mut harness.scratch, u32::MAX).unwrap();
            let took = start.elapsed();
            assert_eq!(served as usize, sqes.len());
            for _ in sqes {
                let cqe = Cqe::decode(&client.pop(&mut harness.counters).unwrap());
                assert_eq!(cqe.status, OK);
            }
            client.release(&harness.counters);
            took
        };
        let value = [7u8; 16];
        let (mut grant, mut inserts, mut releases, mut pairs) = (
            Duration::ZERO,
            Duration::ZERO,
            Duration::ZERO,
            Duration::ZERO,
        );
        let rounds: u32 = std::env::var("HREG_APPLY_ROUNDS")
            .ok()
            .and_then(|r| r.parse().ok())
            .unwrap_or(20);
        let mut handles = Vec::with_capacity(256);
        for _ in 0..rounds {
            handles.clear();
            let start = Instant::now();
            // A few per shard a grant: as many as it takes.
            while handles.len() < 256 {
                let want = 256 - handles.len();
                registry
                    .reserve(&session.holder, false, want, |h| handles.push(h.get()))
                    .unwrap();
            }
            grant += start.elapsed();
            for chunk in handles.chunks(8) {
                let sqes: Vec<Sqe> = chunk
                    .iter()
                    .map(|&h| {
                        posted(Sqe {
                            handle: h,
                            ..inline_insert(&value, 0)
                        })
                    })
                    .collect();
                inserts += serve(&mut harness, &sqes);
            }
            for chunk in handles.chunks(8) {
                let sqes: Vec<Sqe> = chunk
                    .iter()
                    .map(|&h| posted(on(Opcode::Release, h)))
                    .collect();
                releases += serve(&mut harness, &sqes);
            }
            // Lives whose release is right behind their insert: applied
            // together ([`insert_and_release`]).
            handles.clear();
            while handles.len() < 256 {
                let want = 256 - handles.len();
                registry
                    .reserve(&session.holder, false, want, |h| handles.push(h.get()))
                    .unwrap();
            }
            for chunk in handles.chunks(4) {
                let sqes: Vec<Sqe> = chunk
                    .iter()
                    .flat_map(|&h| {
                        let insert = posted(Sqe {
                            handle: h,
                            ..inline_insert(&value, 0)
                        });
                        [insert, posted(on(Opcode::Release, h))]
                    })
                    .collect();
                pairs += serve(&mut harness, &sqes);
            }
        }
        assert_eq!(registry.usage().objects, 0);
        assert_eq!(registry.usage().reserved, 0);
        let per = |d: Duration| d.as_nanos() as f64 / f64::from(rounds * 256);
        println!(
            "posted lives: grant {:.0} ns/handle, posted insert {:.0} ns, posted release {:.0} ns, \
             insert with its release behind {:.0} ns the two",
            per(grant),
            per(inserts),
            per(releases),
            per(pairs)
        );
    }
}
