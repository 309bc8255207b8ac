"""The argument checks of the CUDA (and ROCm) wheel's C entry points, run by the CUDA host harness.

The Python glue validates shapes, dtypes and devices before it reaches the native library, so the
library's own checks (``BNB_REQUIRE`` in platforms/cuda/src) never see a bad argument from the
glue. They are what a caller of the C ABI gets (and the last line before device memory), so each
one is driven here through the harness's bindings (``_C``) with one bad argument in an otherwise
valid call: the status's exception type, a message naming the argument, and nothing written.
Sizes past a launch's limits are refused before any memory is touched, so the calls pass small
buffers with a huge count.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable

import pytest
import torch

from conftest import cuda_harness, cuda_harness_warps

WARPS = cuda_harness_warps()
BIG = 1 << 40  # elements: past every launch's grid limit
NF4, ADAM, BAD = 1, 3, 7  # BNB_QUANT_NF4, BNB_OPTIM_ADAM; a code no entry accepts


def _buffers() -> dict[str, torch.Tensor]:
    """The tensors of every entry point's valid call (64 elements, blocks of 64), outputs filled
    with a sentinel."""
    from bitsandbytes.backends.reference.codebooks import dynamic_map, four_bit_table

    g = torch.Generator().manual_seed(0)
    return {
        "x": torch.randn(64, generator=g),
        "x2": torch.randn(8, 16, generator=g),
        "packed": torch.full((32,), 0xAB, dtype=torch.uint8),
        "q": torch.full((64,), 0xAB, dtype=torch.uint8),
        "absmax": torch.full((1,), -3.0),
        "out": torch.full((64,), -3.0),
        "code": dynamic_map(signed=True),
        "code4": four_bit_table("nf4"),
        "B4": torch.randint(0, 256, (8 * 16 // 2,), dtype=torch.uint8, generator=g),
        "absmax4": torch.rand(2, generator=g) + 0.5,
        "out2": torch.full((8, 8), -3.0),
        "i8": torch.full((8, 16), 5, dtype=torch.int8),
        "rows": torch.full((8,), -3.0),
        "cols": torch.zeros(16, dtype=torch.uint8),
        "C": torch.full((8, 8), -3, dtype=torch.int32),
        "bias": torch.ones(8),
        "p": torch.randn(64, generator=g),
        "s1": torch.zeros(64),
        "s2": torch.zeros(64),
        "unorm": torch.full((1,), -3.0),
        "q1": torch.full((64,), 128, dtype=torch.uint8),
        "q2": torch.zeros(64, dtype=torch.uint8),
        "qmap2": dynamic_map(signed=False),
        "am1": torch.ones(1),
        "am2": torch.ones(1),
    }


def _calls(native, t: dict[str, torch.Tensor]) -> dict[str, tuple]:
    """Each entry point's valid call over ``t``: its (name, value) arguments in order, then the
    buffers it writes. ``hparams`` is a function of the fields to change."""
    a = {name: v.data_ptr() for name, v in t.items()}

    def hp(**over):
        kw = dict(beta1=0.9, beta2=0.999, beta3=0.0, alpha=0.0, eps=1e-8, weight_decay=0.0, lr=1e-3,
                  gnorm_scale=1.0, max_unorm=0.0, param_norm=0.0, step=1, skip_zeros=False)  # fmt: skip
        kw.update(over)
        return native.OptimizerHparams(**kw)

    return {
        "quantize_4bit": (("A", a["x"]), ("dtype", 0), ("n", 64), ("blocksize", 64), ("quant_type", NF4),
                          ("packed", a["packed"]), ("absmax", a["absmax"]), ("stream", 0), ["packed", "absmax"]),
        "dequantize_4bit": (("packed", a["q"]), ("absmax", a["am1"]), ("n", 64), ("blocksize", 64),
                            ("quant_type", NF4), ("out", a["out"]), ("out_dtype", 0), ("stream", 0), ["out"]),
        "quantize_blockwise": (("A", a["x"]), ("dtype", 0), ("code", a["code"]), ("n", 64), ("blocksize", 64),
                               ("out", a["q"]), ("absmax", a["absmax"]), ("stream", 0), ["q", "absmax"]),
        "dequantize_blockwise": (("A", a["q1"]), ("code", a["code"]), ("absmax", a["am1"]), ("n", 64),
                                 ("blocksize", 64), ("out", a["out"]), ("out_dtype", 0), ("stream", 0), ["out"]),
        "gemm_4bit": (("A", a["x2"]), ("dtype", 0), ("m", 8), ("n", 8), ("k", 16), ("B", a["B4"]),
                      ("absmax", a["absmax4"]), ("code", a["code4"]), ("blocksize", 64), ("bias", 0),
                      ("out", a["out2"]), ("stream", 0), ["out2"]),
        "int8_vectorwise_quant": (("A", a["x2"]), ("dtype", 0), ("rows", 8), ("cols", 16), ("threshold", 1.5),
                                  ("out", a["i8"]), ("row_stats", a["rows"]), ("outlier_cols", a["cols"]),
                                  ("stream", 0), ["i8", "rows", "cols"]),
        "int8_linear_matmul": (("A", a["i8"]), ("B", a["i8"]), ("m", 8), ("n", 8), ("k", 16), ("C", a["C"]),
                               ("stream", 0), ["C"]),
        "int8_mm_dequant": (("C", a["C"]), ("row_stats", a["rows"]), ("col_stats", a["rows"]), ("m", 8), ("n", 8),
                            ("bias", a["bias"]), ("bias_dtype", 0), ("out", a["out2"]), ("out_dtype", 0),
                            ("stream", 0), ["out2"]),
        "optimizer_update_32bit": (("optimizer", ADAM), ("g", a["x"]), ("p", a["p"]), ("dtype", 0), ("state1", a["s1"]),
                                   ("state2", a["s2"]), ("unorm_vec", a["unorm"]), ("n", 64), ("hparams", hp),
                                   ("stream", 0), ["p", "s1", "s2"]),
        "optimizer_update_8bit_blockwise": (("optimizer", ADAM), ("g", a["x"]), ("p", a["p"]), ("dtype", 0),
                                            ("state1", a["q1"]), ("state2", a["q2"]), ("qmap1", a["code"]),
                                            ("qmap2", a["qmap2"]), ("absmax1", a["am1"]), ("absmax2", a["am2"]),
                                            ("n", 64), ("hparams", hp), ("stream", 0), ["p", "q1", "q2", "am1", "am2"]),
        "paged_prefetch": (("ptr", a["out"]), ("bytes", 256), ("device", 0), ("stream", 0), []),
    }  # fmt: skip


# (op, {argument: bad value}, exception, the refusal's words). A string value names another buffer,
# whose address is passed (memory two buffers share); "hparams" maps fields to values.
BAD_ARGS = [
    ("quantize_4bit", {"dtype": BAD}, TypeError, "A's dtype must be f32, f16 or bf16"),
    ("quantize_4bit", {"n": 0}, ValueError, "n must be positive, got 0"),
    ("quantize_4bit", {"n": -5}, ValueError, "n must be positive, got -5"),
    ("quantize_4bit", {"blocksize": 0}, ValueError, "blocksize must be positive, got 0"),
    ("quantize_4bit", {"blocksize": 48}, ValueError, r"blocksize must be a power of two in \[32, 4096\], got 48"),
    ("quantize_4bit", {"blocksize": 8192}, ValueError, "power of two in .*, got 8192"),
    ("quantize_4bit", {"quant_type": BAD}, ValueError, "quant_type must be BNB_QUANT_NF4 or BNB_QUANT_FP4, got 7"),
    ("quantize_4bit", {"n": BIG, "blocksize": 32}, ValueError, "n is too large for one launch"),
    ("dequantize_4bit", {"out_dtype": BAD}, TypeError, "out's dtype must be f32, f16 or bf16"),
    ("dequantize_4bit", {"n": 0}, ValueError, "n must be positive"),
    ("dequantize_4bit", {"blocksize": 0}, ValueError, "blocksize must be positive"),
    ("dequantize_4bit", {"blocksize": 16}, ValueError, "power of two in .*, got 16"),
    ("dequantize_4bit", {"quant_type": -1}, ValueError, "quant_type must be .*, got -1"),
    ("quantize_blockwise", {"dtype": BAD}, TypeError, "A's dtype must be f32, f16 or bf16"),
    ("quantize_blockwise", {"n": 0}, ValueError, "n must be positive"),
    ("quantize_blockwise", {"blocksize": -64}, ValueError, "blocksize must be positive, got -64"),
    ("quantize_blockwise", {"n": BIG, "blocksize": 1}, ValueError, "too many blocks for one launch"),
    ("dequantize_blockwise", {"out_dtype": BAD}, TypeError, "out's dtype must be f32, f16 or bf16"),
    ("dequantize_blockwise", {"n": -1}, ValueError, "n must be positive"),
    ("dequantize_blockwise", {"blocksize": 0}, ValueError, "blocksize must be positive"),
    ("gemm_4bit", {"dtype": BAD}, TypeError, "A's dtype must be f32, f16 or bf16"),
    ("gemm_4bit", {"m": 0}, ValueError, "m, n and k must be positive, got 0, 8, 16"),
    ("gemm_4bit", {"n": 0}, ValueError, "m, n and k must be positive, got 8, 0, 16"),
    ("gemm_4bit", {"k": -1}, ValueError, "m, n and k must be positive, got 8, 8, -1"),
    ("gemm_4bit", {"blocksize": 100}, ValueError, "power of two in .*, got 100"),
    ("gemm_4bit", {"n": BIG}, ValueError, "n is too large"),
    ("int8_vectorwise_quant", {"dtype": BAD}, TypeError, "A's dtype must be f32, f16 or bf16"),
    ("int8_vectorwise_quant", {"rows": 0}, ValueError, "rows and cols must be positive, got 0 x 16"),
    ("int8_vectorwise_quant", {"cols": -2}, ValueError, "rows and cols must be positive, got 8 x -2"),
    ("int8_vectorwise_quant", {"rows": 1 << 31, "cols": 1}, ValueError, "too many rows for one launch"),
    ("int8_vectorwise_quant", {"threshold": -1.0}, ValueError, "threshold must be >= 0"),
    ("int8_vectorwise_quant", {"threshold": float("nan")}, ValueError, "threshold must be >= 0"),
    ("int8_linear_matmul", {"m": 0}, ValueError, "m, n and k must be positive, got 0, 8, 16"),
    ("int8_linear_matmul", {"n": -1}, ValueError, "m, n and k must be positive, got 8, -1, 16"),
    ("int8_linear_matmul", {"k": 0}, ValueError, "m, n and k must be positive, got 8, 8, 0"),
    ("int8_linear_matmul", {"k": 1 << 31}, ValueError, "m, n and k must fit in int32"),
    ("int8_linear_matmul", {"m": 65536 * 16}, ValueError, "A has 1048576 rows, too many for the built-in int8 kernel"),
    ("int8_mm_dequant", {"out_dtype": BAD}, TypeError, "out's dtype must be f32, f16 or bf16"),
    ("int8_mm_dequant", {"bias_dtype": BAD}, TypeError, "bias's dtype must be f32, f16 or bf16"),
    ("int8_mm_dequant", {"m": 0}, ValueError, "m and n must be positive"),
    ("int8_mm_dequant", {"n": -8}, ValueError, "m and n must be positive"),
    ("optimizer_update_32bit", {"optimizer": -1}, ValueError, "unknown optimizer id -1"),
    ("optimizer_update_32bit", {"optimizer": 8}, ValueError, "unknown optimizer id 8"),
    ("optimizer_update_32bit", {"n": 0}, ValueError, "n must be positive, got 0"),
    ("optimizer_update_32bit", {"hparams": {"step": 0}}, ValueError, r"step must be >= 1 \(the first step is 1\), got 0"),
    ("optimizer_update_32bit", {"hparams": {"lr": -1e-3}}, ValueError, "lr and eps must be non-negative"),
    ("optimizer_update_32bit", {"hparams": {"eps": -1e-8}}, ValueError, "lr and eps must be non-negative"),
    ("optimizer_update_32bit", {"dtype": BAD}, TypeError, "g and p must be f32, f16 or bf16"),
    ("optimizer_update_32bit", {"n": 1 << 60}, ValueError, "n is too large, got 1152921504606846976"),
    ("optimizer_update_32bit", {"hparams": {"max_unorm": 1.0}, "unorm_vec": 0}, ValueError,
     "unorm_vec is required when max_unorm > 0"),
    ("optimizer_update_32bit", {"state1": "p"}, ValueError, "p and state1 share memory"),
    ("optimizer_update_32bit", {"hparams": {"max_unorm": 1.0}, "unorm_vec": "s2"}, ValueError,
     "state2 and unorm_vec share memory"),
    ("optimizer_update_8bit_blockwise", {"optimizer": 12}, ValueError, "unknown optimizer id 12"),
    ("optimizer_update_8bit_blockwise", {"n": -1}, ValueError, "n must be positive, got -1"),
    ("optimizer_update_8bit_blockwise", {"hparams": {"step": -3}}, ValueError, "step must be >= 1"),
    ("optimizer_update_8bit_blockwise", {"hparams": {"lr": float("nan")}}, ValueError,
     "lr and eps must be non-negative"),
    ("optimizer_update_8bit_blockwise", {"dtype": BAD}, TypeError, "g and p must be f32, f16 or bf16"),
    ("optimizer_update_8bit_blockwise", {"n": BIG}, ValueError, "n is too large for one launch"),
    ("optimizer_update_8bit_blockwise", {"state2": "q1"}, ValueError, "state1 and state2 share memory"),
    ("optimizer_update_8bit_blockwise", {"absmax2": "x"}, ValueError, "absmax2 and g share memory"),
    ("paged_prefetch", {"bytes": 0}, ValueError, "bytes must be positive, got 0"),
    ("paged_prefetch", {"device": -2}, ValueError, r"device must be >= -1 \(host\), got -2"),
]  # fmt: skip


OPS = ["quantize_4bit", "dequantize_4bit", "quantize_blockwise", "dequantize_blockwise", "gemm_4bit",
       "int8_vectorwise_quant", "int8_linear_matmul", "int8_mm_dequant", "optimizer_update_32bit",
       "optimizer_update_8bit_blockwise", "paged_prefetch"]  # fmt: skip

# Every pointer argument made NULL, and the refusal's words. bias is optional (NULL: no bias); a
# second state, the clipping norm and the outlier flags are needed only by a two-state optimizer,
# max_unorm > 0 and threshold > 0 (the valid calls have Adam and threshold 1.5).
NULLS = [
    *[("quantize_4bit", p, "A, packed and absmax must not be NULL") for p in ("A", "packed", "absmax")],
    *[("dequantize_4bit", p, "packed, absmax and out must not be NULL") for p in ("packed", "absmax", "out")],
    *[("quantize_blockwise", p, "A, code, out and absmax must not be NULL") for p in ("A", "code", "out", "absmax")],
    *[("dequantize_blockwise", p, "A, code, absmax and out must not be NULL") for p in ("A", "code", "absmax", "out")],
    *[("gemm_4bit", p, "A, B, absmax, code and out must not be NULL") for p in ("A", "B", "absmax", "code", "out")],
    *[("int8_vectorwise_quant", p, "A, out and row_stats must not be NULL") for p in ("A", "out", "row_stats")],
    ("int8_vectorwise_quant", "outlier_cols", "outlier_cols is required when threshold > 0"),
    *[("int8_linear_matmul", p, "A, B and C must not be NULL") for p in ("A", "B", "C")],
    *[("int8_mm_dequant", p, "C, row_stats, col_stats and out must not be NULL")
      for p in ("C", "row_stats", "col_stats", "out")],
    *[("optimizer_update_32bit", p, "g, p and state1 must not be NULL") for p in ("g", "p", "state1")],
    ("optimizer_update_32bit", "state2", "state2 is required for this optimizer"),
    *[("optimizer_update_8bit_blockwise", p, "g, p, state1, qmap1 and absmax1 must not be NULL")
      for p in ("g", "p", "state1", "qmap1", "absmax1")],
    *[("optimizer_update_8bit_blockwise", p, "state2, qmap2 and absmax2 are required for this optimizer")
      for p in ("state2", "qmap2", "absmax2")],
    ("paged_prefetch", "ptr", "ptr must not be NULL"),
]  # fmt: skip


def _run(native, op: str, bad: dict) -> tuple[Callable[[], None], dict, dict, list[str]]:
    """``op``'s valid call with ``bad``'s arguments in place of its own (a string names another
    buffer, whose address is passed; ``hparams`` maps fields to values): the call to make, the
    buffers, copies of them taken before, and the buffers the call writes."""
    t = _buffers()
    *args, outputs = _calls(native, t)[op]
    values = dict(args)
    for name, v in bad.items():
        assert name in values, f"{op} takes no argument {name}"
        if name != "hparams":
            values[name] = t[v].data_ptr() if isinstance(v, str) else v
    if "hparams" in values:
        values["hparams"] = values["hparams"](**bad.get("hparams", {}))
    before = {name: v.clone() for name, v in t.items()}
    return lambda: getattr(native, op)(*values.values()), t, before, outputs


def _changed(t: dict, before: dict) -> list[str]:
    """The buffers whose bytes differ from their copies."""
    return [name for name in t if not torch.equal(t[name].view(torch.uint8), before[name].view(torch.uint8))]


@pytest.fixture(scope="module", params=WARPS, ids=[f"warp{w}" for w in WARPS])
def native(request):
    return cuda_harness().glue(request.param)._C


@pytest.mark.parametrize("op", OPS)
def test_the_valid_call_runs_and_writes(native, op):
    """Each table's base call: it succeeds and writes what it names (and nothing else), so each
    refusal below is its one bad argument's."""
    call, t, before, outputs = _run(native, op, {})
    call()
    changed = _changed(t, before)
    assert sorted(changed) == sorted(outputs), f"{op} wrote {changed}"


