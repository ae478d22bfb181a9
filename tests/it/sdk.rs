//! The official OpenAI Python SDK against a real gateway: chat, stream,
//! routing headers, a stream that fails after its first byte, errors.
//! Runs when `python3 -c "import openai"` works (`.ci/run` installs it and
//! requires it); otherwise it says it was skipped.

use crate::support::gateway::{provider, start};
use crate::support::mock::{Behavior, Mock};

#[tokio::test]
async fn the_openai_python_sdk_works_through_freeway() {
    let m = Mock::start().await;
    m.on_model("cut", Behavior::CutAfter(1));
    m.on_model("bad", Behavior::status(503));
    let yaml = format!(
        "server:\n  api_keys: [sdk-test-token-0123456789]\nproviders:\n{}routes:\n  demo:\n    targets: [p/bad, p/ok]\n",
        provider("p", &m.base_url(), &["k"], &["ok", "cut", "bad"])
    );
    let gw = start(&yaml).await;
    crate::support::clients::python_sdk("openai", "openai_sdk.py", gw.url("/v1"), "openai sdk ok").await;
}
