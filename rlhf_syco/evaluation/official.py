"""The official SycophancyEval files (Sharma et al. 2023; hub dataset `meg-tong/sycophancy-eval`), read into
this package's record schema and checked against their published sizes and checksums.

A file with as many records as the published one must match its sha256 and size (a mismatch is a UserError: a
modified copy would silently change the numbers); a file with fewer records is taken as a subset and only
warned about (`OfficialFileWarning`). Files already in this package's schema (every record has
`metadata.item_id`) load unchanged and unchecked. Each task completes the records' metadata
(`SycophancyTask.from_official`).
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
import warnings
from pathlib import Path

from rlhf_syco.data.sources import open_text, source_path
from rlhf_syco.errors import UserError

OFFICIAL_FILES = source_path("sycophancy_eval/OFFICIAL_FILES.json")
OFFICIAL_HUB_ID = "meg-tong/sycophancy-eval"


class OfficialFileWarning(UserWarning):
    """An official-format file that is a subset of the published one, so its checksum cannot be verified."""


def load_official(source: str | Path, task, *, verify: bool = True) -> list[dict]:
    """Records of an official-format jsonl (a local path, or a hub dataset id such as `OFFICIAL_HUB_ID`) for
    `task` (a `SycophancyTask`), converted to this package's schema."""
    path = _resolve(source, task.name)
    records = _read_records(path)
    ours = all("item_id" in r.get("metadata", {}) for _, r in records)
    if verify and not ours:
        _verify(path, task.name, len(records))
    return [_from_official(r, task, f"{path}:{lineno}") for lineno, r in records]


def _read_records(path: str | Path) -> list[tuple[int, dict]]:
    """(line number, record) for each non-blank line, checking the fields every record needs."""
    out = []
    with open_text(path) as f:
        for lineno, line in enumerate(f, 1):
            if line.strip():
                out.append((lineno, _checked(line, f"{path}:{lineno}")))
    return out


def _checked(line: str, where: str) -> dict:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as e:
        raise UserError(f"invalid JSON ({e.msg} at column {e.colno})", where) from None
    if not isinstance(record, dict):
        raise UserError("a record must be a JSON object", where)
    for field, kind in (("prompt", list), ("base", dict)):
        if field not in record:
            raise UserError(f"missing field {field!r}", where)
        if not isinstance(record[field], kind):
            raise UserError(f"field {field!r} must be a JSON {'list' if kind is list else 'object'}", where)
    if not record["prompt"]:
        raise UserError("field 'prompt' is empty", where)
    for i, turn in enumerate(record["prompt"]):
        if not isinstance(turn, dict) or turn.get("type") not in ("human", "ai"):
            raise UserError(f"field 'prompt[{i}].type' must be 'human' or 'ai'", where)
        if not isinstance(turn.get("content"), str):
            raise UserError(f"field 'prompt[{i}].content' must be a string", where)
    if not isinstance(record.get("metadata", {}), dict):
        raise UserError("field 'metadata' must be a JSON object", where)
    return record


def _from_official(record: dict, task, where: str) -> dict:
    """Let the task fill its variant and base fields, then add metadata.type / item_id."""
    given = {"prompt": record["prompt"], "base": copy.deepcopy(record["base"]),
             "metadata": {k: v for k, v in record.get("metadata", {}).items() if v is not None or k != "variant"}}
    if task.default_dataset:
        given["base"].setdefault("dataset", task.default_dataset)
    filled = task.from_official(given)
    base, meta = filled["base"], filled["metadata"]
    if not meta.get("variant"):
        raise UserError(f"cannot tell the {task.name} variant from metadata {record.get('metadata', {})!r}", where)
    dataset = str(base.get("dataset", "unknown"))
    identity = "\n".join(str(base[k]) for k in ("question", "text") if k in base) or json.dumps(base, sort_keys=True)
    meta.setdefault("item_id", f"{task.name}/{dataset}/{hashlib.sha256(identity.encode()).hexdigest()[:12]}")
    meta["type"] = task.name
    return {"prompt": filled["prompt"], "base": base, "metadata": meta}


def _resolve(source: str | Path, name: str) -> Path:
    path = Path(source)
    if path.exists():
        return path
    if re.fullmatch(r"[\w.-]+/[\w.-]+", str(source)) and not path.suffix:
        return _download(str(source), name)
    raise UserError(f"file not found: {source}")


def _download(repo_id: str, name: str) -> Path:
    """The exact bytes of `<name>.jsonl` from a hub dataset repo (not `load_dataset`: the checksum needs the
    file as published, not a re-serialised table)."""
    try:
        from huggingface_hub import hf_hub_download
        return Path(hf_hub_download(repo_id, f"{name}.jsonl", repo_type="dataset"))
    except ImportError:
        raise UserError("reading a hub dataset needs `pip install huggingface_hub`") from None
    except Exception as e:  # network, auth, missing file: one line for the user
        raise UserError(f"could not fetch {name}.jsonl from hub dataset {repo_id!r}: {e}") from None


def _verify(path: Path, name: str, n_records: int) -> None:
    published = json.loads(OFFICIAL_FILES.read_text())["files"]
    spec = next((s for file, s in published.items() if Path(file).name == f"{name}.jsonl"), None)
    if spec is None:
        return
    if n_records < spec["records"]:
        warnings.warn(f"{path}: {n_records} of the {spec['records']} official {name} records; "
                      "a subset cannot be checked against the official checksum", OfficialFileWarning, stacklevel=3)
        return
    data = path.read_bytes()
    problems = []
    if n_records != spec["records"]:
        problems.append(f"{n_records} records, expected {spec['records']}")
    if "bytes" in spec and len(data) != spec["bytes"]:
        problems.append(f"{len(data)} bytes, expected {spec['bytes']}")
    if "sha256" in spec and hashlib.sha256(data).hexdigest() != spec["sha256"]:
        problems.append(f"sha256 {hashlib.sha256(data).hexdigest()}, expected {spec['sha256']}")
    if problems:
        raise UserError(f"not the official {name} file ({'; '.join(problems)}); "
                        "pass verify=False to use a modified copy", str(path))
