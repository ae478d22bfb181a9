//! The process-wide wasmtime engine.
//!
//! One engine serves every gateway in the process: compiled components are
//! tied to their engine, and the pooling allocator reserves its address
//! space once. Per-gateway limits (deadline, memory) are set on each store.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, UpdateDeadline};

/// How often the epoch advances: how often a running call's CPU time is
/// looked at, so the most a call can overrun its budget by (about one tick
/// before it is first looked at, one after).
pub const EPOCH_TICK: Duration = Duration::from_millis(2);

/// The most linear memory any plugin instance may have; a gateway's own
/// limit (`plugins.memory_limit`) is lower or equal.
pub const MAX_MEMORY: usize = 256 * 1024 * 1024;

/// The default of `plugins.memory_limit`: enough to translate a body of the
/// default `server.max_body_bytes` (16 MiB), see [`min_memory_limit`].
pub const DEFAULT_MEMORY_LIMIT: usize = 128 * 1024 * 1024;

/// Linear memory a built-in plugin needs per byte of request body it
/// translates. Measured peaks of `build_chat` on one large user message and
/// on one large base64 image, 1 to 16 MiB (the same for both shapes):
/// openai-compat 5.1x the body, gemini and anthropic 6.1x, cohere 7.1x, each
/// plus about 2 MiB (the parsed request, the built one, and the copies in and
/// out of the instance).
const MEMORY_PER_BODY_BYTE: u64 = 7;
/// ...plus this much: the instance's own memory and some margin.
const MEMORY_BASE: u64 = 4 * 1024 * 1024;

/// The least `plugins.memory_limit` with which every built-in plugin can
/// translate a chat request of `body` bytes made of large strings (a long
/// message, an image). A body of many small JSON values needs several times
/// more.
pub fn min_memory_limit(body: u64) -> u64 {
    body.saturating_mul(MEMORY_PER_BODY_BYTE).saturating_add(MEMORY_BASE)
}

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
    let thread = std::thread::Builder::new()
        .name("freeway-epoch".to_owned())
        .spawn(move || TICKER.run(&weak))
        .map_err(|e| format!("cannot start the plugin deadline ticker: {e}"))?;
    let _ = TICKER.thread.set(thread.thread().clone());
    Ok(engine)
}

/// Ticks the ticker waits with no plugin call before it parks: an idle
/// gateway wakes no thread 500 times a second, while under load (a call
/// every few milliseconds or more often) the ticker never parks at all.
const IDLE_TICKS: u32 = 5;

/// The epoch ticker's state. It advances the epoch every [`EPOCH_TICK`]
/// while plugin calls run or have started lately, and parks once none has
/// for [`IDLE_TICKS`]; the next call to start wakes it.
struct Ticker {
    /// Calls running now. The ticker never parks while one runs: the call
    /// would then never reach its deadline.
    running: AtomicUsize,
    /// A call started since the ticker last looked.
    started: AtomicBool,
    /// The ticker is parked, or about to park.
    parked: AtomicBool,
    thread: OnceLock<std::thread::Thread>,
}

static TICKER: Ticker = Ticker {
    running: AtomicUsize::new(0),
    started: AtomicBool::new(false),
    parked: AtomicBool::new(false),
    thread: OnceLock::new(),
};

impl Ticker {
    fn run(&self, engine: &wasmtime::EngineWeak) {
        let mut idle = 0;
        while let Some(engine) = engine.upgrade() {
            engine.increment_epoch();
            drop(engine);
            std::thread::sleep(EPOCH_TICK);
            let busy = self.started.swap(false, Ordering::Relaxed) || self.running.load(Ordering::SeqCst) > 0;
            idle = if busy { 0 } else { idle + 1 };
            if idle < IDLE_TICKS {
                continue;
            }
            idle = 0;
            // With `Running::start`, a store-then-load pair on each side
            // (SeqCst): either this load sees the call that starts, or
            // that call sees `parked` and wakes the thread.
            self.parked.store(true, Ordering::SeqCst);
            if self.running.load(Ordering::SeqCst) > 0 {
                self.parked.store(false, Ordering::SeqCst);
                continue;
            }
            // Spurious wake-ups, and a wake-up left over from a call that
            // found the flag set just as this thread cleared it, go round.
            while self.parked.load(Ordering::SeqCst) {
                std::thread::park();
            }
        }
    }
}

