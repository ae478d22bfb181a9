//! `POST /v1/chat/completions` and `POST /v1/embeddings`: the body is read
//! under its limits, then the request goes through the proxy's phases.

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;

use super::admission::{self, InFlight};
use super::read_body;
use crate::auth::Caller;
use crate::body::ResponseBody;
use crate::clients::Spender;
use crate::errors::ApiError;
use crate::gateway::Gateway;
use crate::proxy::{MAX_NAME_BYTES, Operation};

/// A chat completion, whole or streamed.
pub async fn chat<B>(gateway: &Gateway, request: Request<B>) -> Response<ResponseBody>
where
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    serve(gateway, request, Operation::Chat).await
}

/// Embeddings.
pub async fn embeddings<B>(gateway: &Gateway, request: Request<B>) -> Response<ResponseBody>
where
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    serve(gateway, request, Operation::Embeddings).await
}

async fn serve<B>(gateway: &Gateway, request: Request<B>, operation: Operation) -> Response<ResponseBody>
where
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    match accept(gateway, request).await {
        Ok(accepted) => {
            let body = accepted.body.clone();
            accepted.serve(gateway, operation, body, |response| response).await
        }
        Err(e) => e.into_response(),
    }
}

/// A request taken in: its body read under its limits, its place in flight.
pub(super) struct Accepted {
    /// The body.
    pub body: Bytes,
    /// `X-Session-ID`.
    pub session: Option<String>,
    /// Who sent it (`None`: authentication is off).
    pub caller: Option<Caller>,
    /// Held until the answer's last byte.
    pub in_flight: InFlight,
    /// The body's bytes in flight: let go once the answer is ready.
    pub claim: admission::Bytes,
}

impl Accepted {
    /// Serves `request` (the body, or what a dialect made of it) through
    /// the proxy; `finish` turns the answer into the client's dialect. The
    /// body's bytes are let go once the answer is ready; the place in flight
    /// goes with the answer's body (a stream's last byte).
    pub(super) async fn serve(
        self,
        gateway: &Gateway,
        operation: Operation,
        request: Bytes,
        finish: impl FnOnce(Response<ResponseBody>) -> Response<ResponseBody>,
    ) -> Response<ResponseBody> {
        let Accepted { body, session, caller, in_flight, claim } = self;
        drop(body);
        let (client, budget) = match caller {
            Some(caller) => match budget(gateway, &caller, &request).await {
                Ok(spender) => (Some(caller.label), Some(spender)),
                Err(refused) => return refused,
            },
            None => (None, None),
        };
        let response = gateway.proxy().serve(operation, request, session, client, budget.clone()).await;
        drop(claim);
        if let Some(budget) = &budget {
            gateway.metrics().client_request(budget.client().name(), response.status().as_u16());
        }
        let mut response = finish(response);
        response.body_mut().hold(in_flight);
        response
    }
}

/// The client's budgets, checked before any upstream is asked: 403 for a
/// model outside its globs (the model it asked for, after `aliases`, before
/// policies), 429 over `rpm`, `rpd` or `tpd`; a refused request counts
/// against nothing. `Ok`: go on (the request is counted, and its answer's
/// tokens go to the spender).
async fn budget(gateway: &Gateway, caller: &Caller, request: &[u8]) -> Result<Spender, Response<ResponseBody>> {
    let client = &caller.client;
    let refused = if client.checks_models()
        && let Some(model) = crate::clients::model_of(request)
        && !client.may_use(gateway.proxy().unalias(&model))
    {
        crate::clients::model_refused(client.name(), gateway.proxy().unalias(&model)).into_response()
    } else {
        match client.admit(&**gateway.proxy().state()).await {
            Ok(spender) => return Ok(spender),
            Err(refusal) => refusal.into_response(client.name()),
        }
    };
    gateway.metrics().client_request(client.name(), refused.status().as_u16());
    Err(refused)
}

/// Takes a request in (every inbound API): its session id checked, a place
/// in flight, its body read within `max_body_bytes` and the read timeout
/// (the body's bytes count against the bytes in flight until read).
pub(super) async fn accept<B>(gateway: &Gateway, mut request: Request<B>) -> Result<Accepted, ApiError>
where
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let session = session_id(&request)?;
    // Found by `api::handle` when it checked the token.
    let caller = request.extensions_mut().remove::<Caller>();
    let in_flight = gateway.admission().request()?;
    let server = &gateway.config().server;
    let mut claim = gateway.admission().bytes();
    let body = read_body(request, server.max_body_bytes, server.body_read_timeout.get(), &mut claim).await?;
    Ok(Accepted { body, session, caller, in_flight, claim })
}

/// `X-Session-ID`: at most [`MAX_NAME_BYTES`] of visible text (DESIGN.md,
/// Bounds: a pin per 400 KB id would let one client fill the memory).
fn session_id<B>(request: &Request<B>) -> Result<Option<String>, ApiError> {
    let Some(value) = request.headers().get("x-session-id") else { return Ok(None) };
    if value.len() > MAX_NAME_BYTES {
        return Err(ApiError::bad_request(
            format!("X-Session-ID is {} bytes long; session ids are at most {MAX_NAME_BYTES} bytes", value.len()),
            None,
        ));
    }
    let text =
        value.to_str().map_err(|_| ApiError::bad_request("X-Session-ID must be visible ASCII text", None))?.trim();
    Ok((!text.is_empty()).then(|| text.to_owned()))
}
