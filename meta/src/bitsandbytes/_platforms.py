"""Platform wheels: discovery, hardware detection, compatibility checks and kernel registration.

A platform wheel (``bitsandbytes-cpu``, ``-cuda12x``, ``-cuda13x``, ``-rocm``, ``-xpu``, ``-hpu``,
``-mps``) advertises one entry point in the group ``bitsandbytes.platforms``; its name is the
platform name and its value the module's ``register`` function. The module also provides
``__version__``, ``OP_INTERFACE_VERSION`` and ``build_info()``, and may provide
``check_runtime(runtime) -> str | None`` (a reason why its build cannot serve this runtime).

For each device torch can see, the matching wheel is loaded after three checks: its version
equals the meta-package's (released in lockstep), its op-interface version is one we accept, and
its build fits the runtime (a cuda13x wheel under a CUDA 12 torch does not). Anything that fails
is recorded with the reason, a warning names the ``pip install`` that fixes it, and the reference
kernels serve that device. Nothing here launches a kernel, compiles, or starts a subprocess.
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
import os
import warnings
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch

from . import _direct, _ops, _paging
from ._version import __version__

logger = logging.getLogger("bitsandbytes")

ENTRY_POINT_GROUP = "bitsandbytes.platforms"
BACKEND_ENTRY_POINT_GROUP = "bitsandbytes.backends"  # out-of-tree backends of the established release
ACCEPTED_INTERFACE_VERSIONS = frozenset({1, _ops.OP_INTERFACE_VERSION})  # 2 only added ops

PLATFORM_DEVICE: dict[str, str] = {
    "cpu": "cpu",
    "cuda12x": "cuda",
    "cuda13x": "cuda",
    "rocm": "cuda",  # a ROCm build of torch reports its GPUs as "cuda" devices
    "xpu": "xpu",
    "hpu": "hpu",
    "mps": "mps",
}
"""Platform name (entry-point name, extra name and distribution suffix) -> torch device type."""


class PlatformWarning(UserWarning):
    """A present device has no usable platform wheel; the reference kernels serve it."""


@dataclasses.dataclass(frozen=True)
class Runtime:
    """What torch reports about the machine: its build and the devices it can see."""

    torch_version: str
    cuda_version: str | None  # torch.version.cuda
    hip_version: str | None  # torch.version.hip
    devices: Mapping[str, str]  # device type -> human description, "cpu" always present

    @property
    def gpu_platform(self) -> str | None:
        """The platform that must serve the "cuda" device type, from torch's build."""
        if "cuda" not in self.devices:
            return None
        if self.hip_version:
            return "rocm"
        if self.cuda_version:
            return f"cuda{self.cuda_version.split('.')[0]}x"
        return None

    def wanted_platform(self, device_type: str) -> str | None:
        """The platform name that fits this runtime for ``device_type``."""
        if device_type == "cuda":
            return self.gpu_platform
        return device_type if device_type in PLATFORM_DEVICE else None


def _gaudi_bridge() -> Any:
    """``torch.hpu`` after importing Intel Gaudi's PyTorch bridge, when it is installed but torch
    did not load it (Gaudi software without device autoloading); None otherwise. Costs one
    ``find_spec`` where the Gaudi software is absent."""
    import importlib.util

    if importlib.util.find_spec("habana_frameworks") is None:
        return None
    try:
        importlib.import_module("habana_frameworks.torch")
    except Exception as exc:  # a broken Gaudi installation must not break import
        logger.warning("bitsandbytes: habana_frameworks.torch could not be imported: %r", exc)
        return None
    return getattr(torch, "hpu", None)


def detect_runtime() -> Runtime:
    """Ask torch which devices it can see. Cheap: no kernel launch, no subprocess."""
    devices: dict[str, str] = {"cpu": "CPU"}
    if torch.cuda.is_available():
        kind = f"ROCm {torch.version.hip}" if torch.version.hip else f"CUDA {torch.version.cuda}"
        devices["cuda"] = f"{kind}, {torch.cuda.device_count()} device(s)"
    xpu = getattr(torch, "xpu", None)
    if xpu is not None and xpu.is_available():
        devices["xpu"] = f"Intel XPU, {xpu.device_count()} device(s)"
    hpu = getattr(torch, "hpu", None) or _gaudi_bridge()
    if hpu is not None and hpu.is_available():
        devices["hpu"] = "Intel Gaudi"
    if torch.backends.mps.is_available():
        get_name = getattr(torch._C, "_mps_get_name", None)  # the GPU's name (torch 2.6+), no launch
        devices["mps"] = f"Apple MPS ({get_name()})" if get_name else "Apple MPS"
    return Runtime(
        torch_version=torch.__version__,
        cuda_version=torch.version.cuda,
        hip_version=getattr(torch.version, "hip", None),
        devices=devices,
    )


