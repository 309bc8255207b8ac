"""Peak host memory of the main CPU flows, each in a fresh subprocess.

Per flow: the bytes the process's peak resident set rose above its resident set just before the
flow ran (the inputs already built, the peak reset through ``/proc/self/clear_refs``), and the
ratio of that to the bytes the flow must hold at once: its outputs plus what it keeps (quantized
weights, optimizer states, ...), as each flow states. A ratio near 1 is the floor; the "dense"
rows are the plain PyTorch equivalents for comparison.

    python bench/memory.py [--only SUBSTRING[,SUBSTRING...]] [--small]

Linux only (``/proc/self/status``'s VmHWM / VmRSS). ``--small`` runs 1024-wide weights.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable

import torch

MiB = 2**20
BF16 = torch.bfloat16

# ---- measuring ---------------------------------------------------------------------------------


def _status_kib(*fields: str) -> list[int]:
    """Fields of ``/proc/self/status`` in KiB."""
    values = dict.fromkeys(fields, 0)
    with open("/proc/self/status") as f:
        for line in f:
            key = line.split(":", 1)[0]
            if key in values:
                values[key] = int(line.split()[1])
    return [values[k] for k in fields]


def _trim() -> None:
    """Collect garbage and give freed heap memory back to the OS (glibc), so that memory freed
    while the inputs were built cannot hide the flow's own allocations."""
    gc.collect()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def measure(run: Callable[[], object]) -> dict[str, int]:
    """Bytes above the resident set before ``run``: ``peak`` (the high-water mark, exact; it counts
    the pages of memory-mapped files read too), ``anon`` (the anonymous memory's peak, sampled
    every 0.5 ms: no file pages, but a peak shorter than that may be missed), ``file`` (mapped
    file pages still resident at the end) and ``kept`` (resident at the end, result alive)."""
    _trim()
    stop = threading.Event()
    anon_peak = [0]

    def sample() -> None:
        while not stop.is_set():
            anon_peak[0] = max(anon_peak[0], _status_kib("RssAnon")[0])
            time.sleep(0.0005)

    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current VmRSS
    before, anon0, file0 = _status_kib("VmRSS", "RssAnon", "RssFile")
    sampler = threading.Thread(target=sample, daemon=True)
    interval = sys.getswitchinterval()
    sys.setswitchinterval(0.0005)
    sampler.start()
    try:
        result = run()
    finally:
        stop.set()
        sampler.join()
        sys.setswitchinterval(interval)
    peak, after, anon1, file1 = _status_kib("VmHWM", "VmRSS", "RssAnon", "RssFile")
    del result
    kib = 1024
    return {
        "peak": (peak - before) * kib,
        "anon": (max(anon_peak[0], anon1) - anon0) * kib,
        "file": (file1 - file0) * kib,
        "kept": (after - before) * kib,
    }


def nbytes(*tensors: torch.Tensor | None) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if t is not None)


def state_bytes(module: torch.nn.Module) -> int:
    """Bytes of a module's parameters, buffers and quant states (what a quantized layer keeps)."""
    total = sum(nbytes(p) for p in module.parameters()) + sum(nbytes(b) for b in module.buffers())
    for m in module.modules():
        qs = getattr(getattr(m, "weight", None), "quant_state", None)
        if qs is not None:
            total += nbytes(qs.absmax, qs.code, qs.offset)
            if qs.state2 is not None:
                total += nbytes(qs.state2.absmax, qs.state2.code)
        scb = getattr(getattr(m, "weight", None), "SCB", None)
        total += nbytes(scb)
    return total


# ---- flows: each returns (run, necessary bytes); run's result is kept alive while measured --------


def _w(n: int, k: int, dtype: torch.dtype = BF16) -> torch.Tensor:
    torch.manual_seed(0)
    return torch.randn(n, k, dtype=torch.float32).to(dtype)


def _x(rows: int, k: int, dtype: torch.dtype = BF16) -> torch.Tensor:
    torch.manual_seed(1)
    return torch.randn(rows, k, dtype=torch.float32).to(dtype)


