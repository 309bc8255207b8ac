"""Constructor options and per-parameter choices of the optimizers (spec §8): argument checks,
``min_8bit_size``, ``max_unorm``, strided parameters, dtypes, ``GlobalOptimManager`` overrides
and the state dict across bit widths; the 32-bit trajectories against the update math of §8.5
written out in plain f32."""

from __future__ import annotations

import math

import pytest
import torch

import bitsandbytes as bnb
from bitsandbytes.optim.optimizer import Optimizer1State, Optimizer2State

optim = bnb.optim


pytestmark = pytest.mark.usefixtures("optim_manager")


def _param(*shape: int, dtype: torch.dtype = torch.float32) -> torch.nn.Parameter:
    return torch.nn.Parameter(torch.randn(*shape).to(dtype))


# -------------------------------------------------------------------------------------------- arguments


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda ps: optim.Adam(ps, betas=(0.9, 0.99, 0.999)), r"Invalid betas: .* needs 2 values"),
        (lambda ps: optim.AdamW8bit(ps, betas=(0.9, 0.99, 0.999)), r"Invalid betas: .* needs 2 values"),
        (lambda ps: optim.Lion(ps, betas="(0.9, 0.99, 0.5)"), r"Invalid betas: .* needs 2 values"),
        (lambda ps: optim.AdEMAMix(ps, betas=(0.9, 0.99, 0.999, 0.5)), r"Invalid betas: .* needs 3 values"),
        (lambda ps: optim.Adam(ps, optim_bits=16), r"Invalid optim_bits value: 16"),
        (lambda ps: optim.AdEMAMix(ps, optim_bits=4), r"Invalid optim_bits value: 4"),
        (lambda ps: optim.Adam8bit(ps, min_8bit_size=-1), r"Invalid min_8bit_size value: -1"),
        (lambda ps: optim.LAMB(ps, max_unorm=-0.5), r"Invalid max_unorm value: -0.5"),
        (lambda ps: optim.LARS(ps, lr=0.1, momentum=0.9, max_unorm=float("nan")), r"Invalid max_unorm value: nan"),
        (lambda ps: Optimizer2State("adamw", ps), r"Invalid optimizer_name .*'adamw'; expected one of adam, lamb"),
        (lambda ps: Optimizer2State("momentum", ps), r"'momentum' is updated by Optimizer1State"),
        (lambda ps: Optimizer1State("adam", ps), r"'adam' is updated by Optimizer2State"),
        (lambda ps: Optimizer1State("sgd", ps), r"Invalid optimizer_name .*'sgd'; expected one of momentum"),
        (lambda ps: optim.SGD(ps, lr=0.1, momentum=1.0), r"Invalid momentum value: 1.0"),
        (lambda ps: optim.SGD8bit(ps, lr=0.1, momentum=-0.5), r"Invalid momentum value: -0.5"),
        (lambda ps: optim.LARS(ps, lr=0.1, momentum=0.9, dampening=1.0), r"Invalid dampening value: 1.0"),
        (lambda ps: optim.SGD(ps, lr=0.1, momentum=0.9, dampening=1.5), r"Invalid dampening value: 1.5"),
        (lambda ps: optim.RMSprop(ps, alpha=1.5), r"Invalid alpha value: 1.5"),
        (lambda ps: optim.RMSprop32bit(ps, momentum=1.0), r"Invalid momentum value: 1.0"),
    ],
)
def test_bad_settings_are_refused_at_construction(make, match) -> None:
    """Each of these used to be accepted (a surplus beta ignored, a negative max_unorm taken as
    no clip), fail only at the first step, or name a ``beta`` the caller never passed."""
    with pytest.raises(ValueError, match=match):
        make([_param(300)])


def test_settings_of_an_args_object_are_checked() -> None:
    class Args:
        optim_bits, min_8bit_size, max_unorm, skip_zeros = 12, 4096, 0.0, False

    with pytest.raises(ValueError, match="Invalid optim_bits value: 12"):
        optim.Adam([_param(8)], args=Args())


