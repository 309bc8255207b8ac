"""bitsandbytes.functional against the established release's fixtures and the spec's conformance checks."""

from __future__ import annotations

import hashlib

import pytest
import torch

import bitsandbytes.functional as F
from bitsandbytes.functional import QuantState
from conftest import load_fixture

Q4 = load_fixture("quant_4bit.safetensors")
BW = load_fixture("blockwise_8bit.safetensors")
I8 = load_fixture("int8.safetensors")
CB = load_fixture("codebooks.safetensors")
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}

CASES_4BIT = sorted(
    {k.rsplit(".", 1)[0] for k in Q4 if k.split("_")[0] in DTYPES},
)
CASES_8BIT = sorted({k.rsplit(".", 1)[0] for k in BW if k.split("_")[0] in DTYPES})


@pytest.mark.parametrize("case", CASES_4BIT)
def test_quantize_4bit_matches_fixture(case):
    dtype_name, qt, bs = case.split("_")
    x = Q4[f"{case}.input"]
    assert x.dtype == DTYPES[dtype_name]
    packed, qs = F.quantize_4bit(x, blocksize=int(bs[1:]), quant_type=qt)
    assert packed.dtype == torch.uint8 and packed.shape == Q4[f"{case}.packed"].shape
    assert torch.equal(packed, Q4[f"{case}.packed"])
    assert torch.equal(qs.absmax, Q4[f"{case}.absmax"])
    assert qs.shape == x.shape and qs.dtype == x.dtype and qs.quant_type == qt
    out = F.dequantize_4bit(packed, qs)
    assert out.dtype == x.dtype
    assert torch.equal(out, Q4[f"{case}.dequant"])


def test_odd_length_4bit():
    x = Q4["odd_fp32_nf4_b64.input"]
    packed, qs = F.quantize_nf4(x, blocksize=64)
    assert torch.equal(packed, Q4["odd_fp32_nf4_b64.packed"])
    assert packed[-1, 0].item() & 0x0F == 7  # the missing partner encodes 0.0
    assert torch.equal(qs.absmax, Q4["odd_fp32_nf4_b64.absmax"])
    assert torch.equal(F.dequantize_nf4(packed, qs), Q4["odd_fp32_nf4_b64.dequant"])


def test_nested_4bit_matches_fixture():
    x = Q4["nested_bf16_nf4_b64.input"]
    packed, qs = F.quantize_4bit(x, blocksize=64, quant_type="nf4", compress_statistics=True)
    assert qs.nested and qs.absmax.dtype == torch.uint8
    assert torch.equal(packed, Q4["nested_bf16_nf4_b64.packed"])
    assert torch.equal(qs.absmax, Q4["nested_bf16_nf4_b64.absmax_q"])
    assert torch.equal(qs.offset.reshape(1), Q4["nested_bf16_nf4_b64.offset"])
    assert torch.equal(qs.state2.absmax, Q4["nested_bf16_nf4_b64.state2_absmax"])
    assert torch.equal(qs.state2.code, Q4["nested_bf16_nf4_b64.state2_code"])
    assert qs.state2.blocksize == 256 and qs.state2.dtype == torch.float32
    assert torch.equal(F.dequantize_4bit(packed, qs), Q4["nested_bf16_nf4_b64.dequant"])
    # Appendix B.2: packed bytes identical with and without nesting; offset is the f32 absmax mean.
    plain_packed, plain = F.quantize_4bit(x, blocksize=64, quant_type="nf4")
    assert torch.equal(plain_packed, packed)
    assert torch.equal(qs.offset, plain.absmax.mean())


