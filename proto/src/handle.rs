//! Handle encoding: a non-zero `u64` made of the registry's instance bits,
//! the object's domain, its slot's generation and the slot's index in the
//! domain.
//!
//! ```text
//!  63          54 53            40 39            24 23              0
//! +--------------+----------------+----------------+----------------+
//! | instance (10)|  domain (14)   | generation (16)|   slot (24)    |
//! +--------------+----------------+----------------+----------------+
//! ```
//!
//! The instance bits are drawn when a registry is made and are never 0, so
//! no handle is 0, and a handle of a lost registry (a daemon that started
//! afresh) does not match. The domain is where the object lives: 0 for
//! SHARED objects, one per uid for its private ones (see
//! [`crate::table`]); a client resolves a handle in its own process by
//! reading that domain's slot. Clients otherwise treat handles as opaque
//! ([`Handle`]: non-zero by type, printed in decimal, parsed from decimal
//! or `0x` hex).

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
pub const SLOT_BITS: u32 = 24;
/// Width of the slot generation, above the slot index.
pub const GENERATION_BITS: u32 = 16;
/// Width of the domain, above the generation.
pub const DOMAIN_BITS: u32 = 14;
/// Width of the instance bits, the top bits of a handle.
pub const INSTANCE_BITS: u32 = 10;

/// The bits of a slot index ([`SLOT_BITS`] ones).
pub const SLOT_MASK: u64 = (1 << SLOT_BITS) - 1;
/// The bits of a domain, and its largest value.
pub const DOMAIN_MASK: u16 = (1 << DOMAIN_BITS) - 1;
/// The bits of the instance, and their largest value.
pub const INSTANCE_MASK: u16 = (1 << INSTANCE_BITS) - 1;

/// Number of distinct slots a domain can have.
pub const MAX_SLOTS: u64 = 1 << SLOT_BITS;
/// Number of distinct domains.
pub const MAX_DOMAINS: usize = 1 << DOMAIN_BITS;

/// The parts of a handle.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct HandleParts {
    /// The registry's instance bits; never 0 in a valid handle.
    pub instance: u16,
    /// The domain the object lives in.
    pub domain: u16,
    /// The slot's generation while the object lives; it moves on when the
    /// object dies, so the handle goes stale.
    pub generation: u16,
    /// The slot's index in the domain (the registry keeps the shard in its
    /// low bits).
    pub slot: u32,
}

impl HandleParts {
    /// Packs the parts; `instance` must be non-zero for the result to be a
    /// valid handle. Bits beyond each field's width are dropped.
    #[inline]
    pub fn encode(self) -> u64 {
        (u64::from(self.instance & INSTANCE_MASK) << (SLOT_BITS + GENERATION_BITS + DOMAIN_BITS))
            | (u64::from(self.domain & DOMAIN_MASK) << (SLOT_BITS + GENERATION_BITS))
            | (u64::from(self.generation) << SLOT_BITS)
            | (u64::from(self.slot) & SLOT_MASK)
    }

    /// Takes a handle apart. Any `u64` decodes; whether the parts name a
    /// live object is the registry's question.
    #[inline]
    pub fn decode(handle: u64) -> HandleParts {
        HandleParts {
            instance: (handle >> (SLOT_BITS + GENERATION_BITS + DOMAIN_BITS)) as u16
                & INSTANCE_MASK,
            domain: (handle >> (SLOT_BITS + GENERATION_BITS)) as u16 & DOMAIN_MASK,
            generation: (handle >> SLOT_BITS) as u16,
            slot: (handle & SLOT_MASK) as u32,
        }
    }

    /// The handle, if the parts make one (the instance bits are not 0).
    #[inline]
    pub fn handle(self) -> Option<Handle> {
        Handle::new(self.encode()).filter(|_| self.instance & INSTANCE_MASK != 0)
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
        fn round_trips(instance in 1u16..=INSTANCE_MASK, domain in 0u16..=DOMAIN_MASK, generation: u16, slot in 0u32..(1 << SLOT_BITS)) {
            let parts = HandleParts { instance, domain, generation, slot };
            let handle = parts.handle().expect("non-zero instance");
            prop_assert_eq!(HandleParts::decode(handle.get()), parts);
        }
    }
}
