"""Spec §11: `python -m bitsandbytes` backend diagnostics and the BNB_CUDA_VERSION /
BNB_ROCM_VERSION override, checked on values (a GPU runtime is simulated where needed)."""

from __future__ import annotations

import copy

import pytest
import torch

from bitsandbytes import __main__ as main_mod
from bitsandbytes import cextension, cuda_specs
from bitsandbytes.cuda_specs import CUDASpecs

RULE = "=" * 60


@pytest.fixture(scope="module")
def cpu_report():
    report = main_mod.collect(run_selftest=False)
    report["devices"] = {"cpu": "CPU"}  # the host as a CPU-only one, whatever this machine has
    return report


def _after_header(out: str) -> list[str]:
    lines = out.splitlines()
    return lines[lines.index(RULE) + 1 :]


def test_cpu_only_report_says_the_cpu_library_loaded(cpu_report, capsys):
    report = copy.deepcopy(cpu_report)
    for rec in report["platforms"]:
        if rec["platform"] == "cpu":
            rec["status"] = "loaded"
    main_mod.print_report(report)
    assert _after_header(capsys.readouterr().out)[0] == (
        "No CUDA, ROCm, or XPU detected; CPU library loaded successfully."
    )


def test_cpu_only_report_says_the_cpu_library_failed(cpu_report, capsys):
    report = copy.deepcopy(cpu_report)
    report["platforms"] = [r for r in report["platforms"] if r["platform"] != "cpu"]
    main_mod.print_report(report)
    assert _after_header(capsys.readouterr().out)[0] == "No CUDA, ROCm, or XPU detected; CPU library failed to load."


@pytest.mark.parametrize("status", ["skipped", "failed", "missing"])
def test_cpu_only_report_reads_the_cpu_records_status(cpu_report, capsys, status):
    """A CPU wheel that is installed but not serving (excluded by BNB_PLATFORMS, failed to import,
    wrong version) did not load: the line says so."""
    report = copy.deepcopy(cpu_report)
    cpu = {"platform": "cpu", "device_type": "cpu", "status": status, "reason": "simulated"}
    report["platforms"] = [r for r in report["platforms"] if r["platform"] != "cpu"]
    report["platforms"].append({"distribution": None, "version": None, "build_info": {}, "fix": None, **cpu})
    main_mod.print_report(report)
    assert _after_header(capsys.readouterr().out)[0] == "No CUDA, ROCm, or XPU detected; CPU library failed to load."


@pytest.fixture
def simulated_cuda(monkeypatch, cpu_report):
    monkeypatch.setattr(torch.version, "hip", None)
    monkeypatch.delenv("BNB_CUDA_VERSION", raising=False)
    monkeypatch.setattr(cuda_specs, "get_cuda_specs", lambda: CUDASpecs((8, 6), "126", (12, 6)))
    monkeypatch.setattr(cextension, "_find_cuda_libs", lambda prefix, is_hip: {})
    report = copy.deepcopy(cpu_report)
    report["devices"] = {"cpu": "CPU", "cuda": "NVIDIA A10 (simulated)"}
    return report


def test_cuda_report_shows_runtime_and_library(simulated_cuda, capsys):
    main_mod.print_backend_diagnostics(simulated_cuda)
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0] == "PyTorch settings found: CUDA_VERSION=12.6, Highest Compute Capability: (8, 6)."
    assert "libbitsandbytes_cuda126" in out and "No CUDA, ROCm, or XPU detected" not in out


def test_cuda_report_survives_a_malformed_override(simulated_cuda, monkeypatch, capsys):
    monkeypatch.setenv("BNB_CUDA_VERSION", "12.4")
    main_mod.print_backend_diagnostics(simulated_cuda)
    out = capsys.readouterr().out
    assert out.startswith("Kernel library selection failed: BNB_CUDA_VERSION='12.4'")
    assert "digits only" in out


@pytest.mark.parametrize("hip,variable", [(None, "BNB_CUDA_VERSION"), ("7.2.0", "BNB_ROCM_VERSION")])
@pytest.mark.parametrize("value", ["\u00b2", "\u0661\u0662\u0664", "\uff11\uff12\uff14"])  # ², Arabic-Indic, fullwidth
def test_override_takes_ascii_digits_only(monkeypatch, hip, variable, value):
    assert value.isdigit()  # what str.isdigit() alone would let through
    monkeypatch.setattr(torch.version, "hip", hip)
    monkeypatch.setenv(variable, value)
    monkeypatch.setattr(cextension, "_find_cuda_libs", lambda prefix, is_hip: {})
    with pytest.raises(RuntimeError, match=f"{variable}.*digits only"):
        cextension.get_cuda_bnb_library_path(CUDASpecs((8, 6), "72" if hip else "126", (7, 2) if hip else (12, 6)))


@pytest.mark.parametrize("count", [1, 2])
def test_runtime_library_count_line_only_for_several(monkeypatch, tmp_path, capsys, count):
    """One runtime library found is listed alone; several are announced with their count first."""
    from bitsandbytes.diagnostics import cuda as dcuda

    env = {}
    for i in range(count):
        d = tmp_path / f"toolkit{i}"
        d.mkdir()
        (d / f"libcudart.so.1{i}").write_bytes(b"")
        env[f"MY_TOOLKIT{i}"] = str(d)
    monkeypatch.setattr(dcuda.os, "environ", env)
    monkeypatch.setattr(dcuda, "CUDA_RUNTIME_LIB_PATTERNS", ("libcudart*.so*",))
    dcuda.print_runtime_diagnostics()
    lines = capsys.readouterr().out.splitlines()
    found = [f"* Found runtime library: {tmp_path / f'toolkit{i}' / f'libcudart.so.1{i}'}" for i in range(count)]
    header = ["Found 2 runtime libraries; the first on the loader path wins:"] if count > 1 else []
    assert lines == header + found
