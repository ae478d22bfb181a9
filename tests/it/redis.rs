//! Several instances over one Redis (`state.redis`): a real `redis-server`
//! on a free port, two in-process gateways, one mock upstream. The budget
//! is shared, cooldowns travel, and Redis going away loses no request.
//!
//! These tests need `redis-server` on the machine (the Debian package
//! `redis-server`; `.ci/run` installs it): without it they fail, saying so.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::gateway::{TestGateway, provider, start};
use crate::support::mock::{Behavior, Mock};

/// A `redis-server` of our own, without persistence, killed on drop.
pub(crate) struct RedisServer {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
}

impl RedisServer {
    pub(crate) fn start() -> Self {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut server = Self { child: None, port, dir: tempfile::tempdir().unwrap() };
        server.restart();
        server
    }

    /// Starts it (again) on the same port, empty.
    fn restart(&mut self) {
        let spawned = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        let child = match spawned {
            Ok(child) => child,
            Err(e) => panic!(
                "cannot run redis-server ({e}): the Redis tests need a real one; install it \
                 (`apt-get install -y redis-server` on Debian/Ubuntu; .ci/run does)"
            ),
        };
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not listen on port {} within 10s", self.port);
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub(crate) fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub(crate) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One provider `a` (key `ka`, model `m`) with `limits`, sharing its state
/// through `redis`.
fn config(mock: &Mock, redis: &RedisServer, limits: &str) -> String {
    format!(
        "providers:\n{}    limits: {limits}\nstate:\n  redis: {}\n",
        provider("a", &mock.base_url(), &["ka"], &["m"]),
        redis.url()
    )
}

/// `/health`'s `state.redis`.
async fn redis_health(gw: &TestGateway) -> Value {
    gw.get("/health", &[]).await.json()["state"]["redis"].clone()
}

/// Waits (at most 10 s) until `/health`'s `state.redis` satisfies `ok`.
async fn wait_health(gw: &TestGateway, what: &str, ok: impl Fn(&Value) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let health = redis_health(gw).await;
        if ok(&health) {
            return;
        }
        assert!(Instant::now() < deadline, "/health never said {what}: {health}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

pub(crate) async fn wait_connected(gw: &TestGateway) {
    wait_health(gw, "Redis connected and subscribed", |h| h["connected"] == true && h["subscribed"] == true).await;
}

#[tokio::test]
async fn two_gateways_over_one_redis_share_a_daily_budget() {
    let redis = RedisServer::start();
    let mock = Mock::start().await;
    let yaml = config(&mock, &redis, "{ rpd: 10 }");
    let (a, b) = (start(&yaml).await, start(&yaml).await);
    wait_connected(&a).await;
    wait_connected(&b).await;
    for i in 0..10 {
        let gw = if i % 2 == 0 { &a } else { &b };
        let answer = gw.chat("a/m").await;
        assert_eq!(answer.status, 200, "request {i}: {}", answer.text());
    }
    for gw in [&a, &b] {
        let refused = gw.chat("a/m").await;
        assert_eq!(refused.status, 429, "{}", refused.text());
        let retry: u64 = refused.header("retry-after").parse().unwrap();
        assert!(retry > 23 * 3600, "retry-after {retry}: when the day's first requests leave the window");
    }
    assert_eq!(mock.chats().len(), 10, "the upstream was called past the shared budget");
    let metrics = a.get("/metrics", &[]).await.text();
    assert!(metrics.contains("freeway_limit_skips_total{provider=\"a\",model=\"m\",limit=\"rpd\"} 1"), "{metrics}");
}

#[tokio::test]
async fn a_cooldown_and_a_rejected_key_reach_the_other_gateways() {
    let redis = RedisServer::start();
    let mock = Mock::start().await;
    let yaml = config(&mock, &redis, "{ rpm: 1000 }");
    let (a, b) = (start(&yaml).await, start(&yaml).await);
    wait_connected(&a).await;
    wait_connected(&b).await;

    mock.once_model("m", Behavior::rate_limited("3600"));
    assert_eq!(a.chat("a/m").await.status, 429);
    assert_eq!(mock.chats().len(), 1);
    // The change travels by pub/sub: give it a moment.
    let deadline = Instant::now() + Duration::from_secs(5);
    while b.gateway.proxy().state().active_cooldowns(Instant::now()) == 0 {
        assert!(Instant::now() < deadline, "gateway B never heard of A's cooldown");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let on_b = b.chat("a/m").await;
    assert_eq!(on_b.status, 429, "{}", on_b.text());
    let retry: u64 = on_b.header("retry-after").parse().unwrap();
    assert!(retry > 3500, "retry-after {retry}: A's Retry-After: 3600");
    assert_eq!(mock.chats().len(), 1, "B called a model A had seen cool");

    // A gateway that starts later loads what Redis holds.
    let c = start(&yaml).await;
    wait_connected(&c).await;
    assert_eq!(c.chat("a/m").await.status, 429);
    assert_eq!(mock.chats().len(), 1, "a new gateway called a model cooling elsewhere");

    // A key the upstream rejects on A is not tried on B.
    a.gateway.proxy().state().clear_cooldowns("a", None, None);
    let deadline = Instant::now() + Duration::from_secs(5);
    while b.gateway.proxy().state().active_cooldowns(Instant::now()) > 0 {
        assert!(Instant::now() < deadline, "gateway B never heard the cooldowns were cleared");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    mock.once_model("m", Behavior::status(401));
    assert_eq!(a.chat("a/m").await.status, 502);
    let deadline = Instant::now() + Duration::from_secs(5);
    while b.gateway.proxy().state().invalid_keys().is_empty() {
        assert!(Instant::now() < deadline, "gateway B never heard A's key was rejected");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let calls = mock.chats().len();
    assert_eq!(b.chat("a/m").await.status, 502);
    assert_eq!(mock.chats().len(), calls, "B tried a key A saw rejected");
}

#[tokio::test]
async fn redis_going_away_loses_no_request_and_its_return_reconciles_the_counts() {
    let mut redis = RedisServer::start();
    let mock = Mock::start().await;
    let yaml = config(&mock, &redis, "{ rpd: 10 }");
    let (a, b) = (start(&yaml).await, start(&yaml).await);
    wait_connected(&a).await;
    wait_connected(&b).await;
    for _ in 0..2 {
        assert_eq!(a.chat("a/m").await.status, 200);
    }

    redis.stop();
    wait_health(&a, "Redis down", |h| h["connected"] == false).await;
    for i in 0..3 {
        let started = Instant::now();
        let answer = a.chat("a/m").await;
        assert_eq!(answer.status, 200, "request {i} with Redis down: {}", answer.text());
        assert!(started.elapsed() < Duration::from_secs(2), "a request waited on the missing Redis");
    }
    let health = redis_health(&a).await;
    assert_eq!(health["connected"], false, "{health}");
    assert!(health["last_error"].is_string(), "{health}");
    assert!(health["pending"].as_u64().unwrap() > 0, "the charges made meanwhile wait: {health}");
    let metrics = a.get("/metrics", &[]).await.text();
    assert!(metrics.contains("freeway_redis_up 0"), "{metrics}");
    assert!(!metrics.contains("freeway_redis_errors_total 0"), "errors were counted: {metrics}");

    // Redis returns empty (no persistence): what A counted meanwhile reaches it.
    redis.restart();
    wait_health(&a, "Redis back, nothing pending", |h| h["connected"] == true && h["pending"] == 0).await;
    wait_connected(&b).await;
    assert!(a.get("/metrics", &[]).await.text().contains("freeway_redis_up 1"));
    // Redis holds A's 3 requests made while it was away; B has counted none
    // itself, so the shared day has exactly 7 left.
    for i in 0..7 {
        let answer = b.chat("a/m").await;
        assert_eq!(answer.status, 200, "request {i} on B: {}", answer.text());
    }
    let refused = b.chat("a/m").await;
    assert_eq!(refused.status, 429, "the counts made while Redis was away were not reconciled: {}", refused.text());
    assert_eq!(mock.chats().len(), 12);
}

#[tokio::test]
async fn a_session_pin_made_on_one_gateway_holds_on_the_other() {
    let redis = RedisServer::start();
    let mock = Mock::start().await;
    let yaml = config(&mock, &redis, "{ rpm: 1000 }");
    let (a, b) = (start(&yaml).await, start(&yaml).await);
    wait_connected(&a).await;
    wait_connected(&b).await;
    a.gateway.proxy().state().pin("conversation-1", "a/m", Duration::from_secs(600), Instant::now());
    let deadline = Instant::now() + Duration::from_secs(5);
    while b.gateway.proxy().state().pinned("conversation-1", Instant::now()).is_none() {
        assert!(Instant::now() < deadline, "gateway B never heard of A's pin");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let later = Instant::now() + Duration::from_secs(590);
    assert_eq!(b.gateway.proxy().state().pinned("conversation-1", later).as_deref(), Some("a/m"));
    assert_eq!(b.gateway.proxy().state().pinned("conversation-1", later + Duration::from_secs(20)), None);
}

/// Not a check but a measurement: the p50 latency Redis mode adds to a
/// request whose model has limits (so every request makes its round trip),
/// against the same gateway config without `state.redis`, in interleaved
/// rounds over one mock. Run it with
/// `cargo test --release --test it redis::latency -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn latency_added_by_redis_mode() {
    let redis = RedisServer::start();
    let mock = Mock::start().await;
    let limits = "{ rpm: 100000000, rpd: 100000000 }";
    let local =
        start(&format!("providers:\n{}    limits: {limits}\n", provider("a", &mock.base_url(), &["ka"], &["m"]))).await;
    let shared = start(&config(&mock, &redis, limits)).await;
    wait_connected(&shared).await;
    let (rounds, per_round) = (5, 400);
    let mut times: [Vec<Duration>; 2] = [Vec::new(), Vec::new()];
    for gw in [&local, &shared] {
        for _ in 0..100 {
            assert_eq!(gw.chat("a/m").await.status, 200);
        }
    }
    for _ in 0..rounds {
        for (i, gw) in [&local, &shared].into_iter().enumerate() {
            for _ in 0..per_round {
                let started = Instant::now();
                assert_eq!(gw.chat("a/m").await.status, 200);
                times[i].push(started.elapsed());
            }
        }
    }
    let quantile = |t: &mut Vec<Duration>, q: f64| {
        t.sort();
        t[((t.len() - 1) as f64 * q) as usize]
    };
    let [mut local_times, mut shared_times] = times;
    let (l50, s50) = (quantile(&mut local_times, 0.5), quantile(&mut shared_times, 0.5));
    let (l90, s90) = (quantile(&mut local_times, 0.9), quantile(&mut shared_times, 0.9));
    println!(
        "{} sequential requests each: p50 memory {l50:?}, redis {s50:?} (+{:?}); p90 memory {l90:?}, redis {s90:?}",
        rounds * per_round,
        s50.saturating_sub(l50)
    );
    assert_eq!(redis_health(&shared).await["errors"], 0);
}
