#!/usr/bin/env python3
"""Markdown tables of the benchmarks' ratios from Google Benchmark JSON (stdlib only).

Reads the JSON that benchmarks/run_all.sh writes (--benchmark_out_format=json); what it prints
depends on the benchmarks the file holds, always from medians over repetitions:

moe_benchmark.json:
  1. ours (sparse dispatch) vs the dense FFN of equal active size at T 512 and 2048;
  2. ours vs the original project's method and the Mixtral-loop baseline over the whole sweep (speedup > 1: ours faster);
  3. achieved GFLOP/s (useful FLOPs: 6*T*K*H*Ie per forward, 3x for forward+backward);
  for the forward and the forward+backward benchmarks.
decode_bandwidth_benchmark.json:
  decode-step weight bandwidth of ours and of the dense FFN (GB/s, fraction of the copy's read
  bandwidth) per T, K and dtype.
decode_linear_benchmark.json:
  the decode-step linear kernel's forms on a Llama 3 8B layer: GB/s, fraction of the read
  bandwidth measured next to each benchmark, and speed over ATen's linear, per dtype.
convert_benchmark.json:
  conversion GB/s (source bytes) vs the copy of the same checkpoint, and their ratio.

  python3 benchmarks/summarize.py out/benchmarks/moe_benchmark.json [more.json ...]
"""
import json
import re
import statistics
import sys
from collections import defaultdict

NAME = re.compile(r"^(BM_MoeForward(?:Backward)?)/(\w+)/T:(\d+)/E:(\d+)/K:(\d+)/bf16:(\d)")
TO_MS = {"ns": 1e-6, "us": 1e-3, "ms": 1.0, "s": 1e3}


