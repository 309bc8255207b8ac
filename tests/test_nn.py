"""bitsandbytes.nn / autograd: fixture state dicts and outputs, downstream contracts, bad input, memory."""

from __future__ import annotations

import copy
import io
import pickle

import pytest
import torch

import bitsandbytes as bnb
import bitsandbytes.functional as F
from bitsandbytes.nn.modules import fix_4bit_weight_quant_state_from_module, maybe_rearrange_weight
from conftest import DATA, load_fixture

LINEAR4BIT = sorted(
    p.name[: -len(".safetensors")] for p in DATA.glob("linear4bit_*.safetensors") if ".io." not in p.name
)
TOL = {torch.float32: 1e-5, torch.bfloat16: 1.6e-2, torch.float16: 2e-3}


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bit-exact equality (packed 4-bit data in a float storage may hold NaN patterns)."""
    return (
        a.dtype == b.dtype
        and a.shape == b.shape
        and torch.equal(a.contiguous().view(torch.uint8), b.contiguous().view(torch.uint8))
    )


def _linear4bit_from_case(name: str, device: str | None = None) -> tuple[bnb.nn.Linear4bit, dict]:
    _, qt, nest, storage, compute = name.split("_")
    m = bnb.nn.Linear4bit(
        128,
        64,
        True,
        getattr(torch, compute),
        compress_statistics=nest == "nested",
        quant_type=qt,
        quant_storage=getattr(torch, storage),
        device=device,
    )
    return m, load_fixture(f"{name}.io.safetensors")


def test_linear4bit_fixture_names():
    assert len(LINEAR4BIT) == 10


@pytest.mark.parametrize("name", LINEAR4BIT)
def test_linear4bit_state_dict_and_outputs_match_fixture(name):
    m, io_ = _linear4bit_from_case(name)
    m.weight.data = io_["float_weight"].clone()
    m.bias.data = io_["float_bias"].clone()
    m = m.to("cpu")
    ours = m.state_dict()
    ref = load_fixture(f"{name}.safetensors")
    assert set(ours) == set(ref)
    expected_order = ["weight", "bias", "weight.absmax", "weight.quant_map"]
    if "nested" in name:
        expected_order += ["weight.nested_absmax", "weight.nested_quant_map"]
    expected_order.append(f"weight.quant_state.bitsandbytes__{name.split('_')[1]}")
    assert list(ours) == expected_order
    for k, v in ref.items():
        assert ours[k].dtype == v.dtype and ours[k].shape == v.shape, k
        assert _same_bits(ours[k], v), k
    blob_key = expected_order[-1]
    assert bytes(ours[blob_key].tolist()) == bytes(ref[blob_key].tolist())  # the JSON text, byte for byte
    for x, y in (("x3", "y3"), ("x1", "y1")):
        out = m(io_[x])
        assert out.dtype == io_[x].dtype and out.shape == io_[y].shape
        assert torch.allclose(out.float(), io_[y].float(), rtol=TOL[out.dtype], atol=TOL[out.dtype])


@pytest.mark.parametrize("name", LINEAR4BIT)
def test_linear4bit_fixture_reload(name):
    ref = load_fixture(f"{name}.safetensors")
    m, io_ = _linear4bit_from_case(name, device="meta")
    # transformers' way: from_prequantized with the weight.* keys stripped of the prefix
    w = bnb.nn.Params4bit.from_prequantized(
        ref["weight"], {k[7:]: v for k, v in ref.items() if k.startswith("weight.")}, device="cpu", module=m
    )
    m.weight = w
    m.bias = torch.nn.Parameter(ref["bias"])
    assert m.quant_state is w.quant_state and w.bnb_quantized and w.quant_storage == ref["weight"].dtype
    for x, y in (("x3", "y3"), ("x1", "y1")):
        out = m(io_[x])
        assert torch.allclose(out.float(), io_[y].float(), rtol=TOL[out.dtype], atol=TOL[out.dtype])
    # and through load_state_dict on a fresh module
    m2, _ = _linear4bit_from_case(name)
    m2.load_state_dict(ref)
    assert torch.equal(m2(io_["x3"]), m(io_["x3"]))
    again = m2.state_dict()
    for k, v in ref.items():
        if k == "bias":  # the forward cast the bias to the compute dtype in place, as the established release does
            v = v.to(m2.compute_dtype)
        assert _same_bits(again[k], v), k


def test_linear4bit_state_dict_errors():
    ref = load_fixture("linear4bit_nf4_plain_uint8_float32.safetensors")
    lacking = {k: v for k, v in ref.items() if "quant_state" not in k}
    m = bnb.nn.Linear4bit(128, 64, quant_type="nf4")
    with pytest.raises(ValueError, match="lacks 'weight.quant_state.bitsandbytes__nf4'"):
        m.load_state_dict(lacking)
    m_fp4 = bnb.nn.Linear4bit(128, 64, quant_type="fp4")
    with pytest.raises(ValueError, match="another quant type"):
        m_fp4.load_state_dict(ref)
    with pytest.raises(ValueError, match="found neither"):
        bnb.nn.Params4bit.from_prequantized(ref["weight"], {"absmax": ref["weight.absmax"]}, device="cpu")


def test_linear4bit_quantized_checkpoint_bias_follows_torch_rules():
    """A quantized checkpoint loaded into a fresh (or meta-built) layer: its bias is checked and
    copied as torch.nn.Linear's (unexpected key, size mismatch, dtype kept, missing key), and a
    meta-built layer ends with both tensors loaded."""
    src = bnb.nn.Linear4bit(64, 32, quant_type="nf4")
    torch.nn.init.normal_(src.bias)
    src = src.to("cpu")
    sd = src.state_dict()
    x = torch.randn(3, 64)
    with pytest.raises(RuntimeError, match='Unexpected key.*"bias"'):
        bnb.nn.Linear4bit(64, 32, bias=False, quant_type="nf4").load_state_dict(sd)
    with pytest.raises(RuntimeError, match="size mismatch for bias"):
        bnb.nn.Linear4bit(64, 32, quant_type="nf4").load_state_dict({**sd, "bias": torch.zeros(16)})
    with pytest.raises(RuntimeError, match='Missing key.*"bias"'):
        bnb.nn.Linear4bit(64, 32, quant_type="nf4").load_state_dict({k: v for k, v in sd.items() if k != "bias"})
    fresh = bnb.nn.Linear4bit(64, 32, quant_type="nf4")
    fresh.load_state_dict({**sd, "bias": sd["bias"].bfloat16()})
    assert fresh.bias.dtype == torch.float32 and torch.equal(fresh.bias, sd["bias"].bfloat16().float())
    for assign in (False, True):
        with torch.device("meta"):
            empty = bnb.nn.Linear4bit(64, 32, quant_type="nf4")
        empty.load_state_dict(sd, assign=assign)
        assert empty.weight.device.type == "cpu" and empty.bias.device.type == "cpu"
        assert torch.equal(empty(x), src(x))
    # Without assign a meta-built layer keeps its bias dtype and owns its bias (no alias of the
    # checkpoint's tensor); with assign=True it takes the checkpoint's, as torch does.
    half_bias = {**sd, "bias": sd["bias"].bfloat16()}
    for assign in (False, True):
        with torch.device("meta"):
            empty = bnb.nn.Linear4bit(64, 32, quant_type="nf4")
        empty.load_state_dict(half_bias, assign=assign)
        assert empty.bias.dtype == (torch.bfloat16 if assign else torch.float32)
        assert (empty.bias.data_ptr() == half_bias["bias"].data_ptr()) == assign


@pytest.mark.parametrize("storage", [torch.uint8, torch.bfloat16, torch.float16, torch.float32])
def test_linear4bit_module_float_casts_keep_the_packed_weight(storage):
    """Module.half() / .bfloat16() / .float() / .double() cast the bias and leave the packed bytes
    as they are in every quant_storage (a float storage was value-converted, corrupting them)."""
    m = bnb.nn.Linear4bit(64, 32, quant_type="nf4", quant_storage=storage, compute_dtype=torch.float32).to("cpu")
    packed = m.weight.data.view(torch.uint8).clone()
    x = torch.randn(3, 64)
    with torch.no_grad():
        want = m(x)
        for cast in ("half", "bfloat16", "double", "float"):
            getattr(m, cast)()
            assert isinstance(m.weight, bnb.nn.Params4bit) and m.weight.dtype == storage
            assert torch.equal(m.weight.data.view(torch.uint8), packed), cast
        assert m.bias.dtype == torch.float32
        torch.testing.assert_close(m(x), want, rtol=0, atol=1e-2)  # the bias went through bf16


def test_stable_embedding_device_and_dtype():
    """device and dtype reach nn.Embedding by keyword (positionally they were its _freeze)."""
    e = bnb.nn.StableEmbedding(10, 4, device="cpu")
    assert e.weight.requires_grad and e.weight.device.type == "cpu"
    e = bnb.nn.StableEmbedding(10, 4, dtype=torch.bfloat16)
    assert e.weight.dtype == torch.bfloat16 and e.weight.requires_grad
    assert e(torch.tensor([1, 2])).dtype == torch.bfloat16


def test_linear4bit_bad_input():
    m = bnb.nn.Linear4bit(64, 32, quant_type="nf4").to("cpu")
    with pytest.raises(ValueError, match="in_features=64"):
        m(torch.randn(2, 63))
    with pytest.raises(ValueError, match="quant_type"):
        bnb.nn.Linear4bit(64, 32, quant_type="int4")
    with pytest.raises(ValueError, match="blocksize"):
        bnb.nn.Params4bit(torch.randn(8, 8), blocksize=100, quant_type="nf4").to("cpu")
    unquantized = bnb.nn.Linear4bit(64, 32)
    with pytest.raises(AssertionError, match="not quantized"):
        unquantized(torch.randn(1, 64))
    with pytest.raises(ValueError, match="no kernels for device type 'ipu'"):
        m.weight.to("ipu")


PARAMS4BIT_KEYS = [
    "blocksize",
    "compress_statistics",
    "quant_type",
    "quant_state",
    "quant_storage",
    "bnb_quantized",
    "module",
]
"""A Params4bit's ``__dict__`` keys, in order (peft and accelerate rebuild parameters from it)."""


