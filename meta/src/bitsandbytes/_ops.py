"""The op interface: every ``bitsandbytes::`` operator, its schema and its fake kernel.

This module is the contract between the meta-package and the platform wheels. The schemas are
exactly those of the established release (code in the wild calls ``torch.ops.bitsandbytes.*``
directly). Platform wheels register device kernels for these ops; they never define ops.

``OP_INTERFACE_VERSION`` changes whenever a schema changes or an op is added or removed; a
platform wheel states which version it implements and the loader refuses any other.
"""

from __future__ import annotations

import functools
import inspect

import torch

from ._checks import (
    FLOAT_DTYPES,
    check,
    check_blocksize_4bit,
    check_dtype,
    check_gemm_4bit_t,
    check_has_dim,
    check_int8_weight_mm,
    check_nested_absmax,
    check_optimizer_args,
    check_out,
    check_output_dtype,
    check_positive_blocksize,
    check_quant_type,
    check_quantize_4bit,
    check_same_device,
    num_blocks,
    prod,
)

OP_INTERFACE_VERSION = 2
"""Version of the op set below. Platform wheels declare the version they were built against; the
loader accepts this one and version 1 (whose wheels lack only ``ADDED_IN_VERSION_2``)."""

NAMESPACE = "bitsandbytes"

SCHEMAS: dict[str, str] = {
    "int8_mixed_scaled_mm": "(Tensor A, Tensor CA, Tensor CB, Tensor SCA, Tensor SCB, "
    "Tensor? outlier_cols=None, Tensor? bias=None) -> (Tensor, Tensor?)",
    "int8_scaled_mm": "(Tensor A, Tensor B, Tensor row_stats, Tensor col_stats, "
    "Tensor? bias=None, ScalarType? dtype=None) -> Tensor",
    "int8_linear_matmul": "(Tensor A, Tensor B) -> Tensor",
    "int8_linear_matmul.out": "(Tensor A, Tensor B, Tensor! out) -> ()",
    "int8_vectorwise_quant": "(Tensor A, float threshold=0.0) -> (Tensor, Tensor, Tensor?)",
    "int8_vectorwise_dequant": "(Tensor A, Tensor stats) -> Tensor",
    "int8_mm_dequant": "(Tensor A, Tensor row_stats, Tensor col_stats, "
    "ScalarType? dtype=None, Tensor? bias=None) -> Tensor",
    "int8_double_quant": "(Tensor A, float threshold=0.0) -> (Tensor, Tensor, Tensor, Tensor, Tensor?)",
    "dequantize_4bit": "(Tensor A, Tensor absmax, int blocksize, str quant_type, int[] shape, "
    "ScalarType dtype) -> Tensor",
    "dequantize_4bit.out": "(Tensor A, Tensor absmax, int blocksize, str quant_type, int[] shape, "
    "ScalarType dtype, Tensor! out) -> ()",
    "quantize_4bit": "(Tensor A, int blocksize, str quant_type, ScalarType quant_storage) -> (Tensor, Tensor)",
    "gemm_4bit": "(Tensor A, Tensor B, int[] shapeB, Tensor absmax, int blocksize, str quant_type, "
    "Tensor? bias=None, Tensor? absmax_8bit=None, Tensor? absmax_code=None, "
    "Tensor? absmax_offset=None) -> Tensor",
    "dequantize_blockwise": "(Tensor A, Tensor absmax, Tensor code, int blocksize, ScalarType dtype) -> Tensor",
    "dequantize_blockwise.out": "(Tensor A, Tensor absmax, Tensor code, int blocksize, "
    "ScalarType dtype, Tensor! out) -> ()",
    "quantize_blockwise": "(Tensor A, Tensor code, int blocksize) -> (Tensor, Tensor)",
    "gemv_4bit": "(Tensor A, Tensor B, int[] shapeB, Tensor absmax, Tensor code, int blocksize) -> Tensor",
    "gemv_4bit.out": "(Tensor A, Tensor B, int[] shapeB, Tensor absmax, Tensor code, int blocksize, Tensor! out) -> ()",
    "optimizer_update_32bit": "(str optimizer_name, Tensor(a0!) g, Tensor(a1!) p, "
    "Tensor(a2!) state1, Tensor(a3!)? state2, Tensor(a4!)? unorm_vec, float max_unorm, "
    "float param_norm, float beta1, float beta2, float beta3, float alpha, float eps, "
    "float weight_decay, int step, float lr, float gnorm_scale, bool skip_zeros=False) -> ()",
    "optimizer_update_8bit_blockwise": "(str optimizer_name, Tensor(a0!) g, Tensor(a1!) p, "
    "Tensor(a2!) state1, Tensor(a3!)? state2, float beta1, float beta2, float beta3, "
    "float alpha, float eps, int step, float lr, Tensor(a4!) qmap1, Tensor(a5!)? qmap2, "
    "Tensor(a6!) absmax1, Tensor(a7!)? absmax2, float weight_decay, float gnorm_scale, "
    "bool skip_zeros=False) -> ()",
    # Added in interface version 2 (not in the established release): matmuls against a weight kept
    # quantized, for the fine-tuning paths. A @ (CB * SCB / 127)^T + bias; A @ (CB * SCB / 127);
    # A @ dequantize_4bit(B) for a 4-bit weight of shapeB = [N, K].
    "int8_weight_mm": "(Tensor A, Tensor CB, Tensor SCB, Tensor? bias=None) -> Tensor",
    "int8_weight_mm_t": "(Tensor A, Tensor CB, Tensor SCB) -> Tensor",
    "gemm_4bit_t": "(Tensor A, Tensor B, int[] shapeB, Tensor absmax, int blocksize, str quant_type) -> Tensor",
}