def flow_quantize_4bit(n, k, dtype, quant_type, compress):
    import bitsandbytes.functional as F

    w = _w(n, k, dtype)
    need = n * k // 2 + n * k // 64 * (1 if compress else 4)
    return (lambda: F.quantize_4bit(w, quant_type=quant_type, compress_statistics=compress)), need


def flow_dequantize_4bit(n, k, quant_type, compress):
    import bitsandbytes.functional as F

    packed, qs = F.quantize_4bit(_w(n, k), quant_type=quant_type, compress_statistics=compress)
    return (lambda: F.dequantize_4bit(packed, qs)), n * k * 2


def flow_quantize_blockwise(n, k, dtype):
    import bitsandbytes.functional as F

    w = _w(n, k, dtype)
    return (lambda: F.quantize_blockwise(w)), n * k + n * k // 4096 * 4


def flow_int8_vectorwise_quant(n, k, dtype, threshold=0.0):
    import bitsandbytes.functional as F

    w = _w(n, k, dtype)
    return (lambda: F.int8_vectorwise_quant(w, threshold)), n * k + n * 4


def flow_params4bit_to(n, k, compress):
    import bitsandbytes as bnb

    w = _w(n, k)
    need = n * k // 2 + n * k // 64 * (1 if compress else 4)

    def run():
        return bnb.nn.Params4bit(w, requires_grad=False, quant_type="nf4", compress_statistics=compress).to("cpu")

    return run, need


def flow_linear4bit_to(n, k):
    """A Linear4bit built on meta, given a bf16 weight, moved to the CPU (quantized there)."""
    import bitsandbytes as bnb

    w = _w(n, k)
    need = n * k // 2 + n * k // 64

    def run():
        layer = bnb.nn.Linear4bit(k, n, bias=False, compute_dtype=BF16, quant_type="nf4", device="meta")
        layer.weight = bnb.nn.Params4bit(w, requires_grad=False, quant_type="nf4", module=layer)
        return layer.to("cpu")

    return run, need


def flow_int8params_to(n, k):
    import bitsandbytes as bnb

    w = _w(n, k)

    def run():
        return bnb.nn.Int8Params(w, requires_grad=False, has_fp16_weights=False).to("cpu")

    return run, n * k + n * 4


def flow_linear8bit_to(n, k):
    import bitsandbytes as bnb

    w = _w(n, k)

    def run():
        layer = bnb.nn.Linear8bitLt(k, n, bias=False, has_fp16_weights=False, device="meta")
        layer.weight = bnb.nn.Int8Params(w, requires_grad=False, has_fp16_weights=False)
        return layer.to("cpu")

    return run, n * k + n * 4


def _model(width: int, layers: int) -> torch.nn.Module:
    torch.manual_seed(0)
    with torch.device("meta"):
        model = torch.nn.Sequential(*[torch.nn.Linear(width, width, bias=False) for _ in range(layers)])
    model = model.to_empty(device="cpu").to(BF16)
    for p in model.parameters():
        p.data.normal_()
    return model


