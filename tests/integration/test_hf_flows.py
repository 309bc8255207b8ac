"""transformers / peft / accelerate flows on CPU that failed here, checked on values.

A tiny random Llama saved from a config (no hub access); run by `nox -s tests-integration`.
"""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")
accelerate = pytest.importorskip("accelerate")

import bitsandbytes as bnb  # noqa: E402

from ._tiny_llama import load_quantized as _load  # noqa: E402
from ._tiny_llama import prompt_logits as _logits  # noqa: E402
from ._tiny_llama import rel_error, save_tiny_llama  # noqa: E402

pytestmark = pytest.mark.integration

BATCH = torch.randint(0, 256, (2, 12), generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def float_checkpoint(tmp_path_factory):
    """A tiny random Llama saved with save_pretrained."""
    return save_tiny_llama(tmp_path_factory, "tiny_llama_flows", vocab_size=256)


@pytest.mark.parametrize("threshold", [0.0, 6.0])
def test_linear8bitlt_weight_moved_after_a_forward_keeps_its_scales(threshold):
    """`layer.weight = layer.weight.to("cpu")` after a forward (peft's DoRA does it on every
    forward of an 8-bit layer on CPU) gave a weight with codes but no scales; the next forward
    moved those missing scales into the layer's state and failed."""
    torch.manual_seed(0)
    layer = bnb.nn.Linear8bitLt(64, 32, has_fp16_weights=False, threshold=threshold).to("cpu")
    x = torch.randn(3, 64)
    for training in (False, True):
        layer.train(training)
        with torch.no_grad():
            want = layer(x)
            layer.weight = layer.weight.to("cpu")
            assert torch.equal(layer(x), want)
            assert torch.equal(layer(x), want)
    assert layer.state.SCB is not None and layer.state.SCB.shape == (32,)
    sd = layer.state_dict()  # the scales are still saved
    assert torch.equal(sd["SCB"], layer.state.SCB)
    # other codes without scales are refused, not scaled with the old ones
    other = torch.randint(-127, 128, (32, 64), dtype=torch.int8, generator=torch.Generator().manual_seed(2))
    layer.weight = bnb.nn.Int8Params(other, requires_grad=False).to("cpu")
    with pytest.raises(RuntimeError, match="no row scales"):
        layer(x)


@pytest.mark.parametrize("threshold", [0.0, 6.0])
def test_peft_dora_on_8bit_trains_saves_and_merges(float_checkpoint, tmp_path, threshold):
    """DoRA on an LLM.int8() model failed on the second forward (the layer lost its row scales)."""
    from peft import LoraConfig, PeftModel, get_peft_model, prepare_model_for_kbit_training

    def base():
        return _load(float_checkpoint, load_in_8bit=True, llm_int8_threshold=threshold)

    torch.manual_seed(0)
    model = prepare_model_for_kbit_training(base(), use_gradient_checkpointing=False)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "up_proj"], use_dora=True)
    model = get_peft_model(model, config)
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = bnb.optim.AdamW8bit(trainable, lr=1e-2)
    model.train()
    losses = []
    for _ in range(3):
        opt.zero_grad()
        loss = model(input_ids=BATCH, labels=BATCH).loss
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses))) and losses[2] < losses[0] - 0.05, losses

    model.eval()
    trained = _logits(model)
    with model.disable_adapter():
        untrained = _logits(model)
    assert rel_error(untrained, trained) > 0.1
    model.save_pretrained(tmp_path / "adapter")

    reloaded = PeftModel.from_pretrained(base(), tmp_path / "adapter")
    reloaded.eval()
    assert torch.equal(_logits(reloaded), trained)
    merged = reloaded.merge_and_unload()
    layer = merged.model.layers[0].self_attn.q_proj
    assert isinstance(layer, bnb.nn.Linear8bitLt) and layer.weight.dtype == torch.int8
    # re-quantizing the merged weight to int8 costs little next to what the adapter changed
    assert rel_error(_logits(merged), trained) < 0.05


def _empty_bnb_llama(float_checkpoint, **quant):
    """The model accelerate users build: from a config under init_empty_weights, with its linear
    layers swapped for bitsandbytes ones on meta."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, BitsAndBytesConfig, LlamaForCausalLM
    from transformers.integrations.bitsandbytes import replace_with_bnb_linear

    with init_empty_weights():
        model = LlamaForCausalLM(AutoConfig.from_pretrained(float_checkpoint))
    return replace_with_bnb_linear(
        model, modules_to_not_convert=["lm_head"], quantization_config=BitsAndBytesConfig(**quant)
    )


def _scales(layer):
    """An LLM.int8() layer's row scales: on the weight until its first forward, then in its state."""
    return layer.weight.SCB if layer.weight.SCB is not None else layer.state.SCB


def test_accelerate_set_module_tensor_to_device_quantizes_int8_on_cpu(float_checkpoint):
    """accelerate materializes an Int8Params for the CPU with `Int8Params(...).to(0).to("cpu")`
    (quantize on the compute device, keep the codes on the host); with no accelerator torch
    refused the device index before bitsandbytes saw it."""
    from accelerate.utils import set_module_tensor_to_device
    from safetensors.torch import load_file

    want_model = _load(float_checkpoint, load_in_8bit=True)
    want_model.eval()
    want = _logits(want_model)
    model = _empty_bnb_llama(float_checkpoint, load_in_8bit=True)
    for name, value in load_file(float_checkpoint / "model.safetensors").items():
        set_module_tensor_to_device(model, name, "cpu", value=value)
    model.eval()
    for name, module in model.named_modules():
        if isinstance(module, bnb.nn.Linear8bitLt):
            ref = want_model.get_submodule(name)
            assert module.weight.dtype == torch.int8 and module.weight.device.type == "cpu"
            assert torch.equal(module.weight.data, ref.weight.data)
            assert torch.equal(module.weight.SCB, _scales(ref))
    assert torch.equal(_logits(model), want)


@pytest.mark.parametrize("device_map", [{"": "cpu"}, "auto"])
def test_accelerate_load_and_quantize_model_8bit_on_cpu(float_checkpoint, device_map):
    """`accelerate.utils.load_and_quantize_model` with LLM.int8() on a CPU-only host failed the
    same way; now it gives the model transformers loads, bit for bit."""
    from accelerate import init_empty_weights
    from accelerate.utils import BnbQuantizationConfig, load_and_quantize_model
    from transformers import AutoConfig, LlamaForCausalLM

    want_model = _load(float_checkpoint, load_in_8bit=True)
    want_model.eval()
    with init_empty_weights():
        empty = LlamaForCausalLM(AutoConfig.from_pretrained(float_checkpoint))
    config = BnbQuantizationConfig(load_in_8bit=True, llm_int8_threshold=6.0, torch_dtype=torch.float32)
    model = load_and_quantize_model(
        empty, bnb_quantization_config=config, weights_location=float_checkpoint, device_map=device_map
    )
    model.eval()
    layer = model.model.layers[1].mlp.down_proj
    assert isinstance(layer, bnb.nn.Linear8bitLt) and layer.weight.dtype == torch.int8
    want = _logits(want_model)
    assert torch.equal(_logits(model), want)
    assert torch.equal(_logits(model), want)  # and again, after the layers moved their scales
