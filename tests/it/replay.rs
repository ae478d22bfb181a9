//! `freeway replay`: a real gateway records traffic (through mock
//! upstreams, with the built-in policies from a folder) in a real state
//! file; then the real binary replays that log through a copy of the
//! policies that differs by one line, and must report exactly the requests
//! that line moves: by requested model and tier, to what, and the daily
//! use per provider. An unedited copy changes nothing; a broken one is
//! refused with its file and line; a rule on the prompt's words sees the
//! prompts only when the log keeps them (`state.log_bodies`).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use serde_json::{Value, json};

use crate::support::gateway::{TestGateway, chat_body, start_with};
use crate::support::mock::Mock;
use freeway::{Catalog, Env};

/// The auto-tier line the threshold edit changes.
const MEDIUM: &str = "if tokens > (config.medium_tokens ?? 1000) || req.turns > 6 { return \"standard\"; }";
/// The auto-tier line the content edit changes.
const REASONING: &str = "let reasoning = config.reasoning_words ?? [\"prove\",";

/// A recorded log: the state file's folder and the config the gateway ran
/// with (its policies folder a copy of the built-in policies), and the
/// gateway when it was left running on the file.
struct Recorded {
    dir: tempfile::TempDir,
    config: PathBuf,
    running: Option<TestGateway>,
    /// The upstreams, still listening: replay must not call them.
    upstreams: Vec<Mock>,
}

/// Copies the repository's `policies/` to `to`; with `edit` = (a unique
/// substring of one line, text in it, its replacement), one line changes.
fn copy_policies(to: &Path, edit: Option<(&str, &str, &str)>) {
    std::fs::create_dir_all(to).unwrap();
    let mut edited = false;
    for entry in std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("policies")).unwrap() {
        let path = entry.unwrap().path();
        let mut text = std::fs::read_to_string(&path).unwrap();
        if let Some((line, from, to)) = edit
            && text.contains(line)
        {
            let lines: Vec<String> =
                text.lines().map(|l| if l.contains(line) { l.replace(from, to) } else { l.to_owned() }).collect();
            text = lines.join("\n") + "\n";
            edited = true;
        }
        std::fs::write(to.join(path.file_name().unwrap()), text).unwrap();
    }
    assert!(edit.is_none() || edited, "the line to edit was not found");
}

/// Providers `a` (llama-3.3-70b: standard tier, rpd 1000) with its key in
/// the config, and `b` (llama-3.1-8b-instant: lite; gpt-oss-120b: large)
/// with its key in the gateway's environment only, so the replay (run in
/// an empty environment) enables it from its logged model list.
fn yaml(a: &Mock, b: &Mock, policies: &Path, db: &Path, log_bodies: bool) -> String {
    format!(
        "providers:
  a:
    plugin: openai-compat
    base_url: {}
    keys: [ka-secret-0123]
    free: true
    limits: {{ rpd: 1000 }}
    models: [llama-3.3-70b]
  b:
    plugin: openai-compat
    base_url: {}
    key_env: [REPLAY_B_KEY]
    free: true
    models: [llama-3.1-8b-instant, gpt-oss-120b]
policies:
  dir: {}
state:
  path: {}
  log_bodies: {log_bodies}
",
        a.base_url(),
        b.base_url(),
        policies.display(),
        db.display()
    )
}

fn chat(model: &str, user: &str, tools: bool) -> String {
    let mut body = json!({
        "model": model,
        "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": user}],
    });
    if tools {
        body["tools"] = json!([{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]);
    }
    body.to_string()
}

async fn send(gw: &TestGateway, body: &str, headers: &[(&str, &str)]) {
    let answer = gw.post("/v1/chat/completions", body, headers).await;
    assert_eq!(answer.status, 200, "{body}: {}", answer.text());
}

