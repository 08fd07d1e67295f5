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

"""Conformance tests for `PPOConfig(save_value_model=True)`, `critic_warmup_steps` and `predict_prompt_values`."""

import os
import tempfile
from concurrent.futures import Future
from pathlib import Path

import pytest
import torch
import transformers
from datasets import Dataset
from hypothesis import given, settings
from hypothesis import strategies as st
from packaging.version import Version
from safetensors.torch import load_file
from torch import nn
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    GPT2Config,
    GPT2Model,
    LlamaConfig,
    Qwen2Config,
    TrainerCallback,
)

from trl.experimental.ppo import PPOConfig, PPOTrainer, predict_prompt_values
from trl.experimental.utils import get_reward


ARCHITECTURES = ["gpt2", "qwen2", "llama"]
PROMPTS = ["The movie", "A terrible film", "I loved every", "Boring, slow", "The director", "One of the best"] * 2
WORDS = ["the", "movie", "was", "great", "terrible", "plot", "I", "loved", "boring", "film", "!", "acting"]


def tiny_config(architecture, num_labels=None):
    tokens = dict(vocab_size=320, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    if architecture == "gpt2":
        config = GPT2Config(n_positions=64, n_embd=32, n_layer=2, n_head=2, **tokens)
    else:
        config_class = Qwen2Config if architecture == "qwen2" else LlamaConfig
        config = config_class(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=1,
            max_position_embeddings=64,
            **tokens,
        )
    if num_labels is not None:
        config.num_labels = num_labels  # `from_config(cfg, num_labels=1)` raises a TypeError
    return config


def tiny_critic(architecture, seed, dtype=torch.float32):
    torch.manual_seed(seed)
    return AutoModelForSequenceClassification.from_config(tiny_config(architecture, num_labels=1)).to(dtype)


def tiny_policy(architecture, seed):
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(tiny_config(architecture))


def state(module):
    return {name: tensor.detach().clone() for name, tensor in module.state_dict().items()}


def assert_state_equal(module, expected):
    actual = module.state_dict()
    assert actual.keys() == expected.keys()
    for name, tensor in expected.items():
        assert actual[name].dtype == tensor.dtype, name
        assert torch.equal(actual[name], tensor), name


def reload_critic(path, dtype=torch.float32):
    return AutoModelForSequenceClassification.from_pretrained(path, dtype=dtype)


class CriticSnapshots(TrainerCallback):
    """Copies the critic's weights at the end of every step, before that step's checkpoint is written."""

    def __init__(self, critic):
        self.critic = critic
        self.by_step = {}

    def on_step_end(self, args, state, control, **kwargs):
        self.by_step[state.global_step] = {name: t.detach().clone() for name, t in self.critic.state_dict().items()}


def make_trainer(
    tokenizer,
    output_dir,
    *,
    policy_arch="gpt2",
    critic_arch="gpt2",
    critic_dtype=torch.float32,
    with_ref_model=True,
    peft_config=None,
    steps=2,
    callbacks=(),
    critic=None,
    **config_kwargs,
):
    config_kwargs = {"save_value_model": True, "save_strategy": "no", **config_kwargs}
    args = PPOConfig(
        output_dir=str(output_dir),
        bf16=False,
        gradient_checkpointing=False,
        num_sample_generations=0,
        report_to="none",
        disable_tqdm=True,
        response_length=3,
        per_device_train_batch_size=4,
        local_rollout_forward_batch_size=4,
        total_episodes=4 * steps,
        num_ppo_epochs=1,
        learning_rate=1e-3,  # large enough that a single step visibly changes a bf16 critic
        seed=0,
        **config_kwargs,
    )
    policy = tiny_policy(policy_arch, seed=0)
    dataset = Dataset.from_dict({"input_ids": [tokenizer(prompt)["input_ids"] for prompt in PROMPTS]})
    return PPOTrainer(
        args=args,
        processing_class=tokenizer,
        model=policy,
        ref_model=tiny_policy(policy_arch, seed=0) if with_ref_model else None,
        reward_model=tiny_critic("gpt2", seed=2),
        train_dataset=dataset,
        value_model=critic if critic is not None else tiny_critic(critic_arch, seed=1, dtype=critic_dtype),
        eval_dataset=dataset,
        peft_config=peft_config,
        callbacks=list(callbacks),
    )


def critic_of(trainer):
    return trainer.accelerator.unwrap_model(trainer.model).value_model


def policy_of(trainer):
    return trainer.accelerator.unwrap_model(trainer.model).policy


def train_with_snapshots(tokenizer, output_dir, **kwargs):
    critic = tiny_critic(kwargs.pop("critic_arch", "gpt2"), seed=1)
    snapshots = CriticSnapshots(critic)
    trainer = make_trainer(tokenizer, output_dir, critic=critic, callbacks=[snapshots], **kwargs)
    initial = state(critic)
    trainer.train()
    return trainer, snapshots.by_step, initial


@pytest.fixture(scope="module")
def trained(tiny_tokenizer, tmp_path_factory):
    """GPT-2 policy and critic, a checkpoint at every step with optimizer state, then `save_model`."""
    out = tmp_path_factory.mktemp("ppo-trained")
    trainer, snapshots, initial = train_with_snapshots(
        tiny_tokenizer, out, save_strategy="steps", save_steps=1, save_only_model=False
    )
    trainer.save_model(str(out / "final"))
    return trainer, snapshots, initial, out


@pytest.fixture(scope="module")
def trained_only_model(tiny_tokenizer, tmp_path_factory):
    """Qwen2 policy, Llama critic, no reference model given, checkpoints with `save_only_model=True`."""
    out = tmp_path_factory.mktemp("ppo-only-model")
    trainer, snapshots, initial = train_with_snapshots(
        tiny_tokenizer,
        out,
        policy_arch="qwen2",
        critic_arch="llama",
        with_ref_model=False,
        save_strategy="steps",
        save_steps=1,
        save_only_model=True,
    )
    return trainer, snapshots, initial, out


def test_saved_critic_round_trips_bit_identical(trained, tiny_tokenizer):
    trainer, _, initial, out = trained
    critic = critic_of(trainer)
    assert any(not torch.equal(critic.state_dict()[name], tensor) for name, tensor in initial.items()), (
        "training did not change the critic, so the round trip proves nothing"
    )
    reloaded = reload_critic(out / "final" / "value_model")
    assert_state_equal(reloaded, state(critic))
    assert reloaded.config.num_labels == 1
    assert reloaded.config.pad_token_id == tiny_tokenizer.pad_token_id
    critic.eval()
    assert predict_prompt_values(reloaded, tiny_tokenizer, PROMPTS) == predict_prompt_values(
        critic, tiny_tokenizer, PROMPTS
    )


def test_top_level_holds_only_the_policy(trained):
    trainer, _, _, out = trained
    saved_keys = load_file(out / "final" / "model.safetensors").keys()
    assert not any(key.startswith(("score", "value_model", "critic_backbone", "policy.")) for key in saved_keys)
    reloaded = AutoModelForCausalLM.from_pretrained(out / "final", dtype=torch.float32)
    assert_state_equal(reloaded, state(policy_of(trainer)))


def test_each_checkpoint_holds_the_critic_of_its_step(trained):
    _, snapshots, _, out = trained
    assert sorted(snapshots) == [1, 2]
    assert any(not torch.equal(snapshots[1][name], snapshots[2][name]) for name in snapshots[1])
    for step, snapshot in snapshots.items():
        assert_state_equal(reload_critic(out / f"checkpoint-{step}" / "value_model"), snapshot)
        assert (out / f"checkpoint-{step}" / "optimizer.pt").is_file()  # save_only_model=False


def test_checkpoints_with_save_only_model(trained_only_model):
    _, snapshots, initial, out = trained_only_model
    assert sorted(snapshots) == [1, 2]
    assert any(not torch.equal(snapshots[2][name], tensor) for name, tensor in initial.items())
    for step, snapshot in snapshots.items():
        checkpoint = out / f"checkpoint-{step}"
        assert not (checkpoint / "optimizer.pt").exists()
        reloaded = reload_critic(checkpoint / "value_model")
        assert type(reloaded).__name__ == "LlamaForSequenceClassification"
        assert_state_equal(reloaded, snapshot)
        assert type(AutoModelForCausalLM.from_pretrained(checkpoint)).__name__ == "Qwen2ForCausalLM"


def test_save_total_limit_rotates_whole_checkpoints(tiny_tokenizer, tmp_path):
    _, snapshots, _ = train_with_snapshots(
        tiny_tokenizer, tmp_path, steps=3, save_strategy="steps", save_steps=1, save_total_limit=1
    )
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("checkpoint-")) == ["checkpoint-3"]
    assert not list(tmp_path.glob("*/value_model.tmp")) and not list(tmp_path.glob("value_model*"))
    assert_state_equal(reload_critic(tmp_path / "checkpoint-3" / "value_model"), snapshots[3])


