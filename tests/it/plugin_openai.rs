//! The `openai-compat` plugin: what it changes in a request on its way
//! upstream, through the real component, then end to end through a gateway
//! in front of a mock that streams usage only when asked, as OpenAI does.
//! Its chat plan (interface 0.3) is held to the same: wherever the plan
//! serves a request or passes an answer, the host's result is the one the
//! plugin's own calls give.

use std::sync::Arc;

use freeway::plugin::{ChatPlan, Plugin, PluginStream, StreamEvent, Target, UpstreamRequest, check_answer};
use serde_json::{Value, json};

use crate::support::gateway::{provider, start};
use crate::support::mock::{Behavior, Mock, Reply, Seen, chunk};
use crate::support::plugins;

const BASE: &str = "https://api.example.test/v1";
const MODEL: &str = "upstream-model";

fn plugin() -> Arc<Plugin> {
    plugins::builtin("openai-compat")
}

fn options(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
}

/// The plugin's plan for `MODEL` with these options.
fn plan(options: &[(String, String)]) -> ChatPlan {
    let target = Target { base_url: BASE, model: MODEL, key: Some("sk-test"), options };
    plugin().plan_chat(&target).unwrap().expect("openai-compat gives a plan")
}

/// Method, URL, headers (sorted) and body (as JSON) of a built request.
fn shape(r: &UpstreamRequest) -> (String, String, Vec<(String, Vec<u8>)>, Value) {
    let mut headers: Vec<(String, Vec<u8>)> =
        r.headers.iter().map(|(n, v)| (n.as_str().to_owned(), v.as_bytes().to_vec())).collect();
    headers.sort();
    (r.method.to_string(), r.url.clone(), headers, serde_json::from_slice(&r.body).unwrap())
}

/// The body the plugin sends upstream for this chat request. Where the
/// plan serves the request, the request it builds is the same.
fn chat_body(request: Value, options: &[(String, String)]) -> Value {
    let target = Target { base_url: BASE, model: MODEL, key: Some("sk-test"), options };
    let text = request.to_string();
    let built = plugin().session().unwrap().build_chat(text.as_bytes(), &target).unwrap();
    assert_eq!(built.url, format!("{BASE}/chat/completions"));
    let plan = plan(options);
    if plan.serves(text.as_bytes()) {
        let stream = request["stream"].as_bool().unwrap_or(false);
        let planned = plan.build(text.as_bytes(), None, stream).unwrap();
        assert_eq!(shape(&planned), shape(&built), "the plan builds what build-chat builds, for {request}");
        // As the gateway builds it: around the conversation the parse found.
        if let Ok(parsed) = freeway::proxy::ClientRequest::parse(bytes::Bytes::from(text.clone()), false) {
            let around = plan.build(&parsed.raw, parsed.conversation(), stream).unwrap();
            assert_eq!(around.body, planned.body, "built around the conversation, for {request}");
        }
    }
    serde_json::from_slice(&built.body).unwrap()
}

fn request(stream: bool, stream_options: Option<Value>) -> Value {
    let mut request = json!({"model": "p/alias", "messages": [{"role": "user", "content": "hi"}], "stream": stream});
    if let Some(options) = stream_options {
        request["stream_options"] = options;
    }
    request
}

#[test]
fn a_streamed_chat_asks_the_upstream_for_usage() {
    let body = chat_body(request(true, None), &[]);
    assert_eq!(body["stream_options"], json!({"include_usage": true}));
    assert_eq!(body["model"], MODEL);
    assert_eq!(body["stream"], true);
    // A client's null is no choice: usage is asked for.
    let body = chat_body(request(true, Some(Value::Null)), &[]);
    assert_eq!(body["stream_options"], json!({"include_usage": true}));
}

