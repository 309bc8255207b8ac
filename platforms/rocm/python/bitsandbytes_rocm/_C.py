# ruff: noqa: N999  (the name the shared glue imports: `from . import _C`)
"""The pybind11 module of the kernel library that matches torch's ROCm major.

``bitsandbytes_rocm._C`` is what the shared glue (``kernels.py``, ``paged.py``) imports; it
re-exports ``_C_rocm<major>`` (bound to ``libbitsandbytes_rocm<major>.so``) for the major of
``torch.version.hip``, so the glue is the same file on CUDA and ROCm.
"""

from __future__ import annotations

import importlib

import torch

from . import check_runtime, hip_major, torch_runtime

_problem = check_runtime(torch_runtime(torch))
if _problem:
    raise ImportError(f"bitsandbytes_rocm: {_problem}")
_native = importlib.import_module(f"{__package__}._C_rocm{hip_major(torch.version.hip)}")
globals().update({k: v for k, v in vars(_native).items() if not k.startswith("__")})