def test_off_saves_exactly_the_policy_files(trained, tmp_path):
    trainer, _, _, out = trained
    trainer.args.save_value_model = False
    try:
        trainer.save_model(str(tmp_path / "off"))
    finally:
        trainer.args.save_value_model = True
    on_files = {p.relative_to(out / "final") for p in (out / "final").rglob("*") if p.is_file()}
    off_files = {p.relative_to(tmp_path / "off") for p in (tmp_path / "off").rglob("*") if p.is_file()}
    assert not (tmp_path / "off" / "value_model").exists()
    assert off_files == {p for p in on_files if p.parts[0] != "value_model"}
    for relative in off_files - {Path("training_args.bin")}:  # the pickled args hold the flag itself
        assert (out / "final" / relative).read_bytes() == (tmp_path / "off" / relative).read_bytes(), relative


class RecordedUploads(list):
    """(folder, files) per upload, and in `contents` the bytes of its safetensors files at upload time."""


@pytest.fixture
def recorded_uploads(monkeypatch):
    """Replaces the Hub upload by a record of the files present in the uploaded folder at upload time."""
    uploads = RecordedUploads()

    def upload_folder(*, folder_path, **kwargs):
        files = {p.relative_to(folder_path).as_posix() for p in Path(folder_path).rglob("*") if p.is_file()}
        uploads.append((folder_path, files))
        contents.append({name: (Path(folder_path) / name).read_bytes() for name in files if "safetensors" in name})
        done = Future()  # what `run_as_future=True` returns, already finished
        done.set_result(None)
        return done

    contents = []
    uploads.contents = contents

    if Version(transformers.__version__) >= Version("5.0.0"):
        monkeypatch.setattr(transformers.trainer, "hf_api", lambda: type("Api", (), {"upload_folder": upload_folder}))
    else:
        monkeypatch.setattr(transformers.trainer, "upload_folder", upload_folder)
    return uploads


