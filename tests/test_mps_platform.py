"""The MPS wheel on a machine without an Apple GPU: its packaging, its Python glue and its host harness.

The kernels themselves run through the conformance suite (``BNB_TEST_HOST_KERNELS=mps``, the
``mps[host]`` implementation). Here: the glue's launches through ``torch.mps.compile_shader``
(a stand-in that feeds the same source to the host harness), what the harness refuses (a wrong
binding, a barrier or shuffle in divergent control flow), the fallback when the source does not
compile, the shipped source against the repository's files, and the optimizer scalars against
the C++ make_optimizer_consts. Also what the harness cannot show by running the kernels: the word
alignment of the buffers the glue binds, the fused gemv's rounding of the weight (hidden by the
matmul tolerances), and, in the source, compat.h's Metal branch.
Nothing here needs MPS; the whole module needs the wheel.
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import pathlib
import re
import subprocess
import sys
import time
import warnings

import pytest
import torch

from bitsandbytes.backends.reference import KERNELS as REF
from bitsandbytes.backends.reference.codebooks import dynamic_map, four_bit_decode_table
from conftest import host_compiler, host_sanitizer, make_old, python_in_a_process

mps = pytest.importorskip("bitsandbytes_mps")
from bitsandbytes_mps import _host  # noqa: E402
from bitsandbytes_mps.kernels import MetalKernels  # noqa: E402
from bitsandbytes_mps.optim import OPTIMIZER_IDS, optimizer_consts  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parent.parent
NEEDS_CXX = pytest.mark.skipif(host_compiler() is None, reason="no C++ compiler")


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.view({1: torch.uint8, 2: torch.int16, 4: torch.int32}[t.element_size()])


# ---- the shipped source -------------------------------------------------------------------------


def test_shipped_source_is_the_repository_files_joined():
    """The installed wheel's bnb_mps.metal is what concat_metal.py makes of this checkout (a stale
    wheel, or a shared header changed without a rebuild, fails here)."""
    spec = importlib.util.spec_from_file_location(
        "concat_metal", ROOT / "platforms" / "mps" / "src" / "concat_metal.py"
    )
    concat = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(concat)
    assert mps.metal_source() == concat.concat(ROOT / "shared", ROOT / "platforms" / "mps")


def test_shipped_source_includes_only_metal_stdlib_and_the_host_header():
    includes = re.findall(r"^\s*#\s*include\s*(\S+)", mps.metal_source(), re.M)
    assert sorted(set(includes)) == ['"metal_host.h"', "<metal_stdlib>"]
    # The shared headers' per-element math is in it, from the same files the CPU and CUDA builds use.
    for name in ("numeric.h", "fp_ops.h", "codebooks.h", "optimizer_math.h"):
        assert f'#line 1 "shared/include/bnb/{name}"' in mps.metal_source()


def test_metal_optimizer_ids_equal_the_c_abi():
    """compat.h repeats bnb_c_api.h's optimizer ids for Metal, which cannot include the C ABI."""

    def ids(text: str) -> dict[str, int]:
        return {k: int(v) for k, v in re.findall(r"(BNB_OPTIM_[A-Z]+)\s*=\s*(\d+)", text)}

    metal = ids((ROOT / "platforms" / "mps" / "src" / "metal" / "compat.h").read_text())
    abi = ids((ROOT / "shared" / "include" / "bnb" / "bnb_c_api.h").read_text())
    assert metal == abi and len(abi) == 8


def test_metal_side_of_the_portability_header_keeps_ieee_math():
    """compat.h's Metal branch, which no host run compiles: safe math with no a * b + c fusion, and
    sqrtf as the correctly rounded precise::sqrt (metal::sqrt is the fast approximation), so that
    the GPU's numbers are the shared headers' bit for bit."""
    text = (ROOT / "platforms" / "mps" / "src" / "metal" / "compat.h").read_text()
    metal = text[text.index("#if defined(__METAL_VERSION__)") : text.index("#else")]
    assert "#pragma METAL fp math_mode(safe)" in metal
    assert "#pragma METAL fp contract(off)" in metal
    assert re.search(r"inline float sqrtf\(float x\) \{ return precise::sqrt\(x\); \}", metal)
    assert "fast::" not in metal and "metal::sqrt" not in metal


