"""The ROCm platform wheel (bitsandbytes-rocm), without an AMD GPU.

Its Python package is loaded from the source tree (platforms/rocm/python) with fake build infos,
fake runtimes and a fake torch, so every loading branch runs on any machine: a ROCm major the
wheel has a library for, one it has not, a CUDA or CPU torch, GPUs of a gfx target the build
left out. Tests of an installed wheel skip where it is not installed; kernels on a real GPU are
covered by test_ops_conformance.py through `nox -s tests-rocm`.
"""

from __future__ import annotations

import importlib.util
import json
import pathlib
import re
import subprocess
import sys
import types
import warnings

import pytest
from test_platforms import FakeEntryPoint, record

import bitsandbytes
from bitsandbytes._platforms import PlatformWarning, Runtime, load

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "platforms" / "rocm" / "python" / "bitsandbytes_rocm"
ROCM6 = Runtime("2.13.0", None, "6.4.43482-0f2d60242", {"cpu": "CPU", "cuda": "ROCm 6.4, 1 device(s)"})
ROCM7 = Runtime("2.13.0", None, "7.0.51831-a3e329ad8", {"cpu": "CPU", "cuda": "ROCm 7.0, 1 device(s)"})
CUDA13 = Runtime("2.13.0", "13.0", None, {"cpu": "CPU", "cuda": "CUDA 13.0, 1 device(s)"})


def _info(major: int, archs: list[str]) -> dict:
    return {
        "platform": "rocm",
        "version": bitsandbytes.__version__,
        "abi_version": 1,
        "rocm_major": major,
        "hip_version": f"{major}.4.0",
        "rocm_archs": archs,
        "library": f"libbitsandbytes_rocm{major}.so",
    }


@pytest.fixture
def rocm(tmp_path):
    """The source package, as a fresh module whose build infos live in tmp_path (``add`` writes one)."""
    name = f"bnb_rocm_under_test_{len(sys.modules)}"
    spec = importlib.util.spec_from_file_location(
        name, PACKAGE / "__init__.py", submodule_search_locations=[str(PACKAGE)]
    )
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    mod._HERE = tmp_path

    def add(major: int, archs: list[str]) -> None:
        (tmp_path / f"build_info_rocm{major}.json").write_text(json.dumps(_info(major, archs)))
        mod.libraries.cache_clear()
        mod.build_info.cache_clear()

    mod.add = add
    yield mod
    sys.modules.pop(name, None)


def test_hip_major(rocm):
    versions = (None, "", "5.2.21153-0", "6.4.43482-0f2d60242", "7.0.51831-a3e329ad8")
    assert [rocm.hip_major(v) for v in versions] == [None, None, 5, 6, 7]


def test_check_runtime_branches(rocm):
    rocm.add(5, ["gfx90a"])
    rocm.add(6, ["gfx90a", "gfx942"])
    assert rocm.hip_major(ROCM6.hip_version) == 6
    assert rocm.check_runtime(ROCM6) is None
    missing = rocm.check_runtime(ROCM7)
    assert "ROCm 7.0.51831" in missing and "ROCm 5 (5.4.0), ROCm 6 (6.4.0)" in missing
    assert "built for ROCm 7" in missing
    assert "CUDA build (CUDA 13.0)" in rocm.check_runtime(CUDA13)
    assert "without ROCm" in rocm.check_runtime(types.SimpleNamespace(hip_version=None, cuda_version=None))


def test_check_runtime_without_any_library(rocm):
    assert "holds no kernel library" in rocm.check_runtime(ROCM6)


def test_build_info_merges_the_libraries(rocm):
    rocm.add(6, ["gfx90a", "gfx1100"])
    rocm.add(7, ["gfx950", "gfx90a"])
    info = rocm.build_info()
    assert info["platform"] == "rocm" and info["version"] == bitsandbytes.__version__
    assert info["rocm_majors"] == [6, 7]
    assert info["rocm_archs"] == ["gfx1100", "gfx90a", "gfx950"]
    assert info["libraries"]["7"]["library"] == "libbitsandbytes_rocm7.so"


def test_meta_loader_with_a_missing_rocm_major_warns_and_falls_back(rocm):
    rocm.add(6, ["gfx90a"])
    ep = FakeEntryPoint("rocm", check_runtime=rocm.check_runtime, kernels={})
    with pytest.warns(PlatformWarning, match="kernel libraries for ROCm 6"):
        result = load([FakeEntryPoint("cpu"), ep], runtime=ROCM7, env={})
    rec = record(result, "rocm")
    assert rec.status == "skipped" and "built for ROCm 7" in rec.reason
    assert not any(device == "cuda" for _, device in result.kernels)


def test_meta_loader_with_a_matching_rocm_major_loads(rocm):
    rocm.add(6, ["gfx90a"])
    rocm.add(7, ["gfx90a"])
    ep = FakeEntryPoint("rocm", check_runtime=rocm.check_runtime, kernels={})
    with warnings.catch_warnings():
        warnings.simplefilter("error", PlatformWarning)
        result = load([FakeEntryPoint("cpu"), ep], runtime=ROCM7, env={})
    assert record(result, "rocm").status == "loaded"


def test_meta_loader_under_cuda_torch_skips_rocm(rocm):
    rocm.add(6, ["gfx90a"])
    ep = FakeEntryPoint("rocm", check_runtime=rocm.check_runtime)
    with pytest.warns(PlatformWarning):  # the cuda13x wheel is missing
        result = load([FakeEntryPoint("cpu"), ep], runtime=CUDA13, env={})
    rec = record(result, "rocm")
    assert rec.status == "skipped" and "ROCm" in rec.reason


