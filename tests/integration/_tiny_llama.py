"""A tiny random Llama checkpoint for the integration tests (built from a config, offline)."""

from __future__ import annotations

import importlib.metadata

import pytest
import torch


def save_tiny_llama(tmp_path_factory, name: str, vocab_size: int):
    """Save a 2-layer random Llama (hidden 64) with save_pretrained and return its folder; skip
    where transformers cannot see bitsandbytes as an installed distribution."""
    try:  # transformers gates on the installed distribution's version, not on the import path
        importlib.metadata.version("bitsandbytes")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover - depends on the environment
        pytest.skip("bitsandbytes is not installed as a distribution (run `nox -s tests-integration`)")
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=False,
    )
    path = tmp_path_factory.mktemp(name)
    LlamaForCausalLM(config).save_pretrained(path)
    return path


PROMPT = torch.tensor([[1, 5, 9, 17, 33, 2, 70]])


def load_quantized(path, **quant):
    """The checkpoint at ``path`` loaded on the CPU through ``BitsAndBytesConfig(**quant)``."""
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    return AutoModelForCausalLM.from_pretrained(
        path, quantization_config=BitsAndBytesConfig(**quant), device_map="cpu", dtype=torch.float32
    )


def prompt_logits(model):
    """``model``'s float logits for ``PROMPT``."""
    with torch.no_grad():
        return model(PROMPT).logits.float()


def rel_error(a: torch.Tensor, b: torch.Tensor) -> float:
    """``|a - b| / |b|`` (Frobenius norms)."""
    return ((a - b).norm() / b.norm()).item()
