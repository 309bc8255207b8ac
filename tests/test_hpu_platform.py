"""bitsandbytes-hpu without a Gaudi: the kernels hold no host synchronisation and trace into one
whole graph; detection, version parsing and Gaudi's NF4 op path run against a stand-in
``habana_frameworks`` package and a stand-in ``torch.ops.hpu.dequantize_nf4`` that implements
the op's documented semantics, in both nibble orders. (The kernels' values against the reference
are the conformance suite's: ``BNB_TEST_HOST_KERNELS=hpu``.)"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import sys
import textwrap

import pytest
import torch

bnb_hpu = pytest.importorskip("bitsandbytes_hpu", reason="bitsandbytes-hpu is not installed")

from bitsandbytes_hpu import _gaudi  # noqa: E402
from bitsandbytes_hpu import kernels as hk  # noqa: E402
from torch.fx.experimental.proxy_tensor import make_fx  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

from bitsandbytes import _platforms  # noqa: E402
from bitsandbytes.backends.reference import KERNELS as REF  # noqa: E402
from bitsandbytes.backends.reference.codebooks import NF4_VALUES, dynamic_map, midpoints  # noqa: E402

KERNELS = bnb_hpu.host_kernels()

REAL_GAUDI = importlib.util.find_spec("habana_frameworks") is not None
standin_only = pytest.mark.skipif(
    REAL_GAUDI, reason="the real Gaudi software is installed: the stand-in Gaudi tests run where it is not"
)

# ------------------------------------------------------------------------- no host synchronisation

SYNC_OPS = {
    "_local_scalar_dense",  # .item(), .tolist(), float(t), int(t), bool(t)
    "is_nonzero",
    "nonzero",  # and argwhere, boolean-mask indexing
    "masked_select",
    "equal",
    "allclose",
    "unique",
    "_unique",
    "_unique2",
    "unique_consecutive",
    "unique_dim",
    "repeat_interleave",  # the Tensor-repeats overload sizes its output from the data
}


MASK_INDEX_OPS = {"index", "index_put", "index_put_", "_index_put_impl_"}


def _has_mask(indices) -> bool:
    """Whether an index list holds a boolean (or uint8) mask: its size comes from the data."""

    def dtype(i):
        return i.meta["val"].dtype if isinstance(i, torch.fx.Node) else getattr(i, "dtype", None)

    return any(dtype(i) in (torch.bool, torch.uint8) for i in (indices or []) if i is not None)


def _op_name(func) -> str:
    return func._schema.name.split("::")[-1]


class NoHostSync(TorchDispatchMode):
    """Fails on every op that reads tensor data back to the host or sizes a result by it."""

    def __init__(self, allow: set[str] = frozenset()):
        super().__init__()
        self.allow = allow
        self.seen: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = _op_name(func)
        if name in MASK_INDEX_OPS and _has_mask(args[1]):
            name = "nonzero"  # t[mask] finds the mask's true elements inside the kernel
        if name in SYNC_OPS:
            if name not in self.allow:
                raise AssertionError(f"host synchronisation inside a kernel: aten.{name}")
            self.seen.append(name)
        return func(*args, **(kwargs or {}))


def _clone(args):
    return [a.clone() if isinstance(a, torch.Tensor) else a for a in args]


def _flat(out):
    if out is None:
        return []
    if isinstance(out, torch.Tensor):
        return [out]
    return [t for t in out if t is not None]


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return (
        a.shape == b.shape
        and a.dtype == b.dtype
        and torch.equal(a.view(-1).view(torch.uint8), b.view(-1).view(torch.uint8))
    )


def _case_4bit():
    g = torch.Generator().manual_seed(0)
    W = torch.randn(40, 96, generator=g)
    W[5, :64] = 0.0  # an all-zero block
    packed, absmax = REF["quantize_4bit"](W, 64, "nf4", torch.uint8)
    return W, packed, absmax


def _cases():
    """(kernel name, scalar args builder) for every HPU kernel and every reference kernel that
    serves the hpu device: each traced and run under NoHostSync."""
    W, packed, absmax = _case_4bit()
    A = torch.randn(3, 96)
    code = dynamic_map()
    x = torch.randn(1000)
    q8, a8 = REF["quantize_blockwise"](x, code, 256)
    nested_q, nested_a = REF["quantize_blockwise"](absmax, code, 256)
    table = torch.tensor(NF4_VALUES)
    i8 = torch.randint(-127, 128, (5, 64), dtype=torch.int8)
    j8 = torch.randint(-127, 128, (7, 64), dtype=torch.int8)
    Af = torch.randn(5, 64) * 3
    cases = [
        ("quantize_4bit", (W, 64, "nf4", torch.uint8)),
        ("quantize_4bit", (torch.randn(97, dtype=torch.bfloat16), 32, "fp4", torch.uint8)),
        ("dequantize_4bit", (packed, absmax, 64, "nf4", [40, 96], torch.bfloat16)),
        ("dequantize_4bit.out", (packed, absmax, 64, "nf4", [40, 96], torch.float32, torch.empty(40, 96))),
        ("gemv_4bit", (A, packed, [40, 96], absmax, table, 64)),
        ("gemv_4bit.out", (A, packed, [40, 96], absmax, table, 64, torch.empty(3, 40))),
        ("gemm_4bit", (A, packed, [40, 96], absmax, 64, "nf4", torch.randn(40))),
        ("gemm_4bit", (A, packed, [40, 96], nested_a, 64, "nf4", None, nested_q, code, torch.tensor(0.5))),
        ("quantize_blockwise", (x, code, 256)),
        ("dequantize_blockwise", (q8, a8, code, 256, torch.float16)),
        ("dequantize_blockwise.out", (q8, a8, code, 256, torch.float32, torch.empty(1000))),
        ("int8_vectorwise_quant", (Af, 0.0)),
        ("int8_double_quant", (Af, 0.0)),
        # Served on Gaudi by the reference kernels: they must be graph-friendly too.
        ("int8_vectorwise_dequant", (i8, torch.rand(5))),
        ("int8_linear_matmul", (torch.randint(-127, 128, (5, 1500), dtype=torch.int8), torch.randint(-127, 128, (7, 1500), dtype=torch.int8))),
        ("int8_linear_matmul.out", (i8, j8, torch.empty(5, 7, dtype=torch.int32))),
        ("int8_mm_dequant", (torch.randint(-5000, 5000, (5, 7), dtype=torch.int32), torch.rand(5), torch.rand(7), torch.bfloat16, torch.randn(7))),
        ("int8_scaled_mm", (i8, j8, torch.rand(5), torch.rand(7), None, torch.float32)),
    ]  # fmt: skip
    return cases


def _kernel(name):
    return KERNELS.get(name) or REF[name]


def _graph_syncs(gm: torch.fx.GraphModule, allow=frozenset()) -> list[str]:
    """The ops of a traced graph that synchronise with the host (or size a result by the data)."""
    bad = []
    for n in gm.graph.nodes:
        if n.op != "call_function" or not hasattr(n.target, "_schema"):
            continue
        name = _op_name(n.target)
        if name in MASK_INDEX_OPS and _has_mask(n.args[1]):
            bad.append(f"{n.target} with a boolean mask")
        elif name in SYNC_OPS and name not in allow:
            bad.append(str(n.target))
    return bad


def _check_graph(name, args, allow=frozenset()):
    """Eager under NoHostSync; a symbolic make_fx trace without any sync op; the traced graph,
    run on fresh copies of the inputs, reproduces the eager outputs and in-place writes bit for bit."""
    fn = _kernel(name)
    eager_args = _clone(args)
    with NoHostSync(allow) as guard:
        eager = fn(*eager_args)
    traced_args = _clone(args)
    gm = make_fx(lambda *a: fn(*a), tracing_mode="symbolic")(*_clone(args))
    assert any(n.op == "call_function" for n in gm.graph.nodes), name
    bad = _graph_syncs(gm, allow)
    assert not bad, f"{name}: the graph holds host-synchronising ops {bad}"
    got = gm(*traced_args)
    for e, t in zip(_flat(eager), _flat(got)):
        assert _same(e, t), name
    for e, t in zip(eager_args, traced_args):  # in-place writes (out=, optimizer states)
        if isinstance(e, torch.Tensor):
            assert _same(e, t), f"{name}: an in-place write differs between eager and graph"
    return gm, guard


@pytest.mark.parametrize("name,args", [pytest.param(n, a, id=f"{n}-{i}") for i, (n, a) in enumerate(_cases())])
def test_kernel_is_one_graph_without_host_sync(name, args):
    _check_graph(name, args)


OPT = ["adam", "lamb", "momentum", "lars", "rmsprop", "adagrad", "lion", "ademamix"]


def _optim_args(name, bits, n=700, clip=False, skip_zeros=False):
    g = torch.Generator().manual_seed(1)
    p = torch.randn(n, generator=g).to(torch.bfloat16)
    grad = torch.randn(n, generator=g).to(torch.bfloat16)
    grad[::7] = 0
    rows = 2 if name == "ademamix" else 1
    two = name in ("adam", "lamb", "ademamix")
    if bits == 32:
        s1 = torch.rand(rows * n, generator=g) * 0.1
        s2 = torch.rand(n, generator=g) * 0.1 if two else None
        unorm = torch.zeros(1) if clip else None
        return (name, grad, p, s1, s2, unorm, 1.0 if clip else 0.0, 3.0, 0.9, 0.99, 0.999, 2.0, 1e-6, 0.01, 3, 1e-2, 0.5, skip_zeros)  # fmt: skip
    code1, code2 = dynamic_map(True), dynamic_map(False)
    blocks = -(-n // 256)
    s1 = torch.randint(0, 256, (rows * n,), dtype=torch.uint8, generator=g)
    a1 = torch.rand(rows * blocks, generator=g) * 0.1
    s2 = torch.randint(128, 256, (n,), dtype=torch.uint8, generator=g) if two else None
    a2 = torch.rand(blocks, generator=g) * 0.1 if two else None
    return (name, grad, p, s1, s2, 0.9, 0.99, 0.999, 2.0, 1e-6, 3, 1e-2, code1, code2 if two else None, a1, a2, 0.01, 1.0, skip_zeros)  # fmt: skip


@pytest.mark.parametrize("name", OPT)
@pytest.mark.parametrize("bits", [32, 8])
def test_optimizer_is_one_graph_without_host_sync(name, bits):
    op = "optimizer_update_32bit" if bits == 32 else "optimizer_update_8bit_blockwise"
    _check_graph(op, _optim_args(name, bits))


@pytest.mark.parametrize("name", ["lamb", "lars"])
def test_trust_ratio_clip_stays_on_the_device(name):
    # The reference reads ‖u‖ back to the host (float); the HPU kernel keeps it a tensor.
    args = _optim_args(name, 32, clip=True, skip_zeros=True)
    _check_graph("optimizer_update_32bit", args)
    ref_args, hpu_args = _clone(args), _clone(args)
    REF["optimizer_update_32bit"](*ref_args)
    KERNELS["optimizer_update_32bit"](*hpu_args)
    assert hpu_args[5].item() > 0
    torch.testing.assert_close(hpu_args[5], ref_args[5], rtol=1e-5, atol=0)  # f32 sum vs f64
    torch.testing.assert_close(hpu_args[2].float(), ref_args[2].float(), rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("op", ["int8_vectorwise_quant", "int8_double_quant"])
def test_outlier_columns_are_the_only_data_dependent_output(op):
    A = torch.randn(6, 64)
    A[:, [3, 17]] = 9.0
    gm, guard = _check_graph(op, (A, 6.0), allow={"nonzero"})
    assert guard.seen == ["nonzero"]  # exactly one, for the index list
    (nz,) = [n for n in gm.graph.nodes if n.op == "call_function" and "nonzero" in str(n.target)]
    output = next(n for n in gm.graph.nodes if n.op == "output")
    outs = list(output.args[0])

    def ancestors(node, seen):
        for a in node.all_input_nodes:
            if a not in seen:
                seen.add(a)
                ancestors(a, seen)
        return seen

    for out in outs[:-1]:  # the codes and statistics never wait for the index list
        if out is not None:
            assert nz not in ancestors(out, set())
    assert nz in ancestors(outs[-1], set())


def test_the_guard_catches_host_syncs():
    # The checks above can fail: .item(), boolean masks and torch.equal are caught.
    x = torch.randn(100)
    for bad in (lambda t: t * t.sum().item(), lambda t: t[t > 0], lambda t: t * float(torch.equal(t, t))):
        with pytest.raises(AssertionError, match="host synchronisation"), NoHostSync():
            bad(x)
    assert _graph_syncs(make_fx(lambda t: t[t > 0], tracing_mode="symbolic")(x))
    assert _graph_syncs(make_fx(lambda t: t * t.sum().item(), tracing_mode="symbolic")(x))
    assert not _graph_syncs(make_fx(lambda t: t * t.sum(), tracing_mode="symbolic")(x))


# ---------------------------------------------------------------------------- the nearest-code search


@pytest.mark.parametrize("size", [16, 256])
def test_branchless_search_equals_searchsorted(size):
    g = torch.Generator().manual_seed(0)
    table = dynamic_map() if size == 256 else torch.tensor(NF4_VALUES)
    mids = midpoints(table)
    x = torch.cat(
        [
            torch.rand(5000, generator=g) * 2.2 - 1.1,
            mids,  # exactly on the midpoints: the lower entry
            torch.nextafter(mids, torch.full_like(mids, 2.0)),
            table,
            torch.tensor([float("nan"), float("inf"), -float("inf"), 0.0, -0.0, -1.0, 1.0]),
        ]
    )
    got = hk.nearest_index(x, mids)
    assert got.dtype == torch.int32
    assert torch.equal(got.long(), torch.searchsorted(mids, x))


def test_search_rejects_a_table_it_cannot_halve():
    with pytest.raises(ValueError, match="2\\*\\*k - 1"):
        hk.nearest_index(torch.zeros(3), torch.zeros(10))


def test_host_kernels_are_what_register_binds():
    bound = {}
    bnb_hpu.register(lambda name, fn: bound.setdefault(name, fn))
    assert bound == KERNELS
    assert set(KERNELS) <= set(REF)


# --------------------------------------------------------------------------------- version parsing


@pytest.mark.parametrize(
    "text,want",
    [
        ("1.21.0", (1, 21, 0)),
        ("1.22.1", (1, 22, 1)),
        ("1.21.0.555", (1, 21, 0)),
        ("1.22.0-740", (1, 22, 0)),
        ("1.22.0+git1a2b", (1, 22, 0)),
        ("2.0", (2, 0, 0)),
        ("2", (2, 0, 0)),
        ("v1.23.0", (1, 23, 0)),
        ("", None),
        (None, None),
        ("unknown", None),
    ],
)
def test_parse_version(text, want):
    assert bnb_hpu.parse_version(text) == want


@pytest.mark.parametrize(
    "version,swapped", [("1.20.1", True), ("1.21.0", True), ("1.22.0", False), ("1.23.0", False), ("2.0", False)]
)
def test_nibble_order_follows_the_version(gaudi, version, swapped):
    # 2.0 is newer than 1.22: the established release compared the minor number alone (0 < 22).
    gaudi(version=version, op_order_swapped=swapped)
    ops = _gaudi.refresh()
    assert ops.swap_nibbles is swapped and ops.dequantize_nf4 is not None
    assert bnb_hpu.build_info()["nf4_nibbles_swapped"] is swapped


# ------------------------------------------------------------- the stand-in Gaudi software stack


def _standin_dequantize_nf4(swapped: bool, calls: list):
    """torch.ops.hpu.dequantize_nf4 as documented: 1-D uint8 input of packed NF4 codes, absmax in
    the output dtype, one absmax per ``blocksize`` outputs, the NF4 table in the output dtype;
    software before 1.22 reads the first code of a byte from its LOW nibble."""

    def impl(input, absmax, blocksize, out_shape, out_dtype):
        calls.append((input.dtype, absmax.dtype, blocksize, tuple(out_shape), out_dtype))
        assert input.dim() == 1 and input.dtype == torch.uint8 and absmax.dtype == out_dtype
        n = 1
        for s in out_shape:
            n *= s
        first, second = (input & 0x0F, input >> 4) if swapped else (input >> 4, input & 0x0F)
        codes = torch.stack([first, second], dim=1).reshape(-1)[:n].long()
        table = torch.tensor(NF4_VALUES, dtype=torch.float32).to(out_dtype)
        scale = absmax[torch.arange(n) // blocksize]
        return (table[codes] * scale).reshape(out_shape)

    return impl


@pytest.fixture
def gaudi(tmp_path, monkeypatch):
    if REAL_GAUDI:
        pytest.skip("the real Gaudi software is installed: the stand-in Gaudi tests run where it is not")
    """Install a stand-in Gaudi software stack: a ``habana_frameworks.torch`` package that adds
    ``torch.hpu``, ``habana-torch-plugin`` metadata of a given version, and (optionally) the
    ``torch.ops.hpu.dequantize_nf4`` op. Returns ``setup(...)``; the stand-in's calls are in
    ``setup.calls``."""
    libs = []

    def setup(version="1.22.0", available=True, op=True, op_order_swapped=False, importable=True):
        if importable:
            pkg = tmp_path / "habana_frameworks"
            (pkg / "torch").mkdir(parents=True, exist_ok=True)
            (pkg / "__init__.py").write_text("")
            (pkg / "torch" / "__init__.py").write_text(
                textwrap.dedent(
                    f"""
                    import types, torch
                    torch.hpu = types.SimpleNamespace(is_available=lambda: {available}, device_count=lambda: 1)
                    """
                )
            )
        if version is not None:
            info = tmp_path / "habana_torch_plugin-0.dist-info"
            info.mkdir(exist_ok=True)
            (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: habana-torch-plugin\nVersion: {version}\n")
        monkeypatch.syspath_prepend(str(tmp_path))
        if op:
            lib = torch.library.Library("hpu", "FRAGMENT")
            lib.define(
                "dequantize_nf4(Tensor input, Tensor absmax, int blocksize, SymInt[] out_shape, ScalarType out_dtype) -> Tensor"
            )
            lib.impl("dequantize_nf4", _standin_dequantize_nf4(op_order_swapped, setup.calls), "CPU")

            @torch.library.register_fake("hpu::dequantize_nf4", lib=lib)
            def _(input, absmax, blocksize, out_shape, out_dtype):
                return input.new_empty(out_shape, dtype=out_dtype)

            libs.append(lib)
        _gaudi.refresh()
        return setup

    setup.calls = []
    yield setup
    for lib in libs:
        lib._destroy()
    for name in [m for m in sys.modules if m == "habana_frameworks" or m.startswith("habana_frameworks.")]:
        del sys.modules[name]
    if hasattr(torch, "hpu"):
        delattr(torch, "hpu")
    monkeypatch.undo()
    _gaudi.refresh()


@standin_only
def test_the_standin_is_gone_afterwards():
    assert not hasattr(torch, "hpu")
    with pytest.raises(importlib.metadata.PackageNotFoundError):
        importlib.metadata.version("habana-torch-plugin")
    assert _gaudi.refresh().dequantize_nf4 is None


@pytest.mark.parametrize("version,swapped", [("1.21.0", True), ("1.22.0", False), ("2.0.0", False)])
@pytest.mark.parametrize("storage", [torch.uint8, torch.bfloat16])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_dequantize_4bit_through_gaudis_op(gaudi, version, swapped, storage, dtype):
    setup = gaudi(version=version, op_order_swapped=swapped)
    W, packed, absmax = _case_4bit()
    stored = packed.reshape(-1).view(storage).reshape(-1, 1)
    got = KERNELS["dequantize_4bit"](stored, absmax, 64, "nf4", [40, 96], dtype)
    want = REF["dequantize_4bit"](stored, absmax, 64, "nf4", [40, 96], dtype)
    assert len(setup.calls) == 1 and setup.calls[0] == (torch.uint8, dtype, 64, (40 * 96,), dtype)
    if dtype == torch.float32:
        assert torch.equal(got, want)
    else:  # table, absmax and product each rounded to bf16 (the reference rounds once): 3 half-ulps
        torch.testing.assert_close(got.float(), want.float(), rtol=3 * 2**-8, atol=0)
    # gemm_4bit decodes NF4 weights through the same op.
    A = torch.randn(2, 96, generator=torch.Generator().manual_seed(5)).to(dtype)
    out = KERNELS["gemm_4bit"](A, stored, [40, 96], absmax, 64, "nf4")
    assert len(setup.calls) == 2
    ref = REF["gemm_4bit"](A, stored, [40, 96], absmax, 64, "nf4").float()
    # Each weight may be off by the 3 half-ulps above; each output by its own rounding (both ways).
    W = REF["dequantize_4bit"](stored, absmax, 64, "nf4", [40, 96], torch.float32)
    bound = (A.float().abs() @ W.abs().t()) * 3 * 2**-8 + ref.abs() * 2 * 2**-8 + 1e-6
    assert ((out.float() - ref).abs() <= bound).all()


def test_the_wrong_nibble_order_would_be_caught(gaudi):
    # Software claiming 1.22 with an op that still reads the low nibble first: the results are wrong,
    # so the tests above do check the order.
    gaudi(version="1.22.0", op_order_swapped=True)
    W, packed, absmax = _case_4bit()
    got = KERNELS["dequantize_4bit"](packed, absmax, 64, "nf4", [40, 96], torch.float32)
    assert not torch.equal(got, REF["dequantize_4bit"](packed, absmax, 64, "nf4", [40, 96], torch.float32))


@pytest.mark.parametrize(
    "quant_type,storage,dtype,shape",
    [
        ("fp4", torch.uint8, torch.bfloat16, [40, 96]),  # Gaudi's op decodes NF4 only
        ("nf4", torch.float16, torch.bfloat16, [40, 96]),  # fp16 storage
        ("nf4", torch.float32, torch.float32, [40, 96]),  # f32 storage
        ("nf4", torch.uint8, torch.float16, [40, 96]),  # f16 output
        ("nf4", torch.uint8, torch.bfloat16, [3, 31]),  # odd element count
    ],
)
def test_unsupported_combinations_fall_back_to_the_tensor_program(gaudi, quant_type, storage, dtype, shape):
    setup = gaudi(version="1.22.0")
    packed, absmax = REF["quantize_4bit"](torch.randn(shape), 64, quant_type, torch.uint8)
    packed = packed.reshape(-1).view(storage).reshape(-1, 1)
    got = KERNELS["dequantize_4bit"](packed, absmax, 64, quant_type, shape, dtype)
    assert setup.calls == []
    assert _same(got, REF["dequantize_4bit"](packed, absmax, 64, quant_type, shape, dtype))


def test_gaudi_op_path_traces_into_the_graph(gaudi):
    gaudi(version="1.21.0", op_order_swapped=True)
    W, packed, absmax = _case_4bit()
    gm, _ = _check_graph("dequantize_4bit", (packed, absmax, 64, "nf4", [40, 96], torch.float32))
    targets = [str(n.target) for n in gm.graph.nodes if n.op == "call_function"]
    assert "hpu.dequantize_nf4.default" in targets
    assert any("__rshift__" in t for t in targets) and any("__lshift__" in t for t in targets)  # the swap


def test_unknown_version_keeps_the_tensor_program(gaudi):
    setup = gaudi(version=None)  # the bridge without habana-torch-plugin metadata: order unknown
    W, packed, absmax = _case_4bit()
    KERNELS["dequantize_4bit"](packed, absmax, 64, "nf4", [40, 96], torch.float32)
    assert setup.calls == [] and _gaudi.gaudi_ops().dequantize_nf4 is None


# ----------------------------------------------------------------------- detection and loading

GAUDI = _platforms.Runtime("2.13.0", None, None, {"hpu": "Intel Gaudi"})  # the hpu device alone


@standin_only
def test_detection_without_gaudi_software():
    ok, why = bnb_hpu.detect()
    assert not ok and "habana_frameworks.torch cannot be imported" in why and "1.21" in why
    assert bnb_hpu.check_runtime(GAUDI) == why
    assert bnb_hpu.explain(_platforms.Runtime("2.13.0", None, None, {"cpu": "CPU"})) == (
        f"no hpu device present: {why}",
        None,
    )


def test_detection_with_gaudi_software(gaudi):
    gaudi(version="1.22.0")
    assert bnb_hpu.detect() == (True, "")
    assert bnb_hpu.check_runtime(GAUDI) is None


def test_detection_without_a_device(gaudi):
    gaudi(available=False)
    ok, why = bnb_hpu.detect()
    assert not ok and "torch.hpu.is_available() is False" in why
    assert bnb_hpu.check_runtime(GAUDI) == why


@pytest.mark.parametrize("version", ["1.20.0", "1.19.2"])
def test_check_runtime_names_the_minimum_and_the_fix(gaudi, version):
    gaudi(version=version)
    problem = bnb_hpu.check_runtime(GAUDI)
    assert f"{version} is older than 1.21" in problem and "Intel's installer" in problem


def test_check_runtime_without_plugin_metadata(gaudi):
    gaudi(version=None)
    assert "habana-torch-plugin is not installed" in bnb_hpu.check_runtime(GAUDI)


def _hpu_entry_point():
    eps = [ep for ep in importlib.metadata.entry_points(group=_platforms.ENTRY_POINT_GROUP) if ep.name == "hpu"]
    assert eps, "bitsandbytes-hpu's entry point is not installed"
    return eps[0]


def test_loader_registers_the_hpu_kernels(gaudi):
    gaudi(version="1.22.0")
    result = _platforms.load(entry_points=[_hpu_entry_point()], runtime=GAUDI, env={})
    try:
        (rec,) = [r for r in result.records if r.platform == "hpu"]
        assert rec.status == "loaded", rec
        assert rec.ops == sorted(KERNELS) and rec.build_info["gaudi_software"] == "1.22.0"
        assert result.implementation("dequantize_4bit", "hpu") == "hpu"
        assert result.implementation("int8_linear_matmul", "hpu") == "reference"
    finally:
        result.close()


def test_loader_skips_old_gaudi_software_with_the_fix(gaudi):
    gaudi(version="1.20.0")
    with pytest.warns(_platforms.PlatformWarning, match="older than 1.21"):
        result = _platforms.load(entry_points=[_hpu_entry_point()], runtime=GAUDI, env={})
    (rec,) = [r for r in result.records if r.platform == "hpu"]
    assert rec.status == "skipped" and "Intel's installer" in rec.reason
    assert result.implementation("dequantize_4bit", "hpu") == "reference"


def test_meta_detection_loads_the_gaudi_bridge(gaudi):
    # Gaudi software without device autoloading: torch.hpu appears once the bridge is imported.
    assert "hpu" not in _platforms.detect_runtime().devices
    gaudi(version="1.22.0")
    assert not hasattr(torch, "hpu")
    assert _platforms.detect_runtime().devices["hpu"] == "Intel Gaudi"


@standin_only
def test_report_explains_why_the_hpu_wheel_is_unused():
    from bitsandbytes.__main__ import _explain_skips

    rec = _platforms.PlatformRecord("hpu", "hpu", "skipped", "no hpu device present", "bitsandbytes-hpu", "0")
    (out,) = _explain_skips([rec.as_dict()], _platforms.Runtime("2.13.0", None, None, {"cpu": "CPU"}))
    assert out["reason"].startswith("no hpu device present: habana_frameworks.torch cannot be imported")
    assert "1.21 or newer" in out["reason"]
