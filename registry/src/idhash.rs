//! A fast hasher for maps keyed by integers the daemon or the kernel
//! assigns (handles, session ids, uids): one multiply per key, where std's
//! SipHash costs ~20 ns and showed as ~10% of a worker's time applying
//! posted writes. Not keyed, so use it only where a client cannot choose
//! the keys that enter the map (HashDoS: a client that could pick many
//! colliding keys would make every probe of the map long); each user says
//! why its keys are not the client's choice. Maps whose keys a client
//! chooses keep SipHash.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};

/// Folds `x` through a 64 × 64 → 128-bit multiply (high half xor low
/// half), so that every input bit reaches the low bits, which pick the
/// bucket, and the high bits, which pick the control byte.
#[inline]
fn fold_mul(x: u64) -> u64 {
    // An odd constant with well spread bits (2^64 / golden ratio).
    let product = u128::from(x) * 0x9e37_79b9_7f4a_7c15;
    (product as u64) ^ ((product >> 64) as u64)
}

/// See the module: for integer keys the daemon or the kernel assigns.
#[derive(Clone, Copy, Debug, Default)]
pub struct IdHasher(u64);

impl Hasher for IdHasher {
    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }

    /// Bytes, for keys that are not integers (none of its users': kept
    /// correct, not fast).
    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.write_u64(u64::from(byte));
        }
    }

    #[inline]
    fn write_u8(&mut self, n: u8) {
        self.write_u64(u64::from(n));
    }

    #[inline]
    fn write_u16(&mut self, n: u16) {
        self.write_u64(u64::from(n));
    }

    #[inline]
    fn write_u32(&mut self, n: u32) {
        self.write_u64(u64::from(n));
    }

    #[inline]
    fn write_u64(&mut self, n: u64) {
        // Chained, so tuples of integers hash in order.
        self.0 = fold_mul(self.0.rotate_left(23) ^ n);
    }

    #[inline]
    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }
}

/// Builds [`IdHasher`]s.
pub type IdBuildHasher = BuildHasherDefault<IdHasher>;

/// A map keyed by integers the daemon or the kernel assigns.
pub type IdHashMap<K, V> = HashMap<K, V, IdBuildHasher>;

/// A set of integers the daemon or the kernel assigns.
pub type IdHashSet<K> = HashSet<K, IdBuildHasher>;

#[cfg(test)]
mod tests {
    use super::*;
    use std::hash::BuildHasher;

    #[test]
    fn nearby_keys_spread_over_low_and_high_bits() {
        let build = IdBuildHasher::default();
        // Keys that differ in their low bits (a handle's slot), in their
        // middle bits, or only in their high bits (the hardest case here).
        for (shift, at_least) in [(0, 2000), (16, 2000), (40, 1500)] {
            let mut low = HashSet::new();
            let mut high = HashSet::new();
            for key in 0u64..4096 {
                let h = build.hash_one((key << shift) ^ 7);
                low.insert(h & 0xfff);
                high.insert(h >> 57);
            }
            // 4096 keys thrown at random into 4096 buckets fill ~2590;
            // far from all in a few buckets or control bytes.
            assert!(low.len() > at_least, "{shift}: {}", low.len());
            assert_eq!(high.len(), 128, "{shift}");
        }
    }

    #[test]
    fn a_map_works_as_any_map() {
        let mut map: IdHashMap<u32, u32> = IdHashMap::default();
        for k in 0..10_000 {
            map.insert(k, k * 2);
        }
        assert!((0..10_000).all(|k| map[&k] == k * 2));
        assert_eq!(map.remove(&5), Some(10));
        assert_eq!(map.len(), 9_999);
    }
}
