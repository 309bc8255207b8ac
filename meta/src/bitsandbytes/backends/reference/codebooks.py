"""Code books shared by every backend: NF4, FP4 and the dynamic 8-bit maps.

The 4-bit tables are hard-coded (scipy is not needed at run time). The C++ twins of these
tables live in ``shared/include/bnb/codebooks.h``; a test checks that both agree bit for bit.
"""

from __future__ import annotations

import functools

import torch


class CodebookArgumentError(ValueError, AssertionError):
    """Arguments a code-book constructor cannot build a code from. The established release
    asserted these (spec §2.4/§2.5: ``AssertionError``); a ``ValueError`` names the problem."""


NF4_VALUES = (
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
    -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
    0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
    0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
)  # fmt: skip

# FP4 (sign, 2 exponent bits, 1 mantissa bit) in index order, normalised by 12. Code 8 (sign bit
# alone) decodes to +0.0, as in the established release's tables and checkpoints.
FP4_VALUES = (
    0.0, 0.0625 / 12, 8 / 12, 12 / 12, 4 / 12, 6 / 12, 2 / 12, 3 / 12,
    0.0, -0.0625 / 12, -8 / 12, -12 / 12, -4 / 12, -6 / 12, -2 / 12, -3 / 12,
)  # fmt: skip


# What the dequantization kernels decode: as FP4_VALUES, but code 8 keeps its sign bit and
# decodes to -0.0 (bit-identical to the established release's dequantized tensors).
FP4_DECODE_VALUES = FP4_VALUES[:8] + (-0.0,) + FP4_VALUES[9:]


def four_bit_table(quant_type: str, device: torch.device | str | None = None) -> torch.Tensor:
    """The published 16-entry f32 table of ``quant_type`` ('nf4' or 'fp4'), in code order.

    This is what ``QuantState.code`` and the ``quant_map`` checkpoint key hold.
    """
    values = {"nf4": NF4_VALUES, "fp4": FP4_VALUES}[quant_type]
    return torch.tensor(values, dtype=torch.float32, device=device)


def four_bit_decode_table(quant_type: str, device: torch.device | str | None = None) -> torch.Tensor:
    """The 16-entry table the dequantization kernels use (FP4 code 8 decodes to -0.0)."""
    values = {"nf4": NF4_VALUES, "fp4": FP4_DECODE_VALUES}[quant_type]
    return torch.tensor(values, dtype=torch.float32, device=device)


@functools.cache
def _sorted_lookup_cpu(quant_type: str) -> tuple[torch.Tensor, torch.Tensor]:
    table = four_bit_table(quant_type)
    # A stable sort keeps code 0 before code 8 (both zero) for FP4: values in (-t, 0] take code 0
    # and values in (0, t] take code 8, as the established release does.
    values, order = torch.sort(table, stable=True)
    return midpoints(values), order.to(torch.uint8)


def four_bit_lookup(quant_type: str, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(midpoints of the sorted table, code of each sorted entry) for nearest-code search."""
    mids, codes = _sorted_lookup_cpu(quant_type)
    return mids.to(device), codes.to(device)


def midpoints(sorted_values: torch.Tensor) -> torch.Tensor:
    """f32 midpoints between consecutive entries of an ascending table."""
    v = sorted_values.float()
    return (v[:-1] + v[1:]) / 2


def nearest_code(x: torch.Tensor, mids: torch.Tensor) -> torch.Tensor:
    """Index into the sorted table of the entry nearest to each value of ``x``.

    A value exactly on a midpoint takes the lower entry; NaN takes the last entry.
    """
    return torch.searchsorted(mids, x.contiguous(), right=False)


def create_dynamic_map(signed: bool = True, max_exponent_bits: int = 7, total_bits: int = 8) -> torch.Tensor:
    """The dynamic (exponent + linear fraction) 8-bit map, sorted ascending, 256 f32 values."""
    data: list[float] = []
    non_sign_bits = total_bits - 1
    additional_items = 2 ** (non_sign_bits - max_exponent_bits) - 1
    for i in range(max_exponent_bits):
        # With more exponent bits than non-sign bits the power is a fraction: its integer part
        # counts (one boundary, no value, for the smallest exponents).
        fraction_items = int(2 ** (i + non_sign_bits - max_exponent_bits + (0 if signed else 1))) + 1
        boundaries = torch.linspace(0.1, 1, fraction_items, dtype=torch.float32)
        means = (boundaries[:-1] + boundaries[1:]) / 2.0
        scaled = (10 ** (-(max_exponent_bits - 1) + i)) * means
        data += scaled.tolist()
        if signed:
            data += (-scaled).tolist()
    if additional_items > 0:
        boundaries = torch.linspace(0.1, 1, additional_items + 1, dtype=torch.float32)
        means = (boundaries[:-1] + boundaries[1:]) / 2.0
        scaled = (10 ** (-(max_exponent_bits - 1) + max_exponent_bits - 1)) * means
        data += scaled.tolist()
        if signed:
            data += (-scaled).tolist()
    data.append(0.0)
    data.append(1.0)
    if len(data) != 2**total_bits:
        raise CodebookArgumentError(f"dynamic map has {len(data)} entries, expected {2**total_bits}")
    data += [0.0] * (256 - len(data))
    return torch.sort(torch.tensor(data, dtype=torch.float32)).values


@functools.cache
def _dynamic_cpu(signed: bool) -> torch.Tensor:
    return create_dynamic_map(signed=signed)


def dynamic_map(signed: bool = True, device: torch.device | str | None = None) -> torch.Tensor:
    """The default dynamic map (cached), as a fresh tensor on ``device``."""
    return _dynamic_cpu(signed).to(device if device is not None else "cpu", copy=True)
