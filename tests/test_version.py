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


def _mini_repo(tmp_path: pathlib.Path) -> pathlib.Path:
    """VERSION, meta and cpu copied, plus a platform added later (platforms/newp)."""
    for rel in ("VERSION", "meta/pyproject.toml", "meta/src/bitsandbytes/_version.py"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text((ROOT / rel).read_text())
    for name in ("cpu", "newp"):
        folder = tmp_path / "platforms" / name
        (folder / "python" / f"bitsandbytes_{name}").mkdir(parents=True)
        pyproject = (
            (ROOT / "platforms" / "cpu" / "pyproject.toml")
            .read_text()
            .replace("bitsandbytes_cpu", f"bitsandbytes_{name}")
        )
        (folder / "pyproject.toml").write_text(pyproject)
        (folder / "python" / f"bitsandbytes_{name}" / "_version.py").write_text(f'__version__ = "{VERSION}"\n')
    return tmp_path


def _check(root: pathlib.Path) -> subprocess.CompletedProcess:
    tool = [sys.executable, str(ROOT / "tools" / "set_version.py"), "--root", str(root)]
    return subprocess.run([*tool, "--check"], capture_output=True, text=True)


@pytest.mark.parametrize(
    "break_it",
    [
        "VERSION",
        "meta/src/bitsandbytes/_version.py",
        "platforms/cpu/python/bitsandbytes_cpu/_version.py",
        "platforms/newp/python/bitsandbytes_newp/_version.py",  # a platform added later, found by glob
    ],
)
def test_any_disagreement_fails_the_check(tmp_path, break_it):
    root = _mini_repo(tmp_path)
    assert _check(root).returncode == 0
    path = root / break_it
    path.write_text(path.read_text().replace(VERSION, "9.9.9"))
    result = _check(root)
    assert result.returncode == 1
    assert ("VERSION says 9.9.9" if break_it == "VERSION" else f"{break_it}: 9.9.9") in result.stderr


def test_a_platform_with_a_static_version_is_a_disagreement(tmp_path):
    root = _mini_repo(tmp_path)
    pyproject = root / "platforms" / "newp" / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace('dynamic = ["version"]', f'version = "{VERSION}"'))
    result = _check(root)
    assert result.returncode == 1 and "platforms/newp/pyproject.toml" in result.stderr


def test_set_version_writes_every_distribution(tmp_path):
    root = _mini_repo(tmp_path)
    tool = [sys.executable, str(ROOT / "tools" / "set_version.py"), "--root", str(root), "2.0.0rc1"]
    subprocess.run(tool, check=True)
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        import set_version
    finally:
        sys.path.pop(0)
    versions = set_version.read_versions(root)
    assert len(versions) == 4 and set(versions.values()) == {"2.0.0rc1"}
