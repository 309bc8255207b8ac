"""The CUDA host harness: the CUDA wheel's kernels (platforms/cuda/src) compiled as C++ and run on
CPU tensors, through the wheel's own Python glue and pybind11 bindings.

``host_kernels(warp)`` builds (once, cached) the extension module ``_C`` from the unchanged kernel
sources, ``src/bindings.cpp`` and the runtime emulation of ``cuda_host.h``, loads a private copy of
``bitsandbytes_cuda``'s glue over it, and returns the glue's ``{op: fn}`` for CPU tensors. Two
things are rewritten (``rewrite``): the launch syntax (``<<<...>>>`` is not C++; see cuda_host.h),
and a call after each ``__shared__`` array that fills it at the start of every block (the rewrite
the MPS harness shares, from shared/host/simt_build.py). ``warp`` is the warp width the kernels are
compiled and run for: 32 as on NVIDIA GPUs (``cuda[host]`` in the tests), 64 as on AMD CDNA
wavefronts, which the ROCm wheel builds from the same sources (``rocm[host]``).

What it proves: the kernels' indexing, launch configurations, barriers and warp reductions, the
shared-memory use, the C entry points' checks and the glue's argument packing, compared with the
reference by the conformance suite; and the paged-memory glue's bookkeeping over plain host
memory. Blocks run one after another, ascending in the 32-lane build and descending in the 64-lane
one, so a result that depends on the order of blocks (of ``atomicAdd``s, or a race between blocks)
differs between the two; the 32-lane build fuses plain ``a * b + c`` as nvcc does
(``contract_flags``), and its f32 intrinsics and f16 conversion write NVIDIA's one NaN
(0x7fffffff, 0x7fff), so a kernel that must write the CPU's NaN bits is seen doing it (the
64-lane build keeps the host's NaN). Built with ThreadSanitizer (``BNB_CUDA_HOST_SANITIZE=thread``),
the blocks of a launch are unordered (shared/host/simt_host.h): device memory that one block
writes and another touches, other than through an atomic, is a reported race. What it cannot:
timing, memory coalescing, blocks running at once, a kernel's ``__launch_bounds__``, nvcc's own
code generation (GCC decides where to fuse), the NaN bits of a plain operator (the host's),
cuBLASLt (absent here: the built-in int8 kernel runs) and the driver's page migration.

The module goes to ``BNB_CUDA_HOST_CACHE`` (else ``~/.cache/bitsandbytes-cuda-host``), keyed by a
hash of every input, and each object file to its ``objects`` folder, keyed by its unit's text and
flags, the headers and the toolchain: an edit to one kernel source recompiles that unit alone. Every
build deletes the modules and objects no build has used for 14 days (simt_build.prune). The
compiler is ``CXX``, else ``c++``.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import importlib.util
import json
import os
import pathlib
import platform
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import types
from collections.abc import Callable

HOST = pathlib.Path(__file__).resolve().parent
CUDA = HOST.parent
REPO = CUDA.parent.parent
SHARED = REPO / "shared"
KERNEL_SOURCES = ("runtime.cu", "quantize.cu", "gemm_4bit.cu", "int8.cu", "optimizer.cu", "paged.cu")
FLAGS = ["-std=c++17", "-O1", "-ffp-contract=off", "-fno-strict-aliasing", "-fPIC", "-fvisibility=hidden",
         "-Wall", "-Wno-unknown-pragmas", "-Werror"]  # fmt: skip
DEVICE_DEFINES = ["-D__CUDACC__", "-D__CUDA_ARCH__=900", "-include", "cuda_runtime.h"]  # nvcc pre-includes it too
LAUNCH_OPEN, LAUNCH_CLOSE = "<<<", ">>>"
# The cache's modules (a folder per warp and inputs hash) and objects, pruned by every build.
CACHED = ("w[0-9][0-9]-" + "[0-9a-f]" * 20, "objects/*-" + "[0-9a-f]" * 20 + ".o")


def _simt_build() -> types.ModuleType:
    """shared/host/simt_build.py, loaded by path: the compiler lookup and the group-array rewrite
    this harness shares with the MPS one."""
    spec = importlib.util.spec_from_file_location("_bnb_simt_build", SHARED / "host" / "simt_build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_SIMT = _simt_build()


def rewrite(text: str, name: str) -> str:
    """A kernel source as the harness compiles it: launches rewritten (``rewrite_launches``), and
    every ``__shared__`` array followed, on its line, by simt_host.h's ``poison`` call."""
    return _SIMT.poison_group_arrays(rewrite_launches(text, name), "__shared__", f"cuda host harness: {name}")


