#!/usr/bin/python3
"""Renders evaluation results as a Markdown report with PNG plots.

usage: make_report.py --out DIR [--title T] [--eval LABEL=eval.json ...] [--metrics LABEL=metrics.jsonl ...]
                      [--text LABEL=file.txt ...] [--times stage_times.tsv]

--eval     JSON written by //eval:evaluate (perplexity per routing mode, KL, top-1, expert loads)
--metrics  metrics.jsonl written by //train:train (training loss, held-out loss, per-layer loads)
--text     verbatim text shown in the report (generations, logit-match lines)
--times    tab-separated "stage<TAB>seconds<TAB>what it checks" lines
Writes DIR/report.md and DIR/*.png (matplotlib, Agg backend).
"""
import argparse
import json
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def pairs(items):
    out = []
    for item in items or []:
        label, _, path = item.partition("=")
        out.append((label, path))
    return out


def heatmap(path, title, layers, num_frozen):
    loads = [l["load"] for l in layers]
    fig, ax = plt.subplots(figsize=(max(4, len(loads[0]) * 0.45), 1.2 + 0.5 * len(loads)))
    means = [sum(r) / len(r) if sum(r) else 1 for r in loads]
    norm = [[v / m for v in r] for r, m in zip(loads, means)]
    im = ax.imshow(norm, aspect="auto", cmap="viridis", vmin=0, vmax=2)
    ax.set_xlabel("expert (frozen 0..%d | learned)" % (num_frozen - 1))
    ax.set_ylabel("layer")
    ax.set_yticks(range(len(loads)))
    ax.axvline(num_frozen - 0.5, color="white", lw=1)
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, label="load / mean load")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--title", default="llama-moe-cc report")
    ap.add_argument("--eval", action="append")
    ap.add_argument("--metrics", action="append")
    ap.add_argument("--text", action="append")
    ap.add_argument("--times")
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    md = ["# " + a.title, ""]
    figures = []

    if a.times and os.path.exists(a.times):
        md += ["## Stages", "", "| stage | wall time (s) | what it checks |", "|---|---|---|"]
        for line in open(a.times):
            parts = line.rstrip("\n").split("\t")
            if len(parts) >= 2:
                md.append("| %s | %s | %s |" % (parts[0], parts[1], parts[2] if len(parts) > 2 else ""))
        md.append("")

    evals = [(label, json.load(open(p))) for label, p in pairs(a.eval)]
    if evals:
        md += ["## Perplexity", "", "| model | mode | perplexity | loss (nats) | KL to reference | top-1 agreement | tokens |",
               "|---|---|---|---|---|---|---|"]
        bars = []
        for label, e in evals:
            if e.get("loss_mask"):
                label += " (assistant tokens)"
            if "reference" in e:
                md.append("| reference of %s | dense | %.3f | %.4f | | | %d |" % (
                    label, e["reference"]["perplexity"], e["reference"]["loss"], e["tokens"]))
            for r in e["results"]:
                md.append("| %s | %s | %.3f | %.4f | %s | %s | %d |" % (
                    label, r["mode"], r["perplexity"], r["loss"],
                    "%.5f" % r["kl_to_reference"] if "kl_to_reference" in r else "",
                    "%.4f" % r["top1_agreement"] if "top1_agreement" in r else "", e["tokens"]))
                bars.append(("%s\n%s" % (label, r["mode"]), r["perplexity"]))
        md.append("")
        fig, ax = plt.subplots(figsize=(max(5, 1.1 * len(bars)), 3.6))
        ax.bar(range(len(bars)), [b[1] for b in bars], color="#4c72b0")
        ax.set_xticks(range(len(bars)))
        ax.set_xticklabels([b[0] for b in bars], fontsize=7)
        ax.set_ylabel("held-out perplexity")
        for i, (_, v) in enumerate(bars):
            ax.text(i, v, "%.1f" % v, ha="center", va="bottom", fontsize=7)
        fig.tight_layout()
        fig.savefig(os.path.join(a.out, "perplexity.png"), dpi=110)
        plt.close(fig)
        figures.append(("perplexity.png", "Held-out perplexity per model and routing mode"))
        md += ["![perplexity](perplexity.png)", ""]
        md += ["## Expert load (routed mode)", ""]
        for label, e in evals:
            for r in e["results"]:
                if "layers" not in r:
                    continue
                name = "load_%s_%s.png" % (label.replace(" ", "_"), r["mode"])
                heatmap(os.path.join(a.out, name), "%s, %s: load / mean per expert" % (label, r["mode"]),
                        r["layers"], r.get("num_frozen_experts", 0))
                worst = max(l["max_over_mean"] for l in r["layers"])
                ent = sum(l["entropy"] for l in r["layers"]) / len(r["layers"])
                figures.append((name, "Expert load heat map, %s (max/mean %.2f)" % (label, worst)))
                md += ["%s: max/mean load over layers %.3f, mean router entropy %.3f nats" % (label, worst, ent), "",
                       "![%s](%s)" % (name, name), ""]

    runs = [(label, [json.loads(l) for l in open(p)]) for label, p in pairs(a.metrics)]
    if runs:
        fig, ax = plt.subplots(figsize=(6, 3.6))
        for label, ms in runs:
            steps = [m["step"] for m in ms if "loss" in m]
            ax.plot(steps, [m["loss"] for m in ms if "loss" in m], label=label + " train")
            hs = [m for m in ms if "heldout_loss" in m]
            if hs:
                ax.plot([m["step"] for m in hs], [m["heldout_loss"] for m in hs], "o--", label=label + " held-out")
        ax.set_xlabel("step")
        ax.set_ylabel("loss (nats/token)")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(os.path.join(a.out, "training_loss.png"), dpi=110)
        plt.close(fig)
        figures.append(("training_loss.png", "Continued-pretraining loss"))
        md += ["## Continued pretraining", "", "![training loss](training_loss.png)", ""]
        fig, ax = plt.subplots(figsize=(6, 3.2))
        for label, ms in runs:
            st = [m for m in ms if "layers" in m and m["layers"]]
            if st:
                ax.plot([m["step"] for m in st], [max(l["max_over_mean_load"] for l in m["layers"]) for m in st], label=label)
        ax.axhline(1.5, color="grey", ls=":", lw=1)
        ax.set_xlabel("step")
        ax.set_ylabel("max over layers of max/mean load")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(os.path.join(a.out, "load_balance.png"), dpi=110)
        plt.close(fig)
        figures.append(("load_balance.png", "Load balance during training (bias updates)"))
        md += ["![load balance](load_balance.png)", ""]

    for label, p in pairs(a.text):
        md += ["## " + label, "", "```", open(p).read().rstrip(), "```", ""]

    md += ["## Figures", ""] + ["- `%s`: %s" % f for f in figures] + [""]
    with open(os.path.join(a.out, "report.md"), "w") as f:
        f.write("\n".join(md))
    print("wrote %s (%d figures)" % (os.path.join(a.out, "report.md"), len(figures)))


if __name__ == "__main__":
    main()
