"""Spec §6 (``bitsandbytes.nn``) and §7 (serialization) statement by statement: what the other nn
test files leave out (constructor signatures, attributes before/after quantization, what
``.to()`` returns, forward casting rules, the state-dict hooks' exact keys)."""

from __future__ import annotations

import copy
import inspect
import json
import logging

import pytest
import torch

import bitsandbytes as bnb
import bitsandbytes.functional as F
from bitsandbytes.nn import modules
from bitsandbytes.nn import parametrize as P
from bitsandbytes.nn._params import PLAIN_ALIAS_KEY, weight_caches
from conftest import load_fixture

E = inspect.Parameter.empty


def _params(fn):
    ps = list(inspect.signature(fn).parameters.values())
    skip = 1 if ps and ps[0].name in ("self", "cls") else 0
    return [(p.name, p.default) for p in ps[skip:]]


# -- signatures (§6.1-§6.7, §6.9) ------------------------------------------------------------------

# fmt: off
_CUDA = [("device", None), ("non_blocking", False)]
SIGNATURES = {
    "Params4bit.__new__": (bnb.nn.Params4bit.__new__, [
        ("data", None), ("requires_grad", False), ("quant_state", None), ("blocksize", None),
        ("compress_statistics", True), ("quant_type", "fp4"), ("quant_storage", torch.uint8), ("module", None),
        ("bnb_quantized", False), ("kwargs", E)]),
    "Params4bit.from_prequantized": (bnb.nn.Params4bit.from_prequantized, [
        ("data", E), ("quantized_stats", E), ("requires_grad", False), ("device", "cuda"), ("module", None),
        ("kwargs", E)]),
    "Params4bit.cuda": (bnb.nn.Params4bit.cuda, _CUDA),
    "Params4bit.xpu": (bnb.nn.Params4bit.xpu, _CUDA),
    "Linear4bit": (bnb.nn.Linear4bit.__init__, [
        ("input_features", E), ("output_features", E), ("bias", True), ("compute_dtype", None),
        ("compress_statistics", True), ("quant_type", "fp4"), ("quant_storage", torch.uint8), ("device", None)]),
    "Int8Params.__new__": (bnb.nn.Int8Params.__new__, [
        ("data", None), ("requires_grad", True), ("has_fp16_weights", False), ("CB", None), ("SCB", None),
        ("kwargs", E)]),
    "Int8Params.cuda": (bnb.nn.Int8Params.cuda, _CUDA),
    "Int8Params.xpu": (bnb.nn.Int8Params.xpu, _CUDA),
    "Linear8bitLt": (bnb.nn.Linear8bitLt.__init__, [
        ("input_features", E), ("output_features", E), ("bias", True), ("has_fp16_weights", True),
        ("threshold", 0.0), ("index", None), ("device", None)]),
    "Embedding": (bnb.nn.Embedding.__init__, [
        ("num_embeddings", E), ("embedding_dim", E), ("padding_idx", None), ("max_norm", None), ("norm_type", 2.0),
        ("scale_grad_by_freq", False), ("sparse", False), ("_weight", None), ("device", None)]),
    "Embedding8bit": (bnb.nn.Embedding8bit.__init__, [
        ("num_embeddings", E), ("embedding_dim", E), ("device", None), ("dtype", None)]),
    "Embedding4bit": (bnb.nn.Embedding4bit.__init__, [
        ("num_embeddings", E), ("embedding_dim", E), ("dtype", None), ("quant_type", "fp4"),
        ("quant_storage", torch.uint8), ("device", None)]),
    "OutlierAwareLinear": (bnb.nn.OutlierAwareLinear.__init__, [
        ("input_features", E), ("output_features", E), ("bias", True), ("device", None)]),
    "fix_4bit_weight_quant_state_from_module": (modules.fix_4bit_weight_quant_state_from_module, [("module", E)]),
    "maybe_rearrange_weight": (modules.maybe_rearrange_weight, [(n, E) for n in (
        "state_dict", "prefix", "local_metadata", "strict", "missing_keys", "unexpected_keys", "error_msgs")]),
    "replace_parameter_4bit": (P.replace_parameter_4bit, [
        ("module", E), ("param_name", E), ("compress_statistics", False), ("quant_type", "nf4"), ("blocksize", None)]),
    "replace_parameter_4bit_prequantized": (P.replace_parameter_4bit_prequantized, [
        ("module", E), ("param_name", E), ("qs_dict", E), ("device", E)]),
    "Bnb4bitParametrization": (P.Bnb4bitParametrization.__init__, [("quant_state", E)]),
}
# fmt: on


