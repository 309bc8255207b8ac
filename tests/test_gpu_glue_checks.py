"""The CUDA / ROCm Python glue validates optimizer arguments exactly as the reference does.

The glue (platforms/cuda/python/bitsandbytes_cuda/kernels.py, shipped by the ROCm wheel too) is
loaded from the source tree with a stand-in for its native module, which fails the test if any
call reaches it: every case here must be rejected before native code runs, with the reference's
exception type and message. This runs on machines without a GPU (CI), where the glue's kernels
cannot.
"""

from __future__ import annotations

import ctypes
import gc
import sys
import types

import pytest
import torch

from bitsandbytes.backends.reference import KERNELS as REF
from bitsandbytes.backends.reference.codebooks import dynamic_map
from conftest import cuda_harness

PKG = "_bnb_cuda_glue_under_test"


class _NoNative(types.ModuleType):
    def __getattr__(self, name: str):
        raise AssertionError(f"the glue reached native code ({name}) with arguments it should reject")


@pytest.fixture(scope="module")
def glue_modules():
    try:
        pkg = cuda_harness().load_glue(PKG, _NoNative(f"{PKG}._C"))
        yield types.SimpleNamespace(kernels=pkg.kernels, paged=pkg.paged)
    finally:
        for name in [m for m in sys.modules if m == PKG or m.startswith(PKG + ".")]:
            del sys.modules[name]


@pytest.fixture(scope="module")
def glue(glue_modules):
    return glue_modules.kernels.KERNELS


N = 300  # two state blocks, the second partial


def _args_32bit(**over):
    g, p = torch.randn(N), torch.randn(N)
    args = dict(
        optimizer_name="adam", g=g, p=p, state1=torch.zeros(N), state2=torch.zeros(N), unorm_vec=None,
        max_unorm=0.0, param_norm=0.0, beta1=0.9, beta2=0.999, beta3=0.0, alpha=0.0, eps=1e-8,
        weight_decay=0.0, step=1, lr=1e-3, gnorm_scale=1.0,
    )  # fmt: skip
    args.update(over)
    return args


def _args_8bit(**over):
    g, p = torch.randn(N), torch.randn(N)
    q = dynamic_map(signed=True)
    args = dict(
        optimizer_name="adam", g=g, p=p, state1=torch.zeros(N, dtype=torch.uint8),
        state2=torch.zeros(N, dtype=torch.uint8), beta1=0.9, beta2=0.999, beta3=0.0, alpha=0.0, eps=1e-8,
        step=1, lr=1e-3, qmap1=q, qmap2=q, absmax1=torch.ones(2), absmax2=torch.ones(2), weight_decay=0.0,
        gnorm_scale=1.0,
    )  # fmt: skip
    args.update(over)
    return args


BAD_32BIT = {
    "unknown optimizer": dict(optimizer_name="adamw"),
    "step 0": dict(step=0),
    "negative lr": dict(lr=-1.0),
    "NaN eps": dict(eps=float("nan")),
    "g/p sizes": dict(g=torch.randn(N + 1)),
    "g/p dtypes": dict(g=torch.randn(N, dtype=torch.float16)),
    "integer g": dict(g=torch.ones(N, dtype=torch.int32), p=torch.ones(N, dtype=torch.int32)),
    "f16 state1": dict(state1=torch.zeros(N, dtype=torch.float16)),
    "short state1": dict(state1=torch.zeros(N - 1)),
    "missing state2": dict(state2=None),
    "strided state2": dict(state2=torch.zeros(2 * N)[::2]),
    "ademamix state1 of one row": dict(optimizer_name="ademamix"),
    "clip without unorm_vec": dict(max_unorm=1.0),
}

BAD_8BIT = {
    "unknown optimizer": dict(optimizer_name="sgd"),
    "step 0": dict(step=0),
    "negative lr": dict(lr=-0.5),
    "negative eps": dict(eps=-1e-8),
    "f32 state1": dict(state1=torch.zeros(N)),
    "short state2": dict(state2=torch.zeros(N - 1, dtype=torch.uint8)),
    "qmap of 255": dict(qmap1=torch.zeros(255)),
    "missing qmap2": dict(qmap2=None),
    "absmax1 of one block": dict(absmax1=torch.ones(1)),
    "f16 absmax2": dict(absmax2=torch.ones(2, dtype=torch.float16)),
    "ademamix state1 of one row": dict(optimizer_name="ademamix"),
}


