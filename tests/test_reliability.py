"""The failures a long run meets: external services that hang, refuse or answer garbage; two runs on one run
folder; a full disk. (Damaged checkpoints: tests/test_pm.py and tests/test_ppo_trainer.py.)"""

import json
import os
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from rlhf_syco.config import load_config
from rlhf_syco.errors import ServiceError
from rlhf_syco.llm_choice import OpenAIChooser
from rlhf_syco.models import build_reward_models
from rlhf_syco.rundir import RunDir

ROOT = Path(__file__).resolve().parents[1]
CONVERSATION = [{"role": "user", "content": "Is the sky green?"}]


def cli(*args, cwd=ROOT, **kw):
    return subprocess.run([sys.executable, "-m", "rlhf_syco.cli", *args], capture_output=True, text=True, cwd=cwd,
                          **kw)


@pytest.fixture
def hung_server():
    """Accepts connections and never answers."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    held, stop = [], threading.Event()

    def accept():
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except OSError:
                pass
    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    stop.set()
    thread.join()
    for connection in held:
        connection.close()
    listener.close()


@pytest.fixture
def closed_url():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{probe.getsockname()[1]}"


@pytest.fixture
def garbage_server():
    """Answers every POST with `garbage_server.body` (status 200)."""
    class Handler(BaseHTTPRequestHandler):
        body = b""

        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            self.send_response(200)
            self.send_header("Content-Length", str(len(Handler.body)))
            self.end_headers()
            self.wfile.write(Handler.body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    Handler.url = f"http://127.0.0.1:{server.server_address[1]}"
    yield Handler
    server.shutdown()
    server.server_close()


def only_remote(spec: str) -> list[str]:
    """Overrides making an `http` reward model named remote the one every stage scores with (beside the PM
    that PM training measures)."""
    return ['reward_models.pm={type: hf, path: "{run_dir}/pm/model"}', f"reward_models.remote={spec}",
            "probe.reward_models=[remote]", "bon.reward_models=[remote]", "ppo.reward_models=[remote]"]


def remote_reward_model(tmp_path, url, **options):
    spec = json.dumps({"type": "http", "url": url, "timeout": 1, "retries": 1, **options})
    config = load_config(ROOT / "experiments" / "tiny.yaml", [f"runs_dir={tmp_path}", *only_remote(spec)])
    return build_reward_models(config, config.run_dir, ["remote"])["remote"]


def one_line(error) -> str:
    message = str(error.value)
    assert "\n" not in message
    return message


def test_a_reward_server_that_hangs_refuses_or_answers_garbage_is_one_line(tmp_path, hung_server, closed_url,
                                                                             garbage_server):
    started = time.time()
    with pytest.raises(ServiceError) as error:
        remote_reward_model(tmp_path, hung_server + "/score").score([CONVERSATION], ["No."])
    assert one_line(error) == f"reward_models.remote: cannot reach {hung_server}/score: timed out (2 tries)"
    assert time.time() - started < 10  # 1 s timeout, one retry after 0.5 s
    with pytest.raises(ServiceError) as error:
        remote_reward_model(tmp_path, closed_url + "/score").score([CONVERSATION], ["No."])
    assert one_line(error).startswith(f"reward_models.remote: cannot reach {closed_url}/score: ")
    url = garbage_server.url + "/score"
    for body, what in [(b"<html>busy</html>", "did not answer with JSON"),
                       (b'{"scores": [1.0, 2.0]}', "expected 1 scores in the reply"),
                       (b'{"scores": [NaN]}', "answered scores that are not finite numbers"),
                       (b'{"scores": ["high"]}', "answered scores that are not finite numbers")]:
        garbage_server.body = body
        with pytest.raises(ServiceError) as error:
            remote_reward_model(tmp_path, url).score([CONVERSATION], ["No."])
        assert one_line(error).startswith("reward_models.remote: ") and what in str(error.value), body


def test_an_llm_judge_that_hangs_refuses_or_answers_garbage_is_one_line(hung_server, closed_url, garbage_server):
    def ask(url):
        chooser = OpenAIChooser(url + "/v1", "judge", api_key_env=None, timeout=1, retries=1,
                                where="eval.positivity_judge_options")
        with pytest.raises(ServiceError) as error:
            chooser.probabilities(["Which is more positive?"], "", "AB")
        return one_line(error)

    assert ask(hung_server) == (f"eval.positivity_judge_options: cannot reach {hung_server}/v1/chat/completions: "
                                "ReadTimeout (2 tries)")
    assert ask(closed_url).startswith(f"eval.positivity_judge_options: cannot reach {closed_url}/v1/chat/completions")
    for body in (b"not json", b'{"choices": []}', b'{"object": "error"}'):
        garbage_server.body = body
        assert "did not answer with a chat completion" in ask(garbage_server.url), body


@pytest.mark.slow  # trains the tiny PM first
def test_a_hung_reward_server_ends_the_command_with_one_line_and_exit_code_3(tmp_path, hung_server):
    spec = json.dumps({"type": "http", "url": hung_server + "/score", "timeout": 1, "retries": 1})
    done = cli("probe-pm", "experiments/tiny.yaml", f"runs_dir={tmp_path}", *only_remote(spec), timeout=300)
    assert done.returncode == 3, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    assert f"error: reward_models.remote: cannot reach {hung_server}/score: timed out (2 tries)" in \
        " ".join(done.stderr.split())
    assert (tmp_path / "tiny" / "pm" / "DONE.json").exists()  # what finished before stays for the rerun


HOLD = """
import sys, time
from rlhf_syco.config import load_config
from rlhf_syco.stages import open_run
open_run(load_config(sys.argv[1], [f"runs_dir={sys.argv[2]}"]))
print("holding", flush=True)
time.sleep(120)
"""


def test_a_second_process_on_a_run_folder_is_refused_and_a_dead_holders_lock_taken_over(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(ROOT / "experiments" / "tiny.yaml"), str(tmp_path)],
                              stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert holder.stdout.readline().strip() == "holding"
        lock = json.loads((tmp_path / "tiny" / ".lock").read_text())
        assert lock["pid"] == holder.pid and lock["host"] == socket.gethostname()
        refused = cli("build-data", "experiments/tiny.yaml", f"runs_dir={tmp_path}")
        assert refused.returncode == 2 and "Traceback" not in refused.stderr
        assert f"run folder {tmp_path / 'tiny'} is in use by pid {holder.pid} on {socket.gethostname()}" in \
            " ".join(refused.stderr.split())
    finally:
        holder.kill()  # SIGKILL: the lock stays behind, stale
        holder.wait()
    assert (tmp_path / "tiny" / ".lock").exists()
    taken = cli("build-data", "experiments/tiny.yaml", f"runs_dir={tmp_path}")
    assert taken.returncode == 0, taken.stderr[-2000:]
    assert f"taking over the lock of {tmp_path / 'tiny'} from pid {holder.pid}" in " ".join(taken.stderr.split())
    assert not (tmp_path / "tiny" / ".lock").exists()  # released at exit


def test_the_same_process_may_open_its_run_folder_again_and_give_it_up(tmp_path):
    run = RunDir(tmp_path / "run")
    run.lock()
    run.lock()
    assert json.loads((tmp_path / "run" / ".lock").read_text())["pid"] == os.getpid()
    run.unlock()
    assert not (tmp_path / "run" / ".lock").exists()


@pytest.fixture
def small_disk(tmp_path):
    """A 3 MB tmpfs, mounted for the test (root only)."""
    mount = tmp_path / "small"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount)], capture_output=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {made.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", str(mount)], check=True)


def test_a_full_disk_is_one_line_naming_the_path_and_a_rerun_resumes(tmp_path, small_disk):
    free = os.statvfs(small_disk).f_bavail * os.statvfs(small_disk).f_frsize
    (small_disk / "filler").write_bytes(b"\0" * (free - 40_960))  # room for the manifest, not for the pairs
    full = cli("build-data", "experiments/tiny.yaml", f"runs_dir={small_disk}")
    assert full.returncode == 2 and "Traceback" not in full.stderr, full.stderr[-2000:]
    message = " ".join(full.stderr.split())
    assert "no space left on the device" in message and str(small_disk / "tiny") in message
    leftovers = [p.name for p in (small_disk / "tiny").rglob("*") if p.name.endswith(".tmp")]
    assert not leftovers and not (small_disk / "tiny" / "data" / "DONE.json").exists()

    (small_disk / "filler").unlink()
    again = cli("build-data", "experiments/tiny.yaml", f"runs_dir={small_disk}")
    assert again.returncode == 0, again.stderr[-2000:]
    reference = cli("build-data", "experiments/tiny.yaml", f"runs_dir={tmp_path / 'ref'}")
    assert reference.returncode == 0
    for name in ("pm_train.jsonl", "pm_heldout.jsonl"):
        assert (small_disk / "tiny" / "data" / name).read_bytes() == (tmp_path / "ref" / "tiny" / "data" / name).read_bytes()


def test_a_stop_passed_on_by_the_driver_is_told_with_the_drivers_signal():
    """A Ray worker sees the signal its driver passed on as SIGINT; the user is told the signal they sent."""
    import pickle
    import signal

    from rlhf_syco.preemption import Preempted

    in_worker = Preempted("ppo: stopped by SIGINT after step 3, with a checkpoint (step-000003)", signal.SIGINT)
    told = pickle.loads(pickle.dumps(in_worker)).caused_by(signal.SIGTERM)  # as it comes back from the worker
    assert str(told) == "ppo: stopped by SIGTERM after step 3, with a checkpoint (step-000003)"
    assert told.exit_code == 143 and in_worker.exit_code == 130


def test_a_ranks_own_signal_after_the_agreed_stop_is_not_a_second_signal():
    """In a multi-process run another rank's signal can be agreed on (`preemption.agreed`) before this process's
    own arrives; that one must not stop the checkpoint at once, as a second signal to this process does."""
    import signal

    from rlhf_syco import preemption

    with preemption.graceful():
        preemption.deferred()
        preemption._state["signal"] = signal.SIGTERM  # what agreed() records from another rank
        preemption._stop(signal.SIGTERM, None)  # this process's own, during the checkpoint: carries on
        assert preemption.requested() == signal.SIGTERM
        with pytest.raises(preemption.Preempted, match="stopped by SIGINT"):
            preemption._stop(signal.SIGINT, None)  # a second one to this process: at once
    assert preemption.requested() is None


def finish_after_a_late_signal(config, run_dir):
    """A stage that checkpoints by step and gets SIGTERM after its last step's check, then finishes."""
    import signal

    from rlhf_syco import preemption

    preemption.deferred()
    os.kill(os.getpid(), signal.SIGTERM)
    return {"finished": True}


