//! When a replaced or removed value's heap block may be used again:
//! hazard-pointer reclamation across processes (the protocol is
//! `hreg_proto::pins`').
//!
//! A block that leaves its slot is put on a retired list (one of a few
//! stripes, each with its own small lock taken only to push or to take the
//! whole list, so the shard locks a retire runs under never wait on one
//! global lock). A pass, run off every shard lock and only once enough has
//! been retired (amortized: the blocks retired since the last pass number
//! at least twice the pins it read, plus a constant), takes the lists,
//! reads the pins of every session that may map a block's domain (asked of
//! the registry at scan time, never cached), frees each block no pin names
//! and keeps the rest for the next pass. Its cost is the pins published
//! plus the blocks retired (and the few held back, each named by a pin),
//! never a walk of everything waiting. A plain get pins nothing (the
//! seqlock catches a block reused under it), so with no borrowed references
//! every block is freed by the next pass.
//!
//! What pins hold back is charged to the uids of the sessions holding the
//! pins (the retirer's own quota is given back when it retires), and no
//! session's pins are honoured past the byte budget it was told (its
//! [`ReaderRegistration`]'s): a session that lies in its table harms only its own
//! borrowed bytes. A session that ends while its process lives on may
//! still be reading what it borrowed: its reader stays registered
//! ([`ReaderRegistration::outlive`]) until that process is gone or its table holds no
//! pin ([`Reclaimer::prune`]).
//!
//! A daemon that adopts a kept state cannot see the pin tables of the
//! sessions it kept until their clients come back (each brings its session
//! memory back): the blocks of the adopted heap (the gaps between its live
//! values, which held values retired before the restart, and the blocks of
//! values live at adoption that are freed meanwhile) stay in a quarantine
//! until every kept session has resumed or been given up. Blocks made after
//! the restart follow the rule above. Quarantined bytes count against no
//! quota: they are bounded by the heap that was adopted.

use crossbeam_utils::CachePadded;
use hreg_proto::locks::lock;
use hreg_proto::pins::{self, PinName, PinScan, PIN_ENTRIES};
use hreg_proto::shm::{Mapping, ReadWrite};
use hreg_proto::table::HeapAddress;
use rustix::fd::OwnedFd;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// Retired lists; a thread pushes to its own (threads are numbered round
/// robin), so workers rarely share one.
const STRIPES: usize = 8;

/// Blocks retired past which a pass is due, whatever the pins.
const PASS_FLOOR: usize = 64;

/// Bytes retired past which a pass is due, however few the blocks.
pub(crate) const PASS_BYTES: u64 = 4 << 20;

/// Blocks held back are looked at again at most this often when nothing
/// new was retired (milliseconds).
const HELD_RESCAN_MS: u64 = 50;

/// A block waiting to be freed.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Retired {
    pub domain: u16,
    pub at: HeapAddress,
    /// The length of the value it held (its size class follows), or of the
    /// gap.
    pub len: u64,
    /// A gap between an adopted heap's values (`len` bytes of it), not one
    /// value's block.
    pub gap: bool,
}

impl Retired {
    /// The names a pin on this block (or inside this gap) may carry: from
    /// its own to the one past its end.
    fn names(&self) -> Option<(PinName, PinName)> {
        let first = PinName::new(self.domain, self.at)?;
        Some((first, first.plus(self.len.max(1))))
    }

    /// Bytes a session holding it back is charged: the value's length; for
    /// a gap, at most one value (what one pin inside it can have borrowed).
    fn charge(&self, max_value: u64) -> u64 {
        if self.gap {
            self.len.min(max_value)
        } else {
            self.len
        }
    }
}

/// A session whose borrowed references hold blocks back, as the registry
/// keeps it. Everything read through it is the client's word.
#[derive(Debug)]
pub(crate) struct ReaderState {
    uid: u32,
    map: Arc<Mapping<ReadWrite>>,
    pins_at: usize,
    /// Bytes of held-back blocks its pins are honoured for.
    budget: u64,
    held_back: AtomicU64,
}

impl ReaderState {
    fn table(&self) -> Option<PinScan<'_, ReadWrite>> {
        PinScan::new(&self.map, self.pins_at, PIN_ENTRIES)
    }
}

