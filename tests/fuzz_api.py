"""Property-based fuzzing of the public API (run as a program; tests/test_fuzz.py runs it in a child
process so that a native crash is a reported failure, not a dead test runner).

Every property draws inputs (shapes with 0 to 4 dims including empty and odd sizes and sizes that
are not a multiple of the block size, f32/f16/bf16, valid and invalid block sizes, transposed and
strided views, NaN/inf, truncated absmax, mismatched K, corrupted quant-state JSON, tensors on another device) and checks that
each call either equals the reference kernels bit for bit or raises a Python exception of a clear
kind with a message; a mismatch in outcome (one raises, the other returns) is a failure too.

    python tests/fuzz_api.py --examples 60 --seed 0     # the CI budget
    python tests/fuzz_api.py --examples 2000 --seed 7   # nox -s fuzz
"""

from __future__ import annotations

import argparse
import faulthandler
import json
import sys
import time

import torch
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

import bitsandbytes as bnb
import bitsandbytes.functional as F
from bitsandbytes.backends.reference import KERNELS as REF
from bitsandbytes.backends.reference.codebooks import dynamic_map

OPS = torch.ops.bitsandbytes
CLEAR = (ValueError, TypeError, NotImplementedError, RuntimeError, IndexError, KeyError)
DTYPES = (torch.float32, torch.float16, torch.bfloat16)
GOOD_BLOCKS = (64, 128, 256, 512, 1024, 2048, 4096)
BAD_BLOCKS = (0, -64, 3, 48, 100, 65)
COUNTS: dict[str, int] = {}


def _count(name: str) -> None:
    COUNTS[name] = COUNTS.get(name, 0) + 1


def bits(t: torch.Tensor) -> torch.Tensor:
    """Integer view of a tensor: compares NaN payloads and signed zeros exactly."""
    view = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()]
    return t.contiguous().view(view)


def outcome(fn, *args):
    try:
        return "ok", fn(*args)
    except CLEAR as err:
        assert str(err).strip(), f"{type(err).__name__} without a message"
        return "err", err


def same(a, b, what: str) -> None:
    if isinstance(a, (tuple, list)):
        assert len(a) == len(b), what
        for i, (x, y) in enumerate(zip(a, b)):
            same(x, y, f"{what}[{i}]")
        return
    if a is None or b is None:
        assert a is b, what
        return
    assert a.shape == b.shape and a.dtype == b.dtype, (what, a.shape, b.shape, a.dtype, b.dtype)
    if a.is_floating_point():
        # NaN where the reference has NaN (its sign and payload are not part of the contract),
        # every other value bit for bit, signed zeros included
        nan = a.isnan()
        assert torch.equal(nan, b.isnan()), f"{what}: NaN positions differ"
        a, b = a.masked_fill(nan, 0), b.masked_fill(nan, 0)
    assert torch.equal(bits(a), bits(b)), what


def agree(name: str, native, reference, *args, tol: float | None = None, k: int = 1) -> tuple:
    """Run both; they must both raise (clearly) or both return bit-identical results (matmuls:
    within ``tol`` relative and ``tol * sqrt(k)`` absolute, the accumulation order may differ)."""
    _count(name)
    got, want = outcome(native, *args), outcome(reference, *args)
    assert got[0] == want[0], f"{name}: native {got[0]} ({got[1]!r:.300}) but reference {want[0]} ({want[1]!r:.300})"
    if got[0] == "ok" and tol is None:
        same(got[1], want[1], name)
    elif got[0] == "ok":
        assert got[1].shape == want[1].shape and got[1].dtype == want[1].dtype, name
        torch.testing.assert_close(
            got[1], want[1], rtol=tol, atol=tol * k**0.5, equal_nan=True, msg=lambda m: f"{name}: {m}"
        )
    return got


MATMUL_TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


