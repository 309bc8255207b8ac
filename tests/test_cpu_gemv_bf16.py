"""The bf16 4-bit matmul of decoding (1 to 8 rows) of every CPU instruction set against the
exact product.

On AVX2 (one row), and on AVX-512 at block size 64 with K a multiple of 128 (up to 8 rows), that
product runs in 16-bit fixed point (A scaled per 64 columns by a power of two, the code book times 2^13;
platforms/cpu/README.md): each value of A moves by at most 2^-15 of its group's largest |value|
and each code-book entry by at most 2^-14. These tests hold every path to its bound plus the bf16
rounding of the output, on inputs that stress the scaling: an outlier per group, all-zero groups,
tiny and huge groups, and inf / NaN (which take the other kernel); and each fixed-point result to
a float64 model of the fixed-point product, which a bound alone cannot tell from a kernel that
keeps fewer bits."""

from __future__ import annotations

import pytest
import torch

from bitsandbytes.backends.reference import KERNELS as REF
from bitsandbytes.backends.reference.codebooks import four_bit_decode_table
from conftest import cpu_isas, served_by_cpu_wheel, with_isa

pytest.importorskip("bitsandbytes_cpu")
pytestmark = served_by_cpu_wheel  # every test reaches the kernels through torch.ops

ISAS = cpu_isas()

CASES = ["randn", "outlier", "zero_groups", "magnitudes", "small", "huge", "deep", "tiny_product", "tiny", "inf", "nan"]
FIXED_CASES = [c for c in CASES if c not in ("tiny", "inf", "nan")]


def _fixed_point(isa: str, M: int, K: int, blocksize: int) -> bool:
    """Whether the instruction set's bf16 kernel for M rows at this shape is the fixed-point one."""
    if isa == "avx2":
        return M == 1
    return isa == "avx512" and M <= 8 and blocksize == 64 and K % 128 == 0


def _weight(N: int, K: int, blocksize: int, quant_type: str, seed: int):
    """A random [N, K] weight quantized by the reference: packed, absmax and the code book."""
    W = torch.randn(N, K, generator=torch.Generator().manual_seed(seed))
    packed, absmax = REF["quantize_4bit"](W, blocksize, quant_type, torch.uint8)
    return packed, absmax, four_bit_decode_table(quant_type)


def _scaled(absmax: torch.Tensor, case: str) -> torch.Tensor:
    """The weight's block absmax for the case: 2^-34 times smaller for "tiny_product" (the same
    packed codes quantize the weight times 2^-34)."""
    return absmax * 2.0**-34 if case == "tiny_product" else absmax


def _gemv(isa: str, A, packed, absmax, code, N: int, K: int, blocksize: int) -> torch.Tensor:
    return with_isa(isa, torch.ops.bitsandbytes.gemv_4bit)(A, packed, [N, K], absmax, code, blocksize)


