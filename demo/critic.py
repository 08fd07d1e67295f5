"""PPO keeps its critic, and the critic is put to work: routing, content warnings, value-guided decoding, warm starts.

Offline, on CPU, in a few minutes: a short version of the critic benchmarks (`benchmarks/critic_*.py`, whose longer
runs write `docs/results/critic.md`). The base policy is the tiny GPT-2 of `realdata` (pretrained on IMDb review
openings), prompts are the first 8 tokens of IMDb reviews, and the reward is the sentiment logit of the COMPLETION
only (the prompt's own words are not the policy's doing), with the prompt-only baselines kept beside the critic.

1. Two PPO specialists with `save_value_model=True`: `pos` on prompts of positive reviews, `neg` on prompts of
   negative ones, both toward a positive completion. `pos` checkpoints halfway; a new trainer resumes that
   checkpoint with `train(resume_from_checkpoint=True)` and must end where the uninterrupted run ended.
2. Routing: each held-out prompt goes to the policy whose critic (reloaded with `AutoModelForSequenceClassification`)
   predicts the higher value, against always-one-policy, a prompt-only baseline router and the oracle; and a content
   warning for the bottom decile of prompts.
3. Value-guided decoding (`ValueGuidedLogitsProcessor`) against the policy alone and best-of-N scored by the critic.
4. Warm start: a new PPO run with the saved critic against one with a fresh critic.

The critic gets its own learning rate with `PPOConfig.critic_learning_rate` (`critic_common.CRITIC_LR`, against the
policy's `POLICY_LR`).

Run from the repository root: `python -m demo.critic` (`--results DIR` also writes the short version's `critic.json`
and `critic.md` into DIR).
"""

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from safetensors.torch import load_file

import realdata
from benchmarks import critic_common as cc
from benchmarks import critic_routing, critic_value_guided, critic_warm_start


def max_difference(dir_a: Path, dir_b: Path) -> float:
    a, b = load_file(str(dir_a / "model.safetensors")), load_file(str(dir_b / "model.safetensors"))
    return max((a[name] - b[name]).abs().max().item() for name in a)


def resume_check(setup, name="pos"):
    """Resume `name`'s run from its halfway checkpoint in a new trainer; largest weight differences to the
    uninterrupted run (policy, critic)."""
    source = cc.policy_dir(setup, name)
    middle = setup.cfg["updates"] // 2
    with tempfile.TemporaryDirectory(dir=realdata.CACHE_DIR) as run:
        run = Path(run)
        shutil.copytree(source / f"checkpoint-{middle}", run / f"checkpoint-{middle}")
        cc.ppo_train(
            setup, setup.train_prompts[name], run, 0, setup.cfg["updates"], setup.cfg["warmup"], name=f"{name} resumed",
            save_steps=middle, resume=True,
        )  # fmt: skip
        return max_difference(run, source), max_difference(run / "value_model", source / "value_model")


def main(results_dir: Path | None = None) -> None:
    start = time.time()
    print("1. Data, base model and two PPO specialists (cached after the first run)", flush=True)
    setup = cc.load_setup("demo")
    cfg = setup.cfg
    for name in cc.POLICIES:
        cc.trained_policy(setup, name)
    middle = cfg["updates"] // 2
    print(f"   resume: a new trainer resumes `pos` from checkpoint-{middle}", flush=True)
    policy_diff, critic_diff = resume_check(setup)
    print(
        f"   resumed vs uninterrupted after update {cfg['updates']}, largest weight difference: policy "
        f"{policy_diff:.1e}, critic {critic_diff:.1e} ({time.time() - start:.0f}s so far)",
        flush=True,
    )

    print(
        f"2. Routing {len(setup.eval_prompts)} held-out prompts by the critics' predicted values "
        f"({cfg['samples']} samples per prompt, sampling seeds {list(cfg['seeds'])})",
        flush=True,
    )
    routing = critic_routing.run(setup)
    best = routing["best_single"]
    for label, value in routing["mean_reward"].items():
        print(f"   {label:>16}: mean reward {value:+.3f}", flush=True)
    print(
        f"   gain over always `{best}`: critic {routing['critic_gain']:+.3f} "
        f"[{routing['critic_gain_ci95'][0]:+.3f}, {routing['critic_gain_ci95'][1]:+.3f}], prompt-only baseline "
        f"{routing['baseline_gain']:+.3f}, oracle {routing['oracle_gain']:+.3f}",
        flush=True,
    )
    for name, p in routing["predictors"].items():
        print(
            f"   `{name}`: Pearson r with its mean reward: critic {p['critic_pearson']:+.3f}, prompt logit "
            f"{p['prompt_logit_pearson']:+.3f}, prompt VADER {p['prompt_vader_pearson']:+.3f} (ceiling "
            f"{p['ceiling']:+.3f})",
            flush=True,
        )
    f = routing["flagging"]
    print(
        f"   content warning (bottom decile for `{f['policy']}`): precision critic {f['critic']['precision']:.2f}, "
        f"prompt logit {f['prompt_logit']['precision']:.2f}, prompt VADER {f['prompt_vader']['precision']:.2f} "
        f"(chance {f['chance']:.2f})",
        flush=True,
    )

    print(
        f"3. Value-guided decoding on {cfg['vgd_prompts']} prompts (top-{cfg['top_k']}, beta {cfg['beta']:g}) vs the "
        f"policy and best-of-{cfg['top_k'] + 1} by the critic",
        flush=True,
    )
    guided = critic_value_guided.run(setup)
    print(
        f"   guided minus policy: {guided['reward_gain']:+.3f} [{guided['reward_gain_ci95'][0]:+.3f}, "
        f"{guided['reward_gain_ci95'][1]:+.3f}]; best-of-N minus policy: {guided['best_of_n_gain']:+.3f}",
        flush=True,
    )

    print(f"4. Warm start: {cfg['warm_updates']} PPO updates with the saved critic vs a fresh one", flush=True)
    warm = critic_warm_start.run(setup)
    for key, item in warm["summary"].items():
        print(f"   {key.replace('_', ' ')}: warm minus fresh {item['warm_minus_fresh_mean']:+.3f}", flush=True)
    print(f"Done in {time.time() - start:.0f}s ({time.process_time():.0f}s of CPU).", flush=True)
    if results_dir is not None:
        for section, data in (("routing", routing), ("value_guided", guided), ("warm_start", warm)):
            cc.update_results(section, data, results_dir)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--results", type=Path, help="also write the short version's critic.json/md into this folder")
    main(parser.parse_args().results)
