"""What every kernel module shares: the Triton element helpers (rounding and NaN bits exactly as
the reference's tensors on the CPU have them) and the launch glue (device guard, dtype codes).

Why the helpers exist. The reference results come from torch on an x86 CPU, and the tests
compare floats bit for bit. A GPU (and Triton's interpreter) differs in three places, each fixed
here once:

- f32 -> bf16: the interpreter truncates and GPUs write 0x7fff for NaN; torch rounds to nearest
  even and writes 0xffff for every NaN. ``store_float`` rounds the bits itself.
- f32 -> f16: NaN keeps its sign as 0x7e00 (torch's conversion); GPUs write 0x7fff.
- 0 * inf: x86 gives the "default NaN" 0xffc00000, GPUs 0x7fffffff; ``mul_cpu_nan`` emulates
  x86 (a NaN operand propagates, quieted).

Every kernel is launched with ``enable_fp_fusion=False``: the reference rounds after each
operation, so the compiler must not contract ``a * b + c`` into one fused operation. Where the
reference itself fuses (torch's ``add(alpha=)`` and ``addcmul`` use a fused multiply-add), the
kernels call ``tl.fma`` explicitly.
"""

from __future__ import annotations

import contextlib
import os

import torch
import triton
import triton.language as tl

from bitsandbytes.backends.reference.blockwise import INVERSE_ABSMAX_FLOOR

OUT_KIND = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}
"""Output dtype -> the ``OUT`` constexpr of ``store_float``."""

LAUNCH = {"enable_fp_fusion": False}
"""Launch options of every kernel (see the module docstring)."""


_INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def interpreted() -> bool:
    """Whether these kernels run in Triton's CPU interpreter: ``TRITON_INTERPRET=1`` when they were
    defined (Triton reads it as ``@triton.jit`` runs, so a later change has no effect)."""
    return _INTERPRETED


def device_guard(t: torch.Tensor):
    """Make ``t``'s device current while a kernel launches on it (Triton launches on the current
    device); CPU tensors (the interpreter) need nothing. Refuses CPU tensors without the
    interpreter, which Triton would otherwise reject with a less helpful message."""
    kind = t.device.type
    if kind == "cpu":
        if not interpreted():
            raise RuntimeError(
                "bitsandbytes_xpu: CPU tensors run through Triton's interpreter only; set TRITON_INTERPRET=1 "
                "before importing triton (the host-kernel tests do), or move the tensors to an XPU/CUDA device"
            )
        return contextlib.nullcontext()
    module = getattr(torch, kind, None)
    if module is None or not hasattr(module, "device"):
        raise RuntimeError(f"bitsandbytes_xpu: no Triton device guard for {t.device}")
    return module.device(t.device)


def store_view(out: torch.Tensor) -> torch.Tensor:
    """The tensor a kernel stores into: f16/bf16 outputs as their int16 bits (see store_float)."""
    return out.view(torch.int16) if out.dtype in (torch.float16, torch.bfloat16) else out


def next_pow2(n: int) -> int:
    """The smallest power of two >= n (n >= 1)."""
    return 1 << max(int(n) - 1, 0).bit_length()


@triton.jit
def mul_cpu_nan(a, b):
    """``a * b`` in f32 with x86's NaN bits: a NaN operand propagates quieted, 0 * inf is
    0xffc00000 (the interpreter computes this already; a GPU needs the fix-up)."""
    r = a * b
    ua = a.to(tl.uint32, bitcast=True) | 0x400000
    ub = b.to(tl.uint32, bitcast=True) | 0x400000
    nan_bits = tl.where(a != a, ua, tl.where(b != b, ub, 0xFFC00000))
    return tl.where(r != r, nan_bits.to(tl.float32, bitcast=True), r)


