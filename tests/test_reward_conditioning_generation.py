"""`RewardConditionedCausalLM.generate` with transformers' generation features beyond plain decoding.

Prompt-cache reuse (transformers' documented pattern: fill a cache on a shared prefix, then generate each longer prompt
from a copy of it) gives the tokens generation without the cache gives; assisted decoding, which cannot know about
the reward's cache position, and cache reuse where the reward goes after the prompt are refused up front; so is
`cache_implementation="static"`, which transformers sizes without the reward, while a static cache sized for it works;
and so is generating from `inputs_embeds` (the forward pass takes them), and a cache that holds positions besides
the tokens and the reward (PEFT prompt tuning's virtual tokens: generate without a cache there; PEFT prefix
tuning's cache, which holds no reward, is refused).
"""

import copy
import os

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from transformers import StaticCache


os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

from trl.experimental.reward_conditioning import RewardConditionedCausalLM


PAD = 0


def conditioned(base, position="prefix"):
    model = RewardConditionedCausalLM.from_base(base, reward_position=position, use_null_reward=True)
    with torch.no_grad():
        torch.manual_seed(1)
        model.reward_head.linear.weight.normal_(std=2.0)  # a reward that moves the tokens
        model.reward_head.null_reward.fill_(-1.5)
    return model.eval()


@pytest.fixture(scope="module")
def models(tiny_causal_lm):
    return {arch: conditioned(tiny_causal_lm(arch, initializer_range=0.2)) for arch in ("gpt2", "llama")}


def left_padded(rows):
    width = max(len(row) for row in rows)
    ids = torch.tensor([[PAD] * (width - len(row)) + row for row in rows])  # (B, T)
    mask = torch.tensor([[0] * (width - len(row)) + [1] * len(row) for row in rows])  # (B, T)
    return ids, mask


@given(
    arch=st.sampled_from(["gpt2", "llama"]),
    prefix_lengths=st.lists(st.integers(1, 5), min_size=1, max_size=3),
    suffix_length=st.integers(1, 4),
    guidance_scale=st.sampled_from([None, 2.0]),
    seed=st.integers(0, 2**16),
)
def test_reusing_a_prompt_cache_generates_as_without_it(
    models, arch, prefix_lengths, suffix_length, guidance_scale, seed
):
    model = models[arch]
    generator = torch.Generator().manual_seed(seed)
    prefixes = [torch.randint(3, 40, (n,), generator=generator).tolist() for n in prefix_lengths]
    suffix = torch.randint(3, 40, (suffix_length,), generator=generator).tolist()
    rewards = torch.randn(len(prefixes), generator=generator) * 2
    prefix_ids, prefix_mask = left_padded(prefixes)
    prompt_ids, prompt_mask = left_padded([prefix + suffix for prefix in prefixes])
    options = dict(max_new_tokens=4, do_sample=False, guidance_scale=guidance_scale)

    expected = model.generate(prompt_ids, attention_mask=prompt_mask, rewards=rewards, **options)
    with torch.no_grad():
        cache = model(prefix_ids, attention_mask=prefix_mask, rewards=rewards, use_cache=True).past_key_values
    reused = model.generate(
        prompt_ids, attention_mask=prompt_mask, rewards=rewards, past_key_values=copy.deepcopy(cache), **options
    )
    assert torch.equal(reused, expected)


def test_reusing_a_prompt_cache_is_refused_when_the_reward_follows_the_prompt(tiny_causal_lm):
    model = conditioned(tiny_causal_lm("gpt2"), position="before_completion")
    prompt = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        cache = model(prompt[:, :2], rewards=torch.tensor([1.0]), prompt_lengths=torch.tensor([2])).past_key_values
    with pytest.raises(ValueError, match="reused only with `reward_position='prefix'`"):
        model.generate(prompt, rewards=torch.tensor([1.0]), past_key_values=cache, max_new_tokens=2)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
