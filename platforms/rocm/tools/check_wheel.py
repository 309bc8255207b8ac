"""Checks of a built bitsandbytes-rocm wheel that need no GPU (run by `nox -s build-rocm`).

    python platforms/rocm/tools/check_wheel.py dist/bitsandbytes_rocm-*.whl --arch gfx90a --arch gfx1030
    python platforms/rocm/tools/check_wheel.py --majors 6,7 dist/bitsandbytes_rocm-*.whl   # the release's

1. every ``libbitsandbytes_rocm<major>.so`` exports exactly the symbols of
   shared/include/bnb/abi_symbols.txt (``nm -D --defined-only``);
2. its ``.hip_fatbin`` section holds a code object for every requested gfx target (the offload
   bundle entries ``hipv4-amdgcn-amd-amdhsa--<gfx>``), and the build info lists the same targets;
3. each library has its ``_C_rocm<major>`` module and ``build_info_rocm<major>.json``, the shared
   glue (kernels.py, paged.py) is installed, and no ROCm library is inside the wheel;
4. where the HIP runtime can be loaded (it loads without a GPU), the library opens through ctypes,
   ``bnb_build_info()`` agrees with the JSON, and bad input is refused before any launch.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import pathlib
import re
import struct
import subprocess
import sys
import tempfile
import zipfile

ROOT = pathlib.Path(__file__).resolve().parents[3]
SYMBOLS = set((ROOT / "shared" / "include" / "bnb" / "abi_symbols.txt").read_text().split())
OWN = re.compile(r"^bitsandbytes_rocm/(libbitsandbytes_rocm\d+\.so|_C_rocm\d+\.[^/]+\.so)$")
BNB_ERR_NULL_POINTER = 1


def exported_symbols(lib: pathlib.Path) -> set[str]:
    out = subprocess.run(["nm", "-D", "--defined-only", str(lib)], check=True, capture_output=True, text=True).stdout
    return {line.split()[-1] for line in out.splitlines() if line.strip()}


def section(lib: pathlib.Path, name: str) -> bytes:
    """The bytes of ELF section ``name`` (64-bit little-endian ELF)."""
    data = lib.read_bytes()
    (shoff,) = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    headers = [struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize) for i in range(shnum)]
    strtab = headers[shstrndx]
    for h in headers:
        start = strtab[4] + h[0]
        sec_name = data[start : data.index(b"\0", start)].decode()
        if sec_name == name:
            return data[h[4] : h[4] + h[5]]
    return b""


def code_objects(lib: pathlib.Path) -> list[str]:
    """The gfx targets of the device code bundled in ``lib`` (``.hip_fatbin``)."""
    fatbin = section(lib, ".hip_fatbin")
    return sorted({m.decode() for m in re.findall(rb"amdgcn-amd-amdhsa-[a-z0-9]*-(gfx[0-9a-f]+)", fatbin)})


def check_library(lib: pathlib.Path, info: dict, archs: list[str]) -> list[str]:
    problems = []
    exported = exported_symbols(lib)
    if exported != SYMBOLS:
        problems.append(
            f"{lib.name}: exports differ from abi_symbols.txt: missing {sorted(SYMBOLS - exported)}, "
            f"extra {sorted(exported - SYMBOLS)}"
        )
    found = code_objects(lib)
    print(f"{lib.name}: {lib.stat().st_size} bytes, {len(exported)} C ABI symbols, code objects {found}")
    for arch in archs:
        if arch not in found:
            problems.append(f"{lib.name}: no code object for {arch} (found {found})")
    if archs and sorted(info.get("rocm_archs", [])) != sorted(archs):
        problems.append(f"{lib.name}: build info lists {info.get('rocm_archs')}, expected {archs}")
    try:
        native = ctypes.CDLL(str(lib))
    except OSError as exc:
        print(f"{lib.name}: not loaded here ({exc}); ctypes checks skipped")
        return problems
    native.bnb_build_info.restype = ctypes.c_char_p
    native.bnb_last_error.restype = ctypes.c_char_p
    if json.loads(native.bnb_build_info().decode()) != info:
        problems.append(f"{lib.name}: bnb_build_info() differs from build_info_rocm{info['rocm_major']}.json")
    status = native.bnb_quantize_4bit(None, 0, ctypes.c_int64(64), ctypes.c_int64(64), 1, None, None, None)
    message = native.bnb_last_error().decode()
    if status != BNB_ERR_NULL_POINTER or "must not be NULL" not in message:
        problems.append(f"{lib.name}: NULL input gave status {status} ({message!r}), not a clear error")
    print(f"{lib.name}: loaded; bnb_build_info() matches; NULL input -> {message!r}")
    return problems


def check_wheel(wheel: pathlib.Path, archs: list[str], majors: list[int] | None = None) -> list[str]:
    problems = []
    with zipfile.ZipFile(wheel) as zf, tempfile.TemporaryDirectory() as tmp:
        names = zf.namelist()
        for name in names:
            if name.endswith(".so") or ".so." in name:
                if not OWN.match(name):
                    problems.append(f"{name}: a shared object that is not the kernel library or its module")
        for needed in ("bitsandbytes_rocm/kernels.py", "bitsandbytes_rocm/paged.py", "bitsandbytes_rocm/_C.py"):
            if needed not in names:
                problems.append(f"{needed} is missing")
        if "bitsandbytes_cuda" in zf.read("bitsandbytes_rocm/kernels.py").decode():
            problems.append("kernels.py still names bitsandbytes_cuda")
        libs = sorted(n for n in names if re.match(r"^bitsandbytes_rocm/libbitsandbytes_rocm\d+\.so$", n))
        if not libs:
            problems.append("no libbitsandbytes_rocm<major>.so in the wheel")
        held = sorted(int(re.search(r"rocm(\d+)\.so$", n).group(1)) for n in libs)
        if majors and held != sorted(majors):
            problems.append(f"kernel libraries for ROCm {held}, expected {sorted(majors)}")
        zf.extractall(tmp)
        for name in libs:
            major = re.search(r"rocm(\d+)\.so$", name).group(1)
            info_name = f"bitsandbytes_rocm/build_info_rocm{major}.json"
            if info_name not in names:
                problems.append(f"{info_name} is missing")
                continue
            if not any(re.match(rf"^bitsandbytes_rocm/_C_rocm{major}\.[^/]+\.so$", n) for n in names):
                problems.append(f"the module _C_rocm{major} is missing")
            info = json.loads(zf.read(info_name))
            problems += check_library(pathlib.Path(tmp) / name, info, archs)
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("wheel", type=pathlib.Path)
    parser.add_argument("--arch", action="append", default=[], help="a gfx target that must have a code object")
    parser.add_argument("--majors", default="", help="comma-separated ROCm majors the wheel must hold, e.g. 6,7")
    args = parser.parse_args()
    majors = [int(m) for m in args.majors.split(",") if m.strip()]
    problems = check_wheel(args.wheel, args.arch, majors)
    for p in problems:
        print(f"error: {p}", file=sys.stderr)
    if not problems:
        print(f"{args.wheel.name}: ok")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
