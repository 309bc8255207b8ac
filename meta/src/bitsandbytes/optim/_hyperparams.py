"""Checks of the optimizers' hyperparameters at construction (spec §8.1, §8.5), the ``betas`` a
parameter group's step uses, and AdEMAMix's warm-up schedule of ``alpha`` and ``beta3``."""

from __future__ import annotations

import math
import warnings
from typing import Any

from .._checks import OPTIMIZER_NAMES, TWO_STATE_OPTIMIZERS
from .manager import is_finite_number

TWO_STATE = tuple(n for n in OPTIMIZER_NAMES if n in TWO_STATE_OPTIMIZERS)
ONE_STATE = tuple(n for n in OPTIMIZER_NAMES if n not in TWO_STATE_OPTIMIZERS)


def validate_hyperparameters(lr: float, eps: float, betas: Any, weight_decay: float, nbetas: int = 2) -> list[float]:
    """The checks torch.optim makes of its hyperparameters, and that ``betas`` holds exactly the
    ``nbetas`` values the update reads (too few fail the first step with an IndexError that names
    nothing; a surplus one would be ignored without a word, where torch.optim refuses it)."""
    if isinstance(betas, str):
        betas = betas.replace("(", "").replace(")", "").strip().split(",")
        betas = [float(b) for b in betas if b.strip()]
    if not hasattr(betas, "__len__") or len(betas) != nbetas:
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


def validate_settings(cls_name: str, optimizer_name: str, two_state: bool, args: Any) -> None:
    """The settings of ``args`` (``optim_bits``, ``min_8bit_size``, ``max_unorm``) and the kernel
    name, checked at construction: a bad one would otherwise surface at the first step, or be
    silently taken as another value (a negative ``max_unorm`` as no clip)."""
    names = TWO_STATE if two_state else ONE_STATE
    if optimizer_name not in names:
        other = ONE_STATE if two_state else TWO_STATE
        hint = f" ({optimizer_name!r} is updated by {'Optimizer1State' if two_state else 'Optimizer2State'})"
        raise ValueError(
            f"Invalid optimizer_name for {cls_name}: {optimizer_name!r}; expected one of {', '.join(names)}"
            + (hint if optimizer_name in other else "")
        )
    bits = getattr(args, "optim_bits", 32)
    if isinstance(bits, bool) or bits not in (8, 32):
        raise ValueError(f"Invalid optim_bits value: {bits!r} (8 or 32)")
    size = getattr(args, "min_8bit_size", 0)
    if not (is_finite_number(size) and size >= 0):
        raise ValueError(f"Invalid min_8bit_size value: {size!r} (a number of elements >= 0)")
    max_unorm = getattr(args, "max_unorm", 0.0)
    if not (is_finite_number(max_unorm) and max_unorm >= 0):
        raise ValueError(f"Invalid max_unorm value: {max_unorm!r} (a finite number >= 0; 0 turns the clip off)")


def named_beta(name: str, value: float) -> None:
    """``betas`` entries that a class takes under torch.optim's name (SGD's ``momentum``,
    RMSprop's ``alpha``): checked under that name, in [0, 1) as every beta."""
    if not (is_finite_number(value) and 0.0 <= value < 1.0):
        raise ValueError(f"Invalid {name} value: {value!r} (must lie in [0, 1))")


def warn_ignored(cls_name: str, **given: tuple[Any, Any]) -> None:
    """Warn for each argument ``name=(value, default)`` that the class accepts for compatibility
    but its update does not apply (spec §8.2), when it is not left at its default: the caller
    asked for something (AMSGrad, Nesterov momentum, RMSprop momentum) the steps will not do."""
    for name, (value, default) in given.items():
        if value != default:
            warnings.warn(
                f"{cls_name}: {name}={value!r} is accepted for compatibility but not applied by the "
                f"update, which behaves as {name}={default!r}",
                UserWarning,
                stacklevel=3,
            )


def check_group_betas(betas: Any, optimizer_name: str | None, cls_name: str) -> None:
    """The betas a step reads from a parameter group or an override: as many as the update uses."""
    need = 3 if optimizer_name == "ademamix" else 2
    if not hasattr(betas, "__len__") or len(betas) != need:
        raise ValueError(
            f"{cls_name}: invalid betas {betas!r} in a parameter group or an override (this optimizer "
            f"needs {need} values)"
        )


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
