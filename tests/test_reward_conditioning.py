"""Conformance tests for `trl.experimental.reward_conditioning`.

The reference for every property is a manual construction written here from the definition: the base model fed one
unpadded row as `[token embeddings before the reward; reward embedding; token embeddings after]` with explicit
positions `0..L`. Models are tiny (2 layers, 32 hidden) fp32 GPT-2, GPT-J (eager only), Llama and GPT-NeoX, built
from configs with the installed transformers. Nothing here imports PPO code, so it also runs on trl 1.16.0 with only
the reward-conditioning patch.
"""

import functools
import json
import os
from pathlib import Path

import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st
from safetensors import safe_open
from safetensors.torch import save_file


os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    GPT2LMHeadModel,
    LogitsProcessorList,
    MinNewTokensLengthLogitsProcessor,
    NoRepeatNGramLogitsProcessor,
    RepetitionPenaltyLogitsProcessor,
)

from trl.experimental.reward_conditioning import (
    RewardConditionedCausalLM,
    RewardConditionedCausalLMConfig,
)
from trl.experimental.reward_conditioning.configuration_reward_conditioning import check_reward_stats


PAD, BOS, EOS = 0, 1, 2
VOCAB = 320  # the `tiny_tokenizer` fixture's vocabulary size (checked in `test_vocab_matches_tokenizer`)
ARCHS = [
    ("gpt2", "eager"),
    ("gpt2", "sdpa"),
    ("gptj", "eager"),
    ("llama", "eager"),
    ("llama", "sdpa"),
    ("gpt_neox", "eager"),
    ("gpt_neox", "sdpa"),
]
ATOL = 2e-5


@pytest.fixture(scope="session")
def make_base(tiny_causal_lm):
    """Factory: `make_base(arch, attn="eager", seed=0)`, the shared tiny base model in eval mode."""

    def build(arch="gpt2", attn="eager", seed=0):
        model = tiny_causal_lm(arch, seed=seed, attn_implementation=attn, vocab_size=VOCAB, initializer_range=0.2)
        return model.eval()

    return build


@pytest.fixture(scope="session")
def make_model(make_base):
    """Factory: a cached tiny reward-conditioned model in eval mode, with a reward head large enough to matter."""

    @functools.cache
    def build(arch, attn, reward_position="prefix", num_rewards=1, use_null_reward=False):
        return _make_model(make_base(arch, attn), reward_position, num_rewards, use_null_reward)

    return build


def _make_model(base, reward_position, num_rewards, use_null_reward):
    """A cached tiny reward-conditioned model in eval mode, with a reward head large enough to matter."""
    model = RewardConditionedCausalLM.from_base(
        base,
        num_rewards=num_rewards,
        reward_position=reward_position,
        reward_mean=[0.5 * (i + 1) for i in range(num_rewards)],
        reward_std=[2.0 + i for i in range(num_rewards)],
        use_null_reward=use_null_reward,
    )
    with torch.no_grad():
        torch.manual_seed(1)
        model.reward_head.linear.weight.normal_(std=1.0)
        model.reward_head.linear.bias.normal_(std=1.0)
        if use_null_reward:
            model.reward_head.null_reward.normal_()
    return model.eval()


# ---------------------------------------------------------------------------------------------------------------------
# Strategies and the manual reference


@st.composite
def batches(draw, reward_position="prefix", num_rewards=1, max_rows=3):
    """Rows of real tokens (some starting with BOS), their rewards and prompt lengths, plus padding choices."""
    num_rows = draw(st.integers(1, max_rows))
    rows, prompt_lengths = [], []
    for _ in range(num_rows):
        tokens = draw(st.lists(st.integers(3, VOCAB - 1), min_size=1, max_size=7))
        if draw(st.booleans()):
            tokens = [BOS] + tokens
        rows.append(tokens)
        prompt_lengths.append(draw(st.integers(0, len(tokens))) if reward_position == "before_completion" else 0)
    reward_values = st.floats(-10, 10, allow_nan=False, width=32)
    rewards = draw(
        st.lists(
            st.lists(reward_values, min_size=num_rewards, max_size=num_rewards), min_size=num_rows, max_size=num_rows
        )
    )
    return {
        "rows": rows,
        "rewards": torch.tensor(rewards),  # (B, R)
        "prompt_lengths": prompt_lengths,
        "padding_side": draw(st.sampled_from(["left", "right"])),
        "extra_padding": draw(st.integers(0, 3)),
    }


def pad_rows(rows, padding_side, extra_padding=0):
    """Pad lists of token ids into `(B, T)` ids and mask; also return each row's first real column."""
    width = max(len(row) for row in rows) + extra_padding
    input_ids = torch.full((len(rows), width), PAD)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    starts = []
    for i, row in enumerate(rows):
        start = width - len(row) if padding_side == "left" else 0
        input_ids[i, start : start + len(row)] = torch.tensor(row)
        attention_mask[i, start : start + len(row)] = 1
        starts.append(start)
    return input_ids, attention_mask, starts


def reward_index_in_row(model, tokens, prompt_length):
    """Where the reward goes among a row's real tokens, by definition."""
    if model.config.reward_position == "before_completion":
        return prompt_length
    return 1 if tokens[0] == BOS else 0


def manual_reward_embedding(model, reward):
    """`W @ ((r - mean) / std) + b`, written out."""
    mean = torch.tensor(model.config.reward_mean)
    std = torch.tensor(model.config.reward_std)
    linear = model.reward_head.linear
    return linear.weight @ ((reward - mean) / std) + linear.bias  # (H,)


