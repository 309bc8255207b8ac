"""Spec §8 (``bitsandbytes.optim``) behaviour, statement by statement, against values taken from
the spec's text: the update math of §8.5 written out here in float64, the 8-bit state rules of
§8.3/§8.5 (block size 256, fresh per-block absmax, nearest code of the signed/unsigned dynamic
map), ``get_config`` and ``GlobalOptimManager`` (§8.1, §8.4) and the load casting rules (§7.3).
Runs on whichever kernels serve the CPU (the native wheel, or ``BNB_PLATFORMS=none``)."""

from __future__ import annotations

import math
import pathlib

import pytest
import torch

import bitsandbytes as bnb
from bitsandbytes import _functional_optim as F
from bitsandbytes.optim import GlobalOptimManager
from bitsandbytes.optim.optimizer import Optimizer1State, Optimizer2State

optim = bnb.optim
DATA = pathlib.Path(__file__).parent / "data"
QSTATE = "__bnb_optimizer_quant_state__"
D64 = torch.float64
_RELEASE = torch.load(DATA / "optim_Adam8bit.pt", weights_only=True)["state_dict"]["state"][0][QSTATE]
QMAPS = (_RELEASE["qmap1"], _RELEASE["qmap2"])
"""The signed and unsigned dynamic maps as the established release stores them (qmap1, qmap2)."""


pytestmark = pytest.mark.usefixtures("optim_manager")


