"""Bad input gets a clear error naming the argument, on every implementation, never a crash."""

from __future__ import annotations

import pytest
import torch

from bitsandbytes._checks import DTypeError
from bitsandbytes.backends.reference.codebooks import dynamic_map
from conftest import adam_8bit_args, impl_params, step_8bit


@pytest.mark.parametrize("device,impl,fn", impl_params("quantize_4bit"))
def test_quantize_4bit_rejects(device, impl, fn):
    x = torch.randn(128, device=device)
    with pytest.raises(ValueError, match="blocksize"):
        fn(x, 48, "nf4", torch.uint8)
    with pytest.raises(ValueError, match="quant_type"):
        fn(x, 64, "int4", torch.uint8)
    with pytest.raises(TypeError, match="A must have dtype"):
        fn(x.to(torch.float64), 64, "nf4", torch.uint8)
    with pytest.raises(TypeError, match="A must have dtype"):
        fn(torch.ones(128, dtype=torch.int32, device=device), 64, "nf4", torch.uint8)
    with pytest.raises(TypeError, match="quant_storage"):
        fn(x, 64, "nf4", torch.int64)
    with pytest.raises(ValueError, match="whole"):
        fn(torch.randn(10, device=device), 64, "nf4", torch.float32)  # 5 bytes do not fill f32 values


@pytest.mark.parametrize("device,impl,fn", impl_params("dequantize_4bit"))
def test_dequantize_4bit_rejects(device, impl, fn):
    packed = torch.zeros(32, 1, dtype=torch.uint8, device=device)
    absmax = torch.ones(1, device=device)
    with pytest.raises(ValueError, match="packed bytes"):
        fn(packed, absmax, 64, "nf4", [64, 64], torch.float32)  # shape larger than the data
    with pytest.raises(ValueError, match="absmax has 1 entries"):
        fn(torch.zeros(64, 1, dtype=torch.uint8, device=device), absmax, 64, "nf4", [128], torch.float32)
    with pytest.raises(TypeError, match="absmax must have dtype"):
        fn(packed, absmax.half(), 64, "nf4", [64], torch.float32)
    with pytest.raises(ValueError, match="dtype must be"):
        fn(packed, absmax, 64, "nf4", [64], torch.int32)
    with pytest.raises(ValueError, match="blocksize"):
        fn(packed, absmax, 100, "nf4", [64], torch.float32)
    with pytest.raises(ValueError, match="non-negative"):
        fn(packed, absmax, 64, "nf4", [-1, 4], torch.float32)


@pytest.mark.parametrize("device,impl,fn", impl_params("quantize_blockwise"))
def test_quantize_blockwise_rejects(device, impl, fn):
    x = torch.randn(256, device=device)
    code = dynamic_map(device=device)
    with pytest.raises(ValueError, match="blocksize must be positive"):
        fn(x, code, 0)
    with pytest.raises(ValueError, match="code must hold 256"):
        fn(x, code[:128], 64)
    with pytest.raises(TypeError, match="code must have dtype"):
        fn(x, code.double(), 64)
    with pytest.raises(TypeError, match="A must have dtype"):
        fn(x.to(torch.int64), code, 64)


@pytest.mark.parametrize("device,impl,fn", impl_params("dequantize_blockwise"))
def test_dequantize_blockwise_rejects(device, impl, fn):
    q = torch.zeros(1000, dtype=torch.uint8, device=device)
    code = dynamic_map(device=device)
    with pytest.raises(ValueError, match="absmax has 1 entries"):
        fn(q, torch.ones(1, device=device), code, 256, torch.float32)
    with pytest.raises(TypeError, match="A must have dtype"):
        fn(q.to(torch.int8), torch.ones(4, device=device), code, 256, torch.float32)