@dataclasses.dataclass
class PlatformRecord:
    """What happened to one platform wheel (or one device without a wheel)."""

    platform: str
    device_type: str
    status: str  # "loaded", "skipped", "failed", "missing"
    reason: str = ""
    distribution: str | None = None
    version: str | None = None
    build_info: dict[str, Any] = dataclasses.field(default_factory=dict)
    ops: list[str] = dataclasses.field(default_factory=list)
    fix: str | None = None  # the pip command that fixes a skip/miss

    def as_dict(self) -> dict[str, Any]:
        """A JSON-friendly view."""
        return dataclasses.asdict(self)


@dataclasses.dataclass
class LoadResult:
    """The outcome of one loading pass: records, the kernels registered, and their owners."""

    runtime: Runtime
    records: list[PlatformRecord]
    kernels: dict[tuple[str, str], tuple[str, Callable]]  # (op, device) -> (platform, fn)
    libraries: list[torch.library.Library] = dataclasses.field(default_factory=list)

    def implementation(self, op: str, device_type: str) -> str:
        """Which implementation serves ``op`` on ``device_type``: a platform name or 'reference'."""
        owner = self.kernels.get((op, device_type))
        return owner[0] if owner else "reference"

    paged_memory: Any = None  # the provider this pass handed to _paging, if any

    def close(self) -> None:
        """Remove every kernel this pass registered, and its paged memory (tests use this)."""
        for (op, device_type), (_, fn) in self.kernels.items():
            _direct.unbind(op, device_type, fn)
        for lib in self.libraries:
            lib._destroy()
        self.libraries.clear()
        self.kernels.clear()
        if self.paged_memory is not None and _paging._PROVIDER is self.paged_memory:
            _paging.set_provider(None)
        self.paged_memory = None


def install_command(platform: str) -> str:
    """The exact pip command that installs the platform wheel matching this meta-package."""
    if platform == "cpu":
        return f'pip install "bitsandbytes-cpu=={__version__}"'
    return f'pip install "bitsandbytes[{platform}]=={__version__}"'


def _parse_override(value: str | None) -> set[str] | None:
    """``BNB_PLATFORMS``: None (no override), an empty set ('none'), or platform/device names."""
    if value is None or not value.strip():
        return None
    names = {v.strip().lower() for v in value.split(",") if v.strip()}
    if not names:  # only commas and blanks name nothing: no override, as an empty value
        return None
    if names == {"none"}:
        return set()
    known = set(PLATFORM_DEVICE) | set(PLATFORM_DEVICE.values())
    unknown = names - known
    if unknown:
        warnings.warn(
            f"bitsandbytes: BNB_PLATFORMS names unknown platforms {sorted(unknown)}; "
            f"valid names are {sorted(known)} or 'none'",
            PlatformWarning,
            stacklevel=3,
        )
    return names & known


def _allowed(platform: str, override: set[str] | None) -> bool:
    return override is None or platform in override or PLATFORM_DEVICE[platform] in override


def _dist_info(ep: Any) -> tuple[str | None, str | None]:
    dist = getattr(ep, "dist", None)
    if dist is None:
        return None, None
    return dist.metadata["Name"] if hasattr(dist, "metadata") else getattr(dist, "name", None), dist.version


def _discover(entry_points: Iterable[Any] | None) -> list[Any]:
    if entry_points is not None:
        return list(entry_points)
    from importlib.metadata import entry_points as _eps

    return list(_eps(group=ENTRY_POINT_GROUP))


def _load_module(ep: Any) -> tuple[Any, Callable]:
    register = ep.load()
    module = importlib.import_module(ep.module) if hasattr(ep, "module") else None
    if module is None or not hasattr(module, "OP_INTERFACE_VERSION"):
        module = importlib.import_module(register.__module__)
    return module, register


def _warn(message: str) -> None:
    logger.warning(message)
    warnings.warn(message, PlatformWarning, stacklevel=4)


