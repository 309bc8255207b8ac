"""The kept inference runners of Linear4bit and Linear8bitLt (a platform's prepared gemm_4bit and
LLM.int8() inference, bitsandbytes._direct.prepare): when they are used, that they give the general
path's result bit for bit, and that every change to what they were prepared with sends the call
back to the general path."""

from __future__ import annotations

import copy
import io

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import bitsandbytes
import bitsandbytes.nn.linear8bit as l8
from bitsandbytes import _direct
from bitsandbytes.nn._params import DECODE_PLAN_BUILDS_KEY, DECODE_PLAN_KEY, weight_caches

prepared = pytest.importorskip("bitsandbytes_cpu.prepared", reason="the CPU wheel offers the prepared runner")
pytestmark = pytest.mark.skipif(
    ("gemm_4bit", "cpu") not in bitsandbytes._LOADED.kernels, reason="no platform kernel serves the CPU"
)


def _layer(k=128, n=64, bias=True, dtype=torch.bfloat16, seed=0, nested=False, quant_type="nf4"):
    gen = torch.Generator().manual_seed(seed)
    layer = bitsandbytes.nn.Linear4bit(
        k, n, bias=bias, compute_dtype=dtype, quant_type=quant_type, compress_statistics=nested
    )
    layer.weight.data = torch.randn(n, k, generator=gen) * 0.1
    if bias:
        layer.bias.data = torch.randn(n, generator=gen)
    return layer.to("cpu")


def _general(layer, x):
    """The layer's result through the general path only (the kept runner set aside)."""
    plan = weight_caches(layer.weight).pop(DECODE_PLAN_KEY, None)
    builds = weight_caches(layer.weight).get(DECODE_PLAN_BUILDS_KEY, 0)
    weight_caches(layer.weight)[DECODE_PLAN_BUILDS_KEY] = 1 << 30  # keeps none for this call
    try:
        return layer(x)
    finally:
        weight_caches(layer.weight)[DECODE_PLAN_BUILDS_KEY] = builds
        if plan is not None:
            weight_caches(layer.weight)[DECODE_PLAN_KEY] = plan


class _Count:
    """Wraps the kept runner of ``layer`` and counts the calls that it served."""

    def __init__(self, layer):
        if isinstance(layer, bitsandbytes.nn.Linear8bitLt):
            holder, key = layer.__dict__, l8._INT8_PLAN_KEY
        else:
            holder, key = weight_caches(layer.weight), DECODE_PLAN_KEY
        plan = holder[key]
        self.served = 0

        def run(x):
            out = plan[-1](x)
            self.served += out is not None
            return out

        holder[key] = (*plan[:-1], run)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("shape", [(128,), (1, 128), (1, 1, 128), (2, 2, 128), (4, 128)])
@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
def test_the_runner_gives_the_general_result_bit_for_bit(dtype, bias, shape, quant_type):
    layer = _layer(bias=bias, dtype=dtype, quant_type=quant_type)
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(1)).to(dtype)
    with torch.no_grad():
        first = layer(x)  # general path; keeps the runner
        assert DECODE_PLAN_KEY in weight_caches(layer.weight)
        count = _Count(layer)
        y = layer(x)
        assert count.served == 1
        assert y.shape == first.shape == (*shape[:-1], 64) and y.dtype == dtype
        assert torch.equal(y, first)
        assert torch.equal(y, _general(layer, x))
        ref = (
            x.float() @ bitsandbytes.functional.dequantize_4bit(layer.weight.data, layer.weight.quant_state).float().t()
        )
        if bias:
            ref = ref + layer.bias.float()
        torch.testing.assert_close(y.float(), ref, rtol=0.02, atol=0.02)


@pytest.mark.parametrize("k,rows,served", [(128, 7, 1), (128, 8, 0), (192, 4, 1), (192, 5, 0)])
def test_the_runner_takes_the_rows_of_the_fused_kernel(k, rows, served):
    """Up to amx.fused_rows: 7 rows at block size 64 with k a multiple of 128 (the fixed-point
    GEMV), 4 elsewhere; more rows go the general way, with the same result."""
    layer = _layer(k=k)
    with torch.no_grad():
        layer(torch.randn(1, k).bfloat16())
    count = _Count(layer)
    x = torch.randn(rows, k).bfloat16()
    with torch.no_grad():
        y = layer(x)
        ref = _general(layer, x)
    assert count.served == served
    assert torch.equal(y, ref)


