"""The release configuration: cibuildwheel's build matrix of every platform, one-line configure-time
errors, and the artifact checks. Needs neither torch nor a build (`nox -s release-config` runs it
with --noconftest); the cibuildwheel tests skip where cibuildwheel is not installed."""

from __future__ import annotations

import importlib.util
import os
import pathlib
import shutil
import subprocess
import sys
import zipfile

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
PYTHONS = ["cp310", "cp311", "cp312", "cp313", "cp314"]
VERSION = (ROOT / "VERSION").read_text().strip()
CUDA_TOOLS = ROOT / "platforms" / "cuda" / "tools"

# The test sessions of the library collect tests/ too; these configure CMake projects and run
# cibuildwheel, so they run once, in `nox -s release-config` (which sets BNB_RELEASE_TESTS=1).
pytestmark = pytest.mark.skipif(
    os.environ.get("BNB_RELEASE_TESTS") != "1", reason="release configuration: run by `nox -s release-config`"
)


def identifiers(package: pathlib.Path, platform: str, *extra: str) -> list[str]:
    pytest.importorskip("cibuildwheel")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CIBW_")}
    cmd = [sys.executable, "-m", "cibuildwheel", "--print-build-identifiers", "--platform", platform, *extra]
    out = subprocess.run([*cmd, str(package)], env=env, capture_output=True, text=True, check=True, cwd=ROOT)
    return sorted(out.stdout.split())


def matrix(*platform_tags: str) -> list[str]:
    return sorted(f"{py}-{tag}" for py in PYTHONS for tag in platform_tags)


@pytest.mark.parametrize(
    ("platform", "expected"),
    [
        ("linux", matrix("manylinux_x86_64", "manylinux_aarch64", "musllinux_x86_64")),
        ("macos", matrix("macosx_arm64", "macosx_x86_64")),
        ("windows", matrix("win_amd64")),
    ],
)
def test_cpu_build_identifiers(platform, expected):
    assert identifiers(ROOT / "platforms" / "cpu", platform) == expected


def test_cpu_archs_can_be_narrowed_per_runner():
    # The release workflow runs one job per (OS, arch): --archs picks that job's slice of the matrix.
    ids = identifiers(ROOT / "platforms" / "cpu", "linux", "--archs", "aarch64")
    assert ids == matrix("manylinux_aarch64")


@pytest.mark.parametrize("os_name", ["linux", "macos", "windows"])
def test_cpu_kernel_library_is_built_once_per_machine(os_name):
    tomllib = pytest.importorskip("tomllib")
    config = tomllib.loads((ROOT / "platforms" / "cpu" / "pyproject.toml").read_text())["tool"]["cibuildwheel"]
    assert "build_kernel_library.sh" in config[os_name]["before-all"]
    assert config[os_name]["environment"]["SKBUILD_CMAKE_DEFINE"].startswith("BNB_KERNEL_LIBRARY_DIR=")
    assert any(
        "check_wheel.py --max-size bitsandbytes-cpu=1000000" in c for c in config[os_name]["repair-wheel-command"]
    )


@pytest.fixture
def cuda_package(tmp_path):
    """platforms/cuda when this checkout has it, else a stand-in folder (only the config is read)."""
    real = ROOT / "platforms" / "cuda"
    if (real / "pyproject.toml").exists():
        return real
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "bitsandbytes-cuda12x"\nversion = "0"\n')
    return tmp_path


@pytest.mark.parametrize(
    ("platform", "expected"),
    [("linux", matrix("manylinux_x86_64", "manylinux_aarch64")), ("windows", matrix("win_amd64"))],
)
def test_cuda_build_identifiers(cuda_package, platform, expected):
    config = ROOT / "release" / "cibuildwheel-cuda.toml"
    assert identifiers(cuda_package, platform, "--config-file", str(config)) == expected


