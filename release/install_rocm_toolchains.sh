#!/usr/bin/env bash
# before-all of release/cibuildwheel-rocm.toml on manylinux_2_28 (AlmaLinux 8): the HIP compiler,
# headers and runtime of every ROCm version in BNB_ROCM_VERSIONS (default "6.4.3 7.0.2"), side by
# side in /opt/rocm-<version>, from AMD's RHEL 8 repositories (versioned package names install in
# parallel). Only what compiling needs: hipcc, the HIP headers/runtime, clang and the device libraries.
set -euo pipefail
versions=${BNB_ROCM_VERSIONS:-6.4.3 7.0.2}
for v in $versions; do
  cat > "/etc/yum.repos.d/rocm-$v.repo" <<REPO
[rocm-$v]
name=ROCm $v
baseurl=https://repo.radeon.com/rocm/rhel8/$v/main
enabled=1
gpgcheck=1
gpgkey=https://repo.radeon.com/rocm/rocm.gpg.key
REPO
  dnf install -y "hipcc$v" "hip-devel$v" "hip-runtime-amd$v" "rocm-llvm$v" "rocm-device-libs$v" "rocm-core$v"
  test -x "/opt/rocm-$v/bin/hipcc" || { echo "error: /opt/rocm-$v/bin/hipcc missing after install" >&2; exit 1; }
done