@pytest.mark.parametrize(
    "case", ["rows_above_the_limit", "other_dtype", "non_contiguous", "requires_grad", "subclass", "empty"]
)
def test_inputs_the_runner_does_not_take_go_the_general_way(case):
    layer = _layer()
    x = torch.randn(1, 128).bfloat16()
    with torch.no_grad():
        layer(x)
    count = _Count(layer)
    grad = False
    if case == "rows_above_the_limit":
        x = torch.randn(prepared.kernels.FUSED_MAX_ROWS + 1, 128).bfloat16()  # above every runner's limit
    elif case == "other_dtype":
        x = torch.randn(1, 128)  # converted to the compute dtype by the general path
    elif case == "non_contiguous":
        x = torch.randn(128, 2).bfloat16().t()
    elif case == "requires_grad":
        x = x.clone().requires_grad_()
        grad = True
    elif case == "subclass":
        x = torch.nn.Parameter(x, requires_grad=False)
    elif case == "empty":
        x = torch.randn(0, 128).bfloat16()
    with torch.set_grad_enabled(grad):
        y = layer(x)
        ref = _general(layer, x)
    assert count.served == 0
    assert torch.equal(y, ref)
    if case == "requires_grad":
        y.float().sum().backward()
        assert x.grad is not None and x.grad.shape == x.shape


def test_a_wrong_input_still_gets_the_general_error():
    layer = _layer()
    with torch.no_grad():
        layer(torch.randn(1, 128).bfloat16())
        with pytest.raises(ValueError, match="in_features=128"):
            layer(torch.randn(1, 96).bfloat16())


@pytest.mark.parametrize(
    "change", ["weight_data", "weight_object", "quant_state", "absmax_object", "absmax_data", "bias_data",
               "bias_dtype", "bias_object", "bias_removed", "compute_dtype", "generation"],
)  # fmt: skip
def test_every_change_to_the_prepared_weight_is_seen(change):
    layer, other = _layer(seed=0), _layer(seed=1)
    x = torch.randn(1, 128, generator=torch.Generator().manual_seed(2)).bfloat16()
    with torch.no_grad():
        layer(x)
        before = layer(x)
        count = _Count(layer)
        if change == "weight_data":
            layer.weight.data = other.weight.data.clone()
            layer.weight.quant_state = other.weight.quant_state
        elif change == "weight_object":
            layer.weight = other.weight
        elif change == "quant_state":  # same packed data, another absmax
            qs = copy.deepcopy(layer.weight.quant_state)
            qs.absmax = qs.absmax * 2
            layer.weight.quant_state = qs
        elif change == "absmax_object":
            layer.weight.quant_state.absmax = layer.weight.quant_state.absmax * 2
        elif change == "absmax_data":
            layer.weight.quant_state.absmax.data = layer.weight.quant_state.absmax * 2
        elif change == "bias_data":
            layer.bias.data = layer.bias.data + 1
        elif change == "bias_dtype":
            layer.bias.data = layer.bias.data.float() + 1
        elif change == "bias_object":
            layer.bias = torch.nn.Parameter(layer.bias.data + 1)
        elif change == "bias_removed":
            layer.bias = None
        elif change == "compute_dtype":
            layer.compute_dtype = torch.float32
        elif change == "generation":  # a kernel bound or unbound since
            _direct._changed()
        after = layer(x)
        assert count.served == 0
        assert torch.equal(after, _general(layer, x))
        if change != "generation":
            assert not torch.equal(after.float(), before.float())
        # A fresh runner for the changed layer (for inputs in its compute dtype), equal to the general path.
        x = x.to(layer.compute_dtype)
        after = _general(layer, x)
        again = _Count(layer)
        assert torch.equal(layer(x), after)
        assert again.served == 1


