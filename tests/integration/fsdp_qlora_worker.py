"""Worker of test_fsdp_qlora.py: peft LoRA on a tiny 4-bit Llama (transformers' BitsAndBytesConfig with
``bnb_4bit_quant_storage``) trained a few steps under FSDP1 or FSDP2 on 2 gloo processes, and the
same training in one process; both write their loss curves for the test to compare."""

from __future__ import annotations

import json
import os

import torch
import torch.distributed as dist

STEPS = 6
LR = 2e-2


def load_qlora(path: str):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    torch.manual_seed(0)
    quant = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.float32,
        bnb_4bit_quant_storage=torch.float32,  # the model's dtype: what FSDP1 needs to flatten
    )
    model = AutoModelForCausalLM.from_pretrained(path, quantization_config=quant, device_map="cpu", dtype=torch.float32)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "up_proj"], lora_dropout=0.0)
    return get_peft_model(model, lora)


def batch() -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.randint(3, 120, (4, 16), generator=g)


def train(model, opt=None, backward=None) -> list[float]:
    import bitsandbytes as bnb

    if opt is None:
        opt = bnb.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=LR)
    ids = batch()
    losses = []
    for _ in range(STEPS):
        opt.zero_grad()
        loss = model(input_ids=ids, labels=ids).loss
        (backward or torch.Tensor.backward)(loss)
        opt.step()
        losses.append(float(loss.detach()))
    return losses


def single(path: str, out: str) -> None:
    with open(out, "w") as f:
        json.dump(train(load_qlora(path)), f)


def sharded(rank: int, port: int, path: str, kind: str, out: str) -> None:
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    if kind.startswith("accelerate"):
        losses = _through_accelerate(rank, path, int(kind[-1]))
    else:
        dist.init_process_group("gloo", rank=rank, world_size=2)
        losses = train(
            _wrap(load_qlora(path), kind)
        )  # the same batch on both ranks: averaged gradients equal one process's
    if rank == 0:
        with open(out, "w") as f:
            json.dump(losses, f)
    dist.barrier()  # retire every collective before exit (see tests/fsdp_workers.py::finish)
    dist.destroy_process_group()


def _through_accelerate(rank: int, path: str, version: int) -> list[float]:
    """accelerate's FSDP plugin (the FSDP-QLoRA recipe's configuration: peft's auto-wrap policy,
    ``use_orig_params``) wraps the model and the optimizer in ``Accelerator.prepare``.

    accelerate enables FSDP only for accelerator back-ends (a CPU run is MULTI_CPU and ignores the
    plugin), so this sets the two fields its GPU path sets (the distributed type and the plugin)
    and, for FSDP1, the device as FSDP1 spells the CPU ("cpu", not accelerate's "cpu:0").
    """
    from accelerate import Accelerator, FullyShardedDataParallelPlugin
    from accelerate.utils import DistributedType
    from peft.utils.other import fsdp_auto_wrap_policy

    import bitsandbytes as bnb

    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE="2")
    model = load_qlora(path)
    plugin = FullyShardedDataParallelPlugin(
        fsdp_version=version,
        auto_wrap_policy=fsdp_auto_wrap_policy(model),
        use_orig_params=True,
        cpu_ram_efficient_loading=False,
    )
    accelerator = Accelerator(cpu=True, fsdp_plugin=plugin)  # initialises the gloo process group
    accelerator.state.distributed_type = DistributedType.FSDP
    accelerator.state.fsdp_plugin = plugin
    if version == 1:
        accelerator.state.device = torch.device("cpu")
    opt = bnb.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=LR)
    model, opt = accelerator.prepare(model, opt)
    wrapper = "FullyShardedDataParallel" if version == 1 else "FSDP"
    assert wrapper in type(model).__name__, type(model)
    return train(model, opt, accelerator.backward)


def _wrap(model, kind: str):
    layers = model.base_model.model.model.layers
    if kind == "fsdp2":
        from torch.distributed.fsdp import fully_shard

        for layer in layers:
            fully_shard(layer)
        fully_shard(model)
    else:
        from torch.distributed.fsdp import FullyShardedDataParallel
        from torch.distributed.fsdp.wrap import ModuleWrapPolicy

        model = FullyShardedDataParallel(
            model,
            auto_wrap_policy=ModuleWrapPolicy({type(layers[0])}),
            use_orig_params=True,  # frozen 4-bit weights and trainable adapters in one unit
            device_id=torch.device("cpu"),
        )
    return model
