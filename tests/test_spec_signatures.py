"""Spec §1, §3, §5, §9 surface: names, exact signatures (names/order/kinds/defaults), documented
return types, shapes and errors. Every expected value is copied from the spec text. §8 (the
optimizers) is in test_spec_signatures_optim.py."""

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
from conftest import params_text, randn


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
