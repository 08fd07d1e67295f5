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
`PPOTrainer.train(resume_from_checkpoint=...)`: a run resumed at update 6 of 12 ends where the uninterrupted run ends,
refusals of checkpoints that cannot resume (another seed or dataset, damaged weights), half-written checkpoints and
saves interrupted or failing on the way, warm starts and construction errors.

The tolerance: a correct resume lands within float noise of the uninterrupted run, while a run that misses any one of
the optimizer, the scheduler, the RNG states or the data position ends about 1e-3 away (see
`benchmarks/bench_ppo_resume.py` for the measured figures).
"""

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, GPT2Config, GPT2Model

from trl.experimental.ppo import PPOConfig, PPOTrainer


WORDS = ["The movie", "A terrible film", "I loved every", "Boring, slow", "The director", "One of the best", "Not"]
PROMPTS = [f"{a} {b}" for a in WORDS for b in WORDS][:20]  # 20 rows: 5 updates per epoch at batch size 4
OTHER_PROMPTS = [f"{b} {a}" for a in WORDS for b in WORDS][:20]
UPDATES, SAVE_AT = 12, 6
TOLERANCE = 1e-4


def tiny(model_class, seed, num_labels=None):
    config = GPT2Config(
        vocab_size=320, n_positions=64, n_embd=32, n_layer=2, n_head=2, pad_token_id=0, bos_token_id=1, eos_token_id=2
    )
    if num_labels is not None:
        config.num_labels = num_labels  # `from_config(cfg, num_labels=1)` raises a TypeError
    torch.manual_seed(seed)
    return model_class.from_config(config)


def make_trainer(
    tokenizer,
    output_dir,
    *,
    rows=20,
    prompts=PROMPTS,
    policy=None,
    critic=None,
    updates=UPDATES,
    eval_dataset=None,
    **config_kwargs,
):
    config_kwargs = {
        "num_sample_generations": 0,
        "save_value_model": True,
        "save_strategy": "steps",
        "save_steps": SAVE_AT,
        "per_device_train_batch_size": 2,
        "gradient_accumulation_steps": 2,
        "seed": 0,
        **config_kwargs,
    }
    batch_size = config_kwargs["per_device_train_batch_size"] * config_kwargs["gradient_accumulation_steps"]
    args = PPOConfig(
        output_dir=str(output_dir),
        bf16=False,
        gradient_checkpointing=False,
        report_to="none",
        disable_tqdm=True,
        logging_steps=1,
        response_length=4,
        local_rollout_forward_batch_size=4,
        total_episodes=updates * batch_size,
        num_ppo_epochs=2,
        learning_rate=1e-3,
        **config_kwargs,
    )
    dataset = Dataset.from_dict({"input_ids": [tokenizer(prompt)["input_ids"] for prompt in prompts[:rows]]})
    return PPOTrainer(
        args=args,
        processing_class=tokenizer,
        model=policy if policy is not None else tiny(AutoModelForCausalLM, seed=0),
        ref_model=tiny(AutoModelForCausalLM, seed=0),
        reward_model=tiny(AutoModelForSequenceClassification, seed=2, num_labels=1),
        train_dataset=dataset,
        value_model=critic if critic is not None else tiny(AutoModelForSequenceClassification, seed=1, num_labels=1),
        eval_dataset=eval_dataset,
    )


def weights(trainer):
    wrapper = trainer.accelerator.unwrap_model(trainer.model)
    return {
        **{f"policy.{k}": v.detach().clone() for k, v in wrapper.policy.state_dict().items()},
        **{f"critic.{k}": v.detach().clone() for k, v in wrapper.value_model.state_dict().items()},
    }


def max_difference(a, b):
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


def scores(log_history):
    return {entry["episode"]: entry["objective/scores"] for entry in log_history if "objective/scores" in entry}


@pytest.fixture(scope="module")
def uninterrupted(tiny_tokenizer, tmp_path_factory):
    out = tmp_path_factory.mktemp("ppo-uninterrupted")
    trainer = make_trainer(tiny_tokenizer, out)
    initial = weights(trainer)
    trainer.train()
    return out, initial, weights(trainer), trainer.state


def test_resumed_run_ends_where_the_uninterrupted_run_ends(uninterrupted, tiny_tokenizer, tmp_path):
    out, initial, final, final_state = uninterrupted
    assert max_difference(initial, final) > 100 * TOLERANCE  # the run trains

    shutil.copytree(out / f"checkpoint-{SAVE_AT}", tmp_path / f"checkpoint-{SAVE_AT}")
    trainer = make_trainer(tiny_tokenizer, tmp_path)
    trainer.train(resume_from_checkpoint=True)
    difference = max_difference(weights(trainer), final)
    assert difference < TOLERANCE, f"resumed run ends {difference:.3g} from the uninterrupted run"
    assert trainer.state.global_step == final_state.global_step == UPDATES
    assert trainer.state.episode == final_state.episode
    # The log history holds the first run's updates, then the resumed ones, with the same rewards
    assert [entry["episode"] for entry in trainer.state.log_history] == [
        entry["episode"] for entry in final_state.log_history
    ]
    resumed, reference = scores(trainer.state.log_history), scores(final_state.log_history)
    assert resumed == pytest.approx(reference, abs=TOLERANCE)
    # ... and its last checkpoint is the uninterrupted run's
    assert json.loads((tmp_path / f"checkpoint-{UPDATES}" / "trainer_state.json").read_text())["global_step"] == 12


def test_warm_start_from_weights_only_is_a_new_run(uninterrupted, tiny_tokenizer, tmp_path):
    """A new run whose policy and critic start from a checkpoint's weights, with a fresh optimizer and schedule."""
    out, _, final, _ = uninterrupted
    checkpoint = out / f"checkpoint-{SAVE_AT}"
    policy = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32)
    critic = AutoModelForSequenceClassification.from_pretrained(checkpoint / "value_model", dtype=torch.float32)
    trainer = make_trainer(tiny_tokenizer, tmp_path, policy=policy, critic=critic, updates=UPDATES - SAVE_AT)
    assert max_difference(weights(trainer), weights_of_checkpoint(checkpoint)) == 0
    trainer.train()
    assert trainer.state.global_step == UPDATES - SAVE_AT  # its own counters, from 0
    # Not a resume: it ends far from the uninterrupted run, which the resume test's tolerance tells apart
    assert max_difference(weights(trainer), final) > 10 * TOLERANCE


