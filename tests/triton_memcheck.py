"""Memory checks for Triton's interpreter (``TRITON_INTERPRET=1``), a test tool.

The interpreter reads and writes through raw addresses and runs a launch's programs one after
another, so two kinds of kernel defect pass every comparison with the reference there and fail on
a GPU:

- **Out of bounds.** A load past the end of a tensor reads whatever lies there; where the value
  ends up multiplied by a zero (a padded tile) the result is still right. On a GPU the same load
  may fault. Every load, store and atomic of a launch is checked: each address its mask lets
  through must lie, with the whole element, inside one of the tensors the launch was given (their
  views' extents, overlapping ones merged).
- **Races between programs.** A GPU runs a launch's programs at once and in no set order: a byte
  that one program stores and another loads or stores (not through an atomic) has no defined
  result. The interpreter runs program 0 to the end before program 1 starts, which gives one
  answer that may well be the intended one. Every byte that a launch's non-atomic stores touch
  is checked, at the end of the launch, against the other programs' loads and stores.

``install()`` patches the interpreter's builder (its memory operations and ``set_grid_idx``)
and grid executor (its argument set-up and its call); it checks that they exist in the Triton at
hand and refuses otherwise, so a Triton whose interpreter moved on fails loudly instead of
checking nothing.
"""

from __future__ import annotations

import threading

import numpy as np
import torch

_STATE = threading.local()
_INSTALLED: list[bool] = []


class OutOfBoundsError(RuntimeError):
    """A load, store or atomic of an interpreted kernel outside every tensor it was given."""


class RaceError(RuntimeError):
    """A byte that one program of a launch stores and another loads or stores."""


class _Launch:
    """What one launch was given (its tensors' extents) and what its programs touched."""

    def __init__(self, kernel: str, extents: list[tuple[int, int, str]]) -> None:
        self.kernel = kernel
        spans: list[list] = []
        for lo, hi, name in sorted(e for e in extents if e[1] > e[0]):
            if spans and lo <= spans[-1][1]:
                spans[-1][1] = max(spans[-1][1], hi)
                spans[-1][2] += f", {name}"
            else:
                spans.append([lo, hi, name])
        self.los = np.array([s[0] for s in spans], dtype=np.uint64)
        self.his = np.array([s[1] for s in spans], dtype=np.uint64)
        self.names = [s[2] for s in spans]
        self.program = 0
        self.grid = (1, 1, 1)
        self.loads: list[tuple[np.ndarray, int, int]] = []  # (element addresses, bytes each, program)
        self.stores: list[tuple[np.ndarray, int, int]] = []

    def name_of(self, addr: int) -> str:
        """The argument(s) whose extent holds ``addr``, else the nearest one with its extent."""
        at = int(np.searchsorted(self.los, np.uint64(addr), side="right")) - 1
        if at >= 0 and addr < int(self.his[at]):
            return self.names[at]
        if not self.names:
            return "no tensor with elements"
        near = min(
            range(len(self.names)), key=lambda i: min(abs(addr - int(self.los[i])), abs(addr - int(self.his[i])))
        )
        return f"{self.names[near]}, which spans [{int(self.los[near]):#x}, {int(self.his[near]):#x})"

    def program_name(self, linear: int) -> str:
        nx, ny, _ = self.grid
        return f"program ({linear % nx}, {linear // nx % ny}, {linear // (nx * ny)})"

    def access(self, ptrs, mask, itemsize: int, what: str) -> None:
        addrs = np.asarray(ptrs, dtype=np.uint64)
        if mask is not None:
            addrs = addrs[np.broadcast_to(np.asarray(mask, dtype=bool), addrs.shape)]
        addrs = addrs.reshape(-1)
        if addrs.size == 0:
            return
        at = np.searchsorted(self.los, addrs, side="right").astype(np.int64) - 1
        inside = at >= 0
        inside[inside] = addrs[inside] + np.uint64(itemsize) <= self.his[at[inside]]
        if not inside.all():
            bad = int(addrs[~inside][0])
            raise OutOfBoundsError(
                f"{self.kernel}: a {what} of {itemsize}-byte elements at {bad:#x} ({int((~inside).sum())} of "
                f"{addrs.size} active lanes, {self.program_name(self.program)}) lies outside every tensor "
                f"argument; the nearest argument: {self.name_of(bad)}"
            )
        if what == "load":
            self.loads.append((addrs, itemsize, self.program))
        elif what == "store":
            self.stores.append((addrs, itemsize, self.program))

    def check_races(self) -> None:
        if not self.stores:
            return
        stored, writer = _bytes_by_program(self.stores)
        twice = np.flatnonzero(stored[1:] == stored[:-1])
        if twice.size:
            i = int(twice[0])
            self._race(int(stored[i]), "stores", int(writer[i]), "stores", int(writer[i + 1]))
        if not self.loads:
            return
        loaded, reader = _bytes_by_program(self.loads)
        at = np.minimum(np.searchsorted(stored, loaded), stored.size - 1)
        clash = np.flatnonzero((stored[at] == loaded) & (writer[at] != reader))
        if clash.size:
            i = int(clash[0])
            self._race(int(loaded[i]), "stores", int(writer[at[i]]), "loads", int(reader[i]))

    def _race(self, byte: int, first: str, p: int, second: str, q: int) -> None:
        raise RaceError(
            f"{self.kernel}: {self.program_name(p)} {first} and {self.program_name(q)} {second} the byte at "
            f"{byte:#x} ({self.name_of(byte)}) in one launch: on a GPU the programs run in no set order"
        )


