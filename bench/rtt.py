#!/usr/bin/env python3
"""Idle ping RTT of engines side by side, with what each engine's threads cost per ping.

The RTT column of bench/throughput.py is a mean of 100 pings after a transfer; this looks at
the idle round trip alone, in more pings, alternating the modes run by run: per run the mean,
median and minimum RTT, and per engine thread its CPU time per ping (/proc schedstat: user and
kernel, the veth hand-over and the peer namespace's softirq that run in the thread included)
and its voluntary/involuntary context switches.

Usage: sudo bench/rtt.py [--runs 4] [--count 200] MODE [MODE ...]
  MODE is ours, boringtun1, boringtun or wggo; ours=BIN runs another wgmesh-tunnel binary (or
  a script that execs one with an experiment's environment); +SYSCTL after a mode sets that
  sysctl in both namespaces first, e.g. ours+net.ipv4.udp_early_demux=0.
"""
import argparse, os, shutil, statistics, sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import throughput as t

DEFAULT_BIN = os.path.join(t.ROOT, "target", "release", "wgmesh-tunnel")


def threads(ns):
    """(side, thread name, tid) -> (voluntary, involuntary switches, CPU ns) of a namespace's engine."""
    out = {}
    for pid in t.sh(f"ip netns pids {ns}").split():
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except FileNotFoundError:
            continue
        for tid in tids:
            try:
                comm = open(f"/proc/{pid}/task/{tid}/comm").read().strip()
                status = open(f"/proc/{pid}/task/{tid}/status").read()
                cpu = int(open(f"/proc/{pid}/task/{tid}/schedstat").read().split()[0])
            except (FileNotFoundError, ProcessLookupError):
                continue
            if comm == "ping":
                continue
            field = lambda k: int(status.split(f"\n{k}:")[1].split()[0])
            out[(ns[-1], comm, tid)] = (field("voluntary_ctxt_switches"), field("nonvoluntary_ctxt_switches"), cpu)
    return out


def run(mode, count):
    kind, _, rest = mode.partition("+")
    kind, _, binary = kind.partition("=")
    dst = t.setup(kind, binary or DEFAULT_BIN)[0]
    if rest:
        for ns in t.NS:
            t.sh(f"ip netns exec {ns} sysctl -qw {rest}")
    # Warm up: the handshake and the first ARP resolution are not the idle RTT.
    t.sh(f"ip netns exec {t.NS[0]} ping -c 20 -i 0.05 -q {dst}", check=False)
    before = {**threads(t.NS[0]), **threads(t.NS[1])}
    out = t.sh(f"ip netns exec {t.NS[0]} ping -c {count} -i 0.05 {dst}", check=False)
    after = {**threads(t.NS[0]), **threads(t.NS[1])}
    rtts = [float(l.split("time=")[1].split()[0]) for l in out.splitlines() if "time=" in l]
    if len(rtts) < count // 2:
        raise RuntimeError(f"{mode}: only {len(rtts)} of {count} pings came back")
    cost = {k: (after[k][0] - before[k][0], after[k][1] - before[k][1], (after[k][2] - before[k][2]) / count / 1000)
            for k in after if k in before}
    return statistics.mean(rtts), statistics.median(rtts), min(rtts), cost


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=4)
    ap.add_argument("--count", type=int, default=200)
    ap.add_argument("modes", nargs="+")
    a = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("needs root (network namespaces)")
    for tool in ("ping", "wg"):
        if not shutil.which(tool):
            sys.exit(f"{tool} is missing: install iputils-ping and wireguard-tools")
    t.exit_on_sigterm()
    results = {m: [] for m in a.modes}
    try:
        for r in range(a.runs):
            for m in a.modes:
                mean, median, low, cost = run(m, a.count)
                results[m].append((mean, median, low))
                busy = " ".join(f"{side}:{name} {c[2]:.0f}us {c[0]}/{c[1]}" for (side, name, _), c in sorted(cost.items()) if c[2] >= 1)
                print(f"run {r + 1}/{a.runs} {m}: mean {mean:.3f} median {median:.3f} min {low:.3f} ms | per ping: {busy}", flush=True)
    finally:
        t.cleanup()
    print(f"\nMedians over {a.runs} alternating runs of {a.count} pings at 50 ms (`bench/rtt.py --runs {a.runs} --count {a.count}`):\n")
    print("| mode | mean RTT (ms) | median RTT (ms) | min RTT (ms) |")
    print("|---|---|---|---|")
    for m, rs in results.items():
        print(f"| {m} | " + " | ".join(f"{statistics.median(x[i] for x in rs):.3f}" for i in range(3)) + " |")


if __name__ == "__main__":
    main()
