"""Paged (CUDA managed) memory for paged optimizers: tensors the GPU and the CPU both address.

The driver migrates pages on demand, so optimizer states can exceed GPU memory; ``prefetch``
moves them ahead of use on a stream.
"""

from __future__ import annotations

import bisect
import ctypes
import threading
import weakref

import torch

from . import _C

# Live allocations, address -> bytes (and the sorted addresses): ``prefetch`` looks a tensor's
# memory up here, so that it migrates exactly the allocation that holds it (a view's elements may
# span more bytes than numel * element_size, or fewer) and refuses memory that is not paged
# (cudaMemPrefetchAsync of ordinary device or host memory fails inside the driver).
_LIVE: dict[int, int] = {}
_STARTS: list[int] = []
_LOCK = threading.RLock()  # _release also runs from the garbage collector, in any thread


def _release(address: int) -> None:
    with _LOCK:
        _LIVE.pop(address, None)
        i = bisect.bisect_left(_STARTS, address)
        if i < len(_STARTS) and _STARTS[i] == address:
            del _STARTS[i]
    _C.paged_free(address)


def _allocation_of(address: int) -> tuple[int, int] | None:
    """(start, bytes) of the live paged allocation holding ``address``, or None."""
    with _LOCK:
        i = bisect.bisect_right(_STARTS, address) - 1
        if i < 0:
            return None
        start = _STARTS[i]
        size = _LIVE[start]
    return (start, size) if address < start + size else None


def holds(t: torch.Tensor) -> bool:
    """Whether every byte ``t`` addresses lies in one live paged allocation: such a tensor reports
    device ``cpu``, yet the kernels of any GPU may read and write it in place."""
    if t.numel() == 0:
        return True
    span = t.element_size() * (1 + sum((size - 1) * abs(stride) for size, stride in zip(t.shape, t.stride())))
    found = _allocation_of(t.data_ptr())
    return found is not None and t.data_ptr() + span <= found[0] + found[1]


def empty_paged(shape: tuple[int, ...] | list[int], dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A CPU-addressable tensor backed by managed memory (freed when the tensor is collected).

    As in the established release, the tensor reports device ``cpu``; kernels may read it from
    any GPU. Mark it with ``is_paged = True`` for callers that treat paged tensors specially.
    """
    dims = tuple(int(s) for s in shape)
    if any(s < 0 for s in dims):
        raise ValueError(f"bitsandbytes_cuda: shape must be non-negative, got {list(dims)}")
    if not isinstance(dtype, torch.dtype):
        raise TypeError(f"bitsandbytes_cuda: dtype must be a torch.dtype, got {dtype!r}")
    numel = 1
    for s in dims:
        numel *= s
    if numel == 0:  # nothing to page (the driver refuses an empty allocation)
        t = torch.empty(dims, dtype=dtype)
        t.is_paged = True  # type: ignore[attr-defined]
        return t
    nbytes = numel * torch.empty((), dtype=dtype).element_size()
    address = _C.paged_alloc(nbytes)
    with _LOCK:
        _LIVE[address] = nbytes
        bisect.insort(_STARTS, address)
    buffer = (ctypes.c_byte * nbytes).from_address(address)
    weakref.finalize(buffer, _release, address)
    t = torch.frombuffer(buffer, dtype=dtype, count=numel).view(dims)
    # frombuffer holds a reference to ``buffer`` for the storage's lifetime (views included), so
    # the memory is freed after the last tensor on it. Nothing else goes into the tensor's
    # __dict__: torch.save pickles it (a state dict of a paged optimizer is saved as it is).
    t.is_paged = True  # type: ignore[attr-defined]
    return t


def prefetch(t: torch.Tensor, device: int | torch.device | None = None, to_cpu: bool = False) -> None:
    """Migrate the pages of paged tensor ``t`` (or of a view of one) to GPU ``device`` (default:
    the current one) or to the host. An empty tensor has nothing to move."""
    if t.numel() == 0:
        return
    found = _allocation_of(t.data_ptr())
    if found is None:
        raise ValueError("bitsandbytes_cuda: t is not a paged tensor (allocate it with empty_paged)")
    if isinstance(device, torch.device):
        device = device.index
    target = -1 if to_cpu else (_current_device() if device is None else int(device))
    _C.paged_prefetch(found[0], found[1], target, _stream(target))


def _current_device() -> int:
    return torch.cuda.current_device()


def _stream(device: int) -> int:
    """The current stream of GPU ``device`` (of the current GPU for the host, -1)."""
    return torch.cuda.current_stream(device if device >= 0 else None).cuda_stream