def test_push_uploads_the_critic_with_the_policy(trained, recorded_uploads, monkeypatch, tmp_path):
    trainer, _, _, out = trained
    monkeypatch.setattr(trainer, "hub_model_id", "local/ppo-critic")  # no repository creation, no network
    trainer.push_to_hub()
    monkeypatch.setattr(trainer.args, "push_to_hub", True)
    trainer.save_model(str(tmp_path / "elsewhere"))  # saves, then pushes the output folder
    assert len(recorded_uploads) == 2
    for folder, files in recorded_uploads:
        assert Path(folder) == out
        assert {"model.safetensors", "value_model/model.safetensors", "value_model/config.json"} <= files
    assert_state_equal(reload_critic(out / "value_model"), state(critic_of(trainer)))
    assert (tmp_path / "elsewhere" / "value_model" / "model.safetensors").is_file()


@pytest.mark.parametrize("hub_strategy", ["every_save", "checkpoint"])
def test_checkpoint_pushes_upload_the_critic_of_their_step(tiny_tokenizer, tmp_path, recorded_uploads, hub_strategy):
    trainer = make_trainer(tiny_tokenizer, tmp_path, save_strategy="steps", save_steps=1, hub_strategy=hub_strategy)
    trainer.args.push_to_hub = True  # set after construction: no repository creation, no network
    trainer.hub_model_id = "local/ppo-critic"
    trainer.push_in_progress = None
    trainer.train()
    pushes = [i for i, (folder, _) in enumerate(recorded_uploads) if Path(folder) == tmp_path]
    assert len(pushes) == 2  # one per checkpoint
    for step, index in enumerate(pushes, start=1):
        uploaded = recorded_uploads.contents[index]
        checkpoint = tmp_path / f"checkpoint-{step}"
        assert uploaded["model.safetensors"] == (checkpoint / "model.safetensors").read_bytes()
        assert uploaded["value_model/model.safetensors"] == (checkpoint / "value_model/model.safetensors").read_bytes()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("value_model.")]


