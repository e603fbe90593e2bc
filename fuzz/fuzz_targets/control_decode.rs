//! Fuzz target: control-socket message decoding (`Request::decode` and
//! `Reply::decode`) on arbitrary bytes. The checks live in `src/checks.rs`,
//! shared with the stable corpus replay in `proto/tests/fuzz_corpus.rs`.
#![no_main]

#[allow(dead_code)]
#[path = "../src/checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    checks::control_decode(data);
});
