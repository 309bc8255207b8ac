"""bitsandbytes-cpu's panel path (bf16 activations against a 4-bit or int8 weight expanded panel by
panel) against the reference kernels: on the AMX tile unit on CPUs that have AMX-BF16, and in its
AVX512-BF16 dot-product form (the form CPUs without AMX run; forced where AMX runs too)."""

from __future__ import annotations

import pytest
import torch

cpu = pytest.importorskip("bitsandbytes_cpu")

from bitsandbytes.backends.reference import KERNELS as REF  # noqa: E402
from bitsandbytes_cpu import amx, kernels, weight_matmul  # noqa: E402
from conftest import cpu_amx_usable, served_by_cpu_wheel  # noqa: E402

UNITS = (["tiles"] if cpu_amx_usable() else []) + (["dots"] if cpu_amx_usable(panel=True) else [])
pytestmark = pytest.mark.skipif(not UNITS, reason="the avx512 kernel table does not run here")
OPS = torch.ops.bitsandbytes


@pytest.fixture(autouse=True, params=UNITS or ["none"])
def amx_on(request, monkeypatch):
    """The panel path on each unit for every row count; a spy counts its calls."""
    cpu.set_isa("avx512")
    cpu._C.set_amx(True)
    cpu._C.set_panel_dots(request.param == "dots")
    for limits in ("MIN_ROWS", "DOTS_MIN_ROWS"):
        monkeypatch.setattr(amx, limits, dict.fromkeys(getattr(amx, limits), 0))
    for limits in ("MAX_ROWS", "DOTS_MAX_ROWS"):
        monkeypatch.setattr(amx, limits, dict.fromkeys(getattr(amx, limits), 1 << 62))
    monkeypatch.setattr(amx, "FIXED_POINT_ROWS", 0)
    calls = []
    real = amx.weight_matmul

    def spy(*args, **kwargs):
        calls.append(args[0].shape)
        return real(*args, **kwargs)

    monkeypatch.setattr(amx, "weight_matmul", spy)
    yield calls
    cpu._C.set_panel_dots(False)
    cpu.set_isa("auto")


def _close(got: torch.Tensor, want: torch.Tensor, k: int) -> None:
    """bf16 result of an f32 sum against the reference's bf16 matmul of the same bf16 weight."""
    assert got.dtype == want.dtype == torch.bfloat16 and got.shape == want.shape
    scale = want.float().abs().max().item() if want.numel() else 0.0
    torch.testing.assert_close(
        got.float(), want.float(), rtol=1.6e-2, atol=1.6e-2 * max(scale, 1e-3) * (1 + k**0.5 / 8)
    )


# rows of A (1 and 2 passes of 256 rows, tails of 16 and 32), weight rows (tails of the 32-row
# pairs and of the panels), k (one or several ranges of 512)
SHAPES = [(1, 1, 32), (17, 33, 64), (33, 300, 96), (64, 64, 1024), (300, 70, 544), (5, 520, 128)]


@served_by_cpu_wheel
@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
@pytest.mark.parametrize("blocksize", [32, 64, 1024])
@pytest.mark.parametrize("m,n,k", SHAPES)
def test_gemm_4bit(amx_on, quant_type, blocksize, m, n, k):
    if k % blocksize:
        blocksize = 32
    g = torch.Generator().manual_seed(m * 131 + n * 7 + k)
    W = torch.randn(n, k, generator=g)
    packed, absmax = REF["quantize_4bit"](W, blocksize, quant_type, torch.uint8)
    A = torch.randn(m, k, generator=g).to(torch.bfloat16)
    bias = torch.randn(n, generator=g)
    for b in (None, bias, bias.to(torch.bfloat16)):
        want = REF["gemm_4bit"](A, packed, [n, k], absmax, blocksize, quant_type, b)
        got = OPS.gemm_4bit(A, packed, [n, k], absmax, blocksize, quant_type, b)
        _close(got, want, k)
    assert len(amx_on) == 3


@served_by_cpu_wheel
@pytest.mark.parametrize("m,n,k", SHAPES)
def test_int8_weight_mm(amx_on, m, n, k):
    g = torch.Generator().manual_seed(m * 17 + n + k)
    CB, SCB, _ = REF["int8_vectorwise_quant"](torch.randn(n, k, generator=g), 0.0)
    A = torch.randn(2, m, k, generator=g).to(torch.bfloat16)
    for b in (None, torch.randn(n, generator=g), torch.randn(n, generator=g).to(torch.float16)):
        _close(OPS.int8_weight_mm(A, CB, SCB, b), REF["int8_weight_mm"](A, CB, SCB, b), k)
    assert len(amx_on) == 3


