"""Run-time instruction-set dispatch of bitsandbytes-cpu: what is reported, and forcing a set."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import served_by_cpu_wheel

bitsandbytes_cpu = pytest.importorskip("bitsandbytes_cpu")


def test_build_info_reports_isas():
    info = bitsandbytes_cpu.build_info()
    assert "scalar" in info["isa"] and "scalar" in info["isa_usable"]
    assert set(info["isa_usable"]) <= set(info["isa"])
    assert info["isa_selected"] in info["isa_usable"]
    assert bitsandbytes_cpu.isa() == info["isa_selected"]


@pytest.mark.parametrize("name", ["avx1024", "", "SCALAR "])
def test_unknown_isa_is_a_clear_error(name):
    before = bitsandbytes_cpu.isa()
    if name == "":  # the empty name means automatic, like "auto"
        bitsandbytes_cpu.set_isa(name)
        assert bitsandbytes_cpu.isa() == before
        return
    with pytest.raises(ValueError, match="instruction set"):
        bitsandbytes_cpu.set_isa(name)
    assert bitsandbytes_cpu.isa() == before


def test_unusable_isa_is_refused():
    other = "neon" if "avx2" in bitsandbytes_cpu.build_info()["isa"] else "avx512"
    with pytest.raises(ValueError, match="not usable"):
        bitsandbytes_cpu.set_isa(other)


def test_forcing_each_isa_changes_the_selection():
    for isa in bitsandbytes_cpu.build_info()["isa_usable"]:
        bitsandbytes_cpu.set_isa(isa)
        try:
            assert bitsandbytes_cpu.build_info()["isa_selected"] == isa
            x = torch.randn(1000)
            q = torch.ops.bitsandbytes.quantize_4bit(x, 64, "nf4", torch.uint8)
            assert q[0].shape == (500, 1)
        finally:
            bitsandbytes_cpu.set_isa("auto")


def _run(env_isa: str, code: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, BNB_CPU_ISA=env_isa)
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)


def test_environment_override():
    r = _run("scalar", "import bitsandbytes_cpu, json; print(json.dumps(bitsandbytes_cpu.build_info()))")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout.strip().splitlines()[-1])["isa_selected"] == "scalar"


@served_by_cpu_wheel
def test_unknown_environment_value_warns_and_falls_back():
    code = "import bitsandbytes, torch; print(bitsandbytes._LOADED.kernels.get(('gemm_4bit', 'cpu')))"
    r = _run("sse9", code)
    assert r.returncode == 0, r.stderr  # never a crash
    assert "BNB_CPU_ISA" in r.stderr and "None" in r.stdout.strip().splitlines()[-1]


@served_by_cpu_wheel
def test_kernels_work_in_a_forked_child():
    """The library's thread pool is recreated in a fork()ed child (no hang waiting for threads
    that were not copied)."""
    code = (
        "import os, torch, bitsandbytes\n"
        "torch.set_num_threads(2)\n"
        "x = torch.randn(1 << 16)\n"
        "torch.ops.bitsandbytes.quantize_4bit(x, 64, 'nf4', torch.uint8)\n"
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    q, a = torch.ops.bitsandbytes.quantize_4bit(x, 64, 'nf4', torch.uint8)\n"
        "    os._exit(0 if q.numel() == 1 << 15 else 1)\n"
        "_, status = os.waitpid(pid, 0)\n"
        "print('child', os.waitstatus_to_exitcode(status))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == "child 0"


def test_parallel_loops_share_torchs_openmp_runtime():
    """With torch (and its OpenMP runtime) loaded, the kernels' parallel loops run on it; the
    library's own pool (BNB_CPU_THREADS=pool) gives bit-identical results."""
    code = (
        "import json, torch, bitsandbytes, bitsandbytes_cpu\n"
        "torch.manual_seed(0)\n"
        "torch.set_num_threads(2)\n"
        "w = torch.randn(512, 1024, dtype=torch.bfloat16)\n"
        "q, a = torch.ops.bitsandbytes.quantize_4bit(w, 64, 'nf4', torch.uint8)\n"
        "x = torch.randn(3, 1024, dtype=torch.bfloat16)\n"
        "y = torch.ops.bitsandbytes.gemm_4bit(x, q, w.shape, a, 64, 'nf4')\n"
        "info = bitsandbytes_cpu.build_info()\n"
        "print(json.dumps([info['pool_workers'], info['pool_workers_wanted']]))\n"
        "print(json.dumps([info['threading'], q.sum().item(), a.sum().item(), y.float().sum().item()]))\n"
    )
    outs, pools = {}, {}
    for mode in ("auto", "pool"):
        env = dict(os.environ, BNB_CPU_THREADS=mode)
        r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        lines = r.stdout.strip().splitlines()
        outs[mode], pools[mode] = json.loads(lines[-1]), json.loads(lines[-2])
    assert outs["pool"][0] == "pool"
    # started all it wants (one fewer than the CPUs); with one CPU no call asks for a pool
    assert pools["pool"][0] == pools["pool"][1] or pools["pool"] == [None, 0]
    if torch.__config__.parallel_info().find("OpenMP") >= 0 and sys.platform.startswith("linux"):
        assert outs["auto"][0] == "openmp"
        assert pools["auto"][0] is None  # the pool never started
    assert outs["auto"][1:] == outs["pool"][1:]
