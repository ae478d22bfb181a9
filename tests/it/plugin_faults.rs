//! A plugin that traps, loops or allocates without bound fails that one
//! attempt: the request falls back, the gateway keeps serving, the fault is
//! counted. A plugin of another interface version is refused by name.

use std::path::PathBuf;
use std::sync::Arc;

use freeway::metrics::Metrics;
use freeway::plugin::{PluginErrorKind, PluginHost, PluginSettings, Target};
use freeway::{Catalog, Config, Env, Gateway};

use crate::support::gateway::{Answer, provider, start};
use crate::support::mock::Mock;

fn test_plugins(name: &str) -> PathBuf {
    PathBuf::from(env!("FREEWAY_TEST_PLUGINS")).join(name)
}

/// Provider `bad` runs the misbehaving plugin; `good` is a plain mock.
async fn bad_and_good(extra: &str) -> (Mock, Mock, crate::support::gateway::TestGateway) {
    let bad = Mock::start().await;
    let good = Mock::start().await;
    // A small plugin memory (for `hog`) only fits small bodies.
    let yaml = format!(
        "server:\n  max_body_bytes: 1048576\nplugins:\n  dir: {}\n{extra}\nproviders:\n  bad:\n    plugin: misbehave\n    base_url: {}\n    keys: [k]\n    models: [trap, loop, hog, trap-stream, fine]\n{}routes:\n  trap: {{ targets: [bad/trap, good/m] }}\n  loop: {{ targets: [bad/loop, good/m] }}\n  hog: {{ targets: [bad/hog, good/m] }}\n",
        test_plugins("misbehave").display(),
        bad.base_url(),
        provider("good", &good.base_url(), &["kg"], &["m"]),
    );
    let gw = start(&yaml).await;
    (bad, good, gw)
}

/// Provider `name` alone, on the misbehaving plugin with `models`;
/// `plugins` adds lines to the `plugins:` section (each `  key: value\n`).
async fn misbehaving(name: &str, plugins: &str, models: &str) -> (Mock, crate::support::gateway::TestGateway) {
    let m = Mock::start().await;
    let yaml = format!(
        "plugins:\n  dir: {}\n{plugins}providers:\n  {name}:\n    plugin: misbehave\n    base_url: {}\n    keys: [k]\n    models: [{models}]\n",
        test_plugins("misbehave").display(),
        m.base_url()
    );
    let gw = start(&yaml).await;
    (m, gw)
}

#[tokio::test]
async fn a_trapping_looping_or_hogging_plugin_fails_one_attempt_and_the_request_falls_back() {
    let (bad, good, gw) = bad_and_good("  call_timeout: 100ms\n  memory_limit: 16777216").await;
    for (route, expect) in [("trap", "trapped"), ("loop", "deadline"), ("hog", "memory limit")] {
        let answer = gw.chat(route).await;
        assert_eq!(answer.status, 200, "{route}: {}", answer.text());
        assert_eq!(answer.routed_via(), "good/m", "{route}");
        assert_eq!(answer.fallback_attempts(), 1, "{route}");
        // Alone, the same fault is the 502's reason.
        let alone = gw.chat(&format!("bad/{route}")).await;
        assert_eq!(alone.status, 502, "{route}: {}", alone.text());
        let reason = alone.json()["error"]["attempts"][0]["reason"].as_str().unwrap().to_owned();
        assert!(reason.contains("plugin `misbehave`") && reason.contains(expect), "{route}: {reason}");
    }
    assert_eq!(bad.chats().len(), 0, "a faulting plugin's request must never be sent");
    assert_eq!(good.chats().len(), 3);
    // The gateway keeps serving, through the same plugin too.
    let fine = gw.chat("bad/fine").await;
    assert_eq!(fine.status, 200, "{}", fine.text());
    assert_eq!(bad.chats().len(), 1);
    let metrics = gw.get("/metrics", &[]).await.text();
    for kind in ["trap", "deadline", "memory"] {
        let line = format!("freeway_plugin_failures_total{{plugin=\"misbehave\",kind=\"{kind}\"}} 2");
        assert!(metrics.contains(&line), "missing `{line}` in:\n{metrics}");
    }
}

