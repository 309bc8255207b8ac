"""bitsandbytes-hpu at the edges, against the reference kernels on CPU tensors: empty and one-element
tensors, lengths that are no multiple of the block size, every block size and float dtype,
strided inputs, NaN / inf / -0.0 / subnormals, nested absmax, every optimizer in 8 and 32 bits
with its options, and bad input, which must raise an error naming the argument.

The standard is ``tests/test_hpu_platform.py``'s: the kernels compute what the reference computes,
operation for operation, so codes, scales, decoded values, matmuls and optimizer states are
bit-identical; the optimizers' parameters (whose per-step scalars the HPU kernels keep as f32
device tensors, where the reference rounds them once from f64) agree within two units in the
last place of their dtype, and ``unorm_vec`` (an f32 sum, the reference's f64) within f32 rounding."""

from __future__ import annotations

import pytest
import torch

bnb_hpu = pytest.importorskip("bitsandbytes_hpu", reason="bitsandbytes-hpu is not installed")

from bitsandbytes_hpu import _gaudi  # noqa: E402

from bitsandbytes.backends.reference import KERNELS as REF  # noqa: E402
from bitsandbytes.backends.reference.codebooks import NF4_VALUES, dynamic_map, four_bit_table  # noqa: E402

HPU = bnb_hpu.host_kernels()
BLOCKSIZES = (32, 64, 128, 256, 512, 1024, 2048, 4096)
FLOATS = (torch.float32, torch.float16, torch.bfloat16)
SPECIAL = [float("nan"), float("inf"), -float("inf"), -0.0, 0.0, 1e-40, -1e-45, 3e38, -3e38, 1.0, -1.0, 0.5]
CODE = dynamic_map()


