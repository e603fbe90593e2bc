//! Which ring a thread uses: each OS thread gets its own ring of a client's
//! session on its first request, kept in a thread-local list keyed by the
//! session and closed (RING_CLOSE) when the thread exits; past the daemon's
//! ring cap (or while a thread is exiting), threads share one ring under
//! its lock. Rings opened before the session resumed belong to the daemon
//! that went away: they are dropped (never closed) and new ones opened.
//!
//! Or, once a client asks for it ([`Rings::use_pool`]: runtimes such as
//! Go's that run calls on ever-changing OS threads), a call takes a free
//! ring of a small pool the client shares, whatever its thread.

use crate::control_socket;
use crate::engine::{self, Context, RingState};
use crate::error::{Error, Result};
use crate::mapped;
use crate::reads::thread_number;
use crate::session::{refusal, ClientSession};
use hreg_proto::control::{ControlRequest, Reply};
use hreg_proto::locks::lock;
use hreg_proto::Status;
use rustix::fd::{AsFd, OwnedFd};
use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, TryLockError, Weak};

/// A client's rings: those its threads opened that may still be alive, and
/// the one threads share once the daemon has no more rings for it; or, in
/// pool mode, the pool.
#[derive(Default)]
pub(crate) struct Rings {
    table: Mutex<RingTable>,
    pool: OnceLock<Pool>,
}

/// Largest ring pool a client may ask for (the daemon's default ring cap).
const MAX_POOL: usize = 64;

/// Rings any thread may take: each place holds a ring once one was needed
/// there (replaced when the session resumed).
struct Pool {
    places: Box<[Mutex<Option<Arc<RingCell>>>]>,
}

#[derive(Default)]
struct RingTable {
    open: Vec<Weak<RingCell>>,
    overflow: Option<Arc<RingCell>>,
}

/// One open ring: its index, its doorbell, and the client's state for it
/// behind a lock that only its own thread takes (or the sharing threads,
/// past the cap).
pub(crate) struct RingCell {
    session: Weak<ClientSession>,
    pid: u32,
    /// The session's generation when the ring was opened.
    generation: u64,
    index: u32,
    /// Where the ready word of the ring's worker lies in the session memory
    /// (`None`: a daemon without ready words).
    ready_at: Option<u64>,
    doorbell: OwnedFd,
    state: Mutex<RingState>,
    /// Set once the ring is dropped and what was posted on it applied
    /// (see [`RingCell::gone`]).
    gone: Arc<AtomicBool>,
}

impl RingTable {
    /// Forgets rings that are gone, or of a generation before `generation`.
    fn forget_stale(&mut self, generation: u64) {
        self.open
            .retain(|r| r.upgrade().is_some_and(|r| r.generation == generation));
        if self
            .overflow
            .as_ref()
            .is_some_and(|r| r.generation != generation)
        {
            self.overflow = None;
        }
    }
}

impl RingCell {
    /// The session generation the ring was opened in (a ring of an older
    /// one belongs to a daemon gone away).
    pub(crate) fn generation(&self) -> u64 {
        self.generation
    }

    /// A flag that outlives the ring: true once it is dropped and every
    /// write posted on it was applied. A write that follows a handle's
    /// earlier writes, and finds their ring no longer there (its last
    /// reference went, maybe on another thread, while its drop is still
    /// applying them), waits for this before it goes on another ring.
    pub(crate) fn gone(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.gone)
    }

    pub(crate) fn lock(&self) -> Result<MutexGuard<'_, RingState>> {
        self.state
            .lock()
            .map_err(|_| Error::Protocol("ring state poisoned by a panic".into()))
    }

    /// Runs `body` on this ring of `session`, its state `state` (locked by
    /// the caller).
    pub(crate) fn run<T>(
        &self,
        session: &ClientSession,
        state: &mut RingState,
        body: impl FnOnce(&Context<'_>, &mut RingState) -> Result<T>,
    ) -> Result<T> {
        let cx = Context {
            ring: session.ring(self.index)?,
            index: self.index,
            ready: self
                .ready_at
                .map(|offset| session.ready_word(offset))
                .transpose()?,
            doorbell: self.doorbell.as_fd(),
            liveness: session,
            max_value_size: session.welcome().max_value_size,
            posting: &session.posting,
        };
        body(&cx, state)
    }
}

impl Drop for RingCell {
    fn drop(&mut self) {
        self.close();
        // Whatever happened (settled, or nothing left to wait for).
        self.gone.store(true, Ordering::Release);
    }
}

