"""Which optimizer states are paged, and the order ``GlobalPageManager.prefetch_all`` prefetches
them in. A fake provider pages CPU memory here (tests/test_cuda_platform.py runs CUDA managed
memory on a GPU)."""

from __future__ import annotations

import pytest
import torch

import bitsandbytes as bnb
from bitsandbytes import _paging


@pytest.fixture
def fake_paging(monkeypatch):
    """A paged-memory provider for CPU tensors; yields the log of its allocate/prefetch calls."""
    log = []

    def allocate(shape, dtype):
        t = torch.zeros(shape, dtype=dtype)
        log.append(("allocate", tuple(shape)))
        return t

    monkeypatch.setattr(_paging, "_PROVIDER", ("cpu", allocate, lambda t, i, to_cpu: log.append(("prefetch", t))))
    monkeypatch.setattr(_paging, "synchronize", lambda device: None)
    registry = _paging.GlobalPageManager.get_instance().paged_tensors
    before = len(registry)
    try:
        yield log
    finally:
        del registry[before:]


@pytest.mark.parametrize("numel, paged", [(49_999, ()), (50_000, ("state1",)), (100_000, ("state1", "state2"))])
def test_ademamix_pages_its_pair_of_emas_from_half_the_size(fake_paging, numel, paged) -> None:
    """AdEMAMix's state1 holds two EMAs (twice the parameter's size): it is paged from 5e4
    parameter elements, where the other states are paged from 1e5, as in the established release."""
    p = torch.nn.Parameter(torch.randn(numel))
    opt = bnb.optim.PagedAdEMAMix32bit([p], lr=1e-3)
    p.grad = torch.randn(numel)
    opt.step()
    got = tuple(k for k in ("state1", "state2") if _paging.is_paged(opt.state[p][k]))
    assert got == paged
    assert opt.state[p]["state1"].shape == (2, numel)
    assert [e[1] for e in fake_paging if e[0] == "allocate"] == [
        (2, numel) if k == "state1" else (numel,) for k in paged
    ]


def test_prefetch_all_prefetches_the_latest_registered_first(fake_paging) -> None:
    """prefetch_all walks the registry backwards: the first registered states (the first
    parameters, used first by the next forward pass) arrive last and stay resident."""
    mng = bnb.functional.GlobalPageManager.get_instance()
    ts = [bnb.functional.get_paged(4, device="cpu") for _ in range(3)]
    mng.paged_tensors.extend(ts)
    fake_paging.clear()
    mng.prefetch_all()
    prefetched = [e[1] for e in fake_paging if e[0] == "prefetch"]
    assert len(prefetched) == 3 and all(a is b for a, b in zip(prefetched, ts[::-1]))
