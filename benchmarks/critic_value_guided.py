"""Value-guided decoding with the kept PPO critic (issue 15, section 3).

The better of the two PPO specialists of `critic_routing` (by mean reward on the held-out prompts; both are trained
and cached by `critic_common`) decodes held-out prompts three ways, each over several sampling seeds:

- `policy`: the policy alone (temperature 1, no top-k/top-p);
- `guided`: `ValueGuidedLogitsProcessor(critic, top_k=k, beta)`: the policy's top-k next tokens re-weighted by
  `exp(beta * V(prefix + token))`, one critic forward over k rows per generated token;
- `best_of_n`: N = k + 1 samples of the policy, the one the CRITIC values most kept (the reward model is not
  available at inference in this use case). With k + 1 samples it costs at least the guided sampler's forward passes.

Measured: mean reward (sentiment logit of the completion only), KL to the base policy (per completion, summed over
its tokens, of the sampler's own log-prob minus the base's on the sampled tokens: for `guided` the processor's
normalized distribution, for `best_of_n` the policy's, which leaves out the selection's own at most
log N - (N - 1) / N nats), judge perplexity (SmolLM2-135M given the prompt), distinct-2, forward passes and time.
Gains are over the policy alone with 95% paired-bootstrap intervals over prompts (seed 0).

`python -m benchmarks.critic_value_guided [--quick] [--results DIR]`; writes the `value_guided` section of
`critic.json` and regenerates `critic.md`.
"""

import argparse
import math
import time
from pathlib import Path

import numpy as np
import torch
from scipy.stats import pearsonr

from benchmarks import critic_common as cc
from benchmarks.evaluation import distinct_n, judge_perplexity
from trl.experimental.ppo import ValueGuidedLogitsProcessor
from trl.experimental.utils import get_reward


@torch.no_grad()
def critic_values(critic, setup, prompts_rep, ids):
    """The critic's value at the last token of each completion (PPO's own read): (N,)."""
    full = torch.cat([prompts_rep, ids], 1)  # (N, P + R)
    return torch.cat(
        [
            get_reward(critic, full[i : i + 256], setup.tokenizer.pad_token_id, cc.PROMPT_TOKENS)[1]
            for i in range(0, len(full), 256)
        ]
    )


def kl_per_completion(setup, base, prompts_rep, ids, own_logprobs):
    mask = cc.response_mask(setup, ids).float()  # (N, R)
    base_logprobs = cc.token_logprobs(base, prompts_rep, ids)  # (N, R)
    return ((own_logprobs - base_logprobs) * mask).sum(1)  # (N,)


def decode(method, setup, policy, critic, base, prompts, seed, beta):
    """One method on `prompts` with one sampling seed: per-prompt rewards and KL, texts, forward counts, seconds."""
    k = setup.cfg["top_k"]
    n = len(prompts)
    prompts_rep = torch.tensor(prompts)
    start = time.time()
    critic_r = None
    if method == "policy":
        texts, ids, _ = cc.sample(policy, setup, prompts, 1, seed)
        own = cc.token_logprobs(policy, prompts_rep, ids)
        passes = {"policy_row_steps": cc.RESPONSE_TOKENS, "critic_rows": 0}
    elif method == "guided":
        processor = ValueGuidedLogitsProcessor(critic, top_k=k, beta=beta, pad_token_id=setup.tokenizer.pad_token_id)
        texts, ids, own = cc.sample(policy, setup, prompts, 1, seed, logits_processor=[processor])
        passes = {"policy_row_steps": cc.RESPONSE_TOKENS, "critic_rows": processor.critic_rows / n}
    else:  # best_of_n scored by the critic
        n_samples = k + 1
        texts_all, ids_all, _ = cc.sample(policy, setup, prompts, n_samples, seed)
        rep = prompts_rep.repeat_interleave(n_samples, 0)
        values = critic_values(critic, setup, rep, ids_all).view(n, n_samples)  # (n, N)
        pick = values.argmax(1) + torch.arange(n) * n_samples  # (n,)
        texts = [texts_all[i] for i in pick.tolist()]
        ids = ids_all[pick]
        own = cc.token_logprobs(policy, prompts_rep, ids)
        passes = {"policy_row_steps": cc.RESPONSE_TOKENS * n_samples, "critic_rows": n_samples}
        # how well the critic ranks whole completions (where the reward varies most): r over all candidates
        critic_r = float(pearsonr(values.flatten().numpy(), setup.score(texts_all)).statistic)
    seconds = time.time() - start
    mask = cc.response_mask(setup, ids).float()
    own = own.masked_fill(mask == 0, 0.0)
    kl = kl_per_completion(setup, base, prompts_rep, ids, own)
    return {
        "reward": np.array(setup.score(texts)),
        "kl": kl.numpy(),
        "texts": texts,
        "passes": passes,
        "seconds": seconds,
        "critic_completion_pearson": critic_r if method == "best_of_n" else None,
    }