def test_cuda_config_excludes_and_checks_runtime_libraries():
    tomllib = pytest.importorskip("tomllib")
    config = tomllib.loads((ROOT / "release" / "cibuildwheel-cuda.toml").read_text())["tool"]["cibuildwheel"]
    linux = " ".join(config["linux"]["repair-wheel-command"])
    for lib in ("libcudart.so.*", "libcublas.so.*", "libcublasLt.so.*"):
        assert f"--exclude '{lib}'" in linux
    assert "check_wheel.py --forbid 'libcudart*' --forbid 'libcublas*'" in linux
    assert "BNB_CUDA_MAJOR" in config["linux"]["environment-pass"]
    for os_name in ("linux", "windows"):
        steps = config[os_name]["before-all"]
        assert any("{package}/tools/set_cuda_major.py --from-env" in step for step in steps)
        assert "BNB_KERNEL_LIBRARY_DIR=" in config[os_name]["environment"]["SKBUILD_CMAKE_DEFINE"]
    # The architectures reach the option the CMake project reads (CMAKE_CUDA_ARCHITECTURES it sets itself).
    assert "BNB_CUDA_ARCHS" in config["linux"]["environment-pass"]
    assert all("CMAKE_CUDA_ARCHITECTURES" not in step for step in config["linux"]["before-all"])
    assert any("-DBNB_CUDA_ARCHS=" in step for step in config["linux"]["before-all"])


