"""Routing and content warnings with the kept PPO critics (issue 15, section 2).

Two PPO specialists (`pos`, `neg`: see `critic_common`), each with the critic PPO trained beside it. On held-out
prompts, each prompt goes to the policy whose critic predicts the higher value (`predict_prompt_values`), before
anything is generated. Compared, by the realized reward (sentiment logit of the completion only; Monte-Carlo over
`samples` completions per prompt and several sampling seeds): always-`pos`, always-`neg`, routing by the prompt-only
baseline (a per-policy linear regression of the realized reward on the prompt's sentiment logit and VADER, fitted on
separate calibration prompts: the baseline is given labels the critic never needs), and the oracle (the better
policy per prompt by its Monte-Carlo mean over the OTHER sampling seeds, evaluated on each seed: no selection on the
noise it is scored on). Gains are over the best single policy, with 95% paired-bootstrap intervals over prompts
(seed 0). Content warning: flag the bottom decile of prompts (by predicted value, or by the prompt's own sentiment)
for the better single policy; precision and recall against the true bottom decile of its Monte-Carlo means.

`python -m benchmarks.critic_routing [--quick] [--results DIR]`; writes the `routing` section of `critic.json` and
regenerates `critic.md`.
"""

import argparse
import time
from pathlib import Path

import numpy as np
from scipy.stats import pearsonr
from sklearn.linear_model import LinearRegression

import realdata
from benchmarks import critic_common as cc
from trl.experimental.ppo import predict_prompt_values


def realized_rewards(setup, policy, prompts):
    """(seeds, prompts, samples) rewards of `policy`'s completions."""
    cfg = setup.cfg
    out = []
    for seed in cfg["seeds"]:
        texts, _, _ = cc.sample(policy, setup, prompts, cfg["samples"], seed=1000 + seed)
        out.append(np.array(setup.score(texts)).reshape(len(prompts), cfg["samples"]))
    return np.stack(out)


def flagging(predicted, truth, fraction=0.1):
    """Precision and recall of flagging the `fraction` lowest `predicted` against the `fraction` lowest `truth`."""
    n = max(1, round(fraction * len(truth)))
    flagged, bottom = set(np.argsort(predicted)[:n]), set(np.argsort(truth)[:n])
    hits = len(flagged & bottom)
    return {"precision": hits / len(flagged), "recall": hits / len(bottom), "n_flagged": n}


