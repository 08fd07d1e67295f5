"""Raising the unguided control: which training lever moves the scalar arm's bulk r?

`conditioning_control` measures the reward head's learning rate (`HEAD_LR_MULTS`). This script measures the other
levers of the scalar arm, each against the default recipe (`default`: reward dropout `st.REWARD_DROPOUT`, the reward
head initialized by the model at the base's `initializer_range`), retrained here with the same seeds:

- `dropout0`: no reward dropout (no null reward, so no guidance): every row teaches the reward;
- `dropout0.3`: reward dropout 0.3: a stronger null branch for guidance, fewer rows with the reward;
- `init_token_std`: the reward head's weight and bias drawn at the standard deviation of the base's token embeddings,
  so the reward embedding starts at the scale of a token instead of about a third of it.

Every variant trains with the control benchmark's config and training seeds and is evaluated by its `evaluate`
(bulk r over the sampling seeds, judge perplexity, MAUVE, distinct-n). Per lever: bulk r with a 95 % t-interval over
training seeds and the paired difference from `default` (same training seed); a lever "raises the control" only if
that difference's interval lies above 0.

    python -m benchmarks.conditioning_levers           # the CPU benchmark (background, stage-cached, ~1 hour)
    python -m benchmarks.conditioning_levers --quick   # CI: untrained tiny model, seconds
    python -m benchmarks.conditioning_levers --render  # rewrite the page from the JSON only
"""

import tempfile
import time

import numpy as np
import torch

from benchmarks import conditioning_control as control
from benchmarks import conditioning_stage as st


def variants(bench):
    """name -> keyword arguments of `st.train_arm`."""
    token_std = float(bench.base.get_input_embeddings().weight.std())
    return {
        "default": {},
        "dropout0": {"reward_dropout": 0.0},
        "dropout0.3": {"reward_dropout": 0.3},
        "init_token_std": {"head_init_std": token_std},
    }


def stage(bench, cache, reference, name, kwargs, seed):
    def compute():
        with tempfile.TemporaryDirectory() as out:
            model, tokenizer, seconds, _ = st.train_arm(bench, "scalar", bench.rows, bench.rstats, seed, out, **kwargs)
        result = control.evaluate(bench, "scalar", model, tokenizer, bench.rstats, reference)
        return {"train_seconds": seconds, "train_kwargs": kwargs, **result}

    return cache.get(f"{name}-seed{seed}", compute)


def paired(rows):
    """Each lever's bulk r minus `default`'s, paired by training seed."""
    by_name = {row["arm"]: row for row in rows}
    if "default" not in by_name:
        return []
    base = {p["seed"]: p["pearson_r_bulk"] for p in by_name["default"]["per_seed"]}
    out = []
    for row in rows:
        seeds = [p["seed"] for p in row["per_seed"] if p["seed"] in base]
        if row["arm"] == "default" or not seeds:
            continue
        diff = [p["pearson_r_bulk"] - base[p["seed"]] for p in row["per_seed"] if p["seed"] in base]
        mean, ci = st.mean_ci95(diff)
        out.append({"variant": row["arm"], "seeds": seeds, "bulk_r_difference": mean, "bulk_r_difference_ci95": ci})
    return out


