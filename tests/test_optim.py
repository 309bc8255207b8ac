"""bitsandbytes.optim: tracking of 8-bit vs 32-bit states, memory, parity with torch.optim,
overrides, state dict round trips, bad inputs."""

from __future__ import annotations

import inspect
import logging
import math

import pytest
import torch

import bitsandbytes as bnb
from bitsandbytes.optim.optimizer import GlobalOptimManager
from conftest import devices

# (8-bit class, its 32-bit twin, constructor kwargs). The twins of LAMB and LARS turn the
# trust-ratio clip off: the 8-bit path never clips (spec §8.5), so with the clip on they would be
# different algorithms, not twins. Learning rates are chosen per algorithm so that 200 steps of
# the regression below travel most of the way to the optimum.
ALGOS = {
    "adam": (bnb.optim.Adam8bit, bnb.optim.Adam32bit, {"lr": 3e-3}),
    "adamw": (bnb.optim.AdamW8bit, bnb.optim.AdamW32bit, {"lr": 3e-3, "weight_decay": 1e-2}),
    "ademamix": (bnb.optim.AdEMAMix8bit, bnb.optim.AdEMAMix32bit, {"lr": 3e-3}),
    "lamb": (bnb.optim.LAMB8bit, (bnb.optim.LAMB32bit, {"max_unorm": 0.0}), {"lr": 3e-3}),
    "lars": (bnb.optim.LARS8bit, (bnb.optim.LARS32bit, {"max_unorm": 0.0}), {"lr": 1e-2, "momentum": 0.9}),
    "momentum": (bnb.optim.SGD8bit, bnb.optim.SGD32bit, {"lr": 1e-2, "momentum": 0.9}),
    "rmsprop": (bnb.optim.RMSprop8bit, bnb.optim.RMSprop32bit, {"lr": 1e-3}),
    "adagrad": (bnb.optim.Adagrad8bit, bnb.optim.Adagrad32bit, {"lr": 3e-2}),
    "lion": (bnb.optim.Lion8bit, bnb.optim.Lion32bit, {"lr": 1e-3}),
}


def build(entry, params, **extra):
    cls, kwargs = entry if isinstance(entry, tuple) else (entry, {})
    return cls(params, **kwargs, **extra)


pytestmark = pytest.mark.usefixtures("optim_manager")


# -------------------------------------------------------------------------------------------- tracking


def regression_run(entry, hyper, steps=200):
    """Noisy linear regression ``y = x W*^T + noise`` with mini-batches of 32 (the same sequence
    for every run) for one 64×128 weight (8192 elements, so its state is 8-bit), started from a
    unit-scale initialisation ``W0`` with ``W* = W0 + 0.3·N(0, 1)``.

    Mini-batch noise is the regime 8-bit states are made for; with exact full-batch gradients
    that shrink towards zero the second moment can only follow the block maximum (its 0.1 % per
    step decay is below one code step) and adaptive methods drift apart by a few percent of the
    distance travelled. Returns (initial W, final W, final full-batch loss)."""
    gen = torch.Generator().manual_seed(0)
    X = torch.randn(2048, 128, generator=gen)
    W0 = torch.randn(64, 128, generator=gen)
    Y = X @ (W0 + 0.3 * torch.randn(64, 128, generator=gen)).T + 0.5 * torch.randn(2048, 64, generator=gen)
    order = torch.randint(0, 2048, (steps, 32), generator=gen)
    W = torch.nn.Parameter(W0.clone())
    opt = build(entry, [W], **hyper)
    for idx in order:
        W.grad = None
        loss = ((X[idx] @ W.T - Y[idx]) ** 2).sum(1).mean()
        loss.backward()
        opt.step()
    with torch.no_grad():
        loss = ((X @ W.T - Y) ** 2).sum(1).mean()
    return W0, W.detach(), float(loss)


