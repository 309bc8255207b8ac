"""Drop-in compatibility with the established release's internals (spec §11) and idioms that
its users rely on: cextension / consts / cuda_specs / diagnostics, bnb.matmul with a prepared
MatmulLtState, the reference AdEMAMix."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import bitsandbytes as bnb
import bitsandbytes.functional as F
from bitsandbytes import cextension
from bitsandbytes.consts import DYNAMIC_LIBRARY_SUFFIX, PACKAGE_DIR
from bitsandbytes.cuda_specs import CUDASpecs, get_cuda_specs

SUFFIX = DYNAMIC_LIBRARY_SUFFIX


def spec(version: tuple[int, int]) -> CUDASpecs:
    return CUDASpecs((8, 6), f"{version[0]}{version[1]}", version)


# ---- cextension: library selection ------------------------------------------------------


@pytest.mark.parametrize(
    "runtime,libs,hip,expected,warns",
    [
        ((12, 4), {(12, 4): "cuda124"}, None, "cuda124", False),  # exact
        ((12, 0), {(12, 1): "cuda121", (12, 4): "cuda124"}, None, "cuda121", True),  # oldest newer
        ((12, 9), {(12, 4): "cuda124", (12, 8): "cuda128"}, None, "cuda128", True),  # newest older
        ((13, 0), {(12, 8): "cuda128", (13, 2): "cuda132"}, None, "cuda132", True),  # never another major
        ((7, 13), {(7, 2): "rocm72"}, "7.13.0", "rocm72", True),  # two-digit ROCm minor
        ((11, 8), {(12, 1): "cuda121"}, None, "cuda118", False),  # no same major: the exact path
        ((12, 9), {}, None, "cuda129", False),  # nothing installed: the exact path
    ],
)
def test_library_selection(monkeypatch, caplog, runtime, libs, hip, expected, warns):
    monkeypatch.delenv("BNB_CUDA_VERSION", raising=False)
    monkeypatch.delenv("BNB_ROCM_VERSION", raising=False)
    monkeypatch.setattr(torch.version, "hip", hip)
    fake = {v: Path(f"libbitsandbytes_{name}{SUFFIX}") for v, name in libs.items()}
    monkeypatch.setattr(cextension, "_find_cuda_libs", lambda prefix, is_hip: fake)
    with caplog.at_level(logging.WARNING):
        path = cextension.get_cuda_bnb_library_path(spec(runtime))
    assert path.name == f"libbitsandbytes_{expected}{SUFFIX}"
    assert bool(caplog.text) == warns
    if warns:
        assert ("BNB_ROCM_VERSION" if hip else "BNB_CUDA_VERSION") in caplog.text


@pytest.mark.parametrize("hip,variable,value", [(None, "BNB_CUDA_VERSION", "110"), ("7.0.0", "BNB_ROCM_VERSION", "72")])
def test_library_override(monkeypatch, caplog, hip, variable, value):
    monkeypatch.setattr(torch.version, "hip", hip)
    monkeypatch.setenv(variable, value)
    monkeypatch.setattr(cextension, "_find_cuda_libs", lambda prefix, is_hip: {})
    with caplog.at_level(logging.WARNING):
        path = cextension.get_cuda_bnb_library_path(spec((12, 0) if hip is None else (7, 0)))
    assert path == PACKAGE_DIR / f"libbitsandbytes_{'rocm' if hip else 'cuda'}{value}{SUFFIX}"
    assert variable in caplog.text


@pytest.mark.parametrize("value", ["12.4", "cu124", " 124"])
def test_library_override_must_be_digits(monkeypatch, value):
    monkeypatch.setattr(torch.version, "hip", None)
    monkeypatch.setenv("BNB_CUDA_VERSION", value)
    with pytest.raises(RuntimeError, match="BNB_CUDA_VERSION.*digits only"):
        cextension.get_cuda_bnb_library_path(spec((12, 0)))


def test_an_empty_library_override_counts_as_unset(monkeypatch):
    """`export BNB_CUDA_VERSION=` is how the established release tells users to switch the
    override off: the library is then chosen by torch's CUDA version, as without the variable."""
    monkeypatch.setattr(torch.version, "hip", None)
    monkeypatch.setattr(cextension, "_find_cuda_libs", lambda prefix, is_hip: {})
    monkeypatch.delenv("BNB_CUDA_VERSION", raising=False)
    unset = cextension.get_cuda_bnb_library_path(spec((12, 6)))
    monkeypatch.setenv("BNB_CUDA_VERSION", "")
    assert (
        cextension.get_cuda_bnb_library_path(spec((12, 6))) == unset == PACKAGE_DIR / f"libbitsandbytes_cuda126{SUFFIX}"
    )


