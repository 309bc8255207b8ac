"""The optimizers' life cycle as transformers' Trainer, accelerate and peft drive it: settings that
change after the state exists, parameter groups added later, copies of the optimizer, and
state dicts that this optimizer cannot continue with (which must be refused, never applied)."""

from __future__ import annotations

import copy
import io
import pickle

import pytest
import torch

import bitsandbytes as bnb
from bitsandbytes.optim.optimizer import GlobalOptimManager, Optimizer2State

QSTATE = "__bnb_optimizer_quant_state__"


pytestmark = pytest.mark.usefixtures("optim_manager")


def roundtrip(obj, weights_only: bool = True):
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=weights_only)


def stepped(cls, shape=(64, 128), steps: int = 2, seed: int = 0, **kw):
    """A parameter and its optimizer after ``steps`` seeded steps."""
    gen = torch.Generator().manual_seed(seed)
    p = torch.nn.Parameter(torch.randn(shape, generator=gen))
    opt = cls([p], **kw)
    for _ in range(steps):
        p.grad = torch.randn(shape, generator=gen)
        opt.step()
    return p, opt


# ---------------------------------------------------------------------------- settings changed later


def _continue(opt, p, state_dict=None) -> torch.Tensor:
    """``p`` after one more seeded step of ``opt`` (loading ``state_dict`` first)."""
    if state_dict is not None:
        opt.load_state_dict(state_dict)
    p.grad = torch.randn(p.shape, generator=torch.Generator().manual_seed(5))
    opt.step()
    return p.detach().clone()


def _with_unorm_vec(state_dict):
    sd = copy.deepcopy(state_dict)
    for pstate in sd["state"].values():
        pstate[QSTATE]["unorm_vec"] = torch.zeros(1)
    return sd


def test_max_unorm_override_after_the_state_exists_clips() -> None:
    """Turning the trust-ratio clip on once the state exists (an override; Trainer resuming with a
    changed config) failed with KeyError 'unorm_vec'. The step must be the one an optimizer with
    the clip on (and that state) takes."""
    p, opt = stepped(bnb.optim.Adam32bit, shape=(300,), lr=1e-1)
    saved, start = roundtrip(opt.state_dict()), p.detach().clone()
    assert "unorm_vec" not in saved["state"][0][QSTATE]
    GlobalOptimManager.get_instance().override_config(p, "max_unorm", 1e-3)
    got = _continue(opt, p)

    q = torch.nn.Parameter(start.clone())
    want = _continue(Optimizer2State("adam", [q], lr=1e-1, max_unorm=1e-3), q, _with_unorm_vec(saved))
    r = torch.nn.Parameter(start.clone())
    unclipped = _continue(bnb.optim.Adam32bit([r], lr=1e-1), r, saved)
    assert torch.equal(got, want)
    assert float((got - start).norm()) < 0.5 * float((unclipped - start).norm())  # the clip acted


def test_lamb_continues_from_a_state_saved_without_the_clip() -> None:
    """LAMB loading a state dict with its two states but no unorm_vec (Adam's; LAMB's saved with
    max_unorm=0) failed with KeyError 'unorm_vec'; it must step as from the full LAMB state."""
    p, adam = stepped(bnb.optim.Adam32bit, shape=(300,), lr=1e-1)
    saved = roundtrip(adam.state_dict())
    runs = []
    for sd in (saved, _with_unorm_vec(saved)):
        q = torch.nn.Parameter(p.detach().clone())
        runs.append(_continue(bnb.optim.LAMB32bit([q], lr=1e-1, max_unorm=1e-3), q, sd))
    assert torch.equal(runs[0], runs[1])
    assert not torch.equal(runs[0], _continue(adam, p))  # LAMB's clip acted, Adam's step did not


