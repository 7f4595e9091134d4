# syntax=docker/dockerfile:1
# hubwatch: one image with both binaries (hubwatch-collector by default; run the agent with
# `--entrypoint /usr/local/bin/hubwatch-agent`). Build: `docker build -t ghcr.io/hubwatch/hubwatch:0.1.0 .`
#
# Size (no Docker engine on the machine this was written on, so the image itself was not built):
# the stripped release binaries measured 8.9 MB (hubwatch-agent) + 16.3 MB (hubwatch-collector)
# = 25.2 MB (24.0 MiB; Rust 1.95, x86_64, Dec 2026); the base image's contents, summed from the
# Installed-Size of the Debian 12 packages distroless/cc is built from, are at most 25 MiB
# uncompressed. So about 49 MiB uncompressed, an upper bound (docs/deploy.md).
# tests/tests/deploy_central.rs checks this file's invariants: the builder's Rust version is the
# toolchain's and at least the workspace's rust-version, the runtime user is non-root 65532,
# both binaries are copied to /usr/local/bin, and a HEALTHCHECK runs the collector's `health`.

FROM rust:1.95-bookworm AS builder
WORKDIR /src
COPY . .
# --locked: exactly Cargo.lock's versions. The cache mounts keep the registry and the target
# directory between builds; the binaries are copied out of the cached directory and stripped.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p hubwatch-agent -p hubwatch-collector \
    && mkdir -p /out \
    && cp target/release/hubwatch-agent target/release/hubwatch-collector /out/ \
    && strip /out/hubwatch-agent /out/hubwatch-collector

# glibc and libgcc only (the binaries link no OpenSSL: TLS is rustls), CA certificates and
# tzdata included; no shell, no package manager. The nonroot tag's user is 65532.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=builder /out/hubwatch-agent /out/hubwatch-collector /usr/local/bin/
USER 65532:65532
# The collector's listener; the agent's /metrics and /healthz.
EXPOSE 9470 9471
# No curl in a distroless image: the binary asks its own /readyz (TLS pinned to server.tls_cert).
# For the agent, override it, e.g. in Compose:
#   healthcheck: { test: ["CMD", "/usr/local/bin/hubwatch-agent", "health", "--config", "/etc/hubwatch/agent.toml"] }
HEALTHCHECK --interval=30s --timeout=10s --start-period=60s --retries=3 \
    CMD ["/usr/local/bin/hubwatch-collector", "health", "--config", "/etc/hubwatch/collector.toml"]
ENTRYPOINT ["/usr/local/bin/hubwatch-collector"]
CMD ["serve", "--config", "/etc/hubwatch/collector.toml"]
