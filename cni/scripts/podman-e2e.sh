#!/usr/bin/env bash
# Runs a real container through the full chain: podman (CNI backend, runc) -> bridge ->
# host-local -> wgmesh-cni, with the conflist written by `wgmesh-cni install`.
# Everything happens inside a throw-away "node" network namespace with its own underlay
# (MTU 1400, so the pod must get 1320) and under a temp dir; nothing touches the host's
# podman config, storage or network.
#
# Needs root and: apt-get install containernetworking-plugins podman runc busybox-static
# Usage: cni/scripts/podman-e2e.sh [path/to/wgmesh-cni]   (default: cargo-built debug binary)
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
bin=${1:-${CARGO_TARGET_DIR:-$here/../../target}/debug/wgmesh-cni}
bin=$(readlink -f "$bin")
for need in podman runc ip; do
    command -v "$need" >/dev/null || { echo "missing $need: apt-get install podman runc iproute2" >&2; exit 2; }
done
[ -x /usr/lib/cni/bridge ] || { echo "missing /usr/lib/cni/bridge: apt-get install containernetworking-plugins" >&2; exit 2; }
busybox=$(command -v busybox) && file -L "$busybox" | grep -q 'statically linked' \
    || { echo "need a static busybox: apt-get install busybox-static" >&2; exit 2; }
[ -x "$bin" ] || { echo "no wgmesh-cni binary at $bin (cargo build -p wgmesh-cni)" >&2; exit 2; }

tmp=$(mktemp -d /tmp/wgmesh-podman-e2e.XXXXXX)
store=(--root "$tmp/storage" --runroot "$tmp/run" --storage-driver vfs)
# nsenter, not `ip netns exec`: the latter remounts /sys and hides the cgroup mounts runc needs.
in_node() { CONTAINERS_CONF="$tmp/containers.conf" nsenter --net="/var/run/netns/$node" "$@"; }
node=wgmcni-podman-$$
cleanup() {
    if [ -f "$tmp/containers.conf" ]; then
        in_node podman "${store[@]}" rm -af >/dev/null 2>&1 || true
    fi
    ip netns del "$node" 2>/dev/null || true
    rm -rf "$tmp"
    # libcni's result cache; removed only if our run left it empty.
    rmdir /var/lib/cni/results /var/lib/cni 2>/dev/null || true
}
trap cleanup EXIT

# The node: underlay MTU 1400 holding the default route.
ip netns add "$node"
ip -n "$node" link set lo up
ip -n "$node" link add ul0 mtu 1400 type veth peer name ul0p mtu 1400
ip -n "$node" link set ul0 up
ip -n "$node" route add default dev ul0

# A minimal rootfs: static busybox only.
mkdir -p "$tmp/rootfs/bin" "$tmp/rootfs"/{proc,sys,dev,etc,tmp}
cp "$busybox" "$tmp/rootfs/bin/busybox"
ln -s busybox "$tmp/rootfs/bin/sh"

# The installer writes the standalone bridge + host-local + wgmesh-cni conflist.
"$bin" install --cni-bin-dir "$tmp/cni-bin" --cni-conf-dir "$tmp/net.d" \
    --pod-cidr 10.89.77.0/24 --bridge wgmpod0 --readiness-path "$tmp/ready"
# Only so host-local keeps its leases under $tmp instead of /var/lib/cni on this machine.
sed -i "s|\"type\": \"host-local\"|\"dataDir\": \"$tmp/ipam\", &|" "$tmp/net.d/99-wgmesh.conflist"
grep -q '"dataDir"' "$tmp/net.d/99-wgmesh.conflist" || { echo "FAIL: could not set dataDir" >&2; exit 1; }

cat > "$tmp/containers.conf" <<EOF
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
[network]
network_backend = "cni"
cni_plugin_dirs = ["$tmp/cni-bin", "/usr/lib/cni"]
network_config_dir = "$tmp/net.d"
EOF
# podman's default rlimits are more than a sandbox without CAP_SYS_RESOURCE may set.
limits=(--ulimit nofile=1024:1024 --ulimit nproc=1024:1024)
pod() {
    in_node podman "${store[@]}" run --rm "${limits[@]}" --network wgmesh --rootfs "$tmp/rootfs" \
        /bin/busybox sh -c 'cat /sys/class/net/eth0/mtu; /bin/busybox ip -4 -o addr show eth0'
}

echo "== agent not ready: the pod must not start"
if out=$(pod 2>&1); then
    echo "FAIL: container started while the agent was not ready: $out" >&2; exit 1
fi
echo "$out" | grep -q "not ready" || { echo "FAIL: unexpected error: $out" >&2; exit 1; }
echo "refused as expected: $(echo "$out" | grep -o 'the wgmesh node-agent is not ready[^;]*' | head -1)"

echo "== agent ready: the pod starts with the mesh MTU and an address from host-local"
touch "$tmp/ready"
out=$(pod)
echo "$out"
mtu=$(echo "$out" | head -1)
[ "$mtu" = 1320 ] || { echo "FAIL: pod MTU $mtu, want 1320" >&2; exit 1; }
echo "$out" | grep -q 'inet 10\.89\.77\.' || { echo "FAIL: no address from the chain" >&2; exit 1; }
echo "PASS: podman -> bridge -> host-local -> wgmesh-cni"