def _bytes_by_program(accesses: list[tuple[np.ndarray, int, int]]) -> tuple[np.ndarray, np.ndarray]:
    """The (byte, program) pairs of ``accesses``, each once, sorted by byte then program."""
    bytes_, programs = [], []
    for addrs, itemsize, program in accesses:
        b = (addrs[:, None] + np.arange(itemsize, dtype=np.uint64)[None, :]).reshape(-1)
        bytes_.append(b)
        programs.append(np.full(b.size, program, dtype=np.int64))
    b, p = np.concatenate(bytes_), np.concatenate(programs)
    order = np.lexsort((p, b))
    b, p = b[order], p[order]
    keep = np.ones(b.size, dtype=bool)
    keep[1:] = (b[1:] != b[:-1]) | (p[1:] != p[:-1])
    return b[keep], p[keep]


def _extent(t: torch.Tensor) -> tuple[int, int]:
    """[first byte, one past the last byte) of a tensor view (torch strides are never negative);
    empty for a tensor without elements."""
    if t.numel() == 0:
        return (t.data_ptr(), t.data_ptr())
    last = sum((n - 1) * s for n, s in zip(t.shape, t.stride()))
    return (t.data_ptr(), t.data_ptr() + (last + 1) * t.element_size())


def _tensors(arg):
    if isinstance(arg, torch.Tensor):
        yield arg
    elif isinstance(arg, (tuple, list)):
        for a in arg:
            yield from _tensors(a)
    elif isinstance(getattr(arg, "base", None), torch.Tensor):  # a wrapper (TensorWrapper, TensorDescriptor)
        yield arg.base


def _access(ptrs, mask, itemsize: int, what: str) -> None:
    launch = getattr(_STATE, "launch", None)
    if launch is not None:
        launch.access(ptrs, mask, itemsize, what)


def install() -> None:
    """Patch Triton's interpreter to check every memory access of every launch (idempotent)."""
    if _INSTALLED:
        return
    from triton.runtime import interpreter as interp

    builder, executor = interp.InterpreterBuilder, interp.GridExecutor
    needed = {
        builder: (
            "create_masked_load",
            "create_masked_store",
            "create_atomic_rmw",
            "create_atomic_cas",
            "set_grid_idx",
        ),
        executor: ("__call__", "_init_args_hst"),
    }
    for cls, names in needed.items():
        for name in names:
            if not hasattr(cls, name):
                raise RuntimeError(f"triton_memcheck: Triton's interpreter has no {cls.__name__}.{name}; update it")

    load, store = builder.create_masked_load, builder.create_masked_store
    rmw, cas, grid_idx = builder.create_atomic_rmw, builder.create_atomic_cas, builder.set_grid_idx
    call, init_args = executor.__call__, executor._init_args_hst

    def checked_load(self, ptrs, mask, other, cache_policy, is_volatile):
        _access(ptrs.data, mask.data, np.dtype(interp._get_np_dtype(ptrs.get_element_ty())).itemsize, "load")
        return load(self, ptrs, mask, other, cache_policy, is_volatile)

    def checked_store(self, ptrs, value, mask, cache_policy):
        _access(ptrs.data, mask.data, value.data.dtype.itemsize, "store")
        return store(self, ptrs, value, mask, cache_policy)

    def checked_rmw(self, rmw_op, ptr, val, mask, sem, scope):
        _access(ptr.data, mask.data, val.data.dtype.itemsize, "atomic")
        return rmw(self, rmw_op, ptr, val, mask, sem, scope)

    def checked_cas(self, ptr, cmp, val, sem, scope):
        _access(ptr.data, None, val.data.dtype.itemsize, "atomic")
        return cas(self, ptr, cmp, val, sem, scope)

    def tracked_grid_idx(self, x, y, z):
        launch = getattr(_STATE, "launch", None)
        if launch is not None:
            launch.grid = tuple(int(n) for n in self.grid_dim)
            launch.program = x + launch.grid[0] * (y + launch.grid[1] * z)
        return grid_idx(self, x, y, z)

    def recording_init(self, args_dev, kwargs):
        args_hst, kwargs_hst = init_args(self, args_dev, kwargs)
        names = list(getattr(self, "arg_names", []))
        extents = []
        for i, arg in enumerate(args_hst):
            for t in _tensors(arg):
                extents.append((*_extent(t), names[i] if i < len(names) else f"argument {i}"))
        for key, arg in kwargs_hst.items():
            for t in _tensors(arg):
                extents.append((*_extent(t), key))
        _STATE.launch = _Launch(getattr(self.fn, "__name__", "kernel"), extents)
        return args_hst, kwargs_hst

    def checked_call(self, *args, **kwargs):
        outer = getattr(_STATE, "launch", None)
        try:
            result = call(self, *args, **kwargs)
            launch = getattr(_STATE, "launch", None)
            if launch is not None and launch is not outer:
                launch.check_races()
            return result
        finally:
            _STATE.launch = outer

    patches = {
        builder: {"create_masked_load": checked_load, "create_masked_store": checked_store,
                  "create_atomic_rmw": checked_rmw, "create_atomic_cas": checked_cas, "set_grid_idx": tracked_grid_idx},
        executor: {"_init_args_hst": recording_init, "__call__": checked_call},
    }  # fmt: skip
    for cls, methods in patches.items():
        for name, fn in methods.items():
            setattr(cls, name, fn)
    _INSTALLED.append(True)