/// A registered reader, and whether it outlives its session.
struct Registered {
    state: Arc<ReaderState>,
    /// Set when the session ended while its process may still read what it
    /// borrowed: a pidfd of that process, if known.
    outlived: Option<Option<OwnedFd>>,
}

/// Every registered reader.
#[derive(Default)]
pub(crate) struct Readers {
    next: u64,
    list: HashMap<u64, Registered>,
    /// How many of them outlive their session.
    outliving: usize,
}

/// A session registered as a reader ([`crate::Registry::reader`]):
/// reclamation honours its pins while this lives (and, once it has been
/// told to, while its process does: [`ReaderRegistration::outlive`]). Dropping it
/// deregisters the session unless it outlives it.
pub struct ReaderRegistration {
    id: u64,
    state: Arc<ReaderState>,
    readers: Arc<Mutex<Readers>>,
}

impl std::fmt::Debug for ReaderRegistration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReaderRegistration")
            .field("uid", &self.state.uid)
            .field("held_back", &self.held_back())
            .finish()
    }
}

impl ReaderRegistration {
    /// The uid of the session.
    pub fn uid(&self) -> u32 {
        self.state.uid
    }

    /// Bytes this session's pins held back at the last pass.
    pub fn held_back(&self) -> u64 {
        self.state.held_back.load(Ordering::Relaxed)
    }

    /// Whether the session's pin table names any block now.
    pub fn holds_pins(&self) -> bool {
        self.state.table().is_some_and(|table| table.any())
    }

    /// The session ends, but its process may still read what it borrowed:
    /// its pins stay honoured until `process` (a pidfd of it; `None` when
    /// it cannot be known) has exited, or its table holds no pin. Until
    /// then [`crate::Registry::prune_readers`] does not name its uid.
    pub fn outlive(&self, process: Option<OwnedFd>) {
        let mut readers = lock(&self.readers);
        if let Some(entry) = readers.list.get_mut(&self.id) {
            if entry.outlived.replace(process).is_none() {
                readers.outliving += 1;
            }
        }
    }

    /// Whether it was told to outlive its session.
    pub fn outlives(&self) -> bool {
        lock(&self.readers)
            .list
            .get(&self.id)
            .is_some_and(|entry| entry.outlived.is_some())
    }
}

impl Drop for ReaderRegistration {
    fn drop(&mut self) {
        let mut readers = lock(&self.readers);
        if readers
            .list
            .get(&self.id)
            .is_some_and(|entry| entry.outlived.is_none())
        {
            readers.list.remove(&self.id);
        }
    }
}

/// Blocks of an adopted state held back for the sessions it kept.
#[derive(Debug, Default)]
struct Quarantine {
    /// Kept sessions not back yet.
    outstanding: usize,
    /// For each (domain, heap chunk) of the adopted heap, the end of what
    /// it held: every block below it was there before the restart (the heap
    /// cuts new blocks only beyond it, and the gaps below it are held here).
    marks: HashMap<(u16, u16), u64>,
    /// The blocks held.
    blocks: Vec<Retired>,
}

impl Quarantine {
    fn holds(&self, block: &Retired) -> bool {
        self.outstanding > 0
            && (block.gap
                || self
                    .marks
                    .get(&(block.domain, block.at.chunk))
                    .is_some_and(|&end| block.at.offset < end))
    }
}

/// What a pass keeps from one to the next.
#[derive(Default)]
pub(crate) struct PassState {
    /// Blocks pins held back at the last pass.
    held: Vec<Retired>,
    quarantine: Quarantine,
    /// Bytes charged to each uid for what its sessions' pins hold back.
    charged: HashMap<u32, u64>,
}

/// What one pass decided.
#[derive(Default)]
pub(crate) struct Pass {
    /// Blocks to free now.
    pub free: Vec<Retired>,
    /// Uids whose charge for held-back bytes changed, with the new charge.
    pub charges: Vec<(u32, u64)>,
}

