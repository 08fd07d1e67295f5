"""Conditioning against RL on the reward-KL plane: at equal KL from the base, does a reward-conditioned model reach
the reward PPO reaches, and at what training cost?

The protocol of the DPO paper's IMDb frontier (Rafailov et al. 2023): mean reward of completions of held-out prompts
against KL(policy || base) on the same prompts, for one base model, one reward (the sentiment logit of the
completion, `realdata.sentiment_logit`) and one prompt set (the first 8 tokens of held-out reviews, as ids). Methods:

- `ppo`: the fork's `trl.experimental.ppo.PPOTrainer` on the training prompts, a critic initialized from the base,
  the reward read by a wrapper that decodes the response and scores it; one point per KL coefficient;
- `best_of_n`: N base samples per prompt, the best by reward (N = 2 .. 16); KL = log N - (N - 1) / N, the standard
  analytic bound for best-of-N (Beirami et al. 2024), not a measurement;
- `filtered_sft`: SFT on the top training quintile;
- `conditioned`: the scalar reward-conditioned model (`conditioning_stage`, arm `scalar`) at several targets and
  guidance scales; the KL of a guided sampler is measured with its own normalized log-probabilities, the
  log-softmax of `null + w * (conditioned - null)` that it samples from.

KL is measured per completion as the sum over its tokens (up to and including EOS) of log p_method - log p_base, on
samples of the method (temperature 1, no top-k/top-p), averaged over prompts and sampling seeds. Every trained method
is trained once per training seed; its point is the mean over training seeds, with a 95 % t-interval over them. Every
point also carries the judge perplexity (SmolLM2-135M) of its first sampling seed's completions (for a trained method,
averaged over training seeds).

    python -m benchmarks.conditioning_vs_ppo           # the CPU benchmark (background, stage-cached)
    python -m benchmarks.conditioning_vs_ppo --quick   # CI: untrained tiny model, seconds
    python -m benchmarks.conditioning_vs_ppo --render  # rewrite the page and plot from the JSON only
"""

import copy
import json
import sys
import tempfile
import time
from types import SimpleNamespace

import matplotlib


matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch
from datasets import Dataset
from transformers import GPT2ForSequenceClassification

from benchmarks import conditioning_stage as st
from benchmarks import evaluation
from trl.experimental.ppo import PPOConfig, PPOTrainer


KL_COEFS = {"full": (0.03, 0.1, 0.3), "quick": (0.1,)}
PPO = {
    "full": dict(updates=150, batch=16, learning_rate=1e-4, num_ppo_epochs=4),
    "quick": dict(updates=2, batch=8, learning_rate=1e-4, num_ppo_epochs=1),
}
BEST_OF = (2, 4, 8, 16)
GUIDANCE_SCALES = (1.0, 2.0, 4.0)
TARGET_QUANTILES = ("median", "q80", "q95")  # conditioned targets, from the training reward


class _ScoreBackbone(torch.nn.Module):
    """Decodes each row's response (the tokens after the fixed-width prompt) and returns its reward at every
    position as a (B, T, 1) "hidden state", so PPO's `get_reward` reads it wherever the sequence ends."""

    def __init__(self, tokenizer, score):
        super().__init__()
        self.tokenizer, self.score_fn = tokenizer, score

    def forward(self, input_ids, attention_mask, **kwargs):
        responses = [
            self.tokenizer.decode(ids[st.PROMPT_TOKENS :][mask[st.PROMPT_TOKENS :].bool()], skip_special_tokens=True)
            for ids, mask in zip(input_ids, attention_mask, strict=True)
        ]
        rewards = torch.tensor(self.score_fn(responses), dtype=torch.float32, device=input_ids.device)  # (B,)
        return SimpleNamespace(hidden_states=(rewards[:, None, None].expand(-1, input_ids.shape[1], 1),))


class SentimentRewardModel(torch.nn.Module):
    """The benchmark's reward in the shape PPO reads a reward model: `base_model_prefix` and a `score` head."""

    base_model_prefix = "backbone"

    def __init__(self, tokenizer, score):
        super().__init__()
        self.backbone = _ScoreBackbone(tokenizer, score)
        self.score = torch.nn.Identity()


