"""The ops and layers under ``torch.autocast``.

Training loops run the forward under autocast (transformers' Trainer with ``bf16=True`` on the
CPU, ``torch.autocast("hpu", torch.bfloat16)`` on Gaudi). Two rules:

- The ``bitsandbytes::`` ops ignore autocast: the same bits with or without it. Autocast does not
  cast their arguments (they are not on its lists), but it reached the torch ops inside a kernel:
  the reference int8 matmul, which sums int8 products exactly in f32 (the kernel Gaudi's
  LLM.int8() runs), gave wrong integers in bf16 and overflowed in f16, and a dense path's f32
  GEMM ran in bf16 while the fused path of the same op stayed exact.
- The float products that the established release computes with ``torch.nn.functional.linear``
  follow autocast as ``linear`` does (their operands cast to its dtype, recorded by autograd):
  ``matmul_4bit`` except one row without gradients, and LLM.int8()'s CPU/XPU training product.
  LLM.int8()'s inference and the 4-bit one-row inference ignore it, as there.

The tests-cpu session runs these on the CPU wheel's kernels, tests-reference on the reference.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

import bitsandbytes as bnb

OPS = torch.ops.bitsandbytes
AUTOCAST = [torch.bfloat16, torch.float16]


def _bits(out: object) -> list[torch.Tensor]:
    items = out if isinstance(out, (tuple, list)) else [out]
    return [t.detach().reshape(-1).view(torch.uint8).clone() for t in items if isinstance(t, torch.Tensor)]


def _same_under_autocast(fn: Callable[[], object], dtype: torch.dtype) -> None:
    want = _bits(fn())
    with torch.autocast("cpu", dtype=dtype):
        got = _bits(fn())
    assert len(got) == len(want)
    for i, (g, w) in enumerate(zip(got, want)):
        assert torch.equal(g, w), f"output {i} differs under autocast({dtype})"


@pytest.mark.parametrize("dtype", AUTOCAST)
def test_int8_matmul_sums_stay_exact(dtype):
    """The sums of int8 products reach 127 * 127 * 4096 = 66 M: beyond bf16's and f16's integers."""
    A = torch.full((3, 4096), 127, dtype=torch.int8)
    A[1] = torch.randint(-127, 128, (4096,), dtype=torch.int8)
    B = torch.randint(-127, 128, (65, 4096), dtype=torch.int8)
    B[0] = 127
    want = (A.to(torch.int64) @ B.to(torch.int64).t()).to(torch.int32)
    with torch.autocast("cpu", dtype=dtype):
        got = OPS.int8_linear_matmul(A, B)
        into = torch.empty_like(got)
        OPS.int8_linear_matmul.out(A, B, out=into)
    assert got[0, 0].item() == 127 * 127 * 4096
    assert torch.equal(got, want) and torch.equal(into, want)


@pytest.mark.parametrize("dtype", AUTOCAST)
@pytest.mark.parametrize("rows", [1, 80])
def test_ops(dtype, rows):
    torch.manual_seed(0)
    W = torch.randn(192, 512)
    A = torch.randn(rows, 512) * 3
    A[:, 7] = 20.0  # an outlier column
    G = torch.randn(rows, 192)
    CB, SCB, _ = OPS.int8_vectorwise_quant(W, 0.0)
    CA, SCA, cols = OPS.int8_vectorwise_quant(A, 6.0)
    packed, absmax = OPS.quantize_4bit(W, 64, "nf4", torch.uint8)
    code = bnb.functional.create_dynamic_map()
    calls = {
        "int8_scaled_mm": lambda: OPS.int8_scaled_mm(CA, CB, SCA, SCB, dtype=torch.float32),
        "int8_mixed_scaled_mm": lambda: OPS.int8_mixed_scaled_mm(A, CA, CB, SCA, SCB, cols),
        "int8_weight_mm": lambda: OPS.int8_weight_mm(A, CB, SCB),
        "int8_weight_mm_t": lambda: OPS.int8_weight_mm_t(G, CB, SCB),
        "gemm_4bit": lambda: OPS.gemm_4bit(A, packed, [192, 512], absmax, 64, "nf4"),
        "gemm_4bit_t": lambda: OPS.gemm_4bit_t(G, packed, [192, 512], absmax, 64, "nf4"),
        "dequantize_4bit": lambda: OPS.dequantize_4bit(packed, absmax, 64, "nf4", [192, 512], torch.float32),
        "quantize_blockwise": lambda: OPS.quantize_blockwise(W, code, 256),
        "int8_double_quant": lambda: OPS.int8_double_quant(A, 6.0),
    }
    for name, call in calls.items():
        try:
            _same_under_autocast(call, dtype)
        except AssertionError as e:
            raise AssertionError(f"{name}: {e}") from None


def _operands(rows: int, grad: bool) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(3)
    x = (torch.randn(rows, 512) * 2).requires_grad_(grad)
    return x, torch.randn(192)


def _run(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> list[torch.Tensor]:
    """fn(x), and x's gradient where x requires grad (from a loss that weighs every output)."""
    x.grad = None
    with torch.set_grad_enabled(x.requires_grad):
        y = fn(x)
    if not x.requires_grad:
        return [y]
    (y.float() * torch.linspace(-1, 1, y.numel()).view_as(y)).sum().backward()
    return [y, x.grad]


