//! `ztna-agent`: the gateway daemon.
//!
//! - `ztna-agent run --config FILE` loads (or takes over) the data plane, brings it in line with the
//!   file and runs until SIGTERM/SIGINT, leaving the gateway enforcing unless `--teardown-on-exit`.
//! - `ztna-agent check --config FILE` validates the file without touching the kernel.
//! - `ztna-agent teardown --instance NAME` detaches the instance and removes its pins.
//! - `ztna-agent policy check FILE` validates an access policy and lists every problem by line.

use std::{path::PathBuf, process::ExitCode};

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand, ValueEnum};
use tracing_subscriber::EnvFilter;
use ztna_agent::{
    agent::{self, RunOptions},
    config::Config,
};
use ztna_common::maps::PIN_ROOT;

#[derive(Debug, Parser)]
#[command(
    name = "ztna-agent",
    version,
    about = "ztna gateway agent (XDP zero-trust enforcement)"
)]
struct Cli {
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Human, global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum LogFormat {
    Human,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the gateway from a configuration file.
    Run(RunArgs),
    /// Validate a configuration file and print what it compiles to; touches nothing.
    Check(CheckArgs),
    /// Detach the XDP program of an instance and remove its pinned maps and links.
    Teardown(TeardownArgs),
    /// Work with access policy files.
    #[command(subcommand)]
    Policy(PolicyCommand),
}

#[derive(Debug, Subcommand)]
enum PolicyCommand {
    /// Validate a policy file: prints a summary, or every error as `file:line:column: message`.
    Check {
        /// The policy file (TOML).
        file: PathBuf,
    },
}

#[derive(Debug, Args)]
struct RunArgs {
    /// The TOML configuration.
    #[arg(long, short)]
    config: PathBuf,
    /// On SIGTERM/SIGINT, detach and remove every pin instead of leaving the gateway enforcing.
    #[arg(long)]
    teardown_on_exit: bool,
    /// Root of the pin directories on the BPF file system.
    #[arg(long, default_value = PIN_ROOT)]
    pin_root: PathBuf,
}

#[derive(Debug, Args)]
struct CheckArgs {
    /// The TOML configuration.
    #[arg(long, short)]
    config: PathBuf,
}

#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
struct TeardownArgs {
    /// Instance name (the pin directory under the pin root).
    #[arg(long)]
    instance: Option<String>,
    /// Take the instance name from this configuration.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Root of the pin directories on the BPF file system.
    #[arg(long, default_value = PIN_ROOT)]
    pin_root: PathBuf,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    match dispatch(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // `{:#}` prints the whole context chain on one line; a configuration error spans lines.
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

fn dispatch(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Check(args) => check(&args),
        Command::Run(args) => run(args),
        Command::Teardown(args) => teardown(&args),
        Command::Policy(PolicyCommand::Check { file }) => policy_check(&file),
    }
}

fn policy_check(file: &std::path::Path) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("failed to read the policy file {}", file.display()))?;
    let report = ztna_agent::policy::check::check(&text, &file.display().to_string());
    print!("{}", report.output);
    if !report.output.ends_with('\n') {
        println!();
    }
    if report.ok {
        Ok(())
    } else {
        anyhow::bail!(
            "{} is not a valid policy; nothing was changed",
            file.display()
        )
    }
}

fn check(args: &CheckArgs) -> anyhow::Result<()> {
    let config = Config::load(&args.config)?;
    let plan = &config.plan;
    println!(
        "{}: valid; instance {:?}, {} mode, {} interface(s), {} app(s), {} prefix(es), {} service \
         entries, {} static grant(s)",
        config.file,
        config.instance,
        format!("{:?}", config.mode).to_lowercase(),
        config.interfaces.len(),
        plan.apps.len(),
        plan.prefixes.len(),
        plan.services.len(),
        config.grants.len()
    );
    for app in &plan.apps {
        println!("  app {} = {}", app.id, app.name);
    }
    Ok(())
}

fn run(args: RunArgs) -> anyhow::Result<()> {
    // Validated before the runtime starts, let alone the kernel.
    let config = Config::load(&args.config)?;
    agent::preflight(&config)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("failed to start the async runtime")?;
    let instance = config.instance.clone();
    runtime
        .block_on(agent::run(
            config,
            RunOptions {
                pin_root: args.pin_root,
                teardown_on_exit: args.teardown_on_exit,
            },
        ))
        .with_context(|| format!("agent for instance {instance:?} failed"))
}

fn teardown(args: &TeardownArgs) -> anyhow::Result<()> {
    let instance = match (&args.instance, &args.config) {
        (Some(instance), _) => instance.clone(),
        (None, Some(path)) => Config::load(path)?.instance,
        (None, None) => unreachable!("clap requires --instance or --config"),
    };
    let removed = agent::teardown(&args.pin_root, &instance).with_context(|| {
        format!(
            "failed to remove the pins of instance {instance:?} under {}",
            args.pin_root.display()
        )
    })?;
    if removed {
        println!(
            "instance {instance:?}: detached and removed {}",
            args.pin_root.join(&instance).display()
        );
    } else {
        println!(
            "instance {instance:?}: nothing pinned under {}",
            args.pin_root.join(&instance).display()
        );
    }
    Ok(())
}
