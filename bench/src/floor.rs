//! The floors: what shared memory itself costs on this machine, below any
//! protocol.
//!
//! - Section 2, the floor of a round trip ([`run`]): two processes bouncing
//!   a counter through one shared page (a memfd mapped by both, each side
//!   spinning on an atomic), unpinned and pinned to two CPUs.
//! - Section 7, the floor of a read without a round trip ([`seqlock`]): a
//!   seqlock read of a 16-byte value in 64-byte slots another process wrote
//!   (hreg's slot layout), through a read-only mapping, on a hot slot and
//!   on random slots over 2^20; both the least such a read can do and
//!   `hreg_proto`'s own [`SlotView::read`].
//!
//! The other process is forked and only writes, waits and exits.

use crate::readloop::{self, Keys, Placement, Shape};
use crate::stats::{Recorder, Rep};
use crossbeam_utils::CachePadded;
use hreg_proto::shm::{Mapping, ReadOnly, ReadWrite};
use hreg_proto::table::{Payload, Read, Slot, SlotView, INLINE_VALUE, SLOT_SIZE};
use rustix::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{fence, AtomicU64, Ordering};
use std::time::Duration;

/// The shared page: the parent writes `ping`, the child echoes it in `pong`.
#[repr(C)]
struct Page {
    ping: CachePadded<AtomicU64>,
    pong: CachePadded<AtomicU64>,
}

/// Tells the child to exit.
const STOP: u64 = u64::MAX;

/// Spins until `word` holds `want` (or STOP), yielding now and then so two
/// spinners on a busy 2-core machine cannot starve each other for long.
#[inline]
fn wait_for(word: &AtomicU64, want: u64) -> u64 {
    let mut spins = 0u32;
    loop {
        let seen = word.load(Ordering::Acquire);
        if seen == want || seen == STOP {
            return seen;
        }
        spins += 1;
        if spins & 4095 == 0 {
            std::thread::yield_now();
        } else {
            std::hint::spin_loop();
        }
    }
}

/// `reps` repetitions of `round_trips` timed round trips each; pinned, the
/// parent runs on the first CPU it may use and the child on the second.
pub fn run(round_trips: usize, reps: usize, placement: Placement) -> anyhow::Result<Vec<Rep>> {
    let cpus = readloop::allowed_cpus();
    let child_cpu = one_cpu(cpus[1 % cpus.len()]);
    let fd = rustix::fs::memfd_create("hreg-bench-floor", rustix::fs::MemfdFlags::CLOEXEC)?;
    let len = std::mem::size_of::<Page>();
    rustix::fs::ftruncate(&fd, len as u64)?;
    // SAFETY: a fresh shared mapping of the memfd we just sized; nothing else
    // maps it until the fork below.
    let base = unsafe {
        rustix::mm::mmap(
            std::ptr::null_mut(),
            len,
            rustix::mm::ProtFlags::READ | rustix::mm::ProtFlags::WRITE,
            rustix::mm::MapFlags::SHARED,
            &fd,
            0,
        )?
    };
    // SAFETY: the mapping is page-aligned, zero-filled (a valid Page of
    // atomics) and stays mapped until the munmap at the end of this function.
    let page = unsafe { &*(base as *const Page) };
    // SAFETY: fork(2); the child only touches atomics in the shared page and
    // calls async-signal-safe functions (prctl, sched_yield, _exit).
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        anyhow::bail!("fork: {}", std::io::Error::last_os_error());
    }
    if pid == 0 {
        // SAFETY: prctl and _exit are async-signal-safe; the child never
        // returns into the parent's code.
        unsafe {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            if placement == Placement::Pinned {
                let _ = rustix::thread::sched_setaffinity(None, &child_cpu);
            }
            let mut next = 1;
            while wait_for(&page.ping, next) != STOP {
                page.pong.store(next, Ordering::Release);
                next += 1;
            }
            libc::_exit(0);
        }
    }
    let result = pinned_parent(placement, || {
        let mut n = 0u64;
        let mut bounce = |rec: Option<&mut Recorder>| {
            n += 1;
            let trip = || {
                page.ping.store(n, Ordering::Release);
                wait_for(&page.pong, n);
            };
            match rec {
                Some(rec) => rec.time(1, trip),
                None => trip(),
            }
        };
        for _ in 0..round_trips / 10 {
            bounce(None);
        }
        (0..reps)
            .map(|_| {
                let mut rec = Recorder::new(round_trips);
                for _ in 0..round_trips {
                    bounce(Some(&mut rec));
                }
                rec.finish()
            })
            .collect()
    });
    page.ping.store(STOP, Ordering::Release);
    let mut status = 0;
    // SAFETY: waiting for the child forked above.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    // SAFETY: unmapping the region mapped above; `page` is not used again.
    unsafe { rustix::mm::munmap(base, len)? };
    result
}

