//! Handle encoding: a non-zero `u64` made of an instance epoch, a slot
//! generation and a slot index.
//!
//! ```text
//!  63        52 51                    28 27                     0
//! +------------+------------------------+------------------------+
//! | epoch (12) |   generation (24)      |      slot (28)         |
//! +------------+------------------------+------------------------+
//! ```
//!
//! The epoch is drawn at each daemon start and is never 0, so no handle is 0
//! and a handle of an earlier instance does not match. Clients treat handles
//! as opaque ([`Handle`]: non-zero by type, printed in decimal, parsed from
//! decimal or `0x` hex); only the daemon takes them apart.

use std::fmt;
use std::num::NonZeroU64;
use std::str::FromStr;

/// A handle to an object in the registry. Never 0; otherwise opaque.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(transparent)]
pub struct Handle(NonZeroU64);

impl Handle {
    /// The handle with this number; `None` for 0.
    pub const fn new(raw: u64) -> Option<Handle> {
        match NonZeroU64::new(raw) {
            Some(n) => Some(Handle(n)),
            None => None,
        }
    }

    /// The handle's number.
    pub const fn get(self) -> u64 {
        self.0.get()
    }
}

impl From<Handle> for u64 {
    fn from(h: Handle) -> u64 {
        h.get()
    }
}

impl From<NonZeroU64> for Handle {
    fn from(n: NonZeroU64) -> Handle {
        Handle(n)
    }
}

impl fmt::Display for Handle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl fmt::LowerHex for Handle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::LowerHex::fmt(&self.0, f)
    }
}

/// Why a string is not a handle.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ParseHandleError {
    /// The string is empty.
    #[error("empty handle")]
    Empty,
    /// The number is 0, which no handle is.
    #[error("handle 0 is never valid")]
    Zero,
    /// Not a decimal or `0x` hex number that fits in 64 bits (a sign, a
    /// space or any other character makes it so).
    #[error("not a decimal or 0x-hex 64-bit number")]
    Malformed,
}

impl FromStr for Handle {
    type Err = ParseHandleError;

    /// Accepts decimal (`12345`) or hex with a `0x`/`0X` prefix
    /// (`0x3039`), with no sign and no surrounding spaces.
    fn from_str(s: &str) -> Result<Handle, ParseHandleError> {
        if s.is_empty() {
            return Err(ParseHandleError::Empty);
        }
        let (digits, radix) = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
            Some(hex) => (hex, 16),
            None => (s, 10),
        };
        // from_str_radix accepts a leading '+'; a handle does not.
        if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
            return Err(ParseHandleError::Malformed);
        }
        let raw = u64::from_str_radix(digits, radix).map_err(|_| ParseHandleError::Malformed)?;
        Handle::new(raw).ok_or(ParseHandleError::Zero)
    }
}

/// Width of the slot index, the low bits of a handle.
pub const SLOT_BITS: u32 = 28;
/// Width of the slot generation, above the slot index.
pub const GENERATION_BITS: u32 = 24;
/// Width of the instance epoch, the top bits of a handle.
pub const EPOCH_BITS: u32 = 12;

/// The bits of a slot index ([`SLOT_BITS`] ones).
pub const SLOT_MASK: u64 = (1 << SLOT_BITS) - 1;
/// The bits of a generation, and its largest value ([`GENERATION_BITS`]
/// ones).
pub const GENERATION_MASK: u32 = (1 << GENERATION_BITS) - 1;
/// The bits of an epoch, and its largest value ([`EPOCH_BITS`] ones).
pub const EPOCH_MASK: u16 = (1 << EPOCH_BITS) - 1;

/// Number of distinct slots a handle can name.
pub const MAX_SLOTS: u64 = 1 << SLOT_BITS;

/// The parts of a handle.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct HandleParts {
    /// The daemon instance's epoch, drawn at its start; never 0 in a valid
    /// handle.
    pub epoch: u16,
    /// The slot's generation while the object lives; it moves on when the
    /// object dies, so the handle goes stale.
    pub generation: u32,
    /// The slot index (the registry keeps the shard in its low bits).
    pub slot: u32,
}

impl HandleParts {
    /// Packs the parts; `epoch` must be non-zero for the result to be a valid
    /// handle. Bits beyond each field's width are dropped.
    #[inline]
    pub fn encode(self) -> u64 {
        (u64::from(self.epoch & EPOCH_MASK) << (SLOT_BITS + GENERATION_BITS))
            | (u64::from(self.generation & GENERATION_MASK) << SLOT_BITS)
            | (u64::from(self.slot) & SLOT_MASK)
    }

    /// Takes a handle apart. Any `u64` decodes; whether the parts name a
    /// live object is the registry's question.
    #[inline]
    pub fn decode(handle: u64) -> HandleParts {
        HandleParts {
            epoch: (handle >> (SLOT_BITS + GENERATION_BITS)) as u16 & EPOCH_MASK,
            generation: (handle >> SLOT_BITS) as u32 & GENERATION_MASK,
            slot: (handle & SLOT_MASK) as u32,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    #[test]
    fn parses_decimal_and_hex() {
        assert_eq!("1".parse::<Handle>().map(Handle::get), Ok(1));
        assert_eq!("0x10".parse::<Handle>().map(Handle::get), Ok(16));
        assert_eq!("0XfF".parse::<Handle>().map(Handle::get), Ok(255));
        assert_eq!(
            "18446744073709551615".parse::<Handle>().map(Handle::get),
            Ok(u64::MAX)
        );
        assert_eq!(
            "0xffffffffffffffff".parse::<Handle>().map(Handle::get),
            Ok(u64::MAX)
        );
    }

    #[test]
    fn rejects_bad_input() {
        assert_eq!("".parse::<Handle>(), Err(ParseHandleError::Empty));
        assert_eq!("0".parse::<Handle>(), Err(ParseHandleError::Zero));
        assert_eq!("0x0".parse::<Handle>(), Err(ParseHandleError::Zero));
        for bad in [
            "0x",
            "+5",
            "-5",
            " 5",
            "5 ",
            "12a",
            "0x1g",
            "18446744073709551616",
            "0x10000000000000000",
            "0b101",
        ] {
            assert_eq!(
                bad.parse::<Handle>(),
                Err(ParseHandleError::Malformed),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn zero_is_never_a_handle() {
        assert!(Handle::new(0).is_none());
        assert_eq!(std::mem::size_of::<Option<Handle>>(), 8);
    }

    proptest! {
        #[test]
        fn display_round_trips(raw in 1u64..) {
            let h = Handle::new(raw).unwrap();
            prop_assert_eq!(h.to_string().parse::<Handle>(), Ok(h));
            prop_assert_eq!(format!("{h:#x}").parse::<Handle>(), Ok(h));
        }

        #[test]
        fn garbage_never_panics(s in ".{0,24}") {
            let _ = s.parse::<Handle>();
        }

        #[test]
        fn round_trips(epoch in 1u16..=EPOCH_MASK, generation in 0u32..=GENERATION_MASK, slot in 0u32..(1 << SLOT_BITS)) {
            let parts = HandleParts { epoch, generation, slot };
            let handle = parts.encode();
            prop_assert_ne!(handle, 0);
            prop_assert_eq!(HandleParts::decode(handle), parts);
        }
    }
}
