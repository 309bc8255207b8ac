"""Very large tensors on the CPU kernels: element counts, byte offsets and row x column products at
or past 2^31 and 2^32, and block sizes near INT64_MAX.

Every index in the CPU library is 64-bit; these tests pin that down where a real model meets it (a
256k x 8192 embedding is 2^31 elements; a 4-bit weight of 2^32 elements is 2^31 packed bytes).
Results are compared with the pure-PyTorch reference kernels on slices (the first blocks, those
around 2^31 and 2^32 and the last ones) whose values are fresh random numbers, while the rest of
the tensor repeats one chunk: an offset that wrapped at 32 bits would read different data there.

The tests that need gigabytes are marked ``slow`` (``nox -s tests-slow``) and skip themselves
where the machine has too little free memory; the block-size tests run everywhere in milliseconds.
"""

from __future__ import annotations

import gc
import os

import pytest
import torch

import bitsandbytes.functional as F
from bitsandbytes.backends.reference import KERNELS as REF

bitsandbytes_cpu = pytest.importorskip("bitsandbytes_cpu")
_C = bitsandbytes_cpu._C

OPS = torch.ops.bitsandbytes
ISAS = bitsandbytes_cpu.build_info().get("isa_usable", ["scalar"])
INT64_MAX = 2**63 - 1
DTYPE_CODE = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}


@pytest.fixture
def isa(request):
    bitsandbytes_cpu.set_isa(request.param)
    yield request.param
    bitsandbytes_cpu.set_isa("auto")


# ---- block sizes near INT64_MAX (8-bit block-wise takes any blocksize > 0) ----------------------

# Each is one block for a small tensor. From INT64_MAX - n + 2 on, n + blocksize - 1 (a ceiling
# division's usual form) wraps to a negative block count, and the kernels used to write nothing.
HUGE_BLOCKSIZES = [2**31, 2**32 + 64, 2**62, INT64_MAX - 5000, INT64_MAX - 1000 + 2, INT64_MAX - 1, INT64_MAX]


@pytest.mark.parametrize("isa", ISAS, indirect=True)
@pytest.mark.parametrize("blocksize", HUGE_BLOCKSIZES)
def test_native_blockwise_huge_blocksize_writes_every_output(isa, blocksize) -> None:
    """The C ABI itself (through the pybind layer) on sentinel-filled buffers: one block, every
    code and the absmax written, equal to the reference."""
    n = 1000
    A = torch.randn(n, generator=torch.Generator().manual_seed(0))
    code = F.create_dynamic_map().float()
    out = torch.full((n,), 7, dtype=torch.uint8)
    absmax = torch.full((1,), -1.0)
    _C.quantize_blockwise(A.data_ptr(), 0, code.data_ptr(), n, blocksize, out.data_ptr(), absmax.data_ptr(), 1)
    ref_q, ref_absmax = REF["quantize_blockwise"](A, code, blocksize)
    assert torch.equal(absmax, ref_absmax)
    assert torch.equal(out, ref_q)
    deq = torch.full((n,), float("nan"))
    _C.dequantize_blockwise(out.data_ptr(), code.data_ptr(), absmax.data_ptr(), n, blocksize, deq.data_ptr(), 0, 1)
    assert torch.equal(deq, REF["dequantize_blockwise"](ref_q, ref_absmax, code, blocksize, torch.float32))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("blocksize", [INT64_MAX, INT64_MAX - 10])
def test_op_blockwise_huge_blocksize(dtype, blocksize) -> None:
    """The ops: quantize, then dequantize into a NaN-filled ``out`` (which must be overwritten)."""
    A = torch.randn(3, 333, generator=torch.Generator().manual_seed(1)).to(dtype)
    code = F.create_dynamic_map().float()
    q, absmax = OPS.quantize_blockwise(A, code, blocksize)
    ref_q, ref_absmax = REF["quantize_blockwise"](A, code, blocksize)
    assert absmax.shape == (1,)
    assert torch.equal(absmax, ref_absmax)
    assert torch.equal(q, ref_q)
    out = torch.full(A.shape, float("nan"), dtype=dtype)
    OPS.dequantize_blockwise.out(q, absmax, code, blocksize, dtype, out=out)
    assert torch.equal(out, REF["dequantize_blockwise"](ref_q, ref_absmax, code, blocksize, dtype))


