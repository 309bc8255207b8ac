"""Prepared runners: a kernel's weight-side arguments checked once, for a layer that calls it with
the same weight on every decoded token.

``gemm_4bit.prepare(B, shapeB, absmax, blocksize, quant_type, bias, dtype)`` (the attribute that the
meta-package's ``_direct.prepare`` looks for on a registered kernel) returns ``run(A)``, which
computes ``gemm_4bit(A, B, shapeB, absmax, blocksize, quant_type, bias)`` for an ``A`` of ``dtype``
with few rows, or returns None for any other ``A`` (the caller then takes the op's general path).
The runner keeps the tensors it was prepared with alive and reads them through their pointers:
the caller must not use it once the layer holds other tensors (``Linear4bit`` checks that on
every call). What the runner saves over the op (``bench/cpu_glue.py``): the weight-side checks,
the choice of path and the conversions, ~20 us a call with the caches as cold as in a decoding
model.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from . import _C, amx, kernels
from ._codes import DTYPE_CODE

MAX_ROWS = min(kernels.FUSED_MAX_ROWS, amx.MIN_ROWS["gemm_4bit"] - 1)
"""Rows of A a runner takes: those of the fused kernel below the AMX crossover (decoding)."""


def prepare_gemm_4bit(
    B: torch.Tensor,
    shapeB: Sequence[int],
    absmax: torch.Tensor,
    blocksize: int,
    quant_type: str,
    bias: torch.Tensor | None,
    dtype: torch.dtype,
) -> Callable[[torch.Tensor], torch.Tensor | None] | None:
    """A runner of ``gemm_4bit`` for this weight (absmax not nested, every tensor contiguous and
    in the dtype the kernel reads, bias in ``dtype``), or None where these arguments need the
    op's general path (which converts them, or names what is wrong with them)."""
    if len(shapeB) != 2 or dtype not in DTYPE_CODE:
        return None
    n, k = int(shapeB[0]), int(shapeB[1])
    probe = torch.empty((1, k), dtype=dtype)
    if not (
        n > 0
        and k > 0
        and kernels._gemm_4bit_args_ok(probe, B, (n, k), absmax, blocksize, quant_type, bias)
        and B.is_contiguous()
        and absmax.is_contiguous()
        and (bias is None or (bias.dtype == dtype and bias.is_contiguous()))
    ):
        return None
    # New tensors on the same memory keep it alive (and its address unused) whatever becomes of
    # the originals (``.data =``), so a caller's pointer comparisons stay sound.
    keep = tuple(None if t is None else t.detach() for t in (B, absmax, bias))
    code = kernels._decode_table(quant_type)
    b_ptr, absmax_ptr, code_ptr = keep[0].data_ptr(), keep[1].data_ptr(), code.data_ptr()
    bias_ptr = 0 if bias is None else keep[2].data_ptr()
    dtype_code = DTYPE_CODE[dtype]
    gemm, empty, threads = _C.gemm_4bit, torch.empty, torch.get_num_threads

    def run(A: torch.Tensor) -> torch.Tensor | None:
        # The op's checks of A, in one test: every step costs microseconds here (module docstring).
        shape = A.shape
        if not (A.dtype is dtype and shape[-1] == k and A.is_cpu and A.is_contiguous()):
            return None
        rows = A.numel() // k
        if not 0 < rows <= MAX_ROWS:
            return None
        out = empty((*shape[:-1], n), dtype=dtype)
        gemm(
            A.data_ptr(),
            dtype_code,
            rows,
            n,
            k,
            b_ptr,
            absmax_ptr,
            code_ptr,
            blocksize,
            bias_ptr,
            out.data_ptr(),
            threads(),
        )
        return out

    run.keep = (*keep, code)
    return run


kernels.gemm_4bit.prepare = prepare_gemm_4bit