def prompt_ids(tokenizer, reviews, n):
    """The first `PROMPT_TOKENS` token ids of the first `n` reviews that are longer than that."""
    rows = [ids[: st.PROMPT_TOKENS] for ids in tokenizer(reviews, add_special_tokens=False)["input_ids"]]
    return [ids for ids in rows if len(ids) == st.PROMPT_TOKENS][:n]


def _batch(rows, pad_id, left):
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)  # (B, T)
    mask = torch.zeros((len(rows), width), dtype=torch.long)  # (B, T)
    for i, r in enumerate(rows):
        span = slice(width - len(r), width) if left else slice(0, len(r))
        ids[i, span], mask[i, span] = torch.tensor(r), 1
    return ids, mask


def _cut(ids, eos_id):
    ids = ids.tolist()
    return ids[: ids.index(eos_id) + 1] if eos_id in ids else ids


@torch.no_grad()
def sample_ids(model, tokenizer, prompts, seed, batch_size, rewards=None, w=None, n=1):
    """`n` completions (token ids, cut after EOS) per prompt, temperature 1, inside an isolated RNG."""
    model.eval()
    out = []
    with st.isolated_rng():
        torch.manual_seed(seed)
        for i in range(0, len(prompts), batch_size):
            ids, mask = _batch(prompts[i : i + batch_size], tokenizer.pad_token_id, left=True)  # (B, T)
            extra = {} if rewards is None else {"rewards": torch.tensor(rewards[i : i + batch_size])}  # (B,)
            if w is not None and w != 1.0:
                extra["guidance_scale"] = w
            gen = model.generate(
                input_ids=ids,
                attention_mask=mask,
                **extra,
                max_new_tokens=st.COMPLETION_TOKENS,
                do_sample=True,
                temperature=1.0,
                top_k=0,
                top_p=1.0,
                num_return_sequences=n,
                pad_token_id=tokenizer.pad_token_id,
            )  # (B * n, T + new)
            out += [_cut(row, tokenizer.eos_token_id) for row in gen[:, ids.shape[1] :]]
    return out


@torch.no_grad()
def sequence_logprobs(model, prompts, completions, pad_id, rewards=None, w=None):
    """Sum of log p(completion token | prefix) per row; with `rewards`, under the reward-conditioned model, guided
    with scale `w` (the normalized log-softmax of null + w * (conditioned - null)) when w != 1."""
    model.eval()
    rows = [p + c for p, c in zip(prompts, completions, strict=True)]
    ids, mask = _batch(rows, pad_id, left=False)  # (B, T), right padded
    scored = torch.zeros_like(mask, dtype=torch.bool)  # (B, T): completion tokens
    for i, (p, c) in enumerate(zip(prompts, completions, strict=True)):
        scored[i, len(p) : len(p) + len(c)] = True

    def logp(extra):
        return torch.log_softmax(model(input_ids=ids, attention_mask=mask, **extra).logits.float(), dim=-1)

    if rewards is None:
        logprobs = logp({})  # (B, T, V)
    else:
        logprobs = logp({"rewards": torch.tensor(rewards)})
        if w is not None and w != 1.0:
            null = logp({"rewards": None})
            logprobs = torch.log_softmax(null + w * (logprobs - null), dim=-1)
    token = logprobs[:, :-1].gather(-1, ids[:, 1:, None]).squeeze(-1)  # (B, T - 1): log p of token t + 1
    return (token * scored[:, 1:]).sum(dim=1).tolist()


def measure(bench, prompts, completions_per_seed, method_logp, base_logp_fn, kl=None):
    """Reward, KL (measured, unless given) and judge perplexity of a method's completions (one list per seed)."""
    tok, rewards, kls = bench.tokenizer, [], []
    for completions, logps in zip(completions_per_seed, method_logp, strict=True):
        texts = tok.batch_decode(completions, skip_special_tokens=True)
        rewards.append(float(np.mean(bench.score(texts))))
        if kl is None:
            kls.append(float(np.mean(np.array(logps) - np.array(base_logp_fn(completions)))))
    first = tok.batch_decode(completions_per_seed[0], skip_special_tokens=True)
    contexts = tok.batch_decode(prompts)
    kl_value = kl if kl is not None else float(np.mean(kls))
    return {
        "kl": kl_value,
        "kl_per_seed": kls or None,
        "reward": float(np.mean(rewards)),
        "reward_per_seed": rewards,
        "judge_perplexity": evaluation.judge_perplexity([t or " " for t in first], contexts, judge=bench.judge),
    }


