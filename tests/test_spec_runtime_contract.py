"""Spec §0 (version, import contract), §1.2 (import-time side effects), §11 (native library
selection, environment variables, `python -m bitsandbytes`) and Appendix B (quick conformance
checks), each statement checked on concrete values.

Import-time behaviour runs in subprocesses, so this process's own import state is untouched. Every
such check runs on the default path (the CPU platform wheel) and on the reference path
(`BNB_PLATFORMS=none`: no platform wheel, the pure-PyTorch kernels serve the CPU).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.metadata
import importlib.util
import json
import os
import platform
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch
from packaging.requirements import Requirement
from packaging.version import Version

import bitsandbytes as bnb
from bitsandbytes import __main__ as main_mod
from bitsandbytes import cextension, cuda_specs
from bitsandbytes.consts import DYNAMIC_LIBRARY_SUFFIX as SUFFIX
from bitsandbytes.cuda_specs import CUDASpecs
from bitsandbytes.diagnostics import cuda as dcuda

# The default path runs where the CPU wheel is installed (nox -s tests-cpu; tests-reference has the
# meta-package alone, and test_platforms.py checks that each session has what it expects).
PATHS = {"cpu-wheel": {}, "reference": {"BNB_PLATFORMS": "none"}}
if importlib.util.find_spec("bitsandbytes_cpu") is None:
    del PATHS["cpu-wheel"]
RULE = "=" * 60
RELATED = ["accelerate", "diffusers", "numpy", "pip", "peft", "safetensors", "transformers", "triton", "trl"]
NO_GPU = not torch.cuda.is_available()


def _run(args: list[str], env: dict[str, str] | None = None, **kw) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if not k.startswith("BNB_")}
    full.update(env or {})
    return subprocess.run([sys.executable, *args], env=full, capture_output=True, text=True, timeout=180, **kw)


# One subprocess per path gathers every fact; the tests below assert on them. scipy is made
# unimportable first (§0: the package must not need it), and the import runs with every warning
# shown and stdout/stderr captured (§0: a CPU-only import is silent).
PROBE = r"""
import contextlib, io, json, sys, warnings
sys.modules["scipy"] = None
out, err = io.StringIO(), io.StringIO()
with warnings.catch_warnings(record=True) as caught, contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
    warnings.simplefilter("always")
    import bitsandbytes as bnb
import torch
import bitsandbytes.functional as F
from bitsandbytes import _ops
facts = {"import_output": out.getvalue() + err.getvalue(), "import_warnings": [str(w.message) for w in caught]}
facts["wheel_modules"] = sorted({m.split(".")[0] for m in sys.modules if m.startswith("bitsandbytes_")})
facts["lazy_loaded"] = [m for m in ("cextension", "consts", "cuda_specs", "diagnostics") if "bitsandbytes." + m in sys.modules]
facts["impl"] = bnb.implementation("quantize_4bit", "cpu")
has = torch._C._dispatch_has_kernel_for_dispatch_key
facts["ops"] = list(_ops.OP_NAMES)
facts["dispatch"] = {k: [op for op in _ops.OP_NAMES if has("bitsandbytes::" + op, k)]
                     for k in ("Meta", "CompositeExplicitAutograd", "CPU", "CUDA", "XPU", "MPS", "HPU")}
facts["cpu_record"] = next((r for r in bnb.platforms() if r["platform"] == "cpu"), None)

def check(name):
    def wrap(fn):
        try:
            facts[name] = fn()
        except Exception as exc:
            facts[name] = {"error": repr(exc)}
    return wrap

@check("cext")
def _():
    from bitsandbytes import cextension as c, consts
    lib = c.lib
    try:
        lib.cquantize_blockwise_fp16()
        msg = None
    except RuntimeError as exc:
        msg = str(exc)
    dll = vars(lib).get("_lib")  # the stub answers any attribute
    return {"backend": c.BNB_BACKEND, "hip": c.HIP_ENVIRONMENT, "arch": c.ROCM_GPU_ARCH,
            "lib_class": type(lib).__name__, "lib_file": dll._name.rsplit("/", 1)[-1] if dll is not None else None,
            "missing_msg": msg, "package_dir": str(consts.PACKAGE_DIR), "url": consts.PACKAGE_GITHUB_URL,
            "bnb_dir": str(__import__("pathlib").Path(bnb.__file__).resolve().parent),
            "specs": repr(c.get_cuda_specs())}

