"""`docs/results/critic.md` and its plots, written from `critic.json` only (every number on the page is read from it).

The three critic benchmarks each write their section of the JSON and call `write_page`; `python -m
benchmarks.critic_page [DIR]` rewrites the page and plots from an existing JSON.
"""

import json
import sys
from pathlib import Path


def _ci(interval):
    return f"[{interval[0]:+.3f}, {interval[1]:+.3f}]"


def _verdict(interval):
    if interval[0] > 0:
        return "above 0"
    if interval[1] < 0:
        return "below 0"
    return "includes 0"


def _routing(r):
    names, s, m = r["policies"], r["settings"], r["mean_reward"]
    a, b = names
    best = r["best_single"]
    rows = [
        (f"always `{a}`", m[f"always_{a}"], None, None),
        (f"always `{b}`", m[f"always_{b}"], None, None),
        ("routing by the prompt-only baseline", m["baseline_routing"], r["baseline_gain"], r["baseline_gain_ci95"]),
        ("**routing by the critics**", m["critic_routing"], r["critic_gain"], r["critic_gain_ci95"]),
        (
            "routing by the critics, calibrated like the baseline",
            m["calibrated_critic_routing"],
            r["calibrated_critic_gain"],
            r["calibrated_critic_gain_ci95"],
        ),
        ("oracle (other seeds' Monte-Carlo means)", m["oracle"], r["oracle_gain"], r["oracle_gain_ci95"]),
    ]
    table = "\n".join(
        f"| {label} | {mean:+.3f} | " + ("" if gain is None else f"{gain:+.3f} {_ci(ci)}") + " |"
        for label, mean, gain, ci in rows
    )
    p = r["predictors"]
    pred = "\n".join(
        f"| `{n}` | {p[n]['mean_reward']:+.3f} | {p[n]['mean_predicted_value']:+.3f} | {p[n]['critic_pearson']:+.3f} | {p[n]['prompt_logit_pearson']:+.3f} | "
        f"{p[n]['prompt_vader_pearson']:+.3f} | {p[n]['ceiling']:+.3f} | {p[n]['critic_pearson_with_baseline_residual']:+.3f} | "
        f"{p[n]['train_first_value_loss']:.3f} -> {p[n]['train_final_value_loss']:.3f} |"
        for n in names
    )
    f = r["flagging"]
    spread = "\n".join(
        f"| {'the base (before PPO)' if n == 'base' else f'`{n}`'} | {x['mean_reward']:+.3f} | "
        f"{x['between_prompt_sd']:.3f} | {x['within_prompt_sd']:.3f} | {x['prompt_logit_pearson']:+.3f} |"
        for n, x in r["reward_spread"].items()
    )
    flag = "\n".join(
        f"| {label} | {f[key]['precision']:.3f} | {f[key]['recall']:.3f} |"
        for label, key in (
            ("the critic's predicted value", "critic"),
            ("baseline: sentiment logit of the prompt", "prompt_logit"),
            ("baseline: VADER of the prompt", "prompt_vader"),
        )
    )
    offsets = ", ".join(
        f"`{n}` {p[n]['mean_predicted_value']:+.3f} predicted against {p[n]['mean_reward']:+.3f} realized"
        for n in names
    )
    reading = (
        (
            f"Reading: even the oracle does not beat always `{best}` (gain {r['oracle_gain']:+.3f} "
            f"{_ci(r['oracle_gain_ci95'])}), so no per-prompt router can in this setting: "
            if r["oracle_gain_ci95"][0] <= 0
            else f"Reading: the oracle gains {r['oracle_gain']:+.3f} {_ci(r['oracle_gain_ci95'])}: "
        )
        + f"the per-prompt difference between the policies "
        f"has a noise-free SD of {r['difference_sd_between_prompts']:.3f} against a mean difference of "
        f"{m[f'always_{a}'] - m[f'always_{b}']:+.3f}, and the expected reward itself varies little between prompts "
        f"(between-prompt SD {r['reward_spread'][best]['between_prompt_sd']:.3f} against "
        f"{r['reward_spread'][best]['within_prompt_sd']:.3f} within a prompt for `{best}`, "
        f"{r['reward_spread']['base']['between_prompt_sd']:.3f} against "
        f"{r['reward_spread']['base']['within_prompt_sd']:.3f} for the base): with the completion scored alone, an "
        f"8-token prompt says little about the reward. The raw critics route worse than always `{best}` because "
        f"their offsets differ ({offsets}): each critic predicts returns (reward minus the KL penalty) of a policy "
        f"that kept moving while it was trained (PPO value loss over training in the table below: "
        + ", ".join(
            f"`{n}` {p[n]['train_first_value_loss']:.2f} -> {p[n]['train_final_value_loss']:.2f}" for n in names
        )
        + "); calibrated like "
        f"the baseline, on the calibration prompts, they gain {r['calibrated_critic_gain']:+.3f} "
        f"{_ci(r['calibrated_critic_gain_ci95'])}."
    )
    per_seed = ", ".join(f"seed {k}: {v:+.3f}" for k, v in r["critic_gain_per_sampling_seed"].items())
    return f"""## Routing between two PPO policies by their critics

Two PPO specialists from the same base, each trained with `save_value_model=True` for {s["updates"]} updates of \
{s["batch"]} episodes (policy lr {s["policy_lr"]:g}, critic lr {s["critic_lr"]:g} in its own parameter group, \
`critic_warmup_steps={s["warmup"]}`, `kl_coef={s["kl_coef"]:g}`): `pos` on prompts of positive training reviews, `neg` on prompts of negative \
ones, both rewarded for a positive completion. On {s["eval"]} held-out prompts each prompt goes to the policy whose \
critic predicts the higher value (`predict_prompt_values`, before generating). Realized reward: the mean of \
{s["samples"]} completions per prompt for each of the sampling seeds {s["sampling_seeds"]}. The prompt-only \
baseline routes by a per-policy linear regression of the realized reward on the prompt's sentiment logit and VADER, \
fitted on {s["calib"]} other held-out prompts. Gains are over the best single policy (`{best}`), with 95% paired \
bootstrap intervals over prompts (seed {s["bootstrap_seed"]}).

| router | mean reward | gain over always `{best}` [95% CI] |
| --- | --- | --- |
{table}

Critic routing sends {r["share_routed_to_first"]["critic"]:.1%} of prompts to `{a}` (baseline: \
{r["share_routed_to_first"]["baseline"]:.1%}, calibrated critics: {r["share_routed_to_first"]["calibrated_critic"]:.1%}); \
`{a}` is better on {r["prompts_where_first_is_better"]:.1%} of prompts by the Monte-Carlo means. How much the two \
policies truly disagree per prompt: the SD over prompts of `{a}` minus `{b}` is {r["difference_sd_observed"]:.3f} as \
observed and {r["difference_sd_between_prompts"]:.3f} once sampling noise is removed (covariance of two disjoint halves \
of the samples), against a mean difference of {m[f"always_{a}"] - m[f"always_{b}"]:+.3f}. The critic's gain per sampling seed: {per_seed}. Critic minus baseline routing: \
{r["critic_minus_baseline"]:+.3f} {_ci(r["critic_minus_baseline_ci95"])} (interval {_verdict(r["critic_minus_baseline_ci95"])}). \
The predicted difference between the two policies correlates with the realized difference at \
{r["critic_difference_vs_true_difference_pearson"]:+.3f} for the critics and \
{r["baseline_difference_vs_true_difference_pearson"]:+.3f} for the baseline.

How well each predictor ranks prompts by the Monte-Carlo mean reward of each policy (Pearson r; the ceiling is what \
the true expected reward would reach against that noisy mean, from the split-half reliability):

| policy | mean reward | mean predicted value | critic | prompt logit | prompt VADER | ceiling | critic vs what the baseline misses | PPO value loss, first 4 -> last 8 updates |
| --- | --- | --- | --- | --- | --- | --- | --- | --- |
{pred}

How much there is to predict at all: the SD over prompts of the expected reward (sampling noise removed, as above) \
against the SD of single samples around it, and the prompt logit's r with the mean reward:

| policy | mean reward | between-prompt SD | within-prompt SD | prompt logit r |
| --- | --- | --- | --- | --- |
{spread}

Content warning: flag the bottom {f["critic"]["n_flagged"]} prompts (a decile) for `{f["policy"]}` before \
generating; precision and recall against the bottom decile of its Monte-Carlo means (chance: {f["chance"]:.2f}; with \
as many flagged as there are true bottom-decile prompts, precision equals recall):

| flagged by | precision | recall |
| --- | --- | --- |
{flag}

{reading}

![routing](critic_routing.png)
"""


