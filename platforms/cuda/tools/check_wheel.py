"""Checks of a built bitsandbytes-cuda wheel that need no GPU (run by `nox -s build-cuda`).

    python platforms/cuda/tools/check_wheel.py dist/bitsandbytes_cuda13x-*.whl --arch 90

1. libbitsandbytes_cuda.so exports exactly the symbols of shared/include/bnb/abi_symbols.txt
   (read with `nm -D --defined-only`);
2. where libcudart can be loaded (it loads without a GPU or driver), the library opens through
   ctypes and bnb_build_info() / bnb_abi_version() agree with build_info.json;
3. the build info names the platform, the toolkit (the major of the nvcc that built it) and
   the requested architectures;
4. no CUDA library is inside the wheel: the only shared objects are the kernel library and
   the pybind11 module.
"""

from __future__ import annotations

import argparse
import ctypes
import glob
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile

ROOT = pathlib.Path(__file__).resolve().parents[3]
SYMBOLS = set((ROOT / "shared" / "include" / "bnb" / "abi_symbols.txt").read_text().split())
OWN_LIBRARIES = re.compile(r"^bitsandbytes_cuda/(libbitsandbytes_cuda\.so|_C\.[^/]+\.so)$")


def exported_symbols(lib: pathlib.Path) -> set[str]:
    """Defined dynamic symbols of ``lib`` (functions and data)."""
    out = subprocess.run(["nm", "-D", "--defined-only", str(lib)], check=True, capture_output=True, text=True).stdout
    return {line.split()[-1] for line in out.splitlines() if line.strip()}


def toolkit_major() -> int | None:
    """The major of the nvcc on PATH, if any."""
    nvcc = shutil.which("nvcc")
    if not nvcc:
        return None
    out = subprocess.run([nvcc, "--version"], check=True, capture_output=True, text=True).stdout
    m = re.search(r"release (\d+)\.", out)
    return int(m.group(1)) if m else None


def preload_cudart(major: int) -> bool:
    """Load libcudart.so.<major> globally from the loader path or a local toolkit."""
    candidates = [f"libcudart.so.{major}"]
    for root in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if root:
            candidates += sorted(glob.glob(f"{root}/lib*/libcudart.so.{major}"))
            candidates += sorted(glob.glob(f"{root}/targets/*/lib/libcudart.so.{major}"))
    for c in candidates:
        try:
            ctypes.CDLL(c, mode=ctypes.RTLD_GLOBAL)
            return True
        except OSError:
            continue
    return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("wheel", type=pathlib.Path)
    parser.add_argument("--arch", action="append", default=[], help="compute capability that must be built")
    args = parser.parse_args(argv)
    failures: list[str] = []

    with zipfile.ZipFile(args.wheel) as zf:
        names = zf.namelist()
        shared_objects = [n for n in names if re.search(r"\.so(\.|$)", n)]
        foreign = [n for n in shared_objects if not OWN_LIBRARIES.match(n)]
        if foreign:
            failures.append(f"the wheel bundles libraries it must not: {foreign}")
        tmp = pathlib.Path(tempfile.mkdtemp())
        zf.extractall(tmp)
    pkg = tmp / "bitsandbytes_cuda"
    lib = pkg / "libbitsandbytes_cuda.so"
    info = json.loads((pkg / "build_info.json").read_text())
    print(f"wheel: {args.wheel.name} ({args.wheel.stat().st_size / 1e6:.2f} MB), {len(names)} files")
    print(f"build info: {json.dumps(info)}")

    exported = exported_symbols(lib)
    missing, extra = sorted(SYMBOLS - exported), sorted(exported - SYMBOLS)
    if missing:
        failures.append(f"symbols of abi_symbols.txt not exported: {missing}")
    if extra:
        failures.append(f"symbols exported beyond abi_symbols.txt: {extra}")
    print(f"symbols: {len(SYMBOLS & exported)}/{len(SYMBOLS)} of abi_symbols.txt exported, {len(extra)} extra")

    major = toolkit_major()
    if major is not None and info.get("cuda_major") != major:
        failures.append(f"build info names CUDA major {info.get('cuda_major')}, nvcc is CUDA {major}")
    if info.get("platform") != f"cuda{info.get('cuda_major')}x" or not str(info.get("cuda_toolkit", "")).strip():
        failures.append(f"build info does not name the platform and toolkit: {info}")
    for arch in args.arch:
        if f"sm_{arch}" not in info.get("cuda_archs", []):
            failures.append(f"build info does not list sm_{arch}: {info.get('cuda_archs')}")
    if not any(a.startswith("compute_") for a in info.get("cuda_archs", [])):
        failures.append("no PTX architecture in the build info")
    if f"bitsandbytes_cuda{info.get('cuda_major')}x" not in args.wheel.name:
        failures.append(f"wheel name {args.wheel.name} does not carry cuda{info.get('cuda_major')}x")

    if preload_cudart(int(info.get("cuda_major", 0))):
        c = ctypes.CDLL(str(lib))
        c.bnb_build_info.restype = ctypes.c_char_p
        native = json.loads(c.bnb_build_info())
        if native != info or c.bnb_abi_version() != info.get("abi_version"):
            failures.append(f"bnb_build_info() {native} differs from build_info.json {info}")
        c.bnb_status_string.restype = ctypes.c_char_p
        c.bnb_last_error.restype = ctypes.c_char_p
        status = c.bnb_paged_free(None)  # argument checks run before any CUDA call
        if status != 1 or b"ptr" not in c.bnb_last_error():
            failures.append(f"bnb_paged_free(NULL) answered {status} {c.bnb_last_error()!r}")
        print("ctypes: the library loads without a GPU; bnb_build_info() matches build_info.json")
    else:
        print("ctypes: libcudart not found here; load check skipped")

    for f in failures:
        print(f"FAIL: {f}", file=sys.stderr)
    if not failures:
        print("OK: symbols, build info and wheel contents")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
