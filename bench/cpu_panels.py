"""The dense products above the fused kernels' rows, weight expanded in panels against whole.

bitsandbytes-cpu multiplies a quantized weight by more rows than its fused kernels serve as a dense
GEMM on the expanded weight, one panel at a time (``bitsandbytes_cpu._panels``). This compares it,
with AMX off (the path of CPUs without it), with the same product on the whole expanded weight (set
``PANEL_MIN`` past every weight), on the avx512 table (bf16 GEMM) and the avx2 one (f32 GEMM):

* time: per op, shape and row count, the two variants alternately, call by call, a 256 MiB buffer
  read before each call (weights evicted); medians in ms and the ratio panels / whole;
* peak memory: each op at 64 rows once in a fresh process per variant, the rise of the resident
  set's peak over the resident set before the call (``/proc/self/status``; Linux only).

    python bench/cpu_panels.py [--reps 11] [--rows 64,256] [--shapes 14336x4096,4096x14336]
"""

# The timed lambdas are called at once, inside the loop iteration that defines them.
# ruff: noqa: B023

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

import torch

OPS = ("gemm_4bit", "gemm_4bit_t", "int8_weight_mm", "int8_weight_mm_t")
PANEL_MIN = 1024  # the wheel's setting, read again at start


def operands(op: str, n: int, k: int, rows: int) -> tuple:
    """The op's arguments for an ``[n, k]`` bf16 weight (NF4, blocksize 64, or int8 rows)."""
    import bitsandbytes.functional as F

    gen = torch.Generator().manual_seed(0)
    A = torch.randn(rows, n if op.endswith("_t") else k, generator=gen).bfloat16()
    if op.startswith("gemm"):
        packed, qs = F.quantize_4bit(torch.randn(n, k, generator=gen).bfloat16(), blocksize=64, quant_type="nf4")
        return A, packed, [n, k], qs.absmax, 64, "nf4"
    return A, torch.randint(-127, 128, (n, k), generator=gen, dtype=torch.int8), torch.rand(n, generator=gen)


def set_variant(isa: str, whole: bool) -> None:
    """AMX off, ``isa``'s table, and the weight expanded whole or in the wheel's panels."""
    import bitsandbytes_cpu
    from bitsandbytes_cpu import _panels

    bitsandbytes_cpu._C.set_amx(False)
    bitsandbytes_cpu._C.set_isa(isa)
    _panels.PANEL_MIN = 1 << 62 if whole else PANEL_MIN


def peak_rise_mib(op: str, n: int, k: int, isa: str, whole: bool) -> float:
    """In this process (a fresh one): the peak resident set's rise over one call at 64 rows."""
    set_variant(isa, whole)
    fn = getattr(torch.ops.bitsandbytes, op)
    fn(*operands(op, 128, 128, 64))  # first-call costs (library and GEMM set-up) on a small weight
    args = operands(op, n, k, 64)

    def kib(field: str) -> int:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith(field))

    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak to the current resident set
    before = kib("VmRSS")
    fn(*args)
    return (kib("VmHWM") - before) / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=11)
    ap.add_argument("--rows", default="64,256")
    ap.add_argument("--shapes", default="14336x4096,4096x14336")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    import bitsandbytes  # noqa: F401 - registers the ops
    from bitsandbytes_cpu import _panels

    global PANEL_MIN
    PANEL_MIN = _panels.PANEL_MIN

    if args.child:
        op, n, k, isa, whole = args.child
        print(peak_rise_mib(op, int(n), int(k), isa, whole == "1"))
        return
    flush = torch.ones(64 * 2**20)
    shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]
    print("time: median ms, panels / whole (AMX off, weights evicted)")
    for isa in ("avx512", "avx2"):
        for n, k in shapes:
            for op in OPS:
                for rows in (int(r) for r in args.rows.split(",")):
                    fn, opargs = getattr(torch.ops.bitsandbytes, op), operands(op, n, k, rows)
                    times: dict[bool, list[float]] = {False: [], True: []}
                    for _ in range(args.reps):
                        for whole in (False, True):
                            set_variant(isa, whole)
                            flush.sum()
                            t0 = time.perf_counter()
                            fn(*opargs)
                            times[whole].append((time.perf_counter() - t0) * 1e3)
                    p, w = (statistics.median(times[v][1:]) for v in (False, True))
                    print(
                        f"{isa:7} {op:17} {n}x{k} rows {rows:4}: panels {p:8.2f}  whole {w:8.2f}  x{p / w:.2f}",
                        flush=True,
                    )
    print("\npeak memory rise of one call at 64 rows, MiB (a fresh process each)")
    for isa in ("avx512", "avx2"):
        for n, k in shapes:
            for op in OPS:
                mib = []
                for whole in ("0", "1"):
                    child = [sys.executable, __file__, "--threads", str(args.threads), "--child", op, str(n), str(k)]
                    out = subprocess.run([*child, isa, whole], capture_output=True, text=True, check=True)
                    mib.append(float(out.stdout.split()[-1]))
                print(f"{isa:7} {op:17} {n}x{k}: panels {mib[0]:7.1f}  whole {mib[1]:7.1f}", flush=True)


if __name__ == "__main__":
    main()
