"""The interventions, each ending in a policy folder that any stage loads like any model (HF and vLLM alike):

- `full`, `lora`: supervised fine-tuning on the synthetic examples through TRL's `SFTTrainer` (LoRA through PEFT,
  merged into the weights afterwards);
- `prompt_tuning`: PEFT's prompt tuning (the poster's method) through the same trainer; the learned prompt
  vectors are then written into the policy as new tokens (`<|soft_prompt_i|>`) whose input embeddings they are,
  and the chat template opens every conversation with them, so the folder computes exactly what the PEFT model
  did, without PEFT (`bake_soft_prompt`). The output embedding is untied and gives the new tokens zero rows: the
  policy never writes them with more than the probability of a zero logit;
- `kshot`: no training; the chat template opens every conversation with `shots` synthetic examples as earlier
  user / assistant turns (after a system message, if any), the poster's in-context baseline;
- `none`: the base's weights, tokenizer and template unchanged (the control arm), as links to its files.

Each trained method writes sealed Trainer checkpoints and resumes from the newest intact one (`training.py`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from rlhf_syco.intervention.data import PREFILL

SOFT_TOKEN = "<|soft_prompt_{}|>"


def sft_rows(examples: list[dict]) -> list[dict]:
    """TRL's conversational prompt-completion rows: the loss falls on the completion only."""
    return [{"prompt": e["prompt"] if isinstance(e["prompt"], list) else [{"role": "user", "content": e["prompt"]}],
             "completion": [{"role": "assistant", "content": e.get("completion") or f"{PREFILL}{e['answer']})"}]}
            for e in examples]


def shots_as_turns(examples: list[dict]) -> list[dict]:
    """k synthetic examples as alternating user / assistant turns."""
    turns = []
    for row in sft_rows(examples):
        turns += row["prompt"] + row["completion"]
    return turns


def kshot_template(template: str, turns: list[dict]) -> str:
    """`template` with `turns` put before every conversation's first non-system message."""
    shots = json.dumps(turns, ensure_ascii=False)
    return ("{%- set shots = " + shots + " -%}"
            "{%- if messages and messages[0]['role'] == 'system' -%}"
            "{%- set messages = messages[:1] + shots + messages[1:] -%}"
            "{%- else -%}{%- set messages = shots + messages -%}{%- endif -%}" + template)


def train(config, examples: list[dict], base: str, out: Path) -> dict:
    """Fine-tune `base` by `config.intervene.method` on `examples`; the trained model (PEFT or not) and its
    tokenizer, plus what the training did."""
    import datasets
    from transformers import AutoModelForCausalLM, AutoTokenizer, set_seed
    from trl import SFTConfig, SFTTrainer

    from rlhf_syco import distributed, training

    iv = config.intervene
    datasets.disable_progress_bars()
    set_seed(config.seed)
    tokenizer = AutoTokenizer.from_pretrained(base)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(base, dtype=config.policy.model.dtype)
    # one process without DeepSpeed: a LoRA is merged and a soft prompt read from whole weights
    placement = distributed.trainer_options(config.compute.model_copy(update={"deepspeed_stage": 0}))
    args = SFTConfig(
        output_dir=str(out / "checkpoints"), learning_rate=iv.learning_rate, num_train_epochs=iv.epochs,
        max_steps=iv.max_steps, per_device_train_batch_size=iv.batch_size, max_length=iv.max_length,
        gradient_checkpointing=iv.gradient_checkpointing, save_strategy="steps", save_steps=iv.save_steps,
        save_total_limit=2, logging_steps=iv.logging_steps, seed=config.seed, data_seed=config.seed,
        warmup_steps=0.05, lr_scheduler_type="linear", bf16=config.compute.mixed_precision == "bf16",
        fp16=config.compute.mixed_precision == "fp16", **placement, report_to=[], disable_tqdm=True,
        dataloader_num_workers=0)
    trainer = SFTTrainer(model=model, args=args, train_dataset=datasets.Dataset.from_list(sft_rows(examples)),
                         processing_class=tokenizer, peft_config=peft_config(iv, base),
                         callbacks=training.callbacks(f"intervene: {iv.method}"))
    resume = training.train(trainer, out / "checkpoints", "intervene")
    history = trainer.state.log_history
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    return {"model": trainer.model, "tokenizer": tokenizer, "history": history,
            "summary": {"steps": trainer.state.global_step, "resumed_from": resume.name if resume else None,
                        "trainable_parameters": trainable, "learning_rate": iv.learning_rate,
                        "final_train_loss": next((h["loss"] for h in reversed(history) if "loss" in h), None)}}


