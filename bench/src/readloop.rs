//! The timed read loop every read contender of section 7 runs through (the
//! in-process maps, hreg's clients in their worker processes, the seqlock
//! floor): the same key picks, the same blocks, the same clock, so that
//! only the read itself differs between them. Also thread pinning.
//!
//! One read is too short to time alone (the clock costs more than a hot
//! read), so reads are timed in blocks of [`BLOCK`]: a repetition's "p50"
//! is the median over its blocks of the time per read, robust to the
//! preemptions a shared machine deals out; its throughput is the reads
//! over the time spent in blocks, summed over threads.

use crate::stats::{Percentiles, Rep, Rng};
use serde::{Deserialize, Serialize};
use std::sync::Barrier;
use std::time::{Duration, Instant};

/// Reads per timed block.
pub const BLOCK: usize = 256;

/// Which objects a case reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Keys {
    /// Always the same one.
    Hot,
    /// Uniformly random over all of them.
    Random,
}

impl Keys {
    pub fn name(self) -> &'static str {
        match self {
            Keys::Hot => "hot",
            Keys::Random => "random",
        }
    }
}

/// How a case places its reading threads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Placement {
    /// Where the scheduler puts them.
    Unpinned,
    /// Thread `t` on the `t`-th CPU this process may use.
    Pinned,
}

impl Placement {
    pub fn name(self) -> &'static str {
        match self {
            Placement::Unpinned => "unpinned",
            Placement::Pinned => "pinned",
        }
    }
}

/// The shape of one timed run.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub struct Shape {
    pub keys: Keys,
    /// Objects to pick from (index `0..objects`).
    pub objects: usize,
    pub threads: usize,
    pub placement: Placement,
    /// How long each thread reads.
    pub run_for: Duration,
    pub seed: u64,
}

/// The CPUs this process may run on, in order.
pub fn allowed_cpus() -> Vec<usize> {
    let set = rustix::thread::sched_getaffinity(None).unwrap_or_default();
    let cpus: Vec<usize> = (0..rustix::thread::CpuSet::MAX_CPU)
        .filter(|&c| set.is_set(c))
        .collect();
    if cpus.is_empty() {
        vec![0]
    } else {
        cpus
    }
}

/// Pins the calling thread to the `t`-th allowed CPU (wrapping around).
pub fn pin_to(t: usize) -> anyhow::Result<()> {
    let cpus = allowed_cpus();
    let mut set = rustix::thread::CpuSet::new();
    set.set(cpus[t % cpus.len()]);
    rustix::thread::sched_setaffinity(None, &set)?;
    Ok(())
}

/// What one reading thread measured.
struct Tally {
    reads: u64,
    busy: Duration,
    /// Picoseconds per read, one per block.
    per_read_ps: Vec<u64>,
}

/// Runs `read(index, buf)` in blocks for `shape.run_for` on each of
/// `shape.threads` threads, `buf` being each thread's own buffer of
/// `buf_len` bytes; `read` answers one byte of the value (kept, so the
/// read cannot be optimised away) or why it failed, which ends the run.
pub fn drive<E, F>(shape: &Shape, buf_len: usize, read: F) -> anyhow::Result<Rep>
where
    E: std::fmt::Display,
    F: Fn(usize, &mut [u8]) -> Result<u8, E> + Sync,
{
    anyhow::ensure!(
        shape.objects > 0 && shape.threads > 0,
        "nothing to read with"
    );
    let barrier = Barrier::new(shape.threads);
    let tallies = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..shape.threads)
            .map(|t| {
                let (barrier, read) = (&barrier, &read);
                scope.spawn(move || reader(shape, t, buf_len, barrier, read))
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().expect("reader thread panicked"))
            .collect::<anyhow::Result<Vec<Tally>>>()
    })?;
    let ops_per_sec = tallies
        .iter()
        .map(|t| t.reads as f64 / t.busy.as_secs_f64().max(1e-9))
        .sum();
    let mut per_read: Vec<u64> = tallies.into_iter().flat_map(|t| t.per_read_ps).collect();
    let latency = Percentiles::of(&mut per_read).map(|p| Percentiles {
        p50: p.p50 / 1e3,
        p99: p.p99 / 1e3,
        p999: p.p999 / 1e3,
    });
    Ok(Rep {
        ops_per_sec,
        latency,
    })
}

