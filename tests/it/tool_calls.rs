//! Tool-call repair (issue 9): a whole answer's tool call with damaged but
//! mendable arguments, or a tool name in another case, reaches the client
//! mended (and counted); one that cannot be mended fails its attempt, which
//! falls back to the next candidate.

use std::sync::Arc;

use serde_json::{Value, json};

use crate::support::gateway::{provider, start};
use crate::support::mock::{Behavior, Mock, Reply};

/// A chat answer calling `name` with `arguments` (as text).
fn calling(name: &str, arguments: &str) -> Behavior {
    let body = json!({"id": "c", "object": "chat.completion", "created": 1, "model": "m",
            "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {"role": "assistant", "content": null,
                "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": name, "arguments": arguments}}]}}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 5, "total_tokens": 10}})
    .to_string();
    Behavior::Custom(Arc::new(move |_| Reply::json(200, body.clone())))
}

fn request(model: &str) -> String {
    json!({"model": model, "messages": [{"role": "user", "content": "write a.txt"}],
        "tools": [{"type": "function", "function": {"name": "write_file", "parameters": {"type": "object"}}}]})
    .to_string()
}

#[tokio::test]
async fn a_damaged_tool_call_is_mended_and_counted() {
    let mock = Mock::start().await;
    mock.on_model("m", calling("Write_File", "```json\n{\"path\": \"a.txt\", \"content\": \"hi\",}\n```"));
    let gw = start(&format!("providers:\n{}", provider("a", &mock.base_url(), &["k"], &["m"]))).await;
    let answer = gw.post("/v1/chat/completions", &request("a/m"), &[]).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    let function = &answer.json()["choices"][0]["message"]["tool_calls"][0]["function"];
    assert_eq!(function["name"], "write_file");
    let arguments: Value = serde_json::from_str(function["arguments"].as_str().unwrap()).unwrap();
    assert_eq!(arguments, json!({"path": "a.txt", "content": "hi"}));
    let metrics = gw.get("/metrics", &[]).await.text();
    for kind in ["fence", "trailing_comma", "name_case"] {
        assert!(
            metrics.contains(&format!("freeway_tool_call_repairs_total{{kind=\"{kind}\"}} 1")),
            "{kind}:\n{metrics}"
        );
    }
}

#[tokio::test]
async fn a_tool_call_that_cannot_be_mended_falls_back_to_the_next_candidate() {
    let (a, b) = (Mock::start().await, Mock::start().await);
    a.on_model("m", calling("write_file", "{\"path\": \"a.txt\", \"content\": \"half a fi"));
    b.on_model("n", calling("write_file", "{\"path\": \"a.txt\", \"content\": \"hi\"}"));
    let yaml = format!(
        "providers:\n{}{}routes:\n  r:\n    targets: [a/m, b/n]\n",
        provider("a", &a.base_url(), &["ka"], &["m"]),
        provider("b", &b.base_url(), &["kb"], &["n"]),
    );
    let gw = start(&yaml).await;
    let answer = gw.post("/v1/chat/completions", &request("r"), &[]).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(answer.routed_via(), "b/n", "a call cut inside a string reached the client");
    assert_eq!(answer.fallback_attempts(), 1);
    let only_a = gw.post("/v1/chat/completions", &request("a/m"), &[]).await;
    assert_eq!(only_a.status, 502, "{}", only_a.text());
    assert!(only_a.text().contains("not valid JSON"), "{}", only_a.text());
}
