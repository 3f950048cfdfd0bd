"""Generation: batched left-padded greedy decoding equals one prompt at a time and a hand-written greedy loop;
seeded sampling is reproducible, per batch (evaluation) or from one seed over all batches (PPO); the prefill
sits right after the generation prompt."""

import pytest
import torch

from rlhf_syco.config import GenerationConfig, ModelConfig
from rlhf_syco.errors import UserError
from rlhf_syco.generation import (HFGenerator, derive_seed, encode_prompts, make_generator, render_prompts,
                                  sample_tokens, to_chat)
from rlhf_syco.models import load_causal_lm

CONVERSATIONS = [
    [{"role": "user", "content": "Hello there, how are you doing today?"}],
    [{"role": "user", "content": "Hi"}],
    [{"role": "user", "content": "What is the capital of France? Please answer briefly."}],
    [{"role": "user", "content": "Name a poet."}, {"role": "assistant", "content": "Keats."},
     {"role": "user", "content": "Are you sure?"}],
    [{"role": "user", "content": "Which is larger, 3 or 5?"}],
]
PREFILLS = [None, "The answer is (", None, None, "The answer is ("]


@pytest.fixture(scope="module")
def model_and_tokenizer():
    """The tiny random decoder with large random weights, so that greedy outputs differ between prompts
    (at its default init it repeats one token whatever the prompt, which would make every comparison trivial)."""
    model, tokenizer = load_causal_lm(ModelConfig(name_or_path="tiny:decoder"), "cpu")
    rng = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.copy_(torch.randn(p.shape, generator=rng) * 0.5)
    return model, tokenizer


def generator(model_and_tokenizer, **config):
    return HFGenerator(*model_and_tokenizer, GenerationConfig(**{"max_new_tokens": 12, **config}))


def greedy_by_hand(model, tokenizer, text: str, steps: int, stop_ids) -> str:
    """Plain argmax loop over full forward passes: no cache, no padding, no `generate`."""
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
    new = []
    with torch.no_grad():
        for _ in range(steps):
            token = int(model(ids).logits[0, -1].argmax())
            if token in stop_ids:
                break
            new.append(token)
            ids = torch.cat([ids, torch.tensor([[token]])], dim=1)
    return tokenizer.decode(new, skip_special_tokens=True)


