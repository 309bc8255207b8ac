"""Peak host memory of CPU flows that once allocated much more than they need (bench/memory.py
measures every flow; bench/RESULTS.md has the figures).

Each flow runs in a fresh subprocess: its inputs are built, freed heap memory is handed back to
the OS, the peak resident set is reset (``/proc/self/clear_refs``), then the flow runs and the
rise of VmHWM above the resident set before it is its peak. The bounds are generous against what
the flow must hold (its outputs, what it keeps), and well below what the excess each test guards
against would cost.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from conftest import cpu_wheel_serves

pytestmark = [
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status"),
]

MiB = 2**20

_PRELUDE = """
import ctypes, gc, json, torch
torch.set_num_threads(2)
import bitsandbytes as bnb
import bitsandbytes.functional as F

def _kib(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])

def measure(run):
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = _kib("VmRSS")
    result = run()
    peak = _kib("VmHWM")
    del result
    return (peak - before) * 1024

def weight(n, k, dtype=torch.bfloat16):
    torch.manual_seed(0)
    return torch.randn(n, k).to(dtype)
"""


def peaks(body: str) -> dict:
    """Run ``body`` (after the prelude above; it prints nothing and sets ``out``, a dict) in a
    fresh interpreter and return ``out``."""
    if not cpu_wheel_serves():  # the flows run in children of this process, under the same environment
        pytest.skip("the bounds are for the bitsandbytes-cpu kernels")
    code = _PRELUDE + textwrap.dedent(body) + "\nprint(json.dumps(out))\n"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_int8params_quantizes_without_a_float16_copy_of_the_weight():
    # A bf16 weight became float16 whole before its row-wise quantization: a peak of 3x the
    # int8 codes (the codes plus a float16 copy of twice their size). Now a few rows at a time.
    r = peaks(
        """
        w = weight(2048, 8192)
        quantize = lambda w: bnb.nn.Int8Params(w, requires_grad=False, has_fp16_weights=False).to("cpu")
        quantize(weight(2048, 1024))  # first-call costs (thread pools) are not the flow's
        out = {"peak": measure(lambda: quantize(w))}
        out["need"] = 2048 * 8192 + 2048 * 4
        """
    )
    assert r["peak"] < 1.6 * r["need"], r


def test_int8params_chunked_quantization_is_bit_identical():
    import torch

    import bitsandbytes as bnb
    import bitsandbytes.functional as F
    from bitsandbytes.nn import _int8params as _params

    torch.manual_seed(0)
    for dtype in (torch.bfloat16, torch.float32):
        w = torch.randn(300, 1000).to(dtype)
        w[7] = 0.0  # a zero row
        w[11, 3] = 1e4
        chunk = _params.INT8_CHUNK_BYTES
        _params.INT8_CHUNK_BYTES = 2 * 1000 * 7  # 7 rows at a time: a short last block
        try:
            p = bnb.nn.Int8Params(w.clone(), requires_grad=False, has_fp16_weights=False).to("cpu")
        finally:
            _params.INT8_CHUNK_BYTES = chunk
        CB, SCB, _ = F.int8_vectorwise_quant(w.to(torch.float16))
        assert torch.equal(p.data, CB) and torch.equal(p.CB, CB)
        assert p.SCB.dtype == torch.float32 and torch.equal(p.SCB, SCB)
        assert p.data.shape == w.shape and p.data.is_contiguous()


def test_embedding4bit_lookup_decodes_only_the_looked_up_absmax():
    # A double-quantized table resolved the absmax of every row (two f32 temporaries of 4 bytes
    # per 64 weights) to look up a few tokens: 8 MiB per call here for a 16 KiB result.
    r = peaks(
        """
        emb = bnb.nn.Embedding4bit(16384, 4096, dtype=torch.bfloat16, quant_type="nf4", device="meta")
        emb.weight = bnb.nn.Params4bit(weight(16384, 4096), requires_grad=False, quant_type="nf4",
                                       compress_statistics=True, module=emb)
        emb = emb.to("cpu")
        idx = torch.tensor([[3, 16383]])
        with torch.no_grad():
            emb(idx)
            out = {"peak": measure(lambda: emb(idx))}
        """
    )
    assert r["peak"] < 2 * MiB, r


def test_embedding4bit_nested_lookup_is_bit_identical():
    import torch

    import bitsandbytes as bnb
    import bitsandbytes.functional as F

    torch.manual_seed(0)
    for quant_type in ("nf4", "fp4"):
        emb = bnb.nn.Embedding4bit(300, 128, dtype=torch.bfloat16, quant_type=quant_type, device="meta")
        w = torch.randn(300, 128).to(torch.bfloat16)
        emb.weight = bnb.nn.Params4bit(
            w, requires_grad=False, quant_type=quant_type, compress_statistics=True, module=emb
        )
        emb = emb.to("cpu")
        qs = emb.weight.quant_state
        assert qs.nested
        idx = torch.tensor([[0, 299, 17], [17, 5, 150]])
        full = F.dequantize_4bit(emb.weight.data, qs).to(torch.bfloat16)
        with torch.no_grad():
            got = emb(idx)
        assert torch.equal(got, torch.nn.functional.embedding(idx, full))


def test_resolved_absmax_makes_one_absmax_sized_temporary():
    # The nested absmax was decoded, then offset into a second tensor of the same size.
    r = peaks(
        """
        _, qs = F.quantize_4bit(weight(4096, 8192), quant_type="nf4", compress_statistics=True)
        F._resolved_absmax(qs)
        out = {"peak": measure(lambda: F._resolved_absmax(qs)), "absmax": 4096 * 8192 // 64 * 4}
        """
    )
    assert r["peak"] < 1.5 * r["absmax"], r


def test_quantize_4bit_compress_statistics_centres_the_absmax_in_place():
    # The f32 absmax (4 bytes per 64 weights) was centred into a copy before its quantization.
    r = peaks(
        """
        w = weight(4096, 8192)
        F.quantize_4bit(weight(64, 64), quant_type="nf4", compress_statistics=True)
        n = w.numel()
        out = {"peak": measure(lambda: F.quantize_4bit(w, quant_type="nf4", compress_statistics=True)),
               "need": n // 2 + n // 64, "absmax": n // 64 * 4}
        """
    )
    assert r["peak"] < r["need"] + 1.5 * r["absmax"], r


def test_linear8bitlt_fp16_weights_forward_holds_one_int8_copy():
    # A trainable (has_fp16_weights) layer requantizes its weight on every forward: the previous
    # codes were still held while the new ones were made (two int8 copies of the weight).
    r = peaks(
        """
        layer = bnb.nn.Linear8bitLt(4096, 2048, bias=False, has_fp16_weights=True, device="meta")
        layer.weight = bnb.nn.Int8Params(weight(2048, 4096, torch.float16), requires_grad=True,
                                         has_fp16_weights=True)
        layer = layer.to("cpu")
        x = torch.randn(4, 4096, dtype=torch.float16)
        layer(x).sum().backward()
        out = {"peak": measure(lambda: layer(x)), "codes": 2048 * 4096}
        """
    )
    assert r["peak"] < 0.5 * r["codes"], r


def test_8bit_optimizer_steps_make_no_parameter_sized_temporaries():
    r = peaks(
        """
        out = {}
        for name in ("Adam8bit", "AdEMAMix8bit", "Lion8bit", "PagedAdamW8bit"):
            torch.manual_seed(0)
            p = torch.nn.Parameter(torch.randn(2048, 2048))
            p.grad = torch.randn_like(p)
            opt = getattr(bnb.optim, name)([p], lr=1e-3)
            first = measure(opt.step)
            out[name] = (first, measure(opt.step))
        out["n"] = 2048 * 2048
        """
    )
    n = r.pop("n")
    states = {"Adam8bit": 2, "AdEMAMix8bit": 3, "Lion8bit": 1, "PagedAdamW8bit": 2}
    for name, (first, later) in r.items():
        assert first < 1.25 * states[name] * n, (name, first)  # the 8-bit states, created at step 1
        assert later < 0.25 * n, (name, later)  # no f32 copy of the parameter (4n bytes) per step


def test_params4bit_and_quantized_state_dict_round_trip_stay_near_their_size():
    r = peaks(
        """
        w = weight(2048, 8192)
        n = w.numel()
        bnb.nn.Params4bit(weight(2048, 1024), requires_grad=False, quant_type="nf4").to("cpu")  # first-call costs
        q = measure(lambda: bnb.nn.Params4bit(w, requires_grad=False, quant_type="nf4").to("cpu"))
        layer = bnb.nn.Linear4bit(8192, 2048, bias=False, quant_type="nf4", device="meta")
        layer.weight = bnb.nn.Params4bit(w, requires_grad=False, quant_type="nf4", module=layer)
        layer = layer.to("cpu")
        sd = layer.state_dict()
        fresh = bnb.nn.Linear4bit(8192, 2048, bias=False, quant_type="nf4", device="meta")
        out = {"quantize": q, "state_dict": measure(layer.state_dict),
               "load": measure(lambda: fresh.load_state_dict(sd)), "need": n // 2 + n // 64}
        """
    )
    assert r["quantize"] < 1.3 * r["need"], r
    assert r["state_dict"] < 0.1 * r["need"], r  # the packed data is aliased, not copied
    assert r["load"] < 0.1 * r["need"], r  # into a layer on meta: the loaded tensors become its own


def test_int8_backward_frees_the_forward_codes_with_the_backward():
    # The int8 backward reads the codes its forward used. Kept as ctx attributes they lived as long
    # as the graph: the previous step's loss, still referenced during the next forward, held every
    # has_fp16_weights layer's old codes while the new ones were made (two int8 copies of the model).
    import weakref

    import torch

    import bitsandbytes as bnb

    torch.manual_seed(0)
    layers = torch.nn.Sequential(*[bnb.nn.Linear8bitLt(64, 64, has_fp16_weights=True) for _ in range(3)])
    seen = {"previous": [], "alive": []}

    def count_old_codes(module, args):
        seen["alive"].append(sum(r() is not None for r in seen["previous"]))

    hook = layers[-1].register_forward_pre_hook(count_old_codes)
    for training in (True, False):  # MatMul8bitFp and MatMul8bitLt
        layers.train(training)
        seen["previous"], seen["alive"] = [], []
        for _ in range(3):
            loss = layers(torch.randn(4, 64, requires_grad=True)).float().pow(2).sum()
            loss.backward()
            seen["previous"] = [weakref.ref(layer.state.CB) for layer in layers]
        # at the last layer's forward only its own codes (still in its state) remain of the old step
        assert seen["alive"][1:] == [1, 1], (training, seen["alive"])
    hook.remove()


def test_int8_backward_with_a_weight_quantized_in_inference_mode():
    # Inference tensors cannot be saved for backward: the int8 weight of a layer quantized under
    # inference_mode still serves the input's gradient.
    import torch

    import bitsandbytes as bnb

    torch.manual_seed(0)
    with torch.inference_mode():
        layer = bnb.nn.Linear8bitLt(64, 32, has_fp16_weights=False).to("cpu")
    torch.manual_seed(0)
    twin = bnb.nn.Linear8bitLt(64, 32, has_fp16_weights=False).to("cpu")
    assert layer.weight.data.is_inference() and not twin.weight.data.is_inference()
    assert torch.equal(layer.weight.data, twin.weight.data)
    for training in (True, False):
        layer.train(training)
        twin.train(training)
        grads = []
        for m in (layer, twin):
            x = torch.ones(4, 64, requires_grad=True)
            m(x).float().pow(2).sum().backward()
            grads.append(x.grad)
        assert torch.equal(grads[0], grads[1])
