//! Stored Responses-API responses in the state store: a
//! `previous_response_id` served after a restart (the SQLite file), by
//! another instance (Redis), not past `state.responses_retention`; never a
//! response sent with `store: false`; a damaged row is a 400, not a 500;
//! a file of the previous schema migrates. Real HTTP, a real file in a
//! temporary folder, a real `redis-server`.

use std::path::Path;
use std::time::{Duration, Instant};

use freeway::state::Clock;
use freeway::{Catalog, Env};
use rusqlite::Connection;
use serde_json::{Value, json};

use crate::redis::{RedisServer, wait_connected};
use crate::support::gateway::{Answer, TestGateway, provider, start, start_at};
use crate::support::mock::{Mock, agent};

const TOKEN: &str = "store-test-token-0123456789";
const DAY_MS: i64 = 24 * 3600 * 1000;

/// One provider `p` whose model `agent` calls `write_file`, then answers
/// the tool's result; `state` is the config's `state:` block.
fn config(mock: &Mock, state: &str) -> String {
    mock.on_model("agent", agent("write_file", json!({"path": "hello.txt", "content": "hi"})));
    format!(
        "server:\n  api_keys: [{TOKEN}]\nproviders:\n{}{state}",
        provider("p", &mock.base_url(), &["k"], &["agent"])
    )
}

fn on_file(db: &Path) -> String {
    format!("state:\n  path: {}\n", db.display())
}

async fn post(gw: &TestGateway, body: &Value) -> Answer {
    gw.post("/v1/responses", &body.to_string(), &[("authorization", &format!("Bearer {TOKEN}"))]).await
}

fn tools() -> Value {
    json!([{"type": "function", "name": "write_file", "parameters": {"type": "object"}}])
}

/// A first turn; `note` ends up in its stored request.
fn ask(note: &str) -> Value {
    json!({"model": "p/agent", "input": format!("write hello.txt ({note})"), "tools": tools()})
}

/// A first turn, stored; its response.
async fn first_turn(gw: &TestGateway, note: &str) -> Value {
    let answer = post(gw, &ask(note)).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    answer.json()
}

/// The turn that answers `previous`'s tool call, naming it.
fn answer_to(previous: &Value) -> Value {
    let call_id = previous["output"][0]["call_id"].clone();
    json!({"model": "p/agent", "previous_response_id": previous["id"], "tools": tools(),
        "input": [{"type": "function_call_output", "call_id": call_id, "output": "wrote 2 bytes"}]})
}

/// The roles of the messages the upstream got last.
fn roles_sent(mock: &Mock) -> Vec<String> {
    let sent = mock.chats().last().unwrap().body.clone();
    sent["messages"].as_array().unwrap().iter().map(|m| m["role"].as_str().unwrap().to_owned()).collect()
}

/// Writes what the gateway queued to the file, as a shutdown does.
fn flush(gw: &TestGateway) {
    assert!(gw.gateway.proxy().state().flush(Duration::from_secs(5)), "the state database was not written");
}

/// A gateway on `yaml` whose wall clock reads `unix_ms` now.
async fn start_on(yaml: &str, unix_ms: i64) -> TestGateway {
    start_at(yaml, Catalog::empty(), Env::from_map(Vec::<(String, String)>::new()), Clock::starting_at(unix_ms)).await
}

