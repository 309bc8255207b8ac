"""The fused 8-bit optimizer kernels of every CPU instruction set, bit for bit against the scalar
kernel: parameters, state codes and block absmax, for every algorithm and parameter dtype, over
several threads' worth of whole blocks plus a partial one, with zeros, NaN and inf in the
gradient, skip_zeros, gradient scaling and weight decay."""

from __future__ import annotations

import pytest
import torch

import bitsandbytes.functional as F

bitsandbytes_cpu = pytest.importorskip("bitsandbytes_cpu")

OPTIMIZERS = ["adam", "lamb", "ademamix", "lion", "momentum", "lars", "rmsprop", "adagrad"]
TWO_STATE = {"adam", "lamb", "ademamix"}
VECTOR_ISAS = [i for i in bitsandbytes_cpu.build_info().get("isa_usable", []) if i != "scalar"]


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.view(torch.uint8).clone()


def _run(isa: str, name: str, dtype: torch.dtype, skip_zeros: bool, gnorm_scale: float, wd: float):
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
    s1[256 * 3 : 256 * 4] = 127  # a block of zero-valued states (code of 0.0 in the signed map)
    a1 = torch.rand(rows * ((n + 255) // 256), generator=gen)
    a1[7] = 0.0
    two = name in TWO_STATE
    s2 = torch.randint(0, 256, (n,), generator=gen, dtype=torch.uint8) if two else None
    a2 = torch.rand((n + 255) // 256, generator=gen) if two else None
    q1 = F.create_dynamic_map(signed=True)
    q2 = F.create_dynamic_map(signed=False) if two else None
    bitsandbytes_cpu.set_isa(isa)
    try:
        torch.ops.bitsandbytes.optimizer_update_8bit_blockwise(
            name, g, p, s1, s2, 0.9, 0.995, 0.9999, 5.0, 1e-8, 4, 1e-2, q1, q2, a1, a2, wd, gnorm_scale, skip_zeros
        )
    finally:
        bitsandbytes_cpu.set_isa("auto")
    return [_bits(t) for t in (p, s1, a1, s2, a2) if t is not None]


@pytest.mark.skipif(not VECTOR_ISAS, reason="only the scalar kernels are usable on this CPU")
@pytest.mark.parametrize("isa", VECTOR_ISAS)
@pytest.mark.parametrize("name", OPTIMIZERS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize(("skip_zeros", "gnorm_scale", "wd"), [(False, 1.0, 0.0), (True, 0.5, 0.01)])
def test_8bit_update_matches_scalar(isa, name, dtype, skip_zeros, gnorm_scale, wd) -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        want = _run("scalar", name, dtype, skip_zeros, gnorm_scale, wd)
        got = _run(isa, name, dtype, skip_zeros, gnorm_scale, wd)
    finally:
        torch.set_num_threads(threads)
    for what, w, o in zip(("p", "state1", "absmax1", "state2", "absmax2"), want, got):
        assert torch.equal(w, o), f"{isa} {what} differs from scalar"
