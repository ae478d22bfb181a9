//! The interface versions this build loads, behind one face: a component
//! built against 0.3.0 is called as it is; one built against 0.2.0 or
//! 0.1.0 is called through its own bindings and its answers are put into
//! 0.3's shapes (0.2: the same records, and no plan; 0.1 besides: a 429
//! about an unknown window, a build error that is a plain failure, no
//! limits read, `decode-embeddings` without the request). The rest of the
//! host only ever sees 0.3's types.

use wasmtime::Store;
use wasmtime::component::{Component, Linker, ResourceAny};

use super::bindings::v01::api as old;
use super::bindings::v02::api as v02api;
use super::bindings::v03::api;
use super::bindings::{v01, v02, v03};
use super::host::State;
use super::{INTERFACE_VERSION, TRANSLATOR_EXPORT, TRANSLATOR_EXPORT_0_1, TRANSLATOR_EXPORT_0_2};

/// The interface version a component was built against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// 0.3.0, the current one.
    V03,
    /// 0.2.0, still loaded.
    V02,
    /// 0.1.0, still loaded.
    V01,
}

impl Version {
    /// Its version string.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::V03 => INTERFACE_VERSION,
            Self::V02 => "0.2.0",
            Self::V01 => "0.1.0",
        }
    }

    /// The version a component exports the translator for, if it is one
    /// this build loads; otherwise the other version it names, if any.
    pub fn of(engine: &wasmtime::Engine, component: &Component) -> Result<Self, Option<String>> {
        let ty = component.component_type();
        let mut other = None;
        for (name, _) in ty.exports(engine) {
            if name == TRANSLATOR_EXPORT {
                return Ok(Self::V03);
            }
            if name == TRANSLATOR_EXPORT_0_2 {
                return Ok(Self::V02);
            }
            if name == TRANSLATOR_EXPORT_0_1 {
                return Ok(Self::V01);
            }
            if let Some(version) = name.strip_prefix("freeway:provider/translator@") {
                other = Some(version.to_owned());
            }
        }
        Err(other)
    }
}

/// A pre-instantiated component of any loaded version.
pub enum Pre {
    /// Interface 0.3.0.
    V03(v03::ProviderPre<State>),
    /// Interface 0.2.0.
    V02(v02::ProviderPre<State>),
    /// Interface 0.1.0.
    V01(v01::ProviderPre<State>),
}

impl Pre {
    /// Pre-instantiates `component`, built against `version`.
    pub fn new(linker: &Linker<State>, component: &Component, version: Version) -> wasmtime::Result<Self> {
        let pre = linker.instantiate_pre(component)?;
        Ok(match version {
            Version::V03 => Self::V03(v03::ProviderPre::new(pre)?),
            Version::V02 => Self::V02(v02::ProviderPre::new(pre)?),
            Version::V01 => Self::V01(v01::ProviderPre::new(pre)?),
        })
    }

    /// A new instance in `store`.
    pub fn instantiate(&self, store: &mut Store<State>) -> wasmtime::Result<Instance> {
        // A component's start functions run guest code under the deadline.
        let _running = super::engine::Running::start();
        Ok(match self {
            Self::V03(pre) => Instance::V03(pre.instantiate(store)?),
            Self::V02(pre) => Instance::V02(pre.instantiate(store)?),
            Self::V01(pre) => Instance::V01(pre.instantiate(store)?),
        })
    }
}

/// An instance of any loaded version, called with 0.3's types.
pub enum Instance {
    /// Interface 0.3.0.
    V03(v03::Provider),
    /// Interface 0.2.0.
    V02(v02::Provider),
    /// Interface 0.1.0.
    V01(v01::Provider),
}

type Call<T> = wasmtime::Result<T>;

// The generated calls take the headers as `&Vec`.
#[allow(clippy::ptr_arg)]
impl Instance {
    /// `describe`.
    pub fn describe(&self, s: &mut Store<State>) -> Call<api::Descriptor> {
        match self {
            Self::V03(p) => p.freeway_provider_translator().call_describe(s),
            Self::V02(p) => p.freeway_provider_translator().call_describe(s).map(|d| api::Descriptor {
                name: d.name,
                interface_version: d.interface_version,
                capabilities: capabilities_0_2(d.capabilities),
            }),
            Self::V01(p) => p.freeway_provider_translator().call_describe(s).map(|d| api::Descriptor {
                name: d.name,
                interface_version: d.interface_version,
                capabilities: capabilities(d.capabilities),
            }),
        }
    }

