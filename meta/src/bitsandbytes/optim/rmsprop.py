"""RMSprop with 8-bit or 32-bit states (``alpha`` is the smoothing constant, spec §8.5)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ._hyperparams import named_beta, warn_ignored
from .optimizer import Optimizer1State


def _check(alpha: float, centered: bool, momentum: float = 0.0) -> None:
    if alpha == 0:
        raise NotImplementedError("RMSprop with alpha == 0.0 is not supported")
    if centered:
        raise NotImplementedError("Centered RMSprop is not supported")
    named_beta("alpha", alpha)  # betas = (alpha, momentum)
    named_beta("momentum", momentum)


class RMSprop(Optimizer1State):
    """RMSprop; ``momentum`` is stored but not applied by the update."""

    def __init__(
        self,
        params: Iterable,
        lr: float = 1e-2,
        alpha: float = 0.99,
        eps: float = 1e-8,
        weight_decay: float = 0,
        momentum: float = 0,
        centered: bool = False,
        optim_bits: int = 32,
        args: Any = None,
        min_8bit_size: int = 4096,
    ) -> None:
        _check(alpha, centered, momentum)
        warn_ignored(type(self).__name__, momentum=(momentum, 0))
        super().__init__("rmsprop", params, lr, (alpha, momentum), eps, weight_decay, optim_bits, args, min_8bit_size)


class RMSprop8bit(Optimizer1State):
    """RMSprop with block-wise 8-bit states."""

    def __init__(
        self,
        params: Iterable,
        lr: float = 1e-2,
        alpha: float = 0.99,
        eps: float = 1e-8,
        weight_decay: float = 0,
        momentum: float = 0,
        centered: bool = False,
        args: Any = None,
        min_8bit_size: int = 4096,
    ) -> None:
        _check(alpha, centered, momentum)
        warn_ignored(type(self).__name__, momentum=(momentum, 0))
        super().__init__("rmsprop", params, lr, (alpha, momentum), eps, weight_decay, 8, args, min_8bit_size)


class RMSprop32bit(Optimizer1State):
    """RMSprop with 32-bit states."""

    def __init__(
        self,
        params: Iterable,
        lr: float = 1e-2,
        alpha: float = 0.99,
        eps: float = 1e-8,
        weight_decay: float = 0,
        momentum: float = 0,
        centered: bool = False,
        args: Any = None,
        min_8bit_size: int = 4096,
    ) -> None:
        _check(alpha, centered, momentum)
        warn_ignored(type(self).__name__, momentum=(momentum, 0))
        super().__init__("rmsprop", params, lr, (alpha, momentum), eps, weight_decay, 32, args, min_8bit_size)
