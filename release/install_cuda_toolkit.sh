#!/usr/bin/env bash
# cibuildwheel before-all (manylinux_2_28 = RHEL 8 family): install nvcc, the CUDA runtime and
# cuBLAS development files of CUDA $BNB_CUDA_MAJOR (12 -> 12.8, 13 -> 13.0), and point
# /usr/local/cuda at them. Nothing from here ends up in a wheel (the repair step excludes them).
set -euo pipefail
major=${BNB_CUDA_MAJOR:-}
case "$major" in
  12) ver=12-8 ;;
  13) ver=13-0 ;;
  *) echo "error: BNB_CUDA_MAJOR='$major'; set it to 12 or 13 (it picks the toolkit and the distribution name)" >&2; exit 2 ;;
esac
case "$(uname -m)" in
  x86_64) repo=x86_64 ;;
  aarch64) repo=sbsa ;;
  *) echo "error: no CUDA repository for $(uname -m)" >&2; exit 2 ;;
esac
dnf install -y dnf-plugins-core
dnf config-manager --add-repo "https://developer.download.nvidia.com/compute/cuda/repos/rhel8/${repo}/cuda-rhel8.repo"
dnf install -y "cuda-nvcc-${ver}" "cuda-cudart-devel-${ver}" "libcublas-devel-${ver}"
ln -sfn "/usr/local/cuda-${ver/-/.}" /usr/local/cuda
/usr/local/cuda/bin/nvcc --version