def _assert_same(got: list[torch.Tensor], want: list[torch.Tensor]) -> None:
    for g, w in zip(got, want):
        assert g.dtype == w.dtype
        assert torch.equal(g, w)


@pytest.mark.parametrize("dtype", AUTOCAST)
@pytest.mark.parametrize(("rows", "grad"), [(1, True), (2, False), (80, False), (80, True)])
def test_matmul_4bit_follows_autocast_as_linear_does(rows, grad, dtype):
    packed, state = bnb.functional.quantize_4bit(torch.randn(192, 512), quant_type="nf4")
    x, bias = _operands(rows, grad)
    with torch.autocast("cpu", dtype=dtype):
        got = _run(lambda a: bnb.matmul_4bit(a, packed.t(), state, bias=bias), x)
    want = _run(lambda a: bnb.matmul_4bit(a.to(dtype), packed.t(), state, bias=bias.to(dtype)), x)
    assert got[0].dtype == dtype
    _assert_same(got, want)


@pytest.mark.parametrize("dtype", AUTOCAST)
def test_matmul_4bit_one_row_inference_ignores_autocast(dtype):
    packed, state = bnb.functional.quantize_4bit(torch.randn(192, 512), quant_type="fp4")
    x, bias = _operands(1, False)
    with torch.autocast("cpu", dtype=dtype):
        got = _run(lambda a: bnb.matmul_4bit(a, packed.t(), state, bias=bias), x)
    _assert_same(got, _run(lambda a: bnb.matmul_4bit(a, packed.t(), state, bias=bias), x))


def _linear8bit(threshold: float, train: bool, has_fp16_weights: bool = False) -> torch.nn.Module:
    torch.manual_seed(1)
    layer = bnb.nn.Linear8bitLt(512, 192, has_fp16_weights=has_fp16_weights, threshold=threshold).to("cpu")
    return layer.train(train)


@pytest.mark.parametrize("dtype", AUTOCAST)
@pytest.mark.parametrize(("rows", "grad"), [(1, False), (80, True)])
@pytest.mark.parametrize(("threshold", "has_fp16_weights"), [(0.0, False), (6.0, False), (6.0, True)])
def test_int8_training_product_follows_autocast_as_linear_does(threshold, has_fp16_weights, rows, grad, dtype):
    layer = _linear8bit(threshold, True, has_fp16_weights)
    x, _ = _operands(rows, grad)
    with torch.autocast("cpu", dtype=dtype):
        got = _run(layer, x)
    assert got[0].dtype == dtype
    _assert_same(got, _run(lambda a: layer(a.to(dtype)), x))


