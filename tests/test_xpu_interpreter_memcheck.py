"""The memory checks that conftest installs into Triton's interpreter (tests/triton_memcheck.py),
under which every XPU kernel of ``nox -s tests-xpu-interpret`` runs: an access outside the
launch's tensors fails the launch, one its mask keeps out does not; a byte that one program
stores and another loads or stores fails it too."""

from __future__ import annotations

import os

import pytest
import torch

if os.environ.get("TRITON_INTERPRET", "0") in ("", "0"):
    pytest.skip("the checks patch Triton's interpreter (TRITON_INTERPRET=1)", allow_module_level=True)
triton = pytest.importorskip("triton")
tl = pytest.importorskip("triton.language")

import triton_memcheck  # noqa: E402  (after the skips: it needs triton)

InterpreterError = triton.runtime.interpreter.InterpreterError


@triton.jit
def _copy(x, y, n, at, BLOCK: tl.constexpr):
    """y[i] = x[i + at] for i < n (lanes at and beyond n masked off), in programs of BLOCK."""
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    tl.store(y + i, tl.load(x + i + at, mask=i < n), mask=i < n)


@triton.jit
def _store_at(y, at, v):
    tl.store(y + at, v)


@triton.jit
def _add_at(y, at, v):
    tl.atomic_add(y + at, v)


@triton.jit
def _shift_in_place(x, n, by, BLOCK: tl.constexpr):
    """x[i] = x[i + by] + 1 in place, in programs of BLOCK elements."""
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    v = tl.load(x + i + by, mask=i + by < n)
    tl.store(x + i, v + 1.0, mask=i + by < n)


@triton.jit
def _fill_from(x, y, BLOCK: tl.constexpr):
    """y[i] = x[0], in programs of BLOCK elements."""
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    tl.store(y + i, tl.load(x + i * 0))


def _out_of_bounds(kernel: str, what: str, near: str):
    pattern = (
        rf"OutOfBoundsError.*{kernel}: a {what} of 4-byte elements at 0x[0-9a-f]+ .* outside every tensor "
        rf"argument; the nearest argument: {near}, which spans"
    )
    return pytest.raises(InterpreterError, match=pattern)


def test_xpu_interpreter_checks_are_installed():
    assert triton_memcheck._INSTALLED == [True]


def test_xpu_interpreter_masked_lanes_may_point_anywhere():
    x, y = torch.arange(10.0), torch.zeros(10)
    _copy[(1,)](x, y, 10, 0, BLOCK=16)  # lanes 10..15 point past both tensors, masked off
    assert torch.equal(y, x)
    _copy[(1,)](x, y, 0, 1000, BLOCK=16)  # every lane masked off
    assert torch.equal(y, x)


def test_xpu_interpreter_refuses_a_load_past_the_end():
    x, y = torch.arange(10.0), torch.zeros(10)
    with _out_of_bounds("_copy", "load", "x"):
        _copy[(1,)](x, y, 10, 1, BLOCK=16)  # lane 9 reads x[10]
    with _out_of_bounds("_copy", "load", "x"):
        _copy[(1,)](x, y, 10, -1, BLOCK=16)  # lane 0 reads x[-1]


def test_xpu_interpreter_refuses_a_store_or_atomic_past_the_end_and_writes_nothing():
    storage = torch.zeros(12)
    y = storage[1:11]
    with _out_of_bounds("_store_at", "store", "y"):
        _store_at[(1,)](y, 10, 5.0)
    with _out_of_bounds("_add_at", "atomic", "y"):
        _add_at[(1,)](y, -1, 5.0)
    assert torch.equal(storage, torch.zeros(12))
    _store_at[(1,)](y, 9, 5.0)
    _add_at[(1,)](y, 0, 2.0)
    assert storage[10] == 5.0 and storage[1] == 2.0


def test_xpu_interpreter_bounds_are_the_views_not_their_storage():
    """A strided view spans from its first to its last element: the storage around it is outside,
    a gap between its elements inside (a kernel walks strides itself)."""
    base = torch.arange(20.0)
    x, y = base[2:12:2], torch.zeros(9)  # elements 2, 4, ..., 10 of base
    _copy[(1,)](x, y, 9, 0, BLOCK=16)  # x's extent as a flat range: base[2..10]
    assert torch.equal(y, base[2:11])
    with _out_of_bounds("_copy", "load", "x"):
        _copy[(1,)](x, y, 9, 1, BLOCK=16)  # base[11]: in the storage, past the view


def test_xpu_interpreter_tensors_without_elements_cover_nothing():
    x, y = torch.zeros(0), torch.zeros(4)
    _copy[(1,)](x, y, 0, 0, BLOCK=16)
    with _out_of_bounds("_copy", "load", "y"):
        _copy[(1,)](x, y, 1, 0, BLOCK=16)


def test_xpu_interpreter_in_place_within_one_program_is_no_race():
    x = torch.arange(8.0)
    _shift_in_place[(1,)](x, 8, 0, BLOCK=8)  # each program loads and stores its own elements
    assert torch.equal(x, torch.arange(8.0) + 1)
    _shift_in_place[(1,)](x, 8, 1, BLOCK=8)  # one program loads a neighbour it stores later
    assert torch.equal(x[:7], torch.arange(2.0, 9.0) + 1)


def test_xpu_interpreter_refuses_a_load_of_what_another_program_stores():
    """Program 0 loads x[1..5), so x[4], which program 1 stores. The interpreter runs program 0
    first and gives the sequential answer; a GPU may run program 1 first."""
    x = torch.arange(8.0)
    with pytest.raises(triton_memcheck.RaceError, match=r"_shift_in_place: program \(1, 0, 0\) stores and "
                       r"program \(0, 0, 0\) loads the byte at 0x[0-9a-f]+ \(x\)"):  # fmt: skip
        _shift_in_place[(2,)](x, 8, 1, BLOCK=4)


def test_xpu_interpreter_refuses_two_programs_storing_one_byte():
    x, y = torch.arange(8.0), torch.zeros(8)
    _copy[(2,)](x, y, 8, 0, BLOCK=4)  # programs store disjoint halves
    assert torch.equal(y, x)
    with pytest.raises(triton_memcheck.RaceError, match=r"_store_at: program \(0, 0, 0\) stores and program "
                       r"\(1, 0, 0\) stores the byte"):  # fmt: skip
        _store_at[(2,)](y, 3, 1.0)


def test_xpu_interpreter_atomics_and_shared_loads_are_no_race():
    x, y = torch.full((1,), 5.0), torch.zeros(8)
    for _ in range(3):
        _add_at[(4,)](y, 2, 1.0)  # four programs add to one element through atomics
    _fill_from[(2,)](x, y[4:], BLOCK=2)  # two programs load the one element of x
    assert y[2] == 12.0 and torch.equal(y[4:], torch.full((4,), 5.0))