@pytest.mark.parametrize("name", list(SIGNATURES))
def test_signature(name):
    fn, want = SIGNATURES[name]
    assert _params(fn) == want


@pytest.mark.parametrize("cls,qt", [(bnb.nn.LinearFP4, "fp4"), (bnb.nn.LinearNF4, "nf4")])
def test_linear4bit_presets(cls, qt):
    assert _params(cls.__init__) == [kv for kv in SIGNATURES["Linear4bit"][1] if kv[0] != "quant_type"]
    m = cls(16, 8, True, torch.bfloat16)  # compute_dtype is the 4th positional argument
    assert m.weight.quant_type == qt and m.compute_dtype == torch.bfloat16


@pytest.mark.parametrize("cls,qt", [(bnb.nn.EmbeddingFP4, "fp4"), (bnb.nn.EmbeddingNF4, "nf4")])
def test_embedding4bit_presets(cls, qt):
    assert _params(cls.__init__) == [kv for kv in SIGNATURES["Embedding4bit"][1] if kv[0] != "quant_type"]
    assert cls(4, 64).weight.quant_type == qt


def test_stable_embedding_signature_and_norm():
    names = [n for n, _ in _params(bnb.nn.StableEmbedding.__init__)]
    assert names == [n for n, _ in SIGNATURES["Embedding"][1]] + ["dtype"]
    se = bnb.nn.StableEmbedding(10, 12)
    assert isinstance(se.norm, torch.nn.LayerNorm) and se.norm.normalized_shape == (12,)


# -- §6.1 Params4bit -------------------------------------------------------------------------------


def test_params4bit_defaults_and_dict():
    p = bnb.nn.Params4bit()
    assert type(p) is bnb.nn.Params4bit and p.shape == (0,) and p.dtype == torch.float32
    assert p.blocksize == 64 and p.compress_statistics is True and p.quant_type == "fp4"
    assert p.quant_storage == torch.uint8 and p.bnb_quantized is False and p.module is None
    assert p.quant_state is None and p.requires_grad is False
    # transformers: Params4bit(value, requires_grad=False, **old.__dict__) must not see duplicates
    again = bnb.nn.Params4bit(torch.randn(4, 4), requires_grad=False, **p.__dict__, _is_hf_initialized=True)
    assert "requires_grad" not in again.__dict__ and "data" not in again.__dict__


@pytest.mark.parametrize(
    "storage,shape", [(torch.uint8, (3072, 1)), (torch.bfloat16, (1536, 1)), (torch.float32, (768, 1))]
)
def test_params4bit_quantizes_in_place_on_cpu(storage, shape):
    torch.manual_seed(0)
    lin = torch.nn.Linear(128, 48)
    holder = torch.nn.Module()
    p = bnb.nn.Params4bit(lin.weight.data.bfloat16(), quant_type="nf4", quant_storage=storage, module=holder)
    out = p.cpu()
    assert out is p and p.bnb_quantized and p.dtype == storage and p.shape == shape
    assert p.element_size() == torch.tensor([], dtype=storage).element_size()
    assert p.quant_state.dtype == torch.bfloat16 and p.quant_state.shape == (48, 128)
    assert p.requires_grad is False and holder.quant_state is p.quant_state
    assert p.quant_state.blocksize == 64 and p.quant_state.nested


def test_params4bit_to_after_quantization_returns_a_new_param_without_module():
    holder = torch.nn.Module()
    p = bnb.nn.Params4bit(torch.randn(32, 64), quant_type="nf4", blocksize=128, module=holder).to("cpu")
    qs = p.quant_state
    moved = p.to("cpu")
    assert moved is not p and type(moved) is bnb.nn.Params4bit
    assert moved.quant_state is qs and moved.module is None  # §12: module not carried over
    assert (moved.blocksize, moved.quant_type, moved.bnb_quantized) == (128, "nf4", True)
    assert torch.equal(moved.data, p.data)
    # dtype arguments never convert the packed codes
    assert p.to(torch.float16).dtype == torch.uint8


def test_params4bit_to_meta_does_not_quantize():
    p = bnb.nn.Params4bit(torch.randn(8, 64), quant_type="nf4")
    m = p.to("meta")
    assert m is not p and type(m) is bnb.nn.Params4bit and m.is_meta
    assert not m.bnb_quantized and m.shape == (8, 64) and m.quant_state is None
    assert not p.bnb_quantized and p.device.type == "cpu"


