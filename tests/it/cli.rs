//! The `freeway` binary: `check` exit codes and messages, `serve` with no
//! config, SIGTERM.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support::gateway::{Answer, chat_body, provider, send};
use crate::support::mock::Mock;

fn freeway() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_freeway"));
    // A clean environment: no provider key from the machine running the tests.
    cmd.env_clear().env("PATH", std::env::var("PATH").unwrap_or_default()).env("RUST_LOG", "info");
    cmd
}

fn write(dir: &tempfile::TempDir, name: &str, text: &str) -> std::path::PathBuf {
    let path = dir.path().join(name);
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn check_lists_every_problem_with_its_line_and_fails() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        &dir,
        "bad.yaml",
        "server:\n  listen: nowhere\n  api_keys: [\"${UNSET_TOKEN}\"]\nproviders:\n  groq:\n    kyes: [x]\n  custom:\n    base_url: http://127.0.0.1:9/v1\nroutes:\n  r:\n    targets: [grok/llama]\ndispatch:\n  max_attempts: 0\n  colldown: 5s\n",
    );
    let out = freeway().arg("check").arg("--config").arg(&path).output().unwrap();
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stderr);
    for expected in [
        "7 problems",
        "line 2: server.listen: `nowhere` is not an address",
        "line 3: server.api_keys.0: is empty because UNSET_TOKEN is not set",
        "line 6: providers.groq.kyes: unknown key `kyes`",
        "line 7: providers.custom: `custom` is not a catalog provider, so it needs `plugin`",
        "line 11: routes.r.targets.0: unknown provider `grok` in `grok/llama` (did you mean `groq`?)",
        "line 13: dispatch.max_attempts: must be at least 1",
        "line 14: dispatch.colldown: unknown key `colldown`",
    ] {
        assert!(text.contains(expected), "missing `{expected}` in:\n{text}");
    }
}

#[test]
fn check_reports_type_errors_with_their_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(&dir, "t.yaml", "dispatch:\n  timeout: 30\n");
    let out = freeway().arg("check").arg("--config").arg(&path).output().unwrap();
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("line 2: dispatch.timeout: `30` has no unit; write `30s`"), "{text}");
    let path = write(&dir, "y.yaml", "server: [unclosed\n");
    let out = freeway().arg("check").arg("--config").arg(&path).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not valid YAML"));
}

/// Runs `freeway check` on `yaml`; returns whether it passed and what it said.
fn check(yaml: &str) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = write(&dir, "c.yaml", yaml);
    let out = freeway().arg("check").arg("--config").arg(&path).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

#[test]
fn check_reports_unknown_keys_after_a_type_error() {
    let (ok, text) =
        check("server:\n  listen: 127.0.0.1:8080\n  colour: blue\ndispatch:\n  timeout: soon\n  retries: 3\n");
    assert!(!ok, "{text}");
    for expected in [
        "3 problems",
        "line 3: server.colour: unknown key `colour`",
        "line 5: dispatch.timeout: `soon` is not a duration",
        "line 6: dispatch.retries: unknown key `retries`",
    ] {
        assert!(text.contains(expected), "missing `{expected}` in:\n{text}");
    }
}

#[test]
fn check_reports_every_type_error_in_every_section_and_list() {
    let (ok, text) = check(
        "server:\n  max_body_bytes: lots\n\
         providers:\n  p:\n    plugin: openai-compat\n    base_url: http://127.0.0.1:9/v1\n    models:\n\
         \x20     - first\n      - 42\n      - { id: third, contxt: 8 }\n      - [not, a, model]\n      - { id: fifth, context: huge }\n\
         routes:\n  r:\n    targets: [p/first, p/fifth]\n    strategy: best\n\
         dispatch:\n  max_attempts: -1\n  cooldown: 9days\n",
    );
    assert!(!ok, "{text}");
    for expected in [
        "8 problems",
        "line 2: server.max_body_bytes: invalid type: string \"lots\", expected u64",
        "line 9: providers.p.models.1: invalid type: integer `42`, expected a string or a map",
        "line 10: providers.p.models.2.contxt: unknown key `contxt`",
        "line 11: providers.p.models.3: invalid type: sequence, expected a string or a map",
        "line 12: providers.p.models.4.context: invalid type: string \"huge\", expected u64",
        "line 16: routes.r.strategy: unknown variant `best`",
        "line 18: dispatch.max_attempts: invalid value: integer `-1`, expected u32",
        "line 19: dispatch.cooldown: `9days` is out of range: must be at most 7days",
    ] {
        assert!(text.contains(expected), "missing `{expected}` in:\n{text}");
    }
}

