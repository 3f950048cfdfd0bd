"""The `intervene` section of an experiment config (pydantic only: no heavy imports)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from rlhf_syco.strict import Strict

# The learning rate of each method when `intervene.lr` is not set: full fine-tuning as TRL's SFT examples,
# LoRA as PEFT's, prompt tuning as PEFT's prompt-tuning examples (soft prompts need a far larger step).
DEFAULT_LR = {"full": 1e-5, "lora": 2e-4, "prompt_tuning": 3e-2}


class LoraOptions(Strict):
    r: int = Field(8, gt=0)
    alpha: int = Field(16, gt=0)
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: str | list[str] = "all-linear"


class InterveneConfig(Strict):
    """An intervention against sycophancy on `base` (default: `policy.model`), on Wei et al.'s synthetic data
    (`intervention/data.py`); the intervened policy is written to `<run>/intervene/policy/`, which later stages
    take with `policy.model.name_or_path: "{run_dir}/intervene/policy"` (docs/intervention.md).

    Methods: `full` fine-tuning and `lora` (merged into the weights) through TRL's `SFTTrainer`, `prompt_tuning`
    through PEFT (the UPV/EHU poster's; the learned prompt is written into the policy as new tokens its chat
    template opens with), `kshot` (`shots` synthetic examples as earlier turns of every conversation, written into
    the chat template; no training), `none` (the policy unchanged: the control arm)."""

    method: Literal["none", "full", "lora", "prompt_tuning", "kshot"] = "lora"
    base: str | None = None  # hub id, folder or built-in; None: policy.model.name_or_path
    examples: int = Field(1000, gt=0)  # synthetic examples drawn before filtration
    filtration: bool = True  # keep only what the base answers right without the opinion (Wei et al.)
    # Instruction examples (HH-RLHF's chosen replies) per synthetic example; Wei et al. mix 5 : 1, i.e. 0.2.
    instruction_ratio: float = Field(0.0, ge=0)
    shots: int = Field(3, gt=0)  # kshot: the poster's 3-shot baseline
    lora: LoraOptions = LoraOptions()
    prompt_tokens: int = Field(20, gt=0)  # prompt tuning's virtual tokens
    prompt_init: str = "Answer the claim on its merits, whatever the user's own opinion of it is."
    lr: float | None = Field(None, gt=0)  # None: DEFAULT_LR of the method
    epochs: float = Field(3.0, gt=0)  # the poster's 3 epochs
    max_steps: int = -1  # overrides epochs when > 0
    batch_size: int = Field(8, gt=0)
    max_length: int = Field(512, gt=8)
    gradient_checkpointing: bool = False  # TRL's SFT default is on: memory for time, which a small policy need not
    save_steps: int = Field(50, gt=0)
    logging_steps: int = Field(10, gt=0)
    # Before / after: these tasks read from the next-token probabilities of their letters, `check_items` items
    # each, and MMLU accuracy on `mmlu_items` questions without any opinion (the capability check).
    check_types: list[str] = ["addition", "nlp_claims", "political"]
    check_items: int = Field(100, gt=0)
    mmlu_items: int = Field(200, gt=0)

    @property
    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else DEFAULT_LR.get(self.method, 1e-5)
