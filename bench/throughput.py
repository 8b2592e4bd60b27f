#!/usr/bin/env python3
"""Side-by-side throughput of WireGuard engines between two network namespaces.

Two namespaces joined by one veth; iperf3 with one and four TCP streams, and ping RTT, over:
  veth       the bare veth (no tunnel): the ceiling
  ours       wgmesh-tunnel on both sides
  wggo       wireguard-go on both sides
  boringtun  boringtun-cli on both sides (only if installed), its default 4 threads
  boringtun1 boringtun-cli --threads 1 on both sides (faster than 4 threads on 2 cores)
  ours-wggo, wggo-ours   mixed pairs (sender-receiver)
Modes are interleaved over several repetitions; medians are printed as a markdown table with
the ratio of ours to each other engine. Needs root, iperf3, wireguard-tools, wireguard-go.

Usage: bench/throughput.py [--reps 3] [--seconds 5] [--modes veth,ours,wggo,...] [--bin PATH]
"""
import argparse, json, os, shutil, signal, statistics, subprocess, sys, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NS = ("wgbench1", "wgbench2")


def sh(cmd, check=True, **kw):
    r = subprocess.run(cmd, shell=True, capture_output=True, text=True, **kw)
    if check and r.returncode != 0:
        raise RuntimeError(f"{cmd}: {r.stderr.strip()}")
    return r.stdout


def exit_on_sigterm():
    """SIGTERM (pkill, a CI timeout) ends the run through its `finally`, so the namespaces and
    engines go too; Python's default would die on the spot and leave them."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("stopped by SIGTERM"))


def cleanup():
    for ns in NS:
        sh(f"ip -n {ns} link del wgb0 2>/dev/null; ip -n {ns} link del wgb1 2>/dev/null; ip netns pids {ns} 2>/dev/null | xargs -r kill 2>/dev/null", check=False)
    time.sleep(0.3)
    for ns in NS:
        sh(f"ip netns del {ns} 2>/dev/null", check=False)
    for f in ("wgb0.sock", "wgb1.sock"):
        try:
            os.remove(f"/var/run/wireguard/{f}")
        except FileNotFoundError:
            pass


def engine_cmd(kind, ours_bin):
    return {"ours": ours_bin, "wggo": "wireguard-go", "boringtun": "boringtun-cli --disable-drop-privileges",
            "boringtun1": "boringtun-cli --disable-drop-privileges --threads 1"}[kind]


def setup(mode, ours_bin):
    cleanup()
    for ns in NS:
        sh(f"ip netns add {ns} && ip -n {ns} link set lo up")
    sh(f"ip link add vb1 netns {NS[0]} type veth peer name vb2 netns {NS[1]}")
    for i, ns in enumerate(NS):
        sh(f"ip -n {ns} addr add 10.88.0.{i+1}/24 dev vb{i+1} && ip -n {ns} link set vb{i+1} up")
    if mode == "veth":
        return ["10.88.0.2"]
    kinds = {"ours": ("ours", "ours"), "wggo": ("wggo", "wggo"), "boringtun": ("boringtun", "boringtun"),
             "boringtun1": ("boringtun1", "boringtun1"),
             "ours-wggo": ("ours", "wggo"), "wggo-ours": ("wggo", "ours")}[mode]
    keys = [sh("wg genkey").strip() for _ in NS]
    pubs = [sh(f"echo {k} | wg pubkey").strip() for k in keys]
    # Interface names are global through /var/run/wireguard: one name, one side at a time.
    for i, ns in enumerate(NS):
        name = f"wgb{i}"
        sh(f"ip netns exec {ns} env WG_SUDO=1 {engine_cmd(kinds[i], ours_bin)} {name}")
        j = 1 - i
        sh(f"ip netns exec {ns} bash -c 'wg set {name} private-key <(echo {keys[i]}) listen-port 5180{i} "
           f"peer {pubs[j]} endpoint 10.88.0.{j+1}:5180{j} allowed-ips 10.89.0.{j+1}/32'")
        sh(f"ip -n {ns} addr add 10.89.0.{i+1}/24 dev {name} && ip -n {ns} link set {name} up")
    time.sleep(0.5)
    return ["10.89.0.2"]


def engine_cpu(ns):
    """CPU seconds (user + system) used so far by the processes in a namespace's engine."""
    total = 0
    for pid in sh(f"ip netns pids {ns}", check=False).split():
        try:
            comm = open(f"/proc/{pid}/comm").read().strip()
            if comm in ("iperf3", "ping"):
                continue
            f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
            total += int(f[11]) + int(f[12])
        except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
            pass
    return total / os.sysconf("SC_CLK_TCK")


def udp_rcvbuf_errors(ns):
    lines = [l.split() for l in sh(f"ip netns exec {ns} cat /proc/net/snmp").splitlines() if l.startswith("Udp:")]
    return int(lines[1][lines[0].index("RcvbufErrors")])


