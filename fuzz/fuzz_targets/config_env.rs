//! See fuzz/checks.rs, `config_env`, for what this target asserts.
#![no_main]

#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::config_env(data));