/// Ten requests: `auto` "hello" three times (lite), `auto` asking for a
/// haiku twice (lite: no rule knows the word), `auto` with tools twice
/// (large), `free` twice with a session id, `a/llama-3.3-70b` once. With
/// `stop`, the gateway is stopped and dropped (its file closed); with
/// `discover`, the providers' model lists are listed (and saved) first.
async fn record(log_bodies: bool, stop: bool, discover: bool) -> Recorded {
    let dir = tempfile::tempdir().unwrap();
    let policies = dir.path().join("policies-live");
    copy_policies(&policies, None);
    let (a, b) = (Mock::start().await, Mock::start().await);
    let text = yaml(&a, &b, &policies, &dir.path().join("freeway.db"), log_bodies);
    let config = dir.path().join("freeway.yaml");
    std::fs::write(&config, &text).unwrap();
    let env = Env::from_map([("REPLAY_B_KEY", "kb-secret-4567")]);
    let mut gw = start_with(&text, Catalog::empty(), env).await;
    // Discovery's lists are the model state replay routes over.
    if discover {
        for (provider, outcome) in gw.gateway.refresh_models().await {
            assert!(outcome.is_ok(), "{provider}: {outcome:?}");
        }
    }
    for _ in 0..3 {
        send(&gw, &chat("auto", "hello", false), &[]).await;
    }
    for _ in 0..2 {
        send(&gw, &chat("auto", "write a haiku about the sea", false), &[]).await;
    }
    for _ in 0..2 {
        send(&gw, &chat("auto", "hello", true), &[]).await;
    }
    for _ in 0..2 {
        send(&gw, &chat_body("free", false), &[("x-session-id", "s-1")]).await;
    }
    send(&gw, &chat("a/llama-3.3-70b", "hello", false), &[]).await;
    assert!(gw.gateway.proxy().state().flush(Duration::from_secs(5)));
    if !stop {
        return Recorded { dir, config, running: Some(gw), upstreams: vec![a, b] };
    }
    gw.shutdown().await.unwrap().unwrap();
    drop(gw);
    Recorded { dir, config, running: None, upstreams: vec![a, b] }
}

/// Runs `freeway replay ARGS` with the recorded config in force, in an
/// empty environment (no provider key).
fn replay(recorded: &Recorded, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_freeway"))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("RUST_LOG", "warn")
        .env("FREEWAY_CONFIG", &recorded.config)
        .current_dir(recorded.dir.path())
        .arg("replay")
        .args(args)
        .output()
        .unwrap()
}

/// The `--json` report of a replay through `policies`.
fn report(recorded: &Recorded, policies: &Path) -> Value {
    let out = replay(recorded, &["--since", "1h", "--policies", policies.to_str().unwrap(), "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
}

/// A group of the report, by requested model and baseline tier.
fn group<'a>(report: &'a Value, model: &str, tier: Option<&str>) -> &'a Value {
    report["groups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["model"] == model && g["tier"].as_str() == tier)
        .unwrap_or_else(|| panic!("no group {model} {tier:?} in {report:#}"))
}

fn provider<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["providers"].as_array().unwrap().iter().find(|p| p["provider"] == name).unwrap()
}

#[tokio::test]
async fn a_one_line_threshold_edit_reports_exactly_the_requests_it_moves() {
    let recorded = record(false, true, true).await;
    let edited = recorded.dir.path().join("policies-edited");
    copy_policies(&edited, Some((MEDIUM, "?? 1000", "?? 10")));
    let seen: Vec<usize> = recorded.upstreams.iter().map(|m| m.seen().len()).collect();
    let r = report(&recorded, &edited);
    assert_threshold_edit(&r);
    let after: Vec<usize> = recorded.upstreams.iter().map(|m| m.seen().len()).collect();
    assert_eq!(after, seen, "replay called an upstream");

    // The text report says the same.
    let out = replay(&recorded, &["--since", "1h", "--policies", edited.to_str().unwrap()]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("5 of 10 requests change their first choice; 0 change their order only."), "{text}");
    let line = text.lines().find(|l| l.starts_with("auto ") && l.contains("auto:lite")).unwrap();
    let cells: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(&cells[..5], ["auto", "auto:lite", "5", "5", "0"], "{line}");
    assert!(line.contains("a/llama-3.3-70b (5); tier now auto:standard (5)"), "{line}");
}