/// A set of exactly one CPU.
fn one_cpu(cpu: usize) -> rustix::thread::CpuSet {
    let mut set = rustix::thread::CpuSet::new();
    set.set(cpu);
    set
}

/// Runs `body` on a thread of its own: pinned to the first CPU this
/// process may use, or where the scheduler puts it.
fn pinned_parent<T: Send>(
    placement: Placement,
    body: impl FnOnce() -> T + Send,
) -> anyhow::Result<T> {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                if placement == Placement::Pinned {
                    readloop::pin_to(0)?;
                }
                Ok(body())
            })
            .join()
            .expect("floor thread panicked")
    })
}

/// Which read of a slot the seqlock floor times.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SlotReader {
    /// The least a seqlock read of a 16-byte value can do: the sequence
    /// (acquire; even?), the generation, two relaxed word loads, an acquire
    /// fence, the sequence again.
    Least,
    /// `hreg_proto::table::SlotView::read`, the function hreg's clients
    /// read a slot with (bounds, state, length and buffer checks).
    SlotView,
}

impl SlotReader {
    pub const ALL: [SlotReader; 2] = [SlotReader::Least, SlotReader::SlotView];

    pub fn name(self) -> &'static str {
        match self {
            SlotReader::Least => "seqlock read (the least one can do)",
            SlotReader::SlotView => "hreg_proto SlotView::read",
        }
    }

    pub fn key(self) -> &'static str {
        match self {
            SlotReader::Least => "least",
            SlotReader::SlotView => "slotview",
        }
    }
}

/// One configuration of the seqlock floor and its repetitions.
pub struct SeqlockCase {
    pub reader: SlotReader,
    pub keys: Keys,
    pub placement: Placement,
    pub reps: Vec<Rep>,
}

/// The generation every slot of the floor carries.
const GENERATION: u16 = 1;