def flow_replace_linear_4bit(width, layers):
    """Each nn.Linear of a bf16 model replaced by a quantized Linear4bit (the float one dropped)."""
    import bitsandbytes as bnb

    model = _model(width, layers)
    need = layers * (width * width // 2 + width * width // 64)

    def run():
        for i, lin in enumerate(list(model)):
            q = bnb.nn.Linear4bit(width, width, bias=False, compute_dtype=BF16, quant_type="nf4", device="meta")
            q.weight = bnb.nn.Params4bit(lin.weight.data, requires_grad=False, quant_type="nf4", module=q)
            model[i] = q.to("cpu")
            del lin, q
        return model

    # the float model goes away as it is replaced: the floor is what is left (negative above base)
    return run, need


def flow_linear4bit_forward(n, k, rows, compress=True):
    import bitsandbytes as bnb

    layer = bnb.nn.Linear4bit(k, n, bias=False, compute_dtype=BF16, quant_type="nf4", device="meta")
    layer.weight = bnb.nn.Params4bit(_w(n, k), requires_grad=False, quant_type="nf4", compress_statistics=compress)
    layer = layer.to("cpu")
    x = _x(rows, k)

    def run():
        with torch.no_grad():
            return layer(x)

    return run, rows * n * 2


def flow_dense_forward(n, k, rows):
    w, x = _w(n, k), _x(rows, k)
    return (lambda: torch.nn.functional.linear(x, w)), rows * n * 2


def flow_linear4bit_backward(n, k, rows):
    """QLoRA: the input gradient through a frozen 4-bit weight (forward + backward)."""
    import bitsandbytes as bnb

    layer = bnb.nn.Linear4bit(k, n, bias=False, compute_dtype=BF16, quant_type="nf4", device="meta")
    layer.weight = bnb.nn.Params4bit(_w(n, k), requires_grad=False, quant_type="nf4")
    layer = layer.to("cpu")
    # the output (and its gradient) and the input gradient; a weight-sized temporary is the price
    # of the dense product (backward dequantizes the weight once)
    return _input_grad_run(layer, _x(rows, k)), rows * n * 2 * 2 + rows * k * 2


def _input_grad_run(layer, x):
    """A forward + backward of ``layer`` on ``x`` returning the input gradient (frozen weights)."""
    x.requires_grad_()

    def run():
        layer(x).sum().backward()
        g = x.grad
        x.grad = None
        return g

    return run


def _int8_layer(n, k, threshold):
    """A frozen int8 ``Linear8bitLt`` (n x k) quantized on the CPU from a bf16 weight."""
    import bitsandbytes as bnb

    layer = bnb.nn.Linear8bitLt(k, n, bias=False, has_fp16_weights=False, threshold=threshold, device="meta")
    layer.weight = bnb.nn.Int8Params(_w(n, k), requires_grad=False, has_fp16_weights=False)
    return layer.to("cpu")


def flow_linear8bit_forward(n, k, rows, threshold, train):
    layer = _int8_layer(n, k, threshold)
    layer.train(train)
    x = _x(rows, k)

    def run():
        with torch.no_grad():
            return layer(x)

    return run, rows * n * 2


def flow_linear8bit_fp16_train(n, k, rows, threshold, warm=False):
    """Linear8bitLt with a trainable f16 weight (has_fp16_weights=True): forward + backward (the
    first step, or with ``warm`` a later one)."""
    import bitsandbytes as bnb

    layer = bnb.nn.Linear8bitLt(k, n, bias=False, has_fp16_weights=True, threshold=threshold, device="meta")
    layer.weight = bnb.nn.Int8Params(_w(n, k, torch.float16), requires_grad=True, has_fp16_weights=True)
    layer = layer.to("cpu")
    x = _x(rows, k, torch.float16).requires_grad_()

    def run():
        layer(x).sum().backward()
        g = layer.weight.grad
        layer.weight.grad = None
        x.grad = None
        return g

    if warm:
        run()
    # the weight gradient (f16) is the output that must exist
    return run, n * k * 2


def flow_linear8bit_backward(n, k, rows, threshold):
    return _input_grad_run(_int8_layer(n, k, threshold), _x(rows, k)), rows * n * 2 * 2 + rows * k * 2


def flow_embedding4bit(vocab, dim, tokens, compress):
    import bitsandbytes as bnb

    emb = bnb.nn.Embedding4bit(vocab, dim, dtype=BF16, quant_type="nf4", device="meta")
    emb.weight = bnb.nn.Params4bit(
        _w(vocab, dim), requires_grad=False, quant_type="nf4", compress_statistics=compress, module=emb
    )
    emb = emb.to("cpu")
    idx = torch.randint(0, vocab, (tokens,))

    def run():
        with torch.no_grad():
            return emb(idx)

    return run, tokens * dim * 2


def _optim(name: str, params):
    import bitsandbytes as bnb

    cls = {
        "Adam8bit": bnb.optim.Adam8bit,
        "PagedAdamW8bit": bnb.optim.PagedAdamW8bit,
        "AdEMAMix8bit": bnb.optim.AdEMAMix8bit,
        "Lion8bit": bnb.optim.Lion8bit,
        "Adam32bit": bnb.optim.Adam,
        "torch.AdamW": torch.optim.AdamW,
    }[name]
    return cls(params, lr=1e-3)


def flow_optim_step(name, n, k, dtype, first):
    """One optimizer step on an [n, k] parameter with a gradient; ``first``: the step that creates
    the states (their size is the floor), else a later step (the floor is 0: nothing new is kept)."""
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(n, k, dtype=torch.float32).to(dtype))
    p.grad = torch.randn_like(p)
    opt = _optim(name, [p])
    if not first:
        opt.step()
    states = {"Adam8bit": 2, "PagedAdamW8bit": 2, "AdEMAMix8bit": 3, "Lion8bit": 1}.get(name)
    if states is not None:
        need = states * n * k + states * n * k // 256 * 4
    else:
        need = (1 if name == "Lion" else 2) * n * k * 4
    return (lambda: opt.step()), need if first else 0


