//! The admin API (`/admin/api/status`, `/admin/api/cooldowns/reset`,
//! `/admin/api/routes`, `/admin/api/settings`) and
//! `freeway status`: who may call them, what they show after real traffic
//! through mock upstreams, and that no provider key ever appears in them.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::support::gateway::{Answer, TestGateway, chat_body, provider, send, start};
use crate::support::mock::{Behavior, Mock};

const CLIENT: &str = "client-token-0123456789abcdef";
const ADMIN: &str = "admin-token-0123456789abcdef";
const KEY_A: &str = "sk-admin-test-key-a-000000000001";
const KEY_B: &str = "sk-admin-test-key-b-000000000002";

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

async fn admin_get(gw: &TestGateway, path: &str) -> Answer {
    gw.get(path, &[("authorization", &bearer(ADMIN))]).await
}

async fn admin_post(gw: &TestGateway, path: &str, body: &str) -> Answer {
    gw.post(path, body, &[("authorization", &bearer(ADMIN))]).await
}

async fn client_chat(gw: &TestGateway, model: &str) -> Answer {
    gw.post("/v1/chat/completions", &chat_body(model, false), &[("authorization", &bearer(CLIENT))]).await
}

/// Provider `a` (daily limit 10 per model, reset at midnight UTC, two
/// models) and provider `b` (no calendar), both on mocks, behind client
/// and admin tokens.
fn config(a: &Mock, b: &Mock) -> String {
    format!(
        "server:\n  api_keys: [{CLIENT}]\n  admin_keys: [{ADMIN}]\nproviders:\n{}    limits: {{ rpd: 10, rpm: 100 }}\n    quota_reset: \"00:00 UTC\"\n{}",
        provider("a", &a.base_url(), &[KEY_A], &["m1", "m2"]),
        provider("b", &b.base_url(), &[KEY_B], &["x"]),
    )
}

fn model<'a>(status: &'a Value, provider: &str, model: &str) -> &'a Value {
    let p = status["providers"].as_array().unwrap().iter().find(|p| p["name"] == provider).unwrap();
    p["keys"][0]["models"].as_array().unwrap().iter().find(|m| m["model"] == model).unwrap()
}

#[tokio::test]
async fn admin_api_takes_admin_tokens_only() {
    let (a, b) = (Mock::start().await, Mock::start().await);
    let gw = start(&config(&a, &b)).await;
    let none = gw.get("/admin/api/status", &[]).await;
    assert_eq!(none.status, 401, "{}", none.text());
    assert_eq!(none.json()["error"]["type"], "authentication_error");
    let client = gw.get("/admin/api/status", &[("authorization", &bearer(CLIENT))]).await;
    assert_eq!(client.status, 401, "a client token opened /admin/: {}", client.text());
    // Unknown admin paths are not told apart from known ones without a token.
    assert_eq!(gw.get("/admin/api/nothing", &[]).await.status, 401);
    assert_eq!(admin_get(&gw, "/admin/api/status").await.status, 200);
    assert_eq!(admin_get(&gw, "/admin/api/nothing").await.status, 404);
    // And the other way round: an admin token is not a client token.
    let chat = gw.post("/v1/chat/completions", &chat_body("a/m1", false), &[("authorization", &bearer(ADMIN))]).await;
    assert_eq!(chat.status, 401);
    assert_eq!(a.chats().len(), 0);
}

#[tokio::test]
async fn without_admin_keys_admin_is_open_only_where_everything_is() {
    let a = Mock::start().await;
    let a_block = provider("a", &a.base_url(), &[KEY_A], &["m1"]);
    // Client tokens but no admin tokens: refused, saying what to set, even
    // with a valid client token.
    let gw = start(&format!("server:\n  api_keys: [{CLIENT}]\nproviders:\n{a_block}")).await;
    let refused = gw.get("/admin/api/status", &[("authorization", &bearer(CLIENT))]).await;
    assert_eq!(refused.status, 403, "{}", refused.text());
    assert!(refused.json()["error"]["message"].as_str().unwrap().contains("set server.admin_keys"));
    // Loopback and no client tokens either: anyone here can already spend
    // the quota, so the state is shown.
    let gw = start(&format!("providers:\n{a_block}")).await;
    assert_eq!(gw.get("/admin/api/status", &[]).await.status, 200);
    // Off loopback without admin tokens: refused.
    let exposed = format!("server:\n  listen: 0.0.0.0:8080\n  allow_unauthenticated: true\nproviders:\n{a_block}");
    assert_eq!(start(&exposed).await.get("/admin/api/status", &[]).await.status, 403);
}

