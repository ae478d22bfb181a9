//! Provider keys through the admin API (`/admin/api/keys`): a key added
//! over HTTP is checked with one listing, stored encrypted in the state
//! file and used at once; it survives a restart, is unreadable without its
//! master key, can be turned off and deleted; keys from the environment
//! are shown but not editable; a key's text never comes back. Real
//! gateways over real SQLite files, mock upstreams that accept only the
//! keys a test names.

use std::path::Path;
use std::sync::Arc;

use base64::Engine as _;
use freeway::{Catalog, Config, Env, Gateway};
use serde_json::{Value, json};

use crate::support::gateway::{Answer, TestGateway, send, start_with};
use crate::support::mock::{Behavior, Mock, Reply, Seen, completion};

const ADMIN: &str = "admin-keys-token-0123456789";
/// The key an operator adds.
const ADDED: &str = "sk-added-through-the-api-0123456789abcdef";
/// A key from the environment.
const FROM_ENV: &str = "sk-from-the-environment-0123456789abcdef";
/// A key the upstream refuses.
const REFUSED: &str = "sk-refused-by-the-upstream-0123456789";
const MASTER_A: &str = "0a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f9";
const MASTER_B: &str = "f9e8d7c6b5a40918273645f6e7d8c9b0f9e8d7c6b5a40918273645f6e7d8c9b0";

/// A mock that serves only `accepted` keys: anything else gets a 401
/// whose body repeats the key it was sent (as some upstreams do). Its
/// listing names `m` and `listed-model`.
fn serving(accepted: &'static [&'static str]) -> Behavior {
    Behavior::Custom(Arc::new(move |seen: &Seen| {
        let key = seen.key.clone().unwrap_or_default();
        if !accepted.contains(&key.as_str()) {
            return Reply::json(401, json!({"error": {"message": format!("invalid api key {key}")}}).to_string());
        }
        if seen.path.ends_with("/models") {
            let listing = json!({"object": "list", "data": [{"id": "m", "object": "model"}, {"id": "listed-model", "object": "model"}]});
            return Reply::json(200, listing.to_string());
        }
        Reply::json(200, completion(&seen.model))
    }))
}

/// Provider `p` on `mock` whose key comes from `MOCKP_API_KEY` (so it is
/// off while that is unset), state in `db` (`""`: memory only).
fn config(mock: &Mock, db: &str) -> String {
    format!(
        "server:\n  admin_keys: [{ADMIN}]\nproviders:\n  p:\n    plugin: openai-compat\n    base_url: {}\n    key_env: [MOCKP_API_KEY]\n    models: [m]\nstate:\n  path: \"{db}\"\n",
        mock.base_url()
    )
}

fn env(vars: &[(&str, &str)]) -> Env {
    Env::from_map(vars.iter().map(|(k, v)| (k.to_string(), v.to_string())))
}

async fn gateway(mock: &Mock, db: &Path, vars: &[(&str, &str)]) -> TestGateway {
    start_with(&config(mock, &db.display().to_string()), Catalog::empty(), env(vars)).await
}

async fn call(gw: &TestGateway, method: &str, path: &str, body: &str) -> Answer {
    let auth = format!("Bearer {ADMIN}");
    Answer::read(send(&gw.url(path), method, body, &[("authorization", &auth)]).await).await
}

async fn add(gw: &TestGateway, key: &str) -> Answer {
    call(gw, "POST", "/admin/api/keys", &json!({"provider": "p", "key": key}).to_string()).await
}

/// `GET /admin/api/keys`, checked never to hold a key's text.
async fn listed(gw: &TestGateway) -> Value {
    let answer = call(gw, "GET", "/admin/api/keys", "").await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    for key in [ADDED, FROM_ENV, REFUSED] {
        assert!(!answer.text().contains(key), "GET /admin/api/keys showed a key: {}", answer.text());
    }
    answer.json()
}

fn keys_of(listing: &Value, provider: &str) -> Vec<Value> {
    listing["keys"].as_array().unwrap().iter().filter(|k| k["provider"] == provider).cloned().collect()
}

fn fingerprint(key: &str) -> String {
    format!("{:016x}", freeway::state::fingerprint(key))
}

/// The keys the mock saw on chat requests.
fn chat_keys(mock: &Mock) -> Vec<String> {
    mock.chats().into_iter().map(|s| s.key.unwrap_or_default()).collect()
}

/// Every byte of the database and its side files.
fn database_bytes(dir: &Path) -> Vec<u8> {
    let mut all = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.file_name().unwrap().to_string_lossy().starts_with("freeway.db") {
            all.extend(std::fs::read(&path).unwrap());
        }
    }
    all
}

