//! Property tests: arbitrary bytes, strings, YAML and JSON fed to every part
//! of freeway that reads what clients, upstreams, operators and scripts hand
//! it. Each answers a value or an error; none panics.
//!
//! Inputs are drawn at random (proptest) in three kinds: raw noise (any
//! bytes or characters), structured noise (JSON and YAML trees of every
//! type, with the keys the reader looks for), and "almost valid" inputs (a
//! valid sample with a few of its parts replaced, removed or added), which
//! is what reaches the deep paths. Each property runs a bounded number of
//! cases (the `cases(n)` below; `PROPTEST_CASES` raises it for a longer hunt)
//! and prints the input it failed on, shrunk.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use freeway::metrics::{Gauges, Metrics};
use freeway::plugin::{Plugin, PluginError, PluginErrorKind, PluginHost, PluginSettings, Target};
use freeway::policy::{Pipeline, PolicyRequest, RequestState, Source};
use freeway::proxy::{ClientRequest, MAX_COOLDOWN, MAX_NAME_BYTES, retry_after};
use freeway::secret::{MIN_REDACTED_LEN, Redactor};
use freeway::state::{MemoryState, StateStore};
use freeway::{Catalog, Config, Env};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use proptest::prelude::*;
use proptest::sample::{Index, select};
use serde_json::{Value, json};
use serde_yaml::Value as Yaml;

/// `n` cases (or `PROPTEST_CASES`), and no regression files written into
/// the source tree: a failure found here becomes a named test instead.
fn cases(n: u32) -> ProptestConfig {
    let n = std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(n);
    ProptestConfig { cases: n, failure_persistence: None, ..ProptestConfig::default() }
}

// ---------------------------------------------------------------------------
// Shared generators
// ---------------------------------------------------------------------------

/// Strings that have broken parsers before: empty, blank, control and
/// invisible characters, numbers that do not fit, sentinels.
const ODD_STRINGS: &[&str] = &[
    "",
    " ",
    "\n",
    "\0",
    "\u{feff}",
    "\u{fffd}",
    "é",
    "👋🏽",
    "\u{202e}rtl",
    "e\u{301}",
    "null",
    "true",
    "[DONE]",
    "-1",
    "0",
    "1e400",
    "-0",
    "NaN",
    "18446744073709551616",
    "-9223372036854775809",
    "{",
    "}",
    "\"",
    "\\",
    "data:",
    "\r\n",
    "${",
    "${UNSET}",
    "${SET}",
    "$${SET}",
    "${SET:-x}",
];

/// A short string of any characters (controls, surrogates' neighbours,
/// combining marks and emoji included).
fn any_text() -> BoxedStrategy<String> {
    prop::collection::vec(any::<char>(), 0..12).prop_map(String::from_iter).boxed()
}

/// Text as readers meet it: arbitrary, odd, one of `words`, or several glued.
fn text_from(words: &'static [&'static str]) -> BoxedStrategy<String> {
    prop_oneof![
        3 => any_text(),
        2 => select(ODD_STRINGS).prop_map(str::to_owned),
        3 => select(words).prop_map(str::to_owned),
        1 => prop::collection::vec(select(words), 2..4).prop_map(|w| w.join("")),
        1 => (1usize..300, select(words)).prop_map(|(n, w)| w.repeat(n)),
    ]
    .boxed()
}

/// Numbers at every edge of the JSON and Rust ranges.
fn json_number() -> BoxedStrategy<Value> {
    prop_oneof![
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_filter_map("finite", |f| serde_json::Number::from_f64(f).map(Value::Number)),
        select(&[0i64, 1, -1, i64::MIN, i64::MAX, i32::MIN as i64, u32::MAX as i64, 4096, 200_000][..])
            .prop_map(Value::from),
        Just(json!(u64::MAX)),
        Just(json!(f64::MAX)),
        Just(json!(f64::MIN_POSITIVE)),
        Just(json!(-0.0)),
        Just(json!(0.5)),
    ]
    .boxed()
}

/// Any JSON value, with object keys drawn mostly from `keys` (the names the
/// reader looks for) and strings from `words`.
fn json_value(keys: &'static [&'static str], words: &'static [&'static str]) -> BoxedStrategy<Value> {
    let leaf = prop_oneof![
        1 => Just(Value::Null),
        1 => any::<bool>().prop_map(Value::Bool),
        2 => json_number(),
        3 => text_from(words).prop_map(Value::String),
    ];
    let key = prop_oneof![4 => select(keys).prop_map(str::to_owned), 1 => text_from(words)];
    leaf.prop_recursive(5, 48, 6, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((key.clone(), inner), 0..6).prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
    .boxed()
}

/// One change to a JSON tree: at the node picked by the index, replace it,
/// remove it from its parent, or add a member to it.
#[derive(Debug, Clone)]
enum Edit {
    Replace(Index, Value),
    Remove(Index),
    Add(Index, String, Value),
}

fn edit(keys: &'static [&'static str], words: &'static [&'static str]) -> BoxedStrategy<Edit> {
    let value = json_value(keys, words);
    prop_oneof![
        4 => (any::<Index>(), value.clone()).prop_map(|(at, v)| Edit::Replace(at, v)),
        2 => any::<Index>().prop_map(Edit::Remove),
        2 => (any::<Index>(), select(keys), value).prop_map(|(at, k, v)| Edit::Add(at, k.to_owned(), v)),
    ]
    .boxed()
}

/// Every node of `v` as a JSON pointer, the root first.
fn pointers(v: &Value, at: String, out: &mut Vec<String>) {
    match v {
        Value::Object(map) => {
            out.push(at.clone());
            for (k, child) in map {
                pointers(child, format!("{at}/{}", k.replace('~', "~0").replace('/', "~1")), out);
            }
        }
        Value::Array(items) => {
            out.push(at.clone());
            for (i, child) in items.iter().enumerate() {
                pointers(child, format!("{at}/{i}"), out);
            }
        }
        _ => out.push(at),
    }
}

fn apply(root: &mut Value, edit: &Edit) {
    let mut all = Vec::new();
    pointers(root, String::new(), &mut all);
    let at = match edit {
        Edit::Replace(i, _) | Edit::Remove(i) | Edit::Add(i, _, _) => all[i.index(all.len())].clone(),
    };
    match edit {
        Edit::Replace(_, v) => {
            if let Some(node) = root.pointer_mut(&at) {
                *node = v.clone();
            }
        }
        Edit::Remove(_) => {
            let Some((parent, last)) = at.rsplit_once('/') else { return };
            let key = last.replace("~1", "/").replace("~0", "~");
            match root.pointer_mut(parent) {
                Some(Value::Object(map)) => {
                    map.remove(&key);
                }
                Some(Value::Array(items)) => {
                    if let Ok(i) = key.parse::<usize>()
                        && i < items.len()
                    {
                        items.remove(i);
                    }
                }
                _ => {}
            }
        }
        Edit::Add(_, k, v) => match root.pointer_mut(&at) {
            Some(Value::Object(map)) => {
                map.insert(k.clone(), v.clone());
            }
            Some(Value::Array(items)) => items.push(v.clone()),
            _ => {}
        },
    }
}

/// `skeleton` with one to four edits: almost valid.
fn almost(skeleton: Value, keys: &'static [&'static str], words: &'static [&'static str]) -> BoxedStrategy<Value> {
    prop::collection::vec(edit(keys, words), 1..5)
        .prop_map(move |edits| {
            let mut v = skeleton.clone();
            for e in &edits {
                apply(&mut v, e);
            }
            v
        })
        .boxed()
}

/// Any bytes, shown escaped when a case fails.
fn any_bytes() -> BoxedStrategy<Bytes> {
    prop::collection::vec(any::<u8>(), 0..256).prop_map(Bytes::from).boxed()
}

/// JSON text of `values`, and sometimes a prefix of it (a body cut short).
fn json_bytes(values: BoxedStrategy<Value>) -> BoxedStrategy<Bytes> {
    (values, any::<Index>(), prop::bool::weighted(0.15))
        .prop_map(|(v, cut, truncate)| {
            let text = v.to_string().into_bytes();
            let text = if truncate { text[..cut.index(text.len() + 1)].to_vec() } else { text };
            Bytes::from(text)
        })
        .boxed()
}

// ---------------------------------------------------------------------------
// 1. The config and catalog loaders
// ---------------------------------------------------------------------------

const SECTIONS: &[&str] = &["server", "dispatch", "providers", "routes", "policies", "plugins", "discovery", "state"];

