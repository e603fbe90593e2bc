//! Ring workers: threads that serve the rings assigned to them.
//!
//! A worker polls its rings while there is work, spins (yielding) for a short
//! while when there is none, then announces NEED_WAKEUP on every ring and
//! sleeps in `epoll` on the rings' doorbell eventfds. A ring whose completion
//! queue is full is skipped, so one slow client cannot stall the others; a
//! ring whose counters make no sense closes its session.

use crate::doorbell::Doorbell;
use crate::ratelimit::warn_limited;
use crate::session::Session;
use crate::sync::lock;
use crossbeam_utils::CachePadded;
use hreg_proto::entry::{
    cqe_flags, Cqe, RingRequest, Sqe, ValueSource, ENTRY_SIZE, INLINE_CAPACITY,
};
use hreg_proto::handle::Handle;
use hreg_proto::ring::{ServerRing, SharedRing, Wake};
use hreg_proto::sync::AtomicU32;
use hreg_proto::{Limit, Status};
use hreg_registry::{Holder, Refusal, Registry};
use rustix::event::epoll;
use rustix::fd::OwnedFd;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a worker keeps polling after its last piece of work.
const SPIN: Duration = Duration::from_micros(50);

/// Empty polls between yields while spinning.
const YIELD_EVERY: u32 = 256;

/// Empty polls between reads of the clock while spinning (a clock read
/// costs more than a poll of an idle ring).
const CLOCK_EVERY: u32 = 32;

/// epoll key of the worker's own command doorbell.
const COMMAND_KEY: u64 = u64::MAX;

/// The side of a worker that other threads see.
pub struct Worker {
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
}

enum Command {
    Serve(Box<ServedRing>),
    Close { session: u64, index: u32 },
}

impl Worker {
    pub fn new(registry: Arc<Registry>) -> io::Result<Worker> {
        Ok(Worker {
            registry,
            commands: Mutex::default(),
            has_commands: AtomicBool::new(false),
            bell: Doorbell::new()?,
            rings: AtomicUsize::new(0),
            ops: CachePadded::new(AtomicU64::new(0)),
            stop: AtomicBool::new(false),
        })
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
    /// the client learnt of it), woken by `doorbell`.
    pub fn serve(&self, session: Arc<Session>, index: u32, doorbell: Doorbell) {
        let Some(ring) = ServedRing::new(session, index, doorbell) else {
            return;
        };
        self.rings.fetch_add(1, Ordering::Relaxed);
        self.send(Command::Serve(Box::new(ring)));
    }

    /// Stops serving a ring; its index is freed once the worker lets go.
    pub fn close_ring(&self, session: u64, index: u32) {
        self.send(Command::Close { session, index });
    }

    /// Wakes the worker so it notices closed sessions.
    pub fn nudge(&self) {
        self.bell.ring();
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
        let mut state = WorkerState {
            poll,
            rings: Vec::new(),
            scratch: Vec::new(),
        };
        let mut last_work = Instant::now();
        let mut idle_polls = 0u32;
        let mut events = Vec::with_capacity(64);
        while !self.stop.load(Ordering::Acquire) {
            self.take_commands(&mut state);
            let (entries, public) = state.serve_all();
            if self.registry.reclaim_due() {
                self.registry.reclaim();
            }
            if entries > 0 {
                self.ops.fetch_add(public, Ordering::Relaxed);
                last_work = Instant::now();
                continue;
            }
            idle_polls = idle_polls.wrapping_add(1);
            if !idle_polls.is_multiple_of(CLOCK_EVERY) || last_work.elapsed() < SPIN {
                // Mostly a CPU pause (a syscall per empty poll would delay
                // noticing work); a yield now and then lets a client that
                // shares this core run.
                if idle_polls.is_multiple_of(YIELD_EVERY) {
                    std::thread::yield_now();
                } else {
                    std::hint::spin_loop();
                }
                continue;
            }
            // Announce sleep, then look once more: a client that published
            // its tail before seeing the flag is caught by this re-check.
            if !state.begin_sleep() || !lock(&self.commands).is_empty() {
                state.end_sleep();
                continue;
            }
            events.clear();
            match epoll::wait(
                &state.poll,
                rustix::buffer::spare_capacity(&mut events),
                None,
            ) {
                Ok(_) | Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(e.into()),
            }
            for event in &events {
                let key = event.data.u64();
                if key == COMMAND_KEY {
                    self.bell.drain();
                } else if let Some(ring) = state.rings.iter().find(|r| r.key() == key) {
                    ring.doorbell.drain();
                }
            }
            state.end_sleep();
            last_work = Instant::now();
        }
        Ok(())
    }

    fn take_commands(&self, state: &mut WorkerState) {
        // Cleared before the take: a command queued meanwhile sets it again.
        if !self.has_commands.swap(false, Ordering::Acquire) {
            self.count_rings(state);
            return;
        }
        let commands = std::mem::take(&mut *lock(&self.commands));
        for command in commands {
            match command {
                Command::Serve(ring) => state.add(*ring),
                Command::Close { session, index } => {
                    state.remove(|r| r.session.id == session && r.ring.index() == index);
                }
            }
        }
        self.count_rings(state);
    }

    /// Stops serving closed sessions' rings (dropping a ServedRing frees its
    /// index) and publishes how many are left.
    fn count_rings(&self, state: &mut WorkerState) {
        let before = state.rings.len();
        state.remove(|r| r.session.is_closed());
        if state.rings.len() != before || !state.rings.is_empty() {
            self.rings.store(state.rings.len(), Ordering::Relaxed);
        }
    }
}

struct WorkerState {
    /// The epoll set of the worker's doorbell and its rings' doorbells.
    /// Every ring in `rings` is in it, and no other: a ring leaves it before
    /// it is dropped (see [`WorkerState::remove`]), because the client
    /// keeps a copy of the doorbell and epoll forgets a file only when every
    /// copy is closed.
    poll: OwnedFd,
    rings: Vec<ServedRing>,
    /// Where a value from a client's data area is copied before use.
    scratch: Vec<u8>,
}

impl WorkerState {
    /// Starts serving `ring`; a ring whose doorbell cannot be watched
    /// closes its session.
    fn add(&mut self, ring: ServedRing) {
        if epoll::add(
            &self.poll,
            &ring.doorbell,
            epoll::EventData::new_u64(ring.key()),
            epoll::EventFlags::IN,
        )
        .is_err()
        {
            ring.session.close();
            return;
        }
        self.rings.push(ring);
    }