def test_refused_param_group_is_not_left_behind() -> None:
    """add_param_group with a parameter the kernels cannot update raised, but the group stayed in
    param_groups, so every later step failed on it."""
    a = torch.nn.Parameter(torch.ones(10))
    opt = bnb.optim.AdamW([a], lr=1e-1, weight_decay=0.0)
    with pytest.raises(TypeError, match="float32, float16 or bfloat16"):
        opt.add_param_group({"params": [torch.zeros(3, dtype=torch.int64)]})
    assert len(opt.param_groups) == 1
    b = torch.nn.Parameter(torch.ones(10))
    opt.add_param_group({"params": (t for t in [b]), "lr": 0.0})  # a generator, as torch accepts
    a.grad, b.grad = torch.ones(10), torch.ones(10)
    opt.step()
    torch.testing.assert_close(a.detach(), torch.full((10,), 0.9), rtol=0, atol=1e-6)
    assert torch.equal(b.detach(), torch.ones(10))


# ---------------------------------------------------------------------------- copies of the optimizer

COPIED = {
    "AdamW8bit": (bnb.optim.AdamW8bit, {"lr": 1e-2}),
    "PagedAdamW8bit": (bnb.optim.PagedAdamW8bit, {"lr": 1e-2}),
    "Lion32bit": (bnb.optim.Lion32bit, {"lr": 1e-3}),
    "AdEMAMix8bit": (bnb.optim.AdEMAMix8bit, {"lr": 1e-2, "t_alpha": 10}),
    "LAMB32bit": (bnb.optim.LAMB32bit, {"lr": 1e-2}),
    "SGD8bit": (bnb.optim.SGD8bit, {"lr": 1e-2, "momentum": 0.9}),
}


@pytest.mark.parametrize("how", ["deepcopy", "pickle", "torch.save"])
@pytest.mark.parametrize("name", list(COPIED))
def test_copied_optimizer_continues_identically(name: str, how: str) -> None:
    """torch pickles an optimizer's defaults, state and groups only; a copy of a bitsandbytes
    optimizer (copy.deepcopy, pickle, torch.save of the whole object) lacked the settings its
    steps read and failed with AttributeError. It must continue bit for bit like the original."""
    cls, kw = COPIED[name]
    p, opt = stepped(cls, shape=(40, 130), **kw)
    if how == "deepcopy":
        p2, opt2 = copy.deepcopy((p, opt))
    elif how == "pickle":
        p2, opt2 = pickle.loads(pickle.dumps((p, opt)))
    else:
        p2, opt2 = roundtrip((p, opt), weights_only=False)
    assert opt2.param_groups[0]["params"][0] is p2 and opt2.mng is GlobalOptimManager.get_instance()
    gen = torch.Generator().manual_seed(9)
    for _ in range(3):
        g = torch.randn(40, 130, generator=gen)
        p.grad, p2.grad = g.clone(), g.clone()
        opt.step()
        opt2.step()
    assert torch.equal(p.detach(), p2.detach())
    assert opt2.state[p2]["step"] == opt.state[p]["step"] == 5


# ---------------------------------------------------------------------------- state dicts refused


def _adam_from_torch():
    p = torch.nn.Parameter(torch.randn(64, 128))
    t = torch.optim.AdamW([p])
    p.grad = torch.randn_like(p)
    t.step()
    return t.state_dict()


def _saved(cls, shape=(64, 128), edit=None, **kw):
    sd = roundtrip(stepped(cls, shape=shape, lr=1e-2, **kw)[1].state_dict())
    if edit is not None:
        edit(sd["state"][0][QSTATE])
    return sd


def _non_blockwise(q: dict) -> None:
    """The retired (pre-0.50) non-blockwise 8-bit layout: max1/new_max1 instead of absmax."""
    for i in (1, 2):
        del q[f"absmax{i}"]
        q[f"max{i}"], q[f"new_max{i}"] = torch.zeros(1), torch.zeros(1)


