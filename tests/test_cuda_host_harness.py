"""The CUDA host harness itself (platforms/cuda/host): that it refuses what a GPU would not run
correctly, that a kernel fault reaches the caller as the C ABI reports it, and that what it runs is
this checkout's kernel sources and glue.

The kernels' results are compared with the reference by the conformance suite and
tests/test_host_edges.py under ``BNB_TEST_HOST_KERNELS=cuda,rocm`` (``nox -s tests-cuda-host``).
"""

from __future__ import annotations

import ctypes
import gc
import json
import subprocess
import time

import pytest
import torch

from conftest import (
    adam_8bit_args,
    cuda_harness,
    cuda_harness_warps,
    host_sanitizer,
    make_old,
    python_in_a_process,
    step_8bit,
)

WARPS = cuda_harness_warps()


class Probe:
    """bnb_cuda_host_probe of one harness build, through ctypes."""

    def __init__(self, warp: int) -> None:
        self.lib = ctypes.CDLL(str(cuda_harness().build(warp)))
        self.lib.bnb_cuda_host_probe.restype = ctypes.c_int32
        self.lib.bnb_cuda_host_probe.argtypes = [ctypes.c_int32, ctypes.c_void_p, ctypes.c_int32, ctypes.c_int32,
                                                 ctypes.c_void_p]  # fmt: skip
        self.lib.bnb_last_error.restype = ctypes.c_char_p

    def __call__(self, which: int, threads: int, x: torch.Tensor | None = None) -> tuple[int, str, torch.Tensor]:
        out = torch.zeros(max(threads, 1))
        n = 0 if x is None else x.numel()
        status = self.lib.bnb_cuda_host_probe(which, 0 if x is None else x.data_ptr(), n, threads, out.data_ptr())
        return status, self.lib.bnb_last_error().decode() if status else "", out


@pytest.fixture(scope="module", params=WARPS, ids=[f"warp{w}" for w in WARPS])
def probe(request):
    return Probe(request.param), request.param


@pytest.mark.parametrize("warps", [1, 3, 4, 16])
def test_cuda_host_block_reduction_is_exact(probe, warps):
    run, warp = probe
    x = torch.randn(3000)
    x[1234] = -7.5  # the largest magnitude is negative: a reduction of signed values would lose it
    status, msg, out = run(0, warps * warp, x)
    assert status == 0, msg
    assert out[0].item() == 7.5


def test_cuda_host_refuses_a_barrier_only_some_threads_reach(probe):
    run, _ = probe
    status, msg, _ = run(1, 64)
    assert status != 0
    assert "bnb_cuda_host_probe" in msg and "returned while others wait at a barrier" in msg
    assert "cudaErrorLaunchFailure" in msg and "block (0, 0, 0)" in msg


def test_cuda_host_refuses_a_shuffle_in_a_divergent_warp(probe):
    run, _ = probe
    status, msg, _ = run(2, 64)
    assert status != 0 and "reach different points" in msg


def test_cuda_host_refuses_an_invalid_launch_configuration(probe):
    run, _ = probe
    status, msg, _ = run(3, 2048, torch.ones(8))
    assert status != 0 and "invalid configuration argument: block (2048, 1, 1)" in msg
    assert "cudaErrorInvalidConfiguration" in msg
    # The error was taken by check_launch: the next launch is clean.
    status, msg, out = run(0, 64, torch.ones(8))
    assert status == 0, msg
    assert out[0].item() == 1.0


def test_cuda_host_shared_memory_starts_each_block_undefined(probe):
    """Shared memory is not carried from one block or launch to the next: a read before any write
    in the block sees the harness's fill (NaN), not another block's or launch's value."""
    run, warp = probe
    status, msg, out = run(4, warp, torch.ones(1))  # n = 1: block 0 writes 1.0 and reads it back
    assert status == 0, msg
    assert out[0].item() == 1.0 and out[1].isnan()  # block 1 wrote nothing
    status, msg, out = run(4, warp)  # n = 0: no block writes
    assert status == 0, msg
    assert out[:2].isnan().all()


@pytest.mark.parametrize("reader", ["last", "first"])
def test_cuda_host_missing_barrier_shows_in_either_direction(probe, reader):
    """Thread 0 writes for the last thread to read, or the last thread for thread 0, with no
    barrier between: in one of the two block orders the reader runs first and reads the fill."""
    run, warp = probe
    status, msg, out = run(5 if reader == "last" else 6, warp)
    assert status == 0, msg
    assert out[:2].isnan().any() and (out[:2] == 2.0).any()


