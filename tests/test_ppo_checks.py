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

"""`PPOConfig.critic_learning_rate`, and the PPO inputs that must be refused before (or instead of) training on them:
a right-padding tokenizer, a reward model that returns NaN, a NaN critic in `predict_prompt_values`, a critic warm-up
that covers every update, a tokenizer larger than a model's embeddings."""

import copy

import pytest
import torch
from datasets import Dataset
from transformers import AutoModelForSequenceClassification

from trl.experimental.ppo import PPOConfig, PPOTrainer, predict_prompt_values


PROMPTS = ["The movie", "A terrible film", "I loved every", "Boring, slow", "The director", "One of the best"] * 2
BATCH = 4


@pytest.fixture
def build(tiny_tokenizer, tiny_causal_lm, tiny_config, tmp_path):
    """`build(updates=2, tokenizer=..., policy=..., critic=..., reward_model=..., optimizers=..., **config)`: a
    `PPOTrainer` on the tiny GPT-2 models (policy seed 0, critic seed 1, reward model seed 2)."""

    def critic(seed, **overrides):
        torch.manual_seed(seed)
        return AutoModelForSequenceClassification.from_config(tiny_config(num_labels=1, **overrides))

    def make(
        updates=2,
        tokenizer=tiny_tokenizer,
        policy=None,
        critic_model=None,
        reward_model=None,
        optimizers=(None, None),
        output_dir=None,
        **config_kwargs,
    ):
        config_kwargs = {
            "learning_rate": 1e-3,
            "seed": 0,
            "save_strategy": "no",
            **config_kwargs,
        }
        args = PPOConfig(
            output_dir=str(output_dir or tmp_path / "run"),
            bf16=False,
            gradient_checkpointing=False,
            num_sample_generations=0,
            report_to="none",
            disable_tqdm=True,
            response_length=3,
            per_device_train_batch_size=BATCH,
            local_rollout_forward_batch_size=BATCH,
            total_episodes=updates * BATCH,
            num_ppo_epochs=1,
            **config_kwargs,
        )
        dataset = Dataset.from_dict({"input_ids": [tiny_tokenizer(prompt)["input_ids"] for prompt in PROMPTS]})
        return PPOTrainer(
            args=args,
            processing_class=tokenizer,
            model=policy if policy is not None else tiny_causal_lm(seed=0),
            ref_model=tiny_causal_lm(seed=0),
            reward_model=reward_model if reward_model is not None else critic(2),
            train_dataset=dataset,
            value_model=critic_model if critic_model is not None else critic(1),
            optimizers=optimizers,
        )

    make.critic = critic
    return make


def parts(trainer):
    wrapper = trainer.accelerator.unwrap_model(trainer.model)
    return wrapper, wrapper.policy, wrapper.value_model


def snapshot(module):
    return {name: tensor.detach().clone() for name, tensor in module.state_dict().items()}


def changed(module, before):
    return [name for name, tensor in module.state_dict().items() if not torch.equal(tensor, before[name])]


# 1. `critic_learning_rate`


@pytest.mark.parametrize("optim", ["adamw_torch", "sgd"])
def test_critic_learning_rate_groups_keep_optim_and_no_decay_list(build, optim):
    trainer = build(learning_rate=1e-4, critic_learning_rate=3e-3, weight_decay=0.1, optim=optim)
    wrapper, _, critic = parts(trainer)
    optimizer = trainer.optimizer.optimizer  # the torch optimizer inside Accelerate's wrapper
    assert type(optimizer) is {"adamw_torch": torch.optim.AdamW, "sgd": torch.optim.SGD}[optim]
    decay = set(trainer.get_decay_parameter_names(wrapper))
    name_of = {id(param): name for name, param in wrapper.named_parameters()}
    critic_ids = {id(param) for param in critic.parameters()}
    seen = set()
    for group in optimizer.param_groups:
        for param in group["params"]:
            name = name_of[id(param)]
            seen.add(name)
            assert group["initial_lr"] == (3e-3 if id(param) in critic_ids else 1e-4), name
            assert group["weight_decay"] == (0.1 if name in decay else 0.0), name
    assert seen == set(name_of.values())  # every trainable parameter
    assert any(name.startswith("value_model.") and name not in decay for name in seen)  # a critic bias, no decay
    assert any(name.startswith("value_model.") and name in decay for name in seen)
    # the scheduler scales the two learning rates alike
    trainer.lr_scheduler.step()
    ratios = {round(group["lr"] / group["initial_lr"], 12) for group in optimizer.param_groups}
    assert len(ratios) == 1 and ratios != {1.0}