#[test]
fn check_refuses_durations_and_limits_that_would_overflow_at_run_time() {
    let (ok, text) = check(
        "dispatch:\n  stream_idle_timeout: 500000000000years\n  first_byte_timeout: 2days\n\
         providers:\n  groq:\n    limits: { tpd: 18446744073709551615 }\n",
    );
    assert!(!ok, "{text}");
    for expected in [
        "3 problems",
        "line 2: dispatch.stream_idle_timeout: `500000000000years` is longer than 100 years",
        "line 3: dispatch.first_byte_timeout: `2days` is out of range: must be between 1ms and 1day",
        "line 6: providers.groq.limits.tpd: `18446744073709551615` is out of range: must be between 1 and 1000000000000",
    ] {
        assert!(text.contains(expected), "missing `{expected}` in:\n{text}");
    }
}

#[test]
fn check_refuses_a_quota_reset_that_is_not_a_calendar_naming_provider_and_line() {
    let (ok, text) = check(
        "providers:\n  gemini:\n    quota_reset: \"00:00 America/Los_Angeles\"\n\
         \x20 openrouter:\n    quota_reset: \"midnight UTC\"\n\
         \x20 custom:\n    plugin: openai-compat\n    base_url: http://127.0.0.1:9/v1\n    quota_reset: 00:00 Mars/Olympus\n",
    );
    assert!(!ok, "{text}");
    for expected in [
        "2 problems",
        "line 5: providers.openrouter.quota_reset: `midnight UTC`: `midnight` is not a time of day",
        "line 9: providers.custom.quota_reset: `00:00 Mars/Olympus`: `Mars/Olympus` is not an IANA time zone",
        "e.g. \"00:00 America/Los_Angeles\"",
    ] {
        assert!(text.contains(expected), "missing `{expected}` in:\n{text}");
    }
    // The good one passes alone, a monthly one too.
    let (ok, text) = check(
        "providers:\n  gemini:\n    quota_reset: \"00:00 America/Los_Angeles\"\n  cohere:\n    quota_reset: monthly 00:00 UTC\n",
    );
    assert!(ok, "{text}");
}

#[test]
fn check_passes_a_good_config_and_reads_dot_env() {
    let dir = tempfile::tempdir().unwrap();
    write(&dir, ".env", "GROQ_API_KEY=from-dot-env\nMY_TIMEOUT=45s\n");
    let path = write(
        &dir,
        "good.yaml",
        "providers:\n  groq:\n    keys: [\"${GROQ_API_KEY}\", \"${GROQ_API_KEY_2}\"]\ndispatch:\n  timeout: ${MY_TIMEOUT:-30s}\n  cooldown: 2m\n",
    );
    let out = freeway().current_dir(dir.path()).arg("check").arg("--config").arg(&path).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("1 provider(s) enabled: groq"), "{stdout}");
    assert!(stdout.contains("GROQ_API_KEY_2 is not set; this key is skipped"), "{stdout}");
}

#[test]
fn the_example_config_is_valid() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/freeway.yaml");
    let out = freeway().env("GROQ_API_KEY", "x").args(["check", "--config", path]).output().unwrap();
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
}

