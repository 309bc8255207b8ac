"""The CPU library exports exactly the common C ABI, callable without Python bindings (ctypes)."""

from __future__ import annotations

import ctypes
import json
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
SYMBOLS = (ROOT / "shared" / "include" / "bnb" / "abi_symbols.txt").read_text().split()


@pytest.fixture(scope="module")
def lib():
    pkg = pytest.importorskip("bitsandbytes_cpu")
    path = next(pathlib.Path(pkg.__file__).parent.glob("libbitsandbytes_cpu.*"))
    return ctypes.CDLL(str(path))


def test_every_abi_symbol_is_exported(lib):
    missing = [s for s in SYMBOLS if not hasattr(lib, s)]
    assert not missing


def test_build_info_and_version_through_ctypes(lib):
    lib.bnb_build_info.restype = ctypes.c_char_p
    info = json.loads(lib.bnb_build_info())
    assert info["platform"] == "cpu" and info["abi_version"] == lib.bnb_abi_version() == 2


def test_unimplemented_entry_points_say_so(lib):
    lib.bnb_last_error.restype = ctypes.c_char_p
    lib.bnb_status_string.restype = ctypes.c_char_p
    status = lib.bnb_paged_free(None)
    assert lib.bnb_status_string(status) == b"not implemented"
    assert b"bnb_paged_free" in lib.bnb_last_error()


def test_dequantize_through_the_c_abi(lib):
    import torch

    packed = torch.tensor([0xF0, 0x7F], dtype=torch.uint8)  # NF4 codes 15, 0, 7, 15
    absmax = torch.tensor([2.0])
    out = torch.empty(4)
    status = lib.bnb_dequantize_4bit(
        ctypes.c_void_p(packed.data_ptr()), ctypes.c_void_p(absmax.data_ptr()), ctypes.c_int64(4),
        ctypes.c_int64(64), ctypes.c_int32(1), ctypes.c_void_p(out.data_ptr()), ctypes.c_int32(0), None,
    )  # fmt: skip
    assert status == 0 and out.tolist() == [2.0, -2.0, 0.0, 2.0]