def test_params4bit_contracts():
    lin = torch.nn.Linear(128, 48)
    p = bnb.nn.Params4bit(lin.weight.data, requires_grad=False, quant_type="nf4", _is_hf_initialized=True)
    assert list(p.__dict__) == PARAMS4BIT_KEYS
    q = p.to("cpu")
    assert q is p and p.bnb_quantized and p.dtype == torch.uint8 and p.shape == (3072, 1)
    assert p.quant_state.shape == (48, 128) and p.quant_state.dtype == torch.float32
    data_before = p.data.clone()
    state_before = p.quant_state
    assert p.to("cpu").quant_state is state_before  # already quantized: no re-quantization
    assert torch.equal(p._quantize(torch.device("cpu")).data, data_before)
    # transformers rebuilds params from the __dict__ of the old one
    rebuilt = bnb.nn.Params4bit(p.data, requires_grad=False, **p.__dict__).to("cpu")
    assert rebuilt.quant_state is state_before and torch.equal(rebuilt.data, data_before)
    assert p.absmax.dtype == torch.uint8 and p.nested_blocksize == 256 and p.quant_map.numel() == 16
    deep = copy.deepcopy(p)
    assert deep.quant_state == p.quant_state and deep.quant_state is not p.quant_state
    assert torch.equal(deep.data, p.data) and deep.data_ptr() != p.data_ptr()
    shallow = copy.copy(p)
    assert shallow.quant_state is p.quant_state
    buf = io.BytesIO()
    pickle.dump(p, buf)
    loaded = pickle.loads(buf.getvalue())
    assert isinstance(loaded, bnb.nn.Params4bit) and loaded.quant_state == p.quant_state
    parts = torch.chunk(p, 2)
    assert all(isinstance(c, bnb.nn.Params4bit) and c.quant_state is p.quant_state for c in parts)
    with pytest.raises(AttributeError):
        _ = bnb.nn.Params4bit(torch.randn(4)).absmax