def _rejects_like_reference(glue_fn, ref_fn, args):
    with pytest.raises((ValueError, TypeError)) as want:
        ref_fn(**args)
    with pytest.raises(want.type) as got:
        glue_fn(**args)
    assert str(got.value) == str(want.value)


@pytest.mark.parametrize("case", list(BAD_32BIT))
def test_optimizer_32bit_rejects_like_the_reference(glue, case):
    name = "optimizer_update_32bit"
    _rejects_like_reference(glue[name], REF[name], _args_32bit(**BAD_32BIT[case]))


@pytest.mark.parametrize("case", list(BAD_8BIT))
def test_optimizer_8bit_rejects_like_the_reference(glue, case):
    name = "optimizer_update_8bit_blockwise"
    _rejects_like_reference(glue[name], REF[name], _args_8bit(**BAD_8BIT[case]))


def test_valid_arguments_pass_the_checks(glue):
    """Sanity of the harness: valid arguments get past validation (to the device check, since the
    tensors are on the CPU), so the cases above fail for the reason they name."""
    for name, make in (("optimizer_update_32bit", _args_32bit), ("optimizer_update_8bit_blockwise", _args_8bit)):
        with pytest.raises(Exception) as e:
            glue[name](**make())
        assert "cuda" in str(e.value).lower() or "device" in str(e.value).lower(), str(e.value)


BAD_MM_DEQUANT = {
    "f32 A": dict(A=torch.zeros(2, 3)),
    "f16 row_stats": dict(row_stats=torch.ones(2, dtype=torch.float16)),
    "short col_stats": dict(col_stats=torch.ones(2)),
    "long row_stats": dict(row_stats=torch.ones(3)),
    "bias of 4": dict(bias=torch.ones(4)),
    "f64 output": dict(dtype=torch.float64),
}


@pytest.mark.parametrize("case", list(BAD_MM_DEQUANT))
def test_int8_mm_dequant_rejects_like_the_reference(glue, case):
    args = dict(A=torch.zeros(2, 3, dtype=torch.int32), row_stats=torch.ones(2), col_stats=torch.ones(3))
    args.update(BAD_MM_DEQUANT[case])
    _rejects_like_reference(glue["int8_mm_dequant"], REF["int8_mm_dequant"], args)


# ---- every op: what reaches the native call ----------------------------------------------------
#
# The harness below lets the glue take CPU tensors for device tensors (its device type set to
# "cpu", the stream 0) and records each native call instead of running it: a case either must be
# refused before native code with an error naming the argument, or must reach native code with
# arguments the C ABI can take.


class _Recorder(types.ModuleType):
    """Stands in for the native module: records every call, runs nothing."""

    def __init__(self, name: str):
        super().__init__(name)
        self.calls: list[tuple[str, tuple]] = []

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        if name == "OptimizerHparams":
            return lambda *args: args

        def call(*args):
            self.calls.append((name, args))

        return call


def _recording_glue(glue_modules, monkeypatch, device_type: str) -> types.SimpleNamespace:
    """The glue's kernels taking ``device_type`` tensors for device tensors, with a recording
    native module."""
    k = glue_modules.kernels
    native = _Recorder("native")
    monkeypatch.setattr(k, "_DEVICE_TYPE", device_type)
    monkeypatch.setattr(k, "_stream", lambda t: 0)
    monkeypatch.setattr(k, "_C", native)
    return types.SimpleNamespace(ops=k.KERNELS, native=native)


@pytest.fixture
def on_cpu(glue_modules, monkeypatch):
    """The glue's kernels with CPU tensors taken as device tensors and a recording native module."""
    return _recording_glue(glue_modules, monkeypatch, "cpu")