#[test]
fn serve_refuses_a_public_address_without_tokens() {
    let out = freeway().args(["serve", "--listen", "0.0.0.0:0"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("server.api_keys is empty"));
}

/// A running `freeway serve` on a free port.
/// A child process killed when the test lets go of it, even by panicking:
/// a failed assertion must not leave a gateway running.
struct KillOnDrop(std::process::Child);

impl std::ops::Deref for KillOnDrop {
    type Target = std::process::Child;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::ops::DerefMut for KillOnDrop {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Served {
    child: KillOnDrop,
    addr: String,
    /// The log up to "listening on".
    startup: String,
    /// The whole log, once the process has exited.
    log: std::thread::JoinHandle<String>,
}

/// Starts `cmd` (a `freeway` command) as `serve` on a free port and waits
/// until it listens.
fn spawn_serve(mut cmd: Command, args: &[&str]) -> Served {
    let mut child = cmd
        .args(["serve", "--listen", "127.0.0.1:0"])
        .args(args)
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let log = std::thread::spawn(move || {
        let mut log = String::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            log.push_str(&line);
            log.push('\n');
            if let Some(rest) = line.split("listening on http://").nth(1) {
                let _ = tx.send((rest.trim_end_matches("/v1").trim().to_owned(), log.clone()));
            }
        }
        log
    });
    let child = KillOnDrop(child);
    let (addr, startup) = rx.recv_timeout(Duration::from_secs(30)).expect("serve did not start");
    Served { child, addr, startup, log }
}

#[tokio::test]
async fn serve_with_no_config_and_no_keys_starts_and_explains_then_stops_on_sigterm() {
    let Served { mut child, addr, startup, .. } = spawn_serve(freeway(), &[]);
    assert!(startup.contains("no provider is configured"), "{startup}");
    let answer = Answer::read(
        send(&format!("http://{addr}/v1/chat/completions"), "POST", &chat_body("chat-free", false), &[]).await,
    )
    .await;
    assert_eq!(answer.status, 503);
    assert!(answer.text().contains("GROQ_API_KEY"), "{}", answer.text());
    let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(status.success());
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "exit {status:?}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "freeway did not stop on SIGTERM");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn no_upstream_key_appears_in_the_log_even_at_trace_level() {
    use crate::support::mock::{Behavior, Mock};
    let secret = "sk-leaky-secret-0123456789";
    let m = Mock::start().await;
    let echo = format!(r#"{{"error":{{"message":"Incorrect API key provided: {secret}"}}}}"#);
    m.on_model("bad-key", Behavior::Status { status: 401, retry_after: None, body: echo.clone() });
    m.on_model("bad-request", Behavior::Status { status: 400, retry_after: None, body: echo.clone() });
    m.on_model("broken", Behavior::Status { status: 500, retry_after: None, body: echo.clone() });
    // A 200 that is an error, and a stream whose second event is one: both
    // go through the plugin before they reach the log.
    m.on_model("error-answer", Behavior::Raw(echo.clone()));
    let chunk = serde_json::json!({"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
        "choices": [{"index": 0, "delta": {"content": "hi"}, "finish_reason": null}]});
    let events = vec![format!("data: {chunk}\n\n"), format!("data: {echo}\n\n")];
    m.on_model(
        "error-event",
        Behavior::Custom(std::sync::Arc::new(move |_| crate::support::mock::Reply::sse(events.clone()))),
    );
    let dir = tempfile::tempdir().unwrap();
    let config = write(
        &dir,
        "leak.yaml",
        &format!(
            "providers:\n  p:\n    plugin: openai-compat\n    base_url: {}\n    keys: [\"{secret}\"]\n    models: [ok, bad-key, bad-request, broken, error-answer, error-event]\n",
            m.base_url()
        ),
    );
    let mut cmd = freeway();
    cmd.env("RUST_LOG", "info,freeway=trace,hyper=trace,hyper_util=trace,h2=trace,rustls=trace");
    let Served { mut child, addr, log: reader, .. } = spawn_serve(cmd, &["--config", config.to_str().unwrap()]);
    for model in ["p/ok", "p/bad-request", "p/broken", "p/error-answer", "p/error-event", "p/bad-key", "p/ok"] {
        for stream in [false, true] {
            let url = format!("http://{addr}/v1/chat/completions");
            let answer = Answer::read(send(&url, "POST", &chat_body(model, stream), &[]).await).await;
            assert!(!answer.text().contains(secret), "{model}: {}", answer.text());
        }
    }
    Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    let _ = child.wait();
    let log = reader.join().unwrap();
    assert!(log.contains("upstream attempt failed"), "the log shows no attempts:\n{log}");
    assert!(
        !log.contains(secret),
        "the key leaked into the log:\n{}",
        log.lines().filter(|l| l.contains(secret)).collect::<Vec<_>>().join("\n")
    );
}

#[test]
fn check_refuses_a_ca_file_that_is_not_pem() {
    let dir = tempfile::tempdir().unwrap();
    write(&dir, "ca.pem", "not a certificate");
    let path = write(&dir, "c.yaml", "dispatch:\n  ca_file: ca.pem\n");
    let out = freeway().arg("check").arg("--config").arg(&path).output().unwrap();
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("line 2: dispatch.ca_file:") && text.contains("no certificate"), "{text}");
}

#[test]
fn models_prints_size_and_tier() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(&dir, "m.yaml", "discovery: { enabled: false }\n");
    let out = freeway().env("GROQ_API_KEY", "x").args(["models", "--config"]).arg(&path).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.lines().next().unwrap().contains("SIZE") && text.contains("TIER"), "{text}");
    let row = text
        .lines()
        .find(|l| l.starts_with("groq") && l.contains("openai/gpt-oss-120b"))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(row.contains("120B") && row.contains("reasoning"), "{row}");
}

