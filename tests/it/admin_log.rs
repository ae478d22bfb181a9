//! The request log over the admin API (`/admin/api/requests`,
//! `/admin/api/usage`): real traffic through mock upstreams, a real SQLite
//! file, and what the operator reads back: each request with its attempt
//! trail, every filter, pages that stay put while requests arrive, sums
//! per group checked against what was sent, and the refusals.

use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use crate::support::gateway::{Answer, TestGateway, chat_body, provider, start};
use crate::support::mock::{Behavior, Mock};

const CLIENT_1: &str = "client-one-token-0123456789";
const CLIENT_2: &str = "client-two-token-0123456789";
const ADMIN: &str = "admin-log-token-0123456789";

/// Provider `a` (models `m`, which fails with 503, and `x`, rate limited)
/// and `b` (model `n`), route `r` = a/m then b/n, state in `db`.
fn config(a: &Mock, b: &Mock, db: &Path) -> String {
    a.on_model("m", Behavior::status(503));
    a.on_model("x", Behavior::rate_limited("600"));
    format!(
        "server:\n  api_keys: [{CLIENT_1}, {CLIENT_2}]\n  admin_keys: [{ADMIN}]\nproviders:\n{}{}routes:\n  r:\n    targets: [a/m, b/n]\nstate:\n  path: {}\n",
        provider("a", &a.base_url(), &["ka-secret-1"], &["m", "x"]),
        // A paid list price: what "saved" weighs b's tokens with.
        provider("b", &b.base_url(), &["kb-secret-2"], &["{ id: n, price: { input: 2.0, output: 4.0 } }"]),
        db.display()
    )
}

async fn chat(gw: &TestGateway, client: &str, model: &str) -> u16 {
    let auth = format!("Bearer {client}");
    gw.post("/v1/chat/completions", &chat_body(model, false), &[("authorization", &auth)]).await.status.as_u16()
}

async fn admin(gw: &TestGateway, path: &str) -> Answer {
    gw.get(path, &[("authorization", &format!("Bearer {ADMIN}"))]).await
}

/// The rows of one page (asserting it was answered).
async fn rows(gw: &TestGateway, query: &str) -> Vec<Value> {
    let answer = admin(gw, &format!("/admin/api/requests?{query}")).await;
    assert_eq!(answer.status, 200, "{query}: {}", answer.text());
    answer.json()["requests"].as_array().unwrap().clone()
}

fn flush(gw: &TestGateway) {
    assert!(gw.gateway.proxy().state().flush(Duration::from_secs(5)), "the state database was not written");
}

/// Six requests: client 1 asks `r` twice (a fails, b answers) and `b/n`
/// once; client 2 asks `b/n` twice and `a/x` once (429).
async fn traffic(gw: &TestGateway) {
    for (client, model, status) in [
        (CLIENT_1, "r", 200),
        (CLIENT_1, "r", 200),
        (CLIENT_1, "b/n", 200),
        (CLIENT_2, "b/n", 200),
        (CLIENT_2, "b/n", 200),
        (CLIENT_2, "a/x", 429),
    ] {
        assert_eq!(chat(gw, client, model).await, status, "{model}");
    }
    flush(gw);
}

