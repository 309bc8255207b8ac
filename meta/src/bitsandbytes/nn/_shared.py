"""A quantized layer's state where every holder of its memory sees it: shared memory and loads.

A quantized weight is two things, the codes (the parameter's data) and the statistics that scale
them (a Params4bit's quant state, an Int8Params' row scales). Whatever sees the codes must see the
statistics that go with them:

* ``Module.share_memory()`` moves each parameter's storage to shared memory: the statistics of a
  quantized parameter in shared memory follow it there (``share_statistics``), so a process
  forked afterwards reads the ones the parent changes in place, as it reads its codes.
* A checkpoint loaded into a quantized layer copies its codes into the parameter's memory: the
  statistics are copied into those of the parameter's quant state (``copy_quant_state_``), so a
  process sharing that memory, or a ``copy.copy`` of the layer, reads new codes with new scales.
* A checkpoint loaded into a layer that is not quantized yet (a new quant state) is copied
  (``detached_stats``), as torch copies a state dict into parameters: the layer does not write
  into, or change with, the tensors of the state dict (another layer's, another process's).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch

from .._quant_state import QuantState


def _statistics(qs: QuantState | None) -> list[torch.Tensor]:
    """The per-layer tensors of ``qs`` (the code tables are constants, shared by many layers)."""
    if qs is None:
        return []
    found = [qs.absmax]
    if qs.nested:
        found += [qs.offset, qs.state2.absmax]
    return [t for t in found if isinstance(t, torch.Tensor)]


def share_statistics(param: torch.Tensor, extra: Iterable[torch.Tensor | None] = ()) -> None:
    """Where ``param`` (a Params4bit or Int8Params) lives in shared memory, move its statistics
    (quant state, row scales) and the tensors in ``extra`` there too (``Tensor.share_memory_``,
    in place; a no-op for tensors already there)."""
    if param.device.type != "cpu" or not param.is_shared():
        return
    tensors = _statistics(getattr(param, "quant_state", None))
    tensors += [getattr(param, name, None) for name in ("CB", "SCB")]
    tensors += list(extra)
    for t in tensors:
        if isinstance(t, torch.Tensor) and t.device.type == "cpu" and not t.is_shared():
            t.share_memory_()


def detached_stats(stats: dict[str, Any], device: torch.device | str) -> dict[str, Any]:
    """``stats`` (quant state items of a state dict) with each tensor copied to ``device``."""
    return {k: v.to(device, copy=True) if isinstance(v, torch.Tensor) else v for k, v in stats.items()}


def _same_layout(a: torch.Tensor | None, b: torch.Tensor | None) -> bool:
    if a is None or b is None:
        return a is b
    return a.shape == b.shape and a.dtype == b.dtype and a.device == b.device


def _same_values(a: torch.Tensor | None, b: torch.Tensor | None) -> bool:
    return _same_layout(a, b) and (a is None or torch.equal(a, b))


def _described(qs: QuantState) -> tuple:
    return (qs.nested, qs.quant_type, qs.blocksize, qs.dtype, qs.shape)


def copy_quant_state_(dst: QuantState, src: QuantState) -> bool:
    """Copy ``src``'s statistics into ``dst``'s tensors, in place, where both describe the same
    layout (shape, dtype, block sizes, quant type, code tables, statistics' shapes); return whether
    they did (else ``dst`` is left as it was, and the caller takes ``src`` instead)."""
    same = (
        _described(dst) == _described(src) and _same_layout(dst.absmax, src.absmax) and _same_values(dst.code, src.code)
    )
    if same and dst.nested:
        s2, t2 = dst.state2, src.state2
        same = (
            (s2.blocksize, s2.dtype) == (t2.blocksize, t2.dtype)
            and _same_layout(dst.offset, src.offset)
            and _same_layout(s2.absmax, t2.absmax)
            and _same_values(s2.code, t2.code)
        )
    if not same:
        return False
    with torch.no_grad():
        for d, s in zip(_statistics(dst), _statistics(src)):
            d.copy_(s)
    return True


def keep_param_type(module: torch.nn.Module, wrap: Callable[[torch.Tensor], torch.nn.Parameter]) -> None:
    """After ``load_state_dict(assign=True)`` of a float checkpoint into a layer built on meta, torch
    has put the checkpoint's tensor in place as a plain ``Parameter``: wrap it again as the layer's
    quantized parameter type (``wrap``), to be quantized on the next move to a device as before."""
    weight = module._parameters.get("weight")
    if weight is not None and type(weight) is torch.nn.Parameter and weight.is_floating_point():
        module._parameters["weight"] = wrap(weight.data)
