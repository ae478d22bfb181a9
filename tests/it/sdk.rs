//! The official OpenAI Python SDK against a real gateway: chat, stream,
//! routing headers, a stream that fails after its first byte, errors.
//! Runs when `python3 -c "import openai"` works (`.ci/run` installs it);
//! otherwise it says it was skipped.

use std::process::Command;

use crate::support::gateway::{provider, start};
use crate::support::mock::{Behavior, Mock};

#[tokio::test]
async fn the_openai_python_sdk_works_through_freeway() {
    let has_sdk = Command::new("python3").args(["-c", "import openai"]).output().is_ok_and(|o| o.status.success());
    if !has_sdk {
        eprintln!("skipped: the openai Python package is not installed (pip install openai)");
        return;
    }
    let m = Mock::start().await;
    m.on_model("cut", Behavior::CutAfter(1));
    m.on_model("bad", Behavior::status(503));
    let yaml = format!(
        "server:\n  api_keys: [sdk-test-token-0123456789]\nproviders:\n{}routes:\n  demo:\n    targets: [p/bad, p/ok]\n",
        provider("p", &m.base_url(), &["k"], &["ok", "cut", "bad"])
    );
    let gw = start(&yaml).await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sdk/openai_sdk.py");
    let base = gw.url("/v1");
    let out = tokio::task::spawn_blocking(move || Command::new("python3").arg(script).arg(base).output())
        .await
        .unwrap()
        .unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("openai sdk ok"));
}
