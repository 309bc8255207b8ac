"""Life cycle of the quantized layers as transformers, peft and accelerate drive it: moves to and from
``meta`` (``module.to("meta")``, ``to_empty``), reloading, copying, with values checked against the
established release's fixtures or the layer's own earlier outputs."""

from __future__ import annotations

import contextlib
import copy
import io
import pickle

import pytest
import torch
from test_nn import PARAMS4BIT_KEYS, _linear4bit_from_case

import bitsandbytes as bnb
from bitsandbytes.nn.parametrize import replace_parameter_4bit
from conftest import DATA, load_fixture

LINEAR4BIT = sorted(
    p.name[: -len(".safetensors")] for p in DATA.glob("linear4bit_*.safetensors") if ".io." not in p.name
)
TOL = {torch.float32: 1e-5, torch.bfloat16: 1.6e-2, torch.float16: 2e-3}


def _linear4bit(name: str) -> tuple[bnb.nn.Linear4bit, dict]:
    """The fixture's layer, quantized on CPU from its float weight, and its inputs/outputs."""
    m, io_ = _linear4bit_from_case(name)
    m.weight.data = io_["float_weight"].clone()
    m.bias.data = io_["float_bias"].clone()
    return m.to("cpu"), io_


def _tensor_shapes(qs: bnb.functional.QuantState) -> dict:
    return {k: (v.shape, v.dtype) for k, v in qs.as_dict().items() if isinstance(v, torch.Tensor)}


@pytest.mark.parametrize("name", LINEAR4BIT)
def test_linear4bit_to_meta_then_to_empty_and_reload_gives_fixture_outputs(name):
    """module.to("meta") on a quantized Linear4bit failed inside nn.Module._apply (torch's
    Parameter(...) rebuild needs detach() to keep the Params4bit type)."""
    m, io_ = _linear4bit(name)
    sd = {k: v.clone() for k, v in m.state_dict().items()}
    qs = m.quant_state
    shapes = _tensor_shapes(qs)
    packed = (m.weight.shape, m.weight.dtype)

    assert m.to("meta") is m
    w = m.weight
    assert type(w) is bnb.nn.Params4bit and w.device.type == "meta" and (w.shape, w.dtype) == packed
    assert list(w.__dict__) == PARAMS4BIT_KEYS  # no "_is_param" left by Parameter(...)
    assert w.module is m and w.bnb_quantized and not w.requires_grad
    assert m.quant_state is qs and w.quant_state is qs  # the same state, moved in place
    assert qs.shape == (64, 128) and _tensor_shapes(qs) == shapes
    assert qs.absmax.device.type == "meta" and qs.code.device.type == "meta"
    assert type(w.detach()) is torch.Tensor  # outside a module move detach() is torch's
    on_meta = m.state_dict()  # the keys stay (the nested offset, unknown on meta, is NaN)
    assert list(on_meta) == list(sd)
    assert all(v.device.type == "meta" for k, v in on_meta.items() if "quant_state." not in k)

    m.to_empty(device="cpu")
    w = m.weight
    assert type(w) is bnb.nn.Params4bit and w.device.type == "cpu" and (w.shape, w.dtype) == packed
    assert list(w.__dict__) == PARAMS4BIT_KEYS and w.module is m
    assert all(t.device.type == "cpu" for t in qs.as_dict().values() if isinstance(t, torch.Tensor))
    assert _tensor_shapes(qs) == shapes

    m.load_state_dict(sd)
    assert m.quant_state is m.weight.quant_state
    for x, y in (("x3", "y3"), ("x1", "y1")):
        out = m(io_[x])
        assert out.dtype == io_[x].dtype
        torch.testing.assert_close(out.float(), io_[y].float(), rtol=TOL[out.dtype], atol=TOL[out.dtype])