@check("B1")
def _():
    return F.quantize_4bit(torch.tensor([1.0, -1.0] + [0.0] * 62), quant_type="nf4")[0][0].item()

torch.manual_seed(0)
x = torch.randn(64, 256, dtype=torch.float16)
q, s = F.quantize_4bit(x, blocksize=64, quant_type="nf4")

@check("B2")
def _():
    qn, sn = F.quantize_4bit(x, blocksize=64, quant_type="nf4", compress_statistics=True)
    return {"q": [list(q.shape), str(q.dtype)], "absmax": [list(s.absmax.shape), str(s.absmax.dtype)],
            "nested_absmax": [list(sn.absmax.shape), str(sn.absmax.dtype)], "state2_absmax": list(sn.state2.absmax.shape),
            "offset_is_mean": float(sn.offset) == float(s.absmax.mean()), "same_bytes": torch.equal(qn, q)}

@check("B3")
def _():
    qb, sb = F.quantize_4bit(x, blocksize=64, quant_type="nf4", quant_storage=torch.bfloat16)
    return {"q": [list(qb.shape), str(qb.dtype)], "bytes": torch.equal(qb.view(torch.uint8).flatten(), q.flatten()),
            "dequant": torch.equal(F.dequantize_4bit(qb, sb), F.dequantize_4bit(q, s))}

@check("B4")
def _():
    flat = q.flatten()
    nibbles = torch.stack([flat >> 4, flat & 0xF], 1).flatten().long()
    expected = (s.code[nibbles] * s.absmax.repeat_interleave(64)).reshape(x.shape).to(x.dtype)
    dq = F.dequantize_4bit(q, s)
    return [str(dq.dtype), list(dq.shape), torch.equal(dq, expected)]

@check("B5")
def _():
    a = torch.tensor([[127, 0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 3.5]], dtype=torch.float16)
    return F.int8_vectorwise_quant(a)[0].tolist()

@check("B6")
def _():
    layer = bnb.nn.Linear4bit(128, 48, quant_type="nf4").to("cpu")
    sd = layer.state_dict()
    blob = sd["weight.quant_state.bitsandbytes__nf4"]
    decoded = json.loads(bytes(blob.tolist()).decode("utf-8"))
    p = bnb.nn.Params4bit.from_prequantized(sd["weight"], {k[7:]: v for k, v in sd.items() if k.startswith("weight.")}, device="cpu")
    same = torch.equal(F.dequantize_4bit(p.data, p.quant_state), F.dequantize_4bit(layer.weight.data, layer.weight.quant_state))
    return {"keys": {k: [str(v.dtype), list(v.shape)] for k, v in sd.items()}, "order": list(sd), "json": decoded,
            "blob_is_json_dumps": blob.tolist() == list(json.dumps(decoded).encode("utf-8")), "from_prequantized": same}

@check("B7")
def _():
    layer = bnb.nn.Linear8bitLt(64, 32, has_fp16_weights=False)
    w = layer.weight.data.clone()
    sd = layer.to("cpu").state_dict()
    return {"keys": {k: [str(v.dtype), list(v.shape)] for k, v in sd.items()}, "order": list(sd),
            "weight_format": sd["weight_format"].item(), "scb": torch.equal(sd["SCB"], w.half().abs().amax(1).float())}

@check("B8")
def _():
    big, small = torch.nn.Parameter(torch.randn(64, 128)), torch.nn.Parameter(torch.randn(10))
    opt = bnb.optim.AdamW8bit([big, small])
    for _ in range(2):
        big.grad, small.grad = torch.randn_like(big), torch.randn_like(small)
        opt.step()
    st = opt.state_dict()["state"]
    return [{"step": [type(st[i]["step"]).__name__, st[i]["step"]], "keys": sorted(st[i]),
             "wrapped": {k: [str(v.dtype), list(v.shape)] for k, v in st[i]["__bnb_optimizer_quant_state__"].items()}}
            for i in (0, 1)]

