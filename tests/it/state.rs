//! State that outlives the process: counters, cooldowns, rejected keys,
//! pins and model lists kept in the SQLite file, the request log, and what
//! happens with a file that is corrupt or from a newer freeway. Each test
//! runs gateways over a real file in a temporary folder; a "restart" is a
//! second gateway opening the file the first one flushed.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use crate::support::gateway::{TestGateway, provider, start};
use crate::support::mock::{Behavior, Mock};

/// A config with one provider `a` (model `m`, `extra` appended to its
/// block) and its state in `db`.
fn config(mock: &Mock, db: &Path, extra: &str) -> String {
    format!("providers:\n{}{extra}state:\n  path: {}\n", provider("a", &mock.base_url(), &["ka"], &["m"]), db.display())
}

/// Writes what the gateway queued to the file, as a shutdown does.
fn flush(gw: &TestGateway) {
    assert!(gw.gateway.proxy().state().flush(Duration::from_secs(5)), "the state database was not written");
}

#[tokio::test]
async fn a_restart_keeps_an_rpd_of_5_spent() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("freeway.db");
    let mock = Mock::start().await;
    let yaml = config(&mock, &db, "    limits: { rpd: 5 }\n");
    {
        let gw = start(&yaml).await;
        for _ in 0..5 {
            assert_eq!(gw.chat("a/m").await.status, 200);
        }
        flush(&gw);
    }
    let gw = start(&yaml).await;
    let after = gw.chat("a/m").await;
    assert_eq!(after.status, 429, "{}", after.text());
    let retry: u64 = after.header("retry-after").parse().unwrap();
    assert!(retry > 23 * 3600, "room again when the day's first request leaves the day, not {retry}s");
    assert_eq!(mock.chats().len(), 5, "the restarted gateway called an upstream whose day was spent");
}

#[tokio::test]
async fn a_retry_after_of_an_hour_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("freeway.db");
    let mock = Mock::start().await;
    mock.on_model("m", Behavior::rate_limited("3600"));
    let yaml = config(&mock, &db, "");
    {
        let gw = start(&yaml).await;
        assert_eq!(gw.chat("a/m").await.status, 429);
        flush(&gw);
    }
    let gw = start(&yaml).await;
    let after = gw.chat("a/m").await;
    assert_eq!(after.status, 429);
    let retry: u64 = after.header("retry-after").parse().unwrap();
    assert!((3590..=3600).contains(&retry), "retry-after {retry}");
    assert_eq!(mock.chats().len(), 1, "the cooling model was called again after the restart");
}

#[tokio::test]
async fn a_rejected_key_stays_rejected_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("freeway.db");
    let a = Mock::start().await;
    let b = Mock::start().await;
    a.on_key("bad", Behavior::status(401));
    let yaml = format!(
        "providers:\n{}{}state:\n  path: {}\n",
        provider("a", &a.base_url(), &["bad", "good"], &["m"]),
        provider("b", &b.base_url(), &["kb"], &["m"]),
        db.display()
    );
    {
        let gw = start(&yaml).await;
        // The key rotation may start on either key; two requests meet both.
        for _ in 0..2 {
            assert_eq!(gw.chat("a/m").await.status, 200);
        }
        flush(&gw);
    }
    let rejected = a.seen().iter().filter(|s| s.key.as_deref() == Some("bad")).count();
    assert_eq!(rejected, 1);
    let gw = start(&yaml).await;
    for _ in 0..4 {
        assert_eq!(gw.chat("a/m").await.status, 200);
    }
    let after = a.seen().iter().filter(|s| s.key.as_deref() == Some("bad")).count();
    assert_eq!(after, 1, "the rejected key was tried again after the restart");
}

