"""Prepared runners: a kernel's weight-side arguments checked once, for a layer that calls it with
the same weight on every decoded token (the ``prepare`` attribute that the meta-package's
``_direct.prepare`` looks for on a registered kernel).

- ``gemm_4bit.prepare(B, shapeB, absmax, blocksize, quant_type, bias, dtype[, absmax_8bit,
  absmax_code, absmax_offset])`` returns ``run(A)``, which computes ``gemm_4bit(A, B, shapeB,
  absmax, blocksize, quant_type, bias, ...)`` for an ``A`` of ``dtype`` with few rows.
- ``int8_mixed_scaled_mm.prepare(CB, SCB, bias, threshold, dtype)`` returns ``run(A)``: the
  LLM.int8() inference of a few rows of ``A`` (``int8_vectorwise_quant`` of ``A`` in f16, then
  ``int8_mixed_scaled_mm``), unless an outlier column turns up (rare in decoding).

A runner returns None for any ``A`` it does not take; the caller then takes the ops' general path.
It keeps the tensors it was prepared with alive and reads them through their pointers: the caller
must not use it once the layer holds other tensors (``Linear4bit`` and ``Linear8bitLt`` check that
on every call). What it saves over the ops (``bench/cpu_glue.py``): the weight-side checks, the
choice of path, the conversions and the temporaries, 20-40 us a call with the caches as cold as
in a decoding model.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence

import torch

from bitsandbytes import _checks as C

from . import _C, amx, kernels, kernels_int8
from ._codes import DTYPE_CODE


def prepare_gemm_4bit(
    B: torch.Tensor,
    shapeB: Sequence[int],
    absmax: torch.Tensor,
    blocksize: int,
    quant_type: str,
    bias: torch.Tensor | None,
    dtype: torch.dtype,
    absmax_8bit: torch.Tensor | None = None,
    absmax_code: torch.Tensor | None = None,
    absmax_offset: torch.Tensor | None = None,
) -> Callable[[torch.Tensor], torch.Tensor | None] | None:
    """A runner of ``gemm_4bit`` for this weight (every tensor contiguous and in the dtype the
    kernel reads, bias in ``dtype``), or None where these arguments need the op's general path
    (which converts them, or names what is wrong with them). A nested absmax (``absmax_8bit``
    with its code and offset, as the op takes it) is resolved here, once: the caller must not
    use the runner after any of those tensors changes."""
    if len(shapeB) != 2 or dtype not in DTYPE_CODE:
        return None
    if absmax_8bit is not None:
        if absmax_code is None or absmax_offset is None:
            return None
        for t in (absmax, absmax_8bit, absmax_code, absmax_offset):
            if not t.is_cpu:
                return None
        absmax = kernels._resolve_nested_absmax(absmax, absmax_8bit, absmax_code, absmax_offset)
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
    # The rows of the fused kernel below the AMX crossover (decoding).
    max_rows = min(kernels.FUSED_MAX_ROWS, amx.fused_rows(k, blocksize))

    def run(A: torch.Tensor) -> torch.Tensor | None:
        # The op's checks of A, in one test: every step costs microseconds here (module docstring).
        shape = A.shape
        if not (A.dtype is dtype and shape and shape[-1] == k and A.is_cpu and A.is_contiguous()):
            return None
        rows = A.numel() // k
        if not 0 < rows <= max_rows:
            return None
        out = empty(*shape[:-1], n, dtype=dtype)
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


INT8_MAX_ROWS = 64
"""Rows of A an LLM.int8() runner takes (its temporaries live in a per-thread buffer)."""

_LOCAL = threading.local()


def _buffer(nbytes: int) -> int:
    """The address of this thread's scratch bytes for an LLM.int8() runner's temporaries (the
    quantized rows, their scales, the outlier flags, the int32 products), at least ``nbytes``."""
    buf = getattr(_LOCAL, "buf", None)
    if buf is None or buf.numel() < nbytes:
        _LOCAL.buf = None
        with torch.inference_mode(False):
            buf = _LOCAL.buf = torch.empty(max(nbytes, 1 << 16), dtype=torch.uint8)
    return buf.data_ptr()


def _up64(n: int) -> int:
    return (n + 63) // 64 * 64


def prepare_int8_linear(
    CB: torch.Tensor, SCB: torch.Tensor, bias: torch.Tensor | None, threshold: float, dtype: torch.dtype
) -> Callable[[torch.Tensor], torch.Tensor | None] | None:
    """A runner of LLM.int8() inference with this int8 weight (``CB`` row-major [n, k] int8, ``SCB``
    its n f32 row scales, ``bias`` in ``dtype`` or None, ``threshold`` for outlier columns), or
    None where these arguments need the general path."""
    if not (
        dtype in C.FLOAT_DTYPES
        and CB.dtype == torch.int8
        and CB.dim() == 2
        and CB.shape[0] > 0
        and CB.shape[1] > 0
        and CB.is_cpu
        and CB.is_contiguous()
        and SCB.dtype == torch.float32
        and SCB.is_cpu
        and SCB.is_contiguous()
        and SCB.numel() == CB.shape[0]
        and threshold >= 0.0
        and (
            bias is None
            or (
                bias.is_cpu
                and bias.dtype == dtype
                and bias.is_contiguous()
                and bias.dim() == 1
                and bias.numel() == CB.shape[0]
            )
        )
    ):
        return None
    n, k = CB.shape
    threshold = float(threshold)
    keep = tuple(None if t is None else t.detach() for t in (CB, SCB, bias))  # as in prepare_gemm_4bit
    cb_ptr, scb_ptr = keep[0].data_ptr(), keep[1].data_ptr()
    bias_ptr, bias_code = (0, 0) if bias is None else (keep[2].data_ptr(), DTYPE_CODE[dtype])
    f16, f16_code, out_code = torch.float16, DTYPE_CODE[torch.float16], DTYPE_CODE[dtype]
    quant, matmul, dequant = _C.int8_vectorwise_quant, _C.int8_linear_matmul, _C.int8_mm_dequant
    empty, threads = torch.empty, torch.get_num_threads

    def run(A: torch.Tensor) -> torch.Tensor | None:
        shape = A.shape
        if not (A.dtype is dtype and shape and shape[-1] == k and A.is_cpu and A.is_contiguous()):
            return None
        rows = A.numel() // k
        if not 0 < rows <= INT8_MAX_ROWS:
            return None
        a16 = A if dtype is f16 else A.to(f16)  # what the established algorithm quantizes
        ca_bytes, sca_bytes, flag_bytes = _up64(rows * k), _up64(4 * rows), _up64(k)
        ca = _buffer(ca_bytes + sca_bytes + flag_bytes + 4 * rows * n)
        sca, flags = ca + ca_bytes, ca + ca_bytes + sca_bytes
        acc = flags + flag_bytes
        nt = threads()
        if quant(a16.data_ptr(), f16_code, rows, k, threshold, ca, sca, flags if threshold > 0.0 else 0, nt):
            return None  # outlier columns: the general path decomposes them
        matmul(ca, cb_ptr, rows, n, k, acc, nt)
        out = empty(*shape[:-1], n, dtype=dtype)
        dequant(acc, sca, scb_ptr, rows, n, bias_ptr, bias_code, out.data_ptr(), out_code, nt)
        return out

    run.keep = keep
    return run


kernels.gemm_4bit.prepare = prepare_gemm_4bit
kernels_int8.int8_mixed_scaled_mm.prepare = prepare_int8_linear
