"""Spec sections 2 (numeric formats), 4 (op interface) and 12 (quirks), statement by statement.

Expected values come from the spec text (tables, formulas, tie rules, schema strings) or from
the established release's reference data in tests/data, never from this implementation. Each
check runs through the public API or ``torch.ops.bitsandbytes``, so it covers whichever kernels
serve the CPU: the CPU wheel by default, the reference kernels with ``BNB_PLATFORMS=none``.
What the other conformance files already check (fixtures, reference agreement, opcheck, bad
input) is not repeated here.
"""

from __future__ import annotations

import hashlib

import pytest
import torch

import bitsandbytes.functional as F
from conftest import load_fixture

ops = torch.ops.bitsandbytes
f32 = torch.float32

# §4: the exact schema strings.
SPEC_SCHEMAS = """
bitsandbytes::int8_mixed_scaled_mm(Tensor A, Tensor CA, Tensor CB, Tensor SCA, Tensor SCB, Tensor? outlier_cols=None, Tensor? bias=None) -> (Tensor, Tensor?)
bitsandbytes::int8_scaled_mm(Tensor A, Tensor B, Tensor row_stats, Tensor col_stats, Tensor? bias=None, ScalarType? dtype=None) -> Tensor
bitsandbytes::int8_linear_matmul(Tensor A, Tensor B) -> Tensor
bitsandbytes::int8_linear_matmul.out(Tensor A, Tensor B, Tensor! out) -> ()
bitsandbytes::int8_vectorwise_quant(Tensor A, float threshold=0.0) -> (Tensor, Tensor, Tensor?)
bitsandbytes::int8_vectorwise_dequant(Tensor A, Tensor stats) -> Tensor
bitsandbytes::int8_mm_dequant(Tensor A, Tensor row_stats, Tensor col_stats, ScalarType? dtype=None, Tensor? bias=None) -> Tensor
bitsandbytes::int8_double_quant(Tensor A, float threshold=0.0) -> (Tensor, Tensor, Tensor, Tensor, Tensor?)
bitsandbytes::dequantize_4bit(Tensor A, Tensor absmax, int blocksize, str quant_type, int[] shape, ScalarType dtype) -> Tensor
bitsandbytes::dequantize_4bit.out(Tensor A, Tensor absmax, int blocksize, str quant_type, int[] shape, ScalarType dtype, Tensor! out) -> ()
bitsandbytes::quantize_4bit(Tensor A, int blocksize, str quant_type, ScalarType quant_storage) -> (Tensor, Tensor)
bitsandbytes::gemm_4bit(Tensor A, Tensor B, int[] shapeB, Tensor absmax, int blocksize, str quant_type, Tensor? bias=None, Tensor? absmax_8bit=None, Tensor? absmax_code=None, Tensor? absmax_offset=None) -> Tensor
bitsandbytes::dequantize_blockwise(Tensor A, Tensor absmax, Tensor code, int blocksize, ScalarType dtype) -> Tensor
bitsandbytes::dequantize_blockwise.out(Tensor A, Tensor absmax, Tensor code, int blocksize, ScalarType dtype, Tensor! out) -> ()
bitsandbytes::quantize_blockwise(Tensor A, Tensor code, int blocksize) -> (Tensor, Tensor)
bitsandbytes::gemv_4bit(Tensor A, Tensor B, int[] shapeB, Tensor absmax, Tensor code, int blocksize) -> Tensor
bitsandbytes::gemv_4bit.out(Tensor A, Tensor B, int[] shapeB, Tensor absmax, Tensor code, int blocksize, Tensor! out) -> ()
bitsandbytes::optimizer_update_32bit(str optimizer_name, Tensor(a0!) g, Tensor(a1!) p, Tensor(a2!) state1, Tensor(a3!)? state2, Tensor(a4!)? unorm_vec, float max_unorm, float param_norm, float beta1, float beta2, float beta3, float alpha, float eps, float weight_decay, int step, float lr, float gnorm_scale, bool skip_zeros=False) -> ()
bitsandbytes::optimizer_update_8bit_blockwise(str optimizer_name, Tensor(a0!) g, Tensor(a1!) p, Tensor(a2!) state1, Tensor(a3!)? state2, float beta1, float beta2, float beta3, float alpha, float eps, int step, float lr, Tensor(a4!) qmap1, Tensor(a5!)? qmap2, Tensor(a6!) absmax1, Tensor(a7!)? absmax2, float weight_decay, float gnorm_scale, bool skip_zeros=False) -> ()
""".strip().splitlines()