@pytest.mark.parametrize("guidance_scale", [None, 2.0])
def test_a_static_cache_sized_for_the_reward_generates_as_the_dynamic_one(models, arch, guidance_scale):
    # transformers sizes `cache_implementation="static"` for the tokens only (max_length - 1 positions); a static cache
    # one position larger, made by the user, holds the reward too.
    model = models[arch]
    prompt_ids, prompt_mask = left_padded([[5, 6, 7], [8, 9, 10, 11, 12]])
    options = dict(rewards=torch.tensor([1.0, -1.0]), max_new_tokens=4, do_sample=False, guidance_scale=guidance_scale)
    expected = model.generate(prompt_ids, attention_mask=prompt_mask, **options)
    with pytest.raises(ValueError, match="also keeps the reward in it, one position more"):
        model.generate(prompt_ids, attention_mask=prompt_mask, cache_implementation="static", **options)
    cache = StaticCache(config=model.config.text_config, max_cache_len=prompt_ids.shape[1] + 4)
    static = model.generate(prompt_ids, attention_mask=prompt_mask, past_key_values=cache, **options)
    assert torch.equal(static, expected)


def prompt_learning(model, config_name):
    """A copy of `model` with a PEFT prompt-learning adapter (`PromptTuningConfig`, `PrefixTuningConfig`) of three
    virtual tokens, in eval mode."""
    peft = pytest.importorskip("peft")
    config = getattr(peft, config_name)(task_type="CAUSAL_LM", num_virtual_tokens=3)
    return peft.get_peft_model(copy.deepcopy(model), config).eval()


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_peft_prompt_tuning_generates_without_cache_and_is_refused_with_one(models, arch):
    # PEFT prompt tuning puts virtual tokens in front of the prompt's embeddings, so the cache holds more positions
    # than tokens plus the reward and the new tokens cannot be told apart: refused with a clear error. Without a cache
    # every step is a full forward, which equals greedy decoding by hand.
    model = prompt_learning(models[arch], "PromptTuningConfig")
    ids, rewards = torch.tensor([[5, 6, 7]]), torch.tensor([1.0])
    options = dict(input_ids=ids, attention_mask=torch.ones_like(ids), rewards=rewards, max_new_tokens=3)
    with pytest.raises(ValueError, match="something put extra positions in the cache"):
        model.generate(**options, do_sample=False)
    generated = model.generate(**options, do_sample=False, use_cache=False)
    expected = ids
    with torch.no_grad():
        for _ in range(3):
            logits = model(input_ids=expected, attention_mask=torch.ones_like(expected), rewards=rewards).logits
            expected = torch.cat([expected, logits[:, -1:].argmax(dim=-1)], dim=1)
    assert torch.equal(generated, expected)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_peft_prefix_tuning_is_refused_instead_of_ignoring_the_reward(models, arch):
    # PEFT prefix tuning hands the model a cache of virtual tokens that holds no reward; read as a reward-holding
    # cache, the reward would silently not be inserted. (Its `generate` goes through PEFT's own cache handling, which
    # differs between transformers 4.x and 5.x; not covered here.)
    model = prompt_learning(models[arch], "PrefixTuningConfig")
    ids = torch.tensor([[5, 6, 7]])
    inputs = dict(input_ids=ids, attention_mask=torch.ones_like(ids), rewards=torch.tensor([1.0]))
    with pytest.raises(ValueError, match="holds no reward and is not supported"):
        model(**inputs)


def test_generating_from_inputs_embeds_gets_a_clear_error(models):
    model = models["llama"]
    embeds = model.get_input_embeddings()(torch.tensor([[5, 6, 7]]))  # (1, 3, H)
    with pytest.raises(ValueError, match="needs the prompt as `input_ids`.*`inputs_embeds` were given"):
        model.generate(inputs_embeds=embeds, rewards=torch.tensor([1.0]), max_new_tokens=2)


@pytest.mark.parametrize("option", ["assistant_model", "prompt_lookup_num_tokens"])
def test_assisted_decoding_is_refused_up_front(models, tiny_causal_lm, option):
    value = tiny_causal_lm("gpt2").eval() if option == "assistant_model" else 2
    with pytest.raises(ValueError, match=f"Assisted decoding \\(`{option}`\\) is not supported"):
        models["gpt2"].generate(
            torch.tensor([[5, 6, 7]]), rewards=torch.tensor([1.0]), max_new_tokens=2, **{option: value}
        )
