"""bitsandbytes-rocm: native kernels for AMD GPUs, for the ``torch.ops.bitsandbytes`` op interface.

The kernels are the CUDA platform's (platforms/cuda/src), compiled by hipcc; the Python glue
(``kernels.py``, ``paged.py``) is the CUDA platform's too, installed here at build time. A ROCm
build of torch reports its GPUs as ``cuda`` devices, so the meta-package loads this wheel (entry
point ``rocm``) for device type ``cuda`` when ``torch.version.hip`` is set.

The HIP runtime's soname changes with each ROCm major, so the wheel holds one kernel library per
ROCm major it was built for (``libbitsandbytes_rocm6.so`` + ``_C_rocm6``, ...), described by one
``build_info_rocm<major>.json`` each. ``check_runtime`` refuses a torch whose ROCm major has no
library; ``register`` loads the matching one and warns about GPUs the build has no code for.
Importing this module loads no HIP library.
"""

from __future__ import annotations

import functools
import json
import pathlib
import re
import types
import warnings
from collections.abc import Callable, Iterable
from typing import Any

from ._version import __version__

DEVICE_TYPE = "cuda"
OP_INTERFACE_VERSION = 1
"""The op-interface version these kernels implement (see bitsandbytes._ops)."""
ARCH_OPTION = "BNB_ROCM_ARCHS"
"""The CMake option (and environment variable of a pip build) that sets the gfx targets."""

_HERE = pathlib.Path(__file__).parent


class UnsupportedGPUWarning(UserWarning):
    """A GPU's architecture is not among those the kernel library was compiled for."""


@functools.cache
def libraries() -> dict[int, dict[str, Any]]:
    """The kernel libraries in this wheel: ROCm major -> that library's build info."""
    found: dict[int, dict[str, Any]] = {}
    for path in sorted(_HERE.glob("build_info_rocm*.json")):
        info = json.loads(path.read_text())
        found[int(info["rocm_major"])] = info
    return found


@functools.cache
def build_info() -> dict[str, Any]:
    """How this wheel was built: its ROCm majors, and per library the HIP version and gfx targets."""
    libs = libraries()
    archs = sorted({a for info in libs.values() for a in info.get("rocm_archs", [])})
    return {
        "platform": "rocm",
        "version": __version__,
        "abi_version": next(iter(libs.values()), {}).get("abi_version"),
        "rocm_majors": sorted(libs),
        "rocm_archs": archs,
        "libraries": {str(major): info for major, info in sorted(libs.items())},
    }


def hip_major(hip_version: str | None) -> int | None:
    """The major of a ``torch.version.hip`` string such as ``"6.4.43482-0f2d60242"``."""
    m = re.match(r"\s*(\d+)", str(hip_version or ""))
    return int(m.group(1)) if m else None


def check_runtime(runtime: Any) -> str | None:
    """Why this wheel cannot serve the running torch, or None when it can."""
    hip = getattr(runtime, "hip_version", None)
    if not hip:
        cuda = getattr(runtime, "cuda_version", None)
        kind = f"a CUDA build (CUDA {cuda})" if cuda else "a build without ROCm"
        return f"bitsandbytes-rocm needs a ROCm build of torch, but torch is {kind}"
    major = hip_major(hip)
    have = sorted(libraries())
    if not have:
        return "this bitsandbytes-rocm wheel holds no kernel library (build_info_rocm*.json missing)"
    if major not in have:
        built = ", ".join(f"ROCm {m} ({libraries()[m].get('hip_version', '?')})" for m in have)
        return (
            f"torch uses ROCm {hip} but this bitsandbytes-rocm has kernel libraries for {built} only; "
            f"install a bitsandbytes-rocm built for ROCm {major} (or build it from source with ROCm {major})"
        )
    return None


def _base_arch(name: str) -> str:
    """``gfx90a:sramecc+:xnack-`` -> ``gfx90a`` (code objects are chosen by the processor name)."""
    return str(name).split(":", 1)[0].strip()


def unsupported_gpus(gpu_archs: Iterable[str], built: Iterable[str]) -> list[tuple[int, str]]:
    """(index, arch) of every GPU whose architecture is not among ``built``."""
    have = {_base_arch(a) for a in built}
    return [(i, _base_arch(a)) for i, a in enumerate(gpu_archs) if _base_arch(a) not in have]


