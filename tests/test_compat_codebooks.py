"""Block-wise quantization with any code book: the constructors reproduce the established
release's tables bit for bit, quantize/dequantize_blockwise work with each of them, and a
block-wise QuantState survives as_dict() -> from_dict(), nested or not. Bad serialized states
raise ValueError naming the problem."""

from __future__ import annotations

import hashlib
import inspect
import json

import pytest
import torch

import bitsandbytes.functional as F
from bitsandbytes.utils import pack_dict_to_tensor
from conftest import DATA

CONSTRUCTORS = {"dynamic": F.create_dynamic_map, "linear": F.create_linear_map, "fp8": F.create_fp8_map}
ROWS = json.loads((DATA / "codebook_constructors.json").read_text())["rows"]


def digest(t: torch.Tensor) -> str:
    return hashlib.sha256(t.numpy().astype("<f4").tobytes()).hexdigest()[:16]


@pytest.mark.parametrize("name,args,expected", ROWS, ids=[f"{n}{a}" for n, a, _ in ROWS])
def test_constructors_reproduce_the_established_tables(name, args, expected):
    code = CONSTRUCTORS[name](*args)
    assert code.dtype == torch.float32 and code.shape == (256,)
    assert digest(code) == expected


def test_constructor_signatures_and_defaults():
    sig = {n: inspect.signature(f) for n, f in CONSTRUCTORS.items()}
    assert list(sig["dynamic"].parameters) == ["signed", "max_exponent_bits", "total_bits"]
    assert [p.default for p in sig["dynamic"].parameters.values()] == [True, 7, 8]
    assert [p.default for p in sig["linear"].parameters.values()] == [True, 8, True]
    assert [p.default for p in sig["fp8"].parameters.values()] == [True, 5, 2, 8]
    normal = inspect.signature(F.create_normal_map).parameters
    assert [(k, p.default) for k, p in normal.items()] == [("offset", 0.9677083), ("use_extra_value", True)]


@pytest.mark.parametrize("signed,total_bits", [(True, b) for b in range(2, 9)] + [(False, b) for b in range(2, 9)])
def test_dynamic_map_takes_every_exponent_width(signed, total_bits):
    widths = range(1, total_bits + 1) if signed else [total_bits - 1]
    for max_exponent_bits in widths:
        code = F.create_dynamic_map(signed, max_exponent_bits, total_bits)
        assert code.unique().numel() == 2**total_bits
        assert torch.equal(code, code.sort().values) and code.max() == 1.0


def test_normal_map_construction_without_scipy_installed(monkeypatch):
    """The NormalFloat code from normal quantiles, with ``scipy.stats.norm.ppf`` standing in as
    torch's ``ndtri`` (in float64): 8 positive and 7 negative quantiles (7 each without the extra
    value), zeros between, sorted and scaled to a maximum of 1."""
    import sys
    import types

    stats = types.ModuleType("scipy.stats")
    stats.norm = types.SimpleNamespace(
        ppf=lambda p: torch.special.ndtri(torch.as_tensor(p, dtype=torch.float64)).numpy()
    )
    scipy = types.ModuleType("scipy")
    scipy.stats = stats
    monkeypatch.setitem(sys.modules, "scipy", scipy)
    monkeypatch.setitem(sys.modules, "scipy.stats", stats)
    code = F.create_normal_map()
    assert code.shape == (256,) and code.dtype == torch.float32 and torch.equal(code, code.sort().values)
    assert ((code > 0).sum().item(), (code < 0).sum().item(), (code == 0).sum().item()) == (8, 7, 241)
    torch.testing.assert_close(code.unique(), F.get_4bit_type("nf4").sort().values, rtol=0, atol=1e-6)
    plain = F.create_normal_map(use_extra_value=False)
    assert ((plain > 0).sum().item(), (plain < 0).sum().item(), plain.max().item()) == (7, 7, 1.0)
    torch.testing.assert_close(plain[plain > 0], -plain[plain < 0].flip(0), rtol=0, atol=1e-6)


def test_normal_map_is_nf4():
    pytest.importorskip("scipy", reason="create_normal_map needs scipy, as in the established release")
    code = F.create_normal_map()
    assert code.shape == (256,) and code.dtype == torch.float32
    assert torch.equal(code.unique(), F.get_4bit_type("nf4").sort().values)
    assert code.unique().numel() == 16 and F.create_normal_map(use_extra_value=False).unique().numel() == 15


def code_books() -> dict[str, torch.Tensor]:
    return {
        "dynamic": F.create_dynamic_map(True),
        "dynamic_unsigned": F.create_dynamic_map(False),
        "dynamic_4exp": F.create_dynamic_map(True, 4, 8),
        "linear": F.create_linear_map(True),
        "linear_no_zero": F.create_linear_map(True, add_zero=False),
        "fp8_e4m3": F.create_fp8_map(True, 4, 3, 8),
        "fp8_e5m2": F.create_fp8_map(True, 5, 2, 8),
        "fp8_e2m1_4bit": F.create_fp8_map(True, 2, 1, 4),
        "linear_4bit": F.create_linear_map(True, total_bits=4),
    }