def test_class_names_and_dict_contracts():
    for name in ("Params4bit", "Int8Params", "Linear4bit", "Linear8bitLt"):
        assert getattr(bnb.nn, name).__name__ == name
    ip = bnb.nn.Int8Params(torch.randn(4, 4), requires_grad=False, has_fp16_weights=False, foo=1)
    assert list(ip.__dict__) == ["CB", "SCB", "has_fp16_weights"]
    lin4 = bnb.nn.Linear4bit(16, 8, True, torch.bfloat16, compress_statistics=False, quant_type="nf4")
    assert lin4.compute_dtype == torch.bfloat16 and lin4.compute_type_is_set and lin4.quant_state is None
    lin8 = bnb.nn.Linear8bitLt(16, 8, has_fp16_weights=False, threshold=6.0)
    assert lin8.state.use_pool and not hasattr(lin8, "SCB") and not hasattr(lin8, "CB")
    with torch.device("meta"):
        meta4 = bnb.nn.Linear4bit(16, 8, quant_type="nf4")
        meta8 = bnb.nn.Linear8bitLt(16, 8, has_fp16_weights=False)
    assert meta4.weight.is_meta and meta8.weight.is_meta
    meta4.weight.data = meta4.weight.data.to(torch.uint8)
    assert list(meta4.weight.__dict__)[0] == "blocksize"
    assert {"NF4": bnb.nn.LinearNF4(16, 8).weight.quant_type, "FP4": bnb.nn.LinearFP4(16, 8).weight.quant_type} == {
        "NF4": "nf4",
        "FP4": "fp4",
    }


