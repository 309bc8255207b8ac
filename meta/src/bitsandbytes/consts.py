"""Constants the established release exposes as ``bitsandbytes.consts`` (spec §11.1)."""

from __future__ import annotations

import platform
from pathlib import Path

DYNAMIC_LIBRARY_SUFFIX: str = {"Darwin": ".dylib", "Windows": ".dll"}.get(platform.system(), ".so")
"""File suffix of a native library on this operating system."""

PACKAGE_DIR: Path = Path(__file__).resolve().parent
"""The directory of the ``bitsandbytes`` package (the meta-package; the native libraries live
in the platform wheels' packages, see ``bitsandbytes.cextension``)."""

PACKAGE_GITHUB_URL: str = "https://github.com/bitsandbytes-foundation/bitsandbytes"
"""Where bitsandbytes is developed; issues and troubleshooting point here."""