fn holds(haystack: &[u8], needle: &str) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle.as_bytes())
}

#[tokio::test]
async fn a_key_added_through_the_api_serves_at_once_and_survives_a_restart_unreadable_in_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("freeway.db");
    let mock = Mock::start().await;
    mock.on_all(serving(&[ADDED]));
    {
        let gw = gateway(&mock, &db, &[]).await;
        let before = listed(&gw).await;
        let p = before["providers"].as_array().unwrap().iter().find(|p| p["name"] == "p").unwrap().clone();
        assert_eq!(p["enabled"], false, "{before}");
        assert_eq!(p["key_vars"], json!(["MOCKP_API_KEY"]), "{before}");
        assert_ne!(gw.chat("p/m").await.status, 200, "a provider without a key answered");

        let added = add(&gw, ADDED).await;
        assert_eq!(added.status, 201, "{}", added.text());
        assert_eq!(added.json(), json!({"provider": "p", "fingerprint": fingerprint(ADDED), "models": 2}));
        assert!(!added.text().contains(ADDED));

        let answer = gw.chat("p/m").await;
        assert_eq!(answer.status, 200, "the added key did not serve at once: {}", answer.text());
        assert_eq!(chat_keys(&mock), [ADDED]);
        let models = gw.get("/v1/models", &[]).await.json();
        let ids: Vec<&str> = models["data"].as_array().unwrap().iter().filter_map(|m| m["id"].as_str()).collect();
        assert!(ids.contains(&"p/listed-model"), "the provider's models were not discovered: {ids:?}");

        let keys = keys_of(&listed(&gw).await, "p");
        assert_eq!(keys.len(), 1, "{keys:?}");
        assert_eq!(keys[0]["fingerprint"], fingerprint(ADDED));
        assert_eq!(keys[0]["source"], "api");
        assert_eq!(keys[0]["editable"], true);
        assert_eq!(keys[0]["state"], "ready");
        assert!(keys[0]["added"].as_str().unwrap().ends_with('Z'), "{keys:?}");

        let key_file = dir.path().join("freeway.key");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&key_file).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "the master key file is {:o}", mode & 0o777);
        }
        let master = std::fs::read_to_string(&key_file).unwrap();
        assert_eq!(master.trim_end().len(), 64);
    }
    // Nothing in the file gives the key away: not its text, nor its
    // base64 or hex.
    let bytes = database_bytes(dir.path());
    assert!(!bytes.is_empty());
    let engines = [&base64::engine::general_purpose::STANDARD, &base64::engine::general_purpose::URL_SAFE_NO_PAD];
    let hex: String = ADDED.bytes().map(|b| format!("{b:02x}")).collect();
    let mut encodings = vec![ADDED.to_owned(), hex.clone(), hex.to_uppercase()];
    encodings.extend(engines.iter().map(|e| e.encode(ADDED)));
    for encoded in &encodings {
        assert!(!holds(&bytes, encoded), "the database holds the key as {encoded}");
    }
    assert!(!holds(&bytes, &ADDED[..16]), "the database holds the start of the key");

    let gw = gateway(&mock, &db, &[]).await;
    let answer = gw.chat("p/m").await;
    assert_eq!(answer.status, 200, "the added key did not survive the restart: {}", answer.text());
    assert_eq!(chat_keys(&mock), [ADDED, ADDED]);
    assert_eq!(keys_of(&listed(&gw).await, "p")[0]["source"], "api");
    let tested = call(&gw, "POST", &format!("/admin/api/keys/p/{}/test", fingerprint(ADDED)), "").await;
    assert_eq!(tested.status, 200, "{}", tested.text());
    assert_eq!(tested.json(), json!({"ok": true, "models": 2}));

    // Its last key deleted, the provider is off again, at once.
    assert_eq!(call(&gw, "DELETE", &format!("/admin/api/keys/p/{}", fingerprint(ADDED)), "").await.status, 204);
    assert_ne!(gw.chat("p/m").await.status, 200, "a provider whose last key was deleted still served");
    let after = listed(&gw).await;
    assert_eq!(after["providers"].as_array().unwrap().iter().find(|p| p["name"] == "p").unwrap()["enabled"], false);
}

