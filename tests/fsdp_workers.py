"""Worker bodies of the FSDP tests (tests/test_fsdp.py): each runs in one of 2 spawned processes
(gloo on CPU) and asserts; a failure on any rank fails the test with that rank's traceback.

The model is a tiny QLoRA stack: frozen ``Linear4bit`` base layers with trainable low-rank
adapters, a float head. Every check compares the sharded model with an unsharded copy built from
the same seed (forward, input and adapter gradients bit for bit), or, for optimizers, each
rank's shard with the same optimizer run on a plain tensor equal to that shard.
"""

from __future__ import annotations

import gc
import io
import os

import torch
import torch.distributed as dist
from torch import nn

import bitsandbytes as bnb

WORLD = 2
IN, HID, OUT, RANK_LORA = 64, 96, 24, 4


def init_dist(rank: int, port: int) -> None:
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)


def finish() -> None:
    """Retire every collective before the worker returns and the interpreter finalizes.

    A gloo worker thread frees a finished collective after it has released the caller, and that
    work's captured thread-local state can hold Python objects (those of a collective issued in a
    backward pass do): if the interpreter is already finalizing when the thread drops them, the
    thread is cancelled inside a noexcept destructor and the process aborts ("terminate called
    without an active exception"; seen once in a few runs of the FSDP1 optimizer test). A barrier
    issued from plain code (nothing Python in its thread-local state) completes only after every
    earlier collective of both ranks has, so nothing is left in flight when the process exits.
    """
    gc.collect()
    dist.barrier()
    dist.destroy_process_group()


class LoraLinear4bit(nn.Module):
    """A frozen 4-bit base layer plus a trainable low-rank update (the QLoRA layer)."""

    def __init__(self, n_in: int, n_out: int, storage: torch.dtype, dtype: torch.dtype) -> None:
        super().__init__()
        self.base = bnb.nn.Linear4bit(n_in, n_out, quant_type="nf4", quant_storage=storage, compute_dtype=dtype)
        self.base.bias.data = self.base.bias.data.to(dtype)
        self.base.bias.requires_grad_(False)
        self.lora_A = nn.Linear(n_in, RANK_LORA, bias=False, dtype=dtype)
        self.lora_B = nn.Linear(RANK_LORA, n_out, bias=False, dtype=dtype)
        nn.init.normal_(self.lora_B.weight, std=0.05)  # nonzero so the A gradient is too

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.lora_B(self.lora_A(x))


class QLoraNet(nn.Module):
    def __init__(self, storage: torch.dtype, dtype: torch.dtype) -> None:
        super().__init__()
        self.l1 = LoraLinear4bit(IN, HID, storage, dtype)
        self.l2 = LoraLinear4bit(HID, HID, storage, dtype)
        self.head = nn.Linear(HID, OUT, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.l2(torch.relu(self.l1(x)))))


def build(storage: torch.dtype, dtype: torch.dtype, seed: int = 0) -> QLoraNet:
    torch.manual_seed(seed)
    return QLoraNet(storage, dtype).to("cpu")  # the move quantizes the base weights


def base_layers(model: nn.Module) -> list[bnb.nn.Linear4bit]:
    return [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]


def grads(model: nn.Module) -> dict[str, torch.Tensor]:
    out = {}
    for name, p in model.named_parameters():
        if p.grad is not None:
            g = p.grad
            out[name] = g.full_tensor() if hasattr(g, "full_tensor") else g
    return out


def run_step(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x = x.detach().clone().requires_grad_()
    y = model(x)
    (y.float() ** 2).mean().backward()
    return y.detach(), x.grad


def assert_same_grads(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], atol: float = 0.0) -> None:
    assert a.keys() == b.keys(), (sorted(a), sorted(b))
    assert any("lora" in k for k in a), sorted(a)
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=atol, rtol=0 if atol == 0 else 1e-5, msg=k)


