"""Valid-input semantics of the functional API helpers and ``bitsandbytes.utils`` that the
established release defines by behaviour: outlier tracing, ``replace_linear``'s post-processing
hook, the deprecated int8 GEMMs and ``QuantState`` equality."""

from __future__ import annotations

import copy
import logging
import warnings

import pytest
import torch

import bitsandbytes as bnb
import bitsandbytes.functional as F
from bitsandbytes import utils


@pytest.fixture
def tracer():
    """The OutlierTracer singleton, its hooks removed and its state dropped afterwards."""
    t = utils.OutlierTracer.get_instance()
    yield t
    for hook in getattr(t, "hooks", []):
        hook.remove()
    t.__dict__.clear()


def _three_layers() -> torch.nn.Sequential:
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 48), torch.nn.Linear(48, 16)
    )
    with torch.no_grad():
        model[2].weight[:, 11] *= 40.0  # input feature 11 of the second linear layer is an outlier
        model[3].weight[:, 30] *= 40.0  # and input feature 30 of the third
    return model


def test_outlier_tracer_records_every_linear_layer(tracer):
    model = _three_layers()
    tracer.initialize(model)
    x = torch.randn(2, 5, 32)
    x[..., 7] = 9.0  # magnitude above 6: an outlier feature of the first layer's input
    model(x)
    # the first layer: features with |x| > 6, plus rows whose std is a 3-sigma outlier (none here)
    assert tracer.get_outliers(model[0].weight).tolist() == [7]
    # every later layer: the outlier input dims of its own weight
    assert tracer.get_outliers(model[2].weight).tolist() == [11]
    assert tracer.get_outliers(model[3].weight).tolist() == [30]
    assert torch.equal(tracer.get_outliers(model[3].weight), utils.find_outlier_dims(model[3].weight))


def test_outlier_tracer_hooks_stay_until_a_weight_is_seen_again(tracer):
    model = _three_layers()
    tracer.initialize(model)
    x = torch.randn(3, 32)
    model(x)
    assert [len(model[i]._forward_pre_hooks) for i in (0, 2, 3)] == [1, 1, 1]
    model(x)  # the second forward removes them
    assert [len(model[i]._forward_pre_hooks) for i in (0, 2, 3)] == [0, 0, 0]
    assert tracer.get_outliers(model[2].weight).tolist() == [11]


def test_outlier_tracer_uninitialized_warns_on_the_logger(caplog):
    fresh = utils.OutlierTracer.__new__(utils.OutlierTracer)
    with caplog.at_level(logging.WARNING, logger="bitsandbytes.utils"):
        assert fresh.get_outliers(torch.zeros(2, 2)) is None
    assert caplog.messages == ["Outlier tracer is not initialized..."]


def test_outlier_tracer_weight_identity_gives_no_storage_warning(monkeypatch):
    # torch warns about TypedStorage once per process: make every use warn for this test
    monkeypatch.setattr(torch.storage, "_always_warn_typed_storage_removal", True)
    t = utils.OutlierTracer.__new__(utils.OutlierTracer)
    w = torch.nn.Parameter(torch.randn(4, 4))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert t.get_hvalue(w) == w.untyped_storage().data_ptr()


def test_replace_linear_calls_post_processing_on_the_replaced_module():
    calls = []

    class Tagged(torch.nn.Linear):
        def finish(self, module):
            calls.append((self, module))

    old = Tagged(8, 4)
    model = torch.nn.Sequential(old, torch.nn.Sequential(torch.nn.Linear(4, 4)))
    utils.replace_linear(model, lambda i, o, b: torch.nn.Linear(i, o, b), post_processing_function="finish")
    assert calls == [(old, old)]  # the old module's method, given the old module
    assert type(model[0]) is torch.nn.Linear and model[0] is not old


def test_replace_linear_skips_post_processing_the_old_module_lacks():
    class WithHook(torch.nn.Linear):
        def finish(self, module):  # pragma: no cover - must not be called
            raise AssertionError("the replacement's method was called")

    model = torch.nn.Sequential(torch.nn.Linear(8, 4))
    utils.replace_linear(model, lambda i, o, b: WithHook(i, o, b), post_processing_function="finish")
    assert isinstance(model[0], WithHook)