#[tokio::test]
async fn status_shows_use_limits_cooldowns_and_rejected_keys_but_no_key() {
    let (a, b) = (Mock::start().await, Mock::start().await);
    let gw = start(&config(&a, &b)).await;
    for _ in 0..3 {
        assert_eq!(client_chat(&gw, "a/m1").await.status, 200);
    }
    a.on_model("m2", Behavior::rate_limited("120"));
    assert_eq!(client_chat(&gw, "a/m2").await.status, 429);
    b.on_all(Behavior::status(401));
    assert_ne!(client_chat(&gw, "b/x").await.status, 200);

    let answer = admin_get(&gw, "/admin/api/status").await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    for key in [KEY_A, KEY_B, "admin-test-key"] {
        assert!(!answer.text().contains(key), "a provider key in the status: {}", answer.text());
    }
    let status = answer.json();
    let m1 = model(&status, "a", "m1");
    assert_eq!(m1["used"]["requests_day"], 3, "{m1}");
    assert_eq!(m1["limit"]["configured"]["rpd"], 10);
    assert_eq!(m1["limit"]["in_force"]["rpd"], 10);
    assert_eq!(m1["remaining"]["rpd"], 7);
    assert_eq!(m1["remaining"]["tpd"], Value::Null);
    assert_eq!(m1["cooling"], Value::Null);
    let m2 = model(&status, "a", "m2");
    assert_eq!(m2["cooling"]["reason"], "rate_limited", "{m2}");
    let left = m2["cooling"]["in_seconds"].as_u64().unwrap();
    assert!((100..=120).contains(&left), "{m2}");
    let a_status = &status["providers"][0];
    assert_eq!(a_status["name"], "a");
    assert_eq!(a_status["circuit"], "closed");
    let a_key = &a_status["keys"][0];
    assert_eq!(a_key["key"], "#1");
    assert_eq!(a_key["fingerprint"].as_str().unwrap().len(), 16);
    assert_eq!(a_key["invalid"], false);
    // Midnight UTC: the provider's time ends in 00:00:00+00:00.
    assert_eq!(a_status["rolling"], false);
    assert!(a_status["reset"]["provider"].as_str().unwrap().ends_with("T00:00:00+00:00"), "{a_status}");
    assert_eq!(a_status["reset"]["zone"], "UTC");
    assert!(a_status["reset"]["in_seconds"].as_u64().unwrap() <= 86_400);
    let b_status = &status["providers"][1];
    assert_eq!(b_status["rolling"], true);
    assert_eq!(b_status["reset"], Value::Null);
    assert_eq!(b_status["keys"][0]["invalid"], true, "{b_status}");
    assert!(status["state"]["backend"].is_string(), "{status}");
}

