"""Claims of README.md and platforms/*/README.md that no other test pins: the documented row limits
and version floors of each platform's glue, and a few rows of the "Compatibility notes" table."""

from __future__ import annotations

import logging
import subprocess
import sys
import warnings

import pytest
import torch

import bitsandbytes as bnb
import bitsandbytes.functional as F
from bitsandbytes._checks import DTypeError

# ---------------------------------------------------------------------------------------------
# Compatibility notes


def test_dtype_error_is_both_type_error_and_value_error():
    """README: wrong dtypes raise ``DTypeError``, both a ``TypeError`` and a ``ValueError``."""
    assert issubclass(DTypeError, TypeError) and issubclass(DTypeError, ValueError)
    with pytest.raises(ValueError, match="dtype"):
        torch.ops.bitsandbytes.quantize_4bit(torch.ones(64, dtype=torch.int32), 64, "nf4", torch.uint8)
    with pytest.raises(TypeError, match="dtype"):
        torch.ops.bitsandbytes.quantize_4bit(torch.ones(64, dtype=torch.int32), 64, "nf4", torch.uint8)


def test_get_4bit_type_int4_names_the_type():
    """README: ``NotImplementedError("Typename int4 not supported")`` (a ``RuntimeError``)."""
    with pytest.raises(NotImplementedError) as err:
        F.get_4bit_type("int4")
    assert str(err.value) == "Typename int4 not supported"
    assert isinstance(err.value, RuntimeError)


def test_create_dynamic_map_without_exponent_bits_is_the_linear_items():
    """README: ``create_dynamic_map(max_exponent_bits=0)`` returns the map of the remaining linear
    items: 127 midpoints of ``linspace(0.1, 1, 128)`` and their negatives, 0 and 1."""
    code = F.create_dynamic_map(max_exponent_bits=0)
    assert code.shape == (256,) and code.dtype == torch.float32
    assert torch.equal(code, code.sort().values)
    bounds = torch.linspace(0.1, 1, 128)
    mids = (bounds[:-1] + bounds[1:]) / 2
    assert torch.equal(code[code > 0][:-1], mids) and code.max().item() == 1.0
    assert torch.equal(code[code < 0].flip(0), -mids)
    assert int((code == 0).sum()) == 1


def test_matmul8bit_logs_no_cast_message(caplog):
    """README: ``MatMul8bitLt`` does not log "inputs will be cast from X to float16" per call."""
    A, B = torch.randn(3, 32), torch.randn(16, 32, dtype=torch.float16)
    with caplog.at_level(logging.DEBUG), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for dtype in (torch.float32, torch.bfloat16):
            bnb.matmul(A.to(dtype), B, state=bnb.MatmulLtState())
    messages = [r.getMessage() for r in caplog.records] + [str(w.message) for w in caught]
    assert not [m for m in messages if "cast" in m], messages


def test_linear8bitlt_fp16_weights_eval_requantizes_every_call():
    """README: ``Linear8bitLt(has_fp16_weights=True)`` in eval mode re-quantizes the 16-bit weight on
    every call, so an edit of the weight after a forward shows in the next one."""
    torch.manual_seed(0)
    layer = bnb.nn.Linear8bitLt(32, 16, bias=False, has_fp16_weights=True, threshold=0.0).eval()
    x = torch.randn(4, 32)
    with torch.no_grad():
        first = layer(x)
        layer.weight.mul_(2)  # doubles every row scale, keeps every int8 code
        second = layer(x)
    assert not torch.allclose(first, second)
    torch.testing.assert_close(second, 2 * first, rtol=1e-6, atol=1e-6)