# §2.1, §2.2, §2.3: the tables as printed in the spec.
NF4_SPEC = [
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
    -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
    0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
    0.7229568362236023, 1.0,
]  # fmt: skip
NF4_BOUNDARIES = [
    -0.84809637, -0.61063290, -0.45999527, -0.33967942, -0.23460740, -0.13791174, -0.04552502,
    0.03979015, 0.12025525, 0.20352125, 0.29201376, 0.38931254, 0.50166345, 0.64278692, 0.86147845,
]  # fmt: skip
FP4_RAW = {0b000: 0.0, 0b001: 0.0625, 0b010: 8.0, 0b011: 12.0, 0b100: 4.0, 0b101: 6.0, 0b110: 2.0, 0b111: 3.0}
FP4_BOUNDARIES = [0.8333334, 0.5833334, 0.4166667, 0.2916667, 0.2083333, 0.0859375, 0.0026041667]
AF4_SPEC = [
    1.0, 0.72424863, 0.55496234, 0.42563882, 0.31675666, 0.21961274, 0.12934483, 0.04273164, 0.0,
    -0.04934812, -0.14982478, -0.25607552, -0.3736951, -0.51243739, -0.69441008, -1.0,
]  # fmt: skip
DYNAMIC_SHA256 = "e732639a65f497b4ad684bb166a4467708255edd5207757de8b8f0c7e1fda89c"


def fp4_from_bit_layout() -> list[float]:
    """§2.2: sign bit 3, magnitude from the exponent/mantissa formula, normalised by 12."""
    out = []
    for code in range(16):
        e, m = (code >> 1) & 3, code & 1
        mag = m * 0.0625 if e == 0 else (1 + m / 2) * 2.0 ** (4 - e)
        assert mag == FP4_RAW[code & 7]  # the formula and the raw table of the spec agree
        out.append(-mag / 12 if code & 8 else mag / 12)
    return out


def unpack(packed: torch.Tensor) -> list[int]:
    """§2.7: element 2i in the high nibble of byte i, 2i+1 in the low nibble."""
    b = packed.view(torch.uint8).reshape(-1).long()
    return torch.stack([b >> 4, b & 15], 1).reshape(-1).tolist()


def q4(x: torch.Tensor, quant_type: str, blocksize: int = 64) -> list[int]:
    packed, _ = ops.quantize_4bit(x, blocksize, quant_type, torch.uint8)
    return unpack(packed)[: x.numel()]


def sorted_with_codes(table: list[float]) -> tuple[torch.Tensor, list[int]]:
    """The table sorted by value (stable, so FP4's code 0 precedes code 8) and its codes."""
    t = torch.tensor(table, dtype=f32)
    values, order = torch.sort(t, stable=True)
    return values, order.tolist()


# ---------------------------------------------------------------------------------------------
# §4 schemas


@pytest.mark.parametrize("text", SPEC_SCHEMAS, ids=[s.split("(")[0].split("::")[1] for s in SPEC_SCHEMAS])
def test_op_schema_is_the_spec_string(text):
    name = text.split("(")[0].split("::")[1]
    packet, _, overload = name.partition(".")
    schema = getattr(getattr(ops, packet), overload or "default")._schema
    # FunctionSchema equality compares names, types, defaults and alias/mutation annotations.
    assert schema == torch._C.parse_schema(text), f"{schema} != {text}"
    written = [a.name for a in schema.arguments if a.alias_info is not None and a.alias_info.is_write]
    expected = [p.split()[-1] for p in text.split("(", 1)[1].split(") ->")[0].split(", ") if "!" in p]
    assert written == expected


