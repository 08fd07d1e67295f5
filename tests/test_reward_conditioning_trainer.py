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

"""Tests for `RewardConditionedTrainer` and `RewardConditionedConfig`.

Everything runs on the tiny GPT-2 of the `tiny_causal_lm` fixture and `tiny_tokenizer`; training runs are a few steps.
"""

import copy
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from datasets import Dataset
from hypothesis import example, given, settings
from hypothesis import strategies as st
from transformers import TrainerCallback

from trl.experimental.reward_conditioning import (
    RewardConditionedCausalLM,
    RewardConditionedConfig,
    RewardConditionedTrainer,
)


PROMPTS = ["This movie was", "The acting", "I think the plot", "One of the", "Not worth", "The director"]
COMPLETIONS = [" wonderful and great.", " terrible, awful.", " moved me.", " boring and slow.", " fine.", " bad"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<bos>{{ m['role'] }}:\n{{ m['content'] }}<eos>{% endfor %}"
    "{% if add_generation_prompt %}<bos>assistant:\n{% endif %}"
)


def make_dataset(n, rewards=None):
    if rewards is None:
        rewards = [float(i % 3) - 1.0 for i in range(n)]
    return Dataset.from_dict(
        {
            "prompt": [PROMPTS[i % len(PROMPTS)] for i in range(n)],
            "completion": [COMPLETIONS[(i * 5) % len(COMPLETIONS)] for i in range(n)],
            "reward": rewards,
        }
    )


def make_args(tmp_path, **kwargs):
    defaults = dict(
        output_dir=str(tmp_path / "out"),
        bf16=False,
        gradient_checkpointing=False,
        report_to="none",
        disable_tqdm=True,
        save_strategy="no",
        logging_steps=1,
        per_device_train_batch_size=4,
        max_steps=2,
        max_length=48,
        dataloader_pin_memory=False,
    )
    defaults.update(kwargs)
    return RewardConditionedConfig(**defaults)


@pytest.fixture(scope="module")
def out_dir(tmp_path_factory):
    # Module-scoped, so that Hypothesis tests may share it: these trainers never write to it
    return tmp_path_factory.mktemp("reward_conditioned")


class ForwardSpy:
    """Records the keyword arguments and outputs of every forward call of a module."""

    def __init__(self, module):
        self.calls = []
        self.handle = module.register_forward_hook(self._hook, with_kwargs=True)

    def _hook(self, module, args, kwargs, output):
        self.calls.append((dict(kwargs), output))


# ---------------------------------------------------------------------------------------------------------------
# Data preparation and collation (no training: cheap, so Hypothesis explores widely)
# ---------------------------------------------------------------------------------------------------------------

text = st.text(alphabet="abcdefghij klmnop,.!", min_size=1, max_size=30)


@given(
    prompts=st.lists(text, min_size=1, max_size=6),
    completion=text,
    max_length=st.one_of(st.none(), st.integers(min_value=40, max_value=80)),
    completion_only_loss=st.booleans(),
    reward_position=st.sampled_from(["prefix", "before_completion"]),
)
def test_tokenization_layout(
    tiny_causal_lm, tiny_tokenizer, out_dir, prompts, completion, max_length, completion_only_loss, reward_position
):
    rewards = [float(i) for i in range(len(prompts))]
    dataset = Dataset.from_dict({"prompt": prompts, "completion": [completion] * len(prompts), "reward": rewards})
    args = make_args(
        out_dir,
        max_length=max_length,
        completion_only_loss=completion_only_loss,
        normalize_rewards=False,
        reward_position=reward_position,
    )
    trainer = RewardConditionedTrainer(
        tiny_causal_lm(n_positions=128), args, train_dataset=dataset, processing_class=tiny_tokenizer
    )
    completion_ids = tiny_tokenizer(completion, add_special_tokens=False)["input_ids"] + [tiny_tokenizer.eos_token_id]
    for i, row in enumerate(trainer.train_dataset):
        prompt_ids = tiny_tokenizer(prompts[i])["input_ids"]
        expected = (prompt_ids + completion_ids)[:max_length]
        assert row["input_ids"] == expected
        assert row["prompt_length"] == len(prompt_ids)
        assert row["rewards"] == [float(i)]
        # Labels are exactly the tokens the model predicts: the completion (and the prompt without
        # `completion_only_loss`), except the first token when the reward does not come before it
        predicted = [
            (j >= len(prompt_ids) or not completion_only_loss) and (j > 0 or reward_position == "prefix")
            for j in range(len(expected))
        ]
        assert row["labels"] == [token if keep else -100 for token, keep in zip(expected, predicted, strict=True)]


@given(
    lengths=st.lists(st.integers(min_value=2, max_value=12), min_size=1, max_size=6),
    num_rewards=st.integers(min_value=1, max_value=3),
    return_prompt_lengths=st.booleans(),
    data=st.data(),
)
def test_collator_pads_right_and_keeps_rewards(lengths, num_rewards, return_prompt_lengths, data):
    from trl.experimental.reward_conditioning.reward_conditioning_trainer import DataCollatorForRewardConditioning

    examples = []
    for length in lengths:
        ids = data.draw(st.lists(st.integers(3, 300), min_size=length, max_size=length))
        prompt_length = data.draw(st.integers(1, length - 1))
        rewards = data.draw(st.lists(st.floats(-1e3, 1e3, width=32), min_size=num_rewards, max_size=num_rewards))
        labels = [-100] * prompt_length + ids[prompt_length:]
        examples.append({"input_ids": ids, "labels": labels, "rewards": rewards, "prompt_length": prompt_length})
    batch = DataCollatorForRewardConditioning(pad_token_id=0, return_prompt_lengths=return_prompt_lengths)(examples)
    assert ("prompt_lengths" in batch) == return_prompt_lengths
    width = max(lengths)
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape == (len(lengths), width)
    assert batch["rewards"].shape == (len(lengths), num_rewards)
    assert batch["rewards"].dtype == torch.float32
    for i, row in enumerate(examples):
        n = lengths[i]
        assert batch["input_ids"][i, :n].tolist() == row["input_ids"]
        assert batch["input_ids"][i, n:].eq(0).all()
        assert batch["attention_mask"][i].tolist() == [1] * n + [0] * (width - n)
        assert batch["labels"][i].tolist() == row["labels"] + [-100] * (width - n)
        assert batch["rewards"][i].tolist() == row["rewards"]
        if return_prompt_lengths:
            assert batch["prompt_lengths"][i].item() == row["prompt_length"]


