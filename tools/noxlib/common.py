"""What the nox sessions share: the torch requirement, the test dependencies, installing the
meta-package and the platform wheels (noxfile.py, and the sessions of tools/noxlib)."""

from __future__ import annotations

import os
import pathlib
import shutil

import nox

ROOT = pathlib.Path(__file__).resolve().parents[2]
TORCH = os.environ.get("BNB_TORCH_REQUIREMENT", "torch==2.13.0")
TEST_DEPS = ["pytest", "safetensors", "numpy", "hypothesis"]


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


INTEGRATION_DEPS = ["transformers", "peft", "accelerate", "safetensors", "pytest"]


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


ROCM_DIR = ROOT / "platforms" / "rocm"


def rocm_archs_for_this_gpu(session: nox.Session) -> str:
    """BNB_ROCM_ARCHS if set, else the gfx target of GPU 0 (one target builds fast)."""
    archs = os.environ.get("BNB_ROCM_ARCHS")
    if archs:
        return archs
    code = (
        "import torch; print(torch.cuda.get_device_properties(0).gcnArchName.split(':')[0] "
        "if torch.cuda.is_available() and torch.version.hip else '')"
    )
    found = session.run("python", "-c", code, silent=True, external=False) or ""
    return found.strip().splitlines()[-1] if found.strip() else ""


def install_rocm_platform(session: nox.Session) -> None:
    """Build and install the ROCm wheel for the GPU here (the hipcc on PATH names the ROCm major)."""
    env = {"BNB_ROCM_ARCHS": rocm_archs_for_this_gpu(session), "HIP_PLATFORM": "amd"}
    session.install("--no-deps", str(ROCM_DIR), env=env)


TRITON = os.environ.get("BNB_TRITON_REQUIREMENT", "triton==3.9.0")


BUILD_DEPS = ["scikit-build-core>=0.11", "pybind11>=2.12"]


def install_build_deps(session: nox.Session, *extra: str) -> None:
    """What a build without isolation needs; CMake and Ninja from PyPI only where the machine lacks them."""
    tools = [name for name in ("cmake", "ninja") if shutil.which(name) is None]
    session.install(*BUILD_DEPS, *tools, *extra)
