"""The functional API: quantization states, 4-bit / 8-bit (de)quantization, LLM.int8() primitives.

Every tensor computation goes through the ``torch.ops.bitsandbytes`` ops, so a loaded platform
wheel serves it; without one the reference kernels do. Code books are built in Python.
"""

from __future__ import annotations

import ctypes
import itertools
import json
import warnings
from collections.abc import Iterable
from typing import Any

import torch

from . import _checks
from .backends.reference import codebooks as _codebooks
from .utils import pack_dict_to_tensor, unpack_tensor_to_dict

C = 127.0
"""The int8 scale constant of LLM.int8()."""

FIRST_CUDA_DEVICE = torch.device("cuda", 0)

name2qmap: dict[str, torch.Tensor] = {}
"""Cache of named code books (``"dynamic"`` = the signed dynamic map, on first use)."""

_PAGING_UNSUPPORTED = (
    "bitsandbytes: paged (unified-memory) tensors need a platform kernel library with paging support; "
    "none is loaded here, so use regular tensors (e.g. an optimizer with is_paged=False)."
)


# --------------------------------------------------------------------------------------------
# Singletons kept for API compatibility


class GlobalPageManager:
    """Registry of paged tensors (singleton: use :meth:`get_instance`)."""

    _instance: GlobalPageManager | None = None

    def __init__(self) -> None:
        raise RuntimeError("Call get_instance() instead")

    def initialize(self) -> None:
        self.paged_tensors: list[torch.Tensor] = []

    @classmethod
    def get_instance(cls) -> GlobalPageManager:
        if cls._instance is None:
            cls._instance = cls.__new__(cls)
            cls._instance.initialize()
        return cls._instance

    def prefetch_all(self, to_cpu: bool = False) -> None:
        """Prefetch every registered paged tensor, in reverse registration order."""
        for t in self.paged_tensors[::-1]:
            prefetch_tensor(t, to_cpu)


class CUBLAS_Context:  # noqa: N801  (public name)
    """Per-device cuBLAS handle cache (singleton). This build owns no handles: ``get_context`` returns None."""

    _instance: CUBLAS_Context | None = None

    def __init__(self) -> None:
        raise RuntimeError("Call get_instance() instead")

    def initialize(self) -> None:
        self.context: dict[int, Any] = {}

    @classmethod
    def get_instance(cls) -> CUBLAS_Context:
        if cls._instance is None:
            cls._instance = cls.__new__(cls)
            cls._instance.initialize()
        return cls._instance

    def get_context(self, device: torch.device) -> Any:
        """The cached handle for ``device`` (None: kernels manage their own handles)."""
        return self.context.setdefault(device.index if device.index is not None else 0, None)


def get_paged(
    *shape: int, dtype: torch.dtype = torch.float32, device: torch.device = FIRST_CUDA_DEVICE
) -> torch.Tensor:
    """Allocate a paged tensor. Not available in this build: raises RuntimeError."""
    raise RuntimeError(_PAGING_UNSUPPORTED)


def prefetch_tensor(A: torch.Tensor, to_cpu: bool = False) -> None:
    """Prefetch a paged tensor. Raises RuntimeError (no paged tensors exist in this build)."""
    if not getattr(A, "is_paged", False):
        raise ValueError("bitsandbytes: prefetch_tensor needs a paged tensor (A.is_paged is False)")
    raise RuntimeError(_PAGING_UNSUPPORTED)


def elementwise_func(func_name: str, A: torch.Tensor, B: Any, value: float = 0.0, prefetch: bool = True) -> None:
    """Native element-wise helper over paged tensors. Raises RuntimeError in this build."""
    raise RuntimeError(_PAGING_UNSUPPORTED)


def fill(A: torch.Tensor, value: float, device: Any = None, prefetch: bool = True) -> None:
    """Native fill of a paged tensor. Raises RuntimeError in this build."""
    raise RuntimeError(_PAGING_UNSUPPORTED)


def _mul(A: torch.Tensor, B: torch.Tensor, device: Any = None) -> None:
    raise RuntimeError(_PAGING_UNSUPPORTED)


def is_on_gpu(tensors: Iterable[torch.Tensor | None]) -> bool:
    """True if the tensors are all on CPU or all on one accelerator; RuntimeError otherwise.

    ``None`` entries and paged tensors are ignored.
    """
    on_cpu = False
    gpu_ids: set[tuple[str, int | None]] = set()
    for t in tensors:
        if t is None or getattr(t, "is_paged", False):
            continue
        if t.device.type == "cpu":
            on_cpu = True
        else:
            gpu_ids.add((t.device.type, t.device.index))
    if on_cpu and gpu_ids:
        shapes = [(tuple(t.shape), t.device) for t in tensors if t is not None]
        raise RuntimeError(
            f"bitsandbytes: all tensors must be on the same device (CPU or one accelerator), got {shapes}"
        )
    if len(gpu_ids) > 1:
        raise RuntimeError(
            f"bitsandbytes: input tensors must be on one accelerator device, got {sorted(map(str, gpu_ids))}"
        )
    return True


