//! Shared helpers for the end-to-end tests: finding the real binaries, making keys and state
//! directories. The tests themselves live in `tests/` beside this crate's `src/`.

use std::path::{Path, PathBuf};

/// The `vitalgate` binary built in the same target directory as the running test.
/// `cargo build --workspace --bins` (which the test script runs first) builds it.
pub fn vitalgate_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test>-<hash> -> target/<profile>/vitalgate
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test executable lives in target/<profile>/deps");
    let bin = profile_dir.join("vitalgate");
    assert!(
        bin.exists(),
        "{} not found: run `cargo build --workspace --bins` first",
        bin.display()
    );
    bin
}

/// Writes a fresh 0600 key file into `dir` and returns its path.
pub fn new_key(dir: &Path) -> PathBuf {
    let p = dir.join("db.key");
    vitalgate::store::key::create_key_file(&p).expect("create key file");
    p
}

/// A minimal config file pointing the store key at `key_file`, with extra TOML appended.
pub fn write_config(dir: &Path, key_file: &Path, extra: &str) -> PathBuf {
    let p = dir.join("vitalgate.toml");
    let text = format!(
        "[gateway]\nid = \"test-gw\"\n\n[store]\nkey_file = \"{}\"\nkey_credential = \"absent-credential\"\n{extra}",
        key_file.display()
    );
    std::fs::write(&p, text).expect("write config");
    p
}
