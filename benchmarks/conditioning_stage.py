"""What the conditioning benchmarks share: the setup (base model, reward, data, judge), the arms' training and
sampling, the control metrics, and the stage cache with its provenance.

Data: IMDb reviews (`realdata`); prompt = the first 8 tokens of a review, completion = the next <= 16 tokens, reward =
`realdata.sentiment_logit` of exactly the completion (a TF-IDF logistic-regression logit: unbounded). Arms, all
fine-tuning the same base with the same steps, batch and learning rate:

- `scalar`: `RewardConditionedTrainer`, the reward as one embedding in front of the prompt (`reward_position=
  "prefix"`), reward dropout 0.1 (the null reward that guidance needs), the reward head at `head_lr_mult` x the
  learning rate (`RewardConditionedConfig.reward_head_learning_rate`; AdamW, no weight decay); sampled plainly or with classifier-free guidance on the reward (`guidance_scale=w`);
- `quantile_tokens` (`<|q0|>`..`<|q4|>`, the training quintiles, as Quark), `good_bad_tokens` (`<|good|>`/`<|bad|>`
  split at the median, as Korbak et al.), `reward_text` (`<reward 1.23>`, as Rewards-in-Context): control text in
  front of the prompt, `SFTTrainer` with completion-only loss; new token rows drawn after seeding;
- `filtered_sft`: plain SFT on the rows given (by default the top training quintile); `base`: no training.

Hygiene: every stage seeds every draw from its own seed (`transformers.set_seed` before the model is copied or its
embeddings resized); sampling and learning-curve measurements run inside `isolated_rng`, so measuring never changes
training; every evaluation uses several sampling seeds. A stage's cache folder is named by a hash of the patch set
(`patches/series` and the patch files), the installed trl's reward-conditioning and PPO sources, the transformers
version, the benchmark's code (this file, `evaluation.py`, `realdata.py` and the calling script) and its config.
"""

import os


os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

import argparse
import contextlib
import copy
import hashlib
import importlib.metadata
import json
import platform
import random
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import transformers
from datasets import Dataset, disable_progress_bars
from scipy import stats
from transformers import GPT2Config, GPT2LMHeadModel, PrinterCallback, TrainerCallback, set_seed
from transformers.utils.logging import disable_progress_bar

import realdata
import trl
from benchmarks import evaluation
from trl import SFTConfig, SFTTrainer
from trl.experimental.reward_conditioning import (
    RewardConditionedCausalLM,
    RewardConditionedConfig,
    RewardConditionedTrainer,
)


ROOT = Path(__file__).resolve().parents[1]
PROMPT_TOKENS = 8
COMPLETION_TOKENS = 16
MAX_LENGTH = 48  # token budget per training sequence (prompt + control text + completion + EOS)
REWARD_DROPOUT = 0.1
HEAD_LR_MULT = 10.0  # default learning-rate multiplier of the reward head (and null reward)
CONTROL_TOKENS = {"good_bad_tokens": ["<|bad|>", "<|good|>"], "quantile_tokens": [f"<|q{k}|>" for k in range(5)]}
TRAINED_ARMS = ("scalar", "quantile_tokens", "good_bad_tokens", "reward_text", "filtered_sft")