@given(
    rewards=st.lists(
        st.lists(st.floats(-100, 100, allow_nan=False, width=32), min_size=2, max_size=2), min_size=3, max_size=20
    ).filter(lambda rows: all(len({row[k] for row in rows}) > 1 for k in range(2)))
)
@example(rewards=[[0.0, 0.0], [0.0, 1.401298464324817e-45], [1.0, 0.0]])  # std 6.6e-46: 0 in float32
@example(rewards=[[0.0, 0.0], [0.0, 1e-38], [1.0, 0.0]])  # std 4.7e-39: subnormal in float32
def test_normalization_stats_fitted_on_train_set(tiny_causal_lm, tiny_tokenizer, out_dir, rewards):
    def build():
        return RewardConditionedTrainer(
            tiny_causal_lm(),
            make_args(out_dir),
            train_dataset=make_dataset(len(rewards), rewards),
            processing_class=tiny_tokenizer,
        )

    data = torch.tensor(rewards, dtype=torch.float64)
    std = data.std(0, unbiased=False)
    if (std.float() == 0).any():
        # e.g. 0 and 1.4e-45: a std that is 0 in float32 means the reward never varies, for the model
        with pytest.raises(ValueError, match="same value in every row"):
            build()
        return
    if (std < torch.finfo(torch.float32).tiny).any():
        # e.g. 0 and 1e-38: a std that normalized rewards would overflow with is refused at construction
        with pytest.raises(ValueError, match="smallest normal float32"):
            build()
        return
    config = build().model.config
    assert config.num_rewards == 2
    torch.testing.assert_close(torch.tensor(config.reward_mean, dtype=torch.float64), data.mean(0))
    torch.testing.assert_close(torch.tensor(config.reward_std, dtype=torch.float64), std)


def test_normalize_rewards_false_keeps_model_stats(tiny_causal_lm, tiny_tokenizer, tmp_path):
    model = RewardConditionedCausalLM.from_base(tiny_causal_lm(), num_rewards=1)
    before = (list(model.config.reward_mean), list(model.config.reward_std))
    trainer = RewardConditionedTrainer(
        model,
        make_args(tmp_path, normalize_rewards=False),
        train_dataset=make_dataset(8, [10.0 * i for i in range(8)]),
        processing_class=tiny_tokenizer,
    )
    assert (list(trainer.model.config.reward_mean), list(trainer.model.config.reward_std)) == before


def test_trained_model_keeps_its_reward_stats(tiny_causal_lm, tiny_tokenizer, tmp_path):
    # A first run fits the statistics on its data; continuing from the saved model on other data keeps them, since
    # the trained reward head reads rewards standardized with them. `normalize_rewards=True` re-fits on request.
    first = RewardConditionedTrainer(
        tiny_causal_lm(), make_args(tmp_path), train_dataset=make_dataset(8), processing_class=tiny_tokenizer
    )
    fitted = (list(first.model.config.reward_mean), list(first.model.config.reward_std))
    assert fitted != ([0.0], [1.0])
    first.save_model(str(tmp_path / "trained"))
    other_data = make_dataset(8, [100.0 + 10.0 * i for i in range(8)])
    for model in (str(tmp_path / "trained"), first.model):
        kept = RewardConditionedTrainer(
            model, make_args(tmp_path), train_dataset=other_data, processing_class=tiny_tokenizer
        )
        assert (kept.model.config.reward_mean, kept.model.config.reward_std) == fitted
    refit = RewardConditionedTrainer(
        str(tmp_path / "trained"),
        make_args(tmp_path, normalize_rewards=True),
        train_dataset=other_data,
        processing_class=tiny_tokenizer,
    )
    assert refit.model.config.reward_mean == pytest.approx([135.0])


# ---------------------------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("reward_position", ["prefix", "before_completion"])
def test_training_loss_decreases_and_all_parts_learn(tiny_causal_lm, tiny_tokenizer, tmp_path, reward_position):
    args = make_args(tmp_path, max_steps=25, learning_rate=3e-3, reward_position=reward_position)
    trainer = RewardConditionedTrainer(
        tiny_causal_lm(), args, train_dataset=make_dataset(16), processing_class=tiny_tokenizer
    )
    assert trainer.model.config.reward_position == reward_position
    before = {name: param.detach().clone() for name, param in trainer.model.named_parameters()}
    trainer.train()
    losses = [log["loss"] for log in trainer.state.log_history if "loss" in log]
    assert len(losses) == 25 and all(math.isfinite(loss) for loss in losses)
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.5
    changed = {name for name, param in trainer.model.named_parameters() if not torch.equal(param, before[name])}
    assert any("reward" in name for name in changed), "the reward head did not train"
    assert len(changed) > len(before) // 2


@settings(max_examples=3)
@given(
    rewards=st.lists(st.floats(-5, 5, allow_nan=False, width=32), min_size=6, max_size=6),
    seed=st.integers(0, 9),
    remove_unused_columns=st.booleans(),
)
def test_reward_column_reaches_the_model(
    tiny_causal_lm, tiny_tokenizer, out_dir, rewards, seed, remove_unused_columns
):
    """Whatever `remove_unused_columns` says (Trainer's default is on), each row's raw reward reaches the forward."""
    args = make_args(
        out_dir,
        per_device_train_batch_size=3,
        max_steps=2,
        seed=seed,
        remove_unused_columns=remove_unused_columns,
        normalize_rewards=False,  # rewards may be constant here
    )
    trainer = RewardConditionedTrainer(
        tiny_causal_lm(), args, train_dataset=make_dataset(6, rewards), processing_class=tiny_tokenizer
    )
    spy = ForwardSpy(trainer.model)
    trainer.train()
    seen = torch.cat([kwargs["rewards"] for kwargs, _ in spy.calls]).flatten()
    torch.testing.assert_close(seen.sort().values, torch.tensor(rewards).sort().values)


def test_prompt_lengths_reach_the_model(tiny_causal_lm, tiny_tokenizer, tmp_path):
    args = make_args(tmp_path, per_device_train_batch_size=6, max_steps=1, reward_position="before_completion")
    dataset = make_dataset(6)
    trainer = RewardConditionedTrainer(tiny_causal_lm(), args, train_dataset=dataset, processing_class=tiny_tokenizer)
    spy = ForwardSpy(trainer.model)
    trainer.train()
    (kwargs, _), *_ = spy.calls
    expected = {len(tiny_tokenizer(prompt)["input_ids"]) for prompt in dataset["prompt"]}
    assert set(kwargs["prompt_lengths"].tolist()) == expected


def _one_sgd_step(model, tokenizer, tmp_path, dataset, batch_size, accumulation, **kwargs):
    args = make_args(
        tmp_path,
        per_device_train_batch_size=batch_size,
        gradient_accumulation_steps=accumulation,
        max_steps=1,
        optim="sgd",
        learning_rate=1.0,
        lr_scheduler_type="constant",
        max_grad_norm=0.0,
        **kwargs,
    )
    trainer = RewardConditionedTrainer(model, args, train_dataset=dataset, processing_class=tokenizer)
    before = {name: param.detach().clone() for name, param in trainer.model.named_parameters()}
    with torch.no_grad():  # the model's own mean over the tokens it predicts, whole dataset in one batch
        reference = trainer.model(**trainer.data_collator(list(trainer.train_dataset))).loss.item()
    trainer.train()
    loss = trainer.state.log_history[0]["loss"]
    assert loss == pytest.approx(reference, rel=1e-5)
    # With SGD at learning rate 1, the parameter change is minus the gradient
    grads = {name: before[name] - param.detach() for name, param in trainer.model.named_parameters()}
    return loss, grads