@pytest.mark.parametrize("device,impl,fn", impl_params("int8_vectorwise_dequant"))
def test_int8_vectorwise_dequant_rejects(device, impl, fn):
    A = torch.zeros(2, 3, dtype=torch.int8, device=device)
    with pytest.raises(TypeError, match="A must have dtype"):
        fn(A.float(), torch.ones(2, device=device))
    with pytest.raises(TypeError, match="stats must have dtype"):
        fn(A, torch.ones(2, dtype=torch.float16, device=device))
    with pytest.raises(ValueError, match="stats has 3 entries"):
        fn(A, torch.ones(3, device=device))
    with pytest.raises(ValueError, match="at least one dimension"):
        fn(torch.zeros((), dtype=torch.int8, device=device), torch.ones(1, device=device))


def test_dtype_error_is_also_a_value_error():
    """The established release raised ValueError for wrong dtypes; we raise a subclass of both."""
    with pytest.raises(ValueError):
        torch.ops.bitsandbytes.int8_mm_dequant(torch.zeros(2, 2), torch.ones(2), torch.ones(2))
    with pytest.raises(DTypeError):
        torch.ops.bitsandbytes.int8_mm_dequant(torch.zeros(2, 2), torch.ones(2), torch.ones(2))


def test_mismatched_shapes():
    with pytest.raises(ValueError, match="last dimension"):
        torch.ops.bitsandbytes.int8_linear_matmul(
            torch.zeros(2, 3, dtype=torch.int8), torch.zeros(4, 5, dtype=torch.int8)
        )
    with pytest.raises(ValueError, match="stats has 3 entries"):
        torch.ops.bitsandbytes.int8_vectorwise_dequant(torch.zeros(2, 3, dtype=torch.int8), torch.ones(3))


def test_native_library_checks_its_arguments():
    """Bad sizes, null pointers and odd block sizes straight into the C ABI: exceptions, no crash."""
    native = pytest.importorskip("bitsandbytes_cpu._C")
    x = torch.randn(64)
    packed = torch.empty(32, dtype=torch.uint8)
    absmax = torch.empty(1)
    with pytest.raises(ValueError, match="null pointer"):
        native.quantize_4bit(0, 0, 64, 64, 1, packed.data_ptr(), absmax.data_ptr())
    with pytest.raises(ValueError, match="n must be positive"):
        native.quantize_4bit(x.data_ptr(), 0, -5, 64, 1, packed.data_ptr(), absmax.data_ptr())
    with pytest.raises(ValueError, match="power of two"):
        native.quantize_4bit(x.data_ptr(), 0, 64, 48, 1, packed.data_ptr(), absmax.data_ptr())
    with pytest.raises(ValueError, match="quant_type"):
        native.dequantize_4bit(packed.data_ptr(), absmax.data_ptr(), 64, 64, 7, x.data_ptr(), 0)
    with pytest.raises(TypeError, match="dtype"):
        native.dequantize_4bit(packed.data_ptr(), absmax.data_ptr(), 64, 64, 1, x.data_ptr(), 3)
    with pytest.raises(ValueError, match="blocksize must be positive"):
        native.quantize_blockwise(
            x.data_ptr(), 0, dynamic_map().data_ptr(), 64, 0, packed.data_ptr(), absmax.data_ptr()
        )
    with pytest.raises(ValueError, match="null pointer"):
        native.dequantize_blockwise(packed.data_ptr(), 0, absmax.data_ptr(), 64, 64, x.data_ptr(), 0)
    assert native.abi_version() == 2


@pytest.mark.parametrize("device,impl,fn", impl_params("int8_mixed_scaled_mm"))
def test_int8_mixed_scaled_mm_rejects_outlier_columns_outside_the_weight(device, impl, fn):
    A = torch.randn(2, 64, device=device)
    CA = torch.randint(-127, 128, (2, 64), dtype=torch.int8, device=device)
    CB = torch.randint(-127, 128, (32, 64), dtype=torch.int8, device=device)
    SCA, SCB = torch.rand(2, device=device) + 1, torch.rand(32, device=device) + 1
    for bad in ([3, 64], [-1, 3]):  # past the last column, or counted from the end
        cols = torch.tensor(bad, dtype=torch.int64, device=device)
        with pytest.raises((IndexError, ValueError, RuntimeError), match="out of bounds|outside"):
            fn(A, CA, CB, SCA, SCB, cols, None)
    out, sub_a = fn(A, CA, CB, SCA, SCB, torch.tensor([3, 63], device=device), None)
    assert out.shape == (2, 32) and torch.equal(sub_a, A[:, [3, 63]])


