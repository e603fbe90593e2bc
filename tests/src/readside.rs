//! What the read-side tests (`tests/reads.rs`) and their helper process
//! (`hreg-reader`) agree on: values stamped with the handle they belong to,
//! a sequence number and a checksum, so a reader can tell a torn, foreign or
//! stale-generation value from a good one; a directory of live handles
//! published as such a value; and secret markers passed to a probe masked,
//! so the probe's own memory never holds the bytes it searches for.

use crate::Rng;
use hreg::Handle;
use hreg_proto::handle::HandleParts;

/// Bytes of a stamp: the handle and the sequence number, before the body.
const STAMP: usize = 16;
/// Shortest value that carries a stamp and a checksum; shorter values are
/// derived from their handle alone ([`short_value`]).
pub const STAMPED_MIN: usize = STAMP + 8;

/// `len` bytes for `handle`'s version `seq`: the stamp, a body derived from
/// both, and an FNV-1a checksum of the rest (`len >= STAMPED_MIN`); a
/// shorter value is [`short_value`].
pub fn stamped_value(handle: Handle, seq: u64, len: usize) -> Vec<u8> {
    if len < STAMPED_MIN {
        return short_value(handle, len);
    }
    let mut body = vec![0u8; len - STAMPED_MIN];
    let mut rng = Rng::new(handle.get() ^ seq.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    for word in body.chunks_mut(8) {
        word.copy_from_slice(&rng.next_u64().to_le_bytes()[..word.len()]);
    }
    stamp(handle, seq, &body)
}

/// `body` stamped with `handle` and `seq`, and checksummed.
pub fn stamp(handle: Handle, seq: u64, body: &[u8]) -> Vec<u8> {
    let mut value = Vec::with_capacity(STAMPED_MIN + body.len());
    value.extend_from_slice(&handle.get().to_le_bytes());
    value.extend_from_slice(&seq.to_le_bytes());
    value.extend_from_slice(body);
    let sum = crate::fnv(&value);
    value.extend_from_slice(&sum.to_le_bytes());
    value
}

/// The value of fewer than [`STAMPED_MIN`] bytes that `handle` may hold:
/// bytes derived from the handle and the length (no room for a stamp).
pub fn short_value(handle: Handle, len: usize) -> Vec<u8> {
    let mut rng = Rng::new(handle.get().wrapping_mul(0x2545_f491_4f6c_dd1d) ^ len as u64);
    (0..len).map(|_| rng.next_u64() as u8).collect()
}

/// What a reader made of a value it got for a handle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Seen {
    /// The handle's own value; its sequence number when it carries one.
    Good(Option<u64>),
    /// The checksum does not match: bytes of two versions mixed.
    Torn,
    /// An intact value of another object.
    Foreign,
    /// An intact value of the same slot under another generation: an old
    /// handle resolved to the slot's next occupant, or the other way round.
    StaleGeneration,
    /// A short value that is not the handle's (torn or foreign: too short
    /// to tell).
    ShortMismatch,
}

/// Checks a value read for `handle` (written by [`stamped_value`] or
/// [`stamp`]).
pub fn inspect(handle: Handle, value: &[u8]) -> Seen {
    if value.len() < STAMPED_MIN {
        return if value == short_value(handle, value.len()) {
            Seen::Good(None)
        } else {
            Seen::ShortMismatch
        };
    }
    let (head, sum) = value.split_at(value.len() - 8);
    if crate::fnv(head).to_le_bytes() != sum {
        return Seen::Torn;
    }
    let word = |at: usize| u64::from_le_bytes(head[at..at + 8].try_into().expect("8 bytes"));
    let (owner, seq) = (word(0), word(8));
    if owner == handle.get() {
        return Seen::Good(Some(seq));
    }
    let (mine, theirs) = (
        HandleParts::decode(handle.get()),
        HandleParts::decode(owner),
    );
    if (mine.instance, mine.domain, mine.slot) == (theirs.instance, theirs.domain, theirs.slot) {
        Seen::StaleGeneration
    } else {
        Seen::Foreign
    }
}

/// The body of a stamped value that [`inspect`] found good.
pub fn body(value: &[u8]) -> &[u8] {
    &value[STAMP..value.len() - 8]
}

/// A directory of handles, as a body for [`stamp`].
pub fn directory_body(handles: &[Handle]) -> Vec<u8> {
    handles.iter().flat_map(|h| h.get().to_le_bytes()).collect()
}

/// The handles in a directory's body (zeroes, which no handle is, are
/// left out).
pub fn directory_handles(body: &[u8]) -> Vec<Handle> {
    body.chunks_exact(8)
        .filter_map(|word| Handle::new(u64::from_le_bytes(word.try_into().expect("8 bytes"))))
        .collect()
}

/// What secret markers are XORed with before they reach a probe.
pub const MARKER_MASK: u8 = 0xa5;

/// `marker` masked and in hex, for a probe's command line.
pub fn masked_hex(marker: &[u8]) -> String {
    marker
        .iter()
        .map(|b| format!("{:02x}", b ^ MARKER_MASK))
        .collect()
}

/// A masked marker from its hex form (still masked).
pub fn masked_from_hex(hex: &str) -> Option<Vec<u8>> {
    if !hex.len().is_multiple_of(2) || hex.is_empty() {
        return None;
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamped_values_tell_their_owner() {
        let h = |slot: u32, generation: u16| {
            HandleParts {
                instance: 5,
                domain: 1,
                generation,
                slot,
            }
            .handle()
            .unwrap()
        };
        let (a, a_next, b) = (h(7, 1), h(7, 2), h(8, 1));
        for len in [0, 1, 23, 24, 25, 4096] {
            let value = stamped_value(a, 3, len);
            assert_eq!(value.len(), len);
            let expected = if len >= STAMPED_MIN { Some(3) } else { None };
            assert_eq!(inspect(a, &value), Seen::Good(expected), "{len}");
        }
        let value = stamped_value(a, 3, 100);
        assert_eq!(inspect(a_next, &value), Seen::StaleGeneration);
        assert_eq!(inspect(b, &value), Seen::Foreign);
        assert_eq!(inspect(b, &stamped_value(a, 3, 10)), Seen::ShortMismatch);
        let mut torn = value.clone();
        torn[50..60].copy_from_slice(&stamped_value(a, 4, 100)[50..60]);
        assert_eq!(inspect(a, &torn), Seen::Torn);
        let dir = stamp(a, 9, &directory_body(&[a, b]));
        assert_eq!(inspect(a, &dir), Seen::Good(Some(9)));
        assert_eq!(directory_handles(body(&dir)), [a, b]);
        let masked = masked_from_hex(&masked_hex(b"secret")).unwrap();
        let unmasked: Vec<u8> = masked.iter().map(|b| b ^ MARKER_MASK).collect();
        assert_eq!(unmasked, b"secret");
        assert!(masked_from_hex("abc").is_none());
    }
}
