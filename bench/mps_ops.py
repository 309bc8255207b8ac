"""Benchmarks of the MPS (Metal) kernels against torch baselines measured in the same run. Mac only.

    python bench/mps_ops.py [--quick]

The issue's targets, each printed with PASS/MISS: dequantize_4bit into ``.out`` at >= 60 % of the
bandwidth of a plain device copy measured first; gemv_4bit at batch 1 (4096x4096, fp16) in <= 0.5x
the time of dense fp16 ``F.linear``; one Adam8bit step in <= the time of ``torch.optim.AdamW``
(foreach) on the same parameter. Times are medians of runs between ``torch.mps.synchronize()``
calls, after warm-up (so each includes one command-buffer commit). Elsewhere the script refuses
with the reason: there is nothing to measure without an Apple GPU.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable

import torch


def refuse_without_mps() -> None:
    if not torch.backends.mps.is_available():
        built = torch.backends.mps.is_built()
        sys.exit(
            f"bench/mps_ops.py: no MPS device (torch {torch.__version__}, torch.backends.mps.is_built() is {built}); "
            "this benchmark runs on macOS with an Apple GPU. Without one, the kernels are tested by "
            "`nox -s tests-mps-host` (host harness), but not timed."
        )


def timed(fn: Callable[[], object], iters: int, warmup: int = 5) -> float:
    """Median milliseconds of ``fn``, synchronized per run."""
    for _ in range(warmup):
        fn()
    torch.mps.synchronize()
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        torch.mps.synchronize()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer iterations")
    args = parser.parse_args()
    refuse_without_mps()

    import bitsandbytes
    from bitsandbytes.backends.reference.codebooks import dynamic_map, four_bit_decode_table

    impl = bitsandbytes.implementation("dequantize_4bit", "mps")
    if impl != "mps":
        sys.exit(f"bench/mps_ops.py: the mps kernels are not loaded (dequantize_4bit is served by {impl}); "
                 f"python -m bitsandbytes says why")  # fmt: skip
    ops = torch.ops.bitsandbytes
    iters = 10 if args.quick else 50
    dev = torch.device("mps")
    torch.manual_seed(0)
    print(f"device: {bitsandbytes._LOADED.runtime.devices.get('mps')}, torch {torch.__version__}")

    # Copy bandwidth: read + write of a 64 MiB fp16 tensor.
    src = torch.randn(32 * 2**20, device=dev, dtype=torch.float16)
    dst = torch.empty_like(src)
    copy_ms = timed(lambda: dst.copy_(src), iters)
    copy_gbs = 2 * src.numel() * 2 / (copy_ms / 1e3) / 1e9
    print(f"copy 64 MiB fp16                  {copy_ms * 1e3:9.1f} us  {copy_gbs:7.1f} GB/s")

    # dequantize_4bit into .out: 4096 x 11008 fp16 (reads n/2 + absmax, writes 2n bytes).
    N, K = 4096, 11008
    W = torch.randn(N, K, device=dev, dtype=torch.float16)
    packed, absmax = ops.quantize_4bit(W, 64, "nf4", torch.uint8)
    out = torch.empty_like(W)
    ms = timed(lambda: ops.dequantize_4bit.out(packed, absmax, 64, "nf4", [N, K], torch.float16, out), iters)
    gbs = (W.numel() / 2 + absmax.numel() * 4 + W.numel() * 2) / (ms / 1e3) / 1e9
    frac = gbs / copy_gbs
    print(f"dequantize_4bit.out 4096x11008    {ms * 1e3:9.1f} us  {gbs:7.1f} GB/s = {frac:5.1%} of copy "
          f"(target >= 60 %: {verdict(frac >= 0.6)})")  # fmt: skip

    # gemv_4bit batch 1 against dense fp16 F.linear, 4096 x 4096.
    N = K = 4096
    W = torch.randn(N, K, device=dev, dtype=torch.float16)
    packed, absmax = ops.quantize_4bit(W, 64, "nf4", torch.uint8)
    code = four_bit_decode_table("nf4", dev)
    x = torch.randn(1, K, device=dev, dtype=torch.float16)
    gemv_ms = timed(lambda: ops.gemv_4bit(x, packed, [N, K], absmax, code, 64), iters)
    dense_ms = timed(lambda: torch.nn.functional.linear(x, W), iters)
    ratio = gemv_ms / dense_ms
    print(f"gemv_4bit batch 1 4096x4096 fp16  {gemv_ms * 1e3:9.1f} us  vs F.linear {dense_ms * 1e3:9.1f} us: "
          f"{ratio:4.2f}x (target <= 0.5x: {verdict(ratio <= 0.5)})")  # fmt: skip
    for m in (2, 4, 8):
        xm = torch.randn(m, K, device=dev, dtype=torch.float16)
        ms = timed(lambda xm=xm: ops.gemv_4bit(xm, packed, [N, K], absmax, code, 64), iters)
        dm = timed(lambda xm=xm: torch.nn.functional.linear(xm, W), iters)
        print(
            f"gemv_4bit batch {m} 4096x4096 fp16  {ms * 1e3:9.1f} us  vs F.linear {dm * 1e3:9.1f} us: {ms / dm:4.2f}x"
        )

    # One Adam8bit step (the fused 8-bit kernel) against torch.optim.AdamW (foreach), 16 M f32 params.
    n = 4 * 2**20 if args.quick else 16 * 2**20
    p = torch.randn(n, device=dev)
    g = torch.randn(n, device=dev) * 1e-3
    blocks = -(n // -256)
    q1 = torch.full((n,), 127, dtype=torch.uint8, device=dev)
    q2 = torch.zeros(n, dtype=torch.uint8, device=dev)
    a1 = torch.ones(blocks, device=dev)
    a2 = torch.ones(blocks, device=dev)
    map1, map2 = dynamic_map(True, dev), dynamic_map(False, dev)

    def adam8() -> None:
        ops.optimizer_update_8bit_blockwise(
            "adam", g, p, q1, q2, 0.9, 0.999, 0.0, 0.0, 1e-8, 2, 1e-3, map1, map2, a1, a2, 0.01, 1.0, False
        )

    ms8 = timed(adam8, iters)
    param = torch.nn.Parameter(torch.randn(n, device=dev))
    param.grad = torch.randn(n, device=dev) * 1e-3
    adamw = torch.optim.AdamW([param], lr=1e-3, weight_decay=0.01, foreach=True)
    ms32 = timed(adamw.step, iters)
    print(f"Adam8bit step {n / 2**20:.0f}M params           {ms8 * 1e3:9.1f} us  vs AdamW foreach "
          f"{ms32 * 1e3:9.1f} us (target <=: {verdict(ms8 <= ms32)})")  # fmt: skip


if __name__ == "__main__":
    main()