def _rand(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# -------------------------------------------------------------------------------------------- §8.5 in f64


def spec_step(name: str, p, g, st: dict, t: int, h: dict, clip: float = 0.0):
    """One step of spec §8.5 in float64; ``st`` (f64 states) is updated in place; returns new p.
    ``clip`` is the trust-ratio clip (LARS only here: its ``u`` is the momentum itself)."""
    p, g = p.to(D64), g.to(D64) * h.get("gnorm_scale", 1.0)
    lr, wd, b1 = h["lr"], h.get("wd", 0.0), h["b1"]
    b2, eps = h.get("b2", 0.0), h.get("eps", 0.0)
    if name in ("adam", "lamb"):
        st["m"] = b1 * st["m"] + (1 - b1) * g
        st["v"] = b2 * st["v"] + (1 - b2) * g * g
        if wd > 0:
            p = p * (1 - lr * wd)
        c2 = math.sqrt(1 - b2**t)
        return p - lr * (c2 / (1 - b1**t)) * st["m"] / (st["v"].sqrt() + eps * c2)
    if name == "ademamix":
        b3, alpha = h["b3"], h["alpha"]
        if h.get("t_alpha"):
            alpha = min(t * alpha / h["t_alpha"], alpha)
        if h.get("t_beta3"):
            s = t / h["t_beta3"]
            l1, l3 = math.log(b1), math.log(b3)
            b3 = min(math.exp(l1 * l3 / ((1 - s) * l3 + s * l1)), b3)
        st["m1"] = b1 * st["m1"] + (1 - b1) * g
        st["m2"] = b3 * st["m2"] + (1 - b3) * g
        st["v"] = b2 * st["v"] + (1 - b2) * g * g
        if wd > 0:
            p = p * (1 - lr * wd)
        den = st["v"].sqrt() / math.sqrt(1 - b2**t) + eps
        return p - lr * (st["m1"] / (1 - b1**t) + alpha * st["m2"]) / den
    if name == "lion":
        if wd > 0:
            p = p * (1 - lr * wd)
        p = p - lr * torch.sign(b1 * st["m"] + (1 - b1) * g)
        st["m"] = b2 * st["m"] + (1 - b2) * g
        return p
    g = g + wd * p
    if name in ("momentum", "lars"):
        st["m"] = g.clone() if t == 1 else b1 * st["m"] + g
        u = st["m"]
        scale = 1.0
        if clip > 0 and float(u.norm()) > clip * float(p.norm()):
            scale = clip * float(p.norm()) / float(u.norm())
        return p - lr * scale * u
    if name == "rmsprop":
        st["m"] = b1 * st["m"] + (1 - b1) * g * g
    else:  # adagrad
        st["m"] = st["m"] + g * g
    return p - lr * g / (st["m"].sqrt() + eps)


def zero_states(name: str, shape) -> dict:
    keys = {"adam": "mv", "lamb": "mv", "ademamix": ("m1", "m2", "v")}.get(name, "m")
    return {k: torch.zeros(shape, dtype=D64) for k in keys}


def as_state_tensors(name: str, st: dict) -> list[torch.Tensor]:
    """The spec's state1/state2 (§8.3) from the named f64 states."""
    if name == "ademamix":
        return [torch.stack([st["m1"], st["m2"]]), st["v"]]
    return [st["m"], st["v"]] if "v" in st else [st["m"]]


# (make, kernel name, hyper-parameters as the spec's symbols, LARS clip)
CASES_32 = {
    "Adam(wd) is decoupled": (
        lambda ps: optim.Adam(ps, lr=0.02, betas=(0.8, 0.95), eps=1e-3, weight_decay=0.3),
        "adam",
        dict(lr=0.02, b1=0.8, b2=0.95, eps=1e-3, wd=0.3),
    ),
    "AdamW32bit": (
        lambda ps: optim.AdamW32bit(ps, lr=0.01),
        "adam",
        dict(lr=0.01, b1=0.9, b2=0.999, eps=1e-8, wd=1e-2),
    ),
    "LAMB32bit(no clip)": (
        lambda ps: optim.LAMB32bit(ps, lr=0.01, weight_decay=0.1, max_unorm=0.0),
        "lamb",
        dict(lr=0.01, b1=0.9, b2=0.999, eps=1e-8, wd=0.1),
    ),
    "SGD(dampening, nesterov ignored)": (
        lambda ps: optim.SGD(ps, lr=0.05, momentum=0.7, dampening=0.5, nesterov=True, weight_decay=0.2),
        "momentum",
        dict(lr=0.05, b1=0.7, wd=0.2),
    ),
    "LARS32bit(clip)": (
        lambda ps: optim.LARS32bit(ps, lr=0.5, momentum=0.9, weight_decay=0.01, max_unorm=0.02),
        "lars",
        dict(lr=0.5, b1=0.9, wd=0.01, clip=0.02),
    ),
    "RMSprop32bit": (
        lambda ps: optim.RMSprop32bit(ps, lr=0.01, alpha=0.9, eps=1e-4, weight_decay=0.1),
        "rmsprop",
        dict(lr=0.01, b1=0.9, eps=1e-4, wd=0.1),
    ),
    "Adagrad32bit": (
        lambda ps: optim.Adagrad32bit(ps, lr=0.1, eps=1e-3, weight_decay=0.1),
        "adagrad",
        dict(lr=0.1, b1=0.0, eps=1e-3, wd=0.1),
    ),
    "Lion32bit": (
        lambda ps: optim.Lion32bit(ps, lr=0.01, betas=(0.8, 0.9), weight_decay=0.5),
        "lion",
        dict(lr=0.01, b1=0.8, b2=0.9, wd=0.5),
    ),
    "AdEMAMix(optim_bits=32)": (
        lambda ps: optim.AdEMAMix(ps, lr=0.01, betas=(0.8, 0.95, 0.99), alpha=3.0, eps=1e-6, weight_decay=0.1),
        "ademamix",
        dict(lr=0.01, b1=0.8, b2=0.95, b3=0.99, alpha=3.0, eps=1e-6, wd=0.1),
    ),
    "AdEMAMix32bit(t_alpha, t_beta3)": (
        lambda ps: optim.AdEMAMix32bit(ps, lr=0.01, betas=(0.8, 0.95, 0.999), alpha=4.0, t_alpha=3, t_beta3=5),
        "ademamix",
        dict(lr=0.01, b1=0.8, b2=0.95, b3=0.999, alpha=4.0, eps=1e-8, wd=1e-2, t_alpha=3, t_beta3=5),
    ),
}


@pytest.mark.filterwarnings("ignore:.*(dampening|nesterov).*:UserWarning")
@pytest.mark.parametrize("case", list(CASES_32))
def test_32bit_steps_match_the_spec_formulas_in_f64(case: str) -> None:
    """§8.5 per element, 32-bit path: parameters and states after each of 6 steps (the schedulers
    of AdEMAMix run past t_alpha / t_beta3) equal the f64 formulas to f32 rounding."""
    make, name, h = CASES_32[case]
    shape = (33, 17)
    w = _rand(*shape, seed=1)
    p = torch.nn.Parameter(w.clone())
    opt = make([p])
    ref, st = w.to(D64), zero_states(name, shape)
    for t in range(1, 7):
        g = _rand(*shape, seed=10 + t)
        p.grad = g.clone()
        opt.step()
        ref = spec_step(name, ref, g, st, t, h, clip=h.get("clip", 0.0))
        torch.testing.assert_close(p.detach().to(D64), ref, rtol=2e-6, atol=2e-6, msg=f"{case} step {t}")
        state = opt.state[p]
        assert state["step"] == t and type(state["step"]) is int
        for key, want in zip(("state1", "state2"), as_state_tensors(name, st)):
            assert state[key].dtype == torch.float32 and state[key].shape == want.shape, key
            torch.testing.assert_close(state[key].to(D64), want, rtol=1e-5, atol=1e-6, msg=f"{case} {key} {t}")
        if name == "lars":
            # unorm_vec (§8.3) holds ‖u‖ of this step; the clip is active here.
            assert float(state["unorm_vec"]) == pytest.approx(float(st["m"].norm()), rel=1e-5)
            assert float(st["m"].norm()) > h["clip"] * float(w.norm())


def test_lars_clip_limits_the_step_norm_to_max_unorm_times_param_norm() -> None:
    """§8.5 LARS / §3.4: the 32-bit wrapper computes ‖p‖ itself; a clipped step has norm lr·max_unorm·‖p‖."""
    p = _rand(300, seed=3)
    before = p.clone()
    g = _rand(300, seed=4) * 10
    s1, unorm = torch.zeros(300), torch.zeros(1)
    F.optimizer_update_32bit("lars", g, p, s1, 0.9, 0.0, 1, 0.5, unorm_vec=unorm, max_unorm=0.01)
    want = 0.5 * 0.01 * float(before.double().norm())
    assert float((p - before).double().norm()) == pytest.approx(want, rel=1e-5)
    assert float(unorm) == pytest.approx(float(g.double().norm()), rel=1e-6)


@pytest.mark.parametrize("name", ["adam", "rmsprop", "ademamix", "lion"])
def test_gnorm_scale_multiplies_the_gradient_first(name: str) -> None:
    """§8.5: ``g ← gnorm_scale·g`` before any of the update, on the 32-bit and 8-bit paths."""
    h = dict(lr=0.01, b1=0.9, b2=0.99, b3=0.999, alpha=2.0, eps=1e-6, wd=0.1, gnorm_scale=0.25)
    n = 600
    w, g = _rand(n, seed=5), _rand(n, seed=6)
    shape1 = (2, n) if name == "ademamix" else (n,)
    two = name in ("adam", "ademamix")
    want = spec_step(name, w, g, zero_states(name, (n,)), 1, h)
    # 32-bit
    p, s1 = w.clone(), torch.zeros(shape1)
    s2 = torch.zeros(n) if two else None
    F.optimizer_update_32bit(name, g, p, s1, 0.9, 1e-6, 1, 0.01, s2, 0.99, 0.999, 2.0, 0.1, gnorm_scale=0.25)
    torch.testing.assert_close(p.to(D64), want, rtol=1e-6, atol=1e-6)
    # 8-bit blockwise, from zero codes (code of 0.0 in each map; the first step reads zeros)
    q1, q2 = QMAPS
    c1 = torch.full(shape1, int(q1.abs().argmin()), dtype=torch.uint8)
    c2 = torch.full((n,), int(q2.abs().argmin()), dtype=torch.uint8) if two else None
    a1 = torch.zeros((2, 3) if name == "ademamix" else (3,))
    a2 = torch.zeros(3) if two else None
    p = w.clone()
    F.optimizer_update_8bit_blockwise(
        name, g, p, c1, c2, 0.9, 0.99, 0.999, 2.0, 1e-6, 1, 0.01, q1, q2 if two else None, a1, a2,
        weight_decay=0.1, gnorm_scale=0.25,
    )  # fmt: skip
    torch.testing.assert_close(p.to(D64), want, rtol=1e-6, atol=1e-6)


# -------------------------------------------------------------------------------------------- 8-bit path


def _nearest_code_check(codes, absmax, exact, qmap, what: str) -> None:
    """§8.5 / §8.3: blocks of 256 along the flattened state; absmax = max |exact| of the block;
    each code is the entry of ``qmap`` nearest exact/absmax up to one step of the 65,536-point grid
    over [-1, 1] through which the established release's CPU path rounds (2 / 65535)."""
    rows = codes.reshape(absmax.shape[0] if absmax.dim() == 2 else 1, -1)
    ex = exact.reshape(rows.shape).to(D64)
    am = absmax.reshape(rows.shape[0], -1).to(D64)
    n = rows.shape[1]
    pad = am.shape[1] * 256 - n
    assert 0 <= pad < 256, what
    blocks = torch.nn.functional.pad(ex.abs(), (0, pad)).view(rows.shape[0], -1, 256)
    torch.testing.assert_close(am, blocks.amax(-1), rtol=1e-6, atol=0, msg=f"{what}: absmax")
    scale = am.repeat_interleave(256, dim=1)[:, :n]
    norm = ex / scale.clamp_min(1e-30)
    q = qmap.to(D64)
    got = q[rows.long()]
    best = (norm.unsqueeze(-1) - q).abs().min(-1).values
    err = (got - norm).abs()
    assert bool((err <= best + 2 / 65535).all()), (
        f"{what}: a code is not the nearest (worst {float((err - best).max())})"
    )


def _dequant(codes, absmax, qmap) -> torch.Tensor:
    rows = codes.reshape(absmax.shape[0] if absmax.dim() == 2 else 1, -1)
    am = absmax.reshape(rows.shape[0], -1).to(D64)
    vals = qmap.to(D64)[rows.long()] * am.repeat_interleave(256, dim=1)[:, : rows.shape[1]]
    return vals.reshape(codes.shape)


CASES_8 = {
    "Adam8bit": (lambda ps: optim.Adam8bit(ps, lr=0.01, weight_decay=0.1), "adam", dict(lr=0.01, b1=0.9, b2=0.999, eps=1e-8, wd=0.1)),
    "AdamW8bit": (lambda ps: optim.AdamW8bit(ps, lr=0.01), "adam", dict(lr=0.01, b1=0.9, b2=0.999, eps=1e-8, wd=1e-2)),
    "LAMB8bit(no clip)": (lambda ps: optim.LAMB8bit(ps, lr=0.01), "lamb", dict(lr=0.01, b1=0.9, b2=0.999, eps=1e-8)),
    "LARS8bit(no clip)": (lambda ps: optim.LARS8bit(ps, lr=0.5, momentum=0.9, weight_decay=0.01), "lars", dict(lr=0.5, b1=0.9, wd=0.01)),
    "SGD8bit": (lambda ps: optim.SGD8bit(ps, lr=0.05, momentum=0.8, weight_decay=0.1), "momentum", dict(lr=0.05, b1=0.8, wd=0.1)),
    "RMSprop8bit": (lambda ps: optim.RMSprop8bit(ps, lr=0.01, alpha=0.9, eps=1e-4), "rmsprop", dict(lr=0.01, b1=0.9, eps=1e-4)),
    "Adagrad8bit": (lambda ps: optim.Adagrad8bit(ps, lr=0.1, eps=1e-3), "adagrad", dict(lr=0.1, b1=0.0, eps=1e-3)),
    "Lion8bit": (lambda ps: optim.Lion8bit(ps, lr=0.01, weight_decay=0.5), "lion", dict(lr=0.01, b1=0.9, b2=0.99, wd=0.5)),
    "AdEMAMix8bit(t_alpha, t_beta3)": (
        lambda ps: optim.AdEMAMix8bit(ps, lr=0.01, betas=(0.8, 0.95, 0.999), t_alpha=4, t_beta3=4),
        "ademamix",
        dict(lr=0.01, b1=0.8, b2=0.95, b3=0.999, alpha=5.0, eps=1e-8, wd=1e-2, t_alpha=4, t_beta3=4),
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", list(CASES_8))
def test_8bit_steps_dequantize_update_in_f32_and_requantize(case: str) -> None:
    """§8.5 8-bit variants: each step dequantizes the stored states (qmap[code]·absmax of the
    block of 256), applies the §8.5 update in f32 (never the trust-ratio clip), writes the
    parameter and re-quantizes the new states to the nearest code with fresh per-block absmax.
    So every step's parameter equals the f64 formula applied to the dequantized previous state."""
    make, name, h = CASES_8[case]
    shape = (40, 130)  # 5200 elements >= min_8bit_size; 21 blocks, the last one partial
    w = _rand(*shape, seed=21)
    p = torch.nn.Parameter(w.clone())
    opt = make([p])
    qmaps = QMAPS
    for t in range(1, 4):
        g = _rand(*shape, seed=30 + t)
        state = opt.state[p]
        if t == 1:
            st, start = zero_states(name, shape), w.to(D64)
        else:
            start = p.detach().to(D64)
            deq = [
                _dequant(state[f"state{i}"], state[f"absmax{i}"], qmaps[i - 1]) for i in (1, 2) if f"state{i}" in state
            ]
            st = dict(zip(zero_states(name, shape), ([deq[0][0], deq[0][1], deq[1]] if name == "ademamix" else deq)))
        want = spec_step(name, start, g, st, t, h)
        p.grad = g.clone()
        opt.step()
        torch.testing.assert_close(p.detach().to(D64), want, rtol=2e-6, atol=2e-6, msg=f"{case} step {t}")
        for i, exact in enumerate(as_state_tensors(name, st), start=1):
            codes, absmax = state[f"state{i}"], state[f"absmax{i}"]
            assert codes.dtype == torch.uint8 and codes.shape == exact.shape
            blocks = -(-w.numel() // 256)
            assert absmax.dtype == torch.float32
            assert absmax.shape == ((2, blocks) if name == "ademamix" and i == 1 else (blocks,))
            assert torch.equal(state[f"qmap{i}"], qmaps[i - 1])
            _nearest_code_check(codes, absmax, exact, qmaps[i - 1], f"{case} state{i} step {t}")


def test_8bit_maps_are_the_established_release_maps() -> None:
    """§8.1 ``fill_qmap``: ``name2qmap["dynamic"]`` is the signed and ``"udynamic"`` the unsigned
    map, as the established release stores them as qmap1 / qmap2 (tests/data/optim_Adam8bit.pt)."""
    opt = Optimizer2State("adam", [torch.nn.Parameter(torch.zeros(4))], optim_bits=8)
    assert set(opt.name2qmap) == {"dynamic", "udynamic"}
    assert torch.equal(opt.name2qmap["dynamic"], QMAPS[0])
    assert torch.equal(opt.name2qmap["udynamic"], QMAPS[1])
    assert Optimizer2State("adam", [torch.nn.Parameter(torch.zeros(4))]).name2qmap == {}


# -------------------------------------------------------------------------------------------- §8.1 base class


def test_step_semantics() -> None:
    """§8.1 step(): closure under enable_grad (inside no_grad), its loss returned; params without
    a grad get no state and do not move; ``initialized`` set by the first step; a module override
    registered after construction is resolved then."""
    lin, emb = torch.nn.Linear(80, 80), torch.nn.Embedding(100, 64)
    frozen = torch.nn.Parameter(torch.ones(5000))
    opt = optim.Adam8bit([lin.weight, emb.weight, frozen], lr=0.1)
    GlobalOptimManager.get_instance().register_module_override(emb, "weight", {"optim_bits": 32})
    assert opt.initialized is False
    x = _rand(4, 80, seed=2)

    def closure():
        assert torch.is_grad_enabled()
        opt.zero_grad()
        loss = lin(x).square().sum() + emb(torch.tensor([1, 2])).sum()
        loss.backward()
        return loss

    with torch.no_grad():
        loss = opt.step(closure)
    assert isinstance(loss, torch.Tensor) and loss.requires_grad
    assert opt.initialized is True
    assert opt.state[lin.weight]["state1"].dtype == torch.uint8
    assert opt.state[emb.weight]["state1"].dtype == torch.float32
    assert frozen not in opt.state or not opt.state[frozen]
    assert torch.equal(frozen.detach(), torch.ones(5000))
    assert opt.step() is None


def test_get_config_defaults_and_override_precedence(optim_manager) -> None:
    """§8.1 get_config: group values, ``alpha`` 0.0 / ``t_alpha``/``t_beta3`` None when the group
    has none, the settings of ``args``; then index2config[(g, p)], then pid2config[id(p)]."""
    p, q = torch.nn.Parameter(torch.zeros(8)), torch.nn.Parameter(torch.zeros(8))
    opt = Optimizer1State("momentum", [p], lr=0.3, betas=(0.5, 0.0), eps=0.0, weight_decay=0.25, optim_bits=8)
    opt.add_param_group({"params": [q], "lr": 0.7})
    want = dict(betas=(0.5, 0.0), eps=0.0, weight_decay=0.25, lr=0.3, alpha=0.0, t_alpha=None, t_beta3=None,
                optim_bits=8, min_8bit_size=4096, max_unorm=0.0, skip_zeros=False)  # fmt: skip
    cfg = opt.get_config(0, 0, opt.param_groups[0])
    assert {k: (tuple(v) if k == "betas" else v) for k, v in cfg.items() if k in want} == want
    assert opt.get_config(1, 0, opt.param_groups[1])["lr"] == 0.7
    optim_manager.index2config[(1, 0)] = {"lr": 0.11, "eps": 0.5}
    optim_manager.override_config(q, "lr", 0.22)
    cfg = opt.get_config(1, 0, opt.param_groups[1])
    assert (cfg["lr"], cfg["eps"]) == (0.22, 0.5)
    assert opt.get_config(0, 0, opt.param_groups[0])["lr"] == 0.3


def test_state_width_follows_min_8bit_size_and_optim_bits_overrides(optim_manager) -> None:
    """§8.1 init_state: 8-bit states iff optim_bits == 8 and numel >= min_8bit_size, both taken
    from the per-parameter config (overrides included)."""
    ps = [torch.nn.Parameter(_rand(5000, seed=i)) for i in range(4)]
    optim_manager.override_config(ps[1], "min_8bit_size", 5001)
    optim_manager.override_config([ps[2]], key_value_dict={"min_8bit_size": 5000})
    opt = optim.Adam(ps, optim_bits=8, min_8bit_size=4096)
    optim_manager.override_config(ps[3], "optim_bits", 32)
    thirty_two = optim.Adam32bit([torch.nn.Parameter(_rand(64, seed=9))])
    big = torch.nn.Parameter(_rand(5000, seed=8))
    optim_manager.override_config(big, "optim_bits", 8)
    thirty_two.add_param_group({"params": [big]})
    for o in (opt, thirty_two):
        for group in o.param_groups:
            for p in group["params"]:
                p.grad = torch.ones_like(p)
        o.step()
    dt = [opt.state[p]["state1"].dtype for p in ps]
    assert dt == [torch.uint8, torch.float32, torch.uint8, torch.float32]
    assert thirty_two.state[big]["state1"].dtype == torch.uint8
    assert opt.state[ps[0]]["absmax1"].shape == (math.ceil(5000 / 256),)


def test_paged_optimizer_on_cpu_keeps_ordinary_states() -> None:
    """§8.1 get_state_buffer: zeros like p; CPU parameters are never paged."""
    p = torch.nn.Parameter(_rand(100_000, seed=1))
    opt = optim.PagedAdamW8bit([p])
    assert opt.is_paged is True
    buf = opt.get_state_buffer(p, torch.uint8)
    assert buf.dtype == torch.uint8 and buf.shape == p.shape and not buf.any() and buf.device == p.device
    p.grad = torch.ones_like(p)
    opt.step()
    assert opt.state[p]["state1"].device.type == "cpu"


def test_load_state_dict_casting_rules() -> None:
    """§7.3: floating tensors outside non_castable_tensor_keys are cast to the parameter dtype;
    those keys keep their dtype (state1/2 f32 or u8, qmap, absmax, unorm_vec f32)."""
    src = [torch.nn.Parameter(_rand(64, 80, seed=1)), torch.nn.Parameter(_rand(30, seed=2))]
    opt = optim.LAMB8bit(src, lr=0.01)
    for p in src:
        p.grad = torch.ones_like(p)
    opt.step()
    sd = opt.state_dict()
    for i in (0, 1):
        assert set(sd["state"][i]) == {"step", QSTATE} and type(sd["state"][i]["step"]) is int
        sd["state"][i]["extra"] = torch.full((3,), 1.0 / 3.0)
    dst = [torch.nn.Parameter(p.detach().to(torch.bfloat16)) for p in src]
    opt2 = optim.LAMB8bit(dst, lr=0.01)
    opt2.load_state_dict(sd)
    big, small = opt2.state[dst[0]], opt2.state[dst[1]]
    assert big["extra"].dtype == torch.bfloat16 and small["extra"].dtype == torch.bfloat16
    want = {"state1": torch.uint8, "state2": torch.uint8, "qmap1": torch.float32, "qmap2": torch.float32,
            "absmax1": torch.float32, "absmax2": torch.float32, "unorm_vec": torch.float32}  # fmt: skip
    assert {k: big[k].dtype for k in want} == want
    assert (small["state1"].dtype, small["state2"].dtype) == (torch.float32, torch.float32)
    for key, v in opt.state[src[0]].items():
        if isinstance(v, torch.Tensor):
            assert torch.equal(big[key], v), key


# -------------------------------------------------------------------------------------------- §8.4 manager


def test_register_parameters_maps_overrides_to_group_positions(optim_manager) -> None:
    """§8.4 register_parameters: a param iterable or param-group dicts; existing pid2config
    entries become index2config[(group, index)]; override_config merges into the entry."""
    a, b, c = (torch.nn.Parameter(torch.zeros(3)) for _ in range(3))
    optim_manager.override_config([b, c], "lr", 0.5)
    optim_manager.override_config(c, key_value_dict={"eps": 0.25})
    assert optim_manager.uses_config_override is True
    assert optim_manager.pid2config[id(c)] == {"lr": 0.5, "eps": 0.25} and optim_manager.pid2config[id(b)] == {
        "lr": 0.5
    }
    optim_manager.register_parameters([{"params": [a]}, {"params": [b, c]}])
    assert optim_manager.index2config == {(1, 0): {"lr": 0.5}, (1, 1): {"lr": 0.5, "eps": 0.25}}
    optim_manager.index2config.clear()
    optim_manager.register_parameters([a, b, c])
    assert set(optim_manager.index2config) == {(0, 1), (0, 2)}


@pytest.mark.parametrize("how", ["override_config", "register_module_override"])
def test_overrides_follow_the_parameters_through_model_to(how, optim_manager) -> None:
    """§8.4: overrides keyed by the parameter keep applying after ``model.to(dtype)`` (which
    keeps the Parameter objects), and only to that parameter."""
    model = torch.nn.Sequential(torch.nn.Embedding(100, 64), torch.nn.Linear(64, 80))
    if how == "override_config":
        optim_manager.override_config(model[0].weight, "optim_bits", 32)
    else:
        optim_manager.register_module_override(model[0], "weight", {"optim_bits": 32})
    model.to(torch.bfloat16)
    opt = optim.AdamW8bit(model.parameters())
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    opt.step()
    assert model[0].weight.dtype == torch.bfloat16
    assert opt.state[model[0].weight]["state1"].dtype == torch.float32
    assert opt.state[model[1].weight]["state1"].dtype == torch.uint8