def _input(K: int, case: str, seed: int, M: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(M, K, generator=g)
    if case == "outlier":  # one large value per 64 columns: the rest keep fewer bits
        A[:, 7::64] = 1000.0
    elif case == "zero_groups":
        A[:, :128] = 0.0
        A[-1, -64:] = 0.0
    elif case == "magnitudes":  # groups far apart in scale, within the fixed-point range
        A[:, :64] *= 1e-20
        A[:, 64:128] *= 1e20
        A[-1, 128:192] *= 2.0**-90
    elif case in ("small", "huge", "deep"):  # each scale on its own, where no group hides it
        A *= {"small": 1e-20, "huge": 1e20, "deep": 2.0**-90}[case]
    elif case == "tiny_product":  # with _scaled's weights: a group's scale times absmax is deep in
        A *= 2.0**-86  # the subnormal range (~2^-143) while every product stays a normal float
    elif case == "tiny":  # under 2^-96: the f32 kernel (a kernel that dropped it would give 0)
        A *= 1e-35
    elif case == "inf":
        A[-1, 5] = float("inf")
    elif case == "nan":
        A[-1, 70] = float("nan")
    return A.to(torch.bfloat16)


def _bound(A: torch.Tensor, W: torch.Tensor, absmax: torch.Tensor, exact: torch.Tensor, fixed: bool) -> torch.Tensor:
    """|result - exact| allowed per output: the output's bf16 rounding and f32 summation, plus
    - fixed point: A's rounding (2^-15 of each group's largest |value|) and the code book's
      (2^-14 of the weight's block absmax);
    - the other kernels: the weight rounded to bf16 (the code book in bf16, or code * absmax)."""
    a = A.double().abs()
    w = W.double().abs()
    base = 2.0**-8 * exact.abs() + 1e-5 * (a @ w.T)
    if not fixed:
        return base + 2.0**-8 * (a @ w.T)
    gmax = a.view(-1, 64).amax(dim=1).repeat_interleave(64).view(a.shape[0], -1)
    am = absmax.double().repeat_interleave(W.numel() // absmax.numel()).view(W.shape)
    return base + 2.0**-15 * (gmax @ w.T) + 2.0**-14 * (a @ am.T) + 2.0**-29 * (gmax @ am.T)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("M", [1, 3, 6])
@pytest.mark.parametrize("K,blocksize", [(4096, 64), (4288, 64), (2048, 128), (1024, 256), (4096, 4096), (192, 64)])
@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
@pytest.mark.parametrize("case", CASES)
def test_gemv_bf16_within_the_fixed_point_bound(isa, M, K, blocksize, quant_type, case) -> None:
    N = 96
    packed, absmax, code = _weight(N, K, blocksize, quant_type, seed=K + blocksize)
    absmax = _scaled(absmax, case)
    Wq = REF["dequantize_4bit"](packed, absmax, blocksize, quant_type, [N, K], torch.float32)
    A = _input(K, case, seed=N + K, M=M)
    got = _gemv(isa, A, packed, absmax, code, N, K, blocksize)
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
    # The fixed-point kernels run wherever A's groups fit them (not "tiny").
    bound = _bound(A, Wq, absmax, exact, fixed=_fixed_point(isa, M, K, blocksize) and case != "tiny")
    assert bool((err <= bound).all()), f"worst excess {(err - bound).max().item():.3g}"


def _fixed_point_model(
    A: torch.Tensor, packed: torch.Tensor, absmax: torch.Tensor, code: torch.Tensor, N: int, K: int, blocksize: int
) -> torch.Tensor:
    """What the fixed-point kernel computes, in float64 before its f32 summation: each row of A per
    64 columns times 2^(14 - e) rounded half to even (e: the exponent of the group's largest
    |value|), the code book times 2^13 rounded, exact integer group sums, each times 2^(e - 27) and
    its block's absmax."""
    M, G = A.shape[0], K // 64
    x = A.double().view(-1, 64)
    gmax = x.abs().amax(dim=1)
    e = torch.frexp(gmax).exponent.double() - 1  # gmax in [2^e, 2^(e+1))
    q = torch.round(x * torch.exp2(14 - e)[:, None])
    cint = torch.round(code.double() * 8192)
    p = packed.view(-1)
    idx = torch.stack([p // 16, p % 16], dim=1).view(N, K).long()  # high nibble first
    sums = (cint[idx].view(1, N, G, 64) * q.view(M, 1, G, 64)).sum(dim=3)  # exact integers
    am = absmax.double().view(N, K // blocksize).repeat_interleave(blocksize // 64, dim=1)
    return (sums * torch.exp2(e - 27).view(M, 1, G) * am.view(1, N, G)).sum(dim=2)


# AVX2: 4288 columns at block size 64 are eight-group steps, then a pair of groups and a single one.
FIXED_SHAPES = [
    (isa, M, K, blocksize)
    for isa in ISAS
    for M in range(1, 9)
    # 128 and 384 columns: one and three 128-column steps (the last one outside the step pairs).
    for K, blocksize in [
        (4096, 64),
        (4288, 64),
        (1024, 64),
        (384, 64),
        (128, 64),
        (2048, 128),
        (1024, 256),
        (4096, 4096),
    ]
    if isa in ("avx2", "avx512") and _fixed_point(isa, M, K, blocksize)
]


@pytest.mark.skipif(not FIXED_SHAPES, reason="no fixed-point kernel on this CPU")
@pytest.mark.parametrize("isa,M,K,blocksize", FIXED_SHAPES)
@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
@pytest.mark.parametrize("case", FIXED_CASES)
def test_gemv_bf16_is_the_fixed_point_product(isa, M, K, blocksize, quant_type, case) -> None:
    """A fixed-point kernel's result is the model's, rounded to bf16: within one bf16 unit
    everywhere (f32 summation may move a value across a rounding boundary) and equal in almost every
    output. Fewer bits of A, truncation instead of rounding or a wrong group exponent fail this."""
    N = 256
    packed, absmax, code = _weight(N, K, blocksize, quant_type, seed=K + blocksize + 1)
    absmax = _scaled(absmax, case)
    A = _input(K, case, seed=N + K + 1, M=M)
    got = _gemv(isa, A, packed, absmax, code, N, K, blocksize)
    model = _fixed_point_model(A, packed, absmax, code, N, K, blocksize)
    rounded = model.to(torch.bfloat16)
    assert bool(((got.double() - model).abs() <= 2.0**-7 * model.abs()).all())
    assert (got == rounded).double().mean().item() >= 0.95


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("M", [1, 3])
@pytest.mark.parametrize("scale_exp", [-99, -102, -106, -110])
def test_gemv_bf16_groups_just_below_the_fixed_point_range(isa, M, scale_exp) -> None:
    """Groups whose largest |value| lies between 2^-111 and 2^-96, where a fixed-point group scale
    2^(e - 27) would leave the normal range (its f32 bits would be wrong or zero): they take the
    float kernels, whose result is within the bf16 bound of the exact product."""
    N, K, blocksize = 64, 256, 64
    packed, absmax, code = _weight(N, K, blocksize, "nf4", seed=9)
    Wq = REF["dequantize_4bit"](packed, absmax, blocksize, "nf4", [N, K], torch.float32)
    A = (_input(K, "randn", seed=10, M=M).float() * 2.0**scale_exp).to(torch.bfloat16)
    assert A.float().abs().max() < 2.0**-96
    got = _gemv(isa, A, packed, absmax, code, N, K, blocksize)
    exact = A.double() @ Wq.double().T
    err = (got.double() - exact).abs()
    assert bool((err <= _bound(A, Wq, absmax, exact, fixed=False)).all()), f"worst error {err.max().item():.3g}"
