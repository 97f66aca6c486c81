# Sourced by the project's scripts: environment that makes numeric code run at full speed.
# OpenBLAS 0.3.21 misdetects these cores (Prescott kernels, ~4x slower float32 matmul) unless told
# the core type, and it reads the variable when it loads, so it must be set before the process
# starts. Derived from the CPU flags; an explicit value from the caller wins.
if [ -z "${OPENBLAS_CORETYPE:-}" ]; then
  if grep -qw avx512f /proc/cpuinfo 2>/dev/null; then
    export OPENBLAS_CORETYPE=SkylakeX
  elif grep -qw avx2 /proc/cpuinfo 2>/dev/null; then
    export OPENBLAS_CORETYPE=Haswell
  fi
fi
