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

bitsandbytes_cpu = pytest.importorskip("bitsandbytes_cpu")
from bitsandbytes_cpu import _scratch  # noqa: E402


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


def test_buffer_reused_across_shapes_and_dtypes():
    cases = [(72, 512, torch.bfloat16), (24, 128, torch.bfloat16), (72, 512, torch.float32), (96, 640, torch.float16)]
    data = [(N, K, *_case(N, K, dt, seed)) for seed, (N, K, dt) in enumerate(cases)]
    for N, K, A, packed, absmax, want in data + data[::-1]:  # smaller after larger, dtype changes
        _close(_run(A, packed, absmax, N, K), want, K)
    if _scratch.ENABLED:
        buf = _scratch._LOCAL.buf
        assert buf.dtype == torch.bfloat16 and buf.numel() >= 72 * 512  # the last dtype, grown as needed
        before = buf.data_ptr()
        N, K, A, packed, absmax, want = data[1]
        _close(_run(A, packed, absmax, N, K), want, K)
        assert _scratch._LOCAL.buf.data_ptr() == before  # no new allocation for a smaller weight


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


def test_reuse_can_be_turned_off():
    code = (
        "import torch, bitsandbytes, bitsandbytes_cpu._scratch as s\n"
        "x = s.scratch([3, 4], torch.float32); y = s.scratch([3, 4], torch.float32)\n"
        "print(s.ENABLED, x.data_ptr() != y.data_ptr(), getattr(s._LOCAL, 'buf', None))\n"
    )
    env = dict(os.environ, BNB_CPU_SCRATCH="0")
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["False", "True", "None"]
