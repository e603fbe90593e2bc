//! libhreg: the C ABI of hreg, a thin layer over the `hreg` Rust client.
//!
//! This crate owns exactly the C API contract of `DESIGN.md`: the opaque
//! `hreg_client`, the `#[repr(C)]` `hreg_op` and `hreg_stats`, the numeric
//! status, flag and opcode values, and the `extern "C"` entry points. It
//! checks what only C can get wrong (NULL pointers, handle 0, flags on ops
//! that take none, unknown opcodes, buffers a Rust slice cannot describe),
//! converts to and from the Rust client's types, and never lets a panic
//! cross the boundary. The protocol itself is all in the `hreg` crate.
//!
//! The ABI lives in [`ffi`], with every `unsafe` of libhreg;
//! `include/hreg.h` is generated from it.

#![deny(unsafe_code)]
#![allow(non_camel_case_types)]

mod ffi;

pub use ffi::*;