def run(setup):
    start = time.time()
    cfg = setup.cfg
    # the better specialist on the held-out prompts decides which policy is decoded (as routing's best single)
    trained = {name: cc.trained_policy(setup, name) for name in cc.POLICIES}
    prompts = setup.eval_prompts[: cfg["vgd_prompts"]]
    pick_prompts = setup.calib_prompts
    mean = {
        name: float(np.mean(setup.score(cc.sample(trained[name][0], setup, pick_prompts, 2, seed=7)[0])))
        for name in trained
    }
    name = max(mean, key=mean.get)
    policy, critic, _ = trained[name]
    base = setup.base()
    prompt_texts = setup.texts(prompts)
    arms = [("policy", None), ("best_of_n", None)] + [("guided", beta) for beta in cfg["betas"]]
    per_arm = {}
    for method, beta in arms:
        label = method if beta is None else f"guided_beta{beta:g}"
        runs = [decode(method, setup, policy, critic, base, prompts, 2000 + s, beta) for s in cfg["seeds"]]
        reward = np.mean([r["reward"] for r in runs], 0)  # per prompt, over seeds
        judge_seeds = runs[: cfg["judge_seeds"]] if method != "guided" or beta in (0.0, cfg["beta"]) else []
        ppl = (
            judge_perplexity(
                [t for r in judge_seeds for t in r["texts"]], prompt_texts * len(judge_seeds), judge=setup.judge
            )
            if judge_seeds
            else None
        )
        per_arm[label] = {
            "method": method,
            "beta": beta,
            "per_prompt_reward": reward,
            "mean_reward": float(reward.mean()),
            "mean_reward_per_seed": [float(r["reward"].mean()) for r in runs],
            "kl": float(np.mean([r["kl"].mean() for r in runs])),
            "kl_per_seed": [float(r["kl"].mean()) for r in runs],
            "distinct_2": float(np.mean([distinct_n(r["texts"], 2) for r in runs])),
            "judge_perplexity": ppl,
            "forward_passes_per_prompt": runs[0]["passes"],
            "critic_completion_pearson_per_seed": [r["critic_completion_pearson"] for r in runs],
            "seconds_per_prompt": float(np.mean([r["seconds"] for r in runs]) / len(prompts)),
            "example": f"{prompt_texts[0]}|{runs[0]['texts'][0]}",
        }
        print(
            f"   {label}: reward {per_arm[label]['mean_reward']:+.3f}, KL {per_arm[label]['kl']:.2f}, "
            f"distinct-2 {per_arm[label]['distinct_2']:.3f}, judge ppl {ppl}",
            flush=True,
        )
    main_label = f"guided_beta{cfg['beta']:g}"
    policy_r = per_arm["policy"]["per_prompt_reward"]
    guided_r, bon_r = per_arm[main_label]["per_prompt_reward"], per_arm["best_of_n"]["per_prompt_reward"]
    n_samples = cfg["top_k"] + 1
    result = {
        "mode": setup.mode,
        "setup": setup.info,
        "policy": name,
        "policy_choice_mean_reward": mean,
        "settings": {
            "prompts": len(prompts),
            "top_k": cfg["top_k"],
            "beta": cfg["beta"],
            "betas": list(cfg["betas"]),
            "best_of_n": n_samples,
            "sampling_seeds": [2000 + s for s in cfg["seeds"]],
            "judge_seeds": cfg["judge_seeds"],
            "bootstrap_seed": 0,
            "response_tokens": cc.RESPONSE_TOKENS,
        },
        "reward_gain": float((guided_r - policy_r).mean()),
        "reward_gain_ci95": cc.bootstrap_ci(guided_r - policy_r),
        "best_of_n_gain": float((bon_r - policy_r).mean()),
        "best_of_n_gain_ci95": cc.bootstrap_ci(bon_r - policy_r),
        "guided_minus_best_of_n": float((guided_r - bon_r).mean()),
        "guided_minus_best_of_n_ci95": cc.bootstrap_ci(guided_r - bon_r),
        **(
            {
                "guided_minus_top_k_only": float((guided_r - per_arm["guided_beta0"]["per_prompt_reward"]).mean()),
                "guided_minus_top_k_only_ci95": cc.bootstrap_ci(
                    guided_r - per_arm["guided_beta0"]["per_prompt_reward"]
                ),
            }
            if "guided_beta0" in per_arm
            else {}
        ),
        "kl": {label: arm["kl"] for label, arm in per_arm.items()},
        "critic_completion_pearson_per_seed": per_arm["best_of_n"]["critic_completion_pearson_per_seed"],
        "best_of_n_selection_kl_bound": math.log(n_samples) - (n_samples - 1) / n_samples,
        "judge_perplexity": {label: arm["judge_perplexity"] for label, arm in per_arm.items()},
        "distinct_2": {label: arm["distinct_2"] for label, arm in per_arm.items()},
        "forward_passes": {label: arm["forward_passes_per_prompt"] for label, arm in per_arm.items()},
        "arms": {label: {k: v for k, v in arm.items() if k != "per_prompt_reward"} for label, arm in per_arm.items()},
        "wall_s": time.time() - start,
    }
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny untrained models, a few updates: seconds")
    parser.add_argument("--results", type=Path, help="folder for critic.json/md (default docs/results; quick: none)")
    args = parser.parse_args(argv)
    setup = cc.load_setup("quick" if args.quick else "full")
    result = run(setup)
    print(cc.json_summary(result, ("reward_gain", "reward_gain_ci95", "best_of_n_gain", "kl", "judge_perplexity")))
    results_dir = args.results or (None if args.quick else cc.RESULTS)
    if results_dir is not None:
        cc.update_results("value_guided", result, results_dir)
    return result


if __name__ == "__main__":
    main()
