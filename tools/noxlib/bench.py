"""The benchmark sessions (bench/; never part of CI): the CPU wheel against PyTorch's CPU kernels,
and the GPU wheels against torch baselines on a GPU machine. Figures go to bench/RESULTS.md."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import nox
from noxlib.common import (
    INTEGRATION_DEPS,
    ROOT,
    TORCH,
    TRITON,
    install_cuda_platform,
    install_meta,
    install_platform,
    install_rocm_platform,
    install_torch,
)


def _gpu_bench(session: nox.Session, install_gpu_platform: Callable[[nox.Session], None]) -> None:
    """bench/cuda_ops.py with the meta-package, the cpu wheel and the GPU wheel for this machine."""
    install_torch(session)
    install_meta(session)
    install_platform(session, "cpu")
    install_gpu_platform(session)
    session.run("python", str(ROOT / "bench" / "cuda_ops.py"), *session.posargs)


@nox.session(name="bench-cuda")
def bench_cuda(session: nox.Session) -> None:
    """bench/cuda_ops.py: the CUDA kernels against torch baselines measured in the same run."""
    _gpu_bench(session, install_cuda_platform)


@nox.session(name="bench-rocm")
def bench_rocm(session: nox.Session) -> None:
    """bench/cuda_ops.py on an AMD GPU: the ROCm kernels against torch baselines measured in the same run."""
    _gpu_bench(session, install_rocm_platform)


@nox.session(name="bench-xpu")
def bench_xpu(session: nox.Session) -> None:
    """bench/xpu_ops.py: the XPU platform's Triton kernels on a CUDA GPU (a stand-in for an Intel GPU)
    against copy bandwidth, dense F.linear and AdamW(fused=True). Set BNB_TORCH_REQUIREMENT to a CUDA torch."""
    install_torch(session)
    session.install(TRITON)
    install_meta(session)
    install_platform(session, "xpu")
    session.run("python", str(ROOT / "bench" / "xpu_ops.py"), *session.posargs)


def _cpu_bench(session: nox.Session, script: str, *deps: str) -> None:
    """Run bench/<script> with the meta-package, the cpu wheel and ``deps``."""
    install_torch(session)
    if deps:
        session.install(*deps, TORCH)  # the pinned torch stays: deps never swap it
    install_meta(session)
    install_platform(session, "cpu")
    session.run("python", str(ROOT / "bench" / script), *session.posargs)


# The CPU benchmarks that take the meta-package, the cpu wheel and a script's own dependencies:
# session name -> (script in bench/, extra dependencies, what it measures).
CPU_BENCHES: dict[str, tuple[str, Sequence[str], str]] = {
    "bench-import": ("import_time.py", (), "Import-time overhead of bitsandbytes over torch (meta + cpu wheel)."),
    "bench-memory": (
        "memory.py",
        INTEGRATION_DEPS,
        "Peak host memory of the main CPU flows (quantizing, inference, training, optimizers, checkpoints, "
        "transformers loading) against what each must hold (bench/memory.py, Linux).",
    ),
    "bench-cpu": (
        "cpu_ops.py",
        (),
        "bitsandbytes-cpu op by op vs PyTorch's CPU kernels (dense, int4pack, int8pack, fused AdamW), 1 and 2 threads.",
    ),
    "bench-cpu-finetune": (
        "cpu_finetune.py",
        (),
        "bitsandbytes-cpu's fine-tuning paths (8-bit training, QLoRA backward, prefill) vs dense and int8pack.",
    ),
    "bench-cpu-panels": (
        "cpu_panels.py",
        (),
        "The dense products above the fused rows, weight expanded in panels vs whole: time and peak memory.",
    ),
    "bench-cpu-glue": (
        "cpu_glue.py",
        (),
        "One quantized layer's per-call cost at batch 1 with cold caches (as in decoding), stage by stage.",
    ),
}


def _register_cpu_bench(name: str, script: str, deps: Sequence[str], doc: str) -> None:
    def run(session: nox.Session) -> None:
        _cpu_bench(session, script, *deps)

    run.__doc__ = doc
    run.__name__ = name.replace("-", "_")
    nox.session(name=name)(run)


for _name, (_script, _deps, _doc) in CPU_BENCHES.items():
    _register_cpu_bench(_name, _script, _deps, _doc)


@nox.session(name="bench-cpu-optim")
def bench_cpu_optim(session: nox.Session) -> None:
    """Time one step() of every bitsandbytes optimizer on 16.8 M parameters vs torch AdamW (CPU)."""
    install_torch(session)
    install_meta(session)
    session.run("python", str(ROOT / "bench" / "optim.py"), "--device", "cpu", *session.posargs)


@nox.session(name="bench-cpu-model")
def bench_cpu_model(session: nox.Session) -> None:
    """A Llama-shaped model (1.1 B, random weights) in bf16 / NF4 / 8-bit / torchao int4: decode, prefill, LoRA step."""
    install_torch(session)
    session.install(*INTEGRATION_DEPS, "torchao", TORCH)
    install_meta(session)
    install_platform(session, "cpu")
    session.run("python", str(ROOT / "bench" / "cpu_model.py"), *session.posargs)
