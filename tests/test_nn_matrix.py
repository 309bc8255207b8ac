"""The public nn layers over a dtype and shape matrix: Linear4bit (quant type, nesting, storage,
compute dtype), Linear8bitLt (fp16 weights, threshold, train/eval) and the embeddings, with inputs
of another dtype than the compute dtype or the bias, in_features off the block size, 1-D to 4-D,
empty and non-contiguous inputs, decode and prefill batches; gradients; state-dict round trips;
dtype switches of a built layer; the release fixtures fed in other input dtypes; torch.compile;
and layers used under ``torch.inference_mode`` before training.

Values are checked against a dense ``torch.nn.functional.linear`` on the dequantized weight in the
layer's compute dtype (spec §6.2 step 4, §6.4), within that dtype's rounding.
"""

from __future__ import annotations

import io
import itertools
import logging

import pytest
import torch

import bitsandbytes as bnb
import bitsandbytes.functional as F
from conftest import DATA, load_fixture

TOL = {torch.float32: 1e-4, torch.float16: 4e-3, torch.bfloat16: 3e-2}
XDTYPES = [torch.float32, torch.float16, torch.bfloat16]
STORAGES = [torch.uint8, torch.bfloat16, torch.float16, torch.float32]
COMPUTE = [None, torch.float16, torch.bfloat16, torch.float32]


@pytest.fixture(autouse=True)
def _quiet():
    """The f16-input-with-f32-compute advice is logged on every first call; not under test here."""
    logger = logging.getLogger("bitsandbytes.nn.modules")
    level = logger.level
    logger.setLevel(logging.ERROR)
    yield
    logger.setLevel(level)


def _shapes(k: int) -> list[tuple[int, ...]]:
    return [(k,), (1, k), (7, k), (2, 3, k), (2, 2, 3, k), (0, k), (40, k)]


def _fills(storage: torch.dtype, numel: int) -> bool:
    """Whether ``numel`` 4-bit codes fill whole elements of ``storage``."""
    return storage == torch.uint8 or numel % (2 * storage.itemsize) == 0


def _linear4bit(inf, outf, qt, nested, storage, compute, bias_dtype=torch.float32):
    torch.manual_seed(0)
    m = bnb.nn.Linear4bit(
        inf,
        outf,
        bias=bias_dtype is not None,
        compute_dtype=compute,
        compress_statistics=nested,
        quant_type=qt,
        quant_storage=storage,
    )
    if bias_dtype is not None:
        torch.nn.init.normal_(m.bias)
        m.bias.data = m.bias.data.to(bias_dtype)
    return m.to("cpu")


def _dense4(m: bnb.nn.Linear4bit, x: torch.Tensor) -> torch.Tensor:
    """The layer's product with torch ops: dequantized weight, compute dtype, input dtype out."""
    cd = m.compute_dtype or x.dtype
    w = F.dequantize_4bit(m.weight, m.weight.quant_state).to(cd)
    b = None if m.bias is None else m.bias.to(cd)
    return torch.nn.functional.linear(x.to(cd), w, b).to(x.dtype)


def _close(a: torch.Tensor, b: torch.Tensor, dtype: torch.dtype) -> bool:
    return torch.allclose(a.float(), b.float(), rtol=2 * TOL[dtype], atol=2 * TOL[dtype])


# ---------------------------------------------------------------------------------------------
# Linear4bit: forward over the whole dtype x shape matrix


