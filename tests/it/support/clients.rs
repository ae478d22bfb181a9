//! Third-party clients the tests drive (the Python SDKs, the coding-agent
//! CLIs): found, or skipped with a note. `.ci/run` installs them and sets
//! `FREEWAY_REQUIRE_CLIENTS=1`, under which a missing one fails the test
//! instead of skipping it: CI never passes by skipping.

use std::process::Command;

/// Says `what` is missing: a skip, or under `FREEWAY_REQUIRE_CLIENTS` a
/// failure.
pub fn missing(what: &str, install: &str) {
    if std::env::var_os("FREEWAY_REQUIRE_CLIENTS").is_some_and(|v| v == "1") {
        panic!("{what} is not installed, and FREEWAY_REQUIRE_CLIENTS=1 ({install})");
    }
    eprintln!("skipped: {what} is not installed ({install})");
}

/// Runs `tests/sdk/<script> BASE_URL` when the Python package `module`
/// imports, asserts it succeeded and printed `ok_line`; `false` when it was
/// skipped.
pub async fn python_sdk(module: &str, script: &str, base: String, ok_line: &str) -> bool {
    let imports = Command::new("python3").args(["-c", &format!("import {module}")]).output();
    if !imports.is_ok_and(|o| o.status.success()) {
        missing(&format!("the {module} Python package"), &format!("pip install {module}"));
        return false;
    }
    let path = format!("{}/tests/sdk/{script}", env!("CARGO_MANIFEST_DIR"));
    let out = tokio::task::spawn_blocking(move || Command::new("python3").arg(path).arg(base).output())
        .await
        .unwrap()
        .unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains(ok_line), "{stdout}");
    true
}