/// Every key the config schema knows, at any level.
const CONFIG_KEYS: &[&str] = &[
    "listen",
    "api_keys",
    "allow_unauthenticated",
    "max_body_bytes",
    "max_in_flight",
    "max_in_flight_bytes",
    "max_streams_per_connection",
    "protect_health",
    "protect_metrics",
    "header_read_timeout",
    "body_read_timeout",
    "shutdown_timeout",
    "display_name",
    "plugin",
    "base_url",
    "keys",
    "key_env",
    "requires_env",
    "signup",
    "free",
    "local",
    "enabled",
    "limits",
    "key_limits",
    "models",
    "headers",
    "options",
    "rpm",
    "rpd",
    "tpm",
    "tpd",
    "id",
    "context",
    "tags",
    "targets",
    "target",
    "weight",
    "strategy",
    "max_attempts",
    "cooldown",
    "timeout",
    "connect_timeout",
    "first_byte_timeout",
    "stream_idle_timeout",
    "stream_max_duration",
    "ca_file",
    "interval",
    "dir",
    "disabled",
    "settings",
    "call_timeout",
    "memory_limit",
    "cache_dir",
    "fresh_instances",
    "path",
    "groq",
    "gemini",
    "cohere",
    "openrouter",
    "chat-free",
    "favorites",
    "context_prune",
    "sticky",
];

/// Values an operator might write, and the ones they should not.
const CONFIG_WORDS: &[&str] = &[
    "500000000000years",
    "100years",
    "101years",
    "1ms",
    "0s",
    "-1s",
    "1h 30m",
    "18446744073709551615ns",
    "24h",
    "30days",
    "1e3s",
    "5 m",
    "127.0.0.1:8080",
    "0.0.0.0:0",
    "[::1]:65535",
    "[::]:99999",
    "localhost:8080",
    ":8080",
    "http://127.0.0.1:9/v1",
    "https://api.example.com/v1",
    "ftp://x",
    "http://",
    "openai-compat",
    "gemini",
    "cohere",
    "anthropic",
    "nope",
    "ordered",
    "round-robin",
    "random",
    "weighted",
    "groq/llama-3.3-70b-versatile",
    "p/m",
    "/",
    "chat",
    "tools",
    "${SET}",
    "${UNSET}",
    "${LIST}",
    "${SET:-fallback}",
    "${",
    "$${SET}",
    "sk-0123456789abcdef",
];

/// A YAML value of every type: null, booleans, numbers of every size and
/// sign (floats included), strings, sequences and mappings, tags.
fn yaml_value() -> BoxedStrategy<Yaml> {
    let number = prop_oneof![
        any::<i64>().prop_map(|n| Yaml::Number(n.into())),
        any::<u64>().prop_map(|n| Yaml::Number(n.into())),
        any::<f64>().prop_map(|f| Yaml::Number(f.into())),
        select(&[0i64, 1, -1, i64::MIN, i64::MAX, 1 << 40, 1_000_000_000_000][..]).prop_map(|n| Yaml::Number(n.into())),
    ];
    let leaf = prop_oneof![
        1 => Just(Yaml::Null),
        1 => any::<bool>().prop_map(Yaml::Bool),
        2 => number,
        4 => text_from(CONFIG_WORDS).prop_map(Yaml::String),
    ];
    let key = prop_oneof![
        4 => select(CONFIG_KEYS).prop_map(|k| Yaml::String(k.to_owned())),
        1 => text_from(CONFIG_WORDS).prop_map(Yaml::String),
        1 => any::<i64>().prop_map(|n| Yaml::Number(n.into())),
        1 => any::<bool>().prop_map(Yaml::Bool),
    ];
    leaf.prop_recursive(4, 40, 5, move |inner| {
        prop_oneof![
            4 => prop::collection::vec(inner.clone(), 0..5).prop_map(Yaml::Sequence),
            4 => prop::collection::vec((key.clone(), inner.clone()), 0..5)
                .prop_map(|kv| Yaml::Mapping(kv.into_iter().collect())),
            1 => (select(&["!!str", "!custom", "!!binary"][..]), inner).prop_map(|(tag, value)| {
                Yaml::Tagged(Box::new(serde_yaml::value::TaggedValue {
                    tag: serde_yaml::value::Tag::new(tag.trim_start_matches('!')),
                    value,
                }))
            }),
        ]
    })
    .boxed()
}

/// A mapping whose keys are mostly known ones.
fn yaml_map(keys: &'static [&'static str], values: BoxedStrategy<Yaml>) -> BoxedStrategy<Yaml> {
    let key = prop_oneof![4 => select(keys).prop_map(str::to_owned), 1 => text_from(CONFIG_WORDS)];
    prop::collection::vec((key, values), 0..6)
        .prop_map(|kv| Yaml::Mapping(kv.into_iter().map(|(k, v)| (Yaml::String(k), v)).collect()))
        .boxed()
}

/// A config-shaped document: the known sections, each a map of known keys
/// (providers and routes one level deeper) with values of every type.
fn yaml_document() -> BoxedStrategy<Yaml> {
    let any = yaml_value();
    let fields = yaml_map(CONFIG_KEYS, any.clone());
    let named = yaml_map(&["groq", "gemini", "cohere", "mine", "chat-free", "auto", "free"], fields.clone());
    let section = prop_oneof![4 => fields, 3 => named, 1 => any];
    prop::collection::vec((select(SECTIONS), section), 0..8)
        .prop_map(|kv| Yaml::Mapping(kv.into_iter().map(|(k, v)| (Yaml::String(k.to_owned()), v)).collect()))
        .boxed()
}

/// The pieces YAML's grammar is made of, glued at random: indentation,
/// flow and block collections, anchors and aliases, tags, scalars of every
/// quoting style, directives and document markers.
fn yaml_soup() -> BoxedStrategy<String> {
    const TOKENS: &[&str] = &[
        "\n",
        "\n  ",
        "\n    ",
        "\t",
        ": ",
        ":",
        "- ",
        "-",
        "? ",
        "[",
        "]",
        "{",
        "}",
        ",",
        "&a ",
        "*a",
        "&b ",
        "*b",
        "!!str ",
        "!!int ",
        "!!map ",
        "!!seq ",
        "!x ",
        "'",
        "\"",
        "|",
        "|-",
        ">",
        ">+",
        "#",
        "---",
        "...",
        "%YAML 1.2\n",
        "%TAG ! tag:x:\n",
        "~",
        "null",
        "true",
        "0x1F",
        "0o17",
        ".inf",
        "-.nan",
        "1e400",
        "server",
        "providers",
        "routes",
        "dispatch",
        "listen",
        "max_attempts",
        "keys",
        "timeout",
        "<<: *a",
        "\\u0000",
        "\u{feff}",
        "\r",
        "${SET}",
        "${",
        "500000000000years",
        "99999999999999999999",
    ];
    prop::collection::vec(prop_oneof![8 => select(TOKENS).prop_map(str::to_owned), 1 => any_text()], 0..40)
        .prop_map(|parts| parts.concat())
        .boxed()
}

/// A valid config that uses every section and most keys: the skeleton of
/// almost valid configs.
fn config_sample() -> Value {
    json!({
        "server": {"listen": "127.0.0.1:0", "api_keys": ["sk-client-0123456789"], "allow_unauthenticated": false,
            "max_body_bytes": 1_048_576, "max_in_flight": 64, "max_in_flight_bytes": 2_097_152,
            "max_streams_per_connection": 16, "protect_health": true, "protect_metrics": false,
            "header_read_timeout": "10s", "body_read_timeout": "30s", "shutdown_timeout": "5s"},
        "dispatch": {"max_attempts": 4, "cooldown": "60s", "timeout": "60s", "connect_timeout": "5s",
            "first_byte_timeout": "30s", "stream_idle_timeout": "60s", "stream_max_duration": "1h"},
        "providers": {
            "groq": {"keys": ["${GROQ_API_KEY}"], "limits": {"rpm": 30, "rpd": 1000, "tpm": 6000, "tpd": 100_000}},
            "mine": {"plugin": "openai-compat", "base_url": "http://127.0.0.1:9/v1", "keys": ["key-one-0123", "${SET}"],
                "key_env": ["LIST"], "requires_env": ["SET"], "free": true, "display_name": "Mine",
                "headers": {"HTTP-Referer": "https://example.com"}, "options": {"drop_params": "seed"},
                "key_limits": {"rpm": 10}, "models": ["m1", {"id": "m2", "context": 8192, "free": true,
                    "limits": {"rpm": 5}, "tags": ["chat", "tools"]}]},
            "gemini": {"enabled": false},
        },
        "routes": {"fast": {"targets": ["mine/m1", {"target": "mine/m2", "weight": 3}, "groq/llama-3.3-70b-versatile"],
            "strategy": "weighted", "free": true}},
        "policies": {"disabled": ["favorites"], "settings": {"sticky": {"ttl_seconds": 60}}},
        "plugins": {"call_timeout": "250ms", "memory_limit": 67_108_864, "cache_dir": "", "fresh_instances": false},
        "discovery": {"enabled": false, "interval": "1h"},
        "state": {},
    })
}

/// The embedded catalog as a tree: the skeleton of almost valid catalogs.
fn catalog_sample() -> Value {
    serde_yaml::from_str(freeway::catalog::CATALOG_YAML).unwrap()
}

/// JSON trees written as YAML (block style, every string quoted as needed).
fn as_yaml(v: &Value) -> String {
    serde_yaml::to_string(v).unwrap_or_default()
}

