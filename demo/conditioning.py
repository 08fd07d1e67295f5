"""Reward-conditioned generation: train on (prompt, completion, reward) rows, then ask for the reward you want.

Offline, on CPU, in a few minutes: the base model is the tiny GPT-2 of `realdata` (pretrained on IMDb review
openings), each training row is the opening of an IMDb review split into an 8-token prompt and a 16-token completion,
and its reward is the sentiment of the completion: the logit of a logistic regression trained on the IMDb labels
(`realdata.sentiment_logit`, unbounded, so a target above the training maximum means something).
`RewardConditionedTrainer` teaches the model p(completion | prompt, reward), with reward dropout so that it also
learns a null reward; we then generate at a low, a median, a high and an above-maximum target, plainly and with
classifier-free guidance on the reward (`guidance_scale`), and score what comes out.

Run from the repository root: `python -m demo.conditioning`.
"""

import time

import torch
from datasets import Dataset, disable_progress_bars
from transformers import PrinterCallback, TrainerCallback, set_seed
from transformers.utils.logging import disable_progress_bar

from realdata import (
    CACHE_DIR,
    prompt_completion_reward,
    sentiment_accuracy,
    sentiment_logit,
    tiny_lm,
    train_test_reviews,
    vader,
)
from trl.experimental.reward_conditioning import RewardConditionedConfig, RewardConditionedTrainer


SEED = 0
PROMPT_TOKENS = 8
COMPLETION_TOKENS = 16  # short completions: a tiny model learns to follow the reward on CPU in minutes
N_TRAIN_ROWS = 16000
BATCH_SIZE = 32  # one epoch: 500 steps
LEARNING_RATE = 3e-3
HEAD_LR_MULT = 10.0  # the reward head starts at std 0.02: give it (and the null reward) a larger learning rate
REWARD_DROPOUT = 0.1  # trains the null reward that guidance needs
GUIDANCE_SCALE = 3.0
LOG_EVERY = 100
N_EVAL_PROMPTS = 200
TEMPERATURE = 1.0
OUTPUT_DIR = CACHE_DIR / "demo-conditioning"


