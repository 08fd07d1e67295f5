"""PPO keeps its critic: train, save with the value model, reload it with plain transformers, predict rewards.

Offline, on CPU, in a few minutes: the policy is the tiny GPT-2 of `demo.common` (pretrained on IMDb review openings),
prompts are the first 8 tokens of IMDb reviews, and the reward is the VADER sentiment of the text (prompt and
completion, which is what PPO hands a reward model). After PPO the critic is reloaded from `value_model/` with `AutoModelForSequenceClassification` and, on held-out prompts, its value at
the last prompt token (`predict_prompt_values`) is compared with the reward the trained policy then gets.

Run from the repository root: `python -m demo.critic`.
"""

import copy
import shutil
import time

import torch
from datasets import Dataset, disable_progress_bars
from scipy.stats import pearsonr, spearmanr
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

from demo.common import CACHE_DIR, tiny_lm, train_test_reviews, vader
from trl.experimental.ppo import PPOConfig, PPOTrainer, predict_prompt_values


SEED = 0
PROMPT_TOKENS = 8
RESPONSE_TOKENS = 48
TEMPERATURE = 1.0
N_TRAIN_PROMPTS = 2048
BATCH_SIZE = 32
TOTAL_EPISODES = 1536  # 48 PPO updates of 32 episodes
LEARNING_RATE = 1e-4
N_EVAL_PROMPTS = 256
SAMPLES_PER_PROMPT = 4
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
    """One short line per logging step instead of the full metrics dict."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.global_step % LOG_EVERY == 0:
            print(
                f"   update {state.global_step}/{state.max_steps}: mean reward {float(logs['objective/scores']):+.3f}, "
                f"KL {float(logs['objective/kl']):.2f}, value loss {float(logs['loss/value_avg']):.4f}",
                flush=True,
            )


def prompt_ids(tokenizer, reviews: list[str]) -> list[list[int]]:
    """The first `PROMPT_TOKENS` token ids of every review that is longer than that."""
    ids = tokenizer(reviews, add_special_tokens=False)["input_ids"]
    return [row[:PROMPT_TOKENS] for row in ids if len(row) > PROMPT_TOKENS]


@torch.no_grad()
def sample_rewards(policy, tokenizer, prompts: list[str]) -> torch.Tensor:
    """Sample `SAMPLES_PER_PROMPT` completions per prompt the way PPO does and score them: (n_prompts, samples)."""
    rewards = []
    for start in range(0, len(prompts), 64):
        batch = tokenizer(prompts[start : start + 64], padding=True, return_tensors="pt")
        output = policy.generate(
            input_ids=batch["input_ids"].repeat_interleave(SAMPLES_PER_PROMPT, 0),
            attention_mask=batch["attention_mask"].repeat_interleave(SAMPLES_PER_PROMPT, 0),
            max_new_tokens=RESPONSE_TOKENS,
            do_sample=True,
            temperature=TEMPERATURE,
            top_k=0,
            top_p=1.0,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
        texts = tokenizer.batch_decode(output, skip_special_tokens=True)  # prompt and completion, as PPO scored them
        rewards.append(torch.tensor(vader(texts)).view(-1, SAMPLES_PER_PROMPT))
    return torch.cat(rewards)


def main() -> None:
    torch.set_num_threads(1)  # the same as OMP_NUM_THREADS=1: one core, steady timings
    disable_progress_bars()  # datasets' bars
    disable_progress_bar()  # transformers' bars
    start = time.time()

    print("1. Data and models", flush=True)
    policy, tokenizer = tiny_lm(SEED)
    ref_policy, _ = tiny_lm(SEED)
    set_seed(SEED)  # after `tiny_lm`, whose random draws differ between a first build and a cached load
    critic_config = copy.deepcopy(policy.config)
    critic_config.num_labels = 1
    critic = AutoModelForSequenceClassification.from_config(critic_config)
    critic.transformer.load_state_dict(policy.transformer.state_dict())  # the critic starts from the policy's body
    reward_model = VaderRewardModel(tokenizer)

    train_reviews, test_reviews = train_test_reviews(seed=SEED)
    train_dataset = Dataset.from_dict({"input_ids": prompt_ids(tokenizer, train_reviews[:N_TRAIN_PROMPTS])})
    eval_prompts = tokenizer.batch_decode(prompt_ids(tokenizer, test_reviews)[:N_EVAL_PROMPTS])
    print(f"   {len(train_dataset)} training prompts, {len(eval_prompts)} held-out prompts, e.g. {eval_prompts[0]!r}")

    before = sample_rewards(policy, tokenizer, eval_prompts)
    print(f"   mean VADER of the pretrained policy on held-out prompts: {before.mean():+.3f}", flush=True)

    print(f"2. PPO for {TOTAL_EPISODES} episodes ({TOTAL_EPISODES // BATCH_SIZE} updates)", flush=True)
    shutil.rmtree(OUTPUT_DIR, ignore_errors=True)
    args = PPOConfig(
        output_dir=str(OUTPUT_DIR),
        save_value_model=True,
        bf16=False,
        seed=SEED,
        learning_rate=LEARNING_RATE,
        per_device_train_batch_size=BATCH_SIZE,
        total_episodes=TOTAL_EPISODES,
        local_rollout_forward_batch_size=BATCH_SIZE,
        response_length=RESPONSE_TOKENS,
        temperature=TEMPERATURE,
        stop_token="eos",
        num_sample_generations=0,
        gradient_checkpointing=False,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
    )
    trainer = PPOTrainer(
        args=args,
        processing_class=tokenizer,
        model=policy,
        ref_model=ref_policy,
        reward_model=reward_model,
        train_dataset=train_dataset,
        value_model=critic,
    )
    trainer.remove_callback(PrinterCallback)
    trainer.add_callback(CompactLog())
    trainer.train()
    trainer.save_model(str(OUTPUT_DIR))
    print(f"   saved the policy and its critic to {OUTPUT_DIR} ({time.time() - start:.0f}s so far)", flush=True)

    print("3. Reload both with plain transformers and evaluate on held-out prompts", flush=True)
    policy = AutoModelForCausalLM.from_pretrained(OUTPUT_DIR, dtype=torch.float32)
    critic = AutoModelForSequenceClassification.from_pretrained(OUTPUT_DIR / "value_model", dtype=torch.float32)
    predicted = torch.tensor(predict_prompt_values(critic, tokenizer, eval_prompts))  # (n_prompts,)
    achieved = sample_rewards(policy, tokenizer, eval_prompts)  # (n_prompts, samples)
    mean_achieved = achieved.mean(dim=1)
    print(f"   mean VADER after PPO: {achieved.mean():+.3f} (before: {before.mean():+.3f})")
    print(
        f"   predicted value vs mean reward of {SAMPLES_PER_PROMPT} samples, over {len(eval_prompts)} prompts: "
        f"Pearson {pearsonr(predicted, mean_achieved).statistic:+.3f}, "
        f"Spearman {spearmanr(predicted, mean_achieved).statistic:+.3f}"
    )
    per_sample = predicted.repeat_interleave(SAMPLES_PER_PROMPT)
    print(
        f"   per sample ({achieved.numel()} completions): "
        f"Pearson {pearsonr(per_sample, achieved.flatten()).statistic:+.3f}, "
        f"Spearman {spearmanr(per_sample, achieved.flatten()).statistic:+.3f}"
    )

    print("4. Routing: flag prompts whose predicted value is in the bottom quartile, before generating", flush=True)
    flagged = predicted <= predicted.quantile(0.25)
    print(
        f"   {int(flagged.sum())} flagged prompts get mean VADER {mean_achieved[flagged].mean():+.3f}; "
        f"the {int((~flagged).sum())} others get {mean_achieved[~flagged].mean():+.3f}"
    )
    order = predicted.argsort()
    for label, indices in (("lowest", order[:3]), ("highest", order[-3:].flip(0))):
        for i in indices.tolist():
            print(f"   {label} predicted {predicted[i]:+.3f}, achieved {mean_achieved[i]:+.3f}: {eval_prompts[i]!r}")
    print(f"Done in {time.time() - start:.0f}s.")


if __name__ == "__main__":
    main()