def test_quant_storage_matches_fixture():
    x = Q4["storage_bf16_nf4_b64.input"]
    packed, qs = F.quantize_4bit(x, blocksize=64, quant_type="nf4", quant_storage=torch.bfloat16)
    ref = Q4["storage_bf16_nf4_b64.packed"]
    assert packed.dtype == torch.bfloat16 and packed.shape == ref.shape
    assert torch.equal(packed.view(torch.uint8), ref.view(torch.uint8))
    assert torch.equal(qs.absmax, Q4["storage_bf16_nf4_b64.absmax"])
    u8, qs8 = F.quantize_4bit(x, blocksize=64, quant_type="nf4")
    assert torch.equal(packed.view(torch.uint8).reshape(-1, 1), u8)
    assert torch.equal(F.dequantize_4bit(packed, qs), F.dequantize_4bit(u8, qs8))


@pytest.mark.parametrize("case", CASES_8BIT)
def test_quantize_blockwise_matches_fixture(case):
    dtype_name, bs = case.split("_")
    x = BW[f"{case}.input"]
    codes, qs = F.quantize_blockwise(x, blocksize=int(bs[1:]))
    assert codes.shape == x.shape and codes.dtype == torch.uint8
    assert torch.equal(qs.absmax, BW[f"{case}.absmax"])
    code = F.create_dynamic_map()
    # The fixture's CPU kernel rounds onto a 65536-point grid first; ours picks the exact nearest
    # code, so ours is never farther from the normalised input than the fixture's (up to the f32
    # rounding of the distance itself).
    inv = (1.0 / qs.absmax.clamp(min=1e-38)).repeat_interleave(int(bs[1:]))[: x.numel()].view(x.shape)
    normed = (x.float() * inv).clamp(-1, 1)
    ours = (code[codes.long()] - normed).abs()
    theirs = (code[BW[f"{case}.codes"].long()] - normed).abs()
    assert bool((ours <= theirs + 1e-7).all())
    # Every disagreement is explained by the fixture's grid rounding (step 2/65535): its error is
    # within two grid steps of ours.
    live = inv.reshape(x.shape) < 1e30  # the all-zero block decodes to 0 whatever its codes
    assert bool((theirs <= ours + 2.0 / 65535)[live].all())
    assert torch.equal(F.dequantize_blockwise(codes, qs)[~live].float(), torch.zeros(int((~live).sum())))
    # Dequantization of the fixture's codes is bit-identical.
    assert torch.equal(F.dequantize_blockwise(BW[f"{case}.codes"], qs), BW[f"{case}.dequant"])


def test_nested_blockwise_matches_fixture():
    x = BW["nested_fp32_b4096.input"]
    codes, qs = F.quantize_blockwise(x, blocksize=4096, nested=True)
    assert qs.nested and qs.state2.blocksize == 4096
    assert torch.equal(qs.absmax, BW["nested_fp32_b4096.absmax_q"])
    assert torch.equal(qs.offset.reshape(1), BW["nested_fp32_b4096.offset"])
    assert torch.equal(qs.state2.absmax, BW["nested_fp32_b4096.state2_absmax"])
    assert torch.equal(F.dequantize_blockwise(BW["nested_fp32_b4096.codes"], qs), BW["nested_fp32_b4096.dequant"])


def test_dequantize_blockwise_without_state():
    x = torch.linspace(-3, 3, 300)
    codes, qs = F.quantize_blockwise(x, blocksize=64)
    out = F.dequantize_blockwise(codes, absmax=qs.absmax, blocksize=64)
    assert out.dtype == torch.float32
    assert torch.equal(out, F.dequantize_blockwise(codes, qs))
    assert (out - x).abs().max() < 0.05
    with pytest.raises(ValueError, match="quant_state or absmax"):
        F.dequantize_blockwise(codes)