@torch.no_grad()
def manual_logits(model, tokens, reward, prompt_length=0, reward_embedding=None):
    """Logits `(L, V)` of one unpadded row; entry t predicts token t + 1, from the extended sequence."""
    base = model.model
    ids = torch.tensor([tokens])
    embeds = base.get_input_embeddings()(ids)[0]  # (L, H)
    if reward_embedding is None:
        reward_embedding = manual_reward_embedding(model, reward)
    k = reward_index_in_row(model, tokens, prompt_length)
    extended = torch.cat([embeds[:k], reward_embedding[None], embeds[k:]])[None]  # (1, L + 1, H)
    positions = torch.arange(len(tokens) + 1)[None]
    logits = base(inputs_embeds=extended, position_ids=positions).logits[0]  # (L + 1, V)
    # Token t + 1 sits at extended index t + 1 + (t + 1 >= k); the output just before it predicts it.
    return torch.stack([logits[t + (t + 1 >= k)] for t in range(len(tokens))])


def batch_inputs(model, batch):
    input_ids, attention_mask, starts = pad_rows(batch["rows"], batch["padding_side"], batch["extra_padding"])
    kwargs = {"attention_mask": attention_mask, "rewards": batch["rewards"]}
    if model.config.reward_position == "before_completion":
        kwargs["prompt_lengths"] = torch.tensor(batch["prompt_lengths"])
    return input_ids, kwargs, starts


# ---------------------------------------------------------------------------------------------------------------------
# Properties


def test_vocab_matches_tokenizer(tiny_tokenizer):
    assert len(tiny_tokenizer) <= VOCAB
    assert (tiny_tokenizer.pad_token_id, tiny_tokenizer.bos_token_id, tiny_tokenizer.eos_token_id) == (PAD, BOS, EOS)


@given(arch=st.sampled_from(ARCHS), position=st.sampled_from(["prefix", "before_completion"]), data=st.data())
def test_padding_invariance(arch, position, data, make_model):
    """A row's logits are the same unpadded, left-padded, right-padded, alone or in a batch."""
    model = make_model(*arch, reward_position=position)
    batch = data.draw(batches(position))
    with torch.no_grad():
        for padding_side in ("left", "right"):
            padded = dict(batch, padding_side=padding_side)
            input_ids, kwargs, starts = batch_inputs(model, padded)
            logits = model(input_ids, **kwargs).logits
            for i, tokens in enumerate(batch["rows"]):
                alone = model(
                    torch.tensor([tokens]),
                    rewards=batch["rewards"][i : i + 1],
                    **({"prompt_lengths": torch.tensor([batch["prompt_lengths"][i]])} if position != "prefix" else {}),
                ).logits[0]
                in_batch = logits[i, starts[i] : starts[i] + len(tokens)]
                torch.testing.assert_close(in_batch, alone, atol=ATOL, rtol=0)


@given(position=st.sampled_from(["prefix", "before_completion"]), data=st.data())
def test_positions(position, data, make_model):
    """Real tokens' position ids are their index among attended tokens, plus one after the reward."""
    model = make_model("llama", "eager", reward_position=position)
    batch = data.draw(batches(position, max_rows=4))
    input_ids, kwargs, starts = batch_inputs(model, batch)
    inputs, reward_index = model.prepare_conditioned_inputs(input_ids, **kwargs)
    for i, tokens in enumerate(batch["rows"]):
        k = reward_index_in_row(model, tokens, batch["prompt_lengths"][i])
        assert reward_index[i] == starts[i] + k
        attended = inputs["attention_mask"][i].nonzero()[:, 0]
        assert len(attended) == len(tokens) + 1
        assert inputs["position_ids"][i, attended].tolist() == list(range(len(tokens) + 1))
        # The reward sits at position k; real token t at t, or t + 1 from the reward on.
        assert inputs["position_ids"][i, reward_index[i]] == k
        real_columns = [c for c in attended.tolist() if c != reward_index[i]]
        expected = [t + (t >= k) for t in range(len(tokens))]
        assert inputs["position_ids"][i, real_columns].tolist() == expected
        torch.testing.assert_close(
            inputs["inputs_embeds"][i, real_columns], model.model.get_input_embeddings()(torch.tensor(tokens))
        )


@given(
    arch=st.sampled_from(ARCHS),
    position=st.sampled_from(["prefix", "before_completion"]),
    num_rewards=st.sampled_from([1, 2]),
    data=st.data(),
)
def test_matches_manual_construction(arch, position, num_rewards, data, make_model):
    """The base model fed `[reward embedding; token embeddings]` with explicit positions gives the same logits."""
    model = make_model(*arch, reward_position=position, num_rewards=num_rewards)
    batch = data.draw(batches(position, num_rewards=num_rewards))
    input_ids, kwargs, starts = batch_inputs(model, batch)
    if num_rewards == 1 and data.draw(st.booleans()):
        kwargs["rewards"] = kwargs["rewards"][:, 0]  # (B,) is accepted for a scalar reward
    with torch.no_grad():
        logits = model(input_ids, **kwargs).logits
    assert logits.shape == (*input_ids.shape, VOCAB)
    for i, tokens in enumerate(batch["rows"]):
        expected = manual_logits(model, tokens, batch["rewards"][i], batch["prompt_lengths"][i])
        torch.testing.assert_close(logits[i, starts[i] : starts[i] + len(tokens)], expected, atol=ATOL, rtol=0)


def generation_case(data, position):
    rows = data.draw(st.lists(st.lists(st.integers(3, VOCAB - 1), min_size=1, max_size=6), min_size=1, max_size=3))
    rewards = torch.tensor(data.draw(st.lists(st.floats(-10, 10, width=32), min_size=len(rows), max_size=len(rows))))
    return rows, rewards


