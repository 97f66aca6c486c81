#!/usr/bin/env python3
"""Markdown tables of the MoE benchmark's ratios from Google Benchmark JSON (stdlib only).

Reads the JSON that benchmarks/run_all.sh writes (--benchmark_out_format=json) and prints, from
the median wall time over repetitions of each benchmark:
  1. ours (sparse dispatch) vs the dense FFN of equal active size at T 512 and 2048;
  2. ours vs the seed and Mixtral-loop baselines over the whole sweep (speedup > 1: ours faster);
  3. achieved GFLOP/s (useful FLOPs: 6*T*K*H*Ie per forward, 3x for forward+backward);
for the forward and the forward+backward benchmarks.

  python3 benchmarks/summarize.py out/benchmarks/moe_benchmark.json
"""
import json
import re
import statistics
import sys
from collections import defaultdict

NAME = re.compile(r"^(BM_MoeForward(?:Backward)?)/(\w+)/T:(\d+)/E:(\d+)/K:(\d+)/bf16:(\d)")
TO_MS = {"ns": 1e-6, "us": 1e-3, "ms": 1.0, "s": 1e3}


def load(path):
    """{(bench, T, E, K, bf16): {method: {"ms": median, "flops": median FLOP/s, ...}}}"""
    with open(path) as f:
        data = json.load(f)
    runs = defaultdict(list)
    for b in data["benchmarks"]:
        if b.get("run_type", "iteration") != "iteration" or b.get("error_occurred"):
            continue
        m = NAME.match(b["name"])
        if not m:
            continue
        bench, method, t, e, k, bf16 = m.groups()
        runs[(bench, int(t), int(e), int(k), int(bf16), method)].append(b)
    table = defaultdict(dict)
    for (bench, t, e, k, bf16, method), bs in runs.items():
        table[(bench, t, e, k, bf16)][method] = {
            "ms": statistics.median(b["real_time"] * TO_MS[b["time_unit"]] for b in bs),
            "flops": statistics.median(b.get("FLOP_per_s", 0.0) for b in bs),
            "peak": statistics.median(b.get("peak_bytes", 0.0) for b in bs),
            "active": bs[0].get("active_experts", 0.0),
            "reps": len(bs),
        }
    return data.get("context", {}), table


def dtype(bf16):
    return "bf16" if bf16 else "f32"


def ratio(a, b):
    return f"{a / b:.2f}" if a and b else "-"


def keys(table, bench, pred=lambda k: True):
    return sorted((k for k in table if k[0] == bench and pred(k)), key=lambda k: (k[4], k[1], k[2], k[3]))


def dense_table(table, bench, title):
    rows = keys(table, bench, lambda k: k[1] in (512, 2048) and "dense" in table[k] and "sparse" in table[k])
    if not rows:
        return
    print(f"\n### {title}: ours / dense FFN of equal active size (target <= 1.2)\n")
    print("| dtype | T | E | K | Ie | ours ms | dense ms | ours/dense |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for k in rows:
        s, d = table[k]["sparse"]["ms"], table[k]["dense"]["ms"]
        flag = "" if s / d <= 1.2 else " (over)"
        print(f"| {dtype(k[4])} | {k[1]} | {k[2]} | {k[3]} | {4096 // k[2]} | {s:.2f} | {d:.2f} | {s / d:.2f}{flag} |")


def baseline_table(table, bench, title):
    rows = keys(table, bench, lambda k: "sparse" in table[k])
    if not rows:
        return
    print(f"\n### {title}: speedup of ours over the baselines (baseline ms / ours ms; > 1: ours faster)\n")
    print("| dtype | T | E | K | active | ours ms | seed ms | mixtral ms | dense ms | vs seed | vs mixtral | ours/dense | ours peak MB | seed peak MB |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for k in rows:
        r = table[k]
        s = r["sparse"]["ms"]
        get = lambda m: r[m]["ms"] if m in r else None
        fmt = lambda v: f"{v:.2f}" if v else "-"
        seed, mix, dense = get("seed"), get("mixtral"), get("dense")
        seed_peak = f"{r['seed']['peak'] / 1e6:.1f}" if "seed" in r else "-"
        print(f"| {dtype(k[4])} | {k[1]} | {k[2]} | {k[3]} | {int(r['sparse']['active'])} | {s:.2f} | {fmt(seed)} | "
              f"{fmt(mix)} | {fmt(dense)} | {ratio(seed, s)} | {ratio(mix, s)} | {ratio(s, dense)} | "
              f"{r['sparse']['peak'] / 1e6:.1f} | {seed_peak} |")


def gflops_table(table, bench, title):
    rows = keys(table, bench, lambda k: k[1] >= 256 and "sparse" in table[k])
    if not rows:
        return
    print(f"\n### {title}: achieved useful GFLOP/s (T >= 256)\n")
    print("| dtype | T | E | K | ours | dense | seed | mixtral |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for k in rows:
        r = table[k]
        g = lambda m: f"{r[m]['flops'] / 1e9:.1f}" if m in r else "-"
        print(f"| {dtype(k[4])} | {k[1]} | {k[2]} | {k[3]} | {g('sparse')} | {g('dense')} | {g('seed')} | {g('mixtral')} |")


def main(argv):
    if len(argv) != 2:
        print(__doc__.strip().splitlines()[-1], file=sys.stderr)
        return 2
    context, table = load(argv[1])
    if not table:
        print(f"no MoE benchmark results in {argv[1]}", file=sys.stderr)
        return 1
    reps = sorted({m["reps"] for r in table.values() for m in r.values()})
    print(f"MoE benchmarks from {argv[1]} ({context.get('date', '?')}, {context.get('num_cpus', '?')} CPUs, "
          f"load {context.get('load_avg', '?')}); medians of {reps} repetitions; H 1024, E*Ie 4096.")
    for bench, title in (("BM_MoeForward", "Forward"), ("BM_MoeForwardBackward", "Forward+backward")):
        dense_table(table, bench, title)
        baseline_table(table, bench, title)
        gflops_table(table, bench, title)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
