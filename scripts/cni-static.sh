#!/usr/bin/env bash
# Builds wgmesh-cni statically linked and prints its path. `wgmesh-cni install` copies the
# binary into the host's CNI bin dir, where the container runtime runs it against the host's
# libc, which may be older than the image's (a trixie-built binary needs glibc 2.34 or newer).
# Usage: scripts/cni-static.sh [TARGET_DIR]   (default target/static)
set -euo pipefail
cd "$(dirname "$0")/.."
triple="$(rustc -vV | sed -n 's/^host: //p')"
dir="${1:-target/static}"
# --target keeps the flag off build scripts and proc macros, which run here, not on a host
RUSTFLAGS="-C target-feature=+crt-static" \
  cargo build --release --locked -p wgmesh-cni --target "$triple" --target-dir "$dir" >&2
echo "$dir/$triple/release/wgmesh-cni"