def test_a_tensor_on_meta_beside_cpu_tensors_is_refused_not_filled_with_garbage():
    """The dispatcher sends a call mixing ``meta`` and CPU tensors to the fake kernel; it used to
    return an uninitialised CPU tensor of the right shape (found by tests/fuzz_api.py)."""
    import bitsandbytes.functional as F

    ops = torch.ops.bitsandbytes
    packed, state = F.quantize_4bit(torch.randn(64, 64))
    with pytest.raises(RuntimeError, match="A on cpu, absmax on meta"):
        ops.dequantize_4bit(packed, state.absmax.to("meta"), 64, "nf4", [64, 64], torch.float32)
    with pytest.raises(RuntimeError, match="A on meta, B on cpu"):
        ops.gemv_4bit(torch.randn(1, 64, device="meta"), packed, [64, 64], state.absmax, state.code, 64)
    with pytest.raises(RuntimeError, match="out on meta"):
        out = torch.empty(64, 64, device="meta")
        ops.dequantize_4bit.out(packed, state.absmax, 64, "nf4", [64, 64], torch.float32, out)
    got = ops.dequantize_4bit(packed.to("meta"), state.absmax.to("meta"), 64, "nf4", [64, 64], torch.float32)
    assert got.device.type == "meta" and got.shape == (64, 64)


# ---- arguments named as the caller passed them (gemv_4bit/gemm_4bit's B, a nested absmax, qmaps) ----


def _nested_weight(device: str):
    """A 40x96 NF4 weight with a nested absmax (60 blocks of 64): its parts and an input."""
    import bitsandbytes.functional as F

    w = torch.randn(40, 96)
    packed, state = F.quantize_4bit(w, blocksize=64, quant_type="nf4", compress_statistics=True)
    parts = (packed, state.state2.absmax, state.absmax, state.state2.code, state.offset)
    return torch.randn(3, 96, device=device), *(t.to(device) for t in parts)


@pytest.mark.parametrize("device,impl,fn", impl_params("gemm_4bit"))
def test_gemm_4bit_names_B_and_the_nested_absmax(device, impl, fn):
    A, packed, inner, absmax_8bit, code, offset = _nested_weight(device)
    want = fn(A, packed, [40, 96], inner, 64, "nf4", None, absmax_8bit, code, offset)
    # One value in another shape decodes as the 0-dim offset does (it is one value).
    assert torch.equal(fn(A, packed, [40, 96], inner, 64, "nf4", None, absmax_8bit, code, offset.view(1, 1)), want)
    several = torch.linspace(-0.1, 0.1, 60, device=device) + offset  # would broadcast over the scales
    with pytest.raises(ValueError, match=r"absmax_offset must hold one value .*got shape \(60,\)"):
        fn(A, packed, [40, 96], inner, 64, "nf4", None, absmax_8bit, code, several)
    with pytest.raises(ValueError, match="absmax_code must hold 256 values"):
        fn(A, packed, [40, 96], inner, 64, "nf4", None, absmax_8bit, code[:128], offset)
    with pytest.raises(TypeError, match="absmax_8bit must have dtype"):
        fn(A, packed, [40, 96], inner, 64, "nf4", None, absmax_8bit.float(), code, offset)
    with pytest.raises(ValueError, match=r"absmax \(the scales of absmax_8bit, one per 256 codes\) has 2 entries"):
        fn(A, packed, [40, 96], torch.ones(2, device=device), 64, "nf4", None, absmax_8bit, code, offset)
    with pytest.raises(ValueError, match=r"absmax_8bit has 59 entries but shapeB \[40, 96\]"):
        fn(A, packed, [40, 96], inner, 64, "nf4", None, absmax_8bit[:59], code, offset)
    with pytest.raises(ValueError, match=r"^bitsandbytes: B holds 1919 packed bytes but shapeB \[40, 96\] needs 1920"):
        fn(A, packed.flatten()[:1919], [40, 96], inner, 64, "nf4", None, absmax_8bit, code, offset)
    # The parts live with absmax_8bit: torch's add silently skipped an offset on meta (the scales
    # came out without it, on the reference, HPU and CUDA paths). A CPU offset is one value on
    # any device, as torch adds it.
    with pytest.raises(RuntimeError, match=r"absmax_offset (must be on|on meta)"):
        fn(A, packed, [40, 96], inner, 64, "nf4", None, absmax_8bit, code, offset.to("meta"))
    with pytest.raises(RuntimeError, match=r"absmax_code (must be on|on meta)"):
        fn(A, packed, [40, 96], inner, 64, "nf4", None, absmax_8bit, code.to("meta"), offset)
    assert torch.equal(fn(A, packed, [40, 96], inner, 64, "nf4", None, absmax_8bit, code, offset.cpu()), want)


