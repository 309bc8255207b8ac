"""bitsandbytes-cpu op by op against PyTorch's own CPU kernels, measured side by side.

Every op runs at 4096×4096 and 4096×11008 ([out, in] weights; bf16, plus fp16/fp32 where the op
takes them) with 1 and 2 threads. Each group (our op and its baselines) is timed alternately,
call by call, ``--reps`` times, and the medians are reported, so that a busy machine slows all of
them alike. Printed per row: median ms, the ratio to each baseline (ours / theirs: < 1 is
faster) and, for the memory-bound ops, the fraction of the machine's copy bandwidth measured in
the same run (bytes that must move / time / copy bandwidth).

    python bench/cpu_ops.py [--threads 1,2] [--reps 15] [--shapes 4096x4096,4096x11008] [--only matmul_4bit]
"""

# The timed lambdas are called at once, inside the loop iteration that defines them.
# ruff: noqa: B023

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable

import torch

import bitsandbytes as bnb
import bitsandbytes.functional as F


def median_ms(fns: dict[str, Callable[[], object]], reps: int) -> dict[str, float]:
    """Median wall time of each function, the functions called alternately."""
    for fn in fns.values():  # warm-up (allocations, caches, first-call costs)
        fn()
        fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(reps):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[k].append((time.perf_counter() - t0) * 1e3)
    return {k: statistics.median(v) for k, v in times.items()}