def test_without_critic_learning_rate_critic_shares_the_policy_groups(build):
    trainer = build(learning_rate=1e-4, weight_decay=0.1)
    assert [group["initial_lr"] for group in trainer.optimizer.param_groups] == [1e-4, 1e-4]


def test_critic_learning_rate_is_the_only_rate_that_moves_the_critic(build):
    trainer = build(updates=1, learning_rate=0.0, critic_learning_rate=1e-2)
    _, policy, critic = parts(trainer)
    policy_before, critic_before = snapshot(policy), snapshot(critic)
    trainer.train()
    assert changed(policy, policy_before) == []
    assert changed(critic, critic_before) != []


def test_critic_learning_rate_trains_as_a_hand_built_optimizer_with_a_critic_group(build, tiny_causal_lm):
    """What `demo/critic.py` did before the field existed: AdamW with a policy group and a critic group."""
    policy, critic = tiny_causal_lm(seed=0), build.critic(1)
    optimizer = torch.optim.AdamW(
        [{"params": policy.parameters(), "lr": 1e-4}, {"params": critic.parameters(), "lr": 3e-3}], weight_decay=0.0
    )
    by_hand = build(policy=policy, critic_model=critic, optimizers=(optimizer, None), learning_rate=1e-4)
    by_hand.train()
    by_field = build(learning_rate=1e-4, critic_learning_rate=3e-3, optim="adamw_torch", weight_decay=0.0)
    by_field.train()
    for hand_part, field_part in zip(parts(by_hand)[1:], parts(by_field)[1:], strict=True):
        assert changed(field_part, snapshot(hand_part)) == []  # bit for bit


def test_critic_learning_rate_is_logged_beside_the_policy_rate(build):
    trainer = build(updates=3, learning_rate=1e-4, critic_learning_rate=3e-3, logging_steps=1)
    trainer.train()
    logs = [entry for entry in trainer.state.log_history if "lr" in entry]
    assert len(logs) == 3
    for entry in logs:  # the scheduler scales both alike
        assert entry["critic_lr"] == pytest.approx(entry["lr"] * 30, rel=1e-9)
    assert logs[0]["critic_lr"] != logs[-1]["critic_lr"]
    plain = build(updates=1, learning_rate=1e-4, logging_steps=1)
    plain.train()
    assert [entry for entry in plain.state.log_history if "lr" in entry and "critic_lr" not in entry] != []
    assert [entry for entry in plain.state.log_history if "critic_lr" in entry] == []  # no field, no extra entry


def test_critic_learning_rate_is_restored_on_resume(build, tmp_path):
    config = dict(
        learning_rate=1e-3, critic_learning_rate=2e-2, save_value_model=True, save_strategy="steps", save_steps=2
    )
    uninterrupted = build(updates=4, output_dir=tmp_path / "full", **config)
    uninterrupted.train()
    resumed = build(updates=4, output_dir=tmp_path / "resumed", **config)
    resumed.train(resume_from_checkpoint=str(tmp_path / "full" / "checkpoint-2"))
    for trained, resumed_part in zip(parts(uninterrupted)[1:], parts(resumed)[1:], strict=True):
        expected = snapshot(trained)
        for name, tensor in resumed_part.state_dict().items():
            torch.testing.assert_close(tensor, expected[name], rtol=0, atol=1e-6, msg=name)
    lrs = [(group["initial_lr"], group["lr"]) for group in uninterrupted.optimizer.param_groups]
    assert [(group["initial_lr"], group["lr"]) for group in resumed.optimizer.param_groups] == lrs
    assert {initial_lr for initial_lr, _ in lrs} == {1e-3, 2e-2}


