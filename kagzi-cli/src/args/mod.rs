//! The command line: every command, flag and environment variable, as clap parses them.

pub(crate) mod run;
pub(crate) mod schedule;
pub(crate) mod value;

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use clap_complete::Shell;
use kagzi_server::config::ApiKey;

use self::run::{LimitArgs, RunCommand};
use self::schedule::ScheduleCommand;
use self::value::WorkerStatusArg;
use crate::output::Format;

/// The exit codes, shown at the end of `kagzi --help`.
const EXIT_CODES: &str = "\
Exit codes:
  0  success
  1  any other error (the server refused the request, a file could not be read)
  2  usage: a bad flag or value, or a confirmation that was needed and not given
  3  not found (the server answered 404)
  4  conflict (the server answered 409: the run already ended, the name is taken)
  5  the server could not be reached or did not answer in time
  6  the run waited for failed or was cancelled (run result, run watch, run start --wait)
  7  the wait ended before the run did (run result --timeout)";

/// `kagzi`: operate a Kagzi server's runs, schedules, workers and queues from a terminal,
/// or run a server (`kagzi dev`, `kagzi server`).
#[derive(Debug, Parser)]
#[command(
    name = "kagzi",
    version,
    about = "Operate Kagzi durable workflows from a terminal, or run a server",
    after_help = EXIT_CODES,
    propagate_version = true
)]
pub(crate) struct Cli {
    #[command(flatten)]
    pub(crate) global: Global,
    #[command(subcommand)]
    pub(crate) command: Command,
}

/// The options every command takes.
#[derive(Debug, Args)]
pub(crate) struct Global {
    /// The server's URL.
    #[arg(
        long,
        env = "KAGZI_SERVER_URL",
        default_value = "http://localhost:50051",
        value_name = "URL",
        global = true
    )]
    pub(crate) server: String,

    /// The API key to send (the first, if several are given comma-separated); for
    /// `kagzi dev` and `kagzi server`, the keys the server requires.
    // The id is the server's own (`kagzi_server::Config::api_keys`), so that
    // `kagzi server --api-key` is this same flag rather than a clash with it.
    #[arg(
        id = "api_keys",
        long = "api-key",
        env = "KAGZI_API_KEY",
        value_delimiter = ',',
        hide_env_values = true,
        value_name = "KEY",
        global = true
    )]
    pub(crate) api_keys: Vec<ApiKey>,

    /// The output format [default: table on a terminal, json otherwise].
    #[arg(long, short, value_enum, global = true)]
    pub(crate) output: Option<Format>,

    /// No colours (also when the NO_COLOR environment variable is set).
    #[arg(long, global = true)]
    pub(crate) no_color: bool,
}

impl Global {
    /// The API key a client sends: the first one given.
    pub(crate) fn api_key(&self) -> Option<&str> {
        self.api_keys
            .iter()
            .map(ApiKey::expose)
            .find(|key| !key.is_empty())
    }
}

/// The commands.
#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Run a development server: embedded SQLite (./kagzi.db), on 127.0.0.1:50051, with
    /// the API docs and the dashboard; prints their URLs; stops on Ctrl-C.
    Dev(DevArgs),
    /// Run the server with every setting `kagzi-server` takes (flags or KAGZI_* variables).
    Server(ServerArgs),
    /// Start, list, show, wait for, follow, cancel and signal runs.
    #[command(subcommand, visible_alias = "runs")]
    Run(RunCommand),
    /// Create, list, change, pause, resume, trigger and delete schedules.
    #[command(subcommand, visible_alias = "schedules")]
    Schedule(ScheduleCommand),
    /// List workers.
    #[command(subcommand, visible_alias = "workers")]
    Worker(WorkerCommand),
    /// List queues: backlog, oldest waiting run, workers.
    #[command(subcommand, visible_alias = "queues")]
    Queue(QueueCommand),
    /// Whether a `ctx.patched` change can be retired: no run still needs its old branch.
    #[command(subcommand, visible_alias = "patches")]
    Patch(PatchCommand),
    /// Check that the server answers (`/healthz`; with --ready, `/readyz`).
    Health(HealthArgs),
    /// Print a shell completion script: `kagzi completions bash > /etc/bash_completion.d/kagzi`.
    Completions(CompletionsArgs),
}

