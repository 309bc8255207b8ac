"""The batch-1 bf16 4-bit matmul of every CPU instruction set against the exact product.

On AVX2 that product runs in 16-bit fixed point (A scaled per 64 columns by a power of two, the
code book times 2^13; platforms/cpu/README.md): each value of A moves by at most 2^-15 of its
group's largest |value| and each code-book entry by at most 2^-14. These tests hold every path to
that bound plus the bf16 rounding of the output, on inputs that stress the scaling: an outlier per
group, all-zero groups, tiny and huge groups, and inf / NaN (which take the f32 kernel)."""

from __future__ import annotations

import pytest
import torch

from bitsandbytes.backends.reference import KERNELS as REF
from bitsandbytes.backends.reference.codebooks import four_bit_decode_table

bitsandbytes_cpu = pytest.importorskip("bitsandbytes_cpu")

ISAS = bitsandbytes_cpu.build_info().get("isa_usable", [])


def _input(K: int, case: str, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(1, K, generator=g)
    if case == "outlier":  # one large value per 64 columns: the rest keep fewer bits
        A[0, 7::64] = 1000.0
    elif case == "zero_groups":
        A[0, :128] = 0.0
        A[0, -64:] = 0.0
    elif case == "magnitudes":  # groups far apart in scale, within the fixed-point range
        A[0, :64] *= 1e-20
        A[0, 64:128] *= 1e20
        A[0, 128:192] *= 2.0**-90
    elif case == "tiny":  # under 2^-96: the f32 kernel
        A[0, 64:128] *= 1e-35
    elif case == "inf":
        A[0, 5] = float("inf")
    elif case == "nan":
        A[0, 70] = float("nan")
    return A.to(torch.bfloat16)


def _bound(A: torch.Tensor, W: torch.Tensor, absmax: torch.Tensor, exact: torch.Tensor, fixed: bool) -> torch.Tensor:
    """|result - exact| allowed per output: the output's bf16 rounding and f32 summation, plus
    - fixed point: A's rounding (2^-15 of each group's largest |value|) and the code book's
      (2^-14 of the weight's block absmax);
    - the other kernels: the weight rounded to bf16 (the code book in bf16, or code * absmax)."""
    a = A.double().abs()
    w = W.double().abs()
    base = 2.0**-8 * exact.abs() + 1e-6 * (a @ w.T)
    if not fixed:
        return base + 2.0**-8 * (a @ w.T)
    gmax = a.view(-1, 64).amax(dim=1).repeat_interleave(64).view(1, -1)
    am = absmax.double().repeat_interleave(W.numel() // absmax.numel()).view(W.shape)
    return base + 2.0**-15 * (gmax @ w.T) + 2.0**-14 * (a @ am.T)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("K,blocksize", [(4096, 64), (2048, 128), (1024, 256), (4096, 4096), (192, 64)])
@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
@pytest.mark.parametrize("case", ["randn", "outlier", "zero_groups", "magnitudes", "tiny", "inf", "nan"])
def test_gemv_bf16_within_the_fixed_point_bound(isa, K, blocksize, quant_type, case) -> None:
    N = 96
    W = torch.randn(N, K, generator=torch.Generator().manual_seed(K + blocksize))
    packed, absmax = REF["quantize_4bit"](W, blocksize, quant_type, torch.uint8)
    code = four_bit_decode_table(quant_type)
    Wq = REF["dequantize_4bit"](packed, absmax, blocksize, quant_type, [N, K], torch.float32)
    A = _input(K, case, seed=N + K)
    bitsandbytes_cpu.set_isa(isa)
    try:
        got = torch.ops.bitsandbytes.gemv_4bit(A, packed, [N, K], absmax, code, blocksize)
    finally:
        bitsandbytes_cpu.set_isa("auto")
    want = REF["gemv_4bit"](A, packed, [N, K], absmax, code, blocksize)
    assert got.dtype == torch.bfloat16 and got.shape == want.shape
    if case in ("inf", "nan"):
        # The same non-finite outputs as the reference, finite ones within its tolerance.
        assert torch.equal(got.isnan(), want.isnan()) and torch.equal(got.isinf(), want.isinf())
        fin = want.isfinite()
        torch.testing.assert_close(got[fin].float(), want[fin].float(), rtol=1.6e-2, atol=1.6e-2 * K**0.5)
        return
    exact = A.double() @ Wq.double().T
    err = (got.double() - exact).abs()
    # AVX2 runs the fixed-point kernel wherever A's groups fit it (not "tiny").
    bound = _bound(A, Wq, absmax, exact, fixed=isa == "avx2" and case != "tiny")
    assert bool((err <= bound).all()), f"worst excess {(err - bound).max().item():.3g}"
