//! The coding agents themselves, offline, against freeway over a mock
//! upstream: Claude Code (`claude -p`, the Messages API) and Codex CLI
//! (`codex exec`, the Responses API) each complete a task that needs a tool
//! call (writing a file), the upstream scripted to call the tool, then to
//! answer in text.
//!
//! The CLIs come from npm (`.ci/run` installs them into
//! `~/.cache/freeway-agents`, or `FREEWAY_AGENTS` names the folder); a test
//! says it was skipped when its CLI is missing, and fails instead under
//! `FREEWAY_REQUIRE_CLIENTS=1` (which `.ci/run` sets). Each run gets its own
//! `HOME`, its traffic is kept on 127.0.0.1 (proxies on a closed local
//! port, `NO_PROXY` for loopback), and telemetry and updates are off.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::{Value, json};

use crate::support::clients::missing;
use crate::support::gateway::{provider, start};
use crate::support::mock::{Mock, THOUGHT_SIGNATURE, signed_agent_of};

const TOKEN: &str = "agent-test-token-0123456789";

/// The folder holding `node_modules/.bin/<name>`, if the CLI is installed.
fn cli(name: &str) -> Option<PathBuf> {
    let base = std::env::var_os("FREEWAY_AGENTS")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/freeway-agents")))?;
    let bin = base.join("node_modules/.bin").join(name);
    bin.exists().then_some(bin)
}

/// A command that cannot leave the machine: its own `HOME`, every proxy a
/// closed port on loopback, loopback itself direct.
fn offline(bin: &Path, home: &Path, cwd: &Path) -> Command {
    let mut cmd = Command::new(bin);
    cmd.current_dir(cwd).env_clear().env("HOME", home).env("PATH", std::env::var_os("PATH").unwrap_or_default());
    for var in ["HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"] {
        cmd.env(var, "http://127.0.0.1:9");
    }
    cmd.env("NO_PROXY", "127.0.0.1,localhost").env("no_proxy", "127.0.0.1,localhost");
    cmd
}

async fn run(mut cmd: Command) -> Output {
    tokio::task::spawn_blocking(move || cmd.output()).await.unwrap().unwrap()
}

#[tokio::test]
async fn claude_code_writes_a_file_through_freeway() {
    let Some(claude) = cli("claude") else {
        eprintln!(
            "skipped: Claude Code is not installed (npm install --prefix ~/.cache/freeway-agents @anthropic-ai/claude-code)"
        );
        return;
    };
    let (home, work) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let file = work.path().join("hello.txt");
    let mock = Mock::start().await;
    mock.on_all(signed_agent_of(vec![(
        "Write",
        json!({"file_path": file.to_string_lossy(), "content": "hi from freeway"}),
    )]));
    let yaml = format!(
        "server:\n  api_keys: [{TOKEN}]\nproviders:\n{}aliases:\n  \"claude-*\": p/agent\n",
        signing_provider(&mock)
    );
    let gw = start(&yaml).await;
    let mut cmd = offline(&claude, home.path(), work.path());
    cmd.args(["-p", "write hello.txt", "--model", "claude-sonnet-4-5", "--permission-mode", "acceptEdits"])
        .env("ANTHROPIC_BASE_URL", gw.url(""))
        .env("ANTHROPIC_API_KEY", TOKEN)
        .env("DISABLE_TELEMETRY", "1")
        .env("DISABLE_AUTOUPDATER", "1")
        .env("DISABLE_ERROR_REPORTING", "1")
        .env("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1");
    let out = run(cmd).await;
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert_eq!(std::fs::read_to_string(&file).unwrap_or_default(), "hi from freeway", "{stdout}\n{stderr}");
    assert!(stdout.contains("done:"), "the answer after the tool result: {stdout}");
    signature_came_back(&mock);
}

/// The mock as a provider that is sent back the signatures on its calls.
fn signing_provider(mock: &Mock) -> String {
    provider("p", &mock.base_url(), &["k"], &["agent"]) + "    options: { reasoning_back: extra_content }\n"
}

