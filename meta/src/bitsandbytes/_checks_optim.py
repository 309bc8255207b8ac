"""Argument checks of the optimizer ops, shared by the fake kernels, the reference kernels and the
platform glue (re-exported by ``bitsandbytes._checks``, the name the platform wheels call)."""

from __future__ import annotations

import torch

from ._checks import FLOAT_DTYPES, _byte_span, _memory_domain, check_code, check_dtype, check_writable, num_blocks

OPTIMIZER_NAMES = ("adam", "lamb", "momentum", "lars", "rmsprop", "adagrad", "lion", "ademamix")
"""Algorithms the optimizer ops accept."""

TWO_STATE_OPTIMIZERS = frozenset({"adam", "lamb", "ademamix"})
"""Algorithms with a second state (``state2``)."""

OPTIMIZER_STATE_BLOCKSIZE = 256
"""Block size of the 8-bit optimizer states (fixed)."""


def check_optimizer_common(
    optimizer_name: str, g: torch.Tensor, p: torch.Tensor, step: int, lr: float, eps: float
) -> None:
    """Checks of both optimizer ops: a known algorithm, matching g/p, step >= 1, lr and eps >= 0."""
    if optimizer_name not in OPTIMIZER_NAMES:
        raise ValueError(
            f"bitsandbytes: unknown optimizer_name {optimizer_name!r}; expected one of {', '.join(OPTIMIZER_NAMES)}"
        )
    check_optimizer_args(g, p)
    if step < 1:
        raise ValueError(f"bitsandbytes: step must be >= 1 (the first step is 1), got {step}")
    if not (lr >= 0.0):  # NaN fails too
        raise ValueError(f"bitsandbytes: lr must be non-negative, got {lr}")
    if not (eps >= 0.0):
        raise ValueError(f"bitsandbytes: eps must be non-negative, got {eps}")


def check_optimizer_state(t: torch.Tensor | None, arg: str, numel: int, dtype: torch.dtype) -> None:
    """An optimizer state (or its absmax): present, of ``dtype``, ``numel`` elements, contiguous."""
    if t is None:
        raise ValueError(f"bitsandbytes: {arg} is required for this optimizer")
    check_dtype(t, arg, (dtype,))
    if t.numel() != numel:
        raise ValueError(f"bitsandbytes: {arg} must hold {numel} elements, got {t.numel()}")
    if not t.is_contiguous():
        raise ValueError(f"bitsandbytes: {arg} must be contiguous")


def check_optimizer_32bit_states(
    optimizer_name: str,
    n: int,
    state1: torch.Tensor,
    state2: torch.Tensor | None,
    unorm_vec: torch.Tensor | None,
    max_unorm: float,
) -> tuple[bool, bool]:
    """The f32 states of an ``n``-element parameter (AdEMAMix keeps two rows in state1) and, with
    ``max_unorm > 0``, the one-element ``unorm_vec``; returns (whether the algorithm uses state2,
    whether the update is clipped)."""
    check_optimizer_state(state1, "state1", (2 if optimizer_name == "ademamix" else 1) * n, torch.float32)
    two = optimizer_name in TWO_STATE_OPTIMIZERS
    if two:
        check_optimizer_state(state2, "state2", n, torch.float32)
    clip = max_unorm > 0.0
    if clip:
        check_optimizer_state(unorm_vec, "unorm_vec", 1, torch.float32)
    return two, clip