CONFIGS = {
    # The CPU benchmark on the tiny pretrained GPT-2. 1,500 steps (2.4 epochs): at 500 the scalar arm is
    # under-trained (seed 0, bulk r over sampling seeds 0-2: 0.30 at 500 steps, 0.57 at 1,500).
    "full": dict(
        n_train=20000,
        max_steps=1500,
        batch_size=32,
        learning_rate=3e-3,
        n_prompts=300,
        n_curve_prompts=150,
        curve_points=8,
        gen_batch=300,
        seeds=[0, 1, 2],
        sampling_seeds=[0, 1, 2],
    ),
    # CI: an untrained 2x32 GPT-2, a few steps; the numbers mean nothing, the pipeline runs end to end.
    "quick": dict(
        n_train=300,
        max_steps=4,
        batch_size=8,
        learning_rate=3e-3,
        n_prompts=24,
        n_curve_prompts=12,
        curve_points=2,
        gen_batch=64,
        seeds=[0, 1],
        sampling_seeds=[0, 1, 2],
    ),
    # SmolLM2-135M-Instruct as the base on a 2-core CPU (`--model smollm2` without a GPU): full fine-tuning at
    # 4-5 s a step on one thread, so one training seed, 400 steps at batch 16 (6,400 of the 24,000 rows: about
    # 30 min an arm), no learning curves.
    "smollm2_cpu": dict(
        n_train=24000,
        max_steps=400,
        batch_size=16,
        learning_rate=1e-4,
        n_prompts=300,
        n_curve_prompts=0,
        curve_points=0,
        gen_batch=150,
        seeds=[0],
        sampling_seeds=[0, 1, 2],
    ),
    # The GPU lane: SmolLM2-135M-Instruct as the base.
    "smollm2": dict(
        n_train=24000,
        max_steps=1500,
        batch_size=32,
        learning_rate=5e-5,
        n_prompts=500,
        n_curve_prompts=300,
        curve_points=8,
        gen_batch=256,
        seeds=[0, 1, 2],
        sampling_seeds=[0, 1, 2],
    ),
}


@dataclass
class Bench:
    """Everything a benchmark script reads: the base model and tokenizer, the reward, the judge and the data."""

    mode: str
    cfg: dict
    base: torch.nn.Module
    tokenizer: object
    score: object  # list[str] -> list[float]
    judge: tuple  # (model, tokenizer) for `evaluation`
    info: dict
    rows: list  # training rows {"prompt", "completion", "reward"}
    test_rows: list  # held-out rows: the first `n_prompts` are the evaluation prompts
    rstats: dict = field(default_factory=dict)

    @property
    def prompts(self):
        return [row["prompt"] for row in self.test_rows[: self.cfg["n_prompts"]]]

    @property
    def continuations(self):
        return [row["completion"] for row in self.test_rows[: self.cfg["n_prompts"]]]

    @property
    def curve_prompts(self):
        return [row["prompt"] for row in self.test_rows[-self.cfg["n_curve_prompts"] :]]


def _quick_base():
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
    return GPT2LMHeadModel(config).eval(), tokenizer


def base_model(model):
    """`tiny` (realdata.tiny_lm) or `smollm2` (realdata.smollm2, on the GPU when there is one): (model, tokenizer)."""
    if model == "tiny":
        return realdata.tiny_lm(seed=0)
    base, tokenizer = realdata.smollm2()
    return base.to("cuda" if torch.cuda.is_available() else "cpu"), tokenizer


def load_bench(mode):
    """The base, reward, judge and data of a mode: `quick` (untrained 2x32 GPT-2 that is also its own judge, a reward
    fitted on 2,000 reviews: seconds), `full` (realdata.tiny_lm, judged by SmolLM2-135M) or `smollm2`."""
    disable_progress_bars()
    disable_progress_bar()
    cfg = CONFIGS[mode]
    if mode == "quick":
        base, tokenizer = _quick_base()
        texts, labels = realdata.labelled_train_reviews()
        classifier = realdata.fit_sentiment_classifier(texts[:1000] + texts[-1000:], labels[:1000] + labels[-1000:])

        def score(completions):
            return [float(x) for x in classifier.decision_function(list(completions))]

        judge = (base, tokenizer)
        info = {"name": "untrained 2x32 GPT-2 (--quick)", "judge": "the untrained base itself (--quick)"}
    else:
        base, tokenizer = base_model("tiny" if mode == "full" else "smollm2")
        n_params = sum(p.numel() for p in base.parameters())
        name = (
            f"tiny GPT-2 {realdata.N_LAYER}x{realdata.N_EMBD} ({n_params / 1e6:.2f}M params, realdata.tiny_lm)"
            if mode == "full"
            else "SmolLM2-135M-Instruct (realdata.smollm2)"
        )
        score, judge = realdata.sentiment_logit, evaluation.smollm2_judge()
        _, test = realdata.train_test_reviews()
        info = {
            "name": name,
            "judge": "SmolLM2-135M-Instruct (realdata.smollm2), forward only",
            "held_out_perplexity": realdata.opening_perplexity(base, tokenizer, test[: realdata.PRETRAIN_EVAL_TEXTS]),
            "sentiment_accuracy": realdata.sentiment_accuracy(),
        }
    train_reviews, test_reviews = realdata.train_test_reviews(n_test=1000, seed=0)
    rows = realdata.prompt_completion_reward(
        tokenizer, train_reviews[: cfg["n_train"]], PROMPT_TOKENS, COMPLETION_TOKENS, score=score
    )
    test_rows = realdata.prompt_completion_reward(tokenizer, test_reviews, PROMPT_TOKENS, COMPLETION_TOKENS, score)
    bench = Bench(mode, cfg, base, tokenizer, score, judge, info, rows, test_rows)
    bench.rstats = reward_stats([row["reward"] for row in rows])
    return bench