#[tokio::test]
async fn cooldown_reset_sends_the_next_request_upstream_again() {
    let (a, b) = (Mock::start().await, Mock::start().await);
    let gw = start(&config(&a, &b)).await;
    a.once_model("m2", Behavior::rate_limited("600"));
    assert_eq!(client_chat(&gw, "a/m2").await.status, 429);
    assert_eq!(a.calls_to("m2"), 1);
    // Cooling: the gateway does not call the upstream.
    assert_eq!(client_chat(&gw, "a/m2").await.status, 429);
    assert_eq!(a.calls_to("m2"), 1);

    let bad = admin_post(&gw, "/admin/api/cooldowns/reset", r#"{"provider": "nope"}"#).await;
    assert_eq!(bad.status, 400);
    assert_eq!(bad.json()["error"]["param"], "provider");
    let bad = admin_post(&gw, "/admin/api/cooldowns/reset", r##"{"provider": "a", "key": "#1"}"##).await;
    assert_eq!(bad.status, 400);
    assert_eq!(bad.json()["error"]["param"], "key");
    let status = admin_get(&gw, "/admin/api/status").await.json();
    let fingerprint = status["providers"][0]["keys"][0]["fingerprint"].as_str().unwrap().to_owned();
    // Another model, or another key: nothing to clear.
    let other = format!(r#"{{"provider": "a", "model": "m1", "key": "{fingerprint}"}}"#);
    assert_eq!(admin_post(&gw, "/admin/api/cooldowns/reset", &other).await.json()["cleared"], 0);
    let wrong_key = r#"{"provider": "a", "model": "m2", "key": "0123456789abcdef"}"#;
    assert_eq!(admin_post(&gw, "/admin/api/cooldowns/reset", wrong_key).await.json()["cleared"], 0);

    let reset = format!(r#"{{"provider": "a", "model": "m2", "key": "{fingerprint}"}}"#);
    let cleared = admin_post(&gw, "/admin/api/cooldowns/reset", &reset).await;
    assert_eq!(cleared.status, 200, "{}", cleared.text());
    assert_eq!(cleared.json()["cleared"], 1);
    assert_eq!(client_chat(&gw, "a/m2").await.status, 200);
    assert_eq!(a.calls_to("m2"), 2);
    let status = admin_get(&gw, "/admin/api/status").await.json();
    assert_eq!(model(&status, "a", "m2")["cooling"], Value::Null);
}

fn freeway() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_freeway"));
    // No provider key or admin token from the machine running the tests.
    cmd.env_clear().env("PATH", std::env::var("PATH").unwrap_or_default()).env("RUST_LOG", "info");
    cmd
}

/// A `freeway serve` child, killed when dropped.
struct Served(Child);

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `freeway serve --config config` on a free loopback port; its
/// address once it listens.
fn serve(config: &std::path::Path) -> (Served, String) {
    let mut child = freeway()
        .args(["serve", "--listen", "127.0.0.1:0", "--config"])
        .arg(config)
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(rest) = line.split("listening on http://").nth(1) {
                let _ = tx.send(rest.trim_end_matches("/v1").trim().to_owned());
            }
        }
    });
    let served = Served(child);
    let addr = rx.recv_timeout(Duration::from_secs(30)).expect("serve did not start");
    (served, addr)
}

async fn status_command(args: &[&str]) -> Output {
    let mut cmd = freeway();
    cmd.arg("status").args(args);
    tokio::task::spawn_blocking(move || cmd.output().unwrap()).await.unwrap()
}

