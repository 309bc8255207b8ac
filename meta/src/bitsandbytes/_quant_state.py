"""``QuantState``: what dequantizing a block-wise quantized tensor needs, and its checkpoint form
(the established release's keys, the packed JSON item checked on load).

``bitsandbytes.functional`` re-exports everything here.
"""

from __future__ import annotations

import json
import math
from typing import Any

import torch

from ._functional_codebooks import _dynamic_code, get_4bit_type
from .utils import pack_dict_to_tensor, unpack_tensor_to_dict


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


def _offset_value(offset: torch.Tensor) -> float:
    """``nested_offset`` as a number; NaN for a state on ``meta`` (a layer moved there keeps its
    state-dict keys, and ``from_dict`` refuses the NaN should such an entry ever be loaded)."""
    return math.nan if offset.device.type == "meta" else offset.item()


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
    packing_format_for_cpu = False
    """Whether the codes are in the established release's AVX512-BF16 CPU re-layout: never here.
    The CPU wheel keeps the checkpoint layout and prepares its fast paths beside it (kept runners),
    so a state dict, a move to another device or a dequantize needs no conversion back."""

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
        # an unpacked dict may carry a dotted prefix too ("weight.quant_type")
        if not any(k.split(".")[-1] == "quant_type" for k in qs_dict):
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
        nested_items = ("nested_absmax", "nested_blocksize", "nested_quant_map", "nested_dtype", "nested_offset")
        if any(k in qs_dict for k in nested_items):
            for required in nested_items:
                if required not in qs_dict:
                    raise ValueError(f"bitsandbytes: nested quant state lacks the {required!r} item")
            nested_offset = qs_dict["nested_offset"]
            nested_absmax = _tensor_item(qs_dict, "nested_absmax", device)
            absmax_item = qs_dict["absmax"]
            empty = nested_absmax.numel() == 0 and isinstance(absmax_item, torch.Tensor) and absmax_item.numel() == 0
            if isinstance(nested_offset, float) and math.isnan(nested_offset) and empty:
                nested_offset = 0.0  # the established release's mean of no scales (an empty weight)
            if (
                isinstance(nested_offset, bool)
                or not isinstance(nested_offset, (int, float))
                or not math.isfinite(nested_offset)
            ):
                raise ValueError(
                    f"bitsandbytes: quant state item 'nested_offset' must be a finite number, got {nested_offset!r}"
                )
            offset = torch.tensor(float(nested_offset), device=device)
            state2 = cls(
                absmax=nested_absmax,
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
        absmax = _tensor_item(qs_dict, "absmax", device)
        want = torch.uint8 if state2 is not None else torch.float32
        if absmax.dtype != want:
            kind = "a nested" if state2 is not None else "a non-nested"
            raise ValueError(
                f"bitsandbytes: quant state item 'absmax' of {kind} state must be {want}, got {absmax.dtype}"
            )
        return cls(
            quant_type=quant_type,
            absmax=absmax,
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
                    "nested_offset": _offset_value(self.offset),
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
                self.offset is other.offset
                if self.offset is None or other.offset is None
                # exact, as the established release compares offsets (absmax and code get atol=1e-6)
                else bool((self.offset == other.offset.to(self.offset.device)).all())
            )
            and (self.state2 == other.state2 if self.state2 is not None else other.state2 is None)
        )

    __hash__ = None  # type: ignore[assignment]