def test_cuda_host_warps_run_ahead_of_each_other_between_barriers(probe):
    """Between two barriers one warp runs to the next barrier, through its shuffles, before the
    next warp starts: the last warp first in even blocks, the first in odd ones. A warp's read of
    shared memory that another warp overwrites after a shuffle, with no barrier between, sees the
    overwrite in one block and not in the other (phases in lock-step would hide it in both)."""
    run, warp = probe
    status, msg, out = run(9, 4 * warp)
    assert status == 0, msg
    block0, block1 = out.view(2, 2, warp)
    assert (block0[0] == 2.0).all() and (block0[1] == 1.0).all()  # warp 1 first: it overwrote
    assert (block1[0] == 1.0).all() and (block1[1] == 2.0).all()  # warp 0 first


def test_cuda_host_block_order_differs_between_the_builds(probe):
    """The 32-lane build runs a launch's blocks in ascending order, the 64-lane one descending: an
    order-dependent result (atomicAdds in float, a race between blocks) differs between them."""
    run, warp = probe
    counter = torch.zeros(1)
    status, msg, out = run(8, 5, counter)
    assert status == 0, msg
    assert out.tolist() == ([0.0, 1.0, 2.0, 3.0, 4.0] if warp == 32 else [4.0, 3.0, 2.0, 1.0, 0.0])
    assert counter.item() == 5.0


def test_cuda_host_local_arrays_survive_suspension(probe):
    """A thread's local array keeps its values across the barriers and shuffles that suspend and
    resume its fiber (element 3 written by thread 1 after two switches)."""
    run, _ = probe
    status, msg, out = run(7, 4, torch.zeros(3))
    assert status == 0, msg
    assert out.tolist() == [3.0, 1.0, 3.0, 3.0]


def _probe_in_a_process(warp: int, which: int, threads: int, x: str) -> subprocess.CompletedProcess:
    """Probe(warp)(which, threads, <x>) in a fresh Python, where a sanitizer may stop the process;
    ``x`` is a Python expression for the input tensor (or None)."""
    return python_in_a_process(
        f"from test_cuda_host_harness import Probe; print(Probe({warp})({which}, {threads}, {x}))"
    )


@pytest.mark.skipif(
    host_sanitizer("BNB_CUDA_HOST_SANITIZE") != "address", reason="the harness module is built without ASan"
)
@pytest.mark.parametrize("warp", WARPS)
@pytest.mark.parametrize(
    "which, threads, x, report, kernel",
    [
        (7, 4, 4, "stack-buffer-overflow", "local_array_kernel"),
        (10, 64, 0, "global-buffer-overflow", "shared_overflow_kernel"),
    ],
)
def test_cuda_host_asan_sees_overflows_of_local_and_shared_arrays(warp, which, threads, x, report, kernel):
    """Under AddressSanitizer a write one past a thread's local array, after its fiber was
    suspended and resumed, stops the run with ASan's stack report (ASan's swapcontext would clear
    the red zones of a resumed fiber's frames if the contexts named their stacks); a write past a
    __shared__ array (a function-local static, which ASan guards as a global) with its global
    report."""
    done = _probe_in_a_process(warp, which, threads, f"torch.zeros({x})" if x else "None")
    assert done.returncode != 0, done.stdout
    assert report in done.stderr and kernel in done.stderr, done.stderr[-3000:]


@pytest.mark.skipif(
    host_sanitizer("BNB_CUDA_HOST_SANITIZE") != "thread", reason="the harness module is built without TSan"
)
@pytest.mark.parametrize("warp", WARPS)
def test_cuda_host_tsan_sees_a_lost_update_between_blocks(warp):
    """Under ThreadSanitizer the blocks of a launch are unordered, as on a GPU: five blocks adding
    their indices to one float with a plain `+=` (a missing atomicAdd) is a reported data race,
    though a run of one block after another gets the sum right; through atomicAdd it is none."""
    done = _probe_in_a_process(warp, 11, 5, "torch.ones(1)")  # n = 1: atomicAdd
    assert done.returncode == 0 and "data race" not in done.stderr, done.stderr[-3000:]
    assert "(0, '', tensor([10.," in done.stdout
    done = _probe_in_a_process(warp, 11, 5, "None")
    assert done.returncode != 0, done.stdout
    assert "ThreadSanitizer: data race" in done.stderr and "block_sum_kernel" in done.stderr, done.stderr[-3000:]


