//! The dispatch phase: tries a request's candidates in order, each on its
//! provider's keys in turn, until one answers; returns a typed [`Outcome`].
//!
//! The fallback rules (DESIGN.md): 429 cools the model on that key
//! (honouring `Retry-After`) and tries the next key at once; 401/403 marks
//! the key invalid and tries the next key; 402, 404, 408, 5xx, connect
//! errors and timeouts move to the next candidate; an upstream 400 is
//! returned to the client at once. Streams fall back only until their first
//! chunk has been relayed.

use std::time::Instant;

use http::{Response, StatusCode};
use tokio::sync::OwnedSemaphorePermit;
use tracing::Instrument;

use super::Proxy;
use super::attempt;
use super::classify::{Failure, Gone};
use super::quota;
use super::request::{ClientRequest, Operation};
use crate::body::ResponseBody;
use crate::catalog::provider::Key;
use crate::catalog::routes::Candidate;
use crate::errors::{ApiError, Attempt, ceil_secs};
use crate::plugin::ErrorKind;
use crate::state::usage::estimate_tokens;
use crate::state::{Admission, AttemptRecord, Circuit, CircuitChange, Cooling, Learned};
use crate::telemetry::Trace;

/// How long a request skips a key whose probe is in flight before it looks
/// again (the admission queue's head looks again then).
const PROBE_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// What dispatching a request came to.
pub struct Outcome {
    /// The answer to send (also an upstream's own 400), or the error.
    pub result: Result<Response<ResponseBody>, ApiError>,
    /// The candidate that answered, when one did.
    pub via: Option<Candidate>,
    /// The upstream attempts that failed before the answer (all of them,
    /// when nothing answered), in order.
    pub attempts: Vec<Attempt>,
    /// Every attempt with its key and time, the answering one last: what
    /// the request log records (empty when nothing is logged).
    pub trail: Vec<AttemptRecord>,
}

/// What the loop knows so far about why nothing answered.
#[derive(Default)]
struct Tally {
    failed: Vec<Attempt>,
    trail: Vec<AttemptRecord>,
    skipped: Vec<Attempt>,
    /// The soonest a cooling or limited candidate frees up.
    soonest: Option<Instant>,
    /// `dispatch.max_attempts` was reached.
    exhausted: bool,
}

impl Tally {
    fn wait_until(&mut self, until: Instant) {
        self.soonest = Some(self.soonest.map_or(until, |s| s.min(until)));
    }

    fn skip(&mut self, candidate: &Candidate, reason: String) {
        self.skipped.push(Attempt {
            provider: candidate.provider.name.to_string(),
            model: candidate.model.to_string(),
            status: None,
            reason,
        });
    }
}

/// What to do after a failed attempt.
enum Next {
    /// Try the same candidate on its next key.
    Key,
    /// Move to the next candidate.
    Candidate,
    /// Answer the client with this now.
    Answer(Response<ResponseBody>),
}

