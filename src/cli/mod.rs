//! The `pipe` command line: `run`, `validate`, `graph`, `stages`, `migrate`, and its own
//! shell completions and manual page.
//!
//! [`main`] takes the registry as an argument, so a crate with stages of its own builds a `pipe`
//! of its own in three lines (see `examples/custom_stage.rs`).

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, CommandFactory, Parser, Subcommand};
use slog::{error, info, warn};

mod progress;
mod targets;

use crate::compiler::{self, CompiledPipeline};
use crate::config::diagnostic::Diagnostics;
use crate::config::duration;
use crate::logging::{self, LogFormat, LogLevel};
use crate::monitor::history::incidents::Thresholds;
use crate::monitor::history::rebuild;
use crate::registry::Registry;
use crate::stage::StageKind;
use crate::topology::{self, RunOptions};
use progress::ProgressBar;

#[derive(Debug, Parser)]
#[command(
    name = "pipe",
    version,
    about = "Runs pipelines of sources, transforms and sinks described in YAML"
)]
struct Cli {
    /// The least severe log records to write to standard error.
    #[arg(long, global = true, value_enum, default_value = "info")]
    log_level: LogLevel,
    /// How log records are written.
    #[arg(long, global = true, value_enum, default_value = "text")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a pipeline until its sources finish, or until SIGINT/SIGTERM and a graceful drain.
    Run(RunArgs),
    /// Check pipeline files and print every problem; exit 1 if any has an error.
    Validate {
        /// The pipeline files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Print a pipeline's stage graph in Graphviz DOT.
    Graph {
        /// The pipeline file.
        file: PathBuf,
    },
    /// List the stage types this binary knows, with their settings.
    Stages,
    /// Apply the database migrations in `migrations/` that have not run yet.
    Migrate {
        /// The PostgreSQL URL (libpq style, `sslmode` and `sslrootcert` understood).
        #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
        database_url: String,
    },
    /// Report uptime, response times and incidents from the rollups: a table, JSON, or a
    /// self-contained HTML page.
    Report(ReportArgs),
    /// Maintain the rollups and incidents that the postgres sink keeps.
    Rollups {
        #[command(subcommand)]
        command: RollupsCommand,
    },
    /// Keep the targets topic of a checker fleet: `apply FILE` (plan, then publish), `list`.
    Targets {
        #[command(subcommand)]
        command: targets::TargetsCommand,
    },
    /// Print a shell completion script: `pipe completions bash > /etc/bash_completion.d/pipe`.
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff): `pipe man > /usr/local/share/man/man1/pipe.1`.
    Man,
}

/// `pipe run`.
#[derive(Debug, Args)]
struct RunArgs {
    /// The pipeline file.
    file: PathBuf,
    /// How long in-flight events may take to drain after a stop signal.
    #[arg(long, default_value = "30s", value_parser = duration::parse)]
    grace: Duration,
    /// Events each stage's input channel holds before upstream stages wait.
    #[arg(long, default_value_t = RunOptions::default().channel_capacity)]
    buffer: usize,
    /// Serve /metrics (Prometheus), /health and /ready on this address only, such as
    /// 127.0.0.1:9898. Default: no server.
    #[arg(long, value_name = "HOST:PORT")]
    http_addr: Option<String>,
}

/// `pipe report`.
#[derive(Debug, Args)]
struct ReportArgs {
    /// The PostgreSQL URL (libpq style, `sslmode` and `sslrootcert` understood).
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    database_url: String,
    /// Start of the range: a duration before --until (7d, 24h) or an RFC 3339 time.
    #[arg(long, default_value = "7d")]
    since: String,
    /// End of the range, an RFC 3339 time. Default: now.
    #[arg(long)]
    until: Option<String>,
    /// Only this target (repeatable). Default: all.
    #[arg(long = "target", value_name = "NAME")]
    targets: Vec<String>,
    /// What to write.
    #[arg(long, value_enum, default_value_t = ReportFormat::Table)]
    format: ReportFormat,
    /// Write to this file instead of standard output.
    #[arg(long, short)]
    output: Option<PathBuf>,
}

/// `pipe rollups rebuild`.
#[derive(Debug, Args)]
struct RebuildArgs {
    /// The PostgreSQL URL (libpq style, `sslmode` and `sslrootcert` understood).
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    database_url: String,
    /// Only the days from this long ago, such as 30d. Default: every day with checks.
    #[arg(long, value_parser = duration::parse)]
    since: Option<Duration>,
    /// Failed checks in a row that make an incident: the postgres sink's `down_after`.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    down_after: u32,
    /// Good checks in a row that end one: the postgres sink's `up_after`.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    up_after: u32,
    /// Regions down at once that make a global incident: the postgres sink's `down_regions`.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    down_regions: u32,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum ReportFormat {
    /// One row per target, worst first, for a terminal.
    Table,
    /// Every figure, per target and per bucket (docs/report.md).
    Json,
    /// One self-contained page with charts.
    Html,
}