def test_in_place_changes_are_read():
    """The runner reads the weight, absmax and bias through their memory: in-place updates (a
    load_state_dict into the layer) are used by the next call."""
    layer, other = _layer(seed=0), _layer(seed=1)
    x = torch.randn(1, 128).bfloat16()
    with torch.no_grad():
        layer(x)
        count = _Count(layer)
        layer.weight.data.copy_(other.weight.data)
        layer.weight.quant_state.absmax.copy_(other.weight.quant_state.absmax)
        layer.bias.copy_(other.bias.to(layer.bias.dtype))
        assert torch.equal(layer(x), other(x))
        assert count.served == 1


def test_modes_and_the_profiler_see_the_op():
    layer = _layer()
    x = torch.randn(1, 128).bfloat16()

    class Ops(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.ops.append(str(func))
            return func(*args, **(kwargs or {}))

    with torch.no_grad():
        layer(x)
        count = _Count(layer)
        with Ops() as mode:
            layer(x)
        assert any("gemm_4bit" in op for op in mode.ops)
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            layer(x)
        assert "bitsandbytes::gemm_4bit" in {e.key for e in prof.key_averages()}
        assert count.served == 0


@pytest.mark.parametrize("bias", [False, True])
def test_a_nested_absmax_is_resolved_once_and_results_match(bias):
    layer = _layer(k=512, n=128, nested=True, bias=bias)  # 1024 blocks of 64: 4 nested blocks of 256
    x = torch.randn(1, 512).bfloat16()
    with torch.no_grad():
        y = layer(x)
        count = _Count(layer)
        assert torch.equal(layer(x), y)
        assert count.served == 1
        assert torch.equal(y, _general(layer, x))


@pytest.mark.parametrize("change", ["absmax_8bit", "nested_absmax", "nested_code", "offset", "state2", "offset_data"])
def test_every_change_to_a_nested_absmax_is_seen(change):
    layer = _layer(k=512, n=128, nested=True)
    x = torch.randn(1, 512).bfloat16()
    qs = layer.weight.quant_state
    with torch.no_grad():
        layer(x)
        before = layer(x)
        count = _Count(layer)
        if change == "absmax_8bit":
            qs.absmax.add_(1)  # in place: the version counter
        elif change == "nested_absmax":
            qs.state2.absmax.mul_(2)
        elif change == "nested_code":
            qs.state2.code.mul_(0.5)
        elif change == "offset":
            qs.offset.add_(0.01)
        elif change == "state2":
            s2 = copy.deepcopy(qs.state2)
            s2.absmax = s2.absmax * 2
            qs.state2 = s2
        elif change == "offset_data":
            qs.offset.data = qs.offset + 0.01  # new memory, same object, same version
        after = layer(x)
        assert count.served == 0
        assert torch.equal(after, _general(layer, x))
        assert not torch.equal(after, before)


def test_a_weight_that_keeps_moving_stops_getting_runners():
    layer, other = _layer(seed=0), _layer(seed=1)
    x = torch.randn(1, 128).bfloat16()
    datas = [layer.weight.data, other.weight.data]
    with torch.no_grad():
        for i in range(12):
            layer.weight.data = datas[i % 2].clone()
            layer(x)
    assert weight_caches(layer.weight)[DECODE_PLAN_BUILDS_KEY] == 4
    assert DECODE_PLAN_KEY not in weight_caches(layer.weight)


def test_the_runner_is_not_state():
    layer = _layer()
    x = torch.randn(1, 128).bfloat16()
    with torch.no_grad():
        y = layer(x)
        assert DECODE_PLAN_KEY in weight_caches(layer.weight)
        clone = copy.deepcopy(layer)
        assert DECODE_PLAN_KEY not in weight_caches(clone.weight)
        buf = io.BytesIO()
        torch.save(layer, buf)
        buf.seek(0)
        loaded = torch.load(buf, weights_only=False)
        assert DECODE_PLAN_KEY not in weight_caches(loaded.weight)
        assert torch.equal(clone(x), y) and torch.equal(loaded(x), y)
        clone.weight.data.zero_()  # the copy's own memory, not the original's
        assert torch.equal(layer(x), y)


def test_prepare_refuses_what_the_runner_cannot_take():
    layer = _layer()
    w, qs = layer.weight.as_subclass(torch.Tensor), layer.weight.quant_state
    shape = list(qs.shape)
    ok = prepared.prepare_gemm_4bit(w, shape, qs.absmax, 64, "nf4", None, torch.bfloat16)
    assert ok is not None
    assert ok(torch.randn(1, 128, device="meta", dtype=torch.bfloat16)) is None  # not on the CPU
    assert prepared.prepare_gemm_4bit(w, shape, qs.absmax.half(), 64, "nf4", None, torch.bfloat16) is None
    assert prepared.prepare_gemm_4bit(w, [64], qs.absmax, 64, "nf4", None, torch.bfloat16) is None
    assert prepared.prepare_gemm_4bit(w, shape, qs.absmax, 63, "nf4", None, torch.bfloat16) is None
    assert prepared.prepare_gemm_4bit(w, shape, qs.absmax, 64, "int4", None, torch.bfloat16) is None
    assert prepared.prepare_gemm_4bit(w[:10], shape, qs.absmax, 64, "nf4", None, torch.bfloat16) is None
    bias = torch.zeros(64)
    assert prepared.prepare_gemm_4bit(w, shape, qs.absmax, 64, "nf4", bias, torch.bfloat16) is None  # f32 bias
    assert prepared.prepare_gemm_4bit(w, shape, qs.absmax, 64, "nf4", bias[:32], torch.float32) is None
    assert prepared.prepare_gemm_4bit(w, shape, qs.absmax, 64, "nf4", None, torch.int8) is None


# ---- Linear8bitLt ------------------------------------------------------------------------------


def _layer8(k=128, n=64, bias=True, threshold=6.0, seed=0):
    gen = torch.Generator().manual_seed(seed)
    layer = bitsandbytes.nn.Linear8bitLt(k, n, bias=bias, has_fp16_weights=False, threshold=threshold)
    layer.weight.data = torch.randn(n, k, generator=gen) * 0.1
    if bias:
        layer.bias.data = torch.randn(n, generator=gen)
    return layer.to("cpu").eval()


def _general8(layer, x):
    plan = layer.__dict__.pop(l8._INT8_PLAN_KEY, None)
    builds = layer.__dict__.get(l8._INT8_PLAN_BUILDS_KEY, 0)
    layer.__dict__[l8._INT8_PLAN_BUILDS_KEY] = 1 << 30
    try:
        return layer(x)
    finally:
        layer.__dict__[l8._INT8_PLAN_BUILDS_KEY] = builds
        if plan is not None:
            layer.__dict__[l8._INT8_PLAN_KEY] = plan


def _x(*shape, dtype=torch.bfloat16, seed=1):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).clamp(-3, 3).to(dtype)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("threshold", [0.0, 6.0])
@pytest.mark.parametrize("shape", [(128,), (1, 128), (1, 1, 128), (2, 3, 128)])
def test_int8_runner_gives_the_general_result_bit_for_bit(dtype, bias, threshold, shape):
    layer = _layer8(bias=bias, threshold=threshold)
    x = _x(*shape, dtype=dtype)
    with torch.no_grad():
        first = layer(x)
        assert l8._INT8_PLAN_KEY in layer.__dict__
        count = _Count(layer)
        y = layer(x)
        assert count.served == 1
        assert y.dtype == dtype and y.shape == (*shape[:-1], 64)
        assert torch.equal(y, first) and torch.equal(y, _general8(layer, x))
        if threshold > 0.0:
            assert layer.state.idx is not None and layer.state.idx.numel() == 0
        assert layer.state.is_training is False
        W = layer.state.CB.float() * layer.state.SCB.view(-1, 1) / 127
        ref = x.float() @ W.t() + (layer.bias.float() if bias else 0)
        torch.testing.assert_close(y.float(), ref, rtol=0.05, atol=0.05)


