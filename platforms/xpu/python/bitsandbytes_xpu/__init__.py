"""bitsandbytes-xpu: Triton kernels for Intel GPUs behind the ``torch.ops.bitsandbytes`` op interface.

The ``bitsandbytes`` meta-package finds this module through the ``bitsandbytes.platforms``
entry point ``xpu``, checks ``__version__``, ``OP_INTERFACE_VERSION`` and ``check_runtime`` (a
Triton new enough to compile the kernels), then calls ``register``. The wheel is pure Python:
its kernels are Triton (``@triton.jit``) compiled at first use by the Triton that torch's XPU
build brings (``pytorch-triton-xpu``, later ``triton-xpu``); it declares no dependency on torch
or Triton, so installing it never swaps either.

The same kernels run on CUDA tensors with the public ``triton`` package and on CPU tensors in
Triton's interpreter (``TRITON_INTERPRET=1``): ``host_kernels()`` is how the conformance suite
runs them without an Intel GPU. Importing this module imports neither Triton nor the kernels.
"""

from __future__ import annotations

import functools
import importlib.metadata
import re
from collections.abc import Callable
from typing import Any

from ._version import __version__

PLATFORM = "xpu"
DEVICE_TYPE = "xpu"
OP_INTERFACE_VERSION = 1
"""The op-interface version these kernels implement (see bitsandbytes._ops)."""

MIN_TRITON = (3, 1)
"""Oldest Triton the kernels need (tl.interleave, tl.sqrt_rn, tl.math.div_rn, enable_fp_fusion);
3.1 is the pytorch-triton-xpu of torch 2.5, the first torch release with XPU support built in."""

TRITON_DISTRIBUTIONS = ("pytorch-triton-xpu", "triton-xpu", "triton")
"""Distributions that provide the ``triton`` module, the XPU ones first."""

XPU_INDEX = "https://download.pytorch.org/whl/xpu"


def _triton_dist() -> tuple[str, str] | None:
    """(distribution, version) of the installed Triton, or None. Reads metadata only."""
    for dist in TRITON_DISTRIBUTIONS:
        try:
            return dist, importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def _version_tuple(version: str) -> tuple[int, ...]:
    """The release numbers of ``version``, at most three: '3.1.0+git12' is (3, 1, 0). A part counts
    by its leading digits, and a part with a suffix ends the release: '3.0rc1' is (3, 0), a
    pre-release of 3.0 (the digits of its suffix are no minor version), '3.0.post9' is (3, 0)."""
    parts = []
    for piece in version.split("+")[0].split(".")[:3]:
        digits = re.match(r"[0-9]*", piece).group()
        if not digits:
            break
        parts.append(int(digits))
        if len(digits) != len(piece):
            break
    return tuple(parts)


def _triton_fix() -> str:
    """The pip command that installs the Triton this torch was built with (torch's own pin when
    its metadata names one, as the XPU builds do), else the XPU Triton from PyTorch's index."""
    try:
        for req in importlib.metadata.requires("torch") or []:
            name = req.split(";")[0].strip()
            if "triton" in name.lower():
                return f'pip install "{name.replace(" ", "")}" --index-url {XPU_INDEX}'
    except importlib.metadata.PackageNotFoundError:
        pass
    minimum = ".".join(map(str, MIN_TRITON))
    return f'pip install "pytorch-triton-xpu>={minimum}" --index-url {XPU_INDEX}'


def triton_problem() -> str | None:
    """Why the installed Triton cannot compile these kernels (missing or too old), fix included; None when it can."""
    found = _triton_dist()
    minimum = ".".join(map(str, MIN_TRITON))
    if found is None:
        return f"Triton is not installed (torch's XPU build brings it); fix: {_triton_fix()}"
    dist, version = found
    if _version_tuple(version) < MIN_TRITON:
        return f"{dist} {version} is older than the {minimum} these kernels need; fix: {_triton_fix()}"
    return None


@functools.cache
def build_info() -> dict[str, Any]:
    """What serves the ops: Triton kernels compiled at first use, and the Triton found (metadata only)."""
    found = _triton_dist()
    return {
        "platform": PLATFORM,
        "version": __version__,
        "kernels": "triton",
        "triton": f"{found[0]} {found[1]}" if found else None,
        "min_triton": ".".join(map(str, MIN_TRITON)),
    }


def check_runtime(runtime: Any) -> str | None:
    """Why these kernels cannot serve the running torch, or None: a missing or too old Triton."""
    return triton_problem()


def explain(runtime: Any) -> tuple[str, str | None]:
    """(why this wheel is not serving, the fix) for ``python -m bitsandbytes``; ('', None) when it can."""
    devices = getattr(runtime, "devices", {})
    if "xpu" not in devices:
        import torch

        build = getattr(torch.version, "xpu", None)
        why = f"no xpu device present: torch {torch.__version__} sees no XPU device"
        why += " (no Intel GPU or driver found)" if build else " (not an XPU build of torch)"
        triton = build_info()["triton"] or "not installed"
        why += f"; Triton: {triton}"
        problem = triton_problem()
        fix = (
            "on a machine with an Intel GPU and its driver: "
            f"pip install torch --index-url {XPU_INDEX} (torch's XPU build brings its Triton)"
        )
        if build:  # an XPU build of torch: the driver is missing, or Triton is
            fix = problem.split("fix: ", 1)[1] if problem else "install the Intel GPU driver and its Level Zero runtime"
        return why, fix
    problem = triton_problem()
    if problem:
        why, fix = problem.split("; fix: ", 1)
        return why, fix
    return "", None


def register(register_kernel: Callable[[str, Callable], None]) -> None:
    """Bind every Triton kernel to its op: ``register_kernel(op_name, fn)`` per op."""
    from .kernels import KERNELS

    for name, fn in KERNELS.items():
        register_kernel(name, fn)


def host_kernels() -> dict[str, Callable]:
    """The same kernels as ``register`` binds, for tensors of another device: CPU tensors under
    ``TRITON_INTERPRET=1`` (set before Triton is imported), CUDA tensors with the public Triton."""
    from .kernels import KERNELS

    return dict(KERNELS)


__all__ = [
    "DEVICE_TYPE",
    "MIN_TRITON",
    "OP_INTERFACE_VERSION",
    "PLATFORM",
    "__version__",
    "build_info",
    "check_runtime",
    "explain",
    "host_kernels",
    "register",
    "triton_problem",
]

# The kernel submodules import ``bitsandbytes``, whose import runs the platform loader, which
# calls ``register()`` above. Were a submodule imported first (``import bitsandbytes_xpu.kernels``),
# the loader would run while that submodule is half-initialised and registration would fail; so
# the meta-package is imported here, once this package is complete and before any submodule is.
try:
    import bitsandbytes  # noqa: E402, F401
except ImportError:  # the wheel without the meta-package: build_info() etc. still work
    pass
