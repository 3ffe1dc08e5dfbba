//! See fuzz/checks.rs, `http_head`, for what this target asserts.
#![no_main]

#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::http_head(data));
