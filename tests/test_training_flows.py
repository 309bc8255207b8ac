"""Training flows combining the quantized modules and optimizers with torch features.

* Activation checkpointing (reentrant and not) around QLoRA / LLM.int8() blocks: gradients equal
  the un-checkpointed run bit for bit.
* DDP (2 gloo processes) with AdamW8bit over a frozen 4-bit base with LoRA adapters.
* FSDP2 checkpointing through torch.distributed.checkpoint: the bnb optimizers' per-shard state
  is saved as DTensors, so a full optimizer state dict gathers every rank's shard and a sharded
  ``dcp.save`` keeps each rank's part; the resumed run continues exactly on every rank.
The multi-process bodies are in training_workers.py.
"""

from __future__ import annotations

import socket
import warnings

import pytest
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

import bitsandbytes as bnb

TORCH_VERSION = tuple(int(p) for p in torch.__version__.split("+")[0].split(".")[:2])


# ------------------------------------------------------------------------ activation checkpointing


class _Block(nn.Module):
    def __init__(self, kind: str, dtype: torch.dtype) -> None:
        super().__init__()
        if kind == "4bit":
            self.base = bnb.nn.Linear4bit(32, 48, compute_dtype=dtype, quant_type="nf4")
        else:
            threshold, fp16_weights = {"int8": (0.0, False), "int8-outliers": (6.0, False), "int8-fp16w": (0.0, True)}[
                kind
            ]
            self.base = bnb.nn.Linear8bitLt(32, 48, has_fp16_weights=fp16_weights, threshold=threshold)
        self.lora_A = nn.Linear(32, 4, bias=False, dtype=dtype)
        self.lora_B = nn.Linear(4, 48, bias=False, dtype=dtype)
        nn.init.normal_(self.lora_B.weight, std=0.1)
        self.out = nn.Linear(48, 32, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(nn.functional.gelu(self.base(x) + self.lora_B(self.lora_A(x))))


def _checkpointed_grads(kind: str, dtype: torch.dtype, reentrant: bool | None) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    blocks = nn.ModuleList([_Block(kind, dtype), _Block(kind, dtype)]).to("cpu")
    torch.manual_seed(1)
    x = torch.randn(6, 32, dtype=dtype)
    x[:, 2] *= 30  # outlier column for the threshold variant
    x.requires_grad_()
    for _ in range(2):  # the second pass accumulates onto the first's gradients
        h = x
        for b in blocks:
            h = b(h) if reentrant is None else checkpoint(b, h, use_reentrant=reentrant)
        (h.float() ** 2).sum().backward()
    grads = {n: p.grad for n, p in blocks.named_parameters() if p.grad is not None}
    grads["x"] = x.grad
    return grads


@pytest.mark.parametrize("reentrant", [True, False])
@pytest.mark.parametrize(
    ("kind", "dtype"),
    [
        ("4bit", torch.float32),
        ("4bit", torch.bfloat16),
        ("int8", torch.float16),
        ("int8-outliers", torch.float32),
        ("int8-fp16w", torch.bfloat16),
    ],
)
def test_activation_checkpointing_gives_the_same_gradients(kind, dtype, reentrant):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plain = _checkpointed_grads(kind, dtype, None)
        ckpt = _checkpointed_grads(kind, dtype, reentrant)
    assert plain.keys() == ckpt.keys() and any("lora_A" in k for k in plain)
    if kind == "int8-fp16w":
        assert any(k.endswith("base.weight") for k in plain)  # the 16-bit weight trains too
    for k in plain:
        assert torch.equal(plain[k], ckpt[k]), k


# ------------------------------------------------------------------------------ multi-process

dist = pytest.importorskip("torch.distributed")
_HAS_GLOO = dist.is_available() and dist.is_gloo_available()
needs_gloo = pytest.mark.skipif(not _HAS_GLOO, reason="torch.distributed with gloo is not available")


def _spawn(fn, *args) -> None:
    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(fn, args=(port, *args), nprocs=2, join=True)


@needs_gloo
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_ddp_adamw8bit_qlora_matches_averaged_single_process(dtype):
    import training_workers

    _spawn(training_workers.ddp_adamw8bit, dtype)


@needs_gloo
@pytest.mark.skipif(TORCH_VERSION < (2, 13), reason="FSDP2 QLoRA is verified on torch 2.13 (see test_fsdp.py)")
@pytest.mark.parametrize(
    ("opt_name", "mode"),
    [
        ("AdamW8bit", "full"),
        ("AdamW8bit", "sharded"),
        ("AdamW32bit", "full"),
        ("AdEMAMix8bit", "full"),
        ("AdEMAMix8bit", "sharded"),
        ("PagedAdamW8bit", "sharded"),
    ],
)
def test_fsdp2_distributed_checkpoint_optimizer_state_resumes_on_every_rank(opt_name, mode):
    """Before the fix the shard states were plain tensors: a full optimizer state dict held rank
    0's shard under the full parameter's name (rank 1 resumed with rank 0's moments), and a
    sharded dcp.save kept one rank's copy of each."""
    import training_workers

    _spawn(training_workers.fsdp2_dcp_optimizer_resume, opt_name, mode)