@st.composite
def tensors(draw, max_dims: int = 4, max_numel: int = 6000, dtypes=DTYPES, specials: bool = True):
    dims = draw(st.integers(0, max_dims))
    shape = [draw(st.sampled_from((0, 1, 2, 3, 5, 7, 31, 64, 65, 127, 200))) for _ in range(dims)]
    while shape and torch.Size(shape).numel() > max_numel:
        shape[shape.index(max(shape))] //= 2
    dtype = draw(st.sampled_from(dtypes))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    x = (torch.randn(shape, generator=g) * draw(st.sampled_from((1e-3, 1.0, 1e3)))).to(dtype)
    if specials and x.numel() and draw(st.booleans()):
        flat = x.view(-1)
        for _ in range(draw(st.integers(1, 3))):
            flat[draw(st.integers(0, flat.numel() - 1))] = draw(
                st.sampled_from((float("nan"), float("inf"), -float("inf"), 0.0, -0.0))
            )
    view = draw(st.sampled_from(("contiguous", "transposed", "strided")))
    if view == "transposed" and x.dim() >= 2:
        x = x.transpose(0, -1)
    elif view == "strided" and x.dim() >= 1 and x.shape[-1] >= 2:
        x = x[..., ::2]
    return x


blocks = st.one_of(st.sampled_from(GOOD_BLOCKS), st.sampled_from(BAD_BLOCKS))


@given(x=tensors(), blocksize=blocks)
def prop_blockwise(x, blocksize):
    code = dynamic_map()
    status, out = agree("quantize_blockwise", OPS.quantize_blockwise, REF["quantize_blockwise"], x, code, blocksize)
    if status == "ok":
        q, absmax = out
        agree(
            "dequantize_blockwise",
            OPS.dequantize_blockwise,
            REF["dequantize_blockwise"],
            q,
            absmax,
            code,
            blocksize,
            x.dtype,
        )
        # the functional API on the same input (quant state built by the library)
        _count("functional.blockwise")
        q2, qs = F.quantize_blockwise(x, blocksize=blocksize)
        same(
            F.dequantize_blockwise(q2, qs),
            REF["dequantize_blockwise"](q, absmax, code, blocksize, x.dtype),
            "functional",
        )


@st.composite
def code_books(draw):
    """A 256-entry code book in any order: the dynamic map, random values, or few distinct values
    (many equal neighbours); sorted, two neighbours swapped, reversed or shuffled; a quarter of
    them with a NaN or an infinity."""
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    base = draw(st.sampled_from(("dynamic", "random", "ties")))
    if base == "dynamic":
        code = dynamic_map()
    elif base == "random":
        code = torch.randn(256, generator=g).sort().values
        code = code / code.abs().max()
    else:
        code = torch.randint(-8, 9, (256,), generator=g).float().sort().values / 8
    order = draw(st.sampled_from(("sorted", "swap", "reversed", "shuffled")))
    if order == "swap":
        i = draw(st.integers(0, 254))
        code[[i, i + 1]] = code[[i + 1, i]]
    elif order == "reversed":
        code = code.flip(0)
    elif order == "shuffled":
        code = code[torch.randperm(256, generator=g)]
    if draw(st.integers(0, 3)) == 0:
        code[draw(st.integers(0, 255))] = draw(st.sampled_from((float("nan"), float("inf"), -float("inf"))))
    return code.contiguous()


def searchable(code: torch.Tensor) -> bool:
    """Whether a quantizer can search ``code``: finite and ascending (equal neighbours allowed)."""
    return bool(torch.isfinite(code).all()) and bool((code[1:] >= code[:-1]).all())


