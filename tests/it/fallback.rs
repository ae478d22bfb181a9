//! The fallback rules of DESIGN.md, one test per rule, asserted on what the
//! client gets and on what each mock upstream was asked.

use std::time::Duration;

use crate::support::gateway::{Answer, provider, start};
use crate::support::mock::{Behavior, Mock};

/// Two providers `a` and `b`, each a mock with its own models, and a route
/// `r` over `a/m1` then `b/m2`.
async fn two_providers(dispatch: &str) -> (Mock, Mock, crate::support::gateway::TestGateway) {
    let a = Mock::start().await;
    let b = Mock::start().await;
    let yaml = format!(
        "providers:\n{}{}routes:\n  r:\n    targets: [a/m1, b/m2]\ndispatch: {dispatch}\n",
        provider("a", &a.base_url(), &["ka"], &["m1", "shared"]),
        provider("b", &b.base_url(), &["kb"], &["m2", "shared"]),
    );
    let gw = start(&yaml).await;
    (a, b, gw)
}

fn assert_answered_by(answer: &Answer, via: &str, model: &str, attempts: usize) {
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(answer.routed_via(), via);
    assert_eq!(answer.fallback_attempts(), attempts);
    assert_eq!(answer.json()["model"], model, "the body names the model that answered");
}

#[tokio::test]
async fn the_first_candidate_answers_with_routing_headers() {
    let (a, b, gw) = two_providers("{}").await;
    let answer = gw.chat("r").await;
    assert_answered_by(&answer, "a/m1", "m1", 0);
    assert_eq!(a.seen().len(), 1);
    assert_eq!(b.seen().len(), 0);
    let sent = &a.seen()[0];
    assert_eq!(sent.key.as_deref(), Some("ka"));
    assert_eq!(sent.path, "/v1/chat/completions");
    assert_eq!(sent.body["temperature"], 0.1, "other parameters pass through");
}

#[tokio::test]
async fn a_429_cools_the_model_and_it_is_not_called_again() {
    let (a, b, gw) = two_providers("{}").await;
    a.on_model("m1", Behavior::rate_limited("120"));
    let first = gw.chat("r").await;
    assert_answered_by(&first, "b/m2", "m2", 1);
    for _ in 0..3 {
        let next = gw.chat("r").await;
        // Skipping a cooling candidate is not an attempt.
        assert_answered_by(&next, "b/m2", "m2", 0);
    }
    assert_eq!(a.calls_to("m1"), 1, "the cooling model was called again");
    assert_eq!(b.calls_to("m2"), 4);
}

#[tokio::test]
async fn retry_after_in_seconds_ends_the_cooldown() {
    let (a, _b, gw) = two_providers("{}").await;
    a.once_model("m1", Behavior::rate_limited("1"));
    assert_eq!(gw.chat("r").await.routed_via(), "b/m2");
    assert_eq!(gw.chat("r").await.routed_via(), "b/m2");
    tokio::time::sleep(Duration::from_millis(1300)).await;
    assert_answered_by(&gw.chat("r").await, "a/m1", "m1", 0);
    assert_eq!(a.calls_to("m1"), 2);
}

#[tokio::test]
async fn retry_after_as_an_http_date_is_honoured() {
    let (a, _b, gw) = two_providers("{}").await;
    let date = httpdate::fmt_http_date(std::time::SystemTime::now() + Duration::from_secs(2));
    a.once_model("m1", Behavior::rate_limited(&date));
    assert_eq!(gw.chat("r").await.routed_via(), "b/m2");
    assert_eq!(gw.chat("r").await.routed_via(), "b/m2", "still cooling before the date");
    tokio::time::sleep(Duration::from_millis(2600)).await;
    assert_eq!(gw.chat("r").await.routed_via(), "a/m1", "the date has passed");
}

#[tokio::test]
async fn a_429_tries_the_same_model_on_the_next_key_at_once() {
    let a = Mock::start().await;
    let yaml = format!("providers:\n{}", provider("a", &a.base_url(), &["k1", "k2"], &["m1"]));
    let gw = start(&yaml).await;
    a.on_key("k1", Behavior::rate_limited("60"));
    let answer = gw.chat("a/m1").await;
    assert_answered_by(&answer, "a/m1", "m1", 1);
    let keys: Vec<_> = a.seen().iter().map(|s| (s.model.clone(), s.key.clone().unwrap())).collect();
    assert_eq!(keys, vec![("m1".into(), "k1".into()), ("m1".into(), "k2".into())]);
    // k1 cools for m1 only: later requests go straight to k2.
    for _ in 0..3 {
        assert_answered_by(&gw.chat("a/m1").await, "a/m1", "m1", 0);
    }
    assert_eq!(a.seen().iter().filter(|s| s.key.as_deref() == Some("k1")).count(), 1);
}

