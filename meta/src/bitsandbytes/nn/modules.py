"""Quantized parameters and layers: 4-bit (NF4/FP4) and LLM.int8() linear layers, embeddings.

Class names, constructor signatures, instance ``__dict__`` keys and state-dict layouts follow the
established release exactly: transformers, peft and accelerate depend on all of them.

The code lives in modules named for what they hold: :mod:`._params` (``Params4bit``),
:mod:`._int8params` (``Int8Params``), :mod:`.linear4bit`, :mod:`.linear8bit` and :mod:`.embedding`. This module keeps
every name it held before that split, and the moved classes and functions report it as their
``__module__``: user code, pickles (``_rebuild_params4bit``, ``_rebuild_int8params``, whole pickled
models) and the established release's tests name them ``bitsandbytes.nn.modules.<name>``.
"""

from __future__ import annotations

import copy  # noqa: F401  (names this module held before the split stay reachable here)
import logging
import sys  # noqa: F401
from typing import Any, TypeVar  # noqa: F401

import torch  # noqa: F401
import torch.nn.functional as torchF  # noqa: F401
from torch import nn

from .. import functional as F  # noqa: F401
from ..autograd._functions import MatmulLtState, matmul, matmul_4bit  # noqa: F401
from ..functional import QuantState  # noqa: F401
from ..utils import INVERSE_LINEAR_8BIT_WEIGHTS_FORMAT_MAPPING, OutlierTracer  # noqa: F401
from ._int8params import Int8Params, _rebuild_int8params  # noqa: F401
from ._params import (  # noqa: F401
    _DTYPE_GETTER,
    NotQuantizedError,
    Params4bit,
    _check_device_has_kernels,
    _check_fsdp1_flatten,
    _rebuild_params4bit,
)
from .embedding import (  # noqa: F401
    Embedding,
    Embedding4bit,
    Embedding8bit,
    EmbeddingFP4,
    EmbeddingNF4,
    StableEmbedding,
    _register_optim_override,
)
from .linear4bit import (  # noqa: F401
    Linear4bit,
    LinearFP4,
    LinearNF4,
    _bias_in,
    _is_dtensor,
    fix_4bit_weight_quant_state_from_module,
)
from .linear8bit import Linear8bitLt, OutlierAwareLinear, maybe_rearrange_weight

T = TypeVar("T", bound=nn.Module)

_QUANT_STATE_KEYS = ("absmax", "quant_map", "nested_absmax", "nested_quant_map")

logger = logging.getLogger(__name__)
"""The established release reports slow configurations on this logger (``bitsandbytes.nn.modules``)."""

__all__ = [
    "Embedding",
    "Embedding4bit",
    "Embedding8bit",
    "EmbeddingFP4",
    "EmbeddingNF4",
    "Int8Params",
    "Linear4bit",
    "Linear8bitLt",
    "LinearFP4",
    "LinearNF4",
    "OutlierAwareLinear",
    "Params4bit",
    "StableEmbedding",
    "fix_4bit_weight_quant_state_from_module",
    "maybe_rearrange_weight",
]

# The moved classes and functions keep this module as their ``__module__``: pickles and reprs name them as before.
for _name in (*__all__, "NotQuantizedError", "_rebuild_params4bit", "_rebuild_int8params"):
    globals()[_name].__module__ = __name__
del _name
