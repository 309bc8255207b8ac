"""Name the CUDA distribution after the toolkit's major version: bitsandbytes-cuda<major>x.

    BNB_CUDA_MAJOR=12 python release/cuda_dist_name.py platforms/cuda

Rewrites the ``name = "..."`` line of ``[project]`` in <folder>/pyproject.toml (a release build
runs on a throw-away checkout). One folder builds both bitsandbytes-cuda12x and -cuda13x, which
the meta-package's extras [cuda12x] / [cuda13x] pin.
"""

from __future__ import annotations

import os
import pathlib
import re
import sys

SUPPORTED = ("12", "13")


def main() -> int:
    if len(sys.argv) != 2:
        raise SystemExit("usage: BNB_CUDA_MAJOR=12 python release/cuda_dist_name.py <platform folder>")
    major = os.environ.get("BNB_CUDA_MAJOR", "")
    if major not in SUPPORTED:
        raise SystemExit(f"error: BNB_CUDA_MAJOR={major!r}; set it to one of {', '.join(SUPPORTED)}")
    pyproject = pathlib.Path(sys.argv[1]) / "pyproject.toml"
    text = pyproject.read_text()
    new, count = re.subn(r'(?m)^name = "bitsandbytes-cuda[^"]*"$', f'name = "bitsandbytes-cuda{major}x"', text)
    if count != 1:
        raise SystemExit(f'error: {pyproject} has no single `name = "bitsandbytes-cuda..."` line')
    pyproject.write_text(new)
    print(f"{pyproject}: bitsandbytes-cuda{major}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
