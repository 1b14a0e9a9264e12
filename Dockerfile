# syntax=docker/dockerfile:1
#
# vpp-broker container image.
#
#   docker build -t vpp-broker:dev .
#   docker run --rm vpp-broker:dev --help
#
# Four stages: cargo-chef computes a "recipe" of the dependency graph (Cargo.toml + Cargo.lock,
# with every target stubbed out), the dependency layer is built from that recipe alone and stays
# cached until the lock file changes, then the real sources are compiled, and the binary is
# copied onto a distroless runtime.

ARG RUST_IMAGE=rust:1.95-bookworm
# Runtime base, see the comment on the last stage.
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot

# ---------------------------------------------------------------------------------------------
FROM ${RUST_IMAGE} AS chef
ARG CARGO_CHEF_VERSION=0.1.78
WORKDIR /build
RUN cargo install cargo-chef --version "${CARGO_CHEF_VERSION}" --locked

# ---------------------------------------------------------------------------------------------
FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

# ---------------------------------------------------------------------------------------------
FROM chef AS builder
# Dependencies only: this layer is rebuilt when Cargo.toml / Cargo.lock change, not on every
# source edit.
COPY --from=planner /build/recipe.json recipe.json
RUN cargo chef cook --release --locked --recipe-path recipe.json

# Then the sources (src/, and migrations/ which diesel's embed_migrations! reads at compile
# time). .dockerignore keeps target/, .git, the chart and docs out of the build context.
COPY . .
# No `--features dev`: the production image has no Apple simulator (with its unauthenticated
# admin API), no local PostgreSQL finder and no `dev` / `apple-sim` subcommands.
RUN cargo build --release --locked --bin vpp-broker

# ---------------------------------------------------------------------------------------------
# Runtime: distroless "cc" = glibc, libgcc_s, CA certificates and tzdata, nothing else (no
# shell, no package manager). That is all the binary needs:
#   - PostgreSQL through tokio-postgres (diesel-async; migrations via AsyncConnectionWrapper),
#     so no libpq;
#   - TLS (Apple, JWKS) through rustls with aws-lc-rs compiled in, so no OpenSSL; the
#     system CA bundle at /etc/ssl/certs is used to verify servers.
# The ":nonroot" variant runs as uid/gid 65532 by default; USER repeats it numerically so
# Kubernetes' runAsNonRoot check can verify it without resolving a user name.
FROM ${RUNTIME_IMAGE} AS runtime

ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="vpp-broker" \
      org.opencontainers.image.description="Allocates, revokes and reconciles Apple Apps and Books (VPP) licenses across prioritized token accounts" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="MIT" \
      org.opencontainers.image.base.name="gcr.io/distroless/cc-debian12:nonroot"

COPY --from=builder /build/target/release/vpp-broker /usr/local/bin/vpp-broker

# The binary writes nothing to disk, so the root filesystem can be mounted read-only.
# Logs go to stdout/stderr. Health is checked by Kubernetes probes (/livez, /readyz), so there
# is deliberately no HEALTHCHECK (the image has no shell or curl to run one anyway).
USER 65532:65532
EXPOSE 8080
# actix-web stops accepting connections on SIGTERM and drains in-flight requests for
# VPP_SHUTDOWN_TIMEOUT_SECS before exiting.
STOPSIGNAL SIGTERM
ENTRYPOINT ["vpp-broker"]
CMD ["serve"]