def weights_of_checkpoint(checkpoint):
    policy = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32)
    critic = AutoModelForSequenceClassification.from_pretrained(checkpoint / "value_model", dtype=torch.float32)
    return {
        **{f"policy.{k}": v for k, v in policy.state_dict().items()},
        **{f"critic.{k}": v for k, v in critic.state_dict().items()},
    }


def test_resume_refuses_a_checkpoint_without_critic(uninterrupted, tiny_tokenizer, tmp_path):
    out, _, _, _ = uninterrupted
    checkpoint = tmp_path / "checkpoint-6"
    shutil.copytree(out / "checkpoint-6", checkpoint)
    shutil.rmtree(checkpoint / "value_model")  # as saved with `save_value_model=False`
    trainer = make_trainer(tiny_tokenizer, tmp_path / "run")
    before = weights(trainer)
    with pytest.raises(ValueError, match=r"value_model/.*save_value_model=True"):
        trainer.train(resume_from_checkpoint=str(checkpoint))
    assert max_difference(weights(trainer), before) == 0  # refused before anything was loaded or trained
    assert trainer.state.global_step == 0


def test_resume_refuses_a_checkpoint_without_optimizer(tiny_tokenizer, tmp_path):
    make_trainer(tiny_tokenizer, tmp_path, updates=2, save_steps=1, save_only_model=True).train()
    assert not (tmp_path / "checkpoint-1" / "optimizer.pt").exists()
    trainer = make_trainer(tiny_tokenizer, tmp_path, updates=2, save_steps=1)
    with pytest.raises(ValueError, match=r"optimizer state.*save_only_model=True"):
        trainer.train(resume_from_checkpoint=True)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"per_device_train_batch_size": 4, "gradient_accumulation_steps": 1, "rows": 20}, None),
        ({"per_device_train_batch_size": 4, "rows": 20}, "batch size"),
        ({"rows": 16}, "updates per epoch"),
    ],
)
def test_resume_refuses_another_batch_or_dataset_size(uninterrupted, tiny_tokenizer, tmp_path, change, message):
    out, _, _, _ = uninterrupted
    trainer = make_trainer(tiny_tokenizer, tmp_path, **change)
    if message is None:  # the same batch of 4, made of one micro-batch instead of two: still the same data order
        trainer.train(resume_from_checkpoint=str(out / "checkpoint-6"))
        return
    with pytest.raises(ValueError, match=message):
        trainer.train(resume_from_checkpoint=str(out / "checkpoint-6"))


