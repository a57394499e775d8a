#!/usr/bin/env bash
# Build the CPU container image of vramprobe here, without pulling anything: an OCI image
# layout (and the same as one tar that `podman load` / `docker load` take) holding one layer
# with the release binary, the shared libraries it links (found with ldd), the CA
# certificates (for the Hub's TLS) and a non-root user. deploy/kubernetes/daemonset.yaml runs
# this image; deploy/container/Containerfile builds the same with docker/podman.
#
#   scripts/build-image.sh [OUT_DIR]        # default target/image
#
# Env: VRAMPROBE_BIN (default target/release/vramprobe, built if missing), IMAGE_NAME
# (default ghcr.io/vramprobe/vramprobe), IMAGE_TAG (default the crate version).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
out="${1:-$root/target/image}"
bin="${VRAMPROBE_BIN:-$root/target/release/vramprobe}"
name="${IMAGE_NAME:-ghcr.io/vramprobe/vramprobe}"
tag="${IMAGE_TAG:-$(grep -m1 '^version' "$root/Cargo.toml" | cut -d'"' -f2)}"
if [ ! -x "$bin" ]; then
  (cd "$root" && cargo build --release --locked --bin vramprobe)
fi
rootfs="$(mktemp -d)"
trap 'rm -rf "$rootfs"' EXIT
install -D -m 0755 "$bin" "$rootfs/usr/local/bin/vramprobe"
strip "$rootfs/usr/local/bin/vramprobe" 2>/dev/null || true
# The libraries the binary links, at the paths the dynamic loader looks for them.
ldd "$bin" | awk '/=>/ {print $3} /^\t\/[^ ]+/ {print $1}' | while read -r lib; do
  [ -f "$lib" ] || continue
  install -D -m 0644 "$lib" "$rootfs$lib"
  real="$(readlink -f "$lib")"
  [ "$real" = "$lib" ] || install -D -m 0644 "$real" "$rootfs$real"
done
chmod 0755 "$rootfs"/lib64/ld-linux-*.so.* 2>/dev/null || true
if [ -f /etc/ssl/certs/ca-certificates.crt ]; then
  install -D -m 0644 /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/ca-certificates.crt"
fi
# The shipped model configs, for sweeps of synthetic weights with no download.
mkdir -p "$rootfs/usr/share/vramprobe"
cp -r "$root/models" "$rootfs/usr/share/vramprobe/models"
mkdir -p "$rootfs/etc" "$rootfs/tmp" "$rootfs/var/lib/vramprobe/runs"
chmod 1777 "$rootfs/tmp"
echo "root:x:0:0:root:/root:/sbin/nologin" >"$rootfs/etc/passwd"
echo "vramprobe:x:65532:65532:vramprobe:/var/lib/vramprobe:/sbin/nologin" >>"$rootfs/etc/passwd"
printf 'root:x:0:\nvramprobe:x:65532:\n' >"$rootfs/etc/group"
python3 "$root/scripts/oci_layout.py" "$rootfs" "$out" "$name" "$tag"