def test_cuda_host_intrinsics_give_the_gpus_nan(probe):
    """NVIDIA GPUs write one f32 NaN, 0x7fffffff, for any NaN result, and 0x7fff for a NaN
    converted to f16: the 32-lane build's intrinsics do too, so that a kernel which must write the
    CPU's NaN bits (dequantization's mul_cpu_nan, the f16 store) is tested for doing it itself. The
    64-lane build keeps the host's NaN: the operand's payload, quieted."""
    run, warp = probe
    x = torch.tensor([0x7FC12345, 0x7F800000], dtype=torch.int32).view(torch.float32)
    status, msg, out = run(12, 3, x)  # one thread; three outputs
    assert status == 0, msg
    bits = out[:2].view(torch.int32).tolist()
    if warp == 32:
        assert bits == [0x7FFFFFFF, 0x7FFFFFFF] and out[2].item() == 0x7FFF
    else:
        # The payload's top ten bits in f16 (0x7c00 | 0x412345 >> 13); an invalid operation's NaN
        # is the host's own (0xffc00000 on x86-64, 0x7fc00000 on arm64).
        assert bits[0] == 0x7FC12345 and out[1].isnan() and out[2].item() == 0x7E09


def test_cuda_host_shuffle_past_the_block_is_refused(probe):
    """A block that is not a whole number of warps: the last warp's shuffles read lanes that do
    not exist (the shared reduction requires whole warps)."""
    run, warp = probe
    status, msg, _ = run(0, warp + warp // 2, torch.ones(8))
    assert status != 0 and "__shfl_xor_sync reads lane" in msg


@pytest.mark.parametrize("warp", WARPS, ids=[f"warp{w}" for w in WARPS])
def test_cuda_host_module_is_this_checkouts_sources(warp):
    """The module's build info names the harness and its warp; the glue is the wheel's own file."""
    kernels = cuda_harness().glue(warp)
    native = kernels._C
    info = json.loads(native.build_info())
    assert info == {"platform": f"cuda-host-w{warp}", "harness": True, "warp_size": warp}
    assert native.abi_version() >= 1
    glue_file = cuda_harness().CUDA / "python" / "bitsandbytes_cuda" / "kernels.py"
    assert kernels.__file__ == str(glue_file)
    # The rewrites refuse what they cannot follow: a stray bracket, a shared declaration the
    # pattern misses.
    rewrite = cuda_harness().rewrite
    with pytest.raises(RuntimeError, match="1 '<<<' but 0 '>>>'"):
        rewrite("k<<<1, 2(x);", "t")
    for text in ("__shared__ float a = 0;", "extern __shared__ float a[];", "__shared__ int flag;"):
        with pytest.raises(RuntimeError, match="1 __shared__ declarations it cannot follow"):
            rewrite(text, "t")
    out = rewrite("// __shared__ tiles; a comment\n__shared__ float a[2][3];", "t")
    assert out.endswith("__shared__ float a[2][3]; ::bnb_simt::poison(a, sizeof(a));")


def test_host_cache_prune_deletes_only_stale_builds(tmp_path):
    """simt_build.prune (both harnesses' caches) deletes the entries matching its patterns unused
    for longer than its days, files and folders, and nothing else; ``used`` keeps one; a prune
    while another process marks an entry (holds the cache's lock) deletes nothing."""
    simt = cuda_harness()._SIMT
    (tmp_path / "objects").mkdir()
    for name in ("w32-old", "w32-new", "w64-used", "gen-w32"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "_C.so").write_bytes(b"x")
    for name in ("objects/a-old.o", "objects/b-new.o", "notes.txt"):
        (tmp_path / name).write_bytes(b"x")
    for name in ("w32-old", "w64-used", "gen-w32", "objects/a-old.o", "notes.txt"):
        make_old(tmp_path / name, 30)
    assert simt.used(tmp_path, tmp_path / "w64-used")
    assert not simt.used(tmp_path, tmp_path / "no-such-entry")  # gone meanwhile: build it again
    patterns = ("w[0-9]*-*", "objects/*.o")
    with simt.locked(tmp_path, exclusive=False):
        assert simt.prune(tmp_path, patterns, days=14) == []
    gone = simt.prune(tmp_path, patterns, days=14)
    assert sorted(p.relative_to(tmp_path).as_posix() for p in gone) == ["objects/a-old.o", "w32-old"]
    left = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*"))
    assert left == [".lock", "gen-w32", "gen-w32/_C.so", "notes.txt", "objects", "objects/b-new.o", "w32-new",
                    "w32-new/_C.so", "w64-used", "w64-used/_C.so"]  # fmt: skip


@pytest.mark.parametrize("warp", WARPS, ids=[f"warp{w}" for w in WARPS])
def test_cuda_host_build_marks_its_module_used_and_prunes_stale_builds(warp):
    """Every build (here a hit in the session's cache) marks its module used and deletes the
    modules and objects of the cache unused for 14 days, and only those (``CACHED``)."""
    harness = cuda_harness()
    module = harness.build(warp)
    cache = module.parent.parent
    key = "0123456789abcdef0123"
    stale = [cache / "objects" / f"stale-{key}.o", cache / f"w{warp}-{key}"]
    foreign = [cache / "objects" / "stale.o", cache / f"w{warp}-notes"]  # not named as the harness names
    for path in (*stale, *foreign):
        path.mkdir(exist_ok=True) if path.parent == cache else path.write_bytes(b"x")
    for path in (*stale, *foreign, module.parent):
        make_old(path, 30)
    assert harness.build(warp) == module
    assert time.time() - module.parent.stat().st_mtime < 600
    assert module.exists() and not any(path.exists() for path in stale)
    assert all(path.exists() for path in foreign)
    foreign[0].unlink()
    foreign[1].rmdir()


def test_cuda_host_kernel_errors_reach_python_as_the_glue_raises_them():
    """A check of the C entry point (not the glue) surfaces as the bindings' exception."""
    native = cuda_harness().glue(32)._C
    x = torch.randn(64)
    packed, absmax = torch.empty(32, dtype=torch.uint8), torch.empty(1)
    with pytest.raises(ValueError, match=r"bitsandbytes_cuda: quantize_4bit: .*blocksize must be a power of two"):
        native.quantize_4bit(x.data_ptr(), 0, 64, 48, 1, packed.data_ptr(), absmax.data_ptr(), 0)
    with pytest.raises(TypeError, match="A's dtype must be f32, f16 or bf16"):
        native.quantize_4bit(x.data_ptr(), 7, 64, 64, 1, packed.data_ptr(), absmax.data_ptr(), 0)


def test_cuda_host_paged_memory_bookkeeping():
    """The paged-memory glue (paged.py) over the harness's managed memory (host memory here): which
    tensors it holds, prefetch of an allocation and of a view, and the memory freed only after the
    last tensor on it (under the session's AddressSanitizer, a use after free would stop the run)."""
    paged = cuda_harness().glue(32).paged
    before = dict(paged._LIVE)
    t = paged.empty_paged((3, 100), torch.float32)
    assert t.is_paged and t.shape == (3, 100) and paged.holds(t) and paged.holds(t[1:, ::7])
    assert not paged.holds(torch.zeros(3))
    t.copy_(torch.arange(300.0).view(3, 100))
    paged.prefetch(t)
    paged.prefetch(t[2], to_cpu=True)
    with pytest.raises(ValueError, match="t is not a paged tensor"):
        paged.prefetch(torch.zeros(4))
    with pytest.raises(ValueError, match="shape must be non-negative"):
        paged.empty_paged((2, -1))
    live = dict(paged._LIVE)
    empty = paged.empty_paged((0, 5), torch.uint8)
    assert empty.is_paged and empty.numel() == 0 and paged._LIVE == live  # nothing allocated
    view = t[1]
    del t
    gc.collect()
    assert len(paged._LIVE) == len(before) + 1  # the view keeps the allocation
    view.add_(1.0)  # still valid memory
    assert view[:3].tolist() == [101.0, 102.0, 103.0]
    del view
    gc.collect()
    assert paged._LIVE == before and sorted(paged._STARTS) == sorted(before)


def test_cuda_host_optimizer_steps_on_paged_states():
    """An 8-bit Adam step whose states live in paged memory (as a paged optimizer allocates them;
    gradient and parameter on the device) gives the same kernels' step on ordinary tensors, bit for
    bit (the kernels themselves are compared with the reference by tests/test_optim_ops.py)."""
    glue = cuda_harness().glue(32)
    want = adam_8bit_args(700)
    got = {name: t.clone() for name, t in want.items()}
    for name in ("state1", "state2", "absmax1", "absmax2"):
        got[name] = glue.paged.empty_paged(want[name].shape, want[name].dtype)
        got[name].copy_(want[name])
    for _ in range(3):
        step_8bit(glue.KERNELS["optimizer_update_8bit_blockwise"], want)
        step_8bit(glue.KERNELS["optimizer_update_8bit_blockwise"], got)
    for name in want:
        assert torch.equal(got[name], want[name]), name
