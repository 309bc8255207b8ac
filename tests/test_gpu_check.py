"""tools/gpu_check.sh without a GPU, and the parts of tools/gpu_check.py that read results.

The whole setup path (offline builds, private install, report, a slice of the suite) is
rehearsed by ``nox -s gpu-check-rehearsal``; these are the quick checks around it.
"""

from __future__ import annotations

import glob
import importlib.util
import os
import pathlib
import shutil
import subprocess
import sys
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
NO_GPU = not glob.glob("/dev/nvidia[0-9]*") and shutil.which("nvidia-smi") is None


def _gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "tools" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(not NO_GPU or shutil.which("bash") is None, reason="this machine has an NVIDIA GPU (or no bash)")
def test_without_a_gpu_it_stops_at_once_with_one_line(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "BNB_GPU_CHECK_REHEARSE"}
    env["OUT"] = str(tmp_path / "out")
    t0 = time.monotonic()
    done = subprocess.run(["bash", str(ROOT / "tools" / "gpu_check.sh")], capture_output=True, text=True, env=env)
    assert time.monotonic() - t0 < 1.0
    assert done.returncode == 3
    assert done.stderr == ""
    lines = done.stdout.splitlines()
    assert len(lines) == 1 and "no NVIDIA GPU" in lines[0] and "nothing was checked" in lines[0]
    assert not (tmp_path / "out").exists()  # nothing written: nothing ran


def test_junit_counts_sum_every_suite(tmp_path):
    xml = tmp_path / "j.xml"
    xml.write_text(
        '<testsuites><testsuite name="a" tests="10" failures="1" errors="2" skipped="3"/>'
        '<testsuite name="b" tests="5" failures="0" errors="0" skipped="1"/></testsuites>'
    )
    assert _gpu_check().junit_counts(xml) == {"tests": 15, "failures": 1, "errors": 2, "skipped": 4, "passed": 8}


def test_targets_take_the_worst_row_and_say_when_a_row_is_missing():
    rows = [
        {"name": "dequantize_4bit nf4 torch.bfloat16 4096x11008", "copy_fraction": 0.80, "ratio": None},
        {"name": "dequantize_4bit nf4 torch.float16 4096x11008", "copy_fraction": 0.70, "ratio": None},
        {"name": "gemv_4bit nf4 bf16 1x4096 @ 4096x4096", "copy_fraction": 0.5, "ratio": 3.1},
        {"name": "gemv_4bit nf4 bf16 1x11008 @ 4096x11008", "copy_fraction": 0.6, "ratio": 2.6},
        {"name": "int8_linear_matmul 4096^3 (700 TOPS)", "copy_fraction": None, "ratio": 1.7},
    ]
    verdicts = {v["target"].split(" ")[0]: v for v in _gpu_check().evaluate_targets(rows)}
    assert verdicts["dequantize_4bit"] == {**verdicts["dequantize_4bit"], "measured": "70.0%", "met": "NO"}
    assert verdicts["gemv_4bit"]["measured"] == "2.60x" and verdicts["gemv_4bit"]["met"] == "yes"
    assert verdicts["Adam8bit"]["met"] == "unknown"
    assert verdicts["int8"]["met"] == "yes"


def test_a_step_that_does_not_fit_the_budget_is_skipped_with_a_note(tmp_path):
    gc = _gpu_check()
    args = gc.parse_args(["--rehearse", "--budget", "30", "--out", str(tmp_path / "o"), "--work", str(tmp_path / "w")])
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "bench.json").write_text("{}")  # an earlier run's result
    check = gc.Check(args)
    assert not (tmp_path / "o" / "bench.json").exists()
    ran = []
    check.step("fits", 5, lambda st, t: ran.append(t))
    st = check.step("too-long", 60, lambda st, t: ran.append("no"))
    assert ran and ran[0] >= 5 and "no" not in ran
    assert st.status == "skipped" and "needs about 60 s" in st.note

    def boom(st, t):
        raise RuntimeError("broken")

    assert check.step("raises", 1, boom).status == "failed" and check.failed()
    gc.summarize(check)
    summary = (tmp_path / "o" / "summary.md").read_text()
    assert "FAILED" in summary and "| too-long | skipped |" in summary and "RuntimeError: broken" in summary


def test_bench_rows_carry_the_names_the_targets_read():
    """bench/cuda_ops.py's report() rows (no GPU needed to record them) feed evaluate_targets."""
    spec = importlib.util.spec_from_file_location("bench_cuda_ops", ROOT / "bench" / "cuda_ops.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    bench.report("device-to-device copy 256 MiB", 0.2, gbytes=0.5)
    bench.report("dequantize_4bit nf4 torch.bfloat16 4096x11008", 0.05, gbytes=0.1, copy_gbs=2500.0)
    bench.report("gemv_4bit nf4 bf16 1x4096 @ 4096x4096", 0.01, "F.linear bf16", 0.03)
    bench.report("optimizer 8-bit adam 100M f32", 2.0, "AdamW(fused=True)", 1.5)
    bench.report("int8_linear_matmul 4096^3 (700 TOPS)", 0.2, "bf16 matmul", 0.36)
    rows = bench.ROWS
    assert rows[1]["GB/s"] == pytest.approx(2000.0) and rows[1]["copy_fraction"] == pytest.approx(0.8)
    assert rows[2]["ratio"] == pytest.approx(3.0) and rows[2]["baseline_us"] == pytest.approx(30.0)
    verdicts = [v["met"] for v in _gpu_check().evaluate_targets(rows)]
    assert verdicts == ["yes", "yes", "NO", "yes"]
    table = bench.markdown_table("device: test").splitlines()
    assert table[0] == "device: test" and len(table) == 4 + len(rows)
    assert table[6] == "| gemv_4bit nf4 bf16 1x4096 @ 4096x4096 | 10.0 |  |  | F.linear bf16 | 30.0 | 3.00 |"
