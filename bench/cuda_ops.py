"""Benchmarks of the CUDA kernels against torch baselines measured in the same run.

    nox -s bench-cuda                      # or: python bench/cuda_ops.py [--quick]

Each case prints the kernel's time, the baseline's time, the ratio (baseline / kernel: > 1 means
the bitsandbytes kernel is faster) and, for memory-bound kernels, the bandwidth reached as a
fraction of a plain device-to-device copy measured first. Times are medians of CUDA-event timed
runs after warm-up, on the current stream.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import statistics
from collections.abc import Callable

import torch

import bitsandbytes  # noqa: F401  (loads the CUDA platform wheel)
from bitsandbytes.backends.reference.codebooks import dynamic_map, four_bit_table

ops = torch.ops.bitsandbytes
ROWS: list[dict] = []  # every reported case, for --json / --markdown


def timed(fn: Callable[[], object], iters: int = 50, warmup: int = 5) -> float:
    """Median milliseconds of ``fn`` on the current stream."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def report(name: str, ms: float, base_name: str | None = None, base_ms: float | None = None, gbytes: float = 0.0,
           copy_gbs: float | None = None) -> None:  # fmt: skip
    line = f"{name:<46} {ms * 1e3:10.1f} us"
    row = {"name": name, "us": ms * 1e3, "GB/s": None, "copy_fraction": None, "baseline": base_name,
           "baseline_us": None if base_ms is None else base_ms * 1e3, "ratio": None}  # fmt: skip
    ROWS.append(row)
    if gbytes:
        gbs = gbytes / (ms / 1e3)
        row["GB/s"] = gbs
        row["copy_fraction"] = gbs / copy_gbs if copy_gbs else None
        line += f"  {gbs:8.1f} GB/s"
        if copy_gbs:
            line += f" ({gbs / copy_gbs:5.1%} of copy)"
    if base_ms is not None:
        line += f"   vs {base_name}: {base_ms * 1e3:10.1f} us  ratio {base_ms / ms:6.2f}x"
        row["ratio"] = base_ms / ms
    print(line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer iterations and a smaller optimizer case")
    parser.add_argument("--json", type=pathlib.Path, help="also write the rows (and the machine) to this JSON file")
    parser.add_argument("--markdown", type=pathlib.Path, help="also write the rows as a markdown table to this file")
    args = parser.parse_args()
    iters = 10 if args.quick else 50
    dev = torch.device("cuda")
    torch.manual_seed(0)
    header = f"device: {torch.cuda.get_device_name(dev)}; torch {torch.__version__} (CUDA {torch.version.cuda})"
    print(header)
    print(f"platforms: {[(r['platform'], r['status']) for r in bitsandbytes.platforms()]}")
    run_cases(dev, iters, args.quick)
    if args.json:
        args.json.write_text(json.dumps({"machine": header, "quick": args.quick, "rows": ROWS}, indent=2) + "\n")
    if args.markdown:
        args.markdown.write_text(markdown_table(header))


def markdown_table(header: str) -> str:
    """The rows as a markdown table (ratio: baseline time / kernel time, > 1 means faster)."""
    lines = [f"{header}", "", "| case | us | GB/s | of copy | baseline | baseline us | ratio |",
             "| --- | ---: | ---: | ---: | --- | ---: | ---: |"]  # fmt: skip

    def fmt(value: float | None, spec: str) -> str:
        return "" if value is None else format(value, spec)

    for r in ROWS:
        lines.append(
            f"| {r['name']} | {r['us']:.1f} | {fmt(r['GB/s'], '.1f')} | {fmt(r['copy_fraction'], '.1%')} | "
            f"{r['baseline'] or ''} | {fmt(r['baseline_us'], '.1f')} | {fmt(r['ratio'], '.2f')} |"
        )
    return "\n".join(lines) + "\n"


def run_cases(dev: torch.device, iters: int, quick: bool) -> None:
    """Every case, each reported as it is measured."""

    # Copy bandwidth baseline (read + write).
    src = torch.empty(256 << 20, dtype=torch.uint8, device=dev)
    dst = torch.empty_like(src)
    copy_ms = timed(lambda: dst.copy_(src), iters)
    copy_gbs = 2 * src.numel() / 1e9 / (copy_ms / 1e3)
    report("device-to-device copy 256 MiB", copy_ms, gbytes=2 * src.numel() / 1e9)

    # 4-bit quantize / dequantize.
    for dtype in (torch.bfloat16, torch.float16):
        W = torch.randn(4096, 11008, device=dev, dtype=dtype)
        n = W.numel()
        q_ms = timed(lambda W=W: ops.quantize_4bit(W, 64, "nf4", torch.uint8), iters)
        report(f"quantize_4bit nf4 {dtype} 4096x11008", q_ms, gbytes=(n * 2 + n / 2 + n / 16) / 1e9, copy_gbs=copy_gbs)
        packed, absmax = ops.quantize_4bit(W, 64, "nf4", torch.uint8)
        d_ms = timed(
            lambda p=packed, a=absmax, dt=dtype: ops.dequantize_4bit(p, a, 64, "nf4", [4096, 11008], dt), iters
        )
        report(
            f"dequantize_4bit nf4 {dtype} 4096x11008", d_ms, gbytes=(n * 2 + n / 2 + n / 16) / 1e9, copy_gbs=copy_gbs
        )

    # gemv_4bit (batch 1) vs F.linear on the bf16 weight.
    for N, K in ((4096, 4096), (11008, 4096), (4096, 11008)):
        W = torch.randn(N, K, device=dev, dtype=torch.bfloat16)
        packed, absmax = ops.quantize_4bit(W, 64, "nf4", torch.uint8)
        code = four_bit_table("nf4", dev)
        A = torch.randn(1, K, device=dev, dtype=torch.bfloat16)
        g_ms = timed(lambda A=A, p=packed, a=absmax, N=N, K=K, c=code: ops.gemv_4bit(A, p, [N, K], a, c, 64), iters)
        f_ms = timed(lambda A=A, W=W: torch.nn.functional.linear(A, W), iters)
        report(f"gemv_4bit nf4 bf16 1x{K} @ {N}x{K}", g_ms, "F.linear bf16", f_ms, gbytes=(N * K / 2 + N * K / 16) / 1e9,
               copy_gbs=copy_gbs)  # fmt: skip
        for m in (4, 16):
            Am = torch.randn(m, K, device=dev, dtype=torch.bfloat16)
            g_ms = timed(lambda A=Am, p=packed, a=absmax, N=N, K=K: ops.gemm_4bit(A, p, [N, K], a, 64, "nf4"), iters)
            f_ms = timed(lambda A=Am, W=W: torch.nn.functional.linear(A, W), iters)
            report(f"gemm_4bit nf4 bf16 {m}x{K} @ {N}x{K}", g_ms, "F.linear bf16", f_ms)

    # Block-wise 8-bit.
    X = torch.randn(64 << 20, device=dev, dtype=torch.float32)
    code = dynamic_map(device=dev)
    qb_ms = timed(lambda: ops.quantize_blockwise(X, code, 4096), iters)
    report("quantize_blockwise f32 64M bs=4096", qb_ms, gbytes=X.numel() * 5 / 1e9, copy_gbs=copy_gbs)
    q, a = ops.quantize_blockwise(X, code, 4096)
    db_ms = timed(lambda: ops.dequantize_blockwise(q, a, code, 4096, torch.float32), iters)
    report("dequantize_blockwise f32 64M bs=4096", db_ms, gbytes=X.numel() * 5 / 1e9, copy_gbs=copy_gbs)

    # int8 matmul 4096^3 vs bf16 matmul.
    A8 = torch.randint(-127, 128, (4096, 4096), dtype=torch.int8, device=dev)
    B8 = torch.randint(-127, 128, (4096, 4096), dtype=torch.int8, device=dev)
    Ab, Bb = A8.bfloat16(), B8.bfloat16()
    i_ms = timed(lambda: ops.int8_linear_matmul(A8, B8), iters)
    b_ms = timed(lambda: Ab @ Bb.t(), iters)
    tops = 2 * 4096**3 / 1e12
    report(f"int8_linear_matmul 4096^3 ({tops / (i_ms / 1e3):.0f} TOPS)", i_ms, "bf16 matmul", b_ms)
    A7, B7 = A8[:, :4093].contiguous(), B8[:, :4093].contiguous()
    report("int8_linear_matmul 4096x4093 (K%4!=0 fallback)", timed(lambda: ops.int8_linear_matmul(A7, B7), 5))

    # Optimizer step on 100M parameters vs torch.optim.AdamW(fused=True).
    n = 10_000_000 if quick else 100_000_000
    p = torch.nn.Parameter(torch.randn(n, device=dev))
    p.grad = torch.randn(n, device=dev)
    torch_opt = torch.optim.AdamW([p], lr=1e-3, fused=True)
    t_ms = timed(torch_opt.step, 10)
    s1, s2 = torch.zeros(n, device=dev), torch.zeros(n, device=dev)
    state = {"step": 0}

    def step32() -> None:
        state["step"] += 1
        ops.optimizer_update_32bit("adam", p.grad, p.data, s1, s2, None, 0.0, 0.0, 0.9, 0.999, 0.0, 0.0, 1e-8, 0.01,
                                   state["step"], 1e-3, 1.0)  # fmt: skip

    o_ms = timed(step32, 10)
    report(f"optimizer 32-bit adam {n / 1e6:.0f}M f32", o_ms, "AdamW(fused=True)", t_ms, gbytes=n * 4 * 7 / 1e9,
           copy_gbs=copy_gbs)  # fmt: skip
    blocks = -(-n // 256)
    q1 = torch.full((n,), 127, dtype=torch.uint8, device=dev)
    q2 = torch.zeros(n, dtype=torch.uint8, device=dev)
    a1, a2 = torch.zeros(blocks, device=dev), torch.zeros(blocks, device=dev)
    m1, m2 = dynamic_map(True, dev), dynamic_map(False, dev)

    def step8() -> None:
        state["step"] += 1
        ops.optimizer_update_8bit_blockwise("adam", p.grad, p.data, q1, q2, 0.9, 0.999, 0.0, 0.0, 1e-8, state["step"],
                                            1e-3, m1, m2, a1, a2, 0.01, 1.0)  # fmt: skip

    e_ms = timed(step8, 10)
    report(f"optimizer 8-bit adam {n / 1e6:.0f}M f32", e_ms, "AdamW(fused=True)", t_ms, gbytes=n * (4 * 3 + 2 * 2) / 1e9,
           copy_gbs=copy_gbs)  # fmt: skip


if __name__ == "__main__":
    main()
