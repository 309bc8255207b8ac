"""Embedding layers on valid input: the quantized tables give the established release's numbers."""

from __future__ import annotations

import torch

import bitsandbytes as bnb
import bitsandbytes.functional as F


def test_embedding8bit_rows_are_codes_times_scale_over_127():
    dtype = torch.float32  # f16 / bf16 outputs hide the f32 rounding difference
    torch.manual_seed(0)
    weight = torch.randn(100, 64, dtype=dtype)
    emb = bnb.nn.Embedding8bit(100, 64, dtype=dtype)
    emb.load_state_dict({"weight": weight})
    emb = emb.to("cpu")
    CB, SCB, _ = F.int8_vectorwise_quant(weight.to(torch.float16))  # the weight is quantized from f16
    assert torch.equal(emb.weight.data, CB) and torch.equal(emb.weight.SCB, SCB)
    idx = torch.tensor([[0, 5, 99], [5, 42, 7]])
    out = emb(idx)
    # the established release: int8 codes * (scale / 127) in f32, then the layer's dtype;
    # (codes * scale) / 127 rounds differently in f32
    expected = (CB[idx].float() * (SCB[idx].unsqueeze(-1) / 127.0)).to(dtype)
    assert out.dtype == dtype and out.shape == (2, 3, 64)
    assert torch.equal(out, expected)
