//! No probing into known walls (issue 12): what a 429 teaches keeps the
//! gateway from asking again where the answer is known to be no. A 429
//! shows a key's requests per minute (and its siblings'), a refusal that
//! names no time is probed again later each time it repeats, and one
//! request at a time probes such a key.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::sync::Semaphore;

use crate::support::gateway::{provider, start};
use crate::support::mock::{Behavior, Mock, Reply, completion};

/// An upstream that lets each key through `rpm` times in any sliding
/// minute and answers the rest 429 with the `Retry-After` (whole seconds,
/// rounded up) when its oldest request leaves the window.
fn per_minute(rpm: usize) -> Behavior {
    let windows: Arc<Mutex<HashMap<String, VecDeque<Instant>>>> = Arc::default();
    Behavior::Custom(Arc::new(move |seen| {
        let mut windows = windows.lock().unwrap();
        let window = windows.entry(seen.key.clone().unwrap_or_default()).or_default();
        let now = Instant::now();
        while window.front().is_some_and(|t| now.duration_since(*t) >= Duration::from_secs(60)) {
            window.pop_front();
        }
        if window.len() >= rpm {
            let frees = (window[0] + Duration::from_secs(60)).duration_since(now);
            let secs = frees.as_millis().div_ceil(1000).to_string();
            return Reply {
                status: 429,
                headers: vec![("content-type".into(), "application/json".into()), ("retry-after".into(), secs)],
                pieces: vec![json!({"error": {"message": "rate limit reached"}}).to_string()],
            };
        }
        window.push_back(now);
        Reply::json(200, completion(&seen.model))
    }))
}

/// A 429 with nothing that says when or why.
fn bare_429() -> Behavior {
    Behavior::Status { status: 429, retry_after: None, body: json!({"error": {"message": "slow down"}}).to_string() }
}

#[tokio::test]
async fn a_429_teaches_the_keys_requests_per_minute_and_its_siblings_assume_it() {
    let mock = Mock::start().await;
    mock.on_model("m", per_minute(3));
    let yaml = format!(
        "providers:\n{}dispatch:\n  queue_timeout: 0s\n",
        provider("a", &mock.base_url(), &["k1", "k2"], &["m"])
    );
    let gw = start(&yaml).await;
    for i in 0..6 {
        assert_eq!(gw.chat("a/m").await.status, 200, "request {i}: each key has room for three");
    }
    // The seventh finds its key's minute full: nothing had said so, and
    // the 429 shows three a minute. The other key, with three in its own
    // minute, is then not asked: it is assumed to share the limit.
    let seventh = gw.chat("a/m").await;
    assert_eq!(seventh.status, 429, "{}", seventh.text());
    assert_eq!(mock.calls_to("m"), 7, "the other key was asked past the limit its sibling showed");
    let retry: u64 = seventh.header("retry-after").parse().unwrap();
    assert!((50..=61).contains(&retry), "retry-after {retry}: when the minute's oldest request leaves it");
    for _ in 0..3 {
        assert_eq!(gw.chat("a/m").await.status, 429);
    }
    assert_eq!(mock.calls_to("m"), 7, "a key known to be at its limit was asked again");
}

#[tokio::test]
async fn a_429_about_a_shorter_window_teaches_no_per_minute_limit() {
    let mock = Mock::start().await;
    let last: Arc<Mutex<Option<Instant>>> = Arc::default();
    mock.on_model(
        "m",
        Behavior::Custom(Arc::new(move |seen| {
            let mut last = last.lock().unwrap();
            if last.is_some_and(|t| t.elapsed() < Duration::from_secs(1)) {
                return Reply {
                    status: 429,
                    headers: vec![("retry-after".into(), "1".into())],
                    pieces: vec![json!({"error": {"message": "one a second"}}).to_string()],
                };
            }
            *last = Some(Instant::now());
            Reply::json(200, completion(&seen.model))
        })),
    );
    let yaml =
        format!("providers:\n{}dispatch:\n  queue_timeout: 0s\n", provider("a", &mock.base_url(), &["k"], &["m"]));
    let gw = start(&yaml).await;
    assert_eq!(gw.chat("a/m").await.status, 200);
    assert_eq!(gw.chat("a/m").await.status, 429);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    // One a second is not one a minute: the key serves again a second later.
    assert_eq!(gw.chat("a/m").await.status, 200);
    assert_eq!(mock.calls_to("m"), 3);
}

#[tokio::test]
async fn refusals_that_name_no_time_are_probed_later_each_time() {
    let mock = Mock::start().await;
    mock.on_model("m", bare_429());
    let yaml = format!(
        "providers:\n{}dispatch:\n  cooldown: 1s\n  queue_timeout: 0s\n",
        provider("a", &mock.base_url(), &["k"], &["m"])
    );
    let gw = start(&yaml).await;
    let retry = |answer: &crate::support::gateway::Answer| answer.header("retry-after").parse::<u64>().unwrap();
    let first = gw.chat("a/m").await;
    assert_eq!((first.status.as_u16(), retry(&first)), (429, 1), "the first waits dispatch.cooldown");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let second = gw.chat("a/m").await;
    assert_eq!(mock.calls_to("m"), 2);
    assert_eq!((second.status.as_u16(), retry(&second)), (429, 2), "the second waits twice as long");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(gw.chat("a/m").await.status, 429);
    assert_eq!(mock.calls_to("m"), 2, "probed again before the doubled wait ended");
    tokio::time::sleep(Duration::from_millis(1000)).await;
    // The key answers once, then refuses without saying until when: it
    // holds one request a minute, and waits for that minute, not for a
    // third strike's four seconds.
    mock.once_model("m", Behavior::Ok);
    assert_eq!(gw.chat("a/m").await.status, 200);
    let after = gw.chat("a/m").await;
    assert_eq!(after.status, 429);
    assert!((55..=61).contains(&retry(&after)), "retry-after {}", retry(&after));
    assert_eq!(mock.calls_to("m"), 4);
}

#[tokio::test]
async fn one_request_at_a_time_probes_a_key_that_refused_without_saying_until_when() {
    let (a, b) = (Mock::start().await, Mock::start().await);
    let gate = Arc::new(Semaphore::new(0));
    a.on_model("m", Behavior::Held(gate.clone()));
    a.once_model("m", bare_429());
    let yaml = format!(
        "providers:\n{}{}routes:\n  r:\n    targets: [a/m, b/n]\ndispatch:\n  cooldown: 1s\n  queue_timeout: 0s\n",
        provider("a", &a.base_url(), &["ka"], &["m"]),
        provider("b", &b.base_url(), &["kb"], &["n"]),
    );
    let gw = Arc::new(start(&yaml).await);
    assert_eq!(gw.chat("r").await.routed_via(), "b/n", "a refused without saying until when");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let requests: Vec<_> = (0..3)
        .map(|_| {
            let gw = gw.clone();
            tokio::spawn(async move { gw.chat("r").await })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    while b.chats().len() < 3 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(b.chats().len(), 3, "the requests behind the probe did not go on to the next candidate");
    assert_eq!(a.calls_to("m"), 2, "more than one request probed the key at once");
    gate.add_permits(1);
    let mut via = Vec::new();
    for r in requests {
        via.push(r.await.unwrap().routed_via().to_owned());
    }
    via.sort();
    assert_eq!(via, ["a/m", "b/n", "b/n"]);
    // The probe's answer ends the probation: requests go to `a` at once.
    gate.add_permits(2);
    let (x, y) = tokio::join!(gw.chat("r"), gw.chat("r"));
    assert_eq!((x.routed_via(), y.routed_via()), ("a/m", "a/m"));
}
