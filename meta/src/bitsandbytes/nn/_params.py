"""The quantized parameters' common ground (moving a module that holds them, the lock a move takes,
device and FSDP1 checks) and ``Params4bit`` (NF4/FP4, quantized on the first move to a device);
``Int8Params`` (LLM.int8() rows) is in ``_int8params``.

``bitsandbytes.nn.modules`` re-exports the public names; pickles name ``_rebuild_params4bit`` there.
"""

from __future__ import annotations

import copy
import os
import sys
import threading
import types
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from .. import _checks
from .. import functional as F
from ..functional import QuantState
from ._shared import share_statistics


class NotQuantizedError(RuntimeError, AssertionError):
    """A quantized layer was run before its weight was quantized (an AssertionError in the established release)."""


def _check_device_has_kernels(device: torch.device) -> None:
    from .. import supported_torch_devices

    if device.type != "meta" and device.type not in supported_torch_devices:
        raise ValueError(
            f"bitsandbytes: no kernels for device type {device.type!r}; quantized parameters can live on "
            f"{sorted(supported_torch_devices)} or 'meta'"
        )


_DTYPE_GETTER = torch.Tensor.dtype.__get__
# Module.half() / .float() / .bfloat16() / .double() cast every floating-point parameter this way.
# A quantized Params4bit in a float quant_storage answers them with itself: its packed bytes are
# not values to convert (.to(dtype) keeps them too). A uint8 storage never reaches them.
_FLOAT_CASTS = (torch.Tensor.half, torch.Tensor.float, torch.Tensor.bfloat16, torch.Tensor.double)

PLAIN_ALIAS_KEY = "plain_alias"
"""Where Linear4bit keeps a plain-tensor alias of a Params4bit's data (in ``weight_caches``)."""

DECODE_PLAN_KEY = "decode_plan"
"""Where Linear4bit keeps its prepared decoding runner for a Params4bit (in ``weight_caches``)."""

DECODE_PLAN_BUILDS_KEY = "decode_plan_builds"
"""How many decoding runners Linear4bit has prepared for a Params4bit (in ``weight_caches``)."""

_NO_CACHES: Mapping[str, Any] = types.MappingProxyType({})


def drop_weight_caches(weight: Params4bit) -> None:
    """Forget ``weight_caches(weight)`` (they rebuild on the next forward)."""
    try:
        del weight._bnb_caches
    except AttributeError:
        pass


def loaded_value(param: torch.Tensor, other: torch.Tensor, assign: bool) -> torch.Tensor:
    """What ``Tensor.module_load`` would give, as a plain tensor: ``other`` copied into ``param``'s
    memory, or ``other`` itself with ``assign``. A parameter class wraps it in its own type."""
    with torch._C.DisableTorchFunctionSubclass():
        return other.detach() if assign else param.copy_(other).detach()


def kept_caches(weight: Params4bit) -> Mapping[str, Any]:
    """``weight_caches(weight)`` to read, without making one: empty where none was kept."""
    return getattr(weight, "_bnb_caches", _NO_CACHES)


def weight_caches(weight: Params4bit) -> dict[str, Any]:
    """Linear4bit's caches for ``weight`` (the ``*_KEY`` entries). They live in a slot of the
    parameter, outside its ``__dict__`` (which holds exactly the seven attributes of spec §6.1, as
    transformers and accelerate pass it on to a new Params4bit) and outside its copies and pickled
    state: they describe this object's memory, not the weight."""
    try:
        return weight._bnb_caches
    except AttributeError:
        caches: dict[str, Any] = {}
        weight._bnb_caches = caches
        return caches


class _ApplyDepth(threading.local):
    depth = 0


_APPLYING = _ApplyDepth()
"""``depth`` is above zero while this thread runs a bitsandbytes layer's ``nn.Module._apply``
(``module_apply``): ``detach()`` of a Params4bit / Int8Params then keeps its type and attributes,
as torch's ``Parameter(...)`` rebuild of a parameter moved to an incompatible device (to or from
``meta``) requires. Per thread: a ``detach()`` elsewhere meanwhile gives a plain tensor as always."""


_SWAP_LOCK = threading.RLock()