@pytest.mark.parametrize("thr", [0, 6])
def test_linear8bitlt_matches_fixture(thr):
    ref = load_fixture(f"linear8bitlt_thr{thr}.safetensors")
    io_ = load_fixture(f"linear8bitlt_thr{thr}.io.safetensors")
    m = bnb.nn.Linear8bitLt(128, 64, has_fp16_weights=False, threshold=float(thr))
    m.weight.data = io_["float_weight"].clone()
    m.bias.data = io_["float_bias"].clone()
    m = m.to("cpu")
    sd = m.state_dict()
    assert list(sd) == ["weight", "bias", "SCB", "weight_format"]
    for k, v in ref.items():
        assert sd[k].dtype == v.dtype and torch.equal(sd[k], v), k
    assert torch.equal(sd["SCB"], io_["float_weight"].half().abs().amax(1).float())  # Appendix B.7
    for dt in ("fp32", "fp16", "bf16"):
        x = io_[f"x_{dt}"]
        y = m(x)
        assert y.dtype == x.dtype
        assert torch.allclose(y.float(), io_[f"y_{dt}"].float(), rtol=TOL[y.dtype], atol=TOL[y.dtype])
    # after a forward the scales live in state; saving still works, and so does loading
    assert m.weight.SCB is None and m.state.SCB is not None
    assert torch.equal(m.state_dict()["SCB"], ref["SCB"])
    m2 = bnb.nn.Linear8bitLt(128, 64, has_fp16_weights=False, threshold=float(thr))
    m2 = m2.to("cpu")
    m2.load_state_dict(dict(ref))
    assert torch.equal(m2.weight.SCB, ref["SCB"])
    assert torch.allclose(m2(io_["x_fp32"]), io_["y_fp32"], atol=1e-5)
    m.load_state_dict(dict(ref))  # also after a forward (the established release failed here)


