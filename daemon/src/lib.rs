//! hregd: the hreg daemon as a library, so its parts can be tested and
//! benchmarked in process.
//!
//! It owns the registry of objects ([`registry`], values in [`store`]), the
//! sessions of attached clients ([`session`], their shared memory in [`shm`]),
//! the control socket ([`control`]), the ring workers ([`worker`]), the
//! settings ([`config`]), where logs go ([`logging`]) and rate-limited
//! warnings ([`ratelimit`]). `unsafe` is confined to [`shm`] (the mapping) and
//! `hreg_proto::ring` (access to ring memory).

pub mod admin;
pub mod admission;
pub mod config;
pub mod control;
pub mod daemon;
pub mod doorbell;
pub mod listener;
pub mod logging;
pub mod peer;
pub mod ratelimit;
pub mod registry;
pub mod session;
pub mod shm;
pub mod store;
pub mod sync;
pub mod worker;
