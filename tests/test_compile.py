"""torch.compile traces through the ops (fake kernels) with no graph break, on every implementation."""

from __future__ import annotations

import pytest
import torch

import bitsandbytes
import bitsandbytes.functional as F


def roundtrip(x: torch.Tensor) -> torch.Tensor:
    packed, absmax = torch.ops.bitsandbytes.quantize_4bit(x, 64, "nf4", torch.uint8)
    return torch.ops.bitsandbytes.dequantize_4bit(packed, absmax, 64, "nf4", list(x.shape), x.dtype)


def blockwise_roundtrip(x: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
    q, absmax = torch.ops.bitsandbytes.quantize_blockwise(x, code, 256)
    return torch.ops.bitsandbytes.dequantize_blockwise(q, absmax, code, 256, x.dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_compile_fullgraph_4bit(dtype):
    torch._dynamo.reset()
    x = torch.randn(64, 128, dtype=dtype)
    compiled = torch.compile(roundtrip, fullgraph=True, backend="inductor")
    assert torch.equal(compiled(x), roundtrip(x))
    explanation = torch._dynamo.explain(roundtrip)(x)
    assert explanation.graph_break_count == 0 and explanation.graph_count == 1


def test_compile_fullgraph_blockwise():
    torch._dynamo.reset()
    from bitsandbytes.backends.reference.codebooks import dynamic_map

    x, code = torch.randn(1024), dynamic_map()
    compiled = torch.compile(blockwise_roundtrip, fullgraph=True, backend="aot_eager")
    assert torch.equal(compiled(x, code), blockwise_roundtrip(x, code))


def test_fake_tensor_shapes():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        x = torch.empty(1000, dtype=torch.float16)
        packed, absmax = torch.ops.bitsandbytes.quantize_4bit(x, 64, "nf4", torch.bfloat16)
        assert packed.shape == (250, 1) and packed.dtype == torch.bfloat16 and absmax.shape == (16,)
        out = torch.ops.bitsandbytes.dequantize_4bit(packed, absmax, 64, "nf4", [7, 11], torch.float32)
        assert out.shape == (7, 11)


def test_implementation_report():
    impl = bitsandbytes.implementation("quantize_4bit", "cpu")
    assert impl in {"cpu", "reference"}


# ---------------------------------------------------------------------------------------------
# The public functional API under torch.compile(fullgraph=True, dynamic=True): one graph, and
# outputs bit-identical to eager (aot_eager runs the same kernels as eager).
# ---------------------------------------------------------------------------------------------


def _4bit_roundtrip(x, quant_type, nested):
    q, state = F.quantize_4bit(x, blocksize=64, quant_type=quant_type, compress_statistics=nested)
    return q, F.dequantize_4bit(q, state)


def _blockwise_roundtrip(x, nested):
    q, state = F.quantize_blockwise(x, blocksize=256, nested=nested)
    return q, F.dequantize_blockwise(q, state)


def _vectorwise_quant(x, threshold):
    return F.int8_vectorwise_quant(x, threshold=threshold)


def _gemv_4bit(x, W, state):
    return F.gemv_4bit(x, W.t(), state=state)


def _matmul_4bit(x, W, state, bias):
    return bitsandbytes.matmul_4bit(x, W.t(), state, bias=bias)


def _matmul_int8(x, W, threshold, training):
    state = bitsandbytes.MatmulLtState()
    state.is_training = training  # CPU training: the dequantized-weight path; else LLM.int8()
    return bitsandbytes.matmul(x, W, state=state, threshold=threshold)


def _functional_cases(dtype):
    torch.manual_seed(0)
    x = torch.randn(5, 100, dtype=dtype)  # 500 elements: partial last blocks of 64 and 256
    outliers = torch.randn(6, 32, dtype=dtype)
    outliers[:, 5] = 20.0
    W4, state = F.quantize_4bit(torch.randn(48, 64, dtype=dtype), blocksize=64, compress_statistics=True)
    W8 = torch.randn(48, 64, dtype=dtype)
    x8 = torch.randn(7, 64, dtype=dtype)
    x8[:, 3] = 30.0
    return {
        "4bit-nf4": (_4bit_roundtrip, x, "nf4", False),
        "4bit-fp4-nested": (_4bit_roundtrip, x, "fp4", True),
        "blockwise": (_blockwise_roundtrip, x, False),
        "blockwise-nested": (_blockwise_roundtrip, x, True),
        "int8-vectorwise": (_vectorwise_quant, outliers, 0.0),
        "int8-vectorwise-outliers": (_vectorwise_quant, outliers, 6.0),
        "gemv_4bit": (_gemv_4bit, torch.randn(1, 64, dtype=dtype), W4, state),
        "matmul_4bit": (_matmul_4bit, torch.randn(3, 7, 64, dtype=dtype), W4, state, torch.randn(48, dtype=dtype)),
        "matmul": (_matmul_int8, x8, W8, 0.0, False),
        "matmul-outliers": (_matmul_int8, x8, W8, 6.0, False),
        "matmul-training": (_matmul_int8, x8, W8, 6.0, True),
    }


FUNCTIONAL_CASES = ["4bit-nf4", "4bit-fp4-nested", "blockwise", "blockwise-nested", "int8-vectorwise"]
FUNCTIONAL_CASES += ["int8-vectorwise-outliers", "gemv_4bit", "matmul_4bit", "matmul", "matmul-outliers"]
FUNCTIONAL_CASES += ["matmul-training"]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("case", FUNCTIONAL_CASES)
def test_functional_api_dynamic_fullgraph(case, dtype):
    fn, *args = _functional_cases(dtype)[case]
    # The outlier columns' count is data-dependent (an unbacked size in the fake kernels): dynamo
    # keeps such an op in the graph only with capture_dynamic_output_shape_ops, as for aten.nonzero
    # (and as with the established release).
    data_dependent = case in ("int8-vectorwise-outliers", "matmul-outliers")
    with torch._dynamo.config.patch("capture_dynamic_output_shape_ops", data_dependent):
        torch._dynamo.reset()
        explanation = torch._dynamo.explain(fn)(*args)
        reasons = [r.reason.splitlines()[0] for r in explanation.break_reasons]
        assert (explanation.graph_count, explanation.graph_break_count) == (1, 0), reasons
        torch._dynamo.reset()
        compiled = torch.compile(fn, fullgraph=True, dynamic=True, backend="aot_eager")
        got = compiled(*args)
    want = fn(*args)
    got, want = (got, want) if isinstance(want, tuple) else ((got,), (want,))
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert (g is None and w is None) or torch.equal(g, w)
    torch._dynamo.reset()


@pytest.mark.parametrize("nested_4bit", [False, True])
def test_default_code_book_built_outside_the_trace(nested_4bit):
    """The first quantize_blockwise of a process (or a 4-bit quantization with nested statistics)
    builds the default dynamic code book; building it inside a torch.compile trace read tensors
    back with ``tolist()``, a graph break that made fullgraph=True fail until an eager call had
    filled the cache."""
    saved = dict(F.name2qmap)
    F.name2qmap.clear()
    try:
        x = torch.randn(300)
        fn = (lambda t: _4bit_roundtrip(t, "nf4", True)) if nested_4bit else (lambda t: _blockwise_roundtrip(t, False))
        torch._dynamo.reset()
        got = torch.compile(fn, fullgraph=True, dynamic=True, backend="aot_eager")(x)
        assert torch.equal(F.name2qmap["dynamic"], F.create_dynamic_map(signed=True))
        assert all(torch.equal(g, w) for g, w in zip(got, fn(x)))
    finally:
        F.name2qmap.clear()
        F.name2qmap.update(saved)
        torch._dynamo.reset()


@pytest.mark.parametrize(
    "context",
    [
        "torch.device('meta')",
        "torch._subclasses.fake_tensor.FakeTensorMode()",
    ],
)
def test_import_inside_a_device_context_or_fake_mode(context):
    """The code book built at import (for torch.compile) is built on the CPU outside the importer's
    modes: ``import bitsandbytes`` under ``with torch.device("meta")`` (model construction) or a
    FakeTensorMode failed ("Cannot copy out of meta tensor" / a data-dependent output)."""
    import subprocess
    import sys

    code = (
        "import torch, torch._subclasses.fake_tensor\n"
        f"with {context}:\n"
        "    import bitsandbytes.functional as F\n"
        "q, s = F.quantize_blockwise(torch.linspace(-1, 1, 300))\n"
        "assert s.code.device.type == 'cpu' and s.code.shape == (256,)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