@given(x=tensors(max_dims=2, max_numel=3000), code=code_books(), blocksize=st.sampled_from(GOOD_BLOCKS))
def prop_code_books(x, code, blocksize):
    """The op refuses a code book it cannot search (out of order, NaN, infinite) exactly where the
    reference does, whatever the input's size, and equals it bit for bit otherwise; the functional
    API quantizes a finite table in any order to its nearest entries."""
    status, out = agree(
        "quantize_blockwise[any code]", OPS.quantize_blockwise, REF["quantize_blockwise"], x, code, blocksize
    )
    assert (status == "ok") == searchable(code), (status, out)
    if not bool(torch.isfinite(code).all()) or x.numel() == 0:
        return
    _count("functional.blockwise[any code]")
    q, qs = F.quantize_blockwise(x, code=code, blocksize=blocksize)
    ordered, order = code.sort(stable=True)
    q_sorted, absmax = REF["quantize_blockwise"](x, ordered, blocksize)
    same(q, order.to(torch.uint8)[q_sorted.long()], "functional codes")
    same(qs.absmax, absmax, "functional absmax")


@given(
    x=tensors(),
    blocksize=st.one_of(st.sampled_from((32, 64, 128, 256, 4096)), st.sampled_from(BAD_BLOCKS)),
    quant_type=st.sampled_from(("nf4", "fp4", "int4")),
    storage=st.sampled_from((torch.uint8, torch.bfloat16, torch.float32, torch.int64)),
)
def prop_4bit(x, blocksize, quant_type, storage):
    status, out = agree("quantize_4bit", OPS.quantize_4bit, REF["quantize_4bit"], x, blocksize, quant_type, storage)
    if status != "ok":
        return
    packed, absmax = out
    shape = list(x.shape)
    agree(
        "dequantize_4bit",
        OPS.dequantize_4bit,
        REF["dequantize_4bit"],
        packed,
        absmax,
        blocksize,
        quant_type,
        shape,
        x.dtype,
    )
    if absmax.numel() > 1:  # truncated absmax must be refused, not read past its end
        agree(
            "dequantize_4bit[truncated]",
            OPS.dequantize_4bit,
            REF["dequantize_4bit"],
            packed,
            absmax[:-1],
            blocksize,
            quant_type,
            shape,
            x.dtype,
        )


@given(
    n=st.sampled_from((1, 3, 16, 33, 64)),
    k=st.sampled_from((1, 7, 64, 65, 128, 300)),
    m=st.sampled_from((0, 1, 2, 5, 40)),
    dtype=st.sampled_from(DTYPES),
    quant_type=st.sampled_from(("nf4", "fp4")),
    blocksize=st.sampled_from((64, 128)),
    k_skew=st.sampled_from((0, 0, 0, 1, -1)),
    s=st.integers(0, 2**31 - 1),
)
def prop_gemm_4bit(n, k, m, dtype, quant_type, blocksize, k_skew, s):
    g = torch.Generator().manual_seed(s)
    w = torch.randn(n, k, generator=g)
    packed, absmax = REF["quantize_4bit"](w, blocksize, quant_type, torch.uint8)
    a = torch.randn(m, k + k_skew if k + k_skew > 0 else k, generator=g).to(dtype)
    tol = MATMUL_TOL[dtype]
    agree("gemm_4bit", OPS.gemm_4bit, REF["gemm_4bit"], a, packed, [n, k], absmax, blocksize, quant_type, tol=tol, k=k)
    if m == 1 or (m == 0 and k_skew == 0):
        code = F.get_4bit_type(quant_type)
        agree(
            "gemv_4bit",
            OPS.gemv_4bit,
            REF["gemv_4bit"],
            a.view(1, 1, -1) if m else a,
            packed,
            [n, k],
            absmax,
            code,
            blocksize,
            tol=tol,
            k=k,
        )


@given(x=tensors(max_dims=2, specials=True), threshold=st.sampled_from((0.0, 0.0, 1.5, 6.0, -1.0)))
def prop_int8(x, threshold):
    agree("int8_vectorwise_quant", OPS.int8_vectorwise_quant, REF["int8_vectorwise_quant"], x, threshold)


_NAMES = ["adam", "momentum", "rmsprop", "lion", "adagrad", "ademamix"]