@pytest.mark.parametrize("algo", list(ALGOS))
def test_8bit_tracks_32bit_linear_regression(algo: str) -> None:
    c8, c32, hyper = ALGOS[algo]
    w0, w8, _ = regression_run(c8, hyper)
    _, w32, _ = regression_run(c32, hyper)
    rel = float((w8 - w32).norm() / w32.norm())
    assert rel < 1e-2, f"{algo}: relative distance {rel:.3g}"
    # Also against the distance the 32-bit run travelled: the 8-bit run follows it closely, not
    # merely stays near the (shared) initialisation.
    travelled = float((w32 - w0).norm())
    assert float((w8 - w32).norm()) < 0.25 * travelled, algo


def mlp_run(entry, hyper, steps=150):
    """A 64-128-1 tanh MLP fitted with mini-batches of 64 (same sequence for every run) to a
    noisy non-linear target; returns the final full-data loss.

    ``min_8bit_size=1`` puts every parameter (biases too) on 8-bit state in the 8-bit run.
    """
    gen = torch.Generator().manual_seed(1)
    X = torch.randn(1024, 64, generator=gen)
    Y = torch.sin(X[:, :1] * 2) + 0.5 * X[:, 1:2] * X[:, 2:3] + 0.1 * torch.randn(1024, 1, generator=gen)
    order = torch.randint(0, 1024, (steps, 64), generator=gen)
    torch.manual_seed(2)
    model = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.Tanh(), torch.nn.Linear(128, 1))
    opt = build(entry, model.parameters(), min_8bit_size=1, **hyper)
    for idx in order:
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(X[idx]), Y[idx])
        loss.backward()
        opt.step()
    is8 = "8bit" in (entry[0] if isinstance(entry, tuple) else entry).__name__
    assert opt.state[model[2].bias]["state1"].dtype == (torch.uint8 if is8 else torch.float32)
    with torch.no_grad():
        return float(torch.nn.functional.mse_loss(model(X), Y))


MLP_LR = {"adam": 1e-2, "adamw": 1e-2, "ademamix": 1e-2, "lamb": 1e-2, "lars": 0.02, "momentum": 0.02}
MLP_LR.update({"rmsprop": 3e-3, "adagrad": 0.03, "lion": 3e-3})
"""Learning rates for the MLP: high enough that the loss drops well below the target variance."""


@pytest.mark.parametrize("algo", list(ALGOS))
def test_8bit_tracks_32bit_mlp(algo: str) -> None:
    c8, c32, hyper = ALGOS[algo]
    hyper = {**hyper, "lr": MLP_LR[algo]}
    l8, l32 = mlp_run(c8, hyper), mlp_run(c32, hyper)
    assert abs(l8 - l32) <= 0.02 * l32, f"{algo}: loss {l8:.5g} vs {l32:.5g}"


# -------------------------------------------------------------------------------------------- memory


