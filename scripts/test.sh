#!/usr/bin/env bash
# The whole test suite, as CI runs it: formatting, lints (warnings are errors), then every unit,
# property and integration test. Integration tests start the real server binaries on ephemeral
# loopback ports; what they need besides (Chromium, nats-server) is installed here if missing.
set -euo pipefail
cd "$(dirname "$0")/.."

# The browser test (tests/browser.rs) drives Debian's headless Chromium through chromedriver.
if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then
    echo "== installing chromium and chromium-driver (for tests/browser.rs)"
    install=(env DEBIAN_FRONTEND=noninteractive apt-get install -y chromium chromium-driver)
    "${install[@]}" || { apt-get update && "${install[@]}"; }
fi

# The reverse-proxy tests (tests/proxy.rs) run the README's nginx and Caddy configurations
# through a real nginx (its chat port a stream proxy, a module of its own) and Caddy, on
# ephemeral loopback ports.
if [ ! -x /usr/sbin/nginx ] || [ ! -e /usr/lib/nginx/modules/ngx_stream_module.so ] \
    || ! command -v caddy >/dev/null; then
    echo "== installing nginx-light, libnginx-mod-stream and caddy (for tests/proxy.rs)"
    install=(env DEBIAN_FRONTEND=noninteractive apt-get install -y nginx-light libnginx-mod-stream caddy)
    "${install[@]}" || { apt-get update && "${install[@]}"; }
fi

# The cluster tests (tests/cluster.rs, and the client's failover across nodes in
# crates/client/tests/failover.rs) start Debian's nats-server with JetStream themselves, on
# ephemeral loopback ports.
if ! command -v nats-server >/dev/null; then
    echo "== installing nats-server (for tests/cluster.rs)"
    install=(env DEBIAN_FRONTEND=noninteractive apt-get install -y nats-server)
    "${install[@]}" || { apt-get update && "${install[@]}"; }
fi

# The deployment tests (tests/deploy.rs) install the Debian package with dpkg and build and run
# the Dockerfile's image with podman (runc: crun refuses this machine's cgroups), on a Debian
# base made with debootstrap.
if ! command -v podman >/dev/null || ! command -v runc >/dev/null || ! command -v debootstrap >/dev/null; then
    echo "== installing podman, runc and debootstrap (for tests/deploy.rs)"
    install=(env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends
             podman runc debootstrap)
    "${install[@]}" || { apt-get update && "${install[@]}"; }
fi

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== cargo test"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
cargo test --workspace --locked --all-targets --no-fail-fast 2>&1 | tee "$log" || status=$?
# One summary line over every test binary (cargo prints one per binary).
awk '/^test result:/ { p += $4; f += $6 } END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
exit "$status"
