"""Quantized layers and 8-bit optimizers across processes and in shared memory (CPU).

* Through a torch.multiprocessing queue to a spawned process (torch shares the storages): a
  Linear4bit (NF4, double-quantized or not), a Linear8bitLt, their Params4bit / Int8Params arrive
  as the same classes with their quant state / row scales and give the same output bit for bit.
  An Int8Params used to arrive as a plain Parameter (torch's Parameter pickling), so a layer sent
  before it was quantized was never quantized there: its first forward raised NotQuantizedError.
  The same for pickle, copy.copy and torch.save.
* A model in shared memory (``share_memory()``, or sent to a process) sees what the parent loads
  into it in place: the quant state and row scales are in shared memory with the codes, and a
  checkpoint loaded into a quantized Linear4bit is copied into its quant state's tensors (a new
  quant state object had left the other process, and a ``copy.copy`` of the weight, with the new
  codes but the old scales: a silent wrong answer). A double-quantized layer in shared memory keeps
  no runner with its nested absmax resolved (a process that had run it kept the absmax it resolved:
  version counters do not see another process's writes).
* A checkpoint loaded into a Linear4bit that is not quantized yet is copied, as torch copies: the
  layer had kept the state dict's tensors (another layer's memory, which its next in-place load
  overwrote).
* Hogwild training of a LoRA adapter over a shared NF4 base in 2 processes leaves the base intact;
  DataLoader workers (spawn, fork, forkserver) running quantized layers give the results of
  ``num_workers=0``; 8-bit optimizer states sent to another process continue bit for bit; a whole
  model saved with torch.save loads and runs in a fresh process.

Children run the bodies in multiprocessing_workers.py; every wait has a timeout.
"""

from __future__ import annotations

import copy
import io
import pickle

import multiprocessing_workers as W
import pytest
import torch
import torch.multiprocessing as mp

import bitsandbytes as bnb

TIMEOUT = 90


class Served:
    """A spawned ``multiprocessing_workers.serve`` process and its queues."""

    def __init__(self) -> None:
        ctx = mp.get_context("spawn")
        self.requests, self.replies = ctx.Queue(), ctx.Queue()
        self.process = ctx.Process(target=W.serve, args=(self.requests, self.replies), daemon=True)
        self.process.start()

    def __call__(self, name: str, *args):
        self.requests.put((name, args))
        status, result = pickle.loads(self.replies.get(timeout=TIMEOUT))
        if status != "ok":
            raise AssertionError(f"in the spawned process, {name} failed:\n{result}")
        return result

    def close(self) -> None:
        self.requests.put(None)
        self.process.join(TIMEOUT)
        if self.process.exitcode is None:
            self.process.kill()
        assert self.process.exitcode == 0


@pytest.fixture(scope="module")
def served():
    server = Served()
    yield server
    server.close()


