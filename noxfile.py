"""Developer and CI commands. CI runs `nox -t ci` (see README.md); each session is also usable alone.

The torch requirement comes from BNB_TORCH_REQUIREMENT (default: the local CPU build
``torch==2.13.0``); set it to e.g. ``torch`` or ``torch==2.13.0+cu128`` on a GPU machine.
"""

from __future__ import annotations

import os
import pathlib

import nox

ROOT = pathlib.Path(__file__).parent
TORCH = os.environ.get("BNB_TORCH_REQUIREMENT", "torch==2.13.0")
TEST_DEPS = ["pytest", "safetensors", "numpy"]

nox.options.default_venv_backend = "venv"
nox.options.error_on_missing_interpreters = False


def install_torch(session: nox.Session) -> None:
    """Install the torch requirement (a no-op when it is already satisfied)."""
    session.install(TORCH)


def install_meta(session: nox.Session) -> None:
    """The meta-package alone (its bitsandbytes-cpu dependency is installed separately)."""
    session.install("--no-deps", str(ROOT / "meta"))
    session.install("packaging")


def install_platform(session: nox.Session, platform: str) -> None:
    """Build and install one platform wheel from platforms/<platform>."""
    session.install("--no-deps", str(ROOT / "platforms" / platform))


@nox.session(name="tests-cpu", tags=["ci"])
def tests_cpu(session: nox.Session) -> None:
    """The whole suite with the meta-package and the bitsandbytes-cpu wheel installed."""
    install_torch(session)
    session.install(*TEST_DEPS)
    install_meta(session)
    install_platform(session, "cpu")
    session.run("pytest", "-m", "not slow and not integration", *session.posargs, env={"BNB_EXPECT_PLATFORMS": "cpu"})


@nox.session(name="tests-reference", tags=["ci"])
def tests_reference(session: nox.Session) -> None:
    """The same suite with the meta-package alone: the reference kernels serve every op."""
    install_torch(session)
    session.install(*TEST_DEPS)
    install_meta(session)
    session.run("pytest", "-m", "not slow and not integration", *session.posargs, env={"BNB_EXPECT_PLATFORMS": ""})


INTEGRATION_DEPS = ["transformers", "peft", "accelerate", "safetensors", "pytest"]


@nox.session(name="tests-integration", tags=["ci"])
def tests_integration(session: nox.Session) -> None:
    """transformers / peft / accelerate flows (4-bit, 8-bit, QLoRA) on a tiny local Llama; no hub access."""
    install_torch(session)
    # The torch requirement is passed along so that resolving the integrations never swaps torch.
    session.install(*INTEGRATION_DEPS, TORCH)
    install_meta(session)
    install_platform(session, "cpu")
    session.run("pytest", "-m", "integration", "tests/integration", *session.posargs)


@nox.session(name="tests-slow")
def tests_slow(session: nox.Session) -> None:
    """Long sweeps marked `slow` (not part of CI)."""
    install_torch(session)
    session.install(*TEST_DEPS)
    install_meta(session)
    install_platform(session, "cpu")
    session.run("pytest", "-m", "slow", *session.posargs)


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
        if not any(part in {".nox", "build", "dist"} or part.startswith("_skbuild") for part in p.parts)
    )
    if sources:
        session.run("clang-format", "--dry-run", "-Werror", *sources)


CUDA_DIR = ROOT / "platforms" / "cuda"


def cuda_archs_for_this_gpu(session: nox.Session) -> str:
    """BNB_CUDA_ARCHS if set, else the compute capability of GPU 0 (one architecture builds fast)."""
    archs = os.environ.get("BNB_CUDA_ARCHS")
    if archs:
        return archs
    code = "import torch; print(''.join(map(str, torch.cuda.get_device_capability(0))) if torch.cuda.is_available() else '')"
    found = session.run("python", "-c", code, silent=True, external=False) or ""
    return found.strip().splitlines()[-1] if found.strip() else ""


def install_cuda_platform(session: nox.Session) -> None:
    """Build and install the CUDA wheel for the GPU here (the toolkit's major names it)."""
    session.install("--no-deps", str(CUDA_DIR), env={"BNB_CUDA_ARCHS": cuda_archs_for_this_gpu(session)})


@nox.session(name="build-cuda", tags=["ci"])
def build_cuda(session: nox.Session) -> None:
    """Build the CUDA wheel with the local nvcc for one architecture, then check it without a GPU:
    every C ABI symbol exported, build info names toolkit and arch, no CUDA library inside."""
    arch = os.environ.get("BNB_CUDA_ARCHS", "90")
    out = pathlib.Path(session.create_tmp()) / "wheelhouse"
    if out.exists():
        for old in out.glob("*.whl"):
            old.unlink()
    session.install("pip")
    session.run(
        "python", "-m", "pip", "wheel", "--no-deps", "-w", str(out), str(CUDA_DIR), env={"BNB_CUDA_ARCHS": arch}
    )
    wheels = sorted(out.glob("bitsandbytes_cuda*.whl"))
    if len(wheels) != 1:
        session.error(f"expected one CUDA wheel in {out}, found {[w.name for w in wheels]}")
    arch_args = [a for part in arch.replace(",", ";").split(";") if part for a in ("--arch", part)]
    session.run("python", str(CUDA_DIR / "tools" / "check_wheel.py"), str(wheels[0]), *arch_args)


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


@nox.session(name="bench-cuda")
def bench_cuda(session: nox.Session) -> None:
    """bench/cuda_ops.py: the CUDA kernels against torch baselines measured in the same run."""
    install_torch(session)
    install_meta(session)
    install_platform(session, "cpu")
    install_cuda_platform(session)
    session.run("python", str(ROOT / "bench" / "cuda_ops.py"), *session.posargs)


@nox.session
def demo(session: nox.Session) -> None:
    """Install meta + cpu wheel, print the report and self-test, then run a small demo."""
    install_torch(session)
    install_meta(session)
    install_platform(session, "cpu")
    session.run("python", "-m", "bitsandbytes")
    session.run("python", str(ROOT / "examples" / "demo.py"))


@nox.session(name="bench-import")
def bench_import(session: nox.Session) -> None:
    """Import-time overhead of bitsandbytes over torch (meta + cpu wheel)."""
    install_torch(session)
    install_meta(session)
    install_platform(session, "cpu")
    session.run("python", str(ROOT / "bench" / "import_time.py"), *session.posargs)


@nox.session(name="bench-cpu-optim")
def bench_cpu_optim(session: nox.Session) -> None:
    """Time one step() of every bitsandbytes optimizer on 16.8 M parameters vs torch AdamW (CPU)."""
    install_torch(session)
    install_meta(session)
    session.run("python", str(ROOT / "bench" / "optim.py"), "--device", "cpu", *session.posargs)
