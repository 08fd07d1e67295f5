"""`ValueGuidedLogitsProcessor`: decoding guided by a saved PPO critic, exact for any left padding."""

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn
from transformers import AutoModelForSequenceClassification, PretrainedConfig
from transformers.modeling_outputs import BaseModelOutput

from trl.experimental.ppo import ValueGuidedLogitsProcessor


PROMPTS = ["This movie was", "A terrible film. The plot made no sense", "I loved"]


@pytest.fixture(scope="module")
def policy(tiny_causal_lm):
    return tiny_causal_lm(seed=0).eval()


@pytest.fixture(scope="module")
def critic(tiny_config):
    torch.manual_seed(1)
    config = tiny_config(initializer_range=0.5)  # a large init, so values differ clearly between candidates
    config.num_labels = 1
    return AutoModelForSequenceClassification.from_config(config).eval()


class TokenCounter(nn.Module):
    """Backbone of a critic that values a prefix by whether its last real token is `favored`."""

    def __init__(self, favored):
        super().__init__()
        self.favored = favored

    def forward(self, input_ids, attention_mask, **kwargs):
        hidden = (input_ids == self.favored).float()[:, :, None]  # (B, T, 1)
        return BaseModelOutput(hidden_states=(hidden,))


class FavoringCritic(nn.Module):
    """A critic in the shape PPO expects (`base_model_prefix`, `score`, `config.num_labels == 1`)."""

    base_model_prefix = "backbone"

    def __init__(self, favored, pad_token_id):
        super().__init__()
        self.backbone = TokenCounter(favored)
        self.score = nn.Identity()
        self.config = PretrainedConfig(num_labels=1, pad_token_id=pad_token_id)


def encode(tokenizer, prompts):
    return tokenizer(prompts, padding=True, padding_side="left", return_tensors="pt")


def generate(policy, tokenizer, inputs, processor=None, **kwargs):
    kwargs = dict(max_new_tokens=6, pad_token_id=tokenizer.pad_token_id, eos_token_id=None, top_k=None, **kwargs)
    if processor is not None:
        kwargs["logits_processor"] = [processor]
    return policy.generate(**inputs, **kwargs)


def test_beta_zero_is_plain_greedy_generate(policy, critic, tiny_tokenizer):
    inputs = encode(tiny_tokenizer, PROMPTS)
    processor = ValueGuidedLogitsProcessor(critic, top_k=4, beta=0.0, pad_token_id=tiny_tokenizer.pad_token_id)
    guided = generate(policy, tiny_tokenizer, inputs, processor, do_sample=False)
    plain = generate(policy, tiny_tokenizer, inputs, do_sample=False)
    torch.testing.assert_close(guided, plain, rtol=0, atol=0)
    assert processor.critic_forward_passes == 6  # one per new token
    assert processor.critic_rows == 6 * len(PROMPTS) * 4


def test_beta_zero_samples_like_plain_generate(policy, critic, tiny_tokenizer):
    inputs = encode(tiny_tokenizer, PROMPTS)
    vocab = len(tiny_tokenizer)
    processor = ValueGuidedLogitsProcessor(critic, top_k=vocab, beta=0.0, pad_token_id=tiny_tokenizer.pad_token_id)
    torch.manual_seed(3)
    guided = generate(policy, tiny_tokenizer, inputs, processor, do_sample=True)
    torch.manual_seed(3)
    plain = generate(policy, tiny_tokenizer, inputs, do_sample=True)
    torch.testing.assert_close(guided, plain, rtol=0, atol=0)


def test_critic_that_prefers_one_token_gets_it(policy, tiny_tokenizer):
    favored = tiny_tokenizer(" great")["input_ids"][-1]
    critic = FavoringCritic(favored, tiny_tokenizer.pad_token_id)
    inputs = encode(tiny_tokenizer, PROMPTS)
    vocab = len(tiny_tokenizer)
    processor = ValueGuidedLogitsProcessor(critic, top_k=vocab, beta=100.0, pad_token_id=tiny_tokenizer.pad_token_id)
    new = generate(policy, tiny_tokenizer, inputs, processor, do_sample=False)[:, inputs["input_ids"].shape[1] :]
    assert (new == favored).all()
    plain = generate(policy, tiny_tokenizer, inputs, do_sample=False)[:, inputs["input_ids"].shape[1] :]
    assert not (plain == favored).all()  # the policy alone would not


def test_only_the_policys_top_k_can_be_picked(policy, tiny_tokenizer):
    inputs = encode(tiny_tokenizer, PROMPTS)
    scores = policy(**inputs).logits[:, -1]  # (B, V)
    least_likely = scores.argmin(dim=-1)  # (B,)
    critic = FavoringCritic(int(least_likely[0]), tiny_tokenizer.pad_token_id)
    processor = ValueGuidedLogitsProcessor(critic, top_k=3, beta=100.0, pad_token_id=tiny_tokenizer.pad_token_id)
    guided = processor(inputs["input_ids"], scores)
    assert torch.isfinite(guided).sum(dim=-1).tolist() == [3] * len(PROMPTS)
    assert guided[0, least_likely[0]] == -math.inf
    assert (guided.argmax(-1)[:, None] == scores.topk(3, dim=-1).indices).any(-1).all()