def reward_stats(rewards):
    """Statistics of training rewards: the bulk (q05-q95) and full ranges of targets, the token arms' thresholds."""
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
    }


# ----------------------------------------------------------------------------------------------------------------
# Arms: data, training, sampling


def control_text(arm, reward, rstats):
    """What a token or text arm puts in front of the prompt for a reward (training) or a target (sampling)."""
    if arm == "good_bad_tokens":
        return "<|good|>" if reward >= rstats["median"] else "<|bad|>"
    if arm == "quantile_tokens":
        return f"<|q{int(np.searchsorted(rstats['quintile_edges'], reward, side='right'))}|>"
    if arm == "reward_text":
        return f"<reward {reward:.2f}>"
    return ""


def arm_dataset(arm, rows, rstats):
    if arm == "scalar":
        return Dataset.from_list([{k: r[k] for k in ("prompt", "completion", "reward")} for r in rows])
    return Dataset.from_list(
        [{"prompt": control_text(arm, r["reward"], rstats) + r["prompt"], "completion": r["completion"]} for r in rows]
    )


@contextlib.contextmanager
def isolated_rng():
    """Run a measurement without touching any random stream the training reads (torch, numpy, Python)."""
    py_state, np_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        yield
    random.setstate(py_state)
    np.random.set_state(np_state)


class _Curve(TrainerCallback):
    def __init__(self, steps, measure, model_ref):
        self.steps, self.measure, self.model_ref, self.points = set(steps), measure, model_ref, []

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step in self.steps:
            with isolated_rng():
                self.points.append({"step": state.global_step, **self.measure(self.model_ref())})


class _NewTokenLR(TrainerCallback):
    """Scales each optimizer update of the added tokens' rows by `mult`: with AdamW and no weight decay that is a
    learning rate `mult` x larger for the new rows only, matching the scalar arm's reward head."""

    def __init__(self, embeddings, token_ids, mult):
        self.weight, self.ids, self.mult, self.before = embeddings.weight, torch.tensor(token_ids), mult, None

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        self.before = self.weight.detach()[self.ids].clone()  # (K, H)

    def on_optimizer_step(self, args, state, control, **kwargs):
        with torch.no_grad():
            self.weight[self.ids] = self.before + self.mult * (self.weight[self.ids] - self.before)  # (K, H)