def _same(a, b) -> bool:
    """Equal outputs: the same structure, shapes, dtypes and bits (NaN payloads included)."""
    if a is None or b is None:
        return a is None and b is None
    if isinstance(a, (tuple, list)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return (
        a.shape == b.shape
        and a.dtype == b.dtype
        and torch.equal(a.contiguous().view(-1).view(torch.uint8), b.contiguous().view(-1).view(torch.uint8))
    )


def _clone(args):
    return [a.clone() if isinstance(a, torch.Tensor) else a for a in args]


def _both(op, *args):
    """(reference result, hpu result, reference inputs after the call, hpu inputs after the call)."""
    ra, ha = _clone(args), _clone(args)
    return REF[op](*ra), HPU[op](*ha), ra, ha


def _check_same(op, *args):
    ref, got, ra, ha = _both(op, *args)
    assert _same(got, ref), op
    for r, h in zip(ra, ha):  # .out writes
        if isinstance(r, torch.Tensor):
            assert _same(h, r), f"{op}: an in-place write differs"
    return got


def _with_specials(n: int, dtype: torch.dtype, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, generator=g) * 3
    idx = torch.randperm(n, generator=g)[: len(SPECIAL)]
    x[idx] = torch.tensor(SPECIAL)[: len(idx)]
    return x.to(dtype)


# ------------------------------------------------------------------------------------------ 4-bit

LENGTHS = (0, 1, 2, 3, 31, 65, 257, 4097)


@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
@pytest.mark.parametrize("blocksize", BLOCKSIZES)
def test_quantize_4bit_every_length_dtype_and_storage(blocksize, quant_type):
    g = torch.Generator().manual_seed(blocksize)
    for n in LENGTHS:
        for dtype in FLOATS:
            x = torch.randn(n, generator=g).to(dtype)
            packed, absmax = _check_same("quantize_4bit", x, blocksize, quant_type, torch.uint8)
            assert packed.shape == ((n + 1) // 2, 1) and absmax.shape == (-(-n // blocksize),)
            for storage in (torch.int8, torch.float16, torch.bfloat16, torch.float32):
                if ((n + 1) // 2) % storage.itemsize == 0:
                    _check_same("quantize_4bit", x, blocksize, quant_type, storage)


@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
@pytest.mark.parametrize("blocksize", BLOCKSIZES)
def test_dequantize_4bit_every_length_and_dtype(blocksize, quant_type):
    g = torch.Generator().manual_seed(blocksize + 1)
    for n in LENGTHS:
        packed, absmax = REF["quantize_4bit"](torch.randn(n, generator=g), blocksize, quant_type, torch.uint8)
        for dtype in FLOATS:
            out = _check_same("dequantize_4bit", packed, absmax, blocksize, quant_type, [n], dtype)
            assert out.shape == (n,) and out.dtype == dtype


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
def test_4bit_special_values(dtype, quant_type):
    for seed in range(4):
        x = _with_specials(161, dtype, seed)  # odd: the last byte's low nibble is the code of 0.0
        for blocksize in (32, 64):
            packed, absmax = _check_same("quantize_4bit", x, blocksize, quant_type, torch.uint8)
            assert absmax.isnan().any()  # the NaN's block
            _check_same("dequantize_4bit", packed, absmax, blocksize, quant_type, [161], dtype)
    # Special scales, decoded into every dtype (inf * code 0 is NaN; f16 overflows to inf).
    packed, absmax = REF["quantize_4bit"](torch.randn(32 * len(SPECIAL)), 32, quant_type, torch.uint8)
    absmax = torch.tensor(SPECIAL)
    _check_same("dequantize_4bit", packed, absmax, 32, quant_type, [32 * len(SPECIAL)], dtype)


def test_4bit_strided_inputs():
    g = torch.Generator().manual_seed(2)
    W = torch.randn(64, 96, generator=g)
    for view in (W.t(), W[:, ::2], W[::3], W.t()[::2], W.to(torch.bfloat16).t()):
        packed, absmax = _check_same("quantize_4bit", view, 64, "nf4", torch.uint8)
        assert _same(packed, REF["quantize_4bit"](view.contiguous(), 64, "nf4", torch.uint8)[0])
    packed, absmax = REF["quantize_4bit"](W, 64, "fp4", torch.uint8)
    strided_packed = torch.stack([packed, packed * 0], 1).view(-1, 2)[:, :1]
    strided_absmax = torch.stack([absmax, absmax * 0], 1)[:, 0]
    got = _check_same("dequantize_4bit", strided_packed, strided_absmax, 64, "fp4", [64, 96], torch.float32)
    assert _same(got, REF["dequantize_4bit"](packed, absmax, 64, "fp4", [64, 96], torch.float32))
    for stored in (packed.view(-1), packed.view(-1).view(torch.float32), packed.view(-1).view(torch.int8)):
        _check_same("dequantize_4bit", stored, absmax.view(8, -1), 64, "fp4", [64, 96], torch.bfloat16)


@pytest.mark.parametrize(
    "out",
    [
        torch.empty(40, 96),
        torch.empty(96, 40).t(),
        torch.empty(40, 96, 2)[..., 0],
    ],
    ids=["contiguous", "transposed", "strided"],
)
def test_out_variants_write_strided_outputs(out):
    g = torch.Generator().manual_seed(3)
    packed, absmax = REF["quantize_4bit"](torch.randn(40, 96, generator=g), 64, "nf4", torch.uint8)
    _check_same("dequantize_4bit.out", packed, absmax, 64, "nf4", [40, 96], torch.float32, out)
    q, a = REF["quantize_blockwise"](torch.randn(40, 96, generator=g), CODE, 100)
    _check_same("dequantize_blockwise.out", q, a, CODE, 100, torch.float32, out)
    A = torch.randn(96, 96, generator=g)[:40]
    W = torch.randn(96, 96, generator=g)
    packed, absmax = REF["quantize_4bit"](W, 64, "nf4", torch.uint8)
    _check_same(
        "gemv_4bit.out", A, packed, [96, 96], absmax, four_bit_table("nf4"), 64, out[:, :1].expand(40, 96).clone()
    )


# --------------------------------------------------------------------------- 4-bit matmuls


@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
@pytest.mark.parametrize("shape", [[40, 96], [1, 1], [3, 5], [0, 96], [5, 0], [1, 33]])
def test_gemv_and_gemm_4bit_edges(shape, quant_type):
    g = torch.Generator().manual_seed(shape[0] * 100 + shape[1])
    W = torch.randn(shape, generator=g)
    for blocksize in (32, 4096):
        packed, absmax = REF["quantize_4bit"](W, blocksize, quant_type, torch.uint8)
        for dtype in FLOATS:
            for a_shape in [(shape[1],), (1, shape[1]), (2, 3, shape[1]), (0, shape[1])]:
                A = torch.randn(a_shape, generator=g).to(dtype)
                bias = torch.randn(shape[0], generator=g)
                _check_same("gemv_4bit", A, packed, shape, absmax, four_bit_table(quant_type), blocksize)
                _check_same("gemm_4bit", A, packed, shape, absmax, blocksize, quant_type)
                _check_same("gemm_4bit", A, packed.view(-1), shape, absmax, blocksize, quant_type, bias)


@pytest.mark.parametrize("dtype", FLOATS)
def test_gemm_4bit_nested_absmax(dtype):
    g = torch.Generator().manual_seed(4)
    W = torch.randn(300, 64, generator=g)  # 600 blocks of 32: three nested blocks of 256, the last partial
    packed, absmax = REF["quantize_4bit"](W, 32, "nf4", torch.uint8)
    offset = absmax.mean()
    q, inner = REF["quantize_blockwise"](absmax - offset, CODE, 256)
    A = torch.randn(3, 64, generator=g).to(dtype)
    got = _check_same("gemm_4bit", A, packed, [300, 64], inner, 32, "nf4", None, q, CODE, offset)
    flat = REF["gemm_4bit"](
        A, packed, [300, 64], REF["dequantize_blockwise"](q, inner, CODE, 256, torch.float32) + offset, 32, "nf4"
    )
    assert _same(got, flat)


# ------------------------------------------------------------------------------ block-wise 8-bit


@pytest.mark.parametrize("blocksize", [1, 3, 7, 64, 256, 4096, 5000, 2**40])
def test_blockwise_every_length_dtype_and_odd_blocksize(blocksize):
    g = torch.Generator().manual_seed(blocksize % 1000)
    for n in LENGTHS:
        for dtype in FLOATS:
            x = torch.randn(n, generator=g).to(dtype)
            q, absmax = _check_same("quantize_blockwise", x, CODE, blocksize)
            assert q.shape == x.shape and absmax.shape == (-(-n // blocksize),)
            _check_same("dequantize_blockwise", q, absmax, CODE, blocksize, dtype)


@pytest.mark.parametrize("dtype", FLOATS)
def test_blockwise_special_values_and_strides(dtype):
    for seed in range(4):
        x = _with_specials(300, dtype, seed)
        for blocksize in (4, 64):
            q, absmax = _check_same("quantize_blockwise", x, CODE, blocksize)
            _check_same("dequantize_blockwise", q, absmax, CODE, blocksize, dtype)
    q, _ = REF["quantize_blockwise"](torch.randn(32 * len(SPECIAL)), CODE, 32)
    _check_same("dequantize_blockwise", q, torch.tensor(SPECIAL), CODE, 32, dtype)
    W = torch.randn(64, 96, generator=torch.Generator().manual_seed(5)).to(dtype)
    for view in (W.t(), W[:, ::2], W.t()[::3]):
        q, absmax = _check_same("quantize_blockwise", view, CODE, 64)
        _check_same("dequantize_blockwise", q.t(), absmax, CODE, 64, torch.float32)
    wide = torch.linspace(-1, 1, 512)
    _check_same("quantize_blockwise", W.float(), wide[::2], 64)  # a strided code book
    # 0-dim tensors: one value, one block.
    q, absmax = _check_same("quantize_blockwise", torch.tensor(-2.5, dtype=dtype), CODE, 64)
    assert q.shape == () and absmax.tolist() == [2.5]
    _check_same("dequantize_blockwise", q, absmax, CODE, 64, dtype)


# ------------------------------------------------------------------------------------ LLM.int8()


@pytest.mark.parametrize("op", ["int8_vectorwise_quant", "int8_double_quant"])
@pytest.mark.parametrize("dtype", FLOATS)
def test_int8_quant_edges(op, dtype):
    g = torch.Generator().manual_seed(6)
    shapes = [(0,), (1,), (5,), (0, 5), (5, 0), (1, 1), (1, 7), (7, 1), (3, 4, 5), (2, 0, 3), (6, 64)]
    for shape in shapes:
        A = (torch.randn(shape, generator=g) * 4).to(dtype)
        for threshold in (0.0, 1.0, 6.0, float("inf")):
            _check_same(op, A, threshold)
    A = (torch.randn(8, 12, generator=g) * 4).to(dtype)
    A.view(-1)[torch.randperm(96, generator=g)[: len(SPECIAL)]] = torch.tensor(SPECIAL).to(dtype)
    for threshold in (0.0, 2.0):
        for view in (A, A.t(), A[:, ::2], A.t()[::3]):
            _check_same(op, view, threshold)


# ------------------------------------------------------------------------------------- optimizers

OPT = ["adam", "lamb", "momentum", "lars", "rmsprop", "adagrad", "lion", "ademamix"]
TWO = {"adam", "lamb", "ademamix"}
ULP = {torch.float32: 2**-23, torch.float16: 2**-10, torch.bfloat16: 2**-7}


def _close_p(got: torch.Tensor, want: torch.Tensor) -> None:
    assert got.dtype == want.dtype and torch.equal(got.isnan(), want.isnan())
    tol = 2 * ULP[want.dtype]
    torch.testing.assert_close(got.float(), want.float(), rtol=tol, atol=tol, equal_nan=True)


def _optim(bits, name, n, dtype=torch.float32, *, wd=0.01, gs=1.0, clip=0.0, skip=False, step=3, seed=0, lr=1e-2):
    g = torch.Generator().manual_seed(seed)
    p = torch.randn(n, generator=g).to(dtype)
    grad = torch.randn(n, generator=g).to(dtype)
    grad[::3] = 0.0
    rows = 2 if name == "ademamix" else 1
    two = name in TWO
    if bits == 32:
        s1 = torch.rand(rows * n, generator=g) * 0.1
        s2 = torch.rand(n, generator=g) * 0.1 if two else None
        unorm = torch.full((1,), 7.0) if clip else None
        return [name, grad, p, s1, s2, unorm, clip, 2.0 if clip else 0.0, 0.9, 0.99, 0.999, 2.0, 1e-6, wd, step, lr, gs, skip]  # fmt: skip
    blocks = -(-n // 256)
    s1 = torch.randint(0, 256, (rows * n,), dtype=torch.uint8, generator=g)
    a1 = torch.rand(rows * blocks, generator=g) * 0.1
    s2 = torch.randint(128, 256, (n,), dtype=torch.uint8, generator=g) if two else None
    a2 = torch.rand(blocks, generator=g) * 0.1 if two else None
    return [name, grad, p, s1, s2, 0.9, 0.99, 0.999, 2.0, 1e-6, step, lr, dynamic_map(True), dynamic_map(False) if two else None, a1, a2, wd, gs, skip]  # fmt: skip


def _check_optim(bits, args):
    op = "optimizer_update_32bit" if bits == 32 else "optimizer_update_8bit_blockwise"
    _, _, ra, ha = _both(op, *args)
    _close_p(ha[2], ra[2])
    states = (3, 4) if bits == 32 else (3, 4, 14, 15)  # states (and 8-bit absmax): bit for bit
    for i in states:
        assert _same(ha[i], ra[i]), f"{op} {args[0]}: argument {i} differs"
    if bits == 32 and args[5] is not None:
        torch.testing.assert_close(ha[5], ra[5], rtol=1e-5, atol=0)  # ‖u‖: an f32 sum vs the f64 one
        assert ha[5].item() != 7.0
    return ra, ha


@pytest.mark.parametrize("bits", [32, 8])
@pytest.mark.parametrize("name", OPT)
def test_optimizer_lengths_and_dtypes(name, bits):
    # The 8-bit kernel builds its 65536-point code table in every call: fewer 8-bit cases.
    lengths = (0, 1, 2, 255, 256, 257, 1000)
    cases = [(n, d) for n in lengths for d in FLOATS] if bits == 32 else list(zip(lengths, FLOATS * 3))
    for n, dtype in cases:
        _check_optim(bits, _optim(bits, name, n, dtype, seed=n))


OPTIONS = [(wd, gs, skip, step) for wd in (0.0, 0.1) for gs in (1.0, 0.25, 3.0) for skip in (False, True) for step in (1, 10)]  # fmt: skip


@pytest.mark.parametrize("bits", [32, 8])
@pytest.mark.parametrize("name", OPT)
def test_optimizer_options(name, bits):
    # (weight decay, gnorm_scale, skip_zeros, step); 32-bit also with the max_unorm clip.
    options = OPTIONS if bits == 32 else OPTIONS[::6] + OPTIONS[3::6]
    for wd, gs, skip, step in options:
        for clip in (0.0, 0.5, 100.0) if bits == 32 else (0.0,):
            args = _optim(bits, name, 700, wd=wd, gs=gs, clip=clip, skip=skip, step=step)
            before = args[2].clone()
            ra, ha = _check_optim(bits, args)
            if skip:  # a zero gradient leaves its parameter untouched
                assert torch.equal(ha[2][::3], before[::3])


@pytest.mark.parametrize("bits", [32, 8])
@pytest.mark.parametrize("name", OPT)
def test_optimizer_special_values(name, bits):
    sp = torch.tensor([float("nan"), float("inf"), -float("inf"), -0.0, 1e30, 1e-40])
    places = (1, 2, 3, 4) if bits == 32 else (1, 2, 14, 15)  # gradient, parameter, state1/2 or absmax1/2
    for where in places:
        args = _optim(bits, name, 600, seed=where)
        t = args[where]
        if t is None:
            continue
        t[torch.randperm(t.numel(), generator=torch.Generator().manual_seed(where))[: len(sp)]] = sp[: t.numel()].to(
            t.dtype
        )
        _check_optim(bits, args)
    for betas in ((1.0, 0.99), (0.9, 1.0))[: 2 if bits == 32 else 1]:  # a bias correction of 0: IEEE inf / NaN
        args = _optim(bits, name, 300)
        args[8 if bits == 32 else 5], args[9 if bits == 32 else 6] = betas
        _check_optim(bits, args)


@pytest.mark.parametrize("bits", [32, 8])
@pytest.mark.parametrize("name", OPT)
def test_optimizer_strided_parameter_and_gradient(name, bits):
    args = _optim(bits, name, 1200, torch.bfloat16)
    args[1] = args[1].view(40, 30).t()  # the same values, strided differently than p
    args[2] = args[2].view(30, 40).t()
    ra, ha = _check_optim(bits, args)
    assert ha[2].stride() == (1, 40)


# ---------------------------------------------------------------------------- Gaudi's NF4 op path


def _standin_nf4(input, absmax, blocksize, out_shape, out_dtype):
    """torch.ops.hpu.dequantize_nf4 as documented (software >= 1.22: high nibble first)."""
    n = out_shape[0]
    codes = torch.stack([input >> 4, input & 0x0F], dim=1).reshape(-1)[:n].long()
    table = torch.tensor(NF4_VALUES).to(out_dtype)
    return table[codes] * absmax[torch.arange(n) // blocksize]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gaudi_nf4_op_edges(monkeypatch, dtype):
    monkeypatch.setattr(_gaudi, "_CACHED", _gaudi.GaudiOps(_standin_nf4, False, (1, 22, 0)))
    g = torch.Generator().manual_seed(7)
    for n in (2, 62, 66, 4098):  # even lengths, no multiple of the block size
        for blocksize in (32, 256, 4096):
            x = torch.randn(n, generator=g)
            x[: len(SPECIAL)] = torch.tensor(SPECIAL)[:n]
            packed, absmax = REF["quantize_4bit"](x, blocksize, "nf4", torch.uint8)
            strided = torch.stack([absmax, absmax * 0], 1)[:, 0]
            got = HPU["dequantize_4bit"](packed, strided, blocksize, "nf4", [n // 2, 2], dtype)
            want = REF["dequantize_4bit"](packed, absmax, blocksize, "nf4", [n // 2, 2], dtype)
            assert got.shape == want.shape and torch.equal(got.isnan(), want.isnan())
            if dtype == torch.float32:
                assert _same(got, want)
            else:  # table, absmax and product each rounded to bf16: 3 half-ulps (test_hpu_platform)
                torch.testing.assert_close(got.float(), want.float(), rtol=3 * 2**-8, atol=0, equal_nan=True)
    _gaudi.refresh()


@pytest.mark.parametrize(
    "version,ok", [((1, 20, 9), False), ((1, 21, 0), True), ((1, 21, 7), True), ((1, 22, 0), True), ((2, 0, 0), True)]
)
def test_gaudi_software_from_1_21_on_is_served(monkeypatch, version, ok):
    """1.21.0 is the oldest supported release: it and everything after it are served."""
    monkeypatch.setattr(_gaudi, "software_version", lambda: version)
    problem = _gaudi.check_software()
    assert (problem is None) is ok
    if not ok:
        assert "1.20.9 is older than 1.21," in problem


# ------------------------------------------------------------------------------------- bad input


def _raises_like_reference(op, exc, match, *args):
    """Both implementations refuse ``args`` with ``exc`` and the same message, naming the argument."""
    with pytest.raises(exc, match=match) as ref:  # the checks run before anything is written
        REF[op](*args)
    with pytest.raises(exc, match=match) as got:
        HPU[op](*args)
    assert str(got.value) == str(ref.value)


def test_bad_input_is_refused_like_the_reference():
    x = torch.randn(100)
    code = CODE
    packed, absmax = REF["quantize_4bit"](torch.randn(40, 96), 64, "nf4", torch.uint8)
    q, a = REF["quantize_blockwise"](torch.randn(30, 20), code, 64)
    r = _raises_like_reference
    r("quantize_4bit", TypeError, "A must have dtype", x.double(), 64, "nf4", torch.uint8)
    r("quantize_4bit", ValueError, "blocksize", x, 63, "nf4", torch.uint8)
    r("quantize_4bit", ValueError, "quant_type", x, 64, "nf5", torch.uint8)
    r("quantize_4bit", TypeError, "quant_storage", x, 64, "nf4", torch.int32)
    r("quantize_4bit", ValueError, "whole", torch.randn(101), 64, "nf4", torch.float16)
    r("dequantize_4bit", ValueError, "absmax has 59", packed, absmax[:-1], 64, "nf4", [40, 96], torch.float32)
    r("dequantize_4bit", ValueError, "absmax has 60", packed, absmax, 128, "nf4", [40, 96], torch.float32)
    r("dequantize_4bit", TypeError, "absmax must have dtype", packed, absmax.half(), 64, "nf4", [40, 96], torch.float32)
    r("dequantize_4bit", ValueError, "dtype must be", packed, absmax, 64, "nf4", [40, 96], torch.int8)
    r("dequantize_4bit", ValueError, "packed bytes", packed, absmax, 64, "nf4", [40, 95], torch.float32)
    r("dequantize_4bit", ValueError, "non-negative", packed, absmax, 64, "nf4", [-40, -96], torch.float32)
    r("dequantize_4bit.out", ValueError, "out must have shape", packed, absmax, 64, "nf4", [40, 96], torch.float32, torch.empty(3840))  # fmt: skip
    r("dequantize_4bit.out", TypeError, "out must have dtype", packed, absmax, 64, "nf4", [40, 96], torch.float32, torch.empty(40, 96).half())  # fmt: skip
    r("dequantize_4bit.out", ValueError, "out is an expanded view", packed, absmax, 64, "nf4", [40, 96], torch.float32, torch.empty(1).expand(40, 96))  # fmt: skip
    r("quantize_blockwise", ValueError, "blocksize must be positive", x, code, 0)
    r("quantize_blockwise", ValueError, "code must hold 256", x, code[:255], 64)
    r("quantize_blockwise", TypeError, "code must have dtype", x, code.half(), 64)
    r("dequantize_blockwise", TypeError, "A must have dtype", q.view(torch.int8), a, code, 64, torch.float32)
    r("dequantize_blockwise", ValueError, "absmax has 10 entries", q, a, code, 128, torch.float32)
    r("dequantize_blockwise", ValueError, "blocksize must be positive", q, a, code, -64, torch.float32)
    r("dequantize_blockwise.out", ValueError, "out must have shape", q, a, code, 64, torch.float32, torch.empty(20, 30))
    r("int8_vectorwise_quant", TypeError, "A must have dtype", torch.randn(4, 4).double(), 0.0)
    r("int8_double_quant", ValueError, "threshold must be >= 0", torch.randn(4, 4), float("nan"))
    r("int8_double_quant", ValueError, "at least one dimension", torch.tensor(1.0), 0.0)


def test_bad_optimizer_input_is_refused_like_the_reference():
    r = _raises_like_reference

    def o32(**changes):
        args = _optim(32, "adam", 300, clip=1.0)
        for i, v in changes.items():
            args[int(i[1:])] = v
        return ("optimizer_update_32bit", *args)

    def o8(**changes):
        args = _optim(8, "ademamix", 300)
        for i, v in changes.items():
            args[int(i[1:])] = v
        return ("optimizer_update_8bit_blockwise", *args)

    r(*o32(a0="sgd")[:1], ValueError, "unknown optimizer_name", *o32(a0="sgd")[1:])
    for args, exc, match in [
        (o32(a14=0), ValueError, "step must be >= 1"),
        (o32(a15=-1.0), ValueError, "lr must be non-negative"),
        (o32(a12=float("nan")), ValueError, "eps must be non-negative"),
        (o32(a1=torch.randn(301)), ValueError, "g has 301 elements"),
        (o32(a1=torch.randn(300).half()), TypeError, "g dtype"),
        (o32(a3=torch.zeros(301)), ValueError, "state1 must hold 300"),
        (o32(a3=torch.zeros(20, 15).t()), ValueError, "state1 must be contiguous"),
        (o32(a4=None), ValueError, "state2 is required"),
        (o32(a4=torch.zeros(300).half()), TypeError, "state2 must have dtype"),
        (o32(a5=None), ValueError, "unorm_vec is required"),
        (o32(a5=torch.zeros(2)), ValueError, "unorm_vec must hold 1"),
        (o8(a3=torch.zeros(300, dtype=torch.uint8)), ValueError, "state1 must hold 600"),
        (o8(a13=None), ValueError, "qmap2 is required"),
        (o8(a14=torch.ones(3)), ValueError, "absmax1 must hold 4"),
        (o8(a15=torch.ones(2).double()), TypeError, "absmax2 must have dtype"),
    ]:
        r(args[0], exc, match, *args[1:])
    shared = torch.zeros(300)
    r(*o32(a3=shared, a4=shared)[:1], ValueError, "state1 and state2 may share memory", *o32(a3=shared, a4=shared)[1:])


# ------------------------------------------------ defects found at the edges, fixed in the wheel


def _nested_case():
    g = torch.Generator().manual_seed(8)
    packed, absmax = REF["quantize_4bit"](torch.randn(40, 96, generator=g), 64, "nf4", torch.uint8)
    offset = absmax.mean()
    q, inner = REF["quantize_blockwise"](absmax - offset, CODE, 256)
    return torch.randn(3, 96, generator=g), packed, absmax, q, inner, offset


def test_gemv_and_gemm_name_the_packed_weight_B():
    # The shared check, written for dequantize_4bit, calls the packed tensor "A": in these ops A is
    # the (valid) activation, so the message blamed the wrong argument.
    A, packed, absmax, *_ = _nested_case()
    with pytest.raises(ValueError, match=r"^bitsandbytes: B holds 1919 packed bytes but shapeB \[40, 96\] needs 1920$"):
        HPU["gemm_4bit"](A, packed[:-1], [40, 96], absmax, 64, "nf4")
    with pytest.raises(ValueError, match=r"^bitsandbytes: B holds 7680 packed bytes"):
        HPU["gemv_4bit"](A, packed.float(), [40, 96], absmax, four_bit_table("nf4"), 64)
    with pytest.raises(ValueError, match=r"A's last dimension \(96\) must equal shapeB\[1\] \(95\)"):
        HPU["gemv_4bit"](A, packed, [40, 95], absmax, four_bit_table("nf4"), 64)


NESTED_ARGS = {"absmax": 3, "absmax_8bit": 7, "absmax_code": 8}


@pytest.mark.parametrize(
    "arg,change,exc,message",
    [
        ("absmax_8bit", lambda t: t.view(torch.int8), TypeError, r"^bitsandbytes: absmax_8bit must have dtype in \{uint8\}, got torch.int8$"),
        ("absmax_code", torch.Tensor.half, TypeError, r"^bitsandbytes: absmax_code must have dtype in \{float32\}"),
        ("absmax_code", lambda t: t[:128], ValueError, r"^bitsandbytes: absmax_code must hold 256 values, got 128$"),
        ("absmax_8bit", lambda t: t[:-1], ValueError, r"^bitsandbytes: absmax_8bit has 59 entries but shapeB \[40, 96\] with blocksize 64 needs 60$"),
        ("absmax", lambda t: torch.cat([t, t]), ValueError, r"^bitsandbytes: absmax \(the scales of absmax_8bit, one per 256 codes\) has 2 entries but absmax_8bit's 60 codes need 1$"),
    ],
    ids=["absmax_8bit-dtype", "absmax_code-dtype", "absmax_code-size", "absmax_8bit-size", "absmax-size"],
)  # fmt: skip
def test_nested_absmax_arguments_are_named(arg, change, exc, message):
    # The block-wise decode of the nested absmax called them "A", "code" and "absmax ... A".
    A, packed, _, q, inner, offset = _nested_case()
    args = [A, packed, [40, 96], inner, 64, "nf4", None, q, CODE, offset]
    args[NESTED_ARGS[arg]] = change(args[NESTED_ARGS[arg]])
    with pytest.raises(exc, match=message):
        HPU["gemm_4bit"](*args)


def test_nested_absmax_offset_must_be_one_value():
    # An offset of several values broadcast over the decoded scales: a wrong answer without an error
    # (the shared check_nested_absmax now refuses it on every backend).
    A, packed, absmax, q, inner, offset = _nested_case()
    per_block = torch.linspace(-0.1, 0.1, 60) + offset
    with pytest.raises(ValueError, match=r"absmax_offset must hold one value \(a 0-dim tensor\), got shape \(60,\)"):
        HPU["gemm_4bit"](A, packed, [40, 96], inner, 64, "nf4", None, q, CODE, per_block)
    # One value in any shape decodes as the 0-dim offset does.
    want = REF["gemm_4bit"](A, packed, [40, 96], inner, 64, "nf4", None, q, CODE, offset)
    for one in (offset.view(1), offset.view(1, 1), offset.double()):
        assert _same(HPU["gemm_4bit"](A, packed, [40, 96], inner, 64, "nf4", None, q, CODE, one), want)


@pytest.mark.parametrize(
    "index,value,exc,message",
    [
        (12, dynamic_map()[:128], ValueError, r"^bitsandbytes: qmap1 must hold 256 values, got 128$"),
        (12, dynamic_map().double(), TypeError, r"^bitsandbytes: qmap1 must have dtype in \{float32\}"),
        (13, dynamic_map(False)[:255], ValueError, r"^bitsandbytes: qmap2 must hold 256 values, got 255$"),
    ],
    ids=["qmap1-size", "qmap1-dtype", "qmap2-size"],
)
def test_8bit_optimizer_names_the_code_book(index, value, exc, message):
    # The shared state check called either code book "code".
    args = _optim(8, "adam", 300)
    args[index] = value
    with pytest.raises(exc, match=message):
        HPU["optimizer_update_8bit_blockwise"](*args)
    missing = _optim(8, "adam", 300)
    missing[13] = None  # a missing one: the shared check names it
    with pytest.raises(ValueError, match="^bitsandbytes: qmap2 is required"):
        HPU["optimizer_update_8bit_blockwise"](*missing)
