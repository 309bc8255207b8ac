"""The GPU check: build, install privately, report, test, bench and memcheck the CUDA wheel.

Run it through ``tools/gpu_check.sh`` from the repository root, with the machine's own python3
(torch with CUDA, nvcc, CMake, ninja, scikit-build-core, pybind11, pytest; no nox, no network):

1. preflight: torch, the GPU and its compute capability, nvcc, and whether their CUDA majors agree;
2. build: the meta, cpu and cuda wheels (the cuda one for this GPU's architecture only, compiled in
   parallel) with ``pip wheel --no-build-isolation --no-index --no-deps``, plus platforms/xpu when
   the checkout has it;
3. install: all of them ``--no-deps`` into a private ``--target`` folder put first on PYTHONPATH,
   so nothing installed on the machine is replaced (``pip list`` is compared before and after);
4. verify: importlib.metadata finds the wheels' entry points in that folder and the loader loads
   the cuda platform from there;
5. report: ``python -m bitsandbytes`` (the self-test on every device);
6. tests: the conformance suite and the CUDA tests on ``cuda`` (junit XML);
7. xpu: the XPU Triton kernels on CUDA tensors (``BNB_TEST_HOST_KERNELS=xpu@cuda``) when built;
8. bench: ``bench/cuda_ops.py`` (JSON and markdown, with the CUDA issue's targets);
9. memcheck: a small subset of the CUDA tests under ``compute-sanitizer --tool memcheck``, if the
   budget leaves time.

Every step is timed against one budget (default 8 minutes); a step that does not fit in what is
left is skipped with a note. ``--rehearse`` runs steps 1-6 without a GPU against the cpu wheel
alone (a slice of the suite), so the setup path is tested in CI. Everything is written under
``$OUT`` when set, else ``gpu-check-results/``, in at most seven files; the exit status is 1 when
any step failed, 0 otherwise.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable

ROOT = pathlib.Path(__file__).resolve().parents[1]

CONFORMANCE = [
    "tests/test_ops_conformance.py",
    "tests/test_ops_conformance_matmul.py",
    "tests/test_optim_ops.py",
    "tests/test_ops_bad_input.py",
    "tests/test_empty_matmul.py",
]
CUDA_TESTS = [*CONFORMANCE, "tests/test_cuda_platform.py", "tests/test_gpu_glue_checks.py"]
# CI runs the CPU cases of these files; on the GPU machine the time goes to cuda (--with-cpu-cases).
GPU_SELECT = "not cpu-"
REHEARSE_TESTS = ["tests/test_ops_conformance.py", "tests/test_gpu_glue_checks.py", "tests/test_cuda_platform.py"]
REHEARSE_SELECT = "not cpu-cpu"  # the reference on cpu: enough to prove the private install serves the suite
MEMCHECK_TESTS = ["tests/test_cuda_platform.py", "tests/test_ops_conformance.py"]
MEMCHECK_SELECT = (
    "(gemm_4bit_matches_reference and bfloat16 and 64 and nf4) or int8_linear_matmul_is_exact or "
    "int8_vectorwise_quant_matches or optimizer_8bit_matches or "
    "(cuda-cuda and (test_quantize_4bit or test_dequantize_4bit or test_quantize_blockwise))"
)

# Targets on an H100/H200 (the CUDA issue): (what, row name prefix, field, minimum).
TARGETS = [
    ("dequantize_4bit >= 75% of copy bandwidth", "dequantize_4bit nf4", "copy_fraction", 0.75),
    ("gemv_4bit batch 1 >= 2.5x dense bf16", "gemv_4bit nf4 bf16 1x", "ratio", 2.5),
    ("Adam8bit <= fused AdamW (ratio >= 1)", "optimizer 8-bit adam", "ratio", 1.0),
    ("int8 GEMM >= 1.6x bf16 at 4096^3", "int8_linear_matmul 4096^3", "ratio", 1.6),
]


OUTPUTS = ("gpu-check.log", "summary.md", "summary.json", "junit-tests.xml", "junit-xpu.xml", "bench.json", "bench.md")


@dataclasses.dataclass
class Step:
    name: str
    status: str = "not run"  # passed, failed, skipped, incomplete
    seconds: float = 0.0
    note: str = ""


class Check:
    """One run: the budget, the output folder, the combined log and the steps' outcomes."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.start = time.monotonic()
        self.out = pathlib.Path(args.out).resolve()
        self.work = pathlib.Path(args.work).resolve()
        self.target = self.work / "site"
        self.wheels = self.work / "wheels"
        self.out.mkdir(parents=True, exist_ok=True)
        for name in OUTPUTS:  # nothing of an earlier run may pass for this one's
            (self.out / name).unlink(missing_ok=True)
        self.log_path = self.out / "gpu-check.log"
        self.log = self.log_path.open("w", encoding="utf-8")
        self.steps: list[Step] = []
        self.facts: dict[str, object] = {"mode": "rehearse" if args.rehearse else "gpu"}
        self.python = sys.executable

    # ---- time ----------------------------------------------------------------------------
    def left(self) -> float:
        return self.args.budget - (time.monotonic() - self.start)

    def say(self, text: str) -> None:
        print(text, flush=True)
        self.log.write(text + "\n")
        self.log.flush()

    # ---- processes -----------------------------------------------------------------------
    def env(self, **extra: str) -> dict[str, str]:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(self.target), *filter(None, [env.get("PYTHONPATH")])])
        env["PYTHONUNBUFFERED"] = "1"
        env["PIP_NO_INDEX"] = "1"
        env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
        env.update(extra)
        return env

    def sh(
        self, cmd: list[str], timeout: float, env: dict[str, str] | None = None, echo_tail: int = 0
    ) -> tuple[int, str]:
        """Run ``cmd`` in its own process group, its output into the log; (exit status, output).

        Exit status 124 when it ran past ``timeout`` (the whole group is then killed)."""
        self.log.write(f"$ {' '.join(cmd)}\n")
        self.log.flush()
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env or self.env(), stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, start_new_session=True)  # fmt: skip
        try:
            output, _ = proc.communicate(timeout=max(timeout, 1))
            rc = proc.returncode
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            output, _ = proc.communicate()
            output += f"\n[gpu_check: killed after {timeout:.0f} s, the budget for this step]\n"
            rc = 124
        self.log.write(output + f"[exit status {rc}]\n")
        self.log.flush()
        if echo_tail:
            print("\n".join(output.rstrip().splitlines()[-echo_tail:]), flush=True)
        return rc, output

    # ---- steps ---------------------------------------------------------------------------
    def step(self, name: str, need: float, fn: Callable[[Step, float], None], optional: bool = False,
             reserve: float = 0.0, when: str | None = None) -> Step:  # fmt: skip
        """Run ``fn(step, timeout)`` when ``need`` seconds are left (keeping ``reserve`` for later
        steps); ``when`` is a reason to skip it outright."""
        st = Step(name)
        self.steps.append(st)
        left = self.left()
        if when:
            st.status, st.note = "skipped", when
        elif left < need:
            st.status, st.note = "skipped", f"{left:.0f} s of the budget left, the step needs about {need:.0f} s"
        if st.status == "skipped":
            self.say(f"==> {name}: skipped ({st.note})")
            return st
        timeout = max(need, left - reserve)
        self.say(f"==> {name} (at most {timeout:.0f} s)")
        t0 = time.monotonic()
        try:
            fn(st, timeout)
            if st.status == "not run":
                st.status = "passed"
        except Exception as exc:  # a step's own error is that step's failure, never the whole run's crash
            st.status, st.note = "failed", f"{type(exc).__name__}: {exc}"
        st.seconds = time.monotonic() - t0
        if optional and st.status == "failed" and st.note.startswith("timeout"):
            st.status = "incomplete"
        self.say(f"    {name}: {st.status} in {st.seconds:.1f} s{' (' + st.note + ')' if st.note else ''}")
        return st

    def failed(self) -> bool:
        return any(s.status == "failed" for s in self.steps)