def pooled(runs, training_seeds):
    """One trained method's point from its points at each training seed: means, with 95 % t-intervals over seeds."""
    kl, kl_ci95 = st.mean_ci95([run["kl"] for run in runs])
    reward, reward_ci95 = st.mean_ci95([run["reward"] for run in runs])
    return {
        "kl": kl,
        "kl_ci95": kl_ci95,
        "reward": reward,
        "reward_ci95": reward_ci95,
        "judge_perplexity": float(np.mean([run["judge_perplexity"] for run in runs])),
        "train_seconds": float(np.mean([run["train_seconds"] for run in runs])),
        "training_seeds": training_seeds,
        "runs": runs,
    }


def stages(bench, cache, prompts):
    cfg, tok, base = bench.cfg, bench.tokenizer, bench.base
    seeds, pad = cfg["sampling_seeds"], bench.tokenizer.pad_token_id
    rs = bench.rstats

    def over_training_seeds(name, train_and_measure):
        """{setting: pooled point} from `train_and_measure(seed)` ({setting: point}), each seed its own stage."""
        runs = [cache.get(f"{name}-seed{seed}", lambda seed=seed: train_and_measure(seed)) for seed in cfg["seeds"]]
        settings = [setting for setting in runs[0] if setting != "stage_seconds"]
        return {setting: pooled([run[setting] for run in runs], cfg["seeds"]) for setting in settings}

    def base_logp(completions):
        return sequence_logprobs(base, prompts, completions, pad)

    def plain(model):
        per_seed = [sample_ids(model, tok, prompts, s, cfg["gen_batch"]) for s in seeds]
        return measure(
            bench, prompts, per_seed, [sequence_logprobs(model, prompts, c, pad) for c in per_seed], base_logp
        )

    yield "base", "", cache.get("base", lambda: {**plain(base), "train_seconds": 0.0})

    def best_of_n():
        points = {}
        samples = [sample_ids(base, tok, prompts, s, cfg["gen_batch"], n=max(BEST_OF)) for s in seeds]
        scored = [np.array(bench.score(tok.batch_decode(c, skip_special_tokens=True))) for c in samples]
        for n in BEST_OF:
            picked = []
            for comps, sc in zip(samples, scored, strict=True):
                groups = sc.reshape(len(prompts), max(BEST_OF))[:, :n]
                best = groups.argmax(axis=1)
                picked.append([comps[i * max(BEST_OF) + int(b)] for i, b in enumerate(best)])
            kl = float(np.log(n) - (n - 1) / n)
            points[str(n)] = {**measure(bench, prompts, picked, [None] * len(seeds), None, kl), "train_seconds": 0.0}
        return points

    for n, point in cache.get("best_of_n", best_of_n).items():
        if n != "stage_seconds":
            yield "best_of_n", f"N={n}", point

    def trained(arm, seed):
        rows = (
            [r for r in bench.rows if r["reward"] >= rs["quintile_edges"][-1]] if arm == "filtered_sft" else bench.rows
        )
        with tempfile.TemporaryDirectory() as out:
            model, _, seconds, _ = st.train_arm(bench, arm, rows, rs, seed, out)
        return model, seconds

    def sft(seed):
        model, seconds = trained("filtered_sft", seed)
        return {"top quintile": {**plain(model), "train_seconds": seconds}}

    for setting, point in over_training_seeds("filtered_sft", sft).items():
        yield "filtered_sft", setting, point

    def conditioned(seed):
        model, seconds = trained("scalar", seed)
        targets = {"median": rs["median"], "q80": rs["quintile_edges"][-1], "q95": rs["q95"]}
        points = {}
        for name in TARGET_QUANTILES:
            rewards = [targets[name]] * len(prompts)
            for w in GUIDANCE_SCALES:
                per_seed = [sample_ids(model, tok, prompts, s, cfg["gen_batch"], rewards, w) for s in seeds]
                logps = [sequence_logprobs(model, prompts, c, pad, rewards, w) for c in per_seed]
                point = measure(bench, prompts, per_seed, logps, base_logp)
                points[f"target {name} ({targets[name]:+.2f}), w={w:g}"] = {**point, "train_seconds": seconds}
        return points

    for setting, point in over_training_seeds("conditioned", conditioned).items():
        yield "conditioned", setting, point

    for kl_coef in KL_COEFS[bench.mode]:

        def ppo(seed, kl_coef=kl_coef):
            model, seconds = train_ppo(bench, kl_coef, seed)
            return {f"kl_coef={kl_coef:g}": {**plain(model), "train_seconds": seconds}}

        for setting, point in over_training_seeds(f"ppo-kl{kl_coef:g}", ppo).items():
            yield "ppo", setting, point


