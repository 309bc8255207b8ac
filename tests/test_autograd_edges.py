"""torch.func transforms and autograd edge cases on the quantized layers and products.

Each result is compared by value with the same computation on a dense ``nn.Linear`` holding the
dequantized weight (or, for LLM.int8()'s inference product, which also rounds its input, with the
eager layer itself): ``functional_call``, ``grad``/``vjp``/``jacrev``/``jvp``, ``vmap``,
forward-mode AD, double backward, ``retain_graph``, module hooks, checkpointing, partial
``requires_grad`` and ``no_grad`` sections. Float64 is not a compute dtype of the kernels: the
products say so.
"""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.autograd.forward_ad as fwAD
from torch import nn
from torch.func import functional_call, grad, jacrev, jvp, vjp, vmap
from torch.utils.checkpoint import checkpoint

import bitsandbytes as bnb
import bitsandbytes.functional as F
from bitsandbytes.nn._params import DECODE_PLAN_KEY, weight_caches

IN, OUT = 128, 64
KINDS = ["nf4", "fp4", "nf4-flat", "int8-frozen", "int8-train", "int8-eval"]
"""Layers: NF4/FP4 with double quantization, NF4 without; Linear8bitLt with an int8 weight
(has_fp16_weights=False) in training mode (dequantized product) and in eval mode (LLM.int8()
product, input rounded to int8), and with a trainable 16-bit weight."""

TOL = {torch.float32: 1e-5, torch.bfloat16: 3e-2, torch.float16: 4e-3}


def _close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype, scale: float = 1.0) -> None:
    torch.testing.assert_close(actual.float(), expected.float(), rtol=TOL[dtype], atol=TOL[dtype] * scale)


def _layer(kind: str, dtype: torch.dtype = torch.float32, bias: bool = True) -> tuple[nn.Module, nn.Linear]:
    """A quantized layer and a dense ``nn.Linear`` (in ``dtype``) holding its dequantized weight."""
    torch.manual_seed(0)
    src = nn.Linear(IN, OUT, bias=bias)
    if kind.startswith("int8"):
        layer = bnb.nn.Linear8bitLt(IN, OUT, bias=bias, has_fp16_weights=kind == "int8-train")
        layer.load_state_dict(src.state_dict())
        layer = layer.to("cpu")
        CB, SCB, _ = F.int8_vectorwise_quant(src.weight.detach().to(torch.float16))
        W = CB.float() * SCB[:, None] / 127
        if kind == "int8-eval":
            layer.eval()
    else:
        quant_type = kind[:3]
        layer = bnb.nn.Linear4bit(
            IN, OUT, bias=bias, compute_dtype=dtype, compress_statistics=kind != "nf4-flat", quant_type=quant_type
        )
        layer.load_state_dict(src.state_dict())
        layer = layer.to("cpu")
        W = F.dequantize_4bit(layer.weight.data, layer.weight.quant_state)
    dense = nn.Linear(IN, OUT, bias=bias, dtype=dtype)
    with torch.no_grad():
        dense.weight.copy_(W.to(dtype))
        if bias:
            dense.bias.copy_(src.bias.to(dtype))
    dense.weight.requires_grad_(False)
    return layer, dense


def _x(dtype: torch.dtype, *shape: int) -> torch.Tensor:
    torch.manual_seed(1)
    return torch.randn(*(shape or (4, IN)), dtype=dtype)


def _is_int8_product(kind: str) -> bool:
    """LLM.int8()'s inference product rounds its input too: its values are compared with the eager
    layer's, its derivatives (straight through that rounding) with the dense layer's."""
    return kind == "int8-eval"


# -- torch.func ---------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
def test_func_grad_vjp_jacrev_wrt_input(kind: str, dtype: torch.dtype) -> None:
    layer, dense = _layer(kind, dtype)
    x = _x(dtype)
    params = dict(layer.named_parameters())
    g = grad(lambda t: functional_call(layer, params, (t,)).float().sum())(x)
    _close(g, grad(lambda t: dense(t).float().sum())(x), dtype)

    out, pullback = vjp(layer, x)
    _close(out, layer(x), dtype, scale=4)
    cot = torch.randn_like(out)
    _close(pullback(cot)[0], vjp(dense, x)[1](cot)[0], dtype)

    J = jacrev(layer)(x[:1])
    assert J.shape == (1, OUT, 1, IN)
    _close(J, jacrev(dense)(x[:1]), dtype)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=["f32", "bf16", "f16"])