def _packed_weight(N=8, K=64, blocksize=64):
    B = torch.zeros(N * K // 2, 1, dtype=torch.uint8)
    return B, torch.ones(N * K // blocksize)


def test_gemv_4bit_refuses_host_tensors_on_the_reference_path_too(glue):
    """A block size the kernel lacks runs the reference; the device check must come first."""
    B, absmax = _packed_weight(K=64, blocksize=16)
    A, code = torch.randn(1, 64), torch.zeros(16)
    with pytest.raises(RuntimeError, match="A must be on a CUDA device"):
        glue["gemv_4bit"](A, B, [8, 64], absmax, code, 16)


def test_gemv_4bit_out_checks_out_device_on_the_reference_path(on_cpu):
    B, absmax = _packed_weight(K=64, blocksize=16)
    A, code = torch.randn(1, 64), torch.zeros(16)
    out = torch.empty(1, 8, device="meta")
    with pytest.raises(RuntimeError, match="out must be on"):
        on_cpu.ops["gemv_4bit.out"](A, B, [8, 64], absmax, code, 16, out)


@pytest.mark.parametrize("op", ["gemv_4bit", "gemm_4bit", "int8_linear_matmul", "int8_linear_matmul.out"])
def test_zero_dim_A_is_refused_by_name(on_cpu, op):
    B, absmax = _packed_weight()
    args = {
        "gemv_4bit": (torch.tensor(1.0), B, [8, 64], absmax, torch.zeros(16), 64),
        "gemm_4bit": (torch.tensor(1.0), B, [8, 64], absmax, 64, "nf4"),
        "int8_linear_matmul": (torch.tensor(1, dtype=torch.int8), torch.zeros(8, 1, dtype=torch.int8)),
        "int8_linear_matmul.out": (
            torch.tensor(1, dtype=torch.int8),
            torch.zeros(8, 1, dtype=torch.int8),
            torch.empty(8, dtype=torch.int32),
        ),
    }[op]
    with pytest.raises(ValueError, match="A must have at least one dimension"):
        on_cpu.ops[op](*args)
    assert not on_cpu.native.calls


def _out_inside_an_input(op: str, fresh: bool) -> tuple[tuple, torch.Tensor]:
    """``op``'s arguments with its ``out`` inside the memory of one input but starting at another
    address (so that out's pointer reaching native code means out was written directly), or a
    fresh ``out``."""
    buf = torch.zeros(8192, dtype=torch.uint8)

    def place(at: int, nbytes: int, dtype: torch.dtype, shape: tuple) -> torch.Tensor:
        return (torch.zeros(nbytes, dtype=torch.uint8) if fresh else buf[at : at + nbytes]).view(dtype).view(shape)

    if op == "dequantize_blockwise.out":  # out inside A
        A = buf[:1024].view(32, 32)
        out = place(256, 32 * 32 * 4, torch.float32, (32, 32))
        return (A, torch.ones(4), dynamic_map(signed=True), 256, torch.float32, out), out
    if op == "dequantize_4bit.out":  # A (256 packed bytes) inside out
        out = place(0, 8 * 64 * 4, torch.float32, (8, 64))
        A = buf[1024:1280].view(256, 1)
        return (A, torch.ones(8), 64, "nf4", [8, 64], torch.float32, out), out
    if op == "int8_linear_matmul.out":  # A inside out
        out = place(0, 4 * 64 * 4, torch.int32, (4, 64))
        A = buf[256:512].view(torch.int8).view(4, 64)
        return (A, torch.zeros(64, 64, dtype=torch.int8), out), out
    # gemv_4bit.out: out inside A
    A = buf[:256].view(torch.float32).view(1, 64)
    out = place(32, 8 * 4, torch.float32, (1, 8))
    B, absmax = _packed_weight()
    return (A, B, [8, 64], absmax, torch.zeros(16), 64, out), out


@pytest.mark.parametrize(
    "op", ["dequantize_blockwise.out", "dequantize_4bit.out", "int8_linear_matmul.out", "gemv_4bit.out"]
)
def test_an_out_sharing_an_input_is_not_handed_to_the_kernel(on_cpu, op):
    """The kernel would write out while it still reads the input: the glue hands it a fresh
    tensor (and copies that into out); a fresh out is handed over as it is."""
    args, out = _out_inside_an_input(op, fresh=True)
    on_cpu.ops[op](*args)
    assert any(out.data_ptr() in call for _, call in on_cpu.native.calls)
    on_cpu.native.calls.clear()
    args, out = _out_inside_an_input(op, fresh=False)
    on_cpu.ops[op](*args)
    assert on_cpu.native.calls and not any(out.data_ptr() in call for _, call in on_cpu.native.calls)


@pytest.mark.parametrize("case", ["strided p over g", "expanded p"])
def test_optimizer_memory_of_copied_tensors_is_checked_in_the_glue(on_cpu, case):
    """A non-contiguous p or g reaches the kernel as a copy, whose pointer the C entry point
    compares: the originals are checked before any native call (and before any write)."""
    buf = torch.randn(2 * N)
    p, g = (buf[::2], buf[1::2]) if case == "strided p over g" else (torch.randn(1).expand(N), torch.randn(N))
    match = "p and g may share memory" if case == "strided p over g" else "p is an expanded view"
    for name, make in (("optimizer_update_32bit", _args_32bit), ("optimizer_update_8bit_blockwise", _args_8bit)):
        before = buf.clone()
        with pytest.raises(ValueError, match=match):
            on_cpu.ops[name](**make(p=p, g=g))
        assert not on_cpu.native.calls and torch.equal(buf, before)


def test_gemm_4bit_names_a_wrong_absmax_8bit_dtype(glue):
    B, absmax = _packed_weight()
    nested = (torch.ones(1), dynamic_map(signed=True), torch.tensor(0.5))
    with pytest.raises(TypeError, match="absmax_8bit must have dtype"):
        glue["gemm_4bit"](torch.randn(1, 64), B, [8, 64], nested[0], 64, "nf4", None, absmax, *nested[1:])


def test_gemm_4bit_refuses_an_absmax_offset_that_broadcasts(on_cpu):
    """An offset of shape (blocks, 1) would broadcast the scales into a (blocks, blocks) tensor whose
    first row the kernel reads: a silent wrong answer. It is refused before any native call."""
    B, absmax = _packed_weight()
    blocks = absmax.numel()
    absmax_8bit = torch.zeros(blocks, dtype=torch.uint8)
    offset = torch.zeros(blocks, 1)
    with pytest.raises(ValueError, match="absmax_offset"):
        on_cpu.ops["gemm_4bit"](
            torch.randn(1, 64), B, [8, 64], torch.ones(1), 64, "nf4", None, absmax_8bit, dynamic_map(), offset
        )
    assert on_cpu.native.calls == []


@pytest.mark.parametrize("blocksize", [2**63 - 1, 2**64, 10**30])
def test_blockwise_passes_a_block_size_the_native_size_type_holds(on_cpu, blocksize):
    """The C ABI takes int64 block sizes (pybind11 refuses a larger int with an unrelated TypeError,
    and ceil(n / blocksize) formed as (n + blocksize - 1) / blocksize wraps near INT64_MAX): a block
    size of at least n is one block of n."""
    A = torch.randn(100)
    out, absmax = on_cpu.ops["quantize_blockwise"](A, dynamic_map(), blocksize)
    assert absmax.shape == (1,)
    on_cpu.ops["dequantize_blockwise"](out, absmax, dynamic_map(), blocksize, torch.float32)
    (q_name, q_args), (d_name, d_args) = on_cpu.native.calls
    assert (q_name, q_args[4]) == ("quantize_blockwise", 100)
    assert (d_name, d_args[4]) == ("dequantize_blockwise", 100)


def _neg(t: torch.Tensor) -> torch.Tensor:
    """A dense negated view (what ``z.conj().imag`` gives for a one-element complex z)."""
    v = torch._neg_view(t)
    assert v.is_neg() and v.is_contiguous() and v.contiguous().is_neg()
    return v


NEG_VIEW_CASES = {
    "quantize_4bit A": ("quantize_4bit", "A", lambda: (_neg(torch.randn(64)), 64, "nf4", torch.uint8)),
    "quantize_blockwise A": ("quantize_blockwise", "A", lambda: (_neg(torch.randn(64)), dynamic_map(), 64)),
    "dequantize_blockwise absmax": (
        "dequantize_blockwise",
        "absmax",
        lambda: (torch.zeros(64, dtype=torch.uint8), _neg(torch.ones(1)), dynamic_map(), 64, torch.float32),
    ),
    "int8_mm_dequant col_stats": (
        "int8_mm_dequant",
        "col_stats",
        lambda: (torch.ones(2, 3, dtype=torch.int32), torch.ones(2), _neg(torch.ones(3))),
    ),
    "optimizer p": ("optimizer_update_32bit", "p", lambda: tuple(_args_32bit(p=_neg(torch.randn(N))).values())),
}


@pytest.mark.parametrize("case", list(NEG_VIEW_CASES))
def test_negated_views_are_refused_by_name(on_cpu, case):
    """A kernel reads data_ptr(): the memory of a negated view holds the values before negation."""
    op, arg, make = NEG_VIEW_CASES[case]
    with pytest.raises(ValueError, match=f"{arg} is a negated view"):
        on_cpu.ops[op](*make())
    assert not on_cpu.native.calls


# ---- paged memory ------------------------------------------------------------------------------


class _FakeManaged(types.ModuleType):
    """paged_alloc / paged_free / paged_prefetch over host buffers, with the C ABI's checks."""

    def __init__(self):
        super().__init__("native")
        self.buffers: dict[int, object] = {}
        self.prefetches: list[tuple[int, int, int]] = []

    def paged_alloc(self, nbytes: int) -> int:
        if nbytes <= 0:
            raise ValueError(f"paged_alloc: bytes must be positive, got {nbytes}")
        buf = ctypes.create_string_buffer(nbytes)
        self.buffers[ctypes.addressof(buf)] = buf
        return ctypes.addressof(buf)

    def paged_free(self, address: int) -> None:
        self.buffers.pop(address)

    def paged_prefetch(self, address: int, nbytes: int, device: int, stream: int) -> None:
        if nbytes <= 0:
            raise ValueError(f"paged_prefetch: bytes must be positive, got {nbytes}")
        self.prefetches.append((address, nbytes, device))


@pytest.fixture
def paged(glue_modules, monkeypatch):
    native = _FakeManaged()
    monkeypatch.setattr(glue_modules.paged, "_C", native)
    monkeypatch.setattr(glue_modules.paged, "_current_device", lambda: 0)
    monkeypatch.setattr(glue_modules.paged, "_stream", lambda device: 0)
    yield types.SimpleNamespace(mod=glue_modules.paged, native=native)
    gc.collect()  # frees the test's paged tensors through the fake while it is still in place


def test_empty_paged_refuses_a_negative_shape(paged):
    with pytest.raises(ValueError, match="shape must be non-negative"):
        paged.mod.empty_paged((-1, 4))
    assert not paged.native.buffers


def test_prefetch_of_an_empty_paged_tensor_does_nothing(paged):
    t = paged.mod.empty_paged((0, 4))
    assert t.shape == (0, 4) and t.is_paged
    paged.mod.prefetch(t, device=0)
    assert not paged.native.prefetches


def test_prefetch_moves_the_allocation_not_past_it(paged):
    """An expanded view spans 1000 elements of a one-element allocation: prefetching numel *
    element_size bytes from its address would run past the allocation."""
    t = paged.mod.empty_paged((1,))
    paged.mod.prefetch(t.expand(1000), device=0)
    paged.mod.prefetch(t, to_cpu=True)
    address = t.data_ptr()
    assert paged.native.prefetches == [(address, 4, 0), (address, 4, -1)]


def test_prefetch_refuses_memory_that_is_not_paged(paged):
    with pytest.raises(ValueError, match="t is not a paged tensor"):
        paged.mod.prefetch(torch.zeros(16), device=0)
    assert not paged.native.prefetches


def _adam_32bit_args(p, state1, state2):
    g = torch.empty_like(p)
    return ("adam", g, p, state1, state2, None, 0.0, 0.0, 0.9, 0.999, 0.0, 0.0, 1e-8, 0.0, 1, 1e-3, 1.0)


@pytest.fixture
def on_meta_device(glue_modules, monkeypatch):
    """The glue with meta tensors taken as device tensors (so a CPU tensor is not one) and a
    recording native module."""
    return _recording_glue(glue_modules, monkeypatch, "meta")


def test_optimizer_states_in_paged_memory_reach_the_kernel(paged, on_meta_device):
    """A paged optimizer's states report device cpu, yet live in managed memory the GPU addresses:
    the glue passes them to the kernel beside a device parameter."""
    p = torch.empty(4, 64, device="meta")
    s1, s2 = paged.mod.empty_paged((4, 64)), paged.mod.empty_paged((4, 64))
    on_meta_device.ops["optimizer_update_32bit"](*_adam_32bit_args(p, s1, s2))
    ((name, args),) = on_meta_device.native.calls
    assert name == "optimizer_update_32bit" and s1.data_ptr() in args and s2.data_ptr() in args


def test_a_host_tensor_marked_paged_is_still_refused(paged, on_meta_device):
    """The is_paged attribute alone proves nothing: only memory from empty_paged is addressable."""
    p = torch.empty(4, 64, device="meta")
    fake = torch.zeros(4, 64)
    fake.is_paged = True
    with pytest.raises(RuntimeError, match="state2 must be on a CUDA device"):
        on_meta_device.ops["optimizer_update_32bit"](*_adam_32bit_args(p, paged.mod.empty_paged((4, 64)), fake))
    assert not on_meta_device.native.calls


def test_a_paged_tensor_pickles_as_an_ordinary_one(paged):
    """torch.save of a paged optimizer's state dict pickles each state's __dict__: nothing that
    cannot be pickled (the ctypes buffer behind the memory) may sit there."""
    import io

    t = paged.mod.empty_paged((4, 8))
    t.fill_(3.0)
    buf = io.BytesIO()
    torch.save({"state1": t}, buf)
    loaded = torch.load(io.BytesIO(buf.getvalue()), weights_only=True)["state1"]
    assert torch.equal(loaded, torch.full((4, 8), 3.0)) and loaded.is_paged
    assert loaded.data_ptr() != t.data_ptr()
