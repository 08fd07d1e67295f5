"""Places where `RewardConditionedCausalLM` used to diverge from transformers (issue 16), one test each.

Guided beam search ranks beams by log-probabilities of the guided distribution; reward-head weights missing from a
checkpoint are initialized; a left-padded batch without a mask generates as with it; one reward applies to a whole
batch; `return_dict=False` and `inputs_embeds` work as in any causal LM; saves go through transformers' own
`save_pretrained`; unclear inputs get clear errors.
"""

import copy
import os
import shutil
import subprocess

import pytest
import torch
from safetensors.torch import load_file, save_file


os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

from trl.experimental.reward_conditioning import RewardConditionedCausalLM, RewardConditionedCausalLMConfig


PAD, BOS, EOS = 0, 1, 2


def guided_model(base, position="prefix", use_null_reward=True):
    model = RewardConditionedCausalLM.from_base(base, reward_position=position, use_null_reward=use_null_reward)
    with torch.no_grad():
        torch.manual_seed(1)
        model.reward_head.linear.weight.normal_(std=2.0)
        if use_null_reward:
            model.reward_head.null_reward.fill_(-1.5)
    return model.eval()


@pytest.fixture(scope="module")
def models(tiny_causal_lm):
    return {
        arch: guided_model(tiny_causal_lm(arch, attn_implementation="eager", initializer_range=0.2))
        for arch in ("gpt2", "llama")
    }


def reference_beam_search(model, prompt, reward, scale, num_beams, steps):
    """Beam search by hand: every step recomputes both branches from scratch and mixes their log-softmaxes."""
    beams = [(prompt, 0.0)]
    for _ in range(steps):
        candidates = []
        for ids, score in beams:
            with torch.no_grad():
                cond = model(ids[None], rewards=torch.tensor([reward])).logits[0, -1].log_softmax(-1)
                null = model(ids[None]).logits[0, -1].log_softmax(-1)
            logp = (null + scale * (cond - null)).log_softmax(-1)
            logp[EOS] = -float("inf")  # as `suppress_tokens=[EOS]`
            values, tokens = logp.topk(num_beams)
            candidates += [
                (torch.cat([ids, token[None]]), score + value.item())
                for value, token in zip(values, tokens, strict=True)
            ]
        beams = sorted(candidates, key=lambda beam: -beam[1])[:num_beams]
    return beams


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_guided_beam_search_scores_are_log_probabilities(models, arch, seed):
    model = models[arch]
    generator = torch.Generator().manual_seed(seed)
    prompt = torch.randint(3, 60, (4,), generator=generator)
    reward = float(torch.randn((), generator=generator) * 2)
    num_beams, steps, scale = 3, 4, 2.0
    out = model.generate(
        prompt[None],
        rewards=[reward],
        guidance_scale=scale,
        num_beams=num_beams,
        num_return_sequences=num_beams,
        max_new_tokens=steps,
        do_sample=False,
        length_penalty=0.0,  # sequences_scores are the sums of the tokens' log-probabilities
        suppress_tokens=[EOS],
        pad_token_id=PAD,
        return_dict_in_generate=True,
        output_scores=True,
    )
    assert (out.sequences_scores <= 0).all(), out.sequences_scores
    expected = reference_beam_search(model, prompt, reward, scale, num_beams, steps)
    assert out.sequences.tolist() == [ids.tolist() for ids, _ in expected]
    torch.testing.assert_close(out.sequences_scores, torch.tensor([score for _, score in expected]), atol=1e-4, rtol=0)


@pytest.mark.parametrize("scale", [float("nan"), float("inf"), -float("inf"), -0.5])
def test_guidance_scale_must_be_finite_and_non_negative(models, scale):
    with pytest.raises(ValueError, match="finite number >= 0"):
        models["gpt2"].generate(torch.tensor([[5, 6]]), rewards=[1.0], guidance_scale=scale, max_new_tokens=1)


