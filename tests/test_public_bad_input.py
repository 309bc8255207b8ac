"""Bad input at the public layer (functional, nn, optim) gets an error that names the argument,
where it had been accepted and given wrong values, or failed later with an error that names
nothing. Each case here was found accepted or unclear; the op-level checks are in
tests/test_ops_bad_input.py."""

from __future__ import annotations

import copy

import pytest
import torch

import bitsandbytes as bnb
import bitsandbytes.functional as F
from bitsandbytes.functional import QuantState
from bitsandbytes.nn import Int8Params, Linear4bit, Linear8bitLt, LinearNF4, Params4bit

# -- serialized 4-bit and 8-bit states -------------------------------------------------------------


def test_nested_state_without_nested_absmax_is_refused() -> None:
    src = LinearNF4(64, 16).to("cpu")  # compress_statistics=True: a nested absmax
    sd = src.state_dict()
    sd.pop("weight.nested_absmax")
    with pytest.raises(ValueError, match="lacks the 'nested_absmax' item"):
        LinearNF4(64, 16).load_state_dict(sd)
    q, s = F.quantize_4bit(torch.randn(16, 64), quant_type="nf4", compress_statistics=True)
    d = s.as_dict(packed=True)
    d.pop("nested_absmax")
    with pytest.raises(ValueError, match="lacks the 'nested_absmax' item"):
        QuantState.from_dict(d, "cpu")


def test_integer_absmax_without_nested_statistics_is_refused() -> None:
    q, s = F.quantize_4bit(torch.randn(16, 64), quant_type="nf4", compress_statistics=True)
    lost = QuantState(absmax=s.absmax, shape=s.shape, dtype=s.dtype, blocksize=64, quant_type="nf4", code=s.code)
    with pytest.raises(ValueError, match="must be\\s+floating point, got torch.uint8"):
        F.dequantize_4bit(q, lost)
    d = s.as_dict()
    for k in [k for k in d if k.startswith("nested_")]:
        d.pop(k)
    with pytest.raises(ValueError, match="'absmax' of a non-nested state must be torch.float32"):
        QuantState.from_dict(d, "cpu")


@pytest.mark.parametrize("offset", [float("nan"), float("inf")])
def test_non_finite_nested_offset_is_refused(offset) -> None:
    _, s = F.quantize_4bit(torch.randn(16, 64), quant_type="nf4", compress_statistics=True)
    with pytest.raises(ValueError, match="'nested_offset' must be a finite number"):
        QuantState.from_dict({**s.as_dict(), "nested_offset": offset}, "cpu")


def _scb_state() -> dict:
    return Linear8bitLt(64, 16, has_fp16_weights=False).to("cpu").state_dict()


@pytest.mark.parametrize(
    "scb",
    [lambda s: s[:1], lambda s: s[0], lambda s: s.int(), lambda s: s[:-1], lambda s: s.view(16, 1)],
    ids=["one", "0-d", "int", "short", "column"],
)
def test_linear8bitlt_refuses_a_bad_scb(scb) -> None:
    sd = _scb_state()
    sd["SCB"] = scb(sd["SCB"])
    with pytest.raises(RuntimeError, match="SCB must be a floating-point tensor of shape \\(16,\\)"):
        Linear8bitLt(64, 16, has_fp16_weights=False).to("cpu").load_state_dict(sd)


def test_linear8bitlt_needs_scb_beside_int8_codes() -> None:
    sd = _scb_state()
    sd.pop("SCB")
    with pytest.raises(RuntimeError, match='Missing key\\(s\\) in state_dict: "SCB"'):
        Linear8bitLt(64, 16, has_fp16_weights=False).to("cpu").load_state_dict(sd)
    layer = Linear8bitLt(64, 16, has_fp16_weights=False).to("cpu")
    assert layer.load_state_dict(sd, strict=False).missing_keys == ["SCB"]


