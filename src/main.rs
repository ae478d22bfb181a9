//! The `freeway` binary: a thin shell over [`freeway::cli`].

fn main() -> std::process::ExitCode {
    freeway::cli::main()
}
