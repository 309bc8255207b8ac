"""Reference kernels on their own: the spec's worked examples and the int8 and gemv ops."""

from __future__ import annotations

import pytest
import torch

from bitsandbytes.backends.reference import KERNELS as REF
from bitsandbytes.backends.reference.codebooks import dynamic_map, four_bit_decode_table
from conftest import impl_params


def test_nf4_first_byte_is_f0():
    x = torch.tensor([1.0, -1.0] + [0.0] * 62)
    packed, _ = torch.ops.bitsandbytes.quantize_4bit(x, 64, "nf4", torch.uint8)
    assert packed[0, 0].item() == 0xF0


def test_odd_length_pads_with_the_zero_code():
    x = torch.tensor([1.0, 0.5, -1.0])
    for quant_type, zero_code in (("nf4", 7), ("fp4", 0)):
        packed, _ = torch.ops.bitsandbytes.quantize_4bit(x, 64, quant_type, torch.uint8)
        assert packed[1, 0].item() & 0x0F == zero_code


def test_fp4_values_rounding_to_zero():
    # (-t, 0] takes code 0, (0, t] takes code 8, t = half the smallest FP4 magnitude; a value
    # exactly on a midpoint takes the lower code (-t -> code 9, the -0.0052 entry).
    t = float(torch.tensor(0.0625 / 12, dtype=torch.float32) / 2)
    x = torch.tensor([1.0, 0.0, -0.0, -0.001, 0.001, t, -t, 0.5])
    packed, _ = torch.ops.bitsandbytes.quantize_4bit(x, 64, "fp4", torch.uint8)
    codes = torch.stack([packed.view(-1) >> 4, packed.view(-1) & 15], 1).view(-1).tolist()
    assert codes == [3, 0, 0, 0, 8, 8, 9, 5]


def test_dequantize_formula_is_table_times_absmax():
    g = torch.Generator().manual_seed(1)
    packed = torch.randint(0, 256, (512, 1), dtype=torch.uint8, generator=g)
    absmax = torch.rand(16, generator=g)
    for quant_type in ("nf4", "fp4"):
        out = torch.ops.bitsandbytes.dequantize_4bit(packed, absmax, 64, quant_type, [1024], torch.float32)
        codes = torch.stack([packed.view(-1) >> 4, packed.view(-1) & 15], 1).view(-1).long()
        expected = four_bit_decode_table(quant_type)[codes] * absmax.repeat_interleave(64)
        assert torch.equal(out, expected)


def test_int8_vectorwise_quant_rounds_half_to_even():
    A = torch.tensor([[127, 0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 3.5]], dtype=torch.float16)
    CA, stats, cols = torch.ops.bitsandbytes.int8_vectorwise_quant(A)
    assert CA.tolist() == [[127, 0, 2, 2, 0, -2, -2, 4]]
    assert stats.tolist() == [127.0] and cols is None


def test_int8_outliers_zero_whole_columns():
    A = torch.randn(4, 16)
    A[2, 5] = 9.0
    CA, stats, cols = torch.ops.bitsandbytes.int8_vectorwise_quant(A, 6.0)
    assert cols.tolist() == [5]
    assert (CA[:, 5] == 0).all() and stats[2] < 9.0


@pytest.mark.parametrize("device,impl,fn", impl_params("int8_linear_matmul"))
def test_int8_linear_matmul_is_exact(device, impl, fn):
    g = torch.Generator().manual_seed(0)
    A = torch.randint(-128, 128, (5, 3000), dtype=torch.int8, generator=g)
    B = torch.randint(-128, 128, (7, 3000), dtype=torch.int8, generator=g)
    A[0] = -128
    B[0] = -128  # 3000 * 16384 does not fit f32's exact range
    C = fn(A.to(device), B.to(device))
    assert C.dtype == torch.int32
    assert torch.equal(C.cpu().long(), A.long() @ B.long().t())


def test_int8_scaled_and_mixed_mm_match_float():
    g = torch.Generator().manual_seed(0)
    A = torch.randn(6, 64, generator=g, dtype=torch.float32)
    W = torch.randn(32, 64, generator=g)
    A[:, 3] *= 20  # an outlier feature
    CA, SCA, cols = torch.ops.bitsandbytes.int8_vectorwise_quant(A, 6.0)
    CB, SCB, _ = torch.ops.bitsandbytes.int8_vectorwise_quant(W)
    out, sub_a = torch.ops.bitsandbytes.int8_mixed_scaled_mm(A, CA, CB, SCA, SCB, cols, None)
    assert sub_a.shape == (6, len(cols))
    ref = A @ W.t()
    assert (out - ref).abs().max() / ref.abs().max() < 0.03
    scaled = torch.ops.bitsandbytes.int8_scaled_mm(CA, CB, SCA, SCB, dtype=torch.float32)
    assert scaled.dtype == torch.float32 and scaled.shape == (6, 32)


def test_int8_double_quant_columns():
    A = torch.randn(8, 32)
    A[1, 4] = 10.0
    CA, CAt, row_stats, col_stats, cols = torch.ops.bitsandbytes.int8_double_quant(A, 6.0)
    assert cols.tolist() == [4]
    assert (CA[:, 4] == 0).all() and (CAt[:, 4] == 0).all()
    assert torch.equal(col_stats, A.abs().masked_fill(A.abs() >= 6, 0).amax(0))
    recon = CAt.float() * col_stats / 127
    mask = torch.ones(32, dtype=torch.bool)
    mask[4] = False
    assert (recon[:, mask] - A[:, mask]).abs().max() <= col_stats.max() / 127


@pytest.mark.parametrize("device,impl,fn", impl_params("gemv_4bit"))
@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
def test_gemv_4bit_matches_dequantized_linear(device, impl, fn, quant_type):
    g = torch.Generator().manual_seed(3)
    W = torch.randn(48, 128, generator=g)
    packed, absmax = REF["quantize_4bit"](W, 64, quant_type, torch.uint8)
    Wd = REF["dequantize_4bit"](packed, absmax, 64, quant_type, [48, 128], torch.float32)
    code = four_bit_decode_table(quant_type)
    A = torch.randn(1, 1, 128, generator=g)
    out = fn(A.to(device), packed.to(device), [48, 128], absmax.to(device), code.to(device), 64)
    assert out.shape == (1, 1, 48)
    torch.testing.assert_close(out.cpu(), A @ Wd.t(), rtol=1e-5, atol=1e-5)


def test_gemm_4bit_nested_absmax_and_bias():
    g = torch.Generator().manual_seed(4)
    W = torch.randn(64, 256, generator=g)
    packed, absmax = REF["quantize_4bit"](W, 64, "nf4", torch.uint8)
    offset = absmax.mean()
    q, inner = REF["quantize_blockwise"](absmax - offset, dynamic_map(), 256)
    bias = torch.randn(64, generator=g)
    A = torch.randn(3, 256, generator=g)
    out = torch.ops.bitsandbytes.gemm_4bit(A, packed, [64, 256], inner, 64, "nf4", bias, q, dynamic_map(), offset)
    eff = REF["dequantize_blockwise"](q, inner, dynamic_map(), 256, torch.float32) + offset
    Wd = REF["dequantize_4bit"](packed, eff, 64, "nf4", [64, 256], torch.float32)
    torch.testing.assert_close(out, A @ Wd.t() + bias, rtol=1e-5, atol=1e-5)
