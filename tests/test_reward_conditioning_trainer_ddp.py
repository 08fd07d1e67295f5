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

"""`RewardConditionedTrainer` under `accelerate launch` with two CPU processes (DDP on gloo).

`accelerate launch --cpu --num_processes 2` starts a single process unless MPI is installed, so the test launches
with `--multi_gpu` (torchrun under the hood) and the script asks for the CPU with `use_cpu=True`: each process then
joins a gloo process group (`DistributedType.MULTI_CPU`).
"""

import json
import os
import socket
import subprocess
import sys
import textwrap

import pytest
import torch


pytestmark = pytest.mark.distributed

SCRIPT = textwrap.dedent(
    """
    import json
    import os
    import sys

    import torch
    from datasets import Dataset

    from trl.experimental.reward_conditioning import RewardConditionedConfig, RewardConditionedTrainer

    model_dir, output_dir = sys.argv[1], sys.argv[2]
    prompts = ["This movie was", "The acting", "I think the plot", "Not worth"]
    completions = [" wonderful and great.", " terrible, awful.", " moved me.", " boring and slow."]
    dataset = Dataset.from_dict(
        {
            "prompt": prompts * 4,
            "completion": completions * 4,
            "reward": [[float(i % 4), float(i % 3)] for i in range(16)],
        }
    )
    args = RewardConditionedConfig(
        output_dir=output_dir, use_cpu=True, bf16=False, gradient_checkpointing=False, report_to="none", disable_tqdm=True,
        save_strategy="no", logging_steps=1, per_device_train_batch_size=2, gradient_accumulation_steps=2,
        max_steps=4, learning_rate=1e-2, max_length=32, reward_dropout=0.2, reward_position="before_completion",
    )
    # A path: each process loads the base and builds the reward head, seeded by `args.seed`
    trainer = RewardConditionedTrainer(model_dir, args, train_dataset=dataset)
    head = trainer.model.reward_head.linear.weight.detach().clone()
    trainer.train()
    trainer.save_model(output_dir)
    state = trainer.accelerator.state
    report = {
        "num_processes": state.num_processes,
        "distributed_type": str(state.distributed_type),
        "backend": state.backend,
        "losses": [log["loss"] for log in trainer.state.log_history if "loss" in log],
        "head_changed": not torch.equal(head, trainer.model.reward_head.linear.weight.detach()),
        "head": trainer.model.reward_head.linear.weight.detach().tolist(),
    }
    with open(os.path.join(output_dir, f"rank{state.process_index}.json"), "w") as f:
        json.dump(report, f)
    """
)


def test_two_process_ddp_trains_and_saves(tiny_causal_lm_path, tiny_tokenizer, tmp_path):
    from trl.experimental.reward_conditioning import RewardConditionedCausalLM

    script = tmp_path / "train.py"
    script.write_text(SCRIPT)
    output_dir = tmp_path / "out"
    with socket.socket() as probe:  # a free port: accelerate 1.4 cannot pick one itself
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"]
    command += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    command += ["--main_process_port", str(port)]
    command += [str(script), tiny_causal_lm_path, str(output_dir)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TRL_EXPERIMENTAL_SILENCE": "1"}
    result = subprocess.run(command, check=False, env=env, capture_output=True, text=True, timeout=540)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    reports = [json.loads((output_dir / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    for report in reports:
        assert report["num_processes"] == 2
        assert report["backend"] == "gloo"
        assert report["distributed_type"].endswith("MULTI_CPU")
        assert report["head_changed"]
        assert len(report["losses"]) == 4
    # DDP keeps the replicas identical
    assert reports[0]["head"] == reports[1]["head"]

    loaded = RewardConditionedCausalLM.from_pretrained(output_dir)
    assert loaded.config.num_rewards == 2
    assert loaded.config.reward_position == "before_completion"
    assert loaded.config.use_null_reward
    rewards = torch.tensor([[float(i % 4), float(i % 3)] for i in range(16)], dtype=torch.float64)
    assert loaded.config.reward_mean == pytest.approx(rewards.mean(0).tolist())
    assert loaded.config.reward_std == pytest.approx(rewards.std(0, unbiased=False).tolist())
    torch.testing.assert_close(loaded.reward_head.linear.weight, torch.tensor(reports[0]["head"]))
    input_ids = tiny_tokenizer(["This movie was great"], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        logits = loaded(input_ids, rewards=torch.tensor([[3.0, 2.0]]), prompt_lengths=torch.tensor([3])).logits
    assert torch.isfinite(logits).all()