#[test]
fn the_clients_own_stream_options_are_kept() {
    let body = chat_body(request(true, Some(json!({"include_obfuscation": false}))), &[]);
    assert_eq!(body["stream_options"], json!({"include_obfuscation": false, "include_usage": true}));
    // The gateway needs the counts to settle its token budgets; a usage
    // chunk is one more chunk with no choices, which every client skips.
    let body = chat_body(request(true, Some(json!({"include_usage": false, "x": 1}))), &[]);
    assert_eq!(body["stream_options"], json!({"include_usage": true, "x": 1}));
    // Other fields of the request pass through.
    let mut with_extras = request(true, None);
    with_extras["temperature"] = json!(0.5);
    with_extras["user"] = json!("u-1");
    let body = chat_body(with_extras, &[]);
    assert_eq!(body["temperature"], 0.5);
    assert_eq!(body["user"], "u-1");
}

#[test]
fn usage_is_not_asked_for_without_a_stream_or_when_the_options_say_so() {
    let body = chat_body(request(false, None), &[]);
    assert!(body.get("stream_options").is_none(), "{body}");

    let off = options(&[("stream_usage", "false")]);
    let body = chat_body(request(true, None), &off);
    assert!(body.get("stream_options").is_none(), "{body}");
    let body = chat_body(request(true, Some(json!({"include_obfuscation": false}))), &off);
    assert_eq!(body["stream_options"], json!({"include_obfuscation": false}), "left as the client sent it");

    let dropped = options(&[("drop_params", "user, stream_options")]);
    let body = chat_body(request(true, None), &dropped);
    assert!(body.get("stream_options").is_none(), "{body}");
    let body = chat_body(request(true, Some(json!({"include_usage": true}))), &dropped);
    assert!(body.get("stream_options").is_none(), "a provider that refuses the field never gets it: {body}");
}

#[test]
fn embeddings_are_left_alone() {
    let target = Target { base_url: BASE, model: MODEL, key: None, options: &[] };
    let built = plugin()
        .session()
        .unwrap()
        .build_embeddings(json!({"model": "e", "input": "hi", "stream": true}).to_string().as_bytes(), &target)
        .unwrap();
    let body: Value = serde_json::from_slice(&built.body).unwrap();
    assert!(body.get("stream_options").is_none(), "{body}");
}

