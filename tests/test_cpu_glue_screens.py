"""The CPU glue's fast argument screens (``_gemm_4bit_args_ok``, ``_int8_scaled_mm_args_ok``, the
screen of ``int8_vectorwise_quant`` and the prepared runners' checks of A) against the reference:
each input that the shared checks refuse, or that needs a copy (strided, transposed, expanded,
offset views; other dtypes; wrong counts; meta tensors; 0-d and empty tensors), must raise the
reference's error or give the reference's result."""

from __future__ import annotations

import math

import pytest
import torch

import bitsandbytes as bnb
from bitsandbytes.backends.reference import KERNELS as REF

bnb_cpu = pytest.importorskip("bitsandbytes_cpu")
from bitsandbytes_cpu import kernels as cpu_kernels  # noqa: E402
from bitsandbytes_cpu import kernels_int8, prepared  # noqa: E402  (prepared gives the kernels their runners)

ops = torch.ops.bitsandbytes
TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}
N, K, BS = 8, 128, 64


def _call(fn):
    try:
        return True, fn()
    except Exception as e:  # noqa: BLE001 - the error itself is compared
        return False, e


def same(got_fn, want_fn, k: int = K) -> None:
    """``got_fn()`` raises what ``want_fn()`` raises (type and message; for a tensor on the meta
    device both name it) or returns its result (exact for integer outputs, within the matmul
    conformance tolerance for floats)."""
    ok_got, got = _call(got_fn)
    ok_want, want = _call(want_fn)
    assert ok_got == ok_want, f"cpu: {got!r}\nreference: {want!r}"
    if not ok_want:
        assert isinstance(got, type(want)) or isinstance(want, type(got)), (got, want)
        if "meta" in str(want) or "meta" in str(got):
            assert "meta" in str(got) and "meta" in str(want), (got, want)
        else:
            assert str(got) == str(want)
        return
    if isinstance(want, tuple):
        assert len(got) == len(want)
        pairs = [(g, w) for g, w in zip(got, want) if w is not None]
    else:
        pairs = [(got, want)]
    for g, w in pairs:
        assert g.shape == w.shape and g.dtype == w.dtype, (g.shape, w.shape, g.dtype, w.dtype)
        if w.is_meta:
            assert g.is_meta  # all on the meta device: the fake kernels' shapes only
        elif w.is_floating_point():
            tol = TOL[w.dtype]
            torch.testing.assert_close(g.float(), w.float(), rtol=tol, atol=tol * math.sqrt(k))
        else:
            assert torch.equal(g, w)


def _strided(t: torch.Tensor) -> torch.Tensor:
    """``t``'s values in a view with every other element of a wider buffer (non-contiguous)."""
    return torch.stack([t, torch.full_like(t, 7)], -1)[..., 0]


