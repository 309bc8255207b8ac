"""The two optimizer ops, on every (device, implementation) pair present, against the update
math of spec §8.5 written out independently here."""

from __future__ import annotations

import math

import pytest
import torch

import bitsandbytes  # noqa: F401  (registers the kernels)
from bitsandbytes.backends.reference import KERNELS
from bitsandbytes.backends.reference.codebooks import dynamic_map
from conftest import impl_params

NAMES = ["adam", "lamb", "momentum", "lars", "rmsprop", "adagrad", "lion", "ademamix"]
TWO_STATE = {"adam", "lamb", "ademamix"}
HYPER = dict(beta1=0.9, beta2=0.99, beta3=0.999, alpha=2.0, eps=1e-6, weight_decay=0.05, lr=1e-2)


def expected(name: str, g, p, s1, s2, step: int, h=HYPER):
    """(new p, new s1, new s2) in f32 per spec §8.5 (no clipping)."""
    g, p = g.float(), p.float()
    s1 = s1.clone().float()
    s2 = s2.clone().float() if s2 is not None else None
    b1, b2, b3, a, eps, wd, lr = (h[k] for k in ("beta1", "beta2", "beta3", "alpha", "eps", "weight_decay", "lr"))
    if name in ("adam", "lamb"):
        s1 = b1 * s1 + (1 - b1) * g
        s2 = b2 * s2 + (1 - b2) * g * g
        c1, c2 = 1 - b1**step, math.sqrt(1 - b2**step)
        p = p * (1 - lr * wd) - lr * (c2 / c1) * s1 / (s2.sqrt() + eps * c2)
    elif name == "ademamix":
        s1 = torch.stack([b1 * s1[0] + (1 - b1) * g, b3 * s1[1] + (1 - b3) * g])
        s2 = b2 * s2 + (1 - b2) * g * g
        c1, c2 = 1 - b1**step, math.sqrt(1 - b2**step)
        p = p * (1 - lr * wd) - lr * (s1[0] / c1 + a * s1[1]) / (s2.sqrt() / c2 + eps)
    elif name == "lion":
        p = p * (1 - lr * wd) - lr * torch.sign(b1 * s1 + (1 - b1) * g)
        s1 = b2 * s1 + (1 - b2) * g
    else:
        g = g + wd * p
        if name in ("momentum", "lars"):
            s1 = g.clone() if step == 1 else b1 * s1 + g
            p = p - lr * s1
        elif name == "rmsprop":
            s1 = b1 * s1 + (1 - b1) * g * g
            p = p - lr * g / (s1.sqrt() + eps)
        else:
            s1 = s1 + g * g
            p = p - lr * g / (s1.sqrt() + eps)
    return p, s1, s2


def states32(name, shape, device, positive=False):
    gen = torch.Generator().manual_seed(3)
    s1_shape = (2, *shape) if name == "ademamix" else shape
    s1 = torch.randn(s1_shape, generator=gen) * 0.1
    if name in ("rmsprop", "adagrad"):
        s1 = s1.abs()
    s2 = (torch.randn(shape, generator=gen) * 0.1).abs() if name in TWO_STATE else None
    return s1.to(device), (s2.to(device) if s2 is not None else None)


@pytest.mark.parametrize("device, impl, fn", impl_params("optimizer_update_32bit"))
@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("step", [1, 3])
def test_update_32bit(device, impl, fn, name, dtype, step) -> None:
    gen = torch.Generator().manual_seed(0)
    shape = (33, 17)  # odd size: a partial last block
    p = torch.randn(shape, generator=gen).to(device, dtype)
    g = torch.randn(shape, generator=gen).to(device, dtype)
    s1, s2 = states32(name, shape, device)
    want_p, want_s1, want_s2 = expected(name, g, p, s1, s2, step)
    ref = [None if t is None else t.cpu().clone() for t in (g, p, s1, s2)]
    for f, (g_, p_, s1_, s2_) in ((fn, (g, p, s1, s2)), (KERNELS["optimizer_update_32bit"], ref)):
        f(
            name, g_, p_, s1_, s2_, None, 0.0, 0.0, HYPER["beta1"], HYPER["beta2"], HYPER["beta3"], HYPER["alpha"],
            HYPER["eps"], HYPER["weight_decay"], step, HYPER["lr"], 1.0, False,
        )  # fmt: skip
    # The states equal the reference kernel's bit for bit (every kernel spells their arithmetic
    # with one rounding per operation, as the reference's torch ops round); the parameter is
    # within rounding of it below.
    for got, want in ((s1, ref[2]), (s2, ref[3])):
        if got is not None:
            assert torch.equal(got.cpu().view(torch.int32), want.view(torch.int32)), "state differs from the reference"
    assert p.dtype == dtype
    tol = {torch.float32: 1e-6, torch.bfloat16: 1e-2, torch.float16: 2e-3}[dtype]
    torch.testing.assert_close(p.float(), want_p.to(dtype).float(), rtol=tol, atol=tol)
    torch.testing.assert_close(s1, want_s1, rtol=1e-5, atol=1e-6)
    if s2 is not None:
        torch.testing.assert_close(s2, want_s2, rtol=1e-5, atol=1e-6)