@pytest.mark.parametrize(
    "qt,nested,storage,compute", list(itertools.product(["nf4", "fp4"], [True, False], STORAGES, COMPUTE))
)
def test_linear4bit_forward_matrix(qt, nested, storage, compute):
    for (inf, outf), xdt, bdt in itertools.product([(100, 3), (33, 1)], XDTYPES, [None, torch.float32, torch.bfloat16]):
        if not _fills(storage, inf * outf):
            with pytest.raises(ValueError, match="quant_storage"):
                _linear4bit(inf, outf, qt, nested, storage, compute, bdt)
            continue
        m = _linear4bit(inf, outf, qt, nested, storage, compute, bdt)
        for shape in _shapes(inf):
            x = torch.randn(*shape).to(xdt)
            y = m(x)
            assert y.dtype == xdt and y.shape == (*shape[:-1], outf)
            assert _close(y, _dense4(m, x), max(m.compute_dtype or xdt, xdt, key=lambda d: TOL[d]))
        # non-contiguous inputs: the contiguous input's values (bits on the kernels; torch's
        # reference GEMM, BNB_PLATFORMS=none, may round a stride or batch size differently)
        tol = max(m.compute_dtype or xdt, xdt, key=lambda d: TOL[d])
        xt = torch.randn(inf, 6).to(xdt).t()
        assert _close(m(xt), m(xt.contiguous()), tol)
        xs = torch.randn(5, 2 * inf).to(xdt)[:, ::2]
        assert _close(m(xs), m(xs.contiguous()), tol)


@pytest.mark.parametrize(
    "qt,nested,storage,compute",
    list(itertools.product(["nf4", "fp4"], [True, False], [torch.uint8, torch.bfloat16], COMPUTE)),
)
def test_linear4bit_backward_matrix(qt, nested, storage, compute):
    m = _linear4bit(100, 4, qt, nested, storage, compute)
    m.bias.requires_grad_(True)
    for xdt, shape in itertools.product(XDTYPES, [(100,), (3, 100), (2, 5, 100), (0, 100), (40, 100)]):
        x = torch.randn(*shape).to(xdt).requires_grad_(True)
        m.bias.grad = None
        y = m(x)
        g = torch.randn_like(y)
        y.backward(g)
        cd = m.compute_dtype or xdt
        w = F.dequantize_4bit(m.weight, m.weight.quant_state).to(cd)
        x2 = x.detach().clone().requires_grad_(True)
        b2 = m.bias.detach().clone().requires_grad_(True)
        torch.nn.functional.linear(x2.to(cd), w, b2.to(cd)).to(xdt).backward(g)
        tol = max(cd, xdt, key=lambda d: TOL[d])
        assert x.grad.dtype == xdt and _close(x.grad, x2.grad, tol)
        assert m.bias.grad.shape == (4,) and _close(m.bias.grad, b2.grad, tol)


@pytest.mark.parametrize(
    "qt,nested,storage,compute",
    list(itertools.product(["nf4", "fp4"], [True, False], STORAGES, [None, torch.float16, torch.bfloat16])),
)
def test_linear4bit_state_dict_round_trip_is_bit_exact(qt, nested, storage, compute):
    for inf, outf in ((100, 3), (33, 3)):
        if not _fills(storage, inf * outf):
            continue
        for xdt in XDTYPES:  # (a fresh layer per input dtype: with compute None the first call picks it)
            m = _linear4bit(inf, outf, qt, nested, storage, compute)
            x = torch.randn(4, inf).to(xdt)
            y = m(x)
            buf = io.BytesIO()
            torch.save(m.state_dict(), buf)
            buf.seek(0)
            sd = torch.load(buf)
            kw = dict(compute_dtype=compute, compress_statistics=nested, quant_type=qt, quant_storage=storage)
            fresh = bnb.nn.Linear4bit(inf, outf, **kw)
            fresh.load_state_dict(sd)
            assert torch.equal(fresh(x), y)
            with torch.device("meta"):
                empty = bnb.nn.Linear4bit(inf, outf, **kw)
            empty.load_state_dict(sd, assign=True)
            assert torch.equal(empty(x), y)


CONVERSIONS = {
    "half": lambda m: m.half(),
    "bfloat16": lambda m: m.bfloat16(),
    "float": lambda m: m.float(),
    "to_f16": lambda m: m.to(torch.float16),
    "to_cpu_bf16": lambda m: m.to("cpu", torch.bfloat16),
}


