"""The fine-tuning paths of bitsandbytes-cpu against dense PyTorch, measured side by side.

Per shape ([out, in] bf16 weights) and row count: ``Linear8bitLt`` in training mode (the path of
peft LoRA on an 8-bit base) forward, and forward + input gradient; ``Linear4bit`` forward + input
gradient (QLoRA); ``matmul_4bit`` prefill. Peers in the same run: ``_weight_int8pack_mm`` (torch's
int8 weight-only kernel), dense bf16 ``nn.Linear`` with a frozen weight (input gradient only) and
with a trainable one, the frozen layer in f32 ("dense_f32": the fast dense layer on CPUs without bf16
arithmetic), "before": what these layers ran until the op interface's version 2 (a dequantized
copy of the weight per call, then a dense matmul), and on CPUs with AMX-BF16: the same
layer with bitsandbytes-cpu's AMX path turned off ("no_amx"), then also with its weight expanded
whole instead of in panels ("no_amx_whole"), and on the avx2 kernel table ("avx2", "avx2_whole").

Before every timed call a 256 MiB buffer is read, so each call reads its weight from memory as in a
model too large for the cache. Variants are timed alternately, call by call; medians in ms.

    python bench/cpu_finetune.py [--threads 2] [--reps 9] [--shapes 4096x4096,4096x14336]
"""

# The timed lambdas are called at once, inside the loop iteration that defines them.
# ruff: noqa: B023

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

import torch

import bitsandbytes as bnb
import bitsandbytes.functional as F

_FLUSH = torch.ones(64 * 2**20)  # 256 MiB, read (not written: dirty lines would be written back in the timed call)


def timed(fns: dict[str, Callable[[], object]], reps: int) -> dict[str, float]:
    """Median ms of each function, called alternately, the cache flushed before each call."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(reps):
        for k, fn in fns.items():
            _FLUSH.sum()
            t0 = time.perf_counter()
            fn()
            times[k].append((time.perf_counter() - t0) * 1e3)
    return {k: statistics.median(v) for k, v in times.items()}


def fwd_bwd(layer: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> Callable[[], None]:
    def run() -> None:
        xi = x.detach().requires_grad_()
        layer(xi).backward(torch.ones(*x.shape[:-1], _out_features(layer), dtype=x.dtype))

    return run


def _out_features(layer) -> int:
    return layer.out_features if hasattr(layer, "out_features") else layer.weight.shape[0]


def amx_usable() -> bool:
    """Whether bitsandbytes-cpu's panel path runs: on AMX, or in its AVX512-BF16 form (no AMX)."""
    try:
        import bitsandbytes_cpu
    except ImportError:
        return False
    return bitsandbytes_cpu._C.panel_usable()


def without_amx(fn: Callable[[], object], isa: str | None = None, whole: bool = False) -> Callable[[], None]:
    """fn with bitsandbytes-cpu's panel path (AMX, or its AVX512-BF16 form on CPUs without AMX)
    turned off: the fused kernels and oneDNN's GEMM on the weight expanded panel by panel. ``isa``: also with that instruction set's kernel table (``avx2``: the f32
    dense GEMM of CPUs without bf16 arithmetic). ``whole``: the weight expanded whole before the
    dense GEMM, as before the panels of ``bitsandbytes_cpu._panels``."""
    import bitsandbytes_cpu
    from bitsandbytes_cpu import _panels

    def run() -> None:
        old_isa, old_rows = bitsandbytes_cpu._C.get_isa(), _panels.PANEL_MIN
        bitsandbytes_cpu._C.set_amx(False)
        if isa:
            bitsandbytes_cpu._C.set_isa(isa)
        if whole:
            _panels.PANEL_MIN = 1 << 62
        try:
            fn()
        finally:
            bitsandbytes_cpu._C.set_amx(True)
            bitsandbytes_cpu._C.set_isa(old_isa)
            _panels.PANEL_MIN = old_rows

    return run