def test_resume_true_skips_a_half_written_checkpoint(uninterrupted, tiny_tokenizer, tmp_path, monkeypatch):
    out, _, _, _ = uninterrupted
    shutil.copytree(out / "checkpoint-6", tmp_path / "checkpoint-6")
    # checkpoint-9 was being written when the run died: the critic write failed, so no trainer state was written
    trainer = make_trainer(tiny_tokenizer, tmp_path / "crashed", updates=9, save_steps=3)
    critic = trainer.accelerator.unwrap_model(trainer.model).value_model
    calls = []

    def fail_at_the_third_save(save_directory, **kwargs):
        calls.append(save_directory)
        if len(calls) == 3:
            raise OSError(28, "No space left on device")
        return type(critic).save_pretrained(critic, save_directory, **kwargs)

    monkeypatch.setattr(critic, "save_pretrained", fail_at_the_third_save)
    with pytest.raises(OSError, match="No space left"):
        trainer.train()
    half_written = tmp_path / "crashed" / "checkpoint-9"
    assert (half_written / "model.safetensors").is_file()
    assert not (half_written / "trainer_state.json").exists()
    shutil.copytree(half_written, tmp_path / "checkpoint-9")

    resumed = make_trainer(tiny_tokenizer, tmp_path)
    with pytest.raises(ValueError, match="not a complete checkpoint"):
        resumed.train(resume_from_checkpoint=str(tmp_path / "checkpoint-9"))
    resumed = make_trainer(tiny_tokenizer, tmp_path)
    loaded = []
    monkeypatch.setattr(resumed, "_load_rng_state", lambda checkpoint: loaded.append(checkpoint))
    monkeypatch.setattr(resumed, "_save_checkpoint", lambda *args, **kwargs: None)
    monkeypatch.setattr(resumed.args, "num_total_batches", SAVE_AT)  # stop right after loading
    resumed.train(resume_from_checkpoint=True)
    assert loaded == [str(tmp_path / "checkpoint-6")]


def test_resume_true_without_any_complete_checkpoint_is_refused(tiny_tokenizer, tmp_path):
    (tmp_path / "checkpoint-3").mkdir()  # half-written
    with pytest.raises(ValueError, match="no complete checkpoint"):
        make_trainer(tiny_tokenizer, tmp_path).train(resume_from_checkpoint=True)


@pytest.mark.parametrize(("rows", "message"), [(0, "empty"), (3, "3 rows.*batch_size.* = 4")])
def test_too_small_dataset_is_rejected_at_construction(tiny_tokenizer, tmp_path, rows, message):
    with pytest.raises(ValueError, match=message):
        make_trainer(tiny_tokenizer, tmp_path, rows=rows)


