"""The CPU wheel's kernels give the same bits at any thread count, on every instruction set.

A model run on a 2-core laptop and on a 64-core server, or a job whose ``torch.set_num_threads``
changes, must see the same quantized codes, products and optimizer states. The shapes here are
large enough for every kernel to split its work across the threads asked for (several parts per
thread at 5 threads).

Two exceptions, both no worse than torch's own ``nn.Linear``:
- the input gradients' fused kernels for a few rows of A (``int8_weight_mm_t``, ``gemm_4bit_t``)
  split the reduction across threads and add the parts in an order that follows the thread count;
- above the fused kernels' rows, without AMX, the weight is expanded and handed to torch's GEMM,
  whose bits change with the thread count at some shapes (here: 1 thread against more).
Their results at different thread counts agree within one rounding of the output dtype.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import pytest
import torch

import bitsandbytes as bnb
import bitsandbytes.functional as F

cpu = pytest.importorskip("bitsandbytes_cpu")
from bitsandbytes_cpu import amx, kernels, weight_matmul  # noqa: E402

OPS = torch.ops.bitsandbytes
THREADS = (1, 2, 3, 5)
MODES = list(cpu.build_info()["isa_usable"])
if "avx512" in MODES:
    MODES += ["avx512+amx", "avx512+dots"]  # the panel path on the tile unit, and in its AVX512-BF16 form


@pytest.fixture(params=MODES)
def mode(request):
    isa, _, unit = request.param.partition("+")
    cpu.set_isa(isa)
    cpu._C.set_amx(bool(unit))
    cpu._C.set_panel_dots(unit == "dots")
    usable = cpu._C.amx_usable() if unit == "amx" else cpu._C.panel_usable()
    if unit and not usable:
        cpu.set_isa("auto")
        cpu._C.set_amx(True)
        cpu._C.set_panel_dots(False)
        pytest.skip(f"the panel path's {unit} form does not run here")
    yield request.param
    cpu.set_isa("auto")
    cpu._C.set_amx(True)
    cpu._C.set_panel_dots(False)


def _at_each_count(fn: Callable[[], object]) -> list[list[torch.Tensor]]:
    """fn()'s tensors (a tensor, or a tuple/list of them and other values) at each of THREADS."""
    before = torch.get_num_threads()
    outs = []
    try:
        for n in THREADS:
            torch.set_num_threads(n)
            torch.manual_seed(7)
            r = fn()
            items = r if isinstance(r, (tuple, list)) else [r]
            outs.append([t.detach().clone() for t in items if isinstance(t, torch.Tensor)])
    finally:
        torch.set_num_threads(before)
    return outs


def _torch_gemm_varies(rows: int, n: int, k: int) -> bool:
    """Whether torch's own GEMM of an ``[rows, k] x [k, n]`` product, in bf16 or f32 (the dense
    paths' dtypes) and with the weight stored ``[n, k]`` or ``[k, n]`` (forward, input gradient),
    gives other bits at another of THREADS."""
    for dtype in (torch.bfloat16, torch.float32):
        a, b = torch.randn(rows, k, dtype=dtype), torch.randn(n, k, dtype=dtype)
        for product in (
            functools.partial(torch.nn.functional.linear, a, b),
            functools.partial(torch.mm, a, b.t().contiguous()),
        ):
            first, *rest = _at_each_count(product)
            if any(not torch.equal(first[0], out[0]) for out in rest):
                return True
    return False


def _close_at_each_count(fn: Callable[[], torch.Tensor]) -> None:
    first, *rest = _at_each_count(fn)
    for out in rest:
        torch.testing.assert_close(out[0], first[0], rtol=2**-7, atol=2**-7 * first[0].abs().max().item())


def _same_bits(fn: Callable[[], object], dense: tuple[int, int, int] | None = None) -> None:
    """fn()'s outputs identical at every count of THREADS; within rounding where ``fn`` may run a
    dense GEMM of shape ``dense`` (rows, n, k) and torch's own GEMM there is not."""
    if dense is not None and _torch_gemm_varies(*dense):
        _close_at_each_count(fn)
        return
    first, *rest = _at_each_count(fn)
    assert first
    for threads, out in zip(THREADS[1:], rest):
        for i, (a, b) in enumerate(zip(first, out)):
            assert a.dtype == b.dtype and a.shape == b.shape
            assert torch.equal(a.reshape(-1).view(torch.uint8), b.reshape(-1).view(torch.uint8)), (
                f"output {i} at {threads} threads differs from 1 thread"
            )


