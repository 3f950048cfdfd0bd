"""A PPO rollout: sample one reply per prompt, score its text, and record what the update needs about it.

1. Sampling goes through `rlhf_syco.generation` (the chat template, then `sample_tokens`), from the full
   distribution (top-p 1, top-k off) at the trainer's temperature, up to `max_new_tokens` tokens, stopping at the
   evaluation's stop set. The RNG is seeded once with the rollout's seed before its first batch, so the samples
   depend only on that seed and the prompts.
2. The reply *text* (stop token and special tokens removed) is scored by the reward model, so the PM may have its
   own tokenizer, be a prompted wrapper, a server or a function.
3. One no-grad pass of the policy-and-value module and of the frozen reference over prompt + reply gives the old
   log-probs, the values and the reference log-probs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from rlhf_syco.generation import encode_prompts, render_prompts, reply_extent, sample_tokens
from rlhf_syco.ppo import core
from rlhf_syco.ppo.model import forward

if TYPE_CHECKING:
    from rlhf_syco.ppo.trainer import PPOTrainer


@dataclass
class Rollout:
    """One reply to each of B conversations (this process's share). P is the padded prompt length, T the longest
    reply's length (at most `max_new_tokens`). Per-token tensors are float32, 0 outside `mask`, and sit on the
    accelerator's device."""

    input_ids: torch.Tensor  # (B, P + T) long: the left-padded prompt, then the reply
    attention_mask: torch.Tensor  # (B, P + T) long: the prompt's mask, then `mask`
    responses: torch.Tensor  # (B, T) long: reply token ids, padded after the stop token
    mask: torch.Tensor  # (B, T) float: 1 on each reply's tokens up to and including its first stop token
    ended: torch.Tensor  # (B,) bool: the reply has a stop token (it did not run out of tokens)
    replies: list[str]  # B reply texts, up to the stop token, special tokens removed
    scores: torch.Tensor  # (B,) float32: the reward model's score of each reply (no penalty applied)
    logprobs: torch.Tensor  # (B, T): the policy's log-probs of the reply tokens, at the sampling temperature
    ref_logprobs: torch.Tensor  # (B, T): the reference policy's, likewise
    values: torch.Tensor  # (B, T): the value of the state before each reply token
    kl: torch.Tensor  # (B, T): per-token k1 KL to the reference, logprobs - ref_logprobs
    entropy: torch.Tensor  # (): mean per-token entropy of the policy over the reply tokens

    @property
    def response_length(self) -> int:
        return self.responses.shape[1]


def rollout(trainer: PPOTrainer, conversations: list, seed: int) -> Rollout:
    """Sample and score one reply per conversation with `trainer`'s policy, reference, value model, reward model
    and sampling settings (`temperature`, `max_new_tokens`, `stop_ids`, `generation_batch_size`: prompts per
    `generate` call and per no-grad pass)."""
    tok, device, size = trainer.tokenizer, trainer.accelerator.device, trainer.generation_batch_size
    query_ids, query_mask = encode_prompts(tok, render_prompts(tok, conversations), device)
    # Padded to the rollout's longest prompt, then cut into batches: the input of the forward passes below.
    batches = ((query_ids[start:start + size], query_mask[start:start + size])
               for start in range(0, len(query_ids), size))
    with trainer.unwrapped_policy() as policy:
        responses = sample_tokens(policy, batches, max_new_tokens=trainer.max_new_tokens,
                                  stop_ids=trainer.stop_ids.tolist(), pad_token_id=tok.pad_token_id,
                                  temperature=trainer.temperature, top_p=1.0, seed=seed, seed_per_batch=False)
    length = responses.shape[1]
    ended, first_stop, mask = reply_extent(responses, trainer.stop_ids.to(device))
    input_ids = torch.cat([query_ids, responses], 1)
    attention_mask = torch.cat([query_mask, mask.long()], 1)

    parts: dict[str, list] = {k: [] for k in ("logprobs", "values", "ref_logprobs", "entropy")}
    with torch.no_grad():
        for start in range(0, len(conversations), size):
            rows = slice(start, start + size)
            logits, values = forward(trainer.model, input_ids[rows], attention_mask[rows], length)
            logits /= trainer.temperature
            parts["logprobs"].append(core.logprobs_of(logits, responses[rows]))
            parts["entropy"].append(core.entropy_of(logits))
            parts["values"].append(values)
            ref_logits = forward(trainer.ref_policy, input_ids[rows], attention_mask[rows], length)
            ref_logits /= trainer.temperature
            parts["ref_logprobs"].append(core.logprobs_of(ref_logits, responses[rows]))
    out = {k: torch.cat(v).float() * mask for k, v in parts.items()}
    replies = [tok.decode(row[:int(n)], skip_special_tokens=True)
               for row, n in zip(responses.tolist(), first_stop.tolist())]
    scores = trainer.reward_model.score(conversations, replies)
    return Rollout(input_ids=input_ids, attention_mask=attention_mask, responses=responses, mask=mask, ended=ended,
                   replies=replies, scores=torch.tensor(scores, dtype=torch.float32, device=device),
                   logprobs=out["logprobs"], ref_logprobs=out["ref_logprobs"], values=out["values"],
                   kl=core.kl_per_token(out["logprobs"], out["ref_logprobs"], "k1"),
                   entropy=core.masked_mean(out["entropy"], mask))