def test_float_checkpoint_into_a_quantized_linear8bitlt_is_refused() -> None:
    dense = torch.nn.Linear(64, 16)
    with pytest.raises(RuntimeError, match="weight is torch.float32 but this Linear8bitLt is already quantized"):
        Linear8bitLt(64, 16, has_fp16_weights=False).to("cpu").load_state_dict(dense.state_dict())
    # Before the move to a device the layer still holds floats and takes them.
    layer = Linear8bitLt(64, 16, has_fp16_weights=False)
    layer.load_state_dict(dense.state_dict())
    assert torch.equal(layer.weight.data, dense.weight.data)


# -- packed data and statistics that belong to other data ----------------------------------------------


def test_float_weight_beside_4bit_statistics_is_refused() -> None:
    w = torch.randn(16, 64)
    q, s = F.quantize_4bit(w, quant_type="nf4")
    with pytest.raises(ValueError, match="B holds 4096 packed bytes but shapeB \\[16, 64\\] needs 512"):
        bnb.matmul_4bit(torch.randn(2, 64), w.t(), s)
    with pytest.raises(ValueError, match="A holds 4096 packed bytes"):
        Params4bit.from_prequantized(w, s.as_dict(packed=True), device="cpu")


def test_absmax_of_another_blocksize_is_refused() -> None:
    w = torch.randn(16, 128)
    q, s = F.quantize_4bit(w, blocksize=64, quant_type="nf4")
    with pytest.raises(ValueError, match="absmax has 32 entries but shape \\[16, 128\\] with blocksize 128 needs 16"):
        F.dequantize_4bit(q, absmax=s.absmax, out=torch.empty(16, 128), blocksize=128, quant_type="nf4")
    q8, s8 = F.quantize_blockwise(torch.randn(4096 * 2), blocksize=256)
    with pytest.raises(ValueError, match="absmax has 32 entries but A with blocksize 4096 needs 2"):
        F.dequantize_blockwise(q8, absmax=s8.absmax)  # the default blocksize, 4096


def test_quantize_fills_only_matching_absmax_and_out() -> None:
    A = torch.randn(8, 64)
    with pytest.raises(TypeError, match="out must have dtype torch.float32, got torch.int32"):
        F.quantize_4bit(A, absmax=torch.empty(8, dtype=torch.int32), quant_type="nf4")
    with pytest.raises(ValueError, match="out must have shape \\(256, 1\\), got \\(256, 3\\)"):
        F.quantize_4bit(A, out=torch.empty(256, 3, dtype=torch.uint8), quant_type="nf4")
    with pytest.raises(ValueError, match="cannot be filled with compress_statistics=True"):
        F.quantize_4bit(A, absmax=torch.empty(8), compress_statistics=True)
    B = torch.randn(4, 300)
    with pytest.raises(ValueError, match="out must have shape \\(5,\\), got \\(3, 5\\)"):
        F.quantize_blockwise(B, blocksize=256, absmax=torch.empty(3, 5))
    with pytest.raises(ValueError, match="cannot be filled with nested=True"):
        F.quantize_blockwise(B, blocksize=256, absmax=torch.empty(5), nested=True)
    absmax, out = torch.empty(5), torch.empty(4, 300, dtype=torch.uint8)
    q, s = F.quantize_blockwise(B, blocksize=256, absmax=absmax, out=out)
    assert q is out and s.absmax is absmax and absmax.abs().sum() > 0


def test_out_arguments_are_checked_before_the_copy() -> None:
    A = torch.randint(-127, 128, (4, 32), dtype=torch.int32)
    rows, cols = torch.rand(4) * 10, torch.rand(32) * 10
    with pytest.raises(TypeError, match="out must have dtype torch.float16, got torch.int8"):
        F.int8_mm_dequant(A, rows, cols, out=torch.empty(4, 32, dtype=torch.int8))
    layer = Linear4bit(64, 16, quant_type="nf4").to("cpu")
    w = layer.weight
    with pytest.raises(ValueError, match="out must have shape \\(2, 16\\), got \\(2, 6, 5\\)"):
        bnb.matmul_4bit(torch.randn(2, 64), w.t(), w.quant_state, out=torch.empty(2, 6, 5))
    layer8 = Linear8bitLt(64, 16, has_fp16_weights=False).to("cpu")
    with pytest.raises(TypeError, match="out must have dtype torch.float32, got torch.float16"):
        bnb.matmul(torch.randn(2, 64), layer8.weight, out=torch.empty(2, 16, dtype=torch.float16), state=layer8.state)


