#!/usr/bin/env python3
"""Writes the seed corpora of the fuzz targets (tools/fuzz.sh) under tests/fuzz_corpus/<target>/.

Each seed is a small valid input of its target's format, so that libFuzzer starts from inputs
that get past the first checks and mutates its way into the deeper ones; the malformed-file
corpus (tests/malformed/) seeds the safetensors header target as well. The seeds are written in
the layout each fuzzer reads (a selector byte where a target fuzzes two formats), and the script
is deterministic: rerunning it rewrites the same bytes.

Example:
  tools/make_fuzz_corpus.py --output tests/fuzz_corpus

Standard library only.
"""
import argparse
import base64
import json
import os
import shutil
import struct
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_small_tokenizer import byte_level_alphabet  # noqa: E402

LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                  r"|\s*[\r\n]+|\s+(?!\S)|\s+")

TEXTS = [b"Hello world, the 3 cats' toys!\n\n  done.", "na\u00efve caf\u00e9 \u65e5\u672c <|eot_id|> x".encode()]


def tokenizer_seeds():
    alphabet = byte_level_alphabet()
    vocab = {alphabet[b]: b for b in range(256)}
    merges = []
    for left, right in [(b"t", b"h"), (b"th", b"e"), (b" ", b"the"), (b"o", b"r"), (b"w", b"or"),
                        (b"l", b"d"), (b"wor", b"ld"), (b"e", b"r")]:
        l = "".join(alphabet[c] for c in left)
        r = "".join(alphabet[c] for c in right)
        vocab[l + r] = len(vocab)
        merges.append(f"{l} {r}")
    added = [{"id": len(vocab), "content": "<|begin_of_text|>", "special": True},
             {"id": len(vocab) + 1, "content": "<|eot_id|>", "special": True}]
    hf = {
        "version": "1.0",
        "added_tokens": added,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": LLAMA3_PATTERN}, "behavior": "Isolated", "invert": False},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]},
        "model": {"type": "BPE", "ignore_merges": True, "vocab": vocab, "merges": merges},
    }
    hf_text = json.dumps(hf, ensure_ascii=False).encode()
    ranks = [bytes([b]) for b in range(256)] + [b"th", b"the", b" the", b"or", b"wor", b"ld", b"world"]
    tiktoken = b"".join(base64.b64encode(t) + b" %d\n" % i for i, t in enumerate(ranks))
    seeds = {}
    for i, text in enumerate(TEXTS):
        seeds[f"hf_{i}"] = b"\x00" + hf_text + b"\x00" + text
        seeds[f"tiktoken_{i}"] = b"\x01" + tiktoken + b"\x00" + text
    return seeds


