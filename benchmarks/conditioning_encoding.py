"""Claim 1, second try: does a reward encoding that keeps magnitude past the training range extrapolate better?

The reward head is linear, and the transformer's first LayerNorm divides its output by its norm, so the reward
position's vector for a large normalized reward z is almost the same as for a larger one: above the training range
the target stops moving the model (`conditioning_extrapolation.md`: no gain above the cap). This script measures that
saturation and tries the smallest change that keeps magnitude: the model is given two rewards per row, the reward r
and the signed square z|z| of its standardized value (z against the capped rows' mean and std; the trainer normalizes
both, `num_rewards=2`). Past the training range the second component keeps growing faster than the first, so the
direction of the head's output keeps turning instead of settling.

Setup as `conditioning_extrapolation` (its `cap_setup`: the rows with reward at most the training q90, the same
targets, prompts and sampling seeds), for the `linear` encoding (the plain scalar arm) and `signed_square`, each
sampled plainly and with guidance scale `GUIDANCE_SCALE`, over the training seeds. Per encoding: the gain above the
cap (mean over the above-cap targets minus the mean at the cap) with a 95 % t-interval, the paired difference of the
gains (same seed) and the saturation: the cosine between the reward position's vectors after block 0's first
LayerNorm for the target at the cap and each target above it (1 would be no difference at all). The encoding is kept
only if its gain's paired difference has an interval above 0.

    python -m benchmarks.conditioning_encoding           # the CPU benchmark (background, stage-cached, ~30 min)
    python -m benchmarks.conditioning_encoding --quick   # CI: untrained tiny model, seconds
    python -m benchmarks.conditioning_encoding --render  # rewrite the page from the JSON only
"""

import tempfile
import time

import numpy as np
import torch
import torch.nn.functional as F

from benchmarks import conditioning_extrapolation as extrapolation
from benchmarks import conditioning_stage as st


CAP_QUANTILE = extrapolation.CAP_QUANTILES[0]
GUIDANCE_SCALE = extrapolation.GUIDANCE_SCALE
ENCODINGS = ("linear", "signed_square")


def encode(encoding, rewards, rstats):
    """The model's rewards for raw rewards: `[r]` (linear) or `[r, z|z|]`, z = (r - mean) / std of `rstats`."""
    r = np.asarray(rewards, dtype=np.float64)
    if encoding == "linear":
        return r.tolist()
    z = (r - rstats["mean"]) / rstats["std"]
    return np.stack([r, z * np.abs(z)], axis=1).tolist()  # (N, 2)


@torch.no_grad()
def saturation(model, encoded_targets):
    """Cosine between the reward position's vector after block 0's first LayerNorm (GPT-2) for the first target and
    each target: the reward sits at position 0 of an unpadded row without BOS."""
    rewards = torch.tensor(encoded_targets, dtype=torch.float32)
    embeds = model.embed_rewards(rewards, None, len(encoded_targets))  # (K, H)
    gpt2 = model.model.transformer
    hidden = F.normalize(gpt2.h[0].ln_1(embeds + gpt2.wpe.weight[0]), dim=-1)  # (K, H)
    return (hidden @ hidden[0]).tolist()  # (K,)


def stage(bench, cache, encoding, seed):
    _, rows, rstats, targets, _ = extrapolation.cap_setup(bench, CAP_QUANTILE)
    encoded = encode(encoding, [row["reward"] for row in rows], rstats)
    rows = [row | {"reward": value} for row, value in zip(rows, encoded, strict=True)]
    encoded_targets = encode(encoding, targets, rstats)

    def compute():
        with tempfile.TemporaryDirectory() as out:
            model, tokenizer, seconds, _ = st.train_arm(bench, "scalar", rows, rstats, seed, out)
        means = extrapolation.achieved_means
        return {
            "plain": means(bench, "scalar", model, tokenizer, rstats, encoded_targets),
            "guided": means(bench, "scalar", model, tokenizer, rstats, encoded_targets, GUIDANCE_SCALE),
            "cosine_to_cap": saturation(model, encoded_targets),
            "train_seconds": seconds,
        }

    return cache.get(f"{encoding}-seed{seed}", compute)


def summarize(bench, results):
    """`results[encoding][seed]`: one row per (encoding, sampling), and the paired differences against `linear`."""
    cap, _, _, targets, best_rows = extrapolation.cap_setup(bench, CAP_QUANTILE)
    out, gains = [], {}
    for encoding, per_seed in results.items():
        seeds = sorted(per_seed)
        for sampling in ("plain", "guided"):
            means = np.array([per_seed[s][sampling] for s in seeds])  # (seeds, targets)
            gains[encoding, sampling] = means[:, 1:].mean(axis=1) - means[:, 0]  # (seeds,)
            mean_at_cap, at_cap_ci = st.mean_ci95(means[:, 0])
            gain, gain_ci = st.mean_ci95(gains[encoding, sampling])
            out.append(
                {
                    "arm": encoding if sampling == "plain" else f"{encoding}_guided",
                    "encoding": encoding,
                    "sampling": sampling,
                    "cap": cap,
                    "seeds": seeds,
                    "targets": targets,
                    "achieved_means": means.mean(axis=0).tolist(),
                    "mean_at_cap": mean_at_cap,
                    "mean_at_cap_ci95": at_cap_ci,
                    "gain_above_cap": gain,
                    "gain_above_cap_ci95": gain_ci,
                    "best_target_mean": float(means.mean(axis=0).max()),
                    "best_rows_mean": best_rows,
                    "cosine_to_cap": np.mean([per_seed[s]["cosine_to_cap"] for s in seeds], axis=0).tolist(),
                }
            )
    paired = []
    for sampling in ("plain", "guided"):
        if ("linear", sampling) in gains and ("signed_square", sampling) in gains:
            n = min(len(gains["linear", sampling]), len(gains["signed_square", sampling]))
            diff = gains["signed_square", sampling][:n] - gains["linear", sampling][:n]
            mean, ci = st.mean_ci95(diff)
            paired.append({"sampling": sampling, "seeds": n, "gain_difference": mean, "gain_difference_ci95": ci})
    return out, paired


