#!/usr/bin/env python3
"""Writes tests/malformed/: checkpoints and safetensors files broken in one way each.

Each case is a file or model directory plus the substrings its error message must contain
(tests/malformed/EXPECTED, one case per line: `case<TAB>substring<TAB>substring...`).
The corpus is checked in; rerun this script only to change it. Standard library only.
"""
import json
import os
import random
import shutil
import struct
import sys

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "malformed")
rng = random.Random(1234)
SIZES = {"F32": 4, "BF16": 2, "I64": 8}


def f32_bytes(n, nan_at=None):
    vals = [rng.gauss(0, 1) for _ in range(n)]
    if nan_at is not None:
        vals[nan_at] = float("nan")
    return struct.pack("<%df" % n, *vals)


def raw_file(path, header_obj_or_text, data, length_override=None):
    text = header_obj_or_text if isinstance(header_obj_or_text, str) else json.dumps(header_obj_or_text)
    while (8 + len(text)) % 8:
        text += " "
    n = len(text) if length_override is None else length_override
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", n) + text.encode() + data)


def safetensors(path, tensors):
    """tensors: list of (name, dtype, shape, bytes)."""
    header, data, off = {"__metadata__": {"format": "pt"}}, b"", 0
    for name, dtype, shape, b in tensors:
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [off, off + len(b)]}
        off += len(b)
        data += b
    raw_file(path, header, data)


CONFIG = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 16, "hidden_size": 8,
    "intermediate_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1,
    "head_dim": 4, "max_position_embeddings": 64, "rms_norm_eps": 1e-5, "rope_theta": 500000.0,
    "rope_scaling": None, "tie_word_embeddings": False, "torch_dtype": "float32", "hidden_act": "silu",
    "bos_token_id": 14, "eos_token_id": 15,
}


def llama_tensors(cfg):
    h, i, v, d = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"], cfg["head_dim"]
    q, kv = cfg["num_attention_heads"] * d, cfg["num_key_value_heads"] * d
    shapes = [("model.embed_tokens.weight", [v, h])]
    for l in range(cfg["num_hidden_layers"]):
        p = "model.layers.%d." % l
        shapes += [(p + "input_layernorm.weight", [h]), (p + "self_attn.q_proj.weight", [q, h]),
                   (p + "self_attn.k_proj.weight", [kv, h]), (p + "self_attn.v_proj.weight", [kv, h]),
                   (p + "self_attn.o_proj.weight", [h, q]), (p + "post_attention_layernorm.weight", [h]),
                   (p + "mlp.gate_proj.weight", [i, h]), (p + "mlp.up_proj.weight", [i, h]),
                   (p + "mlp.down_proj.weight", [h, i])]
    shapes += [("model.norm.weight", [h]), ("lm_head.weight", [v, h])]
    out = []
    for name, shape in shapes:
        n = 1
        for s in shape:
            n *= s
        out.append((name, "F32", shape, f32_bytes(n)))
    return out


# An MoE directory as //convert:convert writes it: 2 frozen + 2 learned experts of 8, top-2.
MOE = {"num_frozen_experts": 2, "num_learned_experts": 2, "expert_intermediate_size": 8, "top_k": 2,
       "score_function": "softmax", "normalize_gates": True, "gate_scale": 2.0, "bias_update_rate": 0.001}
MOE_CONFIG = dict(CONFIG, model_type="llama_moe_cc", architectures=["LlamaMoeCcForCausalLM"], moe=MOE)
MOE_RECIPE = ("num_frozen_experts: 2 num_learned_experts: 2 expert_intermediate_size: 8 top_k: 2 "
              "score_function: SOFTMAX normalize_gates: true gate_scale: 2\n")


def moe_tensors(cfg, moe=MOE, nan_in=None):
    """The dense tensors with each layer's FFN replaced by expert stacks, a router and its bias."""
    h, ie = cfg["hidden_size"], moe["expert_intermediate_size"]
    nf, nl = moe["num_frozen_experts"], moe["num_learned_experts"]
    out = []
    for name, dt, shape, b in llama_tensors(cfg):
        if ".mlp." not in name:
            out.append((name, dt, shape, b))
            continue
        if not name.endswith("down_proj.weight"):
            continue
        p = name[:name.index("mlp.")]
        for group, n in (("frozen_experts", nf), ("learned_experts", nl)):
            for proj, shape in (("gate_proj", [n, ie, h]), ("up_proj", [n, ie, h]), ("down_proj", [n, h, ie])):
                t = "%smlp.%s.%s.weight" % (p, group, proj)
                out.append((t, "F32", shape, f32_bytes(n * shape[1] * shape[2], nan_at=3 if t == nan_in else None)))
        out.append((p + "mlp.router.weight", "F32", [nf + nl, h], f32_bytes((nf + nl) * h)))
        out.append((p + "mlp.router.expert_bias", "F32", [nf + nl], f32_bytes(nf + nl)))
    return out


