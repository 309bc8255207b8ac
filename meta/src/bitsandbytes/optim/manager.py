"""Per-parameter optimizer settings: ``GlobalOptimManager`` (the overrides every bitsandbytes
optimizer consults, e.g. ``optim_bits=32`` for an embedding) and ``MockArgs``, the attribute view
of an optimizer's settings. Re-exported by ``bitsandbytes.optim.optimizer``."""

from __future__ import annotations

import math
import numbers
import weakref
from collections.abc import Iterable
from typing import Any

import torch

from .._singleton import Singleton

# The settings an override may change: what Optimizer8bit.get_config reads.
_NON_NEGATIVE = ("lr", "eps", "weight_decay", "max_unorm", "alpha", "min_8bit_size")
OVERRIDABLE = frozenset({*_NON_NEGATIVE, "betas", "optim_bits", "skip_zeros", "t_alpha", "t_beta3"})


def is_finite_number(v: Any) -> bool:
    """A finite real number (numpy's too), not a bool."""
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)


def check_overrides(config: dict[str, Any], where: str) -> None:
    """Reject an override that would be ignored (an unknown or misspelt setting) or that the
    optimizer's constructor would have refused, before it reaches a step."""
    if not isinstance(config, dict):
        raise TypeError(f"{where}: the overrides must be a dict, got {type(config).__name__}")
    unknown = sorted(set(config) - OVERRIDABLE)
    if unknown:
        raise ValueError(f"{where}: unknown setting(s) {unknown}; an override may set {sorted(OVERRIDABLE)}")
    for key in _NON_NEGATIVE:
        if key in config and not (is_finite_number(config[key]) and config[key] >= 0):
            raise ValueError(f"{where}: {key} must be a finite number >= 0, got {config[key]!r}")
    if "optim_bits" in config and config["optim_bits"] not in (8, 32):
        raise ValueError(f"{where}: optim_bits must be 8 or 32, got {config['optim_bits']!r}")
    betas = config.get("betas", ())
    if not hasattr(betas, "__len__") or not all(is_finite_number(b) and 0.0 <= b < 1.0 for b in betas):
        raise ValueError(f"{where}: betas must be a sequence of numbers in [0, 1), got {betas!r}")
    for key in ("t_alpha", "t_beta3"):
        if config.get(key) is not None and not (is_finite_number(config[key]) and config[key] >= 0):
            raise ValueError(f"{where}: {key} must be None or a number of steps >= 0, got {config[key]!r}")
    if "skip_zeros" in config and not isinstance(config["skip_zeros"], bool):
        raise ValueError(f"{where}: skip_zeros must be a bool, got {config['skip_zeros']!r}")


class MockArgs:
    """Attribute access over a dict of settings (``optimizer.args.optim_bits``)."""

    def __init__(self, initial_data: dict[str, Any]) -> None:
        for key, value in initial_data.items():
            setattr(self, key, value)


class GlobalOptimManager(Singleton):
    """Singleton holding per-parameter optimizer overrides. Use ``get_instance()``."""

    _instance: GlobalOptimManager | None = None

    def initialize(self) -> None:
        """Forget every override."""
        self.pid2config: dict[int, dict[str, Any]] = {}
        # id(config) -> the ids of the parameters whose override that dict is: pid2config read
        # backwards, kept with it, so a step finds an override's owners without a scan.
        self._owners: dict[int, set[int]] = {}
        self._watched: set[int] = set()
        self.index2config: dict[tuple[int, int], dict[str, Any]] = {}
        self.optimizer = None
        self.uses_config_override = False
        self.module_weight_config_triple: list[tuple[torch.nn.Module, str, dict[str, Any]]] = []

    def register_parameters(self, params: Iterable) -> None:
        """Map overrides already given by parameter to their (group index, parameter index)."""
        param_groups = list(params)
        if not param_groups:
            return
        if not isinstance(param_groups[0], dict):
            param_groups = [{"params": param_groups}]
        for group_index, group in enumerate(param_groups):
            for p_index, p in enumerate(group["params"]):
                if id(p) in self.pid2config:
                    self.index2config[(group_index, p_index)] = self.pid2config[id(p)]

    def override_config(
        self,
        parameters: torch.Tensor | Iterable[torch.Tensor],
        key: str | None = None,
        value: Any = None,
        key_value_dict: dict[str, Any] | None = None,
    ) -> None:
        """Override optimizer settings (e.g. ``optim_bits=32``) for one or more parameters."""
        self.uses_config_override = True
        if isinstance(parameters, torch.Tensor):
            parameters = [parameters]
        parameters = list(parameters)
        for p in parameters:
            if not isinstance(p, torch.Tensor):
                raise TypeError(f"override_config: parameters must be tensors, got {type(p).__name__}")
        if key is not None and value is None:
            raise ValueError(f"override_config: key {key!r} was given without a value")
        if key is not None:
            if key_value_dict is not None:
                raise ValueError("override_config: give either key/value or key_value_dict, not both")
            key_value_dict = {key: value}
        if key_value_dict is None:
            return
        check_overrides(key_value_dict, "override_config")
        for p in parameters:
            if id(p) in self.pid2config:
                self.pid2config[id(p)].update(key_value_dict)
            else:
                self.set_parameter_config(p, dict(key_value_dict))

    def set_parameter_config(self, p: torch.Tensor, config: dict[str, Any]) -> None:
        """Keep ``config`` as ``p``'s override for as long as ``p`` lives. Entries are keyed by
        ``id(p)``, as in the established release; the entry goes when ``p`` is freed, so a new
        parameter that Python places at the same address does not inherit it."""
        pid = id(p)
        old = self.pid2config.get(pid)
        self.pid2config[pid] = config
        owners = self._owners.setdefault(id(config), set())
        owners.add(pid)
        # Again: a finalizer run since setdefault may have dropped the (then empty) set.
        self._owners[id(config)] = owners
        if old is not None and old is not config:
            self._disown(pid, old)
        if pid not in self._watched:
            self._watched.add(pid)
            weakref.finalize(p, self._forget, pid)

    def owners_of(self, config: dict[str, Any]) -> set[int]:
        """The ids of the live parameters whose override ``config`` is (the same dict object)."""
        return set(self._owners.get(id(config), ()))

    def _disown(self, pid: int, config: dict[str, Any]) -> None:
        owners = self._owners.get(id(config))
        if owners is not None:
            owners.discard(pid)
            if not owners:
                self._owners.pop(id(config), None)

    def _forget(self, pid: int) -> None:
        config = self.pid2config.pop(pid, None)
        if config is not None:
            self._disown(pid, config)
        self._watched.discard(pid)

    def register_module_override(self, module: torch.nn.Module, param_name: str, config: dict[str, Any]) -> None:
        """Override settings of ``module.<param_name>``; resolved at the optimizer's first step."""
        check_overrides(config, "register_module_override")
        self.module_weight_config_triple.append((module, param_name, config))
