"""Saving and loading an optimizer's state (spec §7.3).

``state_dict()`` wraps each parameter's quantization state under
``"__bnb_optimizer_quant_state__"`` (so FSDP leaves it alone); ``load_state_dict()`` unwraps it,
maps the saved parameter indices onto the optimizer's parameters and checks that each loaded
parameter state is one this optimizer can continue with. A state that is not (another
algorithm's, ``torch.optim``'s, the retired non-blockwise 8-bit format) is refused with a
``ValueError`` that names it, rather than raising a ``KeyError`` at the next step or being applied
as the wrong thing. Re-exported through ``bitsandbytes.optim.optimizer``.
"""

from __future__ import annotations

from collections import abc as container_abcs
from collections import defaultdict
from copy import deepcopy
from itertools import chain
from typing import Any

import torch

from ._sharded_state import is_dtensor, local_state

QUANT_STATE_KEY = "__bnb_optimizer_quant_state__"


def _local(t: torch.Tensor) -> torch.Tensor:
    """The rank's own shard of a DTensor (FSDP2 parameters and gradients), else ``t`` itself.

    The kernels update plain tensors; each rank steps its local shard and keeps block-wise state
    for that shard only. Under ``no_grad`` the local tensor is the DTensor's storage, so in-place
    updates land in the sharded parameter.
    """
    return t.to_local() if is_dtensor(t) else t


def wrap_quant_state(sd: dict[str, Any], keys: set[str]) -> dict[str, Any]:
    """``sd`` (torch's layout) with each parameter's entries named in ``keys`` moved into a nested
    dict under ``QUANT_STATE_KEY``. New dicts: the optimizer's live state is not touched."""
    wrapped = {}
    for idx, pstate in sd["state"].items():
        outer = {k: v for k, v in pstate.items() if k not in keys}
        inner = {k: v for k, v in pstate.items() if k in keys}
        if inner:
            outer[QUANT_STATE_KEY] = inner
        wrapped[idx] = outer
    sd["state"] = wrapped
    return sd


def load_state_dict(opt: torch.optim.Optimizer, state_dict: dict[str, Any], move_to_device: bool) -> None:
    """``Optimizer8bit.load_state_dict``: torch's semantics (the saved parameter groups replace
    the optimizer's, load hooks run) with the quantization state unwrapped, kept in its dtype and
    only moved to each parameter's device (when ``move_to_device``)."""
    state_dict = state_dict.copy()  # as torch: pre-hooks may replace entries without touching the caller's
    for pre_hook in getattr(opt, "_optimizer_load_state_dict_pre_hooks", {}).values():
        result = pre_hook(opt, state_dict)
        if result is not None:
            state_dict = result
    state_dict = deepcopy(state_dict)
    for pstate in state_dict["state"].values():
        if isinstance(pstate, dict) and QUANT_STATE_KEY in pstate:
            pstate.update(pstate.pop(QUANT_STATE_KEY))

    groups = opt.param_groups
    saved_groups = state_dict["param_groups"]
    if len(groups) != len(saved_groups):
        raise ValueError(
            f"loaded state dict has {len(saved_groups)} parameter groups, but the optimizer has {len(groups)}"
        )
    for i, (g, sg) in enumerate(zip(groups, saved_groups)):
        if len(g["params"]) != len(sg["params"]):
            raise ValueError(
                f"loaded state dict's parameter group {i} has {len(sg['params'])} parameters, but the "
                f"optimizer's has {len(g['params'])}"
            )
    id_map = dict(
        zip(
            chain.from_iterable(g["params"] for g in saved_groups),
            chain.from_iterable(g["params"] for g in groups),
        )
    )
    keep = opt.non_castable_tensor_keys

    def cast(param: torch.Tensor, value: Any, key: str | None = None) -> Any:
        if isinstance(value, torch.Tensor):
            if key in keep:
                return value.to(param.device) if move_to_device else value
            if value.is_floating_point() and param.is_floating_point():
                return value.to(device=param.device, dtype=param.dtype)
            return value.to(param.device)
        if isinstance(value, dict):
            return {k: cast(param, v, key=k) for k, v in value.items()}
        if isinstance(value, container_abcs.Iterable) and not isinstance(value, str):
            return type(value)(cast(param, v) for v in value)
        return value

    state: defaultdict[Any, dict] = defaultdict(dict)
    for k, v in state_dict["state"].items():
        if k in id_map:
            param = id_map[k]
            state[param] = cast(param, local_state(param, v))
            check_loaded_state(opt, param, state[param])
        else:
            state[k] = v

    param_groups = []
    for group, new_group in zip(groups, saved_groups):
        new_group["params"] = group["params"]
        param_groups.append(new_group)
    opt.__setstate__({"state": state, "param_groups": param_groups})
    for post_hook in getattr(opt, "_optimizer_load_state_dict_post_hooks", {}).values():
        post_hook(opt)