def check_optimizer_8bit_states(
    optimizer_name: str,
    n: int,
    state1: torch.Tensor,
    state2: torch.Tensor | None,
    qmap1: torch.Tensor,
    qmap2: torch.Tensor | None,
    absmax1: torch.Tensor,
    absmax2: torch.Tensor | None,
) -> bool:
    """The 8-bit states of an ``n``-element parameter (AdEMAMix keeps two rows in state1) with
    their code books and block absmax; returns whether the algorithm uses state2."""
    rows = 2 if optimizer_name == "ademamix" else 1
    blocks = num_blocks(n, OPTIMIZER_STATE_BLOCKSIZE)
    check_optimizer_state(state1, "state1", rows * n, torch.uint8)
    check_code(qmap1, "qmap1")
    check_optimizer_state(absmax1, "absmax1", rows * blocks, torch.float32)
    two = optimizer_name in TWO_STATE_OPTIMIZERS
    if two:
        check_optimizer_state(state2, "state2", n, torch.uint8)
        if qmap2 is None:
            raise ValueError("bitsandbytes: qmap2 is required for this optimizer")
        check_code(qmap2, "qmap2")
        check_optimizer_state(absmax2, "absmax2", blocks, torch.float32)
    return two


def check_optimizer_no_alias(written: dict[str, torch.Tensor | None], read: dict[str, torch.Tensor | None]) -> None:
    """An optimizer op updates ``written`` (the parameter, the states, their absmax, unorm_vec) in
    place while it reads ``read`` (the gradient, the code books): no written tensor may be an
    expanded view or share memory with any other argument, whose values it would change while
    the update still reads them (a state passed as another state, as the parameter, or a view of
    the gradient's memory). The read-only arguments may share memory with one another (one code
    book for both states). Each tensor's byte span is taken once: this runs on every step of
    every parameter."""
    spans: list[tuple[str, bool, tuple[torch.device, int], int, int]] = []
    try:
        for is_written, group in ((True, written), (False, read)):
            for name, t in group.items():
                if t is None:
                    continue
                if is_written and not t.is_contiguous():
                    check_writable(t, name)
                if t.numel() and not t.is_meta:
                    lo, hi = _byte_span(t)
                    spans.append((name, is_written, _memory_domain(t), lo, hi))
    except RuntimeError:  # tensors without storage (tracing, functional tensors)
        return
    for i, (name, is_written, domain, lo, hi) in enumerate(spans):
        if not is_written:
            break  # read-only tensors may overlap each other
        for other, _, domain2, lo2, hi2 in spans[i + 1 :]:
            if lo < hi2 and lo2 < hi and domain == domain2:
                raise ValueError(
                    f"bitsandbytes: {name} and {other} may share memory (their byte ranges overlap); the "
                    f"optimizer update writes {name} in place, so each state, the parameter and the gradient "
                    f"need memory of their own"
                )


def check_optimizer_32bit_no_alias(
    g: torch.Tensor,
    p: torch.Tensor,
    state1: torch.Tensor,
    state2: torch.Tensor | None,
    unorm_vec: torch.Tensor | None,
) -> None:
    """``check_optimizer_no_alias`` over optimizer_update_32bit's tensors (None: unused by the call)."""
    check_optimizer_no_alias({"p": p, "state1": state1, "state2": state2, "unorm_vec": unorm_vec}, {"g": g})


def check_optimizer_8bit_no_alias(
    g: torch.Tensor,
    p: torch.Tensor,
    state1: torch.Tensor,
    state2: torch.Tensor | None,
    qmap1: torch.Tensor,
    qmap2: torch.Tensor | None,
    absmax1: torch.Tensor,
    absmax2: torch.Tensor | None,
) -> None:
    """``check_optimizer_no_alias`` over optimizer_update_8bit_blockwise's tensors (None: unused)."""
    check_optimizer_no_alias(
        {"p": p, "state1": state1, "absmax1": absmax1, "state2": state2, "absmax2": absmax2},
        {"g": g, "qmap1": qmap1, "qmap2": qmap2},
    )


def check_optimizer_args(g: torch.Tensor, p: torch.Tensor) -> None:
    """Checks shared by both optimizer ops: matching sizes and float dtypes."""
    if g.numel() != p.numel():
        raise ValueError(f"bitsandbytes: g has {g.numel()} elements but p has {p.numel()}")
    check_dtype(g, "g", FLOAT_DTYPES)
    if g.dtype != p.dtype:
        raise TypeError(f"bitsandbytes: g dtype {g.dtype} must equal p dtype {p.dtype}")