/// Runs a request (chat or embeddings) against its candidates. `gate` (a
/// place at the head of the admission queue's line) is let go as soon as an
/// attempt is admitted.
pub async fn run(
    proxy: &Proxy,
    request: &ClientRequest,
    candidates: &[Candidate],
    gate: &mut Option<OwnedSemaphorePermit>,
) -> Outcome {
    let max = proxy.settings.max_attempts.max(1) as usize;
    let mut tally = Tally::default();

    'candidates: for candidate in candidates {
        let provider = &candidate.provider;
        if request.operation == Operation::Embeddings && !provider.plugin.capabilities().embeddings {
            tally.skip(candidate, format!("skipped: plugin `{}` has no embeddings", provider.plugin.name()));
            continue;
        }
        // A model the provider said is gone waits for the next discovery.
        if provider.is_retired(&candidate.model) {
            tally.skip(
                candidate,
                format!(
                    "skipped: {} said this model is gone (410); it returns with the next model discovery",
                    provider.name
                ),
            );
            continue;
        }
        // A provider failing every call is skipped while its circuit is open.
        if let Circuit::Open { until } = proxy.state.circuit(&provider.name, Instant::now(), &proxy.circuit) {
            let wait = ceil_secs(until.saturating_duration_since(Instant::now()));
            tally.skip(
                candidate,
                format!("skipped: {} failed its recent calls; it is tried again in {wait}s", provider.name),
            );
            continue;
        }
        let (budget, window) = provider.budget_and_window(&candidate.model, &proxy.clock, Instant::now());
        let estimate = estimate_tokens(request.raw.len(), request.max_tokens, window);
        let n = provider.keys.len();
        let start = provider.next_key_start();
        let mut usable = false;
        for k in 0..n {
            let key = &provider.keys[(start + k) % n];
            // admit: skip keys the upstream rejected, models cooling on this
            // key, and candidates at a limit known before the 429
            if proxy.state.is_invalid(&key.id) {
                continue;
            }
            usable = true;
            let now = Instant::now();
            if let Some(until) = proxy.state.cooling_until(&key.id, &candidate.model, now) {
                tally.wait_until(until);
                continue;
            }
            if tally.failed.len() >= max {
                tally.exhausted = true;
                break 'candidates;
            }
            let learned = proxy.state.learned(&key.id, &candidate.model);
            let budget = quota::with_learned(budget, learned.as_ref(), now);
            let strikes = learned.map_or(0, |l| l.strikes);
            // A key that refused without saying until when is probed by one
            // request at a time: the others wait for its answer.
            let _probe = match strikes {
                0 => None,
                _ => match proxy.probes.start(&key.id, &candidate.model) {
                    Some(probe) => Some(probe),
                    None => {
                        tally.wait_until(now + PROBE_WAIT);
                        continue;
                    }
                },
            };
            let admission = match proxy.state.admit(&key.id, &candidate.model, &budget, estimate, now) {
                Ok(admission) => admission,
                Err(hit) => {
                    proxy.metrics.limit_skip(&provider.name, &candidate.metric_model(), hit.limit.label());
                    tally.wait_until(hit.until);
                    continue;
                }
            };
            // Shared with other instances (Redis): their counts have the last
            // word; a refusal has given the local admission back.
            if let Some(shared) = proxy.state.shared()
                && let Err(hit) = shared.admit(&admission, &budget, now).await
            {
                proxy.metrics.limit_skip(&provider.name, &candidate.metric_model(), hit.limit.label());
                tally.wait_until(hit.until);
                continue;
            }
            // The next in line need not wait for this attempt's answer.
            drop(gate.take());
            // build, send, decode
            let started = Instant::now();
            let span =
                tracing::debug_span!("attempt", provider = %provider.name, model = %candidate.model, key = key.index);
            let traced = Trace::current().attempt(&provider.name, &candidate.model, key.id.fingerprint);
            let result = attempt::attempt(proxy, request, candidate, key, &admission).instrument(span).await;
            let elapsed = started.elapsed();
            match &result {
                Ok(success) => traced.end(Some(success.response.status().as_u16()), "ok", elapsed),
                Err(f) => traced.end(f.status, &f.reason, elapsed),
            }
            let reports = match &result {
                Ok(success) => &success.limits,
                Err(failure) => &failure.limits,
            };
            if let Some(until) = quota::learn(proxy, candidate, key, reports, Instant::now()) {
                tally.wait_until(until);
            }
            let up = result.as_ref().err().is_none_or(|f| !f.provider_down());
            match proxy.state.circuit_result(&provider.name, up, Instant::now(), &proxy.circuit) {
                Some(CircuitChange::Opened) => {
                    proxy.metrics.circuit_opened(&provider.name);
                    tracing::warn!(provider = %provider.name, for_ = ?proxy.circuit.open_for, "provider failing: its circuit opens");
                }
                Some(CircuitChange::Closed) => {
                    tracing::info!(provider = %provider.name, "provider answers again: its circuit closes")
                }
                None => {}
            }
            if request.log_id != 0 {
                let (status, reason) = match &result {
                    Ok(success) => (Some(success.response.status().as_u16()), "ok".to_owned()),
                    Err(f) => (f.status, f.reason.clone()),
                };
                tally.trail.push(AttemptRecord {
                    provider: provider.name.clone(),
                    model: candidate.model.clone(),
                    key: key.id.fingerprint,
                    status,
                    reason,
                    latency_ms: u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX),
                });
            }
            let failure = match result {
                Ok(success) => {
                    provider.answered(&candidate.model);
                    if strikes > 0 {
                        proxy.state.learn(&key.id, &candidate.model, &|l| Learned { strikes: 0, ..l });
                    }
                    proxy.metrics.attempt(&provider.name, &candidate.metric_model(), "ok", elapsed);
                    return Outcome {
                        result: Ok(success.response),
                        via: Some(candidate.clone()),
                        attempts: tally.failed,
                        trail: tally.trail,
                    };
                }
                Err(failure) => failure,
            };
            proxy.state.refund(&admission, failure.refund);
            if let Some(gone) = failure.model_gone
                && provider.strike(&candidate.model, gone == Gone::Retired)
            {
                tracing::warn!(provider = %provider.name, model = %candidate.model, status = failure.status, "the provider says this model is gone; dropped from routing until the next discovery");
            }
            proxy.metrics.attempt(&provider.name, &candidate.metric_model(), failure.outcome, elapsed);
            tracing::info!(
                provider = %provider.name,
                model = %candidate.model,
                key = key.index,
                outcome = failure.outcome,
                status = failure.status,
                reason = %failure.reason,
                "upstream attempt failed"
            );
            tally.failed.push(Attempt {
                provider: provider.name.to_string(),
                model: candidate.model.to_string(),
                status: failure.status,
                reason: failure.reason.clone(),
            });
            // classify: the failure carries its decision
            match decide(proxy, candidate, key, &admission, failure, &mut tally) {
                Next::Key => {}
                Next::Candidate => continue 'candidates,
                Next::Answer(response) => {
                    // The upstream answered (its own 400): not a failure to fall back from.
                    tally.failed.pop();
                    return Outcome {
                        result: Ok(response),
                        via: Some(candidate.clone()),
                        attempts: tally.failed,
                        trail: tally.trail,
                    };
                }
            }
        }
        if !usable {
            tally.skip(candidate, "skipped: every key of this provider was rejected (401/403)".to_owned());
        }
    }
    nothing_answered(proxy, request, tally)
}

