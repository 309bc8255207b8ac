"""The eager fast path past the dispatcher (bitsandbytes._direct): when it calls a platform kernel
directly, when it must not, and that both routes give the same result."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

import bitsandbytes
import bitsandbytes.functional as F
from bitsandbytes import _direct

CPU_KERNEL = bitsandbytes._LOADED.kernels.get(("gemm_4bit", "cpu"), (None, None))[1]
CPU_INT8_DEQUANT = bitsandbytes._LOADED.kernels.get(("int8_mm_dequant", "cpu"), (None, None))[1]
CPU_INT8_SCALED_MM = bitsandbytes._LOADED.kernels.get(("int8_scaled_mm", "cpu"), (None, None))[1]
needs_cpu_wheel = pytest.mark.skipif(CPU_KERNEL is None, reason="no platform kernel serves the CPU")


def _weight(n: int = 64, k: int = 128):
    W = torch.randn(n, k, generator=torch.Generator().manual_seed(0)).bfloat16()
    return F.quantize_4bit(W, blocksize=64, quant_type="nf4")


class _Subclass(torch.Tensor):
    pass


class _CountingDispatch(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(str(func))
        return func(*args, **(kwargs or {}))


class _PassFunctions(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        return func(*args, **(kwargs or {}))


@needs_cpu_wheel
def test_plain_cpu_tensors_get_the_loaded_kernel():
    q, st = _weight()
    A = torch.randn(1, 128).bfloat16()
    assert _direct.kernel("gemm_4bit", A, q, st.absmax, None) is CPU_KERNEL
    bias = torch.nn.Parameter(torch.zeros(64, dtype=torch.bfloat16))  # a layer's bias, as passed
    with torch.no_grad():
        assert _direct.kernel("gemm_4bit", A, q, st.absmax, bias) is CPU_KERNEL
    assert _direct.kernel("gemm_4bit", A, q, st.absmax, bias) is None  # it requires grad


def test_an_op_without_a_platform_kernel_goes_through_the_dispatcher():
    A = torch.randn(1, 128)
    assert _direct.kernel("not_an_op", A) is None
    assert _direct.kernel("gemm_4bit", torch.empty(1, 128, device="meta")) is None  # no meta kernel bound


@needs_cpu_wheel
@pytest.mark.parametrize(
    "case", ["requires_grad", "subclass", "two_devices", "dispatch_mode", "function_mode", "profiler", "compiling"]
)
def test_cases_the_dispatcher_must_see(case, monkeypatch):
    q, st = _weight()
    A = torch.randn(1, 128).bfloat16()
    tensors = [A, q, st.absmax]
    if case == "requires_grad":
        tensors[0] = A.requires_grad_()
        assert _direct.kernel("gemm_4bit", *tensors) is None
        with torch.no_grad():  # no gradient can flow: direct is fine
            assert _direct.kernel("gemm_4bit", *tensors) is CPU_KERNEL
        return
    if case == "subclass":
        tensors[0] = A.as_subclass(_Subclass)
    elif case == "two_devices":
        tensors.append(torch.empty(64, device="meta"))
    if case == "dispatch_mode":
        with _CountingDispatch():
            assert _direct.kernel("gemm_4bit", *tensors) is None
        return
    if case == "function_mode":
        with _PassFunctions():
            assert _direct.kernel("gemm_4bit", *tensors) is None
        return
    if case == "profiler":
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]):
            assert _direct.kernel("gemm_4bit", *tensors) is None
        return
    if case == "compiling":
        monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    assert _direct.kernel("gemm_4bit", *tensors) is None


@needs_cpu_wheel
def test_direct_and_dispatched_results_are_identical():
    q, st = _weight(96, 256)
    bias = torch.randn(96).bfloat16()
    for rows in (1, 3, 8, 40):
        A = torch.randn(rows, 256, generator=torch.Generator().manual_seed(rows)).bfloat16()
        direct = F._gemm_4bit(A, q, st, bias)
        dispatched = torch.ops.bitsandbytes.gemm_4bit(A, q, list(st.shape), st.absmax, 64, "nf4", bias)
        assert torch.equal(direct, dispatched), rows


@needs_cpu_wheel
def test_int8_inference_direct_and_dispatched_agree():
    layer = bitsandbytes.nn.Linear8bitLt(256, 96, has_fp16_weights=False, threshold=6.0)
    layer.weight.data = torch.randn(96, 256, generator=torch.Generator().manual_seed(1))
    layer = layer.to("cpu").eval()
    x = torch.randn(3, 256, generator=torch.Generator().manual_seed(2)).half()
    x[:, 5] = 20.0  # an outlier column
    with torch.no_grad():
        fast = layer(x)
    with torch.no_grad(), torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        slow = layer(x)  # the profiler forces the dispatcher
    assert torch.equal(fast, slow)
    names = {e.key for e in prof.key_averages()}
    assert "bitsandbytes::int8_mixed_scaled_mm" in names, sorted(names)


@needs_cpu_wheel
def test_profiles_still_show_the_op():
    layer = bitsandbytes.nn.Linear4bit(128, 64, compute_dtype=torch.bfloat16, quant_type="nf4").to("cpu")
    x = torch.randn(1, 128).bfloat16()
    with torch.no_grad(), torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        layer(x)
    assert "bitsandbytes::gemm_4bit" in {e.key for e in prof.key_averages()}


@needs_cpu_wheel
@pytest.mark.filterwarnings("ignore:Warning only once for all operators")
def test_a_kernel_registered_later_is_not_bypassed():
    """A kernel registered for the same op and device after the loader's (an out-of-tree backend)
    is found at the first direct call and the fast path steps aside for it."""
    calls = []

    def other(*args, **kwargs):
        calls.append(1)
        return CPU_KERNEL(*args, **kwargs)

    q, st = _weight()
    A = torch.randn(1, 128).bfloat16()
    _direct.bind("gemm_4bit", "cpu", CPU_KERNEL)  # as at load time, not yet checked
    lib = torch.library.Library("bitsandbytes", "IMPL")
    try:
        lib.impl("gemm_4bit", other, "CPU", **bitsandbytes._ops._OVERRIDE)
        assert _direct.kernel("gemm_4bit", A, q, st.absmax) is None
        F._gemm_4bit(A, q, st, None)
        assert calls == [1]
    finally:
        lib._destroy()
        _direct.bind("gemm_4bit", "cpu", CPU_KERNEL)
    assert _direct.kernel("gemm_4bit", A, q, st.absmax) is CPU_KERNEL


@needs_cpu_wheel
def test_the_environment_switch_turns_it_off():
    code = (
        "import torch, bitsandbytes\n"
        "from bitsandbytes import _direct\n"
        "print(_direct.kernel('gemm_4bit', torch.zeros(1, 64)) is None)\n"
    )
    env = {**os.environ, "BNB_DIRECT_KERNELS": "0"}
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "True"


@needs_cpu_wheel
def test_the_lean_cpu_path_still_checks_the_bias_device():
    q, st = _weight()
    A = torch.randn(1, 128).bfloat16()
    with pytest.raises(RuntimeError, match="bias"):
        torch.ops.bitsandbytes.gemm_4bit(A, q, [64, 128], st.absmax, 64, "nf4", torch.zeros(64, device="meta"))
    # The int8 dequantization, called as a direct call would (no fake kernel in between).
    acc = torch.ones(2, 64, dtype=torch.int32)
    stats = torch.ones(2), torch.ones(64)
    with pytest.raises(RuntimeError, match="bias"):
        CPU_INT8_DEQUANT(acc, *stats, torch.float16, torch.zeros(64, device="meta"))
    with pytest.raises(RuntimeError, match="bias"):
        CPU_INT8_SCALED_MM(
            acc.to(torch.int8), torch.ones(64, 64, dtype=torch.int8), *stats, torch.zeros(64, device="meta")
        )


def test_linear4bit_follows_a_replaced_weight():
    """Linear4bit keeps a plain alias of its packed weight between calls; replacing the weight
    (a new parameter, or new data in the same parameter) must be seen by the next call."""
    gen = torch.Generator().manual_seed(3)
    layer = bitsandbytes.nn.Linear4bit(128, 64, bias=False, compute_dtype=torch.float32, quant_type="nf4")
    layer.weight.data = torch.randn(64, 128, generator=gen)
    layer = layer.to("cpu")
    other = bitsandbytes.nn.Linear4bit(128, 64, bias=False, compute_dtype=torch.float32, quant_type="nf4")
    other.weight.data = torch.randn(64, 128, generator=gen)
    other = other.to("cpu")
    x = torch.randn(2, 128, generator=gen)
    with torch.no_grad():
        first = layer(x)
        assert torch.equal(layer(x), first)  # the kept alias
        layer.weight.data = other.weight.data.clone()  # same parameter object, new storage
        layer.weight.quant_state = other.weight.quant_state
        assert torch.equal(layer(x), other(x))
        layer.weight = other.weight  # a new parameter object
        assert torch.equal(layer(x), other(x))
        assert not torch.equal(first, other(x))


def test_the_kept_alias_is_not_state():
    """The alias Linear4bit keeps on a CPU weight stays out of copies and pickles of it."""
    import copy
    import io

    from bitsandbytes.nn._params import PLAIN_ALIAS_KEY, weight_caches

    layer = bitsandbytes.nn.Linear4bit(128, 64, bias=False, compute_dtype=torch.float32, quant_type="nf4").to("cpu")
    x = torch.randn(1, 128)
    with torch.no_grad():
        y = layer(x)
    assert PLAIN_ALIAS_KEY in weight_caches(layer.weight)
    assert PLAIN_ALIAS_KEY not in weight_caches(copy.copy(layer.weight))
    assert PLAIN_ALIAS_KEY not in weight_caches(copy.deepcopy(layer).weight)
    buf = io.BytesIO()
    torch.save(layer, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    assert PLAIN_ALIAS_KEY not in weight_caches(loaded.weight)
    with torch.no_grad():
        assert torch.equal(loaded(x), y)


def test_unbinding_a_replaced_kernel_keeps_its_successor(monkeypatch):
    """Closing an older loading pass forgets only its own kernel: the one bound after it stays
    bound for direct calls (and verified)."""
    monkeypatch.setattr(_direct, "_bound", {})
    monkeypatch.setattr(_direct, "_verified", {})

    def older(*args):
        return "older"

    def newer(*args):
        return "newer"

    key = ("quantize_4bit", "cpu")
    _direct._bound[key] = (newer, "registered at newer")
    _direct._verified[key] = newer
    before = _direct.generation
    _direct.unbind(*key, older)
    assert _direct._bound == {key: (newer, "registered at newer")} and _direct._verified == {key: newer}
    assert _direct.generation == before + 1
    _direct.unbind(*key, newer)
    assert _direct._bound == {} and _direct._verified == {}