@settings(max_examples=4)
@given(
    completion_lengths=st.lists(st.integers(1, 12), min_size=4, max_size=4),
    reward_position=st.sampled_from(["prefix", "before_completion"]),
    completion_only_loss=st.booleans(),
)
def test_gradient_accumulation_matches_large_batch(
    tiny_causal_lm, tiny_tokenizer, out_dir, completion_lengths, reward_position, completion_only_loss
):
    # Rows with very different numbers of loss tokens: a mean of per-micro-batch means would differ from the big batch
    dataset = Dataset.from_dict(
        {
            "prompt": ["The movie", "I think the plot", "One", "This film was not"],
            "completion": [" great" * n for n in completion_lengths],
            "reward": [1.0, -1.0, 0.5, 2.0],
        }
    )
    options = dict(reward_position=reward_position, completion_only_loss=completion_only_loss)
    big_loss, big_grads = _one_sgd_step(tiny_causal_lm(), tiny_tokenizer, out_dir, dataset, 4, 1, **options)
    acc_loss, acc_grads = _one_sgd_step(tiny_causal_lm(), tiny_tokenizer, out_dir, dataset, 2, 2, **options)
    one_loss, one_grads = _one_sgd_step(tiny_causal_lm(), tiny_tokenizer, out_dir, dataset, 1, 4, **options)
    assert acc_loss == pytest.approx(big_loss, rel=1e-5)
    assert one_loss == pytest.approx(big_loss, rel=1e-5)
    for name, grad in big_grads.items():
        torch.testing.assert_close(acc_grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)
        torch.testing.assert_close(one_grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)


class RewardConditionedForCausalLM(RewardConditionedCausalLM):
    """The same model under a name ending in "ForCausalLM", from which transformers derives the causal LM loss type."""


@pytest.mark.parametrize("model_class", [RewardConditionedCausalLM, RewardConditionedForCausalLM])
def test_gradient_accumulation_does_not_depend_on_the_class_name(
    tiny_causal_lm, tiny_tokenizer, tmp_path, model_class
):
    # Prefix reward, no BOS and loss on the prompt too: the first token of every row is predicted (from the reward),
    # so counting `labels[..., 1:]` instead of all labels would scale the loss wrongly.
    dataset = make_dataset(4)
    options = dict(completion_only_loss=False)
    losses, grads = [], []
    for batch_size, accumulation in [(4, 1), (1, 4)]:
        model = model_class.from_base(tiny_causal_lm(), num_rewards=1)
        loss, grad = _one_sgd_step(model, tiny_tokenizer, tmp_path, dataset, batch_size, accumulation, **options)
        losses.append(loss)
        grads.append(grad)
    assert losses[1] == pytest.approx(losses[0], rel=1e-5)
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, rtol=1e-4, atol=1e-6, msg=name)


def test_conversational_dataset(tiny_causal_lm, tiny_tokenizer, tmp_path):
    tokenizer = copy.deepcopy(tiny_tokenizer)
    tokenizer.chat_template = CHAT_TEMPLATE
    dataset = Dataset.from_dict(
        {
            "prompt": [[{"role": "user", "content": prompt}] for prompt in PROMPTS],
            "completion": [[{"role": "assistant", "content": completion.strip()}] for completion in COMPLETIONS],
            "reward": [float(i) for i in range(len(PROMPTS))],
        }
    )
    args = make_args(tmp_path, max_steps=3, max_length=None)
    trainer = RewardConditionedTrainer(tiny_causal_lm(), args, train_dataset=dataset, processing_class=tokenizer)
    for i, row in enumerate(trainer.train_dataset):
        prompt = dataset[i]["prompt"]
        prompt_ids = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True, return_dict=True)
        prompt_ids = list(prompt_ids["input_ids"])
        assert row["prompt_length"] == len(prompt_ids)
        assert row["input_ids"][: len(prompt_ids)] == prompt_ids
        completion_ids = [label for label in row["labels"] if label != -100]
        assert tokenizer.decode(completion_ids) == COMPLETIONS[i].strip() + "<eos>"
    trainer.train()
    assert all(math.isfinite(log["loss"]) for log in trainer.state.log_history if "loss" in log)


def test_save_and_from_pretrained_round_trip(tiny_causal_lm, tiny_tokenizer, tmp_path):
    args = make_args(tmp_path, max_steps=3, learning_rate=1e-2)
    trainer = RewardConditionedTrainer(
        tiny_causal_lm(),
        args,
        train_dataset=make_dataset(8, [3.0 * i for i in range(8)]),
        processing_class=tiny_tokenizer,
    )
    trainer.train()
    trainer.save_model(str(tmp_path / "saved"))
    loaded = RewardConditionedCausalLM.from_pretrained(str(tmp_path / "saved"))
    assert loaded.config.reward_mean == pytest.approx(trainer.model.config.reward_mean)
    assert loaded.config.reward_std == pytest.approx(trainer.model.config.reward_std)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
    trainer.model.eval()
    loaded.eval()
    inputs = {key: batch[key] for key in ("input_ids", "attention_mask", "rewards")}
    with torch.no_grad():
        torch.testing.assert_close(loaded(**inputs).logits, trainer.model(**inputs).logits)
    # The saved model is also a valid `model` argument: a string loads the conditioned model, not a fresh head
    tiny_tokenizer.save_pretrained(str(tmp_path / "saved"))
    again = RewardConditionedTrainer(
        str(tmp_path / "saved"), make_args(tmp_path, normalize_rewards=False), train_dataset=make_dataset(8)
    )
    assert isinstance(again.model, RewardConditionedCausalLM)
    with torch.no_grad():
        torch.testing.assert_close(again.model.eval()(**inputs).logits, loaded(**inputs).logits)


def test_model_card_says_how_to_load_and_its_quick_start_runs(tiny_causal_lm, tiny_tokenizer, tmp_path):
    # Loading needs the package's import first; the card written with each checkpoint says so, and its code works in
    # a fresh process (with the local folder in place of a hub id)
    args = make_args(tmp_path, max_steps=2, save_strategy="steps", save_steps=1)
    trainer = RewardConditionedTrainer(
        tiny_causal_lm(), args, train_dataset=make_dataset(8), processing_class=tiny_tokenizer
    )
    trainer.train()
    trainer.save_model()
    card = (Path(args.output_dir) / "README.md").read_text()
    assert "reward-conditioning" in card and "import trl.experimental.reward_conditioning" in card
    code = re.search(r"```python\n(.*?)```", card, re.DOTALL).group(1)
    assert 'model="None"' in code  # no hub id: the test puts the local folder there
    code = code.replace('model="None"', f"model={args.output_dir!r}")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip()


def test_model_from_base_path(tiny_causal_lm, tiny_tokenizer, tmp_path):
    tiny_causal_lm().save_pretrained(str(tmp_path / "base"))
    tiny_tokenizer.save_pretrained(str(tmp_path / "base"))
    trainer = RewardConditionedTrainer(
        str(tmp_path / "base"),
        make_args(tmp_path, reward_position="before_completion"),
        train_dataset=make_dataset(6, [[1.0, float(i)] for i in range(3)] + [[-1.0, float(i)] for i in range(3)]),
    )
    assert isinstance(trainer.model, RewardConditionedCausalLM)
    assert trainer.model.config.num_rewards == 2
    assert trainer.model.config.reward_position == "before_completion"
    assert trainer.processing_class.pad_token_id == tiny_tokenizer.pad_token_id