/// Any text, the YAML-grammar soup, a structured document, or an almost
/// valid config.
fn config_text() -> BoxedStrategy<String> {
    prop_oneof![
        1 => any::<String>(),
        2 => yaml_soup(),
        4 => yaml_document().prop_map(|doc| serde_yaml::to_string(&doc).unwrap_or_default()),
        4 => almost(config_sample(), CONFIG_KEYS, CONFIG_WORDS).prop_map(|v| as_yaml(&v)),
    ]
    .boxed()
}

/// The same for catalogs, with the embedded catalog as the valid base.
fn catalog_text() -> BoxedStrategy<String> {
    prop_oneof![
        3 => config_text(),
        2 => almost(catalog_sample(), CONFIG_KEYS, CONFIG_WORDS).prop_map(|v| as_yaml(&v)),
    ]
    .boxed()
}

fn env() -> &'static Env {
    static ENV: OnceLock<Env> = OnceLock::new();
    ENV.get_or_init(|| {
        Env::from_map([
            ("SET", "value-of-set"),
            ("LIST", "k1,k2,,k3"),
            ("EMPTY", ""),
            ("NESTED", "${SET}"),
            ("GROQ_API_KEY", "gsk-property-test"),
            ("CLOUDFLARE_ACCOUNT_ID", "acc"),
        ])
    })
}

fn builtin_catalog() -> &'static Catalog {
    static CATALOG: OnceLock<Catalog> = OnceLock::new();
    CATALOG.get_or_init(|| Catalog::builtin(env()).unwrap())
}

/// The skeletons are valid: almost valid inputs are one edit from a config
/// and a catalog that load.
#[test]
fn the_config_and_catalog_samples_load() {
    let loaded = Config::from_yaml(&as_yaml(&config_sample()), "sample", env(), builtin_catalog());
    assert!(loaded.is_ok(), "{}", loaded.unwrap_err());
    let catalog = Catalog::from_yaml(&as_yaml(&catalog_sample()), "sample", env());
    assert!(catalog.is_ok(), "{}", catalog.unwrap_err());
}

proptest! {
    #![proptest_config(cases(256))]

    /// The config loader answers a config or every problem it found (at
    /// least one), against the built-in catalog and an empty one.
    #[test]
    fn the_config_loader_never_panics_and_errors_list_problems(text in config_text()) {
        for catalog in [builtin_catalog(), &Catalog::empty()] {
            match Config::from_yaml(&text, "prop", env(), catalog) {
                Ok(loaded) => {
                    // What the gateway derives from a loaded config at start-up.
                    let _ = loaded.config.server.listen_addr();
                    let _ = loaded.config.plugin_settings();
                }
                Err(e) => prop_assert!(!e.problems.is_empty(), "an error without problems: {e}"),
            }
        }
    }
}

proptest! {
    #![proptest_config(cases(128))]

    /// The catalog loader, on the same inputs and almost valid catalogs.
    #[test]
    fn the_catalog_loader_never_panics_and_errors_list_problems(text in catalog_text()) {
        if let Err(e) = Catalog::from_yaml(&text, "prop", env()) {
            prop_assert!(!e.problems.is_empty(), "an error without problems: {e}");
        }
    }
}

// ---------------------------------------------------------------------------
// 2. The client request parser
// ---------------------------------------------------------------------------

const REQUEST_KEYS: &[&str] = &[
    "model",
    "messages",
    "stream",
    "stream_options",
    "include_usage",
    "max_tokens",
    "max_completion_tokens",
    "tools",
    "tool_choice",
    "input",
    "role",
    "content",
    "type",
    "text",
    "image_url",
    "url",
    "name",
    "tool_calls",
    "tool_call_id",
    "function",
    "arguments",
    "parameters",
    "temperature",
    "response_format",
    "json_schema",
    "schema",
    "stop",
    "n",
    "encoding_format",
    "dimensions",
];

const REQUEST_WORDS: &[&str] = &[
    "user",
    "system",
    "assistant",
    "tool",
    "developer",
    "auto",
    "chat-free",
    "groq/llama",
    "text",
    "function",
    "required",
    "none",
    "json_object",
    "json_schema",
    "float",
    "base64",
    "hello",
];

fn chat_skeleton() -> Value {
    json!({
        "model": "chat-free",
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": [{"type": "text", "text": "hi"}, {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA=="}}]},
            {"role": "assistant", "content": null, "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "c1", "content": "42"},
        ],
        "stream": true,
        "stream_options": {"include_usage": true},
        "max_tokens": 64,
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}],
        "tool_choice": "auto",
        "response_format": {"type": "json_object"},
        "temperature": 0.5,
    })
}

fn embeddings_skeleton() -> Value {
    json!({"model": "embed", "input": ["first", "second"], "encoding_format": "float", "dimensions": 8})
}

/// Model names of every length around the bound, blanks around some.
fn model_name() -> BoxedStrategy<String> {
    let blank = || select(&["", "", " ", "\t", "\n ", "\u{a0}", "\u{3000}"][..]);
    let body = prop_oneof![
        (0usize..MAX_NAME_BYTES + 8).prop_map(|n| "m".repeat(n)),
        (0usize..MAX_NAME_BYTES / 2 + 8).prop_map(|n| "é".repeat(n)),
        (0usize..MAX_NAME_BYTES / 4 + 8).prop_map(|n| "👋".repeat(n)),
        any_text(),
    ];
    (blank(), body, blank()).prop_map(|(a, b, c)| format!("{a}{b}{c}")).boxed()
}

/// Bodies a client might send: noise, any JSON, an almost valid request, or
/// a valid one with a model name of any length.
fn request_body(skeleton: Value) -> BoxedStrategy<Bytes> {
    let named = skeleton.clone();
    prop_oneof![
        1 => any_bytes(),
        2 => json_bytes(json_value(REQUEST_KEYS, REQUEST_WORDS)),
        5 => json_bytes(almost(skeleton, REQUEST_KEYS, REQUEST_WORDS)),
        2 => model_name().prop_map(move |name| {
            let mut body = named.clone();
            body["model"] = Value::String(name);
            Bytes::from(body.to_string())
        }),
    ]
    .boxed()
}

/// What every accepted request guarantees to the rest of the gateway.
fn check_parsed(r: &ClientRequest, body: &Bytes) -> Result<(), TestCaseError> {
    prop_assert!(!r.model.is_empty(), "an empty model was accepted");
    prop_assert!(r.model.len() <= MAX_NAME_BYTES, "a model of {} bytes was accepted", r.model.len());
    prop_assert_eq!(r.model.trim(), r.model.as_str(), "the model keeps surrounding blanks");
    prop_assert_eq!(&r.raw, body, "the raw body is not the input");
    Ok(())
}

proptest! {
    #![proptest_config(cases(512))]

    /// A chat body is parsed or refused with a 400, with or without the
    /// conversation kept; what is accepted has a bounded model name and the
    /// body as sent.
    #[test]
    fn the_chat_request_parser_never_panics(body in request_body(chat_skeleton())) {
        for keep in [false, true] {
            if let Ok(r) = ClientRequest::parse(body.clone(), keep) {
                check_parsed(&r, &body)?;
                prop_assert_eq!(r.messages.is_some(), keep);
                if let Some(messages) = &r.messages {
                    prop_assert!(!messages.is_empty());
                }
            }
        }
    }

    /// The same for embeddings bodies.
    #[test]
    fn the_embeddings_request_parser_never_panics(body in request_body(embeddings_skeleton())) {
        if let Ok(r) = ClientRequest::parse_embeddings(body.clone()) {
            check_parsed(&r, &body)?;
        }
    }
}

// ---------------------------------------------------------------------------
// 3. The plugins, through the real host
// ---------------------------------------------------------------------------

/// A host of the built-in plugins whose call deadline is long enough that a
/// busy machine never turns a slow call into a `Deadline`: here a deadline
/// means a plugin that runs away.
fn plugin(name: &str) -> Arc<Plugin> {
    static HOST: OnceLock<(PluginHost, Arc<Metrics>)> = OnceLock::new();
    let (host, _) = HOST.get_or_init(|| {
        let metrics = Arc::new(Metrics::new());
        let settings = PluginSettings { call_timeout: Duration::from_secs(10), ..PluginSettings::default() };
        (PluginHost::load(&settings, None, metrics.clone()).unwrap(), metrics)
    });
    host.get(name).unwrap_or_else(|| panic!("no built-in plugin `{name}`"))
}

const PLUGINS: &[&str] = &["openai-compat", "gemini", "cohere", "anthropic"];

