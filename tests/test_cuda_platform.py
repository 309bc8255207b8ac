"""The CUDA platform wheel (bitsandbytes-cuda12x / -cuda13x).

Without the wheel every test here is skipped; without a GPU only the packaging tests run. The
op-by-op comparison with the reference for the shared cases is in test_ops_conformance.py
(``impl_params`` includes the CUDA kernels when they are loaded); this file adds what is CUDA
specific: gemv/gemm shapes, int8, optimizers, streams, devices and paged memory.
"""

from __future__ import annotations

import io
import types

import pytest
import torch

import bitsandbytes
from bitsandbytes.backends.reference import blockwise as ref_blockwise
from bitsandbytes.backends.reference import fourbit as ref_fourbit
from bitsandbytes.backends.reference import int8 as ref_int8
from bitsandbytes.backends.reference.codebooks import dynamic_map, four_bit_table

bnb_cuda = pytest.importorskip("bitsandbytes_cuda")

HAS_GPU = torch.cuda.is_available() and torch.version.cuda is not None
gpu = pytest.mark.skipif(not HAS_GPU, reason="needs a CUDA GPU")


def _kernels():
    from bitsandbytes_cuda import kernels

    return kernels


# ---- packaging (no GPU needed) --------------------------------------------------------------


def test_build_info_names_toolkit_and_archs():
    info = bnb_cuda.build_info()
    assert info["platform"] == f"cuda{info['cuda_major']}x"
    assert info["cuda_toolkit"].split(".")[0] == str(info["cuda_major"])
    assert any(a.startswith("sm_") for a in info["cuda_archs"])
    assert any(a.startswith("compute_") for a in info["cuda_archs"])
    assert info["version"] == bnb_cuda.__version__ == bitsandbytes.__version__
    assert bnb_cuda.OP_INTERFACE_VERSION == 1


def test_check_runtime_refuses_other_majors():
    major = bnb_cuda.build_info()["cuda_major"]
    same = types.SimpleNamespace(cuda_version=f"{major}.4", hip_version=None)
    other = types.SimpleNamespace(cuda_version=f"{major - 1}.8", hip_version=None)
    rocm = types.SimpleNamespace(cuda_version=None, hip_version="6.4")
    cpu_only = types.SimpleNamespace(cuda_version=None, hip_version=None)
    assert bnb_cuda.check_runtime(same) is None
    assert f"cuda{major - 1}x" in bnb_cuda.check_runtime(other)
    assert "ROCm" in bnb_cuda.check_runtime(rocm)
    assert bnb_cuda.check_runtime(cpu_only)


def test_entry_point_name_is_the_platform():
    from importlib.metadata import entry_points

    names = {ep.name for ep in entry_points(group="bitsandbytes.platforms") if ep.value.startswith("bitsandbytes_cuda")}
    assert names == {bnb_cuda.build_info()["platform"]}


@gpu
def test_native_build_info_matches_the_json():
    assert bnb_cuda.native_build_info() == bnb_cuda.build_info()


@gpu
def test_cuda_kernels_are_registered():
    owners = {op for (op, dev), (plat, _) in bitsandbytes._LOADED.kernels.items() if dev == "cuda"}
    for op in ("quantize_4bit", "gemv_4bit", "gemm_4bit", "int8_linear_matmul", "quantize_blockwise"):
        assert op in owners


# ---- 4-bit matmul ---------------------------------------------------------------------------


def _quantized_weight(N, K, quant_type, blocksize, dtype, device="cuda"):
    W = torch.randn(N, K, device=device, dtype=dtype)
    packed, absmax = ref_fourbit.quantize_4bit(W, blocksize, quant_type, torch.uint8)
    return packed, absmax


@gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
@pytest.mark.parametrize(
    ("m", "N", "K"), [(1, 64, 128), (1, 33, 96), (1, 17, 45), (3, 40, 256), (5, 7, 33), (17, 16, 512)]
)
@pytest.mark.parametrize("blocksize", [32, 64, 4096])
def test_gemm_4bit_matches_reference(dtype, quant_type, m, N, K, blocksize):
    torch.manual_seed(0)
    packed, absmax = _quantized_weight(N, K, quant_type, blocksize, dtype)
    A = torch.randn(m, K, device="cuda", dtype=dtype)
    bias = torch.randn(N, device="cuda", dtype=dtype)
    want = ref_fourbit.gemm_4bit(A, packed, [N, K], absmax, blocksize, quant_type, bias=bias)
    got = _kernels().gemm_4bit(A, packed, [N, K], absmax, blocksize, quant_type, bias=bias)
    tol = {torch.float32: 1e-4, torch.float16: 2e-2, torch.bfloat16: 1e-1}[dtype]
    torch.testing.assert_close(got, want, atol=tol * (K**0.5), rtol=tol)
    code = four_bit_table(quant_type, "cuda")
    got_v = _kernels().gemv_4bit(A, packed, [N, K], absmax, code, blocksize)
    want_v = ref_fourbit.gemv_4bit(A, packed, [N, K], absmax, code, blocksize)
    torch.testing.assert_close(got_v, want_v, atol=tol * (K**0.5), rtol=tol)