class CriticWithoutScore(torch.nn.Module):
    base_model_prefix = "backbone"

    def __init__(self):
        super().__init__()
        self.backbone = GPT2Model(GPT2Config(vocab_size=320, n_positions=64, n_embd=32, n_layer=2, n_head=2))


@pytest.mark.parametrize("save_value_model", [True, False])
def test_critic_without_score_head_is_rejected_at_construction(tiny_tokenizer, tmp_path, save_value_model):
    with pytest.raises(ValueError, match="`score` head"):
        make_trainer(tiny_tokenizer, tmp_path, critic=CriticWithoutScore(), save_value_model=save_value_model)


def test_two_runs_with_the_same_seed_are_identical(tiny_tokenizer, tmp_path):
    # The minibatch permutations draw from numpy: it must be seeded too, not only torch
    runs = []
    for name in ("a", "b"):
        trainer = make_trainer(tiny_tokenizer, tmp_path / name, updates=2, save_strategy="no")
        trainer.train()
        runs.append(weights(trainer))
    assert max_difference(*runs) == 0


def test_gradient_accumulation_holds_at_the_end_of_an_epoch(tiny_tokenizer, tmp_path):
    # 5 updates are one epoch of 20 rows; each update is 2 PPO epochs of one minibatch of 2 accumulated micro-batches
    trainer = make_trainer(tiny_tokenizer, tmp_path, updates=5, save_strategy="no")
    trainer.train()
    steps = {int(state["step"]) for state in trainer.optimizer.state.values()}
    assert steps == {5 * 2}  # one optimizer step per minibatch, also in the update that used the epoch's last batch


def test_resume_refuses_a_checkpoint_of_another_number_of_processes(uninterrupted, tiny_tokenizer, tmp_path):
    out, _, _, _ = uninterrupted
    checkpoint = tmp_path / "checkpoint-6"
    shutil.copytree(out / "checkpoint-6", checkpoint)
    state_file = checkpoint / "trainer_state.json"
    state = json.loads(state_file.read_text())
    assert state["world_size"] == 1
    state_file.write_text(json.dumps({**state, "world_size": 2}))
    with pytest.raises(ValueError, match="number of processes 2, this one has 1"):
        make_trainer(tiny_tokenizer, tmp_path / "run").train(resume_from_checkpoint=str(checkpoint))


def test_sample_generations_do_not_change_a_resumed_run(tiny_tokenizer, tmp_path):
    # The sampled completions for the logs come right after a checkpoint: they must not move the RNGs it recorded
    # 8 rows: one full eval batch (accelerate 1.4.0 yields `None` from an empty eval dataloader)
    eval_dataset = Dataset.from_dict({"input_ids": [tiny_tokenizer(p)["input_ids"] for p in PROMPTS[:8]]})
    settings = {"updates": 4, "save_steps": 2, "num_sample_generations": 4, "eval_dataset": eval_dataset}
    uninterrupted = make_trainer(tiny_tokenizer, tmp_path / "a", **settings)
    uninterrupted.train()
    shutil.copytree(tmp_path / "a" / "checkpoint-2", tmp_path / "b" / "checkpoint-2")
    resumed = make_trainer(tiny_tokenizer, tmp_path / "b", **settings)
    resumed.train(resume_from_checkpoint=True)
    assert max_difference(weights(resumed), weights(uninterrupted)) < TOLERANCE


