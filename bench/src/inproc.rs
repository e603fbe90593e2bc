//! Section 1, the origin experiment in process: 1M live keys, 90% get / 5%
//! insert / 5% remove, on 1 and 2 threads, for the big old map, the 64-shard
//! map, `dashmap` and hreg's own registry.
//!
//! Every contender stores the same 16-byte values, draws the same operation
//! and key sequence (seeded per thread and repetition), and hands out its own
//! keys: the maps from a counter, the registry as handles. Each thread works
//! on its own pool of live keys (uniform picks), so the live count stays
//! about constant.

use crate::stats::{Measured, Rep, Rng};
use dashmap::DashMap;
use hreg_proto::flags;
use hreg_proto::handle::Handle;
use hreg_registry::{Holder, Limits, Registry, DEFAULT_SHARDS};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Barrier, RwLock};
use std::time::Instant;

/// Every stored value.
type Val = [u8; 16];

/// What the workload needs from a map: keys are assigned by the map.
pub trait Contender: Sync {
    fn insert(&self, value: Val, thread: usize) -> u64;
    fn get(&self, key: u64) -> Option<Val>;
    fn remove(&self, key: u64) -> bool;
}

/// The "big old map": one lock around one map and its key counter.
#[derive(Default)]
pub struct BigMap(RwLock<(HashMap<u64, Val>, u64)>);

impl Contender for BigMap {
    fn insert(&self, value: Val, _: usize) -> u64 {
        let mut guard = self.0.write().expect("poisoned");
        guard.1 += 1;
        let key = guard.1;
        guard.0.insert(key, value);
        key
    }
    fn get(&self, key: u64) -> Option<Val> {
        self.0.read().expect("poisoned").0.get(&key).copied()
    }
    fn remove(&self, key: u64) -> bool {
        self.0.write().expect("poisoned").0.remove(&key).is_some()
    }
}

/// 64 maps, each behind its own lock, picked by `key % 64`.
pub struct ShardedMap {
    shards: Vec<RwLock<HashMap<u64, Val>>>,
    next: AtomicU64,
}

impl Default for ShardedMap {
    fn default() -> Self {
        ShardedMap {
            shards: (0..64).map(|_| RwLock::default()).collect(),
            next: AtomicU64::new(1),
        }
    }
}

impl ShardedMap {
    fn shard(&self, key: u64) -> &RwLock<HashMap<u64, Val>> {
        &self.shards[(key % 64) as usize]
    }
}

impl Contender for ShardedMap {
    fn insert(&self, value: Val, _: usize) -> u64 {
        let key = self.next.fetch_add(1, Ordering::Relaxed);
        self.shard(key)
            .write()
            .expect("poisoned")
            .insert(key, value);
        key
    }
    fn get(&self, key: u64) -> Option<Val> {
        self.shard(key).read().expect("poisoned").get(&key).copied()
    }
    fn remove(&self, key: u64) -> bool {
        self.shard(key)
            .write()
            .expect("poisoned")
            .remove(&key)
            .is_some()
    }
}

/// `dashmap` with its defaults, keys from a counter.
#[derive(Default)]
pub struct Dash {
    map: DashMap<u64, Val>,
    next: AtomicU64,
}

impl Contender for Dash {
    fn insert(&self, value: Val, _: usize) -> u64 {
        let key = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        self.map.insert(key, value);
        key
    }
    fn get(&self, key: u64) -> Option<Val> {
        self.map.get(&key).map(|v| *v)
    }
    fn remove(&self, key: u64) -> bool {
        self.map.remove(&key).is_some()
    }
}

/// hreg's registry as the daemon builds it (its default shard count), used
/// through one holder. Objects are DETACHED: like a map entry, an object
/// lives until it is removed, with no per-session reference to keep.
pub struct Hreg {
    registry: Registry,
    holder: Holder,
}

impl Default for Hreg {
    fn default() -> Self {
        let registry =
            Registry::new(DEFAULT_SHARDS, Limits::default()).expect("the registry's memory");
        let holder = registry.holder(1000).expect("a session's record");
        Hreg { registry, holder }
    }
}

impl Contender for Hreg {
    fn insert(&self, value: Val, _: usize) -> u64 {
        self.registry
            .insert(&self.holder, &value, flags::DETACHED)
            .expect("registry insert")
            .get()
    }
    fn get(&self, key: u64) -> Option<Val> {
        self.registry
            .get_with(&self.holder, Handle::new(key)?, |v| {
                let mut out = [0; 16];
                out.copy_from_slice(v);
                out
            })
            .ok()
    }
    fn remove(&self, key: u64) -> bool {
        Handle::new(key).is_some_and(|h| self.registry.remove(&self.holder, h).is_ok())
    }
}

