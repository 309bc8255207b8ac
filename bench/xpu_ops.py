"""Benchmarks of the XPU platform's Triton kernels on a GPU, against torch baselines measured in the
same run. The kernels are the ones ``bitsandbytes-xpu`` registers for Intel GPUs; the same code
runs on an NVIDIA GPU with the public ``triton`` package, the stand-in used until Intel hardware
is at hand.

    nox -s bench-xpu                       # or: python bench/xpu_ops.py [--quick] [--device cuda|xpu]

Targets (issue 18): dequantize_4bit / dequantize_blockwise into ``.out`` at >= 60 % of the device's
copy bandwidth; gemv_4bit batch 1 (bf16, 4096x4096 and 4096x14336) in <= 0.6x the time of dense
``F.linear``; one Adam8bit step on 16.7 M parameters no slower than ``AdamW(fused=True)``.

Each case prints the median time of event-timed single calls ("eager": includes Triton's Python
launch overhead whenever the GPU finishes first) and, on CUDA, the time per call of a CUDA graph
that replays 20 calls ("graph": the kernel alone), with bandwidth as a fraction of a plain
device-to-device copy measured first. Without a CUDA or XPU device it refuses: Triton's CPU
interpreter proves the kernels correct but says nothing about their speed.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from collections.abc import Callable

import torch


def refuse(reason: str) -> None:
    print(f"bench/xpu_ops.py: {reason}", file=sys.stderr)
    sys.exit(2)


def pick_device(name: str | None) -> torch.device:
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        refuse("TRITON_INTERPRET is set: the interpreter runs on the CPU and measures nothing; unset it")
    has_xpu = getattr(torch, "xpu", None) is not None and torch.xpu.is_available()
    if name is None:
        name = "cuda" if torch.cuda.is_available() else ("xpu" if has_xpu else None)
    if name is None or (name == "cuda" and not torch.cuda.is_available()) or (name == "xpu" and not has_xpu):
        refuse(
            f"needs a CUDA or XPU device, and torch {torch.__version__} sees "
            f"{'none' if name is None else f'no {name} device'}; run it on a GPU machine (nox -s bench-xpu "
            "with BNB_TORCH_REQUIREMENT set to a CUDA or XPU build of torch)"
        )
    return torch.device(name)


class Timer:
    def __init__(self, dev: torch.device, iters: int) -> None:
        self.dev, self.iters = dev, iters
        self.mod = getattr(torch, dev.type)

    def eager(self, fn: Callable[[], object], warmup: int = 3) -> float:
        """Median milliseconds of single calls on the current stream."""
        for _ in range(warmup):
            fn()
        self.mod.synchronize()
        times = []
        for _ in range(self.iters):
            start, end = self.mod.Event(enable_timing=True), self.mod.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        return statistics.median(times)

    def graph(self, fn: Callable[[], object], calls: int = 20) -> float | None:
        """Milliseconds per call of a CUDA graph replaying ``calls`` calls (None off CUDA)."""
        if self.dev.type != "cuda":
            return None
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(3):
                fn()
        torch.cuda.current_stream().wait_stream(stream)
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            for _ in range(calls):
                fn()
        return self.eager(g.replay) / calls


def line(name: str, ms: float, graph_ms: float | None, gbytes: float = 0.0, copy_gbs: float | None = None,
         base: tuple[str, float] | None = None) -> None:  # fmt: skip
    best = graph_ms if graph_ms is not None else ms
    text = f"{name:<50} eager {ms * 1e3:9.1f} us"
    if graph_ms is not None:
        text += f"  graph {graph_ms * 1e3:9.1f} us"
    if gbytes:
        gbs = gbytes / (best / 1e3)
        text += f"  {gbs:8.1f} GB/s"
        if copy_gbs:
            text += f" ({gbs / copy_gbs:5.1%} of copy)"
    if base is not None:
        text += f"   vs {base[0]} {base[1] * 1e3:9.1f} us: {best / base[1]:5.2f}x its time"
    print(text, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer iterations")
    parser.add_argument("--device", choices=["cuda", "xpu"], default=None, help="default: cuda if present, else xpu")
    args = parser.parse_args()
    dev = pick_device(args.device)

    import bitsandbytes_xpu

    from bitsandbytes.backends.reference.codebooks import dynamic_map, four_bit_decode_table

    problem = bitsandbytes_xpu.triton_problem()
    if problem:
        refuse(problem)
    K = bitsandbytes_xpu.host_kernels()
    t = Timer(dev, 10 if args.quick else 50)
    torch.manual_seed(0)
    print(f"device: {t.mod.get_device_name(dev)}; torch {torch.__version__}; {bitsandbytes_xpu.build_info()['triton']}")

    src = torch.empty(256 << 20, dtype=torch.uint8, device=dev)
    dst = torch.empty_like(src)
    copy_ms = t.eager(lambda: dst.copy_(src))
    copy_gbs = 2 * src.numel() / 1e9 / (copy_ms / 1e3)
    line("device-to-device copy 256 MiB", copy_ms, None, gbytes=2 * src.numel() / 1e9)

    # Dequantization into .out (read packed + absmax, write bf16).
    shape = [4096, 14336]
    n = shape[0] * shape[1]
    W = torch.randn(shape, device=dev, dtype=torch.bfloat16)
    packed, absmax = K["quantize_4bit"](W, 64, "nf4", torch.uint8)
    out = torch.empty(shape, device=dev, dtype=torch.bfloat16)
    fn = lambda: K["dequantize_4bit.out"](packed, absmax, 64, "nf4", shape, torch.bfloat16, out)  # noqa: E731
    line("dequantize_4bit.out nf4 bf16 4096x14336", t.eager(fn), t.graph(fn), (n / 2 + n / 16 + 2 * n) / 1e9, copy_gbs)
    code = dynamic_map(device=dev)
    q8, absmax8 = K["quantize_blockwise"](W, code, 256)
    fn = lambda: K["dequantize_blockwise.out"](q8, absmax8, code, 256, torch.bfloat16, out)  # noqa: E731
    line("dequantize_blockwise.out bf16 4096x14336", t.eager(fn), t.graph(fn), (n + n / 64 + 2 * n) / 1e9, copy_gbs)

    # Fused 4-bit gemv against dense F.linear on the bf16 weight.
    table = four_bit_decode_table("nf4", dev)
    for N, Kdim in ((4096, 4096), (4096, 14336), (14336, 4096)):
        Wd = torch.randn(N, Kdim, device=dev, dtype=torch.bfloat16)
        p4, a4 = K["quantize_4bit"](Wd, 64, "nf4", torch.uint8)
        for batch in (1, 8):
            A = torch.randn(batch, Kdim, device=dev, dtype=torch.bfloat16)
            dense = lambda A=A, Wd=Wd: torch.nn.functional.linear(A, Wd)  # noqa: E731
            base_ms = t.graph(dense) or t.eager(dense)
            fn = lambda A=A, p4=p4, a4=a4, N=N, Kdim=Kdim: K["gemv_4bit"](A, p4, [N, Kdim], a4, table, 64)  # noqa: E731
            line(f"gemv_4bit nf4 bf16 batch {batch} W {N}x{Kdim}", t.eager(fn), t.graph(fn),
                 (N * Kdim * (0.5 + 1 / 16)) / 1e9, copy_gbs, base=("dense F.linear", base_ms))  # fmt: skip

    # One Adam step on 16.7 M f32 parameters: 8-bit block-wise states vs torch's fused AdamW.
    numel = 4096 * 4096
    p = torch.randn(numel, device=dev)
    g = torch.randn(numel, device=dev) * 1e-3
    q1 = torch.zeros(numel, dtype=torch.uint8, device=dev)
    q2 = torch.zeros(numel, dtype=torch.uint8, device=dev)
    blocks = -(numel // -256)
    a1, a2 = torch.zeros(blocks, device=dev), torch.zeros(blocks, device=dev)
    qmap1, qmap2 = dynamic_map(True, dev), dynamic_map(False, dev)
    step = [0]

    def adam8() -> None:
        step[0] += 1
        K["optimizer_update_8bit_blockwise"]("adam", g, p, q1, q2, 0.9, 0.999, 0.0, 0.0, 1e-8, step[0], 1e-3,
                                             qmap1, qmap2, a1, a2, 0.01, 1.0, False)  # fmt: skip

    pt = torch.nn.Parameter(torch.randn(numel, device=dev))
    pt.grad = torch.randn(numel, device=dev) * 1e-3
    adamw = torch.optim.AdamW([pt], lr=1e-3, weight_decay=0.01, fused=True)
    base_ms = t.eager(adamw.step)
    line("Adam8bit step 16.7M f32 params (8-bit states)", t.eager(adam8), None, (numel * 16) / 1e9, copy_gbs,
         base=("AdamW(fused=True)", base_ms))  # fmt: skip


if __name__ == "__main__":
    main()
