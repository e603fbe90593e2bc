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
//! as opaque; only the daemon takes them apart.

pub const SLOT_BITS: u32 = 28;
pub const GENERATION_BITS: u32 = 24;
pub const EPOCH_BITS: u32 = 12;

pub const SLOT_MASK: u64 = (1 << SLOT_BITS) - 1;
pub const GENERATION_MASK: u32 = (1 << GENERATION_BITS) - 1;
pub const EPOCH_MASK: u16 = (1 << EPOCH_BITS) - 1;

/// Number of distinct slots a handle can name.
pub const MAX_SLOTS: u64 = 1 << SLOT_BITS;

/// The parts of a handle.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct HandleParts {
    pub epoch: u16,
    pub generation: u32,
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

    proptest! {
        #[test]
        fn round_trips(epoch in 1u16..=EPOCH_MASK, generation in 0u32..=GENERATION_MASK, slot in 0u32..(1 << SLOT_BITS)) {
            let parts = HandleParts { epoch, generation, slot };
            let handle = parts.encode();
            prop_assert_ne!(handle, 0);
            prop_assert_eq!(HandleParts::decode(handle), parts);
        }
    }
}
