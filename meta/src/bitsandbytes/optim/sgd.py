"""SGD with momentum, 8-bit or 32-bit momentum state (spec §8.5)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ._hyperparams import named_beta, warn_ignored
from .optimizer import Optimizer1State


def _need_momentum(momentum: float, dampening: float = 0.0) -> None:
    if momentum == 0:
        raise NotImplementedError("SGD without momentum is not supported; use torch.optim.SGD or pass momentum > 0")
    named_beta("momentum", momentum)  # betas[0]; dampening is betas[1] (stored, not applied)
    named_beta("dampening", dampening)


class SGD(Optimizer1State):
    """SGD with momentum; ``dampening`` and ``nesterov`` are accepted and ignored."""

    def __init__(
        self,
        params: Iterable,
        lr: float,
        momentum: float = 0,
        dampening: float = 0,
        weight_decay: float = 0,
        nesterov: bool = False,
        optim_bits: int = 32,
        args: Any = None,
        min_8bit_size: int = 4096,
    ) -> None:
        _need_momentum(momentum, dampening)
        warn_ignored(type(self).__name__, dampening=(dampening, 0), nesterov=(nesterov, False))
        super().__init__(
            "momentum", params, lr, (momentum, dampening), 0.0, weight_decay, optim_bits, args, min_8bit_size
        )


class SGD8bit(Optimizer1State):
    """SGD with a block-wise 8-bit momentum state."""

    def __init__(
        self,
        params: Iterable,
        lr: float,
        momentum: float = 0,
        dampening: float = 0,
        weight_decay: float = 0,
        nesterov: bool = False,
        args: Any = None,
        min_8bit_size: int = 4096,
    ) -> None:
        _need_momentum(momentum, dampening)
        warn_ignored(type(self).__name__, dampening=(dampening, 0), nesterov=(nesterov, False))
        super().__init__("momentum", params, lr, (momentum, dampening), 0.0, weight_decay, 8, args, min_8bit_size)


class SGD32bit(Optimizer1State):
    """SGD with a 32-bit momentum state."""

    def __init__(
        self,
        params: Iterable,
        lr: float,
        momentum: float = 0,
        dampening: float = 0,
        weight_decay: float = 0,
        nesterov: bool = False,
        args: Any = None,
        min_8bit_size: int = 4096,
    ) -> None:
        _need_momentum(momentum, dampening)
        warn_ignored(type(self).__name__, dampening=(dampening, 0), nesterov=(nesterov, False))
        super().__init__("momentum", params, lr, (momentum, dampening), 0.0, weight_decay, 32, args, min_8bit_size)
