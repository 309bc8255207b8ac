"""SGD with momentum, 8-bit or 32-bit momentum state (spec §8.5)."""

from __future__ import annotations

from .optimizer import Optimizer1State


def _need_momentum(momentum: float) -> None:
    if momentum == 0:
        raise NotImplementedError("SGD without momentum is not supported; use torch.optim.SGD or pass momentum > 0")


class SGD(Optimizer1State):
    """SGD with momentum; ``dampening`` and ``nesterov`` are accepted and ignored."""

    def __init__(
        self,
        params,
        lr,
        momentum=0,
        dampening=0,
        weight_decay=0,
        nesterov=False,
        optim_bits=32,
        args=None,
        min_8bit_size=4096,
    ):
        _need_momentum(momentum)
        super().__init__(
            "momentum", params, lr, (momentum, dampening), 0.0, weight_decay, optim_bits, args, min_8bit_size
        )


class SGD8bit(Optimizer1State):
    """SGD with a block-wise 8-bit momentum state."""

    def __init__(
        self, params, lr, momentum=0, dampening=0, weight_decay=0, nesterov=False, args=None, min_8bit_size=4096
    ):
        _need_momentum(momentum)
        super().__init__("momentum", params, lr, (momentum, dampening), 0.0, weight_decay, 8, args, min_8bit_size)


class SGD32bit(Optimizer1State):
    """SGD with a 32-bit momentum state."""

    def __init__(
        self, params, lr, momentum=0, dampening=0, weight_decay=0, nesterov=False, args=None, min_8bit_size=4096
    ):
        _need_momentum(momentum)
        super().__init__("momentum", params, lr, (momentum, dampening), 0.0, weight_decay, 32, args, min_8bit_size)