def test_vmap_matches_loop(kind: str, dtype: torch.dtype) -> None:
    layer, dense = _layer(kind, dtype)
    x = _x(dtype, 3, 2, IN)
    with torch.no_grad():
        layer(x[0, :1])  # an eager call first: a kept decoding runner must not serve a batched input
        layer(x[0, :1])
        batched = vmap(layer)(x)
        loop = torch.stack([layer(x[i]) for i in range(x.shape[0])])
        rows = vmap(layer)(x[:, 0])  # vmap over single rows (the decoding shape)
    assert batched.shape == (3, 2, OUT) and batched.dtype == dtype
    _close(batched, loop, dtype, scale=4)
    _close(rows, loop[:, 0], dtype, scale=4)
    if not _is_int8_product(kind):
        _close(batched, dense(x), dtype, scale=4)


@pytest.mark.parametrize("kind", ["nf4", "int8-frozen", "int8-eval"])
def test_vmap_keeps_decode_runner_tries(kind: str) -> None:
    """vmap calls neither use nor spend a layer's tries at preparing its inference runner."""
    layer, _ = _layer(kind)
    x = _x(torch.float32, 6, 1, IN)
    with torch.no_grad():
        for _ in range(6):
            vmap(layer)(x)
        ref = layer(x[0])
        layer(x[0])
    holder = weight_caches(layer.weight) if kind == "nf4" else layer.__dict__
    builds = [k for k in holder if k.endswith("_builds")]
    assert all(holder[k] <= 2 for k in builds)
    if kind == "nf4" and DECODE_PLAN_KEY in holder:
        torch.testing.assert_close(layer(x[0]), ref)


@pytest.mark.parametrize("kind", KINDS)
def test_vmap_per_sample_bias_grads(kind: str) -> None:
    layer, dense = _layer(kind)
    x = _x(torch.float32, 5, IN)
    params = dict(layer.named_parameters())

    def loss(b: torch.Tensor, row: torch.Tensor) -> torch.Tensor:
        return (functional_call(layer, {**params, "bias": b}, (row[None],)) ** 2).sum()

    def ref(b: torch.Tensor, row: torch.Tensor) -> torch.Tensor:
        return (nn.functional.linear(row[None], dense.weight, b) ** 2).sum()

    got = vmap(grad(loss), in_dims=(None, 0))(params["bias"].detach(), x)
    assert got.shape == (5, OUT)
    if _is_int8_product(kind):  # 2 * y, y rounded through the int8 input
        expected = torch.stack([2 * layer(x[i : i + 1])[0] for i in range(5)]).detach()
    else:
        expected = vmap(grad(ref), in_dims=(None, 0))(dense.bias.detach(), x)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["nf4", "fp4", "int8-frozen", "int8-eval"])