def _searching(op: str) -> list:
    """The implementations of ``op`` that read a code book's values before they search it (the
    CPU library, natively, and the reference): the device kernels do not, as that would cost a
    device sync per call, and ``functional.quantize_blockwise`` sorts a table in another order."""
    return [p for p in impl_params(op) if p.values[1] == "reference" or p.values[1].startswith("cpu[")]


def _unordered_codes(code: torch.Tensor, arg: str) -> list:
    """Code books the searching quantizers refuse, with the message each gets."""
    swapped, nan, inf = code.clone(), code.clone(), code.clone()
    swapped[[100, 101]] = swapped[[101, 100]]
    nan[7] = float("nan")
    inf[255] = float("inf")
    return [
        (swapped, rf"^bitsandbytes.*{arg} must be in ascending order, got {arg}\[101\] = \S+ after {arg}\[100\]"),
        (code.flip(0), rf"^bitsandbytes.*{arg} must be in ascending order, got {arg}\[1\] = "),
        (nan, rf"^bitsandbytes.*{arg} must hold finite values, got {arg}\[7\] = nan$"),
        (inf, rf"^bitsandbytes.*{arg} must hold finite values, got {arg}\[255\] = inf$"),
    ]


@pytest.mark.parametrize("device,impl,fn", _searching("quantize_blockwise"))
def test_quantize_blockwise_refuses_a_code_book_out_of_order(device, impl, fn):
    x = torch.randn(300, device=device)
    code = dynamic_map(device=device)
    for bad, message in _unordered_codes(code, "code"):
        for A in (x, x[:0]):  # an empty input too: the same error whatever the size
            with pytest.raises(ValueError, match=message):
                fn(A, bad, 64)
    # Equal neighbours are allowed: 255 zeros, then 1. Their 254 midpoints at 0 put every value
    # above 0 past them (code 254, value 0), and above the last midpoint, 0.5, at code 255.
    # 70000 values take the CPU library's large-call path too (a bucket index where the book allows one).
    ties = torch.zeros(256, device=device)
    ties[255] = 1.0
    for y in (x.abs(), torch.randn(70000, device=device).abs()):
        q, absmax = fn(y, ties, 64)
        assert torch.equal(absmax, torch.stack([b.max() for b in y.split(64)]))
        scaled = y / absmax.repeat_interleave(64)[: y.numel()]
        want = torch.where(scaled > 0.5, 255, torch.where(scaled > 0, 254, 0)).to(torch.uint8)
        assert torch.equal(q, want)


