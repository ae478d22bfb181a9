//! The dashboard at `/admin/`: its files served without a token and with
//! their security headers while `/admin/api/` still asks for one, the
//! endpoints it adds (`/admin/api/policies`, `/admin/api/playground`,
//! `by=hour`), and the page itself driven in a real headless Chromium
//! (tests/browser/dashboard.py, Selenium over Debian's chromium-driver)
//! against a gateway on mock upstreams, checked through what it renders.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use serde_json::{Value, json};

use crate::support::clients;
use crate::support::gateway::{Answer, TestGateway, chat_body, provider, send, start};
use crate::support::mock::{Behavior, Mock};

const CLIENT: &str = "dashboard-client-token-0123456789";
const ADMIN: &str = "dashboard-admin-token-0123456789";

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

async fn admin_get(gw: &TestGateway, path: &str) -> Answer {
    gw.get(path, &[("authorization", &bearer(ADMIN))]).await
}

async fn client_chat(gw: &TestGateway, model: &str) -> Answer {
    gw.post("/v1/chat/completions", &chat_body(model, false), &[("authorization", &bearer(CLIENT))]).await
}

/// Provider `a` (model `m` fails with 503, `x` is rate limited, a daily
/// limit of 50), `b` (model `n`), `or` (two free models, so a free pool),
/// route `r` = a/m then b/n, the built-in policies with `big-70b` as the
/// one favorite, the state (and the request log) in `dir`.
fn config(a: &Mock, b: &Mock, free: &Mock, dir: &Path) -> String {
    a.on_model("m", Behavior::status(503));
    a.on_model("x", Behavior::rate_limited("600"));
    format!(
        "server:\n  api_keys: [{CLIENT}]\n  admin_keys: [{ADMIN}]\nproviders:\n{}    limits: {{ rpd: 50 }}\n    \
         quota_reset: \"00:00 UTC\"\n{}  or:\n    plugin: openai-compat\n    base_url: {}\n    keys: [or-key-0001]\n    \
         free: true\n    models: [small-8b, big-70b]\nroutes:\n  r:\n    targets: [a/m, b/n]\nstate:\n  path: {}\n\
         policies:\n  settings:\n    favorites: [big-70b]\n",
        provider("a", &a.base_url(), &["ka-secret-1"], &["m", "x"]),
        provider("b", &b.base_url(), &["kb-secret-2"], &["n"]),
        free.base_url(),
        dir.join("freeway.db").display()
    )
}

struct Setup {
    gw: TestGateway,
    _dir: tempfile::TempDir,
    _mocks: (Mock, Mock, Mock),
}

async fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let (a, b, free) = (Mock::start().await, Mock::start().await, Mock::start().await);
    let gw = start(&config(&a, &b, &free, dir.path())).await;
    Setup { gw, _dir: dir, _mocks: (a, b, free) }
}

/// A fallback (r: a/m fails, b/n answers) and a 429 that cools a/x, logged.
async fn traffic(gw: &TestGateway) {
    let fell_back = client_chat(gw, "r").await;
    assert_eq!(fell_back.status, 200, "{}", fell_back.text());
    assert_eq!(fell_back.routed_via(), "b/n");
    assert_eq!(client_chat(gw, "a/x").await.status, 429);
    assert!(gw.gateway.proxy().state().flush(std::time::Duration::from_secs(5)));
}

