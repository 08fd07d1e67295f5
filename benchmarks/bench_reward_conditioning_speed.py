"""Cost of reward conditioning: training step and cached generation, side by side with the base model.

One extra position per row costs at least (T + 1) / T. The goals are a conditioned training step time
/ base step time <= (T + 1) / T x 1.03 at T = 256, and generation tokens/s >= 0.97 x the base model's, with the KV
cache and the same batch. Classifier-free guidance on the reward (`guidance_scale`) runs a second, unconditional
branch, so guided generation costs about twice plain conditioned generation; the guided / plain time ratio is printed
too. Last, both forwards are compiled with `torch.compile(fullgraph=True)` (the reward insertion must not break the
graph) and timed on the training batch without gradients. All contestants run interleaved in one process (medians over
repeats), so machine load hits them alike; ratios are medians of per-repeat ratios. Asserts nothing: prints the ratios and writes them, with every setting, to
`docs/results/reward_conditioning_speed.json` and the page `docs/results/reward_conditioning_speed.md` made from it.

    OMP_NUM_THREADS=1 python benchmarks/bench_reward_conditioning_speed.py            # CPU, a few minutes
    python benchmarks/bench_reward_conditioning_speed.py --device cuda --hidden 1024 --layers 8
"""

import argparse
import copy
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch
import transformers


os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

from transformers import AutoModelForCausalLM, LlamaConfig

from trl.experimental.reward_conditioning import RewardConditionedCausalLM


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--vocab", type=int, default=4096)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--prompt-len", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--seed", type=int, default=0, help="seed of the weights and inputs")
    parser.add_argument("--output-dir", default=str(Path(__file__).resolve().parent.parent / "docs" / "results"))
    parser.add_argument("--note", default="", help="said on the page, e.g. that the machine was shared")
    return parser.parse_args()