def _set_cuda_major(tmp_path, monkeypatch):
    """platforms/cuda/tools/set_cuda_major.py, pointed at a copy of the real pyproject.toml."""
    spec = importlib.util.spec_from_file_location("set_cuda_major", CUDA_TOOLS / "set_cuda_major.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    copy = tmp_path / "pyproject.toml"
    copy.write_text((ROOT / "platforms" / "cuda" / "pyproject.toml").read_text())
    monkeypatch.setattr(module, "PYPROJECT", copy)
    return module, copy


def test_set_cuda_major_from_env_renames_distribution_and_entry_point(tmp_path, monkeypatch, capsys):
    module, copy = _set_cuda_major(tmp_path, monkeypatch)
    monkeypatch.setenv("BNB_CUDA_MAJOR", "12")
    assert module.main(["--from-env"]) == 0
    text = copy.read_text()
    assert 'name = "bitsandbytes-cuda12x"  # bnb:cuda-major' in text
    assert 'cuda12x = "bitsandbytes_cuda:register"  # bnb:cuda-major' in text
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads(text)["project"]
    assert project["name"] == "bitsandbytes-cuda12x"
    assert project["entry-points"]["bitsandbytes.platforms"] == {"cuda12x": "bitsandbytes_cuda:register"}


@pytest.mark.parametrize("value", ["", "11", "twelve", "\u0661\u0662"])
def test_set_cuda_major_from_env_refuses_a_bad_value(tmp_path, monkeypatch, capsys, value):
    module, copy = _set_cuda_major(tmp_path, monkeypatch)
    before = copy.read_text()
    monkeypatch.setenv("BNB_CUDA_MAJOR", value)
    with pytest.raises(SystemExit) as exc:
        module.main(["--from-env"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "BNB_CUDA_MAJOR" in err or "CUDA 12 or newer" in err
    assert copy.read_text() == before


def test_rocm_build_identifiers():
    config = ROOT / "release" / "cibuildwheel-rocm.toml"
    assert identifiers(ROOT / "platforms" / "rocm", "linux", "--config-file", str(config)) == matrix("manylinux_x86_64")


def test_rocm_config_builds_one_library_per_major_and_bundles_no_rocm():
    tomllib = pytest.importorskip("tomllib")
    config = tomllib.loads((ROOT / "release" / "cibuildwheel-rocm.toml").read_text())["tool"]["cibuildwheel"]
    linux = config["linux"]
    repair = " ".join(linux["repair-wheel-command"])
    for lib in ("libamdhip64.so.*", "libhsa-runtime64.so.*", "libamd_comgr.so.*"):
        assert f"--exclude '{lib}'" in repair
    assert "--forbid 'libamdhip64*'" in repair
    assert any("build_rocm_kernel_libraries.sh" in step for step in linux["before-all"])
    assert "BNB_ROCM_VERSIONS" in linux["environment-pass"]
    # The library prefixes packaged by every Python's build are one per major of the default versions.
    script = (ROOT / "release" / "install_rocm_toolchains.sh").read_text()
    versions = script.split("BNB_ROCM_VERSIONS:-", 1)[1].split("}", 1)[0].split()
    majors = sorted({v.split(".")[0] for v in versions})
    dirs = linux["environment"]["SKBUILD_CMAKE_DEFINE"].split("=", 1)[1].split(",")
    assert dirs == [f"/tmp/bnb-rocm/{m}" for m in majors]
    assert f"--majors {','.join(majors)}" in repair
    workflow = (ROOT / ".github" / "workflows" / "release.yml").read_text()
    assert "release/cibuildwheel-rocm.toml" in workflow and f'BNB_ROCM_VERSIONS: "{" ".join(versions)}"' in workflow


# ---- configure-time errors: one line naming what is missing and how to get it ----

needs_cmake = pytest.mark.skipif(shutil.which("cmake") is None, reason="cmake is not installed")


def configure(tmp_path, *args: str, source=ROOT / "platforms" / "cpu", env=None) -> str:
    result = subprocess.run(
        ["cmake", "-S", str(source), "-B", str(tmp_path / "build"), *args],
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
    )
    assert result.returncode != 0
    lines = [line.strip() for line in result.stderr.splitlines() if line.strip().startswith("bitsandbytes")]
    assert len(lines) == 1, result.stderr  # CMake leaves the message unwrapped: exactly one line
    return lines[0]


@needs_cmake
def test_missing_compiler_is_one_line(tmp_path):
    line = configure(tmp_path, "-DBNB_BUILD_PYTHON=OFF", env={"CXX": str(tmp_path / "no-such-g++")})
    assert line.startswith("bitsandbytes: no working CXX compiler found; install a C++17 compiler (Debian/Ubuntu:")


@needs_cmake
@pytest.mark.parametrize(
    ("platform", "message"),
    [
        ("foo", "bitsandbytes: unknown platform 'foo' (BNB_PLATFORM); choose one of cpu, cuda, rocm, xpu, hpu, mps"),
        ("rocm", "bitsandbytes: this folder builds 'cpu', not 'rocm'; configure platforms/rocm instead"),
    ],
)
def test_wrong_platform_is_one_line(tmp_path, platform, message):
    assert configure(tmp_path, "-DBNB_BUILD_PYTHON=OFF", f"-DBNB_PLATFORM={platform}") == message


@needs_cmake
def test_missing_prebuilt_kernel_library_is_one_line(tmp_path):
    line = configure(tmp_path, f"-DBNB_KERNEL_LIBRARY_DIR={tmp_path / 'nowhere'}")
    assert "holds no bitsandbytes_cpu CMake package; build it first:" in line


@needs_cmake
@pytest.mark.skipif(shutil.which("nvcc") is None, reason="no CUDA toolkit")
def test_cuda_missing_prebuilt_kernel_library_is_one_line(tmp_path):
    line = configure(tmp_path, f"-DBNB_KERNEL_LIBRARY_DIR={tmp_path / 'nowhere'}", source=ROOT / "platforms" / "cuda")
    assert "holds no bitsandbytes_cuda CMake package; build it first:" in line


@needs_cmake
@pytest.mark.skipif(shutil.which("nvcc") is None, reason="no CUDA toolkit")
def test_cuda_major_mismatch_is_one_line(tmp_path):
    nvcc = subprocess.run(["nvcc", "--version"], capture_output=True, text=True).stdout
    found = nvcc.split("release ")[1].split(".")[0]
    wrong = "12" if found != "12" else "13"
    project = tmp_path / "src"
    project.mkdir()
    (project / "CMakeLists.txt").write_text(
        "cmake_minimum_required(VERSION 3.18)\nproject(cuda_check LANGUAGES NONE)\n"
        f'include("{(ROOT / "shared" / "cmake" / "bnb.cmake").as_posix()}")\n'
        'bnb_require_language(CUDA "the CUDA toolkit")\nbnb_check_cuda_major(${BNB_CUDA_MAJOR})\n'
    )
    line = configure(tmp_path, f"-DBNB_CUDA_MAJOR={wrong}", source=project)
    assert line.startswith(f"bitsandbytes: BNB_CUDA_MAJOR={wrong} but ") and f"install CUDA {wrong}.x" in line


def test_unknown_platform_in_release_tools():
    out = subprocess.run([sys.executable, str(ROOT / "tools" / "sdist.py"), "foo"], capture_output=True, text=True)
    assert out.returncode != 0
    assert out.stderr.strip() == "error: unknown platform 'foo'; known platforms: cpu, cuda, rocm, xpu, hpu, mps"


# ---- the artifact checks catch what they are for ----


def fake_wheel(path: pathlib.Path, files: dict[str, str], requires: list[str]) -> pathlib.Path:
    name, version = path.name.split("-")[:2]
    info = f"{name}-{version}.dist-info"
    metadata = f"Metadata-Version: 2.4\nName: {name.replace('_', '-')}\nVersion: {version}\n"
    metadata += "".join(f"Requires-Dist: {r}\n" for r in requires)
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(f"{info}/METADATA", metadata)
        zf.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: false\nTag: cp311-cp311-linux_x86_64\n")
        for member, text in files.items():
            zf.writestr(member, text)
    return path


def test_check_wheel_rejects_a_bad_platform_wheel(tmp_path):
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        import check_wheel
    finally:
        sys.path.pop(0)
    wheel = fake_wheel(
        tmp_path / f"bitsandbytes_cpu-{VERSION}-cp311-cp311-linux_x86_64.whl",
        {
            "bitsandbytes_cpu/tests/test_x.py": "",
            "bitsandbytes_cpu/kernel.h": "",
            "bitsandbytes_cpu/libcudart.so.12": "",
        },
        ["torch>=2.3"],
    )
    problems = "\n".join(check_wheel.check_wheel(wheel, VERSION, 10, ["libcudart*"]))
    for expected in (
        "linux_* tag",
        "over the 10-byte limit",
        "must not depend on torch",
        "no licence",
        "no readme",
        "contains bitsandbytes_cpu/tests/test_x.py",
        "contains bitsandbytes_cpu/kernel.h",
        "libcudart.so.12, which must stay outside",
        "no bitsandbytes_cpu/_C extension module",
    ):
        assert expected in problems


def test_check_wheel_holds_the_pure_hpu_wheel_to_pure_python(tmp_path):
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        import check_wheel
    finally:
        sys.path.pop(0)
    wheel = fake_wheel(
        tmp_path / f"bitsandbytes_hpu-{VERSION}-cp311-cp311-linux_x86_64.whl",
        {"bitsandbytes_hpu/_C.cpython-311-x86_64-linux-gnu.so": ""},
        ["torch>=2.3"],
    )
    problems = "\n".join(check_wheel.check_wheel(wheel, VERSION, None, []))
    for expected in (
        "a pure-Python platform wheel must be py3-none-any",
        "Root-Is-Purelib is false",
        "a pure-Python platform wheel contains native code",
        "must not depend on torch",
        "no bitsandbytes.platforms entry point",
        "no bitsandbytes_hpu package",
    ):
        assert expected in problems, problems
    assert "_C extension module" not in problems and "kernel library" not in problems


@needs_cmake
def test_rocm_bad_arch_is_one_line(tmp_path):
    if shutil.which("hipcc") is None:
        pytest.skip("hipcc is not installed")
    line = configure(
        tmp_path, "-DBNB_ROCM_ARCHS=sm_90", source=ROOT / "platforms" / "rocm", env={"HIP_PLATFORM": "amd"}
    )
    assert line == "bitsandbytes-rocm: BNB_ROCM_ARCHS entry 'sm_90' is not a gfx target like gfx90a"
    # A target this hipcc cannot compile for is refused by name (ROCm 5.2's clang 15 has no gfx1201).
    if "HIP version: 5." in subprocess.run(["hipcc", "--version"], capture_output=True, text=True).stdout:
        line = configure(tmp_path / "new", "-DBNB_ROCM_ARCHS=gfx90a;gfx1201", source=ROOT / "platforms" / "rocm",
                         env={"HIP_PLATFORM": "amd"})  # fmt: skip
        assert line.startswith("bitsandbytes-rocm: ") and "cannot compile for gfx1201" in line


def test_mps_wheel_is_built_and_gated_on_macos_arm64():
    workflow = (ROOT / ".github" / "workflows" / "release.yml").read_text()
    job = workflow.split("  wheels-mps:")[1].split("\n  wheelhouse:")[0]
    assert "runs-on: macos-14" in job and "platforms/mps" in job and "check_wheel.py" in job
    # The suite runs only behind the gate; the gate's "skipped" (3) ends the step without a pass.
    gate, suite = job.index("release/mps_check.py"), job.index("python -m pytest")
    assert gate < suite and '"$gate" = 3' in job
    assert "wheels-mps" in workflow.split("\n  wheelhouse:")[1].split("steps:")[0]


def test_check_wheel_takes_the_pure_mps_wheel_and_refuses_native_code(tmp_path):
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        import check_wheel
    finally:
        sys.path.pop(0)
    wheel = fake_wheel(
        tmp_path / f"bitsandbytes_mps-{VERSION}-cp311-cp311-macosx_11_0_arm64.whl",
        {"bitsandbytes_mps/_C.cpython-311-darwin.so": "", "bitsandbytes_mps/kernels.metallib": ""},
        [],
    )
    problems = "\n".join(check_wheel.check_wheel(wheel, VERSION, None, []))
    for expected in (
        "a pure-Python platform wheel must be py3-none-any",
        "a pure-Python platform wheel contains native code",
        "no bitsandbytes_mps/bnb_mps.metal",
    ):
        assert expected in problems