/// The seqlock floor: a forked process fills `slots` slots of a memfd (one
/// 16-byte value each, by hreg's own slot write) and then waits, idle;
/// this process maps the memfd read-only (reopened `O_RDONLY` through
/// `/proc/self/fd`, as clients get it) and times every [`SlotReader`] on
/// the hot slot and on random slots, unpinned and pinned, `reps` times
/// `per_rep` each, the cases interleaved.
pub fn seqlock(slots: usize, per_rep: Duration, reps: usize) -> anyhow::Result<Vec<SeqlockCase>> {
    let len = slots * SLOT_SIZE;
    let fd = rustix::fs::memfd_create("hreg-bench-slots", rustix::fs::MemfdFlags::CLOEXEC)?;
    rustix::fs::ftruncate(&fd, len as u64)?;
    let (ready_r, ready_w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
    let (stop_r, stop_w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
    // SAFETY: fork(2); the child only maps, writes atomics into the mapping,
    // and makes async-signal-safe system calls (prctl, write, read, _exit):
    // no allocation, no lock.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        anyhow::bail!("fork: {}", std::io::Error::last_os_error());
    }
    if pid == 0 {
        drop(stop_w);
        let code = fill_slots(&fd, slots, &ready_w, &stop_r);
        // SAFETY: the child never returns into the parent's code.
        unsafe { libc::_exit(code) };
    }
    drop((ready_w, stop_r));
    let mut byte = [0u8; 1];
    let filled = rustix::io::read(&ready_r, &mut byte).is_ok_and(|n| n == 1);
    let result = if filled {
        read_slots(&fd, slots, per_rep, reps)
    } else {
        Err(anyhow::anyhow!("the slot writer died before it was ready"))
    };
    drop(stop_w);
    let mut status = 0;
    // SAFETY: waiting for the child forked above (it exits once `stop_w`,
    // its last writer, is closed).
    unsafe { libc::waitpid(pid, &mut status, 0) };
    result
}

/// The writer (forked child): every slot gets a 16-byte value, then it
/// says so on `ready` and waits for `stop` to close. Its exit status.
fn fill_slots(fd: &OwnedFd, slots: usize, ready: &OwnedFd, stop: &OwnedFd) -> i32 {
    // SAFETY: prctl(2) is async-signal-safe.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
    let Ok(map) = Mapping::<ReadWrite>::map(fd, slots * SLOT_SIZE) else {
        return 1;
    };
    for i in 0..slots {
        let Some(view) = SlotView::new(&map, i) else {
            return 1;
        };
        let mut bytes = [0u8; INLINE_VALUE];
        bytes[..8].copy_from_slice(&(i as u64).to_le_bytes());
        bytes[8..16].copy_from_slice(&(!(i as u64)).to_le_bytes());
        view.write(&Slot {
            generation: GENERATION,
            flags: 0,
            len: 16,
            owner: 0,
            payload: Payload::Inline(bytes),
        });
    }
    if rustix::io::write(ready, b"r") != Ok(1) {
        return 1;
    }
    let mut byte = [0u8; 1];
    let _ = rustix::io::read(stop, &mut byte);
    0
}

/// The reader's side of [`seqlock`].
fn read_slots(
    fd: &OwnedFd,
    slots: usize,
    per_rep: Duration,
    reps: usize,
) -> anyhow::Result<Vec<SeqlockCase>> {
    let read_only = rustix::fs::open(
        format!("/proc/self/fd/{}", fd.as_raw_fd()),
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )?;
    let map = Mapping::<ReadOnly>::map(&read_only, slots * SLOT_SIZE)?;
    let table = slot_words(&map);
    let mut cases: Vec<SeqlockCase> = Vec::new();
    for reader in SlotReader::ALL {
        for keys in [Keys::Hot, Keys::Random] {
            for placement in [Placement::Unpinned, Placement::Pinned] {
                cases.push(SeqlockCase {
                    reader,
                    keys,
                    placement,
                    reps: Vec::new(),
                });
            }
        }
    }
    for rep in 0..reps {
        for case in &mut cases {
            let shape = Shape {
                keys: case.keys,
                objects: slots,
                threads: 1,
                placement: case.placement,
                run_for: per_rep,
                seed: rep as u64,
            };
            let measured = match case.reader {
                SlotReader::Least => readloop::drive(&shape, 16, |i, out| {
                    least_read(&table[i], out).map(|()| out[0] ^ out[15])
                }),
                SlotReader::SlotView => readloop::drive(&shape, 16, |i, out| {
                    let view = SlotView::new(&map, i).ok_or("slot outside the mapping")?;
                    match view.read(GENERATION, |n| out.get_mut(..n), |_| None) {
                        Read::Value { len: 16 } => Ok(out[0] ^ out[15]),
                        _ => Err("not the value written"),
                    }
                }),
            };
            case.reps.push(measured?);
        }
    }
    Ok(cases)
}

/// The slots of `map` as arrays of eight words, for [`least_read`].
fn slot_words(map: &Mapping<ReadOnly>) -> &[[AtomicU64; 8]] {
    let base = map.address_of(0).expect("offset 0 is mapped");
    // SAFETY: a mapping is page-aligned and stays mapped while borrowed
    // (the slice borrows `map`); it holds `len / 64` whole arrays of eight
    // u64s; atomics tolerate the writer in the other process.
    unsafe { std::slice::from_raw_parts(base.cast(), map.len() / SLOT_SIZE) }
}

/// The least a seqlock read of a 16-byte inline value can do (hreg's slot
/// layout: word 0 the sequence and generation, the value from word 2).
#[inline]
fn least_read(slot: &[AtomicU64; 8], out: &mut [u8]) -> Result<(), &'static str> {
    loop {
        let head = slot[0].load(Ordering::Acquire);
        if head & 1 != 0 {
            std::hint::spin_loop();
            continue;
        }
        if (head >> 32) as u16 != GENERATION {
            return Err("stale");
        }
        let a = slot[2].load(Ordering::Relaxed);
        let b = slot[3].load(Ordering::Relaxed);
        fence(Ordering::Acquire);
        if slot[0].load(Ordering::Relaxed) == head {
            out[..8].copy_from_slice(&a.to_le_bytes());
            out[8..16].copy_from_slice(&b.to_le_bytes());
            return Ok(());
        }
    }
}