def _run_32bit(fn, name, p, g, *, beta1=0.9, beta2=0.99, max_unorm=0.0, unorm=None, step=3):
    s1, s2 = states32(name, p.shape, p.device)
    fn(
        name, g, p, s1, s2, unorm, max_unorm, 1.0 if max_unorm else 0.0, beta1, beta2, HYPER["beta3"],
        HYPER["alpha"], HYPER["eps"], HYPER["weight_decay"], step, HYPER["lr"], 1.0, False,
    )  # fmt: skip
    return [t.cpu() for t in (p, s1, s2) if t is not None]


@pytest.mark.parametrize("device, impl, fn", impl_params("optimizer_update_32bit"))
def test_lion_nan_gradient_moves_by_decay_only(device, impl, fn) -> None:
    """torch.sign(NaN) is 0: Lion's step at a NaN gradient element is the decay alone."""
    g = torch.randn(300)
    g[7] = float("nan")
    p = torch.randn(300)
    got = _run_32bit(fn, "lion", p.clone().to(device), g.to(device))
    want = _run_32bit(KERNELS["optimizer_update_32bit"], "lion", p.clone(), g)
    assert torch.equal(got[0], want[0]) and not got[0].isnan().any()


@pytest.mark.parametrize("device, impl, fn", impl_params("optimizer_update_32bit"))
@pytest.mark.parametrize("name", NAMES)
def test_a_beta_of_one_is_ieee_arithmetic(device, impl, fn, name) -> None:
    """beta1 or beta2 = 1 makes a bias correction 0: the ops divide by it as the kernels' IEEE
    arithmetic does (inf, NaN), where Python's float division would raise ZeroDivisionError.
    SGD passes (momentum, dampening) as the betas, and dampening=1 is accepted."""
    gen = torch.Generator().manual_seed(4)
    p, g = torch.randn(300, generator=gen), torch.randn(300, generator=gen)
    for betas in ((1.0, 0.99), (0.9, 1.0)):
        got = _run_32bit(fn, name, p.clone().to(device), g.to(device), beta1=betas[0], beta2=betas[1])
        want = _run_32bit(KERNELS["optimizer_update_32bit"], name, p.clone(), g, beta1=betas[0], beta2=betas[1])
        for a, b in zip(got, want):
            assert torch.equal(a.isnan(), b.isnan())
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, equal_nan=True)


@pytest.mark.parametrize("device, impl, fn", impl_params("optimizer_update_32bit"))
def test_empty_parameter_clip_writes_a_zero_norm(device, impl, fn) -> None:
    unorm = torch.full((1,), 7.0, device=device)
    _run_32bit(fn, "lamb", torch.empty(0, device=device), torch.empty(0, device=device), max_unorm=1.0, unorm=unorm)
    assert unorm.item() == 0.0


@pytest.mark.parametrize("device, impl, fn", impl_params("optimizer_update_32bit"))
@pytest.mark.parametrize("name", ["lamb", "lars"])
def test_trust_ratio_clip_within_the_limit_leaves_the_step(device, impl, fn, name) -> None:
    """An update whose norm is below max_unorm * param_norm is applied unscaled (the clip only
    ever shrinks a step), and unorm_vec still receives its norm."""
    gen = torch.Generator().manual_seed(8)
    p, g = torch.randn(300, generator=gen), torch.randn(300, generator=gen)
    plain = _run_32bit(fn, name, p.clone().to(device), g.to(device))
    unorm = torch.zeros(1, device=device)
    clipped = _run_32bit(fn, name, p.clone().to(device), g.to(device), max_unorm=1e6, unorm=unorm)
    for a, b in zip(clipped, plain):
        assert torch.equal(a, b)
    want_unorm = torch.zeros(1)
    want = _run_32bit(KERNELS["optimizer_update_32bit"], name, p.clone(), g, max_unorm=1e6, unorm=want_unorm)
    assert 0 < float(want_unorm) < 1e6
    torch.testing.assert_close(unorm.cpu(), want_unorm, rtol=1e-5, atol=0)
    torch.testing.assert_close(clipped[0], want[0], rtol=1e-5, atol=1e-6)


