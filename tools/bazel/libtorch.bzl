"""Repository rule that finds LibTorch.

LIBTORCH (an environment variable) names a LibTorch root holding include/ and lib/: an unpacked
libtorch zip, or the `torch` folder of a PyTorch wheel (python -c 'import torch,os;
print(os.path.dirname(torch.__file__))'). Unset, Debian's libtorch-dev under /usr is used.
A root whose lib/ holds libtorch_cuda.so builds with CUDA: LLAMA_MOE_WITH_CUDA and USE_C10D_NCCL
(the NCCL communicator) are defined and the CUDA toolkit's include folder is added.

--config=cuda_compile (.bazelrc) compiles the same CUDA branches against a CPU LibTorch's headers
and the CUDA/NCCL headers of the toolkit on the PATH (nvcc's prefix, or CUDA_HOME): compile only,
since nothing here can link or run them (tools/cuda_compile_check.sh).
"""

_DEBIAN_INCLUDE = "/usr/include"
_DEBIAN_LIB = "/usr/lib/x86_64-linux-gnu"

def _libtorch_impl(ctx):
    root = ctx.os.environ.get("LIBTORCH", "").rstrip("/")
    if root:
        include = root + "/include"
        lib = root + "/lib"
    else:
        include = _DEBIAN_INCLUDE
        lib = _DEBIAN_LIB
    if not ctx.path(include + "/torch/csrc/api/include/torch/torch.h").exists:
        fail("LibTorch headers not found under %s (LIBTORCH=%r). Install libtorch-dev " % (include, root) +
             "(tools/setup.sh) or point LIBTORCH at a LibTorch root holding include/ and lib/.")
    if not ctx.path(lib + "/libtorch.so").exists and not ctx.path(lib + "/libtorch_cpu.so").exists:
        fail("libtorch.so not found in %s (LIBTORCH=%r)" % (lib, root))

    # Only LibTorch's own header trees are linked in; the rest of /usr/include stays a builtin
    # include directory of the compiler.
    subdirs = ["torch", "ATen", "c10", "caffe2", "kineto", "THC", "TH", "fmt"]
    if root:
        subdirs = [e.basename for e in ctx.path(include).readdir()]
    for d in subdirs:
        if ctx.path(include + "/" + d).exists:
            ctx.symlink(include + "/" + d, "include/" + d)

    libs = ["torch", "torch_cpu", "c10"]
    cuda = ctx.path(lib + "/libtorch_cuda.so").exists
    if cuda:
        libs += ["torch_cuda", "c10_cuda"]
    # --no-as-needed: LibTorch registers its operators (and CUDA its kernels) from static
    # initialisers, so its libraries must stay linked even when no symbol is referenced directly.
    # It is left on: turning --as-needed back on here would also apply to the libraries Bazel
    # lists after these (Abseil), which shared libraries of this project use.
    linkopts = ["-L" + lib, "-Wl,-rpath," + lib, "-Wl,--no-as-needed"]
    linkopts += ["-l" + l for l in libs if ctx.path(lib + "/lib" + l + ".so").exists]
    linkopts += ["-pthread"]

    defines = []
    if cuda:
        defines += ["LLAMA_MOE_WITH_CUDA", "USE_C10D_NCCL"]

    # The CUDA toolkit's headers (cuda_runtime_api.h, nccl.h), for CUDA builds and the compile check.
    cuda_include = ""
    cuda_home = ctx.os.environ.get("CUDA_HOME", "")
    if not cuda_home:
        nvcc = ctx.which("nvcc")
        if nvcc:
            cuda_home = str(nvcc.dirname.dirname)
    if cuda_home and ctx.path(cuda_home + "/include/cuda_runtime_api.h").exists:
        ctx.symlink(cuda_home + "/include", "cuda/include")
        cuda_include = "cuda/include"
    # Debian's libtorch-dev lacks one generated header of c10's CUDA library; its one definition
    # (shared-library linkage) is supplied for the compile check when the real one is absent.
    if not ctx.path(include + "/c10/cuda/impl/cuda_cmake_macros.h").exists:
        ctx.file("cuda_stand_in/c10/cuda/impl/cuda_cmake_macros.h",
                 "#pragma once\n#define C10_CUDA_BUILD_SHARED_LIBS\n")
    else:
        ctx.file("cuda_stand_in/README", "The real c10/cuda/impl/cuda_cmake_macros.h is present.\n")
    if cuda and not cuda_include:
        fail("LibTorch at %s is a CUDA build, but no CUDA toolkit was found (nvcc on PATH, or CUDA_HOME)" % root)
    if not cuda_include:
        ctx.file("cuda/include/README", "No CUDA toolkit was found (nvcc on PATH, or CUDA_HOME).\n")

    # Match the C++ ABI the library was built with (PyTorch wheels before 2.7 used the old ABI;
    # Debian's Abseil, GoogleTest and protobuf use the new one, so such a LibTorch cannot mix).
    cfg = ctx.path(root + "/share/cmake/Torch/TorchConfig.cmake") if root else None
    if cfg and cfg.exists:
        text = ctx.read(cfg)
        if "_GLIBCXX_USE_CXX11_ABI=0" in text:
            fail(("LibTorch at %s is built with the old C++ ABI (_GLIBCXX_USE_CXX11_ABI=0, as PyTorch " +
                  "wheels before 2.7 are); Debian's Abseil, protobuf and GoogleTest use the new one, so " +
                  "they cannot link together. Use a LibTorch built with the cxx11 ABI (a wheel >= 2.7, " +
                  "or the cxx11-ABI libtorch zip).") % root)
        if "_GLIBCXX_USE_CXX11_ABI=1" in text:
            defines.append("_GLIBCXX_USE_CXX11_ABI=1")

    ctx.file("BUILD", """
package(default_visibility = ["//visibility:public"])

config_setting(
    name = "cuda_compile",
    define_values = {{"llama_moe_cuda_compile": "1"}},
)

cc_library(
    name = "libtorch",
    hdrs = glob(["include/**"]),
    includes = ["include", "include/torch/csrc/api/include"],
    defines = {defines},
    linkopts = {linkopts},
    deps = {cuda_deps} + select({{
        ":cuda_compile": [":cuda_compile_headers"],
        "//conditions:default": [],
    }}),
)

# The CUDA toolkit's headers.
cc_library(
    name = "cuda_headers",
    hdrs = glob(["cuda/include/**"]),
    includes = ["cuda/include"],
)

# The CUDA branches' headers and definitions for --config=cuda_compile.
cc_library(
    name = "cuda_compile_headers",
    hdrs = glob(["cuda_stand_in/**"]),
    includes = ["cuda_stand_in"],
    defines = ["LLAMA_MOE_WITH_CUDA", "USE_C10D_NCCL"],
    deps = [":cuda_headers"],
)
""".format(defines = repr(defines), linkopts = repr(linkopts), cuda_deps = repr([":cuda_headers"] if cuda else [])))
    ctx.file("WORKSPACE", "workspace(name = \"libtorch\")\n")
    ctx.file("info.bzl", "LIBTORCH_ROOT = %r\nLIBTORCH_CUDA = %s\n" % (root or "/usr", "True" if cuda else "False"))

libtorch_repository = repository_rule(
    implementation = _libtorch_impl,
    environ = ["LIBTORCH", "CUDA_HOME", "PATH"],
    local = True,
)