# ---- the steps ---------------------------------------------------------------------------------

PROBE = r"""
import json, shutil, torch
info = {"torch": torch.__version__, "torch_cuda": torch.version.cuda, "hip": getattr(torch.version, "hip", None),
        "gpu": torch.cuda.is_available() and torch.version.cuda is not None}
if info["gpu"]:
    p = torch.cuda.get_device_properties(0)
    major, minor = torch.cuda.get_device_capability(0)
    info.update(gpu_name=p.name, arch=f"{major}{minor}", sms=p.multi_processor_count, gpu_mem_gib=round(p.total_memory / 2**30, 1),
                devices=torch.cuda.device_count())
for tool in ("nvcc", "cmake", "ninja", "compute-sanitizer"):
    info[tool] = shutil.which(tool)
try:
    import pytest, scikit_build_core, pybind11
    info.update(pytest=pytest.__version__, scikit_build_core=scikit_build_core.__version__, pybind11=pybind11.__version__)
except ImportError as exc:
    info["missing"] = str(exc)
print(json.dumps(info))
"""


def nvcc_major(check: Check) -> int | None:
    nvcc = check.facts.get("nvcc")
    if not nvcc:
        return None
    out = subprocess.run([str(nvcc), "--version"], capture_output=True, text=True).stdout
    check.log.write(out)
    for word in out.replace(",", " ").split():
        if word.startswith("V") and word[1:2].isdigit():  # "V13.0.48"
            check.facts["nvcc_version"] = word[1:]
            return int(word[1:].split(".")[0])
    return None


