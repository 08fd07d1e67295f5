"""What the critic benchmarks (`critic_routing`, `critic_value_guided`, `critic_warm_start`) and `demo.critic` share.

The honest setting: the reward is the project's sentiment logit (`realdata.sentiment_logit`, TF-IDF logistic
regression) of the COMPLETION ONLY, so the prompt's own words are not part of it; every table keeps the prompt-only
baselines (the same scorer on the prompt text, and VADER of the prompt) beside the critic.

The two policies are PPO specialists trained from the tiny review LM of `realdata.py` with `save_value_model=True`:
`pos` on prompts of positive training reviews, `neg` on prompts of negative ones, both toward a positive completion.
Each learns what its own prompts need (lift an already positive review further, or turn a negative one around), so
neither need be best on every prompt: the routing question of upstream issue #3293 ("if the value model predicts
that model1 would do poorly, switch to model2"). Trained policies are cached under `realdata.CACHE_DIR`, keyed by
their settings, so the three scripts and the demo share them.

Modes: `quick` (untrained 2x32 GPT-2 and a reward fitted on 2,000 reviews, a few updates: seconds, for the tests),
`demo` (the tiny LM, short runs: `make demo`) and `full` (the benchmark's runs).
"""

import copy
import functools
import hashlib
import json
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from datasets import Dataset, disable_progress_bars
from torch import nn
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    GPT2Config,
    GPT2LMHeadModel,
    PrinterCallback,
    TrainerCallback,
    set_seed,
)
from transformers.modeling_outputs import BaseModelOutput
from transformers.utils.logging import disable_progress_bar

import realdata
import trl
from trl.experimental.ppo import PPOConfig, PPOTrainer


CODE_VERSION = 1  # bump with any change to how policies are trained here (it keys the cache, with the PPO sources)
PROMPT_TOKENS = 8
RESPONSE_TOKENS = 16
POLICY_LR = 1e-4
CRITIC_LR = 3e-3  # the demo's measured choice, as `PPOConfig.critic_learning_rate`
RESULTS = Path(__file__).resolve().parents[1] / "docs" / "results"

MODES = {
    "quick": dict(
        batch=8, updates=2, warmup=1, kl_coef=0.1, train_prompts=64, calib=16, eval=32, samples=2, seeds=(0, 1),
        vgd_prompts=8, top_k=4, beta=2.0, betas=(0.0, 2.0), warm_updates=2, warm_seeds=(0, 1), judge_seeds=1,
    ),
    "demo": dict(
        batch=32, updates=32, warmup=8, kl_coef=0.1, train_prompts=2048, calib=128, eval=256, samples=4, seeds=(0, 1),
        vgd_prompts=32, top_k=8, beta=2.0, betas=(0.0, 2.0), warm_updates=6, warm_seeds=(0,), judge_seeds=0,
    ),
    "full": dict(
        batch=32, updates=64, warmup=16, kl_coef=0.1, train_prompts=4096, calib=256, eval=512, samples=8, seeds=(0, 1, 2),
        vgd_prompts=128, top_k=8, beta=2.0, betas=(0.0, 0.5, 1.0, 2.0, 4.0), warm_updates=24, warm_seeds=(0, 1, 2),
        judge_seeds=1,
    ),
}  # fmt: skip
POLICIES = {"pos": 1, "neg": 0}  # policy name -> label of the training reviews whose prompts it is trained on


@dataclass
class Setup:
    mode: str
    cfg: dict
    tokenizer: object
    score: object  # list[str] -> list[float]: the reward of a completion text
    judge: tuple | None  # (model, tokenizer) for `evaluation.judge_perplexity`; None: SmolLM2
    train_prompts: dict  # policy name -> list of prompt token-id lists
    calib_prompts: list  # held-out prompt token ids, for fitting the prompt-only routing baseline
    eval_prompts: list  # held-out prompt token ids, for every measurement
    info: dict = field(default_factory=dict)

    def base(self) -> nn.Module:
        """A fresh copy of the base policy."""
        if self.mode == "quick":
            return _quick_base(self.tokenizer)
        return realdata.tiny_lm(0)[0]

    def texts(self, prompts) -> list[str]:
        return self.tokenizer.batch_decode(prompts)


def _quick_base(tokenizer) -> nn.Module:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        config = GPT2Config(
            vocab_size=len(tokenizer), n_positions=64, n_embd=32, n_layer=2, n_head=2,
            bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )  # fmt: skip
        return GPT2LMHeadModel(config).eval()