def test_wheel_metadata_and_runtime_check():
    assert mps.__version__ == (ROOT / "VERSION").read_text().strip()
    assert mps.build_info()["platform"] == "mps"

    class Runtime:
        torch_version = "2.5.1"
        devices = {"cpu": "CPU", "mps": "Apple MPS"}

    assert "torch 2.5.1 is older" in mps.check_runtime(Runtime)
    Runtime.torch_version = "2.13.0"
    assert mps.check_runtime(Runtime) is None
    Runtime.devices = {"cpu": "CPU"}
    assert "no MPS device" in mps.check_runtime(Runtime)


def test_register_binds_the_kernel_ops_and_compiles_nothing(monkeypatch):
    def refuse(source):
        raise AssertionError("register() must not compile the Metal source")

    monkeypatch.setattr(torch.mps, "compile_shader", refuse, raising=False)
    got = {}
    mps.register(lambda op, fn: got.setdefault(op, fn))
    assert tuple(got) == mps.KERNEL_OPS


# ---- the glue through a stand-in torch.mps.compile_shader ------------------------------------


@pytest.fixture
def via_compile_shader(monkeypatch):
    """MetalKernels on CPU tensors that compiles through ``torch.mps.compile_shader``, replaced
    by the host harness: the launch path register() uses, argument packing included."""
    sources = []

    def compile_shader(source: str):
        sources.append(source)
        return _host.host_library(source)

    monkeypatch.setattr(torch.mps, "compile_shader", compile_shader, raising=False)
    kernels = MetalKernels("cpu", mps._mps_compile, mps.metal_source)
    yield kernels
    assert sources == [mps.metal_source()]  # the shipped text, compiled once


@NEEDS_CXX
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_glue_through_compile_shader(via_compile_shader, dtype):
    k = via_compile_shader
    g = torch.Generator().manual_seed(0)
    A = torch.randn(3, 333, generator=g).to(dtype)
    for quant_type in ("nf4", "fp4"):
        packed, absmax = k.quantize_4bit(A, 64, quant_type, torch.uint8)
        rp, ra = REF["quantize_4bit"](A, 64, quant_type, torch.uint8)
        assert torch.equal(packed, rp) and torch.equal(bits(absmax), bits(ra))
        out = torch.empty(3, 333, dtype=dtype)
        k.dequantize_4bit_out(rp, ra, 64, quant_type, [3, 333], dtype, out)
        assert torch.equal(bits(out), bits(REF["dequantize_4bit"](rp, ra, 64, quant_type, [3, 333], dtype)))
    code = dynamic_map(True)
    q, a = k.quantize_blockwise(A, code, 100)
    rq, ra = REF["quantize_blockwise"](A, code, 100)
    assert torch.equal(q, rq) and torch.equal(bits(a), bits(ra))
    deq = k.dequantize_blockwise(rq, ra, code, 100, dtype)
    assert torch.equal(bits(deq), bits(REF["dequantize_blockwise"](rq, ra, code, 100, dtype)))
    W = torch.randn(40, 96, generator=g)
    wp, wa = REF["quantize_4bit"](W, 32, "nf4", torch.uint8)
    table = four_bit_decode_table("nf4")
    for m in range(1, 9):  # every row count of the fused kernel
        X = torch.randn(m, 96, generator=g).to(dtype)
        got = k.gemv_4bit(X, wp, [40, 96], wa, table, 32)
        want = REF["gemv_4bit"](X, wp, [40, 96], wa, table, 32)
        tol = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}[dtype]
        torch.testing.assert_close(got.float(), want.float(), rtol=tol, atol=tol * 10)


