"""Where training runs: DeepSpeed ZeRO-2/3 from `rlhf_syco/ds_configs/` and, on CPU, the gloo backend, shared by
PM training, GRPO and RLOO (transformers' Trainer: `rlhf_syco/pm.py`, `rlhf_syco/group_rl/stage.py`) and PPO (accelerate,
`rlhf_syco/ppo/stage.py`).

The one trap both share: accelerate does not choose gloo for DeepSpeed on CPU by itself, and its CPU switch
(`Accelerator(cpu=True)`, `TrainingArguments(use_cpu=True)`, ACCELERATE_USE_CPU) silently drops DeepSpeed. So
DeepSpeed on CPU asks for gloo explicitly and never sets the CPU switch; without DeepSpeed the CPU switch is set.
"""

from __future__ import annotations

import json
import os


def on_cpu(compute) -> bool:
    """Whether `compute` (the `compute` config section) runs on CPU."""
    from rlhf_syco.models import pick_device

    return pick_device(compute.device) == "cpu"


def world_size() -> int:
    """Processes of this launch (torchrun / accelerate set WORLD_SIZE; 1 otherwise)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def trainer_options(compute) -> dict:
    """`TrainingArguments` options for `compute`: `use_cpu`, `deepspeed` (the ZeRO config file) and, for
    DeepSpeed on CPU, `accelerator_config` to use the gloo state configured here (this configures the
    process state, so call it once, before building the arguments)."""
    cpu = on_cpu(compute)
    options = {"use_cpu": cpu and not compute.deepspeed_stage,
               "deepspeed": str(compute.deepspeed_config) if compute.deepspeed_stage else None}
    if compute.deepspeed_stage and cpu:
        from accelerate import PartialState

        os.environ["ACCELERATE_USE_DEEPSPEED"] = "true"  # the Trainer reads it to wrap the model in DeepSpeed
        PartialState(backend="gloo")
        options["accelerator_config"] = {"use_configured_state": True}
    return options


def make_accelerator(compute, zero: dict | None = None, **options):
    """accelerate's `Accelerator` for `compute` (mixed precision included): DeepSpeed ZeRO from
    `compute.deepspeed_config` with `zero` (batch sizes, clipping) merged in and bf16/fp16 following
    `compute.mixed_precision`, on gloo when on CPU; `options` go to `Accelerator` as they are."""
    from accelerate import Accelerator, DeepSpeedPlugin
    from accelerate.utils import InitProcessGroupKwargs

    options = {"mixed_precision": compute.mixed_precision, **options}
    cpu = on_cpu(compute)
    if compute.deepspeed_stage:
        ds = json.loads(compute.deepspeed_config.read_text())
        ds.update(zero or {})
        ds.update(bf16={"enabled": compute.mixed_precision == "bf16"},
                  fp16={"enabled": compute.mixed_precision == "fp16"})
        options["deepspeed_plugin"] = DeepSpeedPlugin(hf_ds_config=ds)
        if cpu:
            options["kwargs_handlers"] = [InitProcessGroupKwargs(backend="gloo")]
    else:
        options["cpu"] = cpu
    return Accelerator(**options)


def zero_stage(accelerator) -> int:
    """The DeepSpeed ZeRO stage `accelerator` runs under (0 without DeepSpeed)."""
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    return plugin.zero_stage if plugin is not None else 0