def moe_dir(name, cfg=MOE_CONFIG, tensors=None, recipe=MOE_RECIPE):
    d = model_dir(name, cfg=cfg, tensors=moe_tensors(cfg) if tensors is None else tensors)
    if recipe is not None:
        with open(os.path.join(d, "recipe.textproto"), "w") as f:
            f.write(recipe)
    return d


def model_dir(name, cfg=CONFIG, tensors=None, shards=1, config_text=None):
    d = os.path.join(OUT, name)
    os.makedirs(d)
    with open(os.path.join(d, "config.json"), "w") as f:
        f.write(config_text if config_text is not None else json.dumps(cfg, indent=2))
    tensors = llama_tensors(cfg) if tensors is None else tensors
    if shards == 1:
        safetensors(os.path.join(d, "model.safetensors"), tensors)
        return d
    per = (len(tensors) + shards - 1) // shards
    weight_map = {}
    for s in range(shards):
        fname = "model-%05d-of-%05d.safetensors" % (s + 1, shards)
        part = tensors[s * per:(s + 1) * per]
        safetensors(os.path.join(d, fname), part)
        for t in part:
            weight_map[t[0]] = fname
    with open(os.path.join(d, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": sum(len(t[3]) for t in tensors)}, "weight_map": weight_map}, f, indent=2)
    return d


def main():
    if os.path.exists(OUT):
        shutil.rmtree(OUT)
    os.makedirs(OUT)
    expected = []

    def case(name, *subs):
        expected.append("\t".join((name,) + subs))

    def hdr(**entries):
        return {k: v for k, v in entries.items()}

    w4 = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}

    # --- single files ---
    good = [("a.weight", "F32", [4], f32_bytes(4)), ("b.weight", "F32", [8], f32_bytes(8))]
    safetensors(os.path.join(OUT, "truncated_data.safetensors"), good)
    with open(os.path.join(OUT, "truncated_data.safetensors"), "r+b") as f:
        f.truncate(os.path.getsize(f.name) - 10)
    case("truncated_data.safetensors", "truncated_data.safetensors", "tensor 'b.weight'", "run past the data section")

    raw_file(os.path.join(OUT, "header_past_eof.safetensors"), '{"a":', b"", length_override=4096)
    case("header_past_eof.safetensors", "header_past_eof.safetensors", "runs past the end of the file")

    raw_file(os.path.join(OUT, "header_huge.safetensors"), "{}", b"", length_override=(1 << 62))
    case("header_huge.safetensors", "header_huge.safetensors", "exceeds the limit")

    raw_file(os.path.join(OUT, "header_not_json.safetensors"), '{"a.weight": {"dtype": "F32", "shape": [2]', b"")
    case("header_not_json.safetensors", "header_not_json.safetensors", "not valid JSON")

    raw_file(os.path.join(OUT, "header_not_object.safetensors"), '["a.weight"]', b"")
    case("header_not_object.safetensors", "header_not_object.safetensors", "not a JSON object")

    with open(os.path.join(OUT, "empty.safetensors"), "wb"):
        pass
    case("empty.safetensors", "empty.safetensors", "fewer than the 8-byte header length")

    raw_file(os.path.join(OUT, "offsets_out_of_range.safetensors"),
             {"a.weight": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
              "b.weight": {"dtype": "F32", "shape": [2], "data_offsets": [8000, 8008]}}, f32_bytes(4))
    case("offsets_out_of_range.safetensors", "offsets_out_of_range.safetensors", "tensor 'b.weight'", "run past the data section")

    raw_file(os.path.join(OUT, "offsets_overlap.safetensors"),
             {"a.weight": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
              "b.weight": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, f32_bytes(3))
    case("offsets_overlap.safetensors", "offsets_overlap.safetensors", "tensor 'b.weight'", "overlap tensor 'a.weight'")

    raw_file(os.path.join(OUT, "offsets_hole.safetensors"),
             {"a.weight": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
              "b.weight": {"dtype": "F32", "shape": [1], "data_offsets": [8, 12]}}, f32_bytes(3))
    case("offsets_hole.safetensors", "offsets_hole.safetensors", "tensor 'b.weight'", "hole")

    raw_file(os.path.join(OUT, "offsets_reversed.safetensors"),
             {"a.weight": {"dtype": "F32", "shape": [2], "data_offsets": [8, 0]}}, f32_bytes(2))
    case("offsets_reversed.safetensors", "offsets_reversed.safetensors", "tensor 'a.weight'", "reversed")

    raw_file(os.path.join(OUT, "dtype_shape_mismatch.safetensors"),
             {"a.weight": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, f32_bytes(2))
    case("dtype_shape_mismatch.safetensors", "dtype_shape_mismatch.safetensors", "tensor 'a.weight'", "holds 8 bytes but shape [3] of F32 needs 12")

    raw_file(os.path.join(OUT, "bf16_byte_count.safetensors"),
             {"a.weight": {"dtype": "BF16", "shape": [2, 2], "data_offsets": [0, 16]}}, f32_bytes(4))
    case("bf16_byte_count.safetensors", "bf16_byte_count.safetensors", "tensor 'a.weight'", "shape [2,2] of BF16 needs 8")

    raw_file(os.path.join(OUT, "duplicate_names.safetensors"),
             '{"a.weight": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}, '
             '"a.weight": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}', f32_bytes(2))
    case("duplicate_names.safetensors", "duplicate_names.safetensors", "tensor 'a.weight'", "appears twice")

    raw_file(os.path.join(OUT, "unknown_dtype.safetensors"),
             {"a.weight": {"dtype": "Q4_K", "shape": [2], "data_offsets": [0, 8]}}, f32_bytes(2))
    case("unknown_dtype.safetensors", "unknown_dtype.safetensors", "tensor 'a.weight'", "unsupported dtype 'Q4_K'")

    raw_file(os.path.join(OUT, "negative_dim.safetensors"),
             {"a.weight": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}}, f32_bytes(2))
    case("negative_dim.safetensors", "negative_dim.safetensors", "tensor 'a.weight'", "non-negative integer")

    raw_file(os.path.join(OUT, "metadata_not_string.safetensors"), {"__metadata__": {"format": 1}}, b"")
    case("metadata_not_string.safetensors", "metadata_not_string.safetensors", "'__metadata__' value of 'format'")

    # --- model directories ---
    d = model_dir("index_missing_shard", shards=3)
    os.remove(os.path.join(d, "model-00002-of-00003.safetensors"))
    case("index_missing_shard", "model.safetensors.index.json", "model-00002-of-00003.safetensors", "does not exist", "tensor '")

    d = model_dir("index_missing_tensor", shards=2)
    with open(os.path.join(d, "model.safetensors.index.json")) as f:
        idx = json.load(f)
    idx["weight_map"]["model.layers.0.mlp.extra.weight"] = "model-00001-of-00002.safetensors"
    with open(os.path.join(d, "model.safetensors.index.json"), "w") as f:
        json.dump(idx, f)
    case("index_missing_tensor", "model.safetensors.index.json", "tensor 'model.layers.0.mlp.extra.weight'", "does not hold it")

    d = model_dir("shard_tensor_not_in_index", shards=2)
    with open(os.path.join(d, "model.safetensors.index.json")) as f:
        idx = json.load(f)
    del idx["weight_map"]["model.norm.weight"]
    with open(os.path.join(d, "model.safetensors.index.json"), "w") as f:
        json.dump(idx, f)
    case("shard_tensor_not_in_index", "tensor 'model.norm.weight'", "does not list")

    d = model_dir("truncated_shard", shards=2)
    p = os.path.join(d, "model-00002-of-00002.safetensors")
    with open(p, "r+b") as f:
        f.truncate(os.path.getsize(p) - 100)
    case("truncated_shard", "model-00002-of-00002.safetensors", "tensor '", "run past the data section")

    bad = dict(CONFIG, num_key_value_heads=3)
    model_dir("config_kv_heads", cfg=bad, tensors=llama_tensors(CONFIG))
    case("config_kv_heads", "config.json", "num_attention_heads 2 is not a multiple of num_key_value_heads 3")

    bad = dict(CONFIG, intermediate_size=0)
    model_dir("config_zero_ffn", cfg=bad, tensors=llama_tensors(CONFIG))
    case("config_zero_ffn", "config.json", "intermediate_size must be positive")

    model_dir("config_not_json", config_text='{"vocab_size": 16,')
    case("config_not_json", "config.json", "not valid JSON")

    tensors = llama_tensors(CONFIG)
    tensors = [(n, dt, [8, 6] if n.endswith("q_proj.weight") else s, f32_bytes(48) if n.endswith("q_proj.weight") else b)
               for n, dt, s, b in tensors]
    model_dir("tensor_shape_mismatch", tensors=tensors)
    case("tensor_shape_mismatch", "model.safetensors", "tensor 'model.layers.0.self_attn.q_proj.weight' has shape [8,6], expected [8,8]")

    tensors = [t for t in llama_tensors(CONFIG) if t[0] != "lm_head.weight"]
    model_dir("missing_tensor", tensors=tensors)
    case("missing_tensor", "no tensor 'lm_head.weight'")

    tensors = llama_tensors(CONFIG) + [("model.layers.0.mlp.experts.weight", "F32", [2], f32_bytes(2))]
    model_dir("unexpected_tensor", tensors=tensors)
    case("unexpected_tensor", "tensor 'model.layers.0.mlp.experts.weight'", "is not part of a model with this config.json")

    tensors = [(n, dt, s, f32_bytes(len(b) // 4, nan_at=3) if n == "model.layers.0.mlp.up_proj.weight" else b)
               for n, dt, s, b in llama_tensors(CONFIG)]
    model_dir("nan_values", tensors=tensors)
    case("nan_values", "model.safetensors", "tensor 'model.layers.0.mlp.up_proj.weight'", "NaN or Inf")

    model_dir("valid_control")  # must pass: proves the harness can tell good from bad

    # --- MoE directories, checked against their own layout ---
    up = "model.layers.0.mlp.learned_experts.up_proj.weight"
    moe_dir("moe_missing_stack", tensors=[t for t in moe_tensors(MOE_CONFIG) if t[0] != up])
    case("moe_missing_stack", "no tensor '%s'" % up)

    fewer = [(n, dt, [1] + s[1:] if "learned_experts" in n else s, b[:len(b) // 2] if "learned_experts" in n else b)
             for n, dt, s, b in moe_tensors(MOE_CONFIG)]
    moe_dir("moe_wrong_expert_count", tensors=fewer)
    case("moe_wrong_expert_count", "tensor 'model.layers.0.mlp.learned_experts.gate_proj.weight' has shape [1,8,8], expected [2,8,8]")

    bias = "model.layers.0.mlp.router.expert_bias"
    moe_dir("moe_bias_shape", tensors=[(n, dt, [3] if n == bias else s, f32_bytes(3) if n == bias else b)
                                       for n, dt, s, b in moe_tensors(MOE_CONFIG)])
    case("moe_bias_shape", "tensor '%s' has shape [3], expected [4]" % bias)

    moe_dir("moe_config_tensor_mismatch", cfg=dict(MOE_CONFIG, moe=dict(MOE, expert_intermediate_size=4)),
            tensors=moe_tensors(MOE_CONFIG))
    case("moe_config_tensor_mismatch", "config.json", "expert_intermediate_size 4", "intermediate_size 16")

    down = "model.layers.0.mlp.learned_experts.down_proj.weight"
    moe_dir("moe_nan_learned", tensors=moe_tensors(MOE_CONFIG, nan_in=down))
    case("moe_nan_learned", "tensor '%s'" % down, "NaN or Inf")

    moe_dir("moe_recipe_mismatch", recipe=MOE_RECIPE.replace("top_k: 2", "top_k: 1"))
    case("moe_recipe_mismatch", "recipe.textproto", "top_k 1", "config.json 2")

    no_block = {k: v for k, v in MOE_CONFIG.items() if k != "moe"}
    moe_dir("moe_no_block", cfg=no_block, tensors=moe_tensors(MOE_CONFIG))
    case("moe_no_block", "config.json", "no 'moe' block")

    moe_dir("valid_moe_control")  # must pass, like valid_control
    with open(os.path.join(OUT, "EXPECTED"), "w") as f:
        f.write("# case<TAB>substrings the error must contain (valid_control must succeed)\n")
        f.write("\n".join(expected) + "\n")
    print("wrote %d cases to %s" % (len(expected), os.path.normpath(OUT)))


if __name__ == "__main__":
    sys.exit(main())
