"""The fused optimizer updates (f32 states and block-wise 8-bit states) as Triton kernels + glue.

One rule, the reference's (``backends/reference/optimizers.py``, spec §8.5), with the rounding of
each step as ``shared/include/bnb/optimizer_math.h`` writes it for the native platforms: one f32
rounding per operation in the reference's order, a fused multiply-add exactly where torch's
``add(alpha=)`` / ``addcmul`` fuse, division and square root correctly rounded. The scalars come
from the reference's ``_Hyper`` (bias corrections) and its algorithm ids (``OPTIMIZER_IDS``:
lamb runs adam's rule, lars momentum's); the 8-bit code lookup is the reference's 65536-point
grid table (``_grid_table``), so states are re-quantized with the reference's rule.

Races: every program owns a disjoint range of elements (8-bit: whole 256-element blocks, whose
absmax it alone computes and writes). The trust-ratio clip (max_unorm > 0) needs the norm of the
whole update before any element moves: a first launch writes one partial sum per program, the
host adds them (in f64) and the second launch applies the step; no atomics anywhere.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from bitsandbytes import _checks as C
from bitsandbytes.backends.reference import optimizers as R

from ._launch import LAUNCH, OUT_KIND, clamp_unit, device_guard, inverse_absmax, nan_absmax, store_float, store_view

BLOCK32 = 1024
"""Elements per program of the 32-bit update."""

GROUPS8 = 4
"""256-element blocks per program of the 8-bit update."""

_DECOUPLED = {"adam", "lamb", "ademamix", "lion"}


@triton.jit
def _sign(x):
    return tl.where(x > 0.0, 1.0, tl.where(x < 0.0, -1.0, 0.0))  # torch.sign (NaN gives 0)


@triton.jit
def _direction(
    g, p, s1, s1b, s2, b1, b2, b3, omb1, omb2, omb3, alpha, eps, wd, c1, c2, eps_c2, c2_over_c1,
    OPT: tl.constexpr, FIRST: tl.constexpr, HAS_WD: tl.constexpr,
):  # fmt: skip
    """(direction d, new s1, new s1b, new s2) of one element; OPT is the reference's id."""
    if OPT == 3:  # adam, lamb
        s1 = tl.fma(omb1 + tl.zeros_like(g), g, s1 * b1)
        s2 = tl.fma(omb2 * g, g, s2 * b2)
        d = tl.math.div_rn(s1, tl.sqrt_rn(s2) + eps_c2) * c2_over_c1
    elif OPT == 5:  # ademamix
        s1 = tl.fma(omb1 + tl.zeros_like(g), g, s1 * b1)
        s1b = tl.fma(omb3 + tl.zeros_like(g), g, s1b * b3)
        s2 = tl.fma(omb2 * g, g, s2 * b2)
        num = tl.math.div_rn(s1, c1 + tl.zeros_like(g)) + alpha * s1b
        d = tl.math.div_rn(num, tl.math.div_rn(tl.sqrt_rn(s2), c2 + tl.zeros_like(g)) + eps)
    elif OPT == 4:  # lion
        d = _sign(s1 * b1 + g * omb1)
        s1 = tl.fma(omb2 + tl.zeros_like(g), g, s1 * b2)
    else:
        if HAS_WD:
            g = g + wd * p
        if OPT == 0:  # momentum, lars
            if FIRST:
                s1 = g
            else:
                s1 = s1 * b1 + g
            d = s1
        elif OPT == 1:  # rmsprop
            s1 = tl.fma(omb1 * g, g, s1 * b1)
            d = tl.math.div_rn(g, tl.sqrt_rn(s1) + eps)
        else:  # adagrad
            s1 = tl.fma(g, g, s1)
            d = tl.math.div_rn(g, tl.sqrt_rn(s1) + eps)
    return d, s1, s1b, s2