def test_int8_outlier_columns_take_the_general_path():
    layer = _layer8(threshold=6.0)
    x = _x(1, 128)
    with torch.no_grad():
        layer(x)
        count = _Count(layer)
        x[0, 5] = 20.0
        y = layer(x)
        assert count.served == 0
        assert layer.state.idx.tolist() == [5]
        assert torch.equal(y, _general8(layer, x))


@pytest.mark.parametrize(
    "change", ["CB_object", "SCB_object", "SCB_data", "weight_object", "bias_data", "bias_dtype", "bias_removed",
               "threshold", "train_mode", "generation", "requantized"],
)  # fmt: skip
def test_every_change_to_the_prepared_int8_layer_is_seen(change):
    layer, other = _layer8(seed=0), _layer8(seed=1)
    x = _x(1, 128)
    with torch.no_grad():
        other(x)  # moves its int8 weight into its state
        layer(x)
        before = layer(x)
        count = _Count(layer)
        if change == "CB_object":
            layer.state.CB = other.state.CB
            layer.weight.data = other.state.CB
        elif change == "SCB_object":
            layer.state.SCB = layer.state.SCB * 2
        elif change == "SCB_data":
            layer.state.SCB.data = layer.state.SCB * 2
        elif change == "weight_object":
            layer.weight = other.weight
            layer.state = other.state
        elif change == "bias_data":
            layer.bias.data = layer.bias.data + 1
        elif change == "bias_dtype":
            layer.bias.data = layer.bias.data.float() + 1
        elif change == "bias_removed":
            layer.bias = None
        elif change == "threshold":
            layer.state.threshold = 0.5  # now many outlier columns
        elif change == "train_mode":
            layer.train()
        elif change == "generation":
            _direct._changed()
        elif change == "requantized":  # a new 16-bit weight quantized into the same parameter
            layer.weight = bitsandbytes.nn.Int8Params(other.weight.data.float() * 0 + 0.05, requires_grad=False)
            layer.state.CB = None
            layer.weight = layer.weight.to("cpu")
        after = layer(x)
        assert count.served == 0
        if change != "train_mode":
            assert torch.equal(after, _general8(layer, x))
        if change not in ("generation", "train_mode"):
            assert not torch.equal(after.float(), before.float())


