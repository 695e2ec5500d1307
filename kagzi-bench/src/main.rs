//! Run with: cargo run --release -p kagzi-bench -- w1   (or w2; `--help` for the options)
//!
//! Starts a Kagzi server in-process (SQLite in a temporary file, or PostgreSQL when
//! `KAGZI_DB_URL=postgres://...`: a fresh database that is dropped afterwards) unless `--url`
//! names an existing one, runs the benchmark, prints a table and then one JSON line.

use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let options = kagzi_bench::Options::parse();
    let report = kagzi_bench::run(&options).await?;
    print!("{}", report.table());
    println!("{}", report.json());
    Ok(())
}