#[tokio::test]
async fn another_master_key_cannot_use_a_stored_key_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("freeway.db");
    let mock = Mock::start().await;
    mock.on_all(serving(&[ADDED]));
    {
        let gw = gateway(&mock, &db, &[("FREEWAY_MASTER_KEY", MASTER_A)]).await;
        assert_eq!(add(&gw, ADDED).await.status, 201);
        assert!(!dir.path().join("freeway.key").exists(), "a key file was made though FREEWAY_MASTER_KEY is set");
    }
    let gw = gateway(&mock, &db, &[("FREEWAY_MASTER_KEY", MASTER_B)]).await;
    assert_ne!(gw.chat("p/m").await.status, 200, "a key sealed under another master key was used");
    assert!(chat_keys(&mock).is_empty());
    let keys = keys_of(&listed(&gw).await, "p");
    assert_eq!(keys.len(), 1, "{keys:?}");
    assert_eq!(keys[0]["state"], "undecryptable", "{keys:?}");
    let path = format!("/admin/api/keys/p/{}", fingerprint(ADDED));
    let tested = call(&gw, "POST", &format!("{path}/test"), "").await.json();
    assert_eq!(tested["ok"], false);
    assert!(tested["error"].as_str().unwrap().contains("decrypt"), "{tested}");
    // What cannot be read can still be deleted.
    assert_eq!(call(&gw, "DELETE", &path, "").await.status, 204);
    assert!(keys_of(&listed(&gw).await, "p").is_empty());
    drop(gw);
    // The right master key finds nothing left either.
    let gw = gateway(&mock, &db, &[("FREEWAY_MASTER_KEY", MASTER_A)]).await;
    assert!(keys_of(&listed(&gw).await, "p").is_empty());
}

#[tokio::test]
async fn a_key_the_upstream_refuses_is_not_stored_and_its_text_is_not_repeated() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("freeway.db");
    let mock = Mock::start().await;
    mock.on_all(serving(&[ADDED]));
    let gw = gateway(&mock, &db, &[]).await;
    let refused = add(&gw, REFUSED).await;
    assert_eq!(refused.status, 400, "{}", refused.text());
    let message = refused.json()["error"]["message"].as_str().unwrap().to_owned();
    assert!(message.contains("refused") && message.contains("401"), "{message}");
    assert!(message.contains("invalid api key ***"), "the upstream's reason, redacted: {message}");
    assert!(!refused.text().contains(REFUSED), "{}", refused.text());
    assert_eq!(mock.seen().iter().filter(|s| s.path.ends_with("/models")).count(), 1, "one listing call");
    assert!(keys_of(&listed(&gw).await, "p").is_empty(), "a refused key was stored");
    assert_ne!(gw.chat("p/m").await.status, 200);
    assert!(!holds(&database_bytes(dir.path()), &REFUSED[..16]));
}

