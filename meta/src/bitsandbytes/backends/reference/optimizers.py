"""Reference kernels of the two optimizer ops: ``optimizer_update_32bit`` and
``optimizer_update_8bit_blockwise``.

Both are fused per parameter: one pass over the parameter, in chunks of whole 256-element
blocks, that (8-bit only) dequantizes the states of the chunk, applies the update in f32, writes
the parameter back in its own dtype and (8-bit only) re-quantizes the states with a fresh absmax
per block. The math is spec §8.5. The two kernels share private helpers of this module but never
call each other (nor any other op) through ``torch.ops``, so a platform wheel can replace either
op alone.

The update rule (``_Hyper``, ``_direction``, ``_apply``, ``_clip_vector``) and the state codec
(``_dequant``, ``_grid_index``, ``_grid_points``) are static tensor programs (Python branches only
on the algorithm and the hyperparameters, never on tensor values) and are shared: the
bitsandbytes-hpu wheel builds its graph-friendly kernels from these same functions.

State layouts (spec §8.3): ``state1``/``state2`` are shaped like ``p``, except AdEMAMix whose
``state1`` holds two EMAs, shape ``(2, *p.shape)``; in 8-bit each EMA is quantized on its own
(``absmax1`` has shape ``(2, ceil(n/256))``).
"""

from __future__ import annotations

import math

import torch

from ... import _checks as C
from .blockwise import inverse_absmax
from .codebooks import midpoints, nearest_code

OPTIMIZER_NAMES = C.OPTIMIZER_NAMES
TWO_STATE = C.TWO_STATE_OPTIMIZERS

OPTIMIZER_IDS = {"momentum": 0, "lars": 0, "rmsprop": 1, "adagrad": 2, "adam": 3, "lamb": 3, "lion": 4, "ademamix": 5}
"""The established release's internal ids (used by the C ABI of the platform wheels)."""

STATE_BLOCKSIZE = C.OPTIMIZER_STATE_BLOCKSIZE

_CHUNK = STATE_BLOCKSIZE * 1024
"""Elements processed at a time: whole blocks, small enough to stay in cache-sized temporaries."""


# --------------------------------------------------------------------------------------------
# The update math of one chunk, in f32 (spec §8.5)
# --------------------------------------------------------------------------------------------


def ieee_div(a: float, b: float) -> float:
    """a / b in double as C computes it (inf or NaN for b == 0, where Python raises): a beta of 1
    makes a bias correction 0, which the kernels divide by as IEEE arithmetic does. Tensors (the
    HPU kernels keep the corrections on the device) divide so already, without a host sync."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor) or b != 0.0:
        return a / b
    if a == 0.0 or math.isnan(a):
        return math.nan
    return math.copysign(math.inf, a) * math.copysign(1.0, b)


def ieee_pow(a: float, b: float) -> float:
    """math.pow with C's overflow and domain results instead of Python's exceptions."""
    try:
        return math.pow(a, b)
    except OverflowError:
        return math.inf if a > 0 or float(b).is_integer() and int(b) % 2 == 0 else -math.inf
    except ValueError:
        return math.nan


def ieee_sqrt(a: float) -> float:
    """math.sqrt with C's NaN for a negative argument."""
    return math.sqrt(a) if a >= 0.0 else math.nan


class _Hyper:
    """Per-call scalars, with the bias corrections and their ratios precomputed once."""

    __slots__ = ("name", "beta1", "beta2", "beta3", "alpha", "eps", "wd", "step", "lr", "c1", "c2")

    def __init__(self, name, beta1, beta2, beta3, alpha, eps, wd, step, lr):
        self.name = name
        self.beta1, self.beta2, self.beta3, self.alpha = float(beta1), float(beta2), float(beta3), float(alpha)
        self.eps, self.wd, self.step, self.lr = float(eps), float(wd), int(step), float(lr)
        self.c1 = 1.0 - ieee_pow(self.beta1, self.step)
        self.c2 = ieee_sqrt(1.0 - ieee_pow(self.beta2, self.step))

    @property
    def c2_over_c1(self) -> float:
        return ieee_div(self.c2, self.c1)

    @property
    def c1_over_c2(self) -> float:
        return ieee_div(self.c1, self.c2)


