//! hregd: the hreg daemon as a library, so its parts can be tested and
//! benchmarked in process.
//!
//! It serves the registry of objects (the `hreg-registry` crate) to the
//! sessions of attached clients ([`session`], their shared memory in [`shm`]):
//! the control socket ([`control`]), the ring workers ([`worker`]), the
//! settings ([`config`]), where logs go ([`logging`]) and rate-limited
//! warnings ([`ratelimit`]), where the registry is kept across restarts
//! ([`state`]), and the memory all that may take, from the settings
//! ([`bound`]). `unsafe` is confined to [`peer`] (reading `SO_PEERCRED`)
//! and [`state`] (taking the descriptors systemd passed).

#![deny(unsafe_code)]

pub mod admin;
pub mod admission;
pub mod bound;
pub mod config;
pub mod control;
pub mod daemon;
pub mod doorbell;
pub mod listener;
pub mod logging;
pub mod peer;
pub mod ratelimit;
pub mod session;
pub mod shm;
pub mod state;
pub mod sync;
pub mod worker;
