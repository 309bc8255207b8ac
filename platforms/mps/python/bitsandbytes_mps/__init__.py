"""bitsandbytes-mps: Metal kernels for the ``torch.ops.bitsandbytes`` op interface on Apple GPUs.

The ``bitsandbytes`` meta-package finds this module through the ``bitsandbytes.platforms``
entry point, checks ``__version__``, ``OP_INTERFACE_VERSION`` and ``check_runtime``, then calls
``register``. The kernels ship as Metal source (``bnb_mps.metal``, joined at build time from the
Metal portability header, the shared kernel headers and the kernels) that
``torch.mps.compile_shader`` compiles on the first kernel call: importing this module and
registering compile nothing.

``host_kernels()`` runs the same source compiled as C++ on CPU tensors (the test harness, see
``_host.py``); the conformance suite uses it through ``BNB_TEST_HOST_KERNELS=mps``.
"""

from __future__ import annotations

import functools
import json
import pathlib
from collections.abc import Callable
from typing import Any

from ._version import __version__

PLATFORM = "mps"
DEVICE_TYPE = "mps"
OP_INTERFACE_VERSION = 1
"""The op-interface version these kernels implement (see bitsandbytes._ops)."""

MIN_TORCH = (2, 6)
"""torch.mps.compile_shader appeared in torch 2.6."""

KERNEL_OPS = (
    "quantize_4bit",
    "dequantize_4bit",
    "dequantize_4bit.out",
    "gemv_4bit",
    "gemv_4bit.out",
    "gemm_4bit",
    "quantize_blockwise",
    "dequantize_blockwise",
    "dequantize_blockwise.out",
    "optimizer_update_32bit",
    "optimizer_update_8bit_blockwise",
)
"""The ops bound to Metal kernels. The others (LLM.int8()) are the reference's torch ops, which
run on the mps device as they are."""

_HERE = pathlib.Path(__file__).resolve().parent


@functools.cache
def build_info() -> dict[str, Any]:
    """How the wheel was built: platform, version, how the kernels ship (Metal source)."""
    return json.loads((_HERE / "build_info.json").read_text())


def metal_source() -> str:
    """The Metal source the wheel ships (the text torch.mps.compile_shader compiles)."""
    return (_HERE / "bnb_mps.metal").read_text()


def _torch_version(version: str) -> tuple[int, int]:
    parts = version.split("+")[0].split(".")
    return int(parts[0]), int(parts[1])


def check_runtime(runtime: Any) -> str | None:
    """Why this build cannot serve the running torch, or None when it can: the kernels need
    ``torch.mps.compile_shader`` (torch 2.6 or newer) and an MPS device."""
    version = getattr(runtime, "torch_version", "0.0")
    if _torch_version(version) < MIN_TORCH:
        return (
            f"the Metal kernels are compiled by torch.mps.compile_shader, new in torch "
            f"{MIN_TORCH[0]}.{MIN_TORCH[1]}; torch {version} is older: pip install -U 'torch>=2.6'"
        )
    if "mps" not in getattr(runtime, "devices", {}):
        return "torch reports no MPS device (torch.backends.mps.is_available() is False)"
    return None


def _mps_compile(source: str) -> Any:
    import torch

    return torch.mps.compile_shader(source)


@functools.cache
def mps_kernels() -> Any:
    """The MetalKernels instance behind the registered mps kernels."""
    from .kernels import MetalKernels

    return MetalKernels("mps", _mps_compile, metal_source)


def kernel_table(kernels: Any) -> dict[str, Callable]:
    """Op name -> bound kernel of a MetalKernels instance."""
    return {op: getattr(kernels, op.replace(".", "_")) for op in KERNEL_OPS}


def register(register_kernel: Callable[[str, Callable], None]) -> None:
    """Bind every Metal kernel to its op: ``register_kernel(op_name, fn)`` per op."""
    for name, fn in kernel_table(mps_kernels()).items():
        register_kernel(name, fn)


@functools.cache
def host_kernels() -> dict[str, Callable]:
    """The same kernels, compiled as C++ by the host harness and run on CPU tensors (tests)."""
    from . import _host
    from .kernels import MetalKernels

    return kernel_table(MetalKernels("cpu", _host.host_library, metal_source))


__all__ = [
    "DEVICE_TYPE",
    "KERNEL_OPS",
    "OP_INTERFACE_VERSION",
    "PLATFORM",
    "__version__",
    "build_info",
    "check_runtime",
    "host_kernels",
    "metal_source",
    "register",
]

# The kernel submodules import ``bitsandbytes``, whose import runs the platform loader, which
# calls ``register()`` above. Were a submodule imported first (``import bitsandbytes_mps.kernels``),
# the loader would run while that submodule is half-initialised and registration would fail; so
# the meta-package is imported here, once this package is complete and before any submodule is.
try:
    import bitsandbytes  # noqa: E402, F401
except ImportError:  # the wheel without the meta-package: build_info() etc. still work
    pass