#[test]
fn reasoning_goes_back_only_as_the_provider_takes_it() {
    let request = json!({"model": "x", "messages": [
        {"role": "user", "content": "go"},
        {"role": "assistant", "content": null, "reasoning_content": "plan", "reasoning": "plan",
         "reasoning_details": [{"type": "reasoning.text", "text": "plan", "signature": "s", "format": "anthropic-claude-v1"}],
         "tool_calls": [{"id": "c1", "type": "function", "extra_content": {"google": {"thought_signature": "g"}},
            "function": {"name": "f", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "ok"},
        {"role": "assistant", "content": "hm", "tool_calls": [{"id": "c2", "type": "function",
            "function": {"name": "f", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c2", "content": "ok"},
    ]});
    // The plan leaves requests with reasoning fields to the plugin.
    for keep in ["", "reasoning_content", "reasoning_details, extra_content"] {
        let plan = plan(&options(&[("reasoning_back", keep)]));
        assert!(!plan.serves(request.to_string().as_bytes()), "reasoning_back {keep:?}");
    }
    // Unset: strict providers refuse fields they do not know.
    let body = chat_body(request.clone(), &[]);
    assert_eq!(
        body["messages"][1],
        json!({"role": "assistant", "content": null, "tool_calls": [{"id": "c1", "type": "function",
            "function": {"name": "f", "arguments": "{}"}}]})
    );
    let deepseek = chat_body(request.clone(), &options(&[("reasoning_back", "reasoning_content")]));
    assert_eq!(deepseek["messages"][1]["reasoning_content"], "plan");
    assert!(deepseek["messages"][1].get("reasoning_details").is_none());
    assert_eq!(deepseek["messages"][3]["reasoning_content"], "", "a tool turn from another model gets the field");
    let openrouter = chat_body(request, &options(&[("reasoning_back", "reasoning_details, extra_content")]));
    assert_eq!(openrouter["messages"][1]["reasoning_details"][0]["signature"], "s");
    assert_eq!(openrouter["messages"][1]["tool_calls"][0]["extra_content"]["google"]["thought_signature"], "g");
    assert!(openrouter["messages"][1].get("reasoning_content").is_none());
    assert!(openrouter["messages"][3].get("reasoning_content").is_none());
}

/// An upstream that streams as OpenAI does: the usage chunk comes only when
/// `stream_options.include_usage` asks for it.
fn openai_like(seen: &Seen) -> Reply {
    let mut pieces: Vec<String> = (0..2).map(|i| format!("data: {}\n\n", chunk(&seen.model, i))).collect();
    if seen.body.pointer("/stream_options/include_usage") == Some(&Value::Bool(true)) {
        let usage = json!({"id": "chatcmpl-mock", "object": "chat.completion.chunk", "model": seen.model,
            "choices": [], "usage": {"prompt_tokens": 11, "completion_tokens": 5, "total_tokens": 16}});
        pieces.push(format!("data: {usage}\n\n"));
    }
    pieces.push("data: [DONE]\n\n".to_owned());
    Reply::sse(pieces)
}

/// The completion tokens `/metrics` counted for provider `p`, if any.
async fn completion_tokens(gw: &crate::support::gateway::TestGateway) -> Option<String> {
    let metrics = gw.get("/metrics", &[]).await.text();
    metrics
        .lines()
        .find(|l| {
            l.starts_with("freeway_tokens_total") && l.contains("kind=\"completion\"") && l.contains("provider=\"p\"")
        })
        .map(str::to_owned)
}

/// A streamed request that does not ask for usage.
fn plain_stream(model: &str) -> String {
    json!({"model": model, "stream": true, "messages": [{"role": "user", "content": "hello"}]}).to_string()
}

#[tokio::test]
async fn a_streamed_answer_through_the_gateway_reports_its_usage() {
    let m = Mock::start().await;
    m.on_all(Behavior::Custom(Arc::new(openai_like)));
    let gw = start(&format!("providers:\n{}", provider("p", &m.base_url(), &["k"], &["m"]))).await;
    // The client does not ask for usage: the gateway does, for its budgets,
    // and keeps the usage-only chunk to itself.
    let answer = gw.post("/v1/chat/completions", &plain_stream("p/m"), &[]).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(answer.events().last().map(String::as_str), Some("[DONE]"));
    assert!(!answer.text().contains("\"usage\""), "{}", answer.text());
    assert_eq!(m.chats()[0].body["stream_options"], json!({"include_usage": true}));
    let line = completion_tokens(&gw).await.unwrap_or_else(|| panic!("the stream's usage was never counted"));
    assert!(line.ends_with(" 5"), "{line}");
}

#[tokio::test]
async fn stream_usage_false_sends_the_request_as_the_client_wrote_it() {
    let m = Mock::start().await;
    m.on_all(Behavior::Custom(Arc::new(openai_like)));
    let block = provider("p", &m.base_url(), &["k"], &["m"]) + "    options: { stream_usage: \"false\" }\n";
    let gw = start(&format!("providers:\n{block}")).await;
    let answer = gw.post("/v1/chat/completions", &plain_stream("p/m"), &[]).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert!(m.chats()[0].body.get("stream_options").is_none(), "{}", m.chats()[0].body);
    assert_eq!(completion_tokens(&gw).await, None, "no usage was asked for, none came");
}

/// Reasoning an upstream names `reasoning` (OpenRouter, Groq) or
/// `reasoning_details` reaches chat clients as `reasoning_content`, in the
/// answer and in stream deltas.
#[tokio::test]
async fn reasoning_under_any_name_reaches_chat_clients_as_reasoning_content() {
    let mock = Mock::start().await;
    mock.on_model(
        "m",
        Behavior::Custom(Arc::new(|seen: &Seen| {
            if seen.stream {
                let delta = |d: Value| {
                    format!("data: {}\n\n", json!({"id": "c", "object": "chat.completion.chunk", "model": "m", "choices": [{"index": 0, "delta": d}]}))
                };
                return Reply::sse(vec![
                    delta(json!({"reasoning": "thinking "})),
                    delta(json!({"reasoning_details": [{"type": "reasoning.text", "text": "harder"}]})),
                    delta(json!({"content": "4"})),
                    "data: [DONE]\n\n".to_owned(),
                ]);
            }
            Reply::json(
                200,
                json!({"id": "c", "object": "chat.completion", "model": "m", "choices": [{"index": 0, "finish_reason": "stop",
                    "message": {"role": "assistant", "content": "4", "reasoning": "2 + 2"}}]})
                .to_string(),
            )
        })),
    );
    let gw = start(&format!("providers:\n{}", provider("p", &mock.base_url(), &["k"], &["m"]))).await;
    let whole = gw.chat("p/m").await.json();
    assert_eq!(whole["choices"][0]["message"]["reasoning_content"], "2 + 2", "{whole}");
    let body = json!({"model": "p/m", "stream": true, "messages": [{"role": "user", "content": "2+2?"}]}).to_string();
    let streamed = gw.post("/v1/chat/completions", &body, &[]).await;
    let reasoning: String = streamed
        .events()
        .iter()
        .filter_map(|e| serde_json::from_str::<Value>(e).ok())
        .filter_map(|c| c["choices"][0]["delta"]["reasoning_content"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(reasoning, "thinking harder");
}

#[test]
fn answers_the_plan_passes_are_what_decode_chat_returns() {
    let target = Target { base_url: BASE, model: MODEL, key: Some("sk-test"), options: &[] };
    let plan = plan(&[]);
    let answers = [
        json!({"id": "a", "object": "chat.completion", "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}}]}),
        json!({"choices": [{"message": {"content": "x", "reasoning_content": "r"}}], "usage": {"prompt_tokens": 3, "completion_tokens": 4}}),
        json!({"choices": [{"message": {"content": "x", "reasoning": "r"}}]}),
        json!({"choices": [{"message": {"content": "x", "reasoning_details": [{"type": "reasoning.text", "text": "r"}]}}]}),
        json!({"error": {"message": "over quota"}}),
        json!({"data": []}),
    ];
    let mut passed = 0;
    for answer in answers {
        let body = answer.to_string();
        let by_plugin = plugin().session().unwrap().decode_chat(body.as_bytes(), &target);
        if !plan.passes(body.as_bytes()) {
            assert!(body.contains("\"reasoning\"") || body.contains("\"reasoning_details\""), "{body}");
            continue;
        }
        passed += 1;
        match (check_answer(body.clone().into()), by_plugin) {
            (Ok(host), Ok(plugin)) => {
                assert_eq!(host.usage, plugin.usage, "{body}");
                let (host, plugin): (Value, Value) =
                    (serde_json::from_slice(&host.body).unwrap(), serde_json::from_slice(&plugin.body).unwrap());
                assert_eq!(host, plugin, "{body}");
            }
            (Err(_), Err(_)) => {}
            (host, plugin) => panic!("{body}: host {:?}, plugin {:?}", host.map(|d| d.usage), plugin.map(|d| d.usage)),
        }
    }
    assert_eq!(passed, 4, "the answers with reasoning under another name go to the plugin");
}

/// What a decoder makes of `pieces`, as text.
fn decode_stream(mut decoder: PluginStream, pieces: &[&str]) -> Vec<String> {
    let mut events = Vec::new();
    for piece in pieces {
        decoder.push(piece.as_bytes(), &mut events).unwrap();
    }
    decoder.finish(&mut events).unwrap();
    events
        .into_iter()
        .map(|e| match e {
            StreamEvent::Chunk { json, usage } => {
                format!("{} {usage:?}", serde_json::from_slice::<Value>(&json).unwrap())
            }
            StreamEvent::Frames { sse, chunks } => {
                // Frames are `data: {...}` events: each as the chunk it is.
                let text = String::from_utf8(sse.to_vec()).unwrap();
                let events: Vec<String> = text
                    .split("\n\n")
                    .filter(|e| !e.is_empty())
                    .map(|e| {
                        format!("{} None", serde_json::from_str::<Value>(e.strip_prefix("data: ").unwrap()).unwrap())
                    })
                    .collect();
                assert_eq!(events.len(), chunks, "{text}");
                events.join("\n")
            }
            StreamEvent::Done => "done".to_owned(),
            StreamEvent::Error { message } => format!("error {message}"),
        })
        .flat_map(|e| e.split('\n').map(str::to_owned).collect::<Vec<_>>())
        .collect()
}

#[test]
fn a_planned_stream_decodes_as_the_plugins_decoder_does() {
    let target = Target { base_url: BASE, model: MODEL, key: Some("sk-test"), options: &[] };
    let chunk =
        |delta: Value| json!({"id": "c", "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": delta}]});
    let usage = json!({"id": "c", "choices": [], "usage": {"prompt_tokens": 2, "completion_tokens": 3}});
    let text = format!(
        "data: {}\n\n: keep-alive\n\ndata: {}\n\ndata: {}\r\n\r\ndata: {}\n\ndata: {usage}\n\ndata: [DONE]\n\n",
        chunk(json!({"role": "assistant", "content": ""})),
        chunk(json!({"reasoning": "thinking"})),
        chunk(json!({"reasoning_details": [{"type": "reasoning.text", "text": "more"}]})),
        chunk(json!({"content": "answer"})),
    );
    let error = format!(
        "data: {}\n\ndata: {{\"error\":{{\"message\":\"upstream broke\"}}}}\n\n",
        chunk(json!({"content": "a"}))
    );
    // Without CR line ends, the host passes plain chunks as bytes (frames).
    let lf_only = text.replace("\r\n", "\n");
    for (text, splits) in
        [(text.as_str(), [1, 40, 90, 200]), (lf_only.as_str(), [7, 100, 101, 300]), (error.as_str(), [3, 5, 60, 61])]
    {
        let mut pieces = Vec::new();
        let mut at = 0;
        for split in splits.into_iter().filter(|s| *s < text.len()) {
            pieces.push(&text[at..split]);
            at = split;
        }
        pieces.push(&text[at..]);
        let by_plugin = decode_stream(plugin().session().unwrap().into_stream(&target).unwrap(), &pieces);
        for frames in [false, true] {
            let planned = PluginStream::planned(plugin(), Arc::new(plan(&[])), frames);
            assert_eq!(decode_stream(planned, &pieces), by_plugin, "frames: {frames}");
        }
        assert!(by_plugin.len() >= 2, "{by_plugin:?}");
    }
}

#[tokio::test]
async fn a_planned_request_reaches_the_upstream_as_the_client_wrote_it() {
    let m = Mock::start().await;
    let gw = start(&format!("providers:\n{}", provider("p", &m.base_url(), &["k"], &["m"]))).await;
    // The plan edits top-level fields only: the rest arrives byte for byte
    // (`0.50` stays `0.50`, the order stays).
    let body = r#"{"model":"p/m","messages":[{"role":"user","content":"hi"}],"temperature":0.50,"seed":7}"#;
    let answer = gw.post("/v1/chat/completions", body, &[]).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    let raw = String::from_utf8(m.chats()[0].raw.to_vec()).unwrap();
    assert_eq!(raw, r#"{"messages":[{"role":"user","content":"hi"}],"temperature":0.50,"seed":7,"model":"m"}"#);
    // A request with a field the plugin edits inside the messages is built
    // by the plugin, which parses and writes it whole.
    let body = r#"{"model":"p/m","messages":[{"role":"user","content":"hi"},{"role":"assistant","content":"a","reasoning":"r"},{"role":"user","content":"go"}],"temperature":0.50}"#;
    let answer = gw.post("/v1/chat/completions", body, &[]).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    let seen = &m.chats()[1];
    let raw = String::from_utf8(seen.raw.to_vec()).unwrap();
    assert!(raw.contains("\"temperature\":0.5,") || raw.contains("\"temperature\":0.5}"), "{raw}");
    assert!(seen.body["messages"][1].get("reasoning").is_none(), "{raw}");
    assert_eq!(seen.body["model"], "m");
}