def test_adam8bit_memory_per_parameter() -> None:
    p = torch.nn.Parameter(torch.randn(256, 1024))
    opt = bnb.optim.Adam8bit([p])
    p.grad = torch.randn_like(p)
    opt.step()
    st = opt.state[p]
    per_param = {k: v for k, v in st.items() if isinstance(v, torch.Tensor) and k not in ("qmap1", "qmap2")}
    n = p.numel()
    nbytes = sum(v.numel() * v.element_size() for v in per_param.values())
    assert st["state1"].dtype == st["state2"].dtype == torch.uint8
    # 1 byte per element per state + one f32 absmax per 256-element block per state.
    assert nbytes == 2 * n + 2 * 4 * (n // 256)
    assert nbytes / n == pytest.approx(2.03125)
    # The code books are shared by every parameter of the optimizer.
    q = torch.nn.Parameter(torch.randn(64, 128))
    opt2 = bnb.optim.Adam8bit([p, q])
    p.grad, q.grad = torch.randn_like(p), torch.randn_like(q)
    opt2.step()
    assert opt2.state[p]["qmap1"] is opt2.state[q]["qmap1"]


# -------------------------------------------------------------------------------------------- parity


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_adam_matches_torch_adamw(dtype: torch.dtype) -> None:
    """bnb Adam's weight decay is decoupled: it is torch's AdamW (spec §8.5).

    For bf16 parameters the reference is torch's f32 AdamW with the parameter rounded to bf16
    after every step (ours keeps f32 states and updates in f32, then writes bf16 back)."""
    torch.manual_seed(0)
    w = torch.randn(40, 30).to(dtype)
    a = torch.nn.Parameter(w.clone())
    b = torch.nn.Parameter(w.clone().float())
    ours = bnb.optim.Adam([a], lr=1e-2, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.1)
    ref = torch.optim.AdamW([b], lr=1e-2, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.1)
    for _ in range(20):
        g = torch.randn(40, 30).to(dtype)
        a.grad, b.grad = g.clone(), g.float()
        ours.step()
        ref.step()
        with torch.no_grad():
            b.copy_(b.to(dtype).float())
    if dtype == torch.float32:
        torch.testing.assert_close(a.detach(), b.detach(), rtol=0, atol=1e-6)
    else:
        # Rounding order may differ by one bf16 ulp on a few elements.
        torch.testing.assert_close(a.detach().float(), b.detach(), rtol=1e-2, atol=1e-3)


def test_sgd_matches_torch_sgd() -> None:
    torch.manual_seed(0)
    w = torch.randn(50, 20)
    a, b = torch.nn.Parameter(w.clone()), torch.nn.Parameter(w.clone())
    ours = bnb.optim.SGD([a], lr=1e-2, momentum=0.9, weight_decay=1e-3)
    ref = torch.optim.SGD([b], lr=1e-2, momentum=0.9, weight_decay=1e-3)
    for _ in range(20):
        g = torch.randn(50, 20)
        a.grad, b.grad = g.clone(), g.clone()
        ours.step()
        ref.step()
    torch.testing.assert_close(a.detach(), b.detach(), rtol=0, atol=1e-6)


def test_pytorch_lars_matches_lars32bit() -> None:
    torch.manual_seed(0)
    w = torch.randn(30, 20)
    a, b = torch.nn.Parameter(w.clone()), torch.nn.Parameter(w.clone())
    ours = bnb.optim.LARS32bit([a], lr=1e-2, momentum=0.9, max_unorm=0.02)
    ref = bnb.optim.PytorchLARS([b], lr=1e-2, momentum=0.9, max_unorm=0.02)
    for _ in range(10):
        g = torch.randn(30, 20)
        a.grad, b.grad = g.clone(), g.clone()
        ours.step()
        ref.step()
    assert "momentum_buffer" in ref.state[b]
    torch.testing.assert_close(a.detach(), b.detach(), rtol=0, atol=1e-6)


def test_pytorch_lars_without_clip_is_torch_sgd_with_dampening() -> None:
    w, gs = torch.randn(50, generator=torch.Generator().manual_seed(1)), torch.randn(4, 50)
    a, b = torch.nn.Parameter(w.clone()), torch.nn.Parameter(w.clone())
    ours = bnb.optim.PytorchLARS([a], lr=0.1, momentum=0.9, dampening=0.5, weight_decay=0.1, max_unorm=0.0)
    ref = torch.optim.SGD([b], lr=0.1, momentum=0.9, dampening=0.5, weight_decay=0.1)
    for g in gs:
        a.grad, b.grad = g.clone(), g.clone()
        ours.step()
        ref.step()
    torch.testing.assert_close(a.detach(), b.detach(), rtol=1e-6, atol=1e-6)


# -------------------------------------------------------------------------------------------- overrides


def test_override_config_keeps_parameter_32bit() -> None:
    big = torch.nn.Parameter(torch.randn(64, 128))
    other = torch.nn.Parameter(torch.randn(64, 128))
    mng = GlobalOptimManager.get_instance()
    mng.register_parameters([big, other])
    mng.override_config(big, "optim_bits", 32)
    opt = bnb.optim.Adam8bit([big, other])
    big.grad, other.grad = torch.randn_like(big), torch.randn_like(other)
    opt.step()
    assert opt.state[big]["state1"].dtype == torch.float32
    assert opt.state[other]["state1"].dtype == torch.uint8


def test_register_module_override_keeps_embedding_32bit() -> None:
    model = torch.nn.ModuleDict({"emb": torch.nn.Embedding(100, 64), "lin": torch.nn.Linear(64, 128)})
    GlobalOptimManager.get_instance().register_module_override(model["emb"], "weight", {"optim_bits": 32})
    opt = bnb.optim.AdamW8bit(model.parameters())
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    opt.step()
    assert opt.state[model["emb"].weight]["state1"].dtype == torch.float32
    assert opt.state[model["lin"].weight]["state1"].dtype == torch.uint8
    assert opt.args.optim_bits == 8


def test_small_parameters_stay_32bit() -> None:
    p = torch.nn.Parameter(torch.randn(10))
    q = torch.nn.Parameter(torch.randn(64, 128))
    opt = bnb.optim.AdamW8bit([p, q])
    p.grad, q.grad = torch.randn_like(p), torch.randn_like(q)
    opt.step()
    inner = opt.state_dict()["state"]
    assert set(inner[0]["__bnb_optimizer_quant_state__"]) == {"state1", "state2"}
    assert inner[1]["__bnb_optimizer_quant_state__"]["absmax1"].shape == (32,)


# -------------------------------------------------------------------------------------------- state dicts


def test_state_dict_roundtrip_to_other_dtype() -> None:
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(64, 128))
    opt = bnb.optim.AdamW8bit([p], lr=1e-2)
    for _ in range(2):
        p.grad = torch.randn_like(p)
        opt.step()
    sd = opt.state_dict()
    q = torch.nn.Parameter(p.detach().to(torch.bfloat16))
    opt2 = bnb.optim.AdamW8bit([q], lr=1e-2)
    opt2.load_state_dict(sd)
    st = opt2.state[q]
    assert st["state1"].dtype == torch.uint8 and st["absmax1"].dtype == torch.float32
    assert st["step"] == 2
    q.grad = torch.randn_like(q)
    opt2.step()
    assert q.dtype == torch.bfloat16 and torch.isfinite(q).all()
    # Saving did not disturb the live state.
    assert "state1" in opt.state[p] and "__bnb_optimizer_quant_state__" not in opt.state[p]


