#!/usr/bin/env bash
# Demo: wgmesh-tunnel in one network namespace, wireguard-go in another, configured with the
# stock `wg`; a ping and a 3-second iperf3 run through the tunnel. Cleans up on exit. Root.
set -euo pipefail
cd "$(dirname "$0")/.."
for t in wg wireguard-go iperf3 ip; do
  command -v "$t" >/dev/null || { echo "missing $t: apt-get install wireguard-tools wireguard-go iperf3 iproute2" >&2; exit 1; }
done
cargo build --release -q -p wgmesh-tunnel
bin="$PWD/target/release/wgmesh-tunnel"
a=wgdemo-a b=wgdemo-b
cleanup() {
  ip -n $a link del wgdemo0 2>/dev/null || true
  ip -n $b link del wgdemo1 2>/dev/null || true
  sleep 0.3
  for ns in $a $b; do ip netns pids $ns 2>/dev/null | xargs -r kill 2>/dev/null || true; ip netns del $ns 2>/dev/null || true; done
}
trap cleanup EXIT
cleanup
ip netns add $a; ip netns add $b
ip link add veth-a netns $a type veth peer name veth-b netns $b
ip -n $a addr add 10.77.0.1/24 dev veth-a; ip -n $b addr add 10.77.0.2/24 dev veth-b
for ns in $a $b; do ip -n $ns link set lo up; done
ip -n $a link set veth-a up; ip -n $b link set veth-b up

echo "== starting wgmesh-tunnel (ours) in $a and wireguard-go in $b"
ip netns exec $a "$bin" wgdemo0
ip netns exec $b wireguard-go wgdemo1
ka=$(wg genkey); kb=$(wg genkey)
ip netns exec $a wg set wgdemo0 private-key <(echo "$ka") listen-port 51820 \
  peer "$(echo "$kb" | wg pubkey)" endpoint 10.77.0.2:51820 allowed-ips 192.168.77.2/32
ip netns exec $b wg set wgdemo1 private-key <(echo "$kb") listen-port 51820 \
  peer "$(echo "$ka" | wg pubkey)" endpoint 10.77.0.1:51820 allowed-ips 192.168.77.1/32
ip -n $a addr add 192.168.77.1/24 dev wgdemo0; ip -n $a link set wgdemo0 up
ip -n $b addr add 192.168.77.2/24 dev wgdemo1; ip -n $b link set wgdemo1 up
sleep 0.3

echo "== ping through the tunnel"
ip netns exec $a ping -c 3 -i 0.2 192.168.77.2
echo "== iperf3, 3 s, ours -> wireguard-go"
ip netns exec $b iperf3 -s -D -1 --logfile /dev/null
sleep 0.3
ip netns exec $a iperf3 -c 192.168.77.2 -t 3 | tail -4
echo "== wg show (ours)"
ip netns exec $a wg show wgdemo0
