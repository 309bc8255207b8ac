"""Build a wheelhouse (dist/) that installs like the package index, check it, and install from it.

    python tools/wheelhouse.py build    # sdists; meta, cpu, hpu and xpu wheels (cpu repaired by auditwheel);
                                        # the cuda wheel for one architecture when platforms/cuda and
                                        # nvcc exist; the pure mps wheel; the meta-package's plain
                                        # dependencies
    python tools/wheelhouse.py check    # tools/check_wheel.py on every artifact (cpu wheel < 1 MB)
    python tools/wheelhouse.py install  # fresh venv with only torch: three installs from dist alone
    python tools/wheelhouse.py all      # the three in turn (what `nox -s wheelhouse` runs)
    python tools/wheelhouse.py sources  # the release's pure part: every sdist + the meta, hpu and xpu wheels

`build` needs scikit-build-core, pybind11 and (on Linux) auditwheel in the running environment and
builds with no build isolation from the sdists, so a wheel that builds proves its sdist is
complete. `install` (also used by the release workflow on the collected wheelhouse) makes one venv
with only the pinned torch (``--torch``, default ``torch==2.13.0``; never an unpinned torch), records
``pip freeze`` as the baseline, and for each case checks the environment is back to that baseline
first, installs with ``pip install --no-index --find-links <dist>``, checks, and uninstalls again:

1. ``bitsandbytes``: pulls bitsandbytes-cpu; ``python -m bitsandbytes`` passes, cpu kernels loaded.
2. ``bitsandbytes[cuda12x]`` and ``[cuda13x]``: the extra whose wheel is in dist installs and the report passes, saying why the CUDA wheel is not in use without a GPU;
   without one, pip must stop with its clear "No matching distribution found" for the pinned wheel.
   ``bitsandbytes[hpu]`` (pure Python, always in dist): installs, and without a Gaudi the report
   passes and says why the HPU wheel is unused (the Gaudi software it names is missing).
   ``bitsandbytes[xpu]`` likewise (no Triton, no torch change): the report says why it is skipped
   here (no XPU device) and which fix applies.
3. a meta-package whose version differs from the cpu wheel's: import warns, naming the
   ``pip install`` that fixes it, and the reference kernels serve the cpu ops.
4. ``bitsandbytes[mps]``: installs anywhere (py3-none-any); the report passes and, without an
   Apple GPU, says why the MPS wheel is skipped.

In every case the torch lines of ``pip freeze`` must be the same before and after.
"""

from __future__ import annotations

import argparse
import email.parser
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
import check_wheel  # noqa: E402
import sdist  # noqa: E402

CPU_MAX_SIZE = 1_000_000
PURE_PLATFORMS = ["hpu", "xpu"]  # platform wheels with nothing to compile: built once, beside the meta wheel
CUDA_RUNTIME_LIBS = ["libcudart.so*", "libcublas.so*", "libcublasLt.so*"]


def run(*cmd: str | os.PathLike, check: bool = True, env: dict | None = None, **kw) -> subprocess.CompletedProcess:
    print("+", " ".join(str(c) for c in cmd), flush=True)
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([str(c) for c in cmd], check=check, env=full_env, text=True, **kw)


def version() -> str:
    return check_wheel.repo_version()


# ---------------------------------------------------------------------------------------- build


def pip_wheel(source: pathlib.Path, outdir: pathlib.Path, env: dict | None = None) -> pathlib.Path:
    """Build one wheel from ``source`` (an sdist) with what is installed here: no index, no isolation."""
    before = set(outdir.glob("*.whl"))
    run(
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "--no-cache-dir",
        "--no-build-isolation",
        "--no-deps",
        "--no-index",
        "-w",
        outdir,
        source,
        env=env,
    )
    (new,) = set(outdir.glob("*.whl")) - before
    return new


def repair(wheel: pathlib.Path, dist: pathlib.Path, exclude: list[str] = ()) -> pathlib.Path:
    """auditwheel repair on Linux (manylinux tag); elsewhere the wheel is copied as is."""
    if not sys.platform.startswith("linux"):
        return pathlib.Path(shutil.copy2(wheel, dist))
    before = set(dist.glob("*.whl"))
    args = [a for pattern in exclude for a in ("--exclude", pattern)]
    run(sys.executable, "-m", "auditwheel", "repair", *args, "-w", dist, wheel)
    (new,) = set(dist.glob("*.whl")) - before
    return new


