"""The fused 8-bit optimizer kernels of every CPU instruction set, bit for bit against the scalar
kernel: parameters, state codes and block absmax, for every algorithm and parameter dtype, over
several threads' worth of whole blocks plus a partial one, with zeros, NaN and inf in the
gradient, skip_zeros, gradient scaling and weight decay; with the dynamic code books and with
others (linear, sorted random: the second moment's then looked up on byte planes, the codes from
the grid search)."""

from __future__ import annotations

import pytest
import torch

import bitsandbytes.functional as F

bitsandbytes_cpu = pytest.importorskip("bitsandbytes_cpu")

OPTIMIZERS = ["adam", "lamb", "ademamix", "lion", "momentum", "lars", "rmsprop", "adagrad"]
TWO_STATE = {"adam", "lamb", "ademamix"}
VECTOR_ISAS = [i for i in bitsandbytes_cpu.build_info().get("isa_usable", []) if i != "scalar"]
if "avx512" in VECTOR_ISAS:  # its kernel with gathers, and with byte-plane lookups and the grid search
    at = VECTOR_ISAS.index("avx512")
    VECTOR_ISAS[at : at + 1] = ["avx512+gathers", "avx512+lookups"]


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.view(torch.uint8).clone()


def _update(isa: str, *args) -> None:
    """optimizer_update_8bit_blockwise(*args) on the kernels of `isa` ("avx512+gathers" /
    "avx512+lookups": the avx512 kernel's two forms)."""
    name, _, form = isa.partition("+")
    bitsandbytes_cpu.set_isa(name)
    bitsandbytes_cpu._C.set_optimizer_gathers(form == "gathers" if form else -1)
    try:
        torch.ops.bitsandbytes.optimizer_update_8bit_blockwise(*args)
    finally:
        bitsandbytes_cpu.set_isa("auto")
        bitsandbytes_cpu._C.set_optimizer_gathers(-1)


def _scalar_and(isa: str, run):
    """run("scalar") and run(isa), on 2 threads (several threads' chunks of blocks)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        return run("scalar"), run(isa)
    finally:
        torch.set_num_threads(threads)


def _assert_same_bits(isa: str, want: list[torch.Tensor], got: list[torch.Tensor], where: str = "") -> None:
    for what, w, o in zip(("p", "state1", "absmax1", "state2", "absmax2"), want, got):
        assert torch.equal(w, o), f"{isa} {what} differs from scalar{where}"


def _code_books(book: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The signed and the unsigned code book of `book`: "dynamic" (the optimizers' own), "linear"
    or "sorted-random" (256 sorted random codes spanning [-1, 1] / [0, 1])."""
    if book == "dynamic":
        return F.create_dynamic_map(signed=True), F.create_dynamic_map(signed=False)
    if book == "linear":
        return torch.linspace(-1, 1, 256), torch.linspace(0, 1, 256)
    g = torch.Generator().manual_seed(0)
    signed = torch.sort(torch.rand(256, generator=g) * 2 - 1).values
    signed[0], signed[-1] = -1.0, 1.0
    unsigned = torch.sort(torch.rand(256, generator=g)).values
    unsigned[0], unsigned[-1] = 0.0, 1.0
    return signed, unsigned


CODE_BOOKS = ["dynamic", "linear", "sorted-random"]


