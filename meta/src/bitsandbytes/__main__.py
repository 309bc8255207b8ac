"""``python -m bitsandbytes``: what was detected and loaded, which kernel serves each op, and a
self-test per device (round trips checked against the reference kernels). Exit status 1 when a
check fails. ``--json`` prints the same as one JSON object.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import json
import platform
import sys
from typing import Any

import torch

import bitsandbytes

from . import _ops, _platforms, _selftest

RELATED = ("accelerate", "diffusers", "numpy", "pip", "peft", "safetensors", "transformers", "triton", "trl")


def _version_of(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not found"


def _explain_skips(records: list[dict[str, Any]], runtime: Any) -> list[dict[str, Any]]:
    """A wheel that is not serving and names no fix: ask it why and what fixes it, through its
    optional ``explain(runtime) -> (why, fix)`` (bitsandbytes-xpu: no XPU device, or no usable
    Triton; bitsandbytes-hpu: the missing Gaudi software). Only the report does this; importing bitsandbytes never imports such a wheel."""
    eps = {ep.name: ep for ep in importlib.metadata.entry_points(group=_platforms.ENTRY_POINT_GROUP)}
    for rec in records:
        ep = eps.get(rec["platform"])
        if rec["status"] == "loaded" or rec["fix"] or ep is None:
            continue
        try:
            module = importlib.import_module(ep.module)
            explain = getattr(module, "explain", None)
            if explain is None:
                continue
            why, fix = explain(runtime)
            rec["build_info"] = rec["build_info"] or dict(module.build_info())
        except Exception as exc:  # the report must not fail on a broken wheel
            rec["reason"] += f" (explain() failed: {exc!r})"
            continue
        rec["reason"], rec["fix"] = why or rec["reason"], fix
    return records


def collect(run_selftest: bool = True) -> dict[str, Any]:
    """Everything the report shows, as plain data."""
    runtime = bitsandbytes._LOADED.runtime
    report: dict[str, Any] = {
        "bitsandbytes": bitsandbytes.__version__,
        "op_interface_version": _ops.OP_INTERFACE_VERSION,
        "platform": platform.platform(),
        "libc": " ".join(platform.libc_ver()) if sys.platform.startswith("linux") else None,
        "python": platform.python_version(),
        "torch": {
            "version": torch.__version__,
            "cuda": torch.version.cuda,
            "hip": getattr(torch.version, "hip", None),
            "xpu": getattr(torch.version, "xpu", None),
        },
        "related_packages": {name: _version_of(name) for name in RELATED},
        "devices": dict(runtime.devices),
        "platforms": _explain_skips(bitsandbytes.platforms(), runtime),
        "implementations": {
            device: {op: bitsandbytes.implementation(op, device) for op in _ops.OP_NAMES} for device in runtime.devices
        },
    }
    if run_selftest:
        report["selftest"] = {device: _selftest.run(device) for device in runtime.devices}
    return report


def passed(report: dict[str, Any]) -> bool:
    """True when every self-test check on every device passed."""
    return all(c["ok"] for checks in report.get("selftest", {}).values() for c in checks)


def print_environment(report: dict[str, Any]) -> None:
    """The report's header, laid out as the established release prints it."""
    print(f" bitsandbytes v{report['bitsandbytes']} ".center(60, "="))
    print(f"Platform: {report['platform']}")
    if report["libc"]:
        print(f"  libc: {report['libc']}")
    print(f"Python: {report['python']}")
    t = report["torch"]
    print(f"PyTorch: {t['version']}")
    print(f"  CUDA: {t['cuda'] or 'N/A'}")
    print(f"  HIP: {t['hip'] or 'N/A'}")
    print(f"  XPU: {t['xpu'] or 'N/A'}")
    print("Related packages:")
    for name, version in report["related_packages"].items():
        print(f"  {name}: {version}")
    print("=" * 60)


def print_backend_diagnostics(report: dict[str, Any]) -> None:
    """What follows the header in the established release's report (spec §11.2): with a CUDA or
    ROCm GPU, the runtime version, compute capability and the kernel library that fits them;
    on a host with no CUDA, ROCm or XPU device, one line saying whether the CPU library loaded."""
    devices = report["devices"]
    if "cuda" in devices:
        from .cuda_specs import get_cuda_specs
        from .diagnostics.cuda import print_diagnostics

        specs = get_cuda_specs()
        if specs is None:
            print("PyTorch reports a GPU but not its compute capability or runtime version.")
            return
        try:
            print_diagnostics(specs)
        except RuntimeError as exc:  # e.g. a BNB_CUDA_VERSION / BNB_ROCM_VERSION that is not digits
            print(f"Kernel library selection failed: {exc}")
    elif "xpu" not in devices:
        cpu = next((r for r in report["platforms"] if r["platform"] == "cpu"), None)
        status = "loaded successfully" if cpu is not None and cpu["status"] == "loaded" else "failed to load"
        print(f"No CUDA, ROCm, or XPU detected; CPU library {status}.")


def print_report(report: dict[str, Any]) -> None:
    """The human-readable report."""
    print_environment(report)
    print_backend_diagnostics(report)
    print(f"Op interface version: {report['op_interface_version']}")
    print("Devices:")
    for device, desc in report["devices"].items():
        print(f"  {device}: {desc}")
    print("Platform wheels:")
    for rec in report["platforms"]:
        where = f"{rec['distribution']} {rec['version']}" if rec["distribution"] else f"bitsandbytes-{rec['platform']}"
        line = f"  [{rec['status']}] {where} -> {rec['device_type']}"
        if rec["reason"]:
            line += f": {rec['reason']}"
        print(line)
        if rec["build_info"]:
            print(f"      build: {json.dumps(rec['build_info'], sort_keys=True)}")
        if rec["status"] != "loaded" and rec["fix"]:
            print(f"      fix: {rec['fix']}")
    print("Kernels (op: implementation per device):")
    devices = list(report["implementations"])
    for op in _ops.OP_NAMES:
        cells = ", ".join(f"{d}={report['implementations'][d][op]}" for d in devices)
        print(f"  {op}: {cells}")
    for device, checks in report.get("selftest", {}).items():
        print(f"Self-test on {device}:")
        for c in checks:
            print(
                f"  {'PASS' if c['ok'] else 'FAIL'} {c['name']} [{c['implementation']}]"
                + (f": {c['detail']}" if c["detail"] else "")
            )
    if "selftest" in report:
        print("SUCCESS! Every self-test passed." if passed(report) else "FAILED: see the checks above.")


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m bitsandbytes``."""
    parser = argparse.ArgumentParser(prog="python -m bitsandbytes", description=__doc__)
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the report")
    parser.add_argument("--no-selftest", action="store_true", help="skip the per-device self-test")
    args = parser.parse_args(argv)
    report = collect(run_selftest=not args.no_selftest)
    if args.json:
        print(json.dumps(report, indent=2, default=str))
    else:
        print_report(report)
    return 0 if passed(report) else 1


if __name__ == "__main__":
    sys.exit(main())