def fake_torch(archs: list[str], hip: str | None = "6.4.43482") -> types.SimpleNamespace:
    props = [types.SimpleNamespace(gcnArchName=a, name=f"AMD GPU {i}") for i, a in enumerate(archs)]
    cuda = types.SimpleNamespace(device_count=lambda: len(props), get_device_properties=lambda i: props[i])
    return types.SimpleNamespace(cuda=cuda, version=types.SimpleNamespace(hip=hip, cuda=None))


def test_gpu_archs_read_through_torch(rocm):
    assert rocm.gpu_archs(fake_torch(["gfx90a:sramecc+:xnack-", "gfx1100"])) == [
        "gfx90a:sramecc+:xnack-",
        "gfx1100",
    ]
    assert rocm.torch_runtime(fake_torch([], hip="7.0.1")).hip_version == "7.0.1"


def test_unsupported_gpu_warns_with_the_arch_and_the_option(rocm):
    rocm.add(6, ["gfx90a", "gfx942"])
    archs = rocm.gpu_archs(fake_torch(["gfx90a:sramecc+:xnack-", "gfx1101", "gfx942:sramecc+:xnack-"]))
    with pytest.warns(rocm.UnsupportedGPUWarning) as caught:
        missing = rocm.warn_unsupported_gpus(archs, 6)
    assert missing == [(1, "gfx1101")]
    assert len(caught) == 1
    message = str(caught[0].message)
    assert "GPU 1 is gfx1101" in message and "libbitsandbytes_rocm6.so" in message
    assert 'BNB_ROCM_ARCHS="gfx90a;gfx942;gfx1101"' in message


def test_supported_gpus_do_not_warn(rocm):
    rocm.add(7, ["gfx90a", "gfx1100"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert rocm.warn_unsupported_gpus(["gfx1100", "gfx90a:xnack+"], 7) == []


def test_register_refuses_a_runtime_without_its_library(rocm, monkeypatch):
    rocm.add(5, ["gfx90a"])
    monkeypatch.setitem(sys.modules, "torch", fake_torch(["gfx90a"], hip="6.4.1"))
    with pytest.raises(RuntimeError, match="kernel libraries for ROCm 5"):
        rocm.register(lambda op, fn: None)


# ---- one source, two toolchains ---------------------------------------------------------------


def test_no_copied_or_hipified_tree():
    assert not list((ROOT / "platforms" / "rocm").rglob("*.cu")), "ROCm compiles platforms/cuda/src, no copy"
    assert not list((ROOT / "platforms" / "rocm").rglob("*.cuh"))
    assert not (PACKAGE / "kernels.py").exists(), "the CUDA glue is installed at build time, not copied"


def test_hip_platform_macros_only_in_the_portability_header():
    if not (ROOT / ".git").exists() or subprocess.run(["git", "--version"], capture_output=True).returncode:
        pytest.skip("needs a git checkout")
    out = subprocess.run(
        ["git", "grep", "-n", "__HIP_PLATFORM", "--", "*.h", "*.cuh", "*.cu", "*.cpp", "*.hpp", "*.txt", "*.cmake"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    ).stdout
    files = {line.split(":", 1)[0] for line in out.splitlines()}
    assert files <= {"shared/include/bnb/hip_compat.h"}, out


def test_kernels_never_assume_a_warp_of_32():
    for src in (ROOT / "platforms" / "cuda" / "src").glob("*.cu"):
        text = src.read_text()
        for pattern in (r"__shfl\w*\(", r"\bwarpSize\b", r"threadIdx\.x\s*[%/&]\s*32\b", r">>\s*5\b"):
            assert not re.search(pattern, text), f"{src.name}: {pattern} (use bnb/gpu_portability.h)"


# ---- an installed wheel -------------------------------------------------------------------------


def test_installed_wheel_describes_its_libraries():
    installed = pytest.importorskip("bitsandbytes_rocm")
    info = installed.build_info()
    assert info["platform"] == "rocm" and info["version"] == bitsandbytes.__version__
    assert info["rocm_majors"], "a wheel holds at least one kernel library"
    for major, lib in info["libraries"].items():
        assert lib["library"] == f"libbitsandbytes_rocm{major}.so"
        assert lib["rocm_archs"] and all(a.startswith("gfx") for a in lib["rocm_archs"])


def test_installed_wheel_registers_under_a_rocm_torch(monkeypatch):
    """With torch.version.hip faked to the wheel's ROCm major: _C picks _C_rocm<major>, register()
    binds every op, and CPU tensors are refused before any native call."""
    import torch

    installed = pytest.importorskip("bitsandbytes_rocm")
    major = installed.build_info()["rocm_majors"][0]
    monkeypatch.setattr(torch.version, "hip", f"{major}.0.0-fake", raising=False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    for name in [n for n in sys.modules if n.startswith("bitsandbytes_rocm.")]:
        monkeypatch.delitem(sys.modules, name)
    from bitsandbytes_rocm import _C, kernels

    assert json.loads(_C.build_info())["rocm_major"] == major
    registered = {}
    installed.register(lambda op, fn: registered.setdefault(op, fn))
    assert {"quantize_4bit", "gemv_4bit", "int8_linear_matmul", "optimizer_update_8bit_blockwise"} <= set(registered)
    a = torch.zeros(64, dtype=torch.float16)
    with pytest.raises(RuntimeError, match="bitsandbytes_rocm: A must be on a CUDA device"):
        kernels.quantize_4bit(a, 64, "nf4", torch.uint8)
    with pytest.raises(RuntimeError, match="must be on a CUDA device"):
        registered["int8_linear_matmul"](torch.zeros(32, 16, dtype=torch.int8), torch.zeros(8, 16, dtype=torch.int8))