@pytest.mark.parametrize("name", LINEAR4BIT[:2] + LINEAR4BIT[-2:])
def test_linear4bit_on_meta_loads_a_checkpoint_with_assign(name):
    m, io_ = _linear4bit(name)
    want = m(io_["x3"])
    sd = {k: v.clone() for k, v in m.state_dict().items()}
    m.to("meta")
    m.load_state_dict(sd, assign=True)
    assert type(m.weight) is bnb.nn.Params4bit and m.weight.device.type == "cpu"
    assert m.quant_state is m.weight.quant_state
    assert torch.equal(m(io_["x3"]), want)


@pytest.mark.parametrize("kind", ["nf4", "fp4-plain", "int8"])
def test_a_float_checkpoint_assigned_on_meta_is_quantized_on_the_move(kind):
    """A layer built on meta and given a float checkpoint with assign=True: torch put the tensor in
    as a plain Parameter, which the move to a device did not quantize ("not quantized" at the
    first call). It is wrapped again as the quantized parameter type, with the layer's settings."""
    torch.manual_seed(0)

    def make():
        if kind == "int8":
            return bnb.nn.Linear8bitLt(64, 32, has_fp16_weights=False)
        quant_type, _, plain = kind.partition("-")
        return bnb.nn.Linear4bit(
            64, 32, compute_dtype=torch.float32, quant_type=quant_type, compress_statistics=not plain
        )

    sd = {k: v.clone() for k, v in make().state_dict().items()}
    with torch.device("meta"):
        m = make()
    m.load_state_dict(sd, assign=True)
    ref = make()
    ref.load_state_dict(sd)
    m, ref = m.to("cpu"), ref.to("cpu")
    assert type(m.weight) is type(ref.weight)
    if kind != "int8":
        assert m.weight.quant_state.quant_type == ref.weight.quant_state.quant_type
        assert (m.weight.quant_state.state2 is None) == (kind == "fp4-plain")
    x = torch.randn(3, 64)
    assert torch.equal(m(x), ref(x))


def test_linear4bit_model_to_meta_keeps_every_layer_and_deepcopies():
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        bnb.nn.LinearNF4(64, 32, compute_dtype=torch.float32),
        torch.nn.ReLU(),
        bnb.nn.LinearFP4(32, 8, bias=False, compute_dtype=torch.float32, compress_statistics=False),
    ).to("cpu")
    x = torch.randn(2, 5, 64)
    want = model(x)
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    model.to("meta")
    assert all(type(model[i].weight) is bnb.nn.Params4bit for i in (0, 2))
    twin = copy.deepcopy(model)  # a meta model copies too (accelerate's init_empty_weights copies)
    for m in (model, twin):
        m.to_empty(device="cpu")
        m.load_state_dict(sd)
        assert torch.equal(m(x), want)


@pytest.mark.parametrize("threshold", [0.0, 6.0])
@pytest.mark.parametrize("ran", [False, True])
def test_linear8bitlt_to_meta_then_to_empty_and_reload(threshold, ran):
    """Same failure for Int8Params; after to_empty the int8 codes, CB and SCB must stay together so
    that load_state_dict refills the scales the forward uses."""
    io_ = load_fixture(f"linear8bitlt_thr{int(threshold)}.io.safetensors")
    m = bnb.nn.Linear8bitLt(128, 64, has_fp16_weights=False, threshold=threshold)
    m.weight.data = io_["float_weight"].clone()
    m.bias.data = io_["float_bias"].clone()
    m = m.to("cpu")
    x = io_["x_fp32"]
    if ran:
        m(x)  # moves CB / SCB from the weight into m.state
    sd = {k: v.clone() for k, v in m.state_dict().items()}

    m.to("meta")
    assert type(m.weight) is bnb.nn.Int8Params and m.weight.device.type == "meta"
    assert list(m.weight.__dict__) == ["CB", "SCB", "has_fp16_weights"]
    scb = m.state.SCB if ran else m.weight.SCB
    assert scb.device.type == "meta" and scb.shape == (64,)

    m.to_empty(device="cpu")
    assert type(m.weight) is bnb.nn.Int8Params and m.weight.dtype == torch.int8
    m.load_state_dict(sd)
    torch.testing.assert_close(m(x), io_["y_fp32"], rtol=1e-5, atol=1e-5)
    assert torch.equal(m.state_dict()["SCB"], sd["SCB"])


