"""Spec §8 surface: the optimizer base classes, every optimizer's exact signature, kernel bits and
paging, constructor errors, state keys and GlobalOptimManager. Every expected value is copied from
the spec text (the other sections: test_spec_signatures.py)."""

from __future__ import annotations

import pytest
import torch

import bitsandbytes as bnb
import bitsandbytes.functional as F
from bitsandbytes.optim import optimizer as O
from conftest import params_text, randn


def test_base_class_signatures():
    assert params_text(O.Optimizer8bit.__init__, 1) == "params, defaults, optim_bits=32, is_paged=False"
    common = "eps=1e-08, weight_decay=0.0, optim_bits=32, args=None, min_8bit_size=4096, max_unorm=0.0, "
    common += "skip_zeros=False, is_paged=False"
    assert params_text(O.Optimizer2State.__init__, 1) == (
        "optimizer_name, params, lr=0.001, betas=(0.9, 0.999), " + common + ", alpha=0.0, t_alpha=None, t_beta3=None"
    )
    assert params_text(O.Optimizer1State.__init__, 1) == "optimizer_name, params, lr=0.001, betas=(0.9, 0.0), " + common


def test_base_class_attributes_and_validation():
    p = torch.nn.Parameter(torch.ones(4))
    opt = O.Optimizer2State("adam", [p], betas="(0.8, 0.99)")
    assert opt.param_groups[0]["betas"] == [0.8, 0.99]  # "parsed to a list of floats"
    assert O.Optimizer1State("momentum", [p], betas="(0.5, 0.0)").param_groups[0]["betas"] == [0.5, 0.0]
    assert bnb.optim.AdamW8bit([p], betas="(0.7, 0.9)").param_groups[0]["betas"] == [0.7, 0.9]
    assert opt.initialized is False and opt.name2qmap == {} and opt.is_paged is False
    assert opt.optimizer_name == "adam" and opt._FSDP_WRAPPED_QUANT_STATE_KEY == "__bnb_optimizer_quant_state__"
    assert isinstance(opt.page_mng, F.GlobalPageManager) and isinstance(opt.mng, O.GlobalOptimManager)
    assert hasattr(opt, "non_castable_tensor_keys")
    assert isinstance(opt.args, O.MockArgs)
    assert (opt.args.optim_bits, opt.args.min_8bit_size, opt.args.max_unorm, opt.args.skip_zeros) == (
        32,
        4096,
        0.0,
        False,
    )
    assert {"lr", "betas", "eps", "weight_decay", "alpha", "t_alpha", "t_beta3"} <= set(opt.defaults)
    one = O.Optimizer1State("momentum", [p])
    assert {"lr", "betas", "eps", "weight_decay"} <= set(one.defaults)
    cfg = opt.get_config(0, 0, opt.param_groups[0])
    assert set(cfg) >= {"betas", "eps", "weight_decay", "lr", "alpha", "t_alpha", "t_beta3", "optim_bits",
                        "min_8bit_size", "max_unorm", "skip_zeros"}  # fmt: skip
    for cls in (O.Optimizer2State, O.Optimizer1State):
        for kw in ({"lr": -1.0}, {"eps": -1e-8}, {"betas": (1.0, 0.9)}, {"betas": (0.9, -0.1)}, {"weight_decay": -1.0}):
            with pytest.raises(ValueError, match="Invalid"):
                cls("adam", [p], **kw)
    eight = O.Optimizer2State("adam", [p], optim_bits=8)
    eight.fill_qmap()
    assert set(eight.name2qmap) == {"dynamic", "udynamic"}