#[tokio::test]
async fn a_401_marks_the_key_invalid_for_good() {
    let a = Mock::start().await;
    let yaml = format!("providers:\n{}", provider("a", &a.base_url(), &["bad", "good"], &["m1"]));
    let gw = start(&yaml).await;
    a.on_key("bad", Behavior::status(401));
    for _ in 0..4 {
        assert_eq!(gw.chat("a/m1").await.status, 200);
    }
    assert_eq!(a.seen().iter().filter(|s| s.key.as_deref() == Some("bad")).count(), 1, "an invalid key was reused");
}

#[tokio::test]
async fn a_403_also_marks_the_key_invalid_and_moves_on() {
    let (a, _b, gw) = two_providers("{}").await;
    a.on_model("m1", Behavior::status(403));
    assert_answered_by(&gw.chat("r").await, "b/m2", "m2", 1);
    assert_answered_by(&gw.chat("r").await, "b/m2", "m2", 0);
    assert_eq!(a.calls_to("m1"), 1);
}

#[tokio::test]
async fn an_upstream_400_is_returned_at_once_and_never_retried() {
    let (a, b, gw) = two_providers("{}").await;
    a.on_model(
        "m1",
        Behavior::Status {
            status: 400,
            retry_after: None,
            body: r#"{"error":{"message":"tools[0] is invalid","type":"invalid_request_error"}}"#.into(),
        },
    );
    let answer = gw.chat("r").await;
    assert_eq!(answer.status, 400);
    assert_eq!(answer.json()["error"]["message"], "tools[0] is invalid");
    assert_eq!(answer.routed_via(), "a/m1");
    assert_eq!(b.seen().len(), 0, "a 400 must not be retried elsewhere");
}

#[tokio::test]
async fn statuses_that_move_to_the_next_candidate() {
    for status in [402u16, 404, 408, 500, 502, 503, 504] {
        let (a, b, gw) = two_providers("{}").await;
        a.on_model("m1", Behavior::status(status));
        let answer = gw.chat("r").await;
        assert_answered_by(&answer, "b/m2", "m2", 1);
        assert_eq!((a.calls_to("m1"), b.calls_to("m2")), (1, 1), "status {status}");
    }
}

#[tokio::test]
async fn a_hanging_upstream_times_out_and_falls_back() {
    let (a, _b, gw) = two_providers("{ timeout: 300ms }").await;
    a.on_model("m1", Behavior::Hang);
    let answer = gw.chat("r").await;
    assert_answered_by(&answer, "b/m2", "m2", 1);
}

#[tokio::test]
async fn a_connect_error_falls_back() {
    let b = Mock::start().await;
    // A port nothing listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let yaml = format!(
        "providers:\n{}{}routes:\n  r:\n    targets: [dead/m1, b/m2]\n",
        provider("dead", &format!("http://{closed}/v1"), &["k"], &["m1"]),
        provider("b", &b.base_url(), &["kb"], &["m2"]),
    );
    let gw = start(&yaml).await;
    assert_answered_by(&gw.chat("r").await, "b/m2", "m2", 1);
}