def cuda_tools_on_path() -> None:
    """Put the toolkit's bin folder on PATH when nvcc is not there yet (CUDA_HOME, /usr/local/cuda)."""
    if shutil.which("nvcc"):
        return
    for home in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if home and (pathlib.Path(home) / "bin" / "nvcc").exists():
            os.environ["PATH"] = os.pathsep.join([str(pathlib.Path(home) / "bin"), os.environ.get("PATH", "")])
            return


def preflight(check: Check, st: Step, timeout: float) -> None:
    if not check.args.rehearse:
        cuda_tools_on_path()
    rc, out = check.sh([check.python, "-c", PROBE], timeout, env=check.env(PYTHONPATH=""))
    if rc != 0:
        raise RuntimeError(f"torch could not be imported (exit {rc}); see gpu-check.log")
    check.facts.update(json.loads(out.strip().splitlines()[-1]))
    f = check.facts
    if f.get("missing"):
        raise RuntimeError(f"a build or test tool is missing: {f['missing']}")
    st.note = f"torch {f['torch']}"
    if check.args.rehearse:
        return
    if not f["gpu"]:
        raise RuntimeError(f"torch {f['torch']} sees no CUDA GPU (a CPU or ROCm build of torch?)")
    major = nvcc_major(check)
    torch_major = int(str(f["torch_cuda"]).split(".")[0])
    if major is None:
        raise RuntimeError("no nvcc on PATH: the CUDA wheel cannot be built")
    if major != torch_major:
        raise RuntimeError(f"nvcc is CUDA {major} but torch is built with CUDA {f['torch_cuda']}: the loader would "
                           f"skip a cuda{major}x wheel under this torch")  # fmt: skip
    f["platform"] = f"cuda{major}x"
    st.note += f", {f['gpu_name']} (sm_{f['arch']}, {f['sms']} SMs), CUDA {f['torch_cuda']}, nvcc {f['nvcc_version']}"