def train_arm(
    bench,
    arm,
    rows,
    rstats,
    seed,
    output_dir,
    head_lr_mult=HEAD_LR_MULT,
    curve=None,
    max_steps=None,
    reward_dropout=REWARD_DROPOUT,
    head_init_std=None,
):
    """Fine-tune a copy of the base for one arm on `rows` (whose statistics `rstats` set the token thresholds).

    `curve`: None, or a function (model, tokenizer) -> dict measured at `cfg["curve_points"]` evenly spaced steps
    inside `isolated_rng`. `reward_dropout` and `head_init_std` (None: the model's own initialization; else the
    scalar arm's reward head weight and bias are drawn again from N(0, head_init_std^2)) are the scalar arm's levers.
    Returns (model in eval mode, tokenizer, train seconds, curve points or None).
    """
    cfg = bench.cfg
    max_steps = max_steps or cfg["max_steps"]
    set_seed(seed)  # before anything draws: the copy's new token rows and the reward head come from this seed
    model, tokenizer = copy.deepcopy(bench.base), copy.deepcopy(bench.tokenizer)
    common = dict(
        output_dir=str(output_dir),
        max_steps=max_steps,
        per_device_train_batch_size=cfg["batch_size"],
        learning_rate=cfg["learning_rate"],
        lr_scheduler_type="cosine",
        warmup_steps=max(1, max_steps // 20),
        max_length=MAX_LENGTH,
        seed=seed,
        bf16=False,
        gradient_checkpointing=False,
        logging_steps=max(1, max_steps // 5),
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
    )
    if arm == "scalar":
        args = RewardConditionedConfig(
            reward_position="prefix",
            reward_dropout=reward_dropout,
            reward_head_learning_rate=head_lr_mult * cfg["learning_rate"],
            optim="adamw_torch",
            weight_decay=0.0,
            **common,
        )
        trainer = RewardConditionedTrainer(
            model=model, args=args, train_dataset=arm_dataset(arm, rows, rstats), processing_class=tokenizer
        )
        if head_init_std is not None:
            with torch.no_grad():
                trainer.model.reward_head.linear.weight.normal_(std=head_init_std)
                trainer.model.reward_head.linear.bias.normal_(std=head_init_std)
    else:
        if arm in CONTROL_TOKENS:
            tokenizer.add_tokens(CONTROL_TOKENS[arm], special_tokens=True)
            # Drawn at random like any new weight (mean_resizing would give every new token the same vector).
            model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
        args = SFTConfig(completion_only_loss=True, loss_type="nll", **common)
        trainer = SFTTrainer(
            model=model, args=args, train_dataset=arm_dataset(arm, rows, rstats), processing_class=tokenizer
        )
        if arm in CONTROL_TOKENS:
            ids = tokenizer.convert_tokens_to_ids(CONTROL_TOKENS[arm])
            trainer.add_callback(_NewTokenLR(trainer.model.get_input_embeddings(), ids, head_lr_mult))
    trainer.remove_callback(PrinterCallback)
    _check_token_ids(arm, trainer, tokenizer, rows, rstats)
    points = None
    if curve is not None:
        steps = sorted({max(1, round(max_steps * k / cfg["curve_points"])) for k in range(1, cfg["curve_points"] + 1)})
        callback = _Curve(steps, lambda model: curve(model, tokenizer), lambda: trainer.model)
        trainer.add_callback(callback)
        points = callback.points
    start = time.perf_counter()
    trainer.train()
    return trainer.model.eval(), tokenizer, time.perf_counter() - start, points


def _check_token_ids(arm, trainer, tokenizer, rows, rstats):
    """The ids the trainer trains on must start with the ids `sample` feeds `generate` for the same prompt."""
    for k in range(min(4, len(rows))):
        train_ids = list(trainer.train_dataset[k]["input_ids"])
        eval_ids = tokenizer(control_text(arm, rows[k]["reward"], rstats) + rows[k]["prompt"])["input_ids"]
        if train_ids[: len(eval_ids)] != eval_ids:
            raise RuntimeError(
                f"{arm}: the training ids {train_ids} do not start with the sampling prompt ids {eval_ids}; training "
                "and sampling would see different control tokens."
            )


@torch.no_grad()
def sample(arm, model, tokenizer, prompts, targets, rstats, seed, batch_size, guidance_scale=None):
    """One completion per (prompt, target), temperature 1, no top-k/top-p, sampled with its own seed inside
    `isolated_rng` (the caller's random streams are untouched)."""
    was_training = model.training
    model.eval()
    tokenizer.padding_side = "left"
    completions = []
    with isolated_rng():
        torch.manual_seed(seed)
        for i in range(0, len(prompts), batch_size):
            batch_prompts, batch_targets = prompts[i : i + batch_size], targets[i : i + batch_size]
            extra = {}
            if arm == "scalar":
                texts, extra["rewards"] = batch_prompts, torch.tensor(batch_targets, dtype=torch.float32)  # (B,)
                if guidance_scale is not None and guidance_scale != 1.0:
                    extra["guidance_scale"] = guidance_scale
            else:
                texts = [control_text(arm, t, rstats) + p for p, t in zip(batch_prompts, batch_targets, strict=True)]
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
def check_model(base, tokenizer):
    """Before a long run on a new base (e.g. SmolLM2 on a GPU): wrap it with a null reward, one forward with labels,
    a conditioned and a guided (w=2) greedy `generate`, and a save/load round trip that must give identical logits.
    Returns the figures; raises on a non-finite loss or different reloaded logits."""
    figures = {"base_params": sum(p.numel() for p in base.parameters())}
    model = RewardConditionedCausalLM.from_base(base, use_null_reward=True).eval()
    tokenizer.padding_side = "left"
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
        model.save_pretrained(path)
        reloaded = RewardConditionedCausalLM.from_pretrained(path).to(base.device).eval()
    figures["identical_logits"] = torch.equal(reloaded(**enc, rewards=rewards).logits, outputs.logits)
    if not figures["identical_logits"]:
        raise RuntimeError("check: the reloaded model's logits differ from the saved model's.")
    return figures


# ----------------------------------------------------------------------------------------------------------------
# Metrics


def uniform_targets(lo, hi, n, seed):
    return np.random.default_rng(seed).uniform(lo, hi, n)


def pearson(x, y):
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.std() == 0 or y.std() == 0:
        return 0.0
    return float(np.corrcoef(x, y)[0, 1])


def mean_ci95(values):
    """Mean and 95 % t-interval over independent values (seeds); the interval is [mean, mean] for one value."""
    values = np.asarray(values, dtype=np.float64)
    mean = float(values.mean())
    if len(values) < 2:
        return mean, [mean, mean]
    half = float(stats.t.ppf(0.975, len(values) - 1) * values.std(ddof=1) / np.sqrt(len(values)))
    return mean, [mean - half, mean + half]


def bootstrap_r_ci95(targets, achieved, seed=0, n=1000):
    """95 % percentile interval of Pearson r over prompts resampled with replacement."""
    rng = np.random.default_rng(seed)
    targets, achieved = np.asarray(targets), np.asarray(achieved)
    rs = [pearson(targets[idx], achieved[idx]) for idx in rng.integers(0, len(targets), (n, len(targets)))]
    return [float(v) for v in np.quantile(rs, [0.025, 0.975])]


# ----------------------------------------------------------------------------------------------------------------
# Provenance and the stage cache


def patch_set_hash():
    series = ROOT / "patches" / "series"
    names = [line.strip() for line in series.read_text().splitlines() if line.strip() and not line.startswith("#")]
    return realdata.hash_files([series] + [ROOT / "patches" / name for name in names])


def trl_source_hash():
    """Hash of the installed trl's reward-conditioning and PPO sources: what the stages actually ran."""
    root = Path(trl.__file__).parent / "experimental"
    return realdata.hash_files(
        sorted((root / "reward_conditioning").glob("*.py")) + sorted((root / "ppo").glob("*.py"))
    )


def code_hash(script):
    here = Path(__file__).resolve().parent
    return realdata.hash_files(
        [here / "conditioning_stage.py", here / "evaluation.py", ROOT / "realdata.py", Path(script)]
    )


def trl_version():
    """The installed trl's version: its metadata, else the VERSION file of the source tree it is imported from."""
    try:
        return importlib.metadata.version("trl")
    except importlib.metadata.PackageNotFoundError:
        version_file = Path(trl.__file__).parent.parent / "VERSION"
        return version_file.read_text().strip() + " (source tree)" if version_file.exists() else "not found"


def environment(script):
    commit = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    )
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "trl": trl_version(),
        "trl_path": str(Path(trl.__file__).parent),
        "trl_source_hash": trl_source_hash(),
        "patch_set_hash": patch_set_hash(),
        "code_hash": code_hash(script),
        "repo_commit": commit.stdout.strip() or "n/a",
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, "
        + (torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"),
        "torch_threads": torch.get_num_threads(),
    }


class StageCache:
    """Finished stages as JSON files (and saved models) in a folder named by everything they depend on."""

    def __init__(self, root, script, mode, cfg, extra=None):
        env = environment(script)
        key = {k: env[k] for k in ("transformers", "torch", "trl", "trl_source_hash", "patch_set_hash", "code_hash")}
        key.update(mode=mode, cfg=cfg, extra=extra)
        self.run_id = f"{mode}-{hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:10]}"
        self.dir = Path(root) / f"{Path(script).stem}-{self.run_id}"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.environment = env

    def get(self, name, compute):
        """The cached JSON of stage `name`, or `compute()`'s result, stored with its wall time in `seconds`."""
        path = self.dir / f"{name}.json"
        if path.exists():
            print(f"[bench] {name}: cached", flush=True)
            return json.loads(path.read_text())
        print(f"[bench] {name}: running", flush=True)
        start = time.perf_counter()
        result = compute()
        result["stage_seconds"] = time.perf_counter() - start
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(result) + "\n")
        tmp.rename(path)
        print(f"[bench] {name}: done in {result['stage_seconds']:.0f}s", flush=True)
        return result


