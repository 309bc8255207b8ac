"""Platform loading: every branch, with fake entry points and fake runtimes (no hardware)."""

from __future__ import annotations

import logging
import os
import sys
import types

import pytest
import torch

import bitsandbytes
from bitsandbytes import _ops, _platforms
from bitsandbytes._platforms import PlatformWarning, Runtime, load

V = bitsandbytes.__version__
CPU_ONLY = Runtime("2.13.0", None, None, {"cpu": "CPU"})
CUDA12 = Runtime("2.13.0", "12.8", None, {"cpu": "CPU", "cuda": "CUDA 12.8, 1 device(s)"})
CUDA13 = Runtime("2.13.0", "13.0", None, {"cpu": "CPU", "cuda": "CUDA 13.0, 1 device(s)"})
ROCM = Runtime("2.13.0", None, "6.4.1", {"cpu": "CPU", "cuda": "ROCm 6.4.1, 1 device(s)"})
XPU = Runtime("2.13.0", None, None, {"cpu": "CPU", "xpu": "Intel XPU, 1 device(s)"})


class FakeDist:
    def __init__(self, name: str, version: str):
        self.metadata = {"Name": name}
        self.version = version


class FakeEntryPoint:
    """Quacks like importlib.metadata.EntryPoint for a module made in memory."""

    def __init__(
        self,
        platform: str,
        version: str = V,
        interface: int = 1,
        *,
        kernels=None,
        register_error=None,
        import_error=None,
        check_runtime=None,
    ):
        self.name = platform
        self.module = f"fake_bnb_{platform}_{id(self)}"
        self.dist = FakeDist(f"bitsandbytes-{platform}", version)
        self.import_error = import_error
        mod = types.ModuleType(self.module)
        mod.__version__ = version
        mod.OP_INTERFACE_VERSION = interface
        mod.build_info = lambda: {"platform": platform, "fake": True}
        if check_runtime is not None:
            mod.check_runtime = check_runtime

        def register(register_kernel):
            for op, fn in (kernels or {}).items():
                register_kernel(op, fn)
            if register_error is not None:
                raise register_error

        register.__module__ = self.module
        mod.register = register
        self._mod = mod

    def load(self):
        if self.import_error is not None:
            raise self.import_error
        sys.modules[self.module] = self._mod
        return self._mod.register


def record(result, platform):
    matches = [r for r in result.records if r.platform == platform]
    assert matches, f"no record for {platform}: {result.records}"
    return matches[0]