def cuda_source(check: Check, major: int) -> pathlib.Path:
    """platforms/cuda, or a copy under the work folder renamed for ``major`` (tools/set_cuda_major.py)."""
    src = ROOT / "platforms" / "cuda"
    text = (src / "pyproject.toml").read_text()
    if f'name = "bitsandbytes-cuda{major}x"' in text:
        return src
    copy = check.work / "src-cuda"
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(src, copy, ignore=shutil.ignore_patterns("build", "_skbuild", "__pycache__"))
    shutil.copytree(ROOT / "shared", copy / "shared", ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([check.python, str(copy / "tools" / "set_cuda_major.py"), str(major)], check=True,
                   capture_output=True)  # fmt: skip
    check.say(f"    platforms/cuda names another CUDA major: building a copy renamed for CUDA {major} ({copy})")
    return copy


def build(check: Check, st: Step, timeout: float) -> None:
    """Every wheel at once, each with its own persistent CMake build folder (a rerun is incremental)."""
    shutil.rmtree(check.wheels, ignore_errors=True)
    check.wheels.mkdir(parents=True)
    jobs = str(check.args.jobs)
    sources = {"meta": ROOT / "meta", "cpu": ROOT / "platforms" / "cpu"}
    if not check.args.rehearse:
        sources["cuda"] = cuda_source(check, int(str(check.facts["platform"])[4:-1]))
    if (ROOT / "platforms" / "xpu" / "pyproject.toml").exists():
        sources["xpu"] = ROOT / "platforms" / "xpu"
    procs = {}
    # One CMake build folder per wheel and interpreter: another python must not reconfigure this one's.
    tag = hashlib.sha1(check.python.encode()).hexdigest()[:8]
    for name, src in sources.items():
        build_dir = check.work / "build" / f"{name}-{tag}"
        cmd = [check.python, "-m", "pip", "wheel", "--no-build-isolation", "--no-index", "--no-deps",
               "-w", str(check.wheels), f"--config-settings=build-dir={build_dir}", str(src)]  # fmt: skip
        env = check.env(PYTHONPATH="", CMAKE_BUILD_PARALLEL_LEVEL=jobs, BNB_CUDA_ARCHS=str(check.facts.get("arch", "")))
        log = (check.work / f"build-{name}.log").open("w")
        procs[name] = (subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                        start_new_session=True), log, time.monotonic())  # fmt: skip
    deadline = time.monotonic() + timeout
    bad = []
    for name, (proc, log, t0) in procs.items():
        try:
            rc = proc.wait(timeout=max(deadline - time.monotonic(), 1))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            rc = proc.wait()
        log.close()
        text = (check.work / f"build-{name}.log").read_text(errors="replace")
        check.log.write(f"---- build {name}: exit {rc}, {time.monotonic() - t0:.0f} s ----\n{text}\n")
        if rc != 0:
            bad.append(name)
            print("\n".join(text.rstrip().splitlines()[-25:]), flush=True)
    if bad:
        st.status, st.note = "failed", f"wheel build failed: {', '.join(bad)} (see gpu-check.log)"
        return
    built = sorted(p.name for p in check.wheels.glob("*.whl"))
    check.facts["wheels"] = {n: (check.wheels / n).stat().st_size for n in built}
    st.note = ", ".join(f"{n} ({(check.wheels / n).stat().st_size / 1e6:.1f} MB)" for n in built)


def pip_list(check: Check) -> str:
    rc, out = check.sh([check.python, "-m", "pip", "list", "--format=freeze"], 60, env=check.env(PYTHONPATH=""))
    return out if rc == 0 else ""


def install(check: Check, st: Step, timeout: float) -> None:
    shutil.rmtree(check.target, ignore_errors=True)
    wheels = sorted(str(p) for p in check.wheels.glob("*.whl"))
    rc, _ = check.sh([check.python, "-m", "pip", "install", "--no-deps", "--no-index", "--no-compile", "--target",
                      str(check.target), *wheels], timeout)  # fmt: skip
    after = pip_list(check)
    if rc != 0:
        st.status, st.note = "failed", f"pip install --target exited {rc}"
    elif after != check.facts.get("pip_list_before"):
        st.status, st.note = "failed", "the machine's own packages changed (pip list differs); see gpu-check.log"
    else:
        st.note = f"{len(wheels)} wheels into {check.target}; the machine's pip list is unchanged"