# ---------------------------------------------------------------------------------------------
# §2.1-2.3 code tables


def test_nf4_table_and_its_boundaries():
    nf4 = F.get_4bit_type("nf4")
    assert nf4.dtype == f32 and nf4.device.type == "cpu"  # device=None → CPU (README deviation)
    assert torch.equal(nf4, torch.tensor(NF4_SPEC, dtype=f32))
    t = torch.tensor(NF4_SPEC, dtype=f32)
    mids = (t[:-1] + t[1:]) / 2
    torch.testing.assert_close(mids, torch.tensor(NF4_BOUNDARIES, dtype=f32), rtol=0, atol=1e-8)


def test_fp4_table_is_the_bit_layout_in_index_order():
    fp4 = F.get_4bit_type("fp4")
    assert torch.equal(fp4, torch.tensor(fp4_from_bit_layout(), dtype=f32))
    # Index 8: the established release's table holds +0.0 there (tests/data), not the -0.0 the
    # spec prints; the dequantization kernels decode code 8 to -0.0 (see below).
    ref = load_fixture("codebooks.safetensors")["fp4"]
    assert torch.equal(fp4.view(torch.int32), ref.view(torch.int32))
    values, _ = sorted_with_codes(fp4_from_bit_layout())
    mids = ((values[:-1] + values[1:]) / 2).tolist()
    expected = sorted([-b for b in FP4_BOUNDARIES] + [0.0] + FP4_BOUNDARIES)
    assert mids == pytest.approx(expected, abs=1e-7)


def test_fp8_constructor_does_not_give_the_fp4_table():
    vals = F.create_fp8_map(True, 2, 1, 4).unique()
    assert vals.numel() == 15 and torch.isclose(vals[8], torch.tensor(0.0208333)).item()
    assert not torch.isclose(vals, torch.tensor(0.0625 / 12)).any()


def test_get_4bit_type_af4_int4_and_unknown_names():
    assert torch.equal(F.get_4bit_type("af4", "cpu"), torch.tensor(AF4_SPEC, dtype=f32))
    with pytest.raises(NotImplementedError):
        F.get_4bit_type("af4", blocksize=128)
    with pytest.raises(RuntimeError):  # §12; NotImplementedError here, a RuntimeError subclass
        F.get_4bit_type("int4")
    with pytest.raises(NotImplementedError, match="^Typename nf3 not supported$"):
        F.get_4bit_type("nf3")
    assert F.get_4bit_type("nf4", device="meta").device.type == "meta"


# ---------------------------------------------------------------------------------------------
# §2.4, §2.5 constructors (the 73 fixture argument sets live in test_compat_codebooks.py)


def test_default_code_of_quantize_blockwise_is_the_dynamic_map():
    _, state = F.quantize_blockwise(torch.randn(100))
    digest = hashlib.sha256(state.code.numpy().astype("<f4").tobytes()).hexdigest()
    assert digest == DYNAMIC_SHA256 and state.blocksize == 4096
    assert torch.equal(F.name2qmap["dynamic"], state.code)


def test_constructor_argument_errors():
    # "asserts exponent_bits + precision_bits == total_bits - signed": upstream's AssertionError,
    # here also a ValueError naming the widths.
    for err in (AssertionError, ValueError):
        with pytest.raises(err, match="exponent_bits"):
            F.create_fp8_map(True, 4, 2, 8)
    # "assert length == 2**total_bits": more exponent bits than the code can hold.
    for err in (AssertionError, ValueError):
        with pytest.raises(err):
            F.create_dynamic_map(False, 8, 4)


def test_create_normal_map_needs_scipy():
    try:
        import scipy  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError):
            F.create_normal_map()
    else:
        assert torch.equal(F.create_normal_map().unique(), torch.tensor(NF4_SPEC, dtype=f32))


# ---------------------------------------------------------------------------------------------
# §2.6 / §2.7 nearest code, ties and the scaling rule


