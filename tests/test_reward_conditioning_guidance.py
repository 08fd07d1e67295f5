"""Classifier-free guidance on the reward in `RewardConditionedCausalLM.generate`.

The identities: `guidance_scale=1` is plain conditioned generation, `guidance_scale=0` is generation under the null
(or contrast) reward; the guided scores equal the mix `null + w * (cond - null)` of log-softmaxed scores computed by
hand; cached equals recomputed; batched equals one row at a time; beam search and sampling work.
"""

import copy
import os

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st


os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

from trl.experimental.reward_conditioning import RewardConditionedCausalLM


PAD, BOS, EOS = 0, 1, 2


KEYS = [(arch, position) for arch in ("gpt2", "llama") for position in ("prefix", "before_completion")]


def guided_model(base, position, use_null_reward=True):
    model = RewardConditionedCausalLM.from_base(base, reward_position=position, use_null_reward=use_null_reward)
    with torch.no_grad():
        torch.manual_seed(1)
        model.reward_head.linear.weight.normal_(std=2.0)
        if use_null_reward:
            model.reward_head.null_reward.fill_(-1.5)
    return model.eval()


@pytest.fixture(scope="session")
def models(tiny_causal_lm):
    """One tiny model with a null reward per (architecture, reward position)."""
    base = {
        arch: tiny_causal_lm(arch, attn_implementation="eager", initializer_range=0.2) for arch in ("gpt2", "llama")
    }
    return {(arch, position): guided_model(copy.deepcopy(base[arch]), position) for arch, position in KEYS}


@st.composite
def prompts(draw):
    rows = draw(st.lists(st.lists(st.integers(3, 63), min_size=1, max_size=5), min_size=1, max_size=3))
    width = max(map(len, rows)) + draw(st.integers(0, 2))
    input_ids = torch.full((len(rows), width), PAD)
    attention_mask = torch.zeros_like(input_ids)
    for i, row in enumerate(rows):
        input_ids[i, width - len(row) :] = torch.tensor(row)
        attention_mask[i, width - len(row) :] = 1
    rewards = torch.tensor(draw(st.lists(st.floats(-3, 3, width=32), min_size=len(rows), max_size=len(rows))))
    return rows, input_ids, attention_mask, rewards


# Each example runs several generations of two models: at most 25 examples keep the CI run in its time budget.
FEW = settings(max_examples=min(settings.default.max_examples, 25))

GREEDY = {"max_new_tokens": 4, "min_new_tokens": 4, "do_sample": False, "pad_token_id": PAD}


@FEW
@given(key=st.sampled_from(KEYS), case=prompts())
def test_scale_one_is_plain_and_scale_zero_is_the_null_reward(key, case, models):
    model = models[key]
    _, input_ids, attention_mask, rewards = case
    options = {**GREEDY, "repetition_penalty": 1.3}
    plain = model.generate(input_ids, attention_mask=attention_mask, rewards=rewards, **options)
    one = model.generate(input_ids, attention_mask=attention_mask, rewards=rewards, guidance_scale=1.0, **options)
    assert torch.equal(one, plain)
    null = model.generate(input_ids, attention_mask=attention_mask, **options)
    zero = model.generate(input_ids, attention_mask=attention_mask, rewards=rewards, guidance_scale=0.0, **options)
    assert torch.equal(zero, null)
    # A contrast reward in place of the null one
    contrast = model.generate(input_ids, attention_mask=attention_mask, rewards=-rewards, **options)
    zero = model.generate(
        input_ids,
        attention_mask=attention_mask,
        rewards=rewards,
        negative_rewards=-rewards,
        guidance_scale=0.0,
        **options,
    )
    assert torch.equal(zero, contrast)


