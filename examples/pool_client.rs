//! The open-loop load of the pool benchmark (`benches/pool.sh`).
//!
//! Sends small chat completions for `--model` (default `free`) to a
//! gateway at Poisson arrivals of `--rate` requests per second for
//! `--duration` seconds, without waiting for answers before sending the
//! next (open loop): a slow or refusing gateway does not slow the offered
//! load down. At most `--max-in-flight` requests are outstanding at once;
//! an arrival beyond that is counted as `dropped` (not sent), so a stuck
//! gateway cannot make the client pile up connections without bound.
//!
//! Each request's status (0 when no HTTP answer came: connection refused
//! while the gateway restarts, reset...), whether a `Retry-After` came with
//! it and its latency are recorded; at the end (after waiting up to
//! `--drain` seconds for the last answers) it prints one JSON object:
//! offered, sent, dropped, ok (2xx), 429s with and without `Retry-After`,
//! 5xx, other 4xx, no answer, and the p50/p95 latency of the 2xx answers in
//! ms. `--log FILE` also writes one line per request:
//! `start_ms status retry_after(0|1) latency_ms`.
//!
//! Usage: `pool_client --url http://127.0.0.1:PORT [--rate R] [--duration S]
//! [--max-in-flight N] [--model M] [--seed N] [--drain S] [--log FILE]`.

use std::error::Error;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, RETRY_AFTER};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::json;
use tokio::sync::Semaphore;

struct Args {
    url: String,
    rate: f64,
    duration: Duration,
    max_in_flight: usize,
    model: String,
    seed: u64,
    drain: Duration,
    log: Option<String>,
}

fn parse_args() -> Result<Args, Box<dyn Error>> {
    let mut args = Args {
        url: String::new(),
        rate: 1.0,
        duration: Duration::from_secs(60),
        max_in_flight: 256,
        model: "free".to_owned(),
        seed: 7,
        drain: Duration::from_secs(30),
        log: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--url" => args.url = value,
            "--rate" => args.rate = value.parse()?,
            "--duration" => args.duration = Duration::from_secs_f64(value.parse()?),
            "--max-in-flight" => args.max_in_flight = value.parse()?,
            "--model" => args.model = value,
            "--seed" => args.seed = value.parse()?,
            "--drain" => args.drain = Duration::from_secs_f64(value.parse()?),
            "--log" => args.log = Some(value),
            _ => return Err(format!("unknown flag {flag}").into()),
        }
    }
    if args.url.is_empty() || !args.rate.is_finite() || args.rate <= 0.0 {
        return Err("--url and a positive --rate are needed".into());
    }
    Ok(args)
}

/// One request's outcome.
#[derive(Clone, Copy)]
struct Record {
    start_ms: u64,
    status: u16,
    retry_after: bool,
    latency_ms: f64,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn Error>> {
    let args = parse_args()?;
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    // Short idle timeout: a pooled connection to a gateway that was just
    // killed must not be reused for long.
    let client = Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(5))
        .build::<_, Full<Bytes>>(connector);
    let body = Bytes::from(
        json!({
            "model": args.model,
            "messages": [
                {"role": "system", "content": "You are a concise assistant."},
                {"role": "user", "content": "In one sentence: why do free tiers have daily quotas?"}
            ],
            "max_tokens": 32
        })
        .to_string(),
    );
    let url = format!("{}/v1/chat/completions", args.url.trim_end_matches('/'));
    let records = Arc::new(Mutex::new(Vec::<Record>::new()));
    let slots = Arc::new(Semaphore::new(args.max_in_flight));
    let mut rng = fastrand::Rng::with_seed(args.seed);
    let started = Instant::now();
    let mut next = Duration::ZERO;
    let (mut offered, mut dropped) = (0u64, 0u64);
    let mut tasks = Vec::new();
    loop {
        // Exponential gaps: a Poisson process of `rate` per second.
        next += Duration::from_secs_f64(-(1.0 - rng.f64()).ln() / args.rate);
        if next >= args.duration {
            break;
        }
        tokio::time::sleep_until((started + next).into()).await;
        offered += 1;
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            dropped += 1;
            continue;
        };
        let request = Request::post(&url)
            .header(CONTENT_TYPE, "application/json")
            .header(AUTHORIZATION, "Bearer pool-bench")
            .body(Full::new(body.clone()))?;
        let client = client.clone();
        let records = records.clone();
        tasks.push(tokio::spawn(async move {
            let t0 = Instant::now();
            let start_ms = t0.duration_since(started).as_millis() as u64;
            let (status, retry_after) = match client.request(request).await {
                Ok(response) => {
                    let status = response.status().as_u16();
                    let retry_after = response.headers().contains_key(RETRY_AFTER);
                    // The whole body: latency is until the answer is complete.
                    let complete = response.into_body().collect().await.is_ok();
                    (if complete { status } else { 0 }, retry_after)
                }
                Err(_) => (0, false),
            };
            let latency_ms = t0.elapsed().as_secs_f64() * 1000.0;
            drop(permit);
            if let Ok(mut r) = records.lock() {
                r.push(Record { start_ms, status, retry_after, latency_ms });
            }
        }));
    }
    let deadline = Instant::now() + args.drain;
    for task in tasks {
        let left = deadline.saturating_duration_since(Instant::now());
        let _ = tokio::time::timeout(left, task).await;
    }
    let mut records = records.lock().map(|r| r.clone()).unwrap_or_default();
    records.sort_by_key(|r| r.start_ms);
    let count = |f: &dyn Fn(&Record) -> bool| records.iter().filter(|r| f(r)).count();
    let mut latencies: Vec<f64> =
        records.iter().filter(|r| (200..300).contains(&r.status)).map(|r| r.latency_ms).collect();
    latencies.sort_by(f64::total_cmp);
    let sent = offered - dropped;
    let summary = json!({
        "offered": offered,
        "sent": sent,
        "dropped": dropped,
        "unfinished": sent as usize - records.len(),
        "ok": latencies.len(),
        "r429_ra": count(&|r| r.status == 429 && r.retry_after),
        "r429_bare": count(&|r| r.status == 429 && !r.retry_after),
        "r5xx": count(&|r| r.status >= 500),
        "r4xx_other": count(&|r| (400..500).contains(&r.status) && r.status != 429),
        "no_answer": count(&|r| r.status == 0),
        "p50_ms": percentile(&latencies, 50.0),
        "p95_ms": percentile(&latencies, 95.0),
        "elapsed_secs": started.elapsed().as_secs_f64(),
    });
    if let Some(path) = &args.log {
        let mut text = String::new();
        for r in &records {
            let _ = writeln!(text, "{} {} {} {:.1}", r.start_ms, r.status, u8::from(r.retry_after), r.latency_ms);
        }
        std::fs::write(path, text)?;
    }
    println!("{summary}");
    Ok(())
}
