"""The rarely used corners of bitsandbytes.functional and bitsandbytes.utils: prefixed unpacked
quant states, preallocated ``out=`` / ``absmax=`` tensors (device, all-or-nothing filling), code
books in any order, inputs that require grad, the random outlier baseline, and value checks of
the code-book constructors, the int8 helpers, QuantState's legacy views and 0/1-element inputs
against the spec's formulas."""

from __future__ import annotations

import json

import pytest
import torch

import bitsandbytes.functional as F
import bitsandbytes.utils as U
from bitsandbytes.functional import QuantState
from conftest import randn

# -- QuantState ------------------------------------------------------------------------------------


@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
@pytest.mark.parametrize("nested", [False, True])
@pytest.mark.parametrize("packed", [False, True])
def test_from_dict_takes_prefixed_keys_packed_or_not(quant_type, nested, packed):
    """Keys may carry a dotted prefix ("weight.") in the unpacked form as in the packed one."""
    x = randn(24, 64, dtype=torch.bfloat16)
    q, state = F.quantize_4bit(x, quant_type=quant_type, compress_statistics=nested)
    items = {"model.layer.weight." + k: v for k, v in state.as_dict(packed=packed).items()}
    restored = QuantState.from_dict(items, device="cpu")
    assert restored == state and restored.nested == nested and restored.dtype == torch.bfloat16
    assert restored.shape == (24, 64) and restored.quant_type == quant_type
    assert torch.equal(F.dequantize_4bit(q, restored), F.dequantize_4bit(q, state))


def test_legacy_list_view_equality_and_move():
    x = randn(8, 64)
    _, state = F.quantize_4bit(x, quant_type="nf4", compress_statistics=True)
    absmax, shape, dtype, blocksize, nested, quant_type = (state[i] for i in range(6))
    assert absmax is state.absmax and shape == (8, 64) and dtype == torch.float32
    assert blocksize == 64 and quant_type == "nf4" and nested[0] is state.offset and nested[1] is state.state2
    assert state[-1] == "nf4" and F.quantize_4bit(x)[1][4] is None
    with pytest.raises(IndexError):
        state[6]
    other = F.quantize_4bit(x, quant_type="nf4", compress_statistics=True)[1]
    assert other == state and not (other != state) and state != "nf4"
    other.state2.absmax = other.state2.absmax * 1.01
    assert other != state
    assert F.quantize_4bit(x[:4], quant_type="nf4")[1] != F.quantize_4bit(x, quant_type="nf4")[1]
    assert state.to("meta") is None  # in place
    moved = (state.absmax, state.code, state.offset, state.state2.absmax, state.state2.code)
    assert all(t.device.type == "meta" for t in moved)


def test_blockwise_state_round_trips_unpacked():
    """An 8-bit state has no quant_type: packed=True keeps the plain items, from_dict takes them."""
    x = randn(3, 100)
    q, state = F.quantize_blockwise(x, blocksize=64, nested=True)
    items = state.as_dict(packed=True)
    assert items["quant_type"] is None and items["nested_offset"] == state.offset.item()
    restored = QuantState.from_dict(items, device="cpu")
    assert restored == state and torch.equal(F.dequantize_blockwise(q, restored), F.dequantize_blockwise(q, state))


# -- preallocated out= / absmax= -------------------------------------------------------------------


def test_out_and_absmax_on_another_device_are_refused():
    """As torch refuses an out= on another device: a copy there would lose the result silently."""
    x = randn(8, 64)
    meta = torch.device("meta")
    with pytest.raises(RuntimeError, match="out must be on cpu .*got meta"):
        F.quantize_blockwise(x, blocksize=64, out=torch.empty(8, 64, dtype=torch.uint8, device=meta))
    with pytest.raises(RuntimeError, match="absmax must be on cpu .*got meta"):
        F.quantize_blockwise(x, blocksize=64, absmax=torch.empty(8, device=meta))
    with pytest.raises(RuntimeError, match="out must be on cpu .*got meta"):
        F.quantize_4bit(x, out=torch.empty(256, 1, dtype=torch.uint8, device=meta))
    with pytest.raises(RuntimeError, match="absmax must be on cpu .*got meta"):
        F.quantize_4bit(x, absmax=torch.empty(8, device=meta))
    C = torch.ones(2, 3, dtype=torch.int32)
    with pytest.raises(RuntimeError, match="out must be on cpu .*got meta"):
        F.int8_mm_dequant(C, torch.ones(2), torch.ones(3), out=torch.empty(2, 3, dtype=torch.float16, device=meta))