/// The log's label of the client that asked `model` first.
fn label(all: &[Value], model: &str) -> String {
    all.iter().find(|r| r["model"] == model).unwrap()["client"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn a_fallback_shows_with_its_attempt_trail() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (Mock::start().await, Mock::start().await);
    let gw = start(&config(&a, &b, &dir.path().join("freeway.db"))).await;
    assert_eq!(chat(&gw, CLIENT_1, "r").await, 200);
    flush(&gw);
    let answer = admin(&gw, "/admin/api/requests").await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert!(!answer.text().contains("secret"), "a key or token in the log: {}", answer.text());
    let page = answer.json();
    let row = &page["requests"][0];
    assert_eq!(page["requests"].as_array().unwrap().len(), 1);
    assert_eq!(page["next_cursor"], Value::Null);
    assert_eq!(row["model"], "r");
    assert_eq!(row["answered_by"], "b/n");
    assert_eq!(row["status"], 200);
    assert_eq!((row["tokens_in"].as_u64(), row["tokens_out"].as_u64()), (Some(7), Some(3)));
    assert!(row["client"].as_str().unwrap().starts_with("token-"), "{row}");
    assert!(row["time"].as_str().unwrap().ends_with('Z'), "{row}");
    let trail = row["attempts"].as_array().unwrap();
    assert_eq!(trail.len(), 2, "{row}");
    assert_eq!(
        (&trail[0]["provider"], &trail[0]["model"], &trail[0]["status"]),
        (&"a".into(), &"m".into(), &503.into())
    );
    assert_eq!((&trail[1]["provider"], &trail[1]["reason"]), (&"b".into(), &"ok".into()));
    assert_eq!(trail[1]["key"].as_str().unwrap().len(), 16, "a fingerprint");
}

#[tokio::test]
async fn each_filter_keeps_only_its_rows() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (Mock::start().await, Mock::start().await);
    let gw = start(&config(&a, &b, &dir.path().join("freeway.db"))).await;
    traffic(&gw).await;
    let all = rows(&gw, "").await;
    assert_eq!(all.len(), 6);
    let ids: Vec<i64> = all.iter().map(|r| r["id"].as_i64().unwrap()).collect();
    assert!(ids.windows(2).all(|w| w[0] > w[1]), "newest first: {ids:?}");
    assert_eq!(all[0]["model"], "a/x", "the last request comes first");
    let (c1, c2) = (label(&all, "r"), label(&all, "a/x"));
    assert_ne!(c1, c2);
    let count = |query: String| {
        let gw = &gw;
        async move { rows(gw, &query).await.len() }
    };
    assert_eq!(count(format!("client={c1}")).await, 3);
    assert_eq!(count(format!("client={c2}")).await, 3);
    assert_eq!(count("client=token-nobody".into()).await, 0);
    assert_eq!(count("model=r".into()).await, 2);
    assert_eq!(count("model=b%2Fn".into()).await, 3);
    assert_eq!(count("model=a/x".into()).await, 1);
    assert_eq!(count("provider=a".into()).await, 3, "attempted (the fallbacks) or answered");
    assert_eq!(count("provider=b".into()).await, 5);
    assert_eq!(count("provider=c".into()).await, 0);
    assert_eq!(count("status=429".into()).await, 1);
    assert_eq!(count("status=error".into()).await, 1);
    assert_eq!(count("status=200".into()).await, 5);
    assert_eq!(count("status=ok".into()).await, 5);
    assert_eq!(count(format!("client={c2}&status=error")).await, 1);
    assert_eq!(count(format!("client={c1}&status=error")).await, 0);
    assert_eq!(count("since=1h".into()).await, 6);
    assert_eq!(count("until=1h".into()).await, 0);
    assert_eq!(count("until=2000-01-01T00:00:00Z".into()).await, 0);
    assert_eq!(count("since=2000-01-01T00:00:00Z&until=2999-01-01T00:00:00Z".into()).await, 6);
    assert_eq!(count("since=2999-01-01T00:00:00Z".into()).await, 0);
    // Between the third and the fourth request's times: the three newest.
    let cut = all[2]["time"].as_str().unwrap();
    let newer = rows(&gw, &format!("since={}", cut.replace(':', "%3A"))).await;
    assert!(newer.len() >= 3 && newer.len() < 6, "{}", newer.len());
}