@NEEDS_CXX
@pytest.mark.parametrize("name", ["adam", "lamb", "lars", "ademamix"])
def test_optimizers_through_compile_shader(via_compile_shader, name):
    k = via_compile_shader
    g0 = torch.Generator().manual_seed(1)
    n = 1000
    p, grad = torch.randn(n, generator=g0), torch.randn(n, generator=g0)
    two = name in ("adam", "lamb", "ademamix")
    rows = 2 if name == "ademamix" else 1
    s1, s2 = torch.rand(rows * n, generator=g0), torch.rand(n, generator=g0)
    clip = 0.05 if name in ("lamb", "lars") else 0.0  # small enough that the trust-ratio clip acts
    got, want = [t.clone() for t in (p, s1, s2)], [t.clone() for t in (p, s1, s2)]
    u_got, u_want = torch.zeros(1), torch.zeros(1)
    args = (0.9, 0.99, 0.999, 5.0, 1e-8, 0.01, 3, 1e-2, 1.0, False)
    for impl, (pp, a, b), u in ((k.optimizer_update_32bit, got, u_got), (REF["optimizer_update_32bit"], want, u_want)):
        impl(name, grad, pp, a, b if two else None, u, clip, float(p.norm()), *args)
    torch.testing.assert_close(got[0], want[0], rtol=1e-6, atol=1e-7)
    assert torch.equal(got[1], want[1]) and torch.equal(got[2], want[2])  # states bit for bit
    if clip:
        assert float(u_want) > clip * float(p.norm())  # the clipped learning rate was used
        torch.testing.assert_close(u_got, u_want, rtol=1e-5, atol=0)


# ---- the glue's launches: alignment, rounding the conformance tolerances do not see -------------


class _Recording:
    """A compiled library that records each kernel call's name and arguments, then runs it."""

    def __init__(self, lib, calls: list) -> None:
        self._lib, self._calls = lib, calls

    def __getattr__(self, name: str):
        kernel = getattr(self._lib, name)

        def run(*args, **kwargs):
            self._calls.append((name, args))
            return kernel(*args, **kwargs)

        return run


@NEEDS_CXX
def test_packed_codes_read_as_words_are_word_aligned():
    """The 4-bit dequantize and gemv kernels read packed codes as 32-bit words, which must be
    4-byte aligned on the GPU (the host's CPU reads a misaligned word without complaint). For a
    packed view at any byte offset the glue binds an aligned buffer or takes the per-byte path,
    and the results stay the reference's."""
    calls: list = []
    k = MetalKernels("cpu", lambda source: _Recording(_host.host_library(source), calls), mps.metal_source)
    g = torch.Generator().manual_seed(41)
    packed, absmax = REF["quantize_4bit"](torch.randn(16, 64, generator=g), 64, "nf4", torch.uint8)
    table = four_bit_decode_table("nf4")
    A = torch.randn(2, 64, generator=g)
    want_deq = REF["dequantize_4bit"](packed, absmax, 64, "nf4", [16, 64], torch.float32)
    want_mm = REF["gemv_4bit"](A, packed, [16, 64], absmax, table, 64)
    for offset in range(4):
        buf = torch.zeros(packed.numel() + offset, dtype=torch.uint8)
        buf[offset:] = packed.reshape(-1)
        view = buf[offset:]
        assert torch.equal(k.dequantize_4bit(view, absmax, 64, "nf4", [16, 64], torch.float32), want_deq)
        torch.testing.assert_close(k.gemv_4bit(A, view, [16, 64], absmax, table, 64), want_mm, rtol=1e-5, atol=1e-5)
    deq = [args for name, args in calls if name.startswith("bnb_dequantize_4bit_")]
    assert len(deq) == 4 and deq[0][6] == 1  # the aligned view takes the 32-bit-word path
    assert all(args[0].data_ptr() % 4 == 0 for args in deq if args[6]), [a[0].data_ptr() % 4 for a in deq]
    gemv = [args for name, args in calls if name.startswith("bnb_gemv_4bit_")]
    assert len(gemv) == 4 and all(args[1].data_ptr() % 4 == 0 for args in gemv)


