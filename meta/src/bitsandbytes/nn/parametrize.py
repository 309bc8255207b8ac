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
from ._shared import detached_stats

_DEQUANTIZED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


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

    def _apply(self, fn: Any, recurse: bool = True) -> Bnb4bitParametrization:  # type: ignore[override]
        """``module.half()`` / ``.to(torch.bfloat16)``: the packed bytes are not converted (see
        ``_PackedParametrizationList``), so the dequantized parameter takes the new float dtype
        through its quant state instead, as the dense parameter would have."""
        qs = self.quant_state
        if qs is not None and qs.dtype in _DEQUANTIZED_DTYPES:
            probe = fn(torch.empty(0, dtype=qs.dtype, device=qs.absmax.device))
            if isinstance(probe, torch.Tensor) and probe.dtype in _DEQUANTIZED_DTYPES:
                qs.dtype = probe.dtype
        return super()._apply(fn, recurse)


class _PackedParametrizationList(P.ParametrizationList):
    """The ``parametrizations.<name>`` list of a 4-bit parameter: its ``original`` holds packed
    bytes, which a module-wide dtype conversion (``.half()``, ``.to(torch.bfloat16)``, ``.type()``)
    must not convert, whatever their storage dtype (a float ``quant_storage`` is bytes too); it
    still follows device moves. The parametrization takes the new dtype instead."""

    def _apply(self, fn: Any, recurse: bool = True) -> nn.Module:  # type: ignore[override]
        original = self._parameters.get("original")

        def keeping_bytes(t: torch.Tensor) -> torch.Tensor:
            out = fn(t)
            if t is original and isinstance(out, torch.Tensor) and out.dtype != t.dtype:
                return t.to(device=out.device)
            return out

        return super()._apply(keeping_bytes, recurse)


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
    parametrization = _parametrization_of(module, param_name)
    if parametrization is None:
        raise RuntimeError(f"bitsandbytes: {param_name!r} of {type(module).__name__} has no 4-bit parametrization")
    for k, v in parametrization.quant_state.as_dict(packed=True).items():
        state_dict[f"{prefix}{param_name}.{k}"] = v


def _parametrization_of(module: nn.Module, param_name: str) -> Bnb4bitParametrization | None:
    return next((m for m in module.parametrizations[param_name] if isinstance(m, Bnb4bitParametrization)), None)


def _parametrized_load_pre_hook(
    module: nn.Module,
    state_dict: dict,
    prefix: str,
    local_metadata: dict,
    strict: bool,
    missing_keys: list,
    unexpected_keys: list,
    error_msgs: list,
    *,
    param_name: str = "weight",
) -> None:
    """Load the form the state-dict hook saves: the packed data under ``<param_name>`` goes to
    ``parametrizations.<param_name>.original`` and the ``<param_name>.<key>`` entries become the
    parametrization's quant state. A float tensor of the parameter's shape under ``<param_name>``
    alone is quantized with the parametrization's settings (quant type, block size, nesting)."""
    key = prefix + param_name
    original_key = f"{prefix}parametrizations.{param_name}.original"
    if key not in state_dict or original_key in state_dict or not P.is_parametrized(module, param_name):
        return
    parametrization = _parametrization_of(module, param_name)
    if parametrization is None:
        return
    own = parametrization.quant_state
    original = module.parametrizations[param_name].original
    data = state_dict[key]
    stats = {k[len(key) + 1 :]: v for k, v in state_dict.items() if k.startswith(key + ".")}
    if not isinstance(data, torch.Tensor):
        return  # left for torch to report
    assign = local_metadata.get("assign_to_params_buffers", False)
    device = original.device if original.device.type != "meta" else data.device
    try:
        if stats:
            quant_state = QuantState.from_dict(dict(stats) if assign else detached_stats(stats, device), device=device)
        elif data.is_floating_point() and tuple(data.shape) == tuple(own.shape):
            data, quant_state = F.quantize_4bit(
                data.detach().to(device),
                blocksize=own.blocksize,
                compress_statistics=own.nested,
                quant_type=own.quant_type,
                quant_storage=original.dtype,
            )
        else:
            return  # not this parametrization's form: torch reports the key as unexpected
    except (ValueError, KeyError, TypeError) as exc:
        error_msgs.append(f"bitsandbytes: cannot load the 4-bit state of {key!r}: {exc}")
        return
    if tuple(quant_state.shape) != tuple(own.shape):
        error_msgs.append(
            f"bitsandbytes: {key!r} holds a 4-bit parameter of shape {tuple(quant_state.shape)}, "
            f"expected {tuple(own.shape)}"
        )
        return
    for k in [key, *(f"{key}.{name}" for name in stats)]:
        del state_dict[k]
    state_dict[original_key] = data
    parametrization.quant_state = quant_state