def get_ptr(A: torch.Tensor | None) -> ctypes.c_void_p | None:
    """The data pointer of ``A`` as a ``ctypes.c_void_p`` (None for None)."""
    if A is None:
        return None
    return ctypes.c_void_p(A.data_ptr())


def has_avx512bf16() -> bool:
    """Whether the CPU-specific packed 4-bit layout is used. This build never re-lays out weights."""
    return False


# --------------------------------------------------------------------------------------------
# Code books


def create_linear_map(signed: bool = True, total_bits: int = 8, add_zero: bool = True) -> torch.Tensor:
    """An evenly spaced code of ``2**total_bits`` values (one fewer when signed with a zero), padded to 256."""
    count = 2**total_bits
    if signed and (add_zero or total_bits < 8):
        count -= 1
    values = torch.linspace(-1.0 if signed else 0.0, 1.0, count)
    gap = 256 - values.numel()
    if gap == 0:
        return values
    half = values.numel() // 2
    return torch.cat([values[:half], torch.zeros(gap), values[half:]])


def create_normal_map(offset: float = 0.9677083, use_extra_value: bool = True) -> torch.Tensor:
    """The NormalFloat code from normal quantiles (needs scipy), 256 f32 values, sorted, max 1."""
    try:
        from scipy.stats import norm
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "bitsandbytes.functional.create_normal_map needs scipy: install it with `pip install scipy`"
        ) from err
    positive_count = 9 if use_extra_value else 8
    positive = norm.ppf(torch.linspace(offset, 0.5, positive_count)[:-1].numpy()).tolist()
    negative = (-norm.ppf(torch.linspace(offset, 0.5, 8)[:-1].numpy())).tolist()
    zeros = [0.0] * (256 - len(positive) - len(negative))
    values = torch.tensor(positive + zeros + negative, dtype=torch.float32).sort().values
    return values / values.max()


def create_fp8_map(
    signed: bool = True, exponent_bits: int = 5, precision_bits: int = 2, total_bits: int = 8
) -> torch.Tensor:
    """A minifloat code: every (exponent, mantissa) pattern, optionally signed, sorted, max 1."""
    if exponent_bits + precision_bits != total_bits - int(signed):
        raise ValueError(
            f"create_fp8_map: exponent_bits ({exponent_bits}) + precision_bits ({precision_bits}) must equal "
            f"total_bits ({total_bits}) minus the sign bit ({int(signed)})"
        )
    bias = 2 ** (exponent_bits - 1)
    values: list[float] = []
    for field in range(2**exponent_bits):
        for bits in itertools.product((0, 1), repeat=precision_bits):
            mantissa = sum(b * 2.0 ** -(i + 1) for i, b in enumerate(bits))
            if field == 0:
                value = mantissa * 2.0**-bias
            else:
                value = (1.0 + mantissa) * 2.0 ** -(field - bias - 1)
            values.append(value)
            if signed:
                values.append(-value)
    values += [0.0] * (256 - len(values))
    code = torch.tensor(sorted(values), dtype=torch.float32)
    return code / code.max()


def create_dynamic_map(signed: bool = True, max_exponent_bits: int = 7, total_bits: int = 8) -> torch.Tensor:
    """The dynamic (exponent + linear fraction) 8-bit code, 256 ascending f32 values (spec §2.4)."""
    return _codebooks.create_dynamic_map(signed=signed, max_exponent_bits=max_exponent_bits, total_bits=total_bits)


_AF4_VALUES = (
    1.0, 0.72424863, 0.55496234, 0.42563882, 0.31675666, 0.21961274, 0.12934483, 0.04273164, 0.0,
    -0.04934812, -0.14982478, -0.25607552, -0.3736951, -0.51243739, -0.69441008, -1.0,
)  # fmt: skip


def get_4bit_type(typename: str, device: torch.device | str | None = None, blocksize: int = 64) -> torch.Tensor:
    """The 16-entry f32 code table of a 4-bit type ('nf4', 'fp4', 'af4'), in code order.

    ``device=None`` means CPU here (the established release defaulted to CUDA).
    """
    device = "cpu" if device is None else device
    if typename in ("nf4", "fp4"):
        return _codebooks.four_bit_table(typename, device)
    if typename == "af4":
        if blocksize != 64:
            raise NotImplementedError("4-bit AbnormalFloats currently only support blocksize 64.")
        return torch.tensor(_AF4_VALUES, dtype=torch.float32, device=device)
    raise NotImplementedError(f"Typename {typename} not supported")


def _dynamic_code(device: torch.device) -> torch.Tensor:
    if "dynamic" not in name2qmap:
        name2qmap["dynamic"] = create_dynamic_map(signed=True)
    return name2qmap["dynamic"].to(device)


