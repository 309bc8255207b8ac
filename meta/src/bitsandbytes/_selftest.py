"""The per-device self-test of ``python -m bitsandbytes``.

Each check runs the kernel that serves the device (through ``torch.ops.bitsandbytes``) and
compares it with the reference kernel on the CPU, or with a known value.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

import bitsandbytes

from .backends.reference import KERNELS as REF
from .backends.reference.codebooks import dynamic_map

ops = torch.ops.bitsandbytes


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.view({1: torch.uint8, 2: torch.int16, 4: torch.int32}[t.element_size()])


def _sample(n: int, dtype: torch.dtype, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, generator=g) * 3
    x[::97] = 0.0
    return x.to(dtype)


def _check_4bit(device: str, dtype: torch.dtype, quant_type: str) -> str | None:
    x = _sample(64 * 65 + 7, dtype, 1)
    packed, absmax = ops.quantize_4bit(x.to(device), 64, quant_type, torch.uint8)
    ref_packed, ref_absmax = REF["quantize_4bit"](x, 64, quant_type, torch.uint8)
    if not torch.equal(packed.cpu(), ref_packed) or not torch.equal(absmax.cpu(), ref_absmax):
        return "quantize_4bit differs from the reference"
    out = ops.dequantize_4bit(packed, absmax, 64, quant_type, [x.numel()], dtype)
    ref = REF["dequantize_4bit"](ref_packed, ref_absmax, 64, quant_type, [x.numel()], dtype)
    if not torch.equal(_bits(out.cpu()), _bits(ref)):
        return "dequantize_4bit differs from the reference"
    err = (out.cpu().float() - x.float()).abs().mean() / x.float().abs().mean()
    return None if err < 0.12 else f"relative round-trip error {err:.3f} is too large"


def _check_blockwise(device: str, dtype: torch.dtype) -> str | None:
    x = _sample(4096 + 33, dtype, 2)
    code = dynamic_map()
    q, absmax = ops.quantize_blockwise(x.to(device), code.to(device), 256)
    ref_q, ref_absmax = REF["quantize_blockwise"](x, code, 256)
    if not torch.equal(q.cpu(), ref_q) or not torch.equal(absmax.cpu(), ref_absmax):
        return "quantize_blockwise differs from the reference"
    out = ops.dequantize_blockwise(q, absmax, code.to(device), 256, dtype)
    if not torch.equal(_bits(out.cpu()), _bits(REF["dequantize_blockwise"](ref_q, ref_absmax, code, 256, dtype))):
        return "dequantize_blockwise differs from the reference"
    err = (out.cpu().float() - x.float()).abs().mean() / x.float().abs().mean()
    return None if err < 0.02 else f"relative round-trip error {err:.4f} is too large"


def _check_nf4_byte(device: str) -> str | None:
    packed, _ = ops.quantize_4bit(torch.tensor([1.0, -1.0] + [0.0] * 62, device=device), 64, "nf4", torch.uint8)
    return None if packed[0, 0].item() == 0xF0 else f"first byte {packed[0, 0].item():#x}, expected 0xf0"


def _check_int8(device: str) -> str | None:
    A = torch.tensor([[127, 0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 3.5]], dtype=torch.float16, device=device)
    CA, _, _ = ops.int8_vectorwise_quant(A)
    if CA.cpu().tolist() != [[127, 0, 2, 2, 0, -2, -2, 4]]:
        return f"int8_vectorwise_quant gave {CA.cpu().tolist()}"
    g = torch.Generator().manual_seed(3)
    a = torch.randint(-128, 128, (8, 2048), dtype=torch.int8, generator=g)
    b = torch.randint(-128, 128, (16, 2048), dtype=torch.int8, generator=g)
    C = ops.int8_linear_matmul(a.to(device), b.to(device)).cpu()
    return None if torch.equal(C.long(), a.long() @ b.long().t()) else "int8_linear_matmul is not exact"


def _check_weight_mm(device: str) -> str | None:
    """The fine-tuning matmuls (int8 forward and input gradient, 4-bit input gradient) against the
    reference on the CPU, within f32 summation-order rounding; 1 and 24 rows (fused and dense paths);
    then with bf16 activations, within bf16 rounding."""
    g = torch.Generator().manual_seed(4)
    w = torch.randn(48, 320, generator=g)
    CB, SCB, _ = REF["int8_vectorwise_quant"](w, 0.0)
    packed, absmax = REF["quantize_4bit"](w, 64, "nf4", torch.uint8)
    for rows in (1, 24):
        A, G = torch.randn(rows, 320, generator=g), torch.randn(rows, 48, generator=g)
        pairs = {
            "int8_weight_mm": (
                ops.int8_weight_mm(A.to(device), CB.to(device), SCB.to(device)),
                REF["int8_weight_mm"](A, CB, SCB),
            ),
            "int8_weight_mm_t": (
                ops.int8_weight_mm_t(G.to(device), CB.to(device), SCB.to(device)),
                REF["int8_weight_mm_t"](G, CB, SCB),
            ),
            "gemm_4bit_t": (
                ops.gemm_4bit_t(G.to(device), packed.to(device), [48, 320], absmax.to(device), 64, "nf4"),
                REF["gemm_4bit_t"](G, packed, [48, 320], absmax, 64, "nf4"),
            ),
        }
        for op, (got, want) in pairs.items():
            if not torch.allclose(got.cpu(), want, rtol=1e-4, atol=1e-4 * want.abs().max().item()):
                return f"{op} with {rows} row(s) differs from the reference"
    # bf16 activations (the CPU wheel's AMX path where the CPU has it): within bf16 rounding.
    A, G = torch.randn(24, 320, generator=g).bfloat16(), torch.randn(24, 48, generator=g).bfloat16()
    d = {"A": A.to(device), "G": G.to(device), "CB": CB.to(device), "SCB": SCB.to(device)}
    d.update(packed=packed.to(device), absmax=absmax.to(device))
    pairs = {
        "gemm_4bit": (
            ops.gemm_4bit(d["A"], d["packed"], [48, 320], d["absmax"], 64, "nf4"),
            REF["gemm_4bit"](A, packed, [48, 320], absmax, 64, "nf4"),
        ),
        "int8_weight_mm": (ops.int8_weight_mm(d["A"], d["CB"], d["SCB"]), REF["int8_weight_mm"](A, CB, SCB)),
        "int8_weight_mm_t": (ops.int8_weight_mm_t(d["G"], d["CB"], d["SCB"]), REF["int8_weight_mm_t"](G, CB, SCB)),
        "gemm_4bit_t": (
            ops.gemm_4bit_t(d["G"], d["packed"], [48, 320], d["absmax"], 64, "nf4"),
            REF["gemm_4bit_t"](G, packed, [48, 320], absmax, 64, "nf4"),
        ),
    }
    for op, (got, want) in pairs.items():
        scale = want.float().abs().max().item()
        if not torch.allclose(got.cpu().float(), want.float(), rtol=2e-2, atol=2e-2 * scale):
            return f"{op} with bf16 activations differs from the reference"
    return None


def run(device: str) -> list[dict[str, Any]]:
    """Run every check on ``device``; each result names the implementation that served it."""
    checks: list[tuple[str, str, Callable[[], str | None]]] = [
        ("nf4 worked example", "quantize_4bit", lambda: _check_nf4_byte(device))
    ]
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        name = str(dtype).replace("torch.", "")
        for qt in ("nf4", "fp4"):
            checks.append(
                (f"4-bit {qt} {name} round trip", "quantize_4bit", lambda d=dtype, q=qt: _check_4bit(device, d, q))
            )
        checks.append(
            (f"8-bit block-wise {name} round trip", "quantize_blockwise", lambda d=dtype: _check_blockwise(device, d))
        )
    checks.append(("int8 quantization and exact int8 matmul", "int8_linear_matmul", lambda: _check_int8(device)))
    checks.append(
        ("matmuls against a quantized weight (fine-tuning)", "int8_weight_mm", lambda: _check_weight_mm(device))
    )
    results = []
    for name, op, fn in checks:
        try:
            detail = fn()
        except Exception as exc:  # a failing kernel is a failed check, not a crash of the report
            detail = f"raised {exc!r}"
        results.append(
            {
                "name": name,
                "ok": detail is None,
                "detail": detail or "",
                "implementation": bitsandbytes.implementation(op, device),
            }
        )
    return results
