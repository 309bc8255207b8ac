"""Edge cases of the panel path's AVX512-BF16 dot-product form, the 4-bit input-gradient SIMD kernels
and the float checkpoints assigned to quantized layers built on meta: edge shapes, thread counts,
NaN/inf propagation, and the switches (panel dot products, optimizer gathers) left as they were
found. The 8-bit optimizer kernels' forms on other code books: test_cpu_optim_isa.py."""

from __future__ import annotations

import pytest
import torch

import bitsandbytes as bnb
from bitsandbytes.backends.reference import KERNELS as REF


def _cpu():
    return pytest.importorskip("bitsandbytes_cpu")


@pytest.fixture
def dots():
    """The panel path in its dot-product form (forced where AMX runs), switches restored after."""
    cpu = _cpu()
    if "avx512" not in cpu.build_info()["isa_usable"]:
        pytest.skip("the avx512 kernel table does not run here")
    cpu.set_isa("avx512")
    cpu._C.set_amx(True)
    cpu._C.set_panel_dots(True)
    try:
        if not cpu._C.panel_dots():
            pytest.skip("the panel path does not run here")
        yield cpu
    finally:
        cpu._C.set_panel_dots(False)
        cpu.set_isa("auto")


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.view(torch.int16) if t.element_size() == 2 else t.view(torch.int32)


def _same_specials(got: torch.Tensor, want: torch.Tensor) -> None:
    got, want = got.float(), want.float()
    assert torch.equal(torch.isnan(got), torch.isnan(want))
    assert torch.equal(torch.isposinf(got), torch.isposinf(want))
    assert torch.equal(torch.isneginf(got), torch.isneginf(want))


def _close(got: torch.Tensor, want: torch.Tensor, k: int) -> None:
    _same_specials(got, want)
    fin = torch.isfinite(want.float())
    g, w = got.float()[fin], want.float()[fin]
    scale = w.abs().max().item() if w.numel() else 0.0
    torch.testing.assert_close(g, w, rtol=1.6e-2, atol=1.6e-2 * max(scale, 1e-3) * (1 + k**0.5 / 8))


# rows of A / G (1, a pass of 256 and its tails), weight rows (1, 2, tails of 16 / 32), k (one block
# of every block size, several 512-ranges, 4096)
PANEL_SHAPES = [
    (1, 1, 32, 32),
    (1, 17, 64, 64),
    (2, 5, 128, 128),
    (7, 2, 256, 256),
    (3, 40, 1024, 1024),
    (255, 33, 64, 32),
    (256, 31, 96, 32),
    (257, 70, 128, 64),
    (33, 1, 32, 32),
    (65, 100, 544, 32),
    (40, 33, 4096, 4096),
]


@pytest.mark.parametrize("m,n,k,blocksize", PANEL_SHAPES)
def test_dots_panel_edges_and_thread_counts(dots, m, n, k, blocksize):
    from bitsandbytes_cpu import amx

    g = torch.Generator().manual_seed(m * 7 + n + k)
    W = torch.randn(n, k, generator=g)
    packed, absmax = REF["quantize_4bit"](W, blocksize, "nf4", torch.uint8)
    CB, SCB, _ = REF["int8_vectorwise_quant"](W, 0.0)
    A = torch.randn(m, k, generator=g).to(torch.bfloat16)
    G = torch.randn(m, n, generator=g).to(torch.bfloat16)
    bias = torch.randn(n, generator=g)
    four = {"B": packed, "absmax": absmax, "quant_type": "nf4", "blocksize": blocksize}
    cases = [
        (A, four | {"bias": bias}, REF["gemm_4bit"](A, packed, [n, k], absmax, blocksize, "nf4", bias), k),
        (A, {"CB": CB, "SCB": SCB, "bias": bias}, REF["int8_weight_mm"](A, CB, SCB, bias), k),
        (G, four | {"transposed": True}, REF["gemm_4bit_t"](G, packed, [n, k], absmax, blocksize, "nf4"), n),
        (G, {"CB": CB, "SCB": SCB, "transposed": True}, REF["int8_weight_mm_t"](G, CB, SCB), n),
    ]
    for X, kw, want, length in cases:
        outs = [amx.weight_matmul(X, n, k, nthreads=t, **kw) for t in (1, 2, 3)]
        _close(outs[0], want, length)
        for o in outs[1:]:
            assert torch.equal(_bits(o), _bits(outs[0]))


