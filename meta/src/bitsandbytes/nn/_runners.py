"""Keeping a layer's prepared inference runner (``bitsandbytes._direct.prepare``): the bookkeeping
``Linear4bit`` and ``Linear8bitLt`` share. Each layer checks its own key on every call (inline, in
its ``forward``); this module decides, after a call through the general path, whether the kept
runner is still current, is stale (dropped at once: it holds the old memory alive), or must be
prepared anew, at most ``MAX_BUILDS`` times per holder.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .. import _direct

MAX_BUILDS = 4
"""Runners prepared per holder before a layer stops: a weight whose memory keeps changing (an
offloading hook's), or a device whose kernel offers no runner, would otherwise pay for an attempt
on every call."""


def same(a: Any, b: Any) -> bool:
    """Key entries compared by identity (tensors and quant states have no plain equality), numbers
    by value, tuples entry by entry."""
    if a is b:
        return True
    if type(a) is int or type(a) is float:
        return a == b
    if type(a) is tuple and type(b) is tuple:
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return False


def keep(
    store: dict[str, Any],
    plan_key: str,
    builds_key: str,
    key: Callable[[], tuple | None],
    make: Callable[[tuple], Callable | None],
) -> None:
    """Keep ``store[plan_key] = (*key(), runner)`` current. ``key()`` gives what the runner depends
    on, or None where none can be kept; ``make(key)`` prepares a runner, or gives None. Called only
    after a general forward, so its cost stays off the kept runner's path."""
    if _direct.transforms_active():
        return  # no runner could be prepared (nor would one be used): keep the tries for later calls
    kept = store.get(plan_key)
    builds = store.get(builds_key, 0)
    if kept is None and builds >= MAX_BUILDS:
        return  # nothing more to try
    current = key()
    if current is not None and kept is not None and all(same(a, b) for a, b in zip(kept, current)):
        return
    store.pop(plan_key, None)  # stale: it would keep the old memory alive
    if current is None or builds >= MAX_BUILDS:
        return
    store[builds_key] = builds + 1
    run = make(current)
    if run is not None:
        store[plan_key] = (*current, run)
