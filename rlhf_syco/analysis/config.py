"""The `analysis` section of an experiment config (pydantic only: no heavy imports)."""

from __future__ import annotations

from pydantic import Field, field_validator

from rlhf_syco.strict import Strict

DEFAULT_FEATURES = ["matches_user_beliefs", "truthful", "longer", "positive", "hedging", "apologetic", "refuses",
                    "asks_question", "structured"]


class AnalysisConfig(Strict):
    # The pairs to analyse: null = this run's PM pairs (data/pm_train.jsonl; held out: data/pm_heldout.jsonl, the
    # PM's own); else an HH-RLHF-format .jsonl(.gz), a .jsonl of pairs in the project's format, or a hub dataset id.
    data: str | None = None
    data_split: str = "train"  # the hub dataset's split
    limit: int | None = Field(None, gt=0)  # at most this many pairs of `data`
    heldout_fraction: float = Field(0.2, gt=0, lt=1)  # of `data`, for the held-out accuracy
    features: list[str] = DEFAULT_FEATURES  # mechanical labellers (analysis.features.FEATURES)
    # LLM-labelled features, name -> what the question asks: "Which response {...}?", e.g.
    # {empathetic: "is more empathetic"}; asked of `llm` (hf_llm: a local model folder; openai: a server).
    llm_features: dict[str, str] = {}
    llm: str = "hf_llm"
    llm_options: dict = {}
    prior_scale: float = Field(1.0, gt=0)  # of the Laplace prior on each coefficient
    draws: int = Field(1000, gt=0)
    tune: int = Field(1000, gt=0)
    chains: int = Field(2, gt=0)
    min_pairs: int = Field(50, gt=0)  # a subset (a source) with fewer pairs is not fitted
    min_nonzero: int = Field(10, gt=0)  # a feature that differs on fewer pairs of a subset is not measurable there
    shard_size: int = Field(256, gt=0)  # pairs per cached shard of labels, the unit of resuming

    @field_validator("features")
    @classmethod
    def _known_features(cls, names: list[str]) -> list[str]:
        from rlhf_syco.analysis.features import FEATURES

        for name in names:
            FEATURES.check(name)
        if len(set(names)) != len(names):
            raise ValueError("a feature is listed twice")
        return names
