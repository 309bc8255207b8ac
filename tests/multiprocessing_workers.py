"""Child-process bodies of tests/test_multiprocessing.py (importable by spawned and forkserver
children).

* ``serve``: one long-lived spawned process answering requests from a queue (``keep`` an object
  sent to it, run a layer it keeps, step an optimizer from a state dict sent to it, ``torch.load``
  a whole model), so that one start (seconds) serves several checks. Replies are plain pickles
  (bytes): the child may exit before the parent reads them, so they hold copies, not shared
  memory.
* ``hogwild_train``: a LoRA adapter over a shared NF4 base trained in place by several processes.
* ``FeatureDataset``: DataLoader workers running quantized layers (feature extraction).
"""

from __future__ import annotations

import pickle
import traceback
import warnings
from typing import Any

import torch
from torch import nn

import bitsandbytes as bnb

# ------------------------------------------------------------------------------ inputs and models


def inputs(seed: int, n: int = 4, k: int = 32, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A fixed input batch."""
    return torch.randn(n, k, generator=torch.Generator().manual_seed(seed)).to(dtype)


class QuantNet(nn.Module):
    """NF4 (double-quantized and not) and LLM.int8() layers in a row, float32 in and out."""

    def __init__(self) -> None:
        super().__init__()
        self.a = bnb.nn.Linear4bit(32, 48, quant_type="nf4", compress_statistics=True, compute_dtype=torch.float32)
        self.b = bnb.nn.Linear4bit(48, 40, quant_type="nf4", compress_statistics=False, compute_dtype=torch.float32)
        self.c = bnb.nn.Linear8bitLt(40, 16, has_fp16_weights=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.b(torch.relu(self.a(x))))
        return self.c(h.half()).float()


def quant_net(seed: int) -> QuantNet:
    """A quantized QuantNet (the move quantizes), the same for the same seed."""
    torch.manual_seed(seed)
    return QuantNet().to("cpu")


class LoraNet(nn.Module):
    """A frozen NF4 base with a trainable LoRA adapter."""

    def __init__(self) -> None:
        super().__init__()
        self.base = bnb.nn.Linear4bit(32, 24, quant_type="nf4", compute_dtype=torch.float32)
        self.base.requires_grad_(False)
        self.lora_A = nn.Linear(32, 4, bias=False)
        self.lora_B = nn.Linear(4, 24, bias=False)
        nn.init.normal_(self.lora_B.weight, std=0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.lora_B(self.lora_A(x))


def describe(obj: Any) -> dict[str, Any]:
    """What a quantized parameter or layer holds: class, quant state or row scales (copies)."""
    if isinstance(obj, nn.Module):
        if not isinstance(getattr(obj, "weight", None), torch.Tensor):
            return {"cls": type(obj).__name__}
        out: dict[str, Any] = {"cls": type(obj).__name__, "weight": describe(obj.weight)}
        if isinstance(obj, bnb.nn.Linear8bitLt):
            out["state_SCB"] = None if obj.state.SCB is None else obj.state.SCB.clone()
        return out
    out = {"cls": type(obj).__name__, "dtype": obj.dtype, "shape": tuple(obj.shape), "data": obj.data.clone()}
    if isinstance(obj, bnb.nn.Params4bit):
        qs = obj.quant_state
        out.update(
            bnb_quantized=obj.bnb_quantized,
            module=type(obj.module).__name__ if obj.module is not None else None,
            quant_state=None if qs is None else {k: v for k, v in qs.as_dict().items()},
        )
    for name in ("CB", "SCB", "has_fp16_weights"):
        if hasattr(obj, name):
            value = getattr(obj, name)
            out[name] = value.clone() if isinstance(value, torch.Tensor) else value
    cb = getattr(obj, "CB", None)
    out["CB_is_data"] = isinstance(cb, torch.Tensor) and cb.data_ptr() == obj.data_ptr()
    return out


# ----------------------------------------------------------------------------- the served process


def serve(requests: Any, replies: Any) -> None:
    """Answer ``(function name, args)`` requests with ``("ok", result)`` or ``("error", traceback)``
    (pickled bytes) until a None request; the functions get the dict of kept objects first."""
    kept: dict[str, Any] = {}
    while True:
        request = requests.get(timeout=120)
        if request is None:
            return
        name, args = request
        try:
            reply = ("ok", globals()[name](kept, *args))
        except BaseException:  # noqa: B036 - report everything to the parent
            reply = ("error", traceback.format_exc())
        replies.put(pickle.dumps(reply))


def keep(kept: dict[str, Any], key: str, obj: Any) -> dict[str, Any]:
    """Keep ``obj`` (as it arrived) under ``key``; describe it."""
    kept[key] = obj
    return describe(obj)


def run(kept: dict[str, Any], key: str, x: torch.Tensor, quantize: bool = False) -> dict[str, Any]:
    """Run the kept layer on ``x`` twice (the second call may take a prepared runner), moving it to
    the CPU first where ``quantize``; describe it after."""
    layer = kept[key]
    if quantize:
        layer.to("cpu")
    with torch.no_grad():
        first = layer(x).clone()
        second = layer(x).clone()
    return {"out": first, "again": second, "after": describe(layer)}


OPTIMIZERS = ("Adam8bit", "PagedAdamW8bit", "Lion8bit")


def make_optimizer(name: str, seed: int) -> tuple[list[nn.Parameter], torch.optim.Optimizer]:
    """Parameters (8-bit states: a 2-d one of 40 blocks, a 1-d one with a partial block, a small one)
    and a bitsandbytes 8-bit optimizer of class ``name`` over them."""
    torch.manual_seed(seed)
    params = [nn.Parameter(torch.randn(64, 40)), nn.Parameter(torch.randn(300)), nn.Parameter(torch.randn(8))]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # (paged optimizers without a paging provider)
        return params, getattr(bnb.optim, name)(params, lr=1e-2, min_8bit_size=0)


def optimizer_step(params: list[nn.Parameter], opt: torch.optim.Optimizer, step: int) -> None:
    """One step with fixed gradients for ``step``."""
    g = torch.Generator().manual_seed(100 + step)
    for p in params:
        p.grad = torch.randn(p.shape, generator=g)
    opt.step()


def continue_optimizer(
    kept: dict[str, Any], name: str, values: list[torch.Tensor], state_dict: dict[str, Any], step: int
) -> tuple[list[torch.Tensor], dict[str, Any]]:
    """A new optimizer of class ``name`` (other initial values, replaced by ``values``) loads
    ``state_dict`` and takes step ``step``; its parameters and state dict after."""
    params, opt = make_optimizer(name, seed=1)
    with torch.no_grad():
        for p, v in zip(params, values):
            p.copy_(v)
    opt.load_state_dict(state_dict)
    optimizer_step(params, opt, step)
    return [p.detach().clone() for p in params], opt.state_dict()


def load_and_run(kept: dict[str, Any], path: str, x: torch.Tensor) -> dict[str, Any]:
    """``torch.load`` a whole pickled model in this (fresh) process and run it on ``x``."""
    model = torch.load(path, weights_only=False)
    with torch.no_grad():
        out = model(x)
    return {"out": out, "layers": {n: describe(m) for n, m in model.named_children()}}


# ------------------------------------------------------------------------------ other children


def forked_forward(model: nn.Module, x: torch.Tensor, go: Any, replies: Any) -> None:
    """Wait for ``go``, run ``model`` on ``x``, reply with the output (pickled bytes)."""
    if not go.wait(60):
        return
    with torch.no_grad():
        replies.put(pickle.dumps(model(x)))


def hogwild_train(rank: int, model: LoraNet, steps: int, optimizer: str) -> None:
    """Train ``model``'s adapter in place (its parameters in shared memory), ``rank``'s batches."""
    torch.set_num_threads(1)
    params = [p for p in model.parameters() if p.requires_grad]
    if optimizer == "sgd":
        opt: torch.optim.Optimizer = torch.optim.SGD(params, lr=0.05)
    else:
        opt = bnb.optim.Adam8bit(params, lr=1e-2, min_8bit_size=0)
    g = torch.Generator().manual_seed(rank)
    for _ in range(steps):
        loss = (model(torch.randn(8, 32, generator=g)) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()


class FeatureDataset(torch.utils.data.Dataset):
    """Items are features of a fixed input under a quantized NF4 layer and an LLM.int8() layer that
    is quantized where the dataset is first used (``.to("cpu")`` in the worker)."""

    def __init__(self, seed: int) -> None:
        torch.manual_seed(seed)
        self.nf4 = bnb.nn.Linear4bit(32, 16, quant_type="nf4", compute_dtype=torch.float32).to("cpu")
        self.int8 = bnb.nn.Linear8bitLt(32, 16, has_fp16_weights=False)  # not quantized yet
        self.ready = False

    def __len__(self) -> int:
        return 10

    def __getitem__(self, i: int) -> torch.Tensor:
        if not self.ready:
            self.int8.to("cpu")
            self.ready = True
        x = inputs(i, n=1)
        with torch.no_grad():
            return torch.cat([self.nf4(x), self.int8(x.half()).float()], dim=1)[0]