def before_int8(lin8: bnb.nn.Linear8bitLt) -> Callable[[torch.Tensor], torch.Tensor]:
    """The training path before version 2: dequantize the int8 weight per call, then F.linear."""
    CB, SCB = lin8.weight.CB, lin8.weight.SCB

    def layer(x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.linear(x, F.int8_vectorwise_dequant(CB, SCB).to(x.dtype), lin8.bias.to(x.dtype))

    layer.out_features = CB.shape[0]
    return layer


def before_4bit(lin4: bnb.nn.Linear4bit) -> Callable[[torch.Tensor], torch.Tensor]:
    """Linear4bit's input gradient before version 2: a fresh dequantized weight per backward."""
    packed, qs = lin4.weight.data, lin4.weight.quant_state

    class Fn(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return bnb.matmul_4bit(x.detach(), packed.t(), qs)

        @staticmethod
        def backward(ctx, g):
            return g @ F.dequantize_4bit(packed, qs).to(g.dtype)

    def layer(x: torch.Tensor) -> torch.Tensor:
        return Fn.apply(x)

    layer.out_features = qs.shape[0]
    return layer


def run_shape(N: int, K: int, reps: int, rows: list[dict]) -> None:
    torch.manual_seed(0)
    dtype = torch.bfloat16
    dense = torch.nn.Linear(K, N, dtype=dtype)
    frozen = torch.nn.Linear(K, N, dtype=dtype).requires_grad_(False)
    # The same frozen layer in f32: on CPUs without bf16 arithmetic (no AVX512-BF16 or AMX) torch's
    # bf16 GEMM is a slow fallback, and f32 is the dense layer a user would run there instead.
    frozen32 = torch.nn.Linear(K, N, dtype=torch.float32).requires_grad_(False)
    with torch.no_grad():  # (outside no_grad the copy would tie frozen's weight into dense's graph)
        frozen.weight.copy_(dense.weight)
        frozen32.weight.copy_(dense.weight)
    lin8 = bnb.nn.Linear8bitLt(K, N, has_fp16_weights=False).to(dtype).to("cpu").train()
    lin4 = bnb.nn.Linear4bit(K, N, compute_dtype=dtype, quant_type="nf4").to(dtype).to("cpu")
    CB, scales = lin8.weight.CB, (lin8.weight.SCB / 127).to(dtype)
    b8, b4 = before_int8(lin8), before_4bit(lin4)

    def report(what: str, m: int, times: dict[str, float]) -> None:
        ours = times["bnb"]
        rows.append({"shape": f"{N}x{K}", "what": what, "rows": m, "ms": times})
        cols = "  ".join(f"{k}={v:.2f} (x{ours / v:.2f})" for k, v in times.items() if k != "bnb")
        print(f"{N}x{K} {what:<28} rows {m:>3}: bnb {ours:8.2f} ms  {cols}", flush=True)

    amx = amx_usable()
    for m in (1, 4, 8, 16, 32):
        x = torch.randn(m, K, dtype=dtype)
        x32 = x.float()
        with torch.no_grad():
            report(
                "Linear8bitLt train fwd",
                m,
                timed(
                    {
                        "bnb": lambda: lin8(x),
                        "int8pack": lambda: torch._weight_int8pack_mm(x, CB, scales),
                        "dense": lambda: frozen(x),
                        "dense_f32": lambda: frozen32(x32),
                        "before": lambda: b8(x),
                        **({"no_amx": without_amx(lambda: lin8(x))} if amx and m > 16 else {}),
                        **({"no_amx_whole": without_amx(lambda: lin8(x), whole=True)} if amx and m > 16 else {}),
                    },
                    reps,
                ),
            )
    for m in (8, 32, 128):
        x = torch.randn(m, K, dtype=dtype)
        common = {
            "dense_frozen": fwd_bwd(frozen, x),
            "dense": fwd_bwd(dense, x),
            "dense_f32_frozen": fwd_bwd(frozen32, x.float()),
        }
        amx8 = {"no_amx": without_amx(fwd_bwd(lin8, x))} if amx else {}
        amx4 = {"no_amx": without_amx(fwd_bwd(lin4, x))} if amx else {}
        if amx and m > 8:  # the input gradients' dense GEMM, on column panels and on the whole weight
            amx8["no_amx_whole"] = without_amx(fwd_bwd(lin8, x), whole=True)
            amx4["no_amx_whole"] = without_amx(fwd_bwd(lin4, x), whole=True)
        report(
            "Linear8bitLt train fwd+bwd",
            m,
            timed({"bnb": fwd_bwd(lin8, x), **common, "before": fwd_bwd(b8, x), **amx8}, reps),
        )
        report(
            "Linear4bit fwd+bwd", m, timed({"bnb": fwd_bwd(lin4, x), **common, "before": fwd_bwd(b4, x), **amx4}, reps)
        )
    for m in (16, 64, 256, 512):
        x = torch.randn(m, K, dtype=dtype)
        with torch.no_grad():
            noamx = {"no_amx": without_amx(lambda: lin4(x))} if amx else {}
            if amx and m > 32:  # the dense GEMM on the expanded weight, in panels and whole
                noamx["no_amx_whole"] = without_amx(lambda: lin4(x), whole=True)
                noamx["avx2"] = without_amx(lambda: lin4(x), isa="avx2")
                noamx["avx2_whole"] = without_amx(lambda: lin4(x), isa="avx2", whole=True)
            x32 = x.float()
            peers = {"dense": lambda: frozen(x), "dense_f32": lambda: frozen32(x32), **noamx}
            report("matmul_4bit prefill", m, timed({"bnb": lambda: lin4(x), **peers}, reps))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--reps", type=int, default=9)
    parser.add_argument("--shapes", default="4096x4096,4096x14336")
    parser.add_argument("--json", help="also write the rows here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows: list[dict] = []
    for shape in args.shapes.split(","):
        n, k = (int(v) for v in shape.split("x"))
        run_shape(n, k, args.reps, rows)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"threads": args.threads, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
