# syntax=docker/dockerfile:1
# The `etl` binary in a slim, non-root runtime image.
#   docker build -t piivault-etl .
#   docker run --rm piivault-etl --help
# Build stage: the same Debian release as the runtime, so the binary's glibc matches.
FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src src
COPY migrations migrations
COPY benches benches
# Cache mounts keep the registry and target/ between builds (a cold AWS SDK build takes minutes).
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin etl \
    && install -m 0755 target/release/etl /etl

# Runtime: glibc, libgcc and CA certificates only; no shell, no package manager. The binary needs
# no writable file system (it logs to stderr), so it runs with a read-only root (see
# deploy/kubernetes/deployment.yaml).
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /etl /usr/local/bin/etl
# distroless's "nonroot" user; numeric so runAsNonRoot can verify it.
USER 65532:65532
ENV PIIVAULT_LOG_FORMAT=json \
    PIIVAULT_METRICS_ADDR=0.0.0.0:9090
EXPOSE 9090
ENTRYPOINT ["/usr/local/bin/etl"]
CMD ["run"]
