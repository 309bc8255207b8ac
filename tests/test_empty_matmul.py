"""Matmuls whose sum is empty (in_features 0), that have no rows or no output columns: every
implementation present returns what torch.nn.functional.linear does (zeros plus the bias), and the
modules' gradients follow, instead of uninitialised memory or a reshape error."""

from __future__ import annotations

import pytest
import torch

import bitsandbytes as bnb
from bitsandbytes.backends.reference import KERNELS as REF
from bitsandbytes.backends.reference.codebooks import dynamic_map, four_bit_decode_table
from conftest import impl_params, implementations

BIAS = torch.tensor([1.0, -2.0, 3.0])


def _packed_4bit(n: int, k: int, device: str):
    packed, absmax = REF["quantize_4bit"](torch.randn(n, k), 64, "nf4", torch.uint8)
    return packed.to(device), absmax.to(device)


def _expect(got: torch.Tensor, shape: tuple[int, ...], bias: torch.Tensor | None = None) -> None:
    want = torch.zeros(shape)
    if bias is not None:
        want += bias
    assert tuple(got.shape) == shape
    assert torch.equal(got.cpu().float(), want)


@pytest.mark.parametrize("device,impl,fn", impl_params("gemm_4bit"))
@pytest.mark.parametrize("a_shape,n,k", [((4, 0), 3, 0), ((2, 5, 0), 3, 0), ((0, 70), 3, 70), ((2, 70), 0, 70)])
def test_gemm_4bit_empty(device, impl, fn, a_shape, n, k):
    B, absmax = _packed_4bit(n, k, device)
    A = torch.randn(a_shape, device=device)
    bias = BIAS[:n].to(device)
    _expect(fn(A, B, [n, k], absmax, 64, "nf4", bias), (*a_shape[:-1], n), BIAS[:n])
    _expect(fn(A, B, [n, k], absmax, 64, "nf4"), (*a_shape[:-1], n))


@pytest.mark.parametrize("device,impl,fn", impl_params("gemv_4bit"))
def test_gemv_4bit_empty_sum(device, impl, fn):
    B, absmax = _packed_4bit(3, 0, device)
    code = four_bit_decode_table("nf4").to(device)
    _expect(fn(torch.randn(1, 0, device=device), B, [3, 0], absmax, code, 64), (1, 3))


@pytest.mark.parametrize("device,impl,fn", impl_params("gemv_4bit.out"))
@pytest.mark.parametrize("rows", [1, 2])
def test_gemv_4bit_out_empty_sum(device, impl, fn, rows):
    B, absmax = _packed_4bit(3, 0, device)
    code = four_bit_decode_table("nf4").to(device)
    out = torch.full((3, rows), 7.0, device=device).t()  # two rows: a non-contiguous out
    fn(torch.randn(rows, 0, device=device), B, [3, 0], absmax, code, 64, out=out)
    _expect(out, (rows, 3))


@pytest.mark.parametrize("grad", [False, True])
def test_matmul_4bit_empty_sum_into_out(grad):
    weight = bnb.nn.Linear4bit(0, 3, bias=False).to("cpu").weight
    out = torch.full((2, 3), 7.0)
    bnb.matmul_4bit(torch.randn(2, 0, requires_grad=grad), weight.t(), weight.quant_state, out=out, bias=BIAS)
    _expect(out, (2, 3), BIAS)


@pytest.mark.parametrize("device,impl,fn", impl_params("gemm_4bit_t"))
@pytest.mark.parametrize("a_shape,n,k", [((2, 0), 0, 70), ((0, 3), 3, 70), ((2, 3), 3, 0)])
def test_gemm_4bit_t_empty(device, impl, fn, a_shape, n, k):
    B, absmax = _packed_4bit(n, k, device)
    _expect(fn(torch.randn(a_shape, device=device), B, [n, k], absmax, 64, "nf4"), (*a_shape[:-1], k))


@pytest.mark.parametrize("device,impl,fn", impl_params("int8_weight_mm"))
@pytest.mark.parametrize("a_shape,n,k", [((2, 0), 3, 0), ((0, 5), 3, 5), ((2, 5), 0, 5)])
def test_int8_weight_mm_empty(device, impl, fn, a_shape, n, k):
    CB = torch.ones(n, k, dtype=torch.int8, device=device)
    SCB = torch.ones(n, device=device)
    A = torch.randn(a_shape, device=device)
    _expect(fn(A, CB, SCB, BIAS[:n].to(device)), (*a_shape[:-1], n), BIAS[:n])
    _expect(fn(A, CB, SCB, None), (*a_shape[:-1], n))


@pytest.mark.parametrize("device,impl,fn", impl_params("int8_weight_mm_t"))
@pytest.mark.parametrize("a_shape,n,k", [((2, 0), 0, 5), ((0, 3), 3, 5), ((2, 3), 3, 0)])
def test_int8_weight_mm_t_empty(device, impl, fn, a_shape, n, k):
    CB = torch.ones(n, k, dtype=torch.int8, device=device)
    _expect(fn(torch.randn(a_shape, device=device), CB, torch.ones(n, device=device)), (*a_shape[:-1], k))