OP_NAMES: tuple[str, ...] = tuple(SCHEMAS)

ADDED_IN_VERSION_2: tuple[str, ...] = ("int8_weight_mm", "int8_weight_mm_t", "gemm_4bit_t")
"""Ops a platform wheel of interface version 1 does not know: the reference kernels serve them."""


_DISPATCH_KEYS = {"cpu": "CPU", "cuda": "CUDA", "xpu": "XPU", "hpu": "HPU", "mps": "MPS", "npu": "PrivateUse1"}


def dispatch_key(device_type: str) -> str | None:
    """The dispatch key under which ``device_type``'s kernels are registered (None: unknown)."""
    return _DISPATCH_KEYS.get(device_type)


# Whether any device's autocast is on, and the guard that excludes every autocast dispatch key
# (what torch's autocast wrappers hold while they run an op).
autocast_on = torch._C._is_any_autocast_enabled
no_autocast = torch._C._DisableAutocast


def impl(lib: torch.library.Library, op: str, device_type: str | None, fn) -> None:
    """Register ``fn`` as the kernel of ``op`` for ``device_type`` (None: every device).

    This binds the function directly (``Library.impl``) rather than through
    ``torch.library.register_kernel``, whose dynamo-disabling wrapper imports torch._dynamo on
    the first call of every op (about 2 s); the kernels never run under dynamo anyway, since
    traced graphs call them as opaque ops through their fake kernels.
    """
    key = "CompositeExplicitAutograd" if device_type is None else dispatch_key(device_type)
    if key is None:
        raise ValueError(f"bitsandbytes: no dispatch key for device type {device_type!r}")
    lib.impl(op, _below_autograd(fn), key, **_OVERRIDE)