def flow_state_dict(width, layers, kind):
    """The state dict of a quantized model (the packed data is aliased, not copied)."""
    model = _quantized_model(width, layers, kind)
    return (lambda: model.state_dict()), 0


def _quantized_model(width, layers, kind):
    import bitsandbytes as bnb

    mods = []
    for _ in range(layers):
        if kind == "4bit":
            q = bnb.nn.Linear4bit(width, width, bias=False, compute_dtype=BF16, quant_type="nf4", device="meta")
            q.weight = bnb.nn.Params4bit(_w(width, width), requires_grad=False, quant_type="nf4", module=q)
        else:
            q = bnb.nn.Linear8bitLt(width, width, bias=False, has_fp16_weights=False, device="meta")
            q.weight = bnb.nn.Int8Params(_w(width, width), requires_grad=False, has_fp16_weights=False)
        mods.append(q.to("cpu"))
    return torch.nn.Sequential(*mods)


def flow_safetensors_save(width, layers, kind):
    from safetensors.torch import save_file

    model = _quantized_model(width, layers, kind)
    path = os.path.join(tempfile.mkdtemp(), "m.safetensors")

    def run():
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, path)

    return run, 0


def flow_load_state_dict(width, layers, kind):
    """A quantized state dict loaded into a model: 4-bit layers built on meta (the usual way, the
    loaded tensors become the weights), 8-bit layers already quantized (copied in place)."""
    import bitsandbytes as bnb

    sd = _quantized_model(width, layers, kind).state_dict()
    if kind == "4bit":
        mods = [
            bnb.nn.Linear4bit(width, width, bias=False, compute_dtype=BF16, quant_type="nf4", device="meta")
            for _ in range(layers)
        ]
        model = torch.nn.Sequential(*mods)
    else:
        torch.manual_seed(1)
        model = _quantized_model(width, layers, kind)
    gc.collect()

    def run():
        model.load_state_dict(sd)
        return model

    return run, 0


def flow_safetensors_load(width, layers, kind):
    from safetensors.torch import load_file, save_file

    model = _quantized_model(width, layers, kind)
    path = os.path.join(tempfile.mkdtemp(), "m.safetensors")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, path)
    size = os.path.getsize(path)
    del model
    gc.collect()

    def run():
        return load_file(path)

    return run, size


