//! Builds the provider plugins in `providers/` (a workspace of its own) for
//! wasm32-wasip2 and puts the components where `src/plugin.rs` embeds them.

// A build script reports failure by panicking.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The plugin crates built into the binary, by crate directory.
const PLUGINS: &[&str] = &["openai-compat", "gemini", "cohere", "anthropic"];

/// Plugins built for the tests only (misbehaving on purpose, or built
/// against another interface version); never embedded. The tests find them
/// through `FREEWAY_TEST_PLUGINS`.
const TEST_PLUGINS: &[&str] = &["misbehave", "old-interface", "interface-0-1", "interface-0-2", "minimal-plugin"];

const TARGET: &str = "wasm32-wasip2";

fn main() {
    let root = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let providers = root.join("providers");
    // `wit` holds one folder per interface version; `sdk` is the guest SDK
    // every plugin builds on.
    for path in ["wit", "sdk", "testing", "Cargo.toml", "Cargo.lock", ".cargo"].iter().chain(PLUGINS) {
        println!("cargo:rerun-if-changed=providers/{path}");
    }
    println!("cargo:rerun-if-changed=examples/minimal-plugin");
    let out = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    ensure_target();
    // Share one plugin build among debug, release, test and clippy builds:
    // OUT_DIR is <target>/<profile>/build/<pkg>/out.
    let target_dir = out.ancestors().nth(4).map(|t| t.join("providers")).unwrap_or_else(|| out.join("providers"));
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let mut cmd = Command::new(cargo);
    // From inside providers/, so that its .cargo/config.toml (target and
    // guest link flags) applies.
    cmd.current_dir(&providers);
    cmd.args(["build", "--release", "--locked", "--target", TARGET])
        .arg("--manifest-path")
        .arg(providers.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(&target_dir);
    for plugin in PLUGINS.iter().chain(TEST_PLUGINS) {
        cmd.args(["-p", plugin]);
    }
    // The outer build's flags and wrappers (clippy's, coverage's) are for
    // the host crate, not for the guests.
    for var in [
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_BUILD_RUSTFLAGS",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_PRIMARY_PACKAGE",
    ] {
        cmd.env_remove(var);
    }
    let status = cmd.status().unwrap_or_else(|e| panic!("cannot run cargo to build the plugins: {e}"));
    assert!(status.success(), "building the provider plugins in providers/ failed (see above)");
    let dest = out.join("plugins");
    std::fs::create_dir_all(&dest).expect("create OUT_DIR/plugins");
    for plugin in PLUGINS {
        let file = format!("{}.wasm", plugin.replace('-', "_"));
        let built = target_dir.join(TARGET).join("release").join(&file);
        copy_if_changed(&built, &dest.join(&file));
    }
    // Each test plugin in a folder of its own, named as the plugin calls itself.
    let tests = out.join("test-plugins");
    for plugin in TEST_PLUGINS {
        let built = target_dir.join(TARGET).join("release").join(format!("{}.wasm", plugin.replace('-', "_")));
        let folder = tests.join(plugin.trim_end_matches("-plugin"));
        std::fs::create_dir_all(&folder).expect("create OUT_DIR/test-plugins");
        copy_if_changed(&built, &folder.join(format!("{}.wasm", plugin.trim_end_matches("-plugin"))));
    }
    println!("cargo:rustc-env=FREEWAY_TEST_PLUGINS={}", tests.display());
}

/// The wasm32-wasip2 standard library must be installed; rust-toolchain.toml
/// lists it, and this adds it when rustup did not.
fn ensure_target() {
    let rustc = env::var("RUSTC").unwrap_or_else(|_| "rustc".to_owned());
    let libdir = Command::new(&rustc)
        .args(["--print", "target-libdir", "--target", TARGET])
        .output()
        .ok()
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
    if libdir.as_deref().is_some_and(|d| d.join("libstd").exists() || has_std(d)) {
        return;
    }
    let added = Command::new("rustup").args(["target", "add", TARGET]).status().is_ok_and(|s| s.success());
    assert!(added, "the {TARGET} target is missing: run `rustup target add {TARGET}`");
}

fn has_std(dir: &Path) -> bool {
    std::fs::read_dir(dir)
        .map(|entries| entries.filter_map(Result::ok).any(|e| e.file_name().to_string_lossy().starts_with("libstd-")))
        .unwrap_or(false)
}

fn copy_if_changed(from: &Path, to: &Path) {
    let new = std::fs::read(from).unwrap_or_else(|e| panic!("{}: {e}", from.display()));
    if std::fs::read(to).ok().as_deref() != Some(new.as_slice()) {
        std::fs::write(to, new).unwrap_or_else(|e| panic!("{}: {e}", to.display()));
    }
}