@given(arch=st.sampled_from(ARCHS), position=st.sampled_from(["prefix", "before_completion"]), data=st.data())
def test_cached_generation_matches_recomputation(arch, position, data, make_model):
    """Cached greedy generation equals full recomputation without cache, and batched equals single-row."""
    model = make_model(*arch, reward_position=position)
    rows, rewards = generation_case(data, position)
    input_ids, attention_mask, _ = pad_rows(rows, "left", data.draw(st.integers(0, 2)))
    new = 5
    out = model.generate(
        input_ids,
        attention_mask=attention_mask,
        rewards=rewards,
        max_new_tokens=new,
        min_new_tokens=new,
        do_sample=False,
        output_logits=True,
        return_dict_in_generate=True,
        pad_token_id=PAD,
    )
    sequences = out.sequences
    assert sequences.shape == (len(rows), input_ids.shape[1] + new)
    assert torch.equal(sequences[:, : input_ids.shape[1]], input_ids)
    step_logits = torch.stack(out.logits, dim=1)  # (B, new, V)

    # Full recomputation: one forward over prompt + new tokens, no cache.
    full_mask = torch.cat([attention_mask, torch.ones(len(rows), new, dtype=torch.long)], dim=1)
    kwargs = {"prompt_lengths": attention_mask.sum(1)} if position == "before_completion" else {}
    with torch.no_grad():
        full = model(sequences, attention_mask=full_mask, rewards=rewards, use_cache=False, **kwargs).logits
    recomputed = full[:, input_ids.shape[1] - 1 : -1]  # (B, new, V)
    torch.testing.assert_close(step_logits, recomputed, atol=1e-4, rtol=0)
    # `min_new_tokens` bans EOS from the processed scores; `output_logits` holds the raw ones.
    assert torch.equal(
        sequences[:, input_ids.shape[1] :], recomputed.index_fill(-1, torch.tensor([EOS]), -1e9).argmax(-1)
    )

    # Batched equals single-row generation.
    for i, tokens in enumerate(rows):
        alone = model.generate(
            torch.tensor([tokens]), rewards=rewards[i : i + 1], max_new_tokens=new, min_new_tokens=new, do_sample=False
        )
        assert alone[0, len(tokens) :].tolist() == sequences[i, input_ids.shape[1] :].tolist()


@given(arch=st.sampled_from(ARCHS), position=st.sampled_from(["prefix", "before_completion"]), data=st.data())
def test_logits_to_keep_gives_the_last_logits(arch, position, data, make_model):
    model = make_model(*arch, reward_position=position)
    input_ids, kwargs, _ = batch_inputs(model, data.draw(batches(position)))
    keep = data.draw(st.integers(1, input_ids.shape[1]))
    with torch.no_grad():
        full = model(input_ids, **kwargs).logits
        kept = model(input_ids, logits_to_keep=keep, **kwargs).logits
    torch.testing.assert_close(kept, full[:, -keep:], atol=ATOL, rtol=0)


@given(arch=st.sampled_from(ARCHS), position=st.sampled_from(["prefix", "before_completion"]), data=st.data())
def test_reward_matters(arch, position, data, make_model):
    """Different rewards give different logits at the first generation step (conditionme's silent regression)."""
    model = make_model(*arch, reward_position=position)
    tokens = data.draw(st.lists(st.integers(3, VOCAB - 1), min_size=1, max_size=6))
    low = data.draw(st.floats(-10, 10, width=32))
    high = data.draw(st.floats(-10, 10, width=32))
    assume(abs(high - low) > 0.5)
    first_step = []
    for reward in (low, high):
        out = model.generate(
            torch.tensor([tokens]),
            rewards=torch.tensor([reward]),
            max_new_tokens=1,
            do_sample=False,
            output_logits=True,
            return_dict_in_generate=True,
        )
        first_step.append(out.logits[0][0])
    assert (first_step[0] - first_step[1]).abs().max() > 1e-3