def _direction(h: _Hyper, g: torch.Tensor, p: torch.Tensor, s1: torch.Tensor, s2: torch.Tensor | None) -> torch.Tensor:
    """Update the f32 states ``s1``/``s2`` in place and return the update direction ``d``.

    The parameter then moves as ``p <- p * (1 - lr*wd) - lr * d`` for the algorithms with
    decoupled decay (adam, lamb, ademamix, lion) and ``p <- p - lr * d`` for the others, whose
    decay is folded into the gradient here.
    """
    name = h.name
    if name in ("adam", "lamb"):
        s1.mul_(h.beta1).add_(g, alpha=1.0 - h.beta1)
        s2.mul_(h.beta2).addcmul_(g, g, value=1.0 - h.beta2)
        # m̂ / (√v̂ + eps) written as (c2/c1) · m / (√v + eps·c2).
        d = s2.sqrt().add_(h.eps * h.c2)
        return torch.div(s1, d, out=d).mul_(h.c2_over_c1)
    if name == "ademamix":
        m1, m2 = s1[0], s1[1]
        m1.mul_(h.beta1).add_(g, alpha=1.0 - h.beta1)
        m2.mul_(h.beta3).add_(g, alpha=1.0 - h.beta3)
        s2.mul_(h.beta2).addcmul_(g, g, value=1.0 - h.beta2)
        num = m1 / h.c1 + h.alpha * m2
        return num / (s2.sqrt() / h.c2 + h.eps)
    if name == "lion":
        d = torch.sign(s1 * h.beta1 + g * (1.0 - h.beta1))
        s1.mul_(h.beta2).add_(g, alpha=1.0 - h.beta2)
        return d
    if h.wd > 0.0:
        g = g + h.wd * p
    if name in ("momentum", "lars"):
        if h.step == 1:
            s1.copy_(g)
        else:
            s1.mul_(h.beta1).add_(g)
        return s1.clone()
    if name == "rmsprop":
        s1.mul_(h.beta1).addcmul_(g, g, value=1.0 - h.beta1)
    else:  # adagrad
        s1.addcmul_(g, g)
    return g / (s1.sqrt() + h.eps)


def _clip_vector(h: _Hyper, d: torch.Tensor) -> torch.Tensor:
    """The update ``u`` whose norm the trust-ratio clip compares with ``max_unorm * ‖p‖``.

    For adam/lamb the established release measures the update *without* the bias-correction
    factor ``c2/c1``: ``u = m / (√v + eps·c2)`` (= direction · c1/c2); for the other algorithms
    ``u`` is the direction itself.
    """
    return d * h.c1_over_c2 if h.name in ("adam", "lamb") else d


def _update_sq(h: _Hyper, d: torch.Tensor) -> float:
    """‖u‖² of (a chunk of) the update (see ``_clip_vector``), summed in f64 on the host."""
    return float(_clip_vector(h, d).double().square().sum())


def _apply(h: _Hyper, p: torch.Tensor, d: torch.Tensor, scale: float) -> torch.Tensor:
    """The new f32 parameter values ``p·(1 - lr·wd) - (lr·scale)·d`` (decay only for the
    decoupled algorithms), written into the temporary ``d``."""
    d.mul_(h.lr * scale)
    if h.name in ("adam", "lamb", "ademamix", "lion") and h.wd > 0.0:
        p = p * (1.0 - h.lr * h.wd)
    return torch.sub(p, d, out=d)


def _f32(t: torch.Tensor, gnorm_scale: float = 1.0) -> torch.Tensor:
    t = t.float()
    return t * gnorm_scale if gnorm_scale != 1.0 else t