def _value_guided(v):
    s = v["settings"]
    arms = v["arms"]
    rows = []
    for label, arm in arms.items():
        if arm["method"] == "guided":
            name = f"guided, top-{s['top_k']}, beta {arm['beta']:g}" + (" (top-k only)" if arm["beta"] == 0 else "")
        else:
            name = {"policy": "the policy alone", "best_of_n": f"best-of-{s['best_of_n']} by the critic"}[label]
        fp = arm["forward_passes_per_prompt"]
        ppl = "" if arm["judge_perplexity"] is None else f"{arm['judge_perplexity']:.0f}"
        rows.append(
            f"| {name} | {arm['mean_reward']:+.3f} | {arm['kl']:.2f} | {ppl} | {arm['distinct_2']:.3f} | "
            f"{fp['policy_row_steps']:.0f} + {fp['critic_rows']:.0f} | {1000 * arm['seconds_per_prompt']:.1f} |"
        )
    table = "\n".join(rows)
    examples = "\n".join(f"- `{label}`: {json.dumps(arm['example'])}" for label, arm in arms.items())
    top_k_only = (
        f"; guided minus top-{s['top_k']} sampling without the critic (beta 0), the critic's own share: "
        f"{v['guided_minus_top_k_only']:+.3f} {_ci(v['guided_minus_top_k_only_ci95'])}"
        if "guided_minus_top_k_only" in v
        else ""
    )
    main, base0 = arms[f"guided_beta{s['beta']:g}"], arms.get("guided_beta0")
    policy, bon = arms["policy"], arms["best_of_n"]
    reading = (
        f"Reading: at beta {s['beta']:g} the guided sampler reaches {main['mean_reward']:+.3f} against "
        f"{policy['mean_reward']:+.3f} for the policy and {bon['mean_reward']:+.3f} for best-of-{s['best_of_n']}, at a "
        f"KL to the base of {main['kl']:.1f} nats against {policy['kl']:.1f} and {bon['kl']:.1f}, and distinct-2 "
        f"{main['distinct_2']:.3f} against {policy['distinct_2']:.3f}: it buys reward with a large shift and repetitive "
        "text."
        + (
            f" Much of both comes from keeping only the top-{s['top_k']} tokens (beta 0: reward "
            f"{base0['mean_reward']:+.3f}, KL {base0['kl']:.1f}, distinct-2 {base0['distinct_2']:.3f}); the critic's "
            f"own share is the difference to beta 0 above."
            if base0
            else ""
        )
        + (
            " The critic ranks whole completions well where it ranks prompts poorly: across the best-of-"
            f"{s['best_of_n']} candidates its value correlates with the realized reward at Pearson r "
            + ", ".join(f"{x:+.3f}" for x in v["critic_completion_pearson_per_seed"])
            + " (per sampling seed), and most of the reward's variance is between completions of one prompt (routing "
            "section)."
            if "critic_completion_pearson_per_seed" in v
            else ""
        )
        + " The judge's lower perplexity for the guided text goes with that repetition (frequent, repeated words are "
        "easy to predict); it is not evidence of better writing."
    )
    return f"""## Value-guided decoding

The better specialist (`{v["policy"]}`) and its critic decode {s["prompts"]} held-out prompts \
({s["response_tokens"]} new tokens, temperature 1, sampling seeds {s["sampling_seeds"]}). \
`ValueGuidedLogitsProcessor(critic, top_k={s["top_k"]}, beta)` re-weights the policy's top-{s["top_k"]} next tokens by \
`exp(beta * V(prefix + token))`; best-of-{s["best_of_n"]} keeps the sample the critic values most (the reward model \
is not available at inference). KL to the base: per completion, the sampler's own log-probs minus the base's on the \
sampled tokens (for best-of-N the policy's; the selection itself adds at most \
{v["best_of_n_selection_kl_bound"]:.2f} nats). Judge perplexity: SmolLM2-135M given the prompt, on the first \
{s["judge_seeds"]} sampling seed(s). Forward passes per prompt: policy rows x steps + critic rows (the guided \
critic reads the whole prefix each step, no KV cache).

| decoder | mean reward | KL to base | judge ppl | distinct-2 | forward passes | ms / prompt |
| --- | --- | --- | --- | --- | --- | --- |
{table}

Guided (beta {s["beta"]:g}) minus the policy alone: {v["reward_gain"]:+.3f} {_ci(v["reward_gain_ci95"])} (interval \
{_verdict(v["reward_gain_ci95"])}); best-of-{s["best_of_n"]} minus the policy: {v["best_of_n_gain"]:+.3f} \
{_ci(v["best_of_n_gain_ci95"])}; guided minus best-of-{s["best_of_n"]}: {v["guided_minus_best_of_n"]:+.3f} \
{_ci(v["guided_minus_best_of_n_ci95"])}{top_k_only} (95% paired bootstrap over prompts, seed {s["bootstrap_seed"]}).

{reading}

The first prompt's completion under each decoder (first sampling seed; prompt, then `|`, then the completion):

{examples}

![value-guided decoding](critic_value_guided.png)
"""