#[test]
fn check_reports_a_policy_that_does_not_compile() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("policies")).unwrap();
    write(&dir, "policies/10-broken.rhai", "fn request(req, settings) {\n  req.model = ;\n}\n");
    let path = write(&dir, "c.yaml", "policies:\n  dir: policies\n");
    let out = freeway().arg("check").arg("--config").arg(&path).output().unwrap();
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("10-broken.rhai:2"), "{text}");
}

/// Serves `config` with the binary and sends `n` chat requests for `model`;
/// returns the process (still running) and the statuses.
async fn serve_and_chat(config: &Path, model: &str, n: usize) -> (Served, Vec<u16>) {
    let served = spawn_serve(freeway(), &["--config", config.to_str().unwrap()]);
    let mut statuses = Vec::new();
    for _ in 0..n {
        let url = format!("http://{}/v1/chat/completions", served.addr);
        statuses.push(Answer::read(send(&url, "POST", &chat_body(model, false), &[]).await).await.status.as_u16());
    }
    (served, statuses)
}

#[tokio::test]
async fn kill_9_loses_at_most_the_last_second_of_state() {
    let dir = tempfile::tempdir().unwrap();
    let mock = Mock::start().await;
    let config = dir.path().join("freeway.yaml");
    std::fs::write(
        &config,
        format!(
            "providers:\n{}    limits: {{ rpd: 3 }}\nstate:\n  path: state/freeway.db\n",
            provider("a", &mock.base_url(), &["ka"], &["m"])
        ),
    )
    .unwrap();
    let (mut served, statuses) = serve_and_chat(&config, "a/m", 3).await;
    assert_eq!(statuses, [200, 200, 200]);
    // More than the write-behind interval, then no chance to flush.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let status = Command::new("kill").args(["-KILL", &served.child.id().to_string()]).status().unwrap();
    assert!(status.success());
    served.child.wait().unwrap();
    assert!(dir.path().join("state/freeway.db").exists(), "state.path is relative to the config's folder");
    let (_served, statuses) = serve_and_chat(&config, "a/m", 1).await;
    assert_eq!(statuses, [429], "the day's 3 requests were forgotten by kill -9");
    assert_eq!(mock.chats().len(), 3);
}

/// The voluntary context switches of `pid`'s thread named `name` so far
/// (Linux: /proc); each is the thread waking up.
#[cfg(target_os = "linux")]
fn wakeups(pid: u32, name: &str) -> u64 {
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap().map_while(Result::ok) {
        if std::fs::read_to_string(task.path().join("comm")).unwrap_or_default().trim() == name {
            let status = std::fs::read_to_string(task.path().join("status")).unwrap();
            let line = status.lines().find(|l| l.starts_with("voluntary_ctxt_switches:")).unwrap();
            return line.split_whitespace().nth(1).unwrap().parse().unwrap();
        }
    }
    panic!("no thread named {name} in process {pid}");
}

#[cfg(target_os = "linux")]
#[tokio::test]
async fn an_idle_gateway_parks_its_plugin_ticker_and_a_looping_plugin_still_meets_its_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let plugins = std::path::PathBuf::from(env!("FREEWAY_TEST_PLUGINS")).join("misbehave");
    let config = write(
        &dir,
        "freeway.yaml",
        &format!(
            "state: {{ path: \"\" }}\nplugins:\n  dir: {}\n  call_timeout: 100ms\nproviders:\n  bad:\n    plugin: misbehave\n    base_url: http://127.0.0.1:9/v1\n    keys: [k]\n    models: [loop, fine]\n",
            plugins.display()
        ),
    );
    let served = spawn_serve(freeway(), &["--config", config.to_str().unwrap()]);
    let pid = served.child.id();
    // Idle: the 2 ms ticker parks after a few ticks instead of waking 500
    // times a second.
    for round in 0..2 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let before = wakeups(pid, "freeway-epoch");
        tokio::time::sleep(Duration::from_secs(1)).await;
        let woke = wakeups(pid, "freeway-epoch") - before;
        assert!(woke < 50, "round {round}: the idle ticker woke {woke} times in a second");
        // A plugin call that never returns wakes it, and is stopped at its
        // deadline (a parked ticker would let it run forever).
        let started = std::time::Instant::now();
        let answer = Answer::read(
            send(&format!("http://{}/v1/chat/completions", served.addr), "POST", &chat_body("bad/loop", false), &[])
                .await,
        )
        .await;
        assert_eq!(answer.status, 502, "{}", answer.text());
        let reason = answer.json()["error"]["attempts"][0]["reason"].as_str().unwrap().to_owned();
        assert!(reason.contains("deadline"), "{reason}");
        assert!(started.elapsed() < Duration::from_secs(5), "the loop ran {:?}", started.elapsed());
    }
}
