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