# --------------------------------------------------------------------------------------------
# QuantState


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


_QUANT_STATE_DTYPES = {_dtype_name(d): d for d in (torch.float32, torch.float16, torch.bfloat16, torch.float64)}
"""The dtypes a serialized quant state may name (an allow-list: names from a checkpoint are
never looked up on the torch module)."""


def _dtype_from_name(name: Any, key: str) -> torch.dtype:
    dtype = _QUANT_STATE_DTYPES.get(name) if isinstance(name, str) else None
    if dtype is None:
        raise ValueError(
            f"bitsandbytes: quant state item {key!r} must name one of {sorted(_QUANT_STATE_DTYPES)}, got {name!r}"
        )
    return dtype


def _unpack_quant_state_blob(key: str, blob: torch.Tensor) -> dict[str, Any]:
    """The JSON items of a packed ``quant_state.bitsandbytes__<type>`` tensor; ValueError naming
    ``key`` when it is not a uint8 tensor of UTF-8 JSON text holding an object."""
    if not isinstance(blob, torch.Tensor) or blob.dtype != torch.uint8:
        raise ValueError(f"bitsandbytes: quant state item {key!r} must be a uint8 tensor of JSON text")
    try:
        decoded = unpack_tensor_to_dict(blob)
    except UnicodeDecodeError as err:
        raise ValueError(f"bitsandbytes: quant state item {key!r} is not UTF-8 text ({err.reason})") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"bitsandbytes: quant state item {key!r} is not valid JSON ({err.msg})") from None
    if not isinstance(decoded, dict):
        raise ValueError(
            f"bitsandbytes: quant state item {key!r} must hold a JSON object, got {type(decoded).__name__}"
        )
    return decoded


def _int_item(qs_dict: dict[str, Any], key: str) -> int:
    value = qs_dict[key]
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"bitsandbytes: quant state item {key!r} must be a positive integer, got {value!r}")
    return value


def _tensor_item(qs_dict: dict[str, Any], key: str, device: torch.device | str) -> torch.Tensor:
    value = qs_dict[key]
    if not isinstance(value, torch.Tensor):
        raise ValueError(f"bitsandbytes: quant state item {key!r} must be a tensor, got {type(value).__name__}")
    return value.to(device)