def _dense(op: str, A: torch.Tensor, n: int, k: int, blocksize: int | None = None) -> tuple[int, int, int] | None:
    """(rows, n, k) where ``op`` hands this call to torch's GEMM on an expanded weight (the
    current instruction set, AMX on or off), None where a kernel of the wheel computes it: only
    there may ``_same_bits`` settle for torch's rounding."""
    rows = A.numel() // k
    if amx.eligible(op, A, rows, k, blocksize):
        return None
    fused = rows <= kernels.FUSED_MAX_ROWS if op == "gemm_4bit" else weight_matmul._fused(op, rows)
    return None if fused else (rows, n, k)


W = torch.randn(768, 2048, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_blockwise_quantizers(mode, dtype):
    x = W.to(dtype).reshape(-1)[: (1 << 20) + 77]

    def codes_and_scales(quantize: Callable, **kwargs) -> list[torch.Tensor]:
        q, state = quantize(x, **kwargs)
        nested = [state.state2.absmax, state.offset] if state.nested else []
        return [q, state.absmax, *nested]

    _same_bits(functools.partial(codes_and_scales, F.quantize_blockwise, blocksize=256))
    _same_bits(functools.partial(F.dequantize_blockwise, *F.quantize_blockwise(x, blocksize=256)))
    for quant_type in ("nf4", "fp4"):
        kwargs = {"quant_type": quant_type, "compress_statistics": True}
        _same_bits(functools.partial(codes_and_scales, F.quantize_4bit, **kwargs))
        _same_bits(functools.partial(F.dequantize_4bit, *F.quantize_4bit(x, **kwargs)))


@pytest.mark.parametrize("rows", [1, 4, 16, 64])
@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
def test_4bit_products(mode, rows, quant_type):
    q, state = F.quantize_4bit(W, quant_type=quant_type, compress_statistics=True)
    x = torch.randn(rows, 2048, dtype=torch.bfloat16)
    bias = torch.randn(768, dtype=torch.bfloat16)
    dense = _dense("gemm_4bit", x, 768, 2048, state.blocksize)
    _same_bits(lambda: bnb.matmul_4bit(x, q.t(), quant_state=state, bias=bias), dense=dense)


@pytest.mark.parametrize("rows", [1, 8, 70])
@pytest.mark.parametrize("threshold", [0.0, 3.0])
def test_int8_products(mode, rows, threshold):
    A = torch.randn(rows, 2048, dtype=torch.bfloat16)
    _same_bits(lambda: F.int8_vectorwise_quant(A, threshold))
    _same_bits(lambda: F.int8_double_quant(A, threshold=threshold)[:4])
    CB, SCB, _ = F.int8_vectorwise_quant(W)
    CA, SCA, cols = F.int8_vectorwise_quant(A, threshold)
    _same_bits(lambda: F.int8_linear_matmul(CA, CB))
    acc = F.int8_linear_matmul(CA, CB)
    _same_bits(lambda: F.int8_mm_dequant(acc, SCA, SCB))
    _same_bits(lambda: F.int8_vectorwise_dequant(CB, SCB))
    _same_bits(lambda: OPS.int8_scaled_mm(CA, CB, SCA, SCB))
    _same_bits(lambda: OPS.int8_mixed_scaled_mm(A, CA, CB, SCA, SCB, cols))
    _same_bits(lambda: OPS.int8_weight_mm(A, CB, SCB), dense=_dense("int8_weight_mm", A, 768, 2048))


@pytest.mark.parametrize("rows", [1, 8, 70])
def test_input_gradients(mode, rows):
    """Within one rounding of bf16 at a few rows (the fused kernels' split reduction); above them
    the same bits wherever torch's GEMM gives them."""
    G = torch.randn(rows, 768, dtype=torch.bfloat16)
    CB, SCB, _ = F.int8_vectorwise_quant(W)
    q, state = F.quantize_4bit(W, quant_type="nf4", compress_statistics=False)
    for fn in (
        lambda: OPS.int8_weight_mm_t(G, CB, SCB),
        lambda: OPS.gemm_4bit_t(G, q, list(W.shape), state.absmax, state.blocksize, "nf4"),
    ):
        if rows < 70:
            _close_at_each_count(fn)
        else:
            _same_bits(fn, dense=(rows, 2048, 768))


@pytest.mark.parametrize(
    "name", ["Adam8bit", "AdamW8bit", "Lion8bit", "AdEMAMix8bit", "LAMB8bit", "RMSprop8bit", "SGD8bit", "Adam"]
)
def test_optimizer_steps(mode, name):
    def steps():
        p = torch.nn.Parameter(torch.randn((1 << 18) + 100))
        kwargs = {"momentum": 0.9} if name == "SGD8bit" else {}
        opt = getattr(bnb.optim, name)([p], lr=1e-3, **kwargs)
        for _ in range(3):
            p.grad = torch.randn_like(p)
            opt.step()
        return [p] + [v for v in opt.state[p].values() if isinstance(v, torch.Tensor)]

    _same_bits(steps)