def test_peft_trains_lora_and_reward_head(tiny_causal_lm, tiny_tokenizer, tmp_path):
    from peft import LoraConfig

    args = make_args(tmp_path, max_steps=3, learning_rate=1e-2)
    peft_config = LoraConfig(r=4, lora_alpha=8, target_modules=["c_attn"], lora_dropout=0.0)
    trainer = RewardConditionedTrainer(
        tiny_causal_lm(),
        args,
        train_dataset=make_dataset(8),
        processing_class=tiny_tokenizer,
        peft_config=peft_config,
    )
    assert peft_config.modules_to_save is None, "the user's PEFT config must not change"
    trainable = {name for name, param in trainer.model.named_parameters() if param.requires_grad}
    assert any("lora_" in name for name in trainable)
    assert any("reward" in name for name in trainable)
    assert not any("wte" in name or "mlp" in name for name in trainable), "base weights must stay frozen"
    before = {name: param.detach().clone() for name, param in trainer.model.named_parameters()}
    trainer.train()
    after = dict(trainer.model.named_parameters())
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    assert any("reward" in name for name in changed) and any("lora_" in name for name in changed)
    assert changed <= trainable


def test_peft_with_gradient_checkpointing_saves_and_reloads(tiny_causal_lm, tiny_tokenizer, tmp_path):
    from peft import LoraConfig, PeftModel

    args = make_args(tmp_path, max_steps=3, learning_rate=1e-2, gradient_checkpointing=True)
    rewards = [float(i) for i in range(8)]
    trainer = RewardConditionedTrainer(
        tiny_causal_lm(),
        args,
        train_dataset=make_dataset(8, rewards),
        processing_class=tiny_tokenizer,
        peft_config=LoraConfig(r=4, lora_alpha=8, target_modules=["c_attn"], lora_dropout=0.0),
    )
    head_before = trainer.model.get_base_model().reward_head.linear.weight.detach().clone()
    trainer.train()
    trained_head = trainer.model.get_base_model().reward_head.modules_to_save["default"].linear.weight
    assert not torch.equal(trained_head, head_before), "the reward head did not train"
    trainer.save_model(str(tmp_path / "adapter"))
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
    inputs = {key: batch[key] for key in ("input_ids", "attention_mask", "rewards")}
    trainer.model.eval()
    with torch.no_grad():
        expected = trainer.model(**inputs).logits

    # The adapter holds LoRA and the trained reward head; the base model with the fitted stats takes it back
    config = trainer.model.get_base_model().config
    start = RewardConditionedCausalLM.from_base(
        tiny_causal_lm(), num_rewards=1, reward_mean=config.reward_mean, reward_std=config.reward_std
    )
    reloaded = PeftModel.from_pretrained(start, str(tmp_path / "adapter")).eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**inputs).logits, expected)

    # Merged, it is a plain reward-conditioned checkpoint
    trainer.model.merge_and_unload().save_pretrained(str(tmp_path / "merged"))
    merged = RewardConditionedCausalLM.from_pretrained(str(tmp_path / "merged"))
    assert merged.config.reward_mean == pytest.approx([sum(rewards) / len(rewards)])
    with torch.no_grad():
        torch.testing.assert_close(merged(**inputs).logits, expected, rtol=1e-5, atol=1e-5)


def test_auto_peft_loads_the_adapter_of_a_saved_reward_conditioned_model(
    tiny_causal_lm, tiny_tokenizer, tmp_path, caplog
):
    from peft import AutoPeftModelForCausalLM, LoraConfig

    def train(model, name):
        trainer = RewardConditionedTrainer(
            model,
            make_args(tmp_path, max_steps=2, learning_rate=1e-2),
            train_dataset=make_dataset(8),
            processing_class=tiny_tokenizer,
            peft_config=LoraConfig(r=4, lora_alpha=8, target_modules=["c_attn"], lora_dropout=0.0),
        )
        trainer.train()
        trainer.save_model(str(tmp_path / name))
        return trainer

    # The documented way: save the reward-conditioned model with its statistics, train from its path
    start = RewardConditionedCausalLM.from_base(tiny_causal_lm(), num_rewards=1, reward_mean=[0.5], reward_std=[2.0])
    start.save_pretrained(str(tmp_path / "rc-start"))
    with caplog.at_level("WARNING"):
        trainer = train(str(tmp_path / "rc-start"), "adapter")
    assert "AutoPeftModelForCausalLM" not in caplog.text
    loaded = AutoPeftModelForCausalLM.from_pretrained(str(tmp_path / "adapter"), import_allowlist=["trl"]).eval()
    assert loaded.get_base_model().config.reward_mean == [0.5]
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
    inputs = {key: batch[key] for key in ("input_ids", "attention_mask", "rewards")}
    trainer.model.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(**inputs).logits, trainer.model(**inputs).logits)

    # A base built in memory, or statistics fitted here, have no saved copy: say so when the trainer is built, and
    # leave no path in the adapter that would load another model
    fresh = RewardConditionedCausalLM.from_base(tiny_causal_lm(), num_rewards=1)
    fresh.save_pretrained(str(tmp_path / "rc-fresh"))
    for model, name in ((tiny_causal_lm(), "in-memory"), (str(tmp_path / "rc-fresh"), "refitted")):
        caplog.clear()
        with caplog.at_level("WARNING"):
            trainer = train(model, name)
        assert "cannot be loaded with `AutoPeftModelForCausalLM`" in caplog.text
        assert trainer.model.peft_config["default"].base_model_name_or_path is None


def test_reward_dropout_uses_the_null_reward(tiny_causal_lm, tiny_tokenizer, tmp_path):
    args = make_args(tmp_path, per_device_train_batch_size=64, max_steps=1, reward_dropout=0.5, seed=3)
    trainer = RewardConditionedTrainer(
        tiny_causal_lm(), args, train_dataset=make_dataset(64), processing_class=tiny_tokenizer
    )
    assert trainer.model.config.use_null_reward
    before_step = copy.deepcopy(trainer.model).eval()
    spy = ForwardSpy(trainer.model)
    trainer.train()
    (kwargs, output), *_ = spy.calls
    dropped = ~kwargs["reward_mask"][:, 0]  # (B,)
    assert torch.equal(kwargs["reward_mask"], (~dropped)[:, None].expand_as(kwargs["reward_mask"]))
    assert 12 <= dropped.sum() <= 52, "about half of the rows should use the null reward"
    null_reward = trainer.model.reward_head.null_reward
    assert not torch.equal(null_reward, before_step.reward_head.null_reward), "the null reward did not train"

    # Replayed with the weights of that step: dropped rows are the unconditioned model, the others the conditioned one
    replay = {key: kwargs[key] for key in ("input_ids", "attention_mask")}
    with torch.no_grad():
        unconditioned = before_step(**replay, rewards=None).logits
        conditioned = before_step(**replay, rewards=kwargs["rewards"]).logits
    assert not torch.allclose(unconditioned, conditioned)
    expected = torch.where(dropped[:, None, None], unconditioned, conditioned)
    torch.testing.assert_close(output.logits.detach(), expected)