@pytest.mark.parametrize("save_at", [1, 2])
def test_resume_in_the_middle_of_a_gradient_accumulation(tiny_tokenizer, tmp_path, save_at):
    # Upstream's PPO tests' shape: minibatches of 3 rows made of micro-batches of 2 and 1, so an update makes 8
    # micro-batch steps and the accumulation of 3 of them runs across minibatches and updates: after update 1 the
    # checkpoint holds 2 accumulated micro-batches, after update 2 one
    settings = {"per_device_train_batch_size": 2, "gradient_accumulation_steps": 3, "num_mini_batches": 2}
    settings.update(updates=3, save_steps=1)
    uninterrupted = make_trainer(tiny_tokenizer, tmp_path / "a", **settings)
    uninterrupted.train()
    shutil.copytree(tmp_path / "a" / f"checkpoint-{save_at}", tmp_path / "b" / f"checkpoint-{save_at}")
    resumed = make_trainer(tiny_tokenizer, tmp_path / "b", **settings)
    resumed.train(resume_from_checkpoint=True)
    assert resumed.accelerator.step == uninterrupted.accelerator.step == 3 * 8
    assert max_difference(weights(resumed), weights(uninterrupted)) < TOLERANCE


def test_resume_refuses_another_accumulation_in_the_middle_of_one(tiny_tokenizer, tmp_path):
    settings = {"per_device_train_batch_size": 2, "gradient_accumulation_steps": 3, "num_mini_batches": 2}
    make_trainer(tiny_tokenizer, tmp_path, updates=1, save_steps=1, **settings).train()
    assert (tmp_path / "checkpoint-1" / "accumulated_gradients.pt").is_file()  # 8 micro-batches: 2 wait for a step
    # The same batch of 6 rows and minibatches of 3, in micro-batches of 3 accumulated by 2
    settings = {"per_device_train_batch_size": 3, "gradient_accumulation_steps": 2, "num_mini_batches": 2}
    trainer = make_trainer(tiny_tokenizer, tmp_path, updates=2, save_steps=1, **settings)
    with pytest.raises(ValueError, match=r"2 of 3 micro-batches.*Resume with `gradient_accumulation_steps=3`"):
        trainer.train(resume_from_checkpoint=True)


@pytest.mark.parametrize(
    ("change", "message"),
    [({"seed": 1}, "`seed` 0, this one has 1"), ({"prompts": OTHER_PROMPTS}, "train dataset fingerprint")],
)
def test_resume_refuses_another_seed_or_dataset(uninterrupted, tiny_tokenizer, tmp_path, change, message):
    # Both reorder the prompts: the resumed run would replay another data order than the checkpoint's run
    out, _, _, _ = uninterrupted
    trainer = make_trainer(tiny_tokenizer, tmp_path, **change)
    before = weights(trainer)
    with pytest.raises(ValueError, match=message):
        trainer.train(resume_from_checkpoint=str(out / "checkpoint-6"))
    assert max_difference(weights(trainer), before) == 0  # refused before anything was loaded or trained
    assert trainer.state.global_step == 0


@pytest.mark.parametrize(("saved", "resumed"), [(None, 3e-3), (3e-3, 1e-2)])
def test_resume_refuses_another_critic_learning_rate(tiny_tokenizer, tmp_path, saved, resumed):
    # The checkpoint's optimizer and scheduler hold its learning rates: another value would silently not apply, or
    # (None against a number) not fit the saved parameter groups
    make_trainer(tiny_tokenizer, tmp_path, updates=SAVE_AT, critic_learning_rate=saved).train()
    trainer = make_trainer(tiny_tokenizer, tmp_path, critic_learning_rate=resumed)
    before = weights(trainer)
    with pytest.raises(
        ValueError, match=rf"`critic_learning_rate={saved}`.*Resume with `critic_learning_rate={saved}`"
    ):
        trainer.train(resume_from_checkpoint=True)
    assert max_difference(weights(trainer), before) == 0
    assert trainer.state.global_step == 0


def interrupt_critic_swap(folder, newer_critic):
    """`folder` as a save leaves it when it dies between the renames `value_model` -> `.old`, `.tmp` -> `value_model`."""
    os.replace(folder / "value_model", folder / "value_model.old")
    newer_critic.save_pretrained(folder / "value_model.tmp")