def test_codebooks_match_fixture():
    assert torch.equal(F.get_4bit_type("nf4"), CB["nf4"])
    assert torch.equal(F.get_4bit_type("fp4"), CB["fp4"])
    assert torch.equal(F.create_dynamic_map(True), CB["dynamic_signed"])
    assert torch.equal(F.create_dynamic_map(False), CB["dynamic_unsigned"])
    assert torch.equal(F.create_fp8_map(True, 4, 3, 8), CB["fp8_map"])
    assert torch.equal(F.create_linear_map(True, 8, True), CB["linear_map"])
    digest = hashlib.sha256(F.create_dynamic_map().numpy().tobytes()).hexdigest()
    assert digest == "e732639a65f497b4ad684bb166a4467708255edd5207757de8b8f0c7e1fda89c"
    af4 = F.get_4bit_type("af4")
    assert af4[0] == 1.0 and af4[-1] == -1.0
    with pytest.raises(NotImplementedError):
        F.get_4bit_type("af4", blocksize=128)
    with pytest.raises(NotImplementedError, match="int5"):
        F.get_4bit_type("int5")


def test_create_normal_map():
    pytest.importorskip("scipy")
    nm = F.create_normal_map()
    assert torch.allclose(nm, CB["normal_default"], atol=1e-7)
    assert torch.equal(torch.unique(nm), CB["nf4"])
    assert torch.unique(F.create_normal_map(use_extra_value=False)).numel() == 15


def test_create_fp8_map_rejects_bad_widths():
    with pytest.raises(ValueError, match="exponent_bits"):
        F.create_fp8_map(True, 4, 4, 8)


def test_appendix_b_conformance():
    # B.1
    packed, _ = F.quantize_4bit(torch.tensor([1.0, -1.0] + [0.0] * 62), quant_type="nf4")
    assert packed[0, 0].item() == 0xF0
    # B.2 / B.4
    x = torch.randn(64, 256, generator=torch.Generator().manual_seed(0)).half()
    q, s = F.quantize_4bit(x, blocksize=64, quant_type="nf4")
    assert q.shape == (8192, 1) and s.absmax.shape == (256,) and s.absmax.dtype == torch.float32
    qn, sn = F.quantize_4bit(x, blocksize=64, quant_type="nf4", compress_statistics=True)
    assert sn.absmax.shape == (256,) and sn.absmax.dtype == torch.uint8 and sn.state2.absmax.shape == (1,)
    assert torch.equal(q, qn)
    raw = q.view(-1)
    codes = torch.stack([raw >> 4, raw & 15], 1).view(-1).long()
    manual = (s.code[codes] * s.absmax.repeat_interleave(64)).view(64, 256).half()
    assert torch.equal(F.dequantize_4bit(q, s), manual)
    # B.5
    ca, stats, _ = F.int8_vectorwise_quant(torch.tensor([[127, 0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 3.5]]).half())
    assert ca.tolist() == [[127, 0, 2, 2, 0, -2, -2, 4]]
    assert stats.tolist() == [127.0]


@pytest.mark.parametrize("bs", [32, 128, 512, 2048])
@pytest.mark.parametrize("qt", ["nf4", "fp4"])
def test_every_blocksize_roundtrip(bs, qt):
    x = torch.randn(4, 1024, generator=torch.Generator().manual_seed(bs))
    q, s = F.quantize_4bit(x, blocksize=bs, quant_type=qt, compress_statistics=True)
    assert s.absmax.numel() == 4096 // bs
    y = F.dequantize_4bit(q, s)
    err = (y - x).abs() / x.abs().reshape(-1, bs).amax(1).repeat_interleave(bs).view(4, 1024)
    assert err.max() < 0.35  # at most half the widest code gap (FP4: 1/3 .. 2/3)


def test_4bit_bad_input():
    x = torch.randn(128)
    with pytest.raises(ValueError, match="blocksize"):
        F.quantize_4bit(x, blocksize=48)
    with pytest.raises(ValueError, match="quant_type"):
        F.quantize_4bit(x, quant_type="int4")
    with pytest.raises((TypeError, ValueError), match="A must have dtype"):
        F.quantize_4bit(torch.arange(128), quant_type="nf4")
    with pytest.raises(ValueError, match="absmax and out"):
        F.dequantize_4bit(torch.zeros(64, 1, dtype=torch.uint8))
    with pytest.raises(ValueError, match="blocksize"):
        F.quantize_blockwise(x, blocksize=0)


