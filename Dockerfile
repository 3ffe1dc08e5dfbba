# zayzoon: a static musl binary in an otherwise empty image (SPEC.md §5).
#
#   docker build -t zayzoon .                          # amd64 → x86_64-unknown-linux-musl
#   docker build --platform linux/arm64 -t zayzoon .   # arm64 → aarch64-unknown-linux-musl (Graviton)
#   docker run --read-only -p 8443:8443 zayzoon
#
# The final stage is the image; scripts/scratch-check.sh builds that stage, as written here, around a
# host-built binary and runs it the way users do (read-only root, HEALTHCHECK, docker stop).

# ---- builder -------------------------------------------------------------------------------------
# Pinned by version so a rebuild of the same commit uses the same compiler. This stage runs on the
# *target* platform (no --platform=$BUILDPLATFORM): an arm64 build runs an arm64 rustc, natively on an
# arm64 runner or under QEMU, so no cross linker is ever needed. The crate has no C dependencies, and
# Rust's musl targets link their own static C runtime, so the image's gcc is all the linker it takes.
FROM rust:1.95.0-bookworm AS builder

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

# --locked: build exactly Cargo.lock. Rust's musl targets link statically by default (crt-static), so
# the result needs no loader; scripts/scratch-check.sh runs the same command on the host. The copy to
# /zayzoon gives the final stage one fixed path whatever the triple.
RUN triple="$(cat /triple)" \
 && cargo build --release --locked --target "$triple" \
 && cp "target/$triple/release/zayzoon" /zayzoon

# ---- image ---------------------------------------------------------------------------------------
# Nothing but the binary: no shell, no libc, no passwd file (USER is numeric), no CA bundle (the server
# makes no TLS connections; the ALB terminates TLS). The file stays root-owned and read-only to the
# process, which runs as nobody:nogroup.
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
