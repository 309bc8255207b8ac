"""bitsandbytes.nn.parametrize (spec §6.9): 4-bit parameters of any shape, their state dict (§7.1
keys) saved and loaded back, dtype conversions of the module, and the checks on what is replaced."""

from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn.utils.parametrize as P
from torch import nn

import bitsandbytes.functional as F
from bitsandbytes.nn.parametrize import replace_parameter_4bit, replace_parameter_4bit_prequantized


class Holder(nn.Module):
    def __init__(self, value: torch.Tensor) -> None:
        super().__init__()
        self.p = nn.Parameter(value)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.p.sum()


@pytest.mark.parametrize("shape", [(), (1,), (7,), (65,), (3, 5, 7), (0,)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_any_parameter_reads_back_its_dequantized_value(shape, dtype):
    torch.manual_seed(0)
    value = torch.randn(shape, dtype=dtype)
    m = Holder(value.clone())
    replace_parameter_4bit(m, "p", quant_type="fp4", blocksize=32)
    q, s = F.quantize_4bit(value, quant_type="fp4", blocksize=32)
    assert m.p.shape == value.shape and m.p.dtype == dtype
    assert torch.equal(m.p, F.dequantize_4bit(q, s))


def test_errors_name_the_parameter():
    m = nn.Linear(64, 4)
    m.register_buffer("buf", torch.ones(4))
    with pytest.raises(AttributeError, match="'nope'"):
        replace_parameter_4bit(m, "nope")
    with pytest.raises(TypeError, match="'buf' is not an instance of nn.Parameter"):
        replace_parameter_4bit(m, "buf")
    replace_parameter_4bit(m, "weight")
    with pytest.raises(TypeError, match="already parametrized"):
        replace_parameter_4bit(m, "weight")


def test_forward_gradients_and_the_cache_window():
    torch.manual_seed(0)
    lin = nn.Linear(64, 32)
    replace_parameter_4bit(lin, "weight", compress_statistics=True)
    x = torch.randn(4, 64, requires_grad=True)
    y = lin(x)
    w = lin.weight
    assert torch.equal(y, x @ w.t() + lin.bias)
    y.sum().backward()
    assert torch.equal(lin.bias.grad, torch.full((32,), 4.0))
    assert torch.allclose(x.grad, w.sum(0).expand(4, -1))
    assert lin.parametrizations.weight.original.grad is None
    assert P._cache_enabled == 0 and not P._cache
    other = nn.Linear(64, 32)
    replace_parameter_4bit(other, "weight")
    with torch.no_grad():  # new packed data and state: the next read is not a stale copy
        lin.parametrizations.weight.original.copy_(other.parametrizations.weight.original)
    lin.parametrizations.weight[0].quant_state = other.parametrizations.weight[0].quant_state
    assert torch.equal(lin(x), x @ other.weight.t() + lin.bias)


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(64, 64)
        self.b = nn.Linear(64, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.relu(self.a(x)))


def parametrized_block(seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    net = nn.Sequential(Block(), nn.Linear(8, 2))
    replace_parameter_4bit(net[0].a, "weight")
    replace_parameter_4bit(net[0].b, "weight", compress_statistics=True, quant_type="fp4")
    return net


def test_state_dict_keys():
    sd = parametrized_block(0).state_dict()
    assert [(k, v.dtype, tuple(v.shape)) for k, v in sd.items() if k.startswith("0.b.")][:-1] == [
        ("0.b.bias", torch.float32, (8,)),
        ("0.b.weight", torch.uint8, (256, 1)),
        ("0.b.weight.absmax", torch.uint8, (8,)),
        ("0.b.weight.quant_map", torch.float32, (16,)),
        ("0.b.weight.nested_absmax", torch.float32, (1,)),
        ("0.b.weight.nested_quant_map", torch.float32, (256,)),
    ]
    blob = sd["0.b.weight.quant_state.bitsandbytes__fp4"]
    assert blob.dtype == torch.uint8 and list(sd)[-3] == "0.b.weight.quant_state.bitsandbytes__fp4"
    assert json.loads(bytes(blob.tolist()))["shape"] == [8, 64]
    assert not any("parametrizations" in k for k in sd)


@pytest.mark.parametrize("assign", [False, True])
def test_state_dict_loads_back(assign):
    """The saved form (packed data under <name>, quant state under <name>.<key>) could not be
    loaded into a parametrized module: missing '...parametrizations.weight.original', unexpected
    'weight', 'weight.absmax', ..."""
    src, dst = parametrized_block(0), parametrized_block(1)
    x = torch.randn(3, 64)
    assert not torch.equal(src(x), dst(x))
    result = dst.load_state_dict(src.state_dict(), assign=assign)
    assert not result.missing_keys and not result.unexpected_keys
    assert torch.equal(dst(x), src(x))
    assert dst.state_dict().keys() == src.state_dict().keys()


def test_prequantized_round_trip_then_load():
    src = parametrized_block(0)
    sd = src.state_dict()
    torch.manual_seed(2)
    dst = nn.Sequential(Block(), nn.Linear(8, 2))
    for name in ("0.a", "0.b"):
        mod = dst.get_submodule(name)
        mod.weight = nn.Parameter(sd[name + ".weight"], requires_grad=False)
        stats = {k[len(name) + 8 :]: v for k, v in sd.items() if k.startswith(name + ".weight.")}
        replace_parameter_4bit_prequantized(mod, "weight", stats, "cpu")
    dst.load_state_dict(sd)
    x = torch.randn(3, 64)
    assert torch.equal(dst(x), src(x))


def test_float_state_dict_is_quantized_with_the_parametrization_settings():
    torch.manual_seed(0)
    dense = nn.Linear(64, 32)
    expected = copy.deepcopy(dense)
    replace_parameter_4bit(expected, "weight", quant_type="fp4", blocksize=128)
    m = nn.Linear(64, 32)
    replace_parameter_4bit(m, "weight", quant_type="fp4", blocksize=128)
    m.load_state_dict(dense.state_dict())
    assert torch.equal(m.weight, expected.weight)
    with pytest.raises(RuntimeError, match="size mismatch|shape"):
        m.load_state_dict(nn.Linear(64, 16).state_dict())


def test_state_dict_of_another_shape_is_refused():
    small = nn.Linear(32, 32)
    replace_parameter_4bit(small, "weight")
    m = nn.Linear(64, 16)  # the same number of packed bytes
    replace_parameter_4bit(m, "weight")
    with pytest.raises(RuntimeError, match=r"shape \(32, 32\), expected \(16, 64\)"):
        m.load_state_dict(small.state_dict())


@pytest.mark.parametrize("convert", ["half", "bf16"])
def test_module_dtype_conversion_reaches_the_dequantized_weight(convert):
    """model.half() / .to(torch.bfloat16) converted the bias but left the dequantized weight in
    float32: the forward failed with 'self and mat2 must have the same dtype'."""
    torch.manual_seed(0)
    lin = nn.Linear(64, 32)
    replace_parameter_4bit(lin, "weight")
    packed = lin.parametrizations.weight.original.detach().clone()
    w32 = lin.weight.detach()
    dtype = torch.float16 if convert == "half" else torch.bfloat16
    lin = lin.half() if convert == "half" else lin.to(dtype)
    assert torch.equal(lin.parametrizations.weight.original, packed)  # the packed bytes untouched
    assert lin.weight.dtype == dtype and torch.equal(lin.weight, w32.to(dtype))
    x = torch.randn(2, 64, dtype=dtype)
    assert torch.equal(lin(x), nn.functional.linear(x, w32.to(dtype), lin.bias))


def test_prequantized_checks_the_packed_size():
    """Packed data of the wrong size was accepted and failed only at the first read of the
    parameter; it is refused when it is registered, naming the parameter."""
    q, s = F.quantize_4bit(torch.randn(32, 64), quant_type="nf4")
    with pytest.raises(ValueError, match=r"'weight' holds 8192 bytes .* takes 1024"):
        replace_parameter_4bit_prequantized(nn.Linear(64, 32), "weight", s.as_dict(packed=True), "cpu")
    half = nn.Linear(64, 32)
    half.weight = nn.Parameter(q[:512], requires_grad=False)
    with pytest.raises(ValueError, match=r"'weight' holds 512 bytes .* takes 1024"):
        replace_parameter_4bit_prequantized(half, "weight", s.as_dict(packed=True), "cpu")
    ok = nn.Linear(64, 32)
    ok.weight = nn.Parameter(q.view(-1).view(torch.bfloat16), requires_grad=False)  # any storage dtype
    replace_parameter_4bit_prequantized(ok, "weight", s.as_dict(packed=True), "cpu")
    assert torch.equal(ok.weight, F.dequantize_4bit(q, s))


def test_prequantized_odd_sized_parameter_takes_the_padded_byte():
    """An odd number of values packs into one more byte (the last one's partner encodes 0)."""
    torch.manual_seed(0)
    w = torch.randn(3, 5)
    q, s = F.quantize_4bit(w, quant_type="nf4")
    assert q.numel() == 8
    lin = nn.Linear(5, 3)
    lin.weight = nn.Parameter(q, requires_grad=False)
    replace_parameter_4bit_prequantized(lin, "weight", s.as_dict(packed=True), "cpu")
    assert lin.weight.shape == (3, 5) and torch.equal(lin.weight, F.dequantize_4bit(q, s))
    short = nn.Linear(5, 3)
    short.weight = nn.Parameter(q[:7], requires_grad=False)
    with pytest.raises(ValueError, match=r"'weight' holds 7 bytes .* takes 8"):
        replace_parameter_4bit_prequantized(short, "weight", s.as_dict(packed=True), "cpu")


@pytest.mark.parametrize("storage", [torch.bfloat16, torch.float32])
def test_dtype_conversion_leaves_float_packed_storage_alone(storage):
    """Packed data in a float quant_storage was converted by module.half() like a float weight:
    its bytes changed and the weight read back off by up to 4.06."""
    torch.manual_seed(0)
    q, s = F.quantize_4bit(torch.randn(32, 64), quant_storage=storage)
    lin = nn.Linear(64, 32)
    lin.weight = nn.Parameter(q, requires_grad=False)
    replace_parameter_4bit_prequantized(lin, "weight", s.as_dict(packed=True), "cpu")
    w32 = lin.weight.detach().clone()
    lin.half()
    assert lin.parametrizations.weight.original.dtype == storage
    assert torch.equal(lin.parametrizations.weight.original.detach().view(torch.uint8), q.view(torch.uint8))
    assert torch.equal(lin.weight, w32.half())
    lin.float()
    assert torch.equal(lin.weight, w32)