/// The agent sent the tool's result back with the call as the target made
/// it: its thought signature too (in a thinking block's signature or a
/// reasoning item's encrypted content, through the agent's own storage).
fn signature_came_back(mock: &Mock) {
    let chats = mock.chats();
    let with_result = chats
        .iter()
        .find(|c| c.body["messages"].as_array().is_some_and(|m| m.iter().any(|m| m["role"] == "tool")))
        .expect("a request with the tool's result");
    let messages = with_result.body["messages"].as_array().unwrap();
    let call = messages.iter().find_map(|m| m["tool_calls"].get(0)).expect("the assistant's call");
    assert_eq!(call["extra_content"]["google"]["thought_signature"], THOUGHT_SIGNATURE, "{call}");
}

/// Codex CLI run headless against freeway over a mock upstream scripted
/// with `calls`, asking for `model` (`aliases` maps it to the mock's
/// model): its output, the folder it worked in, and the mock.
async fn codex(
    model: &str,
    features: &str,
    calls: Vec<(&'static str, Value)>,
) -> Option<(Output, tempfile::TempDir, Mock)> {
    let Some(codex) = cli("codex") else {
        missing("Codex CLI", "npm install --prefix ~/.cache/freeway-agents @openai/codex@0.171.0");
        return None;
    };
    let (home, work) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mock = Mock::start().await;
    mock.on_all(signed_agent_of(calls));
    let yaml = format!(
        "server:\n  api_keys: [{TOKEN}]\nproviders:\n{}aliases:\n  \"gpt-*\": p/agent\n",
        signing_provider(&mock)
    );
    let gw = start(&yaml).await;
    std::fs::create_dir_all(home.path().join(".codex")).unwrap();
    let config = format!(
        "model = \"{model}\"\nmodel_provider = \"freeway\"\ncheck_for_update_on_startup = false\n\n\
         [model_providers.freeway]\nname = \"freeway\"\nbase_url = \"{}\"\nenv_key = \"FREEWAY_TOKEN\"\nwire_api = \"responses\"\n\n\
         [analytics]\nenabled = false\n\n[feedback]\nenabled = false\n\n[features]\nplugins = false\n{features}",
        gw.url("/v1")
    );
    std::fs::write(home.path().join(".codex/config.toml"), config).unwrap();
    let mut cmd = offline(&codex, home.path(), work.path());
    cmd.args(["exec", "--skip-git-repo-check", "--dangerously-bypass-approvals-and-sandbox", "write hello.txt"])
        .env("FREEWAY_TOKEN", TOKEN);
    let out = run(cmd).await;
    Some((out, work, mock))
}

#[tokio::test]
async fn codex_writes_a_file_through_freeway() {
    let Some((out, work, mock)) = codex(
        "p/agent",
        "",
        vec![
            ("exec_command", json!({"cmd": "printf 'hi from freeway' > hello.txt"})),
            ("shell", json!({"command": ["bash", "-lc", "printf 'hi from freeway' > hello.txt"]})),
        ],
    )
    .await
    else {
        return;
    };
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let written = std::fs::read_to_string(work.path().join("hello.txt")).unwrap_or_default();
    assert_eq!(written, "hi from freeway", "{stdout}\n{stderr}");
    assert!(stdout.contains("done:"), "the answer after the tool result: {stdout}");
    signature_came_back(&mock);
}

/// For its newest models Codex sends its tools as an `additional_tools`
/// input item, in namespaces, and works in "code mode": one free-form
/// (custom) tool, `exec`, whose input is JavaScript calling the other
/// tools. The model's script reaches it as a `custom_tool_call`.
#[tokio::test]
async fn codex_runs_a_script_through_its_free_form_exec_tool() {
    let script = "await tools.exec_command({cmd: \"printf 'hi from a script' > hello.txt\"});";
    let Some((out, work, mock)) = codex("gpt-6.2-sol", "", vec![("exec", json!({"input": script}))]).await else {
        return;
    };
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let offered: Vec<Value> = mock.chats().first().map(|c| c.body["tools"].clone()).into_iter().collect();
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let written = std::fs::read_to_string(work.path().join("hello.txt")).unwrap_or_default();
    assert_eq!(written, "hi from a script", "{stdout}\n{stderr}\ntools offered: {offered:?}");
    assert!(stdout.contains("done:"), "the answer after the tool result: {stdout}");
    signature_came_back(&mock);
}
