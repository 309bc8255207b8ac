"""bitsandbytes: k-bit quantization for PyTorch (8-bit optimizers, LLM.int8(), 4-bit QLoRA).

This meta-package holds the one copy of the public API and the op interface. At import it
registers the pure-PyTorch reference kernels for every device, then loads the platform wheel
that matches each device torch can see (see ``bitsandbytes._platforms``).
"""

from __future__ import annotations

import importlib.metadata

import torch

from . import (
    _ops,
    _platforms,
    optim,  # noqa: E402,F401  (bitsandbytes.optim, spec §8)
)
from ._version import __version__
from .backends.reference import KERNELS as _REFERENCE_KERNELS

_REFERENCE_LIBRARY = torch.library.Library(_ops.NAMESPACE, "IMPL")
for _name, _fn in _REFERENCE_KERNELS.items():
    _ops.impl(_REFERENCE_LIBRARY, _name, None, _fn)

# One scan of the installed distributions' entry points serves both groups.
_ENTRY_POINTS = importlib.metadata.entry_points()
_LOADED = _platforms.load(entry_points=_ENTRY_POINTS.select(group=_platforms.ENTRY_POINT_GROUP))
_platforms.load_out_of_tree_backends(_ENTRY_POINTS.select(group=_platforms.BACKEND_ENTRY_POINT_GROUP))

features = {"multi_backend"}
"""Capability flags read by accelerate, transformers and diffusers."""

supported_torch_devices = {"cpu", "cuda", "xpu", "hpu", "npu", "mps"}
"""Device types the API serves (the reference kernels run on any of them)."""

# The public API (after the kernels are registered). None of these import scipy or transformers.
from . import autograd, functional, nn, utils  # noqa: E402
from .autograd._functions import MatmulLtState, matmul, matmul_4bit  # noqa: E402
from .nn import modules  # noqa: E402, F401  (the established release exposes bnb.modules)

_LAZY_MODULES = frozenset({"cextension", "consts", "cuda_specs", "diagnostics"})


def __getattr__(name: str):
    """``bitsandbytes.cextension`` & co. (spec §11) are imported on first use, so that they cost
    ``import bitsandbytes`` nothing."""
    if name in _LAZY_MODULES:
        return importlib.import_module(f"{__name__}.{name}")
    if name == "adam":
        return optim.adam
    if name == "default_ops":  # the kernels every device falls back to
        return importlib.import_module(f"{__name__}.backends.reference")
    if name == "cpu_ops":  # the kernels registered for the CPU: the CPU wheel's, or the reference
        cpu = [r for r in _LOADED.records if r.platform == "cpu" and r.status == "loaded"]
        return importlib.import_module("bitsandbytes_cpu" if cpu else f"{__name__}.backends.reference")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def platforms() -> list[dict]:
    """What the loader did: one record per platform wheel or present device, as dicts."""
    return [r.as_dict() for r in _LOADED.records]


def implementation(op: str, device_type: str) -> str:
    """Which implementation serves ``op`` (e.g. ``"quantize_4bit"``) on ``device_type``."""
    return _LOADED.implementation(op, device_type)


__all__ = [
    "MatmulLtState",
    "__version__",
    "autograd",
    "features",
    "functional",
    "implementation",
    "matmul",
    "matmul_4bit",
    "nn",
    "platforms",
    "supported_torch_devices",
    "utils",
]
