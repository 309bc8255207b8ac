"""torch.compile traces through the ops (fake kernels) with no graph break, on every implementation."""

from __future__ import annotations

import pytest
import torch

import bitsandbytes


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
