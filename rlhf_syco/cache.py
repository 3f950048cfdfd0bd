"""Reusable artifacts: replies, sample pools, scores and judgments, cached under the run folder, each keyed by
the fingerprint of everything it depends on (`rundir.fingerprint`).

The key lives in a sidecar `<file>.key` written after the file, with the file's size and sha256: a file without
a matching sidecar (another key, a crash in between, a damaged file) is recomputed, so a changed setting never
mixes old and new results.

An artifact that depends on nothing run-specific (the policy's sample pool and its judgments: the policy,
prompts, sampling settings and seed) can also be kept in a store shared by every run of a runs folder
(`shared`: `<runs_dir>/.shared/`, addressed by key): a run that finds its key there links the file into its own
folder instead of computing it, so runs that differ only in their PM sample and judge once. Files are written
to a temporary name and renamed, so concurrent runs never read a partial one.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

from rlhf_syco.rundir import atomic_write

SHARED = ".shared"


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".key")


def _encode(path: Path, value: Any) -> bytes:
    if path.suffix == ".jsonl":
        return "".join(json.dumps(r, default=str) + "\n" for r in value).encode()
    if path.suffix == ".json":
        return (json.dumps(value, default=str) + "\n").encode()
    if path.suffix == ".parquet":
        import io

        buffer = io.BytesIO()
        value.to_parquet(buffer, index=False)
        return buffer.getvalue()
    raise ValueError(f"no cache format for {path.suffix!r} files")


def _decode(path: Path, data: bytes) -> Any:
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in data.decode().splitlines() if line.strip()]
    if path.suffix == ".json":
        return json.loads(data)
    import io

    import pandas as pd

    return pd.read_parquet(io.BytesIO(data))


def load_cached(path: str | os.PathLike, key: str, shared: Path | None = None) -> Any | None:
    """The artifact at `path` (.jsonl rows, .json, .parquet DataFrame) if it was stored with `key` and is
    intact, or else found under `key` in the `shared` store (and linked into `path`); else None."""
    path = Path(path)
    value = _load(path, key)
    if value is None and shared is not None:
        source = _shared_path(shared, key, path)
        value = _load(source, key)
        if value is not None:
            _link(source, path)
            _link(_sidecar(source), _sidecar(path))
    return value


def _load(path: Path, key: str) -> Any | None:
    try:
        meta = json.loads(_sidecar(path).read_text())
        data = path.read_bytes()
    except (OSError, ValueError):
        return None
    if meta.get("key") != key:
        return None  # made from other inputs: recomputed, as expected
    if meta.get("bytes") != len(data) or meta.get("sha256") != _sha256(data):
        from rlhf_syco.progress import console

        console.print(f"[yellow]warning: {path} is damaged ({len(data)} bytes, {meta.get('bytes')} when written, or "
                      f"its sha256 differs); computing it again[/yellow]", highlight=False, soft_wrap=True)
        return None
    return _decode(path, data)


def store_cached(path: str | os.PathLike, key: str, value: Any, shared: Path | None = None) -> Any:
    """Write `value` to `path` and then its sidecar (and link both into the `shared` store); returns `value`."""
    path = Path(path)
    data = _encode(path, value)
    atomic_write(path, data)
    atomic_write(_sidecar(path), json.dumps({"key": key, "bytes": len(data), "sha256": _sha256(data)}))
    if shared is not None:
        target = _shared_path(shared, key, path)
        _link(path, target)
        _link(_sidecar(path), _sidecar(target))  # the sidecar last: a reader sees the file whole or not at all
    return value


def cached(path: str | os.PathLike, key: str, compute, shared: Path | None = None) -> Any:
    """`load_cached`, else `compute()` stored under `key`."""
    value = load_cached(path, key, shared)
    return store_cached(path, key, compute(), shared) if value is None else value


def _shared_path(shared: Path, key: str, path: Path) -> Path:
    return Path(shared) / key[:2] / f"{key}-{path.name}"


def _link(source: Path, target: Path) -> None:
    """`target` becomes a hard link to `source` (a copy across filesystems), replacing it atomically."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        os.link(source, tmp)
    except OSError:
        shutil.copyfile(source, tmp)
    os.replace(tmp, target)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