class QuantState:
    """Everything needed to dequantize a block-wise quantized tensor (4-bit or 8-bit).

    ``absmax`` is f32 per block, or u8 when nested (``state2`` then describes its quantization and
    ``offset`` its mean). Serializes to the checkpoint keys of the established release.
    """

    valid_quant_types = ("fp4", "nf4")
    valid_qs_type_keys = [f"bitsandbytes__{x}" for x in valid_quant_types]
    valid_qs_keys = [
        "absmax",
        "quant_map",
        "nested_absmax",
        "nested_quant_map",
        "quant_state",
        "quant_type",
        "blocksize",
        "dtype",
        "shape",
        "nested_blocksize",
        "nested_dtype",
        "nested_offset",
    ]

    def __init__(
        self,
        absmax: torch.Tensor,
        shape: torch.Size | tuple[int, ...] | None = None,
        code: torch.Tensor | None = None,
        blocksize: int | None = None,
        quant_type: str | None = None,
        dtype: torch.dtype | None = None,
        offset: torch.Tensor | None = None,
        state2: QuantState | None = None,
    ) -> None:
        self.absmax = absmax
        self.shape = torch.Size(shape) if shape is not None else None
        self.code = code
        self.dtype = dtype
        self.blocksize = blocksize
        self.quant_type = quant_type
        self.offset = offset
        self.state2 = state2
        self.nested = state2 is not None

    def __getitem__(self, idx: int) -> Any:
        """Legacy list view ``[absmax, shape, dtype, blocksize, [offset, state2] | None, quant_type]``."""
        nested = [self.offset, self.state2] if self.nested else None
        return [self.absmax, self.shape, self.dtype, self.blocksize, nested, self.quant_type][idx]

    def __getattr__(self, name: str) -> Any:
        # Only reached for missing attributes: expose the packed JSON blob under its dotted key
        # (FSDP resolves state-dict keys such as ``weight.quant_state.bitsandbytes__nf4``).
        if name.startswith("bitsandbytes__"):
            packed = self.as_dict(packed=True)
            key = "quant_state." + name
            if key in packed:
                return packed[key]
        raise AttributeError(f"'QuantState' object has no attribute '{name}'")

    @classmethod
    def from_dict(cls, qs_dict: dict[str, Any], device: torch.device | str) -> QuantState:
        """Rebuild a state from ``as_dict()`` output, packed or not, keys optionally prefixed: a
        4-bit state (``quant_type`` 'nf4' / 'fp4') or a block-wise 8-bit one (``quant_type`` None,
        its code book in ``quant_map``), nested or not.

        Raises ValueError naming the item when the packed blob is missing, ambiguous, not UTF-8
        JSON, or an item is missing, unknown or of the wrong kind.
        """
        qs_dict = dict(qs_dict)  # the caller's dict is left as it was
        qs_keys = [k for k, v in qs_dict.items() if "quant_state" in k and isinstance(v, torch.Tensor)]
        if "quant_type" not in qs_dict:
            if not qs_keys:
                raise ValueError(
                    "Expected packed or unpacked quant_state items, found neither: the state dict lacks the "
                    "'quant_state.bitsandbytes__nf4' / 'quant_state.bitsandbytes__fp4' entry"
                )
            if len(qs_keys) != 1 or qs_keys[0].split(".")[-1] not in cls.valid_qs_type_keys:
                raise ValueError(
                    f"There should be exactly one `quant_state` item with ending from {cls.valid_qs_type_keys}.\n"
                    f"Detected {qs_keys}."
                )
        if len(qs_keys) == 1:
            key = qs_keys[0]
            blob_type = key.split(".")[-1].removeprefix("bitsandbytes__")
            decoded = _unpack_quant_state_blob(key, qs_dict.pop(key))
            if decoded.get("quant_type") != blob_type:
                raise ValueError(
                    f"bitsandbytes: quant state item {key!r} is for {blob_type!r} but its content says "
                    f"quant_type={decoded.get('quant_type')!r}"
                )
            qs_dict.update(decoded)

        qs_dict = {k.split(".")[-1]: v for k, v in qs_dict.items()}
        unknown = set(qs_dict) - set(cls.valid_qs_keys)
        if unknown:
            raise ValueError(f"bitsandbytes: unexpected quant state items {sorted(unknown)}")
        for required in ("absmax", "quant_type", "blocksize", "dtype"):
            if required not in qs_dict:
                raise ValueError(f"bitsandbytes: quant state lacks the {required!r} item")
        quant_type = qs_dict["quant_type"]
        if quant_type is not None and quant_type not in cls.valid_quant_types:
            raise ValueError(
                f"bitsandbytes: quant_type must be one of {cls.valid_quant_types} (4-bit) or None (block-wise "
                f"8-bit), got {quant_type!r}"
            )

        offset, state2 = None, None
        if "nested_absmax" in qs_dict:
            for required in ("nested_blocksize", "nested_quant_map", "nested_dtype", "nested_offset"):
                if required not in qs_dict:
                    raise ValueError(f"bitsandbytes: nested quant state lacks the {required!r} item")
            nested_offset = qs_dict["nested_offset"]
            if isinstance(nested_offset, bool) or not isinstance(nested_offset, (int, float)):
                raise ValueError(
                    f"bitsandbytes: quant state item 'nested_offset' must be a number, got {nested_offset!r}"
                )
            offset = torch.tensor(float(nested_offset), device=device)
            state2 = cls(
                absmax=_tensor_item(qs_dict, "nested_absmax", device),
                blocksize=_int_item(qs_dict, "nested_blocksize"),
                code=_tensor_item(qs_dict, "nested_quant_map", device),
                dtype=_dtype_from_name(qs_dict["nested_dtype"], "nested_dtype"),
            )

        if qs_dict.get("quant_map") is not None:
            code = _tensor_item(qs_dict, "quant_map", device)
        elif quant_type is None:
            code = _dynamic_code(torch.device(device))
        else:
            code = get_4bit_type(quant_type, device)
        shape = qs_dict.get("shape")
        if shape is not None and not (
            isinstance(shape, (list, tuple, torch.Size))
            and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
        ):
            raise ValueError(f"bitsandbytes: quant state item 'shape' must be a list of sizes, got {shape!r}")
        return cls(
            quant_type=quant_type,
            absmax=_tensor_item(qs_dict, "absmax", device),
            blocksize=_int_item(qs_dict, "blocksize"),
            code=code,
            dtype=_dtype_from_name(qs_dict["dtype"], "dtype"),
            shape=torch.Size(shape) if shape is not None else None,
            offset=offset,
            state2=state2,
        )

    def as_dict(self, packed: bool = False) -> dict[str, Any]:
        """The serializable items; with ``packed`` only tensors, the rest JSON-encoded in one u8 tensor."""
        qs_dict: dict[str, Any] = {
            "quant_type": self.quant_type,
            "absmax": self.absmax,
            "blocksize": self.blocksize,
            "quant_map": self.code,
            "dtype": _dtype_name(self.dtype) if self.dtype is not None else None,
            "shape": tuple(self.shape) if self.shape is not None else None,
        }
        if self.nested:
            qs_dict.update(
                {
                    "nested_absmax": self.state2.absmax,
                    "nested_blocksize": self.state2.blocksize,
                    "nested_quant_map": self.state2.code.clone(),
                    "nested_dtype": _dtype_name(self.state2.dtype),
                    "nested_offset": self.offset.item(),
                }
            )
        if not packed or self.quant_type is None:
            return qs_dict
        out = {k: v for k, v in qs_dict.items() if isinstance(v, torch.Tensor)}
        rest = {k: v for k, v in qs_dict.items() if not isinstance(v, torch.Tensor)}
        out["quant_state.bitsandbytes__" + self.quant_type] = pack_dict_to_tensor(rest)
        return out

    def to(self, device: torch.device | str) -> None:
        """Move the state's tensors to ``device`` in place."""
        self.code = self.code.to(device) if self.code is not None else None
        self.absmax = self.absmax.to(device)
        if self.nested:
            self.offset = self.offset.to(device)
            self.state2.absmax = self.state2.absmax.to(device)
            self.state2.code = self.state2.code.to(device)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, QuantState):
            return False

        def close(a: torch.Tensor | None, b: torch.Tensor | None) -> bool:
            if a is None or b is None:
                return a is b
            return a.shape == b.shape and torch.allclose(a.float(), b.float().to(a.device), atol=1e-6)

        return (
            close(self.absmax, other.absmax)
            and self.shape == other.shape
            and close(self.code, other.code)
            and self.dtype == other.dtype
            and self.blocksize == other.blocksize
            and self.quant_type == other.quant_type
            and (
                self.offset == other.offset
                if self.offset is None or other.offset is None
                else bool(torch.allclose(self.offset.float(), other.offset.float().to(self.offset.device)))
            )
            and (self.state2 == other.state2 if self.state2 is not None else other.state2 is None)
        )

    __hash__ = None  # type: ignore[assignment]