def test_failed_critic_write_keeps_the_policy_and_the_previous_critic(trained, monkeypatch, tmp_path):
    trainer, _, _, _ = trained
    target = tmp_path / "save"
    trainer.save_model(str(target))  # an earlier, complete save into the same folder
    assert (target / "value_model" / "model.safetensors").is_file()

    def disk_full(save_directory, **kwargs):
        os.makedirs(save_directory, exist_ok=True)
        Path(save_directory, "model.safetensors").write_bytes(b"half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(critic_of(trainer), "save_pretrained", disk_full)
    with pytest.raises(OSError, match="No space left"):
        trainer.save_model(str(target))
    assert_state_equal(AutoModelForCausalLM.from_pretrained(target, dtype=torch.float32), state(policy_of(trainer)))
    # The earlier critic is swapped out only once a new one is complete: it is still there, whole
    assert sorted(p.name for p in target.iterdir() if "value_model" in p.name) == ["value_model"]
    assert_state_equal(reload_critic(target / "value_model"), state(critic_of(trainer)))


def test_saving_over_a_critic_never_leaves_the_folder_without_one(trained, monkeypatch, tmp_path):
    trainer, _, _, _ = trained
    target = tmp_path / "save"
    trainer.save_model(str(target))
    seen = []
    save_pretrained = critic_of(trainer).save_pretrained

    def observed(save_directory, **kwargs):
        seen.append(sorted(p.name for p in target.iterdir() if "value_model" in p.name))
        save_pretrained(save_directory, **kwargs)

    monkeypatch.setattr(critic_of(trainer), "save_pretrained", observed)
    trainer.save_model(str(target))
    assert seen == [["value_model"]]  # while the new critic is written, the old one is still in place
    assert sorted(p.name for p in target.iterdir() if "value_model" in p.name) == ["value_model"]
    assert_state_equal(reload_critic(target / "value_model"), state(critic_of(trainer)))


@settings(max_examples=4)
@given(
    policy_arch=st.sampled_from(ARCHITECTURES),
    critic_arch=st.sampled_from(ARCHITECTURES),
    dtype=st.sampled_from([torch.float32, torch.bfloat16]),
)
def test_round_trip_across_architectures_and_dtypes(tiny_tokenizer, policy_arch, critic_arch, dtype):
    with tempfile.TemporaryDirectory() as out:
        trainer = make_trainer(
            tiny_tokenizer, out, policy_arch=policy_arch, critic_arch=critic_arch, critic_dtype=dtype, steps=1
        )
        initial = state(critic_of(trainer))
        trainer.train()
        trainer.save_model(out)
        trained_state = state(critic_of(trainer))
        assert any(not torch.equal(trained_state[name], tensor) for name, tensor in initial.items())
        reloaded = reload_critic(Path(out) / "value_model", dtype=dtype)
        assert all(tensor.dtype == dtype for tensor in reloaded.state_dict().values())
        assert_state_equal(reloaded, trained_state)


def test_peft_policy_saves_adapter_and_full_critic(tiny_tokenizer, tmp_path):
    from peft import LoraConfig

    peft_config = LoraConfig(r=4, lora_alpha=8, target_modules=["c_attn"], fan_in_fan_out=True)
    trainer = make_trainer(tiny_tokenizer, tmp_path, with_ref_model=False, peft_config=peft_config, steps=1)
    trainer.train()
    trainer.save_model(str(tmp_path / "final"))
    top_level = {p.name for p in (tmp_path / "final").iterdir()}
    assert "adapter_model.safetensors" in top_level
    assert "model.safetensors" not in top_level
    assert not any("score" in key for key in load_file(tmp_path / "final" / "adapter_model.safetensors"))
    assert_state_equal(reload_critic(tmp_path / "final" / "value_model"), state(critic_of(trainer)))


class NotAPreTrainedCritic(nn.Module):
    """Works as a PPO critic (`base_model_prefix` and `score`), but cannot be saved with `save_pretrained`."""

    base_model_prefix = "backbone"

    def __init__(self):
        super().__init__()
        self.backbone = GPT2Model(tiny_config("gpt2"))
        self.score = nn.Linear(32, 1, bias=False)


def test_unsaveable_critic_is_rejected_at_construction(tiny_tokenizer, tmp_path):
    with pytest.raises(ValueError, match="PreTrainedModel"):
        make_trainer(tiny_tokenizer, tmp_path, critic=NotAPreTrainedCritic())
    make_trainer(tiny_tokenizer, tmp_path, critic=NotAPreTrainedCritic(), save_value_model=False)  # upstream: fine

    torch.manual_seed(0)
    two_labels = AutoModelForSequenceClassification.from_config(tiny_config("gpt2", num_labels=2))
    with pytest.raises(ValueError, match="num_labels=1"):
        make_trainer(tiny_tokenizer, tmp_path, critic=two_labels)


def test_missing_pad_token_id_is_taken_from_the_tokenizer(tiny_tokenizer, tmp_path):
    critic = tiny_critic("gpt2", seed=1)
    critic.config.pad_token_id = None
    make_trainer(tiny_tokenizer, tmp_path, critic=critic)
    assert critic.config.pad_token_id == tiny_tokenizer.pad_token_id


@given(
    architecture=st.sampled_from(ARCHITECTURES),
    prompts=st.lists(st.lists(st.sampled_from(WORDS), min_size=1, max_size=8).map(" ".join), min_size=1, max_size=6),
    batch_size=st.integers(1, 4),
)
def test_predict_prompt_values_matches_a_manual_forward(tiny_tokenizer, architecture, prompts, batch_size):
    critic = tiny_critic(architecture, seed=3).eval()
    values = predict_prompt_values(critic, tiny_tokenizer, prompts, batch_size=batch_size)
    assert len(values) == len(prompts)
    for prompt, value in zip(prompts, values, strict=True):
        input_ids = torch.tensor([tiny_tokenizer(prompt)["input_ids"]])
        with torch.no_grad():
            # Unpadded, so the default positions are PPO's; the classification head pools the last token
            expected = critic(input_ids=input_ids).logits[0, 0].item()
            # PPO's own computation: the value at the last prompt token of a query followed by a response
            query_response = torch.cat([input_ids, torch.tensor([[5]])], dim=1)
            full_value, _, _ = get_reward(critic, query_response, tiny_tokenizer.pad_token_id, input_ids.shape[1])
        assert value == pytest.approx(expected, abs=1e-5)
        assert value == pytest.approx(full_value[0, input_ids.shape[1] - 1, 0].item(), abs=1e-5)


def test_predict_prompt_values_rejects_bad_input(tiny_tokenizer):
    critic = tiny_critic("gpt2", seed=3)
    with pytest.raises(TypeError, match="list of strings"):
        predict_prompt_values(critic, tiny_tokenizer, "a single prompt")
    with pytest.raises(ValueError, match="batch_size"):
        predict_prompt_values(critic, tiny_tokenizer, ["a prompt"], batch_size=0)


class PolicySnapshots(TrainerCallback):
    """Copies the policy's weights at the end of every step."""

    def __init__(self, policy):
        self.policy = policy
        self.by_step = {}

    def on_step_end(self, args, state, control, **kwargs):
        self.by_step[state.global_step] = {name: t.detach().clone() for name, t in self.policy.state_dict().items()}


def test_critic_warmup_trains_only_the_critic_for_its_updates(tiny_tokenizer, tmp_path):
    critic = tiny_critic("gpt2", seed=1)
    critic_snapshots = CriticSnapshots(critic)
    trainer = make_trainer(
        tiny_tokenizer, tmp_path, steps=3, critic=critic, callbacks=[critic_snapshots], critic_warmup_steps=2
    )
    policy_snapshots = PolicySnapshots(policy_of(trainer))
    trainer.add_callback(policy_snapshots)
    initial_policy, initial_critic = state(policy_of(trainer)), state(critic)
    trainer.train()

    def changed(before, after):
        return any(not torch.equal(before[name], after[name]) for name in before)

    for step in (1, 2):
        assert not changed(initial_policy, policy_snapshots.by_step[step]), step
    assert changed(initial_policy, policy_snapshots.by_step[3])
    assert changed(initial_critic, critic_snapshots.by_step[1])
    assert changed(critic_snapshots.by_step[1], critic_snapshots.by_step[2])
    # After the warm-up the policy has one Adam step behind it, the critic three
    steps = {
        id(p): trainer.optimizer.state[p]["step"]
        for p in trainer.optimizer.state
        if "step" in trainer.optimizer.state[p]
    }
    assert {int(steps[id(p)]) for p in policy_of(trainer).parameters()} == {1}
    assert {int(steps[id(p)]) for p in critic.parameters()} == {3}


def test_negative_critic_warmup_is_rejected(tiny_tokenizer, tmp_path):
    with pytest.raises(ValueError, match="critic_warmup_steps"):
        make_trainer(tiny_tokenizer, tmp_path, critic_warmup_steps=-1)


def test_predict_prompt_values_rejects_a_model_that_is_not_a_critic(tiny_tokenizer):
    torch.manual_seed(0)
    two_labels = AutoModelForSequenceClassification.from_config(tiny_config("gpt2", num_labels=2))
    with pytest.raises(ValueError, match="num_labels"):
        predict_prompt_values(two_labels, tiny_tokenizer, ["a prompt"])


def test_predict_prompt_values_rejects_a_prompt_longer_than_the_critic_positions(tiny_tokenizer):
    critic = tiny_critic("gpt2", seed=3)  # 64 positions
    fits = " ".join(["the"] * 8)
    too_long = " ".join(["the movie was great"] * 40)
    assert len(tiny_tokenizer(too_long)["input_ids"]) > 64
    with pytest.raises(ValueError, match=r"Prompt 1 has \d+ tokens, but the value model has only 64 positions"):
        predict_prompt_values(critic, tiny_tokenizer, [fits, too_long])
