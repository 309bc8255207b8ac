"""The CPU library's native test drivers (platforms/cpu/tests/native) outside Python: built with
AddressSanitizer + UBSan, with ThreadSanitizer, and cross-built for aarch64 to run under qemu."""

from __future__ import annotations

import pathlib

import nox
from noxlib.common import ROOT


def _cmake_native_tests(session: nox.Session, build: pathlib.Path, *options: str) -> None:
    """Configure and build libbitsandbytes_cpu (no Python module) plus the C ABI test driver."""
    session.run(
        "cmake", "-S", str(ROOT / "platforms" / "cpu"), "-B", str(build), "-DBNB_BUILD_PYTHON=OFF",
        "-DBNB_BUILD_TESTS=ON", *options, external=True,
    )  # fmt: skip
    session.run("cmake", "--build", str(build), "-j2", external=True)


@nox.session(name="tests-cpu-sanitize", python=False, tags=["ci"])
def tests_cpu_sanitize(session: nox.Session) -> None:
    """The CPU library built with AddressSanitizer + UBSan, its C ABI test driver run on every ISA.

    Then the multi-threaded stress driver (tests-cpu-tsan's), a few seconds: memory errors under concurrency;
    and the allocation-failure sweep (tests/native/test_alloc_faults.cpp): every allocation site of the
    library made to fail in turn under every op, each in a fresh process, a few seconds."""
    build = pathlib.Path(session.create_tmp()) / "build-sanitize"
    _cmake_native_tests(session, build, "-DBNB_SANITIZE=ON", "-DCMAKE_BUILD_TYPE=RelWithDebInfo")
    env = {"ASAN_OPTIONS": "detect_leaks=1:abort_on_error=1", "UBSAN_OPTIONS": "print_stacktrace=1:halt_on_error=1"}
    session.run(str(build / "test_c_abi"), env=env, external=True)
    session.run(str(build / "test_threads"), env=env, external=True)
    session.run(str(build / "test_alloc_faults"), env=env, external=True)


@nox.session(name="tests-cpu-tsan", python=False, tags=["ci"])
def tests_cpu_tsan(session: nox.Session) -> None:
    """The CPU library built with ThreadSanitizer: the multi-threaded stress driver, then the C ABI driver.

    tests/native/test_threads.cpp runs every kernel family from four threads at once while another
    changes the instruction set and AMX, and checks every result bit for bit against a call made
    alone. The parallel loops run on the library's own thread pool (BNB_CPU_THREADS=pool; the drivers
    load no OpenMP runtime anyway): GNU libgomp is not built with TSan, and its threads would hide
    races from it. Arguments go to test_threads: [iterations] [forked cold starts] [forked settings races]."""
    build = pathlib.Path(session.create_tmp()) / "build-tsan"
    _cmake_native_tests(session, build, "-DBNB_SANITIZE_THREAD=ON", "-DCMAKE_BUILD_TYPE=RelWithDebInfo")
    env = {"BNB_CPU_THREADS": "pool", "TSAN_OPTIONS": "halt_on_error=1:second_deadlock_stack=1"}
    session.run(str(build / "test_threads"), *session.posargs, env=env, external=True)
    session.run(str(build / "test_c_abi"), env=env, external=True)


AARCH64_PACKAGES = ["g++-aarch64-linux-gnu", "qemu-user"]


@nox.session(name="tests-cpu-aarch64", python=False, tags=["ci"])
def tests_cpu_aarch64(session: nox.Session) -> None:
    """Cross-build the CPU library for aarch64 (NEON kernels) and run the C ABI test drivers under qemu-user.

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
    # The NEON kernels alone, then from four threads at once, then with each allocation failing in turn.
    for driver in ("test_c_abi", "test_threads", "test_alloc_faults"):
        session.run("qemu-aarch64", "-L", "/usr/aarch64-linux-gnu", str(build / driver), external=True)
