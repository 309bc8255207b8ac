"""The singletons of the public API (``GlobalOptimManager``, ``GlobalPageManager``,
``CUBLAS_Context``): ``get_instance()`` makes the one instance of each class on first use, and
constructing one directly raises, as in the established release (spec §3.5, §8.4)."""

from __future__ import annotations

from typing import Any


class Singleton:
    """Base of a singleton: subclasses set their state up in ``initialize()``."""

    def __init__(self) -> None:
        raise RuntimeError("Call get_instance() instead")

    def initialize(self) -> None:
        """Set the instance's state up (called once, by ``get_instance``)."""

    @classmethod
    def get_instance(cls) -> Any:
        """The one instance of this class, created on first use."""
        inst = cls.__dict__.get("_instance")
        if inst is None:
            inst = cls.__new__(cls)
            inst.initialize()
            cls._instance = inst
        return inst