@pytest.mark.parametrize("storage", STORAGES)
@pytest.mark.parametrize("compute", [None, torch.float16, torch.bfloat16])
def test_linear4bit_dtype_switch_keeps_the_codes(storage, compute):
    """.half()/.bfloat16()/.float()/.to(dtype) of a quantized layer convert the bias, never the
    packed codes (also when they are stored in a float dtype); the outputs follow the new bias."""
    for name, conv in CONVERSIONS.items():
        m = _linear4bit(100, 4, "nf4", True, storage, compute)
        w0 = F.dequantize_4bit(m.weight, m.weight.quant_state).clone()
        m(torch.randn(2, 100, dtype=torch.bfloat16))
        conv(m)
        assert m.weight.dtype == storage, name
        assert torch.equal(F.dequantize_4bit(m.weight, m.weight.quant_state), w0), name
        for xdt in XDTYPES:
            x = torch.randn(3, 100).to(xdt)
            y = m(x)
            assert y.dtype == xdt and _close(y, _dense4(m, x), max(m.compute_dtype or xdt, xdt, key=lambda d: TOL[d]))


@pytest.mark.parametrize("compute", [torch.float16, torch.bfloat16, torch.float32])
def test_linear4bit_decode_runner_across_input_dtypes(compute):
    """Decode (one row) and prefill calls in mixed input dtypes, as a served model alternates them:
    each equals a fresh layer's answer for that input (the kept runner never serves another dtype)."""
    m = _linear4bit(100, 3, "nf4", True, torch.uint8, compute)
    x = torch.randn(64, 100)
    for xdt, rows in itertools.product(XDTYPES, [1, 1, 2, 1, 33, 300 // 64, 1]):
        fresh = _linear4bit(100, 3, "nf4", True, torch.uint8, compute)
        with torch.no_grad():
            assert torch.equal(m(x[:rows].to(xdt)), fresh(x[:rows].to(xdt)))


# ---------------------------------------------------------------------------------------------
# Linear8bitLt


def _linear8(inf, outf, fp16w, thr, training, bias_dtype=torch.float32):
    torch.manual_seed(1)
    m = bnb.nn.Linear8bitLt(inf, outf, bias=bias_dtype is not None, has_fp16_weights=fp16w, threshold=thr)
    if bias_dtype is not None:
        torch.nn.init.normal_(m.bias)
        m.bias.data = m.bias.data.to(bias_dtype)
    return m.to("cpu").train(training)


def _weight8(m: bnb.nn.Linear8bitLt) -> torch.Tensor:
    if m.state.has_fp16_weights:
        return m.weight.data.float()
    cb = m.state.CB if m.state.CB is not None else m.weight.CB
    scb = m.state.SCB if m.state.SCB is not None else m.weight.SCB
    return cb.float() * scb[:, None] / 127


@pytest.mark.parametrize("fp16w,thr,training", list(itertools.product([False, True], [0.0, 6.0], [True, False])))
def test_linear8bitlt_forward_backward_matrix(fp16w, thr, training):
    for (inf, outf), bdt, xdt in itertools.product([(100, 3), (65, 1)], [None, torch.bfloat16], XDTYPES):
        m = _linear8(inf, outf, fp16w, thr, training, bdt)
        for shape in _shapes(inf):
            x = torch.randn(*shape).to(xdt)
            if thr and x.numel():
                x.view(-1, inf)[:, 5] = 8.0  # an outlier column
            y = m(x)
            assert y.dtype == xdt and y.shape == (*shape[:-1], outf)
            ref = torch.nn.functional.linear(x.float(), _weight8(m), None if m.bias is None else m.bias.float())
            # the float path (CPU training on the int8 weight) within the input dtype's rounding;
            # int8 inputs, or a float weight quantized on the fly, within 5 %
            tol = (TOL[xdt] if training and not fp16w else 0.05) * max(
                1.0, ref.abs().max().item() if ref.numel() else 0.0
            )
            assert y.numel() == 0 or (y.float() - ref).abs().max().item() <= tol
        xt = torch.randn(inf, 6).to(xdt).t()
        assert _close(m(xt), m(xt.contiguous()), xdt)
        x = torch.randn(4, inf).to(xdt).requires_grad_(True)
        if m.bias is not None:
            m.bias.requires_grad_(True)
        y = m(x)
        g = torch.randn_like(y)
        y.backward(g)
        gx = g.float() @ _weight8(m)
        assert x.grad.dtype == xdt and (x.grad.float() - gx).abs().max() <= 0.05 * max(1.0, gx.abs().max())
        if m.bias is not None:
            gb = g.float().sum(0)
            assert (m.bias.grad.float() - gb).abs().max() <= 0.05 * max(1.0, gb.abs().max())


@pytest.mark.parametrize("fp16w,thr", list(itertools.product([False, True], [0.0, 6.0])))
@pytest.mark.parametrize("xdt", XDTYPES)
def test_linear8bitlt_mode_switches_match_a_fresh_layer(fp16w, thr, xdt):
    """train()/eval() between calls, a state-dict round trip and dtype switches: outputs equal a
    freshly built layer in the same mode with the same history."""
    x = torch.randn(5, 100)
    x[:, 7] = 9.0
    x = x.to(xdt)
    m = _linear8(100, 3, fp16w, thr, True)
    for mode in (True, False, True, False):
        m.train(mode)
        with torch.no_grad():
            assert torch.equal(m(x), _linear8(100, 3, fp16w, thr, mode)(x)), mode
    buf = io.BytesIO()
    torch.save(m.state_dict(), buf)
    buf.seek(0)
    fresh = _linear8(100, 3, fp16w, thr, m.training)
    fresh.load_state_dict(torch.load(buf))
    with torch.no_grad():
        assert torch.equal(fresh(x), m(x))
    for name, conv in CONVERSIONS.items():
        a, b = _linear8(100, 3, fp16w, thr, False), _linear8(100, 3, fp16w, thr, False)
        with torch.no_grad():
            a(x)
            b(x)
            conv(a)
            conv(b)
            ya = a(x)
        assert ya.dtype == xdt and torch.equal(ya, b(x)), name
        assert a.weight.dtype == (torch.int8 if not fp16w else a.weight.dtype)


# ---------------------------------------------------------------------------------------------
# Embeddings

INDICES = [
    torch.tensor(3),
    torch.tensor([1, 2, 3]),
    torch.randint(0, 50, (4, 7), generator=torch.Generator().manual_seed(0)),
    torch.randint(0, 50, (2, 3, 4), generator=torch.Generator().manual_seed(1)),
    torch.zeros(0, dtype=torch.long),
    torch.randint(0, 50, (7, 4), generator=torch.Generator().manual_seed(2)).t(),
    torch.tensor([1, 2], dtype=torch.int32),
]


@pytest.mark.parametrize("cls", ["EmbeddingNF4", "EmbeddingFP4", "Embedding8bit"])
@pytest.mark.parametrize("dim", [64, 100, 33])
@pytest.mark.parametrize("dtype", [None, torch.float16, torch.bfloat16])
def test_quantized_embeddings_matrix(cls, dim, dtype):
    torch.manual_seed(0)
    emb = getattr(bnb.nn, cls)(50, dim, dtype=dtype).to("cpu")
    if cls == "Embedding8bit":
        table = emb.weight.CB.float() * emb.weight.SCB[:, None] / 127
    else:
        table = F.dequantize_4bit(emb.weight, emb.weight.quant_state)
    want_dtype = dtype or torch.float32
    for idx in INDICES:
        y = emb(idx)
        assert y.dtype == want_dtype and y.shape == (*idx.shape, dim)
        ref = torch.nn.functional.embedding(idx, table).to(want_dtype)
        assert torch.allclose(y.float(), ref.float(), rtol=1e-2, atol=1e-2)
    emb.half()  # the output dtype stays the module's (fixed when built), the codes unchanged
    assert emb(INDICES[2]).dtype == want_dtype


@pytest.mark.parametrize("dtype", [None, torch.float16, torch.bfloat16])
def test_stable_embedding_matrix(dtype):
    torch.manual_seed(0)
    emb = bnb.nn.StableEmbedding(50, 33, dtype=dtype)
    for idx in INDICES:
        y = emb(idx)
        rows = torch.nn.functional.embedding(idx, emb.weight).float()
        ref = torch.nn.functional.layer_norm(rows, (33,), emb.norm.weight.float(), emb.norm.bias.float())
        assert y.dtype == (dtype or torch.float32) and torch.allclose(y.float(), ref, atol=2e-2)


# ---------------------------------------------------------------------------------------------
# Release fixtures fed in other input dtypes

LINEAR4BIT = sorted(
    p.name[: -len(".safetensors")] for p in DATA.glob("linear4bit_*.safetensors") if ".io." not in p.name
)


@pytest.mark.parametrize("name", LINEAR4BIT)
def test_linear4bit_fixture_outputs_for_other_input_dtypes(name):
    """A fixture's inputs in another dtype that holds them exactly are cast to the compute dtype
    and give the fixture's outputs, returned in the input dtype; also in eval mode without grad
    and batched 3-D."""
    _, qt, nest, storage, compute = name.split("_")
    cdt = getattr(torch, compute)
    kw = dict(compress_statistics=nest == "nested", quant_type=qt, quant_storage=getattr(torch, storage))
    m = bnb.nn.Linear4bit(128, 64, True, cdt, **kw)
    m.load_state_dict(load_fixture(f"{name}.safetensors"))
    io_ = load_fixture(f"{name}.io.safetensors")
    tol = {torch.float32: 1e-5, torch.bfloat16: 1.6e-2, torch.float16: 2e-3}
    for xk, yk in (("x3", "y3"), ("x1", "y1")):
        x, want = io_[xk], io_[yk]
        for xdt in XDTYPES:
            xd = x.to(xdt)
            if not torch.equal(xd.to(cdt), x):
                continue
            for training in (True, False):
                m.train(training)
                with torch.set_grad_enabled(training):
                    y = m(xd)
                    y3 = m(xd.unsqueeze(0).expand(2, -1, -1))
                t = tol[max(cdt, xdt, key=lambda d: tol[d])]
                assert y.dtype == xdt and torch.allclose(y3[1].float(), y.float(), rtol=t, atol=t)
                assert torch.allclose(y.float(), want.to(xdt).float(), rtol=t, atol=t), (xk, xdt, training)


@pytest.mark.parametrize("thr", [0, 6])
def test_linear8bitlt_fixture_reloads_in_every_dtype(thr):
    """The quantized fixture loaded by load_state_dict, and rebuilt as transformers does, gives
    y_<dtype> for every x_<dtype> of the fixture."""
    ref = load_fixture(f"linear8bitlt_thr{thr}.safetensors")
    io_ = load_fixture(f"linear8bitlt_thr{thr}.io.safetensors")
    loaded = bnb.nn.Linear8bitLt(128, 64, has_fp16_weights=False, threshold=float(thr)).to("cpu")
    loaded.load_state_dict(dict(ref))
    old = bnb.nn.Linear8bitLt(128, 64, has_fp16_weights=False, threshold=float(thr), device="meta")
    rebuilt = bnb.nn.Linear8bitLt(128, 64, has_fp16_weights=False, threshold=float(thr))
    rebuilt.weight = bnb.nn.Int8Params(
        ref["weight"], requires_grad=False, **(old.weight.__dict__ | {"SCB": ref["SCB"]})
    ).to("cpu")
    rebuilt.bias = torch.nn.Parameter(ref["bias"].clone())
    tol = {torch.float32: 1e-5, torch.bfloat16: 1.6e-2, torch.float16: 2e-3}
    for m in (loaded, rebuilt):
        for dt in ("fp32", "fp16", "bf16"):
            x, want = io_[f"x_{dt}"], io_[f"y_{dt}"]
            y = m(x)
            assert y.dtype == want.dtype
            assert torch.allclose(y.float(), want.float(), rtol=tol[y.dtype], atol=tol[y.dtype]), dt


# ---------------------------------------------------------------------------------------------
# torch.compile with mixed dtypes and odd shapes


@pytest.mark.parametrize(
    "qt,nested,storage,compute,xdt,shape",
    [
        ("nf4", True, torch.bfloat16, torch.bfloat16, torch.float16, (3, 100)),
        ("fp4", False, torch.uint8, None, torch.float32, (2, 3, 100)),
        ("fp4", True, torch.uint8, torch.float32, torch.bfloat16, (2, 2, 5, 100)),
    ],
)
def test_linear4bit_compiled_mixed_dtypes(qt, nested, storage, compute, xdt, shape):
    torch._dynamo.reset()
    m = _linear4bit(100, 3, qt, nested, storage, compute)
    x = torch.randn(*shape).to(xdt)
    eager = m(x)
    compiled = torch.compile(m, fullgraph=True, backend="aot_eager")
    with torch.no_grad():
        assert torch.equal(compiled(x), eager)
    m.bias.requires_grad_(True)
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    m(x1).float().sum().backward()
    gb1, m.bias.grad = m.bias.grad.clone(), None
    compiled(x2).float().sum().backward()
    assert torch.equal(x1.grad, x2.grad) and torch.equal(gb1, m.bias.grad)
    torch._dynamo.reset()


# ---------------------------------------------------------------------------------------------
# torch.inference_mode before training (defects fixed with this file)


def _layers_for_inference_mode() -> list[tuple[str, torch.nn.Module, torch.dtype]]:
    torch.manual_seed(0)
    return [
        ("Linear4bit bf16", bnb.nn.Linear4bit(100, 3, compute_dtype=torch.bfloat16).to("cpu"), torch.float32),
        ("Linear4bit None", bnb.nn.Linear4bit(100, 3, quant_type="nf4").to("cpu"), torch.bfloat16),
        ("Linear8bitLt", bnb.nn.Linear8bitLt(100, 3, has_fp16_weights=False).to("cpu"), torch.float16),
        ("Linear8bitLt eval", bnb.nn.Linear8bitLt(100, 3, has_fp16_weights=False).to("cpu").eval(), torch.float16),
        ("Linear8bitLt fp16w", bnb.nn.Linear8bitLt(100, 3, has_fp16_weights=True).to("cpu"), torch.bfloat16),
    ]


@pytest.mark.parametrize("index", range(5))
def test_first_call_under_inference_mode_keeps_the_bias_trainable(index):
    """A first call under torch.inference_mode (an evaluation before training) casts the bias to the
    compute dtype in place, as the release does; the parameter must stay a normal tensor: as an
    inference tensor autograd silently gave it no gradient afterwards."""
    name, m, xdt = _layers_for_inference_mode()[index]
    with torch.inference_mode():
        m(torch.randn(2, 100).to(xdt))
    assert not m.bias.is_inference() and m.bias.requires_grad, name
    x = torch.randn(4, 100).to(xdt).requires_grad_(True)
    y = m(x)
    g = torch.randn_like(y)
    y.backward(g)
    assert m.bias.grad is not None, name
    assert torch.allclose(m.bias.grad.float(), g.float().sum(0), rtol=1e-2, atol=1e-2), name
    assert x.grad is not None and x.grad.dtype == xdt


@pytest.mark.parametrize("nested", [True, False])
def test_linear4bit_quantized_under_inference_mode(nested):
    """A layer quantized and called under torch.inference_mode (a model loaded for serving):
    repeated calls do not crash on the inference tensors' missing version counter, and, as with
    LLM.int8() and the release (which kept the packed weight on the autograd context), the layer
    still gives the input's gradient outside inference mode."""
    torch.manual_seed(0)
    with torch.inference_mode():
        layer = bnb.nn.Linear4bit(100, 8, compute_dtype=torch.float32, compress_statistics=nested).to("cpu")
    torch.manual_seed(0)
    twin = bnb.nn.Linear4bit(100, 8, compute_dtype=torch.float32, compress_statistics=nested).to("cpu")
    x = torch.randn(3, 100)
    with torch.inference_mode():
        for rows in (1, 1, 3, 1):
            assert torch.equal(layer(x[:rows]), twin(x[:rows]))
    grads = []
    for m in (layer, twin):
        xg = x.clone().requires_grad_(True)
        m(xg).square().sum().backward()
        grads.append(xg.grad)
    assert torch.equal(grads[0], grads[1])
    empty = torch.zeros(0, 100, requires_grad=True)
    layer(empty).sum().backward()
    assert empty.grad.shape == (0, 100)