/// The retired blocks, the readers to ask, and the state between passes.
pub(crate) struct Reclaimer {
    stripes: Box<[CachePadded<Mutex<Vec<Retired>>>]>,
    /// Blocks on the stripes, not yet taken by a pass.
    queued: AtomicUsize,
    /// Their bytes.
    queued_bytes: AtomicU64,
    /// Bytes retired and not freed yet (queued, held back, quarantined).
    waiting: AtomicU64,
    /// A pass is due once this many blocks are queued.
    due_at: AtomicUsize,
    /// Blocks the last pass held back (and a quarantine released).
    held: AtomicUsize,
    /// When the last pass ran, in milliseconds of `clock`.
    last_pass: AtomicU64,
    clock: std::time::Instant,
    readers: Arc<Mutex<Readers>>,
    state: Mutex<PassState>,
}

impl Default for Reclaimer {
    fn default() -> Reclaimer {
        Reclaimer {
            stripes: (0..STRIPES).map(|_| CachePadded::default()).collect(),
            queued: AtomicUsize::new(0),
            queued_bytes: AtomicU64::new(0),
            waiting: AtomicU64::new(0),
            due_at: AtomicUsize::new(PASS_FLOOR),
            held: AtomicUsize::new(0),
            last_pass: AtomicU64::new(0),
            clock: std::time::Instant::now(),
            readers: Arc::default(),
            state: Mutex::default(),
        }
    }
}

impl Reclaimer {
    /// Puts a block that left its slot on this thread's retired list. The
    /// caller has written the slot's new version and fenced
    /// ([`pins::retired`]).
    pub fn retire(&self, block: Retired) {
        // Counted before the push: a pass never takes more than is counted.
        self.waiting.fetch_add(block.len, Ordering::Relaxed);
        self.queued_bytes.fetch_add(block.len, Ordering::Relaxed);
        self.queued.fetch_add(1, Ordering::Relaxed);
        lock(&self.stripes[stripe()]).push(block);
    }

    /// Sets up the quarantine of an adopted state: `outstanding` kept
    /// sessions, the end of what each adopted heap chunk held (`marks`),
    /// and the gaps between the adopted values.
    pub fn adopt(&self, outstanding: usize, marks: HashMap<(u16, u16), u64>, gaps: Vec<Retired>) {
        let mut state = lock(&self.state);
        state.quarantine = Quarantine {
            outstanding,
            marks,
            blocks: gaps,
        };
        if outstanding == 0 {
            state.release_quarantine();
        }
        self.held.store(state.held.len(), Ordering::Relaxed);
    }

    /// Whether enough was retired for a pass to be worth its scan.
    pub fn due(&self) -> bool {
        self.queued.load(Ordering::Relaxed) >= self.due_at.load(Ordering::Relaxed)
            || self.queued_bytes.load(Ordering::Relaxed) >= PASS_BYTES
    }

    /// Whether a pass may free something: blocks retired since the last
    /// one, or blocks the last one held back.
    pub fn pending(&self) -> bool {
        self.queued.load(Ordering::Relaxed) > 0 || self.held.load(Ordering::Relaxed) > 0
    }

    /// Whether a pass is worth running though none is [`Reclaimer::due`]:
    /// blocks were retired since the last one, however few, or blocks the
    /// last one held back were looked at a while ago (a borrow that lasts
    /// costs a scan now and then, not one per call).
    pub fn lagging(&self) -> bool {
        self.queued.load(Ordering::Relaxed) > 0
            || (self.held.load(Ordering::Relaxed) > 0
                && self.clock.elapsed().as_millis() as u64
                    >= self.last_pass.load(Ordering::Relaxed) + HELD_RESCAN_MS)
    }

    /// Bytes retired and not yet freed.
    pub fn waiting(&self) -> u64 {
        self.waiting.load(Ordering::Relaxed)
    }

    /// Counts freed blocks out.
    pub fn freed(&self, bytes: u64) {
        self.waiting.fetch_sub(bytes, Ordering::Relaxed);
    }

