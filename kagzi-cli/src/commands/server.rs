//! `kagzi dev` and `kagzi server`: the Kagzi server, run in this process through the
//! `kagzi-server` library, until SIGINT or SIGTERM.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use clap::Parser;
use kagzi_server::{Config, Server};

use crate::args::{DevArgs, Global};
use crate::error::{Error, Result};
use crate::output::{Output, Paint};

/// `kagzi dev`: the server on an SQLite file, on the loopback address by default; prints
/// the URLs of the API, its docs and the dashboard.
pub(crate) async fn dev(args: &DevArgs, global: &Global, out: &Output) -> Result<()> {
    // Every other setting as `kagzi-server` reads it: its default or KAGZI_* variable.
    let mut config = Config::try_parse_from(["kagzi-server"])
        .map_err(|e| Error::Usage(format!("a KAGZI_* setting is invalid: {e}")))?;
    config.db_url = format!("sqlite://{}", args.db.display());
    config.host = args.host;
    config.port = args.port;
    config.api_keys = global.api_keys.clone();
    init_logs("warn")?;
    let server = Server::start(config).await?;
    let base = format!("http://{}", reachable(server.addr()));
    let line = |label: &str, url: String| {
        format!(
            "  {}  {}",
            out.paint(format!("{label:<5}"), Some(Paint::Bold)),
            url
        )
    };
    out.print(
        &[
            format!("Kagzi dev server, state in {}", args.db.display()),
            line("API", base.clone()),
            line("Docs", format!("{base}/docs")),
            line("UI", format!("{base}/ui")),
            format!(
                "Point clients at it with KAGZI_SERVER_URL={base} (the default for port 50051). \
             Ctrl-C stops it."
            ),
        ]
        .join("\n"),
    )?;
    serve_until_signal(server).await?;
    out.note("Kagzi dev server stopped.");
    Ok(())
}

/// `kagzi server`: exactly what `kagzi-server` does with the same settings.
pub(crate) async fn serve(config: Config, out: &Output) -> Result<()> {
    if config.print_openapi {
        return out.print(kagzi_server::openapi_json().trim_end());
    }
    init_logs("info")?;
    let server = Server::start(config).await?;
    serve_until_signal(server).await
}

/// Logs to standard error, filtered by `RUST_LOG` (else `default`), as `KAGZI_LOG_FORMAT` says.
fn init_logs(default: &str) -> Result<()> {
    kagzi_server::logs::init(default, true).map_err(Error::Usage)
}

/// Serves until SIGINT or SIGTERM, then shuts down: long-polls end, in-flight requests
/// finish, the background loops stop.
async fn serve_until_signal(server: Server) -> Result<()> {
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
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

/// The address a client on this machine reaches `addr` at: the loopback address for a
/// server listening on all of them.
fn reachable(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => (Ipv4Addr::LOCALHOST, addr.port()).into(),
        IpAddr::V6(ip) if ip.is_unspecified() => (Ipv6Addr::LOCALHOST, addr.port()).into(),
        _ => addr,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_server_on_every_address_is_reached_on_the_loopback() {
        let all: SocketAddr = "0.0.0.0:50051".parse().expect("an address");
        assert_eq!(reachable(all).to_string(), "127.0.0.1:50051");
        let all6: SocketAddr = "[::]:7".parse().expect("an address");
        assert_eq!(reachable(all6).to_string(), "[::1]:7");
        let one: SocketAddr = "10.0.0.2:80".parse().expect("an address");
        assert_eq!(reachable(one), one);
    }
}
