"""PPO keeps its critic: train, resume from a checkpoint, reload the critic with plain transformers, predict rewards.

Offline, on CPU, in a few minutes: the policy is the tiny GPT-2 of `realdata` (pretrained on IMDb review openings),
prompts are the first 8 tokens of IMDb reviews, and the reward is the VADER sentiment of the text (prompt and
completion, which is what PPO hands a reward model).

1. PPO with `save_value_model=True` runs uninterrupted, checkpointing halfway. Its middle checkpoint is what a job
   preempted there would leave behind: a new trainer resumes from it with `train(resume_from_checkpoint=True)`, and
   must end where the uninterrupted run ended (NeMo-RL's check: a 0 to 2N run against one resumed at N).
2. The critic is reloaded from `value_model/` with `AutoModelForSequenceClassification` and, on held-out prompts, its
   value at the last prompt token (`predict_prompt_values`) is compared with the mean reward of several samples of
   the trained policy, next to the best any predictor can do against that noisy mean (its ceiling, from the
   split-half reliability of the samples) and next to a baseline that reads the prompt's own sentiment.
3. Routing: prompts whose predicted value is in the bottom quartile are flagged before generating; the demo reports
   how much worse they actually do, with a 95% interval.

The critic gets its own learning rate (an optimizer parameter group passed to `PPOTrainer`): `PPOConfig` has one
learning rate, and the policy's is far too small for a freshly initialized value head.

Run from the repository root: `python -m demo.critic` (`--results docs/results` also writes `critic.json` and
`critic.md` there).
"""

import argparse
import copy
import json
import math
import shutil
import time
from pathlib import Path

import torch
from datasets import Dataset, disable_progress_bars
from scipy.stats import pearsonr, spearmanr, ttest_ind
from torch import nn
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    PrinterCallback,
    TrainerCallback,
    set_seed,
)
from transformers.modeling_outputs import BaseModelOutput
from transformers.utils.logging import disable_progress_bar

from realdata import CACHE_DIR, tiny_lm, train_test_reviews, vader
from trl.experimental.ppo import PPOConfig, PPOTrainer, predict_prompt_values


SEED = 0
PROMPT_TOKENS = 8
RESPONSE_TOKENS = 16
TEMPERATURE = 1.0
N_TRAIN_PROMPTS = 4096
BATCH_SIZE = 32
N_UPDATES = 64
POLICY_LR = 1e-4
CRITIC_LR = 3e-3  # measured: higher critic r than 1e-3 with critic_warmup_steps=16 on both seeds
CRITIC_WARMUP_STEPS = 16  # measured: higher critic r than 0 on both seeds, at the cost of 16 fewer policy updates
N_EVAL_PROMPTS = 512
SAMPLES_PER_PROMPT = 8
LOG_EVERY = 8
OUTPUT_DIR = CACHE_DIR / "demo-critic"


class VaderScorer(nn.Module):
    """Scores each sequence with the VADER sentiment of its text (the prompt and the completion, as PPO passes them to
    a reward model). The score is returned at every position of `hidden_states[-1]`, so PPO can read it anywhere."""

    def __init__(self, tokenizer):
        super().__init__()
        self.tokenizer = tokenizer

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **kwargs) -> BaseModelOutput:
        real_ids = input_ids.masked_fill(attention_mask == 0, self.tokenizer.pad_token_id)
        texts = self.tokenizer.batch_decode(real_ids, skip_special_tokens=True)
        scores = torch.tensor(vader(texts), device=input_ids.device)  # (B,)
        hidden = scores[:, None, None].expand(-1, input_ids.shape[1], 1)  # (B, T, 1)
        return BaseModelOutput(hidden_states=(hidden,))


class VaderRewardModel(nn.Module):
    """VADER in the shape PPO expects of a reward model: a backbone named by `base_model_prefix` and a `score` head."""

    base_model_prefix = "scorer"

    def __init__(self, tokenizer):
        super().__init__()
        self.scorer = VaderScorer(tokenizer)
        self.score = nn.Identity()


