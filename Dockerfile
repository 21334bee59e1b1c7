# The fpaas binary in a small runtime image (docs/operations.md). Build: `docker build -t fpaas .`
# Every subcommand runs from it: `docker run fpaas shuffler …`, `… serve`, `… worker`, `… record-kv`.
# Not built in this repository's CI (no container engine there); deploy/compose and deploy/k8s use it.

# --- build: the workspace in release mode, with the lockfile's versions
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p fpaas \
 && strip target/release/fpaas \
 && cp target/release/fpaas /fpaas

# --- runtime: Debian slim, CA certificates for wss:// relays and https:// webhooks, a non-root user
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /nonexistent --shell /usr/sbin/nologin fpaas
COPY --from=build /fpaas /usr/local/bin/fpaas
USER 10001:10001
# The ops port of the process (9100 shuffler, 9101 record-kv, 9102 like-indexer, 9103 serve, 9104 worker):
# set FPAAS_OPS_PORT to match `--metrics-listen 0.0.0.0:<port>`.
ENV FPAAS_OPS_PORT=9100
# Ready = `/ready` answers 200 (bash's /dev/tcp: no HTTP client in the image).
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
  CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/${FPAAS_OPS_PORT} && printf 'GET /ready HTTP/1.0\\r\\n\\r\\n' >&3 && head -1 <&3 | grep -q ' 200 '"]
ENTRYPOINT ["/usr/local/bin/fpaas"]
CMD ["--help"]
