"""Thread safety of the CPU paths: Python threads sharing one layer (cold or warm), each stepping
an optimizer of its own, changing a layer or torch's thread count while others infer, torch's own
inter-op threads, and a fork()ed child. Results must be bit-identical to a single thread's.

The kernels run without the GIL, so two threads really are inside them at once; threads start
together on a Barrier and each case runs many rounds. Nothing here times anything.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import traceback

import pytest
import torch

import bitsandbytes as bnb
import bitsandbytes.functional as F
from bitsandbytes import _direct
from bitsandbytes.nn import linear4bit

THREADS = 4

pytestmark = pytest.mark.skipif(
    ("gemm_4bit", "cpu") not in bnb._LOADED.kernels, reason="no platform kernel serves the CPU"
)


def _in_threads(fn, n: int = THREADS) -> list:
    """``fn(i)`` for i in range(n), each in its own thread, all released at once; the results in
    order. The first exception of any thread is raised here with its traceback."""
    barrier = threading.Barrier(n)
    results: list = [None] * n
    errors: list[str] = []

    def work(i: int) -> None:
        try:
            barrier.wait()
            results[i] = fn(i)
        except BaseException:  # noqa: BLE001  (reported below)
            errors.append(traceback.format_exc())

    threads = [threading.Thread(target=work, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not any(t.is_alive() for t in threads), "a thread hung"
    assert not errors, errors[0]
    return results


def _same(a, b) -> bool:
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)


def _linear4bit(seed: int, **kw) -> bnb.nn.Linear4bit:
    torch.manual_seed(seed)
    kw.setdefault("compute_dtype", torch.bfloat16)
    kw.setdefault("quant_type", "nf4")
    return bnb.nn.Linear4bit(kw.pop("k", 256), kw.pop("n", 384), **kw).to("cpu")


def _linear8bit(seed: int, exact_bias: bool = False, **kw) -> bnb.nn.Linear8bitLt:
    torch.manual_seed(seed)
    layer = bnb.nn.Linear8bitLt(256, 384, **kw)
    if exact_bias:  # the same values in f32, f16 and bf16: a conversion back and forth loses nothing
        with torch.no_grad():
            layer.bias.copy_((layer.bias * 64).round() / 64)
    return layer.to("cpu")


# ---------------------------------------------------------------------------------------- layers


def test_cold_linear4bit_shared_by_threads():
    """Threads making the first calls of a layer at once: the first call casts the f32 bias to the
    compute dtype in place (as the established release does); a second thread's cast used to free
    the memory the first thread's kernel was reading (NaN or garbage in its output)."""
    xs = [torch.randn(1, 256, dtype=torch.bfloat16) for _ in range(THREADS)]
    for seed in range(40):
        ref_layer = _linear4bit(seed)
        with torch.no_grad():
            refs = [ref_layer(x) for x in xs]
            layer = _linear4bit(seed)
            outs = _in_threads(lambda i, layer=layer: layer(xs[i]))
        for out, ref in zip(outs, refs):
            assert _same(out, ref), f"seed {seed}"
        assert layer.bias.dtype == torch.bfloat16


@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
@pytest.mark.parametrize("compress_statistics", [False, True])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32], ids=str)
def test_linear4bit_shared_by_threads(quant_type, compress_statistics, dtype):
    """Decoding (kept runner), small batches (fused kernel) and prefill (dequantize + GEMM in each
    thread's scratch buffer) from several threads on one layer, cold and warm."""
    kw = dict(quant_type=quant_type, compress_statistics=compress_statistics, compute_dtype=dtype)
    xs = [torch.randn(rows, 256, dtype=dtype) for rows in (1, 1, 5, 40)]
    ref_layer = _linear4bit(0, **kw)
    with torch.no_grad():
        refs = [ref_layer(x) for x in xs]
        layer = _linear4bit(0, **kw)
        for _ in range(3):
            outs = _in_threads(lambda i: [layer(xs[i]) for _ in range(4)])
            for i, ref in enumerate(refs):
                assert all(_same(o, ref) for o in outs[i]), f"thread {i}"


