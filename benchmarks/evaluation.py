"""Shared evaluation of generated text: an independent judge, MAUVE, diversity and repetition.

- `judge_perplexity(texts, contexts=None)`: perplexity of `texts` (each after its context, if given) under a judge
  model, by default SmolLM2-135M-Instruct (`realdata.smollm2`, 134.5M parameters, never trained here), so the judge
  is independent of every model the benchmarks train. Forward-only, batched, no gradients.
- `judge_features(texts, contexts=None)`: the judge's last-layer hidden state at the last token of each text (after
  its context): the features `mauve_score` compares.
- `mauve_score(p_features, q_features)`: MAUVE (Pillutla et al. 2021, the `mauve-text` package) between two sets of
  precomputed features; nothing is downloaded.
- `distinct_n(texts_or_token_lists, n)`: distinct n-grams over all n-grams of all completions (Li et al. 2016).
- `repetition_rate(texts_or_token_lists, min_count=3)`: fraction of completions in which one token occurs at least
  `min_count` times.

Texts are split into tokens on whitespace for `distinct_n` and `repetition_rate`; pass token lists to count model
tokens instead. A judge is any `(model, tokenizer)` pair of a causal LM and its tokenizer; `judge=None` means
SmolLM2, loaded once per process.
"""

import functools
from collections import Counter
from collections.abc import Sequence

import numpy as np
import torch


MAX_JUDGE_TOKENS = 256  # context + text tokens kept per row (the end is kept: it holds the text)


@functools.cache
def smollm2_judge():
    """SmolLM2-135M-Instruct and its tokenizer (`realdata.smollm2`), loaded once per process."""
    import realdata

    return realdata.smollm2()


def _judge(judge):
    return smollm2_judge() if judge is None else judge


def _check_texts(texts, contexts):
    if isinstance(texts, str):
        raise TypeError("texts must be a list of strings, got a single string; wrap it in a list.")
    texts = list(texts)
    if contexts is None:
        return texts, None
    if isinstance(contexts, str):
        raise TypeError("contexts must be a list of strings (one per text), got a single string.")
    contexts = list(contexts)
    if len(contexts) != len(texts):
        raise ValueError(
            f"contexts must have one entry per text: got {len(contexts)} contexts for {len(texts)} texts."
        )
    return texts, contexts


def _rows(tokenizer, texts, contexts):
    """Token ids of (context, text) per row. Without a context the text follows the EOS token, so that its first
    token is scored too (as after a document boundary). The text is tokenized on its own so that the scored tokens
    are the same whatever the context."""
    text_ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    if contexts is None:
        context_ids = [[tokenizer.eos_token_id] for _ in texts]
    else:
        context_ids = [
            ids or [tokenizer.eos_token_id] for ids in tokenizer(contexts, add_special_tokens=False)["input_ids"]
        ]
    rows = []
    for ctx, txt in zip(context_ids, text_ids, strict=True):
        txt = txt[: MAX_JUDGE_TOKENS - 1]
        ctx = ctx[-(MAX_JUDGE_TOKENS - len(txt)) :]
        rows.append((ctx, txt))
    return rows


def _batches(rows, batch_size, pad_token_id, device):
    """Right-padded batches in length order: yields (row indices, input_ids (B, T), attention_mask (B, T),
    scored (B, T) True on text tokens)."""
    order = sorted(range(len(rows)), key=lambda i: len(rows[i][0]) + len(rows[i][1]))
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        width = max(len(rows[i][0]) + len(rows[i][1]) for i in idx)
        input_ids = torch.full((len(idx), width), pad_token_id, dtype=torch.long)  # (B, T)
        attention_mask = torch.zeros((len(idx), width), dtype=torch.long)  # (B, T)
        scored = torch.zeros((len(idx), width), dtype=torch.bool)  # (B, T)
        for j, i in enumerate(idx):
            ctx, txt = rows[i]
            input_ids[j, : len(ctx) + len(txt)] = torch.tensor(ctx + txt)
            attention_mask[j, : len(ctx) + len(txt)] = 1
            scored[j, len(ctx) : len(ctx) + len(txt)] = True
        yield idx, input_ids.to(device), attention_mask.to(device), scored.to(device)


@torch.no_grad()
def _judge_pass(texts, contexts, judge, batch_size, features):
    """One forward pass per batch: per text (summed NLL in nats, scored tokens) and, with `features`, the (N, H)
    last hidden state at each row's last token."""
    texts, contexts = _check_texts(texts, contexts)
    if not texts:
        raise ValueError("no texts given.")
    model, tokenizer = _judge(judge)
    model.eval()
    nll_out, feature_out = [(0.0, 0)] * len(texts), None
    for idx, input_ids, attention_mask, scored in _batches(
        _rows(tokenizer, texts, contexts), batch_size, tokenizer.pad_token_id, model.device
    ):
        out = model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=features)
        logits = out.logits[:, :-1].float()  # (B, T - 1, V)
        nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), input_ids[:, 1:], reduction="none")  # (B, T-1)
        mask = scored[:, 1:]  # (B, T - 1): True where token t + 1 is a text token
        for j, i in enumerate(idx):
            nll_out[i] = (float(nll[j][mask[j]].sum()), int(mask[j].sum()))
        if features:
            last = attention_mask.sum(dim=1) - 1  # (B,): the last real token (right padding)
            hidden = out.hidden_states[-1][torch.arange(len(idx), device=last.device), last]  # (B, H)
            if feature_out is None:
                feature_out = np.zeros((len(texts), hidden.shape[-1]), dtype=np.float32)
            feature_out[idx] = hidden.float().cpu().numpy()
    return nll_out, feature_out


