"""Gaudi kernels of the two optimizer ops: one whole-tensor graph per step, every algorithm.

The update rule is not restated here: ``_direction`` (the state update and the step direction of
each algorithm), ``_apply`` (the parameter write with decoupled decay), ``_clip_vector`` (what the
trust-ratio clip measures) and the 8-bit state codec (``_dequant``, ``_grid_index``,
``_grid_points``) are the reference backend's own functions (spec §8.5), which branch only on the
algorithm and the hyperparameters. What differs from the reference is only what Gaudi's graph
compiler needs:

* one pass over the whole tensor (no Python loop over chunks, which would unroll into the graph);
* the trust-ratio clip without a host round trip: ``‖u‖`` stays a device tensor and the scale is
  ``where(‖u‖ > limit, limit / ‖u‖, 1)``; the norm is summed in f32 (Gaudi has no f64), so
  ``unorm_vec`` agrees with the reference's f64 sum within f32 rounding;
* the 8-bit code table (the code nearest each of the 65536 grid points) built in the graph from
  ``qmap`` by the branchless search, instead of a host-side cache validated with ``torch.equal``;
* the scalars that change every step (the bias corrections of ``step``, ``lr``, ``gnorm_scale``,
  ``max_unorm * param_norm``) enter as 0-dim device tensors, graph inputs rather than constants,
  so that a learning-rate schedule does not compile a graph per step (momentum's first step,
  which copies the gradient into the state, remains a graph of its own). This is the design's
  intent for Gaudi's graph cache; it cannot be measured without a Gaudi.
"""

from __future__ import annotations

import torch

from bitsandbytes import _checks as C
from bitsandbytes.backends.reference import optimizers as rule
from bitsandbytes.backends.reference.codebooks import midpoints

from .kernels import nearest_index


def _scalar(value: float, device: torch.device) -> torch.Tensor:
    """A 0-dim f32 tensor holding ``value`` (copied to the device: data, not graph structure)."""
    return torch.tensor(value, dtype=torch.float32, device=device)


def _hyper(name, beta1, beta2, beta3, alpha, eps, weight_decay, step, lr, device) -> rule._Hyper:
    """The reference's per-call scalars, with the per-step ones (c1, c2, lr) as device tensors."""
    h = rule._Hyper(name, beta1, beta2, beta3, alpha, eps, weight_decay, step, lr)
    h.c1, h.c2, h.lr = _scalar(h.c1, device), _scalar(h.c2, device), _scalar(h.lr, device)
    return h


def _grad(g: torch.Tensor, gnorm_scale: float) -> torch.Tensor:
    gc = g.reshape(-1).float()
    return gc * _scalar(gnorm_scale, g.device) if gnorm_scale != 1.0 else gc


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
    """One optimizer step with f32 states, in place on ``p``, ``state1``, ``state2``, ``unorm_vec``.

    With ``max_unorm > 0`` the update is scaled by ``min(1, max_unorm * param_norm / ‖u‖)`` and
    ``unorm_vec[0]`` receives ``‖u‖`` (the LAMB / LARS trust-ratio clip).
    """
    C.check_optimizer_common(optimizer_name, g, p, step, lr, eps)
    n = p.numel()
    two, clip = C.check_optimizer_32bit_states(optimizer_name, n, state1, state2, unorm_vec, max_unorm)
    C.check_same_device({"g": g, "p": p, "state1": state1, "state2": state2, "unorm_vec": unorm_vec})
    C.check_optimizer_32bit_no_alias(g, p, state1, state2 if two else None, unorm_vec if clip else None)
    h = _hyper(optimizer_name, beta1, beta2, beta3, alpha, eps, weight_decay, step, lr, p.device)

    gc = _grad(g, gnorm_scale)
    pc = p.reshape(-1).float()
    s1 = state1.view(2, n) if optimizer_name == "ademamix" else state1.view(-1)
    s2 = state2.view(-1) if two else None  # type: ignore[union-attr]
    if skip_zeros:
        old1, old2 = s1.clone(), (s2.clone() if s2 is not None else None)
    d = rule._direction(h, gc, pc, s1, s2)  # updates s1 / s2 in place

    scale: float | torch.Tensor = 1.0
    if clip:
        u = rule._clip_vector(h, d.masked_fill(gc == 0, 0.0) if skip_zeros else d)
        unorm = u.square().sum().sqrt()
        unorm_vec.copy_(unorm.reshape(unorm_vec.shape))  # type: ignore[union-attr]
        limit = _scalar(max_unorm * float(param_norm), p.device)
        scale = torch.where(unorm > limit, limit / unorm, 1.0)

    newp = rule._apply(h, pc, d, scale)
    if skip_zeros:
        keep = gc == 0
        newp = torch.where(keep, pc, newp)
        s1.copy_(torch.where(keep, old1, s1))
        if s2 is not None:
            s2.copy_(torch.where(keep, old2, s2))
    p.copy_(newp.view(p.shape))


