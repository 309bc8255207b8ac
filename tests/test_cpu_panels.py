"""bitsandbytes-cpu's dense products on a weight expanded panel by panel (``_panels``): gemm_4bit's
prefill path, the int8 training forward and the input gradients (``int8_weight_mm_t``,
``gemm_4bit_t``) above the fused kernels' rows. Results equal the
reference on every instruction set, whatever the panel size, and the thread's buffer holds one
panel, not the whole weight."""

from __future__ import annotations

import functools
import threading

import pytest
import torch

from bitsandbytes.backends.reference import KERNELS as REF
from conftest import served_by_cpu_wheel

bitsandbytes_cpu = pytest.importorskip("bitsandbytes_cpu")
from bitsandbytes_cpu import _panels, _scratch  # noqa: E402
from bitsandbytes_cpu.kernels import FUSED_MAX_ROWS, dense_dtype, gemm_4bit  # noqa: E402
from bitsandbytes_cpu.weight_matmul import FUSED_ROWS, gemm_4bit_t, int8_weight_mm, int8_weight_mm_t  # noqa: E402

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
    monkeypatch.setattr(_panels, "PANEL_MIN", 8)
    monkeypatch.setattr(_panels, "PANEL_ALIGN", 1)


def _close(got: torch.Tensor, want: torch.Tensor, k: int) -> None:
    tol = TOL[want.dtype]
    torch.testing.assert_close(got, want, rtol=tol, atol=tol * k**0.5)


def test_panel_width():
    assert _panels.block_step(4096, 64) == 1
    assert _panels.block_step(100, 64) == 16  # 16 rows of 100 values: 25 blocks of 64
    assert _panels.block_step(96, 64) == 2
    assert _panels.panel_width(4096, 4096, 2) == 4096  # 32 MiB of bf16: the whole weight
    assert _panels.panel_width(14336, 4096, 4) == 2048  # 32 MiB of f32
    assert _panels.panel_width(4096, 14336, 4) == 1024  # the floor of rows, past the bytes
    assert _panels.panel_width(14336, 4096, 2, step=64) == 4096  # columns of the transposed product
    assert _panels.panel_width(4096, 14336, 2) == 1152  # 32 MiB is 1170 rows: whole multiples of 64
    assert _panels.panel_width(500, 4096, 4) == 500  # the whole weight
    assert _panels.panel_width(0, 4096, 4) == 1  # an empty weight still steps
    assert _panels.panel_width(50000, 1 << 20, 4, step=3000) == 24000  # whole blocks, a multiple of 64
    assert _panels.panel_width(200000, 100, 4, step=3000) == 72000  # within the bytes: 83886 rows


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


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_input_gradients_in_column_panels_equal_the_reference(small_panels, isa, dtype):
    """G @ W, W expanded a few columns at a time (whole blocks of 64 for the 4-bit weight), and a
    4-bit weight whose rows do not hold whole blocks (expanded whole)."""
    bitsandbytes_cpu._C.set_isa(isa)
    g = torch.Generator().manual_seed(5)
    CB = torch.randint(-127, 128, (90, 200), generator=g, dtype=torch.int8)
    SCB = torch.rand(90, generator=g) * 4
    G = torch.randn(3, 40, 90, generator=g).to(dtype)  # 120 rows: above every table's fused rows
    got = int8_weight_mm_t(G, CB, SCB)
    assert got.shape == (3, 40, 200)
    _close(got, REF["int8_weight_mm_t"](G, CB, SCB), 90)
    for k in (320, 200):  # 5 blocks of 64 per row; 200 values: rows share blocks
        packed, absmax = REF["quantize_4bit"](torch.randn(90, k, generator=g), 64, "nf4", torch.uint8)
        got = gemm_4bit_t(G, packed, [90, k], absmax, 64, "nf4")
        _close(got, REF["gemm_4bit_t"](G, packed, [90, k], absmax, 64, "nf4"), 90)


def _in_a_new_thread(fn) -> tuple[object, dict]:
    """``fn()`` run in a new thread: what it returned, and that thread's buffers afterwards (by
    dtype; a new thread starts with none)."""
    seen: dict[str, object] = {}

    def work() -> None:
        try:
            seen["out"] = fn()
            seen["bufs"] = dict(getattr(_scratch._LOCAL, "bufs", {}))
        except BaseException as e:  # noqa: BLE001 - reported below
            seen["error"] = e

    t = threading.Thread(target=work)
    t.start()
    t.join()
    assert "error" not in seen, seen["error"]
    return seen["out"], seen["bufs"]


