"""The host harness: the shipped Metal source compiled as C++ and run on CPU tensors.

``HostShaderLibrary(source)`` stands where ``torch.mps.compile_shader(source)`` stands on a Mac:
``lib.<kernel>(*args, threads=..., group_size=...)`` binds the arguments as torch binds them
(argument i is buffer i; a tensor is its data at its storage offset, strides ignored; a Python
``float`` is a 4-byte float, an ``int`` an 8-byte integer, a list of floats a float array) and runs
the kernel over its whole grid. Unlike the GPU it also checks each binding against the kernel's
declared parameter (a float32 tensor bound to ``device half*``, an ``int`` bound to
``constant float&``, a missing or extra argument are errors), so the glue's argument packing is
tested along with the kernels.

The C++ side (platforms/mps/host/metal_host.h in the repository, not in the wheel: it is a test
tool, never part of a GPU run) runs every thread of a threadgroup as a fiber, one SIMD group at a
time through its shuffles up to the next barrier; each ``threadgroup`` array is filled with 0xff
bytes (NaN as f32) when its threadgroup starts, as undefined as it is on the GPU (``poisoned``).
``BNB_MPS_HOST_SANITIZE=1`` builds it with AddressSanitizer and UBSan (Python then needs the
compiler's libasan and libstdc++ in ``LD_PRELOAD``): a kernel touching memory outside the tensors
torch allocated stops the run, as ``nox -s tests-mps-host`` runs it. It is found
through ``BNB_MPS_HOST_DIR``, else in the current folder or a parent of it (a repository
checkout); the rewrite and the compiler lookup, which the CUDA harness shares, come from the
checkout's shared/host/simt_build.py. The module is compiled with the system C++ compiler
(``CXX``, else ``c++``) into a cache folder (``BNB_MPS_HOST_CACHE``, else
``~/.cache/bitsandbytes-mps-host``); every build deletes those no build has used for 14 days.
"""

from __future__ import annotations

import ctypes
import dataclasses
import functools
import hashlib
import importlib.util
import os
import pathlib
import re
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from typing import Any

import torch

BUILTINS = (
    "thread_position_in_grid",
    "thread_position_in_threadgroup",
    "threadgroup_position_in_grid",
    "threads_per_threadgroup",
    "threads_per_grid",
    "threadgroups_per_grid",
    "thread_index_in_simdgroup",
    "simdgroup_index_in_threadgroup",
)

ELEMENT_DTYPES = {
    "float": torch.float32,
    "half": torch.float16,
    "bfloat": torch.bfloat16,
    "uchar": torch.uint8,
    "char": torch.int8,
    "int": torch.int32,
    "uint": torch.int32,
    "long": torch.int64,
}
"""Metal element type -> the torch dtype a tensor bound to it must have."""


@dataclasses.dataclass(frozen=True)
class Param:
    """One kernel parameter: a buffer (``device T*``), a scalar (``constant T&``), an array
    (``constant T*``) or a builtin thread id."""

    name: str
    kind: str  # "buffer", "scalar", "array", "builtin"
    ctype: str  # the C++ type with Metal address spaces removed, e.g. "const half*"
    element: str  # "half", "long", ...; the builtin's attribute for builtins
    index: int  # buffer index; -1 for builtins


_KERNEL_RE = re.compile(r"__bnb_kernel__\s+void\s+(\w+)\s*\((.*?)\)\s*\{", re.S)
_PARAM_RE = re.compile(r"^(?P<type>.+?)\s*\b(?P<name>\w+)\s*\[\[\s*(?P<attr>\w+)\s*(?:\(\s*(?P<idx>\d+)\s*\))?\s*\]\]$")


