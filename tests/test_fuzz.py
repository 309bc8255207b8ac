"""The property-based fuzz suite (tests/fuzz_api.py) under a fixed seed and budget, in a child
process: a native crash (signal) or hang is reported as a failure with the child's output rather
than taking the test runner down. ``nox -s fuzz`` runs a longer budget."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest

pytest.importorskip("hypothesis")

HERE = pathlib.Path(__file__).parent
EXAMPLES = int(os.environ.get("BNB_FUZZ_EXAMPLES", "60"))
SEED = int(os.environ.get("BNB_FUZZ_SEED", "0"))
TIMEOUT_S = int(os.environ.get("BNB_FUZZ_TIMEOUT", "170"))


def test_public_api_fuzz_fixed_seed():
    cmd = [sys.executable, str(HERE / "fuzz_api.py"), "--examples", str(EXAMPLES), "--seed", str(SEED)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT_S, cwd=HERE)
    except subprocess.TimeoutExpired as err:
        pytest.fail(f"fuzz run hung past {TIMEOUT_S} s; its last output:\n{(err.stderr or '')[-4000:]}")
    tail = (proc.stdout + proc.stderr)[-6000:]
    if proc.returncode < 0:
        pytest.fail(f"a native call crashed the fuzz child with signal {-proc.returncode}:\n{tail}")
    assert proc.returncode == 0, tail
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["total"] >= 6 * EXAMPLES, summary  # every property ran its budget
    print(summary)
