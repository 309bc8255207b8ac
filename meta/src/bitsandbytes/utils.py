"""Small helpers: JSON <-> tensor packing, 8-bit weight format names, outlier tracing, Linear swapping."""

from __future__ import annotations

import json
import logging
import shlex
import subprocess
from collections.abc import Callable, Sequence

import torch

logger = logging.getLogger(__name__)

LINEAR_8BIT_WEIGHTS_FORMAT_MAPPING: dict[str, int] = {"row": 0, "col32": 1, "col_turing": 2, "col_ampere": 3}
"""Name of an 8-bit weight layout -> the integer saved under ``weight_format`` in checkpoints."""

INVERSE_LINEAR_8BIT_WEIGHTS_FORMAT_MAPPING: dict[int, str] = {
    v: k for k, v in LINEAR_8BIT_WEIGHTS_FORMAT_MAPPING.items()
}


def pack_dict_to_tensor(source_dict: dict) -> torch.Tensor:
    """Serialize a JSON-able dict as a 1-D uint8 tensor of its UTF-8 JSON text (``json.dumps`` defaults)."""
    raw = json.dumps(source_dict).encode("utf-8")
    return torch.tensor(list(raw), dtype=torch.uint8)


def unpack_tensor_to_dict(tensor_data: torch.Tensor) -> dict:
    """Inverse of :func:`pack_dict_to_tensor`."""
    raw = bytes(tensor_data.detach().to("cpu", torch.uint8).reshape(-1).tolist())
    return json.loads(raw.decode("utf-8"))


def sync_gpu(t: torch.Tensor) -> None:
    """Wait for queued work on ``t``'s accelerator (CUDA or XPU); a no-op on CPU."""
    if t.device.type == "cuda":
        torch.cuda.synchronize(t.device)
    elif t.device.type == "xpu":
        torch.xpu.synchronize(t.device)


def execute_and_return(command_string: str) -> tuple[str, str]:
    """Run a command (no shell) and return its decoded ``(stdout, stderr)``."""
    proc = subprocess.run(shlex.split(command_string), capture_output=True, check=False)
    return proc.stdout.decode("utf-8", "replace").strip(), proc.stderr.decode("utf-8", "replace").strip()


def find_outlier_dims(
    weight: torch.Tensor, reduction_dim: int = 0, zscore: float = 4.0, topk: int | None = None, rdm: bool = False
) -> torch.Tensor:
    """Indices of the dimensions of ``weight`` whose standard deviation is an outlier.

    The std is taken along ``reduction_dim``; an index is an outlier when the z-score of its std
    exceeds ``zscore``, or (with ``topk``) it is among the ``topk`` largest; ``rdm`` picks ``topk``
    random indices instead (a baseline).
    """
    if rdm:
        if topk is None:
            raise ValueError("bitsandbytes: find_outlier_dims(rdm=True) needs topk, the number of indices to draw")
        # indices of the dimension the std keeps: the one that is not reduced
        kept = weight.shape[1 - reduction_dim % 2] if weight.dim() == 2 else weight.shape[1]
        return torch.randint(0, kept, size=(topk,), device=weight.device).long()
    std = weight.float().std(reduction_dim)
    stdm = std.mean()
    stdstd = std.std()
    z = (std - stdm) / stdstd
    if topk is not None:
        return torch.topk(std.abs(), k=topk, dim=0).indices
    return torch.where(z > zscore)[0]


