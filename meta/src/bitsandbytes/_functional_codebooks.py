"""Code books of the functional API: linear, NormalFloat, minifloat and dynamic 8-bit maps, the
4-bit tables, and the cache of named maps (``name2qmap``).

``bitsandbytes.functional`` re-exports everything here.
"""

from __future__ import annotations

import itertools

import torch

from .backends.reference import codebooks as _codebooks

name2qmap: dict[str, torch.Tensor] = {}
"""Cache of named code books (``"dynamic"`` = the signed dynamic map, on first use)."""


def create_linear_map(signed: bool = True, total_bits: int = 8, add_zero: bool = True) -> torch.Tensor:
    """An evenly spaced code of ``2**total_bits`` values (one fewer when signed with a zero), padded to 256.

    Codes of more than 8 bits are returned whole (no padding), as ``create_fp8_map`` returns them.
    """
    count = 2**total_bits
    if signed and (add_zero or total_bits < 8):
        count -= 1
    values = torch.linspace(-1.0 if signed else 0.0, 1.0, count)
    gap = 256 - values.numel()
    if gap <= 0:
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
        raise _codebooks.CodebookArgumentError(
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


def _build_dynamic_signed() -> torch.Tensor:
    # On the CPU and outside any mode the importer may be in (``with torch.device("meta")``,
    # ``torch.set_default_device``, a FakeTensorMode): the map's values are read back to floats.
    from torch.utils._python_dispatch import _disable_current_modes

    with _disable_current_modes(), torch.device("cpu"):
        return _codebooks.create_dynamic_map(signed=True)


_DYNAMIC_SIGNED = _build_dynamic_signed()
"""The signed dynamic map, built at import: building it reads tensors back to Python floats, which
torch.compile cannot trace (``name2qmap`` fills from this copy on first use, traced or not)."""


def _dynamic_code(device: torch.device) -> torch.Tensor:
    if "dynamic" not in name2qmap:
        name2qmap["dynamic"] = _DYNAMIC_SIGNED.clone()
    return name2qmap["dynamic"].to(device)