def test_resume_recovers_a_critic_swap_interrupted_between_its_renames(
    uninterrupted, tiny_tokenizer, tmp_path, caplog
):
    # checkpoint-6 was being written again (a resumed run saving over it): its critic was swapped for a new one,
    # written completely in `.tmp`, and the run died before the second rename
    out, _, final, _ = uninterrupted
    checkpoint = tmp_path / "checkpoint-6"
    shutil.copytree(out / "checkpoint-6", checkpoint)
    critic = AutoModelForSequenceClassification.from_pretrained(checkpoint / "value_model", dtype=torch.float32)
    shutil.rmtree(checkpoint / "value_model")
    tiny(AutoModelForSequenceClassification, seed=5, num_labels=1).save_pretrained(checkpoint / "value_model")
    interrupt_critic_swap(checkpoint, critic)
    trainer = make_trainer(tiny_tokenizer, tmp_path)
    with caplog.at_level("WARNING"):
        trainer.train(resume_from_checkpoint=True)
    assert "Restored it from `value_model.tmp/`" in caplog.text
    assert max_difference(weights(trainer), final) < TOLERANCE  # it resumed with the newest critic
    assert sorted(path.name for path in checkpoint.glob("value_model*")) == ["value_model"]


def test_a_save_after_an_interrupted_critic_swap_keeps_the_critic(tiny_tokenizer, tmp_path, monkeypatch):
    trainer = make_trainer(tiny_tokenizer, tmp_path, save_strategy="no")
    final = tmp_path / "final"
    trainer.save_model(str(final))
    critic = trainer.accelerator.unwrap_model(trainer.model).value_model
    interrupt_critic_swap(final, critic)
    # The next save fails while writing its critic: it must not have deleted the only complete ones first

    def disk_full(save_directory, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(critic, "save_pretrained", disk_full)
    with pytest.raises(OSError, match="No space left"):
        trainer.save_model(str(final))
    reloaded = AutoModelForSequenceClassification.from_pretrained(final / "value_model", dtype=torch.float32)
    assert all(torch.equal(value, critic.state_dict()[key]) for key, value in reloaded.state_dict().items())


@pytest.mark.parametrize("weights_file", ["model.safetensors", "value_model/model.safetensors"])
def test_resume_names_a_truncated_weights_file(uninterrupted, tiny_tokenizer, tmp_path, weights_file):
    out, _, _, _ = uninterrupted
    checkpoint = tmp_path / "checkpoint-6"
    shutil.copytree(out / "checkpoint-6", checkpoint)
    path = checkpoint / weights_file
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # the disk filled up while it was written
    trainer = make_trainer(tiny_tokenizer, tmp_path)
    with pytest.raises(ValueError, match=r"checkpoint-6: its weights file .*" + weights_file + ".*earlier checkpoint"):
        trainer.train(resume_from_checkpoint=True)
    assert trainer.state.global_step == 0


def test_a_failed_policy_write_keeps_the_earlier_save(tiny_tokenizer, tmp_path, monkeypatch):
    trainer = make_trainer(tiny_tokenizer, tmp_path, save_strategy="no")
    final = tmp_path / "final"
    trainer.save_model(str(final))
    earlier = {path.name: path.read_bytes() for path in final.iterdir() if path.is_file()}
    assert "model.safetensors" in earlier
    policy = trainer.accelerator.unwrap_model(trainer.model).policy

    def disk_full(save_directory, **kwargs):
        (Path(save_directory) / "config.json").write_text("{}")
        (Path(save_directory) / "model.safetensors").write_bytes(b"\0" * 16)  # cut short
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(policy, "save_pretrained", disk_full)
    with pytest.raises(OSError, match="No space left"):
        trainer.save_model(str(final))
    assert {path.name: path.read_bytes() for path in final.iterdir() if path.is_file()} == earlier
    assert sorted(path.name for path in final.iterdir() if path.is_dir()) == ["value_model"]
    AutoModelForCausalLM.from_pretrained(final)  # still loads