#[tokio::test]
async fn a_provider_the_log_shows_tried_is_enabled_without_its_key_or_a_saved_list() {
    // No discovery: only the attempts in the log tell replay that `b`
    // (whose key this shell lacks) was enabled.
    let recorded = record(false, true, false).await;
    let edited = recorded.dir.path().join("policies-edited");
    copy_policies(&edited, Some((MEDIUM, "?? 1000", "?? 10")));
    assert_threshold_edit(&report(&recorded, &edited));
}

/// What the threshold edit must report on the recorded traffic.
fn assert_threshold_edit(r: &Value) {
    assert_eq!((r["requests"].as_u64(), r["with_messages"].as_u64()), (Some(10), Some(0)), "{r:#}");
    assert_eq!((r["first_changed"].as_u64(), r["order_only"].as_u64()), (Some(5), Some(0)), "{r:#}");
    assert_eq!(r["baseline_off_log"], 0, "the baseline decides the tiers the gateway logged: {r:#}");
    // The five short `auto` requests (12 and 17 tokens, over 10) become
    // standard: from b's lite model to a's standard one.
    let lite = group(r, "auto", Some("auto:lite"));
    assert_eq!((lite["requests"].as_u64(), lite["first_changed"].as_u64()), (Some(5), Some(5)));
    assert_eq!(lite["to"], json!({"a/llama-3.3-70b": 5}));
    assert_eq!(lite["new_tiers"], json!({"auto:standard": 5}));
    for (model, tier, n) in [("auto", Some("auto:large"), 2), ("free", None, 2), ("a/llama-3.3-70b", None, 1)] {
        let g = group(r, model, tier);
        assert_eq!(
            (g["requests"].as_u64(), g["first_changed"].as_u64(), g["order_only"].as_u64()),
            (Some(n), Some(0), Some(0))
        );
    }
    assert_eq!(r["groups"].as_array().unwrap().len(), 4);
    // First choices: b took 9 (5 lite, 2 large, 2 free), a 1; after, b 4, a 6.
    let (a, b) = (provider(r, "a"), provider(r, "b"));
    assert_eq!((a["baseline_first"].as_u64(), a["replay_first"].as_u64()), (Some(1), Some(6)));
    assert_eq!((b["baseline_first"].as_u64(), b["replay_first"].as_u64()), (Some(9), Some(4)));
    // Over one hour: a day is 24 of them; a's limit is 1000 a day.
    assert!((a["replay_per_day"].as_f64().unwrap() - 144.0).abs() < 1e-6, "{a}");
    assert_eq!(a["daily_limit"], 1000);
    assert!((a["baseline_share"].as_f64().unwrap() - 0.024).abs() < 1e-9, "{a}");
    assert!((a["replay_share"].as_f64().unwrap() - 0.144).abs() < 1e-9, "{a}");
    assert_eq!(b["daily_limit"], Value::Null);
}

#[tokio::test]
async fn an_unedited_copy_changes_nothing_and_a_broken_one_names_its_line() {
    let recorded = record(false, true, true).await;
    let db = recorded.dir.path().join("freeway.db");
    let before = std::fs::read(&db).unwrap();
    let same = recorded.dir.path().join("policies-same");
    copy_policies(&same, None);
    let r = report(&recorded, &same);
    assert!(std::fs::read(&db).unwrap() == before, "replay wrote the state database");
    assert_eq!(
        (r["requests"].as_u64(), r["first_changed"].as_u64(), r["order_only"].as_u64()),
        (Some(10), Some(0), Some(0))
    );

    // Without the prompts in the log, a rule on their words changes nothing.
    let words = recorded.dir.path().join("policies-words");
    copy_policies(&words, Some((REASONING, "[\"prove\",", "[\"haiku\", \"prove\",")));
    let r = report(&recorded, &words);
    assert_eq!(r["first_changed"], 0, "{r:#}");

    let broken = recorded.dir.path().join("policies-broken");
    copy_policies(&broken, Some(("let free = [];", "[];", "[;")));
    let text = std::fs::read_to_string(broken.join("20-free-alias.rhai")).unwrap();
    let line = text.lines().position(|l| l.contains("let free = [;")).unwrap() + 1;
    let out = replay(&recorded, &["--since", "1h", "--policies", broken.to_str().unwrap()]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&format!("20-free-alias.rhai:{line}:")), "{stderr}");

    // An empty range says so.
    let now = jiff::Timestamp::now().to_string();
    let out = replay(&recorded, &["--since", &now, "--policies", same.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("nothing to replay"));
}