#[tokio::test]
async fn a_plugin_that_traps_in_plan_chat_is_asked_once_and_its_requests_are_built_as_before() {
    let (bad, gw) = misbehaving("bad", "", "trap-plan").await;
    for _ in 0..3 {
        let answer = gw.chat("bad/trap-plan").await;
        assert_eq!(answer.status, 200, "{}", answer.text());
    }
    assert_eq!(bad.chats().len(), 3, "build-chat built every request");
    let metrics = gw.get("/metrics", &[]).await.text();
    let line = "freeway_plugin_failures_total{plugin=\"misbehave\",kind=\"trap\"} 1";
    assert!(metrics.contains(line), "the failed plan is asked for once: missing `{line}` in:\n{metrics}");
}

#[tokio::test]
async fn the_502_names_the_plugin_and_what_it_did() {
    let (_bad, gw) = misbehaving("bad", "  call_timeout: 100ms\n", "loop").await;
    let answer = gw.chat("bad/loop").await;
    assert_eq!(answer.status, 502);
    let reason = answer.json()["error"]["attempts"][0]["reason"].as_str().unwrap().to_owned();
    assert!(reason.contains("plugin `misbehave`") && reason.contains("deadline"), "{reason}");
}

#[tokio::test]
async fn a_stream_decoder_that_traps_after_the_first_chunk_ends_the_stream_with_an_error() {
    let (_bad, _good, gw) = bad_and_good("").await;
    let answer = Answer::read(gw.stream("bad/trap-stream").await).await;
    assert_eq!(answer.status, 200);
    let events = answer.events();
    let last = events.last().unwrap();
    assert!(last.contains("plugin `misbehave`"), "{events:?}");
    assert!(!events.iter().any(|e| e == "[DONE]"));
}

#[tokio::test]
async fn faults_are_classified_at_the_plugin_api() {
    let settings = PluginSettings {
        call_timeout: std::time::Duration::from_millis(100),
        memory_limit: 16 << 20,
        ..PluginSettings::default()
    };
    let host = PluginHost::load(&settings, Some(&test_plugins("misbehave")), Arc::new(Metrics::new())).unwrap();
    let plugin = host.get("misbehave").unwrap();
    let options = Vec::new();
    for (model, kind) in
        [("trap", PluginErrorKind::Trap), ("loop", PluginErrorKind::Deadline), ("hog", PluginErrorKind::Memory)]
    {
        let target = Target { base_url: "http://x/v1", model, key: None, options: &options };
        let body = br#"{"model":"x","messages":[{"role":"user","content":"hi"}]}"#;
        let error = plugin.session().unwrap().build_chat(body, &target).unwrap_err();
        assert_eq!(error.kind, kind, "{model}: {error}");
        assert_eq!(error.plugin, "misbehave");
    }
}

#[tokio::test]
async fn a_plugin_of_another_interface_version_is_refused_with_both_versions() {
    let env = Env::from_map(Vec::<(String, String)>::new());
    let yaml = format!("plugins:\n  dir: {}\n", test_plugins("old-interface").display());
    let loaded = Config::from_yaml(&yaml, "test", &env, &Catalog::empty()).unwrap();
    let Err(problems) = Gateway::new(loaded.config, Catalog::empty(), &env).await else {
        panic!("an old-interface plugin was accepted")
    };
    let text = problems.join("\n");
    assert!(text.contains("old-interface.wasm"), "{text}");
    assert!(
        text.contains("0.0.9") && text.contains("0.3.0") && text.contains("0.2.0") && text.contains("0.1.0"),
        "{text}"
    );
}

#[tokio::test]
async fn a_plugin_file_must_be_named_as_the_plugin_calls_itself() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(test_plugins("misbehave").join("misbehave.wasm"), dir.path().join("openai-compat.wasm")).unwrap();
    let error = PluginHost::load(&PluginSettings::default(), Some(dir.path()), Arc::new(Metrics::new())).unwrap_err();
    assert!(error.join("\n").contains("calls itself `misbehave`"), "{error:?}");
}

#[tokio::test]
async fn the_example_plugin_builds_loads_and_serves() {
    let m = Mock::start().await;
    let yaml = format!(
        "plugins:\n  dir: {}\nproviders:\n  mine:\n    plugin: minimal\n    base_url: {}\n    keys: [my-key]\n    models: [m]\n",
        test_plugins("minimal").display(),
        m.base_url()
    );
    let gw = start(&yaml).await;
    let answer = gw.chat("mine/m").await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(answer.routed_via(), "mine/m");
    let seen = &m.chats()[0];
    assert!(seen.headers.iter().any(|(k, v)| k == "api-key" && v == "my-key"), "{:?}", seen.headers);
    let stream = Answer::read(gw.stream("mine/m").await).await;
    assert_eq!(stream.events().last().unwrap(), "[DONE]");
}

