# Kagzi development shortcuts (https://just.systems). Each recipe is one plain command,
# so everything here also works without `just`.

db_url := env_var_or_default("KAGZI_DB_URL", "postgres://postgres@127.0.0.1:5432/postgres")

# Make sure PostgreSQL is running, the browser tests have Chromium, and the workspace builds.
setup:
    scripts/postgres.sh
    command -v chromedriver >/dev/null || apt-get install -y chromium chromium-driver
    cargo build --workspace --all-targets

# Run the server against PostgreSQL.
dev:
    KAGZI_DB_URL={{db_url}} cargo run -p kagzi-server

# Run every test (needs PostgreSQL; see `setup`).
test:
    scripts/postgres.sh
    cargo test --workspace

# Run an example against a running server, e.g. `just example simple`.
example NAME:
    cargo run -p kagzi --example {{NAME}}

# Regenerate the committed OpenAPI document (a test fails when it is stale).
openapi:
    cargo run -q -p kagzi-server -- --print-openapi > openapi/openapi.json

# Fuzz a live server against openapi/openapi.json with schemathesis (installs it into
# ~/.cache/kagzi on first use). FUZZ_MAX_EXAMPLES sets examples per operation (default 100).
fuzz:
    scripts/fuzz.sh

# What CI runs.
ci:
    bash .ci/run

# Benchmark (w1 throughput, w2 latency) against an in-process server, e.g. `just bench w1`.
# SQLite by default; KAGZI_DB_URL=postgres://... benchmarks PostgreSQL (in a fresh database).
bench WORKLOAD *ARGS:
    cargo run --release -p kagzi-bench -- {{WORKLOAD}} {{ARGS}}