def test_replace_linear_copies_weights_at_every_depth_and_skips_by_name():
    """With ``copy_weights`` every replacement, nested ones included, holds the replaced layer's
    own weight and bias Parameters; a child named in ``skip_modules`` stays, at any depth."""
    inner, top, head = torch.nn.Linear(8, 6), torch.nn.Linear(6, 4, bias=False), torch.nn.Linear(4, 2)
    model = torch.nn.Sequential()
    model.add_module("block", torch.nn.Sequential(inner))
    model.add_module("out", top)
    model.add_module("lm_head", head)
    nested_head = torch.nn.Linear(2, 2)
    model.block.add_module("lm_head", nested_head)

    class Replacement(torch.nn.Linear):
        pass

    utils.replace_linear(model, lambda i, o, b: Replacement(i, o, b), copy_weights=True)
    assert type(model.block[0]) is Replacement and type(model.out) is Replacement
    assert model.block[0].weight is inner.weight and model.block[0].bias is inner.bias
    assert model.out.weight is top.weight and model.out.bias is None
    assert model.lm_head is head and model.block.lm_head is nested_head


def test_outlier_tracer_first_layer_magnitude_is_strictly_above_six(tracer):
    model = _three_layers()
    tracer.initialize(model)
    x = torch.zeros(2, 5, 32)
    x[..., 3] = 6.0  # at the threshold: not an outlier
    x[..., 9] = -6.5  # above it in magnitude
    model(x)
    assert tracer.get_outliers(model[0].weight).tolist() == [9]


@pytest.mark.parametrize(("transposed_A", "transposed_B"), [(False, False), (True, False), (False, True)])
def test_igemm_multiplies_two_3d_operands_batch_by_batch(transposed_A, transposed_B):
    g = torch.Generator().manual_seed(0)
    A = torch.randint(-127, 128, (3, 5, 16), generator=g, dtype=torch.int8)
    B = torch.randint(-127, 128, (3, 16, 7), generator=g, dtype=torch.int8)
    a = A.transpose(1, 2).contiguous() if transposed_A else A
    b = B.transpose(1, 2).contiguous() if transposed_B else B
    with pytest.warns(FutureWarning):
        C = F.igemm(a, b, transposed_A=transposed_A, transposed_B=transposed_B)
    assert C.dtype == torch.int32
    assert torch.equal(C, A.int() @ B.int())


def test_quant_state_equality_compares_offsets_exactly():
    q, state = F.quantize_4bit(torch.randn(64, 64), quant_type="nf4", compress_statistics=True)
    same = copy.deepcopy(state)
    assert state == same
    nudged = copy.deepcopy(state)
    nudged.offset = nudged.offset + 1e-6  # absmax and code get atol=1e-6; the offset none
    assert state != nudged
    assert torch.equal(F.dequantize_4bit(q, state), F.dequantize_4bit(q, same))


def test_outlier_aware_linear_without_a_tracer_warns_on_the_logger(caplog, capsys):
    """An OutlierAwareLinear used before OutlierTracer.initialize says so on the logger (it printed)."""
    from bitsandbytes.utils import OutlierTracer

    class Identity(bnb.nn.OutlierAwareLinear):
        def quantize_weight(self, w, outlier_idx):
            return w

        def forward_with_outliers(self, x, outlier_idx):
            return torch.nn.functional.linear(x, self.weight, self.bias)

    tracer = OutlierTracer.get_instance()
    was = tracer.__dict__.copy()
    tracer.initialized = False
    try:
        layer = Identity(8, 4)
        x = torch.randn(2, 8)
        with caplog.at_level(logging.WARNING, logger="bitsandbytes.nn.modules"):
            out = layer(x)
    finally:
        tracer.__dict__.clear()
        tracer.__dict__.update(was)
    assert torch.equal(out, torch.nn.functional.linear(x, layer.weight, layer.bias))
    assert any("OutlierTracer.initialize" in r.getMessage() for r in caplog.records)
    assert "OutlierTracer" not in capsys.readouterr().out