def judge_token_nll(texts, contexts=None, judge=None, batch_size=32):
    """Per text: (summed negative log-likelihood in nats, number of scored tokens) under the judge."""
    return _judge_pass(texts, contexts, judge, batch_size, features=False)[0]


def _perplexity(per_text):
    n_tokens = sum(n for _, n in per_text)
    if n_tokens == 0:
        raise ValueError(f"judge_perplexity: none of the {len(per_text)} texts has a token to score.")
    return float(np.exp(sum(nll for nll, _ in per_text) / n_tokens))


def judge_perplexity(texts, contexts=None, judge=None, batch_size=32):
    """Perplexity of `texts` under the judge (SmolLM2-135M by default): exp of the mean negative log-likelihood over
    all tokens of all texts, each text scored after its context (its prompt) when `contexts` is given, else after the
    EOS token. Context tokens are not scored. Empty texts contribute nothing; all empty raises ValueError."""
    return _perplexity(judge_token_nll(texts, contexts, judge, batch_size))


def judge_features(texts, contexts=None, judge=None, batch_size=32):
    """(N, H) float32 array: the judge's last hidden state at the last token of each text (after its context), the
    MAUVE features. An empty text gets the feature of its context's last token."""
    return _judge_pass(texts, contexts, judge, batch_size, features=True)[1]


def judge_perplexity_and_features(texts, contexts=None, judge=None, batch_size=32):
    """`judge_perplexity` and `judge_features` from one forward pass."""
    per_text, features = _judge_pass(texts, contexts, judge, batch_size, features=True)
    return _perplexity(per_text), features


def mauve_score(p_features, q_features, seed=25, num_buckets="auto"):
    """MAUVE between two sets of features (N, H) and (M, H), e.g. model completions and real continuations; in
    (0, 1], higher is closer. Quantizes with k-means (`num_buckets="auto"`: a tenth of the points), seeded."""
    import mauve

    p, q = np.asarray(p_features, dtype=np.float32), np.asarray(q_features, dtype=np.float32)
    if p.ndim != 2 or q.ndim != 2 or p.shape[1] != q.shape[1]:
        raise ValueError(
            f"mauve_score needs two 2-D feature arrays of the same width, got shapes {p.shape} and {q.shape}; "
            "compute both with the same `judge_features`."
        )
    if min(len(p), len(q)) < 10:
        raise ValueError(f"mauve_score needs at least 10 points per side, got {len(p)} and {len(q)}.")
    out = mauve.compute_mauve(p_features=p, q_features=q, num_buckets=num_buckets, seed=seed, verbose=False)
    return float(out.mauve)


def _token_lists(texts_or_token_lists) -> list[Sequence]:
    items = list(texts_or_token_lists)
    if all(isinstance(item, str) for item in items):
        return [item.split() for item in items]
    if any(isinstance(item, str) for item in items):
        raise TypeError("pass either texts (str) or token lists, not a mix of both.")
    return [list(item) for item in items]


def distinct_n(texts_or_token_lists, n):
    """Distinct-n: unique n-grams over all n-grams across all completions (strings are split on whitespace). 0.0 when
    no completion has n tokens."""
    if n < 1:
        raise ValueError(f"distinct_n needs n >= 1, got {n}.")
    grams, total = set(), 0
    for tokens in _token_lists(texts_or_token_lists):
        row = [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
        grams.update(row)
        total += len(row)
    return len(grams) / total if total else 0.0


def repetition_rate(texts_or_token_lists, min_count=3):
    """Fraction of completions in which one token occurs at least `min_count` times (strings split on whitespace)."""
    rows = _token_lists(texts_or_token_lists)
    if not rows:
        raise ValueError("repetition_rate: no completions given.")
    return sum(bool(tokens) and max(Counter(tokens).values()) >= min_count for tokens in rows) / len(rows)


def text_quality(texts, contexts, reference_features=None, judge=None, seed=25):
    """The benchmarks' quality figures of one set of completions: `judge_perplexity` (given the contexts),
    `distinct_1/2/3`, `repetition_rate` and, with the real continuations' features, `mauve`."""
    perplexity, features = judge_perplexity_and_features(texts, contexts, judge)
    figures = {
        "judge_perplexity": perplexity,
        **{f"distinct_{n}": distinct_n(texts, n) for n in (1, 2, 3)},
        "repetition_rate": repetition_rate(texts),
    }
    if reference_features is not None:
        figures["mauve"] = mauve_score(features, reference_features, seed=seed)
    return figures
