//! The `hookrelay` command: `serve`, `api`, `worker`, `migrate` and `admin`.

use clap::{Parser, Subcommand};
use hookrelay::{Config, Roles, admin, config};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "hookrelay",
    version,
    about = "Multi-tenant webhook delivery on PostgreSQL"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// API and delivery workers in one process (applies migrations first)
    #[command(after_help = config::help())]
    Serve,
    /// The API only; run workers elsewhere
    #[command(after_help = config::help())]
    Api,
    /// Delivery workers only; any number may run against one database
    #[command(after_help = config::help())]
    Worker,
    /// Apply pending database migrations and exit
    #[command(after_help = config::help())]
    Migrate,
    /// Prints the OpenAPI 3.1 document (as committed at openapi/openapi.json)
    Openapi,
    /// Organizations, API keys and delivery stats from the shell
    Admin {
        #[command(subcommand)]
        command: admin::AdminCommand,
    },
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| "info,sqlx=warn,actix_server=warn".into());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing the SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

async fn run(config: Config, roles: Roles) -> anyhow::Result<()> {
    let listener = if roles.api {
        Some(hookrelay::listen(config.listen).map_err(|e| {
            anyhow::anyhow!("HOOKRELAY_LISTEN: cannot listen on {}: {e}", config.listen)
        })?)
    } else {
        None
    };
    let running = hookrelay::build(&config, listener, roles).await?;
    wait_for_signal().await;
    tracing::info!("shutting down: finishing in-flight requests and deliveries");
    running.stop().await;
    tracing::info!("stopped");
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Openapi = cli.command {
        println!("{}", hookrelay_api::openapi::json());
        return ExitCode::SUCCESS;
    }
    init_tracing();
    let config = match Config::from_env() {
        Ok(config) => config,
        Err(err) => {
            eprintln!("hookrelay: configuration error: {err}");
            return ExitCode::from(2);
        }
    };
    let result = match cli.command {
        Command::Serve => run(config, Roles::SERVE).await,
        Command::Api => run(config, Roles::API).await,
        Command::Worker => run(config, Roles::WORKER).await,
        Command::Migrate => admin::migrate(&config).await,
        Command::Admin { command } => admin::run(&config, command).await,
        Command::Openapi => unreachable!("handled before configuration is read"),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("hookrelay: {err:#}");
            ExitCode::FAILURE
        }
    }
}
