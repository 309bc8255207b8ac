"""Build the source distribution of one distribution of the repository.

    python tools/sdist.py meta -o dist/      # bitsandbytes-<version>.tar.gz
    python tools/sdist.py cpu -o dist/       # bitsandbytes_cpu-<version>.tar.gz, carrying shared/

A platform's CMake project reads the kernel headers and CMake helpers from the repository's
``shared/`` folder, outside ``platforms/<p>/``; its sdist must build alone, so the folder is staged
in a temporary copy with ``shared/`` beside its CMakeLists.txt (which looks there first). Calls the
PEP 517 ``build_sdist`` hook of scikit-build-core in the current environment: no network, no
build isolation.
"""

from __future__ import annotations

import argparse
import pathlib
import shutil
import subprocess
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parent.parent
KNOWN_PLATFORMS = ["cpu", "cuda", "rocm", "xpu", "hpu", "mps"]  # as in shared/cmake/bnb.cmake
IGNORE = shutil.ignore_patterns("build", "dist", "_skbuild", "__pycache__", "*.egg-info", "*.so", "*.o", ".nox")


def source_dir(name: str) -> pathlib.Path:
    """The folder of distribution ``name`` ('meta' or a platform), or exit with one clear line."""
    if name == "meta":
        return ROOT / "meta"
    present = sorted(p.parent.name for p in (ROOT / "platforms").glob("*/pyproject.toml"))
    if name not in KNOWN_PLATFORMS:
        raise SystemExit(f"error: unknown platform {name!r}; known platforms: {', '.join(KNOWN_PLATFORMS)}")
    if name not in present:
        raise SystemExit(
            f"error: platform {name!r} is not in this checkout (platforms/{name} is missing); present: {', '.join(present)}"
        )
    return ROOT / "platforms" / name


def build_sdist(name: str, outdir: pathlib.Path) -> pathlib.Path:
    src = source_dir(name)
    outdir = outdir.resolve()
    outdir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f"bnb-sdist-{name}-") as tmp:
        stage = pathlib.Path(tmp) / src.name
        shutil.copytree(src, stage, ignore=IGNORE)
        if (src / "CMakeLists.txt").exists():  # pure-Python distributions (meta, hpu) compile nothing
            shutil.copytree(ROOT / "shared", stage / "shared", ignore=IGNORE)
        if name == "rocm":  # compiled from the CUDA platform's kernels and glue (platforms/rocm/CMakeLists.txt)
            for part in ("src", "python"):
                shutil.copytree(ROOT / "platforms" / "cuda" / part, stage / "cuda" / part, ignore=IGNORE)
        hook = "import sys, scikit_build_core.build as b; print(b.build_sdist(sys.argv[1]))"
        out = subprocess.run(
            [sys.executable, "-c", hook, str(outdir)], cwd=stage, check=True, capture_output=True, text=True
        )
    path = outdir / out.stdout.strip().splitlines()[-1]
    print(path)
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name", help="meta, or a platform (cpu, cuda, ...)")
    parser.add_argument("-o", "--outdir", type=pathlib.Path, default=ROOT / "dist")
    args = parser.parse_args()
    build_sdist(args.name, args.outdir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
