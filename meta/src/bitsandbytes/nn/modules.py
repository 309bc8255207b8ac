"""Quantized parameters and layers: 4-bit (NF4/FP4) and LLM.int8() linear layers, embeddings.

Class names, constructor signatures, instance ``__dict__`` keys and state-dict layouts follow the
established release exactly: transformers, peft and accelerate depend on all of them.
"""

from __future__ import annotations

import copy
import logging
import sys
from typing import Any, TypeVar

import torch
import torch.nn.functional as torchF
from torch import nn

from .. import functional as F
from ..autograd._functions import MatmulLtState, matmul, matmul_4bit
from ..functional import QuantState
from ..utils import INVERSE_LINEAR_8BIT_WEIGHTS_FORMAT_MAPPING, OutlierTracer

T = TypeVar("T", bound=nn.Module)

_QUANT_STATE_KEYS = ("absmax", "quant_map", "nested_absmax", "nested_quant_map")

logger = logging.getLogger(__name__)
"""The established release reports slow configurations on this logger (``bitsandbytes.nn.modules``)."""


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


def _is_dtensor(t: Any) -> bool:
    """Whether ``t`` is a DTensor (FSDP2's sharded parameters), without importing torch.distributed."""
    return type(t).__name__ == "DTensor" and hasattr(t, "to_local")


def _register_optim_override(module: nn.Module) -> None:
    """Ask the 8-bit optimizers to keep this module's weight in 32 bit (when bitsandbytes.optim exists)."""
    try:
        from ..optim import GlobalOptimManager
    except ImportError:
        return
    GlobalOptimManager.get_instance().register_module_override(module, "weight", {"optim_bits": 32})


# --------------------------------------------------------------------------------------------
# Embeddings


class StableEmbedding(nn.Embedding):
    """Embedding followed by LayerNorm, with its weight kept in 32-bit by the 8-bit optimizers."""

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        padding_idx: int | None = None,
        max_norm: float | None = None,
        norm_type: float = 2.0,
        scale_grad_by_freq: bool = False,
        sparse: bool = False,
        _weight: torch.Tensor | None = None,
        device: Any = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(
            num_embeddings,
            embedding_dim,
            padding_idx,
            max_norm,
            norm_type,
            scale_grad_by_freq,
            sparse,
            _weight,
            device,
            dtype,
        )
        self.norm = nn.LayerNorm(embedding_dim, device=device)
        _register_optim_override(self)

    def reset_parameters(self) -> None:
        nn.init.xavier_uniform_(self.weight)
        self._fill_padding_idx_with_zero()

    def _fill_padding_idx_with_zero(self) -> None:
        if self.padding_idx is not None:
            with torch.no_grad():
                self.weight[self.padding_idx].fill_(0)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        emb = torchF.embedding(
            input, self.weight, self.padding_idx, self.max_norm, self.norm_type, self.scale_grad_by_freq, self.sparse
        )
        emb = emb.to(torch.get_default_dtype())
        return self.norm(emb).to(self.weight.dtype)


class Embedding(nn.Embedding):
    """A plain embedding whose weight the 8-bit optimizers keep in 32 bit."""

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        padding_idx: int | None = None,
        max_norm: float | None = None,
        norm_type: float = 2.0,
        scale_grad_by_freq: bool = False,
        sparse: bool = False,
        _weight: torch.Tensor | None = None,
        device: Any = None,
    ) -> None:
        super().__init__(
            num_embeddings,
            embedding_dim,
            padding_idx,
            max_norm,
            norm_type,
            scale_grad_by_freq,
            sparse,
            _weight,
            device=device,
        )
        _register_optim_override(self)

    def reset_parameters(self) -> None:
        nn.init.xavier_uniform_(self.weight)
        if self.padding_idx is not None:
            with torch.no_grad():
                self.weight[self.padding_idx].fill_(0)


# --------------------------------------------------------------------------------------------
# 4-bit


