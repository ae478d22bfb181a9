//! Model discovery through the plugins: free and paid models told apart,
//! metadata read from ids, static config kept, a failed refresh keeps the
//! last good list.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use serde_json::json;

use crate::support::gateway::{chat_body, start};
use crate::support::mock::{Behavior, Mock, Reply, completion};

/// A mock whose `/models` answers `listing` (or 500 while `failing`), and
/// whose chats answer normally.
fn listing_mock(mock: &Mock, listing: serde_json::Value, failing: Arc<AtomicBool>) {
    mock.on_all(Behavior::Custom(Arc::new(move |seen| {
        if seen.path.ends_with("/models") {
            if failing.load(Ordering::SeqCst) {
                return Reply::json(500, r#"{"error":{"message":"listing is down"}}"#);
            }
            return Reply::json(200, listing.to_string());
        }
        Reply::json(200, completion(&seen.model))
    })));
}

fn model_entry<'a>(models: &'a serde_json::Value, id: &str) -> &'a serde_json::Value {
    models["data"].as_array().unwrap().iter().find(|m| m["id"] == id).unwrap_or_else(|| panic!("{id} not in {models}"))
}

#[tokio::test]
async fn discovery_registers_free_and_paid_models_by_price() {
    let m = Mock::start().await;
    let listing = json!({"data": [
        {"id": "meta/llama-3.3-70b-instruct:free", "context_length": 131072, "pricing": {"prompt": "0", "completion": "0"}},
        {"id": "qwen/qwen3-235b-a22b", "context_length": 40960, "pricing": {"prompt": "0", "completion": ""}},
        {"id": "openai/gpt-5", "context_length": 400000, "pricing": {"prompt": "0.00000125", "completion": "0.00001"}},
        {"id": "deepseek/deepseek-r1", "pricing": {"prompt": "free", "completion": "free"}},
    ]});
    listing_mock(&m, listing, Arc::new(AtomicBool::new(false)));
    let yaml = format!(
        "providers:\n  router:\n    plugin: openai-compat\n    base_url: {}\n    keys: [k]\n    options: {{ models_free: pricing }}\n    models: [static-model]\n",
        m.base_url()
    );
    let gw = start(&yaml).await;
    let outcomes = gw.gateway.refresh_models().await;
    assert_eq!(outcomes.len(), 1);
    assert_eq!(outcomes[0].1, Ok(5), "{outcomes:?}");

    let models = gw.get("/v1/models", &[]).await.json();
    assert_eq!(model_entry(&models, "router/meta/llama-3.3-70b-instruct:free")["free"], true);
    assert_eq!(model_entry(&models, "router/meta/llama-3.3-70b-instruct:free")["context_length"], 131072);
    assert_eq!(model_entry(&models, "router/qwen/qwen3-235b-a22b")["free"], true);
    assert_eq!(model_entry(&models, "router/openai/gpt-5")["free"], false);
    assert_eq!(model_entry(&models, "router/deepseek/deepseek-r1")["free"], true);
    assert_eq!(model_entry(&models, "router/static-model")["free"], false, "static models stay as configured");

    // Metadata from the ids.
    let provider = gw.gateway.router().providers()[0].clone();
    let table = provider.models();
    let qwen = table.get("qwen/qwen3-235b-a22b").unwrap();
    assert_eq!((qwen.params_b, qwen.active_params_b), (Some(235.0), Some(22.0)));
    assert!(table.get("deepseek/deepseek-r1").unwrap().reasoning);
    assert!(table.get("qwen/qwen3-235b-a22b").unwrap().discovered);

    // A discovered model routes by its bare id too.
    let answer = gw.post("/v1/chat/completions", &chat_body("openai/gpt-5", false), &[]).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(answer.routed_via(), "router/openai/gpt-5");
}

#[tokio::test]
async fn a_failed_refresh_keeps_the_last_good_list_and_says_so() {
    let m = Mock::start().await;
    let failing = Arc::new(AtomicBool::new(false));
    listing_mock(&m, json!({"data": [{"id": "found-1"}, {"id": "found-2"}]}), failing.clone());
    let yaml = format!(
        "providers:\n  p:\n    plugin: openai-compat\n    base_url: {}\n    keys: [k]\n    models: [m]\n",
        m.base_url()
    );
    let gw = start(&yaml).await;
    assert_eq!(gw.gateway.refresh_models().await[0].1, Ok(3));
    failing.store(true, Ordering::SeqCst);
    let second = gw.gateway.refresh_models().await;
    // The reason's kind, never the upstream's own text (it could echo a key).
    assert_eq!(second[0].1.as_ref().unwrap_err(), "HTTP 500", "{second:?}");
    let ids: Vec<String> = gw.get("/v1/models", &[]).await.json()["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids, ["p/m", "p/found-1", "p/found-2"]);
    let health = gw.get("/health", &[]).await.json();
    assert_eq!(health["discovery"]["p"]["ok"], false, "{health}");
    assert_eq!(health["discovery"]["p"]["models"], 3);
    assert!(health["discovery"]["p"]["error"].as_str().unwrap().contains("500"));
}

#[tokio::test]
async fn static_models_are_never_overwritten_and_paid_prefixes_are_not_free() {
    let m = Mock::start().await;
    let listing = json!({"data": [
        {"id": "m", "context_length": 999},
        {"id": "Qwen/Qwen3-8B"},
        {"id": "Pro/deepseek-ai/DeepSeek-V3"},
    ]});
    listing_mock(&m, listing, Arc::new(AtomicBool::new(false)));
    let yaml = format!(
        "providers:\n  sf:\n    plugin: openai-compat\n    base_url: {}\n    keys: [k]\n    free: true\n    options: {{ models_paid_prefixes: \"Pro/\" }}\n    models:\n      - {{ id: m, context: 4096 }}\n",
        m.base_url()
    );
    let gw = start(&yaml).await;
    gw.gateway.refresh_models().await;
    let table = gw.gateway.router().providers()[0].models();
    assert_eq!(table.get("m").unwrap().context, Some(4096), "the config's entry wins");
    assert!(!table.get("m").unwrap().discovered);
    assert!(table.get("Qwen/Qwen3-8B").unwrap().free, "others follow the provider");
    assert!(!table.get("Pro/deepseek-ai/DeepSeek-V3").unwrap().free);
}
