#!/usr/bin/env bash
# Builds machat's Debian package with dpkg-deb (Debian's own tool; no other packaging tool to
# install): the server and the terminal client, the systemd unit, /etc/machat/machat.toml (every
# setting at its default but the data dir, /var/lib/machat) and the docs.
#
#   scripts/package-deb.sh                      # cargo build --release, then target/machat_VERSION_ARCH.deb
#   scripts/package-deb.sh --bin-dir DIR --out FILE   # package binaries already built in DIR
set -euo pipefail
cd "$(dirname "$0")/.."

bin_dir=""
out=""
while [ $# -gt 0 ]; do
    case "$1" in
        --bin-dir) bin_dir="$2"; shift 2 ;;
        --out) out="$2"; shift 2 ;;
        *) echo "usage: $0 [--bin-dir DIR] [--out FILE.deb]" >&2; exit 2 ;;
    esac
done
if [ -z "$bin_dir" ]; then
    cargo build --release --locked -p machat -p machat-client
    bin_dir=target/release
fi
for b in machat machat-client; do
    [ -x "$bin_dir/$b" ] || { echo "$0: no $bin_dir/$b (build it first)" >&2; exit 1; }
done

version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)
arch=$(dpkg --print-architecture)
out=${out:-target/machat_${version}_${arch}.deb}
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
root="$stage/machat_${version}_${arch}"

install -d "$root/DEBIAN" "$root/usr/bin" "$root/lib/systemd/system" "$root/etc/machat" \
    "$root/usr/share/doc/machat"
for b in machat machat-client; do
    install -m 0755 "$bin_dir/$b" "$root/usr/bin/$b"
    strip --strip-debug "$root/usr/bin/$b"
done
install -m 0644 packaging/machat.service "$root/lib/systemd/system/machat.service"
# The packaged settings: the server's own complete, commented defaults, with the data dir where
# a service keeps its state. Checked by the server itself before it goes in.
"$root/usr/bin/machat" config default \
    | sed 's|^#\? *data_dir = .*|data_dir = "/var/lib/machat"|' > "$root/etc/machat/machat.toml"
grep -q '^data_dir = "/var/lib/machat"$' "$root/etc/machat/machat.toml" \
    || { echo "$0: no data_dir line in 'machat config default'" >&2; exit 1; }
"$root/usr/bin/machat" config check "$root/etc/machat/machat.toml" >/dev/null
install -m 0644 README.md SECURITY.md "$root/usr/share/doc/machat/"
install -m 0644 docs/PROTOCOL.md "$root/usr/share/doc/machat/PROTOCOL.md"
cat > "$root/usr/share/doc/machat/copyright" <<COPY
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: machat
License: MIT
COPY
install -m 0755 packaging/postinst packaging/prerm packaging/postrm "$root/DEBIAN/"
echo /etc/machat/machat.toml > "$root/DEBIAN/conffiles"
size=$(du -sk --exclude=DEBIAN "$root" | cut -f1)
cat > "$root/DEBIAN/control" <<CONTROL
Package: machat
Version: $version
Architecture: $arch
Maintainer: machat developers <machat@localhost>
Installed-Size: $size
Depends: libc6 (>= 2.34), adduser
Section: net
Priority: optional
Description: chat server for teams and communities: nc to browser, one binary
 A MaChat-compatible chat server: plain TCP lines (nc works), JSON, WebSocket and an embedded
 web page, TLS, history that survives crashes, registered names, moderation, abuse limits and
 a cluster mode on NATS JetStream. Runs as the machat service with its settings in
 /etc/machat/machat.toml and its data in /var/lib/machat.
CONTROL
mkdir -p "$(dirname "$out")"
dpkg-deb --root-owner-group --build "$root" "$out" >/dev/null
echo "$out"
