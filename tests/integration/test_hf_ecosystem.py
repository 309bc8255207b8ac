"""accelerate offloading, peft merges, generation variants and save/reload variants on the CPU,
checked on values against the matching resident / unmerged / default flow.

A tiny random Llama saved from a config (no hub access); run by `nox -s tests-integration`.
"""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")
accelerate = pytest.importorskip("accelerate")

import bitsandbytes as bnb  # noqa: E402
import bitsandbytes.functional as F  # noqa: E402

from ._tiny_llama import PROMPT, rel_error, save_tiny_llama  # noqa: E402
from ._tiny_llama import load_quantized as _load  # noqa: E402
from ._tiny_llama import prompt_logits as _logits  # noqa: E402

pytestmark = pytest.mark.integration

NF4 = {
    "load_in_4bit": True,
    "bnb_4bit_quant_type": "nf4",
    "bnb_4bit_use_double_quant": True,
    "bnb_4bit_compute_dtype": torch.float32,
}
NF4_FLAT = {**NF4, "bnb_4bit_use_double_quant": False}
INT8 = {"load_in_8bit": True}
BATCH = torch.randint(0, 256, (2, 12), generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def float_checkpoint(tmp_path_factory):
    """A tiny random Llama saved with save_pretrained."""
    return save_tiny_llama(tmp_path_factory, "tiny_llama_ecosystem", vocab_size=256)


def _generate(model, **kwargs):
    return model.generate(PROMPT, max_new_tokens=5, pad_token_id=0, **kwargs)


# -- accelerate offloading -----------------------------------------------------------------------

DISK_MAP = {
    "model.embed_tokens": "cpu",
    "model.layers.0": "cpu",
    "model.layers.1": "disk",
    "model.norm": "cpu",
    "model.rotary_emb": "cpu",
    "lm_head": "cpu",
}


def _offload(model, how, folder):
    from accelerate import cpu_offload, disk_offload, dispatch_model

    if how == "cpu_offload":
        return cpu_offload(model, execution_device="cpu")
    if how == "disk_offload":
        return disk_offload(model, offload_dir=folder, execution_device="cpu")
    return dispatch_model(model, device_map=DISK_MAP, offload_dir=folder, main_device="cpu")


@pytest.mark.parametrize("threshold", [0.0, 6.0])
@pytest.mark.parametrize("how", ["cpu_offload", "disk_offload", "dispatch-disk"])
def test_accelerate_offloaded_8bit_model_matches_the_resident_one(float_checkpoint, tmp_path, how, threshold):
    """accelerate's offloading hooks bring an offloaded LLM.int8() weight back with
    ``Int8Params(codes).to(0).to("cpu")`` and then set the checkpoint's row scales. After a forward
    the scales live in the layer's state, so the weight it rebuilt had none, and without an
    accelerator ``.to(0)`` left them None: the next forward failed in accelerate
    ('NoneType' object has no attribute 'to'). Now every forward and generate() equal the
    resident model's, bit for bit."""
    resident = _load(float_checkpoint, load_in_8bit=True, llm_int8_threshold=threshold)
    resident.eval()
    want, want_tokens = _logits(resident), _generate(resident, do_sample=False)

    model = _load(float_checkpoint, load_in_8bit=True, llm_int8_threshold=threshold)
    model.eval()
    _logits(model)  # a forward first: the scales move into the layers' state
    model = _offload(model, how, tmp_path / "offload")
    assert model.model.layers[1].self_attn.q_proj.weight.device.type == "meta"  # offloaded
    for _ in range(2):
        assert torch.equal(_logits(model), want)
    assert torch.equal(_generate(model, do_sample=False), want_tokens)
    assert model.model.layers[1].self_attn.q_proj.weight.device.type == "meta"


def test_accelerate_infer_auto_device_map_offloads_8bit_layers_to_disk(float_checkpoint, tmp_path):
    """infer_auto_device_map with a CPU memory budget smaller than the quantized model sends the
    last layers to disk; the dispatched model gives the resident one's logits and tokens."""
    from accelerate import dispatch_model, infer_auto_device_map
    from accelerate.utils import compute_module_sizes

    resident = _load(float_checkpoint, **INT8)
    resident.eval()
    want, want_tokens = _logits(resident), _generate(resident, do_sample=False)
    model = _load(float_checkpoint, **INT8)
    model.eval()
    sizes = compute_module_sizes(model)
    budget = sizes[""] - sizes["model.layers.1"]
    device_map = infer_auto_device_map(model, max_memory={"cpu": budget}, no_split_module_classes=["LlamaDecoderLayer"])
    assert device_map["model.layers.0"] == "cpu" and device_map["model.layers.1"] == "disk", device_map
    model = dispatch_model(model, device_map=device_map, offload_dir=tmp_path / "offload", main_device="cpu")
    for _ in range(2):
        assert torch.equal(_logits(model), want)
    assert torch.equal(_generate(model, do_sample=False), want_tokens)


def test_int8params_bare_index_without_accelerator_gives_codes_scales():
    """``Int8Params(codes).to(0)`` on a host without an accelerator (accelerate's 'quantize on the
    compute device, keep it on the host'): codes without scales come back unchanged with their row
    maxima as scales, as the established release's quantization of int8 data gives them."""
    if torch.accelerator.is_available():  # pragma: no cover - depends on the machine
        pytest.skip("with an accelerator .to(0) is that device")
    codes = torch.randint(-127, 128, (8, 16), dtype=torch.int8, generator=torch.Generator().manual_seed(0))
    codes[:, 3] = 127  # every row LLM.int8() makes reaches +-127
    codes[2, 3] = -127
    w = bnb.nn.Int8Params(codes.clone(), requires_grad=False).to(0).to("cpu")
    assert type(w) is bnb.nn.Int8Params and w.device.type == "cpu"
    assert torch.equal(w.data, codes) and torch.equal(w.CB, codes)
    assert torch.equal(w.SCB, torch.full((8,), 127.0))
    # scales it has are kept, and float data is still quantized
    scb = torch.rand(8) + 0.5
    kept = bnb.nn.Int8Params(codes.clone(), requires_grad=False, SCB=scb).to(0)
    assert torch.equal(kept.SCB, scb) and torch.equal(kept.data, codes)
    floats = torch.randn(8, 16, generator=torch.Generator().manual_seed(1))
    q = bnb.nn.Int8Params(floats, requires_grad=False).to(0)
    CB, SCB, _ = F.int8_vectorwise_quant(floats.half())
    assert torch.equal(q.data, CB) and torch.equal(q.SCB, SCB)


@pytest.mark.parametrize("quant", [NF4, NF4_FLAT], ids=["nf4-nested", "nf4"])
def test_accelerate_offloading_4bit_layers_is_refused_clearly(float_checkpoint, tmp_path, quant):
    """accelerate's hooks move an offloaded weight to meta, which moves a 4-bit weight's quant state
    there in place (as the established release does): the statistics can never come back. The
    forward failed with torch's 'Cannot copy out of meta tensor'; it now says what is unsupported.
    A dispatch that keeps the 4-bit layers resident gives the same logits and tokens."""
    from accelerate import dispatch_model

    resident = _load(float_checkpoint, **quant)
    want, want_tokens = _logits(resident), _generate(resident, do_sample=False)
    kept = dispatch_model(_load(float_checkpoint, **quant), device_map={"": "cpu"}, main_device="cpu")
    assert torch.equal(_logits(kept), want)
    assert torch.equal(_generate(kept, do_sample=False), want_tokens)

    model = _offload(_load(float_checkpoint, **quant), "cpu_offload", tmp_path / "offload")
    with pytest.raises(NotImplementedError, match="offloading 4-bit layers is not supported"):
        _logits(model)


# -- peft: merging LoRA into a quantized base ----------------------------------------------------

TARGETS = ["q_proj", "v_proj", "up_proj"]


def _lora(float_checkpoint, quant, scale=0.05):
    """A LoRA model (random non-zero adapters, their products scaled by ``scale``) on a quantized base."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS, lora_dropout=0.0, init_lora_weights=False)
    model = get_peft_model(_load(float_checkpoint, **quant), config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.mul_(scale)
    model.eval()
    return model


def _dequantized(layer):
    w = layer.weight
    if isinstance(w, bnb.nn.Params4bit):
        return F.dequantize_4bit(w.data, w.quant_state).float()
    scb = w.SCB if w.SCB is not None else layer.state.SCB
    return w.data.float() * scb.float()[:, None] / 127


def _fresh_codes(layer, w):
    """The codes a fresh quantization of the float weight ``w`` gives with ``layer``'s settings."""
    weight = layer.weight
    if isinstance(weight, bnb.nn.Params4bit):
        qs = weight.quant_state
        packed, _ = F.quantize_4bit(w, blocksize=qs.blocksize, compress_statistics=qs.nested, quant_type=qs.quant_type)
        return packed
    return F.int8_vectorwise_quant(w.half())[0]


@pytest.mark.parametrize("quant", [NF4, NF4_FLAT, INT8], ids=["nf4-nested", "nf4", "int8"])
def test_peft_lora_merge_unmerge_and_safe_merge_on_a_quantized_base(float_checkpoint, quant):
    """merge_adapter() on a 4-bit / 8-bit base gives exactly the codes a fresh quantization of
    (W + delta) gives, so the merged logits stay within that rounding of the adapter model's;
    unmerge_adapter() restores W within two re-quantizations; merge_and_unload(safe_merge=True)
    gives the same model as the plain merge."""
    model = _lora(float_checkpoint, quant)
    want = _logits(model)
    with model.disable_adapter():
        base = _logits(model)
    from peft.tuners.lora import LoraLayer

    layers = {n: m for n, m in model.named_modules() if isinstance(m, LoraLayer)}
    assert all(isinstance(m.base_layer, (bnb.nn.Linear4bit, bnb.nn.Linear8bitLt)) for m in layers.values())
    assert len(layers) == 2 * len(TARGETS)
    before = {n: _dequantized(m.base_layer).clone() for n, m in layers.items()}
    deltas = {n: m.get_delta_weight("default").float() for n, m in layers.items()}

    model.merge_adapter()
    for n, m in layers.items():
        assert torch.equal(m.base_layer.weight.data, _fresh_codes(m.base_layer, before[n] + deltas[n])), n
    merged = _logits(model)
    rel_merged, rel_base = rel_error(merged, want), rel_error(base, want)
    four_bit = "load_in_4bit" in quant
    print(f"{list(quant)[0]}: merged vs adapter {rel_merged:.4f}, base vs adapter {rel_base:.4f}")
    assert rel_merged < (0.15 if four_bit else 0.02) and rel_merged < rel_base

    model.unmerge_adapter()
    for n, m in layers.items():
        err = rel_error(_dequantized(m.base_layer), before[n])
        assert err < (0.2 if four_bit else 0.01), (n, err)
    assert rel_error(_logits(model), want) < (0.15 if four_bit else 0.02)

    safe = _lora(float_checkpoint, quant).merge_and_unload(safe_merge=True)
    plain = _lora(float_checkpoint, quant).merge_and_unload()
    cls = bnb.nn.Linear4bit if four_bit else bnb.nn.Linear8bitLt
    assert isinstance(safe.model.layers[0].self_attn.q_proj, cls)
    assert torch.equal(_logits(safe), _logits(plain))
    assert torch.equal(_logits(safe), merged)


@pytest.mark.parametrize("quant", [NF4, INT8], ids=["nf4-nested", "int8"])
def test_prepare_for_kbit_training_gradient_checkpointing_reentrant_or_not(float_checkpoint, quant):
    """prepare_model_for_kbit_training with gradient checkpointing, use_reentrant True and False:
    the loss and every LoRA gradient equal those without checkpointing, bit for bit."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    results = []
    for reentrant in (None, True, False):
        torch.manual_seed(0)
        kwargs = {"use_gradient_checkpointing": reentrant is not None}
        if reentrant is not None:
            kwargs["gradient_checkpointing_kwargs"] = {"use_reentrant": reentrant}
        model = prepare_model_for_kbit_training(_load(float_checkpoint, **quant), **kwargs)
        config = LoraConfig(r=4, lora_alpha=8, target_modules=[*TARGETS, "down_proj"], init_lora_weights=False)
        model = get_peft_model(model, config)
        model.train()
        loss = model(input_ids=BATCH, labels=BATCH).loss
        loss.backward()
        grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
        assert len(grads) == 16 and all(g is not None and g.abs().sum() > 0 for g in grads.values())
        results.append((loss.detach(), grads))
    (loss0, grads0), *checkpointed = results
    for loss, grads in checkpointed:
        assert torch.equal(loss, loss0)
        assert grads.keys() == grads0.keys() and all(torch.equal(grads[k], grads0[k]) for k in grads0)


# -- generation variants -------------------------------------------------------------------------


@pytest.mark.parametrize("quant", [NF4, INT8], ids=["nf4-nested", "int8"])
def test_generation_variants_agree_where_the_math_says_equal(float_checkpoint, quant):
    """On a quantized model: greedy == beam search with one beam == no cache == a static cache;
    sampling with a seed repeats; beam search (3 beams) repeats; the per-step logits of generate()
    equal a full forward of the generated sequence within float rounding."""
    from transformers import AutoModelForCausalLM

    model = _load(float_checkpoint, **quant)
    model.eval()
    greedy = _generate(model, do_sample=False)
    assert greedy.shape == (1, PROMPT.shape[1] + 5)
    assert torch.equal(_generate(model, do_sample=False, num_beams=1), greedy)
    assert torch.equal(_generate(model, do_sample=False, use_cache=False), greedy)
    assert torch.equal(_generate(model, do_sample=False, cache_implementation="static"), greedy)
    sampled = []
    for _ in range(2):
        torch.manual_seed(3)
        sampled.append(_generate(model, do_sample=True, top_k=50))
    assert torch.equal(sampled[0], sampled[1]) and sampled[0].shape == greedy.shape
    beams = [_generate(model, do_sample=False, num_beams=3) for _ in range(2)]
    assert torch.equal(beams[0], beams[1]) and beams[0].shape == greedy.shape

    out = model.generate(
        PROMPT, max_new_tokens=4, do_sample=False, output_logits=True, return_dict_in_generate=True, pad_token_id=0
    )
    steps = torch.stack(out.logits, 1)[0].float()
    full = _logits_of(model, out.sequences)[0, PROMPT.shape[1] - 1 : -1]
    torch.testing.assert_close(steps, full, rtol=1e-5, atol=1e-5)
    # the float model only for sanity: same shape, finite
    ref = AutoModelForCausalLM.from_pretrained(float_checkpoint, dtype=torch.float32)
    assert _generate(ref, do_sample=False).shape == greedy.shape and torch.isfinite(steps).all()


def _logits_of(model, ids):
    with torch.no_grad():
        return model(ids).logits.float()


# -- save / reload variants ----------------------------------------------------------------------


@pytest.mark.parametrize("quant", [NF4, INT8], ids=["nf4-nested", "int8"])
def test_sharded_safetensors_and_torch_bin_reload_bit_for_bit(float_checkpoint, tmp_path, quant):
    """save_pretrained with a small max_shard_size (an index and several safetensors shards), and
    the same state dict as a torch pickle (pytorch_model.bin, which transformers 5 still loads):
    from_pretrained gives the same logits and tokens, bit for bit."""
    from transformers import AutoModelForCausalLM

    model = _load(float_checkpoint, **quant)
    model.eval()
    want, want_tokens = _logits(model), _generate(model, do_sample=False)
    sharded = tmp_path / "sharded"
    model.save_pretrained(sharded, max_shard_size="20KB")
    assert (sharded / "model.safetensors.index.json").exists()
    assert len(list(sharded.glob("model-*.safetensors"))) > 2
    as_bin = tmp_path / "bin"
    model.save_pretrained(as_bin)
    (as_bin / "model.safetensors").unlink()
    torch.save({k: v.clone() for k, v in model.state_dict().items()}, as_bin / "pytorch_model.bin")
    for folder in (sharded, as_bin):
        again = AutoModelForCausalLM.from_pretrained(folder, device_map="cpu")
        again.eval()
        layer = again.model.layers[1].mlp.down_proj
        assert isinstance(layer, bnb.nn.Linear4bit if "load_in_4bit" in quant else bnb.nn.Linear8bitLt)
        assert torch.equal(_logits(again), want), folder.name
        assert torch.equal(_generate(again, do_sample=False), want_tokens), folder.name


def test_8bit_dequantize_gives_the_int8_weights_in_float(float_checkpoint):
    """model.dequantize() of an LLM.int8() model: each layer's float weight is CB * SCB / 127; the
    logits differ from the quantized model's only by LLM.int8()'s rounding of the activations."""
    model = _load(float_checkpoint, **INT8)
    model.eval()
    want = _logits(model)
    codes = {n: _dequantized(m) for n, m in model.named_modules() if isinstance(m, bnb.nn.Linear8bitLt)}
    assert len(codes) == 14
    model.dequantize(dtype=torch.float32)  # transformers 5 falls back to config.dtype, a string here
    for name, w in codes.items():
        layer = model.get_submodule(name)
        assert type(layer) is torch.nn.Linear and layer.weight.dtype == torch.float32
        torch.testing.assert_close(layer.weight, w, rtol=1e-6, atol=1e-7)
    rel = rel_error(_logits(model), want)
    print(f"8-bit dequantized vs quantized logits: {rel:.4f}")
    assert rel < 0.02