def test_a_refused_call_writes_neither_preallocated_tensor():
    x = randn(8, 64)
    absmax = torch.full((8,), -7.0)
    with pytest.raises(ValueError, match="out must have shape"):
        F.quantize_4bit(x, absmax=absmax, out=torch.empty(255, 1, dtype=torch.uint8), quant_type="nf4")
    assert torch.equal(absmax, torch.full((8,), -7.0))
    out = torch.full((8, 64), 3, dtype=torch.uint8)
    with pytest.raises(ValueError, match="out must have shape"):
        F.quantize_blockwise(x, blocksize=64, out=out, absmax=torch.empty(9))
    assert torch.equal(out, torch.full((8, 64), 3, dtype=torch.uint8))


def test_out_arguments_receive_the_results():
    x = randn(8, 64)
    q_ref, s_ref = F.quantize_4bit(x, quant_type="fp4")
    out, absmax = torch.empty(64, 1, dtype=torch.float32), torch.empty(8)
    q, s = F.quantize_4bit(x, out=out, absmax=absmax, quant_type="fp4", quant_storage=torch.float32)
    assert q is out and s.absmax is absmax
    assert torch.equal(out.view(torch.uint8).reshape(-1), q_ref.reshape(-1)) and torch.equal(absmax, s_ref.absmax)
    deq = torch.empty(64, 8).t()  # a non-contiguous out is written through
    assert F.dequantize_4bit(q_ref, s_ref, out=deq) is deq and torch.equal(deq, F.dequantize_4bit(q_ref, s_ref))
    qb, sb = F.quantize_blockwise(x, blocksize=32)
    deq8 = torch.empty(8, 64)
    assert F.dequantize_blockwise(qb, sb, out=deq8) is deq8 and torch.equal(deq8, F.dequantize_blockwise(qb, sb))
    # out may even share the absmax's memory: the result is computed before it is written
    q1, s1 = F.quantize_blockwise(x.reshape(-1)[:64], blocksize=1)
    ref = F.dequantize_blockwise(q1, s1)
    shared = s1.absmax.clone()
    assert torch.equal(F.dequantize_blockwise(q1, absmax=shared, blocksize=1, out=shared), ref)


# -- code books ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name,code",
    [
        ("descending", F.create_linear_map(True).flip(0)),
        ("linear_unsigned_4bit", F.create_linear_map(False, 4)),  # its padding zeros sit in the middle
        ("shuffled_dynamic", F.create_dynamic_map()[torch.randperm(256, generator=torch.Generator().manual_seed(1))]),
    ],
)
def test_blockwise_with_a_code_book_in_any_order(name, code):
    """Each code is (one of) the nearest entries of the code book as given, in its own indexing."""
    x = randn(1000, seed=2)
    if "unsigned" in name:
        x = x.abs()
    q, state = F.quantize_blockwise(x, code=code, blocksize=256)
    assert torch.equal(state.code, code)
    scale = state.absmax.repeat_interleave(256)[:1000]
    scaled = x * (1.0 / scale)
    chosen = (code[q.long()] - scaled).abs()
    best = (code[None, :] - scaled[:, None]).abs().amin(1)
    assert (chosen <= best + 1e-6).all(), (chosen - best).max()
    decoded = F.dequantize_blockwise(q, state)
    ordered = F.quantize_blockwise(x, code=code.sort().values, blocksize=256)
    assert torch.equal(decoded, F.dequantize_blockwise(*ordered))