    /// `build-chat`.
    pub fn build_chat(
        &self,
        s: &mut Store<State>,
        request: &[u8],
        t: &api::Target,
    ) -> Call<Result<api::HttpRequest, api::BuildError>> {
        match self {
            Self::V03(p) => p.freeway_provider_translator().call_build_chat(s, request, t),
            Self::V02(p) => {
                p.freeway_provider_translator().call_build_chat(s, request, &from_0_2::target(t)).map(built_0_2)
            }
            Self::V01(p) => {
                p.freeway_provider_translator().call_build_chat(s, request, &from_0_1::target(t)).map(built)
            }
        }
    }

    /// `decode-chat`.
    pub fn decode_chat(&self, s: &mut Store<State>, body: &[u8], t: &api::Target) -> Call<Result<api::Answer, String>> {
        match self {
            Self::V03(p) => p.freeway_provider_translator().call_decode_chat(s, body, t),
            Self::V02(p) => p
                .freeway_provider_translator()
                .call_decode_chat(s, body, &from_0_2::target(t))
                .map(|r| r.map(from_0_2::answer)),
            Self::V01(p) => p
                .freeway_provider_translator()
                .call_decode_chat(s, body, &from_0_1::target(t))
                .map(|r| r.map(from_0_1::answer)),
        }
    }

    /// `build-embeddings`.
    pub fn build_embeddings(
        &self,
        s: &mut Store<State>,
        request: &[u8],
        t: &api::Target,
    ) -> Call<Result<api::HttpRequest, api::BuildError>> {
        match self {
            Self::V03(p) => p.freeway_provider_translator().call_build_embeddings(s, request, t),
            Self::V02(p) => {
                p.freeway_provider_translator().call_build_embeddings(s, request, &from_0_2::target(t)).map(built_0_2)
            }
            Self::V01(p) => {
                p.freeway_provider_translator().call_build_embeddings(s, request, &from_0_1::target(t)).map(built)
            }
        }
    }

    /// `decode-embeddings`; a 0.1 plugin is not given the request.
    pub fn decode_embeddings(
        &self,
        s: &mut Store<State>,
        request: &[u8],
        body: &[u8],
        t: &api::Target,
    ) -> Call<Result<api::Answer, String>> {
        match self {
            Self::V03(p) => p.freeway_provider_translator().call_decode_embeddings(s, request, body, t),
            Self::V02(p) => p
                .freeway_provider_translator()
                .call_decode_embeddings(s, request, body, &from_0_2::target(t))
                .map(|r| r.map(from_0_2::answer)),
            Self::V01(p) => p
                .freeway_provider_translator()
                .call_decode_embeddings(s, body, &from_0_1::target(t))
                .map(|r| r.map(from_0_1::answer)),
        }
    }

    /// `build-models` (a listing is built from configuration alone: a 0.2
    /// plugin's client error there is a failure like any other).
    pub fn build_models(&self, s: &mut Store<State>, t: &api::Target) -> Call<Result<api::HttpRequest, String>> {
        match self {
            Self::V03(p) => p.freeway_provider_translator().call_build_models(s, t),
            Self::V02(p) => p
                .freeway_provider_translator()
                .call_build_models(s, &from_0_2::target(t))
                .map(|r| r.map(from_0_2::request)),
            Self::V01(p) => p
                .freeway_provider_translator()
                .call_build_models(s, &from_0_1::target(t))
                .map(|r| r.map(from_0_1::request)),
        }
    }

    /// `decode-models`.
    pub fn decode_models(
        &self,
        s: &mut Store<State>,
        body: &[u8],
        t: &api::Target,
    ) -> Call<Result<Vec<api::ModelRecord>, String>> {
        match self {
            Self::V03(p) => p.freeway_provider_translator().call_decode_models(s, body, t),
            Self::V02(p) => p
                .freeway_provider_translator()
                .call_decode_models(s, body, &from_0_2::target(t))
                .map(|r| r.map(|records| records.into_iter().map(from_0_2::model).collect())),
            Self::V01(p) => p
                .freeway_provider_translator()
                .call_decode_models(s, body, &from_0_1::target(t))
                .map(|r| r.map(|records| records.into_iter().map(from_0_1::model).collect())),
        }
    }

    /// `classify-error`; a 0.1 plugin's 429 is about an unknown window.
    pub fn classify_error(
        &self,
        s: &mut Store<State>,
        status: u16,
        headers: &api::Headers,
        body: &[u8],
    ) -> Call<api::ErrorKind> {
        match self {
            Self::V03(p) => p.freeway_provider_translator().call_classify_error(s, status, headers, body),
            Self::V02(p) => p.freeway_provider_translator().call_classify_error(s, status, headers, body).map(kind_0_2),
            Self::V01(p) => {
                p.freeway_provider_translator().call_classify_error(s, status, headers, body).map(|k| match k {
                    old::ErrorKind::RateLimited(ms) => api::ErrorKind::RateLimited(api::RateLimit {
                        retry_after_ms: ms,
                        window: api::QuotaWindow::Unknown,
                    }),
                    old::ErrorKind::QuotaExhausted => api::ErrorKind::QuotaExhausted,
                    old::ErrorKind::InvalidKey => api::ErrorKind::InvalidKey,
                    old::ErrorKind::ClientError => api::ErrorKind::ClientError,
                    old::ErrorKind::Transient => api::ErrorKind::Transient,
                })
            }
        }
    }