#[tokio::test]
async fn with_log_bodies_a_rule_on_the_prompts_words_is_replayed() {
    // The gateway still runs on the file: replay reads beside it.
    let recorded = record(true, false, true).await;
    assert!(recorded.running.is_some());
    let words = recorded.dir.path().join("policies-words");
    copy_policies(&words, Some((REASONING, "[\"prove\",", "[\"haiku\", \"prove\",")));
    let r = report(&recorded, &words);
    assert_eq!((r["requests"].as_u64(), r["with_messages"].as_u64()), (Some(10), Some(10)), "{r:#}");
    assert_eq!(r["first_changed"], 2, "{r:#}");
    // The haiku requests are reasoning now; no model is, so large.
    let lite = group(&r, "auto", Some("auto:lite"));
    assert_eq!((lite["requests"].as_u64(), lite["first_changed"].as_u64()), (Some(5), Some(2)));
    assert_eq!(lite["to"], json!({"b/gpt-oss-120b": 2}));
    assert_eq!(lite["new_tiers"], json!({"auto:large": 2}));
}

#[test]
fn a_memory_only_state_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("freeway.yaml");
    std::fs::write(&config, "state:\n  path: \"\"\n").unwrap();
    let policies = dir.path().join("p");
    copy_policies(&policies, None);
    let recorded = Recorded { config, dir, running: None, upstreams: Vec::new() };
    let out = replay(&recorded, &["--policies", policies.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("memory only"), "{}", String::from_utf8_lossy(&out.stderr));
    let missing = recorded.dir.path().join("freeway.yaml");
    std::fs::write(&missing, "state:\n  path: nowhere.db\n").unwrap();
    let out = replay(&recorded, &["--policies", policies.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no state database at"));
}

/// What a request leaves in the log for replay, through real HTTP: its
/// shape always, its messages with `log_bodies` up to 256 KB, a mark past it.
#[tokio::test]
async fn the_log_keeps_each_requests_shape_and_with_log_bodies_its_bounded_messages() {
    let dir = tempfile::tempdir().unwrap();
    let policies = dir.path().join("policies");
    copy_policies(&policies, None);
    let (a, b) = (Mock::start().await, Mock::start().await);
    let db = dir.path().join("freeway.db");
    let env = Env::from_map([("REPLAY_B_KEY", "kb-secret-4567")]);
    let gw = start_with(&yaml(&a, &b, &policies, &db, true), Catalog::empty(), env).await;
    send(&gw, &chat("auto", "hello", true), &[("x-session-id", "s-9")]).await;
    let big = "many words ".repeat(30_000);
    send(&gw, &chat("a/llama-3.3-70b", &big, false), &[]).await;
    assert!(gw.gateway.proxy().state().flush(Duration::from_secs(5)));
    let conn = rusqlite::Connection::open(&db).unwrap();
    let rows: Vec<(String, i64, bool, bool, Option<String>, bool)> = conn
        .prepare(
            "SELECT operation, prompt_estimate, has_tools, has_session, messages, messages_dropped FROM requests
             ORDER BY id",
        )
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(rows.len(), 2);
    let (op, estimate, tools, session, messages, dropped) = &rows[0];
    assert_eq!((op.as_str(), *estimate, *tools, *session, *dropped), ("chat", 12, true, true, false));
    let messages: Value = serde_json::from_str(messages.as_deref().unwrap()).unwrap();
    assert_eq!(messages[1]["content"], "hello");
    let (_, estimate, tools, session, messages, dropped) = &rows[1];
    assert_eq!(
        (*estimate, *tools, *session, messages.is_none(), *dropped),
        (330_000 / 4 + 4 + 6, false, false, true, true)
    );
}