@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
def test_4bit_every_midpoint_takes_the_lower_code(quant_type):
    table = NF4_SPEC if quant_type == "nf4" else fp4_from_bit_layout()
    values, codes = sorted_with_codes(table)
    mids = (values[:-1] + values[1:]) / 2
    above = torch.nextafter(mids, torch.full_like(mids, 2.0))
    below = torch.nextafter(mids, torch.full_like(mids, -2.0))
    # Block absmax 1.0 (first element), so each value is its own normalised value.
    for probe, offset in ((mids, 0), (above, 1), (below, 0)):
        x = torch.cat([torch.ones(1), probe])
        assert q4(x, quant_type)[1:] == [codes[i + offset] for i in range(len(mids))]


def _straddle(mids: torch.Tensor, absmaxes: list[float]) -> tuple[float, float, int]:
    """(absmax a, value x, midpoint index i) with x * (1/a) <= mids[i] < x / a or the reverse."""
    for a in absmaxes:
        a32 = torch.tensor(a, dtype=f32)
        inv = 1.0 / a32
        for i, m in enumerate(mids):
            for k in range(-8, 9):
                x = (m * a32 + k * torch.finfo(f32).eps * (m * a32).abs()).to(f32)
                p, q = x * inv, x / a32
                if p.abs() < 1 and q.abs() < 1 and bool(p <= m) != bool(q <= m):
                    return a, x.item(), i
    raise AssertionError("no straddling value found")


@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
def test_4bit_normalises_with_the_reciprocal_of_absmax(quant_type):
    # §2.6: "x / absmax[j] (implemented as x * (1/absmax[j]))": the two differ in the last bit,
    # which decides the code next to a midpoint.
    table = NF4_SPEC if quant_type == "nf4" else fp4_from_bit_layout()
    values, codes = sorted_with_codes(table)
    mids = (values[:-1] + values[1:]) / 2
    a, x, i = _straddle(mids, [3.0, 0.7, 1.3, 5.1, 9.7, 11.0, 13.0, 0.3])
    lower = bool(torch.tensor(x, dtype=f32) * (1.0 / torch.tensor(a, dtype=f32)) <= mids[i])
    assert q4(torch.tensor([a, x]), quant_type)[1] == codes[i if lower else i + 1]


def test_blockwise_8bit_ties_and_reciprocal_rule():
    code = F.create_dynamic_map()
    mids = (code[:-1] + code[1:]) / 2
    # Exact nearest on every path (the established CPU grid lookup is a README deviation):
    # a value on a midpoint takes the lower index, the next float up the upper one.
    for probe, offset in ((mids, 0), (torch.nextafter(mids, torch.full_like(mids, 2.0)), 1)):
        q, _ = ops.quantize_blockwise(torch.cat([torch.ones(1), probe]), code, 256)
        assert q[1:].tolist() == [i + offset for i in range(255)]
    a, x, i = _straddle(mids[128:], [3.0, 0.7, 1.3, 5.1, 9.7])
    lower = bool(torch.tensor(x, dtype=f32) * (1.0 / torch.tensor(a, dtype=f32)) <= mids[128 + i])
    q, absmax = ops.quantize_blockwise(torch.tensor([a, x]), code, 64)
    assert q[1].item() == 128 + i + (0 if lower else 1) and absmax.tolist() == [a]


@pytest.mark.parametrize("blocksize", [1, 7, 4096])
def test_blockwise_8bit_any_positive_blocksize(blocksize):
    x = torch.randn(3, 1001, generator=torch.Generator().manual_seed(0))
    q, state = F.quantize_blockwise(x, blocksize=blocksize)
    assert q.shape == x.shape and q.dtype == torch.uint8
    expected = x.reshape(-1)
    expected = torch.nn.functional.pad(expected, (0, -expected.numel() % blocksize))
    assert torch.equal(state.absmax, expected.view(-1, blocksize).abs().amax(1))
    assert torch.equal(
        F.dequantize_blockwise(q, state),
        state.code[q.long()] * state.absmax.repeat_interleave(blocksize)[: x.numel()].view_as(x),
    )


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_absmax_is_f32_of_the_upcast_input(dtype):
    x = (torch.randn(300, generator=torch.Generator().manual_seed(1)) * 100).to(dtype)
    _, absmax = ops.quantize_4bit(x, 64, "nf4", torch.uint8)
    expected = torch.nn.functional.pad(x.float(), (0, 20)).view(5, 64).abs().amax(1)
    assert absmax.dtype == f32 and torch.equal(absmax, expected)