@pytest.mark.parametrize(
    "name,storage,nested",
    [("nf4_plain_bfloat16_bfloat16", torch.bfloat16, False), ("nf4_nested_uint8_float32", torch.uint8, True)],
)
def test_params4bit_from_prequantized_prefixed_keys_and_attributes(name, storage, nested):
    ref = load_fixture(f"linear4bit_{name}.safetensors")
    holder = torch.nn.Module()
    stats = {k: v for k, v in ref.items() if k.startswith("weight.")}  # prefixed keys are accepted
    p = bnb.nn.Params4bit.from_prequantized(ref["weight"], stats, device="cpu", module=holder)
    assert p.bnb_quantized and p.quant_storage == storage and p.compress_statistics is nested
    assert p.quant_type == "nf4" and p.blocksize == 64 and p.requires_grad is False
    assert holder.quant_state is p.quant_state and p.module is holder
    # any key order
    rev = dict(reversed(list({k[7:]: v for k, v in stats.items()}.items())))
    q = bnb.nn.Params4bit.from_prequantized(ref["weight"], rev, device="cpu")
    assert q.quant_state == p.quant_state


def test_params4bit_state_properties():
    p = bnb.nn.Params4bit(torch.randn(16, 64), quant_type="nf4").to("cpu")
    qs = p.quant_state
    assert p.absmax is qs.absmax and p.code is qs.code and p.quant_map is qs.code
    assert p.offset is qs.offset and p.state2 is qs.state2 and p.nested_offset is qs.offset
    assert p.nested_absmax is qs.state2.absmax and p.nested_quant_map is qs.state2.code
    assert p.nested_dtype == torch.float32 and p.nested_blocksize == 256
    flat = bnb.nn.Params4bit(torch.randn(16, 64), quant_type="nf4", compress_statistics=False).to("cpu")
    assert flat.absmax.dtype == torch.float32 and flat.absmax.shape == (16,)
    for name in ("nested_absmax", "nested_blocksize", "nested_quant_map", "nested_dtype"):
        with pytest.raises(AttributeError):
            getattr(flat, name)
    with pytest.raises(AttributeError):
        p.absmax = qs.absmax  # read-only
    fresh = bnb.nn.Params4bit(torch.randn(4, 64))
    for name in ("absmax", "code", "quant_map", "offset", "state2", "nested_offset"):
        with pytest.raises(AttributeError):
            getattr(fresh, name)


def test_params4bit_split_keeps_attributes():
    p = bnb.nn.Params4bit(torch.randn(16, 64), quant_type="fp4").to("cpu")
    parts = torch.split(p, 128)
    assert len(parts) == 4 and all(type(c) is bnb.nn.Params4bit for c in parts)
    assert all(c.quant_state is p.quant_state and c.quant_type == "fp4" and c.bnb_quantized for c in parts)


# -- §6.2 Linear4bit -------------------------------------------------------------------------------


def test_linear4bit_attributes_before_and_after_quantization():
    m = bnb.nn.Linear4bit(64, 32, quant_type="nf4", quant_storage=torch.bfloat16)
    w = m.weight
    assert type(w) is bnb.nn.Params4bit and w.dtype == torch.float32 and w.shape == (32, 64)
    assert not w.requires_grad and w.module is m and not w.bnb_quantized
    assert type(m.bias) is torch.nn.Parameter and m.bias.requires_grad
    assert m.compute_dtype is None and m.compute_type_is_set is False and m.quant_state is None
    assert m.quant_storage == torch.bfloat16 and isinstance(m.support_avx512bf16_for_cpu, bool)
    assert m.to("cpu") is m
    assert m.weight.bnb_quantized and m.quant_state is m.weight.quant_state and m.weight.dtype == torch.bfloat16