def train_ppo(bench, kl_coef, seed):
    """PPO from the fork on the training prompts; returns (policy, train seconds)."""
    hp = PPO[bench.mode]
    st.set_seed(seed)
    policy, ref = copy.deepcopy(bench.base), copy.deepcopy(bench.base)
    value_config = copy.deepcopy(bench.base.config)
    value_config.num_labels = 1
    value = GPT2ForSequenceClassification(value_config)
    value.transformer.load_state_dict(bench.base.transformer.state_dict())
    train_reviews, _ = st.realdata.train_test_reviews()
    n_prompts = hp["updates"] * hp["batch"]
    dataset = Dataset.from_dict({"input_ids": prompt_ids(bench.tokenizer, train_reviews, n_prompts)})
    with tempfile.TemporaryDirectory() as out:
        args = PPOConfig(
            output_dir=out,
            bf16=False,
            gradient_checkpointing=False,
            num_sample_generations=0,
            report_to="none",
            disable_tqdm=True,
            save_strategy="no",
            response_length=st.COMPLETION_TOKENS,
            stop_token="eos",
            temperature=1.0,
            per_device_train_batch_size=hp["batch"],
            local_rollout_forward_batch_size=hp["batch"],
            total_episodes=n_prompts,
            num_ppo_epochs=hp["num_ppo_epochs"],
            learning_rate=hp["learning_rate"],
            kl_coef=kl_coef,
            seed=seed,
        )
        trainer = PPOTrainer(
            args=args,
            processing_class=copy.deepcopy(bench.tokenizer),
            model=policy,
            ref_model=ref,
            reward_model=SentimentRewardModel(bench.tokenizer, bench.score),
            train_dataset=dataset,
            value_model=value,
        )
        start = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - start
    return policy.eval(), seconds


def main(argv=None):
    parser = st.argument_parser(__doc__)
    args = parser.parse_args(argv)
    if args.render:
        payload = json.loads((args.out / "conditioning_vs_ppo.json").read_text())
        write_pages(payload, args.out)
        return payload
    mode = "quick" if args.quick else "full"
    start = time.perf_counter()
    bench = st.load_bench(mode)
    cache = st.StageCache(
        args.cache_dir, __file__, mode, bench.cfg, {"ppo": PPO[mode], "kl": KL_COEFS[mode], "w": GUIDANCE_SCALES}
    )
    _, test_reviews = st.realdata.train_test_reviews()
    prompts = prompt_ids(bench.tokenizer, test_reviews, bench.cfg["n_prompts"])
    points = []
    for method, setting, point in stages(bench, cache, prompts):
        points.append({"method": method, "setting": setting, **point})
        payload = {
            "run_id": cache.run_id,
            "mode": mode,
            "command": st.command(__file__, sys.argv[1:] if argv is None else argv),
            "wall_seconds_this_invocation": time.perf_counter() - start,
            "environment": cache.environment,
            "config": bench.cfg,
            "ppo": PPO[mode],
            "setup": {**bench.info, "reward_stats": bench.rstats, "n_prompts": len(prompts)},
            "points": points,
        }
        st.write_json(args.out / "conditioning_vs_ppo.json", payload)
        write_pages(payload, args.out)
    return payload


