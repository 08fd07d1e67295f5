# Copyright 2020-2026 The HuggingFace Team. All rights reserved.
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.

"""
PPO saving under DDP (2 CPU processes, gloo) and DeepSpeed ZeRO-2/3 (`DS_ACCELERATOR=cpu`), with the critic kept.

Each test launches this file as a worker in a subprocess (`torchrun` or `accelerate launch`). The worker trains two
steps with a checkpoint at each, saves, and writes the weights it expects (read from the modules directly, gathered
with `deepspeed.zero.GatheredParameters` under ZeRO-3) to `expected.pt`; the test compares the saved files with them.
"""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


pytestmark = pytest.mark.distributed

PROMPTS = ["The movie", "A terrible film", "I loved every", "Boring, slow", "The director", "One of the best"] * 4


def run_worker(launcher, out, tiny_tokenizer, **env):
    tiny_tokenizer.save_pretrained(out / "tokenizer")
    env = {**os.environ, "OMP_NUM_THREADS": "1", **env}
    return subprocess.run(
        [sys.executable, "-m", *launcher, __file__, str(out)],
        env=env,
        check=False,
        capture_output=True,
        text=True,
        timeout=540,
    )


def check_saved(out):
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    expected = torch.load(out / "expected.pt")
    assert any(not torch.equal(expected["critic"][k], v) for k, v in expected["initial_critic"].items())
    for folder in (out / "final", out / "checkpoint-2"):  # no training happens after the last checkpoint
        critic = AutoModelForSequenceClassification.from_pretrained(folder / "value_model", dtype=torch.float32)
        policy = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
        for model, reference in ((critic, expected["critic"]), (policy, expected["policy"])):
            state = model.state_dict()
            assert state.keys() == reference.keys()
            for name, tensor in reference.items():
                assert torch.equal(state[name], tensor), (folder, name)
    assert (out / "checkpoint-1" / "value_model" / "model.safetensors").is_file()
    config = json.loads((out / "final" / "value_model" / "config.json").read_text())
    assert len(config["id2label"]) == 1  # num_labels=1
    assert config["pad_token_id"] == 0


def test_ddp_two_processes_save_policy_and_critic(tiny_tokenizer, tmp_path):
    result = run_worker(
        ["torch.distributed.run", "--nproc_per_node", "2"], tmp_path, tiny_tokenizer, ACCELERATE_USE_CPU="1"
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-8000:]
    check_saved(tmp_path)


def test_ddp_two_processes_resume_where_the_uninterrupted_run_ends(tiny_tokenizer, tmp_path):
    result = run_worker(
        ["torch.distributed.run", "--nproc_per_node", "2"],
        tmp_path,
        tiny_tokenizer,
        ACCELERATE_USE_CPU="1",
        PPO_WORKER="resume",
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-8000:]
    measured = json.loads((tmp_path / "resume.json").read_text())
    assert measured["trained"] > 1e-3
    assert measured["resumed"] < 1e-4, measured
    # Each process restored its own RNG state
    assert {p.name for p in (tmp_path / "first" / "checkpoint-4").glob("rng_state*")} == {
        "rng_state_0.pth",
        "rng_state_1.pth",
    }


def deepspeed_launcher(tmp_path, stage, gather):
    if importlib.util.find_spec("deepspeed") is None:
        pytest.skip("deepspeed is not installed")
    config = {
        "zero_optimization": {"stage": stage, "stage3_gather_16bit_weights_on_model_save": gather},
        "train_micro_batch_size_per_gpu": "auto",
        "gradient_accumulation_steps": "auto",
        "bf16": {"enabled": False},
        "fp16": {"enabled": False},
    }
    (tmp_path / "ds.json").write_text(json.dumps(config))
    return [
        "accelerate.commands.launch",
        *("--num_processes", "1", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"),
        *("--use_deepspeed", "--deepspeed_config_file", str(tmp_path / "ds.json")),
    ]


@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_saves_policy_and_critic(tiny_tokenizer, tmp_path, stage):
    result = run_worker(
        deepspeed_launcher(tmp_path, stage, gather=True), tmp_path, tiny_tokenizer, DS_ACCELERATOR="cpu"
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-8000:]
    check_saved(tmp_path)


def test_deepspeed_zero3_resumes_where_the_uninterrupted_run_ends(tiny_tokenizer, tmp_path):
    launcher = deepspeed_launcher(tmp_path, stage=3, gather=True)
    result = run_worker(launcher, tmp_path, tiny_tokenizer, DS_ACCELERATOR="cpu", PPO_WORKER="resume")
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-8000:]
    measured = json.loads((tmp_path / "resume.json").read_text())
    assert measured["trained"] > 1e-3
    assert measured["resumed"] < 1e-4, measured
    assert list((tmp_path / "first" / "checkpoint-4").glob("global_step*"))  # the engine's own checkpoint


def test_deepspeed_zero3_without_gather_fails_at_construction(tiny_tokenizer, tmp_path):
    launcher = deepspeed_launcher(tmp_path, stage=3, gather=False)
    result = run_worker(launcher, tmp_path, tiny_tokenizer, DS_ACCELERATOR="cpu")
    assert result.returncode != 0
    assert "ValueError: DeepSpeed ZeRO-3 can save checkpoints" in result.stderr, result.stderr[-8000:]
    assert "===training policy===" not in result.stdout
    assert not list(tmp_path.glob("checkpoint-*"))


