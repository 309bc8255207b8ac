"""bitsandbytes-cpu's reused per-thread buffer for gemm_4bit's prefill path (the dequantized weight
of more than 32 rows): results equal the reference whatever the buffer held before, in every
thread, and with reuse turned off."""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import pytest
import torch

from bitsandbytes.backends.reference import KERNELS as REF
from conftest import served_by_cpu_wheel

bitsandbytes_cpu = pytest.importorskip("bitsandbytes_cpu")
from bitsandbytes_cpu import _scratch  # noqa: E402
from bitsandbytes_cpu.kernels import dense_dtype  # noqa: E402


@pytest.fixture(autouse=True)
def _dense_path():
    """These tests are about the dense prefill path's buffer: bf16 would take the AMX path (which
    has no such buffer) on CPUs that have it."""
    bitsandbytes_cpu._C.set_amx(False)
    yield
    bitsandbytes_cpu._C.set_amx(True)


def _case(N: int, K: int, dtype: torch.dtype, seed: int):
    g = torch.Generator().manual_seed(seed)
    packed, absmax = REF["quantize_4bit"](torch.randn(N, K, generator=g), 64, "nf4", torch.uint8)
    A = torch.randn(40, K, generator=g).to(dtype)
    want = REF["gemm_4bit"](A, packed, [N, K], absmax, 64, "nf4")
    return A, packed, absmax, want


def _run(A, packed, absmax, N, K):
    return torch.ops.bitsandbytes.gemm_4bit(A, packed, [N, K], absmax, 64, "nf4")


def _close(got: torch.Tensor, want: torch.Tensor, K: int) -> None:
    tol = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}[want.dtype]
    torch.testing.assert_close(got, want, rtol=tol, atol=tol * K**0.5)


@served_by_cpu_wheel
def test_buffer_reused_across_shapes_and_dtypes():
    cases = [(72, 512, torch.bfloat16), (24, 128, torch.bfloat16), (72, 512, torch.float32), (96, 640, torch.float16)]
    data = [(N, K, *_case(N, K, dt, seed)) for seed, (N, K, dt) in enumerate(cases)]
    for N, K, A, packed, absmax, want in data + data[::-1]:  # smaller after larger, dtype changes
        _close(_run(A, packed, absmax, N, K), want, K)
    if _scratch.ENABLED:
        # One buffer per dtype the dense GEMM runs in (f16, and bf16 on CPUs without bf16
        # arithmetic, run in f32), grown as needed.
        bufs = _scratch._LOCAL.bufs
        b16 = dense_dtype(torch.bfloat16)
        assert set(bufs) == {b16, torch.float32}
        assert bufs[b16].numel() >= 72 * 512 and bufs[torch.float32].numel() >= 96 * 640
        before = bufs[b16].data_ptr()
        N, K, A, packed, absmax, want = data[1]
        _close(_run(A, packed, absmax, N, K), want, K)
        assert bufs[b16].data_ptr() == before  # no new allocation for a smaller weight


def test_dense_dtype_follows_the_cpu():
    """bf16 keeps its dtype only where the avx512 kernel table runs (it requires AVX512-BF16, and
    oneDNN then multiplies bf16 itself); f16 always runs in f32."""
    fast_bf16 = bitsandbytes_cpu.isa() == "avx512"
    assert dense_dtype(torch.bfloat16) == (torch.bfloat16 if fast_bf16 else torch.float32)
    assert dense_dtype(torch.float16) == torch.float32
    assert dense_dtype(torch.float32) == torch.float32


def test_each_thread_has_its_own_buffer():
    data = [_case(64 + 8 * i, 256, torch.float32, 10 + i) for i in range(4)]
    errors: list[BaseException] = []

    def work(i: int) -> None:
        A, packed, absmax, want = data[i]
        try:
            for _ in range(20):
                _close(_run(A, packed, absmax, 64 + 8 * i, 256), want, 256)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]


def test_gradients_through_a_direct_call_do_not_see_the_buffer():
    """The kernel called directly (not through torch.ops) with gradients on: the weight autograd
    saves is a tensor of its own, so a later call cannot change the gradient."""
    A, packed, absmax, _ = _case(72, 512, torch.float32, 20)
    A.requires_grad_(True)
    out = bitsandbytes_cpu.kernels.gemm_4bit(A, packed, [72, 512], absmax, 64, "nf4")
    W = REF["dequantize_4bit"](packed, absmax, 64, "nf4", [72, 512], torch.float32)
    A2, packed2, absmax2, _ = _case(72, 512, torch.float32, 21)
    with torch.no_grad():
        bitsandbytes_cpu.kernels.gemm_4bit(A2, packed2, [72, 512], absmax2, 64, "nf4")  # reuses the buffer
    out.sum().backward()
    torch.testing.assert_close(A.grad, W.sum(0).expand_as(A), rtol=1e-5, atol=1e-5)


def test_direct_call_with_a_bias_that_needs_gradients():
    """The kernel called directly with gradients on for the bias only (above the fused rows): the
    product records the bias for backward, which receives the sum over the rows."""
    A, packed, absmax, _ = _case(72, 512, torch.float32, 22)
    bias = torch.randn(72, generator=torch.Generator().manual_seed(3), requires_grad=True)
    out = bitsandbytes_cpu.kernels.gemm_4bit(A, packed, [72, 512], absmax, 64, "nf4", bias)
    want = REF["gemm_4bit"](A, packed, [72, 512], absmax, 64, "nf4", bias.detach())
    _close(out.detach(), want, 512)
    assert out.requires_grad
    (out * 2).sum().backward()
    torch.testing.assert_close(bias.grad, torch.full((72,), 2.0 * A.shape[0]))


@served_by_cpu_wheel
def test_buffer_first_made_in_inference_mode():
    """A thread whose buffer is first asked for in inference mode, then used outside it."""
    A, packed, absmax, want = _case(80, 384, torch.bfloat16, 22)
    errors: list[BaseException] = []

    def work() -> None:
        try:
            with torch.inference_mode():
                _close(_run(A, packed, absmax, 80, 384), want, 384)
            assert not _scratch.ENABLED or not _scratch._LOCAL.bufs[dense_dtype(torch.bfloat16)].is_inference()
            _close(_run(A, packed, absmax, 80, 384), want, 384)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    t = threading.Thread(target=work)  # a new thread: a new buffer
    t.start()
    t.join()
    assert not errors, errors[0]


def test_reuse_can_be_turned_off():
    code = (
        "import torch, bitsandbytes, bitsandbytes_cpu._scratch as s\n"
        "x = s.scratch([3, 4], torch.float32); y = s.scratch([3, 4], torch.float32)\n"
        "print(s.ENABLED, x.data_ptr() != y.data_ptr(), getattr(s._LOCAL, 'bufs', None))\n"
    )
    env = dict(os.environ, BNB_CPU_SCRATCH="0")
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["False", "True", "None"]
