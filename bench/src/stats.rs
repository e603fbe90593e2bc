//! Statistics: medians with their spread over repetitions, latency
//! percentiles, a timing helper, and the seeded generator every contender
//! draws its keys and operations from (so all see the same sequence).

use serde::{Deserialize, Serialize};
use std::time::{Duration, Instant};

/// The median of several repetitions and the range they covered.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Summary {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Summary {
    /// Summarises `values`; `None` when there are none.
    pub fn of(values: &[f64]) -> Option<Summary> {
        let mut sorted: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
        if sorted.is_empty() {
            return None;
        }
        sorted.sort_by(f64::total_cmp);
        let n = sorted.len();
        let median = if n % 2 == 1 {
            sorted[n / 2]
        } else {
            (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
        };
        Some(Summary {
            median,
            min: sorted[0],
            max: sorted[n - 1],
        })
    }

    /// "median (min–max)" with a precision that suits the magnitude.
    pub fn cell(&self) -> String {
        format!(
            "{} ({}–{})",
            number(self.median),
            number(self.min),
            number(self.max)
        )
    }
}

/// A number with three significant figures or so.
pub fn number(x: f64) -> String {
    let a = x.abs();
    if a >= 100.0 {
        format!("{x:.0}")
    } else if a >= 10.0 {
        format!("{x:.1}")
    } else if a >= 1.0 {
        format!("{x:.2}")
    } else {
        format!("{x:.3}")
    }
}

/// Latency percentiles of one repetition, in nanoseconds.
#[derive(Clone, Copy, Debug)]
pub struct Percentiles {
    pub p50: f64,
    pub p99: f64,
    pub p999: f64,
}

impl Percentiles {
    /// Percentiles of `samples` (nanoseconds; reordered in place).
    pub fn of(samples: &mut [u64]) -> Option<Percentiles> {
        if samples.is_empty() {
            return None;
        }
        samples.sort_unstable();
        let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize] as f64;
        Some(Percentiles {
            p50: at(0.50),
            p99: at(0.99),
            p999: at(0.999),
        })
    }
}

/// Latency percentiles and maximum of one series, in nanoseconds, with
/// its size (all zero when empty).
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
pub struct Latency {
    pub count: usize,
    pub p50_ns: f64,
    pub p99_ns: f64,
    pub p999_ns: f64,
    pub max_ns: f64,
}

impl Latency {
    /// Of `samples` (nanoseconds; reordered in place).
    pub fn of(samples: &mut [u64]) -> Latency {
        let Some(p) = Percentiles::of(samples) else {
            return Latency::default();
        };
        Latency {
            count: samples.len(),
            p50_ns: p.p50,
            p99_ns: p.p99,
            p999_ns: p.p999,
            max_ns: samples[samples.len() - 1] as f64,
        }
    }
}

/// Nanoseconds as microseconds for a table cell.
pub fn micros(ns: f64) -> String {
    number(ns / 1e3)
}

/// One repetition of a measured case: throughput and, when each operation
/// (or batch) was timed, its latency percentiles.
#[derive(Clone, Copy, Debug)]
pub struct Rep {
    pub ops_per_sec: f64,
    pub latency: Option<Percentiles>,
}

/// Everything measured about one case, over all repetitions.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Measured {
    /// Million operations per second.
    pub mops: Option<Summary>,
    pub p50_ns: Option<Summary>,
    pub p99_ns: Option<Summary>,
    pub p999_ns: Option<Summary>,
}

impl Measured {
    pub fn from_reps(reps: &[Rep]) -> Measured {
        let pick = |f: fn(&Percentiles) -> f64| {
            let values: Vec<f64> = reps
                .iter()
                .filter_map(|r| r.latency.as_ref().map(f))
                .collect();
            Summary::of(&values)
        };
        let mops: Vec<f64> = reps.iter().map(|r| r.ops_per_sec / 1e6).collect();
        Measured {
            mops: Summary::of(&mops),
            p50_ns: pick(|p| p.p50),
            p99_ns: pick(|p| p.p99),
            p999_ns: pick(|p| p.p999),
        }
    }
}

/// Records the duration of each timed step, up to a cap, and counts
/// operations; the source of a [`Rep`].
pub struct Recorder {
    samples: Vec<u64>,
    ops: u64,
    busy: Duration,
}

impl Recorder {
    pub fn new(capacity: usize) -> Recorder {
        Recorder {
            samples: Vec::with_capacity(capacity),
            ops: 0,
            busy: Duration::ZERO,
        }
    }

    /// Runs `step` (which performs `ops` operations), timing it.
    #[inline]
    pub fn time<R>(&mut self, ops: u64, step: impl FnOnce() -> R) -> R {
        let start = Instant::now();
        let result = step();
        let took = start.elapsed();
        if self.samples.len() < self.samples.capacity() {
            self.samples.push(took.as_nanos() as u64);
        }
        self.ops += ops;
        self.busy += took;
        result
    }

    /// Throughput over the timed steps only, and their percentiles.
    pub fn finish(self) -> Rep {
        Recorder::merge(vec![self])
    }

    /// Combines the recorders of threads that ran side by side: the
    /// throughput is the sum of theirs, each over its own timed steps.
    pub fn merge(recorders: Vec<Recorder>) -> Rep {
        let ops_per_sec = recorders
            .iter()
            .map(|r| r.ops as f64 / r.busy.as_secs_f64().max(1e-9))
            .sum();
        let mut samples: Vec<u64> = recorders.into_iter().flat_map(|r| r.samples).collect();
        Rep {
            ops_per_sec,
            latency: Percentiles::of(&mut samples),
        }
    }
}

/// xorshift64*: tiny, fast and seedable; every contender of a comparison is
/// driven by the same seeds.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    #[inline]
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `0..n` (n > 0), by multiply-shift.
    #[inline]
    pub fn below(&mut self, n: usize) -> usize {
        ((u128::from(self.next()) * n as u128) >> 64) as usize
    }
}

/// A value of `len` bytes whose content depends on `salt`.
pub fn value(len: usize, salt: u64) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u64).wrapping_mul(131).wrapping_add(salt) as u8)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_spread() {
        let s = Summary::of(&[3.0, 1.0, 2.0, 10.0]).unwrap();
        assert_eq!((s.median, s.min, s.max), (2.5, 1.0, 10.0));
        assert!(Summary::of(&[]).is_none());
    }

    #[test]
    fn percentiles_pick_ranks() {
        let mut v: Vec<u64> = (1..=1000).rev().collect();
        let p = Percentiles::of(&mut v).unwrap();
        assert_eq!((p.p50, p.p99, p.p999), (501.0, 990.0, 999.0));
    }

    #[test]
    fn latency_has_count_and_max() {
        let mut v: Vec<u64> = (1..=1000).collect();
        let l = Latency::of(&mut v);
        assert_eq!((l.count, l.p50_ns, l.max_ns), (1000, 501.0, 1000.0));
        assert_eq!(Latency::of(&mut []).count, 0);
    }

    #[test]
    fn below_stays_in_range() {
        let mut rng = Rng::new(7);
        assert!((0..10_000).all(|_| rng.below(13) < 13));
    }
}