class CompactLog(TrainerCallback):
    """One short line per `LOG_EVERY` updates instead of the full metrics dict."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.global_step % LOG_EVERY == 0:
            print(
                f"   update {state.global_step}/{state.max_steps}: "
                f"mean reward {float(logs['objective/scores']):+.3f}, "
                f"KL {float(logs['objective/kl']):.2f}, value loss {float(logs['loss/value_avg']):.4f}",
                flush=True,
            )


def prompt_ids(tokenizer, reviews: list[str]) -> list[list[int]]:
    """The first `PROMPT_TOKENS` token ids of every review that is longer than that."""
    ids = tokenizer(reviews, add_special_tokens=False)["input_ids"]
    return [row[:PROMPT_TOKENS] for row in ids if len(row) > PROMPT_TOKENS]


def ppo_trainer(output_dir, seed: int, warmup_steps: int, critic_lr: float, n_updates: int, **config) -> PPOTrainer:
    """A PPO trainer on fresh copies of the tiny LM: the policy, its reference, and a critic that starts from the
    policy's body with a new value head. The critic has its own learning rate (a second optimizer parameter group)."""
    policy, tokenizer = tiny_lm(SEED)
    ref_policy, _ = tiny_lm(SEED)
    set_seed(seed)  # after `tiny_lm`, whose random draws differ between a first build and a cached load
    critic_config = copy.deepcopy(policy.config)
    critic_config.num_labels = 1
    critic = AutoModelForSequenceClassification.from_config(critic_config)
    critic.transformer.load_state_dict(policy.transformer.state_dict())  # the critic starts from the policy's body
    optimizer = torch.optim.AdamW(
        [{"params": policy.parameters(), "lr": POLICY_LR}, {"params": critic.parameters(), "lr": critic_lr}],
        weight_decay=0.0,
    )
    train_reviews, _ = train_test_reviews(seed=SEED)
    train_dataset = Dataset.from_dict({"input_ids": prompt_ids(tokenizer, train_reviews[:N_TRAIN_PROMPTS])})
    args = PPOConfig(
        output_dir=str(output_dir),
        save_value_model=True,
        critic_warmup_steps=warmup_steps,
        bf16=False,
        seed=seed,
        learning_rate=POLICY_LR,  # read by nothing here (the optimizer is ours), but logged
        per_device_train_batch_size=BATCH_SIZE,
        total_episodes=n_updates * BATCH_SIZE,
        local_rollout_forward_batch_size=BATCH_SIZE,
        response_length=RESPONSE_TOKENS,
        temperature=TEMPERATURE,
        stop_token="eos",
        num_sample_generations=0,
        gradient_checkpointing=False,
        report_to="none",
        disable_tqdm=True,
        **config,
    )
    trainer = PPOTrainer(
        args=args,
        processing_class=tokenizer,
        model=policy,
        ref_model=ref_policy,
        reward_model=VaderRewardModel(tokenizer),
        train_dataset=train_dataset,
        value_model=critic,
        optimizers=(optimizer, None),  # None: the trainer makes its linear schedule over both groups
    )
    trainer.remove_callback(PrinterCallback)
    trainer.add_callback(CompactLog())
    return trainer


def max_weight_difference(a: nn.Module, b: nn.Module) -> float:
    b_state = b.state_dict()
    return max((value - b_state[name]).abs().max().item() for name, value in a.state_dict().items())