/// What a failed attempt means for the rest of the request, and what it
/// changes in the state (cooldowns, rejected keys).
fn decide(
    proxy: &Proxy,
    candidate: &Candidate,
    key: &Key,
    admission: &Admission,
    failure: Failure,
    tally: &mut Tally,
) -> Next {
    let now = Instant::now();
    let cooldown = proxy.settings.cooldown.get();
    match failure.kind {
        ErrorKind::ClientError => {
            let body = failure.body.unwrap_or_default();
            let status = failure.status.and_then(|s| StatusCode::from_u16(s).ok()).unwrap_or(StatusCode::BAD_REQUEST);
            Next::Answer(ApiError::UpstreamRejected { status, body }.into_response())
        }
        ErrorKind::RateLimited { retry_after, window } => {
            let (until, why) = quota::refused(proxy, candidate, key, admission, window, retry_after, now);
            if let Some(until) = until {
                proxy.state.cool(&key.id, &candidate.model, until, why);
                tally.wait_until(until);
            }
            proxy.metrics.fallback(failure.outcome);
            // the same model, at once, on the next key
            Next::Key
        }
        ErrorKind::InvalidKey => {
            tracing::warn!(provider = %candidate.provider.name, key = key.index, "upstream rejected the key; it is not used again until the config changes");
            proxy.state.mark_invalid(&key.id);
            proxy.metrics.fallback(failure.outcome);
            Next::Key
        }
        ErrorKind::QuotaExhausted => {
            if let Some(until) = now.checked_add(cooldown) {
                proxy.state.cool(&key.id, &candidate.model, until, Cooling::QuotaExhausted);
                tally.wait_until(until);
            }
            proxy.metrics.fallback(failure.outcome);
            Next::Candidate
        }
        ErrorKind::Transient => {
            proxy.metrics.fallback(failure.outcome);
            Next::Candidate
        }
    }
}

/// Nothing answered. When capacity is why (a candidate rate-limited,
/// cooling, at a limit or out of quota for now), 429 with the soonest time
/// one frees, even if other candidates failed another way: the client's
/// right move is to wait, not to give up. 502, listing every attempt, only
/// when every candidate actually failed.
fn nothing_answered(proxy: &Proxy, request: &ClientRequest, tally: Tally) -> Outcome {
    let Tally { failed, trail, skipped, soonest, exhausted } = tally;
    let made = failed.clone();
    let mut failed = failed;
    failed.extend(skipped);
    let error = match soonest {
        Some(until) => ApiError::RateLimited {
            model: request.model.clone(),
            retry_after: until.saturating_duration_since(Instant::now()),
            attempts: failed,
        },
        _ => {
            let message = if exhausted {
                let max = proxy.settings.max_attempts.max(1);
                format!("dispatch.max_attempts ({max}) reached for `{}`; every attempt failed", request.model)
            } else {
                format!("every candidate for `{}` failed", request.model)
            };
            ApiError::AllFailed { message, attempts: failed }
        }
    };
    Outcome { result: Err(error), via: None, attempts: made, trail }
}