    /// `read-limits`; a 0.1 plugin reads none (the host never asks it: it
    /// lacks the `limits` capability).
    pub fn read_limits(&self, s: &mut Store<State>, status: u16, headers: &api::Headers) -> Call<Vec<api::RateReport>> {
        match self {
            Self::V03(p) => p.freeway_provider_translator().call_read_limits(s, status, headers),
            Self::V02(p) => p
                .freeway_provider_translator()
                .call_read_limits(s, status, headers)
                .map(|reports| reports.into_iter().map(report_0_2).collect()),
            Self::V01(_) => Ok(Vec::new()),
        }
    }

    /// `plan-chat`: plugins before 0.3 plan nothing.
    pub fn plan_chat(&self, s: &mut Store<State>, t: &api::Target) -> Call<Option<api::ChatPlan>> {
        match self {
            Self::V03(p) => p.freeway_provider_translator().call_plan_chat(s, t),
            Self::V02(_) | Self::V01(_) => Ok(None),
        }
    }

    /// A new stream decoder.
    pub fn stream_new(&self, s: &mut Store<State>, t: &api::Target) -> Call<ResourceAny> {
        match self {
            Self::V03(p) => p.freeway_provider_translator().stream_decoder().call_constructor(s, t),
            Self::V02(p) => p.freeway_provider_translator().stream_decoder().call_constructor(s, &from_0_2::target(t)),
            Self::V01(p) => p.freeway_provider_translator().stream_decoder().call_constructor(s, &from_0_1::target(t)),
        }
    }

    /// The stream decoder's `push`.
    pub fn stream_push(&self, s: &mut Store<State>, decoder: ResourceAny, bytes: &[u8]) -> Call<Vec<api::StreamEvent>> {
        match self {
            Self::V03(p) => p.freeway_provider_translator().stream_decoder().call_push(s, decoder, bytes),
            Self::V02(p) => p
                .freeway_provider_translator()
                .stream_decoder()
                .call_push(s, decoder, bytes)
                .map(|events| events.into_iter().map(from_0_2::event).collect()),
            Self::V01(p) => p
                .freeway_provider_translator()
                .stream_decoder()
                .call_push(s, decoder, bytes)
                .map(|events| events.into_iter().map(from_0_1::event).collect()),
        }
    }

    /// The stream decoder's `finish`.
    pub fn stream_finish(&self, s: &mut Store<State>, decoder: ResourceAny) -> Call<Vec<api::StreamEvent>> {
        match self {
            Self::V03(p) => p.freeway_provider_translator().stream_decoder().call_finish(s, decoder),
            Self::V02(p) => p
                .freeway_provider_translator()
                .stream_decoder()
                .call_finish(s, decoder)
                .map(|events| events.into_iter().map(from_0_2::event).collect()),
            Self::V01(p) => p
                .freeway_provider_translator()
                .stream_decoder()
                .call_finish(s, decoder)
                .map(|events| events.into_iter().map(from_0_1::event).collect()),
        }
    }
}

/// The records an older version shares with 0.3 field for field (a target
/// the other way): the same conversions for each version's generated types.
macro_rules! same_records {
    ($name:ident, $old:path) => {
        mod $name {
            use super::api;
            use $old as old;

            pub fn target(t: &api::Target) -> old::Target {
                old::Target {
                    base_url: t.base_url.clone(),
                    model: t.model.clone(),
                    key: t.key.clone(),
                    options: t.options.clone(),
                }
            }

            pub fn request(r: old::HttpRequest) -> api::HttpRequest {
                api::HttpRequest { method: r.method, url: r.url, headers: r.headers, body: r.body }
            }

            pub fn usage(u: old::Usage) -> api::Usage {
                api::Usage { prompt_tokens: u.prompt_tokens, completion_tokens: u.completion_tokens }
            }

            pub fn answer(a: old::Answer) -> api::Answer {
                api::Answer { body: a.body, usage: a.usage.map(usage) }
            }

            pub fn model(r: old::ModelRecord) -> api::ModelRecord {
                api::ModelRecord {
                    id: r.id,
                    context_length: r.context_length,
                    free: r.free,
                    parameters: r.parameters,
                    active_parameters: r.active_parameters,
                    capabilities: r.capabilities,
                }
            }

            pub fn event(e: old::StreamEvent) -> api::StreamEvent {
                match e {
                    old::StreamEvent::Chunk(c) => {
                        api::StreamEvent::Chunk(api::Chunk { json: c.json, usage: c.usage.map(usage) })
                    }
                    old::StreamEvent::Done => api::StreamEvent::Done,
                    old::StreamEvent::Error(message) => api::StreamEvent::Error(message),
                }
            }
        }
    };
}