def swap_lock() -> threading.RLock:
    """The lock held wherever a layer's parameter gets new memory: ``module_apply`` (``.to``,
    ``.half()``, ...) and a forward converting its bias to the compute dtype (``_bias_in``).

    Threads may share a layer. torch's ``t.to(dtype)`` reads ``t``'s dtype and then its memory; a
    ``bias.data = ...`` from another thread between the two made ``layer.to(torch.float16)`` fail
    ("expected scalar type Half but found BFloat16")."""
    return _SWAP_LOCK


def _new_swap_lock() -> None:
    # A child forked while another thread held the lock would wait for it for ever.
    global _SWAP_LOCK
    _SWAP_LOCK = threading.RLock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_new_swap_lock)


def _tensor_to(t: torch.Tensor | None, device: torch.device) -> torch.Tensor | None:
    """``t`` on ``device``; uninitialized memory there when ``t`` is on meta (``to_empty``)."""
    if t is None or t.device == device:
        return t
    if t.device.type == "meta":
        return torch.empty_like(t, device=device)
    return t.to(device)


def _quant_state_to(qs: QuantState | None, device: torch.device) -> None:
    """``QuantState.to`` in place, where a state on meta gets uninitialized tensors (``to_empty``)."""
    if qs is None:
        return
    qs.code = _tensor_to(qs.code, device)
    qs.absmax = _tensor_to(qs.absmax, device)
    if qs.nested:
        qs.offset = _tensor_to(qs.offset, device)
        qs.state2.absmax = _tensor_to(qs.state2.absmax, device)
        qs.state2.code = _tensor_to(qs.state2.code, device)


def module_apply(module: nn.Module, apply: Any, fn: Any, recurse: bool) -> nn.Module:
    """``nn.Module._apply`` (``apply``, the bound base method) for a layer holding Params4bit /
    Int8Params: each such parameter comes out as its own type with its quantization state (quant
    state, row scales) on the parameter's new device, whatever ``fn`` does (``.to``, ``to_empty``,
    ``share_memory_``), and its packed codes are never converted to another dtype (``.type()``).

    torch rebuilds a parameter moved to an incompatible device (to or from ``meta``) with
    ``Parameter(new, requires_grad)``, which needs ``detach()`` to keep the type; a plain
    Parameter in its place would drop the quant state (peft and transformers then read packed
    bytes as weights). It runs under ``swap_lock()``: a forward in another thread may be converting
    this layer's bias meanwhile."""
    with swap_lock():
        return _module_apply(module, apply, fn, recurse)


def _module_apply(module: nn.Module, apply: Any, fn: Any, recurse: bool) -> nn.Module:
    from ._int8params import Int8Params  # (that module builds on this one)

    own = [p for p in module._parameters.values() if isinstance(p, (Params4bit, Int8Params))]
    if not own:
        return apply(fn, recurse)
    if torch.__future__.get_swap_module_params_on_conversion():
        for p in own:  # a kept plain alias is a second reference to p's tensor: swap_tensors refuses it
            if isinstance(p, Params4bit):
                drop_weight_caches(p)

    def keeping(t: torch.Tensor) -> torch.Tensor:
        out = fn(t)
        for p in own:
            if t is p and out is not p:
                return p._applied(out)
        return out

    _APPLYING.depth += 1
    try:
        result = apply(keeping, recurse)
    finally:
        _APPLYING.depth -= 1
    for p in module._parameters.values():
        if not isinstance(p, (Params4bit, Int8Params)):
            continue
        p.__dict__.pop("_is_param", None)  # set by Parameter(...); the __dict__ keys are a contract
        if isinstance(p, Int8Params):
            # torch keeps the old parameter object where the devices are compatible (its data
            # replaced), or a rebuilt one: either way, the codes are its data, the scales beside it
            if p.CB is not None:
                p.CB = p.data
            p.SCB = _tensor_to(p.SCB, p.device)
        share_statistics(p)  # Module.share_memory(): the scales go where the codes went
    return result