def test_no_reward_dropout_in_evaluation(tiny_causal_lm, tiny_tokenizer, tmp_path):
    args = make_args(tmp_path, reward_dropout=0.5, per_device_eval_batch_size=8)
    trainer = RewardConditionedTrainer(
        tiny_causal_lm(),
        args,
        train_dataset=make_dataset(8),
        eval_dataset={"a": make_dataset(8), "b": make_dataset(4)},
        processing_class=tiny_tokenizer,
    )
    spy = ForwardSpy(trainer.model)
    metrics = trainer.evaluate(trainer.eval_dataset["a"])
    assert math.isfinite(metrics["eval_loss"])
    assert all("reward_mask" not in kwargs for kwargs, _ in spy.calls)


# ---------------------------------------------------------------------------------------------------------------
# Bad input: a clear error, at construction, that names the row
# ---------------------------------------------------------------------------------------------------------------


BAD_REWARDS = {
    "none": (None, "expected a number"),
    "nan": (float("nan"), "finite"),
    "inf": (float("inf"), "finite"),
    "-inf": (float("-inf"), "finite"),
    "beyond float32": (1e39, "float32"),
    "list with None": ([1.0, None], "expected a number"),
    "empty list": ([], "expected a number"),
}


@pytest.mark.parametrize("kind", sorted(BAD_REWARDS))
@given(n=st.integers(2, 12), data=st.data())
def test_bad_reward_names_the_row(tiny_causal_lm, tiny_tokenizer, out_dir, kind, n, data):
    bad_row = data.draw(st.integers(0, n - 1))
    value, message = BAD_REWARDS[kind]
    rewards = [[float(i)] if isinstance(value, list) else float(i) for i in range(n)]
    rewards[bad_row] = value
    dataset = make_dataset(n).remove_columns("reward").add_column("reward", rewards)
    with pytest.raises(ValueError, match=rf"row {bad_row} of the train dataset.*{message}"):
        RewardConditionedTrainer(
            tiny_causal_lm(), make_args(out_dir), train_dataset=dataset, processing_class=tiny_tokenizer
        )


@pytest.mark.parametrize(
    "column, found",
    [
        (["0.5", "1", "2", "3"], r"'0.5' \(str\)"),
        ([["0.5"], ["1"], ["2"], ["3"]], r"\['0.5'\] \(list\)"),
        ([True, False, True, False], r"True \(bool\)"),
    ],
)
def test_non_numeric_reward_column(tiny_causal_lm, tiny_tokenizer, tmp_path, column, found):
    # Arrow keeps one type per column: a column of strings or booleans fails on its first row
    dataset = make_dataset(4).remove_columns("reward").add_column("reward", column)
    with pytest.raises(ValueError, match=rf"row 0 of the train dataset is {found}; expected a number"):
        RewardConditionedTrainer(
            tiny_causal_lm(), make_args(tmp_path), train_dataset=dataset, processing_class=tiny_tokenizer
        )


@pytest.mark.parametrize("dataset_name", ["train", "eval"])
def test_reward_that_overflows_once_normalized_names_the_row(tiny_causal_lm, tiny_tokenizer, tmp_path, dataset_name):
    # Each reward fits in float32, but minus the mean of the train set it does not: the loss would be NaN
    train = make_dataset(4, [-3e38, -3e38, -3e38, 3e38])  # mean -1.5e38: row 3 is 4.5e38 from it
    evaluation = make_dataset(4, [0.0, 0.0, 0.0, 0.0])
    if dataset_name == "eval":
        train = make_dataset(4, [-3e38, -3e38, 0.0, 0.0])  # standardized to -1 and 1
        evaluation = make_dataset(4, [0.0, 0.0, 3e38, 0.0])
    with pytest.raises(ValueError, match=rf"row \d of the {dataset_name} dataset.*expected finite values"):
        RewardConditionedTrainer(
            tiny_causal_lm(),
            make_args(tmp_path),
            train_dataset=train,
            eval_dataset=evaluation,
            processing_class=tiny_tokenizer,
        )


@pytest.mark.parametrize("std", [1e-46, 0.0, float("nan")])
def test_unusable_reward_std_is_refused_before_training(tiny_causal_lm, tiny_tokenizer, tmp_path, std):
    # Set by hand after the model was built: the trainer checks it, instead of training on NaN
    model = RewardConditionedCausalLM.from_base(tiny_causal_lm())
    model.config.reward_std = [std]
    with pytest.raises(ValueError, match="reward_std"):
        RewardConditionedTrainer(
            model,
            make_args(tmp_path, normalize_rewards=False),
            train_dataset=make_dataset(4),
            processing_class=tiny_tokenizer,
        )


def test_rewards_that_vary_below_float32_precision_are_refused(tiny_causal_lm, tiny_tokenizer, tmp_path):
    # Their float64 std is 5e-47, which is 0 in float32, the precision of the model
    with pytest.raises(ValueError, match=r"Reward\(s\) \[0\] have the same value in every row"):
        RewardConditionedTrainer(
            tiny_causal_lm(),
            make_args(tmp_path),
            train_dataset=make_dataset(4, [0.0, 1e-46, 0.0, 1e-46]),
            processing_class=tiny_tokenizer,
        )


def test_sequence_classification_model_is_refused(tiny_config, tiny_tokenizer, tmp_path):
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_config(tiny_config(num_labels=1))
    with pytest.raises((TypeError, ValueError), match="causal"):
        RewardConditionedTrainer(
            model, make_args(tmp_path), train_dataset=make_dataset(4), processing_class=tiny_tokenizer
        )


@given(n=st.integers(2, 8), data=st.data())
def test_inconsistent_reward_vectors_name_the_row(tiny_causal_lm, tiny_tokenizer, out_dir, n, data):
    bad_row = data.draw(st.integers(1, n - 1))
    rewards = [[float(i), 1.0] for i in range(n)]
    rewards[bad_row] = data.draw(st.sampled_from([[1.0], [1.0, 2.0, 3.0], []]))
    with pytest.raises(ValueError, match=rf"row {bad_row} of the train dataset"):
        RewardConditionedTrainer(
            tiny_causal_lm(),
            make_args(out_dir),
            train_dataset=make_dataset(n, rewards),
            processing_class=tiny_tokenizer,
        )


@pytest.mark.parametrize("conversational", [False, True])
@given(n=st.integers(2, 8), data=st.data())
def test_empty_completion_names_the_row(tiny_causal_lm, tiny_tokenizer, out_dir, conversational, n, data):
    bad_row = data.draw(st.integers(0, n - 1))
    dataset = make_dataset(n)
    completions = list(dataset["completion"])
    completions[bad_row] = ""
    tokenizer = tiny_tokenizer
    if conversational:
        tokenizer = copy.deepcopy(tiny_tokenizer)
        tokenizer.chat_template = CHAT_TEMPLATE
        dataset = Dataset.from_dict(
            {
                "prompt": [[{"role": "user", "content": prompt}] for prompt in dataset["prompt"]],
                "completion": [[{"role": "assistant", "content": completion}] for completion in completions],
                "reward": dataset["reward"],
            }
        )
    else:
        dataset = dataset.remove_columns("completion").add_column("completion", completions)
    with pytest.raises(ValueError, match=rf"Row {bad_row} of the train dataset has an empty completion"):
        RewardConditionedTrainer(
            tiny_causal_lm(), make_args(out_dir), train_dataset=dataset, processing_class=tokenizer
        )


