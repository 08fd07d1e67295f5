"""What keeping the PPO critic costs at save time.

Builds a PPOTrainer on a small GPT-2 policy and critic (6 layers, 256 dims by default, built from configs) and times
`trainer.save_model` with `save_value_model=True` and `False`, alternating, `--repeats` times each. Prints the median
times, their ratio, and the bound the issue sets: 1.1 x (policy bytes + critic bytes) / policy bytes, the bytes being
the sizes of the `model.safetensors` files written. Prints ratios, never asserts on time.

    python -m benchmarks.bench_save_value_model
    python -m benchmarks.bench_save_value_model --layers 12 --dims 768 --repeats 5
"""

import os


os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch
from datasets import Dataset
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, GPT2Config, PreTrainedTokenizerFast

from trl.experimental.ppo import PPOConfig, PPOTrainer


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


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--dims", type=int, default=256)
    parser.add_argument("--vocab", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()

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
    print(f"GPT-2 {args.layers} layers x {args.dims} dims, vocab {args.vocab}, {args.repeats} repeats, median")
    print(f"policy {policy_bytes / 2**20:.1f} MiB, critic {critic_bytes / 2**20:.1f} MiB")
    print(f"save without critic: {without * 1000:.1f} ms   with critic: {with_critic * 1000:.1f} ms")
    print(f"ratio (with / without): {ratio:.2f}   bound 1.1 x (policy + critic) / policy: {bound:.2f}")
    print("within bound" if ratio <= bound else "ABOVE BOUND")


if __name__ == "__main__":
    main()