def test_all_zero_blocks_dequantize_to_zero():
    for quant_type in ("nf4", "fp4"):
        packed, absmax = ops.quantize_4bit(torch.zeros(130), 64, quant_type, torch.uint8)
        assert absmax.tolist() == [0.0, 0.0, 0.0]
        y = ops.dequantize_4bit(packed, absmax, 64, quant_type, [130], f32)
        assert y.abs().sum().item() == 0.0
    q, absmax = ops.quantize_blockwise(torch.zeros(70), F.create_dynamic_map(), 64)
    assert absmax.tolist() == [0.0, 0.0]
    y = ops.dequantize_blockwise(q, absmax, F.create_dynamic_map(), 64, f32)
    assert y.abs().sum().item() == 0.0


# ---------------------------------------------------------------------------------------------
# §2.7 4-bit packing and dequantization


def test_fp4_code_8_decodes_to_negative_zero():
    # "look up the table in index order (§2.2)": index 8 is -0.0; 0x80 = codes (8, 0).
    packed = torch.tensor([[0x80]], dtype=torch.uint8)
    y = ops.dequantize_4bit(packed, torch.ones(1), 64, "fp4", [2], f32)
    assert torch.signbit(y).tolist() == [True, False] and y.tolist() == [0.0, 0.0]


@pytest.mark.parametrize("storage", [torch.int8, torch.float16, torch.bfloat16, torch.float32])
def test_dequantize_4bit_reads_any_storage_as_bytes(storage):
    g = torch.Generator().manual_seed(2)
    packed = torch.randint(0, 256, (64, 1), dtype=torch.uint8, generator=g)
    absmax = torch.rand(2, generator=g) + 0.5
    for quant_type in ("nf4", "fp4"):
        ref = ops.dequantize_4bit(packed, absmax, 64, quant_type, [2, 64], torch.bfloat16)
        table = torch.tensor(NF4_SPEC if quant_type == "nf4" else fp4_from_bit_layout(), dtype=f32)
        codes = torch.tensor(unpack(packed))
        expected = (table[codes] * absmax.repeat_interleave(64)).view(2, 64).to(torch.bfloat16)
        assert torch.equal(ref, expected)
        viewed = packed.view(-1).view(storage).reshape(-1, 1)
        assert torch.equal(ops.dequantize_4bit(viewed, absmax, 64, quant_type, [2, 64], torch.bfloat16), ref)


def test_dequantize_4bit_truncates_to_the_shape():
    packed = torch.full((3, 1), 0xFF, dtype=torch.uint8)  # 6 codes, 5 used
    y = ops.dequantize_4bit(packed, torch.tensor([2.0]), 64, "nf4", [5], f32)
    assert y.tolist() == [2.0] * 5


@pytest.mark.parametrize("blocksize", [32, 64, 4096])
def test_quantize_4bit_default_blocksize_and_odd_lengths(blocksize):
    x = torch.linspace(-1, 1, 2 * blocksize + 1)
    packed, state = F.quantize_4bit(x, blocksize=blocksize, quant_type="nf4")
    assert packed.shape == (blocksize + 1, 1) and state.absmax.shape == (3,)
    assert unpack(packed)[-1] == 7  # the pad nibble is NF4's zero code
    assert F.quantize_4bit(x)[1].blocksize == 64 and F.quantize_4bit(x)[1].quant_type == "fp4"


# ---------------------------------------------------------------------------------------------
# §2.8 double quantization