def _parse_param(text: str) -> Param:
    m = _PARAM_RE.match(" ".join(text.split()))
    if not m:
        raise ValueError(f"cannot parse kernel parameter {text!r}")
    ctype, name, attr = m.group("type"), m.group("name"), m.group("attr")
    plain = " ".join(ctype.replace("__bnb_device__", " ").replace("__bnb_constant__", " const ").split())
    element = plain.replace("const", " ").replace("*", " ").replace("&", " ").split()[-1]
    if attr != "buffer":
        if attr not in BUILTINS:
            raise ValueError(f"parameter {name}: attribute [[{attr}]] is not emulated")
        return Param(name, "builtin", plain, attr, -1)
    index = int(m.group("idx"))
    if "__bnb_device__" in ctype and "*" in ctype:
        return Param(name, "buffer", plain, element, index)
    if "__bnb_constant__" in ctype and "&" in ctype:
        return Param(name, "scalar", plain.replace("&", "").strip(), element, index)
    if "__bnb_constant__" in ctype and "*" in ctype:
        return Param(name, "array", plain, element, index)
    raise ValueError(f"parameter {name}: {ctype!r} is neither a device buffer nor a constant")


def parse_kernels(preprocessed: str) -> dict[str, list[Param]]:
    """Kernel name -> parameters, from the source preprocessed with BNB_HOST_SCAN."""
    kernels = {}
    for name, params in _KERNEL_RE.findall(preprocessed):
        parsed = [_parse_param(p) for p in params.split(",")]
        buffers = [p.index for p in parsed if p.kind != "builtin"]
        if buffers != list(range(len(buffers))):
            raise ValueError(f"kernel {name}: buffer indices {buffers} are not 0, 1, 2, ... in parameter order")
        kernels[name] = parsed
    return kernels


def _wrapper(name: str, params: list[Param]) -> str:
    args = []
    for p in params:
        if p.kind == "buffer" or p.kind == "array":
            args.append(f"({p.ctype})args[{p.index}]")
        elif p.kind == "scalar":
            args.append(f"*({p.ctype}*)args[{p.index}]")
        else:
            args.append(f"ids.{p.element}")
    call = ", ".join(args)
    return f"""
extern "C" int bnbh_{name}(void** args, uint64_t threads, uint64_t group, char* err, size_t errlen) {{
  const std::string e = bnbh::dispatch(threads, group, [&](const bnbh::Ids& ids) {{ {name}({call}); }});
  snprintf(err, errlen, "%s", e.c_str());
  return e.empty() ? 0 : 1;
}}
"""


def host_dir() -> pathlib.Path:
    """The folder holding metal_host.h (platforms/mps/host of a repository checkout)."""
    given = os.environ.get("BNB_MPS_HOST_DIR")
    here = pathlib.Path.cwd().resolve()
    candidates = [pathlib.Path(given)] if given else [p / "platforms" / "mps" / "host" for p in (here, *here.parents)]
    for c in candidates:
        if (c / "metal_host.h").exists():
            return c
    raise RuntimeError(
        "bitsandbytes_mps host harness: metal_host.h not found; run from a repository checkout or set "
        "BNB_MPS_HOST_DIR=<repo>/platforms/mps/host"
    )


def _include_dirs() -> list[str]:
    """metal_host.h's folder, the shared headers (bnb_c_api.h) and the thread-group scheduler
    (shared/host/simt_host.h) it includes."""
    host = host_dir()
    shared = host.parent.parent.parent / "shared"
    for needed in ("include/bnb/bnb_c_api.h", "host/simt_host.h"):
        if not (shared / needed).exists():
            raise RuntimeError(f"bitsandbytes_mps host harness: {shared}/{needed} not found beside {host}")
    return [str(host), str(shared / "include"), str(shared / "host")]


