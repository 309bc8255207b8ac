"""FSDP-QLoRA end to end: a tiny Llama loaded in 4 bit by transformers (``bnb_4bit_quant_storage``),
peft LoRA adapters, a few AdamW steps under FSDP1 and FSDP2 on 2 gloo processes, each wrapped by torch
directly and by accelerate's FullyShardedDataParallelPlugin. The loss goes down and follows the
single-process run step by step. Run by `nox -s tests-integration`."""

from __future__ import annotations

import json
import socket

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("peft")
pytest.importorskip("accelerate")
if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
    pytest.skip("torch.distributed with gloo is not available", allow_module_level=True)

import torch.multiprocessing as mp  # noqa: E402

from . import fsdp_qlora_worker as worker  # noqa: E402
from .test_transformers_peft import float_checkpoint  # noqa: E402, F401  (the tiny Llama fixture)

pytestmark = pytest.mark.integration


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def single_curve(float_checkpoint, tmp_path_factory):  # noqa: F811
    out = tmp_path_factory.mktemp("single") / "losses.json"
    worker.single(str(float_checkpoint), str(out))
    return json.loads(out.read_text())


@pytest.mark.parametrize("kind", ["fsdp1", "fsdp2", "accelerate-fsdp1", "accelerate-fsdp2"])
def test_fsdp_qlora_training_curve(float_checkpoint, single_curve, tmp_path, kind):  # noqa: F811
    out = tmp_path / "losses.json"
    mp.spawn(worker.sharded, args=(_port(), str(float_checkpoint), kind, str(out)), nprocs=2, join=True)
    sharded = json.loads(out.read_text())
    print(kind, "sharded", [round(x, 4) for x in sharded], "single", [round(x, 4) for x in single_curve])
    assert len(sharded) == worker.STEPS
    assert all(b < a for a, b in zip(single_curve, single_curve[1:])), single_curve  # the adapters learn
    assert single_curve[-1] < single_curve[0] - 0.2, single_curve
    torch.testing.assert_close(torch.tensor(sharded), torch.tensor(single_curve), rtol=1e-3, atol=1e-4)