# --------------------------------------------------------------------------------------------
# optimizer_update_32bit
# --------------------------------------------------------------------------------------------


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

    With ``max_unorm > 0`` the update is scaled by ``min(1, max_unorm * param_norm / ‖u‖)``,
    where ``u`` is the update before the learning rate (see ``_update_norm``), and ``unorm_vec[0]``
    receives ``‖u‖`` (the LAMB / LARS trust ratio clip).
    """
    C.check_optimizer_common(optimizer_name, g, p, step, lr, eps)
    n = p.numel()
    two, clip = C.check_optimizer_32bit_states(optimizer_name, n, state1, state2, unorm_vec, max_unorm)
    C.check_same_device({"g": g, "p": p, "state1": state1, "state2": state2, "unorm_vec": unorm_vec})
    C.check_optimizer_32bit_no_alias(g, p, state1, state2 if two else None, unorm_vec if clip else None)
    h = _Hyper(optimizer_name, beta1, beta2, beta3, alpha, eps, weight_decay, step, lr)

    pflat = p.view(-1) if p.is_contiguous() else p.reshape(-1).clone()
    gflat = g.reshape(-1)
    s1 = state1.view(2, n) if optimizer_name == "ademamix" else state1.view(-1)
    s2 = state2.view(-1) if two else None

    def chunk(a: int, b: int):
        gc = _f32(gflat[a:b], gnorm_scale)
        s1c = s1[:, a:b] if optimizer_name == "ademamix" else s1[a:b]
        return gc, pflat[a:b].float(), s1c, (s2[a:b] if s2 is not None else None)

    scale = 1.0
    if clip:
        # The trust ratio needs the norm of the whole update before any element moves: a first
        # pass computes it on copies of the states, chunk by chunk.
        sq = 0.0
        for a in range(0, n, _CHUNK):
            gc, pc, s1c, s2c = chunk(a, min(a + _CHUNK, n))
            d = _direction(h, gc, pc, s1c.clone(), s2c.clone() if s2c is not None else None)
            if skip_zeros:
                d = d.masked_fill(gc == 0, 0.0)
            sq += _update_sq(h, d)
        unorm = math.sqrt(sq)
        unorm_vec.fill_(unorm)  # type: ignore[union-attr]
        limit = max_unorm * float(param_norm)
        if unorm > limit:
            scale = limit / unorm

    for a in range(0, n, _CHUNK):
        b = min(a + _CHUNK, n)
        gc, pc, s1c, s2c = chunk(a, b)
        if skip_zeros:
            old1, old2 = s1c.clone(), (s2c.clone() if s2c is not None else None)
        d = _direction(h, gc, pc, s1c, s2c)
        newp = _apply(h, pc, d, scale)
        if skip_zeros:
            keep = gc == 0
            newp = torch.where(keep, pc, newp)
            s1c.copy_(torch.where(keep, old1, s1c))
            if s2c is not None:
                s2c.copy_(torch.where(keep, old2, s2c))
        pflat[a:b] = newp.to(p.dtype)
    if not p.is_contiguous():
        p.copy_(pflat.view(p.shape))


# --------------------------------------------------------------------------------------------
# optimizer_update_8bit_blockwise
# --------------------------------------------------------------------------------------------


def _dequant(codes: torch.Tensor, absmax: torch.Tensor, qmap: torch.Tensor) -> torch.Tensor:
    """f32 values of ``codes`` (rows × k, k a multiple of the block size except at the end)."""
    rows, k = codes.shape
    blocks = absmax.shape[1]
    pad = blocks * STATE_BLOCKSIZE - k
    vals = qmap.index_select(0, codes.reshape(-1).to(torch.int32)).view(rows, k)
    if pad:
        vals = torch.nn.functional.pad(vals, (0, pad))
    vals = vals.view(rows, blocks, STATE_BLOCKSIZE).mul_(absmax.unsqueeze(-1))
    vals = vals.view(rows, blocks * STATE_BLOCKSIZE)
    return vals[:, :k].contiguous() if pad else vals


_GRID_HALF = 32767.5
"""Normalised state values are first rounded onto the 65536-point grid ``k / 32767.5 - 1``."""


_TABLES: dict[tuple[torch.device, int], tuple[torch.Tensor, torch.Tensor]] = {}
"""(device, qmap address) -> (copy of that qmap, its grid table). Validated by content on use."""


def _grid_table(qmap: torch.Tensor) -> torch.Tensor:
    """Code (uint8) of the ``qmap`` entry nearest each of the 65536 grid points (ties → lower).

    Optimizers pass the same two code books on every step, so the table is cached; a cached
    entry is used only if its code book still has the same values.
    """
    key = (qmap.device, qmap.data_ptr())
    hit = _TABLES.get(key)
    if hit is not None and torch.equal(hit[0], qmap):
        return hit[1]
    table = nearest_code(_grid_points(qmap.device), midpoints(qmap)).to(torch.uint8)
    if len(_TABLES) >= 16:
        _TABLES.clear()
    _TABLES[key] = (qmap.detach().clone(), table)
    return table


def _quant(x: torch.Tensor, table: torch.Tensor, codes_out: torch.Tensor, absmax_out: torch.Tensor) -> None:
    """Quantize f32 ``x`` (rows × k) with a fresh absmax per block into the given outputs.

    Each value is normalised by its block's absmax, rounded half-up onto the 65536-point grid
    over [-1, 1] and mapped to the code nearest that grid point (a table lookup). This is the
    established release's CPU rule and reproduces its optimizer states bit for bit. It picks the
    exact nearest code except next to a midpoint between two codes (then the neighbour) and for
    values below half a grid step (|x| < 1.5e-5·absmax), which take the code nearest zero.
    """
    rows, k = x.shape
    idx, absmax = _grid_index(x, absmax_out.shape[1])
    codes_out.copy_(table.index_select(0, idx.reshape(-1)).view(rows, k))
    absmax_out.copy_(absmax)


def _grid_index(x: torch.Tensor, blocks: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(int32 grid index 0..65535 of each value of ``x`` (rows × k), f32 absmax (rows × blocks)).

    The first half of ``_quant``: scale each block by its fresh absmax and round half-up onto
    the 65536-point grid; the code is then ``table[index]`` (``_grid_table``).
    """
    rows, k = x.shape
    pad = blocks * STATE_BLOCKSIZE - k
    xb = torch.nn.functional.pad(x, (0, pad)) if pad else x
    xb = xb.reshape(rows, blocks, STATE_BLOCKSIZE)
    lo, hi = torch.aminmax(xb, dim=-1)
    absmax = torch.maximum(hi, lo.neg_())
    scaled = (xb * inverse_absmax(absmax).unsqueeze(-1)).clamp_(-1.0, 1.0)
    idx = scaled.add_(1.0).mul_(_GRID_HALF).add_(0.5).floor_().nan_to_num_(nan=65535.0)
    return idx.view(rows, blocks * STATE_BLOCKSIZE)[:, :k].to(torch.int32), absmax