def _warm_start(w):
    s, summary = w["settings"], w["summary"]
    rows = []
    for key, item in summary.items():
        warm = ", ".join(f"{x:.3f}" for x in item["warm_per_seed"])
        fresh = ", ".join(f"{x:.3f}" for x in item["fresh_per_seed"])
        rows.append(
            f"| {key.replace('_', ' ')} | {warm} | {fresh} | {item['warm_minus_fresh_mean']:+.3f} | "
            f"{item['seeds_where_warm_is_lower']}/{len(item['warm_per_seed'])} |"
        )
    table = "\n".join(rows)
    return f"""## Warm start from a saved critic

A new PPO run of the `{w["source"]}` task from the base policy ({s["updates"]} updates, training seeds \
{s["training_seeds"]}, `critic_warmup_steps=0`, critic lr {s["critic_lr"]:g}), with a fresh critic (the policy's body \
and a new value head) or with the critic the first `{w["source"]}` run ({s["source_updates"]} updates) saved in \
`value_model/`. Means per training seed:

| measure | warm critic (per seed) | fresh critic (per seed) | warm minus fresh | seeds where warm < fresh |
| --- | --- | --- | --- | --- |
{table}

![warm start](critic_warm_start.png)
"""


def _plots(results, results_dir):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if "routing" in results:
        r = results["routing"]
        labels = ["baseline routing", "critic routing", "oracle"]
        gains = [r["baseline_gain"], r["critic_gain"], r["oracle_gain"]]
        cis = [r["baseline_gain_ci95"], r["critic_gain_ci95"], r["oracle_gain_ci95"]]
        fig, ax = plt.subplots(figsize=(5, 3.2))
        err = [
            [g - c[0] for g, c in zip(gains, cis, strict=True)],
            [c[1] - g for g, c in zip(gains, cis, strict=True)],
        ]
        ax.bar(labels, gains, yerr=err, capsize=4, color=["#999", "#1f77b4", "#2ca02c"])
        ax.axhline(0, color="k", lw=0.8)
        ax.set_ylabel(f"reward gain over always `{r['best_single']}`")
        ax.set_title("Routing between two PPO policies (95% CI)")
        fig.tight_layout()
        fig.savefig(results_dir / "critic_routing.png", dpi=120)
        plt.close(fig)
    if "value_guided" in results:
        v = results["value_guided"]
        fig, ax = plt.subplots(figsize=(5, 3.5))
        guided = [
            (arm["kl"], arm["mean_reward"], arm["beta"]) for arm in v["arms"].values() if arm["method"] == "guided"
        ]
        ax.plot([g[0] for g in guided], [g[1] for g in guided], "o-", label="guided (beta)")
        for kl, reward, beta in guided:
            ax.annotate(f"{beta:g}", (kl, reward), textcoords="offset points", xytext=(4, 4), fontsize=8)
        for label, marker in (("policy", "s"), ("best_of_n", "^")):
            arm = v["arms"][label]
            ax.plot([arm["kl"]], [arm["mean_reward"]], marker, label=label.replace("_", "-"))
        ax.set_xlabel("KL to the base (nats per completion)")
        ax.set_ylabel("mean reward (completion sentiment logit)")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(results_dir / "critic_value_guided.png", dpi=120)
        plt.close(fig)
    if "warm_start" in results:
        w = results["warm_start"]
        fig, axes = plt.subplots(1, 2, figsize=(8, 3.2))
        for ax, key, title in zip(axes, ("value_loss", "score"), ("PPO value loss", "mean score"), strict=True):
            for arm, color in (("fresh", "#d62728"), ("warm", "#1f77b4")):
                for curve in w["curves"][arm][key]["per_seed"]:
                    ax.plot(range(1, len(curve) + 1), curve, color=color, alpha=0.3, lw=0.8)
                mean = w["curves"][arm][key]["mean"]
                ax.plot(range(1, len(mean) + 1), mean, color=color, lw=2, label=f"{arm} critic")
            ax.set_xlabel("update")
            ax.set_title(title)
            ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(results_dir / "critic_warm_start.png", dpi=120)
        plt.close(fig)


def write_page(results: dict, results_dir: Path) -> None:
    setup = next((results[k]["setup"] for k in ("routing", "value_guided", "warm_start") if k in results), {})
    sections = [
        fn(results[key])
        for key, fn in (("routing", _routing), ("value_guided", _value_guided), ("warm_start", _warm_start))
        if key in results
    ]
    page = f"""# The kept critic at work (written by `python -m benchmarks.critic_routing`, `critic_value_guided` and `critic_warm_start`)

Mode `{results.get("mode")}`. Base policy: {setup.get("base")}. Reward: {setup.get("reward")}; the prompt's own words \
are not part of it, and every table keeps the prompt-only baselines beside the critic. Judge: {setup.get("judge")}. \
Every number below is read from `critic.json`.

""" + "\n".join(sections)
    (results_dir / "critic.md").write_text(page)
    _plots(results, results_dir)


if __name__ == "__main__":
    folder = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[1] / "docs" / "results"
    write_page(json.loads((folder / "critic.json").read_text()), folder)