# --------------------------------------------------------------------------------------------
# 8-bit block-wise


def quantize_blockwise(
    A: torch.Tensor,
    code: torch.Tensor | None = None,
    absmax: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
    blocksize: int = 4096,
    nested: bool = False,
) -> tuple[torch.Tensor, QuantState]:
    """Quantize ``A`` to 8-bit codes of ``code`` (default: signed dynamic map) with per-block absmax.

    With ``nested`` the absmax itself is quantized again (mean-centred, same blocksize).
    """
    _checks.check_positive_blocksize(blocksize)
    _checks.check_dtype(A, "A", _checks.FLOAT_DTYPES)
    code = _dynamic_code(A.device) if code is None else code.to(A.device)
    q, _absmax = torch.ops.bitsandbytes.quantize_blockwise(A, code, blocksize)
    if out is not None:
        out.copy_(q)
        q = out
    if nested:
        offset = _absmax.mean()
        qabsmax, state2 = quantize_blockwise(_absmax - offset, blocksize=blocksize, nested=False)
        state = QuantState(
            absmax=qabsmax, code=code.clone(), blocksize=blocksize, dtype=A.dtype, offset=offset, state2=state2
        )
    else:
        if absmax is not None:
            absmax.copy_(_absmax)
            _absmax = absmax
        state = QuantState(absmax=_absmax, code=code.clone(), blocksize=blocksize, dtype=A.dtype)
    return q, state


def _resolved_absmax(quant_state: QuantState) -> torch.Tensor:
    """The f32 per-block absmax of a state, undoing double quantization when nested."""
    if not quant_state.nested:
        return quant_state.absmax
    absmax = dequantize_blockwise(quant_state.absmax, quant_state.state2)
    return (absmax + quant_state.offset.to(absmax.device)).float()


def dequantize_blockwise(
    A: torch.Tensor,
    quant_state: QuantState | None = None,
    absmax: torch.Tensor | None = None,
    code: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
    blocksize: int = 4096,
    nested: bool = False,
) -> torch.Tensor:
    """Decode 8-bit block-wise codes; needs ``quant_state`` or ``absmax`` (then f32 output)."""
    if quant_state is None and absmax is None:
        raise ValueError("bitsandbytes: dequantize_blockwise needs quant_state or absmax")
    if quant_state is None:
        code = _dynamic_code(A.device) if code is None else code
        quant_state = QuantState(absmax=absmax, code=code, blocksize=blocksize, dtype=torch.float32)
    eff_absmax = _resolved_absmax(quant_state).to(torch.float32)
    code = quant_state.code.to(A.device)
    dtype = quant_state.dtype or torch.float32
    if out is not None:
        torch.ops.bitsandbytes.dequantize_blockwise.out(A, eff_absmax, code, quant_state.blocksize, dtype, out=out)
        return out
    return torch.ops.bitsandbytes.dequantize_blockwise.default(A, eff_absmax, code, quant_state.blocksize, dtype)


# --------------------------------------------------------------------------------------------
# 4-bit


