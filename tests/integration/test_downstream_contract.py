"""API.md section 10, bullet by bullet: what transformers, peft and accelerate read, write and call,
driven through them on a tiny random Llama (no hub access) and checked on values."""

from __future__ import annotations

import importlib.metadata
import json

import pytest
import torch

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")
accelerate = pytest.importorskip("accelerate")

from peft.utils.integrations import dequantize_bnb_weight  # noqa: E402

import bitsandbytes as bnb  # noqa: E402
import bitsandbytes.functional as F  # noqa: E402

from ._tiny_llama import PROMPT, rel_error, save_tiny_llama  # noqa: E402
from ._tiny_llama import load_quantized as _load  # noqa: E402
from ._tiny_llama import prompt_logits as _logits  # noqa: E402

pytestmark = pytest.mark.integration

NF4 = {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4", "bnb_4bit_use_double_quant": True}
FP4 = {"load_in_4bit": True, "bnb_4bit_quant_type": "fp4", "bnb_4bit_use_double_quant": False}
INT8 = {"load_in_8bit": True}
NF4_BF16_STORAGE = {**NF4, "bnb_4bit_use_double_quant": False, "bnb_4bit_quant_storage": torch.bfloat16}
# every quantized nn.Linear of the tiny Llama (lm_head stays float): q, k, v, o, gate, up, down
LINEAR_WEIGHTS = 2 * (64 * 64 + 32 * 64 + 32 * 64 + 64 * 64 + 3 * 128 * 64)


@pytest.fixture(scope="module")
def float_checkpoint(tmp_path_factory):
    """A tiny random Llama saved with save_pretrained."""
    return save_tiny_llama(tmp_path_factory, "tiny_llama_contract", vocab_size=256)


def _bits(t: torch.Tensor) -> torch.Tensor:
    """Packed codes as bytes (bfloat16 storage holds NaN patterns, which torch.equal rejects)."""
    return t.detach().contiguous().view(torch.uint8)


def _float_model(path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)


# -- 10.1 discovery ------------------------------------------------------------------------------


def test_10_1_discovery_as_the_libraries_probe_it():
    from accelerate.utils import is_4bit_bnb_available, is_8bit_bnb_available, is_bnb_available
    from transformers.utils import is_bitsandbytes_available

    version = importlib.metadata.version("bitsandbytes")
    major, minor = (int(v) for v in version.split(".")[:2])
    assert (major, minor) >= (0, 48) and bnb.__version__ == version
    devices = bnb.supported_torch_devices
    assert isinstance(devices, (set, frozenset)) and "cpu" in devices and all(isinstance(d, str) for d in devices)
    assert "multi_backend" in bnb.features
    assert hasattr(bnb.nn, "Linear4bit") and hasattr(bnb.functional, "int8_vectorwise_dequant")
    assert is_bitsandbytes_available() and is_bitsandbytes_available("0.48")
    assert is_bnb_available() and is_4bit_bnb_available() and is_8bit_bnb_available()


# -- 10.2 construction ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["4bit", "4bit-uint8", "4bit-bf16", "8bit"])
def test_10_2_surgery_on_meta(kind):
    """Positional construction on meta (accelerate omits quant_storage), requires_grad_(False),
    arbitrary attributes, `.data` reassigned to int8 / quant_storage with the __dict__ intact,
    set_submodule and isinstance."""
    storage = {"4bit-uint8": torch.uint8, "4bit-bf16": torch.bfloat16}.get(kind)
    model = torch.nn.Sequential(torch.nn.Linear(64, 32))
    with torch.device("meta"):
        if kind == "8bit":
            layer = bnb.nn.Linear8bitLt(64, 32, True, has_fp16_weights=False, threshold=6.0)
        else:
            kw = {} if storage is None else {"quant_storage": storage}
            layer = bnb.nn.Linear4bit(64, 32, True, torch.bfloat16, compress_statistics=True, quant_type="fp4", **kw)
    layer.requires_grad_(False)
    layer.source_cls, layer._is_hf_initialized = torch.nn.Linear, True
    w, cls = layer.weight, type(layer.weight)
    assert w.is_meta and not w.requires_grad and not layer.bias.requires_grad
    assert (layer.in_features, layer.out_features) == (64, 32)
    before = dict(w.__dict__)
    if kind == "8bit":
        target, want_cls = torch.int8, bnb.nn.Int8Params
        assert before == {"CB": None, "SCB": None, "has_fp16_weights": False}
        assert layer.state.threshold == 6.0 and layer.state.has_fp16_weights is False
    else:
        target, want_cls = storage or torch.uint8, bnb.nn.Params4bit
        assert layer.compute_dtype == torch.bfloat16 and before["module"] is layer
        assert (before["quant_type"], before["compress_statistics"], before["quant_storage"]) == ("fp4", True, target)
    w.data = w.data.to(target)
    assert cls is want_cls and type(layer.weight) is cls and layer.weight is w
    assert w.dtype == target and w.__dict__ == before
    model.set_submodule("0", layer)
    assert isinstance(model[0], (bnb.nn.Linear4bit, bnb.nn.Linear8bitLt)) and model[0].source_cls is torch.nn.Linear
    assert isinstance(model[0], bnb.nn.Linear8bitLt) == (kind == "8bit")


# -- 10.3 weight loading -------------------------------------------------------------------------


@pytest.mark.parametrize("nested", [False, True])
def test_10_3_params4bit_rebuilt_from_the_old_dict_quantizes_on_cpu(nested):
    torch.manual_seed(0)
    value = torch.randn(32, 64)
    with torch.device("meta"):
        layer = bnb.nn.Linear4bit(64, 32, False, torch.float32, compress_statistics=nested, quant_type="nf4")
    old = layer.weight
    new = bnb.nn.Params4bit(value, requires_grad=False, **old.__dict__).to(value.device, non_blocking=nested)
    assert type(new) is bnb.nn.Params4bit and new.bnb_quantized and new.dtype == torch.uint8
    assert new.shape == (32 * 64 // 2, 1) and new.module is layer
    assert layer.quant_state is new.quant_state  # set on the module found in the dict
    want, state = F.quantize_4bit(value, blocksize=64, compress_statistics=nested, quant_type="nf4")
    assert torch.equal(new.data, want) and new.quant_state == state
    layer.weight = new
    x = torch.randn(3, 64)
    torch.testing.assert_close(layer(x), x @ F.dequantize_4bit(want, state).t(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("prefixed", [False, True])
@pytest.mark.parametrize("cfg", [("nf4", True), ("fp4", False)], ids=["nf4-nested", "fp4"])
def test_10_3_from_prequantized_with_bare_or_prefixed_keys(cfg, prefixed):
    torch.manual_seed(0)
    src = bnb.nn.Linear4bit(64, 32, True, torch.float32, compress_statistics=cfg[1], quant_type=cfg[0]).to("cpu")
    sd = src.state_dict()
    stats = {k if prefixed else k[len("weight.") :]: v for k, v in sd.items() if k.startswith("weight.")}
    assert f"quant_state.bitsandbytes__{cfg[0]}" in {k.removeprefix("weight.") for k in stats}
    with torch.device("meta"):
        dst = bnb.nn.Linear4bit(64, 32, True, torch.float32, compress_statistics=cfg[1], quant_type=cfg[0])
    weight = sd["weight"]
    dst.weight = bnb.nn.Params4bit.from_prequantized(
        data=weight, quantized_stats=stats, requires_grad=False, device=weight.device, module=dst
    )
    dst.bias = torch.nn.Parameter(sd["bias"].clone())
    assert dst.weight.bnb_quantized and dst.quant_state is dst.weight.quant_state
    assert dst.weight.quant_state == src.weight.quant_state and torch.equal(dst.weight.data, src.weight.data)
    x = torch.randn(4, 64)
    assert torch.equal(dst(x), src(x))


def test_10_3_int8params_float_and_prequantized_paths():
    torch.manual_seed(0)
    value = torch.randn(32, 64, dtype=torch.float16)
    with torch.device("meta"):
        layer = bnb.nn.Linear8bitLt(64, 32, True, has_fp16_weights=False, threshold=0.0)
    old = dict(layer.weight.__dict__)
    q = bnb.nn.Int8Params(value.to("cpu"), requires_grad=False, **{k: v for k, v in old.items() if k != "SCB"})
    q = q.to("cpu")
    CB, SCB, _ = F.int8_vectorwise_quant(value)
    assert type(q) is bnb.nn.Int8Params and q.dtype == torch.int8 and not q.has_fp16_weights
    assert torch.equal(q.data, CB) and torch.equal(q.CB, CB) and torch.equal(q.SCB, SCB)
    pre = bnb.nn.Int8Params(CB.clone(), requires_grad=False, **(old | {"SCB": SCB.clone()})).to("cpu")
    assert torch.equal(pre.data, CB) and torch.equal(pre.CB, CB) and torch.equal(pre.SCB, SCB)
    layer.weight = pre
    layer.bias = torch.nn.Parameter(torch.zeros(32))
    x = torch.randn(3, 64)
    ref = x @ F.int8_vectorwise_dequant(CB, SCB).t()
    assert rel_error(layer(x), ref) < 0.02


def _empty_bnb_llama(path, **quant):
    from accelerate import init_empty_weights
    from transformers import AutoConfig, BitsAndBytesConfig, LlamaForCausalLM
    from transformers.integrations.bitsandbytes import replace_with_bnb_linear

    with init_empty_weights():
        model = LlamaForCausalLM(AutoConfig.from_pretrained(path))
    cfg = BitsAndBytesConfig(bnb_4bit_compute_dtype=torch.float32, **quant)
    return replace_with_bnb_linear(model, modules_to_not_convert=["lm_head"], quantization_config=cfg)


@pytest.mark.parametrize("quant", [NF4, FP4], ids=["nf4-nested", "fp4"])
def test_10_3_accelerate_set_module_tensor_to_device_quantizes_4bit(float_checkpoint, quant):
    """init_empty_weights + set_module_tensor_to_device (Params4bit rebuilt from its __dict__ and
    moved) gives exactly the codes and logits transformers' own 4-bit loading gives."""
    from accelerate.utils import set_module_tensor_to_device
    from safetensors.torch import load_file

    want_model = _load(float_checkpoint, bnb_4bit_compute_dtype=torch.float32, **quant)
    model = _empty_bnb_llama(float_checkpoint, **quant)
    layer = model.model.layers[0].self_attn.q_proj
    assert isinstance(layer, bnb.nn.Linear4bit) and getattr(layer.weight, "quant_state", None) is None
    for name, value in load_file(float_checkpoint / "model.safetensors").items():
        set_module_tensor_to_device(model, name, "cpu", value=value)
    layers = {n: m for n, m in model.named_modules() if isinstance(m, bnb.nn.Linear4bit)}
    assert len(layers) == 14
    for name, module in layers.items():
        ref = want_model.get_submodule(name)
        assert module.weight.bnb_quantized and module.quant_state is module.weight.quant_state
        assert torch.equal(_bits(module.weight.data), _bits(ref.weight.data)), name
        assert module.weight.quant_state == ref.weight.quant_state, name
    assert torch.equal(_logits(model), _logits(want_model))
    # a shape mismatch is accepted for Params4bit only: the packed codes of a quantized checkpoint
    packed = want_model.model.layers[0].self_attn.q_proj.weight.data.clone()
    set_module_tensor_to_device(model, "model.layers.0.self_attn.q_proj.weight", "cpu", value=packed)
    assert model.model.layers[0].self_attn.q_proj.weight.shape == packed.shape
    with pytest.raises(ValueError, match="this looks incorrect"):
        set_module_tensor_to_device(model, "model.norm.weight", "cpu", value=torch.ones(3))


@pytest.mark.parametrize("quant", [NF4, FP4, NF4_BF16_STORAGE, INT8], ids=["nf4-nested", "fp4", "nf4-bf16", "int8"])
def test_10_3_prequantized_checkpoint_keys_and_bit_equal_reload(float_checkpoint, tmp_path, quant):
    """The saved keys are exactly §7.1 / §7.2; reloading the pre-quantized checkpoint gives the
    same codes, statistics, logits and tokens, bit for bit."""
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    model = _load(float_checkpoint, **quant)
    model.eval()
    want = _logits(model)
    tokens = model.generate(PROMPT, max_new_tokens=4, do_sample=False, pad_token_id=0)
    model.save_pretrained(tmp_path)
    sd = load_file(tmp_path / "model.safetensors")
    p = "model.layers.0.self_attn.q_proj."
    keys = [k[len(p) :] for k in sd if k.startswith(p)]
    if "load_in_8bit" in quant:
        assert sorted(keys) == ["SCB", "weight", "weight_format"]
        assert sd[p + "weight"].dtype == torch.int8 and sd[p + "SCB"].dtype == torch.float32
        assert sd[p + "weight_format"].item() == 0
    else:
        qt, nested = quant["bnb_4bit_quant_type"], quant["bnb_4bit_use_double_quant"]
        want_keys = ["weight", "weight.absmax", "weight.quant_map"]
        want_keys += ["weight.nested_absmax", "weight.nested_quant_map"] if nested else []
        assert sorted(keys) == sorted([*want_keys, f"weight.quant_state.bitsandbytes__{qt}"])
        blob = json.loads(bytes(sd[f"{p}weight.quant_state.bitsandbytes__{qt}"].tolist()).decode())
        assert blob["quant_type"] == qt and blob["shape"] == [64, 64] and blob["blocksize"] == 64
        storage = quant.get("bnb_4bit_quant_storage", torch.uint8)
        assert sd[p + "weight"].dtype == storage
        assert sd[p + "weight"].shape == (64 * 64 // 2 // storage.itemsize, 1)
    again = AutoModelForCausalLM.from_pretrained(tmp_path, device_map="cpu")
    again.eval()
    for name, module in model.named_modules():
        if isinstance(module, (bnb.nn.Linear4bit, bnb.nn.Linear8bitLt)):
            other = again.get_submodule(name)
            assert type(other) is type(module) and torch.equal(_bits(other.weight.data), _bits(module.weight.data))
    assert torch.equal(_logits(again), want)
    assert torch.equal(again.generate(PROMPT, max_new_tokens=4, do_sample=False, pad_token_id=0), tokens)


# -- 10.4 attributes ------------------------------------------------------------------------------


@pytest.mark.parametrize("storage", [torch.uint8, torch.bfloat16])
def test_10_4_params4bit_attributes_counting_and_memory(float_checkpoint, storage):
    model = _load(float_checkpoint, bnb_4bit_quant_storage=storage, bnb_4bit_compute_dtype=torch.float32, **NF4)
    ref = _float_model(float_checkpoint)
    w = model.model.layers[1].mlp.down_proj.weight
    assert w.quant_type == "nf4" and w.compress_statistics is True and w.quant_storage == storage
    assert w.blocksize == 64 and w.bnb_quantized is True and w.module is model.model.layers[1].mlp.down_proj
    assert w.dtype == storage and w.device.type == "cpu" and w.element_size() == storage.itemsize
    assert w.numel() * w.element_size() == 64 * 128 // 2
    qs = w.quant_state
    assert qs.shape == (64, 128) and qs.dtype == torch.float32
    deq = F.dequantize_4bit(w.data, qs)
    assert deq.shape == qs.shape and deq.dtype == qs.dtype and torch.equal(dequantize_bnb_weight(w), deq)
    assert rel_error(deq, ref.model.layers[1].mlp.down_proj.weight.detach()) < 0.15
    # transformers counts a 4-bit parameter as numel * 2 * itemsize: the float model's count
    assert model.num_parameters() == ref.num_parameters()
    assert ref.get_memory_footprint() - model.get_memory_footprint() == LINEAR_WEIGHTS * 4 - LINEAR_WEIGHTS // 2
    # the __dict__ round trip: pop("data"), drop the private keys, add requires_grad
    kwargs = {k: v for k, v in w.__dict__.items() if not k.startswith("_")}
    kwargs.pop("data", None)
    kwargs["requires_grad"] = False
    clone = bnb.nn.Params4bit(w.data, **kwargs)
    assert clone.quant_state is qs and clone.bnb_quantized and torch.equal(_bits(clone.data), _bits(w.data))
    assert clone.to("cpu").quant_state is qs


def test_10_4_int8_attributes_and_the_nllb_probe(float_checkpoint):
    model = _load(float_checkpoint, **INT8)
    model.eval()
    ref = _float_model(float_checkpoint)
    assert ref.get_memory_footprint() - model.get_memory_footprint() == LINEAR_WEIGHTS * 3
    layer = model.model.layers[0].mlp.gate_proj
    w = layer.weight
    assert type(w) is bnb.nn.Int8Params and w.dtype == torch.int8 and w.has_fp16_weights is False
    assert {k for k in w.__dict__ if not k.startswith("_")} == {"CB", "SCB", "has_fp16_weights"}
    CB, SCB, _ = F.int8_vectorwise_quant(ref.model.layers[0].mlp.gate_proj.weight.detach().half())
    scb = layer.state.SCB if layer.state.SCB is not None else w.SCB
    assert torch.equal(w.data, CB) and torch.equal(scb, SCB)
    assert isinstance(layer.state, bnb.MatmulLtState) and layer.state.has_fp16_weights is False
    assert layer.state.threshold == 6.0 and layer.index is None
    assert not hasattr(layer, "SCB") and not hasattr(layer, "CB")  # nllb-moe's probe
    before = dequantize_bnb_weight(w, state=layer.state)
    _logits(model)  # a forward moves the scales into the state
    after = dequantize_bnb_weight(layer.weight, state=layer.state)
    assert torch.equal(before, after) and torch.equal(after, CB * SCB.view(-1, 1) * 7.874015718698502e-3)
    assert not hasattr(layer, "SCB") and not hasattr(layer, "CB")
    # an 8-bit model moves across devices with .to() (bitsandbytes >= 0.48), values unchanged
    want = _logits(model)
    assert torch.equal(_logits(model.to("cpu")), want)
    # peft's 8-bit merge: a new Int8Params from the float weight, then state.reset_grads()
    layer.weight = bnb.nn.Int8Params(
        after.to("cpu"), requires_grad=False, has_fp16_weights=layer.weight.has_fp16_weights
    ).to(layer.weight.device)
    layer.state.reset_grads()
    assert layer.state.CB is None and layer.state.SCB is None  # as the established MatmulLtState
    assert torch.equal(layer.weight.data, CB)
    torch.testing.assert_close(layer.weight.SCB, SCB, rtol=1e-6, atol=0)
    torch.testing.assert_close(_logits(model), want, rtol=1e-4, atol=1e-5)


def test_10_4_compute_dtype_and_dtype_refusals(float_checkpoint):
    """peft reads Linear4bit.compute_dtype (dispatch and dtype inference); transformers refuses to
    cast a bitsandbytes model to another dtype, and leaves the codes alone."""
    from peft import LoraConfig, get_peft_model

    model = _load(float_checkpoint, bnb_4bit_compute_dtype=torch.bfloat16, **NF4)
    layer = model.model.layers[0].self_attn.v_proj
    assert hasattr(layer, "compute_dtype") and layer.compute_dtype == torch.bfloat16
    codes = layer.weight.data.clone()
    for cast in (lambda m: m.to(torch.float16), lambda m: m.to("cpu", torch.bfloat16), lambda m: m.half()):
        with pytest.raises(ValueError):
            cast(model)
    assert layer.weight.dtype == torch.uint8 and torch.equal(layer.weight.data, codes)
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=["v_proj"], init_lora_weights=False))
    lora = peft_model.base_model.model.model.layers[0].self_attn.v_proj
    assert type(lora).__name__ == "Linear4bit" and lora.base_layer is layer
    assert torch.isfinite(_logits(peft_model)).all()


# -- 10.5 functions ------------------------------------------------------------------------------


def test_10_5_int8_vectorwise_dequant_and_the_fallback_constant():
    torch.manual_seed(0)
    CB, SCB, _ = F.int8_vectorwise_quant(torch.randn(16, 32, dtype=torch.float16))
    out = F.int8_vectorwise_dequant(CB, SCB)
    assert out.dtype == torch.float32 and out.shape == (16, 32)
    torch.testing.assert_close(out, CB.float() * SCB[:, None] / 127, rtol=2e-7, atol=0)
    assert torch.equal(out, CB * SCB.view(-1, 1) * 7.874015718698502e-3)  # §2.10: peft's fallback, exactly


@pytest.mark.parametrize(
    "cfg", [("nf4", False, torch.uint8), ("fp4", False, torch.bfloat16), ("nf4", True, torch.uint8)]
)
def test_10_5_requantization_after_a_merge(cfg):
    """peft's merge: dequantize_4bit, add the delta, Params4bit(..., **kwargs).to(device); the
    flat formats are idempotent (dequantized values re-quantize to themselves; FP4's -0 code comes
    back as +0, the same value)."""
    qt, nested, storage = cfg
    torch.manual_seed(0)
    layer = bnb.nn.Linear4bit(
        64, 32, True, torch.float32, compress_statistics=nested, quant_type=qt, quant_storage=storage
    ).to("cpu")
    w = layer.weight
    deq = F.dequantize_4bit(w.data, w.quant_state)
    assert deq.shape == (32, 64) and deq.dtype == torch.float32
    kwargs = {k: v for k, v in w.__dict__.items() if k in ("quant_type", "compress_statistics", "quant_storage")}
    again = bnb.nn.Params4bit(deq.to("cpu"), requires_grad=False, **kwargs, module=layer).to(w.device)
    assert again.dtype == storage and layer.quant_state is again.quant_state
    back = F.dequantize_4bit(again.data, again.quant_state)
    if nested:
        assert rel_error(back, deq) < 0.02
    else:
        assert torch.equal(back, deq)
        if qt == "nf4":
            assert torch.equal(_bits(again.data), _bits(w.data))
    delta = 0.01 * torch.randn(32, 64)
    merged = bnb.nn.Params4bit((deq + delta).to("cpu"), requires_grad=False, **kwargs).to("cpu")
    packed, _ = F.quantize_4bit(deq + delta, compress_statistics=nested, quant_type=qt, quant_storage=storage)
    assert torch.equal(_bits(merged.data), _bits(packed))

    int8 = bnb.nn.Linear8bitLt(64, 32, True, has_fp16_weights=False).to("cpu")
    w8 = F.int8_vectorwise_dequant(int8.weight.data, int8.weight.SCB)
    re8 = bnb.nn.Int8Params(w8.to("cpu"), requires_grad=False, has_fp16_weights=False).to("cpu")
    assert torch.equal(re8.data, int8.weight.data)
    torch.testing.assert_close(re8.SCB, int8.weight.SCB, rtol=1e-3, atol=0)


@pytest.mark.parametrize("threshold", [0.0, 6.0])
def test_10_5_tgi_style_layers_use_matmul_matmul_4bit_and_matmullt_state(threshold):
    torch.manual_seed(0)
    W, bias = torch.randn(32, 64), torch.randn(32)
    x = torch.randn(2, 5, 64)
    x[..., 7] *= 20  # an outlier column for threshold 6
    ref = x @ W.t() + bias

    state = bnb.MatmulLtState()
    state.threshold, state.has_fp16_weights, state.is_training = threshold, False, False
    weight = bnb.nn.Int8Params(W.clone(), requires_grad=False, has_fp16_weights=False).to("cpu")
    state.CB, state.SCB, weight.CB, weight.SCB = weight.CB, weight.SCB, None, None  # TGI's init_8bit_state
    out = bnb.matmul(x, weight, bias=bias, state=state)
    assert out.shape == (2, 5, 32) and out.dtype == x.dtype
    assert rel_error(out, ref) < 0.03

    q, qs = F.quantize_4bit(W, quant_type="nf4", compress_statistics=True)
    out4 = bnb.matmul_4bit(x, q.t(), bias=bias, quant_state=qs)
    torch.testing.assert_close(out4, x @ F.dequantize_4bit(q, qs).t() + bias, rtol=1e-4, atol=1e-4)
    assert rel_error(out4, ref) < 0.15


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("kind", ["4bit", "8bit", "8bit-thr6"])
def test_10_5_forward_returns_a_fresh_differentiable_tensor(kind, dtype):
    torch.manual_seed(0)
    W = torch.randn(32, 64)
    if kind == "4bit":
        layer = bnb.nn.Linear4bit(64, 32, True, torch.float32, quant_type="nf4")
    else:
        layer = bnb.nn.Linear8bitLt(64, 32, True, has_fp16_weights=False, threshold=6.0 * (kind == "8bit-thr6"))
    layer.weight.data = W.clone()
    layer = layer.to("cpu").requires_grad_(False)
    w = layer.weight
    Wd = F.dequantize_4bit(w.data, w.quant_state) if kind == "4bit" else F.int8_vectorwise_dequant(w.data, w.SCB)
    x = torch.randn(2, 3, 64, dtype=dtype, requires_grad=True)
    out = layer(x)
    assert out.dtype == dtype and out.shape == (2, 3, 32) and out.requires_grad
    first = out.detach().clone()
    result = out.clone()  # peft: clone the base output, then add the adapters
    result = result + torch.ones_like(result)
    result.float().sum().backward()
    g = torch.ones(2, 3, 32) @ Wd
    assert x.grad.dtype == dtype and x.grad.shape == x.shape
    assert rel_error(x.grad.float(), g) < (0.03 if dtype != torch.float32 else 1e-4)
    ref = x.detach().float() @ W.t() + layer.bias.float()
    assert rel_error(first.float(), ref) < (0.15 if kind == "4bit" else 0.05)
    with torch.no_grad():  # fresh: writing into one output does not change the next
        again = layer(x)
        again.add_(100.0)
        assert torch.equal(layer(x), first) and again.data_ptr() != x.data_ptr()


@pytest.mark.parametrize("quant", [NF4, INT8], ids=["nf4-nested", "int8"])
def test_10_5_peft_olora_init_requantizes_the_residual(float_checkpoint, quant):
    """OLoRA on a quantized base: peft dequantizes the weight, moves its top directions into the
    adapter and re-quantizes the residual through Params4bit(..., module=...) / Int8Params; the
    adapted model starts where the quantized model was, within one re-quantization."""
    from peft import LoraConfig, get_peft_model

    model = _load(float_checkpoint, **quant)
    model.eval()
    want = _logits(model)
    layer = model.model.layers[0].self_attn.q_proj
    before = F.dequantize_4bit(layer.weight.data, layer.weight.quant_state) if "load_in_4bit" in quant else None
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "up_proj"], init_lora_weights="olora"))
    peft_model.eval()
    lora = peft_model.base_model.model.model.layers[0].self_attn.q_proj
    base = lora.base_layer
    assert isinstance(base, bnb.nn.Linear4bit if "load_in_4bit" in quant else bnb.nn.Linear8bitLt)
    if before is not None:
        w = base.weight
        assert w.bnb_quantized and w.dtype == torch.uint8 and base.quant_state is w.quant_state
        residual = F.dequantize_4bit(w.data, w.quant_state)
        rebuilt = residual + lora.get_delta_weight("default")
        assert rel_error(rebuilt, before) < 0.1 and rel_error(residual, before) > 0.3
    else:
        assert base.weight.dtype == torch.int8 and base.weight.SCB is not None
    rel = rel_error(_logits(peft_model), want)
    assert rel < (0.05 if "load_in_4bit" in quant else 0.02), rel


