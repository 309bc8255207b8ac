"""The kernels the host harnesses run, at the edges, against the reference kernels: the MPS
wheel's Metal source (``mps``) and the CUDA wheel's sources for warps of 32 (``cuda``) and 64
lanes (``rocm``, as an AMD CDNA wavefront runs them), all compiled as C++ and run on CPU tensors
through their wheel's glue. Empty and one-element tensors, lengths off the block size, every block
size and float dtype, strided and offset views, NaN / inf / -0.0 / subnormals, nested 4-bit
scales, odd matmul shapes, each optimizer with its options, and bad input (a clear error naming the
argument, never a wrong answer).

Each harness named in ``BNB_TEST_HOST_KERNELS`` runs (``tests-mps-host``, ``tests-cuda-host``);
with none named the tests are skipped, as the harness sessions run them.

The numeric standard is the conformance suite's: quantize / dequantize bit for bit, the matmuls
within a few units in the last place, the optimizers as tests/test_optim_ops.py compares them.
"""

from __future__ import annotations

import math

import pytest
import torch

from bitsandbytes.backends.reference import KERNELS as REF
from bitsandbytes.backends.reference.codebooks import dynamic_map, four_bit_decode_table
from conftest import CUDA_HARNESS_WARPS, host_compiler, host_kernel_platforms, host_kernels_of

HARNESSES = ["mps", *CUDA_HARNESS_WARPS]
NAMED = [p for p, device in host_kernel_platforms() if p in HARNESSES and device == "cpu"]

if not NAMED:
    pytest.skip("no host harness named in BNB_TEST_HOST_KERNELS", allow_module_level=True)
pytestmark = pytest.mark.skipif(
    host_compiler() is None,
    reason="no C++ compiler: the host harnesses cannot be built",
)

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
BLOCKSIZES = [32, 64, 128, 256, 512, 1024, 2048, 4096]
MM_TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}
NAMES = ["adam", "lamb", "momentum", "lars", "rmsprop", "adagrad", "lion", "ademamix"]
TWO_STATE = {"adam", "lamb", "ademamix"}
SPECIAL = [float("nan"), float("inf"), -float("inf"), -0.0, 0.0, 1e-40, -1e-40, 65504.0, 3e38, -2.5, 0.3]


@pytest.fixture(scope="module", params=NAMED)
def K(request):
    """The op -> kernel map of one harness."""
    return host_kernels_of(request.param)


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view({1: torch.uint8, 2: torch.int16, 4: torch.int32}[t.element_size()])


def same(got: torch.Tensor, want: torch.Tensor) -> bool:
    """Equal shape, dtype and bits (NaN payloads included)."""
    return got.shape == want.shape and got.dtype == want.dtype and torch.equal(bits(got), bits(want))


def mm_close(got: torch.Tensor, want: torch.Tensor, k: int) -> None:
    assert got.dtype == want.dtype and got.shape == want.shape
    assert torch.equal(got.isnan(), want.isnan())
    tol = MM_TOL[want.dtype]
    torch.testing.assert_close(got.float(), want.float(), rtol=tol, atol=tol * math.sqrt(max(k, 1)), equal_nan=True)


# ---- 4-bit quantize / dequantize ---------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
def test_host_4bit_every_blocksize_and_odd_length(K, dtype, quant_type):
    g = torch.Generator().manual_seed(1)
    for n, sizes in ((1, BLOCKSIZES), (3, [32, 4096]), (65, [32, 64, 128]), (4097, [64, 2048, 4096])):
        for bs in sizes:
            A = torch.randn(n, generator=g).to(dtype)
            packed, absmax = K["quantize_4bit"](A, bs, quant_type, torch.uint8)
            rp, ra = REF["quantize_4bit"](A, bs, quant_type, torch.uint8)
            assert same(packed, rp) and same(absmax, ra), (n, bs)
            out = K["dequantize_4bit"](rp, ra, bs, quant_type, [n], dtype)
            assert same(out, REF["dequantize_4bit"](rp, ra, bs, quant_type, [n], dtype)), (n, bs)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