fn not_held(answer: &Answer) -> String {
    assert_eq!(answer.status, 400, "{}", answer.text());
    let error = answer.json()["error"].clone();
    assert_eq!(error["param"], "previous_response_id", "{error}");
    error["message"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn a_stored_conversation_is_served_after_restarts_on_the_same_database() {
    let dir = tempfile::tempdir().unwrap();
    let mock = Mock::start().await;
    let yaml = config(&mock, &on_file(&dir.path().join("freeway.db")));
    let first = {
        let gw = start(&yaml).await;
        let first = first_turn(&gw, "one").await;
        flush(&gw);
        first
    };
    let second = {
        let gw = start(&yaml).await;
        let second = post(&gw, &answer_to(&first)).await;
        assert_eq!(second.status, 200, "a restart lost the stored response: {}", second.text());
        assert_eq!(roles_sent(&mock), ["user", "assistant", "tool"], "the first turn came back from the file");
        flush(&gw);
        second.json()
    };
    // Two turns read back, each written by a different run.
    let gw = start(&yaml).await;
    let third = post(&gw, &json!({"model": "p/agent", "previous_response_id": second["id"], "input": "thanks"})).await;
    assert_eq!(third.status, 200, "{}", third.text());
    assert_eq!(roles_sent(&mock), ["user", "assistant", "tool", "assistant", "user"]);
    // Read back once, it is in memory again: the same turn is served twice.
    let again = post(&gw, &json!({"model": "p/agent", "previous_response_id": second["id"], "input": "again"})).await;
    assert_eq!(again.status, 200, "{}", again.text());
}

#[tokio::test]
async fn another_instance_serves_a_response_through_redis_and_redis_away_fails_no_request() {
    let mut redis = RedisServer::start();
    let mock = Mock::start().await;
    // No file: Redis is the only way from one instance to the other.
    let yaml = config(&mock, &format!("state:\n  path: \"\"\n  redis: {}\n", redis.url()));
    let (a, b) = (start(&yaml).await, start(&yaml).await);
    wait_connected(&a).await;
    wait_connected(&b).await;
    let first = first_turn(&a, "shared").await;
    // A's write reaches Redis behind the request's back, in milliseconds.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let continued = post(&b, &answer_to(&first)).await;
        if continued.status == 200 {
            break;
        }
        not_held(&continued);
        assert!(Instant::now() < deadline, "the second instance never found the first one's response");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(roles_sent(&mock), ["user", "assistant", "tool"], "the first turn came from Redis");

    redis.stop();
    let local = first_turn(&a, "while Redis is away").await;
    let continued = post(&a, &answer_to(&local)).await;
    assert_eq!(continued.status, 200, "the instance that stored it serves it: {}", continued.text());
    let asked = Instant::now();
    let elsewhere = post(&b, &answer_to(&local)).await;
    not_held(&elsewhere);
    assert!(asked.elapsed() < Duration::from_secs(2), "waited {:?} for a Redis that is away", asked.elapsed());
}

#[tokio::test]
async fn a_response_past_its_retention_is_a_400_while_its_conversation_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let mock = Mock::start().await;
    let yaml = config(&mock, &on_file(&dir.path().join("freeway.db")));
    let t0 = Clock::system().now_ms();
    let first = {
        let gw = start_on(&yaml, t0).await;
        let first = first_turn(&gw, "old").await;
        flush(&gw);
        first
    };
    // 29 days on: within the default 30.
    let second = {
        let gw = start_on(&yaml, t0 + 29 * DAY_MS).await;
        let second = post(&gw, &answer_to(&first)).await;
        assert_eq!(second.status, 200, "{}", second.text());
        flush(&gw);
        second.json()
    };
    let gw = start_on(&yaml, t0 + 31 * DAY_MS).await;
    let message = not_held(&post(&gw, &answer_to(&first)).await);
    assert!(message.contains("is not held by this gateway"), "{message}");
    assert!(message.contains("for 30 days, in its state store"), "{message}");
    assert!(message.contains("send the whole conversation in `input` instead"), "{message}");
    // The newer turn is 2 days old: it, and the turn it continued, are served.
    let third = post(&gw, &json!({"model": "p/agent", "previous_response_id": second["id"], "input": "more"})).await;
    assert_eq!(third.status, 200, "{}", third.text());
    assert_eq!(roles_sent(&mock), ["user", "assistant", "tool", "assistant", "user"]);
}

#[tokio::test]
async fn a_response_sent_with_store_false_is_never_written() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("freeway.db");
    let mock = Mock::start().await;
    let gw = start(&config(&mock, &on_file(&db))).await;
    let kept = first_turn(&gw, "kept-note").await;
    let mut unstored = ask("secret-note");
    unstored["store"] = json!(false);
    assert_eq!(post(&gw, &unstored).await.status, 200);
    unstored["stream"] = json!(true);
    let streamed = post(&gw, &unstored).await;
    assert_eq!(streamed.status, 200);
    assert!(streamed.text().contains("response.completed"), "{}", streamed.text());
    flush(&gw);
    let conn = Connection::open(&db).unwrap();
    let ids: Vec<String> = conn
        .prepare("SELECT id FROM responses")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(ids, [kept["id"].as_str().unwrap()]);
    let secret: i64 = conn
        .query_row("SELECT count(*) FROM responses WHERE instr(request, CAST('secret-note' AS BLOB))", [], |r| r.get(0))
        .unwrap();
    assert_eq!(secret, 0);
}