def test_linear4bit_quantized_by_assigning_a_quantized_param():
    src = bnb.nn.Params4bit(torch.randn(32, 64), quant_type="nf4").to("cpu")
    m = bnb.nn.Linear4bit(64, 32, bias=False, quant_type="nf4")
    m.weight = bnb.nn.Params4bit(src.data, requires_grad=False, **{**src.__dict__, "module": m})
    x = torch.randn(2, 64)
    torch.testing.assert_close(m(x), x @ F.dequantize_4bit(src.data, src.quant_state).t(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("xdt", [torch.float32, torch.bfloat16])
def test_linear4bit_first_input_sets_compute_dtype(xdt):
    m = bnb.nn.Linear4bit(64, 32, quant_type="nf4").to("cpu")
    out = m(torch.randn(3, 64, dtype=xdt))
    assert m.compute_dtype == xdt and m.compute_type_is_set and out.dtype == xdt and m.bias.dtype == xdt
    # later inputs of another dtype: cast to the compute dtype, output in the input's dtype
    out16 = m(torch.randn(3, 64, dtype=torch.float16))
    assert m.compute_dtype == xdt and out16.dtype == torch.float16 and m.bias.dtype == xdt


def test_linear4bit_f16_input_without_compute_dtype_warns_and_keeps_none(caplog):
    m = bnb.nn.Linear4bit(64, 32, quant_type="nf4").to("cpu")
    with caplog.at_level(logging.WARNING, logger="bitsandbytes.nn.modules"):
        out = m(torch.randn(2, 64, dtype=torch.float16))
    assert out.dtype == torch.float16 and m.compute_dtype is None
    assert any("torch.float16" in r.getMessage() and r.name == "bitsandbytes.nn.modules" for r in caplog.records)


def test_linear4bit_explicit_compute_dtype_casts_input_and_bias():
    m = bnb.nn.Linear4bit(64, 32, True, torch.bfloat16, quant_type="fp4").to("cpu")
    x = torch.randn(2, 64)
    out = m(x)
    assert out.dtype == torch.float32 and m.compute_dtype == torch.bfloat16 and m.bias.dtype == torch.bfloat16
    w = F.dequantize_4bit(m.weight.data, m.weight.quant_state).bfloat16()
    want = torch.nn.functional.linear(x.bfloat16(), w, m.bias).float()
    torch.testing.assert_close(out, want, rtol=2e-2, atol=2e-2)


def test_linear4bit_forward_restores_quant_state_from_module():
    """§6.2 step 1 / §6.7: a weight that lost its quant state (FSDP) gets the module's back."""
    m = bnb.nn.Linear4bit(64, 32, quant_type="nf4").to("cpu")
    x = torch.randn(2, 64)
    want = m(x)
    packed = m.weight.data
    m.weight = torch.nn.Parameter(packed, requires_grad=False)  # a bare packed tensor
    torch.testing.assert_close(m(x), want)  # forward restores it
    assert m.weight.quant_state is m.quant_state
    m.weight.quant_state = None
    modules.fix_4bit_weight_quant_state_from_module(m)
    assert m.weight.quant_state is m.quant_state


def test_linear4bit_bare_weight_keeps_its_identity():
    # §6.2 step 1 re-wraps a bare weight as Params4bit; here (README, deliberate differences) the
    # bare tensor (FSDP's gathered or sharded view) stays the registered object and gains the state.
    m = bnb.nn.Linear4bit(64, 32, quant_type="nf4").to("cpu")
    bare = torch.nn.Parameter(m.weight.data, requires_grad=False)
    m.weight = bare
    modules.fix_4bit_weight_quant_state_from_module(m)
    assert m.weight is bare and type(m.weight) is torch.nn.Parameter
    assert m.weight.quant_state is m.quant_state


def test_params4bit_dict_keys_stay_exact_after_forward():
    m = bnb.nn.Linear4bit(64, 32, quant_type="nf4").to("cpu")
    with torch.no_grad():
        m(torch.randn(1, 64))
        m(torch.randn(1, 64))
    assert PLAIN_ALIAS_KEY in weight_caches(m.weight)  # a cache exists (in its slot): the check below means something
    assert list(m.weight.__dict__) == [
        "blocksize", "compress_statistics", "quant_type", "quant_state", "quant_storage", "bnb_quantized", "module",
    ]  # fmt: skip


# -- §7.1 4-bit state dict for Linear4bit(128, 48) -------------------------------------------------

NF4_ENDS = (-1.0, 0.0, 1.0)  # §2.1 index 0, 7, 15


def test_spec_7_1_nf4_nested():
    torch.manual_seed(1)
    m = bnb.nn.Linear4bit(128, 48, bias=True, quant_type="nf4").to("cpu")
    sd = m.state_dict()
    u8, f32 = torch.uint8, torch.float32
    want = {
        "weight": (u8, (3072, 1)), "bias": (f32, (48,)), "weight.absmax": (u8, (96,)),
        "weight.quant_map": (f32, (16,)), "weight.nested_absmax": (f32, (1,)),
        "weight.nested_quant_map": (f32, (256,)), "weight.quant_state.bitsandbytes__nf4": (u8, (168,)),
    }  # fmt: skip
    assert list(sd) == list(want)
    assert {k: (v.dtype, tuple(v.shape)) for k, v in sd.items()} == want
    qm = sd["weight.quant_map"]
    assert (qm[0].item(), qm[7].item(), qm[15].item()) == NF4_ENDS
    text = bytes(sd["weight.quant_state.bitsandbytes__nf4"].tolist()).decode("utf-8")
    d = json.loads(text)
    assert list(d) == ["quant_type", "blocksize", "dtype", "shape", "nested_blocksize", "nested_dtype", "nested_offset"]
    assert d["quant_type"] == "nf4" and d["blocksize"] == 64 and d["dtype"] == "float32" and d["shape"] == [48, 128]
    assert d["nested_blocksize"] == 256 and d["nested_dtype"] == "float32" and isinstance(d["nested_offset"], float)
    assert text == json.dumps(d)  # python json.dumps defaults


def test_spec_7_1_fp4_plain_blob_is_byte_exact():
    m = bnb.nn.Linear4bit(128, 48, bias=True, quant_type="fp4", compress_statistics=False).to("cpu")
    sd = m.state_dict()
    blob = sd["weight.quant_state.bitsandbytes__fp4"]
    text = '{"quant_type": "fp4", "blocksize": 64, "dtype": "float32", "shape": [48, 128]}'
    assert blob.dtype == torch.uint8 and blob.shape == (78,) and bytes(blob.tolist()) == text.encode()
    assert sd["weight.absmax"].dtype == torch.float32 and sd["weight.absmax"].shape == (96,)


def test_spec_7_1_nf4_bf16_storage_and_dtype_of_quantized_tensor():
    lin = torch.nn.Linear(128, 48).bfloat16()
    m = bnb.nn.Linear4bit(128, 48, quant_type="nf4", compress_statistics=False, quant_storage=torch.bfloat16)
    m.weight.data = lin.weight.data.clone()
    m.bias.data = lin.bias.data.clone()
    m = m.to("cpu")
    sd = m.state_dict()
    assert sd["weight"].dtype == torch.bfloat16 and sd["weight"].shape == (1536, 1)
    assert list(sd)[2:] == ["weight.absmax", "weight.quant_map", "weight.quant_state.bitsandbytes__nf4"]
    d = json.loads(bytes(sd["weight.quant_state.bitsandbytes__nf4"].tolist()))
    assert d["dtype"] == "bfloat16"  # the dtype of the tensor that was quantized
    assert F.dequantize_4bit(m.weight.data, m.weight.quant_state).dtype == torch.bfloat16


def test_spec_7_1_state_dict_is_safetensors_compatible(tmp_path):
    from safetensors.torch import load_file, save_file

    sd = bnb.nn.Linear4bit(128, 48, quant_type="nf4").to("cpu").state_dict()
    assert all(type(v) is torch.Tensor for v in sd.values())
    save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp_path / "m.safetensors"))
    dst = bnb.nn.Linear4bit(128, 48, quant_type="nf4", device="meta")
    dst.load_state_dict(load_file(str(tmp_path / "m.safetensors")), assign=True)
    assert all(torch.equal(dst.state_dict()[k], v) for k, v in sd.items())