def tiny(model_class, seed, num_labels=None):
    import torch
    from transformers import GPT2Config

    config = GPT2Config(vocab_size=320, n_positions=64, n_embd=32, n_layer=2, n_head=2, pad_token_id=0)
    if num_labels is not None:
        config.num_labels = num_labels
    torch.manual_seed(seed)
    return model_class.from_config(config)


def tokenizer_and_dataset(out):
    from datasets import Dataset
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(out / "tokenizer", padding_side="left")
    return tokenizer, Dataset.from_dict({"input_ids": [tokenizer(prompt)["input_ids"] for prompt in PROMPTS]})


def ppo_config(output_dir, **kwargs):
    """The workers' PPOConfig: CPU settings, a checkpoint every `save_steps` updates, the critic kept."""
    from trl.experimental.ppo import PPOConfig

    return PPOConfig(
        output_dir=str(output_dir),
        bf16=False,
        gradient_checkpointing=False,
        num_sample_generations=0,
        report_to="none",
        disable_tqdm=True,
        local_rollout_forward_batch_size=4,
        learning_rate=1e-3,
        save_strategy="steps",
        save_value_model=True,
        **kwargs,
    )


def resume_worker(out):
    """Trains 6 updates with a checkpoint at 4, resumes a new trainer from it, and compares the final weights."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    from trl.experimental.ppo import PPOTrainer

    tokenizer, dataset = tokenizer_and_dataset(out)

    def trainer(output_dir):
        args = ppo_config(
            output_dir,
            response_length=4,
            per_device_train_batch_size=2,
            gradient_accumulation_steps=2,
            # 6 updates of 4 prompts per process; with 2 processes, 3 updates per epoch of 24 prompts
            total_episodes=4 * int(os.environ.get("WORLD_SIZE", "1")) * 6,
            num_ppo_epochs=2,
            save_steps=4,
        )
        return PPOTrainer(
            args=args,
            processing_class=tokenizer,
            model=tiny(AutoModelForCausalLM, seed=0),
            ref_model=tiny(AutoModelForCausalLM, seed=0),
            reward_model=tiny(AutoModelForSequenceClassification, seed=2, num_labels=1),
            train_dataset=dataset,
            value_model=tiny(AutoModelForSequenceClassification, seed=1, num_labels=1),
        )

    def weights(trainer):
        wrapper = trainer.accelerator.unwrap_model(trainer.model)
        if trainer.is_deepspeed_enabled and trainer.accelerator.deepspeed_config["zero_optimization"]["stage"] == 3:
            import deepspeed

            with deepspeed.zero.GatheredParameters(list(wrapper.parameters())):
                return {k: v.detach().clone() for k, v in wrapper.state_dict().items()}
        return {k: v.detach().clone() for k, v in wrapper.state_dict().items()}

    first = trainer(out / "first")
    initial = weights(first)
    first.train()
    resumed = trainer(out / "resumed")
    resumed.train(resume_from_checkpoint=str(out / "first" / "checkpoint-4"))
    final, resumed_final = weights(first), weights(resumed)
    if first.accelerator.is_main_process:
        measured = {
            "trained": max((final[k] - initial[k]).abs().max().item() for k in final),
            "resumed": max((final[k] - resumed_final[k]).abs().max().item() for k in final),
        }
        (out / "resume.json").write_text(json.dumps(measured))


def worker(out):
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    from trl.experimental.ppo import PPOTrainer

    tokenizer, dataset = tokenizer_and_dataset(out)
    args = ppo_config(
        out,
        response_length=3,
        per_device_train_batch_size=4,
        total_episodes=8 * int(os.environ.get("WORLD_SIZE", "1")),
        num_ppo_epochs=1,
        save_steps=1,
    )
    critic = tiny(AutoModelForSequenceClassification, seed=1, num_labels=1)
    initial_critic = {name: tensor.clone() for name, tensor in critic.state_dict().items()}
    trainer = PPOTrainer(
        args=args,
        processing_class=tokenizer,
        model=tiny(AutoModelForCausalLM, seed=0),
        ref_model=tiny(AutoModelForCausalLM, seed=0),  # ZeRO-3 cannot copy the policy itself
        reward_model=tiny(AutoModelForSequenceClassification, seed=2, num_labels=1),
        train_dataset=dataset,
        value_model=critic,
        eval_dataset=dataset,
    )
    trainer.train()
    trainer.save_model(str(out / "final"))

    # The expected weights, read from the modules themselves rather than through the code under test
    wrapper = trainer.accelerator.unwrap_model(trainer.model)
    if trainer.is_deepspeed_enabled and trainer.accelerator.deepspeed_config["zero_optimization"]["stage"] == 3:
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(wrapper.parameters())):
            expected = {
                "policy": {k: v.clone() for k, v in wrapper.policy.state_dict().items()},
                "critic": {k: v.clone() for k, v in wrapper.value_model.state_dict().items()},
            }
    else:
        expected = {
            "policy": {k: v.clone() for k, v in wrapper.policy.state_dict().items()},
            "critic": {k: v.clone() for k, v in wrapper.value_model.state_dict().items()},
        }
    if trainer.accelerator.is_main_process:
        torch.save({**expected, "initial_critic": initial_critic}, out / "expected.pt")


if __name__ == "__main__":
    if os.environ.get("PPO_WORKER") == "resume":
        resume_worker(Path(sys.argv[1]))
    else:
        worker(Path(sys.argv[1]))
