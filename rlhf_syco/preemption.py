"""Stopping on SIGTERM or SIGINT (Slurm's preemption signal, Ctrl-C) with a checkpoint, not after losing the work
done since the last periodic one.

`run_stage` runs every stage inside `graceful()`. A stage that checkpoints by step (PM training, PPO) calls
`deferred()` once it is ready to stop cleanly and asks `agreed()` after each step: when a signal has
arrived (at any rank of a multi-process run), it writes a checkpoint and raises `Preempted`. A stage that does not defer (its caches are written per
shard or per type, atomically) is stopped at once by the first signal. A second signal stops any stage at once.
A Ray driver passes the signal on to the stage's worker (`rlhf_syco.pipeline`), which then stops the same way; to
a Ray Train group it passes it through a request file in the run folder, which every rank `watch`es and reads as
a signal of its own at its next step.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from pathlib import Path

from rlhf_syco.errors import UserError

SIGNALS = (signal.SIGTERM, signal.SIGINT)
# signal: the stop agreed on; own: this process's; request: the file through which a Ray driver asks a training
# group to stop (`watch`)
_state = {"defer": False, "signal": None, "own": None, "request": None}


class Preempted(UserError):
    """The run was stopped by a signal; what it had finished, and its checkpoint, are kept for `--resume`.
    Exits with 128 + the signal's number, as a process killed by that signal reports (SIGTERM 143, SIGINT 130)."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum, self.exit_code = signum, 128 + signum

    def __reduce__(self):  # crosses a process boundary (a Ray stage worker) with its signal
        return type(self), (str(self), self.signum)

    def caused_by(self, signum: int) -> Preempted:
        """The same stop, told as caused by `signum`: a Ray worker sees the signal its driver received as SIGINT."""
        old, new = (signal.Signals(s).name for s in (self.signum, signum))
        return Preempted(str(self).replace(f"by {old}", f"by {new}"), signum)


def at_once(signum: int) -> Preempted:
    return Preempted(f"stopped by {signal.Signals(signum).name}; run again (with --resume) to continue from what "
                     f"was finished", signum)


def after(stage: str, signum: int) -> Preempted:
    """A signal that came after a deferring stage's last step: the stage finished, and the run stops before the
    next one instead of losing the signal."""
    return Preempted(f"{stage}: finished, then stopped by {signal.Signals(signum).name}; run again (with --resume) "
                     f"to continue with the next stage", signum)


def _stop(signum, frame) -> None:
    if _state["defer"] and _state["own"] is None:  # the stage checkpoints after its current step, then raises
        _state["own"] = signum
        _state["signal"] = _state["signal"] or signum  # another rank's, agreed on already, may have come first
        return
    raise at_once(signum)  # a second signal to this process


@contextlib.contextmanager
def handled_by(handler):
    """Handle SIGTERM and SIGINT with `handler(signum, frame)` while the block runs (in the main thread only:
    signals are delivered there)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, handler) for s in SIGNALS}
    try:
        yield
    finally:
        for s, old in previous.items():
            signal.signal(s, old)


@contextlib.contextmanager
def graceful():
    """Stop the stage running in this process on SIGTERM or SIGINT, at its next step if it deferred."""
    try:
        with handled_by(_stop):
            yield
    finally:
        _state.update(defer=False, signal=None, own=None, request=None)


def watch(request_file: Path) -> None:
    """Take `request_file`, once it exists, as a signal to this process (the number it holds): a Ray driver writes
    it to stop a training group whose ranks it cannot signal."""
    _state["request"] = Path(request_file)


def request(request_file: Path, signum: int) -> None:
    """Ask the processes watching `request_file` to stop as if they had received `signum`."""
    from rlhf_syco.rundir import atomic_path

    request_file.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(request_file) as tmp:
        tmp.write_text(str(signum))


def _requested_by_file() -> None:
    path = _state["request"]
    if _state["defer"] and _state["own"] is None and path is not None and path.exists():
        _state["own"] = int(path.read_text() or signal.SIGTERM)
        _state["signal"] = _state["signal"] or _state["own"]


def deferred() -> None:
    """From now on, the stage stops at its next step boundary instead of at once."""
    _state["defer"] = True


def requested() -> int | None:
    """The signal that asked the stage to stop, or None."""
    return _state["signal"]


def agreed(device=None) -> int | None:
    """`requested()`, agreed by every process of a multi-process run (the largest signal any of them received),
    so that all stop after the same step: a rank that stopped alone would leave the others waiting in the next
    step's collective. One tiny all-reduce per step; `device` is where the process group's tensors live."""
    import torch
    import torch.distributed as dist

    _requested_by_file()
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return requested()
    flag = torch.tensor([requested() or 0], dtype=torch.int64, device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    if flag.item() and _state["signal"] is None:
        _state["signal"] = int(flag.item())
    return requested()


def stop(stage: str, step: int, checkpoint: str) -> Preempted:
    return Preempted(f"{stage}: stopped by {signal.Signals(requested()).name} after step {step}, with a checkpoint "
                     f"({checkpoint}); run again (with --resume) to continue from it", requested())