#[tokio::test]
async fn an_upstream_that_fails_or_cannot_be_reached_is_a_502_and_nothing_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("freeway.db");
    let mock = Mock::start().await;
    mock.on_all(Behavior::Custom(Arc::new(|_: &Seen| Reply::json(503, r#"{"error": "down"}"#))));
    let gw = gateway(&mock, &db, &[]).await;
    let answer = add(&gw, ADDED).await;
    assert_eq!(answer.status, 502, "{}", answer.text());
    assert!(answer.json()["error"]["message"].as_str().unwrap().contains("503"), "{}", answer.text());
    assert!(keys_of(&listed(&gw).await, "p").is_empty());
    drop(gw);
    // A port nobody listens on.
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
    let yaml = config(&mock, &db.display().to_string()).replace(&mock.base_url(), &format!("http://{closed}/v1"));
    let gw = start_with(&yaml, Catalog::empty(), env(&[])).await;
    let answer = add(&gw, ADDED).await;
    assert_eq!(answer.status, 502, "{}", answer.text());
    assert!(keys_of(&listed(&gw).await, "p").is_empty());
}

#[tokio::test]
async fn a_disabled_key_is_not_used_and_a_deleted_one_is_gone_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("freeway.db");
    let mock = Mock::start().await;
    mock.on_all(serving(&[ADDED, FROM_ENV]));
    let vars = [("MOCKP_API_KEY", FROM_ENV)];
    let path = format!("/admin/api/keys/p/{}", fingerprint(ADDED));
    {
        let gw = gateway(&mock, &db, &vars).await;
        gw.gateway.refresh_models().await;
        assert_eq!(add(&gw, ADDED).await.status, 201);
        let models = gw.get("/v1/models", &[]).await.json();
        let ids: Vec<&str> = models["data"].as_array().unwrap().iter().filter_map(|m| m["id"].as_str()).collect();
        assert!(ids.contains(&"p/listed-model"), "the provider lost its discovered models to the new key: {ids:?}");
        for _ in 0..4 {
            assert_eq!(gw.chat("p/m").await.status, 200);
        }
        let used = chat_keys(&mock);
        assert!(used.contains(&ADDED.to_owned()) && used.contains(&FROM_ENV.to_owned()), "keys in turn: {used:?}");

        let off = call(&gw, "PATCH", &path, r#"{"disabled": true}"#).await;
        assert_eq!(off.status, 200, "{}", off.text());
        let before = chat_keys(&mock).len();
        for _ in 0..4 {
            assert_eq!(gw.chat("p/m").await.status, 200);
        }
        assert_eq!(chat_keys(&mock)[before..], [FROM_ENV; 4], "a disabled key was used");
        let keys = keys_of(&listed(&gw).await, "p");
        let shown = keys.iter().find(|k| k["fingerprint"] == fingerprint(ADDED)).unwrap();
        assert_eq!((shown["disabled"].clone(), shown["state"].clone()), (json!(true), json!("disabled")));
        let env_key = keys.iter().find(|k| k["fingerprint"] == fingerprint(FROM_ENV)).unwrap();
        assert_eq!(env_key["source"], "environment");
        assert_eq!(env_key["env"], "MOCKP_API_KEY");
        assert_eq!(env_key["editable"], false);

        assert_eq!(call(&gw, "PATCH", &path, r#"{"disabled": false}"#).await.status, 200);
        let before = chat_keys(&mock).len();
        for _ in 0..4 {
            gw.chat("p/m").await;
        }
        assert!(chat_keys(&mock)[before..].contains(&ADDED.to_owned()), "a key turned back on was not used");

        assert_eq!(call(&gw, "DELETE", &path, "").await.status, 204);
        assert_eq!(call(&gw, "DELETE", &path, "").await.status, 404, "deleted twice");
    }
    let gw = gateway(&mock, &db, &vars).await;
    let keys = keys_of(&listed(&gw).await, "p");
    assert_eq!(keys.len(), 1, "the deleted key came back: {keys:?}");
    assert_eq!(keys[0]["source"], "environment");
    let before = chat_keys(&mock).len();
    for _ in 0..3 {
        assert_eq!(gw.chat("p/m").await.status, 200);
    }
    assert_eq!(chat_keys(&mock)[before..], [FROM_ENV; 3]);
}

#[tokio::test]
async fn environment_keys_are_shown_but_not_editable() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("freeway.db");
    let mock = Mock::start().await;
    mock.on_all(serving(&[FROM_ENV]));
    let gw = gateway(&mock, &db, &[("MOCKP_API_KEY", FROM_ENV)]).await;
    let path = format!("/admin/api/keys/p/{}", fingerprint(FROM_ENV));
    for (method, body) in [("PATCH", r#"{"disabled": true}"#), ("DELETE", "")] {
        let answer = call(&gw, method, &path, body).await;
        assert_eq!(answer.status, 409, "{method}: {}", answer.text());
        let message = answer.json()["error"]["message"].as_str().unwrap().to_owned();
        assert!(message.contains("MOCKP_API_KEY"), "it says where the key comes from: {message}");
    }
    let again = add(&gw, FROM_ENV).await;
    assert_eq!(again.status, 409, "a key already in use: {}", again.text());
    let tested = call(&gw, "POST", &format!("{path}/test"), "").await;
    assert_eq!(tested.json(), json!({"ok": true, "models": 2}), "any key can be tested");
    let unknown = call(&gw, "DELETE", "/admin/api/keys/p/0123456789abcdef", "").await;
    assert_eq!(unknown.status, 404, "{}", unknown.text());
    assert_eq!(gw.chat("p/m").await.status, 200, "the environment's key still serves");
}

#[tokio::test]
async fn the_same_key_twice_is_a_conflict_and_bad_bodies_name_their_field() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("freeway.db");
    let mock = Mock::start().await;
    mock.on_all(serving(&[ADDED]));
    let gw = gateway(&mock, &db, &[]).await;
    assert_eq!(add(&gw, ADDED).await.status, 201);
    let twice = add(&gw, ADDED).await;
    assert_eq!(twice.status, 409, "{}", twice.text());
    assert_eq!(keys_of(&listed(&gw).await, "p").len(), 1);

    let unknown = call(&gw, "POST", "/admin/api/keys", &json!({"provider": "nope", "key": ADDED}).to_string()).await;
    assert_eq!(unknown.status, 400);
    assert!(unknown.json()["error"]["message"].as_str().unwrap().contains("nope"), "{}", unknown.text());
    for (body, field) in [
        (json!({"key": ADDED}).to_string(), "provider"),
        (json!({"provider": "p"}).to_string(), "key"),
        (json!({"provider": "p", "key": "short"}).to_string(), "key"),
        ("not json".to_owned(), "body"),
    ] {
        let answer = call(&gw, "POST", "/admin/api/keys", &body).await;
        assert_eq!(answer.status, 400, "{body}: {}", answer.text());
        assert_eq!(answer.json()["error"]["param"], field, "{body}: {}", answer.text());
        assert!(!answer.text().contains(ADDED));
    }
    let put = call(&gw, "PUT", "/admin/api/keys", "").await;
    assert_eq!(put.status, 405);
    assert_eq!(put.header("allow"), "GET, HEAD, POST");
    let bad = call(&gw, "PATCH", &format!("/admin/api/keys/p/{}", fingerprint(ADDED)), r#"{"disabled": "yes"}"#).await;
    assert_eq!(bad.status, 400);
    assert_eq!(bad.json()["error"]["param"], "disabled");
}

#[tokio::test]
async fn memory_only_state_cannot_keep_an_added_key() {
    let mock = Mock::start().await;
    mock.on_all(serving(&[ADDED]));
    let gw = start_with(&config(&mock, ""), Catalog::empty(), env(&[])).await;
    let answer = add(&gw, ADDED).await;
    assert_eq!(answer.status, 409, "{}", answer.text());
    assert!(answer.json()["error"]["message"].as_str().unwrap().contains("state.path"), "{}", answer.text());
    assert!(mock.seen().is_empty(), "the key was sent upstream though it could not be kept");
    assert_eq!(listed(&gw).await["stored"], false);
}

#[tokio::test]
async fn an_added_key_echoed_by_the_upstream_never_reaches_the_client() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("freeway.db");
    let mock = Mock::start().await;
    // Lists models for the key, then fails every chat repeating the
    // Authorization header it got.
    mock.on_all(Behavior::Custom(Arc::new(|seen: &Seen| {
        if seen.path.ends_with("/models") {
            return Reply::json(200, json!({"object": "list", "data": [{"id": "m"}]}).to_string());
        }
        let auth = seen.headers.iter().find(|(k, _)| k == "authorization").map(|(_, v)| v.clone()).unwrap_or_default();
        Reply::json(500, json!({"error": {"message": format!("upstream broke for {auth}")}}).to_string())
    })));
    let gw = gateway(&mock, &db, &[]).await;
    assert_eq!(add(&gw, ADDED).await.status, 201);
    let answer = gw.chat("p/m").await;
    assert_eq!(answer.status, 502, "{}", answer.text());
    assert!(answer.text().contains("Bearer ***"), "the reason is kept, the key is not: {}", answer.text());
    assert!(!answer.text().contains(&ADDED[..16]), "the added key reached the client: {}", answer.text());
}

/// A gateway over `db` with `vars`, or the start-up errors.
async fn start_errors(db: &Path, vars: &[(&str, &str)]) -> Vec<String> {
    let env = env(vars);
    let yaml = format!("state:\n  path: \"{}\"\n", db.display());
    let config = Config::from_yaml(&yaml, "test config", &env, &Catalog::empty()).unwrap().config;
    match Gateway::new(config, Catalog::empty(), &env).await {
        Ok(_) => Vec::new(),
        Err(errors) => errors,
    }
}

#[tokio::test]
async fn a_bad_master_key_or_key_file_stops_the_start_and_says_which() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("freeway.db");
    let errors = start_errors(&db, &[("FREEWAY_MASTER_KEY", "not-hex")]).await;
    assert!(errors.iter().any(|e| e.contains("FREEWAY_MASTER_KEY")), "{errors:?}");
    let memory = start_errors(Path::new(""), &[("FREEWAY_MASTER_KEY", &MASTER_A[..63])]).await;
    assert!(memory.iter().any(|e| e.contains("FREEWAY_MASTER_KEY")), "checked without a database too: {memory:?}");

    let key_file = dir.path().join("freeway.key");
    std::fs::write(&key_file, format!("{MASTER_A}\n")).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o644)).unwrap();
        let errors = start_errors(&db, &[]).await;
        assert!(errors.iter().any(|e| e.contains("freeway.key") && e.contains("644")), "{errors:?}");
        std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    assert!(start_errors(&db, &[]).await.is_empty());
    std::fs::write(&key_file, "too short\n").unwrap();
    let errors = start_errors(&db, &[]).await;
    assert!(errors.iter().any(|e| e.contains("freeway.key") && e.contains("64 hex")), "{errors:?}");
}
