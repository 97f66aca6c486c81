"""Project wrapper macros: compiler flags, test and benchmark conventions in one place.

Every C++ target of the project uses these instead of the native rules, so that warnings,
sanitizer-friendly flags and test/benchmark dependencies are set once.
"""

# -fopenmp: ATen's at::parallel_for is a header template that splits work across the intra-op
# threads only where the caller is compiled with OpenMP (ParallelOpenMP.h); without it every
# parallel_for of the project's own kernels runs on one thread. Debian's LibTorch uses libgomp.
_COPTS = [
    "-fopenmp",
    "-Wall",
    "-Wextra",
    "-Wno-unused-parameter",
    "-Wno-sign-compare",
    "-Wno-missing-field-initializers",
]

def lm_cc_library(name, copts = [], linkopts = [], **kwargs):
    native.cc_library(name = name, copts = _COPTS + copts, linkopts = linkopts + ["-fopenmp"], **kwargs)

def lm_cc_binary(name, copts = [], linkopts = [], **kwargs):
    native.cc_binary(name = name, copts = _COPTS + copts, linkopts = linkopts + ["-fopenmp"], **kwargs)

def lm_cc_test(name, copts = [], deps = [], size = "small", **kwargs):
    """A GoogleTest target; `gtest_main` is linked in."""
    native.cc_test(
        name = name,
        copts = _COPTS + copts,
        deps = deps + ["@system//:gtest_main"],
        size = size,
        **kwargs
    )

def lm_cc_benchmark(name, copts = [], deps = [], tags = [], **kwargs):
    """A Google Benchmark binary: testonly, tagged `benchmark`, never run by `bazel test //...`."""
    native.cc_binary(
        name = name,
        copts = _COPTS + copts,
        deps = deps + ["@system//:benchmark_main"],
        testonly = True,
        tags = tags + ["benchmark"],
        **kwargs
    )

def lm_header_examples_test(name, hdrs, deps = []):
    """Compiles the `// Example:` block of every header in `hdrs` (tools/header_examples.py).

    A header without an Example block, or an example that does not compile, fails the test.
    """
    native.genrule(
        name = name + "_src",
        srcs = hdrs,
        outs = [name + ".cc"],
        cmd = "python3 $(location //tools:header_examples.py) $@ " + " ".join(["$(location %s)" % h for h in hdrs]),
        tools = ["//tools:header_examples.py"],
        testonly = True,
    )
    native.cc_test(
        name = name,
        srcs = [name + ".cc"] + [h for h in hdrs if not h.startswith("//") and not h.startswith(":")],
        copts = _COPTS + ["-Wno-unused-variable", "-Wno-unused-but-set-variable"],
        deps = deps + ["@system//:gtest_main", "//model:status_macros"],
        size = "small",
    )

def lm_stage_sources():
    """The filegroup `layering_sources` that //tests:layering_test reads: a stage's BUILD labels
    and #includes."""
    native.filegroup(
        name = "layering_sources",
        srcs = ["BUILD"] + native.glob(["**/*.h", "**/*.cc", "**/*.proto"]),
        visibility = ["//tests:__pkg__"],
    )
