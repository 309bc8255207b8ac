"""The 4-bit matmuls and LLM.int8() ops of every implementation present against the reference
(the CPU wheel once per instruction set, see conftest.implementations).

The int8 ops are exact; the float matmuls sum in a different order than torch does, so they are
compared within a few units in the last place of the output dtype.
"""

from __future__ import annotations

import math

import pytest
import torch

from bitsandbytes.backends.reference import KERNELS as REF
from bitsandbytes.backends.reference.codebooks import four_bit_decode_table
from conftest import impl_params

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}
# (N, K, blocksize): fast paths (K a multiple of 64 and of the block), K % 64 != 0, blocks that
# straddle rows (K % blocksize != 0) and an odd weight element count.
SHAPES = [(64, 256, 64), (40, 4096, 256), (33, 320, 64), (17, 96, 32), (16, 200, 128), (7, 33, 64)]
BATCHES = [1, 2, 3, 8, 19]


def quantized(N: int, K: int, blocksize: int, quant_type: str, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(N, K, generator=g)
    packed, absmax = REF["quantize_4bit"](W, blocksize, quant_type, torch.uint8)
    return packed, absmax


def close(got: torch.Tensor, want: torch.Tensor, K: int) -> None:
    assert got.dtype == want.dtype and got.shape == want.shape
    tol = TOL[want.dtype]
    torch.testing.assert_close(got.float(), want.float(), rtol=tol, atol=tol * math.sqrt(K))


@pytest.mark.parametrize("device,impl,fn", impl_params("gemv_4bit"))
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("N,K,blocksize", SHAPES)
@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
def test_gemv_4bit(device, impl, fn, dtype, N, K, blocksize, quant_type):
    packed, absmax = quantized(N, K, blocksize, quant_type)
    code = four_bit_decode_table(quant_type)
    g = torch.Generator().manual_seed(1)
    for batch in BATCHES:
        A = torch.randn(batch, K, generator=g).to(dtype)
        got = fn(A.to(device), packed.to(device), [N, K], absmax.to(device), code.to(device), blocksize)
        close(got.cpu(), REF["gemv_4bit"](A, packed, [N, K], absmax, code, blocksize), K)


@pytest.mark.parametrize("device,impl,fn", [*impl_params("gemv_4bit"), pytest.param("cpu", "ref", REF["gemv_4bit"])])
@pytest.mark.parametrize("blocksize", [2**32 + 64, 2**62])
def test_gemv_4bit_block_longer_than_the_weight(device, impl, fn, blocksize):
    # One block of all 7 * 33 weights: the result of the block size that just covers them, with
    # no scale expanded to the block's length (2**62 of them would overflow the allocation).
    packed, absmax = quantized(7, 33, 256, "nf4")
    code = four_bit_decode_table("nf4")
    A = torch.randn(2, 33)
    got = fn(A.to(device), packed.to(device), [7, 33], absmax.to(device), code.to(device), blocksize)
    close(got.cpu(), REF["gemv_4bit"](A, packed, [7, 33], absmax, code, 256), 33)


@pytest.mark.parametrize("device,impl,fn", impl_params("gemv_4bit.out"))
def test_gemv_4bit_out_and_3d_input(device, impl, fn):
    N, K = 48, 128
    packed, absmax = quantized(N, K, 64, "nf4")
    code = four_bit_decode_table("nf4")
    A = torch.randn(2, 3, K).to(torch.bfloat16)
    out = torch.empty(2, 3, N, dtype=torch.bfloat16, device=device)
    fn(A.to(device), packed.to(device), [N, K], absmax.to(device), code.to(device), 64, out)
    close(out.cpu(), REF["gemv_4bit"](A, packed, [N, K], absmax, code, 64), K)


@pytest.mark.parametrize("device,impl,fn", impl_params("gemm_4bit"))
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("nested", [False, True])
@pytest.mark.parametrize("bias", [False, True])
def test_gemm_4bit(device, impl, fn, dtype, nested, bias):
    N, K, bs = 72, 512, 64
    packed, absmax = quantized(N, K, bs, "nf4")
    extra = {}
    if nested:
        offset = absmax.mean()
        code8 = torch.linspace(-1, 1, 256)
        a8, a_absmax = REF["quantize_blockwise"](absmax - offset, code8, 256)
        extra = {"absmax_8bit": a8, "absmax_code": code8, "absmax_offset": offset.view(1)}
        absmax = a_absmax
    g = torch.Generator().manual_seed(2)
    b = torch.randn(N, generator=g).to(dtype) if bias else None
    for batch in (1, 5, 16, 40):  # 40 rows: the CPU wheel's dequantize + dense GEMM path
        A = torch.randn(batch, K, generator=g).to(dtype)
        dev = {k: v.to(device) for k, v in extra.items()}
        got = fn(
            A.to(device), packed.to(device), [N, K], absmax.to(device), bs, "nf4",
            b.to(device) if b is not None else None, **dev,
        )  # fmt: skip
        want = REF["gemm_4bit"](A, packed, [N, K], absmax, bs, "nf4", b, **extra)
        close(got.cpu(), want, K)


@pytest.mark.parametrize("device,impl,fn", impl_params("gemv_4bit"))
@pytest.mark.parametrize("N,K,blocksize", [(3, 10, 5), (4, 64, 33), (2, 8, 1)])
def test_gemv_4bit_odd_block_size_with_even_rows(device, impl, fn, N, K, blocksize):
    """An odd block size with an even K: rows start on a byte, yet a byte's two weights can lie
    in two blocks, each scaled by its own absmax."""
    g = torch.Generator().manual_seed(6)
    packed = torch.randint(0, 256, (N * K // 2, 1), dtype=torch.uint8, generator=g)
    absmax = torch.rand(-(N * K // -blocksize), generator=g) * 4 + 0.5
    code = four_bit_decode_table("fp4")
    A = torch.randn(3, K, generator=g)
    got = fn(A.to(device), packed.to(device), [N, K], absmax.to(device), code.to(device), blocksize)
    close(got.cpu(), REF["gemv_4bit"](A, packed, [N, K], absmax, code, blocksize), K)


@pytest.mark.parametrize("device,impl,fn", impl_params("gemv_4bit"))
def test_gemv_4bit_misaligned_views(device, impl, fn):
    """Inputs that start at odd addresses (views at an offset) give the same result."""
    N, K = 32, 192
    packed, absmax = quantized(N, K, 64, "nf4")
    code = four_bit_decode_table("nf4")
    A = torch.randn(1, K + 1).to(torch.bfloat16)[:, 1:]
    packed_off = torch.cat([torch.zeros(1, 1, dtype=torch.uint8), packed])[1:]
    got = fn(A.to(device), packed_off.to(device), [N, K], absmax.to(device), code.to(device), 64)
    close(got.cpu(), REF["gemv_4bit"](A.contiguous(), packed, [N, K], absmax, code, 64), K)


@pytest.mark.parametrize("device,impl,fn", impl_params("int8_vectorwise_quant"))
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows,cols", [(1, 70), (5, 64), (33, 129)])
@pytest.mark.parametrize("threshold", [0.0, 2.5])
def test_int8_vectorwise_quant(device, impl, fn, dtype, rows, cols, threshold):
    g = torch.Generator().manual_seed(3)
    A = (torch.randn(rows, cols, generator=g) * 1.5).to(dtype)
    A[0, 3] = 0.0
    if rows > 2:
        A[2] = 0.0  # an all-zero row
    CA, stats, cols_out = fn(A.to(device), threshold)
    rCA, rstats, rcols = REF["int8_vectorwise_quant"](A, threshold)
    assert torch.equal(CA.cpu(), rCA) and torch.equal(stats.cpu(), rstats)
    assert (cols_out is None) == (rcols is None)
    if rcols is not None:
        assert torch.equal(cols_out.cpu(), rcols)


@pytest.mark.parametrize("device,impl,fn", impl_params("int8_vectorwise_dequant"))
@pytest.mark.parametrize("shape", [(1, 70), (33, 129), (4096,), (2, 3, 64), (3, 0), (0, 5), (0,)])
def test_int8_vectorwise_dequant(device, impl, fn, shape):
    """Bit for bit the reference (A * stats[row], then * 1/127), for every int8 value and row
    statistics of every magnitude, zero, infinity and NaN."""
    g = torch.Generator().manual_seed(5)
    A = torch.randint(-128, 128, shape, dtype=torch.int8, generator=g)
    if A.numel() >= 256:
        A.view(-1)[:256] = torch.arange(-128, 128, dtype=torch.int8)
    rows = A.numel() // shape[-1] if shape[-1] else (0 if len(shape) == 1 else math.prod(shape[:-1]))
    stats = torch.rand(rows, generator=g) * torch.logspace(-40, 38, rows) if rows else torch.empty(0)
    special = [0.0, float("inf"), float("nan"), 1.0]
    stats[: len(special)] = torch.tensor(special[: min(rows, len(special))])
    got = fn(A.to(device), stats.to(device))
    want = REF["int8_vectorwise_dequant"](A, stats)
    assert got.dtype == torch.float32 and got.shape == want.shape
    assert torch.equal(got.cpu().view(torch.int32), want.view(torch.int32))


@pytest.mark.parametrize("device,impl,fn", impl_params("int8_vectorwise_quant"))
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("threshold", [0.0, 2.5])
def test_int8_vectorwise_quant_special_values(device, impl, fn, dtype, threshold):
    """NaN and infinity in rows (a NaN row quantizes to zeros with a NaN statistic, an infinite one
    to +-127 where infinite), an outlier-only row, halfway cases of the rounding, 3-D input, and
    rows of lengths around the vector width."""
    g = torch.Generator().manual_seed(6)
    for rows, cols in [(6, 37), (1, 9), (4, 8), (3, 1)]:
        A = torch.randn(rows, cols, generator=g).to(dtype)
        A[0, 0] = float("nan")
        if rows > 1:
            A[1, cols // 2] = float("inf")
        if rows > 2:
            A[2] = 8.0  # every element an outlier when threshold > 0
        if rows > 3:
            A[3] = torch.arange(cols) * 0.5 - 2.0  # exact halves after scaling
        for x in (A, A.reshape(1, rows, cols)):
            CA, stats, cols_out = fn(x.to(device), threshold)
            rCA, rstats, rcols = REF["int8_vectorwise_quant"](x, threshold)
            assert torch.equal(CA.cpu(), rCA)
            torch.testing.assert_close(stats.cpu(), rstats, rtol=0, atol=0, equal_nan=True)
            assert (cols_out is None) == (rcols is None)
            if rcols is not None:
                assert torch.equal(cols_out.cpu(), rcols)


@pytest.mark.parametrize("device,impl,fn", impl_params("int8_vectorwise_quant"))
@pytest.mark.parametrize("dtype", DTYPES)
def test_int8_vectorwise_quant_value_at_the_threshold_is_an_outlier(device, impl, fn, dtype):
    """|A| equal to the threshold makes an outlier (``>=``): its column is listed and zeroed in
    every row, two rows as well as more, and the value counts in no row's statistic; with the
    threshold one step above it, nothing is an outlier."""
    g = torch.Generator().manual_seed(9)
    above = 2.5 + (2.5 - torch.nextafter(torch.tensor(2.5, dtype=dtype), torch.tensor(0.0, dtype=dtype)).item())
    for rows in (2, 4):
        A = (torch.rand(rows, 40, generator=g) - 0.5).to(dtype)  # |A| < 0.5
        A[1, 17] = -2.5  # exactly representable in every float dtype
        A[0, 30] = 2.0
        CA, stats, cols_out = fn(A.to(device), 2.5)
        rCA, rstats, rcols = REF["int8_vectorwise_quant"](A, 2.5)
        assert rcols.tolist() == [17] and (rCA[:, 17] == 0).all() and rstats[1] < 0.5
        assert torch.equal(CA.cpu(), rCA) and torch.equal(stats.cpu(), rstats)
        assert torch.equal(cols_out.cpu(), rcols)
        CA, stats, cols_out = fn(A.to(device), above)
        rCA, rstats, rcols = REF["int8_vectorwise_quant"](A, above)
        assert rcols.numel() == 0 and rstats[1] == 2.5
        assert torch.equal(CA.cpu(), rCA) and torch.equal(stats.cpu(), rstats)
        assert torch.equal(cols_out.cpu(), rcols)


@pytest.mark.parametrize("device,impl,fn", impl_params("int8_double_quant"))
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("threshold", [0.0, 2.5])
@pytest.mark.parametrize("shape", [(1, 70), (5, 64), (33, 129), (2, 3, 16), (7,), (3, 0), (0, 4)])
def test_int8_double_quant(device, impl, fn, dtype, threshold, shape):
    g = torch.Generator().manual_seed(7)
    A = (torch.randn(shape, generator=g) * 1.5).to(dtype)
    if A.dim() == 2 and A.shape[0] > 2 and A.shape[1] > 3:
        A[2] = 0.0
        A[:, 3] = 0.0
        A[1, 1] = float("nan")
    got = fn(A.to(device), threshold)
    want = REF["int8_double_quant"](A, threshold)
    for x, y in zip(got, want):
        assert (x is None) == (y is None)
        if y is not None:
            assert x.dtype == y.dtype and x.shape == y.shape
            if y.is_floating_point():  # the statistics; NaN where a row or column holds one
                torch.testing.assert_close(x.cpu(), y, rtol=0, atol=0, equal_nan=True)
            else:
                assert torch.equal(x.cpu(), y)


@pytest.mark.parametrize("device,impl,fn", impl_params("int8_linear_matmul"))
@pytest.mark.parametrize("m,n,k", [(1, 64, 64), (3, 17, 100), (8, 40, 4096), (5, 9, 7)])
def test_int8_linear_matmul(device, impl, fn, m, n, k):
    g = torch.Generator().manual_seed(4)
    A = torch.randint(-128, 128, (m, k), dtype=torch.int8, generator=g)
    B = torch.randint(-128, 128, (n, k), dtype=torch.int8, generator=g)
    A[0, :8] = -128  # the extremes, where sign tricks overflow
    B[0, :8] = -128
    got = fn(A.to(device), B.to(device))
    assert torch.equal(got.cpu(), REF["int8_linear_matmul"](A, B))


@pytest.mark.parametrize("device,impl,fn", impl_params("int8_mm_dequant"))
@pytest.mark.parametrize("dtype", [None, *DTYPES])
@pytest.mark.parametrize("bias_dtype", [None, torch.float16, torch.float32])
def test_int8_mm_dequant(device, impl, fn, dtype, bias_dtype):
    g = torch.Generator().manual_seed(5)
    C = torch.randint(-(2**20), 2**20, (6, 37), dtype=torch.int32, generator=g)
    rs, cs = torch.rand(6, generator=g) * 5, torch.rand(37, generator=g) * 5
    bias = torch.randn(37, generator=g).to(bias_dtype) if bias_dtype else None
    got = fn(C.to(device), rs.to(device), cs.to(device), dtype=dtype, bias=None if bias is None else bias.to(device))
    want = REF["int8_mm_dequant"](C, rs, cs, dtype=dtype, bias=bias)
    assert got.dtype == want.dtype and torch.equal(got.cpu(), want)


@pytest.mark.parametrize("device,impl,fn", impl_params("int8_mixed_scaled_mm"))
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_int8_mixed_scaled_mm(device, impl, fn, dtype):
    g = torch.Generator().manual_seed(6)
    A = torch.randn(4, 256, generator=g).to(dtype)
    A[:, 7] *= 30
    W = torch.randn(48, 256, generator=g)
    CA, SCA, cols = REF["int8_vectorwise_quant"](A, 6.0)
    CB, SCB, _ = REF["int8_vectorwise_quant"](W, 0.0)
    bias = torch.randn(48, generator=g).to(dtype)
    dev = [t.to(device) for t in (A, CA, CB, SCA, SCB, cols, bias)]
    out, sub = fn(*dev)
    rout, rsub = REF["int8_mixed_scaled_mm"](A, CA, CB, SCA, SCB, cols, bias)
    assert torch.equal(sub.cpu(), rsub)
    torch.testing.assert_close(out.cpu().float(), rout.float(), rtol=TOL[dtype], atol=TOL[dtype])


@pytest.mark.parametrize("device,impl,fn", impl_params("quantize_blockwise"))
@pytest.mark.parametrize("code_name", ["dynamic_signed", "dynamic_unsigned", "linear", "cubic"])
def test_quantize_blockwise_on_and_beside_every_midpoint(device, impl, fn, code_name):
    """Exact nearest code for values on each midpoint and one ulp either side (the CPU kernels
    search through a bucket table of the f32 bit pattern: its edges must not matter)."""
    from bitsandbytes.backends.reference.codebooks import dynamic_map, midpoints

    t = torch.linspace(-1, 1, 256)
    code = {
        "dynamic_signed": dynamic_map(True),
        "dynamic_unsigned": dynamic_map(False),
        "linear": t,
        "cubic": t**3,
    }[code_name]
    mids = midpoints(code)
    vals = torch.cat([mids, torch.nextafter(mids, torch.tensor(2.0)), torch.nextafter(mids, torch.tensor(-2.0))])
    vals = torch.cat([torch.tensor([1.0]), vals, -vals, torch.tensor([0.0, -0.0, 1e-30, -1e-30])])
    x = vals.repeat(3)
    got_q, got_a = fn(x.to(device), code.to(device), 1024)
    ref_q, ref_a = REF["quantize_blockwise"](x, code, 1024)
    assert torch.equal(got_q.cpu(), ref_q) and torch.equal(got_a.cpu(), ref_a)
