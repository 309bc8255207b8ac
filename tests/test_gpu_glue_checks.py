"""The CUDA / ROCm Python glue validates optimizer arguments exactly as the reference does.

The glue (platforms/cuda/python/bitsandbytes_cuda/kernels.py, shipped by the ROCm wheel too) is
loaded from the source tree with a stand-in for its native module, which fails the test if any
call reaches it: every case here must be rejected before native code runs, with the reference's
exception type and message. This runs on machines without a GPU (CI), where the glue's kernels
cannot.
"""

from __future__ import annotations

import importlib.util
import pathlib
import sys
import types

import pytest
import torch

from bitsandbytes.backends.reference import KERNELS as REF
from bitsandbytes.backends.reference.codebooks import dynamic_map

GLUE = pathlib.Path(__file__).resolve().parents[1] / "platforms" / "cuda" / "python" / "bitsandbytes_cuda"
PKG = "_bnb_cuda_glue_under_test"


class _NoNative(types.ModuleType):
    def __getattr__(self, name: str):
        raise AssertionError(f"the glue reached native code ({name}) with arguments it should reject")


@pytest.fixture(scope="module")
def glue():
    spec = importlib.util.spec_from_file_location(PKG, GLUE / "__init__.py", submodule_search_locations=[str(GLUE)])
    pkg = importlib.util.module_from_spec(spec)
    sys.modules[PKG] = pkg
    sys.modules[f"{PKG}._C"] = _NoNative(f"{PKG}._C")
    try:
        spec.loader.exec_module(pkg)
        kernels = importlib.import_module(f"{PKG}.kernels")
        yield kernels.KERNELS
    finally:
        for name in [m for m in sys.modules if m == PKG or m.startswith(PKG + ".")]:
            del sys.modules[name]


N = 300  # two state blocks, the second partial


def _args_32bit(**over):
    g, p = torch.randn(N), torch.randn(N)
    args = dict(
        optimizer_name="adam", g=g, p=p, state1=torch.zeros(N), state2=torch.zeros(N), unorm_vec=None,
        max_unorm=0.0, param_norm=0.0, beta1=0.9, beta2=0.999, beta3=0.0, alpha=0.0, eps=1e-8,
        weight_decay=0.0, step=1, lr=1e-3, gnorm_scale=1.0,
    )  # fmt: skip
    args.update(over)
    return args


def _args_8bit(**over):
    g, p = torch.randn(N), torch.randn(N)
    q = dynamic_map(signed=True)
    args = dict(
        optimizer_name="adam", g=g, p=p, state1=torch.zeros(N, dtype=torch.uint8),
        state2=torch.zeros(N, dtype=torch.uint8), beta1=0.9, beta2=0.999, beta3=0.0, alpha=0.0, eps=1e-8,
        step=1, lr=1e-3, qmap1=q, qmap2=q, absmax1=torch.ones(2), absmax2=torch.ones(2), weight_decay=0.0,
        gnorm_scale=1.0,
    )  # fmt: skip
    args.update(over)
    return args


BAD_32BIT = {
    "unknown optimizer": dict(optimizer_name="adamw"),
    "step 0": dict(step=0),
    "negative lr": dict(lr=-1.0),
    "NaN eps": dict(eps=float("nan")),
    "g/p sizes": dict(g=torch.randn(N + 1)),
    "g/p dtypes": dict(g=torch.randn(N, dtype=torch.float16)),
    "integer g": dict(g=torch.ones(N, dtype=torch.int32), p=torch.ones(N, dtype=torch.int32)),
    "f16 state1": dict(state1=torch.zeros(N, dtype=torch.float16)),
    "short state1": dict(state1=torch.zeros(N - 1)),
    "missing state2": dict(state2=None),
    "strided state2": dict(state2=torch.zeros(2 * N)[::2]),
    "ademamix state1 of one row": dict(optimizer_name="ademamix"),
    "clip without unorm_vec": dict(max_unorm=1.0),
}

BAD_8BIT = {
    "unknown optimizer": dict(optimizer_name="sgd"),
    "step 0": dict(step=0),
    "negative lr": dict(lr=-0.5),
    "negative eps": dict(eps=-1e-8),
    "f32 state1": dict(state1=torch.zeros(N)),
    "short state2": dict(state2=torch.zeros(N - 1, dtype=torch.uint8)),
    "qmap of 255": dict(qmap1=torch.zeros(255)),
    "missing qmap2": dict(qmap2=None),
    "absmax1 of one block": dict(absmax1=torch.ones(1)),
    "f16 absmax2": dict(absmax2=torch.ones(2, dtype=torch.float16)),
    "ademamix state1 of one row": dict(optimizer_name="ademamix"),
}


def _rejects_like_reference(glue_fn, ref_fn, args):
    with pytest.raises((ValueError, TypeError)) as want:
        ref_fn(**args)
    with pytest.raises(want.type) as got:
        glue_fn(**args)
    assert str(got.value) == str(want.value)


@pytest.mark.parametrize("case", list(BAD_32BIT))
def test_optimizer_32bit_rejects_like_the_reference(glue, case):
    name = "optimizer_update_32bit"
    _rejects_like_reference(glue[name], REF[name], _args_32bit(**BAD_32BIT[case]))


@pytest.mark.parametrize("case", list(BAD_8BIT))
def test_optimizer_8bit_rejects_like_the_reference(glue, case):
    name = "optimizer_update_8bit_blockwise"
    _rejects_like_reference(glue[name], REF[name], _args_8bit(**BAD_8BIT[case]))


def test_valid_arguments_pass_the_checks(glue):
    """Sanity of the harness: valid arguments get past validation (to the device check, since the
    tensors are on the CPU), so the cases above fail for the reason they name."""
    for name, make in (("optimizer_update_32bit", _args_32bit), ("optimizer_update_8bit_blockwise", _args_8bit)):
        with pytest.raises(Exception) as e:
            glue[name](**make())
        assert "cuda" in str(e.value).lower() or "device" in str(e.value).lower(), str(e.value)


BAD_MM_DEQUANT = {
    "f32 A": dict(A=torch.zeros(2, 3)),
    "f16 row_stats": dict(row_stats=torch.ones(2, dtype=torch.float16)),
    "short col_stats": dict(col_stats=torch.ones(2)),
    "long row_stats": dict(row_stats=torch.ones(3)),
    "bias of 4": dict(bias=torch.ones(4)),
    "f64 output": dict(dtype=torch.float64),
}


@pytest.mark.parametrize("case", list(BAD_MM_DEQUANT))
def test_int8_mm_dequant_rejects_like_the_reference(glue, case):
    args = dict(A=torch.zeros(2, 3, dtype=torch.int32), row_stats=torch.ones(2), col_stats=torch.ones(3))
    args.update(BAD_MM_DEQUANT[case])
    _rejects_like_reference(glue["int8_mm_dequant"], REF["int8_mm_dequant"], args)