class OutlierTracer:
    """Singleton that records, per ``nn.Linear`` weight, the input feature dimensions carrying outliers."""

    _instance: OutlierTracer | None = None

    def __init__(self) -> None:
        raise RuntimeError("Call get_instance() instead")

    def initialize(self, model: torch.nn.Module) -> None:
        """Hook every ``nn.Linear`` of ``model`` so its first forward records the outlier dimensions."""
        self.last_w: torch.Tensor | None = None
        self.current_outlier_dims = None
        self.hvalues: list[int] = []
        self.outliers: list[torch.Tensor] = []
        self.hvalue2outlier_idx: dict[int, torch.Tensor] = {}
        self.initialized = True
        self.hooks = []
        for _, m in model.named_modules():
            if isinstance(m, torch.nn.Linear):
                self.hooks.append(m.register_forward_pre_hook(outlier_hook))

    def is_initialized(self) -> bool:
        """Whether ``initialize(model)`` has been called."""
        return getattr(self, "initialized", False)

    def get_hvalue(self, weight: torch.Tensor) -> int:
        """Identity of a weight: the data pointer of its storage."""
        return weight.data.untyped_storage().data_ptr()

    def get_outliers(self, weight: torch.Tensor) -> torch.Tensor | None:
        """Outlier dimensions recorded for ``weight`` (None if it has not run yet)."""
        if not self.is_initialized():
            logger.warning("Outlier tracer is not initialized...")
            return None
        return self.hvalue2outlier_idx.get(self.get_hvalue(weight))

    @classmethod
    def get_instance(cls) -> OutlierTracer:
        if cls._instance is None:
            cls._instance = cls.__new__(cls)
        return cls._instance


def outlier_hook(module: torch.nn.Module, input: tuple) -> None:
    """Forward pre-hook used by :class:`OutlierTracer`.

    The first time a weight is seen, its outlier input dimensions are recorded under it: for the
    first traced layer from its input (the z-score of each row's std at 3, plus every feature
    with a magnitude above 6), for every later layer from its own weight. A weight seen again
    (the second forward) removes all the tracer's hooks.
    """
    tracer = OutlierTracer.get_instance()
    hvalue = tracer.get_hvalue(module.weight)
    if hvalue in tracer.hvalue2outlier_idx:
        for hook in tracer.hooks:
            hook.remove()
        return
    outlier_idx = find_outlier_dims(module.weight)
    tracer.outliers.append(outlier_idx)
    tracer.hvalues.append(hvalue)
    if len(tracer.outliers) > 1:
        if outlier_idx.numel() > 0:
            assert outlier_idx.max() < module.weight.shape[1]
        tracer.hvalue2outlier_idx[hvalue] = outlier_idx
        return
    # The first layer: its input is all there is to go on.
    merged = input[0].detach().reshape(-1, input[0].shape[-1])
    by_std = find_outlier_dims(merged, reduction_dim=1, zscore=3)
    by_magnitude = torch.where((merged.abs() > 6).sum(dim=0) > 0)[0]
    tracer.hvalue2outlier_idx[hvalue] = torch.cat([by_std, by_magnitude]).unique()


def replace_linear(
    model: torch.nn.Module,
    linear_replacement: Callable[..., torch.nn.Module],
    skip_modules: Sequence[str] = ("lm_head",),
    copy_weights: bool = False,
    post_processing_function: str | None = None,
) -> torch.nn.Module:
    """Recursively replace every ``nn.Linear`` child (except names in ``skip_modules``).

    The replacement is built as ``linear_replacement(in_features, out_features, has_bias)``. With
    ``copy_weights`` the old weight/bias Parameters are reused; ``post_processing_function`` names a
    method of the replaced (old) module, called as ``old_module.<name>(old_module)`` as the
    established release does (skipped when the old module has no such attribute).
    """
    for name, module in model.named_children():
        if len(list(module.children())) > 0:
            replace_linear(module, linear_replacement, skip_modules, copy_weights, post_processing_function)
        if isinstance(module, torch.nn.Linear) and name not in skip_modules:
            old_module = model._modules[name]
            model._modules[name] = linear_replacement(module.in_features, module.out_features, module.bias is not None)
            if copy_weights:
                model._modules[name].weight = old_module.weight
                model._modules[name].bias = old_module.bias
            if post_processing_function is not None:
                func = getattr(old_module, post_processing_function, None)
                if func is not None:
                    func(old_module)
    return model


__all__ = [
    "INVERSE_LINEAR_8BIT_WEIGHTS_FORMAT_MAPPING",
    "LINEAR_8BIT_WEIGHTS_FORMAT_MAPPING",
    "OutlierTracer",
    "execute_and_return",
    "find_outlier_dims",
    "outlier_hook",
    "pack_dict_to_tensor",
    "replace_linear",
    "sync_gpu",
    "unpack_tensor_to_dict",
]