def _check_fsdp1_flatten(frame: Any) -> None:
    """FSDP1 flattens each unit's parameters into one float tensor of a single dtype. When its
    check runs over a 4-bit weight, say what to change instead of FSDP1's generic message: the
    packed weight must be stored in the dtype of the rest of the unit (``bnb_4bit_quant_storage``)."""
    code = frame.f_code
    if code.co_name != "_validate_tensors_to_flatten" or not code.co_filename.endswith("_flat_param.py"):
        return
    tensors = frame.f_locals.get("tensors") or ()
    with torch._C.DisableTorchFunctionSubclass():
        packed = {t.dtype for t in tensors if isinstance(t, Params4bit) and t.bnb_quantized}
        others = {t.dtype for t in tensors if not isinstance(t, Params4bit)}
    if not packed:
        return
    bad_int = sorted(str(d) for d in packed if not d.is_floating_point)
    if bad_int or len(packed | others) > 1:
        raise ValueError(
            "bitsandbytes: FSDP (FullyShardedDataParallel) flattens the 4-bit weights with the rest of the "
            f"module into one float tensor, but the packed weights are stored as {sorted(str(d) for d in packed)} "
            f"and the other parameters are {sorted(str(d) for d in others)}. Quantize with "
            "bnb_4bit_quant_storage (Linear4bit(quant_storage=...)) set to the model's dtype, e.g. "
            "torch.bfloat16 for a bf16 model"
            + ("; uint8 storage cannot be flattened by FSDP1 (FSDP2's fully_shard accepts it)" if bad_int else "")
        )