def run(setup, log_every=16):
    start = time.time()
    cfg, names = setup.cfg, list(cc.POLICIES)
    all_prompts = setup.calib_prompts + setup.eval_prompts
    n_calib = len(setup.calib_prompts)
    texts = setup.texts(all_prompts)
    prompt_logit = np.array(setup.score(texts))
    prompt_vader = np.array(realdata.vader(texts))
    rewards, values, logs = {}, {}, {}
    for name in names:
        policy, critic, logs[name] = cc.trained_policy(setup, name)
        rewards[name] = realized_rewards(setup, policy, all_prompts)  # (S, N, K)
        values[name] = np.array(predict_prompt_values(critic, setup.tokenizer, texts, batch_size=64))
    # How much the expected reward varies between prompts at all, before PPO: the base policy's samples
    rewards["base"] = realized_rewards(setup, setup.base(), all_prompts)
    ev = slice(n_calib, None)
    mc = {name: rewards[name][:, ev].mean((0, 2)) for name in names}  # per eval prompt
    best = max(names, key=lambda name: mc[name].mean())

    # Baseline router: per-policy regression on the prompt's own scores, fitted on the calibration prompts
    features = np.stack([prompt_logit, prompt_vader], 1)
    baseline = {
        name: LinearRegression().fit(features[:n_calib], rewards[name][:, :n_calib].mean((0, 2))).predict(features[ev])
        for name in names
    }
    critic_pred = {name: values[name][ev] for name in names}
    # The critic given the same calibration as the baseline: a per-policy regression of the realized reward on the
    # critic's value, fitted on the calibration prompts (removes each critic's offset and scale)
    calibrated = {
        name: LinearRegression()
        .fit(values[name][:n_calib, None], rewards[name][:, :n_calib].mean((0, 2)))
        .predict(values[name][ev, None])
        for name in names
    }

    def routed(pred):  # per-prompt realized reward of routing by the higher prediction
        choice = pred[names[0]] >= pred[names[1]]
        return np.where(choice, mc[names[0]], mc[names[1]]), float(choice.mean())

    critic_r, critic_share = routed(critic_pred)
    baseline_r, baseline_share = routed(baseline)
    calibrated_r, calibrated_share = routed(calibrated)
    # Oracle: choose by the other seeds' samples, score on this seed's
    seeds = range(len(cfg["seeds"]))
    oracle_per_seed = []
    for s in seeds:
        others = [t for t in seeds if t != s] or [s]
        pick = rewards[names[0]][others][:, ev].mean((0, 2)) >= rewards[names[1]][others][:, ev].mean((0, 2))
        oracle_per_seed.append(np.where(pick, rewards[names[0]][s, ev].mean(1), rewards[names[1]][s, ev].mean(1)))
    oracle_r = np.mean(oracle_per_seed, 0)
    single = mc[best]
    per_seed = {}
    for s in seeds:  # the critic's gain on each sampling seed's rewards alone
        m = {name: rewards[name][s, ev].mean(1) for name in names}
        c = critic_pred[names[0]] >= critic_pred[names[1]]
        per_seed[str(cfg["seeds"][s])] = float(np.where(c, m[names[0]], m[names[1]]).mean() - m[best].mean())

    def spread(name):
        """Between-prompt SD of the expected reward (covariance of two disjoint halves of the samples: sampling
        noise removed), the within-prompt SD of single samples, and the prompt logit's r with the mean."""
        k = cfg["samples"]
        halves = [rewards[name][:, ev, part].mean((0, 2)) for part in (slice(0, k // 2), slice(k // 2, k))]
        return {
            "between_prompt_sd": float(np.sqrt(max(np.cov(halves[0], halves[1])[0, 1], 0.0))),
            "within_prompt_sd": float(rewards[name][:, ev].std(2).mean()),
            "mean_reward": float(rewards[name][:, ev].mean()),
            "prompt_logit_pearson": float(pearsonr(prompt_logit[ev], rewards[name][:, ev].mean((0, 2))).statistic),
        }

    # How well each predictor ranks the prompts, against the noisy Monte-Carlo mean and its ceiling
    def predictors(name):
        k = rewards[name].shape[0] * rewards[name].shape[2]
        flat = rewards[name][:, ev].transpose(1, 0, 2).reshape(len(single), k)
        half = k // 2
        split = pearsonr(flat[:, :half].mean(1), flat[:, half:].mean(1)).statistic
        reliability = 2 * split / (1 + split)
        residual = mc[name] - baseline[name]
        return {
            "critic_pearson": float(pearsonr(critic_pred[name], mc[name]).statistic),
            "prompt_logit_pearson": float(pearsonr(prompt_logit[ev], mc[name]).statistic),
            "prompt_vader_pearson": float(pearsonr(prompt_vader[ev], mc[name]).statistic),
            "critic_vs_prompt_logit_pearson": float(pearsonr(critic_pred[name], prompt_logit[ev]).statistic),
            "critic_pearson_with_baseline_residual": float(pearsonr(critic_pred[name], residual).statistic),
            "ceiling": float(np.sqrt(max(reliability, 0.0))),
            "mean_reward": float(mc[name].mean()),
            "mean_predicted_value": float(critic_pred[name].mean()),
            "train_final_value_loss": float(np.mean(logs[name]["value_loss"][-8:])),
            "train_first_value_loss": float(np.mean(logs[name]["value_loss"][:4])),
            "train_final_score": float(np.mean(logs[name]["score"][-8:])),
            "train_seconds": logs[name]["seconds"],
        }

    difference = mc[names[0]] - mc[names[1]]
    k = cfg["samples"]
    half_diff = [
        rewards[names[0]][:, ev, part].mean((0, 2)) - rewards[names[1]][:, ev, part].mean((0, 2))
        for part in (slice(0, k // 2), slice(k // 2, k))
    ]
    true_diff_pred = critic_pred[names[0]] - critic_pred[names[1]]
    result = {
        "mode": setup.mode,
        "setup": setup.info,
        "settings": {
            k: cfg[k]
            for k in ("batch", "updates", "warmup", "kl_coef", "train_prompts", "calib", "eval", "samples", "seeds")
        }
        | {
            "policy_lr": cc.POLICY_LR,
            "critic_lr": cc.CRITIC_LR,
            "response_tokens": cc.RESPONSE_TOKENS,
            "prompt_tokens": cc.PROMPT_TOKENS,
            "bootstrap_seed": 0,
            "sampling_seeds": [1000 + s for s in cfg["seeds"]],
        },
        "policies": names,
        "best_single": best,
        "mean_reward": {
            f"always_{names[0]}": float(mc[names[0]].mean()),
            f"always_{names[1]}": float(mc[names[1]].mean()),
            "critic_routing": float(critic_r.mean()),
            "baseline_routing": float(baseline_r.mean()),
            "calibrated_critic_routing": float(calibrated_r.mean()),
            "oracle": float(oracle_r.mean()),
        },
        "critic_gain": float((critic_r - single).mean()),
        "critic_gain_ci95": cc.bootstrap_ci(critic_r - single),
        "critic_gain_per_sampling_seed": per_seed,
        "baseline_gain": float((baseline_r - single).mean()),
        "baseline_gain_ci95": cc.bootstrap_ci(baseline_r - single),
        "critic_minus_baseline": float((critic_r - baseline_r).mean()),
        "critic_minus_baseline_ci95": cc.bootstrap_ci(critic_r - baseline_r),
        "calibrated_critic_gain": float((calibrated_r - single).mean()),
        "calibrated_critic_gain_ci95": cc.bootstrap_ci(calibrated_r - single),
        # How much the policies truly disagree per prompt: the SD over prompts of the expected difference
        # between them, from the covariance of two disjoint halves of the samples (sampling noise removed)
        "difference_sd_between_prompts": float(np.sqrt(max(np.cov(half_diff[0], half_diff[1])[0, 1], 0.0))),
        "difference_sd_observed": float(difference.std()),
        "oracle_gain": float((oracle_r - single).mean()),
        "oracle_gain_ci95": cc.bootstrap_ci(oracle_r - single),
        "share_routed_to_first": {
            "critic": critic_share,
            "baseline": baseline_share,
            "calibrated_critic": calibrated_share,
        },
        "prompts_where_first_is_better": float((difference > 0).mean()),
        "critic_difference_vs_true_difference_pearson": float(pearsonr(true_diff_pred, difference).statistic),
        "baseline_difference_vs_true_difference_pearson": float(
            pearsonr(baseline[names[0]] - baseline[names[1]], difference).statistic
        ),
        "flagging": {
            "policy": best,
            "critic": flagging(critic_pred[best], single),
            "prompt_logit": flagging(prompt_logit[ev], single),
            "prompt_vader": flagging(prompt_vader[ev], single),
            "chance": 0.1,
        },
        "predictors": {name: predictors(name) for name in names},
        "reward_spread": {name: spread(name) for name in ["base", *names]},
        "training_curves": {name: {k: logs[name][k] for k in ("score", "value_loss", "kl")} for name in names},
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
    print(cc.json_summary(result, ("mean_reward", "critic_gain", "critic_gain_ci95", "baseline_gain", "oracle_gain")))
    results_dir = args.results or (None if args.quick else cc.RESULTS)
    if results_dir is not None:
        cc.update_results("routing", result, results_dir)
    return result


if __name__ == "__main__":
    main()
