//! `POST /v1/embeddings`: the same routing and fallback as chat, through
//! each provider's plugin; providers whose plugin has no embeddings are
//! skipped.

use std::sync::Arc;

use serde_json::json;

use crate::support::gateway::{provider, start};
use crate::support::mock::{Behavior, Mock, Reply};

fn embeddings_mock(mock: &Mock, status: u16) {
    mock.on_all(Behavior::Custom(Arc::new(move |seen| {
        if status != 200 {
            return Reply::json(status, r#"{"error":{"message":"down"}}"#);
        }
        assert!(seen.path.ends_with("/embeddings"), "{}", seen.path);
        let n = seen.body["input"].as_array().map_or(1, Vec::len);
        let data: Vec<_> =
            (0..n).map(|i| json!({"object": "embedding", "index": i, "embedding": [0.1, 0.2, i as f64]})).collect();
        Reply::json(
            200,
            json!({"object": "list", "data": data, "model": seen.model, "usage": {"prompt_tokens": 4, "total_tokens": 4}})
                .to_string(),
        )
    })));
}

fn body(model: &str) -> String {
    json!({"model": model, "input": ["first text", "second text"]}).to_string()
}

#[tokio::test]
async fn embeddings_route_and_fall_back_like_chat() {
    let a = Mock::start().await;
    let b = Mock::start().await;
    embeddings_mock(&a, 503);
    embeddings_mock(&b, 200);
    let yaml = format!(
        "providers:\n{}{}routes:\n  embed:\n    targets: [a/e1, b/e2]\n",
        provider("a", &a.base_url(), &["ka"], &["e1"]),
        provider("b", &b.base_url(), &["kb"], &["e2"]),
    );
    let gw = start(&yaml).await;
    let answer = gw.post("/v1/embeddings", &body("embed"), &[]).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(answer.routed_via(), "b/e2");
    assert_eq!(answer.fallback_attempts(), 1);
    let v = answer.json();
    assert_eq!(v["data"].as_array().unwrap().len(), 2);
    assert_eq!(v["model"], "e2");
    assert_eq!(b.chats()[0].body["model"], "e2", "the upstream gets its own model id");
    assert_eq!(b.chats()[0].body["input"][1], "second text");
}

#[tokio::test]
async fn providers_without_embeddings_are_skipped_not_attempted() {
    let claude = Mock::start().await;
    let b = Mock::start().await;
    embeddings_mock(&b, 200);
    let yaml = format!(
        "providers:\n  claude:\n    plugin: anthropic\n    base_url: {}\n    keys: [k]\n    models: [c]\n{}routes:\n  embed:\n    targets: [claude/c, b/e]\n",
        claude.base_url(),
        provider("b", &b.base_url(), &["kb"], &["e"]),
    );
    let gw = start(&yaml).await;
    let answer = gw.post("/v1/embeddings", &body("embed"), &[]).await;
    assert_eq!(answer.routed_via(), "b/e");
    assert_eq!(answer.fallback_attempts(), 0);
    assert_eq!(claude.seen().len(), 0);
    let only_claude = gw.post("/v1/embeddings", &body("claude/c"), &[]).await;
    assert_eq!(only_claude.status, 502);
    assert!(only_claude.text().contains("has no embeddings"), "{}", only_claude.text());
}

#[tokio::test]
async fn embeddings_requests_are_checked() {
    let m = Mock::start().await;
    let gw = start(&format!("providers:\n{}", provider("p", &m.base_url(), &["k"], &["e"]))).await;
    for (body, expect) in [
        (r#"{"model":"p/e"}"#, "missing `input`"),
        (r#"{"model":"p/e","input":[]}"#, "must not be empty"),
        (r#"{"model":"p/e","input":5}"#, "string or an array"),
        (r#"{"input":"x"}"#, "missing `model`"),
    ] {
        let answer = gw.post("/v1/embeddings", body, &[]).await;
        assert_eq!(answer.status, 400, "{body}");
        assert!(answer.json()["error"]["message"].as_str().unwrap().contains(expect), "{body}: {}", answer.text());
    }
    assert_eq!(m.seen().len(), 0);
}
