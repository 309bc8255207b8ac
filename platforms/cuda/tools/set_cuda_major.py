"""Point platforms/cuda/pyproject.toml at one CUDA major: bitsandbytes-cuda12x or -cuda13x.

    python platforms/cuda/tools/set_cuda_major.py 12      # rewrite for CUDA 12
    python platforms/cuda/tools/set_cuda_major.py --check # print the major it names
    BNB_CUDA_MAJOR=12 python platforms/cuda/tools/set_cuda_major.py --from-env  # a release build

A distribution's name is static metadata (PEP 621), so the two wheels differ by two lines of
pyproject.toml, both marked ``# bnb:cuda-major``: the project name and the entry-point name. The
CMake build checks that the name matches the toolkit's major and stops otherwise.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import re
import sys

PYPROJECT = pathlib.Path(__file__).resolve().parent.parent / "pyproject.toml"
MARK = "# bnb:cuda-major"


def current_major(text: str) -> int:
    """The major named by the marked project-name line."""
    m = re.search(r'^name = "bitsandbytes-cuda(\d+)x"', text, re.M)
    if not m:
        raise SystemExit(f"{PYPROJECT}: no bitsandbytes-cudaNNx name line")
    return int(m.group(1))


def set_major(text: str, major: int) -> str:
    """``text`` with every marked line naming ``cuda<major>x``."""
    lines = []
    for line in text.splitlines(keepends=True):
        if MARK in line:
            line = re.sub(r"cuda\d+x", f"cuda{major}x", line)
        lines.append(line)
    return "".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("major", nargs="?", type=int, help="CUDA major version (12, 13, ...)")
    parser.add_argument("--check", action="store_true", help="print the major pyproject.toml names")
    parser.add_argument("--from-env", action="store_true", help="take the major from BNB_CUDA_MAJOR")
    args = parser.parse_args(argv)
    if args.from_env:
        value = os.environ.get("BNB_CUDA_MAJOR", "")
        if not (value.isascii() and value.isdigit()):
            parser.error(f"--from-env: BNB_CUDA_MAJOR={value!r}; set it to the CUDA major version, e.g. 12 or 13")
        args.major = int(value)
    text = PYPROJECT.read_text()
    if args.check or args.major is None:
        print(current_major(text))
        return 0
    if args.major < 12:
        parser.error("bitsandbytes-cuda needs CUDA 12 or newer")
    PYPROJECT.write_text(set_major(text, args.major))
    print(f"{PYPROJECT}: bitsandbytes-cuda{args.major}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
