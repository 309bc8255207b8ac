"""Check release artifacts (wheels and sdists) before they are published.

    python tools/check_wheel.py dist/                      # every *.whl and *.tar.gz in dist/
    python tools/check_wheel.py --max-size bitsandbytes-cpu=1000000 dist/   # and a size limit
    python tools/check_wheel.py --forbid 'libcudart.so*' --forbid 'libcublas*' wheelhouse/

For each bitsandbytes wheel: the file name parses and agrees with the WHEEL tags, the version is the
repository's, the metadata carries a licence and a readme, the meta-package pins every
``bitsandbytes-*`` requirement ``==`` its own version, a platform wheel declares no torch
dependency and ships its native module, and nothing a user does not need is inside (tests, C/C++
sources and headers, object files, CMake leftovers, byte code). Third-party wheels in the folder
(a wheelhouse also holds the meta-package's plain dependencies) are ignored. Exit status 1 and one
line per problem when anything is wrong.
"""

from __future__ import annotations

import argparse
import email.parser
import fnmatch
import pathlib
import re
import sys
import tarfile
import zipfile

ROOT = pathlib.Path(__file__).resolve().parent.parent
WHEEL_NAME = re.compile(
    r"^(?P<name>[A-Za-z0-9_.]+)-(?P<version>[^-]+)(-(?P<build>\d[^-]*))?-(?P<py>[^-]+)-(?P<abi>[^-]+)-(?P<plat>[^-]+)\.whl$"
)
# Nothing a user needs: sources, headers, objects, build-system leftovers, byte code, tests.
FORBIDDEN = [
    "*.h", "*.hpp", "*.cuh", "*.c", "*.cpp", "*.cu", "*.o", "*.obj", "*.a", "*.lib", "*.exp", "*.pdb",
    "*.pyc", "CMakeCache.txt", "CMakeLists.txt", "cmake_install.cmake", "*.ninja", "Makefile",
    "conftest.py", "test_*.py", "*_test.py",
]  # fmt: skip
FORBIDDEN_DIRS = {"tests", "test", "__pycache__", "CMakeFiles", "build", "_skbuild"}
# Platform wheels with nothing to compile (py3-none-any, no native code at all, still found
# through their bitsandbytes.platforms entry point) -> a file the wheel must carry besides its
# Python package: the MPS kernels are Metal source that torch compiles at run time; the Gaudi
# kernels are PyTorch programs; the XPU kernels are Triton, compiled at first use.
PURE_PLATFORM_WHEELS: dict[str, str | None] = {
    "bitsandbytes-hpu": None,
    "bitsandbytes-mps": "bitsandbytes_mps/bnb_mps.metal",
    "bitsandbytes-xpu": None,
}


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def repo_version() -> str:
    return (ROOT / "VERSION").read_text().strip()


def _metadata(text: str) -> email.message.Message:
    return email.parser.Parser().parsestr(text)


