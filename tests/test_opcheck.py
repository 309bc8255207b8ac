"""``torch.library.opcheck`` over every ``bitsandbytes::`` op and overload, on CPU.

opcheck runs, per sample: ``test_schema`` (the kernel mutates exactly what the schema marks ``!``
and returns no alias of an input), ``test_autograd_registration`` (only where an input requires
grad: no output may carry a graph unless an autograd kernel is registered), ``test_faketensor``
(the fake kernel's outputs have the real outputs' shapes, strides, dtypes and devices) and
``test_aot_dispatch_dynamic`` (AOTAutograd with dynamic shapes gives eager's outputs and
gradients, through functionalization of the mutations).

Each op is checked on the kernel the dispatcher runs for CPU tensors (the bitsandbytes-cpu wheel's
where it is installed, else the reference), with f32/f16/bf16 inputs, shapes that are not a
multiple of the block size, nf4 and fp4, nested (8-bit) absmax, every optimizer, and inputs
that require grad where an op takes float inputs.
"""

from __future__ import annotations

import contextlib
import warnings

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.fx.experimental.symbolic_shapes import ShapeEnv

import bitsandbytes
from bitsandbytes import _ops
from bitsandbytes.backends.reference import KERNELS as REFERENCE
from bitsandbytes.backends.reference.codebooks import dynamic_map, four_bit_table

OPS = torch.ops.bitsandbytes
FLOATS = (torch.float32, torch.float16, torch.bfloat16)
ALL = None  # every opcheck sub-test

# The opcheck harness's forward-backward check sums the op's outputs into one scalar starting from
# the first output: where that is an integer tensor (packed codes, int8 rows) and a later output
# is float and requires grad, its ``sm += out.sum()`` adds a float into an integer tensor and
# fails before the op is compared. Quantizers called with a grad-requiring input therefore run
# without test_aot_dispatch_dynamic (their samples without grad run it in full).
NO_AOT_INT_FIRST_OUTPUT = ("test_schema", "test_autograd_registration", "test_faketensor")


def grad(t: torch.Tensor) -> torch.Tensor:
    return t.detach().clone().requires_grad_(True)


def packed_4bit(shape, dtype, blocksize, quant_type, storage=torch.uint8):
    torch.manual_seed(1)
    W = torch.randn(shape, dtype=dtype)
    return OPS.quantize_4bit(W, blocksize, quant_type, storage)


def int8_operands(dtype, rows=(2, 3), k=16, n=8, outlier=10.0):
    """A with an outlier column (3), its row quantization with and without outliers, and the
    quantized weight [n, k]."""
    torch.manual_seed(2)
    A = torch.randn(*rows, k, dtype=dtype)
    A[..., 3] = outlier
    CA, SCA, cols = OPS.int8_vectorwise_quant(A, 6.0)
    CA0, SCA0, _ = OPS.int8_vectorwise_quant(A, 0.0)
    CB, SCB, _ = OPS.int8_vectorwise_quant(torch.randn(n, k, dtype=dtype), 0.0)
    return A, (CA, SCA, cols), (CA0, SCA0), (CB, SCB)


# ---------------------------------------------------------------------------------------------
# Samples: op -> [(label, args, test_utils)]
# ---------------------------------------------------------------------------------------------


def s_quantize_4bit():
    out = []
    for dtype in FLOATS:
        for qt in ("nf4", "fp4"):
            A = torch.randn(3, 50, dtype=dtype)  # 150 elements: a partial last block of 64
            out.append((f"{dtype}-{qt}-u8", (A, 64, qt, torch.uint8), ALL))
        A = torch.randn(5, 48, dtype=dtype)  # 240 elements: whole bf16 / f32 storage units
        out.append((f"{dtype}-bf16-storage", (A, 128, "nf4", torch.bfloat16), ALL))
        out.append((f"{dtype}-f32-storage", (A, 32, "fp4", torch.float32), ALL))
    out.append(("grad", (grad(torch.randn(3, 50)), 64, "nf4", torch.uint8), NO_AOT_INT_FIRST_OUTPUT))
    return out