def test_a_signal_after_a_stages_last_step_stops_the_run_once_the_stage_is_done(tmp_path, monkeypatch):
    """The stage's last `agreed()` has passed, so it finishes and is marked done; the signal is not lost (the next
    stage used to start as if none had come): the run stops there, one line, exit 143, and a rerun skips it."""
    from rlhf_syco import stages
    from rlhf_syco.preemption import Preempted

    monkeypatch.setitem(stages.STAGES, "late", (f"{__name__}:finish_after_a_late_signal", ()))
    config = load_config(ROOT / "experiments" / "tiny.yaml", [f"runs_dir={tmp_path}", "name=late"])
    run_dir = stages.open_run(config)
    with pytest.raises(Preempted, match=r"^late: finished, then stopped by SIGTERM") as stopped:
        stages.run_stage("late", config, run_dir)
    assert stopped.value.exit_code == 143 and run_dir.is_done("late")
    assert stages.run_stage("late", config, run_dir) is None  # done: skipped, no signal pending any more


def test_a_stage_workers_interrupt_inside_a_destructor_is_not_printed(monkeypatch):
    """Ray's cancel can land inside a library's `__del__`, where Python prints the interrupt as an ignored
    exception with a traceback; a stage worker drops that print (the stage reports the stop once) and prints any
    other ignored exception as before."""
    from types import SimpleNamespace

    from rlhf_syco.pipeline import _quiet_about_stops
    from rlhf_syco.preemption import at_once

    printed = []
    monkeypatch.setattr(sys, "__unraisablehook__", printed.append)
    for exc in (KeyboardInterrupt(), at_once(15), ValueError("a real bug")):
        _quiet_about_stops(SimpleNamespace(exc_type=type(exc), exc_value=exc, exc_traceback=None, err_msg=None,
                                           object=None))
    assert [type(u.exc_value) for u in printed] == [ValueError]