def check_wheel(path: pathlib.Path, version: str, max_size: int | None, forbid: list[str]) -> list[str]:
    problems: list[str] = []
    m = WHEEL_NAME.match(path.name)
    if not m:
        return [f"{path.name}: not a valid wheel file name"]
    name = canonical(m["name"])
    if name != "bitsandbytes" and not name.startswith("bitsandbytes-"):
        return []  # a dependency fetched into the wheelhouse: not ours to check
    meta = name == "bitsandbytes"
    pure = meta or name in PURE_PLATFORM_WHEELS

    def bad(msg: str) -> None:
        problems.append(f"{path.name}: {msg}")

    if m["version"] != version:
        bad(f"version {m['version']} is not the repository's {version}")
    if pure and (m["py"], m["abi"], m["plat"]) != ("py3", "none", "any"):
        bad(f"{'the meta-package' if meta else 'a pure-Python platform wheel'} must be py3-none-any")
    if not pure:
        if m["abi"] == "none" or m["plat"] == "any":
            bad("a platform wheel must carry an interpreter ABI and a platform tag")
        if m["plat"].startswith("linux_"):
            bad("linux_* tag: repair it (auditwheel repair) to a manylinux/musllinux tag")
    size = path.stat().st_size
    if max_size is not None and not meta and size > max_size:
        bad(f"{size} bytes, over the {max_size}-byte limit")

    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        distinfo = f"{m['name']}-{m['version']}.dist-info"
        try:
            md = _metadata(zf.read(f"{distinfo}/METADATA").decode())
            wheel = _metadata(zf.read(f"{distinfo}/WHEEL").decode())
            entry_points = (
                zf.read(f"{distinfo}/entry_points.txt").decode() if f"{distinfo}/entry_points.txt" in names else ""
            )
        except KeyError as exc:
            return [*problems, f"{path.name}: missing {exc}"]

    tags = set(wheel.get_all("Tag") or [])
    for py in m["py"].split("."):
        for abi in m["abi"].split("."):
            for plat in m["plat"].split("."):
                if f"{py}-{abi}-{plat}" not in tags:
                    bad(f"file-name tag {py}-{abi}-{plat} is not in WHEEL ({sorted(tags)})")
    if (wheel.get("Root-Is-Purelib", "").lower() == "true") != pure:
        bad(f"Root-Is-Purelib is {wheel.get('Root-Is-Purelib')}")
    if canonical(md.get("Name", "")) != name or md.get("Version") != m["version"]:
        bad(f"METADATA names {md.get('Name')} {md.get('Version')}")
    if not (md.get("License-Expression") or md.get("License")):
        bad("no licence in METADATA")
    licence_files = md.get_all("License-File") or []
    if not licence_files or not all(f"{distinfo}/licenses/{f}" in names for f in licence_files):
        bad(f"licence file missing (License-File: {licence_files})")
    if len((md.get_payload() or "").strip()) < 40 or not md.get("Description-Content-Type"):
        bad("no readme (long description) in METADATA")

    requires = md.get_all("Requires-Dist") or []
    for req in requires:
        req_name = canonical(re.split(r"[\s;<>=!~\[(]", req, maxsplit=1)[0])
        if not meta and req_name in ("torch", "triton", "pytorch-triton-xpu", "triton-xpu"):
            bad(f"a platform wheel must not depend on torch or Triton ({req})")
        if meta and req_name.startswith("bitsandbytes-"):
            pin = re.search(r"==\s*([^\s;,]+)", req)
            if not pin or pin.group(1) != version:
                bad(f"{req!r} does not pin =={version}")
    if meta and not any(canonical(r).startswith("torch") for r in requires):
        bad("the meta-package must require torch")

    for member in names:
        parts = member.split("/")
        base = parts[-1]
        if any(p in FORBIDDEN_DIRS for p in parts[:-1]) or any(fnmatch.fnmatch(base, pat) for pat in FORBIDDEN):
            bad(f"contains {member}")
        if any(fnmatch.fnmatch(base, pat) for pat in forbid):
            bad(f"contains {member}, which must stay outside the wheel")
        if pure and base.endswith((".so", ".dylib", ".dll", ".pyd")):
            bad(f"{'the meta-package' if meta else 'a pure-Python platform wheel'} contains native code: {member}")
    required = PURE_PLATFORM_WHEELS.get(name)
    if required is not None and required not in names:
        bad(f"no {required} (the kernels)")
    if not meta:
        # The import package is the one the platform entry point names (bitsandbytes_cuda serves
        # both bitsandbytes-cuda12x and -cuda13x); its kernel library is lib<package>.
        found = re.search(r"=\s*([A-Za-z0-9_]+)[.:]", entry_points)
        if found is None:
            bad("no bitsandbytes.platforms entry point")
        module = found.group(1) if found else name.replace("-", "_")
        if pure:
            if not any(n == f"{module}/__init__.py" for n in names):
                bad(f"no {module} package")
            return problems
        # _C.<abi>.so (or .pyd); bitsandbytes_rocm has one per ROCm major, _C_rocm<major>.<abi>.so.
        if not any(re.match(rf"{module}/_C(_[A-Za-z0-9]+)?\.[^/]+\.(so|pyd)$", n) for n in names):
            bad(f"no {module}/_C extension module")
        if not any(re.match(rf"({module}(\.libs)?/)?(lib)?{module}[^/]*\.(so|dylib|dll)", n) for n in names):
            bad(f"no lib{module} kernel library")
    return problems


def check_sdist(path: pathlib.Path, version: str) -> list[str]:
    problems: list[str] = []
    m = re.match(r"^(?P<name>.+)-(?P<version>[^-]+)\.tar\.gz$", path.name)
    if not m or not canonical(m["name"]).startswith("bitsandbytes"):
        return []
    if m["version"] != version:
        problems.append(f"{path.name}: version {m['version']} is not the repository's {version}")
    with tarfile.open(path) as tf:
        names = [n.split("/", 1)[1] for n in tf.getnames() if "/" in n]
    for required in ("pyproject.toml", "PKG-INFO", "README.md", "LICENSE"):
        if required not in names:
            problems.append(f"{path.name}: no {required}")
    if (
        canonical(m["name"]) not in {"bitsandbytes", *PURE_PLATFORM_WHEELS}
        and "shared/include/bnb/bnb_c_api.h" not in names
    ):
        problems.append(f"{path.name}: does not carry shared/ (it could not build alone)")
    for n in names:
        parts = n.split("/")
        if any(p in {"__pycache__", "CMakeFiles", "_skbuild", "build", "dist"} for p in parts) or n.endswith(
            (".o", ".so", ".pyc", ".whl")
        ):
            problems.append(f"{path.name}: contains {n}")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="+", type=pathlib.Path, help="wheels, sdists or folders holding them")
    parser.add_argument(
        "--max-size",
        action="append",
        default=[],
        help="size limit in bytes: DIST=BYTES for one distribution, or BYTES for every platform wheel",
    )
    parser.add_argument("--forbid", action="append", default=[], help="file-name pattern no wheel may contain")
    parser.add_argument("--version", default=None, help="expected version (default: the repository's VERSION)")
    args = parser.parse_args(argv)
    version = args.version or repo_version()
    limits = {}
    for item in args.max_size:
        dist, _, size = item.rpartition("=")
        limits[canonical(dist) if dist else "*"] = int(size)
    files: list[pathlib.Path] = []
    for p in args.paths:
        files += sorted(p.glob("*.whl")) + sorted(p.glob("*.tar.gz")) if p.is_dir() else [p]
    if not files:
        print("check_wheel: nothing to check", file=sys.stderr)
        return 1
    problems: list[str] = []
    for f in files:
        limit = limits.get(canonical(f.name.split("-")[0]), limits.get("*"))
        found = check_wheel(f, version, limit, args.forbid) if f.suffix == ".whl" else check_sdist(f, version)
        problems += found
        if not found and canonical(f.name.split("-")[0]).startswith("bitsandbytes"):
            print(f"ok  {f.name}  ({f.stat().st_size} bytes)")
    for p in problems:
        print(f"FAIL {p}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
