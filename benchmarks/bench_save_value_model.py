"""What keeping the PPO critic costs at save time.

Builds a PPOTrainer on a small GPT-2 policy and critic (6 layers, 256 dims by default, built from configs) and times
`trainer.save_model` with `save_value_model=True` and `False`, alternating, `--repeats` times each. Reports the median
times, their ratio, and the bound the issue sets: 1.1 x (policy bytes + critic bytes) / policy bytes, the bytes being
the sizes of the `model.safetensors` files written. Never asserts on time. Writes `docs/results/save_value_model.json`
and `docs/results/save_value_model.md`; with `--append` it keeps the entries of other transformers versions already
in the JSON file and replaces only this version's.

    python -m benchmarks.bench_save_value_model
    python -m benchmarks.bench_save_value_model --append    # with another transformers, to add its row
    python -m benchmarks.bench_save_value_model --layers 12 --dims 768 --repeats 5 --out /tmp/results
"""

import os


os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

import argparse
import json
import platform
import shutil
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
import transformers
from datasets import Dataset
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, GPT2Config, PreTrainedTokenizerFast

import trl
from trl.experimental.ppo import PPOConfig, PPOTrainer


RESULTS = Path(__file__).resolve().parent.parent / "docs" / "results"
TEXT = ["The film was a delight from start to finish.", "A dull plot and wooden acting.", "I would watch it again."]


def byte_level_tokenizer(vocab_size):
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<pad>", "<bos>", "<eos>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(TEXT * 8, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>"
    )
    tokenizer.padding_side = "left"
    return tokenizer


def build_trainer(args, output_dir):
    tokenizer = byte_level_tokenizer(args.vocab)

    def config(num_labels=None):
        cfg = GPT2Config(
            vocab_size=args.vocab,
            n_positions=128,
            n_embd=args.dims,
            n_layer=args.layers,
            n_head=8,
            pad_token_id=0,
            bos_token_id=1,
            eos_token_id=2,
        )
        if num_labels is not None:
            cfg.num_labels = num_labels
        return cfg

    torch.manual_seed(0)
    policy = AutoModelForCausalLM.from_config(config())
    dataset = Dataset.from_dict({"input_ids": [tokenizer(text)["input_ids"] for text in TEXT * 4]})
    ppo_args = PPOConfig(
        output_dir=str(output_dir),
        bf16=False,
        gradient_checkpointing=False,
        num_sample_generations=0,
        report_to="none",
        disable_tqdm=True,
        per_device_train_batch_size=4,
        total_episodes=4,
        save_strategy="no",
    )
    return PPOTrainer(
        args=ppo_args,
        processing_class=tokenizer,
        model=policy,
        ref_model=None,
        reward_model=AutoModelForSequenceClassification.from_config(config(num_labels=1)),
        train_dataset=dataset,
        value_model=AutoModelForSequenceClassification.from_config(config(num_labels=1)),
    )


def measure(args):
    with tempfile.TemporaryDirectory() as tmp:
        trainer = build_trainer(args, Path(tmp) / "run")
        times = {False: [], True: []}
        for repeat in range(args.repeats + 1):  # the first round warms up and is not counted
            for keep_critic in (False, True):
                target = Path(tmp) / f"save-{keep_critic}"
                shutil.rmtree(target, ignore_errors=True)
                trainer.args.save_value_model = keep_critic
                start = time.perf_counter()
                trainer.save_model(str(target))
                if repeat > 0:
                    times[keep_critic].append(time.perf_counter() - start)
        policy_bytes = (Path(tmp) / "save-True" / "model.safetensors").stat().st_size
        critic_bytes = (Path(tmp) / "save-True" / "value_model" / "model.safetensors").stat().st_size

    without, with_critic = statistics.median(times[False]), statistics.median(times[True])
    ratio = with_critic / without
    bound = 1.1 * (policy_bytes + critic_bytes) / policy_bytes
    return {
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "trl": trl.__version__,
        "command": " ".join(["python -m benchmarks.bench_save_value_model", *sys.argv[1:]]),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {torch.get_num_threads()} torch thread(s), "
        f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}, {platform.platform()}",
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "setup": f"GPT-2 policy and critic of {args.layers} layers x {args.dims} dims, vocabulary {args.vocab}, "
        f"float32, {args.repeats} timed repeats of each after one warm-up round, median",
        "policy_bytes": policy_bytes,
        "critic_bytes": critic_bytes,
        "seconds_without_critic": times[False],
        "seconds_with_critic": times[True],
        "median_without_critic": without,
        "median_with_critic": with_critic,
        "ratio": ratio,
        "bound": bound,
        "within_bound": ratio <= bound,
    }


def write_markdown(runs):
    lines = [
        "# Cost of saving the PPO critic (`save_value_model=True`)",
        "",
        "Written by `benchmarks/bench_save_value_model.py` from `save_value_model.json`; do not edit by hand.",
        "",
        (
            "`trainer.save_model` timed with and without the critic, alternating; the bound is 1.1 x (policy bytes + "
            "critic bytes) / policy bytes, from the sizes of the `model.safetensors` files written."
        ),
        "",
        "| transformers | torch | policy | critic | without critic | with critic | ratio | bound | verdict |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for run in runs:
        lines.append(
            f"| {run['transformers']} | {run['torch']} | {run['policy_bytes'] / 2**20:.1f} MiB "
            f"| {run['critic_bytes'] / 2**20:.1f} MiB | {run['median_without_critic'] * 1000:.1f} ms "
            f"| {run['median_with_critic'] * 1000:.1f} ms | {run['ratio']:.2f} | {run['bound']:.2f} "
            f"| {'within bound' if run['within_bound'] else 'ABOVE BOUND'} |"
        )
    for run in runs:
        lines += [
            "",
            f"## transformers {run['transformers']}",
            "",
            f"- Command: `{run['command']}`",
            f"- Setup: {run['setup']}.",
            f"- Machine: {run['machine']}; {run['date']}.",
            f"- Versions: python {run['python']}, torch {run['torch']}, transformers {run['transformers']}, trl {run['trl']}.",
        ]
    return "\n".join(lines) + "\n"


def write_runs(out, name, run, append, write_markdown):
    """Writes `out/<name>.json` (one run per transformers version; with `append`, the other versions' runs are kept)
    and the page `out/<name>.md` that `write_markdown(runs)` makes from it."""
    json_path = out / f"{name}.json"
    runs = json.loads(json_path.read_text())["runs"] if append and json_path.exists() else []
    runs = [r for r in runs if r["transformers"] != run["transformers"]] + [run]
    runs.sort(key=lambda r: r["transformers"])
    out.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps({"runs": runs}, indent=2) + "\n")
    (out / f"{name}.md").write_text(write_markdown(runs))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--dims", type=int, default=256)
    parser.add_argument("--vocab", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--append", action="store_true", help="keep other transformers versions' entries")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    run = measure(args)
    print(
        f"save without critic: {run['median_without_critic'] * 1000:.1f} ms   "
        f"with critic: {run['median_with_critic'] * 1000:.1f} ms"
    )
    print(f"ratio (with / without): {run['ratio']:.2f}   bound 1.1 x (policy + critic) / policy: {run['bound']:.2f}")
    write_runs(args.out, "save_value_model", run, args.append, write_markdown)


if __name__ == "__main__":
    main()