def test_10_4_qlora_with_bfloat16_quant_storage_matches_uint8(float_checkpoint):
    """prepare_model_for_kbit_training leaves a bfloat16-stored Params4bit alone (its float casts
    skip the class by name); the LoRA loss and gradients equal those on uint8 storage bit for bit."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    results = []
    for storage in (torch.uint8, torch.bfloat16):
        quant = {**NF4, "bnb_4bit_quant_storage": storage, "bnb_4bit_compute_dtype": torch.float32}
        model = prepare_model_for_kbit_training(_load(float_checkpoint, **quant), use_gradient_checkpointing=False)
        assert model.model.layers[0].mlp.up_proj.weight.dtype == storage
        torch.manual_seed(0)
        model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "up_proj"], init_lora_weights=False))
        model.train()
        ids = PROMPT.repeat(2, 1)
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        results.append((loss.detach(), [p.grad for p in model.parameters() if p.requires_grad]))
    (l0, g0), (l1, g1) = results
    assert torch.equal(l0, l1) and len(g0) == len(g1) == 8
    assert all(torch.equal(a, b) for a, b in zip(g0, g1))


def test_10_4_lora_on_an_8bit_base_with_fp16_weights(float_checkpoint):
    """llm_int8_has_fp16_weight=True keeps float weights that LLM.int8() quantizes per forward;
    LoRA trains on it. peft 0.21's merge hands that float weight to int8_vectorwise_dequant (int8
    only, §4.1): refused, where the established eager kernel silently mis-scaled it by SCB/127."""
    from peft import LoraConfig, get_peft_model

    model = _load(float_checkpoint, load_in_8bit=True, llm_int8_has_fp16_weight=True)
    layer = model.model.layers[0].self_attn.q_proj
    ref = _float_model(float_checkpoint)
    assert isinstance(layer, bnb.nn.Linear8bitLt) and layer.weight.dtype == torch.float32
    assert layer.weight.has_fp16_weights is True and layer.state.has_fp16_weights is True
    assert torch.equal(layer.weight.data, ref.model.layers[0].self_attn.q_proj.weight.data)
    model.eval()
    assert rel_error(_logits(model), _logits(ref)) < 0.05
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj"], init_lora_weights=False))
    peft_model.train()
    loss = peft_model(input_ids=PROMPT, labels=PROMPT).loss
    loss.backward()
    grads = [p.grad for p in peft_model.parameters() if p.requires_grad]
    assert torch.isfinite(loss) and len(grads) == 4 and all(g.abs().sum() > 0 for g in grads)
    with pytest.raises(TypeError, match="A must have dtype in"):
        peft_model.merge_and_unload()


# -- 10.6 optimizers -----------------------------------------------------------------------------

TRAINER_OPTIMS = {
    "adamw_bnb_8bit": 8, "adamw_8bit": 8, "paged_adamw_8bit": 8, "paged_adamw_32bit": 32,
    "lion_8bit": 8, "lion_32bit": 32, "paged_lion_8bit": 8, "paged_lion_32bit": 32,
    "rmsprop_bnb": 32, "rmsprop_bnb_8bit": 8, "rmsprop_bnb_32bit": 32,
    "ademamix": 32, "ademamix_8bit": 8, "paged_ademamix_8bit": 8, "paged_ademamix_32bit": 32,
}  # fmt: skip


def test_10_6_imports_and_class_names():
    from bitsandbytes.optim import AdamW, AdEMAMix, Lion, RMSprop  # noqa: F401

    for name in ("AdamW32bit", "Adagrad", "Adagrad32bit", "Lion32bit"):
        assert getattr(bnb.optim, name).__name__ == name
    for name in ("Adam8bit", "AdamW8bit", "PagedAdam8bit", "PagedAdamW8bit"):
        cls = getattr(bnb.optim, name)
        assert cls.__name__ == name and cls.__module__.startswith("bitsandbytes.") and "bitsandbytes" in str(cls)


NAMES = (["0.weight", "1.weight", "2.weight"], ["1.bias", "2.bias"])  # the two param groups


def _tiny_net():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Embedding(300, 32), torch.nn.Linear(32, 160), torch.nn.Linear(160, 8))


def _steps(net, opt, n):
    ids = torch.randint(0, 300, (4, 6), generator=torch.Generator().manual_seed(n))
    for _ in range(n):
        opt.zero_grad()
        net(ids).pow(2).mean().backward()
        opt.step()


@pytest.mark.parametrize("name", list(TRAINER_OPTIMS))
def test_10_6_trainer_optimizer_names_build_step_and_round_trip(tmp_path, name):
    """Trainer.get_optimizer_cls_and_kwargs gives a bitsandbytes class and kwargs it accepts,
    with per-group weight_decay/lr; args.optim_bits is the requested width; state_dict /
    load_state_dict resumes bit for bit."""
    import copy

    from transformers import Trainer, TrainingArguments

    extra = "alpha=4.0,t_alpha=10,t_beta3=10" if "ademamix" in name else None
    args = TrainingArguments(str(tmp_path), optim=name, optim_args=extra, use_cpu=True, report_to=[])
    cls, kwargs = Trainer.get_optimizer_cls_and_kwargs(args)
    assert "bitsandbytes" in str(cls) and cls.__module__.startswith("bitsandbytes.optim")
    assert kwargs["optim_bits"] == TRAINER_OPTIMS[name] and kwargs["lr"] == args.learning_rate
    assert ("is_paged" in kwargs) == (not name.startswith("rmsprop"))
    net = _tiny_net()
    groups = [{"weight_decay": 0.01}, {"weight_decay": 0.0, "lr": 5e-4}]
    groups = [{**g, "params": [net.get_parameter(n) for n in ns]} for g, ns in zip(groups, NAMES)]
    opt = cls(groups, **kwargs)
    assert opt.args.optim_bits == TRAINER_OPTIMS[name]
    if extra:  # AdEMAMix's alpha / t_alpha / t_beta3 reach every group
        assert {(g["alpha"], g["t_alpha"], g["t_beta3"]) for g in opt.param_groups} == {(4.0, 10, 10)}
    assert [g["weight_decay"] for g in opt.param_groups] == [0.01, 0.0] and opt.param_groups[1]["lr"] == 5e-4
    before = net[1].weight.detach().clone()
    _steps(net, opt, 2)
    assert not torch.equal(net[1].weight, before) and all(torch.isfinite(p).all() for p in net.parameters())
    if TRAINER_OPTIMS[name] == 8:
        assert opt.state[net[1].weight]["state1"].dtype == torch.uint8
    twin = copy.deepcopy(net)
    twin_opt = cls([{**g, "params": [twin.get_parameter(n) for n in ns]} for g, ns in zip(groups, NAMES)], **kwargs)
    twin_opt.load_state_dict(copy.deepcopy(opt.state_dict()))
    _steps(net, opt, 2)
    _steps(twin, twin_opt, 2)
    for a, b in zip(net.parameters(), twin.parameters()):
        assert torch.equal(a, b)


def test_10_6_trainer_registers_embeddings_for_32bit(tmp_path, optim_manager):
    """Trainer.create_optimizer with an 8-bit bitsandbytes optimizer registers every embedding
    with GlobalOptimManager.register_module_override(module, "weight", {"optim_bits": 32})."""
    from transformers import LlamaConfig, LlamaForCausalLM, Trainer, TrainingArguments

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=1)
    model = LlamaForCausalLM(config)
    args = TrainingArguments(output_dir=str(tmp_path), optim="adamw_bnb_8bit", use_cpu=True, report_to=[])
    opt = Trainer(model=model, args=args).create_optimizer()
    opt = getattr(opt, "optimizer", opt)
    assert type(opt).__name__ == "AdamW" and opt.args.optim_bits == 8
    ids = torch.randint(0, 256, (2, 8), generator=torch.Generator().manual_seed(0))
    model(input_ids=ids, labels=ids).loss.backward()
    opt.step()
    emb, up = model.model.embed_tokens.weight, model.model.layers[0].mlp.up_proj.weight
    assert opt.state[emb]["state1"].dtype == torch.float32  # overridden to 32-bit
    assert opt.state[up]["state1"].dtype == torch.uint8
