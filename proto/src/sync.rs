//! The atomics and fences the shared-memory protocols use: std's, or
//! loom's under `--cfg hreg_loom`, so that the loom models in `tests/` run
//! the code that ships (the shim in the manner of sharded-slab's).

#[cfg(hreg_loom)]
pub use loom::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};
#[cfg(not(hreg_loom))]
pub use std::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};