@served_by_cpu_wheel
@pytest.mark.parametrize("op", ["gemm_4bit", "gemm_4bit_t", "int8_weight_mm", "int8_weight_mm_t"])
def test_the_buffer_holds_one_panel(monkeypatch, op):
    """A new thread's buffer after a product above the fused rows: one panel of the weight, not all
    of it."""
    monkeypatch.setattr(_panels, "PANEL_BYTES", 64 << 10)
    monkeypatch.setattr(_panels, "PANEL_MIN", 16)
    monkeypatch.setattr(_panels, "PANEL_ALIGN", 1)
    n, k = 300, 512
    g = torch.Generator().manual_seed(4)
    packed, absmax = REF["quantize_4bit"](torch.randn(n, k, generator=g), 64, "nf4", torch.uint8)
    CB, SCB = torch.randint(-127, 128, (n, k), generator=g, dtype=torch.int8), torch.rand(n, generator=g)
    A = torch.randn(128, n if op.endswith("_t") else k, generator=g)  # above every table's fused rows (avx2: 96)
    args = {"gemm_4bit": (A, packed, [n, k], absmax, 64, "nf4"), "int8_weight_mm": (A, CB, SCB)}
    args["gemm_4bit_t"], args["int8_weight_mm_t"] = args["gemm_4bit"], args["int8_weight_mm"]
    out, bufs = _in_a_new_thread(lambda: getattr(torch.ops.bitsandbytes, op)(*args[op]))
    buf = bufs[dense_dtype(A.dtype)].numel() if _scratch.ENABLED else None
    _close(out, REF[op](*args[op]), k)
    # 64 KiB of f32: 32 weight rows of 512, or 54 columns of 300 (64 for whole 4-bit blocks)
    width = {"gemm_4bit": 32, "int8_weight_mm": 32, "gemm_4bit_t": 64, "int8_weight_mm_t": 54}[op]
    if buf is not None:
        assert buf == width * (n if op.endswith("_t") else k) < n * k


@pytest.mark.parametrize("isa", ISAS)
def test_the_fused_kernels_serve_up_to_their_rows(monkeypatch, isa):
    """Up to each fused kernel's rows (gemm_4bit's ``FUSED_MAX_ROWS``, the instruction set's
    ``FUSED_ROWS``) the product reads the quantized weight without expanding it; one row more takes
    the dense path on the expanded weight."""
    monkeypatch.setattr(_scratch, "ENABLED", True)
    bitsandbytes_cpu._C.set_isa(isa)
    n, k = 48, 128
    g = torch.Generator().manual_seed(6)
    packed, absmax = REF["quantize_4bit"](torch.randn(n, k, generator=g), 64, "nf4", torch.uint8)
    CB, SCB = torch.randint(-127, 128, (n, k), generator=g, dtype=torch.int8), torch.rand(n, generator=g)
    fns = {
        "gemm_4bit": lambda A: gemm_4bit(A, packed, [n, k], absmax, 64, "nf4"),
        "gemm_4bit_t": lambda A: gemm_4bit_t(A, packed, [n, k], absmax, 64, "nf4"),
        "int8_weight_mm": lambda A: int8_weight_mm(A, CB, SCB),
        "int8_weight_mm_t": lambda A: int8_weight_mm_t(A, CB, SCB),
    }
    limits = {"gemm_4bit": FUSED_MAX_ROWS, **FUSED_ROWS[isa]}
    for op, fn in fns.items():
        for rows in (limits[op], limits[op] + 1):
            if rows:
                A = torch.randn(rows, n if op.endswith("_t") else k, generator=g)
                assert bool(_in_a_new_thread(functools.partial(fn, A))[1]) == (rows > limits[op]), (op, rows)


def test_no_weight_rows_above_the_fused_rows():
    A = torch.randn(40, 64)
    packed, absmax = REF["quantize_4bit"](torch.randn(0, 64), 64, "nf4", torch.uint8)
    out = torch.ops.bitsandbytes.gemm_4bit(A, packed, [0, 64], absmax, 64, "nf4")
    assert out.shape == (40, 0)