def test_linear8bitlt_eval_int8_path_close_to_float():
    io_ = load_fixture("linear8bitlt_thr6.io.safetensors")
    m = bnb.nn.Linear8bitLt(128, 64, has_fp16_weights=False, threshold=6.0)
    m.weight.data = io_["float_weight"].clone()
    m.bias.data = io_["float_bias"].clone()
    m = m.to("cpu").eval()
    x = io_["x_fp16"]
    y = m(x)
    exact = torch.nn.functional.linear(x.float(), io_["float_weight"], io_["float_bias"])
    assert y.dtype == torch.float16
    assert (y.float() - exact).abs().max() < 0.05
    assert m.state.idx is not None and 7 in m.state.idx.tolist()


def test_linear8bitlt_errors():
    ref = load_fixture("linear8bitlt_thr0.safetensors")
    m = bnb.nn.Linear8bitLt(128, 64, has_fp16_weights=False)
    with pytest.raises(RuntimeError, match="non-quantized Linear8bitLt"):
        m.load_state_dict(dict(ref))
    bad = dict(ref)
    bad["weight_format"] = torch.tensor(1, dtype=torch.uint8)
    m = bnb.nn.Linear8bitLt(128, 64, has_fp16_weights=False).to("cpu")
    with pytest.raises(ValueError, match="Only 'row'"):
        m.load_state_dict(bad)
    with pytest.raises(ValueError, match="in_features=128"):
        m(torch.randn(2, 100))
    sd = {"x.weight": ref["weight"], "x.weight_format": 7}
    with pytest.raises(ValueError, match="weight format"):
        maybe_rearrange_weight(sd, "x.", {}, True, [], [], [])


def test_int8params_transformers_rebuild():
    ref = load_fixture("linear8bitlt_thr0.safetensors")
    old = bnb.nn.Linear8bitLt(128, 64, has_fp16_weights=False, device="meta").weight
    p = bnb.nn.Int8Params(ref["weight"], requires_grad=False, **(old.__dict__ | {"SCB": ref["SCB"]})).to("cpu")
    assert p.dtype == torch.int8 and torch.equal(p.CB, ref["weight"]) and torch.equal(p.SCB, ref["SCB"])
    fresh = bnb.nn.Int8Params(torch.randn(8, 16), requires_grad=False).to("cpu")
    assert fresh.dtype == torch.int8 and fresh.SCB.shape == (8,)
    assert torch.allclose(F.int8_vectorwise_dequant(fresh.CB, fresh.SCB), fresh.float() * fresh.SCB[:, None] / 127)


def test_matmul_4bit_backward():
    torch.manual_seed(0)
    W = torch.randn(32, 64)
    q, s = F.quantize_4bit(W, quant_type="nf4", compress_statistics=True)
    Wd = F.dequantize_4bit(q, s)
    x = torch.randn(3, 5, 64, requires_grad=True)
    b = torch.randn(32, requires_grad=True)
    y = bnb.matmul_4bit(x, q.t(), quant_state=s, bias=b)
    y.clone().pow(2).sum().backward()
    x2 = x.detach().clone().requires_grad_(True)
    b2 = b.detach().clone().requires_grad_(True)
    torch.nn.functional.linear(x2, Wd, b2).pow(2).sum().backward()
    assert torch.allclose(x.grad, x2.grad, atol=1e-4) and torch.allclose(b.grad, b2.grad, atol=1e-4)
    with pytest.raises(ValueError, match="quant_state"):
        bnb.matmul_4bit(x, q.t(), quant_state=None)
    empty = bnb.matmul_4bit(torch.empty(0, 64), q.t(), quant_state=s)
    assert empty.shape == (0, 32)


@pytest.mark.parametrize("training", [True, False])
def test_matmul_int8_backward(training):
    torch.manual_seed(0)
    W = torch.randn(16, 32)
    state = bnb.MatmulLtState()
    state.is_training = training
    state.has_fp16_weights = True
    Wp = W.clone().requires_grad_(True)
    x = torch.randn(4, 32, dtype=torch.float16 if not training else torch.float32, requires_grad=True)
    y = bnb.matmul(x, Wp.to(x.dtype) if not training else Wp, state=state)
    y.float().sum().backward()
    Wq = F.int8_vectorwise_dequant(state.CB, state.SCB)
    ref = x.detach().float() @ Wq.t()
    # training on CPU uses the dequantized weight exactly; inference also quantizes x to int8
    assert (y.float() - ref).abs().max() <= (1e-3 if training else 0.015) * ref.abs().max()
    assert torch.allclose(x.grad.float(), torch.ones(4, 16) @ Wq, atol=2e-2)
    assert Wp.grad is not None and torch.allclose(Wp.grad.float(), torch.ones(16, 4) @ x.detach().float(), atol=1e-2)