@pytest.mark.parametrize("threshold", [0.0, 6.0])
@pytest.mark.parametrize("training", [False, True])
def test_linear8bitlt_shared_by_threads(threshold, training):
    xs = [torch.randn(rows, 256, dtype=torch.float16) * 3 for rows in (1, 3, 8, 70)]
    for has_fp16_weights in (False, True) if training else (False,):

        def make(has_fp16_weights=has_fp16_weights):
            return _linear8bit(0, has_fp16_weights=has_fp16_weights, threshold=threshold).train(training)

        ref_layer = make()
        refs = [ref_layer(x).detach() for x in xs]
        layer = make()
        for _ in range(3):
            outs = _in_threads(lambda i, layer=layer: [layer(xs[i]).detach() for _ in range(3)])
            for i, ref in enumerate(refs):
                assert all(_same(o, ref) for o in outs[i]), f"thread {i}, has_fp16_weights={has_fp16_weights}"


def test_linear8bitlt_training_forward_and_backward_from_threads():
    """Training with 16-bit weights requantizes the weight into the layer's shared state on each
    forward, first dropping the old codes: another thread's forward used to read them back as
    None (AttributeError), and a backward read whatever codes the state held by then."""
    xs = [torch.randn(rows, 256, dtype=torch.float16) for rows in (1, 3, 8, 70)]

    def step(layer, x):
        x = x.clone().requires_grad_(True)
        out = layer(x)
        (grad,) = torch.autograd.grad(out.float().square().sum(), x)
        return out.detach(), grad

    for threshold in (0.0, 6.0):
        ref_layer = _linear8bit(0, has_fp16_weights=True, threshold=threshold).train()
        refs = [step(ref_layer, x) for x in xs]
        layer = _linear8bit(0, has_fp16_weights=True, threshold=threshold).train()
        for _ in range(15):
            outs = _in_threads(lambda i, layer=layer: [step(layer, xs[i]) for _ in range(3)])
            for i, ref in enumerate(refs):
                assert all(_same(o, ref) for o in outs[i]), f"thread {i}, threshold {threshold}"


@pytest.mark.parametrize("grad", [False, True])
def test_linear8bitlt_threads_with_different_input_dtypes(grad):
    """Each call casts the bias to its input's dtype, in place: threads of different dtypes
    convert it back and forth. A thread's kernel used to read a bias another thread had just
    freed. (With a bias exact in every dtype, each output is the single-threaded one.)"""
    dtypes = [torch.bfloat16, torch.float32, torch.float16, torch.bfloat16]
    xs = [torch.randn(rows, 256, dtype=dt) for rows, dt in zip((1, 1, 8, 70), dtypes)]
    ref_layer = _linear8bit(0, exact_bias=True, has_fp16_weights=False).eval()
    refs = [ref_layer(x).detach() for x in xs]
    with torch.set_grad_enabled(grad):
        for _ in range(8):
            layer = _linear8bit(0, exact_bias=True, has_fp16_weights=False).eval()
            outs = _in_threads(lambda i, layer=layer: [layer(xs[i]).detach() for _ in range(10)])
            for i, ref in enumerate(refs):
                assert all(_same(o, ref) for o in outs[i]), f"thread {i} ({dtypes[i]})"