@gpu
def test_gemm_4bit_nested_absmax():
    torch.manual_seed(1)
    N, K, bs = 64, 256, 64
    packed, absmax = _quantized_weight(N, K, "nf4", bs, torch.float16)
    offset = absmax.mean()
    qabs, inner = ref_blockwise.quantize_blockwise(absmax - offset, dynamic_map(device="cuda"), 256)
    A = torch.randn(2, 3, K, device="cuda", dtype=torch.float16)
    args = (A, packed, [N, K], inner, bs, "nf4", None, qabs, dynamic_map(device="cuda"), offset)
    torch.testing.assert_close(_kernels().gemm_4bit(*args), ref_fourbit.gemm_4bit(*args), atol=5e-2, rtol=2e-2)


# ---- int8 -----------------------------------------------------------------------------------


@gpu
@pytest.mark.parametrize(("m", "n", "k"), [(1, 8, 16), (7, 12, 36), (33, 64, 128), (5, 9, 7), (256, 512, 1024)])
def test_int8_linear_matmul_is_exact(m, n, k):
    torch.manual_seed(2)
    A = torch.randint(-128, 128, (m, k), dtype=torch.int8, device="cuda")
    B = torch.randint(-128, 128, (n, k), dtype=torch.int8, device="cuda")
    assert torch.equal(_kernels().int8_linear_matmul(A, B), ref_int8.int8_linear_matmul(A, B))


@gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("threshold", [0.0, 2.5])
@pytest.mark.parametrize("rows", [1, 9])
def test_int8_vectorwise_quant_matches_reference(dtype, threshold, rows):
    torch.manual_seed(3)
    A = (torch.randn(rows, 300, device="cuda") * 1.5).to(dtype)
    A[0, 3] = 0.0
    got = _kernels().int8_vectorwise_quant(A, threshold)
    want = ref_int8.int8_vectorwise_quant(A, threshold)
    assert torch.equal(got[0], want[0])
    assert torch.equal(got[1], want[1])
    if threshold:
        assert torch.equal(got[2], want[2])
    else:
        assert got[2] is None and want[2] is None


@gpu
@pytest.mark.parametrize("bias_dtype", [None, torch.float16, torch.float32])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_int8_mm_dequant_matches_reference(bias_dtype, dtype):
    torch.manual_seed(4)
    C = torch.randint(-(2**20), 2**20, (13, 24), dtype=torch.int32, device="cuda")
    rs, cs = torch.rand(13, device="cuda") * 4, torch.rand(24, device="cuda") * 4
    bias = torch.randn(24, device="cuda").to(bias_dtype) if bias_dtype else None
    got = _kernels().int8_mm_dequant(C, rs, cs, dtype, bias)
    want = ref_int8.int8_mm_dequant(C, rs, cs, dtype, bias)
    torch.testing.assert_close(got, want, atol=0, rtol=0)


# ---- optimizers -----------------------------------------------------------------------------


def _ref_optimizers():
    try:
        from bitsandbytes.backends.reference import optimizers as ref_opt
    except ImportError:
        pytest.skip("the optimizer reference kernels are not in this meta-package")
    return ref_opt


def _hparams(name):
    return dict(beta1=0.9, beta2=0.95 if name == "lion" else 0.999, beta3=0.9999, alpha=5.0, eps=1e-8)