@pytest.mark.parametrize("threshold", [0.0, 3.0])
def test_matmul_int8_inference_path_matches_autograd_path(threshold):
    """Without gradients bnb.matmul skips autograd.Function; it must give the same bits, the same
    outlier columns in the state, and honour ``out=``."""
    torch.manual_seed(1)
    W = torch.randn(24, 64)
    x = torch.randn(2, 5, 64)
    x[..., 7] *= 10  # an outlier column
    b = torch.randn(24)

    def state():
        st = bnb.MatmulLtState()
        st.is_training, st.has_fp16_weights, st.threshold = False, False, threshold
        return st

    st_grad, st_inf = state(), state()
    xg = x.clone().requires_grad_(True)
    with_grad = bnb.matmul(xg, W, state=st_grad, bias=b)
    assert with_grad.requires_grad
    with torch.no_grad():
        out = torch.empty(2, 5, 24)
        inference = bnb.matmul(x, W, state=st_inf, bias=b, out=out)
    assert inference is out and not inference.requires_grad
    assert torch.equal(with_grad.detach(), inference)
    if threshold > 0:
        assert torch.equal(st_grad.idx, st_inf.idx) and 7 in st_inf.idx.tolist()


def test_matmul_lt_state():
    st = bnb.MatmulLtState()
    assert st.threshold == 0.0 and st.has_fp16_weights and st.CB is None
    with pytest.warns(FutureWarning):
        assert st.CxB is None
    with pytest.raises(AttributeError):
        _ = st.nope
    st.CB = torch.zeros(1)
    st.reset_grads()
    assert st.CB is None


def test_peft_style_forward_and_backward_through_linear4bit():
    torch.manual_seed(0)
    m = bnb.nn.Linear4bit(64, 32, True, torch.float32, quant_type="nf4").to("cpu")
    x = torch.randn(2, 7, 64, dtype=torch.bfloat16, requires_grad=True)
    out = m(x).clone()
    assert out.dtype == torch.bfloat16 and out.shape == (2, 7, 32)
    out.float().sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    deq = F.dequantize_4bit(m.weight.data, m.weight.quant_state)
    assert deq.shape == (32, 64) and deq.dtype == torch.float32
    # FSDP-like: the weight loses its state and gets it back from the module
    m.weight.quant_state = None
    fix_4bit_weight_quant_state_from_module(m)
    assert m.weight.quant_state is m.quant_state


def _model_bytes(model: torch.nn.Module) -> int:
    total = 0
    for mod in model.modules():
        for p in mod.parameters(recurse=False):
            total += p.numel() * p.element_size()
        qs = getattr(getattr(mod, "weight", None), "quant_state", None)
        if qs is not None:
            for v in qs.as_dict(packed=True).values():
                total += v.numel() * v.element_size()
    return total


def test_memory_per_parameter():
    torch.manual_seed(0)
    dims = [(1024, 1024), (1024, 4096), (4096, 1024)]
    n_params = sum(i * o for i, o in dims)
    m4 = torch.nn.Sequential(*[bnb.nn.Linear4bit(i, o, bias=False, quant_type="nf4") for i, o in dims]).to("cpu")
    m8 = torch.nn.Sequential(*[bnb.nn.Linear8bitLt(i, o, bias=False, has_fp16_weights=False) for i, o in dims])
    m8 = m8.to("cpu")
    b4 = _model_bytes(m4) / n_params
    b8 = _model_bytes(m8) / n_params + sum(m.weight.SCB.numel() * 4 for m in m8) / n_params
    print(f"4-bit: {b4:.4f} bytes/param, 8-bit: {b8:.4f} bytes/param")
    assert b4 <= 0.56
    assert b8 <= 1.02