@NEEDS_CXX
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_gemv_multiplies_by_the_weight_rounded_to_the_input_dtype(dtype):
    """The fused gemv multiplies A by the dequantized weight rounded to A's dtype, as the
    reference (and a dequantize-then-matmul) does. With one nonzero per row of A each output is a
    single exact product, so the kernel's result must be the reference's bit for bit."""
    K = mps.host_kernels()
    g = torch.Generator().manual_seed(42)
    table = four_bit_decode_table("nf4")
    for N, k in ((12, 64), (12, 36)):  # the 32-bit-word path (K % 8 == 0) and the per-element path
        packed, absmax = REF["quantize_4bit"](torch.randn(N, k, generator=g) * 3, 32, "nf4", torch.uint8)
        A = torch.zeros(5, k)
        for r in range(5):
            A[r, (7 * r + 3) % k] = torch.randn(1, generator=g) + 2.0
        A = A.to(dtype)
        got = K["gemv_4bit"](A, packed, [N, k], absmax, table, 32)
        W = REF["dequantize_4bit"](packed, absmax, 32, "nf4", [N, k], dtype)
        exact = (A.double() @ W.double().T).to(dtype)
        assert torch.equal(bits(got), bits(exact)), (N, k)
        assert torch.equal(bits(got), bits(REF["gemv_4bit"](A, packed, [N, k], absmax, table, 32))), (N, k)
        # The weight's rounding shows in these outputs: the unrounded weight gives other bits.
        unrounded = A.double() @ REF["dequantize_4bit"](packed, absmax, 32, "nf4", [N, k], torch.float32).double().T
        assert not torch.equal(bits(got), bits(unrounded.to(dtype))), (N, k)


@NEEDS_CXX
def test_host_build_marks_its_build_used_and_prunes_stale_ones():
    """Every build (here a hit in the session's cache) marks its library used and deletes the
    builds of the cache unused for 14 days (shared/host/simt_build.py's prune)."""
    lib, _ = _host.build(mps.metal_source())
    stale, foreign = lib.parent.parent / "0123456789abcdef0123", lib.parent.parent / "notes-0123"
    for path in (stale, foreign):
        path.mkdir(exist_ok=True)
    for path in (stale, foreign, lib.parent):
        make_old(path, 30)
    assert _host.build(mps.metal_source())[0] == lib
    assert time.time() - lib.parent.stat().st_mtime < 600
    assert lib.exists() and not stale.exists() and foreign.exists()
    foreign.rmdir()


# ---- what the harness refuses ---------------------------------------------------------------


@NEEDS_CXX
def test_bindings_are_checked_like_the_gpu_would_read_them():
    """A wrong binding reads garbage on the GPU; the host harness refuses it by name."""
    lib = _host.host_library(mps.metal_source())
    packed, absmax = torch.zeros(8, dtype=torch.uint8), torch.ones(1)
    out16, out32 = torch.empty(16, dtype=torch.float16), torch.empty(16)
    kern = lib.bnb_dequantize_4bit_f16
    kern(packed, absmax, out16, 16, 6, 1, 0, threads=256, group_size=256)  # the right binding
    with pytest.raises(TypeError, match=r"argument 2 \(out: half\*\).*float32"):
        kern(packed, absmax, out32, 16, 6, 1, 0, threads=256, group_size=256)
    with pytest.raises(TypeError, match=r"argument 4 \(shift.*a Python float binds `constant float&`"):
        kern(packed, absmax, out16, 16, 6.0, 1, 0, threads=256, group_size=256)
    with pytest.raises(TypeError, match="6 arguments given, the kernel has 7 buffers"):
        kern(packed, absmax, out16, 16, 6, 1, threads=256, group_size=256)
    with pytest.raises(TypeError, match="one-dimensional"):
        kern(packed, absmax, out16, 16, 6, 1, 0, threads=(16, 16), group_size=(16, 16))
    with pytest.raises(TypeError, match=r"a list of int binds long\[\], not float\[\]"):
        lib.bnb_optimizer_32bit_f32(*[out32] * 6, [1, 2], 16, 0, threads=256, group_size=256)