def test_cpu_wheel_loads_and_registers():
    if not _ops._OVERRIDE and bitsandbytes.implementation("quantize_4bit", "cpu") == "cpu":
        pytest.skip("torch < 2.8 cannot register a second kernel over the installed cpu wheel's (no allow_override)")
    calls = []

    def fake_quantize(A, blocksize, quant_type, quant_storage):
        calls.append(blocksize)
        return torch.zeros((A.numel() + 1) // 2, 1, dtype=torch.uint8), torch.zeros(1)

    ep = FakeEntryPoint("cpu", kernels={"quantize_4bit": fake_quantize})
    result = load(entry_points=[ep], runtime=CPU_ONLY, env={})
    try:
        rec = record(result, "cpu")
        assert rec.status == "loaded" and rec.ops == ["quantize_4bit"]
        assert rec.version == V and rec.build_info == {"platform": "cpu", "fake": True}
        assert result.implementation("quantize_4bit", "cpu") == "cpu"
        assert result.implementation("dequantize_4bit", "cpu") == "reference"
        torch.ops.bitsandbytes.quantize_4bit(torch.ones(64), 64, "nf4", torch.uint8)
        assert calls == [64]  # the dispatcher reached the registered kernel
    finally:
        result.close()
    packed, _ = torch.ops.bitsandbytes.quantize_4bit(torch.ones(64), 64, "nf4", torch.uint8)
    assert calls == [64] and packed[0, 0].item() == 0xFF  # the previous kernel serves again


def test_missing_wheel_warns_with_the_fix():
    with pytest.warns(PlatformWarning, match=r'pip install "bitsandbytes\[cuda12x\]==' + V.replace(".", r"\.")):
        result = load(entry_points=[FakeEntryPoint("cpu")], runtime=CUDA12, env={})
    rec = record(result, "cuda12x")
    assert rec.status == "missing" and rec.device_type == "cuda"
    assert rec.fix == f'pip install "bitsandbytes[cuda12x]=={V}"'
    assert result.implementation("quantize_4bit", "cuda") == "reference"
    result.close()


def test_meta_alone_warns_for_cpu():
    with pytest.warns(PlatformWarning, match=r'pip install "bitsandbytes-cpu=='):
        result = load(entry_points=[], runtime=CPU_ONLY, env={})
    assert record(result, "cpu").status == "missing"


def test_wrong_version_is_refused():
    with pytest.warns(PlatformWarning, match="does not match bitsandbytes"):
        result = load(entry_points=[FakeEntryPoint("cpu", version="0.9.0")], runtime=CPU_ONLY, env={})
    rec = record(result, "cpu")
    assert rec.status == "skipped" and "0.9.0" in rec.reason and not result.kernels
    assert rec.fix == f'pip install "bitsandbytes-cpu=={V}"'


def test_wrong_interface_is_refused():
    with pytest.warns(PlatformWarning, match="op interface 99"):
        result = load(entry_points=[FakeEntryPoint("cpu", interface=99)], runtime=CPU_ONLY, env={})
    assert record(result, "cpu").status == "skipped" and not result.kernels


def test_cuda13_wheel_under_cuda12_torch():
    eps = [FakeEntryPoint("cpu"), FakeEntryPoint("cuda13x", kernels={"quantize_4bit": lambda *a: None})]
    with pytest.warns(PlatformWarning, match=r"bitsandbytes\[cuda12x\]"):
        result = load(entry_points=eps, runtime=CUDA12, env={})
    rec13 = record(result, "cuda13x")
    assert rec13.status == "skipped" and "CUDA 12.8" in rec13.reason
    assert record(result, "cuda12x").status == "missing"
    assert result.implementation("quantize_4bit", "cuda") == "reference"
    result.close()


def test_two_cuda_wheels_resolved_by_runtime_version():
    k = {"dequantize_4bit": lambda *a: None}
    eps = [FakeEntryPoint("cpu"), FakeEntryPoint("cuda12x", kernels=k), FakeEntryPoint("cuda13x", kernels=k)]
    result = load(entry_points=eps, runtime=CUDA13, env={})
    try:
        assert record(result, "cuda13x").status == "loaded"
        lost = record(result, "cuda12x")
        assert lost.status == "skipped" and "cuda13x wins" in lost.reason
        assert result.implementation("dequantize_4bit", "cuda") == "cuda13x"
    finally:
        result.close()


def test_rocm_torch_selects_rocm_never_cuda():
    k = {"dequantize_4bit": lambda *a: None}
    eps = [FakeEntryPoint("cpu"), FakeEntryPoint("cuda12x", kernels=k), FakeEntryPoint("rocm", kernels=k)]
    result = load(entry_points=eps, runtime=ROCM, env={})
    try:
        assert record(result, "rocm").status == "loaded"
        assert record(result, "cuda12x").status == "skipped"
        assert "ROCm build" in record(result, "cuda12x").reason
        assert result.implementation("dequantize_4bit", "cuda") == "rocm"
    finally:
        result.close()


def test_rocm_torch_without_rocm_wheel():
    with pytest.warns(PlatformWarning, match=r"bitsandbytes\[rocm\]"):
        result = load(entry_points=[FakeEntryPoint("cpu"), FakeEntryPoint("cuda12x")], runtime=ROCM, env={})
    assert record(result, "rocm").status == "missing"
    assert record(result, "cuda12x").status == "skipped"


def test_build_that_does_not_fit_the_runtime():
    def check_runtime(runtime):
        return f"has kernels for ROCm 7 only, torch has HIP {runtime.hip_version}"

    with pytest.warns(PlatformWarning, match="ROCm 7 only"):
        result = load(
            entry_points=[FakeEntryPoint("cpu"), FakeEntryPoint("rocm", check_runtime=check_runtime)],
            runtime=ROCM,
            env={},
        )
    assert record(result, "rocm").status == "skipped"


@pytest.mark.parametrize("value", ["none", "NONE"])
def test_override_none_loads_nothing(value):
    result = load(
        entry_points=[FakeEntryPoint("cpu", kernels={"quantize_4bit": lambda *a: None})],
        runtime=CPU_ONLY,
        env={"BNB_PLATFORMS": value},
    )
    assert record(result, "cpu").reason == "excluded by BNB_PLATFORMS" and not result.kernels


def test_override_by_device_type():
    k = {"dequantize_4bit": lambda *a: None}
    eps = [FakeEntryPoint("cpu", kernels=k), FakeEntryPoint("cuda12x", kernels=k)]
    result = load(entry_points=eps, runtime=CUDA12, env={"BNB_PLATFORMS": "cuda"})
    try:
        assert record(result, "cuda12x").status == "loaded"
        assert record(result, "cpu").status == "skipped"
    finally:
        result.close()


@pytest.mark.parametrize("value", ["", "  ", " , "])
def test_an_empty_override_counts_as_unset(value):
    """``BNB_PLATFORMS=`` (empty or blank) is no override: the wheel loads as without the variable,
    not as with ``none``."""
    result = load(
        entry_points=[FakeEntryPoint("cpu", kernels={"dequantize_4bit": lambda *a: None})],
        runtime=CPU_ONLY,
        env={"BNB_PLATFORMS": value},
    )
    try:
        assert record(result, "cpu").status == "loaded"
        assert result.implementation("dequantize_4bit", "cpu") == "cpu"
    finally:
        result.close()


def test_override_with_unknown_name_warns():
    with pytest.warns(PlatformWarning, match="unknown platforms"):
        result = load(entry_points=[FakeEntryPoint("cpu")], runtime=CPU_ONLY, env={"BNB_PLATFORMS": "cpu,tpu"})
    assert record(result, "cpu").status == "loaded"
    result.close()


def test_register_failure_rolls_back():
    calls = []
    eps = [
        FakeEntryPoint(
            "xpu", kernels={"quantize_4bit": lambda *a: calls.append(a)}, register_error=RuntimeError("boom")
        )
    ]
    with pytest.warns(PlatformWarning, match="boom"):
        result = load(entry_points=[FakeEntryPoint("cpu"), *eps], runtime=XPU, env={})
    rec = record(result, "xpu")
    assert rec.status == "failed" and "boom" in rec.reason
    assert result.implementation("quantize_4bit", "xpu") == "reference"
    result.close()


def test_a_failed_register_leaves_no_kernel_in_the_dispatcher():
    """The kernels a wheel registered before its ``register`` raised are removed from torch's
    dispatcher too, not only from the loader's table: the reference kernels serve the device."""
    op = "bitsandbytes::quantize_4bit"
    assert not torch._C._dispatch_has_kernel_for_dispatch_key(op, "XPU")
    eps = [FakeEntryPoint("xpu", kernels={"quantize_4bit": lambda *a: None}, register_error=RuntimeError("boom"))]
    with pytest.warns(PlatformWarning, match="boom"):
        result = load(entry_points=[FakeEntryPoint("cpu"), *eps], runtime=XPU, env={})
    try:
        assert record(result, "xpu").status == "failed"
        assert not torch._C._dispatch_has_kernel_for_dispatch_key(op, "XPU")
    finally:
        result.close()


def test_unknown_op_in_register_fails_cleanly():
    with pytest.warns(PlatformWarning, match="unknown op"):
        result = load(
            entry_points=[FakeEntryPoint("cpu"), FakeEntryPoint("xpu", kernels={"no_such_op": print})],
            runtime=XPU,
            env={},
        )
    assert record(result, "xpu").status == "failed"


def test_import_failure_is_a_warning_not_a_crash():
    with pytest.warns(PlatformWarning, match="could not be imported"):
        result = load(
            entry_points=[FakeEntryPoint("cpu", import_error=OSError("libfoo.so missing"))], runtime=CPU_ONLY, env={}
        )
    assert record(result, "cpu").status == "failed"


def test_wheel_for_absent_device_is_recorded():
    result = load(entry_points=[FakeEntryPoint("cpu"), FakeEntryPoint("mps")], runtime=CPU_ONLY, env={})
    assert record(result, "mps").status == "skipped" and "no mps device" in record(result, "mps").reason
    result.close()


def test_debug_logging(caplog):
    with caplog.at_level(logging.WARNING, logger="bitsandbytes"):
        result = load(entry_points=[FakeEntryPoint("cpu")], runtime=CPU_ONLY, env={"BNB_DEBUG_LOADING": "1"})
    assert any("bitsandbytes loading" in m for m in caplog.messages)
    result.close()


def test_runtime_platform_names():
    assert CUDA12.wanted_platform("cuda") == "cuda12x"
    assert CUDA13.wanted_platform("cuda") == "cuda13x"
    assert ROCM.wanted_platform("cuda") == "rocm"
    assert XPU.wanted_platform("xpu") == "xpu"
    assert CPU_ONLY.wanted_platform("cuda") is None


def test_detect_runtime_on_this_machine():
    rt = _platforms.detect_runtime()
    assert "cpu" in rt.devices and rt.torch_version == torch.__version__


def test_installed_platforms_match_expectation():
    """BNB_EXPECT_PLATFORMS is set by the nox sessions: 'cpu' with the wheel, '' without."""
    expected = os.environ.get("BNB_EXPECT_PLATFORMS")
    if expected is None:
        pytest.skip("run through nox (tests-cpu / tests-reference) to pin the expected platforms")
    loaded = sorted(r["platform"] for r in bitsandbytes.platforms() if r["status"] == "loaded")
    assert loaded == sorted(p for p in expected.split(",") if p)
    if not expected:
        cpu = [r for r in bitsandbytes.platforms() if r["device_type"] == "cpu"][0]
        assert cpu["status"] == "missing" and "bitsandbytes-cpu==" in cpu["fix"]


def _wheel_submodules() -> list[str]:
    import importlib.util
    import pkgutil

    names = []
    for platform in ("cpu", "cuda", "rocm", "xpu", "hpu", "mps"):
        spec = importlib.util.find_spec(f"bitsandbytes_{platform}")
        if spec is None or not spec.submodule_search_locations:
            continue
        for info in pkgutil.iter_modules(spec.submodule_search_locations):
            if not info.name.startswith(("_", "lib")) or info.name == "_gaudi":  # lib*: the C ABI
                names.append(f"bitsandbytes_{platform}.{info.name}")
    return names


@pytest.mark.parametrize("module", _wheel_submodules() or ["none-installed"])
def test_importing_a_wheel_submodule_first_still_registers(module):
    """``import bitsandbytes_cpu.kernels`` before ``bitsandbytes`` must not break registration."""
    if module == "none-installed":
        pytest.skip("no platform wheel installed")
    import subprocess

    code = (
        f"import warnings; warnings.simplefilter('error')\n"
        f"import {module}, bitsandbytes\n"
        "print(sorted((r['platform'], r['status']) for r in bitsandbytes.platforms()))\n"
        "print(bitsandbytes.implementation('quantize_4bit', 'cpu'))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "BNB_PLATFORMS"}
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    records, cpu_impl = r.stdout.strip().splitlines()
    assert "'failed'" not in records, records
    if module.startswith("bitsandbytes_cpu."):
        assert "('cpu', 'loaded')" in records and cpu_impl == "cpu", r.stdout


# ---- paged memory: a wheel's optional paged_memory() hook --------------------------------------


def test_a_wheels_paged_memory_serves_get_paged_and_prefetch(monkeypatch):
    from bitsandbytes import _paging
    from bitsandbytes import functional as F

    monkeypatch.setattr(_paging, "_PROVIDER", None)
    calls = []

    def allocate(shape, dtype):
        calls.append(("allocate", shape, dtype))
        return torch.empty(shape, dtype=dtype)

    def prefetch(t, index, to_cpu):
        calls.append(("prefetch", tuple(t.shape), index, to_cpu))

    ep = FakeEntryPoint("cuda12x", kernels={"dequantize_4bit": lambda *a: None})
    ep._mod.paged_memory = lambda: (allocate, prefetch)
    with pytest.raises(RuntimeError, match="paged memory for cuda devices"):
        F.get_paged(3, 4, device="cuda:1")
    result = load(entry_points=[FakeEntryPoint("cpu"), ep], runtime=CUDA12, env={})
    try:
        assert record(result, "cuda12x").status == "loaded"
        assert _paging.paging_supported("cuda") and _paging.paging_supported() and not _paging.paging_supported("cpu")
        t = F.get_paged(3, 4, dtype=torch.uint8, device="cuda:1")
        assert (t.shape, t.dtype, t.is_paged, t.page_deviceid) == ((3, 4), torch.uint8, True, 1)
        F.prefetch_tensor(t, to_cpu=True)
        F.GlobalPageManager.get_instance().paged_tensors.append(t)
        try:
            F.GlobalPageManager.get_instance().prefetch_all()
        finally:
            F.GlobalPageManager.get_instance().paged_tensors.remove(t)
        assert calls == [
            ("allocate", (3, 4), torch.uint8),
            ("prefetch", (3, 4), 1, True),
            ("prefetch", (3, 4), 1, False),
        ]
        with pytest.raises(RuntimeError, match="paged memory for cpu devices"):
            F.get_paged(2, device="cpu")
    finally:
        result.close()
    assert not _paging.paging_supported()  # unloading the wheel takes its paged memory away too


def test_a_failing_paged_memory_hook_warns_and_leaves_paging_off(monkeypatch):
    from bitsandbytes import _paging

    monkeypatch.setattr(_paging, "_PROVIDER", None)
    ep = FakeEntryPoint("cuda12x", kernels={"dequantize_4bit": lambda *a: None})
    ep._mod.paged_memory = lambda: (None, None)
    with pytest.warns(PlatformWarning, match="paged memory but it could not be set up"):
        result = load(entry_points=[FakeEntryPoint("cpu"), ep], runtime=CUDA12, env={})
    try:
        assert record(result, "cuda12x").status == "loaded"  # the kernels serve all the same
        assert not _paging.paging_supported("cuda")
    finally:
        result.close()


def test_closing_a_pass_keeps_paged_memory_it_does_not_own(monkeypatch):
    """``close()`` removes the paged memory its own pass set up, not a provider set since."""
    from bitsandbytes import _paging

    monkeypatch.setattr(_paging, "_PROVIDER", None)
    ep = FakeEntryPoint("cuda12x", kernels={"dequantize_4bit": lambda *a: None})
    ep._mod.paged_memory = lambda: (lambda shape, dtype: torch.empty(shape, dtype=dtype), lambda t, i, c: None)
    result = load(entry_points=[FakeEntryPoint("cpu"), ep], runtime=CUDA12, env={})
    try:
        assert result.paged_memory is _paging._PROVIDER is not None
        _paging.set_provider("cuda", lambda shape, dtype: torch.empty(shape, dtype=dtype), lambda t, i, c: None)
        other = _paging._PROVIDER
        assert other is not result.paged_memory
    finally:
        result.close()
    assert _paging._PROVIDER is other and _paging.paging_supported("cuda")
