"""bitsandbytes-cpu's dense products on a weight expanded panel by panel (``_panels``): gemm_4bit's
prefill path and the int8 training forward above the fused kernels' rows. Results equal the
reference on every instruction set, whatever the panel size, and the thread's buffer holds one
panel, not the whole weight."""

from __future__ import annotations

import threading

import pytest
import torch

from bitsandbytes.backends.reference import KERNELS as REF

bitsandbytes_cpu = pytest.importorskip("bitsandbytes_cpu")
from bitsandbytes_cpu import _panels, _scratch  # noqa: E402
from bitsandbytes_cpu.kernels import dense_dtype  # noqa: E402
from bitsandbytes_cpu.weight_matmul import int8_weight_mm  # noqa: E402

ISAS = bitsandbytes_cpu._C.usable_isas().split(",")
TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


@pytest.fixture(autouse=True)
def _dense_path():
    """bf16 would take the AMX path (which has no expanded weight) on CPUs that have it."""
    isa = bitsandbytes_cpu._C.get_isa()
    bitsandbytes_cpu._C.set_amx(False)
    yield
    bitsandbytes_cpu._C.set_amx(True)
    bitsandbytes_cpu._C.set_isa(isa)


@pytest.fixture
def small_panels(monkeypatch):
    """Panels of a few rows, so that small weights take many."""
    monkeypatch.setattr(_panels, "PANEL_BYTES", 1)
    monkeypatch.setattr(_panels, "PANEL_MIN_ROWS", 8)


def _close(got: torch.Tensor, want: torch.Tensor, k: int) -> None:
    tol = TOL[want.dtype]
    torch.testing.assert_close(got, want, rtol=tol, atol=tol * k**0.5)


def test_panel_rows():
    assert _panels.block_step(4096, 64) == 1
    assert _panels.block_step(100, 64) == 16  # 16 rows of 100 values: 25 blocks of 64
    assert _panels.block_step(96, 64) == 2
    assert _panels.panel_rows(4096, 4096, 2) == 2048  # 16 MiB of bf16
    assert _panels.panel_rows(4096, 14336, 4) == 1024  # the floor of rows, past the bytes
    assert _panels.panel_rows(500, 4096, 4) == 500  # the whole weight
    assert _panels.panel_rows(0, 4096, 4) == 1  # an empty weight still steps
    assert _panels.panel_rows(10000, 1 << 20, 4, step=3000) == 3000  # never below one whole-block step
    assert _panels.panel_rows(100000, 100, 4, step=3000) == 39000  # whole steps within the bytes


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize(("n", "k", "blocksize"), [(200, 96, 64), (130, 100, 256), (70, 128, 64), (33, 50, 128)])
def test_gemm_4bit_prefill_in_panels_equals_the_reference(small_panels, isa, dtype, n, k, blocksize):
    """Panels that start inside a row (k not a multiple of the block) and a last, shorter panel."""
    bitsandbytes_cpu._C.set_isa(isa)
    g = torch.Generator().manual_seed(n + k)
    packed, absmax = REF["quantize_4bit"](torch.randn(n, k, generator=g), blocksize, "fp4", torch.uint8)
    A = torch.randn(2, 20, k, generator=g).to(dtype)  # 40 rows: above the fused kernel's 32
    bias = torch.randn(n, generator=g).to(dtype)
    got = torch.ops.bitsandbytes.gemm_4bit(A, packed, [n, k], absmax, blocksize, "fp4", bias)
    want = REF["gemm_4bit"](A, packed, [n, k], absmax, blocksize, "fp4", bias)
    assert got.shape == (2, 20, n) and got.dtype == dtype
    _close(got, want, k)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_int8_weight_mm_in_panels_equals_the_reference(small_panels, isa, dtype):
    bitsandbytes_cpu._C.set_isa(isa)
    g = torch.Generator().manual_seed(3)
    CB = torch.randint(-127, 128, (90, 72), generator=g, dtype=torch.int8)
    SCB = torch.rand(90, generator=g) * 4
    A = torch.randn(100, 72, generator=g).to(dtype)  # above every table's fused rows
    bias = torch.randn(90, generator=g).to(dtype)
    _close(int8_weight_mm(A, CB, SCB, bias), REF["int8_weight_mm"](A, CB, SCB, bias), 72)


def test_the_buffer_holds_one_panel(monkeypatch):
    """A new thread's buffer after a prefill product: one panel of the weight, not all of it."""
    monkeypatch.setattr(_panels, "PANEL_BYTES", 64 << 10)
    monkeypatch.setattr(_panels, "PANEL_MIN_ROWS", 16)
    n, k = 300, 512
    g = torch.Generator().manual_seed(4)
    packed, absmax = REF["quantize_4bit"](torch.randn(n, k, generator=g), 64, "nf4", torch.uint8)
    A = torch.randn(48, k, generator=g)
    seen: dict[str, object] = {}

    def work() -> None:
        try:
            seen["out"] = torch.ops.bitsandbytes.gemm_4bit(A, packed, [n, k], absmax, 64, "nf4")
            seen["buf"] = _scratch._LOCAL.bufs[dense_dtype(A.dtype)].numel() if _scratch.ENABLED else None
        except BaseException as e:  # noqa: BLE001 - reported below
            seen["error"] = e

    t = threading.Thread(target=work)
    t.start()
    t.join()
    assert "error" not in seen, seen["error"]
    _close(seen["out"], REF["gemm_4bit"](A, packed, [n, k], absmax, 64, "nf4"), k)
    rows = _panels.panel_rows(n, k, 4)
    assert rows == 32  # 64 KiB of f32 rows of 512: ten panels
    if seen["buf"] is not None:
        assert seen["buf"] == rows * k


def test_no_weight_rows_above_the_fused_rows():
    A = torch.randn(40, 64)
    packed, absmax = REF["quantize_4bit"](torch.randn(0, 64), 64, "nf4", torch.uint8)
    out = torch.ops.bitsandbytes.gemm_4bit(A, packed, [0, 64], absmax, 64, "nf4")
    assert out.shape == (40, 0)
