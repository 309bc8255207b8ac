"""bitsandbytes-cuda12x / bitsandbytes-cuda13x: native CUDA kernels for the ``torch.ops.bitsandbytes`` op interface.

The ``bitsandbytes`` meta-package finds this module through the ``bitsandbytes.platforms``
entry point (named ``cuda12x`` or ``cuda13x`` after the toolkit major it was built with), checks
``__version__``, ``OP_INTERFACE_VERSION`` and ``check_runtime``, then calls ``register``.

Importing this module loads no CUDA library: ``build_info()`` reads the JSON written at build
time, and the native module (which needs ``libcudart``) is imported by ``register()``.
"""

from __future__ import annotations

import functools
import json
import pathlib
from collections.abc import Callable
from typing import Any

from ._version import __version__

DEVICE_TYPE = "cuda"
OP_INTERFACE_VERSION = 1
"""The op-interface version these kernels implement (see bitsandbytes._ops)."""


@functools.cache
def build_info() -> dict[str, Any]:
    """How the native library was built: platform (cuda12x/cuda13x), version, CUDA toolkit
    version and major, the architectures compiled (``sm_XX`` machine code, ``compute_XX`` PTX)."""
    return json.loads((pathlib.Path(__file__).parent / "build_info.json").read_text())


def _platform() -> str:
    return str(build_info()["platform"])


def check_runtime(runtime: Any) -> str | None:
    """Why this build cannot serve the running torch, or None when it can.

    A wheel built with CUDA 13 needs a torch built with CUDA 13 (and likewise for 12): the
    libraries torch brings (``libcudart.so.13``, ``libcublasLt.so.13``) are the ones this build
    links against.
    """
    if getattr(runtime, "hip_version", None):
        return f"{_platform()} is a CUDA build but torch is a ROCm build (HIP {runtime.hip_version})"
    cuda = getattr(runtime, "cuda_version", None)
    if not cuda:
        return f"{_platform()} needs a CUDA build of torch, but torch reports no CUDA runtime"
    major = int(str(cuda).split(".")[0])
    built = int(build_info()["cuda_major"])
    if major != built:
        return (
            f"built with CUDA {build_info()['cuda_toolkit']} ({_platform()}) but torch uses CUDA {cuda}; "
            f'install "bitsandbytes[cuda{major}x]"'
        )
    return None


def register(register_kernel: Callable[[str, Callable], None]) -> None:
    """Bind every CUDA kernel to its op: ``register_kernel(op_name, fn)`` per op the meta-package defines."""
    from bitsandbytes import _ops

    from .kernels import KERNELS

    for name, fn in KERNELS.items():
        if name in _ops.SCHEMAS:
            register_kernel(name, fn)


def paged_memory() -> tuple[Callable, Callable]:
    """CUDA managed memory for paged optimizers, as the meta-package takes it after ``register``:
    ``(allocate(shape, dtype), prefetch(tensor, device_index, to_cpu))``."""
    from . import paged

    return paged.empty_paged, paged.prefetch


def native_build_info() -> dict[str, Any]:
    """The build info compiled into libbitsandbytes_cuda (loads the native library)."""
    from . import _C

    return json.loads(_C.build_info())


__all__ = [
    "DEVICE_TYPE",
    "OP_INTERFACE_VERSION",
    "__version__",
    "build_info",
    "check_runtime",
    "native_build_info",
    "paged_memory",
    "register",
]

# The kernel submodules import ``bitsandbytes``, whose import runs the platform loader, which
# calls ``register()`` above. Were a submodule imported first (``import bitsandbytes_cuda.kernels``),
# the loader would run while that submodule is half-initialised and registration would fail; so
# the meta-package is imported here, once this package is complete and before any submodule is.
try:
    import bitsandbytes  # noqa: E402, F401
except ImportError:  # the wheel without the meta-package: build_info() etc. still work
    pass