# -- module construction and input ----------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.int8, "bfloat16", torch.float64])
def test_linear4bit_compute_dtype_is_checked(dtype) -> None:
    with pytest.raises(ValueError, match="Linear4bit: compute_dtype must be None, torch.float16"):
        Linear4bit(64, 16, compute_dtype=dtype)


@pytest.mark.parametrize("x", [torch.randint(0, 3, (2, 64)), torch.tensor(1.0)], ids=["int", "0-d"])
def test_quantized_linear_input_is_checked(x) -> None:
    layers = [Linear4bit(64, 16).to("cpu"), Linear8bitLt(64, 16, has_fp16_weights=False).to("cpu").eval()]
    for layer in layers:
        name = type(layer).__name__
        what = "must be a floating-point tensor" if x.dim() else "last dimension must be in_features=64"
        with pytest.raises((TypeError, ValueError), match=f"{name}: the input('s)? {what}"):
            layer(x)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(threshold=-1.0), "threshold must be a number >= 0"),
        (dict(threshold=float("nan")), "threshold must be a number >= 0"),
        (dict(threshold=None), "threshold must be a number >= 0"),
        (dict(has_fp16_weights="no"), "has_fp16_weights must be a bool"),
    ],
)
def test_linear8bitlt_arguments_are_checked(kwargs, message) -> None:
    with pytest.raises((TypeError, ValueError), match=message):
        Linear8bitLt(64, 16, **kwargs)


# -- optimizers ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", [bnb.optim.Adam8bit, bnb.optim.Adam, bnb.optim.Lion8bit, bnb.optim.AdEMAMix8bit])
def test_optimizer_steps_a_transposed_parameter(cls) -> None:
    base = torch.randn(100, 60)
    p, ref = torch.nn.Parameter(base.t()), torch.nn.Parameter(base.t().contiguous())
    opt, opt_ref = cls([p], lr=0.1), cls([ref], lr=0.1)
    for _ in range(2):
        g = torch.randn(60, 100)
        p.grad, ref.grad = g.clone(), g.clone()
        opt.step()
        opt_ref.step()
    assert torch.equal(p.detach(), ref.detach())


@pytest.mark.parametrize(
    "cls, betas, need",
    [
        (bnb.optim.Adam, (0.9,), 2),
        (bnb.optim.Adam8bit, "0.9", 2),
        (bnb.optim.Lion, (0.9,), 2),
        (bnb.optim.AdEMAMix, (0.9, 0.999), 3),
    ],
)
def test_too_few_betas_are_refused_at_construction(cls, betas, need) -> None:
    with pytest.raises(ValueError, match=f"Invalid betas: .* needs {need} values"):
        cls([torch.nn.Parameter(torch.randn(10))], betas=betas)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(alpha=float("nan")), "Invalid alpha value"),
        (dict(alpha=-5.0), "Invalid alpha value"),
        (dict(t_alpha=-1), "Invalid t_alpha value"),
        (dict(t_beta3=float("inf")), "Invalid t_beta3 value"),
    ],
)
def test_ademamix_schedule_arguments_are_checked(kwargs, message) -> None:
    with pytest.raises(ValueError, match=message):
        bnb.optim.AdEMAMix8bit([torch.nn.Parameter(torch.randn(10))], **kwargs)