    /// Registers a session of `uid` whose pin table lies at `pins_at` in
    /// `map`, honoured for up to `budget` bytes of held-back blocks.
    pub fn register(
        &self,
        uid: u32,
        map: Arc<Mapping<ReadWrite>>,
        pins_at: usize,
        budget: u64,
    ) -> ReaderRegistration {
        let state = Arc::new(ReaderState {
            uid,
            map,
            pins_at,
            budget,
            held_back: AtomicU64::new(0),
        });
        let mut readers = lock(&self.readers);
        readers.next += 1;
        let id = readers.next;
        readers.list.insert(
            id,
            Registered {
                state: Arc::clone(&state),
                outlived: None,
            },
        );
        drop(readers);
        ReaderRegistration {
            id,
            state,
            readers: Arc::clone(&self.readers),
        }
    }

    /// Registered readers (sessions, and those that outlive theirs).
    pub fn readers(&self) -> usize {
        lock(&self.readers).list.len()
    }

    /// How many registered readers outlive their session.
    pub fn outliving(&self) -> usize {
        lock(&self.readers).outliving
    }

    /// Deregisters readers that outlived their session and need not any
    /// more: their process has exited, or their table holds no pin.
    pub fn prune(&self) -> Vec<u32> {
        let mut readers = lock(&self.readers);
        if readers.outliving == 0 {
            return Vec::new();
        }
        let mut pruned = Vec::new();
        readers.list.retain(|_, entry| match &entry.outlived {
            None => true,
            Some(process) => {
                let pins = entry.state.table().is_some_and(|table| table.any());
                let keep = pins && process.as_ref().is_none_or(running);
                if !keep {
                    pruned.push(entry.state.uid);
                }
                keep
            }
        });
        readers.outliving -= pruned.len();
        pruned
    }

    /// One pass, if none is under way (another one's is as good): takes
    /// the retired lists, reads the pins, and returns what may be freed now
    /// and the charges that changed. `may_map` says whether a session of a
    /// uid may map a domain; `max_value` is the longest value.
    pub fn pass(&self, may_map: impl Fn(u32, u16) -> bool, max_value: u64) -> Option<Pass> {
        let mut state = self.state.try_lock().ok()?;
        self.last_pass
            .store(self.clock.elapsed().as_millis() as u64, Ordering::Relaxed);
        let mut blocks = std::mem::take(&mut state.held);
        let (mut taken, mut taken_bytes) = (0, 0);
        for stripe in self.stripes.iter() {
            let mut list = lock(stripe);
            taken += list.len();
            taken_bytes += list.iter().map(|b| b.len).sum::<u64>();
            if blocks.is_empty() {
                std::mem::swap(&mut blocks, &mut list);
            } else {
                blocks.append(&mut list);
            }
        }
        self.queued.fetch_sub(taken, Ordering::Relaxed);
        self.queued_bytes.fetch_sub(taken_bytes, Ordering::Relaxed);
        if state.quarantine.outstanding > 0 {
            let quarantine = &mut state.quarantine;
            blocks.retain(|block| {
                let hold = quarantine.holds(block);
                if hold {
                    quarantine.blocks.push(*block);
                }
                !hold
            });
        }
        pins::begin_scan();
        let readers: Vec<Arc<ReaderState>> = lock(&self.readers)
            .list
            .values()
            .map(|entry| Arc::clone(&entry.state))
            .collect();
        // Every name a reader may pin, with the reader's index, sorted: the
        // pins on a block (or inside a gap) are one range of it.
        let mut pinned: Vec<(PinName, usize)> = Vec::new();
        for (index, reader) in readers.iter().enumerate() {
            reader.held_back.store(0, Ordering::Relaxed);
            if let Some(table) = reader.table() {
                table.scan(|name| {
                    if may_map(reader.uid, name.domain()) {
                        pinned.push((name, index));
                    }
                });
            }
        }
        pinned.sort_unstable();
        pinned.dedup();
        let mut pass = Pass::default();
        let mut left: Vec<u64> = readers.iter().map(|r| r.budget).collect();
        let mut charged: HashMap<u32, u64> = HashMap::new();
        let mut holders: Vec<usize> = Vec::new();
        for block in blocks {
            holders.clear();
            if let Some((first, end)) = block.names().filter(|_| !pinned.is_empty()) {
                let from = pinned.partition_point(|&(name, _)| name < first);
                let charge = block.charge(max_value);
                for &(name, reader) in pinned[from..].iter().take_while(|(n, _)| *n < end) {
                    debug_assert!(name >= first);
                    if holders.contains(&reader) || left[reader] < charge {
                        // Counted already, or past what the session was
                        // told it may hold: not honoured.
                        continue;
                    }
                    left[reader] -= charge;
                    holders.push(reader);
                }
                let mut uids: Vec<u32> = holders.iter().map(|&r| readers[r].uid).collect();
                uids.sort_unstable();
                uids.dedup();
                for &r in &holders {
                    readers[r].held_back.fetch_add(charge, Ordering::Relaxed);
                }
                for uid in uids {
                    *charged.entry(uid).or_default() += charge;
                }
            }
            if holders.is_empty() {
                pass.free.push(block);
            } else {
                state.held.push(block);
            }
        }
        for (&uid, &bytes) in &charged {
            if state.charged.get(&uid) != Some(&bytes) {
                pass.charges.push((uid, bytes));
            }
        }
        for &uid in state.charged.keys() {
            if !charged.contains_key(&uid) {
                pass.charges.push((uid, 0));
            }
        }
        state.charged = charged;
        // The next pass is due once the blocks retired pay for reading the
        // pins again.
        self.due_at.store(
            PASS_FLOOR + 2 * pinned.len() + readers.len(),
            Ordering::Relaxed,
        );
        self.held.store(state.held.len(), Ordering::Relaxed);
        Some(pass)
    }

