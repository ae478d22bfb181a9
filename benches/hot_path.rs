//! The gateway's own CPU work per request, without the network: parsing the
//! client's request, resolving the model name, and the plugin round trip
//! (an instance, building the upstream request, decoding the answer, or
//! decoding a stream), and the same under the plugin's plan (interface
//! 0.3: the host applies the plugin's edits and checks itself). Run with
//! `cargo bench --bench hot_path`.

use std::hint::black_box;

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use freeway::catalog::provider::{self as providers, LocalModels};
use freeway::catalog::routes::Router;
use freeway::clients::Client;
use freeway::metrics::Metrics;
use freeway::plugin::Usage;
use freeway::plugin::{PluginHost, PluginSettings, PluginStream, StreamEvent, Target, check_answer};
use freeway::proxy::ClientRequest;
use freeway::state::MemoryState;
use freeway::{Catalog, Config, Env};
use std::sync::Arc;

/// A realistic ~1 KB chat request.
fn request_body() -> Bytes {
    let filler = "The quick brown fox jumps over the lazy dog. ".repeat(18);
    serde_json::to_vec(&serde_json::json!({
        "model": "r",
        "messages": [
            {"role": "system", "content": "You are a concise assistant."},
            {"role": "user", "content": filler},
        ],
        "temperature": 0.2,
        "max_tokens": 256,
    }))
    .map(Bytes::from)
    .unwrap_or_default()
}

fn answer_body() -> Bytes {
    Bytes::from(
        serde_json::json!({
            "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "m",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "A short answer of a few words, as most are."}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 250, "completion_tokens": 12, "total_tokens": 262}
        })
        .to_string(),
    )
}

fn stream_body(chunks: usize) -> Vec<u8> {
    let mut out = String::new();
    for i in 0..chunks {
        out.push_str(&format!(
            "data: {{\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"model\":\"m\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"token{i} \"}}}}]}}\n\n"
        ));
    }
    out.push_str("data: {\"id\":\"c\",\"choices\":[],\"usage\":{\"prompt_tokens\":250,\"completion_tokens\":10}}\n\ndata: [DONE]\n\n");
    out.into_bytes()
}

fn router() -> Router {
    let env = Env::from_map(Vec::<(String, String)>::new());
    let catalog = Catalog::empty();
    let yaml = "providers:\n  p:\n    plugin: openai-compat\n    base_url: http://127.0.0.1:9/v1\n    keys: [k1, k2]\n    models: [m, n]\nroutes:\n  r:\n    targets: [p/m, p/n]\n";
    let Ok(loaded) = Config::from_yaml(yaml, "bench", &env, &catalog) else { panic!("bench config") };
    let Ok(plugins) = PluginHost::load(&PluginSettings::default(), None, std::sync::Arc::new(Metrics::new())) else {
        panic!("plugins")
    };
    let (enabled, disabled) = providers::build(&loaded.config, &catalog, &env, &LocalModels::new(), &plugins);
    Router::new(enabled, disabled, &loaded.config, &catalog, &Default::default())
}

