"""Adagrad with 8-bit or 32-bit states (spec §8.5)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from .optimizer import Optimizer1State


def _check(lr: float, lr_decay: float, weight_decay: float, initial_accumulator_value: float, eps: float) -> None:
    if not 0.0 <= lr:
        raise ValueError(f"Invalid learning rate: {lr}")
    if not 0.0 <= weight_decay:
        raise ValueError(f"Invalid weight_decay value: {weight_decay}")
    if not 0.0 <= eps:
        raise ValueError(f"Invalid epsilon value: {eps}")
    if initial_accumulator_value != 0.0:
        raise ValueError("Adagrad: initial_accumulator_value != 0.0 is not supported")
    if lr_decay != 0.0:
        raise ValueError("Adagrad: lr_decay != 0.0 is not supported")


class Adagrad(Optimizer1State):
    """Adagrad; ``optim_bits`` chooses 8-bit or 32-bit states."""

    def __init__(
        self,
        params: Iterable,
        lr: float = 1e-2,
        lr_decay: float = 0,
        weight_decay: float = 0,
        initial_accumulator_value: float = 0,
        eps: float = 1e-10,
        optim_bits: int = 32,
        args: Any = None,
        min_8bit_size: int = 4096,
    ) -> None:
        _check(lr, lr_decay, weight_decay, initial_accumulator_value, eps)
        super().__init__("adagrad", params, lr, (0.0, 0.0), eps, weight_decay, optim_bits, args, min_8bit_size)


class Adagrad8bit(Optimizer1State):
    """Adagrad with block-wise 8-bit states (``optim_bits`` must stay 8)."""

    def __init__(
        self,
        params: Iterable,
        lr: float = 1e-2,
        lr_decay: float = 0,
        weight_decay: float = 0,
        initial_accumulator_value: float = 0,
        eps: float = 1e-10,
        optim_bits: int = 8,
        args: Any = None,
        min_8bit_size: int = 4096,
    ) -> None:
        _check(lr, lr_decay, weight_decay, initial_accumulator_value, eps)
        if optim_bits != 8:
            raise ValueError(f"Adagrad8bit uses 8-bit states; optim_bits must be 8, got {optim_bits}")
        super().__init__("adagrad", params, lr, (0.0, 0.0), eps, weight_decay, 8, args, min_8bit_size)


class Adagrad32bit(Optimizer1State):
    """Adagrad with 32-bit states."""

    def __init__(
        self,
        params: Iterable,
        lr: float = 1e-2,
        lr_decay: float = 0,
        weight_decay: float = 0,
        initial_accumulator_value: float = 0,
        eps: float = 1e-10,
        optim_bits: int = 32,
        args: Any = None,
        min_8bit_size: int = 4096,
    ) -> None:
        _check(lr, lr_decay, weight_decay, initial_accumulator_value, eps)
        super().__init__("adagrad", params, lr, (0.0, 0.0), eps, weight_decay, 32, args, min_8bit_size)