@pytest.mark.parametrize("where", ["group", "override"])
def test_betas_of_the_wrong_length_in_a_group_or_override(where, optim_manager) -> None:
    p, q = _param(10), _param(10)
    opt = optim.Adam([p])
    if where == "group":
        opt.add_param_group({"params": [q], "betas": (0.5,)})
    else:
        opt.add_param_group({"params": [q]})
        optim_manager.override_config(q, "betas", (0.5, 0.6, 0.7))
    p.grad, q.grad = torch.randn(10), torch.randn(10)
    with pytest.raises(ValueError, match=r"Adam: invalid betas .* needs 2 values"):
        opt.step()


def test_good_settings_are_kept() -> None:
    p = _param(8)
    with pytest.warns(UserWarning, match="dampening=0.25"):
        opt = optim.SGD([p], lr=0.1, momentum=0.5, dampening=0.25)
    assert opt.param_groups[0]["betas"] == (0.5, 0.25)
    with pytest.warns(UserWarning, match="momentum=0.3"):
        opt = optim.RMSprop([p], alpha=0.9, momentum=0.3)
    assert opt.param_groups[0]["betas"] == (0.9, 0.3)
    opt = optim.LAMB([p], max_unorm=0.0)
    assert opt.args.max_unorm == 0.0 and opt.args.min_8bit_size == 4096


# -------------------------------------------------------------------------------------------- 32-bit math (§8.5)


def _reference(name, p, g, st, t, h):
    """One step of spec §8.5 in plain f32 (``st``: the states, updated in place)."""
    lr, b1, b2, b3, eps, wd, clip = (
        h["lr"],
        h["b1"],
        h.get("b2", 0.0),
        h.get("b3", 0.0),
        h["eps"],
        h["wd"],
        h.get("clip", 0.0),
    )
    p, g = p.float().clone(), g.float()

    def scale(u):
        un, pn = float(u.double().norm()), float(p.double().norm())
        return clip * pn / un if clip > 0 and un > clip * pn else 1.0

    if name in ("adam", "lamb"):
        m, v = st
        m.mul_(b1).add_((1 - b1) * g)
        v.mul_(b2).add_((1 - b2) * g * g)
        c1, c2 = 1 - b1**t, math.sqrt(1 - b2**t)
        u = m / (v.sqrt() + eps * c2)
        s = scale(u)
        p = p * (1 - lr * wd)
        return p - lr * s * (c2 / c1) * u
    if name == "ademamix":
        m1, m2, v = st
        m1.mul_(b1).add_((1 - b1) * g)
        m2.mul_(b3).add_((1 - b3) * g)
        v.mul_(b2).add_((1 - b2) * g * g)
        p = p * (1 - lr * wd)
        return p - lr * (m1 / (1 - b1**t) + h["alpha"] * m2) / (v.sqrt() / math.sqrt(1 - b2**t) + eps)
    if name == "lion":
        (m,) = st
        p = p * (1 - lr * wd) - lr * torch.sign(b1 * m + (1 - b1) * g)
        m.mul_(b2).add_((1 - b2) * g)
        return p
    g = g + wd * p  # L2 decay, folded into the gradient
    (s,) = st
    if name in ("momentum", "lars"):
        s.copy_(g) if t == 1 else s.mul_(b1).add_(g)
        return p - lr * scale(s) * s
    if name == "rmsprop":
        s.mul_(b1).add_((1 - b1) * g * g)
    else:
        s.add_(g * g)
    return p - lr * g / (s.sqrt() + eps)


