"""AdEMAMix (a fast and a slow EMA of the gradient, spec §8.5) with 8-bit or 32-bit states."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from ._hyperparams import ademamix_schedule
from .optimizer import Optimizer2State, _local


class AdEMAMix(Optimizer2State):
    """AdEMAMix; ``state1`` holds both EMAs, shape ``(2, *p.shape)``; ``state2`` the second moment."""

    def __init__(
        self,
        params: Iterable,
        lr: float = 1e-3,
        betas: tuple[float, ...] = (0.9, 0.999, 0.9999),
        alpha: float = 5.0,
        t_alpha: int | None = None,
        t_beta3: int | None = None,
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        optim_bits: int = 32,
        min_8bit_size: int = 4096,
        is_paged: bool = False,
    ) -> None:
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
        dtype = self._state_dtype(config, p)  # from the full size: every rank picks the same
        state = self.state[p]
        p = _local(p)
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
        # Both EMAs in one buffer of twice p's size: paged from half get_state_buffer's threshold.
        return self._state_zeros(p, (2, *p.shape), dtype, 0.5e5)

    def _betas3(self, config: dict[str, Any], step: int) -> tuple[float, float, float, float]:
        beta1, beta2, beta3 = config["betas"]
        alpha, beta3 = ademamix_schedule(config["alpha"], beta1, beta3, step, config["t_alpha"], config["t_beta3"])
        return beta1, beta2, beta3, alpha


class AdEMAMix8bit(AdEMAMix):
    """AdEMAMix with block-wise 8-bit states."""

    def __init__(
        self,
        params: Iterable,
        lr: float = 1e-3,
        betas: tuple[float, ...] = (0.9, 0.999, 0.9999),
        alpha: float = 5.0,
        t_alpha: int | None = None,
        t_beta3: int | None = None,
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        min_8bit_size: int = 4096,
        is_paged: bool = False,
    ) -> None:
        super().__init__(params, lr, betas, alpha, t_alpha, t_beta3, eps, weight_decay, 8, min_8bit_size, is_paged)


class AdEMAMix32bit(AdEMAMix):
    """AdEMAMix with 32-bit states (``state1`` of shape ``(2, *p.shape)``, which the established
    release got wrong)."""

    def __init__(
        self,
        params: Iterable,
        lr: float = 1e-3,
        betas: tuple[float, ...] = (0.9, 0.999, 0.9999),
        alpha: float = 5.0,
        t_alpha: int | None = None,
        t_beta3: int | None = None,
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        min_8bit_size: int = 4096,
        is_paged: bool = False,
    ) -> None:
        super().__init__(params, lr, betas, alpha, t_alpha, t_beta3, eps, weight_decay, 32, min_8bit_size, is_paged)


class PagedAdEMAMix(AdEMAMix):
    """AdEMAMix with paged states."""

    def __init__(
        self,
        params: Iterable,
        lr: float = 1e-3,
        betas: tuple[float, ...] = (0.9, 0.999, 0.9999),
        alpha: float = 5.0,
        t_alpha: int | None = None,
        t_beta3: int | None = None,
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        optim_bits: int = 32,
        min_8bit_size: int = 4096,
    ) -> None:
        super().__init__(params, lr, betas, alpha, t_alpha, t_beta3, eps, weight_decay, optim_bits, min_8bit_size, True)


class PagedAdEMAMix8bit(AdEMAMix):
    """AdEMAMix with paged 8-bit states."""

    def __init__(
        self,
        params: Iterable,
        lr: float = 1e-3,
        betas: tuple[float, ...] = (0.9, 0.999, 0.9999),
        alpha: float = 5.0,
        t_alpha: int | None = None,
        t_beta3: int | None = None,
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        min_8bit_size: int = 4096,
    ) -> None:
        super().__init__(params, lr, betas, alpha, t_alpha, t_beta3, eps, weight_decay, 8, min_8bit_size, True)


class PagedAdEMAMix32bit(AdEMAMix):
    """AdEMAMix with paged 32-bit states."""

    def __init__(
        self,
        params: Iterable,
        lr: float = 1e-3,
        betas: tuple[float, ...] = (0.9, 0.999, 0.9999),
        alpha: float = 5.0,
        t_alpha: int | None = None,
        t_beta3: int | None = None,
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        min_8bit_size: int = 4096,
    ) -> None:
        super().__init__(params, lr, betas, alpha, t_alpha, t_beta3, eps, weight_decay, 32, min_8bit_size, True)


class _ReferenceAdEMAMix(torch.optim.Optimizer):
    """AdEMAMix written plainly in PyTorch (one tensor op per formula term), the yardstick that
    optimizer tests compare the fused kernels with. State per parameter: ``m1_m2`` (the fast and
    the slow EMA stacked, shape ``(2, *p.shape)``) and ``nu`` (the second moment)."""

    def __init__(
        self,
        params: Iterable,
        lr: float = 1e-3,
        betas: tuple[float, float, float] = (0.9, 0.999, 0.9999),
        alpha: float = 5.0,
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        t_beta3: int | None = None,
        t_alpha: int | None = None,
    ) -> None:
        defaults = dict(
            lr=lr, betas=betas, alpha=alpha, eps=eps, weight_decay=weight_decay, t_alpha=t_alpha, t_beta3=t_beta3
        )
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        """One AdEMAMix step over every parameter with a gradient."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2, beta3 = group["betas"]
            lr, eps, wd = group["lr"], group["eps"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["m1_m2"] = p.new_zeros((2, *p.shape))
                    state["nu"] = torch.zeros_like(p)
                state["step"] += 1
                step = state["step"]
                alpha_t, beta3_t = ademamix_schedule(
                    group["alpha"], beta1, beta3, step, group["t_alpha"], group["t_beta3"]
                )
                grad = p.grad
                m1, m2 = state["m1_m2"][0], state["m1_m2"][1]
                nu = state["nu"]
                m1.lerp_(grad, 1 - beta1)  # fast EMA
                m2.lerp_(grad, 1 - beta3_t)  # slow EMA
                nu.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                m1_hat = m1 / (1 - beta1**step)
                denom = (nu / (1 - beta2**step)).sqrt_().add_(eps)
                if wd:
                    p.mul_(1 - lr * wd)
                p.addcdiv_(m1_hat + alpha_t * m2, denom, value=-lr)
        return loss