def quant8(x: torch.Tensor, code: torch.Tensor, rows: int):
    """Exact-nearest block-wise (256) quantization of ``x`` as ``rows`` independent rows."""
    n = x.numel() // rows
    xb = torch.nn.functional.pad(x.reshape(rows, n), (0, -n % 256)).view(rows, -1, 256)
    absmax = xb.abs().amax(-1)
    scaled = (xb / absmax.clamp(min=1e-38)[..., None]).reshape(rows, -1)[:, :n]
    q = (scaled[..., None] - code).abs().argmin(-1).to(torch.uint8)
    return q.reshape(x.shape), absmax


def dequant8(q: torch.Tensor, absmax: torch.Tensor, code: torch.Tensor, rows: int):
    n = q.numel() // rows
    vals = torch.nn.functional.pad(code[q.reshape(rows, n).long()], (0, -n % 256)).view(rows, -1, 256)
    return (vals * absmax.view(rows, -1, 1)).reshape(rows, -1)[:, :n].reshape(q.shape)


@pytest.mark.parametrize("device, impl, fn", impl_params("optimizer_update_8bit_blockwise"))
@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_update_8bit_blockwise(device, impl, fn, name, dtype) -> None:
    step = 4
    gen = torch.Generator().manual_seed(0)
    shape = (40, 30)  # 1200 elements: 5 blocks, the last partial
    p = torch.randn(shape, generator=gen).to(device, dtype)
    g = torch.randn(shape, generator=gen).to(device, dtype)
    rows = 2 if name == "ademamix" else 1
    code1, code2 = dynamic_map(True, device), dynamic_map(False, device)
    s1f, s2f = states32(name, shape, "cpu")
    q1, a1 = quant8(s1f, code1.cpu(), rows)
    s1_in = dequant8(q1, a1, code1.cpu(), rows)
    q1, a1 = q1.to(device), a1.to(device)
    q2 = a2 = s2_in = None
    if name in TWO_STATE:
        q2, a2 = quant8(s2f, code2.cpu(), 1)
        s2_in = dequant8(q2, a2, code2.cpu(), 1)
        q2, a2 = q2.to(device), a2.reshape(-1).to(device)
    a1 = a1.reshape(-1) if rows == 1 else a1
    want_p, want_s1, want_s2 = expected(name, g.cpu(), p.cpu(), s1_in, s2_in, step)
    fn(
        name, g, p, q1, q2, HYPER["beta1"], HYPER["beta2"], HYPER["beta3"], HYPER["alpha"], HYPER["eps"], step,
        HYPER["lr"], code1, code2 if q2 is not None else None, a1, a2, HYPER["weight_decay"], 1.0, False,
    )  # fmt: skip
    # The parameter is updated from the f32 states before re-quantization: exact up to rounding.
    tol = 1e-6 if dtype == torch.float32 else 1e-2
    torch.testing.assert_close(p.cpu().float(), want_p.to(dtype).float(), rtol=tol, atol=tol)
    # The new states: fresh absmax per block, and each value within one code step of the f32
    # result (the code is the nearest one or its neighbour, spec §2.9).
    for q, a, code, want, r in ((q1, a1, code1, want_s1, rows), (q2, a2, code2, want_s2, 1)):
        if q is None:
            continue
        _, want_absmax = quant8(want, code.cpu(), r)
        torch.testing.assert_close(a.cpu().reshape(want_absmax.shape), want_absmax, rtol=1e-6, atol=0)
        got = dequant8(q.cpu(), a.cpu(), code.cpu(), r)
        scale = torch.repeat_interleave(want_absmax, 256, dim=-1)[..., : want.numel() // r].reshape(want.shape)
        gaps = torch.diff(code.cpu()).max()
        assert bool(((got - want).abs() <= gaps * scale + 1e-7).all())


def test_kernels_registered_and_dispatch() -> None:
    assert "optimizer_update_32bit" in KERNELS and "optimizer_update_8bit_blockwise" in KERNELS
    p, g, s = torch.ones(4), torch.ones(4), torch.zeros(4)
    torch.ops.bitsandbytes.optimizer_update_32bit(
        "momentum", g, p, s, None, None, 0.0, 0.0, 0.9, 0.0, 0.0, 0.0, 0.0, 0.0, 1, 0.5, 1.0
    )
    assert torch.equal(p, torch.full((4,), 0.5)) and torch.equal(s, torch.ones(4))


def test_fake_kernels_on_meta() -> None:
    p = torch.empty(300, device="meta")
    torch.ops.bitsandbytes.optimizer_update_8bit_blockwise(
        "adam", p, p, torch.empty(300, dtype=torch.uint8, device="meta"), None, 0.9, 0.99, 0.0, 0.0, 1e-8, 1,
        1e-3, torch.empty(256, device="meta"), None, torch.empty(2, device="meta"), None, 0.0, 1.0,
    )  # fmt: skip


def test_skip_zeros_leaves_zero_grad_elements() -> None:
    p = torch.randn(10)
    before = p.clone()
    g = torch.randn(10)
    g[::2] = 0
    s1, s2 = torch.rand(10), torch.rand(10)
    s1_before, s2_before = s1.clone(), s2.clone()
    KERNELS["optimizer_update_32bit"](
        "adam", g, p, s1, s2, None, 0.0, 0.0, 0.9, 0.99, 0.0, 0.0, 1e-8, 0.0, 2, 1e-2, 1.0, True
    )
    assert torch.equal(p[::2], before[::2]) and not torch.equal(p[1::2], before[1::2])
    assert torch.equal(s1[::2], s1_before[::2]) and torch.equal(s2[::2], s2_before[::2])


def test_non_contiguous_param() -> None:
    base = torch.randn(8, 6)
    p = base.t()  # non-contiguous view
    g = torch.randn(6, 8)
    s = torch.zeros(6, 8)
    want, _, _ = expected("momentum", g, p, s, None, 1, {**HYPER, "weight_decay": 0.0})
    KERNELS["optimizer_update_32bit"]("momentum", g, p, s, None, None, 0.0, 0.0, 0.9, 0, 0, 0, 0, 0.0, 1, 1e-2, 1.0)
    torch.testing.assert_close(base.t(), want)


def test_trust_ratio_clip_32bit() -> None:
    p = torch.ones(100)
    g = torch.ones(100) * 10
    s1, unorm = torch.zeros(100), torch.zeros(1)
    param_norm = float(p.norm())
    KERNELS["optimizer_update_32bit"](
        "lars", g, p, s1, None, unorm, 0.02, param_norm, 0.9, 0, 0, 0, 0, 0.0, 1, 1.0, 1.0
    )
    # ‖u‖ = ‖g‖ = 100 > 0.02·10 = 0.2: the step is scaled to lr · 0.2 in norm.
    assert float(unorm) == pytest.approx(100.0)
    assert float((torch.ones(100) - p).norm()) == pytest.approx(0.2, rel=1e-5)


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        ({"name": "adamw"}, ValueError, "adam, lamb, momentum, lars, rmsprop, adagrad, lion, ademamix"),
        ({"g": torch.randn(8, dtype=torch.float64)}, TypeError, "g must have dtype"),
        ({"g": torch.randn(8, dtype=torch.bfloat16)}, TypeError, "p dtype"),
        ({"g": torch.randn(9)}, ValueError, "elements"),
        ({"state1": torch.zeros(8, dtype=torch.float16)}, TypeError, "state1"),
        ({"state1": torch.zeros(7)}, ValueError, "state1 must hold 8"),
        ({"state2": None}, ValueError, "state2 is required"),
        ({"step": 0}, ValueError, "step"),
        ({"lr": float("nan")}, ValueError, "lr must be non-negative"),
        ({"lr": -1e-3}, ValueError, "lr must be non-negative"),
        ({"eps": float("nan")}, ValueError, "eps must be non-negative"),
    ],
)
def test_bad_args_32bit(kwargs, exc, match) -> None:
    args = {
        "name": "adam",
        "g": torch.randn(8),
        "p": torch.randn(8),
        "state1": torch.zeros(8),
        "state2": torch.zeros(8),
        "eps": 1e-8,
        "lr": 1e-3,
    }
    args["step"] = 1
    args.update(kwargs)
    with pytest.raises(exc, match=match):
        KERNELS["optimizer_update_32bit"](
            args["name"], args["g"], args["p"], args["state1"], args["state2"], None, 0.0, 0.0,
            0.9, 0.99, 0.0, 0.0, args["eps"], 0.0, args["step"], args["lr"], 1.0,
        )  # fmt: skip


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"state1": torch.zeros(300)}, "state1"),
        ({"absmax1": torch.zeros(1)}, "absmax1 must hold 2"),
        ({"qmap1": torch.zeros(255)}, "256"),
        ({"qmap2": None}, "qmap2 is required"),
        ({"name": "sgd"}, "expected one of"),
        ({"absmax2": torch.zeros(1)}, "absmax2 must hold 2"),
        ({"absmax2": torch.zeros(2, dtype=torch.float16)}, "absmax2"),
        ({"absmax2": torch.zeros(4)[::2]}, "absmax2 must be contiguous"),
    ],
)
def test_bad_args_8bit(kwargs, match) -> None:
    n = 300
    a = {
        "name": "adam",
        "state1": torch.zeros(n, dtype=torch.uint8),
        "qmap1": dynamic_map(True),
        "qmap2": dynamic_map(False),
        "absmax1": torch.zeros(2),
        "absmax2": torch.zeros(2),
    }
    a.update(kwargs)
    with pytest.raises((ValueError, TypeError), match=match):
        KERNELS["optimizer_update_8bit_blockwise"](
            a["name"], torch.randn(n), torch.randn(n), a["state1"], torch.zeros(n, dtype=torch.uint8),
            0.9, 0.99, 0.0, 0.0, 1e-8, 1, 1e-3, a["qmap1"], a["qmap2"], a["absmax1"], a["absmax2"], 0.0, 1.0,
        )  # fmt: skip