ADAM = dict(b1=0.9, b2=0.999, eps=1e-8)
CASES = {
    "Adam32bit+wd": (
        "adam",
        2,
        lambda ps: optim.Adam32bit(ps, lr=1e-2, weight_decay=0.1),
        {**ADAM, "lr": 1e-2, "wd": 0.1},
    ),
    "AdamW": ("adam", 2, lambda ps: optim.AdamW(ps, lr=1e-2), {**ADAM, "lr": 1e-2, "wd": 1e-2}),
    "Optimizer2State(max_unorm)": (
        "adam",
        2,
        lambda ps: Optimizer2State("adam", ps, lr=0.1, max_unorm=0.01),
        {**ADAM, "lr": 0.1, "wd": 0.0, "clip": 0.01},
    ),
    "LAMB": (
        "lamb",
        2,
        lambda ps: optim.LAMB(ps, lr=0.1, weight_decay=0.1),
        {**ADAM, "lr": 0.1, "wd": 0.1, "clip": 1.0},
    ),
    "LAMB(max_unorm=0.01)": (
        "lamb",
        2,
        lambda ps: optim.LAMB32bit(ps, lr=0.1, max_unorm=0.01),
        {**ADAM, "lr": 0.1, "wd": 0.0, "clip": 0.01},
    ),
    "AdEMAMix": (
        "ademamix",
        3,
        lambda ps: optim.AdEMAMix(ps, lr=1e-2),
        {"b1": 0.9, "b2": 0.999, "b3": 0.9999, "alpha": 5.0, "eps": 1e-8, "lr": 1e-2, "wd": 1e-2},
    ),
    "Lion": (
        "lion",
        1,
        lambda ps: optim.Lion(ps, lr=1e-2, weight_decay=0.5),
        {"b1": 0.9, "b2": 0.99, "eps": 0.0, "lr": 1e-2, "wd": 0.5},
    ),
    "SGD": (
        "momentum",
        1,
        lambda ps: optim.SGD(ps, lr=1e-2, momentum=0.9, weight_decay=0.1),
        {"b1": 0.9, "eps": 0.0, "lr": 1e-2, "wd": 0.1},
    ),
    "LARS": (
        "lars",
        1,
        lambda ps: optim.LARS(ps, lr=0.1, momentum=0.9, weight_decay=0.1),
        {"b1": 0.9, "eps": 0.0, "lr": 0.1, "wd": 0.1, "clip": 0.02},
    ),
    "RMSprop": (
        "rmsprop",
        1,
        lambda ps: optim.RMSprop(ps, lr=1e-2, weight_decay=0.1),
        {"b1": 0.99, "eps": 1e-8, "lr": 1e-2, "wd": 0.1},
    ),
    "Adagrad": (
        "adagrad",
        1,
        lambda ps: optim.Adagrad(ps, lr=1e-2, weight_decay=0.1),
        {"b1": 0.0, "eps": 1e-10, "lr": 1e-2, "wd": 0.1},
    ),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_32bit_trajectory_matches_the_spec_math(case, dtype) -> None:
    name, n_states, make, h = CASES[case]
    torch.manual_seed(0)
    w = torch.randn(33, 17).to(dtype)
    p = torch.nn.Parameter(w.clone())
    opt = make([p])
    ref, states = w.float().clone(), [torch.zeros(33, 17) for _ in range(n_states)]
    for t in range(1, 5):
        g = torch.randn(33, 17).to(dtype)
        p.grad = g.clone()
        opt.step()
        ref = _reference(name, ref, g, states, t, h).to(dtype).float()
        # f32: a few ulps (fused vs. term-by-term); bf16: the same value after rounding, or its neighbour.
        tol = 1e-6 if dtype == torch.float32 else 1e-2
        torch.testing.assert_close(p.detach().float(), ref, rtol=tol, atol=tol)


# -------------------------------------------------------------------------------------------- per-parameter choices


def test_min_8bit_size_boundary_and_state_dict_layout() -> None:
    big, small = _param(64, 64), _param(64, 64 - 1)  # 4096 and 4032 elements
    opt = optim.AdamW8bit([big, small])
    big.grad, small.grad = torch.randn_like(big), torch.randn_like(small)
    opt.step()
    assert opt.state[big]["state1"].dtype == torch.uint8 and opt.state[big]["absmax1"].shape == (16,)
    assert opt.state[small]["state1"].dtype == torch.float32 and "qmap1" not in opt.state[small]
    sd = opt.state_dict()["state"]
    assert set(sd[1]) == {"step", "__bnb_optimizer_quant_state__"} and sd[1]["step"] == 1
    assert set(sd[1]["__bnb_optimizer_quant_state__"]) == {"state1", "state2"}
    inner = sd[0]["__bnb_optimizer_quant_state__"]
    assert set(inner) == {"state1", "qmap1", "absmax1", "state2", "qmap2", "absmax2"}
    opt = optim.Adam8bit([small], min_8bit_size=0)
    small.grad = torch.randn_like(small)
    opt.step()
    assert opt.state[small]["state1"].dtype == torch.uint8 and opt.state[small]["absmax1"].shape == (16,)


@pytest.mark.parametrize(
    "make",
    [
        lambda ps: optim.Adam(ps, lr=0.1),
        lambda ps: optim.Adam8bit(ps, lr=0.1, min_8bit_size=0),
        lambda ps: optim.Lion8bit(ps, lr=0.1, min_8bit_size=0),
        lambda ps: optim.AdEMAMix8bit(ps, lr=0.1, min_8bit_size=0),
        lambda ps: optim.LAMB(ps, lr=0.1),
    ],
)
def test_a_strided_view_parameter_keeps_its_storage(make) -> None:
    """A parameter that is a column slice of a buffer is updated in place, as torch.optim does;
    it used to be replaced by a contiguous copy, so the buffer never saw the steps."""
    torch.manual_seed(0)
    base = torch.randn(40, 24)
    p = torch.nn.Parameter(base[:, :12])
    ref = torch.nn.Parameter(base[:, :12].clone())
    opt, opt_ref = make([p]), make([ref])
    for _ in range(2):
        g = torch.randn(40, 12)
        p.grad, ref.grad = g.clone(), g.clone()
        opt.step()
        opt_ref.step()
    assert p.data_ptr() == base.data_ptr() and p.stride() == (24, 1)
    assert torch.equal(base[:, :12], ref.detach()) and torch.equal(p.detach(), ref.detach())


def test_a_channels_last_weight_stays_channels_last() -> None:
    conv = torch.nn.Conv2d(4, 8, 3).to(memory_format=torch.channels_last)
    opt = optim.AdamW(conv.parameters())
    conv(torch.randn(2, 4, 8, 8).to(memory_format=torch.channels_last)).sum().backward()
    opt.step()
    assert conv.weight.is_contiguous(memory_format=torch.channels_last) and not conv.weight.is_contiguous()


def test_mixed_dtypes_in_one_group_match_single_parameter_runs() -> None:
    torch.manual_seed(0)
    dtypes = (torch.bfloat16, torch.float16, torch.float32)
    ws = [torch.randn(300).to(dt) for dt in dtypes]
    ps = [torch.nn.Parameter(w.clone()) for w in ws]
    alone = [torch.nn.Parameter(w.clone()) for w in ws]
    opt = optim.Adam8bit(ps, lr=1e-2, min_8bit_size=256)
    opts = [optim.Adam8bit([a], lr=1e-2, min_8bit_size=256) for a in alone]
    for _ in range(2):
        for p, a in zip(ps, alone):
            p.grad = torch.randn_like(p)
            a.grad = p.grad.clone()
        opt.step()
        for o in opts:
            o.step()
    for p, a, dt in zip(ps, alone, dtypes):
        assert p.dtype == dt and torch.equal(p.detach(), a.detach())


@pytest.mark.parametrize(
    "make", [lambda ps: optim.Adam8bit(ps, min_8bit_size=0), lambda ps: optim.LAMB(ps), lambda ps: optim.AdEMAMix(ps)]
)
def test_empty_and_scalar_parameters(make) -> None:
    empty, scalar = torch.nn.Parameter(torch.zeros(0, 3)), torch.nn.Parameter(torch.tensor(2.0))
    opt = make([empty, scalar])
    for _ in range(2):
        empty.grad, scalar.grad = torch.zeros(0, 3), torch.tensor(0.5)
        opt.step()
    assert opt.state[empty]["step"] == 2 and empty.shape == (0, 3)
    assert scalar.shape == () and 1.99 < float(scalar.detach()) < 2.0


# -------------------------------------------------------------------------------------------- GlobalOptimManager


def test_override_forms_before_and_after_construction(optim_manager) -> None:
    a, b, c = _param(5000), _param(5000), _param(5000)
    optim_manager.override_config(a, key_value_dict={"optim_bits": 32})
    opt = optim.Adam8bit([a, b, c], lr=0.1)
    optim_manager.override_config([b], "optim_bits", 32)  # after construction, before the first step
    for p in (a, b, c):
        p.grad = torch.randn_like(p)
    opt.step()
    assert [opt.state[p]["state1"].dtype for p in (a, b, c)] == [torch.float32, torch.float32, torch.uint8]
    optim_manager.override_config(c, "lr", 0.0)  # after the first step: applies from the next one
    before = c.detach().clone()
    opt.step()
    assert torch.equal(c.detach(), before) and opt.state[c]["state1"].dtype == torch.uint8


@pytest.mark.parametrize("how", ["module", "register_parameters"])
def test_an_override_does_not_reach_another_optimizers_parameter(how, optim_manager) -> None:
    """Overrides for one model's parameter stayed behind by position, (group 0, parameter 0),
    and froze the first parameter of every optimizer built afterwards (lr 0 here)."""
    torch.manual_seed(0)
    a, b = torch.nn.Linear(4, 4), torch.nn.Linear(4, 4)
    if how == "module":
        optim_manager.register_module_override(a, "weight", {"lr": 0.0})
    else:
        optim_manager.override_config(a.weight, "lr", 0.0)
        optim_manager.register_parameters(a.parameters())
    opt_a, opt_b = optim.Adam(a.parameters(), lr=0.1), optim.Adam(b.parameters(), lr=0.1)
    for m, opt in ((a, opt_a), (b, opt_b)):
        m(torch.randn(3, 4)).sum().backward()
        before = m.weight.detach().clone()
        opt.step()
        moved = not torch.equal(before, m.weight.detach())
        assert moved == (m is b)


def test_register_parameters_still_applies_by_position_to_a_new_parameter(optim_manager) -> None:
    """The purpose of ``register_parameters``: an override whose parameter is gone (replaced by a
    new object) still reaches the parameter at its position."""
    import gc

    old = _param(5000)
    optim_manager.override_config(old, "optim_bits", 32)
    optim_manager.register_parameters([old])
    del old
    gc.collect()
    new = _param(5000)
    opt = optim.Adam8bit([new])
    new.grad = torch.randn_like(new)
    opt.step()
    assert opt.state[new]["state1"].dtype == torch.float32


# -------------------------------------------------------------------------------------------- state dict across widths


@pytest.mark.parametrize("src, dst", [(optim.Lion8bit, optim.Lion32bit), (optim.AdamW32bit, optim.AdamW8bit)])
def test_state_dict_into_the_other_bit_width_continues(src, dst) -> None:
    torch.manual_seed(0)
    p = _param(64, 128)
    opt = src([p], lr=1e-2)
    for _ in range(2):
        p.grad = torch.randn_like(p)
        opt.step()
    q = torch.nn.Parameter(p.detach().clone())
    other = dst([q], lr=1e-2)
    other.load_state_dict(opt.state_dict())
    assert other.state[q]["state1"].dtype == opt.state[p]["state1"].dtype  # the saved states' width goes on
    g = torch.randn_like(p)
    p.grad, q.grad = g.clone(), g.clone()
    opt.step()
    other.step()
    assert torch.equal(p.detach(), q.detach())


@pytest.mark.parametrize(
    "make, name",
    [
        (lambda ps: optim.Adam(ps, amsgrad=True), "amsgrad=True"),
        (lambda ps: optim.PagedAdamW32bit(ps, amsgrad=True), "amsgrad=True"),
        (lambda ps: optim.LAMB(ps, bias_correction=False), "bias_correction=False"),
        (lambda ps: optim.LAMB32bit(ps, adam_w_mode=False), "adam_w_mode=False"),
        (lambda ps: optim.SGD(ps, lr=0.1, momentum=0.9, nesterov=True), "nesterov=True"),
        (lambda ps: optim.LARS8bit(ps, lr=0.1, momentum=0.9, dampening=0.5), "dampening=0.5"),
        (lambda ps: optim.RMSprop8bit(ps, momentum=0.9), "momentum=0.9"),
    ],
)
def test_an_accepted_but_unapplied_argument_warns(make, name) -> None:
    """Spec §8.2 accepts these for compatibility, but the update does not apply them: asking for
    AMSGrad, Nesterov or RMSprop momentum used to give plain steps without a word."""
    with pytest.warns(UserWarning, match=f"{name} is accepted for compatibility but not applied"):
        make([_param(8)])


def test_defaults_of_unapplied_arguments_do_not_warn() -> None:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for make in (optim.Adam, optim.AdamW8bit, optim.LAMB, optim.RMSprop, optim.Adagrad):
            make([_param(8)])
        optim.SGD([_param(8)], lr=0.1, momentum=0.9)
        optim.LARS([_param(8)], lr=0.1, momentum=0.9)