@pytest.mark.parametrize("cls", [bnb.nn.EmbeddingNF4, bnb.nn.EmbeddingFP4, bnb.nn.Embedding8bit])
def test_quantized_embeddings_to_meta_and_back(cls):
    torch.manual_seed(0)
    e = cls(10, 64).to("cpu")
    idx = torch.tensor([[1, 2], [9, 0]])
    want = e(idx)
    kept = {k: v.clone() for k, v in vars(e.weight).items() if isinstance(v, torch.Tensor)}
    qs = getattr(e.weight, "quant_state", None)
    kept_qs = None if qs is None else {k: v.clone() for k, v in qs.as_dict().items() if isinstance(v, torch.Tensor)}
    data = e.weight.data.clone()
    e.to("meta")
    assert type(e.weight).__name__ in ("Params4bit", "Int8Params") and e.weight.device.type == "meta"
    e.to_empty(device="cpu")
    # refill what to_empty left uninitialized, as a loader would
    e.weight.data.copy_(data)
    for k, v in kept.items():
        getattr(e.weight, k).copy_(v)
    if kept_qs is not None:
        assert e.quant_state is e.weight.quant_state
        e.quant_state.absmax.copy_(kept_qs["absmax"])
        e.quant_state.code.copy_(kept_qs["quant_map"])
    assert torch.equal(e(idx), want)


def test_parametrized_4bit_quant_state_follows_the_packed_data():
    """The parametrization's quant state is no parameter or buffer: Module.to() moved the packed
    data alone, and the forward mixed devices."""
    torch.manual_seed(0)
    lin = torch.nn.Linear(64, 16)
    replace_parameter_4bit(lin, "weight", compress_statistics=True)
    x = torch.randn(3, 64)
    want = lin(x)
    qs = lin.parametrizations.weight[0].quant_state
    saved = {k: getattr(qs, k).clone() for k in ("absmax", "code", "offset")}
    saved2 = {k: getattr(qs.state2, k).clone() for k in ("absmax", "code")}
    packed, bias = lin.parametrizations.weight.original.detach().clone(), lin.bias.detach().clone()
    lin.to("meta")
    assert lin(x.to("meta")).shape == (3, 16)
    lin.to_empty(device="cpu")
    assert qs.absmax.device.type == "meta"  # not moved yet: the forward moves it
    with torch.no_grad():
        lin.parametrizations.weight.original.copy_(packed)
        lin.bias.copy_(bias)
    lin(x)  # the state follows the data to the CPU (with to_empty's values)
    assert qs.absmax.device.type == "cpu" and qs.state2.absmax.device.type == "cpu"
    for k, v in saved.items():
        getattr(qs, k).copy_(v)
    for k, v in saved2.items():
        getattr(qs.state2, k).copy_(v)
    assert torch.equal(lin(x), want)


def test_detach_in_another_thread_during_a_module_move_stays_plain():
    """While one thread moves a quantized layer, detach() keeps the subclass there only."""
    import threading

    from bitsandbytes.nn._params import Params4bit, module_apply

    layer = bnb.nn.Linear4bit(64, 32).to("cpu")
    other = bnb.nn.Linear4bit(64, 32).to("cpu")
    seen = {}

    def apply(fn, recurse):
        seen["here"] = type(layer.weight.detach())
        worker = threading.Thread(target=lambda: seen.__setitem__("there", type(other.weight.detach())))
        worker.start()
        worker.join()
        return layer

    module_apply(layer, apply, lambda t: t, True)
    assert seen == {"here": Params4bit, "there": torch.Tensor}
    assert type(layer.weight.detach()) is torch.Tensor


