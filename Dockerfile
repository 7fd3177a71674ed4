# siplb appliance image: the siplb binary on a slim Debian bookworm base, run as uid/gid 10001.
#
# Two ways to build it (README, "Container"):
#
# From source, where a registry is reachable (the default, last stage: the release binary is
# built in the official Rust image, only the binary goes into the runtime stage):
#   docker build -t siplb .
#   podman build --format docker -t siplb .     # the OCI format has no HEALTHCHECK
#
# From a binary built on the host (target `host`: no Rust image needed, nothing is pulled when
# the base image is local, nothing is installed in the image, no network):
#   cargo build --release --locked -p siplb
#   podman --runtime runc build --format docker --target host -t localhost/siplb:dev .
#   docker build --target host -t siplb .
# `--target host` builds only the stages `host` needs: `runtime` and `host` come before `build`
# in this file, so even a builder that builds every stage up to the target never meets the Rust
# image (buildah, behind `podman build`, skips unused stages by default as BuildKit does:
# checked with podman 4.3, where `--skip-unused-stages=false` tries to pull the Rust image).
# Without registry access, make the base image first from the Debian package mirror:
#   debootstrap --variant=minbase bookworm rootfs
#   tar -C rootfs -c . | podman import - localhost/debian:bookworm-slim
# (`FROM debian:bookworm-slim` finds that local image; tests/container/run.sh does all of this.)
#
# Labels: pass the repository's URL, the version, the commit and the build time, e.g.
#   --build-arg SOURCE=$(git remote get-url origin) --build-arg VERSION=0.1.0 \
#   --build-arg REVISION=$(git rev-parse HEAD) --build-arg CREATED=$(date -u +%Y-%m-%dT%H:%M:%SZ)
#
# Run (host networking keeps the SIP source addresses siplb writes into Via as they are; mount
# the config's DIRECTORY, not the file, so an edit saved by renaming a new file over the old
# one is seen and reloaded; its files must be readable by uid 10001):
#   docker run -d --name siplb --network host -v /srv/siplb:/etc/siplb:ro siplb
#
# The config.toml baked in is the repository's example; it listens on 127.0.0.1 only. For real
# use mount a config whose [listen] (and [ops] listen) addresses are 0.0.0.0 or the host's
# addresses, with `advertise` set to the address clients and servers reach siplb on.
# Check a config with the image: docker run --rm -v $PWD/my.toml:/c.toml:ro siplb check --config /c.toml

# The image the source build runs in; a mirror of it may be given with --build-arg.
ARG RUST_IMAGE=docker.io/library/rust:1-bookworm

# ---------------------------------------------------------------------------------------------
# runtime: everything of the image but the binary.
FROM debian:bookworm-slim AS runtime

# uid/gid 10001, as deploy/kubernetes/deployment.yaml runs the pods (runAsUser, fsGroup): files
# made for the image and for the pods then belong to the same user.
RUN groupadd --gid 10001 siplb \
    && useradd --uid 10001 --gid 10001 --no-log-init --home-dir /nonexistent \
        --no-create-home --shell /usr/sbin/nologin siplb \
    && mkdir -p /etc/siplb

COPY config.toml /etc/siplb/config.toml
# The public demo certificate the example config's TLS listener names (tls/README.md): never
# for production; mount your own pair and a config naming it.
COPY tls/demo.crt tls/demo.key /etc/siplb/tls/

USER 10001:10001
WORKDIR /etc/siplb

# SIP over UDP and TCP, SIP over TLS, the ops HTTP endpoint of the shipped config (/healthz,
# /readyz, /status, /metrics).
EXPOSE 5060/udp 5060/tcp 5061/tcp 9060/tcp

# SIGTERM drains: /readyz turns 503, TCP/TLS listeners close, UDP and open flows keep working
# for [listen] shutdown_grace (10 s by default), then siplb exits 0 (README, "Stopping"). Give
# `docker stop -t` / `podman stop -t` more than the grace.
STOPSIGNAL SIGTERM
# The image has no curl: siplb asks its own /healthz (the [ops] listen of the config).
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["/usr/local/bin/siplb", "healthcheck", "--config", "/etc/siplb/config.toml"]

ENTRYPOINT ["/usr/local/bin/siplb"]
CMD ["--config", "/etc/siplb/config.toml"]

# The labels come last, as they change at every build: the repository's URL, the version, the
# commit and the build time (RFC 3339), given with --build-arg.
ARG SOURCE=unknown
ARG VERSION=dev
ARG REVISION=unknown
ARG CREATED=1970-01-01T00:00:00Z
LABEL org.opencontainers.image.title="siplb" \
      org.opencontainers.image.description="SIP-aware stateless load-balancing proxy: routes each user to one server of its pool by rendezvous hashing, probes the servers, fails pools over to their pair" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}"

# ---------------------------------------------------------------------------------------------
# host: the runtime with a binary built on the host (glibc of bookworm or older). Its path in
# the build context; .dockerignore lets only target/release/siplb through.
FROM runtime AS host
ARG SIPLB_BINARY=target/release/siplb
COPY ${SIPLB_BINARY} /usr/local/bin/siplb

# ---------------------------------------------------------------------------------------------
# build: the release binary from source. Cargo reads every workspace member's manifest (and
# needs each member's targets), so all members are copied; nothing of the host's target/.
FROM ${RUST_IMAGE} AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock config.toml ./
COPY proxy proxy
COPY healthcheck healthcheck
COPY tests tests
COPY bench/loadgen bench/loadgen
RUN cargo build --release --locked -p siplb \
    && cp target/release/siplb /usr/local/bin/siplb

# ---------------------------------------------------------------------------------------------
# source (the default): the runtime with the binary built above.
FROM runtime AS source
COPY --from=build /usr/local/bin/siplb /usr/local/bin/siplb
