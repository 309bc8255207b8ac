"""Adam with 8-bit or 32-bit states (weight decay is decoupled, as in AdamW; spec §8.5)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ._hyperparams import warn_ignored
from .optimizer import Optimizer2State


def _check_8bit(amsgrad: bool, optim_bits: int) -> None:
    if amsgrad:
        raise ValueError("8-bit Adam does not support amsgrad=True")
    if optim_bits != 32:
        raise ValueError(f"8-bit Adam always uses 8-bit states; leave optim_bits at its default, got {optim_bits}")


class Adam(Optimizer2State):
    """Adam; ``optim_bits`` chooses 8-bit or 32-bit states. ``amsgrad`` is accepted and ignored."""

    def __init__(
        self,
        params: Iterable,
        lr: float = 1e-3,
        betas: tuple[float, ...] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0,
        amsgrad: bool = False,
        optim_bits: int = 32,
        args: Any = None,
        min_8bit_size: int = 4096,
        is_paged: bool = False,
    ) -> None:
        warn_ignored(type(self).__name__, amsgrad=(amsgrad, False))
        super().__init__(
            "adam", params, lr, betas, eps, weight_decay, optim_bits, args, min_8bit_size, is_paged=is_paged
        )


class Adam8bit(Optimizer2State):
    """Adam with block-wise 8-bit states."""

    def __init__(
        self,
        params: Iterable,
        lr: float = 1e-3,
        betas: tuple[float, ...] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0,
        amsgrad: bool = False,
        optim_bits: int = 32,
        args: Any = None,
        min_8bit_size: int = 4096,
        is_paged: bool = False,
    ) -> None:
        _check_8bit(amsgrad, optim_bits)
        super().__init__("adam", params, lr, betas, eps, weight_decay, 8, args, min_8bit_size, is_paged=is_paged)


class Adam32bit(Optimizer2State):
    """Adam with 32-bit states."""

    def __init__(
        self,
        params: Iterable,
        lr: float = 1e-3,
        betas: tuple[float, ...] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0,
        amsgrad: bool = False,
        optim_bits: int = 32,
        args: Any = None,
        min_8bit_size: int = 4096,
        is_paged: bool = False,
    ) -> None:
        warn_ignored(type(self).__name__, amsgrad=(amsgrad, False))
        super().__init__("adam", params, lr, betas, eps, weight_decay, 32, args, min_8bit_size, is_paged=is_paged)


class PagedAdam(Optimizer2State):
    """Adam with paged states (``is_paged`` is accepted and ignored)."""

    def __init__(
        self,
        params: Iterable,
        lr: float = 1e-3,
        betas: tuple[float, ...] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0,
        amsgrad: bool = False,
        optim_bits: int = 32,
        args: Any = None,
        min_8bit_size: int = 4096,
        is_paged: bool = False,
    ) -> None:
        warn_ignored(type(self).__name__, amsgrad=(amsgrad, False))
        super().__init__("adam", params, lr, betas, eps, weight_decay, optim_bits, args, min_8bit_size, is_paged=True)


class PagedAdam8bit(Optimizer2State):
    """Adam with paged 8-bit states."""

    def __init__(
        self,
        params: Iterable,
        lr: float = 1e-3,
        betas: tuple[float, ...] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0,
        amsgrad: bool = False,
        optim_bits: int = 32,
        args: Any = None,
        min_8bit_size: int = 4096,
        is_paged: bool = False,
    ) -> None:
        _check_8bit(amsgrad, optim_bits)
        super().__init__("adam", params, lr, betas, eps, weight_decay, 8, args, min_8bit_size, is_paged=True)


class PagedAdam32bit(Optimizer2State):
    """Adam with paged 32-bit states."""

    def __init__(
        self,
        params: Iterable,
        lr: float = 1e-3,
        betas: tuple[float, ...] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0,
        amsgrad: bool = False,
        optim_bits: int = 32,
        args: Any = None,
        min_8bit_size: int = 4096,
        is_paged: bool = False,
    ) -> None:
        warn_ignored(type(self).__name__, amsgrad=(amsgrad, False))
        super().__init__("adam", params, lr, betas, eps, weight_decay, 32, args, min_8bit_size, is_paged=True)