DIVERGENT = r"""
kernel void early_return(device float* x [[buffer(0)]], uint lid [[thread_position_in_threadgroup]]) {
  threadgroup float t[64];
  if (lid == 3) return;
  t[lid] = 1.0f;
  BNB_BARRIER();
  x[lid] = t[63 - lid];
}
kernel void divergent_shuffle(device float* x [[buffer(0)]], uint lid [[thread_position_in_threadgroup]]) {
  if (lid % 2 == 0) x[lid] = BNB_SHUFFLE_XOR(x[lid], 1);
}
kernel void shared_memory(device float* x [[buffer(0)]], uint lid [[thread_position_in_threadgroup]],
                          uint n [[threads_per_threadgroup]]) {
  threadgroup float t[64];
  t[lid] = x[lid];
  BNB_BARRIER();
  x[lid] = t[n - 1 - lid] + bnb_mps::simd_group_sum(1.0f);
}
kernel void lost_update(device float* x [[buffer(0)]], uint lid [[thread_position_in_threadgroup]],
                        uint group [[threadgroup_position_in_grid]]) {
  if (lid == 0) x[0] += float(group);  // a plain read-modify-write from every threadgroup
}
kernel void warp_run_ahead(device float* x [[buffer(0)]], uint lid [[thread_position_in_threadgroup]],
                           uint group [[threadgroup_position_in_grid]]) {
  threadgroup float t[64];
  t[lid] = 1.0f;
  BNB_BARRIER();
  const float seen = t[(lid + 32) % 64];
  const float passed = BNB_SHUFFLE_XOR(seen, 1);  // a point the SIMD group passes together
  t[lid] = 2.0f;  // no barrier since the other SIMD group's read
  x[64 * group + lid] = passed == seen ? seen : -1.0f;
}
kernel void two_reductions(device float* x [[buffer(0)]], constant long& sum [[buffer(1)]],
                           uint lid [[thread_position_in_threadgroup]], uint n [[threads_per_threadgroup]],
                           uint group [[threadgroup_position_in_grid]]) {
  threadgroup float scratch[32];
  const float v = x[n * group + lid], w = static_cast<float>(lid);
  const float first = sum ? bnb_mps::group_sum(v, scratch, lid, n) : bnb_mps::group_absmax(v, scratch, lid, n);
  const float second = sum ? bnb_mps::group_sum(w, scratch, lid, n) : bnb_mps::group_absmax(w, scratch, lid, n);
  x[n * group + lid] = lid < n / 2 ? first : second;
}
kernel void write_past_the_end(device float* x [[buffer(0)]], uint lid [[thread_position_in_threadgroup]]) {
  x[lid + 1] = 1.0f;  // the last thread writes one element past x
}
kernel void first_group_writes(device float* x [[buffer(0)]], uint lid [[thread_position_in_threadgroup]],
                               uint group [[threadgroup_position_in_grid]]) {
  threadgroup float t[32];
  if (group == 0) t[lid] = 1.0f;
  BNB_BARRIER();
  x[32 * group + lid] = t[lid];
}
"""


@NEEDS_CXX
def test_harness_refuses_barriers_and_shuffles_in_divergent_control_flow():
    lib = _host.HostShaderLibrary(mps.metal_source() + DIVERGENT)
    x = torch.arange(64, dtype=torch.float32)
    with pytest.raises(RuntimeError, match="returned while others wait at a barrier"):
        lib.early_return(x, threads=64, group_size=64)
    with pytest.raises(RuntimeError, match="different points"):
        lib.divergent_shuffle(x, threads=64, group_size=64)
    # The same constructs in uniform control flow run, threadgroup memory shared by the group.
    lib.shared_memory(x, threads=64, group_size=64)
    assert torch.equal(x, torch.arange(63, -1, -1, dtype=torch.float32) + 32)


@NEEDS_CXX
def test_simd_groups_run_ahead_of_each_other_between_barriers():
    """Between two barriers one SIMD group runs to the next barrier, through its shuffles, before
    the next starts: the last first in even threadgroups, the first in odd ones. A read of
    threadgroup memory that another SIMD group overwrites after a shuffle, with no barrier
    between, sees the overwrite in one group and not in the other."""
    lib = _host.HostShaderLibrary(mps.metal_source() + DIVERGENT)
    x = torch.zeros(128)
    lib.warp_run_ahead(x, threads=128, group_size=64)
    group0, group1 = x.view(2, 2, 32)
    assert (group0[0] == 2.0).all() and (group0[1] == 1.0).all()  # SIMD group 1 first: it overwrote
    assert (group1[0] == 1.0).all() and (group1[1] == 2.0).all()