same_records!(from_0_2, crate::plugin::bindings::v02::api);
same_records!(from_0_1, crate::plugin::bindings::v01::api);

// What differs: 0.2's capabilities, build errors, 429s and limit reports.

fn capabilities_0_2(c: v02api::Capabilities) -> api::Capabilities {
    let mut out = api::Capabilities::empty();
    for (from, to) in [
        (v02api::Capabilities::CHAT, api::Capabilities::CHAT),
        (v02api::Capabilities::STREAM, api::Capabilities::STREAM),
        (v02api::Capabilities::TOOLS, api::Capabilities::TOOLS),
        (v02api::Capabilities::EMBEDDINGS, api::Capabilities::EMBEDDINGS),
        (v02api::Capabilities::MODELS, api::Capabilities::MODELS),
        (v02api::Capabilities::LIMITS, api::Capabilities::LIMITS),
    ] {
        if c.contains(from) {
            out |= to;
        }
    }
    out
}

fn built_0_2(r: Result<v02api::HttpRequest, v02api::BuildError>) -> Result<api::HttpRequest, api::BuildError> {
    r.map(from_0_2::request).map_err(|e| match e {
        v02api::BuildError::ClientError(message) => api::BuildError::ClientError(message),
        v02api::BuildError::Failed(message) => api::BuildError::Failed(message),
    })
}

fn window_0_2(w: v02api::QuotaWindow) -> api::QuotaWindow {
    match w {
        v02api::QuotaWindow::Unknown => api::QuotaWindow::Unknown,
        v02api::QuotaWindow::Minute => api::QuotaWindow::Minute,
        v02api::QuotaWindow::Day => api::QuotaWindow::Day,
        v02api::QuotaWindow::Month => api::QuotaWindow::Month,
    }
}

fn kind_0_2(k: v02api::ErrorKind) -> api::ErrorKind {
    match k {
        v02api::ErrorKind::RateLimited(limit) => api::ErrorKind::RateLimited(api::RateLimit {
            retry_after_ms: limit.retry_after_ms,
            window: window_0_2(limit.window),
        }),
        v02api::ErrorKind::QuotaExhausted => api::ErrorKind::QuotaExhausted,
        v02api::ErrorKind::InvalidKey => api::ErrorKind::InvalidKey,
        v02api::ErrorKind::ClientError => api::ErrorKind::ClientError,
        v02api::ErrorKind::Transient => api::ErrorKind::Transient,
    }
}

fn report_0_2(r: v02api::RateReport) -> api::RateReport {
    api::RateReport {
        unit: match r.unit {
            v02api::RateUnit::Requests => api::RateUnit::Requests,
            v02api::RateUnit::Tokens => api::RateUnit::Tokens,
        },
        window: window_0_2(r.window),
        limit: r.limit,
        remaining: r.remaining,
        reset: r.reset.map(|reset| match reset {
            v02api::ResetTime::AfterMs(ms) => api::ResetTime::AfterMs(ms),
            v02api::ResetTime::AtUnixMs(ms) => api::ResetTime::AtUnixMs(ms),
        }),
    }
}

// What differs in 0.1: its capabilities and its build errors.

fn capabilities(c: old::Capabilities) -> api::Capabilities {
    let mut out = api::Capabilities::empty();
    for (from, to) in [
        (old::Capabilities::CHAT, api::Capabilities::CHAT),
        (old::Capabilities::STREAM, api::Capabilities::STREAM),
        (old::Capabilities::TOOLS, api::Capabilities::TOOLS),
        (old::Capabilities::EMBEDDINGS, api::Capabilities::EMBEDDINGS),
        (old::Capabilities::MODELS, api::Capabilities::MODELS),
    ] {
        if c.contains(from) {
            out |= to;
        }
    }
    out
}

/// A 0.1 build error is a plain failure: 0.1 has no way to say "client error".
fn built(r: Result<old::HttpRequest, String>) -> Result<api::HttpRequest, api::BuildError> {
    r.map(from_0_1::request).map_err(api::BuildError::Failed)
}
