"""Shared test helpers: fixture data, seeded inputs, signatures as text, and every (device,
implementation) pair present."""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import os
import pathlib
import subprocess
import sys
import time
from collections.abc import Callable

import pytest
import torch
from safetensors.torch import load_file

import bitsandbytes
from bitsandbytes.backends.reference import KERNELS as REFERENCE

DATA = pathlib.Path(__file__).parent / "data"


def load_fixture(name: str) -> dict[str, torch.Tensor]:
    """A copy of a ../shared/fixtures file kept in tests/data."""
    return load_file(str(DATA / name))


def randn(*shape: int, seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A standard normal tensor from its own generator seeded with ``seed``, cast to ``dtype``."""
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(dtype)


def params_text(fn: Callable, skip: int = 0) -> str:
    """The parameter list as text without type hints (names, kinds, order and defaults)."""
    ps = list(inspect.signature(fn).parameters.values())[skip:]
    return ", ".join(str(p.replace(annotation=inspect.Parameter.empty)) for p in ps)


def devices() -> list[str]:
    """Device types torch can use here."""
    found = ["cpu"]
    if torch.cuda.is_available():
        found.append("cuda")
    if getattr(torch, "xpu", None) is not None and torch.xpu.is_available():
        found.append("xpu")
    if torch.backends.mps.is_available():
        found.append("mps")
    return found


def cpu_isas() -> list[str]:
    """Instruction sets the bitsandbytes-cpu kernels can run here (scalar first), or [] without it."""
    try:
        import bitsandbytes_cpu
    except ImportError:
        return []
    return bitsandbytes_cpu.build_info().get("isa_usable", [])


def cpu_wheel_serves() -> bool:
    """Whether the bitsandbytes-cpu wheel serves the CPU ops here: installed, and not excluded by
    ``BNB_PLATFORMS`` (with ``none`` the ops run the reference kernels though the wheel imports)."""
    return bitsandbytes.implementation("gemm_4bit", "cpu") == "cpu"


served_by_cpu_wheel = pytest.mark.skipif(
    not cpu_wheel_serves(), reason="the test reaches the bitsandbytes-cpu kernels through the ops it serves"
)
"""For a test of the wheel's kernels made through ``torch.ops`` or the layers, not the wheel's
own functions (which run in every mode)."""


def cpu_amx_usable(panel: bool = False) -> bool:
    """Whether bitsandbytes-cpu's AMX path can run here (AMX-BF16 CPU, avx512 table); with
    ``panel``, whether its panel path runs in either form (AMX, or AVX512-BF16 dot products)."""
    if "avx512" not in cpu_isas():
        return False
    import bitsandbytes_cpu

    bitsandbytes_cpu.set_isa("avx512")
    try:
        return bitsandbytes_cpu._C.panel_usable() if panel else bitsandbytes_cpu._C.amx_usable()
    finally:
        bitsandbytes_cpu.set_isa("auto")


def with_isa(isa: str, fn: Callable, amx: bool = False) -> Callable:
    """``fn`` run with the CPU kernels forced onto ``isa``, the AMX path on or off (the automatic
    choices restored after)."""
    import bitsandbytes_cpu

    def run(*args, **kwargs):
        bitsandbytes_cpu.set_isa(isa)
        bitsandbytes_cpu._C.set_amx(amx)
        try:
            return fn(*args, **kwargs)
        finally:
            bitsandbytes_cpu.set_isa("auto")
            bitsandbytes_cpu._C.set_amx(True)

    return run


HOST_KERNELS_ENV = "BNB_TEST_HOST_KERNELS"


def host_kernel_platforms() -> list[tuple[str, str]]:
    """(platform, device) pairs whose kernels run here on another device's tensors, named in
    ``BNB_TEST_HOST_KERNELS`` (comma-separated ``platform`` or ``platform@device``, device
    ``cpu`` by default: ``xpu,hpu,mps,cuda,rocm`` in the nox sessions, ``xpu@cuda`` in the GPU check).

    Each such platform package ``bitsandbytes_<p>`` provides ``host_kernels() -> {op: fn}``:
    its real kernels, runnable on those tensors (XPU: Triton, under ``TRITON_INTERPRET=1`` on
    the CPU; MPS: the Metal source compiled as C++ in a host harness; HPU: the tensor programs
    on CPU tensors). ``cuda`` and ``rocm`` are the CUDA sources compiled as C++ by the CUDA host
    harness of this checkout, for warps of 32 and 64 lanes, through the CUDA glue. A named
    platform that cannot be imported fails the run, never passes."""
    out = []
    for entry in os.environ.get(HOST_KERNELS_ENV, "").split(","):
        if entry.strip():
            platform, _, device = entry.strip().partition("@")
            out.append((platform, device or "cpu"))
    return out


if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0") and importlib.util.find_spec("triton") is not None:
    import triton_memcheck

    triton_memcheck.install()  # every interpreted launch checks its loads and stores (tests/triton_memcheck.py)


CUDA_HARNESS_WARPS = {"cuda": 32, "rocm": 64}
"""Platforms whose kernels the CUDA host harness (platforms/cuda/host, from this checkout) runs, and
the warp width: the CUDA sources as an NVIDIA GPU runs them, and as a 64-wide AMD wavefront does."""


def python_in_a_process(code: str) -> subprocess.CompletedProcess:
    """``code`` run by a fresh Python, with torch imported and this folder on the path (so that it
    can import a test module), its output captured: where a sanitizer may stop the process."""
    prelude = f"import sys, torch; sys.path.insert(0, {str(pathlib.Path(__file__).resolve().parent)!r}); "
    return subprocess.run([sys.executable, "-c", prelude + code], capture_output=True, text=True, timeout=600)


def make_old(path: pathlib.Path, days: float) -> None:
    """Sets ``path``'s access and modification times ``days`` back (a cache entry long unused)."""
    then = time.time() - days * 86400
    os.utime(path, (then, then))


def host_compiler() -> str | None:
    """The C++ compiler the host harnesses build with (shared/host/simt_build.py's ``compiler``:
    ``CXX``, else the first of c++, g++, clang++ on the PATH), or None where there is none."""
    try:
        return cuda_harness()._SIMT.compiler("tests")
    except RuntimeError:
        return None


def cuda_harness_warps() -> list[int]:
    """The warp widths of the CUDA host harness builds that ``BNB_TEST_HOST_KERNELS`` names (cuda:
    32, rocm: 64). Called at a test module's top: skips the module where it names neither, or
    where no C++ compiler builds the harness."""
    named = sorted({CUDA_HARNESS_WARPS[p] for p, _ in host_kernel_platforms() if p in CUDA_HARNESS_WARPS})
    if not named:
        pytest.skip(
            "the CUDA host harness runs where BNB_TEST_HOST_KERNELS names cuda or rocm", allow_module_level=True
        )
    if host_compiler() is None:
        pytest.skip("no C++ compiler: the CUDA host harness cannot be built", allow_module_level=True)
    return named


def host_sanitizer(variable: str) -> str | None:
    """The sanitizer a host harness is built with, as its build reads ``variable``
    (``BNB_CUDA_HOST_SANITIZE``, ``BNB_MPS_HOST_SANITIZE``): ``"address"``, ``"thread"`` or None
    (shared/host/simt_build.py, as the CUDA harness module of this checkout loaded it once)."""
    return cuda_harness()._SIMT.sanitizer(variable)


def cuda_harness():
    """platforms/cuda/host/cuda_host.py of this checkout (the CUDA wheel need not be installed)."""
    name = "_bnb_cuda_host_harness"
    module = sys.modules.get(name)
    if module is None:
        path = pathlib.Path(__file__).resolve().parents[1] / "platforms" / "cuda" / "host" / "cuda_host.py"
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return module


SERVE_ENV = "BNB_TEST_SERVE_HOST"


def serve_host_kernels(platform: str) -> None:
    """Make the CUDA host harness's kernels (``cuda`` or ``rocm``: warps of 32 or 64 lanes) serve
    the ``cpu`` device, as the CUDA wheel serves ``cuda``: every test then drives them through the
    op interface, the modules and the optimizers. Needs ``BNB_PLATFORMS=none`` (no other platform
    serving the CPU)."""
    from bitsandbytes import _platforms

    if platform not in CUDA_HARNESS_WARPS:
        raise ValueError(f"{SERVE_ENV} must name one of {sorted(CUDA_HARNESS_WARPS)}, got {platform!r}")
    serving = {owner for (op, dev), (owner, _) in bitsandbytes._LOADED.kernels.items() if dev == "cpu"}
    if serving:
        raise RuntimeError(f"{SERVE_ENV}={platform} needs BNB_PLATFORMS=none; {sorted(serving)} serve the CPU")
    kernels = host_kernels_of(platform)

    def register(register_kernel: Callable[[str, Callable], None]) -> None:
        for op, fn in kernels.items():
            register_kernel(op, fn)

    _platforms.bind_kernels(register, f"{platform}[host]", "cpu", bitsandbytes._LOADED)


def pytest_configure(config: pytest.Config) -> None:
    if os.environ.get(SERVE_ENV):
        serve_host_kernels(os.environ[SERVE_ENV])


def host_kernels_of(platform: str) -> dict[str, Callable]:
    """``{op: fn}`` of a platform's kernels run here (see ``host_kernel_platforms``)."""
    if platform in CUDA_HARNESS_WARPS:
        return cuda_harness().host_kernels(CUDA_HARNESS_WARPS[platform])
    module = importlib.import_module(f"bitsandbytes_{platform}")
    return module.host_kernels()


def implementations(op: str) -> list[tuple[str, str, Callable]]:
    """(device, implementation name, kernel) for ``op``: the reference on every device, plus
    each platform kernel registered for it; the CPU wheel's kernels once per instruction set
    (scalar, avx2, avx512, neon: each dispatch path the machine can run) with the AMX path off,
    and once more as ``avx512+amx`` where the CPU has AMX-BF16; and the host-run
    kernels of the platforms named in ``BNB_TEST_HOST_KERNELS`` (as ``<device>``, ``<platform>[host]``)."""
    out = []
    for platform, device in host_kernel_platforms():
        fn = host_kernels_of(platform).get(op)
        if fn is not None:
            out.append((device, f"{platform}[host]", fn))
    for dev in devices():
        out.append((dev, "reference", REFERENCE[op]))
        owner = bitsandbytes._LOADED.kernels.get((op, dev))
        if owner is None:
            continue
        isas = cpu_isas() if dev == "cpu" and owner[0] == "cpu" else []
        if isas:
            out.extend((dev, f"{owner[0]}[{isa}]", with_isa(isa, owner[1])) for isa in isas)
            if cpu_amx_usable():
                out.append((dev, f"{owner[0]}[avx512+amx]", with_isa("avx512", owner[1], amx=True)))
        else:
            out.append((dev, owner[0], owner[1]))
    return out


def impl_params(op: str) -> list:
    """pytest params over ``implementations(op)``, with readable ids."""
    return [pytest.param(d, n, fn, id=f"{d}-{n}") for d, n, fn in implementations(op)]


@pytest.fixture
def optim_manager():
    """The GlobalOptimManager singleton, cleared before and after the test: its overrides are
    keyed by parameter ids, which later tests' parameters reuse."""
    from bitsandbytes.optim import GlobalOptimManager

    manager = GlobalOptimManager.get_instance()
    manager.initialize()
    yield manager
    manager.initialize()


@pytest.fixture(autouse=True)
def _seeded_rng():
    """Every test starts from the same torch RNG state, so a tolerance check sees the same draw
    on every run (no test passes or fails by the luck of an unseeded draw)."""
    torch.manual_seed(0)


def adam_8bit_args(n: int = 1000, device: str = "cpu") -> dict[str, torch.Tensor]:
    """The tensors of one 8-bit block-wise Adam step over ``n`` elements (dynamic code books)."""
    from bitsandbytes.backends.reference.codebooks import dynamic_map

    blocks = -(-n // 256)
    return {
        "g": torch.randn(n, device=device),
        "p": torch.randn(n, device=device),
        "state1": torch.full((n,), 128, dtype=torch.uint8, device=device),
        "state2": torch.zeros(n, dtype=torch.uint8, device=device),
        "qmap1": dynamic_map(signed=True, device=device),
        "qmap2": dynamic_map(signed=False, device=device),
        "absmax1": torch.rand(blocks, device=device),
        "absmax2": torch.rand(blocks, device=device),
    }


def step_8bit(fn: Callable[..., object], t: dict[str, torch.Tensor]) -> None:
    """One Adam step of ``optimizer_update_8bit_blockwise`` implementation ``fn`` on ``t``."""
    fn(
        "adam", t["g"], t["p"], t["state1"], t["state2"], 0.9, 0.999, 0.0, 0.0, 1e-8, 1, 1e-3,
        t["qmap1"], t["qmap2"], t["absmax1"], t["absmax2"], 0.0, 1.0,
    )  # fmt: skip
