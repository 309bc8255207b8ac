"""Python glue of the optimizer kernels (kernels_optim.metal): the scalar array, the launches.

The hyper-parameter scalars are formed here, in Python's doubles, exactly as optimizer_math.h's
make_optimizer_consts() forms them on the other platforms (Metal has no double), and bound as
one ``constant float*`` array: torch rounds each to f32 as ``static_cast<float>`` does.
"""

from __future__ import annotations

import abc
from typing import Any

import torch

from bitsandbytes import _checks as C
from bitsandbytes.backends import reference as R
from bitsandbytes.backends.reference.optimizers import ieee_div, ieee_pow, ieee_sqrt

OPTIMIZER_IDS = {"momentum": 0, "rmsprop": 1, "adagrad": 2, "adam": 3, "lion": 4, "ademamix": 5, "lamb": 6, "lars": 7}
"""C ABI ids (``bnb_optimizer``); lamb/lars share adam/momentum's math, their clip is max_unorm."""

SUFFIX = {torch.float32: "f32", torch.float16: "f16", torch.bfloat16: "bf16"}
THREADS = 256  # per threadgroup; the 8-bit kernel maps one threadgroup to one 256-element state block
MAX_ELEMENTS = 2**31 - 1


def optimizer_consts(
    optimizer_name: str,
    beta1: float,
    beta2: float,
    beta3: float,
    alpha: float,
    eps: float,
    weight_decay: float,
    lr: float,
    step: int,
    skip_zeros: bool,
    gnorm_scale: float,
    max_unorm: float,
    param_norm: float,
) -> list[float]:
    """The kernels' scalar array (kConsts entries, kernels_optim.metal): optimizer_math.h's
    make_optimizer_consts() computed in Python's doubles (the same libm pow and sqrt), each
    rounded to f32 when torch binds the list as floats, then gnorm_scale, max_unorm, param_norm."""
    b1, b2, b3, st = float(beta1), float(beta2), float(beta3), float(step)
    c1 = 1.0 - ieee_pow(b1, st)
    c2 = ieee_sqrt(1.0 - ieee_pow(b2, st))
    return [
        float(OPTIMIZER_IDS[optimizer_name]),
        1.0 if step == 1 else 0.0,
        1.0 if weight_decay > 0.0 else 0.0,
        1.0 if skip_zeros else 0.0,
        b1,
        b2,
        b3,
        float(alpha),
        float(eps),
        float(weight_decay),
        float(lr),
        1.0 - b1,
        1.0 - b2,
        1.0 - b3,
        c1,
        c2,
        float(eps) * c2,
        ieee_div(c2, c1),
        ieee_div(c1, c2),
        1.0 - float(lr) * float(weight_decay),
        float(gnorm_scale),
        float(max_unorm),
        float(param_norm),
    ]