#[tokio::test]
async fn dashboard_files_load_without_a_token_with_security_headers_and_etags() {
    let s = setup().await;
    let gw = &s.gw;
    let bare = gw.get("/admin", &[]).await;
    assert_eq!(bare.status, 308, "{}", bare.text());
    assert_eq!(bare.header("location"), "/admin/");

    let page = gw.get("/admin/", &[]).await;
    assert_eq!(page.status, 200, "{}", page.text());
    assert_eq!(page.header("content-type"), "text/html; charset=utf-8");
    assert!(page.text().contains(r#"<script type="module" src="app.js">"#), "{}", page.text());
    assert!(!page.text().contains("<script>"), "no inline script");
    let csp = page.header("content-security-policy");
    for part in ["default-src 'self'", "script-src 'self'", "frame-ancestors 'none'"] {
        assert!(csp.contains(part), "{csp}");
    }
    assert!(!csp.contains("unsafe-inline"), "{csp}");
    assert_eq!(page.header("x-frame-options"), "DENY");
    assert_eq!(page.header("referrer-policy"), "no-referrer");
    assert_eq!(page.header("x-content-type-options"), "nosniff");

    for (file, kind) in [("app.js", "text/javascript"), ("style.css", "text/css"), ("overview.js", "text/javascript")] {
        let asset = gw.get(&format!("/admin/{file}"), &[]).await;
        assert_eq!(asset.status, 200, "{file}");
        assert!(asset.header("content-type").starts_with(kind), "{file}: {}", asset.header("content-type"));
        let etag = asset.header("etag").to_owned();
        assert!(etag.starts_with('"') && etag.len() > 10, "{file}: {etag}");
        let again = gw.get(&format!("/admin/{file}"), &[("if-none-match", &etag)]).await;
        assert_eq!(again.status, 304, "{file}: an unchanged file is not sent again");
        assert!(again.body.is_empty());
    }
    assert_eq!(gw.get("/admin/secrets.js", &[]).await.status, 404);

    // The data still needs the admin token, and is never cached.
    let refused = gw.get("/admin/api/status", &[]).await;
    assert_eq!(refused.status, 401, "{}", refused.text());
    assert_eq!(refused.header("cache-control"), "no-store");
    let client = gw.get("/admin/api/routes", &[("authorization", &bearer(CLIENT))]).await;
    assert_eq!(client.status, 401, "a client token does not open the admin API");
    let status = admin_get(gw, "/admin/api/status").await;
    assert_eq!(status.status, 200);
    assert_eq!(status.header("cache-control"), "no-store");
}

#[tokio::test]
async fn policies_endpoint_names_the_scripts_and_the_last_reload() {
    let s = setup().await;
    let answer = admin_get(&s.gw, "/admin/api/policies").await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    let body = answer.json();
    let names: Vec<&str> = body["status"]["policies"].as_array().unwrap().iter().map(|p| p.as_str().unwrap()).collect();
    assert!(names.iter().any(|n| n.ends_with("favorites")), "{body}");
    assert_eq!(body["status"]["ok"], true);
    let reloaded: jiff::Timestamp = body["status"]["last_reload"].as_str().unwrap().parse().unwrap();
    let age = jiff::Timestamp::now().duration_since(reloaded);
    assert!(age.as_secs() < 60, "loaded at start-up: {reloaded}");
    assert_eq!(body["settings"]["favorites"], json!(["big-70b"]));
    assert_eq!(s.gw.get("/admin/api/policies", &[]).await.status, 401);
}

/// A policies folder with one good script, watched; then a script that
/// does not compile (line 2) is saved into it and refused.
async fn refused_reload(gw: &TestGateway, dir: &Path) -> Value {
    gw.gateway.watch_policies().unwrap();
    let tmp = dir.join(".20-bad.rhai.swp");
    std::fs::write(&tmp, "fn request(req, settings) {\n  let x = ;\n}\n").unwrap();
    std::fs::rename(&tmp, dir.join("20-bad.rhai")).unwrap();
    let started = Instant::now();
    loop {
        let body = admin_get(gw, "/admin/api/policies").await.json();
        if !body["status"]["errors"].as_array().unwrap().is_empty() {
            return body;
        }
        assert!(started.elapsed().as_secs() < 20, "the broken script was not noticed: {body}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// The open gateway (no tokens, loopback) with its policies in `dir`.
fn open_config(b: &Mock, dir: &Path) -> String {
    let policies = dir.join("policies");
    std::fs::create_dir_all(&policies).unwrap();
    std::fs::write(policies.join("10-ok.rhai"), "fn request(req, settings) { }\n").unwrap();
    format!(
        "providers:\n{}routes:\n  r:\n    targets: [b/n]\nstate:\n  path: {}\npolicies:\n  dir: {}\n",
        provider("b", &b.base_url(), &["kb-secret-2"], &["n"]),
        dir.join("open.db").display(),
        policies.display()
    )
}

#[tokio::test]
async fn policies_endpoint_shows_a_refused_reload_with_its_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let b = Mock::start().await;
    let gw = start(&open_config(&b, dir.path())).await;
    let before = admin_get(&gw, "/admin/api/policies").await.json();
    let loaded: jiff::Timestamp = before["status"]["last_reload"].as_str().unwrap().parse().unwrap();
    let after = refused_reload(&gw, &dir.path().join("policies")).await;
    let status = &after["status"];
    assert_eq!(status["ok"], false, "{after}");
    assert_eq!(status["policies"], json!(["10-ok"]), "the last good pipeline stays");
    let error = &status["errors"][0];
    assert!(error["file"].as_str().unwrap().ends_with("20-bad.rhai"), "{after}");
    assert_eq!(error["line"], 2, "{after}");
    let refused: jiff::Timestamp = status["last_reload"].as_str().unwrap().parse().unwrap();
    assert!(refused > loaded, "a refused reload is a reload too: {loaded} then {refused}");
}

#[tokio::test]
async fn playground_chats_as_admin_and_shows_the_route_and_trail() {
    let s = setup().await;
    let gw = &s.gw;
    let body = json!({"model": "r", "messages": [{"role": "user", "content": "hi"}], "stream": true}).to_string();
    let auth = bearer(ADMIN);
    let answer =
        Answer::read(send(&gw.url("/admin/api/playground"), "POST", &body, &[("authorization", &auth)]).await).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(answer.header("cache-control"), "no-store");
    let r = answer.json();
    assert_eq!(r["status"], 200, "{r}");
    assert_eq!(r["routed_via"], "b/n");
    assert_eq!(r["headers"]["x-fallback-attempts"], "1");
    assert_eq!(r["answer"]["object"], "chat.completion", "asked as a stream, answered whole: {r}");
    let trail: Vec<(&str, &str)> = r["attempts"]
        .as_array()
        .unwrap_or_else(|| panic!("{r}"))
        .iter()
        .map(|a| (a["provider"].as_str().unwrap(), a["reason"].as_str().unwrap()))
        .collect();
    assert_eq!(trail.len(), 2, "{r}");
    assert_eq!(trail[0].0, "a");
    assert_eq!(trail[1], ("b", "ok"));
    assert_eq!(r["log"]["client"], "admin", "logged as the client `admin`");

    // An upstream error comes back as the answer, with its status.
    let body = json!({"model": "a/x", "messages": [{"role": "user", "content": "hi"}]}).to_string();
    let limited =
        Answer::read(send(&gw.url("/admin/api/playground"), "POST", &body, &[("authorization", &auth)]).await).await;
    assert_eq!(limited.status, 200);
    assert_eq!(limited.json()["status"], 429, "{}", limited.text());
    assert!(limited.json()["answer"]["error"]["message"].is_string(), "{}", limited.text());

    for bad in [r#"{"messages": []}"#, "not json", r#"{"model": ""}"#] {
        let refused =
            Answer::read(send(&gw.url("/admin/api/playground"), "POST", bad, &[("authorization", &auth)]).await).await;
        assert_eq!(refused.status, 400, "{bad}: {}", refused.text());
        assert!(refused.json()["error"]["message"].is_string());
    }
    let client = send(&gw.url("/admin/api/playground"), "POST", &body, &[("authorization", &bearer(CLIENT))]).await;
    assert_eq!(client.status(), 401, "a client token cannot chat as admin");
}

#[tokio::test]
async fn usage_by_hour_counts_requests_and_fallbacks() {
    let s = setup().await;
    traffic(&s.gw).await;
    let usage = admin_get(&s.gw, "/admin/api/usage?by=hour").await;
    assert_eq!(usage.status, 200, "{}", usage.text());
    let usage = usage.json();
    assert_eq!(usage["by"], json!(["hour"]));
    let groups = usage["groups"].as_array().unwrap();
    let this_hour = jiff::Timestamp::now().strftime("%Y-%m-%dT%H:00Z").to_string();
    // Both requests may straddle an hour's end: sum whatever hours came back.
    assert!(groups.iter().all(|g| g["hour"].as_str().unwrap().len() == this_hour.len()), "{usage}");
    let requests: u64 = groups.iter().map(|g| g["requests"].as_u64().unwrap()).sum();
    let fallbacks: u64 = groups.iter().map(|g| g["fallbacks"].as_u64().unwrap()).sum();
    assert_eq!((requests, fallbacks), (2, 1), "{usage}");
    let bad = admin_get(&s.gw, "/admin/api/usage?by=minute").await;
    assert_eq!(bad.status, 400);
    assert!(bad.text().contains("hour"), "{}", bad.text());
}

/// Where the screenshots go: `target/dashboard-screenshots/`.
fn screenshots() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
    target.join("dashboard-screenshots")
}

/// Whether the browser, its driver and Selenium are here; when not, a
/// skip (or under `FREEWAY_REQUIRE_CLIENTS=1` a failure).
fn browser_installed() -> bool {
    for (binary, package) in [("/usr/bin/chromium", "chromium"), ("/usr/bin/chromedriver", "chromium-driver")] {
        let path = std::env::var(if package == "chromium" { "FREEWAY_CHROMIUM" } else { "FREEWAY_CHROMEDRIVER" })
            .unwrap_or_else(|_| binary.to_owned());
        if !Path::new(&path).exists() {
            clients::missing(&format!("{path} ({package})"), &format!("apt-get install {package}"));
            return false;
        }
    }
    let selenium = Command::new("python3").args(["-c", "import selenium"]).output();
    if !selenium.is_ok_and(|o| o.status.success()) {
        clients::missing("the selenium Python package", "pip install selenium");
        return false;
    }
    true
}

/// Runs tests/browser/dashboard.py `scenario` against `gw`; asserts it
/// passed.
async fn browse(gw: &TestGateway, scenario: &str) {
    let script = format!("{}/tests/browser/dashboard.py", env!("CARGO_MANIFEST_DIR"));
    let args = [script, gw.url(""), ADMIN.to_owned(), screenshots().display().to_string(), scenario.to_owned()];
    for width in ["desktop", "phone"] {
        // A failure's screenshot from an earlier run would mislead.
        let _ = std::fs::remove_file(screenshots().join(format!("failed-{scenario}-{width}.png")));
    }
    let started = Instant::now();
    let out = tokio::task::spawn_blocking(move || Command::new("python3").args(args).output()).await.unwrap().unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "the browser check `{scenario}` failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains(&format!("{scenario} ok")), "{stdout}");
    eprintln!("browser scenario `{scenario}`: {:?}", started.elapsed());
}

fn free_pool(routes: &Value) -> Vec<String> {
    let free = routes["routes"].as_array().unwrap().iter().find(|r| r["name"] == "free").unwrap();
    free["candidates"].as_array().unwrap().iter().map(|c| c["target"].as_str().unwrap().to_owned()).collect()
}

fn cooling(status: &Value, provider: &str, model: &str) -> Value {
    let p = status["providers"].as_array().unwrap().iter().find(|p| p["name"] == provider).unwrap();
    p["keys"][0]["models"].as_array().unwrap().iter().find(|m| m["model"] == model).unwrap()["cooling"].clone()
}

/// The page in a real browser: a wrong token refused and the right one
/// in, the fallback in the log with its trail, favorites reordered and the
/// free pool's new order shown, a cooldown reset, the policies, the
/// playground, every page at phone width without sideways scrolling, no
/// JavaScript error, logout. What the page did is checked on the gateway
/// too.
#[tokio::test]
async fn dashboard_in_a_real_browser() {
    if !browser_installed() {
        return;
    }
    let s = setup().await;
    let gw = &s.gw;
    traffic(gw).await;
    assert_eq!(free_pool(&admin_get(gw, "/admin/api/routes").await.json()), ["or/big-70b", "or/small-8b"]);
    assert!(cooling(&admin_get(gw, "/admin/api/status").await.json(), "a", "x").is_object());

    browse(gw, "main").await;

    let routes = admin_get(gw, "/admin/api/routes").await.json();
    assert_eq!(free_pool(&routes), ["or/small-8b", "or/big-70b"], "the favorites saved from the page lead the pool");
    let settings = admin_get(gw, "/admin/api/settings").await.json();
    assert_eq!(settings["settings"]["favorites"], json!(["or/small-8b", "big-70b"]));
    assert!(cooling(&admin_get(gw, "/admin/api/status").await.json(), "a", "x").is_null(), "the reset ended it");
    assert!(screenshots().join("log-phone.png").exists());

    // Open on loopback without admin tokens: the page needs no login.
    // It shows the policies' compile errors with their file and line.
    let open = start(&open_config(&s._mocks.1, s._dir.path())).await;
    assert_eq!(open.chat("r").await.status, 200);
    assert!(open.gateway.proxy().state().flush(std::time::Duration::from_secs(5)));
    refused_reload(&open, &s._dir.path().join("policies")).await;
    browse(&open, "open").await;
}

/// Adding a provider key from the page: the key is validated, stored and
/// listed by its fingerprint only (needs `/admin/api/keys`).
#[tokio::test]
async fn dashboard_adds_a_key_in_a_real_browser() {
    if !browser_installed() {
        return;
    }
    let s = setup().await;
    browse(&s.gw, "add-key").await;
    let keys = admin_get(&s.gw, "/admin/api/keys").await;
    assert_eq!(keys.status, 200, "{}", keys.text());
    assert!(!keys.text().contains("ka-added-through-the-dashboard"));
    let listed = keys.json();
    let added: Vec<&Value> = listed["keys"].as_array().unwrap().iter().filter(|k| k["source"] == "api").collect();
    assert_eq!(added.len(), 1, "{}", keys.text());
    assert_eq!(added[0]["provider"], "a");
}
