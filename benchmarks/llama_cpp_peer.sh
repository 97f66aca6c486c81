#!/usr/bin/env bash
# This project's //eval:generate against llama.cpp (npm's prebuilt CPU build) on the same weights,
# in the same run: prefill and decode tokens/s and ours / llama.cpp, dense and MoE, float32 and
# bfloat16, 1 and 2 threads; each engine's 2-thread speed-up; decode's weight bytes per second
# against the machine's read bandwidth (at::sum over 1 GiB, measured right before each run). Ours also
# runs with its decode kernels switched off (LLAMA_MOE_DECODE_LINEAR=0: ATen's linear and
# attention), the baseline the kernels are measured against. Both engines run the prompt and one
# decode step once untimed first (--warmup, as llama.cpp's llama-bench warms up): the timings
# are steady-state speed, not the first pass's one-time costs (oneDNN's kernel generation, ggml's
# thread pool). Before each repetition every weight file (.safetensors, .gguf) is copied to a
# fresh file: both engines map their weights from the page cache, and on this VM a file's
# decode speed depends on where its cached pages landed (one dense bfloat16 file decoded at
# 80.5-81.6 tokens/s in three runs, five fresh copies of it at 77.7-87.4), a bias that would
# otherwise stay fixed across repetitions.
#
#   benchmarks/llama_cpp_peer.sh            # 3 interleaved repetitions, medians
#   REPETITIONS=5 benchmarks/llama_cpp_peer.sh
#
# Model: a random Llama (vocab 32000, hidden 1024, 8 layers, 16 heads / 4 KV heads of 64, FFN 4096,
# no RoPE scaling) and its MoE from the default recipe (16 experts of 512: 8 frozen + 8 learned,
# top-8); GGUF files from //convert:export (f32, and bf16 for the bfloat16 rows, which llama.cpp
# runs as bf16). Prompt: 128 fixed token ids; 64 greedy tokens. Every run is a fresh process;
# llama.cpp runs with its own defaults (f16 KV cache, flash attention as it decides). Results go to
# out/benchmarks/llama_cpp_peer.json and a table on stdout.
set -euo pipefail
cd "$(dirname "$0")/.."
source tools/env.sh
reps="${REPETITIONS:-3}"
out=out/benchmarks
work=out/llama_cpp_peer
mkdir -p "$out" "$work"
bazel build -c opt //eval:generate //convert:convert //convert:export //tools:make_tiny_llama \
  //tools/llama_cpp:llama_cpp_generate //tools/llama_cpp:read_bandwidth >&2
bin=bazel-bin
backends=tools/npm/node_modules/@node-llama-cpp/linux-x64/bins/linux-x64

if [ ! -f "$work/ready" ]; then
  rm -rf "$work" && mkdir -p "$work"
  for dt in f32 bf16; do
    "$bin/tools/make_tiny_llama" --output "$work/dense_$dt" --vocab 32000 --hidden 1024 --intermediate 4096 \
      --layers 8 --heads 16 --kv_heads 4 --rope_scaling=false --dtype "$dt" --seed 1 >&2
    "$bin/convert/convert" --input "$work/dense_$dt" --output "$work/moe_$dt" \
      --dtype "$([ "$dt" = f32 ] && echo float32 || echo bfloat16)" >&2
    for m in dense moe; do
      "$bin/convert/export" --model "$work/${m}_$dt" --format gguf --dtype "$dt" --output "$work/${m}_$dt.gguf" \
        2>/dev/null >&2
    done
  done
  touch "$work/ready"
fi

python3 - "$reps" "$bin" "$backends" "$work" "$out/llama_cpp_peer.json" <<'PY'
import json, os, random, re, shutil, statistics, subprocess, sys
reps, bin, backends, work, out_json = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5]
prompt = ",".join(str((i * 7919 + 13) % 32000) for i in range(128))
new = 64

def run(engine, model, dt, threads):
    env = dict(os.environ)
    if engine == "ours, ATen linear":
        # The same binary with the decode kernels (model/decode_linear.h, model/decode_attention.h)
        # switched off: the before of the kernels.
        env["LLAMA_MOE_DECODE_LINEAR"] = "0"
    if engine.startswith("ours"):
        cmd = [f"{bin}/eval/generate", "--model", f"{work}/{model}_{dt}", "--tokens", prompt,
               "--max_new_tokens", str(new), "--threads", str(threads), "--warmup"]
    else:
        cmd = [f"{bin}/tools/llama_cpp/llama_cpp_generate", "--gguf", f"{work}/{model}_{dt}.gguf",
               "--backend_dir", backends, "--tokens", prompt, "--max_new_tokens", str(new), "--threads", str(threads),
               "--warmup"]
    # The read bandwidth right before the run, at its thread count: this VM's two-thread read
    # bandwidth moves between about 46 and 80 GB/s within minutes, so a decode run is compared
    # with a measurement taken next to it, not one taken at the start.
    bw_run = read_bandwidth(threads) if engine in ("ours", "llama.cpp") else float("nan")
    p = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env)
    pre = re.search(r"prefill: (\d+) tokens in [\d.]+ s \(([\d.]+) tokens/s\)", p.stderr)
    dec = re.search(r"decode: (\d+) tokens in [\d.]+ s \(([\d.]+) tokens/s\)", p.stderr)
    return float(pre.group(2)), float(dec.group(2)), int(dec.group(1)), bw_run

