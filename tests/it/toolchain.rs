//! What a fresh clone is built with: the Rust version Cargo.toml declares
//! (and the README names) is at least what every locked dependency
//! declares, and the README installs with the lock file.

use std::path::{Path, PathBuf};

const MANIFEST: &str = include_str!("../../Cargo.toml");
const BENCH_MANIFEST: &str = include_str!("../../bench/Cargo.toml");
const LOCK: &str = include_str!("../../Cargo.lock");
const README: &str = include_str!("../../README.md");

/// A `rust-version` such as "1.89" or "1.85.0", as (major, minor, patch).
fn version(text: &str) -> (u64, u64, u64) {
    let mut parts = text.split('.').map(|p| {
        p.parse::<u64>()
            .unwrap_or_else(|_| panic!("not a version: {text:?}"))
    });
    let mut next = || parts.next().unwrap_or(0);
    (next(), next(), next())
}

/// The `rust-version` a manifest declares, if any.
fn rust_version(manifest: &str) -> Option<String> {
    let manifest: toml::Table = toml::from_str(manifest).expect("manifest TOML");
    manifest
        .get("package")?
        .get("rust-version")?
        .as_str()
        .map(str::to_owned)
}

/// Where cargo unpacks registry sources: `$CARGO_HOME/registry/src/*/`.
fn registry_dirs() -> Vec<PathBuf> {
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| Path::new(&home).join(".cargo")))
        .expect("CARGO_HOME or HOME");
    let src = home.join("registry/src");
    std::fs::read_dir(&src)
        .unwrap_or_else(|e| panic!("{}: {e}", src.display()))
        .map(|entry| entry.expect("registry entry").path())
        .collect()
}

#[test]
fn declared_rust_version_covers_every_locked_dependency() {
    let declared = rust_version(MANIFEST).expect("Cargo.toml declares rust-version");
    assert_eq!(
        rust_version(BENCH_MANIFEST).as_deref(),
        Some(declared.as_str()),
        "bench/Cargo.toml declares the same rust-version"
    );
    let lock: toml::Table = toml::from_str(LOCK).expect("Cargo.lock TOML");
    let registries = registry_dirs();
    let (mut checked, mut needs) = (Vec::new(), Vec::new());
    for package in lock["package"].as_array().expect("packages") {
        let field = |key: &str| package.get(key).and_then(|v| v.as_str());
        let (name, ver) = (
            field("name").expect("name"),
            field("version").expect("version"),
        );
        if !field("source").is_some_and(|s| s.starts_with("registry+")) {
            continue; // a workspace member
        }
        // Only the packages built on this platform are unpacked (not the
        // Windows- or wasm-only ones).
        let Some(manifest) = registries
            .iter()
            .map(|dir| dir.join(format!("{name}-{ver}/Cargo.toml")))
            .find(|path| path.is_file())
        else {
            continue;
        };
        checked.push(name.to_owned());
        let text = std::fs::read_to_string(&manifest).expect("read manifest");
        if let Some(required) = rust_version(&text) {
            needs.push((version(&required), format!("{name} {ver} needs {required}")));
        }
    }
    for built in ["rusqlite", "libsqlite3-sys", "tonic", "tokio", "rustls"] {
        assert!(
            checked.iter().any(|name| name == built),
            "{built} was not found unpacked in {registries:?}: build first"
        );
    }
    let too_new: Vec<&String> = needs
        .iter()
        .filter(|(required, _)| *required > version(&declared))
        .map(|(_, what)| what)
        .collect();
    assert!(
        too_new.is_empty(),
        "Cargo.toml declares rust-version = {declared:?}, but {too_new:?}"
    );
    let highest = needs
        .iter()
        .map(|(v, _)| *v)
        .max()
        .expect("some declare one");
    assert_eq!(
        version(&declared),
        highest,
        "rust-version {declared} is higher than any locked dependency needs ({highest:?}): \
         declare what the lock needs"
    );
    assert!(
        README.contains(&format!("Rust toolchain,\n{declared} or later"))
            || README.contains(&format!("Rust toolchain, {declared} or later")),
        "the README names the minimum Rust version, {declared}"
    );
}

/// `cargo install` ignores Cargo.lock unless told `--locked`: every install
/// command in the README uses the tested dependency set.
#[test]
fn readme_installs_with_the_lock_file() {
    let installs: Vec<&str> = README
        .split('`')
        .filter(|code| code.starts_with("cargo install"))
        .collect();
    assert!(
        installs.contains(&"cargo install --locked --path ."),
        "the README installs aitokens with `cargo install --locked --path .`: {installs:?}"
    );
    for install in installs {
        assert!(install.contains("--locked"), "README: `{install}`");
    }
}
