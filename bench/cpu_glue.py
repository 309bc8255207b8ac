"""Per-call cost of one quantized layer at batch 1 on the CPU, with the caches cold as in a decoding
model (each layer's weight stream evicts the interpreter's and torch's state before the next
layer's call), stage by stage: the module, the functional API, the op through torch.ops, and the
native kernel alone. What a stage adds over the one below is glue.

    python bench/cpu_glue.py [--threads 2] [--evict-mib 8] [--calls 300] [--shape 256x2048]

Between two timed calls a buffer of ``--evict-mib`` MiB is rewritten (not timed); ``--evict-mib 0``
gives the warm numbers. Medians of ``--calls`` calls, every stage in each round, one run.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch


def stages(n: int, k: int) -> dict[str, callable]:
    import bitsandbytes as bnb

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, 1, k, generator=gen).bfloat16()
    lin4 = bnb.nn.Linear4bit(
        k, n, bias=False, compute_dtype=torch.bfloat16, quant_type="nf4", compress_statistics=False
    )
    lin4.weight.data = (torch.randn(n, k, generator=gen) * 0.02).bfloat16()
    lin4 = lin4.to("cpu")
    st = lin4.weight.quant_state
    q = lin4.weight.as_subclass(torch.Tensor)
    shape = list(st.shape)

    from bitsandbytes.nn import linear8bit
    from bitsandbytes.nn._params import DECODE_PLAN_BUILDS_KEY

    general4 = copy.deepcopy(lin4)  # the same layer without its kept decoding runner
    general4.weight.__dict__[DECODE_PLAN_BUILDS_KEY] = 1 << 30
    nested4 = bnb.nn.Linear4bit(
        k, n, bias=False, compute_dtype=torch.bfloat16, quant_type="nf4", compress_statistics=True
    )
    nested4.weight.data = (torch.randn(n, k, generator=gen) * 0.02).bfloat16()
    nested4 = nested4.to("cpu")
    lin8 = bnb.nn.Linear8bitLt(k, n, bias=False, has_fp16_weights=False, threshold=6.0)
    lin8.weight.data = torch.randn(n, k, generator=gen) * 0.02
    lin8 = lin8.to("cpu").eval()
    with torch.no_grad():
        lin8(x)  # moves the int8 weight into the layer's state before the copy
    general8 = copy.deepcopy(lin8)
    general8.__dict__[linear8bit._INT8_PLAN_BUILDS_KEY] = 1 << 30
    dense = torch.nn.Linear(k, n, bias=False).bfloat16()
    out = {
        "Linear4bit nf4 (module)": lambda: lin4(x),
        "Linear4bit nf4, general path": lambda: general4(x),
        "Linear4bit nf4 double-quant": lambda: nested4(x),
        "matmul_4bit": lambda: bnb.matmul_4bit(x, q, quant_state=st),
        "torch.ops gemm_4bit": lambda: torch.ops.bitsandbytes.gemm_4bit(x, q, shape, st.absmax, 64, "nf4"),
        "Linear8bitLt thr 6 (module)": lambda: lin8(x),
        "Linear8bitLt thr 6, general": lambda: general8(x),
        "nn.Linear bf16 (module)": lambda: dense(x),
    }
    try:  # the CPU wheel's native kernel, without any Python glue
        from bitsandbytes_cpu import _C, kernels
        from bitsandbytes_cpu._codes import DTYPE_CODE

        code = kernels._decode_table("nf4")
        res = torch.empty(1, n, dtype=torch.bfloat16)
        args = (x.data_ptr(), DTYPE_CODE[torch.bfloat16], 1, n, k, q.data_ptr(), st.absmax.data_ptr())
        out["native gemm_4bit"] = lambda: _C.gemm_4bit(
            *args, code.data_ptr(), 64, 0, res.data_ptr(), torch.get_num_threads()
        )
    except ImportError:
        pass
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--evict-mib", type=int, default=8)
    ap.add_argument("--calls", type=int, default=300)
    ap.add_argument("--shape", default="256x2048", help="N x K of the layer (out x in features)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    n, k = (int(v) for v in args.shape.split("x"))
    fns = stages(n, k)
    evict = torch.empty(max(args.evict_mib, 0) * 2**20 // 4)
    times: dict[str, list[float]] = {name: [] for name in fns}
    with torch.no_grad():
        for fn in fns.values():
            fn()
        for _ in range(args.calls):
            for name, fn in fns.items():
                if evict.numel():
                    evict.add_(1.0)
                t0 = time.perf_counter_ns()
                fn()
                times[name].append(time.perf_counter_ns() - t0)
    print(f"{n}x{k}, {args.threads} thread(s), {args.evict_mib} MiB evicted between calls, median of {args.calls}")
    for name, ts in times.items():
        print(f"  {name:30s} {statistics.median(ts) / 1e3:8.1f} us")


if __name__ == "__main__":
    main()
