"""The native library, described in the established release's terms (``bitsandbytes.cextension``,
spec §11.1).

Here the kernels live in platform wheels (``bitsandbytes-cpu``, ``-cuda13x``, ``-rocm``, ...)
that ``bitsandbytes._platforms`` loaded at import. This module reports what was loaded in the
vocabulary that user code and test suites written for the established release read:
``BNB_BACKEND``, ``HIP_ENVIRONMENT``, ``ROCM_GPU_ARCH``, ``lib`` (the loaded kernel library, or
an object whose calls raise with troubleshooting text) and the library-selection rule
``get_cuda_bnb_library_path``. It is imported on first use (``bitsandbytes.cextension``), never
by ``import bitsandbytes`` itself, and runs no subprocess.
"""

from __future__ import annotations

import ctypes
import importlib.util
import json
import logging
import os
import re
from pathlib import Path
from typing import Any

import torch

from .consts import DYNAMIC_LIBRARY_SUFFIX, PACKAGE_DIR, PACKAGE_GITHUB_URL
from .cuda_specs import CUDASpecs, get_cuda_specs, get_cuda_version_tuple, get_rocm_gpu_arch

logger = logging.getLogger(__name__)

_GPU_PACKAGES = {"cuda": "bitsandbytes_cuda", "rocm": "bitsandbytes_rocm"}


def _package_dir(module: str) -> Path | None:
    """Where an installed platform package lives, found without importing it."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _split_version(digits: str, is_hip: bool) -> tuple[int, int]:
    """``"126"`` -> (12, 6) for CUDA (two-digit majors); ``"72"`` / ``"713"`` -> (7, 2) / (7, 13)
    for ROCm (one-digit majors). ValueError when the digits do not hold a minor."""
    cut = 1 if is_hip else 2
    if len(digits) <= cut:
        raise ValueError(f"{digits!r} names no minor version")
    return int(digits[:cut]), int(digits[cut:])


def _loaded_cuda_toolkit() -> tuple[int, int] | None:
    """The CUDA toolkit (major, minor) the CUDA wheel was built with, from the loader's record."""
    import bitsandbytes

    for rec in bitsandbytes._LOADED.records:
        toolkit = rec.build_info.get("cuda_toolkit") if rec.platform.startswith("cuda") else None
        if toolkit:
            major, minor = (int(p) for p in str(toolkit).split(".")[:2])
            return major, minor
    return None


def _find_cuda_libs(prefix: str, is_hip: bool) -> dict[tuple[int, int], Path]:
    """Every installed CUDA (``prefix="cuda"``) or ROCm (``"rocm"``) kernel library, keyed by the
    runtime version (major, minor) it was built for.

    Libraries named as the established release names them (``libbitsandbytes_cuda126.so``) are
    read from their names. The ROCm wheel's per-major libraries (``libbitsandbytes_rocm6.so``)
    take their minor from the ``build_info_rocm6.json`` beside them; the CUDA wheel's single
    ``libbitsandbytes_cuda.so`` takes its version from the loaded wheel's build info."""
    found: dict[tuple[int, int], Path] = {}
    dirs = [PACKAGE_DIR]
    wheel_dir = _package_dir(_GPU_PACKAGES[prefix])
    if wheel_dir is not None:
        dirs.append(wheel_dir)
    pattern = re.compile(rf"^libbitsandbytes_{prefix}(\d*){re.escape(DYNAMIC_LIBRARY_SUFFIX)}$")
    for directory in dirs:
        for path in sorted(directory.glob(f"libbitsandbytes_{prefix}*{DYNAMIC_LIBRARY_SUFFIX}")):
            match = pattern.match(path.name)
            if match is None:
                continue
            digits = match.group(1)
            try:
                if digits and not (is_hip and len(digits) == 1):
                    found[_split_version(digits, is_hip)] = path
                elif digits:  # libbitsandbytes_rocm<major>: the HIP version it was built with
                    info = json.loads((path.parent / f"build_info_rocm{digits}.json").read_text())
                    major, minor = (int(p) for p in str(info["hip_version"]).split(".")[:2])
                    found[(major, minor)] = path
                else:
                    version = _loaded_cuda_toolkit()
                    if version is not None:
                        found[version] = path
            except (OSError, KeyError, ValueError):
                continue
    return found


