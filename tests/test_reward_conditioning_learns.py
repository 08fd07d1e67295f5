"""End to end: `RewardConditionedTrainer` teaches a tiny model to follow the reward.

The data make the completion a function of the reward's sign, so a model that reads its reward input can predict it
and one that ignores it cannot do better than a coin flip. After training, the first completion token the model
prefers must follow the target: positive words for a positive target, negative words for a negative one, also for a
target above anything seen in training.
"""

import random

import pytest
import torch
from datasets import Dataset

from trl.experimental.reward_conditioning import (
    RewardConditionedCausalLM,
    RewardConditionedConfig,
    RewardConditionedTrainer,
)


POSITIVE, NEGATIVE = " great wonderful loved", " awful boring terrible"


@pytest.mark.parametrize("reward_position", ["prefix", "before_completion"])
def test_trained_model_follows_the_target(reward_position, tiny_causal_lm, tiny_tokenizer, tmp_path):
    rng = random.Random(0)
    rewards = [rng.uniform(-1, 1) for _ in range(512)]
    dataset = Dataset.from_list(
        [{"prompt": "The movie was", "completion": POSITIVE if r > 0 else NEGATIVE, "reward": r} for r in rewards]
    )
    model = RewardConditionedCausalLM.from_base(tiny_causal_lm(n_embd=64), reward_position=reward_position)
    args = RewardConditionedConfig(
        output_dir=str(tmp_path),
        per_device_train_batch_size=32,
        num_train_epochs=3,
        learning_rate=3e-3,
        report_to="none",
        save_strategy="no",
        bf16=False,
        use_cpu=True,
        disable_tqdm=True,
    )
    trainer = RewardConditionedTrainer(model=model, args=args, train_dataset=dataset, processing_class=tiny_tokenizer)
    trainer.train()

    model = trainer.model.eval()
    prompt = tiny_tokenizer(["The movie was"] * 3, return_tensors="pt")
    great = tiny_tokenizer(POSITIVE)["input_ids"][0]
    awful = tiny_tokenizer(NEGATIVE)["input_ids"][0]
    targets = torch.tensor([-1.0, 1.0, 3.0])  # 3.0: far above the training maximum
    with torch.no_grad():
        inputs, _ = model.prepare_conditioned_inputs(
            prompt["input_ids"],
            prompt["attention_mask"],
            rewards=targets,
            prompt_lengths=prompt["attention_mask"].sum(1) if reward_position == "before_completion" else None,
        )
        next_token = model.model(**inputs).logits[:, -1].log_softmax(-1)  # (3, V): the first completion token
    margin = next_token[:, great] - next_token[:, awful]  # > 0: prefers the positive word
    assert margin[0] < -1.0 and margin[1] > 1.0 and margin[2] > 1.0, margin.tolist()
    generated = model.generate(
        prompt["input_ids"], attention_mask=prompt["attention_mask"], rewards=targets, max_new_tokens=6
    )
    texts = tiny_tokenizer.batch_decode(generated[:, prompt["input_ids"].shape[1] :])
    assert texts[0].startswith(" awful") and texts[1].startswith(" great") and texts[2].startswith(" great"), texts