#[derive(Debug, Subcommand)]
enum RollupsCommand {
    /// Recompute rollups and incidents from the raw checks, one UTC day per transaction
    /// (for checks stored before migration 3, or after changing down_after, up_after or
    /// down_regions).
    /// Idempotent; running writers wait for each day, then go on.
    Rebuild(RebuildArgs),
}

/// Parses the command line and runs it with the stages in `registry`.
pub fn main(registry: Registry) -> ExitCode {
    let cli = Cli::parse();
    let logger = logging::logger(cli.log_level, cli.log_format);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            error!(logger, "cannot start the async runtime"; "error" => %e);
            return ExitCode::FAILURE;
        }
    };
    // Stages may create clients that need a runtime while they build, so everything runs in it.
    runtime.block_on(async {
        match cli.command {
            Command::Run(args) => run(&registry, &logger, args).await,
            Command::Validate { files } => validate(&registry, &logger, &files),
            Command::Graph { file } => graph(&registry, &logger, file),
            Command::Stages => {
                print!("{}", describe_stages(&registry));
                ExitCode::SUCCESS
            }
            Command::Migrate { database_url } => migrate(&logger, &database_url).await,
            Command::Report(args) => report(&logger, args).await,
            Command::Rollups {
                command: RollupsCommand::Rebuild(args),
            } => rebuild_rollups(&logger, args).await,
            Command::Targets { command } => targets::targets(&logger, command).await,
            Command::Completions { shell } => {
                clap_complete::generate(shell, &mut Cli::command(), "pipe", &mut std::io::stdout());
                ExitCode::SUCCESS
            }
            Command::Man => {
                match clap_mangen::Man::new(Cli::command()).render(&mut std::io::stdout()) {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(e) => {
                        error!(logger, "cannot write the manual page"; "error" => %e);
                        ExitCode::FAILURE
                    }
                }
            }
        }
    })
}

fn load(
    registry: &Registry,
    logger: &slog::Logger,
    file: &std::path::Path,
) -> Option<CompiledPipeline> {
    match compiler::load(file, registry, logger) {
        Ok(pipeline) => {
            for warning in &pipeline.warnings {
                eprintln!("{warning}");
            }
            Some(pipeline)
        }
        Err(diagnostics) => {
            print_diagnostics(&diagnostics);
            None
        }
    }
}

fn print_diagnostics(diagnostics: &Diagnostics) {
    for diagnostic in &diagnostics.0 {
        eprintln!("{diagnostic}");
    }
    let errors = diagnostics.errors().count();
    eprintln!("{errors} error{}", if errors == 1 { "" } else { "s" });
}

async fn run(registry: &Registry, logger: &slog::Logger, args: RunArgs) -> ExitCode {
    let RunArgs {
        file,
        grace,
        buffer,
        http_addr,
    } = args;
    let Some(pipeline) = load(registry, logger, &file) else {
        return ExitCode::FAILURE;
    };
    // Bound before the pipeline starts, so a taken port fails the run at once.
    let server = match &http_addr {
        Some(addr) => match crate::telemetry::server::Server::bind(addr).await {
            Ok(server) => Some(server),
            Err(message) => {
                error!(logger, "cannot start the HTTP server"; "error" => message);
                return ExitCode::FAILURE;
            }
        },
        None => None,
    };
    let stop_server = tokio_util::sync::CancellationToken::new();
    let serving = server.map(|server| {
        tokio::spawn(server.serve(
            pipeline.telemetry.clone(),
            stop_server.clone(),
            logger.clone(),
        ))
    });
    let options = RunOptions {
        grace,
        channel_capacity: buffer,
    };
    let signal_logger = logger.clone();
    let shutdown = async move {
        let signal = stop_signal().await;
        info!(signal_logger, "received {signal}");
    };
    let result = topology::run(pipeline, options, shutdown, logger.clone()).await;
    stop_server.cancel();
    if let Some(serving) = serving {
        let _ = serving.await;
    }
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!(logger, "pipeline failed"; "error" => %e);
            ExitCode::FAILURE
        }
    }
}