def quantize_4bit(
    A: torch.Tensor,
    absmax: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
    blocksize: int | None = None,
    compress_statistics: bool = False,
    quant_type: str = "fp4",
    quant_storage: torch.dtype = torch.uint8,
) -> tuple[torch.Tensor, QuantState]:
    """Quantize ``A`` to packed 4-bit NF4/FP4 codes (two per byte) with per-block absmax.

    ``compress_statistics`` double-quantizes the absmax (8-bit, blocksize 256, mean-centred).
    """
    blocksize = 64 if blocksize is None else blocksize
    _checks.check_blocksize_4bit(blocksize)
    _checks.check_quant_type(quant_type)
    if not isinstance(A, torch.Tensor):
        raise TypeError(f"bitsandbytes: A must be a tensor, got {type(A).__name__}")
    _checks.check_dtype(A, "A", _checks.FLOAT_DTYPES)
    input_shape = A.shape
    packed, _absmax = torch.ops.bitsandbytes.quantize_4bit(A, blocksize, quant_type, quant_storage)
    code = get_4bit_type(quant_type, device=A.device)
    if compress_statistics:
        offset = _absmax.mean()
        qabsmax, state2 = quantize_blockwise(_absmax - offset, blocksize=256)
        state = QuantState(
            absmax=qabsmax,
            shape=input_shape,
            dtype=A.dtype,
            blocksize=blocksize,
            code=code,
            quant_type=quant_type,
            offset=offset,
            state2=state2,
        )
    else:
        if absmax is not None:
            absmax.copy_(_absmax)
            _absmax = absmax
        state = QuantState(
            absmax=_absmax, shape=input_shape, dtype=A.dtype, blocksize=blocksize, code=code, quant_type=quant_type
        )
    if out is not None:
        out.copy_(packed)
        packed = out
    return packed, state


def quantize_fp4(
    A: torch.Tensor,
    absmax: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
    blocksize: int | None = None,
    compress_statistics: bool = False,
    quant_storage: torch.dtype = torch.uint8,
) -> tuple[torch.Tensor, QuantState]:
    """``quantize_4bit(..., quant_type="fp4")``."""
    return quantize_4bit(A, absmax, out, blocksize, compress_statistics, "fp4", quant_storage)


def quantize_nf4(
    A: torch.Tensor,
    absmax: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
    blocksize: int | None = None,
    compress_statistics: bool = False,
    quant_storage: torch.dtype = torch.uint8,
) -> tuple[torch.Tensor, QuantState]:
    """``quantize_4bit(..., quant_type="nf4")``."""
    return quantize_4bit(A, absmax, out, blocksize, compress_statistics, "nf4", quant_storage)


def dequantize_4bit(
    A: torch.Tensor,
    quant_state: QuantState | None = None,
    absmax: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
    blocksize: int | None = None,
    quant_type: str = "fp4",
) -> torch.Tensor:
    """Decode packed 4-bit codes to ``quant_state.dtype`` with shape ``quant_state.shape``.

    Without a state, ``absmax`` and ``out`` (which gives shape and dtype) are required. A packed
    input of shape ``[1, n]`` (legacy transposed layout) gives a transposed result.
    """
    blocksize = 64 if blocksize is None else blocksize
    if quant_state is None:
        if absmax is None or out is None:
            raise ValueError("bitsandbytes: dequantize_4bit needs quant_state, or both absmax and out")
        quant_state = QuantState(
            absmax=absmax, shape=out.shape, dtype=out.dtype, blocksize=blocksize, quant_type=quant_type
        )
    if quant_state.shape is None or quant_state.dtype is None:
        raise ValueError("bitsandbytes: dequantize_4bit needs a quant_state with shape and dtype")
    _checks.check_blocksize_4bit(quant_state.blocksize)
    _checks.check_quant_type(quant_state.quant_type)
    shape = list(quant_state.shape)
    have, need = A.numel() * A.element_size(), (_checks.prod(shape) + 1) // 2
    if have != need:
        # more bytes than the shape needs means the state does not describe this data (a wrong or
        # tampered shape): decoding a prefix of it would be a silent wrong answer
        raise ValueError(
            f"bitsandbytes: dequantize_4bit: the packed data holds {have} bytes but quant_state.shape "
            f"{tuple(shape)} needs {need}"
        )
    eff_absmax = _resolved_absmax(quant_state).to(torch.float32)
    if out is not None:
        torch.ops.bitsandbytes.dequantize_4bit.out(
            A, eff_absmax, quant_state.blocksize, quant_state.quant_type, shape, quant_state.dtype, out=out
        )
        result = out
    else:
        result = torch.ops.bitsandbytes.dequantize_4bit.default(
            A, eff_absmax, quant_state.blocksize, quant_state.quant_type, shape, quant_state.dtype
        )
    if A.dim() == 2 and A.shape[0] == 1 and A.shape[1] > 1:  # (1, 1) is the usual (n, 1) layout
        return result.t()
    return result


def dequantize_fp4(
    A: torch.Tensor,
    quant_state: QuantState | None = None,
    absmax: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
    blocksize: int | None = None,
) -> torch.Tensor:
    """``dequantize_4bit(..., quant_type="fp4")``."""
    return dequantize_4bit(A, quant_state, absmax, out, blocksize, "fp4")