VERIFY = r"""
import importlib.metadata as md, json, pathlib, sys
target = pathlib.Path(sys.argv[1]).resolve()
want = sys.argv[2].split(",")
problems = []
eps = {ep.name: pathlib.Path(ep.dist.locate_file("")).resolve() for ep in md.entry_points(group="bitsandbytes.platforms")}
for name in want:
    if eps.get(name) != target:
        problems.append(f"entry point {name!r} found in {eps.get(name)}, not in the target folder")
import bitsandbytes
for mod in ["bitsandbytes"] + [f"bitsandbytes_{p[:4] if p.startswith('cuda') else p}" for p in want]:
    m = __import__(mod)
    if target not in pathlib.Path(m.__file__).resolve().parents:
        problems.append(f"{mod} imported from {m.__file__}, not from the target folder")
loaded = {r["platform"]: r for r in bitsandbytes.platforms()}
for name in want:
    if name in ("cpu",) or name.startswith("cuda"):
        rec = loaded.get(name, {})
        if rec.get("status") != "loaded":
            problems.append(f"platform {name} not loaded: {rec.get('status')} {rec.get('reason', '')}")
print(json.dumps({"entry_points": {k: str(v) for k, v in eps.items()}, "problems": problems,
                  "platforms": {k: v["status"] for k, v in loaded.items()}}))
sys.exit(1 if problems else 0)
"""


def verify(check: Check, st: Step, timeout: float) -> None:
    want = ["cpu"] + ([] if check.args.rehearse else [str(check.facts["platform"])])
    if (check.target / "bitsandbytes_xpu").exists():
        want.append("xpu")
    rc, out = check.sh([check.python, "-c", VERIFY, str(check.target), ",".join(want)], timeout)
    lines = out.strip().splitlines()
    try:
        found = json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError):
        found = {"problems": [f"the check printed no result (exit {rc}); see gpu-check.log"]}
    check.facts["verify"] = found
    if rc != 0 or found["problems"]:
        st.status, st.note = "failed", "; ".join(found["problems"]) or f"exit {rc}"
    else:
        st.note = "entry points and modules come from the target folder; loaded: " + ", ".join(
            k for k, v in found["platforms"].items() if v == "loaded"
        )


def report(check: Check, st: Step, timeout: float) -> None:
    rc, out = check.sh([check.python, "-m", "bitsandbytes"], timeout)
    print(out.rstrip(), flush=True)
    if rc != 0:
        st.status, st.note = "failed", f"python -m bitsandbytes exited {rc}"


def junit_counts(path: pathlib.Path) -> dict[str, int]:
    """tests / failures / errors / skipped summed over the suites of a junit XML file."""
    counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
    for suite in suites:
        for key in counts:
            counts[key] += int(suite.get(key, 0))
    counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    return counts


def run_pytest(check: Check, st: Step, timeout: float, files: list[str], select: str | None, junit: str,
               env: dict[str, str] | None = None, min_tests: int = 1) -> None:  # fmt: skip
    xml = check.out / junit
    cmd = [check.python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "not slow and not integration",
           f"--junitxml={xml}", *files]  # fmt: skip
    if select:
        cmd += ["-k", select]
    rc, _ = check.sh(cmd, timeout, env=env, echo_tail=6)
    counts = junit_counts(xml) if xml.exists() else {}
    check.facts[junit] = counts
    summary = ", ".join(f"{v} {k}" for k, v in counts.items() if k != "tests" and v)
    if rc == 124:
        st.status, st.note = "failed", f"timeout: killed after {timeout:.0f} s"
    elif rc != 0 or counts.get("passed", 0) < min_tests:
        st.status, st.note = "failed", f"pytest exit {rc}: {summary or 'no junit'}"
    else:
        st.note = summary


