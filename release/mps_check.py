"""Gate of the MPS wheel's test step on a macOS arm64 runner: may the conformance suite run on mps?

    python release/mps_check.py    # exit 0: run it; exit 3: skipped, the reason printed (and put in
                                   # the job summary and a warning annotation under GitHub Actions)

Hosted macOS runners do not reliably expose the GPU: some report MPS unavailable, on some custom
kernels have returned zeros. So the suite runs only when torch reports MPS, the wheel's kernels
are the ones serving mps, and a first kernel (quantize_4bit of a fixed tensor, then the round
trip) gives on the GPU what the reference gives on the CPU, bit for bit. Anything else is
reported as skipped with its reason, never as passed.
"""

from __future__ import annotations

import os
import sys

SKIPPED = 3


def reason_to_skip() -> str | None:
    """None when the MPS suite can run; otherwise why not."""
    import torch

    if not torch.backends.mps.is_available():
        built = torch.backends.mps.is_built()
        return f"torch {torch.__version__} reports no MPS device (torch.backends.mps.is_built() is {built})"
    import bitsandbytes
    from bitsandbytes.backends.reference import KERNELS as REF

    impl = bitsandbytes.implementation("quantize_4bit", "mps")
    if impl != "mps":
        records = [r for r in bitsandbytes.platforms() if r.get("platform") == "mps"]
        return f"the mps kernels are not loaded ({records})"
    g = torch.Generator().manual_seed(0)
    A = torch.randn(4096, generator=g, dtype=torch.float32).to(torch.float16)
    try:
        packed, absmax = torch.ops.bitsandbytes.quantize_4bit(A.to("mps"), 64, "nf4", torch.uint8)
        out = torch.ops.bitsandbytes.dequantize_4bit(packed, absmax, 64, "nf4", A.shape, torch.float16)
        torch.mps.synchronize()
    except Exception as exc:  # a compile or launch failure on this runner
        return f"the first kernel failed on the GPU: {exc!r}"
    want_p, want_a = REF["quantize_4bit"](A, 64, "nf4", torch.uint8)
    want_out = REF["dequantize_4bit"](want_p, want_a, 64, "nf4", A.shape, torch.float16)
    got = (packed.cpu(), absmax.cpu(), out.cpu())
    if not (torch.equal(got[0], want_p) and torch.equal(got[1], want_a) and torch.equal(got[2], want_out)):
        zeros = not got[1].any()
        return (
            "MPS is reported available but the first kernel does not check out against the CPU "
            f"({'all zeros: the runner does not execute custom kernels' if zeros else 'different values'})"
        )
    return None


def main() -> int:
    reason = reason_to_skip()
    if reason is None:
        print("mps_check: MPS available and the first kernel matches the CPU reference; running the suite")
        return 0
    print(f"mps_check: MPS tests SKIPPED: {reason}")
    if os.environ.get("GITHUB_ACTIONS"):
        print(f"::warning title=MPS tests skipped::{reason}")
        summary = os.environ.get("GITHUB_STEP_SUMMARY")
        if summary:
            with open(summary, "a") as f:
                f.write(f"### bitsandbytes-mps: MPS tests SKIPPED\n\n{reason}\n")
    return SKIPPED


if __name__ == "__main__":
    sys.exit(main())