def test_functional_call_substituted_bias(kind: str) -> None:
    layer, dense = _layer(kind)
    x = _x(torch.float32)
    bias = torch.randn(OUT)
    out = functional_call(layer, {**dict(layer.named_parameters()), "bias": bias}, (x,))
    expected = layer(x) - layer.bias if _is_int8_product(kind) else dense(x) - dense.bias
    torch.testing.assert_close(out, expected.detach() + bias, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(layer(x), layer(x))  # the layer's own bias is back in place
    assert layer.bias.dtype == torch.float32


class _LoRA(nn.Module):
    """A LoRA-style adapter around a quantized base layer."""

    def __init__(self, base: nn.Module, rank: int = 4) -> None:
        super().__init__()
        self.base = base
        self.lora_A = nn.Parameter(torch.randn(rank, IN) * 0.1)
        self.lora_B = nn.Parameter(torch.randn(OUT, rank) * 0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x).clone() + x @ self.lora_A.t() @ self.lora_B.t()


@pytest.mark.parametrize("kind", ["nf4", "fp4", "nf4-flat", "int8-frozen"])
def test_lora_wrapper_grads_via_functional_call(kind: str) -> None:
    layer, dense = _layer(kind)
    torch.manual_seed(2)
    model, ref = _LoRA(layer), _LoRA(dense)
    with torch.no_grad():
        ref.lora_A.copy_(model.lora_A)
        ref.lora_B.copy_(model.lora_B)
    x = _x(torch.float32)
    adapters = {"lora_A": model.lora_A.detach(), "lora_B": model.lora_B.detach()}

    def loss(m: nn.Module):
        return lambda p: (functional_call(m, p, (x,)) ** 2).sum()

    got = grad(loss(model))(adapters)
    expected = grad(loss(ref))(adapters)
    for k in adapters:
        torch.testing.assert_close(got[k], expected[k], rtol=1e-5, atol=1e-4)
    # the eager backward gives the same
    (model(x) ** 2).sum().backward()
    torch.testing.assert_close(model.lora_B.grad, expected["lora_B"], rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("frozen", [False, True], ids=["bias-trainable", "frozen"])
def test_func_jvp(kind: str, frozen: bool) -> None:
    layer, dense = _layer(kind)
    layer.bias.requires_grad_(not frozen)
    x = _x(torch.float32)
    t = torch.randn_like(x)
    primal, tangent = jvp(layer, (x,), (t,))
    torch.testing.assert_close(primal, layer(x), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(tangent, t @ dense.weight.t(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("frozen", [False, True], ids=["bias-trainable", "frozen"])
def test_forward_ad_dual_tensors(kind: str, frozen: bool) -> None:
    """A frozen layer used to drop the tangent silently (the kernels read the primal only)."""
    layer, dense = _layer(kind)
    layer.bias.requires_grad_(not frozen)
    x = _x(torch.float32)
    t = torch.randn_like(x)
    with torch.no_grad():
        layer(x[:1])
        layer(x[:1])  # a kept decoding runner must not serve a dual input either
    for rows in (x, x[:1]):
        with fwAD.dual_level():
            out = layer(fwAD.make_dual(rows, t[: rows.shape[0]]))
            primal, tangent = fwAD.unpack_dual(out)
        assert tangent is not None
        torch.testing.assert_close(tangent, t[: rows.shape[0]] @ dense.weight.t(), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(primal, layer(rows), rtol=1e-5, atol=1e-5)


def test_forward_ad_dual_bias_matmul_4bit() -> None:
    layer, dense = _layer("nf4")
    x = _x(torch.float32)
    bias, tb = torch.randn(OUT), torch.randn(OUT)
    with fwAD.dual_level():
        out = bnb.matmul_4bit(x, layer.weight.t(), layer.weight.quant_state, bias=fwAD.make_dual(bias, tb))
        primal, tangent = fwAD.unpack_dual(out)
    torch.testing.assert_close(tangent, tb.expand(4, OUT))
    torch.testing.assert_close(primal, x @ dense.weight.t() + bias, rtol=1e-5, atol=1e-5)


# -- double backward ----------------------------------------------------------------------------


def _second_order(module: nn.Module, x0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x = x0.clone().requires_grad_()
    y = module(x)
    loss = (y.float() ** 2).sum() + (x.float() ** 3).sum()
    (g,) = torch.autograd.grad(loss, x, create_graph=True)
    (g2,) = torch.autograd.grad(g.float().sum(), x)
    return g.detach(), g2


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=["f32", "bf16", "f16"])
def test_double_backward_matches_dense(kind: str, dtype: torch.dtype) -> None:
    """The second derivative used to miss the quantized layer's term (zero, with a torch warning)."""
    layer, dense = _layer(kind, dtype)
    x = _x(dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "autograd kernel was not registered" fallback
        g, g2 = _second_order(layer, x)
    g_ref, g2_ref = _second_order(dense, x)
    scale = 40 if dtype != torch.float32 else 4  # |g2| ~ 20
    _close(g2, g2_ref, dtype, scale=scale)
    if not _is_int8_product(kind):
        _close(g, g_ref, dtype, scale=scale)


def test_double_backward_functional_products() -> None:
    layer4, dense4 = _layer("nf4")
    layer8, dense8 = _layer("int8-frozen")
    state = bnb.MatmulLtState()
    state.has_fp16_weights = False
    state.CB, state.SCB = layer8.weight.CB, layer8.weight.SCB
    for train in (True, False):
        state.is_training = train
        for product, dense in (
            (lambda a: bnb.matmul_4bit(a, layer4.weight.t(), layer4.weight.quant_state), dense4),
            (lambda a: bnb.matmul(a, layer8.weight, state=state), dense8),
        ):
            x = _x(torch.float32).requires_grad_()
            (g,) = torch.autograd.grad((product(x) ** 2).sum(), x, create_graph=True)
            (h,) = torch.autograd.grad(g.sum(), x)
            W = dense.weight  # d/dx sum(2 x W^T W) = 2 (W^T W) 1, on every row
            torch.testing.assert_close(h, (2 * W.t() @ W).sum(1).expand(4, IN), rtol=1e-4, atol=1e-4)


def test_double_backward_hessian_vector_product_4bit() -> None:
    layer, dense = _layer("fp4")
    x = _x(torch.float32, 2, IN)
    v = torch.randn_like(x)

    def f(m: nn.Module):
        return lambda t: (torch.tanh(m(t)) ** 2).sum()

    def hvp(m: nn.Module) -> torch.Tensor:
        xi = x.clone().requires_grad_()
        (g,) = torch.autograd.grad(f(m)(xi), xi, create_graph=True)
        return torch.autograd.grad((g * v).sum(), xi)[0]

    expected = hvp(dense)
    assert expected.abs().max() > 0.1
    torch.testing.assert_close(hvp(layer), expected, rtol=1e-4, atol=1e-5)


# -- first-order autograd edge cases (already correct) -------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_retain_graph_two_backwards(kind: str) -> None:
    layer, dense = _layer(kind)
    x = _x(torch.float32).requires_grad_()
    y = layer(x)
    y.sum().backward(retain_graph=True)
    first = x.grad.clone()
    y.sum().backward()
    torch.testing.assert_close(x.grad, 2 * first)
    xr = _x(torch.float32).requires_grad_()
    dense(xr).sum().backward()
    torch.testing.assert_close(first, xr.grad, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_backward_and_forward_pre_hooks(kind: str) -> None:
    layer, dense = _layer(kind)
    seen = {}

    def backward_hook(module, grad_input, grad_output):
        seen["grad_input"] = grad_input[0].clone()
        seen["grad_output"] = grad_output[0].clone()

    handles = [
        layer.register_full_backward_hook(backward_hook),
        layer.register_forward_pre_hook(lambda module, args: (args[0] * 2,)),
    ]
    x0 = _x(torch.float32)
    try:
        x = x0.clone().requires_grad_()
        y = layer(x)
        (y**2).sum().backward()
    finally:
        for h in handles:
            h.remove()
    torch.testing.assert_close(y, layer(x0 * 2))
    xr = x0.clone().requires_grad_()
    (dense(xr * 2) ** 2).sum().backward()
    if not _is_int8_product(kind):
        torch.testing.assert_close(x.grad, xr.grad, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(seen["grad_output"], 2 * y.detach())
    torch.testing.assert_close(seen["grad_input"], seen["grad_output"] @ dense.weight, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("reentrant", [True, False], ids=["reentrant", "non-reentrant"])
def test_checkpoint(kind: str, reentrant: bool) -> None:
    layer, dense = _layer(kind)
    x = _x(torch.float32).requires_grad_()
    y = checkpoint(layer, x, use_reentrant=reentrant)
    (y**2).sum().backward()
    torch.testing.assert_close(y, layer(x))
    xr = _x(torch.float32).requires_grad_()
    (layer(xr) ** 2).sum().backward()
    torch.testing.assert_close(x.grad, xr.grad)
    grads_bias = layer.bias.grad.clone()
    assert torch.isfinite(grads_bias).all()


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
def test_requires_grad_on_bias_only(kind: str, dtype: torch.dtype) -> None:
    layer, dense = _layer(kind, dtype)
    x = _x(dtype)
    y = layer(x)
    (y.float() ** 2).sum().backward()
    assert layer.bias.grad is not None and layer.bias.grad.dtype == layer.bias.dtype
    if kind != "int8-train":
        assert layer.weight.grad is None
    torch.testing.assert_close(layer.bias.grad.float(), 2 * y.detach().float().sum(0), rtol=TOL[dtype], atol=0.1)
    if not _is_int8_product(kind):
        (dense(x).float() ** 2).sum().backward()
        _close(layer.bias.grad, dense.bias.grad, dtype, scale=100)


@pytest.mark.parametrize("kind", KINDS)
def test_input_grads_with_no_grad_sections(kind: str) -> None:
    layer, dense = _layer(kind)
    layer.requires_grad_(False)
    x = _x(torch.float32).requires_grad_()
    with torch.no_grad():
        frozen = layer(x)
    assert not frozen.requires_grad
    (frozen * layer(x)).sum().backward()
    torch.testing.assert_close(x.grad, frozen @ dense.weight, rtol=1e-5, atol=1e-4)


# -- float64 -------------------------------------------------------------------------------------


def test_float64_is_refused_clearly() -> None:
    """The kernels compute in f16/bf16/f32: gradcheck's float64 input gets an error naming it."""
    layer4, _ = _layer("nf4")
    layer8, _ = _layer("int8-frozen")
    x = torch.randn(2, IN, dtype=torch.float64, requires_grad=True)
    with pytest.raises(TypeError, match="float64"):
        torch.autograd.gradcheck(lambda a: bnb.matmul_4bit(a, layer4.weight.t(), layer4.weight.quant_state), (x,))
    with pytest.raises(TypeError, match="float64"):
        torch.autograd.gradcheck(lambda a: bnb.matmul(a, layer8.weight, state=layer8.state), (x,))


def test_gradcheck_float32_linearity_4bit() -> None:
    """The 4-bit product is linear in its input: its Jacobian is the dequantized weight."""
    layer, dense = _layer("nf4")
    x = _x(torch.float32, 1, IN).requires_grad_()
    J = torch.autograd.functional.jacobian(lambda a: bnb.matmul_4bit(a, layer.weight.t(), layer.weight.quant_state), x)
    torch.testing.assert_close(J[0, :, 0], dense.weight)


@pytest.mark.parametrize("kind", ["nf4", "int8-frozen"])
def test_first_call_under_grad_with_bias_in_another_dtype(kind: str) -> None:
    """The first call of a layer whose bias is not yet in the compute dtype, made under
    torch.func.grad: the in-place bias conversion crashed torch (segfault); the bias is cast instead."""
    layer, dense = _layer(kind, torch.bfloat16)
    assert layer.bias.dtype == torch.float32
    x = _x(torch.bfloat16)
    g = grad(lambda t: layer(t).float().sum())(x)
    _close(g, grad(lambda t: dense(t).float().sum())(x), torch.bfloat16)
    assert layer.bias.dtype == torch.float32  # left as it was under the transform
    layer(x)
    assert layer.bias.dtype == torch.bfloat16  # the eager forward converts it, as established


# -- LLM.int8() state rules ----------------------------------------------------------------------


def test_accumulated_gradients_keep_the_int8_weight_of_the_first_call() -> None:
    """With ``has_accumulated_gradients`` a trainable 16-bit weight is not quantized again: later
    calls use the int8 codes already in the state."""
    torch.manual_seed(0)
    W, x = torch.randn(OUT, IN), torch.randn(4, IN)
    state = bnb.MatmulLtState()
    state.has_accumulated_gradients = True
    first = bnb.matmul(x, W, state=state)
    CB = state.CB
    assert CB is not None
    assert torch.equal(bnb.matmul(x, W * 2, state=state), first) and state.CB is CB
    fresh = bnb.MatmulLtState()  # without the flag the doubled weight is quantized on the call
    torch.testing.assert_close(bnb.matmul(x, W * 2, state=fresh), 2 * first, rtol=1e-5, atol=1e-5)


def test_outlier_pooler_pools_only_the_first_feature_width() -> None:
    from bitsandbytes.autograd._functions import GlobalOutlierPooler

    pool = GlobalOutlierPooler.get_instance()
    pool.initialize()
    try:
        pool.add_outliers(torch.tensor([5, 1]), 64)
        pool.add_outliers(torch.tensor([9, 2]), 32)  # another layer width: not pooled
        pool.add_outliers(torch.tensor([1, 3]), 64)
        assert pool.model_dim == 64
        got = pool.get_current_outlier_idx()
        assert got.dtype == torch.int64 and got.tolist() == [1, 3, 5]
    finally:
        pool.initialize()


def test_func_transform_outlier_columns_include_the_threshold() -> None:
    """Under torch.func an input column reaching the threshold exactly is an outlier column (kept
    in the input's precision), as in the eager LLM.int8() product."""
    layer, dense = _layer("int8-eval")
    layer.state.threshold = 2.0
    x = _x(torch.float32) * 0.01
    x[1, 5], x[2, 7] = 2.0, -2.0
    with torch.no_grad():
        eager = layer(x)
    primal, _ = jvp(layer, (x,), (torch.zeros_like(x),))
    torch.testing.assert_close(primal, eager, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(primal, dense(x), rtol=0.0, atol=2e-3)


def test_func_grad_reaches_a_trainable_16bit_weight() -> None:
    """torch.func.grad of a layer with a trainable 16-bit weight (quantized on every call) gives
    the weight the eager backward's gradient, straight through the quantization."""
    layer, _ = _layer("int8-train")
    x = _x(torch.float32)
    params = {k: v.detach() for k, v in layer.named_parameters()}
    got = grad(lambda p: functional_call(layer, p, (x,)).square().sum())(params)
    layer.zero_grad()
    layer(x).square().sum().backward()
    assert got["weight"].abs().sum() > 0
    torch.testing.assert_close(got["weight"], layer.weight.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got["bias"], layer.bias.grad, rtol=1e-5, atol=1e-5)
