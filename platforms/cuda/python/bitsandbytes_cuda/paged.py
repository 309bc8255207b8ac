"""Paged (CUDA managed) memory for paged optimizers: tensors the GPU and the CPU both address.

The driver migrates pages on demand, so optimizer states can exceed GPU memory; ``prefetch``
moves them ahead of use on a stream.
"""

from __future__ import annotations

import ctypes
import weakref

import torch

from . import _C


def empty_paged(shape: tuple[int, ...] | list[int], dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A CPU-addressable tensor backed by managed memory (freed when the tensor is collected).

    As in the established release, the tensor reports device ``cpu``; kernels may read it from
    any GPU. Mark it with ``is_paged = True`` for callers that treat paged tensors specially.
    """
    numel = 1
    for s in shape:
        numel *= int(s)
    nbytes = max(numel * torch.empty((), dtype=dtype).element_size(), 1)
    address = _C.paged_alloc(nbytes)
    buffer = (ctypes.c_byte * nbytes).from_address(address)
    t = torch.frombuffer(buffer, dtype=dtype, count=numel).view(tuple(int(s) for s in shape))
    weakref.finalize(buffer, _C.paged_free, address)
    t.is_paged = True  # type: ignore[attr-defined]
    t._bnb_paged_buffer = buffer  # type: ignore[attr-defined]  # keeps the memory alive
    return t


def prefetch(t: torch.Tensor, device: int | None = None, to_cpu: bool = False) -> None:
    """Migrate a paged tensor's pages to GPU ``device`` (default: the current one) or to the host."""
    target = -1 if to_cpu else (torch.cuda.current_device() if device is None else int(device))
    stream = torch.cuda.current_stream(max(target, 0) if target >= 0 else None).cuda_stream
    _C.paged_prefetch(t.data_ptr(), t.numel() * t.element_size(), target, stream)