A = "lr=0.001, betas=(0.9, 0.999), eps=1e-08, weight_decay=0, amsgrad=False, optim_bits=32, args=None, min_8bit_size=4096"
AW = A.replace("weight_decay=0,", "weight_decay=0.01,")
EMA = "lr=0.001, betas=(0.9, 0.999, 0.9999), alpha=5.0, t_alpha=None, t_beta3=None, eps=1e-08, weight_decay=0.01"
LAMB = "lr=0.001, bias_correction=True, betas=(0.9, 0.999), eps=1e-08, weight_decay=0, amsgrad=False, adam_w_mode=True"
LARS = "lr, momentum=0, dampening=0, weight_decay=0, nesterov=False"
LION = "lr=0.0001, betas=(0.9, 0.99), weight_decay=0"
RMS = "lr=0.01, alpha=0.99, eps=1e-08, weight_decay=0, momentum=0, centered=False"
ADA = "lr=0.01, lr_decay=0, weight_decay=0, initial_accumulator_value=0, eps=1e-10"
TAIL = "args=None, min_8bit_size=4096"
# fmt: off
OPTIM_SIGNATURES = {
    **{n: A + ", is_paged=False" for n in ("Adam", "Adam8bit", "Adam32bit", "PagedAdam", "PagedAdam8bit", "PagedAdam32bit")},
    **{n: AW + ", is_paged=False" for n in ("AdamW", "AdamW8bit", "AdamW32bit")},
    **{n: AW for n in ("PagedAdamW", "PagedAdamW8bit", "PagedAdamW32bit")},
    "AdEMAMix": EMA + ", optim_bits=32, min_8bit_size=4096, is_paged=False",
    "AdEMAMix8bit": EMA + ", min_8bit_size=4096, is_paged=False",
    "AdEMAMix32bit": EMA + ", min_8bit_size=4096, is_paged=False",
    "PagedAdEMAMix": EMA + ", optim_bits=32, min_8bit_size=4096", "PagedAdEMAMix8bit": EMA + ", min_8bit_size=4096",
    "PagedAdEMAMix32bit": EMA + ", min_8bit_size=4096", "LAMB": LAMB + ", optim_bits=32, " + TAIL + ", max_unorm=1.0",
    "LAMB8bit": LAMB + ", " + TAIL + ", max_unorm=1.0", "LAMB32bit": LAMB + ", " + TAIL + ", max_unorm=1.0",
    "LARS": LARS + ", optim_bits=32, " + TAIL + ", max_unorm=0.02", "LARS8bit": LARS + ", " + TAIL + ", max_unorm=0.02",
    "LARS32bit": LARS + ", " + TAIL + ", max_unorm=0.02",
    "PytorchLARS": "lr=0.01, momentum=0, dampening=0, weight_decay=0, nesterov=False, max_unorm=0.02",
    "Lion": LION + ", optim_bits=32, " + TAIL + ", is_paged=False", "Lion8bit": LION + ", " + TAIL + ", is_paged=False",
    "Lion32bit": LION + ", " + TAIL + ", is_paged=False", "PagedLion": LION + ", optim_bits=32, " + TAIL,
    "PagedLion8bit": LION + ", " + TAIL, "PagedLion32bit": LION + ", " + TAIL,
    "RMSprop": RMS + ", optim_bits=32, " + TAIL, "RMSprop8bit": RMS + ", " + TAIL, "RMSprop32bit": RMS + ", " + TAIL,
    "Adagrad": ADA + ", optim_bits=32, " + TAIL, "Adagrad8bit": ADA + ", optim_bits=8, " + TAIL,
    "Adagrad32bit": ADA + ", optim_bits=32, " + TAIL, "SGD": LARS + ", optim_bits=32, " + TAIL,
    "SGD8bit": LARS + ", " + TAIL, "SGD32bit": LARS + ", " + TAIL,
}
# fmt: on


@pytest.mark.parametrize("name", list(OPTIM_SIGNATURES))
def test_optimizer_signatures(name):
    assert params_text(getattr(bnb.optim, name).__init__, 1) == "params, " + OPTIM_SIGNATURES[name]


# class -> (kernel name, optim_bits, is_paged), default construction (§8.2 table)
KERNELS = {
    "Adam": ("adam", 32, False), "Adam8bit": ("adam", 8, False), "Adam32bit": ("adam", 32, False),
    "PagedAdam": ("adam", 32, True), "PagedAdam8bit": ("adam", 8, True), "PagedAdam32bit": ("adam", 32, True),
    "AdamW": ("adam", 32, False), "AdamW8bit": ("adam", 8, False), "AdamW32bit": ("adam", 32, False),
    "PagedAdamW": ("adam", 32, True), "PagedAdamW8bit": ("adam", 8, True), "PagedAdamW32bit": ("adam", 32, True),
    "AdEMAMix": ("ademamix", 32, False), "AdEMAMix8bit": ("ademamix", 8, False),
    "AdEMAMix32bit": ("ademamix", 32, False), "PagedAdEMAMix": ("ademamix", 32, True),
    "PagedAdEMAMix8bit": ("ademamix", 8, True), "PagedAdEMAMix32bit": ("ademamix", 32, True),
    "LAMB": ("lamb", 32, False), "LAMB8bit": ("lamb", 8, False), "LAMB32bit": ("lamb", 32, False),
    "LARS": ("lars", 32, False), "LARS8bit": ("lars", 8, False), "LARS32bit": ("lars", 32, False),
    "Lion": ("lion", 32, False), "Lion8bit": ("lion", 8, False), "Lion32bit": ("lion", 32, False),
    "PagedLion": ("lion", 32, True), "PagedLion8bit": ("lion", 8, True), "PagedLion32bit": ("lion", 32, True),
    "RMSprop": ("rmsprop", 32, False), "RMSprop8bit": ("rmsprop", 8, False), "RMSprop32bit": ("rmsprop", 32, False),
    "Adagrad": ("adagrad", 32, False), "Adagrad8bit": ("adagrad", 8, False), "Adagrad32bit": ("adagrad", 32, False),
    "SGD": ("momentum", 32, False), "SGD8bit": ("momentum", 8, False), "SGD32bit": ("momentum", 32, False),
}  # fmt: skip