class Params4bit(torch.nn.Parameter):
    """A weight that quantizes itself to 4 bit (NF4/FP4) when first moved to a device."""

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
        new = type(self).__new__(type(self))
        new.__setstate__(self.__getstate__())
        return new

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):  # type: ignore[override]
        kwargs = kwargs or {}
        if func is _DTYPE_GETTER or func is torch.Tensor.is_floating_point:
            _check_fsdp1_flatten(sys._getframe(1))
        if func in (torch.chunk, torch.split):
            src = args[0]
            with torch._C.DisableTorchFunctionSubclass():
                parts = func(*args, **kwargs)
            return tuple(
                Params4bit(
                    part,
                    requires_grad=src.requires_grad,
                    quant_state=src.quant_state,
                    blocksize=src.blocksize,
                    compress_statistics=src.compress_statistics,
                    quant_type=src.quant_type,
                    quant_storage=src.quant_storage,
                    module=src.module,
                    bnb_quantized=src.bnb_quantized,
                )
                for part in parts
            )
        return super().__torch_function__(func, types, args, kwargs)

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
        return self.to(device="cpu")

    def cuda(self, device: Any = None, non_blocking: bool = False) -> Params4bit:  # type: ignore[override]
        return self.to(device="cuda" if device is None else device, non_blocking=non_blocking)

    def xpu(self, device: Any = None, non_blocking: bool = False) -> Params4bit:  # type: ignore[override]
        return self.to(device="xpu" if device is None else device, non_blocking=non_blocking)

    def to(self, *args: Any, **kwargs: Any) -> Params4bit:  # type: ignore[override]
        """Quantize on the first move to a real device; afterwards move the packed data and its state."""
        device, dtype, non_blocking, _ = torch._C._nn._parse_to(*args, **kwargs)
        if device is not None and device.type != "meta" and not self.bnb_quantized:
            return self._quantize(device)
        if device is not None and self.bnb_quantized:
            _check_device_has_kernels(device)
        if self.quant_state is not None and device is not None:
            self.quant_state.to(device)
        # The packed bytes keep their storage dtype: a float cast would corrupt them.
        target_dtype = None if self.bnb_quantized else dtype
        moved = torch.Tensor.to(self, device=device, dtype=target_dtype, non_blocking=non_blocking)
        return Params4bit(
            moved,
            requires_grad=self.requires_grad,
            quant_state=self.quant_state,
            blocksize=self.blocksize,
            compress_statistics=self.compress_statistics,
            quant_type=self.quant_type,
            quant_storage=self.quant_storage,
            bnb_quantized=self.bnb_quantized,
        )


def _rebuild_params4bit(state: dict[str, Any]) -> Params4bit:
    new = Params4bit.__new__(Params4bit)
    new.__setstate__(state)
    return new


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


def _bias_in(module: nn.Module, dtype: torch.dtype) -> torch.Tensor | None:
    """The bias in the compute dtype. As the established release's forward does, the parameter
    itself takes that dtype, in place (code and test suites written for it observe ``bias.dtype``
    after a forward); under torch.compile, which cannot trace that, a cast copy is used instead."""
    bias = module.bias
    if bias is None or bias.dtype == dtype:
        return bias
    if torch.compiler.is_compiling():
        return bias.to(dtype)
    bias.data = bias.data.to(dtype)
    return bias


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
        if weight_key not in state_dict and any(k.startswith("quant_state.") for k in stats):
            # FSDP1's sharded state dict: the wrapper loads the packed bytes into its flat
            # parameter and leaves this layer the quant state.
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
            new_weight = Params4bit.from_prequantized(data, dict(stats), device=device, module=self)
            if tuple(new_weight.quant_state.shape) != (self.out_features, self.in_features):
                raise ValueError(
                    f"Linear4bit: checkpoint weight {weight_key!r} has shape {tuple(new_weight.quant_state.shape)}, "
                    f"expected {(self.out_features, self.in_features)}"
                )
            self.weight = new_weight
            bias_key = prefix + "bias"
            if self.bias is not None and bias_key in state_dict:
                with torch.no_grad():
                    self.bias.data = state_dict[bias_key].to(self.bias.device)
            elif self.bias is not None:
                missing_keys.append(bias_key)
            for k in state_dict:
                if k.startswith(prefix) and k not in (weight_key, bias_key) and not k.startswith(weight_key + "."):
                    rest = k[len(prefix) :]
                    if "." not in rest:
                        unexpected_keys.append(k)
            return
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

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
        quant_state = QuantState.from_dict(dict(stats), device=device)
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
        self.quant_state = quant_state
        if not _is_dtensor(self.weight):
            self.weight.quant_state = quant_state
        if isinstance(self.weight, Params4bit):
            self.weight.blocksize = quant_state.blocksize
            self.weight.compress_statistics = quant_state.nested
            self.weight.quant_type = quant_state.quant_type

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fix_4bit_weight_quant_state_from_module(self)
        if x.shape[-1] != self.in_features:
            raise ValueError(
                f"{type(self).__name__}: input's last dimension is {x.shape[-1]}, expected in_features={self.in_features}"
            )
        if not self.compute_type_is_set:
            self.set_compute_type(x)
            self.compute_type_is_set = True
        inp_dtype = x.dtype
        if self.compute_dtype is not None:
            x = x.to(self.compute_dtype)
        bias = _bias_in(self, x.dtype)
        return matmul_4bit(x, self.weight.t(), bias=bias, quant_state=self.weight.quant_state).to(inp_dtype)


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