@pytest.mark.parametrize("m,n,k", [(1, 1, 1), (3, 5, 5), (17, 33, 17), (33, 31, 1), (2, 600, 3), (300, 40, 33)])
def test_dots_int8_input_gradient_any_k(dots, m, n, k):
    """The int8 input gradient takes any k (partial 16-column tiles, one column)."""
    from bitsandbytes_cpu import amx

    g = torch.Generator().manual_seed(m + n + k)
    CB, SCB, _ = REF["int8_vectorwise_quant"](torch.randn(n, k, generator=g), 0.0)
    G = torch.randn(m, n, generator=g).to(torch.bfloat16)
    outs = [amx.weight_matmul(G, n, k, CB=CB, SCB=SCB, transposed=True, nthreads=t) for t in (1, 3)]
    _close(outs[0], REF["int8_weight_mm_t"](G, CB, SCB), n)
    assert torch.equal(_bits(outs[1]), _bits(outs[0]))


@pytest.mark.parametrize(
    "m,n,k,blocksize", [(5, 40, 64, 32), (33, 70, 128, 64), (40, 33, 256, 256), (3, 17, 1024, 1024)]
)
def test_dots_propagates_nan_and_inf_like_the_reference(dots, m, n, k, blocksize):
    """inf / NaN block scales of the 4-bit weight and inf / NaN activations and gradients: the
    padding rows the dot products skip or multiply must not add or hide any."""
    from bitsandbytes_cpu import amx

    g = torch.Generator().manual_seed(m + n + k)
    W = torch.randn(n, k, generator=g)
    packed, absmax = REF["quantize_4bit"](W, blocksize, "nf4", torch.uint8)
    absmax = absmax.clone()
    absmax[1] = float("inf")
    absmax[-1] = float("nan")
    CB, SCB, _ = REF["int8_vectorwise_quant"](W, 0.0)
    A = torch.randn(m, k, generator=g).to(torch.bfloat16)
    A[1, 3] = float("inf")
    A[m - 1, k - 1] = float("nan")
    G = torch.randn(m, n, generator=g).to(torch.bfloat16)
    G[0, 1] = float("inf")
    G[m - 1, n - 1] = float("nan")
    G[min(2, m - 1), 0] = -float("inf")
    four = {"B": packed, "absmax": absmax, "quant_type": "nf4", "blocksize": blocksize}
    for t in (1, 2):
        got = amx.weight_matmul(A, n, k, nthreads=t, **four)
        _same_specials(got, REF["gemm_4bit"](A, packed, [n, k], absmax, blocksize, "nf4", None))
        got = amx.weight_matmul(A, n, k, CB=CB, SCB=SCB, nthreads=t)
        _same_specials(got, REF["int8_weight_mm"](A, CB, SCB, None))
        got = amx.weight_matmul(G, n, k, transposed=True, nthreads=t, **four)
        _same_specials(got, REF["gemm_4bit_t"](G, packed, [n, k], absmax, blocksize, "nf4"))
        got = amx.weight_matmul(G, n, k, CB=CB, SCB=SCB, transposed=True, nthreads=t)
        _same_specials(got, REF["int8_weight_mm_t"](G, CB, SCB))


def _fused_4bit_t(cpu, G, n, k, packed, absmax, quant_type, blocksize, threads):
    from bitsandbytes_cpu._codes import DTYPE_CODE, QUANT_CODE

    out = torch.empty(G.shape[0], k, dtype=G.dtype)
    cpu._C.weight_matmul_t(
        G.data_ptr(), DTYPE_CODE[G.dtype], G.shape[0], n, k, 0, 0, packed.data_ptr(), absmax.data_ptr(),
        QUANT_CODE[quant_type], blocksize, out.data_ptr(), threads,
    )  # fmt: skip
    return out