def test_int8_in_place_changes_are_read():
    layer, other = _layer8(seed=0), _layer8(seed=1)
    x = _x(1, 128)
    with torch.no_grad():
        other(x)
        layer(x)
        count = _Count(layer)
        layer.state.CB.copy_(other.state.CB)
        layer.state.SCB.copy_(other.state.SCB)
        layer.bias.copy_(other.bias.to(layer.bias.dtype))
        assert torch.equal(layer(x), other(x))
        assert count.served == 1


def test_int8_runner_is_not_state_and_modes_see_the_ops():
    layer = _layer8()
    x = _x(1, 128)
    with torch.no_grad():
        y = layer(x)
        assert l8._INT8_PLAN_KEY in layer.__dict__
        clone = copy.deepcopy(layer)
        assert l8._INT8_PLAN_KEY not in clone.__dict__
        buf = io.BytesIO()
        torch.save(layer, buf)
        buf.seek(0)
        loaded = torch.load(buf, weights_only=False)
        assert l8._INT8_PLAN_KEY not in loaded.__dict__
        assert torch.equal(clone(x), y) and torch.equal(loaded(x), y)
        count = _Count(layer)
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            layer(x)
        keys = {e.key for e in prof.key_averages()}
        assert "bitsandbytes::int8_vectorwise_quant" in keys
        assert count.served == 0


def test_int8_inputs_the_runner_does_not_take():
    layer = _layer8()
    with torch.no_grad():
        layer(_x(1, 128))
        count = _Count(layer)
        for x in (_x(prepared.INT8_MAX_ROWS + 1, 128), _x(128, 2).t(), torch.randn(0, 128).bfloat16()):
            assert torch.equal(layer(x), _general8(layer, x))
        assert count.served == 0
    x = _x(1, 128).requires_grad_()
    y = layer(x)  # gradients flow: the general path
    y.float().sum().backward()
    assert count.served == 0 and x.grad is not None