def _grid_points(device: torch.device) -> torch.Tensor:
    """The 65536 f32 grid points ``k / 32767.5 - 1`` over [-1, 1] that ``_grid_table`` maps to codes."""
    return torch.arange(65536, device=device, dtype=torch.float32) / _GRID_HALF - 1.0


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
    """One optimizer step with block-wise 8-bit states (block size 256), in place.

    Each chunk of whole blocks is dequantized (``qmap[code] * absmax[block]``), updated in f32
    exactly as the 32-bit kernel does (no max-unorm clip in 8-bit), the parameter is written back
    in its dtype, and the states are re-quantized to the nearest ``qmap`` entry after scaling by a
    fresh per-block absmax (see ``_quant`` for the rounding rule).
    """
    C.check_optimizer_common(optimizer_name, g, p, step, lr, eps)
    n = p.numel()
    two = C.check_optimizer_8bit_states(optimizer_name, n, state1, state2, qmap1, qmap2, absmax1, absmax2)
    C.check_code_ascending(qmap1, "qmap1")  # the re-quantization searches the code books
    if two:
        C.check_code_ascending(qmap2, "qmap2")
    rows = 2 if optimizer_name == "ademamix" else 1
    blocks = C.num_blocks(n, STATE_BLOCKSIZE)
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
    h = _Hyper(optimizer_name, beta1, beta2, beta3, alpha, eps, weight_decay, step, lr)

    pflat = p.view(-1) if p.is_contiguous() else p.reshape(-1).clone()
    gflat = g.reshape(-1)
    q1 = state1.view(rows, n)
    a1 = absmax1.view(rows, blocks)
    table1 = _grid_table(qmap1)
    q2 = state2.view(1, n) if two else None  # type: ignore[union-attr]
    a2 = absmax2.view(1, blocks) if two else None  # type: ignore[union-attr]
    table2 = _grid_table(qmap2) if two else None  # type: ignore[arg-type]

    for a in range(0, n, _CHUNK):
        b = min(a + _CHUNK, n)
        ba, bb = a // STATE_BLOCKSIZE, C.num_blocks(b, STATE_BLOCKSIZE)
        gc = _f32(gflat[a:b], gnorm_scale)
        pc = pflat[a:b].float()
        s1 = _dequant(q1[:, a:b], a1[:, ba:bb], qmap1)
        s2 = _dequant(q2[:, a:b], a2[:, ba:bb], qmap2).view(-1) if two else None  # type: ignore[index,arg-type]
        if skip_zeros:
            old1, old2 = s1.clone(), (s2.clone() if s2 is not None else None)
        d = _direction(h, gc, pc, s1 if rows == 2 else s1.view(-1), s2)
        newp = _apply(h, pc, d, 1.0)
        if skip_zeros:
            keep = gc == 0
            newp = torch.where(keep, pc, newp)
            s1 = torch.where(keep, old1, s1)
            if s2 is not None:
                s2 = torch.where(keep, old2, s2)
        pflat[a:b] = newp.to(p.dtype)
        _quant(s1, table1, q1[:, a:b], a1[:, ba:bb])
        if two:
            _quant(s2.view(1, -1), table2, q2[:, a:b], a2[:, ba:bb])  # type: ignore[union-attr,index,arg-type]
    if not p.is_contiguous():
        p.copy_(pflat.view(p.shape))
