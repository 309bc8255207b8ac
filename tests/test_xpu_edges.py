"""bitsandbytes-xpu at the edges, against the reference: empty, one-element and ragged tensors,
every block size and dtype, strided inputs, NaN/inf/-0.0, nested absmax, odd matmul shapes, each
optimizer's options, aliased ``out`` and bad input (the reference's error, naming the argument).
The conformance suite's standards: bit for bit, except the 4-bit matmuls (the output dtype's
rounding) and the optimizer parameter (bit for bit against bitsandbytes-cpu where loaded).
Run by ``nox -s tests-xpu-interpret`` (``TRITON_INTERPRET=1``, kernels on CPU tensors)."""

from __future__ import annotations

import math
import os

import pytest
import torch

import bitsandbytes
from bitsandbytes.backends.reference import KERNELS as REF
from bitsandbytes.backends.reference.codebooks import dynamic_map, four_bit_decode_table

xpu = pytest.importorskip("bitsandbytes_xpu")

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
pytestmark = pytest.mark.skipif(
    not INTERPRET,
    reason="the Triton kernels run on CPU tensors only with TRITON_INTERPRET=1 (nox -s tests-xpu-interpret)",
)

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}  # test_ops_conformance_matmul


def K(op: str):
    pytest.importorskip("triton")
    return xpu.host_kernels()[op]


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view(torch.int16 if t.element_size() == 2 else torch.int32) if t.is_floating_point() else t


def assert_bits(got, want) -> None:
    """Equal shape, dtype and bits (NaN payloads included); tuples element by element."""
    if want is None or isinstance(want, (tuple, list)):
        assert got is None if want is None else len(got) == len(want)
        for x, y in zip(got or (), want or ()):
            assert_bits(x, y)
        return
    assert got.shape == want.shape and got.dtype == want.dtype, (got.shape, want.shape, got.dtype, want.dtype)
    assert torch.equal(_bits(got), _bits(want)), (got, want)


def both(op: str, *args, **kwargs):
    """(xpu result, reference result) of an op that writes none of its arguments, on the same
    tensors (a clone would make a strided view contiguous)."""
    return K(op)(*args, **kwargs), REF[op](*args, **kwargs)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def with_specials(t: torch.Tensor) -> torch.Tensor:
    """NaN, +-inf and -0.0 at the front of a flat tensor of at least 6 elements."""
    f = t.view(-1)
    f[0], f[1], f[2], f[3] = float("nan"), float("inf"), -0.0, float("-inf")
    return t


# ---- 4-bit quantization --------------------------------------------------------------------------