def load(
    entry_points: Iterable[Any] | None = None,
    runtime: Runtime | None = None,
    env: Mapping[str, str] | None = None,
) -> LoadResult:
    """Discover, check and register the platform wheels for every present device.

    All arguments exist for tests: by default entry points come from the installed
    distributions, the runtime from torch and the override from ``os.environ``.
    """
    env = os.environ if env is None else env
    runtime = runtime or detect_runtime()
    debug = env.get("BNB_DEBUG_LOADING", "") not in ("", "0")
    override = _parse_override(env.get("BNB_PLATFORMS"))
    result = LoadResult(runtime=runtime, records=[], kernels={})

    by_platform: dict[str, list[Any]] = {}
    for ep in _discover(entry_points):
        if ep.name not in PLATFORM_DEVICE:
            result.records.append(PlatformRecord(ep.name, "?", "skipped", f"unknown platform name {ep.name!r}"))
            continue
        by_platform.setdefault(ep.name, []).append(ep)

    for device_type in runtime.devices:
        candidates = [p for p in by_platform if PLATFORM_DEVICE[p] == device_type]
        wanted = runtime.wanted_platform(device_type)
        for p in candidates:
            if p != wanted:
                dist, version = _dist_info(by_platform[p][0])
                reason = _mismatch_reason(p, wanted, runtime)
                result.records.append(
                    PlatformRecord(
                        p,
                        device_type,
                        "skipped",
                        reason,
                        dist,
                        version,
                        fix=install_command(wanted) if wanted else None,
                    )
                )
        if wanted is None:
            continue
        if not _allowed(wanted, override):
            result.records.append(PlatformRecord(wanted, device_type, "skipped", "excluded by BNB_PLATFORMS"))
            continue
        eps = by_platform.get(wanted, [])
        if not eps:
            rec = PlatformRecord(
                wanted, device_type, "missing", "no platform wheel installed", fix=install_command(wanted)
            )
            result.records.append(rec)
            _warn(
                f"bitsandbytes: {runtime.devices[device_type]} is present but bitsandbytes-{wanted} is not "
                f"installed; the slower reference kernels will serve it. Fix: {rec.fix}"
            )
            continue
        if len(eps) > 1:
            names = [str(_dist_info(e)) for e in eps]
            result.records.append(
                PlatformRecord(
                    wanted, device_type, "skipped", f"{len(eps)} wheels provide it: {names}; using the first"
                )
            )
        _load_one(eps[0], wanted, device_type, runtime, result)

    for p, eps in by_platform.items():
        if PLATFORM_DEVICE[p] not in runtime.devices:
            dist, version = _dist_info(eps[0])
            result.records.append(
                PlatformRecord(p, PLATFORM_DEVICE[p], "skipped", absent_reason(PLATFORM_DEVICE[p]), dist, version)
            )

    if debug:
        for rec in result.records:
            logger.warning("bitsandbytes loading: %s", rec.as_dict())
    return result


def absent_reason(device_type: str) -> str:
    """Why an installed wheel's device is not present (the report prints it)."""
    if device_type == "mps":
        if not torch.backends.mps.is_built():
            return (
                f"no mps device present: this torch ({torch.__version__}) is built without MPS, which needs "
                "macOS on Apple silicon; the wheel's kernels are tested here only by its host harness"
            )
        return "no mps device present: torch.backends.mps.is_available() is False (macOS 12.3+ on Apple silicon)"
    return f"no {device_type} device present"


def _mismatch_reason(platform: str, wanted: str | None, runtime: Runtime) -> str:
    if wanted is None:
        return f"torch reports no runtime that {platform} can serve"
    if wanted == "rocm":
        return f"built for CUDA, but torch is a ROCm build (HIP {runtime.hip_version}); {wanted} wins"
    if platform == "rocm":
        return f"built for ROCm, but torch is a CUDA build ({runtime.cuda_version}); {wanted} wins"
    return f"built for {platform}, but torch has CUDA {runtime.cuda_version}; {wanted} wins"


