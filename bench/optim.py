"""Time one optimizer ``step()`` on a 4096×4096 (16.8 M element) parameter.

Every bitsandbytes optimizer, 8-bit and 32-bit, is compared with ``torch.optim.AdamW(foreach=True)``
measured in the same run on the same device, the two stepped alternately. Prints a table of milliseconds per step and the
ratio to torch's AdamW.

    python bench/optim.py [--device cpu] [--size 4096] [--reps 3] [--only Adam8bit,AdamW32bit]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import bitsandbytes as bnb

OPTIMIZERS: list[tuple[str, dict]] = [
    ("AdamW8bit", {}),
    ("AdamW32bit", {}),
    ("Adam8bit", {}),
    ("Adam32bit", {}),
    ("AdEMAMix8bit", {}),
    ("AdEMAMix32bit", {}),
    ("Lion8bit", {}),
    ("Lion32bit", {}),
    ("LAMB8bit", {}),
    ("LAMB32bit", {}),
    ("SGD8bit", {"lr": 1e-2, "momentum": 0.9}),
    ("SGD32bit", {"lr": 1e-2, "momentum": 0.9}),
    ("LARS8bit", {"lr": 1e-2, "momentum": 0.9}),
    ("LARS32bit", {"lr": 1e-2, "momentum": 0.9}),
    ("RMSprop8bit", {}),
    ("RMSprop32bit", {}),
    ("Adagrad8bit", {}),
    ("Adagrad32bit", {}),
]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "xpu":
        torch.xpu.synchronize(device)


def _setup(make, size: int, device: torch.device):
    gen = torch.Generator().manual_seed(0)
    p = torch.nn.Parameter(torch.randn(size, size, generator=gen).to(device))
    p.grad = (torch.randn(size, size, generator=gen) * 1e-2).to(device)
    return make([p])


def _timed(opt, device: torch.device) -> float:
    t0 = time.perf_counter()
    opt.step()
    sync(device)
    return (time.perf_counter() - t0) * 1e3


def time_pair(make, size: int, device: torch.device, reps: int, warmup: int) -> tuple[float, float]:
    """Median milliseconds of one ``step()`` of torch's AdamW(foreach) and of ``make``'s optimizer.

    The two are stepped alternately (after ``warmup`` untimed steps each, so states exist), so
    both see the same machine load: the ratio stays meaningful on a shared, busy machine.
    """
    ref = _setup(lambda ps: torch.optim.AdamW(ps, lr=1e-3, foreach=True), size, device)
    opt = _setup(make, size, device)
    for _ in range(warmup):
        ref.step()
        opt.step()
    sync(device)
    t_ref, t_opt = [], []
    for _ in range(reps):
        t_ref.append(_timed(ref, device))
        t_opt.append(_timed(opt, device))
    return statistics.median(t_ref), statistics.median(t_opt)


def state_bytes(make, device: torch.device) -> float:
    """Optimizer-state bytes per parameter element for a 64×4096 parameter (code books excluded)."""
    p = torch.nn.Parameter(torch.randn(64, 4096, device=device))
    p.grad = torch.randn_like(p)
    opt = make([p])
    opt.step()
    st = opt.state[p]
    total = sum(
        v.numel() * v.element_size()
        for k, v in st.items()
        if isinstance(v, torch.Tensor) and k not in ("qmap1", "qmap2")
    )
    return total / p.numel()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--only", default="", help="comma-separated optimizer names (default: all)")
    args = ap.parse_args()
    device = torch.device(args.device)
    only = {s for s in args.only.split(",") if s}

    print(
        f"torch {torch.__version__}, bitsandbytes {bnb.__version__}, device {device}, threads {torch.get_num_threads()}"
    )
    impl8 = bnb.implementation("optimizer_update_8bit_blockwise", device.type)
    impl32 = bnb.implementation("optimizer_update_32bit", device.type)
    print(f"kernels: 8-bit {impl8}, 32-bit {impl32}; parameter {args.size}x{args.size} f32, median of {args.reps}")

    rows = []
    for name, kwargs in OPTIMIZERS:
        if only and name not in only:
            continue
        cls = getattr(bnb.optim, name)

        def make(ps, cls=cls, kwargs=kwargs):
            return cls(ps, **kwargs)

        ref, ms = time_pair(make, args.size, device, args.reps, args.warmup)
        rows.append((name, ms, ref, state_bytes(make, device)))
        print(f"  {name}: {ms:.1f} ms (AdamW {ref:.1f} ms)", flush=True)

    print(f"\n| {'optimizer':<14} | {'ms/step':>9} | {'AdamW ms':>9} | {'ratio':>7} | {'state B/param':>13} |")
    print(f"|{'-' * 16}|{'-' * 11}|{'-' * 11}|{'-' * 9}|{'-' * 15}|")
    for name, ms, ref, bpp in rows:
        print(f"| {name:<14} | {ms:9.1f} | {ref:9.1f} | {ms / ref:6.2f}x | {bpp:13.3f} |")
    print("\nratio = this optimizer / torch.optim.AdamW(foreach=True), stepped alternately in the same run;")
    print("torch AdamW keeps 8 bytes of state per parameter.")


if __name__ == "__main__":
    main()
