"""LAMB: Adam with a layer-wise trust-ratio clip of the update (32-bit states only, spec §8.5)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ._hyperparams import warn_ignored
from .optimizer import Optimizer2State


class LAMB(Optimizer2State):
    """LAMB; ``bias_correction``, ``amsgrad`` and ``adam_w_mode`` are accepted and ignored."""

    def __init__(
        self,
        params: Iterable,
        lr: float = 1e-3,
        bias_correction: bool = True,
        betas: tuple[float, ...] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0,
        amsgrad: bool = False,
        adam_w_mode: bool = True,
        optim_bits: int = 32,
        args: Any = None,
        min_8bit_size: int = 4096,
        max_unorm: float = 1.0,
    ) -> None:
        warn_ignored(
            type(self).__name__,
            bias_correction=(bias_correction, True),
            amsgrad=(amsgrad, False),
            adam_w_mode=(adam_w_mode, True),
        )
        super().__init__(
            "lamb", params, lr, betas, eps, weight_decay, optim_bits, args, min_8bit_size, max_unorm=max_unorm
        )


class LAMB8bit(Optimizer2State):
    """LAMB with block-wise 8-bit states (the trust-ratio clip applies to 32-bit states only)."""

    def __init__(
        self,
        params: Iterable,
        lr: float = 1e-3,
        bias_correction: bool = True,
        betas: tuple[float, ...] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0,
        amsgrad: bool = False,
        adam_w_mode: bool = True,
        args: Any = None,
        min_8bit_size: int = 4096,
        max_unorm: float = 1.0,
    ) -> None:
        if amsgrad:
            raise ValueError("LAMB8bit does not support amsgrad=True")
        if max_unorm != 1.0:
            raise ValueError(f"LAMB8bit supports only max_unorm=1.0, got {max_unorm}")
        warn_ignored(
            type(self).__name__,
            bias_correction=(bias_correction, True),
            amsgrad=(amsgrad, False),
            adam_w_mode=(adam_w_mode, True),
        )
        super().__init__("lamb", params, lr, betas, eps, weight_decay, 8, args, min_8bit_size, max_unorm=max_unorm)


class LAMB32bit(Optimizer2State):
    """LAMB with 32-bit states."""

    def __init__(
        self,
        params: Iterable,
        lr: float = 1e-3,
        bias_correction: bool = True,
        betas: tuple[float, ...] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0,
        amsgrad: bool = False,
        adam_w_mode: bool = True,
        args: Any = None,
        min_8bit_size: int = 4096,
        max_unorm: float = 1.0,
    ) -> None:
        warn_ignored(
            type(self).__name__,
            bias_correction=(bias_correction, True),
            amsgrad=(amsgrad, False),
            adam_w_mode=(adam_w_mode, True),
        )
        super().__init__("lamb", params, lr, betas, eps, weight_decay, 32, args, min_8bit_size, max_unorm=max_unorm)