def measure(dst, seconds):
    out = {}
    sh(f"ip netns exec {NS[1]} iperf3 -s -D -1 -p 5201 --logfile /dev/null")
    time.sleep(0.3)
    for streams in (1, 4):
        sh(f"ip netns exec {NS[1]} pkill -x iperf3", check=False)
        sh(f"ip netns exec {NS[1]} iperf3 -s -D -p 5201 --logfile /dev/null")
        time.sleep(0.3)
        cpu0 = [engine_cpu(ns) for ns in NS]
        drops0 = udp_rcvbuf_errors(NS[1])
        t0 = time.time()
        r = json.loads(sh(f"ip netns exec {NS[0]} iperf3 -c {dst} -p 5201 -t {seconds} -P {streams} -J", check=False) or "{}")
        wall = time.time() - t0
        bps = r.get("end", {}).get("sum_received", {}).get("bits_per_second", 0.0)
        if not bps:
            # counted as 0 (the median absorbs one); say why rather than hide it
            print(f"  iperf3 to {dst}, {streams} stream(s), failed: {r.get('error', 'no result')}", file=sys.stderr, flush=True)
        out[f"tcp{streams}"] = bps / 1e9
        if streams == 1:
            # Cores used by each engine per Gbit/s carried, and datagrams the receiver's socket dropped.
            cores = [(engine_cpu(ns) - c) / wall for ns, c in zip(NS, cpu0)]
            out["cpu_per_gbit"] = max(cores) / out["tcp1"] if out["tcp1"] > 0 else float("nan")
            out["drops"] = udp_rcvbuf_errors(NS[1]) - drops0
    sh(f"ip netns exec {NS[1]} pkill -x iperf3", check=False)
    # 100 pings: a run of 40 moved the mean by ±30 us between repetitions of one engine.
    ping = sh(f"ip netns exec {NS[0]} ping -c 100 -i 0.05 -q {dst}", check=False)
    rtt = [l for l in ping.splitlines() if "rtt" in l]
    out["rtt_ms"] = float(rtt[0].split("=")[1].split("/")[1]) if rtt else float("nan")
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--modes", default="")
    ap.add_argument("--bin", default=os.path.join(ROOT, "target/release/wgmesh-tunnel"))
    a = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("needs root (network namespaces)")
    missing = [t for t in ("iperf3", "ping", "wg", "wireguard-go") if not shutil.which(t)]
    if missing:
        sys.exit(f"missing {', '.join(missing)}: apt-get install iperf3 iputils-ping wireguard-tools wireguard-go")
    if not os.path.exists(a.bin):
        sys.exit(f"{a.bin} missing: cargo build --release -p wgmesh-tunnel")
    modes = a.modes.split(",") if a.modes else ["veth", "ours", "wggo", "ours-wggo", "wggo-ours"] + (["boringtun", "boringtun1"] if shutil.which("boringtun-cli") else [])
    results = {m: [] for m in modes}
    exit_on_sigterm()
    try:
        for rep in range(a.reps):
            for m in modes:
                dst = setup(m, a.bin)
                r = measure(dst[0], a.seconds)
                results[m].append(r)
                print(f"rep {rep+1}/{a.reps} {m:10s} tcp1 {r['tcp1']:.2f} Gbit/s  tcp4 {r['tcp4']:.2f} Gbit/s  rtt {r['rtt_ms']:.3f} ms  "
                      f"cpu {r['cpu_per_gbit']:.2f} cores/Gbit  drops {r['drops']}", file=sys.stderr, flush=True)
    finally:
        cleanup()
    keys = ("tcp1", "tcp4", "rtt_ms", "cpu_per_gbit", "drops")
    med = {m: {k: statistics.median(x[k] for x in v) for k in keys} for m, v in results.items()}
    print(f"\nMedians of {a.reps} interleaved runs, {a.seconds} s each (`bench/throughput.py --reps {a.reps} --seconds {a.seconds}`):\n")
    print("| mode | TCP 1 stream (Gbit/s) | TCP 4 streams (Gbit/s) | ping RTT (ms) | busiest engine, cores per Gbit/s | receiver socket drops | ours ÷ this (1 / 4 streams) |")
    print("|---|---|---|---|---|---|---|")
    for m in modes:
        r = med[m]
        ratio = ""
        if "ours" in med and m != "ours" and r["tcp1"] > 0 and r["tcp4"] > 0:
            ratio = f"{med['ours']['tcp1'] / r['tcp1']:.2f}× / {med['ours']['tcp4'] / r['tcp4']:.2f}×"
        cpu = "n/a" if m == "veth" else f"{r['cpu_per_gbit']:.2f}"
        print(f"| {m} | {r['tcp1']:.2f} | {r['tcp4']:.2f} | {r['rtt_ms']:.3f} | {cpu} | {r['drops']:.0f} | {ratio} |")


if __name__ == "__main__":
    main()