def unwrap_assigned_state(opt: torch.optim.Optimizer, p: torch.Tensor, pstate: dict[str, Any]) -> None:
    """Unwrap, in place, a parameter state assigned in ``state_dict()``'s layout without going
    through ``load_state_dict`` (``ZeroRedundancyOptimizer.load_state_dict`` copies each saved
    parameter state straight into its local optimizer's ``state``), and check it as a loaded one:
    the step would otherwise find no ``state1`` beside the nested quantization state."""
    inner = pstate.pop(QUANT_STATE_KEY)
    if not isinstance(inner, dict):
        raise ValueError(f"{QUANT_STATE_KEY} of a parameter state holds a {type(inner).__name__}, not a dict")
    device = _local(p).device
    pstate.update({k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in inner.items()})
    check_loaded_state(opt, p, pstate)


def check_loaded_state(opt: torch.optim.Optimizer, p: torch.Tensor, pstate: Any) -> None:
    """Refuse a loaded parameter state this optimizer cannot continue with; bring a 32-bit state
    saved in another float dtype back to float32 (the dtype its kernels read).

    The kernels read states as flat arrays, so a state of another parameter of the same size, or
    Adam's first moment handed to Lion as its momentum, would be applied without any error. Which
    path (8-bit or 32-bit) a step takes follows the loaded ``state1``'s dtype, as in the
    established release: an 8-bit state loaded into a 32-bit optimizer continues 8-bit.
    """
    if not isinstance(pstate, dict) or not pstate:
        return
    cls = type(opt).__name__
    n_states = getattr(opt, "n_states", 2)
    local = tuple(_local(p).shape)
    where = f"loaded state dict, state of a parameter of shape {local} ({cls})"
    needed = ("step", "state1", "state2")[: 1 + n_states]
    missing = [k for k in needed if k not in pstate]
    if missing:
        raise ValueError(
            f"{where} lacks {missing} (it holds {sorted(pstate)}); is this the state dict of another "
            f"optimizer? torch.optim's keys (exp_avg, exp_avg_sq, momentum_buffer, ...) cannot be loaded"
        )
    if n_states == 1 and "state2" in pstate:
        raise ValueError(
            f"{where} holds a second state (state2), which {cls} does not have: a state dict of a two-state "
            f"optimizer (Adam, AdamW, LAMB, AdEMAMix) would be applied as {cls}'s"
        )
    plain = {k: pstate[k] for k in needed[1:] if type(pstate[k]) is torch.Tensor}
    dtypes = {k: v.dtype for k, v in plain.items()}
    for key, dtype in dtypes.items():
        if dtype != torch.uint8 and not dtype.is_floating_point:
            raise ValueError(f"{where}: {key} has dtype {dtype}; states are float32 (or uint8 codes)")
    eight_bit = [k for k, dtype in dtypes.items() if dtype == torch.uint8]
    if eight_bit and len(eight_bit) != len(plain):
        raise ValueError(f"{where} mixes 8-bit and 32-bit states: {dtypes}")
    if eight_bit:
        quant = [f"{what}{i}" for i in range(1, n_states + 1) for what in ("qmap", "absmax")]
        missing = [k for k in quant if k not in pstate]
        if missing:
            raise ValueError(
                f"{where} is 8-bit but lacks {missing} (it holds {sorted(pstate)}): only the block-wise "
                f"8-bit state format can be loaded"
            )
    else:
        for key, v in plain.items():
            if v.dtype != torch.float32:
                pstate[key] = v.float()
    pair = getattr(opt, "optimizer_name", None) == "ademamix"
    for key, v in plain.items():
        want = (2, *local) if key == "state1" and pair else local
        if tuple(v.shape) != want:
            pairs = f" ({cls} keeps both EMAs in state1, of shape {want})" if want != local else ""
            raise ValueError(
                f"loaded state dict: {key} has shape {tuple(v.shape)}, but its parameter has shape {local}{pairs}"
            )