@served_by_cpu_wheel
def test_exact_for_small_integers(amx_on):
    """Integer-valued operands whose products sum exactly in f32 and round exactly to bf16: the
    AMX result must equal the exact product bit for bit (no operand or tile may be misplaced)."""
    g = torch.Generator().manual_seed(3)
    n, k, m = 96, 128, 40
    CB = torch.randint(-2, 3, (n, k), generator=g, dtype=torch.int8)
    SCB = torch.full((n,), 127.0)
    A = torch.randint(-1, 2, (m, k), generator=g).to(torch.bfloat16)
    want = A.float() @ CB.float().t()
    assert want.abs().max() <= 256  # integers exact in bf16
    assert torch.equal(OPS.int8_weight_mm(A, CB, SCB).float(), want)
    assert len(amx_on) == 1


def test_other_dtypes_and_shapes_take_the_other_paths(amx_on):
    g = torch.Generator().manual_seed(5)
    CB, SCB, _ = REF["int8_vectorwise_quant"](torch.randn(8, 64, generator=g), 0.0)
    OPS.int8_weight_mm(torch.randn(3, 64, generator=g), CB, SCB)  # f32: no AMX
    CB2, SCB2, _ = REF["int8_vectorwise_quant"](torch.randn(8, 48, generator=g), 0.0)
    OPS.int8_weight_mm(torch.randn(3, 48, generator=g).to(torch.bfloat16), CB2, SCB2)  # k % 32 != 0
    cpu._C.set_amx(False)
    OPS.int8_weight_mm(torch.randn(3, 64, generator=g).to(torch.bfloat16), CB, SCB)
    assert amx_on == []


@served_by_cpu_wheel
def test_row_limits_choose_the_path(amx_on, monkeypatch):
    """Above MAX_ROWS (and below MIN_ROWS) the op takes the other paths, with the same result."""
    g = torch.Generator().manual_seed(8)
    packed, absmax = REF["quantize_4bit"](torch.randn(64, 64, generator=g), 64, "nf4", torch.uint8)
    A = torch.randn(40, 64, generator=g).to(torch.bfloat16)
    prefix = "DOTS_" if cpu._C.panel_dots() else ""
    monkeypatch.setattr(amx, prefix + "MAX_ROWS", dict.fromkeys(amx.MAX_ROWS, 39))
    other = OPS.gemm_4bit(A, packed, [64, 64], absmax, 64, "nf4")
    assert amx_on == []
    monkeypatch.setattr(amx, prefix + "MAX_ROWS", dict.fromkeys(amx.MAX_ROWS, 40))
    _close(OPS.gemm_4bit(A, packed, [64, 64], absmax, 64, "nf4"), other, 64)
    assert len(amx_on) == 1
    monkeypatch.setattr(amx, prefix + "MIN_ROWS", dict.fromkeys(amx.MIN_ROWS, 41))
    OPS.gemm_4bit(A, packed, [64, 64], absmax, 64, "nf4")
    assert len(amx_on) == 1


def test_the_lower_row_limit_is_inclusive(amx_on, monkeypatch):
    """Each op takes the panel path from MIN_ROWS rows of A (DOTS_MIN_ROWS in the dot-product
    form) on, and not one row below."""
    g = torch.Generator().manual_seed(10)
    n, k = 64, 64
    packed, absmax = REF["quantize_4bit"](torch.randn(n, k, generator=g), 64, "nf4", torch.uint8)
    CB, SCB = torch.randint(-127, 128, (n, k), dtype=torch.int8, generator=g), torch.rand(n, generator=g)
    args = {"gemm_4bit": (packed, [n, k], absmax, 64, "nf4"), "int8_weight_mm": (CB, SCB)}
    args["gemm_4bit_t"], args["int8_weight_mm_t"] = args["gemm_4bit"][:3] + (64, "nf4"), (CB, SCB)
    prefix = "DOTS_" if cpu._C.panel_dots() else ""
    monkeypatch.setattr(amx, prefix + "MIN_ROWS", dict.fromkeys(amx.MIN_ROWS, 20))
    for op, rest in args.items():
        fn = getattr(kernels if op == "gemm_4bit" else weight_matmul, op)
        for rows in (19, 20):
            A = torch.randn(rows, k, generator=g).to(torch.bfloat16)
            before = len(amx_on)
            _close(fn(A, *rest), REF[op](A, *rest), k)
            assert len(amx_on) - before == (rows == 20), (op, rows)


