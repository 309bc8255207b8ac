"""bitsandbytes-cpu: native CPU kernels for the ``torch.ops.bitsandbytes`` op interface.

The ``bitsandbytes`` meta-package finds this module through the ``bitsandbytes.platforms``
entry point, checks ``__version__`` and ``OP_INTERFACE_VERSION``, then calls ``register``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from . import _C
from ._version import __version__

PLATFORM = "cpu"
DEVICE_TYPE = "cpu"
OP_INTERFACE_VERSION = 2
"""The op-interface version these kernels implement (see bitsandbytes._ops)."""


def build_info() -> dict[str, Any]:
    """How the native library was built (platform, version, compiler, ISA list, ABI version), and
    ``amx_usable``: whether the AMX path runs now (bitsandbytes_cpu.amx), ``amx_int8_usable``:
    whether the int8 GEMM of LLM.int8() runs on the AMX-INT8 tile unit (from 8 rows)."""
    return {**json.loads(_C.build_info()), "amx_usable": _C.amx_usable(), "amx_int8_usable": _C.amx_int8_usable()}


def isa() -> str:
    """The instruction set the native kernels use now (``scalar``, ``avx2``, ``avx512``, ``neon``)."""
    return _C.get_isa()


def set_isa(name: str) -> None:
    """Force the kernels' instruction set (``auto`` picks the best again); ValueError if ``name``
    is unknown or this CPU / build cannot run it. ``BNB_CPU_ISA`` sets it for a whole process."""
    _C.set_isa(name)


def register(register_kernel: Callable[[str, Callable], None]) -> None:
    """Bind every native CPU kernel to its op: ``register_kernel(op_name, fn)`` per op."""
    from . import prepared  # noqa: F401  (gives gemm_4bit and int8_mixed_scaled_mm their prepared runners)
    from .kernels import KERNELS
    from .kernels_int8 import KERNELS as INT8_KERNELS
    from .kernels_optim import KERNELS as OPTIM_KERNELS
    from .weight_matmul import KERNELS as WEIGHT_MATMUL_KERNELS

    error = _C.isa_env_error()
    if error:
        import os

        raise ValueError(f"bitsandbytes_cpu: {error} (BNB_CPU_ISA={os.environ.get('BNB_CPU_ISA')!r})")

    for name, fn in {**KERNELS, **INT8_KERNELS, **OPTIM_KERNELS, **WEIGHT_MATMUL_KERNELS}.items():
        register_kernel(name, fn)


__all__ = [
    "DEVICE_TYPE",
    "OP_INTERFACE_VERSION",
    "PLATFORM",
    "__version__",
    "build_info",
    "isa",
    "register",
    "set_isa",
]

# The kernel submodules import ``bitsandbytes``, whose import runs the platform loader, which
# calls ``register()`` above. Were a submodule imported first (``import bitsandbytes_cpu.kernels``),
# the loader would run while that submodule is half-initialised and registration would fail; so
# the meta-package is imported here, once this package is complete and before any submodule is.
try:
    import bitsandbytes  # noqa: E402, F401
except ImportError:  # the wheel without the meta-package: build_info() etc. still work
    pass