/// Sizes of the experiment.
#[derive(Clone, Copy, Debug)]
pub struct Plan {
    pub live_keys: usize,
    pub ops_per_thread: usize,
    pub reps: usize,
}

/// One contender's figures at 1 and 2 threads.
pub struct Outcome {
    pub name: &'static str,
    pub by_threads: Vec<(usize, Measured)>,
}

/// A populated contender and the live keys it has handed out.
struct Entrant<C> {
    name: &'static str,
    map: C,
    keys: Vec<u64>,
}

/// What the driver needs from an entrant; the per-operation loop inside
/// stays monomorphic, only whole repetitions go through this trait.
trait Run {
    fn name(&self) -> &'static str;
    fn rep(&mut self, threads: usize, ops: usize, rep: u64) -> Rep;
}

impl<C: Contender> Run for Entrant<C> {
    fn name(&self) -> &'static str {
        self.name
    }
    fn rep(&mut self, threads: usize, ops: usize, rep: u64) -> Rep {
        mixed(&self.map, &mut self.keys, threads, ops, rep)
    }
}

fn entrant<C: Contender + Default + 'static>(name: &'static str, live: usize) -> Box<dyn Run> {
    let map = C::default();
    let keys = (0..live).map(|i| map.insert(val(i as u64), i)).collect();
    Box::new(Entrant { name, map, keys })
}

/// Runs the experiment for every contender. Repetitions are interleaved
/// (every contender's first, then every contender's second, …) so that a
/// noisy stretch of a shared machine hits all of them alike.
pub fn run(plan: Plan) -> Vec<Outcome> {
    let mut entrants = [
        entrant::<BigMap>("big old map (RwLock<HashMap>)", plan.live_keys),
        entrant::<ShardedMap>("64-shard map", plan.live_keys),
        entrant::<Dash>("dashmap", plan.live_keys),
        entrant::<Hreg>("hreg Registry", plan.live_keys),
    ];
    let mut outcomes: Vec<Outcome> = entrants
        .iter()
        .map(|e| Outcome {
            name: e.name(),
            by_threads: Vec::new(),
        })
        .collect();
    for threads in [1, 2] {
        let mut reps: Vec<Vec<Rep>> = vec![Vec::new(); entrants.len()];
        for rep in 0..plan.reps {
            for (entrant, reps) in entrants.iter_mut().zip(&mut reps) {
                reps.push(entrant.rep(threads, plan.ops_per_thread, rep as u64));
            }
        }
        for (outcome, reps) in outcomes.iter_mut().zip(&reps) {
            outcome
                .by_threads
                .push((threads, Measured::from_reps(reps)));
        }
    }
    outcomes
}

fn val(salt: u64) -> Val {
    let mut v = [0u8; 16];
    v[..8].copy_from_slice(&salt.to_le_bytes());
    v[8..].copy_from_slice(&(!salt).to_le_bytes());
    v
}

/// One repetition: `threads` threads each run `ops` operations on their share
/// of `keys`; the pools they end with become the new `keys`.
fn mixed<C: Contender>(map: &C, keys: &mut Vec<u64>, threads: usize, ops: usize, rep: u64) -> Rep {
    let share = keys.len().div_ceil(threads);
    let pools: Vec<Vec<u64>> = keys.chunks(share).map(<[u64]>::to_vec).collect();
    let barrier = Barrier::new(threads + 1);
    let (wall, pools) = std::thread::scope(|scope| {
        let workers: Vec<_> = pools
            .into_iter()
            .enumerate()
            .map(|(t, mut pool)| {
                let barrier = &barrier;
                scope.spawn(move || {
                    let mut rng = Rng::new(rep * 1000 + t as u64 + 1);
                    barrier.wait();
                    let mut sink = 0u8;
                    for _ in 0..ops {
                        let roll = rng.below(100);
                        if roll < 90 {
                            let key = pool[rng.below(pool.len())];
                            sink ^= map.get(key).map_or(0, |v| v[0]);
                        } else if roll < 95 || pool.len() < 2 {
                            pool.push(map.insert(val(rng.next()), t));
                        } else {
                            let key = pool.swap_remove(rng.below(pool.len()));
                            sink ^= u8::from(map.remove(key));
                        }
                    }
                    std::hint::black_box(sink);
                    pool
                })
            })
            .collect();
        barrier.wait();
        let start = Instant::now();
        let pools: Vec<Vec<u64>> = workers
            .into_iter()
            .map(|w| w.join().expect("worker panicked"))
            .collect();
        (start.elapsed(), pools)
    });
    *keys = pools.concat();
    Rep {
        ops_per_sec: (threads * ops) as f64 / wall.as_secs_f64(),
        latency: None,
    }
}