def rewrite_launches(text: str, name: str) -> str:
    """``kernel<<<cfg>>>(args)`` -> ``kernel | ::bnb_cuda_host::config(cfg)(args)``: the call binds
    first, and the ``|`` of cuda_host.h runs the launch."""
    opens, closes = text.count(LAUNCH_OPEN), text.count(LAUNCH_CLOSE)
    if opens != closes:
        raise RuntimeError(f"cuda host harness: {name} has {opens} '<<<' but {closes} '>>>'")
    return text.replace(LAUNCH_OPEN, " | ::bnb_cuda_host::config(").replace(LAUNCH_CLOSE, ")")


def contract_flags(warp: int) -> list[str]:
    """The kernels' floating-point contraction. The 32-lane build fuses plain ``a * b + c`` as nvcc
    does (the CUDA wheel is built with its default ``--fmad=true``), where the CPU has fused
    multiply-add (GCC forms them from -O2); the 64-lane build rounds every operation, as the ROCm
    wheel's ``hipcc -ffp-contract=off``. The ``_rn`` intrinsics never fuse (cuda_host.h), so a
    bit-exact path written with plain operators differs from the reference in the 32-lane build.
    On an x86-64 CPU without FMA nothing fuses."""
    if warp != 32:
        return []
    if platform.machine() in ("x86_64", "AMD64"):
        flags = pathlib.Path("/proc/cpuinfo").read_text() if pathlib.Path("/proc/cpuinfo").exists() else ""
        return ["-O2", "-ffp-contract=fast", "-mfma"] if re.search(r"\bfma\b", flags) else []
    return ["-O2", "-ffp-contract=fast"]


def _units(warp: int, gen: pathlib.Path) -> list[tuple[str, str, list[str]]]:
    """(object name, source text, extra flags) of every translation unit."""
    import pybind11

    src = CUDA / "src"
    common = [f"-I{HOST / 'include'}", f"-I{HOST}", f"-I{SHARED / 'include'}", f"-I{SHARED / 'host'}", f"-I{src}"]
    # The 64-lane build runs a launch's blocks in descending order, the 32-lane one ascending.
    device = [*common, *DEVICE_DEFINES, f"-DBNB_WARP_SIZE={warp}", f"-DBNB_HOST_BLOCKS_DESCENDING={int(warp == 64)}",
              *contract_flags(warp)]  # fmt: skip
    units = []
    for name in KERNEL_SOURCES:
        text = rewrite((src / name).read_text(), name)
        units.append((name.replace(".cu", ".o"), f'#line 1 "{src / name}"\n{text}', device))
    units.append(("cublaslt_host.o", (HOST / "cublaslt_host.cpp").read_text(), device))
    probe = HOST / "probe_kernels.cu"  # the harness's own test kernels (bnb_cuda_host_probe)
    units.append(("probe_kernels.o", f'#line 1 "{probe}"\n{rewrite(probe.read_text(), probe.name)}', device))
    units.append(("status.o", (SHARED / "src" / "status.cpp").read_text(), common))
    units.append(("build_info.o", (src / "build_info.cpp").read_text(), [*common, f"-I{gen}"]))
    python = [f"-I{pybind11.get_include()}", f"-I{sysconfig.get_paths()['include']}"]
    units.append(("bindings.o", (src / "bindings.cpp").read_text(), [*common, *python]))
    return units


