"""Shared fixtures for the fork's conformance tests.

Everything here is built locally at test time (no hub downloads): a byte-level BPE tokenizer trained with
`tokenizers` on a small built-in corpus, and tiny model configs. Fixtures are built with the installed transformers
version, because a tokenizer saved by transformers 5.x does not load on 4.x.
"""

import os

import pytest
from hypothesis import HealthCheck, settings


# Hypothesis loads its built-in `ci` profile whenever `CI` is set; `dev` is for quick local runs.
settings.register_profile(
    "dev", max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
if not os.environ.get("CI"):
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))

# Two threads fighting over two busy cores make torch timings swing tenfold.
os.environ.setdefault("OMP_NUM_THREADS", "1")

CORPUS = [
    "This movie was wonderful, the acting was great and the story moved me.",
    "A terrible film. The plot made no sense and the dialogue was awful.",
    "I loved every minute of it; the soundtrack is beautiful.",
    "Boring, slow and far too long. I want my two hours back.",
    "The director did a fine job with a weak script.",
    "An average comedy with a few good jokes and many bad ones.",
    "One of the best performances I have seen this year!",
    "Not worth watching, even for free.",
] * 4


@pytest.fixture(scope="session")
def tiny_tokenizer():
    """A byte-level BPE tokenizer (vocab 256 + merges, <= 320 tokens) with `<pad>`, `<bos>` and `<eos>`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=["<pad>", "<bos>", "<eos>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(CORPUS, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>"
    )
    tokenizer.padding_side = "left"
    return tokenizer