def dequantize_nf4(
    A: torch.Tensor,
    quant_state: QuantState | None = None,
    absmax: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
    blocksize: int | None = None,
) -> torch.Tensor:
    """``dequantize_4bit(..., quant_type="nf4")``."""
    return dequantize_4bit(A, quant_state, absmax, out, blocksize, "nf4")


def _as_packed_bytes(B: torch.Tensor) -> torch.Tensor:
    """Packed 4-bit data as an ``(n, 1)`` column in a storage dtype the ops accept."""
    B = B.reshape(-1, 1)
    if B.dtype == torch.int8:
        B = B.view(torch.uint8)
    return B


def gemv_4bit(
    A: torch.Tensor,
    B: torch.Tensor,
    out: torch.Tensor | None = None,
    transposed_A: bool = False,
    transposed_B: bool = False,
    state: QuantState | None = None,
) -> torch.Tensor:
    """``A @ dequant(B).T`` for a packed ``[N, K]`` weight described by ``state``; output in ``A.dtype``."""
    if state is None:
        raise ValueError("bitsandbytes: gemv_4bit needs the weight's quant state (state=...)")
    if state.shape is None or len(state.shape) != 2:
        raise ValueError(f"bitsandbytes: gemv_4bit needs a 2-D weight state, got shape {state.shape}")
    eff_absmax = _resolved_absmax(state).to(torch.float32)
    code = state.code.to(A.device)
    Bp = _as_packed_bytes(B)
    if out is not None:
        torch.ops.bitsandbytes.gemv_4bit.out(A, Bp, list(state.shape), eff_absmax, code, state.blocksize, out=out)
        return out
    return torch.ops.bitsandbytes.gemv_4bit.default(A, Bp, list(state.shape), eff_absmax, code, state.blocksize)


def _gemm_4bit(A: torch.Tensor, B: torch.Tensor, quant_state: QuantState, bias: torch.Tensor | None) -> torch.Tensor:
    """``A @ dequant(B).T + bias`` through the ``gemm_4bit`` op (nested absmax passed through when possible)."""
    Bp = _as_packed_bytes(B)
    shape = list(quant_state.shape)
    if bias is not None:
        bias = bias.to(A.dtype)
    if quant_state.nested and quant_state.state2.blocksize == 256:
        s2 = quant_state.state2
        return torch.ops.bitsandbytes.gemm_4bit(
            A,
            Bp,
            shape,
            s2.absmax.float(),
            quant_state.blocksize,
            quant_state.quant_type,
            bias,
            quant_state.absmax,
            s2.code.to(A.device),
            quant_state.offset.reshape(()).float(),
        )
    absmax = _resolved_absmax(quant_state).to(torch.float32)
    return torch.ops.bitsandbytes.gemm_4bit(A, Bp, shape, absmax, quant_state.blocksize, quant_state.quant_type, bias)


# --------------------------------------------------------------------------------------------
# LLM.int8()


def int8_linear_matmul(
    A: torch.Tensor, B: torch.Tensor, out: torch.Tensor | None = None, dtype: torch.dtype = torch.int32
) -> torch.Tensor:
    """Exact int32 ``A @ B.T`` of int8 matrices (``B`` is ``[N, K]``)."""
    if dtype != torch.int32:
        raise NotImplementedError(f"bitsandbytes: int8_linear_matmul only produces int32, got dtype={dtype}")
    if out is not None:
        torch.ops.bitsandbytes.int8_linear_matmul.out(A, B, out)
        return out
    return torch.ops.bitsandbytes.int8_linear_matmul.default(A, B)