def test_embeddings():
    torch.manual_seed(0)
    e = bnb.nn.Embedding(10, 8, padding_idx=0)
    assert torch.equal(e.weight[0], torch.zeros(8))
    se = bnb.nn.StableEmbedding(10, 8)
    out = se(torch.tensor([[1, 2]]))
    assert out.shape == (1, 2, 8) and torch.allclose(out.mean(-1), torch.zeros(1, 2), atol=1e-5)
    w = torch.randn(10, 64)
    e8 = bnb.nn.Embedding8bit(10, 64)
    e8.weight.data = w.clone()
    e8 = e8.to("cpu")
    got = e8(torch.tensor([3, 5]))
    assert torch.allclose(got, w[[3, 5]], atol=w.abs().max().item() / 127)
    with pytest.raises(NotImplementedError):
        e8.state_dict()
    for cls in (bnb.nn.EmbeddingNF4, bnb.nn.EmbeddingFP4):
        e4 = cls(10, 64)
        e4.weight.data = w.clone()
        e4 = e4.to("cpu")
        got = e4(torch.tensor([[3, 5], [0, 9]]))
        full = F.dequantize_4bit(e4.weight.data, e4.weight.quant_state)
        assert got.shape == (2, 2, 64) and torch.equal(got[0, 0], full[3]) and torch.equal(got[1, 1], full[9])
        with pytest.raises(NotImplementedError):
            e4.state_dict()
    odd = bnb.nn.EmbeddingNF4(4, 96)  # warns on the bitsandbytes.nn.modules logger (test_compat_warnings)
    odd.weight.data = torch.randn(4, 96)
    odd = odd.to("cpu")
    assert odd(torch.tensor([1])).shape == (1, 96)


def test_parametrize_roundtrip():
    from bitsandbytes.nn.parametrize import replace_parameter_4bit, replace_parameter_4bit_prequantized

    lin = torch.nn.Linear(64, 32)
    w = lin.weight.detach().clone()
    replace_parameter_4bit(lin, "weight", quant_type="nf4")
    q, s = F.quantize_4bit(w, quant_type="nf4")
    assert torch.equal(lin.weight, F.dequantize_4bit(q, s))
    sd = lin.state_dict()
    assert "weight.quant_state.bitsandbytes__nf4" in sd and sd["weight"].dtype == torch.uint8
    lin2 = torch.nn.Linear(64, 32)
    lin2.weight = torch.nn.Parameter(sd["weight"], requires_grad=False)
    replace_parameter_4bit_prequantized(
        lin2, "weight", {k[7:]: v for k, v in sd.items() if k.startswith("weight.")}, "cpu"
    )
    assert torch.equal(lin2.weight, lin.weight)
    with pytest.raises(AttributeError):
        replace_parameter_4bit(lin, "nope")


def test_utils():
    from bitsandbytes import utils

    assert utils.LINEAR_8BIT_WEIGHTS_FORMAT_MAPPING["row"] == 0
    assert utils.INVERSE_LINEAR_8BIT_WEIGHTS_FORMAT_MAPPING[3] == "col_ampere"
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 4))
    model = utils.replace_linear(model, lambda i, o, b: bnb.nn.Linear8bitLt(i, o, b, has_fp16_weights=False))
    assert isinstance(model[0], bnb.nn.Linear8bitLt) and isinstance(model[2], bnb.nn.Linear8bitLt)
    w = torch.randn(64, 32)
    w[:, 5] *= 50
    assert 5 in utils.find_outlier_dims(w, zscore=3.0).tolist()
    assert utils.find_outlier_dims(w, topk=1).tolist() == [5]


def test_top_level_namespace():
    assert bnb.functional is F and bnb.matmul is bnb.autograd._functions.matmul
    assert bnb.modules is bnb.nn.modules
    assert hasattr(bnb.functional, "int8_vectorwise_dequant") and hasattr(bnb.nn, "Linear4bit")