#[tokio::test]
async fn a_cursor_pages_through_the_log_while_requests_arrive() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (Mock::start().await, Mock::start().await);
    let gw = start(&config(&a, &b, &dir.path().join("freeway.db"))).await;
    for _ in 0..5 {
        assert_eq!(chat(&gw, CLIENT_1, "b/n").await, 200);
    }
    flush(&gw);
    let before: Vec<i64> = rows(&gw, "limit=500").await.iter().map(|r| r["id"].as_i64().unwrap()).collect();
    assert_eq!(before.len(), 5);
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    for page in 0..3 {
        let query = match &cursor {
            Some(c) => format!("limit=2&cursor={c}"),
            None => "limit=2".to_owned(),
        };
        let answer = admin(&gw, &format!("/admin/api/requests?{query}")).await.json();
        seen.extend(answer["requests"].as_array().unwrap().iter().map(|r| r["id"].as_i64().unwrap()));
        cursor = answer["next_cursor"].as_str().map(str::to_owned);
        assert_eq!(cursor.is_none(), page == 2, "page {page}: {answer}");
        // New requests land on the first page, not between these.
        assert_eq!(chat(&gw, CLIENT_2, "b/n").await, 200);
        flush(&gw);
    }
    assert_eq!(seen, before, "each row once, in order, none of the newer ones");
    assert_eq!(rows(&gw, "limit=500").await.len(), 8);
}

#[tokio::test]
async fn usage_sums_match_the_requests_sent() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (Mock::start().await, Mock::start().await);
    let gw = start(&config(&a, &b, &dir.path().join("freeway.db"))).await;
    traffic(&gw).await;
    let all = rows(&gw, "").await;
    let (c1, c2) = (label(&all, "r"), label(&all, "a/x"));

    let answer = admin(&gw, "/admin/api/usage?by=provider").await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    let usage = answer.json();
    assert_eq!((usage["scanned"].as_u64(), usage["capped"].as_bool()), (Some(6), Some(false)));
    assert!(usage["saved_note"].as_str().unwrap().contains("paid list price"));
    let groups = usage["groups"].as_array().unwrap();
    assert_eq!(groups.len(), 2, "{usage}");
    let group = |p: Value| groups.iter().find(|g| g["provider"] == p).unwrap().clone();
    let b_group = group("b".into());
    assert_eq!(b_group["requests"], 5);
    assert_eq!(b_group["succeeded"], 5);
    assert_eq!(b_group["success_rate"], 1.0);
    assert_eq!(b_group["fallbacks"], 2);
    assert_eq!((b_group["tokens_in"].as_u64(), b_group["tokens_out"].as_u64()), (Some(35), Some(15)));
    // 35 prompt tokens at $2 and 15 completion tokens at $4 a million.
    assert_eq!(b_group["saved_usd"].as_f64(), Some(0.00013), "{b_group}");
    assert_eq!(b_group["unpriced"], 0);
    assert_eq!(group(Value::Null)["saved_usd"], Value::Null, "no tokens, nothing saved");
    let mut latencies: Vec<u64> = all
        .iter()
        .filter(|r| r["answered_by"].as_str().is_some_and(|a| a.starts_with("b/")))
        .map(|r| r["latency_ms"].as_u64().unwrap())
        .collect();
    latencies.sort_unstable();
    assert_eq!(b_group["latency_p50_ms"].as_u64(), Some(latencies[2]), "nearest rank of 5: the 3rd");
    assert_eq!(b_group["latency_p95_ms"].as_u64(), Some(latencies[4]));
    let none = group(Value::Null);
    assert_eq!((none["requests"].as_u64(), none["succeeded"].as_u64()), (Some(1), Some(0)));
    assert_eq!(none["success_rate"], 0.0);

    let usage = admin(&gw, "/admin/api/usage?by=client,model").await.json();
    let groups = usage["groups"].as_array().unwrap();
    assert_eq!(groups.len(), 4, "{usage}");
    let find = |c: &str, m: &str| groups.iter().find(|g| g["client"] == c && g["model"] == m).unwrap().clone();
    assert_eq!((find(&c1, "r")["requests"].as_u64(), find(&c1, "r")["fallbacks"].as_u64()), (Some(2), Some(2)));
    assert_eq!(find(&c1, "b/n")["requests"], 1);
    assert_eq!(find(&c2, "b/n")["requests"], 2);
    assert_eq!(find(&c2, "b/n")["fallbacks"], 0);
    assert_eq!(find(&c2, "a/x")["success_rate"], 0.0);
    assert!(groups.iter().all(|g| g.get("provider").is_none() && g.get("day").is_none()), "{usage}");

    let usage = admin(&gw, "/admin/api/usage?by=day").await.json();
    let days: HashSet<String> = all.iter().map(|r| r["time"].as_str().unwrap()[..10].to_owned()).collect();
    let groups = usage["groups"].as_array().unwrap();
    assert_eq!(groups.len(), days.len(), "{usage}");
    assert!(groups.iter().all(|g| days.contains(g["day"].as_str().unwrap())));
    assert_eq!(groups.iter().map(|g| g["requests"].as_u64().unwrap()).sum::<u64>(), 6);

    let usage = admin(&gw, "/admin/api/usage").await.json();
    assert_eq!(usage["by"], serde_json::json!(["provider", "model", "client", "day"]));
    assert_eq!(usage["groups"].as_array().unwrap().len(), 4);
    let usage = admin(&gw, "/admin/api/usage?since=2999-01-01T00:00:00Z").await.json();
    assert_eq!((usage["scanned"].as_u64(), usage["groups"].as_array().unwrap().len()), (Some(0), 0));
}

