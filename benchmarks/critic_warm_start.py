"""Warm-starting PPO from a saved critic, measured (issue 15, section 4).

A new PPO run of the `pos` specialist's task (its prompts, reward and settings; new training seeds), starting from
the base policy, with either a FRESH critic (the policy's body with a new value head, as PPO examples build it) or
the critic the first `pos` run saved in `value_model/` (reloaded with `AutoModelForSequenceClassification`). Neither
arm has critic warm-up updates, so the policy trains from the first update in both. Per update: PPO's value loss
and mean score, for several training seeds.

`python -m benchmarks.critic_warm_start [--quick] [--results DIR]`; writes the `warm_start` section of
`critic.json` and regenerates `critic.md`.
"""

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from transformers import AutoModelForSequenceClassification

import realdata
from benchmarks import critic_common as cc


SOURCE = "pos"


def run(setup, every=0):
    start = time.time()
    cfg = setup.cfg
    cc.trained_policy(setup, SOURCE)  # makes sure the source run (and its critic) exists
    source_dir = cc.policy_dir(setup, SOURCE)
    curves = {"fresh": [], "warm": []}
    for seed in cfg["warm_seeds"]:
        for arm in ("fresh", "warm"):
            critic = None
            if arm == "warm":
                critic = AutoModelForSequenceClassification.from_pretrained(source_dir / "value_model")
            with tempfile.TemporaryDirectory(dir=realdata.CACHE_DIR) as out:
                log = cc.ppo_train(
                    setup, setup.train_prompts[SOURCE], Path(out), 100 + seed, cfg["warm_updates"], 0,
                    critic=critic, name=f"{arm} seed {100 + seed}", every=every,
                )  # fmt: skip
                shutil.rmtree(out, ignore_errors=True)
            curves[arm].append(log)
            print(
                f"   {arm} critic, seed {100 + seed}: value loss first {log['value_loss'][0]:.4f}, "
                f"mean {np.mean(log['value_loss']):.4f}; score mean {np.mean(log['score']):+.3f}",
                flush=True,
            )

    def stat(arm, key):
        values = np.array([log[key] for log in curves[arm]])  # (seeds, updates)
        return {"mean": values.mean(0).tolist(), "per_seed": values.tolist()}

    def mean_over(arm, key, updates):
        return [float(np.mean(log[key][:updates])) for log in curves[arm]]

    first = min(4, cfg["warm_updates"])
    summary = {}
    for key in ("value_loss", "score"):
        for span, n in (("first", first), ("all", cfg["warm_updates"])):
            warm, fresh = np.array(mean_over("warm", key, n)), np.array(mean_over("fresh", key, n))
            summary[f"{key}_{span}_{n}_updates"] = {
                "warm_per_seed": warm.tolist(),
                "fresh_per_seed": fresh.tolist(),
                "warm_minus_fresh_mean": float((warm - fresh).mean()),
                "seeds_where_warm_is_lower": int((warm < fresh).sum()),
            }
    return {
        "mode": setup.mode,
        "setup": setup.info,
        "source": SOURCE,
        "settings": {
            "updates": cfg["warm_updates"],
            "training_seeds": [100 + s for s in cfg["warm_seeds"]],
            "batch": cfg["batch"],
            "critic_warmup_steps": 0,
            "kl_coef": cfg["kl_coef"],
            "policy_lr": cc.POLICY_LR,
            "critic_lr": cc.CRITIC_LR,
            "source_updates": cfg["updates"],
        },
        "curves": {arm: {key: stat(arm, key) for key in ("value_loss", "score", "kl")} for arm in curves},
        "summary": summary,
        "wall_s": time.time() - start,
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny untrained models, a few updates: seconds")
    parser.add_argument("--results", type=Path, help="folder for critic.json/md (default docs/results; quick: none)")
    args = parser.parse_args(argv)
    setup = cc.load_setup("quick" if args.quick else "full")
    result = run(setup)
    print(cc.json_summary(result, ("summary",)))
    results_dir = args.results or (None if args.quick else cc.RESULTS)
    if results_dir is not None:
        cc.update_results("warm_start", result, results_dir)
    return result


if __name__ == "__main__":
    main()