# --------------------------------------------------------------------------------------------
# 8-bit


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
        B = self.data.contiguous().to(device=device, dtype=torch.float16)
        CB, SCB, _ = F.int8_vectorwise_quant(B)
        self.data = CB
        self.CB = CB
        self.SCB = SCB
        return self

    def cpu(self) -> Int8Params:  # type: ignore[override]
        return self.to(device="cpu")

    def cuda(self, device: Any = None, non_blocking: bool = False) -> Int8Params:  # type: ignore[override]
        return self.to(device="cuda" if device is None else device, non_blocking=non_blocking)

    def xpu(self, device: Any = None, non_blocking: bool = False) -> Int8Params:  # type: ignore[override]
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

    def to(self, *args: Any, **kwargs: Any) -> Int8Params:  # type: ignore[override]
        """Quantize float CPU data on a move to a real device; otherwise move data and scales."""
        device, dtype, non_blocking, _ = torch._C._nn._parse_to(*args, **kwargs)
        is_int8 = self.data.dtype == torch.int8
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


def maybe_rearrange_weight(
    state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
) -> None:
    """Load-state-dict pre-hook of ``Linear8bitLt``: consume ``weight_format`` (only ``"row"`` is supported)."""
    weight = state_dict.get(f"{prefix}weight")
    if weight is None:
        return
    weight_format = state_dict.pop(f"{prefix}weight_format", "row")
    if isinstance(weight_format, torch.Tensor):
        weight_format = weight_format.item()
    if isinstance(weight_format, int):
        if weight_format not in INVERSE_LINEAR_8BIT_WEIGHTS_FORMAT_MAPPING:
            raise ValueError(f"Expected supported weight format - got {weight_format}")
        weight_format = INVERSE_LINEAR_8BIT_WEIGHTS_FORMAT_MAPPING[weight_format]
    if weight_format != "row":
        raise ValueError(f"Only 'row' weight format is supported, got {weight_format}")


