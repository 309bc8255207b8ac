"""Module behaviour that code written for the established release relies on: tied weights in
Linear8bitLt, and the 4-bit parametrization's cache hooks under activation checkpointing."""

from __future__ import annotations

import pytest
import torch
import torch.nn.utils.parametrize as P
from torch import nn
from torch.utils.checkpoint import checkpoint

import bitsandbytes as bnb
from bitsandbytes.nn.parametrize import (
    _disable_parametrization_cache,
    _enable_parametrization_cache,
    _register_parametrization_hooks,
    replace_parameter_4bit,
)


def tied_linear8bit() -> bnb.nn.Linear8bitLt:
    linear = bnb.nn.Linear8bitLt(8, 8, bias=False, has_fp16_weights=False)
    linear.weight = nn.Parameter(torch.randn_like(linear.weight))  # tied: a plain parameter
    return linear


def test_linear8bitlt_tied_weight_state_dict_has_no_int8_keys():
    assert list(tied_linear8bit().state_dict()) == ["weight"]


def test_linear8bitlt_tied_weight_load_raises_the_established_error():
    linear = tied_linear8bit()
    state_dict = {**linear.state_dict(), "SCB": torch.ones(8)}
    with pytest.raises(RuntimeError, match="Loading a quantized checkpoint into non-quantized Linear8bitLt"):
        linear.load_state_dict(state_dict, strict=False)


def test_linear8bitlt_quantized_load_still_copies_scb():
    src = bnb.nn.Linear8bitLt(8, 8, bias=False, has_fp16_weights=False).to("cpu")
    dst = bnb.nn.Linear8bitLt(8, 8, bias=False, has_fp16_weights=False).to("cpu")
    dst.load_state_dict(src.state_dict())
    assert torch.equal(dst.weight.SCB, src.weight.SCB) and torch.equal(dst.weight.data, src.weight.data)


@pytest.fixture
def clean_cache_counter():
    P._cache_enabled = 0
    P._cache = {}
    yield
    P._cache_enabled = 0
    P._cache = {}


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(16, 32)
        self.tail = nn.Linear(32, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.tail(torch.relu(self.head(x)))


@pytest.mark.usefixtures("clean_cache_counter")
def test_cache_counter_stays_balanced_under_checkpoint_early_stop():
    """Non-reentrant checkpointing stops its recomputation before ``tail``'s forward returns
    (``tail`` is the last op; its output is not needed for the backward): the closing hook must
    still run, every step."""
    torch.manual_seed(0)
    net = Net()
    replace_parameter_4bit(net.tail, "weight")
    replace_parameter_4bit(net.head, "weight")
    x = torch.randn(4, 16, requires_grad=True)
    for _ in range(3):
        checkpoint(net, x, use_reentrant=False).sum().backward()
        assert P._cache_enabled == 0 and P._cache == {}
    assert x.grad is not None and x.grad.abs().sum() > 0


@pytest.mark.usefixtures("clean_cache_counter")
def test_cache_is_used_within_one_forward():
    net = Net()
    replace_parameter_4bit(net.tail, "weight")
    seen = []
    net.tail.register_forward_hook(lambda m, i, o: seen.append((P._cache_enabled, len(P._cache))), prepend=True)
    net(torch.randn(2, 16))
    assert seen == [(1, 1)]  # inside tail's forward: cache open, the dequantized weight cached once
    assert P._cache_enabled == 0 and P._cache == {}


@pytest.mark.usefixtures("clean_cache_counter")
def test_disable_hook_never_goes_negative():
    _disable_parametrization_cache(nn.Identity(), (), None)
    assert P._cache_enabled == 0
    _enable_parametrization_cache(nn.Identity(), ())
    _enable_parametrization_cache(nn.Identity(), ())
    _disable_parametrization_cache(nn.Identity(), (), None)
    assert P._cache_enabled == 1


@pytest.mark.usefixtures("clean_cache_counter")
def test_register_hooks_on_a_parametrized_module_and_raising_forward():
    """The public-by-use helper registers the same hooks on a module parametrized by hand; a
    forward that raises still closes the cache window."""
    torch.manual_seed(0)
    module = nn.Linear(8, 8)
    replace_parameter_4bit(module, "weight")
    other = nn.Linear(8, 8)
    P.register_parametrization(other, "weight", module.parametrizations.weight[0], unsafe=True)
    other.parametrizations.weight.original = nn.Parameter(
        module.parametrizations.weight.original.data.clone(), requires_grad=False
    )
    _register_parametrization_hooks(other, "weight")
    sd = other.state_dict()
    assert "weight" in sd and "weight.quant_state.bitsandbytes__nf4" in sd and "weight.absmax" in sd
    with pytest.raises(RuntimeError):
        other(torch.randn(2, 3))  # wrong width
    assert P._cache_enabled == 0


@pytest.mark.parametrize("module", ["Linear8bitLt", "Linear4bit", "LinearNF4"])
def test_forward_casts_the_bias_in_place_as_the_established_release(module):
    """The established forward gives the bias parameter the compute dtype, in place; its own test
    suite checks ``bias.dtype`` after a forward, so ours does the same (same parameter object)."""
    layer = getattr(bnb.nn, module)(32, 64).to("cpu")
    bias = layer.bias
    assert bias.dtype == torch.float32
    out = layer(torch.randn(16, 8, 32, dtype=torch.float16))
    assert layer.bias is bias and bias.dtype == torch.float16 and out.dtype == torch.float16
