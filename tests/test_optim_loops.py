"""bitsandbytes optimizers inside realistic training loops (CPU): torch LR schedulers (momentum
cycling included), parameter groups added mid-run, missing gradients, optimizer hooks,
GradScaler with accumulation, SWA, half-precision parameters, and
``torch.distributed.optim.ZeroRedundancyOptimizer`` over 2 gloo processes.

The reference of each trajectory is the same optimizer stepped with the same hyperparameters
set by hand (bit for bit), or torch.optim where the math is the same (to float rounding).
"""

from __future__ import annotations

import copy
import datetime
import socket
import time

import pytest
import torch
from torch import nn
from torch.optim import lr_scheduler as L

import bitsandbytes as bnb

B = bnb.optim

OPTS = {
    "Adam8bit": lambda p: B.Adam8bit(p, lr=1e-2),
    "PagedAdamW8bit": lambda p: B.PagedAdamW8bit(p, lr=1e-2),
    "Lion8bit": lambda p: B.Lion8bit(p, lr=1e-3, weight_decay=0.1),
    "AdEMAMix8bit": lambda p: B.AdEMAMix8bit(p, lr=1e-2),
    "SGD8bit": lambda p: B.SGD8bit(p, lr=1e-2, momentum=0.9),
    "RMSprop8bit": lambda p: B.RMSprop8bit(p, lr=1e-3),
    "Adagrad8bit": lambda p: B.Adagrad8bit(p, lr=1e-2),
    "LAMB8bit": lambda p: B.LAMB8bit(p, lr=1e-2),
    "LARS8bit": lambda p: B.LARS8bit(p, lr=1e-2, momentum=0.9),
    "AdamW32bit": lambda p: B.AdamW32bit(p, lr=1e-2),
    "Lion32bit": lambda p: B.Lion32bit(p, lr=1e-3, weight_decay=0.1),
    "SGD32bit": lambda p: B.SGD32bit(p, lr=1e-2, momentum=0.9),
    "LAMB32bit": lambda p: B.LAMB32bit(p, lr=1e-2),
}

NO_MOMENTUM = ("RMSprop8bit", "Adagrad8bit")  # betas[0] is no momentum: cycling it is refused

SCHEDULERS = {
    "OneCycleLR": lambda o, cycle=True: L.OneCycleLR(o, max_lr=0.05, total_steps=6, cycle_momentum=cycle),
    "CyclicLR": lambda o, cycle=True: L.CyclicLR(
        o, 1e-3, 1e-2, step_size_up=2, cycle_momentum=cycle, base_momentum=0.8, max_momentum=0.9
    ),
    "ReduceLROnPlateau": lambda o, cycle=True: L.ReduceLROnPlateau(o, patience=0, factor=0.5, threshold=10.0),
    "LambdaLR": lambda o, cycle=True: L.LambdaLR(o, lambda s: 1 / (s + 1)),
    "SequentialLR": lambda o, cycle=True: L.SequentialLR(
        o, [L.LinearLR(o, 0.1, 1.0, 2), L.CosineAnnealingWarmRestarts(o, 2, 2)], [2]
    ),
}


pytestmark = pytest.mark.usefixtures("optim_manager")