def test_one_code_book_may_serve_both_states() -> None:
    """The code books are only read: passing one tensor as qmap1 and qmap2 is no aliasing."""
    n, code = 300, dynamic_map(True)
    gen = torch.Generator().manual_seed(5)
    g, p = torch.randn(n, generator=gen), torch.randn(n, generator=gen)
    runs = []
    for q2 in (code, code.clone()):
        pc, s1, s2 = p.clone(), torch.zeros(n, dtype=torch.uint8), torch.zeros(n, dtype=torch.uint8)
        KERNELS["optimizer_update_8bit_blockwise"](
            "adam", g, pc, s1, s2, 0.9, 0.99, 0.0, 0.0, 1e-8, 1, 1e-3, code, q2, torch.zeros(2), torch.zeros(2),
            0.0, 1.0,
        )  # fmt: skip
        runs.append((pc, s1, s2))
    for a, b in zip(*runs):
        assert torch.equal(a, b)


@pytest.mark.parametrize("device, impl, fn", impl_params("optimizer_update_8bit_blockwise"))
def test_code_book_changed_in_place_is_used(device, impl, fn) -> None:
    """A step after the code book tensor is overwritten in place quantizes with the new values."""
    n = 600
    gen = torch.Generator().manual_seed(9)
    g, p = torch.randn(n, generator=gen), torch.randn(n, generator=gen)

    def step(kernel, code, dev):
        t = [p.clone(), torch.zeros(n, dtype=torch.uint8), torch.zeros(3)]
        t = [x.to(dev) for x in t]
        kernel(
            "momentum", g.to(dev), t[0], t[1], None, 0.9, 0.0, 0.0, 0.0, 1e-8, 1, 1e-3, code, None, t[2], None,
            0.0, 1.0,
        )  # fmt: skip
        return [x.cpu() for x in t]

    code = dynamic_map(True, device).clone()
    step(fn, code, device)
    code.copy_(torch.linspace(-1, 1, 256, device=device))
    got = step(fn, code, device)
    want = step(KERNELS["optimizer_update_8bit_blockwise"], torch.linspace(-1, 1, 256), "cpu")
    stale = step(KERNELS["optimizer_update_8bit_blockwise"], dynamic_map(True), "cpu")
    assert not torch.equal(want[1], stale[1])
    for a, b in zip(got, want):
        assert torch.equal(a, b)


