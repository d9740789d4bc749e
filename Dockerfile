# syntax=docker/dockerfile:1
# dga-operator image: a static musl binary on distroless, running as the nonroot user (65532).
#
#   docker build -t ghcr.io/dga-operator/dga-operator:0.1.0 .
#
# Build stage: Alpine's Rust targets musl natively, so the binary is static.
FROM rust:1-alpine AS build
# C toolchain for aws-lc-rs (rustls' crypto provider) and zip's deflate backend.
RUN apk add --no-cache build-base cmake perl
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin dga-operator \
 && cp target/release/dga-operator /dga-operator \
 && strip /dga-operator

# Runtime stage: no shell, no package manager. Pinned by digest for reproducible images;
# refresh it with `crane digest gcr.io/distroless/static-debian12:nonroot`.
FROM gcr.io/distroless/static-debian12:nonroot@sha256:6ec5aa99dc335666e79dc64e4a6c8b89c33a543a1967f20d360922a80dd21f02
COPY --from=build /dga-operator /dga-operator
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/dga-operator"]
CMD ["run"]
