"""What the Intel Gaudi software provides: detection, its version, and Gaudi's own NF4 op.

Nothing here runs at import time. The Gaudi software stack is not on the public package index:
``habana_frameworks.torch`` (the PyTorch bridge, distribution ``habana-torch-plugin``) comes
with Intel's installer together with a matching build of torch.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.metadata
import re
from collections.abc import Callable
from typing import Any

PLUGIN_DISTRIBUTION = "habana-torch-plugin"
"""The distribution whose version is the Gaudi software version (1.21.0, 1.22.1, 2.0.0, ...)."""

MIN_SOFTWARE = (1, 21)
"""The oldest Gaudi software this wheel supports: the established release's Gaudi backend needs
1.21 or newer (and ``torch.ops.hpu.dequantize_nf4``)."""

NIBBLE_ORDER_CHANGED = (1, 22)
"""Gaudi software older than this packs the first of two 4-bit codes in the LOW nibble of a byte
for ``torch.ops.hpu.dequantize_nf4``; bitsandbytes (and Gaudi from 1.22 on) puts it in the HIGH
nibble. The packed bytes are swapped nibble for nibble before calling the op on older software."""

INSTALL_HINT = (
    "install or upgrade the Intel Gaudi software (driver, habana-torch-plugin and its torch build) "
    f"to {MIN_SOFTWARE[0]}.{MIN_SOFTWARE[1]} or newer with Intel's installer "
    "(https://docs.habana.ai/en/latest/Installation_Guide/index.html)"
)

_VERSION_RE = re.compile(r"^\s*v?(\d+)(?:\.(\d+))?(?:\.(\d+))?")


def parse_version(text: str | None) -> tuple[int, int, int] | None:
    """(major, minor, patch) of a Gaudi software version string, or None when it has none.

    Compares as a tuple, so 2.0 is newer than 1.22 (the established release tested the minor
    number alone and took 2.0 for a pre-1.22 release). Build numbers and local suffixes after the
    third number are ignored: ``1.21.0.555``, ``1.22.0-740`` and ``1.22.0+git123`` all parse.
    """
    if not text:
        return None
    m = _VERSION_RE.match(str(text))
    if m is None:
        return None
    return int(m.group(1)), int(m.group(2) or 0), int(m.group(3) or 0)


def software_version() -> tuple[int, int, int] | None:
    """The installed Gaudi software version, from the ``habana-torch-plugin`` distribution's
    metadata (no subprocess, no import of the plugin), or None when it is not installed."""
    try:
        return parse_version(importlib.metadata.version(PLUGIN_DISTRIBUTION))
    except importlib.metadata.PackageNotFoundError:
        return None


def format_version(version: tuple[int, ...] | None) -> str:
    """``1.22.0``, or ``unknown``."""
    return ".".join(map(str, version)) if version else "unknown"


def detect() -> tuple[bool, str]:
    """(True, "") when a Gaudi device is usable: ``habana_frameworks.torch`` imports and
    ``torch.hpu.is_available()``; else (False, why, naming the fix)."""
    try:
        importlib.import_module("habana_frameworks.torch")
    except Exception as exc:  # ImportError, or a broken installation raising anything else
        return False, (
            f"habana_frameworks.torch cannot be imported ({type(exc).__name__}: {exc}); the Intel Gaudi "
            f"software is not installed here. To use a Gaudi device, {INSTALL_HINT}"
        )
    import torch

    hpu = getattr(torch, "hpu", None)
    if hpu is None:
        return (
            False,
            "habana_frameworks.torch imported but torch.hpu does not exist (a torch build without Gaudi support)",
        )
    if not hpu.is_available():
        return (
            False,
            "torch.hpu.is_available() is False: the Gaudi software is installed but no Gaudi device is visible",
        )
    return True, ""


def check_software() -> str | None:
    """Why the installed Gaudi software cannot be served, or None when it can."""
    version = software_version()
    need = format_version(MIN_SOFTWARE)
    if version is None:
        return f"the Gaudi software version is unknown ({PLUGIN_DISTRIBUTION} is not installed); {INSTALL_HINT}"
    if version[:2] < MIN_SOFTWARE:
        return (
            f"Intel Gaudi software {format_version(version)} is older than {need}, the oldest supported; {INSTALL_HINT}"
        )
    return None


@dataclasses.dataclass(frozen=True)
class GaudiOps:
    """Gaudi's own ops that the kernels use when the runtime has them."""

    dequantize_nf4: Callable[..., Any] | None
    swap_nibbles: bool  # the installed software wants the first code in the low nibble
    version: tuple[int, int, int] | None


_CACHED: GaudiOps | None = None


def _lookup(name: str) -> Callable[..., Any] | None:
    import torch

    try:
        return getattr(torch.ops.hpu, name)
    except (AttributeError, RuntimeError):
        return None


def gaudi_ops() -> GaudiOps:
    """The Gaudi ops present now (looked up once; ``refresh()`` looks again).

    ``dequantize_nf4`` is used only when the Gaudi software version is known, since the nibble
    order it expects depends on that version; with an unknown version the tensor program runs.
    """
    global _CACHED
    if _CACHED is None:
        version = software_version()
        op = _lookup("dequantize_nf4") if version is not None else None
        _CACHED = GaudiOps(
            dequantize_nf4=op,
            swap_nibbles=version is not None and version[:2] < NIBBLE_ORDER_CHANGED,
            version=version,
        )
    return _CACHED


def refresh() -> GaudiOps:
    """Forget what ``gaudi_ops()`` found and look again (after loading the Gaudi bridge, in tests)."""
    global _CACHED
    _CACHED = None
    return gaudi_ops()
