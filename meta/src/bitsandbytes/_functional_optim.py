"""Functional optimizer updates (spec §3.4); the paging helpers (§3.5) live in ``_paging``.

``bitsandbytes.functional`` re-exports everything public here. The update functions are thin
wrappers over ``torch.ops.bitsandbytes.optimizer_update_*``, so whichever kernel a platform
wheel registered for the device serves them.
"""

from __future__ import annotations

import logging

import torch

from . import _ops  # noqa: F401  (defines torch.ops.bitsandbytes)
from ._paging import (  # noqa: F401  (the paging helpers were defined here before)
    FIRST_CUDA_DEVICE,
    GlobalPageManager,
    get_paged,
    is_on_gpu,
    paging_supported,
    prefetch_tensor,
)

logger = logging.getLogger(__name__)


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
    ratio), its norm ‖u‖₂ written to ``unorm_vec``.
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