def s_dequantize_4bit(overload_out=False):
    out = []
    for dtype in FLOATS:
        for qt, bs, storage in (("nf4", 64, torch.uint8), ("fp4", 32, torch.uint8), ("nf4", 128, torch.bfloat16)):
            shape = [5, 48] if storage != torch.uint8 else [3, 50]
            packed, absmax = packed_4bit(shape, dtype, bs, qt, storage)
            args = (packed, absmax, bs, qt, shape, dtype)
            if overload_out:
                args = (*args, torch.empty(shape, dtype=dtype))
            out.append((f"{dtype}-{qt}-{bs}-{storage}", args, ALL))
    if not overload_out:
        packed, absmax = packed_4bit([3, 50], torch.float32, 64, "nf4")
        out.append(("grad-absmax", (packed, grad(absmax), 64, "nf4", [3, 50], torch.float32), ALL))
    return out


def s_gemv_4bit(overload_out=False):
    out = []
    for dtype in FLOATS:
        for qt in ("nf4", "fp4"):
            B, absmax = packed_4bit([24, 40], dtype, 32, qt)
            for lead in ((1,), (1, 1)):
                A = torch.randn(*lead, 40, dtype=dtype)
                args = (A, B, [24, 40], absmax, four_bit_table(qt), 32)
                if overload_out:
                    args = (*args, torch.empty(*lead, 24, dtype=dtype))
                out.append((f"{dtype}-{qt}-{lead}", args, ALL))
    if not overload_out:
        B, absmax = packed_4bit([24, 40], torch.float32, 32, "nf4")
        A = grad(torch.randn(1, 40))
        out.append(("grad", (A, B, [24, 40], absmax, four_bit_table("nf4"), 32), ALL))
    return out


def s_gemm_4bit():
    out = []
    code = dynamic_map()
    for dtype in FLOATS:
        for qt in ("nf4", "fp4"):
            B, absmax = packed_4bit([24, 40], dtype, 32, qt)
            A = torch.randn(2, 5, 40, dtype=dtype)
            out.append((f"{dtype}-{qt}", (A, B, [24, 40], absmax, 32, qt), ALL))
            # Nested absmax: the 8-bit codes, the inner f32 absmax, the code and the offset.
            offset = absmax.mean()
            absmax_8bit, inner = OPS.quantize_blockwise(absmax - offset, code, 256)
            bias = torch.randn(24, dtype=dtype)
            args = (A[0], B, [24, 40], inner, 32, qt, bias, absmax_8bit, code, offset)
            out.append((f"{dtype}-{qt}-nested-bias", args, ALL))
        B, absmax = packed_4bit([16, 64], dtype, 64, "nf4", torch.bfloat16)
        out.append((f"{dtype}-bf16-storage", (torch.randn(3, 64, dtype=dtype), B, [16, 64], absmax, 64, "nf4"), ALL))
    B, absmax = packed_4bit([24, 40], torch.float32, 32, "nf4")
    args = (grad(torch.randn(5, 40)), B, [24, 40], absmax, 32, "nf4", grad(torch.randn(24)))
    out.append(("grad", args, ALL))
    return out


def s_gemm_4bit_t():
    out = []
    for dtype in FLOATS:
        for qt in ("nf4", "fp4"):
            B, absmax = packed_4bit([24, 40], dtype, 32, qt)
            for rows in ((1,), (2, 16)):  # a fused-kernel row count and a dense-GEMM one
                out.append(
                    (f"{dtype}-{qt}-{rows}", (torch.randn(*rows, 24, dtype=dtype), B, [24, 40], absmax, 32, qt), ALL)
                )
    B, absmax = packed_4bit([24, 40], torch.float32, 32, "nf4")
    for rows in (1, 32):
        out.append((f"grad-{rows}", (grad(torch.randn(rows, 24)), B, [24, 40], absmax, 32, "nf4"), ALL))
    return out