@served_by_cpu_wheel
def test_fixed_point_rows_keep_the_fused_kernel(amx_on, monkeypatch):
    """At block size 64 with k a multiple of 128, up to FIXED_POINT_ROWS rows stay on the fused
    (fixed-point) kernel; other block sizes and more rows take AMX. The dot-product form has its
    own lower limit (DOTS_MIN_ROWS, here 0) instead."""
    monkeypatch.setattr(amx, "FIXED_POINT_ROWS", 7)
    g = torch.Generator().manual_seed(9)
    W = torch.randn(64, 128, generator=g)
    calls = (1, 2, 3) if cpu._C.panel_dots() else (0, 1, 2)
    for (blocksize, rows), amx_calls in zip([(64, 7), (64, 8), (128, 7)], calls):
        packed, absmax = REF["quantize_4bit"](W, blocksize, "nf4", torch.uint8)
        A = torch.randn(rows, 128, generator=g).to(torch.bfloat16)
        got = OPS.gemm_4bit(A, packed, [64, 128], absmax, blocksize, "nf4")
        _close(got, REF["gemm_4bit"](A, packed, [64, 128], absmax, blocksize, "nf4"), 128)
        assert len(amx_on) == amx_calls


def test_native_entry_refuses_what_it_cannot_do():
    A = torch.zeros(4, 48, dtype=torch.bfloat16)
    CB, SCB = torch.zeros(8, 48, dtype=torch.int8), torch.ones(8)
    out = torch.empty(4, 8, dtype=torch.bfloat16)
    args = (A.data_ptr(), 4, 8, 48, CB.data_ptr(), SCB.data_ptr(), 0, 0, 1, 0, 0, 2, out.data_ptr())
    with pytest.raises(RuntimeError, match=r"k \(48\) to be a multiple of 32"):
        cpu._C.weight_matmul_amx(*args)
    with pytest.raises(ValueError, match="either CB and SCB"):
        cpu._C.weight_matmul_amx(A.data_ptr(), 4, 8, 64, 0, SCB.data_ptr(), 0, 0, 1, 0, 0, 2, out.data_ptr())
    cpu._C.set_amx(False)
    try:
        with pytest.raises(RuntimeError, match="the panel matmuls do not run here"):
            cpu._C.weight_matmul_amx(
                A.data_ptr(), 4, 8, 64, CB.data_ptr(), SCB.data_ptr(), 0, 0, 1, 0, 0, 2, out.data_ptr()
            )
    finally:
        cpu._C.set_amx(True)


@served_by_cpu_wheel
@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
@pytest.mark.parametrize("blocksize", [32, 64, 1024])
@pytest.mark.parametrize("m,n,k", SHAPES + [(9, 600, 64)])
def test_transposed_products(amx_on, quant_type, blocksize, m, n, k):
    """The input gradients: G @ W for W kept as 4-bit and as int8 (every tail of the 32-row ranges,
    of the 16-column tiles and of the 256-row passes; more than one 512-row range of W)."""
    if k % blocksize:
        blocksize = 32
    g = torch.Generator().manual_seed(m * 5 + n * 11 + k)
    packed, absmax = REF["quantize_4bit"](torch.randn(n, k, generator=g), blocksize, quant_type, torch.uint8)
    G = torch.randn(m, n, generator=g).to(torch.bfloat16)
    want = REF["gemm_4bit_t"](G, packed, [n, k], absmax, blocksize, quant_type)
    _close(OPS.gemm_4bit_t(G, packed, [n, k], absmax, blocksize, quant_type), want, n)
    CB, SCB, _ = REF["int8_vectorwise_quant"](torch.randn(n, k, generator=g), 0.0)
    _close(OPS.int8_weight_mm_t(G, CB, SCB), REF["int8_weight_mm_t"](G, CB, SCB), n)
    assert len(amx_on) == 2