@pytest.mark.parametrize("blocksize", [32, 64, 128, 256, 512, 1024, 2048, 4096])
@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
def test_4bit_every_blocksize_ragged_with_specials(blocksize, quant_type):
    """An odd length that is no multiple of the block, NaN/inf/-0.0 in the first block."""
    x = with_specials(torch.randn(blocksize + 37, generator=gen(1)))
    (q, a), (rq, ra) = both("quantize_4bit", x, blocksize, quant_type, torch.uint8)
    assert_bits((q, a), (rq, ra))
    for dtype in DTYPES:
        assert_bits(*both("dequantize_4bit", rq, ra, blocksize, quant_type, [x.numel()], dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [0, 1, 2, 3])
def test_4bit_empty_and_tiny(dtype, n):
    x = torch.randn(n, generator=gen(2)).to(dtype)
    (q, a), (rq, ra) = both("quantize_4bit", x, 64, "nf4", torch.uint8)
    assert_bits((q, a), (rq, ra))
    assert q.shape == ((n + 1) // 2, 1) and a.shape == (math.ceil(n / 64),)
    assert_bits(*both("dequantize_4bit", rq, ra, 64, "nf4", [n], dtype))


@pytest.mark.parametrize("storage", [torch.int8, torch.float16, torch.bfloat16, torch.float32])
def test_4bit_quant_storage_round_trip(storage):
    x = torch.randn(3, 16, generator=gen(3))
    (q, a), (rq, ra) = both("quantize_4bit", x, 32, "fp4", storage)
    assert q.dtype == storage and torch.equal(q.view(torch.uint8), rq.view(torch.uint8)) and torch.equal(a, ra)
    assert_bits(*both("dequantize_4bit", rq, ra, 32, "fp4", [3, 16], torch.bfloat16))
    e, re_ = both("quantize_4bit", torch.empty(0), 32, "fp4", storage)
    assert_bits(e, re_)


def test_4bit_strided_input_and_absmax():
    base = torch.randn(40, 12, generator=gen(4))
    x = base[:, ::3]  # non-contiguous, 160 elements
    assert_bits(*both("quantize_4bit", x, 64, "nf4", torch.uint8))
    q, a = REF["quantize_4bit"](x, 64, "nf4", torch.uint8)
    a_strided = torch.stack([a, a + 1], dim=1)[:, 0]
    assert not a_strided.is_contiguous()
    assert_bits(*both("dequantize_4bit", q, a_strided, 64, "nf4", [40, 4], torch.float16))


@pytest.mark.parametrize("dtype", DTYPES)
def test_4bit_dequantize_nan_inf_and_signed_zero_absmax(dtype):
    q, a = REF["quantize_4bit"](torch.randn(128, generator=gen(5)), 32, "fp4", torch.uint8)
    a[0], a[1], a[2] = float("nan"), float("inf"), -0.0
    a[3] = -float("nan")
    assert_bits(*both("dequantize_4bit", q, a, 32, "fp4", [128], dtype))


# ---- Block-wise 8-bit ----------------------------------------------------------------------------


@pytest.mark.parametrize("blocksize", [1, 3, 100, 4097, 2**31, 2**32 + 64])
@pytest.mark.parametrize("n", [0, 1, 257])
def test_blockwise_any_blocksize_and_length(blocksize, n):
    """Any positive block size (odd, above a tile, above 32 bits) and any length, specials included."""
    x = torch.randn(n, generator=gen(6))
    if n > 6:
        with_specials(x)
    code = dynamic_map()
    (q, a), (rq, ra) = both("quantize_blockwise", x, code, blocksize)
    assert_bits((q, a), (rq, ra))
    for dtype in DTYPES:
        assert_bits(*both("dequantize_blockwise", rq, ra, code, blocksize, dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_blockwise_half_inputs_and_strided_arguments(dtype):
    x = torch.randn(24, 10, generator=gen(7)).to(dtype)[:, 1::2]
    code = dynamic_map(False)
    code_strided = torch.stack([code, code], dim=1)[:, 0]
    assert_bits(*both("quantize_blockwise", x, code_strided, 7))
    q, a = REF["quantize_blockwise"](x, code, 7)
    assert_bits(*both("dequantize_blockwise", q.t(), a, code_strided, 7, dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_blockwise_dequantize_special_absmax(dtype):
    q = torch.arange(256, dtype=torch.uint8)
    a = torch.tensor([float("nan"), float("inf"), -0.0, 0.0])
    a[0] = -float("nan")
    assert_bits(*both("dequantize_blockwise", q, a, dynamic_map(), 64, dtype))


def test_dequantize_out_aliasing_an_input():
    """``out`` sharing memory with an input gets the reference's answer (a fresh result copied in)."""
    code = dynamic_map()
    A = torch.tensor([255, 0, 128, 200], dtype=torch.uint8)
    results = []
    for fn in (K("dequantize_blockwise.out"), REF["dequantize_blockwise.out"]):
        absmax = torch.tensor([1.0, 2.0, 3.0, 4.0])
        fn(A, absmax, code, 1, torch.float32, absmax)  # out is absmax itself
        buf = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])
        fn(A, buf[:4], code, 1, torch.float32, buf[1:])  # shifted by one element
        results.append((absmax, buf))
    assert_bits(results[0], results[1])


# ---- 4-bit matmuls -------------------------------------------------------------------------------


def _packed(N: int, Kd: int, blocksize: int, seed: int = 8):
    """A packed [N, K] weight of random codes with one absmax per block (any block size)."""
    g, n = gen(seed), N * Kd
    codes = torch.randint(0, 16, (n + n % 2,), dtype=torch.uint8, generator=g)
    packed = ((codes[0::2] << 4) | codes[1::2]).reshape(-1, 1)
    absmax = torch.rand(max(1, math.ceil(n / blocksize)) if n else 0, generator=g) + 0.5
    return packed, absmax


def assert_mm(got, want, Kd) -> None:
    assert got.shape == want.shape and got.dtype == want.dtype
    tol = TOL[want.dtype]
    torch.testing.assert_close(got.float(), want.float(), rtol=tol, atol=tol * math.sqrt(max(Kd, 1)))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(  # odd K (blocks straddle rows), odd blocks and 1-D A, even blocks no power of two
    "N,Kd,blocksize,shape",  # and 3-D A, nine rows (two launches), strided A, one element
    [(5, 33, 32, (1, 33)), (4, 7, 3, (7,)), (2, 10, 6, (2, 3, 10)), (3, 65, 65, (9, 65)), (3, 64, 64, (2, 128)),
     (1, 1, 1, (1, 1))],
)  # fmt: skip
def test_gemv_4bit_odd_shapes(dtype, N, Kd, blocksize, shape):
    packed, absmax = _packed(N, Kd, blocksize)
    A = torch.randn(*shape, generator=gen(9)).to(dtype)
    A = A[:, ::2] if shape == (2, 128) else A
    table = four_bit_decode_table("nf4")
    assert_mm(*both("gemv_4bit", A, packed, [N, Kd], absmax, table, blocksize), Kd)


@pytest.mark.parametrize("shape", [(3, 0), (0, 64), (2, 0, 64)])
def test_gemv_and_gemm_4bit_empty(shape):
    N, Kd = 4, shape[-1]
    packed, absmax = _packed(N, Kd, 64)
    A = torch.randn(*shape)
    table = four_bit_decode_table("fp4")
    assert_bits(*both("gemv_4bit", A, packed, [N, Kd], absmax, table, 64))
    assert_bits(*both("gemm_4bit", A, packed, [N, Kd], absmax, 64, "fp4", torch.randn(N)))


def test_gemv_4bit_block_size_above_32_bits():
    """One block of 2**32 + 64 elements: blocks indexed in 64 bits (the reference would allocate the
    whole block, so the expected value is computed here)."""
    packed, table = _packed(3, 7, 64)[0], four_bit_decode_table("fp4")
    A = torch.randn(2, 7, generator=gen(10))
    codes = torch.stack([packed.view(-1) >> 4, packed.view(-1) & 15], dim=1).view(-1)[:21].long()
    got = K("gemv_4bit")(A, packed, [3, 7], torch.tensor([1.5]), table, 2**32 + 64)
    torch.testing.assert_close(got, A @ (table[codes] * 1.5).view(3, 7).t(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("rows", [1, 9, 16, 17])
@pytest.mark.parametrize("dtype", DTYPES)
def test_gemm_4bit_bias_of_another_dtype_and_strided(rows, dtype):
    """Bias in f32 / strided with the fused kernel (one or two launches) and the dense path."""
    packed, absmax = REF["quantize_4bit"](torch.randn(6, 64, generator=gen(11)), 64, "nf4", torch.uint8)
    A = torch.randn(rows, 128, generator=gen(12)).to(dtype)[:, ::2]
    bias = torch.randn(12, generator=gen(13))[::2]
    assert_mm(*both("gemm_4bit", A, packed, [6, 64], absmax, 64, "nf4", bias), 64)
    assert_mm(*both("gemm_4bit", A.reshape(1, rows, 64), packed, [6, 64], absmax, 64, "fp4"), 64)


@pytest.mark.parametrize("rows", [1, 3, 20])
def test_gemm_4bit_nested_absmax_0d_offset(rows):
    """Double quantization with a 0-d offset (as a QuantState holds it), 1 row to the dense path."""
    W = torch.randn(6, 128, generator=gen(14))
    packed, absmax = REF["quantize_4bit"](W, 32, "nf4", torch.uint8)
    offset, code = absmax.mean(), dynamic_map()
    a8, a_absmax = REF["quantize_blockwise"](absmax - offset, code, 256)
    A = torch.randn(rows, 128, generator=gen(15)).to(torch.bfloat16)
    assert_mm(*both("gemm_4bit", A, packed, [6, 128], a_absmax, 32, "nf4", None, a8, code, offset), 128)


def test_gemv_out_aliasing_a():
    (packed, absmax), table, results = _packed(8, 8, 64), four_bit_decode_table("nf4"), []
    for fn in (K("gemv_4bit.out"), REF["gemv_4bit.out"]):
        A = torch.randn(1, 8, generator=gen(16))
        fn(A, packed, [8, 8], absmax, table, 64, A)  # out is A
        results.append(A)
    torch.testing.assert_close(results[0], results[1], rtol=1e-5, atol=1e-5)


# ---- LLM.int8() ----------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(0,), (1,), (7,), (1, 7), (2, 3, 4), (0, 4), (4, 0), (2, 0, 3), (17, 300)])
def test_int8_quant_shapes_thresholds_and_specials(dtype, shape):
    A = (torch.randn(*shape, generator=gen(17)) * 3).to(dtype)
    if A.numel() >= 6:
        with_specials(A)
    for threshold in (0.0, 2.0, float("inf")):
        assert_bits(*both("int8_vectorwise_quant", A, threshold))
        got, want = both("int8_double_quant", A, threshold)
        for i in (0, 1, 2, 4):
            assert_bits(got[i], want[i])
        # col_stats: NaN where the reference has NaN (its NaN bits follow torch's vectorisation)
        torch.testing.assert_close(got[3], want[3], rtol=0, atol=0, equal_nan=True)


def test_int8_quant_strided_input():
    A = (torch.randn(6, 10, generator=gen(18)) * 3)[:, ::2]
    assert not A.is_contiguous()
    assert_bits(*both("int8_vectorwise_quant", A, 2.0))
    assert_bits(*both("int8_double_quant", A, 2.0))


@pytest.mark.parametrize("shape", [(0,), (1,), (3, 5), (2, 3, 4), (4, 0), (0, 3)])
def test_int8_vectorwise_dequant_shapes_and_special_stats(shape):
    g = gen(19)
    A = torch.randint(-127, 128, shape, dtype=torch.int8, generator=g)
    rows = bitsandbytes._checks.int8_rows(A)
    stats = torch.rand(rows, generator=g) * 5
    if rows > 2:
        stats[0], stats[1], stats[2] = float("nan"), float("inf"), -0.0
    assert_bits(*both("int8_vectorwise_dequant", A, stats))
    if A.dim() == 2:
        assert_bits(*both("int8_vectorwise_dequant", A.t().contiguous().t(), stats))


@pytest.mark.parametrize("M,N,Kd", [(1, 1, 1), (0, 3, 4), (3, 0, 4), (3, 4, 0), (5, 7, 9), (33, 40, 70)])
def test_int8_linear_matmul_shapes(M, N, Kd):
    g = gen(20)
    A = torch.randint(-128, 128, (M, Kd), dtype=torch.int8, generator=g)
    B = torch.randint(-128, 128, (N, Kd), dtype=torch.int8, generator=g)
    assert_bits(*both("int8_linear_matmul", A, B))
    assert_bits(*both("int8_linear_matmul", B[0] if N else torch.zeros(Kd, dtype=torch.int8), B))  # 1-D A


def test_int8_linear_matmul_3d_strided_and_out():
    g = gen(21)
    A = torch.randint(-128, 128, (3, 2, 8), dtype=torch.int8, generator=g).transpose(0, 1)
    B = torch.randint(-128, 128, (8, 5), dtype=torch.int8, generator=g).t()
    assert_bits(*both("int8_linear_matmul", A, B))
    want = REF["int8_linear_matmul"](A, B)
    out = torch.zeros(5, 3, 2, dtype=torch.int32).permute(2, 1, 0)
    K("int8_linear_matmul.out")(A, B, out)
    assert torch.equal(out, want)


@pytest.mark.parametrize("dtype", [None, *DTYPES])
def test_int8_mm_dequant_extremes_and_bias_dtypes(dtype):
    A = torch.tensor([[2**31 - 1, -(2**31), 2**24 + 1, -(2**24 + 1)], [1, -1, 0, 7]], dtype=torch.int32)
    rs = torch.tensor([127.0, float("nan")])
    cs = torch.tensor([127.0, 1.0, 0.0, 1e30])
    assert_bits(*both("int8_mm_dequant", A, rs, cs, dtype))
    for bias in (
        torch.tensor([1e38, -1e38, 0.5, float("nan")]),
        torch.tensor([1.5, -2.0, 3.0, 4.0], dtype=torch.float16),
        torch.tensor([1, -2, 3, 4], dtype=torch.int32),
        torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0], dtype=torch.bfloat16)[::2],
    ):
        assert_bits(*both("int8_mm_dequant", A, rs, cs, dtype, bias))
        assert_bits(*both("int8_mm_dequant", A[0], rs[:1], cs, dtype, bias))  # 1-D A


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(8,), (1, 8), (2, 3, 8)])
def test_int8_scaled_and_mixed_mm(dtype, shape):
    g = gen(22)
    A = (torch.randn(*shape, generator=g) * 2).to(dtype)
    A.view(-1)[1] = 20.0  # an outlier column
    W = torch.randn(5, 8, generator=g).to(dtype)
    CA, SCA, cols = REF["int8_vectorwise_quant"](A, 6.0)
    CB, SCB, _ = REF["int8_vectorwise_quant"](W, 0.0)
    bias = torch.randn(5, generator=g).to(dtype)
    assert_bits(*both("int8_scaled_mm", CA, CB, SCA, SCB, bias, dtype))
    (out, sub), (rout, rsub) = both("int8_mixed_scaled_mm", A, CA, CB, SCA, SCB, cols, bias)
    assert_bits(sub, rsub)
    assert_mm(out, rout, 8)
    assert_bits(*both("int8_mixed_scaled_mm", A, CA, CB, SCA, SCB, None, None))


# ---- Optimizers ----------------------------------------------------------------------------------

NAMES = ["adam", "lamb", "momentum", "lars", "rmsprop", "adagrad", "lion", "ademamix"]
TWO = {"adam", "lamb", "ademamix"}


def _cpu_kernel(op: str):
    owner = bitsandbytes._LOADED.kernels.get((op, "cpu"))
    return owner[1] if owner is not None and owner[0] == "cpu" else None


def _opt_inputs(name, n, dtype, seed, specials=False):
    g = gen(seed)
    p = torch.randn(n, generator=g).to(dtype)
    grad = torch.randn(n, generator=g).to(dtype)
    if n > 3:
        grad[::3] = 0
    if specials and n > 4:
        grad[1], grad[2], grad[4] = float("nan"), -0.0, float("inf")
    s1 = torch.rand(2 * n if name == "ademamix" else n, generator=g) * 0.1
    s2 = torch.rand(n, generator=g) * 0.1 if name in TWO else None
    return grad, p, s1, s2


def assert_param(got, want, cpu, tol) -> None:
    """Bit for bit against bitsandbytes-cpu (its update rule is the kernels'), else the reference's
    tolerance (test_xpu_platform: 1e-5 in 32-bit, 1e-2 in 8-bit)."""
    if cpu is not None:
        return assert_bits(got, want)
    torch.testing.assert_close(got.float(), want.float(), rtol=tol, atol=tol / 10, equal_nan=True)


def _param(p: torch.Tensor, strided: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(what the op updates, the storage that holds it): a column of a 2-column tensor when strided."""
    if not strided:
        q = p.clone()
        return q, q
    base = torch.full((p.numel(), 2), 3.0, dtype=p.dtype)
    base[:, 0] = p
    return base[:, 0], base


CASES32 = [  # n, weight_decay, gnorm_scale, max_unorm, skip_zeros, step, strided, specials, beta1
    (0, 0.0, 1.0, 0.5, False, 3, False, False, 0.9),
    (1, 0.05, 0.5, 0.0, True, 3, False, False, 0.9),
    (257, -0.01, 1.0, 0.0, False, 1, True, False, 0.9),
    (300, 0.01, 2.0, 0.0, True, 3, False, True, 0.9),
    (30, 0.0, 1.0, 0.0, False, 1, False, False, 1.0),
]


@pytest.mark.parametrize("name", NAMES)
def test_update_32bit_edges(name):
    """Empty, one element, 257 strided at step 1 with a negative decay, NaN/inf/-0.0 gradients
    with skip_zeros, beta1 = 1 (a bias correction of 0), in each dtype."""
    cpu = _cpu_kernel("optimizer_update_32bit")
    for n, wd, gs, mu, skip, step, strided, specials, beta1 in CASES32:
        for dtype in DTYPES:
            grad, p0, s1, s2 = _opt_inputs(name, n, dtype, n + 23, specials)
            out = []
            for fn in (K("optimizer_update_32bit"), cpu or REF["optimizer_update_32bit"]):
                p, storage = _param(p0, strided)
                st = [s1.clone(), s2.clone() if s2 is not None else None, torch.full((1,), -1.0)]
                fn(name, grad, p, st[0], st[1], st[2], mu, 1.0, beta1, 0.99, 0.999, 2.0, 1e-6, wd, step, 0.01, gs, skip)
                out.append((storage, *st))
            (got, *gst), (want, *wst) = out
            assert_param(got, want, cpu, 1e-5)
            for x, y in zip(gst[:2], wst[:2]):
                if y is not None:
                    assert_bits(x, y)
            torch.testing.assert_close(gst[2], wst[2], rtol=1e-5, atol=0)  # unorm (0 for n = 0)
            if strided:
                assert torch.equal(got[:, 1], torch.full_like(got[:, 1], 3.0))


def test_update_32bit_zero_d_parameter():
    for name in NAMES:
        out = []
        for fn in (K("optimizer_update_32bit"), REF["optimizer_update_32bit"]):
            p, s1 = torch.tensor(0.5), torch.full((2,) if name == "ademamix" else (), 0.1)
            s2 = torch.tensor(0.01) if name in TWO else None
            fn(name, torch.tensor(0.25), p, s1, s2, None, 0.0, 1.0, 0.9, 0.99, 0.999, 2.0, 1e-8, 0.01, 2, 0.1, 1.0)
            out.append((p, s1, s2))
        torch.testing.assert_close(out[0][0], out[1][0], rtol=1e-6, atol=0)
        assert_bits(out[0][1:], out[1][1:])


def _states8(name, s1, s2, n, frozen):
    with torch.inference_mode(frozen):  # frozen: code books without a version counter
        c1, c2 = dynamic_map(True).clone(), dynamic_map(False).clone()
    rows = s1.view(2, n) if name == "ademamix" else s1.view(1, n)
    parts = [REF["quantize_blockwise"](r, c1, 256) for r in rows]
    q1, a1 = torch.cat([q for q, _ in parts]), torch.cat([a for _, a in parts])
    q2, a2 = REF["quantize_blockwise"](s2, c2, 256) if name in TWO else (None, None)
    return q1, q2, a1, a2, c1, c2


@pytest.mark.parametrize("name", NAMES)
def test_update_8bit_edges(name):
    """The 8-bit update on the same edge cases (no max_unorm in 8-bit): states bit for bit. At step 1
    the code books are inference tensors (made under torch.inference_mode), which have no version."""
    cpu = _cpu_kernel("optimizer_update_8bit_blockwise")
    for n, wd, gs, _, skip, step, strided, specials, beta1 in CASES32:
        for dtype in DTYPES:
            grad, p0, s1, s2 = _opt_inputs(name, n, dtype, n + 29, specials)
            q1, q2, a1, a2, c1, c2 = _states8(name, s1, s2, n, frozen=step == 1)
            two = name in TWO
            out = []
            for fn in (K("optimizer_update_8bit_blockwise"), cpu or REF["optimizer_update_8bit_blockwise"]):
                p, storage = _param(p0, strided)
                st = [q1.clone(), q2.clone() if two else None, a1.clone(), a2.clone() if two else None]
                fn(name, grad, p, st[0], st[1], beta1, 0.99, 0.999, 2.0, 1e-6, step, 0.01, c1, c2 if two else None,
                   st[2], st[3], wd, gs, skip)  # fmt: skip
                out.append((storage, *st))
            (got, *gst), (want, *wst) = out
            assert_param(got, want, cpu, 1e-2)
            assert_bits(gst, wst)


# ---- Bad input -----------------------------------------------------------------------------------

_code = dynamic_map()
_table = four_bit_decode_table("nf4")
_x64 = torch.randn(64, generator=gen(30))
_q4, _a4 = REF["quantize_4bit"](_x64, 32, "nf4", torch.uint8)
_qb, _ab = REF["quantize_blockwise"](_x64, _code, 32)
_i8 = torch.randint(-5, 5, (3, 8), dtype=torch.int8, generator=gen(31))
_i32 = torch.randint(-5, 5, (3, 4), dtype=torch.int32, generator=gen(32))
_meta = torch.device("meta")

BAD = [  # id, op, args, the argument the message names
    ("q4 blocksize", "quantize_4bit", (_x64, 48, "nf4", torch.uint8), "blocksize"),
    ("q4 quant_type", "quantize_4bit", (_x64, 64, "nf5", torch.uint8), "quant_type"),
    ("q4 dtype", "quantize_4bit", (_x64.double(), 64, "nf4", torch.uint8), "A"),
    ("q4 storage", "quantize_4bit", (_x64, 64, "nf4", torch.int32), "quant_storage"),
    ("q4 storage fill", "quantize_4bit", (_x64[:6], 64, "nf4", torch.float32), "quant_storage"),
    ("dq4 absmax size", "dequantize_4bit", (_q4, _a4[:1], 32, "nf4", [64], torch.float32), "absmax"),
    ("dq4 shape", "dequantize_4bit", (_q4, _a4, 32, "nf4", [65], torch.float32), "shape"),
    ("dq4 absmax dtype", "dequantize_4bit", (_q4, _a4.half(), 32, "nf4", [64], torch.float32), "absmax"),
    ("dq4 out dtype", "dequantize_4bit", (_q4, _a4, 32, "nf4", [64], torch.int8), "dtype"),
    ("dq4 device", "dequantize_4bit", (_q4, _a4.to(_meta), 32, "nf4", [64], torch.float32), "absmax on meta"),
    ("qb blocksize", "quantize_blockwise", (_x64, _code, 0), "blocksize"),
    ("qb code size", "quantize_blockwise", (_x64, _code[:255], 64), "code"),
    ("qb code dtype", "quantize_blockwise", (_x64, _code.half(), 64), "code"),
    ("qb A dtype", "quantize_blockwise", (_x64.int(), _code, 64), "A"),
    ("qb device", "quantize_blockwise", (_x64, _code.to(_meta), 64), "code on meta"),
    ("dqb absmax size", "dequantize_blockwise", (_qb, _ab[:1], _code, 32, torch.float32), "absmax"),
    ("dqb A dtype", "dequantize_blockwise", (_qb.to(torch.int8), _ab, _code, 32, torch.float32), "A"),
    ("dqb dtype", "dequantize_blockwise", (_qb, _ab, _code, 32, torch.float64), "dtype"),
    ("dqb out shape", "dequantize_blockwise.out", (_qb, _ab, _code, 32, torch.float32, torch.empty(63)), "out"),
    ("mm out dtype", "int8_linear_matmul.out", (_i8, _i8, torch.empty(3, 3)), "out"),
    ("gemv code size", "gemv_4bit", (_x64.view(1, 64), _q4, [1, 64], _a4, _table[:8], 32), "code"),
    ("gemv blocksize", "gemv_4bit", (_x64.view(1, 64), _q4, [1, 64], _a4, _table, 0), "blocksize"),
    ("gemv K", "gemv_4bit", (_x64.view(2, 32), _q4, [1, 64], _a4, _table, 32), "shapeB[1]"),
    ("gemv absmax size", "gemv_4bit", (_x64.view(1, 64), _q4, [1, 64], _a4, _table, 64), "absmax"),
    ("gemv device", "gemv_4bit", (_x64.view(1, 64), _q4, [1, 64], _a4, _table.to(_meta), 32), "code on meta"),
    ("gemm A 0-d", "gemm_4bit", (torch.tensor(1.0), _q4, [1, 64], _a4, 32, "nf4"), "A"),
    ("gemm A dtype", "gemm_4bit", (_x64.view(1, 64).int(), _q4, [1, 64], _a4, 32, "nf4"), "A"),
    ("gemm shapeB", "gemm_4bit", (_x64.view(1, 64), _q4, [1, 64, 1], _a4, 32, "nf4"), "shapeB"),
    ("gemm bias", "gemm_4bit", (_x64.view(1, 64), _q4, [1, 64], _a4, 32, "nf4", torch.zeros(2)), "bias"),
    ("gemm blocksize", "gemm_4bit", (_x64.view(1, 64), _q4, [1, 64], _a4, 64, "nf4"), "absmax"),
    ("gemm nested", "gemm_4bit", (_x64.view(1, 64), _q4, [1, 64], _ab[:1], 32, "nf4", None, _qb[:2], None, None),
     "absmax_code"),
    ("gemm device", "gemm_4bit", (_x64.view(1, 64), _q4, [1, 64], _a4, 32, "nf4", torch.zeros(1, device=_meta)),
     "bias on meta"),
    ("vq dtype", "int8_vectorwise_quant", (_i8, 0.0), "A"),
    ("vq threshold", "int8_vectorwise_quant", (_x64, -1.0), "threshold"),
    ("vq 0-d", "int8_vectorwise_quant", (torch.tensor(1.0), 0.0), "A"),
    ("dq threshold", "int8_double_quant", (_x64, float("nan")), "threshold"),
    ("vdq stats size", "int8_vectorwise_dequant", (_i8, torch.ones(4)), "stats"),
    ("vdq stats dtype", "int8_vectorwise_dequant", (_i8, torch.ones(3).half()), "stats"),
    ("mm K", "int8_linear_matmul", (_i8, _i8[:, :7]), "B.shape[1]"),
    ("mm B 3-D", "int8_linear_matmul", (_i8, _i8.view(3, 8, 1)), "B"),
    ("mm dtype", "int8_linear_matmul", (_i8.float(), _i8), "A"),
    ("mm device", "int8_linear_matmul", (_i8, _i8.to(_meta)), "B on meta"),
    ("mmdq rows", "int8_mm_dequant", (_i32, torch.ones(4), torch.ones(4)), "row_stats"),
    ("mmdq cols", "int8_mm_dequant", (_i32, torch.ones(3), torch.ones(5)), "col_stats"),
    ("mmdq bias", "int8_mm_dequant", (_i32, torch.ones(3), torch.ones(4), None, torch.ones(5)), "bias"),
    ("mmdq dtype", "int8_mm_dequant", (_i32, torch.ones(3), torch.ones(4), torch.int8), "dtype"),
    ("mmdq A", "int8_mm_dequant", (_i32.to(torch.int8), torch.ones(3), torch.ones(4)), "A"),
    ("mixed cols", "int8_mixed_scaled_mm", (_x64.view(8, 8), _i8[:, :8], _i8, torch.ones(3), torch.ones(3),
                                            torch.tensor([9])), "outlier_cols"),
]  # fmt: skip


@pytest.mark.parametrize("op,args,names", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_input_raises_like_the_reference(op, args, names):
    with pytest.raises(Exception) as ref_err:
        REF[op](*args)
    with pytest.raises(type(ref_err.value)) as err:
        K(op)(*args)
    assert names in str(err.value), str(err.value)


def _opt32_args(**over):
    args = dict(name="adam", g=torch.randn(10), p=torch.randn(10), s1=torch.zeros(10), s2=torch.zeros(10),
                u=torch.zeros(1), mu=0.0, pn=1.0, b1=0.9, b2=0.99, b3=0.999, al=2.0, eps=1e-8, wd=0.0, step=1,
                lr=1e-3, gs=1.0, skip=False)  # fmt: skip
    return list({**args, **over}.values())


def _opt8_args(**over):
    args = dict(name="adam", g=torch.randn(300), p=torch.randn(300), s1=torch.zeros(300, dtype=torch.uint8),
                s2=torch.zeros(300, dtype=torch.uint8), b1=0.9, b2=0.99, b3=0.999, al=2.0, eps=1e-8, step=1,
                lr=1e-3, q1=dynamic_map(True), q2=dynamic_map(False), a1=torch.ones(2), a2=torch.ones(2), wd=0.0,
                gs=1.0, skip=False)  # fmt: skip
    return list({**args, **over}.values())


_shared = torch.zeros(20)
BAD_OPT = [
    ("name", "optimizer_update_32bit", _opt32_args(name="sgd"), "optimizer_name"),
    ("g dtype", "optimizer_update_32bit", _opt32_args(g=torch.randn(10).half()), "g dtype"),
    ("g size", "optimizer_update_32bit", _opt32_args(g=torch.randn(9)), "g has 9"),
    ("state1 size", "optimizer_update_32bit", _opt32_args(s1=torch.zeros(9)), "state1"),
    ("state1 strided", "optimizer_update_32bit", _opt32_args(s1=torch.zeros(20)[::2]), "state1"),
    ("state2 missing", "optimizer_update_32bit", _opt32_args(s2=None), "state2"),
    ("unorm missing", "optimizer_update_32bit", _opt32_args(u=None, mu=1.0), "unorm_vec"),
    ("step", "optimizer_update_32bit", _opt32_args(step=0), "step"),
    ("lr", "optimizer_update_32bit", _opt32_args(lr=float("nan")), "lr"),
    ("device", "optimizer_update_32bit", _opt32_args(s1=torch.zeros(10, device=_meta)), "state1 on meta"),
    ("p expanded", "optimizer_update_32bit", _opt32_args(p=torch.randn(1).expand(10)), "p is an expanded view"),
    ("states alias", "optimizer_update_32bit", _opt32_args(s1=_shared[:10], s2=_shared[5:15]), "share memory"),
    ("8 state1 dtype", "optimizer_update_8bit_blockwise", _opt8_args(s1=torch.zeros(300)), "state1"),
    ("8 absmax1 size", "optimizer_update_8bit_blockwise", _opt8_args(a1=torch.ones(3)), "absmax1"),
    ("8 qmap1 size", "optimizer_update_8bit_blockwise", _opt8_args(q1=torch.zeros(255)), "qmap1"),
    ("8 qmap2 missing", "optimizer_update_8bit_blockwise", _opt8_args(q2=None), "qmap2"),
    ("8 ademamix rows", "optimizer_update_8bit_blockwise", _opt8_args(name="ademamix"), "state1"),
    ("8 device", "optimizer_update_8bit_blockwise", _opt8_args(a1=torch.ones(2, device=_meta)), "absmax1 on meta"),
]


@pytest.mark.parametrize("op,args,names", [b[1:] for b in BAD_OPT], ids=[b[0] for b in BAD_OPT])
def test_optimizer_bad_input_raises_and_changes_nothing(op, args, names):
    before = [a.clone() if isinstance(a, torch.Tensor) and a.device.type == "cpu" else None for a in args]
    with pytest.raises(Exception) as ref_err:
        REF[op](*args)
    with pytest.raises(type(ref_err.value)) as err:
        K(op)(*args)
    assert names in str(err.value), str(err.value)
    assert all(b is None or torch.equal(_bits(a), _bits(b)) for a, b in zip(args, before))  # nothing written


# ---- The Triton check ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "version,ok",
    [("3.0rc1", False), ("3.0a9", False), ("3.0b2", False), ("3.0.post9", False), ("3", False),
     ("3.0.0rc1", False), ("3.1", True), ("3.1.0rc1", True), ("3.1.0+git1234", True), ("3.10.0", True)],
)  # fmt: skip
def test_triton_pre_release_of_an_old_version_is_refused(monkeypatch, version, ok):
    """The digits of a pre-release suffix are no minor version: Triton 3.0rc1 is older than 3.1."""
    monkeypatch.setattr(xpu, "_triton_dist", lambda: ("pytorch-triton-xpu", version))
    problem = xpu.check_runtime(None)
    assert (problem is None) == ok and (ok or f"pytorch-triton-xpu {version} is older than the 3.1" in problem)