# -- §6.3 Int8Params -------------------------------------------------------------------------------


def test_int8params_quantizes_on_cpu_move_and_returns_self():
    w = torch.tensor([[1.0, -2.0, 0.5], [0.25, 0.125, -0.0625]])
    p = bnb.nn.Int8Params(w.clone(), requires_grad=False)
    assert p.requires_grad is False and p.CB is None and p.SCB is None and p.has_fp16_weights is False
    assert bnb.nn.Int8Params(torch.randn(2, 2)).requires_grad is True  # default
    out = p.cpu()
    assert out is p and p.dtype == torch.int8 and p.CB.data_ptr() == p.data_ptr()
    assert p.SCB.dtype == torch.float32 and p.SCB.tolist() == [2.0, 0.25]
    assert p.CB.tolist() == [[64, -127, 32], [127, 64, -32]]


def test_int8params_fp16_weights_is_a_plain_move():
    p = bnb.nn.Int8Params(torch.randn(4, 4), requires_grad=True, has_fp16_weights=True)
    out = p.to("cpu")
    assert out is p and p.dtype == torch.float32 and p.CB is None and p.SCB is None and p.requires_grad


def test_int8params_to_of_int8_data_returns_a_new_param():
    p = bnb.nn.Int8Params(torch.randn(4, 8), requires_grad=False).to("cpu")
    moved = p.to("cpu")
    assert moved is not p and type(moved) is bnb.nn.Int8Params and moved.dtype == torch.int8
    assert moved.CB is moved.data or moved.CB.data_ptr() == moved.data_ptr()
    assert torch.equal(moved.SCB, p.SCB) and moved.requires_grad is False and moved.has_fp16_weights is False
    meta = p.to("meta")
    assert meta.is_meta and meta.dtype == torch.int8 and list(meta.__dict__) == ["CB", "SCB", "has_fp16_weights"]


