"""Reward-conditioned generation: train on (prompt, completion, reward) rows, then ask for the reward you want.

Offline, on CPU, in a few minutes: the base model is the tiny GPT-2 of `realdata` (pretrained on IMDb review
openings), each training row is the opening of an IMDb review split into an 8-token prompt and a 16-token completion,
and its reward is the VADER sentiment of the completion. `RewardConditionedTrainer` teaches the model
p(completion | prompt, reward); on held-out prompts we then generate at a low, a middle, a high and an above-maximum
target and score what comes out with VADER.

Run from the repository root: `python -m demo.conditioning`.
"""

import time

import torch
from datasets import Dataset, disable_progress_bars
from transformers import PrinterCallback, TrainerCallback, set_seed
from transformers.utils.logging import disable_progress_bar

from realdata import CACHE_DIR, prompt_completion_reward, tiny_lm, train_test_reviews, vader
from trl.experimental.reward_conditioning import RewardConditionedConfig, RewardConditionedTrainer


SEED = 0
PROMPT_TOKENS = 8
# Short completions and 20,000 rows: at 48 tokens and 8,000 rows (one epoch, lr 1e-3) this tiny model learned no
# measurable conditioning (mean VADER within noise of +0.2 at every target); at 16 tokens, 20,000 rows and lr 3e-3
# the high and above-maximum targets came out clearly more positive than the low one, in about the same time.
COMPLETION_TOKENS = 16
N_TRAIN_ROWS = 20000
BATCH_SIZE = 32
LEARNING_RATE = 3e-3
LOG_EVERY = 50
N_EVAL_PROMPTS = 200
N_SHOWN_PROMPTS = 3
TEMPERATURE = 1.0
OUTPUT_DIR = CACHE_DIR / "demo-conditioning"


class CompactLog(TrainerCallback):
    """One short line every `LOG_EVERY` steps instead of the full metrics dict."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        if "loss" in logs and state.global_step % LOG_EVERY == 0:
            print(f"   step {state.global_step}/{state.max_steps}: loss {logs['loss']:.3f}", flush=True)


@torch.no_grad()
def generate(model, tokenizer, prompts: list[str], targets: list[float] | None) -> list[str]:
    """One sampled completion per prompt, conditioned on `targets` (or from the plain base model when `None`)."""
    completions = []
    for start in range(0, len(prompts), 50):
        batch = tokenizer(prompts[start : start + 50], padding=True, return_tensors="pt")
        kwargs = {} if targets is None else {"rewards": torch.tensor(targets[start : start + 50])}
        output = model.generate(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            max_new_tokens=COMPLETION_TOKENS,
            do_sample=True,
            temperature=TEMPERATURE,
            top_k=0,
            top_p=1.0,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            **kwargs,
        )
        new_tokens = output[:, batch["input_ids"].shape[1] :]
        completions.extend(tokenizer.batch_decode(new_tokens, skip_special_tokens=True))
    return completions


def main() -> None:
    torch.set_num_threads(1)  # the same as OMP_NUM_THREADS=1: one core, steady timings
    disable_progress_bars()  # datasets' bars
    disable_progress_bar()  # transformers' bars
    start = time.time()

    print("1. Data: IMDb review openings scored with VADER", flush=True)
    base, tokenizer = tiny_lm(SEED)
    set_seed(SEED)  # after `tiny_lm`, whose random draws differ between a first build and a cached load
    train_reviews, test_reviews = train_test_reviews(seed=SEED)
    rows = prompt_completion_reward(tokenizer, train_reviews[:N_TRAIN_ROWS], PROMPT_TOKENS, COMPLETION_TOKENS)
    rewards = torch.tensor([row["reward"] for row in rows])
    eval_prompts = [
        row["prompt"] for row in prompt_completion_reward(tokenizer, test_reviews[:N_EVAL_PROMPTS], PROMPT_TOKENS)
    ]
    print(
        f"   {len(rows)} training rows, reward mean {rewards.mean():+.3f}, std {rewards.std():.3f}, "
        f"min {rewards.min():+.3f}, max {rewards.max():+.3f}; {len(eval_prompts)} held-out prompts"
    )
    print(f"   e.g. {rows[0]['prompt']!r} + {rows[0]['completion']!r} -> {rows[0]['reward']:+.3f}")

    print(f"2. RewardConditionedTrainer, 1 epoch of batches of {BATCH_SIZE}", flush=True)
    args = RewardConditionedConfig(
        output_dir=str(OUTPUT_DIR),
        bf16=False,
        gradient_checkpointing=False,
        seed=SEED,
        learning_rate=LEARNING_RATE,
        warmup_steps=10,
        per_device_train_batch_size=BATCH_SIZE,
        num_train_epochs=1,
        max_length=64,  # prompt, completion and EOS (re-tokenizing their texts can add a token or two)
        logging_steps=LOG_EVERY,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
    )
    trainer = RewardConditionedTrainer(
        model=base, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer
    )
    trainer.remove_callback(PrinterCallback)
    trainer.add_callback(CompactLog())
    trainer.train()
    model = trainer.model.eval()
    print(f"   trained in {time.time() - start:.0f}s so far", flush=True)

    low, middle, high = torch.quantile(rewards, torch.tensor([0.1, 0.5, 0.9])).tolist()
    targets = {
        "low (10th percentile)": low,
        "middle (median)": middle,
        "high (90th percentile)": high,
        "above max (max + 1 std)": (rewards.max() + rewards.std()).item(),
    }

    print("3. Completions of held-out prompts at each target (VADER of the completion in brackets)", flush=True)
    for prompt in eval_prompts[:N_SHOWN_PROMPTS]:
        print(f"   prompt {prompt!r}")
        for name, target in targets.items():
            completion = generate(model, tokenizer, [prompt], [target])[0]
            print(f"     {name:<24} target {target:+.2f} [{vader([completion])[0]:+.2f}] {completion!r}")

    print(f"4. Mean VADER of the completions of {len(eval_prompts)} held-out prompts, one sample each", flush=True)
    print(f"   {'target':<24} {'value':>6}  {'mean VADER':>10}  {'positive':>8}")
    reference, _ = tiny_lm(SEED)  # the trainer fine-tuned `base` in place
    achieved = torch.tensor(vader(generate(reference, tokenizer, eval_prompts, None)))
    print(f"   {'none (base model)':<24} {'':>6}  {achieved.mean():>+10.3f}  {(achieved > 0.05).float().mean():>8.0%}")
    for name, target in targets.items():
        achieved = torch.tensor(vader(generate(model, tokenizer, eval_prompts, [target] * len(eval_prompts))))
        print(f"   {name:<24} {target:>+6.2f}  {achieved.mean():>+10.3f}  {(achieved > 0.05).float().mean():>8.0%}")
    print(f"   ('positive' is VADER compound > 0.05.) Done in {time.time() - start:.0f}s.")


if __name__ == "__main__":
    main()
