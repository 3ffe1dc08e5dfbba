//! See fuzz/checks.rs, `proxy_headers`, for what this target asserts.
#![no_main]

#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::proxy_headers(data));