@torch.no_grad()
def sample_rewards(policy, tokenizer, prompts: list[str], samples: int = SAMPLES_PER_PROMPT) -> torch.Tensor:
    """Sample `samples` completions per prompt the way PPO does and score them: (n_prompts, samples)."""
    rewards = []
    for start in range(0, len(prompts), 64):
        batch = tokenizer(prompts[start : start + 64], padding=True, return_tensors="pt")
        output = policy.generate(
            input_ids=batch["input_ids"].repeat_interleave(samples, 0),
            attention_mask=batch["attention_mask"].repeat_interleave(samples, 0),
            max_new_tokens=RESPONSE_TOKENS,
            do_sample=True,
            temperature=TEMPERATURE,
            top_k=0,
            top_p=1.0,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
        texts = tokenizer.batch_decode(output, skip_special_tokens=True)  # prompt and completion, as PPO scored them
        rewards.append(torch.tensor(vader(texts)).view(-1, samples))
    return torch.cat(rewards)


def evaluate(output_dir, tokenizer, eval_prompts: list[str], seed: int = SEED) -> dict:
    """Reload the policy and its critic with plain transformers and measure the critic on `eval_prompts`."""
    policy = AutoModelForCausalLM.from_pretrained(output_dir, dtype=torch.float32)
    critic = AutoModelForSequenceClassification.from_pretrained(output_dir / "value_model", dtype=torch.float32)
    predicted = torch.tensor(predict_prompt_values(critic, tokenizer, eval_prompts))  # (n_prompts,)
    set_seed(seed)
    achieved = sample_rewards(policy, tokenizer, eval_prompts)  # (n_prompts, samples)
    mean_achieved = achieved.mean(dim=1)  # (n_prompts,)
    prompt_sentiment = torch.tensor(vader(eval_prompts))  # (n_prompts,)

    # The ceiling: even the true expected reward of each prompt correlates with a mean of k noisy samples by only
    # sqrt(reliability of that mean). The reliability comes from the split-half r (two disjoint halves of the
    # samples), stepped up to k samples with the Spearman-Brown formula.
    half = SAMPLES_PER_PROMPT // 2
    split_half = pearsonr(achieved[:, :half].mean(1), achieved[:, half:].mean(1)).statistic
    reliability = 2 * split_half / (1 + split_half)
    critic_r = pearsonr(predicted, mean_achieved).statistic

    flagged = predicted <= predicted.quantile(0.25)
    test = ttest_ind(mean_achieved[flagged], mean_achieved[~flagged], equal_var=False)
    interval = test.confidence_interval(0.95)
    return {
        "predicted": predicted,
        "mean_achieved": mean_achieved,
        "mean_reward": achieved.mean().item(),
        "critic_pearson": critic_r,
        "critic_spearman": spearmanr(predicted, mean_achieved).statistic,
        "split_half_r": split_half,
        "reliability": reliability,
        "ceiling": math.sqrt(max(reliability, 0.0)),
        "prompt_vader_pearson": pearsonr(prompt_sentiment, mean_achieved).statistic,
        "prompt_vader_spearman": spearmanr(prompt_sentiment, mean_achieved).statistic,
        "critic_vs_prompt_vader_pearson": pearsonr(predicted, prompt_sentiment).statistic,
        "n_flagged": int(flagged.sum()),
        "flagged_mean": mean_achieved[flagged].mean().item(),
        "others_mean": mean_achieved[~flagged].mean().item(),
        "difference": (mean_achieved[flagged].mean() - mean_achieved[~flagged].mean()).item(),
        "difference_low": interval.low,
        "difference_high": interval.high,
        "p_value": test.pvalue,
    }


def main(results_dir: Path | None = None) -> None:
    torch.set_num_threads(1)  # the same as OMP_NUM_THREADS=1: one core, steady timings
    disable_progress_bars()  # datasets' bars
    disable_progress_bar()  # transformers' bars
    start = time.time()

    print("1. Data and models", flush=True)
    policy, tokenizer = tiny_lm(SEED)
    _, test_reviews = train_test_reviews(seed=SEED)
    eval_prompts = tokenizer.batch_decode(prompt_ids(tokenizer, test_reviews)[:N_EVAL_PROMPTS])
    print(f"   {len(eval_prompts)} held-out prompts, e.g. {eval_prompts[0]!r}", flush=True)
    set_seed(SEED)
    before = sample_rewards(policy, tokenizer, eval_prompts)
    print(f"   mean VADER of the pretrained policy on held-out prompts: {before.mean():+.3f}", flush=True)

    middle = N_UPDATES // 2
    reference_dir, run_dir = OUTPUT_DIR / "uninterrupted", OUTPUT_DIR / "resumed"
    shutil.rmtree(OUTPUT_DIR, ignore_errors=True)
    print(f"2. PPO for {N_UPDATES} updates of {BATCH_SIZE} episodes, with a checkpoint every {middle}", flush=True)
    reference = ppo_trainer(reference_dir, SEED, CRITIC_WARMUP_STEPS, CRITIC_LR, N_UPDATES, save_steps=middle)
    reference.train()
    checkpoint = reference_dir / f"checkpoint-{middle}"
    print(f"   {checkpoint.name} holds {sorted(path.name for path in checkpoint.iterdir())}", flush=True)

    print(
        f"3. Resume: a job preempted after update {middle} leaves {checkpoint.name} behind; a new trainer "
        "(new models, other random state) resumes it with `train(resume_from_checkpoint=True)`",
        flush=True,
    )
    shutil.copytree(checkpoint, run_dir / checkpoint.name)
    torch.manual_seed(12345)  # whatever the process did since: the checkpoint's RNG state must win
    trainer = ppo_trainer(run_dir, SEED, CRITIC_WARMUP_STEPS, CRITIC_LR, N_UPDATES, save_steps=middle)
    trainer.train(resume_from_checkpoint=True)
    trainer.save_model(str(run_dir))
    resumed = trainer.accelerator.unwrap_model(trainer.model)
    uninterrupted = reference.accelerator.unwrap_model(reference.model)
    policy_difference = max_weight_difference(resumed.policy, uninterrupted.policy)
    critic_difference = max_weight_difference(resumed.value_model, uninterrupted.value_model)
    print(
        f"   resumed vs uninterrupted after update {N_UPDATES}, largest weight difference: policy "
        f"{policy_difference:.1e}, critic {critic_difference:.1e} ({time.time() - start:.0f}s so far)",
        flush=True,
    )
    del trainer, reference

    print(
        "4. Reload the resumed run's policy and critic with plain transformers; on "
        f"{len(eval_prompts)} held-out prompts, predict each prompt's value and sample "
        f"{SAMPLES_PER_PROMPT} completions",
        flush=True,
    )
    result = evaluate(run_dir, tokenizer, eval_prompts)
    print(f"   mean VADER after PPO: {result['mean_reward']:+.3f} (before: {before.mean():+.3f})")
    print(
        f"   critic's value vs the mean reward of {SAMPLES_PER_PROMPT} samples: "
        f"Pearson {result['critic_pearson']:+.3f}, "
        f"Spearman {result['critic_spearman']:+.3f}\n"
        f"   ceiling (what the true expected reward would reach against that noisy mean): "
        f"{result['ceiling']:+.3f} = sqrt of the Spearman-Brown reliability {result['reliability']:.3f} "
        f"(split-half r between two means of {SAMPLES_PER_PROMPT // 2} samples: {result['split_half_r']:+.3f})\n"
        f"   baseline, the VADER sentiment of the prompt text itself: Pearson {result['prompt_vader_pearson']:+.3f}, "
        f"Spearman {result['prompt_vader_spearman']:+.3f} (critic vs prompt VADER: "
        f"{result['critic_vs_prompt_vader_pearson']:+.3f})",
        flush=True,
    )

    print("5. Routing: flag prompts whose predicted value is in the bottom quartile, before generating", flush=True)
    print(
        f"   {result['n_flagged']} flagged prompts get mean VADER {result['flagged_mean']:+.3f}; the "
        f"{len(eval_prompts) - result['n_flagged']} others get {result['others_mean']:+.3f}: difference "
        f"{result['difference']:+.3f}, 95% interval "
        f"[{result['difference_low']:+.3f}, {result['difference_high']:+.3f}] "
        f"(Welch t-test, p = {result['p_value']:.1g})"
    )
    predicted, mean_achieved = result["predicted"], result["mean_achieved"]
    order = predicted.argsort()
    for label, indices in (("lowest", order[:3]), ("highest", order[-3:].flip(0))):
        for i in indices.tolist():
            print(f"   {label} predicted {predicted[i]:+.3f}, achieved {mean_achieved[i]:+.3f}: {eval_prompts[i]!r}")
    print(f"Done in {time.time() - start:.0f}s ({time.process_time():.0f}s of CPU).")
    if results_dir is not None:
        results = {
            "settings": {
                "seed": SEED,
                "prompt_tokens": PROMPT_TOKENS,
                "response_tokens": RESPONSE_TOKENS,
                "batch_size": BATCH_SIZE,
                "ppo_updates": N_UPDATES,
                "policy_lr": POLICY_LR,
                "critic_lr": CRITIC_LR,
                "critic_warmup_steps": CRITIC_WARMUP_STEPS,
                "eval_prompts": len(eval_prompts),
                "samples_per_prompt": SAMPLES_PER_PROMPT,
            },
            "resume": {
                "resumed_from": middle,
                "policy_max_diff": policy_difference,
                "critic_max_diff": critic_difference,
            },
            "mean_reward_before": before.mean().item(),
            **{key: float(value) for key, value in result.items() if key not in ("predicted", "mean_achieved")},
            "wall_s": time.time() - start,
            "cpu_s": time.process_time(),
        }
        write_results(results, results_dir)


def write_results(results: dict, results_dir: Path) -> None:
    """`critic.json` (the figures) and `critic.md` (the page, made from the JSON only) in `results_dir`."""
    results_dir.mkdir(parents=True, exist_ok=True)
    (results_dir / "critic.json").write_text(json.dumps(results, indent=2) + "\n")
    r, settings = results, results["settings"]
    k = settings["samples_per_prompt"]
    page = f"""# How good is the kept critic? (written by `python -m demo.critic --results docs/results`)

PPO ({settings["ppo_updates"]} updates of {settings["batch_size"]} episodes, {settings["response_tokens"]}-token \
completions, policy lr {settings["policy_lr"]:g}, critic lr {settings["critic_lr"]:g} in its own parameter group, \
`critic_warmup_steps={settings["critic_warmup_steps"]}`) on the tiny review LM of `realdata.py`; the reward is the \
VADER sentiment of prompt and completion. A new trainer resumed the run from its checkpoint after update \
{r["resume"]["resumed_from"]} with `train(resume_from_checkpoint=True)`; against the uninterrupted run the largest \
weight difference after update {settings["ppo_updates"]} is {r["resume"]["policy_max_diff"]:.1e} (policy) and \
{r["resume"]["critic_max_diff"]:.1e} (critic).

On {settings["eval_prompts"]} held-out prompts, the critic's value at the last prompt token against the mean \
reward of {k} samples of the trained policy (seed {settings["seed"]}, one run):

| predictor | Pearson r | Spearman rho |
| --- | --- | --- |
| the critic (`predict_prompt_values`) | {r["critic_pearson"]:+.3f} | {r["critic_spearman"]:+.3f} |
| ceiling: the true expected reward | {r["ceiling"]:+.3f} | |
| baseline: VADER of the prompt text alone | {r["prompt_vader_pearson"]:+.3f} | {r["prompt_vader_spearman"]:+.3f} |

The ceiling is sqrt of the reliability of a {k}-sample mean: the split-half r between the means of two disjoint \
halves of the samples ({r["split_half_r"]:+.3f}, uncorrected), stepped up to {k} samples with Spearman-Brown \
({r["reliability"]:.3f}). The critic and the prompt's VADER correlate at {r["critic_vs_prompt_vader_pearson"]:+.3f}.

Routing: the {r["n_flagged"]:.0f} prompts with the bottom-quartile predicted value get a mean reward of \
{r["flagged_mean"]:+.3f}, the others {r["others_mean"]:+.3f}: difference {r["difference"]:+.3f}, 95% interval \
[{r["difference_low"]:+.3f}, {r["difference_high"]:+.3f}] (Welch t-test, p = {r["p_value"]:.1g}).

Mean reward before PPO {r["mean_reward_before"]:+.3f}, after {r["mean_reward"]:+.3f}. The demo took \
{r["wall_s"]:.0f} s ({r["cpu_s"]:.0f} s of CPU).
"""
    (results_dir / "critic.md").write_text(page)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--results", type=Path, help="also write critic.json and critic.md into this folder")
    main(parser.parse_args().results)