@triton.jit
def _update32_kernel(
    G, P, PW, S1, S2, UPART, n, gnorm, b1, b2, b3, omb1, omb2, omb3, alpha, eps, wd, c1, c2, eps_c2, c2_over_c1,
    c1_over_c2, decay, lr_s,
    OPT: tl.constexpr, FIRST: tl.constexpr, HAS_WD: tl.constexpr, DECOUPLED: tl.constexpr, SCALE_G: tl.constexpr,
    SKIP0: tl.constexpr, TWO: tl.constexpr, MEASURE: tl.constexpr, P_OUT: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    i = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m = i < n
    g = tl.load(G + i, mask=m, other=0.0).to(tl.float32)
    if SCALE_G:
        g = g * gnorm
    p = tl.load(P + i, mask=m, other=0.0).to(tl.float32)
    s1 = tl.load(S1 + i, mask=m, other=0.0)
    s1b = s1
    s2 = s1
    if OPT == 5:
        s1b = tl.load(S1 + n + i, mask=m, other=0.0)
    if TWO:
        s2 = tl.load(S2 + i, mask=m, other=0.0)
    d, n1, n1b, n2 = _direction(g, p, s1, s1b, s2, b1, b2, b3, omb1, omb2, omb3, alpha, eps, wd, c1, c2, eps_c2,
                                c2_over_c1, OPT, FIRST, HAS_WD)  # fmt: skip
    keep = tl.zeros([BLOCK], dtype=tl.int1)
    if SKIP0:
        keep = g == 0.0
    if MEASURE:
        u = d
        if OPT == 3:
            u = d * c1_over_c2
        u = tl.where(keep, 0.0, tl.where(m, u, 0.0))
        tl.store(UPART + tl.program_id(0), tl.sum(u * u, axis=0))
    else:
        q = p
        if DECOUPLED:
            q = p * decay
        newp = tl.where(keep, p, q - d * lr_s)
        store_float(PW + i, newp, m, P_OUT)
        tl.store(S1 + i, tl.where(keep, s1, n1), mask=m)
        if OPT == 5:
            tl.store(S1 + n + i, tl.where(keep, s1b, n1b), mask=m)
        if TWO:
            tl.store(S2 + i, tl.where(keep, s2, n2), mask=m)


def _consts(name: str, beta1, beta2, beta3, alpha, eps, weight_decay, step, lr) -> dict:
    """The scalars of one call, formed in f64 from the reference's _Hyper (rounded to f32 at launch)."""
    h = R._Hyper(name, beta1, beta2, beta3, alpha, eps, weight_decay, step, lr)
    return {
        "b1": h.beta1, "b2": h.beta2, "b3": h.beta3, "omb1": 1.0 - h.beta1, "omb2": 1.0 - h.beta2,
        "omb3": 1.0 - h.beta3, "alpha": h.alpha, "eps": h.eps, "wd": h.wd, "c1": h.c1, "c2": h.c2,
        "eps_c2": h.eps * h.c2, "c2_over_c1": h.c2_over_c1, "c1_over_c2": h.c1_over_c2, "decay": 1.0 - h.lr * h.wd,
    }  # fmt: skip


def _flags(name: str, step: int, weight_decay: float, gnorm_scale: float, skip_zeros: bool) -> dict:
    return {
        "OPT": R.OPTIMIZER_IDS[name],
        "FIRST": int(step) == 1,
        "HAS_WD": weight_decay > 0.0,
        "DECOUPLED": name in _DECOUPLED and weight_decay > 0.0,
        "SCALE_G": gnorm_scale != 1.0,
        "SKIP0": bool(skip_zeros),
    }


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
    """One fused optimizer step with f32 states, in place (one launch; two with max_unorm > 0)."""
    C.check_optimizer_common(optimizer_name, g, p, step, lr, eps)
    n = p.numel()
    two, clip = C.check_optimizer_32bit_states(optimizer_name, n, state1, state2, unorm_vec, max_unorm)
    C.check_same_device({"g": g, "p": p, "state1": state1, "state2": state2, "unorm_vec": unorm_vec})
    C.check_optimizer_32bit_no_alias(g, p, state1, state2 if two else None, unorm_vec if clip else None)
    if n == 0:
        if clip:
            unorm_vec.zero_()  # the norm of an empty update
        return
    pc = p if p.is_contiguous() else p.contiguous()
    gc = g.contiguous()
    s2 = state2 if two else state1
    consts = _consts(optimizer_name, beta1, beta2, beta3, alpha, eps, weight_decay, step, lr)
    flags = _flags(optimizer_name, step, weight_decay, gnorm_scale, skip_zeros)
    grid = (triton.cdiv(n, BLOCK32),)
    common = dict(gnorm=float(gnorm_scale), **consts, **flags, TWO=two, P_OUT=OUT_KIND[p.dtype], BLOCK=BLOCK32)
    scale = 1.0
    with device_guard(p):
        if clip:
            parts = torch.empty(grid[0], dtype=torch.float32, device=p.device)
            _update32_kernel[grid](
                gc, pc, store_view(pc), state1, s2, parts, n, lr_s=0.0, MEASURE=True, **common, **LAUNCH
            )
            unorm = float(parts.double().sum().sqrt())
            unorm_vec.fill_(unorm)  # type: ignore[union-attr]
            limit = max_unorm * float(param_norm)
            if unorm > limit:
                scale = limit / unorm
        _update32_kernel[grid](
            gc, pc, store_view(pc), state1, s2, state1, n, lr_s=lr * scale, MEASURE=False, **common, **LAUNCH
        )
    if pc is not p:
        p.copy_(pc)


# ---- 8-bit block-wise states ----------------------------------------------------------------------


@triton.jit
def _requant(x, m, table, Q, ABSMAX, e, blk, bmask):
    """Re-quantize the f32 states ``x`` ([groups, 256]) with a fresh absmax per block: the
    reference's grid rule, floor((x/absmax + 1) * 32767.5 + 0.5) -> code table (NaN -> 65535)."""
    x = tl.where(m, x, 0.0)
    amax = nan_absmax(x, 1)
    s = clamp_unit(x * inverse_absmax(amax)[:, None])
    k = tl.floor((s + 1.0) * 32767.5 + 0.5)
    k = tl.where(k != k, 65535.0, k).to(tl.int32)
    tl.store(Q + e, tl.load(table + k, mask=m, other=0), mask=m)
    tl.store(ABSMAX + blk, amax, mask=bmask)


@triton.jit
def _update8_kernel(
    G, P, PW, Q1, Q2, QMAP1, QMAP2, A1, A2, T1, T2, n, nblocks, gnorm, b1, b2, b3, omb1, omb2, omb3, alpha, eps, wd,
    c1, c2, eps_c2, c2_over_c1, decay, lr,
    OPT: tl.constexpr, FIRST: tl.constexpr, HAS_WD: tl.constexpr, DECOUPLED: tl.constexpr, SCALE_G: tl.constexpr,
    SKIP0: tl.constexpr, TWO: tl.constexpr, P_OUT: tl.constexpr, GROUPS: tl.constexpr,
):  # fmt: skip
    blk = tl.program_id(0) * GROUPS + tl.arange(0, GROUPS)
    bmask = blk < nblocks
    e = blk.to(tl.int64)[:, None] * 256 + tl.arange(0, 256)[None, :]
    m = e < n
    g = tl.load(G + e, mask=m, other=0.0).to(tl.float32)
    if SCALE_G:
        g = g * gnorm
    p = tl.load(P + e, mask=m, other=0.0).to(tl.float32)
    q1 = tl.load(Q1 + e, mask=m, other=0).to(tl.int32)
    s1 = tl.load(QMAP1 + q1) * tl.load(A1 + blk, mask=bmask, other=0.0)[:, None]
    s1b = s1
    s2 = s1
    if OPT == 5:
        q1b = tl.load(Q1 + n + e, mask=m, other=0).to(tl.int32)
        s1b = tl.load(QMAP1 + q1b) * tl.load(A1 + nblocks + blk, mask=bmask, other=0.0)[:, None]
    if TWO:
        q2 = tl.load(Q2 + e, mask=m, other=0).to(tl.int32)
        s2 = tl.load(QMAP2 + q2) * tl.load(A2 + blk, mask=bmask, other=0.0)[:, None]
    d, n1, n1b, n2 = _direction(g, p, s1, s1b, s2, b1, b2, b3, omb1, omb2, omb3, alpha, eps, wd, c1, c2, eps_c2,
                                c2_over_c1, OPT, FIRST, HAS_WD)  # fmt: skip
    keep = tl.zeros([GROUPS, 256], dtype=tl.int1)
    if SKIP0:
        keep = g == 0.0
    q = p
    if DECOUPLED:
        q = p * decay
    store_float(PW + e, tl.where(keep, p, q - d * lr), m, P_OUT)
    _requant(tl.where(keep, s1, n1), m, T1, Q1, A1, e, blk, bmask)
    if OPT == 5:
        _requant(tl.where(keep, s1b, n1b), m, T1, Q1 + n, A1 + nblocks, e, blk, bmask)
    if TWO:
        _requant(tl.where(keep, s2, n2), m, T2, Q2, A2, e, blk, bmask)


_GRID_TABLES: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}