class Params4bit(torch.nn.Parameter):
    """A weight that quantizes itself to 4 bit (NF4/FP4) when first moved to a device."""

    __slots__ = ("_bnb_caches",)  # weight_caches

    def __new__(
        cls,
        data: torch.Tensor | None = None,
        requires_grad: bool = False,
        quant_state: QuantState | None = None,
        blocksize: int | None = None,
        compress_statistics: bool = True,
        quant_type: str = "fp4",
        quant_storage: torch.dtype = torch.uint8,
        module: nn.Module | None = None,
        bnb_quantized: bool = False,
        **kwargs: Any,
    ) -> Params4bit:
        if data is None:
            data = torch.empty(0)
        if blocksize is None:
            blocksize = 64
        self = torch.Tensor._make_subclass(cls, data, requires_grad)
        self.blocksize = blocksize
        self.compress_statistics = compress_statistics
        self.quant_type = quant_type
        self.quant_state = quant_state
        self.quant_storage = quant_storage
        self.bnb_quantized = bnb_quantized
        self.module = module
        return self

    # -- copying and pickling --------------------------------------------------------------

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["data"] = self.data
        state["requires_grad"] = self.requires_grad
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        state = dict(state)
        self.requires_grad = state.pop("requires_grad")
        self.data = state.pop("data")
        for k, v in state.items():
            setattr(self, k, v)

    def __reduce_ex__(self, protocol: int) -> Any:
        return (_rebuild_params4bit, (self.__getstate__(),))

    def _unquantized_like(self, data: torch.Tensor, requires_grad: bool, module: nn.Module | None) -> Params4bit:
        """A new Params4bit, not quantized yet, holding the float ``data`` with this one's settings
        (block size, nesting, quant type and storage): quantized on the next move to a device as
        this one would have been."""
        return type(self)(
            data,
            requires_grad=requires_grad,
            blocksize=self.blocksize,
            compress_statistics=self.compress_statistics,
            quant_type=self.quant_type,
            quant_storage=self.quant_storage,
            module=module,
        )

    def __deepcopy__(self, memo: dict) -> Params4bit:
        new = type(self)(
            self.data.clone(),
            requires_grad=self.requires_grad,
            quant_state=copy.deepcopy(self.quant_state, memo),
            blocksize=self.blocksize,
            compress_statistics=self.compress_statistics,
            quant_type=self.quant_type,
            quant_storage=self.quant_storage,
            module=memo.get(id(self.module), self.module),
            bnb_quantized=self.bnb_quantized,
        )
        memo[id(self)] = new
        return new

    def __copy__(self) -> Params4bit:
        return _rebuild_params4bit(self.__getstate__(), type(self))

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):  # type: ignore[override]
        kwargs = kwargs or {}
        if func is _DTYPE_GETTER or func is torch.Tensor.is_floating_point:
            _check_fsdp1_flatten(sys._getframe(1))
        if func in _FLOAT_CASTS and isinstance(args[0], Params4bit):
            w = args[0]
            if w.bnb_quantized and w.quant_storage is not None and w.quant_storage.is_floating_point:
                return w
        if func in (torch.chunk, torch.split):
            src = args[0]
            with torch._C.DisableTorchFunctionSubclass():
                parts = func(*args, **kwargs)
            return tuple(src._like(part) for part in parts)
        return super().__torch_function__(func, types, args, kwargs)

    def _like(self, data: torch.Tensor, keep_module: bool = True) -> Params4bit:
        """A Params4bit of ``data`` with this one's attributes (the same quant state object), and
        its module unless not ``keep_module``."""
        return Params4bit(
            data,
            requires_grad=self.requires_grad,
            quant_state=self.quant_state,
            blocksize=self.blocksize,
            compress_statistics=self.compress_statistics,
            quant_type=self.quant_type,
            quant_storage=self.quant_storage,
            module=self.module if keep_module else None,
            bnb_quantized=self.bnb_quantized,
        )

    def detach(self) -> torch.Tensor:  # type: ignore[override]
        out = super().detach()
        return self._like(out) if _APPLYING.depth else out

    def module_load(self, other: torch.Tensor, assign: bool = False) -> Params4bit:
        """The value ``load_state_dict`` swaps in under torch's swap mode
        (``torch.__future__.set_swap_module_params_on_conversion(True)``): ``other`` (copied into
        this parameter's memory, or taken as is with ``assign``) as a Params4bit with this one's
        settings. A plain tensor there would leave the layer a weight that never quantizes, and
        cannot swap with a Params4bit (their slots differ). Quantized checkpoints come here from
        ``Linear4bit._load_from_state_dict``'s load in place, and the swap that follows
        needs this parameter's tensor unshared: the caches' plain alias goes first."""
        drop_weight_caches(self)
        return self._like(loaded_value(self, other, assign))

    def _applied(self, out: torch.Tensor) -> torch.Tensor:
        """What ``module_apply`` keeps of ``out``, a layer function's result for this parameter."""
        if isinstance(out, Params4bit):  # .to(): the quant state has moved with it
            out.module = self.module
            return out
        if self.bnb_quantized and (out.dtype, out.shape) != (self.dtype, self.shape):
            return self.to(out.device)  # a value conversion (Module.type) would garble the codes
        _quant_state_to(self.quant_state, out.device)
        return self._like(out)

    # -- the quantized state -----------------------------------------------------------------

    def _state(self, name: str, nested: bool = False) -> QuantState:
        qs = self.quant_state
        if qs is None:
            raise AttributeError(f"Params4bit.{name}: the parameter is not quantized (no quant_state)")
        if nested and not qs.nested:
            raise AttributeError(f"Params4bit.{name}: the quant state is not nested (compress_statistics=False)")
        return qs

    absmax = property(lambda self: self._state("absmax").absmax)
    code = property(lambda self: self._state("code").code)
    quant_map = property(lambda self: self._state("quant_map").code)
    offset = property(lambda self: self._state("offset").offset)
    state2 = property(lambda self: self._state("state2").state2)
    nested_absmax = property(lambda self: self._state("nested_absmax", True).state2.absmax)
    nested_blocksize = property(lambda self: self._state("nested_blocksize", True).state2.blocksize)
    nested_quant_map = property(lambda self: self._state("nested_quant_map", True).state2.code)
    nested_dtype = property(lambda self: self._state("nested_dtype", True).state2.dtype)
    nested_offset = property(lambda self: self._state("nested_offset").offset)

    @classmethod
    def from_prequantized(
        cls,
        data: torch.Tensor,
        quantized_stats: dict[str, Any],
        requires_grad: bool = False,
        device: torch.device | str = "cuda",
        module: nn.Module | None = None,
        **kwargs: Any,
    ) -> Params4bit:
        """Wrap already packed 4-bit ``data`` and its serialized quant state (checkpoint keys of §7.1)."""
        quant_state = QuantState.from_dict(quantized_stats, device=device)
        expected = kwargs.get("quant_type")
        if expected is not None and expected != quant_state.quant_type:
            raise ValueError(
                f"bitsandbytes: the checkpoint holds {quant_state.quant_type} weights but quant_type={expected!r} was requested"
            )
        if quant_state.shape is not None:
            # a float weight, or packed bytes of another shape, beside these statistics
            _checks.check_4bit_shape(quant_state.shape, quant_state.absmax, data, quant_state.blocksize)
        self = cls(
            data.to(device),
            requires_grad=requires_grad,
            quant_state=quant_state,
            blocksize=quant_state.blocksize,
            compress_statistics=quant_state.nested,
            quant_type=quant_state.quant_type,
            quant_storage=data.dtype,
            module=module,
            bnb_quantized=True,
        )
        if module is not None:
            module.quant_state = quant_state
        return self

    def _quantize(self, device: torch.device) -> Params4bit:
        if self.bnb_quantized:
            return self  # already quantized: quantizing again is a no-op
        _check_device_has_kernels(device)
        if not self.quant_storage.is_floating_point:  # a float storage may keep requires_grad
            _check_no_grad_for_codes(self, "Params4bit", "packed 4-bit codes")
        w = self.data.contiguous().to(device)
        packed, quant_state = F.quantize_4bit(
            w,
            blocksize=self.blocksize,
            compress_statistics=self.compress_statistics,
            quant_type=self.quant_type,
            quant_storage=self.quant_storage,
        )
        self.data = packed
        self.quant_state = quant_state
        if self.module is not None:
            self.module.quant_state = quant_state
        self.bnb_quantized = True
        return self

    def cpu(self) -> Params4bit:  # type: ignore[override]
        """``self.to(device="cpu")``: quantizes first if the data is not packed yet."""
        return self.to(device="cpu")

    def cuda(self, device: Any = None, non_blocking: bool = False) -> Params4bit:  # type: ignore[override]
        """``self.to(device)`` with ``"cuda"`` as the default device: quantizes on the first move."""
        return self.to(device="cuda" if device is None else device, non_blocking=non_blocking)

    def xpu(self, device: Any = None, non_blocking: bool = False) -> Params4bit:  # type: ignore[override]
        """``self.to(device)`` with ``"xpu"`` as the default device: quantizes on the first move."""
        return self.to(device="xpu" if device is None else device, non_blocking=non_blocking)

    def to(self, *args: Any, **kwargs: Any) -> Params4bit:  # type: ignore[override]
        """Quantize on the first move to a real device; afterwards move the packed data and its state."""
        device, dtype, non_blocking, _ = torch._C._nn._parse_to(*args, **kwargs)
        if device is not None and device.type != "meta" and not self.bnb_quantized:
            return self._quantize(device)
        if device is not None and self.bnb_quantized:
            _check_device_has_kernels(device)
        if self.quant_state is not None and device is not None:
            if device.type != "meta":
                _check_statistics_have_data(self.quant_state, device)
            self.quant_state.to(device)
        # The packed bytes keep their storage dtype: a float cast would corrupt them.
        target_dtype = None if self.bnb_quantized else dtype
        moved = torch.Tensor.to(self, device=device, dtype=target_dtype, non_blocking=non_blocking)
        return self._like(moved, keep_module=False)  # as the established release: no module