impl RingCell {
    /// What its drop does first: applies what the ring holds and closes it.
    fn close(&self) {
        // Only the process that opened the ring closes it, and only while
        // the session lives (otherwise the daemon frees it with the session).
        if self.pid != mapped::current_pid() {
            return;
        }
        if let Some(session) = self.session.upgrade() {
            // A ring of the daemon before a resume is not this daemon's.
            if session.generation() == self.generation {
                // What this ring posted is applied before it goes (its
                // thread exits), so that the client's reads and flushes
                // need not wait for a ring they can no longer reach.
                if let Ok(mut state) = self.state.lock() {
                    let _ = self.run(&session, &mut state, engine::settle);
                }
                let _ = session.call(&ControlRequest::RingClose { index: self.index });
            }
        }
    }
}

/// This thread's rings, one per session it has used.
struct LocalRing {
    session_key: u64,
    session: Weak<ClientSession>,
    ring: Arc<RingCell>,
}

thread_local! {
    static LOCAL_RINGS: RefCell<Vec<LocalRing>> = const { RefCell::new(Vec::new()) };
}

impl Rings {
    fn lock(&self) -> MutexGuard<'_, RingTable> {
        // The table holds only weak and strong pointers; a panic while it
        // was locked leaves it consistent.
        lock(&self.table)
    }

    /// Switches to pool mode with up to `rings` rings; false if already
    /// switched or `rings` is out of range.
    pub(crate) fn use_pool(&self, rings: usize) -> bool {
        if !(1..=MAX_POOL).contains(&rings) {
            return false;
        }
        let pool = Pool {
            places: (0..rings).map(|_| Mutex::new(None)).collect(),
        };
        self.pool.set(pool).is_ok()
    }

    /// The ring a call on this thread uses: its own, or one of the pool.
    pub(crate) fn pick(&self, session: &Arc<ClientSession>) -> Result<Arc<RingCell>> {
        match self.pool.get() {
            Some(pool) => self.pooled(pool, session),
            None => self.for_this_thread(session),
        }
    }

    /// A ring of the pool: a free one of this session generation, else a
    /// new one in a place that has none (or a dead one), else the busy one
    /// this thread's number picks (the caller waits for its lock).
    fn pooled(&self, pool: &Pool, session: &Arc<ClientSession>) -> Result<Arc<RingCell>> {
        let generation = session.generation();
        let current = |place: &Option<Arc<RingCell>>| {
            place
                .as_ref()
                .filter(|cell| cell.generation == generation)
                .cloned()
        };
        // From this thread's place on: threads that find their own free do
        // not pass each other's locks around.
        let first = thread_number() % pool.places.len();
        let (theirs, from_mine) = pool.places.split_at(first);
        for place in from_mine.iter().chain(theirs) {
            let Some(cell) = place.try_lock().ok().and_then(|p| current(&p)) else {
                continue;
            };
            let free = match cell.state.try_lock() {
                Ok(_) | Err(TryLockError::Poisoned(_)) => true,
                Err(TryLockError::WouldBlock) => false,
            };
            if free {
                return Ok(cell);
            }
        }
        for place in pool.places.iter() {
            let mut place = lock(place);
            if current(&place).is_none() {
                let cell = self.open(session)?;
                *place = Some(cell.clone());
                return Ok(cell);
            }
        }
        let mine = &pool.places[first];
        let mut place = lock(mine);
        match current(&place) {
            Some(cell) => Ok(cell),
            // Replaced meanwhile by a resume: open anew.
            None => {
                let cell = self.open(session)?;
                *place = Some(cell.clone());
                Ok(cell)
            }
        }
    }

    /// Every ring of the current session generation this client has open
    /// (its threads', the shared one, the pool's): what a flush settles.
    pub(crate) fn cells(&self, session: &Arc<ClientSession>) -> Vec<Arc<RingCell>> {
        let generation = session.generation();
        let mut cells: Vec<Arc<RingCell>> = {
            let table = self.lock();
            table
                .open
                .iter()
                .filter_map(Weak::upgrade)
                .chain(table.overflow.clone())
                .collect()
        };
        if let Some(pool) = self.pool.get() {
            for place in pool.places.iter() {
                let place = lock(place);
                cells.extend(place.clone());
            }
        }
        cells.retain(|cell| cell.generation == generation);
        cells.sort_by_key(|cell| cell.index);
        cells.dedup_by_key(|cell| cell.index);
        cells
    }

    /// This thread's ring for `session`, opening one on first use.
    pub(crate) fn for_this_thread(&self, session: &Arc<ClientSession>) -> Result<Arc<RingCell>> {
        let key = session.key();
        let generation = session.generation();
        let found = LOCAL_RINGS.try_with(|rings| {
            rings
                .borrow()
                .iter()
                .find(|r| r.session_key == key && r.ring.generation == generation)
                .map(|r| r.ring.clone())
        });
        match found {
            Ok(Some(ring)) => Ok(ring),
            Ok(None) => {
                let ring = self.open(session)?;
                let stale = LOCAL_RINGS.try_with(|rings| {
                    let mut rings = rings.borrow_mut();
                    // Forget rings of sessions that are gone; drop them
                    // after the borrow ends.
                    let (keep, stale): (Vec<_>, Vec<_>) =
                        std::mem::take(&mut *rings).into_iter().partition(|r| {
                            r.session.strong_count() > 0
                                && (r.session_key != key || r.ring.generation == generation)
                        });
                    *rings = keep;
                    rings.push(LocalRing {
                        session_key: key,
                        session: Arc::downgrade(session),
                        ring: ring.clone(),
                    });
                    stale
                });
                drop(stale);
                Ok(ring)
            }
            // The thread is exiting and its locals are gone: share.
            Err(_) => self.shared(session),
        }
    }

    /// Asks the daemon for a ring; past the cap, shares one we already have.
    fn open(&self, session: &Arc<ClientSession>) -> Result<Arc<RingCell>> {
        match session.call(&ControlRequest::RingOpen)? {
            (Reply::RingOpened { index, ready_at }, fds) => {
                let doorbell = control_socket::one_fd(fds, "RING_OPENED")?;
                session.ring(index)?;
                if let Some(offset) = ready_at {
                    session.ready_word(offset)?;
                }
                let cell = Arc::new(RingCell {
                    session: Arc::downgrade(session),
                    pid: session.pid(),
                    generation: session.generation(),
                    index,
                    ready_at,
                    doorbell,
                    state: Mutex::new(RingState::default()),
                    gone: Arc::default(),
                });
                let mut table = self.lock();
                table.forget_stale(cell.generation);
                table.open.push(Arc::downgrade(&cell));
                Ok(cell)
            }
            (Reply::Error { status, message }, _) if status == Status::Quota as u32 => {
                let mut table = self.lock();
                table.forget_stale(session.generation());
                if let Some(ring) = &table.overflow {
                    return Ok(ring.clone());
                }
                let ring = table
                    .open
                    .iter()
                    .find_map(Weak::upgrade)
                    .ok_or_else(|| refusal(status, message))?;
                table.overflow = Some(ring.clone());
                Ok(ring)
            }
            (Reply::Error { status, message }, _) => Err(refusal(status, message)),
            (other, _) => Err(Error::Protocol(format!(
                "unexpected reply to RING_OPEN: {other:?}"
            ))),
        }
    }

    /// A ring for a thread that cannot keep one of its own.
    fn shared(&self, session: &Arc<ClientSession>) -> Result<Arc<RingCell>> {
        {
            let mut table = self.lock();
            table.forget_stale(session.generation());
            if let Some(ring) = &table.overflow {
                return Ok(ring.clone());
            }
            if let Some(ring) = table.open.iter().find_map(Weak::upgrade) {
                table.overflow = Some(ring.clone());
                return Ok(ring);
            }
        }
        // No ring at all yet: open one (without holding the table, which
        // `open` locks after the control socket) and make it the shared
        // one. A ring opened meanwhile by another thread is dropped, and so
        // closed, outside the lock.
        let ring = self.open(session)?;
        let mut table = self.lock();
        let shared = table.overflow.get_or_insert_with(|| ring.clone()).clone();
        drop(table);
        drop(ring);
        Ok(shared)
    }

    /// Forgets this thread's ring of `session` now (other threads do it
    /// lazily): the client is gone, and the session's end frees the ring in
    /// the daemon, so no RING_CLOSE is sent.
    pub(crate) fn forget_local(session_key: u64) {
        let mine = LOCAL_RINGS.try_with(|rings| {
            rings.try_borrow_mut().ok().map(|mut rings| {
                let (gone, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut *rings)
                    .into_iter()
                    .partition(|r| r.session_key == session_key);
                *rings = keep;
                gone
            })
        });
        drop(mine);
    }
}
