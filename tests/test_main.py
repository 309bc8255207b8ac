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