SGD = (bnb.optim.SGD32bit, {"lr": 1e-2, "momentum": 0.9})
REFUSED = {
    # (state dict, loading class and its kwargs, parameter shape, message): each used to load, then
    # fail with a KeyError at the next step or, worse, step with the wrong state.
    "torch.optim AdamW": (_adam_from_torch, (bnb.optim.AdamW, {}), (64, 128), "lacks"),
    "Lion8bit into Adam8bit": (lambda: _saved(bnb.optim.Lion8bit), (bnb.optim.Adam8bit, {}), (64, 128), "lacks"),
    "Adam8bit into Lion8bit": (
        lambda: _saved(bnb.optim.Adam8bit),
        (bnb.optim.Lion8bit, {}),
        (64, 128),
        "second state",
    ),
    "Adam32bit into SGD32bit": (lambda: _saved(bnb.optim.Adam32bit, (50,)), SGD, (50,), "second state"),
    "Adam32bit into AdEMAMix32bit": (
        lambda: _saved(bnb.optim.Adam32bit),
        (bnb.optim.AdEMAMix32bit, {}),
        (64, 128),
        "keeps both EMAs in state1, of shape \\(2, 64, 128\\)",
    ),
    "AdEMAMix32bit into Adam32bit": (
        lambda: _saved(bnb.optim.AdEMAMix32bit),
        (bnb.optim.Adam32bit, {}),
        (64, 128),
        "state1 has shape \\(2, 64, 128\\), but its parameter has shape \\(64, 128\\)",
    ),
    "AdEMAMix8bit into AdamW8bit": (
        lambda: _saved(bnb.optim.AdEMAMix8bit),
        (bnb.optim.AdamW8bit, {}),
        (64, 128),
        "state1 has shape \\(2, 64, 128\\), but its parameter has shape \\(64, 128\\)",
    ),
    "non-blockwise 8-bit": (
        lambda: _saved(bnb.optim.Adam8bit, edit=_non_blockwise),
        (bnb.optim.Adam8bit, {}),
        (64, 128),
        "block-wise",
    ),
    "mixed 8/32-bit": (
        lambda: _saved(bnb.optim.Adam8bit, edit=lambda q: q.update(state2=q["state2"].float())),
        (bnb.optim.Adam8bit, {}),
        (64, 128),
        "mixes",
    ),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_load_state_dict_refuses_a_state_it_cannot_continue(case: str) -> None:
    make_sd, (cls, kw), shape, match = REFUSED[case]
    sd = make_sd()
    p = torch.nn.Parameter(torch.randn(shape))
    opt = cls([p], **kw)
    with pytest.raises(ValueError, match=match):
        opt.load_state_dict(sd)
    assert len(opt.state) == 0  # nothing half-loaded


def test_32bit_state_saved_in_another_float_dtype_loads_as_float32() -> None:
    """A 32-bit state whose tensors were converted (to bf16 by a checkpoint tool, say) used to be
    taken for an 8-bit one and fail with KeyError 'qmap1'. It is the same state rounded: it loads
    as float32 and continues exactly like the rounded float32 state."""
    p, opt = stepped(bnb.optim.AdamW32bit, lr=1e-2)
    sd = roundtrip(opt.state_dict())
    low, rounded = copy.deepcopy(sd), copy.deepcopy(sd)
    for key in ("state1", "state2"):
        low["state"][0][QSTATE][key] = sd["state"][0][QSTATE][key].bfloat16()
        rounded["state"][0][QSTATE][key] = sd["state"][0][QSTATE][key].bfloat16().float()
    runs = []
    for state_dict in (low, rounded):
        q = torch.nn.Parameter(p.detach().clone())
        o = bnb.optim.AdamW32bit([q], lr=1e-2)
        o.load_state_dict(state_dict)
        assert o.state[q]["state1"].dtype == o.state[q]["state2"].dtype == torch.float32
        q.grad = torch.randn(64, 128, generator=torch.Generator().manual_seed(3))
        o.step()
        runs.append(q.detach())
    assert torch.equal(runs[0], runs[1])


def test_load_state_dict_runs_torch_load_hooks() -> None:
    """torch.optim.Optimizer.register_load_state_dict_pre_hook / _post_hook were ignored: the
    override of load_state_dict never called them."""
    p, opt = stepped(bnb.optim.Adam8bit, lr=1e-2)
    calls = []

    def pre(optimizer, state_dict):
        calls.append("pre")
        state_dict = dict(state_dict)
        state_dict["param_groups"] = [{**g, "lr": 5e-3} for g in state_dict["param_groups"]]
        return state_dict

    fresh = bnb.optim.Adam8bit([torch.nn.Parameter(p.detach().clone())], lr=1e-2)
    fresh.register_load_state_dict_pre_hook(pre)
    fresh.register_load_state_dict_post_hook(lambda optimizer: calls.append("post"))
    fresh.load_state_dict(opt.state_dict())
    assert calls == ["pre", "post"]
    assert fresh.param_groups[0]["lr"] == 5e-3 and opt.param_groups[0]["lr"] == 1e-2


# ---- per-parameter overrides follow the parameter's life ----


def test_override_goes_with_its_parameter():
    """An override is keyed by ``id(p)``; once ``p`` is freed the entry goes too, so a new parameter
    Python places at the same address starts with the optimizer's own settings (it used to
    inherit the dead parameter's ``optim_bits=32``)."""
    import gc

    mng = GlobalOptimManager.get_instance()
    old = torch.nn.Parameter(torch.randn(4096))
    mng.override_config(old, "optim_bits", 32)
    assert mng.pid2config[id(old)] == {"optim_bits": 32}
    opt = bnb.optim.Adam8bit([old], min_8bit_size=16)
    old.grad = torch.ones_like(old)
    opt.step()
    assert opt.state[old]["state1"].dtype == torch.float32  # the override applies while it lives
    old_id = id(old)
    del opt, old
    gc.collect()
    assert old_id not in mng.pid2config
    fresh = [torch.nn.Parameter(torch.randn(4096)) for _ in range(64)]
    for p in fresh:
        p.grad = torch.ones_like(p)
    opt = bnb.optim.Adam8bit(fresh, min_8bit_size=16)
    opt.step()
    assert all(opt.state[p]["state1"].dtype == torch.uint8 for p in fresh)


def test_module_override_goes_with_its_parameter():
    import gc

    mng = GlobalOptimManager.get_instance()
    emb = torch.nn.Embedding(64, 256)
    mng.register_module_override(emb, "weight", {"optim_bits": 32})
    opt = bnb.optim.Adam8bit(emb.parameters(), min_8bit_size=16)
    emb.weight.grad = torch.ones_like(emb.weight)
    opt.step()
    assert opt.state[emb.weight]["state1"].dtype == torch.float32
    pid = id(emb.weight)
    assert pid in mng.pid2config
    mng.module_weight_config_triple.clear()
    del opt, emb
    gc.collect()
    assert pid not in mng.pid2config


def test_a_copied_optimizer_resolves_module_overrides_at_its_first_step(optim_manager):
    w = torch.nn.Parameter(torch.randn(64, 64, generator=torch.Generator().manual_seed(0)))
    opt = bnb.optim.Adam8bit([w], lr=1e-2, min_8bit_size=0)
    w.grad = torch.ones_like(w)
    opt.step()  # the original has resolved its overrides
    twin = copy.deepcopy(opt)
    tw = twin.param_groups[0]["params"][0]
    holder = torch.nn.Module()
    holder.weight = tw
    optim_manager.register_module_override(holder, "weight", {"lr": 0.0})
    before = tw.detach().clone()
    tw.grad = torch.ones_like(tw)
    twin.step()  # the copy's first step: the override (lr 0) applies
    assert torch.equal(tw.detach(), before)
