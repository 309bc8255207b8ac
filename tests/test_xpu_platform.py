"""bitsandbytes-xpu: the wheel's shape, its Triton check and loading, and what the conformance
suite does not reach (block sizes above one tile, the optimizers' clip / skip_zeros / gradient
scale / strided parameters, the reused gemm buffer, the nested-absmax cache).

The kernels run on CPU tensors in Triton's interpreter: ``nox -s tests-xpu-interpret`` sets
``TRITON_INTERPRET=1`` (and ``BNB_TEST_HOST_KERNELS=xpu`` for the conformance files).
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

import bitsandbytes
from bitsandbytes import _ops, _platforms
from bitsandbytes.backends.reference import KERNELS as REF
from bitsandbytes.backends.reference.codebooks import dynamic_map

xpu = pytest.importorskip("bitsandbytes_xpu")

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
needs_kernels = pytest.mark.skipif(
    not INTERPRET,
    reason="the Triton kernels run on CPU tensors only with TRITON_INTERPRET=1 (nox -s tests-xpu-interpret)",
)


def kernels():
    pytest.importorskip("triton")
    return xpu.host_kernels()


# ---- The wheel ------------------------------------------------------------------------------------


def test_wheel_shape():
    assert xpu.__version__ == bitsandbytes.__version__
    assert xpu.OP_INTERFACE_VERSION == 1 and 1 in _platforms.ACCEPTED_INTERFACE_VERSIONS
    assert xpu.DEVICE_TYPE == "xpu" and xpu.build_info()["kernels"] == "triton"


@needs_kernels
def test_a_kernel_for_every_op():
    """Every op of interface version 1; the reference serves the version-2 additions."""
    assert set(kernels()) == set(_ops.SCHEMAS) - set(_ops.ADDED_IN_VERSION_2)
    assert set(REF) == set(_ops.SCHEMAS)


def test_import_is_cheap():
    code = "import sys, bitsandbytes_xpu; bitsandbytes_xpu.build_info(); print('triton' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_check_runtime_refuses_missing_or_old_triton(monkeypatch):
    monkeypatch.setattr(xpu, "_triton_dist", lambda: None)
    msg = xpu.check_runtime(None)
    assert "Triton is not installed" in msg and "pip install" in msg and "download.pytorch.org/whl/xpu" in msg
    monkeypatch.setattr(xpu, "_triton_dist", lambda: ("pytorch-triton-xpu", "3.0.0"))
    msg = xpu.check_runtime(None)
    assert "pytorch-triton-xpu 3.0.0 is older than the 3.1" in msg and "pip install" in msg
    monkeypatch.setattr(xpu, "_triton_dist", lambda: ("pytorch-triton-xpu", "3.1.0+git1234"))
    assert xpu.check_runtime(None) is None


def test_triton_fix_names_torchs_own_pin(monkeypatch):
    reqs = ["filelock", 'pytorch-triton-xpu==3.4.0; platform_system == "Linux"']
    monkeypatch.setattr(xpu.importlib.metadata, "requires", lambda dist: reqs if dist == "torch" else None)
    assert (
        xpu._triton_fix() == 'pip install "pytorch-triton-xpu==3.4.0" --index-url https://download.pytorch.org/whl/xpu'
    )
    monkeypatch.setattr(xpu.importlib.metadata, "requires", lambda dist: ["filelock"])
    assert xpu._triton_fix().startswith('pip install "pytorch-triton-xpu>=3.1"')


def _runtime(with_xpu: bool) -> _platforms.Runtime:
    # Only the device under test (the loader would otherwise warn that the CPU lacks its wheel).
    devices = {"xpu": "Intel XPU, 1 device(s)"} if with_xpu else {"cpu": "CPU"}
    return _platforms.Runtime(torch.__version__, None, None, devices)


class _EntryPoint:
    name, module, dist = "xpu", "bitsandbytes_xpu", None

    def load(self):
        return xpu.register


def test_explain_without_an_xpu():
    why, fix = xpu.explain(_runtime(False))
    assert "sees no XPU device" in why and "Triton:" in why
    assert "download.pytorch.org/whl/xpu" in fix


def test_explain_with_an_xpu_torch_but_no_device(monkeypatch):
    monkeypatch.setattr(torch.version, "xpu", "20250101", raising=False)
    monkeypatch.setattr(xpu, "_triton_dist", lambda: ("pytorch-triton-xpu", "3.4.0"))
    why, fix = xpu.explain(_runtime(False))
    assert "no Intel GPU or driver found" in why and fix == "install the Intel GPU driver and its Level Zero runtime"
    monkeypatch.setattr(xpu, "_triton_dist", lambda: None)
    assert "pytorch-triton-xpu" in xpu.explain(_runtime(False))[1]


@needs_kernels
def test_loader_registers_every_op_for_xpu():
    result = _platforms.load(entry_points=[_EntryPoint()], runtime=_runtime(True), env={})
    try:
        rec = next(r for r in result.records if r.platform == "xpu")
        assert rec.status == "loaded", rec.reason
        assert rec.ops == sorted(set(_ops.SCHEMAS) - set(_ops.ADDED_IN_VERSION_2))
        assert result.implementation("gemv_4bit", "xpu") == "xpu"
    finally:
        result.close()


def test_loader_refuses_without_triton(monkeypatch):
    monkeypatch.setattr(xpu, "_triton_dist", lambda: None)
    with pytest.warns(_platforms.PlatformWarning, match="Triton is not installed"):
        result = _platforms.load(entry_points=[_EntryPoint()], runtime=_runtime(True), env={})
    rec = next(r for r in result.records if r.platform == "xpu")
    assert rec.status == "skipped" and "pip install" in rec.reason
    assert result.implementation("gemv_4bit", "xpu") == "reference"


def test_report_says_why_the_wheel_is_skipped():
    out = subprocess.run(
        [sys.executable, "-m", "bitsandbytes", "--no-selftest"], capture_output=True, text=True, check=False
    ).stdout
    if torch.xpu.is_available():
        pytest.skip("this machine has an XPU")
    line = next(ln for ln in out.splitlines() if "bitsandbytes-xpu" in ln or "bitsandbytes_xpu" in ln)
    assert "[skipped]" in line and "sees no XPU device" in line
    assert "download.pytorch.org/whl/xpu" in out


def test_cpu_tensors_need_the_interpreter():
    pytest.importorskip("triton")
    code = (
        "import os, torch; os.environ.pop('TRITON_INTERPRET', None); import bitsandbytes_xpu\n"
        "try:\n    bitsandbytes_xpu.host_kernels()['quantize_4bit'](torch.randn(64), 64, 'nf4', torch.uint8)\n"
        "except RuntimeError as e:\n    print(e)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert "TRITON_INTERPRET=1" in out.stdout


# ---- Kernels beyond the conformance suite -------------------------------------------------------


@needs_kernels
@pytest.mark.parametrize("blocksize", [5000, 12288])
def test_blockwise_blocks_larger_than_a_tile(blocksize):
    """Blocks above 4096 elements are read in slices (two passes); codes and absmax bit for bit."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2 * blocksize + 17, generator=g)
    x[blocksize + 3] = float("nan")
    code = dynamic_map()
    q, absmax = kernels()["quantize_blockwise"](x, code, blocksize)
    rq, rabsmax = REF["quantize_blockwise"](x, code, blocksize)
    assert torch.equal(q, rq)
    assert torch.equal(absmax.isnan(), rabsmax.isnan()) and torch.equal(absmax[0::2], rabsmax[0::2])
    out = kernels()["dequantize_blockwise"](q, rabsmax, code, blocksize, torch.bfloat16)
    ref = REF["dequantize_blockwise"](q, rabsmax, code, blocksize, torch.bfloat16)
    assert torch.equal(out.view(torch.int16), ref.view(torch.int16))