@pytest.mark.parametrize("conversational, prompt", [(True, []), (True, None), (False, None)])
@given(n=st.integers(2, 8), data=st.data())
def test_empty_or_missing_prompt_names_the_row(
    tiny_causal_lm, tiny_tokenizer, out_dir, conversational, prompt, n, data
):
    # A conversational row needs a prompt message: the chat template raised without naming the row, and an empty list
    # could crash with an IndexError. A standard prompt must be a string (it may be empty).
    bad_row = data.draw(st.integers(0, n - 1))
    tokenizer = copy.deepcopy(tiny_tokenizer)
    tokenizer.chat_template = CHAT_TEMPLATE
    rows = make_dataset(n).to_list()
    for i, row in enumerate(rows):
        if conversational:
            row["prompt"] = [{"role": "user", "content": row["prompt"]}]
            row["completion"] = [{"role": "assistant", "content": row["completion"]}]
        if i == bad_row:
            row["prompt"] = prompt
    with pytest.raises(
        (ValueError, TypeError), match=rf"Row {bad_row} of the train dataset has prompt {re.escape(repr(prompt))}"
    ):
        RewardConditionedTrainer(
            tiny_causal_lm(), make_args(out_dir), train_dataset=Dataset.from_list(rows), processing_class=tokenizer
        )


@pytest.mark.parametrize("reward_position", ["prefix", "before_completion"])
def test_empty_standard_prompt_trains(tiny_causal_lm, tiny_tokenizer, tmp_path, reward_position):
    # An empty string prompt is fine: the reward conditions the whole text (its first token is then predicted)
    dataset = make_dataset(4).remove_columns("prompt").add_column("prompt", ["", "The acting", "", "Not worth"])
    trainer = RewardConditionedTrainer(
        tiny_causal_lm(),
        make_args(tmp_path, max_steps=1, reward_position=reward_position),
        train_dataset=dataset,
        processing_class=tiny_tokenizer,
    )
    row = trainer.train_dataset[0]
    assert row["prompt_length"] == 0 and row["labels"] == row["input_ids"]
    assert math.isfinite(trainer.train().training_loss)


@pytest.mark.parametrize(
    "rewards, message",
    [
        ([[1.0], [float("nan")]], r"Example 1 of the batch has `rewards` \[nan\]; expected finite"),
        ([[1.0], [float("inf")]], r"Example 1 .*expected finite"),
        ([[1.0], [1.0, 2.0]], r"Example 1 of the batch has 2 reward\(s\) \(\[1.0, 2.0\]\); expected 1"),
        ([[1.0, 2.0], [1.0, 2.0]], r"Example 0 of the batch has 2 reward\(s\).*expected 1"),
        ([1.0, 2.0], r"Example 0 of the batch has `rewards` 1.0; expected a list of numbers"),
    ],
)
def test_collator_refuses_bad_rewards(rewards, message):
    from trl.experimental.reward_conditioning.reward_conditioning_trainer import DataCollatorForRewardConditioning

    examples = [{"input_ids": [5, 6], "labels": [5, 6], "rewards": r, "prompt_length": 1} for r in rewards]
    with pytest.raises(ValueError, match=message):
        DataCollatorForRewardConditioning(pad_token_id=0, num_rewards=1)(examples)


def test_trainer_collator_checks_the_model_reward_width(tiny_causal_lm, tiny_tokenizer, tmp_path):
    trainer = RewardConditionedTrainer(
        tiny_causal_lm(), make_args(tmp_path), train_dataset=make_dataset(4), processing_class=tiny_tokenizer
    )
    rows = [dict(trainer.train_dataset[i], rewards=[0.0, 1.0]) for i in range(2)]
    with pytest.raises(ValueError, match=r"has 2 reward\(s\) \(\[0.0, 1.0\]\); expected 1, the model's `num_rewards`"):
        trainer.data_collator(rows)


@pytest.mark.parametrize("missing", ["prompt", "completion", "reward"])
def test_missing_column(tiny_causal_lm, tiny_tokenizer, tmp_path, missing):
    dataset = make_dataset(4).remove_columns(missing)
    with pytest.raises(ValueError, match=rf"no \['{missing}'\] column"):
        RewardConditionedTrainer(
            tiny_causal_lm(), make_args(tmp_path), train_dataset=dataset, processing_class=tiny_tokenizer
        )


def test_prompt_longer_than_max_length_names_the_row(tiny_causal_lm, tiny_tokenizer, tmp_path):
    dataset = make_dataset(4)
    prompts = list(dataset["prompt"])
    prompts[2] = "This movie was wonderful, the acting was great and the story moved me. " * 3
    dataset = dataset.remove_columns("prompt").add_column("prompt", prompts)
    with pytest.raises(ValueError, match=r"prompt of row 2 of the train dataset has \d+ tokens.*max_length=16"):
        RewardConditionedTrainer(
            tiny_causal_lm(),
            make_args(tmp_path, max_length=16),
            train_dataset=dataset,
            processing_class=tiny_tokenizer,
        )


@pytest.mark.parametrize("max_length", [None, 40])
def test_row_longer_than_the_model_names_the_row(tiny_causal_lm, tiny_tokenizer, tmp_path, max_length):
    dataset = make_dataset(5)
    completions = list(dataset["completion"])
    completions[3] = " wonderful" * 30
    dataset = dataset.remove_columns("completion").add_column("completion", completions)
    model = tiny_causal_lm(n_positions=24)
    with pytest.raises(ValueError, match=r"Row 3 of the train dataset has \d+ tokens.*Set `max_length` to at most 23"):
        RewardConditionedTrainer(
            model, make_args(tmp_path, max_length=max_length), train_dataset=dataset, processing_class=tiny_tokenizer
        )
    # Within the model's positions (the reward included), the same data is accepted
    RewardConditionedTrainer(
        model, make_args(tmp_path, max_length=23), train_dataset=dataset, processing_class=tiny_tokenizer
    )


