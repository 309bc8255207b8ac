"""Checkpoints of quantized modules and optimizers load with ``torch.load(weights_only=True)``:
only tensors and plain containers, never pickled classes; what is loaded reproduces the saved
model exactly. A tampered quant state is refused with a ValueError naming the item."""

from __future__ import annotations

import io

import pytest
import torch

import bitsandbytes as bnb
from bitsandbytes.functional import pack_dict_to_tensor


def _safe_roundtrip(obj):
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
@pytest.mark.parametrize("compress_statistics", [True, False])
@pytest.mark.parametrize("storage", [torch.uint8, torch.bfloat16, torch.float32])
def test_linear4bit_state_dict_weights_only(quant_type, compress_statistics, storage):
    torch.manual_seed(0)
    layer = bnb.nn.Linear4bit(
        64, 40, quant_type=quant_type, compress_statistics=compress_statistics, quant_storage=storage
    ).to("cpu")
    sd = _safe_roundtrip(layer.state_dict())
    fresh = bnb.nn.Linear4bit(64, 40, quant_type=quant_type, quant_storage=storage)
    fresh.load_state_dict(sd)
    x = torch.randn(3, 64)
    assert torch.equal(fresh(x), layer(x))


def test_linear8bit_state_dict_weights_only():
    torch.manual_seed(0)
    layer = bnb.nn.Linear8bitLt(64, 40, has_fp16_weights=False).to("cpu")
    sd = _safe_roundtrip(layer.state_dict())
    fresh = bnb.nn.Linear8bitLt(64, 40, has_fp16_weights=False).to("cpu")  # quantized first, as released
    fresh.load_state_dict(sd)
    x = torch.randn(3, 64)
    assert torch.equal(fresh(x), layer(x))


@pytest.mark.parametrize(
    "make",
    [
        lambda ps: bnb.optim.Adam8bit(ps, lr=1e-2, min_8bit_size=0),
        lambda ps: bnb.optim.Lion8bit(ps, lr=1e-3, min_8bit_size=0),
        lambda ps: bnb.optim.AdEMAMix8bit(ps, lr=1e-2, min_8bit_size=0),
        lambda ps: bnb.optim.AdamW(ps, lr=1e-2),
    ],
    ids=["Adam8bit", "Lion8bit", "AdEMAMix8bit", "AdamW32"],
)
def test_optimizer_state_dict_weights_only(make):
    torch.manual_seed(0)
    p1 = torch.nn.Parameter(torch.randn(300, 7))
    p2 = torch.nn.Parameter(p1.detach().clone())
    o1, o2 = make([p1]), make([p2])
    for _ in range(2):
        p1.grad = torch.randn_like(p1)
        o1.step()
    o2.load_state_dict(_safe_roundtrip(o1.state_dict()))
    with torch.no_grad():
        p2.copy_(p1)
    g = torch.randn_like(p1)
    p1.grad, p2.grad = g, g.clone()
    o1.step()
    o2.step()
    assert torch.equal(p1, p2)


def test_tampered_quant_state_dtype_is_refused_by_name():
    layer = bnb.nn.Linear4bit(64, 8, quant_type="nf4").to("cpu")
    sd = layer.state_dict()
    key = "weight.quant_state.bitsandbytes__nf4"
    meta = bnb.functional.unpack_tensor_to_dict(sd[key])
    meta["dtype"] = "__import__('os')"  # a name that must never be looked up on torch
    sd[key] = pack_dict_to_tensor(meta)
    fresh = bnb.nn.Linear4bit(64, 8, quant_type="nf4")
    with pytest.raises(ValueError, match="'dtype'"):
        fresh.load_state_dict(_safe_roundtrip(sd))


@pytest.mark.parametrize("key", ["blocksize", "nested_blocksize"])
def test_a_zero_block_size_is_refused_by_name(key):
    # spec §3.2: a block size must be > 0; refused at load, not by a division by zero later
    layer = bnb.nn.Linear4bit(64, 8, quant_type="nf4", compress_statistics=True).to("cpu")
    sd = layer.state_dict()
    blob = "weight.quant_state.bitsandbytes__nf4"
    meta = bnb.functional.unpack_tensor_to_dict(sd[blob])
    meta[key] = 0
    sd[blob] = pack_dict_to_tensor(meta)
    with pytest.raises(ValueError, match=f"'{key}'"):
        bnb.nn.Linear4bit(64, 8, quant_type="nf4").load_state_dict(_safe_roundtrip(sd))
