"""The established release's warnings, with its categories and wording (users filter by them):
slow 4-bit configurations on the ``bitsandbytes.nn.modules`` logger, a 4-bit weight in [K, N]
orientation as a DeprecationWarning."""

from __future__ import annotations

import logging
import warnings

import pytest
import torch

import bitsandbytes as bnb
import bitsandbytes.functional as F

SLOW = "Input type into Linear4bit is torch.float16, but bnb_4bit_compute_dtype=torch.float32 (default). "


@pytest.mark.parametrize(
    "rows,ending",
    [(1, "This will lead to slow inference."), (10, "This will lead to slow inference or training speed.")],
)
def test_linear4bit_fp16_input_with_fp32_compute(caplog, rows, ending):
    net = torch.nn.Sequential(*[bnb.nn.Linear4bit(64, 64, quant_type="nf4") for _ in range(3)]).to("cpu")
    with caplog.at_level(logging.WARNING, logger="bitsandbytes.nn.modules"):
        out = net(torch.rand(rows, 64, dtype=torch.float16))
    assert out.dtype == torch.float16
    assert caplog.messages == [SLOW + ending] * 3  # once per layer, on its first call
    assert all(r.name == "bitsandbytes.nn.modules" for r in caplog.records)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="bitsandbytes.nn.modules"):
        net(torch.rand(rows, 64, dtype=torch.float16))
    assert caplog.messages == []


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_linear4bit_fp32_or_bf16_input_is_quiet(caplog, dtype):
    layer = bnb.nn.Linear4bit(64, 64).to("cpu")
    with caplog.at_level(logging.WARNING, logger="bitsandbytes"):
        layer(torch.rand(4, 64, dtype=dtype))
    assert caplog.messages == [] and layer.compute_dtype == dtype


@pytest.mark.parametrize("cls", [bnb.nn.Embedding4bit, bnb.nn.EmbeddingNF4, bnb.nn.EmbeddingFP4])
def test_embedding4bit_dimension_not_a_multiple_of_the_block(caplog, cls):
    with caplog.at_level(logging.WARNING, logger="bitsandbytes.nn.modules"):
        cls(128, 96)
    assert caplog.messages == ["Embedding size 96 is not divisible by block size 64. This will lead to slow inference."]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="bitsandbytes.nn.modules"):
        cls(128, 128)
    assert caplog.messages == []


def test_matmul_4bit_weight_in_k_n_orientation():
    w = torch.randn(48, 32)  # [K, N]: quantized the wrong way round
    packed, state = F.quantize_4bit(w, quant_type="nf4")
    A = torch.randn(3, 48)
    with pytest.warns(
        DeprecationWarning, match=r"quant_state\.shape=\[48, 32\]\).*Re-quantize from the weight in \[N, K\]"
    ):
        out = bnb.matmul_4bit(A, packed, state)
    torch.testing.assert_close(out, A @ F.dequantize_4bit(packed, state))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        bnb.matmul_4bit(torch.randn(3, 32), packed, state)  # the [N, K] use of the same state: no warning
