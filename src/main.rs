//! The `freeway` binary: a thin shell over [`freeway::cli`].

// mimalloc: a gateway allocates and frees small buffers on every request.
// Measured side by side under oha at concurrency 16 (benches/load.sh setup):
// streams cost ~14 % less CPU per request than with glibc's allocator,
// non-stream requests the same within noise.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    freeway::cli::main()
}