@pytest.mark.parametrize(
    "call, error, message",
    [
        (lambda m, p: m.override_config(p, "optim_bit", 32), ValueError, "unknown setting\\(s\\) \\['optim_bit'\\]"),
        (lambda m, p: m.override_config(p, "optim_bits"), ValueError, "key 'optim_bits' was given without a value"),
        (lambda m, p: m.override_config([1, "x"], "optim_bits", 32), TypeError, "parameters must be tensors"),
        (lambda m, p: m.override_config(p, key_value_dict={"betas": (1.5, 0.9)}), ValueError, "betas must be"),
        (lambda m, p: m.override_config(p, "weight_decay", -1.0), ValueError, "weight_decay must be a finite"),
        (lambda m, p: m.override_config(p, "optim_bits", 16), ValueError, "optim_bits must be 8 or 32"),
        (
            lambda m, p: m.register_module_override(torch.nn.Linear(2, 2), "weight", {"optim_bits ": 32}),
            ValueError,
            "register_module_override: unknown setting",
        ),
    ],
)
def test_overrides_are_checked(optim_manager, call, error, message) -> None:
    p = torch.nn.Parameter(torch.randn(5000))
    with pytest.raises(error, match=message):
        call(optim_manager, p)
    assert optim_manager.pid2config == {} and optim_manager.module_weight_config_triple == []


def test_overrides_still_apply(optim_manager) -> None:
    p = torch.nn.Parameter(torch.randn(5000))
    optim_manager.override_config(p, "optim_bits", 32)
    opt = bnb.optim.Adam8bit([p])
    p.grad = torch.randn_like(p)
    opt.step()
    assert opt.state[p]["state1"].dtype == torch.float32


def test_optimizer_state_of_another_shape_is_refused() -> None:
    p = torch.nn.Parameter(torch.randn(64, 100))
    opt = bnb.optim.Adam8bit([p])
    p.grad = torch.randn_like(p)
    opt.step()
    sd = copy.deepcopy(opt.state_dict())
    q = torch.nn.Parameter(torch.randn(100, 64))  # the same size, another shape
    with pytest.raises(ValueError, match="state1 has shape \\(64, 100\\), but its parameter has shape \\(100, 64\\)"):
        bnb.optim.Adam8bit([q]).load_state_dict(sd)
    bnb.optim.Adam8bit([torch.nn.Parameter(torch.randn(64, 100))]).load_state_dict(sd)


@pytest.mark.parametrize(
    "param", [lambda w: Int8Params(w, requires_grad=True), lambda w: Params4bit(w, requires_grad=True)]
)
def test_a_parameter_requiring_gradients_is_not_quantized_into_integer_codes(param) -> None:
    with pytest.raises(RuntimeError, match="requires gradients cannot be quantized into .* requires_grad=False"):
        param(torch.randn(4, 64)).to("cpu")
    # A float storage holds the packed bytes in a floating tensor, which may keep requires_grad.
    w = Params4bit(torch.randn(4, 64), requires_grad=True, quant_storage=torch.bfloat16).to("cpu")
    assert w.requires_grad and w.dtype == torch.bfloat16


def test_other_int8_codes_without_scales_do_not_take_the_old_row_scales():
    torch.manual_seed(0)
    layer = Linear8bitLt(64, 32, bias=False, has_fp16_weights=False).to("cpu")
    x = torch.randn(3, 64)
    layer(x)  # the codes and their row scales now live in layer.state
    other = torch.randint(-127, 128, (32, 64), dtype=torch.int8, generator=torch.Generator().manual_seed(1))
    layer.weight = Int8Params(other, requires_grad=False, has_fp16_weights=False, CB=other)
    with pytest.raises(bnb.nn.modules.NotQuantizedError, match="SCB"):
        layer(x)  # the state's scales belong to other codes: a wrong answer if applied


@pytest.mark.parametrize("length", [1, 17])
def test_gemm_4bit_refuses_a_bias_of_another_length(length: int) -> None:
    # A one-entry bias would otherwise broadcast over every output feature.
    q, s = F.quantize_4bit(torch.randn(16, 64), quant_type="nf4")
    with pytest.raises(ValueError, match=f"bias must have shape \\(16,\\), got \\({length},\\)"):
        torch.ops.bitsandbytes.gemm_4bit(torch.randn(2, 64), q, [16, 64], s.absmax, 64, "nf4", torch.zeros(length))
