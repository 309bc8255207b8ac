"""What the two host harnesses that compile GPU kernel sources as C++ over simt_host.h share: the
C++ compiler they use, the rewrite that fills group-shared arrays at the start of every group, and
the upkeep of their build caches (each edit of a kernel adds a build: ``used`` and ``prune``).

Loaded by path, not installed: by platforms/cuda/host/cuda_host.py (``__shared__`` arrays of the
CUDA and ROCm kernels) and by the MPS wheel's ``bitsandbytes_mps/_host.py`` (``threadgroup`` arrays
of the Metal kernels), which find this folder beside ``simt_host.h`` in a repository checkout.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import re
import shutil
import time
from collections.abc import Iterator

_COMMENT = re.compile(r"//[^\n]*|/\*.*?\*/", re.S)


def compiler(harness: str) -> str:
    """The C++ compiler: ``CXX``, else the first of c++, g++, clang++ on the PATH."""
    cxx = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")
    if not cxx:
        raise RuntimeError(f"{harness}: no C++ compiler found (install g++ or set CXX)")
    return cxx


def sanitizer(env: str, default: str = "") -> str | None:
    """The sanitizer the environment variable ``env`` (``default`` where unset) asks a harness
    build for: ``"thread"`` for ``thread``, ``None`` for 0 or empty, else ``"address"``. The one
    reading of the variable, for the builds, nox and the tests that need one sanitizer."""
    value = os.environ.get(env, default)
    if value in ("", "0"):
        return None
    return "thread" if value == "thread" else "address"


def sanitize_flags(env: str) -> list[str]:
    """The compiler flags the environment variable ``env`` asks for (``sanitizer``; run Python with
    ``LD_PRELOAD`` = the compiler's sanitizer runtime and libstdc++):

    - ``"thread"``: ThreadSanitizer. The groups of a launch are unordered (simt_host.h), so a group
      touching device memory that another group writes, other than through an atomic, is a
      reported data race.
    - ``"address"``: AddressSanitizer and UBSan. A kernel reading or writing past a tensor torch
      allocated, or overflowing a signed integer, stops the run with a report."""
    return {
        None: [],
        "thread": ["-fsanitize=thread", "-fno-omit-frame-pointer"],
        "address": ["-fsanitize=address,undefined", "-fno-sanitize-recover=undefined", "-fno-omit-frame-pointer"],
    }[sanitizer(env)]


# A cached build unused this long is deleted when a harness builds anew.
CACHE_DAYS = 14


@contextlib.contextmanager
def locked(cache: pathlib.Path, exclusive: bool, wait: bool = True) -> Iterator[bool]:
    """Holds ``cache``/.lock (``flock``): shared by ``used``, exclusive by ``prune``, so that no entry
    is marked between prune's reading of its time and its deletion. Yields whether the lock was had
    (False where ``wait`` is False and another process holds it, or where the file system refuses
    the lock: ``used`` then marks unlocked, ``prune`` skips its turn). Where there is no ``flock``
    (Windows) nothing is locked."""
    try:
        import fcntl
    except ImportError:
        yield True
        return
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / ".lock", "a") as f:
        try:
            fcntl.flock(f, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | (0 if wait else fcntl.LOCK_NB))
        except OSError:
            had = False
        else:
            had = True
        try:
            yield had
        finally:
            if had:
                fcntl.flock(f, fcntl.LOCK_UN)


def used(cache: pathlib.Path, path: pathlib.Path) -> bool:
    """Marks ``path``, a cached build (a file or folder) of ``cache``, as used now (its modification
    time), so that ``prune`` keeps it for ``CACHE_DAYS``; whether it is still there, marked (False:
    a prune deleted it meanwhile, build it again)."""
    with locked(cache, exclusive=False):
        try:
            os.utime(path)
        except OSError:
            return False
        return True


def prune(cache: pathlib.Path, patterns: tuple[str, ...], days: float = CACHE_DAYS) -> list[pathlib.Path]:
    """Deletes the entries of ``cache`` matching any of the glob ``patterns`` that were last used
    (``used``, or written) more than ``days`` ago; the paths deleted. Called by every build, so that
    a kernel edited many times leaves a bounded cache. Skipped while another process holds the
    cache's lock (marking or pruning); an entry it cannot delete is left."""
    cutoff = time.time() - days * 86400.0
    gone = []
    with locked(cache, exclusive=True, wait=False) as had:
        if not had:
            return gone
        for pattern in patterns:
            for entry in cache.glob(pattern):
                try:
                    if entry.stat().st_mtime >= cutoff:
                        continue
                    if entry.is_dir() and not entry.is_symlink():
                        shutil.rmtree(entry)
                    else:
                        entry.unlink()
                except OSError:
                    continue
                gone.append(entry)
    return gone


def poison_group_arrays(text: str, qualifier: str, harness: str) -> str:
    """``text`` with every array declared ``qualifier`` (``__shared__``, ``threadgroup``) followed,
    on its line, by simt_host.h's ``::bnb_simt::poison(name, sizeof(name))``: the array is filled
    with 0xff bytes (NaN as f32) when each group starts, as undefined as it is on a GPU.

    Every declaration outside comments counts, of an array or a scalar: one the rewrite cannot
    follow (an unsized ``extern`` array, a scalar, a ``volatile`` or multi-word type) is an error,
    never a silently unfilled variable. Pointers (a Metal kernel's ``threadgroup float*``
    parameter) are not declarations of group memory and are left alone."""
    q = re.escape(qualifier)
    arrays = re.compile(rf"\b{q}\s+[\w:<>]+\s+(\w+)(?:\s*\[[^\];]+\])+\s*;")
    declarations = re.compile(rf"\b{q}\s+[^;(){{}}\n*&]*?\w+\s*[\[;=]")
    declared = len(declarations.findall(_COMMENT.sub("", text)))
    text, filled = arrays.subn(lambda m: f"{m[0]} ::bnb_simt::poison({m[1]}, sizeof({m[1]}));", text)
    if filled != declared:
        raise RuntimeError(f"{harness}: {declared - filled} {qualifier} declarations it cannot follow")
    return text