def test_host_4bit_special_values(K, dtype, quant_type):
    A = torch.tensor(SPECIAL * 7)[:67].to(dtype)
    for bs in (32, 4096):
        packed, absmax = K["quantize_4bit"](A, bs, quant_type, torch.uint8)
        rp, ra = REF["quantize_4bit"](A, bs, quant_type, torch.uint8)
        assert torch.equal(packed, rp) and torch.equal(absmax.isnan(), ra.isnan())
        assert torch.equal(absmax.nan_to_num(0), ra.nan_to_num(0))
        out = K["dequantize_4bit"](rp, ra, bs, quant_type, [67], dtype)
        assert same(out, REF["dequantize_4bit"](rp, ra, bs, quant_type, [67], dtype))
    # Scales that are NaN, inf, -0.0, negative: the products' bits, NaN payloads included.
    g = torch.Generator().manual_seed(2)
    for n in (320, 321):  # the 32-bit-word path and the byte path
        codes = torch.randint(0, 256, ((n + 1) // 2,), dtype=torch.uint8, generator=g)
        scales = torch.tensor(SPECIAL)[: -(-n // 32)]
        out = K["dequantize_4bit"](codes, scales, 32, quant_type, [n], dtype)
        assert same(out, REF["dequantize_4bit"](codes, scales, 32, quant_type, [n], dtype))


def test_host_4bit_zero_dim_strided_and_offset_views(K):
    g = torch.Generator().manual_seed(3)
    scalar = torch.tensor(-2.5)
    got, want = K["quantize_4bit"](scalar, 64, "fp4", torch.uint8), REF["quantize_4bit"](scalar, 64, "fp4", torch.uint8)
    assert same(got[0], want[0]) and same(got[1], want[1])
    A = torch.randn(64, 96, generator=g).t()  # not contiguous
    packed, absmax = K["quantize_4bit"](A, 64, "nf4", torch.uint8)
    rp, ra = REF["quantize_4bit"](A, 64, "nf4", torch.uint8)
    assert same(packed, rp) and same(absmax, ra)
    want = REF["dequantize_4bit"](rp, ra, 64, "nf4", [96, 64], torch.float16)
    spread = torch.zeros(2 * rp.numel(), dtype=torch.uint8)
    spread[::2] = rp.reshape(-1)
    scales = torch.zeros(2 * ra.numel())
    scales[1::2] = ra
    assert same(K["dequantize_4bit"](spread[::2], scales[1::2], 64, "nf4", [96, 64], torch.float16), want)
    shifted = torch.zeros(rp.numel() + 3, dtype=torch.uint8)
    shifted[3:] = rp.reshape(-1)  # packed bytes at an offset that is not a whole 32-bit word
    assert same(K["dequantize_4bit"](shifted[3:], ra, 64, "nf4", [96, 64], torch.float16), want)
    for storage in (torch.float16, torch.bfloat16, torch.float32, torch.int8):
        p, a = K["quantize_4bit"](A, 64, "nf4", storage)
        assert p.dtype == storage and same(p.view(torch.uint8).reshape(-1, 1), rp) and same(a, ra)
        assert same(K["dequantize_4bit"](p, a, 64, "nf4", [96, 64], torch.float16), want)
    out = torch.empty(64, 96, dtype=torch.float16).t()  # a strided out
    K["dequantize_4bit.out"](rp, ra, 64, "nf4", [96, 64], torch.float16, out)
    assert same(out, want)


# ---- block-wise 8-bit --------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
def test_host_blockwise_odd_blocksizes_and_lengths(K, dtype):
    g = torch.Generator().manual_seed(4)
    code = dynamic_map(True)
    for n in (1, 3, 257, 1000):
        for bs in (1, 3, 64, 100, 257, 4096, 2**33):
            A = torch.randn(n, generator=g).to(dtype)
            q, absmax = K["quantize_blockwise"](A, code, bs)
            rq, ra = REF["quantize_blockwise"](A, code, bs)
            assert same(q, rq) and same(absmax, ra), (n, bs)
            out = K["dequantize_blockwise"](rq, ra, code, bs, dtype)
            assert same(out, REF["dequantize_blockwise"](rq, ra, code, bs, dtype)), (n, bs)


@pytest.mark.parametrize("dtype", DTYPES)
def test_host_blockwise_special_values_and_views(K, dtype):
    code = dynamic_map(True)
    A = torch.tensor(SPECIAL * 25)[:257].to(dtype)
    for bs in (1, 4, 64, 256):
        q, absmax = K["quantize_blockwise"](A, code, bs)
        rq, ra = REF["quantize_blockwise"](A, code, bs)
        assert torch.equal(q, rq) and torch.equal(absmax.isnan(), ra.isnan())
        assert torch.equal(absmax.nan_to_num(0), ra.nan_to_num(0))
        assert same(
            K["dequantize_blockwise"](rq, ra, code, bs, dtype), REF["dequantize_blockwise"](rq, ra, code, bs, dtype)
        )
    odd = code.clone()
    odd[0], odd[255] = float("nan"), float("inf")
    q = torch.randint(0, 256, (650,), dtype=torch.uint8, generator=torch.Generator().manual_seed(5))
    scales = torch.tensor(SPECIAL)
    assert same(
        K["dequantize_blockwise"](q, scales, odd, 64, dtype), REF["dequantize_blockwise"](q, scales, odd, 64, dtype)
    )
    B = torch.randn(64, 96, generator=torch.Generator().manual_seed(6)).to(dtype).t()
    q, absmax = K["quantize_blockwise"](B, code, 64)
    qB, aB = REF["quantize_blockwise"](B, code, 64)
    assert same(q, qB) and same(absmax, aB)
    scalar = torch.tensor(0.75, dtype=dtype)
    q, absmax = K["quantize_blockwise"](scalar, code, 64)
    rq, ra = REF["quantize_blockwise"](scalar, code, 64)
    assert same(q, rq) and same(absmax, ra)
    out = torch.empty(64, 96, dtype=dtype).t()  # a strided out: the values land in its layout
    K["dequantize_blockwise.out"](qB, aB, code, 64, dtype, out)
    assert same(out, REF["dequantize_blockwise"](qB, aB, code, 64, dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_host_dequantize_out_writes_only_its_slice(K, dtype):
    """Dequantizing into a slice of a larger buffer writes exactly that slice: with odd lengths
    (a 4-bit byte holding one element) the elements before and after it keep their values."""
    g = torch.Generator().manual_seed(21)
    code = dynamic_map(True)
    for n in (1, 33, 127):
        A = torch.randn(n, generator=g).to(dtype)
        packed, absmax = REF["quantize_4bit"](A, 64, "nf4", torch.uint8)
        q, qa = REF["quantize_blockwise"](A, code, 64)
        for op, args in (
            ("dequantize_4bit", (packed, absmax, 64, "nf4", (n,), dtype)),
            ("dequantize_blockwise", (q, qa, code, 64, dtype)),
        ):
            buf = torch.full((n + 2,), 7.0, dtype=dtype)
            K[f"{op}.out"](*args, buf[1:-1])
            assert same(buf[1:-1], REF[op](*args)), (op, n)
            assert buf[0].item() == 7.0 and buf[-1].item() == 7.0, (op, n)


# ---- 4-bit matmuls -----------------------------------------------------------------------------

MM_SHAPES = [(1, 1, 32), (3, 7, 64), (5, 16, 32), (2, 4096, 4096), (13, 40, 32), (9, 24, 128)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
def test_host_gemv_and_gemm_odd_shapes(K, dtype, quant_type):
    g = torch.Generator().manual_seed(7)
    code = dynamic_map(True)
    table = four_bit_decode_table(quant_type)
    for N, k, bs in MM_SHAPES:
        W = torch.randn(N, k, generator=g)
        packed, absmax = REF["quantize_4bit"](W, bs, quant_type, torch.uint8)
        offset = absmax.mean()
        q8, a8 = REF["quantize_blockwise"](absmax - offset, code, 256)
        bias = torch.randn(N, generator=g)
        for lead in ((1,), (), (2, 3), (2, 2), (9,)):  # one row, a vector, 3-D, more rows than the fused kernel
            A = torch.randn(*lead, k, generator=g).to(dtype)
            args = (A, packed, [N, k])
            mm_close(K["gemv_4bit"](*args, absmax, table, bs), REF["gemv_4bit"](*args, absmax, table, bs), k)
            mm_close(K["gemm_4bit"](*args, absmax, bs, quant_type), REF["gemm_4bit"](*args, absmax, bs, quant_type), k)
            nested = (a8, bs, quant_type, bias, q8, code, offset)
            mm_close(K["gemm_4bit"](*args, *nested), REF["gemm_4bit"](*args, *nested), k)
            out = torch.empty(*lead, N, dtype=dtype)
            K["gemv_4bit.out"](*args, absmax, table, bs, out)
            mm_close(out, REF["gemv_4bit"](*args, absmax, table, bs), k)
        strided = torch.randn(k, 3, generator=g).to(dtype).t()
        got = K["gemv_4bit"](strided, packed, [N, k], absmax, table, bs)
        mm_close(got, REF["gemv_4bit"](strided, packed, [N, k], absmax, table, bs), k)


@pytest.mark.parametrize("dtype", DTYPES)
def test_host_gemv_special_values_and_empty(K, dtype):
    g = torch.Generator().manual_seed(8)
    W = torch.randn(8, 64, generator=g)
    W[1, 3] = float("nan")
    packed, absmax = REF["quantize_4bit"](W, 32, "nf4", torch.uint8)
    absmax[3], absmax[5], absmax[7] = float("inf"), -0.0, -2.0
    table = four_bit_decode_table("nf4")
    A = torch.randn(3, 64, generator=g).to(dtype)
    A[0, 5], A[1, 7] = float("inf"), float("nan")
    mm_close(
        K["gemv_4bit"](A, packed, [8, 64], absmax, table, 32),
        REF["gemv_4bit"](A, packed, [8, 64], absmax, table, 32),
        64,
    )
    for lead, N, k in (((0,), 4, 8), ((1,), 4, 0), ((2,), 0, 8)):
        B = torch.zeros((N * k + 1) // 2, 1, dtype=torch.uint8)
        scales = torch.ones(-(-N * k // 64))
        X = torch.randn(*lead, k, generator=g).to(dtype)
        mm_close(K["gemv_4bit"](X, B, [N, k], scales, table, 64), REF["gemv_4bit"](X, B, [N, k], scales, table, 64), k)
        mm_close(K["gemm_4bit"](X, B, [N, k], scales, 64, "nf4"), REF["gemm_4bit"](X, B, [N, k], scales, 64, "nf4"), k)


# ---- optimizers --------------------------------------------------------------------------------


def _states(name, n, g):
    s1 = torch.rand((2 if name == "ademamix" else 1) * n, generator=g)
    return s1, (torch.rand(n, generator=g) if name in TWO_STATE else None)


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """The same values bit for bit (-0.0 is not 0.0), NaN where the other has NaN."""
    nan = a.isnan()
    if not torch.equal(nan, b.isnan()):
        return False
    return torch.equal(a[~nan].view(torch.int32), b[~nan].view(torch.int32))


@pytest.mark.parametrize("name", NAMES)
def test_host_optimizer_32bit_options(K, name):
    g = torch.Generator().manual_seed(9)
    # (dtype, n, weight_decay, gnorm_scale, max_unorm, skip_zeros, step, layout)
    cases = [
        (torch.float32, 1, 0.0, 1.0, 0.0, False, 1, "flat"),
        (torch.float32, 257, 0.05, 0.5, 0.0, False, 3, "strided"),
        (torch.float16, 255, 0.01, 1.0, 0.01, False, 2, "flat"),
        (torch.bfloat16, 1000, 0.0, 1.0, 0.0, True, 5, "2d"),
        (torch.float32, 600, 0.01, 2.0, 0.05, True, 4, "special"),
        (torch.float32, 300, 0.0, 0.0, 1e6, False, 2, "flat"),
    ]
    for dtype, n, wd, gs, max_unorm, skip, step, layout in cases:
        base = torch.randn(2 * n, generator=g).to(dtype)
        grad = torch.randn(n, generator=g).to(dtype)
        if skip:
            grad[::3] = 0
        if layout == "special":
            grad[5], grad[7], grad[9] = float("nan"), float("inf"), -0.0
        s1, s2 = _states(name, n, g)
        results = []
        for impl in (K, REF):
            mem = base.clone()
            p = {"strided": mem[::2], "2d": mem[:n].reshape(-1, 20 if n % 20 == 0 else 1).t()}.get(layout, mem[:n])
            st1, st2, unorm = s1.clone(), None if s2 is None else s2.clone(), torch.zeros(1)
            pnorm = float(base[:n].float().norm())
            impl["optimizer_update_32bit"](
                name, grad.reshape(p.shape) if layout == "2d" else grad, p, st1, st2, unorm, max_unorm, pnorm,
                0.9, 0.99, 0.999, 2.0, 1e-6, wd, step, 1e-2, gs, skip,
            )  # fmt: skip
            results.append((mem, st1, st2, unorm))
        (mem, st1, st2, unorm), (rmem, rs1, rs2, runorm) = results
        tol = 1e-6 if dtype == torch.float32 else 1e-2
        label = (dtype, n, wd, gs, max_unorm, skip, step, layout)
        assert torch.equal(mem.isnan(), rmem.isnan()), label
        torch.testing.assert_close(mem.float(), rmem.float(), rtol=tol, atol=tol, equal_nan=True, msg=str(label))
        # The states bit for bit (the parameter within rounding: the reference updates it with
        # torch's own op order). In the CUDA harness's 32-lane build the kernels' plain `a * b + c`
        # fuse as nvcc fuses them, so a state written without the _rn forms shows here.
        assert _same_bits(st1, rs1), label
        if st2 is not None:
            assert _same_bits(st2, rs2), label
        if max_unorm > 0:
            torch.testing.assert_close(unorm, runorm, rtol=1e-5, atol=1e-7, equal_nan=True, msg=str(label))


@pytest.mark.parametrize("name", NAMES)
def test_host_optimizer_8bit_options(K, name):
    g = torch.Generator().manual_seed(10)
    rows = 2 if name == "ademamix" else 1
    signed, unsigned = dynamic_map(True), dynamic_map(False)
    qmap1 = unsigned if name in ("rmsprop", "adagrad") else signed
    cases = [  # (dtype, n, weight_decay, gnorm_scale, skip_zeros, step, layout)
        (torch.float32, 1, 0.0, 1.0, False, 1, "flat"),
        (torch.bfloat16, 257, 0.05, 0.5, True, 3, "strided"),
        (torch.float16, 600, 0.01, 2.0, False, 2, "special"),
    ]
    for dtype, n, wd, gs, skip, step, layout in cases:
        blocks = -(-n // 256)
        base = torch.randn(2 * n, generator=g).to(dtype)
        grad = torch.randn(n, generator=g).to(dtype)
        if skip:
            grad[::3] = 0
        if layout == "special":
            grad[5], grad[9] = float("nan"), -0.0
        low = 128 if qmap1 is unsigned else 0
        q1 = torch.randint(low, 256, (rows * n,), dtype=torch.uint8, generator=g)
        a1 = torch.rand(rows * blocks, generator=g)
        two = name in TWO_STATE
        q2 = torch.randint(128, 256, (n,), dtype=torch.uint8, generator=g) if two else None
        a2 = torch.rand(blocks, generator=g) if two else None
        results = []
        for impl in (K, REF):
            mem = base.clone()
            p = mem[::2] if layout == "strided" else mem[:n]
            st = [t if t is None else t.clone() for t in (q1, q2, a1, a2)]
            impl["optimizer_update_8bit_blockwise"](
                name, grad, p, st[0], st[1], 0.9, 0.99, 0.999, 2.0, 1e-6, step, 1e-2, qmap1,
                unsigned if two else None, st[2], st[3], wd, gs, skip,
            )  # fmt: skip
            results.append((mem, st))
        (mem, st), (rmem, rst) = results
        tol = 1e-6 if dtype == torch.float32 else 1e-2
        assert torch.equal(mem.isnan(), rmem.isnan())
        torch.testing.assert_close(mem.float(), rmem.float(), rtol=tol, atol=tol, equal_nan=True)
        for got, want in zip(st, rst):
            if got is None:
                continue
            if got.dtype == torch.uint8:  # the nearest code or its neighbour (spec §2.9)
                assert int((got.int() - want.int()).abs().max()) <= 1
            else:
                torch.testing.assert_close(got, want, rtol=1e-6, atol=0, equal_nan=True)


# ---- bad input ---------------------------------------------------------------------------------

_A = torch.randn(4, 64)
_P, _ABSMAX = REF["quantize_4bit"](_A, 64, "nf4", torch.uint8)
_CODE = dynamic_map(True)
_OFFSET = _ABSMAX.mean()
_Q8, _A8 = REF["quantize_blockwise"](_ABSMAX - _OFFSET, _CODE, 256)
_X = torch.randn(2, 64)
_TABLE = four_bit_decode_table("nf4")


def _gemm_nested(**kw):
    args = dict(absmax=_A8, absmax_8bit=_Q8, absmax_code=_CODE, absmax_offset=_OFFSET)
    args.update(kw)
    return lambda K: K["gemm_4bit"](_X, _P, [4, 64], args["absmax"], 64, "nf4", None, args["absmax_8bit"],
                                    args["absmax_code"], args["absmax_offset"])  # fmt: skip


def _opt8(name="adam", **kw):
    n = 300
    args = dict(
        state1=torch.zeros((2 if name == "ademamix" else 1) * n, dtype=torch.uint8),
        state2=torch.zeros(n, dtype=torch.uint8), qmap1=dynamic_map(True), qmap2=dynamic_map(False),
        absmax1=torch.ones(2), absmax2=torch.ones(2),
    )  # fmt: skip
    args.update(kw)
    return lambda K: K["optimizer_update_8bit_blockwise"](
        name, torch.randn(n), torch.randn(n), args["state1"], args["state2"], 0.9, 0.99, 0.999, 2.0, 1e-6, 1, 1e-3,
        args["qmap1"], args["qmap2"], args["absmax1"], args["absmax2"], 0.0, 1.0, False,
    )  # fmt: skip


def _opt32(name="adam", **kw):
    n = 300
    args = dict(p=torch.randn(n), state1=torch.zeros(n), state2=torch.zeros(n), unorm_vec=torch.zeros(1), max_unorm=0.0)
    args.update(kw)
    return lambda K: K["optimizer_update_32bit"](
        name, torch.randn(n), args["p"], args["state1"], args["state2"], args["unorm_vec"], args["max_unorm"], 1.0,
        0.9, 0.99, 0.999, 2.0, 1e-6, 0.0, 1, 1e-3, 1.0, False,
    )  # fmt: skip


BAD = {
    # the fix: gemm_4bit's nested scales, each checked under its own name (an offset of several
    # values broadcast over the scales: a wrong answer); the 8-bit optimizer's code books by name
    "gemm_nested_offset_of_several_values": (_gemm_nested(absmax_offset=_OFFSET.repeat(4)), ValueError, r"absmax_offset must hold one value"),
    "gemm_nested_offset_int": (_gemm_nested(absmax_offset=torch.tensor(1)), TypeError, r"absmax_offset must have dtype"),
    "gemm_nested_offset_on_another_device": (_gemm_nested(absmax_offset=_OFFSET.to("meta")), RuntimeError, r"absmax_offset must be on (cpu|a CUDA device)"),
    "gemm_nested_code_on_another_device": (_gemm_nested(absmax_code=_CODE.to("meta")), RuntimeError, r"absmax_code must be on (cpu|a CUDA device)"),
    "gemm_nested_code_short": (_gemm_nested(absmax_code=_CODE[:255]), ValueError, r"absmax_code must hold 256"),
    "gemm_nested_code_f16": (_gemm_nested(absmax_code=_CODE.half()), TypeError, r"absmax_code must have dtype"),
    "gemm_nested_8bit_f32": (_gemm_nested(absmax_8bit=_Q8.float()), TypeError, r"absmax_8bit must have dtype"),
    "gemm_nested_inner_absmax_count": (_gemm_nested(absmax=torch.ones(2)), ValueError, r"absmax \(the scales of absmax_8bit.*\) has 2"),
    "gemm_nested_8bit_count": (_gemm_nested(absmax_8bit=_Q8[:3]), ValueError, r"absmax_8bit has 3 entries"),
    "opt8_qmap1_short": (_opt8(qmap1=dynamic_map(True)[:255]), ValueError, r"qmap1 must hold 256"),
    "opt8_qmap2_f16": (_opt8(qmap2=dynamic_map(False).half()), TypeError, r"qmap2 must have dtype"),
    # already refused by name
    "q4_blocksize_48": (lambda K: K["quantize_4bit"](_A, 48, "nf4", torch.uint8), ValueError, r"blocksize 48"),
    "q4_quant_type": (lambda K: K["quantize_4bit"](_A, 64, "int4", torch.uint8), ValueError, r"quant_type"),
    "q4_f64": (lambda K: K["quantize_4bit"](_A.double(), 64, "nf4", torch.uint8), TypeError, r"A must have dtype"),
    "q4_storage_odd": (lambda K: K["quantize_4bit"](torch.randn(3), 64, "nf4", torch.float32), ValueError, r"quant_storage"),
    "q4_on_another_device": (lambda K: K["quantize_4bit"](_A.to("meta"), 64, "nf4", torch.uint8), RuntimeError, r"A must be on (cpu|a CUDA device)"),
    "dq4_absmax_short": (lambda K: K["dequantize_4bit"](_P, _ABSMAX[:-1], 64, "nf4", [4, 64], torch.float32), ValueError, r"absmax has 3"),
    "dq4_packed_short": (lambda K: K["dequantize_4bit"](_P[:-1], _ABSMAX, 64, "nf4", [4, 64], torch.float32), ValueError, r"A holds 127"),
    "dq4_wrong_blocksize": (lambda K: K["dequantize_4bit"](_P, _ABSMAX, 32, "nf4", [4, 64], torch.float32), ValueError, r"absmax has 4 .* needs 8"),
    "dq4_dtype_int": (lambda K: K["dequantize_4bit"](_P, _ABSMAX, 64, "nf4", [4, 64], torch.int32), TypeError, r"dtype must be"),
    "dq4_out_shape": (lambda K: K["dequantize_4bit.out"](_P, _ABSMAX, 64, "nf4", [4, 64], torch.float32, torch.empty(64, 4)), ValueError, r"out must have shape"),
    "dq4_out_device": (lambda K: K["dequantize_4bit.out"](_P, _ABSMAX, 64, "nf4", [4, 64], torch.float32, torch.empty(4, 64, device="meta")), RuntimeError, r"out must be on (cpu|a CUDA device)"),
    "gemv_code_15": (lambda K: K["gemv_4bit"](_X, _P, [4, 64], _ABSMAX, _TABLE[:15], 64), ValueError, r"code must hold 16"),
    "gemv_k_mismatch": (lambda K: K["gemv_4bit"](torch.randn(2, 63), _P, [4, 64], _ABSMAX, _TABLE, 64), ValueError, r"A's last dimension \(63\)"),
    "gemv_blocksize_0": (lambda K: K["gemv_4bit"](_X, _P, [4, 64], _ABSMAX, _TABLE, 0), ValueError, r"blocksize must be positive"),
    "gemv_out_dtype": (lambda K: K["gemv_4bit.out"](_X, _P, [4, 64], _ABSMAX, _TABLE, 64, torch.empty(2, 4, dtype=torch.half)), TypeError, r"out must have dtype"),
    "gemm_bias_shape": (lambda K: K["gemm_4bit"](_X, _P, [4, 64], _ABSMAX, 64, "nf4", torch.randn(3)), ValueError, r"bias must have shape"),
    "qb_code_short": (lambda K: K["quantize_blockwise"](_A, _CODE[:255], 64), ValueError, r"code must hold 256"),
    "dqb_absmax_count": (lambda K: K["dequantize_blockwise"](_P.reshape(2, 64), torch.ones(3), _CODE, 64, torch.float32), ValueError, r"absmax has 3"),
    "opt32_state1_size": (_opt32(state1=torch.zeros(301)), ValueError, r"state1 must hold 300"),
    "opt32_p_dtype": (_opt32(p=torch.randn(300).half()), TypeError, r"g dtype .* must equal p dtype"),
    "opt32_unorm_missing": (_opt32("lamb", unorm_vec=None, max_unorm=1.0), ValueError, r"unorm_vec is required"),
    "opt32_state2_device": (_opt32(state2=torch.zeros(300, device="meta")), RuntimeError, r"state2 must be on (cpu|a CUDA device)"),
    "opt8_absmax1_size": (_opt8(absmax1=torch.ones(1)), ValueError, r"absmax1 must hold 2"),
    "opt8_qmap1_device": (_opt8(qmap1=dynamic_map(True).to("meta")), RuntimeError, r"qmap1 must be on (cpu|a CUDA device)"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(BAD), ids=list(BAD))
def test_host_bad_input_names_the_argument(K, case):
    call, exc, match = BAD[case]
    with pytest.raises(exc, match=match):
        call(K)


def test_host_nested_gemm_accepts_a_one_element_offset(K):
    """The offset check refuses several values, not a one-element offset of any shape."""
    for offset in (_OFFSET, _OFFSET.reshape(1)):
        got = K["gemm_4bit"](_X, _P, [4, 64], _A8, 64, "nf4", None, _Q8, _CODE, offset)
        want = REF["gemm_4bit"](_X, _P, [4, 64], _A8, 64, "nf4", None, _Q8, _CODE, _OFFSET)
        mm_close(got, want, 64)