def test_state_dict_roundtrip_32bit_bfloat16_params() -> None:
    p = torch.nn.Parameter(torch.randn(30, 7, dtype=torch.bfloat16))
    opt = bnb.optim.Lion([p], lr=1e-3)
    p.grad = torch.randn_like(p)
    opt.step()
    opt2 = bnb.optim.Lion([p], lr=1e-3)
    opt2.load_state_dict(opt.state_dict())
    # state1 is a quantization-state key: it keeps f32 even for bf16 params.
    assert opt2.state[p]["state1"].dtype == torch.float32


def test_load_state_dict_mismatch() -> None:
    p, q = torch.nn.Parameter(torch.randn(5)), torch.nn.Parameter(torch.randn(5))
    opt = bnb.optim.Adam([p, q])
    with pytest.raises(ValueError, match="parameter group"):
        bnb.optim.Adam([p]).load_state_dict(opt.state_dict())
    with pytest.raises(ValueError, match="parameter groups"):
        bnb.optim.Adam([{"params": [p]}, {"params": [q]}]).load_state_dict(opt.state_dict())


def test_param_groups_and_closure() -> None:
    p, q = torch.nn.Parameter(torch.ones(8)), torch.nn.Parameter(torch.ones(8))
    opt = bnb.optim.AdamW([{"params": [p], "lr": 0.0}, {"params": [q], "weight_decay": 0.0}], lr=1e-1)

    def closure():
        opt.zero_grad()
        loss = (p.sum() + q.sum()) ** 2
        loss.backward()
        return loss

    loss = opt.step(closure)
    assert float(loss.detach()) == 256.0
    assert torch.equal(p.detach(), torch.ones(8))
    assert torch.allclose(q.detach(), torch.full((8,), 0.9))


def test_paged_on_cpu_logs_once_and_works(caplog) -> None:
    import bitsandbytes.optim.optimizer as optmod

    optmod._PAGING_WARNED = False
    torch.manual_seed(0)
    w = torch.randn(400, 256)  # >= 1e5 elements: would be paged on an accelerator
    a, b = torch.nn.Parameter(w.clone()), torch.nn.Parameter(w.clone())
    paged, plain = bnb.optim.PagedAdamW8bit([a]), bnb.optim.AdamW8bit([b])
    with caplog.at_level(logging.WARNING, logger="bitsandbytes.optim.optimizer"):
        for _ in range(2):
            g = torch.randn_like(w)
            a.grad, b.grad = g.clone(), g.clone()
            paged.step()
            plain.step()
        bnb.optim.PagedLion([torch.nn.Parameter(w.clone())])
    assert paged.is_paged
    assert sum("paged" in r.getMessage() for r in caplog.records) == 1
    assert torch.equal(a.detach(), b.detach())