def load(path, data=None):
    """{(bench, T, E, K, bf16): {method: {"ms": median, "flops": median FLOP/s, ...}}}"""
    if data is None:
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
    print("| dtype | T | E | K | active | ours ms | original ms | mixtral ms | dense ms | vs original | vs mixtral | ours/dense | ours peak MB | original peak MB |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for k in rows:
        r = table[k]
        s = r["sparse"]["ms"]
        get = lambda m: r[m]["ms"] if m in r else None
        fmt = lambda v: f"{v:.2f}" if v else "-"
        orig, mix, dense = get("original"), get("mixtral"), get("dense")
        original_peak = f"{r['original']['peak'] / 1e6:.1f}" if "original" in r else "-"
        print(f"| {dtype(k[4])} | {k[1]} | {k[2]} | {k[3]} | {int(r['sparse']['active'])} | {s:.2f} | {fmt(orig)} | "
              f"{fmt(mix)} | {fmt(dense)} | {ratio(orig, s)} | {ratio(mix, s)} | {ratio(s, dense)} | "
              f"{r['sparse']['peak'] / 1e6:.1f} | {original_peak} |")


def wins_table(table, bench, title):
    """Per dtype and T: in how many (E, K) configurations with more than one active expert ours
    beats each baseline, and the smallest and median speedup."""
    groups = defaultdict(list)
    for k in keys(table, bench, lambda k: "sparse" in table[k] and table[k]["sparse"]["active"] > 1):
        groups[(k[4], k[1])].append(table[k])
    if not groups:
        return
    print(f"\n### {title}: ours against each baseline where more than one expert is active "
          "(speedup = baseline ms / ours ms over the E x K configurations)\n")
    print("| dtype | T | configs | faster than original | min / median vs original | faster than mixtral | "
          "min / median vs mixtral | median ours/dense |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for (bf16, t), rs in sorted(groups.items()):
        cells = []
        for m in ("original", "mixtral"):
            sp = [r[m]["ms"] / r["sparse"]["ms"] for r in rs if m in r]
            if sp:
                cells.append(f"{sum(x > 1 for x in sp)}/{len(sp)}")
                cells.append(f"{min(sp):.2f} / {statistics.median(sp):.2f}")
            else:
                cells += ["-", "-"]
        dense = [r["sparse"]["ms"] / r["dense"]["ms"] for r in rs if "dense" in r]
        med = f"{statistics.median(dense):.2f}" if dense else "-"
        print(f"| {dtype(bf16)} | {t} | {len(rs)} | {cells[0]} | {cells[1]} | {cells[2]} | {cells[3]} | {med} |")


def gflops_table(table, bench, title):
    rows = keys(table, bench, lambda k: k[1] >= 256 and "sparse" in table[k])
    if not rows:
        return
    print(f"\n### {title}: achieved useful GFLOP/s (T >= 256)\n")
    print("| dtype | T | E | K | ours | dense | original | mixtral |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for k in rows:
        r = table[k]
        g = lambda m: f"{r[m]['flops'] / 1e9:.1f}" if m in r else "-"
        print(f"| {dtype(k[4])} | {k[1]} | {k[2]} | {k[3]} | {g('sparse')} | {g('dense')} | {g('original')} | {g('mixtral')} |")


def moe_main(path, data):
    context, table = load(path, data)
    if not table:
        print(f"no MoE benchmark results in {path}", file=sys.stderr)
        return 1
    reps = sorted({m["reps"] for r in table.values() for m in r.values()})
    print(f"MoE benchmarks from {path} ({context.get('date', '?')}, {context.get('num_cpus', '?')} CPUs, "
          f"load {context.get('load_avg', '?')}); medians of {reps} repetitions; H 1024, E*Ie 4096.")
    for bench, title in (("BM_MoeForward", "Forward"), ("BM_MoeForwardBackward", "Forward+backward")):
        dense_table(table, bench, title)
        wins_table(table, bench, title)
        baseline_table(table, bench, title)
        gflops_table(table, bench, title)
    return 0


def iteration_runs(data):
    """{name without the /min_time:.., /iterations:.., /real_time, /manual_time suffixes: [runs]}"""
    runs = defaultdict(list)
    for b in data["benchmarks"]:
        if b.get("run_type", "iteration") != "iteration" or b.get("error_occurred"):
            continue
        name = re.sub(r"/(min_time:[\d.]+|iterations:\d+|real_time|manual_time)", "", b["name"])
        runs[name].append(b)
    return runs


def median_of(bs, field):
    return statistics.median(b.get(field, 0.0) for b in bs)


def median_ms(bs):
    return statistics.median(b["real_time"] * TO_MS[b["time_unit"]] for b in bs)


def header(path, data, what, runs):
    context = data.get("context", {})
    reps = sorted({len(bs) for bs in runs.values()})
    print(f"{what} from {path} ({context.get('date', '?')}, {context.get('num_cpus', '?')} CPUs, "
          f"load {context.get('load_avg', '?')}); medians of {reps} repetitions.")


DECODE = re.compile(r"^BM_Decode/(\w+)/T:(\d+)/K:(\d+)/bf16:(\d)$")


def decode_main(path, data):
    runs = iteration_runs(data)
    table = defaultdict(dict)  # (bf16, K, T) -> {method: runs}
    for name, bs in runs.items():
        m = DECODE.match(name)
        if m:
            method, t, k, bf16 = m.groups()
            table[(int(bf16), int(k), int(t))][method] = bs
    if not table:
        print(f"no decode bandwidth results in {path}", file=sys.stderr)
        return 1
    header(path, data, "Decode bandwidth benchmarks", runs)
    any_run = next(iter(next(iter(table.values())).values()))
    line = f"\nReference (measured once per process, median of 5): copy reads {median_of(any_run, 'copy_GBps'):.2f} GB/s, " \
           f"a pure read (at::sum) {median_of(any_run, 'read_GBps'):.2f} GB/s."
    for bench, what in (("BM_Copy", "copy read bandwidth"), ("BM_Read", "read bandwidth")):
        if bench in runs:
            line += f" {bench} ({what}): {median_of(runs[bench], 'bytes_per_second') / 1e9:.2f} GB/s."
    print(line)
    print("\n### Decode step: weight bytes/s of ours (SparseMoeForward, all experts the T tokens chose) and of the "
          "dense FFN of width K*Ie; fraction = bytes/s / copy read bytes/s; ours/dense = step time ratio\n")
    print("| dtype | T | K | active | ours ms | ours GB/s | ours fraction | dense ms | dense GB/s | dense fraction | ours/dense ms |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for (bf16, k, t) in sorted(table):
        r = table[(bf16, k, t)]

        def cols(method):
            if method not in r:
                return None, "- | - | -"
            bs = r[method]
            ms = median_ms(bs)
            return ms, f"{ms:.1f} | {median_of(bs, 'bytes_per_second') / 1e9:.2f} | {median_of(bs, 'bw_fraction'):.2f}"

        ours_ms, ours = cols("sparse")
        dense_ms, dense = cols("dense")
        active = int(r["sparse"][0].get("active_experts", 0)) if "sparse" in r else "-"
        print(f"| {dtype(bf16)} | {t} | {k} | {active} | {ours} | {dense} | {ratio(ours_ms, dense_ms)} |")
    return 0


LINEAR = re.compile(r"^BM_Layer/(\w+)/bf16:(\d)$")


def linear_main(path, data):
    runs = iteration_runs(data)
    table = defaultdict(dict)  # bf16 -> {form: runs}
    for name, bs in runs.items():
        m = LINEAR.match(name)
        if m:
            table[int(m.group(2))][m.group(1)] = bs
    if not table:
        print(f"no decode linear results in {path}", file=sys.stderr)
        return 1
    header(path, data, "Decode linear benchmarks", runs)
    print("\n### One decode step's products of a Llama 3 8B layer (one row of x): weight GB/s, fraction of the read "
          "bandwidth (at::sum) measured right before each benchmark, speed over ATen's linear\n")
    print("| dtype | form | ms | GB/s | of read bandwidth | x ATen |")
    print("|---|---|---:|---:|---:|---:|")
    for bf16 in sorted(table):
        forms = table[bf16]
        aten_ms = median_ms(forms["aten"]) if "aten" in forms else None
        for form in sorted(forms, key=lambda f: (f != "aten", f)):
            bs = forms[form]
            ms = median_ms(bs)
            print(f"| {dtype(bf16)} | {form} | {ms:.2f} | {median_of(bs, 'bytes_per_second') / 1e9:.1f} | "
                  f"{median_of(bs, 'read_fraction'):.2f} | {ratio(aten_ms, ms)} |")
    return 0


def convert_main(path, data):
    runs = iteration_runs(data)
    if "BM_Copy" not in runs and not any(n.startswith("BM_Convert") for n in runs):
        print(f"no conversion results in {path}", file=sys.stderr)
        return 1
    header(path, data, "Conversion benchmarks", runs)
    copy = median_of(runs["BM_Copy"], "bytes_per_second") if "BM_Copy" in runs else 0.0
    any_run = next(iter(runs.values()))
    print(f"\nSource checkpoint: {any_run[0].get('source_bytes', 0) / 1e9:.2f} GB; GB/s count source bytes; "
          f"copy = read/write/fsync of every file (what `cp -r && sync` does).\n")
    print("| benchmark | s | source GB/s | written GB | copy GB/s | of copy speed | x copy time |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name in sorted(runs, key=lambda n: (not n.startswith("BM_Copy"), n)):
        bs = runs[name]
        rate = median_of(bs, "bytes_per_second")
        written = median_of(bs, "written_bytes")
        print(f"| {name} | {median_ms(bs) / 1e3:.2f} | {rate / 1e9:.3f} | {f'{written / 1e9:.2f}' if written else '-'} | "
              f"{copy / 1e9:.3f} | {ratio(rate, copy)} | {ratio(copy, rate)} |")
    return 0


def main(argv):
    if len(argv) < 2:
        print(__doc__.strip().splitlines()[-1], file=sys.stderr)
        return 2
    rc = 0
    for i, path in enumerate(argv[1:]):
        if i:
            print()
        with open(path) as f:
            data = json.load(f)
        names = [b["name"] for b in data.get("benchmarks", [])]
        if any(n.startswith("BM_Decode/") for n in names):
            rc |= decode_main(path, data)
        elif any(n.startswith("BM_Layer/") for n in names):
            rc |= linear_main(path, data)
        elif any(n.startswith("BM_Convert/") for n in names):
            rc |= convert_main(path, data)
        else:
            rc |= moe_main(path, data)
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv))
