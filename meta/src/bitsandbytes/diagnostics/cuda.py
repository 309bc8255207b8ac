"""Where the CUDA / ROCm runtime libraries are on this machine (``bitsandbytes.diagnostics.cuda``)."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch

from ..cuda_specs import CUDASpecs
from .utils import print_dedented

logger = logging.getLogger(__name__)

CUDART_PATH_PREFERRED_ENVVARS = ("CONDA_PREFIX", "LD_LIBRARY_PATH")
"""Searched first, in this order."""

CUDART_PATH_IGNORED_ENVVARS = {
    "DBUS_SESSION_BUS_ADDRESS",
    "GOOGLE_VM_CONFIG_LOCK_FILE",
    "HOME",
    "LESSCLOSE",
    "LESSOPEN",
    "MAIL",
    "OLDPWD",
    "PATH",
    "PWD",
    "SHELL",
    "SSH_AUTH_SOCK",
    "SSH_TTY",
    "TMUX",
    "XDG_DATA_DIRS",
    "XDG_GREETER_DATA_DIR",
    "XDG_RUNTIME_DIR",
    "_",
}
"""Variables that hold paths but never a runtime library directory."""

CUDA_RUNTIME_LIB_PATTERNS = (
    ("libamdhip64.so*",)
    if getattr(torch.version, "hip", None)
    else (
        "cudart64*.dll",
        "libcudart*.so*",
        "nvcuda*.dll",
    )
)
"""File names of the runtime library (HIP on a ROCm build of torch, else CUDA)."""


def find_cuda_libraries_in_path_list(paths_list_candidate: str) -> Iterable[Path]:
    """Runtime libraries in the directories of an ``os.pathsep``-separated list (and their ``lib``)."""
    for entry in paths_list_candidate.split(os.pathsep):
        if not entry:
            continue
        for directory in (Path(entry), Path(entry) / "lib"):
            try:
                if not directory.is_dir():
                    continue
                for pattern in CUDA_RUNTIME_LIB_PATTERNS:
                    yield from (p for p in directory.glob(pattern) if p.is_file())
            except OSError:  # unreadable directory
                continue


def is_relevant_candidate_env_var(env_var: str, value: str) -> bool:
    """True for a variable that may name a library directory."""
    return (
        env_var in CUDART_PATH_PREFERRED_ENVVARS
        or (os.sep in value and env_var not in CUDART_PATH_IGNORED_ENVVARS)
        and not env_var.startswith(("SSH_", "XDG_", "BASH_FUNC"))
        and "\n" not in value
    )


def get_potentially_lib_path_containing_env_vars() -> dict[str, str]:
    """The environment variables worth searching for runtime libraries."""
    return {k: v for k, v in os.environ.items() if is_relevant_candidate_env_var(k, v)}


def find_cudart_libraries() -> Iterator[Path]:
    """Runtime libraries reachable through the environment, preferred variables first; a file
    reached through several variables or links is named once."""
    candidates = get_potentially_lib_path_containing_env_vars()
    ordered = [candidates.pop(name) for name in CUDART_PATH_PREFERRED_ENVVARS if name in candidates]
    seen: set[Path] = set()
    for value in [*ordered, *candidates.values()]:
        for path in find_cuda_libraries_in_path_list(value):
            try:
                real = path.resolve()
            except OSError:
                real = path
            if real not in seen:
                seen.add(real)
                yield path


def print_diagnostics(cuda_specs: CUDASpecs) -> None:
    """What the GPU runtime is, which kernel library fits it and whether it is installed, then
    the runtime libraries reachable through the environment (``print_runtime_diagnostics``)."""
    from ..cextension import HIP_ENVIRONMENT, get_cuda_bnb_library_path

    kind = "ROCm" if HIP_ENVIRONMENT else "CUDA"
    path = get_cuda_bnb_library_path(cuda_specs)
    major, minor = cuda_specs.cuda_version_tuple
    print(
        f"PyTorch settings found: {kind}_VERSION={major}.{minor}, Highest Compute Capability: "
        f"{cuda_specs.highest_compute_capability}."
    )
    if not path.exists():
        print_dedented(
            f"""
            Library not found: {path}. The {kind} platform wheel for this runtime is not installed;
            `python -m bitsandbytes` names the install command.
            """
        )
    print_runtime_diagnostics()


def print_runtime_diagnostics() -> None:
    """Every runtime library found through the environment; a warning when there are several."""
    from ..cextension import HIP_ENVIRONMENT

    found = list(find_cudart_libraries())
    if not found:
        kind = "HIP" if HIP_ENVIRONMENT else "CUDA"
        print(f"No {kind} runtime library found through the environment (torch brings its own).")
    elif len(found) > 1:
        print(f"Found {len(found)} runtime libraries; the first on the loader path wins:")
    for path in found:
        print(f"* Found runtime library: {path}")
