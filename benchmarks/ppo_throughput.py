"""PPO throughput and memory: this project's trainer, with each of its value functions, against TRL 1.12.0's
`trl.experimental.ppo.PPOTrainer`, side by side.

    python benchmarks/ppo_throughput.py [--policy builtin:smollm2-135m-instruct --steps 8 --rollout-batch-size 16 ...]

Our trainer runs three ways: a separate value model as large as the policy (`value_head: separate`, TRL's layout
and the default), a smaller one (`value_layers`: the policy's first layers, by default half of them), and a
scalar head on the policy's own trunk (`value_head: policy_trunk`). Each run is a process of its own, so its peak
resident memory (`ru_maxrss`, model loading included) is its own.

All train the same decoder policy (`--policy`, by default `tiny:decoder`) with a value model initialised from it,
against the same reward model (the policy's architecture with a fresh scalar head, saved once with a fixed seed),
on the same prompts (shipped HH-RLHF contexts in the chat template) with the same PPO settings: rollout and mini-batch sizes, PPO epochs,
response length, temperature 1, learning rate, KL coefficient, fp32, no gradient checkpointing (TRL's
default turns it on) and no sample generations. TRL 1.12.0 is installed into a throwaway virtualenv
(`--venv`) with this environment's torch, transformers, accelerate and datasets versions, so only the trainer
differs. Throughput is rollout slots (episodes x response length) per second of training steps, model
loading excluded; each trainer runs `--repeats` times, alternating, and its best run counts.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from importlib.metadata import version
from pathlib import Path

TRL_VERSION = "1.12.0"

TRL_RUN = textwrap.dedent("""
    import json, sys, tempfile, time
    import torch
    settings = json.loads(open(sys.argv[1]).read())
    torch.set_num_threads(settings["threads"])
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer
    from trl.experimental.ppo import PPOConfig, PPOTrainer

    tokenizer = AutoTokenizer.from_pretrained(settings["policy"], padding_side="left")
    policy = AutoModelForCausalLM.from_pretrained(settings["policy"])
    ref_policy = AutoModelForCausalLM.from_pretrained(settings["policy"])
    torch.manual_seed(0)
    value_model = AutoModelForSequenceClassification.from_pretrained(settings["policy"], num_labels=1)
    reward_model = AutoModelForSequenceClassification.from_pretrained(settings["reward_model"], num_labels=1)
    prompts = Dataset.from_dict({"input_ids": settings["prompt_ids"]})
    batch = settings["rollout_batch_size"]
    args = PPOConfig(
        output_dir=tempfile.mkdtemp(), per_device_train_batch_size=batch, gradient_accumulation_steps=1,
        num_mini_batches=batch // settings["mini_batch_size"], num_ppo_epochs=settings["ppo_epochs"],
        total_episodes=settings["steps"] * batch, local_rollout_forward_batch_size=settings["forward_batch_size"],
        response_length=settings["response_length"], temperature=1.0, stop_token="eos",
        learning_rate=settings["lr"], kl_coef=settings["kl_coef"], num_sample_generations=0,
        gradient_checkpointing=False, bf16=False, fp16=False, use_cpu=True, report_to=[], save_strategy="no",
        logging_steps=settings["steps"], disable_tqdm=True, seed=0)
    trainer = PPOTrainer(args=args, processing_class=tokenizer, model=policy, ref_model=ref_policy,
                         reward_model=reward_model, train_dataset=prompts, eval_dataset=prompts.select(range(4)),
                         value_model=value_model)
    start = time.time()
    trainer.train()
    import resource
    print("RESULT", json.dumps({"seconds": time.time() - start,
                                "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
""")
VARIANTS = ("separate", "smaller", "policy_trunk")  # our value functions


def trl_python(venv: Path) -> Path:
    """The throwaway virtualenv's python, with TRL 1.12.0 and this environment's other versions installed."""
    python = venv / "bin" / "python"
    probe = [str(python), "-c", f"import trl; assert trl.__version__ == '{TRL_VERSION}'"]
    if python.exists() and subprocess.run(probe, capture_output=True).returncode == 0:
        return python
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pins = [f"torch=={version('torch').split('+')[0]}", f"trl=={TRL_VERSION}"] + \
        [f"{name}=={version(name)}" for name in ("transformers", "accelerate", "datasets")]
    print(f"installing {' '.join(pins)} into {venv}", flush=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", *pins], check=True)
    return python


def shared_inputs(work: Path, policy_name: str, n_prompts: int, max_prompt_tokens: int) -> tuple[str, str, list]:
    """(policy folder, reward-model folder, prompts): the policy, a PM with its architecture saved once (a fresh
    head), and distinct shipped HH-RLHF contexts that fit `max_prompt_tokens`."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from rlhf_syco.data.preferences import BUILTIN_HH, load_hh_rlhf
    from rlhf_syco.models import resolve

    policy = resolve(policy_name)
    tokenizer = AutoTokenizer.from_pretrained(policy)
    reward_model = work / f"reward_model-{Path(policy).name}"
    if not reward_model.exists():
        torch.manual_seed(1)
        AutoModelForSequenceClassification.from_pretrained(policy, num_labels=1).save_pretrained(reward_model)
        tokenizer.save_pretrained(reward_model)
    pairs, _ = load_hh_rlhf(BUILTIN_HH, "test", limit=20 * n_prompts)
    prompts = list({json.dumps(p["prompt"]): p["prompt"] for p in pairs}.values())
    fits = [p for p in prompts if len(tokenizer.apply_chat_template(p, add_generation_prompt=True, tokenize=True,
                                                                    return_dict=False)) <= max_prompt_tokens]
    if len(fits) < n_prompts:
        raise SystemExit(f"only {len(fits)} shipped prompts fit {max_prompt_tokens} tokens; lower --steps")
    return policy, str(reward_model), fits[:n_prompts]


def run_ours(settings: dict, prompts: list, variant: str) -> dict:
    """Seconds for `steps` PPO steps of `rlhf_syco.ppo.trainer.PPOTrainer` (model loading excluded) and this
    process's peak resident memory, with the value function `variant` (one of `VARIANTS`)."""
    import resource

    import torch
    from accelerate import Accelerator
    from reward_models import build
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    from rlhf_syco.ppo.config import PPOConfig
    from rlhf_syco.ppo.model import keep_first_layers
    from rlhf_syco.ppo.trainer import PPOTrainer

    torch.set_num_threads(settings["threads"])
    tokenizer = AutoTokenizer.from_pretrained(settings["policy"])
    policy = AutoModelForCausalLM.from_pretrained(settings["policy"])
    ref_policy = AutoModelForCausalLM.from_pretrained(settings["policy"])
    torch.manual_seed(0)
    if variant == "policy_trunk":
        value_model = torch.nn.Linear(policy.config.hidden_size, 1, bias=False)
    else:
        value_model = AutoModelForSequenceClassification.from_pretrained(settings["policy"], num_labels=1)
        if variant == "smaller":
            keep_first_layers(value_model, settings["value_layers"])
    reward_model = build({"type": "hf", "path": settings["reward_model"], "device": "cpu",
                          "batch_size": settings["forward_batch_size"], "max_length": 1024})
    args = PPOConfig(steps=settings["steps"], rollout_batch_size=settings["rollout_batch_size"],
                     mini_batch_size=settings["mini_batch_size"], ppo_epochs=settings["ppo_epochs"],
                     lr=settings["lr"], kl_coef=settings["kl_coef"])
    trainer = PPOTrainer(args, policy, ref_policy, value_model, tokenizer, reward_model, prompts,
                         tempfile.mkdtemp(), temperature=1.0, max_new_tokens=settings["response_length"],
                         generation_batch_size=settings["forward_batch_size"], accelerator=Accelerator(cpu=True))
    start = time.time()
    for step in range(1, settings["steps"] + 1):
        trainer.step(step)
    return {"seconds": time.time() - start, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def run_ours_in_a_process(settings: dict, prompts: list, variant: str, work: Path) -> dict:
    spec = work / "ours_settings.json"
    spec.write_text(json.dumps({**settings, "prompts": prompts}))
    env = {**os.environ, "OMP_NUM_THREADS": str(settings["threads"])}
    done = subprocess.run([sys.executable, __file__, "--child", str(spec), variant], capture_output=True,
                          text=True, env=env)
    result = next((line for line in done.stdout.splitlines() if line.startswith("RESULT ")), None)
    if done.returncode or result is None:
        raise SystemExit(f"our run ({variant}) failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return json.loads(result.removeprefix("RESULT "))


def run_trl(python: Path, settings: dict, prompt_ids: list, work: Path) -> dict:
    spec, script = work / "trl_settings.json", work / "trl_run.py"
    spec.write_text(json.dumps({**settings, "prompt_ids": prompt_ids}))
    script.write_text(TRL_RUN)
    env = {**os.environ, "OMP_NUM_THREADS": str(settings["threads"]), "TRL_EXPERIMENTAL_SILENCE": "1"}
    done = subprocess.run([str(python), str(script), str(spec)], capture_output=True, text=True, env=env)
    result = next((line for line in done.stdout.splitlines() if line.startswith("RESULT ")), None)
    if done.returncode or result is None:
        raise SystemExit(f"TRL run failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return json.loads(result.removeprefix("RESULT "))


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--child":  # one of our runs, in a process of its own
        settings = json.loads(Path(sys.argv[2]).read_text())
        print("RESULT", json.dumps(run_ours(settings, settings.pop("prompts"), sys.argv[3])), flush=True)
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--policy", default="tiny:decoder", help="a model name as in a config's policy.model")
    parser.add_argument("--value-layers", type=int, default=None, help="layers of the smaller value model "
                        "(default: half the policy's)")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--rollout-batch-size", type=int, default=16)
    parser.add_argument("--mini-batch-size", type=int, default=4)
    parser.add_argument("--forward-batch-size", type=int, default=16, help="prompts per generate / no-grad pass")
    parser.add_argument("--ppo-epochs", type=int, default=4)
    parser.add_argument("--response-length", type=int, default=32)
    parser.add_argument("--max-prompt-tokens", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-6)
    parser.add_argument("--kl-coef", type=float, default=0.05)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--venv", type=Path, default=Path(tempfile.gettempdir()) / f"rlhf-syco-trl{TRL_VERSION}")
    a = parser.parse_args()

    work = Path(tempfile.gettempdir()) / "rlhf-syco-ppo-bench"
    work.mkdir(exist_ok=True)
    python = trl_python(a.venv)
    policy, reward_model, prompts = shared_inputs(work, a.policy, a.steps * a.rollout_batch_size,
                                                  a.max_prompt_tokens)
    from transformers import AutoConfig, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(policy)
    prompt_ids = [tokenizer.apply_chat_template(p, add_generation_prompt=True, tokenize=True, return_dict=False)
                  for p in prompts]
    settings = {"policy": policy, "reward_model": reward_model, "steps": a.steps,
                "rollout_batch_size": a.rollout_batch_size, "mini_batch_size": a.mini_batch_size,
                "forward_batch_size": a.forward_batch_size, "ppo_epochs": a.ppo_epochs,
                "response_length": a.response_length, "lr": a.lr, "kl_coef": a.kl_coef, "threads": a.threads,
                "value_layers": a.value_layers or max(1, AutoConfig.from_pretrained(policy).num_hidden_layers // 2)}
    slots = a.steps * a.rollout_batch_size * a.response_length
    names = ["trl", *VARIANTS]
    best = {name: {"tokens_per_s": 0.0, "peak_rss_mb": math.inf} for name in names}
    for repeat in range(a.repeats):
        for name in names:
            result = run_trl(python, settings, prompt_ids, work) if name == "trl" else \
                run_ours_in_a_process(settings, prompts, name, work)
            best[name]["tokens_per_s"] = max(best[name]["tokens_per_s"], slots / result["seconds"])
            best[name]["peak_rss_mb"] = min(best[name]["peak_rss_mb"], result["peak_rss_mb"])
            print(f"run {repeat + 1} {name:>12}: {result['seconds']:7.1f} s  {slots / result['seconds']:8.1f} "
                  f"tokens/s  {result['seconds'] / a.steps:6.2f} s/step  peak {result['peak_rss_mb']:7.0f} MB",
                  flush=True)
    print(json.dumps({"policy": a.policy, "settings": {k: v for k, v in settings.items()
                                                        if k not in ("policy", "reward_model")},
                      "trl_version": TRL_VERSION, "best": best}))
    labels = {"trl": f"TRL {TRL_VERSION} PPOTrainer", "separate": "ours, separate value model",
              "smaller": f"ours, value model of {settings['value_layers']} layers",
              "policy_trunk": "ours, value head on the policy's trunk"}
    for name in names:
        b = best[name]
        speed = b["tokens_per_s"] / best["trl"]["tokens_per_s"]
        memory = b["peak_rss_mb"] / best["separate"]["peak_rss_mb"]
        print(f"{labels[name]:<42} {b['tokens_per_s']:8.1f} tokens/s  {slots / b['tokens_per_s'] / a.steps:6.2f} "
              f"s/step  peak {b['peak_rss_mb']:7.0f} MB  speed vs TRL {speed:.2f}x  "
              f"memory vs ours separate {memory:.2f}x")


if __name__ == "__main__":
    main()