@pytest.mark.parametrize("name", list(KERNELS))
def test_optimizer_kernel_bits_and_paging(name):
    extra = {"lr": 0.1, "momentum": 0.9} if name.startswith(("LARS", "SGD")) else {}
    opt = getattr(bnb.optim, name)([torch.nn.Parameter(torch.ones(4))], **extra)
    assert (opt.optimizer_name, opt.args.optim_bits, opt.is_paged) == KERNELS[name]
    if name.startswith(("LARS", "SGD")):
        assert tuple(opt.param_groups[0]["betas"]) == (0.9, 0) and opt.param_groups[0]["eps"] == 0
    if name.startswith("RMSprop"):
        assert tuple(opt.param_groups[0]["betas"]) == (0.99, 0)
    if name.startswith("Adagrad"):
        assert tuple(opt.param_groups[0]["betas"]) == (0, 0)
    if "Lion" in name:
        assert opt.param_groups[0]["eps"] == 0


def test_paged_adam_ignores_is_paged():
    assert bnb.optim.PagedAdam([torch.nn.Parameter(torch.ones(4))], is_paged=False).is_paged is True


# fmt: off
INVALID = [
    ("Adam8bit", {"amsgrad": True}, ValueError), ("Adam8bit", {"optim_bits": 8}, ValueError),
    ("PagedAdam8bit", {"amsgrad": True}, ValueError), ("PagedAdamW8bit", {"optim_bits": 8}, ValueError),
    ("LAMB8bit", {"amsgrad": True}, ValueError), ("LAMB8bit", {"max_unorm": 0.5}, ValueError),
    ("LARS", {"lr": 0.1}, NotImplementedError), ("SGD", {"lr": 0.1}, NotImplementedError),
    ("RMSprop", {"alpha": 0}, NotImplementedError), ("RMSprop", {"centered": True}, NotImplementedError),
    ("Adagrad", {"lr_decay": 0.1}, ValueError), ("Adagrad", {"initial_accumulator_value": 0.1}, ValueError),
    ("Adagrad8bit", {"optim_bits": 32}, ValueError),
]
# fmt: on


@pytest.mark.parametrize("name,kwargs,error", INVALID, ids=[f"{n}-{next(iter(k))}" for n, k, _ in INVALID])
def test_optimizer_constructor_errors(name, kwargs, error):
    with pytest.raises(error):
        getattr(bnb.optim, name)([torch.nn.Parameter(torch.ones(4))], **kwargs)


# name -> {state key: (dtype, shape)} for a 64x128 param (n = 8192) after one step (§8.3)
N = 64 * 128
F32, U8, P, B = torch.float32, torch.uint8, (64, 128), (N // 256,)
# fmt: off
STATE_KEYS = {
    "Adam": {"state1": (F32, P), "state2": (F32, P)},
    "AdEMAMix": {"state1": (F32, (2, *P)), "state2": (F32, P)},
    "Lion": {"state1": (F32, P)},
    "LAMB": {"state1": (F32, P), "state2": (F32, P), "unorm_vec": (F32, (1,))},
    "LARS": {"state1": (F32, P), "unorm_vec": (F32, (1,))},
    "Adam8bit": {"state1": (U8, P), "qmap1": (F32, (256,)), "absmax1": (F32, B), "state2": (U8, P),
                 "qmap2": (F32, (256,)), "absmax2": (F32, B)},
    "AdEMAMix8bit": {"state1": (U8, (2, *P)), "absmax1": (F32, (2, *B)), "state2": (U8, P), "absmax2": (F32, B)},
    "RMSprop8bit": {"state1": (U8, P), "qmap1": (F32, (256,)), "absmax1": (F32, B)},
}
# fmt: on


@pytest.mark.parametrize("name", list(STATE_KEYS))
def test_optimizer_state_keys(name):
    p = torch.nn.Parameter(randn(64, 128, seed=7))
    extra = {"lr": 0.01, "momentum": 0.9} if name == "LARS" else {}
    opt = getattr(bnb.optim, name)([p], **extra)
    p.grad = randn(64, 128, seed=8)
    opt.step()
    st = opt.state[p]
    assert int(st["step"]) == 1
    for key, (dtype, shape) in STATE_KEYS[name].items():
        assert (st[key].dtype, tuple(st[key].shape)) == (dtype, shape), key
    if "qmap1" in st and "qmap2" in st:
        assert torch.equal(st["qmap1"], F.create_dynamic_map(signed=True))
        assert torch.equal(st["qmap2"], F.create_dynamic_map(signed=False))


def test_global_optim_manager():
    mng = O.GlobalOptimManager.get_instance()
    with pytest.raises(RuntimeError):
        O.GlobalOptimManager()
    for name in ("pid2config", "index2config", "optimizer", "uses_config_override", "module_weight_config_triple"):
        assert hasattr(mng, name), name
    assert params_text(mng.register_parameters) == "params"
    assert params_text(mng.override_config) == "parameters, key=None, value=None, key_value_dict=None"
    assert params_text(mng.register_module_override) == "module, param_name, config"
    assert bnb.optim.GlobalOptimManager is O.GlobalOptimManager
