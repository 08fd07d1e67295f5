"""Does a resumed PPO run end where the uninterrupted run ends? (`PPOTrainer.train(resume_from_checkpoint=...)`)

Trains a tiny GPT-2 policy and critic (2 layers, 32 dims, built from configs) for 12 PPO updates with a checkpoint at
update 6, then:

- `uninterrupted`: a second identical run (run-to-run noise);
- `resumed`: a new trainer resumed from checkpoint-6 with `train(resume_from_checkpoint=True)`;
- `warm start`: a new run whose policy and critic start from checkpoint-6's weights, with a fresh optimizer and
  schedule, for the remaining 6 updates (what resuming used to amount to).

and reports, for each, the largest absolute difference of any policy or critic weight from the first run's final
weights, and the reward (`objective/scores`) of the updates after the checkpoint, uninterrupted against resumed. The
warm start's rewards are not reported: as a new run it replays the prompts and random draws of updates 1-6, and with
weights this small the reward follows them, so its curve repeats the first run's updates 1-6 and says nothing about
its weights. The same comparison runs in upstream's PPO test shape, micro-batches of 2 and 1 rows
(`per_device_train_batch_size=2, gradient_accumulation_steps=3, num_mini_batches=2`), resumed from update 5, where the
gradients of one micro-batch wait for the next optimizer step. Writes `docs/results/ppo_resume.json` and
`docs/results/ppo_resume.md`; with `--append` it keeps the entries of other transformers versions already in the JSON
file and replaces only this version's.

    python -m benchmarks.bench_ppo_resume
    python -m benchmarks.bench_ppo_resume --append    # with another transformers, to add its row
"""

import os


os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

import argparse
import json
import shutil
import tempfile
from pathlib import Path

import torch
import transformers
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, GPT2Config

from benchmarks.bench_save_value_model import byte_level_tokenizer, write_runs
from trl.experimental.ppo import PPOConfig, PPOTrainer


RESULTS = Path(__file__).resolve().parent.parent / "docs" / "results"
WORDS = ["The movie", "A terrible film", "I loved every", "Boring, slow", "The director", "One of the best", "Not"]
PROMPTS = [f"{a} {b}" for a in WORDS for b in WORDS][:20]
UPDATES, SAVE_AT = 12, 6
# Upstream's PPO test shape: 8 micro-batch steps per update, an optimizer step every 3, so update 5 ends between two
UNEVEN = {"per_device_train_batch_size": 2, "gradient_accumulation_steps": 3, "num_mini_batches": 2}
UNEVEN_SAVE_AT = 5


def tiny(model_class, seed, vocab, num_labels=None):
    config = GPT2Config(vocab_size=vocab, n_positions=64, n_embd=32, n_layer=2, n_head=2, pad_token_id=0)
    config.bos_token_id, config.eos_token_id = 1, 2
    if num_labels is not None:
        config.num_labels = num_labels
    torch.manual_seed(seed)
    return model_class.from_config(config)


def make_trainer(tokenizer, output_dir, updates, policy=None, critic=None, save_steps=SAVE_AT, **shape):
    vocab = len(tokenizer)
    shape = {"per_device_train_batch_size": 2, "gradient_accumulation_steps": 2, **shape}
    args = PPOConfig(
        output_dir=str(output_dir),
        bf16=False,
        gradient_checkpointing=False,
        num_sample_generations=0,
        report_to="none",
        disable_tqdm=True,
        logging_steps=1,
        response_length=4,
        local_rollout_forward_batch_size=4,
        total_episodes=updates * shape["per_device_train_batch_size"] * shape["gradient_accumulation_steps"],
        num_ppo_epochs=2,
        learning_rate=1e-3,
        seed=0,
        save_value_model=True,
        save_strategy="steps",
        save_steps=save_steps,
        **shape,
    )
    return PPOTrainer(
        args=args,
        processing_class=tokenizer,
        model=policy if policy is not None else tiny(AutoModelForCausalLM, 0, vocab),
        ref_model=tiny(AutoModelForCausalLM, 0, vocab),
        reward_model=tiny(AutoModelForSequenceClassification, 2, vocab, num_labels=1),
        train_dataset=Dataset.from_dict({"input_ids": [tokenizer(p)["input_ids"] for p in PROMPTS]}),
        value_model=critic if critic is not None else tiny(AutoModelForSequenceClassification, 1, vocab, num_labels=1),
    )


def weights(trainer):
    wrapper = trainer.accelerator.unwrap_model(trainer.model)
    return {
        **{f"policy.{k}": v.detach().clone() for k, v in wrapper.policy.state_dict().items()},
        **{f"critic.{k}": v.detach().clone() for k, v in wrapper.value_model.state_dict().items()},
    }


def max_difference(a, b):
    return max((a[k] - b[k]).abs().max().item() for k in a)


def rewards_after_checkpoint(trainer):
    """The reward of every update after the checkpoint (a resumed run's log history holds the earlier ones too)."""
    scores = [entry["objective/scores"] for entry in trainer.state.log_history if "objective/scores" in entry]
    return {str(update): score for update, score in enumerate(scores, start=1) if update > SAVE_AT}  # JSON's keys


def resumed_against_uninterrupted(tokenizer, tmp, save_at, **shape):
    """Trains `UPDATES` updates with a checkpoint every `save_at`, resumes a new trainer from checkpoint-`save_at`."""
    first = make_trainer(tokenizer, tmp / "first", UPDATES, save_steps=save_at, **shape)
    first.train()
    checkpoint = tmp / "first" / f"checkpoint-{save_at}"
    shutil.copytree(checkpoint, tmp / "resumed" / checkpoint.name)
    resumed = make_trainer(tokenizer, tmp / "resumed", UPDATES, save_steps=save_at, **shape)
    resumed.train(resume_from_checkpoint=True)
    return first, resumed, json.loads((checkpoint / "trainer_state.json").read_text())


