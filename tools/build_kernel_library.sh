#!/usr/bin/env bash
# Build and install a platform's kernel library once (C-only build, no Python), so every Python
# version's wheel build links it instead of compiling it again (cibuildwheel's before-all):
#
#   tools/build_kernel_library.sh platforms/cpu /tmp/bnb-kernel
#   SKBUILD_CMAKE_DEFINE=BNB_KERNEL_LIBRARY_DIR=/tmp/bnb-kernel pip wheel platforms/cpu
#
# Extra CMake arguments come from BNB_KERNEL_CMAKE_ARGS (e.g. -DCMAKE_CUDA_ARCHITECTURES=...);
# CMAKE_OSX_ARCHITECTURES is honoured by CMake itself.
set -euo pipefail
src=${1:?usage: build_kernel_library.sh <platform folder> <install prefix>}
prefix=${2:?usage: build_kernel_library.sh <platform folder> <install prefix>}
build=${BNB_KERNEL_BUILD_DIR:-$(mktemp -d)/build}
if ! command -v cmake >/dev/null; then
  python3 -m pip install cmake ninja
fi
# shellcheck disable=SC2086  # BNB_KERNEL_CMAKE_ARGS is a list of arguments
cmake -S "$src" -B "$build" -DCMAKE_BUILD_TYPE=Release -DBNB_BUILD_PYTHON=OFF ${BNB_KERNEL_CMAKE_ARGS:-}
cmake --build "$build" --config Release --parallel
ctest --test-dir "$build" -C Release --output-on-failure
cmake --install "$build" --config Release --prefix "$prefix" --strip
