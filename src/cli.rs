//! The `freeway` command line: `serve`, `check`, `models`, `status`, `replay`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::catalog::Catalog;
use crate::catalog::discovery::list_models;
use crate::config::{Config, Env, Loaded, check_exposure, parse_listen};
use crate::gateway::Gateway;
use crate::plugin::Target;
use crate::server::{serve_on_threads, shutdown_signal};

mod replay;
mod status;

/// How long `check --probe` waits for one key's model listing.
const PROBE_TIMEOUT: Duration = Duration::from_secs(15);

/// freeway: one OpenAI-compatible endpoint over the free tiers of many LLM providers.
#[derive(Debug, Parser)]
#[command(name = "freeway", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the gateway.
    Serve {
        /// YAML config file (default: the embedded catalog, keys from the environment).
        #[arg(long, short, env = "FREEWAY_CONFIG")]
        config: Option<PathBuf>,
        /// Address to listen on, overriding server.listen.
        #[arg(long, short)]
        listen: Option<String>,
    },
    /// Validate the config (and with --probe, every key); non-zero exit on any problem.
    Check {
        /// YAML config file.
        #[arg(long, short, env = "FREEWAY_CONFIG")]
        config: Option<PathBuf>,
        /// Make one cheap live call (model listing) per provider key.
        #[arg(long)]
        probe: bool,
    },
    /// List the routable models as a table.
    Models {
        /// YAML config file.
        #[arg(long, short, env = "FREEWAY_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Show a running gateway's quota state: use, limits, resets, cooldowns, rejected keys.
    Status {
        /// The gateway's address.
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        url: String,
        /// An admin token (server.admin_keys).
        #[arg(long, env = "FREEWAY_ADMIN_KEY", hide_env_values = true)]
        admin_key: Option<String>,
        /// Show every model, including those with nothing used and nothing cooling.
        #[arg(long)]
        all: bool,
        /// Print the gateway's JSON answer as it is.
        #[arg(long)]
        json: bool,
    },
    /// Run the logged requests through another policies folder (no upstream is called) and show what would route differently.
    Replay {
        /// How far back: a duration (24h, 7d) or an RFC 3339 time.
        #[arg(long, default_value = "24h")]
        since: String,
        /// The policies folder to replay with.
        #[arg(long)]
        policies: PathBuf,
        /// The config to replay with (default: the config in force; its state settings are not used).
        #[arg(long)]
        config: Option<PathBuf>,
        /// The config in force: its state database holds the log, its policies are the baseline.
        #[arg(long, env = "FREEWAY_CONFIG")]
        current: Option<PathBuf>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Runs the command line; the binary's `main` is only this.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("freeway: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = match cli.command {
        Command::Serve { config, listen } => runtime.block_on(run_serve(config.as_deref(), listen.as_deref())),
        Command::Check { config, probe } => runtime.block_on(run_check(config.as_deref(), probe)),
        Command::Models { config } => runtime.block_on(run_models(config.as_deref())),
        Command::Status { url, admin_key, all, json } => {
            runtime.block_on(status::run(&url, admin_key.as_deref(), all, json))
        }
        Command::Replay { since, policies, config, current, json } => replay::run(&replay::Args {
            current: current.as_deref(),
            since: &since,
            policies: &policies,
            config: config.as_deref(),
            json,
        }),
    };
    match result {
        Ok(code) => code,
        Err(message) => {
            eprintln!("freeway: {message}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
}

/// Reads the environment, the catalog and the config (or the default).
fn load(config: Option<&Path>) -> Result<(Env, Catalog, Loaded), String> {
    let env = Env::process_with_dotenv(Path::new(".env"))?;
    let catalog = Catalog::builtin(&env).map_err(|e| e.to_string())?;
    let loaded = match config {
        Some(path) => Config::load(path, &env, &catalog),
        None => Config::from_yaml("", "<default config>", &env, &catalog),
    }
    .map_err(|e| e.to_string())?;
    Ok((env, catalog, loaded))
}

async fn run_serve(config: Option<&Path>, listen: Option<&str>) -> Result<ExitCode, String> {
    let (env, catalog, loaded) = load(config)?;
    for w in &loaded.warnings {
        tracing::warn!("config: {w}");
    }
    let mut config = loaded.config;
    if let Some(listen) = listen {
        config.server.listen = listen.to_owned();
    }
    let addr = parse_listen(&config.server.listen)?;
    check_exposure(addr, &config.server)?;
    let gateway = Gateway::new(config, catalog, &env).await.map_err(|problems| problems.join("\n"))?;
    let router = gateway.router();
    if router.providers().is_empty() {
        tracing::warn!("{}", router.no_provider_message());
    } else {
        let names: Vec<&str> = router.providers().iter().map(|p| &*p.name).collect();
        tracing::info!(providers = %names.join(", "), "providers enabled");
    }
    gateway.watch_policies()?;
    if gateway.config().discovery.enabled {
        let interval = gateway.config().discovery.interval.get();
        gateway.spawn_discovery(interval);
    }
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    let bound = listener.local_addr().map_err(|e| e.to_string())?;
    tracing::info!("freeway listening on http://{bound}/v1");
    let state = gateway.proxy().state().clone();
    let workers = gateway.config().server.worker_threads();
    serve_on_threads(gateway, listener, workers, shutdown_signal()).await.map_err(|e| e.to_string())?;
    // What the last requests changed reaches the database before we go.
    if !state.flush(Duration::from_secs(5)) {
        tracing::warn!("the state database could not be written at shutdown");
    }
    tracing::info!("freeway stopped");
    Ok(ExitCode::SUCCESS)
}

async fn run_check(config: Option<&Path>, probe: bool) -> Result<ExitCode, String> {
    let (env, catalog, loaded) = match load(config) {
        Ok(x) => x,
        Err(message) => {
            eprintln!("{message}");
            return Ok(ExitCode::FAILURE);
        }
    };
    for w in &loaded.warnings {
        println!("warning: {w}");
    }
    // The check builds the plugins and policies, not the state: the state
    // file may belong to a gateway that runs, and a check writes nothing.
    let mut config = loaded.config;
    config.state.path = Some(String::new());
    config.state.redis = None;
    let gateway = match Gateway::new(config, catalog, &env).await {
        Ok(gateway) => gateway,
        Err(problems) => {
            eprintln!("plugins and policies: {} problem(s)", problems.len());
            for p in problems {
                eprintln!("  - {p}");
            }
            return Ok(ExitCode::FAILURE);
        }
    };
    let router = gateway.router();
    let names: Vec<&str> = router.providers().iter().map(|p| &*p.name).collect();
    println!(
        "config OK: {} provider(s) enabled{}{}, {} route(s)",
        names.len(),
        if names.is_empty() { "" } else { ": " },
        names.join(", "),
        router.route_names().count()
    );
    if names.is_empty() {
        println!("note: {}", router.no_provider_message());
    }
    if !probe {
        return Ok(ExitCode::SUCCESS);
    }
    let mut problems = 0;
    for provider in router.providers() {
        for key in &provider.keys {
            let target =
                Target { base_url: &provider.base_url, model: "", key: key.secret(), options: &provider.options };
            let label = format!("{} key #{}", provider.name, key.index + 1);
            let listed = list_models(
                gateway.upstream(),
                &provider.plugin,
                &target,
                &provider.headers,
                &provider.redactor,
                PROBE_TIMEOUT,
            )
            .await;
            match listed {
                Ok(models) => println!("probe {label}: ok ({} models listed)", models.len()),
                Err(e) => {
                    problems += 1;
                    println!("probe {label}: FAILED: {}", e.detail);
                }
            }
        }
    }
    Ok(if problems == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

async fn run_models(config: Option<&Path>) -> Result<ExitCode, String> {
    let (env, catalog, loaded) = load(config)?;
    // Like `check`: a listing leaves the state file to the gateway.
    let mut config = loaded.config;
    config.state.path = Some(String::new());
    config.state.redis = None;
    let gateway = Gateway::new(config, catalog, &env).await.map_err(|problems| problems.join("\n"))?;
    if gateway.config().discovery.enabled {
        for (provider, outcome) in gateway.refresh_models().await {
            if let Err(e) = outcome {
                eprintln!("note: could not list {provider}'s models ({e}); showing the catalog's");
            }
        }
    }
    let router = gateway.router();
    println!("{:<14} {:<52} {:<5} {:>8} {:>7}  {:<9}  TAGS", "PROVIDER", "MODEL", "FREE", "CONTEXT", "SIZE", "TIER");
    for p in router.providers() {
        for m in p.models().iter() {
            let context = m.context.map(|c| c.to_string()).unwrap_or_else(|| "-".into());
            let free = if m.free { "yes" } else { "no" };
            let size = match (m.params_b, m.active_params_b) {
                (Some(total), Some(active)) => format!("{total}B/{active}B"),
                (Some(total), None) => format!("{total}B"),
                _ => "-".to_owned(),
            };
            let tier = m.tier().to_string();
            println!(
                "{:<14} {:<52} {:<5} {:>8} {:>7}  {:<9}  {}",
                p.name,
                m.id,
                free,
                context,
                size,
                tier,
                m.tags.join(",")
            );
        }
    }
    println!();
    println!("ROUTES");
    for name in router.route_names() {
        let targets = router.route_targets(name).unwrap_or_default();
        let list: Vec<String> = targets.iter().map(|c| format!("{c:?}")).collect();
        println!("{name:<16} {}", if list.is_empty() { "(no enabled target)".to_owned() } else { list.join(" → ") });
    }
    if router.providers().is_empty() {
        println!();
        println!("{}", router.no_provider_message());
    }
    Ok(ExitCode::SUCCESS)
}
