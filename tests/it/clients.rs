//! Named clients in `server.api_keys`: budgets (rpm, rpd, tpd), the models
//! each may use, and their names in the request log and metrics; through
//! real HTTP and a mock upstream.

use std::time::Duration;

use freeway::catalog::Catalog;
use freeway::config::{Config, Env};
use serde_json::json;

use crate::support::gateway::{Answer, TestGateway, chat_body, provider, start};
use crate::support::mock::Mock;

const A: &str = "team-a-token-0123456789";
const B: &str = "team-b-token-0123456789";
const BARE: &str = "bare-token-0123456789";

async fn gateway(mock: &Mock, clients: &str, extra: &str) -> TestGateway {
    let yaml = format!(
        "server:\n  api_keys:\n    - {BARE}\n{clients}providers:\n{}aliases:\n  \"claude-*\": p/cheap\n{extra}",
        provider("p", &mock.base_url(), &["k"], &["cheap", "big"])
    );
    start(&yaml).await
}

async fn chat(gw: &TestGateway, token: &str, model: &str) -> Answer {
    gw.post("/v1/chat/completions", &chat_body(model, false), &[("authorization", &format!("Bearer {token}"))]).await
}

async fn message(gw: &TestGateway, token: &str, model: &str) -> Answer {
    let body = json!({"model": model, "max_tokens": 64, "messages": [{"role": "user", "content": "hi"}]});
    gw.post("/v1/messages", &body.to_string(), &[("x-api-key", token), ("anthropic-version", "2023-06-01")]).await
}

fn retry_after(answer: &Answer) -> u64 {
    answer.header("retry-after").parse().unwrap_or_else(|_| panic!("no Retry-After: {:?}", answer.headers))
}

#[tokio::test]
async fn a_client_over_its_rpd_gets_429_while_another_is_served() {
    let mock = Mock::start().await;
    let clients = format!("    - {{name: team-a, token: {A}, rpd: 2}}\n    - {{name: team-b, token: {B}, rpd: 100}}\n");
    let gw = gateway(&mock, &clients, "").await;
    for _ in 0..2 {
        assert_eq!(chat(&gw, A, "p/cheap").await.status, 200);
    }
    let refused = chat(&gw, A, "p/cheap").await;
    assert_eq!(refused.status, 429, "{}", refused.text());
    assert_eq!(refused.json()["error"]["code"], "client_budget_exceeded", "{}", refused.text());
    assert!(refused.text().contains("team-a"), "{}", refused.text());
    // The day rolls: the first request leaves 24 h later, to within the
    // state store's five-minute day buckets.
    let wait = retry_after(&refused);
    assert!((86_100..=86_401).contains(&wait), "Retry-After {wait}");
    assert_eq!(mock.chats().len(), 2, "a refused request reached the upstream");
    assert_eq!(chat(&gw, B, "p/cheap").await.status, 200, "team-b has its own budget");
    assert_eq!(chat(&gw, BARE, "p/cheap").await.status, 200, "a bare token has no budget");
    // Refused requests count against nothing: team-a stays refused, not further behind.
    assert_eq!(message(&gw, A, "claude-x").await.status, 429);
}

#[tokio::test]
async fn a_client_over_its_rpm_waits_for_the_minute_to_slide() {
    let mock = Mock::start().await;
    let gw = gateway(&mock, &format!("    - {{name: bot, token: {A}, rpm: 3}}\n"), "").await;
    for _ in 0..3 {
        assert_eq!(chat(&gw, A, "p/cheap").await.status, 200);
    }
    let refused = chat(&gw, A, "p/cheap").await;
    assert_eq!(refused.status, 429, "{}", refused.text());
    let wait = retry_after(&refused);
    assert!((59..=61).contains(&wait), "Retry-After {wait}");
    assert!(refused.text().contains("3 requests a minute"), "{}", refused.text());
}