def test_int8params_deepcopy():
    p = bnb.nn.Int8Params(torch.randn(4, 8), requires_grad=False).to("cpu")
    d = copy.deepcopy(p)
    assert type(d) is bnb.nn.Int8Params and torch.equal(d.data, p.data) and d.data_ptr() != p.data_ptr()
    assert torch.equal(d.SCB, p.SCB) and d.SCB.data_ptr() != p.SCB.data_ptr()
    assert d.CB.data_ptr() == d.data_ptr() and d.has_fp16_weights is False and d.requires_grad is False


# -- §6.4 Linear8bitLt -----------------------------------------------------------------------------


@pytest.mark.parametrize("fp16w,thr,pool", [(1, 0.0, 0), (1, 6.0, 0), (0, 0.0, 0), (0, 6.0, 1)])
def test_linear8bitlt_attributes(fp16w, thr, pool):
    fp16w, pool = bool(fp16w), bool(pool)
    m = bnb.nn.Linear8bitLt(16, 8, has_fp16_weights=fp16w, threshold=thr, index=3)
    assert isinstance(m.state, bnb.MatmulLtState) and m.index == 3
    assert m.state.threshold == thr and m.state.has_fp16_weights is fp16w and bool(m.state.use_pool) is pool
    assert type(m.weight) is bnb.nn.Int8Params and m.weight.requires_grad is fp16w
    assert m.weight.has_fp16_weights is fp16w and m.weight.dtype == torch.float32


def test_linear8bitlt_fp16_weights_state_dict_has_only_weight_and_bias():
    m = bnb.nn.Linear8bitLt(16, 8, has_fp16_weights=True).to("cpu")
    m(torch.randn(2, 16))
    assert list(m.state_dict()) == ["weight", "bias"]
    unquantized = bnb.nn.Linear8bitLt(16, 8, has_fp16_weights=False)  # no SCB yet
    assert list(unquantized.state_dict()) == ["weight", "bias"]
    hooks = [getattr(h, "hook", h) for h in unquantized._load_state_dict_pre_hooks.values()]
    assert modules.maybe_rearrange_weight in hooks


def test_linear8bitlt_weight_format_and_scb_saved():
    m = bnb.nn.Linear8bitLt(16, 8, has_fp16_weights=False).to("cpu")
    sd = m.state_dict(prefix="x.")
    assert list(sd) == ["x.weight", "x.bias", "x.SCB", "x.weight_format"]
    assert sd["x.weight"].dtype == torch.int8 and sd["x.SCB"].dtype == torch.float32 and sd["x.SCB"].shape == (8,)
    wf = sd["x.weight_format"]
    assert wf.dtype == torch.uint8 and wf.shape == () and wf.item() == 0


@pytest.mark.parametrize(
    "fmt,err",
    [(0, None), ("row", None), (torch.tensor(0), None), (1, "col32"), (2, "col_turing"), ("col_ampere", "col_ampere")],
)
def test_maybe_rearrange_weight(fmt, err):
    sd = {"p.weight": torch.zeros(2, 2, dtype=torch.int8), "p.weight_format": fmt}
    if err is None:
        modules.maybe_rearrange_weight(sd, "p.", {}, True, [], [], [])
        assert "p.weight_format" not in sd  # popped
    else:
        with pytest.raises(ValueError, match=f"^Only 'row' weight format is supported, got {err}$"):
            modules.maybe_rearrange_weight(sd, "p.", {}, True, [], [], [])
    default = {"p.weight": torch.zeros(2, 2, dtype=torch.int8)}
    modules.maybe_rearrange_weight(default, "p.", {}, True, [], [], [])  # default "row"
    other = {"q.weight_format": 3}
    modules.maybe_rearrange_weight(other, "p.", {}, True, [], [], [])  # no weight: no-op
    assert other == {"q.weight_format": 3}