@served_by_cpu_wheel
def test_transposed_exact_for_small_integers(amx_on):
    g = torch.Generator().manual_seed(4)
    n, k, m = 80, 72, 33
    CB = torch.randint(-2, 3, (n, k), generator=g, dtype=torch.int8)
    G = torch.randint(-1, 2, (m, n), generator=g).to(torch.bfloat16)
    want = G.float() @ CB.float()
    assert want.abs().max() <= 256
    assert torch.equal(OPS.int8_weight_mm_t(G, CB, torch.full((n,), 127.0)).float(), want)
    assert len(amx_on) == 1


@served_by_cpu_wheel
def test_non_contiguous_bias_and_activations(amx_on):
    """Strided inputs are made contiguous (and kept alive) before the native call."""
    g = torch.Generator().manual_seed(9)
    n, k = 40, 64
    packed, absmax = REF["quantize_4bit"](torch.randn(n, k, generator=g), 64, "nf4", torch.uint8)
    A = torch.randn(k, 24, generator=g).to(torch.bfloat16).t()  # [24, k], not contiguous
    bias = torch.randn(2 * n, generator=g)[::2]
    want = REF["gemm_4bit"](A.contiguous(), packed, [n, k], absmax, 64, "nf4", bias.contiguous())
    for _ in range(3):
        _close(OPS.gemm_4bit(A, packed, [n, k], absmax, 64, "nf4", bias), want, k)
    CB, SCB, _ = REF["int8_vectorwise_quant"](torch.randn(n, k, generator=g), 0.0)
    want8 = REF["int8_weight_mm"](A.contiguous(), CB, SCB, bias.contiguous())
    _close(OPS.int8_weight_mm(A, CB, SCB, bias), want8, k)
    assert len(amx_on) == 4


# ---- the LLM.int8() GEMM on AMX-INT8 (native: from 8 rows, k a multiple of 64) ----------------

int8_tiles = pytest.mark.skipif(not cpu._C.amx_int8_usable(), reason="the CPU has no AMX-INT8")


def _int8_pair(m: int, n: int, k: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    A = torch.randint(-128, 128, (m, k), dtype=torch.int8, generator=g)
    B = torch.randint(-128, 128, (n, k), dtype=torch.int8, generator=g)
    A[0, 0] = B[0, 0] = B[-1, -1] = -128
    return A, B


@int8_tiles
@pytest.mark.parametrize(
    "m, n, k", [(8, 33, 64), (17, 64, 128), (40, 70, 576), (300, 40, 192), (513, 96, 128), (9, 1, 64), (16, 20, 96)]
)
def test_int8_linear_matmul_exact(m, n, k):
    """Every tail (rows of A, weight rows, two and three passes; k = 96 takes the VNNI kernel): exact."""
    A, B = _int8_pair(m, n, k, m + n + k)
    want = (A.long() @ B.long().t()).int()
    got = OPS.int8_linear_matmul(A, B)
    cpu._C.set_amx(False)
    try:
        off = OPS.int8_linear_matmul(A, B)
    finally:
        cpu._C.set_amx(True)
    assert torch.equal(got, want) and torch.equal(off, want)


@int8_tiles
def test_int8_mixed_and_module_match_without_tiles():
    """int8_mixed_scaled_mm with outlier columns and Linear8bitLt in eval mode at 24 rows give the
    same bits with the tile unit as without it."""
    import bitsandbytes as bnb

    torch.manual_seed(5)
    layer = bnb.nn.Linear8bitLt(128, 72, has_fp16_weights=False, threshold=6.0).to(torch.bfloat16).to("cpu").eval()
    x = torch.randn(24, 128, dtype=torch.bfloat16)
    x[:, [3, 77]] *= 20  # outlier columns
    A2 = x.half()
    CA, SCA, cols = OPS.int8_vectorwise_quant(A2, 6.0)
    CB, SCB = layer.state.CB if layer.state.CB is not None else layer.weight.CB, layer.weight.SCB
    assert cols.numel() == 2
    results = []
    for on in (True, False):
        cpu._C.set_amx(on)
        try:
            with torch.no_grad():
                results.append((OPS.int8_mixed_scaled_mm(x, CA, CB, SCA, SCB, cols, None)[0], layer(x)))
        finally:
            cpu._C.set_amx(True)
    (mixed_on, mod_on), (mixed_off, mod_off) = results
    assert torch.equal(mixed_on, mixed_off) and torch.equal(mod_on, mod_off)
