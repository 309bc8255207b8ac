"""`python -m bitsandbytes`: the report, the self-test and --json."""

from __future__ import annotations

import json
import subprocess
import sys

import bitsandbytes
from bitsandbytes import __main__ as main_mod


def test_report_runs_and_passes():
    result = subprocess.run([sys.executable, "-m", "bitsandbytes"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert out.splitlines()[0] == f" bitsandbytes v{bitsandbytes.__version__} ".center(60, "=")
    assert "Self-test on cpu:" in out and "SUCCESS!" in out and "FAIL " not in out


def test_json_report():
    result = subprocess.run(
        [sys.executable, "-m", "bitsandbytes", "--json"], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0
    data = json.loads(result.stdout)
    assert data["bitsandbytes"] == bitsandbytes.__version__
    assert "cpu" in data["devices"] and data["selftest"]["cpu"]
    assert all(c["ok"] for c in data["selftest"]["cpu"])
    assert data["implementations"]["cpu"]["quantize_4bit"] in {"cpu", "reference"}


def test_failing_check_gives_exit_status_1(monkeypatch, capsys):
    def broken(device):
        return [{"name": "forced failure", "ok": False, "detail": "simulated", "implementation": "reference"}]

    monkeypatch.setattr(main_mod._selftest, "run", broken)
    assert main_mod.main([]) == 1
    assert "FAIL forced failure" in capsys.readouterr().out


def test_first_impression_prints_no_foreign_warning():
    """The README's first command runs the report and the demo: neither may print a warning
    (all warnings shown, as a user with warnings enabled would see them)."""
    import pathlib
    import subprocess
    import sys

    root = pathlib.Path(__file__).resolve().parent.parent
    for args in (["-m", "bitsandbytes", "--no-selftest"], [str(root / "examples" / "demo.py")]):
        proc = subprocess.run([sys.executable, "-W", "default", *args], capture_output=True, text=True, check=True)
        foreign = [line for line in proc.stderr.splitlines() if "Warning" in line and "bitsandbytes" not in line]
        assert foreign == [], proc.stderr


def test_one_failing_check_among_passing_ones_fails_the_report():
    report = {
        "selftest": {
            "cpu": [{"ok": True}, {"ok": False}, {"ok": True}],
            "cuda": [{"ok": True}],
        }
    }
    assert main_mod.passed(report) is False
    report["selftest"]["cpu"][1]["ok"] = True
    assert main_mod.passed(report) is True


def test_a_check_that_raises_is_a_failed_check_not_a_crash(monkeypatch):
    """The self-test reports a kernel that raises as one failed check and runs the others."""
    from bitsandbytes import _selftest

    for name in ("_check_4bit", "_check_blockwise", "_check_nf4_byte", "_check_weight_mm"):
        monkeypatch.setattr(_selftest, name, lambda *args: None)

    def raising(device):
        raise RuntimeError("kernel exploded")

    monkeypatch.setattr(_selftest, "_check_int8", raising)
    results = _selftest.run("cpu")
    failed = [r for r in results if not r["ok"]]
    assert len(results) == 12 and len(failed) == 1
    assert failed[0]["name"] == "int8 quantization and exact int8 matmul"
    assert failed[0]["detail"] == "raised RuntimeError('kernel exploded')"
    assert failed[0]["implementation"] == bitsandbytes.implementation("int8_linear_matmul", "cpu")


def test_the_report_asks_only_wheels_without_a_fix_to_explain(monkeypatch):
    """A record that already names its fix keeps its reason; one without a fix gets the wheel's
    ``explain(runtime)`` answer and its build info."""
    import types

    module = types.ModuleType("fake_bnb_explaining_wheel")
    module.explain = lambda runtime: ("Triton is not installed", 'pip install "triton"')
    module.build_info = lambda: {"backend": "triton"}
    monkeypatch.setitem(sys.modules, module.__name__, module)
    eps = [types.SimpleNamespace(name=name, module=module.__name__) for name in ("xpu", "hpu")]
    monkeypatch.setattr(main_mod.importlib.metadata, "entry_points", lambda group: eps)
    blank = {"device_type": "?", "build_info": {}}
    records = [
        {**blank, "platform": "xpu", "status": "missing", "reason": "no wheel", "fix": "pip install x"},
        {**blank, "platform": "hpu", "status": "skipped", "reason": "no hpu device present", "fix": None},
    ]
    out = main_mod._explain_skips(records, runtime=None)
    assert (out[0]["reason"], out[0]["fix"], out[0]["build_info"]) == ("no wheel", "pip install x", {})
    assert (out[1]["reason"], out[1]["fix"]) == ("Triton is not installed", 'pip install "triton"')
    assert out[1]["build_info"] == {"backend": "triton"}