@pytest.mark.parametrize("name", list(code_books()))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("nested", [False, True])
def test_blockwise_with_any_code_book(name, dtype, nested):
    code = code_books()[name]
    g = torch.Generator().manual_seed(3)
    x = torch.randn(5, 333, generator=g).to(dtype)
    if "unsigned" in name:
        x = x.abs()
    q, state = F.quantize_blockwise(x, code=code, blocksize=256, nested=nested)
    # Every code is the nearest entry of the code book to the scaled value.
    absmax = F._resolved_absmax(state) if nested else state.absmax
    flat = x.reshape(-1).float()
    scale = absmax.repeat_interleave(256)[: flat.numel()]
    scaled = (flat * (1.0 / scale)).clamp(-1, 1)  # as the kernels scale
    chosen = (code[q.reshape(-1).long()] - scaled).abs()
    best = (code[None, :] - scaled[:, None]).abs().amin(1)
    if not nested:  # nested: the absmax is itself approximated, codes follow the exact one
        # Nearest up to the last bit of the distance (linear maps hold both 0 and -4.5e-8).
        assert (chosen <= best + 1e-7).all()
    # The state round-trips through its serialized form and decodes identically.
    restored = F.QuantState.from_dict(state.as_dict(), device="cpu")
    assert restored == state and restored.quant_type is None and restored.nested == nested
    out = F.dequantize_blockwise(q, restored)
    assert out.dtype == dtype and out.shape == x.shape
    assert torch.equal(out, F.dequantize_blockwise(q, state))
    gap = (code.sort().values.diff().max() / 2).item()
    assert ((out.float() - x.float()).abs() <= gap * scale.reshape(x.shape) * 1.02 + 1e-2).all()


def test_from_dict_leaves_the_callers_dict_alone():
    state = F.quantize_4bit(torch.randn(64, 64))[1]
    packed = state.as_dict(packed=True)
    keys = set(packed)
    F.QuantState.from_dict(packed, device="cpu")
    assert set(packed) == keys


def _packed_nf4() -> dict:
    return F.quantize_4bit(torch.randn(64, 64), quant_type="nf4")[1].as_dict(packed=True)


@pytest.mark.parametrize(
    "corrupt,match",
    [
        (
            lambda d: d.update({"quant_state.bitsandbytes__nf4": torch.tensor([0xFF, 0xFE, 0x7B], dtype=torch.uint8)}),
            "not UTF-8",
        ),
        (lambda d: d.update({"quant_state.bitsandbytes__nf4": pack_dict_to_tensor({"a": 1})[:-3]}), "not valid JSON"),
        (
            lambda d: d.update({"quant_state.bitsandbytes__nf4": torch.tensor(list(b"[1, 2]"), dtype=torch.uint8)}),
            "JSON object",
        ),
        (lambda d: d.update({"quant_state.bitsandbytes__nf4": torch.zeros(4, dtype=torch.float32)}), "uint8 tensor"),
        (lambda d: d.pop("absmax"), "lacks the 'absmax'"),
        (
            lambda d: d.update(
                {
                    "quant_state.bitsandbytes__nf4": pack_dict_to_tensor(
                        {"quant_type": "nf4", "blocksize": 64, "shape": [64, 64]}
                    )
                }
            ),
            "lacks the 'dtype'",
        ),
        (
            lambda d: d.update(
                {
                    "quant_state.bitsandbytes__nf4": pack_dict_to_tensor(
                        {"quant_type": "nf4", "blocksize": 64, "dtype": "Tensor", "shape": [4]}
                    )
                }
            ),
            "'dtype' must name one of",
        ),
        (
            lambda d: d.update(
                {
                    "quant_state.bitsandbytes__nf4": pack_dict_to_tensor(
                        {"quant_type": "nf4", "blocksize": "64", "dtype": "float32", "shape": [4]}
                    )
                }
            ),
            "'blocksize' must be a positive integer",
        ),
        (
            lambda d: d.update(
                {
                    "quant_state.bitsandbytes__nf4": pack_dict_to_tensor(
                        {"quant_type": "nf4", "blocksize": 64, "dtype": "float32", "shape": "4"}
                    )
                }
            ),
            "'shape' must be a list",
        ),
        (
            lambda d: d.update(
                {
                    "quant_state.bitsandbytes__nf4": pack_dict_to_tensor(
                        {"quant_type": "fp4", "blocksize": 64, "dtype": "float32"}
                    )
                }
            ),
            "is for 'nf4'",
        ),
        (lambda d: d.update({"junk": torch.zeros(1)}), "unexpected quant state items"),
    ],
)
def test_from_dict_rejects_bad_states(corrupt, match):
    d = _packed_nf4()
    corrupt(d)
    with pytest.raises(ValueError, match=match):
        F.QuantState.from_dict(d, device="cpu")


def test_from_dict_rejects_a_bad_quant_type_and_nested_items():
    state = F.quantize_blockwise(torch.randn(1000), nested=True)[1].as_dict()
    with pytest.raises(ValueError, match="or None \\(block-wise 8-bit\\)"):
        F.QuantState.from_dict({**state, "quant_type": "int4"}, device="cpu")
    with pytest.raises(ValueError, match="nested quant state lacks the 'nested_offset'"):
        F.QuantState.from_dict({k: v for k, v in state.items() if k != "nested_offset"}, device="cpu")
    with pytest.raises(ValueError, match="'nested_offset' must be a finite number"):
        F.QuantState.from_dict({**state, "nested_offset": "0.5"}, device="cpu")