def _below_autograd(fn):
    """``fn`` run as the op's kernel: with autograd's dispatch keys excluded, and autocast's.

    The ops have no autograd formula (the autograd.Functions of ``bitsandbytes.autograd`` hold
    the gradients). PyTorch's autograd fallback runs a backend kernel with autograd still on, so
    a kernel written with torch ops would record a graph through its internals: gradients that
    only some code paths have (a fused native path has none), and that torch.compile, which sees
    the op as opaque, does not have (opcheck's test_autograd_registration and
    test_aot_dispatch_dynamic). Below autograd every kernel's outputs are graph-free, as a native
    kernel's are; direct calls (``_direct``) bypass this wrapper only where no input requires grad.

    Autocast, likewise, passes the ops by (they are not on its lists) but would reach the torch
    ops inside a kernel: the reference int8 matmul's exact f32 sums of int8 products would run in
    bf16 or f16 (wrong integers; f16 overflows), a dense path's f32 GEMM in bf16 while a fused
    path of the same op stays exact. As torch's own autocast wrappers do for the ops they call, a
    kernel runs with autocast off: its results are the op's, whatever the caller's autocast.
    """

    grad_enabled = torch.is_grad_enabled
    below_autograd = torch._C._AutoDispatchBelowAutograd

    @functools.wraps(fn)
    def kernel(*args, **kwargs):
        if autocast_on():
            with no_autocast():
                if not grad_enabled():
                    return fn(*args, **kwargs)
                with below_autograd():
                    return fn(*args, **kwargs)
        if not grad_enabled():  # nothing can record a graph (optimizer steps, no_grad inference)
            return fn(*args, **kwargs)
        with below_autograd():
            return fn(*args, **kwargs)

    return kernel


# A later registration of the same (op, device) replaces the earlier one (a platform loaded again,
# as the loader's tests do). torch 2.8 to 2.12 refuse that unless asked; newer torch allows it by
# default; torch before 2.8 has no way to ask.
_OVERRIDE = (
    {"allow_override": True} if "allow_override" in inspect.signature(torch.library.Library.impl).parameters else {}
)


def _define_all() -> None:
    for name, schema in SCHEMAS.items():
        torch.library.define(f"{NAMESPACE}::{name}", schema)


def _fake(name: str):
    """Register the decorated function as ``name``'s fake kernel, behind a one-device check.

    The dispatcher sends a call whose tensors mix a real device with ``meta`` to the fake kernel,
    which would otherwise return an uninitialised tensor on the real device (a silent wrong
    answer): every fake kernel first requires all tensor arguments on one device.
    """
    register = torch.library.register_fake(f"{NAMESPACE}::{name}")

    def decorate(fn):
        signature = inspect.signature(fn)

        @functools.wraps(fn)
        def checked(*args, **kwargs):
            tensors = _tensor_args(signature.bind(*args, **kwargs).arguments)
            if len({t.device for t in tensors.values()}) > 1:
                check_same_device(tensors)
            return fn(*args, **kwargs)

        return register(checked)

    return decorate


def _tensor_args(arguments: dict) -> dict[str, torch.Tensor]:
    """The tensor arguments by name (a list argument's tensors as ``name[i]``)."""
    found: dict[str, torch.Tensor] = {}
    for name, value in arguments.items():
        if isinstance(value, torch.Tensor):
            found[name] = value
        elif isinstance(value, (list, tuple)):
            found.update({f"{name}[{i}]": t for i, t in enumerate(value) if isinstance(t, torch.Tensor)})
    return found


# --------------------------------------------------------------------------------------------
# Fake kernels: shape and dtype propagation (and the cheap checks) for meta tensors and
# torch.compile.
# --------------------------------------------------------------------------------------------


