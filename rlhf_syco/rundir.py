"""Run folders: `runs/<name>/` with a manifest, one sub-folder per stage, and `results/`.

Every file goes through `atomic_write` / `atomic_path` (temp file + rename), so a crash never leaves a
half-written artifact. A stage writes `DONE.json` into its folder last: a rerun skips finished stages and an
interrupted stage restarts from its own checkpoints.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import hashlib
import json
import os
import platform
import shutil
import subprocess
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any, Iterator

SECRET_WORDS = ("key", "token", "secret", "password", "passwd", "authorization")
TRACKED_PACKAGES = ("rlhf-syco", "torch", "transformers", "trl", "accelerate", "datasets", "deepspeed",
                    "ray", "pydantic", "numpy", "pandas", "pyarrow", "safetensors", "peft")


def is_main_process() -> bool:
    """Rank 0 of a multi-process launch (torchrun / accelerate / deepspeed set RANK), or a single process.
    Only the main process writes run-level files (manifest, done-markers)."""
    return int(os.environ.get("RANK", "0")) == 0


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, is_dir: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling path; on success it replaces `path` in one rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent)) if is_dir else \
        path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        if is_dir and path.exists():
            old = path.with_name(f".{path.name}.old.{os.getpid()}")
            path.rename(old)
            tmp.rename(path)
            shutil.rmtree(old)
        else:
            os.replace(tmp, path)
    except BaseException as e:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT) and e.filename is None:
            raise OSError(e.errno, e.strerror, str(path)) from e  # a full disk says which file it was writing
        raise


def atomic_write(path: str | os.PathLike, data: str | bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data.encode() if isinstance(data, str) else data)
    return Path(path)


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write(path, json.dumps(obj, indent=2, default=str) + "\n")


def write_jsonl(path: str | os.PathLike, rows) -> Path:
    return atomic_write(path, "".join(json.dumps(r, default=str) + "\n" for r in rows))


def read_json(path: str | os.PathLike) -> Any:
    return json.loads(Path(path).read_text())


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def fingerprint(obj: Any) -> str:
    """A short hash of what an artifact depends on (its settings and inputs, as JSON with sorted keys)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


# --------------------------------------------------------------------------- sealed checkpoint folders

SEAL = "SEALED.json"


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def seal(folder: str | os.PathLike) -> Path:
    """Record every file of a finished checkpoint folder (size and sha256) in its `SEALED.json`, written last."""
    folder = Path(folder)
    files = {str(p.relative_to(folder)): {"bytes": p.stat().st_size, "sha256": _file_sha256(p)}
             for p in sorted(folder.rglob("*")) if p.is_file() and p.name != SEAL}
    return write_json(folder / SEAL, {"files": files})


def seal_damage(folder: str | os.PathLike) -> str | None:
    """Why a checkpoint folder does not match its seal (unsealed, a file missing, short or changed), or None."""
    folder = Path(folder)
    try:
        files = read_json(folder / SEAL)["files"]
    except (OSError, ValueError, KeyError):
        return f"no {SEAL} (it was not finished)"
    for name, want in files.items():
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != want["bytes"]:
            return f"{name} has {path.stat().st_size} bytes, {want['bytes']} when written"
        if _file_sha256(path) != want["sha256"]:
            return f"{name} changed since it was written (sha256 differs)"
    return None


def newest_intact(folders, step_of) -> Path | None:
    """The newest (by `step_of`) of `folders` that matches its seal; each newer damaged one is moved into
    `.damaged/` beside it (out of sight of checkpoint rotation) with a one-line warning, so the run resumes
    from the one before it."""
    from rlhf_syco.progress import console

    for folder in sorted(folders, key=step_of, reverse=True):
        damage = seal_damage(folder)
        if damage is None:
            return folder
        aside = folder.parent / ".damaged" / folder.name
        shutil.rmtree(aside, ignore_errors=True)
        aside.parent.mkdir(exist_ok=True)
        folder.rename(aside)
        console.print(f"[yellow]warning: checkpoint {folder} is damaged ({damage}); moved to {aside}, "
                      f"resuming from the one before it[/yellow]", highlight=False, soft_wrap=True)
    return None


def redact(obj: Any) -> Any:
    """Drop the values of secret-looking keys (API keys, tokens) before anything is written or logged."""
    if isinstance(obj, dict):
        return {k: ("<redacted>" if _is_secret(k) and v not in (None, "") and not str(k).endswith("_env")
                    else redact(v)) for k, v in obj.items()}
    if isinstance(obj, list):
        return [redact(v) for v in obj]
    return obj


