"""Checks of the optimizers' hyperparameters at construction (spec §8.1, §8.5), the ``betas`` a
parameter group's step uses, and AdEMAMix's warm-up schedule of ``alpha`` and ``beta3``."""

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


_NO_MOMENTUM = {
    "rmsprop": "its betas[0] is the smoothing constant alpha (the scheduler would cycle alpha) and its "
    "momentum (betas[1]) is not applied",
    "adagrad": "its betas are not applied (the scheduler's momentum would be ignored)",
}
"""Kernels whose ``betas[0]`` is no momentum: a scheduler cycling momentum is refused (the
``"base_momentum"`` entry OneCycleLR and CyclicLR write to each group marks it)."""

_TORCH_BETA1_NAME = {"momentum": "momentum", "lars": "momentum", "rmsprop": "alpha"}
"""torch.optim's group key for ``betas[0]`` of the bitsandbytes kernels whose ``betas`` hold
another algorithm's hyperparameters (SGD/LARS: momentum; RMSprop: the smoothing constant)."""


def group_betas(group: dict[str, Any], optimizer_name: str | None, cls_name: str) -> tuple[float, ...]:
    """``group["betas"]``, with torch.optim's names for its entries taking their place when the
    group has them: ``"momentum"`` for ``betas[0]`` of SGD and LARS (``(momentum, dampening)``),
    ``"alpha"`` for ``betas[0]`` of RMSprop (``(alpha, momentum)``). Torch code writes those
    names: ``ZeroRedundancyOptimizer`` copies its own groups' entries (a scheduler cycling
    ``momentum``, e.g. OneCycleLR) into the local optimizer's groups every step.

    Raises ValueError when a scheduler cycles momentum (OneCycleLR, CyclicLR) for RMSprop or
    Adagrad, whose ``betas[0]`` is no momentum.
    """
    betas = group["betas"]
    if optimizer_name in _NO_MOMENTUM and "base_momentum" in group:
        raise ValueError(
            f"{cls_name} has no momentum to cycle, but a scheduler with cycle_momentum=True "
            f"(OneCycleLR, CyclicLR) drives its parameter group: {_NO_MOMENTUM[optimizer_name]}. Create the "
            f"scheduler with cycle_momentum=False"
        )
    key = _TORCH_BETA1_NAME.get(optimizer_name)
    if key is not None and key in group:
        return (group[key], *tuple(betas)[1:])
    return betas
