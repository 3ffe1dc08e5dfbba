# zayzoon: a static musl binary in an otherwise empty image (SPEC.md §5).
#
#   docker build -t zayzoon .                          # amd64 → x86_64-unknown-linux-musl
#   docker build --platform linux/arm64 -t zayzoon .   # arm64 → aarch64-unknown-linux-musl (Graviton)
#   docker run --read-only -p 8443:8443 zayzoon
#
# CI builds this file as it is (scripts/scratch-check.sh: `docker build .`, both stages) and runs the
# image the way users do (read-only root, HEALTHCHECK, docker stop); scripts/arm64-check.sh builds
# the arm64 binary with this file's own `cargo build` line and runs it under QEMU.

# ---- builder -------------------------------------------------------------------------------------
# Pinned by version so a rebuild of the same commit uses the same compiler. This stage runs on the
# *target* platform (no --platform=$BUILDPLATFORM): an arm64 build runs an arm64 rustc, natively on an
# arm64 runner or under QEMU, so no cross linker is ever needed. Rust's musl targets link their own
# static C runtime, so the image's gcc is all the linker it takes.
FROM rust:1.95.0-bookworm AS builder

# The `tls` feature brings ring (rustls's crypto), which compiles C and assembly for the target. The
# cc crate looks for a compiler named after the musl triple (x86_64-linux-musl-gcc), which the image
# lacks; its own gcc builds ring's few C files for a static musl binary as well (CI's image check
# and arm64 check build exactly this).
ENV CC_x86_64_unknown_linux_musl=gcc \
    CC_aarch64_unknown_linux_musl=gcc

# Set by BuildKit (and by buildx --platform) to amd64 or arm64; the classic builder leaves it empty,
# which means the builder's own architecture.
ARG TARGETARCH

WORKDIR /src

# Map Docker's architecture name to the musl target triple once, and keep it in a file so each later
# RUN reads the same answer.
RUN arch="${TARGETARCH:-$(dpkg --print-architecture)}" \
 && case "$arch" in \
      amd64) triple=x86_64-unknown-linux-musl ;; \
      arm64) triple=aarch64-unknown-linux-musl ;; \
      *) echo "unsupported architecture: $arch (amd64 and arm64 only)" >&2; exit 1 ;; \
    esac \
 && rustup target add "$triple" \
 && echo "$triple" > /triple

# .dockerignore admits only what cargo needs (manifest, lock file, sources), so nothing else (no
# target/, no .git, no credentials lying in the tree) reaches the builder.
COPY . .

# --locked: build exactly Cargo.lock. --features tls: `rediss://` for a shared ElastiCache (SPEC §7),
# with the Mozilla roots compiled in, since this image has no CA files. Rust's musl targets link
# statically by default (crt-static), so the result needs no loader. The copy to /zayzoon gives the
# final stage one fixed path whatever the triple.
RUN triple="$(cat /triple)" \
 && cargo build --release --locked --features tls --target "$triple" \
 && cp "target/$triple/release/zayzoon" /zayzoon

# ---- image ---------------------------------------------------------------------------------------
# Nothing but the binary: no shell, no libc, no passwd file (USER is numeric), no CA bundle (the ALB
# terminates the clients' TLS; Redis over TLS checks against roots compiled into the binary, or
# REDIS_CA_FILE). The file stays root-owned and read-only to the process, which runs as nobody:nogroup.
FROM scratch
COPY --from=builder /zayzoon /zayzoon
USER 65534:65534
ENV PORT=8443
EXPOSE 8443
# The image has no curl; the binary checks itself: GET http://127.0.0.1:$PORT/health, exit 0 on a 200
# within 2 s. ECS runs the same command as the task definition's container health check.
HEALTHCHECK --interval=10s --timeout=5s --start-period=5s --retries=3 CMD ["/zayzoon", "healthcheck"]
# Docker's default, stated: zayzoon is PID 1 here and drains on SIGTERM, exiting 0 within
# SHUTDOWN_GRACE_S (20 s by default; ECS waits stopTimeout = 30 s before SIGKILL).
STOPSIGNAL SIGTERM
ENTRYPOINT ["/zayzoon"]
CMD ["serve"]
