#!/usr/bin/env python3
"""Renders benchmarks/quality_ablation.sh's results.tsv as a Markdown report with two plots.

usage: quality_ablation_report.py RESULTS.tsv OUT_DIR STEPS

Per variant: the mean over seeds and the seed spread (max - min) of held-out perplexity, KL to
the dense model and expert-load balance; tokens/s and peak memory; active parameters per token.
A variant's perplexity differs from the baseline "beyond the seed noise" when the gap between
the two means exceeds the larger of the two seed spreads.
"""
import collections
import csv
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main():
    results, out, steps = sys.argv[1], sys.argv[2], sys.argv[3]
    rows = collections.OrderedDict()
    with open(results) as f:
        for r in csv.DictReader(f, delimiter="\t"):
            rows.setdefault(r["variant"], []).append(r)
    if "baseline" not in rows:
        sys.exit("quality_ablation_report: no baseline rows in %s" % results)

    def stat(runs, key):
        v = [float(r[key]) for r in runs]
        return sum(v) / len(v), max(v) - min(v)

    base_ppl, base_spread = stat(rows["baseline"], "ppl")
    md = ["# Quality ablations on the shipped model", "",
          "Each variant: converted from models/brown-llama-small with the default recipe and one change, "
          "then %s steps of 16 x 128 Brown tokens (learned experts and routers, the demo's settings), "
          "seeds 0 and 1. Perplexity and KL to the dense model: routed mode on 96 held-out windows "
          "of 128 tokens. Balance: the largest max/mean expert load over layers. A perplexity gap "
          "counts as beyond the seed noise when it exceeds the larger of the two variants' seed spreads."
          % steps, "",
          "| variant | active params | held-out ppl (mean, spread) | vs baseline | beyond noise | "
          "KL to dense | load max/mean | tokens/s | peak MB |",
          "|---|---:|---:|---:|---|---:|---:|---:|---:|"]
    points = []
    for name, runs in rows.items():
        ppl, spread = stat(runs, "ppl")
        kl, _ = stat(runs, "kl")
        bal, _ = stat(runs, "balance")
        tps, _ = stat(runs, "tokens_per_s")
        peak, _ = stat(runs, "peak_mb")
        active = int(runs[0]["active_params"])
        gap = ppl - base_ppl
        beyond = "" if name == "baseline" else ("yes" if abs(gap) > max(spread, base_spread) else "no")
        md.append("| %s | %.2fM | %.2f (%.2f) | %s | %s | %.4f | %.2f | %.0f | %.0f |" % (
            name, active / 1e6, ppl, spread, "" if name == "baseline" else "%+.2f" % gap, beyond,
            kl, bal, tps, peak))
        points.append((name, active, tps, ppl, spread))
    md.append("")
    better = [p for p in points if p[0] != "baseline" and p[3] < base_ppl - max(p[4], base_spread)]
    worse = [p for p in points if p[0] != "baseline" and p[3] > base_ppl + max(p[4], base_spread)]
    md.append("Beyond the seed noise, better than the baseline: %s; worse: %s." % (
        ", ".join("%s (%+.2f)" % (p[0], p[3] - base_ppl) for p in better) or "none",
        ", ".join("%s (%+.2f)" % (p[0], p[3] - base_ppl) for p in worse) or "none"))
    md.append("")
    for fname, xkey, xlabel in (("ppl_vs_active_params.png", 1, "active parameters per token"),
                                ("ppl_vs_tokens_per_s.png", 2, "training tokens/s")):
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        for p in points:
            ax.errorbar(p[xkey], p[3], yerr=p[4] / 2, fmt="o", capsize=3)
            ax.annotate(p[0], (p[xkey], p[3]), fontsize=7, xytext=(4, 3), textcoords="offset points")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("held-out perplexity (routed)")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(os.path.join(out, fname), dpi=110)
        plt.close(fig)
        md.append("![%s](%s)" % (fname, fname))
    with open(os.path.join(out, "report.md"), "w") as f:
        f.write("\n".join(md) + "\n")


if __name__ == "__main__":
    main()
