"""4-bit linear layers: ``Linear4bit`` (NF4/FP4 weight, quantized when moved to a device) and its
``LinearFP4`` / ``LinearNF4`` presets, with the helpers the quantized layers share.

``bitsandbytes.nn.modules`` re-exports everything here.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import nn

from .. import _checks, _direct
from ..autograd._functions import matmul_4bit
from ..functional import QuantState
from . import _runners
from ._params import (
    DECODE_PLAN_BUILDS_KEY,
    DECODE_PLAN_KEY,
    PLAIN_ALIAS_KEY,
    NotQuantizedError,
    Params4bit,
    kept_caches,
    module_apply,
    swap_lock,
    weight_caches,
)
from ._shared import copy_quant_state_, detached_stats, keep_param_type

if TYPE_CHECKING:
    from .embedding import Embedding4bit

logger = logging.getLogger("bitsandbytes.nn.modules")
"""Named for ``bitsandbytes.nn.modules``, not for this file: the established release reports slow
configurations on that logger, and code filtering its records relies on the name."""


def _is_dtensor(t: Any) -> bool:
    """Whether ``t`` is a DTensor (FSDP2's sharded parameters), without importing torch.distributed."""
    return type(t).__name__ == "DTensor" and hasattr(t, "to_local")


def fix_4bit_weight_quant_state_from_module(module: Linear4bit | Embedding4bit) -> None:
    """Restore ``weight.quant_state`` from ``module.quant_state`` (FSDP may hand back a bare tensor)."""
    if getattr(module.weight, "quant_state", None) is not None:
        return
    if getattr(module, "quant_state", None) is None:
        raise NotQuantizedError(
            f"{type(module).__name__}: the weight is not quantized; move the module to a device "
            "(e.g. module.to('cpu') or .cuda()) or load a quantized checkpoint first"
        )
    if module.weight.dim() != 2 or module.weight.shape[1] != 1:
        raise NotQuantizedError(
            f"{type(module).__name__}: weight of shape {tuple(module.weight.shape)} is not packed 4-bit data"
        )
    # A bare tensor (FSDP's gathered view) gets the state as an attribute: re-registering a new
    # Params4bit on the module would detach it from the wrapper's flat or sharded parameter.
    module.weight.quant_state = module.quant_state


def _plain_alias(weight: Params4bit) -> torch.Tensor:
    """A plain-tensor alias of the packed ``weight``. Making one costs as much as a small
    allocation (~20 us with cold caches, as in every layer of a decoding model), so for a weight
    in CPU memory it is kept on the parameter (left out of its pickled state) while the parameter
    holds the same data. Elsewhere none is kept: after a move of the parameter's data (an
    offloading hook's), a kept alias would hold the old memory until the next call."""
    with torch._C.DisableTorchFunctionSubclass():
        try:
            ptr, cpu = weight.data_ptr(), weight.is_cpu
        except RuntimeError:  # no storage (meta, fake): nothing to keep
            return weight.as_subclass(torch.Tensor)
        caches = weight_caches(weight)
        kept = caches.get(PLAIN_ALIAS_KEY)
        if cpu and kept is not None and kept[0] == ptr:
            return kept[1]
        alias = weight.as_subclass(torch.Tensor)
    if cpu:
        caches[PLAIN_ALIAS_KEY] = (ptr, alias)
    elif kept is not None:
        del caches[PLAIN_ALIAS_KEY]
    return alias


_disable_torch_function = torch._C.DisableTorchFunctionSubclass


def _nested_key(qs: QuantState) -> tuple | None:
    """What a runner depends on in a nested (double-quantized) absmax, which it resolves once:
    each tensor's object, memory and version counter (in-place changes, e.g. load_state_dict).
    None where that cannot be watched: then the general path resolves the absmax on every call."""
    s2 = qs.state2
    if s2 is None or s2.blocksize != 256 or qs.offset is None:
        return None  # (other block sizes: the general path resolves the absmax on every call)
    tensors = (qs.absmax, s2.absmax, s2.code, qs.offset)
    if any(type(t) is not torch.Tensor for t in tensors) or s2.absmax.dtype != torch.float32:
        return None
    if qs.offset.dtype != torch.float32 or qs.offset.numel() != 1:
        return None
    if any(t.is_inference() for t in tensors):
        return None  # (made under torch.inference_mode: no version counter to watch)
    if _checks.in_shared_cpu_memory(*tensors):
        return None  # (in shared memory: another process's in-place writes advance no counter here)
    return (s2, *((t, t.data_ptr(), t._version) for t in tensors))


def _nested_same(qs: QuantState, key: tuple) -> bool:
    """Whether the nested absmax of ``qs`` is still what ``key`` (_nested_key) recorded."""
    s2 = qs.state2
    if s2 is not key[0]:
        return False
    for t, (kept, ptr, version) in zip((qs.absmax, s2.absmax, s2.code, qs.offset), key[1:]):
        if t is not kept or t.data_ptr() != ptr or t._version != version:
            return False
    return True


def _plan_key(module: Linear4bit, weight: Params4bit) -> tuple | None:
    """What a decoding runner for ``module`` depends on besides its input (see ``forward``), or
    None where none can be kept (a weight without storage, a nested absmax in other blocks than
    of 256)."""
    qs = weight.quant_state
    if qs is None or qs.absmax is None:
        return None
    nested = None
    if qs.nested:
        nested = _nested_key(qs)
        if nested is None:
            return None
    bias = module._parameters.get("bias")
    try:
        with _disable_torch_function():
            ptr = weight.data_ptr()
    except RuntimeError:  # no storage (fake)
        return None
    if not ptr:  # meta
        return None
    absmax = qs.absmax
    bias_ptr = 0 if bias is None else bias.data_ptr()
    return (_direct.generation, ptr, qs, absmax, absmax.data_ptr(), bias, bias_ptr, module.compute_dtype, nested)


def _prepare_decode_plan(key: tuple, packed: torch.Tensor, x: torch.Tensor) -> Callable | None:
    """The platform's runner of this layer's 4-bit GEMM for ``key`` (_plan_key), with the op's
    arguments as _functional_4bit._gemm_4bit passes them."""
    if packed.data_ptr() != key[1]:
        # The weight's memory was replaced (``weight.data = ...`` from another thread) after this
        # call took ``packed`` (a plain alias): a runner on it would pass forward's check for good.
        return None
    qs, bias = key[2], _runner_bias(key[5], key[6])
    if bias is False:
        return None
    shape = list(qs.shape)
    if qs.nested:
        s2 = qs.state2
        nested = (qs.absmax, s2.code, qs.offset.reshape(()))
        return _direct.prepare(
            "gemm_4bit",
            (x, packed, s2.absmax, bias, *nested),
            (packed, shape, s2.absmax, qs.blocksize, qs.quant_type, bias, x.dtype, *nested),
        )
    return _direct.prepare(
        "gemm_4bit",
        (x, packed, qs.absmax, bias),
        (packed, shape, qs.absmax, qs.blocksize, qs.quant_type, bias, x.dtype),
    )


def _keep_decode_plan(module: Linear4bit, weight: Params4bit, packed: torch.Tensor, x: torch.Tensor) -> None:
    """After a general forward in eager mode: keep a current runner of this layer's 4-bit GEMM on
    the weight (_runners.keep)."""
    _runners.keep(
        weight_caches(weight),
        DECODE_PLAN_KEY,
        DECODE_PLAN_BUILDS_KEY,
        lambda: _plan_key(module, weight),
        lambda key: _prepare_decode_plan(key, packed, x),
    )


def _bias_hold(bias: torch.Tensor) -> torch.Tensor:
    """A tensor of its own on ``bias``'s current memory (a view where autograd needs the parameter,
    otherwise a detached alias): it keeps that memory alive through a later ``bias.data = ...``."""
    with _disable_torch_function():
        return bias.view(bias.shape) if torch.is_grad_enabled() and bias.requires_grad else bias.detach()


def _runner_bias(bias: torch.Tensor | None, ptr: int) -> torch.Tensor | None | Literal[False]:
    """The bias a kept runner is prepared with: a detached tensor of its own on the memory ``ptr``
    that the runner's key names, taken under ``swap_lock`` as conversions are made; or False where
    the parameter's memory has been replaced since the key was taken. A runner prepared with the
    parameter itself would read whatever memory it holds when the platform takes it, which another
    thread's conversion may be replacing at that moment."""
    if bias is None:
        return None
    with swap_lock(), _disable_torch_function():
        held = bias.detach()
    return held if held.data_ptr() == ptr else False


def _bias_in(module: nn.Module, dtype: torch.dtype) -> torch.Tensor | None:
    """The bias in the compute dtype. As the established release's forward does, the parameter
    itself takes that dtype, in place (code and test suites written for it observe ``bias.dtype``
    after a forward); under torch.compile, which cannot trace that, a cast copy is used instead.

    Threads may share a layer: the kernels run without the GIL, and another thread's conversion
    (the first call of a cold layer, or inputs of another dtype) replaces the parameter's memory
    while they read it. So the caller gets a tensor holding the memory it will read
    (``_bias_hold``), taken in the right dtype, and conversions are made one at a time. Under
    torch.func transforms and forward-mode AD the bias is used as it is (a cast copy).

    A conversion made under ``torch.inference_mode`` (an evaluation or generation pass before
    training) is made outside it: the parameter's new memory must not be an inference tensor,
    which autograd would silently leave without a gradient afterwards."""
    bias = module.bias
    if bias is None:
        return None
    if torch.compiler.is_compiling() or _direct.transforms_active():
        # Neither can torch.func transforms (torch crashes viewing a parameter whose dtype changed
        # under one), nor does forward-mode AD keep a tangent through ``.data``.
        return bias if bias.dtype == dtype else bias.to(dtype)
    # The hold too is taken under the lock: torch runs ``view``/``detach`` without the GIL, and a
    # conversion's ``bias.data = ...`` landing inside it could pair one memory with another dtype.
    with swap_lock():
        if bias.dtype != dtype:
            with torch.inference_mode(False):
                bias.data = bias.data.to(dtype)
        return _bias_hold(bias)


class Linear4bit(nn.Linear):
    """A linear layer with a 4-bit (NF4/FP4) weight, quantized when the module is moved to a device."""

    def __init__(
        self,
        input_features: int,
        output_features: int,
        bias: bool = True,
        compute_dtype: torch.dtype | None = None,
        compress_statistics: bool = True,
        quant_type: str = "fp4",
        quant_storage: torch.dtype = torch.uint8,
        device: Any = None,
    ) -> None:
        if quant_type not in QuantState.valid_quant_types:
            raise ValueError(f"Linear4bit: quant_type must be 'nf4' or 'fp4', got {quant_type!r}")
        _checks.check_compute_dtype("Linear4bit", compute_dtype)
        super().__init__(input_features, output_features, bias, device)
        self.weight = Params4bit(
            self.weight.data,
            requires_grad=False,
            compress_statistics=compress_statistics,
            quant_type=quant_type,
            quant_storage=quant_storage,
            module=self,
        )
        self._quant_type = quant_type
        self.compute_dtype = compute_dtype
        self.compute_type_is_set = compute_dtype is not None
        self.quant_state: QuantState | None = None
        self.quant_storage = quant_storage
        self.support_avx512bf16_for_cpu = False

    def _apply(self, fn: Callable, recurse: bool = True) -> Linear4bit:  # type: ignore[override]
        # .to("meta"), to_empty(): the weight stays a Params4bit with its quant state (module_apply)
        return module_apply(self, super()._apply, fn, recurse)

    def set_compute_type(self, x: torch.Tensor) -> None:
        """Pick the compute dtype from the first input (f32/bf16 inputs); warn about slow f16/f32 mixes."""
        if x.dtype in (torch.float32, torch.bfloat16):
            self.compute_dtype = x.dtype
        elif x.dtype == torch.float16 and self.compute_dtype in (None, torch.float32):
            # One token (numel == last dim) is decoding; more is prefill or training.
            what = "inference" if x.numel() == x.shape[-1] else "inference or training speed"
            logger.warning(
                "Input type into Linear4bit is torch.float16, but bnb_4bit_compute_dtype=torch.float32 (default). "
                "This will lead to slow %s.",
                what,
            )

    def _save_to_state_dict(self, destination: dict, prefix: str, keep_vars: bool) -> None:
        super()._save_to_state_dict(destination, prefix, keep_vars)
        qs = getattr(self.weight, "quant_state", None)
        if qs is None:
            # FSDP2 (and FSDP1 flat parameters) hand the module a bare or DTensor weight; the quant
            # state lives on on the module, replicated on every rank.
            qs = getattr(self, "quant_state", None)
        if qs is not None:
            packed = qs.as_dict(packed=True)
            for k, v in packed.items():
                destination[prefix + "weight." + k] = v if keep_vars else v.detach()
            if _is_dtensor(self.weight):
                # Distributed checkpointing resolves "weight.absmax" by attribute traversal: mirror
                # the entries on the sharded parameter (refreshed on every save).
                for k in packed:
                    if "." not in k:
                        setattr(self.weight, k, packed[k])
                self.weight.quant_state = qs

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ) -> None:
        """Accept quantized checkpoints (§7.1) as well as float ones."""
        weight_key = prefix + "weight"
        stats = {k[len(weight_key) + 1 :]: v for k, v in state_dict.items() if k.startswith(weight_key + ".")}
        own_float_weight = isinstance(self.weight, Params4bit) and not self.weight.bnb_quantized
        if weight_key not in state_dict and any(k.startswith("quant_state.") for k in stats) and not own_float_weight:
            # FSDP1's sharded state dict: the wrapper loads the packed bytes into its flat
            # parameter and leaves this layer the quant state. (A layer still holding its own
            # float weight has no wrapper to load them: torch's rules apply, and a strict load
            # reports the missing weight instead of leaving statistics beside unpacked floats.)
            self._load_in_place(
                state_dict, prefix, stats, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
            )
            return
        if weight_key in state_dict and stats:
            own = getattr(self.weight, "quant_type", None)
            if own is None:  # a sharded (DTensor) weight: the module's quant state knows the type
                own = self.quant_state.quant_type if self.quant_state is not None else self._quant_type
            type_keys = [k for k in stats if k.startswith("quant_state.")]
            if not type_keys:
                raise ValueError(
                    f"Linear4bit: state dict has quantization items for {weight_key!r} "
                    f"({sorted(stats)}) but lacks '{weight_key}.quant_state.bitsandbytes__{own}'"
                )
            for k in type_keys:
                if k != f"quant_state.bitsandbytes__{own}":
                    raise ValueError(
                        f"Linear4bit: state dict key '{weight_key}.{k}' belongs to another quant type; this "
                        f"layer has quant_type={own!r}"
                    )
            data = state_dict[weight_key]
            w = self.weight
            if (
                _is_dtensor(w)
                or (not isinstance(w, Params4bit) and w.shape == data.shape)
                or (
                    isinstance(w, Params4bit)
                    and w.bnb_quantized
                    and w.device.type != "meta"
                    and (w.shape, w.dtype) == (data.shape, data.dtype)
                )
            ):
                # copy into the weight already there: a wrapper (FSDP1 with use_orig_params keeps
                # this very object, FSDP2 a DTensor) and optimizers hold references to it
                self._load_in_place(
                    state_dict, prefix, stats, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
                )
                return
            if _is_dtensor(data):
                data = data.full_tensor()  # a sharded (FSDP2) checkpoint loaded into an unsharded layer
            device = self.weight.device if self.weight.device.type != "meta" else data.device
            if self.weight.device.type != "meta" and not local_metadata.get("assign_to_params_buffers", False):
                # copied, as torch copies into a layer's memory: the layer must not share the
                # memory of the state dict's tensors (another layer's, another process's), to
                # write into it or change with it. (A layer on meta takes them as its own.)
                # (detached first: a Params4bit, as state_dict(keep_vars=True) holds, has a .to()
                # of its own, which takes no copy argument and moves its quant state)
                data, stats = data.detach().to(device, copy=True), detached_stats(stats, device)
            new_weight = Params4bit.from_prequantized(data, dict(stats), device=device, module=self)
            if tuple(new_weight.quant_state.shape) != (self.out_features, self.in_features):
                raise ValueError(
                    f"Linear4bit: checkpoint weight {weight_key!r} has shape {tuple(new_weight.quant_state.shape)}, "
                    f"expected {(self.out_features, self.in_features)}"
                )
            self.weight = new_weight
            # The rest (the bias, unexpected keys) by torch's own rules: shape checks, the bias's
            # dtype kept, assign=True honoured, a bias key unexpected in a layer without one. A
            # bias on meta (a layer built under init_empty_weights) first gets storage where the
            # weight now is, so that the layer is never left half loaded; a sharded checkpoint's
            # bias is gathered, as its weight was.
            rest = {k: v for k, v in state_dict.items() if k != weight_key and not k.startswith(weight_key + ".")}
            bias_key = prefix + "bias"
            if self.bias is not None and bias_key in rest:
                if _is_dtensor(rest[bias_key]) and not _is_dtensor(self.bias):
                    rest[bias_key] = rest[bias_key].full_tensor()
                if self.bias.device.type == "meta" and not local_metadata.get("assign_to_params_buffers", False):
                    self.bias = nn.Parameter(
                        torch.empty_like(self.bias, device=new_weight.device), requires_grad=self.bias.requires_grad
                    )
            n_missing = len(missing_keys)
            super()._load_from_state_dict(
                rest, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
            )
            missing_keys[n_missing:] = [k for k in missing_keys[n_missing:] if k != weight_key]
            return
        old = self.weight
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
        if isinstance(old, Params4bit):  # a float checkpoint assigned (assign=True): quantized on the move
            keep_param_type(self, lambda w: old._unquantized_like(w, old.requires_grad, self))

    def _load_in_place(
        self, state_dict, prefix, stats, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ) -> None:
        """Load a quantized checkpoint into a layer whose weight a wrapper owns (FSDP2's DTensor,
        FSDP1's view of its flat parameter): the packed bytes are copied into that weight (full
        or sharded source), never re-registered, and the quant state set on the module. Without a
        weight entry (FSDP1 loads its flat parameter itself) only the quant state is taken."""
        weight_key = prefix + "weight"
        data = state_dict.get(weight_key)
        if data is not None and data.dtype != self.weight.dtype:
            raise ValueError(
                f"Linear4bit: checkpoint weight {weight_key!r} is packed in {data.dtype} but this wrapped layer "
                f"stores {self.weight.dtype}; load with the same bnb_4bit_quant_storage"
            )
        device = self.weight.device if self.weight.device.type != "meta" else "cpu"
        assign = local_metadata.get("assign_to_params_buffers", False)
        quant_state = QuantState.from_dict(dict(stats) if assign else detached_stats(stats, device), device=device)
        if tuple(quant_state.shape) != (self.out_features, self.in_features):
            raise ValueError(
                f"Linear4bit: checkpoint weight {weight_key!r} has shape {tuple(quant_state.shape)}, "
                f"expected {(self.out_features, self.in_features)}"
            )
        state_dict = {k: v for k, v in state_dict.items() if not k.startswith(weight_key + ".")}
        for name, own in (("weight", self.weight), ("bias", self.bias)):
            value = state_dict.get(prefix + name)
            if own is not None and value is not None and _is_dtensor(own) and not _is_dtensor(value):
                from torch.distributed.tensor import distribute_tensor

                # a full (unsharded) checkpoint: every rank keeps its own shard of it
                state_dict[prefix + name] = distribute_tensor(value.to(own.device), own.device_mesh, own.placements)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict and data is not None, missing_keys, unexpected_keys, error_msgs
        )
        old = getattr(self.weight, "quant_state", None) if isinstance(self.weight, Params4bit) else None
        if old is not None and not assign and copy_quant_state_(old, quant_state):
            # the codes were copied into the weight's memory: the statistics go into the tensors
            # read with them (by a process sharing that memory, a copy.copy of this layer)
            quant_state = old
        self.quant_state = quant_state
        if not _is_dtensor(self.weight):
            self.weight.quant_state = quant_state
        if isinstance(self.weight, Params4bit):
            self.weight.blocksize = quant_state.blocksize
            self.weight.compress_statistics = quant_state.nested
            self.weight.quant_type = quant_state.quant_type

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x @ dequantize_4bit(weight).T + bias`` computed in ``compute_dtype`` (a float32 or bfloat16
        first input makes its dtype the compute dtype, ``set_compute_type``), returned in ``x``'s dtype.
        In eager inference a runner prepared by an earlier call may serve it directly
        (``BNB_DIRECT_KERNELS=0`` turns that off)."""
        # Decoding: the runner kept by an earlier call (_keep_decode_plan), where nothing it was
        # prepared with has changed and the call is a plain eager one. Each test costs ~1 us with
        # the caches as cold as a decoding model leaves them; the general path below costs ~20 us
        # more per call, ~40 us with double quantization (bench/cpu_glue.py).
        plan = None
        if not torch.compiler.is_compiling():  # traced code takes the general path
            weight = self._parameters.get("weight")
            plan = kept_caches(weight).get(DECODE_PLAN_KEY) if type(weight) is Params4bit else None
        if plan is not None:
            gen, ptr, qs, absmax, absmax_ptr, bias, bias_ptr, dtype, nested, run = plan
            if (
                gen == _direct.generation
                and type(x) is torch.Tensor
                and weight.quant_state is qs
                and qs.absmax is absmax
                and self._parameters.get("bias") is bias
                and self.compute_dtype is dtype
                and not (torch.is_grad_enabled() and (x.requires_grad or (bias is not None and bias.requires_grad)))
                and _direct.no_modes()
                and absmax.data_ptr() == absmax_ptr
                and (bias is None or bias.data_ptr() == bias_ptr)
                and (nested is None or _nested_same(qs, nested))
            ):
                with _disable_torch_function():
                    same = weight.data_ptr() == ptr
                out = run(x) if same else None
                if out is not None:
                    return out
        weight = self.weight
        if getattr(weight, "quant_state", None) is None:
            fix_4bit_weight_quant_state_from_module(self)
        _checks.check_linear_input(type(self).__name__, x, self.in_features)
        if not self.compute_type_is_set:
            self.set_compute_type(x)
            self.compute_type_is_set = True
        inp_dtype = x.dtype
        if self.compute_dtype is not None and x.dtype != self.compute_dtype:
            x = x.to(self.compute_dtype)
        bias = _bias_in(self, x.dtype)
        # The packed data has no orientation (the ops read it as a column); a plain-tensor alias
        # of the Params4bit skips its __torch_function__ on every torch call below (~2-3 us each
        # with warm caches, ~20 us cold, as in a decoding model's every layer). Traced code keeps
        # the public form, and so does a call under a torch.func transform (an alias made there is
        # a functorch wrapper, of no use to the later calls it would be kept for).
        if type(weight) is Params4bit and not torch.compiler.is_compiling() and not _direct.transforms_active():
            packed = _plain_alias(weight)
        else:
            packed = weight.t()
        out = matmul_4bit(x, packed, bias=bias, quant_state=weight.quant_state)
        if (
            type(weight) is Params4bit
            and not torch.compiler.is_compiling()
            and type(x) is torch.Tensor
            and not (torch.is_grad_enabled() and x.requires_grad)  # (training: no runner would serve)
        ):
            _keep_decode_plan(self, weight, packed, x)
        return out if out.dtype == inp_dtype else out.to(inp_dtype)


class LinearFP4(Linear4bit):
    """``Linear4bit`` with ``quant_type="fp4"``."""

    def __init__(
        self,
        input_features: int,
        output_features: int,
        bias: bool = True,
        compute_dtype: torch.dtype | None = None,
        compress_statistics: bool = True,
        quant_storage: torch.dtype = torch.uint8,
        device: Any = None,
    ) -> None:
        super().__init__(
            input_features, output_features, bias, compute_dtype, compress_statistics, "fp4", quant_storage, device
        )


class LinearNF4(Linear4bit):
    """``Linear4bit`` with ``quant_type="nf4"``."""

    def __init__(
        self,
        input_features: int,
        output_features: int,
        bias: bool = True,
        compute_dtype: torch.dtype | None = None,
        compress_statistics: bool = True,
        quant_storage: torch.dtype = torch.uint8,
        device: Any = None,
    ) -> None:
        super().__init__(
            input_features, output_features, bias, compute_dtype, compress_statistics, "nf4", quant_storage, device
        )