@FEW
@given(key=st.sampled_from(KEYS), case=prompts(), scale=st.floats(0.0, 4.0))
def test_guided_scores_are_the_mix_cached_equals_recomputed_and_batched_equals_single(key, case, scale, models):
    model = models[key]
    rows, input_ids, attention_mask, rewards = case
    kwargs = {"attention_mask": attention_mask, "rewards": rewards, "guidance_scale": scale, **GREEDY}
    out = model.generate(input_ids, output_scores=True, return_dict_in_generate=True, **kwargs)
    recomputed = model.generate(input_ids, use_cache=False, **kwargs)
    assert torch.equal(out.sequences, recomputed)

    # The mix by hand, from full forwards without cache
    width = input_ids.shape[1]
    extra = {"prompt_lengths": attention_mask.sum(1)} if key[1] == "before_completion" else {}
    mask = torch.cat([attention_mask, torch.ones(len(rows), 4, dtype=torch.long)], dim=1)
    with torch.no_grad():
        cond = model(out.sequences, attention_mask=mask, rewards=rewards, **extra).logits[:, width - 1 : -1]
        null = model(out.sequences, attention_mask=mask, **extra).logits[:, width - 1 : -1]
    mixed = null.log_softmax(-1) + scale * (cond.log_softmax(-1) - null.log_softmax(-1))  # (B, 4, V)
    scores = torch.stack(out.scores, dim=1)  # (B, 4, V), after min_new_tokens banned EOS
    finite = torch.isfinite(scores)
    torch.testing.assert_close(
        scores.log_softmax(-1)[finite],
        mixed.index_fill(-1, torch.tensor([EOS]), -float("inf")).log_softmax(-1)[finite],
        atol=1e-4,
        rtol=0,
    )

    for i, row in enumerate(rows):
        alone = model.generate(torch.tensor([row]), rewards=rewards[i : i + 1], guidance_scale=scale, **GREEDY)
        assert alone[0, len(row) :].tolist() == out.sequences[i, width:].tolist()


@FEW
@given(key=st.sampled_from(KEYS), case=prompts(), num_beams=st.integers(2, 3))
def test_beam_search_cached_equals_recomputed(key, case, num_beams, models):
    model = models[key]
    rows, input_ids, attention_mask, rewards = case
    kwargs = {"num_beams": num_beams, "num_return_sequences": 2, "guidance_scale": 2.5, "repetition_penalty": 1.2}
    kwargs.update(attention_mask=attention_mask, rewards=rewards, **GREEDY)
    cached = model.generate(input_ids, **kwargs)
    assert torch.equal(cached, model.generate(input_ids, use_cache=False, **kwargs))
    # Batched equals single without the repetition penalty, which also penalizes the padding tokens of a batch
    del kwargs["repetition_penalty"]
    cached = model.generate(input_ids, **kwargs)
    for i, row in enumerate(rows):
        kwargs.update(attention_mask=None, rewards=rewards[i : i + 1])
        alone = model.generate(torch.tensor([row]), **kwargs)
        assert alone[:, len(row) :].tolist() == cached[2 * i : 2 * i + 2, input_ids.shape[1] :].tolist()


def test_sampling_cached_equals_recomputed(models):
    model = models[("llama", "prefix")]
    input_ids = torch.tensor([[0, 5, 6], [7, 8, 9]])
    kwargs = {"attention_mask": (input_ids != PAD).long(), "rewards": torch.tensor([2.0, -2.0]), "guidance_scale": 3.0}
    kwargs.update(
        do_sample=True, top_k=20, temperature=0.8, max_new_tokens=6, num_return_sequences=2, pad_token_id=PAD
    )
    torch.manual_seed(0)
    cached = model.generate(input_ids, **kwargs)
    torch.manual_seed(0)
    assert torch.equal(cached, model.generate(input_ids, use_cache=False, **kwargs))


def test_guidance_errors(models, tiny_causal_lm):
    model = models[("gpt2", "prefix")]
    with pytest.raises(ValueError, match=">= 0"):
        model.generate(torch.tensor([[5, 6]]), rewards=torch.ones(1), guidance_scale=-1.0, max_new_tokens=1)
    no_null = guided_model(tiny_causal_lm("gpt2"), "prefix", use_null_reward=False)
    with pytest.raises(ValueError, match="use_null_reward=False"):
        no_null.generate(torch.tensor([[5, 6]]), rewards=torch.ones(1), guidance_scale=2.0, max_new_tokens=1)
    # With a contrast reward, no null reward is needed
    no_null.generate(
        torch.tensor([[5, 6]]),
        rewards=torch.ones(1),
        negative_rewards=-torch.ones(1),
        guidance_scale=2.0,
        max_new_tokens=1,
    )
