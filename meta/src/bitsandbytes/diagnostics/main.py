"""The diagnostics entry points of the established release, served by this project's report."""

from __future__ import annotations

import sys

import torch


def show_environment() -> None:
    """The report's header: platform, Python, PyTorch and its runtimes, related packages."""
    from .. import __main__ as report

    data = report.collect(run_selftest=False)
    report.print_environment(data)


def sanity_check() -> None:
    """One 8-bit Adam step on the best device; raises RuntimeError when the parameter does not move."""
    import bitsandbytes as bnb

    device = "cuda" if torch.cuda.is_available() else "cpu"
    p = torch.nn.Parameter(torch.rand(10, 10, device=device))
    before = p.detach().clone()
    p.grad = torch.rand_like(p)
    adam = bnb.optim.Adam8bit([p])
    adam.step()
    if torch.equal(before, p.detach()):
        raise RuntimeError("the 8-bit Adam step left the parameter unchanged")


def main() -> None:
    """``python -m bitsandbytes``: the report and the self-test; exits 1 when a check fails."""
    from .. import __main__ as report

    sys.exit(report.main([]))