@gpu
@pytest.mark.parametrize("name", ["adam", "lamb", "ademamix", "momentum", "lars", "rmsprop", "adagrad", "lion"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("clip", [False, True])
def test_optimizer_32bit_matches_reference(name, dtype, clip):
    ref = _ref_optimizers()
    torch.manual_seed(5)
    n = 1000
    runs = []
    for impl in (ref.optimizer_update_32bit, _kernels().optimizer_update_32bit):
        torch.manual_seed(5)
        p = torch.randn(n, device="cuda").to(dtype)
        s1 = torch.zeros(2 * n if name == "ademamix" else n, device="cuda")
        s2 = torch.zeros(n, device="cuda") if name in ("adam", "lamb", "ademamix") else None
        unorm = torch.zeros(1, device="cuda") if clip else None
        for step in range(1, 4):
            g = torch.randn(n, device="cuda").to(dtype)
            pn = float(p.float().norm()) if clip else 0.0
            impl(name, g, p, s1, s2, unorm, 1.0 if clip else 0.0, pn, weight_decay=0.01, step=step, lr=1e-3,
                 gnorm_scale=0.5, **_hparams(name))  # fmt: skip
        runs.append((p, s1, s2, unorm))
    tol = dict(atol=1e-5, rtol=1e-4) if dtype == torch.float32 else dict(atol=1e-2, rtol=1e-2)
    for a, b in zip(runs[0], runs[1]):
        if a is not None:
            torch.testing.assert_close(b.float(), a.float(), **tol)


@gpu
@pytest.mark.parametrize("name", ["adam", "ademamix", "momentum", "rmsprop", "adagrad", "lion"])
def test_optimizer_8bit_matches_reference(name):
    ref = _ref_optimizers()
    n = 3 * 256 + 17
    blocks = -(-n // 256)
    rows = 2 if name == "ademamix" else 1
    two = name in ("adam", "lamb", "ademamix")
    q1, q2 = dynamic_map(True, "cuda"), dynamic_map(False, "cuda")
    runs = []
    for impl in (ref.optimizer_update_8bit_blockwise, _kernels().optimizer_update_8bit_blockwise):
        torch.manual_seed(6)
        p = torch.randn(n, device="cuda")
        s1 = torch.full((rows * n,), 127, dtype=torch.uint8, device="cuda")
        a1 = torch.zeros(rows * blocks, device="cuda")
        s2 = torch.zeros(n, dtype=torch.uint8, device="cuda") if two else None
        a2 = torch.zeros(blocks, device="cuda") if two else None
        for step in range(1, 4):
            g = torch.randn(n, device="cuda")
            h = _hparams(name)
            impl(name, g, p, s1, s2, h["beta1"], h["beta2"], h["beta3"], h["alpha"], h["eps"], step, 1e-3, q1,
                 q2 if two else None, a1, a2, 0.0, 1.0)  # fmt: skip
        runs.append((p, s1, a1, s2, a2))
    (p0, s10, a10, s20, a20), (p1, s11, a11, s21, a21) = runs
    torch.testing.assert_close(p1, p0, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(a11, a10, atol=1e-6, rtol=1e-4)
    # A state code may differ by one step where f32 rounding lands on a grid boundary.
    assert (s11.int() - s10.int()).abs().max() <= 1 and (s11 != s10).float().mean() < 0.01
    if two:
        assert (s21.int() - s20.int()).abs().max() <= 1 and (s21 != s20).float().mean() < 0.01


# ---- streams, devices, paged memory ---------------------------------------------------------


@gpu
def test_kernels_run_on_the_current_stream():
    A = torch.randn(1 << 20, device="cuda", dtype=torch.float16)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        packed, absmax = torch.ops.bitsandbytes.quantize_4bit(A, 64, "nf4", torch.uint8)
        out = torch.ops.bitsandbytes.dequantize_4bit(packed, absmax, 64, "nf4", list(A.shape), A.dtype)
    side.synchronize()
    want = ref_fourbit.dequantize_4bit(
        *ref_fourbit.quantize_4bit(A, 64, "nf4", torch.uint8), 64, "nf4", [A.numel()], A.dtype
    )
    assert torch.equal(out, want)


@gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_kernels_run_on_the_tensors_device():
    A = torch.randn(4096, device="cuda:1")
    with torch.cuda.device(0):
        packed, absmax = torch.ops.bitsandbytes.quantize_4bit(A, 64, "fp4", torch.uint8)
    assert packed.device == A.device
    want = ref_fourbit.quantize_4bit(A, 64, "fp4", torch.uint8)
    assert torch.equal(packed, want[0]) and torch.equal(absmax, want[1])


@gpu
def test_paged_tensor_roundtrip():
    from bitsandbytes_cuda import paged

    t = paged.empty_paged((1000,), torch.float32)
    t.fill_(2.0)
    paged.prefetch(t)
    torch.cuda.synchronize()
    paged.prefetch(t, to_cpu=True)
    torch.cuda.synchronize()
    assert t.is_paged and float(t.sum()) == 2000.0


@gpu
@pytest.mark.parametrize("name", ["AdamW8bit", "AdamW", "Lion8bit", "AdEMAMix8bit"])
def test_paged_optimizer_keeps_its_states_in_paged_memory_and_matches_the_unpaged_one(name):
    """The paged variant steps the same kernels over states in managed memory: the parameters
    equal the unpaged optimizer's bit for bit, and a state dict reads the finished update."""
    from bitsandbytes import functional as F

    paged_cls, plain_cls = getattr(bitsandbytes.optim, f"Paged{name}"), getattr(bitsandbytes.optim, name)
    w = torch.randn(512, 256, device="cuda")  # >= 1e5 elements: paged
    a, b = torch.nn.Parameter(w.clone()), torch.nn.Parameter(w.clone())
    paged_opt, plain_opt = paged_cls([a]), plain_cls([b])
    for _ in range(3):
        g = torch.randn_like(w)
        a.grad, b.grad = g.clone(), g.clone()
        paged_opt.step()
        plain_opt.step()
    assert paged_opt.state[a]["state1"].is_paged and paged_opt.state[a]["state1"].device.type == "cpu"
    assert torch.equal(a, b)
    saved = paged_opt.state_dict()["state"][0]["__bnb_optimizer_quant_state__"]["state1"]
    assert torch.equal(saved.to("cuda"), plain_opt.state[b]["state1"])
    buf = io.BytesIO()
    torch.save(paged_opt.state_dict(), buf)  # a checkpoint, as Trainer and accelerate write it
    loaded = torch.load(io.BytesIO(buf.getvalue()), weights_only=True)
    assert torch.equal(loaded["state"][0]["__bnb_optimizer_quant_state__"]["state1"], saved)
    assert F.GlobalPageManager.get_instance().paged_tensors  # registered for prefetch_all
