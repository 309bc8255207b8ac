"""Functional optimizer updates and the paging helpers (spec §3.4, §3.5).

``bitsandbytes.functional`` re-exports everything public here. The update functions are thin
wrappers over ``torch.ops.bitsandbytes.optimizer_update_*``, so whichever kernel a platform
wheel registered for the device serves them.
"""

from __future__ import annotations

import logging

import torch

from . import _ops  # noqa: F401  (defines torch.ops.bitsandbytes)

logger = logging.getLogger(__name__)

FIRST_CUDA_DEVICE = torch.device("cuda", 0)


class GlobalPageManager:
    """Singleton registry of paged (unified-memory) tensors. Use ``get_instance()``."""

    _instance: GlobalPageManager | None = None

    def __init__(self) -> None:
        raise RuntimeError("Call get_instance() instead")

    def initialize(self) -> None:
        """Reset the registry."""
        self.paged_tensors: list[torch.Tensor] = []

    @classmethod
    def get_instance(cls) -> GlobalPageManager:
        """The one instance, created on first use."""
        if cls._instance is None:
            inst = cls.__new__(cls)
            inst.initialize()
            cls._instance = inst
        return cls._instance

    def prefetch_all(self, to_cpu: bool = False) -> None:
        """Prefetch every registered paged tensor, most recently registered first."""
        for t in self.paged_tensors[::-1]:
            prefetch_tensor(t, to_cpu)


_PAGED_ALLOCATOR = None
"""Set by a platform wheel that supports unified memory: ``(shape, dtype, device) -> Tensor``."""

_PAGED_PREFETCH = None
"""Set with ``_PAGED_ALLOCATOR``: ``(tensor, to_cpu) -> None``."""


def paging_supported() -> bool:
    """Whether an installed platform wheel provides paged (unified-memory) tensors."""
    return _PAGED_ALLOCATOR is not None


def get_paged(
    *shape: int, dtype: torch.dtype = torch.float32, device: torch.device = FIRST_CUDA_DEVICE
) -> torch.Tensor:
    """A paged (unified-memory) tensor with attributes ``is_paged`` and ``page_deviceid``.

    Needs a platform wheel with paging support (CUDA); raises RuntimeError otherwise.
    """
    if _PAGED_ALLOCATOR is None:
        raise RuntimeError(
            "bitsandbytes: paged memory needs a platform wheel with unified-memory support "
            '(e.g. pip install "bitsandbytes[cuda12x]"); none is loaded'
        )
    t = _PAGED_ALLOCATOR(tuple(shape), dtype, torch.device(device))
    t.is_paged = True
    t.page_deviceid = torch.device(device).index
    return t


def prefetch_tensor(A: torch.Tensor, to_cpu: bool = False) -> None:
    """Ask the driver to migrate paged tensor ``A`` to its device (or to the CPU)."""
    assert getattr(A, "is_paged", False), "Only paged tensors can be prefetched!"
    if _PAGED_PREFETCH is None:
        raise RuntimeError("bitsandbytes: no platform wheel with paging support is loaded")
    _PAGED_PREFETCH(A, to_cpu)


def is_on_gpu(tensors: list[torch.Tensor | None]) -> bool:
    """Check that the tensors (None and paged ones ignored) share one device; True or RuntimeError.

    All on the CPU is fine, as is all on one accelerator; a CPU/accelerator mix or two
    accelerators raise.
    """
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


def optimizer_update_32bit(
    optimizer_name: str,
    g: torch.Tensor,
    p: torch.Tensor,
    state1: torch.Tensor,
    beta1: float,
    eps: float,
    step: int,
    lr: float,
    state2: torch.Tensor | None = None,
    beta2: float = 0.0,
    beta3: float = 0.0,
    alpha: float = 0.0,
    weight_decay: float = 0.0,
    gnorm_scale: float = 1.0,
    unorm_vec: torch.Tensor | None = None,
    max_unorm: float = 0.0,
    skip_zeros: bool = False,
) -> None:
    """One optimizer step with 32-bit states, in place on ``p`` and the states.

    ``optimizer_name`` is one of adam, lamb, momentum, lars, rmsprop, adagrad, lion, ademamix.
    With ``max_unorm > 0`` the update is clipped to ``max_unorm * ‖p‖₂`` (LAMB / LARS trust
    ratio), its squared norm written to ``unorm_vec``.
    """
    param_norm = 0.0
    if max_unorm > 0.0:
        param_norm = float(torch.norm(p.data.float()))
    is_on_gpu([g, p, state1, state2, unorm_vec])
    torch.ops.bitsandbytes.optimizer_update_32bit(
        optimizer_name,
        g,
        p,
        state1,
        state2,
        unorm_vec,
        float(max_unorm),
        param_norm,
        float(beta1),
        float(beta2),
        float(beta3),
        float(alpha),
        float(eps),
        float(weight_decay),
        int(step),
        float(lr),
        float(gnorm_scale),
        bool(skip_zeros),
    )


def optimizer_update_8bit_blockwise(
    optimizer_name: str,
    g: torch.Tensor,
    p: torch.Tensor,
    state1: torch.Tensor,
    state2: torch.Tensor | None,
    beta1: float,
    beta2: float,
    beta3: float,
    alpha: float,
    eps: float,
    step: int,
    lr: float,
    qmap1: torch.Tensor,
    qmap2: torch.Tensor | None,
    absmax1: torch.Tensor,
    absmax2: torch.Tensor | None,
    weight_decay: float = 0.0,
    gnorm_scale: float = 1.0,
    skip_zeros: bool = False,
) -> None:
    """One optimizer step with block-wise (256) 8-bit states, in place on ``p``, states, absmax."""
    is_on_gpu([g, p, state1, state2, qmap1, qmap2, absmax1, absmax2])
    torch.ops.bitsandbytes.optimizer_update_8bit_blockwise(
        optimizer_name,
        g,
        p,
        state1,
        state2,
        float(beta1),
        float(beta2),
        float(beta3),
        float(alpha),
        float(eps),
        int(step),
        float(lr),
        qmap1,
        qmap2,
        absmax1,
        absmax2,
        float(weight_decay),
        float(gnorm_scale),
        bool(skip_zeros),
    )


__all__ = [
    "FIRST_CUDA_DEVICE",
    "GlobalPageManager",
    "get_paged",
    "is_on_gpu",
    "optimizer_update_32bit",
    "optimizer_update_8bit_blockwise",
    "paging_supported",
    "prefetch_tensor",
]
