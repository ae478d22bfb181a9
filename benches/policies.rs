//! The routing policies' cost: the whole per-request pipeline with the
//! built-in policies on a realistic request (10 turns, 60 candidate
//! models), and a rebuild of the route tables when the model set changes.
//! The policy phase of a request no hook acts on (an explicit
//! `provider/model`) is measured twice in one run: with the built-in
//! scripts' scope declarations, and with the same scripts stripped of them
//! (every hook entered, as before declarations existed).
//! Run with `cargo bench --bench policies`.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use freeway::metrics::Metrics;
use freeway::policy::{Pipeline, PolicyRequest, RequestState, Source};
use freeway::{Catalog, Config, Env, Gateway};
use serde_json::{Value, json};

/// Six providers of ten free models each, of every size.
fn config() -> String {
    let mut yaml = String::from("providers:\n");
    let sizes = ["1b", "3b", "8b", "14b", "32b", "70b", "120b", "235b-a22b", "405b", "r1"];
    for p in 0..6 {
        yaml.push_str(&format!(
            "  p{p}:\n    plugin: openai-compat\n    base_url: http://127.0.0.1:9/v1\n    keys: [k]\n    free: true\n    models: [{}]\n",
            sizes.iter().map(|s| format!("model-{p}-{s}")).collect::<Vec<_>>().join(", ")
        ));
    }
    yaml.push_str(
        "policies:\n  settings:\n    favorites: [model-3-70b, p1/model-1-32b]\n    context_prune: { budget: 100000 }\n",
    );
    yaml
}

/// A 10-turn conversation of about 4 KB.
fn messages() -> Vec<Value> {
    let mut m = vec![json!({"role": "system", "content": "You are a careful assistant for a software team."})];
    for t in 0..10 {
        m.push(json!({"role": "user", "content": format!("Turn {t}: how should we structure the retry logic of our HTTP client so that it backs off properly?")}));
        m.push(json!({"role": "assistant", "content": "Use exponential backoff with jitter, cap the delay, and honour Retry-After when the server sends it."}));
    }
    m.push(json!({"role": "user", "content": "Now summarise that in two sentences."}));
    m
}

fn bench(c: &mut Criterion) {
    let Ok(runtime) = tokio::runtime::Builder::new_current_thread().enable_all().build() else { panic!("runtime") };
    let env = Env::from_map(Vec::<(String, String)>::new());
    let Ok(loaded) = Config::from_yaml(&config(), "bench", &env, &Catalog::empty()) else { panic!("config") };
    let settings = loaded.config.policies.settings.clone();
    let Ok(gateway) = runtime.block_on(Gateway::new(loaded.config, Catalog::empty(), &env)) else { panic!("gateway") };
    let Ok(pipeline) = Pipeline::compile(&Source::Embedded, &[], &settings) else { panic!("pipeline") };
    let metrics = Metrics::new();
    let router = gateway.router();
    assert_eq!(router.providers().iter().map(|p| p.models().len()).sum::<usize>(), 60);
    let pins = gateway.proxy().state().clone();
    let conversation = messages();

    // Both hook phases on the 10-turn conversation, the request naming
    // `model`, as the proxy runs them once a hook acts (`window`: the first
    // candidate's context window, 0 unknown).
    let run = |model: &str, window: i64| {
        let router = router.clone();
        let available_in = pins.clone();
        let state = RequestState {
            model: model.to_owned(),
            requested: model.to_owned(),
            messages: conversation.clone(),
            availability: Some(Arc::new(move |name: &str| router.available(name, &*available_in))),
            pins: Some(pins.clone()),
            context_window: window,
            ..RequestState::default()
        };
        let req = PolicyRequest::new(state);
        pipeline.on_request(&req, &metrics);
        pipeline.on_prepare(&req, &metrics);
        black_box(req.state().model.clone())
    };
    c.bench_function("policies/request_pipeline_10_turns_60_models", |b| b.iter(|| run("auto", 131_072)));
    c.bench_function("policies/request_pipeline_explicit_model", |b| b.iter(|| run("p0/model-0-8b", 0)));
    // A bare model id: the sticky-session policy's `request` hook runs
    // (fingerprint, pin look-up, pin), as for most clients' requests.
    c.bench_function("policies/request_pipeline_bare_model", |b| b.iter(|| run("model-0-8b", 131_072)));
    // The built-in scripts without their declarations, from a folder.
    let Ok(undeclared_dir) = tempfile::tempdir() else { panic!("tempdir") };
    for (name, text) in freeway::policy::EMBEDDED {
        let stripped = text
            .replace("fn request_models(", "fn undeclared_request_models(")
            .replace("fn prepare_tokens(", "fn undeclared_prepare_tokens(");
        let Ok(()) = std::fs::write(undeclared_dir.path().join(name), stripped) else { panic!("write") };
    }
    let Ok(undeclared) = Pipeline::compile(&Source::Dir(undeclared_dir.path().to_owned()), &[], &settings) else {
        panic!("undeclared pipeline")
    };
    // The whole policy phase as the proxy runs it for `p0/model-0-8b` (a
    // 10-turn body, a 128 K window): decide, and only when a hook acts, build
    // the view and enter Rhai.
    let body_len = serde_json::to_vec(&conversation).map_or(0, |b| b.len());
    let phase = |pipeline: &Pipeline| {
        let model = "p0/model-0-8b";
        let bound = i64::try_from(body_len / 2 + 1).unwrap_or(i64::MAX);
        if !pipeline.requests_for(model) && !pipeline.prepares_for(model, || bound, 131_072) {
            return black_box(model.to_owned());
        }
        let router = router.clone();
        let available_in = pins.clone();
        let req = PolicyRequest::new(RequestState {
            model: model.to_owned(),
            requested: model.to_owned(),
            messages: conversation.clone(),
            availability: Some(Arc::new(move |name: &str| router.available(name, &*available_in))),
            pins: Some(pins.clone()),
            context_window: 131_072,
            ..RequestState::default()
        });
        pipeline.on_request(&req, &metrics);
        pipeline.on_prepare(&req, &metrics);
        black_box(req.state().model.clone())
    };
    c.bench_function("policies/phase_explicit_model_declared", |b| b.iter(|| phase(&pipeline)));
    c.bench_function("policies/phase_explicit_model_undeclared", |b| b.iter(|| phase(&undeclared)));
    c.bench_function("policies/copy_request_only", |b| {
        b.iter(|| {
            black_box(PolicyRequest::new(RequestState { messages: conversation.clone(), ..RequestState::default() }))
        })
    });
    c.bench_function("policies/rebuild_routes_60_models", |b| b.iter(|| gateway.rebuild_routes()));
}

criterion_group!(benches, bench);
criterion_main!(benches);