def write_pages(payload, out):
    fig, ax = plt.subplots(figsize=(7, 5))
    for k, method in enumerate(dict.fromkeys(p["method"] for p in payload["points"])):
        pts = [p for p in payload["points"] if p["method"] == method]
        ax.errorbar(
            [p["kl"] for p in pts],
            [p["reward"] for p in pts],
            xerr=_bars(pts, "kl"),
            yerr=_bars(pts, "reward"),
            fmt="o",
            capsize=2,
            color=f"C{k}",
            label=method,
        )
    ax.set_xlabel("KL(policy || base), nats per completion")
    ax.set_ylabel("mean reward (sentiment logit)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "conditioning_vs_ppo.png", dpi=110)
    plt.close(fig)
    (out / "conditioning_vs_ppo.md").write_text(render(payload))


def _bars(points, key):
    """(2, n) error-bar lengths below and above each point's mean: its 95 % interval over training seeds, or 0."""
    means = np.array([p[key] for p in points])  # (n,)
    ci = np.array([p.get(f"{key}_ci95", [p[key], p[key]]) for p in points])  # (n, 2)
    return np.stack([means - ci[:, 0], ci[:, 1] - means])  # (2, n)


def _reward(p):
    return st.fmt_ci(p["reward"], p["reward_ci95"]) if "reward_ci95" in p else f"{p['reward']:+.3f}"


def _kl(p):
    return f"{p['kl']:.3f} [{p['kl_ci95'][0]:.3f}, {p['kl_ci95'][1]:.3f}]" if "kl_ci95" in p else f"{p['kl']:.3f}"


def _per_seed(p):
    """Each training seed's mean reward for a trained method; each sampling seed's for `base` and `best_of_n`."""
    values = [run["reward"] for run in p["runs"]] if "runs" in p else p["reward_per_seed"]
    return ", ".join(f"{v:+.3f}" for v in values)


def at_equal_kl(payload):
    """Per PPO point: the best conditioned point (any target and w) with a KL no larger, and best-of-N likewise."""
    lines = []
    for p in [p for p in payload["points"] if p["method"] == "ppo"]:
        parts = []
        for method in ("conditioned", "best_of_n", "filtered_sft"):
            within = [q for q in payload["points"] if q["method"] == method and q["kl"] <= p["kl"]]
            if within:
                best = max(within, key=lambda q: q["reward"])
                parts.append(
                    f"best `{method}` within that KL: {_reward(best)} ({best['setting']}, KL {best['kl']:.3f}, "
                    f"{best['train_seconds']:.0f} s of training)"
                )
            else:
                parts.append(f"no `{method}` point within that KL")
        lines.append(
            f"- PPO {p['setting']}: reward {_reward(p)} at KL {_kl(p)} after {p['train_seconds']:.0f} s of "
            "training; " + "; ".join(parts) + "."
        )
    return lines


def render(payload):
    env, hp = payload["environment"], payload["ppo"]
    table = [
        "| method | setting | KL [95 %] | reward [95 %] | reward per seed | judge ppl | train s |",
        "|---" * 7 + "|",
    ]
    for p in payload["points"]:
        table.append(
            f"| `{p['method']}` | {p['setting']} | {_kl(p)} | {_reward(p)} | {_per_seed(p)} | "
            f"{p['judge_perplexity']:.0f} | {p['train_seconds']:.0f} |"
        )
    return f"""# Conditioning against PPO on the reward-KL plane (generated)

Generated by `{payload["command"]}` from `conditioning_vs_ppo.json` (run `{payload["run_id"]}`); do not edit by
hand.

Base: {payload["setup"]["name"]}; torch {env["torch"]}, transformers {env["transformers"]}, trl {env["trl"]}, patch
set {env["patch_set_hash"]}. {payload["setup"]["n_prompts"]} held-out prompts (8 token ids each), sampling seeds
{payload["config"]["sampling_seeds"]}; KL per completion in nats (best-of-N: the analytic bound log N - (N-1)/N).
PPO: {hp["updates"]} updates of batch {hp["batch"]}, learning rate {hp["learning_rate"]}, {hp["num_ppo_epochs"]}
PPO epochs per batch, temperature 1. Conditioned and filtered SFT: {payload["config"]["max_steps"]} steps of batch
{payload["config"]["batch_size"]}. Every trained method ran with training seeds {payload["config"]["seeds"]}: its
KL and reward are means over them with 95 % t-intervals, and `reward per seed` lists each training seed's mean over
the sampling seeds. For `base` and `best_of_n` (nothing trained) it lists each sampling seed's mean.

{chr(10).join(table)}

![reward vs KL](conditioning_vs_ppo.png)

## At equal KL

{chr(10).join(at_equal_kl(payload)) or "No PPO point yet."}
"""


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
