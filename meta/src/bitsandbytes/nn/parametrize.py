"""Experimental: 4-bit quantization of arbitrary parameters through ``torch.nn.utils.parametrize``."""

from __future__ import annotations

from functools import partial
from typing import Any

import torch
import torch.nn.utils.parametrize as P
from torch import nn

from .. import functional as F
from ..functional import QuantState


class Bnb4bitParametrization(nn.Module):
    """Parametrization whose forward dequantizes the packed 4-bit data it is given."""

    def __init__(self, quant_state: QuantState) -> None:
        super().__init__()
        self.quant_state = quant_state

    @torch.no_grad()
    def forward(self, quantized_param: torch.Tensor) -> torch.Tensor:
        return F.dequantize_4bit(quantized_param, self.quant_state)


def _enable_cache(module: nn.Module, inputs: Any) -> None:
    P._cache_enabled += 1


def _disable_cache(module: nn.Module, inputs: Any, output: Any) -> None:
    P._cache_enabled -= 1
    if not P._cache_enabled:
        P._cache = {}


def _state_dict_post_hook(
    module: nn.Module, state_dict: dict, prefix: str, local_metadata: Any, *, param_name: str, quant_state: QuantState
) -> None:
    original = f"{prefix}parametrizations.{param_name}.original"
    if original in state_dict:
        state_dict[f"{prefix}{param_name}"] = state_dict.pop(original)
        for k, v in quant_state.as_dict(packed=True).items():
            state_dict[f"{prefix}{param_name}.{k}"] = v


def _register(module: nn.Module, param_name: str, packed: torch.Tensor, quant_state: QuantState) -> None:
    setattr(module, param_name, nn.Parameter(packed, requires_grad=False))
    P.register_parametrization(module, param_name, Bnb4bitParametrization(quant_state), unsafe=True)
    module.register_state_dict_post_hook(partial(_state_dict_post_hook, param_name=param_name, quant_state=quant_state))
    module.register_forward_pre_hook(_enable_cache)
    module.register_forward_hook(_disable_cache)


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