def _is_secret(key: Any) -> bool:
    k = str(key).lower()
    return any(w in k for w in SECRET_WORDS) and not k.endswith(("_tokens", "tokens", "_env"))


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in TRACKED_PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                              cwd=Path(__file__).resolve().parent).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


LOCK = ".lock"


def _holder_alive(holder: dict, me: dict) -> bool:
    """Whether the process named by a lock may still run: checked on this host; elsewhere assumed, except for
    an earlier attempt of this same Slurm job."""
    if not holder.get("pid"):
        return False
    if holder.get("slurm_job") and holder.get("slurm_job") == me["slurm_job"]:
        return False
    if holder.get("host") != me["host"]:
        return True
    try:
        os.kill(int(holder["pid"]), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _release(path: Path, pid: int) -> None:
    try:
        if json.loads(path.read_text()).get("pid") == pid:
            path.unlink()
    except (OSError, ValueError):
        pass


class RunDir:
    """A run folder. Stages write only to `stage(name)`; tables go to `results/`."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self.results = self.path / "results"
        self.results.mkdir(exist_ok=True)

    def __fspath__(self) -> str:
        return str(self.path)

    def __truediv__(self, other: str) -> Path:
        return self.path / other

    @property
    def manifest_path(self) -> Path:
        return self.path / "manifest.json"

    def lock(self) -> None:
        """Hold this run folder for this process (the main one of a launch) until it exits. A second process
        gets one line naming the holder; a lock left by a dead process on this host, or by an earlier
        attempt of the same Slurm job (a requeue), is taken over with a warning."""
        if not is_main_process():
            return
        import atexit
        import socket

        from rlhf_syco.errors import UserError
        from rlhf_syco.progress import console

        path = self.path / LOCK
        me = {"pid": os.getpid(), "host": socket.gethostname(), "slurm_job": os.environ.get("SLURM_JOB_ID"),
              "since": now()}
        for _ in range(3):  # a lock that vanishes or turns stale between looks is looked at again
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                try:
                    holder = json.loads(path.read_text())
                except (OSError, ValueError):
                    holder = {}
                if holder.get("pid") == me["pid"] and holder.get("host") == me["host"]:
                    return
                alive = _holder_alive(holder, me)
                where = f"pid {holder.get('pid')} on {holder.get('host')}, since {holder.get('since')}"
                if alive:
                    hint = "" if holder.get("host") == me["host"] else f"; if that process is gone, delete {path}"
                    raise UserError(f"run folder {self.path} is in use by {where}: wait for it, or choose another "
                                    f"name={hint}") from None
                console.print(f"[yellow]warning: taking over the lock of {self.path} from {where} "
                              f"(no longer running)[/yellow]", highlight=False, soft_wrap=True)
                path.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            atexit.register(self.unlock)
            return

    def unlock(self) -> None:
        """Give the run folder up, if this process holds it (at exit, or once a caller is done with it)."""
        _release(self.path / LOCK, os.getpid())

    def stage(self, name: str) -> Path:
        d = self.path / name
        d.mkdir(parents=True, exist_ok=True)
        return d

    def is_done(self, name: str) -> bool:
        return (self.path / name / "DONE.json").exists()

    def mark_done(self, name: str, summary: dict | None = None) -> None:
        if not is_main_process():
            return
        write_json(self.stage(name) / "DONE.json", {"finished": now(), **(summary or {})})

    def reset(self, name: str) -> None:
        """`--force STAGE`: forget a stage entirely, checkpoints included."""
        shutil.rmtree(self.path / name, ignore_errors=True)

    def manifest(self) -> dict:
        return read_json(self.manifest_path) if self.manifest_path.exists() else {}

    def update_manifest(self, **fields: Any) -> dict:
        m = self.manifest()
        if not is_main_process():
            return m
        for k, v in fields.items():
            if isinstance(v, dict) and isinstance(m.get(k), dict):
                m[k] = {**m[k], **v}
            else:
                m[k] = v
        write_json(self.manifest_path, redact(m))
        return m

    def start(self, config_dump: dict, seed: int) -> None:
        m = self.manifest()
        self.update_manifest(
            config=config_dump, seed=seed, packages=package_versions(), git_commit=git_commit(),
            created=m.get("created", now()), started=now(), host=platform.node(),
        )
