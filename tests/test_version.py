"""One version for every distribution, set in one place."""

from __future__ import annotations

import importlib.metadata
import pathlib
import subprocess
import sys

import pytest

import bitsandbytes

tomllib = pytest.importorskip("tomllib")  # Python 3.11+
ROOT = pathlib.Path(__file__).resolve().parent.parent
VERSION = (ROOT / "VERSION").read_text().strip()


def test_every_version_file_agrees():
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        import set_version
    finally:
        sys.path.pop(0)
    versions = set_version.read_versions()
    assert len(versions) >= 3  # VERSION, meta, cpu
    assert set(versions.values()) == {VERSION}
    result = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "set_version.py"), "--check"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr


def test_imported_package_has_the_version():
    assert bitsandbytes.__version__ == VERSION
    try:
        assert importlib.metadata.version("bitsandbytes") == VERSION
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("meta-package not installed (source checkout)")


@pytest.mark.parametrize("pyproject", sorted(str(p.relative_to(ROOT)) for p in ROOT.glob("platforms/*/pyproject.toml")))
def test_platform_pyprojects_read_their_version_file(pyproject):
    data = tomllib.loads((ROOT / pyproject).read_text())
    assert "version" in data["project"]["dynamic"]
    assert data["tool"]["scikit-build"]["metadata"]["version"]["input"].endswith("_version.py")
    assert not any(dep.startswith("torch") for dep in data["project"].get("dependencies", []))


def test_meta_extras_pin_the_same_version():
    data = tomllib.loads((ROOT / "meta" / "pyproject.toml").read_text())
    extras = data["tool"]["scikit-build"]["metadata"]["optional-dependencies"]["result"]
    assert set(extras) == {"cpu", "cuda12x", "cuda13x", "rocm", "xpu", "hpu", "mps"}
    for name, reqs in extras.items():
        assert reqs == [f"bitsandbytes-{name}=={{project[version]}}"]
    deps = data["tool"]["scikit-build"]["metadata"]["dependencies"]["result"]
    assert "bitsandbytes-cpu=={project[version]}" in deps


def test_installed_metadata_pins_extras():
    try:
        dist = importlib.metadata.distribution("bitsandbytes")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("meta-package not installed (source checkout)")
    reqs = dist.requires or []
    assert f'bitsandbytes-cuda12x=={VERSION}; extra == "cuda12x"' in reqs
    assert f"bitsandbytes-cpu=={VERSION}" in reqs