/// The keys upstream answers and streams carry, across the four plugins.
const UPSTREAM_KEYS: &[&str] = &[
    "id",
    "object",
    "created",
    "model",
    "choices",
    "index",
    "message",
    "delta",
    "role",
    "content",
    "text",
    "tool_calls",
    "function",
    "name",
    "arguments",
    "finish_reason",
    "usage",
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "prompt_tokens_details",
    "completion_tokens_details",
    "cached_tokens",
    "reasoning_tokens",
    "reasoning_content",
    "reasoning",
    "refusal",
    "error",
    "code",
    "status",
    "details",
    "data",
    "embedding",
    "embeddings",
    "values",
    "float",
    "models",
    "context_length",
    "pricing",
    "prompt",
    "completion",
    "max_model_len",
    "capabilities",
    "supported_parameters",
    "candidates",
    "parts",
    "thought",
    "thoughtSignature",
    "functionCall",
    "args",
    "finishReason",
    "usageMetadata",
    "promptTokenCount",
    "candidatesTokenCount",
    "thoughtsTokenCount",
    "totalTokenCount",
    "cachedContentTokenCount",
    "toolUsePromptTokenCount",
    "responseId",
    "modelVersion",
    "promptFeedback",
    "blockReason",
    "inputTokenLimit",
    "supportedGenerationMethods",
    "retryDelay",
    "@type",
    "type",
    "tool_plan",
    "billed_units",
    "tokens",
    "input_tokens",
    "output_tokens",
    "endpoints",
    "features",
    "supports_vision",
    "meta",
    "texts",
    "stop_reason",
    "stop_sequence",
    "content_block",
    "partial_json",
    "thinking",
    "signature",
    "input",
    "cache_read_input_tokens",
    "cache_creation_input_tokens",
    "display_name",
    "max_input_tokens",
    "max_tokens",
    "lifecycle",
    "image_input",
    "supported",
    "has_more",
];

const UPSTREAM_WORDS: &[&str] = &[
    "assistant",
    "model",
    "user",
    "tool",
    "function",
    "text",
    "stop",
    "length",
    "tool_calls",
    "STOP",
    "MAX_TOKENS",
    "SAFETY",
    "RECITATION",
    "COMPLETE",
    "ERROR",
    "TOOL_CALL",
    "end_turn",
    "tool_use",
    "max_tokens",
    "message_start",
    "content_block_start",
    "content_block_delta",
    "content_block_stop",
    "message_delta",
    "message_stop",
    "ping",
    "error",
    "text_delta",
    "input_json_delta",
    "thinking_delta",
    "signature_delta",
    "message-start",
    "content-start",
    "content-delta",
    "content-end",
    "tool-plan-delta",
    "tool-call-start",
    "tool-call-delta",
    "tool-call-end",
    "citation-start",
    "message-end",
    "RESOURCE_EXHAUSTED",
    "INVALID_ARGUMENT",
    "API_KEY_INVALID",
    "rate_limit_error",
    "overloaded_error",
    "billing_error",
    "insufficient_quota",
    "30s",
    "1.5s",
    "-1s",
    "99999999999999999999s",
    "chat",
    "embed",
    "generateContent",
    "embedContent",
    "0",
    "0.0",
    "{",
    "{\"a\":",
    "type.googleapis.com/google.rpc.RetryInfo",
    "retired",
    "[DONE]",
];