def synchronize(device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(function, name, device):
    synchronize(device)
    start = time.perf_counter()
    function(name)
    synchronize(device)
    return time.perf_counter() - start


def main():
    args = parse_args()
    torch.manual_seed(args.seed)
    config = LlamaConfig(
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        intermediate_size=4 * args.hidden,
        num_hidden_layers=args.layers,
        num_attention_heads=max(args.hidden // 64, 1),
        max_position_embeddings=2 * (args.seq_len + args.new_tokens),
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    base = AutoModelForCausalLM.from_config(config).to(args.device)
    conditioned = RewardConditionedCausalLM.from_base(
        copy.deepcopy(base), reward_mean=[0.0], reward_std=[1.0], use_null_reward=True
    )

    # Left-padded batch: row i has i * 8 padding tokens.
    input_ids = torch.randint(3, args.vocab, (args.batch, args.seq_len), device=args.device)
    attention_mask = torch.ones_like(input_ids)
    for i in range(args.batch):
        attention_mask[i, : 8 * i] = 0
    input_ids = input_ids.masked_fill(attention_mask == 0, 0)
    labels = input_ids.masked_fill(attention_mask == 0, -100)
    rewards = torch.randn(args.batch, device=args.device)
    # The empirical floor: the base model on one more real token per row.
    extra_ids = torch.randint(3, args.vocab, (args.batch, 1), device=args.device)
    plus_one = {
        "input_ids": torch.cat([input_ids, extra_ids], dim=1),
        "attention_mask": torch.cat([attention_mask, torch.ones_like(extra_ids)], dim=1),
        "labels": torch.cat([labels, extra_ids], dim=1),
    }

    optimizers = {
        "base": torch.optim.AdamW(base.parameters(), lr=1e-5),
        "conditioned": torch.optim.AdamW(conditioned.parameters(), lr=1e-5),
    }
    train_inputs = {
        "base": {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels},
        "base_plus_one": plus_one,
        "conditioned": {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "labels": labels,
            "rewards": rewards,
        },
    }

    def train_step(name):
        model = conditioned if name == "conditioned" else base
        optimizer = optimizers["conditioned" if name == "conditioned" else "base"]
        model(**train_inputs[name]).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    prompt_ids = input_ids[:, -args.prompt_len :]
    prompt_mask = attention_mask[:, -args.prompt_len :]
    generation = dict(max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, do_sample=False, pad_token_id=0)

    def generate(name):
        if name == "base":
            base.generate(prompt_ids, attention_mask=prompt_mask, **generation)
        elif name == "conditioned":
            conditioned.generate(prompt_ids, attention_mask=prompt_mask, rewards=rewards, **generation)
        else:
            conditioned.generate(
                prompt_ids, attention_mask=prompt_mask, rewards=rewards, guidance_scale=2.0, **generation
            )

    base.train()
    conditioned.train()
    step_times = {"base": [], "base_plus_one": [], "conditioned": []}
    for repeat in range(args.repeats + 1):  # the first round warms up
        order = ["base", "base_plus_one", "conditioned"]
        for name in order if repeat % 2 == 0 else order[::-1]:
            elapsed = timed(train_step, name, args.device)
            if repeat > 0:
                step_times[name].append(elapsed)

    base.eval()
    conditioned.eval()
    generate_times = {"base": [], "conditioned": [], "guided": []}
    for repeat in range(args.repeats + 1):
        order = ["base", "conditioned", "guided"]
        for name in order if repeat % 2 == 0 else order[::-1]:
            elapsed = timed(generate, name, args.device)
            if repeat > 0:
                generate_times[name].append(elapsed)

    # torch.compile(fullgraph=True) of both forwards; the first call of each compiles (not timed)
    compiled = {
        "base": torch.compile(base.forward, fullgraph=True),
        "conditioned": torch.compile(conditioned.forward, fullgraph=True),
    }
    forward_inputs = {
        "base": {"input_ids": input_ids, "attention_mask": attention_mask},
        "conditioned": {"input_ids": input_ids, "attention_mask": attention_mask, "rewards": rewards},
    }

    @torch.no_grad()
    def compiled_forward(name):
        compiled[name](**forward_inputs[name])

    compile_seconds = {name: timed(compiled_forward, name, args.device) for name in compiled}
    with torch.no_grad():
        compiled_difference = (
            (
                compiled["conditioned"](**forward_inputs["conditioned"]).logits
                - conditioned(**forward_inputs["conditioned"]).logits
            )
            .abs()
            .max()
            .item()
        )
    compiled_times = {"base": [], "conditioned": []}
    for repeat in range(args.repeats):
        order = ["base", "conditioned"]
        for name in order if repeat % 2 == 0 else order[::-1]:
            compiled_times[name].append(timed(compiled_forward, name, args.device))

    floor = (args.seq_len + 1) / args.seq_len
    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    print(
        f"device={device_name} threads={torch.get_num_threads()} layers={args.layers} hidden={args.hidden} "
        f"vocab={args.vocab} batch={args.batch} T={args.seq_len} repeats={args.repeats}"
    )
    # Each repeat runs the contestants back to back, so per-repeat ratios cancel most of a busy machine's drift.
    step = {name: statistics.median(times) for name, times in step_times.items()}
    step_ratio = statistics.median(c / b for c, b in zip(step_times["conditioned"], step_times["base"], strict=True))
    plus_one_ratio = statistics.median(
        c / b for c, b in zip(step_times["conditioned"], step_times["base_plus_one"], strict=True)
    )
    tokens = args.batch * args.new_tokens
    gen = {name: tokens / statistics.median(times) for name, times in generate_times.items()}
    gen_ratio = statistics.median(
        b / c for c, b in zip(generate_times["conditioned"], generate_times["base"], strict=True)
    )
    print(
        f"train step (medians): base {step['base'] * 1e3:.1f} ms, base on T+1 tokens "
        f"{step['base_plus_one'] * 1e3:.1f} ms, conditioned {step['conditioned'] * 1e3:.1f} ms"
    )
    print(
        f"train step ratio conditioned/base: {step_ratio:.4f} = {step_ratio / floor:.4f} x the floor (T+1)/T = "
        f"{floor:.4f} (goal <= 1.03 x the floor)"
    )
    print(f"train step ratio conditioned/(base on T+1 tokens): {plus_one_ratio:.4f}")
    print(
        f"generation (medians, prompt {args.prompt_len}, {args.new_tokens} new tokens, KV cache): base "
        f"{gen['base']:.1f} tok/s, conditioned {gen['conditioned']:.1f} tok/s"
    )
    print(f"generation tokens/s ratio conditioned/base: {gen_ratio:.4f} (goal >= 0.97)")
    guided_ratio = statistics.median(
        g / c for g, c in zip(generate_times["guided"], generate_times["conditioned"], strict=True)
    )
    print(
        f"guided generation (guidance_scale=2): {gen['guided']:.1f} tok/s; time ratio guided/plain conditioned: "
        f"{guided_ratio:.4f} (two forward branches: about 2 is the floor on CPU)"
    )
    compiled_ratio = statistics.median(
        c / b for c, b in zip(compiled_times["conditioned"], compiled_times["base"], strict=True)
    )
    print(
        f"torch.compile(fullgraph=True) forward, no grad (medians): base {statistics.median(compiled_times['base']) * 1e3:.1f} "
        f"ms, conditioned {statistics.median(compiled_times['conditioned']) * 1e3:.1f} ms, ratio {compiled_ratio:.4f}; "
        f"largest logit difference to eager {compiled_difference:.1e}"
    )
    results = {
        "settings": {
            "device": device_name,
            "threads": torch.get_num_threads(),
            "layers": args.layers,
            "hidden": args.hidden,
            "vocab": args.vocab,
            "batch": args.batch,
            "seq_len": args.seq_len,
            "prompt_len": args.prompt_len,
            "new_tokens": args.new_tokens,
            "repeats": args.repeats,
            "seed": args.seed,
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "python": platform.python_version(),
            "note": args.note,
        },
        "train_step_seconds_per_repeat": step_times,
        "generation_seconds_per_repeat": generate_times,
        "compiled_forward_seconds_per_repeat": compiled_times,
        "compile_seconds": compile_seconds,
        "compiled_largest_logit_difference_to_eager": compiled_difference,
        "train_step_seconds": step,
        "generation_tokens_per_second": gen,
        "ratios": {
            "train_step_conditioned_over_base": step_ratio,
            "train_step_floor": floor,
            "train_step_conditioned_over_base_on_T_plus_1": plus_one_ratio,
            "generation_tokens_per_second_conditioned_over_base": gen_ratio,
            "generation_time_guided_over_plain": guided_ratio,
            "compiled_forward_conditioned_over_base": compiled_ratio,
        },
    }
    write_results(results, Path(args.output_dir))


GOALS = {
    "train_step_conditioned_over_base": ("<=", 1.034),
    "generation_tokens_per_second_conditioned_over_base": (">=", 0.97),
    "generation_time_guided_over_plain": ("<=", 2.0),
}


def write_results(results, output_dir):
    """Write the JSON and the page made from it: every number on the page comes from the JSON."""
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "reward_conditioning_speed.json").write_text(json.dumps(results, indent=2) + "\n")
    settings, ratios = results["settings"], results["ratios"]
    lines = [
        "# Reward conditioning: speed",
        "",
        "Written by `benchmarks/bench_reward_conditioning_speed.py` from `reward_conditioning_speed.json`; do not edit.",
        "",
        (
            f"Setting: {settings['device']}, {settings['threads']} thread(s), torch {settings['torch']}, transformers "
            f"{settings['transformers']}; a Llama-shaped model with {settings['layers']} layers, hidden size "
            f"{settings['hidden']}, vocabulary {settings['vocab']}; batch {settings['batch']} left-padded rows of "
            f"{settings['seq_len']} tokens for training, prompts of {settings['prompt_len']} tokens and "
            f"{settings['new_tokens']} new tokens (greedy, KV cache) for generation; medians of {settings['repeats']} "
            f"interleaved repeats, seed {settings['seed']}."
        ),
        "",
    ]
    if settings["note"]:
        lines += [f"Note: {settings['note']}", ""]
    lines += ["| ratio | value | goal |", "| --- | --- | --- |"]
    for name, value in ratios.items():
        goal = " ".join(map(str, GOALS[name])) if name in GOALS else ""
        lines.append(f"| {name} | {value:.4f} | {goal} |")
    lines += ["", "| train step (median) | seconds |", "| --- | --- |"]
    lines += [f"| {name} | {value:.4f} |" for name, value in results["train_step_seconds"].items()]
    lines += ["", "| generation (median) | tokens/s |", "| --- | --- |"]
    lines += [f"| {name} | {value:.1f} |" for name, value in results["generation_tokens_per_second"].items()]
    lines += ["", "| `torch.compile(fullgraph=True)` forward, no grad | median seconds | first call (compiles) |"]
    lines += ["| --- | --- | --- |"]
    lines += [
        f"| {name} | {statistics.median(times):.4f} | {results['compile_seconds'][name]:.1f} |"
        for name, times in results["compiled_forward_seconds_per_repeat"].items()
    ]
    lines += [
        "",
        (
            "The conditioned forward compiles as one graph; its logits differ from eager mode's by at most "
            f"{results['compiled_largest_logit_difference_to_eager']:.1e}."
        ),
    ]
    (output_dir / "reward_conditioning_speed.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