@given(arch=st.sampled_from(ARCHS), position=st.sampled_from(["prefix", "before_completion"]), data=st.data())
def test_loss_matches_manual_cross_entropy(arch, position, data, make_model):
    """The loss equals a manual cross-entropy over real tokens; exactly one -100 is added per row."""
    model = make_model(*arch, reward_position=position)
    batch = data.draw(batches(position))
    input_ids, kwargs, starts = batch_inputs(model, batch)
    labels = input_ids.masked_fill(kwargs["attention_mask"] == 0, -100)
    ignored = torch.tensor(data.draw(st.lists(st.booleans(), min_size=labels.numel(), max_size=labels.numel())))
    labels = labels.masked_fill(ignored.view_as(labels), -100)

    inputs, reward_index = model.prepare_conditioned_inputs(input_ids, labels=labels, **kwargs)
    # One -100 at the reward, plus one for a labelled first token that only padding precedes (nothing real predicts
    # it; ignoring it keeps the loss independent of padding). Every other label is kept in order.
    after_padding = [
        starts[i] > 0 and labels[i, starts[i]].item() != -100 and reward_index[i] != starts[i]
        for i in range(len(batch["rows"]))
    ]
    added = (inputs["labels"] == -100).sum(1) - (labels == -100).sum(1)
    assert added.tolist() == [1 + int(flag) for flag in after_padding]
    assert (inputs["labels"].gather(1, reward_index[:, None]) == -100).all()
    for i in range(len(batch["rows"])):
        kept = torch.cat([inputs["labels"][i, : reward_index[i]], inputs["labels"][i, reward_index[i] + 1 :]])
        expected = labels[i].clone()
        if after_padding[i]:
            expected[starts[i]] = -100
        assert torch.equal(kept, expected)

    # Manual: each labelled real token is predicted by whatever precedes it in the extended row (reward included).
    total, count = torch.tensor(0.0), 0
    for i, tokens in enumerate(batch["rows"]):
        k = reward_index_in_row(model, tokens, batch["prompt_lengths"][i])
        base = model.model
        embeds = base.get_input_embeddings()(torch.tensor(tokens))
        reward = manual_reward_embedding(model, batch["rewards"][i])
        extended = torch.cat([embeds[:k], reward[None], embeds[k:]])[None]
        with torch.no_grad():
            logits = base(inputs_embeds=extended, position_ids=torch.arange(len(tokens) + 1)[None]).logits[0]
        for t in range(len(tokens)):
            label = labels[i, starts[i] + t].item()
            extended_index = t + (t >= k)
            if label != -100 and extended_index > 0:
                total = total + torch.nn.functional.cross_entropy(logits[extended_index - 1], torch.tensor(label))
                count += 1
    assume(count > 0)
    with torch.no_grad():
        loss = model(input_ids, labels=labels, **kwargs).loss
        summed = model(input_ids, labels=labels, num_items_in_batch=torch.tensor(7), **kwargs).loss
    torch.testing.assert_close(loss, total / count, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(summed, total / 7, atol=1e-5, rtol=1e-5)


@given(arch=st.sampled_from(ARCHS), position=st.sampled_from(["prefix", "before_completion"]), data=st.data())
def test_zero_reward_head_is_base_with_shifted_positions(arch, position, data, make_model):
    """With a zero reward head, the model is the base model fed one zero embedding, positions shifted by one."""
    model = make_model(*arch, reward_position=position)
    zero = RewardConditionedCausalLM(model.config, base=model.model).eval()
    with torch.no_grad():
        zero.reward_head.linear.weight.zero_()
        zero.reward_head.linear.bias.zero_()
    batch = data.draw(batches(position))
    input_ids, kwargs, starts = batch_inputs(zero, batch)
    with torch.no_grad():
        logits = zero(input_ids, **kwargs).logits
        other = zero(input_ids, **dict(kwargs, rewards=-3 * kwargs["rewards"] + 1)).logits
    for i, tokens in enumerate(batch["rows"]):
        columns = slice(starts[i], starts[i] + len(tokens))
        torch.testing.assert_close(logits[i, columns], other[i, columns], atol=ATOL, rtol=0)
        expected = manual_logits(
            zero,
            tokens,
            None,
            batch["prompt_lengths"][i],
            reward_embedding=torch.zeros(model.model.config.hidden_size),
        )
        torch.testing.assert_close(logits[i, columns], expected, atol=ATOL, rtol=0)
    # Tokens before the reward are not shifted at all: with the reward after the whole row they match the base.
    tokens = batch["rows"][0]
    ids = torch.tensor([tokens])
    last = RewardConditionedCausalLM.from_base(model.model, reward_position="before_completion").eval()
    with torch.no_grad():
        conditioned = last(ids, rewards=torch.tensor([1.0]), prompt_lengths=torch.tensor([len(tokens)])).logits
        plain = model.model(ids).logits
    torch.testing.assert_close(conditioned[0, :-1], plain[0, :-1], atol=ATOL, rtol=0)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_save_load_round_trip(arch, tmp_path, make_model):
    """Save/load (also sharded) gives identical logits, also through `AutoModelForCausalLM`; the base exports alone."""
    model = make_model(arch, "eager", reward_position="before_completion", num_rewards=2, use_null_reward=True)
    input_ids, attention_mask, _ = pad_rows([[5, 6, 7], [1, 8, 9, 10, 11]], "left")
    kwargs = {
        "attention_mask": attention_mask,
        "rewards": torch.tensor([[1.0, -2.0], [3.0, 0.5]]),
        "reward_mask": torch.tensor([[True, False], [True, True]]),
        "prompt_lengths": torch.tensor([1, 3]),
    }
    model.save_pretrained(tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["config.json", "generation_config.json", "model.safetensors"]
    with safe_open(tmp_path / "model.safetensors", "pt") as weights:
        assert {key.split(".")[0] for key in weights.keys()} == {"model", "reward_head"}  # noqa: SIM118
    model.save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
    assert "model.safetensors.index.json" in os.listdir(tmp_path / "sharded")

    for loader, path in ((RewardConditionedCausalLM, tmp_path), (AutoModelForCausalLM, tmp_path / "sharded")):
        loaded = loader.from_pretrained(path, attn_implementation="eager")
        assert type(loaded) is RewardConditionedCausalLM
        assert loaded.config.reward_position == "before_completion"
        assert loaded.config.num_rewards == 2
        assert loaded.config.reward_mean == model.config.reward_mean
        assert loaded.config.reward_std == model.config.reward_std
        assert loaded.config.use_null_reward
        with torch.no_grad():
            assert torch.equal(loaded(input_ids, **kwargs).logits, model(input_ids, **kwargs).logits)
        assert loaded.reward_head.linear.weight.dtype == torch.float32
        tied = loaded.model.get_output_embeddings().weight is loaded.model.get_input_embeddings().weight
        assert tied == (arch == "gpt2")
    assert isinstance(AutoConfig.from_pretrained(tmp_path), RewardConditionedCausalLMConfig)

    half = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.bfloat16)
    assert half.model.get_input_embeddings().weight.dtype == torch.bfloat16
    assert half.reward_head.linear.weight.dtype == torch.float32

    # The documented export of the base model alone
    model.model.save_pretrained(tmp_path / "base")
    base = AutoModelForCausalLM.from_pretrained(tmp_path / "base", attn_implementation="eager").eval()
    assert type(base) is type(model.model)
    with torch.no_grad():
        assert torch.equal(base(input_ids).logits, model.model(input_ids).logits)
    tied = base.get_output_embeddings().weight is base.get_input_embeddings().weight
    assert tied == (arch == "gpt2")


def test_from_base_keeps_base_weights(make_base):
    base = make_base("gpt2", seed=3)
    before = {name: value.clone() for name, value in base.state_dict().items()}
    model = RewardConditionedCausalLM.from_base(base)
    assert model.model is base
    assert base.get_output_embeddings().weight is base.get_input_embeddings().weight
    for name, value in base.state_dict().items():
        assert torch.equal(value, before[name]), name
    assert model.reward_head.linear.weight.dtype == torch.float32


@given(arch=st.sampled_from(ARCHS), num_beams=st.integers(2, 3), data=st.data())
def test_beam_search_and_num_return_sequences(arch, num_beams, data, make_model):
    """Beams see their own row's reward: each row of a batch gets the beams it gets alone."""
    model = make_model(*arch)
    rows, rewards = generation_case(data, "prefix")
    input_ids, attention_mask, _ = pad_rows(rows, "left")
    kwargs = dict(max_new_tokens=4, min_new_tokens=4, num_beams=num_beams, num_return_sequences=2, do_sample=False)
    sequences = model.generate(input_ids, attention_mask=attention_mask, rewards=rewards, pad_token_id=PAD, **kwargs)
    assert sequences.shape == (2 * len(rows), input_ids.shape[1] + 4)
    assert torch.equal(sequences[:, : input_ids.shape[1]], input_ids.repeat_interleave(2, dim=0))
    for i, tokens in enumerate(rows):
        alone = model.generate(torch.tensor([tokens]), rewards=rewards[i : i + 1], **kwargs)
        assert alone[:, len(tokens) :].tolist() == sequences[2 * i : 2 * i + 2, input_ids.shape[1] :].tolist()


def test_sampling_and_extreme_targets(make_model):
    model = make_model("llama", "sdpa")
    input_ids, attention_mask, _ = pad_rows([[5, 6], [7, 8, 9]], "left")
    torch.manual_seed(0)
    sequences = model.generate(
        input_ids, attention_mask=attention_mask, rewards=torch.tensor([1e4, -1e4]), max_new_tokens=6, do_sample=True
    )
    assert sequences.shape[0] == 2 and sequences.shape[1] <= input_ids.shape[1] + 6
    with torch.no_grad():
        logits = model(input_ids, attention_mask=attention_mask, rewards=torch.tensor([1e6, -1e6])).logits
    assert torch.isfinite(logits).all()


def test_null_reward_and_reward_mask(make_model):
    model = make_model("gpt2", "eager", num_rewards=2, use_null_reward=True)
    input_ids = torch.tensor([[5, 6, 7], [8, 9, 10]])
    rewards = torch.tensor([[1.0, float("nan")], [2.0, -1.0]])
    mask = torch.tensor([[True, False], [True, True]])
    with torch.no_grad():
        masked = model(input_ids, rewards=rewards, reward_mask=mask).logits
        unconditional = model(input_ids).logits
        all_missing = model(input_ids, rewards=rewards, reward_mask=torch.zeros(2, 2, dtype=torch.bool)).logits
        full = model(input_ids, rewards=torch.tensor([[1.0, 5.0], [2.0, -1.0]])).logits
    assert torch.isfinite(masked).all()
    torch.testing.assert_close(all_missing, unconditional)
    torch.testing.assert_close(masked[1], full[1])  # row 1 has both rewards
    assert not torch.allclose(masked[0], full[0])  # row 0's second reward is replaced by the null value
    null = model.reward_head.null_reward.detach()
    expected = (
        model.reward_head.linear.weight @ torch.stack([torch.tensor((1.0 - 0.5) / 2.0), null[1]])
        + model.reward_head.linear.bias
    )
    embedded = model.embed_rewards(rewards, mask, batch_size=2)
    torch.testing.assert_close(embedded[0], expected.detach())
    sequences = model.generate(input_ids, max_new_tokens=3, min_new_tokens=3, do_sample=False)
    assert sequences.shape == (2, 6)


def test_gradient_reaches_reward_head_and_base(make_base):
    model = RewardConditionedCausalLM.from_base(make_base("gpt2"), use_null_reward=True)
    input_ids = torch.tensor([[0, 5, 6, 7], [8, 9, 10, 11]])
    mask = (input_ids != PAD).long()
    loss = model(input_ids, attention_mask=mask, rewards=torch.tensor([1.0, 2.0]), labels=input_ids).loss
    loss.backward()
    assert model.reward_head.linear.weight.grad.abs().sum() > 0
    assert model.model.get_input_embeddings().weight.grad.abs().sum() > 0


def test_peft_lora_on_inner_model(tmp_path, make_base):
    peft = pytest.importorskip("peft")
    model = RewardConditionedCausalLM.from_base(make_base("gpt2"))
    model.save_pretrained(tmp_path / "start")
    lora = peft.LoraConfig(r=4, target_modules=["c_attn"], modules_to_save=["reward_head"], task_type="CAUSAL_LM")
    peft_model = peft.get_peft_model(model, lora)
    trainable = {name for name, param in peft_model.named_parameters() if param.requires_grad}
    assert any("lora_" in name for name in trainable)
    assert any("reward_head" in name for name in trainable)
    assert not any(name.endswith("wte.weight") for name in trainable)

    input_ids = torch.tensor([[0, 5, 6, 7], [8, 9, 10, 11]])
    kwargs = {"attention_mask": (input_ids != PAD).long(), "rewards": torch.tensor([1.0, -2.0])}
    optimizer = torch.optim.SGD([p for p in peft_model.parameters() if p.requires_grad], lr=0.5)
    for _ in range(2):
        peft_model(input_ids, labels=input_ids, **kwargs).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    peft_model.eval()
    with torch.no_grad():
        expected = peft_model(input_ids, **kwargs).logits
    sequences = peft_model.generate(input_ids=input_ids, max_new_tokens=2, do_sample=False, **kwargs)
    assert sequences.shape == (2, 6)

    peft_model.save_pretrained(tmp_path / "adapter")
    from safetensors.torch import load_file

    saved = load_file(tmp_path / "adapter" / "adapter_model.safetensors")
    assert any("reward_head" in key for key in saved)
    reloaded = peft.PeftModel.from_pretrained(
        RewardConditionedCausalLM.from_pretrained(tmp_path / "start"), tmp_path / "adapter"
    )
    with torch.no_grad():
        torch.testing.assert_close(reloaded.eval()(input_ids, **kwargs).logits, expected)


# ---------------------------------------------------------------------------------------------------------------------
# Bad input


def error_cases():
    ids = torch.tensor([[5, 6, 7], [8, 9, 10]])
    return [
        ("prefix", {"rewards": torch.tensor([float("nan"), 1.0])}, "finite"),
        ("prefix", {"rewards": torch.tensor([float("inf"), 1.0])}, "finite"),
        ("prefix", {"rewards": torch.tensor([1.0, 2.0, 3.0])}, "shape"),
        ("prefix", {"rewards": torch.ones(2, 3)}, "shape"),
        ("prefix", {}, "null reward"),
        ("prefix", {"rewards": torch.ones(2), "reward_mask": torch.ones(2, dtype=torch.bool)}, "null reward"),
        ("prefix", {"rewards": torch.ones(2), "position_ids": torch.tensor([[0, 1, 0], [0, 1, 2]])}, "packed"),
        ("prefix", {"rewards": torch.ones(2), "attention_mask": torch.ones(2, 1, 3, 3)}, "2D padding mask"),
        ("prefix", {"rewards": torch.ones(2), "prompt_lengths": torch.tensor([1, 1])}, "prompt_lengths"),
        ("before_completion", {"rewards": torch.ones(2)}, "prompt_lengths"),
        ("before_completion", {"rewards": torch.ones(2), "prompt_lengths": torch.tensor([1, 4])}, "between 0"),
        ("before_completion", {"rewards": torch.ones(2), "prompt_lengths": torch.tensor([1])}, "one length per row"),
        ("prefix", {"rewards": torch.ones(2), "inputs_embeds": torch.zeros(2, 3, 32)}, "exactly one of"),
        ("prefix", {"rewards": torch.ones(2), "labels": torch.ones(2, 4, dtype=torch.long)}, "shape of `input_ids`"),
    ], ids


@pytest.mark.parametrize("case", range(len(error_cases()[0])))
def test_bad_input_raises_clear_error(case, make_model):
    (position, kwargs, message), ids = error_cases()[0][case], error_cases()[1]
    model = make_model("gpt2", "eager", reward_position=position)
    with pytest.raises(ValueError, match=message):  # value checks where inputs enter, shape checks in forward
        model.check_inputs(ids, **kwargs)
        model(ids, **kwargs)


def test_bad_generation_input_and_config(make_model):
    model = make_model("gpt2", "eager")
    with pytest.raises(ValueError, match="left padded"):
        model.generate(torch.tensor([[5, 6, 0]]), attention_mask=torch.tensor([[1, 1, 0]]), rewards=torch.ones(1))
    with pytest.raises(ValueError, match="shape"):
        model.generate(torch.tensor([[5, 6]]), rewards=torch.ones(2), max_new_tokens=1)
    with pytest.raises(ValueError, match="reward_position"):
        RewardConditionedCausalLMConfig(reward_position="suffix")
    with pytest.raises(ValueError, match="list of 2 number"):
        RewardConditionedCausalLMConfig(num_rewards=2, reward_mean=[0.0])
    with pytest.raises(ValueError, match="at least"):
        RewardConditionedCausalLMConfig(reward_std=[0.0])


def test_base_without_inputs_embeds_is_rejected_at_construction(make_base):
    class NoEmbedsLM(GPT2LMHeadModel):
        def forward(self, input_ids=None, attention_mask=None, position_ids=None, labels=None):
            return super().forward(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids)

    torch.manual_seed(0)
    with pytest.raises(ValueError, match="inputs_embeds"):
        RewardConditionedCausalLM.from_base(NoEmbedsLM(make_base("gpt2").config))


def test_bf16_base_keeps_float32_reward_head(make_base):
    model = RewardConditionedCausalLM.from_base(make_base("llama").to(torch.bfloat16))
    assert model.reward_head.linear.weight.dtype == torch.float32
    embedded = model.embed_rewards(torch.tensor([1.0, 2.0]), None, batch_size=2)
    assert embedded.dtype == torch.bfloat16
    with torch.no_grad():
        logits = model(torch.tensor([[5, 6, 7], [8, 9, 10]]), rewards=torch.tensor([1.0, 2.0])).logits
    assert logits.dtype == torch.bfloat16 and torch.isfinite(logits).all()


def test_gradient_checkpointing_gives_the_same_gradients(make_base):
    input_ids = torch.tensor([[0, 5, 6, 7], [8, 9, 10, 11]])
    kwargs = {"attention_mask": (input_ids != PAD).long(), "rewards": torch.tensor([1.0, -1.0]), "labels": input_ids}
    grads = []
    for checkpointing in (False, True):
        model = RewardConditionedCausalLM.from_base(make_base("llama"))
        model.train()
        if checkpointing:
            model.gradient_checkpointing_enable()
        model(**kwargs, input_ids=input_ids).loss.backward()
        grads.append(model.reward_head.linear.weight.grad)
    torch.testing.assert_close(grads[0], grads[1])


# ---------------------------------------------------------------------------------------------------------------------
# Standard checkpoint, transformers' generate semantics, safe saves and input checks


def test_old_layout_is_refused_and_the_documented_recipe_converts_it(tmp_path, make_model):
    model = make_model("gpt2", "eager", reward_position="before_completion", use_null_reward=True)
    old = tmp_path / "old"
    model.model.save_pretrained(old / "base")
    head = {name: value.contiguous() for name, value in model.reward_head.state_dict().items()}
    save_file(head, old / "reward_head.safetensors")
    fields = ("num_rewards", "reward_position", "reward_mean", "reward_std", "use_null_reward")
    config = {"model_type": "reward_conditioned", "base_config": model.model.config.to_dict()}
    (old / "config.json").write_text(json.dumps({**config, **{key: getattr(model.config, key) for key in fields}}))
    with pytest.raises(ValueError, match="old layout"):
        AutoModelForCausalLM.from_pretrained(old)

    docs = (Path(__file__).resolve().parent.parent / "docs" / "reward_conditioning.md").read_text()
    recipe = next(block for block in docs.split("```python\n")[1:] if "def convert_old_checkpoint" in block)
    namespace = {"RewardConditionedCausalLM": RewardConditionedCausalLM, "AutoModelForCausalLM": AutoModelForCausalLM}
    exec(recipe.split("```")[0], namespace)  # noqa: S102 (our own docs)
    namespace["convert_old_checkpoint"](old, tmp_path / "new")
    converted = AutoModelForCausalLM.from_pretrained(tmp_path / "new", attn_implementation="eager")
    input_ids = torch.tensor([[5, 6, 7]])
    kwargs = {"rewards": torch.tensor([1.5]), "prompt_lengths": torch.tensor([2])}
    with torch.no_grad():
        assert torch.equal(converted(input_ids, **kwargs).logits, model(input_ids, **kwargs).logits)


@torch.no_grad()
def manual_greedy(model, input_ids, rewards, processors, new):
    """Greedy decoding by full recomputation, with `processors` applied to the whole sequence (prompt included)."""
    sequences = input_ids
    for _ in range(new):
        scores = model(sequences, rewards=rewards).logits[:, -1]
        scores = processors(sequences, scores)
        sequences = torch.cat([sequences, scores.argmax(-1, keepdim=True)], dim=1)
    return sequences


@pytest.mark.parametrize("position", ["prefix", "before_completion"])
@pytest.mark.parametrize(
    "option, processor",
    [
        ({"repetition_penalty": 50.0}, lambda T: RepetitionPenaltyLogitsProcessor(50.0)),
        ({"no_repeat_ngram_size": 1}, lambda T: NoRepeatNGramLogitsProcessor(1)),
        ({"min_new_tokens": 3}, lambda T: MinNewTokensLengthLogitsProcessor(T, 3, EOS)),
    ],
)
def test_generate_processors_see_the_prompt(position, option, processor, make_model):
    model = make_model("gpt2", "eager", reward_position=position)
    rewards = torch.tensor([2.0])
    if position == "before_completion":  # the reference needs the prompt length the model uses at generation time
        model_call = functools.partial(model, prompt_lengths=torch.tensor([4]))
    else:
        model_call = model
    # A prompt whose greedy next token is one of its own tokens, so that seeing the prompt changes the output
    with torch.no_grad():
        input_ids = next(
            ids
            for first in range(3, VOCAB)
            if (ids := torch.tensor([[first, 6, 7, 8]]))[0]
            .tolist()
            .count(model_call(ids, rewards=rewards).logits[0, -1].argmax().item())
        )
    kwargs = {"rewards": rewards, "max_new_tokens": 4, "do_sample": False, "pad_token_id": PAD, "eos_token_id": EOS}
    sequences = model.generate(input_ids, **kwargs, **option)
    expected = manual_greedy(model_call, input_ids, rewards, LogitsProcessorList([processor(4)]), 4)
    assert sequences.tolist() == expected[:, : sequences.shape[1]].tolist()
    if "no_repeat_ngram_size" in option:
        assert not set(sequences[0, 4:].tolist()) & set(input_ids[0].tolist())


def test_generate_counts_the_prompt_and_honours_generation_config(make_base):
    model = RewardConditionedCausalLM.from_base(make_base("gpt2"))
    prompt = torch.tensor([[5, 6, 7, 8, 9, 10]])
    assert model.generate(prompt, rewards=torch.ones(1), max_length=8, min_length=8).shape == (1, 8)
    model.generation_config.max_new_tokens = 2
    assert model.generate(prompt, rewards=torch.ones(1)).shape == (1, 8)
    base = make_base("gpt2")
    base.generation_config.max_new_tokens = 3
    assert RewardConditionedCausalLM.from_base(base).generate(prompt, rewards=torch.ones(1)).shape == (1, 9)


def test_generate_stop_strings(tiny_tokenizer, make_model):
    model = make_model("llama", "eager")
    prompt = torch.tensor([tiny_tokenizer("The movie was")["input_ids"]])
    kwargs = {"rewards": torch.tensor([1.0]), "do_sample": False, "pad_token_id": PAD, "eos_token_id": EOS}
    full = model.generate(prompt, max_new_tokens=8, min_new_tokens=8, **kwargs)
    new = [tiny_tokenizer.decode(token) for token in full[0, prompt.shape[1] :]]
    first = next(i for i, text in enumerate(new) if text.strip().isalnum())
    stopped = model.generate(prompt, max_new_tokens=8, stop_strings=new[first], tokenizer=tiny_tokenizer, **kwargs)
    assert stopped.tolist() == full[:, : prompt.shape[1] + first + 1].tolist()


def test_sampling_matches_the_base_semantics(make_model):
    """Seeded sampling equals sampling by hand from the same processed scores."""
    model = make_model("gpt2", "eager")
    input_ids, rewards = torch.tensor([[5, 6, 7]]), torch.tensor([1.0])
    torch.manual_seed(3)
    sequences = model.generate(input_ids, rewards=rewards, do_sample=True, top_k=0, max_new_tokens=4, pad_token_id=PAD)
    torch.manual_seed(3)
    expected = input_ids
    with torch.no_grad():
        for _ in range(4):
            probs = model(expected, rewards=rewards).logits[:, -1].softmax(-1)
            expected = torch.cat([expected, torch.multinomial(probs, 1)], dim=1)
    assert sequences.tolist() == expected[:, : sequences.shape[1]].tolist()


def test_save_into_a_model_folder_replaces_the_model_and_keeps_other_files(tmp_path, make_base):
    # transformers' own save_pretrained: the model's files are overwritten (stale shards removed), others are kept
    old = RewardConditionedCausalLM.from_base(make_base("gpt2", seed=1))
    old.save_pretrained(tmp_path / "ckpt", max_shard_size="20KB")
    (tmp_path / "ckpt" / "tokenizer.json").write_text("{}")
    (tmp_path / "ckpt" / "runs").mkdir()
    (tmp_path / "ckpt" / "runs" / "events").write_text("logged")
    new = RewardConditionedCausalLM.from_base(make_base("gpt2", seed=2))
    new.save_pretrained(tmp_path / "ckpt", max_shard_size="20KB")
    assert sorted(os.listdir(tmp_path)) == ["ckpt"]
    assert (tmp_path / "ckpt" / "tokenizer.json").read_text() == "{}"  # not the model's: kept
    assert (tmp_path / "ckpt" / "runs" / "events").read_text() == "logged"
    loaded = RewardConditionedCausalLM.from_pretrained(tmp_path / "ckpt")
    for name, value in new.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], value), name