def test_double_quantization_pipeline():
    x = torch.randn(64, 640, generator=torch.Generator().manual_seed(3)) * 3
    plain_packed, plain = F.quantize_4bit(x, blocksize=64, quant_type="nf4")
    packed, state = F.quantize_4bit(x, blocksize=64, quant_type="nf4", compress_statistics=True)
    assert torch.equal(packed, plain_packed) and state.nested
    offset = plain.absmax.mean()
    assert state.offset.dim() == 0 and state.offset.dtype == f32 and torch.equal(state.offset, offset)
    s2 = state.state2
    assert s2.blocksize == 256 and s2.dtype == f32 and s2.absmax.shape == (3,)  # ceil(640/256)
    assert hashlib.sha256(s2.code.numpy().astype("<f4").tobytes()).hexdigest() == DYNAMIC_SHA256
    centred = torch.nn.functional.pad(plain.absmax - offset, (0, 128)).view(3, 256)
    assert torch.equal(s2.absmax, centred.abs().amax(1))
    assert state.absmax.dtype == torch.uint8 and state.absmax.shape == plain.absmax.shape
    recovered = (s2.code[state.absmax.long()] * s2.absmax.repeat_interleave(256)[:640] + offset).float()
    table = torch.tensor(NF4_SPEC, dtype=f32)
    expected = table[torch.tensor(unpack(packed))] * recovered.repeat_interleave(64)
    assert torch.equal(F.dequantize_4bit(packed, state), expected.view(64, 640))


def test_nested_blockwise_uses_its_own_blocksize():
    x = torch.randn(300 * 128, generator=torch.Generator().manual_seed(4))
    q, state = F.quantize_blockwise(x, blocksize=128, nested=True)
    assert state.nested and state.state2.blocksize == 128 and state.state2.absmax.shape == (3,)
    assert state.absmax.dtype == torch.uint8 and state.absmax.shape == (300,)


@pytest.mark.parametrize("shape", [(0,), (0, 7)])
def test_empty_inputs_through_the_functional_api(shape):
    for nested in (False, True):
        packed, state = F.quantize_4bit(torch.empty(shape), compress_statistics=nested)
        assert packed.shape == (0, 1) and F.dequantize_4bit(packed, state).shape == shape
        q, bstate = F.quantize_blockwise(torch.empty(shape), nested=nested)
        assert q.shape == shape and F.dequantize_blockwise(q, bstate).shape == shape


# ---------------------------------------------------------------------------------------------
# §2.10 LLM.int8() primitives


def test_int8_scale_factor_is_formed_first():
    # round_half_to_even(A * (127 / row_stats)): find an element whose code differs from
    # round(A * 127 / row_stats), so the order of the operations is observable.
    for s in (3.0, 7.0, 11.0, 13.0, 0.3):
        s32 = torch.tensor(s, dtype=f32)
        k = torch.arange(1, 127, dtype=f32) + 0.5
        for step in range(-4, 5):
            a = (k * s32 / 127) * (1 + step * torch.finfo(f32).eps)
            first, last = torch.round(a * (127 / s32)), torch.round(a * 127 / s32)
            hits = (first != last).nonzero()
            if len(hits):
                j = hits[0].item()
                CA, stats, _ = ops.int8_vectorwise_quant(torch.stack([s32, a[j]]).view(1, 2))
                assert stats.tolist() == [s] and CA[0, 1].item() == first[j].item()
                return
    raise AssertionError("no distinguishing element found")


def test_int8_threshold_is_inclusive_and_the_input_is_kept():
    A = torch.tensor([[6.0, 1.0, 2.0], [1.0, 2.0, -5.0]])
    before = A.clone()
    CA, stats, cols = ops.int8_vectorwise_quant(A, 6.0)
    assert torch.equal(A, before) and cols.dtype == torch.int64 and cols.tolist() == [0]
    assert stats.tolist() == [2.0, 5.0]
    assert CA.tolist() == [[0, 64, 127], [0, 51, -127]]  # 127/2=63.5 → 64; 2*25.4 = 50.8 → 51
    # One row: only the outlier elements are zero.
    CA, stats, cols = ops.int8_vectorwise_quant(torch.tensor([[1.0, -8.0, 2.0, 4.0]]), 6.0)
    assert CA.tolist() == [[32, 0, 64, 127]] and stats.tolist() == [4.0] and cols.tolist() == [1]
    # No outlier: an empty int64 tensor; threshold 0: None.
    _, _, cols = ops.int8_vectorwise_quant(torch.ones(2, 3), 6.0)
    assert cols.dtype == torch.int64 and cols.shape == (0,)
    assert ops.int8_vectorwise_quant(torch.ones(2, 3))[2] is None


