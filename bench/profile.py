#!/usr/bin/env python3
"""Where one engine pair spends its time during a single-stream iperf3 run (tunnel/PERF.md).

Sets up the pair the way bench/throughput.py does, runs iperf3 for --seconds, and after 2 s of
warm-up samples for 4 s:
  - every engine thread's CPU share and its voluntary / involuntary context switches per second
    (/proc/PID/task/*/status and stat);
  - with --perf FILE, a whole-machine `perf record -a -g` into FILE, for
    `perf report -i FILE --no-children --sort comm,dso,sym`.
Needs root, iperf3, wireguard-tools (and perf for --perf).

Usage: bench/profile.py [--mode ours] [--bin PATH] [--seconds 8] [--perf FILE]
"""
import argparse, os, subprocess, sys, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import throughput as t


def threads(pid):
    """tid -> (name, voluntary switches, involuntary switches, CPU ticks) of one process."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            status = dict(l.split(":", 1) for l in open(f"/proc/{pid}/task/{tid}/status").read().splitlines() if ":" in l)
            stat = open(f"/proc/{pid}/task/{tid}/stat").read().rsplit(")", 1)[1].split()
            out[tid] = (status["Name"].strip(), int(status["voluntary_ctxt_switches"]),
                        int(status["nonvoluntary_ctxt_switches"]), int(stat[11]) + int(stat[12]))
        except (FileNotFoundError, KeyError, ValueError):
            pass
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mode", default="ours")
    ap.add_argument("--bin", default=os.path.join(t.ROOT, "target/release/wgmesh-tunnel"))
    ap.add_argument("--seconds", type=int, default=8)
    ap.add_argument("--perf", default="")
    a = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("needs root (network namespaces)")
    t.exit_on_sigterm()
    try:
        dst = t.setup(a.mode, a.bin)[0]
        t.sh(f"ip netns exec {t.NS[1]} iperf3 -s -D -p 5201 --logfile /dev/null")
        time.sleep(0.3)
        pids = [t.sh(f"ip netns pids {ns}").split()[0] for ns in t.NS]
        client = subprocess.Popen(f"ip netns exec {t.NS[0]} iperf3 -c {dst} -p 5201 -t {a.seconds} -J",
                                  shell=True, stdout=subprocess.PIPE, text=True)
        time.sleep(2)
        before, t0 = [threads(p) for p in pids], time.time()
        if a.perf:
            subprocess.run(f"perf record -a -g -F 1999 -o {a.perf} -- sleep 4", shell=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        else:
            time.sleep(4)
        after, dt = [threads(p) for p in pids], time.time() - t0
        report = client.communicate()[0]
        tick = os.sysconf("SC_CLK_TCK")
        for side, x, y in zip(("sender", "receiver"), before, after):
            for tid in sorted(y):
                if tid in x:
                    v, n, c = (y[tid][i] - x[tid][i] for i in range(1, 4))
                    if c or v > 50:
                        print(f"{side:8s} {y[tid][0]:>8s}: {100 * c / tick / dt:3.0f}% CPU, "
                              f"{v / dt:6.0f} voluntary + {n / dt:5.0f} involuntary switches/s")
        import json
        bps = json.loads(report or "{}").get("end", {}).get("sum_received", {}).get("bits_per_second", 0)
        print(f"throughput over the whole run: {bps / 1e9:.2f} Gbit/s")
    finally:
        t.cleanup()


if __name__ == "__main__":
    main()