# k not a multiple of the block size (blocks run over the flattened weight), odd k, spans of 512
@pytest.mark.parametrize(
    "m,n,k,blocksize",
    [(1, 1, 1, 64), (1, 3, 5, 32), (2, 5, 513, 64), (16, 7, 1000, 128), (4, 9, 1025, 1024), (15, 6, 777, 128)],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_simd_4bit_input_gradient(m, n, k, blocksize, dtype):
    cpu = _cpu()
    isas = cpu.build_info()["isa_usable"]
    if "avx512" not in isas and "avx2" not in isas:
        pytest.skip("no SIMD kernel table here")
    cpu.set_isa("avx512" if "avx512" in isas else "avx2")
    try:
        g = torch.Generator().manual_seed(m + 3 * n + k)
        packed, absmax = REF["quantize_4bit"](torch.randn(n, k, generator=g), blocksize, "fp4", torch.uint8)
        absmax = absmax.clone()
        G = torch.randn(m, n, generator=g).to(dtype)
        exact = G.float() @ REF["dequantize_4bit"](packed, absmax, blocksize, "fp4", [n, k], torch.float32)
        for t in (1, 2, 3):
            got = _fused_4bit_t(cpu, G, n, k, packed, absmax, "fp4", blocksize, t).float()
            tol = (1e-5 if dtype == torch.float32 else 1e-2) * exact.abs().max().item() * (1 + n**0.5) + 1e-6
            assert (got - exact).abs().max().item() <= tol
        # inf / NaN scales and gradients: the zero-padded rows of a partial group of 4 add nothing
        absmax[0] = float("inf")
        absmax[-1] = float("nan")
        G[0, 0] = float("inf")
        G[m - 1, n - 1] = float("nan")
        want = REF["gemm_4bit_t"](G, packed, [n, k], absmax, blocksize, "fp4")
        _same_specials(_fused_4bit_t(cpu, G, n, k, packed, absmax, "fp4", blocksize, 2), want)
    finally:
        cpu.set_isa("auto")


def test_switches_go_back():
    cpu = _cpu()
    gathers = cpu._C.optimizer_gathers()
    cpu._C.set_optimizer_gathers(1)
    assert cpu._C.optimizer_gathers()
    cpu._C.set_optimizer_gathers(0)
    assert not cpu._C.optimizer_gathers()
    cpu._C.set_optimizer_gathers(-1)
    assert cpu._C.optimizer_gathers() == gathers
    dots_before = cpu._C.panel_dots()
    cpu._C.set_panel_dots(True)
    cpu._C.set_panel_dots(False)
    assert cpu._C.panel_dots() == dots_before


@pytest.mark.parametrize(
    "cls,kwargs",
    [
        (
            bnb.nn.Linear4bit,
            {"compute_dtype": torch.float32, "quant_storage": torch.bfloat16, "quant_type": "fp4"},
        ),
        (bnb.nn.Linear8bitLt, {"has_fp16_weights": False, "threshold": 6.0}),
    ],
)
def test_half_checkpoint_assigned_on_meta(cls, kwargs):
    """A float16 checkpoint assigned to a layer built on meta keeps the layer's settings (storage
    dtype, requires_grad) and gives the output of the layer loaded the usual way."""
    torch.manual_seed(0)
    sd = {k: v.to(torch.float16) for k, v in torch.nn.Linear(64, 32).state_dict().items()}
    ref = cls(64, 32, **kwargs)
    ref.load_state_dict(sd)
    ref = ref.to("cpu")
    with torch.device("meta"):
        m = cls(64, 32, **kwargs)
    m.load_state_dict(sd, assign=True)
    m = m.to("cpu")
    assert type(m.weight) is type(ref.weight)
    assert m.weight.dtype == ref.weight.dtype
    assert m.weight.requires_grad == ref.weight.requires_grad
    x = torch.randn(3, 64)
    if cls is bnb.nn.Linear8bitLt:
        x = x.half()
    assert torch.equal(m(x), ref(x))