def _register_parametrization_hooks(module: nn.Module, param_name: str) -> None:
    """The hooks of a 4-bit parametrized parameter: its state-dict form (saved and loaded), and
    the dequantization cache around each forward.

    The closing hook is registered with ``always_call=True``: non-reentrant activation
    checkpointing stops its recomputation part-way through a forward once it has what the
    backward needs, and a plain forward hook would then be skipped, leaving the cache open
    (every dequantized weight kept alive) for the rest of training."""
    hook = partial(_parametrized_state_dict_post_hook, param_name=param_name)
    # torch < 2.5 has the same hook (same signature) only under its private name.
    register = getattr(module, "register_state_dict_post_hook", None) or module._register_state_dict_hook
    register(hook)
    module.register_load_state_dict_pre_hook(partial(_parametrized_load_pre_hook, param_name=param_name))
    module.register_forward_pre_hook(_enable_parametrization_cache)
    module.register_forward_hook(_disable_parametrization_cache, always_call=True)


def _check_parameter(module: nn.Module, param_name: str) -> nn.Parameter:
    if not hasattr(module, param_name):
        raise AttributeError(f"Module does not have parameter '{param_name}'")
    original = getattr(module, param_name)
    if not isinstance(original, nn.Parameter):
        if P.is_parametrized(module, param_name):
            raise TypeError(
                f"Parameter '{param_name}' is not an instance of nn.Parameter: it is already parametrized "
                f"({type(module).__name__}.parametrizations.{param_name})"
            )
        raise TypeError(f"Parameter '{param_name}' is not an instance of nn.Parameter")
    return original


def _register(module: nn.Module, param_name: str, packed: torch.Tensor, quant_state: QuantState) -> None:
    setattr(module, param_name, nn.Parameter(packed, requires_grad=False))
    P.register_parametrization(module, param_name, Bnb4bitParametrization(quant_state), unsafe=True)
    parametrizations = module.parametrizations[param_name]
    if type(parametrizations) is P.ParametrizationList:
        parametrizations.__class__ = _PackedParametrizationList
    _register_parametrization_hooks(module, param_name)


def replace_parameter_4bit(
    module: nn.Module,
    param_name: str,
    compress_statistics: bool = False,
    quant_type: str = "nf4",
    blocksize: int | None = None,
) -> None:
    """Quantize ``module.<param_name>`` to 4 bit in place; reads of it dequantize on the fly."""
    original = _check_parameter(module, param_name)
    packed, quant_state = F.quantize_4bit(
        original.data, blocksize=blocksize, compress_statistics=compress_statistics, quant_type=quant_type
    )
    del original
    _register(module, param_name, packed, quant_state)


def replace_parameter_4bit_prequantized(
    module: nn.Module, param_name: str, qs_dict: dict[str, Any], device: torch.device | str
) -> None:
    """Like :func:`replace_parameter_4bit` for an already packed parameter and its serialized state."""
    original = _check_parameter(module, param_name)
    quant_state = QuantState.from_dict(qs_dict, device=device)
    needed = (quant_state.shape.numel() + 1) // 2
    held = original.numel() * original.element_size()
    if held != needed:
        raise ValueError(
            f"replace_parameter_4bit_prequantized: '{param_name}' holds {held} bytes ({original.dtype}, shape "
            f"{tuple(original.shape)}) but packed 4-bit data of shape {tuple(quant_state.shape)} takes {needed}"
        )
    _register(module, param_name, original.data.to(device), quant_state)


__all__ = ["Bnb4bitParametrization", "replace_parameter_4bit", "replace_parameter_4bit_prequantized"]