def test_code_book_constructors_follow_the_spec_formulas():
    lin = F.create_linear_map(True, 8, True)  # 255 values, one zero inserted after the first 127
    assert torch.equal(
        lin, torch.cat([torch.linspace(-1, 1, 255)[:127], torch.zeros(1), torch.linspace(-1, 1, 255)[127:]])
    )
    assert torch.equal(F.create_linear_map(True, 8, False), torch.linspace(-1, 1, 256))
    assert torch.equal(F.create_linear_map(False, 8), torch.linspace(0, 1, 256))
    u4 = F.create_linear_map(False, 4)
    assert torch.equal(u4, torch.cat([torch.linspace(0, 1, 16)[:8], torch.zeros(240), torch.linspace(0, 1, 16)[8:]]))
    # wider codes are returned whole, as create_fp8_map returns them
    assert torch.equal(F.create_linear_map(True, 9), torch.linspace(-1, 1, 511))
    assert F.create_fp8_map(True, 5, 3, 9).shape == (512,)
    fp4 = F.create_fp8_map(True, 2, 1, 4)
    assert fp4.shape == (256,) and torch.equal(fp4, fp4.sort().values)
    assert torch.allclose(fp4.unique()[8:], torch.tensor([0.0208333, 1 / 6, 0.25, 1 / 3, 0.5, 2 / 3, 1.0]))
    e4m3 = F.create_fp8_map(True, 4, 3, 8)
    assert e4m3.unique().numel() == 255 and e4m3.max() == 1.0 and e4m3.min() == -1.0  # +0 and -0 are one
    with pytest.raises(ValueError, match="exponent_bits"):
        F.create_fp8_map(True, 4, 4, 8)
    assert torch.equal(F.get_4bit_type("nf4", blocksize=128), F.get_4bit_type("nf4"))
    fp4_table = F.get_4bit_type("fp4")
    # code 8 is +0.0 in the table, as in the release's tables and checkpoints (fixtures)
    assert fp4_table[3] == 1.0 and fp4_table[1] == pytest.approx(0.0625 / 12, rel=1e-6) and fp4_table[8] == 0.0
    assert F.get_4bit_type("af4")[0] == 1.0 and F.get_4bit_type("af4")[-1] == -1.0
    for name, kwargs in [("af4", {"blocksize": 128}), ("int4", {}), ("nf8", {})]:
        with pytest.raises((NotImplementedError, RuntimeError)):
            F.get_4bit_type(name, **kwargs)


# -- inputs of every kind --------------------------------------------------------------------------