@pytest.mark.parametrize("kind", ["4bit", "8bit"])
def test_module_to_dtype_while_threads_infer(kind):
    """``module.to(dtype)`` from one thread replaces the bias's memory while others run forward;
    their outputs stay exact (the packed weight keeps its bytes, the bias is exact in each dtype)."""
    if kind == "4bit":
        layer = _linear4bit(0)
        with torch.no_grad():
            layer.bias.copy_((layer.bias * 64).round() / 64)
    else:
        layer = _linear8bit(0, exact_bias=True, has_fp16_weights=False).eval()
    xs = [torch.randn(rows, 256, dtype=torch.bfloat16) for rows in (1, 4, 70)]
    with torch.no_grad():
        refs = [layer(x) for x in xs]
    stop = threading.Event()

    def infer(i: int) -> list[bool] | None:
        if i == 0:
            try:
                for n in range(300):
                    layer.to(torch.float16 if n % 2 else torch.float32)
            finally:
                stop.set()
            return None
        seen = []
        with torch.no_grad():
            while not stop.is_set() and len(seen) < 3000:
                seen += [_same(layer(x), ref) for x, ref in zip(xs, refs)]
        return seen

    results = _in_threads(infer, 3)
    assert all(all(r) for r in results[1:])


def test_decode_runner_not_kept_for_a_weight_replaced_during_the_call(monkeypatch):
    """Another thread's ``weight.data = ...`` landing while a forward runs: the runner that forward
    would keep was prepared on the old memory but keyed on the new address, and every later call
    returned the old weight's product. Here the assignment is made inside the call itself."""
    layer = _linear4bit(1, bias=False, compress_statistics=False)
    other = _linear4bit(2, bias=False, compress_statistics=False)
    layer.weight.quant_state.absmax = other.weight.quant_state.absmax  # codes of either, one absmax
    new_codes = other.weight.data.clone()
    x = torch.randn(1, 256, dtype=torch.bfloat16)
    matmul = linear4bit.matmul_4bit

    def racing(*args, **kwargs):
        out = matmul(*args, **kwargs)
        layer.weight.data = new_codes
        return out

    monkeypatch.setattr(linear4bit, "matmul_4bit", racing)
    with torch.no_grad():
        layer(x)
    monkeypatch.setattr(linear4bit, "matmul_4bit", matmul)
    with torch.no_grad():
        assert _same(layer(x), other(x))
        assert _same(layer(x), other(x))  # (through the runner kept by the call before)


def test_direct_kernel_check_from_two_threads_at_once(monkeypatch):
    """Two threads finding at once that the dispatcher's kernel was replaced both drop the direct
    entry; the second used to raise KeyError out of a forward."""
    key = ("gemm_4bit", "cpu")
    entry = _direct._bound.get(key)
    if entry is None:
        pytest.skip("the fast path is off")
    barrier = threading.Barrier(2)

    def replaced(op, device_type):
        barrier.wait()  # both threads have read the entry
        return "registered at elsewhere"

    monkeypatch.setattr(_direct, "_dispatcher_kernel", replaced)
    monkeypatch.delitem(_direct._verified, key, raising=False)
    monkeypatch.setitem(_direct._bound, key, entry)  # (restored after the test)
    try:
        assert _in_threads(lambda i: _direct._verify(*key), 2) == [None, None]
        assert key not in _direct._bound
    finally:
        _direct._changed()


def test_embeddings_shared_by_threads():
    idx = [torch.randint(0, 100, (3, 7), generator=torch.Generator().manual_seed(i)) for i in range(THREADS)]
    for cls in (bnb.nn.Embedding4bit, bnb.nn.EmbeddingNF4, bnb.nn.Embedding8bit):
        for seed in range(3):
            torch.manual_seed(seed)
            ref_layer = cls(100, 128).to("cpu")
            torch.manual_seed(seed)
            layer = cls(100, 128).to("cpu")
            refs = [ref_layer(i) for i in idx]
            outs = _in_threads(lambda i, layer=layer: [layer(idx[i]) for _ in range(3)])
            for i, ref in enumerate(refs):
                assert all(_same(o, ref) for o in outs[i]), cls.__name__


# ------------------------------------------------------------------------------------ functional