def _sanitize_flags() -> list[str]:
    """``BNB_CUDA_HOST_SANITIZE=1``: AddressSanitizer and UBSan in the module; ``=thread``:
    ThreadSanitizer (simt_build.py)."""
    return _SIMT.sanitize_flags("BNB_CUDA_HOST_SANITIZE")


def _header_files() -> list[pathlib.Path]:
    """Every header a translation unit may include (the units' own texts are keyed separately)."""
    files = [*(CUDA / "src").glob("*.h"), *(CUDA / "src").glob("*.cuh"), *HOST.rglob("*.h"),
             *(SHARED / "include" / "bnb").glob("*.h"), *(SHARED / "host").glob("*.h")]  # fmt: skip
    return sorted(files)


def _files_hash(files: list[pathlib.Path]) -> str:
    """The names and contents of ``files``."""
    h = hashlib.sha256()
    for f in files:
        h.update(str(f.relative_to(REPO)).encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()


def _toolchain(cxx: str, warp: int) -> list[str]:
    """The compiler (path and version), pybind11, Python, the flags and the warp width."""
    import pybind11

    version = subprocess.run([cxx, "--version"], capture_output=True, text=True).stdout
    compiler = [os.path.realpath(shutil.which(cxx) or cxx), version, pybind11.__version__]
    return [*compiler, str(warp), sys.version, *FLAGS, *_sanitize_flags(), *contract_flags(warp)]


def _inputs_hash(toolchain: list[str]) -> str:
    """Every input of a build: the sources, headers and this file, and ``toolchain``
    (``_toolchain``)."""
    files = [*(CUDA / "src").iterdir(), *HOST.rglob("*.h"), *HOST.glob("*.cpp"), *HOST.glob("*.cu"), *(SHARED / "include" / "bnb").iterdir(),
             *(SHARED / "host").iterdir(), SHARED / "src" / "status.cpp", pathlib.Path(__file__)]  # fmt: skip
    h = hashlib.sha256(_files_hash(sorted(p for p in files if p.is_file())).encode())
    h.update("\0".join(toolchain).encode())
    return h.hexdigest()[:20]


def _object_key(headers: str, toolchain: list[str], unit: tuple[str, str, list[str]]) -> str:
    """One translation unit's object: its name, text and flags, every header (``headers``, a hash
    of their contents) and the toolchain. An edit to one kernel source recompiles that unit alone."""
    obj, text, flags = unit
    h = hashlib.sha256("\0".join([headers, *toolchain, obj, text, *flags]).encode())
    return f"{obj[:-2]}-{h.hexdigest()[:20]}.o"


def build(warp: int = 32) -> pathlib.Path:
    """Compile the harness module for warps of ``warp`` lanes; the path of the ``_C`` extension."""
    if warp not in (32, 64):
        raise ValueError(f"warp must be 32 or 64, got {warp}")
    cxx = _SIMT.compiler("cuda host harness")
    default = pathlib.Path.home() / ".cache" / "bitsandbytes-cuda-host"
    cache = pathlib.Path(os.environ.get("BNB_CUDA_HOST_CACHE") or default).resolve()
    toolchain = _toolchain(cxx, warp)  # runs the compiler once (its version)
    out_dir = cache / f"w{warp}-{_inputs_hash(toolchain)}"
    module = out_dir / f"_C{sysconfig.get_config_var('EXT_SUFFIX')}"
    if module.exists() and _SIMT.used(cache, out_dir):
        _SIMT.prune(cache, CACHED)
        return module
    cache.mkdir(parents=True, exist_ok=True)
    objects_dir = cache / "objects"
    # The generated header's path is fixed per warp: it is in the flags each object is keyed by.
    gen = cache / f"gen-w{warp}"
    for d in (objects_dir, gen):
        d.mkdir(exist_ok=True)
    headers = _files_hash(_header_files())
    with tempfile.TemporaryDirectory(dir=cache) as tmp_name:
        tmp = pathlib.Path(tmp_name)
        info = {"platform": f"cuda-host-w{warp}", "harness": True, "warp_size": warp}
        (tmp / "bnb_build_info.h").write_text(f"#define BNB_BUILD_INFO_JSON {json.dumps(json.dumps(info))}\n")
        os.replace(tmp / "bnb_build_info.h", gen / "bnb_build_info.h")  # the same text for every build of warp

        def compile_one(unit: tuple[str, str, list[str]]) -> pathlib.Path:
            obj, text, flags = unit
            kept = objects_dir / _object_key(headers, toolchain, unit)
            if kept.exists() and _SIMT.used(cache, kept):
                return kept
            source = tmp / obj.replace(".o", ".cpp")
            source.write_text(text)
            cmd = [cxx, *FLAGS, *_sanitize_flags(), *flags, "-c", str(source), "-o", str(tmp / obj)]
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode:
                raise RuntimeError(f"cuda host harness: compiling {obj} failed:\n{done.stderr[-8000:]}")
            os.replace(tmp / obj, kept)  # atomic, as the module's
            return kept

        with concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
            objects = list(pool.map(compile_one, _units(warp, gen)))
        linked = tmp / module.name
        link = [cxx, "-shared", *_sanitize_flags(), "-o", str(linked), *map(str, objects)]
        done = subprocess.run(link, capture_output=True, text=True)
        if done.returncode:
            raise RuntimeError(f"cuda host harness: linking failed:\n{done.stderr[-8000:]}")
        out_dir.mkdir(parents=True, exist_ok=True)
        os.replace(linked, module)  # atomic: a concurrent build of the same inputs writes the same file
    _SIMT.prune(cache, CACHED)
    return module


def load_glue(pkg_name: str, native: types.ModuleType) -> types.ModuleType:
    """bitsandbytes_cuda's Python package of this checkout under the name ``pkg_name``, over
    ``native`` as its ``_C`` (the harness's module, or a test's stand-in), with its ``kernels`` and
    ``paged`` modules imported. The installed wheel, if any, is untouched."""
    pkg_dir = CUDA / "python" / "bitsandbytes_cuda"
    spec = importlib.util.spec_from_file_location(
        pkg_name, pkg_dir / "__init__.py", submodule_search_locations=[str(pkg_dir)]
    )
    pkg = importlib.util.module_from_spec(spec)
    sys.modules[pkg_name] = pkg
    sys.modules[f"{pkg_name}._C"] = native
    spec.loader.exec_module(pkg)
    importlib.import_module(f"{pkg_name}.kernels")
    importlib.import_module(f"{pkg_name}.paged")
    return pkg


_GLUES: dict[int, types.ModuleType] = {}


def glue(warp: int = 32) -> types.ModuleType:
    """A private copy of bitsandbytes_cuda's ``kernels`` module over the harness's ``_C``, taking
    CPU tensors (its device type ``cpu``, stream 0; ``kernels.paged`` on device 0). The installed
    wheel, if any, is untouched."""
    if warp in _GLUES:
        return _GLUES[warp]
    pkg_name = f"_bnb_cuda_host_w{warp}"
    native_spec = importlib.util.spec_from_file_location(f"{pkg_name}._C", build(warp))
    native = importlib.util.module_from_spec(native_spec)
    native_spec.loader.exec_module(native)
    kernels = load_glue(pkg_name, native).kernels
    kernels._DEVICE_TYPE = "cpu"
    kernels._stream = lambda t: 0
    paged = kernels.paged  # managed memory is host memory here
    paged._current_device = lambda: 0
    paged._stream = lambda device: 0
    _GLUES[warp] = kernels
    return kernels


def host_kernels(warp: int = 32) -> dict[str, Callable]:
    """The CUDA glue's kernels, run by the harness on CPU tensors: ``{op name: fn}``."""
    return dict(glue(warp).KERNELS)