def test_batched_left_padded_greedy_equals_one_at_a_time_and_a_hand_loop(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    batched = generator(model_and_tokenizer, temperature=0, batch_size=4)
    together = batched.generate(CONVERSATIONS, 1, 0, PREFILLS)
    alone = [generator(model_and_tokenizer, temperature=0, batch_size=1).generate([c], 1, 0, [p])[0]
             for c, p in zip(CONVERSATIONS, PREFILLS)]
    assert together == alone
    assert len({r[0] for r in together}) == len(CONVERSATIONS)  # the comparison is not vacuous
    lengths = {len(tokenizer(batched.prompt_text(c, p))["input_ids"]) for c, p in zip(CONVERSATIONS, PREFILLS)}
    assert len(lengths) > 1 and tokenizer.padding_side == "left"
    for (conversation, prefill), reply in zip(zip(CONVERSATIONS, PREFILLS), together):
        text = batched.prompt_text(conversation, prefill)
        assert reply[0] == greedy_by_hand(model, tokenizer, text, 12, batched.stop_ids)


def test_greedy_with_n_returns_n_copies(model_and_tokenizer):
    replies = generator(model_and_tokenizer, temperature=0).generate(CONVERSATIONS[:2], 3, 0)
    assert [len(r) for r in replies] == [3, 3] and all(len(set(r)) == 1 for r in replies)


def test_sampling_is_reproducible_under_a_seed_whatever_ran_before(model_and_tokenizer):
    sampler = generator(model_and_tokenizer, temperature=1.0, top_p=0.95, batch_size=2, max_new_tokens=8)
    conversations, prefills = CONVERSATIONS[:3], PREFILLS[:3]
    first = sampler.generate(conversations, 2, 7, prefills)
    torch.manual_seed(123)
    sampler.generate(conversations[:1], 2, 99)  # other work in between
    state = torch.get_rng_state()
    again = sampler.generate(conversations, 2, 7, prefills)
    assert torch.equal(state, torch.get_rng_state())  # the caller's RNG is left alone
    assert first == again
    assert [len(r) for r in first] == [2, 2, 2]
    assert first != sampler.generate(conversations, 2, 8, prefills)
    assert any(a != b for a, b in first)  # two samples of one prompt differ


def test_n_samples_from_one_cached_prompt_equal_transformers_num_return_sequences(model_and_tokenizer):
    """The prompt's KV cache is computed once and copied n times; transformers' own `num_return_sequences`
    runs each prompt n times. Same seed, same random numbers: the same samples."""
    model, tokenizer = model_and_tokenizer
    sampler = generator(model_and_tokenizer, temperature=1.0, batch_size=3, max_new_tokens=10)
    conversations, prefills = CONVERSATIONS[:3], PREFILLS[:3]
    ours = sampler.generate(conversations, 4, 5, prefills)
    texts = [sampler.prompt_text(c, p) for c, p in zip(conversations, prefills)]
    batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    torch.manual_seed(derive_seed(5, 0))
    with torch.no_grad():
        out = model.generate(**batch, do_sample=True, temperature=1.0, top_p=1.0, top_k=0, max_new_tokens=10,
                             num_return_sequences=4, eos_token_id=sampler.stop_ids,
                             pad_token_id=tokenizer.pad_token_id)
    decoded = [sampler._decode(row) for row in out[:, batch["input_ids"].shape[1]:]]
    assert ours == [decoded[i:i + 4] for i in range(0, 12, 4)]
    assert len({s for samples in ours for s in samples}) > 3  # the comparison is not vacuous


def test_one_seed_over_all_batches_is_one_stream_of_generate_calls(model_and_tokenizer):
    """PPO's contract (`seed_per_batch=False`): one manual_seed, then the batches in order, the caller's RNG
    untouched; the replies come back padded to the longest, after their stop tokens."""
    model, tokenizer = model_and_tokenizer
    stop = HFGenerator(model, tokenizer, GenerationConfig()).stop_ids
    ids, mask = encode_prompts(tokenizer, render_prompts(tokenizer, CONVERSATIONS), "cpu")
    batches = [(ids[i:i + 2], mask[i:i + 2]) for i in range(0, len(ids), 2)]
    options = dict(max_new_tokens=8, stop_ids=stop, pad_token_id=tokenizer.pad_token_id, temperature=0.7)
    state = torch.get_rng_state()
    ours = sample_tokens(model, batches, **options, seed=3, seed_per_batch=False)
    assert torch.equal(state, torch.get_rng_state())
    torch.manual_seed(3)
    with torch.no_grad():
        by_hand = [model.generate(input_ids=i, attention_mask=m, do_sample=True, temperature=0.7, top_p=1.0, top_k=0,
                                  max_new_tokens=8, eos_token_id=stop, pad_token_id=tokenizer.pad_token_id)[:, i.shape[1]:]
                   for i, m in batches]
    assert ours.shape == (len(CONVERSATIONS), max(b.shape[1] for b in by_hand))
    for rows, theirs in zip(ours.split(2), by_hand):
        assert torch.equal(rows[:, :theirs.shape[1]], theirs)
        assert (rows[:, theirs.shape[1]:] == tokenizer.pad_token_id).all()
    per_batch = sample_tokens(model, batches, **options, seed=3)
    assert not torch.equal(per_batch, ours)  # seeded batch by batch: another stream


def test_rendering_is_the_template_then_the_prefill(model_and_tokenizer):
    tokenizer = model_and_tokenizer[1]
    texts = render_prompts(tokenizer, CONVERSATIONS, PREFILLS)
    assert texts == [generator(model_and_tokenizer).prompt_text(c, p) for c, p in zip(CONVERSATIONS, PREFILLS)]
    assert render_prompts(tokenizer, CONVERSATIONS[:1]) == [
        tokenizer.apply_chat_template(CONVERSATIONS[0], tokenize=False, add_generation_prompt=True)]
    with pytest.raises(ValueError, match="prefills"):
        render_prompts(tokenizer, CONVERSATIONS, PREFILLS[:2])


def test_prefill_follows_the_generation_prompt(model_and_tokenizer):
    text = generator(model_and_tokenizer).prompt_text([{"role": "user", "content": "Hi"}], "The answer is (")
    assert text == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nThe answer is ("


def test_decoding_stops_at_the_end_of_turn_token(model_and_tokenizer):
    gen = generator(model_and_tokenizer)
    tokenizer = model_and_tokenizer[1]
    words = tokenizer("Hello there", add_special_tokens=False)["input_ids"]
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    more = tokenizer("never shown", add_special_tokens=False)["input_ids"]
    assert gen._decode(torch.tensor(words + [end] + more)) == "Hello there"


def test_prompts_convert_to_chat_with_a_trailing_ai_turn_as_prefill():
    prompt = [{"type": "human", "content": "Q?"}, {"type": "ai", "content": "The answer is ("}]
    assert to_chat(prompt) == ([{"role": "user", "content": "Q?"}], "The answer is (")
    assert to_chat(prompt[:1]) == ([{"role": "user", "content": "Q?"}], None)


def test_unknown_or_missing_backends_are_user_errors():
    with pytest.raises(UserError, match="unknown generation backend 'tgi'"):
        make_generator(ModelConfig(), GenerationConfig(backend="tgi"))
    try:
        import vllm  # noqa: F401
    except ImportError:
        with pytest.raises(UserError, match="needs vLLM"):
            make_generator(ModelConfig(), GenerationConfig(backend="vllm"))
