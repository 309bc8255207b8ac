"""Embedding layers (spec §6.5): the dense ones against torch's nn.Embedding (+ LayerNorm), the
32-bit optimizer override, and the quantized tables against dequantize-then-lookup for every index
shape, plus loading their float table (in place, or assigned to a table built on meta)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import bitsandbytes as bnb
import bitsandbytes.functional as F

QUANTIZED = [bnb.nn.Embedding8bit, bnb.nn.EmbeddingNF4, bnb.nn.EmbeddingFP4]


def dequantized_table(m: nn.Module) -> torch.Tensor:
    """The table a quantized embedding decodes, in its output dtype."""
    if isinstance(m, bnb.nn.Embedding8bit):
        return (m.weight.data.float() * (m.weight.SCB.unsqueeze(1) / 127.0)).to(m.dtype)
    qs = m.weight.quant_state
    return F.dequantize_4bit(m.weight.data, qs).view(m.num_embeddings, m.embedding_dim).to(m.dtype)


def quantized(cls: type, table: torch.Tensor, **kwargs) -> nn.Module:
    m = cls(*table.shape, dtype=table.dtype, **kwargs)
    m.load_state_dict({"weight": table})
    return m.to("cpu")


@pytest.mark.parametrize("cls", [bnb.nn.Embedding, bnb.nn.StableEmbedding])
def test_dense_embeddings_match_torch(cls):
    """Forward and gradients equal nn.Embedding (+ a LayerNorm done by hand), with a negative
    padding_idx, max_norm renormalising in place and scale_grad_by_freq."""
    torch.manual_seed(0)
    kwargs = dict(padding_idx=-2, max_norm=1.5, scale_grad_by_freq=True)
    m = cls(20, 8, **kwargs)
    assert m.padding_idx == 18 and torch.equal(m.weight[18], torch.zeros(8))
    with torch.no_grad():
        m.weight.mul_(3)
    ref = nn.Embedding(20, 8, **kwargs)
    ref.weight.data.copy_(m.weight.data)
    norm = nn.LayerNorm(8)
    if cls is bnb.nn.StableEmbedding:
        norm.load_state_dict(m.norm.state_dict())
    idx = torch.tensor([[1, 18, 5], [5, 5, 19]])
    out = m(idx)
    expected = norm(ref(idx)) if cls is bnb.nn.StableEmbedding else ref(idx)
    assert torch.equal(out, expected)
    assert torch.equal(m.weight, ref.weight)  # the looked-up rows renormalised in place, as torch does
    g = torch.randn_like(out)
    out.backward(g)
    expected.backward(g)
    assert torch.equal(m.weight.grad, ref.weight.grad)
    assert torch.equal(m.weight.grad[18], torch.zeros(8))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_stable_embedding_normalises_in_the_default_dtype(dtype):
    torch.manual_seed(0)
    m = bnb.nn.StableEmbedding(20, 8, dtype=dtype)
    assert m.weight.dtype == dtype and m.norm.weight.dtype == torch.float32
    idx = torch.tensor([[0, 3], [19, 3]])
    out = m(idx)
    expected = nn.functional.layer_norm(m.weight.detach()[idx].float(), (8,), m.norm.weight, m.norm.bias).to(dtype)
    assert out.dtype == dtype and torch.equal(out, expected)


@pytest.mark.parametrize("cls", [bnb.nn.Embedding, bnb.nn.StableEmbedding])
def test_eight_bit_optimizer_keeps_the_embedding_in_32_bit(cls):
    torch.manual_seed(0)
    model = nn.Sequential(cls(600, 16), nn.Linear(16, 600))
    opt = bnb.optim.Adam8bit(model.parameters(), lr=1e-3)
    model(torch.tensor([1, 2, 3])).sum().backward()
    opt.step()
    assert opt.state[model[0].weight]["state1"].dtype == torch.float32
    assert opt.state[model[1].weight]["state1"].dtype == torch.uint8


INDICES = {
    "0-d": torch.tensor(7),
    "1-d": torch.tensor([1, 2, 49]),
    "3-d": torch.arange(24).reshape(2, 3, 4) * 2 % 50,
    "empty": torch.empty(3, 0, dtype=torch.long),
    "int32": torch.tensor([[1, 2], [3, 49]], dtype=torch.int32),
    "strided": (torch.arange(24).reshape(4, 6) * 7 % 50).t(),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(
    "cls, kwargs",
    [
        (bnb.nn.Embedding8bit, {}),
        (bnb.nn.EmbeddingNF4, {}),
        (bnb.nn.EmbeddingFP4, {"quant_storage": torch.bfloat16}),
        (bnb.nn.Embedding4bit, {"quant_type": "nf4", "quant_storage": torch.float32}),
    ],
)
def test_quantized_lookup_is_dequantize_then_lookup(cls, kwargs, dtype):
    torch.manual_seed(0)
    m = quantized(cls, torch.randn(50, 128, dtype=dtype), **kwargs)
    table = dequantized_table(m)
    for name, idx in INDICES.items():
        out = m(idx)
        assert out.dtype == dtype, name
        assert torch.equal(out, nn.functional.embedding(idx, table)), name
    for bad in (torch.tensor([50]), torch.tensor([-1])):
        with pytest.raises(IndexError, match="index out of range"):
            m(bad)


def test_embedding_dim_off_the_blocksize_decodes_the_whole_table(caplog):
    torch.manual_seed(0)
    with caplog.at_level("WARNING", logger="bitsandbytes.nn.modules"):
        m = quantized(bnb.nn.EmbeddingNF4, torch.randn(30, 96))
    assert "not divisible by block size 64" in caplog.text
    idx = torch.tensor([[0, 29], [7, 7]])
    assert torch.equal(m(idx), nn.functional.embedding(idx, dequantized_table(m)))


@pytest.mark.parametrize("cls", QUANTIZED)
def test_quantized_tables_copy_and_refuse_to_save(cls):
    torch.manual_seed(0)
    m = quantized(cls, torch.randn(40, 64))
    idx = torch.tensor([[0, 3, 39]])
    assert torch.equal(copy.deepcopy(m)(idx), m(idx))
    with pytest.raises(NotImplementedError, match="Saving Embedding(8|4)bit module is not implemented"):
        m.state_dict()


def test_embedding8bit_refuses_a_float_table_once_quantized():
    """Copying a float table into the int8 codes truncated it (row 0 read back 0.0177 where the
    table held 1.59) and kept the old row scales; it is refused, as Linear8bitLt refuses it."""
    torch.manual_seed(0)
    m = quantized(bnb.nn.Embedding8bit, torch.randn(40, 64))
    codes, before = m.weight.data.clone(), m(torch.arange(40))
    with pytest.raises(RuntimeError, match="already quantized"):
        m.load_state_dict({"weight": torch.randn(40, 64)})
    assert torch.equal(m.weight.data, codes) and torch.equal(m(torch.arange(40)), before)


@pytest.mark.parametrize("cls", QUANTIZED)
def test_table_built_on_meta_and_assigned_is_quantized_on_the_move(cls):
    """load_state_dict(assign=True) on a table built on meta left a plain Parameter, which the
    move to a device did not quantize: the lookup then failed as 'not quantized'."""
    torch.manual_seed(0)
    table = torch.randn(40, 64)
    with torch.device("meta"):
        m = cls(40, 64)
    m.load_state_dict({"weight": table}, assign=True)
    m = m.to("cpu")
    assert type(m.weight) is type(quantized(cls, table).weight)
    idx = torch.tensor([[0, 3, 39]])
    assert torch.equal(m(idx), quantized(cls, table)(idx))
