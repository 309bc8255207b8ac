"""bitsandbytes-hpu: Intel Gaudi kernels for the ``torch.ops.bitsandbytes`` op interface.

The ``bitsandbytes`` meta-package finds this module through the ``bitsandbytes.platforms`` entry
point ``hpu``, checks ``__version__``, ``OP_INTERFACE_VERSION`` and ``check_runtime``, then calls
``register``. The kernels are PyTorch tensor programs written for Gaudi's graph compiler (static
shapes, no host synchronisation; see ``kernels``) plus Gaudi's own NF4 dequantization op where
the runtime has it; nothing is compiled, so this is one pure-Python wheel.

Importing this module imports neither torch nor the Gaudi software.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from . import _gaudi
from ._gaudi import MIN_SOFTWARE, NIBBLE_ORDER_CHANGED, detect, parse_version, software_version
from ._version import __version__

PLATFORM = "hpu"
DEVICE_TYPE = "hpu"
OP_INTERFACE_VERSION = 1
"""The op-interface version these kernels implement (see bitsandbytes._ops)."""


def build_info() -> dict[str, Any]:
    """What this wheel is and what it found: platform, version, the Gaudi software version it
    needs and the one installed, and whether Gaudi's NF4 op will be used (and its nibble order)."""
    version = software_version()
    return {
        "platform": PLATFORM,
        "version": __version__,
        "kernels": "PyTorch tensor programs for Gaudi's graph compiler + torch.ops.hpu.dequantize_nf4",
        "gaudi_software_min": _gaudi.format_version(MIN_SOFTWARE),
        "gaudi_software": _gaudi.format_version(version),
        "nf4_nibbles_swapped": version is not None and version[:2] < NIBBLE_ORDER_CHANGED,
    }


def check_runtime(runtime: Any) -> str | None:
    """Why this wheel cannot serve the running torch, or None when it can: a Gaudi device must be
    usable (``habana_frameworks.torch`` imports, ``torch.hpu.is_available()``) and the Gaudi
    software (``habana-torch-plugin``) must be 1.21 or newer; the message names the fix."""
    ok, why = detect()
    if not ok:
        return why
    return _gaudi.check_software()


def explain(runtime: Any) -> tuple[str, str | None]:
    """(why this wheel is not serving, None) for ``python -m bitsandbytes``: the why names the
    missing Gaudi software and how to install it; ('', None) when a Gaudi device is usable."""
    if "hpu" in getattr(runtime, "devices", {}):
        return check_runtime(runtime) or "", None
    ok, why = detect()
    return ("" if ok else f"no hpu device present: {why}"), None


def kernel_table() -> dict[str, Callable]:
    """Op name -> HPU kernel (imports torch)."""
    from . import kernels as k
    from . import optim

    return {
        "quantize_4bit": k.quantize_4bit,
        "dequantize_4bit": k.dequantize_4bit,
        "dequantize_4bit.out": k.dequantize_4bit_out,
        "gemv_4bit": k.gemv_4bit,
        "gemv_4bit.out": k.gemv_4bit_out,
        "gemm_4bit": k.gemm_4bit,
        "quantize_blockwise": k.quantize_blockwise,
        "dequantize_blockwise": k.dequantize_blockwise,
        "dequantize_blockwise.out": k.dequantize_blockwise_out,
        "int8_vectorwise_quant": k.int8_vectorwise_quant,
        "int8_double_quant": k.int8_double_quant,
        "optimizer_update_32bit": optim.optimizer_update_32bit,
        "optimizer_update_8bit_blockwise": optim.optimizer_update_8bit_blockwise,
    }


def host_kernels() -> dict[str, Callable]:
    """The same kernels ``register()`` binds, for CPU tensors (the conformance suite's
    ``BNB_TEST_HOST_KERNELS=hpu``): the tensor programs run unchanged on any device."""
    return kernel_table()


def register(register_kernel: Callable[[str, Callable], None]) -> None:
    """Bind every HPU kernel to its op for the ``hpu`` device; the LLM.int8() matmul ops not
    listed in ``kernel_table()`` are served by the reference kernels (already static tensor programs)."""
    _gaudi.refresh()  # the Gaudi bridge is loaded by now: look for its NF4 op
    for name, fn in kernel_table().items():
        register_kernel(name, fn)


__all__ = [
    "DEVICE_TYPE",
    "MIN_SOFTWARE",
    "OP_INTERFACE_VERSION",
    "PLATFORM",
    "__version__",
    "build_info",
    "check_runtime",
    "detect",
    "explain",
    "host_kernels",
    "kernel_table",
    "parse_version",
    "register",
    "software_version",
]

# The kernel submodules import ``bitsandbytes``, whose import runs the platform loader, which
# calls ``register()`` above. Were a submodule imported first (``import bitsandbytes_hpu.kernels``),
# the loader would run while that submodule is half-initialised and registration would fail; so
# the meta-package is imported here, once this package is complete and before any submodule is.
try:
    import bitsandbytes  # noqa: E402, F401
except ImportError:  # the wheel without the meta-package: build_info() etc. still work
    pass