def test_linear8bitlt_load_copies_scb_in_place():
    ref = load_fixture("linear8bitlt_thr0.safetensors")
    m = bnb.nn.Linear8bitLt(128, 64, has_fp16_weights=False).to("cpu")
    scb = m.weight.SCB
    res = m.load_state_dict(dict(ref))
    assert res.missing_keys == [] and res.unexpected_keys == []
    assert m.weight.SCB is scb and torch.equal(scb, ref["SCB"]) and torch.equal(m.weight.data, ref["weight"])
    m(torch.randn(2, 128))  # scales now in state
    state_scb = m.state.SCB
    m.load_state_dict({**ref, "SCB": ref["SCB"] * 2})
    assert m.state.SCB is state_scb and torch.equal(m.state.SCB, ref["SCB"] * 2)


def test_linear8bitlt_init_8bit_state_and_forward():
    torch.manual_seed(0)
    m = bnb.nn.Linear8bitLt(32, 16, has_fp16_weights=False).to("cpu")
    CB, SCB = m.weight.CB, m.weight.SCB
    m.init_8bit_state()
    assert m.state.CB is CB and m.state.SCB is SCB and m.weight.CB is None and m.weight.SCB is None
    m2 = bnb.nn.Linear8bitLt(32, 16, has_fp16_weights=False).to("cpu").eval()
    for dt in (torch.float32, torch.bfloat16, torch.float16):
        out = m2(torch.randn(3, 32, dtype=dt))
        assert out.dtype == dt and m2.bias.dtype == dt and m2.state.is_training is False
    assert m2.weight.SCB is None and m2.state.SCB.shape == (16,) and m2.weight.data.data_ptr() == m2.state.CB.data_ptr()
    m2.train()
    m2(torch.randn(3, 32))
    assert m2.state.is_training is True


def test_linear8bitlt_to_moves_state():
    m = bnb.nn.Linear8bitLt(32, 16, has_fp16_weights=False).to("cpu")
    m(torch.randn(2, 32))
    out = m.to("meta")
    assert out is m and m.state.CB.is_meta and m.state.SCB.is_meta and m.weight.is_meta


# -- §6.5 embeddings -------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", [bnb.nn.Embedding, bnb.nn.StableEmbedding])
def test_dense_embeddings_register_32bit_override_and_xavier(cls, optim_manager):
    mgr = optim_manager
    e = cls(50, 8, padding_idx=2)
    assert any(
        m is e and name == "weight" and cfg == {"optim_bits": 32} for m, name, cfg in mgr.module_weight_config_triple
    )
    assert torch.equal(e.weight[2], torch.zeros(8))
    bound = (6.0 / (50 + 8)) ** 0.5  # xavier-uniform
    assert e.weight.abs().max() <= bound and e.weight.abs().max() > bound / 2


def test_embedding8bit_contract():
    e = bnb.nn.Embedding8bit(6, 4, dtype=torch.bfloat16)
    w = e.weight
    assert type(w) is bnb.nn.Int8Params and not w.has_fp16_weights and not w.requires_grad
    with pytest.raises(RuntimeError):
        e(torch.tensor([0]))
    e.weight.data = torch.tensor([[1.0, -2.0, 0.5, 0.0]] * 6, dtype=torch.bfloat16)
    e = e.to("cpu")
    out = e(torch.tensor([[1, 2]]))
    assert out.dtype == torch.bfloat16 and out.shape == (1, 2, 4)
    # SCB = 2, CB = round(w / 2 * 127) = [64, -127, 32, 0]; rows = CB * SCB / 127 in the table's dtype
    want = (torch.tensor([64.0, -127.0, 32.0, 0.0]) * (2.0 / 127)).bfloat16()
    assert torch.equal(out[0, 0], want) and torch.equal(out[0, 1], want)
    with pytest.raises(NotImplementedError, match="^Saving Embedding8bit module is not implemented$"):
        e.state_dict()


def test_embedding4bit_contract(caplog):
    e = bnb.nn.Embedding4bit(6, 128, dtype=torch.bfloat16, quant_type="nf4")
    w = e.weight
    assert type(w) is bnb.nn.Params4bit and w.compress_statistics is None and w.module is e
    assert w.quant_type == "nf4" and not w.requires_grad and e.quant_state is None
    e = e.to("cpu")
    assert e.quant_state is e.weight.quant_state and not e.weight.quant_state.nested
    out = e(torch.tensor([3]))
    assert out.dtype == torch.bfloat16 and out.shape == (1, 128)
    with pytest.raises(NotImplementedError, match="^Saving Embedding4bit module is not implemented$"):
        e.state_dict()
    with caplog.at_level(logging.WARNING, logger="bitsandbytes.nn.modules"):
        bnb.nn.Embedding4bit(6, 96)
    assert any("divisible" in r.getMessage() for r in caplog.records)