#[tokio::test]
async fn bad_parameters_are_refused_naming_them() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (Mock::start().await, Mock::start().await);
    let gw = start(&config(&a, &b, &dir.path().join("freeway.db"))).await;
    for (query, param) in [
        ("/admin/api/requests?since=yesterday", "since"),
        ("/admin/api/requests?until=2026-13-01T00:00:00Z", "until"),
        ("/admin/api/requests?since=1h&until=2h", "since"),
        ("/admin/api/requests?status=teapot", "status"),
        ("/admin/api/requests?status=999", "status"),
        ("/admin/api/requests?limit=0", "limit"),
        ("/admin/api/requests?limit=501", "limit"),
        ("/admin/api/requests?limit=ten", "limit"),
        ("/admin/api/requests?cursor=abc", "cursor"),
        ("/admin/api/requests?client=", "client"),
        ("/admin/api/requests?model=a&model=b", "model"),
        ("/admin/api/usage?by=provider,week", "by"),
        ("/admin/api/usage?by=", "by"),
        ("/admin/api/usage?by=day,day", "by"),
        ("/admin/api/usage?since=later", "since"),
    ] {
        let answer = admin(&gw, query).await;
        assert_eq!(answer.status, 400, "{query}: {}", answer.text());
        assert_eq!(answer.json()["error"]["param"], param, "{query}: {}", answer.text());
    }
    for (query, name) in [("/admin/api/requests?limt=5", "limt"), ("/admin/api/usage?client=x", "client")] {
        let answer = admin(&gw, query).await;
        assert_eq!(answer.status, 400, "{query}: {}", answer.text());
        assert!(
            answer.json()["error"]["message"].as_str().unwrap().contains(&format!("`{name}`")),
            "{}",
            answer.text()
        );
    }
}

#[tokio::test]
async fn the_log_needs_an_admin_token_and_a_database() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (Mock::start().await, Mock::start().await);
    let gw = start(&config(&a, &b, &dir.path().join("freeway.db"))).await;
    for path in ["/admin/api/requests", "/admin/api/usage"] {
        let client = gw.get(path, &[("authorization", &format!("Bearer {CLIENT_1}"))]).await;
        assert_eq!(client.status, 401, "a client token opened {path}: {}", client.text());
        assert_eq!(gw.get(path, &[]).await.status, 401);
        assert_eq!(admin(&gw, path).await.status, 200);
    }
    // Memory-only state keeps no log: a 409 that says what to set.
    let memory = config(&a, &b, Path::new("\"\""));
    let gw = start(&memory).await;
    assert_eq!(chat(&gw, CLIENT_1, "b/n").await, 200);
    for path in ["/admin/api/requests", "/admin/api/usage"] {
        let answer = admin(&gw, path).await;
        assert_eq!(answer.status, 409, "{path}: {}", answer.text());
        assert!(answer.json()["error"]["message"].as_str().unwrap().contains("state.path"), "{}", answer.text());
    }
}