@NEEDS_CXX
@pytest.mark.parametrize("reduction", ["absmax", "sum"])
def test_threadgroup_reductions_in_a_row_need_their_first_barrier(reduction):
    """group_absmax and group_sum fence `scratch` before writing it: a previous reduction's
    threads may still read it (the 8-bit optimizers requantize up to three states in a row).
    Without that barrier, two reductions in a row give a wrong result here: the harness runs a
    SIMD group ahead of the others, as a GPU may."""
    source = mps.metal_source()
    first = {
        "absmax": "  v = simd_group_absmax(v);\n  BNB_BARRIER();  // scratch may still be read by a previous reduction\n",
        "sum": "  v = simd_group_sum(v);\n  BNB_BARRIER();\n",
    }[reduction]
    assert source.count(first) == 1
    x = torch.randint(-3, 4, (256,), generator=torch.Generator().manual_seed(0)).float()  # exact sums
    x[100], x[172] = -7.5, 6.0  # each threadgroup's largest magnitude
    halves = x.view(2, 128)
    firsts = halves.abs().amax(1) if reduction == "absmax" else halves.sum(1)
    seconds = torch.full((2,), 127.0 if reduction == "absmax" else 127 * 128 / 2)
    want = torch.stack([firsts, seconds], 1).repeat_interleave(64, 1).reshape(-1)
    for src, correct in ((source, True), (source.replace(first, first.split("\n")[0] + "\n"), False)):
        out = x.clone()
        lib = _host.HostShaderLibrary(src + DIVERGENT)
        lib.two_reductions(out, int(reduction == "sum"), threads=256, group_size=128)
        assert torch.equal(out, want) == correct


@NEEDS_CXX
def test_threadgroup_memory_starts_each_group_undefined():
    """Threadgroup memory is not carried from one threadgroup or dispatch to the next: a read
    before any write in the group sees the harness's fill (NaN), not another group's values."""
    lib = _host.HostShaderLibrary(mps.metal_source() + DIVERGENT)
    x = torch.zeros(96)
    lib.first_group_writes(x, threads=96, group_size=32)
    assert torch.equal(x[:32], torch.ones(32))
    assert x[32:].isnan().all()
    lib.first_group_writes(x[32:], threads=64, group_size=32)  # a new dispatch: group 0 writes again
    assert torch.equal(x[32:64], torch.ones(32)) and x[64:].isnan().all()


NEEDS_ASAN = pytest.mark.skipif(
    host_sanitizer("BNB_MPS_HOST_SANITIZE") != "address", reason="the harness is built without ASan"
)


NEEDS_TSAN = pytest.mark.skipif(
    host_sanitizer("BNB_MPS_HOST_SANITIZE") != "thread", reason="the harness is built without TSan"
)


def _run_sanitized(code: str) -> str:
    """Runs ``code`` in a fresh Python (the sanitizer aborts the process) and returns its stderr."""
    done = python_in_a_process("import bitsandbytes_mps as mps; from bitsandbytes_mps import _host; " + code)
    assert done.returncode != 0, done.stdout
    return done.stderr


@NEEDS_CXX
@NEEDS_ASAN
def test_asan_stops_a_kernel_writing_past_a_tensor():
    """Built with AddressSanitizer (``nox -s tests-mps-host``), a kernel writing one element past
    the tensor torch allocated stops the run with ASan's report, which names the kernel."""
    err = _run_sanitized(
        "from test_mps_platform import DIVERGENT; "
        "_host.HostShaderLibrary(mps.metal_source() + DIVERGENT).write_past_the_end(torch.zeros(32), threads=32, "
        "group_size=32)"
    )
    assert "heap-buffer-overflow" in err and "write_past_the_end" in err, err[-3000:]


@NEEDS_CXX
@NEEDS_ASAN
def test_asan_stops_a_kernel_writing_past_a_threadgroup_array():
    """A threadgroup array is a function-local static, which ASan guards as a global (it guards no
    thread_local): dequantize_4bit filling its table of 16 for 17 threads stops the run, where a
    thread_local table let every test pass."""
    err = _run_sanitized(
        "src = mps.metal_source(); fill = 'if (lid < 16) table[lid] = bnb::decode_4bit(nf4, lid);'; "
        "assert src.count(fill) == 1; lib = _host.HostShaderLibrary(src.replace(fill, fill.replace('16', '17'))); "
        "u8 = torch.zeros(8, dtype=torch.uint8); "
        "lib.bnb_dequantize_4bit_f32(u8, torch.ones(1), torch.zeros(16), 16, 6, 1, 0, threads=256, group_size=256)"
    )
    assert "global-buffer-overflow" in err and "dequantize_4bit" in err, err[-3000:]