@pytest.mark.parametrize("compress_statistics", [False, True])
def test_functional_ops_from_threads(compress_statistics):
    """One quant state shared by the threads (its nested absmax resolved and cached on first use)."""
    gen = torch.Generator().manual_seed(0)
    W = torch.randn(128, 256, generator=gen).bfloat16()
    xs = [torch.randn(rows, 256, generator=gen).bfloat16() for rows in (1, 3, 40, 70)]
    A = torch.randn(1 << 16, generator=gen)
    q_ref, s_ref = F.quantize_4bit(W, quant_type="nf4", compress_statistics=compress_statistics)
    ref = (
        F.dequantize_4bit(q_ref, s_ref),
        [bnb.matmul_4bit(x, q_ref.t(), quant_state=s_ref) for x in xs],
        F.quantize_blockwise(A)[0],
    )
    for _ in range(3):
        q, s = F.quantize_4bit(W, quant_type="nf4", compress_statistics=compress_statistics)  # cold state

        def run(i: int, q=q, s=s):
            return (
                F.dequantize_4bit(q, s),
                [bnb.matmul_4bit(x, q.t(), quant_state=s) for x in xs[i:] + xs[:i]],
                F.quantize_blockwise(A)[0],
            )

        for i, out in enumerate(_in_threads(run)):
            assert _same(out[0], ref[0]) and _same(out[2], ref[2])
            assert _same(out[1], ref[1][i:] + ref[1][:i])


# ------------------------------------------------------------------------------------ optimizers


@pytest.mark.parametrize("name", ["Adam8bit", "PagedAdamW8bit", "Lion8bit"])
def test_8bit_optimizers_in_threads_match_sequential(name, optim_manager):
    """Each thread steps an optimizer of its own (GlobalOptimManager is shared by all): the same
    parameters and states as the steps made one thread after another. Thread 1 overrides its
    vector's settings (optim_bits=32) while the others register nothing."""

    def train(i: int) -> list[torch.Tensor]:
        gen = torch.Generator().manual_seed(i)
        params = [torch.nn.Parameter(torch.randn(shape, generator=gen)) for shape in ((256, 300), (4096,), (17,))]
        alive.append(params)  # (overrides are keyed by id(p): a dead parameter's id may come back)
        if i == 1:
            bnb.optim.GlobalOptimManager.get_instance().override_config(params[1], "optim_bits", 32)
        opt = getattr(bnb.optim, name)(params, lr=1e-3)
        for _ in range(3):
            for p in params:
                p.grad = torch.randn(p.shape, generator=gen)
            opt.step()
        # (the override holds for thread 1's vector alone: 32-bit states there, 8-bit elsewhere)
        assert [opt.state[p]["state1"].dtype for p in params[:2]] == [
            torch.uint8,
            torch.float32 if i == 1 else torch.uint8,
        ]
        states = [v for s in opt.state.values() for v in s.values() if isinstance(v, torch.Tensor)]
        return [p.detach().clone() for p in params] + [t.clone() for t in states]

    alive: list[list[torch.nn.Parameter]] = []
    refs = [train(i) for i in range(THREADS)]
    outs = _in_threads(train)
    for i, ref in enumerate(refs):
        assert _same(outs[i], ref), f"thread {i}"


# ------------------------------------------------------------------ threads of torch and the OS


def test_thread_count_changed_by_another_thread():
    """torch.set_num_threads from another thread between and during calls: results unchanged (the
    kernels' partition of work never changes a result)."""
    layer = _linear4bit(0)
    int8 = _linear8bit(0, has_fp16_weights=False).eval()
    xs = [torch.randn(rows, 256, dtype=torch.bfloat16) for rows in (1, 8, 70)]
    with torch.no_grad():
        refs = [(layer(x), int8(x)) for x in xs]
    before = torch.get_num_threads()
    stop = threading.Event()

    def work(i: int) -> bool | None:
        if i == 0:
            n = 0
            while not stop.is_set():
                torch.set_num_threads(1 + n % 2)
                n += 1
            return None
        try:
            with torch.no_grad():
                return all(_same((layer(x), int8(x)), ref) for _ in range(40) for x, ref in zip(xs, refs))
        finally:
            stop.set()

    try:
        assert _in_threads(work, 2)[1]
    finally:
        torch.set_num_threads(before)