def test_int8_vectorwise_quant_of_a_3d_input():
    # §12: the established default kernel handled only 2-D; here rows are all leading dims.
    A = torch.randn(2, 3, 8, generator=torch.Generator().manual_seed(5))
    CA, stats, _ = ops.int8_vectorwise_quant(A)
    CA2, stats2, _ = ops.int8_vectorwise_quant(A.view(6, 8))
    assert CA.shape == (2, 3, 8) and stats.shape == (6,)
    assert torch.equal(CA.view(6, 8), CA2) and torch.equal(stats, stats2)


def test_int8_dequant_constant_and_composition():
    g = torch.Generator().manual_seed(6)
    CA = torch.randint(-127, 128, (5, 33), dtype=torch.int8, generator=g)
    stats = torch.rand(5, generator=g) * 10
    y = ops.int8_vectorwise_dequant(CA, stats)
    assert y.dtype == f32 and torch.equal(y, CA * stats.view(-1, 1) * 7.874015718698502e-3)
    B = torch.randint(-127, 128, (7, 33), dtype=torch.int8, generator=g)
    col = torch.rand(7, generator=g) * 10
    bias = torch.randn(7, generator=g)
    for dtype, b in ((None, None), (f32, bias), (torch.bfloat16, None)):
        out = ops.int8_scaled_mm(CA, B, stats, col, b, dtype)
        ref = ops.int8_mm_dequant(ops.int8_linear_matmul(CA, B), stats, col, dtype, b)
        assert out.dtype == (dtype or torch.float16) and torch.equal(out, ref)
    A = torch.randn(5, 33, generator=g)
    A[:, [4, 9]] *= 30
    CA, SCA, cols = ops.int8_vectorwise_quant(A, 6.0)
    _, sub = ops.int8_mixed_scaled_mm(A, CA, B, SCA, col, cols, None)
    assert torch.equal(sub, A[:, cols])


# ---------------------------------------------------------------------------------------------
# §4.1 output contracts of the fake kernels (meta tensors)


def meta(*shape, dtype=f32):
    return torch.empty(*shape, dtype=dtype, device="meta")


def shapes(out):
    out = out if isinstance(out, tuple) else (out,)
    return [None if t is None else (tuple(t.shape), t.dtype) for t in out]


i8, u8, i32, f16, bf16 = torch.int8, torch.uint8, torch.int32, torch.float16, torch.bfloat16
FAKE_CASES = {
    "int8_scaled_mm": (
        lambda: ops.int8_scaled_mm(meta(2, 3, 16, dtype=i8), meta(5, 16, dtype=i8), meta(6), meta(5)),
        [((2, 3, 5), f16)],
    ),
    "int8_linear_matmul": (
        lambda: ops.int8_linear_matmul(meta(2, 3, 16, dtype=i8), meta(5, 16, dtype=i8)),
        [((2, 3, 5), i32)],
    ),
    "int8_vectorwise_quant": (
        lambda: ops.int8_vectorwise_quant(meta(2, 3, 16, dtype=f16)),
        [((2, 3, 16), i8), ((6,), f32), None],
    ),
    "int8_vectorwise_dequant": (
        lambda: ops.int8_vectorwise_dequant(meta(4, 16, dtype=i8), meta(4)),
        [((4, 16), f32)],
    ),
    "int8_mm_dequant": (
        lambda: ops.int8_mm_dequant(meta(2, 3, 5, dtype=i32), meta(6), meta(5)),
        [((2, 3, 5), f16)],
    ),
    "dequantize_4bit": (
        lambda: ops.dequantize_4bit(meta(32, 1, dtype=u8), meta(1), 64, "nf4", [9, 7], bf16),
        [((9, 7), bf16)],
    ),
    "quantize_4bit": (
        lambda: ops.quantize_4bit(meta(9, 7), 32, "fp4", f32),
        [((8, 1), f32), ((2,), f32)],
    ),
    "gemm_4bit": (
        lambda: ops.gemm_4bit(meta(2, 3, 64, dtype=bf16), meta(160, 1, dtype=u8), [5, 64], meta(5), 64, "nf4"),
        [((2, 3, 5), bf16)],
    ),
    "dequantize_blockwise": (
        lambda: ops.dequantize_blockwise(meta(3, 100, dtype=u8), meta(43), meta(256), 7, f16),
        [((3, 100), f16)],
    ),
    "quantize_blockwise": (
        lambda: ops.quantize_blockwise(meta(3, 100, dtype=bf16), meta(256), 7),
        [((3, 100), u8), ((43,), f32)],
    ),
    "gemv_4bit": (
        lambda: ops.gemv_4bit(meta(1, 1, 64, dtype=f16), meta(160, 1, dtype=u8), [5, 64], meta(5), meta(16), 64),
        [((1, 1, 5), f16)],
    ),
}