def s_quantize_blockwise():
    code = dynamic_map()
    out = [(f"{dtype}-{bs}", (torch.randn(3, 100, dtype=dtype), code, bs), ALL) for dtype in FLOATS for bs in (64, 256)]
    out.append(("grad", (grad(torch.randn(300)), code, 256), NO_AOT_INT_FIRST_OUTPUT))
    return out


def s_dequantize_blockwise(overload_out=False):
    code = dynamic_map()
    out = []
    for dtype in FLOATS:
        for bs in (64, 256):
            A, absmax = OPS.quantize_blockwise(torch.randn(3, 100, dtype=dtype), code, bs)
            args = (A, absmax, code, bs, dtype)
            if overload_out:
                args = (*args, torch.empty(3, 100, dtype=dtype))
            out.append((f"{dtype}-{bs}", args, ALL))
    return out


def s_int8_vectorwise_quant():
    out = []
    for dtype in FLOATS:
        A = int8_operands(dtype)[0]
        out += [(f"{dtype}-0", (A, 0.0), ALL), (f"{dtype}-6", (A, 6.0), ALL)]
    out.append(("grad", (grad(int8_operands(torch.float32)[0]), 6.0), NO_AOT_INT_FIRST_OUTPUT))
    return out


def s_int8_double_quant():
    out = []
    for dtype in FLOATS:
        A = int8_operands(dtype, rows=(6,))[0]
        out += [(f"{dtype}-0", (A, 0.0), ALL), (f"{dtype}-6", (A, 6.0), ALL)]
    out.append(("grad", (grad(int8_operands(torch.float32, rows=(6,))[0]), 6.0), NO_AOT_INT_FIRST_OUTPUT))
    return out


def s_int8_vectorwise_dequant():
    _, _, (CA0, SCA0), _ = int8_operands(torch.float32)
    return [("2x3x16", (CA0, SCA0), ALL), ("grad-stats", (CA0, grad(SCA0)), ALL)]


def s_int8_linear_matmul(overload_out=False):
    _, _, (CA0, _), (CB, _) = int8_operands(torch.float16)
    out = []
    for label, A in (("3d", CA0), ("2d", CA0[0]), ("k-not-4", CA0[..., :13])):
        B = CB[:, : A.shape[-1]].contiguous()
        args = (A.contiguous(), B)
        if overload_out:
            args = (*args, torch.empty(*A.shape[:-1], B.shape[0], dtype=torch.int32))
        out.append((label, args, ALL))
    return out


def s_int8_mm_dequant():
    out = []
    for dtype in FLOATS:
        _, _, (CA0, SCA0), (CB, SCB) = int8_operands(dtype)
        acc = OPS.int8_linear_matmul(CA0, CB)
        out.append((f"{dtype}-bias", (acc, SCA0, SCB, dtype, torch.randn(8, dtype=dtype)), ALL))
    out.append(("default-dtype", (acc, SCA0, SCB), ALL))
    out.append(("grad-bias", (acc, SCA0, SCB, torch.float32, grad(torch.randn(8))), ALL))
    return out


def s_int8_scaled_mm():
    out = []
    for dtype in FLOATS:
        _, _, (CA0, SCA0), (CB, SCB) = int8_operands(dtype)
        out.append((f"{dtype}", (CA0, CB, SCA0, SCB, torch.randn(8, dtype=dtype), dtype), ALL))
    out.append(("no-bias-default-dtype", (CA0, CB, SCA0, SCB), ALL))
    return out


def s_int8_mixed_scaled_mm():
    out = []
    for dtype in FLOATS:
        for rows in ((6,), (2, 3)):  # subA has one row per row of A seen as a matrix
            A, (CA, SCA, cols), (CA0, SCA0), (CB, SCB) = int8_operands(dtype, rows=rows)
            bias = torch.randn(8, dtype=dtype)
            out.append((f"{dtype}-{rows}-outliers", (A, CA, CB, SCA, SCB, cols, bias), ALL))
            out.append((f"{dtype}-{rows}-none", (A, CA0, CB, SCA0, SCB, None, None), ALL))
            empty = torch.empty(0, dtype=torch.int64)
            out.append((f"{dtype}-{rows}-empty", (A, CA0, CB, SCA0, SCB, empty, None), ALL))
    A, (CA, SCA, cols), _, (CB, SCB) = int8_operands(torch.float32, rows=(6,))
    out.append(("grad", (grad(A), CA, CB, SCA, SCB, cols, grad(torch.randn(8))), ALL))
    return out


