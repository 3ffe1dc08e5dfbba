//! See fuzz/checks.rs, `conn_bytes`, for what this target asserts.
#![no_main]

#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::conn_bytes(data));