def make_model(seed: int = 0, dtype: torch.dtype = torch.float32) -> nn.Module:
    """A 2-layer MLP whose first weight (160x32 = 5120) gets 8-bit states, the rest 32-bit."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(32, 160, dtype=dtype), nn.Tanh(), nn.Linear(160, 4, dtype=dtype))


def loss_of(model: nn.Module, i: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(1000 + i)
    dtype = next(model.parameters()).dtype
    x, y = torch.randn(8, 32, generator=g).to(dtype), torch.randn(8, 4, generator=g).to(dtype)
    return ((model(x) - y) ** 2).mean()


def flat(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().float().flatten() for p in model.parameters()])


# ------------------------------------------------------------------------------ schedulers


@pytest.mark.parametrize("sched", list(SCHEDULERS))
@pytest.mark.parametrize("name", list(OPTS))
def test_scheduler_equals_hyperparameters_set_by_hand(name, sched) -> None:
    model = make_model()
    opt = OPTS[name](model.parameters())
    scheduler = SCHEDULERS[sched](opt, name not in NO_MOMENTUM)
    used = []
    for i in range(6):
        used.append(copy.deepcopy([{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups]))
        opt.zero_grad()
        loss = loss_of(model, i)
        loss.backward()
        opt.step()
        scheduler.step(loss.item()) if sched == "ReduceLROnPlateau" else scheduler.step()
    lrs = [u[0]["lr"] for u in used]
    assert len(set(lrs)) > 1, lrs  # the schedule moved the learning rate
    if sched in ("OneCycleLR", "CyclicLR") and name not in NO_MOMENTUM:
        assert len({u[0]["betas"][0] for u in used}) > 1  # ... and cycled beta1 (momentum)

    ref = make_model()
    ref_opt = OPTS[name](ref.parameters())
    for i in range(6):
        for group, hp in zip(ref_opt.param_groups, used[i]):
            group.update(hp)
        ref_opt.zero_grad()
        loss_of(ref, i).backward()
        ref_opt.step()
    assert torch.equal(flat(model), flat(ref))


@pytest.mark.parametrize("name", ["Adam8bit", "SGD8bit", "AdEMAMix8bit"])
def test_resume_from_checkpoint_mid_schedule(name) -> None:
    """Model, optimizer and OneCycleLR saved mid-run (torch.save, weights_only load) and restored
    into fresh objects continue exactly as the uninterrupted run."""
    import io

    def run(model, opt, sched, steps):
        for i in steps:
            opt.zero_grad()
            loss_of(model, i).backward()
            opt.step()
            sched.step()

    model = make_model()
    opt = OPTS[name](model.parameters())
    sched = SCHEDULERS["OneCycleLR"](opt)
    run(model, opt, sched, range(3))
    buf = io.BytesIO()
    torch.save({"m": model.state_dict(), "o": opt.state_dict(), "s": sched.state_dict()}, buf)
    run(model, opt, sched, range(3, 6))
    buf.seek(0)
    ckpt = torch.load(buf, weights_only=True)
    resumed = make_model(seed=1)
    resumed.load_state_dict(ckpt["m"])
    opt2 = OPTS[name](resumed.parameters())
    sched2 = SCHEDULERS["OneCycleLR"](opt2)
    opt2.load_state_dict(ckpt["o"])
    sched2.load_state_dict(ckpt["s"])
    run(resumed, opt2, sched2, range(3, 6))
    assert torch.equal(flat(model), flat(resumed))


@pytest.mark.parametrize("sched", ["OneCycleLR", "CyclicLR"])
@pytest.mark.parametrize("name", [*NO_MOMENTUM, "RMSprop32bit", "Adagrad32bit"])
def test_cycling_momentum_of_rmsprop_or_adagrad_is_refused(name, sched) -> None:
    """Their betas[0] is RMSprop's smoothing constant alpha / unused by Adagrad: a scheduler
    cycling "momentum" through it would silently change alpha or do nothing."""
    model = make_model()
    cls = getattr(B, name)
    opt = cls(model.parameters(), lr=1e-2)
    SCHEDULERS[sched](opt)
    loss_of(model, 0).backward()
    before = flat(model)
    with pytest.raises(ValueError, match="cycle_momentum=False"):
        opt.step()
    assert torch.equal(before, flat(model)) and not any(opt.state.values())


@pytest.mark.parametrize(
    ("ours", "theirs"),
    [
        (lambda p: B.Adam32bit(p, lr=1e-2), lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.0)),
        (lambda p: B.SGD32bit(p, lr=1e-2, momentum=0.9), lambda p: torch.optim.SGD(p, lr=1e-2, momentum=0.9)),
    ],
)
def test_one_cycle_momentum_matches_torch(ours, theirs) -> None:
    """OneCycleLR cycles betas[0] of bnb's optimizers where torch.SGD's cycles ``momentum``."""
    models = [make_model(), make_model()]
    opts = [ours(models[0].parameters()), theirs(models[1].parameters())]
    scheds = [L.OneCycleLR(o, max_lr=0.05, total_steps=6) for o in opts]
    for i in range(6):
        for m, o, s in zip(models, opts, scheds):
            o.zero_grad()
            loss_of(m, i).backward()
            o.step()
            s.step()
    torch.testing.assert_close(flat(models[0]), flat(models[1]), rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    ("cls", "key"),
    [
        (B.SGD8bit, "momentum"),
        (B.SGD32bit, "momentum"),
        (B.LARS8bit, "momentum"),
        (B.LARS32bit, "momentum"),
        (B.RMSprop8bit, "alpha"),
        (B.RMSprop32bit, "alpha"),
    ],
)
def test_torch_name_of_beta1_in_a_group_is_applied(cls, key) -> None:
    """A group's ``"momentum"`` (SGD, LARS) or ``"alpha"`` (RMSprop), torch.optim's names, written
    by ZeroRedundancyOptimizer and by schedulers driving it, is applied as betas[0], not silently
    ignored."""
    models = [make_model(), make_model(), make_model()]
    kw = {"momentum": 0.9} if key == "momentum" else {"alpha": 0.9}
    opts = [cls(m.parameters(), lr=1e-2, **kw) for m in models]
    for i in range(4):
        opts[0].param_groups[0][key] = 0.5 - 0.1 * i
        opts[1].param_groups[0]["betas"] = (0.5 - 0.1 * i, 0)
        for m, o in zip(models, opts):
            o.zero_grad()
            loss_of(m, i).backward()
            o.step()
    assert torch.equal(flat(models[0]), flat(models[1]))
    assert not torch.equal(flat(models[0]), flat(models[2]))


# ------------------------------------------------------------------------------ loop behaviours


@pytest.mark.parametrize("name", ["Adam8bit", "Lion8bit", "SGD8bit", "AdEMAMix8bit"])
def test_missing_grads_and_param_group_added_mid_run(name) -> None:
    model = make_model()
    extra = nn.Parameter(torch.randn(64, 80))
    opt = OPTS[name](model.parameters())
    w = model[0].weight
    for i in range(4):
        opt.zero_grad()
        loss_of(model, i).backward()
        if i % 2:
            w.grad = None
            before = w.detach().clone()
        opt.step()
        if i % 2:
            assert torch.equal(before, w)
    opt.add_param_group({"params": [extra], "lr": 5e-3})
    for i in range(4, 6):
        opt.zero_grad(set_to_none=False)
        (loss_of(model, i) + (extra**2).mean()).backward()
        opt.step()
    assert opt.state[w]["step"] == 4
    assert opt.state[model[2].weight]["step"] == 6
    assert opt.state[extra]["step"] == 2
    assert opt.state[extra]["state1"].dtype == torch.uint8
    assert not torch.equal(extra, extra.detach().clone().zero_())


def test_module_override_applies_to_a_param_group_added_mid_run() -> None:
    """transformers/peft register a 32-bit override for embeddings; a group added after the first
    step (progressive unfreezing) must not silently get 8-bit states."""
    model, emb = make_model(), nn.Embedding(100, 64)
    B.GlobalOptimManager.get_instance().register_module_override(emb, "weight", {"optim_bits": 32})
    opt = B.Adam8bit(model.parameters(), lr=1e-2)
    for i in range(3):
        if i == 2:
            opt.add_param_group({"params": [emb.weight]})
        opt.zero_grad()
        (loss_of(model, i) + emb.weight.pow(2).mean()).backward()
        opt.step()
    assert opt.state[emb.weight]["state1"].dtype == torch.float32
    assert opt.state[model[0].weight]["state1"].dtype == torch.uint8
    assert opt.state[model[0].weight]["step"] == 3 and opt.state[emb.weight]["step"] == 1


def test_closure_under_no_grad_and_hooks_run_once() -> None:
    model = make_model()
    opt = B.Adam8bit(model.parameters(), lr=1e-2)
    calls: dict[str, int] = {}

    def count(key):
        def hook(*args, **kwargs):
            calls[key] = calls.get(key, 0) + 1

        return hook

    opt.register_step_pre_hook(count("step_pre"))
    opt.register_step_post_hook(count("step_post"))
    opt.register_state_dict_pre_hook(count("sd_pre"))
    opt.register_state_dict_post_hook(count("sd_post"))
    opt.register_load_state_dict_pre_hook(count("load_pre"))
    opt.register_load_state_dict_post_hook(count("load_post"))

    def closure():
        opt.zero_grad()
        loss = loss_of(model, 0)
        loss.backward()
        return loss

    with torch.no_grad():
        for _ in range(3):
            loss = opt.step(closure)
    assert loss.requires_grad and opt.state[model[0].weight]["step"] == 3
    opt.load_state_dict(opt.state_dict())
    assert calls == {"step_pre": 3, "step_post": 3, "sd_pre": 1, "sd_post": 1, "load_pre": 1, "load_post": 1}


def test_parameter_in_two_groups_is_refused() -> None:
    model = make_model()
    with pytest.raises(ValueError, match="more than one parameter group"):
        B.Adam8bit([{"params": [model[0].weight]}, {"params": [model[0].weight, model[0].bias]}])


@pytest.mark.parametrize("name", ["Adam8bit", "Lion8bit"])
def test_grad_scaler_accumulation_clip_and_skipped_inf_step(name) -> None:
    model, ref = make_model(), make_model()
    opt, ref_opt = OPTS[name](model.parameters()), OPTS[name](ref.parameters())
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    for i in range(4):
        opt.zero_grad()
        ref_opt.zero_grad()
        for k in range(2):
            scaler.scale(loss_of(model, 2 * i + k) / 2).backward()
            (loss_of(ref, 2 * i + k) / 2).backward()
        if i == 2:
            model[0].weight.grad[0, 0] = float("inf")
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.5)
        scaler.step(opt)
        scaler.update()
        if i != 2:
            torch.nn.utils.clip_grad_norm_(ref.parameters(), 0.5)
            ref_opt.step()
    assert opt.state[model[0].weight]["step"] == 3
    assert scaler.get_scale() == 2.0**9
    assert torch.equal(flat(model), flat(ref))  # power-of-two scales unscale exactly


def test_swa_with_an_8bit_optimizer() -> None:
    from torch.optim.swa_utils import SWALR, AveragedModel

    model = make_model()
    opt = B.AdamW8bit(model.parameters(), lr=1e-2)
    swa, swalr = AveragedModel(model), SWALR(opt, swa_lr=1e-3, anneal_epochs=2)
    snapshots = []
    for i in range(4):
        opt.zero_grad()
        loss_of(model, i).backward()
        opt.step()
        swa.update_parameters(model)
        swalr.step()
        snapshots.append(flat(model))
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-3)
    torch.testing.assert_close(flat(swa.module), torch.stack(snapshots).mean(0), rtol=0, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", ["Adam8bit", "Lion8bit", "AdEMAMix8bit"])
def test_half_parameters_with_8bit_states_track_32bit(name, dtype) -> None:
    model = make_model(dtype=dtype)
    ref = make_model()
    ref.load_state_dict({k: v.float() for k, v in model.state_dict().items()})
    opt, ref_opt = OPTS[name](model.parameters()), OPTS[name](ref.parameters())
    start = flat(ref)
    for i in range(4):
        for m, o in ((model, opt), (ref, ref_opt)):
            o.zero_grad()
            loss_of(m, i).backward()
            o.step()
    assert all(p.dtype == dtype for p in model.parameters())
    assert opt.state[model[0].weight]["state1"].dtype == torch.uint8
    rel = (flat(model) - flat(ref)).norm() / (flat(ref) - start).norm()
    assert rel < 0.1, rel


# ------------------------------------------------------------------------------ ZeroRedundancyOptimizer


def test_state_assigned_in_state_dict_layout_continues() -> None:
    """ZeroRedundancyOptimizer.load_state_dict copies each saved parameter state (still wrapped
    under ``__bnb_optimizer_quant_state__``) straight into ``optimizer.state``; the next step
    must continue from it as from load_state_dict, not raise KeyError('state1')."""
    model, ref = make_model(), make_model()
    opt, ref_opt = B.Adam8bit(model.parameters(), lr=1e-2), B.Adam8bit(ref.parameters(), lr=1e-2)
    for i in range(2):
        for m, o in ((model, opt), (ref, ref_opt)):
            o.zero_grad()
            loss_of(m, i).backward()
            o.step()
    saved = ref_opt.state_dict()["state"]
    opt.state.clear()
    for idx, p in enumerate(model.parameters()):
        opt.state[p] = copy.deepcopy(saved[idx])
    for i in range(2, 4):
        for m, o in ((model, opt), (ref, ref_opt)):
            o.zero_grad()
            loss_of(m, i).backward()
            o.step()
    assert torch.equal(flat(model), flat(ref))
    assert "__bnb_optimizer_quant_state__" not in opt.state[model[0].weight]


def _zero_worker(rank: int, port: int) -> None:
    import torch.distributed as dist
    from torch.distributed.optim import ZeroRedundancyOptimizer

    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=2,
        timeout=datetime.timedelta(seconds=60),
    )
    try:
        for cls, kw in ((B.Adam8bit, {"lr": 1e-2}), (B.Lion8bit, {"lr": 1e-3, "weight_decay": 0.1})):
            model, ref = make_model(), make_model()
            zero = ZeroRedundancyOptimizer(model.parameters(), optimizer_class=cls, **kw)
            ref_opt = cls(ref.parameters(), **kw)
            assert len(zero.optim.param_groups[0]["params"]) < 4  # each rank steps its share

            def train(m, o, steps):
                for i in steps:
                    o.zero_grad()
                    loss_of(m, i).backward()  # the same batch on both ranks: no all-reduce needed
                    o.step()

            train(model, zero, range(3))
            train(ref, ref_opt, range(3))
            assert torch.equal(flat(model), flat(ref)), cls.__name__
            zero.consolidate_state_dict(to=0)
            box = [zero.state_dict() if rank == 0 else None]
            dist.broadcast_object_list(box, src=0)
            saved = box[0]
            assert all(isinstance(s["step"], int) for s in saved["state"].values())

            # the consolidated state continues in one process ...
            single = make_model(seed=1)
            single.load_state_dict(model.state_dict())
            single_opt = cls(single.parameters(), **kw)
            single_opt.load_state_dict(saved)
            # ... and in a fresh ZeroRedundancyOptimizer
            resumed = make_model(seed=1)
            resumed.load_state_dict(model.state_dict())
            zero2 = ZeroRedundancyOptimizer(resumed.parameters(), optimizer_class=cls, **kw)
            zero2.load_state_dict(saved)
            train(ref, ref_opt, range(3, 5))
            train(single, single_opt, range(3, 5))
            train(resumed, zero2, range(3, 5))
            assert torch.equal(flat(single), flat(ref)), cls.__name__
            assert torch.equal(flat(resumed), flat(ref)), cls.__name__
        # a scheduler cycling momentum on the ZeroRedundancyOptimizer writes its groups'
        # "momentum", which reaches SGD8bit's local groups (whose own key is betas[0])
        for cls in (B.SGD8bit, B.LARS8bit):
            model, ref = make_model(), make_model()
            zero = ZeroRedundancyOptimizer(
                model.parameters(), optimizer_class=cls, parameters_as_bucket_view=True, lr=1e-2, momentum=0.9
            )
            ref_opt = cls(ref.parameters(), lr=1e-2, momentum=0.9)
            scheds = [L.OneCycleLR(o, max_lr=0.05, total_steps=6) for o in (zero, ref_opt)]
            for i in range(4):
                for m, o, s in ((model, zero, scheds[0]), (ref, ref_opt, scheds[1])):
                    o.zero_grad()
                    loss_of(m, i).backward()
                    o.step()
                    s.step()
            assert zero.param_groups[0]["momentum"] == ref_opt.param_groups[0]["betas"][0] != 0.9
            assert torch.equal(flat(model), flat(ref)), cls.__name__
        dist.barrier()
    finally:
        dist.destroy_process_group()


def test_zero_redundancy_optimizer_matches_single_process_and_resumes() -> None:
    dist = pytest.importorskip("torch.distributed")
    if not (dist.is_available() and dist.is_gloo_available()):
        pytest.skip("torch.distributed with gloo is not available")
    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.start_processes(_zero_worker, args=(port,), nprocs=2, join=False, start_method="spawn")
    deadline = time.monotonic() + 120
    try:
        while not ctx.join(timeout=1):
            if time.monotonic() > deadline:
                pytest.fail("ZeroRedundancyOptimizer workers did not finish within 120 s")
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.terminate()
                p.join(5)