def get_cuda_bnb_library_path(cuda_specs: CUDASpecs) -> Path:
    """The kernel library for the GPU runtime described by ``cuda_specs``.

    ``BNB_CUDA_VERSION`` (``BNB_ROCM_VERSION`` on a ROCm build of torch), digits only, names the
    library outright (``124`` -> ``libbitsandbytes_cuda124``), with a logged warning and no
    fallback; an empty value counts as unset; any other value is a RuntimeError. Otherwise: the library built for exactly the
    runtime's version; else the newest older one of the same major; else the oldest newer one
    of the same major (both with a logged warning); never another major. When nothing fits,
    the path of the exact version is returned, which does not exist, so that loading it fails
    with a clear "not found"."""
    is_hip = bool(getattr(torch.version, "hip", None))
    prefix, kind, variable = ("rocm", "ROCm", "BNB_ROCM_VERSION") if is_hip else ("cuda", "CUDA", "BNB_CUDA_VERSION")
    override = os.environ.get(variable)
    if override:  # set but empty is unset: the established release tells users to `export VAR=`
        if not (override.isascii() and override.isdigit()):  # str.isdigit() also takes "²", "١٢٤"
            raise RuntimeError(
                f"{variable}={override!r}: the value must be digits only, e.g. '124' for {kind} 12.4 "
                f"(unset {variable} to choose automatically)"
            )
        name = f"libbitsandbytes_{prefix}{override}{DYNAMIC_LIBRARY_SUFFIX}"
        logger.warning(
            "%s=%s is set: loading %s instead of choosing by the %s version torch uses. "
            "If that is not what you want: unset %s (or set it to an empty string)",
            variable,
            override,
            name,
            kind,
            variable,
        )
        return PACKAGE_DIR / name

    exact = PACKAGE_DIR / f"libbitsandbytes_{prefix}{cuda_specs.cuda_version_string}{DYNAMIC_LIBRARY_SUFFIX}"
    available = _find_cuda_libs(prefix, is_hip)
    runtime = tuple(cuda_specs.cuda_version_tuple)
    if runtime in available:
        return available[runtime]
    same_major = [v for v in available if v[0] == runtime[0]]
    older = [v for v in same_major if v < runtime]
    newer = [v for v in same_major if v > runtime]
    if not older and not newer:
        return exact
    chosen = max(older) if older else min(newer)
    logger.warning(
        "No bitsandbytes kernel library built for %s %d.%d; loading the one built for %s %d.%d "
        "instead (set %s to choose another).",
        kind,
        runtime[0],
        runtime[1],
        kind,
        chosen[0],
        chosen[1],
        variable,
    )
    return available[chosen]


def get_available_cuda_binary_versions() -> list[str]:
    """The runtime versions (``"12.8"``, ``"7.2"``) of the installed GPU kernel libraries."""
    is_hip = bool(getattr(torch.version, "hip", None))
    found = _find_cuda_libs("rocm" if is_hip else "cuda", is_hip)
    return [f"{major}.{minor}" for major, minor in sorted(found)]


def parse_cuda_version(version_str: str) -> str:
    """A compact version from a library name (``"118"``, ``"713"``) as dotted text; other text as is."""
    if version_str.isdigit():
        try:
            major, minor = _split_version(version_str, bool(getattr(torch.version, "hip", None)))
            return f"{major}.{minor}"
        except ValueError:
            pass
    return version_str


class BNBNativeLibrary:
    """A loaded kernel library (``ctypes.CDLL``). Its C functions are attributes; a name the
    library lacks is still an attribute, whose call raises a RuntimeError naming it."""

    compiled_with_cuda = False

    def __init__(self, lib: ctypes.CDLL, platform: str = "cpu") -> None:
        self._lib = lib
        self.platform = platform

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        fn = getattr(self._lib, name, None)
        if fn is not None:
            return fn

        def missing(*args: Any, **kwargs: Any) -> Any:
            if self.platform == "cpu":
                raise RuntimeError(
                    f"Method '{name}' not available in CPU-only version of bitsandbytes.\n"
                    "Install the platform wheel of your GPU (python -m bitsandbytes names it), e.g. "
                    'pip install "bitsandbytes[cuda13x]". The library\'s functions are listed in bnb_c_api.h.'
                )
            raise RuntimeError(
                f"Method '{name}' is not part of the bitsandbytes C ABI of {self.platform} "
                "(bnb_c_api.h lists its functions); use torch.ops.bitsandbytes or bitsandbytes.functional."
            )

        return missing

    def __getitem__(self, name: str) -> Any:
        return self.__getattr__(name)


class CudaBNBNativeLibrary(BNBNativeLibrary):
    """The CUDA or ROCm wheel's kernel library."""

    compiled_with_cuda = True