def _run(isa: str, name: str, dtype: torch.dtype, skip_zeros: bool, gnorm_scale: float, wd: float, book: str):
    gen = torch.Generator().manual_seed(1)
    n = 256 * 70 + 77  # several threads' chunks of whole blocks and a partial last block
    rows = 2 if name == "ademamix" else 1
    p = torch.randn(n, generator=gen).to(dtype)
    g = (torch.randn(n, generator=gen) * 0.05).to(dtype)
    g[::97] = 0.0
    g[5] = float("nan")
    g[300] = float("inf")
    g[301] = -float("inf")
    s1 = torch.randint(0, 256, (rows * n,), generator=gen, dtype=torch.uint8)
    s1[256 * 3 : 256 * 4] = 127  # a block of zero-valued states (code of 0.0 in the signed dynamic map)
    a1 = torch.rand(rows * ((n + 255) // 256), generator=gen)
    a1[7] = 0.0
    two = name in TWO_STATE
    s2 = torch.randint(0, 256, (n,), generator=gen, dtype=torch.uint8) if two else None
    a2 = torch.rand((n + 255) // 256, generator=gen) if two else None
    q1, q2 = _code_books(book)
    q2 = q2 if two else None
    _update(
        isa, name, g, p, s1, s2, 0.9, 0.995, 0.9999, 5.0, 1e-8, 4, 1e-2, q1, q2, a1, a2, wd, gnorm_scale, skip_zeros
    )
    return [_bits(t) for t in (p, s1, a1, s2, a2) if t is not None]


@pytest.mark.skipif(not VECTOR_ISAS, reason="only the scalar kernels are usable on this CPU")
@pytest.mark.parametrize("isa", VECTOR_ISAS)
@pytest.mark.parametrize("name", OPTIMIZERS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize(("skip_zeros", "gnorm_scale", "wd"), [(False, 1.0, 0.0), (True, 0.5, 0.01)])
@pytest.mark.parametrize("book", CODE_BOOKS)
def test_8bit_update_matches_scalar(isa, name, dtype, skip_zeros, gnorm_scale, wd, book) -> None:
    want, got = _scalar_and(isa, lambda which: _run(which, name, dtype, skip_zeros, gnorm_scale, wd, book))
    _assert_same_bits(isa, want, got, f" ({book} code book)")


def _grid_index(s: torch.Tensor) -> torch.Tensor:
    """The 8-bit state rule's grid index of scaled values s (f32, one rounding per operation)."""
    return ((s.clamp(-1.0, 1.0) + 1.0) * 32767.5 + 0.5).floor()


def _ordered(bits: torch.Tensor) -> torch.Tensor:
    """f32 bit patterns (int64) <-> integers in the order of the values (its own inverse)."""
    return torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits)


def _from_ordered(o: torch.Tensor) -> torch.Tensor:
    return _ordered(o).to(torch.int32).view(torch.float32)


def _grid_thresholds() -> torch.Tensor:
    """For every grid index b >= 1, the smallest f32 s whose grid index is >= b (bisection over
    the f32 values in order): the values at which any code book's code can change."""
    b = torch.arange(1, 65536, dtype=torch.float32)
    lo = torch.full(b.shape, int(_ordered(torch.tensor([-1.0]).view(torch.int32).long())), dtype=torch.int64)
    hi = torch.full(b.shape, int(_ordered(torch.tensor([1.0]).view(torch.int32).long())), dtype=torch.int64)
    while bool((hi - lo > 1).any()):
        mid = (lo + hi) // 2
        up = _grid_index(_from_ordered(mid)) >= b
        hi = torch.where(up, mid, hi)
        lo = torch.where(up, lo, mid)
    return hi


@pytest.mark.skipif(not VECTOR_ISAS, reason="only the scalar kernels are usable on this CPU")
@pytest.mark.parametrize("isa", VECTOR_ISAS)
@pytest.mark.parametrize("signed", [True, False])
def test_8bit_state_codes_at_every_grid_threshold(isa, signed) -> None:
    """Momentum's first step stores g itself, so with a 1.0 in every block (absmax 1) the scaled
    state values are exactly the ones chosen: every grid threshold and the f32 value just below
    it, where the vector kernels' code tables and searches must change code exactly as the scalar
    kernel does; for the signed and the unsigned dynamic code book."""
    t = _grid_thresholds()
    values = torch.cat([_from_ordered(t), _from_ordered(t - 1), torch.tensor([0.0, -0.0, 1e-30, -1e-30, 2e-45])])
    per = 255
    blocks = (values.numel() + per - 1) // per
    body = torch.zeros(blocks * per)
    body[: values.numel()] = values
    g = torch.cat([torch.ones(blocks, 1), body.view(blocks, per)], dim=1).view(-1)
    q1 = F.create_dynamic_map(signed=signed)

    def run(which: str) -> tuple[torch.Tensor, torch.Tensor]:
        p, s1, a1 = torch.zeros_like(g), torch.zeros(g.numel(), dtype=torch.uint8), torch.zeros(blocks)
        _update(
            which, "momentum", g, p, s1, None, 0.9, 0.0, 0.0, 0.0, 1e-8, 1, 1e-3, q1, None, a1, None, 0.0, 1.0, False
        )
        return s1, a1

    (want, absmax), (have, _) = _scalar_and(isa, run)
    assert torch.equal(absmax, torch.ones(blocks))
    bad = (want != have).nonzero().flatten()
    assert bad.numel() == 0, f"{isa}: {bad.numel()} codes differ, first at {g[bad[:4]].tolist()}"
    # The thresholds do change the code (at least once per code): the test is where it matters.
    codes = want.view(blocks, 256)[:, 1:].reshape(-1)
    assert int((codes[: t.numel()] != codes[t.numel() : 2 * t.numel()]).sum()) >= 200


def _run_ademamix(isa: str, step: int, betas: tuple[float, float]) -> list[torch.Tensor]:
    """AdEMAMix with its states and gradients spread over 2^-140 .. 2^100 block by block, so that
    the vector kernels' division by the step's bias corrections meets quotients far from 1 and
    values outside the range its multiply-and-correct path takes."""
    gen = torch.Generator().manual_seed(2)
    blocks = 64
    n = 256 * blocks
    scale = torch.pow(2.0, torch.linspace(-140, 100, blocks)).repeat_interleave(256)
    p = torch.randn(n, generator=gen)
    g = torch.randn(n, generator=gen) * scale
    g[::53] = 0.0
    s1 = torch.randint(0, 256, (2 * n,), generator=gen, dtype=torch.uint8)
    a1 = torch.cat([scale[::256], scale[::256] * 0.5])
    s2 = torch.randint(0, 256, (n,), generator=gen, dtype=torch.uint8)
    a2 = scale[::256] ** 2
    q1, q2 = F.create_dynamic_map(signed=True), F.create_dynamic_map(signed=False)
    _update(
        isa,
        "ademamix",
        g,
        p,
        s1,
        s2,
        betas[0],
        betas[1],
        0.9999,
        5.0,
        1e-8,
        step,
        1e-3,
        q1,
        q2,
        a1,
        a2,
        0.0,
        1.0,
        False,
    )
    return [_bits(t) for t in (p, s1, a1, s2, a2)]


@pytest.mark.skipif(not VECTOR_ISAS, reason="only the scalar kernels are usable on this CPU")
@pytest.mark.parametrize("isa", VECTOR_ISAS)
@pytest.mark.parametrize("step", [1, 2, 7, 100, 5000])
@pytest.mark.parametrize("betas", [(0.9, 0.999), (0.5, 0.95), (0.99, 0.9999)])
def test_ademamix_bias_correction_divisions_match_scalar(isa, step, betas) -> None:
    want, got = _scalar_and(isa, lambda which: _run_ademamix(which, step, betas))
    _assert_same_bits(isa, want, got, f" at step {step}")


@pytest.mark.skipif(not VECTOR_ISAS, reason="only the scalar kernels are usable on this CPU")
@pytest.mark.parametrize("isa", VECTOR_ISAS)
def test_f16_parameter_nan_with_payload_is_stored_as_the_scalar_kernels_nan(isa) -> None:
    """f16 parameters and gradients holding a NaN with payload bits (0x7e01): the updated
    parameter is the scalar kernel's NaN, bit for bit, in every kernel (F16C's conversion alone
    keeps the payload)."""
    n = 256 * 4
    q1 = F.create_dynamic_map(signed=True)

    def run(which: str) -> list[torch.Tensor]:
        p = torch.ones(n, dtype=torch.float16)
        g = torch.full((n,), 0.1, dtype=torch.float16)
        g.view(torch.int16)[7] = 0x7E01
        p.view(torch.int16)[300] = 0x7E01
        p.view(torch.int16)[600] = 0x7E01 | -0x8000
        s1, a1 = torch.full((n,), 127, dtype=torch.uint8), torch.ones(4)
        _update(
            which, "momentum", g, p, s1, None, 0.9, 0.0, 0.0, 0.0, 1e-8, 1, 1e-3, q1, None, a1, None, 0.0, 1.0, False
        )
        return [_bits(t) for t in (p, s1, a1)]

    want, got = _scalar_and(isa, run)
    assert bool(want[0].view(torch.float16)[[7, 300, 600]].isnan().all())
    _assert_same_bits(isa, want, got)