/// Waits for SIGINT or SIGTERM and names it.
async fn stop_signal() -> &'static str {
    let mut terminate =
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(signal) => signal,
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
                return "SIGINT";
            }
        };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => "SIGINT",
        _ = terminate.recv() => "SIGTERM",
    }
}

fn validate(registry: &Registry, logger: &slog::Logger, files: &[PathBuf]) -> ExitCode {
    let mut failed = false;
    for file in files {
        match compiler::load(file, registry, logger) {
            Ok(pipeline) => {
                for warning in &pipeline.warnings {
                    eprintln!("{warning}");
                }
                println!("{}: ok ({} stages)", file.display(), pipeline.stages.len());
            }
            Err(diagnostics) => {
                print_diagnostics(&diagnostics);
                failed = true;
            }
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn graph(registry: &Registry, logger: &slog::Logger, file: PathBuf) -> ExitCode {
    match load(registry, logger, &file) {
        Some(pipeline) => {
            print!("{}", to_dot(&pipeline));
            ExitCode::SUCCESS
        }
        None => {
            warn!(logger, "no graph: the pipeline is not valid");
            ExitCode::FAILURE
        }
    }
}

/// The database of `--database-url`, or `None` when the URL is wrong (said, without its
/// password).
fn database_from(logger: &slog::Logger, url: &str) -> Option<crate::monitor::database::Database> {
    crate::monitor::database::Database::from_url(url)
        .map_err(|message| error!(logger, "{message}"))
        .ok()
}

async fn migrate(logger: &slog::Logger, url: &str) -> ExitCode {
    let Some(database) = database_from(logger, url) else {
        return ExitCode::FAILURE;
    };
    let target = database.to_string();
    // The sync client must not run on a runtime thread.
    let result = tokio::task::spawn_blocking(move || {
        let mut client = database.connect()?;
        crate::monitor::migrate::apply(&mut client)
    })
    .await;
    match result {
        Ok(Ok(applied)) if applied.is_empty() => {
            info!(logger, "the database is up to date"; "database" => &target);
            ExitCode::SUCCESS
        }
        Ok(Ok(applied)) => {
            info!(logger, "migrations applied"; "database" => &target, "versions" => ?applied);
            ExitCode::SUCCESS
        }
        Ok(Err(e)) => {
            error!(logger, "migration failed"; "database" => &target,
                   "error" => crate::monitor::database::describe(&e));
            ExitCode::FAILURE
        }
        Err(e) => {
            error!(logger, "migration task failed"; "error" => %e);
            ExitCode::FAILURE
        }
    }
}

async fn rebuild_rollups(logger: &slog::Logger, args: RebuildArgs) -> ExitCode {
    let since = args.since;
    let thresholds = Thresholds {
        down_after: args.down_after,
        up_after: args.up_after,
        down_regions: args.down_regions,
    };
    let Some(database) = database_from(logger, &args.database_url) else {
        return ExitCode::FAILURE;
    };
    let target = database.to_string();
    let started = std::time::Instant::now();
    let result = tokio::task::spawn_blocking(move || {
        let mut client = database.connect()?;
        let mut bar = ProgressBar::new("rebuilding rollups and incidents");
        let summary = rebuild::run(&mut client, since, thresholds, |p| {
            bar.show(
                p.done,
                p.days,
                &crate::monitor::check::rfc3339_millis::format(p.day)[..10],
            )
        });
        bar.finish();
        summary
    })
    .await;
    match result {
        Ok(Ok(summary)) => {
            info!(logger, "rollups and incidents rebuilt"; "database" => &target,
                  "days" => summary.days, "checks" => summary.checks,
                  "incidents_written" => summary.incidents,
                  "seconds" => format!("{:.1}", started.elapsed().as_secs_f64()));
            ExitCode::SUCCESS
        }
        Ok(Err(e)) => {
            error!(logger, "rebuild failed; the days before the failing one are done, and running it again is safe";
                   "database" => &target, "error" => crate::monitor::database::describe(&e));
            ExitCode::FAILURE
        }
        Err(e) => {
            error!(logger, "rebuild task failed"; "error" => %e);
            ExitCode::FAILURE
        }
    }
}

/// `--since`: a duration before `until`, or an RFC 3339 time.
fn parse_since(text: &str, until: std::time::SystemTime) -> Result<std::time::SystemTime, String> {
    match duration::parse(text) {
        Ok(ago) => until
            .checked_sub(ago)
            .ok_or_else(|| format!("--since {text} is before the epoch")),
        Err(_) => humantime::parse_rfc3339_weak(text).map_err(|e| {
            format!("--since `{text}` is neither a duration (7d, 24h) nor an RFC 3339 time: {e}")
        }),
    }
}

async fn report(logger: &slog::Logger, args: ReportArgs) -> ExitCode {
    use std::io::IsTerminal;
    let ReportArgs {
        database_url,
        since,
        until,
        targets,
        format,
        output,
    } = args;
    let fail = |message: String| {
        error!(logger, "{message}");
        ExitCode::FAILURE
    };
    let Some(database) = database_from(logger, &database_url) else {
        return ExitCode::FAILURE;
    };
    let until = match until.as_deref() {
        None => std::time::SystemTime::now(),
        Some(text) => match humantime::parse_rfc3339_weak(text) {
            Ok(until) => until,
            Err(e) => return fail(format!("--until `{text}` is not an RFC 3339 time: {e}")),
        },
    };
    let since = match parse_since(&since, until) {
        Ok(since) => since,
        Err(message) => return fail(message),
    };
    let target = database.to_string();
    let options = crate::report::Options {
        since,
        until,
        targets,
    };
    let result = tokio::task::spawn_blocking(move || {
        let mut client = database.connect().map_err(|e| {
            format!(
                "cannot reach the database {target}: {}",
                crate::monitor::database::describe(&e)
            )
        })?;
        crate::report::load(&mut client, &options).map_err(|e| format!("{e} (database {target})"))
    })
    .await;
    let report = match result {
        Ok(Ok(report)) => report,
        Ok(Err(message)) => return fail(message),
        Err(e) => return fail(format!("the report task failed: {e}")),
    };
    let to_terminal = output.is_none() && std::io::stdout().is_terminal();
    let text = match format {
        ReportFormat::Table => crate::report::table::render(
            &report,
            to_terminal && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()),
        ),
        ReportFormat::Json => match serde_json::to_string_pretty(&report) {
            Ok(json) => json + "\n",
            Err(e) => return fail(format!("cannot write the report as JSON: {e}")),
        },
        ReportFormat::Html => crate::report::html::render(&report),
    };
    match output {
        None => {
            use std::io::Write as _;
            let mut stdout = std::io::stdout().lock();
            if let Err(e) = stdout
                .write_all(text.as_bytes())
                .and_then(|()| stdout.flush())
            {
                return fail(format!("cannot write the report: {e}"));
            }
        }
        Some(path) => {
            if let Err(e) = std::fs::write(&path, text) {
                return fail(format!("cannot write {}: {e}", path.display()));
            }
            info!(logger, "report written"; "file" => %path.display(), "targets" => report.targets.len());
        }
    }
    ExitCode::SUCCESS
}

/// The pipeline as a Graphviz digraph, data flowing left to right.
pub fn to_dot(pipeline: &CompiledPipeline) -> String {
    fn quote(text: &str) -> String {
        format!("\"{}\"", text.replace('\\', "\\\\").replace('"', "\\\""))
    }
    let mut dot = String::new();
    let _ = writeln!(dot, "digraph {} {{", quote(&pipeline.name));
    dot.push_str("  rankdir=LR;\n  node [fontname=\"Helvetica\"];\n");
    for stage in &pipeline.stages {
        let shape = match stage.kind {
            StageKind::Source => "invhouse",
            StageKind::Transform => "box",
            StageKind::Sink => "house",
        };
        let label = format!("{}\n{} {}", stage.id, stage.type_name, stage.kind);
        let _ = writeln!(
            dot,
            "  {} [label={}, shape={shape}];",
            quote(&stage.id),
            quote(&label).replace('\n', "\\n")
        );
    }
    for stage in &pipeline.stages {
        for input in &stage.inputs {
            let _ = writeln!(dot, "  {} -> {};", quote(input), quote(&stage.id));
        }
    }
    dot.push_str("}\n");
    dot
}

/// The text of `pipe stages`.
pub fn describe_stages(registry: &Registry) -> String {
    let mut out = String::new();
    for kind in [StageKind::Source, StageKind::Transform, StageKind::Sink] {
        let _ = writeln!(out, "{}:", kind.section());
        let mut any = false;
        for registration in registry.iter().filter(|r| r.kind == kind) {
            any = true;
            let _ = writeln!(
                out,
                "  {:<14} {}",
                registration.type_name, registration.description
            );
            let fields = if registration.fields.is_empty() {
                "(none)".to_owned()
            } else {
                registration.fields.join(", ")
            };
            let _ = writeln!(out, "  {:<14} settings: {fields}", "");
        }
        if !any {
            out.push_str("  (none)\n");
        }
    }
    out
}
