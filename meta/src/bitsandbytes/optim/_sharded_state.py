"""Optimizer state of FSDP2 (DTensor) parameters in state dicts.

Each rank steps its own shard of a DTensor parameter and keeps plain state tensors for that
shard (``_state_dict._local``). Saved as plain tensors, those states would look replicated to
``torch.distributed.checkpoint``: a sharded ``dcp.save`` keeps one rank's copy of each, and
``get_optimizer_state_dict(full_state_dict=True)`` gathers nothing, so every rank would resume
from one rank's moments. ``state_dict()`` therefore presents them as DTensors, as ``torch.optim``
does: the states shaped like the parameter (``state1``, ``state2``; AdEMAMix's pair of EMAs) with
the parameter's own layout, and the block-wise 8-bit scales (``absmax1``, ``absmax2``, whose blocks
follow each rank's shard) as one row per shard, zero-padded to the largest shard's block count.
``load_state_dict()`` takes each rank's part back. The optimizer's live state stays plain.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from .._checks import OPTIMIZER_STATE_BLOCKSIZE

_PARAM_SHAPED = ("state1", "state2")
_BLOCK_SCALES = ("absmax1", "absmax2")


def is_dtensor(t: Any) -> bool:
    """Whether ``t`` is a DTensor, without importing torch.distributed."""
    return type(t).__name__ == "DTensor" and hasattr(t, "to_local")


def _sharded_mesh_dims(p: torch.Tensor) -> list[int] | None:
    """The mesh dimensions along which ``p`` is sharded; None where a placement is neither
    Shard nor Replicate (then the states are left as they are)."""
    dims = []
    for i, placement in enumerate(p.placements):
        if placement.is_shard():
            dims.append(i)
        elif not placement.is_replicate():
            return None
    return dims


def _max_blocks(p: torch.Tensor, dims: list[int]) -> int:
    """Block count of the largest shard of ``p`` (chunked as DTensor shards: the first chunk
    along each sharded dimension is the largest); every rank computes the same value."""
    shape = list(p.shape)
    for i in dims:
        d = p.placements[i].dim
        shape[d] = -(-shape[d] // p.device_mesh.size(i))
    return -(-math.prod(shape) // OPTIMIZER_STATE_BLOCKSIZE)


def _contiguous_stride(shape: tuple[int, ...]) -> tuple[int, ...]:
    stride, acc = [], 1
    for s in reversed(shape):
        stride.append(acc)
        acc *= s
    return tuple(reversed(stride))


def _as_dtensor(p: torch.Tensor, key: str, value: Any, dims: list[int]) -> Any:
    """``value`` (this rank's state ``key`` of the DTensor parameter ``p``) as a DTensor, or
    ``value`` itself where it is not per-shard state."""
    from torch.distributed.tensor import DTensor, Replicate, Shard

    if not isinstance(value, torch.Tensor) or is_dtensor(value):
        return value
    local = p.to_local()
    mesh = p.device_mesh
    if key in _PARAM_SHAPED:
        lead = value.dim() - local.dim()
        if lead < 0 or tuple(value.shape[lead:]) != tuple(local.shape):
            return value
        placements = [Shard(pl.dim + lead) if pl.is_shard() else pl for pl in p.placements]
        shape = (*value.shape[:lead], *p.shape)
    elif key in _BLOCK_SCALES:
        blocks = _max_blocks(p, dims)
        if value.shape[-1] > blocks:
            return value
        padded = value.new_zeros((*[1] * len(dims), *value.shape[:-1], blocks))
        padded[..., : value.shape[-1]] = value
        value = padded
        placements = [Replicate()] * mesh.ndim
        for k, i in enumerate(dims):
            placements[i] = Shard(k)
        shape = (*[mesh.size(i) for i in dims], *value.shape[len(dims) :])
    else:
        return value
    return DTensor.from_local(
        value, mesh, placements, run_check=False, shape=torch.Size(shape), stride=_contiguous_stride(shape)
    )


def shard_state_dict(opt: torch.optim.Optimizer, sd: dict[str, Any]) -> dict[str, Any]:
    """``sd`` (torch's layout, before wrapping) with the per-shard states of DTensor parameters
    as DTensors (new per-parameter dicts; the live state is not touched)."""
    params = [p for group in opt.param_groups for p in group["params"]]
    for idx, pstate in list(sd["state"].items()):
        p = params[idx] if isinstance(idx, int) and 0 <= idx < len(params) else None
        if p is None or not is_dtensor(p) or not isinstance(pstate, dict):
            continue
        dims = _sharded_mesh_dims(p)
        if not dims:
            continue  # replicated (every rank holds the same state) or an unknown layout
        sd["state"][idx] = {k: _as_dtensor(p, k, v, dims) for k, v in pstate.items()}
    return sd


def local_state(p: torch.Tensor, pstate: Any) -> Any:
    """A loaded parameter state with DTensor entries (``shard_state_dict``'s, or ones
    ``torch.distributed.checkpoint`` redistributed) reduced to this rank's plain tensors."""
    if not isinstance(pstate, dict) or not any(is_dtensor(v) for v in pstate.values()):
        return pstate
    out = {}
    for key, value in pstate.items():
        if is_dtensor(value):
            value = value.to_local()
            if key in _BLOCK_SCALES and is_dtensor(p):
                dims = _sharded_mesh_dims(p) or []
                own = -(-p.to_local().numel() // OPTIMIZER_STATE_BLOCKSIZE)
                value = value.reshape(value.shape[len(dims) :])[..., :own]
            value = value.contiguous().clone()
        out[key] = value
    return out