class Linear8bitLt(nn.Linear):
    """LLM.int8() linear layer: int8 weight with per-row scales, optional outlier decomposition."""

    def __init__(
        self,
        input_features: int,
        output_features: int,
        bias: bool = True,
        has_fp16_weights: bool = True,
        threshold: float = 0.0,
        index: Any = None,
        device: Any = None,
    ) -> None:
        super().__init__(input_features, output_features, bias, device)
        self.state = MatmulLtState()
        self.index = index
        self.state.threshold = threshold
        self.state.has_fp16_weights = has_fp16_weights
        if threshold > 0.0 and not has_fp16_weights:
            self.state.use_pool = True
        self.weight = Int8Params(self.weight.data, has_fp16_weights=has_fp16_weights, requires_grad=has_fp16_weights)
        self._register_load_state_dict_pre_hook(maybe_rearrange_weight)

    def _save_to_state_dict(self, destination: dict, prefix: str, keep_vars: bool) -> None:
        super()._save_to_state_dict(destination, prefix, keep_vars)
        scb = getattr(self.weight, "SCB", None)
        if scb is None:
            scb = self.state.SCB
        if not self.state.has_fp16_weights and scb is not None:
            destination[prefix + "SCB"] = scb if keep_vars else scb.detach()
            destination[prefix + "weight_format"] = torch.tensor(0, dtype=torch.uint8)

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ) -> None:
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
        for key in list(unexpected_keys):
            if key[len(prefix) :] != "SCB":
                continue
            # A plain parameter (a weight tied to another module's) has no SCB attribute at all.
            weight_scb = getattr(self.weight, "SCB", None)
            target = weight_scb if weight_scb is not None else self.state.SCB
            if target is None:
                raise RuntimeError(
                    "Loading a quantized checkpoint into non-quantized Linear8bitLt is not supported. "
                    "Please call module.cuda() before module.load_state_dict()"
                )
            target.copy_(state_dict[key])
            if self.state.SCB is not None:
                self.state.SCB = target
            unexpected_keys.remove(key)

    def init_8bit_state(self) -> None:
        """Move the int8 weight and its scales from the parameter into ``state``."""
        self.state.CB = self.weight.CB
        self.state.SCB = self.weight.SCB
        self.weight.CB = None
        self.weight.SCB = None

    def to(self, *args: Any, **kwargs: Any) -> Linear8bitLt:  # type: ignore[override]
        result = super().to(*args, **kwargs)
        device, _, _, _ = torch._C._nn._parse_to(*args, **kwargs)
        if device is not None:
            if result.state.CB is not None:
                result.state.CB = result.state.CB.to(device)
            if result.state.SCB is not None:
                result.state.SCB = result.state.SCB.to(device)
        return result

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.in_features:
            raise ValueError(f"Linear8bitLt: input's last dimension is {x.shape[-1]}, expected {self.in_features}")
        self.state.is_training = self.training
        if self.weight.CB is not None:
            self.init_8bit_state()
        if not self.state.has_fp16_weights and self.weight.dtype != torch.int8 and self.state.CB is None:
            raise NotQuantizedError("Linear8bitLt: the weight is not quantized; move the module to a device first")
        out = matmul(x, self.weight, bias=_bias_in(self, x.dtype), state=self.state)
        if not self.state.has_fp16_weights and self.state.CB is not None:
            self.weight.data = self.state.CB
        return out


# --------------------------------------------------------------------------------------------
# Quantized embeddings


class Embedding8bit(nn.Embedding):
    """An embedding table stored as int8 rows with per-row scales (quantized on ``.to(device)``)."""

    def __init__(
        self, num_embeddings: int, embedding_dim: int, device: Any = None, dtype: torch.dtype | None = None
    ) -> None:
        super().__init__(num_embeddings, embedding_dim, device=device, dtype=dtype)
        self.dtype = self.weight.data.dtype
        self.weight = Int8Params(self.weight.data, has_fp16_weights=False, requires_grad=False)

    def _save_to_state_dict(self, destination, prefix, keep_vars) -> None:
        raise NotImplementedError("Saving Embedding8bit module is not implemented")

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not hasattr(self.weight, "SCB") or self.weight.SCB is None:
            raise RuntimeError("Embedding layer is not quantized. Please call .cuda() or .to(device) first.")
        rows = self.weight.data
        scb = self.weight.SCB
        compressed = torchF.embedding(input, rows).float()
        scales = torchF.embedding(input, scb.view(-1, 1))
        return (compressed * scales / 127.0).to(self.dtype)


