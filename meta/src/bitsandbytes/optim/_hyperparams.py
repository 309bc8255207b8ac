"""Checks of the optimizers' hyperparameters at construction (spec §8.1, §8.5), and AdEMAMix's
warm-up schedule of ``alpha`` and ``beta3``."""

from __future__ import annotations

import math
from typing import Any

from .manager import is_finite_number


def validate_hyperparameters(lr: float, eps: float, betas: Any, weight_decay: float, nbetas: int = 2) -> list[float]:
    """The checks torch.optim makes of its hyperparameters, and that ``betas`` holds the ``nbetas``
    values the update reads (else the first step fails with an IndexError that names nothing)."""
    if isinstance(betas, str):
        betas = betas.replace("(", "").replace(")", "").strip().split(",")
        betas = [float(b) for b in betas if b.strip()]
    if not hasattr(betas, "__len__") or len(betas) < nbetas:
        raise ValueError(f"Invalid betas: {betas!r} (this optimizer needs {nbetas} values)")
    if not 0.0 <= lr:
        raise ValueError(f"Invalid learning rate: {lr}")
    if not 0.0 <= eps:
        raise ValueError(f"Invalid epsilon value: {eps}")
    for i, b in enumerate(betas):
        if not 0.0 <= b < 1.0:
            raise ValueError(f"Invalid beta parameter at index {i}: {b} (each beta must lie in [0, 1))")
    if not 0.0 <= weight_decay:
        raise ValueError(f"Invalid weight_decay value: {weight_decay}")
    return betas


def validate_ademamix(alpha: float, t_alpha: int | None, t_beta3: int | None) -> None:
    """AdEMAMix's mixing weight and warm-up lengths: a bad one turns every parameter to NaN later."""
    if not (is_finite_number(alpha) and alpha >= 0.0):
        raise ValueError(f"Invalid alpha value: {alpha} (must be a finite number >= 0)")
    for name, t in (("t_alpha", t_alpha), ("t_beta3", t_beta3)):
        if t is not None and not (is_finite_number(t) and t >= 0):
            raise ValueError(f"Invalid {name} value: {t!r} (a number of steps >= 0, or None)")


def ademamix_schedule(alpha: float, beta1: float, beta3: float, step: int, t_alpha, t_beta3) -> tuple[float, float]:
    """AdEMAMix's warm-up of ``alpha`` and ``beta3`` at ``step`` (spec §8.5); unchanged when unset."""
    alpha_t = min(step * alpha / t_alpha, alpha) if t_alpha else alpha
    beta3_t = beta3
    if t_beta3:
        ln_b1, ln_b3 = math.log(beta1), math.log(beta3)
        s = step / t_beta3
        beta3_t = min(math.exp((ln_b1 * ln_b3) / ((1 - s) * ln_b3 + s * ln_b1)), beta3)
    return alpha_t, beta3_t