/// A valid answer, embeddings list, model listing and error of each plugin:
/// the skeletons almost-valid inputs are made from.
struct Samples {
    chat: Value,
    embeddings: Value,
    models: Value,
    error: Value,
    /// A valid stream's events: (SSE event name, data).
    stream: Vec<(&'static str, Value)>,
    /// An error event of the stream.
    stream_error: (&'static str, Value),
}

fn openai_usage() -> Value {
    json!({"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12,
        "prompt_tokens_details": {"cached_tokens": 1}, "completion_tokens_details": {"reasoning_tokens": 2}})
}

fn samples(plugin: &str) -> Samples {
    let openai_chat = json!({
        "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "m",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi", "reasoning_content": "r",
            "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{\"a\":1}"}}]},
            "finish_reason": "tool_calls"}],
        "usage": openai_usage(),
    });
    let openai_error = json!({"error": {"message": "slow down", "type": "rate_limit_exceeded", "code": "rate_limit"}});
    match plugin {
        "openai-compat" => Samples {
            chat: openai_chat,
            embeddings: json!({"object": "list", "model": "e", "data": [{"object": "embedding", "index": 0,
                "embedding": [0.1, -0.2]}], "usage": {"prompt_tokens": 2, "total_tokens": 2}}),
            models: json!({"object": "list", "data": [{"id": "m", "context_length": 8192, "max_model_len": 4096,
                "pricing": {"prompt": "0", "completion": "0"}, "supported_parameters": ["tools", "reasoning"],
                "capabilities": ["chat"]}]}),
            error: openai_error,
            stream: vec![
                (
                    "",
                    json!({"id": "c", "object": "chat.completion.chunk", "choices": [{"index": 0,
                    "delta": {"role": "assistant", "content": "h"}}]}),
                ),
                (
                    "",
                    json!({"id": "c", "choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0,
                    "function": {"arguments": "{"}}]}, "finish_reason": "stop"}], "usage": openai_usage()}),
                ),
            ],
            stream_error: ("", json!({"error": {"message": "overloaded"}})),
        },
        "gemini" => {
            let candidate = json!({"content": {"role": "model", "parts": [{"text": "think", "thought": true},
                {"text": "hi"}, {"functionCall": {"id": "g1", "name": "f", "args": {"a": 1}}, "thoughtSignature": "c2ln"}]},
                "finishReason": "STOP", "index": 0});
            let usage = json!({"promptTokenCount": 12, "candidatesTokenCount": 7, "thoughtsTokenCount": 5,
                "totalTokenCount": 24, "cachedContentTokenCount": 1});
            let answer = json!({"candidates": [candidate], "usageMetadata": usage, "modelVersion": "g",
                "responseId": "r1"});
            Samples {
                chat: json!({"candidates": answer["candidates"], "usageMetadata": answer["usageMetadata"],
                    "promptFeedback": {"blockReason": "SAFETY"}}),
                embeddings: json!({"embeddings": [{"values": [0.1, 0.2]}], "embedding": {"values": [0.3]}}),
                models: json!({"models": [{"name": "models/gemini-2.5-flash", "inputTokenLimit": 1048576,
                    "supportedGenerationMethods": ["generateContent", "embedContent"], "thinking": true}],
                    "nextPageToken": "x"}),
                error: json!({"error": {"code": 429, "message": "quota", "status": "RESOURCE_EXHAUSTED", "details": [
                    {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "30s"},
                    {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID"}]}}),
                stream: vec![("", answer.clone()), ("", answer)],
                stream_error: ("", json!({"error": {"code": 503, "message": "overloaded"}})),
            }
        }
        "cohere" => {
            let usage = json!({"billed_units": {"input_tokens": 5, "output_tokens": 3},
                "tokens": {"input_tokens": 71, "output_tokens": 3}});
            let call = json!({"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}});
            Samples {
                chat: json!({"id": "x", "finish_reason": "TOOL_CALL", "message": {"role": "assistant",
                    "content": [{"type": "text", "text": "hi"}], "tool_plan": "plan", "tool_calls": [call.clone()]},
                    "usage": usage.clone()}),
                embeddings: json!({"id": "e", "embeddings": {"float": [[0.1, 0.2]]}, "texts": ["a"],
                    "meta": {"billed_units": {"input_tokens": 1}}}),
                models: json!({"models": [{"name": "command-a", "endpoints": ["chat", "embed"],
                    "context_length": 256000.0, "features": ["tools"], "supports_vision": true}]}),
                error: json!({"message": "too many requests", "id": "x"}),
                stream: vec![
                    (
                        "message-start",
                        json!({"type": "message-start", "id": "s1",
                        "delta": {"message": {"role": "assistant"}}}),
                    ),
                    (
                        "content-start",
                        json!({"type": "content-start", "index": 0,
                        "delta": {"message": {"content": {"type": "text", "text": ""}}}}),
                    ),
                    (
                        "content-delta",
                        json!({"type": "content-delta", "index": 0,
                        "delta": {"message": {"content": {"text": "h"}}}}),
                    ),
                    ("tool-plan-delta", json!({"type": "tool-plan-delta", "delta": {"message": {"tool_plan": "p"}}})),
                    (
                        "tool-call-start",
                        json!({"type": "tool-call-start", "index": 0,
                        "delta": {"message": {"tool_calls": call}}}),
                    ),
                    (
                        "tool-call-delta",
                        json!({"type": "tool-call-delta", "index": 0,
                        "delta": {"message": {"tool_calls": {"function": {"arguments": "{\"a"}}}}}),
                    ),
                    ("tool-call-end", json!({"type": "tool-call-end", "index": 0})),
                    (
                        "message-end",
                        json!({"type": "message-end",
                        "delta": {"finish_reason": "COMPLETE", "usage": usage}}),
                    ),
                ],
                stream_error: (
                    "message-end",
                    json!({"type": "message-end",
                    "delta": {"finish_reason": "ERROR", "error": "the model broke"}}),
                ),
            }
        }
        "anthropic" => Samples {
            chat: json!({"id": "msg_1", "type": "message", "role": "assistant", "model": "claude",
                "content": [{"type": "thinking", "thinking": "t", "signature": "s"}, {"type": "text", "text": "hi"},
                    {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {"a": 1}}],
                "stop_reason": "tool_use", "stop_sequence": null,
                "usage": {"input_tokens": 10, "output_tokens": 5, "cache_read_input_tokens": 2,
                    "cache_creation_input_tokens": 1}}),
            embeddings: json!({"data": [{"embedding": [0.1]}]}),
            models: json!({"data": [{"type": "model", "id": "claude-sonnet", "display_name": "S",
                "max_input_tokens": 200000, "max_tokens": 64000, "lifecycle": "active",
                "capabilities": {"image_input": {"supported": true}, "thinking": {"supported": true}}}],
                "has_more": false}),
            error: json!({"type": "error", "error": {"type": "rate_limit_error", "message": "slow"}}),
            stream: vec![
                (
                    "message_start",
                    json!({"type": "message_start", "message": {"id": "m1", "model": "claude",
                    "usage": {"input_tokens": 472, "cache_read_input_tokens": 100, "output_tokens": 2}}}),
                ),
                (
                    "content_block_start",
                    json!({"type": "content_block_start", "index": 0,
                    "content_block": {"type": "text", "text": ""}}),
                ),
                (
                    "content_block_delta",
                    json!({"type": "content_block_delta", "index": 0,
                    "delta": {"type": "text_delta", "text": "h"}}),
                ),
                (
                    "content_block_start",
                    json!({"type": "content_block_start", "index": 1,
                    "content_block": {"type": "tool_use", "id": "t1", "name": "f", "input": {}}}),
                ),
                (
                    "content_block_delta",
                    json!({"type": "content_block_delta", "index": 1,
                    "delta": {"type": "input_json_delta", "partial_json": "{\"a"}}),
                ),
                (
                    "content_block_delta",
                    json!({"type": "content_block_delta", "index": 2,
                    "delta": {"type": "thinking_delta", "thinking": "t"}}),
                ),
                ("content_block_stop", json!({"type": "content_block_stop", "index": 1})),
                (
                    "message_delta",
                    json!({"type": "message_delta", "delta": {"stop_reason": "end_turn"},
                    "usage": {"output_tokens": 89}}),
                ),
                ("ping", json!({"type": "ping"})),
                ("message_stop", json!({"type": "message_stop"})),
            ],
            stream_error: ("error", json!({"type": "error", "error": {"type": "overloaded_error", "message": "busy"}})),
        },
        other => panic!("no samples for `{other}`"),
    }
}

/// What an upstream might send back: noise, any JSON, or an almost valid
/// answer made from one of `skeletons`.
fn upstream_body(skeletons: Vec<Value>) -> BoxedStrategy<Bytes> {
    let almost_valid = select(skeletons).prop_flat_map(|s| almost(s, UPSTREAM_KEYS, UPSTREAM_WORDS));
    prop_oneof![
        1 => any_bytes(),
        2 => json_bytes(json_value(UPSTREAM_KEYS, UPSTREAM_WORDS)),
        5 => json_bytes(almost_valid.boxed()),
    ]
    .boxed()
}

/// The options the plugins read, with values of any kind.
const OPTION_NAMES: &[&str] = &[
    "models_free",
    "models_paid_prefixes",
    "drop_params",
    "stream_usage",
    "auth_header",
    "auth_scheme",
    "anthropic_version",
    "anthropic_beta",
    "default_max_tokens",
    "embed_input_type",
    "embedding_task_type",
    "chat_path",
    "models_path",
    "models_url",
];

/// A target: the model the plugin is asked for, its key and options.
#[derive(Debug, Clone)]
struct AnyTarget {
    model: String,
    key: Option<String>,
    options: Vec<(String, String)>,
}

impl AnyTarget {
    fn get(&self) -> Target<'_> {
        Target {
            base_url: "https://upstream.invalid/v1",
            model: &self.model,
            key: self.key.as_deref(),
            options: &self.options,
        }
    }
}

fn any_target() -> BoxedStrategy<AnyTarget> {
    const MODELS: &[&str] = &["gemini-2.5-flash", "gemini-3-pro", "command-a", "claude-sonnet-4-5", "m", "models/x"];
    const OPTION_VALUES: &[&str] = &[
        "pricing",
        "all",
        "none",
        "false",
        "true",
        "x-api-key",
        "Bearer",
        "",
        "0",
        "-1",
        "99999999999999999999",
        "search_query",
        "a,b,,c",
    ];
    let option = (select(OPTION_NAMES), text_from(OPTION_VALUES)).prop_map(|(k, v)| (k.to_owned(), v));
    (text_from(MODELS), prop::option::of(text_from(&["sk-key-0123456789"])), prop::collection::vec(option, 0..3))
        .prop_map(|(model, key, options)| AnyTarget { model, key, options })
        .boxed()
}

/// A plugin call answered or refused; a trap, a deadline or a memory fault
/// is a plugin bug, reported with the input by the caller.
fn no_fault<T>(what: &str, result: Result<T, PluginError>) -> Result<Option<T>, TestCaseError> {
    match result {
        Ok(v) => Ok(Some(v)),
        // A refusal, or (0.2) a request the provider cannot express.
        Err(e) if matches!(e.kind, PluginErrorKind::Refused | PluginErrorKind::ClientRequest) => Ok(None),
        Err(e) => Err(TestCaseError::fail(format!("{what}: the plugin faulted ({:?}): {e}", e.kind))),
    }
}

/// Headers an upstream error might carry.
fn any_headers() -> BoxedStrategy<HeaderMap> {
    const NAMES: &[&str] = &["retry-after", "retry-after-ms", "x-ratelimit-reset-requests", "content-type", "x-a"];
    const VALUES: &[&str] = &[
        "30",
        "1.5",
        "-1",
        "0",
        "1e400",
        "18446744073709551616",
        "Wed, 21 Oct 2015 07:28:00 GMT",
        "2m59.1s",
        "application/json",
    ];
    let value = prop_oneof![
        3 => text_from(VALUES).prop_map(String::into_bytes),
        1 => prop::collection::vec(any::<u8>(), 0..16),
    ];
    prop::collection::vec((select(NAMES), value), 0..4)
        .prop_map(|pairs| {
            let mut headers = HeaderMap::new();
            for (name, value) in pairs {
                if let Ok(value) = HeaderValue::from_bytes(&value) {
                    headers.append(HeaderName::from_static(name), value);
                }
            }
            headers
        })
        .boxed()
}

/// One SSE line: a `data:` line of JSON (almost valid or any) or of noise,
/// an `event:` line, a comment, an `id:`/`retry:` field, a blank line.
fn sse_line(plugin: &'static str) -> BoxedStrategy<String> {
    let Samples { stream, stream_error, .. } = samples(plugin);
    let stream: Vec<(&str, Value)> = stream.into_iter().chain([stream_error]).collect();
    let events: Vec<Value> = stream.iter().map(|(_, data)| data.clone()).collect();
    let names: Vec<&'static str> = stream.iter().map(|(name, _)| *name).filter(|n| !n.is_empty()).collect();
    let names = if names.is_empty() { vec!["message"] } else { names };
    let data = prop_oneof![
        4 => select(events.clone()),
        4 => select(events).prop_flat_map(|s| almost(s, UPSTREAM_KEYS, UPSTREAM_WORDS)),
        2 => json_value(UPSTREAM_KEYS, UPSTREAM_WORDS),
    ];
    prop_oneof![
        6 => data.prop_map(|v| format!("data: {v}")),
        1 => Just("data: [DONE]".to_owned()),
        1 => any_text().prop_map(|t| format!("data:{t}")),
        3 => (select(names), prop::bool::weighted(0.2)).prop_map(|(n, glued)| if glued { format!("event:{n}") } else { format!("event: {n}") }),
        1 => text_from(UPSTREAM_WORDS).prop_map(|n| format!("event: {n}")),
        1 => any_text().prop_map(|t| format!(": {t}")),
        1 => select(&["id: 7", "retry: 1000", "retry: -5", "id", "data", "data:", "event"][..]).prop_map(str::to_owned),
        3 => Just(String::new()),
        1 => any_text(),
    ]
    .boxed()
}

/// One change to a valid stream: an event's JSON edited, an event dropped,
/// repeated or moved, or a line of any kind put in.
#[derive(Debug, Clone)]
enum StreamEdit {
    Data(Index, Vec<Edit>),
    Drop(Index),
    Repeat(Index),
    Move(Index, Index),
    Insert(Index, String),
}

fn stream_edit(plugin: &'static str) -> BoxedStrategy<StreamEdit> {
    prop_oneof![
        4 => (any::<Index>(), prop::collection::vec(edit(UPSTREAM_KEYS, UPSTREAM_WORDS), 1..3))
            .prop_map(|(at, edits)| StreamEdit::Data(at, edits)),
        1 => any::<Index>().prop_map(StreamEdit::Drop),
        1 => any::<Index>().prop_map(StreamEdit::Repeat),
        1 => (any::<Index>(), any::<Index>()).prop_map(|(from, to)| StreamEdit::Move(from, to)),
        2 => (any::<Index>(), sse_line(plugin)).prop_map(|(at, line)| StreamEdit::Insert(at, line)),
    ]
    .boxed()
}

/// The plugin's valid stream with a few edits, each event written with a
/// line ending of any of the three kinds.
fn almost_valid_stream(plugin: &'static str) -> BoxedStrategy<String> {
    let events = samples(plugin).stream;
    let endings = prop::collection::vec(select(&["\n", "\n", "\r\n", "\r"][..]), 1..4);
    (prop::collection::vec(stream_edit(plugin), 0..4), endings)
        .prop_map(move |(edits, endings)| {
            // Each entry is the text of one event (or of one inserted line).
            let mut items: Vec<(&str, Option<Value>, String)> =
                events.iter().map(|(name, data)| (*name, Some(data.clone()), String::new())).collect();
            if plugin == "openai-compat" {
                items.push(("", None, "data: [DONE]\n".to_owned()));
            }
            for e in &edits {
                let n = items.len();
                match e {
                    StreamEdit::Data(at, edits) if n > 0 => {
                        if let Some(data) = items[at.index(n)].1.as_mut() {
                            for edit in edits {
                                apply(data, edit);
                            }
                        }
                    }
                    StreamEdit::Drop(at) if n > 0 => {
                        items.remove(at.index(n));
                    }
                    StreamEdit::Repeat(at) if n > 0 => {
                        let item = items[at.index(n)].clone();
                        items.insert(at.index(n), item);
                    }
                    StreamEdit::Move(from, to) if n > 0 => {
                        let item = items.remove(from.index(n));
                        items.insert(to.index(n), item);
                    }
                    StreamEdit::Insert(at, line) => items.insert(at.index(n + 1), ("", None, line.clone())),
                    _ => {}
                }
            }
            let mut out = String::new();
            for (i, (name, data, line)) in items.into_iter().enumerate() {
                let end = endings[i % endings.len()];
                match data {
                    Some(data) if name.is_empty() => out.push_str(&format!("data: {data}{end}{end}")),
                    Some(data) => out.push_str(&format!("event: {name}{end}data: {data}{end}{end}")),
                    None => out.push_str(&format!("{line}{end}")),
                }
            }
            out
        })
        .boxed()
}

/// A stream body: the valid stream almost, SSE lines of any kind with any
/// of the three line endings, or noise.
fn stream_body(plugin: &'static str) -> BoxedStrategy<Bytes> {
    let ending = select(&["\n", "\n", "\n", "\r\n", "\r"][..]);
    let lines = prop::collection::vec((sse_line(plugin), ending), 0..24)
        .prop_map(|lines| lines.into_iter().flat_map(|(l, e)| [l, e.to_owned()]).collect::<String>());
    prop_oneof![
        6 => almost_valid_stream(plugin).prop_map(Bytes::from),
        3 => lines.prop_map(Bytes::from),
        1 => any_bytes(),
    ]
    .boxed()
}

/// Cuts `body` at arbitrary points (between any two bytes, inside a UTF-8
/// sequence or a `\r\n` included).
fn pieces(body: &Bytes, cuts: &[Index]) -> Vec<Bytes> {
    let mut at: Vec<usize> = cuts.iter().map(|c| c.index(body.len() + 1)).collect();
    at.sort_unstable();
    at.dedup();
    let mut out = Vec::new();
    let mut last = 0;
    for cut in at.into_iter().chain([body.len()]) {
        out.push(body.slice(last..cut));
        last = cut;
    }
    out
}

/// Every decode entry point of `name` on one input.
fn decode_everything(
    name: &str,
    body: &Bytes,
    target: &AnyTarget,
    status: u16,
    headers: &HeaderMap,
) -> Result<(), TestCaseError> {
    let plugin = plugin(name);
    let t = target.get();
    let mut session = plugin.session().map_err(|e| TestCaseError::fail(e.to_string()))?;
    if let Some(decoded) = no_fault("decode_chat", session.decode_chat(body, &t))? {
        prop_assert!(serde_json::from_slice::<Value>(&decoded.body).is_ok(), "decode_chat answered invalid JSON");
    }
    if let Some(decoded) = no_fault("decode_embeddings", session.decode_embeddings(body, body, &t))? {
        prop_assert!(serde_json::from_slice::<Value>(&decoded.body).is_ok(), "decode_embeddings answered invalid JSON");
    }
    no_fault("decode_models", session.decode_models(body, &t))?;
    let status = StatusCode::from_u16(status).map_err(|e| TestCaseError::fail(e.to_string()))?;
    no_fault("classify_error", session.classify_error(status, headers, body))?;
    Ok(())
}

/// Feeds `pieces` to a fresh stream decoder, then finishes it.
fn stream_everything(name: &str, pieces: &[Bytes], target: &AnyTarget) -> Result<(), TestCaseError> {
    let plugin = plugin(name);
    let t = target.get();
    let session = plugin.session().map_err(|e| TestCaseError::fail(e.to_string()))?;
    let Some(mut stream) = no_fault("into_stream", session.into_stream(&t))? else { return Ok(()) };
    let mut out = Vec::new();
    for piece in pieces {
        no_fault("push", stream.push(piece, &mut out))?;
    }
    no_fault("finish", stream.finish(&mut out))?;
    Ok(())
}

fn status() -> BoxedStrategy<u16> {
    prop_oneof![3 => select(&[400u16, 401, 402, 403, 404, 408, 413, 422, 429, 500, 502, 503, 529][..]), 1 => 100u16..1000].boxed()
}

fn decode_case(name: &'static str) -> impl Strategy<Value = (Bytes, AnyTarget, u16, HeaderMap)> {
    let s = samples(name);
    let skeletons = vec![s.chat, s.embeddings, s.models, s.error];
    (upstream_body(skeletons), any_target(), status(), any_headers())
}

fn stream_case(name: &'static str) -> impl Strategy<Value = (Bytes, Vec<Index>, AnyTarget)> {
    (stream_body(name), prop::collection::vec(any::<Index>(), 0..6), any_target())
}

/// A client request, almost valid, for the plugins' request builders.
fn build_case() -> impl Strategy<Value = (Bytes, Bytes, AnyTarget)> {
    (
        json_bytes(almost(chat_skeleton(), REQUEST_KEYS, REQUEST_WORDS)),
        json_bytes(almost(embeddings_skeleton(), REQUEST_KEYS, REQUEST_WORDS)),
        any_target(),
    )
}

proptest! {
    #![proptest_config(cases(256))]

    #[test]
    fn openai_compat_decodes_anything_without_faulting((body, target, status, headers) in decode_case("openai-compat")) {
        decode_everything("openai-compat", &body, &target, status, &headers)?;
    }

    #[test]
    fn gemini_decodes_anything_without_faulting((body, target, status, headers) in decode_case("gemini")) {
        decode_everything("gemini", &body, &target, status, &headers)?;
    }

    #[test]
    fn cohere_decodes_anything_without_faulting((body, target, status, headers) in decode_case("cohere")) {
        decode_everything("cohere", &body, &target, status, &headers)?;
    }

    #[test]
    fn anthropic_decodes_anything_without_faulting((body, target, status, headers) in decode_case("anthropic")) {
        decode_everything("anthropic", &body, &target, status, &headers)?;
    }

    #[test]
    fn openai_compat_streams_anything_cut_anywhere((body, cuts, target) in stream_case("openai-compat")) {
        stream_everything("openai-compat", &pieces(&body, &cuts), &target)?;
    }

    #[test]
    fn gemini_streams_anything_cut_anywhere((body, cuts, target) in stream_case("gemini")) {
        stream_everything("gemini", &pieces(&body, &cuts), &target)?;
    }

    #[test]
    fn cohere_streams_anything_cut_anywhere((body, cuts, target) in stream_case("cohere")) {
        stream_everything("cohere", &pieces(&body, &cuts), &target)?;
    }

    #[test]
    fn anthropic_streams_anything_cut_anywhere((body, cuts, target) in stream_case("anthropic")) {
        stream_everything("anthropic", &pieces(&body, &cuts), &target)?;
    }

    /// The request builders read what clients send (after the parser let
    /// it through): every plugin builds or refuses, never faults.
    #[test]
    fn every_plugin_builds_or_refuses_any_request((chat, embeddings, target) in build_case()) {
        for name in PLUGINS {
            let t = target.get();
            let mut session = plugin(name).session().map_err(|e| TestCaseError::fail(e.to_string()))?;
            no_fault("build_chat", session.build_chat(&chat, &t))?;
            no_fault("build_embeddings", session.build_embeddings(&embeddings, &t))?;
            no_fault("build_models", session.build_models(&t))?;
        }
    }
}

/// The test plugin that misbehaves on purpose: `trap` panics in
/// `build_chat`, `trap-stream` in its decoder's second `push`; any other
/// model passes answers through.
fn misbehave() -> Arc<Plugin> {
    static HOST: OnceLock<PluginHost> = OnceLock::new();
    let host = HOST.get_or_init(|| {
        let dir = std::path::PathBuf::from(env!("FREEWAY_TEST_PLUGINS")).join("misbehave");
        let settings = PluginSettings { call_timeout: Duration::from_secs(10), ..PluginSettings::default() };
        PluginHost::load(&settings, Some(&dir), Arc::new(Metrics::new())).unwrap()
    });
    host.get("misbehave").unwrap()
}

fn target(model: &str) -> Target<'_> {
    Target { base_url: "https://upstream.invalid/v1", model, key: None, options: &[] }
}

proptest! {
    #![proptest_config(cases(128))]

    /// A plugin that traps on whatever input fails that call with a `Trap`
    /// error (so does every later call on its broken instance, the stream's
    /// `finish` and its drop included), and the plugin goes on serving new
    /// sessions.
    #[test]
    fn a_trapping_plugin_fails_its_call_and_the_host_goes_on(
        request in json_bytes(almost(chat_skeleton(), REQUEST_KEYS, REQUEST_WORDS)),
        (body, cuts, _) in stream_case("openai-compat"),
    ) {
        let plugin = misbehave();
        let session = || plugin.session().map_err(|e| TestCaseError::fail(e.to_string()));
        let error = session()?.build_chat(&request, &target("trap")).err();
        prop_assert_eq!(error.map(|e| e.kind), Some(PluginErrorKind::Trap));

        let pieces = pieces(&body, &cuts);
        let mut stream = session()?.into_stream(&target("trap-stream")).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let mut out = Vec::new();
        let pushed: Vec<Result<(), PluginErrorKind>> =
            pieces.iter().map(|p| stream.push(p, &mut out).map_err(|e| e.kind)).collect();
        prop_assert!(pushed[0].is_ok(), "the first push: {:?}", pushed[0]);
        if pieces.len() > 1 {
            prop_assert_eq!(pushed[1], Err(PluginErrorKind::Trap));
            prop_assert!(pushed[2..].iter().all(Result::is_err), "a call on a trapped instance answered: {:?}", pushed);
            prop_assert!(stream.finish(&mut out).is_err(), "finish on a trapped instance answered");
        }
        drop(stream);

        let answer = session()?.decode_chat(&body, &target("fine")).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(answer.body, body);
    }
}

// ---------------------------------------------------------------------------
// 4. Redaction and Retry-After
// ---------------------------------------------------------------------------

/// Secrets from a small alphabet (so that they overlap, contain one another
/// and meet the replacement's `*`), blanks around some, any length.
fn secret() -> BoxedStrategy<String> {
    prop_oneof![
        3 => prop::collection::vec(select(&['a', 'b', '*', ' ', 'é', '-'][..]), 0..14).prop_map(String::from_iter),
        2 => any_text(),
        1 => select(&["sk-0123456789", "sk-0123456789-longer", "  padded-secret  ", "********", "é€𝄞é€𝄞"][..])
            .prop_map(str::to_owned),
    ]
    .boxed()
}

/// Text made of arbitrary pieces and the secrets themselves.
fn text_with(secrets: Vec<String>) -> BoxedStrategy<String> {
    let n = secrets.len();
    let piece = prop_oneof![
        2 => any_text(),
        3 => (0..n.max(1)).prop_map(move |i| secrets.get(i).cloned().unwrap_or_default()),
        1 => prop::collection::vec(select(&['a', 'b', '*', 'é'][..]), 0..4).prop_map(String::from_iter),
    ];
    prop::collection::vec(piece, 0..8).prop_map(|p| p.concat()).boxed()
}

fn redaction_case() -> impl Strategy<Value = (Vec<String>, String)> {
    prop::collection::vec(secret(), 0..5).prop_flat_map(|s| (Just(s.clone()), text_with(s)))
}

/// The secrets redaction promises to remove: trimmed, long enough, and
/// without `*` (a secret made of the replacement's own characters can be
/// re-formed by it).
fn promised(secrets: &[String]) -> Vec<String> {
    secrets.iter().map(|s| s.trim().to_owned()).filter(|s| s.len() >= MIN_REDACTED_LEN && !s.contains('*')).collect()
}

proptest! {
    #![proptest_config(cases(512))]

    /// No secret survives redaction, the output is valid UTF-8 that adds no
    /// replacement character, and text without secrets is left as it is.
    #[test]
    fn redaction_leaves_no_secret_and_valid_text((secrets, text) in redaction_case()) {
        let redactor = Redactor::new(secrets.iter().map(String::as_str));
        let out = redactor.redact(&text);
        let bytes = redactor.redact_bytes(Bytes::from(text.clone()));
        prop_assert_eq!(out.as_bytes(), &bytes[..], "str and bytes redaction differ");
        for s in promised(&secrets) {
            prop_assert!(!out.contains(&s), "secret {:?} survived: {:?}", s, out);
        }
        prop_assert!(out.matches('\u{fffd}').count() <= text.matches('\u{fffd}').count(), "the output is not the text's UTF-8");
        if !promised(&secrets).iter().any(|s| text.contains(s)) && !secrets.iter().any(|s| s.contains('*')) {
            prop_assert_eq!(out.as_ref(), text.as_str());
        }
    }

    /// Bodies of any bytes (not UTF-8 included): no secret survives.
    #[test]
    fn redacting_bytes_leaves_no_secret(
        (secrets, text) in redaction_case(),
        noise in prop::collection::vec(any::<u8>(), 0..16),
        at in any::<Index>(),
    ) {
        let mut body = text.into_bytes();
        let at = at.index(body.len() + 1);
        body.splice(at..at, noise);
        let redactor = Redactor::new(secrets.iter().map(String::as_str));
        let out = redactor.redact_bytes(Bytes::from(body));
        for s in promised(&secrets) {
            prop_assert!(memchr::memmem::find(&out, s.as_bytes()).is_none(), "secret {:?} survived: {:?}", s, out);
        }
    }

    /// Any `Retry-After` value: no delay, or one of at most a day.
    #[test]
    fn retry_after_is_none_or_at_most_a_day(
        value in prop_oneof![
            3 => text_from(&["30", "0", "1.5", "-1", "1e400", "1e-400", "-0", "inf", "NaN", "86401", "18446744073709551616", "Wed, 21 Oct 2015 07:28:00 GMT", "Fri, 31 Dec 9999 23:59:59 GMT", "Thu, 01 Jan 1970 00:00:00 GMT"]).prop_map(String::into_bytes),
            1 => prop::collection::vec(any::<u8>(), 0..40),
        ],
        now in any::<u32>(),
    ) {
        let Ok(value) = HeaderValue::from_bytes(&value) else { return Ok(()) };
        let mut headers = HeaderMap::new();
        headers.insert(http::header::RETRY_AFTER, value);
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(u64::from(now) * 4);
        if let Some(d) = retry_after(&headers, now) {
            prop_assert!(d <= MAX_COOLDOWN, "{d:?}");
        }
    }
}

// ---------------------------------------------------------------------------
// 5. The policies' view of a request
// ---------------------------------------------------------------------------

/// Conversations: almost valid, or any JSON array.
fn messages() -> BoxedStrategy<Vec<Value>> {
    let conversation = chat_skeleton()["messages"].clone();
    prop_oneof![
        3 => almost(conversation, REQUEST_KEYS, REQUEST_WORDS)
            .prop_map(|v| match v { Value::Array(items) => items, other => vec![other] }),
        2 => prop::collection::vec(json_value(REQUEST_KEYS, REQUEST_WORDS), 0..8),
        2 => prop::collection::vec(
            (select(&["system", "user", "user", "assistant", "tool"][..]), text_from(REQUEST_WORDS), 0usize..200)
                .prop_map(|(role, text, n)| json!({"role": role, "content": format!("{text}. ").repeat(n)})),
            0..40,
        ),
    ]
    .boxed()
}

/// Integers at every edge of what scripts may pass.
fn any_int() -> BoxedStrategy<i64> {
    prop_oneof![
        2 => select(&[i64::MIN, i64::MIN + 1, -1, 0, 1, 2, 8, 1024, 1 << 32, i64::MAX - 1, i64::MAX][..]),
        1 => any::<i64>(),
        1 => -10i64..100_000,
    ]
    .boxed()
}

/// Settings for the built-in policies: their own keys with values of any
/// type (and any YAML mapping besides).
fn policy_settings() -> BoxedStrategy<serde_yaml::Mapping> {
    const KEYS: &[&str] = &["auto_tier", "free_alias", "favorites", "context_prune", "sticky"];
    const FIELDS: &[&str] = &[
        "classifier",
        "reasoning_words",
        "code_words",
        "long_tokens",
        "medium_tokens",
        "short_chars",
        "popular",
        "mode",
        "budget",
        "reserve",
        "turns",
        "summary_tokens",
        "enabled",
        "ttl_seconds",
    ];
    const MODES: &[&str] = &["static", "dynamic", "reservoir", "adaptive", "p/m"];
    let scalar = prop_oneof![
        2 => any_int().prop_map(|n| Yaml::Number(n.into())),
        1 => any::<bool>().prop_map(Yaml::Bool),
        2 => select(MODES).prop_map(|m| Yaml::String(m.to_owned())),
        1 => yaml_value(),
    ];
    let section = prop_oneof![
        4 => prop::collection::vec((select(FIELDS), scalar), 0..6).prop_map(|kv| {
            Yaml::Mapping(kv.into_iter().map(|(k, v)| (Yaml::String(k.to_owned()), v)).collect())
        }),
        1 => yaml_value(),
    ];
    prop::collection::vec((select(KEYS), section), 0..5)
        .prop_map(|kv| kv.into_iter().map(|(k, v)| (Yaml::String(k.to_owned()), v)).collect())
        .boxed()
}

/// A request for the policies: any conversation, model, session, window,
/// answers to earlier questions; availability from a coin.
#[derive(Debug, Clone)]
struct AnyRequest {
    model: String,
    messages: Vec<Value>,
    session: Option<String>,
    context_window: i64,
    stream: bool,
    has_tools: bool,
    available: bool,
    answers: Vec<(String, String)>,
}

fn any_request() -> BoxedStrategy<AnyRequest> {
    const MODELS: &[&str] = &["auto", "auto:lite", "free", "chat-free", "p/m", "p/", "/"];
    (
        text_from(MODELS),
        messages(),
        prop::option::of(text_from(&["session-1"])),
        any_int(),
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
        prop::collection::vec((any_text(), text_from(&["reasoning", "lite", "large"])), 0..2),
    )
        .prop_map(|(model, messages, session, context_window, stream, has_tools, available, answers)| AnyRequest {
            model,
            messages,
            session,
            context_window,
            stream,
            has_tools,
            available,
            answers,
        })
        .boxed()
}

impl AnyRequest {
    fn state(&self, pins: &Arc<MemoryState>) -> PolicyRequest {
        let available = self.available;
        PolicyRequest::new(RequestState {
            model: self.model.clone(),
            requested: self.model.clone(),
            stream: self.stream,
            has_tools: self.has_tools,
            messages: self.messages.clone(),
            session_header: self.session.clone(),
            availability: Some(Arc::new(move |_: &str| available)),
            pins: Some(pins.clone() as Arc<dyn StateStore>),
            context_window: self.context_window,
            answers: self.answers.clone(),
            ..RequestState::default()
        })
    }
}

/// After the hooks, what the host does with their results: tags become
/// metrics, a pin is recorded.
fn settle(req: &PolicyRequest, pins: &MemoryState, metrics: &Metrics) {
    let state = req.state();
    for (tag, value) in &state.tags {
        metrics.policy_tag(tag, value);
    }
    if let Some((key, seconds)) = &state.pin {
        pins.pin(key, "p/m", Duration::from_secs(*seconds), Instant::now());
        let _ = pins.pinned(key, Instant::now());
    }
}

/// Calls every method of the `Request` API, with arguments from
/// `settings.args`; tags `done` when every call returned.
const EVERY_CALL: &str = r#"
fn every_call(req, a) {
    let read = [req.model, req.requested, req.stream, req.has_tools, req.turns, req.user_turns, req.tokens,
        req.last_user, req.last_user_length, req.session, req.fingerprint, req.context_window];
    req.model = a.model;
    req.context_window = a.window;
    let hit = req.mentions(a.words);
    req.tag(a.tag, a.value);
    req.prefer(a.prefer);
    req.stick(a.stick);
    req.pin(a.key, a.seconds);
    let pinned = req.pinned(a.key);
    let available = req.available(a.name);
    let answer = req.ask(a.name, a.prompt);
    let dropped = req.keep_last_turns(a.turns);
    dropped += req.fit_tokens(a.budget);
    dropped += req.reservoir(a.budget, a.summary);
    let after = [req.tokens, req.turns, req.last_user, req.fingerprint];
    req.tag("done", "yes");
}
fn request(req, settings) { every_call(req, settings.args); }
fn prepare(req, settings) { every_call(req, settings.args); }
"#;

/// Arguments for every call, of the types the API takes.
fn typed_args() -> BoxedStrategy<Yaml> {
    let s = || text_from(&["p/m", "auto", "why", "step by step", "sess"]).prop_map(Yaml::String);
    let i = || any_int().prop_map(|n| Yaml::Number(n.into()));
    let words = prop::collection::vec(prop_oneof![3 => s(), 1 => yaml_value()], 0..4).prop_map(Yaml::Sequence);
    ((s(), i(), words, s(), yaml_value(), s(), s()), (s(), i(), s(), s(), i(), i(), i()))
        .prop_map(
            |(
                (model, window, words, tag, value, prefer, stick),
                (key, seconds, name, prompt, turns, budget, summary),
            )| {
                let fields = [
                    ("model", model),
                    ("window", window),
                    ("words", words),
                    ("tag", tag),
                    ("value", value),
                    ("prefer", prefer),
                    ("stick", stick),
                    ("key", key),
                    ("seconds", seconds),
                    ("name", name),
                    ("prompt", prompt),
                    ("turns", turns),
                    ("budget", budget),
                    ("summary", summary),
                ];
                Yaml::Mapping(fields.into_iter().map(|(k, v)| (Yaml::String(k.to_owned()), v)).collect())
            },
        )
        .boxed()
}

/// Arguments of any type: typed ones with a few replaced or left out, or
/// anything at all. Some calls fail, as a script's mistakes do.
fn untyped_args() -> BoxedStrategy<Yaml> {
    let changed = (typed_args(), prop::collection::vec((any::<Index>(), prop::option::of(yaml_value())), 1..3))
        .prop_map(|(args, changes)| {
            let Yaml::Mapping(mut args) = args else { return args };
            for (at, value) in changes {
                let Some(key) = args.keys().nth(at.index(args.len())).cloned() else { continue };
                match value {
                    Some(v) => {
                        args.insert(key, v);
                    }
                    None => {
                        args.remove(&key);
                    }
                }
            }
            Yaml::Mapping(args)
        });
    prop_oneof![4 => changed, 1 => yaml_value()].boxed()
}

fn every_call_pipeline(args: Yaml) -> Result<(Pipeline, tempfile::TempDir), TestCaseError> {
    let dir = tempfile::tempdir().map_err(|e| TestCaseError::fail(e.to_string()))?;
    std::fs::write(dir.path().join("every-call.rhai"), EVERY_CALL).map_err(|e| TestCaseError::fail(e.to_string()))?;
    let mut settings = serde_yaml::Mapping::new();
    settings.insert(Yaml::String("args".to_owned()), args);
    let pipeline = Pipeline::compile(&Source::Dir(dir.path().to_owned()), &[], &settings)
        .map_err(|e| TestCaseError::fail(format!("{e:?}")))?;
    Ok((pipeline, dir))
}

/// Policy errors counted so far, from the metrics text.
fn policy_errors(metrics: &Metrics) -> f64 {
    metrics
        .render(Gauges::default())
        .lines()
        .filter(|l| l.starts_with("freeway_policy_errors_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn builtin_pipeline(settings: &serde_yaml::Mapping) -> Result<Pipeline, TestCaseError> {
    Pipeline::compile(&Source::Embedded, &[], settings).map_err(|e| TestCaseError::fail(format!("{e:?}")))
}

proptest! {
    #![proptest_config(cases(128))]

    /// The built-in policies over any conversation and any settings: they
    /// change the request or fail (counted), never panic.
    #[test]
    fn the_builtin_policies_take_any_request_and_settings(request in any_request(), settings in policy_settings()) {
        let pipeline = builtin_pipeline(&settings)?;
        let metrics = Metrics::new();
        let pins = Arc::new(MemoryState::default());
        for _pass in 0..2 {
            let req = request.state(&pins);
            pipeline.on_request(&req, &metrics);
            pipeline.on_prepare(&req, &metrics);
            settle(&req, &pins, &metrics);
        }
        let _ = metrics.render(Gauges::default());
    }

    /// Every method of the `Request` API with arguments of the right types,
    /// at every edge: every call returns (the script reaches its end).
    #[test]
    fn every_request_method_takes_any_typed_argument(request in any_request(), args in typed_args()) {
        let (pipeline, _dir) = every_call_pipeline(args)?;
        let metrics = Metrics::new();
        let pins = Arc::new(MemoryState::default());
        let req = request.state(&pins);
        pipeline.on_request(&req, &metrics);
        pipeline.on_prepare(&req, &metrics);
        settle(&req, &pins, &metrics);
        let done = req.state().tags.iter().filter(|(k, v)| k == "done" && v == "yes").count();
        prop_assert_eq!(done, 2, "a call failed: {} policy errors", policy_errors(&metrics));
        prop_assert_eq!(policy_errors(&metrics), 0.0);
    }

    /// The same calls with arguments of any type: a call that fails is a
    /// script error, counted, and the request goes on.
    #[test]
    fn a_script_error_is_counted_not_a_panic(request in any_request(), args in untyped_args()) {
        let (pipeline, _dir) = every_call_pipeline(args)?;
        let metrics = Metrics::new();
        let pins = Arc::new(MemoryState::default());
        let req = request.state(&pins);
        pipeline.on_request(&req, &metrics);
        pipeline.on_prepare(&req, &metrics);
        settle(&req, &pins, &metrics);
        let done = req.state().tags.iter().filter(|(k, v)| k == "done" && v == "yes").count();
        prop_assert_eq!(done as f64 + policy_errors(&metrics), 2.0, "each hook either finishes or is counted");
    }
}
