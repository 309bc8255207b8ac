"""Spec §6.1 and §7.1 for a 4-bit weight before quantization and across loads: ``.to(dtype)`` and
``.half()`` cast the floats (the state then records that dtype), a checkpoint of another shape with
as many elements is refused, and an in-place load takes the checkpoint's nesting."""

from __future__ import annotations

import pytest
import torch

import bitsandbytes as bnb
import bitsandbytes.functional as F


def test_params4bit_to_dtype_before_quantization_casts_the_floats():
    # §6.1: without a device, .to() wraps Tensor.to(...); §7.1: the state records the dtype at quantization
    w = torch.randn(32, 64, generator=torch.Generator().manual_seed(0))
    p = bnb.nn.Params4bit(w.clone(), quant_type="nf4")
    q = p.to(torch.bfloat16)
    assert type(q) is bnb.nn.Params4bit and not q.bnb_quantized
    assert q.dtype == torch.bfloat16 and torch.equal(q.data, w.to(torch.bfloat16))
    assert q.to("cpu").quant_state.dtype == torch.bfloat16


def test_linear4bit_float_storage_half_before_quantization_casts_the_weight():
    # only packed codes are kept out of Module.half(); unquantized floats are cast as any parameter
    torch.manual_seed(0)
    layer = bnb.nn.Linear4bit(64, 32, quant_type="nf4", quant_storage=torch.bfloat16)
    w16 = layer.weight.data.to(torch.float16)
    layer = layer.half()
    assert layer.weight.dtype == torch.float16 and not layer.weight.bnb_quantized
    layer = layer.to("cpu")
    assert layer.weight.quant_state.dtype == torch.float16
    packed, _ = F.quantize_4bit(
        w16, blocksize=64, compress_statistics=True, quant_type="nf4", quant_storage=torch.bfloat16
    )
    assert torch.equal(layer.weight.data.view(torch.uint8), packed.view(torch.uint8))


def test_linear4bit_refuses_a_checkpoint_of_another_shape_with_as_many_elements():
    # (64, 32) and (32, 64) pack into the same bytes and scales: only the recorded shape tells them apart
    sd = bnb.nn.Linear4bit(64, 32, bias=False, quant_type="nf4").to("cpu").state_dict()
    fresh = bnb.nn.Linear4bit(32, 64, bias=False, quant_type="nf4")
    with pytest.raises(ValueError, match="shape"):
        fresh.load_state_dict(sd)


def test_linear4bit_loading_in_place_takes_the_checkpoints_nesting():
    # §6.1: compress_statistics = quant_state.nested, also after a load into a quantized layer
    torch.manual_seed(0)
    layer = bnb.nn.Linear4bit(64, 32, quant_type="nf4", compress_statistics=True).to("cpu")
    src = bnb.nn.Linear4bit(64, 32, quant_type="nf4", compress_statistics=False).to("cpu")
    layer.load_state_dict(src.state_dict())
    assert layer.weight.quant_state.nested is False
    assert layer.weight.compress_statistics is False
    x = torch.randn(3, 64)
    assert torch.equal(layer(x), src(x))