def int8_mm_dequant(
    A: torch.Tensor,
    row_stats: torch.Tensor,
    col_stats: torch.Tensor,
    out: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """``A * row_stats[:, None] * col_stats[None, :] / 127**2 (+ bias)`` as float16."""
    result = torch.ops.bitsandbytes.int8_mm_dequant.default(A, row_stats, col_stats, dtype=torch.float16, bias=bias)
    if out is not None:
        return out.copy_(result)
    return result


def int8_vectorwise_quant(
    A: torch.Tensor, threshold: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Row-wise int8 quantization: ``(CA, row_stats, outlier_cols or None)``."""
    return torch.ops.bitsandbytes.int8_vectorwise_quant.default(A, threshold)


def int8_vectorwise_dequant(A: torch.Tensor, stats: torch.Tensor) -> torch.Tensor:
    """``A * stats[row] / 127`` as float32."""
    return torch.ops.bitsandbytes.int8_vectorwise_dequant.default(A, stats)


def int8_double_quant(
    A: torch.Tensor,
    col_stats: torch.Tensor | None = None,
    row_stats: torch.Tensor | None = None,
    out_col: torch.Tensor | None = None,
    out_row: torch.Tensor | None = None,
    threshold: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Row-wise and column-wise int8 quantization: ``(CA, CAt, row_stats, col_stats, outlier_cols)``."""
    for name, value in (("col_stats", col_stats), ("row_stats", row_stats), ("out_col", out_col), ("out_row", out_row)):
        if value is not None:
            raise ValueError(f"bitsandbytes: int8_double_quant does not accept a preallocated {name}")
    return torch.ops.bitsandbytes.int8_double_quant.default(A, threshold)


def _deprecated(name: str) -> None:
    warnings.warn(
        f"bitsandbytes.functional.{name} is deprecated; use int8_linear_matmul instead.", FutureWarning, stacklevel=3
    )


def check_matmul(
    A: torch.Tensor,
    B: torch.Tensor,
    out: torch.Tensor | None = None,
    transposed_A: bool = False,
    transposed_B: bool = False,
    expected_type: torch.dtype = torch.int8,
) -> torch.Size:
    """Deprecated: validate an int8 matmul's operands and return the output shape."""
    _deprecated("check_matmul")
    for name, t in (("A", A), ("B", B)):
        if t.dtype != expected_type:
            raise TypeError(f"bitsandbytes: {name} must have dtype {expected_type}, got {t.dtype}")
    a = A.transpose(-1, -2) if transposed_A else A
    b = B.transpose(-1, -2) if transposed_B else B
    if a.shape[-1] != b.shape[-2]:
        raise ValueError(f"bitsandbytes: cannot multiply shapes {tuple(a.shape)} and {tuple(b.shape)}")
    shape = torch.Size((*a.shape[:-1], b.shape[-1]))
    if out is not None and out.shape != shape:
        raise ValueError(f"bitsandbytes: out must have shape {tuple(shape)}, got {tuple(out.shape)}")
    return shape


def igemm(
    A: torch.Tensor,
    B: torch.Tensor,
    out: torch.Tensor | None = None,
    transposed_A: bool = False,
    transposed_B: bool = False,
) -> torch.Tensor:
    """Deprecated: int32 ``A @ B`` of int8 matrices (optionally transposed)."""
    _deprecated("igemm")
    a = A.transpose(-1, -2) if transposed_A else A
    b = B.transpose(-1, -2) if transposed_B else B
    result = torch.ops.bitsandbytes.int8_linear_matmul.default(a.contiguous(), b.transpose(-1, -2).contiguous())
    return out.copy_(result) if out is not None else result


def batched_igemm(
    A: torch.Tensor,
    B: torch.Tensor,
    out: torch.Tensor | None = None,
    transposed_A: bool = False,
    transposed_B: bool = False,
) -> torch.Tensor:
    """Deprecated: batched int32 ``A[i] @ B[i]`` of int8 matrices."""
    _deprecated("batched_igemm")
    a = A.transpose(-1, -2) if transposed_A else A
    b = B.transpose(-1, -2) if transposed_B else B
    result = torch.stack(
        [torch.ops.bitsandbytes.int8_linear_matmul.default(x.contiguous(), y.t().contiguous()) for x, y in zip(a, b)]
    )
    return out.copy_(result) if out is not None else result


class _NoNativeLibrary:
    """Stand-in for the established release's ``lib`` handle: kernels live behind ``torch.ops.bitsandbytes``."""

    def __getattr__(self, name: str) -> Any:
        def missing(*args: Any, **kwargs: Any) -> None:
            raise RuntimeError(
                f"bitsandbytes: there is no ctypes library handle in this build (lib.{name}()); "
                "kernels are reached through torch.ops.bitsandbytes"
            )

        return missing


lib = _NoNativeLibrary()
"""Compatibility handle; calling any attribute raises RuntimeError."""


try:  # The optimizer update wrappers are maintained in their own module.
    from ._functional_optim import optimizer_update_8bit_blockwise, optimizer_update_32bit  # noqa: F401
except ImportError:
    pass


__all__ = [
    "C",
    "CUBLAS_Context",
    "GlobalPageManager",
    "QuantState",
    "create_dynamic_map",
    "create_fp8_map",
    "create_linear_map",
    "create_normal_map",
    "dequantize_4bit",
    "dequantize_blockwise",
    "dequantize_fp4",
    "dequantize_nf4",
    "elementwise_func",
    "fill",
    "gemv_4bit",
    "get_4bit_type",
    "get_paged",
    "get_ptr",
    "batched_igemm",
    "check_matmul",
    "igemm",
    "lib",
    "has_avx512bf16",
    "int8_double_quant",
    "int8_linear_matmul",
    "int8_mm_dequant",
    "int8_vectorwise_dequant",
    "int8_vectorwise_quant",
    "is_on_gpu",
    "name2qmap",
    "pack_dict_to_tensor",
    "prefetch_tensor",
    "quantize_4bit",
    "quantize_blockwise",
    "quantize_fp4",
    "quantize_nf4",
    "unpack_tensor_to_dict",
]