def _grid_table(qmap: torch.Tensor) -> torch.Tensor:
    """The uint8 code of the ``qmap`` entry nearest each of the 65536 grid points, in the graph."""
    return nearest_index(rule._grid_points(qmap.device), midpoints(qmap)).to(torch.uint8)


def _requantize(x: torch.Tensor, qmap: torch.Tensor, codes_out: torch.Tensor, absmax_out: torch.Tensor) -> None:
    """The reference's state quantization (``rule._quant``) with the table built in the graph."""
    rows, k = x.shape
    idx, absmax = rule._grid_index(x, absmax_out.shape[1])
    codes_out.copy_(_grid_table(qmap).index_select(0, idx.reshape(-1)).view(rows, k))
    absmax_out.copy_(absmax)


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
    """One optimizer step with block-wise 8-bit states (block size 256), in place: dequantize the
    states, apply the update in f32, write ``p`` in its dtype, re-quantize with fresh absmax."""
    C.check_optimizer_common(optimizer_name, g, p, step, lr, eps)
    n = p.numel()
    two = C.check_optimizer_8bit_states(optimizer_name, n, state1, state2, qmap1, qmap2, absmax1, absmax2)
    C.check_same_device(
        {
            "g": g,
            "p": p,
            "state1": state1,
            "state2": state2,
            "qmap1": qmap1,
            "qmap2": qmap2,
            "absmax1": absmax1,
            "absmax2": absmax2,
        }
    )
    C.check_optimizer_8bit_no_alias(
        g, p, state1, state2 if two else None, qmap1, qmap2 if two else None, absmax1, absmax2 if two else None
    )
    rows = 2 if optimizer_name == "ademamix" else 1
    blocks = C.num_blocks(n, rule.STATE_BLOCKSIZE)
    h = _hyper(optimizer_name, beta1, beta2, beta3, alpha, eps, weight_decay, step, lr, p.device)

    q1, a1 = state1.view(rows, n), absmax1.view(rows, blocks)
    s1 = rule._dequant(q1, a1, qmap1)
    q2 = a2 = s2 = None
    if two:
        q2, a2 = state2.view(1, n), absmax2.view(1, blocks)  # type: ignore[union-attr]
        s2 = rule._dequant(q2, a2, qmap2).view(-1)  # type: ignore[arg-type]
    gc = _grad(g, gnorm_scale)
    pc = p.reshape(-1).float()
    if skip_zeros:
        old1, old2 = s1.clone(), (s2.clone() if s2 is not None else None)
    d = rule._direction(h, gc, pc, s1 if rows == 2 else s1.view(-1), s2)
    newp = rule._apply(h, pc, d, 1.0)
    if skip_zeros:
        keep = gc == 0
        newp = torch.where(keep, pc, newp)
        s1 = torch.where(keep, old1, s1)
        if s2 is not None:
            s2 = torch.where(keep, old2, s2)
    p.copy_(newp.view(p.shape))
    _requantize(s1, qmap1, q1, a1)
    if two:
        _requantize(s2.view(1, -1), qmap2, q2, a2)  # type: ignore[union-attr,arg-type]