def test_linear4bit_module_type_keeps_the_packed_codes():
    """Module.type(dtype) converts every parameter by value: the packed codes were garbled."""
    torch.manual_seed(0)
    m = bnb.nn.Linear4bit(64, 16, compute_dtype=torch.float32, quant_type="nf4").to("cpu")
    x = torch.randn(2, 64)
    want = m(x)
    packed = m.weight.data.clone()
    m.type(torch.float64).type(torch.float32)
    assert type(m.weight) is bnb.nn.Params4bit and torch.equal(m.weight.data, packed)
    torch.testing.assert_close(m(x), want)


def test_linear4bit_pickle_and_torch_save_roundtrip_on_meta_and_cpu():
    torch.manual_seed(0)
    m = bnb.nn.Linear4bit(64, 16, compute_dtype=torch.float32, quant_type="fp4").to("cpu")
    x = torch.randn(2, 64)
    want = m(x)
    buf = io.BytesIO()
    torch.save(m.state_dict(), buf)
    buf.seek(0)
    sd = torch.load(buf, weights_only=True)
    back = pickle.loads(pickle.dumps(copy.deepcopy(m).to("meta")))
    assert type(back.weight) is bnb.nn.Params4bit and back.weight.module is back
    back.to_empty(device="cpu").load_state_dict(sd)
    assert torch.equal(back(x), want)


def test_params4bit_on_meta_copies_pickles_and_serializes_its_state():
    """Params4bit.to("meta") always worked; copy.copy / pickle of the result failed (rebuilt
    around an empty CPU tensor), and a nested state on meta could not list its items."""
    torch.manual_seed(0)
    w = bnb.nn.Params4bit(torch.randn(16, 64), quant_type="nf4", compress_statistics=True).to("cpu")
    items = w.quant_state.as_dict(packed=True)
    on_meta = w.to("meta")
    for twin in (copy.copy(on_meta), pickle.loads(pickle.dumps(on_meta))):
        assert type(twin) is bnb.nn.Params4bit and twin.device.type == "meta"
        assert twin.shape == on_meta.shape and twin.dtype == torch.uint8
        assert list(twin.__dict__) == PARAMS4BIT_KEYS and twin.quant_state.shape == (16, 64)
    packed = on_meta.quant_state.as_dict(packed=True)
    assert list(packed) == list(items)
    blob = packed["quant_state.bitsandbytes__nf4"]
    with pytest.raises(ValueError, match="nested_offset"):  # a NaN offset is never loaded
        bnb.functional.QuantState.from_dict({**items, "quant_state.bitsandbytes__nf4": blob}, device="cpu")


@pytest.mark.parametrize("on_meta", [False, True])
@pytest.mark.parametrize("ran", [False, True])
def test_linear8bitlt_load_state_dict_with_assign(on_meta, ran):
    """assign=True put the checkpoint's codes in as a plain Parameter and copied its scales into
    the replaced Int8Params: the next forward failed (no scales) or read the old codes."""
    torch.manual_seed(0)
    x = torch.randn(3, 128)
    src = bnb.nn.Linear8bitLt(128, 64, has_fp16_weights=False, threshold=6.0).to("cpu")
    want = src(x)
    sd = src.state_dict()
    dst = bnb.nn.Linear8bitLt(128, 64, has_fp16_weights=False, threshold=6.0).to("cpu")
    if ran:
        dst(x)
    if on_meta:
        dst.to("meta")
    dst.load_state_dict(sd, assign=True)
    assert type(dst.weight) is bnb.nn.Int8Params and list(dst.weight.__dict__) == ["CB", "SCB", "has_fp16_weights"]
    assert dst.weight.data_ptr() == sd["weight"].data_ptr()  # assigned, not copied
    assert torch.equal(dst(x), want)
    assert torch.equal(dst.state_dict()["SCB"], sd["SCB"])


@contextlib.contextmanager
def swap_mode():
    """torch's swap mode (``torch.__future__.set_swap_module_params_on_conversion``) for the block."""
    before = torch.__future__.get_swap_module_params_on_conversion()
    torch.__future__.set_swap_module_params_on_conversion(True)
    try:
        yield
    finally:
        torch.__future__.set_swap_module_params_on_conversion(before)


