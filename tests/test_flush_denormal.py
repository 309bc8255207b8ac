"""Quantizers and 8-bit optimizers under torch.set_flush_denormal(True) (denormals-are-zero and
flush-to-zero on the host): on inputs without subnormals every kernel gives the bits it gives
without the mode. The block scale's floor, 1e-38, is itself subnormal, so a kernel that reads it
at run time divides a zero block by zero there and writes NaN codes (spec's rule: 1 / max(absmax,
1e-38)). Subnormal inputs read as zero in that mode, and each CPU instruction set must then still
give the scalar kernel's bits."""

from __future__ import annotations

import contextlib

import pytest
import torch

import bitsandbytes  # noqa: F401  (registers the kernels)
from bitsandbytes.backends.reference import KERNELS as REF
from bitsandbytes.backends.reference.codebooks import dynamic_map
from conftest import impl_params

if not torch.set_flush_denormal(False):
    pytest.skip("this CPU has no flush-to-zero mode torch can set", allow_module_level=True)


@contextlib.contextmanager
def flush_denormal():
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(False)


def _bits(outs) -> list[torch.Tensor]:
    return [t.detach().cpu().contiguous().view(torch.uint8).clone() for t in outs]


def _both_modes(fn) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    plain = _bits(fn())
    with flush_denormal():
        flushed = _bits(fn())
    return plain, flushed


def _with_zero_blocks(n: int, blocksize: int, dtype: torch.dtype, device: str) -> torch.Tensor:
    x = torch.randn(n, generator=torch.Generator().manual_seed(n)) * 3
    x[:blocksize] = 0.0  # the first block, and one in the middle, all zero
    x[3 * blocksize : 4 * blocksize] = 0.0
    x[5 * blocksize + 1] = float("nan")
    return x.to(device, dtype)


@pytest.mark.parametrize("device,impl,fn", impl_params("quantize_4bit"))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
def test_quantize_4bit_zero_blocks(device, impl, fn, dtype, quant_type) -> None:
    x = _with_zero_blocks(64 * 9 + 5, 64, dtype, device)
    plain, flushed = _both_modes(lambda: fn(x, 64, quant_type, torch.uint8))
    assert all(torch.equal(a, b) for a, b in zip(plain, flushed))
    zero_nibble = 7 if quant_type == "nf4" else 0
    assert (plain[0][:32] == zero_nibble * 17).all()  # the zero block packs the code of 0 twice


@pytest.mark.parametrize("device,impl,fn", impl_params("quantize_blockwise"))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("signed", [True, False])
def test_quantize_blockwise_zero_blocks(device, impl, fn, dtype, signed) -> None:
    x = _with_zero_blocks(256 * 7 + 3, 256, dtype, device)
    if not signed:
        x = x.abs()
    code = dynamic_map(signed, device)
    plain, flushed = _both_modes(lambda: fn(x, code, 256))
    assert all(torch.equal(a, b) for a, b in zip(plain, flushed))
    assert (plain[0][:256] == int((code.cpu() == 0).nonzero())).all()


@pytest.mark.parametrize("device,impl,fn", impl_params("optimizer_update_8bit_blockwise"))
@pytest.mark.parametrize("name", ["adam", "ademamix", "lion", "momentum", "rmsprop"])
def test_optimizer_8bit_zero_blocks(device, impl, fn, name) -> None:
    """Blocks whose gradient and states are zero (frozen rows, a first step) are requantized with
    absmax 0 (to the code nearest the grid point above 0, as without the mode)."""
    n = 256 * 5 + 40
    gen = torch.Generator().manual_seed(1)
    g = torch.randn(n, generator=gen)
    g[256:768] = 0.0
    p0 = torch.randn(n, generator=gen).to(device)
    rows = 2 if name == "ademamix" else 1
    two = name in ("adam", "ademamix")
    code1, code2 = dynamic_map(True, device), dynamic_map(False, device)
    zero1, zero2 = int((code1.cpu() == 0).nonzero()), int((code2.cpu() == 0).nonzero())
    blocks = (n + 255) // 256

    def run():
        p = p0.clone()
        s1 = torch.full((rows * n,), zero1, dtype=torch.uint8, device=device)
        s2 = torch.full((n,), zero2, dtype=torch.uint8, device=device) if two else None
        a1 = torch.zeros(rows * blocks, device=device)
        a2 = torch.zeros(blocks, device=device) if two else None
        fn(
            name, g.to(device), p, s1, s2, 0.9, 0.99, 0.999, 2.0, 1e-8, 1, 1e-3,
            code1, code2 if two else None, a1, a2, 0.0, 1.0, False,
        )  # fmt: skip
        return [t for t in (p, s1, a1, s2, a2) if t is not None]

    plain, flushed = _both_modes(run)
    assert all(torch.equal(a, b) for a, b in zip(plain, flushed))