def unpadded_values(critic, row_ids, candidates):
    """The critic's value of `row_ids + [c]` for each candidate c, from a plain forward on the unpadded row."""
    rows = torch.tensor([row_ids + [c] for c in candidates.tolist()])  # (k, T + 1)
    return critic(input_ids=rows).logits[:, 0]  # (k,)


@given(order=st.permutations(range(len(PROMPTS))), top_k=st.integers(1, 5), beta=st.floats(-3, 3))
def test_left_padded_batch_equals_single_rows(policy, critic, tiny_tokenizer, order, top_k, beta):
    prompts = [PROMPTS[i] for i in order]
    inputs = encode(tiny_tokenizer, prompts)
    with torch.no_grad():
        scores = policy(**inputs).logits[:, -1]  # (B, V)
    processor = ValueGuidedLogitsProcessor(critic, top_k=top_k, beta=beta, pad_token_id=tiny_tokenizer.pad_token_id)
    guided = processor(inputs["input_ids"], scores)  # (B, V)
    for b, prompt in enumerate(prompts):
        row_ids = tiny_tokenizer(prompt)["input_ids"]
        log_probs = torch.log_softmax(scores[b], dim=-1)
        top, candidates = log_probs.topk(top_k)
        with torch.no_grad():
            expected = top + beta * unpadded_values(critic, row_ids, candidates)
        torch.testing.assert_close(guided[b, candidates], expected, rtol=1e-4, atol=1e-4)
        alone = processor(torch.tensor([row_ids]), scores[b : b + 1])
        torch.testing.assert_close(guided[b : b + 1], alone, rtol=1e-4, atol=1e-4)


def test_generated_batch_equals_single_rows(policy, critic, tiny_tokenizer):
    processor = ValueGuidedLogitsProcessor(critic, top_k=4, beta=2.0, pad_token_id=tiny_tokenizer.pad_token_id)
    inputs = encode(tiny_tokenizer, PROMPTS)
    batch = generate(policy, tiny_tokenizer, inputs, processor, do_sample=False)
    new = batch[:, inputs["input_ids"].shape[1] :]
    for b, prompt in enumerate(PROMPTS):
        alone = encode(tiny_tokenizer, [prompt])
        row = generate(policy, tiny_tokenizer, alone, processor, do_sample=False)
        assert row[0, alone["input_ids"].shape[1] :].tolist() == new[b].tolist()


@pytest.mark.parametrize("top_k", [0, -1, 2.5, True, None])
def test_bad_top_k_is_rejected(critic, top_k):
    with pytest.raises(ValueError, match="top_k"):
        ValueGuidedLogitsProcessor(critic, top_k=top_k, pad_token_id=0)


@pytest.mark.parametrize("beta", [math.nan, math.inf, -math.inf, "1", None])
def test_bad_beta_is_rejected(critic, beta):
    with pytest.raises(ValueError, match="beta"):
        ValueGuidedLogitsProcessor(critic, beta=beta, pad_token_id=0)


def test_a_model_without_score_head_is_rejected(policy):
    with pytest.raises(TypeError, match="no `score` head"):
        ValueGuidedLogitsProcessor(policy, pad_token_id=0)


def test_a_classifier_with_two_labels_is_rejected(tiny_config):
    model = AutoModelForSequenceClassification.from_config(tiny_config(num_labels=2))
    with pytest.raises(ValueError, match="num_labels` must be 1, but got 2"):
        ValueGuidedLogitsProcessor(model, pad_token_id=0)


def test_a_missing_pad_token_is_rejected(tiny_config):
    config = tiny_config()
    config.num_labels = 1
    config.pad_token_id = None
    model = AutoModelForSequenceClassification.from_config(config)
    with pytest.raises(ValueError, match="pad_token_id"):
        ValueGuidedLogitsProcessor(model)


def test_a_nan_critic_raises_a_clear_error(critic, tiny_tokenizer, tiny_config):
    config = tiny_config()
    config.num_labels = 1
    broken = AutoModelForSequenceClassification.from_config(config).eval()
    with torch.no_grad():
        broken.score.weight.fill_(math.nan)
    processor = ValueGuidedLogitsProcessor(broken, top_k=2, pad_token_id=tiny_tokenizer.pad_token_id)
    inputs = encode(tiny_tokenizer, PROMPTS)
    with pytest.raises(ValueError, match="non-finite value"):
        processor(inputs["input_ids"], torch.zeros(len(PROMPTS), len(tiny_tokenizer)))
