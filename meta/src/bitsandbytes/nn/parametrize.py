"""Experimental: 4-bit quantization of arbitrary parameters through ``torch.nn.utils.parametrize``."""

from __future__ import annotations

from functools import partial
from typing import Any

import torch
import torch.nn.utils.parametrize as P
from torch import nn

from .. import functional as F
from ..functional import QuantState
from ._params import _quant_state_to


class Bnb4bitParametrization(nn.Module):
    """Parametrization whose forward dequantizes the packed 4-bit data it is given."""

    def __init__(self, quant_state: QuantState) -> None:
        super().__init__()
        self.quant_state = quant_state

    @torch.no_grad()
    def forward(self, quantized_param: torch.Tensor) -> torch.Tensor:
        """Dequantize ``quantized_param`` with the stored quant state (moved to its device first)."""
        qs = self.quant_state
        if qs.absmax.device != quantized_param.device:
            # The quant state is no parameter or buffer: Module.to() / to_empty() moved only the
            # packed data (the parametrization's ``original``); the state follows it here.
            _quant_state_to(qs, quantized_param.device)
        return F.dequantize_4bit(quantized_param, qs)


def _enable_parametrization_cache(module: nn.Module, inputs: Any) -> None:
    """Forward pre-hook: dequantize each parametrized weight once per forward (torch's cache)."""
    P._cache_enabled += 1


def _disable_parametrization_cache(module: nn.Module, inputs: Any, output: Any) -> None:
    """Forward hook (always called): close the cache window opened by the pre-hook.

    The counter is clamped at zero: the hook also runs when the forward raised before the
    pre-hook ran, and a negative counter would be truthy, so the cache would never be cleared."""
    P._cache_enabled = max(0, P._cache_enabled - 1)
    if not P._cache_enabled:
        P._cache = {}


def _parametrized_state_dict_post_hook(
    module: nn.Module, state_dict: dict, prefix: str, local_metadata: Any, *, param_name: str = "weight", **kwargs: Any
) -> None:
    """Save the packed data under ``<param_name>`` and its quant state beside it (as Linear4bit does)."""
    original = f"{prefix}parametrizations.{param_name}.original"
    if original not in state_dict:
        return
    state_dict[f"{prefix}{param_name}"] = state_dict.pop(original)
    parametrization = next(
        (m for m in module.parametrizations[param_name] if isinstance(m, Bnb4bitParametrization)), None
    )
    if parametrization is None:
        raise RuntimeError(f"bitsandbytes: {param_name!r} of {type(module).__name__} has no 4-bit parametrization")
    for k, v in parametrization.quant_state.as_dict(packed=True).items():
        state_dict[f"{prefix}{param_name}.{k}"] = v


def _register_parametrization_hooks(module: nn.Module, param_name: str) -> None:
    """The hooks of a 4-bit parametrized parameter: its state-dict form, and the dequantization
    cache around each forward.

    The closing hook is registered with ``always_call=True``: non-reentrant activation
    checkpointing stops its recomputation part-way through a forward once it has what the
    backward needs, and a plain forward hook would then be skipped, leaving the cache open
    (every dequantized weight kept alive) for the rest of training."""
    hook = partial(_parametrized_state_dict_post_hook, param_name=param_name)
    # torch < 2.5 has the same hook (same signature) only under its private name.
    register = getattr(module, "register_state_dict_post_hook", None) or module._register_state_dict_hook
    register(hook)
    module.register_forward_pre_hook(_enable_parametrization_cache)
    module.register_forward_hook(_disable_parametrization_cache, always_call=True)


def _register(module: nn.Module, param_name: str, packed: torch.Tensor, quant_state: QuantState) -> None:
    setattr(module, param_name, nn.Parameter(packed, requires_grad=False))
    P.register_parametrization(module, param_name, Bnb4bitParametrization(quant_state), unsafe=True)
    _register_parametrization_hooks(module, param_name)


def replace_parameter_4bit(
    module: nn.Module,
    param_name: str,
    compress_statistics: bool = False,
    quant_type: str = "nf4",
    blocksize: int | None = None,
) -> None:
    """Quantize ``module.<param_name>`` to 4 bit in place; reads of it dequantize on the fly."""
    if not hasattr(module, param_name):
        raise AttributeError(f"Module does not have parameter '{param_name}'")
    original = getattr(module, param_name)
    if not isinstance(original, nn.Parameter):
        raise TypeError(f"Parameter '{param_name}' is not an instance of nn.Parameter")
    packed, quant_state = F.quantize_4bit(
        original.data, blocksize=blocksize, compress_statistics=compress_statistics, quant_type=quant_type
    )
    del original
    _register(module, param_name, packed, quant_state)


def replace_parameter_4bit_prequantized(
    module: nn.Module, param_name: str, qs_dict: dict[str, Any], device: torch.device | str
) -> None:
    """Like :func:`replace_parameter_4bit` for an already packed parameter and its serialized state."""
    if not hasattr(module, param_name):
        raise AttributeError(f"Module does not have parameter '{param_name}'")
    original = getattr(module, param_name)
    if not isinstance(original, nn.Parameter):
        raise TypeError(f"Parameter '{param_name}' is not an instance of nn.Parameter")
    quant_state = QuantState.from_dict(qs_dict, device=device)
    _register(module, param_name, original.data.to(device), quant_state)


__all__ = ["Bnb4bitParametrization", "replace_parameter_4bit", "replace_parameter_4bit_prequantized"]
