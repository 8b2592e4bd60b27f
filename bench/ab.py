#!/usr/bin/env python3
"""A/B of engine builds: ours <-> ours with each binary in turn, alternating, then medians.

The machine's speed drifts by more than most changes are worth (tunnel/PERF.md), so builds
are compared only run by run in the same minutes: run 1 of A, run 1 of B, run 2 of A, ...
Each run is bench/throughput.py's measurement (TCP 1 and 4 streams, ping RTT, busier engine's
cores per Gbit/s, receiver socket drops).

Usage: sudo bench/ab.py [--runs 5] [--seconds 5] BIN [BIN ...]
  BIN is a wgmesh-tunnel binary, or a script that execs one with an experiment's environment.
"""
import argparse, os, statistics, sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import throughput as t

KEYS = ("tcp1", "tcp4", "rtt_ms", "cpu_per_gbit")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("bins", nargs="+")
    a = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("needs root (network namespaces)")
    for b in a.bins:
        if not os.access(b, os.X_OK):
            sys.exit(f"{b}: not an executable")
    results = {b: [] for b in a.bins}
    t.exit_on_sigterm()
    try:
        for run in range(a.runs):
            for b in a.bins:
                r = t.measure(t.setup("ours", b)[0], a.seconds)
                results[b].append(r)
                print(f"run {run + 1}/{a.runs} {b}: " + "  ".join(f"{k} {r[k]:.3f}" for k in KEYS),
                      file=sys.stderr, flush=True)
    finally:
        t.cleanup()
    print(f"\nMedians of {a.runs} alternating runs, {a.seconds} s each (`bench/ab.py --runs {a.runs}`):\n")
    print("| binary | TCP 1 stream (Gbit/s) | TCP 4 streams (Gbit/s) | ping RTT (ms) | cores per Gbit/s | 1-stream runs |")
    print("|---|---|---|---|---|---|")
    for b, rs in results.items():
        med = [statistics.median(r[k] for r in rs) for k in KEYS]
        runs = "/".join(f"{r['tcp1']:.2f}" for r in rs)
        print(f"| {b} | {med[0]:.2f} | {med[1]:.2f} | {med[2]:.3f} | {med[3]:.2f} | {runs} |")


if __name__ == "__main__":
    main()