def test_find_cuda_libs_reads_names_and_rocm_build_info(monkeypatch, tmp_path):
    (tmp_path / f"libbitsandbytes_cuda126{SUFFIX}").write_bytes(b"")
    (tmp_path / f"libbitsandbytes_cuda{SUFFIX}").write_bytes(b"")  # version from the loaded wheel only
    (tmp_path / f"libbitsandbytes_rocm6{SUFFIX}").write_bytes(b"")
    (tmp_path / "build_info_rocm6.json").write_text('{"hip_version": "6.4.43484"}')
    (tmp_path / f"libbitsandbytes_rocm7{SUFFIX}").write_bytes(b"")  # no build info: not listed
    monkeypatch.setattr(cextension, "PACKAGE_DIR", tmp_path)
    monkeypatch.setattr(cextension, "_package_dir", lambda module: None)
    assert cextension._find_cuda_libs("cuda", False) == {(12, 6): tmp_path / f"libbitsandbytes_cuda126{SUFFIX}"}
    assert cextension._find_cuda_libs("rocm", True) == {(6, 4): tmp_path / f"libbitsandbytes_rocm6{SUFFIX}"}
    monkeypatch.setattr(torch.version, "hip", None)
    assert cextension.get_available_cuda_binary_versions() == ["12.6"]
    assert cextension.parse_cuda_version("118") == "11.8" and cextension.parse_cuda_version("abc") == "abc"


# ---- cextension: what was loaded ----------------------------------------------------------


def test_backend_constants_describe_this_machine():
    assert cextension.BNB_BACKEND == ("CUDA" if torch.cuda.is_available() else "CPU")
    assert cextension.HIP_ENVIRONMENT is False
    assert cextension.ROCM_GPU_ARCH == "unknown"
    assert get_cuda_specs() is None if not torch.cuda.is_available() else get_cuda_specs() is not None
    assert CUDASpecs((7, 5), "126", (12, 6)).has_imma and not CUDASpecs((7, 0), "126", (12, 6)).has_imma


def test_lib_is_the_loaded_kernel_library_or_an_explaining_stub():
    lib = cextension.lib
    with pytest.raises(RuntimeError) as err:
        lib.cquantize_blockwise_fp16(None)
    if bnb.implementation("quantize_4bit", "cpu") == "cpu":
        assert isinstance(lib, cextension.BNBNativeLibrary) and not lib.compiled_with_cuda
        assert lib.bnb_abi_version() >= 1  # a real C function of the CPU wheel
        assert lib["bnb_abi_version"] is lib.bnb_abi_version
        assert "Method 'cquantize_blockwise_fp16' not available in CPU-only version" in str(err.value)
    else:  # meta-package alone
        assert isinstance(lib, cextension.ErrorHandlerMockBNBNativeLibrary)
        assert str(err.value).endswith("lib.cquantize_blockwise_fp16()")
        assert "bitsandbytes-cpu" in str(err.value) and "python -m bitsandbytes" in str(err.value)


def test_error_stub_defers_until_called():
    stub = cextension.ErrorHandlerMockBNBNativeLibrary("libfoo.so: cannot open shared object file")
    fn = stub.anything  # attribute access never raises
    stub.other = 1  # nor does assignment
    with pytest.raises(RuntimeError, match=r"cannot open shared object file[\s\S]*lib\.anything\(\)$"):
        fn()


def test_cuda_specs_report_the_highest_capability_of_several_gpus(monkeypatch):
    """With GPUs of different generations the specs name the newest one's capability (the
    library choice and ``has_imma`` read it), whatever the device order."""
    from bitsandbytes import cuda_specs

    caps = {0: (8, 6), 1: (7, 0), 2: (9, 0), 3: (7, 5)}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: len(caps))
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda i: caps[i])
    monkeypatch.setattr(cuda_specs, "get_cuda_version_tuple", lambda: (12, 8))
    assert cuda_specs.get_compute_capabilities() == [(7, 0), (7, 5), (8, 6), (9, 0)]
    assert get_cuda_specs() == CUDASpecs((9, 0), "128", (12, 8))


@pytest.mark.parametrize("cls", [cextension.BNBNativeLibrary, cextension.ErrorHandlerMockBNBNativeLibrary])
def test_library_handles_invent_no_dunder_attributes(cls):
    """A handle answers any C function name, but not Python's special names: ``copy`` and
    protocol probes (``__array__``, ``__len__``) see an ordinary object."""
    import copy
    import ctypes

    handle = cls(ctypes.CDLL(None)) if cls is cextension.BNBNativeLibrary else cls("no library")
    assert not hasattr(handle, "__array__") and not hasattr(handle, "__len__")
    assert callable(handle.some_c_function)
    clone = copy.copy(handle)
    assert type(clone) is cls and clone.__dict__ == handle.__dict__