@pytest.mark.parametrize("name", ["AdamW8bit", "AdamW32bit", "Lion8bit", "AdEMAMix8bit"])
def test_paged_states_come_from_the_wheels_paged_memory(monkeypatch, caplog, name) -> None:
    """With a wheel's paged memory for the parameter's device, the large states are allocated
    there, registered for prefetch_all, prefetched before each update and synchronized after the
    step; the parameters equal the unpaged optimizer's bit for bit. (A fake provider pages CPU
    memory here; tests/test_cuda_platform.py runs CUDA managed memory on a GPU.)"""
    from bitsandbytes import _paging

    log = []

    def allocate(shape, dtype):
        log.append(("allocate", shape, dtype))
        return torch.full(shape, 7, dtype=dtype)  # not zero: the optimizer must clear it

    monkeypatch.setattr(_paging, "_PROVIDER", ("cpu", allocate, lambda t, i, to_cpu: log.append(("prefetch", t))))
    monkeypatch.setattr(_paging, "synchronize", lambda device: log.append(("sync", device)))
    registry = bnb.functional.GlobalPageManager.get_instance().paged_tensors
    before = list(registry)
    torch.manual_seed(0)
    w = torch.randn(400, 256)  # >= 1e5 elements: paged
    small = torch.randn(64)  # below: ordinary memory
    a, b = torch.nn.Parameter(w.clone()), torch.nn.Parameter(w.clone())
    sa, sb = torch.nn.Parameter(small.clone()), torch.nn.Parameter(small.clone())
    paged_opt = getattr(bnb.optim, f"Paged{name}")([a, sa])
    plain_opt = getattr(bnb.optim, name)([b, sb])
    try:
        with caplog.at_level(logging.WARNING, logger="bitsandbytes.optim.optimizer"):
            for _ in range(3):
                g, gs = torch.randn_like(w), torch.randn_like(small)
                a.grad, b.grad, sa.grad, sb.grad = g.clone(), g.clone(), gs.clone(), gs.clone()
                paged_opt.step()
                plain_opt.step()
        states = [paged_opt.state[a][k] for k in ("state1", "state2") if k in paged_opt.state[a]]
        assert states and all(t.is_paged for t in states)
        assert not any(getattr(t, "is_paged", False) for t in paged_opt.state[sa].values())
        assert registry[len(before) :] == states
        assert [e[0] for e in log].count("allocate") == len(states)
        prefetched = [e[1] for e in log if e[0] == "prefetch"]
        assert len(prefetched) == 3 * len(states) and all(any(t is s for s in states) for t in prefetched)
        # one before the host zeroes each new paged buffer, one at the end of each step
        assert [e for e in log if e[0] == "sync"] == [("sync", torch.device("cpu"))] * (len(states) + 3)
        assert not [r for r in caplog.records if "paged" in r.getMessage()]
        assert torch.equal(a.detach(), b.detach()) and torch.equal(sa.detach(), sb.detach())
    finally:
        del registry[len(before) :]


