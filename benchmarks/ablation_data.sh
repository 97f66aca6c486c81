# Sourced by the quality ablation scripts: the data every variant trains and is evaluated on.
#   ablation_data BIN BROWN TOKENIZER WORK
# writes WORK/data (the Brown corpus as token shards, 5% of documents held out, seed 0) and
# WORK/calibration.txt (7 training-split documents, tags stripped, for co-activation partitions
# and expert distillation; the manifest's split rule is checked so that no held-out text leaks).
ablation_data() {
  local bin="$1" brown="$2" tokenizer="$3" work="$4"
  "$bin/train/prepare_data" --tokenizer "$tokenizer" --input "$brown" --format brown \
    --heldout_fraction 0.05 --seed 0 --output "$work/data" >/dev/null
  python3 - "$brown" "$work/data/manifest.json" "$work/calibration.txt" <<'PY'
import json, os, sys
brown, manifest, out = sys.argv[1:]
m = json.load(open(manifest))
M = (1 << 64) - 1
def mix64(x):  # train/random.h
    x = (x + 0x9E3779B97F4A7C15) & M
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & M
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & M
    return x ^ (x >> 31)
rule = m["split_rule"]
held = {os.path.basename(f) for d, f in enumerate(m["source_files"])
        if (mix64(mix64(rule["seed"]) ^ d) >> 11) * 2.0**-53 < rule["heldout_fraction"]}
assert len(held) == m["splits"]["heldout"]["num_documents"], "the split rule does not reproduce the manifest"
docs = ["cb02", "cc02", "cd02", "ce02", "cf02", "cg02", "ch02"]
assert not held.intersection(docs), held.intersection(docs)
lines = []
for d in docs:
    for line in open(f"{brown}/{d}"):
        words = [w.rsplit("/", 1)[0] for w in line.split()]
        if words:
            lines.append(" ".join(words))
open(out, "w").write("\n".join(lines))
PY
}
