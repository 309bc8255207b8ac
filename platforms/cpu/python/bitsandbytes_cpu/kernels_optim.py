"""Python glue of the fused optimizer updates (32-bit and block-wise 8-bit states; see ``kernels``)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from bitsandbytes import _checks as C

from . import _C
from ._codes import DTYPE_CODE
from .kernels import _nt, _on_cpu

OPTIMIZER_CODE = {"momentum": 0, "rmsprop": 1, "adagrad": 2, "adam": 3, "lion": 4, "ademamix": 5, "lamb": 6, "lars": 7}


def optimizer_update_32bit(
    optimizer_name: str,
    g: torch.Tensor,
    p: torch.Tensor,
    state1: torch.Tensor,
    state2: torch.Tensor | None,
    unorm_vec: torch.Tensor | None,
    max_unorm: float,
    param_norm: float,
    beta1: float,
    beta2: float,
    beta3: float,
    alpha: float,
    eps: float,
    weight_decay: float,
    step: int,
    lr: float,
    gnorm_scale: float,
    skip_zeros: bool = False,
) -> None:
    """One fused optimizer step with f32 states (one pass; two with max_unorm > 0)."""
    C.check_optimizer_common(optimizer_name, g, p, step, lr, eps)
    n = p.numel()
    two, clip = C.check_optimizer_32bit_states(optimizer_name, n, state1, state2, unorm_vec, max_unorm)
    _on_cpu(g=g, p=p, state1=state1)
    p_dense, g_dense = p.is_contiguous(), g.is_contiguous()
    if not (p_dense and g_dense):  # the kernel gets copies: their originals' memory is checked here
        C.check_optimizer_32bit_no_alias(g, p, state1, state2 if two else None, unorm_vec if clip else None)
    if n == 0:
        if clip:
            unorm_vec.zero_()  # the norm of an empty update (the C ABI writes it too)
        return
    pc = p if p_dense else p.contiguous()
    gc = g if g_dense else g.contiguous()
    _C.optimizer_update_32bit(
        OPTIMIZER_CODE[optimizer_name],
        gc.data_ptr(),
        pc.data_ptr(),
        DTYPE_CODE[p.dtype],
        state1.data_ptr(),
        state2.data_ptr() if two else 0,
        unorm_vec.data_ptr() if clip else 0,
        n,
        beta1,
        beta2,
        beta3,
        alpha,
        eps,
        weight_decay,
        lr,
        gnorm_scale,
        max_unorm,
        float(param_norm),
        step,
        bool(skip_zeros),
        _nt(),
    )
    if clip:
        unorm_vec.sqrt_()  # the C ABI returns ||u||^2; the op interface holds ||u||
    if pc is not p:
        p.copy_(pc)


def optimizer_update_8bit_blockwise(
    optimizer_name: str,
    g: torch.Tensor,
    p: torch.Tensor,
    state1: torch.Tensor,
    state2: torch.Tensor | None,
    beta1: float,
    beta2: float,
    beta3: float,
    alpha: float,
    eps: float,
    step: int,
    lr: float,
    qmap1: torch.Tensor,
    qmap2: torch.Tensor | None,
    absmax1: torch.Tensor,
    absmax2: torch.Tensor | None,
    weight_decay: float,
    gnorm_scale: float,
    skip_zeros: bool = False,
) -> None:
    """One fused optimizer step with block-wise 8-bit states: dequantize, update and requantize
    in registers, one pass over the parameter."""
    C.check_optimizer_common(optimizer_name, g, p, step, lr, eps)
    n = p.numel()
    two = C.check_optimizer_8bit_states(optimizer_name, n, state1, state2, qmap1, qmap2, absmax1, absmax2)
    _on_cpu(g=g, p=p, state1=state1, qmap1=qmap1, absmax1=absmax1)
    p_dense, g_dense = p.is_contiguous(), g.is_contiguous()
    if not (p_dense and g_dense):  # the kernel gets copies: their originals' memory is checked here
        C.check_optimizer_8bit_no_alias(
            g, p, state1, state2 if two else None, qmap1, qmap2 if two else None, absmax1, absmax2 if two else None
        )
    if n == 0:  # the library is not called: its checks of the code books, as the reference makes them
        C.check_code_ascending(qmap1, "qmap1")
        if two:
            C.check_code_ascending(qmap2, "qmap2")
        return
    pc = p if p_dense else p.contiguous()
    gc = g if g_dense else g.contiguous()
    q1 = qmap1.contiguous()
    q2 = qmap2.contiguous() if two else None
    _C.optimizer_update_8bit_blockwise(
        OPTIMIZER_CODE[optimizer_name],
        gc.data_ptr(),
        pc.data_ptr(),
        DTYPE_CODE[p.dtype],
        state1.data_ptr(),
        state2.data_ptr() if two else 0,
        q1.data_ptr(),
        q2.data_ptr() if two else 0,
        absmax1.data_ptr(),
        absmax2.data_ptr() if two else 0,
        n,
        beta1,
        beta2,
        beta3,
        alpha,
        eps,
        weight_decay,
        lr,
        gnorm_scale,
        step,
        bool(skip_zeros),
        _nt(),
    )
    if pc is not p:
        p.copy_(pc)


KERNELS: dict[str, Callable] = {
    "optimizer_update_32bit": optimizer_update_32bit,
    "optimizer_update_8bit_blockwise": optimizer_update_8bit_blockwise,
}
