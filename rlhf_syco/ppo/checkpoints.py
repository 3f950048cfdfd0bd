"""PPO checkpoints: written whole or not at all, pruned to the newest few, resumed from the newest complete one.

`ppo/<arm>/checkpoints/step-NNNNNN/`:
- `policy/` and `value/`: `save_pretrained` folders (safetensors + tokenizer), loadable with `from_pretrained`
  (with `ppo.value_head: policy_trunk`, `value_head.safetensors` instead of `value/`);
- `state/`: accelerate's `save_state` (optimizer, LR scheduler, every process's RNG states; DeepSpeed's sharded
  model and optimizer states under ZeRO);
- `trainer_state.json`: step, KL coefficient, number of processes.

Each is written under a temporary name, sealed (`SEALED.json`: every file's size and sha256) and renamed; resuming
takes the newest one that still matches its seal, and sets a damaged one aside. The newest
`keep_last` stay whole; older ones are deleted, except those the caller keeps the policy of (the evaluation
checkpoints: the models the curves were measured on), which lose `state/` and `value/` only.
"""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path
from typing import Callable

from rlhf_syco.errors import UserError
from rlhf_syco.rundir import atomic_path, newest_intact, read_json, seal, write_json


class Checkpoints:
    """The checkpoints under `folder` of a run on `accelerator`; `keeps_policy(step)` says which pruned
    checkpoints keep their `policy/`."""

    def __init__(self, folder: Path, accelerator, keep_last: int, keeps_policy: Callable[[int], bool]):
        self.folder, self.accelerator, self.keep_last, self.keeps_policy = Path(folder), accelerator, keep_last, \
            keeps_policy

    def save(self, step: int, model, tokenizer, state: dict) -> Path:
        """Policy and value model of the prepared policy-and-value `model` (safetensors, with `tokenizer`),
        accelerate's state, and `state` with the step and the number of processes as `trainer_state.json`;
        then older checkpoints are pruned. Every process calls it."""
        from accelerate.utils import broadcast_object_list

        acc = self.accelerator
        final = self.folder / f"step-{step:06d}"
        weights = acc.get_state_dict(model)  # every process takes part (ZeRO-3 gathers)
        with atomic_path(final, is_dir=True) if acc.is_main_process else contextlib.nullcontext() as tmp:
            tmp = Path(broadcast_object_list([str(tmp)])[0])  # every process saves its state shards there
            acc.save_state(str(tmp / "state"))
            if acc.is_main_process:
                unwrapped = acc.unwrap_model(model)
                for name, module, prefix in (("policy", unwrapped.policy, "policy."),
                                             ("value", unwrapped.value_model, "value_model.")):
                    if module is None:  # the value function is a head on the policy's trunk
                        continue
                    module.save_pretrained(tmp / name, safe_serialization=True, state_dict={
                        k[len(prefix):]: v for k, v in weights.items() if k.startswith(prefix)})
                    tokenizer.save_pretrained(tmp / name)
                if unwrapped.value_head is not None:
                    from safetensors.torch import save_file

                    save_file({k.removeprefix("value_head."): v.contiguous() for k, v in weights.items()
                               if k.startswith("value_head.")}, tmp / "value_head.safetensors")
                write_json(tmp / "trainer_state.json", {"step": step, **state, "processes": acc.num_processes})
            acc.wait_for_everyone()
            if acc.is_main_process:
                seal(tmp)  # after every process wrote its state shards
        acc.wait_for_everyone()
        if acc.is_main_process:
            self.prune()
        return final

    def prune(self) -> None:
        """Keep the newest `keep_last` checkpoints whole; an older one the caller keeps the policy of keeps it."""
        complete = sorted(p for p in self.folder.glob("step-*") if (p / "state").exists())
        for path in complete[:-self.keep_last]:
            if self.keeps_policy(int(path.name.split("-")[1])):
                for part in ("state", "value", "value_head.safetensors"):
                    if not (path / part).exists():
                        continue
                    doomed = path / f".{part}.deleting"
                    (path / part).rename(doomed)  # a half-deleted state must not look resumable
                    shutil.rmtree(doomed) if doomed.is_dir() else doomed.unlink()
            else:
                doomed = path.with_name(f".{path.name}.deleting")
                path.rename(doomed)
                shutil.rmtree(doomed)

    def last(self) -> Path | None:
        """The newest checkpoint that can be resumed from: one with its `state/` that matches its seal
        (damaged newer ones are set aside)."""
        resumable = [p for p in self.folder.glob("step-*") if (p / "state").exists()]
        return newest_intact(resumable, lambda p: int(p.name.split("-")[1]))

    def load_last(self) -> dict | None:
        """Load accelerate's state from the newest resumable checkpoint; returns its `trainer_state.json` (with
        `path`), or None when there is none."""
        from accelerate.utils import broadcast_object_list

        found = str(self.last() or "") if self.accelerator.is_main_process else None  # one process checks seals
        found = broadcast_object_list([found])[0]
        if not found:
            return None
        ckpt = Path(found)
        state = read_json(ckpt / "trainer_state.json")
        if state["processes"] != self.accelerator.num_processes:
            raise UserError(f"{ckpt} was written by {state['processes']} processes; resume with as many "
                            f"(the per-process sampling seeds depend on it)")
        self.accelerator.load_state(str(ckpt / "state"))
        return {**state, "path": ckpt}
