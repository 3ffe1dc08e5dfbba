//! Replays every committed fuzz input (`fuzz/corpus/<target>/*`) through the same checks the
//! cargo-fuzz targets run (`fuzz/checks.rs`), on stable Rust: a crash found once stays fixed, and
//! the seeds' invariants are checked on every `cargo test`, with no nightly and no libFuzzer.

#[path = "../../fuzz/checks.rs"]
mod checks;

use std::path::{Path, PathBuf};

/// What a target asserts about one input (panics when an invariant fails).
type Check = fn(&[u8]);

/// Every fuzz target, with the check it runs. `every_target_is_replayed` keeps this in step with
/// `fuzz/fuzz_targets/`.
const TARGETS: &[(&str, Check)] = &[
    ("http_head", checks::http_head),
    ("chunked", checks::chunked),
    ("conn_bytes", checks::conn_bytes),
    ("proxy_headers", checks::proxy_headers),
    ("host", checks::host),
    ("config_env", checks::config_env),
    ("redis_reply", checks::redis_reply),
];

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

/// Runs `check` on every file of the target's corpus; fails naming every input that failed.
fn replay(target: &str) {
    let check = TARGETS.iter().find(|(t, _)| *t == target).expect("a known target").1;
    let dir = fuzz_dir().join("corpus").join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .collect();
    files.sort();
    assert!(files.len() >= 5, "{target}: only {} seeds in {}", files.len(), dir.display());
    let failed: Vec<String> = files
        .iter()
        .filter(|path| {
            let data = std::fs::read(path).unwrap();
            std::panic::catch_unwind(|| check(&data)).is_err()
        })
        .map(|path| path.display().to_string())
        .collect();
    assert!(failed.is_empty(), "{target}: {} of {} inputs failed:\n{}", failed.len(), files.len(), failed.join("\n"));
}

#[test]
fn every_target_is_replayed() {
    let mut on_disk: Vec<String> = std::fs::read_dir(fuzz_dir().join("fuzz_targets"))
        .unwrap()
        .map(|e| e.unwrap().path().file_stem().unwrap().to_string_lossy().into_owned())
        .collect();
    on_disk.sort();
    let mut here: Vec<String> = TARGETS.iter().map(|(t, _)| t.to_string()).collect();
    here.sort();
    assert_eq!(on_disk, here);
}

#[test]
fn http_head() {
    replay("http_head");
}

#[test]
fn chunked() {
    replay("chunked");
}

#[test]
fn conn_bytes() {
    replay("conn_bytes");
}

#[test]
fn proxy_headers() {
    replay("proxy_headers");
}

#[test]
fn host() {
    replay("host");
}

#[test]
fn config_env() {
    replay("config_env");
}

#[test]
fn redis_reply() {
    replay("redis_reply");
}