def test_nothing_needs_numpy():
    """README: numpy is not a requirement; nothing here imports it. With numpy unimportable, the
    4-bit, 8-bit and optimizer flows still run."""
    code = (
        "import sys, warnings\n"
        "sys.modules['numpy'] = None\n"
        "with warnings.catch_warnings():\n"
        "    warnings.simplefilter('ignore')\n"
        "    import torch\n"
        "import bitsandbytes as bnb, bitsandbytes.functional as F\n"
        "w, x = torch.randn(64, 128), torch.randn(3, 128)\n"
        "q, qs = F.quantize_4bit(w, quant_type='nf4', compress_statistics=True)\n"
        "y = bnb.matmul_4bit(x, q.t(), quant_state=qs)\n"
        "layer = bnb.nn.Linear8bitLt(128, 64, has_fp16_weights=False).to('cpu')\n"
        "layer(x)\n"
        "p = torch.nn.Parameter(torch.randn(4096))\n"
        "opt = bnb.optim.Adam8bit([p]); p.grad = torch.randn_like(p); opt.step()\n"
        "assert sys.modules['numpy'] is None\n"
        "assert not [m for m in sys.modules if m.startswith('numpy.')]\n"
        "print('ok', tuple(y.shape))\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.strip() == "ok (3, 64)"


# ---------------------------------------------------------------------------------------------
# Documented row limits and version floors of the platform glue


def test_cpu_row_limits_match_the_readme():
    """platforms/cpu/README.md and the README's Compatibility notes quote these limits."""
    pytest.importorskip("bitsandbytes_cpu")
    from bitsandbytes_cpu import _panels, amx, kernels, prepared, weight_matmul

    # AMX: gemm_4bit 5-512 rows, int8_weight_mm from 10, int8_weight_mm_t 6-512, gemm_4bit_t 4-256
    assert amx.MIN_ROWS == {"gemm_4bit": 5, "int8_weight_mm": 10, "int8_weight_mm_t": 6, "gemm_4bit_t": 4}
    assert amx.MAX_ROWS["gemm_4bit"] == 512 and amx.MAX_ROWS["int8_weight_mm_t"] == 512
    assert amx.MAX_ROWS["gemm_4bit_t"] == 256 and amx.MAX_ROWS["int8_weight_mm"] >= 1 << 31
    # 8-512 at block size 64 with K a multiple of 128 (the fixed-point kernel keeps up to 7 rows)
    assert amx.FIXED_POINT_ROWS == 7
    assert amx.fused_rows(4096, 64) == 7 and amx.fused_rows(4096, 128) == 4 and amx.fused_rows(4160, 64) == 4
    # panels without AMX: 17-25 rows for the forwards, 13-17 for the input gradients
    assert amx.DOTS_MIN_ROWS == {"gemm_4bit": 25, "int8_weight_mm": 17, "int8_weight_mm_t": 17, "gemm_4bit_t": 13}
    # int8 training on AVX-512: 16 forward, 16 backward; on AVX2: 96 and 16
    assert weight_matmul.FUSED_ROWS["avx512"]["int8_weight_mm"] == 16
    assert weight_matmul.FUSED_ROWS["avx512"]["int8_weight_mm_t"] == 16
    assert weight_matmul.FUSED_ROWS["avx2"]["int8_weight_mm"] == 96
    assert weight_matmul.FUSED_ROWS["avx2"]["int8_weight_mm_t"] == 16
    # gemm_4bit expands the weight above 32 rows, at most 32 MiB (never under 1024 rows) a panel
    assert kernels.FUSED_MAX_ROWS == 32
    assert _panels.PANEL_BYTES == 32 << 20 and _panels.PANEL_MIN == 1024
    assert _panels.panel_width(14336, 4096, 4) == 2048  # 32 MiB of a 14336x4096 f32 weight
    assert _panels.panel_width(4096, 14336, 4) == 1024  # 58 MB: the 1024-row floor wins
    # prepared runners: Linear8bitLt in eval mode 1-64 rows
    assert prepared.INT8_MAX_ROWS == 64


def test_cpu_dense_dtype_matches_the_readme():
    """platforms/cpu/README.md: the dense GEMM runs in bf16 where the avx512 table runs, in f32 for
    f16 activations and for bf16 elsewhere."""
    cpu = pytest.importorskip("bitsandbytes_cpu")
    from bitsandbytes_cpu import kernels

    before = cpu.isa()
    try:
        for isa in ("avx512", "avx2", "scalar"):
            if isa not in cpu.build_info()["isa_usable"]:
                continue
            cpu.set_isa(isa)
            assert kernels.dense_dtype(torch.float16) == torch.float32
            assert kernels.dense_dtype(torch.float32) == torch.float32
            assert kernels.dense_dtype(torch.bfloat16) == (torch.bfloat16 if isa == "avx512" else torch.float32)
    finally:
        cpu.set_isa(before)


def test_mps_glue_limits_match_the_readme():
    """README, "The MPS wheel": torch 2.6 or newer (``compile_shader``), the fused gemv takes 1 to
    8 rows of A (gemm_4bit too), and tensors of 2^31 elements or more go to the reference."""
    mps = pytest.importorskip("bitsandbytes_mps")
    from bitsandbytes_mps import kernels, optim

    assert mps.MIN_TORCH == (2, 6)
    assert kernels.GEMV_MAX_ROWS == 8
    assert kernels.MAX_ELEMENTS == optim.MAX_ELEMENTS == 2**31 - 1


def test_xpu_glue_limits_match_the_readme():
    """README, "The XPU wheel": gemv decodes the packed weight once per 8 rows of A, gemm_4bit runs
    the fused kernel up to 16 rows, and Triton older than 3.1 is refused."""
    pytest.importorskip("bitsandbytes_xpu")
    import bitsandbytes_xpu

    matmul4 = pytest.importorskip("bitsandbytes_xpu.matmul4")
    assert matmul4.ROWS_PER_LAUNCH == 8 and matmul4.FUSED_MAX_ROWS == 16
    assert bitsandbytes_xpu.MIN_TRITON == (3, 1)


def test_hpu_software_versions_match_the_readme():
    """README, "The Intel Gaudi wheel": Gaudi software 1.21 or newer; the nibbles are swapped for
    ``dequantize_nf4`` of software older than 1.22."""
    pytest.importorskip("bitsandbytes_hpu")
    from bitsandbytes_hpu import _gaudi

    assert _gaudi.MIN_SOFTWARE == (1, 21)
    assert _gaudi.NIBBLE_ORDER_CHANGED == (1, 22)


def test_op_interface_version_and_accepted_versions():
    """README: the op interface is at version 2; wheels built for version 1 still load."""
    from bitsandbytes import _ops, _platforms

    assert _ops.OP_INTERFACE_VERSION == 2
    assert _platforms.ACCEPTED_INTERFACE_VERSIONS == {1, 2}