def test_critic_learning_rate_with_an_own_optimizer_is_refused(build, tiny_causal_lm):
    policy = tiny_causal_lm(seed=0)
    optimizer = torch.optim.AdamW(policy.parameters(), lr=1e-3)
    with pytest.raises(ValueError, match="optimizer was passed in `optimizers`"):
        build(policy=policy, optimizers=(optimizer, None), critic_learning_rate=1e-3)


@pytest.mark.parametrize("critic_learning_rate", [-1e-3, float("nan"), float("inf")])
def test_negative_or_non_finite_critic_learning_rate_is_refused(tmp_path, critic_learning_rate):
    with pytest.raises(ValueError, match="`critic_learning_rate` must be a finite number >= 0 or `None`"):
        PPOConfig(output_dir=str(tmp_path), bf16=False, critic_learning_rate=critic_learning_rate)


# 2. right padding


def test_right_padding_tokenizer_is_refused(build, tiny_tokenizer):
    tokenizer = copy.deepcopy(tiny_tokenizer)
    tokenizer.padding_side = "right"
    with pytest.raises(ValueError, match=r"expected `padding_side='left'`, found `padding_side='right'`"):
        build(tokenizer=tokenizer)


# 3. a reward model that returns NaN


def test_nan_reward_stops_at_the_first_update_and_names_the_reward_model(build):
    reward_model = build.critic(2)
    reward_model.config.name_or_path = "path/to/broken-reward-model"
    with torch.no_grad():
        reward_model.score.weight.fill_(float("nan"))
    trainer = build(reward_model=reward_model)
    _, policy, critic = parts(trainer)
    policy_before, critic_before = snapshot(policy), snapshot(critic)
    with pytest.raises(
        ValueError, match=r"GPT2ForSequenceClassification from 'path/to/broken-reward-model'.*update 1 of 2"
    ):
        trainer.train()
    assert changed(policy, policy_before) == [] and changed(critic, critic_before) == []
    assert trainer.state.global_step == 0


# 4. `predict_prompt_values` with a NaN critic


def test_predict_prompt_values_refuses_a_nan_critic(build, tiny_tokenizer):
    critic = build.critic(1)
    assert all(torch.isfinite(torch.tensor(predict_prompt_values(critic, tiny_tokenizer, PROMPTS[:3]))))
    with torch.no_grad():
        critic.score.weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"non-finite value \(nan\) for prompt 0 \('The movie'\)"):
        predict_prompt_values(critic, tiny_tokenizer, PROMPTS[:3])


# 5. a critic warm-up as long as training


@pytest.mark.parametrize("warmup", [2, 3])
def test_critic_warmup_covering_every_update_is_refused(build, warmup):
    with pytest.raises(ValueError, match=rf"`critic_warmup_steps` \({warmup}\) must be smaller .* \(2 = "):
        build(updates=2, critic_warmup_steps=warmup)


def test_critic_warmup_shorter_than_training_is_accepted(build):
    build(updates=2, critic_warmup_steps=1)


# 6. a tokenizer larger than a model's embeddings


@pytest.mark.parametrize("which", ["policy", "critic_model", "reward_model"])
def test_tokenizer_larger_than_embeddings_is_refused(build, tiny_causal_lm, tiny_tokenizer, which):
    vocab_size = len(tiny_tokenizer) - 4
    small = tiny_causal_lm(vocab_size=vocab_size) if which == "policy" else build.critic(1, vocab_size=vocab_size)
    name = {"policy": "model", "critic_model": "value_model", "reward_model": "reward_model"}[which]
    match = rf"tokenizer has {len(tiny_tokenizer)} tokens, but `{name}` .* embeds only {vocab_size} token ids"
    with pytest.raises(ValueError, match=match):
        build(**{which: small})
