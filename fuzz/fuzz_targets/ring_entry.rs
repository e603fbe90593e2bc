//! Fuzz target: ring-entry validation (`entry::RingRequest::parse`) on an
//! arbitrary 64-byte entry and an arbitrary data-area size (the input's
//! first 4 bytes). The checks live in `src/checks.rs`, shared with the
//! stable corpus replay in `proto/tests/fuzz_corpus.rs`.
#![no_main]

#[allow(dead_code)]
#[path = "../src/checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    checks::ring_entry(data);
});