@check("B9")
def _():
    w0 = torch.randn(32, 16)
    a, b = torch.nn.Parameter(w0.clone()), torch.nn.Parameter(w0.clone())
    oa = bnb.optim.Adam([a], lr=1e-3, weight_decay=0.1)
    ob = torch.optim.AdamW([b], lr=1e-3, weight_decay=0.1)
    for _ in range(5):
        g = torch.randn_like(w0)
        a.grad, b.grad = g.clone(), g.clone()
        oa.step(); ob.step()
    return [(a.detach() - b.detach()).abs().max().item(), torch.allclose(a.detach(), b.detach(), rtol=1e-7, atol=1e-7)]

print(json.dumps(facts))
"""


@functools.lru_cache(None)
def _facts(path: str) -> dict:
    proc = _run(["-c", PROBE], {**PATHS[path], "CUDA_VISIBLE_DEVICES": ""})
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.splitlines()[-1])


@pytest.fixture(params=list(PATHS))
def facts(request) -> dict:
    data = _facts(request.param)
    data["path"] = request.param
    return data


# ---- §0: version and import contract ---------------------------------------------------------


def test_version_is_pep440_and_passes_the_downstream_gates():
    version = importlib.metadata.version("bitsandbytes")
    assert str(Version(version)) == version and bnb.__version__ == version
    for gate in ("0.46.1", "0.48", "0.39.0", "0.37.2", "0.43.2", "0.48.0", "0.38.0"):  # transformers / accelerate
        assert Version(version) >= Version(gate)
    assert importlib.util.find_spec("bitsandbytes") is not None and hasattr(bnb.nn, "Linear4bit")  # peft


def test_declared_requirements():
    meta = importlib.metadata.metadata("bitsandbytes")
    assert meta["Requires-Python"] == ">=3.10"
    reqs = {r.name: r for r in map(Requirement, importlib.metadata.requires("bitsandbytes")) if r.marker is None}
    torch_req, packaging_req = reqs["torch"].specifier, reqs["packaging"].specifier
    assert "3.0" not in torch_req and "2.99" in torch_req  # < 3
    # torch >= 2.8 instead of the spec's 2.4: README ("tests-oldest-torch"), meta/pyproject.toml.
    assert "2.3" not in torch_req and "2.8.0" in torch_req
    assert "20.9" in packaging_req and "20.8" not in packaging_req


def test_import_is_silent_and_needs_no_scipy_nor_gpu(facts):
    assert facts["import_output"] == "" and facts["import_warnings"] == []
    assert "error" not in json.dumps(facts["B1"])  # quantization ran with scipy unimportable
    if facts["path"] == "reference":  # no compiled extension imported at all
        assert facts["wheel_modules"] == [] and facts["impl"] == "reference"
    else:
        assert facts["wheel_modules"] == ["bitsandbytes_cpu"] and facts["impl"] == "cpu"
    # §11 internals are imported on first use (README "Compatibility notes"), not by the import.
    assert facts["lazy_loaded"] == []


# ---- §1.2: import-time side effects ----------------------------------------------------------


def test_every_op_has_a_fake_and_a_default_kernel(facts):
    ops = facts["ops"]
    assert len(ops) >= 20 and "quantize_4bit" in ops
    assert facts["dispatch"]["Meta"] == ops  # fake kernels (torch.library.register_fake)
    assert facts["dispatch"]["CompositeExplicitAutograd"] == ops  # the pure-PyTorch default kernels


def test_cpu_kernels_and_no_kernels_for_absent_devices(facts):
    rec = facts["cpu_record"]
    if facts["path"] == "cpu-wheel":
        assert rec["status"] == "loaded" and set(facts["dispatch"]["CPU"]) == set(rec["ops"]) and rec["ops"]
    else:
        # BNB_PLATFORMS=none: the reference kernels serve the CPU through the default key
        # (ARCHITECTURE.md "Loading at import time", step 5), none under the CPU key.
        assert rec["status"] == "skipped" and rec["reason"] == "excluded by BNB_PLATFORMS"
        assert facts["dispatch"]["CPU"] == []
    for key in ("CUDA", "XPU", "MPS", "HPU"):  # CUDA_VISIBLE_DEVICES="" in the probe: no device
        assert facts["dispatch"][key] == [], key


def _fake_distribution(tmp_path: Path, body: str) -> dict[str, str]:
    dist = tmp_path / "bnb_probe_backend-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: bnb-probe-backend\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[bitsandbytes.backends]\nprobe = bnb_probe_backend:init\n")
    (tmp_path / "bnb_probe_backend.py").write_text(body)
    return {"PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}


def test_backend_entry_points_are_loaded_and_called_with_no_arguments(tmp_path):
    env = _fake_distribution(tmp_path, "CALLS = []\ndef init(*args, **kwargs):\n    CALLS.append((args, kwargs))\n")
    code = "import bitsandbytes, bnb_probe_backend; print(bnb_probe_backend.CALLS)"
    proc = _run(["-c", code], env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[((), {})]"


def test_a_failing_backend_entry_point_is_a_runtime_error(tmp_path):
    env = _fake_distribution(tmp_path, "def init():\n    raise ValueError('boom')\n")
    code = (
        "try:\n    import bitsandbytes\nexcept RuntimeError as exc:\n"
        "    print(type(exc.__cause__).__name__, str(exc))\nelse:\n    print('imported')"
    )
    proc = _run(["-c", code], env)
    assert proc.stdout.strip() == "ValueError bitsandbytes: failed to load backend probe: boom", proc.stderr


# ---- §11.1: library selection ----------------------------------------------------------------


def test_cextension_on_this_host(facts):
    cext = facts["cext"]
    assert cext["backend"] == "CPU" and cext["hip"] is False and cext["arch"] == "unknown"
    assert cext["specs"] == "None"  # get_cuda_specs() without a GPU
    assert cext["package_dir"] == cext["bnb_dir"]
    assert cext["url"] == "https://github.com/bitsandbytes-foundation/bitsandbytes"
    if facts["path"] == "cpu-wheel":
        assert cext["lib_class"] == "BNBNativeLibrary" and cext["lib_file"] == f"libbitsandbytes_cpu{SUFFIX}"
        assert cext["missing_msg"].startswith(
            "Method 'cquantize_blockwise_fp16' not available in CPU-only version of bitsandbytes."
        )
    else:  # the load failed, and import did not raise: calls explain instead
        assert cext["lib_class"] == "ErrorHandlerMockBNBNativeLibrary" and cext["lib_file"] is None
        assert cext["missing_msg"].endswith("Native code method attempted to call: lib.cquantize_blockwise_fp16()")
        assert "CPU binary not found" in cext["missing_msg"] and "excluded by BNB_PLATFORMS" in cext["missing_msg"]


@pytest.mark.parametrize("system,suffix", [("Linux", ".so"), ("Darwin", ".dylib"), ("Windows", ".dll")])
def test_dynamic_library_suffix_per_os(monkeypatch, system, suffix):
    monkeypatch.setattr(platform, "system", lambda: system)
    spec = importlib.util.spec_from_file_location("_consts_probe", Path(cextension.__file__).with_name("consts.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.DYNAMIC_LIBRARY_SUFFIX == suffix


def test_library_file_names_give_their_runtime_versions(monkeypatch, tmp_path):
    for name in ("cuda118", "cuda126", "cuda132", "rocm64", "rocm72", "rocm714", "cpu", "xpu2025"):
        (tmp_path / f"libbitsandbytes_{name}{SUFFIX}").write_bytes(b"")
    monkeypatch.setattr(cextension, "PACKAGE_DIR", tmp_path)
    monkeypatch.setattr(cextension, "_package_dir", lambda module: None)
    cuda = {v: p.name for v, p in cextension._find_cuda_libs("cuda", False).items()}
    assert cuda == {(11, 8): f"libbitsandbytes_cuda118{SUFFIX}", (12, 6): f"libbitsandbytes_cuda126{SUFFIX}",
                    (13, 2): f"libbitsandbytes_cuda132{SUFFIX}"}  # fmt: skip
    rocm = {v: p.name for v, p in cextension._find_cuda_libs("rocm", True).items()}
    assert rocm == {(6, 4): f"libbitsandbytes_rocm64{SUFFIX}", (7, 2): f"libbitsandbytes_rocm72{SUFFIX}",
                    (7, 14): f"libbitsandbytes_rocm714{SUFFIX}"}  # fmt: skip
    monkeypatch.setattr(torch.version, "hip", "7.14.0")
    monkeypatch.delenv("BNB_ROCM_VERSION", raising=False)
    assert cextension.get_cuda_bnb_library_path(CUDASpecs((9, 4), "714", (7, 14))).name == rocm[(7, 14)]
    assert cextension.parse_cuda_version("714") == "7.14"


@pytest.mark.parametrize("path", list(PATHS))
def test_a_malformed_override_never_breaks_import(path):
    code = (
        "import bitsandbytes as bnb\nfrom bitsandbytes import cextension as c\n"
        "print(c.BNB_BACKEND, type(c.lib).__name__, bnb.implementation('quantize_4bit', 'cpu'))"
    )
    env = {**PATHS[path], "BNB_CUDA_VERSION": "cu12.4", "BNB_ROCM_VERSION": "x", "CUDA_VISIBLE_DEVICES": ""}
    proc = _run(["-W", "default", "-c", code], env)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    expected = "CPU BNBNativeLibrary cpu" if path == "cpu-wheel" else "CPU ErrorHandlerMockBNBNativeLibrary reference"
    assert proc.stdout.strip() == expected


def test_backend_constants_follow_torch(monkeypatch):
    xpu = types.SimpleNamespace(is_available=lambda: False)
    monkeypatch.setattr(torch, "xpu", xpu, raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.version, "hip", None)
    assert cextension._backend() == "CPU"
    xpu.is_available = lambda: True
    assert cextension._backend() == "XPU"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert cextension._backend() == "CUDA"
    monkeypatch.setattr(torch.version, "hip", "7.2.0")
    assert cextension._backend() == "ROCm"
    props = types.SimpleNamespace(gcnArchName="gfx942:sramecc+:xnack-")
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: props)
    assert cuda_specs.get_rocm_gpu_arch() == "gfx942"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert cuda_specs.get_rocm_gpu_arch() == "unknown"


def test_cuda_specs_dataclass(monkeypatch):
    assert [f.name for f in dataclasses.fields(CUDASpecs)] == [
        "highest_compute_capability",
        "cuda_version_string",
        "cuda_version_tuple",
    ]
    spec = CUDASpecs((7, 0), "126", (12, 6))
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.cuda_version_string = "118"
    monkeypatch.setattr(torch.version, "hip", None)
    assert [CUDASpecs((c, m), "126", (12, 6)).has_imma for c, m in ((7, 0), (7, 2), (7, 5), (8, 0), (9, 0))] == [
        False,
        False,
        True,
        True,
        True,
    ]
    monkeypatch.setattr(torch.version, "hip", "6.4.0")
    assert spec.has_imma  # ROCm: always


def _runtime_dirs(tmp_path: Path, names: list[str]) -> dict[str, str]:
    dirs = {}
    for name in names:
        d = tmp_path / name.lower() / "lib"  # found in <dir>/lib as well as <dir>
        d.mkdir(parents=True)
        (d / "libcudart.so.12").write_bytes(b"")
        dirs[name] = str(d.parent)
    return dirs


def test_runtime_library_search_prefers_conda_and_ld_library_path(monkeypatch, tmp_path):
    ignored = ["HOME", "PATH", "PWD", "SHELL", "SSH_AUTH_SOCK", "SSH_CUSTOM", "XDG_DATA_DIRS", "XDG_OTHER", "TMUX"]
    env = _runtime_dirs(tmp_path, ["MY_TOOLKIT", "LD_LIBRARY_PATH", "CONDA_PREFIX", *ignored])
    env["NOT_A_PATH"] = "hello"
    monkeypatch.setattr(dcuda.os, "environ", env)
    monkeypatch.setattr(dcuda, "CUDA_RUNTIME_LIB_PATTERNS", ("libcudart*.so*",))
    found = [p.parent.parent.name for p in dcuda.find_cudart_libraries()]
    assert found == ["conda_prefix", "ld_library_path", "my_toolkit"]


def test_runtime_library_reached_twice_is_named_once(monkeypatch, tmp_path):
    """One file reached through two variables (and through a link) is one library, not a false
    "Found 2 runtime libraries" warning."""
    env = _runtime_dirs(tmp_path, ["LD_LIBRARY_PATH"])
    (tmp_path / "link").symlink_to(env["LD_LIBRARY_PATH"])
    env["CUDA_HOME"] = env["LD_LIBRARY_PATH"]
    env["MY_TOOLKIT"] = str(tmp_path / "link")
    monkeypatch.setattr(dcuda.os, "environ", env)
    monkeypatch.setattr(dcuda, "CUDA_RUNTIME_LIB_PATTERNS", ("libcudart*.so*",))
    found = list(dcuda.find_cudart_libraries())
    assert [p.parent.parent.name for p in found] == ["ld_library_path"]


def test_cuda_report_lists_the_runtime_libraries_it_finds(monkeypatch, tmp_path, capsys):
    """§11.2 "with CUDA: library-path ... checks": the report searches the environment (§11.1)."""
    env = _runtime_dirs(tmp_path, ["LD_LIBRARY_PATH"])
    monkeypatch.setenv("LD_LIBRARY_PATH", env["LD_LIBRARY_PATH"])
    monkeypatch.setattr(dcuda, "CUDA_RUNTIME_LIB_PATTERNS", ("libcudart*.so*",))
    monkeypatch.setattr(torch.version, "hip", None)
    monkeypatch.delenv("BNB_CUDA_VERSION", raising=False)
    monkeypatch.setattr(cuda_specs, "get_cuda_specs", lambda: CUDASpecs((9, 0), "128", (12, 8)))
    monkeypatch.setattr(cextension, "_find_cuda_libs", lambda prefix, is_hip: {})
    main_mod.print_backend_diagnostics({"devices": {"cpu": "CPU", "cuda": "simulated"}, "platforms": []})
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "PyTorch settings found: CUDA_VERSION=12.8, Highest Compute Capability: (9, 0)."
    assert f"* Found runtime library: {tmp_path / 'ld_library_path' / 'lib' / 'libcudart.so.12'}" in lines


# ---- §11.2: python -m bitsandbytes -----------------------------------------------------------


@pytest.mark.parametrize("path", list(PATHS))
def test_report_layout(path):
    proc = _run(["-m", "bitsandbytes", "--no-selftest"], {**PATHS[path], "CUDA_VISIBLE_DEVICES": ""})
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == f" bitsandbytes v{bnb.__version__} ".center(60, "=") and len(lines[0]) == 60
    head = [line.split(":")[0] for line in lines[1:7]]
    libc = ["  libc"] if sys.platform.startswith("linux") else []
    assert head == ["Platform", *libc, "Python", "PyTorch", "  CUDA", "  HIP", "  XPU"][:6]
    at = lines.index(f"PyTorch: {torch.__version__}")
    assert lines[at - 1] == f"Python: {platform.python_version()}"
    assert lines[at + 1] == f"  CUDA: {torch.version.cuda or 'N/A'}" and lines[at + 2] == "  HIP: N/A"
    assert lines[at + 3].startswith("  XPU: ") and lines[at + 4] == "Related packages:"
    related = lines[at + 5 : at + 5 + len(RELATED)]
    assert [r.split(":")[0].strip() for r in related] == RELATED
    for name, line in zip(RELATED, related):
        try:
            version = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            version = "not found"
        assert line == f"  {name}: {version}"
    assert lines[at + 5 + len(RELATED)] == RULE
    status = "loaded successfully" if path == "cpu-wheel" else "failed to load"
    assert lines[at + 6 + len(RELATED)] == f"No CUDA, ROCm, or XPU detected; CPU library {status}."


# ---- Appendix B ------------------------------------------------------------------------------


def test_b1_first_nf4_byte(facts):
    assert facts["B1"] == 0xF0


def test_b2_shapes_nesting_and_offset(facts):
    assert facts["B2"] == {
        "q": [[8192, 1], "torch.uint8"],
        "absmax": [[256], "torch.float32"],
        "nested_absmax": [[256], "torch.uint8"],
        "state2_absmax": [1],
        "offset_is_mean": True,
        "same_bytes": True,
    }


def test_b3_bf16_storage(facts):
    assert facts["B3"] == {"q": [[4096, 1], "torch.bfloat16"], "bytes": True, "dequant": True}


def test_b4_dequantize_is_code_times_absmax(facts):
    assert facts["B4"] == ["torch.float16", [64, 256], True]


def test_b5_int8_vectorwise_rounding(facts):
    assert facts["B5"] == [[127, 0, 2, 2, 0, -2, -2, 4]]


def test_b6_linear4bit_state_dict(facts):
    b6 = facts["B6"]
    keys = {
        "weight": ["torch.uint8", [3072, 1]],
        "bias": ["torch.float32", [48]],
        "weight.absmax": ["torch.uint8", [96]],
        "weight.quant_map": ["torch.float32", [16]],
        "weight.nested_absmax": ["torch.float32", [1]],
        "weight.nested_quant_map": ["torch.float32", [256]],
    }
    blob = b6["keys"].pop("weight.quant_state.bitsandbytes__nf4")
    assert b6["keys"] == keys and b6["order"] == [*keys, "weight.quant_state.bitsandbytes__nf4"]
    offset = b6["json"].pop("nested_offset")
    assert isinstance(offset, float) and 0 < offset < 1
    assert list(b6["json"]) == ["quant_type", "blocksize", "dtype", "shape", "nested_blocksize", "nested_dtype"]
    assert b6["json"] == {
        "quant_type": "nf4",
        "blocksize": 64,
        "dtype": "float32",
        "shape": [48, 128],
        "nested_blocksize": 256,
        "nested_dtype": "float32",
    }
    assert blob[0] == "torch.uint8" and 160 <= blob[1][0] <= 180  # 168 for the spec's offset
    assert b6["blob_is_json_dumps"] and b6["from_prequantized"]


def test_b7_linear8bitlt_state_dict(facts):
    b7 = facts["B7"]
    assert b7["order"] == ["weight", "bias", "SCB", "weight_format"]
    assert b7["keys"] == {
        "weight": ["torch.int8", [32, 64]],
        "bias": ["torch.float32", [32]],
        "SCB": ["torch.float32", [32]],
        "weight_format": ["torch.uint8", []],
    }
    assert b7["weight_format"] == 0 and b7["scb"] is True


def test_b8_adamw8bit_state(facts):
    big, small = facts["B8"]
    assert big["step"] == ["int", 2] and big["keys"] == ["__bnb_optimizer_quant_state__", "step"]
    assert big["wrapped"] == {
        "state1": ["torch.uint8", [64, 128]],
        "qmap1": ["torch.float32", [256]],
        "state2": ["torch.uint8", [64, 128]],
        "qmap2": ["torch.float32", [256]],
        "absmax1": ["torch.float32", [32]],
        "absmax2": ["torch.float32", [32]],
    }
    assert small["wrapped"] == {"state1": ["torch.float32", [10]], "state2": ["torch.float32", [10]]}


def test_b9_adam_weight_decay_is_decoupled(facts):
    max_diff, close = facts["B9"]
    assert max_diff <= 2.4e-7 and close  # 1e-7 relative and absolute: one f32 ulp at |w| in [1, 2) is 1.19e-7