def test_model_and_config_mismatches(tiny_causal_lm, tiny_tokenizer, tmp_path):
    def build(model, **kwargs):
        return RewardConditionedTrainer(
            model, make_args(tmp_path, **kwargs), train_dataset=make_dataset(6), processing_class=tiny_tokenizer
        )

    two_rewards = RewardConditionedCausalLM.from_base(tiny_causal_lm(), num_rewards=2)
    with pytest.raises(ValueError, match="expects 2 reward"):
        build(two_rewards)
    prefix = RewardConditionedCausalLM.from_base(tiny_causal_lm())
    with pytest.raises(ValueError, match="reward_position"):
        build(prefix, reward_position="before_completion")
    with pytest.raises(ValueError, match="null reward"):
        build(prefix, reward_dropout=0.1)
    with pytest.raises(ValueError, match="same value in every row"):
        RewardConditionedTrainer(
            tiny_causal_lm(),
            make_args(tmp_path),
            train_dataset=make_dataset(4, [2.0] * 4),
            processing_class=tiny_tokenizer,
        )
    with pytest.raises(ValueError, match="eval dataset has 2 reward"):
        RewardConditionedTrainer(
            tiny_causal_lm(),
            make_args(tmp_path),
            train_dataset=make_dataset(4),
            eval_dataset=make_dataset(4, [[1.0, 2.0]] * 4),
            processing_class=tiny_tokenizer,
        )
    with pytest.raises(TypeError, match="RewardConditionedConfig"):
        from transformers import TrainingArguments

        RewardConditionedTrainer(
            tiny_causal_lm(),
            TrainingArguments(str(tmp_path)),
            train_dataset=make_dataset(4),
            processing_class=tiny_tokenizer,
        )


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"reward_dropout": 1.0}, "probability"),
        ({"reward_dropout": -0.1}, "probability"),
        ({"reward_position": "middle"}, "reward_position"),
        ({"max_length": 1}, "at least 2"),
        ({"reward_head_learning_rate": float("nan")}, "reward_head_learning_rate"),
        ({"reward_head_learning_rate": -1e-3}, "reward_head_learning_rate"),
    ],
)
def test_config_validation(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_args(tmp_path, **kwargs)


@pytest.mark.parametrize("model_kind", ["base model", "path", "reward-conditioned model"])
def test_same_seed_gives_bit_identical_weights(
    tiny_causal_lm, tiny_causal_lm_path, tiny_tokenizer, tmp_path, model_kind
):
    def run(global_seed):
        model = {
            "base model": tiny_causal_lm,
            "path": lambda: tiny_causal_lm_path,
            "reward-conditioned model": lambda: RewardConditionedCausalLM.from_base(
                tiny_causal_lm(), use_null_reward=True
            ),
        }[model_kind]()
        torch.manual_seed(global_seed)  # whatever the script did before: only `args.seed` may matter
        args = make_args(tmp_path, max_steps=3, learning_rate=1e-2, reward_dropout=0.3, seed=7)
        trainer = RewardConditionedTrainer(
            model, args, train_dataset=make_dataset(12), processing_class=tiny_tokenizer
        )
        trainer.train()
        return trainer.model.state_dict(), [log["loss"] for log in trainer.state.log_history if "loss" in log]

    (first, first_losses), (second, second_losses) = run(1), run(2)
    assert first_losses == second_losses
    assert first.keys() == second.keys()
    for name, tensor in first.items():
        assert torch.equal(tensor, second[name]), name


def test_resume_from_checkpoint_matches_uninterrupted_run(tiny_causal_lm, tiny_tokenizer, tmp_path):
    def run(output_dir, max_steps, **kwargs):
        # A constant learning rate, so that the 2-step run reaches its checkpoint in the state of the 4-step run
        args = make_args(
            tmp_path,
            output_dir=str(output_dir),
            max_steps=max_steps,
            learning_rate=1e-2,
            lr_scheduler_type="constant",
            **kwargs,
        )
        trainer = RewardConditionedTrainer(
            tiny_causal_lm(), args, train_dataset=make_dataset(12), processing_class=tiny_tokenizer
        )
        return trainer

    straight = run(tmp_path / "straight", 4)
    straight.train()
    interrupted = run(tmp_path / "resumed", 2, save_strategy="steps", save_steps=2)
    interrupted.train()
    resumed = run(tmp_path / "resumed", 4, save_strategy="steps", save_steps=2)
    resumed.train(resume_from_checkpoint=str(tmp_path / "resumed" / "checkpoint-2"))
    for (name, param), expected in zip(resumed.model.named_parameters(), straight.model.parameters(), strict=True):
        torch.testing.assert_close(param, expected, msg=name)


def test_resume_true_skips_an_incomplete_last_checkpoint(tiny_causal_lm, tiny_tokenizer, tmp_path, caplog):
    def trainer(max_steps):
        args = make_args(tmp_path, max_steps=max_steps, save_strategy="steps", save_steps=2)
        return RewardConditionedTrainer(
            tiny_causal_lm(), args, train_dataset=make_dataset(12), processing_class=tiny_tokenizer
        )

    output_dir = tmp_path / "out"
    with pytest.raises(ValueError, match="has no complete checkpoint"):
        trainer(4).train(resume_from_checkpoint=True)
    trainer(2).train()
    # Left by processes killed while writing: an empty folder, and one with weights but no trainer state
    (output_dir / "checkpoint-4").mkdir()
    (output_dir / "checkpoint-6").mkdir()
    (output_dir / "checkpoint-6" / "config.json").write_text("{}")
    resumed = trainer(4)
    steps = []
    resumed.add_callback(
        type("Steps", (TrainerCallback,), {"on_step_end": lambda *a, **k: steps.append(a[2].global_step)})
    )
    with caplog.at_level("WARNING"):
        resumed.train(resume_from_checkpoint=True)
    assert "checkpoint-4" in caplog.text and "checkpoint-6" in caplog.text and "checkpoint-2" in caplog.text
    assert steps == [3, 4], "the run did not resume from checkpoint-2"


def test_reward_head_learning_rate_groups_schedule_and_resume(tiny_causal_lm, tiny_tokenizer, tmp_path):
    def trainer(output_dir):
        args = make_args(
            tmp_path,
            output_dir=str(output_dir),
            max_steps=4,
            learning_rate=1e-3,
            reward_head_learning_rate=1e-2,
            weight_decay=0.1,
            lr_scheduler_type="linear",
            reward_dropout=0.5,  # a null reward, in the head's groups too
            save_strategy="steps",
            save_steps=2,
        )
        return RewardConditionedTrainer(
            tiny_causal_lm(), args, train_dataset=make_dataset(12), processing_class=tiny_tokenizer
        )

    straight = trainer(tmp_path / "run")
    lrs = []
    straight.add_callback(
        type(
            "Lrs",
            (TrainerCallback,),
            {"on_step_end": lambda *a, **k: lrs.append([g["lr"] for g in k["optimizer"].param_groups])},
        )
    )
    straight.train()
    names = {id(param): name for name, param in straight.model.named_parameters()}
    groups = [({names[id(p)] for p in group["params"]}, group) for group in straight.optimizer.param_groups]
    head = {"reward_head.linear.weight", "reward_head.linear.bias", "reward_head.null_reward"}
    # Trainer's decay / no-decay groups, then the head's share of each, at the head's rate, same weight decay
    assert [group["weight_decay"] for _, group in groups] == [0.1, 0.0, 0.1, 0.0]
    assert groups[2][0] | groups[3][0] == head and not head & (groups[0][0] | groups[1][0])
    assert "reward_head.linear.bias" in groups[3][0]
    assert [group["initial_lr"] for _, group in groups] == [1e-3, 1e-3, 1e-2, 1e-2]
    # The linear schedule scales every group alike: 3/4, 2/4, 1/4, 0 of the initial rates
    for step, step_lrs in enumerate(lrs, start=1):
        factor = (4 - step) / 4
        assert step_lrs == pytest.approx([1e-3 * factor] * 2 + [1e-2 * factor] * 2)

    # Interrupted after checkpoint-2: resuming reloads the groups, their rates and the schedule
    saved = torch.load(tmp_path / "run" / "checkpoint-2" / "optimizer.pt", weights_only=True)
    assert [group["lr"] for group in saved["param_groups"]] == pytest.approx([5e-4, 5e-4, 5e-3, 5e-3])
    final = {name: param.detach().clone() for name, param in straight.model.named_parameters()}
    resumed = trainer(tmp_path / "run")
    resumed.train(resume_from_checkpoint=str(tmp_path / "run" / "checkpoint-2"))
    assert [g["lr"] for g in resumed.optimizer.param_groups] == [g["lr"] for _, g in groups]
    for name, param in resumed.model.named_parameters():
        torch.testing.assert_close(param, final[name], msg=name)


def test_reward_head_learning_rate_with_a_given_optimizer_is_refused(tiny_causal_lm, tiny_tokenizer, tmp_path):
    model = tiny_causal_lm()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="an optimizer was passed"):
        RewardConditionedTrainer(
            model,
            make_args(tmp_path, reward_head_learning_rate=1e-2),
            train_dataset=make_dataset(4),
            processing_class=tiny_tokenizer,
            optimizers=(optimizer, None),
        )