    /// Stops serving the rings that match `gone`: out of the epoll set,
    /// then dropped.
    fn remove(&mut self, gone: impl Fn(&ServedRing) -> bool) {
        let poll = &self.poll;
        self.rings.retain(|ring| {
            if gone(ring) {
                let _ = epoll::delete(poll, &ring.doorbell);
                false
            } else {
                true
            }
        });
    }

    /// Serves every ring once; returns the entries and the public requests
    /// served.
    fn serve_all(&mut self) -> (u64, u64) {
        let mut served = (0, 0);
        for ring in &mut self.rings {
            match ring.serve(&mut self.scratch) {
                Ok((entries, public)) => {
                    served.0 += entries;
                    served.1 += public;
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
                }
            }
        }
        self.remove(|r| r.session.is_closed());
        served
    }

    /// Sets NEED_WAKEUP on every ring; returns false when one of them has
    /// work after all. A ring whose CQ is full has none: it cannot be
    /// served until its client frees completions, and a client that wants
    /// service rings the doorbell (a well-behaved one never has more
    /// entries in flight than its CQ holds, so it never gets here).
    fn begin_sleep(&self) -> bool {
        let mut idle = true;
        for ring in &self.rings {
            idle &= ring.ring.view().prepare_sleep(ring.ring.counters());
        }
        idle
    }

    fn end_sleep(&self) {
        for ring in &self.rings {
            ring.ring.view().end_sleep();
        }
    }
}

/// One ring as its worker sees it: the ring (its mapping held alive, the
/// daemon's own positions), its doorbell, and what its requests leave
/// behind between entries (a large value in pieces).
struct ServedRing {
    session: Arc<Session>,
    ring: SharedRing,
    doorbell: Doorbell,
    staging: Staging,
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
    fn new(session: Arc<Session>, index: u32, doorbell: Doorbell) -> Option<ServedRing> {
        let ring = session.memory.shared_ring(index)?;
        Some(ServedRing {
            session,
            ring,
            doorbell,
            staging: Staging::default(),
        })
    }

    fn key(&self) -> u64 {
        (self.session.id << 16) | u64::from(self.ring.index())
    }