def test_copies_and_checkpoints_of_a_paged_optimizer_continue(monkeypatch) -> None:
    """A deepcopy or a loaded checkpoint of a paged optimizer holds ordinary tensors that still
    carry ``is_paged``: they are neither prefetched nor left behind on the host (the wheel's
    prefetch refuses memory it did not allocate), and every copy continues like the original."""
    import copy
    import io

    from bitsandbytes import _paging

    allocated = []

    def allocate(shape, dtype):
        allocated.append(torch.empty(shape, dtype=dtype))
        return allocated[-1]

    def prefetch(t, index, to_cpu):
        assert any(t is a for a in allocated), "prefetch of memory the wheel did not allocate"

    monkeypatch.setattr(_paging, "_PROVIDER", ("cpu", allocate, prefetch))
    registry = bnb.functional.GlobalPageManager.get_instance().paged_tensors
    before = len(registry)
    try:
        torch.manual_seed(0)
        w = torch.randn(400, 256)
        params = [torch.nn.Parameter(w.clone()) for _ in range(3)]
        opt = bnb.optim.PagedAdamW8bit([params[0]])
        params[0].grad = torch.randn_like(w)
        opt.step()
        copied = copy.deepcopy(opt)  # steps its own copy of the parameter
        buf = io.BytesIO()
        torch.save(opt.state_dict(), buf)
        resumed = bnb.optim.PagedAdamW8bit([params[2]])
        params[2].data.copy_(params[0].data)
        resumed.load_state_dict(torch.load(io.BytesIO(buf.getvalue()), weights_only=True))
        assert resumed.state[params[2]]["state1"].is_paged  # the flag survives, the memory is ordinary
        cp = copied.param_groups[0]["params"][0]
        g = torch.randn_like(w)
        for p, o in ((params[0], opt), (cp, copied), (params[2], resumed)):
            p.grad = g.clone()
            o.step()
        assert torch.equal(cp.detach(), params[0].detach()) and torch.equal(params[2].detach(), params[0].detach())
    finally:
        del registry[before:]


# -------------------------------------------------------------------------------------------- bad inputs


@pytest.mark.parametrize(
    "make, exc, match",
    [
        (lambda p: bnb.optim.Adam([p], lr=-1.0), ValueError, "learning rate"),
        (lambda p: bnb.optim.AdamW8bit([p], betas=(0.9, 1.0)), ValueError, "beta"),
        (lambda p: bnb.optim.Lion([p], betas=(-0.1, 0.99)), ValueError, "beta"),
        (lambda p: bnb.optim.Adam([p], eps=-1e-8), ValueError, "epsilon"),
        (lambda p: bnb.optim.Adam([p], weight_decay=-1.0), ValueError, "weight_decay"),
        (lambda p: bnb.optim.Adam8bit([p], amsgrad=True), ValueError, "amsgrad"),
        (lambda p: bnb.optim.Adam8bit([p], optim_bits=8), ValueError, "optim_bits"),
        (lambda p: bnb.optim.Adam8bit([p], max_unorm=1.0), TypeError, "max_unorm"),
        (lambda p: bnb.optim.Adam([p], percentile_clipping=100), TypeError, "percentile_clipping"),
        (lambda p: bnb.optim.SGD([p], lr=0.1), NotImplementedError, "momentum"),
        (lambda p: bnb.optim.LARS([p], lr=0.1), NotImplementedError, "momentum"),
        (lambda p: bnb.optim.RMSprop([p], centered=True), NotImplementedError, "Centered"),
        (lambda p: bnb.optim.RMSprop([p], alpha=0.0), NotImplementedError, "alpha"),
        (lambda p: bnb.optim.Adagrad([p], lr_decay=0.1), ValueError, "lr_decay"),
        (lambda p: bnb.optim.Adagrad([p], initial_accumulator_value=0.1), ValueError, "initial_accumulator"),
        (lambda p: bnb.optim.Adagrad8bit([p], optim_bits=32), ValueError, "optim_bits"),
        (lambda p: bnb.optim.LAMB8bit([p], max_unorm=0.5), ValueError, "max_unorm"),
        (
            lambda p: bnb.optim.Adam([torch.nn.Parameter(torch.ones(3, dtype=torch.int32), requires_grad=False)]),
            TypeError,
            "int32",
        ),
    ],
)
def test_bad_constructor_args(make, exc, match) -> None:
    with pytest.raises(exc, match=match):
        make(torch.nn.Parameter(torch.randn(4)))


def test_betas_string_is_parsed() -> None:
    opt = bnb.optim.AdamW([torch.nn.Parameter(torch.randn(4))], betas="(0.8, 0.9)")
    assert opt.param_groups[0]["betas"] == [0.8, 0.9]  # spec §8.1: a string is parsed to a list