@pytest.mark.parametrize("device,impl,fn", _searching("optimizer_update_8bit_blockwise"))
@pytest.mark.parametrize("arg", ["qmap1", "qmap2"])
def test_optimizer_8bit_refuses_code_books_out_of_order(device, impl, fn, arg):
    t = adam_8bit_args(300, device)
    empty = adam_8bit_args(0, device)  # an empty parameter too: the same error whatever the size
    before = {k: v.clone() for k, v in t.items() if isinstance(v, torch.Tensor)}
    for bad, message in _unordered_codes(t[arg], arg):
        for args in (t, empty):
            with pytest.raises(ValueError, match=message):
                step_8bit(fn, dict(args, **{arg: bad}))
    for k, v in before.items():  # refused before any write
        assert torch.equal(t[k], v), k


@pytest.mark.parametrize("device,impl,fn", impl_params("gemv_4bit"))
def test_gemv_4bit_names_the_packed_weight_B(device, impl, fn):
    from bitsandbytes.backends.reference.codebooks import four_bit_decode_table

    A, packed, _, _, _, _ = _nested_weight(device)
    absmax = torch.ones(60, device=device)
    code = four_bit_decode_table("nf4").to(device)
    with pytest.raises(ValueError, match=r"^bitsandbytes: B holds 1919 packed bytes but shapeB \[40, 96\] needs 1920"):
        fn(A[:1], packed.flatten()[:1919], [40, 96], absmax, code, 64)
    with pytest.raises(ValueError, match=r"^bitsandbytes: absmax has 59 entries but shapeB \[40, 96\]"):
        fn(A[:1], packed, [40, 96], absmax[:59], code, 64)


@pytest.mark.parametrize("device,impl,fn", impl_params("optimizer_update_8bit_blockwise"))
@pytest.mark.parametrize("arg", ["qmap1", "qmap2"])
def test_optimizer_8bit_names_its_code_books(device, impl, fn, arg):
    t = adam_8bit_args(300, device)
    for bad, exc, message in (
        (t[arg][:128], ValueError, f"^bitsandbytes: {arg} must hold 256 values, got 128$"),
        (t[arg].double(), TypeError, f"^bitsandbytes: {arg} must have dtype"),
    ):
        with pytest.raises(exc, match=message):
            step_8bit(fn, dict(t, **{arg: bad}))


# ---- an int8 product's bias is one value per output column, as a vector -----------------------


@pytest.mark.parametrize("device,impl,fn", impl_params("int8_mm_dequant"))
def test_int8_mm_dequant_bias_must_be_a_vector(device, impl, fn):
    acc = torch.randint(-1000, 1000, (4, 4), dtype=torch.int32, device=device)
    stats = torch.rand(4, device=device) + 0.5
    # With as many rows as columns an (n, 1) bias would broadcast down the rows: a wrong answer.
    with pytest.raises(ValueError, match=r"bias must have shape \(4,\), got \(4, 1\)"):
        fn(acc, stats, stats, torch.float32, torch.ones(4, 1, device=device))


@pytest.mark.parametrize("device,impl,fn", impl_params("int8_scaled_mm"))
def test_int8_scaled_mm_bias_must_be_a_vector(device, impl, fn):
    A = torch.randint(-127, 128, (4, 8), dtype=torch.int8, device=device)
    B = torch.randint(-127, 128, (4, 8), dtype=torch.int8, device=device)
    stats = torch.rand(4, device=device) + 0.5
    with pytest.raises(ValueError, match=r"bias must have shape \(4,\), got \(4, 1\)"):
        fn(A, B, stats, stats, torch.ones(4, 1, device=device))


@pytest.mark.parametrize("device,impl,fn", impl_params("int8_weight_mm"))
def test_int8_weight_mm_bias_must_be_a_vector(device, impl, fn):
    CB = torch.randint(-127, 128, (4, 8), dtype=torch.int8, device=device)
    with pytest.raises(ValueError, match=r"bias must have shape \(4,\), got \(4, 1\)"):
        fn(torch.randn(4, 8, device=device), CB, torch.rand(4, device=device) + 0.5, torch.ones(4, 1, device=device))
