//! `kagzi-server`: configuration, tracing, serve until SIGINT or SIGTERM.
//! `kagzi-server --print-openapi` prints the OpenAPI document and exits.

use std::process::ExitCode;

use clap::Parser;
use kagzi_server::{Config, Server};

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kagzi-server: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> anyhow::Result<()> {
    let config = Config::parse();
    if config.print_openapi {
        print!("{}", kagzi_server::openapi_json());
        return Ok(());
    }
    kagzi_server::logs::init("info", false).map_err(anyhow::Error::msg)?;
    let server = Server::start(config).await?;
    let shutdown = server.state().shutdown.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutting down");
        shutdown.cancel();
    });
    server.wait().await?;
    Ok(())
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