#[tokio::test]
async fn a_client_over_its_tpd_is_refused_once_answers_reported_the_tokens() {
    let mock = Mock::start().await;
    // The mock reports 10 tokens an answer.
    let gw = gateway(&mock, &format!("    - {{name: bot, token: {A}, tpd: 25}}\n"), "").await;
    for _ in 0..3 {
        assert_eq!(chat(&gw, A, "p/cheap").await.status, 200);
    }
    let refused = chat(&gw, A, "p/cheap").await;
    assert_eq!(refused.status, 429, "{}", refused.text());
    assert!(refused.text().contains("25 tokens a day"), "{}", refused.text());
    assert!(retry_after(&refused) > 86_000);
    // Streamed answers settle too, when the stream ends.
    let mock = Mock::start().await;
    let gw = gateway(&mock, &format!("    - {{name: bot, token: {A}, tpd: 5}}\n"), "").await;
    let body = json!({"model": "p/cheap", "stream": true, "stream_options": {"include_usage": true},
                      "messages": [{"role": "user", "content": "hi"}]});
    let auth = [("authorization", format!("Bearer {A}"))];
    let auth: Vec<(&str, &str)> = auth.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let streamed = gw.post("/v1/chat/completions", &body.to_string(), &auth).await;
    assert_eq!(streamed.status, 200);
    assert!(streamed.text().contains("usage"), "{}", streamed.text());
    let mut status = 0;
    for _ in 0..50 {
        status = chat(&gw, A, "p/cheap").await.status.as_u16();
        if status == 429 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(status, 429, "the stream's usage was not settled");
}

#[tokio::test]
async fn a_model_outside_the_globs_is_403_in_each_dialect() {
    let mock = Mock::start().await;
    let gw = gateway(&mock, &format!("    - {{name: cheapskate, token: {A}, models: [\"p/cheap*\"]}}\n"), "").await;
    assert_eq!(chat(&gw, A, "p/cheap").await.status, 200);
    let refused = chat(&gw, A, "p/big").await;
    assert_eq!(refused.status, 403, "{}", refused.text());
    let body = refused.json();
    assert_eq!(body["error"]["type"], "permission_error", "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("p/big"), "{body}");
    // Aliases apply first: claude-* stands for p/cheap, which is allowed.
    assert_eq!(message(&gw, A, "claude-haiku").await.status, 200);
    let refused = message(&gw, A, "p/big").await;
    assert_eq!(refused.status, 403, "{}", refused.text());
    let body = refused.json();
    assert_eq!(body["type"], "error", "Anthropic's shape: {body}");
    assert_eq!(body["error"]["type"], "permission_error", "{body}");
    assert_eq!(mock.chats().len(), 2, "a refused model reached the upstream");
    assert_eq!(chat(&gw, BARE, "p/big").await.status, 200, "bare tokens use every model");
    // The model list shows a restricted client only what it may use.
    let ids = |answer: crate::support::gateway::Answer| -> Vec<String> {
        answer.json()["data"].as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap().to_owned()).collect()
    };
    let listed = ids(gw.get("/v1/models", &[("authorization", &format!("Bearer {A}"))]).await);
    assert_eq!(listed, ["p/cheap"], "{listed:?}");
    let anthropic = ids(gw.get("/v1/models", &[("x-api-key", A), ("anthropic-version", "2023-06-01")]).await);
    assert_eq!(anthropic, ["p/cheap"]);
    let everything = ids(gw.get("/v1/models", &[("authorization", &format!("Bearer {BARE}"))]).await);
    assert!(everything.contains(&"p/big".to_owned()), "{everything:?}");
}

#[tokio::test]
async fn a_clients_spent_day_survives_a_restart_on_the_same_state_file() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("freeway.db");
    let mock = Mock::start().await;
    let clients = format!("    - {{name: team-a, token: {A}, rpd: 3}}\n    - {{name: team-b, token: {B}, rpd: 3}}\n");
    let state = format!("state:\n  path: {}\n", db.display());
    {
        let gw = gateway(&mock, &clients, &state).await;
        for _ in 0..2 {
            assert_eq!(chat(&gw, A, "p/cheap").await.status, 200);
        }
        assert!(gw.gateway.proxy().state().flush(Duration::from_secs(5)));
    }
    let gw = gateway(&mock, &clients, &state).await;
    assert_eq!(chat(&gw, A, "p/cheap").await.status, 200, "one of team-a's three is left");
    let refused = chat(&gw, A, "p/cheap").await;
    assert_eq!(refused.status, 429, "the restart handed team-a a fresh day: {}", refused.text());
    for _ in 0..3 {
        assert_eq!(chat(&gw, B, "p/cheap").await.status, 200, "team-b spent nothing before");
    }
    assert_eq!(mock.chats().len(), 6);
}

#[tokio::test]
async fn two_gateways_over_one_redis_hold_a_client_to_one_budget() {
    let redis = crate::redis::RedisServer::start();
    let mock = Mock::start().await;
    let clients = format!("    - {{name: team-a, token: {A}, rpd: 4}}\n");
    let state = format!("state:\n  redis: {}\n", redis.url());
    let (one, two) = (gateway(&mock, &clients, &state).await, gateway(&mock, &clients, &state).await);
    crate::redis::wait_connected(&one).await;
    crate::redis::wait_connected(&two).await;
    for i in 0..4 {
        let gw = if i % 2 == 0 { &one } else { &two };
        assert_eq!(chat(gw, A, "p/cheap").await.status, 200, "request {i}");
    }
    for gw in [&one, &two] {
        let refused = chat(gw, A, "p/cheap").await;
        assert_eq!(refused.status, 429, "{}", refused.text());
        assert_eq!(refused.json()["error"]["code"], "client_budget_exceeded");
    }
    assert_eq!(mock.chats().len(), 4, "the upstream was called past the client's shared budget");
}

