"""The networks PPO trains and reads: the policy and the value model as one module, the frozen reference, and
the forward pass that gives their logits and values at the reply positions only.

The policy and the value model are separate networks (no shared trunk) wrapped in one module, as TRL does, so
accelerate and DeepSpeed ZeRO-2/3 manage one engine and one optimizer. The value model is a sequence
classifier whose one-output `score` head is applied at every token: the policy with a fresh head (TRL) or the
PM with its reward head (InstructGPT), see `load_value_model`.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from rlhf_syco.errors import UserError
from rlhf_syco.generation import derive_seed


class PolicyAndValue(nn.Module):
    """The policy and the value model as one module: `forward` gives, for the last `response_length`
    positions, the policy's next-token logits and the value of the state before each response token."""

    def __init__(self, policy, value_model):
        super().__init__()
        self.policy, self.value_model = policy, value_model
        self.config = policy.config  # accelerate sizes DeepSpeed buckets from `config.hidden_size`

    def forward(self, input_ids, attention_mask, response_length: int):
        position_ids = (attention_mask.cumsum(1) - 1).clamp(min=0)  # left padding, as in generation
        logits = self.policy(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                             logits_to_keep=response_length + 1, use_cache=False).logits[:, :-1]
        backbone = getattr(self.value_model, self.value_model.base_model_prefix)
        hidden = backbone(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                          use_cache=False).last_hidden_state
        values = self.value_model.score(hidden[:, -response_length - 1:-1]).squeeze(-1)
        return logits, values


def forward(model, input_ids, attention_mask, response_length: int):
    """Logits (and values, for the policy-and-value module, possibly wrapped by accelerate or DeepSpeed) over
    the last `response_length` positions, after dropping the left-padding columns that all rows share."""
    keep = int(attention_mask.any(0).int().argmax())
    input_ids, attention_mask = input_ids[:, keep:], attention_mask[:, keep:]
    if isinstance(getattr(model, "module", model), PolicyAndValue):
        return model(input_ids, attention_mask, response_length)
    position_ids = (attention_mask.cumsum(1) - 1).clamp(min=0)
    return model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                 logits_to_keep=response_length + 1, use_cache=False).logits[:, :-1]


def without_dropout(model) -> None:
    """Dropout off: it would make the PPO ratio noisy (TRL does the same)."""
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0


def frozen_reference(model, accelerator, zero3: bool):
    """The reference policy: no gradients, on the device; under ZeRO-3 partitioned like the policy (a
    DeepSpeed inference engine), so an 8B reference does not sit whole on every GPU."""
    model.requires_grad_(False).eval()
    if not zero3:
        return model.to(accelerator.device)
    import copy

    import deepspeed

    config = copy.deepcopy(accelerator.state.deepspeed_plugin.deepspeed_config)
    config.pop("optimizer", None)
    config.pop("scheduler", None)
    engine, *_ = deepspeed.initialize(model=model, config=config)
    engine.eval()
    return engine


@contextlib.contextmanager
def gathered_policy(accelerator, model, zero3: bool):
    """The bare policy of the prepared policy-and-value `model`, for `generate`; under ZeRO-3 its parameters
    are gathered on every process first (and partitioned again on exit)."""
    policy = accelerator.unwrap_model(model).policy
    if not zero3:
        yield policy
        return
    import deepspeed

    with deepspeed.zero.GatheredParameters(list(policy.parameters())):
        yield policy


def load_value_model(config, run_dir, tokenizer, reward_model: str):
    """The value network: the policy with a fresh scalar head (TRL), or the arm's reward model `reward_model`
    with its reward head (InstructGPT); that must then be an `hf` decoder with the policy's tokenizer, so that it
    can read the policy's tokens and give a value at every one of them."""
    from reward_models.hf import HFRewardModel

    from rlhf_syco.config import ModelConfig
    from rlhf_syco.models import build_reward_models, load_sequence_classifier

    source = config.policy.model
    if config.ppo.value_init == "pm":
        pm = build_reward_models(config, run_dir, [reward_model])[reward_model]
        if not isinstance(pm, HFRewardModel):
            raise UserError(f"value_init: pm needs each of ppo.reward_models to be an `hf` reward model, not "
                            f"{type(pm).__name__}", "ppo.value_init")
        s = pm.settings
        source = ModelConfig(name_or_path=s.path, revision=s.revision, trust_remote_code=s.trust_remote_code,
                             dtype=config.policy.model.dtype)
    torch.manual_seed(derive_seed(config.seed, "value-head"))  # a fresh head's initialisation
    model, value_tokenizer = load_sequence_classifier(source)
    if value_tokenizer.get_vocab() != tokenizer.get_vocab():
        raise UserError(f"value_init: pm needs a PM with the policy's tokenizer ({source.name_or_path} has "
                        "another); use value_init: policy", "ppo.value_init")
    return model