@pytest.mark.parametrize("assign", [False, True])
def test_float_load_under_torch_swap_mode_keeps_params4bit(assign):
    """With ``torch.__future__.set_swap_module_params_on_conversion(True)`` load_state_dict swaps
    the loaded value into the parameter object (``Params4bit.module_load``): the layer keeps a
    Params4bit, which quantizes on the next move as after a plain load (a plain tensor there
    could not be swapped with a Params4bit, and would never quantize)."""
    torch.manual_seed(0)
    source = torch.nn.Linear(64, 32)
    plain = bnb.nn.Linear4bit(64, 32, quant_type="nf4")
    plain.load_state_dict(source.state_dict())
    plain = plain.to("cpu")
    layer = bnb.nn.Linear4bit(64, 32, quant_type="nf4")
    weight = layer.weight
    with swap_mode():
        layer.load_state_dict(source.state_dict(), assign=assign)
    assert layer.weight is weight and type(weight) is bnb.nn.Params4bit and weight.module is layer
    assert not weight.bnb_quantized and torch.equal(weight.data, source.weight.data)
    layer = layer.to("cpu")
    assert layer.weight.bnb_quantized and torch.equal(layer.weight.data, plain.weight.data)
    x = torch.randn(3, 64)
    assert torch.equal(layer(x), plain(x))


@pytest.mark.parametrize("kind", ["nf4-nested", "nf4-bf16-storage", "int8"])
def test_moves_of_a_warm_layer_under_torch_swap_mode(kind):
    """Under torch's swap mode, ``.to()`` / ``.float()`` swap each converted parameter into the old
    object, which torch refuses while another tensor shares it: the plain alias a warm Linear4bit
    kept did (RuntimeError "Couldn't swap Linear4bit.weight"). Moves of a layer that ran keep its
    type, codes and results."""
    torch.manual_seed(0)
    if kind == "int8":
        layer = bnb.nn.Linear8bitLt(64, 32, has_fp16_weights=False)
    else:
        storage = torch.bfloat16 if kind == "nf4-bf16-storage" else torch.uint8
        layer = bnb.nn.Linear4bit(
            64, 32, quant_type="nf4", compress_statistics=kind == "nf4-nested", quant_storage=storage
        )
    layer = layer.to("cpu")
    x = torch.randn(3, 64)
    with torch.no_grad():
        expected = layer(x)
        codes = layer.weight.data.clone()
        with swap_mode():
            layer = layer.to("cpu").float()
            assert type(layer.weight) in (bnb.nn.Params4bit, bnb.nn.Int8Params)
            assert torch.equal(layer.weight.data.view(torch.uint8), codes.view(torch.uint8))
            assert torch.equal(layer(x), expected)
            layer = layer.to("meta")
    assert layer.weight.is_meta
    state = layer.weight.quant_state if kind != "int8" else layer.state
    assert (state.absmax if kind != "int8" else state.SCB).is_meta


@pytest.mark.parametrize("assign", [False, True])
def test_int8_layer_load_under_torch_swap_mode(assign):
    """The swap mode's load_state_dict swaps ``Int8Params.module_load``'s value into the weight:
    the layer keeps an Int8Params (a plain Parameter had taken its place, without SCB). An int8
    checkpoint into a quantized layer keeps the checkpoint's codes and row scales; a float one
    assigned to a layer built on meta is quantized on the move."""
    io_ = load_fixture("linear8bitlt_thr0.io.safetensors")
    float_sd = {"weight": io_["float_weight"].clone(), "bias": io_["float_bias"].clone()}
    source = bnb.nn.Linear8bitLt(128, 64, has_fp16_weights=False)
    source.load_state_dict(float_sd)
    int8_sd = {k: v.clone() for k, v in source.to("cpu").state_dict().items()}
    if assign:
        with torch.device("meta"):
            layer = bnb.nn.Linear8bitLt(128, 64, has_fp16_weights=False)
    else:
        layer = bnb.nn.Linear8bitLt(128, 64, has_fp16_weights=False).to("cpu")
    with swap_mode():
        layer.load_state_dict(float_sd if assign else int8_sd, assign=assign)
        layer = layer.to("cpu")
    assert type(layer.weight) is bnb.nn.Int8Params and torch.equal(layer.weight.data, int8_sd["weight"])
    assert torch.equal(layer.state_dict()["SCB"], int8_sd["SCB"])
    torch.testing.assert_close(layer(io_["x_fp32"]), io_["y_fp32"], rtol=1e-5, atol=1e-5)