#[tokio::test]
async fn bare_tokens_work_as_before_and_names_reach_the_log_and_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("freeway.db");
    let mock = Mock::start().await;
    let gw = gateway(
        &mock,
        &format!("    - {{name: team-a, token: {A}}}\n"),
        &format!("state:\n  path: {}\n", db.display()),
    )
    .await;
    assert_eq!(chat(&gw, A, "p/cheap").await.status, 200);
    assert_eq!(chat(&gw, BARE, "p/cheap").await.status, 200);
    assert_eq!(chat(&gw, "not-a-token-0123456789", "p/cheap").await.status, 401);
    let kept = &gw.gateway.config().server.api_keys;
    assert!(kept.len() == 2 && kept.iter().all(|k| k.token().is_empty()), "tokens kept in plain text after load");
    assert!(gw.gateway.proxy().state().flush(Duration::from_secs(5)));
    let conn = rusqlite::Connection::open(&db).unwrap();
    let mut rows = conn.prepare("SELECT client FROM requests ORDER BY id").unwrap();
    let clients: Vec<String> = rows.query_map([], |r| r.get(0)).unwrap().map(Result::unwrap).collect();
    assert_eq!(clients.len(), 2, "{clients:?}");
    assert_eq!(clients[0], "team-a");
    assert!(clients[1].starts_with("token-") && clients[1].len() == 14, "{clients:?}");
    let metrics = gw.get("/metrics", &[]).await.text();
    for series in [
        "freeway_client_requests_total{client=\"team-a\",status=\"200\"} 1",
        "freeway_client_requests_total{client=\"default\",status=\"200\"} 1",
        "freeway_client_tokens_total{client=\"team-a\",kind=\"prompt\"} 7",
        "freeway_client_tokens_total{client=\"default\",kind=\"completion\"} 3",
    ] {
        assert!(metrics.contains(series), "{series} missing from\n{metrics}");
    }
}

#[test]
fn config_errors_name_the_line() {
    let env = Env::from_map([("TEAM_TOKEN", "from-the-environment-0123")]);
    let yaml = "server:
  api_keys:
    - {name: team-a, token: team-a-token-0123456789}
    - {name: team-a, token: team-b-token-0123456789}
    - {name: \"bad name\", token: \"${NOT_SET}\"}
    - {name: c, token: c-token-0123456789, rpm: 0, rpd: -1, tpd: 5}
    - {name: d, token: d-token-0123456789, models: []}
    - {token: e-token-0123456789, models: [\"\"]}
    - {name: f, token: c-token-0123456789}
";
    let e = Config::from_yaml(yaml, "t", &env, &Catalog::empty()).unwrap_err().to_string();
    for expected in [
        "line 4: server.api_keys.1.name: `team-a` names another client too",
        "line 5: server.api_keys.2.token: is empty because NOT_SET is not set",
        "line 5: server.api_keys.2.name: `bad name` must be 1 to 64 characters",
        "line 6: server.api_keys.3.rpm: `0` must be a whole number",
        "line 6: server.api_keys.3.rpd: `-1` must be a whole number",
        "line 7: server.api_keys.4.models: is empty",
        "line 8: server.api_keys.5.name: is required",
        "line 8: server.api_keys.5.models.0: is empty",
        "line 9: server.api_keys.6.token: is the same token as server.api_keys.3",
    ] {
        assert!(e.contains(expected), "{expected:?} missing from\n{e}");
    }
    assert!(!e.contains("tpd"), "{e}");
    // `${VAR}` expands in the object form's token as in a bare one.
    let yaml = "server:\n  api_keys:\n    - {name: team, token: \"${TEAM_TOKEN}\", rpm: 5, models: [\"p/*\"]}\n";
    let loaded = Config::from_yaml(yaml, "t", &env, &Catalog::empty()).unwrap();
    assert_eq!(loaded.config.server.api_keys[0].token(), "from-the-environment-0123");
    // A bare string is still a bare token.
    let yaml = "server:\n  api_keys: [plain-token-0123456789]\n";
    let loaded = Config::from_yaml(yaml, "t", &env, &Catalog::empty()).unwrap();
    assert!(loaded.config.server.api_keys[0].client().is_none());
}