def roundtrip(obj):
    """torch.save then torch.load(weights_only=True): the safe loader must accept every entry."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


# ------------------------------------------------------------------------------------- FSDP2


def _fsdp2_wrap(model: nn.Module) -> nn.Module:
    from torch.distributed.fsdp import fully_shard

    for layer in (model.l1, model.l2):
        fully_shard(layer)
    fully_shard(model)
    return model


def fsdp2_qlora(rank: int, port: int, storage_name: str, dtype_name: str) -> None:
    """Forward/backward, bit-exact packed bytes (NaN patterns included), state dict save/load."""
    init_dist(rank, port)
    storage, dtype = getattr(torch, storage_name), getattr(torch, dtype_name)
    ref = build(storage, dtype)
    packed_before = {
        n: m.weight.data.view(torch.uint8).clone() for n, m in ref.named_modules() if hasattr(m, "quant_state")
    }
    model = _fsdp2_wrap(build(storage, dtype))
    for layer in base_layers(model):
        assert type(layer.weight).__name__ == "DTensor"

    # the packed bytes survive sharding and all-gather exactly (bf16/fp32 storage holds NaN patterns)
    if storage.is_floating_point:
        assert any(torch.isnan(m.weight.data).any() for m in base_layers(ref)), "no NaN bit pattern to check"
    model.l1.unshard()
    model.l2.unshard()
    for name, layer in ((n, m) for n, m in model.named_modules() if isinstance(m, bnb.nn.Linear4bit)):
        assert torch.equal(layer.weight.data.view(torch.uint8), packed_before[name]), name
    model.l1.reshard()
    model.l2.reshard()

    torch.manual_seed(100 + rank)
    x = torch.randn(5, IN, dtype=dtype)
    y, gx = run_step(model, x)
    y_ref, gx_ref = run_step(ref, x)
    assert torch.equal(y, y_ref)
    assert torch.equal(gx, gx_ref)
    g, g_ref = grads(model), grads(ref)
    # FSDP2 averages gradients over ranks (inputs differ per rank): compare with the mean
    for k in g_ref:
        gathered = [torch.empty_like(g_ref[k]) for _ in range(WORLD)]
        dist.all_gather(gathered, g_ref[k].contiguous())
        g_ref[k] = sum(t.float() for t in gathered).div(WORLD).to(g_ref[k].dtype)
    assert_same_grads(g, g_ref, atol=1e-2 if dtype == torch.bfloat16 else 1e-6)

    # the state dict keeps every quant-state entry, loads back sharded and unsharded
    sd = model.state_dict()
    ref_sd = ref.state_dict()
    assert sd.keys() == ref_sd.keys(), sorted(set(sd) ^ set(ref_sd))
    for k, v in ref_sd.items():
        got = sd[k].full_tensor() if type(sd[k]).__name__ == "DTensor" else sd[k]
        assert torch.equal(got.view(torch.uint8), v.view(torch.uint8)), k
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, set_model_state_dict

    full = StateDictOptions(full_state_dict=True)
    sd_full = get_model_state_dict(model, options=full)  # the distributed checkpoint API
    assert sd_full.keys() == ref_sd.keys()
    for k, v in ref_sd.items():
        assert type(sd_full[k]).__name__ != "DTensor" and torch.equal(
            sd_full[k].view(torch.uint8), v.view(torch.uint8)
        ), k
    sd_loaded = roundtrip(sd_full)

    fresh = build(storage, dtype, seed=1)  # different adapters and base weights
    fresh.load_state_dict(sd_loaded)
    assert torch.equal(run_step(fresh, x)[0], y_ref)

    fresh_sharded = _fsdp2_wrap(build(storage, dtype, seed=2))
    fresh_sharded.load_state_dict(sd)  # DTensor entries
    assert torch.equal(run_step(fresh_sharded, x)[0], y_ref)
    fresh_sharded2 = _fsdp2_wrap(build(storage, dtype, seed=3))
    set_model_state_dict(fresh_sharded2, sd_loaded, options=full)  # full tensors into a sharded model
    assert torch.equal(run_step(fresh_sharded2, x)[0], y_ref)
    finish()


OPTIMIZERS = {
    "Adam8bit": lambda ps: bnb.optim.Adam8bit(ps, lr=1e-2, min_8bit_size=0),
    "AdamW32bit": lambda ps: bnb.optim.AdamW(ps, lr=1e-2, optim_bits=32),
    "Lion8bit": lambda ps: bnb.optim.Lion8bit(ps, lr=1e-3, min_8bit_size=0),
    "SGD8bit": lambda ps: bnb.optim.SGD8bit(ps, lr=1e-2, momentum=0.9, min_8bit_size=0),
    "AdEMAMix8bit": lambda ps: bnb.optim.AdEMAMix8bit(ps, lr=1e-2, min_8bit_size=0),
}


def fsdp2_optimizers(rank: int, port: int) -> None:
    """8-bit and 32-bit optimizers step DTensor parameters: each rank updates its own shard with
    block-wise state for that shard, exactly as the same optimizer on a plain tensor of the shard;
    their state dicts survive torch.load(weights_only=True) and resume identically."""
    init_dist(rank, port)
    dtype = torch.float32
    for opt_name, make in OPTIMIZERS.items():
        model = _fsdp2_wrap(build(torch.bfloat16, dtype))
        trainable = [p for p in model.parameters() if p.requires_grad]
        opt = make(trainable)
        shadows = [p.to_local().detach().clone().requires_grad_() for p in trainable]
        opt_shadow = make(shadows)
        for step in range(3):
            torch.manual_seed(step)
            x = torch.randn(5, IN, dtype=dtype)
            opt.zero_grad()
            run_step(model, x)
            for p, s in zip(trainable, shadows):
                s.grad = p.grad.to_local().clone()
            opt.step()
            opt_shadow.step()
            for p, s in zip(trainable, shadows):
                assert torch.equal(p.to_local(), s.detach()), (opt_name, step)
        for p in trainable:
            state = opt.state[p]
            assert state["state1"].shape[-p.dim() :] == p.to_local().shape, opt_name  # state of the shard
            assert state["state1"].dtype == (torch.float32 if "32" in opt_name else torch.uint8), opt_name
            for key, value in state.items():
                assert type(value).__name__ != "DTensor", (opt_name, key)

        # save, load into a fresh optimizer over a second sharded copy, step both identically
        saved = roundtrip(opt.state_dict())
        model2 = _fsdp2_wrap(build(torch.bfloat16, dtype))
        model2.load_state_dict(model.state_dict())
        trainable2 = [p for p in model2.parameters() if p.requires_grad]
        opt2 = make(trainable2)
        opt2.load_state_dict(saved)
        torch.manual_seed(99)
        x = torch.randn(5, IN, dtype=dtype)
        for m, o in ((model, opt), (model2, opt2)):
            o.zero_grad()
            run_step(m, x)
            o.step()
        for p, q in zip(trainable, trainable2):
            assert torch.equal(p.to_local(), q.to_local()), opt_name
    finish()


# ------------------------------------------------------------------------------------- FSDP1


def _fsdp1_wrap(model: nn.Module, use_orig_params: bool) -> nn.Module:
    from torch.distributed.fsdp import FullyShardedDataParallel as Fsdp1
    from torch.distributed.fsdp.wrap import ModuleWrapPolicy

    # The frozen 4-bit layers form their own units (a flat parameter needs one requires_grad).
    return Fsdp1(
        model,
        auto_wrap_policy=ModuleWrapPolicy({bnb.nn.Linear4bit}),
        use_orig_params=use_orig_params,
        device_id=torch.device("cpu"),
    )


def fsdp1_qlora(rank: int, port: int, use_orig_params: str, storage_name: str) -> None:
    """Forward/backward equal to the unsharded model; full and sharded state dicts save and load."""
    from torch.distributed.fsdp import FullyShardedDataParallel as Fsdp1
    from torch.distributed.fsdp import StateDictType

    init_dist(rank, port)
    orig = use_orig_params == "True"
    dtype = getattr(torch, storage_name)  # FSDP1: the storage dtype is the model's dtype
    ref = build(dtype, dtype)
    model = _fsdp1_wrap(build(dtype, dtype), orig)
    torch.manual_seed(100 + rank)
    x = torch.randn(5, IN, dtype=dtype)
    for _ in range(2):  # the second pass runs on the re-attached quant states
        y, gx = run_step(model, x)
    y_ref, gx_ref = run_step(ref, x)
    assert torch.equal(y, y_ref)
    assert torch.equal(gx, gx_ref)

    # adapters train: one 8-bit optimizer step on the sharded and on the unsharded model
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = bnb.optim.Adam8bit(trainable, lr=1e-2, min_8bit_size=0)
    opt.step()
    y2, _ = run_step(model, x)
    assert not torch.equal(y2, y_ref)

    ref_sd = build(dtype, dtype).state_dict()
    with Fsdp1.state_dict_type(model, StateDictType.FULL_STATE_DICT):
        full = model.state_dict()
    assert full.keys() == ref_sd.keys(), sorted(set(full) ^ set(ref_sd))
    for k in ref_sd:
        if "base" in k:  # the frozen 4-bit layers are unchanged, quant states included
            assert torch.equal(full[k].view(torch.uint8), ref_sd[k].view(torch.uint8)), k
    full = roundtrip(full)
    fresh = build(dtype, dtype, seed=5)
    fresh.load_state_dict(full)
    y_fresh, _ = run_step(fresh, x)
    assert torch.equal(y_fresh, run_step(model, x)[0])

    with Fsdp1.state_dict_type(model, StateDictType.SHARDED_STATE_DICT):
        sharded = model.state_dict()
    model2 = _fsdp1_wrap(build(dtype, dtype, seed=6), orig)
    with Fsdp1.state_dict_type(model2, StateDictType.SHARDED_STATE_DICT):
        model2.load_state_dict(sharded)
    assert torch.equal(run_step(model2, x)[0], y_fresh)

    model3 = _fsdp1_wrap(build(dtype, dtype, seed=7), orig)
    with Fsdp1.state_dict_type(model3, StateDictType.FULL_STATE_DICT):
        model3.load_state_dict(full)
    assert torch.equal(run_step(model3, x)[0], y_fresh)
    finish()


def fsdp1_storage_error(rank: int, port: int) -> None:
    """uint8 storage, or a storage dtype other than the module's, fails naming bnb_4bit_quant_storage."""
    init_dist(rank, port)
    for storage, dtype in (
        (torch.uint8, torch.bfloat16),
        (torch.bfloat16, torch.float32),
        (torch.uint8, torch.float32),
    ):
        for orig in (False, True):
            model = build(storage, dtype)
            try:
                _fsdp1_wrap(model, orig)
            except ValueError as err:
                assert "bnb_4bit_quant_storage" in str(err), err
                assert str(storage) in str(err), err
            else:
                raise AssertionError(f"FSDP1 accepted {storage} storage in a {dtype} model")
    finish()