@functools.cache
def _quick_tokenizer_and_classifier():
    """A 512-token BPE tokenizer and a sentiment classifier fitted on 2,000 reviews: seconds, once per process."""
    texts, labels = realdata.labelled_train_reviews()
    train, _ = realdata.train_test_reviews()
    tokenizer = realdata.train_tokenizer(train[:1000], vocab_size=512)
    return tokenizer, realdata.fit_sentiment_classifier(texts[:1000] + texts[-1000:], labels[:1000] + labels[-1000:])


def _prompt_ids(tokenizer, reviews):
    ids = tokenizer(list(reviews), add_special_tokens=False)["input_ids"]
    return [row[:PROMPT_TOKENS] for row in ids if len(row) > PROMPT_TOKENS]


def load_setup(mode: str) -> Setup:
    disable_progress_bars()
    disable_progress_bar()
    torch.set_num_threads(1)
    cfg = MODES[mode]
    texts, labels = realdata.labelled_train_reviews()
    if mode == "quick":
        tokenizer, classifier = _quick_tokenizer_and_classifier()

        def score(completions):
            return [float(x) for x in classifier.decision_function(list(completions))]

        judge = (_quick_base(tokenizer), tokenizer)
        info = {"base": "untrained 2x32 GPT-2 (--quick)", "judge": "the untrained base itself (--quick)"}
    else:
        _, tokenizer = realdata.tiny_lm(0)
        score, judge = realdata.sentiment_logit, None
        info = {
            "base": f"tiny GPT-2 {realdata.N_LAYER}x{realdata.N_EMBD} (realdata.tiny_lm)",
            "judge": "SmolLM2-135M-Instruct (realdata.smollm2), forward only",
        }
    train_prompts = {
        name: _prompt_ids(tokenizer, [t for t, y in zip(texts, labels, strict=True) if y == label])[
            : cfg["train_prompts"]
        ]
        for name, label in POLICIES.items()
    }
    _, test = realdata.train_test_reviews()
    held_out = _prompt_ids(tokenizer, test)
    calib, evaluation = held_out[: cfg["calib"]], held_out[cfg["calib"] : cfg["calib"] + cfg["eval"]]
    info["reward"] = "sentiment logit (TF-IDF logistic regression) of the completion text only"
    return Setup(mode, cfg, tokenizer, score, judge, train_prompts, calib, evaluation, info)


class CompletionScorer(nn.Module):
    """Scores the completion only: the text after the first `PROMPT_TOKENS` tokens (every prompt has exactly that
    many, so nothing is padded before them). Returned at every position of `hidden_states[-1]`."""

    def __init__(self, tokenizer, score):
        super().__init__()
        self.tokenizer, self.score_fn = tokenizer, score

    def forward(self, input_ids, attention_mask, **kwargs):
        completions = input_ids[:, PROMPT_TOKENS:].masked_fill(attention_mask[:, PROMPT_TOKENS:] == 0, 0)  # (B, R)
        texts = self.tokenizer.batch_decode(completions, skip_special_tokens=True)
        scores = torch.tensor(self.score_fn(texts), device=input_ids.device, dtype=torch.float32)  # (B,)
        return BaseModelOutput(hidden_states=(scores[:, None, None].expand(-1, input_ids.shape[1], 1),))  # (B, T, 1)


class CompletionRewardModel(nn.Module):
    """The reward in the shape PPO 1.12 expects: a backbone named by `base_model_prefix` and a `score` head."""

    base_model_prefix = "scorer"

    def __init__(self, tokenizer, score):
        super().__init__()
        self.scorer = CompletionScorer(tokenizer, score)
        self.score = nn.Identity()


class Recorder(TrainerCallback):
    """Keeps PPO's per-update mean score, value loss and KL; prints one line every `every` updates."""

    def __init__(self, name, every):
        self.name, self.every = name, every
        self.log = {"score": [], "value_loss": [], "kl": []}

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs is None or "objective/scores" not in logs:
            return
        self.log["score"].append(float(logs["objective/scores"]))
        self.log["value_loss"].append(float(logs["loss/value_avg"]))
        self.log["kl"].append(float(logs["objective/kl"]))
        if self.every and state.global_step % self.every == 0:
            print(
                f"   {self.name} update {state.global_step}/{state.max_steps}: score {self.log['score'][-1]:+.3f}, "
                f"value loss {self.log['value_loss'][-1]:.4f}, KL {self.log['kl'][-1]:.2f}",
                flush=True,
            )