def test_dequantize_4bit_with_absmax_and_out():
    x = torch.randn(8, 64)
    q, s = F.quantize_4bit(x, quant_type="nf4")
    out = torch.empty(8, 64)
    got = F.dequantize_4bit(q, absmax=s.absmax, out=out, quant_type="nf4")
    assert got is out and torch.equal(out, F.dequantize_4bit(q, s))


def test_quant_state_dict_roundtrip():
    x = torch.randn(48, 128, generator=torch.Generator().manual_seed(3))
    _, qs = F.quantize_4bit(x, quant_type="nf4", compress_statistics=True)
    packed = qs.as_dict(packed=True)
    assert list(packed) == [
        "absmax",
        "quant_map",
        "nested_absmax",
        "nested_quant_map",
        "quant_state.bitsandbytes__nf4",
    ]
    blob = F.unpack_tensor_to_dict(packed["quant_state.bitsandbytes__nf4"])
    assert list(blob) == [
        "quant_type",
        "blocksize",
        "dtype",
        "shape",
        "nested_blocksize",
        "nested_dtype",
        "nested_offset",
    ]
    assert blob["shape"] == [48, 128] and blob["dtype"] == "float32" and blob["nested_offset"] == qs.offset.item()
    again = QuantState.from_dict({"weight." + k: v for k, v in packed.items()}, device="cpu")
    assert again == qs
    assert QuantState.from_dict(qs.as_dict(), device="cpu") == qs
    assert torch.equal(qs.bitsandbytes__nf4, packed["quant_state.bitsandbytes__nf4"])
    with pytest.raises(AttributeError):
        _ = qs.something_else
    legacy = qs[4]
    assert legacy[0] is qs.offset and legacy[1] is qs.state2
    assert qs[5] == "nf4"


def test_quant_state_from_dict_errors():
    _, qs = F.quantize_4bit(torch.randn(64, 64), quant_type="nf4")
    packed = qs.as_dict(packed=True)
    missing = {k: v for k, v in packed.items() if not k.startswith("quant_state")}
    with pytest.raises(ValueError, match="found neither"):
        QuantState.from_dict(dict(missing), device="cpu")
    both = dict(packed)
    both["quant_state.bitsandbytes__fp4"] = packed["quant_state.bitsandbytes__nf4"]
    with pytest.raises(ValueError, match="exactly one"):
        QuantState.from_dict(both, device="cpu")
    wrong = dict(missing)
    wrong["quant_state.bitsandbytes__fp4"] = packed["quant_state.bitsandbytes__nf4"]
    with pytest.raises(ValueError, match="nf4"):
        QuantState.from_dict(wrong, device="cpu")


@pytest.mark.parametrize("dtype", ["fp16", "fp32", "bf16"])
@pytest.mark.parametrize("thr", [0, 6])
def test_int8_vectorwise_matches_fixture(dtype, thr):
    prefix = f"{dtype}.thr{thr}"
    CA, SCA, cols = F.int8_vectorwise_quant(I8[f"{dtype}.A"], threshold=float(thr))
    assert torch.equal(CA, I8[f"{prefix}.CA"])
    assert torch.equal(SCA, I8[f"{prefix}.SCA"])
    if thr:
        assert torch.equal(cols, I8[f"{prefix}.outlier_cols"])
    else:
        assert cols is None
    assert torch.equal(F.int8_vectorwise_dequant(CA, SCA), I8[f"{prefix}.dequant"])