def test_quantized_checkpoint_into_a_warm_layer_under_torch_swap_mode():
    """A quantized checkpoint loads into a quantized Linear4bit in place; under swap mode torch then
    swaps ``module_load``'s value into the weight, which it refuses while the plain alias kept by
    an earlier forward shares the weight's tensor ("not possible to get the gradient edge")."""
    torch.manual_seed(0)
    source = bnb.nn.Linear4bit(64, 32, quant_type="nf4", compute_dtype=torch.float32).to("cpu")
    layer = bnb.nn.Linear4bit(64, 32, quant_type="nf4", compute_dtype=torch.float32).to("cpu")
    x = torch.randn(3, 64)
    with torch.no_grad():
        layer(x)  # keeps the plain alias
        weight = layer.weight
        with swap_mode():
            layer.load_state_dict(source.state_dict())
        assert layer.weight is weight and type(weight) is bnb.nn.Params4bit and weight.bnb_quantized
        assert torch.equal(weight.data, source.weight.data)
        assert torch.equal(layer(x), source(x))


# -- Int8Params moved to a bare device index on a machine without an accelerator ---------------


def _bare_index_to_host(monkeypatch: pytest.MonkeyPatch, p: bnb.nn.Int8Params) -> bnb.nn.Int8Params:
    """``p.to(0)`` where no accelerator exists (the device index then names the host)."""
    monkeypatch.setattr(torch.accelerator, "is_available", lambda: False)
    return p.to(0)


def test_int8_codes_without_scales_take_their_row_magnitudes_on_a_bare_index(monkeypatch) -> None:
    codes = torch.tensor([[-127, 5, 50], [3, -4, 127], [0, 0, 0], [-128, 1, 2], [-60, 20, 40]], dtype=torch.int8)
    p = _bare_index_to_host(monkeypatch, bnb.nn.Int8Params(codes.clone(), requires_grad=False))
    assert p.device.type == "cpu" and torch.equal(p.data, codes) and p.CB is not None
    assert torch.equal(p.CB, codes)
    # each row's largest magnitude, whichever sign holds it (-128 read in float, not as int8)
    assert p.SCB.dtype == torch.float32 and p.SCB.tolist() == [127.0, 127.0, 0.0, 128.0, 60.0]


def test_quantized_int8params_keep_their_scales_on_a_bare_index(monkeypatch) -> None:
    torch.manual_seed(0)
    q = bnb.nn.Int8Params(torch.randn(8, 32), requires_grad=False).to("cpu")
    CB, SCB = q.CB.clone(), q.SCB.clone()
    assert not torch.equal(SCB, CB.float().abs().amax(dim=-1))  # the weight's scales, not the codes'
    moved = _bare_index_to_host(monkeypatch, q)
    assert moved.device.type == "cpu" and torch.equal(moved.data, CB) and torch.equal(moved.CB, CB)
    assert torch.equal(moved.SCB, SCB)


def test_pickled_int8params_hold_their_codes_once() -> None:
    torch.manual_seed(0)
    p = bnb.nn.Int8Params(torch.randn(256, 256), requires_grad=False).to("cpu")
    blob = pickle.dumps(p)
    assert p.data.numel() < len(blob) < 1.5 * p.data.numel()  # the codes (64 KiB) once, with CB as the data
    back = pickle.loads(blob)
    assert type(back) is bnb.nn.Int8Params and back.CB is not None
    assert back.CB.data_ptr() == back.data.data_ptr() and torch.equal(back.data, p.data)
    assert torch.equal(back.SCB, p.SCB)