def main(argv=None):
    parser = st.argument_parser(__doc__)
    args = parser.parse_args(argv)
    if args.render:
        return st.rerender(args.out, "conditioning_encoding", render)
    mode = "quick" if args.quick else "full"
    start = time.perf_counter()
    bench = st.load_bench(mode)
    cfg = bench.cfg
    # The setup comes from conditioning_extrapolation.py: its code is part of this cache's key
    extra = {"cap": CAP_QUANTILE, "w": GUIDANCE_SCALE, "setup": st.realdata.hash_files([extrapolation.__file__])}
    cache = st.StageCache(args.cache_dir, __file__, mode, cfg, extra)
    order = [(encoding, seed) for seed in cfg["seeds"] for encoding in ENCODINGS]
    results = {}
    for done, (encoding, seed) in enumerate(order, start=1):
        results.setdefault(encoding, {})[seed] = stage(bench, cache, encoding, seed)
        rows, paired = summarize(bench, results)
        payload = {
            **st.run_header(cache, __file__, argv, mode, cfg, start, done, len(order)),
            "cap_quantile": CAP_QUANTILE,
            "guidance_scale": GUIDANCE_SCALE,
            "setup": {**bench.info, "reward_stats": bench.rstats},
            "results": rows,
            "paired": paired,
        }
        st.write_page(args.out, "conditioning_encoding", payload, render)
    return payload


def verdict(paired):
    lo, hi = paired["gain_difference_ci95"]
    if paired["seeds"] < 2:
        return "undecided (one training seed: no interval)"
    if lo > 0:
        return "better: the signed square is kept"
    return "worse: not kept" if hi < 0 else "no measurable difference: not kept"


def render(payload):
    cfg, env = payload["config"], payload["environment"]
    table = [
        (
            "| arm | seeds | targets | mean achieved per target | mean at cap [95 %] | gain above cap [95 %] | best "
            "target mean vs best 5 % of its rows | cosine to the cap's vector after LayerNorm, per target |"
        ),
        "|---" * 8 + "|",
    ]
    for r in payload["results"]:
        table.append(
            f"| `{r['arm']}` | {len(r['seeds'])} | {', '.join(f'{t:+.2f}' for t in r['targets'])} | "
            f"{', '.join(f'{m:+.2f}' for m in r['achieved_means'])} | "
            f"{st.fmt_ci(r['mean_at_cap'], r['mean_at_cap_ci95'])} | "
            f"{st.fmt_ci(r['gain_above_cap'], r['gain_above_cap_ci95'])} | {r['best_target_mean']:+.2f} vs "
            f"{r['best_rows_mean']:+.2f} | {', '.join(f'{c:.4f}' for c in r['cosine_to_cap'])} |"
        )
    lines = [
        f"- {p['sampling']} sampling: gain above the cap of `signed_square` minus `linear`, paired by training seed "
        f"({p['seeds']} seeds): {st.fmt_ci(p['gain_difference'], p['gain_difference_ci95'])}; "
        f"{verdict(p)}."
        for p in payload["paired"]
    ]
    unfinished = st.unfinished_banner(payload)
    return f"""# Claim 1, second try: a reward encoding that keeps magnitude (generated)

Generated by `{payload["command"]}` from `conditioning_encoding.json` (run `{payload["run_id"]}`); do not edit by
hand.
{unfinished}
Base: {payload["setup"]["name"]}; torch {env["torch"]}, transformers {env["transformers"]}, trl {env["trl"]}, patch
set {env["patch_set_hash"]}. Both encodings train the scalar arm ({cfg["max_steps"]} steps, batch
{cfg["batch_size"]}) on the rows with reward at most the training q{100 * payload["cap_quantile"]:.0f}, as
`conditioning_extrapolation`; `linear` gives the model the reward, `signed_square` the reward and z|z| (z
standardized on the capped rows). `_guided` rows sample the same model with guidance scale
{payload["guidance_scale"]:g}. Targets: the cap, then above it; {cfg["n_prompts"]} held-out prompts per target,
sampling seeds {cfg["sampling_seeds"]}; intervals are 95 % t-intervals over training seeds. The last column is the
cosine between the reward position's vectors after block 0's first LayerNorm for the cap and each target (averaged
over seeds): near 1, the model cannot tell the targets apart.

{chr(10).join(table)}

{chr(10).join(lines)}
"""


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