class ErrorHandlerMockBNBNativeLibrary(BNBNativeLibrary):
    """Stands in for a kernel library that could not be loaded: any attribute exists, and calling
    it raises a RuntimeError with what went wrong, how to fix it, and the attempted call."""

    def __init__(self, error_msg: str) -> None:
        self.error_msg = error_msg
        self.platform = "none"
        self.formatted_error = (
            "Attempted to use a bitsandbytes native library function, but no kernel library is loaded.\n\n"
            f"{error_msg}\n\n"
            "The operations of bitsandbytes.functional and torch.ops.bitsandbytes still work: the\n"
            "reference kernels serve every device where no platform wheel is loaded.\n\n"
            "Run `python -m bitsandbytes` for what was detected, what was loaded and why, and the\n"
            f"exact install command. If that does not help, open an issue at {PACKAGE_GITHUB_URL}/issues\n"
            "with its full output.\n\n"
        )

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)

        def throw_on_call(*args: Any, **kwargs: Any) -> Any:
            raise RuntimeError(f"{self.formatted_error}Native code method attempted to call: lib.{name}()")

        return throw_on_call


def _backend() -> str:
    if getattr(torch.version, "hip", None):
        return "ROCm"
    if torch.cuda.is_available():
        return "CUDA"
    xpu = getattr(torch, "xpu", None)
    if xpu is not None and xpu.is_available():
        return "XPU"
    return "CPU"


BNB_BACKEND: str = _backend()
"""``"CPU"``, ``"CUDA"``, ``"ROCm"`` or ``"XPU"``: the runtime the kernels serve, as torch reports it."""

HIP_ENVIRONMENT: bool = BNB_BACKEND == "ROCm"
"""True on a ROCm build of torch."""

ROCM_GPU_ARCH: str = get_rocm_gpu_arch()
"""The first AMD GPU's gfx name, or ``"unknown"``."""


def get_native_library() -> BNBNativeLibrary:
    """The kernel library serving this machine's accelerator (CUDA / ROCm), else the CPU wheel's.
    Raises RuntimeError, naming the fix, when the platform wheel for the runtime is not loaded."""
    import bitsandbytes

    device = {"CUDA": "cuda", "ROCm": "cuda", "XPU": "xpu"}.get(BNB_BACKEND, "cpu")
    records = [r for r in bitsandbytes._LOADED.records if r.device_type == device]
    loaded = next((r for r in records if r.status == "loaded"), None)
    if loaded is None:
        why = "; ".join(f"bitsandbytes-{r.platform}: {r.status} ({r.reason})" for r in records) or "none found"
        fixes = sorted({r.fix for r in records if r.fix})
        raise RuntimeError(
            f"{BNB_BACKEND} binary not found: no bitsandbytes platform wheel is loaded for {device} ({why})."
            + (f" Fix: {fixes[0]}" if fixes else "")
        )
    if device == "xpu":
        raise RuntimeError("the XPU wheel's kernels are Triton kernels; there is no native library to load")
    if loaded.platform == "cpu":
        package, name = "bitsandbytes_cpu", f"libbitsandbytes_cpu{DYNAMIC_LIBRARY_SUFFIX}"
    elif loaded.platform == "rocm":
        package, name = "bitsandbytes_rocm", f"libbitsandbytes_rocm{(get_cuda_version_tuple() or (0,))[0]}"
        name += DYNAMIC_LIBRARY_SUFFIX
    else:
        package, name = "bitsandbytes_cuda", f"libbitsandbytes_cuda{DYNAMIC_LIBRARY_SUFFIX}"
    directory = _package_dir(package)
    if directory is None or not (directory / name).exists():
        raise RuntimeError(f"{BNB_BACKEND} binary not found: {name} is missing from {directory or package}")
    dll = ctypes.CDLL(str(directory / name))
    cls = BNBNativeLibrary if loaded.platform == "cpu" else CudaBNBNativeLibrary
    return cls(dll, loaded.platform)


try:
    lib: BNBNativeLibrary = get_native_library()
except Exception as exc:  # never raise at import: the calls explain instead
    if BNB_BACKEND not in ("CPU", "XPU"):
        logger.error("bitsandbytes library load error: %s", exc)
    lib = ErrorHandlerMockBNBNativeLibrary(str(exc))

__all__ = [
    "BNB_BACKEND",
    "HIP_ENVIRONMENT",
    "ROCM_GPU_ARCH",
    "BNBNativeLibrary",
    "CUDASpecs",
    "CudaBNBNativeLibrary",
    "ErrorHandlerMockBNBNativeLibrary",
    "get_available_cuda_binary_versions",
    "get_cuda_bnb_library_path",
    "get_cuda_specs",
    "get_native_library",
    "lib",
    "parse_cuda_version",
]
