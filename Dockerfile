# Multi-stage: build with the Rust toolchain, run on a slim Debian with only CA certificates.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release -p hookrelay --bin hookrelay

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 hookrelay
COPY --from=build /src/target/release/hookrelay /usr/local/bin/hookrelay
USER hookrelay
ENV HOOKRELAY_LISTEN=0.0.0.0:8080
EXPOSE 8080
ENTRYPOINT ["hookrelay"]
CMD ["serve"]
