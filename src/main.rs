//! `etl`: parse the command line, start logging, run one command, map its error to an exit code.

use std::process::ExitCode;

use clap::error::ErrorKind;
use clap::{Parser, Subcommand};
use piivault::commands::{
    Context, audit, erase, keys, migrate, policy, quarantine, report, reveal, run, seed,
};
use piivault::config::Settings;
use piivault::error::exit;
use tokio_util::sync::CancellationToken;

/// piivault's ETL: SQS login events into Postgres with ip/device_id tokenised and sealed.
#[derive(Debug, Parser)]
#[command(name = "etl", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Key-encryption key: file:<path> or kms:<key-id|alias|arn>.
    // `hide_env_values`: `--help` names the variable but never prints its value (a key path or
    // KMS key), so help output pasted into a ticket or CI log discloses nothing.
    #[arg(long, global = true, env = "PIIVAULT_KEK", hide_env_values = true)]
    kek: Option<String>,
    /// SQS queue URL.
    #[arg(long, global = true, env = "SQS_QUEUE_URL", hide_env_values = true)]
    queue_url: Option<String>,
    /// Deployment the data keys are wrapped for (KMS encryption context `deployment`), e.g.
    /// prod-eu1. Default: the database's name; set it explicitly in every deployment.
    #[arg(long, global = true, env = "PIIVAULT_DEPLOYMENT")]
    deployment: Option<String>,
    /// Log lines on stderr: human-readable, or one JSON object per line for a log pipeline.
    #[arg(long, global = true, env = "PIIVAULT_LOG_FORMAT", value_enum, default_value_t = LogFormat::Pretty)]
    log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Pretty,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Apply database migrations (idempotent).
    Migrate(migrate::MigrateArgs),
    /// Data keys: init, status, rotate, rewrap, reencrypt, retokenize, retire, verify.
    Keys(keys::KeysArgs),
    /// Generate synthetic login events: send them to the queue, or write them to --output.
    Seed(seed::SeedArgs),
    /// Consume the queue (or --input a file) into user_logins, the vault and quarantine.
    Run(run::RunArgs),
    /// Reveal original ip/device_id of selected records (audited; a purpose and a reason; requests
    /// and approvals under the two-person rule).
    Reveal(reveal::RevealArgs),
    /// Show or set the reveal policy: purposes, quotas, two-person rule (set is audited).
    Policy(policy::PolicyArgs),
    /// The tamper-evident audit trail: list, verify, export, report, signed checkpoints.
    Audit(audit::AuditArgs),
    /// Erase one user's data (right to erasure; audited).
    Erase(erase::EraseArgs),
    /// List quarantined messages or replay them under today's rules.
    Quarantine(quarantine::QuarantineArgs),
    /// Reports for analysts: duplicate groups (tokens and counts only).
    Report(report::ReportArgs),
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(match e.kind() {
                ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => exit::OK,
                _ => exit::USAGE,
            });
        }
    };
    let log_format = cli.log_format;
    init_logging(log_format);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("cannot start the async runtime");
    let mut settings = Settings::from_env();
    settings.kek = cli.kek.or(settings.kek);
    settings.queue_url = cli.queue_url.or(settings.queue_url);
    settings.deployment = cli
        .deployment
        .filter(|d| !d.trim().is_empty())
        .or(settings.deployment);
    let result = runtime.block_on(async {
        let ctx = Context {
            settings,
            stop: CancellationToken::new(),
        };
        tokio::spawn(stop_on_signal(ctx.stop.clone()));
        match cli.command {
            Command::Migrate(args) => migrate::run(args, &ctx).await,
            Command::Keys(args) => keys::run(args, &ctx).await,
            Command::Seed(args) => seed::run(args, &ctx).await,
            Command::Run(args) => run::run(args, &ctx).await,
            Command::Reveal(args) => reveal::run(args, &ctx).await,
            Command::Policy(args) => policy::run(args, &ctx).await,
            Command::Audit(args) => audit::run(args, &ctx).await,
            Command::Erase(args) => erase::run(args, &ctx).await,
            Command::Quarantine(args) => quarantine::run(args, &ctx).await,
            Command::Report(args) => report::run(args, &ctx).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line: what failed, then what to do. With JSON logs, one JSON object like every
            // other stderr line.
            let line = e.to_string().replace('\n', " ");
            match log_format {
                LogFormat::Json => tracing::error!(exit_code = e.exit_code(), "{line}"),
                LogFormat::Pretty => eprintln!("error: {line}"),
            }
            ExitCode::from(e.exit_code())
        }
    }
}

/// Logs to stderr; `RUST_LOG` filters (default: info for piivault, warnings for libraries).
/// Whatever `RUST_LOG` says, the AWS SDK and HTTP crates never log below INFO: at debug/trace
/// they print request and response payloads, i.e. message bodies and key material.
fn init_logging(format: LogFormat) {
    use std::io::IsTerminal;
    use tracing_subscriber::filter::{EnvFilter, filter_fn};
    use tracing_subscriber::prelude::*;
    const PAYLOAD_LOGGERS: [&str; 6] = [
        "aws_smithy",
        "aws_sdk",
        "aws_config",
        "aws_runtime",
        "hyper",
        "h2",
    ];
    let env = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("warn,piivault=info,etl=info"));
    let no_payloads = filter_fn(|meta| {
        *meta.level() <= tracing::Level::INFO
            || !PAYLOAD_LOGGERS.iter().any(|p| meta.target().starts_with(p))
    });
    let layer = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let layer = match format {
        LogFormat::Pretty => layer.with_ansi(std::io::stderr().is_terminal()).boxed(),
        LogFormat::Json => layer.json().flatten_event(true).boxed(),
    };
    // EnvFilter as the global filter, the payload rule as the output layer's own filter.
    tracing_subscriber::registry()
        .with(env)
        .with(layer.with_filter(no_payloads))
        .init();
}

/// First SIGINT/SIGTERM: stop receiving, finish in-flight batches. A second one exits at once.
async fn stop_on_signal(stop: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return;
    };
    tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
    tracing::info!("stopping: finishing in-flight batches (signal again to abort)");
    stop.cancel();
    tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
    std::process::exit(130);
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// Variables whose values are not secret, so `--help` may show them.
    const SHOWN: [&str; 3] = [
        "PIIVAULT_LOG_FORMAT",
        "PIIVAULT_METRICS_ADDR",
        "PIIVAULT_DEPLOYMENT",
    ];

    #[test]
    fn help_never_shows_the_value_of_a_secret_variable() {
        fn check(cmd: &clap::Command, seen: &mut Vec<String>) {
            for arg in cmd.get_arguments() {
                if let Some(var) = arg.get_env() {
                    let var = var.to_string_lossy().into_owned();
                    assert!(
                        arg.is_hide_env_values_set() || SHOWN.contains(&var.as_str()),
                        "{var} (on `{}`) needs hide_env_values = true, or a place in SHOWN",
                        cmd.get_name()
                    );
                    seen.push(var);
                }
            }
            for sub in cmd.get_subcommands() {
                check(sub, seen);
            }
        }
        let cli = super::Cli::command();
        cli.clone().debug_assert();
        let mut seen = Vec::new();
        check(&cli, &mut seen);
        assert!(seen.iter().any(|v| v == "PIIVAULT_KEK"), "{seen:?}");
        assert!(seen.iter().any(|v| v == "SQS_QUEUE_URL"), "{seen:?}");
    }
}