    /// A kept session came back or was given up; when none is left out,
    /// the quarantine's blocks go to the next pass.
    pub fn one_kept_session_less(&self) {
        let mut state = lock(&self.state);
        state.quarantine.outstanding = state.quarantine.outstanding.saturating_sub(1);
        if state.quarantine.outstanding == 0 {
            state.release_quarantine();
        }
        self.held.store(state.held.len(), Ordering::Relaxed);
    }

    /// Bytes quarantined now (tests).
    #[cfg(test)]
    pub fn quarantined(&self) -> u64 {
        lock(&self.state)
            .quarantine
            .blocks
            .iter()
            .map(|b| b.len)
            .sum()
    }
}

impl PassState {
    /// Ends the quarantine: its blocks are looked at by the next pass like
    /// any other.
    fn release_quarantine(&mut self) {
        let blocks = std::mem::take(&mut self.quarantine.blocks);
        self.held.extend(blocks);
        self.quarantine.marks = HashMap::new();
    }
}

/// Whether the process a pidfd refers to is still running (a pidfd reads
/// as readable once it has exited).
fn running(pidfd: &OwnedFd) -> bool {
    use rustix::event::{poll, PollFd, PollFlags, Timespec};
    let mut fds = [PollFd::new(pidfd, PollFlags::IN)];
    let now = Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    match poll(&mut fds, Some(&now)) {
        Ok(0) => true,
        Ok(_) => !fds[0]
            .revents()
            .intersects(PollFlags::IN | PollFlags::HUP | PollFlags::ERR),
        Err(_) => true,
    }
}

/// The retired list this thread pushes to.
fn stripe() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static MINE: usize = NEXT.fetch_add(1, Ordering::Relaxed) % STRIPES;
    }
    MINE.try_with(|n| *n).unwrap_or(0)
}

/// A test hook of debug builds: `HREG_TEST_READER_PAUSE=UID:MS` makes the
/// registration of every reader of uid UID wait MS milliseconds first, so
/// a test can make another session of that uid create its private domain
/// meanwhile (the registration race of issue 17, which asking the registry
/// at scan time closes).
pub(crate) fn test_pause(uid: u32) {
    #[cfg(debug_assertions)]
    {
        static PAUSE: std::sync::OnceLock<Option<(u32, u64)>> = std::sync::OnceLock::new();
        let pause = PAUSE.get_or_init(|| {
            let value = std::env::var("HREG_TEST_READER_PAUSE").ok()?;
            let (who, ms) = value.split_once(':')?;
            Some((who.parse().ok()?, ms.parse().ok()?))
        });
        if let Some((who, ms)) = *pause {
            if who == uid {
                std::thread::sleep(std::time::Duration::from_millis(ms));
            }
        }
    }
    #[cfg(not(debug_assertions))]
    let _ = uid;
}