def _opt32_args(name, n, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    p = torch.randn(n, generator=g).to(dtype)
    grad = torch.randn(n, generator=g).to(dtype)
    grad[::5] = 0.0
    s1 = torch.rand((2 * n if name == "ademamix" else n), generator=g) * 0.1
    s2 = torch.rand(n, generator=g) * 0.1 if name in ("adam", "lamb", "ademamix") else None
    return grad, p, s1, s2


@needs_kernels
@pytest.mark.parametrize("name", ["lamb", "lars", "adam", "ademamix"])
@pytest.mark.parametrize("skip_zeros", [False, True])
def test_update_32bit_clip_skip_zeros_and_gnorm_scale(name, skip_zeros):
    """The trust-ratio clip (two launches), skip_zeros and gnorm_scale against the reference."""
    n = 3000  # three programs of 1024, the last partial
    results = []
    for fn in (kernels()["optimizer_update_32bit"], REF["optimizer_update_32bit"]):
        grad, p, s1, s2 = _opt32_args(name, n, torch.float32)
        unorm = torch.zeros(1)
        param_norm = float(p.norm())
        fn(name, grad, p, s1, s2, unorm, 0.001, param_norm, 0.9, 0.99, 0.999, 2.0, 1e-6, 0.01, 3, 0.5, 0.25,
           skip_zeros)  # fmt: skip
        results.append((p, s1, s2, unorm))
    (p, s1, s2, unorm), (rp, rs1, rs2, runorm) = results
    torch.testing.assert_close(unorm, runorm, rtol=1e-5, atol=0)
    torch.testing.assert_close(p, rp, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(s1, rs1, rtol=1e-6, atol=1e-7)
    if s2 is not None:
        torch.testing.assert_close(s2, rs2, rtol=1e-6, atol=1e-7)
    if skip_zeros:
        grad, p0, _, _ = _opt32_args(name, n, torch.float32)
        assert torch.equal(p[::5], p0[::5])


@needs_kernels
@pytest.mark.parametrize("name", ["adam", "momentum", "lion", "ademamix"])
def test_update_8bit_matches_reference_states(name):
    """Same inputs as the reference: the re-quantized 8-bit states and absmax are bit for bit the
    reference's, the parameter within f32 rounding; a strided bf16 parameter, gnorm_scale and
    skip_zeros on."""
    n = 1500
    rows = 2 if name == "ademamix" else 1
    two = name in ("adam", "ademamix")
    g = torch.Generator().manual_seed(1)
    base = torch.randn(n, 2, generator=g).to(torch.bfloat16)
    grad = torch.randn(n, generator=g).to(torch.bfloat16)
    grad[::7] = 0
    code1, code2 = dynamic_map(True), dynamic_map(False)
    s1 = torch.randn(rows * n, generator=g).abs() * 0.1
    q1, a1 = REF["quantize_blockwise"](s1, code1, 256)
    q2, a2 = REF["quantize_blockwise"](torch.rand(n, generator=g) * 0.1, code2, 256) if two else (None, None)
    out = []
    for fn in (kernels()["optimizer_update_8bit_blockwise"], REF["optimizer_update_8bit_blockwise"]):
        b = base.clone()
        p = b[:, 0]  # strided
        st = [q1.clone(), q2.clone() if two else None, a1.clone(), a2.clone() if two else None]
        fn(name, grad, p, st[0], st[1], 0.9, 0.99, 0.999, 2.0, 1e-6, 5, 1e-2, code1, code2 if two else None,
           st[2], st[3], 0.05, 0.5, True)  # fmt: skip
        out.append((b, st))
    (b, st), (rb, rst) = out
    torch.testing.assert_close(b.float(), rb.float(), rtol=1e-2, atol=1e-2)
    assert torch.equal(b[:, 1], base[:, 1])  # the other column is untouched
    for x, y in zip(st, rst):
        if y is not None:
            assert torch.equal(x, y)


@needs_kernels
def test_gemm_4bit_reused_buffer_and_gradients():
    """Large batches dequantize into a reused buffer: two weights in a row give their own
    results, and a call with gradients on gets a weight of its own."""
    k = kernels()["gemm_4bit"]
    g = torch.Generator().manual_seed(2)
    A = torch.randn(20, 64, generator=g)
    outs, weights = [], []
    for seed in (3, 4):
        W = torch.randn(24, 64, generator=torch.Generator().manual_seed(seed))
        packed, absmax = REF["quantize_4bit"](W, 64, "nf4", torch.uint8)
        weights.append((packed, [24, 64], absmax, 64, "nf4"))
        outs.append((k(A, *weights[-1]), REF["gemm_4bit"](A, *weights[-1])))
    for got, want in outs:
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    # The weight saved for backward survives a later large-batch call with another weight.
    Ag = A.clone().requires_grad_(True)
    y = k(Ag, *weights[0])
    k(A, *weights[1])
    y.sum().backward()
    W0 = REF["dequantize_4bit"](weights[0][0], weights[0][2], 64, "nf4", [24, 64], torch.float32)
    torch.testing.assert_close(Ag.grad, W0.sum(0).expand(20, 64), rtol=1e-5, atol=1e-5)


@needs_kernels
def test_nested_absmax_is_resolved_again_after_an_in_place_change():
    k = kernels()["gemm_4bit"]
    W = torch.randn(16, 64, generator=torch.Generator().manual_seed(5))
    packed, absmax = REF["quantize_4bit"](W, 64, "nf4", torch.uint8)
    offset = absmax.mean()
    code8 = torch.linspace(-1, 1, 256)
    a8, a_absmax = REF["quantize_blockwise"](absmax - offset, code8, 256)
    A = torch.randn(2, 64)
    first = k(A, packed, [16, 64], a_absmax, 64, "nf4", None, a8, code8, offset.view(1))
    a_absmax.mul_(2.0)  # an in-place change: the cached absmax must not be used
    second = k(A, packed, [16, 64], a_absmax, 64, "nf4", None, a8, code8, offset.view(1))
    want = REF["gemm_4bit"](A, packed, [16, 64], a_absmax, 64, "nf4", None, a8, code8, offset.view(1))
    torch.testing.assert_close(second, want, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(first, second)


@needs_kernels
def test_int8_linear_matmul_large_rows_uses_the_triton_kernel_exactly():
    g = torch.Generator().manual_seed(6)
    A = torch.randint(-128, 128, (40, 200), dtype=torch.int8, generator=g)
    B = torch.randint(-128, 128, (48, 200), dtype=torch.int8, generator=g)
    assert torch.equal(kernels()["int8_linear_matmul"](A, B), REF["int8_linear_matmul"](A, B))


def test_check_wheel_knows_the_pure_python_platform_wheel(tmp_path):
    """tools/check_wheel.py: the xpu wheel must be py3-none-any, hold no native code and depend on
    neither torch nor Triton (the wheelhouse session checks the real wheel)."""
    import pathlib
    import zipfile

    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "tools"))
    try:
        import check_wheel
    finally:
        sys.path.pop(0)
    version = check_wheel.repo_version()
    path = tmp_path / f"bitsandbytes_xpu-{version}-cp311-cp311-manylinux_2_28_x86_64.whl"
    info = f"bitsandbytes_xpu-{version}.dist-info"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(f"{info}/METADATA", f"Name: bitsandbytes-xpu\nVersion: {version}\nRequires-Dist: triton>=3.1\n")
        zf.writestr(f"{info}/WHEEL", "Root-Is-Purelib: false\nTag: cp311-cp311-manylinux_2_28_x86_64\n")
        zf.writestr(f"{info}/entry_points.txt", "[bitsandbytes.platforms]\nxpu = bitsandbytes_xpu:register\n")
        zf.writestr("bitsandbytes_xpu/_C.so", "")
    problems = "\n".join(check_wheel.check_wheel(path, version, None, []))
    for expected in (
        "a pure-Python platform wheel must be py3-none-any",
        "Root-Is-Purelib is false",
        "must not depend on torch or Triton (triton>=3.1)",
        "a pure-Python platform wheel contains native code: bitsandbytes_xpu/_C.so",
        "no bitsandbytes_xpu package",
    ):
        assert expected in problems, problems


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.view({1: torch.uint8, 2: torch.int16, 4: torch.int32}[t.element_size()])


def _cpu_kernel(op: str):
    owner = bitsandbytes._LOADED.kernels.get((op, "cpu"))
    if owner is None or owner[0] != "cpu":
        pytest.skip("bitsandbytes-cpu is not loaded")
    return owner[1]


@needs_kernels
@pytest.mark.parametrize("name", ["adam", "lamb", "momentum", "lars", "rmsprop", "adagrad", "lion", "ademamix"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_optimizers_bit_identical_to_the_cpu_wheel(name, dtype):
    """One update rule everywhere: the Triton kernels and bitsandbytes-cpu (which computes
    shared/include/bnb/optimizer_math.h) give the same bits for the parameter and every state,
    32-bit and 8-bit, with weight decay, gnorm_scale and skip_zeros."""
    n = 2000
    g = torch.Generator().manual_seed(7)
    grad = torch.randn(n, generator=g).to(dtype)
    grad[::9] = 0
    p0 = torch.randn(n, generator=g).to(dtype)
    rows = 2 if name == "ademamix" else 1
    two = name in ("adam", "lamb", "ademamix")
    s1 = torch.rand(rows * n, generator=g) * 0.1
    s2 = torch.rand(n, generator=g) * 0.1 if two else None
    hyper = (0.9, 0.99, 0.999, 2.0, 1e-6)
    got = []
    for fn in (kernels()["optimizer_update_32bit"], _cpu_kernel("optimizer_update_32bit")):
        st = [p0.clone(), s1.clone(), s2.clone() if two else None]
        fn(name, grad, st[0], st[1], st[2], None, 0.0, 0.0, *hyper, 0.05, 3, 1e-2, 0.5, True)
        got.append(st)
    for x, y in zip(*got):
        if y is not None:
            assert torch.equal(_bits(x), _bits(y))
    code1, code2 = dynamic_map(True), dynamic_map(False)
    q1, a1 = REF["quantize_blockwise"](s1, code1, 256)
    q2, a2 = REF["quantize_blockwise"](s2, code2, 256) if two else (None, None)
    got = []
    for fn in (kernels()["optimizer_update_8bit_blockwise"], _cpu_kernel("optimizer_update_8bit_blockwise")):
        st = [p0.clone(), q1.clone(), q2.clone() if two else None, a1.clone(), a2.clone() if two else None]
        fn(name, grad, st[0], st[1], st[2], *hyper, 4, 1e-2, code1, code2 if two else None, st[3], st[4], 0.05, 0.5,
           True)  # fmt: skip
        got.append(st)
    for x, y in zip(*got):
        if y is not None:
            assert torch.equal(_bits(x), _bits(y))


def test_every_kernel_compiles_for_a_gpu_with_exact_rounding():
    """The real Triton compiler (no GPU needed): every kernel variant the glue launches lowers to
    sm_90 machine code, with no approximate division or square root and no contracted
    multiply-add outside the optimizers (tests/xpu_compile_check.py)."""
    triton = pytest.importorskip("triton")
    backends = getattr(getattr(triton, "backends", None), "backends", {})
    if "nvidia" not in backends:
        pytest.skip("this triton has no NVIDIA backend to compile with")
    script = os.path.join(os.path.dirname(__file__), "xpu_compile_check.py")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, script], capture_output=True, text=True, env=env, timeout=900)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    assert "0 failures" in out.stdout