def test_clip_norm_sums_every_chunk_of_a_large_parameter() -> None:
    """‖u‖ of the trust-ratio clip covers the whole parameter, also past the kernel's first chunk
    of 262144 elements (LARS at step 1 without decay: u is the gradient itself)."""
    n = 262144 + 1000
    gen = torch.Generator().manual_seed(6)
    p, g = torch.randn(n, generator=gen), torch.randn(n, generator=gen)
    g[-1000:] *= 100.0  # most of the norm lies in the second chunk
    before, unorm = p.clone(), torch.zeros(1)
    KERNELS["optimizer_update_32bit"](
        "lars", g, p, torch.zeros(n), None, unorm, 0.01, float(before.norm()), 0.9, 0, 0, 0, 0, 0.0, 1, 1.0, 1.0
    )
    want = float(g.double().norm())
    assert float(unorm) == pytest.approx(want, rel=1e-5)
    # The step is scaled to lr · max_unorm · ‖p‖ in norm.
    assert float((before - p).double().norm()) == pytest.approx(0.01 * float(before.double().norm()), rel=1e-4)


def test_skip_zeros_leaves_the_clip_norm_to_the_updated_elements() -> None:
    """With skip_zeros the trust-ratio norm is that of the elements that move: a zero-gradient
    element with a non-zero state changes neither the norm nor the other elements' step."""
    n = 600
    gen = torch.Generator().manual_seed(7)
    p, g = torch.randn(n, generator=gen), torch.randn(n, generator=gen)
    g[::3] = 0.0
    s1, s2 = torch.randn(n, generator=gen) * 0.5, torch.rand(n, generator=gen)
    live = g != 0
    pn = float(p.norm())

    def run(g, p, s1, s2):
        p, s1, s2, unorm = p.clone(), s1.clone(), s2.clone(), torch.zeros(1)
        KERNELS["optimizer_update_32bit"](
            "lamb", g, p, s1, s2, unorm, 1e-3, pn, 0.9, 0.99, 0.0, 0.0, 1e-8, 0.0, 3, 0.1, 1.0, True
        )
        return p, s1, s2, float(unorm)

    p_all, s1_all, s2_all, unorm_all = run(g, p, s1, s2)
    p_live, s1_live, s2_live, unorm_live = run(g[live], p[live], s1[live], s2[live])
    assert unorm_all == pytest.approx(unorm_live, rel=1e-6)
    torch.testing.assert_close(p_all[live], p_live, rtol=1e-6, atol=1e-7)
    assert torch.equal(p_all[~live], p[~live]) and torch.equal(s1_all[~live], s1[~live])
    assert torch.equal(s2_all[~live], s2[~live])