@pytest.mark.parametrize("name", list(FAKE_CASES))
def test_fake_kernel_output_contract(name):
    call, expected = FAKE_CASES[name]
    assert shapes(call()) == expected


def test_fake_kernels_with_data_dependent_outliers():
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.experimental.symbolic_shapes import ShapeEnv

    with FakeTensorMode(shape_env=ShapeEnv()):
        A = torch.empty(4, 16, dtype=f16)
        CA, stats, cols = ops.int8_vectorwise_quant(A, 6.0)
        assert (CA.shape, CA.dtype, stats.shape, cols.dtype, cols.dim()) == ((4, 16), i8, (4,), torch.int64, 1)
        CA, CAt, rows, colst, cols = ops.int8_double_quant(A, 6.0)
        assert CAt.shape == (4, 16) and CAt.dtype == i8 and rows.shape == (4,) and colst.shape == (16,)
        assert cols.dtype == torch.int64 and cols.dim() == 1
        out, sub = ops.int8_mixed_scaled_mm(A, CA, torch.empty(5, 16, dtype=i8), stats, torch.empty(5), cols)
        assert out.shape == (4, 5) and out.dtype == f16 and sub.shape[0] == 4 and sub.dtype == f16


@pytest.mark.parametrize(
    "call",
    [
        lambda: ops.dequantize_4bit(meta(32, 1, dtype=u8), meta(1), 16, "nf4", [9, 7], bf16),
        lambda: ops.dequantize_4bit(meta(32, 1, dtype=u8), meta(1), 64, "af4", [9, 7], bf16),
        lambda: ops.dequantize_4bit(meta(32, 1, dtype=u8), meta(1, dtype=f16), 64, "nf4", [9, 7], bf16),
        lambda: ops.dequantize_4bit(meta(32, 1, dtype=u8), meta(1), 64, "nf4", [9, 7], torch.float64),
        lambda: ops.quantize_4bit(meta(64), 8192, "nf4", u8),
        lambda: ops.quantize_4bit(meta(64, dtype=torch.float64), 64, "nf4", u8),
        lambda: ops.gemm_4bit(meta(3, 64, dtype=bf16), meta(160, 1, dtype=i8), [5, 64], meta(5), 64, "nf4"),
        lambda: ops.gemm_4bit(meta(3, 64, dtype=bf16), meta(160, 1, dtype=u8), [5, 64], meta(5), 64, "nf4", None, meta(5, dtype=u8), meta(255), meta(())),
        lambda: ops.dequantize_blockwise(meta(3, dtype=i8), meta(1), meta(256), 64, f16),
        lambda: ops.quantize_blockwise(meta(3), meta(256), 0),
        lambda: ops.int8_mm_dequant(meta(2, 5), meta(2), meta(5)),
        lambda: ops.int8_linear_matmul.out(meta(2, 16, dtype=i8), meta(5, 16, dtype=i8), meta(2, 5)),
    ],
)  # fmt: skip
def test_fake_kernel_checks(call):
    with pytest.raises((ValueError, TypeError)):
        call()