#[tokio::test]
async fn freeway_status_prints_the_table_and_the_json_of_a_running_gateway() {
    let (a, b) = (Mock::start().await, Mock::start().await);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("freeway.yaml");
    let models: Vec<String> = (0..40).map(|i| format!("idle{i}")).collect();
    let mut yaml = config(&a, &b).replace("[m1, m2]", &format!("[m1, m2, {}]", models.join(", ")));
    yaml.push_str("state:\n  path: \"\"\ndiscovery:\n  enabled: false\n");
    std::fs::write(&path, yaml).unwrap();
    let (_served, addr) = serve(&path);
    let url = format!("http://{addr}");
    let chat = |model: &'static str| {
        let url = url.clone();
        async move {
            let body = chat_body(model, false);
            let auth = bearer(CLIENT);
            let r = send(&format!("{url}/v1/chat/completions"), "POST", &body, &[("authorization", &auth)]).await;
            Answer::read(r).await.status
        }
    };
    assert_eq!(chat("a/m1").await, 200);
    assert_eq!(chat("a/m1").await, 200);
    a.on_model("m2", Behavior::rate_limited("300"));
    assert_eq!(chat("a/m2").await, 429);
    b.on_all(Behavior::status(401));
    assert_ne!(chat("b/x").await, 200);

    let out = status_command(&["--url", &url, "--admin-key", ADMIN]).await;
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{table}{}", String::from_utf8_lossy(&out.stderr));
    for key in [KEY_A, KEY_B] {
        assert!(!table.contains(key), "{table}");
    }
    let line = |what: &str| {
        table.lines().find(|l| l.contains(what)).unwrap_or_else(|| panic!("no `{what}` in\n{table}")).to_owned()
    };
    assert!(table.starts_with("PROVIDER"), "{table}");
    let m1 = line(" m1 ");
    assert!(m1.contains("2/10 req") && m1.contains("8 req/day"), "{m1}");
    assert!(m1.contains("(in ") && m1.contains("00:00 UTC"), "{m1}");
    let m2 = line(" m2 ");
    assert!(m2.contains("rate_limited"), "{m2}");
    assert!(line("… 40 more models idle").starts_with("a "), "{table}");
    let x = line(" x ");
    assert!(x.contains("INVALID") && x.contains("1 req"), "a model tried today is not idle: {x}");
    assert!(!table.contains("idle7"), "idle models are folded:\n{table}");

    let all = status_command(&["--url", &url, "--all"]).await;
    assert!(!all.status.success(), "no token, yet: {}", String::from_utf8_lossy(&all.stdout));
    let refused = String::from_utf8_lossy(&all.stderr);
    assert!(refused.contains("refused the admin token") && refused.contains("FREEWAY_ADMIN_KEY"), "{refused}");
    let mut cmd = freeway();
    cmd.env("FREEWAY_ADMIN_KEY", ADMIN).args(["status", "--all", "--url", &url]);
    let all = tokio::task::spawn_blocking(move || cmd.output().unwrap()).await.unwrap();
    assert!(all.status.success());
    assert!(String::from_utf8_lossy(&all.stdout).contains("idle7"));

    let json = status_command(&["--url", &url, "--admin-key", ADMIN, "--json"]).await;
    assert!(json.status.success());
    let status: Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(model(&status, "a", "m1")["used"]["requests_day"], 2);

    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let down = status_command(&["--url", &format!("http://{closed}"), "--admin-key", ADMIN]).await;
    assert!(!down.status.success());
    assert!(String::from_utf8_lossy(&down.stderr).contains("cannot reach the gateway"), "{down:?}");
}

/// A route's candidates in order, each ready or why not: after `a` says
/// 429, `a/m1` cools (with its reason and when it frees) and `b/x` is ready.
#[tokio::test]
async fn routes_show_each_candidate_in_order_ready_or_why_not() {
    let (a, b) = (Mock::start().await, Mock::start().await);
    a.on_model("m1", Behavior::rate_limited("120"));
    let yaml = config(&a, &b) + "routes:\n  pair:\n    targets: [a/m1, b/x]\n";
    let gw = start(&yaml).await;
    let client = gw.get("/admin/api/routes", &[("authorization", &bearer(CLIENT))]).await;
    assert_eq!(client.status, 401, "a client token opened /admin/api/routes");
    let before = admin_get(&gw, "/admin/api/routes").await;
    assert_eq!(before.status, 200, "{}", before.text());
    let pair = |answer: &Answer| {
        let routes = answer.json()["routes"].as_array().unwrap().clone();
        routes.into_iter().find(|r| r["name"] == "pair").unwrap()
    };
    let route = pair(&before);
    assert_eq!(route["strategy"], "ordered");
    let targets: Vec<&str> =
        route["candidates"].as_array().unwrap().iter().map(|c| c["target"].as_str().unwrap()).collect();
    assert_eq!(targets, ["a/m1", "b/x"]);
    assert!(route["candidates"].as_array().unwrap().iter().all(|c| c["state"] == "ready"), "{route}");
    // The 429 falls back to b and cools a/m1 on its only key.
    assert_eq!(client_chat(&gw, "pair").await.status, 200);
    let route = pair(&admin_get(&gw, "/admin/api/routes").await);
    let cooled = &route["candidates"][0];
    assert_eq!(cooled["state"], "cooling", "{route}");
    assert_eq!(cooled["reason"], "rate_limited");
    assert_eq!(cooled["keys_ready"], 0);
    let free_in = cooled["free_in_seconds"].as_u64().unwrap();
    assert!((100..=120).contains(&free_in), "{free_in}");
    assert_eq!(route["candidates"][1]["state"], "ready");
    assert!(!admin_get(&gw, "/admin/api/routes").await.text().contains(KEY_A), "no key in the answer");
}

