"""Bounds checks for Triton's interpreter (``TRITON_INTERPRET=1``), a test tool.

The interpreter reads and writes through raw addresses and checks none: a kernel that loads past
the end of a tensor reads whatever lies there, and where the value ends up multiplied by a zero
(a padded tile) the result is still right, so no comparison with the reference can see it. On a
GPU the same load may fault. ``install()`` makes every load, store and atomic of a launch check
that each address its mask lets through lies, with the whole element, inside one of the tensors
the launch was given (their views' extents, overlapping ones merged); an access outside them
fails the launch with the kernel's name, the address and the nearest argument.

It patches two methods of the interpreter (its builder's memory operations and the grid
executor's argument set-up); ``install`` checks that they exist in the Triton at hand and
refuses otherwise, so a Triton whose interpreter moved on fails loudly instead of checking
nothing.
"""

from __future__ import annotations

import threading

import numpy as np
import torch

_STATE = threading.local()
_INSTALLED: list[bool] = []


class OutOfBoundsError(RuntimeError):
    """A load, store or atomic of an interpreted kernel outside every tensor it was given."""


def _extent(t: torch.Tensor) -> tuple[int, int]:
    """[first byte, one past the last byte) of a tensor view (torch strides are never negative);
    empty for a tensor without elements."""
    if t.numel() == 0:
        return (t.data_ptr(), t.data_ptr())
    last = sum((n - 1) * s for n, s in zip(t.shape, t.stride()))
    return (t.data_ptr(), t.data_ptr() + (last + 1) * t.element_size())


def _tensors(arg):
    if isinstance(arg, torch.Tensor):
        yield arg
    elif isinstance(arg, (tuple, list)):
        for a in arg:
            yield from _tensors(a)
    elif isinstance(getattr(arg, "base", None), torch.Tensor):  # a wrapper (TensorWrapper, TensorDescriptor)
        yield arg.base


def _merge(extents: list[tuple[int, int, str]]) -> tuple[np.ndarray, np.ndarray, list[str]]:
    spans: list[list] = []
    for lo, hi, name in sorted(e for e in extents if e[1] > e[0]):
        if spans and lo <= spans[-1][1]:
            spans[-1][1] = max(spans[-1][1], hi)
            spans[-1][2] += f", {name}"
        else:
            spans.append([lo, hi, name])
    return (
        np.array([s[0] for s in spans], dtype=np.uint64),
        np.array([s[1] for s in spans], dtype=np.uint64),
        [s[2] for s in spans],
    )


def _check(ptrs: np.ndarray, mask, itemsize: int, what: str) -> None:
    launch = getattr(_STATE, "launch", None)
    if launch is None:
        return
    kernel, los, his, names = launch
    addrs = np.asarray(ptrs, dtype=np.uint64)
    if mask is not None:
        addrs = addrs[np.broadcast_to(np.asarray(mask, dtype=bool), addrs.shape)]
    addrs = addrs.reshape(-1)
    if addrs.size == 0:
        return
    at = np.searchsorted(los, addrs, side="right").astype(np.int64) - 1
    inside = at >= 0
    inside[inside] = addrs[inside] + np.uint64(itemsize) <= his[at[inside]]
    if inside.all():
        return
    bad = int(addrs[~inside][0])
    nearest = min(range(len(names)), key=lambda i: min(abs(bad - int(los[i])), abs(bad - int(his[i]))), default=None)
    where = (
        f"; the nearest argument ({names[nearest]}) spans [{int(los[nearest]):#x}, {int(his[nearest]):#x})"
        if nearest is not None
        else "; the launch was given no tensor with elements"
    )
    raise OutOfBoundsError(
        f"{kernel}: a {what} of {itemsize}-byte elements at {bad:#x} ({int((~inside).sum())} of "
        f"{addrs.size} active lanes) lies outside every tensor argument{where}"
    )


def install() -> None:
    """Patch Triton's interpreter to check every memory access of every launch (idempotent)."""
    if _INSTALLED:
        return
    from triton.runtime import interpreter as interp

    builder, executor = interp.InterpreterBuilder, interp.GridExecutor
    needed = {
        builder: ("create_masked_load", "create_masked_store", "create_atomic_rmw", "create_atomic_cas"),
        executor: ("__call__", "_init_args_hst"),
    }
    for cls, names in needed.items():
        for name in names:
            if not hasattr(cls, name):
                raise RuntimeError(
                    f"triton_bounds: Triton's interpreter has no {cls.__name__}.{name}; update the checker"
                )

    load, store = builder.create_masked_load, builder.create_masked_store
    rmw, cas = builder.create_atomic_rmw, builder.create_atomic_cas
    call, init_args = executor.__call__, executor._init_args_hst

    def checked_load(self, ptrs, mask, other, cache_policy, is_volatile):
        itemsize = np.dtype(interp._get_np_dtype(ptrs.get_element_ty())).itemsize
        _check(ptrs.data, mask.data, itemsize, "load")
        return load(self, ptrs, mask, other, cache_policy, is_volatile)

    def checked_store(self, ptrs, value, mask, cache_policy):
        _check(ptrs.data, mask.data, value.data.dtype.itemsize, "store")
        return store(self, ptrs, value, mask, cache_policy)

    def checked_rmw(self, rmw_op, ptr, val, mask, sem, scope):
        _check(ptr.data, mask.data, val.data.dtype.itemsize, "atomic")
        return rmw(self, rmw_op, ptr, val, mask, sem, scope)

    def checked_cas(self, ptr, cmp, val, sem, scope):
        _check(ptr.data, None, val.data.dtype.itemsize, "atomic")
        return cas(self, ptr, cmp, val, sem, scope)

    def recording_init(self, args_dev, kwargs):
        args_hst, kwargs_hst = init_args(self, args_dev, kwargs)
        names = list(getattr(self, "arg_names", [])) or [f"argument {i}" for i in range(len(args_hst))]
        extents = []
        for i, arg in enumerate(args_hst):
            for t in _tensors(arg):
                extents.append((*_extent(t), names[i] if i < len(names) else f"argument {i}"))
        for key, arg in kwargs_hst.items():
            for t in _tensors(arg):
                extents.append((*_extent(t), key))
        _STATE.launch = (getattr(self.fn, "__name__", "kernel"), *_merge(extents))
        return args_hst, kwargs_hst

    def checked_call(self, *args, **kwargs):
        outer = getattr(_STATE, "launch", None)
        try:
            return call(self, *args, **kwargs)
        finally:
            _STATE.launch = outer

    builder.create_masked_load = checked_load
    builder.create_masked_store = checked_store
    builder.create_atomic_rmw = checked_rmw
    builder.create_atomic_cas = checked_cas
    executor._init_args_hst = recording_init
    executor.__call__ = checked_call
    _INSTALLED.append(True)
