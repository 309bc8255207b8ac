"""Unusual layouts and aliasing: an ``out=`` sharing memory with an input, expanded (stride 0)
outputs and parameters, optimizer states sharing memory, 0-d matmul operands, and strided views
of the nested-absmax inputs. Each gives the result of the same call on fresh contiguous tensors,
or a clear error naming the argument; never a silently wrong result."""

from __future__ import annotations

import pytest
import torch

import bitsandbytes as bnb
import bitsandbytes.functional as F
from bitsandbytes.backends.reference import KERNELS as REF
from bitsandbytes.backends.reference.codebooks import dynamic_map, four_bit_decode_table
from conftest import adam_8bit_args, impl_params, step_8bit

ops = torch.ops.bitsandbytes


def _sharing(n_bytes: int, dtype: torch.dtype, front: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A buffer of ``n_bytes`` viewed as ``dtype`` whose first bytes hold a copy of ``front``
    (viewed as ``front.dtype``, shaped like it): an output and an input sharing memory."""
    buf = torch.zeros(n_bytes, dtype=torch.uint8)
    head = buf[: front.numel() * front.element_size()].view(front.dtype).view(front.shape)
    head.copy_(front)
    return buf.view(dtype), head


# ---- out= sharing memory with an input: the result of a fresh out ---------------------------


@pytest.mark.parametrize("device,impl,fn", impl_params("dequantize_blockwise.out"))
@pytest.mark.parametrize("shared", ["A", "absmax"])
def test_dequantize_blockwise_out_sharing_an_input(device, impl, fn, shared):
    if device != "cpu":
        pytest.skip("host memory layout")
    x = torch.randn(64, 64)
    code = dynamic_map(signed=True)
    q, absmax = ops.quantize_blockwise(x, code, 256)
    expected = ops.dequantize_blockwise(q, absmax, code, 256, torch.float32)
    buf, head = _sharing(x.numel() * 4, torch.float32, q if shared == "A" else absmax)
    args = {"A": q, "absmax": absmax}
    args[shared] = head
    out = buf.view(64, 64)
    fn(args["A"], args["absmax"], code, 256, torch.float32, out)
    torch.testing.assert_close(out, expected, rtol=0, atol=0)


@pytest.mark.parametrize("device,impl,fn", impl_params("dequantize_4bit.out"))
@pytest.mark.parametrize("shared", ["A", "absmax"])
def test_dequantize_4bit_out_sharing_an_input(device, impl, fn, shared):
    if device != "cpu":
        pytest.skip("host memory layout")
    w = torch.randn(128, 128)
    packed, absmax = ops.quantize_4bit(w, 64, "nf4", torch.uint8)
    expected = ops.dequantize_4bit(packed, absmax, 64, "nf4", [128, 128], torch.float32)
    buf, head = _sharing(w.numel() * 4, torch.float32, packed if shared == "A" else absmax)
    args = {"A": packed, "absmax": absmax}
    args[shared] = head
    out = buf.view(128, 128)
    fn(args["A"], args["absmax"], 64, "nf4", [128, 128], torch.float32, out)
    torch.testing.assert_close(out, expected, rtol=0, atol=0)


@pytest.mark.parametrize("device,impl,fn", impl_params("int8_linear_matmul.out"))
@pytest.mark.parametrize("m,k,n", [(1, 64, 64), (3, 128, 512)])
def test_int8_linear_matmul_out_sharing_A(device, impl, fn, m, k, n):
    if device != "cpu":
        pytest.skip("host memory layout")
    A = torch.randint(-127, 128, (m, k), dtype=torch.int8)
    B = torch.randint(-127, 128, (n, k), dtype=torch.int8)
    expected = A.int() @ B.int().t()
    buf, head = _sharing(max(m * n * 4, m * k), torch.int32, A)
    out = buf[: m * n].view(m, n)
    fn(head, B, out)
    assert torch.equal(out, expected)


@pytest.mark.parametrize("device,impl,fn", impl_params("gemv_4bit.out"))
def test_gemv_4bit_out_is_A(device, impl, fn):
    w = torch.randn(128, 128, device=device)
    packed, absmax = ops.quantize_4bit(w, 64, "nf4", torch.uint8)
    code = F.get_4bit_type("nf4", device=device)
    A = torch.randn(3, 128, device=device)
    expected = ops.gemv_4bit(A, packed, [128, 128], absmax, code, 64)
    a = A.clone()
    fn(a, packed, [128, 128], absmax, code, 64, a)  # a square weight: out may be A itself
    torch.testing.assert_close(a, expected, rtol=1e-5, atol=1e-5)


# ---- expanded (stride 0) outputs: refused, naming out ----------------------------------------


def test_expanded_out_is_refused():
    x = torch.randn(64, 64)
    code = dynamic_map(signed=True)
    q, absmax = ops.quantize_blockwise(x, code, 256)
    with pytest.raises(ValueError, match="out is an expanded view"):
        ops.dequantize_blockwise.out(q, absmax, code, 256, torch.float32, torch.empty(1, 64).expand(64, 64))
    packed, absmax4 = ops.quantize_4bit(x, 64, "nf4", torch.uint8)
    with pytest.raises(ValueError, match="out is an expanded view"):
        ops.dequantize_4bit.out(packed, absmax4, 64, "nf4", [64, 64], torch.float32, torch.empty(64, 1).expand(64, 64))
    A = torch.randint(-127, 128, (8, 64), dtype=torch.int8)
    with pytest.raises(ValueError, match="out is an expanded view"):
        ops.int8_linear_matmul.out(A, A, torch.empty(1, 8, dtype=torch.int32).expand(8, 8))
    with pytest.raises(ValueError, match="out is an expanded view"):
        F.int8_mm_dequant(
            A.int(), torch.ones(8), torch.ones(64), out=torch.empty(1, 64, dtype=torch.half).expand(8, 64)
        )
    with pytest.raises(ValueError, match="out is an expanded view"):
        F.quantize_blockwise(x, out=torch.empty(1, 64, dtype=torch.uint8).expand(64, 64))


# ---- 0-d matmul operands: a ValueError naming A (was an IndexError) ---------------------------


@pytest.mark.parametrize("device", ["cpu", "meta"])
def test_zero_dim_A_is_refused(device):
    w = torch.randn(64, 64)
    packed, absmax = ops.quantize_4bit(w, 64, "nf4", torch.uint8)
    code = F.get_4bit_type("nf4")
    packed, absmax, code = packed.to(device), absmax.to(device), code.to(device)
    B = torch.zeros(64, 64, dtype=torch.int8, device=device)
    a8 = torch.tensor(1, dtype=torch.int8, device=device)
    a = torch.tensor(1.0, device=device)
    calls = [
        lambda: ops.int8_linear_matmul(a8, B),
        lambda: ops.int8_linear_matmul.out(a8, B, torch.empty(64, dtype=torch.int32, device=device)),
        lambda: ops.int8_scaled_mm(a8, B, torch.ones(1, device=device), torch.ones(64, device=device)),
        lambda: ops.int8_mixed_scaled_mm(a, a8, B, torch.ones(1, device=device), torch.ones(64, device=device)),
        lambda: ops.gemv_4bit(a, packed, [64, 64], absmax, code, 64),
        lambda: ops.gemv_4bit.out(a, packed, [64, 64], absmax, code, 64, torch.empty(64, device=device)),
        lambda: ops.gemm_4bit(a, packed, [64, 64], absmax, 64, "nf4"),
    ]
    for call in calls:
        with pytest.raises(ValueError, match="A must have at least one dimension"):
            call()


@pytest.mark.parametrize("device,impl,fn", impl_params("gemm_4bit"))
def test_zero_dim_A_refused_by_gemm_4bit(device, impl, fn):
    packed, absmax = ops.quantize_4bit(torch.randn(64, 64), 64, "nf4", torch.uint8)
    with pytest.raises(ValueError, match="A must have at least one dimension"):
        fn(torch.tensor(1.0, device=device), packed.to(device), [64, 64], absmax.to(device), 64, "nf4")


@pytest.mark.parametrize("device,impl,fn", impl_params("int8_linear_matmul"))
def test_zero_dim_A_refused_by_int8_linear_matmul(device, impl, fn):
    B = torch.zeros(64, 64, dtype=torch.int8, device=device)
    with pytest.raises(ValueError, match="A must have at least one dimension"):
        fn(torch.tensor(1, dtype=torch.int8, device=device), B)


@pytest.mark.parametrize("device,impl,fn", impl_params("int8_linear_matmul.out"))
def test_zero_dim_A_refused_by_int8_linear_matmul_out(device, impl, fn):
    B = torch.zeros(64, 64, dtype=torch.int8, device=device)
    out = torch.empty(64, dtype=torch.int32, device=device)
    with pytest.raises(ValueError, match="A must have at least one dimension"):
        fn(torch.tensor(1, dtype=torch.int8, device=device), B, out)


def test_zero_dim_A_public_matmuls():
    w = torch.randn(64, 64)
    packed, state = F.quantize_4bit(w, blocksize=64, quant_type="nf4")
    with pytest.raises(ValueError, match="A must have at least one dimension"):
        bnb.matmul_4bit(torch.tensor(1.0), packed.t(), state)
    with pytest.raises(ValueError, match="A must have at least one dimension"):
        bnb.matmul(torch.tensor(1.0, dtype=torch.half), w.half())


# ---- optimizer states: shared memory or an expanded parameter refused, before any write -------


@pytest.mark.parametrize("device,impl,fn", impl_params("optimizer_update_8bit_blockwise"))
def test_optimizer_8bit_shared_memory_refused(device, impl, fn):
    if device != "cpu":
        pytest.skip("host memory layout")
    aliases = {
        "state2": lambda t: t["state1"],
        "absmax2": lambda t: t["absmax1"],
        "g": lambda t: t["p"],
        "absmax1": lambda t: t["p"][:4],  # a view of the parameter's memory
        "state1": lambda t: t["g"].view(torch.uint8)[:1000],  # a view of the gradient's memory
    }
    for arg, make in aliases.items():
        t = adam_8bit_args()
        t[arg] = make(t)
        before = {k: v.clone() for k, v in t.items()}
        with pytest.raises(ValueError, match="share memory"):
            step_8bit(fn, t)
        for k in t:  # refused before any write
            assert torch.equal(t[k], before[k]), (arg, k)
    # one code book for both states is fine (both are only read)
    t = adam_8bit_args()
    t["qmap2"] = t["qmap1"] = dynamic_map(signed=False)
    u = {k: v.clone() for k, v in t.items()}
    u["qmap2"] = u["qmap1"].clone()
    step_8bit(fn, t)
    step_8bit(fn, u)
    for k in ("p", "state1", "state2", "absmax1", "absmax2"):
        assert torch.equal(t[k], u[k]), k


@pytest.mark.parametrize("device,impl,fn", impl_params("optimizer_update_8bit_blockwise"))
def test_optimizer_8bit_expanded_p_refused_before_any_write(device, impl, fn):
    t = adam_8bit_args()
    t = {k: v.to(device) for k, v in t.items()}
    t["p"] = t["p"][:1].expand(1000)
    before = {k: v.clone() for k, v in t.items()}
    with pytest.raises(ValueError, match="p is an expanded view"):
        step_8bit(fn, t)
    for k in t:
        assert torch.equal(t[k], before[k]), k


@pytest.mark.parametrize("device,impl,fn", impl_params("optimizer_update_32bit"))
def test_optimizer_32bit_shared_memory_refused(device, impl, fn):
    if device != "cpu":
        pytest.skip("host memory layout")
    n = 1000
    for arg in ("state2", "p", "unorm_vec"):
        t = {"g": torch.randn(n), "p": torch.randn(n), "state1": torch.rand(n), "state2": torch.rand(n)}
        t["unorm_vec"] = torch.zeros(1)
        if arg == "state2":
            t["state2"] = t["state1"]
        elif arg == "p":
            t["state1"] = t["p"]
        else:
            t["unorm_vec"] = t["state1"][:1]
        before = {k: v.clone() for k, v in t.items()}
        with pytest.raises(ValueError, match="share memory"):
            fn("adam", t["g"], t["p"], t["state1"], t["state2"], t["unorm_vec"], 1.0, 1.0,
               0.9, 0.999, 0.0, 0.0, 1e-8, 0.0, 1, 1e-3, 1.0)  # fmt: skip
        for k in t:
            assert torch.equal(t[k], before[k]), (arg, k)


@pytest.mark.parametrize("device,impl,fn", impl_params("optimizer_update_8bit_blockwise"))
def test_optimizer_8bit_strided_g_and_p(device, impl, fn):
    t = adam_8bit_args(20 * 50)
    ref = {k: v.clone() for k, v in t.items()}
    step_8bit(fn, ref)
    t["p"] = torch.stack([t["p"], torch.zeros_like(t["p"])], 1)[:, 0]  # stride 2
    t["g"] = torch.zeros(20 * 50 + 3)[3:].copy_(t["g"])  # a storage offset
    step_8bit(fn, t)
    for k in ("p", "state1", "state2", "absmax1", "absmax2"):
        assert torch.equal(t[k], ref[k]), k


# ---- where a data pointer is not an address: only views of one storage are compared -----------


def test_overlap_across_storages_only_where_pointers_are_addresses(monkeypatch):
    from bitsandbytes import _checks as C

    raw = bytearray(4096)
    a = torch.frombuffer(raw, dtype=torch.float32)  # two storages over one allocation
    b = torch.frombuffer(raw, dtype=torch.float32, offset=40, count=10)
    x = torch.zeros(1000)
    assert C.may_overlap(a, b)  # CPU pointers are addresses: the allocation is shared
    with pytest.raises(ValueError, match="share memory"):
        C.check_optimizer_no_alias({"p": a}, {"g": b})
    # A device whose data_ptr() is a handle (MPS: the Metal buffer object): two storages never
    # overlap, however their pointers compare; views of one storage still do.
    monkeypatch.setattr(C, "ADDRESS_DEVICES", frozenset())
    assert not C.may_overlap(a, b)
    C.check_optimizer_no_alias({"p": a}, {"g": b})
    assert C.may_overlap(x[:10], x[5:15]) and not C.may_overlap(x[:10], x[10:20])
    assert C.may_overlap_any(x[:10], None, torch.zeros(3), x[9:])
    with pytest.raises(ValueError, match="state1 and state2 may share memory"):
        C.check_optimizer_no_alias({"state1": x[:500], "state2": x[499:]}, {})
    C.check_optimizer_no_alias({"state1": x[:500], "state2": x[500:]}, {})


# ---- the nested absmax: a strided view of the code book is not a cached result ----------------


@pytest.mark.parametrize("device,impl,fn", impl_params("gemm_4bit"))
def test_gemm_4bit_nested_absmax_views_of_one_storage(device, impl, fn):
    if device != "cpu":
        pytest.skip("host memory layout")
    w = torch.randn(64, 256)
    packed, state = F.quantize_4bit(w, blocksize=64, quant_type="nf4", compress_statistics=True)
    absmax_8bit, inner, offset = state.absmax, state.state2.absmax, state.offset
    base = torch.linspace(-1.0, 1.0, 512)
    base[:256] = state.state2.code
    first, strided = base[:256], base[::2]  # one address, one size, one version, other values
    A = torch.randn(2, 256)
    fn(A, packed, [64, 256], inner, 64, "nf4", None, absmax_8bit, first, offset)
    got = fn(A, packed, [64, 256], inner, 64, "nf4", None, absmax_8bit, strided, offset)
    fresh = fn(A, packed, [64, 256], inner, 64, "nf4", None, absmax_8bit.clone(), strided.contiguous(), offset)
    assert torch.equal(got, fresh)


def _shifted(t: torch.Tensor, elements: int) -> torch.Tensor:
    """A copy of ``t`` whose data starts ``elements`` elements into its storage (16-byte alignment
    broken for any element size)."""
    buf = torch.empty(t.numel() + elements, dtype=t.dtype, device=t.device)
    out = buf[elements:].view(t.shape)
    out.copy_(t)
    return out


def _own_kernels(op: str) -> list:
    """impl_params(op) without the implementations that multiply through torch's matmul (the
    reference and the HPU tensor programs): on the CPU its f32 result depends on the operands'
    alignment (found by the test below), which is torch's BLAS, not ours."""
    return [p for p in impl_params(op) if p.values[1] not in ("reference", "hpu[host]")]