    /// Serves what the ring holds, as far as the CQ has room. Returns the
    /// entries and the public requests served, or why the session must close.
    fn serve(&mut self, scratch: &mut Vec<u8>) -> Result<(u64, u64), &'static str> {
        let (view, counters) = self.ring.get();
        let session = &*self.session;
        let staging = &mut self.staging;
        let mut public = 0;
        let served = view
            .serve(counters, &FutexWake, |raw| {
                let (cqe, is_public) = execute(raw, view, session, staging, scratch);
                public += u64::from(is_public);
                cqe.encode()
            })
            .map_err(|_| "CQ head outside the ring")?;
        Ok((u64::from(served), public))
    }
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
        Ok(RingRequest::StageWrite { .. } | RingRequest::StageRead { .. })
    );
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
    let Err(refusal) = result else {
        cqe.status = Status::Ok as u32;
        return (cqe, public);
    };
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
            RingRequest::Insert { flags, value } => {
                let bytes = self.value_in(value, registry, scratch)?;
                self.cqe.handle = registry.insert(holder, bytes, flags)?.get();
                self.consumed(value);
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
    use crate::shm::SessionMemory;
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

    struct Bench {
        ring: ServedRing,
        counters: ClientCounters,
        scratch: Vec<u8>,
    }

    impl Bench {
        fn new(limits: Limits) -> Bench {
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
            let ring = ServedRing::new(session, index, Doorbell::new().unwrap()).unwrap();
            Bench {
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
            let (served, _) = self.ring.serve(&mut self.scratch).unwrap();
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
        let mut bench = Bench::new(Limits::default());
        let done = bench.run(&[], &[inline_insert(b"hello", 0)]);
        assert_eq!(done[0].status, OK);
        let h = done[0].handle;
        let done = bench.run(
            &[],
            &[get(h, 0, 64), on(Opcode::Retain, h), on(Opcode::Release, h)],
        );
        assert!(done.iter().all(|c| c.status == OK));
        assert_eq!(done[0].entry_flags, cqe_flags::INLINE);
        assert_eq!(&done[0].inline[..done[0].value_len as usize], b"hello");
        assert_eq!(bench.session().holder.reference_count(), 1);
        // Bad entries are answered, each on its own, and the ring goes on.
        let done = bench.run(
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
        assert_eq!(bench.ring.serve(&mut Vec::new()).unwrap(), (0, 0));
    }

    #[test]
    fn values_in_the_data_area_and_in_pieces() {
        let mut bench = Bench::new(Limits::default());
        // 48 bytes through the data area.
        let value: Vec<u8> = (0..48).collect();
        let insert = Sqe {
            opcode: Opcode::Insert as u8,
            data_len: 48,
            ..Sqe::default()
        };
        let h = bench.run(&value, &[insert])[0].handle;
        let done = bench.run(&[], &[get(h, 64, 64)]);
        assert_eq!(done[0].entry_flags, cqe_flags::IN_DATA);
        assert_eq!(bench.data(done[0].data_off, 48), value);
        // 100 bytes in pieces: staged in, then a GET whose region is too
        // small is answered STAGED and read back in pieces.
        let big: Vec<u8> = (0..100).map(|i| i as u8 ^ 0x5a).collect();
        bench.run(&big[..64], &[stage(Opcode::StageWrite, 0, 64)]);
        bench.run(&big[64..], &[stage(Opcode::StageWrite, 64, 36)]);
        assert_eq!(bench.session().holder.staged_bytes(), 100);
        let insert = Sqe {
            entry_flags: sqe_flags::STAGED,
            data_len: 100,
            ..inline_insert(b"", flags::SHARED)
        };
        let done = bench.run(&[], &[insert]);
        assert_eq!(done[0].status, OK);
        assert_eq!(bench.session().holder.staged_bytes(), 0, "used up");
        let big_h = done[0].handle;
        let done = bench.run(&[], &[get(big_h, 32, 1000)]);
        assert_eq!(done[0].entry_flags, cqe_flags::STAGED);
        assert_eq!(done[0].value_len, 100);
        assert_eq!(bench.session().holder.staged_bytes(), 100, "a snapshot");
        let mut read = Vec::new();
        while read.len() < 100 {
            let done = bench.run(&[], &[stage(Opcode::StageRead, read.len() as u64, 64)]);
            read.extend(bench.data(0, done[0].value_len as usize));
        }
        assert_eq!(read, big);
        assert_eq!(bench.session().holder.staged_bytes(), 0, "read back");
        // A STAGED insert whose length is not the staged one is INVALID.
        let insert = Sqe {
            entry_flags: sqe_flags::STAGED,
            data_len: 7,
            ..inline_insert(b"", 0)
        };
        assert_eq!(bench.run(&[], &[insert])[0].status, Status::Invalid as u32);
    }

    #[test]
    fn a_quota_completion_names_its_limit() {
        let mut bench = Bench::new(Limits {
            max_objects: 1,
            ..Limits::default()
        });
        let done = bench.run(&[], &[inline_insert(b"a", 0), inline_insert(b"b", 0)]);
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
        let mut bench = Bench::new(limits);
        let chunk = [1u8; 64];
        let done = bench.run(&chunk, &[stage(Opcode::StageWrite, 0, 64)]);
        assert_eq!(done[0].status, OK);
        // 128 staged bytes would pass the uid's 100.
        let done = bench.run(&chunk, &[stage(Opcode::StageWrite, 64, 64)]);
        assert_eq!(done[0].status, Status::Quota as u32);
        assert_eq!(done[0].value_len, Limit::UidMaxBytes.code());
        assert_eq!(bench.session().holder.staged_bytes(), 64);
        // Past the value size: TOO_BIG, and nothing more is charged.
        let done = bench.run(&chunk, &[stage(Opcode::StageWrite, 64, 64 * 16)]);
        assert_ne!(done[0].status, OK);
        // The ring's end gives the charge back.
        let session = Arc::clone(&bench.ring.session);
        drop(bench);
        assert_eq!(session.holder.staged_bytes(), 0);
    }
}