def test_calls_from_torch_interop_threads():
    """Tasks of torch.jit.fork run on torch's inter-op pool."""
    layer = _linear4bit(0)
    int8 = _linear8bit(0, has_fp16_weights=False).eval()
    xs = [torch.randn(rows, 256, dtype=torch.bfloat16) for rows in (1, 8, 70)]

    def both(x: torch.Tensor):
        with torch.no_grad():
            return layer(x), int8(x)

    refs = [both(x) for x in xs]
    for _ in range(10):
        futures = [torch.jit._fork(both, x) for x in xs for _ in range(2)]
        outs = [torch.jit._wait(f) for f in futures]
        assert all(_same(o, refs[j // 2]) for j, o in enumerate(outs))


_FORK_CHILD = """
import os, threading, torch, bitsandbytes.functional as F
torch.manual_seed(0)
A = torch.randn(1 << 20)
W = torch.randn(1024, 1024)
q, s = F.quantize_4bit(W, quant_type="nf4")
ref = (F.quantize_blockwise(A)[0].numpy().tobytes(), F.dequantize_4bit(q, s).numpy().tobytes())
stop = threading.Event()

def busy():
    while not stop.is_set():
        F.quantize_blockwise(A)
        F.dequantize_4bit(q, s)

t = threading.Thread(target=busy)
t.start()
codes = []
for _ in range(4):
    pid = os.fork()
    if pid == 0:  # only the library's kernels here: torch's own OpenMP is not fork-safe
        got = (F.quantize_blockwise(A)[0].numpy().tobytes(), F.dequantize_4bit(q, s).numpy().tobytes())
        os._exit(0 if got == ref else 3)
    codes.append(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
stop.set()
t.join()
print(codes)
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
@pytest.mark.parametrize("threading_mode", ["auto", "pool"])
def test_kernels_in_a_child_forked_while_another_thread_runs_them(threading_mode):
    """fork() while another thread is inside a kernel (its parallel loop on torch's OpenMP threads
    or on the library's pool, which the child does not have): the child's kernels neither hang nor
    differ."""
    env = dict(os.environ, BNB_CPU_THREADS=threading_mode, OMP_NUM_THREADS="2")
    r = subprocess.run([sys.executable, "-c", _FORK_CHILD], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == "[0, 0, 0, 0]"


_FORK_WITH_SWAP_LOCK_HELD = """
import os, threading, torch, bitsandbytes as bnb
from bitsandbytes.nn import _params
torch.set_num_threads(1)
held = threading.Event()
def hold():  # another thread converting a bias (or moving a layer) at the fork
    _params.swap_lock().acquire()
    held.set()
    threading.Event().wait()
threading.Thread(target=hold, daemon=True).start()
held.wait()
pid = os.fork()
if pid == 0:
    layer = bnb.nn.Linear4bit(64, 32, bias=True, compute_dtype=torch.bfloat16).to("cpu")  # under the lock
    out = layer(torch.randn(2, 64, dtype=torch.bfloat16))  # converts the f32 bias under the lock
    os._exit(0 if out.shape == (2, 32) and layer.bias.dtype == torch.bfloat16 else 3)
import signal, time
deadline = time.monotonic() + 30
while (done := os.waitpid(pid, os.WNOHANG))[0] == 0 and time.monotonic() < deadline:
    time.sleep(0.05)
if done[0] == 0:  # still waiting for the lock: end it rather than leave it behind
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    print("hung")
else:
    print(os.waitstatus_to_exitcode(done[1]))
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_child_forked_while_the_swap_lock_is_held_does_not_wait_for_it():
    """The lock that serializes bias conversions and layer moves is a new one in a forked child:
    the copy of a lock another thread held at the fork would never be released there."""
    r = subprocess.run([sys.executable, "-c", _FORK_WITH_SWAP_LOCK_HELD], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == "0"