def main(argv=None):
    parser = st.argument_parser(__doc__)
    args = parser.parse_args(argv)
    if args.render:
        return st.rerender(args.out, "conditioning_levers", render)
    mode = "quick" if args.quick else "full"
    start = time.perf_counter()
    bench = st.load_bench(mode)
    cfg, levers = bench.cfg, variants(bench)
    # The evaluation comes from conditioning_control.py: its code is part of this cache's key
    extra = {"variants": levers, "evaluation": st.realdata.hash_files([control.__file__])}
    cache = st.StageCache(args.cache_dir, __file__, mode, cfg, extra)
    cache.get("setup", lambda: control.setup_stage(bench, cache))
    reference = np.load(cache.dir / "reference_features.npy")
    order = [(name, seed) for seed in cfg["seeds"] for name in levers]
    results = {}
    for done, (name, seed) in enumerate(order, start=1):
        results.setdefault(name, {})[seed] = stage(bench, cache, reference, name, levers[name], seed)
        rows = [control.summarize(n, sorted(res), [res[s] for s in sorted(res)]) for n, res in results.items()]
        payload = {
            **st.run_header(cache, __file__, argv, mode, cfg, start, done, len(order)),
            "variants": levers,
            "reward_dropout": st.REWARD_DROPOUT,
            "head_lr_mult": st.HEAD_LR_MULT,
            "setup": {**bench.info, "reward_stats": bench.rstats},
            "results": [
                {k: v for k, v in row.items() if k not in ("curves", "calibration", "examples")} for row in rows
            ],
            "paired": paired(rows),
        }
        st.write_page(args.out, "conditioning_levers", payload, render)
    return payload


def verdict(p):
    lo, hi = p["bulk_r_difference_ci95"]
    if len(p["seeds"]) < 2:
        return "undecided (one training seed: no interval)"
    return "raises the control" if lo > 0 else "lowers it" if hi < 0 else "no measurable change"


def render(payload):
    cfg, env = payload["config"], payload["environment"]
    table = [
        "| variant | training kwargs | seeds | bulk r [95 %] | full-range r | MAE bulk | judge ppl | MAUVE | d-2 | rep. |",
        "|---" * 10 + "|",
    ]
    for r in payload["results"]:
        kwargs = ", ".join(f"{k}={v:.4g}" for k, v in payload["variants"][r["arm"]].items()) or "(defaults)"
        table.append(
            f"| `{r['arm']}` | {kwargs} | {len(r['seeds'])} x {len(r['sampling_seeds'])} | "
            f"{st.fmt_ci(r['pearson_r_bulk'], r['pearson_r_bulk_ci95'])} | {r['pearson_r']:+.3f} | "
            f"{r['mae_bulk']:.3f} | {r['judge_perplexity']:.0f} | {r['mauve']:.3f} | {r['distinct_2']:.3f} | "
            f"{r['repetition_rate']:.3f} |"
        )
    lines = [
        f"- `{p['variant']}` against `default` (bulk r, paired by training seed, {len(p['seeds'])} seeds): "
        f"{st.fmt_ci(p['bulk_r_difference'], p['bulk_r_difference_ci95'])}: {verdict(p)}."
        for p in payload["paired"]
    ]
    met = [r["arm"] for r in payload["results"] if r["pearson_r_bulk_ci95"][0] >= control.GOAL_BULK_R]
    lines.append(
        f"- Unguided bulk r >= {control.GOAL_BULK_R} with the whole 95 % interval above it: "
        + (f"met by {', '.join(f'`{name}`' for name in met)}." if met else "met by no variant.")
    )
    unfinished = st.unfinished_banner(payload)
    return f"""# Raising the unguided control: training levers of the scalar arm (generated)

Generated by `{payload["command"]}` from `conditioning_levers.json` (run `{payload["run_id"]}`); do not edit by hand.
{unfinished}
Base: {payload["setup"]["name"]}; torch {env["torch"]}, transformers {env["transformers"]}, trl {env["trl"]}, patch
set {env["patch_set_hash"]}. Every variant is the scalar arm of `conditioning_control` ({cfg["max_steps"]} steps,
batch {cfg["batch_size"]}, learning rate {cfg["learning_rate"]}, reward head at {payload["head_lr_mult"]:g}x) with one
change; `default` is reward dropout {payload["reward_dropout"]} and the model's own head initialization. Training
seeds {cfg["seeds"]}, sampling seeds {cfg["sampling_seeds"]}; bulk targets uniform over the training q05-q95;
intervals are 95 % t-intervals over training seeds. Judge perplexity, MAUVE, distinct-2 and repetition are of the
first sampling seed's bulk completions. The head's learning rate, the other lever, is measured on
[`conditioning.md`](conditioning.md).

{chr(10).join(table)}

{chr(10).join(lines)}
"""


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
