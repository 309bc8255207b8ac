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
EXAMPLES = int(os.environ.get("BNB_FUZZ_EXAMPLES", "300"))
SEED = int(os.environ.get("BNB_FUZZ_SEED", "0"))
TIMEOUT_S = int(os.environ.get("BNB_FUZZ_TIMEOUT", "170"))


def test_public_api_fuzz_fixed_seed():
    cmd = [sys.executable, str(HERE / "fuzz_api.py"), "--examples", str(EXAMPLES), "--seed", str(SEED)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT_S, cwd=HERE)
    except subprocess.TimeoutExpired as err:
        out = err.stderr.decode() if isinstance(err.stderr, bytes) else (err.stderr or "")
        pytest.fail(f"fuzz run hung past {TIMEOUT_S} s; its last output:\n{out[-4000:]}")
    tail = (proc.stdout + proc.stderr)[-6000:]
    if proc.returncode < 0:
        pytest.fail(f"a native call crashed the fuzz child with signal {-proc.returncode}:\n{tail}")
    assert proc.returncode == 0, tail
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["total"] >= 8 * EXAMPLES, summary  # every property (8) ran its budget
    print(summary)


@pytest.mark.parametrize("bits", [32, 8])
def test_lion_nan_gradient_matches_reference_on_every_isa(bits):
    """Found by the fuzz suite: the native Lion took sign(NaN) as NaN and wrote NaN into the
    parameter; torch.sign (the reference, and the established release's kernel) gives 0."""
    cpu = pytest.importorskip("bitsandbytes_cpu")
    import torch

    import bitsandbytes  # noqa: F401  (registers the ops)
    from bitsandbytes.backends.reference import KERNELS as REF
    from bitsandbytes.backends.reference.codebooks import dynamic_map

    n = 256 * 3 + 5
    g = torch.randn(n) * 0.1
    g[[0, 17, 300, n - 1]] = float("nan")
    p0 = torch.randn(n)

    def run(fn):
        p, s1 = p0.clone(), torch.zeros(n, dtype=torch.uint8 if bits == 8 else torch.float32)
        if bits == 32:
            fn["optimizer_update_32bit"](
                "lion", g, p, s1, None, None, 0.0, 0.0, 0.9, 0.99, 0.0, 0.0, 1e-8, 0.01, 1, 1e-3, 1.0, False
            )
        else:
            a1 = torch.zeros(-(n // -256))
            fn["optimizer_update_8bit_blockwise"](
                "lion",
                g,
                p,
                s1,
                None,
                0.9,
                0.99,
                0.0,
                0.0,
                1e-8,
                1,
                1e-3,
                dynamic_map(),
                None,
                a1,
                None,
                0.01,
                1.0,
                False,
            )
        return p

    want = run(REF)
    assert not want.isnan().any()
    ops = torch.ops.bitsandbytes
    native = {k: getattr(ops, k) for k in ("optimizer_update_32bit", "optimizer_update_8bit_blockwise")}
    for isa in cpu.build_info().get("isa_usable", []):
        cpu.set_isa(isa)
        try:
            got = run(native)
        finally:
            cpu.set_isa("auto")
        torch.testing.assert_close(got, want, rtol=0, atol=1e-6, msg=lambda m, isa=isa: f"{isa}: {m}")
