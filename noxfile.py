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


@nox.session(name="bench-cpu")
def bench_cpu(session: nox.Session) -> None:
    """bitsandbytes-cpu op by op vs PyTorch's CPU kernels (dense, int4pack, int8pack, fused AdamW), 1 and 2 threads."""
    install_torch(session)
    install_meta(session)
    install_platform(session, "cpu")
    session.run("python", str(ROOT / "bench" / "cpu_ops.py"), *session.posargs)


def _cmake_native_tests(session: nox.Session, build: pathlib.Path, *options: str) -> None:
    """Configure and build libbitsandbytes_cpu (no Python module) plus the C ABI test driver."""
    session.run(
        "cmake", "-S", str(ROOT / "platforms" / "cpu"), "-B", str(build), "-DBNB_BUILD_PYTHON=OFF",
        "-DBNB_BUILD_TESTS=ON", *options, external=True,
    )  # fmt: skip
    session.run("cmake", "--build", str(build), "-j2", external=True)


@nox.session(name="tests-cpu-sanitize", python=False, tags=["ci"])
def tests_cpu_sanitize(session: nox.Session) -> None:
    """The CPU library built with AddressSanitizer + UBSan, its C ABI test driver run on every ISA."""
    build = pathlib.Path(session.create_tmp()) / "build-sanitize"
    _cmake_native_tests(session, build, "-DBNB_SANITIZE=ON", "-DCMAKE_BUILD_TYPE=RelWithDebInfo")
    env = {"ASAN_OPTIONS": "detect_leaks=1:abort_on_error=1", "UBSAN_OPTIONS": "print_stacktrace=1:halt_on_error=1"}
    session.run(str(build / "test_c_abi"), env=env, external=True)


AARCH64_PACKAGES = ["g++-aarch64-linux-gnu", "qemu-user"]


@nox.session(name="tests-cpu-aarch64", python=False, tags=["ci"])
def tests_cpu_aarch64(session: nox.Session) -> None:
    """Cross-build the CPU library for aarch64 (NEON kernels) and run the C ABI test driver under qemu-user.

    Installs Debian's cross compiler and qemu-user with apt-get when they are missing (CI runs as root)."""
    import shutil

    if not (shutil.which("aarch64-linux-gnu-g++") and shutil.which("qemu-aarch64")):
        session.run("apt-get", "update", external=True)
        session.run("apt-get", "install", "-y", "--no-install-recommends", *AARCH64_PACKAGES, external=True)
    build = pathlib.Path(session.create_tmp()) / "build-aarch64"
    _cmake_native_tests(
        session, build, "-DCMAKE_SYSTEM_NAME=Linux", "-DCMAKE_SYSTEM_PROCESSOR=aarch64",
        "-DCMAKE_C_COMPILER=aarch64-linux-gnu-gcc", "-DCMAKE_CXX_COMPILER=aarch64-linux-gnu-g++",
    )  # fmt: skip
    session.run("qemu-aarch64", "-L", "/usr/aarch64-linux-gnu", str(build / "test_c_abi"), external=True)