def test_appendix_b6_linear4bit_roundtrip():
    torch.manual_seed(0)
    lin = torch.nn.Linear(128, 48)
    m = bnb.nn.Linear4bit(128, 48, quant_type="nf4")
    m.weight = bnb.nn.Params4bit(lin.weight.data, requires_grad=False, **m.weight.__dict__)
    m.bias = lin.bias
    m = m.to("cpu")
    sd = m.state_dict()
    assert [(k, v.dtype, tuple(v.shape)) for k, v in sd.items()] == [
        ("weight", torch.uint8, (3072, 1)),
        ("bias", torch.float32, (48,)),
        ("weight.absmax", torch.uint8, (96,)),
        ("weight.quant_map", torch.float32, (16,)),
        ("weight.nested_absmax", torch.float32, (1,)),
        ("weight.nested_quant_map", torch.float32, (256,)),
        ("weight.quant_state.bitsandbytes__nf4", torch.uint8, (len(sd["weight.quant_state.bitsandbytes__nf4"]),)),
    ]
    blob = F.unpack_tensor_to_dict(sd["weight.quant_state.bitsandbytes__nf4"])
    assert blob["shape"] == [48, 128] and blob["nested_blocksize"] == 256 and blob["dtype"] == "float32"
    p = bnb.nn.Params4bit.from_prequantized(
        sd["weight"], {k[7:]: v for k, v in sd.items() if k.startswith("weight.")}, device="cpu"
    )
    assert torch.equal(F.dequantize_4bit(p.data, p.quant_state), F.dequantize_4bit(m.weight.data, m.weight.quant_state))


def test_import_is_cheap():
    import subprocess
    import sys

    code = "import sys, bitsandbytes; print(sorted(m for m in ('scipy', 'transformers', 'peft') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


class _OpLog(torch.utils._python_dispatch.TorchDispatchMode):
    """Records the bitsandbytes ops a block of code dispatches."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.namespace == "bitsandbytes":
            self.ops.append(func._opname)
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rows", [1, 16])
def test_fine_tuning_paths_multiply_the_quantized_weight_not_a_dequantized_copy(dtype, rows):
    """Linear8bitLt in training mode (forward and input gradient) and Linear4bit's input gradient go
    through int8_weight_mm / int8_weight_mm_t / gemm_4bit_t, never a dequantize op, and equal the
    dequantize-then-matmul result within the dtype's rounding."""
    torch.manual_seed(3)
    tol = {torch.float32: 1e-5, torch.bfloat16: 2e-2}[dtype]
    lin8 = bnb.nn.Linear8bitLt(96, 40, has_fp16_weights=False, threshold=0.0).to(dtype).to("cpu")
    lin4 = bnb.nn.Linear4bit(96, 40, compute_dtype=dtype, quant_type="nf4").to(dtype).to("cpu")
    W8 = F.int8_vectorwise_dequant(lin8.weight.CB, lin8.weight.SCB).to(dtype)
    W4 = F.dequantize_4bit(lin4.weight.data, lin4.weight.quant_state).to(dtype)
    for layer, W, ops in ((lin8, W8, {"int8_weight_mm", "int8_weight_mm_t"}), (lin4, W4, {"gemm_4bit_t"})):
        layer.train()
        x = torch.randn(rows, 96, dtype=dtype, requires_grad=True)
        with _OpLog() as log:
            y = layer(x)
            y.float().pow(2).sum().backward()
        assert ops <= set(log.ops), log.ops
        assert not {"dequantize_4bit", "int8_vectorwise_dequant"} & set(log.ops), log.ops
        x2 = x.detach().clone().requires_grad_(True)
        y2 = torch.nn.functional.linear(x2, W, layer.bias.to(dtype))
        y2.float().pow(2).sum().backward()
        scale = y2.abs().max().item()
        torch.testing.assert_close(y.float(), y2.float(), rtol=tol, atol=tol * scale)
        torch.testing.assert_close(x.grad.float(), x2.grad.float(), rtol=tol, atol=tol * x2.grad.abs().max().item())
