#!/usr/bin/env bash
# The project's test command: every crate's tests, then a short smoke run of each fuzz target.
# Needs root (network namespaces) and the packages .ci/run installs.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== cargo test (workspace)"
cargo test --workspace --locked

echo "== wgmesh-cni as a host runs it: statically linked, in an empty root (no libc at all)"
cni="$(scripts/cni-static.sh)"
root="$(mktemp -d)"
cp "$cni" "$root/wgmesh-cni"
version="$(CNI_COMMAND=VERSION chroot "$root" /wgmesh-cni </dev/null)" || version="(did not run)"
rm -rf "$root"
if ! grep -q '"supportedVersions"' <<<"$version"; then
  echo "the static wgmesh-cni does not run on its own: $version" >&2
  exit 1
fi
echo "$version"

fuzz_seconds="${FUZZ_SECONDS:-20}"
if [ "$fuzz_seconds" != 0 ]; then
  echo "== fuzz smoke (${fuzz_seconds}s per target)"
  if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "cargo-fuzz is missing: run 'cargo install cargo-fuzz' (or set FUZZ_SECONDS=0)" >&2
    exit 1
  fi
  # cargo fuzz needs nightly-only flags; RUSTC_BOOTSTRAP lets this stable toolchain use them.
  for spec in tunnel:message_parser tunnel:receive_path tunnel:uapi_parser tunnel:offload tunnel:aead cni:config_parser api:mesh_build; do
    crate="${spec%%:*}" target="${spec#*:}"
    echo "-- $crate/$target"
    dict=() && [ -f "$crate/fuzz/$target.dict" ] && dict=(-dict="$target.dict")
    log="$(mktemp)"
    if ! (cd "$crate/fuzz" && RUSTC_BOOTSTRAP=1 cargo fuzz run "$target" -- -max_total_time="$fuzz_seconds" "${dict[@]}") >"$log" 2>&1; then
      # cargo-fuzz ends a failure with its own backtrace; the cause is above it.
      grep -v -E '^ +([0-9]+: |at )' "$log" | tail -n 60
      df -h . >&2
      exit 1
    fi
    tail -n 2 "$log" && rm -f "$log"
  done
fi
echo "== all tests passed"