def input_check_cases():
    ids = torch.tensor([[5, 6, 7], [8, 9, 10]])
    return [
        ("prefix", {"rewards": torch.tensor([1e39, 0.0], dtype=torch.float64)}, "finite after normalization"),
        ("prefix", {"rewards": torch.tensor([True, False])}, "real numbers"),
        ("prefix", {"rewards": torch.tensor([1 + 1j, 0j])}, "real numbers"),
        ("prefix", {"rewards": [1.0, None]}, "must hold numbers"),
        ("prefix", {"rewards": [1.0, "high"]}, "must hold numbers"),
        ("before_completion", {"rewards": torch.ones(2), "prompt_lengths": torch.tensor([1.5, 2.0])}, "integers"),
        ("prefix", {"rewards": torch.ones(2), "input_ids": torch.full((2, 64), 5)}, "at most 63 tokens"),
    ], ids


@pytest.mark.parametrize("case", range(len(input_check_cases()[0])))
def test_model_input_checks(case, make_model):
    (position, kwargs, message), ids = input_check_cases()[0][case], input_check_cases()[1]
    model = make_model("gpt2", "eager", reward_position=position)
    kwargs = {"input_ids": ids, **kwargs}
    with pytest.raises(ValueError, match=message), torch.no_grad():  # value checks where inputs enter
        model.check_inputs(**kwargs)
        model(**kwargs)