def s_int8_weight_mm():
    out = []
    for dtype in FLOATS:
        A, _, _, (CB, SCB) = int8_operands(dtype)
        out.append((f"{dtype}-bias", (A, CB, SCB, torch.randn(8, dtype=dtype)), ALL))
        out.append((f"{dtype}-rows-32", (torch.randn(32, 16, dtype=dtype), CB, SCB), ALL))
    out.append(("grad", (grad(A.float()), CB, SCB, grad(torch.randn(8))), ALL))
    return out


def s_int8_weight_mm_t():
    out = []
    for dtype in FLOATS:
        _, _, _, (CB, SCB) = int8_operands(dtype)
        for rows in ((1,), (2, 16)):
            out.append((f"{dtype}-{rows}", (torch.randn(*rows, 8, dtype=dtype), CB, SCB), ALL))
    for rows in (1, 32):
        out.append((f"grad-{rows}", (grad(torch.randn(rows, 8)), CB, SCB), ALL))
    return out


OPTIMIZERS = ("adam", "lamb", "momentum", "lars", "rmsprop", "adagrad", "lion", "ademamix")
TWO_STATE = ("adam", "lamb", "ademamix")


def optimizer_tensors(name, dtype, n=300):
    """g, p (20x15: a partial last 256-element block) and f32 states of ``name``'s layout."""
    torch.manual_seed(3)
    p = torch.randn(20, 15, dtype=dtype)
    g = (torch.randn(20, 15) * 0.1).to(dtype)
    g.view(-1)[::7] = 0  # zeros, for skip_zeros
    rows = 2 if name == "ademamix" else 1
    s1 = torch.rand(rows * n)
    s2 = torch.rand(n) if name in TWO_STATE else None
    return g, p, s1, s2, rows


def s_optimizer_update_32bit():
    out = []
    for name in OPTIMIZERS:
        for dtype in FLOATS:
            g, p, s1, s2, _ = optimizer_tensors(name, dtype)
            clip = name in ("lamb", "lars")  # the trust-ratio clip writes unorm_vec
            args = (name, g, p, s1, s2, torch.zeros(1), 1.0 if clip else 0.0, 2.0)
            args += (0.9, 0.99, 0.999, 0.5, 1e-8, 0.01, 3, 1e-3, 0.5, dtype == torch.float16)
            out.append((f"{name}-{dtype}", args, ALL))
    return out


