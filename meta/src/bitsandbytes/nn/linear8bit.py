"""LLM.int8() linear layers: ``Linear8bitLt`` (int8 weight with per-row scales) and its state-dict
pre-hook, and ``OutlierAwareLinear``, the base class for layers quantized around outlier inputs.

``bitsandbytes.nn.modules`` re-exports everything here.
"""

from __future__ import annotations

import logging
import numbers
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from .. import _checks, _direct
from ..autograd._functions import MatmulLtState, matmul
from ..utils import INVERSE_LINEAR_8BIT_WEIGHTS_FORMAT_MAPPING, OutlierTracer
from . import _runners
from ._int8params import Int8Params
from ._params import NotQuantizedError, _tensor_to, module_apply
from ._shared import keep_param_type, share_statistics
from .linear4bit import _bias_in, _runner_bias

logger = logging.getLogger("bitsandbytes.nn.modules")  # the established release's module name


def maybe_rearrange_weight(
    state_dict: dict[str, Any],
    prefix: str,
    local_metadata: dict[str, Any],
    strict: bool,
    missing_keys: list[str],
    unexpected_keys: list[str],
    error_msgs: list[str],
) -> None:
    """Load-state-dict pre-hook of ``Linear8bitLt``: consume ``weight_format`` (only ``"row"`` is supported)."""
    weight = state_dict.get(f"{prefix}weight")
    if weight is None:
        return
    weight_format = state_dict.pop(f"{prefix}weight_format", "row")
    if isinstance(weight_format, torch.Tensor):
        weight_format = weight_format.item()
    if isinstance(weight_format, int):
        if weight_format not in INVERSE_LINEAR_8BIT_WEIGHTS_FORMAT_MAPPING:
            raise ValueError(f"Expected supported weight format - got {weight_format}")
        weight_format = INVERSE_LINEAR_8BIT_WEIGHTS_FORMAT_MAPPING[weight_format]
    if weight_format != "row":
        raise ValueError(f"Only 'row' weight format is supported, got {weight_format}")


_INT8_PLAN_KEY = "_bnb_int8_plan"
"""Where Linear8bitLt keeps its prepared inference runner (its ``__dict__``; not state)."""

_INT8_PLAN_BUILDS_KEY = "_bnb_int8_plan_builds"

_NO_OUTLIERS = torch.empty(0, dtype=torch.int64)
"""``state.idx`` after a call without outlier columns (the general path's empty index)."""


def _int8_plan_key(module: Linear8bitLt, weight: torch.Tensor) -> tuple | None:
    """What the LLM.int8() runner of ``module`` depends on besides its input (see ``forward``), or
    None where none can be kept (no int8 weight in the state, or a parameter not holding it)."""
    state = module.state
    CB, SCB, bias = state.CB, state.SCB, module._parameters.get("bias")
    if CB is None or SCB is None or state.has_fp16_weights or module._parameters.get("weight") is not weight:
        return None
    if weight.data_ptr() != CB.data_ptr():
        return None
    bias_ptr = 0 if bias is None else bias.data_ptr()
    return (_direct.generation, state, CB, CB.data_ptr(), SCB, SCB.data_ptr(), state.threshold, weight, bias, bias_ptr)


def _prepare_int8_plan(key: tuple, x: torch.Tensor) -> Callable | None:
    """The platform's LLM.int8() inference runner for ``key`` (_int8_plan_key). It stands for
    int8_vectorwise_quant and int8_(mixed_)scaled_mm together: each must be the loader's kernel for
    the device (as a direct call of each would require)."""
    state, CB, SCB, bias = key[1], key[2], key[4], _runner_bias(key[8], key[9])
    if bias is False:
        return None
    if _direct.kernel("int8_vectorwise_quant", x) is None or _direct.kernel("int8_scaled_mm", x, CB, SCB) is None:
        return None
    return _direct.prepare("int8_mixed_scaled_mm", (x, CB, SCB, bias), (CB, SCB, bias, state.threshold, x.dtype))


