# syntax=docker/dockerfile:1
# The nimbus image: the two executables (`nimbus` and `nimbus-sandbox-init`, the small first
# program of every sandbox) on a slim Debian with what process functions need — bubblewrap (the
# sandbox), python3 and Node.js (the python and node runtimes) — running as a non-root user.
#
#   docker build -t nimbus:0.1.0 .
#   docker run -p 8080:8080 -v "$PWD/examples/hello:/app:ro" \
#     --security-opt seccomp=unconfined --security-opt apparmor=unconfined \
#     --security-opt systempaths=unconfined nimbus:0.1.0
#
# Without arguments it serves the app in /app on 0.0.0.0:8080 with its state in
# /var/lib/nimbus. The three --security-opt are what bubblewrap needs to make each function's
# sandbox inside a container: user namespaces (Docker's default seccomp profile refuses them),
# mounts in them (its AppArmor profile refuses those) and a /proc without masked paths (the
# kernel will not mount a new /proc over one). deploy/kubernetes/ runs the image as a cluster;
# docs/cluster.md says the same for Kubernetes.

# Build and runtime images share one Debian release (trixie), so the binary finds the glibc
# it was linked against.
FROM rust:1.95-trixie AS build
WORKDIR /src
COPY . .
# The registry and the target dir are BuildKit caches: a rebuild after a code change compiles
# nimbus's own crates, not wasmtime again. They are not in the image, hence the copy to /out.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p nimbus --bins \
    && install -D -m 0755 -t /out target/release/nimbus target/release/nimbus-sandbox-init

FROM debian:trixie-slim
# tini as PID 1 passes SIGTERM on to nimbus (which drains, then stops its instances) and
# reaps any process that outlives its parent. The Debian release is pinned (trixie), the
# packages are not: a rebuild picks up that release's security updates.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends bubblewrap ca-certificates nodejs python3 tini tzdata \
    && rm -rf /var/lib/apt/lists/*
RUN groupadd --system --gid 10001 nimbus \
    && useradd --system --uid 10001 --gid nimbus --home-dir /var/lib/nimbus --shell /usr/sbin/nologin nimbus \
    && mkdir -p /app /var/lib/nimbus \
    && chown nimbus:nimbus /var/lib/nimbus
COPY --from=build /out/ /usr/local/bin/
USER 10001:10001
WORKDIR /var/lib/nimbus
EXPOSE 8080
ENTRYPOINT ["/usr/bin/tini", "--", "/usr/local/bin/nimbus"]
CMD ["up", "/app", "--listen", "0.0.0.0:8080", "--data-dir", "/var/lib/nimbus"]