def fsdp1_optimizer_state(rank: int, port: int, use_orig_params: str) -> None:
    """An 8-bit optimizer over FSDP1: each rank's optimizer state dict (the state of its shard, the
    quantization state wrapped under __bnb_optimizer_quant_state__) saves, survives
    torch.load(weights_only=True) and resumes on a fresh model wrapped the same way exactly.
    (FSDP1's own Fsdp1.optim_state_dict, which regathers state by parameter, cannot carry
    block-wise state of a shard: it fails comparing the ranks' wrapped dicts.)"""
    from torch.distributed.fsdp import FullyShardedDataParallel as Fsdp1
    from torch.distributed.fsdp import StateDictType

    init_dist(rank, port)
    orig = use_orig_params == "True"
    dtype = torch.bfloat16
    models, opts = [], []
    for _ in range(2):
        m = _fsdp1_wrap(build(dtype, dtype), orig)
        models.append(m)
        opts.append(bnb.optim.Adam8bit([p for p in m.parameters() if p.requires_grad], lr=1e-2, min_8bit_size=0))
    torch.manual_seed(100 + rank)
    x = torch.randn(5, IN, dtype=dtype)
    for _ in range(2):
        opts[0].zero_grad()
        run_step(models[0], x)
        opts[0].step()
    with Fsdp1.state_dict_type(models[0], StateDictType.SHARDED_STATE_DICT):
        msd = models[0].state_dict()
    osd = roundtrip(opts[0].state_dict())
    inner = [v for st in osd["state"].values() for v in st.get("__bnb_optimizer_quant_state__", {}).values()]
    assert any(t.dtype == torch.uint8 for t in inner), "no 8-bit state was saved"
    with Fsdp1.state_dict_type(models[1], StateDictType.SHARDED_STATE_DICT):
        models[1].load_state_dict(msd)
    opts[1].load_state_dict(osd)
    for m, o in zip(models, opts):
        o.zero_grad()
        run_step(m, x)
        o.step()
    assert torch.equal(run_step(models[0], x)[0], run_step(models[1], x)[0])
    finish()
