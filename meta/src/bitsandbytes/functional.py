"""The functional API: quantization states, 4-bit / 8-bit (de)quantization, LLM.int8() primitives.

Every tensor computation goes through the ``torch.ops.bitsandbytes`` ops, so a loaded platform
wheel serves it; without one the reference kernels do. Code books are built in Python.

This module holds the public surface and the handle stand-ins; the rest lives in private modules
named for what they hold (``_functional_codebooks``, ``_quant_state``, ``_functional_blockwise``,
``_functional_4bit``, ``_functional_int8``, ``_functional_optim``, ``_paging``).
Every name this module held before that split is still here, and the public classes and
functions report it as their ``__module__`` (pickles and reprs name ``bitsandbytes.functional``).
"""

from __future__ import annotations

import ctypes
import itertools  # noqa: F401  (names this module held before the split stay reachable here)
import json  # noqa: F401
import warnings  # noqa: F401
from typing import Any

import torch

from . import _checks  # noqa: F401
from ._functional_4bit import (  # noqa: F401
    _as_packed_bytes,
    _gemm_4bit,
    dequantize_4bit,
    dequantize_fp4,
    dequantize_nf4,
    gemv_4bit,
    quantize_4bit,
    quantize_fp4,
    quantize_nf4,
)
from ._functional_blockwise import _resolved_absmax, dequantize_blockwise, quantize_blockwise  # noqa: F401
from ._functional_codebooks import (  # noqa: F401
    _AF4_VALUES,
    _dynamic_code,
    create_dynamic_map,
    create_fp8_map,
    create_linear_map,
    create_normal_map,
    get_4bit_type,
    name2qmap,
)
from ._functional_int8 import (  # noqa: F401
    _deprecated,
    batched_igemm,
    check_matmul,
    igemm,
    int8_double_quant,
    int8_linear_matmul,
    int8_mm_dequant,
    int8_vectorwise_dequant,
    int8_vectorwise_quant,
)
from ._functional_optim import optimizer_update_8bit_blockwise, optimizer_update_32bit  # noqa: F401
from ._paging import (  # noqa: F401
    FIRST_CUDA_DEVICE,
    GlobalPageManager,
    _mul,
    elementwise_func,
    fill,
    get_paged,
    is_on_gpu,
    prefetch_tensor,
)
from ._quant_state import (  # noqa: F401
    _QUANT_STATE_DTYPES,
    QuantState,
    _dtype_from_name,
    _dtype_name,
    _int_item,
    _tensor_item,
    _unpack_quant_state_blob,
)
from ._singleton import Singleton
from .backends.reference import codebooks as _codebooks  # noqa: F401
from .utils import pack_dict_to_tensor, unpack_tensor_to_dict

C = 127.0
"""The int8 scale constant of LLM.int8()."""

name2qmap: dict[str, torch.Tensor]
"""Cache of named code books (``"dynamic"`` = the signed dynamic map, on first use): the dict that
``_functional_codebooks`` fills, imported above; annotated here as it was before the split."""

# --------------------------------------------------------------------------------------------
# Singletons kept for API compatibility


class CUBLAS_Context(Singleton):  # noqa: N801  (public name)
    """Per-device cuBLAS handle cache (singleton). This build owns no handles: ``get_context`` returns None."""

    _instance: CUBLAS_Context | None = None

    def initialize(self) -> None:
        """An empty cache."""
        self.context: dict[int, Any] = {}

    def get_context(self, device: torch.device) -> Any:
        """The cached handle for ``device`` (None: kernels manage their own handles)."""
        return self.context.setdefault(device.index if device.index is not None else 0, None)


def get_ptr(A: torch.Tensor | None) -> ctypes.c_void_p | None:
    """The data pointer of ``A`` as a ``ctypes.c_void_p`` (None for None)."""
    if A is None:
        return None
    return ctypes.c_void_p(A.data_ptr())


def has_avx512bf16() -> bool:
    """Whether the CPU-specific packed 4-bit layout is used. This build never re-lays out weights."""
    return False


class _NoNativeLibrary:
    """Stand-in for the established release's ``lib`` handle: kernels live behind ``torch.ops.bitsandbytes``."""

    def __getattr__(self, name: str) -> Any:
        def missing(*args: Any, **kwargs: Any) -> None:
            raise RuntimeError(
                f"bitsandbytes: there is no ctypes library handle in this build (lib.{name}()); "
                "kernels are reached through torch.ops.bitsandbytes"
            )

        return missing


lib = _NoNativeLibrary()
"""Compatibility handle; calling any attribute raises RuntimeError."""


__all__ = [
    "C",
    "CUBLAS_Context",
    "GlobalPageManager",
    "QuantState",
    "create_dynamic_map",
    "create_fp8_map",
    "create_linear_map",
    "create_normal_map",
    "dequantize_4bit",
    "dequantize_blockwise",
    "dequantize_fp4",
    "dequantize_nf4",
    "elementwise_func",
    "fill",
    "gemv_4bit",
    "get_4bit_type",
    "get_paged",
    "get_ptr",
    "batched_igemm",
    "check_matmul",
    "igemm",
    "lib",
    "has_avx512bf16",
    "int8_double_quant",
    "int8_linear_matmul",
    "int8_mm_dequant",
    "int8_vectorwise_dequant",
    "int8_vectorwise_quant",
    "is_on_gpu",
    "name2qmap",
    "pack_dict_to_tensor",
    "prefetch_tensor",
    "quantize_4bit",
    "quantize_blockwise",
    "quantize_fp4",
    "quantize_nf4",
    "unpack_tensor_to_dict",
]

# The public names keep this module as their ``__module__``: pickles and reprs name them as before.
_SPLIT_OUT = (
    "_functional_codebooks",
    "_quant_state",
    "_functional_blockwise",
    "_functional_4bit",
    "_functional_int8",
    "_paging",
)
for _name in __all__:
    if getattr(globals()[_name], "__module__", "").removeprefix("bitsandbytes.") in _SPLIT_OUT:
        globals()[_name].__module__ = __name__
del _name, _SPLIT_OUT
