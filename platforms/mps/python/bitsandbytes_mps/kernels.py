"""Python glue: validate arguments, allocate outputs, launch the Metal kernels.

``MetalKernels(device_type, compile_source, source)`` binds every kernel to one way of running the
shipped Metal source: ``compile_source(source())`` returns a library whose kernels are called as
``lib.<name>(*args, threads=..., group_size=...)``. On a Mac that is ``torch.mps.compile_shader``
and the tensors are on ``mps``; in the host harness it is ``_host.HostShaderLibrary`` and the
tensors are CPU tensors. The glue is the same code in both.

Binding rules (torch.mps.compile_shader's): argument i is the kernel's buffer i; a tensor binds
its data at its storage offset (strides are ignored, so every tensor passed is contiguous); a
Python ``int`` binds a 64-bit ``constant long&``, a ``float`` a 4-byte ``constant float&``, a list
of floats a ``constant float*`` array. Grids are one-dimensional: ``threads`` counts threads, not
threadgroups, and is always a whole number of threadgroups here.

Validation uses the op interface's shared checks (``bitsandbytes._checks``) before any launch.
The source is compiled on the first kernel call, never at import. If it does not compile, a
warning names the op and the torch version and the reference kernels serve every op from then on.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch

from bitsandbytes import _checks as C
from bitsandbytes.backends import reference as R
from bitsandbytes.backends.reference.fourbit import decode_nested_absmax

from .optim import OptimizerKernels

SUFFIX = {torch.float32: "f32", torch.float16: "f16", torch.bfloat16: "bf16"}
MAX_ELEMENTS = 2**31 - 1
"""The kernels index elements with 32-bit integers; larger tensors go to the reference."""

GEMV_MAX_ROWS = 8  # rows of A the fused gemv kernel takes (kGemvMaxRows)
GEMV_COLUMNS_PER_GROUP = 4  # one SIMD group (32 threads) per output column
QUANT_THREADS = 256

# Decode tables of the 4-bit types (FP4 code 8 decodes to -0.0), as the reference's.
_NF4 = (
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
    -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
    0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
    0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
)  # fmt: skip
_FP4 = (
    0.0, 0.0625 / 12, 8 / 12, 12 / 12, 4 / 12, 6 / 12, 2 / 12, 3 / 12,
    -0.0, -0.0625 / 12, -8 / 12, -12 / 12, -4 / 12, -6 / 12, -2 / 12, -3 / 12,
)  # fmt: skip


def _groups(items: int, per_group: int) -> int:
    return -(items // -per_group)


class MetalKernels(OptimizerKernels):
    """The MPS kernels of every op, launched through ``compile_source(source())``'s library on
    tensors of ``device_type``."""

    def __init__(self, device_type: str, compile_source: Callable[[str], Any], source: Callable[[], str]) -> None:
        self.device_type = device_type
        self._compile = compile_source
        self._source = source
        self._lib: Any = None
        self.compile_error: str | None = None
        self._tables: dict[tuple[str, torch.device], torch.Tensor] = {}

    # ---- plumbing ----------------------------------------------------------------------------

    def library(self, op: str) -> Any:
        """The compiled library, or None (warned once) when the source does not compile."""
        if self._lib is None and self.compile_error is None:
            try:
                self._lib = self._compile(self._source())
            except Exception as exc:  # the compiler's message is in exc
                self.compile_error = f"{type(exc).__name__}: {exc}"
                warnings.warn(
                    f"bitsandbytes_mps: the Metal kernels failed to compile at the first call ({op}) under torch "
                    f"{torch.__version__}: {self.compile_error}. The reference kernels serve every op on "
                    f"{self.device_type} from now on.",
                    RuntimeWarning,
                    stacklevel=3,
                )
        return self._lib

    def _device(self, **tensors: torch.Tensor | None) -> torch.device:
        """Check that every given tensor is on one device of our type and return it."""
        device = None
        for name, t in tensors.items():
            if t is None:
                continue
            C.check(
                t.device.type == self.device_type,
                f"bitsandbytes_mps: {name} must be on {self.device_type}, got {t.device}",
                RuntimeError,
            )
            if device is None:
                device = t.device
            C.check(
                t.device == device,
                f"bitsandbytes_mps: all tensors must be on one device, {name} is on {t.device}, not {device}",
                RuntimeError,
            )
        assert device is not None
        return device

    def _decode_table(self, quant_type: str, device: torch.device) -> torch.Tensor:
        key = (quant_type, device)
        table = self._tables.get(key)
        if table is None:
            values = _NF4 if quant_type == "nf4" else _FP4
            table = self._tables[key] = torch.tensor(values, dtype=torch.float32, device=device)
        return table

    # ---- 4-bit -------------------------------------------------------------------------------

    def quantize_4bit(
        self, A: torch.Tensor, blocksize: int, quant_type: str, quant_storage: torch.dtype
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """4-bit quantization (NF4/FP4) of an f32/f16/bf16 tensor."""
        C.check_quantize_4bit(A, blocksize, quant_type, quant_storage)
        device = self._device(A=A)
        n = A.numel()
        lib = self.library("quantize_4bit") if n else None
        if n > MAX_ELEMENTS or (n and lib is None):
            return R.KERNELS["quantize_4bit"](A, blocksize, quant_type, quant_storage)
        A = A.contiguous()
        packed = torch.empty((n + 1) // 2, dtype=torch.uint8, device=device)
        absmax = torch.empty(C.num_blocks(n, blocksize), dtype=torch.float32, device=device)
        if n:
            per_group = QUANT_THREADS // min(blocksize // 2, QUANT_THREADS)
            groups = _groups(absmax.numel(), per_group)
            getattr(lib, f"bnb_quantize_4bit_{SUFFIX[A.dtype]}")(
                A, packed, absmax, n, blocksize, int(quant_type == "nf4"),
                threads=groups * QUANT_THREADS, group_size=QUANT_THREADS,
            )  # fmt: skip
        return packed.view(quant_storage).reshape(-1, 1), absmax

    def _dequantize_4bit_into(
        self, lib: Any, A: torch.Tensor, absmax: torch.Tensor, blocksize: int, quant_type: str, out: torch.Tensor
    ) -> None:
        n = out.numel()
        raw = A.contiguous().view(torch.uint8).reshape(-1)
        absmax = absmax.contiguous()
        # Eight elements per thread from one 32-bit word of codes where the layout allows it.
        words = n % 8 == 0 and raw.storage_offset() % 4 == 0
        items = n // 8 if words else (n + 1) // 2
        getattr(lib, f"bnb_dequantize_4bit_{SUFFIX[out.dtype]}")(
            raw, absmax, out, n, blocksize.bit_length() - 1, int(quant_type == "nf4"), int(words),
            threads=_groups(items, 256) * 256, group_size=256,
        )  # fmt: skip

    def dequantize_4bit(
        self,
        A: torch.Tensor,
        absmax: torch.Tensor,
        blocksize: int,
        quant_type: str,
        shape: Sequence[int],
        dtype: torch.dtype,
    ) -> torch.Tensor:
        """4-bit dequantization into a new tensor of ``shape`` and ``dtype``."""
        C.check_dequantize_4bit(A, absmax, blocksize, quant_type, shape, dtype)
        device = self._device(A=A, absmax=absmax)
        out = torch.empty(list(shape), dtype=dtype, device=device)
        n = out.numel()
        if n == 0:
            return out
        lib = self.library("dequantize_4bit")
        if lib is None or n > MAX_ELEMENTS:
            return R.KERNELS["dequantize_4bit"](A, absmax, blocksize, quant_type, shape, dtype)
        self._dequantize_4bit_into(lib, A, absmax, blocksize, quant_type, out)
        return out

    def dequantize_4bit_out(
        self,
        A: torch.Tensor,
        absmax: torch.Tensor,
        blocksize: int,
        quant_type: str,
        shape: Sequence[int],
        dtype: torch.dtype,
        out: torch.Tensor,
    ) -> None:
        """4-bit dequantization into ``out`` (a strided ``out``, or one sharing memory with an input,
        gets a fresh result copied in)."""
        C.check_dequantize_4bit(A, absmax, blocksize, quant_type, shape, dtype)
        C.check_out(out, shape, dtype)
        self._device(A=A, absmax=absmax, out=out)
        lib = self.library("dequantize_4bit.out") if out.numel() else None
        if (
            out.numel()
            and out.is_contiguous()
            and lib is not None
            and out.numel() <= MAX_ELEMENTS
            and not C.may_overlap_any(out, A, absmax)
        ):
            self._dequantize_4bit_into(lib, A, absmax, blocksize, quant_type, out)
        elif out.numel():
            out.copy_(self.dequantize_4bit(A, absmax, blocksize, quant_type, shape, dtype))

    def _gemv(
        self,
        lib: Any,
        A: torch.Tensor,
        B: torch.Tensor,
        shapeB: Sequence[int],
        absmax: torch.Tensor,
        code: torch.Tensor,
        blocksize: int,
        out: torch.Tensor,
    ) -> None:
        N, K = int(shapeB[0]), int(shapeB[1])
        m = A.numel() // K
        A = A.contiguous()
        raw = B.contiguous().view(torch.uint8).reshape(-1)
        if raw.storage_offset() % 4:  # the kernel reads the packed weights as 32-bit words
            raw = raw.clone()
        getattr(lib, f"bnb_gemv_4bit_{SUFFIX[A.dtype]}")(
            A, raw, absmax.contiguous().float(), code.contiguous().float(), out, m, N, K, blocksize.bit_length() - 1,
            threads=_groups(N, GEMV_COLUMNS_PER_GROUP) * GEMV_COLUMNS_PER_GROUP * 32,
            group_size=GEMV_COLUMNS_PER_GROUP * 32,
        )  # fmt: skip

    def _gemv_fits(self, A: torch.Tensor, shapeB: Sequence[int], blocksize: int) -> bool:
        N, K = int(shapeB[0]), int(shapeB[1])
        m = A.numel() // K if K else 0
        return (
            0 < m <= GEMV_MAX_ROWS
            and N > 0
            and blocksize in C.FOUR_BIT_BLOCKSIZES
            and N * K <= MAX_ELEMENTS
            and A.numel() <= MAX_ELEMENTS
        )

    def gemv_4bit(
        self,
        A: torch.Tensor,
        B: torch.Tensor,
        shapeB: Sequence[int],
        absmax: torch.Tensor,
        code: torch.Tensor,
        blocksize: int,
    ) -> torch.Tensor:
        """``A @ dequant(B).T`` read straight from the packed weights (1 to 8 rows of A); more
        rows, or block sizes the kernel does not take, go to the reference (torch ops)."""
        C.check_gemv_4bit(A, B, shapeB, absmax, code, blocksize)
        device = self._device(A=A, B=B, absmax=absmax, code=code)
        lib = self.library("gemv_4bit") if self._gemv_fits(A, shapeB, blocksize) else None
        if lib is None:
            return R.KERNELS["gemv_4bit"](A, B, shapeB, absmax, code, blocksize)
        out = torch.empty((*A.shape[:-1], int(shapeB[0])), dtype=A.dtype, device=device)
        self._gemv(lib, A, B, shapeB, absmax, code, blocksize, out)
        return out

    def gemv_4bit_out(
        self,
        A: torch.Tensor,
        B: torch.Tensor,
        shapeB: Sequence[int],
        absmax: torch.Tensor,
        code: torch.Tensor,
        blocksize: int,
        out: torch.Tensor,
    ) -> None:
        """``gemv_4bit`` into a preallocated ``out``."""
        C.check_gemv_4bit(A, B, shapeB, absmax, code, blocksize)
        C.check_out(out, (*A.shape[:-1], shapeB[0]), A.dtype)
        self._device(A=A, B=B, absmax=absmax, code=code, out=out)
        lib = self.library("gemv_4bit.out") if self._gemv_fits(A, shapeB, blocksize) else None
        if lib is not None and out.is_contiguous() and not C.may_overlap_any(out, A, B, absmax, code):
            self._gemv(lib, A, B, shapeB, absmax, code, blocksize, out)
        else:
            out.copy_(self.gemv_4bit(A, B, shapeB, absmax, code, blocksize))

    def gemm_4bit(
        self,
        A: torch.Tensor,
        B: torch.Tensor,
        shapeB: Sequence[int],
        absmax: torch.Tensor,
        blocksize: int,
        quant_type: str,
        bias: torch.Tensor | None = None,
        absmax_8bit: torch.Tensor | None = None,
        absmax_code: torch.Tensor | None = None,
        absmax_offset: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``A @ dequant(B).T + bias``: the fused gemv kernel for 1 to 8 rows of A, otherwise the
        dequantize kernel and torch's matmul on the device."""
        C.check(len(shapeB) == 2, f"bitsandbytes: shapeB must have 2 dimensions, got {list(shapeB)}")
        C.check_has_dim(A, "A")
        C.check(
            A.shape[-1] == shapeB[1],
            f"bitsandbytes: A's last dimension ({A.shape[-1]}) must equal shapeB[1] ({shapeB[1]})",
        )
        C.check_dtype(A, "A", C.FLOAT_DTYPES)
        C.check_dtype(B, "B", (torch.uint8, torch.bfloat16, torch.float16, torch.float32))
        C.check_dtype(absmax, "absmax", (torch.float32,))
        C.check_blocksize_4bit(blocksize)
        C.check_quant_type(quant_type)
        C.check_4bit_weight(list(shapeB), B, blocksize, absmax, absmax_8bit, absmax_code, absmax_offset)
        device = self._device(
            A=A, B=B, absmax=absmax, absmax_8bit=absmax_8bit, absmax_code=absmax_code, absmax_offset=absmax_offset,
            bias=bias,
        )  # fmt: skip
        if absmax_8bit is not None:
            absmax = decode_nested_absmax(absmax, absmax_8bit, absmax_code, absmax_offset, self.dequantize_blockwise)
        if bias is not None:
            C.check(
                bias.dim() == 1 and bias.shape[0] == shapeB[0],
                f"bitsandbytes: bias must have shape ({shapeB[0]},), got {tuple(bias.shape)}",
            )
            bias = bias.to(A.dtype)
        if self._gemv_fits(A, shapeB, blocksize):
            out = self.gemv_4bit(A, B, shapeB, absmax, self._decode_table(quant_type, device), blocksize)
            return out + bias if bias is not None else out
        W = self.dequantize_4bit(B, absmax, blocksize, quant_type, list(shapeB), A.dtype)
        return torch.nn.functional.linear(A, W, bias)

    # ---- block-wise 8-bit ----------------------------------------------------------------------

    def quantize_blockwise(
        self, A: torch.Tensor, code: torch.Tensor, blocksize: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Block-wise 8-bit quantization against a sorted 256-entry code book."""
        C.check_quantize_blockwise(A, code, blocksize)
        device = self._device(A=A, code=code)
        n = A.numel()
        lib = self.library("quantize_blockwise") if n else None
        if n > MAX_ELEMENTS or (n and lib is None):
            return R.KERNELS["quantize_blockwise"](A, code, blocksize)
        A = A.contiguous()
        out = torch.empty(A.shape, dtype=torch.uint8, device=device)
        absmax = torch.empty(C.num_blocks(n, blocksize), dtype=torch.float32, device=device)
        if n:
            blocksize = C.block_width(n, blocksize)  # the kernels' sizes are 32-bit
            threads = 64  # a multiple of the SIMD width, up to 256 as the block size asks
            while threads < 256 and threads < blocksize:
                threads *= 2
            getattr(lib, f"bnb_quantize_blockwise_{SUFFIX[A.dtype]}")(
                A, code.contiguous().float(), out, absmax, n, blocksize,
                threads=absmax.numel() * threads, group_size=threads,
            )  # fmt: skip
        return out, absmax

    def _dequantize_blockwise_into(
        self, lib: Any, A: torch.Tensor, absmax: torch.Tensor, code: torch.Tensor, blocksize: int, out: torch.Tensor
    ) -> None:
        n = A.numel()
        getattr(lib, f"bnb_dequantize_blockwise_{SUFFIX[out.dtype]}")(
            A.contiguous(), code.contiguous().float(), absmax.contiguous(), out, n, C.block_width(n, blocksize),
            threads=_groups(n, 256) * 256, group_size=256,
        )  # fmt: skip

    def dequantize_blockwise(
        self, A: torch.Tensor, absmax: torch.Tensor, code: torch.Tensor, blocksize: int, dtype: torch.dtype
    ) -> torch.Tensor:
        """Block-wise 8-bit dequantization."""
        C.check_dequantize_blockwise(A, absmax, code, blocksize, dtype)
        device = self._device(A=A, absmax=absmax, code=code)
        out = torch.empty(A.shape, dtype=dtype, device=device)
        n = A.numel()
        if n == 0:
            return out
        lib = self.library("dequantize_blockwise")
        if lib is None or n > MAX_ELEMENTS:
            return R.KERNELS["dequantize_blockwise"](A, absmax, code, blocksize, dtype)
        self._dequantize_blockwise_into(lib, A, absmax, code, blocksize, out)
        return out

    def dequantize_blockwise_out(
        self,
        A: torch.Tensor,
        absmax: torch.Tensor,
        code: torch.Tensor,
        blocksize: int,
        dtype: torch.dtype,
        out: torch.Tensor,
    ) -> None:
        """Block-wise 8-bit dequantization into ``out`` (a strided ``out``, or one sharing memory with
        an input, gets a fresh result copied in)."""
        C.check_dequantize_blockwise(A, absmax, code, blocksize, dtype)
        C.check_out(out, A.shape, dtype)
        self._device(A=A, absmax=absmax, code=code, out=out)
        lib = self.library("dequantize_blockwise.out") if out.numel() else None
        if (
            out.numel()
            and out.is_contiguous()
            and lib is not None
            and out.numel() <= MAX_ELEMENTS
            and not C.may_overlap_any(out, A, absmax, code)
        ):
            self._dequantize_blockwise_into(lib, A, absmax, code, blocksize, out)
        elif out.numel():
            out.copy_(self.dequantize_blockwise(A, absmax, code, blocksize, dtype))