def measure():
    tokenizer = byte_level_tokenizer(320)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        first, resumed, _ = resumed_against_uninterrupted(tokenizer, tmp, SAVE_AT)
        reference = weights(first)

        second = make_trainer(tokenizer, tmp / "second", UPDATES)
        second.train()

        checkpoint = tmp / "first" / f"checkpoint-{SAVE_AT}"
        warm = make_trainer(
            tokenizer,
            tmp / "warm",
            UPDATES - SAVE_AT,
            policy=AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32),
            critic=AutoModelForSequenceClassification.from_pretrained(checkpoint / "value_model", dtype=torch.float32),
        )
        warm.train()

        uneven_first, uneven_resumed, uneven_state = resumed_against_uninterrupted(
            tokenizer, tmp / "uneven", UNEVEN_SAVE_AT, **UNEVEN
        )
        uninterrupted_rewards, resumed_rewards = rewards_after_checkpoint(first), rewards_after_checkpoint(resumed)
        return {
            "transformers": transformers.__version__,
            "torch": torch.__version__,
            "setup": f"tiny GPT-2 policy and critic (2 layers, 32 dims), {UPDATES} PPO updates of 4 prompts "
            f"(2 per micro-batch x 2 accumulated), 2 PPO epochs, lr 1e-3, checkpoint at update {SAVE_AT}, CPU",
            "max_weight_difference": {
                "second uninterrupted run": max_difference(weights(second), reference),
                "resumed at update 6": max_difference(weights(resumed), reference),
                "warm start at update 6 (fresh optimizer)": max_difference(weights(warm), reference),
            },
            "rewards_after_checkpoint": {"uninterrupted": uninterrupted_rewards, "resumed": resumed_rewards},
            "max_reward_difference": max(
                abs(uninterrupted_rewards[update] - resumed_rewards[update]) for update in uninterrupted_rewards
            ),
            "uneven_micro_batches": {
                "setup": f"{UPDATES} updates of 6 prompts in minibatches of 3 rows, micro-batches of 2 and 1 rows "
                f"(per_device_train_batch_size=2, gradient_accumulation_steps=3, num_mini_batches=2), checkpoint at "
                f"update {UNEVEN_SAVE_AT}",
                "micro_batches_waiting_at_checkpoint": uneven_state["accumulation_step"]
                % uneven_state["gradient_accumulation_steps"],
                "max_weight_difference": max_difference(weights(uneven_resumed), weights(uneven_first)),
                "accelerator_step": {
                    "uninterrupted": uneven_first.accelerator.step,
                    "resumed": uneven_resumed.accelerator.step,
                },
            },
        }


def write_markdown(runs):
    lines = [
        "# PPO resume: resumed vs uninterrupted",
        "",
        "Written by `benchmarks/bench_ppo_resume.py` from `ppo_resume.json`; do not edit by hand.",
        "",
        f"Setup: {runs[0]['setup']}.",
        "",
        "## Largest absolute difference of any policy or critic weight from the uninterrupted run's final weights",
        "",
        "| transformers | torch | " + " | ".join(runs[0]["max_weight_difference"]) + " |",
        "| --- | --- | " + " | ".join("---" for _ in runs[0]["max_weight_difference"]) + " |",
    ]
    for run in runs:
        values = " | ".join(f"{value:.3g}" for value in run["max_weight_difference"].values())
        lines.append(f"| {run['transformers']} | {run['torch']} | {values} |")
    lines += [
        "",
        "The warm start is a new run: it ends far from the uninterrupted run, as it should. Its rewards are not shown:",
        "it replays the prompts and random draws of updates 1-6, and with weights this small the reward follows them.",
        "",
        f"## Reward (`objective/scores`) of the updates after the checkpoint at update {SAVE_AT}",
        "",
        "| transformers | update | uninterrupted | resumed |",
        "| --- | --- | --- | --- |",
    ]
    for run in runs:
        curves = run["rewards_after_checkpoint"]
        for update, reward in curves["uninterrupted"].items():
            lines.append(
                f"| {run['transformers']} | {update} | {reward:+.5f} | {curves['resumed'][str(update)]:+.5f} |"
            )
    lines += [
        "",
        "Largest difference: "
        + ", ".join(f"{r['max_reward_difference']:.3g} ({r['transformers']})" for r in runs)
        + ".",
        "",
        "## Micro-batches of 2 and 1 rows (upstream's PPO test shape)",
        "",
        (
            f"Setup: {runs[0]['uneven_micro_batches']['setup']}. The optimizer steps every third micro-batch, across "
            "minibatches and updates, so a checkpoint can hold gradients waiting for the next step."
        ),
        "",
        (
            "| transformers | micro-batches waiting at the checkpoint | largest weight difference, resumed vs "
            "uninterrupted | accelerator step, uninterrupted | accelerator step, resumed |"
        ),
        "| --- | --- | --- | --- | --- |",
    ]
    for run in runs:
        uneven = run["uneven_micro_batches"]
        lines.append(
            f"| {run['transformers']} | {uneven['micro_batches_waiting_at_checkpoint']} | "
            f"{uneven['max_weight_difference']:.3g} | {uneven['accelerator_step']['uninterrupted']} | "
            f"{uneven['accelerator_step']['resumed']} |"
        )
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--append", action="store_true", help="keep other transformers versions' entries")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    run = measure()
    print(json.dumps(run["max_weight_difference"], indent=2))
    write_runs(args.out, "ppo_resume", run, args.append, write_markdown)


if __name__ == "__main__":
    main()
