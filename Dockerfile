# The Kagzi server image. `docker compose up -d` runs it beside PostgreSQL
# (docker-compose.yml); alone, `docker run -p 50051:50051 IMAGE` keeps its state in an
# SQLite file in the /data volume. The image also has the `kagzi` command line:
# `docker compose exec kagzi kagzi run list`.

FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p kagzi-server -p kagzi-cli \
    && install -m 0755 target/release/kagzi-server target/release/kagzi /usr/local/bin/

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --user-group --home-dir /data --create-home kagzi
COPY --from=build /usr/local/bin/kagzi-server /usr/local/bin/kagzi /usr/local/bin/
USER kagzi
WORKDIR /data
ENV KAGZI_SERVER_HOST=0.0.0.0 \
    KAGZI_SERVER_PORT=50051 \
    KAGZI_DB_URL=sqlite:///data/kagzi.db
VOLUME /data
EXPOSE 50051
# `kagzi health` exits 0 when /healthz answers, non-zero otherwise.
HEALTHCHECK --interval=10s --timeout=5s --start-period=15s --retries=3 \
    CMD kagzi health --server "http://127.0.0.1:${KAGZI_SERVER_PORT}" || exit 1
ENTRYPOINT ["kagzi-server"]