class Linear8bitLt(nn.Linear):
    """LLM.int8() linear layer: int8 weight with per-row scales, optional outlier decomposition."""

    def __init__(
        self,
        input_features: int,
        output_features: int,
        bias: bool = True,
        has_fp16_weights: bool = True,
        threshold: float = 0.0,
        index: Any = None,
        device: Any = None,
    ) -> None:
        if isinstance(threshold, bool) or not isinstance(threshold, numbers.Real) or not threshold >= 0.0:
            raise ValueError(f"Linear8bitLt: threshold must be a number >= 0 (0 disables outliers), got {threshold!r}")
        if not isinstance(has_fp16_weights, bool):
            raise TypeError(f"Linear8bitLt: has_fp16_weights must be a bool, got {has_fp16_weights!r}")
        super().__init__(input_features, output_features, bias, device)
        self.state = MatmulLtState()
        self.index = index
        self.state.threshold = threshold
        self.state.has_fp16_weights = has_fp16_weights
        if threshold > 0.0 and not has_fp16_weights:
            self.state.use_pool = True
        self.weight = Int8Params(self.weight.data, has_fp16_weights=has_fp16_weights, requires_grad=has_fp16_weights)
        self._register_load_state_dict_pre_hook(maybe_rearrange_weight)

    def _save_to_state_dict(self, destination: dict, prefix: str, keep_vars: bool) -> None:
        super()._save_to_state_dict(destination, prefix, keep_vars)
        scb = getattr(self.weight, "SCB", None)
        if scb is None:
            scb = self.state.SCB
        if not self.state.has_fp16_weights and scb is not None:
            destination[prefix + "SCB"] = scb if keep_vars else scb.detach()
            destination[prefix + "weight_format"] = torch.tensor(0, dtype=torch.uint8)

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ) -> None:
        # A plain parameter (a weight tied to another module's) has no SCB attribute at all.
        weight_scb = getattr(self.weight, "SCB", None)
        target = weight_scb if weight_scb is not None else self.state.SCB
        weight = state_dict.get(prefix + "weight")
        if target is not None and self.weight.dtype == torch.int8 and isinstance(weight, torch.Tensor):
            if weight.is_floating_point():
                # copy_ would truncate the floats into the int8 codes
                error_msgs.append(
                    f"bitsandbytes: {prefix}weight is {weight.dtype} but this Linear8bitLt is already quantized "
                    "(int8): load a float checkpoint before moving the layer to its device, or load a quantized "
                    "checkpoint (int8 weight and SCB)"
                )
                return
            if prefix + "SCB" not in state_dict:
                missing_keys.append(prefix + "SCB")  # the int8 codes alone would keep stale row scales
        old = self.weight
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
        if isinstance(old, Int8Params):  # a float checkpoint assigned (assign=True): quantized on the move
            keep_param_type(
                self, lambda w: Int8Params(w, requires_grad=old.requires_grad, has_fp16_weights=old.has_fp16_weights)
            )
        for key in list(unexpected_keys):
            if key[len(prefix) :] != "SCB":
                continue
            if target is None:
                raise RuntimeError(
                    "Loading a quantized checkpoint into non-quantized Linear8bitLt is not supported. "
                    "Please call module.cuda() before module.load_state_dict()"
                )
            scb = state_dict[key]
            if not isinstance(scb, torch.Tensor) or not scb.is_floating_point() or scb.shape != target.shape:
                error_msgs.append(
                    f"bitsandbytes: {key} must be a floating-point tensor of shape {tuple(target.shape)} (one "
                    f"scale per output row), got "
                    + (f"{scb.dtype} of shape {tuple(scb.shape)}" if isinstance(scb, torch.Tensor) else repr(scb))
                )
                unexpected_keys.remove(key)
                continue
            if local_metadata.get("assign_to_params_buffers", False):
                self._assign_scales(scb)
            else:
                target.copy_(scb)
                if self.state.SCB is not None:
                    self.state.SCB = target
            unexpected_keys.remove(key)

    def _assign_scales(self, scb: torch.Tensor) -> None:
        """load_state_dict(assign=True): torch put the checkpoint's codes in place as a plain
        Parameter; keep them an Int8Params with the checkpoint's scales, where the layer reads them
        (the state after a forward, else the weight). Copying into the old scales, as without
        assign, would leave them with the replaced parameter (or on meta)."""
        weight = self._parameters["weight"]
        if not isinstance(weight, Int8Params):
            weight = Int8Params(
                weight.data, requires_grad=weight.requires_grad, has_fp16_weights=self.state.has_fp16_weights
            )
            self._parameters["weight"] = weight
        if self.state.CB is not None or self.state.SCB is not None:
            self.state.CB, self.state.SCB = weight.data, scb
            weight.CB = weight.SCB = None
        else:
            weight.CB, weight.SCB = weight.data, scb

    def init_8bit_state(self) -> None:
        """Move the int8 weight and its scales from the parameter into ``state``.

        A weight holding its codes but no scales is one moved with ``Int8Params.to`` after its
        scales had gone into the state (``module.weight = module.weight.to(device)``, which peft's
        DoRA runs on every forward of an 8-bit layer on CPU): where those codes are the ones in the
        state, they keep the state's scales rather than leaving the layer with none (other codes
        without scales are left as they are, to fail, not to be scaled wrongly)."""
        weight, state = self.weight, self.state
        scb = weight.SCB
        if scb is None and state.SCB is not None and _same_codes(weight.CB, state.CB):
            scb = _tensor_to(state.SCB, weight.CB.device)
        state.CB = weight.CB
        state.SCB = scb
        weight.CB = None
        weight.SCB = None

    def _apply(self, fn: Callable, recurse: bool = True) -> Linear8bitLt:  # type: ignore[override]
        module_apply(self, super()._apply, fn, recurse)
        # After a forward the int8 weight lives in the state (init_8bit_state): keep it the
        # parameter's data and the scales beside it, also through to_empty() and meta.
        state, weight = self.state, self._parameters.get("weight")
        if weight is not None and (state.CB is not None or state.SCB is not None):
            if state.CB is not None and weight.dtype == torch.int8 and weight.shape == state.CB.shape:
                state.CB = weight.data
            state.SCB = _tensor_to(state.SCB, weight.device)
            share_statistics(weight, (state.CB, state.SCB))  # Module.share_memory(): with the codes
        return self

    def to(self, *args: Any, **kwargs: Any) -> Linear8bitLt:  # type: ignore[override]
        """``nn.Module.to``, then the int8 weight and row scales kept in ``state`` follow to the new
        device."""
        result = super().to(*args, **kwargs)
        device, _, _, _ = torch._C._nn._parse_to(*args, **kwargs)
        if device is not None:
            if result.state.CB is not None:
                result.state.CB = result.state.CB.to(device)
            if result.state.SCB is not None:
                result.state.SCB = result.state.SCB.to(device)
        return result

    def __getstate__(self) -> dict[str, Any]:
        state = dict(super().__getstate__())
        state.pop(_INT8_PLAN_KEY, None)  # a cache, not state
        state.pop(_INT8_PLAN_BUILDS_KEY, None)
        return state

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """LLM.int8() product ``x @ W.T + bias`` (``bitsandbytes.matmul`` with this layer's
        ``state``): with ``threshold > 0`` the outlier columns of ``x`` are multiplied unquantized.
        Raises ``NotQuantizedError`` when an int8-only layer has no int8 weight or no row scales."""
        # Inference: the runner kept after an earlier general call (_runners.keep), where nothing
        # it was prepared with has changed and the call is a plain eager one without gradients; as
        # in Linear4bit.forward, each test costs ~1 us with cold caches, the general path ~40 us
        # more.
        plan = None if torch.compiler.is_compiling() else self.__dict__.get(_INT8_PLAN_KEY)
        if plan is not None:
            gen, state, CB, cb_ptr, SCB, scb_ptr, threshold, weight, bias, bias_ptr, run = plan
            if (
                gen == _direct.generation
                and type(x) is torch.Tensor
                and not self.training
                and self.state is state
                and state.CB is CB
                and state.SCB is SCB
                and state.threshold == threshold
                and not state.has_fp16_weights
                and self._parameters.get("weight") is weight
                and self._parameters.get("bias") is bias
                and not (
                    torch.is_grad_enabled()
                    and (x.requires_grad or weight.requires_grad or (bias is not None and bias.requires_grad))
                )
                and _direct.no_modes()
                and getattr(weight, "CB", None) is None
                and weight.data_ptr() == cb_ptr
                and CB.data_ptr() == cb_ptr
                and SCB.data_ptr() == scb_ptr
                and (bias is None or bias.data_ptr() == bias_ptr)
            ):
                out = run(x)
                if out is not None:  # what the general path would have left in the state
                    state.is_training = False
                    if threshold > 0.0:
                        state.idx = _NO_OUTLIERS
                    return out
        _checks.check_linear_input("Linear8bitLt", x, self.in_features)
        state = self.state
        state.is_training = self.training
        weight = self.weight
        if getattr(weight, "CB", None) is not None:
            self.init_8bit_state()
        if not state.has_fp16_weights and weight.dtype != torch.int8 and state.CB is None:
            raise NotQuantizedError("Linear8bitLt: the weight is not quantized; move the module to a device first")
        if not state.has_fp16_weights and state.CB is not None and state.SCB is None:
            raise NotQuantizedError(
                "Linear8bitLt: the int8 weight has no row scales (SCB); build it with "
                "Int8Params(codes, SCB=scales) or load a quantized checkpoint holding its SCB"
            )
        out = matmul(x, weight, bias=_bias_in(self, x.dtype), state=state)
        CB = state.CB
        if not state.has_fp16_weights and CB is not None and (torch.compiler.is_compiling() or not _holds(weight, CB)):
            # As the established forward does after every call; in eager mode skipped when the
            # parameter already holds exactly CB (an assignment costs ~25 us with cold caches, in
            # every decoded layer). Traced code keeps the assignment (dynamo breaks the graph on
            # a data-pointer comparison).
            weight.data = CB
        if not self.training and CB is not None and not torch.compiler.is_compiling() and type(x) is torch.Tensor:
            _runners.keep(
                self.__dict__,
                _INT8_PLAN_KEY,
                _INT8_PLAN_BUILDS_KEY,
                lambda: _int8_plan_key(self, weight),
                lambda key: _prepare_int8_plan(key, x),
            )
        return out