@pytest.mark.parametrize("device,impl,fn", impl_params("int8_linear_matmul"))
def test_int8_linear_matmul_empty_sum(device, impl, fn):
    A = torch.empty(2, 0, dtype=torch.int8, device=device)
    B = torch.empty(3, 0, dtype=torch.int8, device=device)
    got = fn(A, B)
    assert got.dtype == torch.int32 and tuple(got.shape) == (2, 3) and not got.any()


@pytest.mark.parametrize("device,impl,fn", impl_params("int8_linear_matmul"))
def test_int8_linear_matmul_one_empty_row(device, impl, fn):
    """A 1-D A is one row, also when K is 0: the product is N zeros."""
    got = fn(torch.empty(0, dtype=torch.int8, device=device), torch.empty(5, 0, dtype=torch.int8, device=device))
    assert got.dtype == torch.int32 and tuple(got.shape) == (5,) and not got.any()


ROW_QUANTIZERS = [
    pytest.param(op, device, fn, id=f"{op}-{device}-{impl}")
    for op in ("int8_vectorwise_quant", "int8_double_quant")
    for device, impl, fn in implementations(op)
]


@pytest.mark.parametrize("op,device,fn", ROW_QUANTIZERS)
@pytest.mark.parametrize("shape", [(0,), (2, 3, 0), (0, 5), (2, 0, 4)])
def test_int8_row_quantizers_on_empty_input(op, device, fn, shape):
    """Rows of no columns have statistic 0 (the absmax of nothing), whatever memory the outputs
    are allocated from: recently freed NaN-filled memory is offered to the allocator first."""
    for _ in range(4):
        for size in (8, 64):
            junk = torch.full((size,), float("nan"), device=device)
            del junk
        got = fn(torch.empty(shape, device=device), 0.0)
        want = REF[op](torch.empty(shape), 0.0)
        for g, w in zip(got, want):
            assert (g is None) == (w is None)
            if w is not None:
                assert tuple(g.shape) == tuple(w.shape) and g.dtype == w.dtype
                assert torch.equal(g.cpu(), w)


@pytest.mark.parametrize("device,impl,fn", impl_params("int8_scaled_mm"))
@pytest.mark.parametrize("m,n,k", [(2, 0, 5), (2, 3, 0), (0, 3, 5)])
def test_int8_scaled_mm_empty(device, impl, fn, m, n, k):
    A = torch.ones(m, k, dtype=torch.int8, device=device)
    B = torch.ones(n, k, dtype=torch.int8, device=device)
    got = fn(A, B, torch.ones(m, device=device), torch.ones(n, device=device), BIAS[:n].to(device), torch.float32)
    _expect(got, (m, n), BIAS[:n])


@pytest.mark.parametrize("device,impl,fn", impl_params("int8_mm_dequant"))
def test_int8_mm_dequant_no_columns(device, impl, fn):
    A = torch.empty(2, 0, dtype=torch.int32, device=device)
    got = fn(A, torch.ones(2, device=device), torch.empty(0, device=device), torch.float32)
    assert tuple(got.shape) == (2, 0) and got.dtype == torch.float32


@pytest.mark.parametrize("device,impl,fn", impl_params("int8_mm_dequant"))
@pytest.mark.parametrize("bias_dtype", [torch.float64, torch.int32])
def test_int8_mm_dequant_takes_a_bias_of_any_dtype(device, impl, fn, bias_dtype):
    g = torch.Generator().manual_seed(1)
    A = torch.randint(-(2**20), 2**20, (4, 6), generator=g, dtype=torch.int32)
    rs, cs = torch.rand(4, generator=g) * 100, torch.rand(6, generator=g) * 100
    bias = torch.arange(-3, 3).to(bias_dtype)
    want = REF["int8_mm_dequant"](A, rs, cs, torch.float32, bias)
    got = fn(A.to(device), rs.to(device), cs.to(device), torch.float32, bias.to(device))
    assert torch.equal(got.cpu(), want)
    assert torch.equal(want, REF["int8_mm_dequant"](A, rs, cs, torch.float32, bias.float()))


@pytest.mark.parametrize("device,impl,fn", impl_params("int8_mm_dequant"))
def test_int8_mm_dequant_rejects_a_0d_input(device, impl, fn):
    A = torch.tensor(5, dtype=torch.int32, device=device)
    with pytest.raises(ValueError, match="at least one dimension"):
        fn(A, torch.ones(1, device=device), torch.ones(1, device=device), torch.float32)


