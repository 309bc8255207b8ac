"""``Int8Params``: a weight that quantizes itself to LLM.int8() rows (int8 codes ``CB``, row scales
``SCB``) on its first move to a device, with the checks it makes there.

``bitsandbytes.nn.modules`` re-exports it; pickles name ``_rebuild_int8params`` there.
"""

from __future__ import annotations

import copy
from typing import Any

import torch

from .. import functional as F
from ._params import _APPLYING, _check_device_has_kernels, _check_no_grad_for_codes, loaded_value


def _bare_index_without_accelerator(args: tuple, kwargs: dict) -> bool:
    """Whether ``.to(*args, **kwargs)`` names its device by a bare index (``.to(0)``) on a machine
    without an accelerator (see ``_index_on_host_without_accelerator``)."""
    index = args[0] if args else kwargs.get("device")
    return type(index) is int and not torch.accelerator.is_available()


def _index_on_host_without_accelerator(args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """``Int8Params.to(0)`` on a machine without an accelerator: the host (torch raises).

    accelerate quantizes an 8-bit weight that is to stay in (or be offloaded to) CPU memory with
    ``Int8Params(...).to(0).to("cpu")`` and then moves ``CB``/``SCB`` to the CPU: it means
    "quantize on the compute device, keep the result on the host". Where no accelerator exists the
    CPU is that device, so a bare device index is read as the CPU; with an accelerator, and for
    every other argument, ``Tensor.to``'s own parsing applies unchanged."""
    if not _bare_index_without_accelerator(args, kwargs):
        return args, kwargs
    if args:
        return ("cpu", *args[1:]), kwargs
    return args, {**kwargs, "device": "cpu"}


INT8_CHUNK_BYTES = 2**20
"""Bytes of float16 rows that ``Int8Params`` converts at a time when it quantizes a bf16 / f32
weight in CPU memory (see ``_int8_quantize_rows``)."""


def _int8_quantize_rows(W: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """``int8_vectorwise_quant(W.to(device, float16))``'s codes and row scales (LLM.int8() quantizes
    the weight in float16, as the established release does).

    For a weight quantized in CPU memory that is not float16 already, the float16 conversion runs
    a block of rows (``INT8_CHUNK_BYTES``) at a time into the codes: the quantization is row-wise,
    so the result is the same bits, but the flow no longer holds a float16 copy of the whole
    weight beside it (4096x14336 bf16: a peak of 3.0x the codes' size, now 1.03-1.05x)."""
    whole = W.dtype == torch.float16 or W.dim() < 2 or 2 * W.numel() <= INT8_CHUNK_BYTES  # (incl. empty)
    if whole or device.type != "cpu" or W.device.type != "cpu":
        CB, SCB, _ = F.int8_vectorwise_quant(W.contiguous().to(device=device, dtype=torch.float16))
        return CB, SCB
    W = W.contiguous()
    rows = W.reshape(-1, W.shape[-1])
    step = max(1, INT8_CHUNK_BYTES // (2 * rows.shape[1]))
    CB = torch.empty(rows.shape, dtype=torch.int8)
    SCB = torch.empty(rows.shape[0], dtype=torch.float32)
    half = torch.empty((step, rows.shape[1]), dtype=torch.float16)  # one buffer: no allocator churn
    for i in range(0, rows.shape[0], step):
        block = rows[i : i + step]
        h = half[: block.shape[0]]
        h.copy_(block)  # the conversion .to(torch.float16) makes
        cb, scb, _ = F.int8_vectorwise_quant(h)
        CB[i : i + step] = cb
        SCB[i : i + step] = scb
        del cb, scb
    return CB.view(W.shape), SCB


class Int8Params(torch.nn.Parameter):
    """A weight that quantizes itself row-wise to int8 (LLM.int8()) when moved off the CPU or to a device."""

    def __new__(
        cls,
        data: torch.Tensor | None = None,
        requires_grad: bool = True,
        has_fp16_weights: bool = False,
        CB: torch.Tensor | None = None,
        SCB: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> Int8Params:
        if data is None:
            data = torch.empty(0)
        obj = torch.Tensor._make_subclass(cls, data, requires_grad)
        obj.CB = CB
        obj.SCB = SCB
        obj.has_fp16_weights = has_fp16_weights
        return obj

    def _quantize(self, device: torch.device) -> Int8Params:
        _check_device_has_kernels(device)
        if self.has_fp16_weights:
            self.data = self.data.to(device)
            return self
        _check_no_grad_for_codes(self, "Int8Params", "int8 codes (has_fp16_weights=True keeps a trainable weight)")
        CB, SCB = _int8_quantize_rows(self.data, device)
        self.data = CB
        self.CB = CB
        self.SCB = SCB
        return self

    def _scaled_as_values(self) -> Int8Params:
        """``.to(0)`` on a machine without an accelerator of int8 codes that have no row scales.

        The established release quantizes CPU data on a move to a device index, int8 data too:
        the codes are taken as the values they hold (their row maxima as the scales; every row
        LLM.int8() makes reaches +-127, so the codes come back unchanged). accelerate relies on it
        when it brings an offloaded 8-bit weight back to the CPU: it builds
        ``Int8Params(codes).to(0).to("cpu")`` (after a forward the layer's scales live in its
        state, not on the weight) and then sets the checkpoint's scales on the result. Here the
        scales are the codes' row maxima and the codes are kept as they are (never re-rounded)."""
        codes = self.data
        if codes.dim() == 0 or codes.shape[-1] == 0:
            scales = torch.zeros(codes.shape[:-1], dtype=torch.float32)
        else:  # (in float: an int8 abs() would keep -128 negative)
            scales = torch.maximum(codes.amax(dim=-1).float(), codes.amin(dim=-1).float().neg())
        return Int8Params(codes, requires_grad=self.requires_grad, has_fp16_weights=False, CB=codes, SCB=scales)

    def cpu(self) -> Int8Params:  # type: ignore[override]
        """``self.to(device="cpu")``: float data is quantized to int8 rows on the way."""
        return self.to(device="cpu")

    def cuda(self, device: Any = None, non_blocking: bool = False) -> Int8Params:  # type: ignore[override]
        """``self.to(device)`` with ``"cuda"`` as the default device; float data is quantized on the way."""
        return self.to(device="cuda" if device is None else device, non_blocking=non_blocking)

    def xpu(self, device: Any = None, non_blocking: bool = False) -> Int8Params:  # type: ignore[override]
        """``self.to(device)`` with ``"xpu"`` as the default device; float data is quantized on the way."""
        return self.to(device="xpu" if device is None else device, non_blocking=non_blocking)

    def __deepcopy__(self, memo: dict) -> Int8Params:
        new = type(self)(
            self.data.clone(),
            requires_grad=self.requires_grad,
            has_fp16_weights=self.has_fp16_weights,
            CB=None,
            SCB=copy.deepcopy(self.SCB, memo),
        )
        if self.CB is not None:
            new.CB = new.data if self.CB.data_ptr() == self.data.data_ptr() else copy.deepcopy(self.CB, memo)
        memo[id(self)] = new
        return new

    def __reduce_ex__(self, protocol: int) -> Any:
        """Pickle as an Int8Params (``pickle``, ``copy.copy``, ``torch.save`` of a module,
        torch.multiprocessing queues and spawned processes): data, ``requires_grad`` and the
        ``__dict__``, with ``CB`` rebuilt as the data where it is the data. torch's
        ``Parameter`` pickling made a plain Parameter of it, which a later ``.to(device)`` does
        not quantize, and a separate copy of the codes in ``CB``."""
        state = dict(self.__dict__)
        state.pop("_is_param", None)
        data = self.data
        cb_is_data = isinstance(self.CB, torch.Tensor) and _same_view(self.CB, data)
        if cb_is_data:
            state["CB"] = None
        args: tuple = (data, self.requires_grad, state, cb_is_data)
        return (_rebuild_int8params, args if type(self) is Int8Params else (*args, type(self)))

    def _like(self, data: torch.Tensor, SCB: torch.Tensor | None) -> Int8Params:
        """An Int8Params of ``data`` with this one's flags; ``CB`` is the new data where this one has it."""
        new = Int8Params(data, requires_grad=self.requires_grad, has_fp16_weights=self.has_fp16_weights, SCB=SCB)
        if self.CB is not None:
            new.CB = new.data
        return new

    def detach(self) -> torch.Tensor:  # type: ignore[override]
        out = super().detach()
        return self._like(out, self.SCB) if _APPLYING.depth else out

    def module_load(self, other: torch.Tensor, assign: bool = False) -> Int8Params:
        """The value ``load_state_dict`` swaps in under torch's swap mode
        (``torch.__future__.set_swap_module_params_on_conversion(True)``): ``other`` (copied into
        this parameter's memory, or taken as is with ``assign``) as an Int8Params with this one's
        flags and scales, which ``Linear8bitLt._load_from_state_dict`` then refills. A plain
        tensor there would turn the layer's weight into a Parameter without its row scales."""
        return self._like(loaded_value(self, other, assign), self.SCB)

    def _applied(self, out: torch.Tensor) -> torch.Tensor:
        """What ``module_apply`` keeps of ``out``, a layer function's result for this parameter
        (``module_apply`` then puts ``CB`` / ``SCB`` where the kept parameter's data is)."""
        if self.dtype == torch.int8 and out.dtype != torch.int8:
            out = self.to(out.device)  # a value conversion (Module.type) would garble the codes
        if not isinstance(out, Int8Params):
            return self._like(out, self.SCB)
        # .to() gives codes CB and the scales as if none had moved into a layer's state (keeping
        # the scales it already moved)
        out.CB = out.data if self.CB is not None else None
        if self.SCB is None:
            out.SCB = None
        return out

    def to(self, *args: Any, **kwargs: Any) -> Int8Params:  # type: ignore[override]
        """Quantize float CPU data on a move to a real device; otherwise move data and scales."""
        quantize_on_host = _bare_index_without_accelerator(args, kwargs)
        args, kwargs = _index_on_host_without_accelerator(args, kwargs)
        device, dtype, non_blocking, _ = torch._C._nn._parse_to(*args, **kwargs)
        is_int8 = self.data.dtype == torch.int8
        codes_without_scales = is_int8 and self.SCB is None and not self.has_fp16_weights
        if quantize_on_host and codes_without_scales and self.data.device.type == "cpu":
            return self._scaled_as_values()
        if device is not None and device.type != "meta" and self.data.device.type == "cpu" and not is_int8:
            return self._quantize(device)
        if device is not None and is_int8:
            _check_device_has_kernels(device)
        moved = torch.Tensor.to(self, device=device, dtype=None if is_int8 else dtype, non_blocking=non_blocking)
        new = Int8Params(moved, requires_grad=self.requires_grad, has_fp16_weights=self.has_fp16_weights)
        if is_int8:
            new.CB = new.data
            if self.SCB is not None and (device is None or device.type != "meta"):
                new.SCB = self.SCB.to(device) if device is not None else self.SCB
            else:
                new.SCB = self.SCB
        return new


def _same_view(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether ``a`` and ``b`` view the same memory the same way (on meta: the same layout)."""
    with torch._C.DisableTorchFunctionSubclass():
        if (a.device, a.dtype, a.shape) != (b.device, b.dtype, b.shape):
            return False
        return a.device.type == "meta" or (a.stride() == b.stride() and a.data_ptr() == b.data_ptr())


def _rebuild_int8params(
    data: torch.Tensor, requires_grad: bool, state: dict[str, Any], cb_is_data: bool, cls: type = Int8Params
) -> Int8Params:
    """The Int8Params ``Int8Params.__reduce_ex__`` describes (pickles name it in ``bitsandbytes.nn.modules``)."""
    if not (isinstance(cls, type) and issubclass(cls, Int8Params)):  # (a crafted pickle)
        raise TypeError(f"bitsandbytes: _rebuild_int8params rebuilds Int8Params, got {cls!r}")
    new = cls.__new__(cls, data, requires_grad=requires_grad)
    for k, v in state.items():
        setattr(new, k, v)
    if cb_is_data:
        new.CB = new.data
    return new


# torch.load's default (weights_only) unpickler takes only allowlisted globals. A pickled
# Int8Params (torch.save of the parameter, or of ``state_dict(keep_vars=True)``) loaded there as
# the established release's plain Parameter did; named by ``__reduce_ex__``, it needs this.
torch.serialization.add_safe_globals([_rebuild_int8params])
