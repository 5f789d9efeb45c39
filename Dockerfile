# Valkyrie routing image. Build and run (BuildKit, the default builder
# since Docker 23, runs the cache mounts below):
#
#   docker build -t valkyrie-routing .
#   docker run --rm -p 8080:8080 -p 9090:9090 \
#     -e VALKYRIE_ADMIN_TOKEN=change-me valkyrie-routing
#
# Layout inside the image:
#   /app/valkyrie-routing          the binary (also on PATH)
#   /app/config/production.toml    the config the CMD loads
#   /app/config/ssl/               certificate and key when TLS is on
#   /app/logs/                     the log file (a volume)

FROM rust:1-bookworm AS builder
WORKDIR /src
# Manifests first, so that dependency downloads stay cached while only
# sources change.
COPY Cargo.toml Cargo.lock ./
COPY crates ./crates
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin valkyrie-routing \
    && cp target/release/valkyrie-routing /valkyrie-routing

FROM debian:bookworm-slim AS runtime
# curl serves the HEALTHCHECK below and the runbook's checks from inside
# the container; ca-certificates lets the router reach TLS upstreams.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 valkyrie \
    && useradd --system --uid 10001 --gid valkyrie --home-dir /app \
       --shell /usr/sbin/nologin valkyrie \
    && mkdir -p /app/config/ssl /app/logs \
    && chown -R valkyrie:valkyrie /app

COPY --from=builder /valkyrie-routing /app/valkyrie-routing
COPY --chown=valkyrie:valkyrie config/production.toml /app/config/production.toml
RUN ln -s /app/valkyrie-routing /usr/local/bin/valkyrie-routing

USER 10001:10001
WORKDIR /app
VOLUME ["/app/logs"]
# 8080: data plane, /health, /ready and /admin/*. 9090: /metrics.
EXPOSE 8080 9090

# /health answers 503 while draining, so a stopping container turns
# unhealthy instead of taking new traffic.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD curl -fsS -o /dev/null http://127.0.0.1:8080/health || exit 1

# SIGTERM (docker stop) drains in-flight requests; give the container more
# than graceful_shutdown_timeout with `docker stop -t 40`.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/app/valkyrie-routing"]
CMD ["--config", "/app/config/production.toml"]