#[tokio::test]
async fn with_a_retention_of_zero_responses_stay_in_memory_only() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("freeway.db");
    let mock = Mock::start().await;
    let yaml = config(&mock, &format!("{}  responses_retention: 0s\n", on_file(&db)));
    let gw = start(&yaml).await;
    let first = first_turn(&gw, "memory").await;
    assert_eq!(post(&gw, &answer_to(&first)).await.status, 200, "served from memory");
    flush(&gw);
    let stored: i64 =
        Connection::open(&db).unwrap().query_row("SELECT count(*) FROM responses", [], |r| r.get(0)).unwrap();
    assert_eq!(stored, 0);
    let message = not_held(&post(&start(&yaml).await, &answer_to(&first)).await);
    assert!(message.contains("for 60 minutes, in memory"), "{message}");
}

#[tokio::test]
async fn a_damaged_stored_row_is_a_400_not_a_500() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("freeway.db");
    let mock = Mock::start().await;
    let yaml = config(&mock, &on_file(&db));
    let (typed, garbled, intact) = {
        let gw = start(&yaml).await;
        let turns = (first_turn(&gw, "one").await, first_turn(&gw, "two").await, first_turn(&gw, "three").await);
        flush(&gw);
        turns
    };
    {
        let conn = Connection::open(&db).unwrap();
        // A column of the wrong type, and bytes that are not a response.
        let damage = |sql: &str, turn: &Value| conn.execute(sql, [turn["id"].as_str().unwrap()]).unwrap();
        assert_eq!(damage("UPDATE responses SET request = 42 WHERE id = ?1", &typed), 1);
        assert_eq!(damage("UPDATE responses SET response = X'00FF7B' WHERE id = ?1", &garbled), 1);
    }
    let gw = start(&yaml).await;
    assert_eq!(post(&gw, &answer_to(&intact)).await.status, 200, "the intact row is served");
    for damaged in [&typed, &garbled] {
        let message = not_held(&post(&gw, &answer_to(damaged)).await);
        assert!(message.contains("is not held by this gateway"), "{message}");
    }
}

#[tokio::test]
async fn a_database_of_the_previous_schema_migrates_and_keeps_responses() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("freeway.db");
    {
        // The file an earlier freeway wrote: schema 1, one logged request.
        let conn = Connection::open(&db).unwrap();
        conn.execute_batch(freeway::state::db::MIGRATIONS[0]).unwrap();
        conn.pragma_update(None, "user_version", 1).unwrap();
        conn.execute(
            "INSERT INTO requests (id, at_ms, model, status, attempts, stream, tags, latency_ms)
             VALUES (?1, ?2, 'old', 200, '[]', 0, '[]', 5)",
            [Clock::system().now_ms() * 1000, Clock::system().now_ms()],
        )
        .unwrap();
    }
    let mock = Mock::start().await;
    let yaml = config(&mock, &on_file(&db));
    let first = {
        let gw = start(&yaml).await;
        let first = first_turn(&gw, "migrated").await;
        flush(&gw);
        first
    };
    let conn = Connection::open(&db).unwrap();
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap();
    assert_eq!(version, freeway::state::db::SCHEMA_VERSION);
    let old: i64 = conn.query_row("SELECT count(*) FROM requests WHERE model = 'old'", [], |r| r.get(0)).unwrap();
    assert_eq!(old, 1, "the migration kept the request log");
    let gw = start(&yaml).await;
    assert_eq!(post(&gw, &answer_to(&first)).await.status, 200);
}
