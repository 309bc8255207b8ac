"""What torch reports about its GPU runtime, in the established release's terms
(``bitsandbytes.cuda_specs``, spec §11.1). Nothing here runs a subprocess."""

from __future__ import annotations

import dataclasses
import functools

import torch


@dataclasses.dataclass(frozen=True)
class CUDASpecs:
    """The GPU runtime torch uses: the highest compute capability among its GPUs, and the CUDA
    (or, on a ROCm build of torch, HIP) version as a compact string (``"126"``, ``"72"``) and
    as a (major, minor) tuple."""

    highest_compute_capability: tuple[int, int]
    cuda_version_string: str
    cuda_version_tuple: tuple[int, int]

    @property
    def has_imma(self) -> bool:
        """True when the GPU has int8 tensor-core instructions (ROCm, or compute capability >= 7.5)."""
        return bool(torch.version.hip) or self.highest_compute_capability >= (7, 5)


def get_compute_capabilities() -> list[tuple[int, int]]:
    """The compute capability of every visible GPU, ascending."""
    return sorted(torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count()))


@functools.lru_cache(None)
def get_cuda_version_tuple() -> tuple[int, int] | None:
    """(major, minor) of torch's CUDA runtime, or of its HIP runtime on a ROCm build; None on a
    CPU build or when the version cannot be read."""
    version = torch.version.cuda or getattr(torch.version, "hip", None)
    if not version:
        return None
    parts = str(version).split(".")
    try:
        return int(parts[0]), int(parts[1])
    except (IndexError, ValueError):
        return None


def get_cuda_version_string() -> str | None:
    """The runtime version as the established library names spell it: ``"126"`` for 12.6."""
    version = get_cuda_version_tuple()
    return None if version is None else f"{version[0]}{version[1]}"


def get_cuda_specs() -> CUDASpecs | None:
    """The GPU runtime's specs, or None without a usable CUDA/ROCm GPU."""
    if not torch.cuda.is_available():
        return None
    try:
        capabilities = get_compute_capabilities()
        version = get_cuda_version_tuple()
    except Exception:  # a broken driver reports through torch.cuda.is_available() elsewhere
        return None
    if not capabilities or version is None:
        return None
    return CUDASpecs(
        highest_compute_capability=capabilities[-1],
        cuda_version_string=f"{version[0]}{version[1]}",
        cuda_version_tuple=version,
    )


def get_rocm_gpu_arch() -> str:
    """The gfx name of the first AMD GPU (``"gfx942"``), read from torch; ``"unknown"`` on a
    non-ROCm build or without a GPU."""
    if not getattr(torch.version, "hip", None) or not torch.cuda.is_available():
        return "unknown"
    try:
        name = torch.cuda.get_device_properties(0).gcnArchName
    except Exception:
        return "unknown"
    return str(name).split(":")[0] or "unknown"