fn hot_path(c: &mut Criterion) {
    let body = request_body();
    let router = router();
    let answer = answer_body();
    let stream = stream_body(20);
    let Ok(request) = ClientRequest::parse(body.clone(), false) else { panic!("bench request") };
    let Ok(candidates) = router.resolve("r") else { panic!("bench route") };
    let provider = candidates[0].provider.clone();
    let plugin = provider.plugin.clone();
    let target = Target { base_url: &provider.base_url, model: "m", key: Some("k1"), options: &provider.options };

    c.bench_function("parse_request_1kb", |b| b.iter(|| ClientRequest::parse(black_box(body.clone()), false)));
    c.bench_function("resolve_route", |b| b.iter(|| router.resolve(black_box("r"))));
    let mut group = c.benchmark_group("openai-compat");
    group.bench_function("instantiate_describe", |b| b.iter(|| plugin.describe_for_bench()));
    group.bench_function("round_trip", |b| {
        b.iter(|| {
            let Ok(mut session) = plugin.session() else { return };
            let _ = black_box(session.build_chat(black_box(&request.raw), &target));
            let _ = black_box(session.decode_chat(black_box(&answer), &target));
        })
    });
    group.bench_function("stream_20_chunks", |b| {
        b.iter(|| {
            let Ok(mut decoder) = plugin.session().and_then(|s| s.into_stream(&target)) else { return Vec::new() };
            let mut out: Vec<StreamEvent> = Vec::with_capacity(32);
            // Upstreams deliver chunks in pieces; feed ~512-byte reads.
            for piece in stream.chunks(512) {
                let _ = decoder.push(black_box(piece), &mut out);
            }
            let _ = decoder.finish(&mut out);
            out
        })
    });
    // The same under the plugin's plan: the cached plan looked up, the
    // request searched and edited, the answer searched and checked.
    let plans = &provider.plans;
    group.bench_function("plan_round_trip", |b| {
        b.iter(|| {
            let Some(plan) = plans.get(&plugin, &target, 0) else { return };
            if plan.serves(black_box(&request.raw)) {
                let _ = black_box(plan.build(&request.raw, request.conversation(), false));
            }
            if plan.passes(black_box(&answer)) {
                let _ = black_box(check_answer(answer.clone()));
            }
        })
    });
    group.bench_function("plan_stream_20_chunks", |b| {
        b.iter(|| {
            let Some(plan) = plans.get(&plugin, &target, 0) else { return Vec::new() };
            let mut decoder = PluginStream::planned(plugin.clone(), plan, true);
            let mut out: Vec<StreamEvent> = Vec::with_capacity(32);
            for piece in stream.chunks(512) {
                let _ = decoder.push(black_box(piece), &mut out);
            }
            let _ = decoder.finish(&mut out);
            out
        })
    });
    group.finish();

    // The same round trip through the gemini plugin: a native request and
    // a native answer, both translated.
    let Ok(plugins) = PluginHost::load(&PluginSettings::default(), None, std::sync::Arc::new(Metrics::new())) else {
        panic!("plugins")
    };
    let Some(gemini) = plugins.get("gemini") else { panic!("no gemini plugin") };
    let no_options = Vec::new();
    let gemini_target = Target {
        base_url: "https://generativelanguage.googleapis.com/v1beta",
        model: "gemini-2.5-flash",
        key: Some("k1"),
        options: &no_options,
    };
    let gemini_answer = serde_json::json!({
        "candidates": [{"content": {"role": "model", "parts": [{"text": "A short answer of a few words, as most are."}]},
                        "finishReason": "STOP", "index": 0}],
        "usageMetadata": {"promptTokenCount": 250, "candidatesTokenCount": 12, "totalTokenCount": 262},
        "modelVersion": "gemini-2.5-flash", "responseId": "resp-1"
    })
    .to_string()
    .into_bytes();
    let mut group = c.benchmark_group("gemini");
    group.bench_function("round_trip", |b| {
        b.iter(|| {
            let Ok(mut session) = gemini.session() else { return };
            let _ = black_box(session.build_chat(black_box(&request.raw), &gemini_target));
            let _ = black_box(session.decode_chat(black_box(&gemini_answer), &gemini_target));
        })
    });
    group.finish();
    c.bench_function("whole_request_path", |b| {
        b.iter(|| {
            let Ok(request) = ClientRequest::parse(black_box(body.clone()), false) else {
                return;
            };
            let Ok(candidates) = router.resolve(&request.model) else {
                return;
            };
            let c = &candidates[0];
            let target = Target {
                base_url: &c.provider.base_url,
                model: &c.model,
                key: Some("k1"),
                options: &c.provider.options,
            };
            let Ok(mut session) = c.provider.plugin.session() else { return };
            let _ = black_box(session.build_chat(&request.raw, &target));
            let _ = black_box(session.decode_chat(&answer, &target));
        })
    });
}

/// A named client's budget check, as each of its requests takes it: the
/// state store's counters (rpm, rpd and tpd set, far from full) charged
/// and the answer's tokens settled; and a client without limits.
fn client_budgets(c: &mut Criterion) {
    let Ok(runtime) = tokio::runtime::Builder::new_current_thread().build() else { return };
    let state = MemoryState::default();
    let metrics = Metrics::new();
    let entry = |limits: &str| {
        let yaml = format!("server:\n  api_keys:\n    - {{ name: bench, token: bench-token-0123456789{limits} }}\n");
        let catalog = Catalog::default();
        Config::from_yaml(&yaml, "bench.yaml", &Env::default(), &catalog).ok()?.config.server.api_keys.first().cloned()
    };
    let (Some(limited), Some(open)) = (entry(", rpm: 1000000000, rpd: 1000000000, tpd: 1000000000"), entry("")) else {
        return;
    };
    let usage = Usage { prompt_tokens: 700, completion_tokens: 40 };
    for (name, key) in [("client_budget_limited", limited), ("client_budget_unlimited", open)] {
        let Some(client) = key.client().map(|k| Arc::new(Client::from_config(k))) else { return };
        c.bench_function(name, |b| {
            b.iter(|| {
                if let Ok(spender) = runtime.block_on(client.admit(&state)) {
                    spender.spend(&metrics, &state, black_box(usage));
                }
            })
        });
    }
}

criterion_group!(benches, hot_path, client_budgets);
criterion_main!(benches);