@pytest.mark.parametrize("device,impl,fn", _own_kernels("gemm_4bit"))
@pytest.mark.parametrize("rows", [1, 3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gemm_4bit_result_does_not_depend_on_alignment(device, impl, fn, rows, dtype):
    """The same values at another address give the same bits: a model's logits must not change
    when its weights are saved and loaded back to storage at another offset (safetensors). The
    CUDA kernel's unaligned path summed in another order (1-ulp differences; found by the
    transformers save/reload test with the CUDA host harness serving the CPU)."""
    w = torch.randn(48, 256)
    packed, absmax = REF["quantize_4bit"](w, 64, "fp4", torch.uint8)
    A = torch.randn(rows, 256, dtype=dtype)
    packed, absmax, A = packed.to(device), absmax.to(device), A.to(device)
    want = fn(A, packed, [48, 256], absmax, 64, "fp4")
    for B2, A2 in ((_shifted(packed, 1), A), (packed, _shifted(A, 1)), (_shifted(packed, 3), _shifted(A, 5))):
        assert B2.data_ptr() % 16 or A2.data_ptr() % 16
        assert torch.equal(fn(A2, B2, [48, 256], absmax, 64, "fp4"), want)


@pytest.mark.parametrize("device,impl,fn", _own_kernels("gemv_4bit"))
def test_gemv_4bit_result_does_not_depend_on_alignment(device, impl, fn):
    w = torch.randn(40, 512)
    packed, absmax = REF["quantize_4bit"](w, 128, "nf4", torch.uint8)
    code = four_bit_decode_table("nf4")
    A = torch.randn(1, 512, dtype=torch.float16)
    packed, absmax, A, code = packed.to(device), absmax.to(device), A.to(device), code.to(device)
    want = fn(A, packed, [40, 512], absmax, code, 128)
    assert torch.equal(fn(_shifted(A, 3), _shifted(packed, 7), [40, 512], absmax, code, 128), want)


def test_an_out_with_a_one_element_stride_zero_dim_is_writable():
    # a stride of 0 over one element shares nothing (torch's own overlap rule): not refused
    W = torch.randn(8, 64, generator=torch.Generator().manual_seed(0))
    packed, qs = F.quantize_4bit(W, quant_type="nf4")
    A = torch.randn(1, 64, generator=torch.Generator().manual_seed(1))
    out = torch.zeros(8).as_strided((1, 8), (0, 1))
    assert bnb.matmul_4bit(A, packed.t(), qs, out=out) is out
    torch.testing.assert_close(out, A @ F.dequantize_4bit(packed, qs).t(), rtol=1e-5, atol=1e-5)