def _register_fakes() -> None:
    @_fake("int8_mixed_scaled_mm")
    def _(A, CA, CB, SCA, SCB, outlier_cols=None, bias=None):
        check_has_dim(A, "A")
        check_has_dim(CA, "CA")
        shape = (*CA.shape[:-1], CB.shape[0])
        out = torch.empty(shape, device=A.device, dtype=A.dtype)
        # subA = A[:, outlier_cols] of A seen as a (rows, K) matrix: one column per index, none
        # without outlier_cols (not data-dependent: the indices' count is their shape).
        k = 0 if outlier_cols is None else outlier_cols.numel()
        sub_a = A.new_empty(prod(A.shape[:-1]), k)
        return out, sub_a

    @_fake("int8_scaled_mm")
    def _(A, B, row_stats, col_stats, bias=None, dtype=None):
        check_has_dim(A, "A")
        shape = (*A.shape[:-1], B.shape[0])
        return torch.empty(shape, device=A.device, dtype=dtype or torch.float16)

    @_fake("int8_linear_matmul")
    def _(A, B):
        check_dtype(A, "A", (torch.int8,))
        check_dtype(B, "B", (torch.int8,))
        check_has_dim(A, "A")
        shape = (*A.shape[:-1], B.shape[0])
        return torch.empty(shape, device=A.device, dtype=torch.int32)

    @_fake("int8_linear_matmul.out")
    def _(A, B, out):
        check_has_dim(A, "A")
        shape = (*A.shape[:-1], B.shape[0])
        check_out(out, shape, torch.int32)
        check(out.device == A.device, f"bitsandbytes: out must be on {A.device}, got {out.device}")

    @_fake("int8_vectorwise_quant")
    def _(A, threshold=0.0):
        out_row = torch.empty(A.shape, device=A.device, dtype=torch.int8)
        row_stats = torch.empty(prod(A.shape[:-1]), device=A.device, dtype=torch.float32)
        if threshold == 0.0:
            return out_row, row_stats, None
        k = torch.library.get_ctx().new_dynamic_size()
        return out_row, row_stats, A.new_empty(k, dtype=torch.int64)

    @_fake("int8_vectorwise_dequant")
    def _(A, stats):
        check_dtype(A, "A", (torch.int8,))
        return torch.empty_like(A, dtype=torch.float32)

    @_fake("int8_mm_dequant")
    def _(A, row_stats, col_stats, dtype=None, bias=None):
        check_dtype(A, "A", (torch.int32,))
        return torch.empty_like(A, dtype=dtype or torch.float16)

    @_fake("int8_double_quant")
    def _(A, threshold=0.0):
        out_row = torch.empty_like(A, dtype=torch.int8)
        out_col = torch.empty_like(A, dtype=torch.int8)
        row_stats = torch.empty(prod(A.shape[:-1]), device=A.device, dtype=torch.float32)
        col_stats = torch.empty(A.shape[-1], device=A.device, dtype=torch.float32)
        if threshold == 0.0:  # no outlier search: None, as the kernels return (and int8_vectorwise_quant)
            return out_row, out_col, row_stats, col_stats, None
        k = torch.library.get_ctx().new_dynamic_size()
        return out_row, out_col, row_stats, col_stats, A.new_empty(k, dtype=torch.int64)

    @_fake("dequantize_4bit")
    def _(A, absmax, blocksize, quant_type, shape, dtype):
        check_blocksize_4bit(blocksize)
        check_quant_type(quant_type)
        check_dtype(absmax, "absmax", (torch.float32,))
        check_output_dtype(dtype)
        return torch.empty(shape, dtype=dtype, device=A.device)

    @_fake("dequantize_4bit.out")
    def _(A, absmax, blocksize, quant_type, shape, dtype, out):
        check_blocksize_4bit(blocksize)
        check_quant_type(quant_type)
        check_out(out, shape, dtype)

    @_fake("quantize_4bit")
    def _(A, blocksize, quant_type, quant_storage):
        check_quantize_4bit(A, blocksize, quant_type, quant_storage)
        n = A.numel()
        packed = torch.empty(((n + 1) // (quant_storage.itemsize * 2), 1), device=A.device, dtype=quant_storage)
        absmax = torch.empty(num_blocks(n, blocksize), device=A.device, dtype=torch.float32)
        return packed, absmax

    @_fake("gemm_4bit")
    def _(
        A, B, shapeB, absmax, blocksize, quant_type, bias=None, absmax_8bit=None, absmax_code=None, absmax_offset=None
    ):
        check(len(shapeB) == 2, f"bitsandbytes: shapeB must have 2 dimensions, got {list(shapeB)}")
        check_has_dim(A, "A")
        check(
            A.shape[-1] == shapeB[1],
            f"bitsandbytes: A's last dimension ({A.shape[-1]}) must equal shapeB[1] ({shapeB[1]})",
        )
        check_dtype(A, "A", FLOAT_DTYPES)
        check_dtype(B, "B", (torch.uint8, torch.bfloat16, torch.float16, torch.float32))
        check_dtype(absmax, "absmax", (torch.float32,))
        if absmax_8bit is not None:
            check_nested_absmax(absmax, absmax_8bit, absmax_code, absmax_offset)
        if bias is not None:
            check(
                bias.dim() == 1 and bias.shape[0] == shapeB[0],
                f"bitsandbytes: bias must have shape ({shapeB[0]},), got {tuple(bias.shape)}",
            )
        return torch.empty((*A.shape[:-1], shapeB[0]), device=A.device, dtype=A.dtype)

    @_fake("int8_weight_mm")
    def _(A, CB, SCB, bias=None):
        n, _ = check_int8_weight_mm(A, CB, SCB, bias)
        return A.new_empty((*A.shape[:-1], n))

    @_fake("int8_weight_mm_t")
    def _(A, CB, SCB):
        _, k = check_int8_weight_mm(A, CB, SCB, transposed=True)
        return A.new_empty((*A.shape[:-1], k))

    @_fake("gemm_4bit_t")
    def _(A, B, shapeB, absmax, blocksize, quant_type):
        _, k = check_gemm_4bit_t(A, B, shapeB, absmax, blocksize, quant_type)
        return A.new_empty((*A.shape[:-1], k))

    @_fake("dequantize_blockwise")
    def _(A, absmax, code, blocksize, dtype):
        check_dtype(A, "A", (torch.uint8,))
        check_positive_blocksize(blocksize)
        return torch.empty_like(A, dtype=dtype)

    @_fake("dequantize_blockwise.out")
    def _(A, absmax, code, blocksize, dtype, out):
        check_dtype(A, "A", (torch.uint8,))
        check_positive_blocksize(blocksize)
        check_out(out, A.shape, dtype)

    @_fake("quantize_blockwise")
    def _(A, code, blocksize):
        check_positive_blocksize(blocksize)
        n = A.numel()
        absmax = torch.empty(num_blocks(n, blocksize), device=A.device, dtype=torch.float32)
        return torch.empty_like(A, dtype=torch.uint8), absmax

    @_fake("gemv_4bit")
    def _(A, B, shapeB, absmax, code, blocksize):
        check_has_dim(A, "A")
        check(
            A.shape[-1] == shapeB[1],
            f"bitsandbytes: A's last dimension ({A.shape[-1]}) must equal shapeB[1] ({shapeB[1]})",
        )
        return torch.empty((*A.shape[:-1], shapeB[0]), device=A.device, dtype=A.dtype)

    @_fake("gemv_4bit.out")
    def _(A, B, shapeB, absmax, code, blocksize, out):
        check_has_dim(A, "A")
        shape = (*A.shape[:-1], shapeB[0])
        check_out(out, shape, A.dtype)

    @_fake("optimizer_update_32bit")
    def _(
        optimizer_name,
        g,
        p,
        state1,
        state2,
        unorm_vec,
        max_unorm,
        param_norm,
        beta1,
        beta2,
        beta3,
        alpha,
        eps,
        weight_decay,
        step,
        lr,
        gnorm_scale,
        skip_zeros=False,
    ):
        check_optimizer_args(g, p)

    @_fake("optimizer_update_8bit_blockwise")
    def _(
        optimizer_name,
        g,
        p,
        state1,
        state2,
        beta1,
        beta2,
        beta3,
        alpha,
        eps,
        step,
        lr,
        qmap1,
        qmap2,
        absmax1,
        absmax2,
        weight_decay,
        gnorm_scale,
        skip_zeros=False,
    ):
        check_optimizer_args(g, p)
        check_dtype(state1, "state1", (torch.uint8,))
        check_dtype(qmap1, "qmap1", (torch.float32,))
        check_dtype(absmax1, "absmax1", (torch.float32,))


_define_all()
_register_fakes()