def test_sparse_gradient_rejected() -> None:
    emb = torch.nn.Embedding(10, 4, sparse=True)
    opt = bnb.optim.Adam(emb.parameters())
    emb(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(ValueError, match="sparse"):
        opt.step()


def test_gradient_dtype_mismatch_rejected() -> None:
    from bitsandbytes._functional_optim import optimizer_update_32bit

    p = torch.randn(8, dtype=torch.bfloat16)
    s1, s2 = torch.zeros(8), torch.zeros(8)
    with pytest.raises(TypeError, match="dtype"):
        optimizer_update_32bit("adam", torch.randn(8), p, s1, 0.9, 1e-8, 1, 1e-3, s2, 0.999)


def test_singletons() -> None:
    from bitsandbytes._functional_optim import GlobalPageManager

    with pytest.raises(RuntimeError, match="get_instance"):
        GlobalOptimManager()
    with pytest.raises(RuntimeError, match="get_instance"):
        GlobalPageManager()
    assert GlobalPageManager.get_instance() is GlobalPageManager.get_instance()
    assert bnb.optim.GlobalOptimManager.get_instance() is GlobalOptimManager.get_instance()


# -------------------------------------------------------------------------------------------- API surface

SIGNATURES = {
    "Adam": "lr=0.001, betas=(0.9, 0.999), eps=1e-08, weight_decay=0, amsgrad=False, optim_bits=32, args=None, min_8bit_size=4096, is_paged=False",
    "AdamW": "lr=0.001, betas=(0.9, 0.999), eps=1e-08, weight_decay=0.01, amsgrad=False, optim_bits=32, args=None, min_8bit_size=4096, is_paged=False",
    "PagedAdamW8bit": "lr=0.001, betas=(0.9, 0.999), eps=1e-08, weight_decay=0.01, amsgrad=False, optim_bits=32, args=None, min_8bit_size=4096",
    "AdEMAMix": "lr=0.001, betas=(0.9, 0.999, 0.9999), alpha=5.0, t_alpha=None, t_beta3=None, eps=1e-08, weight_decay=0.01, optim_bits=32, min_8bit_size=4096, is_paged=False",
    "AdEMAMix8bit": "lr=0.001, betas=(0.9, 0.999, 0.9999), alpha=5.0, t_alpha=None, t_beta3=None, eps=1e-08, weight_decay=0.01, min_8bit_size=4096, is_paged=False",
    "LAMB": "lr=0.001, bias_correction=True, betas=(0.9, 0.999), eps=1e-08, weight_decay=0, amsgrad=False, adam_w_mode=True, optim_bits=32, args=None, min_8bit_size=4096, max_unorm=1.0",
    "LARS": "lr, momentum=0, dampening=0, weight_decay=0, nesterov=False, optim_bits=32, args=None, min_8bit_size=4096, max_unorm=0.02",
    "PytorchLARS": "lr=0.01, momentum=0, dampening=0, weight_decay=0, nesterov=False, max_unorm=0.02",
    "Lion": "lr=0.0001, betas=(0.9, 0.99), weight_decay=0, optim_bits=32, args=None, min_8bit_size=4096, is_paged=False",
    "PagedLion": "lr=0.0001, betas=(0.9, 0.99), weight_decay=0, optim_bits=32, args=None, min_8bit_size=4096",
    "RMSprop": "lr=0.01, alpha=0.99, eps=1e-08, weight_decay=0, momentum=0, centered=False, optim_bits=32, args=None, min_8bit_size=4096",
    "Adagrad": "lr=0.01, lr_decay=0, weight_decay=0, initial_accumulator_value=0, eps=1e-10, optim_bits=32, args=None, min_8bit_size=4096",
    "Adagrad8bit": "lr=0.01, lr_decay=0, weight_decay=0, initial_accumulator_value=0, eps=1e-10, optim_bits=8, args=None, min_8bit_size=4096",
    "SGD": "lr, momentum=0, dampening=0, weight_decay=0, nesterov=False, optim_bits=32, args=None, min_8bit_size=4096",
    "SGD8bit": "lr, momentum=0, dampening=0, weight_decay=0, nesterov=False, args=None, min_8bit_size=4096",
}


@pytest.mark.parametrize("name", list(SIGNATURES))
def test_constructor_signatures(name: str) -> None:
    sig = inspect.signature(getattr(bnb.optim, name).__init__)
    params = list(sig.parameters.values())[2:]  # self, params
    # Names, order and defaults are the contract; the type hints are not part of the text.
    text = ", ".join(str(p.replace(annotation=inspect.Parameter.empty)) for p in params)
    assert text == SIGNATURES[name]


def test_public_names() -> None:
    names = (
        "Adagrad Adagrad8bit Adagrad32bit Adam Adam8bit Adam32bit PagedAdam PagedAdam8bit PagedAdam32bit AdamW "
        "AdamW8bit AdamW32bit PagedAdamW PagedAdamW8bit PagedAdamW32bit AdEMAMix AdEMAMix8bit AdEMAMix32bit "
        "PagedAdEMAMix PagedAdEMAMix8bit PagedAdEMAMix32bit LAMB LAMB8bit LAMB32bit LARS LARS8bit LARS32bit "
        "PytorchLARS Lion Lion8bit Lion32bit PagedLion PagedLion8bit PagedLion32bit RMSprop RMSprop8bit "
        "RMSprop32bit SGD SGD8bit SGD32bit GlobalOptimManager"
    ).split()
    for n in names:
        cls = getattr(bnb.optim, n)
        assert cls.__module__.startswith("bitsandbytes.optim")
    from bitsandbytes.optim.optimizer import MockArgs, Optimizer1State, Optimizer2State, Optimizer8bit  # noqa: F401

    opt = bnb.optim.AdamW([torch.nn.Parameter(torch.randn(4))], optim_bits=8)
    assert opt.optimizer_name == "adam" and opt.args.optim_bits == 8
    assert set(opt.name2qmap) == {"dynamic", "udynamic"}
    assert opt._FSDP_WRAPPED_QUANT_STATE_KEY == "__bnb_optimizer_quant_state__"


# -------------------------------------------------------------------------------------------- devices, schedules


@pytest.mark.parametrize("device", devices())
def test_load_state_dict_onto_device(device: str) -> None:
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(64, 128))
    opt = bnb.optim.AdamW8bit([p], lr=1e-2)
    grads = [torch.randn(64, 128) for _ in range(3)]
    for g in grads[:2]:
        p.grad = g.clone()
        opt.step()
    q = torch.nn.Parameter(p.detach().to(device))
    opt2 = bnb.optim.AdamW8bit([q], lr=1e-2)
    opt2.load_state_dict(opt.state_dict())
    for key, v in opt2.state[q].items():
        if isinstance(v, torch.Tensor):
            assert v.device.type == device, key
    p.grad, q.grad = grads[2].clone(), grads[2].to(device)
    opt.step()
    opt2.step()
    torch.testing.assert_close(q.detach().cpu(), p.detach(), rtol=0, atol=1e-6)