def test_reward_head_learning_rate_with_a_layer_wise_optimizer_is_refused(tiny_causal_lm, tiny_tokenizer, tmp_path):
    # Layer-wise optimizers (GaLore's, LOMO) step inside gradient hooks: Trainer's optimizer holds no real parameters
    from transformers.trainer_pt_utils import LayerWiseDummyOptimizer

    trainer = RewardConditionedTrainer(
        tiny_causal_lm(),
        make_args(tmp_path, reward_head_learning_rate=1e-2),
        train_dataset=make_dataset(4),
        processing_class=tiny_tokenizer,
    )
    trainer.get_optimizer_cls_and_kwargs = lambda args, model=None: (LayerWiseDummyOptimizer, {"optimizer_dict": {}})
    with pytest.raises(ValueError, match=r"holds? the reward head's parameters.*LayerWiseDummyOptimizer"):
        trainer.create_optimizer()


def test_reward_head_learning_rate_with_peft(tiny_causal_lm, tiny_tokenizer, tmp_path):
    from peft import LoraConfig

    args = make_args(tmp_path, max_steps=1, learning_rate=1e-3, reward_head_learning_rate=1e-2)
    trainer = RewardConditionedTrainer(
        tiny_causal_lm(),
        args,
        train_dataset=make_dataset(8),
        processing_class=tiny_tokenizer,
        peft_config=LoraConfig(r=4, lora_alpha=8, target_modules=["c_attn"], lora_dropout=0.0),
    )
    trainer.train()
    names = {id(param): name for name, param in trainer.model.named_parameters()}
    by_lr = {}
    for group in trainer.optimizer.param_groups:
        by_lr.setdefault(group["initial_lr"], set()).update(names[id(p)] for p in group["params"])
    assert by_lr[1e-2] and all("reward_head.modules_to_save" in name for name in by_lr[1e-2])
    assert by_lr[1e-3] and all("lora_" in name for name in by_lr[1e-3])


# ---------------------------------------------------------------------------------------------------------------
# Checkpoints: the model's standard layout lets Trainer's own features work
# ---------------------------------------------------------------------------------------------------------------


def _checkpoints(output_dir):
    return sorted((path.name for path in output_dir.glob("checkpoint-*")), key=lambda name: int(name.split("-")[1]))


def _assert_same_weights(model, path):
    saved = RewardConditionedCausalLM.from_pretrained(str(path)).state_dict()
    state = model.state_dict()
    assert saved.keys() == state.keys()
    for name, tensor in state.items():
        assert torch.equal(tensor, saved[name]), name


def test_load_best_model_at_end_reloads_the_best_checkpoint(tiny_causal_lm, tiny_tokenizer, tmp_path, caplog):
    # "Best" is the highest eval loss, so the best checkpoint is an early one, not the last weights
    args = make_args(
        tmp_path,
        max_steps=4,
        learning_rate=5e-2,
        lr_scheduler_type="constant",
        save_strategy="steps",
        save_steps=1,
        eval_strategy="steps",
        eval_steps=1,
        load_best_model_at_end=True,
        metric_for_best_model="eval_loss",
        greater_is_better=True,
        per_device_eval_batch_size=8,
    )
    dataset = make_dataset(8)
    trainer = RewardConditionedTrainer(
        tiny_causal_lm(), args, train_dataset=dataset, eval_dataset=dataset, processing_class=tiny_tokenizer
    )
    with caplog.at_level("WARNING"):
        trainer.train()
    assert "Could not locate the best model" not in caplog.text
    best = trainer.state.best_model_checkpoint
    assert best is not None and not best.endswith("checkpoint-4")
    _assert_same_weights(trainer.model, best)


def test_save_total_limit_keeps_whole_loadable_checkpoints(tiny_causal_lm, tiny_tokenizer, tmp_path):
    args = make_args(tmp_path, max_steps=3, save_strategy="steps", save_steps=1, save_total_limit=1)
    trainer = RewardConditionedTrainer(
        tiny_causal_lm(), args, train_dataset=make_dataset(8), processing_class=tiny_tokenizer
    )
    trainer.train()
    output_dir = tmp_path / "out"
    assert _checkpoints(output_dir) == ["checkpoint-3"]
    assert not [path.name for path in output_dir.iterdir() if path.name.startswith(".")], "staging folders left"
    _assert_same_weights(trainer.model, output_dir / "checkpoint-3")


@pytest.mark.parametrize("hub_strategy", ["every_save", "checkpoint", "all_checkpoints", "end"])
def test_hub_pushes_contain_the_weights(tiny_causal_lm, tiny_tokenizer, tmp_path, monkeypatch, hub_strategy):
    import concurrent.futures
    import types

    import huggingface_hub
    import transformers.trainer

    uploads = []  # (path_in_repo, files), recorded when the upload is requested; nothing leaves the machine

    def upload_folder(*args, folder_path, path_in_repo=None, run_as_future=False, **kwargs):
        files = sorted(str(path.relative_to(folder_path)) for path in Path(folder_path).rglob("*") if path.is_file())
        uploads.append((path_in_repo, files))
        if not run_as_future:
            return None
        future = concurrent.futures.Future()
        future.set_result(None)
        return future

    def create_repo(repo_id, *args, **kwargs):
        return types.SimpleNamespace(repo_id=repo_id)

    for name, fake in (("upload_folder", upload_folder), ("create_repo", create_repo)):
        monkeypatch.setattr(
            huggingface_hub.HfApi, name, lambda self, *args, fake=fake, **kwargs: fake(*args, **kwargs)
        )
        monkeypatch.setattr(transformers.trainer, name, fake, raising=False)  # transformers 4.x imports the functions
    monkeypatch.setattr(RewardConditionedTrainer, "create_model_card", lambda self, *args, **kwargs: None)

    args = make_args(
        tmp_path,
        max_steps=2,
        save_strategy="steps",
        save_steps=1,
        push_to_hub=True,
        hub_model_id="user/rc-model",
        hub_strategy=hub_strategy,
    )
    trainer = RewardConditionedTrainer(
        tiny_causal_lm(), args, train_dataset=make_dataset(8), processing_class=tiny_tokenizer
    )
    trainer.train()
    if hub_strategy == "end":
        assert uploads == []
        trainer.push_to_hub()
    assert uploads
    for path_in_repo, files in uploads:
        assert "model.safetensors" in files and "config.json" in files, (path_in_repo, files)
    if hub_strategy in ("checkpoint", "all_checkpoints"):
        assert any(path_in_repo is not None for path_in_repo, _ in uploads), "no checkpoint folder was pushed"