def _same_codes(a: torch.Tensor | None, b: torch.Tensor | None) -> bool:
    """Whether ``a`` and ``b`` hold the same int8 codes (the same memory, or equal values)."""
    if a is None or b is None or a.shape != b.shape or a.dtype != b.dtype or "meta" in (a.device.type, b.device.type):
        return False
    return (a.device == b.device and _holds(a, b)) or torch.equal(a, b.to(a.device))


def _holds(param: torch.Tensor, t: torch.Tensor) -> bool:
    """Whether ``param``'s data is exactly the tensor ``t`` (same memory, dtype, shape and strides)."""
    return (
        param.data_ptr() == t.data_ptr()
        and param.dtype == t.dtype
        and param.shape == t.shape
        and param.stride() == t.stride()
    )


class OutlierAwareLinear(nn.Linear):
    """Base class for linear layers that quantize their weight around input outlier dimensions.

    Subclasses implement :meth:`forward_with_outliers` and :meth:`quantize_weight`; the outliers come
    from :class:`bitsandbytes.utils.OutlierTracer` (initialize it on the model first).
    """

    def __init__(self, input_features: int, output_features: int, bias: bool = True, device: Any = None) -> None:
        super().__init__(input_features, output_features, bias, device)
        self.outlier_dim: torch.Tensor | None = None
        self.is_quantized = False

    def forward_with_outliers(self, x: torch.Tensor, outlier_idx: torch.Tensor) -> torch.Tensor:
        """The layer's product given the outlier dimensions; subclasses implement it."""
        raise NotImplementedError("Please override the `forward_with_outliers(self, x, outlier_idx)` function")

    def quantize_weight(self, w: torch.Tensor, outlier_idx: torch.Tensor) -> torch.Tensor:
        """The weight to store, quantized around the outlier dimensions; subclasses implement it."""
        raise NotImplementedError("Please override the `quantize_weights(self, w, outlier_idx)` function")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """On the first call, ask ``OutlierTracer`` for the outlier dimensions and replace the weight
        with ``quantize_weight``'s result; then return ``forward_with_outliers(x, outlier_dim)``."""
        if self.outlier_dim is None:
            tracer = OutlierTracer.get_instance()
            if not tracer.is_initialized():
                logger.warning("Please use OutlierTracer.initialize(model) before using the OutlierAwareLinear layer")
            self.outlier_dim = tracer.get_outliers(self.weight)
        if not self.is_quantized:
            w = self.quantize_weight(self.weight, self.outlier_dim)
            self.weight.data.copy_(w)
            self.is_quantized = True
        return self.forward_with_outliers(x, self.outlier_dim)
