"""AdEMAMix (a fast and a slow EMA of the gradient, spec §8.5) with 8-bit or 32-bit states."""

from __future__ import annotations

from typing import Any

import torch

from .optimizer import Optimizer2State, ademamix_schedule


class AdEMAMix(Optimizer2State):
    """AdEMAMix; ``state1`` holds both EMAs, shape ``(2, *p.shape)``; ``state2`` the second moment."""

    def __init__(
        self,
        params,
        lr=1e-3,
        betas=(0.9, 0.999, 0.9999),
        alpha=5.0,
        t_alpha=None,
        t_beta3=None,
        eps=1e-8,
        weight_decay=1e-2,
        optim_bits=32,
        min_8bit_size=4096,
        is_paged=False,
    ):
        super().__init__(
            "ademamix",
            params,
            lr=lr,
            betas=betas,
            eps=eps,
            weight_decay=weight_decay,
            optim_bits=optim_bits,
            args=None,
            min_8bit_size=min_8bit_size,
            max_unorm=0.0,
            skip_zeros=False,
            is_paged=is_paged,
            alpha=alpha,
            t_alpha=t_alpha,
            t_beta3=t_beta3,
        )

    @torch.no_grad()
    def init_state(self, group: dict[str, Any], p: torch.Tensor, gindex: int, pindex: int) -> None:
        """Create ``state1`` (two EMAs) and ``state2`` of ``p``, 8-bit when large enough."""
        config = self.get_config(gindex, pindex, group)
        dtype = self._state_dtype(config, p)
        state = self.state[p]
        state["step"] = 0
        if dtype == torch.uint8:
            qmap1, qmap2 = self._qmaps(p.device)
            state["qmap1"] = qmap1
            state["qmap2"] = qmap2
            state["absmax1"] = self._absmax(p, 2)
            state["absmax2"] = self._absmax(p)
        state["state1"] = self._pair_buffer(p, dtype)
        state["state2"] = self.get_state_buffer(p, dtype=dtype)

    def _pair_buffer(self, p: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        # Both EMAs in one buffer. A paged variant of this buffer comes with paging support in a
        # platform wheel; until then it is ordinary memory (get_state_buffer logs that for state2).
        return torch.zeros((2, *p.shape), dtype=dtype, device=p.device)

    def _betas3(self, config: dict[str, Any], step: int) -> tuple[float, float, float, float]:
        beta1, beta2, beta3 = config["betas"]
        alpha, beta3 = ademamix_schedule(config["alpha"], beta1, beta3, step, config["t_alpha"], config["t_beta3"])
        return beta1, beta2, beta3, alpha


class AdEMAMix8bit(AdEMAMix):
    """AdEMAMix with block-wise 8-bit states."""

    def __init__(
        self,
        params,
        lr=1e-3,
        betas=(0.9, 0.999, 0.9999),
        alpha=5.0,
        t_alpha=None,
        t_beta3=None,
        eps=1e-8,
        weight_decay=1e-2,
        min_8bit_size=4096,
        is_paged=False,
    ):
        super().__init__(params, lr, betas, alpha, t_alpha, t_beta3, eps, weight_decay, 8, min_8bit_size, is_paged)


class AdEMAMix32bit(AdEMAMix):
    """AdEMAMix with 32-bit states (``state1`` of shape ``(2, *p.shape)``, which the established
    release got wrong)."""

    def __init__(
        self,
        params,
        lr=1e-3,
        betas=(0.9, 0.999, 0.9999),
        alpha=5.0,
        t_alpha=None,
        t_beta3=None,
        eps=1e-8,
        weight_decay=1e-2,
        min_8bit_size=4096,
        is_paged=False,
    ):
        super().__init__(params, lr, betas, alpha, t_alpha, t_beta3, eps, weight_decay, 32, min_8bit_size, is_paged)


class PagedAdEMAMix(AdEMAMix):
    """AdEMAMix with paged states."""

    def __init__(
        self,
        params,
        lr=1e-3,
        betas=(0.9, 0.999, 0.9999),
        alpha=5.0,
        t_alpha=None,
        t_beta3=None,
        eps=1e-8,
        weight_decay=1e-2,
        optim_bits=32,
        min_8bit_size=4096,
    ):
        super().__init__(params, lr, betas, alpha, t_alpha, t_beta3, eps, weight_decay, optim_bits, min_8bit_size, True)


class PagedAdEMAMix8bit(AdEMAMix):
    """AdEMAMix with paged 8-bit states."""

    def __init__(
        self,
        params,
        lr=1e-3,
        betas=(0.9, 0.999, 0.9999),
        alpha=5.0,
        t_alpha=None,
        t_beta3=None,
        eps=1e-8,
        weight_decay=1e-2,
        min_8bit_size=4096,
    ):
        super().__init__(params, lr, betas, alpha, t_alpha, t_beta3, eps, weight_decay, 8, min_8bit_size, True)


class PagedAdEMAMix32bit(AdEMAMix):
    """AdEMAMix with paged 32-bit states."""

    def __init__(
        self,
        params,
        lr=1e-3,
        betas=(0.9, 0.999, 0.9999),
        alpha=5.0,
        t_alpha=None,
        t_beta3=None,
        eps=1e-8,
        weight_decay=1e-2,
        min_8bit_size=4096,
    ):
        super().__init__(params, lr, betas, alpha, t_alpha, t_beta3, eps, weight_decay, 32, min_8bit_size, True)
