"""Every kernel present (reference on each device, each platform kernel) against the reference.

Inputs are random and adversarial: exact zeros, all-zero blocks, values on the exact midpoints
between codes, sizes that are not a multiple of the block size, non-contiguous views, and
inf/NaN where the result is defined.
"""

from __future__ import annotations

import pytest
import torch

from bitsandbytes.backends.reference import KERNELS as REF
from bitsandbytes.backends.reference.codebooks import (
    dynamic_map,
    four_bit_table,
    midpoints,
)
from conftest import impl_params

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
BLOCKS_4BIT = [32, 64, 128, 256, 512, 1024, 2048, 4096]


def bits(t: torch.Tensor) -> torch.Tensor:
    """Bit pattern of a float tensor, so that comparisons distinguish -0.0 and NaN payloads."""
    return t.view({1: torch.uint8, 2: torch.int16, 4: torch.int32}[t.element_size()])


def adversarial(n: int, dtype: torch.dtype, quant_type: str | None, blocksize: int, seed: int = 0) -> torch.Tensor:
    """Random values with outliers, exact zeros, one all-zero block and exact code midpoints."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, generator=g) * 2
    x[:: max(n // 37, 1)] *= 40  # outliers
    x[3::17] = 0.0
    if n >= 2 * blocksize:
        x[blocksize : 2 * blocksize] = 0.0
    if n >= 3 * blocksize and quant_type is not None:
        # Block 2: absmax 1 and every other value on a midpoint between adjacent codes.
        table = four_bit_table(quant_type).sort().values
        mids = midpoints(table)
        blk = x[2 * blocksize : 3 * blocksize]
        blk.copy_(mids.repeat(blocksize // len(mids) + 1)[:blocksize])
        blk[0] = 1.0
    return x.to(dtype)


@pytest.mark.parametrize("device,impl,fn", impl_params("quantize_4bit"))
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
@pytest.mark.parametrize("blocksize", BLOCKS_4BIT)
def test_quantize_4bit(device, impl, fn, dtype, quant_type, blocksize):
    for n in (3 * blocksize + 7, 4 * blocksize):  # odd and partial-block sizes, and whole blocks
        x = adversarial(n, dtype, quant_type, blocksize).to(device)
        packed, absmax = fn(x, blocksize, quant_type, torch.uint8)
        ref_packed, ref_absmax = REF["quantize_4bit"](x.cpu(), blocksize, quant_type, torch.uint8)
        assert packed.shape == ((n + 1) // 2, 1) and packed.dtype == torch.uint8
        assert torch.equal(packed.cpu(), ref_packed)
        assert torch.equal(absmax.cpu(), ref_absmax)


@pytest.mark.parametrize("device,impl,fn", impl_params("quantize_4bit"))
@pytest.mark.parametrize("storage", [torch.bfloat16, torch.float16, torch.float32, torch.int8])
def test_quantize_4bit_storage_is_a_bit_view(device, impl, fn, storage):
    x = adversarial(4096, torch.float16, "nf4", 64).to(device)
    packed, _ = fn(x, 64, "nf4", storage)
    ref, _ = REF["quantize_4bit"](x.cpu(), 64, "nf4", torch.uint8)
    assert packed.dtype == storage and packed.shape == (2048 // storage.itemsize, 1)
    assert torch.equal(packed.cpu().view(torch.uint8).reshape(-1, 1), ref)


@pytest.mark.parametrize("device,impl,fn", impl_params("quantize_4bit"))
def test_quantize_4bit_non_contiguous(device, impl, fn):
    base = adversarial(128 * 64, torch.float32, "nf4", 64).view(128, 64).to(device)
    x = base.t()  # a transposed view
    assert not x.is_contiguous()
    packed, absmax = fn(x, 64, "nf4", torch.uint8)
    ref_packed, ref_absmax = REF["quantize_4bit"](x.cpu().contiguous(), 64, "nf4", torch.uint8)
    assert torch.equal(packed.cpu(), ref_packed) and torch.equal(absmax.cpu(), ref_absmax)


@pytest.mark.parametrize("device,impl,fn", impl_params("dequantize_4bit"))
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
@pytest.mark.parametrize("blocksize", BLOCKS_4BIT)
def test_dequantize_4bit(device, impl, fn, dtype, quant_type, blocksize):
    g = torch.Generator().manual_seed(blocksize)
    n = 3 * blocksize + 5
    packed = torch.randint(0, 256, ((n + 1) // 2, 1), dtype=torch.uint8, generator=g)
    absmax = torch.rand(-(n // -blocksize), generator=g) * 10
    absmax[0] = 0.0
    if len(absmax) > 3:
        absmax[1], absmax[2] = float("inf"), 1e-30  # inf, and a tiny scale that underflows f16
    out = fn(packed.to(device), absmax.to(device), blocksize, quant_type, [n], dtype)
    ref = REF["dequantize_4bit"](packed, absmax, blocksize, quant_type, [n], dtype)
    assert out.dtype == dtype and out.shape == (n,)
    assert torch.equal(bits(out.cpu()), bits(ref))


@pytest.mark.parametrize("device,impl,fn", impl_params("dequantize_4bit.out"))
def test_dequantize_4bit_out(device, impl, fn):
    x = adversarial(1024, torch.bfloat16, "fp4", 64)
    packed, absmax = REF["quantize_4bit"](x, 64, "fp4", torch.uint8)
    out = torch.empty(32, 32, dtype=torch.bfloat16, device=device)
    fn(packed.to(device), absmax.to(device), 64, "fp4", [32, 32], torch.bfloat16, out)
    ref = REF["dequantize_4bit"](packed, absmax, 64, "fp4", [32, 32], torch.bfloat16)
    assert torch.equal(bits(out.cpu()), bits(ref))
    strided = torch.empty(32, 64, dtype=torch.bfloat16, device=device)[:, ::2]
    fn(packed.to(device), absmax.to(device), 64, "fp4", [32, 32], torch.bfloat16, strided)
    assert torch.equal(bits(strided.cpu().contiguous()), bits(ref))


@pytest.mark.parametrize("device,impl,fn", impl_params("quantize_blockwise"))
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("blocksize", [64, 128, 256, 512, 1024, 2048, 4096, 100])
def test_quantize_blockwise(device, impl, fn, dtype, blocksize):
    code = dynamic_map()
    x = adversarial(3 * blocksize + 11, dtype, None, blocksize)
    # Exact midpoints of the dynamic map in one block with absmax 1.
    x[: min(255, blocksize)] = midpoints(code)[: min(255, blocksize)].to(dtype)
    x[0] = 1.0
    q, absmax = fn(x.to(device), code.to(device), blocksize)
    ref_q, ref_absmax = REF["quantize_blockwise"](x, code, blocksize)
    assert q.dtype == torch.uint8 and q.shape == x.shape
    assert torch.equal(q.cpu(), ref_q)
    assert torch.equal(absmax.cpu(), ref_absmax)


@pytest.mark.parametrize("device,impl,fn", impl_params("quantize_blockwise"))
def test_quantize_blockwise_nan_and_other_codes(device, impl, fn):
    x = adversarial(2048, torch.float32, None, 256)
    x[700] = float("nan")
    for code in (dynamic_map(signed=False), torch.linspace(-1, 1, 256)):
        q, absmax = fn(x.to(device), code.to(device), 256)
        ref_q, ref_absmax = REF["quantize_blockwise"](x, code, 256)
        assert torch.equal(q.cpu(), ref_q)
        assert torch.equal(absmax.cpu(), ref_absmax) or torch.equal(absmax.isnan().cpu(), ref_absmax.isnan())


@pytest.mark.parametrize("device,impl,fn", impl_params("quantize_blockwise"))
def test_quantize_blockwise_strided_code_book(device, impl, fn):
    """A code book that is a strided view (every other element of a longer tensor) is read by its
    values, not by its memory: the codes and scales equal those of its contiguous copy."""
    code = dynamic_map()
    base = torch.full((512,), 7.0)  # the odd positions lie outside the code book's range
    base[::2] = code
    strided = base.to(device)[::2]
    assert not strided.is_contiguous()
    x = adversarial(3 * 256 + 5, torch.float32, None, 256, seed=4)
    q, absmax = fn(x.to(device), strided, 256)
    ref_q, ref_absmax = REF["quantize_blockwise"](x, code, 256)
    assert torch.equal(q.cpu(), ref_q) and torch.equal(absmax.cpu(), ref_absmax)


@pytest.mark.parametrize("device,impl,fn", impl_params("dequantize_blockwise"))
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("blocksize", [64, 256, 4096, 100])
def test_dequantize_blockwise(device, impl, fn, dtype, blocksize):
    g = torch.Generator().manual_seed(blocksize)
    q = torch.randint(0, 256, (5, 2 * blocksize + 3), dtype=torch.uint8, generator=g)
    absmax = torch.rand(-(q.numel() // -blocksize), generator=g) * 100
    absmax[-1] = float("nan")
    code = dynamic_map()
    out = fn(q.to(device), absmax.to(device), code.to(device), blocksize, dtype)
    ref = REF["dequantize_blockwise"](q, absmax, code, blocksize, dtype)
    assert out.shape == q.shape and out.dtype == dtype
    assert torch.equal(bits(out.cpu()), bits(ref))


@pytest.mark.parametrize("device,impl,fn", impl_params("dequantize_blockwise.out"))
def test_dequantize_blockwise_out(device, impl, fn):
    q = torch.randint(0, 256, (64, 64), dtype=torch.uint8)
    absmax = torch.rand(16)
    code = dynamic_map()
    out = torch.empty(64, 64, dtype=torch.float16, device=device)
    fn(q.to(device), absmax.to(device), code.to(device), 256, torch.float16, out)
    assert torch.equal(out.cpu(), REF["dequantize_blockwise"](q, absmax, code, 256, torch.float16))


# absmax 1 + k/256 for odd k: times the code 1.0 it lies halfway between two bf16 neighbours.
TIE_ABSMAX = torch.tensor([1 + 1 / 256, 1 + 3 / 256, 1 + 5 / 256, 1 + 7 / 256])
TIE_BF16 = torch.tensor([1.0, 1 + 4 / 256, 1 + 4 / 256, 1 + 8 / 256])  # ties to the even neighbour


@pytest.mark.parametrize("device,impl,fn", impl_params("dequantize_blockwise"))
def test_dequantize_blockwise_bf16_rounds_ties_to_even(device, impl, fn):
    q = torch.full((4, 64), 255, dtype=torch.uint8)  # dynamic_map()[255] == 1.0
    out = fn(q.to(device), TIE_ABSMAX.to(device), dynamic_map().to(device), 64, torch.bfloat16)
    assert torch.equal(bits(out.cpu()), bits(TIE_BF16.to(torch.bfloat16)[:, None].expand(4, 64)))
    ref = REF["dequantize_blockwise"](q, TIE_ABSMAX, dynamic_map(), 64, torch.bfloat16)
    assert torch.equal(bits(out.cpu()), bits(ref))


@pytest.mark.parametrize("device,impl,fn", impl_params("dequantize_4bit"))
def test_dequantize_4bit_bf16_rounds_ties_to_even(device, impl, fn):
    packed = torch.full((128, 1), 0xFF, dtype=torch.uint8)  # NF4 code 15 is 1.0
    out = fn(packed.to(device), TIE_ABSMAX.to(device), 64, "nf4", [4, 64], torch.bfloat16)
    assert torch.equal(bits(out.cpu()), bits(TIE_BF16.to(torch.bfloat16)[:, None].expand(4, 64)))
    ref = REF["dequantize_4bit"](packed, TIE_ABSMAX, 64, "nf4", [4, 64], torch.bfloat16)
    assert torch.equal(bits(out.cpu()), bits(ref))


def subnormal_blocks(n: int, blocksize: int, quant_type: str | None) -> torch.Tensor:
    """Two blocks of subnormals only (absmax below the 1e-38 floor of the scale), then normal ones."""
    x = adversarial(n, torch.float32, quant_type, blocksize, seed=3)
    x[: 2 * blocksize] *= 2.0**-135
    assert 0 < x[: 2 * blocksize].abs().max() < torch.finfo(torch.float32).tiny
    return x


@pytest.mark.parametrize("device,impl,fn", impl_params("quantize_blockwise"))
def test_quantize_blockwise_subnormal_blocks(device, impl, fn):
    """The scale of a block of subnormals is 1 / 1e-38 (spec: 1 / max(absmax, 1e-38)), not the
    inverse of its absmax, which overflows to inf."""
    x = subnormal_blocks(1000, 256, None)
    q, absmax = fn(x.to(device), dynamic_map().to(device), 256)
    ref_q, ref_absmax = REF["quantize_blockwise"](x, dynamic_map(), 256)
    assert torch.equal(q.cpu(), ref_q) and torch.equal(absmax.cpu(), ref_absmax)
    assert not ((ref_q[:512] == 0) | (ref_q[:512] == 255)).any()  # no value scaled to +-1


@pytest.mark.parametrize("device,impl,fn", impl_params("quantize_4bit"))
@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
def test_quantize_4bit_subnormal_blocks(device, impl, fn, quant_type):
    x = subnormal_blocks(4 * 64 + 7, 64, quant_type)
    packed, absmax = fn(x.to(device), 64, quant_type, torch.uint8)
    ref_packed, ref_absmax = REF["quantize_4bit"](x, 64, quant_type, torch.uint8)
    assert torch.equal(packed.cpu(), ref_packed) and torch.equal(absmax.cpu(), ref_absmax)


def test_dispatch_uses_registered_kernels():
    """torch.ops.bitsandbytes.* reaches the same results whichever kernel serves the device."""
    x = adversarial(4096, torch.bfloat16, "nf4", 64)
    packed, absmax = torch.ops.bitsandbytes.quantize_4bit(x, 64, "nf4", torch.uint8)
    ref_packed, ref_absmax = REF["quantize_4bit"](x, 64, "nf4", torch.uint8)
    assert torch.equal(packed, ref_packed) and torch.equal(absmax, ref_absmax)
    y = torch.ops.bitsandbytes.dequantize_4bit(packed, absmax, 64, "nf4", [64, 64], torch.bfloat16)
    assert torch.equal(y, REF["dequantize_4bit"](packed, absmax, 64, "nf4", [64, 64], torch.bfloat16))


@pytest.mark.parametrize("device,impl,fn", impl_params("quantize_4bit"))
@pytest.mark.parametrize("shape", [(0,), (0, 64), (3, 0, 5)])
@pytest.mark.parametrize("storage", [torch.uint8, torch.bfloat16])
def test_quantize_4bit_empty(device, impl, fn, shape, storage):
    packed, absmax = fn(torch.empty(shape, device=device), 64, "nf4", storage)
    assert packed.shape == (0, 1) and packed.dtype == storage and packed.device.type == device
    assert absmax.shape == (0,) and absmax.dtype == torch.float32


@pytest.mark.parametrize("device,impl,fn", impl_params("dequantize_4bit"))
def test_dequantize_4bit_empty(device, impl, fn):
    out = fn(
        torch.empty(0, 1, dtype=torch.uint8, device=device),
        torch.empty(0, device=device),
        64,
        "nf4",
        [0, 64],
        torch.bfloat16,
    )
    assert out.shape == (0, 64) and out.dtype == torch.bfloat16


@pytest.mark.parametrize("device,impl,fn", impl_params("quantize_blockwise"))
@pytest.mark.parametrize("shape", [(0,), (0, 64), (3, 0, 5)])
def test_quantize_blockwise_empty(device, impl, fn, shape):
    q, absmax = fn(torch.empty(shape, device=device, dtype=torch.float16), dynamic_map(device=device), 256)
    assert q.shape == shape and q.dtype == torch.uint8
    assert absmax.shape == (0,) and absmax.dtype == torch.float32


@pytest.mark.parametrize("device,impl,fn", impl_params("dequantize_blockwise"))
def test_dequantize_blockwise_empty(device, impl, fn):
    q = torch.empty(2, 0, dtype=torch.uint8, device=device)
    out = fn(q, torch.empty(0, device=device), dynamic_map(device=device), 256, torch.float16)
    assert out.shape == (2, 0) and out.dtype == torch.float16