class Embedding4bit(nn.Embedding):
    """An embedding table stored in 4 bit (NF4/FP4); only the looked-up rows are decoded when possible."""

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        dtype: torch.dtype | None = None,
        quant_type: str = "fp4",
        quant_storage: torch.dtype = torch.uint8,
        device: Any = None,
    ) -> None:
        if quant_type not in QuantState.valid_quant_types:
            raise ValueError(f"Embedding4bit: quant_type must be 'nf4' or 'fp4', got {quant_type!r}")
        super().__init__(num_embeddings, embedding_dim, device=device, dtype=dtype)
        self.dtype = self.weight.data.dtype
        self.weight = Params4bit(
            self.weight.data,
            requires_grad=False,
            compress_statistics=None,
            quant_type=quant_type,
            quant_storage=quant_storage,
            module=self,
        )
        self.quant_state: QuantState | None = None
        self.quant_storage = quant_storage
        blocksize = self.weight.blocksize
        if embedding_dim % blocksize != 0:
            logger.warning(
                "Embedding size %d is not divisible by block size %d. This will lead to slow inference.",
                embedding_dim,
                blocksize,
            )

    def _save_to_state_dict(self, destination, prefix, keep_vars) -> None:
        raise NotImplementedError("Saving Embedding4bit module is not implemented")

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        fix_4bit_weight_quant_state_from_module(self)
        qs = self.weight.quant_state
        if self.embedding_dim % qs.blocksize == 0:
            packed = self.weight.data.view(torch.uint8).view(self.num_embeddings, self.embedding_dim // 2)
            absmax = F._resolved_absmax(qs).view(self.num_embeddings, self.embedding_dim // qs.blocksize)
            rows = torchF.embedding(input.reshape(-1), packed)
            row_absmax = torchF.embedding(input.reshape(-1), absmax)
            row_state = QuantState(
                absmax=row_absmax.reshape(-1).contiguous(),
                shape=(rows.shape[0], self.embedding_dim),
                code=qs.code,
                blocksize=qs.blocksize,
                quant_type=qs.quant_type,
                dtype=qs.dtype,
            )
            out = F.dequantize_4bit(rows.reshape(-1, 1), row_state)
            return out.view(*input.shape, self.embedding_dim).to(self.dtype)
        full = F.dequantize_4bit(self.weight.data.reshape(-1, 1), qs).to(self.dtype)
        return torchF.embedding(input, full)


class EmbeddingFP4(Embedding4bit):
    """``Embedding4bit`` with ``quant_type="fp4"``."""

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        dtype: torch.dtype | None = None,
        quant_storage: torch.dtype = torch.uint8,
        device: Any = None,
    ) -> None:
        super().__init__(
            num_embeddings, embedding_dim, dtype=dtype, quant_type="fp4", quant_storage=quant_storage, device=device
        )


class EmbeddingNF4(Embedding4bit):
    """``Embedding4bit`` with ``quant_type="nf4"``."""

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        dtype: torch.dtype | None = None,
        quant_storage: torch.dtype = torch.uint8,
        device: Any = None,
    ) -> None:
        super().__init__(
            num_embeddings, embedding_dim, dtype=dtype, quant_type="nf4", quant_storage=quant_storage, device=device
        )


# --------------------------------------------------------------------------------------------


class OutlierAwareLinear(nn.Linear):
    """Base class for linear layers that quantize their weight around input outlier dimensions.

    Subclasses implement :meth:`forward_with_outliers` and :meth:`quantize_weight`; the outliers come
    from :class:`bitsandbytes.utils.OutlierTracer` (initialize it on the model first).
    """

    def __init__(self, input_features: int, output_features: int, bias: bool = True, device: Any = None) -> None:
        super().__init__(input_features, output_features, bias, device)
        self.outlier_dim: torch.Tensor | None = None
        self.is_quantized = False

    def forward_with_outliers(self, x: torch.Tensor, outlier_idx: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError("Please override the `forward_with_outliers(self, x, outlier_idx)` function")

    def quantize_weight(self, w: torch.Tensor, outlier_idx: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError("Please override the `quantize_weights(self, w, outlier_idx)` function")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.outlier_dim is None:
            tracer = OutlierTracer.get_instance()
            if not tracer.is_initialized():
                print("Please use OutlierTracer.initialize(model) before using the OutlierAwareLinear layer")
            self.outlier_dim = tracer.get_outliers(self.weight)
        if not self.is_quantized:
            w = self.quantize_weight(self.weight, self.outlier_dim)
            self.weight.data.copy_(w)
            self.is_quantized = True
        return self.forward_with_outliers(x, self.outlier_dim)


__all__ = [
    "Embedding",
    "Embedding4bit",
    "Embedding8bit",
    "EmbeddingFP4",
    "EmbeddingNF4",
    "Int8Params",
    "Linear4bit",
    "Linear8bitLt",
    "LinearFP4",
    "LinearNF4",
    "OutlierAwareLinear",
    "Params4bit",
    "StableEmbedding",
    "fix_4bit_weight_quant_state_from_module",
    "maybe_rearrange_weight",
]
