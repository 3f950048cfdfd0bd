"""The networks PPO trains and reads: the policy and the value function as one module, the frozen reference, and
the forward pass that gives their logits and values at the reply positions only.

By default the policy and the value model are separate networks (no shared trunk) wrapped in one module, as TRL
does, so accelerate and DeepSpeed ZeRO-2/3 manage one engine and one optimizer. The value model is a sequence
classifier whose one-output `score` head is applied at every token: the policy with a fresh head (TRL) or the
PM with its reward head (InstructGPT), optionally cut to its first `ppo.value_layers` layers. With
`ppo.value_head: policy_trunk` the value function is a scalar head on the policy's last hidden state instead,
see `load_value_model`.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from rlhf_syco.errors import UserError
from rlhf_syco.generation import derive_seed


class PolicyAndValue(nn.Module):
    """The policy and the value function as one module: `forward` gives, for the last `response_length`
    positions, the policy's next-token logits and the value of the state before each response token. `value` is
    a separate value model (a sequence classifier, `value_model`) or a linear head on the policy's last hidden
    state (`value_head`)."""

    def __init__(self, policy, value):
        super().__init__()
        self.policy = policy
        shared = isinstance(value, nn.Linear)
        self.value_model, self.value_head = (None, value) if shared else (value, None)
        self.config = policy.config  # accelerate sizes DeepSpeed buckets from `config.hidden_size`

    def forward(self, input_ids, attention_mask, response_length: int):
        position_ids = (attention_mask.cumsum(1) - 1).clamp(min=0)  # left padding, as in generation
        if self.value_head is not None:  # one pass: the values read the policy's own last hidden state
            out = self.policy(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                              logits_to_keep=response_length + 1, use_cache=False, output_hidden_states=True)
            hidden = out.hidden_states[-1][:, -response_length - 1:-1]
            return out.logits[:, :-1], self.value_head(hidden).squeeze(-1)
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


def load_value_model(config, run_dir, tokenizer, reward_model: str, policy=None):
    """The value function. A separate network: the policy with a fresh scalar head (TRL), or the arm's reward
    model `reward_model` with its reward head (InstructGPT), which must then be an `hf` decoder with the policy's
    tokenizer, so that it can read the policy's tokens and give a value at every one of them; cut to its first
    `ppo.value_layers` layers when set. With `ppo.value_head: policy_trunk`, a fresh linear head for `policy`'s
    last hidden state."""
    from reward_models.hf import HFRewardModel

    from rlhf_syco.config import ModelConfig
    from rlhf_syco.models import build_reward_models, load_sequence_classifier

    ppo = config.ppo
    torch.manual_seed(derive_seed(config.seed, "value-head"))  # a fresh head's initialisation
    if ppo.value_head == "policy_trunk":
        head = nn.Linear(policy.config.hidden_size, 1, bias=False, dtype=policy.dtype)
        nn.init.normal_(head.weight, std=getattr(policy.config, "initializer_range", 0.02))
        return head
    source = config.policy.model
    if config.ppo.value_init == "pm":
        pm = build_reward_models(config, run_dir, [reward_model])[reward_model]
        if not isinstance(pm, HFRewardModel):
            raise UserError(f"value_init: pm needs each of ppo.reward_models to be an `hf` reward model, not "
                            f"{type(pm).__name__}", "ppo.value_init")
        s = pm.settings
        source = ModelConfig(name_or_path=s.path, revision=s.revision, trust_remote_code=s.trust_remote_code,
                             dtype=config.policy.model.dtype)
    model, value_tokenizer = load_sequence_classifier(source)
    if value_tokenizer.get_vocab() != tokenizer.get_vocab():
        raise UserError(f"value_init: pm needs a PM with the policy's tokenizer ({source.name_or_path} has "
                        "another); use value_init: policy", "ppo.value_init")
    if ppo.value_layers:
        keep_first_layers(model, ppo.value_layers)
    return model


def keep_first_layers(model, layers: int) -> None:
    """Cut a decoder (its backbone's `layers`, as Llama, Qwen, Mistral and SmolLM2 have them) to its first
    `layers` layers; its final norm and head stay."""
    backbone = getattr(model, model.base_model_prefix)
    blocks = getattr(backbone, "layers", None)
    if not isinstance(blocks, nn.ModuleList) or layers > len(blocks):
        have = f"{len(blocks)} layers" if isinstance(blocks, nn.ModuleList) else "no `layers` list"
        raise UserError(f"cannot keep the first {layers} layers of {type(model).__name__} ({have})",
                        "ppo.value_layers")
    backbone.layers = blocks[:layers]
    model.config.num_hidden_layers = layers
    if getattr(model.config, "layer_types", None):
        model.config.layer_types = model.config.layer_types[:layers]
