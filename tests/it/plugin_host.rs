//! The plugin host's own limits and duties, through real plugins: the
//! compiled-plugin cache loads only what no one else could have written.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use freeway::metrics::Metrics;
use freeway::plugin::{PluginHost, PluginSettings};
use sha2::Digest;

fn test_plugins(name: &str) -> PathBuf {
    PathBuf::from(env!("FREEWAY_TEST_PLUGINS")).join(name)
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
