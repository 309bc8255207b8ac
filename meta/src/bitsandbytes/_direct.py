"""Direct calls of platform kernels in eager mode, past the dispatcher.

A call through ``torch.ops.bitsandbytes.<op>`` costs the dispatcher's round trip into the Python
kernel: about 5 us with warm caches and about 35 us in a decoding model, where each layer's weight
stream evicts the interpreter's state between two calls (2 threads of this project's CPU benchmark
machine; ``bench/cpu_glue.py``). The functions on the decode path (the 4-bit GEMM, LLM.int8()
inference) therefore call the kernel that the bitsandbytes loader registered for the device
directly, where that is exactly what the dispatcher would run:

- not while torch.compile traces, nor under a TorchDispatchMode or TorchFunctionMode (FakeTensor,
  FlopCounterMode, ...), nor while the autograd profiler records (profiles keep showing the op),
  nor under autocast (the dispatcher's kernels run with it off);
- every tensor argument a plain ``torch.Tensor`` or ``nn.Parameter`` (whose torch functions are
  disabled: the dispatcher sees a tensor), all on one device, none requiring grad while grad mode
  is on;
- the kernel the dispatcher holds for that op and device is still the loader's one: checked at the
  first direct call of each (op, device), so a kernel registered through ``torch.library`` after
  the import (an out-of-tree backend, a user's override) is reached through the dispatcher.

A platform kernel may also offer ``kernel.prepare(*weight_side_args)``: a runner with the
weight-side arguments of a layer checked once (``prepare`` below; ``Linear4bit`` and
``Linear8bitLt`` keep one for inference). Runners hold what they were prepared with: a caller
keeps one only while it calls with those same tensors and ``generation`` is unchanged, and calls
it only where ``no_modes()`` holds and torch.compile is not tracing.

``BNB_DIRECT_KERNELS=0`` in the environment turns the fast path off.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import torch
import torch.autograd.forward_ad as _fwad

from ._ops import NAMESPACE, autocast_on, dispatch_key

# The torch internals this needs; where one is missing (an older torch), the fast path stays off.
_dispatch_stack_len = getattr(torch._C, "_len_torch_dispatch_stack", None)
_function_mode_on = getattr(torch._C, "_is_torch_function_mode_enabled", None)
_profiler_on = getattr(getattr(torch._C, "_autograd", None), "_profiler_enabled", None)
_computed_kernel = getattr(torch._C, "_dispatch_get_computed_kernel_for_dispatch_key", None)
_functorch_active = getattr(torch._C, "_are_functorch_transforms_active", None) or (lambda: False)

_ENABLED = os.environ.get("BNB_DIRECT_KERNELS", "1").strip() != "0" and None not in (
    _dispatch_stack_len,
    _function_mode_on,
    _profiler_on,
    _computed_kernel,
)

_PLAIN = (torch.Tensor, torch.nn.Parameter)

_verified: dict[tuple[str, str], Callable] = {}
"""(op, device type) -> kernel, checked to be what the dispatcher runs."""

_bound: dict[tuple[str, str], tuple[Callable, str]] = {}
"""(op, device type) -> (kernel, the dispatcher's description of it when it was registered)."""

generation = 0
"""Bumped whenever a kernel is bound or unbound, or found replaced: prepared runners made before
are stale."""


def _changed() -> None:
    global generation
    generation += 1


def _dispatcher_kernel(op: str, device_type: str) -> str | None:
    """The dispatcher's description of the kernel it runs for ``op`` on ``device_type`` (it names
    the registration site), or None where this torch cannot say."""
    key = dispatch_key(device_type)
    if _computed_kernel is None or key is None:
        return None
    try:
        desc = repr(_computed_kernel(f"{NAMESPACE}::{op}", key))
    except (RuntimeError, TypeError):
        return None
    return desc if "registered at" in desc else None  # no registration site: cannot tell kernels apart


def bind(op: str, device_type: str, fn: Callable) -> None:
    """Record ``fn``, just registered as the kernel of ``op`` on ``device_type``, for direct calls."""
    _changed()
    _verified.pop((op, device_type), None)
    _bound.pop((op, device_type), None)
    site = _dispatcher_kernel(op, device_type)
    if _ENABLED and site is not None:
        _bound[(op, device_type)] = (fn, site)


def unbind(op: str, device_type: str, fn: Callable) -> None:
    """Forget ``fn`` as the direct kernel of ``op`` on ``device_type`` (its registration is gone)."""
    _changed()
    if _verified.get((op, device_type)) is fn:
        del _verified[(op, device_type)]
    entry = _bound.get((op, device_type))
    if entry is not None and entry[0] is fn:
        del _bound[(op, device_type)]


def _verify(op: str, device_type: str) -> Callable | None:
    # Threads may verify the same entry at once, or one may drop it while another is here: look
    # it up and drop it without assuming it is (still) there.
    entry = _bound.get((op, device_type))
    if entry is None:
        return None
    fn, site = entry
    if _dispatcher_kernel(op, device_type) != site:
        _changed()
        _bound.pop((op, device_type), None)  # someone registered another kernel since: always dispatch
        return None
    _verified[(op, device_type)] = fn
    return fn


def kernel(op: str, *tensors: torch.Tensor | None) -> Callable | None:
    """The kernel to call directly for ``op`` with these tensor arguments (None entries are
    skipped), or None where the call must go through ``torch.ops`` (see the module docstring).
    The kernel takes the op's arguments as the dispatcher passes them (its schema's order)."""
    if torch.compiler.is_compiling() or not _bound or not no_modes():
        return None
    grad = torch.is_grad_enabled()
    device = None
    for t in tensors:
        if t is None:
            continue
        if type(t) not in _PLAIN or (grad and t.requires_grad):
            return None
        d = "cpu" if t.is_cpu else t.device.type
        if device is None:
            device = d
        elif d != device:
            return None
    fn = _verified.get((op, device))
    if fn is None and (op, device) in _bound:
        fn = _verify(op, device)
    return fn


def no_modes() -> bool:
    """Whether a direct call may run now as far as global state goes, torch.compile aside (the
    caller tests ``torch.compiler.is_compiling()`` first): no dispatch or function mode, no
    profiler recording, no autocast (the dispatcher's kernels run with it off: ``_ops``), no
    torch.func transform and no forward-AD dual level (a kernel reading memory would fail on a
    functorch wrapper, or drop a tangent)."""
    # (transforms_active() inlined: this test runs on every call of a kept runner)
    return _ENABLED and not (
        _dispatch_stack_len()
        or _function_mode_on()
        or _profiler_on()
        or autocast_on()
        or _functorch_active()
        or getattr(_fwad, "_current_level", -1) >= 0
    )


def transforms_active() -> bool:
    """Whether a torch.func transform runs (tensors may be functorch wrappers, without memory of
    their own) or a forward-AD dual level is open (tensors may carry tangents)."""
    return _functorch_active() or getattr(_fwad, "_current_level", -1) >= 0


def prepare(op: str, tensors: tuple[torch.Tensor | None, ...], args: tuple) -> Callable | None:
    """The platform's prepared runner for ``op`` (``kernel.prepare(*args)``), or None where the
    kernel offers none or a direct call is not allowed for ``tensors`` (see ``kernel``). Valid
    while ``generation`` is what it was at this call."""
    fn = kernel(op, *tensors)
    make = getattr(fn, "prepare", None)
    return None if make is None else make(*args)