def test_internal_modules_are_lazy_and_cheap():
    code = (
        "import sys, bitsandbytes as bnb\n"
        "lazy = ['cextension', 'consts', 'cuda_specs', 'diagnostics']\n"
        "assert not any(f'bitsandbytes.{m}' in sys.modules for m in lazy), sys.modules.keys()\n"
        "assert bnb.cextension.BNB_BACKEND and bnb.consts.PACKAGE_DIR and bnb.cuda_specs.CUDASpecs\n"
        "import bitsandbytes.diagnostics.main\nassert bnb.adam is bnb.optim.adam and bnb.diagnostics.main.main\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_diagnostics(capsys, monkeypatch):
    from bitsandbytes.diagnostics import cuda as dcuda
    from bitsandbytes.diagnostics.main import sanity_check, show_environment
    from bitsandbytes.diagnostics.utils import print_dedented, print_header

    show_environment()
    out = capsys.readouterr().out
    assert out.startswith(f" bitsandbytes v{bnb.__version__} ".center(60, "="))
    assert "PyTorch: " + torch.__version__ in out and "Related packages:" in out
    sanity_check()
    print_header("x", width=9)
    print_dedented("\n    a\n      b\n")
    assert capsys.readouterr().out == "=== x ===\na\n  b\n"
    monkeypatch.setenv("LD_LIBRARY_PATH", "/nonexistent-a:/nonexistent-b")
    assert dcuda.is_relevant_candidate_env_var("LD_LIBRARY_PATH", "/x")
    assert not dcuda.is_relevant_candidate_env_var("HOME", "/root")
    assert list(dcuda.find_cuda_libraries_in_path_list("/nonexistent-a:/nonexistent-b")) == []


# ---- bnb.matmul with a prepared MatmulLtState ----------------------------------------------


def _prepared(weight: torch.Tensor, threshold: float) -> bnb.MatmulLtState:
    state = bnb.MatmulLtState()
    state.has_fp16_weights = False
    state.is_training = False
    state.threshold = threshold
    state.CB, state.SCB, _ = F.int8_vectorwise_quant(weight.half())
    return state


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("threshold", [0.0, 3.0])
@pytest.mark.parametrize("use_bias", [False, True])
@pytest.mark.parametrize("orientation", ["int8", "int8_t", "fp16"])
def test_matmul_takes_the_weight_from_a_prepared_state(dtype, threshold, use_bias, orientation):
    g = torch.Generator().manual_seed(0)
    N, K = 24, 40
    weight = torch.randn(N, K, generator=g)
    A = (torch.randn(3, 5, K, generator=g) * 2).to(dtype).requires_grad_()
    bias = torch.randn(N, generator=g).to(dtype).requires_grad_() if use_bias else None
    state = _prepared(weight, threshold)
    B = {"int8": state.CB, "int8_t": state.CB.t(), "fp16": weight.half()}[orientation]

    out = bnb.matmul(A, B, state=state, threshold=threshold, bias=bias)
    assert out.shape == (3, 5, N) and out.dtype == dtype

    # The oracle: the same int8 weight passed as B with a fresh state holding its scales.
    expected_state = _prepared(weight, threshold)
    A2 = A.detach().clone().requires_grad_()
    bias2 = None if bias is None else bias.detach().clone().requires_grad_()
    expected = bnb.matmul(A2, expected_state.CB, state=expected_state, threshold=threshold, bias=bias2)
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    W = (state.CB.float() * state.SCB[:, None] / 127).to(dtype)
    ref = torch.nn.functional.linear(A.detach(), W, None if bias is None else bias.detach())
    torch.testing.assert_close(out.detach().float(), ref.float(), rtol=0.05, atol=0.25)

    grad = torch.randn(out.shape, generator=g).to(dtype)
    out.backward(grad)
    expected.backward(grad)
    torch.testing.assert_close(A.grad, A2.grad, rtol=0, atol=0)
    torch.testing.assert_close(A.grad.float(), (grad.float() @ W.float()).to(dtype).float(), rtol=0.02, atol=0.05)
    if bias is not None:
        torch.testing.assert_close(bias.grad, bias2.grad)


def test_matmul_prepared_state_checks_in_features():
    state = _prepared(torch.randn(8, 16), 0.0)
    with pytest.raises(ValueError, match=r"state\.CB\.shape\[1\] \(16\)"):
        bnb.matmul(torch.randn(2, 8, dtype=torch.float16), state.CB.t(), state=state)
    with pytest.raises(ValueError, match=r"B\.shape\[1\] \(16\)"):
        bnb.matmul(torch.randn(2, 8, dtype=torch.float16), torch.randn(8, 16, dtype=torch.float16))
