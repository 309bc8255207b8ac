"""Base classes of the bitsandbytes optimizers (spec §8.1, §8.3, §8.4, §7.3).

``Optimizer8bit`` holds what every optimizer shares: per-parameter configuration (with the
``GlobalOptimManager`` overrides), lazy state creation, the ``step()`` loop and the state dict
format whose quantization state is wrapped under ``"__bnb_optimizer_quant_state__"``.
``Optimizer1State`` / ``Optimizer2State`` create the states and call the functional updates,
which go through ``torch.ops.bitsandbytes`` to the kernel registered for the parameter's device.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

import torch

from .. import _functional_optim as F
from .. import _paging
from .._checks import FLOAT_DTYPES, OPTIMIZER_STATE_BLOCKSIZE
from ..backends.reference.codebooks import dynamic_map
from ._hyperparams import check_group_betas, group_betas, validate_ademamix, validate_hyperparameters, validate_settings
from ._sharded_state import shard_state_dict
from ._state_dict import QUANT_STATE_KEY, _local, unwrap_assigned_state, wrap_quant_state
from ._state_dict import load_state_dict as _load_state_dict
from .manager import GlobalOptimManager, MockArgs

logger = logging.getLogger(__name__)

STATE_BLOCKSIZE = OPTIMIZER_STATE_BLOCKSIZE
"""Block size of 8-bit optimizer states (fixed, spec §8.3)."""

_PAGING_WARNED = False


def _warn_paging_unsupported(device: torch.device) -> None:
    global _PAGING_WARNED
    if not _PAGING_WARNED:
        _PAGING_WARNED = True
        logger.warning(
            "bitsandbytes: paged optimizers are not supported for parameters on %s here; the optimizer "
            "state is kept in ordinary memory (paging needs a platform wheel with unified memory, e.g. CUDA)",
            device,
        )


def _group_betas(given: Any, betas: list[float] | tuple[float, ...]) -> list[float] | tuple[float, ...]:
    """``betas`` as the parameter group keeps it (spec §8.1): the list of floats parsed from a
    string such as ``"(0.9, 0.999)"``, otherwise a tuple (the established release's state dicts
    hold a tuple for betas given as a list: tests/data/optim_*.pt)."""
    return list(betas) if isinstance(given, str) else tuple(betas)


class Optimizer8bit(torch.optim.Optimizer):
    """Base of every bitsandbytes optimizer (8-bit and 32-bit states alike)."""

    _FSDP_WRAPPED_QUANT_STATE_KEY = QUANT_STATE_KEY

    def __init__(
        self, params: Iterable, defaults: dict[str, Any], optim_bits: int = 32, is_paged: bool = False
    ) -> None:
        super().__init__(params, defaults)
        self.initialized = False
        self.name2qmap: dict[str, torch.Tensor] = {}
        self.is_paged = is_paged
        self.page_mng = _paging.GlobalPageManager.get_instance()
        self.mng = GlobalOptimManager.get_instance()
        self.non_castable_tensor_keys = {
            "qmap1",
            "qmap2",
            "max1",
            "max2",
            "new_max1",
            "new_max2",
            "state1",
            "state2",
            "gnorm_vec",
            "absmax1",
            "absmax2",
            "unorm_vec",
        }
        if optim_bits == 8:
            self.fill_qmap()

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """As ``torch.optim.Optimizer.add_param_group``, rejecting parameters the kernels cannot
        update before the group is added (a refused group must not stay behind). A group added
        after the first step has its ``register_module_override`` entries resolved at the next."""
        params = param_group["params"]
        if isinstance(params, torch.Tensor):
            param_group["params"] = params = [params]
        elif not isinstance(params, set):  # torch refuses sets with its own message
            param_group["params"] = params = list(params)
        for p in params:
            p = p[1] if isinstance(p, tuple) and len(p) == 2 else p  # (name, param) pairs
            if isinstance(p, torch.Tensor) and p.dtype not in FLOAT_DTYPES:
                raise TypeError(
                    f"bitsandbytes optimizers update float32, float16 or bfloat16 parameters; got a parameter "
                    f"of dtype {p.dtype} and shape {tuple(p.shape)}"
                )
        super().add_param_group(param_group)
        self.initialized = False  # check_overrides() again: the new parameters may have overrides

    def fill_qmap(self) -> None:
        """Create the signed (``dynamic``) and unsigned (``udynamic``) 8-bit state maps."""
        self.name2qmap["dynamic"] = dynamic_map(signed=True)
        self.name2qmap["udynamic"] = dynamic_map(signed=False)

    # ---------------------------------------------------------------------------- state dict

    def state_dict(self) -> dict[str, Any]:
        """The torch layout, with each parameter's quantization state wrapped under
        ``"__bnb_optimizer_quant_state__"`` (so FSDP leaves it alone). The states of the local
        shard of an FSDP2 (DTensor) parameter are DTensors (_sharded_state)."""
        return wrap_quant_state(shard_state_dict(self, super().state_dict()), self.non_castable_tensor_keys)

    def load_state_dict(self, state_dict: dict[str, Any], move_to_device: bool = True) -> None:
        """Load a state dict of ``state_dict()``'s layout (wrapped or not).

        Floating tensors other than the quantization state are cast to each parameter's dtype
        and device; the quantization state keeps its dtype and is moved to the parameter's
        device when ``move_to_device``. A parameter state this optimizer cannot continue with
        (another algorithm's, torch.optim's, another shape) raises ValueError.
        """
        _load_state_dict(self, state_dict, move_to_device)

    def __getstate__(self) -> dict[str, Any]:
        """torch pickles only defaults, state and param_groups; a copy (``copy.deepcopy``,
        ``pickle``, ``torch.save(optimizer)``) also needs the settings the steps read. The
        singletons are not copied, and the copy resolves overrides again at its first step."""
        state = super().__getstate__()
        for key, value in self.__dict__.items():
            if not key.startswith("_") and key not in state and key not in ("mng", "page_mng"):
                state[key] = value
        state["initialized"] = False
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self.mng = GlobalOptimManager.get_instance()
        self.page_mng = _paging.GlobalPageManager.get_instance()

    # ---------------------------------------------------------------------------- step loop

    def to_gpu(self) -> None:
        """Move every (non-paged) state tensor to its parameter's device."""
        for group in self.param_groups:
            for p in group["params"]:
                if p in self.state:
                    values = self.state[p]
                    for k, v in values.items():
                        if isinstance(v, torch.Tensor) and not _paging.is_paged(v):
                            values[k] = v.to(p.device)

    def check_overrides(self) -> None:
        """Resolve ``GlobalOptimManager.register_module_override`` entries to overrides of the parameters they name."""
        for module, attr, config in self.mng.module_weight_config_triple:
            pmodule = getattr(module, attr)
            if not isinstance(pmodule, torch.Tensor):
                raise ValueError(f"register_module_override: {type(module).__name__}.{attr} is not a tensor")
            # By the parameter only: an entry by position would also reach the parameter at the
            # same position of every other optimizer.
            for group in self.param_groups:
                for p in group["params"]:
                    if p is pmodule:
                        self.mng.set_parameter_config(p, config)

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """One optimization step over every parameter with a gradient; returns the closure's loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()

        if not self.initialized:
            self.check_overrides()
            self.to_gpu()
            self.initialized = True

        paged_on: set[torch.device] = set()
        for gindex, group in enumerate(self.param_groups):
            for pindex, p in enumerate(group["params"]):
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise ValueError(
                        f"{type(self).__name__} does not support sparse gradients (parameter {pindex} of group "
                        f"{gindex}, shape {tuple(p.shape)}); use a dense gradient"
                    )
                state = self.state[p]
                if QUANT_STATE_KEY in state:
                    unwrap_assigned_state(self, p, state)
                if len(state) == 0:
                    self.init_state(group, p, gindex, pindex)
                self.prefetch_state(p)
                self.update_step(group, p, gindex, pindex)
                if self.is_paged and any(_paging.is_paged(t) for t in state.values()):
                    paged_on.add(p.device)
        for device in paged_on:
            # The kernels update paged states asynchronously, and the host addresses the same
            # memory (a state dict, a checkpoint) with nothing ordering it after them.
            _paging.synchronize(device)
        return loss

    def get_config(self, gindex: int, pindex: int, group: dict[str, Any]) -> dict[str, Any]:
        """The settings for parameter ``pindex`` of group ``gindex``, overrides applied."""
        config = {
            "betas": group_betas(group, getattr(self, "optimizer_name", None), type(self).__name__),
            "eps": group["eps"],
            "weight_decay": group["weight_decay"],
            "lr": group["lr"],
            "alpha": group.get("alpha", 0.0),
            "t_alpha": group.get("t_alpha"),
            "t_beta3": group.get("t_beta3"),
            "optim_bits": self.args.optim_bits,
            "min_8bit_size": self.args.min_8bit_size,
            "max_unorm": self.args.max_unorm,
            "skip_zeros": self.args.skip_zeros,
        }
        p = group["params"][pindex]
        indexed = self.mng.index2config.get((gindex, pindex))
        owners = self.mng.owners_of(indexed) if indexed is not None else set()
        if indexed is not None and (not owners or id(p) in owners):
            # An entry by position that is another live parameter's override (of another model's
            # optimizer, registered or resolved there) is not this parameter's.
            config.update(indexed)
        if id(p) in self.mng.pid2config:
            config.update(self.mng.pid2config[id(p)])
        check_group_betas(config["betas"], getattr(self, "optimizer_name", None), type(self).__name__)
        return config

    def init_state(self, group: dict[str, Any], p: torch.Tensor, gindex: int, pindex: int) -> None:
        """Create the state of ``p`` before its first step; each optimizer with one or two states
        overrides this."""
        raise NotImplementedError("init_state method needs to be overridden")

    def update_step(self, group: dict[str, Any], p: torch.Tensor, gindex: int, pindex: int) -> None:
        """Apply one update to ``p`` from its gradient and state; each optimizer with one or two
        states overrides this."""
        raise NotImplementedError("The update_step method needs to be overridden")

    def get_state_buffer(self, p: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """A zero state buffer like ``p``; paged (unified memory) when the optimizer is paged,
        the parameter is large (>= 1e5 elements) and a loaded platform wheel pages memory for its
        device (CUDA, ROCm). Contiguous whatever p's strides (a transposed parameter): the kernels
        take dense states."""
        return self._state_zeros(p, tuple(p.shape), dtype, 1e5)

    def _state_zeros(
        self, p: torch.Tensor, shape: tuple[int, ...], dtype: torch.dtype, paged_from: float
    ) -> torch.Tensor:
        """Zeros of ``shape`` for ``p``'s state: paged memory when paged and ``p.numel() >= paged_from``."""
        if not self.is_paged or p.numel() < paged_from:
            return torch.zeros(shape, dtype=dtype, device=p.device)
        if not _paging.paging_supported(p.device):
            _warn_paging_unsupported(p.device)
            return torch.zeros(shape, dtype=dtype, device=p.device)
        buff = _paging.get_paged(*shape, dtype=dtype, device=p.device)
        _paging.fill(buff, 0)  # after the device's queued updates: the host writes managed memory
        self.page_mng.paged_tensors.append(buff)
        return buff

    def prefetch_state(self, p: torch.Tensor) -> None:
        """Prefetch the paged states of ``p`` to its device."""
        if self.is_paged:
            state = self.state[p]
            for key in ("state1", "state2"):
                t = state.get(key)
                if _paging.is_paged(t):
                    _paging.prefetch_tensor(t)

    # ---------------------------------------------------------------------------- helpers

    @staticmethod
    def _state_dtype(config: dict[str, Any], p: torch.Tensor) -> torch.dtype:
        bits = config["optim_bits"]
        if bits not in (8, 32):
            raise NotImplementedError(f"Amount of optimizer bits not supported: {bits} (use 8 or 32)")
        if bits == 32 or p.numel() < config["min_8bit_size"]:
            return torch.float32
        return torch.uint8

    def _qmaps(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        if "dynamic" not in self.name2qmap:
            self.fill_qmap()
        for key in ("dynamic", "udynamic"):
            if self.name2qmap[key].device != device:
                self.name2qmap[key] = self.name2qmap[key].to(device)
        return self.name2qmap["dynamic"], self.name2qmap["udynamic"]

    @staticmethod
    def _unorm_vec(state: dict[str, Any], p: torch.Tensor, config: dict[str, Any]) -> torch.Tensor | None:
        """The update-norm scratch of the trust-ratio clip, or None when the clip is off. Created
        here when missing: ``max_unorm`` can be turned on after the state was (an override, a
        state dict saved without the clip)."""
        if config["max_unorm"] <= 0.0:
            return None
        if "unorm_vec" not in state:
            state["unorm_vec"] = torch.zeros((1,), device=p.device)
        return state["unorm_vec"]

    @staticmethod
    def _dense(p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(local, work, grad)``: the rank's local parameter, the dense tensor the kernel updates
        (``local`` itself, or a contiguous copy that the caller copies back into ``local``) and the
        dense local gradient. A parameter that is a strided view (a transposed weight, a slice of
        a flat buffer, a channels_last weight) keeps its storage and strides, as under torch.optim."""
        local, grad = _local(p), _local(p.grad)
        work = local if local.is_contiguous() else local.contiguous()
        return local, work, grad if grad.is_contiguous() else grad.contiguous()

    @staticmethod
    def _absmax(p: torch.Tensor, *lead: int) -> torch.Tensor:
        blocks = -(p.numel() // -STATE_BLOCKSIZE)
        return torch.zeros((*lead, blocks), dtype=torch.float32, device=p.device)


class Optimizer2State(Optimizer8bit):
    """Optimizers with two states: adam, lamb, ademamix."""

    n_states = 2  # state tensors per parameter (state1, state2); load_state_dict checks it

    def __init__(
        self,
        optimizer_name: str,
        params: Iterable,
        lr: float = 1e-3,
        betas: tuple[float, ...] | str = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        optim_bits: int = 32,
        args: Any = None,
        min_8bit_size: int = 4096,
        max_unorm: float = 0.0,
        skip_zeros: bool = False,
        is_paged: bool = False,
        alpha: float = 0.0,
        t_alpha: int | None = None,
        t_beta3: int | None = None,
    ) -> None:
        given_betas = betas
        betas = validate_hyperparameters(lr, eps, betas, weight_decay, 3 if optimizer_name == "ademamix" else 2)
        if optimizer_name == "ademamix":
            validate_ademamix(alpha, t_alpha, t_beta3)
        defaults = dict(
            lr=lr,
            betas=_group_betas(given_betas, betas),
            eps=eps,
            weight_decay=weight_decay,
            alpha=alpha,
            t_alpha=t_alpha,
            t_beta3=t_beta3,
        )
        super().__init__(params, defaults, optim_bits, is_paged)
        if args is None:
            args = MockArgs(
                {
                    "optim_bits": optim_bits,
                    "min_8bit_size": min_8bit_size,
                    "max_unorm": max_unorm,
                    "skip_zeros": skip_zeros,
                }
            )
        validate_settings(type(self).__name__, optimizer_name, True, args)
        self.args = args
        self.optimizer_name = optimizer_name

    @torch.no_grad()
    def init_state(self, group: dict[str, Any], p: torch.Tensor, gindex: int, pindex: int) -> None:
        """Create the step counter and the two states of ``p`` (spec §8.3)."""
        config = self.get_config(gindex, pindex, group)
        dtype = self._state_dtype(config, p)  # from the full size: every rank picks the same
        state = self.state[p]
        p = _local(p)
        state["step"] = 0
        if dtype == torch.float32:
            state["state1"] = self.get_state_buffer(p, dtype=torch.float32)
            state["state2"] = self.get_state_buffer(p, dtype=torch.float32)
        else:
            qmap1, qmap2 = self._qmaps(p.device)
            state["state1"] = self.get_state_buffer(p, dtype=torch.uint8)
            state["qmap1"] = qmap1
            state["state2"] = self.get_state_buffer(p, dtype=torch.uint8)
            state["qmap2"] = qmap2
            state["absmax1"] = self._absmax(p)
            state["absmax2"] = self._absmax(p)
        if config["max_unorm"] > 0.0:
            state["unorm_vec"] = torch.zeros((1,), device=p.device)

    def _betas3(self, config: dict[str, Any], step: int) -> tuple[float, float, float, float]:
        betas = config["betas"]
        beta3 = betas[2] if len(betas) >= 3 else 0.0
        return betas[0], betas[1], beta3, config["alpha"]

    @torch.no_grad()
    def update_step(self, group: dict[str, Any], p: torch.Tensor, gindex: int, pindex: int) -> None:
        """Advance ``p`` by one step with the kernel of its device."""
        state = self.state[p]
        local, p, grad = self._dense(p)
        config = self.get_config(gindex, pindex, group)
        state["step"] += 1
        step = state["step"]
        beta1, beta2, beta3, alpha = self._betas3(config, step)
        if state["state1"].dtype == torch.float32:
            F.optimizer_update_32bit(
                self.optimizer_name,
                grad,
                p,
                state["state1"],
                beta1,
                config["eps"],
                step,
                config["lr"],
                state["state2"],
                beta2,
                beta3,
                alpha,
                config["weight_decay"],
                1.0,
                self._unorm_vec(state, p, config),
                max_unorm=config["max_unorm"],
                skip_zeros=config["skip_zeros"],
            )
        else:
            F.optimizer_update_8bit_blockwise(
                self.optimizer_name,
                grad,
                p,
                state["state1"],
                state["state2"],
                beta1,
                beta2,
                beta3,
                alpha,
                config["eps"],
                step,
                config["lr"],
                state["qmap1"],
                state["qmap2"],
                state["absmax1"],
                state["absmax2"],
                weight_decay=config["weight_decay"],
                gnorm_scale=1.0,
                skip_zeros=config["skip_zeros"],
            )
        if p is not local:
            local.copy_(p)


class Optimizer1State(Optimizer8bit):
    """Optimizers with one state: momentum (SGD), lars, rmsprop, adagrad, lion."""

    n_states = 1  # state tensors per parameter (state1); load_state_dict checks it

    def __init__(
        self,
        optimizer_name: str,
        params: Iterable,
        lr: float = 1e-3,
        betas: tuple[float, ...] | str = (0.9, 0.0),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        optim_bits: int = 32,
        args: Any = None,
        min_8bit_size: int = 4096,
        max_unorm: float = 0.0,
        skip_zeros: bool = False,
        is_paged: bool = False,
    ) -> None:
        given_betas = betas
        betas = validate_hyperparameters(lr, eps, betas, weight_decay)
        defaults = dict(lr=lr, betas=_group_betas(given_betas, betas), eps=eps, weight_decay=weight_decay)
        super().__init__(params, defaults, optim_bits, is_paged)
        if args is None:
            args = MockArgs(
                {
                    "optim_bits": optim_bits,
                    "min_8bit_size": min_8bit_size,
                    "max_unorm": max_unorm,
                    "skip_zeros": skip_zeros,
                }
            )
        validate_settings(type(self).__name__, optimizer_name, False, args)
        self.args = args
        self.optimizer_name = optimizer_name

    @torch.no_grad()
    def init_state(self, group: dict[str, Any], p: torch.Tensor, gindex: int, pindex: int) -> None:
        """Create the step counter and the state of ``p`` (spec §8.3)."""
        config = self.get_config(gindex, pindex, group)
        dtype = self._state_dtype(config, p)  # from the full size: every rank picks the same
        state = self.state[p]
        p = _local(p)
        state["step"] = 0
        if dtype == torch.float32:
            state["state1"] = self.get_state_buffer(p, dtype=torch.float32)
        else:
            qmap1, _ = self._qmaps(p.device)
            state["state1"] = self.get_state_buffer(p, dtype=torch.uint8)
            state["qmap1"] = qmap1
            state["absmax1"] = self._absmax(p)
        if config["max_unorm"] > 0.0:
            state["unorm_vec"] = torch.zeros((1,), device=p.device)

    @torch.no_grad()
    def update_step(self, group: dict[str, Any], p: torch.Tensor, gindex: int, pindex: int) -> None:
        """Advance ``p`` by one step with the kernel of its device."""
        state = self.state[p]
        local, p, grad = self._dense(p)
        config = self.get_config(gindex, pindex, group)
        state["step"] += 1
        step = state["step"]
        betas = config["betas"]
        if state["state1"].dtype == torch.float32:
            F.optimizer_update_32bit(
                self.optimizer_name,
                grad,
                p,
                state["state1"],
                betas[0],
                config["eps"],
                step,
                config["lr"],
                None,
                betas[1],
                0.0,
                0.0,
                config["weight_decay"],
                1.0,
                self._unorm_vec(state, p, config),
                max_unorm=config["max_unorm"],
                skip_zeros=config["skip_zeros"],
            )
        else:
            F.optimizer_update_8bit_blockwise(
                self.optimizer_name,
                grad,
                p,
                state["state1"],
                None,
                betas[0],
                betas[1],
                0.0,
                0.0,
                config["eps"],
                step,
                config["lr"],
                state["qmap1"],
                None,
                state["absmax1"],
                None,
                weight_decay=config["weight_decay"],
                gnorm_scale=1.0,
                skip_zeros=config["skip_zeros"],
            )
        if p is not local:
            local.copy_(p)


__all__ = [
    "GlobalOptimManager",
    "MockArgs",
    "Optimizer1State",
    "Optimizer2State",
    "Optimizer8bit",
]
