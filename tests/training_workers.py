"""Worker bodies of tests/test_training_flows.py: each runs in one of 2 spawned processes (gloo on
CPU) and asserts; a failure on any rank fails the test with that rank's traceback.

* DDP over a frozen 4-bit base with LoRA adapters and AdamW8bit: both ranks hold identical
  parameters after 3 steps, equal to one process stepping with the ranks' averaged gradient.
* FSDP2 QLoRA (bf16 quant_storage) with bnb optimizers, checkpointed through
  torch.distributed.checkpoint: ``get/set_model_state_dict`` and ``get/set_optimizer_state_dict``
  with full state dicts (rank 0's copy loaded on every rank) and with a sharded ``dcp.save`` /
  ``dcp.load``; the resumed run continues exactly as the uninterrupted one on every rank.
"""

from __future__ import annotations

import shutil
import tempfile

import torch
import torch.distributed as dist
from fsdp_workers import finish, init_dist, roundtrip
from torch import nn

import bitsandbytes as bnb

IN, HID, OUT, RANK_LORA = 32, 48, 8, 4


class LoraBlock(nn.Module):
    def __init__(self, n_in: int, n_out: int, dtype: torch.dtype, storage: torch.dtype = torch.uint8) -> None:
        super().__init__()
        self.base = bnb.nn.Linear4bit(n_in, n_out, compute_dtype=dtype, quant_type="nf4", quant_storage=storage)
        self.base.bias.data = self.base.bias.data.to(dtype)
        self.base.requires_grad_(False)
        self.lora_A = nn.Linear(n_in, RANK_LORA, bias=False, dtype=dtype)
        self.lora_B = nn.Linear(RANK_LORA, n_out, bias=False, dtype=dtype)
        nn.init.normal_(self.lora_B.weight, std=0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.lora_B(self.lora_A(x))


class Net(nn.Module):
    def __init__(self, dtype: torch.dtype, storage: torch.dtype = torch.uint8) -> None:
        super().__init__()
        self.l1 = LoraBlock(IN, HID, dtype, storage)
        # 5 rows of 300: shards of 3 and 2 rows hold 4 and 3 blocks of 8-bit state
        self.mid = nn.Linear(HID, 300, bias=False, dtype=dtype)
        self.uneven = nn.Linear(300, 5, dtype=dtype)
        self.head = nn.Linear(5, OUT, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.l1(x))
        return self.head(torch.tanh(self.uneven(torch.relu(self.mid(h)))))


def build(dtype: torch.dtype, storage: torch.dtype = torch.uint8, seed: int = 0) -> Net:
    torch.manual_seed(seed)
    return Net(dtype, storage).to("cpu")  # the move quantizes the base weights


def batch(step: int, rank: int, dtype: torch.dtype) -> torch.Tensor:
    g = torch.Generator().manual_seed(1000 * step + rank)
    return torch.randn(6, IN, generator=g).to(dtype)


def loss_of(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return (model(x).float() ** 2).mean()


# ------------------------------------------------------------------------------------- DDP


def ddp_adamw8bit(rank: int, port: int, dtype_name: str) -> None:
    init_dist(rank, port)
    dtype = getattr(torch, dtype_name)
    model = build(dtype)
    ddp = nn.parallel.DistributedDataParallel(model)
    opt = bnb.optim.AdamW8bit([p for p in ddp.parameters() if p.requires_grad], lr=1e-2, min_8bit_size=0)
    ref = build(dtype)
    ref_params = [p for p in ref.parameters() if p.requires_grad]
    ref_opt = bnb.optim.AdamW8bit(ref_params, lr=1e-2, min_8bit_size=0)
    for step in range(3):
        opt.zero_grad()
        loss_of(ddp, batch(step, rank, dtype)).backward()
        opt.step()
        per_rank = []
        for r in range(dist.get_world_size()):
            ref.zero_grad()
            loss_of(ref, batch(step, r, dtype)).backward()
            per_rank.append([p.grad.float().clone() for p in ref_params])
        for i, p in enumerate(ref_params):  # DDP's allreduce averages in the gradient's dtype
            p.grad = (sum(g[i] for g in per_rank) / len(per_rank)).to(dtype)
        ref_opt.step()
    assert any(isinstance(v, torch.Tensor) and v.dtype == torch.uint8 for st in opt.state.values() for v in st.values())
    for (name, p), q in zip(model.named_parameters(), ref.parameters()):
        both = [torch.empty_like(p) for _ in range(dist.get_world_size())]
        dist.all_gather(both, p.detach().contiguous())
        assert torch.equal(both[0].view(torch.uint8), both[1].view(torch.uint8)), name
        tol = 0 if dtype == torch.float32 else 1e-2
        torch.testing.assert_close(p.detach(), q.detach(), rtol=0, atol=tol, msg=name)
    finish()


# ------------------------------------------------------------------------------------- FSDP2


def _fsdp2(model: Net) -> Net:
    from torch.distributed.fsdp import fully_shard

    fully_shard(model.l1)
    fully_shard(model)
    return model


OPTIMIZERS = {
    "AdamW8bit": lambda ps: bnb.optim.AdamW8bit(ps, lr=1e-2, min_8bit_size=0),
    "AdamW32bit": lambda ps: bnb.optim.AdamW32bit(ps, lr=1e-2),
    "AdEMAMix8bit": lambda ps: bnb.optim.AdEMAMix8bit(ps, lr=1e-2, min_8bit_size=0),
    "PagedAdamW8bit": lambda ps: bnb.optim.PagedAdamW8bit(ps, lr=1e-2, min_8bit_size=0),
}


def _train(model: nn.Module, opt: torch.optim.Optimizer, steps, rank: int, dtype: torch.dtype) -> None:
    for step in steps:
        opt.zero_grad()
        loss_of(model, batch(step, rank, dtype)).backward()
        opt.step()


def _same_local(a: nn.Module, b: nn.Module) -> list[str]:
    return [
        name
        for (name, p), q in zip(a.named_parameters(), b.parameters())
        if not torch.equal(p.to_local().view(torch.uint8), q.to_local().view(torch.uint8))
    ]


def fsdp2_dcp_optimizer_resume(rank: int, port: int, opt_name: str, mode: str) -> None:
    from torch.distributed import checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    init_dist(rank, port)
    dtype, make = torch.bfloat16, OPTIMIZERS[opt_name]
    model = _fsdp2(build(dtype, torch.bfloat16))
    opt = make([p for p in model.parameters() if p.requires_grad])
    _train(model, opt, range(2), rank, dtype)
    assert all(type(v).__name__ != "DTensor" for st in opt.state.values() for v in st.values())

    # the same frozen base (a sharded dcp.load needs the packed quant-state entries of the
    # checkpoint's size), other trainable weights
    fresh = build(dtype, torch.bfloat16)
    torch.manual_seed(7)
    with torch.no_grad():
        for p in fresh.parameters():
            if p.requires_grad:
                p.normal_(std=0.1)
    fresh = _fsdp2(fresh)
    fresh_opt = make([p for p in fresh.parameters() if p.requires_grad])
    if mode == "full":
        options = StateDictOptions(full_state_dict=True)
        msd = get_model_state_dict(model, options=options)
        osd = get_optimizer_state_dict(model, opt, options=options)
        # the gathered states are the full parameters' (not one rank's shard)
        st = osd["state"]["uneven.weight"]["__bnb_optimizer_quant_state__"]
        assert type(st["state1"]) is torch.Tensor and st["state1"].shape[-2:] == (5, 300), st["state1"].shape
        shared = [roundtrip((msd, osd)) if rank == 0 else None]
        dist.broadcast_object_list(shared, src=0)  # every rank loads rank 0's checkpoint
        msd, osd = shared[0]
        set_model_state_dict(fresh, msd, options=options)
        set_optimizer_state_dict(fresh, fresh_opt, osd, options=options)
    else:
        path = [tempfile.mkdtemp(prefix="bnb_dcp_") if rank == 0 else None]
        dist.broadcast_object_list(path, src=0)
        state = {"model": get_model_state_dict(model), "optim": get_optimizer_state_dict(model, opt)}
        dcp.save(state, checkpoint_id=path[0])
        dist.barrier()
        target = {"model": get_model_state_dict(fresh), "optim": get_optimizer_state_dict(fresh, fresh_opt)}
        dcp.load(target, checkpoint_id=path[0])
        set_model_state_dict(fresh, target["model"])
        set_optimizer_state_dict(fresh, fresh_opt, target["optim"])
    for p, q in zip(opt.state, fresh_opt.state):
        assert opt.state[p]["step"] == fresh_opt.state[q]["step"] == 2
        for key, value in opt.state[p].items():
            if isinstance(value, torch.Tensor):
                assert type(fresh_opt.state[q][key]) is torch.Tensor, key
                assert torch.equal(value, fresh_opt.state[q][key]), (opt_name, key)
    _train(model, opt, range(2, 4), rank, dtype)
    _train(fresh, fresh_opt, range(2, 4), rank, dtype)
    assert not _same_local(model, fresh), _same_local(model, fresh)
    dist.barrier()
    if mode != "full" and rank == 0:
        shutil.rmtree(path[0], ignore_errors=True)
    finish()