def test_prepare_int8_refuses_what_the_runner_cannot_take():
    layer = _layer8()
    with torch.no_grad():
        layer(_x(1, 128))
    CB, SCB = layer.state.CB, layer.state.SCB
    assert prepared.prepare_int8_linear(CB, SCB, None, 6.0, torch.bfloat16) is not None
    assert prepared.prepare_int8_linear(CB.float(), SCB, None, 6.0, torch.bfloat16) is None
    assert prepared.prepare_int8_linear(CB, SCB.half(), None, 6.0, torch.bfloat16) is None
    assert prepared.prepare_int8_linear(CB, SCB[:10], None, 6.0, torch.bfloat16) is None
    assert prepared.prepare_int8_linear(CB.t(), SCB, None, 6.0, torch.bfloat16) is None
    assert prepared.prepare_int8_linear(CB, SCB, torch.zeros(64), 6.0, torch.bfloat16) is None
    assert prepared.prepare_int8_linear(CB, SCB, None, -1.0, torch.bfloat16) is None
    assert prepared.prepare_int8_linear(CB, SCB, None, 6.0, torch.int32) is None


def test_a_kernel_without_runners_is_asked_a_few_times_only(monkeypatch):
    """Where the platform kernel offers no runner (another device's), the general path stops
    asking after a few calls instead of paying for the attempt on every one."""
    import bitsandbytes.nn.linear4bit as l4

    asked = []

    def no_runner(op, tensors, args):
        asked.append(op)

    monkeypatch.setattr(l4._direct, "prepare", no_runner)
    monkeypatch.setattr(l8._direct, "prepare", no_runner)
    layer4, layer8 = _layer(), _layer8()
    x = torch.randn(1, 128).bfloat16()
    with torch.no_grad():
        for _ in range(10):
            assert torch.equal(layer4(x), _general(layer4, x))
            assert torch.equal(layer8(x), _general8(layer8, x))
    assert asked.count("gemm_4bit") == 4 and asked.count("int8_mixed_scaled_mm") == 4


@pytest.mark.parametrize("kind", ["4bit", "8bit"])
def test_runners_hold_the_bias_memory_their_key_names(monkeypatch, kind):
    """A kept runner is prepared with a tensor of its own on the bias memory its key names, not
    with the parameter, whose memory another thread's conversion may replace while the platform
    takes it; where that memory changed between the key and the preparation, none is kept."""
    import bitsandbytes.nn.linear4bit as l4

    layer = _layer() if kind == "4bit" else _layer8()
    key_fn, key_name = (l4, "_plan_key") if kind == "4bit" else (l8, "_int8_plan_key")
    plan_of = (
        (lambda: weight_caches(layer.weight).get(DECODE_PLAN_KEY))
        if kind == "4bit"
        else (lambda: layer.__dict__.get(l8._INT8_PLAN_KEY))
    )
    seen, real_prepare = [], _direct.prepare

    def spy(op, tensors, args):
        seen.append(tensors[3])  # the bias, in both ops' tensors
        return real_prepare(op, tensors, args)

    monkeypatch.setattr(_direct, "prepare", spy)
    x = _x(1, 128)
    with torch.no_grad():
        y = layer(x)  # converts the f32 bias to bf16, then keeps a runner
        assert plan_of() is not None and len(seen) == 1
        held = seen[0]
        assert held is not layer.bias and type(held) is torch.Tensor
        assert held.data_ptr() == layer.bias.data_ptr() and held.dtype == torch.bfloat16
        old = layer.bias.detach().clone()
        layer.bias.data = torch.zeros_like(layer.bias)
        assert torch.equal(held, old)  # its memory outlives the parameter's
        layer.bias.data = old.clone()

        # The parameter's memory replaced after the key was taken, before the runner's preparation.
        real_key = getattr(key_fn, key_name)

        def key_then_swap(*args):
            key = real_key(*args)
            layer.bias.data = layer.bias.data.clone()
            return key

        monkeypatch.setattr(key_fn, key_name, key_then_swap)
        seen.clear()
        assert torch.equal(layer(x), y)  # the general path: the new memory
        assert plan_of() is None and seen == []
        monkeypatch.setattr(key_fn, key_name, real_key)
        assert torch.equal(layer(x), y)
        assert plan_of() is not None and seen[-1].data_ptr() == layer.bias.data_ptr()
        assert torch.equal(layer(x), y)  # served by the new runner