def tests(check: Check, st: Step, timeout: float) -> None:
    if check.args.rehearse:
        files, select = REHEARSE_TESTS, REHEARSE_SELECT
    else:
        files, select = CUDA_TESTS, None if check.args.with_cpu_cases else GPU_SELECT
    run_pytest(check, st, timeout, files, select, "junit-tests.xml")


def xpu_on_cuda(check: Check, st: Step, timeout: float) -> None:
    env = check.env(BNB_TEST_HOST_KERNELS="xpu@cuda")
    env.pop("TRITON_INTERPRET", None)
    run_pytest(check, st, timeout, CONFORMANCE, "cuda-xpu[host]", "junit-xpu.xml", env=env)


def bench(check: Check, st: Step, timeout: float) -> None:
    js, md = check.out / "bench.json", check.out / "bench.md"
    cmd = [check.python, "bench/cuda_ops.py", "--json", str(js), "--markdown", str(md)]
    if check.args.bench_quick:
        cmd.append("--quick")
    rc, out = check.sh(cmd, timeout)
    print(out.rstrip(), flush=True)
    if rc != 0:
        st.status, st.note = "failed", f"bench exited {rc}" + (" (timeout)" if rc == 124 else "")
        return
    rows = json.loads(js.read_text())["rows"]
    verdicts = evaluate_targets(rows)
    check.facts["targets"] = verdicts
    with md.open("a") as fh:
        fh.write("\n| target | measured | met |\n| --- | --- | --- |\n")
        for v in verdicts:
            fh.write(f"| {v['target']} | {v['measured']} | {v['met']} |\n")
    st.note = "targets met: " + ", ".join(f"{v['target'].split(' ')[0]} {v['met']}" for v in verdicts)


def evaluate_targets(rows: list[dict]) -> list[dict]:
    """Each target of the CUDA issue against the bench rows it names (the worst row counts)."""
    out = []
    for what, prefix, field, minimum in TARGETS:
        values = [r[field] for r in rows if r["name"].startswith(prefix) and r.get(field) is not None]
        if not values:
            out.append({"target": what, "measured": "no row", "met": "unknown"})
            continue
        worst = min(values)
        shown = f"{worst:.1%}" if field == "copy_fraction" else f"{worst:.2f}x"
        out.append({"target": what, "measured": shown, "met": "yes" if worst >= minimum else "NO"})
    return out


