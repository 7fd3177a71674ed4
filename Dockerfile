# siplb appliance image: the host-built release binary on a slim Debian base.
#
# Build (the binary is built on the host first; no Rust toolchain in the image):
#   cargo build --release -p siplb
#   docker build -t siplb .            # or: podman --runtime runc build -t localhost/siplb .
# Run (host networking keeps the SIP source addresses siplb writes into Via as they are):
#   docker run --rm --network host -v /etc/siplb/config.toml:/etc/siplb/config.toml:ro siplb
#
# The config.toml baked in is the repository's example; it listens on 127.0.0.1 only. For real
# use mount a config whose [listen] (and [ops] listen) addresses are 0.0.0.0 or the host's
# addresses, with `advertise` set to the address clients and servers reach siplb on.
# Check a config with the image: docker run --rm -v $PWD/my.toml:/c.toml:ro siplb check --config /c.toml
#
# Only a runtime stage: a build stage FROM the Rust image would need a registry pull, which the
# build machines do not have. The base is the stock bookworm-slim image; without registry
# access, import a debootstrap'd bookworm as that name first:
#   debootstrap --variant=minbase bookworm rootfs
#   tar -C rootfs -c . | podman import - localhost/debian:bookworm-slim
# The build needs no network: nothing is installed in the image.
FROM debian:bookworm-slim

RUN groupadd --system siplb \
    && useradd --system --gid siplb --home-dir /nonexistent --no-create-home \
        --shell /usr/sbin/nologin siplb \
    && mkdir -p /etc/siplb

COPY target/release/siplb /usr/local/bin/siplb
COPY config.toml /etc/siplb/config.toml
# The public demo certificate the example config's TLS listener names (tls/README.md): never
# for production; mount your own pair and a config naming it.
COPY tls/demo.crt tls/demo.key /etc/siplb/tls/

USER siplb:siplb
WORKDIR /etc/siplb

# SIP over UDP and TCP, SIP over TLS, the ops HTTP endpoint (/healthz, /readyz, /metrics).
EXPOSE 5060/udp 5060/tcp 5061/tcp 9060/tcp

# SIGTERM drains: /readyz turns 503, TCP/TLS listeners close, UDP and open flows keep working
# for [listen] shutdown_grace (10 s by default), then siplb exits 0 (README, "Stopping").
STOPSIGNAL SIGTERM
# The image has no curl: siplb asks its own /healthz (the [ops] listen of the config).
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["/usr/local/bin/siplb", "healthcheck", "--config", "/etc/siplb/config.toml"]

ENTRYPOINT ["/usr/local/bin/siplb"]
CMD ["--config", "/etc/siplb/config.toml"]
