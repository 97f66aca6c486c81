#!/usr/bin/env python3
"""Writes CMakeLists.txt from the Bazel build, so that the CMake build has the same libraries,
tools and tests as Bazel and the BUILD files stay the one place a target is declared.

usage: tools/gen_cmake.py [--check]

It reads `bazel query --output=xml` of every C++ rule, proto rule and genrule of the project and
of the system libraries (@system, @com_google_protobuf), and emits one CMakeLists.txt whose
targets are named after their labels (//moe:dispatch -> moe__dispatch). --check writes nothing
and exits 1 when the committed CMakeLists.txt differs from what the BUILD files give (CI runs it).

What CMake cannot take over stays Bazel-only: C++ tests whose data comes from a genrule other than
the header-examples one (listed at the top of the output), and the sh_tests, whose scripts find
Bazel-built binaries through runfiles (not queried).
"""
import os
import subprocess
import sys
import xml.etree.ElementTree as ET

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "CMakeLists.txt")

QUERY = ('kind("cc_library|cc_binary|cc_test|proto_library|cc_proto_library|genrule", //...) + '
         'kind(cc_library, @system//:all + @com_google_protobuf//:all)')

# The dependency whose presence makes a target a benchmark (built only with Google Benchmark).
BENCHMARK_LIBS = {"@system//:benchmark", "@system//:benchmark_main"}


def query():
    out = subprocess.run(["bazel", "query", "--noshow_progress", QUERY, "--output=xml"], cwd=ROOT,
                         check=True, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL).stdout
    rules = {}
    for rule in ET.fromstring(out).iter("rule"):
        attrs = {}
        for a in rule:
            name = a.get("name")
            if a.tag == "list":
                attrs[name] = [c.get("value") for c in a]
            elif a.tag in ("string", "label", "boolean", "int"):
                attrs[name] = a.get("value")
        rules[rule.get("name")] = (rule.get("class"), attrs)
    return rules


def canonical(label):
    """//pkg:name for every spelling Bazel prints (external repos keep their @repo prefix)."""
    if label.startswith("@//"):
        label = label[1:]
    if label.startswith("@") and ":" not in label:
        label = label + "//:" + label[1:]
    return label


def target_name(label):
    label = canonical(label)
    repo, _, rest = label.partition("//")
    pkg, _, name = rest.partition(":")
    base = (pkg.replace("/", "_") + "__" + name).replace("-", "_")
    return (repo.strip("@") + "__" + base) if repo else base


def source_path(label):
    """A source file label -> its path relative to the root ("moe/dispatch.cc")."""
    label = canonical(label)
    _, _, rest = label.partition("//")
    pkg, _, name = rest.partition(":")
    return f"{pkg}/{name}" if pkg else name


def is_source(label, rules):
    return canonical(label) not in rules


def cmake_list(items, indent="    "):
    return "".join(f"\n{indent}{i}" for i in items)