def memcheck(check: Check, st: Step, timeout: float) -> None:
    sanitizer = check.facts.get("compute-sanitizer")
    # No caching allocator: every tensor is its own cudaMalloc, so an overrun is seen, not absorbed.
    env = check.env(PYTORCH_NO_CUDA_MEMORY_CACHING="1")
    cmd = [str(sanitizer), "--tool", "memcheck", "--error-exitcode", "1", "--print-limit", "20", check.python,
           "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *MEMCHECK_TESTS, "-k", MEMCHECK_SELECT]  # fmt: skip
    rc, out = check.sh(cmd, timeout, env=env, echo_tail=8)
    errors = [line for line in out.splitlines() if "ERROR SUMMARY" in line]
    if rc == 124:
        st.status, st.note = (
            "incomplete",
            f"killed at the end of the budget; {errors[-1] if errors else 'no error seen'}",
        )
    elif rc != 0:
        st.status, st.note = "failed", errors[-1] if errors else f"exit {rc}"
    else:
        st.note = errors[-1].strip("= ") if errors else "no errors"


# ---- the run -------------------------------------------------------------------------------------


def summarize(check: Check) -> None:
    total = time.monotonic() - check.start
    lines = [
        f"# GPU check ({check.facts['mode']}): {'FAILED' if check.failed() else 'passed'} in {total:.0f} s "
        f"(budget {check.args.budget:.0f} s)",
        "",
        "| step | status | seconds | note |",
        "| --- | --- | ---: | --- |",
    ]
    lines += [f"| {s.name} | {s.status} | {s.seconds:.1f} | {s.note.replace('|', '/')} |" for s in check.steps]
    text = "\n".join(lines) + "\n"
    (check.out / "summary.md").write_text(text)
    facts = {**check.facts, "seconds": round(total, 1), "failed": check.failed(),
             "steps": [dataclasses.asdict(s) for s in check.steps]}  # fmt: skip
    facts.pop("pip_list_before", None)
    (check.out / "summary.json").write_text(json.dumps(facts, indent=2, default=str) + "\n")
    check.say("\n" + text + f"results: {check.out}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="tools/gpu_check.sh", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])  # fmt: skip
    p.add_argument("--rehearse", action="store_true", default=os.environ.get("BNB_GPU_CHECK_REHEARSE") == "1",
                   help="no GPU: build meta + cpu, install privately, report, a slice of the suite")  # fmt: skip
    p.add_argument("--budget", type=float, default=float(os.environ.get("BNB_GPU_CHECK_BUDGET", 480)),
                   help="seconds for the whole run (default 480)")  # fmt: skip
    p.add_argument("--out", default=os.environ.get("OUT") or str(ROOT / "gpu-check-results"),
                   help="results folder (default $OUT, else gpu-check-results/)")  # fmt: skip
    p.add_argument("--work", default=str(ROOT / "build" / "gpu-check"),
                   help="wheels, CMake build folders and the private install (default build/gpu-check)")  # fmt: skip
    p.add_argument("--fresh", action="store_true", help="delete the CMake build folders first (no incremental build)")
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 2, help="parallel compile jobs (default: every core)")
    p.add_argument("--with-cpu-cases", action="store_true", help="GPU mode: also run the cpu cases of the suite")
    p.add_argument("--bench-quick", action="store_true", help="bench/cuda_ops.py --quick")
    p.add_argument("--no-memcheck", action="store_true", help="leave out compute-sanitizer")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    check = Check(args)
    if args.fresh:
        shutil.rmtree(check.work / "build", ignore_errors=True)
    check.work.mkdir(parents=True, exist_ok=True)
    gpu = not args.rehearse
    check.say(f"gpu_check: {'rehearsal (cpu wheel only)' if args.rehearse else 'GPU check'}, budget {args.budget:.0f} s, "
              f"results in {check.out}")  # fmt: skip
    check.facts["pip_list_before"] = pip_list(check)

    def needs(*prior: str) -> str | None:
        bad = [s.name for s in check.steps if s.name in prior and s.status != "passed"]
        return f"{', '.join(bad)} did not pass" if bad else None

    no_gpu = "needs a GPU" if not gpu else None
    has_xpu = (ROOT / "platforms" / "xpu" / "pyproject.toml").exists()
    check.step("preflight", 10, lambda st, t: preflight(check, st, t))
    check.step("build", 60, lambda st, t: build(check, st, t), reserve=150 if gpu else 60, when=needs("preflight"))
    check.step("install", 10, lambda st, t: install(check, st, t), when=needs("build"))
    check.step("verify", 10, lambda st, t: verify(check, st, t), when=needs("install"))
    check.step("report", 15, lambda st, t: report(check, st, t), when=needs("verify"))
    check.step("tests", 60, lambda st, t: tests(check, st, t), reserve=90 if gpu else 0, when=needs("verify"))
    check.step("xpu-on-cuda", 40, lambda st, t: xpu_on_cuda(check, st, t), reserve=60,
               when=no_gpu or (None if has_xpu else "platforms/xpu is not in this checkout") or needs("verify"))  # fmt: skip
    check.step("bench", 45, lambda st, t: bench(check, st, t), when=no_gpu or needs("verify"))
    memcheck_off = "--no-memcheck" if args.no_memcheck else None
    if gpu and not check.facts.get("compute-sanitizer"):
        memcheck_off = "compute-sanitizer is not on PATH"
    check.step("memcheck", 45, lambda st, t: memcheck(check, st, t), optional=True,
               when=no_gpu or memcheck_off or needs("verify"))  # fmt: skip
    summarize(check)
    return 1 if check.failed() else 0


if __name__ == "__main__":
    sys.exit(main())
