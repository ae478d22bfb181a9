//! The plugin host's own limits and duties, through real plugins: a call's
//! deadline counts the CPU time it uses, not the time it waits for a CPU;
//! large calls leave the async workers free; a body the gateway accepts can
//! be translated with the default memory; the compiled-plugin cache loads
//! only what no one else could have written.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use freeway::metrics::Metrics;
use freeway::plugin::{Plugin, PluginErrorKind, PluginHost, PluginSettings, Target};
use freeway::{Catalog, Config, Env};
use sha2::Digest;

fn test_plugins(name: &str) -> PathBuf {
    PathBuf::from(env!("FREEWAY_TEST_PLUGINS")).join(name)
}

fn thread_cpu() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

fn host(call_timeout: Duration, dir: Option<&Path>) -> PluginHost {
    let settings = PluginSettings { call_timeout, cache_dir: None, ..PluginSettings::default() };
    PluginHost::load(&settings, dir, Arc::new(Metrics::new())).unwrap()
}

/// A chat request of `bytes` bytes: one long user message.
fn long_message(bytes: usize) -> Vec<u8> {
    let (head, tail) = (r#"{"model":"m","messages":[{"role":"user","content":""#, r#""}]}"#);
    let room = bytes.saturating_sub(head.len() + tail.len());
    let text = "The quick brown fox jumps over the lazy dog. ".repeat(room / 45 + 1);
    format!("{head}{}{tail}", &text[..room]).into_bytes()
}

/// A chat request of `bytes` bytes: a short question and one image as a
/// base64 data URL.
fn big_image(bytes: usize) -> Vec<u8> {
    let head = r#"{"model":"m","messages":[{"role":"user","content":[{"type":"text","text":"What is in this picture?"},{"type":"image_url","image_url":{"url":"data:image/png;base64,"#;
    let tail = r#""}}]}]}"#;
    let room = bytes.saturating_sub(head.len() + tail.len());
    format!("{head}{}{tail}", &"iVBORw0K".repeat(room / 8 + 1)[..room]).into_bytes()
}

/// CPU time of one `build_chat` of `body` on a warm instance (the least of
/// three).
fn cpu_per_call(plugin: &Arc<Plugin>, body: &[u8], target: &Target<'_>) -> Duration {
    let mut session = plugin.session().unwrap();
    session.build_chat(body, target).unwrap();
    (0..3)
        .map(|_| {
            let start = thread_cpu();
            session.build_chat(body, target).unwrap();
            thread_cpu() - start
        })
        .min()
        .unwrap()
}

/// 1 in ~300k requests failed "ran past its deadline" at concurrency 16 on
/// a 2-core machine: the deadline was wall-clock time, so a call whose
/// thread waited for a CPU ran out of time without running.
#[test]
fn healthy_calls_meet_their_deadline_on_an_oversubscribed_machine() {
    let options = Vec::new();
    let target = Target { base_url: "http://x/v1", model: "m", key: Some("k"), options: &options };
    // A body whose translation costs a few ms of CPU here (debug or release).
    let calibration = host(Duration::from_secs(10), None).get("openai-compat").unwrap();
    let mut size = 64 << 10;
    let mut cost = cpu_per_call(&calibration, &long_message(size), &target);
    while cost < Duration::from_millis(4) && size < 4 << 20 {
        size *= 2;
        cost = cpu_per_call(&calibration, &long_message(size), &target);
    }
    let body = long_message(size);
    // Four times the CPU a call needs, far less than what a call waits with
    // eight threads per core.
    let budget = (cost * 4).max(Duration::from_millis(10));
    let plugin = host(budget, None).get("openai-compat").unwrap();
    let threads = 8 * std::thread::available_parallelism().map_or(2, |n| n.get());
    let barrier = Arc::new(Barrier::new(threads));
    let workers: Vec<_> = (0..threads)
        .map(|_| {
            let (plugin, body, barrier, options) = (plugin.clone(), body.clone(), barrier.clone(), options.clone());
            std::thread::spawn(move || {
                let target = Target { base_url: "http://x/v1", model: "m", key: Some("k"), options: &options };
                let mut warm = None;
                barrier.wait();
                (0..12)
                    .map(|_| {
                        let start = Instant::now();
                        // Creating an instance runs under the deadline too.
                        let result = warm.take().map_or_else(|| plugin.session(), Ok).and_then(|mut session| {
                            session.build_chat(&body, &target)?;
                            warm = Some(session);
                            Ok(())
                        });
                        (result, start.elapsed())
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let results: Vec<_> = workers.into_iter().flat_map(|w| w.join().unwrap()).collect();
    let slowest = results.iter().map(|(_, wall)| *wall).max().unwrap();
    let failed: Vec<_> =
        results.iter().filter_map(|(r, wall)| r.as_ref().err().map(|e| (e.to_string(), wall))).collect();
    eprintln!(
        "{threads} threads, {} calls of {cost:?} CPU ({size} bytes), budget {budget:?}: slowest {slowest:?}, {} failed",
        results.len(),
        failed.len()
    );
    assert!(
        failed.is_empty(),
        "{} of {} calls of {cost:?} CPU ({size} bytes) failed with a budget of {budget:?}: {:?}",
        failed.len(),
        results.len(),
        &failed[..failed.len().min(3)]
    );
    assert!(slowest > budget, "no call waited past its budget ({slowest:?}): the machine was not oversubscribed");
}

/// A plugin that never returns is still stopped, after about its budget of
/// CPU time.
#[test]
fn a_looping_plugin_is_stopped_after_its_budget_of_cpu() {
    let budget = Duration::from_millis(100);
    let plugin = host(budget, Some(&test_plugins("misbehave"))).get("misbehave").unwrap();
    let options = Vec::new();
    let target = Target { base_url: "http://x/v1", model: "loop", key: None, options: &options };
    let start = thread_cpu();
    let error = plugin.session().unwrap().build_chat(&long_message(100), &target).unwrap_err();
    let used = thread_cpu() - start;
    assert_eq!(error.kind, PluginErrorKind::Deadline, "{error}");
    assert!(error.message.contains("deadline of 100ms of CPU time"), "{error}");
    assert!(used >= budget && used < budget * 2, "stopped after {used:?} of CPU for a budget of {budget:?}");
}

/// A call on a large input holds its thread for milliseconds; on a
/// multi-thread runtime the worker's other tasks move to another thread
/// meanwhile, instead of waiting for the call.
#[test]
fn a_long_call_on_a_large_input_does_not_stall_the_other_tasks_of_its_worker() {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    runtime.block_on(async {
        let budget = Duration::from_millis(300);
        let plugin = host(budget, Some(&test_plugins("misbehave"))).get("misbehave").unwrap();
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stop = done.clone();
        // Another request's work on the same (only) worker.
        let ticker = tokio::spawn(async move {
            let mut worst = Duration::ZERO;
            let mut last = Instant::now();
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(1)).await;
                worst = worst.max(last.elapsed());
                last = Instant::now();
            }
            worst
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        let call = tokio::spawn(async move {
            let options = Vec::new();
            let target = Target { base_url: "http://x/v1", model: "loop", key: None, options: &options };
            let started = Instant::now();
            let result = plugin.session().unwrap().build_chat(&long_message(1 << 20), &target).map(|_| ());
            (result, started.elapsed())
        });
        let (result, took) = call.await.unwrap();
        done.store(true, std::sync::atomic::Ordering::SeqCst);
        let worst = ticker.await.unwrap();
        assert_eq!(result.unwrap_err().kind, PluginErrorKind::Deadline);
        assert!(took >= budget, "{took:?}");
        assert!(worst < budget / 2, "the other task waited {worst:?} while a call ran for {took:?}");
    });
}

/// A body the gateway accepts (up to `server.max_body_bytes`) must be
/// translatable: 16 MiB chat requests failed in every plugin with the
/// default 64 MiB of plugin memory.
#[test]
fn a_request_of_max_body_bytes_goes_through_every_built_in_plugin_with_the_default_memory() {
    let env = Env::from_map(Vec::<(String, String)>::new());
    let config = Config::from_yaml("{}", "defaults", &env, &Catalog::empty()).unwrap().config;
    let max_body = usize::try_from(config.server.max_body_bytes).unwrap();
    // The memory is the point here; an unoptimised host copies a 16 MiB
    // body in and out of the plugin slowly, so the time is not held to 250ms.
    let settings =
        PluginSettings { call_timeout: Duration::from_secs(30), cache_dir: None, ..config.plugin_settings() };
    assert_eq!(settings.memory_limit, PluginSettings::default().memory_limit);
    let host = PluginHost::load(&settings, None, Arc::new(Metrics::new())).unwrap();
    let options = Vec::new();
    for (shape, body) in [("long message", long_message(max_body)), ("image", big_image(max_body))] {
        assert_eq!(body.len(), max_body);
        serde_json::from_slice::<serde_json::Value>(&body).unwrap();
        for name in ["openai-compat", "gemini", "cohere", "anthropic"] {
            let target = Target { base_url: "http://x/v1", model: "m", key: Some("k"), options: &options };
            let built = host.get(name).unwrap().session().unwrap().build_chat(&body, &target);
            let built = built.unwrap_or_else(|e| panic!("{name}, {shape} of {max_body} bytes: {e}"));
            assert!(built.body.len() > max_body / 2, "{name}, {shape}: the body was lost");
        }
    }
}

#[test]
fn a_plugin_memory_limit_too_small_for_the_largest_body_is_refused_naming_the_minimum() {
    let env = Env::from_map(Vec::<(String, String)>::new());
    let load = |yaml: &str| Config::from_yaml(yaml, "test", &env, &Catalog::empty()).map(|_| ());
    let error = load("plugins:\n  memory_limit: 67108864\n").unwrap_err().to_string();
    let least = freeway::plugin::min_memory_limit(16 << 20);
    assert!(error.contains("plugins.memory_limit"), "{error}");
    assert!(error.contains(&format!("at least {least}")) && error.contains("server.max_body_bytes"), "{error}");
    // A smaller body fits the same memory.
    load("server:\n  max_body_bytes: 1048576\nplugins:\n  memory_limit: 67108864\n").unwrap();
    // A body no plugin memory can translate says to lower it.
    let error = load("server:\n  max_body_bytes: 104857600\n").unwrap_err().to_string();
    assert!(error.contains("lower server.max_body_bytes"), "{error}");
}

/// The file name the disk cache gives a component: its content hash, and
/// the engine's (taken from a file the cache wrote).
fn cache_file(dir: &Path, wasm: &[u8], engine_suffix: &str) -> PathBuf {
    let hex: String = sha2::Sha256::digest(wasm).iter().take(16).map(|b| format!("{b:02x}")).collect();
    dir.join(format!("{hex}-{engine_suffix}"))
}

/// The minimal example plugin made unique to this test (a custom section
/// appended), so that no other test has compiled it in this process.
fn unique_minimal(tag: &str) -> Vec<u8> {
    let mut wasm = std::fs::read(test_plugins("minimal").join("minimal.wasm")).unwrap();
    let name = format!("freeway-test-{tag}-{}-{:?}", std::process::id(), Instant::now());
    let mut section = vec![name.len() as u8];
    section.extend_from_slice(name.as_bytes());
    wasm.push(0); // a custom section
    wasm.push(section.len() as u8);
    wasm.extend(section);
    wasm
}

/// A compiled artifact is native code run unchecked: one that someone else
/// could have written (a group-writable file, or any file in a
/// group-writable folder) is never loaded; the plugin is compiled again.
#[test]
fn a_cached_plugin_that_others_could_have_written_is_compiled_again() {
    let root = tempfile::tempdir().unwrap();
    let cache = root.path().join("cache");
    let settings = |dir: &Path| PluginSettings { cache_dir: Some(dir.to_owned()), ..PluginSettings::default() };
    // The misbehave plugin's artifact: valid code, of the wrong plugin.
    PluginHost::load(&settings(&cache), Some(&test_plugins("misbehave")), Arc::new(Metrics::new())).unwrap();
    let misbehave = std::fs::read(test_plugins("misbehave").join("misbehave.wasm")).unwrap();
    let written: Vec<PathBuf> = std::fs::read_dir(&cache).unwrap().map(|e| e.unwrap().path()).collect();
    let engine_suffix = written[0].file_name().unwrap().to_str().unwrap().split_once('-').unwrap().1.to_owned();
    let planted = std::fs::read(cache_file(&cache, &misbehave, &engine_suffix)).unwrap();

    for (case, file_mode, folder_mode) in [("file", 0o664, 0o700), ("folder", 0o600, 0o777)] {
        let plugins = root.path().join(case);
        std::fs::create_dir(&plugins).unwrap();
        let wasm = unique_minimal(case);
        std::fs::write(plugins.join("minimal.wasm"), &wasm).unwrap();
        let file = cache_file(&cache, &wasm, &engine_suffix);
        std::fs::write(&file, &planted).unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(file_mode)).unwrap();
        std::fs::set_permissions(&cache, std::fs::Permissions::from_mode(folder_mode)).unwrap();
        // Loaded, the planted code would call itself `misbehave`.
        let host = PluginHost::load(&settings(&cache), Some(&plugins), Arc::new(Metrics::new()))
            .unwrap_or_else(|e| panic!("{case}: {e:?}"));
        assert_eq!(host.get("minimal").unwrap().name(), "minimal", "{case}");
        // Compiled again and cached anew, private.
        assert_ne!(std::fs::read(&file).unwrap(), planted, "{case}");
        assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600, "{case}");
    }
}
