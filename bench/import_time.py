"""Import-time overhead of bitsandbytes over torch, measured side by side in fresh interpreters.

    python bench/import_time.py [--runs 15]

Runs `import torch` and `import bitsandbytes` alternately in new processes and reports the
medians and their difference (the overhead we are responsible for; the target is < 150 ms).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys

SNIPPET = "import time, sys; t = time.perf_counter(); import {mod}; sys.stdout.write(str(time.perf_counter() - t))"


def once(mod: str) -> float:
    out = subprocess.run([sys.executable, "-c", SNIPPET.format(mod=mod)], capture_output=True, text=True, check=True)
    return float(out.stdout)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    once("bitsandbytes")  # warm the file cache
    torch_t, bnb_t = [], []
    for _ in range(args.runs):
        torch_t.append(once("torch"))
        bnb_t.append(once("bitsandbytes"))
    t, b = statistics.median(torch_t), statistics.median(bnb_t)
    print(f"import torch:        {1e3 * t:8.1f} ms (median of {args.runs})")
    print(f"import bitsandbytes: {1e3 * b:8.1f} ms (includes torch)")
    print(f"overhead:            {1e3 * (b - t):8.1f} ms")


if __name__ == "__main__":
    main()
