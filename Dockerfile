# machat in a container: a build stage with the Rust toolchain, then a small runtime image with
# the two binaries, run as a non-root user, its data in a volume.
#
#   docker build -t machat .
#   docker run -d --name machat -p 8989:8989 -p 8080:8080 -v machat-data:/var/lib/machat machat
#
# Settings are flags after the image name, MACHAT_* variables (-e), or a file mounted read-only
# and named with --config (see README "Deploying").

FROM rust:1-slim-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p machat -p machat-client \
    && mkdir /out \
    && cp target/release/machat target/release/machat-client /out/ \
    && strip /out/machat /out/machat-client

FROM debian:bookworm-slim
# A fixed uid, so that a volume or a bind-mounted directory can be given to it from outside.
RUN groupadd --system --gid 10001 machat \
    && useradd --system --uid 10001 --gid machat --home-dir /var/lib/machat --no-create-home \
        --shell /usr/sbin/nologin machat \
    && install -d -o machat -g machat -m 0750 /var/lib/machat
COPY --from=build /out/machat /out/machat-client /usr/bin/
USER machat
WORKDIR /var/lib/machat
VOLUME ["/var/lib/machat"]
# In a container the ports must listen on every interface to be published; the data dir is the
# volume.
ENV MACHAT_ADDR=0.0.0.0:8989 \
    MACHAT_HTTP=0.0.0.0:8080 \
    MACHAT_DATA_DIR=/var/lib/machat
EXPOSE 8989 8080
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/bin/machat"]