def fresh_critic(policy) -> nn.Module:
    """A critic that starts from the policy's body with a new value head (as PPO examples do)."""
    config = copy.deepcopy(policy.config)
    config.num_labels = 1
    critic = AutoModelForSequenceClassification.from_config(config)
    critic.transformer.load_state_dict(policy.transformer.state_dict())
    return critic


def ppo_train(
    setup, prompts, output_dir, seed, updates, warmup, critic=None, name="ppo", every=8, save_steps=None, resume=False
):
    """PPO from the base policy on `prompts` (reward: the completion's sentiment logit), saving the policy and its
    critic in `output_dir` (and a checkpoint every `save_steps` updates); `critic=None` starts a fresh critic;
    `resume=True` resumes from the last checkpoint in `output_dir`. Returns the per-update log."""
    policy, ref = setup.base(), setup.base()
    set_seed(seed)
    critic = fresh_critic(policy) if critic is None else critic
    batch = setup.cfg["batch"]
    args = PPOConfig(
        output_dir=str(output_dir),
        save_value_model=True,
        critic_warmup_steps=warmup,
        kl_coef=setup.cfg["kl_coef"],
        bf16=False,
        seed=seed,
        learning_rate=POLICY_LR,
        critic_learning_rate=CRITIC_LR,
        optim="adamw_torch",  # the unfused AdamW of the cached runs: the same weights, bit for bit
        per_device_train_batch_size=batch,
        total_episodes=updates * batch,
        local_rollout_forward_batch_size=batch,
        response_length=RESPONSE_TOKENS,
        temperature=1.0,
        stop_token="eos",
        num_sample_generations=0,
        gradient_checkpointing=False,
        report_to="none",
        disable_tqdm=True,
        save_strategy="steps" if save_steps else "no",
        save_steps=save_steps or 500,
    )
    trainer = PPOTrainer(
        args=args,
        processing_class=setup.tokenizer,
        model=policy,
        ref_model=ref,
        reward_model=CompletionRewardModel(setup.tokenizer, setup.score),
        train_dataset=Dataset.from_dict({"input_ids": prompts}),
        value_model=critic,
    )
    trainer.remove_callback(PrinterCallback)
    recorder = Recorder(name, every)
    trainer.add_callback(recorder)
    start = time.time()
    trainer.train(resume_from_checkpoint=resume or None)
    trainer.save_model(str(output_dir))
    recorder.log["seconds"] = time.time() - start
    return recorder.log


def ppo_source_hash() -> str:
    """Hash of the installed trl's PPO sources: the code that trained (and checkpointed) a cached policy."""
    return realdata.hash_files(sorted((Path(trl.__file__).parent / "experimental" / "ppo").glob("*.py")))


def _key(setup, name) -> str:
    settings = {k: setup.cfg[k] for k in ("batch", "updates", "warmup", "kl_coef", "train_prompts")}
    settings |= {
        "name": name,
        "code": CODE_VERSION,
        "lr": [POLICY_LR, CRITIC_LR],
        "tokens": [PROMPT_TOKENS, RESPONSE_TOKENS],
        "ppo_sources": ppo_source_hash(),  # checkpoints written by other PPO code may not resume in this one
    }
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:10]