class OptimizerKernels(abc.ABC):
    """The two optimizer ops; MetalKernels provides ``library`` and ``_device``."""

    @abc.abstractmethod
    def library(self, op: str) -> Any:
        """The compiled library, or None when the source does not compile."""

    @abc.abstractmethod
    def _device(self, **tensors: torch.Tensor | None) -> torch.device:
        """The one device of the given tensors, checked to be of this instance's type."""

    def optimizer_update_32bit(
        self,
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
        """One fused optimizer step with f32 states, in place (one launch; two with max_unorm > 0:
        per-threadgroup sums of ||u||^2, added on the device, then the clipped update)."""
        C.check_optimizer_common(optimizer_name, g, p, step, lr, eps)
        n = p.numel()
        two, clip = C.check_optimizer_32bit_states(optimizer_name, n, state1, state2, unorm_vec, max_unorm)
        device = self._device(
            g=g, p=p, state1=state1, state2=state2 if two else None, unorm_vec=unorm_vec if clip else None
        )
        C.check_optimizer_32bit_no_alias(g, p, state1, state2 if two else None, unorm_vec if clip else None)
        if n == 0:
            if clip:
                unorm_vec.zero_()  # type: ignore[union-attr]  # the norm of an empty update
            return
        lib = self.library("optimizer_update_32bit")
        if lib is None or n > MAX_ELEMENTS:
            R.KERNELS["optimizer_update_32bit"](
                optimizer_name, g, p, state1, state2, unorm_vec, max_unorm, param_norm, beta1, beta2, beta3, alpha,
                eps, weight_decay, step, lr, gnorm_scale, skip_zeros,
            )  # fmt: skip
            return
        consts = optimizer_consts(
            optimizer_name, beta1, beta2, beta3, alpha, eps, weight_decay, lr, step, skip_zeros, gnorm_scale,
            max_unorm if clip else 0.0, param_norm,
        )  # fmt: skip
        kernel = getattr(lib, f"bnb_optimizer_32bit_{SUFFIX[p.dtype]}")
        groups = -(n // -THREADS)
        gc = g.contiguous()
        pc = p if p.is_contiguous() else p.contiguous()
        s2 = state2 if two else state1  # unused buffers are bound to state1
        if clip:
            partials = torch.empty(groups, dtype=torch.float32, device=device)
            kernel(gc, pc, state1, s2, state1, partials, consts, n, 1, threads=groups * THREADS, group_size=THREADS)
            unorm_vec.copy_(partials.sum().reshape(unorm_vec.shape))  # type: ignore[union-attr]
            kernel(gc, pc, state1, s2, unorm_vec, state1, consts, n, 2, threads=groups * THREADS, group_size=THREADS)
            unorm_vec.sqrt_()  # type: ignore[union-attr]  # the kernels use ||u||^2, the op returns ||u||
        else:
            kernel(gc, pc, state1, s2, state1, state1, consts, n, 0, threads=groups * THREADS, group_size=THREADS)
        if pc is not p:
            p.copy_(pc)

    def optimizer_update_8bit_blockwise(
        self,
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
        """One fused optimizer step with block-wise 8-bit states (blocks of 256), in place."""
        C.check_optimizer_common(optimizer_name, g, p, step, lr, eps)
        n = p.numel()
        two = C.check_optimizer_8bit_states(optimizer_name, n, state1, state2, qmap1, qmap2, absmax1, absmax2)
        if not two:
            state2 = qmap2 = absmax2 = None
        self._device(g=g, p=p, state1=state1, state2=state2, qmap1=qmap1, qmap2=qmap2, absmax1=absmax1, absmax2=absmax2)
        C.check_optimizer_8bit_no_alias(
            g, p, state1, state2 if two else None, qmap1, qmap2 if two else None, absmax1, absmax2 if two else None
        )
        if n == 0:
            return
        lib = self.library("optimizer_update_8bit_blockwise")
        if lib is None or 2 * n > MAX_ELEMENTS:
            R.KERNELS["optimizer_update_8bit_blockwise"](
                optimizer_name, g, p, state1, state2, beta1, beta2, beta3, alpha, eps, step, lr, qmap1, qmap2,
                absmax1, absmax2, weight_decay, gnorm_scale, skip_zeros,
            )  # fmt: skip
            return
        consts = optimizer_consts(
            optimizer_name, beta1, beta2, beta3, alpha, eps, weight_decay, lr, step, skip_zeros, gnorm_scale, 0.0, 0.0
        )
        nblocks = -(n // -THREADS)
        q1 = qmap1.contiguous()
        q2 = qmap2.contiguous() if qmap2 is not None else q1
        pc = p if p.is_contiguous() else p.contiguous()
        getattr(lib, f"bnb_optimizer_8bit_blockwise_{SUFFIX[p.dtype]}")(
            g.contiguous(), pc, state1, state2 if state2 is not None else state1, q1, q2, absmax1,
            absmax2 if absmax2 is not None else absmax1, consts, n, nblocks,
            threads=nblocks * THREADS, group_size=THREADS,
        )  # fmt: skip
        if pc is not p:
            p.copy_(pc)
