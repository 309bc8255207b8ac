"""FSDP QLoRA on CPU: 2 spawned processes over gloo (the worker bodies are in fsdp_workers.py).

FSDP2 (``fully_shard``): 4-bit weights with bf16, fp32 and uint8 ``quant_storage`` shard into
DTensors; forward and backward equal the unsharded model, the packed bytes (NaN bit patterns
included) survive all-gather, the state dict keeps every quant-state entry and loads back into
fresh sharded and unsharded models (plain and distributed-checkpoint APIs), and the 8-bit and
32-bit optimizers step each rank's shard. FSDP1 (``FullyShardedDataParallel``): the same with the
storage dtype matching the model's, both ``use_orig_params`` settings.
"""

from __future__ import annotations

import socket

import pytest

torch = pytest.importorskip("torch")
dist = pytest.importorskip("torch.distributed")
if not dist.is_available() or not dist.is_gloo_available():
    pytest.skip("torch.distributed with gloo is not available", allow_module_level=True)

import fsdp_workers  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402

TORCH_VERSION = tuple(int(p) for p in torch.__version__.split("+")[0].split(".")[:2])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn(fn, *args) -> None:
    mp.spawn(fn, args=(_free_port(), *args), nprocs=fsdp_workers.WORLD, join=True)


@pytest.mark.parametrize(
    ("storage", "dtype"), [("bfloat16", "bfloat16"), ("float32", "float32"), ("uint8", "bfloat16")]
)
def test_fsdp2_qlora_matches_unsharded(storage: str, dtype: str) -> None:
    if TORCH_VERSION < (2, 13):
        pytest.skip(
            "FSDP2 QLoRA is verified on torch 2.13; on 2.8 fully_shard's gradients of the sharded 4-bit "
            "model differ and uint8 storage cannot require grad (versions between are untested)"
        )
    _spawn(fsdp_workers.fsdp2_qlora, storage, dtype)


def test_fsdp2_optimizers_step_dtensor_shards() -> None:
    _spawn(fsdp_workers.fsdp2_optimizers)


@pytest.mark.parametrize(
    ("use_orig_params", "storage"), [("True", "bfloat16"), ("False", "bfloat16"), ("False", "float32")]
)
def test_fsdp1_qlora_matches_unsharded(use_orig_params: str, storage: str) -> None:
    _spawn(fsdp_workers.fsdp1_qlora, use_orig_params, storage)


def test_fsdp1_storage_dtype_error_names_quant_storage() -> None:
    _spawn(fsdp_workers.fsdp1_storage_error)


@pytest.mark.parametrize("use_orig_params", ["True", "False"])
def test_fsdp1_8bit_optimizer_state_resumes(use_orig_params: str) -> None:
    _spawn(fsdp_workers.fsdp1_optimizer_state, use_orig_params)