def _refused(native, op: str, bad: dict, error: type, words: str) -> None:
    """``op`` with ``bad`` raises ``error`` naming the function and ``words``, and writes nothing."""
    call, t, before, _ = _run(native, op, bad)
    with pytest.raises(error, match=f"^bitsandbytes_cuda: {op}: .*{words}"):
        call()
    assert _changed(t, before) == [], f"{op} refused {bad} but wrote"


@pytest.mark.parametrize(("op", "name", "words"), NULLS, ids=[f"{op}-{name}" for op, name, _ in NULLS])
def test_a_null_pointer_is_refused(native, op, name, words):
    _refused(native, op, {name: 0}, ValueError, words)


@pytest.mark.parametrize(("op", "bad", "error", "words"), BAD_ARGS,
                         ids=[f"{op}-{'-'.join(map(str, bad))}-{i}" for i, (op, bad, _, _) in enumerate(BAD_ARGS)])  # fmt: skip
def test_a_bad_argument_is_refused(native, op, bad, error, words):
    _refused(native, op, bad, error, words)


def test_what_the_bindings_cannot_pass(native):
    """The checks behind arguments the bindings always fill (the hyperparameters, the allocation's
    result) and the paged allocator's, through the C ABI itself (ctypes)."""
    lib = ctypes.CDLL(native.__file__)
    lib.bnb_last_error.restype = ctypes.c_char_p
    t = _buffers()
    before = {name: v.clone() for name, v in t.items()}
    a = {name: ctypes.c_void_p(v.data_ptr()) for name, v in t.items()}
    for fn, args in [
        (lib.bnb_optimizer_update_32bit, [ADAM, a["x"], a["p"], 0, a["s1"], a["s2"], a["unorm"], ctypes.c_int64(64)]),
        (lib.bnb_optimizer_update_8bit_blockwise, [ADAM, a["x"], a["p"], 0, a["q1"], a["q2"], a["code"], a["qmap2"],
                                                   a["am1"], a["am2"], ctypes.c_int64(64)]),
    ]:  # fmt: skip
        fn.restype = ctypes.c_int32
        assert fn(*args, None, None) == 1 and lib.bnb_last_error() == b"hparams must not be NULL"
    lib.bnb_paged_alloc.restype = ctypes.c_int32
    assert lib.bnb_paged_alloc(ctypes.c_int64(256), None) == 1 and lib.bnb_last_error() == b"out must not be NULL"
    with pytest.raises(ValueError, match="paged_alloc: .*bytes must be positive, got 0"):
        native.paged_alloc(0)
    with pytest.raises(ValueError, match="paged_alloc: .*bytes must be positive, got -4"):
        native.paged_alloc(-4)
    with pytest.raises(ValueError, match="paged_free: .*ptr must not be NULL"):
        native.paged_free(0)
    assert _changed(t, before) == []
