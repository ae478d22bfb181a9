//! The process-wide wasmtime engine.
//!
//! One engine serves every gateway in the process: compiled components are
//! tied to their engine, and the pooling allocator reserves its address
//! space once. Per-gateway limits (deadline, memory) are set on each store.

use std::sync::OnceLock;
use std::time::Duration;

use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

/// How often the epoch advances: the granularity of plugin deadlines.
pub const EPOCH_TICK: Duration = Duration::from_millis(2);

/// The most linear memory any plugin instance may have; a gateway's own
/// limit (`plugins.memory_limit`) is lower or equal.
pub const MAX_MEMORY: usize = 256 * 1024 * 1024;

/// Plugin instances alive at once: one per call in flight, plus one per
/// stream being relayed. Past this, a call fails and the dispatcher moves on.
pub const MAX_INSTANCES: u32 = 2000;

static ENGINE: OnceLock<Result<Engine, String>> = OnceLock::new();

/// The engine, created on first use with its epoch ticker.
pub fn engine() -> Result<&'static Engine, String> {
    ENGINE.get_or_init(build).as_ref().map_err(Clone::clone)
}

fn build() -> Result<Engine, String> {
    let mut pool = PoolingAllocationConfig::default();
    pool.total_component_instances(MAX_INSTANCES)
        .total_core_instances(MAX_INSTANCES * 4)
        .total_memories(MAX_INSTANCES * 2)
        .total_tables(MAX_INSTANCES * 4)
        .max_component_instance_size(1 << 20)
        .max_core_instances_per_component(16)
        .max_memories_per_component(4)
        .max_tables_per_component(8)
        .max_memory_size(MAX_MEMORY);
    // Measured with benches/hot_path.rs: keeping the first 64 KiB of each
    // pooled memory resident (memset on reuse instead of madvise) avoids the
    // page faults of a fresh instance touching its stack; more costs more
    // than it saves.
    pool.linear_memory_keep_resident(64 * 1024).table_keep_resident(64 * 1024);
    let mut config = Config::new();
    config
        .wasm_component_model(true)
        .epoch_interruption(true)
        .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    let engine = Engine::new(&config).map_err(|e| format!("cannot start the plugin engine: {e:#}"))?;
    let weak = engine.weak();
    std::thread::Builder::new()
        .name("freeway-epoch".to_owned())
        .spawn(move || {
            while let Some(engine) = weak.upgrade() {
                engine.increment_epoch();
                drop(engine);
                std::thread::sleep(EPOCH_TICK);
            }
        })
        .map_err(|e| format!("cannot start the plugin deadline ticker: {e}"))?;
    Ok(engine)
}

/// Epoch ticks for a deadline (at least 1, rounded up, plus one for the
/// tick in progress).
pub fn ticks(deadline: Duration) -> u64 {
    (deadline.as_micros().div_ceil(EPOCH_TICK.as_micros()) as u64).max(1) + 1
}