def _grid_table(qmap: torch.Tensor) -> torch.Tensor:
    """The reference's code table of ``qmap`` over the 65536 grid points, cached per code book
    storage address and version (an optimizer passes the same two code books every step). The
    entry holds the code book itself, so its address cannot be reused by another tensor while
    cached, and views share the version counter: a hit needs no comparison (no device sync). An
    inference tensor (made under ``torch.inference_mode``) has no version counter: its table comes
    from the reference's cache, which compares the code book's values instead."""
    if qmap.is_inference():
        return R._grid_table(qmap.contiguous())
    key = (qmap.device, qmap.data_ptr(), qmap._version)
    hit = _GRID_TABLES.get(key)
    if hit is None:
        if len(_GRID_TABLES) >= 16:
            _GRID_TABLES.clear()
        hit = _GRID_TABLES[key] = (qmap, R._grid_table(qmap.contiguous()))
    return hit[1]


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
    """One fused step with block-wise 8-bit states: dequantize, update and re-quantize in
    registers, one pass over the parameter (one launch)."""
    C.check_optimizer_common(optimizer_name, g, p, step, lr, eps)
    n = p.numel()
    two = C.check_optimizer_8bit_states(optimizer_name, n, state1, state2, qmap1, qmap2, absmax1, absmax2)
    C.check_same_device(
        {"g": g, "p": p, "state1": state1, "state2": state2, "qmap1": qmap1, "qmap2": qmap2, "absmax1": absmax1,
         "absmax2": absmax2}
    )  # fmt: skip
    C.check_optimizer_8bit_no_alias(
        g, p, state1, state2 if two else None, qmap1, qmap2 if two else None, absmax1, absmax2 if two else None
    )
    if n == 0:
        return
    pc = p if p.is_contiguous() else p.contiguous()
    gc = g.contiguous()
    nblocks = C.num_blocks(n, C.OPTIMIZER_STATE_BLOCKSIZE)
    q1 = qmap1.contiguous()
    t1 = _grid_table(q1)
    q2 = qmap2.contiguous() if two else q1  # type: ignore[union-attr]
    t2 = _grid_table(q2) if two else t1
    consts = _consts(optimizer_name, beta1, beta2, beta3, alpha, eps, weight_decay, step, lr)
    consts.pop("c1_over_c2")
    flags = _flags(optimizer_name, step, weight_decay, gnorm_scale, skip_zeros)
    with device_guard(p):
        _update8_kernel[(triton.cdiv(nblocks, GROUPS8),)](
            gc, pc, store_view(pc), state1, state2 if two else state1, q1, q2, absmax1, absmax2 if two else absmax1,
            t1, t2, n, nblocks, float(gnorm_scale), lr=float(lr), **consts, **flags, TWO=two,
            P_OUT=OUT_KIND[p.dtype], GROUPS=GROUPS8, **LAUNCH,
        )  # fmt: skip
    if pc is not p:
        p.copy_(pc)
