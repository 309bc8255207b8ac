"""The shared per-element math of shared/include/bnb/optimizer_math.h against the reference.

The CUDA kernels (and, later, the CPU library) call these ``BNB_HD`` functions per element; a
host build of them (tests/native/shared_math_probe.cpp, compiled here with the system C++
compiler) must reproduce the Python reference: optimizer states bit for bit, the 8-bit state
grid rule and the int8 row-wise rounding exactly.
"""

from __future__ import annotations

import ctypes
import pathlib
import subprocess

import pytest
import torch

from bitsandbytes.backends.reference import int8 as ref_int8
from bitsandbytes.backends.reference.codebooks import dynamic_map
from conftest import host_compiler

ROOT = pathlib.Path(__file__).resolve().parent.parent
IDS = {"momentum": 0, "rmsprop": 1, "adagrad": 2, "adam": 3, "lion": 4, "ademamix": 5, "lamb": 6, "lars": 7}


class Hparams(ctypes.Structure):
    """bnb_optimizer_hparams."""

    _fields_ = [
        (k, ctypes.c_double)
        for k in (
            "beta1",
            "beta2",
            "beta3",
            "alpha",
            "eps",
            "weight_decay",
            "lr",
            "gnorm_scale",
            "max_unorm",
            "param_norm",
        )
    ] + [("step", ctypes.c_int64), ("skip_zeros", ctypes.c_int32)]


@pytest.fixture(scope="module")
def probe(tmp_path_factory):
    cxx = host_compiler()
    if cxx is None:
        pytest.skip("no C++ compiler")
    out = tmp_path_factory.mktemp("probe") / "libprobe.so"
    src = ROOT / "tests" / "native" / "shared_math_probe.cpp"
    cmd = [cxx, "-O2", "-std=c++17", "-ffp-contract=off", "-shared", "-fPIC", f"-I{ROOT / 'shared' / 'include'}"]
    subprocess.run([*cmd, str(src), "-o", str(out)], check=True)
    return ctypes.CDLL(str(out))


def _p(t: torch.Tensor) -> ctypes.c_void_p:
    return ctypes.c_void_p(t.data_ptr())


def _ref_optimizers():
    try:
        from bitsandbytes.backends.reference import optimizers
    except ImportError:
        pytest.skip("the optimizer reference kernels are not in this meta-package")
    return optimizers


@pytest.mark.parametrize("name", list(IDS))
@pytest.mark.parametrize("weight_decay", [0.0, 0.01])
def test_optimizer_math_matches_reference(probe, name, weight_decay):
    R = _ref_optimizers()
    n = 3000
    torch.manual_seed(0)
    p0 = torch.randn(n)
    runs = []
    for mode in ("reference", "shared"):
        p = p0.clone()
        s1 = torch.zeros(2 * n if name == "ademamix" else n)
        s2 = torch.zeros(n)
        for step in range(1, 5):
            torch.manual_seed(step)
            g = torch.randn(n)
            g[::7] = 0.0
            hp = (0.9, 0.999, 0.9999, 5.0, 1e-8)
            if mode == "reference":
                R.optimizer_update_32bit(name, g, p, s1, s2 if name in R.TWO_STATE else None, None, 0.0, 0.0, *hp,
                                         weight_decay, step, 1e-3, 0.5, True)  # fmt: skip
            else:
                h = Hparams(*hp, weight_decay, 1e-3, 0.5, 0.0, 0.0, step, 1)
                probe.upd32(IDS[name], _p(g), _p(p), _p(s1), _p(s2), ctypes.c_long(n), ctypes.byref(h))
        runs.append((p, s1, s2))
    (p_ref, s1_ref, s2_ref), (p_got, s1_got, s2_got) = runs
    assert torch.equal(s1_got, s1_ref)
    if name in R.TWO_STATE:
        assert torch.equal(s2_got, s2_ref)
    # torch's CPU sqrt is not always correctly rounded (1 ulp); the states absorb no such error.
    torch.testing.assert_close(p_got, p_ref, rtol=3e-7, atol=1e-9)


@pytest.mark.parametrize("signed", [True, False])
def test_state_grid_rule_matches_reference(probe, signed):
    R = _ref_optimizers()
    qmap = dynamic_map(signed)
    torch.manual_seed(1)
    x = torch.randn(50_000) if signed else torch.rand(50_000)
    x[5] = float("nan")
    blocks = -(-x.numel() // 256)
    want_codes = torch.empty(1, x.numel(), dtype=torch.uint8)
    want_absmax = torch.empty(1, blocks)
    R._quant(x.view(1, -1), R._grid_table(qmap), want_codes, want_absmax)
    codes = torch.empty(x.numel(), dtype=torch.uint8)
    absmax = torch.empty(blocks)
    probe.quant8(_p(x), ctypes.c_long(x.numel()), _p(qmap), _p(codes), _p(absmax))
    assert torch.equal(codes, want_codes.view(-1))
    torch.testing.assert_close(absmax, want_absmax.view(-1), rtol=0, atol=0, equal_nan=True)


def test_int8_rounding_matches_reference(probe):
    torch.manual_seed(2)
    x = torch.randn(64, 300) * 3
    x[3] = 0.0
    out = torch.empty(64, 300, dtype=torch.int8)
    stats = torch.empty(64)
    probe.i8(_p(x), ctypes.c_long(64), ctypes.c_long(300), _p(out), _p(stats))
    want, want_stats, _ = ref_int8.int8_vectorwise_quant(x)
    assert torch.equal(out, want) and torch.equal(stats, want_stats)