def cuda_reason() -> str | None:
    """Why no cuda wheel is built here, or None when one can be."""
    if not (ROOT / "platforms" / "cuda" / "pyproject.toml").exists():
        return "platforms/cuda is not in this checkout"
    if not shutil.which("nvcc"):
        return "nvcc is not on PATH"
    return None


def plain_requirements(meta_wheel: pathlib.Path) -> list[str]:
    """The meta-package's requirements that come from the index: no extras, not torch, not ours."""
    with zipfile.ZipFile(meta_wheel) as zf:
        name = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        md = email.parser.Parser().parsestr(zf.read(name).decode())
    reqs = []
    for req in md.get_all("Requires-Dist") or []:
        if ";" in req and "extra" in req.split(";", 1)[1]:
            continue
        if re.match(r"^(torch|bitsandbytes)\b", req, re.I):
            continue
        reqs.append(req.split(";")[0].strip())
    return reqs


def build(dist: pathlib.Path) -> None:
    if dist.exists():
        shutil.rmtree(dist)
    dist.mkdir(parents=True)
    with tempfile.TemporaryDirectory(prefix="bnb-wheelhouse-") as tmp:
        raw = pathlib.Path(tmp)
        meta_sdist = sdist.build_sdist("meta", dist)
        cpu_sdist = sdist.build_sdist("cpu", dist)
        meta_wheel = pip_wheel(meta_sdist, dist)
        repair(pip_wheel(cpu_sdist, raw), dist)
        for pure in PURE_PLATFORMS:  # py3-none-any: nothing to repair
            if (ROOT / "platforms" / pure / "pyproject.toml").exists():
                pip_wheel(sdist.build_sdist(pure, dist), dist)
        reason = cuda_reason()
        if reason is None:
            major = re.search(r"release (\d+)", run("nvcc", "--version", capture_output=True).stdout).group(1)
            arch = os.environ.get("BNB_WHEELHOUSE_CUDA_ARCH", "80")
            cuda_sdist = sdist.build_sdist("cuda", dist)
            env = {"BNB_CUDA_MAJOR": major, "BNB_CUDA_ARCHS": arch}
            repair(pip_wheel(cuda_sdist, raw, env=env), dist, exclude=CUDA_RUNTIME_LIBS)
        else:
            print(f"wheelhouse: no cuda wheel ({reason})")
        pip_wheel(sdist.build_sdist("mps", dist), dist)  # pure Python + Metal source: nothing to repair
        reqs = plain_requirements(meta_wheel)
        if reqs:  # so that `pip install --no-index --find-links dist bitsandbytes` finds everything but torch
            run(sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:", "-d", dist, *reqs)
    for f in sorted(dist.iterdir()):
        print(f"  {f.name}  {f.stat().st_size} bytes")


def sources(dist: pathlib.Path) -> None:
    """What the release adds beside cibuildwheel's wheels: an sdist of every distribution and the
    py3-none-any wheels of the meta-package and of PURE_PLATFORMS (built from their sdists)."""
    dist.mkdir(parents=True, exist_ok=True)
    meta_sdist = sdist.build_sdist("meta", dist)
    for pyproject in sorted((ROOT / "platforms").glob("*/pyproject.toml")):
        platform_sdist = sdist.build_sdist(pyproject.parent.name, dist)
        if pyproject.parent.name in PURE_PLATFORMS:
            pip_wheel(platform_sdist, dist)
    pip_wheel(meta_sdist, dist)


def check(dist: pathlib.Path) -> None:
    forbid = [a for p in CUDA_RUNTIME_LIBS for a in ("--forbid", p)]
    if check_wheel.main(["--max-size", f"bitsandbytes-cpu={CPU_MAX_SIZE}", *forbid, str(dist)]):
        raise SystemExit("wheelhouse: check failed")


# -------------------------------------------------------------------------------------- install


class Venv:
    def __init__(self, path: pathlib.Path):
        self.path = path
        run(sys.executable, "-m", "venv", path)
        self.python = path / ("Scripts/python.exe" if os.name == "nt" else "bin/python")

    def pip(self, *args: str | os.PathLike, check: bool = True) -> subprocess.CompletedProcess:
        return run(self.python, "-m", "pip", *args, check=check, capture_output=True)

    def freeze(self) -> list[str]:
        return self.pip("freeze", "--all", "--exclude", "pip").stdout.splitlines()

    def torch_lines(self) -> list[str]:
        return [line for line in self.freeze() if "torch" in line.lower()]

    def reset(self, baseline: list[str]) -> None:
        extra = [line.split("==")[0].split(" @ ")[0] for line in self.freeze() if line not in baseline]
        if extra:
            self.pip("uninstall", "-y", *extra)
        assert self.freeze() == baseline, "could not return to the torch-only environment"

    def py(self, *args: str, check: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
        return run(self.python, *args, check=check, capture_output=True, env=env)


def next_patch(v: str) -> str:
    """1.0.0.dev0 -> 1.0.1.dev0: a version the cpu wheel in the wheelhouse does not have."""
    return re.sub(r"^(\d+)\.(\d+)\.(\d+)", lambda m: f"{m[1]}.{m[2]}.{int(m[3]) + 1}", v, count=1)


def build_patched_meta(new_version: str, outdir: pathlib.Path) -> pathlib.Path:
    stage = outdir / "meta"
    shutil.copytree(ROOT / "meta", stage, ignore=sdist.IGNORE)
    (stage / "src" / "bitsandbytes" / "_version.py").write_text(f'__version__ = "{new_version}"\n')
    return pip_wheel(stage, outdir)


def install(dist: pathlib.Path, torch_req: str) -> list[str]:
    if not re.match(r"^torch==\S+$", torch_req):
        raise SystemExit(f"wheelhouse: the torch requirement must be pinned (torch==X.Y.Z), got {torch_req!r}")
    dist = dist.resolve()
    v = version()
    from_dist = ["install", "--no-index", "--find-links", str(dist)]
    summary = []
    with tempfile.TemporaryDirectory(prefix="bnb-install-") as tmp:
        tmp = pathlib.Path(tmp)
        venv = Venv(tmp / "venv")
        venv.pip("install", torch_req)  # the only step that may use an index
        baseline = venv.freeze()
        print(f"torch-only baseline: {baseline}")

        def case(title: str, body) -> None:
            venv.reset(baseline)
            before = venv.torch_lines()
            result = body()
            after = venv.torch_lines()
            assert before == after, f"{title}: torch changed: {before} -> {after}"
            line = f"{title}: {result}; pip freeze | grep -i torch: {after} before and after"
            print(line, flush=True)
            summary.append(line)

        def plain() -> str:
            venv.pip(*from_dist, "bitsandbytes")
            venv.py("-m", "bitsandbytes")  # the report and the self-test; exit 1 on a failure
            report = json.loads(venv.py("-m", "bitsandbytes", "--json").stdout)
            cpu = [r for r in report["platforms"] if r.get("platform") == "cpu"]
            assert cpu and cpu[0]["status"] == "loaded", cpu
            installed = sorted(line for line in venv.freeze() if line.lower().startswith("bitsandbytes"))
            return f"installed {installed}, python -m bitsandbytes passed, cpu kernels loaded"

        def cuda_extra(extra: str) -> str:
            if not list(dist.glob(f"bitsandbytes_{extra}-*.whl")):
                result = venv.pip(*from_dist, f"bitsandbytes[{extra}]", check=False)
                expected = f"No matching distribution found for bitsandbytes-{extra}=={v}"
                assert result.returncode != 0 and expected in result.stderr, result.stderr
                assert venv.freeze() == baseline, "a failed install left packages behind"
                return f"no {extra} wheel in the wheelhouse ({cuda_reason() or 'built for another CUDA major'}); pip refused: {expected!r}"
            venv.pip(*from_dist, f"bitsandbytes[{extra}]")
            venv.py("-m", "bitsandbytes")  # the report and the self-test pass without the GPU wheel in use
            report = json.loads(venv.py("-m", "bitsandbytes", "--json").stdout)
            rec = [r for r in report["platforms"] if r.get("platform") == extra]
            assert rec, report["platforms"]
            if "cuda" not in report["devices"]:
                assert rec[0]["status"] == "skipped" and rec[0]["reason"], rec
            installed = sorted(line for line in venv.freeze() if line.lower().startswith("bitsandbytes"))
            return (
                f"installed {installed}; python -m bitsandbytes passed and reports "
                f"[{rec[0]['status']}] bitsandbytes-{extra}: {rec[0]['reason'] or 'in use'}"
            )

        def device_extra(platform: str) -> str:
            """A platform wheel whose device this machine lacks: installs from the wheelhouse,
            the report passes and says why the wheel is skipped."""
            if not list(dist.glob(f"bitsandbytes_{platform}-*.whl")):
                return f"no {platform} wheel in the wheelhouse (platforms/{platform} is not in this checkout)"
            venv.pip(*from_dist, f"bitsandbytes[{platform}]")
            out = venv.py("-m", "bitsandbytes").stdout  # the report and the self-test pass
            report = json.loads(venv.py("-m", "bitsandbytes", "--json").stdout)
            rec = [r for r in report["platforms"] if r.get("platform") == platform]
            assert rec, report["platforms"]
            if platform not in report["devices"]:
                assert rec[0]["status"] == "skipped" and f"no {platform} device present" in rec[0]["reason"], rec
                assert f"bitsandbytes-{platform}" in out and rec[0]["reason"] in out, out
            installed = sorted(line for line in venv.freeze() if line.lower().startswith("bitsandbytes"))
            return (
                f"installed {installed}; python -m bitsandbytes passed and reports "
                f"[{rec[0]['status']}] bitsandbytes-{platform}: {rec[0]['reason'] or 'in use'}"
            )

        def mismatch() -> str:
            other = next_patch(v)
            wheel = build_patched_meta(other, tmp / "patched")
            venv.pip(*from_dist, f"bitsandbytes-cpu=={v}", *plain_requirements(wheel))
            venv.pip("install", "--no-index", "--no-deps", wheel)
            probe = (
                "import bitsandbytes, torch\n"
                "impl = bitsandbytes.implementation('quantize_4bit', 'cpu')\n"
                "assert impl == 'reference', impl\n"
                "torch.manual_seed(0)\n"
                "x = torch.randn(256)\n"
                "q, absmax = torch.ops.bitsandbytes.quantize_4bit(x, 64, 'nf4', torch.uint8)\n"
                "y = torch.ops.bitsandbytes.dequantize_4bit(q, absmax, 64, 'nf4', x.shape, x.dtype)\n"
                "err = ((y - x).abs().view(-1, 64) / absmax.view(-1, 1)).max()\n"
                "assert err <= 0.1520, err  # half the widest NF4 code gap, -1 .. -0.6962, in each block's scale\n"
            )
            out = venv.py("-W", "always", "-c", probe)
            fix = f'pip install "bitsandbytes-cpu=={other}"'
            assert "does not match" in out.stderr and fix in out.stderr, out.stderr
            warning = next(line for line in out.stderr.splitlines() if "does not match" in line)
            return f"meta {other} + cpu {v}: warned {warning.strip()!r}; reference kernels served quantize_4bit"

        case("1. bitsandbytes", plain)
        case("2a. bitsandbytes[cuda12x]", lambda: cuda_extra("cuda12x"))
        case("2b. bitsandbytes[cuda13x]", lambda: cuda_extra("cuda13x"))
        case("2c. bitsandbytes[hpu]", lambda: device_extra("hpu"))
        case("2d. bitsandbytes[xpu]", lambda: device_extra("xpu"))
        case("3. version mismatch", mismatch)
        case("4. bitsandbytes[mps]", lambda: device_extra("mps"))
        venv.reset(baseline)
    return summary


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("step", choices=["build", "check", "install", "all", "sources"])
    parser.add_argument("--dist", type=pathlib.Path, default=ROOT / "dist")
    parser.add_argument("--torch", default=os.environ.get("BNB_TORCH_REQUIREMENT", "torch==2.13.0"))
    args = parser.parse_args()
    if args.step == "sources":
        sources(args.dist)
    if args.step in ("build", "all"):
        build(args.dist)
    if args.step in ("check", "all"):
        check(args.dist)
    if args.step in ("install", "all"):
        summary = install(args.dist, args.torch)
        print("\nwheelhouse install checks:\n" + "\n".join(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
