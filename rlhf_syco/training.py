"""What every stage that trains through a Hugging Face `Trainer` (PM training, the intervention) shares: a
progress bar instead of printed logs, checkpoints sealed once the Trainer has written them, a stop with a
checkpoint on SIGTERM / SIGINT (agreed between processes), and resuming from the newest intact checkpoint.
"""

from __future__ import annotations

from pathlib import Path

from rlhf_syco import preemption
from rlhf_syco.progress import progress_bar
from rlhf_syco.rundir import newest_intact, seal


def last_complete_checkpoint(folder: Path) -> Path | None:
    """Newest `checkpoint-N` that matches its seal (written once the Trainer finished saving it); damaged
    newer ones are set aside."""
    return newest_intact(folder.glob("checkpoint-*"), lambda p: int(p.name.split("-")[1]))


def callbacks(label: str) -> list:
    """Progress bar (`label`), sealed checkpoints, and the stop on a signal."""
    from transformers import TrainerCallback

    class RichProgress(TrainerCallback):
        def on_train_begin(self, args, state, control, **kw):
            self.bar = progress_bar()
            self.bar.start()
            self.task = self.bar.add_task(label, total=state.max_steps, completed=state.global_step)

        def on_step_end(self, args, state, control, **kw):
            self.bar.update(self.task, completed=state.global_step)

        def on_train_end(self, args, state, control, **kw):
            self.bar.stop()

    class SealCheckpoints(TrainerCallback):
        def on_save(self, args, state, control, **kw):  # the Trainer calls it once the checkpoint is written
            if state.is_world_process_zero:
                seal(Path(args.output_dir) / f"checkpoint-{state.global_step}")

    class StopWhenSignalled(TrainerCallback):
        def on_train_begin(self, args, state, control, **kw):
            preemption.deferred()

        def on_step_end(self, args, state, control, **kw):
            if preemption.agreed(args.device):
                control.should_save = control.should_training_stop = True

    return [RichProgress(), SealCheckpoints(), StopWhenSignalled()]


def train(trainer, checkpoints: Path, stage: str) -> Path | None:
    """Run `trainer` from the newest intact checkpoint under `checkpoints` (returned; None: from the start);
    a signal stops it after the current step with a checkpoint, as `preemption.Preempted`."""
    from transformers import PrinterCallback

    trainer.remove_callback(PrinterCallback)  # metrics go to log_history.jsonl; the console gets a progress bar
    resume = last_complete_checkpoint(checkpoints)
    trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    if preemption.requested():
        step = trainer.state.global_step
        raise preemption.stop(stage, step, f"checkpoint-{step}")
    return resume
