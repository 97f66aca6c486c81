#!/usr/bin/env python3
"""Checks that no stage of the pipeline depends on a stage above it.

usage: check_layering.py FILE...        (BUILD, .h, .cc and .proto files of the stages)
       check_layering.py --self_test    (plants violations in a scratch tree and expects them found)

The stages, lowest first: model < moe < convert < train < eval. A file of stage S may name (in a
BUILD label "//P:..." or "//P/...", an #include "P/...", or a proto import "P/...") only packages
P of a stage at or below S. benchmarks/, tests/ and tools/ may use anything; the stages may name
tools/ only for build tooling (//tools/bazel, //tools:header_examples.py). External repositories
(@libtorch, @system, ...) are not stages; visibility grants ("//tests:__pkg__") name who may
use a stage, not what it uses.
"""
import os
import re
import sys
import tempfile

STAGES = ["model", "moe", "convert", "train", "eval"]
RANK = {s: i for i, s in enumerate(STAGES)}
ANY = {"benchmarks", "tests", "tools"}
BUILD_TOOLING = [re.compile(r"^//tools/bazel[:/]"), re.compile(r"^//tools:header_examples\.py$")]

LABEL = re.compile(r'"(//[A-Za-z0-9_./-]*(?::[A-Za-z0-9_./+-]+)?)"')
INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"', re.M)
IMPORT = re.compile(r'^\s*import\s+"([^"]+)"', re.M)


def stage_of_path(path):
    """The stage a file belongs to: the first path component that names a stage."""
    parts = os.path.normpath(path).split(os.sep)
    for p in parts:
        if p in RANK:
            return p
    return None


def referenced_packages(path, text):
    """(line number, top-level package, what) for every package the file names."""
    out = []
    if os.path.basename(path) == "BUILD":
        for m in LABEL.finditer(text):
            label = m.group(1)
            if any(t.match(label) for t in BUILD_TOOLING) or label.endswith((":__pkg__", ":__subpackages__")):
                continue  # build tooling, and visibility grants (who may use this stage, not a dependency)
            top = label[2:].split(":")[0].split("/")[0]
            if top:  # "//:x" is the root package (README, package groups)
                out.append((text.count("\n", 0, m.start()) + 1, top, label))
    else:
        for rx in (INCLUDE, IMPORT):
            for m in rx.finditer(text):
                inc = m.group(1)
                top = inc.split("/")[0]
                if "/" in inc:
                    out.append((text.count("\n", 0, m.start()) + 1, top, inc))
    return out


def violations(files):
    found = []
    for path in files:
        stage = stage_of_path(path)
        if stage is None:
            continue
        text = open(path, encoding="utf-8", errors="replace").read()
        for line, top, what in referenced_packages(path, text):
            if top in RANK and RANK[top] > RANK[stage]:
                found.append(f"{path}:{line}: {stage}/ names {what}, a stage above it ({top}/)")
            elif top in ANY and top != stage:
                found.append(f"{path}:{line}: {stage}/ names {what} ({top}/ may use the stages, not the reverse)")
    return found


def self_test():
    with tempfile.TemporaryDirectory() as root:
        planted = {
            "moe/BUILD": 'cc_library(name = "x", deps = ["//model:a", "//convert:recipe"])\n',
            "model/llama_model.cc": '#include "model/checkpoint.h"\n#include "moe/moe_layer.h"\n',
            "train/trainer.h": '#include "eval/evaluate_lib.h"\n',
            "convert/recipe.proto": 'import "train/train_config.proto";\n',
            "eval/BUILD": 'sh_test(name = "t", data = ["//tools:inspect"], deps = ["//train:trainer", "//tools/bazel:x"])\n',
        }
        paths = []
        for rel, text in planted.items():
            p = os.path.join(root, rel)
            os.makedirs(os.path.dirname(p), exist_ok=True)
            open(p, "w").write(text)
            paths.append(p)
        got = violations(paths)
        want = ["//convert:recipe", "moe/moe_layer.h", "eval/evaluate_lib.h", "train/train_config.proto",
                "//tools:inspect"]
        missing = [w for w in want if not any(w in g for g in got)]
        if missing or len(got) != len(want):
            print("check_layering self-test FAILED: expected violations", want, "got", got)
            return 1
    print(f"check_layering self-test: {len(want)} planted violations found")
    return 0


def main():
    if sys.argv[1:] == ["--self_test"]:
        return self_test()
    files = sys.argv[1:]
    if not files:
        print("check_layering: no files given")
        return 1
    found = violations(files)
    for v in found:
        print(v)
    stages_seen = sorted({stage_of_path(f) for f in files} - {None}, key=RANK.get)
    print(f"check_layering: {len(files)} files of {', '.join(stages_seen)}: {len(found)} violation(s)")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