/// Two free models of one provider, behind admin and client tokens, the
/// built-in policies on, the state (and so the settings changes) in `dir`.
fn free_pool_config(mock: &Mock, dir: &std::path::Path) -> String {
    format!(
        "server:\n  api_keys: [{CLIENT}]\n  admin_keys: [{ADMIN}]\nproviders:\n  or:\n    plugin: openai-compat\n    \
         base_url: {}\n    keys: [{KEY_A}]\n    free: true\n    models:\n      - small-8b\n      - big-70b\nstate:\n  path: {}\npolicies:\n  settings: {{}}\n",
        mock.base_url(),
        dir.join("freeway.db").display()
    )
}

async fn free_pool(gw: &TestGateway) -> Vec<String> {
    let routes = admin_get(gw, "/admin/api/routes").await.json();
    let free = routes["routes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "free")
        .cloned()
        .unwrap_or_else(|| panic!("{routes}"));
    free["candidates"].as_array().unwrap().iter().map(|c| c["target"].as_str().unwrap().to_owned()).collect()
}

async fn admin_put(gw: &TestGateway, body: &str) -> Answer {
    Answer::read(send(&gw.url("/admin/api/settings"), "PUT", body, &[("authorization", &bearer(ADMIN))]).await).await
}

/// Favorites changed through the API reorder the free pool at once, are
/// kept across a restart, and a bad value changes nothing.
#[tokio::test]
async fn settings_change_live_are_validated_and_survive_a_restart() {
    let mock = Mock::start().await;
    let dir = tempfile::tempdir().unwrap();
    let gw = start(&free_pool_config(&mock, dir.path())).await;
    assert_eq!(free_pool(&gw).await, ["or/big-70b", "or/small-8b"], "best first");
    let client = gw.get("/admin/api/settings", &[("authorization", &bearer(CLIENT))]).await;
    assert_eq!(client.status, 401);

    let changed = admin_put(&gw, r#"{"favorites": ["small-8b"]}"#).await;
    assert_eq!(changed.status, 200, "{}", changed.text());
    assert_eq!(changed.json()["settings"]["favorites"], serde_json::json!(["small-8b"]));
    assert_eq!(changed.json()["changed"], serde_json::json!(["favorites"]));
    assert_eq!(free_pool(&gw).await, ["or/small-8b", "or/big-70b"], "the favorite leads the free pool now");
    let answer = client_chat(&gw, "free").await;
    assert_eq!(answer.routed_via(), "or/small-8b");

    let bad = admin_put(&gw, r#"{"favorites": "small-8b"}"#).await;
    assert_eq!(bad.status, 400, "{}", bad.text());
    assert!(bad.json()["error"]["message"].as_str().unwrap().starts_with("favorites: "), "{}", bad.text());
    let junk = admin_put(&gw, "{not json").await;
    assert_eq!(junk.status, 400);
    assert_eq!(free_pool(&gw).await, ["or/small-8b", "or/big-70b"], "nothing changed");

    drop(gw);
    let again = start(&free_pool_config(&mock, dir.path())).await;
    assert_eq!(free_pool(&again).await, ["or/small-8b", "or/big-70b"], "kept across a restart");
    // null takes the change back: the config's settings again.
    let back = admin_put(&again, r#"{"favorites": null}"#).await;
    assert_eq!(back.json()["changed"], serde_json::json!([]));
    assert_eq!(free_pool(&again).await, ["or/big-70b", "or/small-8b"]);
}
