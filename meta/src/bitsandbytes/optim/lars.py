"""LARS: SGD with momentum and a layer-wise trust-ratio clip (spec §8.5), plus a pure-PyTorch twin."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch

from ._hyperparams import named_beta, warn_ignored
from .optimizer import Optimizer1State


def _need_momentum(momentum: float, dampening: float = 0.0) -> None:
    if momentum == 0:
        raise NotImplementedError("LARS without momentum is not supported; pass momentum > 0")
    named_beta("momentum", momentum)  # betas[0]; dampening is betas[1] (stored, not applied)
    named_beta("dampening", dampening)


class LARS(Optimizer1State):
    """LARS; ``dampening`` and ``nesterov`` are accepted and ignored."""

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
        max_unorm: float = 0.02,
    ) -> None:
        _need_momentum(momentum, dampening)
        warn_ignored(type(self).__name__, dampening=(dampening, 0), nesterov=(nesterov, False))
        super().__init__(
            "lars",
            params,
            lr,
            (momentum, dampening),
            0.0,
            weight_decay,
            optim_bits,
            args,
            min_8bit_size,
            max_unorm=max_unorm,
        )


class LARS8bit(Optimizer1State):
    """LARS with block-wise 8-bit states (the trust-ratio clip applies to 32-bit states only)."""

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
        max_unorm: float = 0.02,
    ) -> None:
        _need_momentum(momentum, dampening)
        warn_ignored(type(self).__name__, dampening=(dampening, 0), nesterov=(nesterov, False))
        super().__init__(
            "lars", params, lr, (momentum, dampening), 0.0, weight_decay, 8, args, min_8bit_size, max_unorm=max_unorm
        )


class LARS32bit(Optimizer1State):
    """LARS with 32-bit states."""

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
        max_unorm: float = 0.02,
    ) -> None:
        _need_momentum(momentum, dampening)
        warn_ignored(type(self).__name__, dampening=(dampening, 0), nesterov=(nesterov, False))
        super().__init__(
            "lars", params, lr, (momentum, dampening), 0.0, weight_decay, 32, args, min_8bit_size, max_unorm=max_unorm
        )


class PytorchLARS(torch.optim.Optimizer):
    """LARS written with plain PyTorch ops (state key ``momentum_buffer``), as a reference."""

    def __init__(
        self,
        params: Iterable,
        lr: float = 0.01,
        momentum: float = 0,
        dampening: float = 0,
        weight_decay: float = 0,
        nesterov: bool = False,
        max_unorm: float = 0.02,
    ) -> None:
        if lr < 0.0:
            raise ValueError(f"Invalid learning rate: {lr}")
        if momentum < 0.0:
            raise ValueError(f"Invalid momentum value: {momentum}")
        if weight_decay < 0.0:
            raise ValueError(f"Invalid weight_decay value: {weight_decay}")
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("Nesterov momentum requires a momentum and zero dampening")
        defaults = dict(
            lr=lr,
            momentum=momentum,
            dampening=dampening,
            weight_decay=weight_decay,
            nesterov=nesterov,
            max_unorm=max_unorm,
        )
        super().__init__(params, defaults)

    def __setstate__(self, state):
        super().__setstate__(state)
        for group in self.param_groups:
            group.setdefault("nesterov", False)

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """One LARS step; returns the closure's loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            wd, momentum, dampening = group["weight_decay"], group["momentum"], group["dampening"]
            nesterov, max_unorm, lr = group["nesterov"], group["max_unorm"], group["lr"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                d_p = p.grad
                if wd != 0:
                    d_p = d_p.add(p, alpha=wd)
                update = d_p
                if momentum != 0:
                    state = self.state[p]
                    buf = state.get("momentum_buffer")
                    if buf is None:
                        buf = d_p.detach().clone()
                        state["momentum_buffer"] = buf
                    else:
                        buf.mul_(momentum).add_(d_p, alpha=1 - dampening)
                    update = d_p + buf * momentum if nesterov else buf
                scale = 1.0
                if max_unorm > 0.0:
                    pnorm = torch.norm(p.detach().float())
                    unorm = torch.norm(update.float())
                    if unorm > max_unorm * pnorm:
                        scale = float(max_unorm * pnorm / unorm)
                p.add_(update, alpha=-lr * scale)
        return loss