@triton.jit
def mul_cpu_nan_scalar(a, s):
    """``mul_cpu_nan`` for a finite scalar ``s`` (a kernel argument)."""
    r = a * s
    ua = a.to(tl.uint32, bitcast=True) | 0x400000
    nan_bits = tl.where(a != a, ua, 0xFFC00000)
    return tl.where(r != r, nan_bits.to(tl.float32, bitcast=True), r)


@triton.jit
def store_float(ptr, v, mask, OUT: tl.constexpr):
    """Store f32 ``v`` as the output dtype ``OUT`` (0 f32, 1 f16, 2 bf16; f16/bf16 through
    int16 views of the output) with torch's rounding and NaN bits."""
    if OUT == 0:
        tl.store(ptr, v, mask=mask)
    elif OUT == 1:
        bits = v.to(tl.uint32, bitcast=True)
        h = v.to(tl.float16).to(tl.int16, bitcast=True).to(tl.int32)
        nan_h = ((bits >> 16) & 0x8000) | 0x7E00
        r = tl.where(v != v, nan_h.to(tl.int32), h)
        tl.store(ptr, r.to(tl.int16), mask=mask)
    else:
        bits = v.to(tl.uint32, bitcast=True)
        r = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
        r = tl.where(v != v, 0xFFFF, r)
        tl.store(ptr, r.to(tl.int32).to(tl.int16), mask=mask)


@triton.jit
def nan_absmax(x, axis: tl.constexpr):
    """max |x| along ``axis`` that is NaN when any element is (torch's amax propagates NaN)."""
    m = tl.max(tl.abs(x), axis=axis)
    has_nan = tl.max((x != x).to(tl.int32), axis=axis) > 0
    return tl.where(has_nan, float("nan"), m)


@triton.jit
def nan_max(a, b):
    """max(a, b) that is NaN when either is (combines nan_absmax partials)."""
    return tl.where(a != a, a, tl.where(b != b, b, tl.where(a > b, a, b)))


@triton.jit
def clamp_unit(x):
    """clamp(x, -1, 1) keeping NaN (torch.clamp's behaviour)."""
    return tl.where(x > 1.0, 1.0, tl.where(x < -1.0, -1.0, x))


_INVERSE_ABSMAX_FLOOR: tl.constexpr = tl.constexpr(INVERSE_ABSMAX_FLOOR)


@triton.jit
def inverse_absmax(absmax):
    """1 / max(absmax, 1e-38), correctly rounded; NaN stays NaN. The floor's inverse is written out
    and a zero absmax tested as such, so that a zero block keeps zero codes where subnormals read as
    zero (1e-38 is subnormal); shared/include/bnb/numeric.h has the same rule."""
    tiny = (absmax < 1e-38) | (absmax == 0.0)
    inv = tl.math.div_rn(tl.full(absmax.shape, 1.0, tl.float32), tl.where(tiny, 1.0, absmax))
    return tl.where(tiny, _INVERSE_ABSMAX_FLOOR, inv)


@triton.jit
def count_below(x, mids_ptr, STEPS: tl.constexpr):
    """Number of the ascending ``mids`` (2**STEPS - 1 of them) strictly below ``x``: the index of
    the nearest table entry, a tie taking the lower one (torch.searchsorted, right=False); NaN
    counts as above every midpoint (the last entry). A binary search of STEPS gathers."""
    idx = tl.zeros(x.shape, dtype=tl.int32)
    step = 1 << (STEPS - 1)
    for _ in tl.static_range(STEPS):
        m = tl.load(mids_ptr + idx + step - 1)
        idx = tl.where(m < x, idx + step, idx)
        step = step // 2
    return tl.where(x != x, (1 << STEPS) - 1, idx)


@triton.jit
def round_half_even(x):
    """torch.round in f32 (ties to even) for finite x with |x| < 2**23."""
    r = tl.floor(x)
    diff = x - r
    odd = (r - 2.0 * tl.floor(r * 0.5)) != 0.0
    up = (diff > 0.5) | ((diff == 0.5) & odd)
    return tl.where(up, r + 1.0, r)
