"""Shared fixtures for the fork's conformance tests.

Everything here is built locally at test time (no hub downloads): a byte-level BPE tokenizer trained with
`tokenizers` on a small built-in corpus (`tiny_tokenizer`), tiny configs and models for it (`tiny_config`,
`tiny_causal_lm`), and saved model folders (`tiny_causal_lm_path`, `tiny_reward_model_path`). Fixtures are built with the installed transformers
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
    # GPT-2's inputs: transformers 4.x would otherwise also return `token_type_ids`
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<pad>",
        bos_token="<bos>",
        eos_token="<eos>",
        model_input_names=["input_ids", "attention_mask"],
    )
    tokenizer.padding_side = "left"
    return tokenizer


# Per model type: the smallest config that still exercises the architecture (2 layers, 32 hidden, 4 heads, 64
# positions, no dropout). `tiny_config` adds the tokenizer's vocabulary and special tokens.
TINY_CONFIGS = {
    "gpt2": dict(n_layer=2, n_embd=32, n_head=4, n_positions=64, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0),
    "gptj": dict(
        n_layer=2, n_embd=32, n_head=4, rotary_dim=4, n_positions=64, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0
    ),
    "llama": dict(
        num_hidden_layers=2,
        hidden_size=32,
        intermediate_size=64,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    ),
    "gpt_neox": dict(
        num_hidden_layers=2,
        hidden_size=32,
        intermediate_size=64,
        num_attention_heads=4,
        rotary_pct=0.5,
        max_position_embeddings=64,
        hidden_dropout=0.0,
        attention_dropout=0.0,
    ),
}


@pytest.fixture(scope="session")
def tiny_config(tiny_tokenizer):
    """Factory: `tiny_config(model_type="gpt2", **overrides)`, a tiny config matching `tiny_tokenizer`.

    `model_type` is one of `TINY_CONFIGS` ("gpt2", "gptj", "llama", "gpt_neox"); `overrides` use the config's own
    argument names (e.g. `n_positions=24` for GPT-2, `initializer_range=0.2`, `num_labels=1`).
    """
    from transformers import AutoConfig

    def build(model_type="gpt2", **overrides):
        kwargs = dict(
            vocab_size=len(tiny_tokenizer),
            pad_token_id=tiny_tokenizer.pad_token_id,
            bos_token_id=tiny_tokenizer.bos_token_id,
            eos_token_id=tiny_tokenizer.eos_token_id,
        )
        kwargs.update(TINY_CONFIGS[model_type])
        kwargs.update(overrides)
        return AutoConfig.for_model(model_type, **kwargs)

    return build


@pytest.fixture(scope="session")
def tiny_causal_lm(tiny_config):
    """Factory: `tiny_causal_lm(model_type="gpt2", seed=0, attn_implementation=None, **overrides)`, a float32
    `AutoModelForCausalLM` built from `tiny_config(model_type, **overrides)` after `torch.manual_seed(seed)`."""
    import torch
    from transformers import AutoModelForCausalLM

    def build(model_type="gpt2", seed=0, attn_implementation=None, **overrides):
        torch.manual_seed(seed)
        config = tiny_config(model_type, **overrides)
        return AutoModelForCausalLM.from_config(config, attn_implementation=attn_implementation)

    return build


@pytest.fixture(scope="session")
def tiny_causal_lm_path(tiny_causal_lm, tiny_tokenizer, tmp_path_factory):
    """A folder holding a saved tiny GPT-2 `tiny_causal_lm()` and `tiny_tokenizer` (the docs' `path/to/causal-lm`)."""
    path = tmp_path_factory.mktemp("tiny-causal-lm")
    tiny_causal_lm().save_pretrained(path)
    tiny_tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="session")
def tiny_reward_model_path(tiny_config, tiny_tokenizer, tmp_path_factory):
    """A folder holding a saved tiny GPT-2 `AutoModelForSequenceClassification` with one label (a scalar reward),
    `pad_token_id` set, and `tiny_tokenizer` (the docs' `path/to/reward-model`)."""
    import torch
    from transformers import AutoModelForSequenceClassification

    path = tmp_path_factory.mktemp("tiny-reward-model")
    torch.manual_seed(0)
    AutoModelForSequenceClassification.from_config(tiny_config(num_labels=1)).save_pretrained(path)
    tiny_tokenizer.save_pretrained(path)
    return str(path)