@pytest.mark.parametrize("dtype", AUTOCAST)
@pytest.mark.parametrize(("rows", "grad"), [(1, False), (8, False), (80, True)])
@pytest.mark.parametrize("threshold", [0.0, 6.0])
def test_int8_inference_ignores_autocast(threshold, rows, grad, dtype):
    layer = _linear8bit(threshold, False)
    x, _ = _operands(rows, grad)
    with torch.autocast("cpu", dtype=dtype):
        got = _run(layer, x)
    _assert_same(got, _run(layer, x))


@pytest.mark.parametrize("dtype", AUTOCAST)
@pytest.mark.parametrize("compute_dtype", [None, torch.float32, torch.bfloat16])
def test_linear4bit_keeps_the_input_dtype(compute_dtype, dtype):
    """Linear4bit returns the input's dtype (the product ran in autocast's): QLoRA training with
    f32 adapters under autocast, as in the established release."""
    torch.manual_seed(1)
    layer = bnb.nn.Linear4bit(512, 192, compute_dtype=compute_dtype, quant_type="nf4").to("cpu")
    x, _ = _operands(80, True)
    with torch.autocast("cpu", dtype=dtype):
        got = _run(layer, x)
    cd = compute_dtype or torch.float32  # (None: the input's)
    w, bias = layer.weight, layer.bias.to(cd).to(dtype)
    want = _run(lambda a: bnb.matmul_4bit(a.to(cd).to(dtype), w.t(), w.quant_state, bias=bias).float(), x)
    assert got[0].dtype == torch.float32 and got[1].dtype == torch.float32
    _assert_same(got, want)


@pytest.mark.parametrize("rows", [1, 80])
def test_an_out_is_not_cast(rows):
    """As for torch's ops (``torch.mm(..., out=...)``), a call with an ``out`` is not eligible for
    autocast: the product keeps out's dtype (it raised a DTypeError for out's f32)."""
    packed, state = bnb.functional.quantize_4bit(torch.randn(192, 512), quant_type="nf4")
    x, bias = _operands(rows, False)
    want = bnb.matmul_4bit(x, packed.t(), state, bias=bias)
    out = torch.empty_like(want)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = bnb.matmul_4bit(x, packed.t(), state, out=out, bias=bias)
    assert got is out and torch.equal(out, want)
    layer = _linear8bit(0.0, True)
    want = bnb.matmul(x, layer.weight, state=layer.state)
    out = torch.empty_like(want)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = bnb.matmul(x, layer.weight, out=out, state=layer.state)
    assert got.dtype == torch.float32 and torch.equal(got, want)


def test_linear4bit_on_meta_under_autocast():
    """A layer moved to meta (a shape-only pass) runs under autocast as torch's Linear does there:
    autocast has no meta kernels (it raised 'unknown device type for autocast')."""
    layer = bnb.nn.Linear4bit(512, 192, quant_type="nf4").to("cpu").to("meta")
    x = torch.empty(80, 512, device="meta")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(x)
    assert out.shape == (80, 192) and out.device.type == "meta"


@pytest.mark.parametrize("kind", ["4bit", "8bit-train"])
def test_compiled_under_autocast_equals_eager(kind):
    """torch.compile traces the autocast cast of the operands and the opaque ops: one graph, the
    eager result's bits."""
    torch.manual_seed(1)
    if kind == "4bit":
        module = bnb.nn.Linear4bit(512, 192, compute_dtype=torch.float32, quant_type="nf4").to("cpu")
    else:
        module = _linear8bit(0.0, True)
    x, _ = _operands(16, False)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        eager = module(x)
        compiled = torch.compile(module, fullgraph=True, backend="aot_eager")(x)
    assert compiled.dtype == eager.dtype
    assert torch.equal(compiled, eager)