def peft_config(iv, base: str):
    if iv.method == "lora":
        from peft import LoraConfig

        return LoraConfig(r=iv.lora.r, lora_alpha=iv.lora.alpha, lora_dropout=iv.lora.dropout,
                          target_modules=iv.lora.target_modules, task_type="CAUSAL_LM")
    if iv.method == "prompt_tuning":
        from peft import PromptTuningConfig

        return PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=iv.prompt_tokens,
                                  prompt_tuning_init="TEXT", prompt_tuning_init_text=iv.prompt_init,
                                  tokenizer_name_or_path=base)
    return None


def as_plain_model(method: str, model, tokenizer):
    """(model, tokenizer) without PEFT: LoRA merged, a soft prompt baked into tokens and template."""
    if method == "lora":
        return model.merge_and_unload(), tokenizer
    if method == "prompt_tuning":
        vectors = model.get_prompt_embedding_to_save(adapter_name="default").detach()
        return bake_soft_prompt(model.get_base_model(), tokenizer, vectors)
    return model, tokenizer


def bake_soft_prompt(model, tokenizer, vectors):
    """The base model and tokenizer extended so that rendering any conversation puts `vectors` first."""
    import torch

    tokens = [SOFT_TOKEN.format(i) for i in range(len(vectors))]
    tokenizer.add_special_tokens({"additional_special_tokens": tokens}, replace_extra_special_tokens=False)
    old_vocab = model.get_input_embeddings().weight.shape[0]
    output = model.get_output_embeddings().weight.detach().clone()
    model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    ids = tokenizer.convert_tokens_to_ids(tokens)
    if min(ids) < old_vocab:
        raise ValueError("the soft-prompt tokens did not get new ids")
    with torch.no_grad():
        model.get_input_embeddings().weight[ids] = vectors.to(model.dtype)
        head = torch.zeros(len(tokenizer), output.shape[1], dtype=output.dtype)
        head[:old_vocab] = output
        model.config.tie_word_embeddings = False
        model.get_output_embeddings().weight = torch.nn.Parameter(head)
    tokenizer.chat_template = "".join(tokens) + tokenizer.chat_template
    return model, tokenizer


WEIGHT_FILES = ("config.json", "generation_config.json", "model.safetensors", "model.safetensors.index.json")


def link_base(base: str, folder: Path) -> None:
    """`folder` holds links to every file of the base model (a hub model is saved there instead)."""
    _link(base, folder, lambda name: True)


def link_weights(base: str, folder: Path) -> None:
    """`folder` holds links to the base model's weights and configs, not its tokenizer."""
    _link(base, folder, lambda name: name in WEIGHT_FILES or name.startswith("model-"))


def _link(base: str, folder: Path, wanted) -> None:
    if not Path(base).is_dir():
        from transformers import AutoModelForCausalLM, AutoTokenizer

        AutoModelForCausalLM.from_pretrained(base).save_pretrained(folder)
        if wanted("tokenizer.json"):
            AutoTokenizer.from_pretrained(base).save_pretrained(folder)
        return
    for source in Path(base).iterdir():
        if source.is_file() and wanted(source.name):
            os.symlink(source.resolve(), folder / source.name)