def config_seeds():
    dense = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 64,
             "intermediate_size": 176, "num_hidden_layers": 2, "num_attention_heads": 4,
             "num_key_value_heads": 2, "head_dim": 16, "vocab_size": 300, "max_position_embeddings": 256,
             "rms_norm_eps": 1e-5, "rope_theta": 500000.0, "rope_scaling": None,
             "tie_word_embeddings": False, "torch_dtype": "bfloat16", "bos_token_id": 256,
             "eos_token_id": 257}
    llama31 = dict(dense, rope_scaling={"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                        "original_max_position_embeddings": 8192, "rope_type": "llama3"},
                   eos_token_id=[257, 258])
    moe = dict(dense, architectures=["LlamaMoeCcForCausalLM"], model_type="llama_moe_cc",
               moe={"num_frozen_experts": 4, "num_learned_experts": 4, "expert_intermediate_size": 44,
                    "top_k": 2, "score_function": "softmax", "normalize_gates": True, "gate_scale": 4.0,
                    "bias_update_rate": 0.001})
    mixtral = dict(dense, architectures=["MixtralForCausalLM"], model_type="mixtral", intermediate_size=44,
                   num_local_experts=4, num_experts_per_tok=2, router_aux_loss_coef=0.0)
    return {name: json.dumps(c, indent=1).encode() for name, c in
            [("dense", dense), ("llama31", llama31), ("moe", moe), ("mixtral", mixtral)]}


def index_seeds():
    index = {"metadata": {"total_size": 16060522496},
             "weight_map": {"model.embed_tokens.weight": "model-00001-of-00004.safetensors",
                            "model.layers.0.mlp.up_proj.weight": "model-00001-of-00004.safetensors",
                            "model.norm.weight": "model-00004-of-00004.safetensors",
                            "lm_head.weight": "model-00004-of-00004.safetensors"}}
    return {"index": json.dumps(index, indent=2).encode()}


def shard_seeds():
    def fnv1a64(data):
        h = 0xcbf29ce484222325
        for b in data:
            h = ((h ^ b) * 0x100000001b3) & 0xFFFFFFFFFFFFFFFF
        return h

    tokens = [256, 11, 12, 13, 257, 14, 15, 257]
    payload = struct.pack("<%dI" % len(tokens), *tokens)
    header = b"LMTOKSH1" + struct.pack("<IIQQQII", 1, 1, len(tokens), 2, fnv1a64(payload), 300, 257)
    header += b"\x00" * (64 - len(header))
    manifest = {"version": 1, "format": "llama-moe token shards", "vocab_size": 300, "eos_id": 257,
                "tokenizer": {"path": "tokenizer.json", "fnv1a64": "0x0123456789abcdef"},
                "splits": {"train": {"num_tokens": 8, "num_documents": 2, "shards": [
                    {"file": "train-00000.tok", "num_tokens": 8, "num_documents": 2,
                     "payload_fnv1a64": "0x%016x" % fnv1a64(payload)}]},
                    "heldout": {"num_tokens": 0, "num_documents": 0, "shards": []}}}
    # The same tokens with a loss mask (dtype 2): bit 31 set on the tokens outside the loss.
    words = [t | (1 << 31 if i % 2 else 0) for i, t in enumerate(tokens)]
    masked_payload = struct.pack("<%dI" % len(words), *words)
    masked = b"LMTOKSH1" + struct.pack("<IIQQQII", 1, 2, len(words), 2, fnv1a64(masked_payload), 300, 257)
    masked += b"\x00" * (64 - len(masked))
    return {"shard": b"\x01" + header + payload,
            "shard_masked": b"\x01" + masked + masked_payload,
            "manifest": b"\x00" + json.dumps(manifest, indent=2).encode()}


def corpus_seeds():
    brown = (b"\n\n\tThe/at Fulton/np-tl County/nn-tl Grand/jj-tl Jury/nn-tl said/vbd Friday/nr an/at\n"
             b"investigation/nn of/in ``/`` no/at evidence/nn ''/'' that/cs 1/2/cd ./.\n\n\n"
             b"\tThe/at jury/nn further/rbr said/vbd ./.\n")
    text = b"First document,\nits second line.\n\n  \t\nSecond document.\r\n\n\nThird \xe2\x80\x94 with UTF-8.\n"
    chat = (b'{"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}, '
            b'{"role": "assistant", "content": "Hello"}]}\n\n'
            b'{"messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]}\n')
    return {"brown": b"\x01" + brown, "text": b"\x00" + text, "chat": b"\x02" + chat}


def recipe_seeds():
    return {
        "fine": b"num_frozen_experts: 16\nnum_learned_experts: 16\nexpert_intermediate_size: 448\n"
                b"top_k: 4\npartition: RANDOM_PERMUTATION\nscore_function: SIGMOID\n",
        "drop_upcycling": b"learned_init: DROP_UPCYCLING\nreinit_fraction: 0.5\nrouter_init: DENSE_PRESERVING\n"
                          b"bias_margin: 2\ndtype: \"bfloat16\"\nseed: 7\n",
    }


def files_in(directory):
    """The files of a directory of real inputs, named without their .textproto suffix."""
    seeds = {}
    for name in sorted(os.listdir(directory)):
        with open(os.path.join(directory, name), "rb") as f:
            seeds[name.replace(".textproto", "")] = f.read()
    return seeds


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", required=True, help="directory to write <target>/<seed> under")
    args = parser.parse_args()
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    corpora = {
        "tokenizer": tokenizer_seeds(),
        "config": config_seeds(),
        "safetensors_index": index_seeds(),
        "token_shards": shard_seeds(),
        "recipe": dict(recipe_seeds(), **files_in(os.path.join(root, "convert", "recipes"))),
        "corpus_reader": corpus_seeds(),
        "train_config": files_in(os.path.join(root, "train", "configs")),
    }
    for target, seeds in corpora.items():
        out = os.path.join(args.output, target)
        shutil.rmtree(out, ignore_errors=True)
        os.makedirs(out)
        for name, data in seeds.items():
            with open(os.path.join(out, name), "wb") as f:
                f.write(data)
        print(f"{out}: {len(seeds)} seeds")


if __name__ == "__main__":
    main()