@pytest.mark.parametrize("dropped", ["reward_head.", "reward_head.null_reward"])
def test_missing_reward_head_weights_are_initialized(tiny_causal_lm, tmp_path, dropped):
    model = RewardConditionedCausalLM.from_base(tiny_causal_lm("gpt2"), use_null_reward=True)
    assert model.reward_head.linear.weight.std() > 0.005  # a fresh head is initialized too
    assert model.reward_head.linear.bias.std() > 0.005
    model.save_pretrained(tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    kept = {name: value for name, value in weights.items() if not name.startswith(dropped)}
    assert len(kept) < len(weights)
    save_file(kept, tmp_path / "model.safetensors", metadata={"format": "pt"})
    for _ in range(3):  # uninitialized memory differs from load to load; one finite draw could be luck
        loaded = RewardConditionedCausalLM.from_pretrained(tmp_path)
        head = loaded.reward_head
        for name, value in head.state_dict().items():
            assert torch.isfinite(value).all(), (name, value)
        assert torch.equal(head.null_reward, torch.zeros(1))
        if dropped == "reward_head.":
            assert 0.005 < head.linear.weight.std() < 0.1  # normal(0, initializer_range=0.02)
            assert 0.005 < head.linear.bias.std() < 0.1  # drawn too: a zero reward embedding can give NaN gradients
        else:  # the loaded part of the head is kept
            torch.testing.assert_close(head.linear.weight, model.reward_head.linear.weight, atol=0, rtol=0)
        torch.testing.assert_close(loaded.model.lm_head.weight, model.model.lm_head.weight, atol=0, rtol=0)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
@pytest.mark.parametrize("position", ["prefix", "before_completion"])
def test_left_padded_batch_without_mask_generates_as_with_it(models, arch, position):
    model = copy.deepcopy(models[arch])
    model.config.reward_position = position
    input_ids = torch.tensor([[PAD, PAD, PAD, 5, 6], [7, 8, 9, 10, 11], [PAD, 12, 13, 14, 15]])
    kwargs = {"rewards": [2.0, -1.0, 0.5], "max_new_tokens": 4, "do_sample": False, "pad_token_id": PAD}
    masked = model.generate(input_ids, attention_mask=(input_ids != PAD).long(), **kwargs)
    assert torch.equal(model.generate(input_ids, **kwargs), masked)
    guided = model.generate(input_ids, attention_mask=(input_ids != PAD).long(), guidance_scale=2.0, **kwargs)
    assert torch.equal(model.generate(input_ids, guidance_scale=2.0, **kwargs), guided)


@pytest.mark.parametrize("one_reward", [[1.5], 1.5, torch.tensor(1.5), torch.tensor([1.5]), torch.tensor([[1.5]])])
def test_one_reward_applies_to_every_row(models, one_reward):
    model = models["gpt2"]
    input_ids = torch.tensor([[PAD, 5, 6], [7, 8, 9]])
    kwargs = {"attention_mask": (input_ids != PAD).long(), "max_new_tokens": 3, "do_sample": False}
    expected = model.generate(input_ids, rewards=[1.5, 1.5], **kwargs)
    assert torch.equal(model.generate(input_ids, rewards=one_reward, **kwargs), expected)
    with torch.no_grad():
        logits = model(input_ids, attention_mask=kwargs["attention_mask"], rewards=one_reward).logits
        reference = model(input_ids, attention_mask=kwargs["attention_mask"], rewards=[1.5, 1.5]).logits
    torch.testing.assert_close(logits, reference, atol=0, rtol=0)


def test_pipeline_with_one_reward(models, tiny_tokenizer):
    from transformers import pipeline

    generator = pipeline("text-generation", model=models["gpt2"], tokenizer=tiny_tokenizer)
    prompts = ["This movie was", "A terrible"]
    kwargs = {"max_new_tokens": 3, "do_sample": False, "return_full_text": False}
    batched = generator(prompts, rewards=[2.0], batch_size=2, **kwargs)
    alone = [generator(prompt, rewards=[2.0], **kwargs) for prompt in prompts]
    assert [out[0]["generated_text"] for out in batched] == [out[0]["generated_text"] for out in alone]


def test_vector_rewards_of_the_wrong_shape_get_a_clear_error(tiny_causal_lm):
    model = RewardConditionedCausalLM.from_base(tiny_causal_lm("gpt2"), num_rewards=2)
    ids = torch.tensor([[5, 6], [7, 8]])
    with pytest.raises(ValueError, match=r"shape \(2, 2\).*\(1, 2\).*ambiguous.*got shape \(2,\)"):
        model(ids, rewards=torch.ones(2))
    # One row of two rewards applies to both sequences
    torch.testing.assert_close(
        model(ids, rewards=torch.tensor([[1.0, 2.0]])).logits, model(ids, rewards=[[1.0, 2.0], [1.0, 2.0]]).logits
    )


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
@pytest.mark.parametrize("position", ["prefix", "before_completion"])
def test_return_dict_false_and_inputs_embeds_work_as_in_any_causal_lm(models, arch, position):
    model = copy.deepcopy(models[arch])
    model.config.reward_position = position
    input_ids = torch.tensor([[PAD, 5, 6, 7], [8, 9, 10, 11]])  # no leading BOS: ids and embeddings agree
    attention_mask = (input_ids != PAD).long()
    kwargs = {
        "attention_mask": attention_mask,
        "rewards": [1.0, -2.0],
        "labels": input_ids.masked_fill(input_ids == PAD, -100),
    }
    if position == "before_completion":
        kwargs["prompt_lengths"] = torch.tensor([2, 1])
    with torch.no_grad():
        reference = model(input_ids, **kwargs)
        as_tuple = model(input_ids, return_dict=False, **kwargs)
        assert isinstance(as_tuple, tuple)
        torch.testing.assert_close(as_tuple[0], reference.loss, atol=0, rtol=0)
        torch.testing.assert_close(as_tuple[1], reference.logits, atol=0, rtol=0)
        embeds = model.get_input_embeddings()(input_ids)  # (B, T, H)
        from_embeds = model(inputs_embeds=embeds, use_cache=True, **kwargs)
        torch.testing.assert_close(from_embeds.logits, reference.logits, atol=1e-6, rtol=0)
        torch.testing.assert_close(from_embeds.loss, reference.loss, atol=1e-6, rtol=0)
        # The cache filled from embeddings continues like one filled from ids
        longer = torch.cat([input_ids, torch.tensor([[12], [13]])], dim=1)
        full = model(
            longer,
            attention_mask=(longer != PAD).long(),
            **{k: v for k, v in kwargs.items() if k != "labels" and k != "attention_mask"},
        )
        step = model(
            longer[:, -1:], attention_mask=(longer != PAD).long(), past_key_values=from_embeds.past_key_values
        )
        torch.testing.assert_close(step.logits[:, -1], full.logits[:, -1], atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="exactly one of `input_ids`"):
        model(input_ids, inputs_embeds=embeds, **kwargs)


# Saves go through transformers' own `save_pretrained`: they behave as for any model wherever the folder is.


def assert_loads_as(path, model):
    loaded = RewardConditionedCausalLM.from_pretrained(path)
    state = loaded.state_dict()
    for name, value in model.state_dict().items():
        assert torch.equal(state[name], value), name


@pytest.fixture(scope="module")
def small_model(tiny_causal_lm):
    return RewardConditionedCausalLM.from_base(tiny_causal_lm("gpt2"), use_null_reward=True)


@pytest.fixture
def tmpfs(tmp_path):
    """An empty tmpfs mount point (another filesystem than `tmp_path`'s); skips unless running as root."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    mount_point = tmp_path / "mnt"
    mount_point.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mount_point)], check=False).returncode:
        pytest.skip("this machine does not allow mounting a tmpfs")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", str(mount_point)], check=True)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_resized_token_embeddings_save_and_reload(tiny_causal_lm, tmp_path, arch):
    # As on the base: the new rows take new ids, and the saved config records the new vocabulary size.
    model = RewardConditionedCausalLM.from_base(tiny_causal_lm(arch)).eval()
    vocab_size = model.config.text_config.vocab_size
    model.resize_token_embeddings(vocab_size + 6)
    assert model.config.text_config.vocab_size == vocab_size + 6
    ids = torch.tensor([[5, vocab_size + 5, 7]])
    with torch.no_grad():
        logits = model(ids, rewards=[1.0]).logits
    assert logits.shape == (1, 3, vocab_size + 6)
    model.save_pretrained(tmp_path)
    loaded = RewardConditionedCausalLM.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        assert torch.equal(loaded(ids, rewards=[1.0]).logits, logits)


def test_save_into_a_symlink_writes_through_it(small_model, tmp_path):
    (tmp_path / "target").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "target", target_is_directory=True)
    for _ in range(2):  # into the empty target, then over the earlier save
        small_model.save_pretrained(tmp_path / "link")
        assert (tmp_path / "link").is_symlink()
        assert "model.safetensors" in os.listdir(tmp_path / "target")
    assert sorted(os.listdir(tmp_path)) == ["link", "target"]
    assert_loads_as(tmp_path / "link", small_model)


def test_save_into_the_working_directory(small_model, tmp_path, monkeypatch):
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    small_model.save_pretrained(".")
    assert os.path.samefile(os.getcwd(), tmp_path / "cwd")
    assert "model.safetensors" in os.listdir(".")
    assert_loads_as(".", small_model)


def test_saved_folder_has_the_modes_of_any_model(small_model, tiny_causal_lm, tmp_path):
    old_umask = os.umask(0o022)
    try:
        tiny_causal_lm("gpt2").save_pretrained(tmp_path / "plain")
        small_model.save_pretrained(tmp_path / "conditioned")
    finally:
        os.umask(old_umask)
    assert (tmp_path / "conditioned").stat().st_mode == (tmp_path / "plain").stat().st_mode
    assert (tmp_path / "conditioned").stat().st_mode & 0o777 == 0o755


def test_save_into_a_mount_point_and_across_filesystems(small_model, tmpfs, tmp_path):
    assert os.stat(tmpfs).st_dev != os.stat(tmp_path).st_dev
    for _ in range(2):  # into the empty mount point, then over the earlier save
        small_model.save_pretrained(tmpfs)
    assert_loads_as(tmpfs, small_model)
    # Through a symlink to the other filesystem, into a folder that already holds a save
    (tmp_path / "elsewhere").symlink_to(tmpfs, target_is_directory=True)
    for _ in range(2):
        small_model.save_pretrained(tmp_path / "elsewhere" / "ckpt")
    assert (tmp_path / "elsewhere").is_symlink()
    assert not [name for name in os.listdir(tmpfs) + os.listdir(tmp_path) if name.startswith(".")]  # no temporaries
    assert_loads_as(tmp_path / "elsewhere" / "ckpt", small_model)


def test_loading_a_plain_causal_lm_points_to_from_base(tiny_causal_lm_path):
    with pytest.raises(ValueError, match=r"plain 'gpt2' model.*from_base\(path\)"):
        RewardConditionedCausalLM.from_pretrained(tiny_causal_lm_path)


def test_config_without_text_config_gets_a_clear_error():
    config = RewardConditionedCausalLMConfig()  # transformers builds default configs (e.g. to diff against)
    with pytest.raises(ValueError, match=r"Expected `config.text_config`.*from_base"):
        RewardConditionedCausalLM(config)


def test_empty_prompt_gets_a_clear_error(small_model):
    with pytest.raises(ValueError, match=r"at least one prompt token.*bos_token_id"):
        small_model.generate(torch.zeros(2, 0, dtype=torch.long), rewards=[1.0], max_new_tokens=2)


@pytest.mark.parametrize("position", ["prefix", "before_completion"])
def test_forward_reads_no_tensor_values(tiny_causal_lm, position, monkeypatch):
    """On the training path `forward` never waits for the device: with every tensor on the meta device (which has
    no values), any Python check of a value (`.item()`, `if tensor.any()`, `.tolist()`) would raise. Value checks
    run in `check_inputs`, where inputs enter (`generate`, a trainer's collator)."""
    from transformers.modeling_outputs import CausalLMOutputWithPast

    model = RewardConditionedCausalLM.from_base(tiny_causal_lm("gpt2"), reward_position=position).to("meta")
    vocab_size = model.config.text_config.vocab_size

    def base_forward(inputs_embeds, **kwargs):  # the base model's own checks are not this test's business
        return CausalLMOutputWithPast(logits=inputs_embeds.new_zeros(*inputs_embeds.shape[:2], vocab_size))

    monkeypatch.setattr(model.model, "forward", base_forward)
    ids = torch.ones(2, 5, dtype=torch.long, device="meta")
    kwargs = {"attention_mask": torch.ones_like(ids), "position_ids": torch.ones_like(ids), "labels": ids}
    if position == "before_completion":
        kwargs["prompt_lengths"] = torch.ones(2, dtype=torch.long, device="meta")
    logits = model(ids, rewards=torch.ones(2, device="meta"), **kwargs).logits
    assert logits.shape == (2, 5, vocab_size)


def test_adding_a_null_reward_on_load_initializes_it(tiny_causal_lm, tmp_path):
    model = RewardConditionedCausalLM.from_base(tiny_causal_lm("gpt2"))  # no null reward
    model.save_pretrained(tmp_path)
    for _ in range(3):
        loaded = RewardConditionedCausalLM.from_pretrained(tmp_path, use_null_reward=True)
        assert torch.equal(loaded.reward_head.null_reward, torch.zeros(1))
        torch.testing.assert_close(loaded.reward_head.linear.weight, model.reward_head.linear.weight, atol=0, rtol=0)
        with torch.no_grad():
            assert torch.isfinite(loaded(torch.tensor([[5, 6]])).logits).all()


def test_no_reward_embeds_to_the_zero_vector_at_initialization(tiny_causal_lm):
    """A zero input embedding gives NaN gradients in some bases (SmolLM2-135M trained with reward dropout: NaN
    grad_norm from the first step); a fresh head must map neither the null reward nor a reward at the mean to it."""
    model = RewardConditionedCausalLM.from_base(tiny_causal_lm("llama"), use_null_reward=True)
    at_mean = torch.tensor([model.config.reward_mean[0]])
    embeddings = [
        model.embed_rewards(None, None, batch_size=1),  # the null reward
        model.embed_rewards(at_mean, None, batch_size=1),  # normalized to 0
    ]
    for embedding in embeddings:
        assert embedding.abs().max() > 1e-3


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
@pytest.mark.parametrize("position", ["prefix", "before_completion"])
def test_training_forward_is_one_graph(tiny_causal_lm, arch, position):
    # No check that reads tensor values (a device sync, a graph break) runs in `forward`: torch.compile traces the
    # whole training forward, padding, rewards, labels and all, as one graph, and it computes what eager mode does.
    model = guided_model(tiny_causal_lm(arch, attn_implementation="eager"), position=position)
    input_ids = torch.tensor([[PAD, PAD, BOS, 5, 6, 7], [BOS, 8, 9, 10, 11, 12]])
    inputs = {
        "input_ids": input_ids,
        "attention_mask": (input_ids != PAD).long(),
        "rewards": torch.tensor([0.5, -1.0]),
        "reward_mask": torch.tensor([True, False]),
    }
    if arch == "llama":  # GPT-2's own loss logs inside forward: a graph break of plain GPT2LMHeadModel with labels too
        inputs["labels"] = input_ids.masked_fill(input_ids == PAD, -100)
    if position == "before_completion":
        inputs["prompt_lengths"] = torch.tensor([2, 3])
    torch._dynamo.reset()
    compiled = torch.compile(model.forward, fullgraph=True, backend="eager")
    out, expected = compiled(**inputs), model(**inputs)
    torch.testing.assert_close(out.logits, expected.logits)
    if arch == "llama":
        torch.testing.assert_close(out.loss, expected.loss)