def test_reward_stats_checks(make_base):
    with pytest.raises(ValueError, match="at least"):
        RewardConditionedCausalLM.from_base(make_base("gpt2"), reward_std=[1e-46])
    with pytest.raises(TypeError, match=r"reward_mean=\[0.1\]"):
        RewardConditionedCausalLM.from_base(make_base("gpt2"), reward_mean=0.1)
    for bad in ([None], ["0.5"], [True], [1e39]):
        with pytest.raises(ValueError, match="reward_mean"):
            check_reward_stats(bad, None, 1)
    # Stats assigned after construction are checked where inputs enter (generate, `check_inputs`)
    model = RewardConditionedCausalLM.from_base(make_base("gpt2"))
    model.config.reward_std = [1e-46]
    with pytest.raises(ValueError, match="at least"):
        model.generate(torch.tensor([[5, 6]]), rewards=torch.ones(1), max_new_tokens=1)


def test_sequence_classification_base_is_rejected(make_base):
    config = make_base("gpt2").config
    config.num_labels = 1
    with pytest.raises(ValueError, match="language-modeling head"):
        RewardConditionedCausalLM.from_base(AutoModelForSequenceClassification.from_config(config))


@pytest.mark.parametrize("position", ["prefix", "before_completion"])
def test_unpadded_batches_reach_the_base_without_a_mask(position, make_model, monkeypatch):
    """Like transformers' generate, an unpadded batch lets the base model skip building an attention mask."""
    model = make_model("llama", "sdpa", reward_position=position)
    input_ids, rewards = torch.tensor([[1, 5, 6, 7], [8, 9, 10, 11]]), torch.tensor([1.0, -1.0])
    masks = []
    forward = model.model.forward

    def recording_forward(*args, **kwargs):
        masks.append(kwargs.get("attention_mask"))
        return forward(*args, **kwargs)

    monkeypatch.setattr(model.model, "forward", recording_forward)
    kwargs = {"prompt_lengths": torch.tensor([2, 1])} if position == "before_completion" else {}
    with torch.no_grad():
        unmasked = model(input_ids, rewards=rewards, **kwargs).logits
        masked = model(input_ids, attention_mask=torch.ones_like(input_ids), rewards=rewards, **kwargs).logits
    assert masks[0] is None and masks[1] is not None
    torch.testing.assert_close(unmasked, masked, atol=ATOL, rtol=0)
    masks.clear()
    sequences = model.generate(input_ids, rewards=rewards, max_new_tokens=3, do_sample=False, pad_token_id=PAD)
    masked = model.generate(
        input_ids,
        attention_mask=torch.ones_like(input_ids),
        rewards=rewards,
        max_new_tokens=3,
        do_sample=False,
        pad_token_id=PAD,
    )
    assert torch.equal(sequences, masked)