def trained_policy(setup, name, seed=0):
    """(policy, critic, training log) of the PPO specialist `name`, trained once and cached under CACHE_DIR."""
    path = policy_dir(setup, name, seed)
    if not (path / "log.json").exists():
        print(f"   training PPO policy `{name}` ({setup.cfg['updates']} updates); cached in {path}", flush=True)
        tmp = path.with_name(path.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        save_steps = setup.cfg["updates"] // 2 if setup.mode == "demo" else None  # the demo resumes from it
        log = ppo_train(
            setup, setup.train_prompts[name], tmp, seed, setup.cfg["updates"], setup.cfg["warmup"], name=name,
            save_steps=save_steps,
        )  # fmt: skip
        (tmp / "log.json").write_text(json.dumps(log) + "\n")
        shutil.rmtree(path, ignore_errors=True)
        tmp.rename(path)
    policy = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    critic = AutoModelForSequenceClassification.from_pretrained(path / "value_model", dtype=torch.float32).eval()
    return policy, critic, json.loads((path / "log.json").read_text())


def policy_dir(setup, name, seed=0) -> Path:
    """The cache folder of `trained_policy(setup, name, seed)`."""
    return realdata.CACHE_DIR / f"critic-policy-{setup.mode}-{name}-seed{seed}-{_key(setup, name)}"


@torch.no_grad()
def sample(model, setup, prompts, samples, seed, logits_processor=None, batch_size=256):
    """Sample `samples` completions per prompt (temperature 1, no top-k/top-p, stop at EOS) from a fixed seed,
    without touching the caller's random state. Returns (completion texts, token ids (N * samples, R), processed
    scores or None) with the samples of one prompt adjacent."""
    texts, ids, scores = [], [], []
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        for start in range(0, len(prompts), batch_size):
            input_ids = torch.tensor(prompts[start : start + batch_size]).repeat_interleave(samples, 0)  # (B, P)
            out = model.generate(
                input_ids=input_ids,
                attention_mask=torch.ones_like(input_ids),
                max_new_tokens=RESPONSE_TOKENS,
                min_new_tokens=RESPONSE_TOKENS if setup.mode == "quick" else 0,
                do_sample=True,
                temperature=1.0,
                top_k=0,
                top_p=1.0,
                eos_token_id=setup.tokenizer.eos_token_id,
                pad_token_id=setup.tokenizer.pad_token_id,
                logits_processor=logits_processor,
                output_scores=logits_processor is not None,
                return_dict_in_generate=True,
            )
            new = out.sequences[:, PROMPT_TOKENS:]  # (B, R')
            new = torch.nn.functional.pad(new, (0, RESPONSE_TOKENS - new.shape[1]), value=setup.tokenizer.pad_token_id)
            ids.append(new)
            texts += setup.tokenizer.batch_decode(new, skip_special_tokens=True)
            if logits_processor is not None:
                step = torch.stack(out.scores, 1).log_softmax(-1)  # (B, R', V): the sampler's own log-probs
                chosen = step.gather(-1, out.sequences[:, PROMPT_TOKENS:, None])[..., 0]  # (B, R')
                scores.append(torch.nn.functional.pad(chosen, (0, RESPONSE_TOKENS - chosen.shape[1])))
    return texts, torch.cat(ids), (torch.cat(scores) if scores else None)


def response_mask(setup, ids):
    """(N, R) True on the completion tokens PPO scores: up to and including the first EOS."""
    eos = (ids == setup.tokenizer.eos_token_id).int()
    after_eos = (eos.cumsum(1) - eos) > 0
    return ~after_eos & (ids != setup.tokenizer.pad_token_id) | (eos > 0) & ~after_eos


@torch.no_grad()
def token_logprobs(model, prompts_rep, ids):
    """log p(token) of each completion token under `model`: (N, R). `prompts_rep` (N, P) is each row's prompt."""
    full = torch.cat([prompts_rep, ids], 1)  # (N, P + R)
    out = []
    for start in range(0, len(full), 256):
        logits = model(input_ids=full[start : start + 256]).logits[:, PROMPT_TOKENS - 1 : -1]  # (B, R, V)
        out.append(logits.log_softmax(-1).gather(-1, full[start : start + 256, PROMPT_TOKENS:, None])[..., 0])
    return torch.cat(out)


def bootstrap_ci(values, seed=0, n=2000):
    """95% percentile interval of the mean of `values` (per-prompt paired differences), resampling prompts."""
    values = np.asarray(values, dtype=float)
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), size=(n, len(values)))].mean(1)
    return [float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))]


def update_results(section: str, data: dict, results_dir: Path) -> dict:
    """Merge `data` as `section` into `results_dir/critic.json` and rewrite `critic.md` from the JSON."""
    from benchmarks import critic_page

    results_dir.mkdir(parents=True, exist_ok=True)
    path = results_dir / "critic.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    if results.get("mode") != data.get("mode"):
        results = {}  # never mix modes on one page
    results = {k: v for k, v in results.items() if k in ("routing", "value_guided", "warm_start", "mode", "setup")}
    results[section] = data
    results["mode"] = data.get("mode")
    path.write_text(json.dumps(results, indent=2) + "\n")
    critic_page.write_page(results, results_dir)
    return results


def finite(x):
    return x if isinstance(x, float) and math.isfinite(x) else None


def json_summary(result: dict, keys) -> str:
    """A few fields of a result as indented JSON, for the console."""
    return json.dumps({key: result[key] for key in keys}, indent=2)
