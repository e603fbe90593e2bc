//! Section 2, the floor: the round trip of two processes bouncing a counter
//! through one shared page (a memfd mapped by both, each side spinning on an
//! atomic). Nothing through shared memory can answer faster on this machine.
//! The child is forked and only spins, stores and exits.

use crate::stats::{Recorder, Rep};
use crossbeam_utils::CachePadded;
use std::sync::atomic::{AtomicU64, Ordering};

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

/// `reps` repetitions of `round_trips` timed round trips each.
pub fn run(round_trips: usize, reps: usize) -> anyhow::Result<Vec<Rep>> {
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
            let mut next = 1;
            while wait_for(&page.ping, next) != STOP {
                page.pong.store(next, Ordering::Release);
                next += 1;
            }
            libc::_exit(0);
        }
    }
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
    let reps = (0..reps)
        .map(|_| {
            let mut rec = Recorder::new(round_trips);
            for _ in 0..round_trips {
                bounce(Some(&mut rec));
            }
            rec.finish()
        })
        .collect();
    page.ping.store(STOP, Ordering::Release);
    let mut status = 0;
    // SAFETY: waiting for the child forked above.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    // SAFETY: unmapping the region mapped above; `page` is not used again.
    unsafe { rustix::mm::munmap(base, len)? };
    Ok(reps)
}