#[tokio::test]
async fn an_answer_that_is_not_a_completion_falls_back() {
    let (a, _b, gw) = two_providers("{}").await;
    a.on_model("m1", Behavior::Raw(r#"{"error":{"message":"upstream overloaded"}}"#.into()));
    assert_answered_by(&gw.chat("r").await, "b/m2", "m2", 1);
}

#[tokio::test]
async fn all_failed_is_a_502_listing_every_attempt() {
    let (a, b, gw) = two_providers("{}").await;
    a.on_model("m1", Behavior::status(500));
    b.on_model("m2", Behavior::status(503));
    let answer = gw.chat("r").await;
    assert_eq!(answer.status, 502);
    assert_eq!(answer.fallback_attempts(), 2);
    let error = &answer.json()["error"];
    assert_eq!(error["type"], "upstream_error");
    let attempts = error["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 2);
    assert_eq!(attempts[0]["provider"], "a");
    assert_eq!(attempts[0]["model"], "m1");
    assert_eq!(attempts[0]["status"], 500);
    assert!(attempts[0]["reason"].as_str().unwrap().contains("mock says 500"));
    assert_eq!(attempts[1]["provider"], "b");
    assert_eq!(attempts[1]["status"], 503);
}

#[tokio::test]
async fn everything_rate_limited_is_a_429_with_the_soonest_retry_after() {
    let (a, b, gw) = two_providers("{}").await;
    a.on_model("m1", Behavior::rate_limited("30"));
    b.on_model("m2", Behavior::rate_limited("10"));
    let first = gw.chat("r").await;
    assert_eq!(first.status, 429, "{}", first.text());
    let retry: u64 = first.header("retry-after").parse().unwrap();
    assert!((9..=10).contains(&retry), "retry-after {retry}");
    assert_eq!(first.json()["error"]["type"], "rate_limit_error");
    // Now everything is cooling: 429 without calling anyone.
    let second = gw.chat("r").await;
    assert_eq!(second.status, 429);
    assert_eq!(second.fallback_attempts(), 0);
    assert!(second.header("retry-after").parse::<u64>().unwrap() <= 10);
    assert_eq!((a.seen().len(), b.seen().len()), (1, 1));
}

#[tokio::test]
async fn max_attempts_bounds_the_upstream_calls() {
    let m = Mock::start().await;
    let yaml = format!(
        "providers:\n{}routes:\n  r:\n    targets: [p/m1, p/m2, p/m3]\ndispatch: {{ max_attempts: 2 }}\n",
        provider("p", &m.base_url(), &["k"], &["m1", "m2", "m3"]),
    );
    let gw = start(&yaml).await;
    m.on_all(Behavior::status(500));
    let answer = gw.chat("r").await;
    assert_eq!(answer.status, 502);
    assert_eq!(m.seen().len(), 2);
    assert!(answer.json()["error"]["message"].as_str().unwrap().contains("max_attempts"));
}

#[tokio::test]
async fn upstream_connections_are_kept_alive_and_reused() {
    let (a, _b, gw) = two_providers("{}").await;
    for _ in 0..5 {
        assert_eq!(gw.chat("r").await.status, 200);
    }
    assert_eq!(a.seen().len(), 5);
    assert_eq!(a.connections(), 1, "each request opened a new upstream connection");
}

#[tokio::test]
async fn keys_are_used_in_turn() {
    let m = Mock::start().await;
    let gw = start(&format!("providers:\n{}", provider("p", &m.base_url(), &["k1", "k2", "k3"], &["m"]))).await;
    for _ in 0..6 {
        assert_eq!(gw.chat("p/m").await.status, 200);
    }
    for k in ["k1", "k2", "k3"] {
        assert_eq!(m.seen().iter().filter(|s| s.key.as_deref() == Some(k)).count(), 2, "{k}");
    }
}

#[tokio::test]
async fn provider_slash_model_never_leaves_that_provider() {
    let (a, b, gw) = two_providers("{}").await;
    a.on_model("shared", Behavior::status(500));
    let answer = gw.chat("a/shared").await;
    assert_eq!(answer.status, 502);
    assert_eq!(b.seen().len(), 0);
}

#[tokio::test]
async fn a_bare_model_id_tries_every_provider_that_lists_it() {
    let (a, b, gw) = two_providers("{}").await;
    a.on_model("shared", Behavior::status(500));
    let answer = gw.chat("shared").await;
    assert_answered_by(&answer, "b/shared", "shared", 1);
    assert_eq!((a.calls_to("shared"), b.calls_to("shared")), (1, 1));
}

#[tokio::test]
async fn a_model_a_provider_does_not_list_is_passed_through_as_provider_slash_model() {
    let (a, _b, gw) = two_providers("{}").await;
    assert_answered_by(&gw.chat("a/unlisted-model").await, "a/unlisted-model", "unlisted-model", 0);
    assert_eq!(a.calls_to("unlisted-model"), 1);
}

#[tokio::test]
async fn route_strategies_order_the_targets() {
    let m = Mock::start().await;
    let yaml = format!(
        "providers:\n{}routes:\n  rr:\n    targets: [p/x, p/y]\n    strategy: round-robin\n  rand:\n    targets: [p/x, p/y]\n    strategy: random\n  w:\n    strategy: weighted\n    targets:\n      - {{ target: p/x, weight: 9 }}\n      - {{ target: p/y, weight: 1 }}\n",
        provider("p", &m.base_url(), &["k"], &["x", "y"]),
    );
    let gw = start(&yaml).await;
    let mut rr = Vec::new();
    for _ in 0..4 {
        rr.push(gw.chat("rr").await.routed_via().to_owned());
    }
    assert_eq!(rr, ["p/x", "p/y", "p/x", "p/y"]);
    let mut seen = std::collections::HashSet::new();
    for _ in 0..40 {
        seen.insert(gw.chat("rand").await.routed_via().to_owned());
    }
    assert_eq!(seen.len(), 2, "random order never started with one of the targets");
    let mut x = 0;
    for _ in 0..200 {
        if gw.chat("w").await.routed_via() == "p/x" {
            x += 1;
        }
    }
    // Expected 180 of 200; far outside chance for anything but weighting.
    assert!((150..=198).contains(&x), "weighted picked p/x first {x} times of 200");
}

#[tokio::test]
async fn https_upstreams_get_http2_when_they_offer_it_and_a_private_ca_can_be_trusted() {
    let (tls, ca_pem) = Mock::start_tls().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ca.pem"), ca_pem).unwrap();
    let base = format!("https://127.0.0.1:{}/v1", tls.addr.port());
    let yaml = format!(
        "providers:\n{}dispatch:\n  ca_file: {}\n",
        provider("secure", &base, &["k"], &["m"]),
        dir.path().join("ca.pem").display()
    );
    let gw = start(&yaml).await;
    for _ in 0..3 {
        assert_answered_by(&gw.chat("secure/m").await, "secure/m", "m", 0);
    }
    let stream = crate::support::gateway::Answer::read(gw.stream("secure/m").await).await;
    assert_eq!(stream.events().last().unwrap(), "[DONE]");
    assert!(tls.seen().iter().all(|s| s.version == http::Version::HTTP_2), "{:?}", tls.seen());
    assert_eq!(tls.connections(), 1, "HTTP/2 requests share one connection");

    // Without the CA the certificate is refused: a connect error, not an answer.
    let untrusted = start(&format!("providers:\n{}", provider("secure", &base, &["k"], &["m"]))).await;
    let answer = untrusted.chat("secure/m").await;
    assert_eq!(answer.status, 502);
    assert!(answer.text().contains("certificate"), "{}", answer.text());
}

#[tokio::test]
async fn a_provider_failing_every_call_is_skipped_then_probed_once_and_trusted_again() {
    let (a, _b, gw) = two_providers("{ circuit_failures: 3, circuit_open: 1s }").await;
    a.on_all(Behavior::status(503));
    for _ in 0..3 {
        assert_answered_by(&gw.chat("r").await, "b/m2", "m2", 1);
    }
    // The circuit is open: a is skipped without a call.
    let skipped = gw.chat("r").await;
    assert_answered_by(&skipped, "b/m2", "m2", 0);
    assert_eq!(a.chats().len(), 3, "a was called while its circuit was open");
    let metrics = gw.get("/metrics", &[]).await.text();
    assert!(metrics.contains(r#"freeway_circuit_opens_total{provider="a"} 1"#), "{metrics}");
    assert!(metrics.contains("freeway_circuits_open 1"), "{metrics}");
    // Everything else failing too: the 502 says why a was not tried.
    let only_a = gw.chat("a/m1").await;
    assert_eq!(only_a.status, 502);
    assert!(only_a.text().contains("failed its recent calls"), "{}", only_a.text());
    // a recovers; after circuit_open one request probes it, then it is trusted.
    a.on_all(Behavior::Ok);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_answered_by(&gw.chat("r").await, "a/m1", "m1", 0);
    assert_answered_by(&gw.chat("r").await, "a/m1", "m1", 0);
    assert!(gw.get("/metrics", &[]).await.text().contains("freeway_circuits_open 0"));
}

#[tokio::test]
async fn rate_limits_and_client_errors_do_not_open_a_circuit() {
    let (a, _b, gw) = two_providers("{ circuit_failures: 2, circuit_open: 60s }").await;
    a.on_all(Behavior::rate_limited("1"));
    for _ in 0..4 {
        assert_eq!(gw.chat("a/m1").await.status, 429);
        tokio::time::sleep(Duration::from_millis(1050)).await;
    }
    a.on_all(Behavior::status(400));
    for _ in 0..3 {
        assert_eq!(gw.chat("a/m1").await.status, 400);
    }
    a.on_all(Behavior::Ok);
    assert_eq!(gw.chat("a/m1").await.status, 200, "a provider that answers is not cut off");
    assert!(!gw.get("/metrics", &[]).await.text().contains("freeway_circuit_opens_total{"));
}

#[tokio::test]
async fn a_model_answering_410_is_dropped_from_routing_until_the_next_discovery() {
    let a = Mock::start().await;
    let b = Mock::start().await;
    a.on_model("m", Behavior::status(410));
    let yaml = format!(
        "providers:\n{}{}routes:\n  r:\n    targets: [a/m, b/n]\n",
        provider("a", &a.base_url(), &["ka"], &["m"]),
        provider("b", &b.base_url(), &["kb"], &["n"]),
    );
    let gw = start(&yaml).await;
    assert_eq!(gw.chat("r").await.fallback_attempts(), 1);
    for _ in 0..3 {
        let answer = gw.chat("r").await;
        assert_eq!(answer.routed_via(), "b/n");
        assert_eq!(answer.fallback_attempts(), 0, "a retired model is skipped, not attempted");
    }
    assert_eq!(a.calls_to("m"), 1, "the gone model was called again");
    gw.gateway.refresh_models().await;
    gw.chat("r").await;
    assert_eq!(a.calls_to("m"), 2, "discovery did not bring the model back");
}

#[tokio::test]
async fn model_not_found_twice_in_a_row_drops_the_model_once_is_forgiven() {
    let a = Mock::start().await;
    let b = Mock::start().await;
    let not_found = || Behavior::Status {
        status: 404,
        retry_after: None,
        body: serde_json::json!({"error": {"message": "The model `m` does not exist", "code": "model_not_found"}})
            .to_string(),
    };
    a.once_model("m", not_found());
    let yaml = format!(
        "providers:\n{}{}routes:\n  r:\n    targets: [a/m, b/n]\n",
        provider("a", &a.base_url(), &["ka"], &["m"]),
        provider("b", &b.base_url(), &["kb"], &["n"]),
    );
    let gw = start(&yaml).await;
    assert_eq!(gw.chat("r").await.routed_via(), "b/n");
    assert_eq!(gw.chat("r").await.routed_via(), "a/m", "one model_not_found is forgiven by an answer");
    a.on_model("m", not_found());
    assert_eq!(gw.chat("r").await.routed_via(), "b/n");
    assert_eq!(gw.chat("r").await.routed_via(), "b/n");
    let calls = a.calls_to("m");
    assert_eq!(gw.chat("r").await.fallback_attempts(), 0);
    assert_eq!(a.calls_to("m"), calls, "a model not found twice in a row was called again");
}

#[tokio::test]
async fn a_failure_beside_a_rate_limit_is_a_429_saying_when_to_come_back_not_a_502() {
    let a = Mock::start().await;
    let b = Mock::start().await;
    a.on_model("m", Behavior::status(503));
    b.on_model("n", Behavior::rate_limited("30"));
    let yaml = format!(
        "providers:\n{}{}routes:\n  r:\n    targets: [a/m, b/n]\n",
        provider("a", &a.base_url(), &["ka"], &["m"]),
        provider("b", &b.base_url(), &["kb"], &["n"]),
    );
    let gw = start(&yaml).await;
    let answer = gw.chat("r").await;
    assert_eq!(answer.status, 429, "{}", answer.text());
    let retry: u64 = answer.header("retry-after").parse().unwrap();
    assert!((29..=30).contains(&retry), "retry-after {retry}");
    let attempts = answer.json()["error"]["attempts"].as_array().unwrap().len();
    assert_eq!(attempts, 2, "both attempts are still listed");
    // Both failing for real is still a 502.
    b.on_model("n", Behavior::status(500));
    let c = start(&yaml).await;
    assert_eq!(c.chat("r").await.status, 502);
}
