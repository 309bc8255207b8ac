"""transformers / peft / accelerate flows on a tiny local Llama (no hub access): run by `nox -s tests-integration`."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")
pytest.importorskip("accelerate")

import bitsandbytes as bnb  # noqa: E402

from ._tiny_llama import PROMPT, save_tiny_llama  # noqa: E402
from ._tiny_llama import load_quantized as _load  # noqa: E402
from ._tiny_llama import prompt_logits as _logits  # noqa: E402

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def float_checkpoint(tmp_path_factory):
    """A tiny random Llama saved with save_pretrained."""
    return save_tiny_llama(tmp_path_factory, "tiny_llama", vocab_size=128)


FOUR_BIT = [
    pytest.param(
        {"bnb_4bit_quant_type": qt, "bnb_4bit_use_double_quant": dq, "bnb_4bit_compute_dtype": cd},
        id=f"{qt}-dq{int(dq)}-{str(cd)[6:]}",
    )
    for qt in ("nf4", "fp4")
    for dq in (False, True)
    for cd in (torch.bfloat16, torch.float32)
]


@pytest.mark.parametrize("cfg", FOUR_BIT)
def test_4bit_load_generate_save_reload_dequantize(float_checkpoint, tmp_path, cfg):
    from transformers import AutoModelForCausalLM

    ref = AutoModelForCausalLM.from_pretrained(float_checkpoint, dtype=torch.float32)
    model = _load(float_checkpoint, load_in_4bit=True, **cfg)
    layer = model.model.layers[0].self_attn.q_proj
    assert isinstance(layer, bnb.nn.Linear4bit)
    assert layer.weight.quant_type == cfg["bnb_4bit_quant_type"]
    assert layer.weight.quant_state.nested == cfg["bnb_4bit_use_double_quant"]
    logits = _logits(model)
    # 4-bit logits stay close to the float model's
    rel = (logits - _logits(ref)).norm() / _logits(ref).norm()
    print(f"{cfg}: relative logit error vs float {rel:.4f}")
    assert rel < 0.35
    out = model.generate(PROMPT, max_new_tokens=5, do_sample=False)
    assert out.shape == (1, PROMPT.shape[1] + 5)

    model.save_pretrained(tmp_path)
    again = AutoModelForCausalLM.from_pretrained(tmp_path, device_map="cpu")
    assert isinstance(again.model.layers[0].self_attn.q_proj, bnb.nn.Linear4bit)
    assert torch.equal(_logits(again), logits)
    assert torch.equal(again.generate(PROMPT, max_new_tokens=5, do_sample=False), out)

    # An explicit dtype: transformers 5.23 falls back to config.dtype, which is a string here.
    model.dequantize(dtype=torch.float32)
    assert isinstance(model.model.layers[0].self_attn.q_proj, torch.nn.Linear)
    assert not isinstance(model.model.layers[0].self_attn.q_proj, bnb.nn.Linear4bit)
    deq = _logits(model)
    assert torch.allclose(deq, logits, atol=0.05, rtol=0.05)


def test_8bit_load_generate_save_reload(float_checkpoint, tmp_path):
    from transformers import AutoModelForCausalLM

    model = _load(float_checkpoint, load_in_8bit=True)
    layer = model.model.layers[0].mlp.up_proj
    assert isinstance(layer, bnb.nn.Linear8bitLt) and layer.weight.dtype == torch.int8
    model.eval()
    logits = _logits(model)
    ref = _logits(AutoModelForCausalLM.from_pretrained(float_checkpoint, dtype=torch.float32))
    rel = (logits - ref).norm() / ref.norm()
    print(f"8-bit: relative logit error vs float {rel:.4f}")
    assert rel < 0.1
    out = model.generate(PROMPT, max_new_tokens=5, do_sample=False)
    model.save_pretrained(tmp_path)
    again = AutoModelForCausalLM.from_pretrained(tmp_path, device_map="cpu")
    again.eval()
    assert isinstance(again.model.layers[0].mlp.up_proj, bnb.nn.Linear8bitLt)
    assert torch.equal(_logits(again), logits)
    assert torch.equal(again.generate(PROMPT, max_new_tokens=5, do_sample=False), out)


def test_peft_lora_qlora_training(float_checkpoint, tmp_path):
    from peft import LoraConfig, PeftModel, get_peft_model, prepare_model_for_kbit_training

    torch.manual_seed(0)
    model = _load(
        float_checkpoint,
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.float32,
    )
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    lora = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj", "up_proj"], lora_dropout=0.0)
    model = get_peft_model(model, lora)
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert trainable and all(not isinstance(p, bnb.nn.Params4bit) for p in trainable)
    batch = torch.randint(0, 128, (4, 16), generator=torch.Generator().manual_seed(1))
    opt = torch.optim.AdamW(trainable, lr=5e-3)

    def loss_fn():
        return model(input_ids=batch, labels=batch).loss

    model.train()
    before = loss_fn().item()
    for _ in range(8):
        opt.zero_grad()
        loss = loss_fn()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        after = loss_fn().item()
    print(f"LoRA on 4-bit: loss before {before:.4f} after {after:.4f}")
    assert after < before - 0.05

    model.save_pretrained(tmp_path / "adapter")
    with torch.no_grad():
        trained = model(PROMPT).logits
    base = _load(
        float_checkpoint,
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.float32,
    )
    reloaded = PeftModel.from_pretrained(base, tmp_path / "adapter")
    reloaded.eval()
    with torch.no_grad():
        got = reloaded(PROMPT).logits
    assert torch.allclose(got, trained, atol=1e-4)

    with reloaded.disable_adapter(), torch.no_grad():
        untrained = reloaded(PROMPT).logits
    # peft merges into the 4-bit weight: dequantize, add the delta, re-quantize via Params4bit(**__dict__)
    merged = reloaded.merge_and_unload()
    layer = merged.model.layers[0].self_attn.q_proj
    assert isinstance(layer, bnb.nn.Linear4bit) and layer.weight.bnb_quantized
    with torch.no_grad():
        merged_logits = merged(PROMPT).logits
    rel = (merged_logits - trained).norm() / trained.norm()
    base_rel = (untrained - trained).norm() / trained.norm()
    print(f"merged 4-bit model vs adapter model: relative logit difference {rel:.4f} (base model: {base_rel:.4f})")
    # re-quantizing the merged weight costs 4-bit rounding again, but the adapter's effect survives
    assert rel < 0.5 * base_rel


@pytest.mark.parametrize("kind", ["4bit", "8bit"])
def test_trainer_bf16_lora_follows_the_float_run(float_checkpoint, tmp_path, kind):
    """transformers' Trainer with ``bf16=True`` on the CPU runs the forward under
    ``torch.autocast("cpu", torch.bfloat16)``: QLoRA / LoRA on an 8-bit base with gradient
    checkpointing trains, each step's loss within bf16 rounding of the same run without it."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import Trainer, TrainingArguments

    quant = {"load_in_8bit": True}
    if kind == "4bit":
        quant = {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4", "bnb_4bit_use_double_quant": True}
    batch = torch.randint(0, 128, (8, 16), generator=torch.Generator().manual_seed(1))
    data = [{"input_ids": row, "labels": row} for row in batch]
    losses = {}
    for bf16 in (False, True):
        torch.manual_seed(0)
        model = prepare_model_for_kbit_training(_load(float_checkpoint, **quant), use_gradient_checkpointing=True)
        lora = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj", "up_proj"], lora_dropout=0.0)
        args = TrainingArguments(
            output_dir=str(tmp_path / f"run-{bf16}"), per_device_train_batch_size=4, max_steps=8,
            learning_rate=5e-3, bf16=bf16, use_cpu=True, report_to=[], logging_steps=1, save_strategy="no",
            disable_tqdm=True, dataloader_num_workers=0, seed=0,
        )  # fmt: skip
        trainer = Trainer(model=get_peft_model(model, lora), args=args, train_dataset=data)
        trainer.train()
        losses[bf16] = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    print(f"{kind}: f32 {losses[False]}, bf16 autocast {losses[True]}")
    assert len(losses[True]) == len(losses[False]) == 8
    assert losses[False][-1] < losses[False][0] - 0.05
    for a, b in zip(losses[False], losses[True]):
        assert abs(a - b) < 0.01
