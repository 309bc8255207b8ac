"""bitsandbytes-cpu's matmuls against a weight kept quantized (bitsandbytes_cpu.weight_matmul), on
every usable instruction set, against dequantize-then-matmul with the reference kernels."""

from __future__ import annotations

import pytest
import torch

cpu = pytest.importorskip("bitsandbytes_cpu")

import bitsandbytes.functional as F  # noqa: E402
from bitsandbytes.backends.reference import KERNELS as REF  # noqa: E402
from bitsandbytes_cpu.weight_matmul import int8_weight_matmul, weight_matmul_t  # noqa: E402

ISAS = cpu.build_info()["isa_usable"]
SHAPES = [((1,), 5, 33), ((3, 2), 17, 300), ((8,), 64, 512), ((2,), 3, 65), ((0,), 4, 64)]
# The kernels sum in f32 without rounding the dequantized weight: within the output's rounding
# of the reference (which rounds the weight to the input dtype first) plus f32 summation order.
TOL = {torch.float32: 2e-6, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


@pytest.fixture(params=ISAS)
def isa(request):
    cpu.set_isa(request.param)
    yield request.param
    cpu.set_isa("auto")


def _int8_weight(n: int, k: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    w = torch.randn(n, k, generator=g)
    CB, SCB, _ = REF["int8_vectorwise_quant"](w, 0.0)
    return CB, SCB, REF["int8_vectorwise_dequant"](CB, SCB)


def _close(got: torch.Tensor, want: torch.Tensor, k: int) -> None:
    tol = TOL[got.dtype]
    assert got.dtype == want.dtype and got.shape == want.shape
    scale = want.float().abs().max().item() if want.numel() else 0.0
    torch.testing.assert_close(got.float(), want.float(), rtol=tol, atol=tol * max(scale, 1e-3) * (1 + k**0.5 / 8))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("lead,n,k", SHAPES)
def test_int8_weight_matmul_and_input_gradient(isa, dtype, lead, n, k):
    g = torch.Generator().manual_seed(n * 1000 + k)
    CB, SCB, W = _int8_weight(n, k, g)
    A = torch.randn(*lead, k, generator=g).to(dtype)
    bias = torch.randn(n, generator=g).to(dtype)
    want = torch.nn.functional.linear(A, W.to(dtype), bias)
    _close(int8_weight_matmul(A, CB, SCB, bias), want, k)
    _close(int8_weight_matmul(A, CB, SCB), torch.nn.functional.linear(A, W.to(dtype)), k)
    G = torch.randn(*lead, n, generator=g).to(dtype)
    _close(weight_matmul_t(G, CB, SCB), G @ W.to(dtype), n)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
@pytest.mark.parametrize("lead,n,k", SHAPES)
def test_4bit_input_gradient(isa, dtype, quant_type, lead, n, k):
    g = torch.Generator().manual_seed(n * 7 + k)
    w = torch.randn(n, k, generator=g)
    packed, absmax = REF["quantize_4bit"](w, 64, quant_type, torch.uint8)
    W = REF["dequantize_4bit"](packed, absmax, 64, quant_type, [n, k], torch.float32)
    G = torch.randn(*lead, n, generator=g).to(dtype)
    got = weight_matmul_t(G, packed=packed, absmax=absmax, shape=(n, k), blocksize=64, quant_type=quant_type)
    _close(got, G @ W.to(dtype), n)


def test_bad_arguments_are_named():
    CB = torch.zeros(4, 8, dtype=torch.int8)
    SCB = torch.ones(4)
    with pytest.raises(ValueError, match="last dimension must be 8"):
        int8_weight_matmul(torch.randn(2, 7), CB, SCB)
    with pytest.raises(TypeError, match="CB must have dtype"):
        int8_weight_matmul(torch.randn(2, 8), CB.float(), SCB)
    with pytest.raises(ValueError, match="SCB must have one entry per row"):
        int8_weight_matmul(torch.randn(2, 8), CB, torch.ones(3))
    with pytest.raises(ValueError, match="bias must have 4 entries"):
        int8_weight_matmul(torch.randn(2, 8), CB, SCB, torch.ones(5))
    with pytest.raises(RuntimeError, match="A on meta"):
        int8_weight_matmul(torch.randn(2, 8, device="meta"), CB, SCB)
    with pytest.raises(ValueError, match="either CB and SCB"):
        weight_matmul_t(torch.randn(2, 4))
    packed, state = F.quantize_4bit(torch.randn(4, 64))
    with pytest.raises(ValueError, match="packed bytes"):
        weight_matmul_t(torch.randn(2, 8), packed=packed, absmax=state.absmax, shape=(8, 64))
    with pytest.raises(ValueError, match="invalid blocksize"):
        weight_matmul_t(torch.randn(2, 4), packed=packed, absmax=state.absmax, shape=(4, 64), blocksize=48)