def _bytes_as(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return t.reshape(-1).view(dtype)


g = torch.Generator().manual_seed(0)
W = torch.randn(N, K, generator=g)
B4, ABS = REF["quantize_4bit"](W, BS, "nf4", torch.uint8)
A = torch.randn(3, K, generator=g)
BIAS = torch.randn(N, generator=g)
W7 = torch.randn(3, 7, generator=g)
B7, ABS7 = REF["quantize_4bit"](W7, 64, "nf4", torch.uint8)  # 21 values: 11 bytes

GEMM_4BIT = {
    "base": ((A, B4, [N, K], ABS, BS, "nf4"), {}),
    "bias f64": ((A, B4, [N, K], ABS, BS, "nf4"), {"bias": BIAS.double()}),
    "bias int": ((A, B4, [N, K], ABS, BS, "nf4"), {"bias": torch.arange(N)}),
    "bias 2-D": ((A, B4, [N, K], ABS, BS, "nf4"), {"bias": BIAS[None]}),
    "bias strided": ((A, B4, [N, K], ABS, BS, "nf4"), {"bias": _strided(BIAS)}),
    "bias expanded": ((A, B4, [N, K], ABS, BS, "nf4"), {"bias": torch.tensor([1.5]).expand(N)}),
    "bias short": ((A, B4, [N, K], ABS, BS, "nf4"), {"bias": BIAS[:-1]}),
    "bias 0-d": ((A, B4, [N, K], ABS, BS, "nf4"), {"bias": torch.tensor(1.0)}),
    "bias meta": ((A, B4, [N, K], ABS, BS, "nf4"), {"bias": BIAS.to("meta")}),
    "bias bf16, A f16": ((A.half(), B4, [N, K], ABS, BS, "nf4"), {"bias": BIAS.bfloat16()}),
    "A f64": ((A.double(), B4, [N, K], ABS, BS, "nf4"), {}),
    "A int": ((A.int(), B4, [N, K], ABS, BS, "nf4"), {}),
    "A 0-d": ((torch.tensor(1.0), B4, [N, K], ABS, BS, "nf4"), {}),
    "A transposed": ((A.t().contiguous().t(), B4, [N, K], ABS, BS, "nf4"), {}),
    "A strided": ((_strided(A), B4, [N, K], ABS, BS, "nf4"), {}),
    "A expanded": ((A[:1].expand(5, K), B4, [N, K], ABS, BS, "nf4"), {"bias": BIAS}),
    "A offset": ((torch.cat([A[:1], A])[1:], B4, [N, K], ABS, BS, "nf4"), {}),
    "A empty": ((A[:0], B4, [N, K], ABS, BS, "nf4"), {"bias": BIAS}),
    "A 40 rows": ((torch.randn(40, K, generator=g), B4, [N, K], ABS, BS, "nf4"), {"bias": BIAS}),
    "A 8 rows bf16": ((torch.randn(8, K, generator=g).bfloat16(), B4, [N, K], ABS, BS, "nf4"), {"bias": BIAS}),
    "A 40 rows bf16": ((torch.randn(40, K, generator=g).bfloat16(), B4, [N, K], ABS, BS, "nf4"), {}),
    "A wrong k": ((A[:, :-1], B4, [N, K], ABS, BS, "nf4"), {}),
    "B strided": ((A, _strided(B4), [N, K], ABS, BS, "nf4"), {}),
    "B transposed": ((A, B4.view(-1, 2).t(), [N, K], ABS, BS, "nf4"), {}),
    "B int8": ((A, _bytes_as(B4, torch.int8), [N, K], ABS, BS, "nf4"), {}),
    "B f16 bytes": ((A, _bytes_as(B4, torch.float16), [N, K], ABS, BS, "nf4"), {}),
    "B f32 bytes": ((A, _bytes_as(B4, torch.float32), [N, K], ABS, BS, "nf4"), {}),
    "B f64 bytes": ((A, _bytes_as(B4, torch.float64), [N, K], ABS, BS, "nf4"), {}),
    "B int32 bytes": ((A, _bytes_as(B4, torch.int32), [N, K], ABS, BS, "nf4"), {}),
    "B short": ((A, B4[:-1], [N, K], ABS, BS, "nf4"), {}),
    "B meta": ((A, B4.to("meta"), [N, K], ABS, BS, "nf4"), {}),
    "B expanded": ((A, torch.tensor([0x17], dtype=torch.uint8).expand(N * K // 2, 1), [N, K], ABS, BS, "nf4"), {}),
    "B odd f16 bytes": (
        (torch.randn(2, 7), _bytes_as(torch.cat([B7, B7[:1]]), torch.float16), [3, 7], ABS7, 64, "nf4"),
        {},
    ),
    "odd weight": ((torch.randn(2, 7), B7, [3, 7], ABS7, 64, "fp4"), {}),
    "absmax f64": ((A, B4, [N, K], ABS.double(), BS, "nf4"), {}),
    "absmax f16": ((A, B4, [N, K], ABS.half(), BS, "nf4"), {}),
    "absmax strided": ((A, B4, [N, K], _strided(ABS), BS, "nf4"), {}),
    "absmax expanded": ((A, B4, [N, K], ABS[:1].expand(ABS.numel()), BS, "nf4"), {}),
    "absmax 2-D": ((A, B4, [N, K], ABS.view(2, -1), BS, "nf4"), {}),
    "absmax short": ((A, B4, [N, K], ABS[:-1], BS, "nf4"), {}),
    "absmax meta": ((A, B4, [N, K], ABS.to("meta"), BS, "nf4"), {}),
    "blocksize 63": ((A, B4, [N, K], ABS, 63, "nf4"), {}),
    "blocksize 16": ((A, B4, [N, K], torch.ones(64), 16, "nf4"), {}),
    "blocksize 128, absmax of 64": ((A, B4, [N, K], ABS, 128, "nf4"), {}),
    "quant_type int4": ((A, B4, [N, K], ABS, BS, "int4"), {}),
    "shapeB 3-D": ((A, B4, [N, K, 1], ABS, BS, "nf4"), {}),
    "shapeB swapped": ((torch.randn(3, N), B4, [K, N], ABS, BS, "nf4"), {}),
    "shapeB negative": ((A, B4, [-N, K], ABS, BS, "nf4"), {}),
    "k = 0": ((torch.randn(3, 0), torch.empty(0, 1, dtype=torch.uint8), [N, 0], torch.empty(0), BS, "nf4"), {}),
    "n = 0": ((A, torch.empty(0, 1, dtype=torch.uint8), [0, K], torch.empty(0), BS, "nf4"), {"bias": torch.empty(0)}),
}


@pytest.mark.parametrize("case", list(GEMM_4BIT))
def test_gemm_4bit_screen(case):
    args, kw = GEMM_4BIT[case]
    k = args[0].shape[-1] if args[0].dim() else 1
    same(lambda: ops.gemm_4bit(*args, **kw), lambda: REF["gemm_4bit"](*args, **kw), k)


NF4 = torch.tensor(cpu_kernels._DECODE_VALUES["nf4"])
GEMV_4BIT = {
    "base": (A, B4, [N, K], ABS, NF4, BS),
    "code strided": (A, B4, [N, K], ABS, _strided(NF4), BS),
    "code f64": (A, B4, [N, K], ABS, NF4.double(), BS),
    "code short": (A, B4, [N, K], ABS, NF4[:-1], BS),
    "code meta": (A, B4, [N, K], ABS, NF4.to("meta"), BS),
    "absmax strided": (A, B4, [N, K], _strided(ABS), NF4, BS),
    "blocksize 100": (A, B4, [N, K], torch.ones(11), NF4, 100),
    "B f64 bytes": (A, _bytes_as(B4, torch.float64), [N, K], ABS, NF4, BS),
    "A f64": (A.double(), B4, [N, K], ABS, NF4, BS),
    "A transposed": (A.t().contiguous().t(), B4, [N, K], ABS, NF4, BS),
}


@pytest.mark.parametrize("case", list(GEMV_4BIT))
def test_gemv_4bit_checks(case):
    args = GEMV_4BIT[case]
    same(lambda: ops.gemv_4bit(*args), lambda: REF["gemv_4bit"](*args))


GEMV_4BIT_OUT = {
    "out f32 for f16 A": (A.half(), torch.full((3, N), 7.0)),
    "out bf16 for f32 A": (A, torch.full((3, N), 7.0, dtype=torch.bfloat16)),
    "out short": (A, torch.full((3, N - 1), 7.0)),
    "out flat": (A, torch.full((3 * N,), 7.0)),
}


@pytest.mark.parametrize("case", list(GEMV_4BIT_OUT))
def test_gemv_4bit_out_checks(case):
    """An ``out`` of another shape or dtype than the product's is refused before any write."""
    a, out = GEMV_4BIT_OUT[case]
    args = (a, B4, [N, K], ABS, NF4, BS)
    got_out, want_out = out.clone(), out.clone()
    same(lambda: ops.gemv_4bit.out(*args, out=got_out), lambda: REF["gemv_4bit.out"](*args, want_out))
    assert torch.equal(got_out, want_out)


AT = torch.randn(3, N, generator=g)
GEMM_4BIT_T = {
    "base": (AT, B4, [N, K], ABS, BS, "nf4"),
    "B f64 bytes": (AT, _bytes_as(B4, torch.float64), [N, K], ABS, BS, "nf4"),
    "B int8": (AT, _bytes_as(B4, torch.int8), [N, K], ABS, BS, "nf4"),
    "absmax strided": (AT, B4, [N, K], _strided(ABS), BS, "nf4"),
    "A 0-d": (torch.tensor(1.0), B4, [N, K], ABS, BS, "nf4"),
    "A transposed": (AT.t().contiguous().t(), B4, [N, K], ABS, BS, "nf4"),
    "A 40 rows bf16": (torch.randn(40, N, generator=g).bfloat16(), B4, [N, K], ABS, BS, "nf4"),
    "A f64": (AT.double(), B4, [N, K], ABS, BS, "nf4"),
}


@pytest.mark.parametrize("case", list(GEMM_4BIT_T))
def test_gemm_4bit_t_checks(case):
    args = GEMM_4BIT_T[case]
    same(lambda: ops.gemm_4bit_t(*args), lambda: REF["gemm_4bit_t"](*args), N)


# ---- LLM.int8() ------------------------------------------------------------------------------

I8 = torch.randint(-127, 128, (3, K), dtype=torch.int8, generator=g)
CB = torch.randint(-127, 128, (N, K), dtype=torch.int8, generator=g)
RS = torch.rand(3, generator=g) * 5
CS = torch.rand(N, generator=g) * 5


def _ref_scaled_mm(A, B, row_stats, col_stats, bias=None, dtype=None):
    # The reference's int8_scaled_mm calls torch.ops, which would dispatch to this wheel.
    acc = REF["int8_linear_matmul"](A, B)
    return REF["int8_mm_dequant"](acc, row_stats, col_stats, dtype=dtype or torch.float16, bias=bias)


INT8_SCALED_MM = {
    "base": ((I8, CB, RS, CS), {}),
    "bias": ((I8, CB, RS, CS), {"bias": BIAS}),
    "bias f64": ((I8, CB, RS, CS), {"bias": BIAS.double()}),
    "bias f16": ((I8, CB, RS, CS), {"bias": BIAS.half()}),
    "bias int": ((I8, CB, RS, CS), {"bias": torch.arange(N)}),
    "bias 1xN": ((I8, CB, RS, CS), {"bias": BIAS[None]}),
    "bias strided": ((I8, CB, RS, CS), {"bias": _strided(BIAS)}),
    "bias expanded": ((I8, CB, RS, CS), {"bias": torch.tensor([1.5]).expand(N)}),
    "bias short": ((I8, CB, RS, CS), {"bias": BIAS[:-1]}),
    "bias meta": ((I8, CB, RS, CS), {"bias": BIAS.to("meta")}),
    "dtype f64": ((I8, CB, RS, CS), {"dtype": torch.float64}),
    "dtype int32": ((I8, CB, RS, CS), {"dtype": torch.int32}),
    "dtype bf16": ((I8, CB, RS, CS), {"dtype": torch.bfloat16}),
    "A transposed": ((I8.t().contiguous().t(), CB, RS, CS), {}),
    "A strided": ((_strided(I8), CB, RS, CS), {}),
    "A expanded": ((I8[:1].expand(3, K), CB, RS, CS), {}),
    "A uint8": ((I8.view(torch.uint8), CB, RS, CS), {}),
    "A 0-d": ((torch.tensor(1, dtype=torch.int8), CB, RS, CS), {}),
    "A 1-D": ((I8[0], CB, RS[:1], CS), {}),
    "A 3-D": ((I8.view(3, 1, K), CB, RS, CS), {}),
    "A empty": ((I8[:0], CB, RS[:0], CS), {}),
    "k = 0": ((torch.empty(3, 0, dtype=torch.int8), torch.empty(N, 0, dtype=torch.int8), RS, CS), {}),
    "A meta": ((I8.to("meta"), CB, RS, CS), {}),
    "B transposed": ((I8, CB.t().contiguous().t(), RS, CS), {}),
    "B expanded": ((I8, CB[:1].expand(N, K), RS, CS), {}),
    "B 3-D": ((I8, CB[None], RS, CS), {}),
    "B 1-D": ((I8, CB[0], RS, CS), {}),
    "row_stats f64": ((I8, CB, RS.double(), CS), {}),
    "row_stats strided": ((I8, CB, _strided(RS), CS), {}),
    "row_stats 2-D": ((I8, CB, RS[:, None], CS), {}),
    "row_stats short": ((I8, CB, RS[:-1], CS), {}),
    "row_stats 0-d": ((I8[:1], CB, torch.tensor(2.0), CS), {}),
    "col_stats strided": ((I8, CB, RS, _strided(CS)), {}),
    "col_stats expanded": ((I8, CB, RS, CS[:1].expand(N)), {}),
    "col_stats long": ((I8, CB, RS, torch.cat([CS, CS])), {}),
    "col_stats f16": ((I8, CB, RS, CS.half()), {}),
    "col_stats meta": ((I8, CB, RS, CS.to("meta")), {}),
}


@pytest.mark.parametrize("case", list(INT8_SCALED_MM))
def test_int8_scaled_mm_screen(case):
    args, kw = INT8_SCALED_MM[case]
    same(lambda: ops.int8_scaled_mm(*args, **kw), lambda: _ref_scaled_mm(*args, **kw))


AF = torch.randn(3, K, generator=g) * 3
AEQ = AF.clone()
AEQ[:, 4] = torch.tensor([0.5, 2.0, -0.25])  # |a| == threshold: an outlier, kept out of the column maximum
VECTORWISE = {
    "base": (AF, 0.0),
    "threshold": (AF, 2.0),
    "threshold nan": (AF, float("nan")),
    "threshold negative": (AF, -1.0),
    "threshold inf": (AF, float("inf")),
    "A transposed": (AF.t().contiguous().t(), 2.0),
    "A expanded": (AF[:1].expand(3, K), 2.0),
    "A f64": (AF.double(), 0.0),
    "A int": (AF.int(), 0.0),
    "A 0-d": (torch.tensor(1.0), 0.0),
    "A 1-D": (AF[0], 2.0),
    "A empty": (AF[:0], 2.0),
    "A k = 0": (torch.empty(3, 0), 2.0),
    "A meta": (AF.to("meta"), 0.0),
    "threshold hit exactly": (AEQ, 2.0),
}


@pytest.mark.parametrize("op", ["int8_vectorwise_quant", "int8_double_quant"])
@pytest.mark.parametrize("case", list(VECTORWISE))
def test_int8_vectorwise_quant_screen(op, case):
    args = VECTORWISE[case]
    same(lambda: getattr(ops, op)(*args), lambda: REF[op](*args))


AH = torch.randn(3, K, generator=g).half()
CA, SCA, _ = REF["int8_vectorwise_quant"](AH, 0.0)
COLS = torch.tensor([1, 5])
MIXED = {
    "no outliers": (AH, CA, CB, SCA, CS),
    "outliers": (AH, CA, CB, SCA, CS, COLS),
    "outliers, bias": (AH, CA, CB, SCA, CS, COLS, BIAS.half()),
    "outlier_cols int32": (AH, CA, CB, SCA, CS, COLS.int()),
    "outlier_cols strided": (AH, CA, CB, SCA, CS, _strided(COLS)),
    "outlier_cols negative": (AH, CA, CB, SCA, CS, torch.tensor([-1])),
    "outlier_cols past k": (AH, CA, CB, SCA, CS, torch.tensor([K])),
    "outlier_cols 2-D": (AH, CA, CB, SCA, CS, COLS[None]),
    "outlier_cols float": (AH, CA, CB, SCA, CS, COLS.float()),
    "SCB strided": (AH, CA, CB, SCA, _strided(CS), COLS),
    "SCB short": (AH, CA, CB, SCA, CS[:-1], COLS),
    "SCB f64": (AH, CA, CB, SCA, CS.double(), COLS),
    "CB transposed": (AH, CA, CB.t().contiguous().t(), SCA, CS, COLS),
    "CB 3-D": (AH, CA, CB[None], SCA, CS, COLS),
    "CB f16": (AH, CA, CB.half(), SCA, CS, COLS),
    "A wrong k": (AH[:, :-1], CA, CB, SCA, CS, COLS),
    "SCA strided": (AH, CA, CB, _strided(SCA), CS, COLS),
}


@pytest.mark.parametrize("case", list(MIXED))
def test_int8_mixed_scaled_mm_checks(case):
    args = MIXED[case]
    same(lambda: ops.int8_mixed_scaled_mm(*args), lambda: REF["int8_mixed_scaled_mm"](*args))


AW = torch.randn(3, K, generator=g)
WEIGHT_MM = {
    "base": ("int8_weight_mm", (AW, CB, CS)),
    "bias": ("int8_weight_mm", (AW, CB, CS, BIAS)),
    "bias 1xN": ("int8_weight_mm", (AW, CB, CS, BIAS[None])),
    "bias int": ("int8_weight_mm", (AW, CB, CS, torch.arange(N))),
    "bias expanded": ("int8_weight_mm", (AW, CB, CS, torch.tensor([1.5]).expand(N))),
    "bias meta": ("int8_weight_mm", (AW, CB, CS, BIAS.to("meta"))),
    "CB transposed": ("int8_weight_mm", (AW, CB.t().contiguous().t(), CS)),
    "SCB strided": ("int8_weight_mm", (AW, CB, _strided(CS))),
    "A transposed": ("int8_weight_mm", (AW.t().contiguous().t(), CB, CS)),
    "A 0-d": ("int8_weight_mm", (torch.tensor(1.0), CB, CS)),
    "200 rows bf16, bias f16": ("int8_weight_mm", (torch.randn(200, K, generator=g).bfloat16(), CB, CS, BIAS.half())),
    "f16, bias bf16": ("int8_weight_mm", (AW.half(), CB, CS, BIAS.bfloat16())),
    "t base": ("int8_weight_mm_t", (AT, CB, CS)),
    "t CB transposed": ("int8_weight_mm_t", (AT, CB.t().contiguous().t(), CS)),
    "t SCB strided": ("int8_weight_mm_t", (AT, CB, _strided(CS))),
    "t 50 rows bf16": ("int8_weight_mm_t", (torch.randn(50, N, generator=g).bfloat16(), CB, CS / 8)),
}


@pytest.mark.parametrize("case", list(WEIGHT_MM))
def test_int8_weight_mm_checks(case):
    op, args = WEIGHT_MM[case]
    same(lambda: getattr(ops, op)(*args), lambda: REF[op](*args), args[0].shape[-1] if args[0].dim() else 1)


@pytest.mark.parametrize(
    "case", ["p is g", "g offset into p", "state1 is p", "state2 is state1", "state1 in strided p", "g in strided p"]
)
def test_optimizer_aliasing_refused(case):
    """The glue skips its alias check when p and g are contiguous; the native library refuses.
    Where p or g is strided, the kernel gets a copy, so the glue checks the originals' memory."""

    def args():
        buf, s1, s2, wide = torch.randn(9), torch.zeros(8), torch.zeros(8), torch.randn(16)
        return {
            "p is g": (buf[:8], buf[:8], s1, s2),
            "g offset into p": (buf[1:], buf[:8], s1, s2),
            "state1 is p": (buf[1:].clone(), buf[:8], buf[:8], s2),
            "state2 is state1": (buf[1:].clone(), buf[:8], s1, s1),
            "state1 in strided p": (buf[1:].clone(), wide[::2], wide[:8], s2),
            "g in strided p": (wide[8:], wide[::2], s1, s2),
        }[case]

    rest = (None, 0.0, 0.0, 0.9, 0.99, 0.0, 0.0, 1e-8, 0.0, 1, 1e-3, 1.0, False)
    for fn in (ops.optimizer_update_32bit, REF["optimizer_update_32bit"]):
        g_, p, s1, s2 = args()
        with pytest.raises(ValueError, match="share memory"):
            fn("adam", g_, p, s1, s2, *rest)


# ---- prepared runners and the layers that keep them -------------------------------------------


def test_prepared_gemm_4bit_runner_refuses_0d():
    run = bnb_cpu.kernels.gemm_4bit.prepare(B4, [N, K], ABS, BS, "nf4", BIAS, torch.float32)
    assert run is not None
    torch.testing.assert_close(run(A), REF["gemm_4bit"](A, B4, [N, K], ABS, BS, "nf4", BIAS), rtol=1e-5, atol=1e-4)
    assert run(torch.tensor(1.0)) is None
    assert run(A.double()) is None and run(A.t().contiguous().t()) is None and run(A[:0]) is None


def test_prepared_int8_runner_refuses_0d():
    run = bnb_cpu.kernels_int8.int8_mixed_scaled_mm.prepare(CB, CS, BIAS.half(), 0.0, torch.float16)
    assert run is not None
    assert run(AH) is not None
    assert run(torch.tensor(1.0, dtype=torch.float16)) is None


@pytest.mark.parametrize("storage", [torch.uint8, torch.float16])
def test_linear4bit_0d_input_after_warm_call(storage):
    layer = bnb.nn.Linear4bit(K, N, quant_type="nf4", quant_storage=storage).to("cpu")
    with torch.no_grad():
        layer(torch.randn(2, K))
        layer(torch.randn(2, K))  # a decoding runner is kept by now
        with pytest.raises(ValueError, match="in_features=128"):
            layer(torch.tensor(1.0))
        x = torch.randn(1, K).expand(3, K)
        qs = layer.weight.quant_state
        want = torch.nn.functional.linear(
            x,
            REF["dequantize_4bit"](
                layer.weight.reshape(-1, 1).view(torch.uint8),
                qs.absmax if not qs.nested else _nested(qs),
                qs.blocksize,
                "nf4",
                list(qs.shape),
                torch.float32,
            ),
            layer.bias,
        )
        torch.testing.assert_close(layer(x), want, rtol=1e-5, atol=1e-4)


def _nested(qs):
    s2 = qs.state2
    return REF["dequantize_blockwise"](qs.absmax, s2.absmax, s2.code, s2.blocksize, torch.float32) + qs.offset


def test_linear8bit_0d_input():
    layer = bnb.nn.Linear8bitLt(K, N, has_fp16_weights=False).to("cpu")
    with torch.no_grad():
        layer(torch.randn(2, K))
        layer(torch.randn(2, K))
        with pytest.raises(ValueError, match="in_features=128"):
            layer(torch.tensor(1.0))


@pytest.mark.parametrize("threshold", [0.0, 6.0])
def test_prepared_int8_runner_fits_its_buffer(monkeypatch, threshold):
    """At its most rows, with a short k and a wide n, the runner's quantized rows, scales, outlier
    flags and int32 products each fit the thread buffer it asks for (nothing is written past it,
    nothing overwrites another part) and it gives the two ops' result bit for bit."""
    guard = 1 << 18
    asked = []

    def buffer(nbytes: int) -> int:
        buf = torch.full((nbytes + guard,), 0xA5, dtype=torch.uint8)
        asked.append((buf, nbytes))
        return buf.data_ptr()

    monkeypatch.setattr(prepared, "_buffer", buffer)
    rows, n, k = prepared.INT8_MAX_ROWS, 512, 32
    gen = torch.Generator().manual_seed(11)
    cb = torch.randint(-127, 128, (n, k), dtype=torch.int8, generator=gen)
    scb = torch.rand(n, generator=gen) * 3 + 0.5
    bias = torch.randn(n, generator=gen).bfloat16()
    a = (torch.randn(rows, k, generator=gen) * 2).clamp(-5, 5).bfloat16()  # no outlier at 6
    run = prepared.prepare_int8_linear(cb, scb, bias, threshold, torch.bfloat16)
    got = run(a)
    assert got is not None and len(asked) == 1
    buf, nbytes = asked[0]
    assert nbytes >= rows * k + 4 * rows + 4 * rows * n
    assert bool((buf[nbytes:] == 0xA5).all())
    ca, sca, _ = kernels_int8.int8_vectorwise_quant(a.half(), threshold)
    want = kernels_int8.int8_scaled_mm(ca, cb, sca, scb, bias=bias, dtype=torch.bfloat16)
    assert got.dtype == torch.bfloat16 and got.shape == (rows, n)
    assert torch.equal(got, want)
