//! Value storage: how the bytes of one object are kept in daemon memory.
//!
//! The registry only calls [`Value::new`], [`Value::as_bytes`] and
//! [`Value::len`], so the representation can change (a later step serves
//! values from a read-only shared mapping) without touching the registry.
//! Short values live inside the slot itself; longer ones in one heap block,
//! allocated fallibly so a huge request fails with an error instead of
//! aborting the daemon.

use std::collections::TryReserveError;

/// Values up to this many bytes are stored inline, with no allocation.
pub const INLINE_VALUE: usize = 22;

/// The bytes of one object.
#[derive(Clone, Debug)]
pub enum Value {
    Inline { len: u8, bytes: [u8; INLINE_VALUE] },
    Heap(Box<[u8]>),
}

impl Default for Value {
    fn default() -> Self {
        Value::Inline {
            len: 0,
            bytes: [0; INLINE_VALUE],
        }
    }
}

impl Value {
    /// A copy of `bytes`; fails only when memory cannot be had.
    pub fn new(bytes: &[u8]) -> Result<Value, TryReserveError> {
        if bytes.len() <= INLINE_VALUE {
            let mut inline = [0u8; INLINE_VALUE];
            inline[..bytes.len()].copy_from_slice(bytes);
            return Ok(Value::Inline {
                len: bytes.len() as u8,
                bytes: inline,
            });
        }
        let mut heap = Vec::new();
        heap.try_reserve_exact(bytes.len())?;
        heap.extend_from_slice(bytes);
        Ok(Value::Heap(heap.into_boxed_slice()))
    }

    #[inline]
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            Value::Inline { len, bytes } => &bytes[..usize::from(*len)],
            Value::Heap(heap) => heap,
        }
    }

    #[inline]
    pub fn len(&self) -> usize {
        self.as_bytes().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_bytes_inline_and_on_heap() {
        for len in [0, 1, INLINE_VALUE, INLINE_VALUE + 1, 4096] {
            let bytes: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let value = Value::new(&bytes).unwrap();
            assert_eq!(value.as_bytes(), &bytes[..]);
            assert_eq!(value.len(), len);
            assert_eq!(matches!(value, Value::Inline { .. }), len <= INLINE_VALUE);
        }
        assert!(std::mem::size_of::<Value>() <= 24);
    }
}
