#!/usr/bin/env bash
# One command that proves the GPU wheels on a machine with an NVIDIA GPU and no network:
#
#   tools/gpu_check.sh                 # build, install privately, report, test, bench, memcheck
#   tools/gpu_check.sh --rehearse      # the same setup path against the cpu wheel, no GPU needed
#   tools/gpu_check.sh --help          # every option (tools/gpu_check.py)
#
# Results go to $OUT when it is set, else gpu-check-results/. Without a GPU (and without
# --rehearse) it stops at once with one line and exit status 3: nothing was checked.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

python="${BNB_GPU_CHECK_PYTHON:-python3}"
rehearse="${BNB_GPU_CHECK_REHEARSE:-0}"
for arg in "$@"; do
  [[ $arg == --rehearse ]] && rehearse=1
  [[ $arg == -h || $arg == --help ]] && exec "$python" tools/gpu_check.py --help
done

has_gpu() {
  compgen -G "/dev/nvidia[0-9]*" >/dev/null && return 0
  command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1
}

if [[ $rehearse != 1 ]] && ! has_gpu; then
  echo "gpu_check: no NVIDIA GPU on this machine (no /dev/nvidia<N>, no nvidia-smi -L); nothing was checked" \
    "(tools/gpu_check.sh --rehearse runs the CPU rehearsal)"
  exit 3
fi
exec "$python" tools/gpu_check.py "$@"
