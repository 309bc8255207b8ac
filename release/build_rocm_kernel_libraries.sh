#!/usr/bin/env bash
# Compile libbitsandbytes_rocm<major>.so once per ROCm version in BNB_ROCM_VERSIONS (C-only builds,
# tools/build_kernel_library.sh) into <prefix>/<major>, for every Python's wheel build to package
# (BNB_KERNEL_LIBRARY_DIRS). BNB_ROCM_ARCHS narrows the gfx targets (default: the CMake list,
# filtered to what each ROCm's compiler knows).
set -euo pipefail
src=${1:?usage: build_rocm_kernel_libraries.sh <platforms/rocm> <prefix>}
prefix=${2:?usage: build_rocm_kernel_libraries.sh <platforms/rocm> <prefix>}
here=$(cd "$(dirname "$0")/.." && pwd)
for v in ${BNB_ROCM_VERSIONS:-6.4.3 7.0.2}; do
  major=${v%%.*}
  BNB_KERNEL_BUILD_DIR=$(mktemp -d)/build \
    BNB_KERNEL_CMAKE_ARGS="-DBNB_HIPCC=/opt/rocm-$v/bin/hipcc -DBNB_ROCM_ARCHS=${BNB_ROCM_ARCHS:-}" \
    HIP_PLATFORM=amd bash "$here/tools/build_kernel_library.sh" "$src" "$prefix/$major"
done