def test_quantize_a_tensor_that_requires_grad():
    """A Parameter is quantized (nested or not) as its values are."""
    w = torch.nn.Parameter(randn(16, 64))
    for nested in (False, True):
        q, s = F.quantize_4bit(w, quant_type="nf4", compress_statistics=nested)
        q_ref, s_ref = F.quantize_4bit(w.detach(), quant_type="nf4", compress_statistics=nested)
        assert torch.equal(q, q_ref)
        assert torch.equal(F.dequantize_4bit(q, s).detach(), F.dequantize_4bit(q_ref, s_ref))
        qb, sb = F.quantize_blockwise(w, blocksize=64, nested=nested)
        assert torch.equal(
            F.dequantize_blockwise(qb, sb).detach(),
            F.dequantize_blockwise(*F.quantize_blockwise(w.detach(), blocksize=64, nested=nested)),
        )


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_empty_single_and_strided_inputs(dtype):
    for shape in [(0,), (0, 5), (1,), ()]:
        x = torch.full(shape, 0.3, dtype=dtype)
        for qt in ("nf4", "fp4"):
            q, s = F.quantize_4bit(x, quant_type=qt, compress_statistics=True)
            assert q.shape == ((x.numel() + 1) // 2, 1) and s.absmax.shape == (-(-x.numel() // 64),)
            assert torch.equal(F.dequantize_4bit(q, s), x)  # 0.3 is its own block's absmax: code +1
        q8, s8 = F.quantize_blockwise(x, blocksize=64)
        assert q8.shape == x.shape and torch.equal(F.dequantize_blockwise(q8, s8), x)
    x = randn(16, 8, dtype=dtype).t()  # non-contiguous: quantized in its row-major order
    assert torch.equal(F.quantize_4bit(x, quant_type="nf4")[0], F.quantize_4bit(x.contiguous(), quant_type="nf4")[0])
    assert torch.equal(F.quantize_blockwise(x, blocksize=32)[0], F.quantize_blockwise(x.contiguous(), blocksize=32)[0])
    for bad in (torch.float64, torch.int32):
        with pytest.raises(ValueError, match="A must have dtype"):
            F.quantize_4bit(x.to(bad))
        with pytest.raises(ValueError, match="A must have dtype"):
            F.quantize_blockwise(x.to(bad))


@pytest.mark.parametrize("blocksize", [32, 4096])
def test_4bit_nested_at_the_blocksize_ends(blocksize):
    x = randn(3, 5000, seed=4)
    q, s = F.quantize_4bit(x, blocksize=blocksize, quant_type="nf4", compress_statistics=True)
    plain = F.quantize_4bit(x, blocksize=blocksize, quant_type="nf4")[1].absmax
    assert s.state2.blocksize == 256 and s.offset == plain.mean()
    absmax = F.dequantize_blockwise(s.absmax, s.state2) + s.offset
    assert torch.equal(
        F.dequantize_4bit(q, s),
        F.dequantize_4bit(q, absmax=absmax, out=torch.empty(3, 5000), blocksize=blocksize, quant_type="nf4"),
    )
    assert (absmax - plain).abs().max() <= plain.max() * 0.02


# -- LLM.int8() helpers ----------------------------------------------------------------------------


@pytest.mark.parametrize("threshold", [0.0, 4.0])
def test_int8_double_quant_follows_the_spec(threshold):
    A = (randn(5, 8, seed=5) * 3).half()
    CA, CAt, row_stats, col_stats, cols = F.int8_double_quant(A, threshold=threshold)
    a = A.float()
    outlier = a.abs() >= threshold if threshold else torch.zeros_like(a, dtype=torch.bool)
    masked = a.masked_fill(outlier, 0)
    assert torch.equal(row_stats, masked.abs().amax(1)) and torch.equal(col_stats, masked.abs().amax(0))
    want_rows = torch.round(masked * (127 / row_stats[:, None])).to(torch.int8)
    want_cols = torch.round(masked * (127 / col_stats[None, :])).to(torch.int8)
    if threshold:
        assert torch.equal(cols, outlier.any(0).nonzero().flatten())
        want_rows[:, cols] = 0
        want_cols[:, cols] = 0
    else:
        assert cols is None
    assert torch.equal(CA, want_rows) and torch.equal(CAt, want_cols)
    assert torch.equal(F.int8_vectorwise_quant(A, threshold)[0], CA)


def test_int8_dequant_helpers_follow_the_spec():
    C = torch.randint(-2000, 2000, (4, 6), dtype=torch.int32, generator=torch.Generator().manual_seed(6))
    rows, cols = torch.rand(4) * 5, torch.rand(6) * 5
    bias = randn(6).half()
    want = (C.float() * rows[:, None] * cols[None, :] * 6.200124e-05 + bias.float()).half()
    got = F.int8_mm_dequant(C.reshape(2, 2, 6), rows, cols, bias=bias)
    assert got.dtype == torch.float16 and got.shape == (2, 2, 6)
    assert (got.reshape(4, 6).float() - want.float()).abs().max() <= want.float().abs().max() * 2e-3
    out = torch.empty(4, 6, dtype=torch.float16)
    assert F.int8_mm_dequant(C, rows, cols, out=out, bias=bias) is out and torch.equal(out, got.reshape(4, 6))
    CA = torch.randint(-127, 128, (3, 2, 5), dtype=torch.int8, generator=torch.Generator().manual_seed(7))
    stats = torch.rand(6) * 10
    deq = F.int8_vectorwise_dequant(CA, stats)
    assert deq.dtype == torch.float32 and torch.equal(deq, CA.float() * stats.view(3, 2, 1) * 7.874015718698502e-3)
    A, B = CA.reshape(6, 5), CA.reshape(6, 5).flip(0)
    out32 = torch.empty(6, 6, dtype=torch.int32)
    assert F.int8_linear_matmul(A, B, out=out32) is out32 and torch.equal(out32, A.int() @ B.int().t())


# -- bitsandbytes.utils ----------------------------------------------------------------------------


def test_public_classes_and_functions_are_named_from_bitsandbytes_functional():
    """Pickles and reprs name the public API as ``bitsandbytes.functional.<name>``, wherever the
    code lives; only the two JSON helpers belong to ``bitsandbytes.utils``, as they always did."""
    import pickle

    owners = {
        name: getattr(F, name).__module__
        for name in F.__all__
        if isinstance(getattr(F, name), type) or callable(getattr(F, name))
    }
    utils_names = {"pack_dict_to_tensor", "unpack_tensor_to_dict"}
    assert {n for n, m in owners.items() if m == "bitsandbytes.utils"} == utils_names
    assert {n: m for n, m in owners.items() if n not in utils_names and m != "bitsandbytes.functional"} == {}
    for obj in (F.QuantState, F.quantize_4bit, F.GlobalPageManager, F.create_dynamic_map):
        assert pickle.loads(pickle.dumps(obj)) is obj
        assert b"bitsandbytes.functional" in pickle.dumps(obj)


def test_pack_dict_round_trip():
    items = {"quant_type": "nf4", "shape": [3, 4], "nested_offset": 0.125, "none": None, "text": "é✓"}
    blob = U.pack_dict_to_tensor(items)
    assert blob.dtype == torch.uint8 and blob.dim() == 1
    assert bytes(blob.tolist()) == json.dumps(items).encode("utf-8")
    assert U.unpack_tensor_to_dict(blob) == items
    assert U.unpack_tensor_to_dict(torch.stack([blob, blob], 1)[:, 1]) == items  # a strided view
    assert F.pack_dict_to_tensor is U.pack_dict_to_tensor and F.unpack_tensor_to_dict is U.unpack_tensor_to_dict


def test_find_outlier_dims():
    w = randn(64, 32, seed=8)
    w[:, 5] *= 50
    assert U.find_outlier_dims(w).tolist() == [5]
    assert U.find_outlier_dims(w.t(), reduction_dim=1).tolist() == [5]
    assert U.find_outlier_dims(w, topk=1).tolist() == [5]
    # the random baseline draws indices of the dimension the std keeps (rows for reduction_dim=1)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        drawn = U.find_outlier_dims(randn(4, 1000), reduction_dim=1, topk=50, rdm=True)
    assert drawn.shape == (50,) and drawn.dtype == torch.int64 and int(drawn.max()) < 4
    with pytest.raises(ValueError, match="topk"):
        U.find_outlier_dims(w, rdm=True)


def test_small_helpers():
    assert U.execute_and_return("echo hello") == ("hello", "")
    assert U.sync_gpu(torch.ones(1)) is None
    assert U.INVERSE_LINEAR_8BIT_WEIGHTS_FORMAT_MAPPING[U.LINEAR_8BIT_WEIGHTS_FORMAT_MAPPING["col32"]] == "col32"
    x = torch.arange(4)
    assert F.get_ptr(x[1:]).value - x.data_ptr() == x.element_size()
    with pytest.raises(RuntimeError, match="same device"):
        F.is_on_gpu([torch.ones(1), torch.ones(1, device="meta")])


@pytest.mark.parametrize("packed", [False, True])
def test_as_dict_gives_a_clone_of_the_nested_code(packed):
    # spec §3.1: nested_quant_map is a clone of state2.code; a caller editing its saved copy
    # (or the state dict's) must not change the state, nor the code book other states share
    from bitsandbytes.backends.reference.codebooks import dynamic_map

    A = randn(8, 64)
    q, qs = F.quantize_4bit(A, quant_type="nf4", compress_statistics=True)
    before = F.dequantize_4bit(q, qs)
    saved = qs.as_dict(packed=packed)["nested_quant_map"]
    saved.zero_()
    assert torch.equal(qs.state2.code, dynamic_map(signed=True))
    assert torch.equal(F.dequantize_4bit(q, qs), before)


def test_nested_blockwise_state_of_an_empty_tensor_has_a_zero_offset():
    # the mean of no scales: 0, not NaN (from_dict refuses a NaN nested_offset)
    q, qs = F.quantize_blockwise(torch.empty(0), nested=True)
    assert q.numel() == 0 and qs.offset.item() == 0.0
    assert F.dequantize_blockwise(q, qs).numel() == 0
    q4, qs4 = F.quantize_4bit(torch.empty(0, 64), compress_statistics=True)
    assert qs4.offset.item() == 0.0
    assert QuantState.from_dict(qs4.as_dict(packed=True), device="cpu").shape == (0, 64)