/// A plugin call in progress: while one exists the epoch advances, so that
/// the call's deadline is checked. Made just before the guest is entered,
/// dropped when it returns.
#[must_use = "the ticker may park while the call runs if this is dropped"]
pub struct Running(());

impl Running {
    /// Counts a call as running and wakes the ticker if it is parked.
    pub fn start() -> Self {
        TICKER.running.fetch_add(1, Ordering::SeqCst);
        if !TICKER.started.load(Ordering::Relaxed) {
            TICKER.started.store(true, Ordering::Relaxed);
        }
        if TICKER.parked.load(Ordering::SeqCst)
            && TICKER.parked.swap(false, Ordering::SeqCst)
            && let Some(thread) = TICKER.thread.get()
        {
            thread.unpark();
        }
        Self(())
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        TICKER.running.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Epoch ticks that cover `time` (at least 1, rounded up, plus one for the
/// tick in progress), capped so that adding it to the current epoch cannot overflow (a year
/// of ticks; the backstop stops a call long before).
fn ticks(time: Duration) -> u64 {
    const MOST: u64 = 365 * 24 * 3600 * 500;
    u64::try_from(time.as_micros().div_ceil(EPOCH_TICK.as_micros())).unwrap_or(MOST).clamp(1, MOST) + 1
}

/// The wall-clock backstop of a call: this many times its CPU budget...
const BACKSTOP_FACTOR: u32 = 10;
/// ...and never less than this: on a busy machine a call may wait for a CPU
/// far longer than it runs; only a call starved for this long is given up.
const BACKSTOP_FLOOR: Duration = Duration::from_secs(2);

/// The time limit of one plugin call: the CPU time the call's own thread
/// spends in it, so that a call waiting for a CPU on a busy machine does not
/// run out of time without running; and, as a backstop, a generous wall
/// clock.
///
/// A call starts with its epoch deadline one tick away and no baseline:
/// most calls take microseconds and end before any tick, paying nothing.
/// At the first tick ([`Deadline::on_tick`]) the thread's CPU clock is read
/// as the baseline (the CPU the call used before it, at most about one tick,
/// goes uncounted); the next check is due when the whole remaining budget
/// could have been spent, since a thread cannot use CPU faster than the wall
/// clock runs, so a call that uses its budget is looked at a handful of times.
#[derive(Debug, Clone)]
pub struct Deadline {
    budget: Duration,
    backstop: Duration,
    /// The thread's CPU time and the wall clock at the call's first tick.
    baseline: Option<(Duration, Instant)>,
    /// Why the call was interrupted, once it has been.
    expired: Option<Expired>,
}

/// Which limit stopped a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expired {
    /// It used its CPU budget.
    Cpu,
    /// It ran past the wall-clock backstop before using its budget.
    Wall,
}

impl Deadline {
    /// A deadline of `budget` CPU time per call.
    pub fn new(budget: Duration) -> Self {
        Self {
            budget,
            backstop: budget.saturating_mul(BACKSTOP_FACTOR).max(BACKSTOP_FLOOR),
            baseline: None,
            expired: None,
        }
    }

    /// Prepares for a new call: returns the epoch deadline to set, in ticks.
    pub fn start_call(&mut self) -> u64 {
        self.baseline = None;
        self.expired = None;
        1
    }

    /// The call's CPU budget.
    pub fn budget(&self) -> Duration {
        self.budget
    }

    /// The wall-clock time after which a call is stopped whatever CPU it used.
    pub fn backstop(&self) -> Duration {
        self.backstop
    }

    /// Which limit stopped the last call, if one did.
    pub fn expired(&self) -> Option<Expired> {
        self.expired
    }

    /// The epoch deadline was reached while the call runs: go on (with the
    /// ticks until the next check) or stop it.
    pub fn on_tick(&mut self) -> UpdateDeadline {
        let cpu = thread_cpu_time();
        let Some((cpu_start, wall_start)) = self.baseline else {
            self.baseline = Some((cpu, Instant::now()));
            return UpdateDeadline::Continue(ticks(self.budget));
        };
        let used = cpu.saturating_sub(cpu_start);
        let waited = wall_start.elapsed();
        let expired = if used >= self.budget {
            Some(Expired::Cpu)
        } else if waited >= self.backstop {
            Some(Expired::Wall)
        } else {
            None
        };
        match expired {
            Some(why) => {
                self.expired = Some(why);
                UpdateDeadline::Interrupt
            }
            None => UpdateDeadline::Continue(ticks((self.budget - used).min(self.backstop - waited))),
        }
    }
}

/// The CPU time the calling thread has used (user and system).
#[cfg(unix)]
pub fn thread_cpu_time() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    // The clock never reads negative; a zero keeps the arithmetic total.
    Duration::new(u64::try_from(t.tv_sec).unwrap_or(0), u32::try_from(t.tv_nsec).unwrap_or(0))
}

/// Without a per-thread CPU clock, the budget is wall-clock time since the
/// process started (the budget then also counts time spent waiting).
#[cfg(not(unix))]
pub fn thread_cpu_time() -> Duration {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use wasmtime::UpdateDeadline;

    use super::{Deadline, EPOCH_TICK, Expired, thread_cpu_time};

    fn spin(cpu: Duration) {
        let start = thread_cpu_time();
        while thread_cpu_time() - start < cpu {
            std::hint::black_box(0);
        }
    }

    fn ticks_of(update: UpdateDeadline) -> Option<u64> {
        match update {
            UpdateDeadline::Continue(ticks) => Some(ticks),
            _ => None,
        }
    }

    #[test]
    fn waiting_does_not_spend_the_budget_running_does() {
        let budget = Duration::from_millis(20);
        let mut deadline = Deadline::new(budget);
        assert_eq!(deadline.start_call(), 1, "the first check is at the next tick");
        // The baseline; the next check when the whole budget could be spent.
        let whole = (budget.as_micros() / EPOCH_TICK.as_micros()) as u64 + 1;
        assert_eq!(ticks_of(deadline.on_tick()), Some(whole));
        std::thread::sleep(budget * 2);
        assert!(ticks_of(deadline.on_tick()).is_some(), "waiting used the budget");
        spin(budget);
        assert!(ticks_of(deadline.on_tick()).is_none(), "running past the budget was not stopped");
        assert_eq!(deadline.expired(), Some(Expired::Cpu));
        deadline.start_call();
        assert_eq!(deadline.expired(), None, "a new call starts afresh");
        assert_eq!(ticks_of(deadline.on_tick()), Some(whole));
    }

    #[test]
    fn a_call_that_waits_past_the_backstop_is_stopped() {
        let mut deadline = Deadline { backstop: Duration::from_millis(30), ..Deadline::new(Duration::from_secs(1)) };
        deadline.start_call();
        deadline.on_tick();
        std::thread::sleep(Duration::from_millis(40));
        assert!(ticks_of(deadline.on_tick()).is_none());
        assert_eq!(deadline.expired(), Some(Expired::Wall));
    }

    #[test]
    fn the_backstop_is_generous() {
        assert_eq!(Deadline::new(Duration::from_millis(250)).backstop(), Duration::from_millis(2500));
        assert_eq!(Deadline::new(Duration::from_millis(10)).backstop(), Duration::from_secs(2));
    }
}