@pytest.mark.parametrize("device,impl,fn", impl_params("quantize_blockwise"))
@pytest.mark.parametrize("blocksize", [2**31, 2**32 + 64])
def test_blockwise_block_larger_than_the_input(device, impl, fn, blocksize):
    """A block larger than A is one block of A's size: no padding to the block size (the reference
    and the HPU kernels once allocated 8 GiB for 2^31, the XPU kernel looped over all of it)."""
    x = torch.randn(8, 64, device=device)
    q, absmax = fn(x, dynamic_map(device=device), blocksize)
    q_one, absmax_one = REF["quantize_blockwise"](x.cpu(), dynamic_map(), 512)
    assert torch.equal(q.cpu(), q_one) and torch.equal(absmax.cpu(), absmax_one)
    dequant = dict((n, f) for d, n, f in implementations("dequantize_blockwise") if d == device)[impl]
    y = dequant(q, absmax, dynamic_map(device=device), blocksize, torch.float32)
    assert torch.equal(y.cpu(), REF["dequantize_blockwise"](q_one, absmax_one, dynamic_map(), 512, torch.float32))


MODULES = [
    ("Linear4bit", {}),
    ("Linear8bitLt", {}),
    ("Linear8bitLt", {"has_fp16_weights": False}),
    ("Linear8bitLt", {"has_fp16_weights": False, "threshold": 6.0}),
]


@pytest.mark.parametrize("name,kw", MODULES, ids=[f"{n}-{i}" for i, (n, _) in enumerate(MODULES)])
@pytest.mark.parametrize("x_shape", [(2, 0), (2, 3, 0), (0, 5)])
@pytest.mark.parametrize("train", [True, False])
def test_module_forward_and_backward_when_empty(name, kw, x_shape, train):
    module = getattr(bnb.nn, name)(x_shape[-1], 3, bias=True, **kw)
    with torch.no_grad():
        module.bias.copy_(BIAS)
    module = module.to("cpu").train(train)
    x = torch.randn(x_shape, requires_grad=True)
    y = module(x)
    _expect(y.detach(), (*x_shape[:-1], 3), BIAS)
    y.backward(torch.full_like(y, 2.0))
    assert tuple(x.grad.shape) == x_shape and x.grad.dtype == x.dtype
    rows = y.numel() // 3
    assert torch.equal(module.bias.grad, torch.full((3,), 2.0 * rows))


@pytest.mark.parametrize("name,kw", MODULES, ids=[f"{n}-{i}" for i, (n, _) in enumerate(MODULES)])
@pytest.mark.parametrize("x_shape", [(1, 0), (0,), (1, 1, 0), (3, 0)])
def test_module_inference_when_empty(name, kw, x_shape):
    """Without gradients (the decoding paths, one row included): the bias, never stale memory."""
    module = getattr(bnb.nn, name)(0, 3, bias=True, **kw)
    with torch.no_grad():
        module.bias.copy_(BIAS)
    module = module.to("cpu").eval()
    with torch.no_grad():
        for _ in range(3):  # a fresh allocation each time would show what was left there
            _expect(module(torch.randn(x_shape)), (*x_shape[:-1], 3), BIAS)


@pytest.mark.parametrize("compress_statistics", [False, True])
def test_an_empty_4bit_layer_round_trips_through_its_state_dict(compress_statistics):
    src = bnb.nn.Linear4bit(64, 0, bias=False, quant_type="nf4", compress_statistics=compress_statistics).to("cpu")
    sd = src.state_dict()
    meta = bnb.functional.unpack_tensor_to_dict(sd["weight.quant_state.bitsandbytes__nf4"])
    assert meta["shape"] == [0, 64]
    if compress_statistics:
        assert meta["nested_offset"] == 0.0  # the mean of no scales; NaN could not be loaded
    fresh = bnb.nn.Linear4bit(64, 0, bias=False, quant_type="nf4", compress_statistics=compress_statistics)
    fresh.load_state_dict(sd)
    assert fresh.weight.quant_state.shape == (0, 64)
    assert fresh(torch.randn(3, 64)).shape == (3, 0)


def test_an_empty_nested_layer_of_the_release_loads():
    """The established release saves an empty nested weight's offset as the mean of no scales,
    NaN: with no nested scales it scales nothing, and the checkpoint loads (offset 0)."""
    sd = bnb.nn.Linear4bit(64, 0, bias=False, quant_type="nf4", compress_statistics=True).to("cpu").state_dict()
    blob = "weight.quant_state.bitsandbytes__nf4"
    meta = bnb.functional.unpack_tensor_to_dict(sd[blob])
    assert meta["nested_offset"] == 0.0
    meta["nested_offset"] = float("nan")
    sd[blob] = bnb.utils.pack_dict_to_tensor(meta)
    fresh = bnb.nn.Linear4bit(64, 0, bias=False, quant_type="nf4", compress_statistics=True)
    fresh.load_state_dict(sd)
    assert fresh.weight.quant_state.offset.item() == 0.0
    assert fresh(torch.randn(3, 64)).shape == (3, 0)
    items = {k.removeprefix("weight."): v for k, v in sd.items() if k.startswith("weight.")}
    items["nested_absmax"] = torch.ones(1)  # with scales, a NaN offset is refused by name
    with pytest.raises(ValueError, match="nested_offset"):
        bnb.functional.QuantState.from_dict(items, "cpu")