def test_functional_blockwise_huge_blocksize_round_trip() -> None:
    A = torch.randn(4096, generator=torch.Generator().manual_seed(2))
    q, state = F.quantize_blockwise(A, blocksize=INT64_MAX)
    assert state.absmax.numel() == 1
    assert torch.allclose(F.dequantize_blockwise(q, state), A, atol=0.03 * float(A.abs().max()))


@pytest.mark.parametrize("isa", ISAS, indirect=True)
def test_native_weight_matmul_t_huge_blocksize(isa) -> None:
    """The transposed 4-bit matmul of the C ABI (any blocksize > 0): one block spanning the weight."""
    n, k, m = 40, 96, 3
    g = torch.Generator().manual_seed(3)
    B = torch.randint(0, 256, (n * k // 2,), dtype=torch.uint8, generator=g)
    absmax = torch.tensor([1.7])
    A = torch.randn(m, n, generator=g)
    nibbles = torch.stack([B >> 4, B & 15], 1).view(-1).long()  # element 2i: the high nibble of byte i
    W = F.get_4bit_type("nf4", device="cpu")[nibbles].view(n, k) * 1.7
    out = torch.full((m, k), float("nan"))
    _C.weight_matmul_t(A.data_ptr(), 0, m, n, k, 0, 0, B.data_ptr(), absmax.data_ptr(), 1, INT64_MAX, out.data_ptr(), 1)
    torch.testing.assert_close(out, A @ W, rtol=1e-5, atol=1e-4)


# ---- gigabyte tensors (slow) ---------------------------------------------------------------------


def _available_gb() -> float:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return float(os.environ.get("BNB_TEST_AVAILABLE_GB", "0"))


def _need_gb(gb: float) -> None:
    if _available_gb() < gb + 1.0:
        pytest.skip(f"needs about {gb} GB of free memory")


def _patterned(n: int, dtype: torch.dtype, special: list[tuple[int, int]], seed: int = 0) -> torch.Tensor:
    """n values: one random chunk of 1,000,003 repeated, with fresh random values (3x larger) in
    each range of ``special``."""
    g = torch.Generator().manual_seed(seed)
    chunk = torch.randn(1_000_003, generator=g).to(dtype)
    out = torch.empty(n, dtype=dtype)
    full = n // chunk.numel()
    if full:
        out[: full * chunk.numel()].view(full, -1).copy_(chunk)
    out[full * chunk.numel() :] = chunk[: n - full * chunk.numel()]
    for a, b in special:
        out[a:b] = (torch.randn(b - a, generator=g) * 3).to(dtype)
    return out


def _random_bytes(n: int, special: list[tuple[int, int]], seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    chunk = torch.randint(0, 256, (1_000_003,), dtype=torch.uint8, generator=g)
    out = torch.empty(n, dtype=torch.uint8)
    full = n // chunk.numel()
    if full:
        out[: full * chunk.numel()].view(full, -1).copy_(chunk)
    out[full * chunk.numel() :] = chunk[: n - full * chunk.numel()]
    for a, b in special:
        out[a:b] = torch.randint(0, 256, (b - a,), dtype=torch.uint8, generator=g)
    return out


def _regions(n: int, unit: int, count: int = 3) -> list[tuple[int, int]]:
    """Unit-aligned [a, b) ranges: the first units, those around 2^31 and 2^32, the last ones."""
    out = [(0, min(n, count * unit))]
    for mark in (2**31, 2**32):
        if mark < n:
            s = max((mark // unit - count) * unit, 0)
            out.append((s, min(n, s + 2 * count * unit)))
    out.append((max(((n - 1) // unit - count + 1) * unit, 0), n))
    return out


@pytest.fixture
def collect():
    yield
    gc.collect()


@pytest.mark.slow
@pytest.mark.parametrize("blocksize", [256, 4096])
def test_blockwise_8bit_past_2_31_elements(collect, blocksize) -> None:
    n = 2**31 + 3 * blocksize + 37
    _need_gb(7)
    code = F.create_dynamic_map().float()
    regions = _regions(n, blocksize)
    A = _patterned(n, torch.bfloat16, regions)
    q, absmax = OPS.quantize_blockwise(A, code, blocksize)
    for a, b in regions:
        ref_q, ref_absmax = REF["quantize_blockwise"](A[a:b], code, blocksize)
        assert torch.equal(q[a:b], ref_q), (a, b)
        assert torch.equal(absmax[a // blocksize : a // blocksize + ref_absmax.numel()], ref_absmax), (a, b)
    del A
    gc.collect()
    out = OPS.dequantize_blockwise(q, absmax, code, blocksize, torch.bfloat16)
    for a, b in regions:
        ref = REF["dequantize_blockwise"](
            q[a:b], absmax[a // blocksize : -(-b // blocksize)], code, blocksize, torch.bfloat16
        )
        assert torch.equal(out[a:b], ref), (a, b)


@pytest.mark.slow
@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
def test_4bit_past_2_31_elements(collect, quant_type) -> None:
    blocksize = 64
    n = 2**31 + 3 * blocksize + 33  # odd: the last byte holds one element
    _need_gb(7)
    regions = _regions(n, blocksize)
    A = _patterned(n, torch.bfloat16, regions, seed=1)
    packed, absmax = OPS.quantize_4bit(A, blocksize, quant_type, torch.uint8)
    packed = packed.view(-1)
    for a, b in regions:
        ref_p, ref_absmax = REF["quantize_4bit"](A[a:b], blocksize, quant_type, torch.uint8)
        ref_p = ref_p.view(-1)
        assert torch.equal(packed[a // 2 : a // 2 + ref_p.numel()], ref_p), (a, b)
        assert torch.equal(absmax[a // blocksize : a // blocksize + ref_absmax.numel()], ref_absmax), (a, b)
    del A
    gc.collect()
    out = OPS.dequantize_4bit(packed, absmax, blocksize, quant_type, [n], torch.bfloat16)
    for a, b in regions:
        ref = REF["dequantize_4bit"](
            packed[a // 2 : (b + 1) // 2],
            absmax[a // blocksize : -(-b // blocksize)],
            blocksize,
            quant_type,
            [b - a],
            torch.bfloat16,
        )
        assert torch.equal(out[a:b], ref), (a, b)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("dtype", "rows"),
    [(torch.bfloat16, 1), (torch.bfloat16, 3), (torch.float32, 1), (torch.float16, 2), (torch.bfloat16, 40)],
)
def test_gemm_4bit_weight_past_2_31_bytes(collect, dtype, rows) -> None:
    """A weight of 2^20 + 16 rows of 4096 (2^32 + 2^16 elements, 2^31 + 2^15 packed bytes)."""
    k, n, blocksize = 4096, 2**20 + 16, 64
    _need_gb(3)
    rowsets = [(0, 4), (2**31 // k - 3, 2**31 // k + 3), (2**32 // k - 3, 2**32 // k + 3), (n - 5, n)]
    B = _random_bytes(n * k // 2, [(a * k // 2, b * k // 2) for a, b in rowsets], seed=2)
    g = torch.Generator().manual_seed(3)
    absmax = torch.rand(n * k // blocksize, generator=g) + 0.5
    for a, b in rowsets:
        absmax[a * k // blocksize : b * k // blocksize] = torch.rand((b - a) * k // blocksize, generator=g) * 4 + 2
    A = torch.randn(rows, k, generator=g).to(dtype)
    if rows == 1:
        out = OPS.gemv_4bit(A, B.view(-1, 1), [n, k], absmax, F.get_4bit_type("nf4", device="cpu"), blocksize)
    else:
        out = OPS.gemm_4bit(A, B.view(-1, 1), [n, k], absmax, blocksize, "nf4")
    for a, b in rowsets:
        W = REF["dequantize_4bit"](
            B[a * k // 2 : b * k // 2].view(-1, 1),
            absmax[a * k // blocksize : b * k // blocksize],
            blocksize,
            "nf4",
            [b - a, k],
            dtype,
        )
        ref = A.float() @ W.float().T
        torch.testing.assert_close(out[:, a:b].float(), ref, rtol=0.02, atol=0.02 * float(ref.abs().mean()))


@pytest.mark.slow
@pytest.mark.parametrize(("cols", "threshold"), [(8192, 0.0), (4000, 3.5)])
def test_int8_vectorwise_quant_past_2_31_elements(collect, cols, threshold) -> None:
    rows = 2**31 // cols + 5
    _need_gb(7)
    rowsets = [(0, 3), (2**31 // cols - 2, 2**31 // cols + 2), (rows - 3, rows)]
    A = _patterned(rows * cols, torch.bfloat16, [(a * cols, b * cols) for a, b in rowsets], seed=4).view(rows, cols)
    q, stats, outliers = OPS.int8_vectorwise_quant(A, threshold)
    for a, b in rowsets:
        ref_q, ref_stats, _ = REF["int8_vectorwise_quant"](A[a:b], threshold)
        if threshold > 0:  # outlier columns are those of the whole matrix
            ref_q[:, outliers] = 0
        assert torch.equal(q[a:b], ref_q), (a, b)
        assert torch.equal(stats[a:b], ref_stats), (a, b)


@pytest.mark.slow
def test_int8_linear_matmul_weight_past_2_31_bytes(collect) -> None:
    m, n, k = 9, 2**25 + 40, 64
    _need_gb(5)
    g = torch.Generator().manual_seed(5)
    A = torch.randint(-127, 128, (m, k), dtype=torch.int8, generator=g)
    colsets = [(0, 3), (2**31 // k - 2, 2**31 // k + 2), (n - 3, n)]
    B = _random_bytes(n * k, [(a * k, b * k) for a, b in colsets], seed=6).view(torch.int8).view(n, k)
    C = OPS.int8_linear_matmul(A, B)
    row_stats = torch.rand(m, generator=g) + 1
    col_stats = torch.rand(n, generator=g) + 1
    out = OPS.int8_mm_dequant(C, row_stats, col_stats, torch.bfloat16, None)
    for a, b in colsets:
        ref = REF["int8_linear_matmul"](A, B[a:b])
        assert torch.equal(C[:, a:b], ref), (a, b)
        assert torch.equal(out[:, a:b], REF["int8_mm_dequant"](ref, row_stats, col_stats[a:b], torch.bfloat16, None))


@pytest.mark.slow
def test_optimizer_8bit_adam_past_2_31_elements(collect) -> None:
    """An 8-bit Adam step of a parameter of 2^31 + 845 bf16 elements (13 GB with its states)."""
    n, bs = 2**31 + 3 * 256 + 77, 256
    _need_gb(14)
    regions = _regions(n, bs)
    p = _patterned(n, torch.bfloat16, regions, seed=7)
    g = _patterned(n, torch.bfloat16, regions, seed=8)
    s1 = _random_bytes(n, [], seed=9)
    s2 = _random_bytes(n, [], seed=10)
    blocks = -(-n // bs)
    gen = torch.Generator().manual_seed(11)
    a1 = torch.rand(blocks, generator=gen) * 0.1
    a2 = torch.rand(blocks, generator=gen) * 0.01
    q1 = F.create_dynamic_map(signed=True).float()
    q2 = F.create_dynamic_map(signed=False).float()
    hp = (0.9, 0.999, 0.0, 0.0, 1e-8, 1, 1e-3, q1, q2)
    saved = [
        (a, b, g[a:b].clone(), p[a:b].clone(), s1[a:b].clone(), s2[a:b].clone(), a1[a // bs : -(-b // bs)].clone(),
         a2[a // bs : -(-b // bs)].clone())
        for a, b in regions
    ]  # fmt: skip
    OPS.optimizer_update_8bit_blockwise("adam", g, p, s1, s2, *hp, a1, a2, 0.01, 1.0, False)
    for a, b, gg, pp, ss1, ss2, aa1, aa2 in saved:
        REF["optimizer_update_8bit_blockwise"]("adam", gg, pp, ss1, ss2, *hp, aa1, aa2, 0.01, 1.0, False)
        assert torch.equal(p[a:b], pp), (a, b)
        assert torch.equal(s1[a:b], ss1) and torch.equal(s2[a:b], ss2), (a, b)
        assert torch.equal(a1[a // bs : -(-b // bs)], aa1) and torch.equal(a2[a // bs : -(-b // bs)], aa2), (a, b)
