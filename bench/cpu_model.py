"""Whole-model numbers on the CPU: a Llama-shaped model with random weights, loaded through
transformers in bf16, NF4 and 8-bit (``BitsAndBytesConfig``) and, as the peer, quantized by
torchao's int4 weight-only CPU path; side by side in one run.

Per variant: greedy decode tokens/s (batch 1, 128 new tokens after an 8-token prompt), prefill time
of 512 tokens, and one peft LoRA training step (batch 4 x 256 tokens: forward, backward, AdamW on
the adapters; not for torchao, whose int4 weights have no backward here). The checkpoint is
written once to a temporary directory (about 2.2 GB in bf16) and every variant loads it.

    python bench/cpu_model.py [--threads 2] [--layers 16] [--new-tokens 128]
                              [--only bf16,nf4,int8,torchao,nf4-all,torchao-body]
    python bench/cpu_model.py --tiny      # a 2-layer, 256-wide model: checks the script in seconds
    python bench/cpu_model.py --no-lora   # decode and prefill only
    python bench/cpu_model.py --dtype float32 --only f32,nf4,int8   # all in f32 (dense peer "f32")
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import tempfile
import time

import torch


def build_checkpoint(path: str, tiny: bool, layers: int) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    if tiny:
        config = LlamaConfig(
            vocab_size=1024,
            hidden_size=256,
            intermediate_size=704,
            num_hidden_layers=2,
            num_attention_heads=8,
            num_key_value_heads=2,
            max_position_embeddings=1024,
        )
    else:
        config = LlamaConfig(
            vocab_size=32000,
            hidden_size=2048,
            intermediate_size=5632,
            num_hidden_layers=layers,
            num_attention_heads=32,
            num_key_value_heads=4,
            max_position_embeddings=1024,
        )
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(path)


def load(path: str, variant: str, dtype: torch.dtype = torch.bfloat16):
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    kwargs: dict = {"dtype": dtype, "device_map": "cpu"}
    if variant in ("nf4", "nf4-all"):
        # transformers keeps lm_head in bf16 unless told otherwise; "nf4-all" quantizes it too, as
        # torchao's quantize_ does by default.
        skip = {"llm_int8_skip_modules": []} if variant == "nf4-all" else {}
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype, **skip
        )
    elif variant == "int8":
        kwargs["quantization_config"] = BitsAndBytesConfig(load_in_8bit=True)
    model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    if variant.startswith("torchao"):
        from torchao.prototype.quantization.int4.inference_workflow import PrototypeInt4WeightOnlyConfig
        from torchao.quantization import quantize_

        # "torchao": its default, every nn.Linear including lm_head; "torchao-body": the layers
        # BitsAndBytesConfig quantizes (lm_head stays bf16), a like-for-like peer of "nf4".
        def body(module: torch.nn.Module, fqn: str) -> bool:
            return isinstance(module, torch.nn.Linear) and fqn != "lm_head"

        quantize_(
            model,
            PrototypeInt4WeightOnlyConfig(group_size=128),
            **({"filter_fn": body} if variant != "torchao" else {}),
        )
    return model.eval()


def timed(fn, reps: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def decode_tokens_per_s(model, vocab: int, new_tokens: int, reps: int) -> float:
    prompt = torch.randint(3, vocab, (1, 8), generator=torch.Generator().manual_seed(1))

    def run() -> None:
        with torch.no_grad():
            out = model.generate(
                prompt, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, pad_token_id=0
            )
        assert out.shape[1] == 8 + new_tokens

    return new_tokens / timed(run, reps)


def prefill_s(model, vocab: int, tokens: int, reps: int) -> float:
    ids = torch.randint(3, vocab, (1, tokens), generator=torch.Generator().manual_seed(2))

    def run() -> None:
        with torch.no_grad():
            model(ids, use_cache=False)

    return timed(run, reps)


def lora_step_s(model, vocab: int, batch: int, seq: int, reps: int) -> float:
    from peft import LoraConfig, get_peft_model

    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    peft_model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules=targets, lora_dropout=0.0))
    peft_model.train()
    opt = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1e-4)
    ids = torch.randint(3, vocab, (batch, seq), generator=torch.Generator().manual_seed(3))

    def run() -> None:
        opt.zero_grad()
        loss = peft_model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()

    return timed(run, reps)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--layers", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--prefill", type=int, default=512)
    parser.add_argument("--reps", type=int, default=1)
    parser.add_argument("--only", default="bf16,nf4,int8,torchao,nf4-all,torchao-body")
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument(
        "--no-lora",
        action="store_true",
        help="skip the LoRA steps (on CPUs without bf16 arithmetic the bf16 peer's backward runs "
        "torch's slow bf16 fallback for hours)",
    )
    parser.add_argument(
        "--dtype",
        choices=["bfloat16", "float32"],
        default="bfloat16",
        help="the model's dtype and the 4-bit compute dtype; with float32 the dense peer is named "
        "f32 instead of bf16 (on CPUs without bf16 arithmetic f32 is what a user would train in)",
    )
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    dtype = getattr(torch, args.dtype)
    dense = "bf16" if dtype == torch.bfloat16 else "f32"
    variants = args.only.split(",")
    for variant in variants:  # before the checkpoint is written (minutes at full size)
        if variant in ("bf16", "f32") and variant != dense:
            parser.error(f"with --dtype {args.dtype} the dense peer is {dense!r}, not {variant!r}")
    torch.set_num_threads(args.threads)
    vocab = 1024 if args.tiny else 32000
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as path:
        build_checkpoint(path, args.tiny, args.layers)
        for variant in variants:
            model = load(path, variant, dtype)
            r = {
                "decode_tok_s": decode_tokens_per_s(model, vocab, args.new_tokens, args.reps),
                "prefill_s": prefill_s(model, vocab, args.prefill, args.reps),
            }
            if variant in (dense, "nf4", "int8") and not args.no_lora:
                r["lora_step_s"] = lora_step_s(model, vocab, 4, 256, args.reps)
            results[variant] = r
            print(variant, json.dumps({k: round(v, 3) for k, v in r.items()}), flush=True)
            del model
            gc.collect()
    base = results.get(dense)
    if base:
        for variant, r in results.items():
            ratios = {
                f"decode_x_{dense}": r["decode_tok_s"] / base["decode_tok_s"],
                f"prefill_x_{dense}": r["prefill_s"] / base["prefill_s"],
            }
            if "lora_step_s" in r and "lora_step_s" in base:
                ratios[f"lora_step_x_{dense}"] = r["lora_step_s"] / base["lora_step_s"]
            print(variant, json.dumps({k: round(v, 2) for k, v in ratios.items()}), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"threads": args.threads, "dtype": args.dtype, "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
