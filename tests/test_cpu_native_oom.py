"""A native allocation failure in bitsandbytes-cpu is a Python MemoryError carrying the library's
message (status BNB_ERR_OUT_OF_MEMORY), never a C++ exception across the C ABI. The AVX2 and
AVX-512 gemm_4bit keep a per-thread scratch copy of A (as large as A in f32); a child process
with an address-space limit just above its usage makes growing that buffer fail."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from conftest import served_by_cpu_wheel

bitsandbytes_cpu = pytest.importorskip("bitsandbytes_cpu")

ISAS = [i for i in bitsandbytes_cpu.build_info().get("isa_usable", []) if i in ("avx2", "avx512")]
if not ISAS or not sys.platform.startswith("linux"):
    pytest.skip("the scratch buffer is the AVX2/AVX-512 gemm_4bit's (and the limit Linux's)", allow_module_level=True)

CHILD = textwrap.dedent(
    """
    import resource, torch, bitsandbytes, bitsandbytes_cpu
    from bitsandbytes.backends.reference import KERNELS as R
    import sys
    bitsandbytes_cpu.set_isa(sys.argv[1])
    torch.set_num_threads(1)
    n, k, m = 16, 1 << 21, 24
    A = torch.randn(m, k)  # 200 MB f32; the scratch copy would need as much again
    packed, absmax = R["quantize_4bit"](torch.randn(n, 256).repeat(1, k // 256), 64, "nf4", torch.uint8)
    small = torch.ops.bitsandbytes.gemm_4bit(A[:2], packed, [n, k], absmax, 64, "nf4")
    vm = int(open("/proc/self/statm").read().split()[0]) * resource.getpagesize()
    resource.setrlimit(resource.RLIMIT_AS, (vm + (64 << 20), resource.RLIM_INFINITY))
    try:
        torch.ops.bitsandbytes.gemm_4bit(A, packed, [n, k], absmax, 64, "nf4")
        print("NO-ERROR")
    except MemoryError as err:
        print("MemoryError:", err)
    resource.setrlimit(resource.RLIMIT_AS, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    again = torch.ops.bitsandbytes.gemm_4bit(A[:2], packed, [n, k], absmax, 64, "nf4")
    print("recovered:", torch.equal(again, small))
    """
)


@served_by_cpu_wheel
@pytest.mark.parametrize("isa", ISAS)
def test_scratch_allocation_failure_is_a_memory_error(isa):
    proc = subprocess.run([sys.executable, "-c", CHILD, isa], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert lines[0].startswith("MemoryError:") and "cannot allocate" in lines[0], proc.stdout
    assert "gemm_4bit" in lines[0], proc.stdout
    assert lines[1] == "recovered: True", proc.stdout