def _simt_build() -> Any:
    """shared/host/simt_build.py of the checkout holding metal_host.h, loaded by path: the compiler
    lookup and the group-array rewrite this harness shares with the CUDA one."""
    path = pathlib.Path(_include_dirs()[2]) / "simt_build.py"
    if not path.exists():
        raise RuntimeError(f"bitsandbytes_mps host harness: {path} not found")
    spec = importlib.util.spec_from_file_location("_bnb_simt_build", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def poisoned(source: str) -> str:
    """``source`` with every ``threadgroup`` array declaration followed, on its line, by
    simt_host.h's ``poison`` call (the array filled with 0xff bytes once per threadgroup); a
    declaration the rewrite cannot follow is an error, not a silently unfilled array."""
    return _simt_build().poison_group_arrays(source, "threadgroup", "bitsandbytes_mps host harness")


CACHED = ("[0-9a-f]" * 20,)  # the cache's builds (folders named by their key), pruned by every build
FLAGS = ["-std=c++17", "-O2", "-ffp-contract=off", "-fno-strict-aliasing", "-fPIC", "-Wno-attributes"]


def build(source: str) -> tuple[pathlib.Path, dict[str, list[Param]]]:
    """Compile ``source`` (the shipped Metal text) with the host emulation; (library, kernels)."""
    simt = _simt_build()
    cxx = simt.compiler("bitsandbytes_mps host harness")
    flags = [*FLAGS, *simt.sanitize_flags("BNB_MPS_HOST_SANITIZE")]
    source = poisoned(source)
    host, _, scheduler = dirs = _include_dirs()
    incs = [f"-I{d}" for d in dirs]
    host_h = "".join(p.read_text() for d in (host, scheduler) for p in sorted(pathlib.Path(d).glob("*.h")))
    key = hashlib.sha256("\0".join([source, host_h, cxx, *flags, *incs]).encode()).hexdigest()[:20]
    cache = pathlib.Path(
        os.environ.get("BNB_MPS_HOST_CACHE") or pathlib.Path.home() / ".cache" / "bitsandbytes-mps-host"
    )
    out = cache / key
    lib = out / "libbnb_mps_host.so"
    with tempfile.TemporaryDirectory() as tmp:
        src = pathlib.Path(tmp) / "bnb_mps.cpp"
        src.write_text(source)
        scan = subprocess.run(
            [cxx, "-E", "-P", "-DBNB_HOST_SCAN", *FLAGS, *incs, "-x", "c++", str(src)], capture_output=True, text=True
        )
        if scan.returncode:
            raise RuntimeError(f"bitsandbytes_mps host harness: preprocessing failed:\n{scan.stderr}")
        kernels = parse_kernels(scan.stdout)
        if not kernels:
            raise RuntimeError("bitsandbytes_mps host harness: no kernels found in the Metal source")
        if lib.exists() and simt.used(cache, out):
            simt.prune(cache, CACHED)
            return lib, kernels
        out.mkdir(parents=True, exist_ok=True)
        simt.used(cache, out)  # a folder left by a failed build keeps its old time: a prune could take it
        body = '#include <stdio.h>\n#include "bnb_mps.cpp"\n#include "metal_host_tail.h"\n' + "".join(
            _wrapper(k, p) for k, p in kernels.items()
        )
        unit = pathlib.Path(tmp) / "harness.cpp"
        unit.write_text(body)
        tmp_lib = pathlib.Path(tmp) / "lib.so"
        cc = subprocess.run(
            [cxx, *flags, *incs, f"-I{tmp}", "-shared", "-o", str(tmp_lib), str(unit)], capture_output=True, text=True
        )
        if cc.returncode:
            raise RuntimeError(f"bitsandbytes_mps host harness: the Metal source does not compile as C++:\n{cc.stderr}")
        shutil.move(str(tmp_lib), lib)
    simt.prune(cache, CACHED)
    return lib, kernels


class HostKernel:
    """One kernel of a HostShaderLibrary, called like a torch.mps.compile_shader kernel."""

    def __init__(self, name: str, params: list[Param], fn: Any) -> None:
        self.name = name
        self.params = params
        self._fn = fn

    def _bind(self, i: int, arg: Any, keep: list) -> int:
        buffers = [p for p in self.params if p.kind != "builtin"]
        p = buffers[i]
        where = f"{self.name} argument {i} ({p.name}: {p.ctype})"
        if isinstance(arg, torch.Tensor):
            if p.kind != "buffer":
                raise TypeError(f"{where}: got a tensor, the kernel declares a {p.kind}")
            if arg.device.type != "cpu":
                raise TypeError(f"{where}: the host harness runs on CPU tensors, got {arg.device}")
            want = ELEMENT_DTYPES.get(p.element)
            if want is not None and arg.dtype != want:
                raise TypeError(f"{where}: got a {arg.dtype} tensor, the kernel reads {want}")
            if "const" not in p.ctype.split("*")[0] and arg.numel() == 0:
                raise TypeError(f"{where}: empty output tensor")
            return arg.data_ptr()
        if isinstance(arg, (list, tuple)):
            if p.kind != "array" or not arg:
                raise TypeError(f"{where}: got a list, the kernel declares a {p.kind}")
            if isinstance(arg[0], float):
                buf = torch.tensor(arg, dtype=torch.float32)
                want = "float"
            else:
                buf = torch.tensor(arg, dtype=torch.int64)
                want = "long"
            if p.element != want:
                raise TypeError(f"{where}: a list of {type(arg[0]).__name__} binds {want}[], not {p.element}[]")
            keep.append(buf)
            return buf.data_ptr()
        if isinstance(arg, float):
            buf, want = torch.tensor([arg], dtype=torch.float32), "float"  # torch binds a Python float as float
        elif isinstance(arg, int):
            buf, want = torch.tensor([int(arg)], dtype=torch.int64), "long"  # and an int as a 64-bit integer
        else:
            raise TypeError(f"{where}: unsupported argument type {type(arg).__name__}")
        if p.kind != "scalar" or p.element != want:
            raise TypeError(f"{where}: a Python {type(arg).__name__} binds `constant {want}&`")
        keep.append(buf)
        return buf.data_ptr()

    def __call__(
        self, *args: Any, threads: int | Sequence[int] | None = None, group_size: int | Sequence[int] | None = None
    ) -> None:
        nbuf = sum(p.kind != "builtin" for p in self.params)
        if len(args) != nbuf:
            raise TypeError(f"{self.name}: {len(args)} arguments given, the kernel has {nbuf} buffers")
        threads = _one_dim(threads, "threads", self.name)
        group = _one_dim(group_size, "group_size", self.name)
        keep: list = []
        ptrs = (ctypes.c_void_p * max(nbuf, 1))(*[self._bind(i, a, keep) for i, a in enumerate(args)])
        err = ctypes.create_string_buffer(512)
        if self._fn(ptrs, threads, group, err, len(err)):
            raise RuntimeError(f"bitsandbytes_mps host harness: {self.name}: {err.value.decode()}")


def _one_dim(value: int | Sequence[int] | None, what: str, name: str) -> int:
    if value is None:
        raise TypeError(f"{name}: {what} must be given (the glue always sizes its grids)")
    if not isinstance(value, int):
        if len(value) != 1:
            raise TypeError(f"{name}: the MPS kernels use one-dimensional grids, {what}={value}")
        value = value[0]
    if value <= 0:
        raise ValueError(f"{name}: {what} must be positive, got {value}")
    return int(value)


class HostShaderLibrary:
    """What ``torch.mps.compile_shader(source)`` returns, for the host: kernels as attributes."""

    def __init__(self, source: str) -> None:
        path, self.kernels = build(source)
        self._lib = ctypes.CDLL(str(path))
        self._cache: dict[str, HostKernel] = {}

    def __getattr__(self, name: str) -> HostKernel:
        if name.startswith("_") or name not in self.kernels:
            raise AttributeError(name)
        k = self._cache.get(name)
        if k is None:
            fn = getattr(self._lib, f"bnbh_{name}")
            fn.restype = ctypes.c_int
            fn.argtypes = [ctypes.c_void_p, ctypes.c_uint64, ctypes.c_uint64, ctypes.c_char_p, ctypes.c_size_t]
            k = self._cache[name] = HostKernel(name, self.kernels[name], fn)
        return k

    def __dir__(self) -> list[str]:
        return sorted(self.kernels)


@functools.cache
def host_library(source: str) -> HostShaderLibrary:
    """One HostShaderLibrary per source text per process."""
    return HostShaderLibrary(source)
