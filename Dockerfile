# One image with the three binaries (domain-manager, domain-node, domain), run as an
# unprivileged user. The build stage runs the build `cargo xtask dist` runs.
#   docker build -t domain-cluster .
#   docker compose -f deploy/compose.yaml up        (a manager and two nodes)

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bins -p domain-cli -p domain-manager -p domain-node

FROM debian:bookworm-slim
# The state folders live under the user's home; the binaries make them mode 0700.
RUN useradd --system --uid 10001 --user-group --create-home --home-dir /var/lib/domain domain
COPY --from=build /src/target/release/domain /src/target/release/domain-manager /src/target/release/domain-node /usr/local/bin/
USER 10001:10001
WORKDIR /var/lib/domain
VOLUME ["/var/lib/domain"]
# libp2p over TCP and QUIC, and the operator's /metrics, /healthz, /readyz.
EXPOSE 4001/tcp 4001/udp 9464/tcp
CMD ["domain-manager", "--help"]