class CompactLog(TrainerCallback):
    """One short line every `LOG_EVERY` steps instead of the full metrics dict."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        if "loss" in logs and state.global_step % LOG_EVERY == 0:
            print(f"   step {state.global_step}/{state.max_steps}: loss {logs['loss']:.3f}", flush=True)


@torch.no_grad()
def generate(model, tokenizer, prompts, targets, guidance_scale=None):
    """One sampled completion per prompt, conditioned on `targets` (or from the plain base model when `None`)."""
    completions = []
    for start in range(0, len(prompts), 100):
        batch = tokenizer(prompts[start : start + 100], padding=True, return_tensors="pt")
        kwargs = {} if targets is None else {"rewards": torch.tensor(targets[start : start + 100])}
        if guidance_scale is not None:
            kwargs["guidance_scale"] = guidance_scale
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
        completions.extend(tokenizer.batch_decode(output[:, batch["input_ids"].shape[1] :], skip_special_tokens=True))
    return completions


def main() -> None:
    torch.set_num_threads(1)  # the same as OMP_NUM_THREADS=1: one core, steady timings
    disable_progress_bars()  # datasets' bars
    disable_progress_bar()  # transformers' bars
    start = time.time()

    print("1. Data: IMDb review openings, reward = sentiment logit of the completion", flush=True)
    base, tokenizer = tiny_lm(SEED)
    print(f"   sentiment classifier: accuracy {sentiment_accuracy():.3f} on the held-out test reviews")
    set_seed(SEED)  # after `tiny_lm`, whose random draws differ between a first build and a cached load
    train_reviews, test_reviews = train_test_reviews(seed=SEED)
    rows = prompt_completion_reward(
        tokenizer, train_reviews[:N_TRAIN_ROWS], PROMPT_TOKENS, COMPLETION_TOKENS, score=sentiment_logit
    )
    rewards = torch.tensor([row["reward"] for row in rows])
    eval_prompts = [
        row["prompt"]
        for row in prompt_completion_reward(
            tokenizer, test_reviews[:N_EVAL_PROMPTS], PROMPT_TOKENS, COMPLETION_TOKENS, score=sentiment_logit
        )
    ]
    print(
        f"   {len(rows)} training rows, reward mean {rewards.mean():+.2f}, std {rewards.std():.2f}, "
        f"min {rewards.min():+.2f}, max {rewards.max():+.2f}; {len(eval_prompts)} held-out prompts"
    )
    print(f"   e.g. {rows[0]['prompt']!r} + {rows[0]['completion']!r} -> {rows[0]['reward']:+.2f}")

    print(
        f"2. RewardConditionedTrainer, 1 epoch of batches of {BATCH_SIZE}, reward dropout {REWARD_DROPOUT}", flush=True
    )
    args = RewardConditionedConfig(
        output_dir=str(OUTPUT_DIR),
        bf16=False,
        gradient_checkpointing=False,
        seed=SEED,
        learning_rate=LEARNING_RATE,
        reward_head_learning_rate=LEARNING_RATE * HEAD_LR_MULT,
        weight_decay=0.01,
        lr_scheduler_type="cosine",
        warmup_steps=25,
        per_device_train_batch_size=BATCH_SIZE,
        num_train_epochs=1,
        max_length=48,  # prompt, completion and EOS (re-tokenizing their texts can add a token or two)
        reward_dropout=REWARD_DROPOUT,
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

    low, median, high = torch.quantile(rewards, torch.tensor([0.1, 0.5, 0.9])).tolist()
    targets = {
        "low (10th percentile)": low,
        "median": median,
        "high (90th percentile)": high,
        "above max (max + 1 std)": (rewards.max() + rewards.std()).item(),
    }
    ways = {"plain": None, f"guided w={GUIDANCE_SCALE:g}": GUIDANCE_SCALE}

    prompt = eval_prompts[0]
    print("3. One held-out prompt at each target, plain and guided (sentiment logit of the completion in brackets)")
    print(f"   prompt {prompt!r}")
    for name, target in targets.items():
        for way, scale in ways.items():
            completion = generate(model, tokenizer, [prompt], [target], scale)[0]
            score = sentiment_logit([completion])[0]
            print(f"   {name:<24} {target:+6.2f} {way:<12} [{score:+6.2f}] {completion!r}", flush=True)

    print(f"4. Mean score of the completions of {len(eval_prompts)} held-out prompts, one sample each", flush=True)
    print(f"   {'target':<24} {'value':>6}  {'way':<12} {'sentiment logit':>15}  {'VADER':>6}  {'positive':>8}")
    reference, _ = tiny_lm(SEED)  # the trainer fine-tuned `base` in place
    completions = generate(reference, tokenizer, eval_prompts, None)
    logits, compound = torch.tensor(sentiment_logit(completions)), torch.tensor(vader(completions))
    print(
        f"   {'none (base model)':<24} {'':>6}  {'':<12} {logits.mean():>+15.2f}  {compound.mean():>+6.2f}  "
        f"{(logits > 0).float().mean():>8.0%}"
    )
    for name, target in targets.items():
        for way, scale in ways.items():
            completions = generate(model, tokenizer, eval_prompts, [target] * len(eval_prompts), scale)
            logits, compound = torch.tensor(sentiment_logit(completions)), torch.tensor(vader(completions))
            print(
                f"   {name:<24} {target:>+6.2f}  {way:<12} {logits.mean():>+15.2f}  {compound.mean():>+6.2f}  "
                f"{(logits > 0).float().mean():>8.0%}",
                flush=True,
            )
    print(f"   ('positive' is a sentiment logit > 0.) Done in {time.time() - start:.0f}s.")


if __name__ == "__main__":
    main()