def _load_one(ep: Any, platform: str, device_type: str, runtime: Runtime, result: LoadResult) -> None:
    dist, version = _dist_info(ep)
    rec = PlatformRecord(platform, device_type, "skipped", "", dist, version, fix=install_command(platform))
    result.records.append(rec)
    if version is not None and version != __version__:
        rec.reason = f"{dist} {version} does not match bitsandbytes {__version__} (they are released together)"
        _warn(f"bitsandbytes: {rec.reason}; the reference kernels serve {device_type}. Fix: {rec.fix}")
        return
    try:
        module, register = _load_module(ep)
    except Exception as exc:  # a broken wheel must not break import
        rec.status, rec.reason = "failed", f"import failed: {exc!r}"
        _warn(
            f"bitsandbytes: {dist or platform} could not be imported ({exc!r}); reference kernels serve {device_type}. Fix: {rec.fix}"
        )
        return
    if version is None:
        rec.version = version = getattr(module, "__version__", None)
        if version != __version__:
            rec.reason = f"{platform} module version {version} does not match bitsandbytes {__version__}"
            _warn(f"bitsandbytes: {rec.reason}. Fix: {rec.fix}")
            return
    interface = getattr(module, "OP_INTERFACE_VERSION", None)
    if interface not in ACCEPTED_INTERFACE_VERSIONS:
        rec.reason = (
            f"{dist or platform} implements op interface {interface}, bitsandbytes {__version__} "
            f"accepts {sorted(ACCEPTED_INTERFACE_VERSIONS)}"
        )
        _warn(f"bitsandbytes: {rec.reason}; the reference kernels serve {device_type}. Fix: {rec.fix}")
        return
    try:
        rec.build_info = dict(module.build_info())
        check_runtime = getattr(module, "check_runtime", None)
        problem = check_runtime(runtime) if check_runtime else None
    except Exception as exc:
        rec.status, rec.reason = "failed", f"build check failed: {exc!r}"
        _warn(f"bitsandbytes: {dist or platform}: {rec.reason}; reference kernels serve {device_type}. Fix: {rec.fix}")
        return
    if problem:
        rec.reason = f"build does not fit this runtime: {problem}"
        _warn(f"bitsandbytes: {dist or platform}: {rec.reason}; the reference kernels serve {device_type}.")
        return

    try:
        ops = bind_kernels(register, platform, device_type, result)
    except Exception as exc:
        rec.status, rec.reason = "failed", f"register() raised {exc!r}"
        _warn(
            f"bitsandbytes: {dist or platform} failed to register its kernels ({exc!r}); reference kernels serve {device_type}."
        )
        return
    rec.status, rec.reason, rec.ops = "loaded", "", ops
    _use_paged_memory(module, platform, device_type, result)


def bind_kernels(register: Callable, platform: str, device_type: str, result: LoadResult) -> list[str]:
    """Bind the kernels ``register(register_kernel)`` names to their ops for ``device_type`` (the
    torch library, the direct calls and ``result.kernels``, owner ``platform``); the sorted op
    names. If ``register`` raises (an unknown op included), nothing stays bound and it propagates."""
    lib = torch.library.Library(_ops.NAMESPACE, "IMPL")
    registered: dict[str, Callable] = {}

    def register_kernel(op: str, fn: Callable) -> None:
        if op not in _ops.SCHEMAS:
            raise ValueError(f"{platform} registered unknown op {op!r}")
        _ops.impl(lib, op, device_type, fn)
        registered[op] = fn

    try:
        register(register_kernel)
    except Exception:
        lib._destroy()
        raise
    result.libraries.append(lib)
    for op, fn in registered.items():
        result.kernels[(op, device_type)] = (platform, fn)
        _direct.bind(op, device_type, fn)
    return sorted(registered)


def _use_paged_memory(module: Any, platform: str, device_type: str, result: LoadResult) -> None:
    """Take a loaded wheel's unified memory for paged optimizers (its optional ``paged_memory()``
    hook returns ``(allocate(shape, dtype), prefetch(tensor, device_index, to_cpu))``)."""
    hook = getattr(module, "paged_memory", None)
    if hook is None:
        return
    try:
        _paging.set_provider(device_type, *hook())
        result.paged_memory = _paging._PROVIDER
    except Exception as exc:  # paging is an optimisation: the optimizers work without it
        _warn(
            f"bitsandbytes: {platform} offers paged memory but it could not be set up ({exc!r}); paged "
            "optimizers keep their states in device memory"
        )


def load_out_of_tree_backends(entry_points: Iterable[Any] | None = None) -> None:
    """Call every ``bitsandbytes.backends`` entry point, as the established release does."""
    if entry_points is None:
        from importlib.metadata import entry_points as _eps

        entry_points = _eps(group=BACKEND_ENTRY_POINT_GROUP)
    for ep in entry_points:
        try:
            ep.load()()
        except Exception as exc:
            raise RuntimeError(f"bitsandbytes: failed to load backend {ep.name}: {exc}") from exc
