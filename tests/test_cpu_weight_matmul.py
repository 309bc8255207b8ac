"""bitsandbytes-cpu's matmuls against a weight kept quantized (ops int8_weight_mm, int8_weight_mm_t,
gemm_4bit_t), on every usable instruction set, through the fused kernels and through the
dequantize + dense GEMM path, against the reference kernels (dequantize into A's dtype, then matmul)."""

from __future__ import annotations

import pytest
import torch

from conftest import served_by_cpu_wheel

cpu = pytest.importorskip("bitsandbytes_cpu")

import bitsandbytes.functional as F  # noqa: E402
from bitsandbytes.backends.reference import KERNELS as REF  # noqa: E402
from bitsandbytes_cpu import amx, weight_matmul  # noqa: E402

OPS = torch.ops.bitsandbytes
ISAS = cpu.build_info()["isa_usable"]
# (5,), 40, 1024: rows of the transposed kernels' partial sums 4 KiB apart, which the native
# code pads (WeightMatmulArgs::ldacc), in two parts.
SHAPES = [((1,), 5, 33), ((3,), 17, 300), ((12,), 64, 512), ((2, 9), 3, 65), ((0,), 4, 64), ((2,), 6, 256)]
SHAPES += [((5,), 40, 1024)]
# The kernels sum in f32 (or scale after a dense GEMM) without first rounding the dequantized
# weight: within A's dtype rounding of the reference, plus f32 summation order.
TOL = {torch.float32: 3e-6, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


PATHS = [(isa, path) for isa in ISAS for path in ("fused", "dense")]
if "avx512" in ISAS:
    cpu.set_isa("avx512")
    if cpu._C.amx_usable():
        PATHS.append(("avx512", "amx"))
    if cpu._C.panel_usable():  # the panel matmuls' AVX512-BF16 form (forced where AMX runs too)
        PATHS.append(("avx512", "dots"))
    cpu.set_isa("auto")


@pytest.fixture(params=PATHS, ids=lambda p: "-".join(p))
def isa(request, monkeypatch):
    """Each usable instruction set, with every row count on the fused kernels or on the dense path;
    and where the panel matmuls run, every bf16 row count on them, on the AMX tile unit and with
    AVX512-BF16 dot products (the other dtypes as for "dense")."""
    name, path = request.param
    rows = 10**9 if path == "fused" else -1
    monkeypatch.setattr(weight_matmul, "FUSED_ROWS", {i: dict.fromkeys(weight_matmul.KERNELS, rows) for i in ISAS})
    for limits in ("MIN_ROWS", "DOTS_MIN_ROWS"):
        monkeypatch.setattr(amx, limits, dict.fromkeys(getattr(amx, limits), 0))
    for limits in ("MAX_ROWS", "DOTS_MAX_ROWS"):
        monkeypatch.setattr(amx, limits, dict.fromkeys(getattr(amx, limits), 1 << 62))
    cpu._C.set_amx(path in ("amx", "dots"))
    cpu._C.set_panel_dots(path == "dots")
    cpu.set_isa(name)
    yield name
    cpu.set_isa("auto")
    cpu._C.set_amx(True)
    cpu._C.set_panel_dots(False)


def _close(got: torch.Tensor, want: torch.Tensor, k: int) -> None:
    assert got.dtype == want.dtype and got.shape == want.shape
    tol = TOL[got.dtype]
    scale = want.float().abs().max().item() if want.numel() else 0.0
    torch.testing.assert_close(got.float(), want.float(), rtol=tol, atol=tol * max(scale, 1e-3) * (1 + k**0.5 / 8))


@served_by_cpu_wheel
def test_ops_are_served_by_the_cpu_wheel():
    import bitsandbytes

    for op in weight_matmul.KERNELS:
        assert bitsandbytes.implementation(op, "cpu") == "cpu", op


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("lead,n,k", SHAPES)
def test_int8_weight_mm_and_its_transpose(isa, dtype, lead, n, k):
    g = torch.Generator().manual_seed(n * 1000 + k)
    CB, SCB, _ = REF["int8_vectorwise_quant"](torch.randn(n, k, generator=g), 0.0)
    A = torch.randn(*lead, k, generator=g).to(dtype)
    bias = torch.randn(n, generator=g).to(dtype)
    _close(OPS.int8_weight_mm(A, CB, SCB, bias), REF["int8_weight_mm"](A, CB, SCB, bias), k)
    _close(OPS.int8_weight_mm(A, CB, SCB), REF["int8_weight_mm"](A, CB, SCB), k)
    _close(OPS.int8_weight_mm(A, CB, SCB, bias.float()), REF["int8_weight_mm"](A, CB, SCB, bias.float()), k)
    G = torch.randn(*lead, n, generator=g).to(dtype)
    _close(OPS.int8_weight_mm_t(G, CB, SCB), REF["int8_weight_mm_t"](G, CB, SCB), n)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
@pytest.mark.parametrize("blocksize", [64, 256])
@pytest.mark.parametrize("lead,n,k", SHAPES)
def test_gemm_4bit_t(isa, dtype, quant_type, blocksize, lead, n, k):
    g = torch.Generator().manual_seed(n * 7 + k)
    packed, absmax = REF["quantize_4bit"](torch.randn(n, k, generator=g), blocksize, quant_type, torch.uint8)
    G = torch.randn(*lead, n, generator=g).to(dtype)
    want = REF["gemm_4bit_t"](G, packed, [n, k], absmax, blocksize, quant_type)
    _close(OPS.gemm_4bit_t(G, packed, [n, k], absmax, blocksize, quant_type), want, n)


@pytest.mark.parametrize("impl", ["cpu", "reference"])
def test_bad_arguments_are_named(impl):
    fns = weight_matmul.KERNELS if impl == "cpu" else REF
    CB, SCB = torch.zeros(4, 8, dtype=torch.int8), torch.ones(4)
    with pytest.raises(ValueError, match=r"last dimension must equal CB.shape\[1\] \(8\)"):
        fns["int8_weight_mm"](torch.randn(2, 7), CB, SCB)
    with pytest.raises(ValueError, match=r"last dimension must equal CB.shape\[0\] \(4\)"):
        fns["int8_weight_mm_t"](torch.randn(2, 8), CB, SCB)
    with pytest.raises(TypeError, match="CB must have dtype"):
        fns["int8_weight_mm"](torch.randn(2, 8), CB.float(), SCB)
    with pytest.raises(ValueError, match="SCB must have one entry per row"):
        fns["int8_weight_mm"](torch.randn(2, 8), CB, torch.ones(3))
    with pytest.raises(ValueError, match=r"bias must have shape \(4,\)"):
        fns["int8_weight_mm"](torch.randn(2, 8), CB, SCB, torch.ones(5))
    with pytest.raises(TypeError, match="A must have dtype"):
        fns["int8_weight_mm"](torch.ones(2, 8, dtype=torch.int32), CB, SCB)
    packed, state = F.quantize_4bit(torch.randn(4, 64))
    with pytest.raises(ValueError, match="packed bytes"):
        fns["gemm_4bit_t"](torch.randn(2, 8), packed, [8, 64], state.absmax, 64, "nf4")
    with pytest.raises(ValueError, match="invalid blocksize"):
        fns["gemm_4bit_t"](torch.randn(2, 4), packed, [4, 64], state.absmax, 48, "nf4")
    with pytest.raises(ValueError, match="quant_type"):
        fns["gemm_4bit_t"](torch.randn(2, 4), packed, [4, 64], state.absmax, 64, "int4")
    with pytest.raises(ValueError, match=r"shapeB\[0\] \(4\)"):
        fns["gemm_4bit_t"](torch.randn(2, 5), packed, [4, 64], state.absmax, 64, "nf4")


def test_mixed_devices_are_refused():
    CB, SCB = torch.zeros(4, 8, dtype=torch.int8), torch.ones(4)
    with pytest.raises(RuntimeError, match="A on meta, CB on cpu"):
        OPS.int8_weight_mm(torch.randn(2, 8, device="meta"), CB, SCB)
    got = OPS.int8_weight_mm_t(torch.randn(3, 4, device="meta"), CB.to("meta"), SCB.to("meta"))
    assert got.device.type == "meta" and got.shape == (3, 8)


def test_direct_call_with_gradients_does_not_hand_autograd_the_reused_buffer(monkeypatch):
    """Called directly (not through torch.ops) with gradients on, the dense path must not let
    autograd save the thread's reused buffer: a later call would overwrite the saved weight."""
    monkeypatch.setattr(weight_matmul, "FUSED_ROWS", {i: dict.fromkeys(weight_matmul.KERNELS, -1) for i in ISAS})
    g = torch.Generator().manual_seed(5)
    CB, SCB, _ = REF["int8_vectorwise_quant"](torch.randn(8, 16, generator=g), 0.0)
    A = torch.randn(6, 16, generator=g, requires_grad=True)
    y = weight_matmul.int8_weight_mm(A, CB, SCB)
    CB2, SCB2, _ = REF["int8_vectorwise_quant"](torch.randn(8, 16, generator=g) * 5, 0.0)
    weight_matmul.int8_weight_mm(torch.randn(6, 16, generator=g), CB2, SCB2)  # would refill a shared buffer
    y.sum().backward()
    want = torch.ones(6, 8) @ REF["int8_vectorwise_dequant"](CB, SCB)
    torch.testing.assert_close(A.grad, want, rtol=1e-5, atol=1e-5)