/// `kagzi dev`.
#[derive(Debug, Args)]
pub(crate) struct DevArgs {
    /// The SQLite file to keep the state in (created and migrated on first start).
    #[arg(long, value_name = "PATH", default_value = "kagzi.db")]
    pub(crate) db: PathBuf,
    /// The address to listen on.
    #[arg(long, default_value_t = IpAddr::V4(Ipv4Addr::LOCALHOST))]
    pub(crate) host: IpAddr,
    /// The port to listen on (0 picks a free one).
    #[arg(long, short, default_value_t = 50051)]
    pub(crate) port: u16,
}

/// `kagzi server`.
#[derive(Debug, Args)]
pub(crate) struct ServerArgs {
    #[command(flatten)]
    pub(crate) config: kagzi_server::Config,
}

/// `kagzi health`.
#[derive(Debug, Args)]
pub(crate) struct HealthArgs {
    /// Check that the server can reach its database too (`/readyz`).
    #[arg(long)]
    pub(crate) ready: bool,
}

/// `kagzi completions`.
#[derive(Debug, Args)]
pub(crate) struct CompletionsArgs {
    /// The shell to complete in.
    #[arg(value_enum)]
    pub(crate) shell: Shell,
}

/// Workers.
#[derive(Debug, Subcommand)]
pub(crate) enum WorkerCommand {
    /// List workers, newest first: queue, status, runs held, workflows, last heartbeat.
    #[command(visible_alias = "ls")]
    List(WorkerListArgs),
}

/// `kagzi worker list`.
#[derive(Debug, Args)]
pub(crate) struct WorkerListArgs {
    /// Only workers of this queue.
    #[arg(long, short)]
    pub(crate) queue: Option<String>,
    /// Only online or only offline workers.
    #[arg(long, short, value_enum)]
    pub(crate) status: Option<WorkerStatusArg>,
    #[command(flatten)]
    pub(crate) limit: LimitArgs,
}

/// Patches (`ctx.patched`).
#[derive(Debug, Subcommand)]
pub(crate) enum PatchCommand {
    /// Whether any run that has not ended may still take the old branch of PATCH in
    /// WORKFLOW; exits 0 when it is safe to remove, 1 when not (with --check).
    Status(PatchStatusArgs),
}

/// `kagzi patch status`.
#[derive(Debug, Args)]
pub(crate) struct PatchStatusArgs {
    /// The workflow.
    pub(crate) workflow: String,
    /// The patch id, as `ctx.patched` names it.
    pub(crate) patch: String,
    /// Exit 1 when some run may still need the old branch (for scripts).
    #[arg(long)]
    pub(crate) check: bool,
}

/// Queues.
#[derive(Debug, Subcommand)]
pub(crate) enum QueueCommand {
    /// List queues by workflow: due runs (the backlog), the oldest one's age, scheduled,
    /// running and suspended runs, and the workers that could take them.
    #[command(visible_alias = "ls")]
    List,
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn the_server_flags_are_the_servers_own_and_the_api_key_is_shared() {
        let cli = Cli::try_parse_from([
            "kagzi",
            "server",
            "--port",
            "0",
            "--db-url",
            "sqlite://x.db",
            "--api-key",
            "a,b",
        ])
        .expect("kagzi server takes the server's flags");
        let Command::Server(args) = cli.command else {
            panic!("parsed as {:?}", cli.command);
        };
        assert_eq!(args.config.port, 0);
        assert_eq!(args.config.db_url, "sqlite://x.db");
        let keys: Vec<&str> = args.config.api_keys().map(ApiKey::expose).collect();
        assert_eq!(keys, ["a", "b"]);
        assert_eq!(cli.global.api_key(), Some("a"));
    }

    #[test]
    fn global_options_go_before_or_after_the_command() {
        for args in [
            [
                "kagzi",
                "--server",
                "http://h:1",
                "-o",
                "jsonl",
                "run",
                "list",
            ],
            [
                "kagzi",
                "run",
                "list",
                "--server",
                "http://h:1",
                "-o",
                "jsonl",
            ],
        ] {
            let cli = Cli::try_parse_from(args).expect("parses");
            assert_eq!(cli.global.server, "http://h:1");
            assert_eq!(cli.global.output, Some(Format::Jsonl));
        }
    }
}