def test_int8_matmul_and_dequant_match_fixture():
    C = F.int8_linear_matmul(I8["mm.A"], I8["mm.B"])
    assert torch.equal(C, I8["mm.C"])
    assert torch.equal(F.int8_mm_dequant(C, I8["mm.row_stats"], I8["mm.col_stats"]), I8["mm.dequant"])
    got = F.int8_mm_dequant(C, I8["mm.row_stats"], I8["mm.col_stats"], bias=I8["mm.bias"])
    assert torch.equal(got, I8["mm.dequant_bias"])
    with pytest.raises(ValueError, match="preallocated"):
        F.int8_double_quant(I8["mm.A"].half(), row_stats=torch.zeros(16))


def test_gemv_4bit():
    W = torch.randn(32, 64, generator=torch.Generator().manual_seed(1))
    A = torch.randn(1, 64, generator=torch.Generator().manual_seed(2))
    q, s = F.quantize_4bit(W, quant_type="nf4", compress_statistics=True)
    out = F.gemv_4bit(A, q.t(), state=s)
    assert torch.allclose(out, A @ F.dequantize_4bit(q, s).t(), atol=1e-5)
    with pytest.raises(ValueError, match="state"):
        F.gemv_4bit(A, q)


def test_misc_helpers():
    assert F.C == 127.0
    assert F.is_on_gpu([torch.zeros(1), None, torch.ones(2)])
    assert F.get_ptr(None) is None and F.get_ptr(torch.zeros(1)).value != 0
    assert "dynamic" in F.name2qmap or F.quantize_blockwise(torch.ones(4))[0] is not None
    assert F.GlobalPageManager.get_instance() is F.GlobalPageManager.get_instance()
    with pytest.raises(RuntimeError, match="get_instance"):
        F.GlobalPageManager()
    assert F.CUBLAS_Context.get_instance().get_context(torch.device("cpu")) is None
    with pytest.raises(RuntimeError, match="paged"):
        F.get_paged(4, 4)
    with pytest.raises(ValueError, match="is_paged"):
        F.prefetch_tensor(torch.zeros(2))
    assert F.pack_dict_to_tensor is not None and F.unpack_tensor_to_dict(F.pack_dict_to_tensor({"a": [1, 2]})) == {
        "a": [1, 2]
    }


def test_paging_helpers_are_one_set_and_work_on_any_tensor():
    """bitsandbytes.functional and the optimizers share one page registry; the element-wise helpers
    change the tensor in place (paged or not) instead of raising."""
    from bitsandbytes import _functional_optim

    assert F.GlobalPageManager is _functional_optim.GlobalPageManager and F.get_paged is _functional_optim.get_paged
    A = torch.full((2, 3), 7.0).t()  # a view: the helpers write through it
    F.fill(A, 2.5)
    assert torch.equal(A, torch.full((3, 2), 2.5))
    F._mul(A, torch.tensor([2.0, 4.0]))
    assert torch.equal(A, torch.tensor([[5.0, 10.0]] * 3))
    F.elementwise_func("arange", A, None, 0.0)
    assert torch.equal(A, torch.arange(6.0).view(3, 2))
    F.elementwise_func("fill", A, None, value=-1.0)
    assert torch.equal(A, torch.full((3, 2), -1.0))
    with pytest.raises(ValueError, match="func_name 'cos'"):
        F.elementwise_func("cos", A, None, 0.0)


def test_deprecated_int8_helpers():
    A = torch.randint(-127, 128, (3, 8), dtype=torch.int8)
    B = torch.randint(-127, 128, (8, 5), dtype=torch.int8)
    with pytest.warns(FutureWarning):
        got = F.igemm(A, B)
    assert torch.equal(got, A.int() @ B.int())
    with pytest.warns(FutureWarning):
        assert F.check_matmul(A, B, None, False, False) == (3, 5)
    with pytest.warns(FutureWarning):
        batched = F.batched_igemm(A[None], B[None])
    assert torch.equal(batched[0], A.int() @ B.int())
    with pytest.raises(RuntimeError, match="lib.cquantize"):
        F.lib.cquantize()