@NEEDS_CXX
@NEEDS_TSAN
def test_tsan_sees_a_lost_update_between_threadgroups():
    """Under ThreadSanitizer the threadgroups of a dispatch are unordered, as on a GPU: four
    threadgroups adding to one float with a plain `+=` is a reported data race, though a run of one
    group after another gets the sum right."""
    err = _run_sanitized(
        "from test_mps_platform import DIVERGENT; x = torch.zeros(1); "
        "_host.HostShaderLibrary(mps.metal_source() + DIVERGENT).lost_update(x, threads=128, group_size=32); "
        "print(x)"
    )
    assert "ThreadSanitizer: data race" in err and "lost_update" in err, err[-3000:]


def test_poisoned_follows_every_threadgroup_array_or_refuses():
    text = (
        "threadgroup float a[4];\n  threadgroup ushort b [2][3];  // two\nthreadgroup float* p;\n"
        "// a comment on threadgroup memory; and /* threadgroup float z; */ declare nothing\n"
    )
    out = _host.poisoned(text)
    assert "threadgroup float a[4]; ::bnb_simt::poison(a, sizeof(a));" in out
    assert "threadgroup ushort b [2][3]; ::bnb_simt::poison(b, sizeof(b));  // two" in out
    assert "threadgroup float* p;\n" in out  # a pointer is not group memory: nothing to fill
    assert out.count("::bnb_simt::poison(") == 2
    for text in (
        "threadgroup float c[4] = {0};",
        "threadgroup volatile float c[4];",
        "threadgroup vec<float, 4> c[8];",
        "threadgroup float c;",
        "threadgroup atomic_uint c = 0;",
    ):
        with pytest.raises(RuntimeError, match="1 threadgroup declarations it cannot follow"):
            _host.poisoned(text)
    shipped = mps.metal_source()
    assert _host.poisoned(shipped).count("::bnb_simt::poison(") == 10


# ---- a source that does not compile ---------------------------------------------------------


def test_a_compile_failure_warns_with_op_and_torch_version_and_the_reference_serves():
    def broken(source: str):
        raise SyntaxError("program_source:1:1: error: unknown type name 'bfloat'")

    k = MetalKernels("cpu", broken, mps.metal_source)
    A = torch.randn(300)
    with pytest.warns(RuntimeWarning, match=rf"\(quantize_4bit\) under torch {re.escape(torch.__version__)}.*bfloat"):
        packed, absmax = k.quantize_4bit(A, 64, "nf4", torch.uint8)
    rp, ra = REF["quantize_4bit"](A, 64, "nf4", torch.uint8)
    assert torch.equal(packed, rp) and torch.equal(absmax, ra)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once, not per call
        deq = k.dequantize_4bit(rp, ra, 64, "nf4", [300], torch.float16)
    assert torch.equal(deq, REF["dequantize_4bit"](rp, ra, 64, "nf4", [300], torch.float16))
    assert "SyntaxError" in k.compile_error


def test_bad_input_is_refused_before_any_compile():
    def refuse(source: str):
        raise AssertionError("compiled before the argument checks")

    k = MetalKernels("cpu", refuse, mps.metal_source)
    with pytest.raises(ValueError, match="blocksize"):
        k.quantize_4bit(torch.randn(64), 48, "nf4", torch.uint8)
    with pytest.raises(RuntimeError, match="must be on mps"):
        MetalKernels("mps", refuse, mps.metal_source).dequantize_blockwise(
            torch.zeros(4, dtype=torch.uint8), torch.ones(1), dynamic_map(True), 4, torch.float32
        )


# ---- optimizer scalars: Python against the C++ make_optimizer_consts -------------------------

PROBE = r"""
#include "bnb/optimizer_math.h"
extern "C" void consts(int opt, const bnb_optimizer_hparams* h, float* out) {
  const bnb::OptimizerConsts c = bnb::make_optimizer_consts(opt, *h);
  const float v[20] = {(float)c.optimizer, (float)c.first_step, (float)c.has_wd, (float)c.skip_zeros, c.beta1,
                       c.beta2, c.beta3, c.alpha, c.eps, c.wd, c.lr, c.one_minus_beta1, c.one_minus_beta2,
                       c.one_minus_beta3, c.c1, c.c2, c.eps_c2, c.c2_over_c1, c.c1_over_c2, c.decay};
  for (int i = 0; i < 20; ++i) out[i] = v[i];
}
"""