def copy_bandwidth(reps: int, rounds: int = 3) -> float:
    """GB/s of a large tensor copy (bytes read + bytes written): the best of a few rounds' medians,
    since on a shared machine a neighbour's traffic only ever lowers it (and a low copy figure
    would flatter the ops measured against it)."""
    src = torch.randn(64 * 2**20 // 4 * 4)  # 256 MiB
    dst = torch.empty_like(src)
    t = min(median_ms({"copy": lambda: dst.copy_(src)}, max(reps // 2, 5))["copy"] for _ in range(rounds))
    return 2 * src.numel() * 4 / (t * 1e-3) / 1e9


def fresh_fill(N: int, K: int, dtype: torch.dtype) -> Callable[[], object]:
    """The floor of any op that returns a new [N, K] tensor: allocate it and write every element
    once (first-touch page faults and the kernel's zeroing of fresh pages included)."""
    return lambda: torch.empty(N, K, dtype=dtype).fill_(1.0)


class Report:
    def __init__(self, bw: float, threads: int) -> None:
        self.bw, self.threads, self.rows = bw, threads, []

    def add(self, name: str, times: dict[str, float], nbytes: float | None = None) -> None:
        ours = times["bnb"]
        ratios = {k: ours / v for k, v in times.items() if k != "bnb"}
        frac = (nbytes / (ours * 1e-3) / 1e9 / self.bw) if nbytes else None
        self.rows.append({"op": name, "threads": self.threads, "ms": ours, "baselines": times, "bw": frac})
        parts = [f"{name:<44} {ours:9.3f} ms"]
        parts += [f"{k}={times[k]:.3f} ms (x{r:.2f})" for k, r in ratios.items()]
        if frac is not None:
            parts.append(f"{100 * frac:5.1f}% of copy BW")
        print("  ".join(parts), flush=True)


def bench_4bit(rep: Report, N: int, K: int, reps: int, only: set[str]) -> None:
    gen = torch.Generator().manual_seed(0)
    W32 = torch.randn(N, K, generator=gen) * 0.02
    for dtype in (torch.bfloat16, torch.float16, torch.float32):
        tag = str(dtype).replace("torch.", "")
        W = W32.to(dtype)
        n = W.numel()
        es = W.element_size()
        packed, qs = F.quantize_4bit(W, blocksize=64, quant_type="nf4")
        if "quantize_4bit" in only:
            rep.add(
                f"quantize_4bit nf4 {tag} {N}x{K}",
                median_ms({"bnb": lambda: F.quantize_4bit(W, blocksize=64, quant_type="nf4")}, reps),
                n * es + n / 2 + n / 64 * 4,
            )
        if "dequantize_4bit" in only:
            rep.add(
                f"dequantize_4bit nf4 {tag} {N}x{K}",
                median_ms({"bnb": lambda: F.dequantize_4bit(packed, qs), "fresh_fill": fresh_fill(N, K, dtype)}, reps),
                n * es + n / 2 + n / 64 * 4,
            )
            # The same into a preallocated output: the kernel without first-touch page faults.
            out = torch.empty(N, K, dtype=dtype)
            op = torch.ops.bitsandbytes.dequantize_4bit.out
            rep.add(
                f"dequantize_4bit.out nf4 {tag} {N}x{K}",
                median_ms({"bnb": lambda: op(packed, qs.absmax, 64, "nf4", [N, K], dtype, out=out)}, reps),
                n * es + n / 2 + n / 64 * 4,
            )
        if "matmul_4bit" in only:
            # PyTorch's int4 weight-only kernel (group 64, asymmetric int4) as the peer.
            q4 = torch.randint(0, 16, (N, K), dtype=torch.int32, generator=gen)
            w4 = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q4, 2)
            sz = torch.rand(K // 64, N, 2, generator=gen).to(dtype) if dtype == torch.bfloat16 else None
            for batch in (1, 4, 8, 32, 128):  # 128 rows: prefill, the dequantize + dense GEMM path
                A = torch.randn(batch, K, generator=gen).to(dtype)
                fns = {
                    "bnb": lambda A=A: bnb.matmul_4bit(A, packed.t(), qs),
                    "dense": lambda A=A: torch.nn.functional.linear(A, W),
                }
                if sz is not None:
                    fns["int4pack"] = lambda A=A: torch.ops.aten._weight_int4pack_mm_for_cpu(A, w4, 64, sz)
                rep.add(f"matmul_4bit nf4 {tag} {N}x{K} batch {batch}", median_ms(fns, reps), n / 2 + n / 64 * 4)
    if "matmul_4bit" in only:  # double-quantized absmax (compress_statistics)
        W = W32.to(torch.bfloat16)
        packed, qs = F.quantize_4bit(W, blocksize=64, quant_type="nf4", compress_statistics=True)
        A = torch.randn(1, K, generator=gen).to(torch.bfloat16)
        fns = {"bnb": lambda: bnb.matmul_4bit(A, packed.t(), qs), "dense": lambda: torch.nn.functional.linear(A, W)}
        rep.add(f"matmul_4bit nf4 nested bf16 {N}x{K} batch 1", median_ms(fns, reps), N * K / 2)


def bench_4bit_stream(rep: Report, N: int, K: int, reps: int, only: set[str], stream_mib: int) -> None:
    """Batch-1 bf16 ``matmul_4bit`` as a decoding model too large for the cache runs it: a pass over
    distinct layers of this shape, together at least ``stream_mib`` MiB, called back to back, so
    that every call's weight comes from memory while the code around the calls stays as warm as a
    model's layers keep it. Per-call time: a pass's median over its layer count. The peers (dense
    bf16, PyTorch's int4 kernel) stream their own distinct weights the same way."""
    if "matmul_4bit" not in only or stream_mib <= 0:
        return
    gen = torch.Generator().manual_seed(4)
    A = torch.randn(1, K, generator=gen).to(torch.bfloat16)
    budget = stream_mib * 2**20

    def layers(nbytes: float) -> int:
        return max(1, -(-int(budget) // int(nbytes)))

    nbytes = N * K / 2 + N * K / 64 * 4
    quant, mods = [], []
    for _ in range(layers(nbytes)):
        W = (torch.randn(N, K, generator=gen) * 0.02).to(torch.bfloat16)
        packed, qs = F.quantize_4bit(W, blocksize=64, quant_type="nf4")
        quant.append((packed.t(), qs))
        m = bnb.nn.Linear4bit(
            K, N, bias=False, compute_dtype=torch.bfloat16, quant_type="nf4", compress_statistics=False
        )
        m.weight.data = W
        mods.append(m.to("cpu"))  # quantized by the move, as transformers' loading does
    dense = [torch.randn(N, K, generator=gen).to(torch.bfloat16) for _ in range(layers(N * K * 2))]
    i4 = [
        torch.ops.aten._convert_weight_to_int4pack_for_cpu(torch.randint(0, 16, (N, K), dtype=torch.int32), 2)
        for _ in range(layers(nbytes))
    ]
    sz = torch.rand(K // 64, N, 2, generator=gen).to(torch.bfloat16)
    calls = {
        "bnb": [lambda q=q, s=s: bnb.matmul_4bit(A, q, s) for q, s in quant],
        "Linear4bit": [lambda m=m: m(A) for m in mods],
        "dense": [lambda w=w: torch.nn.functional.linear(A, w) for w in dense],
        "int4pack": [lambda w=w: torch.ops.aten._weight_int4pack_mm_for_cpu(A, w, 64, sz) for w in i4],
    }
    # Each pass begins with an untimed call of its last layer (one more layer's weight through the
    # caches), so that its first timed call finds the code as warm as the previous layer of a
    # model leaves it, whichever function the pass before ran; then every layer once, timed.
    times: dict[str, list[float]] = {k: [] for k in calls}
    with torch.no_grad():
        for fns in calls.values():
            for fn in fns:
                fn()
        for _ in range(reps):
            for key, fns in calls.items():
                fns[-1]()
                t0 = time.perf_counter()
                for fn in fns:
                    fn()
                times[key].append((time.perf_counter() - t0) * 1e3 / len(fns))
    per_call = {k: statistics.median(v) for k, v in times.items()}
    name = f"matmul_4bit nf4 bf16 {N}x{K} batch 1, {len(quant)} layers streamed"
    rep.add(name, per_call, nbytes)
    rep.add(f"  the same through Linear4bit ({len(mods)} layers)", {"bnb": per_call["Linear4bit"]}, nbytes)


def bench_blockwise(rep: Report, N: int, K: int, reps: int, only: set[str]) -> None:
    gen = torch.Generator().manual_seed(1)
    for dtype in (torch.float32, torch.bfloat16):
        tag = str(dtype).replace("torch.", "")
        A = torch.randn(N, K, generator=gen).to(dtype)
        n, es = A.numel(), A.element_size()
        q, st = F.quantize_blockwise(A, blocksize=4096)
        if "quantize_blockwise" in only:
            rep.add(
                f"quantize_blockwise {tag} {N}x{K}",
                median_ms({"bnb": lambda: F.quantize_blockwise(A, blocksize=4096)}, reps),
                n * es + n,
            )
        if "dequantize_blockwise" in only:
            rep.add(
                f"dequantize_blockwise {tag} {N}x{K}",
                median_ms({"bnb": lambda: F.dequantize_blockwise(q, st), "fresh_fill": fresh_fill(N, K, dtype)}, reps),
                n * es + n,
            )
            out = torch.empty(N, K, dtype=dtype)
            op = torch.ops.bitsandbytes.dequantize_blockwise.out
            rep.add(
                f"dequantize_blockwise.out {tag} {N}x{K}",
                median_ms({"bnb": lambda: op(q, st.absmax, st.code, 4096, dtype, out=out)}, reps),
                n * es + n,
            )


def bench_int8(rep: Report, N: int, K: int, reps: int, only: set[str]) -> None:
    if "linear8bit" not in only:
        return
    gen = torch.Generator().manual_seed(2)
    W = torch.randn(N, K, generator=gen) * 0.02
    w8 = torch.randint(-127, 128, (N, K), dtype=torch.int8, generator=gen)
    scales = torch.rand(N, generator=gen).bfloat16()  # int8pack's fast path takes bf16 activations
    for thr in (6.0, 0.0):
        layer = bnb.nn.Linear8bitLt(K, N, bias=True, has_fp16_weights=False, threshold=thr)
        layer.weight = bnb.nn.Int8Params(W.clone(), requires_grad=False, has_fp16_weights=False)
        layer = layer.to("cpu").eval()
        for batch in (1, 8):
            x = torch.randn(batch, K, generator=gen)
            x[:, :: K // 4] *= 20  # a few outlier columns (|x| >= 6)
            dense = torch.nn.Linear(K, N)
            xb = x.bfloat16()
            with torch.no_grad():
                fns = {
                    "bnb": lambda x=x: layer(x),
                    "dense_fp32": lambda x=x: dense(x),
                    "int8pack_bf16": lambda xb=xb: torch.ops.aten._weight_int8pack_mm(xb, w8, scales),
                }
                rep.add(f"Linear8bitLt fp32 {N}x{K} batch {batch} thr {thr:g}", median_ms(fns, reps), N * K)
        if thr > 0.0:  # training mode (CPU: the int8 weight dequantized for a float matmul), fwd + bwd
            layer.train()
            x = torch.randn(8, K, generator=gen, requires_grad=True)
            dense = torch.nn.Linear(K, N)
            fns = {"bnb": lambda: layer(x).sum().backward(), "dense_fp32": lambda: dense(x).sum().backward()}
            rep.add(f"Linear8bitLt fp32 {N}x{K} batch 8 thr 6 train fwd+bwd", median_ms(fns, reps))
    # The row quantization of the activations (LLM.int8()'s first step), for a 4096-token batch.
    A = (torch.randn(4096, K, generator=gen) * 2).half()
    fns = {"bnb": lambda: F.int8_vectorwise_quant(A, threshold=6.0)}
    # Bytes: A read twice (the outlier scan, then the quantization), the codes written once.
    rep.add(f"int8_vectorwise_quant fp16 4096x{K} thr 6", median_ms(fns, reps), A.numel() * 5 + 4096 * 4)


def bench_optim(rep: Report, reps: int, only: set[str]) -> None:
    if "optim" not in only:
        return
    gen = torch.Generator().manual_seed(3)

    def make(cls, **kw):
        p = torch.nn.Parameter(torch.randn(4096, 4096, generator=gen))
        p.grad = torch.randn(4096, 4096, generator=gen) * 1e-2
        opt = cls([p], **kw)
        opt.step()
        return opt

    ref_fused = make(torch.optim.AdamW, fused=True)
    ref_foreach = make(torch.optim.AdamW, foreach=True)
    for name in ("Adam8bit", "AdamW8bit", "Lion8bit", "Adam", "AdEMAMix8bit", "SGD8bit", "RMSprop8bit", "LAMB8bit"):
        kw = {"lr": 1e-2, "momentum": 0.9} if name == "SGD8bit" else {}
        opt = make(getattr(bnb.optim, name), **kw)
        times = median_ms(
            {"bnb": opt.step, "AdamW_fused": ref_fused.step, "AdamW_foreach": ref_foreach.step}, max(reps // 3, 5)
        )
        nbytes = 16.7e6 * (8 + 4 + 2 if "8bit" in name else 8 + 8 + 8)
        rep.add(f"{name}.step() 16.7M f32", times, nbytes)
        if name == "AdEMAMix8bit":
            # Past step 164 (beta1 = 0.9) the first bias correction is 1 in f32, and its division
            # drops out: most of a fine-tuning run's steps are this row's.
            for state in opt.state.values():
                state["step"] = 1000
            times = median_ms(
                {"bnb": opt.step, "AdamW_fused": ref_fused.step, "AdamW_foreach": ref_foreach.step}, max(reps // 3, 5)
            )
            rep.add(f"{name}.step() 16.7M f32, from step 1000", times, nbytes)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--shapes", default="4096x4096,4096x11008")
    ap.add_argument(
        "--only",
        default="matmul_4bit,dequantize_4bit,quantize_4bit,quantize_blockwise,dequantize_blockwise,linear8bit,optim",
    )
    ap.add_argument(
        "--stream-mib",
        type=int,
        default=64,
        help="batch-1 matmul_4bit also over distinct layers of at least this many MiB in all (0: off)",
    )
    ap.add_argument("--json", help="also write the rows to this file")
    args = ap.parse_args()
    only = set(args.only.split(","))
    import bitsandbytes_cpu

    info = bitsandbytes_cpu.build_info()
    flags = ""
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            line = next((ln for ln in f if ln.startswith("flags")), "")
        flags = " ".join(sorted(x for x in line.split() if x.startswith(("avx", "fma", "f16c", "amx"))))
    print(f"bitsandbytes-cpu {info['version']}: isa {info['isa_selected']} (usable {info['isa_usable']})")
    print(f"torch {torch.__version__}; cpu flags: {flags}; load average {os.getloadavg()}")
    rows = []
    for t in [int(x) for x in args.threads.split(",")]:
        torch.set_num_threads(t)
        bw = copy_bandwidth(args.reps)
        print(f"\n== {t} thread(s): copy bandwidth {bw:.1f} GB/s")
        rep = Report(bw, t)
        for shape in args.shapes.split(","):
            N, K = (int(x) for x in shape.split("x"))
            bench_4bit(rep, N, K, args.reps, only)
            bench_4bit_stream(rep, N, K, args.reps, only, args.stream_mib)
            bench_blockwise(rep, N, K, args.reps, only)
            bench_int8(rep, N, K, args.reps, only)
        bench_optim(rep, args.reps, only)
        rows += rep.rows
    print(f"\nload average at the end {os.getloadavg()}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
