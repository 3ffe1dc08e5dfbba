//! See fuzz/checks.rs, `redis_reply`, for what this target asserts.
#![no_main]

#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::redis_reply(data));