def test_ademamix_schedule() -> None:
    from bitsandbytes.optim.ademamix import ademamix_schedule

    assert ademamix_schedule(5.0, 0.9, 0.9999, 3, None, None) == (5.0, 0.9999)
    alpha, beta3 = ademamix_schedule(5.0, 0.9, 0.9999, 10, 100, 100)
    assert alpha == pytest.approx(0.5)
    s = 0.1
    ln1, ln3 = math.log(0.9), math.log(0.9999)
    assert beta3 == pytest.approx(min(math.exp(ln1 * ln3 / ((1 - s) * ln3 + s * ln1)), 0.9999))
    # At the end of the warm-up both reach their targets.
    assert ademamix_schedule(5.0, 0.9, 0.9999, 100, 100, 100) == pytest.approx((5.0, 0.9999))

    torch.manual_seed(0)
    w, g = torch.randn(32, 8), torch.randn(32, 8)
    a, b = torch.nn.Parameter(w.clone()), torch.nn.Parameter(w.clone())
    scheduled = bnb.optim.AdEMAMix32bit([a], lr=1e-2, t_alpha=100, t_beta3=100)
    plain = bnb.optim.AdEMAMix32bit([b], lr=1e-2)
    for _ in range(3):
        a.grad, b.grad = g.clone(), g.clone()
        scheduled.step()
        plain.step()
    assert not torch.allclose(a, b)