def read_bandwidth(threads):
    r = subprocess.run([f"{bin}/tools/llama_cpp/read_bandwidth", "--threads", str(threads)], capture_output=True,
                       text=True, check=True)
    return float(re.search(r"read: ([\d.]+)", r.stdout).group(1))

def weight_bytes(model, dt):
    # Bytes a decode step reads: every matrix but the embedding table (one row of it); an MoE
    # layer reads its router and its top-8 of 16 experts of 512, as wide as the dense FFN.
    h, v, l, hd, nh, nkv, i = 1024, 32000, 8, 64, 16, 4, 4096
    attn = h * hd * (nh + 2 * nkv) + nh * hd * h
    ffn = 3 * h * i if model == "dense" else 3 * h * 8 * 512 + 16 * h
    return (l * (attn + ffn) + v * h) * (4 if dt == "f32" else 2)


cells = [(e, m, d, t) for e in ("ours", "ours, ATen linear", "llama.cpp") for m in ("dense", "moe") for d in ("f32", "bf16") for t in (1, 2)]
results = {c: [] for c in cells}
def refresh_weight_files():
    # New page-cache pages for every weight file (see the header): copy, then replace.
    for root, _, files in os.walk(work):
        for f in files:
            if f.endswith((".safetensors", ".gguf")):
                path = os.path.join(root, f)
                shutil.copyfile(path, path + ".fresh")
                os.replace(path + ".fresh", path)

random.seed(0)
for rep in range(reps):
    refresh_weight_files()
    order = cells[:]
    random.shuffle(order)
    for c in order:
        results[c].append(run(*c))
        print(f"rep {rep + 1}/{reps} {c}: {results[c][-1]}", file=sys.stderr)

med = {c: (statistics.median(x[0] for x in v), statistics.median(x[1] for x in v), min(x[2] for x in v))
       for c, v in results.items()}
rows = []
bws = {t: sorted(x[3] for c, v in results.items() if c[0] != "ours, ATen linear" and c[3] == t for x in v) for t in (1, 2)}
bw = {t: statistics.median(bws[t]) for t in (1, 2)}
print(f"read bandwidth (at::sum, 1 GiB, measured before each decode run): median {bw[1]:.1f} GB/s at 1 thread "
      f"({bws[1][0]:.1f}-{bws[1][-1]:.1f}), {bw[2]:.1f} GB/s at 2 ({bws[2][0]:.1f}-{bws[2][-1]:.1f})")
print()
print("| model | dtype | phase | threads | ours tok/s | llama.cpp tok/s | ours / llama.cpp | ours without the decode kernels / llama.cpp |")
print("|---|---|---|---:|---:|---:|---:|---:|")
for m in ("dense", "moe"):
    for d in ("f32", "bf16"):
        for ph, k in (("prefill", 0), ("decode", 1)):
            for t in (1, 2):
                a, b = med[("ours", m, d, t)][k], med[("llama.cpp", m, d, t)][k]
                c = med[("ours, ATen linear", m, d, t)][k]
                rows.append({"model": m, "dtype": d, "phase": ph, "threads": t, "ours": a, "llama_cpp": b, "ratio": a / b,
                             "ours_aten_linear": c})
                print(f"| {'MoE' if m == 'moe' else m} | {d} | {ph} | {t} | {a:.1f} | {b:.1f} | {a / b:.2f} | {c / b:.2f} |")
print()
print("| model | dtype | phase | ours 2-thread / 1-thread | llama.cpp 2-thread / 1-thread |")
print("|---|---|---|---:|---:|")
for m in ("dense", "moe"):
    for d in ("f32", "bf16"):
        for ph, k in (("prefill", 0), ("decode", 1)):
            s_ours = med[("ours", m, d, 2)][k] / med[("ours", m, d, 1)][k]
            s_peer = med[("llama.cpp", m, d, 2)][k] / med[("llama.cpp", m, d, 1)][k]
            print(f"| {'MoE' if m == 'moe' else m} | {d} | {ph} | {s_ours:.2f} | {s_peer:.2f} |")
print()
print("| model | dtype | threads | ours decode GB/s of weights | llama.cpp | ours / read bandwidth | llama.cpp / read bandwidth |")
print("|---|---|---:|---:|---:|---:|---:|")
for m in ("dense", "moe"):
    for d in ("f32", "bf16"):
        for t in (1, 2):
            wb = weight_bytes(m, d)
            a = med[("ours", m, d, t)][1] * wb / 1e9
            b = med[("llama.cpp", m, d, t)][1] * wb / 1e9
            # Each run against the bandwidth measured next to it, then the median of the runs.
            fa = statistics.median(x[1] * wb / 1e9 / x[3] for x in results[("ours", m, d, t)])
            fb = statistics.median(x[1] * wb / 1e9 / x[3] for x in results[("llama.cpp", m, d, t)])
            print(f"| {'MoE' if m == 'moe' else m} | {d} | {t} | {a:.1f} | {b:.1f} | {fa:.2f} | {fb:.2f} |")
short = [c for c, v in med.items() if v[2] < new - 1]
if short:
    print(f"note: EOS stopped these runs before {new} tokens: {short}")
json.dump({"read_GBps": bw, "read_GBps_runs": bws, "rows": rows, "repetitions": reps,
           "runs": {" / ".join(map(str, c)): v for c, v in results.items()}}, open(out_json, "w"), indent=1)
PY