/// One reading thread of [`drive`]. Every thread waits at the barrier,
/// even one that failed to pin, so that none is left waiting.
fn reader<E, F>(
    shape: &Shape,
    t: usize,
    buf_len: usize,
    barrier: &Barrier,
    read: &F,
) -> anyhow::Result<Tally>
where
    E: std::fmt::Display,
    F: Fn(usize, &mut [u8]) -> Result<u8, E>,
{
    let pinned = match shape.placement {
        Placement::Pinned => pin_to(t),
        Placement::Unpinned => Ok(()),
    };
    let mut rng = Rng::new(shape.seed * 64 + t as u64 + 1);
    let mut buf = vec![0u8; buf_len];
    let mut sink = 0u8;
    let pick = |rng: &mut Rng| match shape.keys {
        Keys::Hot => 0,
        Keys::Random => rng.below(shape.objects),
    };
    // Warm up: the first reads map memory and fill caches.
    let warm = (0..BLOCK).try_for_each(|_| {
        sink ^= read(pick(&mut rng), &mut buf).map_err(|e| anyhow::anyhow!("read failed: {e}"))?;
        anyhow::Ok(())
    });
    barrier.wait();
    pinned?;
    warm?;
    let mut tally = Tally {
        reads: 0,
        busy: Duration::ZERO,
        per_read_ps: Vec::with_capacity(1 << 16),
    };
    let deadline = Instant::now() + shape.run_for;
    loop {
        let start = Instant::now();
        if start >= deadline {
            break;
        }
        for _ in 0..BLOCK {
            match read(pick(&mut rng), &mut buf) {
                Ok(byte) => sink ^= byte,
                Err(e) => anyhow::bail!("read failed: {e}"),
            }
        }
        let took = start.elapsed();
        tally.reads += BLOCK as u64;
        tally.busy += took;
        tally
            .per_read_ps
            .push((took.as_nanos() * 1000 / BLOCK as u128) as u64);
    }
    std::hint::black_box(sink);
    Ok(tally)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(keys: Keys, threads: usize) -> Shape {
        Shape {
            keys,
            objects: 10,
            threads,
            placement: Placement::Unpinned,
            run_for: Duration::from_millis(20),
            seed: 1,
        }
    }

    #[test]
    fn reads_every_thread_and_times_blocks() {
        let reads = std::sync::atomic::AtomicU64::new(0);
        let rep = drive(&shape(Keys::Random, 2), 4, |i, buf| {
            reads.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            buf[0] = i as u8;
            Ok::<u8, String>(buf[0])
        })
        .unwrap();
        assert!(rep.ops_per_sec > 0.0);
        let p = rep.latency.expect("blocks were timed");
        assert!(p.p50 > 0.0 && p.p50 <= p.p99);
        // Each thread warms up with one block and reads whole blocks.
        assert_eq!(reads.into_inner() % BLOCK as u64, 0);
    }

    #[test]
    fn hot_reads_one_key_and_a_failure_ends_the_run() {
        let rep = drive(&shape(Keys::Hot, 1), 1, |i, _| {
            if i == 0 {
                Ok(0)
            } else {
                Err("not the hot key")
            }
        });
        assert!(rep.is_ok());
        let failed = drive(&shape(Keys::Random, 1), 1, |i, _| {
            if i < 9 {
                Ok(0)
            } else {
                Err("key 9")
            }
        });
        assert!(failed.unwrap_err().to_string().contains("key 9"));
    }

    #[test]
    fn pinning_uses_an_allowed_cpu() {
        let cpus = allowed_cpus();
        assert!(!cpus.is_empty());
        std::thread::spawn(|| {
            pin_to(1).unwrap();
            let now = rustix::thread::sched_getaffinity(None).unwrap();
            assert_eq!(now.count(), 1);
        })
        .join()
        .unwrap();
    }
}