def flow_from_pretrained(hidden, inter, layers, bits):
    """transformers from_pretrained(quantization_config=BitsAndBytesConfig(load_in_Nbit)) of a
    random Llama checkpoint (bf16, safetensors). Floor: the final model (measured)."""
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=1024,
        hidden_size=hidden,
        intermediate_size=inter,
        num_hidden_layers=layers,
        num_attention_heads=hidden // 64,
        num_key_value_heads=hidden // 64,
        max_position_embeddings=64,
        tie_word_embeddings=False,
    )
    path = tempfile.mkdtemp()
    with torch.device("meta"):
        m = LlamaForCausalLM(config)
    m = m.to_empty(device="cpu").to(BF16)
    for p in m.parameters():
        p.data.normal_(std=0.02)
    m.save_pretrained(path)
    del m
    gc.collect()
    quant = {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4"} if bits == 4 else {"load_in_8bit": True}
    layer_float = (4 * hidden * hidden + 3 * hidden * inter) * 2
    # the "necessary" size: the quantized layers and float rest, plus one layer's float weights
    qbytes = (4 * hidden * hidden + 3 * hidden * inter) * layers * (0.5 + 1 / 64 if bits == 4 else 1)
    rest = 2 * 1024 * hidden * 2 + (2 * layers + 1) * hidden * 2
    run = lambda: AutoModelForCausalLM.from_pretrained(  # noqa: E731
        path, quantization_config=BitsAndBytesConfig(**quant), device_map="cpu", dtype=BF16
    )
    return run, int(qbytes + rest + layer_float)


def flows(small: bool) -> dict[str, tuple[Callable, tuple]]:
    N, K, K2 = (1024, 1024, 3584) if small else (4096, 4096, 14336)
    f: dict[str, tuple[Callable, tuple]] = {}
    for dt, dn in ((BF16, "bf16"), (torch.float16, "f16"), (torch.float32, "f32")):
        f[f"quantize_4bit nf4 {dn} NxK"] = (flow_quantize_4bit, (N, K, dt, "nf4", False))
    f["quantize_4bit nf4 bf16 NxK compress"] = (flow_quantize_4bit, (N, K, BF16, "nf4", True))
    f["quantize_4bit fp4 bf16 NxK2 compress"] = (flow_quantize_4bit, (N, K2, BF16, "fp4", True))
    f["dequantize_4bit nf4 NxK compress"] = (flow_dequantize_4bit, (N, K, "nf4", True))
    f["quantize_blockwise bf16 NxK"] = (flow_quantize_blockwise, (N, K, BF16))
    f["quantize_blockwise f32 NxK"] = (flow_quantize_blockwise, (N, K, torch.float32))
    f["int8_vectorwise_quant f16 NxK"] = (flow_int8_vectorwise_quant, (N, K, torch.float16))
    f["int8_vectorwise_quant bf16 NxK"] = (flow_int8_vectorwise_quant, (N, K, BF16))
    f["int8_vectorwise_quant bf16 NxK thr6"] = (flow_int8_vectorwise_quant, (N, K, BF16, 6.0))
    f["Params4bit.to cpu NxK2"] = (flow_params4bit_to, (N, K2, True))
    f["Params4bit.to cpu NxK2 no-compress"] = (flow_params4bit_to, (N, K2, False))
    f["Linear4bit meta->cpu NxK2"] = (flow_linear4bit_to, (N, K2))
    f["Int8Params.to cpu NxK2"] = (flow_int8params_to, (N, K2))
    f["Linear8bitLt meta->cpu NxK2"] = (flow_linear8bit_to, (N, K2))
    f["replace Linear->Linear4bit 8 layers NxN"] = (flow_replace_linear_4bit, (N, 8))
    for rows in (1, 8, 64, 512):
        f[f"Linear4bit fwd bf16 NxK b{rows}"] = (flow_linear4bit_forward, (N, K, rows))
        f[f"dense linear fwd bf16 NxK b{rows}"] = (flow_dense_forward, (N, K, rows))
    f["Linear4bit fwd bf16 NxK b512 no-compress"] = (flow_linear4bit_forward, (N, K, 512, False))
    f["Linear4bit fwd+bwd(x) NxK b64"] = (flow_linear4bit_backward, (N, K, 64))
    f["Linear4bit fwd+bwd(x) NxK b512"] = (flow_linear4bit_backward, (N, K, 512))
    for thr in (0.0, 6.0):
        for train in (False, True):
            mode = "train" if train else "eval"
            f[f"Linear8bitLt fwd {mode} thr{thr:g} NxK b64"] = (flow_linear8bit_forward, (N, K, 64, thr, train))
        f[f"Linear8bitLt fwd+bwd(x) thr{thr:g} NxK b64"] = (flow_linear8bit_backward, (N, K, 64, thr))
        f[f"Linear8bitLt fp16-weights fwd+bwd thr{thr:g} NxK b64"] = (flow_linear8bit_fp16_train, (N, K, 64, thr))
    f["Linear8bitLt fp16-weights step2 thr0 NxK b64"] = (flow_linear8bit_fp16_train, (N, K, 64, 0.0, True))
    f["Embedding4bit 8NxK 512 tokens"] = (flow_embedding4bit, (N * 8, K, 512, True))
    f["Embedding4bit 8NxK 1 token"] = (flow_embedding4bit, (N * 8, K, 1, True))
    f["Embedding4bit 8NxK 1 token no-compress"] = (flow_embedding4bit, (N * 8, K, 1, False))
    for name in ("Adam8bit", "PagedAdamW8bit", "AdEMAMix8bit", "Lion8bit", "torch.AdamW"):
        for first in (True, False):
            step = "step1" if first else "step2"
            f[f"{name} {step} f32 NxK"] = (flow_optim_step, (name, N, K, torch.float32, first))
    f["Adam8bit step2 bf16 NxK"] = (flow_optim_step, ("Adam8bit", N, K, BF16, False))
    for kind in ("4bit", "8bit"):
        f[f"state_dict {kind} 8 layers NxN"] = (flow_state_dict, (N, 8, kind))
        f[f"safetensors save {kind} 8 layers NxN"] = (flow_safetensors_save, (N, 8, kind))
        f[f"safetensors load {kind} 8 layers NxN"] = (flow_safetensors_load, (N, 8, kind))
        f[f"load_state_dict {kind} 8 layers NxN"] = (flow_load_state_dict, (N, 8, kind))
    h, i = (256, 768) if small else (1024, 3584)
    f["from_pretrained 4bit llama 8 layers"] = (flow_from_pretrained, (h, i, 8, 4))
    f["from_pretrained 8bit llama 8 layers"] = (flow_from_pretrained, (h, i, 8, 8))
    return f


def child(name: str, small: bool) -> None:
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    import bitsandbytes  # noqa: F401  (its import and the platform's are not the flow's)

    fn, args = flows(small)[name]
    if not small:  # first-call costs (lazy imports, code books, thread pools) are not the flow's
        fn_small, args_small = flows(True)[name]
        warm, _ = fn_small(*args_small)
        warm()
        del warm
    run, need = fn(*args)
    print(json.dumps({**measure(run), "need": need}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default="")
    parser.add_argument("--small", action="store_true")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    a = parser.parse_args()
    if a.child is not None:
        child(a.child, a.small)
        return
    only = [s for s in a.only.split(",") if s]
    n, k, k2, h, i = (1024, 1024, 3584, 256, 768) if a.small else (4096, 4096, 14336, 1024, 3584)
    print(f"N={n} K={k} K2={k2}; Llama: hidden {h}, intermediate {i}; bf16 weights; MiB = 2**20 bytes")
    head = ("flow", "peak", "anon", "file", "kept", "need", "ratio")
    print(f"{head[0]:<48}" + "".join(f"{c:>8}" for c in head[1:]))
    for name in flows(a.small):
        if only and not any(s in name for s in only):
            continue
        cmd = [sys.executable, __file__, "--child", name] + (["--small"] if a.small else [])
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode:
            print(f"{name:<48} FAILED: {proc.stderr.strip().splitlines()[-1:]}")
            continue
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        # the ratio leaves out the pages of mapped files (a checkpoint read through mmap), which
        # the OS can drop and reread, not the process's own memory
        own = r["peak"] - max(r["file"], 0)
        ratio = f"{own / r['need']:.2f}" if r["need"] > 0 else "-"
        cols = "".join(f"{r[k] / MiB:8.1f}" for k in ("peak", "anon", "file", "kept", "need"))
        print(f"{name:<48}{cols}{ratio:>8}", flush=True)


if __name__ == "__main__":
    main()