class Generator:
    def __init__(self, rules):
        self.rules = rules
        self.lines = []
        self.skipped = []
        self.declared_externals = set()
        self.external_lines = []
        self.generated_files = {canonical(o) for kind, a in rules.values() if kind == "genrule"
                                for o in a.get("outs", [])}

    def external(self, label):
        """(link items, compile definitions) of an external library label."""
        label = canonical(label)
        if label == "@libtorch//:libtorch":
            return ["${TORCH_LIBRARIES}"], []
        kind, a = self.rules[label]
        links, defines = list(a.get("linkopts", [])), list(a.get("defines", []))
        for d in a.get("deps", []):
            l, df = self.external(d)
            links += [x for x in l if x not in links]
            defines += [x for x in df if x not in defines]
        return links, defines

    def external_target(self, label):
        """The INTERFACE target standing for an external library (its link flags and definitions,
        written once), declared on first use."""
        label = canonical(label)
        if label == "@libtorch//:libtorch":
            return "${TORCH_LIBRARIES}"
        repo, _, rest = label.partition("//")
        name = f"ext_{repo.strip('@')}_{rest.partition(':')[2]}"  # @system//:absl -> ext_system_absl
        if name not in self.declared_externals:
            self.declared_externals.add(name)
            links, defines = self.external(label)
            body = [f"add_library({name} INTERFACE)"]
            if links:
                body.append(f"target_link_libraries({name} INTERFACE{cmake_list(links)})")
            if defines:
                body.append(f"target_compile_definitions({name} INTERFACE {' '.join(sorted(set(defines)))})")
            self.external_lines.append("\n" + "\n".join(body) + "\n")
        return name

    def deps_of(self, a):
        targets, benchmark = [], False
        for d in a.get("deps", []):
            d = canonical(d)
            if d in BENCHMARK_LIBS:
                benchmark = True
            targets.append(self.external_target(d) if d.startswith("@") else target_name(d))
        return targets, benchmark

    def sources(self, a, keys=("srcs", "hdrs")):
        out = []
        for k in keys:
            for s in a.get(k, []):
                s = canonical(s)
                if is_source(s, self.rules) and s not in self.generated_files:
                    out.append("${CMAKE_SOURCE_DIR}/" + source_path(s))
                else:
                    out.append(self.generated(s))
        return out

    def generated(self, label):
        """The path of a genrule output (header-examples sources are the only kind supported)."""
        return "${LM_GEN}/" + source_path(label)

    def emit_proto(self, label, a):
        proto_rule = canonical(a["deps"][0])
        protos = [source_path(s) for s in self.rules[proto_rule][1]["srcs"]]
        outs = []
        for p in protos:
            stem = p[: -len(".proto")]
            outs += [f"${{LM_GEN}}/{stem}.pb.cc", f"${{LM_GEN}}/{stem}.pb.h"]
        name = target_name(label)
        self.lines.append(f"""
add_custom_command(
  OUTPUT{cmake_list(outs)}
  COMMAND ${{LM_PROTOC}} --cpp_out=${{LM_GEN}} -I${{CMAKE_SOURCE_DIR}}{''.join(' ${CMAKE_SOURCE_DIR}/' + p for p in protos)}
  DEPENDS{''.join(' ${CMAKE_SOURCE_DIR}/' + p for p in protos)}
  COMMENT "protoc {' '.join(protos)}")
add_library({name} STATIC{cmake_list([o for o in outs if o.endswith('.cc')])})
target_link_libraries({name} PUBLIC {self.external_target('@com_google_protobuf//:protobuf')})
""")

    def emit_genrule(self, label, a):
        outs = [source_path(o) for o in a.get("outs", [])]
        cmd = a.get("cmd", "")
        if "header_examples.py" not in cmd:
            return False
        hdrs = [source_path(s) for s in a.get("srcs", [])]
        out = "${LM_GEN}/" + outs[0]
        self.lines.append(f"""
add_custom_command(
  OUTPUT {out}
  COMMAND ${{CMAKE_COMMAND}} -E make_directory ${{LM_GEN}}/{os.path.dirname(outs[0])}
  COMMAND ${{Python3_EXECUTABLE}} ${{CMAKE_SOURCE_DIR}}/tools/header_examples.py {out}{''.join(' ${CMAKE_SOURCE_DIR}/' + h for h in hdrs)}
  DEPENDS ${{CMAKE_SOURCE_DIR}}/tools/header_examples.py{''.join(' ${CMAKE_SOURCE_DIR}/' + h for h in hdrs)})
""")
        return True

    def needs_llama_cpp(self, label):
        """Whether a project target depends on @llama_cpp, which tools/setup.sh unpacks for Bazel."""
        label = canonical(label)
        if label.startswith("@llama_cpp"):
            return True
        if label.startswith("@") or label not in self.rules:
            return False
        return any(self.needs_llama_cpp(d) for d in self.rules[label][1].get("deps", []))

    def emit_cc(self, label, kind, a, supported_genrules):
        if self.needs_llama_cpp(label):
            self.skipped.append(f"{label}: it links llama.cpp's npm libraries (@llama_cpp)")
            return
        name = target_name(label)
        targets, benchmark = self.deps_of(a)
        links = list(a.get("linkopts", []))
        defines = list(a.get("defines", []))
        srcs = [s for s in self.sources(a) if s.endswith((".cc", ".h", ".hpp", ".inc"))]
        copts = a.get("copts", [])
        for d in a.get("data", []):
            d = canonical(d)
            if not d.startswith("@") and d in self.rules and self.rules[d][0] == "genrule":
                self.skipped.append(f"{label}: its data comes from the genrule {d}")
                return
        for s in a.get("srcs", []):
            s = canonical(s)
            if (not is_source(s, self.rules) or s in self.generated_files) and s not in supported_genrules:
                self.skipped.append(f"{label}: its sources come from a genrule")
                return
        guard = []
        if benchmark:
            guard = ["if(LLAMA_MOE_BUILD_BENCHMARKS)", "endif()"]
        elif kind == "cc_test" or a.get("testonly") == "1":
            guard = ["if(LLAMA_MOE_BUILD_TESTS)", "endif()"]
        body = []
        compiled = [s for s in srcs if s.endswith(".cc")]
        if kind == "cc_library":
            if compiled:
                body.append(f"add_library({name} STATIC{cmake_list(srcs)})")
                scope = "PUBLIC"
            else:
                body.append(f"add_library({name} INTERFACE)")
                scope = "INTERFACE"
        else:
            body.append(f"add_executable({name}{cmake_list(srcs)})")
            exe = source_path(label).split("/")[-1]
            body.append(f"set_target_properties({name} PROPERTIES OUTPUT_NAME {exe} "
                        f"RUNTIME_OUTPUT_DIRECTORY ${{CMAKE_BINARY_DIR}}/bin/{os.path.dirname(source_path(label))})")
            scope = "PRIVATE"
        if compiled and copts:
            body.append(f"target_compile_options({name} PRIVATE {' '.join(copts)})")
        if defines:
            body.append(f"target_compile_definitions({name} {scope} {' '.join(sorted(set(defines)))})")
        if targets or links:
            body.append(f"target_link_libraries({name} {scope}{cmake_list(targets + links)})")
        if kind == "cc_test":
            tmp = "${CMAKE_BINARY_DIR}/test_tmp/" + name
            body.append(
                f"add_test(NAME {canonical(label)} COMMAND ${{CMAKE_COMMAND}} -E env TEST_TMPDIR={tmp} "
                f"TEST_SRCDIR=${{LM_RUNFILES}} ${{CMAKE_COMMAND}} -P ${{LM_RUN_TEST}} {tmp} $<TARGET_FILE:{name}> "
                f"WORKING_DIRECTORY ${{CMAKE_SOURCE_DIR}})")
            if "@npm" in " ".join(a.get("data", [])):
                body.append(f"set_tests_properties({canonical(label)} PROPERTIES LABELS npm)")
        if guard:
            body = [guard[0]] + ["  " + l for l in body] + [guard[1]]
        self.lines.append("\n" + "\n".join(body) + "\n")

    def run(self):
        supported = set()
        for label, (kind, a) in sorted(self.rules.items()):
            if label.startswith("@"):
                continue
            if kind == "genrule":
                if self.emit_genrule(label, a):
                    supported.update(canonical(o) for o in a.get("outs", []))
                    supported.add(label)
        for label, (kind, a) in sorted(self.rules.items()):
            if label.startswith("@"):
                continue
            if kind == "cc_proto_library":
                self.emit_proto(label, a)
            elif kind in ("cc_library", "cc_binary", "cc_test"):
                self.emit_cc(label, kind, a, supported)
        head = HEADER
        if self.skipped:
            head += "\n# Not built here (Bazel only):\n" + "".join(f"#   {s}\n" for s in self.skipped)
        # The system libraries first: their INTERFACE targets carry the link flags once.
        return head + "".join(self.external_lines) + "".join(self.lines)