try:
    import bitsandbytes_cpu
except ImportError:  # the host sessions of other platforms install no CPU wheel
    bitsandbytes_cpu = None
USABLE = bitsandbytes_cpu.build_info().get("isa_usable", []) if bitsandbytes_cpu else []
VECTOR_ISAS = [i for i in USABLE if i != "scalar"]
QUANTIZERS = ("quantize_4bit", "quantize_blockwise", "int8_vectorwise_quant")
needs_cpu_wheel = pytest.mark.skipif(bitsandbytes_cpu is None, reason="the CPU wheel is not installed")


def _on_isa(isa: str, fn) -> list[torch.Tensor]:
    bitsandbytes_cpu.set_isa(isa)
    try:
        with flush_denormal():
            return _bits(fn())
    finally:
        bitsandbytes_cpu.set_isa("auto")


def _subnormal_blocks() -> torch.Tensor:
    x = torch.randn(4096 + 34, generator=torch.Generator().manual_seed(5))
    x[:512] *= 2.0**-135  # blocks (and int8 rows) of subnormals only
    x[700] = 2.0**-140  # one subnormal among normal values
    return x


def _quantizers(kernels):
    x = _subnormal_blocks()
    q4, a4 = kernels["quantize_4bit"](x, 64, "nf4", torch.uint8)
    q8, a8 = kernels["quantize_blockwise"](x, dynamic_map(True, "cpu"), 256)
    i8, rows, _ = kernels["int8_vectorwise_quant"](x.view(-1, 70), 0.0)
    t8, trows, _ = kernels["int8_vectorwise_quant"](x.view(-1, 70), 1.5)
    return q4, a4, q8, a8, i8, rows, t8, trows


def _adam():
    x = _subnormal_blocks()
    n = x.numel()
    gen = torch.Generator().manual_seed(6)
    p = torch.ones(n)
    s1 = torch.randint(0, 256, (n,), generator=gen, dtype=torch.uint8)
    s2 = torch.randint(0, 256, (n,), generator=gen, dtype=torch.uint8)
    blocks = (n + 255) // 256
    a1 = torch.full((blocks,), 2.0**-130)  # states that dequantize to subnormals
    a2 = torch.full((blocks,), 2.0**-130)
    torch.ops.bitsandbytes.optimizer_update_8bit_blockwise(
        "adam", x, p, s1, s2, 0.9, 0.999, 0.0, 0.0, 1e-8, 3, 1e-3,
        dynamic_map(True, "cpu"), dynamic_map(False, "cpu"), a1, a2, 0.0, 1.0, False,
    )  # fmt: skip
    return p, s1, a1, s2, a2


@needs_cpu_wheel
def test_subnormal_blocks_reference_matches_scalar() -> None:
    """In this mode the reference (torch's amax) finds absmax 0 for a block of subnormals, as the
    scalar kernels do."""
    ops = {name: getattr(torch.ops.bitsandbytes, name) for name in QUANTIZERS}
    want = _on_isa("scalar", lambda: _quantizers(ops))
    with flush_denormal():
        got = _bits(_quantizers(REF))
    assert all(torch.equal(a, b) for a, b in zip(want, got))


@pytest.mark.skipif(not VECTOR_ISAS, reason="only the scalar kernels are usable on this CPU")
@pytest.mark.parametrize("isa", VECTOR_ISAS)
def test_subnormal_blocks_match_scalar(isa) -> None:
    """Blocks of subnormals (zero in this mode, though the vector kernels take their maxima over
    bit patterns) quantize as the scalar kernel does, in the quantizers and an 8-bit Adam step."""
    ops = {name: getattr(torch.ops.bitsandbytes, name) for name in QUANTIZERS}
    for name, fn in (("quantizers", lambda: _quantizers(ops)), ("adam", _adam)):
        want, got = _on_isa("scalar", fn), _on_isa(isa, fn)
        assert all(torch.equal(a, b) for a, b in zip(want, got)), name
