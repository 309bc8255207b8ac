"""Matmuls against a weight kept quantized, for the fine-tuning paths (not yet behind an op).

``int8_weight_matmul``: ``A @ (CB * SCB / 127)^T (+ bias)``, the forward of LLM.int8()'s training
path, reading the int8 weight directly. ``weight_matmul_t``: ``G @ W`` for an int8 weight (the
input gradient of that path) or a packed 4-bit one (QLoRA's input gradient). Neither makes a
dequantized copy of the weight. Sums are f32; the result has the input's dtype, so it equals
dequantize-then-matmul within that dtype's rounding.

Measured (4096x4096 bf16, 2 threads, AVX-512 machine with AMX, one run): forward 1 row 1.35 ms
against 38 ms for dequantize + matmul and 0.41 ms for ``torch._weight_int8pack_mm``; int8 input
gradient 1 row 1.16 ms, 8 rows 2.6 ms. From 8 rows up the kernels, written once and vectorized
by the compiler, lose to AMX-backed dense GEMMs; see bench/RESULTS.md.
"""

from __future__ import annotations

import torch

from bitsandbytes import _checks as C

from . import _C
from .kernels import DTYPE_CODE, _decode_table, _nt


def _rows(A: torch.Tensor, name: str, width: int) -> torch.Tensor:
    C.check_dtype(A, name, C.FLOAT_DTYPES)
    C.check(
        A.dim() >= 1 and A.shape[-1] == width,
        f"bitsandbytes: {name}'s last dimension must be {width}, got shape {tuple(A.shape)}",
    )
    return A.reshape(-1, width).contiguous()


def _int8_weight(CB: torch.Tensor, SCB: torch.Tensor) -> tuple[int, int]:
    C.check_dtype(CB, "CB", (torch.int8,))
    C.check_dtype(SCB, "SCB", (torch.float32,))
    C.check(CB.dim() == 2, f"bitsandbytes: CB must be 2-D [N, K], got shape {tuple(CB.shape)}")
    C.check(CB.is_contiguous(), "bitsandbytes: CB must be contiguous")
    C.check(
        SCB.numel() == CB.shape[0],
        f"bitsandbytes: SCB must have one entry per row of CB ({CB.shape[0]}), got {SCB.numel()}",
    )
    return CB.shape[0], CB.shape[1]


def int8_weight_matmul(
    A: torch.Tensor, CB: torch.Tensor, SCB: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """``A @ (CB * SCB / 127)^T + bias`` in A's dtype, for A ``[..., K]`` and CB ``[N, K]``."""
    n, k = _int8_weight(CB, SCB)
    A2 = _rows(A, "A", k)
    tensors = {"A": A, "CB": CB, "SCB": SCB}
    if bias is not None:
        C.check_dtype(bias, "bias", C.FLOAT_DTYPES)
        C.check(bias.numel() == n, f"bitsandbytes: bias must have {n} entries, got {bias.numel()}")
        bias = bias.contiguous()
        tensors["bias"] = bias
    C.check_same_device(tensors)
    C.check(A.device.type == "cpu", f"bitsandbytes_cpu: A must be on the CPU, got {A.device}")
    out = torch.empty(A2.shape[0], n, dtype=A.dtype)
    if out.numel() == 0 or k == 0:
        return out.zero_().view(*A.shape[:-1], n)
    SCB = SCB.contiguous()
    _C.int8_weight_matmul(
        A2.data_ptr(),
        DTYPE_CODE[A.dtype],
        A2.shape[0],
        n,
        k,
        CB.data_ptr(),
        SCB.data_ptr(),
        0 if bias is None else bias.data_ptr(),
        DTYPE_CODE[bias.dtype] if bias is not None else 0,
        out.data_ptr(),
        _nt(),
    )
    return out.view(*A.shape[:-1], n)


def weight_matmul_t(
    G: torch.Tensor,
    CB: torch.Tensor | None = None,
    SCB: torch.Tensor | None = None,
    *,
    packed: torch.Tensor | None = None,
    absmax: torch.Tensor | None = None,
    shape: tuple[int, int] | None = None,
    blocksize: int = 64,
    quant_type: str = "nf4",
) -> torch.Tensor:
    """``G @ W`` in G's dtype for G ``[..., N]`` and W ``[N, K]``: int8 rows (``CB``, ``SCB``) or a
    packed 4-bit weight (``packed``, f32 ``absmax``, ``shape`` = (N, K), ``blocksize``, ``quant_type``)."""
    if (CB is None) == (packed is None):
        raise ValueError("bitsandbytes: give either CB and SCB (int8 weight) or packed and absmax (4-bit weight)")
    if CB is not None:
        if SCB is None:
            raise ValueError("bitsandbytes: SCB is required with CB")
        n, k = _int8_weight(CB, SCB)
        tensors = {"G": G, "CB": CB, "SCB": SCB}
    else:
        if absmax is None or shape is None:
            raise ValueError("bitsandbytes: absmax and shape are required with packed")
        n, k = (int(s) for s in shape)
        C.check_blocksize_4bit(blocksize)
        C.check_quant_type(quant_type)
        C.check_dtype(absmax, "absmax", (torch.float32,))
        C.check_4bit_shape((n, k), absmax, packed, blocksize)
        tensors = {"G": G, "packed": packed, "absmax": absmax}
    C.check_same_device(tensors)
    C.check(G.device.type == "cpu", f"bitsandbytes_cpu: G must be on the CPU, got {G.device}")
    G2 = _rows(G, "G", n)
    out = torch.empty(G2.shape[0], k, dtype=G.dtype)
    if out.numel() == 0 or n == 0:
        return out.zero_().view(*G.shape[:-1], k)
    if CB is not None:
        SCB = SCB.contiguous()
        weight = (CB.data_ptr(), SCB.data_ptr(), 0, 0, 0, 0)
    else:
        packed, absmax, code = packed.contiguous(), absmax.contiguous(), _decode_table(quant_type)
        weight = (0, 0, packed.data_ptr(), absmax.data_ptr(), code.data_ptr(), blocksize)
    _C.weight_matmul_t(G2.data_ptr(), DTYPE_CODE[G.dtype], G2.shape[0], n, k, *weight, out.data_ptr(), _nt())
    return out.view(*G.shape[:-1], k)