@pytest.mark.parametrize("name", ["adam", "ademamix"])
def test_skip_zeros_8bit_keeps_both_states_of_zero_gradient_elements(name) -> None:
    """8-bit with skip_zeros: a zero-gradient element keeps its parameter and, up to the
    re-quantization (one code step), the values of both states (beta2 = 0.5 would halve state2)."""
    h = {**HYPER, "beta2": 0.5}
    shape, rows = (1200,), (2 if name == "ademamix" else 1)
    gen = torch.Generator().manual_seed(8)
    p, g = torch.randn(shape, generator=gen), torch.randn(shape, generator=gen)
    g[1::2] = 0.0
    keep = g == 0
    code1, code2 = dynamic_map(True), dynamic_map(False)
    s1f, s2f = states32(name, shape, "cpu")
    q1, a1 = quant8(s1f, code1, rows)
    q2, a2 = quant8(s2f, code2, 1)
    s1_in, s2_in = dequant8(q1, a1, code1, rows), dequant8(q2, a2, code2, 1)
    want_p, want_s1, want_s2 = expected(name, g, p, s1_in, s2_in, 4, h)
    want_p = torch.where(keep, p, want_p)
    want_s1, want_s2 = torch.where(keep, s1_in, want_s1), torch.where(keep, s2_in, want_s2)
    pc, a1 = p.clone(), (a1.reshape(-1) if rows == 1 else a1)
    a2 = a2.reshape(-1)
    KERNELS["optimizer_update_8bit_blockwise"](
        name, g, pc, q1, q2, h["beta1"], h["beta2"], h["beta3"], h["alpha"], h["eps"], 4, h["lr"], code1, code2,
        a1, a2, h["weight_decay"], 1.0, True,
    )  # fmt: skip
    assert torch.equal(pc[keep], p[keep])
    torch.testing.assert_close(pc, want_p, rtol=1e-6, atol=1e-6)
    for q, a, code, want, r in ((q1, a1, code1, want_s1, rows), (q2, a2, code2, want_s2, 1)):
        _, want_absmax = quant8(want, code, r)
        got = dequant8(q, a, code, r)
        scale = torch.repeat_interleave(want_absmax, 256, dim=-1)[..., : want.numel() // r].reshape(want.shape)
        assert bool(((got - want).abs() <= torch.diff(code).max() * scale + 1e-7).all())