def argument_parser(doc):
    """The options every conditioning benchmark takes: `--quick`, `--out`, `--cache-dir` and `--render`."""
    parser = argparse.ArgumentParser(description=doc.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="CI smoke run: untrained tiny model, numbers meaningless")
    parser.add_argument("--out", type=Path, default=Path("docs/results"))
    parser.add_argument("--cache-dir", type=Path, default=realdata.CACHE_DIR)
    parser.add_argument("--render", action="store_true", help="only rewrite the page (and plots) from the JSON")
    return parser


def unfinished_banner(payload):
    """What a page says when its run has not done all its stages; empty when it has."""
    if payload["complete"]:
        return ""
    return (
        f"\n**Unfinished run: {payload['stages_done']} stages done. Rerunning the command on the code it ran "
        f"(commit `{payload['environment']['repo_commit']}`) resumes it; other code starts a new run.**\n"
    )


def command(script, argv):
    return "python -m benchmarks." + Path(script).stem + "".join(f" {a}" for a in argv)


def write_json(path, payload):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n")


def run_header(cache, script, argv, mode, cfg, start, done, total):
    """What every staged results JSON starts with: the run, its command, its progress (`done` of `total` stages), the
    wall time of this invocation (since `start`), the environment and the config."""
    return {
        "run_id": cache.run_id,
        "mode": mode,
        "command": command(script, sys.argv[1:] if argv is None else argv),
        "stages_done": f"{done}/{total}",
        "complete": done == total,
        "wall_seconds_this_invocation": time.perf_counter() - start,
        "environment": cache.environment,
        "config": cfg,
    }


def write_page(out, name, payload, render):
    """`<name>.json` in `out` and the page `<name>.md` written from it by `render`."""
    write_json(out / f"{name}.json", payload)
    (out / f"{name}.md").write_text(render(payload))


def rerender(out, name, render):
    """`--render`: the page `<name>.md` written again from `<name>.json` only; returns the JSON."""
    payload = json.loads((out / f"{name}.json").read_text())
    (out / f"{name}.md").write_text(render(payload))
    return payload


def fmt_ci(value, ci, digits=3):
    return f"{value:+.{digits}f} [{ci[0]:+.{digits}f}, {ci[1]:+.{digits}f}]"