def _check_statistics_have_data(qs: QuantState, device: torch.device) -> None:
    """Refuse to move a 4-bit weight to ``device`` while its quant state is on meta: the
    statistics have no values to bring (torch's own message names neither them nor the cause)."""
    if qs.absmax is None or qs.absmax.device.type != "meta":
        return
    raise NotImplementedError(
        f"bitsandbytes: cannot move a quantized 4-bit weight to {device}: its quantization statistics "
        "(quant_state: absmax, code) are on the meta device and hold no values. Params4bit.to('meta') "
        "moves them there in place, as the established release does, so they cannot come back. "
        "accelerate's offloading hooks do this to already-quantized 4-bit layers (cpu_offload, "
        "disk_offload, dispatch_model with 'cpu' or 'disk' in the device map): offloading 4-bit "
        "layers is not supported; keep them on their execution device (accelerate and transformers "
        "offload only modules left unquantized, e.g. llm_int8_enable_fp32_cpu_offload=True), or "
        "offload LLM.int8() layers instead. After module.to('meta'), use module.to_empty(device=...) "
        "and load a state dict."
    )


def _rebuild_params4bit(state: dict[str, Any], cls: type = Params4bit) -> Params4bit:
    # Made around its data: a tensor of another kind (meta) cannot replace an empty CPU one's data.
    state = dict(state)
    new = cls.__new__(cls, state.pop("data"), requires_grad=state.pop("requires_grad"))
    for k, v in state.items():
        setattr(new, k, v)
    return new


def _check_no_grad_for_codes(param: torch.Tensor, name: str, what: str) -> None:
    """torch keeps gradients only for floating tensors: a parameter that requires one cannot take
    the integer codes its quantization leaves (torch's own message names neither)."""
    if param.requires_grad:
        raise RuntimeError(
            f"{name}: a parameter that requires gradients cannot be quantized into {what}; create it "
            "with requires_grad=False"
        )