def near_step(got: tuple, want: tuple, what: str) -> None:
    """An optimizer step's tensors against the reference's, within float rounding: fused kernels
    reassociate, and torch's CPU sqrt is not always correctly rounded (1 ulp), so a state code may
    land one step away."""
    for a, b in zip(got, want):
        if a is None:
            continue
        if a.dtype == torch.uint8 and a.numel():
            assert (a.int() - b.int()).abs().le(1).float().mean() >= 0.99, what
        else:
            torch.testing.assert_close(a.float(), b.float(), rtol=2e-2, atol=2e-2, equal_nan=True)


@given(
    n=st.sampled_from((0, 1, 255, 256, 257, 1000, 4103)),
    name=st.sampled_from(("adam", "momentum", "lion", "ademamix")),
    qmap1=code_books(),
    qmap2=code_books(),
    s=st.integers(0, 2**31 - 1),
)
def prop_optimizer_code_books(n, name, qmap1, qmap2, s):
    """An 8-bit step with code books in any order: refused exactly where the reference refuses it,
    whatever the parameter's size, and the reference's parameter, codes and scales within float
    rounding over two steps from random states otherwise."""
    gen = torch.Generator().manual_seed(s)
    two = name in ("adam", "ademamix")
    rows = 2 if name == "ademamix" else 1
    blocks = -(n // -256)
    p0, g = torch.randn(n, generator=gen), torch.randn(n, generator=gen)
    s1 = torch.randint(0, 256, (rows, n) if rows == 2 else (n,), generator=gen, dtype=torch.uint8)
    s2 = torch.randint(0, 256, (n,), generator=gen, dtype=torch.uint8)
    a1 = torch.rand((rows, blocks) if rows == 2 else (blocks,), generator=gen)
    a2 = torch.rand(blocks, generator=gen)
    b3, alpha = (0.999, 5.0) if name == "ademamix" else (0.0, 0.0)

    def run(impl):
        p, st1, st2, ab1, ab2 = p0.clone(), s1.clone(), s2.clone(), a1.clone(), a2.clone()
        for step in (1, 2):
            impl(
                name, g, p, st1, st2 if two else None, 0.9, 0.99, b3, alpha, 1e-8, step, 1e-3,
                qmap1, qmap2 if two else None, ab1, ab2 if two else None, 0.0, 1.0, False,
            )  # fmt: skip
        return p, st1, st2, ab1, ab2

    books = (qmap1, qmap2) if two else (qmap1,)
    _count("optimizer_8bit[any code]")
    got, want = outcome(run, OPS.optimizer_update_8bit_blockwise), outcome(run, REF["optimizer_update_8bit_blockwise"])
    assert got[0] == want[0] == ("ok" if all(searchable(q) for q in books) else "err"), (name, got, want)
    if got[0] == "ok":
        near_step(got[1], want[1], f"optimizer_8bit[any code] {name}")


@given(
    x=tensors(max_dims=3, dtypes=DTYPES, specials=False),
    name=st.sampled_from(_NAMES),
    bits8=st.booleans(),
    grad_special=st.sampled_from((None, float("nan"), float("inf"))),
    step=st.integers(1, 5),
)
def prop_optimizer(x, name, bits8, grad_special, step):
    x = x.contiguous()
    g = torch.randn_like(x, dtype=torch.float32).to(x.dtype)
    if grad_special is not None and g.numel():
        g.view(-1)[0] = grad_special
    two = name in ("adam", "ademamix")
    n = x.numel()
    beta1, beta2, beta3, alpha = 0.9, 0.99, (0.999 if name == "ademamix" else 0.0), (5.0 if name == "ademamix" else 0.0)

    def run(impl):
        p = x.clone()
        if bits8:
            blocks = -(n // -256)
            st1 = torch.zeros((2, *x.shape) if name == "ademamix" else x.shape, dtype=torch.uint8)
            st2 = torch.zeros_like(x, dtype=torch.uint8) if two else None
            a1 = torch.zeros((2, blocks) if name == "ademamix" else (blocks,))
            a2 = torch.zeros(blocks) if two else None
            qm = dynamic_map()
            impl["optimizer_update_8bit_blockwise"](
                name,
                g,
                p,
                st1,
                st2,
                beta1,
                beta2,
                beta3,
                alpha,
                1e-8,
                step,
                1e-3,
                qm,
                dynamic_map(signed=False) if two else None,
                a1,
                a2,
                0.01,
                1.0,
                False,
            )
            return p, st1, st2, a1, a2
        st1 = torch.zeros((2, *x.shape) if name == "ademamix" else x.shape)
        st2 = torch.zeros_like(x, dtype=torch.float32) if two else None
        impl["optimizer_update_32bit"](
            name, g, p, st1, st2, None, 0.0, 0.0, beta1, beta2, beta3, alpha, 1e-8, 0.01, step, 1e-3, 1.0, False
        )
        return p, st1, st2

    native = {k: getattr(OPS, k) for k in ("optimizer_update_8bit_blockwise", "optimizer_update_32bit")}
    label = f"optimizer_{'8bit' if bits8 else '32bit'}"
    _count(label)
    got, want = outcome(run, native), outcome(run, REF)
    assert got[0] == want[0], (label, name, got, want)
    if got[0] == "ok":
        near_step(got[1], want[1], f"{label} {name}")


@given(
    quant_type=st.sampled_from(("nf4", "fp4")),
    nested=st.booleans(),
    mutation=st.sampled_from(("byte", "truncate", "drop_key", "retype", "bad_dtype", "absmax_short", "huge_shape")),
    pos=st.integers(0, 10_000),
    byte=st.integers(0, 255),
)
def prop_quant_state_json(quant_type, nested, mutation, pos, byte):
    _count("quant_state_json")
    w = torch.randn(64, 48)
    packed, qs = F.quantize_4bit(w, quant_type=quant_type, compress_statistics=nested)
    d = qs.as_dict(packed=True)
    key = f"quant_state.bitsandbytes__{quant_type}"
    blob = d[key].clone()
    meta = F.unpack_tensor_to_dict(blob)
    if mutation == "byte":
        blob[pos % blob.numel()] = byte
        d[key] = blob
    elif mutation == "truncate":
        d[key] = blob[: pos % blob.numel()]
    elif mutation == "drop_key":
        meta.pop(sorted(meta)[pos % len(meta)])
        d[key] = F.pack_dict_to_tensor(meta)
    elif mutation == "retype":
        k = sorted(meta)[pos % len(meta)]
        meta[k] = [None, "x", 1.5, -3, [1, 2], {"a": 1}][byte % 6]
        d[key] = F.pack_dict_to_tensor(meta)
    elif mutation == "bad_dtype":
        meta["dtype"] = ["int8", "os.system", "__class__", "float64x", ""][byte % 5]
        d[key] = F.pack_dict_to_tensor(meta)
    elif mutation == "absmax_short":
        d["absmax"] = d["absmax"][: max(0, d["absmax"].numel() - 1 - pos % 3)]
    elif mutation == "huge_shape":
        meta["shape"] = [2**40, 2**40]
        d[key] = F.pack_dict_to_tensor(meta)
    try:
        state = F.QuantState.from_dict(d, device="cpu")
    except ValueError as err:
        assert str(err).strip()
        return
    # accepted: dequantizing is then either right or refused clearly, never a crash or a silent misread
    try:
        out = F.dequantize_4bit(packed, state)
    except CLEAR as err:
        assert str(err).strip()
        return
    want = F.dequantize_4bit(packed, qs)
    assert out.shape == want.shape


@given(
    n_in=st.sampled_from((1, 3, 64, 65)),
    n_out=st.sampled_from((1, 2, 33)),
    lead=st.lists(st.sampled_from((0, 1, 3)), min_size=0, max_size=2),
    dtype=st.sampled_from(DTYPES),
    quant_type=st.sampled_from(("nf4", "fp4")),
    storage=st.sampled_from((torch.uint8, torch.bfloat16, torch.float32)),
    s=st.integers(0, 2**31 - 1),
)
def prop_linear4bit(n_in, n_out, lead, dtype, quant_type, storage, s):
    _count("nn.Linear4bit")
    torch.manual_seed(s)
    try:
        layer = bnb.nn.Linear4bit(n_in, n_out, quant_type=quant_type, quant_storage=storage).to("cpu")
    except CLEAR as err:  # e.g. an odd weight that does not fill whole storage elements
        assert str(err).strip()
        return
    x = torch.randn(*lead, n_in).to(dtype)
    w = F.dequantize_4bit(layer.weight.data, layer.weight.quant_state).to(dtype)
    got = layer(x)
    want = torch.nn.functional.linear(x, w, layer.bias.to(dtype))
    assert got.shape == want.shape and got.dtype == dtype
    tol = {torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 5e-2}[dtype]
    torch.testing.assert_close(got, want, rtol=tol, atol=tol * max(1.0, n_in**0.5))


def _device_cases(g: torch.Generator, n: int, k: int, dtype: torch.dtype) -> dict:
    """Valid CPU calls of every op (name -> (op, args)); the wrong-device property moves tensors."""
    code8 = dynamic_map()
    w = torch.randn(n, k, generator=g)
    a = torch.randn(2, k, generator=g).to(dtype)
    packed, absmax = REF["quantize_4bit"](w, 64, "nf4", torch.uint8)
    q8, absmax8 = REF["quantize_blockwise"](w, code8, 256)
    ia = torch.randint(-127, 128, (2, k), generator=g, dtype=torch.int8)
    ib = torch.randint(-127, 128, (n, k), generator=g, dtype=torch.int8)
    i32 = torch.randint(-1000, 1000, (2, n), generator=g, dtype=torch.int32)
    rs, cs = torch.rand(2, generator=g) + 0.5, torch.rand(n, generator=g) + 0.5
    bias = torch.randn(n, generator=g).to(dtype)
    p32, g32 = torch.randn(300, generator=g), torch.randn(300, generator=g)
    return {
        "quantize_blockwise": (OPS.quantize_blockwise, (w, code8, 256)),
        "dequantize_blockwise": (OPS.dequantize_blockwise, (q8, absmax8, code8, 256, dtype)),
        "dequantize_blockwise.out": (
            OPS.dequantize_blockwise.out,
            (q8, absmax8, code8, 256, dtype, torch.empty(n, k, dtype=dtype)),
        ),
        "quantize_4bit": (OPS.quantize_4bit, (w.to(dtype), 64, "nf4", torch.uint8)),
        "dequantize_4bit": (OPS.dequantize_4bit, (packed, absmax, 64, "nf4", [n, k], dtype)),
        "dequantize_4bit.out": (
            OPS.dequantize_4bit.out,
            (packed, absmax, 64, "nf4", [n, k], dtype, torch.empty(n, k, dtype=dtype)),
        ),
        "gemv_4bit": (OPS.gemv_4bit, (a[:1], packed, [n, k], absmax, F.get_4bit_type("nf4"), 64)),
        "gemm_4bit": (OPS.gemm_4bit, (a, packed, [n, k], absmax, 64, "nf4", bias)),
        "int8_linear_matmul": (OPS.int8_linear_matmul, (ia, ib)),
        "int8_linear_matmul.out": (OPS.int8_linear_matmul.out, (ia, ib, torch.empty(2, n, dtype=torch.int32))),
        "int8_vectorwise_dequant": (OPS.int8_vectorwise_dequant, (ia, rs)),
        "int8_mm_dequant": (OPS.int8_mm_dequant, (i32, rs, cs, dtype, bias)),
        "int8_scaled_mm": (OPS.int8_scaled_mm, (ia, ib, rs, cs, bias, dtype)),
        "optimizer_update_32bit": (
            OPS.optimizer_update_32bit,
            ("adam", g32, p32, torch.zeros(300), torch.zeros(300), None)
            + (0.0, 0.0, 0.9, 0.99, 0.0, 0.0, 1e-8, 0.0, 1, 1e-3, 1.0, False),
        ),
        "optimizer_update_8bit_blockwise": (
            OPS.optimizer_update_8bit_blockwise,
            ("momentum", g32, p32, torch.zeros(300, dtype=torch.uint8), None, 0.9, 0.0, 0.0, 0.0, 1e-8, 1)
            + (1e-3, code8, None, torch.zeros(2), None, 0.0, 1.0, False),
        ),
    }


@given(
    op=st.sampled_from(
        (
            "quantize_blockwise",
            "dequantize_blockwise",
            "dequantize_blockwise.out",
            "quantize_4bit",
            "dequantize_4bit",
            "dequantize_4bit.out",
            "gemv_4bit",
            "gemm_4bit",
            "int8_linear_matmul",
            "int8_linear_matmul.out",
            "int8_vectorwise_dequant",
            "int8_mm_dequant",
            "int8_scaled_mm",
            "optimizer_update_32bit",
            "optimizer_update_8bit_blockwise",
        )
    ),
    n=st.sampled_from((3, 64)),
    k=st.sampled_from((64, 128)),
    dtype=st.sampled_from(DTYPES),
    pick=st.integers(0, 2**31 - 1),
    s=st.integers(0, 2**31 - 1),
)
def prop_wrong_device(op, n, k, dtype, pick, s):
    """One tensor argument on another device (``meta``, the one other device every machine has):
    a clear error naming the devices, never an uninitialised result on the CPU. All of them on
    ``meta``: the fake kernel's outputs have the CPU result's shapes and dtypes."""
    _count(f"device:{op}")
    fn, args = _device_cases(torch.Generator().manual_seed(s), n, k, dtype)[op]
    slots = [i for i, v in enumerate(args) if isinstance(v, torch.Tensor)]
    if len(slots) > 1:
        moved = list(args)
        i = slots[pick % len(slots)]
        moved[i] = args[i].to("meta")
        try:
            fn(*moved)
        except RuntimeError as err:
            assert "device" in str(err) and "meta" in str(err), f"{op}: {err}"
        else:
            raise AssertionError(f"{op}: argument {i} on meta with the rest on the CPU returned instead of raising")
    on_meta = [v.to("meta") if isinstance(v, torch.Tensor) else v for v in args]
    got = fn(*on_meta)
    want = fn(*[v.clone() if isinstance(v, torch.Tensor) else v for v in args])
    got, want = (got, want) if isinstance(want, tuple) else ((got,), (want,))
    for x, y in zip(got, want):
        if y is None:
            assert x is None, op
            continue
        assert x.device.type == "meta" and x.dtype == y.dtype, (op, x, y.dtype)
        if op != "int8_vectorwise_quant":
            assert x.shape == y.shape, (op, x.shape, y.shape)


PROPERTIES = [
    prop_blockwise,
    prop_code_books,
    prop_optimizer_code_books,
    prop_4bit,
    prop_gemm_4bit,
    prop_int8,
    prop_optimizer,
    prop_quant_state_json,
    prop_linear4bit,
    prop_wrong_device,
]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--examples", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("-k", default="", help="run only properties whose name contains this")
    args = parser.parse_args()
    faulthandler.enable()
    torch.set_num_threads(2)
    start = time.time()
    for prop in PROPERTIES:
        if args.k and args.k not in prop.__name__:
            continue
        configured = settings(
            max_examples=args.examples,
            deadline=None,
            database=None,
            derandomize=False,
            suppress_health_check=list(HealthCheck),
        )(seed(args.seed)(prop))
        t0 = time.time()
        configured()
        print(f"{prop.__name__}: {time.time() - t0:.1f} s", file=sys.stderr, flush=True)
    print(json.dumps({"cases": COUNTS, "total": sum(COUNTS.values()), "seconds": round(time.time() - start, 1)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