#[tokio::test]
async fn served_requests_are_logged_with_their_attempt_trail_and_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("freeway.db");
    let a = Mock::start().await;
    let b = Mock::start().await;
    a.on_model("m", Behavior::status(503));
    let yaml = format!(
        "server:\n  api_keys: [client-secret-token]\nproviders:\n{}{}routes:\n  r:\n    targets: [a/m, b/n]\nstate:\n  path: {}\n",
        provider("a", &a.base_url(), &["ka"], &["m"]),
        provider("b", &b.base_url(), &["kb"], &["n"]),
        db.display()
    );
    let gw = start(&yaml).await;
    let auth = [("authorization", "Bearer client-secret-token")];
    let answer = gw.post("/v1/chat/completions", &crate::support::gateway::chat_body("r", false), &auth).await;
    assert_eq!(answer.status, 200);
    flush(&gw);
    let conn = rusqlite::Connection::open(&db).unwrap();
    let row = conn
        .query_row(
            "SELECT json_object('model', model, 'client', client, 'answered_by', answered_by, 'status', status,
                                'attempts', json(attempts), 'tokens_in', tokens_in, 'tokens_out', tokens_out,
                                'stream', stream) FROM requests",
            [],
            |r| r.get::<_, String>(0),
        )
        .unwrap();
    let row: Value = serde_json::from_str(&row).unwrap();
    let (model, answered_by, status, stream) = (&row["model"], &row["answered_by"], &row["status"], &row["stream"]);
    let client = row["client"].as_str().unwrap();
    let (tokens_in, tokens_out) = (row["tokens_in"].as_i64(), row["tokens_out"].as_i64());
    let attempts = row["attempts"].as_array().unwrap();
    assert_eq!(model, "r");
    assert_eq!(answered_by, "b/n");
    assert_eq!(status, 200);
    assert_eq!(stream, 0);
    assert!(client.starts_with("token-") && !client.contains("secret"), "{client}");
    assert!(tokens_in.is_some() && tokens_out.is_some(), "the answer's usage was not logged");
    assert_eq!(attempts.len(), 2, "{attempts:?}");
    assert_eq!(attempts[0]["provider"], "a");
    assert_eq!(attempts[0]["status"], 503);
    assert_eq!(attempts[1]["provider"], "b");
    assert_eq!(attempts[1]["reason"], "ok");
    let key = attempts[1]["key"].as_str().unwrap();
    assert_eq!(key.len(), 16, "a fingerprint, not the key: {key}");
    assert!(!std::fs::read(&db).unwrap().windows(2).any(|w| w == b"kb"), "a key reached the database");
}

#[tokio::test]
async fn a_corrupt_database_is_moved_aside_and_the_gateway_serves() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("freeway.db");
    std::fs::write(&db, b"this is not an SQLite database, it is a text file that got in the way".repeat(100)).unwrap();
    let mock = Mock::start().await;
    let gw = start(&config(&mock, &db, "")).await;
    assert_eq!(gw.chat("a/m").await.status, 200);
    let health = gw.get("/health", &[]).await.json();
    let aside = health["state"]["moved_aside"].as_str().unwrap_or_else(|| panic!("{health}"));
    assert!(aside.contains("freeway.db.corrupt-"), "{aside}");
    assert!(std::fs::read(aside).unwrap().starts_with(b"this is not an SQLite"), "the broken file is kept");
    assert_eq!(health["state"]["backend"], "sqlite");
}

#[tokio::test]
async fn a_database_from_a_newer_freeway_is_refused_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("freeway.db");
    rusqlite::Connection::open(&db).unwrap().pragma_update(None, "user_version", 999).unwrap();
    let mock = Mock::start().await;
    let env = freeway::Env::from_map(Vec::<(String, String)>::new());
    let catalog = freeway::Catalog::empty();
    let loaded = freeway::Config::from_yaml(&config(&mock, &db, ""), "test", &env, &catalog).unwrap();
    let Err(problems) = freeway::Gateway::new(loaded.config, catalog, &env).await else {
        panic!("a database from a newer freeway was opened");
    };
    let message = problems.join("\n");
    assert!(message.contains("state.path") && message.contains("newer than this freeway"), "{message}");
    let version: i64 =
        rusqlite::Connection::open(&db).unwrap().query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap();
    assert_eq!(version, 999, "the newer file was changed");
}

#[tokio::test]
async fn discovered_models_are_routable_after_a_restart_before_discovery_runs() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("freeway.db");
    let mock = Mock::start().await;
    // The provider lists no models in the config: only discovery knows `found`.
    let yaml = format!(
        "providers:\n  a:\n    plugin: openai-compat\n    base_url: {}\n    keys: [ka]\nstate:\n  path: {}\n",
        mock.base_url(),
        db.display()
    );
    {
        let gw = start(&yaml).await;
        assert!(!listed(&gw, "a/listed-model").await, "listed before discovery ran");
        gw.gateway.refresh_models().await;
        assert!(listed(&gw, "a/listed-model").await);
        flush(&gw);
    }
    let gw = start(&yaml).await;
    assert!(listed(&gw, "a/listed-model").await, "the restarted gateway forgot the discovered model");
    assert_eq!(gw.chat("a/listed-model").await.status, 200);
}

/// Whether `/v1/models` lists `id`.
async fn listed(gw: &TestGateway, id: &str) -> bool {
    let models = gw.get("/v1/models", &[]).await.json();
    models["data"].as_array().unwrap().iter().any(|m| m["id"] == id)
}