def gpu_archs(torch_module: Any = None) -> list[str]:
    """The gfx name of every visible GPU, through torch (``gcnArchName``)."""
    if torch_module is None:
        import torch as torch_module
    count = torch_module.cuda.device_count()
    return [str(getattr(torch_module.cuda.get_device_properties(i), "gcnArchName", "")) for i in range(count)]


def warn_unsupported_gpus(archs: Iterable[str], major: int) -> list[tuple[int, str]]:
    """Warn once per GPU whose gfx target the ROCm ``major`` library was not compiled for."""
    built = libraries()[major].get("rocm_archs", [])
    missing = unsupported_gpus(archs, built)
    for index, arch in missing:
        warnings.warn(
            f"bitsandbytes-rocm: GPU {index} is {arch or 'of unknown architecture'}, which "
            f"libbitsandbytes_rocm{major}.so has no code for (built for {', '.join(built)}); its kernels "
            f"will fail on that GPU. Rebuild with {ARCH_OPTION} including {arch}, e.g. "
            f'{ARCH_OPTION}="{";".join([*built, arch])}" pip install --no-binary bitsandbytes-rocm bitsandbytes-rocm',
            UnsupportedGPUWarning,
            stacklevel=2,
        )
    return missing


def torch_runtime(torch_module: Any = None) -> Any:
    """The running torch's build, as ``check_runtime`` reads it (``hip_version``, ``cuda_version``)."""
    if torch_module is None:
        import torch as torch_module
    version = torch_module.version
    return types.SimpleNamespace(hip_version=getattr(version, "hip", None), cuda_version=getattr(version, "cuda", None))


def _int8_linear_matmul_with_int_mm(native: Callable) -> Callable:
    """int8 A @ B.T through torch._int_mm (hipBLASLt) where its shape rules hold; else the native kernel."""
    import torch

    from . import kernels

    def int8_linear_matmul(A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
        kernels._check_int8_matmul(A, B)
        K, N = A.shape[-1], B.shape[0]
        m = A.numel() // K if K else 0
        if m > 16 and K % 8 == 0 and N % 8 == 0 and K >= 16:
            try:
                out = torch._int_mm(A.reshape(m, K).contiguous(), B.contiguous().t())
                return out.reshape(*A.shape[:-1], N)
            except RuntimeError:  # a shape or layout this torch's hipBLASLt path refuses
                pass
        return native(A, B)

    return int8_linear_matmul


def register(register_kernel: Callable[[str, Callable], None]) -> None:
    """Bind every kernel to its op: ``register_kernel(op_name, fn)`` per op the meta-package defines."""
    import torch

    from bitsandbytes import _ops

    problem = check_runtime(torch_runtime(torch))
    if problem:
        raise RuntimeError(problem)
    warn_unsupported_gpus(gpu_archs(torch), hip_major(torch.version.hip))
    from .kernels import KERNELS

    kernels = dict(KERNELS)
    kernels["int8_linear_matmul"] = _int8_linear_matmul_with_int_mm(KERNELS["int8_linear_matmul"])
    for name, fn in kernels.items():
        if name in _ops.SCHEMAS:
            register_kernel(name, fn)


def paged_memory() -> tuple[Callable, Callable]:
    """HIP managed memory for paged optimizers (the shared ``paged.py``), as the meta-package takes
    it after ``register``: ``(allocate(shape, dtype), prefetch(tensor, device_index, to_cpu))``."""
    from . import paged

    return paged.empty_paged, paged.prefetch


def native_build_info() -> dict[str, Any]:
    """The build info compiled into the kernel library torch's ROCm major uses (loads it)."""
    from . import _C

    return json.loads(_C.build_info())


__all__ = [
    "ARCH_OPTION",
    "DEVICE_TYPE",
    "OP_INTERFACE_VERSION",
    "UnsupportedGPUWarning",
    "__version__",
    "build_info",
    "check_runtime",
    "gpu_archs",
    "hip_major",
    "libraries",
    "native_build_info",
    "paged_memory",
    "register",
    "torch_runtime",
    "unsupported_gpus",
    "warn_unsupported_gpus",
]

# The kernel submodules import ``bitsandbytes``, whose import runs the platform loader, which
# calls ``register()`` above. Were a submodule imported first (``import bitsandbytes_rocm.kernels``),
# the loader would run while that submodule is half-initialised and registration would fail; so
# the meta-package is imported here, once this package is complete and before any submodule is.
try:
    import bitsandbytes  # noqa: E402, F401
except ImportError:  # the wheel without the meta-package: build_info() etc. still work
    pass
