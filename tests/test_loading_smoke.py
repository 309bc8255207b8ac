"""The package imports and reports what it loaded."""

import bitsandbytes


def test_version_and_features():
    assert bitsandbytes.__version__ == "1.0.0.dev0"
    assert "multi_backend" in bitsandbytes.features
    assert {"cpu", "cuda"} <= bitsandbytes.supported_torch_devices


def test_cpu_is_recorded():
    recs = [r for r in bitsandbytes.platforms() if r["device_type"] == "cpu"]
    assert recs and recs[0]["status"] in {"loaded", "missing", "skipped"}