def _forward(layer: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return layer(x)


def _assert_same(a, b, where: str = "") -> None:
    """Equal values, bit for bit, through dicts, lists and tensors."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for k in a:
            _assert_same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (u, v) in enumerate(zip(a, b)):
            _assert_same(u, v, f"{where}[{i}]")
    else:
        assert a == b, (where, a, b)


def _layers() -> dict[str, torch.nn.Module]:
    torch.manual_seed(0)
    nf4 = bnb.nn.Linear4bit(32, 24, quant_type="nf4", compress_statistics=True, compute_dtype=torch.float32)
    nf4_flat = bnb.nn.Linear4bit(32, 24, quant_type="nf4", compress_statistics=False, compute_dtype=torch.float32)
    int8 = bnb.nn.Linear8bitLt(32, 24, has_fp16_weights=False)
    int8_ran = bnb.nn.Linear8bitLt(32, 24, has_fp16_weights=False, threshold=6.0)
    layers = {"nf4": nf4, "nf4_flat": nf4_flat, "int8": int8, "int8_ran": int8_ran}
    for layer in layers.values():
        layer.to("cpu")
    _forward(int8_ran, W.inputs(9, dtype=torch.float16))  # its codes and scales are in its state now
    return layers


def _input_for(layer: torch.nn.Module, seed: int = 1) -> torch.Tensor:
    dtype = torch.float16 if isinstance(layer, bnb.nn.Linear8bitLt) else torch.float32
    x = W.inputs(seed, k=layer.in_features, dtype=dtype)
    x[:, 3] *= 40  # outliers for the threshold layer
    return x


# ------------------------------------------------------------------------------- queues, pickles


def test_quantized_layers_and_weights_through_a_queue_to_a_spawned_process(served):
    for name, layer in _layers().items():
        x = _input_for(layer)
        got = served("keep", name, layer)
        assert got["cls"] == type(layer).__name__
        weight = got["weight"]
        if name.startswith("nf4"):
            assert weight["cls"] == "Params4bit" and weight["bnb_quantized"] and weight["module"] == "Linear4bit"
            _assert_same(weight["quant_state"], layer.weight.quant_state.as_dict(), name)
        else:
            assert weight["cls"] == "Int8Params", name  # was a plain Parameter
            scb = layer.weight.SCB if layer.weight.SCB is not None else layer.state.SCB
            _assert_same(weight["SCB"] if weight["SCB"] is not None else got["state_SCB"], scb, name)
            assert weight["CB_is_data"] == (layer.weight.CB is not None)
        ran = served("run", name, x)
        expected = _forward(layer, x)
        _assert_same(ran["out"], expected, name)
        _assert_same(ran["again"], expected, name)

    # the parameters alone
    layers = _layers()
    for name in ("nf4", "int8"):
        weight = layers[name].weight
        got = served("keep", name + ".weight", weight)
        assert got["cls"] == type(weight).__name__
        _assert_same(got["data"], weight.data)
        if name == "int8":
            assert got["CB_is_data"] and got["has_fp16_weights"] is False
            _assert_same(got["SCB"], weight.SCB)


def test_layers_sent_before_quantization_quantize_in_the_spawned_process(served):
    """The child's ``.to("cpu")`` quantizes as the parent's would (an Int8Params that arrived as
    a plain Parameter stayed float, and the forward raised NotQuantizedError)."""
    torch.manual_seed(3)
    fresh = {
        "fresh_int8": bnb.nn.Linear8bitLt(32, 24, has_fp16_weights=False, threshold=6.0),
        "fresh_nf4": bnb.nn.Linear4bit(32, 24, quant_type="nf4", compute_dtype=torch.float32),
    }
    for name, layer in fresh.items():
        assert served("keep", name, layer)["weight"]["dtype"] == torch.float32
    for name, layer in fresh.items():
        x = _input_for(layer)
        ran = served("run", name, x, True)
        layer.to("cpu")
        _assert_same(ran["out"], _forward(layer, x), name)
        assert ran["after"]["weight"]["cls"] == type(layer.weight).__name__


@pytest.mark.parametrize("how", ["pickle", "pickle5", "copy", "torch.save"])
def test_int8params_copies_and_pickles_stay_int8params(how):
    layer = _layers()["int8"]
    w = layer.weight
    fresh = bnb.nn.Int8Params(torch.randn(24, 32), requires_grad=False, has_fp16_weights=False)

    def roundtrip(obj):
        if how == "copy":
            return copy.copy(obj)
        if how == "torch.save":
            buf = io.BytesIO()
            torch.save(obj, buf)
            buf.seek(0)
            return torch.load(buf, weights_only=False)
        return pickle.loads(pickle.dumps(obj, protocol=5 if how == "pickle5" else 2))

    back = roundtrip(w)
    assert type(back) is bnb.nn.Int8Params and list(back.__dict__) == ["CB", "SCB", "has_fp16_weights"]
    assert back.CB is not None and back.CB.data_ptr() == back.data_ptr()  # one copy of the codes
    assert torch.equal(back.data, w.data) and torch.equal(back.SCB, w.SCB) and not back.requires_grad
    assert (back.data_ptr() == w.data_ptr()) == (how == "copy")  # copy.copy shares, as Params4bit's
    quantized = roundtrip(fresh).to("cpu")
    assert quantized.dtype == torch.int8 and torch.equal(quantized.SCB, copy.deepcopy(fresh).to("cpu").SCB)
    x = _input_for(layer)
    _assert_same(_forward(roundtrip(layer), x), _forward(layer, x))


@pytest.mark.parametrize("what", ["parameter", "state_dict(keep_vars=True)"])
def test_int8params_pickle_loads_with_the_weights_only_loader(what):
    """torch.load's default (weights_only) loader took a pickled Int8Params before it pickled as
    itself (as torch's plain Parameter, as the established release's does): it still loads, now
    as an Int8Params with its codes and scales."""
    layer = _layers()["int8"]
    buf = io.BytesIO()
    torch.save(layer.weight if what == "parameter" else layer.state_dict(keep_vars=True), buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=True)
    back = loaded if what == "parameter" else loaded["weight"]
    assert type(back) is bnb.nn.Int8Params and back.CB.data_ptr() == back.data_ptr()
    assert torch.equal(back.data, layer.weight.data) and torch.equal(back.SCB, layer.weight.SCB)
    with pytest.raises(TypeError, match="rebuilds Int8Params"):  # a crafted pickle's other class
        bnb.nn.modules._rebuild_int8params(back.data, False, {}, True, torch.nn.Parameter)


def test_whole_model_saved_with_torch_save_runs_in_a_fresh_process(served, tmp_path):
    model = W.quant_net(0)
    x = W.inputs(2)
    path = tmp_path / "model.pt"
    torch.save(model, path)
    got = served("load_and_run", str(path), x)
    _assert_same(got["out"], _forward(model, x))
    assert [got["layers"][n]["weight"]["cls"] for n in "abc"] == ["Params4bit", "Params4bit", "Int8Params"]


# --------------------------------------------------------------------------------- optimizers


@pytest.mark.parametrize("name", W.OPTIMIZERS)
def test_optimizer_state_sent_to_another_process_continues_bit_for_bit(served, name):
    params, opt = W.make_optimizer(name, seed=0)
    for step in range(2):
        W.optimizer_step(params, opt, step)
    assert opt.state[params[0]]["state1"].dtype == torch.uint8
    # copies: the queue shares memory with the receiver, and the next step here is in place
    sent = ([p.detach().clone() for p in params], copy.deepcopy(opt.state_dict()))
    values, state = served("continue_optimizer", name, *sent, 2)
    W.optimizer_step(params, opt, 2)
    _assert_same(values, [p.detach() for p in params])
    _assert_same(state, opt.state_dict())


# ------------------------------------------------------------------------------ shared memory


def _statistics(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    found = {}
    for name, m in model.named_modules():
        if isinstance(m, bnb.nn.Linear4bit):
            qs = m.weight.quant_state
            found[name + ".absmax"] = qs.absmax
            if qs.nested:
                found[name + ".offset"] = qs.offset
                found[name + ".nested_absmax"] = qs.state2.absmax
        elif isinstance(m, bnb.nn.Linear8bitLt):
            for owner, label in ((m.weight, "weight"), (m.state, "state")):
                for key in ("CB", "SCB"):
                    if getattr(owner, key, None) is not None:
                        found[f"{name}.{label}.{key}"] = getattr(owner, key)
    return found


@pytest.mark.parametrize("ran_first", [False, True])
def test_share_memory_puts_the_quantization_statistics_in_shared_memory(ran_first):
    model = W.quant_net(0)
    x = W.inputs(1)
    if ran_first:
        expected = _forward(model, x)  # the int8 codes and scales move into the layer's state
    model.share_memory()
    stats = _statistics(model)
    assert len(stats) == 6 and all(p.is_shared() for p in model.parameters())
    unshared = [k for k, t in stats.items() if not t.is_shared()]
    assert not unshared
    if ran_first:
        _assert_same(_forward(model, x), expected)


def test_forked_child_sees_a_checkpoint_loaded_in_place_after_share_memory():
    """Hogwild-style serving: the parent loads new weights into the shared model while a forked
    child holds it; the child's next forward uses the new codes with their new scales."""
    ctx = mp.get_context("fork")
    model = W.quant_net(0)
    x = W.inputs(1)
    _forward(model, x)
    model.share_memory()
    go, replies = ctx.Event(), ctx.Queue()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # (a child forked after torch's OpenMP ran may hang in it)
    try:
        child = ctx.Process(target=W.forked_forward, args=(model, x, go, replies), daemon=True)
        child.start()
    finally:
        torch.set_num_threads(threads)
    try:
        model.load_state_dict(W.quant_net(5).state_dict())
        go.set()
        got = pickle.loads(replies.get(timeout=TIMEOUT))
    finally:
        child.join(TIMEOUT)
        if child.exitcode is None:
            child.kill()
    assert child.exitcode == 0
    expected = _forward(model, x)
    _assert_same(expected, _forward(W.quant_net(5), x))
    _assert_same(got, expected)


def _reload_while_held(served, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Layer ``name`` of a QuantNet is sent to the served process and run there (warm), then the
    parent loads another checkpoint into it in place: (the child's next output, the parent's).

    The layer runs here first: a forward casts the bias to the input's dtype by replacing its
    memory (``bias.data = ...``, as the established release does), which would leave each
    process a bias of its own."""
    layer = getattr(W.quant_net(0), name)
    x = _input_for(layer)
    expected = _forward(layer, x)
    served("keep", "held_" + name, layer)
    _assert_same(served("run", "held_" + name, x)["out"], expected)
    fresh = getattr(W.quant_net(6), name)
    layer.load_state_dict(fresh.state_dict())
    expected = _forward(layer, x)
    _assert_same(expected, _forward(fresh, x))
    return served("run", "held_" + name, x)["out"], expected


@pytest.mark.parametrize("name", ["a", "b", "c"])  # NF4 double-quantized and not, LLM.int8()
def test_spawned_process_holding_a_layer_sees_a_checkpoint_loaded_in_place(served, name):
    """Also a double-quantized layer, whose decoding runner would resolve the nested absmax once:
    in shared memory it keeps none (another process's in-place writes advance no version counter
    here), and the absmax is resolved on every call."""
    got, expected = _reload_while_held(served, name)
    _assert_same(got, expected)


def test_a_copy_of_the_weight_follows_an_in_place_load():
    """copy.copy of a Params4bit shares its memory and quant state: both stay consistent."""
    layer = W.quant_net(0).a
    twin = copy.copy(layer.weight)
    state = layer.weight.quant_state
    layer.load_state_dict(W.quant_net(7).a.state_dict())
    assert layer.weight.quant_state is state and twin.quant_state is state
    expected = bnb.functional.dequantize_4bit(W.quant_net(7).a.weight.data, W.quant_net(7).a.weight.quant_state)
    _assert_same(bnb.functional.dequantize_4bit(twin.data, twin.quant_state), expected)


@pytest.mark.parametrize("keep_vars", [False, True])
@pytest.mark.parametrize("compress_statistics", [True, False])
def test_loading_into_an_unquantized_layer_copies_the_state_dict(compress_statistics, keep_vars):
    """Also from ``state_dict(keep_vars=True)``, whose weight is the source's Params4bit."""

    def layer(seed, quantize=True):
        torch.manual_seed(seed)
        out = bnb.nn.Linear4bit(
            32, 24, quant_type="nf4", compress_statistics=compress_statistics, compute_dtype=torch.float32
        )
        return out.to("cpu") if quantize else out

    source, x = layer(0), W.inputs(1)
    expected = _forward(source, x)
    target = layer(1, quantize=False)
    target.load_state_dict(source.state_dict(keep_vars=keep_vars))
    _assert_same(_forward(target, x), expected)
    assert target.weight.data_ptr() != source.weight.data_ptr()
    assert target.weight.quant_state.absmax.data_ptr() != source.weight.quant_state.absmax.data_ptr()
    target.load_state_dict(layer(2).state_dict())  # in place: must not write into the source
    _assert_same(_forward(source, x), expected)
    _assert_same(_forward(target, x), _forward(layer(2), x))


# ----------------------------------------------------------------------------- Hogwild training


@pytest.mark.parametrize("optimizer", ["sgd", "Adam8bit"])
def test_hogwild_lora_training_leaves_the_shared_nf4_base_intact(optimizer):
    ctx = mp.get_context("fork")
    torch.manual_seed(0)
    model = W.LoraNet().to("cpu")
    x = W.inputs(1)
    base = copy.deepcopy(model.base)
    before = {n: t.clone() for n, t in _statistics(model).items()}
    lora_A = model.lora_A.weight.detach().clone()
    model.share_memory()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        workers = [ctx.Process(target=W.hogwild_train, args=(r, model, 15, optimizer), daemon=True) for r in range(2)]
        for w in workers:
            w.start()
    finally:
        torch.set_num_threads(threads)
    for w in workers:
        w.join(TIMEOUT)
        if w.exitcode is None:
            w.kill()
    assert [w.exitcode for w in workers] == [0, 0]
    assert torch.equal(model.base.weight.data, base.weight.data) and torch.equal(model.base.bias, base.bias)
    _assert_same({n: t for n, t in _statistics(model).items()}, before)
    _assert_same(_forward(model.base, x), _forward(base, x))
    assert (model.lora_A.weight - lora_A).abs().max() > 1e-3  # both processes' updates landed here


# ------------------------------------------------------------------------------- DataLoader


@pytest.mark.parametrize("context", ["spawn", "fork", "forkserver"])
def test_dataloader_workers_running_quantized_layers_match_num_workers_0(context):
    expected = torch.cat(list(torch.utils.data.DataLoader(W.FeatureDataset(0), batch_size=3)))
    threads = torch.get_num_threads()
    if context == "fork":
        torch.set_num_threads(1)
    try:
        loader = torch.utils.data.DataLoader(
            W.FeatureDataset(0), batch_size=3, num_workers=2, multiprocessing_context=context, timeout=TIMEOUT
        )
        got = torch.cat(list(loader))
    finally:
        torch.set_num_threads(threads)
    assert got.shape == (10, 32)
    _assert_same(got, expected)


def test_nested_absmax_in_shared_memory_is_resolved_on_every_call():
    """Another process's in-place write to shared memory advances no version counter here (a
    write through ``.data`` stands for it): the op and a layer's decoding runner, which keep a
    resolved nested absmax by version counters, keep none for statistics in shared memory."""
    w = torch.randn(32, 64, generator=torch.Generator().manual_seed(3))
    q, state = bnb.functional.quantize_4bit(w, quant_type="nf4", compress_statistics=True)
    _, other = bnb.functional.quantize_4bit(w * 3, quant_type="nf4", compress_statistics=True)
    layer = bnb.nn.Linear4bit(
        64, 32, bias=False, quant_type="nf4", compress_statistics=True, compute_dtype=torch.float32
    )
    layer.load_state_dict({"weight": w})
    layer = layer.to("cpu").share_memory()
    x = torch.randn(1, 64, generator=torch.Generator().manual_seed(4))
    for t in (state.absmax, state.offset, state.state2.absmax):
        t.share_memory_()
    _assert_same(bnb.functional.dequantize_4bit(q, state), bnb.functional.dequantize_4bit(q, _nested_copy(state)))
    for _ in range(3):  # warm: the layer keeps its runner
        before = layer(x)
    qs = layer.weight.quant_state
    for mine, theirs in ((state, other), (qs, other)):
        mine.absmax.data.copy_(theirs.absmax)
        mine.offset.data.copy_(theirs.offset)
        mine.state2.absmax.data.copy_(theirs.state2.absmax)
    _assert_same(bnb.functional.dequantize_4bit(q, state), bnb.functional.dequantize_4bit(q, _nested_copy(other)))
    after = layer(x)
    expected = bnb.matmul_4bit(x, layer.weight.data.t(), quant_state=_nested_copy(qs))
    _assert_same(after, expected)
    assert not torch.equal(after, before)


def _nested_copy(qs):
    """A quant state of private (unshared, never-resolved) copies of ``qs``'s statistics."""
    out = copy.copy(qs)
    out.absmax, out.offset = qs.absmax.clone(), qs.offset.clone()
    out.state2 = copy.copy(qs.state2)
    out.state2.absmax = qs.state2.absmax.clone()
    return out


def test_nested_absmax_is_resolved_once_outside_shared_memory_and_every_call_inside():
    """cached_nested_absmax keeps the resolved scales for private memory (one dequantization per
    weight) and keeps none once the statistics are in shared memory."""
    from bitsandbytes.backends.reference import KERNELS
    from bitsandbytes.backends.reference.fourbit import cached_nested_absmax

    w = torch.randn(64, 64, generator=torch.Generator().manual_seed(5))
    _, qs = bnb.functional.quantize_4bit(w, quant_type="nf4", compress_statistics=True)
    calls = []

    def dequantize(*args):
        calls.append(1)
        return KERNELS["dequantize_blockwise"](*args)

    parts = (qs.state2.absmax, qs.absmax, qs.state2.code, qs.offset)
    first = cached_nested_absmax(*parts, dequantize, "_test_resolved")
    assert cached_nested_absmax(*parts, dequantize, "_test_resolved") is first and len(calls) == 1
    for t in parts:
        t.share_memory_()
    again = cached_nested_absmax(*parts, dequantize, "_test_resolved")
    cached_nested_absmax(*parts, dequantize, "_test_resolved")
    assert len(calls) == 3 and torch.equal(again, first)
