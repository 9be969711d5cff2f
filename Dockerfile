# syntax=docker/dockerfile:1
# Multi-stage build: dependencies are compiled in their own layer (cargo-chef), so a change to
# the project's code rebuilds only the project; the runtime image holds just the binary.

FROM rust:1.95-slim-bookworm AS chef
RUN cargo install cargo-chef --locked --version ^0.1
WORKDIR /app

FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS builder
COPY --from=planner /app/recipe.json recipe.json
RUN cargo chef cook --release --recipe-path recipe.json --package moviestore
COPY . .
RUN cargo build --release --package moviestore --bin moviestore

FROM debian:bookworm-slim AS runtime
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --no-create-home moviestore \
    && install -d -o moviestore -g moviestore -m 0700 /var/lib/moviestore
COPY --from=builder /app/target/release/moviestore /usr/local/bin/moviestore
USER moviestore
# The data folder holds the deployment secret when MOVIESTORE_SECRET is unset (and the emails
# when no SMTP server is set); mount a volume there to keep it across containers.
WORKDIR /var/lib/moviestore
ENV MOVIESTORE_ADDR=0.0.0.0:8080 \
    MOVIESTORE_DATA_DIR=/var/lib/moviestore \
    MOVIESTORE_LOG_FORMAT=json
EXPOSE 8080
# No curl in the image: bash's /dev/tcp asks /health directly.
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/8080 && printf 'GET /health HTTP/1.0\\r\\n\\r\\n' >&3 && grep -q ' 200 ' <&3"]
ENTRYPOINT ["moviestore"]
CMD ["serve"]
