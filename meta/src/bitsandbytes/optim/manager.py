"""Per-parameter optimizer settings: ``GlobalOptimManager`` (the overrides every bitsandbytes
optimizer consults, e.g. ``optim_bits=32`` for an embedding) and ``MockArgs``, the attribute view
of an optimizer's settings. Re-exported by ``bitsandbytes.optim.optimizer``."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch


class MockArgs:
    """Attribute access over a dict of settings (``optimizer.args.optim_bits``)."""

    def __init__(self, initial_data: dict[str, Any]) -> None:
        for key, value in initial_data.items():
            setattr(self, key, value)


class GlobalOptimManager:
    """Singleton holding per-parameter optimizer overrides. Use ``get_instance()``."""

    _instance: GlobalOptimManager | None = None

    def __init__(self) -> None:
        raise RuntimeError("Call get_instance() instead")

    def initialize(self) -> None:
        """Forget every override."""
        self.pid2config: dict[int, dict[str, Any]] = {}
        self.index2config: dict[tuple[int, int], dict[str, Any]] = {}
        self.optimizer = None
        self.uses_config_override = False
        self.module_weight_config_triple: list[tuple[torch.nn.Module, str, dict[str, Any]]] = []

    @classmethod
    def get_instance(cls) -> GlobalOptimManager:
        """The one instance, created on first use."""
        if cls._instance is None:
            inst = cls.__new__(cls)
            inst.initialize()
            cls._instance = inst
        return cls._instance

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
        if key is not None and value is not None:
            if key_value_dict is not None:
                raise ValueError("override_config: give either key/value or key_value_dict, not both")
            key_value_dict = {key: value}
        if key_value_dict is None:
            return
        for p in parameters:
            if id(p) in self.pid2config:
                self.pid2config[id(p)].update(key_value_dict)
            else:
                self.pid2config[id(p)] = dict(key_value_dict)

    def register_module_override(self, module: torch.nn.Module, param_name: str, config: dict[str, Any]) -> None:
        """Override settings of ``module.<param_name>``; resolved at the optimizer's first step."""
        self.module_weight_config_triple.append((module, param_name, config))
