"""Paged (unified-memory) tensors for paged optimizers (spec §3.5).

A platform wheel whose device has unified memory (CUDA, ROCm) offers it through an optional
``paged_memory()`` hook, which the platform loader hands to :func:`set_provider` after the wheel's
kernels are registered. A paged tensor reports device ``cpu`` (the host addresses it too); the
device's kernels read and write it in place, and the driver moves its pages on demand, so
optimizer states may exceed device memory. Without a provider, paged optimizers keep their states
in ordinary device memory and :func:`get_paged` raises.

``bitsandbytes.functional`` re-exports the public names.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable
from typing import Any

import torch

from ._singleton import Singleton

FIRST_CUDA_DEVICE = torch.device("cuda", 0)

_PROVIDER: tuple[str, Callable[..., torch.Tensor], Callable[..., None]] | None = None
"""(device type, allocate(shape, dtype), prefetch(tensor, device_index, to_cpu)) of the loaded wheel."""


_ALLOCATED: dict[int, weakref.ref] = {}
"""id -> weak reference of the live tensors :func:`get_paged` made (a WeakSet would compare
tensors with ``==``). A copy of one (``deepcopy``, ``torch.load`` of a checkpoint) keeps the
``is_paged`` attribute but is ordinary host memory."""


def set_provider(
    device_type: str | None,
    allocate: Callable[..., torch.Tensor] | None = None,
    prefetch: Callable[..., None] | None = None,
) -> None:
    """Use a platform wheel's unified memory for paged tensors of ``device_type`` devices (None: none)."""
    global _PROVIDER
    if device_type is None:
        _PROVIDER = None
        return
    if not (callable(allocate) and callable(prefetch)):
        raise TypeError("bitsandbytes: paged_memory() must return (allocate, prefetch), two callables")
    _PROVIDER = (device_type, allocate, prefetch)


def is_paged(t: Any) -> bool:
    """Whether ``t`` is a paged tensor from :func:`get_paged` itself (not a copy carrying the flag)."""
    ref = _ALLOCATED.get(id(t))
    return ref is not None and ref() is t


def paging_supported(device: torch.device | str | None = None) -> bool:
    """Whether a loaded platform wheel provides paged tensors (for ``device``'s type, if given)."""
    return _PROVIDER is not None and (device is None or torch.device(device).type == _PROVIDER[0])


class GlobalPageManager(Singleton):
    """Singleton registry of paged tensors. Use ``get_instance()``."""

    _instance: GlobalPageManager | None = None

    def initialize(self) -> None:
        """Reset the registry."""
        self.paged_tensors: list[torch.Tensor] = []

    def prefetch_all(self, to_cpu: bool = False) -> None:
        """Prefetch every registered paged tensor, most recently registered first."""
        for t in self.paged_tensors[::-1]:
            prefetch_tensor(t, to_cpu)


def get_paged(
    *shape: int, dtype: torch.dtype = torch.float32, device: torch.device = FIRST_CUDA_DEVICE
) -> torch.Tensor:
    """A paged (unified-memory) tensor, uninitialised, with attributes ``is_paged = True`` and
    ``page_deviceid`` (``device``'s index: where :func:`prefetch_tensor` moves it).

    Needs a platform wheel with unified memory for ``device``'s type; raises RuntimeError otherwise.
    """
    device = torch.device(device)
    if not paging_supported(device):
        raise RuntimeError(
            f"bitsandbytes: paged memory for {device.type} devices needs a platform wheel with unified-memory "
            'support (e.g. pip install "bitsandbytes[cuda12x]"); none is loaded'
        )
    assert _PROVIDER is not None
    t = _PROVIDER[1](tuple(int(s) for s in shape), dtype)
    t.is_paged = True
    t.page_deviceid = device.index
    key = id(t)
    _ALLOCATED[key] = weakref.ref(t, lambda _: _ALLOCATED.pop(key, None))
    return t


class NotPagedError(ValueError, AssertionError):
    """A tensor that should be paged is not. The established release asserts ``A.is_paged`` (spec
    §3.5), so this is an AssertionError as well as a ValueError."""


def prefetch_tensor(A: torch.Tensor, to_cpu: bool = False) -> None:
    """Ask the driver to move paged tensor ``A``'s pages to its device (``A.page_deviceid``, the
    current device when None) or to the host."""
    if not getattr(A, "is_paged", False):
        raise NotPagedError("bitsandbytes: prefetch_tensor needs a paged tensor (A.is_paged is not True)")
    if _PROVIDER is None:
        raise RuntimeError("bitsandbytes: no platform wheel with paging support is loaded")
    _PROVIDER[2](A, getattr(A, "page_deviceid", None), to_cpu)


def synchronize(device: torch.device) -> None:
    """Wait for ``device``'s queued work: kernels update paged tensors asynchronously, and the host
    reads the same memory (a state dict, a fill) without any stream ordering it after them."""
    if device.type != "cpu":
        getattr(torch, device.type).synchronize(device)


def _synchronize_if_paged(tensors: Iterable[Any]) -> None:
    paged = [t for t in tensors if is_paged(t)]
    if paged and _PROVIDER is not None:
        index = getattr(paged[0], "page_deviceid", None)
        synchronize(torch.device(_PROVIDER[0], index) if index is not None else torch.device(_PROVIDER[0]))


def fill(A: torch.Tensor, value: float, device: Any = None, prefetch: bool = True) -> None:
    """Set every element of ``A`` (paged or not) to ``value``, in place."""
    _synchronize_if_paged([A])
    A.fill_(value)


def _mul(A: torch.Tensor, B: torch.Tensor, device: Any = None) -> None:
    """``A *= B`` element-wise, in place (paged tensors included)."""
    _synchronize_if_paged([A, B])
    A.mul_(B)


def elementwise_func(func_name: str, A: torch.Tensor, B: Any, value: float, prefetch: bool = True) -> None:
    """The element-wise helpers over (paged) tensors, in place on ``A``: ``"fill"`` (with ``value``),
    ``"arange"`` (0, 1, 2, ... in ``A``'s flat order) and ``"_mul"`` (``A *= B``)."""
    if func_name == "fill":
        fill(A, value)
    elif func_name == "_mul":
        _mul(A, B)
    elif func_name == "arange":
        _synchronize_if_paged([A])
        A.copy_(torch.arange(A.numel(), dtype=A.dtype, device=A.device).view(A.shape))
    else:
        raise ValueError(f"bitsandbytes: elementwise_func: unknown func_name {func_name!r} (fill, arange or _mul)")


def is_on_gpu(tensors: Iterable[torch.Tensor | None]) -> bool:
    """Check that the tensors (None and paged ones ignored) share one device; True or RuntimeError.

    All on the CPU is fine, as is all on one accelerator; a CPU/accelerator mix or two
    accelerators raise.
    """
    tensors = list(tensors)
    on_cpu = False
    devices: set[tuple[str, int | None]] = set()
    for t in tensors:
        if t is None or getattr(t, "is_paged", False):
            continue
        if t.device.type == "cpu":
            on_cpu = True
        else:
            devices.add((t.device.type, t.device.index))
    if on_cpu and devices:
        shapes = [(tuple(t.shape), str(t.device)) for t in tensors if t is not None]
        raise RuntimeError(f"All input tensors need to be on the same device, but found some on the CPU: {shapes}")
    if len(devices) > 1:
        shapes = [(tuple(t.shape), str(t.device)) for t in tensors if t is not None]
        raise RuntimeError(f"Input tensors need to be on the same accelerator device, but found: {shapes}")
    return True
