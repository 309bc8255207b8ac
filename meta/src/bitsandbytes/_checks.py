"""Argument checks shared by the fake kernels, the reference kernels and the platform glue.

Each check names the argument and what was expected, and runs before any kernel touches
memory. Platform wheels call these too: they are part of the op interface.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

FOUR_BIT_BLOCKSIZES = (32, 64, 128, 256, 512, 1024, 2048, 4096)
QUANT_TYPES = ("nf4", "fp4")
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
QUANT_STORAGE_DTYPES = (torch.uint8, torch.int8, torch.float16, torch.bfloat16, torch.float32)


class DTypeError(TypeError, ValueError):
    """A tensor has the wrong dtype. Both a TypeError and, as the established release raised, a ValueError."""


# --------------------------------------------------------------------------------------------


def check(cond: bool, msg: str, exc: type[Exception] = ValueError) -> None:
    """Raise ``exc(msg)`` unless ``cond`` holds."""
    if not cond:
        raise exc(msg)


def check_dtype(t: torch.Tensor, arg: str, allowed: Sequence[torch.dtype]) -> None:
    """Raise DTypeError unless ``t.dtype`` is one of ``allowed``."""
    if t.dtype not in allowed:
        names = ", ".join(str(d).replace("torch.", "") for d in allowed)
        raise DTypeError(f"bitsandbytes: {arg} must have dtype in {{{names}}}, got {t.dtype}")


def check_output_dtype(dtype: torch.dtype) -> None:
    """Raise DTypeError unless ``dtype`` (an op's output dtype argument) is f16, bf16 or f32."""
    if dtype not in FLOAT_DTYPES:
        raise DTypeError(f"bitsandbytes: dtype must be float16, bfloat16 or float32, got {dtype}")


def check_blocksize_4bit(blocksize: int) -> None:
    """Raise ValueError unless ``blocksize`` is a valid 4-bit block size."""
    if blocksize not in FOUR_BIT_BLOCKSIZES:
        raise ValueError(f"bitsandbytes: invalid blocksize {blocksize}; expected one of {FOUR_BIT_BLOCKSIZES}")


def check_quant_type(quant_type: str) -> None:
    """Raise ValueError unless ``quant_type`` is 'nf4' or 'fp4'."""
    if quant_type not in QUANT_TYPES:
        raise ValueError(f"bitsandbytes: quant_type must be 'nf4' or 'fp4', got {quant_type!r}")


def check_positive_blocksize(blocksize: int) -> None:
    """Raise ValueError unless ``blocksize`` > 0."""
    if blocksize <= 0:
        raise ValueError(f"bitsandbytes: blocksize must be positive, got {blocksize}")


def num_blocks(n: int, blocksize: int) -> int:
    """Number of blocks of ``blocksize`` covering ``n`` elements."""
    return -(n // -blocksize)


def block_width(n: int, blocksize: int) -> int:
    """The elements a block spans in a tensor of ``n``: ``blocksize``, or ``n`` (at least 1) where
    one block holds them all. A kernel that pads to, loops over or stores a block's size in 32 bits
    takes this, so that a block size of 2^31 or 2^32 + 64 is one block of the tensor's size."""
    return min(blocksize, max(n, 1))


def check_same_device(arg_tensors: dict[str, torch.Tensor | None]) -> None:
    """Raise RuntimeError if the given tensors do not all live on one device."""
    first = None
    for t in arg_tensors.values():
        if t is None:
            continue
        if first is None:
            first = t.device
        elif t.device != first:
            break
    else:
        return
    devices = {name: t.device for name, t in arg_tensors.items() if t is not None}
    if len(set(devices.values())) > 1:
        desc = ", ".join(f"{k} on {v}" for k, v in devices.items())
        raise RuntimeError(f"bitsandbytes: tensors must be on one device, got {desc}")


def check_has_dim(t: torch.Tensor, arg: str) -> None:
    """Raise ValueError for a 0-d ``t``: a matmul operand needs a last dimension (without this
    check, ``t.shape[-1]`` raises an IndexError that names nothing)."""
    if t.dim() == 0:
        raise ValueError(f"bitsandbytes: {arg} must have at least one dimension, got a 0-d tensor")


ADDRESS_DEVICES = frozenset({"cpu", "cuda", "xpu"})
"""Device types whose ``data_ptr()`` is an address in the memory the kernels read, so tensors of
two storages are compared by their byte spans too (one allocation can back two storages:
``torch.from_numpy`` twice, DLPack). On other devices only views of one storage are compared:
on MPS ``data_ptr()`` is the address of the Metal buffer object, not of its bytes, and the spans
of two buffers would intersect by chance (a refused optimizer step where nothing is shared)."""


def _memory_domain(t: torch.Tensor) -> tuple[torch.device, int]:
    """Where ``t``'s byte span is meaningful: its device, plus its storage's base pointer on a
    device whose pointers are not addresses (``ADDRESS_DEVICES``)."""
    if t.device.type in ADDRESS_DEVICES:
        return t.device, 0
    return t.device, t.untyped_storage().data_ptr()


def _byte_span(t: torch.Tensor) -> tuple[int, int]:
    """The bytes [first, last) that ``t``'s elements (at least one) can occupy (a superset where
    strides interleave; torch's strides are never negative)."""
    lo = t.data_ptr()
    if t.is_contiguous():
        return lo, lo + t.nbytes
    size = t.element_size()
    return lo, lo + size + sum((n - 1) * st * size for n, st in zip(t.shape, t.stride()))


def in_shared_cpu_memory(*tensors: torch.Tensor) -> bool:
    """Whether any of ``tensors`` is a CPU tensor in shared memory, where another process may write
    it in place: no version counter here moves, so nothing derived from it may be kept. (torch
    calls every GPU storage shared; GPU tensors are not written so across processes.)"""
    return any(t.device.type == "cpu" and t.untyped_storage().is_shared() for t in tensors)


def may_overlap(a: torch.Tensor | None, b: torch.Tensor | None) -> bool:
    """Whether ``a`` and ``b`` may share memory: their byte spans intersect. Conservative (two
    interleaved views such as ``x[::2]`` and ``x[1::2]`` count as overlapping), which serves its
    uses: a kernel that writes one while it reads the other takes a safe path, or refuses them.
    Tensors without memory (meta, fake, empty) never overlap."""
    if a is None or b is None or a.device != b.device or a.device.type == "meta" or not a.numel() or not b.numel():
        return False
    try:
        if _memory_domain(a) != _memory_domain(b):
            return False
        (a0, a1), (b0, b1) = _byte_span(a), _byte_span(b)
    except RuntimeError:  # tensors without storage (tracing, functional tensors)
        return False
    return a0 < b1 and b0 < a1


def may_overlap_any(out: torch.Tensor, *inputs: torch.Tensor | None) -> bool:
    """Whether ``out`` may share memory with one of ``inputs`` (``may_overlap``). A kernel that
    writes ``out`` while it still reads the inputs would then overwrite values it has yet to read
    (a wrong result, or a race on a GPU): an ``.out`` op computes into a fresh tensor and copies
    it into ``out`` instead, as for a non-contiguous ``out``."""
    return any(may_overlap(out, t) for t in inputs)


def has_internal_overlap(t: torch.Tensor) -> bool:
    """Whether several of ``t``'s elements are one memory location (an ``expand``ed view: a stride
    of 0 in a dimension of more than one element), so that writing into it loses values."""
    return any(st == 0 and n > 1 for n, st in zip(t.shape, t.stride()))


def check_writable(t: torch.Tensor, arg: str) -> None:
    """Raise ValueError if ``t``, which an op writes, is an expanded view (``has_internal_overlap``)."""
    if has_internal_overlap(t):
        raise ValueError(
            f"bitsandbytes: {arg} is an expanded view (stride 0, shape {tuple(t.shape)}, strides {t.stride()}) "
            f"and cannot be written; pass a tensor with memory for each element (e.g. {arg}.clone())"
        )


def check_4bit_shape(
    shape: Sequence[int],
    absmax: torch.Tensor,
    packed: torch.Tensor,
    blocksize: int,
    packed_name: str = "A",
    shape_name: str = "shape",
    absmax_name: str = "absmax",
) -> None:
    """Check that ``packed`` and ``absmax`` describe a tensor of ``shape`` exactly: more bytes or more
    scales than it needs mean they belong to other data, or to another block size (a silent wrong
    answer if decoded). The names are the caller's arguments (``B`` and ``shapeB`` for a weight,
    ``absmax_8bit`` for the scales of a nested one)."""
    n = 1
    for s in shape:
        if s < 0:
            raise ValueError(f"bitsandbytes: {shape_name} must be non-negative, got {list(shape)}")
        n *= s
    nbytes = packed.numel() * packed.element_size()
    if nbytes != (n + 1) // 2:
        raise ValueError(
            f"bitsandbytes: {packed_name} holds {nbytes} packed bytes but {shape_name} {list(shape)} needs "
            f"{(n + 1) // 2}"
        )
    if absmax.numel() != num_blocks(n, blocksize):
        raise ValueError(
            f"bitsandbytes: {absmax_name} has {absmax.numel()} entries but {shape_name} {list(shape)} with "
            f"blocksize {blocksize} needs {num_blocks(n, blocksize)}"
        )


def check_nested_absmax(
    absmax: torch.Tensor,
    absmax_8bit: torch.Tensor,
    absmax_code: torch.Tensor | None,
    absmax_offset: torch.Tensor | None,
) -> None:
    """The parts of a nested (double-quantized) absmax, each under its own name: ``absmax_8bit``
    (u8 codes), ``absmax_code`` (their 256-entry code book), ``absmax`` (f32, one scale per 256
    codes) and ``absmax_offset`` (one value: a tensor of several would broadcast over the scales, a
    wrong answer without an error)."""
    if absmax_code is None or absmax_offset is None:
        raise ValueError("bitsandbytes: absmax_8bit needs absmax_code and absmax_offset")
    check_dtype(absmax_8bit, "absmax_8bit", (torch.uint8,))
    check_code(absmax_code, "absmax_code")
    check_dtype(absmax, "absmax", (torch.float32,))
    inner = num_blocks(absmax_8bit.numel(), 256)
    if absmax.numel() != inner:
        raise ValueError(
            f"bitsandbytes: absmax (the scales of absmax_8bit, one per 256 codes) has {absmax.numel()} entries "
            f"but absmax_8bit's {absmax_8bit.numel()} codes need {inner}"
        )
    check_dtype(absmax_offset, "absmax_offset", (*FLOAT_DTYPES, torch.float64))
    if absmax_offset.numel() != 1:
        raise ValueError(
            f"bitsandbytes: absmax_offset must hold one value (a 0-dim tensor), got shape {tuple(absmax_offset.shape)}"
        )
    # The parts live with absmax_8bit. The offset may also be a CPU tensor (torch adds a one-value CPU
    # tensor to a tensor on any device, as the established release's `absmax += offset` did); on
    # another device (meta) torch would silently skip the addition.
    device = absmax_8bit.device
    for name, t in (("absmax_code", absmax_code), ("absmax", absmax)):
        if t.device != device:
            raise RuntimeError(f"bitsandbytes: {name} must be on {device} (absmax_8bit's device), got {t.device}")
    if absmax_offset.device != device and absmax_offset.device.type != "cpu":
        raise RuntimeError(
            f"bitsandbytes: absmax_offset must be on {device} (absmax_8bit's device) or a CPU tensor, "
            f"got {absmax_offset.device}"
        )


def prod(shape: Sequence[int]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def check_quantize_4bit(A: torch.Tensor, blocksize: int, quant_type: str, quant_storage: torch.dtype) -> None:
    """Argument checks of quantize_4bit shared by every backend."""
    check_blocksize_4bit(blocksize)
    check_quant_type(quant_type)
    check_dtype(A, "A", FLOAT_DTYPES)
    if quant_storage not in QUANT_STORAGE_DTYPES:
        raise TypeError(f"bitsandbytes: quant_storage must be one of {QUANT_STORAGE_DTYPES}, got {quant_storage}")
    nbytes = (A.numel() + 1) // 2
    if nbytes % quant_storage.itemsize != 0:
        raise ValueError(
            f"bitsandbytes: A has {A.numel()} elements ({nbytes} packed bytes), which do not fill whole "
            f"{quant_storage} values; use quant_storage=torch.uint8 or pad A"
        )


def check_dequantize_4bit(
    A: torch.Tensor,
    absmax: torch.Tensor,
    blocksize: int,
    quant_type: str,
    shape: Sequence[int],
    dtype: torch.dtype,
    packed_name: str = "A",
    shape_name: str = "shape",
    absmax_name: str = "absmax",
) -> None:
    """Argument checks of dequantize_4bit shared by every backend; a matmul decoding its weight
    passes its own names (``B``, ``shapeB``, and ``absmax_8bit`` where ``absmax`` was resolved from
    nested scales)."""
    check_blocksize_4bit(blocksize)
    check_quant_type(quant_type)
    check_dtype(absmax, "absmax", (torch.float32,))
    check_output_dtype(dtype)
    check_same_device({packed_name: A, "absmax": absmax})
    check_4bit_shape(shape, absmax, A, blocksize, packed_name, shape_name, absmax_name)


def check_4bit_weight(
    shapeB: Sequence[int],
    B: torch.Tensor,
    blocksize: int,
    absmax: torch.Tensor,
    absmax_8bit: torch.Tensor | None,
    absmax_code: torch.Tensor | None,
    absmax_offset: torch.Tensor | None,
) -> None:
    """gemm_4bit's packed weight ``B`` of ``shapeB`` and its scales, before any is decoded: one
    ``absmax`` per block, or nested ones (``absmax_8bit`` per block, with the parts
    ``check_nested_absmax`` checks)."""
    if absmax_8bit is None:
        check_4bit_shape(shapeB, absmax, B, blocksize, "B", "shapeB")
    else:
        check_nested_absmax(absmax, absmax_8bit, absmax_code, absmax_offset)
        check_4bit_shape(shapeB, absmax_8bit, B, blocksize, "B", "shapeB", "absmax_8bit")


def check_gemv_4bit(
    A: torch.Tensor, B: torch.Tensor, shapeB: Sequence[int], absmax: torch.Tensor, code: torch.Tensor, blocksize: int
) -> None:
    """Argument checks of gemv_4bit shared by every backend."""
    if len(shapeB) != 2:
        raise ValueError(f"bitsandbytes: shapeB must have 2 dimensions, got {list(shapeB)}")
    check_has_dim(A, "A")
    if A.shape[-1] != shapeB[1]:
        raise ValueError(f"bitsandbytes: A's last dimension ({A.shape[-1]}) must equal shapeB[1] ({shapeB[1]})")
    check_dtype(A, "A", FLOAT_DTYPES)
    check_dtype(absmax, "absmax", (torch.float32,))
    check_dtype(code, "code", (torch.float32,))
    if code.numel() != 16:
        raise ValueError(f"bitsandbytes: code must hold 16 values, got {code.numel()}")
    check_positive_blocksize(blocksize)
    check_same_device({"A": A, "B": B, "absmax": absmax, "code": code})
    check_4bit_shape(shapeB, absmax, B, blocksize, "B", "shapeB")


def check_code(code: torch.Tensor, arg: str = "code") -> None:
    """A code book must be 256 ascending f32 values; ``arg`` is the caller's name for it."""
    check_dtype(code, arg, (torch.float32,))
    if code.numel() != 256:
        raise ValueError(f"bitsandbytes: {arg} must hold 256 values, got {code.numel()}")


def check_code_ascending(code: torch.Tensor, arg: str = "code") -> None:
    """A code book a quantizer searches must be finite and ascending (equal neighbours allowed):
    in another order its codes are far from the nearest entry, without an error. The message is
    the CPU library's. Reads the values: for the reference and host-side checks, not a device
    kernel's launch path (``functional.quantize_blockwise`` sorts a table in another order)."""
    values = code.detach().reshape(-1).float().cpu()
    bad = ~torch.isfinite(values)
    bad[1:] |= values[1:] < values[:-1]
    if not bool(bad.any()):
        return
    i = int(bad.nonzero()[0])  # the first entry that breaks the order, as the CPU library names it
    if not bool(torch.isfinite(values[i])):
        raise ValueError(f"bitsandbytes: {arg} must hold finite values, got {arg}[{i}] = {values[i].item():g}")
    raise ValueError(
        f"bitsandbytes: {arg} must be in ascending order, got {arg}[{i}] = {values[i].item():g} "
        f"after {arg}[{i - 1}] = {values[i - 1].item():g}"
    )


def check_dequantize_blockwise(
    A: torch.Tensor, absmax: torch.Tensor, code: torch.Tensor, blocksize: int, dtype: torch.dtype
) -> None:
    """Argument checks of dequantize_blockwise shared by every backend."""
    check_dtype(A, "A", (torch.uint8,))
    check_dtype(absmax, "absmax", (torch.float32,))
    check_positive_blocksize(blocksize)
    check_code(code)
    check_output_dtype(dtype)
    check_same_device({"A": A, "absmax": absmax, "code": code})
    need = num_blocks(A.numel(), blocksize)
    if absmax.numel() != need:  # more scales than blocks: another block size's
        raise ValueError(
            f"bitsandbytes: absmax has {absmax.numel()} entries but A with blocksize {blocksize} needs {need}"
        )


def check_quantize_blockwise(A: torch.Tensor, code: torch.Tensor, blocksize: int) -> None:
    """Argument checks of quantize_blockwise shared by every backend."""
    check_dtype(A, "A", FLOAT_DTYPES)
    check_positive_blocksize(blocksize)
    check_code(code)
    check_same_device({"A": A, "code": code})


def int8_rows(A: torch.Tensor) -> int:
    """Rows of A seen as a (rows, A.shape[-1]) matrix, as the LLM.int8() row ops count them: a 1-D
    A is one row (none when it is empty)."""
    if A.dim() == 0:
        check_has_dim(A, "A")
    cols = A.shape[-1]
    return A.numel() // cols if cols else (0 if A.dim() == 1 else int(torch.Size(A.shape[:-1]).numel()))


def int8_matrix(A: torch.Tensor) -> torch.Tensor:
    """A as the (int8_rows(A), A.shape[-1]) matrix the LLM.int8() row ops see (an explicit row
    count: reshape(-1, 0) is ambiguous for an empty last dimension)."""
    return A.reshape(int8_rows(A), A.shape[-1]) if A.dim() != 2 else A


def check_int8_vectorwise_dequant(A: torch.Tensor, stats: torch.Tensor) -> tuple[int, int]:
    """int8_vectorwise_dequant's inputs: int8 ``A`` seen as a (rows, cols) matrix (its last
    dimension the columns) and one f32 statistic per row; returns (rows, cols)."""
    check_dtype(A, "A", (torch.int8,))
    check_dtype(stats, "stats", (torch.float32,))
    check(A.dim() >= 1, "bitsandbytes: A must have at least one dimension")
    cols = A.shape[-1]
    rows = int8_rows(A)
    check(
        stats.numel() == rows,
        f"bitsandbytes: stats has {stats.numel()} entries, expected one per row ({rows})",
    )
    check_same_device({"A": A, "stats": stats})
    return rows, cols


def check_int8_mm_dequant(
    A: torch.Tensor,
    row_stats: torch.Tensor,
    col_stats: torch.Tensor,
    dtype: torch.dtype | None,
    bias: torch.Tensor | None,
) -> tuple[int, int]:
    """int8_mm_dequant's inputs: int32 ``A`` of at least one dimension seen as a (rows, n) matrix,
    one f32 row statistic per row, one f32 column statistic (and bias entry, of any dtype) per
    column, an f16/bf16/f32 output dtype (None: f16); returns (rows, n)."""
    if dtype is not None:
        check_output_dtype(dtype)
    check_dtype(A, "A", (torch.int32,))
    check_dtype(row_stats, "row_stats", (torch.float32,))
    check_dtype(col_stats, "col_stats", (torch.float32,))
    check(A.dim() >= 1, "bitsandbytes: A must have at least one dimension (rows x n), got a 0-d tensor")
    n = A.shape[-1]
    rows = int8_rows(A)
    if row_stats.numel() != rows:
        raise ValueError(f"bitsandbytes: row_stats must have {rows} entries, got {row_stats.numel()}")
    if col_stats.numel() != n:
        raise ValueError(f"bitsandbytes: col_stats must have {n} entries, got {col_stats.numel()}")
    if bias is not None and not (bias.dim() == 1 and bias.numel() == n):
        raise ValueError(f"bitsandbytes: bias must have shape ({n},), got {tuple(bias.shape)}")
    return rows, n


def check_out(out: torch.Tensor, shape: Sequence[int], dtype: torch.dtype) -> None:
    """Checks of a preallocated ``out`` argument: its shape and its dtype."""
    if tuple(out.shape) != tuple(shape):
        raise ValueError(f"bitsandbytes: out must have shape {tuple(shape)}, got {tuple(out.shape)}")
    if out.dtype != dtype:
        raise DTypeError(f"bitsandbytes: out must have dtype {dtype}, got {out.dtype}")
    check_writable(out, "out")


def check_linear_input(layer: str, x: torch.Tensor, in_features: int) -> None:
    """A quantized linear layer's input: a floating-point tensor ``[..., in_features]``."""
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        what = x.dtype if isinstance(x, torch.Tensor) else type(x).__name__
        raise DTypeError(f"{layer}: the input must be a floating-point tensor, got {what}")
    if x.dim() == 0 or x.shape[-1] != in_features:
        raise ValueError(
            f"{layer}: the input's last dimension must be in_features={in_features}, got shape {tuple(x.shape)}"
        )


def check_compute_dtype(layer: str, dtype: Any) -> None:
    """A layer's ``compute_dtype``: None (the input's) or f16, bf16, f32."""
    if dtype is not None and dtype not in FLOAT_DTYPES:
        raise ValueError(
            f"{layer}: compute_dtype must be None, torch.float16, torch.bfloat16 or torch.float32, got {dtype!r}"
        )


def into_out(out: torch.Tensor | None, result: torch.Tensor) -> torch.Tensor:
    """``result``, or ``out`` filled with it once ``check_out`` passes (copy_ alone would cast the
    values and broadcast them into a wrong shape)."""
    if out is None:
        return result
    check_out(out, result.shape, result.dtype)
    return out.copy_(result)


def check_outlier_cols(outlier_cols: torch.Tensor, k: int) -> None:
    """int8_mixed_scaled_mm's ``outlier_cols``: a 1-D int64 (or int32) tensor of column indices
    within [0, k) (a negative index is an error, not a column counted from the end). The range is
    checked where the indices are host memory; on an accelerator reading them back would stall
    every LLM.int8() layer with outliers on the device, so there only the kind is checked."""
    if not (outlier_cols.dim() == 1 and outlier_cols.dtype in (torch.int64, torch.int32)):
        raise ValueError(
            f"bitsandbytes: outlier_cols must be a 1-D int64 tensor, got {outlier_cols.dtype} {tuple(outlier_cols.shape)}"
        )
    if outlier_cols.numel() and outlier_cols.device.type == "cpu":
        lo, hi = torch.aminmax(outlier_cols)
        lo, hi = int(lo), int(hi)
        check(lo >= 0 and hi < k, f"bitsandbytes: outlier_cols holds columns outside [0, {k}): {lo} .. {hi}")


def check_int8_weight_mm(
    A: torch.Tensor, CB: torch.Tensor, SCB: torch.Tensor, bias: torch.Tensor | None = None, transposed: bool = False
) -> tuple[int, int]:
    """Checks of ``int8_weight_mm`` (A ``[..., K]``) and ``int8_weight_mm_t`` (A ``[..., N]``) against
    an int8 weight CB ``[N, K]`` with f32 row scales SCB ``[N]``; returns ``(N, K)``."""
    check_dtype(A, "A", FLOAT_DTYPES)
    check_dtype(CB, "CB", (torch.int8,))
    check_dtype(SCB, "SCB", (torch.float32,))
    check(CB.dim() == 2, f"bitsandbytes: CB must be 2-D [N, K], got shape {tuple(CB.shape)}")
    n, k = CB.shape
    check(SCB.numel() == n, f"bitsandbytes: SCB must have one entry per row of CB ({n}), got {SCB.numel()}")
    width, name = (n, "CB.shape[0]") if transposed else (k, "CB.shape[1]")
    check(
        A.dim() >= 1 and A.shape[-1] == width,
        f"bitsandbytes: A's last dimension must equal {name} ({width}), got shape {tuple(A.shape)}",
    )
    if bias is not None:
        check_dtype(bias, "bias", FLOAT_DTYPES)
        check(
            bias.dim() == 1 and bias.numel() == n, f"bitsandbytes: bias must have shape ({n},), got {tuple(bias.shape)}"
        )
    return n, k


def check_gemm_4bit_t(
    A: torch.Tensor, B: torch.Tensor, shapeB: Sequence[int], absmax: torch.Tensor, blocksize: int, quant_type: str
) -> tuple[int, int]:
    """Checks of ``gemm_4bit_t``: A ``[..., N]`` times the 4-bit weight of ``shapeB`` = ``[N, K]``
    (packed in B, f32 block-wise absmax); returns ``(N, K)``."""
    check(len(shapeB) == 2, f"bitsandbytes: shapeB must have 2 dimensions, got {list(shapeB)}")
    n, k = (int(s) for s in shapeB)
    check_dtype(A, "A", FLOAT_DTYPES)
    check_blocksize_4bit(blocksize)
    check_quant_type(quant_type)
    check_dtype(absmax, "absmax", (torch.float32,))
    check_4bit_shape((n, k), absmax, B, blocksize, "B", "shapeB")
    check(
        A.dim() >= 1 and A.shape[-1] == n,
        f"bitsandbytes: A's last dimension must equal shapeB[0] ({n}), got shape {tuple(A.shape)}",
    )
    return n, k


# The optimizer ops' checks live in their own module; platform wheels reach them through this one.
from ._checks_optim import (  # noqa: E402, F401
    OPTIMIZER_NAMES,
    OPTIMIZER_STATE_BLOCKSIZE,
    TWO_STATE_OPTIMIZERS,
    check_optimizer_8bit_no_alias,
    check_optimizer_8bit_states,
    check_optimizer_32bit_no_alias,
    check_optimizer_32bit_states,
    check_optimizer_args,
    check_optimizer_common,
    check_optimizer_no_alias,
    check_optimizer_state,
)