class Hparams(ctypes.Structure):
    _fields_ = [
        (k, ctypes.c_double)
        for k in ("beta1", "beta2", "beta3", "alpha", "eps", "weight_decay", "lr", "gnorm_scale", "max_unorm")
    ] + [("param_norm", ctypes.c_double), ("step", ctypes.c_int64), ("skip_zeros", ctypes.c_int32)]


@NEEDS_CXX
@pytest.mark.parametrize(
    "name, beta1, beta2, step, wd, lr, eps",
    [
        ("adam", 0.9, 0.999, 1, 0.0, 1e-3, 1e-8),
        ("adam", 0.9, 0.999, 12345, 0.01, 3e-4, 1e-6),
        ("ademamix", 0.95, 0.9999, 7, 0.1, 0.1, 1e-8),
        ("lion", 0.9, 0.99, 2, 1e-2, 1e-4, 0.0),
        ("adam", 1.0, 1.0, 3, 0.0, 1e-3, 1e-8),  # c1 = c2 = 0: inf and NaN, where Python would raise
        ("momentum", 0.0, 0.0, 1, 0.0, 0.5, 0.0),
        ("rmsprop", 1.1, 1.5, 40, 1e300, 1e300, 1e-8),  # values past f32 and sqrt of a negative
    ],
)
def test_optimizer_consts_equal_make_optimizer_consts(tmp_path, name, beta1, beta2, step, wd, lr, eps):
    cxx = host_compiler()
    (tmp_path / "probe.cpp").write_text(PROBE)
    lib = tmp_path / "probe.so"
    flags = ["-O2", "-std=c++17", "-ffp-contract=off", "-shared", "-fPIC", f"-I{ROOT / 'shared' / 'include'}"]
    subprocess.run([cxx, *flags, str(tmp_path / "probe.cpp"), "-o", str(lib)], check=True)
    probe = ctypes.CDLL(str(lib))
    h = Hparams(beta1, beta2, 0.9999, 5.0, eps, wd, lr, 1.0, 0.0, 0.0, step, 0)
    want = torch.empty(20)
    probe.consts(OPTIMIZER_IDS[name], ctypes.byref(h), ctypes.c_void_p(want.data_ptr()))
    got = torch.tensor(optimizer_consts(name, beta1, beta2, 0.9999, 5.0, eps, wd, lr, step, False, 1.0, 0.0, 0.0))
    assert torch.equal(bits(got[:20]), bits(want)) or _same_with_nans(got[:20], want)


def _same_with_nans(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal bit for bit except that any NaN equals any NaN (their sign bits are not the contract)."""
    both_nan = torch.isnan(a) & torch.isnan(b)
    return bool(torch.equal(torch.where(both_nan, 0, bits(a)), torch.where(both_nan, 0, bits(b))))


def test_host_harness_is_not_in_the_wheel_as_a_binary():
    """The harness module is built by the test session; the wheel ships sources only."""
    pkg = pathlib.Path(mps.__file__).parent
    assert not [p for p in pkg.rglob("*") if p.suffix in (".so", ".dylib", ".pyd", ".metallib")]


def test_release_gate_reports_skipped_with_the_reason_without_mps(tmp_path):
    """release/mps_check.py: exit 3 and the reason (also as a job-summary line) where MPS is absent."""
    if torch.backends.mps.is_available():
        pytest.skip("this machine has MPS: the gate would run the kernels")
    summary = tmp_path / "summary.md"
    env = {**os.environ, "GITHUB_ACTIONS": "1", "GITHUB_STEP_SUMMARY": str(summary)}
    run = subprocess.run(
        [sys.executable, str(ROOT / "release" / "mps_check.py")], capture_output=True, text=True, env=env
    )
    assert run.returncode == 3, run.stdout + run.stderr
    assert "MPS tests SKIPPED: torch" in run.stdout and "reports no MPS device" in run.stdout
    assert "::warning title=MPS tests skipped::" in run.stdout
    assert "MPS tests SKIPPED" in summary.read_text()
