"""The C ABI's enum values for dtypes and 4-bit quant types (``bnb/bnb_c_api.h``), shared by the
kernel glue modules (a module of its own so that ``kernels`` and ``amx``, which imports nothing
else of this package's, can both use it)."""

from __future__ import annotations

import torch

DTYPE_CODE = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}
QUANT_CODE = {"fp4": 0, "nf4": 1}
