//! `kagzi`: the Kagzi command line. Parses the arguments, runs the command, and turns its
//! error (if any) into one line on standard error and the exit code `kagzi --help` lists.

mod args;
mod client;
mod commands;
mod error;
mod output;

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;

use crate::error::exit;

#[tokio::main]
async fn main() -> ExitCode {
    // Usage errors exit 2 here, with clap's message; --help and --version exit 0.
    let cli = args::Cli::parse();
    let color = !cli.global.no_color
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
        && std::io::stderr().is_terminal();
    match commands::execute(cli).await {
        Ok(()) => ExitCode::from(exit::OK),
        // The reader went away (`kagzi run list | head`): nothing more to say.
        Err(e) if e.is_broken_pipe() => ExitCode::from(exit::OK),
        Err(e) => {
            let label = if color {
                "\x1b[1;31merror:\x1b[0m"
            } else {
                "error:"
            };
            eprintln!("{label} {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