# -- §6.6 OutlierAwareLinear -----------------------------------------------------------------------


def test_outlier_aware_linear():
    base = bnb.nn.OutlierAwareLinear(8, 4)
    assert base.outlier_dim is None and base.is_quantized is False
    with pytest.raises(NotImplementedError):
        base.forward_with_outliers(torch.randn(1, 8), torch.tensor([0]))
    with pytest.raises(NotImplementedError):
        base.quantize_weight(base.weight, torch.tensor([0]))

    calls = []

    class Doubled(bnb.nn.OutlierAwareLinear):
        def quantize_weight(self, w, outlier_idx):
            calls.append("q")
            return w * 2

        def forward_with_outliers(self, x, outlier_idx):
            return torch.nn.functional.linear(x, self.weight, self.bias)

    m = Doubled(8, 4)
    w0 = m.weight.detach().clone()
    x = torch.randn(2, 8)
    m(x)
    m(x)
    assert calls == ["q"] and m.is_quantized and torch.equal(m.weight.detach(), w0 * 2)


# -- §6.9 parametrize ------------------------------------------------------------------------------


def test_bnb4bit_parametrization_forward_is_dequantize():
    q, s = F.quantize_4bit(torch.randn(16, 64), quant_type="nf4")
    par = P.Bnb4bitParametrization(s)
    assert isinstance(par, torch.nn.Module) and torch.equal(par(q), F.dequantize_4bit(q, s))


def test_parametrize_defaults_are_nf4_not_nested_and_frozen():
    lin = torch.nn.Linear(64, 16)
    P.replace_parameter_4bit(lin, "weight")
    sd = lin.state_dict()
    assert "weight" in sd and "weight.quant_state.bitsandbytes__nf4" in sd and "weight.nested_absmax" not in sd
    orig = lin.parametrizations.weight.original
    assert not orig.requires_grad and orig.dtype == torch.uint8


def test_spec_7_1_readers_accept_the_unpacked_form():
    src = bnb.nn.Params4bit(torch.randn(48, 128), quant_type="nf4").to("cpu")
    unpacked = src.quant_state.as_dict(packed=False)
    assert "quant_type" in unpacked and not any(k.startswith("quant_state.") for k in unpacked)
    p = bnb.nn.Params4bit.from_prequantized(src.data, unpacked, device="cpu")
    assert p.quant_state == src.quant_state and p.quant_type == "nf4" and p.compress_statistics is True


# -- §7.3 optimizer state dict ---------------------------------------------------------------------


def test_spec_7_3_non_castable_keys():
    # (the wrapped layout, step type, small-parameter states and loading: test_optim*.py)
    opt = bnb.optim.AdamW8bit([torch.nn.Parameter(torch.randn(64, 128))])
    assert set(opt.non_castable_tensor_keys) == {
        "qmap1", "qmap2", "max1", "max2", "new_max1", "new_max2",
        "state1", "state2", "gnorm_vec", "absmax1", "absmax2", "unorm_vec",
    }  # fmt: skip


@pytest.mark.filterwarnings("ignore:for bias. copying from a non-meta parameter")
@pytest.mark.parametrize("on_meta", [False, True])
def test_linear4bit_strict_load_without_the_weight_reports_it(on_meta):
    """torch's rules (§6.2): a checkpoint lacking ``weight`` is a missing key under strict=True; the
    layer must not be left with the checkpoint's statistics beside its own float weight."""
    sd = bnb.nn.Linear4bit(64, 32, quant_type="nf4").to("cpu").state_dict()
    partial = {k: v for k, v in sd.items() if k != "weight"}
    m = bnb.nn.Linear4bit(64, 32, quant_type="nf4", device="meta" if on_meta else None)
    with pytest.raises(RuntimeError, match='Missing key.*"weight"'):
        m.load_state_dict(partial)
    res = m.load_state_dict(partial, strict=False)
    assert res.missing_keys == ["weight"]
    assert not m.weight.bnb_quantized and m.weight.quant_state is None and m.quant_state is None
