"""The quantizers of every CPU instruction set against the scalar kernel, bit for bit, on inputs
with NaN, ±inf, all-zero blocks and a partial last block (the vector searches fold NaN into their
compares and group blocks, which the smooth inputs of the conformance suite would not exercise)."""

from __future__ import annotations

import pytest
import torch

import bitsandbytes.functional as F

bitsandbytes_cpu = pytest.importorskip("bitsandbytes_cpu")

VECTOR_ISAS = [i for i in bitsandbytes_cpu.build_info().get("isa_usable", []) if i != "scalar"]


def _special(n: int, dtype: torch.dtype, zero_block: int) -> torch.Tensor:
    x = torch.randn(n, generator=torch.Generator().manual_seed(n)).to(dtype)
    x[3], x[100], x[200] = float("nan"), float("inf"), -float("inf")
    x[zero_block : zero_block + 4096] = 0.0
    return x


def _on(isa: str, fn):
    bitsandbytes_cpu.set_isa(isa)
    try:
        return [t.view(torch.uint8).clone() for t in fn()]
    finally:
        bitsandbytes_cpu.set_isa("auto")


@pytest.mark.skipif(not VECTOR_ISAS, reason="only the scalar kernels are usable on this CPU")
@pytest.mark.parametrize("isa", VECTOR_ISAS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("blocksize", [32, 64, 256, 4096])
@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
def test_quantize_4bit_matches_scalar(isa, dtype, blocksize, quant_type) -> None:
    x = _special(4096 * 5 + 50, dtype, 8192)
    fn = lambda: torch.ops.bitsandbytes.quantize_4bit(x, blocksize, quant_type, torch.uint8)  # noqa: E731
    assert all(torch.equal(a, b) for a, b in zip(_on("scalar", fn), _on(isa, fn)))


@pytest.mark.skipif(not VECTOR_ISAS, reason="only the scalar kernels are usable on this CPU")
@pytest.mark.parametrize("isa", VECTOR_ISAS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("blocksize", [64, 256, 4096])
@pytest.mark.parametrize("signed", [True, False])
def test_blockwise_8bit_matches_scalar(isa, dtype, blocksize, signed) -> None:
    x = _special(4096 * 5 + 50, dtype, 8192)
    code = F.create_dynamic_map(signed=signed)
    quant = lambda: torch.ops.bitsandbytes.quantize_blockwise(x, code, blocksize)  # noqa: E731
    q, a = torch.ops.bitsandbytes.quantize_blockwise(x, code, blocksize)
    deq = lambda: (torch.ops.bitsandbytes.dequantize_blockwise(q, a, code, blocksize, dtype),)  # noqa: E731
    assert all(torch.equal(s, v) for s, v in zip(_on("scalar", quant), _on(isa, quant)))
    assert all(torch.equal(s, v) for s, v in zip(_on("scalar", deq), _on(isa, deq)))


def _code_books() -> dict[str, torch.Tensor]:
    clustered = torch.linspace(-1, 1, 256)
    clustered[100:110] = 0.3 + torch.arange(10) * 1e-6  # several midpoints share a float's top 16 bits
    return {
        "dynamic-signed": F.create_dynamic_map(signed=True),
        "dynamic-unsigned": F.create_dynamic_map(signed=False),
        "linear": F.create_linear_map(signed=True),
        "clustered": clustered.sort().values,
    }


@pytest.mark.skipif(not VECTOR_ISAS, reason="only the scalar kernels are usable on this CPU")
@pytest.mark.parametrize("isa", VECTOR_ISAS)
@pytest.mark.parametrize("book", ["dynamic-signed", "dynamic-unsigned", "linear", "clustered"])
def test_blockwise_8bit_midpoints_and_magnitudes_match_scalar(isa, book) -> None:
    """Every midpoint of the code book, its two float neighbours and values of every magnitude,
    in blocks whose absmax is exactly 1 (so the scaled value is the value): the vector kernels'
    nearest-code tables must pick the scalar kernel's code for each."""
    code = _code_books()[book]
    mids = (code[:-1] + code[1:]) / 2
    inf = torch.tensor(float("inf"))
    near = torch.cat([mids, torch.nextafter(mids, inf), torch.nextafter(mids, -inf), code])
    g = torch.Generator().manual_seed(7)
    sign = torch.where(torch.rand(1 << 16, generator=g) < 0.5, -1.0, 1.0)
    spread = sign * torch.exp2(-torch.rand(1 << 16, generator=g) * 140)  # down to subnormal scale
    x = torch.cat([near, spread, torch.tensor([0.0, -0.0])]).clamp(-1, 1)
    blocksize = 4096
    x = torch.cat([x, torch.zeros(-x.numel() % (blocksize - 1))]).view(-1, blocksize - 1)
    x = torch.cat([torch.ones(x.shape[0], 1), x], dim=1).flatten()  # absmax 1 in every block
    quant = lambda: torch.ops.bitsandbytes.quantize_blockwise(x, code, blocksize)  # noqa: E731
    want, got = _on("scalar", quant), _on(isa, quant)
    assert torch.equal(want[1], got[1])
    mismatch = (want[0] != got[0]).nonzero().flatten()
    assert mismatch.numel() == 0, f"{mismatch.numel()} codes differ, first at x={x[mismatch[0]].item()!r}"


@pytest.mark.skipif(not VECTOR_ISAS, reason="only the scalar kernels are usable on this CPU")
@pytest.mark.parametrize("isa", VECTOR_ISAS)
@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_quantize_4bit_midpoints_and_magnitudes_match_scalar(isa, quant_type, dtype) -> None:
    """Every midpoint of the 4-bit code book, its float neighbours, the bucket edges k / 16 - 1 of
    the NF4 kernel and values of every magnitude, in blocks whose absmax is exactly 1."""
    from bitsandbytes.backends.reference.codebooks import four_bit_decode_table

    table = four_bit_decode_table(quant_type).sort().values
    mids = (table[:-1] + table[1:]) / 2
    edges = torch.arange(33) / 16 - 1
    inf = torch.tensor(float("inf"))
    near = torch.cat([mids, edges, table]).float()
    near = torch.cat([near, torch.nextafter(near, inf), torch.nextafter(near, -inf)])
    g = torch.Generator().manual_seed(11)
    sign = torch.where(torch.rand(1 << 14, generator=g) < 0.5, -1.0, 1.0)
    spread = sign * torch.exp2(-torch.rand(1 << 14, generator=g) * 140)
    x = torch.cat([near, spread, torch.tensor([0.0, -0.0, float("nan")])]).clamp(-1, 1)
    blocksize = 64
    x = torch.cat([x, torch.zeros(-x.numel() % (blocksize - 1))]).view(-1, blocksize - 1)
    x = torch.cat([torch.ones(x.shape[0], 1), x], dim=1).flatten().to(dtype)  # absmax 1 in each block
    fn = lambda: torch.ops.bitsandbytes.quantize_4bit(x, blocksize, quant_type, torch.uint8)  # noqa: E731
    want, got = _on("scalar", fn), _on(isa, fn)
    assert torch.equal(want[1], got[1])
    bad = (want[0] != got[0]).nonzero().flatten()
    assert bad.numel() == 0, f"{bad.numel()} packed bytes differ, first at byte {bad[0].item()}"


def _payload_nan(dtype: torch.dtype) -> torch.Tensor:
    """A quiet NaN whose payload reaches the f16 mantissa (f32 0x7fc02000; as f16 0x7e01)."""
    return torch.tensor([0x7FC02000], dtype=torch.int32).view(torch.float32).to(dtype)


@pytest.mark.skipif(not VECTOR_ISAS, reason="only the scalar kernels are usable on this CPU")
@pytest.mark.parametrize("isa", VECTOR_ISAS)
@pytest.mark.parametrize("blocksize", [64, 256])
def test_f16_dequantize_of_a_nan_absmax_with_payload_matches_scalar(isa, blocksize) -> None:
    """A block whose absmax is a NaN carrying payload bits (kept as loaded from a NaN of the
    input's last values): every f16 output of the block is the scalar kernel's NaN, bit for bit,
    whichever instruction set writes it, for the 4-bit and the 8-bit dequantization (F16C's
    conversion alone would keep the payload: 0x7e01)."""
    n = 4 * blocksize
    g = torch.Generator().manual_seed(3)
    absmax = torch.rand(4, generator=g)
    absmax[1] = _payload_nan(torch.float32)
    packed = torch.randint(0, 256, (n // 2,), generator=g, dtype=torch.uint8)
    codes = torch.randint(0, 256, (n,), generator=g, dtype=torch.uint8)
    code = F.create_dynamic_map(signed=True)
    deq4 = lambda: (torch.ops.bitsandbytes.dequantize_4bit(packed, absmax, blocksize, "nf4", (n,), torch.float16),)  # noqa: E731
    deq8 = lambda: (torch.ops.bitsandbytes.dequantize_blockwise(codes, absmax, code, blocksize, torch.float16),)  # noqa: E731
    for fn in (deq4, deq8):
        want, got = _on("scalar", fn)[0].view(torch.int16), _on(isa, fn)[0].view(torch.int16)
        assert bool(want[blocksize : 2 * blocksize].view(torch.float16).isnan().all())
        assert torch.equal(want, got)


@pytest.mark.skipif(not VECTOR_ISAS, reason="only the scalar kernels are usable on this CPU")
@pytest.mark.parametrize("isa", VECTOR_ISAS)
@pytest.mark.parametrize("blocksize", [64, 256])
def test_subnormal_blocks_among_many_whole_blocks_match_scalar(isa, blocksize) -> None:
    """Blocks of subnormals inside runs of 8 and 16 whole blocks (which the vector quantizers
    reduce together): their scale is 1 / 1e-38 as in the scalar kernel, not 1 / absmax (inf)."""
    n = 40 * blocksize + 7
    x = torch.randn(n, generator=torch.Generator().manual_seed(5))
    for b in (1, 2, 17, 30):
        x[b * blocksize : (b + 1) * blocksize] *= 2.0**-135
    assert 0 < x[blocksize : 2 * blocksize].abs().max() < torch.finfo(torch.float32).tiny
    code = F.create_dynamic_map(signed=True)
    for dtype in (torch.float32, torch.bfloat16):
        xd = x.to(dtype)
        for fn in (
            lambda xd=xd: torch.ops.bitsandbytes.quantize_4bit(xd, blocksize, "nf4", torch.uint8),
            lambda xd=xd: torch.ops.bitsandbytes.quantize_4bit(xd, blocksize, "fp4", torch.uint8),
            lambda xd=xd: torch.ops.bitsandbytes.quantize_blockwise(xd, code, blocksize),
        ):
            want, got = _on("scalar", fn), _on(isa, fn)
            assert torch.equal(want[0], got[0]) and torch.equal(want[1], got[1])
