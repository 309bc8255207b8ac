"""Join the Metal portability header, the shared kernel headers and the Metal kernels into the
one source file the MPS wheel ships (``bitsandbytes_mps/bnb_mps.metal``).

    python concat_metal.py <shared_dir> <out_file>

``torch.mps.compile_shader`` takes a single string and resolves no includes of its own, so the
files are concatenated in dependency order with their ``#include`` lines dropped (Metal has no C
library headers either), except ``<metal_stdlib>`` and the host emulation's ``"metal_host.h"``,
which the portability header includes on its Metal and C++ sides. ``#pragma once`` is dropped; a
``#line`` directive before each file keeps compiler messages pointing at the original file.
"""

from __future__ import annotations

import pathlib
import re
import sys

HERE = pathlib.Path(__file__).resolve().parent

FILES = (
    "src/metal/compat.h",
    "shared/include/bnb/portability.h",
    "shared/include/bnb/numeric.h",
    "shared/include/bnb/fp_ops.h",
    "shared/include/bnb/codebooks.h",
    "shared/include/bnb/optimizer_math.h",
    "src/metal/common.metal",
    "src/metal/kernels_4bit.metal",
    "src/metal/kernels_blockwise.metal",
    "src/metal/kernels_optim.metal",
)
"""In order: each file uses only what the files before it define."""

_DROP = re.compile(r"^\s*#\s*(include\b(?!\s*(<metal_stdlib>|\"metal_host\.h\"))|pragma\s+once\b)")


def concat(shared_dir: pathlib.Path, platform_dir: pathlib.Path = HERE.parent) -> str:
    """The shipped Metal source."""
    out = [
        "// bitsandbytes-mps Metal kernels, generated at build time (platforms/mps/src/concat_metal.py)\n",
        "// from the files named in the #line directives below: edit those, not this file.\n",
    ]
    for rel in FILES:
        path = shared_dir / rel.removeprefix("shared/") if rel.startswith("shared/") else platform_dir / rel
        out.append(f'#line 1 "{rel}"\n')
        for line in path.read_text().splitlines():
            out.append("\n" if _DROP.match(line) else line + "\n")
    return "".join(out)


def main(argv: list[str]) -> int:
    shared_dir, out_file = pathlib.Path(argv[1]), pathlib.Path(argv[2])
    out_file.write_text(concat(shared_dir))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