/// The `?calls=N` the counting model saw on each request.
async fn counts(fresh: bool) -> Vec<String> {
    let (m, gw) = misbehaving("p", &format!("  fresh_instances: {fresh}\n"), "count").await;
    for _ in 0..3 {
        assert_eq!(gw.chat("p/count").await.status, 200);
    }
    m.chats().iter().map(|s| s.query.clone().unwrap_or_default()).collect()
}

#[tokio::test]
async fn clean_instances_are_reused_unless_fresh_instances_is_set() {
    assert_eq!(counts(false).await, ["calls=1", "calls=2", "calls=3"], "one warm instance served all three");
    assert_eq!(counts(true).await, ["calls=1", "calls=1", "calls=1"], "every attempt got a new instance");
}

#[tokio::test]
async fn an_instance_that_trapped_is_never_reused() {
    let (m, gw) = misbehaving("p", "", "count, trap").await;
    assert_eq!(gw.chat("p/count").await.status, 200);
    assert_eq!(gw.chat("p/trap").await.status, 502);
    assert_eq!(gw.chat("p/count").await.status, 200);
    let seen: Vec<_> = m.chats().iter().map(|s| s.query.clone().unwrap_or_default()).collect();
    // The warm instance (1 call) served the trap and was dropped; a new one starts at 1.
    assert_eq!(seen, ["calls=1", "calls=1"]);
}

#[tokio::test]
async fn compiled_plugins_are_cached_on_disk_by_content() {
    let dir = tempfile::tempdir().unwrap();
    let settings = PluginSettings { cache_dir: Some(dir.path().join("cache")), ..PluginSettings::default() };
    let host = PluginHost::load(&settings, None, Arc::new(Metrics::new())).unwrap();
    assert_eq!(host.names(), ["anthropic", "cohere", "gemini", "openai-compat"]);
    let files: Vec<String> = std::fs::read_dir(dir.path().join("cache"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(files.len(), 4, "{files:?}");
    assert!(files.iter().all(|f| f.ends_with(".cwasm")), "{files:?}");
    // Loading again finds them (and nothing new is written).
    PluginHost::load(&settings, None, Arc::new(Metrics::new())).unwrap();
    assert_eq!(std::fs::read_dir(dir.path().join("cache")).unwrap().count(), 4);
}

/// Client model ids reached Gemini URLs as `../../secret-admin`: whatever a
/// plugin builds, a URL outside the provider's base URL is never sent.
#[tokio::test]
async fn a_plugin_built_url_outside_the_base_url_is_refused_and_never_sent() {
    let (m, gw) = misbehaving("p", "", "escape").await;
    let answer = gw.chat("p/escape").await;
    assert_eq!(answer.status, 502, "{}", answer.text());
    let reason = answer.json()["error"]["attempts"][0]["reason"].as_str().unwrap().to_owned();
    assert!(reason.contains("plugin `misbehave`") && reason.contains("outside its base URL"), "{reason}");
    assert!(reason.contains("dot segment"), "{reason}");
    assert!(m.seen().is_empty(), "sent anyway: {:?}", m.seen().iter().map(|s| &s.path).collect::<Vec<_>>());
    assert_eq!(m.connections(), 0);
}

/// Idle pooled instances kept the memory a large body made them grow (27 x
/// 38 MiB stayed resident): an instance that grew large is not pooled.
#[tokio::test]
async fn an_instance_whose_memory_grew_large_is_not_reused() {
    let (m, gw) = misbehaving("p", "", "count").await;
    let big = serde_json::json!({"model": "p/count", "messages": [{"role": "user", "content": "x".repeat(4 << 20)}]});
    assert_eq!(gw.chat("p/count").await.status, 200);
    let answer = gw.post("/v1/chat/completions", &big.to_string(), &[]).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(gw.chat("p/count").await.status, 200);
    assert_eq!(gw.chat("p/count").await.status, 200);
    let seen: Vec<_> = m.chats().iter().map(|s| s.query.clone().unwrap_or_default()).collect();
    // The warm instance served the small request and the large one, then was
    // retired; a new one starts at 1 and, staying small, is reused.
    assert_eq!(seen, ["calls=1", "calls=2", "calls=1", "calls=2"]);
}