HEADER = """\
# Generated by tools/gen_cmake.py from the Bazel BUILD files; do not edit (CI checks it is current).
#
# The CMake build is for machines with LibTorch (a PyTorch wheel's `torch` folder, or libtorch)
# and no Bazel:
#   cmake -S . -B build -G Ninja -DCMAKE_PREFIX_PATH=$(python3 -c 'import torch;print(torch.utils.cmake_prefix_path)')
#   cmake --build build && (cd build && ctest)
# LLAMA_MOE_DEPS_PREFIX names a folder holding Abseil, protobuf (with protoc), GoogleTest, Google
# Benchmark, nlohmann_json, PCRE2 and Gloo headers where they are not installed (Debian packages
# unpacked with `dpkg -x`: tools/gpu_check.sh does this).
cmake_minimum_required(VERSION 3.18)
project(llama_moe_cc LANGUAGES CXX)

set(CMAKE_CXX_STANDARD 17)
set(CMAKE_CXX_STANDARD_REQUIRED ON)
if(NOT CMAKE_BUILD_TYPE)
  set(CMAKE_BUILD_TYPE Release)
endif()
option(LLAMA_MOE_BUILD_TESTS "Build the GoogleTest targets and register them with ctest" ON)
option(LLAMA_MOE_BUILD_BENCHMARKS "Build the Google Benchmark targets" OFF)
set(LLAMA_MOE_DEPS_PREFIX "" CACHE PATH "A prefix holding the non-LibTorch dependencies")

find_package(Torch REQUIRED)
find_package(Python3 REQUIRED COMPONENTS Interpreter)
if(LLAMA_MOE_DEPS_PREFIX)
  include_directories(SYSTEM ${LLAMA_MOE_DEPS_PREFIX}/usr/include)
  link_directories(${LLAMA_MOE_DEPS_PREFIX}/usr/lib/x86_64-linux-gnu)
  set(CMAKE_BUILD_RPATH ${LLAMA_MOE_DEPS_PREFIX}/usr/lib/x86_64-linux-gnu)
  find_program(LM_PROTOC protoc HINTS ${LLAMA_MOE_DEPS_PREFIX}/usr/bin NO_DEFAULT_PATH)
endif()
find_program(LM_PROTOC protoc REQUIRED)
# TORCH_CXX_FLAGS carries the C++ ABI LibTorch was built with; Debian's Abseil, protobuf and
# GoogleTest use the new one.
if(TORCH_CXX_FLAGS MATCHES "_GLIBCXX_USE_CXX11_ABI=0")
  message(FATAL_ERROR "LibTorch at ${TORCH_INSTALL_PREFIX} is built with the old C++ ABI "
    "(_GLIBCXX_USE_CXX11_ABI=0, as PyTorch wheels before 2.7 are); Abseil, protobuf and GoogleTest "
    "use the new one. Use a LibTorch built with the cxx11 ABI (a wheel >= 2.7, or the cxx11-ABI libtorch zip).")
endif()
set(CMAKE_CXX_FLAGS "${CMAKE_CXX_FLAGS} ${TORCH_CXX_FLAGS}")
# The libraries of a CUDA LibTorch: the CUDA branches and the NCCL communicator are compiled in.
if(EXISTS ${TORCH_INSTALL_PREFIX}/lib/libtorch_cuda.so)
  add_compile_definitions(LLAMA_MOE_WITH_CUDA USE_C10D_NCCL)
  find_package(CUDAToolkit)
  if(CUDAToolkit_FOUND)
    include_directories(SYSTEM ${CUDAToolkit_INCLUDE_DIRS})
  endif()
endif()

set(LM_GEN ${CMAKE_BINARY_DIR}/gen)
file(MAKE_DIRECTORY ${LM_GEN})
include_directories(${CMAKE_SOURCE_DIR} ${LM_GEN})
# Tests find data through TEST_SRCDIR as under Bazel: <runfiles>/llama_moe_cc is this tree and
# <runfiles>/npm the npm packages tools/setup.sh installs.
set(LM_RUNFILES ${CMAKE_BINARY_DIR}/runfiles)
file(MAKE_DIRECTORY ${LM_RUNFILES})
file(CREATE_LINK ${CMAKE_SOURCE_DIR} ${LM_RUNFILES}/llama_moe_cc SYMBOLIC)
file(CREATE_LINK ${CMAKE_SOURCE_DIR}/tools/npm/node_modules ${LM_RUNFILES}/npm SYMBOLIC)
# Each test starts with a fresh, empty TEST_TMPDIR, as under Bazel.
set(LM_RUN_TEST ${CMAKE_BINARY_DIR}/run_test.cmake)
file(WRITE ${LM_RUN_TEST} [=[
file(REMOVE_RECURSE ${CMAKE_ARGV3})
file(MAKE_DIRECTORY ${CMAKE_ARGV3})
execute_process(COMMAND ${CMAKE_ARGV4} RESULT_VARIABLE rc)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "exit status ${rc}")
endif()
]=])
if(LLAMA_MOE_BUILD_TESTS)
  enable_testing()
endif()
"""


def main():
    text = Generator(query()).run()
    if "--check" in sys.argv[1:]:
        current = open(OUT, encoding="utf-8").read() if os.path.exists(OUT) else ""
        if current != text:
            print("CMakeLists.txt is out of date with the BUILD files: run tools/gen_cmake.py", file=sys.stderr)
            return 1
        return 0
    with open(OUT + ".tmp", "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(OUT + ".tmp", OUT)
    return 0


if __name__ == "__main__":
    sys.exit(main())
