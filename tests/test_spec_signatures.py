"""Spec §1, §3, §5, §8, §9 surface: names, exact signatures (names/order/kinds/defaults), documented
return types, shapes and errors. Every expected value is copied from the spec text."""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import types

import pytest
import torch

import bitsandbytes as bnb
import bitsandbytes.functional as F
import bitsandbytes.utils as U
from bitsandbytes.autograd import _functions as AF
from bitsandbytes.functional import QuantState
from bitsandbytes.optim import optimizer as O


def params_text(fn, skip: int = 0) -> str:
    """The parameter list as text without type hints (names, kinds, order and defaults)."""
    ps = list(inspect.signature(fn).parameters.values())[skip:]
    return ", ".join(str(p.replace(annotation=inspect.Parameter.empty)) for p in ps)


def randn(*shape: int, seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(dtype)


def test_top_level_namespace():
    assert isinstance(bnb.__version__, str)
    for name in ("functional", "nn", "optim", "autograd", "utils", "_ops", "cextension", "consts"):
        assert isinstance(getattr(bnb, name), types.ModuleType), name
    for name in ("cuda_specs", "backends", "diagnostics"):
        assert isinstance(getattr(bnb, name), types.ModuleType), name
    assert bnb.modules is importlib.import_module("bitsandbytes.nn.modules")
    assert bnb.adam is importlib.import_module("bitsandbytes.optim.adam")
    assert bnb.matmul is AF.matmul and bnb.matmul_4bit is AF.matmul_4bit
    assert bnb.MatmulLtState is AF.MatmulLtState and dataclasses.is_dataclass(bnb.MatmulLtState)
    assert bnb.features == {"multi_backend"}
    assert [n for n in vars(bnb.autograd) if not n.startswith("_")] == []  # autograd/__init__.py is empty
    assert bnb.supported_torch_devices == {"cpu", "cuda", "xpu", "hpu", "npu", "mps"}


INVENTORY = {
    "bitsandbytes.nn": "Embedding Embedding4bit Embedding8bit EmbeddingFP4 EmbeddingNF4 Int8Params Linear4bit "
    "Linear8bitLt LinearFP4 LinearNF4 OutlierAwareLinear Params4bit StableEmbedding",
    "bitsandbytes.nn.modules": "Embedding Embedding4bit Embedding8bit EmbeddingFP4 EmbeddingNF4 Int8Params "
    "Linear4bit Linear8bitLt LinearFP4 LinearNF4 OutlierAwareLinear Params4bit StableEmbedding "
    "fix_4bit_weight_quant_state_from_module maybe_rearrange_weight",
    "bitsandbytes.optim": "Adagrad Adagrad8bit Adagrad32bit Adam Adam8bit Adam32bit PagedAdam PagedAdam8bit "
    "PagedAdam32bit AdamW AdamW8bit AdamW32bit PagedAdamW PagedAdamW8bit PagedAdamW32bit AdEMAMix AdEMAMix8bit "
    "AdEMAMix32bit PagedAdEMAMix PagedAdEMAMix8bit PagedAdEMAMix32bit LAMB LAMB8bit LAMB32bit LARS LARS8bit "
    "LARS32bit PytorchLARS Lion Lion8bit Lion32bit PagedLion PagedLion8bit PagedLion32bit RMSprop RMSprop8bit "
    "RMSprop32bit SGD SGD8bit SGD32bit GlobalOptimManager",
    "bitsandbytes.optim.optimizer": "Optimizer8bit Optimizer1State Optimizer2State MockArgs GlobalOptimManager",
    "bitsandbytes.autograd._functions": "GlobalOutlierPooler MatmulLtState MatMul8bitLt MatMul8bitFp MatMul4Bit "
    "matmul matmul_4bit",
    "bitsandbytes.utils": "OutlierTracer outlier_hook find_outlier_dims execute_and_return replace_linear "
    "pack_dict_to_tensor unpack_tensor_to_dict sync_gpu LINEAR_8BIT_WEIGHTS_FORMAT_MAPPING "
    "INVERSE_LINEAR_8BIT_WEIGHTS_FORMAT_MAPPING",
    "bitsandbytes.functional": "QuantState quantize_blockwise dequantize_blockwise quantize_4bit quantize_fp4 "
    "quantize_nf4 dequantize_4bit dequantize_fp4 dequantize_nf4 get_4bit_type gemv_4bit int8_linear_matmul "
    "int8_mm_dequant int8_double_quant int8_vectorwise_quant int8_vectorwise_dequant check_matmul igemm "
    "batched_igemm optimizer_update_32bit optimizer_update_8bit_blockwise GlobalPageManager CUBLAS_Context "
    "get_paged prefetch_tensor elementwise_func fill _mul is_on_gpu get_ptr has_avx512bf16 C name2qmap lib "
    "pack_dict_to_tensor unpack_tensor_to_dict FIRST_CUDA_DEVICE",
}


@pytest.mark.parametrize("module", list(INVENTORY))
def test_submodule_inventory(module):
    mod = importlib.import_module(module)
    missing = [n for n in INVENTORY[module].split() if not hasattr(mod, n)]
    assert missing == []


def test_incidental_backend_modules():
    # §1.1: `cpu_ops`, `default_ops` are top-level modules of the established release: here the
    # kernels registered for the CPU and the reference kernels every device falls back to.
    assert bnb.default_ops.__name__ == "bitsandbytes.backends.reference"
    assert isinstance(bnb.cpu_ops, types.ModuleType)
    serving = bnb.implementation("quantize_4bit", "cpu")  # what the loader registered for the CPU
    assert serving in ("cpu", "reference")
    if serving == "cpu":
        assert bnb.cpu_ops.__name__ == "bitsandbytes_cpu" and callable(bnb.cpu_ops.register)
    else:
        assert bnb.cpu_ops is bnb.default_ops


def test_cpu_layout_is_the_checkpoint_layout():
    # §3.5 / §6.2: the established release re-lays a 4-bit weight out for AVX512-BF16 CPUs in eval
    # mode (`packing_format_for_cpu = True`) and converts it back for state_dict(). Here the codes
    # keep the checkpoint layout: the flag stays False and the state dict is unchanged by inference.
    torch.manual_seed(0)
    layer = bnb.nn.Linear4bit(64, 32, quant_type="nf4", compute_dtype=torch.bfloat16).to("cpu").eval()
    before = {k: v.clone() for k, v in layer.state_dict().items() if isinstance(v, torch.Tensor)}
    with torch.no_grad():
        layer(torch.randn(3, 64, dtype=torch.bfloat16))
    assert layer.weight.quant_state.packing_format_for_cpu is False
    after = layer.state_dict()
    assert before.keys() == {k for k, v in after.items() if isinstance(v, torch.Tensor)}
    assert all(torch.equal(before[k], after[k]) for k in before if k != "bias")
    assert torch.equal(after["bias"], before["bias"].to(torch.bfloat16))  # §6.2: cast in place to compute_dtype


REMOVED = [
    ("bitsandbytes.functional", n)
    for n in (
        "quantize dequantize quantize_no_absmax dequantize_no_absmax optimizer_update_8bit percentile_clipping "
        "estimate_quantiles"
    ).split()
] + [("bitsandbytes.nn", "SwitchBackLinear"), ("bitsandbytes.nn", "StandardLinear")]


@pytest.mark.parametrize("module,name", REMOVED)
def test_removed_names_are_gone(module, name):
    assert not hasattr(importlib.import_module(module), name)
    with pytest.raises(ImportError):
        importlib.import_module("bitsandbytes.research")


@pytest.mark.parametrize("kwarg", ["percentile_clipping", "block_wise"])
@pytest.mark.parametrize("cls", ["Adam", "AdamW8bit", "Lion", "SGD", "LAMB8bit"])
def test_removed_optimizer_kwargs_raise_type_error(cls, kwarg):
    extra = {"momentum": 0.9} if cls == "SGD" else {}
    with pytest.raises(TypeError):
        getattr(bnb.optim, cls)([torch.nn.Parameter(torch.ones(4))], lr=0.1, **extra, **{kwarg: 100})


def test_quant_state_class_surface():
    assert QuantState.valid_quant_types == ("fp4", "nf4")
    assert QuantState.valid_qs_type_keys == ["bitsandbytes__fp4", "bitsandbytes__nf4"]
    assert QuantState.valid_qs_keys == [
        "absmax", "quant_map", "nested_absmax", "nested_quant_map", "quant_state", "quant_type",
        "blocksize", "dtype", "shape", "nested_blocksize", "nested_dtype", "nested_offset",
    ]  # fmt: skip
    assert params_text(QuantState.__init__, 1) == (
        "absmax, shape=None, code=None, blocksize=None, quant_type=None, dtype=None, offset=None, state2=None"
    )


@pytest.fixture(params=[False, True], ids=["plain", "nested"])
def qstate(request):
    w = randn(16, 64, seed=1, dtype=torch.bfloat16)
    return F.quantize_4bit(w, blocksize=64, quant_type="nf4", compress_statistics=request.param)


def test_quant_state_as_dict(qstate):
    _, s = qstate
    d = s.as_dict()
    keys = ["quant_type", "absmax", "blocksize", "quant_map", "dtype", "shape"]
    if s.nested:
        keys += ["nested_absmax", "nested_blocksize", "nested_quant_map", "nested_dtype", "nested_offset"]
    assert list(d) == keys
    assert d["quant_type"] == "nf4" and d["blocksize"] == 64 and d["dtype"] == "bfloat16"
    assert d["shape"] == (16, 64) and isinstance(d["shape"], tuple)
    assert d["absmax"] is s.absmax and d["quant_map"] is s.code
    if s.nested:
        assert d["nested_absmax"] is s.state2.absmax and isinstance(d["nested_blocksize"], int)
        assert torch.equal(d["nested_quant_map"], s.state2.code)
        assert d["nested_quant_map"].data_ptr() != s.state2.code.data_ptr()  # a clone
        assert d["nested_dtype"] == "float32"
        assert type(d["nested_offset"]) is float and d["nested_offset"] == s.offset.item()
    packed = s.as_dict(packed=True)
    tensors = [k for k in keys if isinstance(d[k], torch.Tensor)]
    assert list(packed) == tensors + ["quant_state.bitsandbytes__nf4"]
    blob = packed["quant_state.bitsandbytes__nf4"]
    assert blob.dtype == torch.uint8
    assert U.unpack_tensor_to_dict(blob) == {
        k: (list(v) if isinstance(v, tuple) else v) for k, v in d.items() if not isinstance(v, torch.Tensor)
    }
    assert torch.equal(s.bitsandbytes__nf4, blob)
    assert s.to("cpu") is None and isinstance(s.shape, torch.Size) and s.nested == (s.state2 is not None)
    assert s[4] == ([s.offset, s.state2] if s.nested else None) and s[5] == "nf4" and s[3] == 64
    with pytest.raises(AttributeError):
        s.no_such_attribute  # noqa: B018


def test_quant_state_from_dict_errors():
    _, s = F.quantize_4bit(randn(8, 64), quant_type="fp4")
    d = s.as_dict(packed=True)
    plain = {k: v for k, v in d.items() if "quant_state" not in k}
    with pytest.raises(ValueError, match="Expected packed or unpacked quant_state items, found neither"):
        QuantState.from_dict(plain, device="cpu")
    twice = dict(plain, **{"a.quant_state.bitsandbytes__fp4": d["quant_state.bitsandbytes__fp4"]})
    twice["b.quant_state.bitsandbytes__nf4"] = d["quant_state.bitsandbytes__fp4"]
    with pytest.raises(ValueError, match="There should be exactly one `quant_state` item"):
        QuantState.from_dict(twice, device="cpu")
    # Only the last dotted component counts; the result is a QuantState on the device.
    prefixed = {"layer.weight." + k: v for k, v in d.items()}
    got = QuantState.from_dict(prefixed, device=torch.device("cpu"))
    assert isinstance(got, QuantState) and got.quant_type == "fp4" and got.shape == torch.Size([8, 64])


# fmt: off
SIGNATURES_F = {
    "quantize_blockwise": "A, code=None, absmax=None, out=None, blocksize=4096, nested=False",
    "dequantize_blockwise": "A, quant_state=None, absmax=None, code=None, out=None, blocksize=4096, nested=False",
    "quantize_4bit": "A, absmax=None, out=None, blocksize=None, compress_statistics=False, quant_type='fp4', "
    "quant_storage=torch.uint8",
    "quantize_fp4": "A, absmax=None, out=None, blocksize=None, compress_statistics=False, quant_storage=torch.uint8",
    "quantize_nf4": "A, absmax=None, out=None, blocksize=None, compress_statistics=False, quant_storage=torch.uint8",
    "dequantize_4bit": "A, quant_state=None, absmax=None, out=None, blocksize=None, quant_type='fp4'",
    "dequantize_fp4": "A, quant_state=None, absmax=None, out=None, blocksize=None",
    "dequantize_nf4": "A, quant_state=None, absmax=None, out=None, blocksize=None",
    "get_4bit_type": "typename, device=None, blocksize=64",
    # §3.3
    "gemv_4bit": "A, B, out=None, transposed_A=False, transposed_B=False, state=None",
    "int8_linear_matmul": "A, B, out=None, dtype=torch.int32",
    "int8_mm_dequant": "A, row_stats, col_stats, out=None, bias=None",
    "int8_double_quant": "A, col_stats=None, row_stats=None, out_col=None, out_row=None, threshold=0.0",
    "int8_vectorwise_quant": "A, threshold=0.0",
    "int8_vectorwise_dequant": "A, stats",
    "check_matmul": "A, B, out, transposed_A, transposed_B, expected_type=torch.int8",
    "igemm": "A, B, out=None, transposed_A=False, transposed_B=False",
    "batched_igemm": "A, B, out=None, transposed_A=False, transposed_B=False",
    # §3.4
    "optimizer_update_32bit": "optimizer_name, g, p, state1, beta1, eps, step, lr, state2=None, beta2=0.0, "
    "beta3=0.0, alpha=0.0, weight_decay=0.0, gnorm_scale=1.0, unorm_vec=None, max_unorm=0.0, skip_zeros=False",
    "optimizer_update_8bit_blockwise": "optimizer_name, g, p, state1, state2, beta1, beta2, beta3, alpha, eps, "
    "step, lr, qmap1, qmap2, absmax1, absmax2, weight_decay=0.0, gnorm_scale=1.0, skip_zeros=False",
    # §3.5
    "get_paged": "*shape, dtype=torch.float32, device=device(type='cuda', index=0)",
    "prefetch_tensor": "A, to_cpu=False", "elementwise_func": "func_name, A, B, value, prefetch=True",
    "fill": "A, value, device=None, prefetch=True", "_mul": "A, B, device=None",
    "is_on_gpu": "tensors", "get_ptr": "A", "has_avx512bf16": "",
}
# fmt: on


@pytest.mark.parametrize("name", list(SIGNATURES_F))
def test_functional_signatures(name):
    assert params_text(getattr(F, name)) == SIGNATURES_F[name]


def test_quantize_blockwise_behaviour():
    with pytest.raises(ValueError):
        F.quantize_blockwise(randn(64), blocksize=0)
    with pytest.raises(ValueError):
        F.quantize_blockwise(randn(64), blocksize=-64)
    with pytest.raises(ValueError):
        F.quantize_blockwise(randn(64, dtype=torch.float64))
    code = F.create_dynamic_map()
    a = randn(3, 100, dtype=torch.float16)
    q, s = F.quantize_blockwise(a, code=code, blocksize=256)
    assert q.dtype == torch.uint8 and q.shape == a.shape
    assert s.shape is None and s.quant_type is None and s.dtype == torch.float16 and s.blocksize == 256
    assert torch.equal(s.code, code) and s.code.data_ptr() != code.data_ptr()
    out, absmax = torch.empty(3, 100, dtype=torch.uint8), torch.empty(2)
    q2, s2 = F.quantize_blockwise(a, code=code, absmax=absmax, out=out, blocksize=256)
    assert q2 is out and s2.absmax is absmax and torch.equal(out, q)
    with pytest.raises(ValueError):
        F.dequantize_blockwise(q)
    d = F.dequantize_blockwise(q, absmax=s.absmax, blocksize=256)  # no state: code = dynamic map, f32
    assert d.dtype == torch.float32 and d.shape == a.shape
    torch.testing.assert_close(d, F.dequantize_blockwise(q, s).float(), rtol=1e-3, atol=1e-3)
    assert F.dequantize_blockwise(q, s).dtype == torch.float16


def test_quantize_4bit_behaviour():
    a = randn(4, 128, dtype=torch.bfloat16)
    q, s = F.quantize_4bit(a, quant_type="nf4")
    assert s.blocksize == 64 and s.shape == a.shape and s.dtype == torch.bfloat16 and s.quant_type == "nf4"
    assert torch.equal(s.code, F.get_4bit_type("nf4"))
    assert F.quantize_fp4(a)[1].quant_type == "fp4" and F.quantize_nf4(a)[1].quant_type == "nf4"
    with pytest.raises(ValueError):
        F.quantize_4bit(a, blocksize=48)
    with pytest.raises(ValueError):
        F.quantize_4bit(a, quant_type="int4")
    with pytest.raises(ValueError):
        F.dequantize_4bit(q)
    with pytest.raises(ValueError):
        F.dequantize_4bit(q, absmax=s.absmax)
    with pytest.raises(ValueError):
        F.dequantize_4bit(q, absmax=s.absmax, out=torch.empty(4, 128), blocksize=48)
    d = F.dequantize_4bit(q, s)
    assert d.shape == a.shape and d.dtype == torch.bfloat16
    # The legacy transposed [1, n/2] layout comes back transposed.
    legacy = F.dequantize_4bit(q.t(), s)
    assert legacy.shape == (128, 4) and torch.equal(legacy, d.t())
    assert torch.equal(F.dequantize_nf4(q, s), d)


def test_matmul_helpers_behaviour():
    w, x = randn(48, 64, seed=2, dtype=torch.bfloat16), randn(2, 3, 64, seed=3, dtype=torch.bfloat16)
    q, s = F.quantize_4bit(w, quant_type="nf4", compress_statistics=True)
    with pytest.raises(ValueError):
        F.gemv_4bit(x, q.t())
    y = F.gemv_4bit(x, q.t(), state=s)
    assert y.shape == (2, 3, 48) and y.dtype == torch.bfloat16
    a = torch.randint(-127, 128, (5, 16), dtype=torch.int8)
    b = torch.randint(-127, 128, (7, 16), dtype=torch.int8)
    c = F.int8_linear_matmul(a, b)
    assert c.dtype == torch.int32 and torch.equal(c, a.int() @ b.int().T)
    m = F.int8_mm_dequant(c, torch.ones(5), torch.ones(7))
    assert m.dtype == torch.float16 and m.shape == (5, 7)
    ca, stats, cols = F.int8_vectorwise_quant(randn(5, 16, dtype=torch.float16))
    assert ca.dtype == torch.int8 and ca.shape == (5, 16) and stats.dtype == torch.float32
    assert stats.shape == (5,) and cols is None
    a = randn(4, 16, dtype=torch.float16)
    a[:, 3] = 20.0
    _, _, outliers = F.int8_vectorwise_quant(a, threshold=6.0)
    assert outliers.dtype == torch.int64 and outliers.tolist() == [3]
    deq = F.int8_vectorwise_dequant(ca, stats)
    assert deq.dtype == torch.float32 and deq.shape == (5, 16)
    for kw in ("col_stats", "row_stats", "out_col", "out_row"):
        with pytest.raises(ValueError):
            F.int8_double_quant(randn(4, 8, dtype=torch.float16), **{kw: torch.empty(4)})


def test_paging_and_native_helpers():
    assert F.FIRST_CUDA_DEVICE == torch.device("cuda", 0)
    assert F.C == 127.0 and isinstance(F.name2qmap, dict)
    assert F.pack_dict_to_tensor is U.pack_dict_to_tensor
    assert F.unpack_tensor_to_dict is U.unpack_tensor_to_dict
    mng = F.GlobalPageManager.get_instance()
    assert mng is F.GlobalPageManager.get_instance() and isinstance(mng.paged_tensors, list)
    assert params_text(mng.prefetch_all) == "to_cpu=False"
    with pytest.raises(RuntimeError, match=r"Call get_instance\(\) instead"):
        F.GlobalPageManager()
    ctx = F.CUBLAS_Context.get_instance()
    assert ctx is F.CUBLAS_Context.get_instance() and params_text(ctx.get_context) == "device"
    assert F.is_on_gpu([torch.ones(2), None, torch.zeros(3)]) is True
    assert F.get_ptr(None) is None
    x = torch.ones(3)
    ptr = F.get_ptr(x)
    assert isinstance(ptr, __import__("ctypes").c_void_p) and ptr.value == x.data_ptr()
    assert isinstance(F.has_avx512bf16(), bool)
    with pytest.raises(AssertionError):
        F.prefetch_tensor(torch.ones(2))


def test_matmul_lt_state():
    fields = [(f.name, f.default) for f in dataclasses.fields(AF.MatmulLtState)]
    assert fields == [
        ("force_no_igemmlt", False), ("CB", None), ("SB", None), ("SCB", None), ("SBt", None), ("CBt", None),
        ("subB", None), ("outlier_pool", None), ("idx", None),
    ]  # fmt: skip
    st = AF.MatmulLtState()
    assert (st.has_accumulated_gradients, st.threshold, st.is_training, st.has_fp16_weights, st.use_pool) == (
        False, 0.0, True, True, False,
    )  # fmt: skip
    for name in ("has_accumulated_gradients", "threshold", "is_training", "has_fp16_weights", "use_pool"):
        assert name in vars(AF.MatmulLtState), name  # plain class attributes, not fields
    st.CB = st.SB = st.SCB = st.SBt = st.CBt = torch.ones(1)
    st.reset_grads()
    assert (st.CB, st.SB, st.SCB, st.SBt, st.CBt) == (None,) * 5
    with pytest.raises(AttributeError):
        st.no_such_field  # noqa: B018
    st.anything_new = 3
    assert st.anything_new == 3
    for name in ("CxB", "CxBt", "formatB", "_tile_indices"):
        with pytest.warns(FutureWarning):
            assert getattr(st, name) is None


def test_autograd_signatures():
    assert params_text(AF.matmul) == "A, B, out=None, state=None, threshold=0.0, bias=None"
    assert params_text(AF.matmul_4bit) == "A, B, quant_state, out=None, bias=None"
    for cls in (AF.MatMul8bitLt, AF.MatMul8bitFp, AF.MatMul4Bit):
        assert issubclass(cls, torch.autograd.Function)
        # apply(A, B, out, bias, state): the positional order after ctx
        assert list(inspect.signature(cls.forward).parameters)[1:5] == ["A", "B", "out", "bias"]
    pooler = AF.GlobalOutlierPooler.get_instance()
    assert pooler is AF.GlobalOutlierPooler.get_instance()
    assert params_text(pooler.add_outliers) == "outlier_idx, feature_dim" or list(
        inspect.signature(pooler.add_outliers).parameters
    ) == ["idx", "feature_dim"]
    assert callable(pooler.get_current_outlier_idx)


def test_matmul_threshold_overwrites_state():
    st = AF.MatmulLtState()
    st.is_training = False
    w = randn(8, 16, seed=4, dtype=torch.float16)
    out = bnb.matmul(randn(3, 16, dtype=torch.float16), w, state=st, threshold=6.0)
    assert st.threshold == 6.0 and out.shape == (3, 8) and out.dtype == torch.float16
    empty = bnb.matmul(torch.empty(0, 16, dtype=torch.float16), w, state=AF.MatmulLtState(), threshold=0.0)
    assert empty.shape == (0, 8)


def test_matmul_4bit_behaviour():
    w, x = randn(24, 64, seed=5), randn(3, 64, seed=6)
    q, s = F.quantize_4bit(w, quant_type="nf4")
    with pytest.raises(ValueError):
        bnb.matmul_4bit(x, q.t(), None)
    flat = QuantState(s.absmax, shape=torch.Size([24 * 64]), code=s.code, blocksize=64, quant_type="nf4",
                      dtype=torch.float32)  # fmt: skip
    with pytest.raises(ValueError):
        bnb.matmul_4bit(x, q.t(), flat)
    out = torch.empty(3, 24)
    y = bnb.matmul_4bit(x, q.t(), s, out=out, bias=torch.ones(24))
    assert y is out
    torch.testing.assert_close(y, x @ F.dequantize_4bit(q, s).t() + 1)


def test_base_class_signatures():
    assert params_text(O.Optimizer8bit.__init__, 1) == "params, defaults, optim_bits=32, is_paged=False"
    common = "eps=1e-08, weight_decay=0.0, optim_bits=32, args=None, min_8bit_size=4096, max_unorm=0.0, "
    common += "skip_zeros=False, is_paged=False"
    assert params_text(O.Optimizer2State.__init__, 1) == (
        "optimizer_name, params, lr=0.001, betas=(0.9, 0.999), " + common + ", alpha=0.0, t_alpha=None, t_beta3=None"
    )
    assert params_text(O.Optimizer1State.__init__, 1) == "optimizer_name, params, lr=0.001, betas=(0.9, 0.0), " + common


def test_base_class_attributes_and_validation():
    p = torch.nn.Parameter(torch.ones(4))
    opt = O.Optimizer2State("adam", [p], betas="(0.8, 0.99)")
    assert opt.param_groups[0]["betas"] == [0.8, 0.99]  # "parsed to a list of floats"
    assert O.Optimizer1State("momentum", [p], betas="(0.5, 0.0)").param_groups[0]["betas"] == [0.5, 0.0]
    assert bnb.optim.AdamW8bit([p], betas="(0.7, 0.9)").param_groups[0]["betas"] == [0.7, 0.9]
    assert opt.initialized is False and opt.name2qmap == {} and opt.is_paged is False
    assert opt.optimizer_name == "adam" and opt._FSDP_WRAPPED_QUANT_STATE_KEY == "__bnb_optimizer_quant_state__"
    assert isinstance(opt.page_mng, F.GlobalPageManager) and isinstance(opt.mng, O.GlobalOptimManager)
    assert hasattr(opt, "non_castable_tensor_keys")
    assert isinstance(opt.args, O.MockArgs)
    assert (opt.args.optim_bits, opt.args.min_8bit_size, opt.args.max_unorm, opt.args.skip_zeros) == (
        32,
        4096,
        0.0,
        False,
    )
    assert {"lr", "betas", "eps", "weight_decay", "alpha", "t_alpha", "t_beta3"} <= set(opt.defaults)
    one = O.Optimizer1State("momentum", [p])
    assert {"lr", "betas", "eps", "weight_decay"} <= set(one.defaults)
    cfg = opt.get_config(0, 0, opt.param_groups[0])
    assert set(cfg) >= {"betas", "eps", "weight_decay", "lr", "alpha", "t_alpha", "t_beta3", "optim_bits",
                        "min_8bit_size", "max_unorm", "skip_zeros"}  # fmt: skip
    for cls in (O.Optimizer2State, O.Optimizer1State):
        for kw in ({"lr": -1.0}, {"eps": -1e-8}, {"betas": (1.0, 0.9)}, {"betas": (0.9, -0.1)}, {"weight_decay": -1.0}):
            with pytest.raises(ValueError, match="Invalid"):
                cls("adam", [p], **kw)
    eight = O.Optimizer2State("adam", [p], optim_bits=8)
    eight.fill_qmap()
    assert set(eight.name2qmap) == {"dynamic", "udynamic"}


A = "lr=0.001, betas=(0.9, 0.999), eps=1e-08, weight_decay=0, amsgrad=False, optim_bits=32, args=None, min_8bit_size=4096"
AW = A.replace("weight_decay=0,", "weight_decay=0.01,")
EMA = "lr=0.001, betas=(0.9, 0.999, 0.9999), alpha=5.0, t_alpha=None, t_beta3=None, eps=1e-08, weight_decay=0.01"
LAMB = "lr=0.001, bias_correction=True, betas=(0.9, 0.999), eps=1e-08, weight_decay=0, amsgrad=False, adam_w_mode=True"
LARS = "lr, momentum=0, dampening=0, weight_decay=0, nesterov=False"
LION = "lr=0.0001, betas=(0.9, 0.99), weight_decay=0"
RMS = "lr=0.01, alpha=0.99, eps=1e-08, weight_decay=0, momentum=0, centered=False"
ADA = "lr=0.01, lr_decay=0, weight_decay=0, initial_accumulator_value=0, eps=1e-10"
TAIL = "args=None, min_8bit_size=4096"
# fmt: off
OPTIM_SIGNATURES = {
    **{n: A + ", is_paged=False" for n in ("Adam", "Adam8bit", "Adam32bit", "PagedAdam", "PagedAdam8bit", "PagedAdam32bit")},
    **{n: AW + ", is_paged=False" for n in ("AdamW", "AdamW8bit", "AdamW32bit")},
    **{n: AW for n in ("PagedAdamW", "PagedAdamW8bit", "PagedAdamW32bit")},
    "AdEMAMix": EMA + ", optim_bits=32, min_8bit_size=4096, is_paged=False",
    "AdEMAMix8bit": EMA + ", min_8bit_size=4096, is_paged=False",
    "AdEMAMix32bit": EMA + ", min_8bit_size=4096, is_paged=False",
    "PagedAdEMAMix": EMA + ", optim_bits=32, min_8bit_size=4096", "PagedAdEMAMix8bit": EMA + ", min_8bit_size=4096",
    "PagedAdEMAMix32bit": EMA + ", min_8bit_size=4096", "LAMB": LAMB + ", optim_bits=32, " + TAIL + ", max_unorm=1.0",
    "LAMB8bit": LAMB + ", " + TAIL + ", max_unorm=1.0", "LAMB32bit": LAMB + ", " + TAIL + ", max_unorm=1.0",
    "LARS": LARS + ", optim_bits=32, " + TAIL + ", max_unorm=0.02", "LARS8bit": LARS + ", " + TAIL + ", max_unorm=0.02",
    "LARS32bit": LARS + ", " + TAIL + ", max_unorm=0.02",
    "PytorchLARS": "lr=0.01, momentum=0, dampening=0, weight_decay=0, nesterov=False, max_unorm=0.02",
    "Lion": LION + ", optim_bits=32, " + TAIL + ", is_paged=False", "Lion8bit": LION + ", " + TAIL + ", is_paged=False",
    "Lion32bit": LION + ", " + TAIL + ", is_paged=False", "PagedLion": LION + ", optim_bits=32, " + TAIL,
    "PagedLion8bit": LION + ", " + TAIL, "PagedLion32bit": LION + ", " + TAIL,
    "RMSprop": RMS + ", optim_bits=32, " + TAIL, "RMSprop8bit": RMS + ", " + TAIL, "RMSprop32bit": RMS + ", " + TAIL,
    "Adagrad": ADA + ", optim_bits=32, " + TAIL, "Adagrad8bit": ADA + ", optim_bits=8, " + TAIL,
    "Adagrad32bit": ADA + ", optim_bits=32, " + TAIL, "SGD": LARS + ", optim_bits=32, " + TAIL,
    "SGD8bit": LARS + ", " + TAIL, "SGD32bit": LARS + ", " + TAIL,
}
# fmt: on


@pytest.mark.parametrize("name", list(OPTIM_SIGNATURES))
def test_optimizer_signatures(name):
    assert params_text(getattr(bnb.optim, name).__init__, 1) == "params, " + OPTIM_SIGNATURES[name]


# class -> (kernel name, optim_bits, is_paged), default construction (§8.2 table)
KERNELS = {
    "Adam": ("adam", 32, False), "Adam8bit": ("adam", 8, False), "Adam32bit": ("adam", 32, False),
    "PagedAdam": ("adam", 32, True), "PagedAdam8bit": ("adam", 8, True), "PagedAdam32bit": ("adam", 32, True),
    "AdamW": ("adam", 32, False), "AdamW8bit": ("adam", 8, False), "AdamW32bit": ("adam", 32, False),
    "PagedAdamW": ("adam", 32, True), "PagedAdamW8bit": ("adam", 8, True), "PagedAdamW32bit": ("adam", 32, True),
    "AdEMAMix": ("ademamix", 32, False), "AdEMAMix8bit": ("ademamix", 8, False),
    "AdEMAMix32bit": ("ademamix", 32, False), "PagedAdEMAMix": ("ademamix", 32, True),
    "PagedAdEMAMix8bit": ("ademamix", 8, True), "PagedAdEMAMix32bit": ("ademamix", 32, True),
    "LAMB": ("lamb", 32, False), "LAMB8bit": ("lamb", 8, False), "LAMB32bit": ("lamb", 32, False),
    "LARS": ("lars", 32, False), "LARS8bit": ("lars", 8, False), "LARS32bit": ("lars", 32, False),
    "Lion": ("lion", 32, False), "Lion8bit": ("lion", 8, False), "Lion32bit": ("lion", 32, False),
    "PagedLion": ("lion", 32, True), "PagedLion8bit": ("lion", 8, True), "PagedLion32bit": ("lion", 32, True),
    "RMSprop": ("rmsprop", 32, False), "RMSprop8bit": ("rmsprop", 8, False), "RMSprop32bit": ("rmsprop", 32, False),
    "Adagrad": ("adagrad", 32, False), "Adagrad8bit": ("adagrad", 8, False), "Adagrad32bit": ("adagrad", 32, False),
    "SGD": ("momentum", 32, False), "SGD8bit": ("momentum", 8, False), "SGD32bit": ("momentum", 32, False),
}  # fmt: skip


@pytest.mark.parametrize("name", list(KERNELS))
def test_optimizer_kernel_bits_and_paging(name):
    extra = {"lr": 0.1, "momentum": 0.9} if name.startswith(("LARS", "SGD")) else {}
    opt = getattr(bnb.optim, name)([torch.nn.Parameter(torch.ones(4))], **extra)
    assert (opt.optimizer_name, opt.args.optim_bits, opt.is_paged) == KERNELS[name]
    if name.startswith(("LARS", "SGD")):
        assert tuple(opt.param_groups[0]["betas"]) == (0.9, 0) and opt.param_groups[0]["eps"] == 0
    if name.startswith("RMSprop"):
        assert tuple(opt.param_groups[0]["betas"]) == (0.99, 0)
    if name.startswith("Adagrad"):
        assert tuple(opt.param_groups[0]["betas"]) == (0, 0)
    if "Lion" in name:
        assert opt.param_groups[0]["eps"] == 0


def test_paged_adam_ignores_is_paged():
    assert bnb.optim.PagedAdam([torch.nn.Parameter(torch.ones(4))], is_paged=False).is_paged is True


# fmt: off
INVALID = [
    ("Adam8bit", {"amsgrad": True}, ValueError), ("Adam8bit", {"optim_bits": 8}, ValueError),
    ("PagedAdam8bit", {"amsgrad": True}, ValueError), ("PagedAdamW8bit", {"optim_bits": 8}, ValueError),
    ("LAMB8bit", {"amsgrad": True}, ValueError), ("LAMB8bit", {"max_unorm": 0.5}, ValueError),
    ("LARS", {"lr": 0.1}, NotImplementedError), ("SGD", {"lr": 0.1}, NotImplementedError),
    ("RMSprop", {"alpha": 0}, NotImplementedError), ("RMSprop", {"centered": True}, NotImplementedError),
    ("Adagrad", {"lr_decay": 0.1}, ValueError), ("Adagrad", {"initial_accumulator_value": 0.1}, ValueError),
    ("Adagrad8bit", {"optim_bits": 32}, ValueError),
]
# fmt: on


@pytest.mark.parametrize("name,kwargs,error", INVALID, ids=[f"{n}-{next(iter(k))}" for n, k, _ in INVALID])
def test_optimizer_constructor_errors(name, kwargs, error):
    with pytest.raises(error):
        getattr(bnb.optim, name)([torch.nn.Parameter(torch.ones(4))], **kwargs)


# name -> {state key: (dtype, shape)} for a 64x128 param (n = 8192) after one step (§8.3)
N = 64 * 128
F32, U8, P, B = torch.float32, torch.uint8, (64, 128), (N // 256,)
# fmt: off
STATE_KEYS = {
    "Adam": {"state1": (F32, P), "state2": (F32, P)},
    "AdEMAMix": {"state1": (F32, (2, *P)), "state2": (F32, P)},
    "Lion": {"state1": (F32, P)},
    "LAMB": {"state1": (F32, P), "state2": (F32, P), "unorm_vec": (F32, (1,))},
    "LARS": {"state1": (F32, P), "unorm_vec": (F32, (1,))},
    "Adam8bit": {"state1": (U8, P), "qmap1": (F32, (256,)), "absmax1": (F32, B), "state2": (U8, P),
                 "qmap2": (F32, (256,)), "absmax2": (F32, B)},
    "AdEMAMix8bit": {"state1": (U8, (2, *P)), "absmax1": (F32, (2, *B)), "state2": (U8, P), "absmax2": (F32, B)},
    "RMSprop8bit": {"state1": (U8, P), "qmap1": (F32, (256,)), "absmax1": (F32, B)},
}
# fmt: on


@pytest.mark.parametrize("name", list(STATE_KEYS))
def test_optimizer_state_keys(name):
    p = torch.nn.Parameter(randn(64, 128, seed=7))
    extra = {"lr": 0.01, "momentum": 0.9} if name == "LARS" else {}
    opt = getattr(bnb.optim, name)([p], **extra)
    p.grad = randn(64, 128, seed=8)
    opt.step()
    st = opt.state[p]
    assert int(st["step"]) == 1
    for key, (dtype, shape) in STATE_KEYS[name].items():
        assert (st[key].dtype, tuple(st[key].shape)) == (dtype, shape), key
    if "qmap1" in st and "qmap2" in st:
        assert torch.equal(st["qmap1"], F.create_dynamic_map(signed=True))
        assert torch.equal(st["qmap2"], F.create_dynamic_map(signed=False))


def test_global_optim_manager():
    mng = O.GlobalOptimManager.get_instance()
    with pytest.raises(RuntimeError):
        O.GlobalOptimManager()
    for name in ("pid2config", "index2config", "optimizer", "uses_config_override", "module_weight_config_triple"):
        assert hasattr(mng, name), name
    assert params_text(mng.register_parameters) == "params"
    assert params_text(mng.override_config) == "parameters, key=None, value=None, key_value_dict=None"
    assert params_text(mng.register_module_override) == "module, param_name, config"
    assert bnb.optim.GlobalOptimManager is O.GlobalOptimManager


SIGNATURES_U = {
    "pack_dict_to_tensor": "source_dict",
    "unpack_tensor_to_dict": "tensor_data",
    "replace_linear": "model, linear_replacement, skip_modules=('lm_head',), copy_weights=False, "
    "post_processing_function=None",
    "outlier_hook": "module, input",
    "find_outlier_dims": "weight, reduction_dim=0, zscore=4.0, topk=None, rdm=False",
    "execute_and_return": "command_string",
    "sync_gpu": "t",
}


@pytest.mark.parametrize("name", list(SIGNATURES_U))
def test_utils_signatures(name):
    assert params_text(getattr(U, name)) == SIGNATURES_U[name]


def test_utils_behaviour():
    assert U.LINEAR_8BIT_WEIGHTS_FORMAT_MAPPING == {"row": 0, "col32": 1, "col_turing": 2, "col_ampere": 3}
    assert U.INVERSE_LINEAR_8BIT_WEIGHTS_FORMAT_MAPPING == {0: "row", 1: "col32", 2: "col_turing", 3: "col_ampere"}
    out, err = U.execute_and_return("echo hi")
    assert out.strip() == "hi" and err == ""
    tracer = U.OutlierTracer.get_instance()
    assert tracer is U.OutlierTracer.get_instance()
    for name in ("initialize", "is_initialized", "get_hvalue", "get_outliers"):
        assert callable(getattr(tracer, name)), name
    w = torch.ones(4, 4)
    assert tracer.get_hvalue(w) == w.untyped_storage().data_ptr()