def s_optimizer_update_8bit_blockwise():
    out = []
    for name in OPTIMIZERS:
        for dtype in FLOATS:
            g, p, _, _, rows = optimizer_tensors(name, dtype)
            n, blocks = p.numel(), -(-p.numel() // 256)
            q1 = torch.randint(0, 256, (rows * n,), dtype=torch.uint8)
            a1 = torch.rand(rows * blocks)
            two = name in TWO_STATE
            q2 = torch.randint(0, 256, (n,), dtype=torch.uint8) if two else None
            a2 = torch.rand(blocks) if two else None
            qmap2 = dynamic_map(signed=False) if two else None
            args = (name, g, p, q1, q2, 0.9, 0.99, 0.999, 0.5, 1e-8, 3, 1e-3)
            args += (dynamic_map(), qmap2, a1, a2, 0.01, 0.5, dtype == torch.float16)
            out.append((f"{name}-{dtype}", args, ALL))
    return out


SAMPLES = {
    "quantize_4bit": s_quantize_4bit,
    "dequantize_4bit": s_dequantize_4bit,
    "dequantize_4bit.out": lambda: s_dequantize_4bit(overload_out=True),
    "gemv_4bit": s_gemv_4bit,
    "gemv_4bit.out": lambda: s_gemv_4bit(overload_out=True),
    "gemm_4bit": s_gemm_4bit,
    "gemm_4bit_t": s_gemm_4bit_t,
    "quantize_blockwise": s_quantize_blockwise,
    "dequantize_blockwise": s_dequantize_blockwise,
    "dequantize_blockwise.out": lambda: s_dequantize_blockwise(overload_out=True),
    "int8_vectorwise_quant": s_int8_vectorwise_quant,
    "int8_vectorwise_dequant": s_int8_vectorwise_dequant,
    "int8_double_quant": s_int8_double_quant,
    "int8_linear_matmul": s_int8_linear_matmul,
    "int8_linear_matmul.out": lambda: s_int8_linear_matmul(overload_out=True),
    "int8_mm_dequant": s_int8_mm_dequant,
    "int8_scaled_mm": s_int8_scaled_mm,
    "int8_mixed_scaled_mm": s_int8_mixed_scaled_mm,
    "int8_weight_mm": s_int8_weight_mm,
    "int8_weight_mm_t": s_int8_weight_mm_t,
    "optimizer_update_32bit": s_optimizer_update_32bit,
    "optimizer_update_8bit_blockwise": s_optimizer_update_8bit_blockwise,
}


def overload(op: str) -> torch._ops.OpOverload:
    name, _, variant = op.partition(".")
    return getattr(getattr(OPS, name), variant or "default")


def test_every_op_and_overload_has_samples():
    assert set(SAMPLES) == set(_ops.OP_NAMES)
    packets = {name.partition(".")[0] for name in _ops.OP_NAMES}
    registered = {f"{p}.{o}" if o != "default" else p for p in packets for o in getattr(OPS, p).overloads()}
    assert registered == set(_ops.OP_NAMES)


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        # The autograd fallback warns when the harness backpropagates through an op without an
        # autograd formula (the ops are not differentiable: bitsandbytes.autograd holds the
        # gradients); checkpoints of the harness's own data-dependent sizes warn too.
        warnings.simplefilter("ignore", UserWarning)
        yield
    torch._dynamo.reset()


@contextlib.contextmanager
def kernel_on_cpu(op: str, kernel: str):
    """``kernel``: "dispatched" (what the dispatcher holds for CPU: the bitsandbytes-cpu wheel's
    kernel where it is installed) or "reference" (registered over it for the duration: what
    serves every device without a platform wheel)."""
    if kernel == "dispatched" or bitsandbytes._LOADED.kernels.get((op, "cpu")) is None:
        yield
        return
    lib = torch.library.Library(_ops.NAMESPACE, "IMPL")
    try:
        _ops.impl(lib, op, "cpu", REFERENCE[op])
        yield
    finally:
        lib._destroy()


@pytest.mark.parametrize("kernel", ["dispatched", "reference"])
@pytest.mark.parametrize("op", list(SAMPLES))
def test_opcheck(op, kernel):
    failures = []
    with kernel_on_cpu(op, kernel):
        for label, args, utils in SAMPLES[op]():
            kwargs = {} if utils is None else {"test_utils": utils}
            result = torch.library.opcheck(overload(op), args, raise_exception=False, **kwargs)
            assert set(result) == set(utils or torch.library._OPCHECK_DEFAULT_UTILS)
            failures += [f"{label}: {test}: {err!r}"[:400] for test, err in result.items() if err != "SUCCESS"]
    assert not failures, "\n".join(failures)


# ---------------------------------------------------------------------------------------------
# The defects opcheck found, pinned by value
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("threshold", [0.0, 6.0])
def test_int8_double_quant_fake_matches_real_outlier_output(threshold):
    """No outlier search (threshold 0): every kernel returns None for the outlier columns; the
    fake kernel returned a tensor of dynamic size, so compiled code saw a tensor where eager saw None."""
    A = int8_operands(torch.float16, rows=(6,))[0]
    real = OPS.int8_double_quant(A, threshold)
    with FakeTensorMode(shape_env=ShapeEnv()) as mode:
        fake = OPS.int8_double_quant(mode.from_tensor(A), threshold)
    assert (fake[4] is None) == (real[4] is None) == (threshold == 0.0)
    assert [t.shape for t in fake[:4]] == [t.shape for t in real[:4]]
    if threshold:
        assert real[4].tolist() == [3]


@pytest.mark.parametrize("n", [1, 7, 4103])
def test_quantize_4bit_fake_matches_real_for_an_odd_element_count(n):
    """An odd number of values packs into (n + 1) // 2 bytes, the last one half filled: the fake
    kernel's shapes are the real kernel's."""
    A = torch.randn(n)
    packed, absmax = OPS.quantize_4bit(A, 64, "nf4", torch.uint8)
    with FakeTensorMode() as mode:
        fake_packed, fake_absmax = OPS.quantize_4bit(mode.from_tensor(A), 64, "nf4", torch.uint8)
    assert tuple(packed.shape) == tuple(fake_packed.shape) == ((n + 1) // 2, 1)
    assert tuple(absmax.shape) == tuple(fake_absmax.shape) == ((n + 63) // 64,)


@pytest.mark.parametrize("rows", [(6,), (2, 3), (2, 1, 3)])
@pytest.mark.parametrize("with_cols", [True, False])
def test_int8_mixed_scaled_mm_fake_subA_shape(rows, with_cols):
    """subA is A[:, outlier_cols] of A as a (rows, K) matrix: (prod(leading dims), #cols); the
    fake kernel gave (A.shape[0], unbacked) instead."""
    A, (CA, SCA, cols), (CA0, SCA0), (CB, SCB) = int8_operands(torch.float32, rows=rows)
    args = (A, CA, CB, SCA, SCB, cols, None) if with_cols else (A, CA0, CB, SCA0, SCB, None, None)
    out, sub_a = OPS.int8_mixed_scaled_mm(*args)
    with FakeTensorMode(allow_non_fake_inputs=True) as mode:
        fake_out, fake_sub = OPS.int8_mixed_scaled_mm(*(mode.from_tensor(a) if torch.is_tensor(a) else a for a in args))
    assert tuple(fake_sub.shape) == tuple(sub_a.shape) == (6, 1 if with_cols else 0)
    assert fake_out.shape == out.shape and fake_sub.dtype == sub_a.dtype == A.dtype
    if with_cols:
        assert torch.equal(sub_a[:, 0], A.reshape(6, 16)[:, 3])


@pytest.mark.parametrize("rows", [1, 32])
def test_op_outputs_carry_no_graph_on_any_kernel_path(rows):
    """The ops have no autograd formula. gemm_4bit_t's dense-GEMM path (32 rows) recorded a graph
    through its torch ops, giving gradients that its fused path (1 row) and torch.compile did not:
    every path now returns outputs without a graph."""
    B, absmax = packed_4bit([24, 40], torch.float32, 32, "nf4")
    A = grad(torch.randn(rows, 24))
    out = OPS.gemm_4bit_t(A, B, [24, 40], absmax, 32, "nf4")
    assert torch.equal(out, OPS.gemm_4bit_t(A.detach(), B, [24, 40], absmax, 32, "nf4"))
    (g,) = torch.autograd.grad(out.sum(), A, allow_unused=True)
    assert g is None


def test_mixed_scaled_mm_outputs_carry_no_graph():
    """int8_mixed_scaled_mm's outlier part (an addmm on A's columns) recorded a graph too."""
    A, (CA, SCA, cols), _, (CB, SCB) = int8_operands(torch.float32, rows=(6,))
    A1 = grad(A)
    out, sub_a = OPS.int8_mixed_scaled_mm(A1, CA, CB, SCA, SCB, cols, None)
    assert torch.equal(out, OPS.int8_mixed_scaled_mm(A, CA, CB, SCA, SCB, cols, None)[0])
    assert torch.autograd.grad((out.sum() + sub_a.sum()), A1, allow_unused=True) == (None,)
